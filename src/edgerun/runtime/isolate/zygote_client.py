"""The node's handle on one zygote process: start it, fork workers, hear of exits.

``ZygoteClient.start()`` launches ``command`` (a fresh interpreter running the
zygote program) with one end of a ``SOCK_SEQPACKET`` socketpair, sends the ``Spec``
and waits for ``Ready`` (or raises ``EntrypointError`` with the zygote's ``Failed``
message). ``fork()`` returns the new worker's pid and connected socket.
``on_exit(pid, status)`` is called for every worker exit the zygote reports, and
``on_lost()`` once if the zygote itself goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
from collections import deque
from collections.abc import Callable, Sequence

from edgerun.errors import EntrypointError, WorkerCrashed
from edgerun.runtime.isolate.protocol import (
    MAX_CONTROL_PACKET,
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

__all__ = ["ForkedWorker", "ZygoteClient"]

_log = logging.getLogger("edgerun.isolate")


class ForkedWorker:
    """A new worker as the node receives it: pid, data socket, connection socket and
    the file descriptor of its shared slot table (``handoff.Slots``)."""

    __slots__ = ("conns", "data", "pid", "slots_fd")

    def __init__(self, pid: int, data: socket.socket, conns: socket.socket, slots_fd: int) -> None:
        self.pid = pid
        self.data = data
        self.conns = conns
        self.slots_fd = slots_fd

    def close(self) -> None:
        """Close all three (the worker then exits)."""
        self.data.close()
        self.conns.close()
        with contextlib.suppress(OSError):
            os.close(self.slots_fd)


class ZygoteClient:
    """One running zygote (see the module docstring); not restartable: make a new one."""

    def __init__(
        self,
        spec: Spec,
        command: Sequence[str],
        *,
        on_exit: Callable[[int, int], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.spec = spec
        self.command = list(command)
        self.on_exit = on_exit
        self.on_lost = on_lost
        self.pid: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.alive = False
        self._ready: asyncio.Future[None] | None = None
        self._forks: deque[asyncio.Future[ForkedWorker]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, timeout_s: float) -> None:
        """Launch the zygote and wait until it has loaded the entry point.

        Raises ``EntrypointError`` when the deployment's code cannot be loaded and
        ``WorkerCrashed`` when the zygote dies or is not ready within ``timeout_s``.
        """
        loop = self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [*self.command, "--control-fd", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                # Started with the deployment's environment, never the node's: what a
                # process was exec'd with stays readable in /proc/<pid>/environ.
                env=self.spec.environ,
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            theirs.close()
        self.pid = self.process.pid
        self.sock = ours
        ours.setblocking(False)
        self._ready = loop.create_future()
        self.alive = True
        ours.send(encode_control(self.spec))
        loop.add_reader(ours.fileno(), self._readable)
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready
        except BaseException:
            await self.stop()
            raise

    async def fork(self) -> ForkedWorker:
        """Fork a worker; return its pid and the node's ends of its channels."""
        if not self.alive or self.sock is None or self._loop is None:
            raise WorkerCrashed("the deployment's zygote is not running")
        future: asyncio.Future[ForkedWorker] = self._loop.create_future()
        self._forks.append(future)
        self.sock.send(encode_control(Fork()))
        return await future

    def _readable(self) -> None:
        sock = self.sock
        assert sock is not None
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_CONTROL_PACKET, 3)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._lost()
                return
            try:
                message = decode_control(data)
            except FrameError as exc:
                _log.error("zygote %s of %s: %s", self.pid, self.spec.name, exc)
                for fd in fds:
                    os.close(fd)
                continue
            if isinstance(message, Forked) and len(fds) == 3:
                forked = ForkedWorker(
                    message.pid, socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1]), fds[2]
                )
                if self._forks:
                    self._forks.popleft().set_result(forked)
                else:
                    forked.close()
            elif fds:
                for fd in fds:
                    os.close(fd)
            elif isinstance(message, Exited):
                self.on_exit(message.pid, message.status)
            elif isinstance(message, Ready):
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
            elif isinstance(message, Failed) and self._ready is not None and not self._ready.done():
                self._ready.set_exception(EntrypointError(message.message))

    def _lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        if self._loop is not None and self.sock is not None:
            self._loop.remove_reader(self.sock.fileno())
        error = WorkerCrashed("the deployment's zygote process exited")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        while self._forks:
            future = self._forks.popleft()
            if not future.done():
                future.set_exception(error)
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.process.poll()
        self.on_lost()

    async def stop(self) -> None:
        """Ask the zygote to exit (it kills its remaining workers) and reap it."""
        sock = self.sock
        if sock is not None:
            if self.alive:
                with contextlib.suppress(OSError):
                    sock.send(encode_control(Stop()))
            was_alive = self.alive
            self.alive = False
            if was_alive and self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
            self.sock = None
        process = self.process
        if process is not None:
            try:
                await asyncio.to_thread(process.wait, 5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
