"""Fixtures for the deployment tests: the external tools they run and one real server to scrape."""

from __future__ import annotations

import pytest

from tests.deploy.files import APT_PROMETHEUS, require_tool


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", APT_PROMETHEUS)


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return require_tool("prometheus", APT_PROMETHEUS)


@pytest.fixture(scope="session")
def deploy_server(bundled_dir, tmp_path_factory):
    """The real server (`python -m service`) on the bundled model and a free loopback port, ready. The
    empty CLIP_EXPORT_DIR and CLIP_API_KEY are what docker-compose.yml passes when they are not set."""
    from tests.service.server import ServerProcess

    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_DEVICE": "cpu", "CLIP_DRAIN_S": "1",
                          "CLIP_EXPORT_DIR": "", "CLIP_API_KEY": "",
                          "CLIP_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))},
                         tmp_path_factory.mktemp("deploy-server") / "server.log")
    try:
        proc.wait_ready(timeout=120)
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()
