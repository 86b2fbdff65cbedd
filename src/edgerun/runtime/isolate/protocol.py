"""The wire protocol between the node, a deployment's zygote and its workers (msgspec).

Two channels, both Unix sockets:

* **worker data** (``SOCK_STREAM``, one per worker): length-prefixed frames, each a
  4-byte big-endian length then one msgpack-encoded message. Requests are multiplexed
  by ``id`` (chosen by the node, unique per worker connection), so one worker serves
  several requests at once and bodies stream both ways::

      node -> worker   Start (may carry the whole body), Body*, Cancel
      worker -> node   Head, Chunk*, Done

  ``Done`` ends a request: its ``Outcome`` value, the CPU and wall milliseconds used
  and, for a failed request, the error code and message.
* **zygote control** (``SOCK_SEQPACKET``: one message per packet, so a passed file
  descriptor is attached to exactly one message): ``Spec`` (node -> zygote, first),
  ``Ready``/``Failed`` (zygote's answer), ``Fork`` -> ``Forked`` (with the worker's
  socket as ``SCM_RIGHTS``), ``Exited`` (a worker's wait status), ``Stop``.
* **worker connections** (``SOCK_SEQPACKET``, one per worker): client connections
  handed to the worker to serve HTTP itself (``runtime.isolate.handoff``).
  ``Adopt`` (node -> worker, the client socket attached) gives one, ``Give``
  asks for some back; ``Returned``/``Closed`` (worker -> node) end the worker's hold
  on one; ``Flush`` -> ``Report`` moves the worker's usage totals to the node, and
  ``Retiring`` says the worker hit a limit and should get no more connections.

``FrameReader`` splits a byte stream into messages; ``encode_frame`` /
``encode_frames`` build them with one reused encoder (no per-call allocation beyond
the output buffer).
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import msgspec

from edgerun.http import Geo

__all__ = [
    "MAX_CONTROL_PACKET",
    "MAX_FRAME",
    "Adopt",
    "BindingSpec",
    "Body",
    "Cancel",
    "Chunk",
    "Closed",
    "ConnMessage",
    "ControlMessage",
    "DataMessage",
    "Done",
    "Exited",
    "Failed",
    "Flush",
    "Fork",
    "Forked",
    "FrameError",
    "FrameReader",
    "Give",
    "Head",
    "Ready",
    "Report",
    "Retiring",
    "Returned",
    "Spec",
    "Start",
    "Stop",
    "decode_conn",
    "decode_control",
    "encode_conn",
    "encode_control",
    "encode_frame",
    "encode_frames",
    "geo_fields",
]

MAX_FRAME: Final = 64 * 1024 * 1024
"""Largest frame accepted (bytes); a bigger length prefix means a corrupt stream."""

_HEADER: Final = 4


class FrameError(ValueError):
    """The byte stream is not a valid sequence of frames (corrupt or hostile peer)."""


# -- worker data channel ------------------------------------------------------------------


class Start(msgspec.Struct, tag="s", array_like=True, gc=False):
    """A new request. ``body`` holds the body (or its first part); ``more`` says whether
    ``Body`` frames follow. ``geo`` is ``[country, region, city, latitude, longitude,
    timezone, asn, pop]`` or None; ``traceparent`` is the W3C trace context ("" if none).
    """

    id: int
    method: str
    url: str
    headers: list[tuple[str, str]]
    ip: str | None
    geo: list[Any] | None
    request_id: str
    traceparent: str
    body: bytes
    more: bool


def geo_fields(geo: Geo | None) -> list[Any] | None:
    """``geo`` as the list ``Start.geo`` and ``Adopt.geo`` carry (None stays None)."""
    if geo is None:
        return None
    return [
        geo.country,
        geo.region,
        geo.city,
        geo.latitude,
        geo.longitude,
        geo.timezone,
        geo.asn,
        geo.pop,
    ]


class Body(msgspec.Struct, tag="b", array_like=True, gc=False):
    """A chunk of a request body; ``more = False`` ends it (``data`` may be empty)."""

    id: int
    data: bytes
    more: bool


class Cancel(msgspec.Struct, tag="c", array_like=True, gc=False):
    """The node gave up on request ``id`` (client gone, wall limit): stop its handler."""

    id: int


class Head(msgspec.Struct, tag="h", array_like=True, gc=False):
    """The response status and headers of request ``id``. ``body`` holds the body (or
    its first part); ``more`` says whether ``Chunk`` frames follow."""

    id: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    more: bool


class Chunk(msgspec.Struct, tag="k", array_like=True, gc=False):
    """A chunk of a response body; ``more = False`` ends it."""

    id: int
    data: bytes
    more: bool


class Done(msgspec.Struct, tag="d", array_like=True, gc=False):
    """Request ``id`` is over: ``outcome`` is an ``Outcome`` value; ``code`` and
    ``message`` describe a failure ("" when ok). ``retire`` asks the node to send the
    worker no more requests (it hit a limit that leaves it unfit to serve)."""

    id: int
    outcome: str
    cpu_ms: float
    wall_ms: float
    code: str
    message: str
    retire: bool


DataMessage: TypeAlias = Start | Body | Cancel | Head | Chunk | Done

_data_encoder = msgspec.msgpack.Encoder()
_data_decoder = msgspec.msgpack.Decoder(DataMessage)


def encode_frame(message: DataMessage) -> bytes:
    """One message as a frame: 4-byte big-endian length, then msgpack."""
    payload = _data_encoder.encode(message)
    return len(payload).to_bytes(_HEADER, "big") + payload


def encode_frames(messages: list[DataMessage]) -> bytes:
    """Several frames concatenated, for one transport write."""
    out = bytearray()
    for message in messages:
        payload = _data_encoder.encode(message)
        out += len(payload).to_bytes(_HEADER, "big")
        out += payload
    return bytes(out)


class FrameReader:
    """Incremental frame parser: ``feed(data)`` returns the complete messages so far.

    Raises ``FrameError`` for a length over ``MAX_FRAME`` or an undecodable payload;
    the stream cannot be resynchronised after that, so the caller drops the connection.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[DataMessage]:
        """Append ``data``; decode and return every frame now complete."""
        buf = self._buf
        buf += data
        out: list[DataMessage] = []
        pos = 0
        end = len(buf)
        decode = _data_decoder.decode
        while end - pos >= _HEADER:
            size = int.from_bytes(buf[pos : pos + _HEADER], "big")
            if size > MAX_FRAME:
                raise FrameError(f"frame of {size} bytes exceeds the {MAX_FRAME}-byte maximum")
            stop = pos + _HEADER + size
            if stop > end:
                break
            try:
                out.append(decode(memoryview(buf)[pos + _HEADER : stop]))
            except msgspec.DecodeError as exc:
                raise FrameError(f"undecodable frame: {exc}") from None
            pos = stop
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete frame."""
        return len(self._buf)


# -- zygote control channel ---------------------------------------------------------------


class BindingSpec(msgspec.Struct, frozen=True):
    """One binding to open in a worker: its ``kind`` (``"kv"``, ``"cache"``), its env
    ``name`` and kind-specific ``options`` (plain values). The node builds these from
    the project config; the injected binding factory turns them into objects."""

    kind: str
    name: str
    options: dict[str, Any] = {}


class Spec(msgspec.Struct, tag="spec", frozen=True):
    """Everything a zygote needs to serve one deployment, sent once at its start.

    ``code_root``/``main``: where to load the entry point from. ``state_dir``: the
    deployment's state directory (the worker's cwd and HOME). ``environ``: the whole
    environment user code sees. ``vars``/``secrets``: ``env`` values (secrets travel
    here, never through a file the worker could read). ``uid``/``gid``: the identity
    to drop to before any user code runs (None: keep the current one). Limits are in
    milliseconds / MiB as in ``[limits]``; ``max_tasks`` bounds the deployment uid's
    processes and threads (zygote and workers included; None: unbounded),
    ``disk_mb`` any file written and the private ``/tmp``; ``network`` False gives the
    deployment an empty network namespace. ``first_cpu_ms`` is the budget of each
    worker's first request when larger than ``cpu_ms`` (first-use work).
    """

    name: str
    code_root: str
    main: str
    state_dir: str
    environ: dict[str, str]
    vars: dict[str, Any]
    secrets: dict[str, str]
    bindings: list[BindingSpec]
    cpu_ms: int
    wall_ms: int
    memory_mb: int
    max_concurrency: int
    uid: int | None = None
    gid: int | None = None
    debug: bool = False
    nofile: int = 1024
    max_tasks: int | None = None
    disk_mb: int = 1024
    network: bool = True
    first_cpu_ms: int = 0


class Ready(msgspec.Struct, tag="ready", frozen=True):
    """The zygote loaded the entry point and waits for ``Fork``; ``pid`` is its own."""

    pid: int


class Failed(msgspec.Struct, tag="failed", frozen=True):
    """The zygote could not load the deployment; ``message`` says why (user-facing)."""

    message: str


class Fork(msgspec.Struct, tag="fork", frozen=True):
    """Fork one worker."""


class Forked(msgspec.Struct, tag="forked", frozen=True):
    """A worker was forked; its data socket is attached to this packet."""

    pid: int


class Exited(msgspec.Struct, tag="exited", frozen=True):
    """Worker ``pid`` ended with wait status ``status`` (``os.waitstatus_to_exitcode``)."""

    pid: int
    status: int


class Stop(msgspec.Struct, tag="stop", frozen=True):
    """Kill the remaining workers and exit."""


ControlMessage: TypeAlias = Spec | Ready | Failed | Fork | Forked | Exited | Stop

_control_encoder = msgspec.msgpack.Encoder()
_control_decoder = msgspec.msgpack.Decoder(ControlMessage)

MAX_CONTROL_PACKET = 1024 * 1024
"""Largest control message (one SOCK_SEQPACKET packet) between node and zygote."""


def encode_control(message: ControlMessage) -> bytes:
    """One control message as a packet payload."""
    return _control_encoder.encode(message)


def decode_control(data: bytes) -> ControlMessage:
    """Decode one control packet; raises ``FrameError`` when it is not a valid message."""
    try:
        message: ControlMessage = _control_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise FrameError(f"undecodable control message: {exc}") from None
    return message


# -- worker connection channel ------------------------------------------------------------


class Adopt(msgspec.Struct, tag="adopt", array_like=True):
    """Serve client connection ``conn`` (its socket is attached). ``data`` holds the
    bytes the node already read (the start of the next request); ``slot`` is the
    connection's slot in the worker's shared state; ``ip``/``geo`` are the client's
    (fixed for the connection: the peer is not a trusted proxy); ``routes`` lists every
    route pattern on the node with whether it is this deployment's; ``headers`` are
    added to every response (``x-edgerun-version``); ``cold`` marks the first request
    as a cold start; ``http`` are the node's ``HttpLimits`` values in field order and
    ``access_log`` whether to log each request."""

    conn: int
    slot: int
    data: bytes
    ip: str | None
    geo: list[Any] | None
    routes: list[tuple[str, bool]]
    headers: list[tuple[str, str]]
    cold: bool
    http: list[int | float]
    access_log: bool


class Give(msgspec.Struct, tag="give", array_like=True):
    """Hand back connection ``conn`` (``-1``: every connection) once it is between
    requests; ``close`` closes it instead (the node is shutting down)."""

    conn: int
    close: bool


class Returned(msgspec.Struct, tag="returned", array_like=True):
    """Connection ``conn`` is the node's again; ``data`` is what the worker read of it
    but did not serve (the start of the next request)."""

    conn: int
    data: bytes


class Closed(msgspec.Struct, tag="closed", array_like=True):
    """The worker ended connection ``conn`` (the client left, or it was closed)."""

    conn: int


class Flush(msgspec.Struct, tag="flush", array_like=True):
    """Send the usage counted since the last ``Report`` (answered with ``Report(seq)``)."""

    seq: int


class Report(msgspec.Struct, tag="report", array_like=True):
    """Usage of directly served requests since the last report: a list of
    ``[outcome, count, cpu_ms, wall_ms, bytes_in, bytes_out, cold_starts, error_code]``
    rows (``seq`` answers a ``Flush``; 0 when sent unasked)."""

    seq: int
    rows: list[tuple[str, int, float, float, int, int, int, str]]


class Retiring(msgspec.Struct, tag="retiring", array_like=True):
    """The worker hit a limit that leaves it unfit to serve: ``why``."""

    why: str


ConnMessage: TypeAlias = Adopt | Give | Returned | Closed | Flush | Report | Retiring

_conn_encoder = msgspec.msgpack.Encoder()
_conn_decoder = msgspec.msgpack.Decoder(ConnMessage)


def encode_conn(message: ConnMessage) -> bytes:
    """One connection-channel message as a packet payload."""
    return _conn_encoder.encode(message)


def decode_conn(data: bytes) -> ConnMessage:
    """Decode one connection-channel packet; raises ``FrameError`` when invalid."""
    try:
        message: ConnMessage = _conn_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise FrameError(f"undecodable connection message: {exc}") from None
    return message
