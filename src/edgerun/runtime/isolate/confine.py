"""What the kernel denies a deployment's processes: namespaces, no_new_privs, seccomp.

A zygote calls these in this order while it prepares a deployment, all before any
user code runs, so every worker it forks inherits them:

1. ``private_namespaces`` (still root): a mount namespace of its own with a fresh
   ``/proc`` mounted ``hidepid=invisible`` (other users' processes, the node's
   command line among them, are not listed and cannot be opened) and a private,
   size-bounded tmpfs on ``/tmp``, ``/var/tmp`` and ``/dev/shm``; with
   ``network=False`` also an empty network namespace (no interface is up: every
   connect fails with ``ENETUNREACH``).
2. ``deny_new_privileges`` and ``install_syscall_filter``, still before
   ``harden.drop_privileges`` (after it, libseccomp's Python side may sit where the
   new uid cannot read; the filter allows the uid change): no set-uid gain through
   ``execve`` and a seccomp filter that answers ``EPERM`` to system calls a request
   handler never needs and an attacker wants (tracing other processes, mounting,
   new namespaces, kernel modules and keyrings, serving sockets, io_uring which
   would bypass the filter).

Each function needs root (or, for the last two, nothing) and raises ``OSError`` when
the kernel refuses; the caller decides whether that is fatal.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Sequence

__all__ = [
    "DENIED_SYSCALLS",
    "deny_new_privileges",
    "install_syscall_filter",
    "private_namespaces",
]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWCGROUP = 0x02000000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_NO_NEW_PRIVS = 38

DENIED_SYSCALLS: tuple[str, ...] = (
    # other processes' memory and execution
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # the file-system tree and namespaces
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "unshare",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    # the kernel itself
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "vhangup",
    "lookup_dcookie",
    "fanotify_init",
    # keyrings
    "add_key",
    "request_key",
    "keyctl",
    # serving: a worker answers on connections the node hands it, never on its own
    "listen",
    "accept",
    "accept4",
    # io_uring runs operations the filter never sees
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
"""System calls a worker is refused with ``EPERM`` (plus ``clone`` with any namespace
flag; ``clone3``, whose flags live in memory a filter cannot read, gets ``ENOSYS`` so
the C library falls back to ``clone``)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(libc: ctypes.CDLL, source: str, target: str, fstype: str, flags: int, data: str) -> None:
    _check(
        libc.mount(
            source.encode(), target.encode(), fstype.encode() or None, flags, data.encode() or None
        ),
        f"mount {fstype or 'bind'} on {target}",
    )


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def private_namespaces(
    *, tmp_mb: int, uid: int | None, network: bool, keep: Sequence[str] = ()
) -> None:
    """Enter a mount namespace (and without ``network`` a network one) of our own.

    Mounts ``/proc`` with ``hidepid=invisible`` and one tmpfs of ``tmp_mb`` MiB,
    owned by ``uid`` (the deployment's, or the current user when None) with mode
    0700, on ``/tmp``, bound onto ``/var/tmp`` and ``/dev/shm`` where those exist:
    a deployment's scratch files are its own, bounded, and gone with its zygote.
    Directories in ``keep`` that lie under one of those (a state directory under
    ``/tmp``) are bound back at the same path, so they stay what they were.
    Nothing propagates back to the host (the tree is made private first). Raises
    ``OSError`` when not privileged enough.
    """
    libc = _libc()
    flags = _CLONE_NEWNS | (0 if network else _CLONE_NEWNET)
    _check(libc.unshare(flags), "unshare")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    _mount(libc, "proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "hidepid=invisible")
    scratch = [d for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d)]
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in keep}):
        # A scratch directory itself is never brought back: that would undo it.
        inside = any(_under(path, d) and path != d for d in scratch)
        if inside and not any(_under(path, k) for k in kept):
            kept.append(path)
    # Opened before the tmpfs hides them; bound back from the descriptor afterwards.
    held = [(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) for path in kept]
    owner = os.getuid() if uid is None else uid
    try:
        _mount(
            libc,
            "tmpfs",
            "/tmp",
            "tmpfs",
            _MS_NOSUID | _MS_NODEV,
            f"size={tmp_mb}m,mode=0700,uid={owner},gid={owner}",
        )
        for extra in scratch:
            if extra != "/tmp":
                _mount(libc, "/tmp", extra, "", _MS_BIND, "")
        # The mount points leading to a kept directory must stay searchable by the
        # deployment's uid, whatever umask the caller set.
        old_umask = os.umask(0o022)
        try:
            for path, _fd in held:
                os.makedirs(path, mode=0o755, exist_ok=True)
        finally:
            os.umask(old_umask)
        for path, fd in held:
            _mount(libc, f"/proc/self/fd/{fd}", path, "", _MS_BIND | _MS_REC, "")
    finally:
        for _path, fd in held:
            os.close(fd)


def deny_new_privileges() -> None:
    """Set ``no_new_privs``: ``execve`` of a set-uid program no longer gains its owner's
    rights, and an unprivileged process may install a seccomp filter."""
    _check(_libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def install_syscall_filter() -> None:
    """Load the seccomp filter described by ``DENIED_SYSCALLS`` into this process.

    Inherited by every child and irreversible. Needs ``no_new_privs`` (or
    CAP_SYS_ADMIN). Raises ``OSError`` when libseccomp is missing or the kernel
    refuses the filter.
    """
    try:
        import pyseccomp as seccomp  # type: ignore[import-untyped]
    except (ImportError, OSError) as exc:  # OSError: libseccomp.so.2 not found
        raise OSError(errno.ENOSYS, f"seccomp is unavailable: {exc}") from exc
    deny = seccomp.ERRNO(errno.EPERM)
    syscall_filter = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            syscall_filter.add_rule(deny, name)
        except (ValueError, RuntimeError, OSError):
            continue  # not a system call on this architecture
    # clone(flags, ...): refuse any namespace flag, allow plain fork and threads.
    for flag in (
        _CLONE_NEWNS,
        _CLONE_NEWCGROUP,
        _CLONE_NEWUTS,
        _CLONE_NEWIPC,
        _CLONE_NEWUSER,
        _CLONE_NEWPID,
        _CLONE_NEWNET,
    ):
        syscall_filter.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    with contextlib.suppress(ValueError, RuntimeError, OSError):
        syscall_filter.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    try:
        syscall_filter.load()
    except Exception as exc:
        raise OSError(errno.EPERM, f"the seccomp filter could not be loaded: {exc}") from exc
