"""Per-worker memory cgroups: a hard memory limit the kernel enforces.

``RLIMIT_AS`` (see ``harden.apply_worker_rlimits``) caps a worker's *address space*,
which is both too strict (reserved, never-touched mappings count) and too weak (it
says nothing about memory the kernel charges to the process in other ways). A memory
cgroup caps what a worker actually uses: once it reaches ``memory_mb`` the kernel
reclaims, then its OOM killer SIGKILLs the worker, and the cgroup keeps a counter of
that kill so the node can report *why* the worker died.

The node owns one ``MemoryCgroups`` (found with ``MemoryCgroups.detect``), a parent
cgroup that holds one ``WorkerCgroup`` per live worker:

* cgroup v2 (unified hierarchy, ``memory`` in ``/sys/fs/cgroup/cgroup.controllers``):
  the parent is ``<the node's own cgroup>/edgerun``. v2 only lets a cgroup enable
  controllers for its children if it holds no processes itself ("no internal
  processes"), so this works only when the node runs in a cgroup delegated to it with
  the ``memory`` controller already enabled for its children (or in the root cgroup).
* cgroup v1 (``/sys/fs/cgroup/memory`` mounted): the parent is
  ``/sys/fs/cgroup/memory/edgerun-<node pid>``; v1 has no such rule.

Hosts without either, or where the node may not write there (not root, a read-only
mount in a container), get ``None`` from ``detect``: the caller falls back to the
rlimit alone. Nothing here raises for an unusable host.

Charges are not moved when a process joins a cgroup, so memory a worker shares with
its zygote (copy-on-write pages it never writes) stays charged where it was: the limit
covers what the worker allocates or dirties after it is placed, which is what varies
between workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import resource
import signal
import time
from pathlib import Path

__all__ = ["MemoryCgroups", "WorkerCgroup"]

log = logging.getLogger("edgerun.isolate")

_DEFAULT_ROOT = "/sys/fs/cgroup"
# Where the node's own cgroup is read from; a module global so tests can point it at a
# fake file.
_PROC_SELF_CGROUP = "/proc/self/cgroup"
_V2_PARENT = "edgerun"
_NAME_MAX = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# ``WorkerCgroup.remove`` waits this long for the cgroup to empty before giving up.
_REMOVE_TIMEOUT_S = 1.0
_REMOVE_POLL_S = 0.01


def _mkdir(path: Path) -> None:
    # Indirection so tests can stand in for the kernel, which fills a new cgroup
    # directory with its control files.
    os.mkdir(path)


def _rmdir(path: Path) -> None:
    # A real cgroup directory is removed with rmdir even though it lists control
    # files; tests replace this to clear their fake files first.
    os.rmdir(path)


def _write(path: Path, value: str) -> None:
    """Write ``value`` to a cgroup control file in one ``write``.

    No ``O_CREAT``: control files exist or the kernel does not offer them, and
    creating a plain file in their place would hide a missing feature.
    """
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_int(path: Path) -> int | None:
    """The integer in a single-value control file, or None if unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed control file (``key value`` lines) as a dict; empty on any error."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except (OSError, ValueError):  # ValueError: not text (UnicodeDecodeError)
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def _controllers(path: Path) -> set[str] | None:
    """The controller names listed in ``cgroup.controllers``/``cgroup.subtree_control``."""
    try:
        return {word.lstrip("+") for word in path.read_text().split()}
    except (OSError, ValueError):
        return None


def _own_v2_cgroup() -> str | None:
    """The node's cgroup v2 path (``/a/b``) from the ``0::/a/b`` line, or None."""
    try:
        text = Path(_PROC_SELF_CGROUP).read_text()
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or None
    return None


def _safe_name(name: str) -> str:
    """``name`` reduced to characters that are safe in a directory name, at most 64."""
    return _UNSAFE.sub("_", name)[:_NAME_MAX] or "worker"


class WorkerCgroup:
    """One worker's memory cgroup: made by ``MemoryCgroups.limit``, dropped by ``remove``.

    ``path`` is its directory, ``pid`` the worker placed in it.
    """

    __slots__ = ("_limit_bytes", "_version", "path", "pid")

    def __init__(self, path: Path, pid: int, version: int, limit_bytes: int) -> None:
        self.path = path
        self.pid = pid
        self._version = version
        self._limit_bytes = limit_bytes

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process in this cgroup.

        Call it after the worker died and before ``remove``. Never raises: an
        unreadable cgroup answers False.
        """
        return self.oom_kills() > 0

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup so far (on
        kernels that do not count, 1 once the limit was hit). Never raises: 0 when
        unreadable."""
        try:
            if self._version == 2:
                return _read_keyed(self.path / "memory.events").get("oom_kill", 0)
            return self._v1_oom_kills()
        except Exception:  # a diagnosis must never take the caller down with it
            log.debug("cannot read OOM state of %s", self.path, exc_info=True)
            return 0

    def _v1_oom_kills(self) -> int:
        oom = _read_keyed(self.path / "memory.oom_control")
        if "oom_kill" in oom:
            return oom["oom_kill"]
        return int(self._v1_limit_hit())

    def _v1_limit_hit(self) -> bool:
        # Kernels before 4.13 do not count kills. Infer one from the limit having been
        # hit: a charge failed (``failcnt``; with a swap limit equal to the memory
        # limit it is the memory+swap counter that fails first, so either counts) and
        # the peak usage reached the limit (within the page the limit is rounded to).
        failcnt = (_read_int(self.path / "memory.failcnt") or 0) + (
            _read_int(self.path / "memory.memsw.failcnt") or 0
        )
        peak = _read_int(self.path / "memory.max_usage_in_bytes")
        limit = _read_int(self.path / "memory.limit_in_bytes") or self._limit_bytes
        if failcnt <= 0 or peak is None:
            return False
        return peak >= limit - resource.getpagesize()

    def remove(self) -> None:
        """Remove the cgroup directory; best effort, never raises.

        The kernel refuses to remove a cgroup that still has processes, so this waits
        up to about a second for ``cgroup.procs`` to empty (it is meant to be called
        once the worker was reaped, when that is immediate).
        """
        deadline = time.monotonic() + _REMOVE_TIMEOUT_S
        while True:
            if not self._has_processes():
                try:
                    _rmdir(self.path)
                    return
                except FileNotFoundError:
                    return
                except OSError as exc:
                    error: object = exc
            else:
                error = "processes left in it"
            if time.monotonic() >= deadline:
                log.debug("cannot remove cgroup %s: %s", self.path, error)
                return
            time.sleep(_REMOVE_POLL_S)

    def kill_all(self) -> None:
        """SIGKILL every process left in the cgroup (what the worker started); best
        effort, never raises."""
        try:
            pids = (self.path / "cgroup.procs").read_text().split()
        except OSError:
            return
        for text in pids:
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(text), signal.SIGKILL)

    def _has_processes(self) -> bool:
        # Unreadable counts as empty: rmdir is the real test and says why it fails.
        try:
            return bool((self.path / "cgroup.procs").read_text().split())
        except OSError:
            return False

    def __repr__(self) -> str:
        return f"<WorkerCgroup v{self._version} {self.path} pid={self.pid}>"


class MemoryCgroups:
    """The node's memory cgroups: a parent cgroup holding one child per worker.

    ``version`` is the cgroup version in use (1 or 2) and ``path`` the parent
    directory. Make one with ``detect``; ``close`` it when the node stops.
    """

    __slots__ = ("_warned", "path", "version")

    def __init__(self, version: int, path: Path) -> None:
        self.version = version
        self.path = path
        self._warned = False

    @classmethod
    def detect(cls, root: str | None = None) -> MemoryCgroups | None:
        """The host's usable memory controller, with the node's parent cgroup made.

        ``root`` replaces the cgroup mount point ``/sys/fs/cgroup`` (tests use a fake
        tree). Returns None, never raises, when there is no memory controller or the
        node may not make cgroups under it.
        """
        base = Path(root if root is not None else _DEFAULT_ROOT)
        try:
            top = _controllers(base / "cgroup.controllers")
            if top is not None and "memory" in top:
                return cls._detect_v2(base)
            if (base / "memory").is_dir():
                return cls._detect_v1(base / "memory")
        except Exception:  # an odd host must only cost the feature, not the node
            log.debug("memory cgroup detection failed under %s", base, exc_info=True)
            return None
        log.debug("no memory cgroup controller under %s", base)
        return None

    @classmethod
    def _detect_v1(cls, mount: Path) -> MemoryCgroups | None:
        parent = mount / f"edgerun-{os.getpid()}"
        made = _make_parent(parent)
        if made is None:
            return None
        if not (parent / "memory.limit_in_bytes").exists():
            # Not a memory cgroup after all (a stray directory): undo and give up.
            if made:
                with contextlib.suppress(OSError):
                    _rmdir(parent)
            log.debug("%s is not a cgroup v1 memory hierarchy", mount)
            return None
        _remove_stale(mount)
        return cls(1, parent)

    @classmethod
    def _detect_v2(cls, base: Path) -> MemoryCgroups | None:
        own = _own_v2_cgroup()
        if own is None:
            log.debug("no cgroup v2 entry in %s", _PROC_SELF_CGROUP)
            return None
        own_dir = base / own.lstrip("/")
        available = _controllers(own_dir / "cgroup.controllers")
        if available is None or "memory" not in available:
            log.debug("memory controller not delegated to the node's cgroup %s", own_dir)
            return None
        # The children of the node's cgroup (our parent among them) only get a memory
        # controller once it is enabled in the node's cgroup; the kernel refuses that
        # (EBUSY) while the node's cgroup holds processes, as it does when the node
        # runs in it -- the "no internal processes" rule.
        if not _enable_memory(own_dir):
            log.debug(
                "cannot enable the memory controller below %s (it holds processes, or "
                "is not writable): per-worker memory cgroups are off",
                own_dir,
            )
            return None
        parent = own_dir / _V2_PARENT
        made = _make_parent(parent)
        if made is None:
            return None
        # Our parent holds no processes, so it may enable memory for the workers.
        if not (parent / "memory.max").exists() or not _enable_memory(parent):
            if made:
                with contextlib.suppress(OSError):
                    _rmdir(parent)
            log.debug("cannot enable the memory controller below %s", parent)
            return None
        return cls(2, parent)

    def limit(self, name: str, pid: int, limit_bytes: int) -> WorkerCgroup | None:
        """Put process ``pid`` in a new cgroup of its own, limited to ``limit_bytes``.

        ``name`` (a deployment name) is sanitised into the directory name. Swap is
        limited too where the kernel offers it, so a worker cannot page out past its
        limit. Returns None if any step fails (with one warning per manager, then
        debug logs), after removing the cgroup it made. A ``limit_bytes`` below one
        is a caller's bug: ``ValueError``.
        """
        if limit_bytes <= 0:
            raise ValueError(f"limit_bytes must be positive, not {limit_bytes}")
        path = self.path / f"{_safe_name(name)}-{pid}"
        made = False
        try:
            try:
                _mkdir(path)
            except FileExistsError:
                # Left by an earlier worker that had this pid and whose removal failed:
                # its process is gone (the pid is ours now), so it is empty.
                _rmdir(path)
                _mkdir(path)
            made = True
            # The limit goes on before the process is moved in, so the worker never
            # runs unlimited inside the cgroup.
            if self.version == 2:
                _write(path / "memory.max", str(limit_bytes))
                if (path / "memory.swap.max").exists():
                    _write(path / "memory.swap.max", "0")
            else:
                _write(path / "memory.limit_in_bytes", str(limit_bytes))
                memsw = path / "memory.memsw.limit_in_bytes"
                # Present only with swap accounting on; memory+swap must be >= memory,
                # hence set after the memory limit.
                if memsw.exists() and os.access(memsw, os.W_OK):
                    try:
                        _write(memsw, str(limit_bytes))
                    except OSError as exc:
                        log.debug("cannot limit swap in %s: %s", path, exc)
            _write(path / "cgroup.procs", str(pid))
        except OSError as exc:
            if made:
                with contextlib.suppress(OSError):
                    _rmdir(path)
            if self._warned:
                log.debug("cannot put worker %d in memory cgroup %s: %s", pid, path, exc)
            else:
                self._warned = True
                log.warning(
                    "cannot put worker %d in memory cgroup %s (%s); workers fall back to "
                    "the address-space limit alone",
                    pid,
                    path,
                    exc,
                )
            return None
        return WorkerCgroup(path, pid, self.version, limit_bytes)

    def close(self) -> None:
        """Remove the parent cgroup if it is empty; best effort, never raises.

        Worker cgroups should have been removed already; a leftover one keeps the
        parent (rmdir only: nothing here kills processes).
        """
        try:
            _rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.debug("cannot remove cgroup %s: %s", self.path, exc)

    def __repr__(self) -> str:
        return f"<MemoryCgroups v{self.version} {self.path}>"


def _remove_stale(mount: Path) -> None:
    """Remove what nodes that died without cleaning up (SIGKILL) left: ``edgerun-<pid>``
    parents of dead pids and their emptied worker cgroups. Best effort."""
    try:
        candidates = [p for p in mount.iterdir() if p.name.startswith("edgerun-")]
    except OSError:
        return
    for parent in candidates:
        pid = parent.name.removeprefix("edgerun-")
        if not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        with contextlib.suppress(OSError):
            for child in parent.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        _rmdir(child)
            _rmdir(parent)


def _make_parent(path: Path) -> bool | None:
    """Create the parent cgroup ``path``: True if made, False if it already existed
    (a crashed node with this pid left it) and is writable, None if unusable."""
    try:
        _mkdir(path)
        return True
    except FileExistsError:
        if path.is_dir() and os.access(path, os.W_OK):
            return False
        log.debug("cgroup %s exists and is not writable", path)
        return None
    except OSError as exc:
        log.debug("cannot create cgroup %s: %s", path, exc)
        return None


def _enable_memory(cgroup: Path) -> bool:
    """Make sure the memory controller is enabled for ``cgroup``'s children."""
    control = cgroup / "cgroup.subtree_control"
    enabled = _controllers(control)
    if enabled is not None and "memory" in enabled:
        return True
    try:
        _write(control, "+memory")
    except OSError as exc:
        log.debug("cannot write +memory to %s: %s", control, exc)
        return False
    return True
