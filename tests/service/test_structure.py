"""The service's imports point one way: routes import domain modules, never each other; no domain module imports a
route (only the app factory mounts them). STYLE.md item 15; the README's Architecture section says so."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, absolute names (`from service.routes import embed` counts as service.routes.embed)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_app_factory_imports_routes():
    importers = sorted(str(p.relative_to(SERVICE.parent)) for p in SERVICE.rglob("*.py")
                       if any(n == "service.routes" or n.startswith("service.routes.") for n in _imports(p))
                       and p.parent.name != "routes")
    assert importers == ["service/app.py"], importers


def test_no_route_module_imports_another():
    found = {str(p.relative_to(SERVICE.parent)): sorted(n for n in _imports(p) if n.startswith("service.routes"))
             for p in (SERVICE / "routes").glob("*.py")}
    assert {path: names for path, names in found.items() if names} == {}
