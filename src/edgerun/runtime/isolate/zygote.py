"""The zygote: one per deployment, the process workers are forked from.

``serve_zygote(control, open_bindings)`` is the zygote's main loop, called by the
program ``edgerun.node.worker_main`` in a fresh interpreter (never forked from the
multi-threaded node). It reads the deployment's ``Spec`` from the control socket,
scrubs the environment, moves into the state directory, drops to the deployment's
uid, imports the entry module (running the user's top-level code once) and freezes
the heap (``gc.freeze``: objects created so far are never scanned or written by the
collector, so forked workers keep sharing their pages). It opens no bindings,
threads or connections: everything it holds is inherited by every worker.

Then it answers ``Fork`` with ``Forked`` (the worker's data socket, its connection
socket and its slot table attached), reports
each worker's exit status with ``Exited`` and stops on ``Stop`` or when the node
closes the control socket (remaining workers are killed).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import signal
import socket
import sys
from pathlib import Path

from edgerun.errors import EntrypointError
from edgerun.runtime.isolate import confine, harden
from edgerun.runtime.isolate.handoff import SLOTS_BYTES, ServeConnections
from edgerun.runtime.isolate.protocol import (
    MAX_CONTROL_PACKET,
    ControlMessage,
    Exited,
    Failed,
    Fork,
    Forked,
    FrameError,
    Ready,
    Spec,
    Stop,
    decode_control,
    encode_control,
)
from edgerun.runtime.isolate.worker import OpenBindings, run_worker
from edgerun.runtime.loader import Entry, load_entry

__all__ = ["serve_zygote"]

_log = logging.getLogger("edgerun.isolate")


def _send(control: socket.socket, message: ControlMessage) -> None:
    control.sendall(encode_control(message))


def _prepare(spec: Spec) -> Entry:
    """Become the deployment: environment, namespaces, directory, limits, identity,
    syscall filter; then import its code. Every step that confines happens before the
    first line of user code runs (its top-level code runs here)."""
    harden.scrub_environ(spec.environ)
    os.umask(0o077)
    if os.geteuid() == 0:
        # Needs root, so before the drop. A host that refuses namespaces (a container
        # without CAP_SYS_ADMIN) serves without them and says so, except for a
        # deployment that asked for no network: that promise cannot be kept otherwise.
        try:
            confine.private_namespaces(
                tmp_mb=spec.disk_mb,
                uid=spec.uid,
                network=spec.network,
                keep=[spec.state_dir, spec.code_root, *(p for p in sys.path if os.path.isdir(p))],
            )
        except OSError as exc:
            if not spec.network:
                raise EntrypointError(
                    f'[network] outbound = "none" needs a network namespace, which this '
                    f"host refused ({exc}); run the node with CAP_SYS_ADMIN or choose "
                    "another outbound setting"
                ) from exc
            _log.warning(
                "%s: no private /proc and /tmp for its workers (%s); the node needs "
                "CAP_SYS_ADMIN for them",
                spec.name,
                exc,
            )
    os.chdir(spec.state_dir)
    harden.apply_deployment_rlimits(
        max_tasks=spec.max_tasks if spec.uid is not None else None,
        file_bytes=spec.disk_mb * 1024 * 1024,
    )
    if spec.uid is not None and spec.gid is not None:
        harden.pin_import_paths()
    confine.deny_new_privileges()
    try:
        confine.install_syscall_filter()
    except OSError as exc:
        # libseccomp missing, or a kernel without seccomp filters.
        _log.warning("%s: workers run without a syscall filter: %s", spec.name, exc)
    if spec.uid is not None and spec.gid is not None:
        harden.drop_privileges(spec.uid, spec.gid)
    return load_entry(Path(spec.code_root), spec.main)


def serve_zygote(
    control: socket.socket,
    open_bindings: OpenBindings,
    serve_connections: ServeConnections | None = None,
) -> int:
    """Run the zygote on ``control`` (a ``SOCK_SEQPACKET`` socket); return an exit code.

    ``serve_connections`` is the HTTP server workers run for handed-off connections
    (none: workers only serve proxied requests).
    """
    try:
        first = decode_control(control.recv(MAX_CONTROL_PACKET))
    except (OSError, FrameError) as exc:
        _log.error("zygote: no deployment spec received: %s", exc)
        return 2
    if not isinstance(first, Spec):
        _log.error("zygote: expected a spec, got %s", type(first).__name__)
        return 2
    spec = first
    try:
        entry = _prepare(spec)
    except EntrypointError as exc:
        _send(control, Failed(exc.message))
        return 1
    except Exception as exc:
        _log.debug("preparing the zygote failed", exc_info=True)
        _send(control, Failed(f"the worker environment could not be prepared: {exc!r}"))
        return 1
    gc.collect()
    gc.freeze()
    _send(control, Ready(os.getpid()))
    return _Loop(control, entry, spec, open_bindings, serve_connections).run()


class _Loop:
    """The zygote's fork/reap loop (blocking, single-threaded)."""

    def __init__(
        self,
        control: socket.socket,
        entry: Entry,
        spec: Spec,
        open_bindings: OpenBindings,
        serve_connections: ServeConnections | None,
    ) -> None:
        self.serve_connections = serve_connections
        self.control = control
        self.entry = entry
        self.spec = spec
        self.open_bindings = open_bindings
        self.children: set[int] = set()
        # SIGCHLD wakes select() through this pipe (set_wakeup_fd), so exits are
        # reported promptly without polling.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self) -> int:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w)
        try:
            watched: list[int] = [self.control.fileno(), self.wake_r]
            while True:
                try:
                    ready, _, _ = select.select(watched, [], [])
                except InterruptedError:
                    continue
                if self.wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                    self._reap()
                if self.control.fileno() in ready:
                    try:
                        data = self.control.recv(MAX_CONTROL_PACKET)
                    except ConnectionError:
                        data = b""
                    if not data:
                        return 0  # the node is gone or done with us
                    message = decode_control(data)
                    if isinstance(message, Fork):
                        self._fork()
                    elif isinstance(message, Stop):
                        return 0
        finally:
            for pid in self.children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            with contextlib.suppress(OSError):
                _send(self.control, Exited(pid, status))

    def _fork(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours_conns, theirs_conns = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # The worker's shared slot table (handoff.Slots), mapped by both sides.
        slots = os.memfd_create("edgerun-slots", os.MFD_CLOEXEC)
        os.ftruncate(slots, SLOTS_BYTES)
        pid = os.fork()
        if pid == 0:  # the worker
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            ours.close()
            ours_conns.close()
            run_worker(
                theirs,
                self.entry,
                self.spec,
                self.open_bindings,
                theirs_conns,
                slots,
                self.serve_connections,
            )
        theirs.close()
        theirs_conns.close()
        self.children.add(pid)
        try:
            socket.send_fds(
                self.control,
                [encode_control(Forked(pid))],
                [ours.fileno(), ours_conns.fileno(), slots],
            )
        finally:
            ours.close()
            ours_conns.close()
            os.close(slots)


def main_exit(code: int) -> None:
    """Flush stdio and exit the zygote process with ``code``."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
