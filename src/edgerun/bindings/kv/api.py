"""``KVNamespace``: the ``env.KV`` object user code calls, plus its result types.

The API follows Cloudflare Workers KV (``get``/``get_with_metadata``/``put``/``delete``/
``list`` with cursors, TTLs and metadata) and adds Deno KV style tuple keys for
hierarchical data and Deno KV style optimistic concurrency: ``get_entry`` returns a
value with its ``revision``, ``put(..., if_revision=...)`` writes only if the key is
still at that revision, and ``atomic()`` commits several checks and writes at once.
Every argument is validated here (``validate``) before a backend
sees it, so all backends enforce the same limits with the same messages.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, overload

from edgerun.bindings.kv.backend import (
    KVBackend,
    KVCheck,
    KVEntry,
    KVMutation,
    KVRecord,
    KVVersionedRecord,
)
from edgerun.bindings.kv.keys import KVKey, decode_key, encode_cursor
from edgerun.bindings.kv.limits import DEFAULT_LIMITS, KVLimits
from edgerun.bindings.kv.validate import (
    check_cursor,
    check_expiration,
    check_get_type,
    check_key,
    check_list_limit,
    check_metadata,
    check_prefix,
    check_value,
    quote,
)
from edgerun.clock import Clock, SystemClock
from edgerun.errors import KVConflict, KVError, KVValidationError

__all__ = [
    "GetType",
    "KVAtomic",
    "KVCommitResult",
    "KVConflict",
    "KVKeyInfo",
    "KVListResult",
    "KVNamespace",
    "KVValueWithMetadata",
    "KVVersionedValue",
]

GetType = Literal["text", "json", "bytes"]
"""How ``get`` decodes a value: UTF-8 text, parsed JSON, or raw bytes."""


@dataclass(frozen=True, slots=True)
class KVKeyInfo:
    """One key in a ``list()`` page.

    ``name`` is the key as it was put (``str`` or tuple), ``expiration`` the epoch
    second at which it expires (rounded up) or ``None``, ``metadata`` the value given
    to ``put(metadata=...)`` or ``None``.
    """

    name: KVKey
    expiration: int | None = None
    metadata: Any = None


@dataclass(frozen=True, slots=True)
class KVListResult:
    """One page of ``list()``: keys in order, and how to get the next page.

    When ``list_complete`` is false, pass ``cursor`` to the next ``list()`` call (with
    the same prefix) to continue; when it is true, ``cursor`` is ``None``.
    """

    keys: list[KVKeyInfo] = field(default_factory=list)
    list_complete: bool = True
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class KVValueWithMetadata:
    """The result of ``get_with_metadata``: ``value`` is ``None`` for a missing key."""

    value: Any
    metadata: Any = None


@dataclass(frozen=True, slots=True)
class KVVersionedValue:
    """The result of ``get_entry``: the value, its metadata and its ``revision``.

    For a missing or expired key all three are ``None``; passing that ``None``
    revision to ``check``/``if_revision`` then means "still missing", so a
    read-modify-write loop needs no special case for new keys. A revision is an
    opaque string: compare it only for equality, and only for the same key.
    """

    value: Any
    metadata: Any = None
    revision: str | None = None


@dataclass(frozen=True, slots=True)
class KVCommitResult:
    """The result of ``KVAtomic.commit()``.

    ``ok`` is false when a check failed; then nothing was written and ``revisions``
    is empty. When true, ``revisions`` maps each key written by ``set`` (as it was
    passed) to its new revision.
    """

    ok: bool
    revisions: dict[KVKey, str] = field(default_factory=dict)


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET: Final = _Unset.UNSET


def _check_revision(revision: object) -> str | None:
    if revision is None or isinstance(revision, str):
        return revision
    raise KVValidationError(
        f"revision must be a str returned by get_entry() (or None for 'must not exist'), "
        f"got {type(revision).__name__} {quote(revision)}"
    )


def _decode(value: bytes, type_: str, key: object) -> Any:
    if type_ == "bytes":
        return value
    if type_ == "text":
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise KVError(
                f"the value of key {quote(key)} is not UTF-8 text; "
                f"read it with get(key, type='bytes')"
            ) from None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise KVError(
            f"the value of key {quote(key)} is not JSON ({exc.msg} at character {exc.pos}); "
            f"read it with get(key, type='text') or type='bytes'"
        ) from None
    except UnicodeDecodeError:
        raise KVError(
            f"the value of key {quote(key)} is not JSON (not UTF-8 text); "
            f"read it with get(key, type='bytes')"
        ) from None


def _metadata(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _key_info(entry: KVEntry) -> KVKeyInfo:
    key, expiration, metadata = entry
    return KVKeyInfo(
        decode_key(key),
        None if expiration is None else math.ceil(expiration),
        _metadata(metadata),
    )


class _ClosedBackend:
    """Stands in for the backend after ``close()``: every call raises ``KVError``.

    Swapping the backend out keeps a "closed?" check off the hot path.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def _error(self) -> KVError:
        return KVError(f"KV namespace {self._name!r} is closed")

    async def get(self, key: bytes) -> KVRecord | None:
        raise self._error()

    async def get_entry(self, key: bytes) -> KVVersionedRecord | None:
        raise self._error()

    async def commit(
        self, checks: Sequence[KVCheck], mutations: Sequence[KVMutation]
    ) -> list[str | None] | None:
        raise self._error()

    async def put(
        self, key: bytes, value: bytes, expiration: float | None, metadata: str | None
    ) -> None:
        raise self._error()

    async def delete(self, key: bytes) -> None:
        raise self._error()

    async def scan(self, start: bytes, end: bytes | None, limit: int) -> list[KVEntry]:
        raise self._error()

    async def close(self) -> None:
        return None


class KVNamespace:
    """One KV namespace, as user code sees it on ``env`` (``env.KV``).

    Keys are ``str`` or tuples of ``str | int | float | bytes | bool`` (ordered
    element-wise, see ``keys``); values are ``str`` or bytes; each key may carry JSON
    metadata and an expiration. Expired keys are never returned. Limits come from
    ``limits`` (``KVLimits``); a call that breaks one raises ``KVValidationError``
    naming the limit. Backend failures raise ``KVUnavailable`` (retry later) or
    ``KVError``. Build one with ``open_kv``.
    """

    __slots__ = ("_backend", "_clock", "_limits", "_name")

    def __init__(
        self,
        backend: KVBackend,
        *,
        name: str = "kv",
        clock: Clock | None = None,
        limits: KVLimits | None = None,
    ) -> None:
        self._backend: KVBackend = backend
        self._name = name
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._limits = limits if limits is not None else DEFAULT_LIMITS

    @property
    def name(self) -> str:
        """The namespace name (from the project's ``[[kv]] namespace``)."""
        return self._name

    @property
    def limits(self) -> KVLimits:
        """The limits this namespace enforces."""
        return self._limits

    @property
    def backend(self) -> KVBackend:
        """The storage backend (for maintenance such as sweeps; not for user code)."""
        return self._backend

    def __repr__(self) -> str:
        return f"<KVNamespace {self._name!r} on {type(self._backend).__name__}>"

    @overload
    async def get(self, key: KVKey, type: Literal["text"] = "text") -> str | None: ...
    @overload
    async def get(self, key: KVKey, type: Literal["bytes"]) -> bytes | None: ...
    @overload
    async def get(self, key: KVKey, type: Literal["json"]) -> Any: ...
    @overload
    async def get(self, key: KVKey, type: str) -> Any: ...

    async def get(self, key: KVKey, type: str = "text") -> Any:
        """The value of ``key`` decoded as ``type``, or ``None`` if missing or expired.

        ``type``: ``"text"`` (``str``, the default), ``"json"`` (parsed JSON) or
        ``"bytes"``. Raises ``KVValidationError`` for an invalid key or type, and
        ``KVError`` when the stored value is not UTF-8 (``"text"``) or not JSON
        (``"json"``).
        """
        if type != "text":
            check_get_type(type)
        record = await self._backend.get(check_key(key, self._limits))
        if record is None:
            return None
        if type == "text":  # inline the common case: no helper call, no JSON work
            try:
                return record[0].decode("utf-8")
            except UnicodeDecodeError:
                pass  # let _decode build the error message
        return _decode(record[0], type, key)

    async def get_with_metadata(self, key: KVKey, type: str = "text") -> KVValueWithMetadata:
        """``get`` plus the key's metadata: ``KVValueWithMetadata(value, metadata)``.

        Both are ``None`` for a missing or expired key. Raises as ``get`` does.
        """
        check_get_type(type)
        record = await self._backend.get(check_key(key, self._limits))
        if record is None:
            return KVValueWithMetadata(None, None)
        return KVValueWithMetadata(_decode(record[0], type, key), _metadata(record[2]))

    async def get_entry(self, key: KVKey, type: str = "text") -> KVVersionedValue:
        """``get_with_metadata`` plus the key's current ``revision``, for conditional writes.

        Returns ``KVVersionedValue(value, metadata, revision)``; all ``None`` for a
        missing or expired key. The read is consistent: it sees every write
        acknowledged before it (on NATS it goes to the stream leader). Raises as
        ``get`` does.
        """
        check_get_type(type)
        record = await self._backend.get_entry(check_key(key, self._limits))
        if record is None:
            return KVVersionedValue(None, None, None)
        return KVVersionedValue(_decode(record[0], type, key), _metadata(record[2]), record[3])

    def atomic(self) -> KVAtomic:
        """Start an atomic operation: ``check``/``set``/``delete`` calls, then ``commit()``.

        Example, a counter with no lost updates under concurrency::

            while True:
                entry = await kv.get_entry("n")
                n = int(entry.value or 0) + 1
                if (await kv.atomic().check("n", entry.revision).set("n", str(n)).commit()).ok:
                    break
        """
        return KVAtomic(self)

    async def put(
        self,
        key: KVKey,
        value: str | bytes | bytearray | memoryview,
        *,
        expiration_ttl: float | None = None,
        expiration: float | None = None,
        metadata: Any = None,
        if_revision: str | _Unset | None = _UNSET,
    ) -> None:
        """Store ``value`` under ``key``, replacing any previous value and metadata.

        ``value`` is ``str`` (stored as UTF-8) or bytes-like; serialise other objects
        with ``json.dumps`` and read them back with ``get(key, type="json")``.
        ``expiration_ttl`` (seconds from now) or ``expiration`` (epoch seconds), not
        both, make the key expire; either must be at least ``limits.min_ttl_seconds``
        ahead. ``metadata`` is any JSON-serialisable object up to
        ``limits.max_metadata_bytes``. Raises ``KVValidationError`` on any violation.

        ``if_revision`` makes the write conditional (compare-and-set): a revision from
        ``get_entry`` means "only if the key is still at that revision", ``None`` means
        "only if the key does not exist"; leaving it out writes unconditionally. A
        lost condition raises ``KVConflict`` and writes nothing. For the new revision,
        or several keys at once, use ``atomic()``.
        """
        mutation = self._mutation(key, value, expiration_ttl, expiration, metadata)
        if if_revision is _UNSET:
            await self._backend.put(*mutation)
            return
        check: KVCheck = (mutation[0], _check_revision(if_revision))
        if await self._backend.commit((check,), (mutation,)) is None:
            raise KVConflict(
                f"put({quote(key)}) lost: the key is no longer at revision "
                f"{quote(if_revision)}; read it again with get_entry() and retry"
                if if_revision is not None
                else f"put({quote(key)}) lost: the key exists and if_revision=None "
                f"required it not to; read it with get_entry() and retry"
            )

    def _mutation(
        self,
        key: KVKey,
        value: object,
        expiration_ttl: object,
        expiration: object,
        metadata: Any,
    ) -> tuple[bytes, bytes, float | None, str | None]:
        """Validate one write and return it encoded for the backend (a ``KVMutation``)."""
        encoded_key = check_key(key, self._limits)
        data = check_value(value, self._limits)
        if expiration is None and expiration_ttl is None:
            expires_at = None
        else:
            expires_at = check_expiration(
                self._clock.time(), expiration, expiration_ttl, self._limits
            )
        return (encoded_key, data, expires_at, check_metadata(metadata, self._limits))

    async def delete(self, key: KVKey) -> None:
        """Remove ``key``; deleting a missing key is not an error."""
        await self._backend.delete(check_key(key, self._limits))

    async def close(self) -> None:
        """Close the backend; later calls raise ``KVError``. Idempotent."""
        backend = self._backend
        if isinstance(backend, _ClosedBackend):
            return
        self._backend = _ClosedBackend(self._name)
        await backend.close()

    # Defined last: inside the class body, ``list`` names this method from here on.
    async def list(
        self,
        prefix: KVKey | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> KVListResult:
        """One page of live keys, in key order, as ``KVListResult``.

        ``prefix``: ``None`` lists every key (all ``str`` keys, then all tuple keys); a
        ``str`` lists the ``str`` keys starting with it; a tuple lists the tuple keys
        whose leading parts equal it (``("a",)`` matches ``("a",)`` and ``("a", 1)``).
        ``limit``: 1 to ``limits.max_list_limit`` keys per page. ``cursor``: the
        ``cursor`` of the previous page, to continue after it. Raises
        ``KVValidationError`` for an invalid prefix, limit or cursor.
        """
        start, end = check_prefix(prefix, self._limits)
        count = check_list_limit(limit, self._limits)
        after = check_cursor(cursor)
        if after is not None:
            # The smallest key greater than ``after`` is ``after + b"\0"``.
            start = max(start, after + b"\x00")
        # Ask for one extra entry: its presence is how we know another page exists.
        entries = await self._backend.scan(start, end, count + 1)
        complete = len(entries) <= count
        page = entries if complete else entries[:count]
        return KVListResult(
            [_key_info(entry) for entry in page],
            complete,
            None if complete else encode_cursor(page[-1][0]),
        )


class KVAtomic:
    """An atomic operation on one namespace (Deno KV's ``atomic()``), built by chaining.

    ``check(key, revision)`` adds a precondition, ``set``/``delete`` add writes
    (validated as ``put``/``delete`` validate them, at call time), and
    ``await commit()`` applies every write if every check holds, else none:
    ``KVCommitResult.ok`` tells which. A later ``set``/``delete`` of the same key
    replaces the earlier one. At most ``limits.max_atomic_mutations`` writes and as
    many checks; more raise ``KVValidationError``. One ``KVAtomic`` commits once. On
    NATS every checked key must also be written in the same operation (the server
    checks revisions only on the subjects a batch publishes to); ``commit`` raises
    ``KVError`` otherwise.
    """

    __slots__ = ("_checks", "_committed", "_contradiction", "_kv", "_mutations")

    def __init__(self, kv: KVNamespace) -> None:
        self._kv = kv
        self._checks: dict[bytes, str | None] = {}
        self._mutations: dict[bytes, tuple[KVKey, KVMutation]] = {}
        self._contradiction = False  # two checks of one key against different revisions
        self._committed = False

    def _limit(self, kind: str, count: int) -> None:
        maximum = self._kv.limits.max_atomic_mutations
        if count > maximum:
            raise KVValidationError(
                f"an atomic operation has {count} {kind}; the limit is {maximum}"
            )

    def check(self, key: KVKey, revision: str | None) -> KVAtomic:
        """Require ``key`` to be at ``revision`` (``None``: to not exist) at commit."""
        encoded = check_key(key, self._kv.limits)
        wanted = _check_revision(revision)
        if encoded in self._checks:
            if self._checks[encoded] != wanted:
                self._contradiction = True
            return self
        self._limit("checks", len(self._checks) + 1)
        self._checks[encoded] = wanted
        return self

    def set(
        self,
        key: KVKey,
        value: str | bytes | bytearray | memoryview,
        *,
        expiration_ttl: float | None = None,
        expiration: float | None = None,
        metadata: Any = None,
    ) -> KVAtomic:
        """Write ``value`` under ``key`` at commit (arguments as for ``put``)."""
        mutation = self._kv._mutation(key, value, expiration_ttl, expiration, metadata)
        self._add(key, mutation)
        return self

    def delete(self, key: KVKey) -> KVAtomic:
        """Delete ``key`` at commit (a missing key is not an error)."""
        encoded = check_key(key, self._kv.limits)
        self._add(key, (encoded, None, None, None))
        return self

    def _add(self, key: KVKey, mutation: KVMutation) -> None:
        if mutation[0] not in self._mutations:
            self._limit("writes", len(self._mutations) + 1)
        self._mutations[mutation[0]] = (key, mutation)

    async def commit(self) -> KVCommitResult:
        """Apply the writes if every check holds; ``KVCommitResult(ok, revisions)``.

        Raises ``KVError`` if this operation was already committed, and the backend's
        ``KVUnavailable``/``KVError``, in which case the outcome is unknown only if
        the failure came after the request was sent (read the keys to find out).
        """
        if self._committed:
            raise KVError("this atomic operation was already committed; start a new one")
        self._committed = True
        if self._contradiction:
            return KVCommitResult(False)
        if not self._checks and not self._mutations:
            return KVCommitResult(True)
        entries = list(self._mutations.values())
        result = await self._kv.backend.commit(
            list(self._checks.items()), [mutation for _, mutation in entries]
        )
        if result is None:
            return KVCommitResult(False)
        return KVCommitResult(
            True,
            {key: rev for (key, _), rev in zip(entries, result, strict=True) if rev is not None},
        )
