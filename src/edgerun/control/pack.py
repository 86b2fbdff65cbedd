"""Build a deploy bundle (.tar.gz) from a project directory, reproducibly.

``pack_project(dir)`` tars the project's files with its ``edgerun.toml`` at the root,
sorted by path, with zeroed timestamps, owners and a fixed gzip header, so the same
tree always gives the same bytes. Local state and tool caches (``.edgerun``,
``__pycache__``, ``.git``, virtualenvs...) are left out, and so are symlinks: the
control plane refuses links (see :mod:`edgerun.security.bundle`), so the CLI reports
them up front instead of uploading a bundle that would be rejected.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgerun.config import CONFIG_FILENAME
from edgerun.errors import EdgerunError

__all__ = ["EXCLUDED", "PackError", "Packed", "pack_project"]

EXCLUDED: Final = frozenset(
    {
        ".edgerun",
        "__pycache__",
        ".git",
        ".hg",
        ".venv",
        "venv",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
    }
)
"""Directory names never packed: local state, VCS metadata, caches, virtualenvs."""


class PackError(EdgerunError):
    """The project directory cannot be bundled (no edgerun.toml, a symlink, ...)."""

    code = "pack_failed"
    status = 400


@dataclass(frozen=True, slots=True)
class Packed:
    """A built bundle: the gzip ``data``, and how many ``files`` of ``size`` bytes it holds."""

    data: bytes
    files: int
    size: int


def pack_project(project: Path) -> Packed:
    """Bundle ``project`` (a directory holding ``edgerun.toml``) as a reproducible .tar.gz.

    Raises ``PackError`` when there is no ``edgerun.toml`` or the tree holds a symlink
    or special file (the message names it).
    """
    root = project.resolve()
    if not (root / CONFIG_FILENAME).is_file():
        raise PackError(f"no {CONFIG_FILENAME} in {str(project)!r}; is this a project directory?")
    members: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED)
        base = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = base / name
            if path.is_symlink():
                raise PackError(
                    f"{path.relative_to(root)} is a symlink; bundles carry regular files only"
                )
            if not (path.is_dir() or path.is_file()):
                raise PackError(f"{path.relative_to(root)} is not a regular file")
            members.append(path)
    members.sort(key=lambda p: p.relative_to(root).as_posix())
    raw = io.BytesIO()
    files = size = 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in members:
            info = tf.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isdir():
                info.mode = 0o755
                tf.addfile(info)
                continue
            info.mode = 0o755 if info.mode & 0o100 else 0o644
            with path.open("rb") as fh:
                tf.addfile(info, fh)
            files += 1
            size += info.size
    data = gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
    return Packed(data, files, size)
