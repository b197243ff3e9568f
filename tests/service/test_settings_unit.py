import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.service.server import ROOT, free_port


def test_defaults_and_env(monkeypatch):
    monkeypatch.setenv("CLIP_IMAGE_MAX_BATCH", "7")
    monkeypatch.setenv("CLIP_CORS_ORIGINS", "https://a.example,https://b.example")
    s = Settings()
    assert s.image_max_batch == 7 and s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.max_queue == 256 and s.request_timeout_s == 10 and s.drain_s == 25
    assert s.max_body_bytes == 20 * 1024 * 1024 and s.max_image_pixels == 40_000_000


def test_combinations_are_checked():
    with pytest.raises(ValidationError, match="CLIP_EXPORT_DIR"):
        Settings(backend="onnx")
    with pytest.raises(ValidationError, match="not both"):
        Settings(pretrained="openai", checkpoint="x.pt")


def test_api_key_is_redacted_in_the_startup_log():
    assert "s3cret" not in Settings(api_key="s3cret").describe()


def test_bad_value_stops_startup_naming_the_setting():
    env = {"CLIP_IMAGE_MAX_BATCH": "zero", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "CLIP_IMAGE_MAX_BATCH" in r.stderr


def test_model_that_fails_to_load_exits_non_zero_with_the_cause(tmp_path):
    env = {"CLIP_MODEL": "ViT-Nope", "CLIP_PORT": str(free_port()), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "unknown model 'ViT-Nope'" in r.stderr


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [f"CLIP_{name.upper()}" for name in Settings.model_fields if f"`CLIP_{name.upper()}`" not in readme]
    assert not missing, f"settings missing from README's table: {missing}"


def test_process_settings_are_checked(monkeypatch):
    monkeypatch.setenv("CLIP_DEVICES", "cuda:0, cuda:1")
    monkeypatch.setenv("CLIP_WORKERS", "2")
    assert Settings().engine_devices() == ["cuda:0", "cuda:1"]
    monkeypatch.delenv("CLIP_DEVICES")
    assert Settings(device="cpu").engine_devices() == ["cpu"]  # one engine, on CLIP_DEVICE
    with pytest.raises(ValidationError, match="CLIP_DEVICES: 'gpu0' is not a device"):
        Settings(devices="gpu0")
    with pytest.raises(ValidationError, match="set CLIP_WORKERS >= 1"):
        Settings(devices="cuda:0,cuda:1", workers=0)
    with pytest.raises(ValidationError, match="CLIP_JPEG_DECODE=cpu, or CLIP_WORKERS=0"):
        Settings(jpeg_decode="cuda", device="cuda", workers=1)
