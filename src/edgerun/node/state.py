"""Where a project's local state lives on this machine.

By default ``<project>/.edgerun/`` (like wrangler's ``.wrangler/state``), shared by
``edgerun dev``, ``edgerun node`` and ``edgerun kv``/``secret`` so the CLI sees what the
server wrote. ``--state-dir`` points it elsewhere (tests use a fresh temp dir).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StateDir", "default_state_dir"]


def default_state_dir(project_root: Path) -> Path:
    """The state dir used when none is given: ``<project>/.edgerun``."""
    return project_root / ".edgerun"


@dataclass(frozen=True, slots=True)
class StateDir:
    """One project's state directory and the files in it."""

    path: Path

    def ensure(self) -> StateDir:
        """Create the directory (mode 0700: it holds secrets) and return self."""
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        return self

    @property
    def kv_file(self) -> Path:
        """The SQLite file holding every KV namespace of the project."""
        return self.path / "kv.sqlite3"
