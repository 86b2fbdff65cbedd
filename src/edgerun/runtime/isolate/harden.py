"""Process hardening for zygotes and workers: identity, file descriptors, rlimits, env.

The order matters and is the caller's: a zygote scrubs its environment, pins the
interpreter's import paths and drops its identity *before* importing user code; a
worker closes inherited descriptors and applies rlimits right after the fork.
"""

from __future__ import annotations

import contextlib
import os
import resource
import stat
import sys
from pathlib import Path

__all__ = [
    "apply_deployment_rlimits",
    "apply_worker_rlimits",
    "blocking_directory",
    "close_inherited_fds",
    "drop_privileges",
    "pin_import_paths",
    "scrub_environ",
]

_PR_SET_DUMPABLE = 4
# Directory descriptors ``pin_import_paths`` opened: workers keep them, or any module
# first imported after the fork (a lazily imported client library, a stdlib module)
# would not be found once the worker closes inherited descriptors.
_PINNED_FDS: set[int] = set()


def scrub_environ(environ: dict[str, str]) -> None:
    """Replace the whole process environment with ``environ``."""
    os.environ.clear()
    os.environ.update(environ)


def blocking_directory(path: str | os.PathLike[str]) -> Path | None:
    """The first directory on the way to ``path`` that "others" cannot search, or None.

    A worker dropped to a fresh uid is "other" to every file it did not create: it can
    open ``path`` only if every ancestor directory has the others-execute bit.
    """
    p = Path(os.path.abspath(path))
    for parent in reversed(p.parents):
        try:
            mode = parent.stat().st_mode
        except OSError:
            return parent
        if not mode & stat.S_IXOTH:
            return parent
    return None


def pin_import_paths() -> None:
    """Make ``sys.path`` entries that others cannot reach importable after a uid drop.

    Each unreachable directory (say the interpreter's standard library under a home
    directory of mode 0700) is opened now, while still privileged, and its ``sys.path``
    entry replaced by ``/proc/self/fd/N``: the kernel follows that link straight to
    the open directory without checking the ancestors, so later imports keep working.
    Directories reachable by others are left alone.
    """
    pinned: list[str] = []
    moved: dict[str, str] = {}
    for entry in sys.path:
        if entry and os.path.isdir(entry) and blocking_directory(entry) is not None:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            _PINNED_FDS.add(fd)
            moved[entry.rstrip("/") + "/"] = f"/proc/self/fd/{fd}/"
            pinned.append(f"/proc/self/fd/{fd}")
        else:
            pinned.append(entry)
    sys.path[:] = pinned
    sys.path_importer_cache.clear()
    # Packages imported already (email, encodings...) find their submodules through
    # their own __path__, which still names the unreachable directory.
    for module in list(sys.modules.values()):
        paths = getattr(module, "__path__", None)
        if not isinstance(paths, list):
            continue
        for i, path in enumerate(paths):
            for old, new in moved.items():
                if isinstance(path, str) and path.startswith(old):
                    paths[i] = new + path[len(old) :]
                    break


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with no supplementary groups, irreversibly.

    The process stays non-dumpable (the kernel clears that flag on a uid change): its
    memory and ``/proc`` files stay root's, even to its own siblings. Only when
    ``pin_import_paths`` pinned directories is it marked dumpable again, because
    ``/proc/self/fd`` of a non-dumpable process is unreachable to it; the seccomp
    filter (``confine``) still refuses ``ptrace`` and ``process_vm_readv`` then, and
    core dumps stay off (RLIMIT_CORE = 0). Raises ``PermissionError`` when not
    privileged enough.
    """
    import ctypes  # imported before the drop: the standard library may be unreachable after

    libc = ctypes.CDLL(None, use_errno=True)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise PermissionError(f"could not drop privileges to uid {uid}")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc.prctl(_PR_SET_DUMPABLE, 1 if _PINNED_FDS else 0, 0, 0, 0)


def close_inherited_fds(keep: set[int]) -> None:
    """Close every file descriptor except stdio (0, 1, 2) and those in ``keep``.

    A worker must not hold the zygote's control socket, another worker's socket or
    a file user top-level code opened in the zygote. Import paths pinned by
    ``pin_import_paths`` stay open.
    """
    keep = keep | {0, 1, 2} | _PINNED_FDS
    try:
        fds = sorted(int(name) for name in os.listdir("/proc/self/fd"))
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def apply_deployment_rlimits(*, max_tasks: int | None, file_bytes: int) -> None:
    """Limits the zygote sets for itself and so for every worker and child it forks.

    ``max_tasks``: ``RLIMIT_NPROC``, the processes and threads the (deployment's own)
    real uid may have at once; a fork or thread past it fails with ``EAGAIN`` (None:
    leave it, as when workers keep the node's uid and the count would be the node's).
    ``file_bytes``: ``RLIMIT_FSIZE``, the largest file any of them may write; a write
    past it fails with ``EFBIG`` (Python ignores ``SIGXFSZ``).
    """
    if max_tasks is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (max_tasks, max_tasks))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))


def _address_space_bytes() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def apply_worker_rlimits(memory_mb: int, nofile: int) -> int:
    """Cap the worker: address space = what it has now + ``memory_mb``; fds; no cores.

    ``memory_mb`` is a budget on top of the zygote image the worker was forked from
    (imported modules, user top-level data), shared copy-on-write with its siblings.
    Allocations past it fail with ``MemoryError``. Returns the address-space limit
    in bytes.
    """
    limit = _address_space_bytes() + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return limit
