"""Fixtures for runtime tests: throwaway projects on disk, unloaded after each test."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgerun.runtime import unload


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``make_project({"app.py": source, ...}, name="proj")`` writes a project directory.

    Every project made is unloaded (modules and sys.path entries dropped) afterwards.
    """
    roots: list[Path] = []

    def make(files: dict[str, str], name: str = "proj") -> Path:
        root = tmp_path / name
        for rel, source in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source), "utf-8")
        roots.append(root)
        return root

    yield make
    for root in roots:
        unload(root)
