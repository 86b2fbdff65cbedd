"""Streamed response bodies: the node stops reading a worker that is ahead of its clients."""

from __future__ import annotations

import asyncio
from typing import Any

from edgerun.runtime.isolate.pool import Call, Pool, PoolSettings, WorkerConn
from edgerun.runtime.isolate.protocol import Chunk, Head, Spec, encode_frame

CHUNK = 64 * 1024


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0
        self.resumes = 0

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False
        self.resumes += 1

    def is_closing(self) -> bool:
        return False

    def write(self, data: Any) -> None:
        pass


def spec() -> Spec:
    return Spec("d", "/nonexistent", "app.py", "/tmp", {}, {}, {}, [], 50, 1000, 128, 16)


async def streaming_call() -> tuple[WorkerConn, FakeTransport, Call]:
    pool = Pool(spec(), PoolSettings(), ["true"])
    worker = WorkerConn(pool, 12345)
    transport = FakeTransport()
    worker.connection_made(transport)
    worker.inflight = 1
    call = Call(worker, worker.new_id(), "rid", 0.0)
    worker.calls[call.id] = call
    worker.data_received(encode_frame(Head(call.id, 200, [], b"", True)))
    return worker, transport, call


def test_reading_pauses_past_the_high_water_mark_and_resumes_once_drained():
    async def scenario() -> None:
        worker, transport, call = await streaming_call()
        sent = 0
        while not transport.paused:
            worker.data_received(encode_frame(Chunk(call.id, b"x" * CHUNK, True)))
            sent += CHUNK
            assert sent <= 2 * 1024 * 1024, "the node never stopped reading"
        assert sent > 1024 * 1024
        body = call.body()
        taken = 0
        while transport.paused:
            taken += len(await body.__anext__())
        # Reading resumed only once most of the backlog had gone to the client.
        assert sent - taken < 256 * 1024
        assert transport.pauses == 1 and transport.resumes == 1
        await body.aclose()

    asyncio.run(scenario())


def test_a_body_the_client_never_reads_releases_its_backlog():
    async def scenario() -> None:
        worker, transport, call = await streaming_call()
        while not transport.paused:
            worker.data_received(encode_frame(Chunk(call.id, b"x" * CHUNK, True)))
        # The client went away before the stream started: the invoker's after-callback
        # drops the call's backlog, so the worker's other responses flow again.
        worker.unqueue(call, call.queued)
        assert not transport.paused and worker.queued == 0 and call.queued == 0

    asyncio.run(scenario())


def test_small_streams_never_pause():
    async def scenario() -> None:
        worker, transport, call = await streaming_call()
        for _ in range(8):
            worker.data_received(encode_frame(Chunk(call.id, b"x" * CHUNK, True)))
        assert transport.pauses == 0
        assert worker.queued == 8 * CHUNK

    asyncio.run(scenario())
