"""Structural rules of DESIGN §3: the public surface and the import directions."""

from __future__ import annotations

import ast
from pathlib import Path

import edgerun

SRC = Path(edgerun.__file__).resolve().parent

DOCUMENTED_PUBLIC_NAMES = {
    # DESIGN §1: the function API.
    "Request",
    "Response",
    "Env",
    "Context",
    # http.py shapes users touch.
    "Headers",
    "QueryParams",
    "Geo",
    "Secret",
    # bindings users type against, and the process-wide Cache API.
    "KVNamespace",
    "Cache",
    "CacheStorage",
    "caches",
    # time injection and the shared outcome enum.
    "Clock",
    "SystemClock",
    "FakeClock",
    "Outcome",
    "EdgerunError",
    "__version__",
}

LEAVES = {"edgerun.types", "edgerun.errors", "edgerun.http", "edgerun.clock"}


def test_all_is_exactly_the_documented_surface():
    assert set(edgerun.__all__) == DOCUMENTED_PUBLIC_NAMES
    for name in edgerun.__all__:
        assert hasattr(edgerun, name), name


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _edgerun_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("edgerun"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.startswith("edgerun")
        ):
            found.add(node.module)
            # "from edgerun.bindings import kv" imports edgerun.bindings.kv
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _allowed(importer: str, imported: str) -> bool:
    if imported == "edgerun.cli" or imported.startswith("edgerun.cli."):
        return False
    if importer in LEAVES:
        return any(_within(imported, leaf) for leaf in LEAVES)
    if _within(importer, "edgerun.bindings"):
        return _within(imported, "edgerun.bindings") or any(_within(imported, x) for x in LEAVES)
    if _within(importer, "edgerun.runtime"):
        if _within(imported, "edgerun.bindings"):
            return _within(imported, "edgerun.bindings.base")
        return not _within(imported, "edgerun.node") and imported != "edgerun.config"
    for pkg in ("edgerun.edge", "edgerun.security", "edgerun.observe", "edgerun.control"):
        if _within(importer, pkg):
            return not _within(imported, "edgerun.node")
    return True


def _resolves(name: str) -> bool:
    # "from edgerun.http import Request" records edgerun.http.Request, not a module.
    parts = name.split(".")
    return (
        SRC.parent.joinpath(*parts).with_suffix(".py").exists()
        or SRC.parent.joinpath(*parts, "__init__.py").exists()
    )


def test_import_directions_hold():
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        importer = _module_name(path)
        if importer in ("edgerun", "edgerun.__main__"):
            # The public facade re-exports from everywhere; __main__ is the CLI's launcher.
            continue
        for imported in _edgerun_imports(path):
            if not _resolves(imported):
                continue
            if imported != importer and not _allowed(importer, imported):
                violations.append(f"{importer} imports {imported}")
    assert violations == []


def test_the_rule_checker_catches_violations():
    # The inverted twin: the checker must reject the directions DESIGN forbids.
    assert not _allowed("edgerun.bindings.kv.sqlite", "edgerun.config")
    assert not _allowed("edgerun.runtime.invoke", "edgerun.bindings.kv.sqlite")
    assert not _allowed("edgerun.edge.geo", "edgerun.node.app")
    assert not _allowed("edgerun.node.app", "edgerun.cli")
    assert not _allowed("edgerun.http", "edgerun.runtime.env")
    assert _allowed("edgerun.runtime.invoke", "edgerun.bindings.base")
    assert _allowed("edgerun.node.app", "edgerun.bindings.kv")
