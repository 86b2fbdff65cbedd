"""``NatsKVBackend``: a KV namespace in a NATS JetStream key-value bucket.

One bucket per namespace (``edgerun_kv_<namespace>``): a JetStream stream
``KV_<bucket>`` on subjects ``$KV.<bucket>.>``, laid out the way NATS KV lays out
buckets (``history=1``, direct gets allowed, file storage, rollups allowed), so the
``nats kv`` tools can inspect it. edgerun adds two stream options: per-message TTL
(``allow_msg_ttl``, server 2.11+) and atomic batch publish (``allow_atomic``, server
2.12+).

Keys. JetStream subjects are dot-separated tokens of restricted characters, so the
encoded key bytes are written one byte per token in lowercase hex
(``b"\\x01ab"`` -> ``01.61.62``). Hex preserves order, and one token per byte makes a
key prefix a subject prefix: ``list(prefix=...)`` asks the server only for subjects
``<prefix tokens>`` and ``<prefix tokens>.>``, then sorts and pages on the client.
A 512-byte key becomes a subject of about 1.5 KB, inside NATS's default 4 KB
control line.

Values. The payload is the value; headers carry the absolute expiration
(``Edgerun-Expires``, epoch seconds) and the metadata JSON (``Edgerun-Meta``,
base64url, since header values must be single-line ASCII). A value with an
expiration is also published with ``Nats-TTL`` (whole seconds, rounded up, at least 1)
so the server removes it; reads still filter on the stored expiration with this
backend's clock, so an expired value is never returned, whether or not the server has
removed it yet (and whatever the skew between clocks). A delete publishes a NATS KV
delete marker, which replaces the value (one small message stays per deleted key).

Size. NATS refuses messages over the server's ``max_payload`` (1 MiB by default),
headers included, so ``NATS_LIMITS.max_value_bytes`` is 1 MiB minus 4 KiB of room for
headers, and ``open_kv(backend="nats")`` uses it by default. A write that does not fit
the connected server's ``max_payload`` raises ``KVValidationError`` naming both limits.

Durability and consistency. Every publish carries a unique ``Nats-Msg-Id``, so a
publish the client sends twice (a retry after a lost acknowledgement, a resend after
a reconnect) is stored once within the stream's two-minute duplicate window. Reads
that must see acknowledged writes go to the stream leader
(``$JS.API.STREAM.MSG.GET``): ``get_entry`` and commit checks always, ``get`` too unless
the backend was built with ``consistent_reads=False``, which switches ``get`` to direct
gets (answered by any replica or mirror, so possibly stale, and cheaper). The server
configs edgerun writes set ``sync_interval: always``.

Revisions and atomicity. A revision is the JetStream sequence of the key's message
(plus its expiration, so a check against a value that has expired fails without a
round trip). A conditional write publishes with
``Nats-Expected-Last-Subject-Sequence``; several writes commit as one atomic batch
(all stored or none, each message carrying its own expected sequence). "Must not
exist" is first tried as expected sequence 0 and, if the key holds a delete marker or
an expired value, retried once against that message's sequence. The server checks
sequences only on subjects the batch publishes to, so on NATS every checked key must
also be written in the same commit; a commit with checks and no writes is verified by
leader reads, one key at a time.

Regions as leaf nodes (``hub_domain``). When the node's server is a leaf of a hub
whose JetStream domain is ``hub_domain``, the bucket's stream lives in the hub and
this backend keeps a local mirror of it (same stream name, in the leaf's own domain,
``mirror`` with ``external.api = "$JS.<hub>.API"``, direct gets and per-message TTL
allowed). Writes are published to ``$JS.<hub>.API.$KV.<bucket>.<key>``, which the
leaf connection maps to the hub stream's subject; leader reads, commit checks and
listings use the hub's API prefix. ``get`` with ``consistent_reads=False`` is served
by the local mirror (eventually consistent across regions) except for keys this
backend wrote itself whose mirrored copy is older than its own write, which are read
from the hub: read-your-writes per backend (per worker on a node).

Unavailability. Every server round trip is bounded by ``timeout`` (2 s by default);
while the client is disconnected, operations fail at once. Both raise
``KVUnavailable``. The client reconnects by itself.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.nuid import NUID

from edgerun.bindings.kv.backend import (
    KVCheck,
    KVEntry,
    KVMutation,
    KVRecord,
    KVVersionedRecord,
)
from edgerun.bindings.kv.limits import KVLimits
from edgerun.clock import Clock, SystemClock
from edgerun.errors import KVError, KVUnavailable, KVValidationError

__all__ = ["BUCKET_PREFIX", "HEADER_RESERVE", "NATS_LIMITS", "NatsKVBackend", "bucket_name"]

_log = logging.getLogger(__name__)

BUCKET_PREFIX: Final = "edgerun_kv_"
"""A namespace ``n`` lives in the JetStream KV bucket ``edgerun_kv_n``."""

HEADER_RESERVE: Final = 4096
"""Bytes of ``max_payload`` kept for headers when sizing ``NATS_LIMITS``."""

_DEFAULT_MAX_PAYLOAD: Final = 1024 * 1024  # nats-server's default max_payload

NATS_LIMITS: Final = KVLimits(max_value_bytes=_DEFAULT_MAX_PAYLOAD - HEADER_RESERVE)
"""The default limits of a NATS namespace: as ``KVLimits()`` but values up to 1 MiB
minus ``HEADER_RESERVE`` (what one message fits on a default nats-server)."""

_H_EXPIRES: Final = "Edgerun-Expires"
_H_META: Final = "Edgerun-Meta"
_H_OP: Final = "KV-Operation"
_H_MSG_ID: Final = "Nats-Msg-Id"
_H_TTL: Final = "Nats-TTL"
_H_EXPECTED: Final = "Nats-Expected-Last-Subject-Sequence"
_H_BATCH_ID: Final = "Nats-Batch-Id"
_H_BATCH_SEQ: Final = "Nats-Batch-Sequence"
_H_BATCH_COMMIT: Final = "Nats-Batch-Commit"
_DELETED: Final = frozenset({"DEL", "PURGE"})
# JSStreamWrongLastSequenceErrF and its constant twin: a failed expected-sequence check.
_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
_NO_MESSAGE: Final = 10037  # JSNoMessageFoundErr
_BUCKET_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_FLOOR_KEYS: Final = 4096  # keys whose last own write a leaf backend remembers

# Failures that mean "the server cannot be reached right now".
_TRANSIENT: Final = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.errors.UnexpectedEOF,
    OSError,
)


def bucket_name(namespace: str) -> str:
    """The JetStream KV bucket of ``namespace``; ``ValueError`` if it cannot name one.

    Bucket names allow ASCII letters, digits, ``_`` and ``-`` only.
    """
    if not _BUCKET_RE.match(namespace):
        raise ValueError(
            f"KV namespace {namespace!r} cannot be a NATS bucket name: use ASCII "
            f"letters, digits, '_' and '-' only"
        )
    return BUCKET_PREFIX + namespace


def _subject_tokens(key: bytes) -> str:
    return key.hex(".")


def _common_prefix(start: bytes, end: bytes | None) -> bytes:
    """The longest ``p`` such that every key in ``[start, end)`` starts with ``p``.

    Such a ``p`` is a prefix of ``start`` whose successor (the first string after all
    strings starting with ``p``) is at or past ``end``.
    """
    if end is None:
        return b""
    for size in range(len(start), 0, -1):
        candidate = start[:size].rstrip(b"\xff")
        if len(candidate) < size:
            continue  # all-0xff tails have no finite successor
        successor = candidate[:-1] + bytes((candidate[-1] + 1,))
        if end <= successor:
            return candidate
    return b""


def _revision(seq: int, expiration: float | None) -> str:
    return str(seq) if expiration is None else f"{seq}@{expiration!r}"


def _parse_revision(revision: str) -> tuple[int, float | None] | None:
    seq_text, _, exp_text = revision.partition("@")
    try:
        seq = int(seq_text)
        return seq, (float(exp_text) if exp_text else None)
    except ValueError:
        return None  # not one of ours: it cannot match any message


def _parse_raw_headers(raw: bytes) -> dict[str, str]:
    """Headers of a stored message as returned by ``STREAM.MSG.GET`` (``NATS/1.0`` block)."""
    out: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


class _Stored:
    """The last message of a key's subject, decoded."""

    __slots__ = ("data", "deleted", "expiration", "headers", "seq")

    def __init__(self, seq: int, data: bytes, headers: dict[str, str]) -> None:
        self.seq = seq
        self.data = data
        self.headers = headers
        self.deleted = headers.get(_H_OP) in _DELETED
        exp = headers.get(_H_EXPIRES)
        self.expiration = float(exp) if exp is not None else None

    def live(self, now: float) -> bool:
        return not self.deleted and (self.expiration is None or self.expiration > now)

    def metadata(self) -> str | None:
        encoded = self.headers.get(_H_META)
        if encoded is None:
            return None
        try:
            return base64.urlsafe_b64decode(encoded).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise KVError(f"stored metadata is not valid ({exc}); rewrite the key") from None


async def _quiet_error_cb(exc: Exception) -> None:
    # nats-py's default callback prints a traceback for every failed reconnect
    # attempt; operations already report unavailability as KVUnavailable.
    _log.debug("nats connection error: %r", exc)


class NatsKVBackend:
    """A ``KVBackend`` storing namespace ``namespace`` in a NATS JetStream KV bucket.

    Connects to ``url`` on first use (or uses ``connection``, an already connected
    nats-py client, which it then does not close) and creates the bucket if missing,
    with ``replicas`` JetStream replicas. ``clock`` decides expiry for reads (default:
    the system clock). ``timeout`` bounds every round trip, in seconds.
    ``consistent_reads=False`` serves ``get`` by direct get (any replica or mirror;
    may lag the leader). ``hub_domain``: the JetStream domain of the hub holding the
    bucket when the server at ``url`` is a regional leaf (reads from a local mirror,
    writes through the hub). See the module docstring for layout, limits and
    guarantees. Raises ``KVUnavailable`` when the server cannot be reached in
    ``timeout`` and ``ValueError`` for a namespace that cannot name a bucket.
    """

    def __init__(
        self,
        url: str | None,
        namespace: str,
        clock: Clock | None = None,
        *,
        connection: Client | None = None,
        timeout: float = 2.0,
        consistent_reads: bool = True,
        replicas: int = 1,
        hub_domain: str | None = None,
    ) -> None:
        if url is None and connection is None:
            raise ValueError(
                f"the nats KV backend needs a url (e.g. nats://127.0.0.1:4222) or a "
                f"connection to open namespace {namespace!r}"
            )
        self._url = url or ", ".join(str(s) for s in getattr(connection, "servers", []))
        self._namespace = namespace
        self._bucket = bucket_name(namespace)
        self._stream = f"KV_{self._bucket}"
        self._prefix = f"$KV.{self._bucket}."
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._timeout = timeout
        self._consistent = consistent_reads
        self._replicas = replicas
        self._hub = hub_domain
        # Leader reads, checks and listings go to the hub's JetStream API; writes are
        # published through the hub's prefix so the leaf connection routes them there.
        self._api = f"$JS.{hub_domain}.API." if hub_domain else "$JS.API."
        self._write = f"$JS.{hub_domain}.API." if hub_domain else ""
        # Leaf mode: the sequence of this backend's last write per key, so a mirror
        # read older than it is redone at the hub (bounded; oldest forgotten first).
        self._floors: OrderedDict[bytes, int] = OrderedDict()
        self._nc: Client | None = connection
        self._owns_connection = connection is None
        self._ready = False
        self._atomic = False
        self._msg_ttl = False
        self._lock = asyncio.Lock()
        self._nuid = NUID()
        self._closed = False

    @property
    def bucket(self) -> str:
        """The JetStream KV bucket holding this namespace."""
        return self._bucket

    @property
    def namespace(self) -> str:
        """The namespace this backend reads and writes."""
        return self._namespace

    @property
    def supports_atomic_batch(self) -> bool:
        """Whether the bucket accepts atomic batches (known after the first operation)."""
        return self._atomic

    @property
    def supports_msg_ttl(self) -> bool:
        """Whether the bucket honours ``Nats-TTL`` (known after the first operation)."""
        return self._msg_ttl

    # --- connection -------------------------------------------------------------------

    def _where(self) -> str:
        return f"NATS KV bucket {self._bucket!r} at {self._url}"

    def _unavailable(self, exc: BaseException) -> KVUnavailable:
        reason = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
        return KVUnavailable(
            f"{self._where()} is unavailable ({reason}; timeout {self._timeout:g} s); retry later"
        )

    async def _client(self) -> Client:
        if self._closed:
            raise KVError(f"{self._where()} is closed")
        nc = self._nc
        if self._ready and nc is not None:
            if not nc.is_connected:
                # Fail fast: a request now would wait out the timeout in the
                # reconnect buffer.
                raise KVUnavailable(
                    f"{self._where()} is unavailable: the connection is down and "
                    f"reconnecting; retry later"
                )
            return nc
        async with self._lock:
            if not self._ready:
                await self._setup()
        assert self._nc is not None
        return self._nc

    async def _setup(self) -> None:
        if self._nc is None:
            nc = Client()
            try:
                # Reconnect forever once connected; the first connect is bounded here.
                # One retry on the first connect, so a refused connection fails in
                # a quarter second rather than the whole timeout. nats-py annotates
                # the two durations as int but hands them to asyncio as seconds.
                await asyncio.wait_for(
                    nc.connect(
                        servers=[self._url],
                        connect_timeout=self._timeout,  # type: ignore[arg-type]
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0.25,  # type: ignore[arg-type]
                        error_cb=_quiet_error_cb,
                        name=f"edgerun-kv-{self._namespace}",
                    ),
                    self._timeout,
                )
            except (*_TRANSIENT, nats.errors.Error) as exc:
                with contextlib.suppress(Exception):
                    await nc.close()
                raise self._unavailable(exc) from exc
            # Once connected, reconnect forever: the node outlives NATS restarts.
            # nats-py reads this option on every reconnect attempt.
            nc.options["max_reconnect_attempts"] = -1
            self._nc = nc
        js = self._nc.jetstream(timeout=self._timeout, domain=self._hub)
        try:
            try:
                info = await js.stream_info(self._stream)
            except nats.js.errors.NotFoundError:
                info = await js.add_stream(
                    api.StreamConfig(
                        name=self._stream,
                        subjects=[f"{self._prefix}>"],
                        allow_direct=True,
                        allow_rollup_hdrs=True,
                        allow_msg_ttl=True,
                        allow_atomic=True,
                        deny_delete=True,
                        discard=api.DiscardPolicy.NEW,
                        duplicate_window=120.0,
                        max_msgs_per_subject=1,
                        max_msgs=-1,
                        max_bytes=-1,
                        max_consumers=-1,
                        num_replicas=self._replicas,
                        storage=api.StorageType.FILE,
                    )
                )
            if self._hub is not None:
                await self._ensure_mirror()
        except _TRANSIENT as exc:
            raise self._unavailable(exc) from exc
        except nats.js.errors.APIError as exc:
            if exc.code == 503:
                raise self._unavailable(exc) from exc
            raise KVError(f"{self._where()} could not be opened: {exc}") from exc
        self._atomic = bool(info.config.allow_atomic)
        self._msg_ttl = bool(info.config.allow_msg_ttl)
        self._ready = True

    async def _ensure_mirror(self) -> None:
        """Create this leaf's mirror of the hub's stream if it does not exist yet."""
        assert self._nc is not None
        local = self._nc.jetstream(timeout=self._timeout)
        try:
            await local.stream_info(self._stream)
        except nats.js.errors.NotFoundError:
            await local.add_stream(
                api.StreamConfig(
                    name=self._stream,
                    mirror=api.StreamSource(
                        name=self._stream, external=api.ExternalStream(api=f"$JS.{self._hub}.API")
                    ),
                    allow_direct=True,
                    mirror_direct=True,
                    allow_msg_ttl=True,
                    max_msgs_per_subject=1,
                    num_replicas=self._replicas,
                    storage=api.StorageType.FILE,
                )
            )

    def _wrote(self, key: bytes, seq: int | None) -> None:
        if self._hub is None or seq is None:
            return
        self._floors[key] = seq
        self._floors.move_to_end(key)
        if len(self._floors) > _FLOOR_KEYS:
            self._floors.popitem(last=False)

    # --- requests ---------------------------------------------------------------------

    async def _request(
        self, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None
    ) -> Msg:
        nc = await self._client()
        try:
            return await nc.request(subject, payload, timeout=self._timeout, headers=headers)
        except _TRANSIENT as exc:
            raise self._unavailable(exc) from exc
        except nats.errors.MaxPayloadError as exc:
            raise self._too_big(len(payload), headers, nc.max_payload) from exc

    def _api_error(self, error: dict[str, Any], what: str) -> KVError:
        if error.get("code") == 503:
            return KVUnavailable(
                f"{self._where()} is unavailable ({error.get('description')}); retry later"
            )
        return KVError(f"{self._where()}: {what} failed: {error.get('description')}")

    def _too_big(
        self, size: int, headers: dict[str, str] | None, max_payload: int
    ) -> KVValidationError:
        header_bytes = sum(len(k) + len(v) + 4 for k, v in (headers or {}).items()) + 12
        return KVValidationError(
            f"value is {size} bytes (plus {header_bytes} bytes of headers); the NATS "
            f"server's max_payload is {max_payload} bytes per message, below this "
            f"namespace's max_value_bytes: store a smaller value, or raise max_payload on "
            f"the server"
        )

    def _headers(
        self,
        value: bytes | None,
        expiration: float | None,
        metadata: str | None,
    ) -> dict[str, str]:
        headers = {_H_MSG_ID: self._nuid.next().decode()}
        if value is None:
            headers[_H_OP] = "DEL"
            return headers
        if expiration is not None:
            headers[_H_EXPIRES] = repr(expiration)
            if self._msg_ttl:
                ttl = max(1, math.ceil(expiration - self._clock.time()))
                headers[_H_TTL] = str(ttl)
        if metadata is not None:
            headers[_H_META] = base64.urlsafe_b64encode(metadata.encode("utf-8")).decode()
        return headers

    def _check_size(self, payload: bytes, headers: dict[str, str], nc: Client) -> None:
        header_bytes = sum(len(k) + len(v) + 4 for k, v in headers.items()) + 12
        if len(payload) + header_bytes > nc.max_payload:
            raise self._too_big(len(payload), headers, nc.max_payload)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> int | None:
        """Publish one message; its sequence, or ``None`` for a failed expected sequence."""
        nc = await self._client()
        self._check_size(payload, headers, nc)
        reply = await self._request(self._write + subject, payload, headers)
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error is not None:
            if error.get("err_code") in _WRONG_LAST_SEQUENCE:
                return None
            raise self._api_error(error, f"a write to {subject!r}")
        return int(answer["seq"])

    async def _publish_batch(
        self, messages: Sequence[tuple[str, bytes, dict[str, str]]]
    ) -> int | None:
        """Publish ``messages`` as one atomic batch; the first message's sequence, or
        ``None`` for a failed expected sequence (then nothing was stored)."""
        nc = await self._client()
        batch_id = self._nuid.next().decode()
        last = len(messages)
        try:
            for index, (subject, payload, headers) in enumerate(messages, 1):
                headers[_H_BATCH_ID] = batch_id
                headers[_H_BATCH_SEQ] = str(index)
                self._check_size(payload, headers, nc)
                if index == last:
                    headers[_H_BATCH_COMMIT] = "1"
                    reply = await self._request(self._write + subject, payload, headers)
                elif index == 1:
                    # A request for the first message: the server answers (empty) once
                    # the batch is open, or with an error if it cannot take it.
                    first = await self._request(self._write + subject, payload, headers)
                    if first.data:
                        error = json.loads(first.data).get("error")
                        if error is not None:
                            raise self._api_error(error, "an atomic batch")
                else:
                    await nc.publish(self._write + subject, payload, headers=headers)
        except _TRANSIENT as exc:
            raise self._unavailable(exc) from exc
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error is not None:
            if error.get("err_code") in _WRONG_LAST_SEQUENCE:
                return None
            raise self._api_error(error, "an atomic batch")
        if answer.get("count") != last:
            raise KVError(f"{self._where()}: atomic batch acknowledged {answer!r}")
        return int(answer["seq"]) - last + 1

    async def _last(self, key: bytes, *, consistent: bool = True) -> _Stored | None:
        """The last message of ``key``'s subject, from the leader unless told otherwise."""
        subject = self._prefix + _subject_tokens(key)
        if not consistent:
            reply = await self._request(f"$JS.API.DIRECT.GET.{self._stream}.{subject}")
            headers = dict(reply.headers or {})
            status = headers.get("Status")
            if status == "404":
                return None
            if status is not None:
                raise self._api_error(
                    {"code": int(status), "description": headers.get("Description")},
                    f"a read of {subject!r}",
                )
            return _Stored(int(headers["Nats-Sequence"]), reply.data, headers)
        reply = await self._request(
            f"{self._api}STREAM.MSG.GET.{self._stream}",
            json.dumps({"last_by_subj": subject}).encode(),
        )
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error is not None:
            if error.get("err_code") == _NO_MESSAGE or error.get("code") == 404:
                return None
            raise self._api_error(error, f"a read of {subject!r}")
        message = answer["message"]
        raw_headers = message.get("hdrs")
        headers = _parse_raw_headers(base64.b64decode(raw_headers)) if raw_headers else {}
        data = base64.b64decode(message["data"]) if message.get("data") else b""
        return _Stored(int(message["seq"]), data, headers)

    # --- KVBackend --------------------------------------------------------------------

    async def get(self, key: bytes) -> KVRecord | None:
        """The live record for ``key``, or ``None`` if missing, deleted or expired."""
        stored = await self._last(key, consistent=self._consistent)
        floor = self._floors.get(key) if not self._consistent else None
        if floor is not None and (stored is None or stored.seq < floor):
            stored = await self._last(key)  # the mirror lags our own write: ask the hub
        if stored is None or not stored.live(self._clock.time()):
            return None
        return (stored.data, stored.expiration, stored.metadata())

    async def get_entry(self, key: bytes) -> KVVersionedRecord | None:
        """The live record with its revision, read from the stream leader."""
        stored = await self._last(key)
        if stored is None or not stored.live(self._clock.time()):
            return None
        return (
            stored.data,
            stored.expiration,
            stored.metadata(),
            _revision(stored.seq, stored.expiration),
        )

    async def put(
        self, key: bytes, value: bytes, expiration: float | None, metadata: str | None
    ) -> None:
        """Create or replace ``key``; returns once the server has stored it."""
        await self._client()  # first use: learn whether the bucket honours Nats-TTL
        subject = self._prefix + _subject_tokens(key)
        self._wrote(
            key, await self._publish(subject, value, self._headers(value, expiration, metadata))
        )

    async def delete(self, key: bytes) -> None:
        """Replace ``key`` with a delete marker; a missing key is not an error."""
        subject = self._prefix + _subject_tokens(key)
        self._wrote(key, await self._publish(subject, b"", self._headers(None, None, None)))

    async def commit(
        self, checks: Sequence[KVCheck], mutations: Sequence[KVMutation]
    ) -> list[str | None] | None:
        """Check and write atomically (see the module docstring for the protocol).

        Raises ``KVError`` when a checked key is not also written, or when several
        keys are written and the bucket does not accept atomic batches.
        """
        now = self._clock.time()
        if not mutations:
            for key, revision in checks:
                stored = await self._last(key)
                live = stored is not None and stored.live(now)
                current = _revision(stored.seq, stored.expiration) if live and stored else None
                if current != revision:
                    return None
            return []
        written = {mutation[0] for mutation in mutations}
        unwritten = [key for key, _ in checks if key not in written]
        if unwritten:
            raise KVError(
                f"{self._where()}: an atomic operation on NATS must write every key it "
                f"checks ({len(unwritten)} checked key(s) are not set or deleted); NATS "
                f"verifies revisions only on the keys a batch writes"
            )
        await self._client()  # learn the bucket's capabilities before choosing a path
        if len(mutations) > 1 and not self._atomic:
            raise KVError(
                f"{self._where()} does not accept atomic batches (nats-server 2.12+ with "
                f"allow_atomic on the stream); write one key per atomic operation"
            )
        expected: dict[bytes, int] = {}
        must_be_missing: list[bytes] = []
        for key, revision in checks:
            if revision is None:
                expected[key] = 0
                must_be_missing.append(key)
                continue
            parsed = _parse_revision(revision)
            if parsed is None or (parsed[1] is not None and parsed[1] <= now):
                return None  # not a revision of ours, or its value has expired since
            expected[key] = parsed[0]
        first = await self._try_commit(mutations, expected)
        if first is None and must_be_missing:
            # Expected sequence 0 fails when the subject still holds a delete marker
            # or an expired value; both count as missing, so expect that message.
            changed = False
            for key in must_be_missing:
                stored = await self._last(key)
                if stored is not None and stored.live(self._clock.time()):
                    return None
                if stored is not None:
                    expected[key] = stored.seq
                    changed = True
            if changed:
                first = await self._try_commit(mutations, expected)
        if first is None:
            return None
        for index, mutation in enumerate(mutations):
            self._wrote(mutation[0], first + index)
        return [
            None if value is None else _revision(first + index, expiration)
            for index, (_, value, expiration, _) in enumerate(mutations)
        ]

    async def _try_commit(
        self, mutations: Sequence[KVMutation], expected: dict[bytes, int]
    ) -> int | None:
        messages: list[tuple[str, bytes, dict[str, str]]] = []
        for key, value, expiration, metadata in mutations:
            headers = self._headers(value, expiration, metadata)
            if key in expected:
                headers[_H_EXPECTED] = str(expected[key])
            messages.append((self._prefix + _subject_tokens(key), value or b"", headers))
        if len(messages) == 1:
            return await self._publish(*messages[0])
        return await self._publish_batch(messages)

    async def scan(self, start: bytes, end: bytes | None, limit: int) -> list[KVEntry]:
        """Up to ``limit`` live entries with ``start <= key < end``, in key order.

        Reads the headers of the last message of every subject under the longest
        subject prefix the range allows (an ephemeral, headers-only consumer on the
        leader), then filters, sorts and cuts on the client: a page costs the number
        of keys under that prefix, not ``limit``.
        """
        common = _common_prefix(start, end)
        if common:
            tokens = self._prefix + _subject_tokens(common)
            filters = [tokens, f"{tokens}.>"]
        else:
            filters = [f"{self._prefix}>"]
        nc = await self._client()
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=api.AckPolicy.NONE,
            headers_only=True,
            filter_subjects=filters,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=max(self._timeout * 5, 5.0),
        )
        create = await self._request(
            f"{self._api}CONSUMER.CREATE.{self._stream}",
            json.dumps({"stream_name": self._stream, "config": config.as_dict()}).encode(),
        )
        answer = json.loads(create.data)
        if "error" in answer:
            raise self._api_error(answer["error"], "a listing")
        name = answer["name"]
        pending = int(answer.get("num_pending", 0))
        found: list[KVEntry] = []
        now = self._clock.time()
        try:
            if pending:
                found = await self._drain(nc, name, pending, start, end, now)
        finally:
            # Fire and forget: the consumer also expires by itself when inactive.
            with contextlib.suppress(Exception):
                await nc.publish(f"{self._api}CONSUMER.DELETE.{self._stream}.{name}", b"")
        found.sort(key=lambda entry: entry[0])
        return found[:limit]

    async def _drain(
        self, nc: Client, consumer: str, pending: int, start: bytes, end: bytes | None, now: float
    ) -> list[KVEntry]:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, pending_msgs_limit=pending + 16)
        found: list[KVEntry] = []
        skip = len(self._prefix)
        try:
            await nc.publish(
                f"{self._api}CONSUMER.MSG.NEXT.{self._stream}.{consumer}",
                json.dumps({"batch": pending, "no_wait": True}).encode(),
                reply=inbox,
            )
            received = 0
            while received < pending:
                try:
                    msg = await sub.next_msg(timeout=self._timeout)
                except _TRANSIENT as exc:
                    raise self._unavailable(exc) from exc
                headers = msg.headers or {}
                if "Status" in headers and not msg.subject.startswith(self._prefix):
                    break  # 404/408: nothing more to deliver
                received += 1
                stored = _Stored(0, b"", dict(headers))
                if not stored.live(now):
                    continue
                key = bytes.fromhex(msg.subject[skip:].replace(".", ""))
                if key < start or (end is not None and key >= end):
                    continue
                found.append((key, stored.expiration, stored.metadata()))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return found

    async def close(self) -> None:
        """Close the connection if this backend opened it; idempotent."""
        if self._closed:
            return
        self._closed = True
        nc = self._nc
        if nc is not None and self._owns_connection:
            with contextlib.suppress(Exception):
                await nc.close()
