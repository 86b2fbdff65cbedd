"""Per-deployment pids cgroups: the kernel's bound on a deployment's tasks.

``RLIMIT_NPROC`` (set by the zygote, see ``harden.apply_deployment_rlimits``) counts
every task of the deployment's uid on the host, so two nodes serving the same
deployment share it. A pids cgroup counts exactly the tasks inside it: the node moves
each zygote into a cgroup of its own with ``pids.max`` = the deployment's task bound,
and every worker, child and thread born there is counted; one more fork or thread
fails with ``EAGAIN``.

cgroup v1 only (``/sys/fs/cgroup/pids`` mounted, node as root): the parent is
``/sys/fs/cgroup/pids/edgerun-<node pid>``. Elsewhere ``PidsCgroups.detect`` returns
None and the rlimit alone bounds the deployment. Nothing here raises for an unusable
host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path

__all__ = ["PidsCgroups"]

log = logging.getLogger("edgerun.isolate")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_REMOVE_TIMEOUT_S = 1.0
_REMOVE_POLL_S = 0.01


class PidsCgroups:
    """The node's parent pids cgroup; ``limit`` makes one child per zygote."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def detect(cls, root: str = "/sys/fs/cgroup") -> PidsCgroups | None:
        """The node's pids cgroup parent, created now, or None where unusable."""
        mount = Path(root) / "pids"
        if not (mount / "cgroup.procs").exists() or not os.access(mount, os.W_OK):
            return None
        for stale in mount.glob("edgerun-*"):
            pid = stale.name.removeprefix("edgerun-")
            # Left by a node that was killed: its zygotes are gone, so it is empty.
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                for child in stale.iterdir():
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            child.rmdir()
                with contextlib.suppress(OSError):
                    stale.rmdir()
        parent = mount / f"edgerun-{os.getpid()}"
        try:
            parent.mkdir(exist_ok=True)
        except OSError as exc:
            log.debug("cannot create pids cgroup %s: %s", parent, exc)
            return None
        return cls(parent)

    def limit(self, name: str, pid: int, max_tasks: int) -> Path | None:
        """Move process ``pid`` into a new cgroup allowing ``max_tasks`` tasks; return
        its path, or None (logged) if the kernel refuses a step."""
        path = self.path / f"{_UNSAFE.sub('_', name)[:64]}-{pid}"
        try:
            with contextlib.suppress(FileExistsError):
                path.mkdir()
            (path / "pids.max").write_text(str(max_tasks))
            (path / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            log.warning("cannot bound the tasks of %s with pids cgroup %s: %s", name, path, exc)
            with contextlib.suppress(OSError):
                path.rmdir()
            return None
        return path

    @staticmethod
    def remove(path: Path) -> None:
        """Remove a zygote's cgroup, waiting up to about a second for its processes to
        finish exiting (the caller killed them); best effort, blocking."""
        deadline = time.monotonic() + _REMOVE_TIMEOUT_S
        while True:
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    log.debug("pids cgroup %s still holds processes; left in place", path)
                    return
                time.sleep(_REMOVE_POLL_S)

    def close(self) -> None:
        """Remove the parent if it is empty; best effort."""
        with contextlib.suppress(OSError):
            self.path.rmdir()
