"""Control state on NATS JetStream: ``edgerun control --nats URL`` and the nodes following it.

The same state as :class:`~edgerun.control.store.ControlStore`, in JetStream so that many
control processes and nodes share it and nothing lives on one machine's disk:

==========================================  =========================================
KV bucket (``history=1, direct=True``)      key -> value
==========================================  =========================================
``<prefix>_control_projects``               project -> ``{active, split, secrets_rev,
                                            history}`` (history: recent activations)
``<prefix>_control_versions``               version id -> the version record
``<prefix>_control_secrets``                ``<project>.<NAME>`` -> the value
``<prefix>_control_tokens``                 token id -> ``{name, scope, hash, created}``
``<prefix>_control_usage``                  base64url(node id) -> the node's usage snapshot
==========================================  =========================================

Bundles (the uploaded .tar.gz) are objects of the object store ``<prefix>_bundles``,
named by version id and never rewritten: versions are content-addressed, so an object
that exists already is the same bytes. An upload stores the object before the version
record and the record before the project's pointer, so whoever sees a pointer can fetch
its bundle.

Every KV publish carries a ``Nats-Msg-Id`` (a retried publish is stored once). Writes
that must not race (a project's document, a new version record, a new token) are
compare-and-set on the key's last sequence (``Nats-Expected-Last-Subject-Sequence``)
and retried on conflict; reads that decide such writes go to the stream leader
(``direct=False``), not a possibly stale direct-get replica. Object chunks are
published by nats-py's object store without message ids; a failed upload is retried as
a whole new object, and readers check the digest.

Nodes read the buckets with :class:`ControlBuckets` (``edgerun node --control-nats``):
they watch the projects bucket and fetch each new version's bundle once, reading its
chunks with a pull consumer (``ObjectStore.get`` is slow in nats-py). Secret values stay
write-only over the control API; a node reads them from the secrets bucket, so NATS
credentials that can read ``<prefix>_control_secrets`` are as sensitive as the secrets
themselves: give nodes and the control plane their own NATS users and nobody else read
access to that bucket.

:class:`JetStreamControlStore` is the synchronous store the control API uses, like
``ControlStore``: it owns a private event loop in a thread and each call is one or a few
round trips to the server (the control API is not a hot path; listing versions scans
the versions bucket, fine for thousands of versions). NATS being unreachable is a
``ControlUnavailable`` (503 ``control_unavailable`` over the API).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.nuid import NUID

from edgerun.control.secrets import MAX_SECRET_BYTES, validate_secret_name
from edgerun.control.store import ControlError, Listener, ProjectState, VersionRecord
from edgerun.control.tokens import SCOPES, Principal, Scope, hash_token, new_token, same_hash
from edgerun.control.tokens import token_id as parse_token_id
from edgerun.edge.split import Split
from edgerun.errors import NotFound
from edgerun.security.bundle import BundleLimits, unpack_bundle

__all__ = [
    "ControlBuckets",
    "ControlUnavailable",
    "JetStreamControlStore",
    "project_state",
    "usage_key",
]

log = logging.getLogger("edgerun.control.jetstream")

T = TypeVar("T")

KINDS: Final = ("projects", "versions", "secrets", "tokens", "usage")
_H_MSG_ID: Final = "Nats-Msg-Id"
_H_EXPECTED: Final = "Nats-Expected-Last-Subject-Sequence"
_H_OP: Final = "KV-Operation"
_WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})
_HISTORY: Final = 50  # activations kept per project: enough for rollbacks
_CAS_ATTEMPTS: Final = 20
_TIMEOUT_S: Final = 10.0
_FETCH_BATCH: Final = 16
_PROJECT_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_VERSION_RE: Final = re.compile(r"v[0-9a-f]{12}")


class ControlUnavailable(ControlError):
    """NATS, which holds the control state, cannot be reached right now."""

    code = "control_unavailable"
    status = 503


class _Conflict(Exception):
    """A compare-and-set lost against a concurrent writer."""


def project_state(name: str, doc: dict[str, Any]) -> ProjectState:
    """The :class:`ProjectState` of a project document from the projects bucket."""
    return ProjectState(name, doc.get("active"), doc.get("split"), int(doc.get("secrets_rev", 0)))


def usage_key(node: str) -> str:
    """The usage bucket key of a node id (ids may hold characters keys cannot)."""
    return base64.urlsafe_b64encode(node.encode()).decode()


def _check_project(name: str) -> str:
    if not _PROJECT_RE.fullmatch(name):
        raise ControlError(f"{name!r} is not a project name (lowercase letters, digits, '-')")
    return name


class ControlBuckets:
    """Async access to the control buckets over one NATS connection (one event loop).

    Create with :meth:`connect`, which also creates the buckets when missing (same
    configuration from every process, so creation is idempotent).
    """

    def __init__(self, nc: Client, js: JetStreamContext, prefix: str) -> None:
        self.nc = nc
        self.js = js
        self.prefix = prefix
        self.bundles = f"{prefix}_bundles"
        self._nuid = NUID()

    @classmethod
    async def connect(
        cls, url: str, *, prefix: str = "edgerun", name: str = "edgerun"
    ) -> ControlBuckets:
        """Connect to ``url`` (reconnecting forever) and ensure the buckets exist."""

        async def quiet(exc: Exception) -> None:
            # Reconnects are expected (server restarts); nats-py would log each attempt.
            log.debug("nats: %s", exc)

        try:
            # nats-py retries a failed first connect as often as reconnects (forever
            # here): bound it, so a wrong URL fails with a message instead of hanging.
            nc = await asyncio.wait_for(
                nats.connect(
                    url, name=name, max_reconnect_attempts=-1, error_cb=quiet, connect_timeout=5
                ),
                _TIMEOUT_S,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise ControlUnavailable(
                f"cannot reach NATS at {url} ({str(exc) or type(exc).__name__}); is nats-server "
                "running with JetStream enabled?"
            ) from None
        js = nc.jetstream(timeout=_TIMEOUT_S)
        for kind in KINDS:
            await js.create_key_value(
                bucket=f"{prefix}_control_{kind}",
                history=1,
                direct=True,
                storage=api.StorageType.FILE,
            )
        await js.create_object_store(f"{prefix}_bundles", storage=api.StorageType.FILE)
        return cls(nc, js, prefix)

    async def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            await self.nc.close()

    def bucket(self, kind: str) -> str:
        """The KV bucket name of ``kind`` (one of ``KINDS``)."""
        return f"{self.prefix}_control_{kind}"

    # -- KV primitives ----------------------------------------------------------------

    async def read(self, kind: str, key: str) -> tuple[bytes, int] | None:
        """The value of ``key`` and its sequence, from the stream leader; None if absent."""
        bucket = self.bucket(kind)
        try:
            msg = await self.js.get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")
        except nats.js.errors.NotFoundError:
            return None
        if msg.headers and msg.headers.get(_H_OP) in ("DEL", "PURGE"):
            return None
        assert msg.seq is not None
        return msg.data or b"", msg.seq

    async def write(self, kind: str, key: str, value: bytes, *, expect: int | None = None) -> int:
        """Publish ``value``; with ``expect`` (0: key must be new) raise ``_Conflict`` on a race."""
        headers = {_H_MSG_ID: self._nuid.next().decode()}
        if expect is not None:
            headers[_H_EXPECTED] = str(expect)
        try:
            ack = await self.js.publish(
                f"$KV.{self.bucket(kind)}.{key}", value, headers=headers, timeout=_TIMEOUT_S
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                raise _Conflict(key) from None
            raise
        return ack.seq

    async def remove(self, kind: str, key: str) -> None:
        """Delete ``key`` (a KV delete marker)."""
        headers = {_H_MSG_ID: self._nuid.next().decode(), _H_OP: "DEL"}
        await self.js.publish(f"$KV.{self.bucket(kind)}.{key}", b"", headers=headers)

    async def scan(self, kind: str, pattern: str = ">") -> dict[str, tuple[bytes, int]]:
        """Every live key matching ``pattern`` with its value and sequence."""
        kv = await self.js.key_value(self.bucket(kind))
        # nats-py's watcher is untyped.
        watcher: Any = await kv.watch(pattern, include_history=False, ignore_deletes=True)
        found: dict[str, tuple[bytes, int]] = {}
        try:
            while True:
                entry = await watcher.updates(timeout=_TIMEOUT_S)
                if entry is None:
                    break
                found[entry.key] = (entry.value or b"", entry.revision or 0)
                if not entry.delta:
                    break
        finally:
            await watcher.stop()
        return found

    async def last_sequence(self, kind: str) -> int:
        """The last stream sequence of ``kind``'s bucket (grows with every write)."""
        info = await self.js.stream_info(f"KV_{self.bucket(kind)}")
        return int(info.state.last_seq)

    # -- documents --------------------------------------------------------------------

    async def project_doc(self, name: str) -> tuple[dict[str, Any], int] | None:
        """A project's document and sequence, or None."""
        found = await self.read("projects", name)
        return (json.loads(found[0]), found[1]) if found else None

    async def update_project(
        self, name: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Compare-and-set ``change(doc)`` on a project (None from ``change``: no write)."""
        for _ in range(_CAS_ATTEMPTS):
            found = await self.project_doc(name)
            doc, seq = found if found else (None, 0)
            new = change(json.loads(json.dumps(doc)) if doc is not None else None)
            if new is None:
                return doc
            try:
                await self.write("projects", name, json.dumps(new).encode(), expect=seq)
            except _Conflict:
                continue
            return new
        raise ControlError(f"{name} is being changed by others right now; try again")

    async def version(self, version: str) -> VersionRecord | None:
        """A version record, or None."""
        if not _VERSION_RE.fullmatch(version):
            return None
        found = await self.read("versions", version)
        return VersionRecord(**json.loads(found[0])) if found else None

    async def secret_values(self, project: str) -> dict[str, str]:
        """The project's secrets with values (for nodes building an env)."""
        found = await self.scan("secrets", f"{_check_project(project)}.*")
        return {key.partition(".")[2]: data.decode() for key, (data, _) in found.items()}

    async def verify_token(self, token: str) -> Principal | None:
        """The owner of ``token``, or None when it is malformed, unknown or wrong."""
        ident = parse_token_id(token)
        if ident is None:
            return None
        found = await self.read("tokens", ident)
        if found is None:
            return None
        row = json.loads(found[0])
        if not same_hash(token, row["hash"]):
            return None
        return Principal(row["name"], _scope(row["scope"]))

    # -- bundles ----------------------------------------------------------------------

    async def put_bundle(self, version: str, data: bytes) -> None:
        """Store ``data`` as object ``version`` unless it is there (objects are immutable)."""
        obs = await self.js.object_store(self.bundles)
        try:
            await obs.get_info(version)
            return
        except nats.js.errors.ObjectNotFoundError:
            pass
        await obs.put(version, data)

    async def fetch_bundle(self, version: str) -> bytes:
        """The bytes of bundle ``version``, read chunk by chunk with a pull consumer.

        Raises ``NotFound`` when there is no such object and ``ControlError`` when the
        chunks do not match the object's size and digest.
        """
        obs = await self.js.object_store(self.bundles)
        try:
            info = await obs.get_info(version)
        except nats.js.errors.ObjectNotFoundError:
            raise NotFound(f"no bundle for version {version!r}") from None
        size, chunks = int(info.size or 0), int(info.chunks or 0)
        parts: list[bytes] = []
        if chunks:
            sub = await self.js.pull_subscribe(
                f"$O.{self.bundles}.C.{info.nuid}",
                stream=f"OBJ_{self.bundles}",
                config=api.ConsumerConfig(
                    ack_policy=api.AckPolicy.NONE,
                    inactive_threshold=30.0,
                    mem_storage=True,
                ),
            )
            try:
                while len(parts) < chunks:
                    batch = min(_FETCH_BATCH, chunks - len(parts))
                    for msg in await sub.fetch(batch, timeout=_TIMEOUT_S):
                        parts.append(msg.data)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        data = b"".join(parts)
        digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        if len(data) != size or (info.digest and info.digest.upper() != digest.upper()):
            raise ControlError(f"bundle {version} in NATS is damaged (size or digest mismatch)")
        return data


class JetStreamControlStore:
    """The control store (``ControlState``) on JetStream; thread-safe, synchronous.

    ``cache_dir`` keeps validated, extracted copies of bundles (this process's cache;
    the object store is the source of truth). ``prefix`` names the buckets (tests give
    each store its own).
    """

    def __init__(
        self,
        url: str,
        cache_dir: Path,
        *,
        prefix: str = "edgerun",
        bundle_limits: BundleLimits | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.cache_dir, 0o700)  # extracted bundles may hold sensitive code
        self.bundles = self.cache_dir / "bundles"
        self.bundle_limits = bundle_limits or BundleLimits()
        self._listeners: list[Listener] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="edgerun-control-nats", daemon=True
        )
        self._thread.start()
        try:
            self._buckets: ControlBuckets = self._call(
                ControlBuckets.connect(url, prefix=prefix, name="edgerun-control")
            )
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        # The caller may be another event loop's thread (the API): it waits for one
        # local round trip, which is acceptable off the request hot path.
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(_TIMEOUT_S * 3)
        except (TimeoutError, nats.errors.Error) as exc:
            future.cancel()
            # An API caller gets a 503 with this message rather than a bare 500.
            raise ControlUnavailable(
                f"the control state in NATS is unavailable ({str(exc) or type(exc).__name__}); "
                "retry later"
            ) from None

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        """Close the NATS connection and the private loop."""
        if self._loop.is_closed():
            return
        self._call(self._buckets.close())
        self._stop_loop()

    # -- change notification ----------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(revision)`` after every change made through this store."""
        self._listeners.append(listener)

    @property
    def revision(self) -> int:
        """Grows with every change of versions, pointers, splits or secrets (any process)."""

        async def total() -> int:
            b = self._buckets
            return sum([await b.last_sequence(k) for k in ("projects", "versions", "secrets")])

        return self._call(total())

    def _changed(self) -> None:
        if self._listeners:
            revision = self.revision
            for listener in list(self._listeners):
                listener(revision)

    # -- tokens -----------------------------------------------------------------------

    def create_token(self, scope: str, name: str | None = None) -> tuple[str, Principal]:
        """Create a token of ``scope``; return it (shown once, stored hashed) and its owner."""
        if scope not in SCOPES:
            raise ControlError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        token, ident = new_token()
        label = name or f"{scope}-{ident}"
        row = {"name": label, "scope": scope, "hash": hash_token(token), "created": time.time()}
        # expect=0: a (vanishingly unlikely) id collision fails rather than overwrites.
        self._call(self._buckets.write("tokens", ident, json.dumps(row).encode(), expect=0))
        return token, Principal(label, _scope(scope))

    def verify_token(self, token: str) -> Principal | None:
        """The owner of ``token``, or None when it is malformed, unknown or wrong."""
        return self._call(self._buckets.verify_token(token))

    # -- versions ---------------------------------------------------------------------

    def add_version(
        self, data: bytes, *, author: str, message: str = "", activate: bool = True
    ) -> tuple[VersionRecord, bool]:
        """Validate and store a bundle; return its record and whether it is new.

        Raises a ``BundleError`` for a bad bundle (nothing stored in NATS). With
        ``activate`` the version becomes the project's active one (clearing any split).
        """
        bundle = unpack_bundle(data, self.bundles, limits=self.bundle_limits)
        self._cache_archive(bundle.version, data)
        record = VersionRecord.new(bundle, author, message)
        result = self._call(self._add_version(record, data, activate))
        self._changed()
        return result

    async def _add_version(
        self, record: VersionRecord, data: bytes, activate: bool
    ) -> tuple[VersionRecord, bool]:
        b = self._buckets
        existing = await b.version(record.id)
        if existing is None:
            await b.put_bundle(record.id, data)
            try:
                await b.write(
                    "versions", record.id, json.dumps(record.as_dict()).encode(), expect=0
                )
            except _Conflict:
                existing = await b.version(record.id)  # a concurrent upload of the same bytes

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is not None and not activate:
                return None
            doc = doc or {"active": None, "split": None, "secrets_rev": 0, "history": []}
            if activate:
                _activate(doc, record.id, record.author)
            return doc

        await b.update_project(record.project, change)
        return (existing or record), existing is None

    def _cache_archive(self, version: str, data: bytes) -> Path:
        archive = self.bundles / f"{version}.tar.gz"
        if not archive.exists():
            self.bundles.mkdir(parents=True, exist_ok=True)
            tmp = archive.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, archive)
        return archive

    def bundle_dir(self, version: str) -> Path:
        """The extracted, read-only directory of ``version`` (raises ``NotFound``)."""
        path = self.bundles / version
        if path.is_dir():
            return path
        data = self.bundle_archive(version).read_bytes()
        bundle = unpack_bundle(data, self.bundles, limits=self.bundle_limits)
        if bundle.version != version:
            raise ControlError(f"the bundle stored for {version} is {bundle.version}")
        return bundle.path

    def bundle_archive(self, version: str) -> Path:
        """The uploaded .tar.gz of ``version``, fetched once into the cache (``NotFound``)."""
        if self._call(self._buckets.version(version)) is None:
            raise NotFound(f"no version {version!r}")
        archive = self.bundles / f"{version}.tar.gz"
        if archive.is_file():
            return archive
        return self._cache_archive(version, self._call(self._buckets.fetch_bundle(version)))

    def versions(self, project: str) -> list[VersionRecord]:
        """The project's versions, newest first (raises ``NotFound`` for an unknown project)."""
        self.project(project)
        rows = self._call(self._buckets.scan("versions"))
        records = [VersionRecord(**json.loads(data)) for data, _ in rows.values()]
        mine = [r for r in records if r.project == project]
        mine.sort(key=lambda r: r.id)
        mine.sort(key=lambda r: r.created, reverse=True)
        return mine

    # -- projects ---------------------------------------------------------------------

    def projects(self) -> list[ProjectState]:
        """Every project's desired state, by name."""
        rows = self._call(self._buckets.scan("projects"))
        return [project_state(k, json.loads(v)) for k, (v, _) in sorted(rows.items())]

    def project(self, name: str) -> ProjectState:
        """One project's desired state (raises ``NotFound``)."""
        found = self._call(self._buckets.project_doc(_check_project(name)))
        if found is None:
            raise NotFound(f"no project named {name!r} (deploy it first)")
        return project_state(name, found[0])

    def promote(self, project: str, version: str, *, author: str) -> ProjectState:
        """Make ``version`` the project's active version and clear its split."""
        self._check_version(project, version)

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is None:
                raise NotFound(f"no project named {project!r} (deploy it first)")
            _activate(doc, version, author)
            return doc

        return self._update(project, change)

    def rollback(self, project: str, version: str | None, *, author: str) -> ProjectState:
        """Activate ``version``, or (None) the version active before the current one.

        Raises ``ControlError`` when there is no earlier version to return to.
        """
        if version is not None:
            return self.promote(project, version, author=author)

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is None:
                raise NotFound(f"no project named {project!r} (deploy it first)")
            # The previous *distinct* version, decided on the document we CAS against.
            earlier = next((v for v in reversed(doc["history"]) if v != doc["active"]), None)
            if earlier is None:
                raise ControlError(f"{project} has no earlier version to roll back to")
            _activate(doc, earlier, author)
            return doc

        return self._update(project, change)

    def set_split(
        self, project: str, weights: dict[str, int] | None, *, key: str = "cookie"
    ) -> ProjectState:
        """Split the project's traffic by ``weights`` (validated), or clear it with None."""
        if weights is not None:
            split = Split.create(weights, key=key, salt=project)
            for version in split.weights:
                self._check_version(project, version)
        value = {"weights": weights, "key": key} if weights is not None else None

        def change(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is None:
                raise NotFound(f"no project named {project!r} (deploy it first)")
            doc["split"] = value
            return doc

        return self._update(project, change)

    def _update(
        self, project: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> ProjectState:
        doc = self._call(self._buckets.update_project(_check_project(project), change))
        self._changed()
        assert doc is not None
        return project_state(project, doc)

    def _check_version(self, project: str, version: str) -> None:
        self.project(project)
        record = self._call(self._buckets.version(version))
        if record is None or record.project != project:
            raise ControlError(f"{project} has no version {version!r}")

    # -- secrets ----------------------------------------------------------------------

    def put_secret(self, project: str, name: str, value: str) -> None:
        """Set a secret of ``project`` (the project need not be deployed yet)."""
        validate_secret_name(name)
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise ControlError(
                f"secret {name} is {len(value.encode())} bytes; the limit is {MAX_SECRET_BYTES}"
            )
        key = f"{_check_project(project)}.{name}"
        # The value first, then the project's secrets_rev: a node that sees the new
        # revision reads the new value.
        self._call(self._buckets.write("secrets", key, value.encode()))
        self._update(project, _bump_secrets)

    def delete_secret(self, project: str, name: str) -> bool:
        """Delete a secret; return whether it existed."""
        validate_secret_name(name)
        key = f"{_check_project(project)}.{name}"
        existed = self._call(self._buckets.read("secrets", key)) is not None
        if existed:
            self._call(self._buckets.remove("secrets", key))
            self._update(project, _bump_secrets)
        return existed

    def secret_names(self, project: str) -> list[str]:
        """The names of the project's secrets, sorted (never values)."""
        return sorted(self.secret_values(project))

    def secret_values(self, project: str) -> dict[str, str]:
        """The project's secrets with values: only for nodes building an env."""
        return self._call(self._buckets.secret_values(project))

    # -- usage reports from remote nodes ------------------------------------------------

    def report_usage(self, node: str, snapshot: dict[str, Any]) -> None:
        """Keep the latest usage snapshot a node reported (not a revision change)."""
        self._call(self._buckets.write("usage", usage_key(node), json.dumps(snapshot).encode()))

    def reported_usage(self) -> dict[str, dict[str, Any]]:
        """The latest snapshot of every node that reported, by node id."""
        rows = self._call(self._buckets.scan("usage"))
        out: dict[str, dict[str, Any]] = {}
        for key, (data, _) in rows.items():
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                out[base64.urlsafe_b64decode(key).decode()] = json.loads(data)
        return out


def _activate(doc: dict[str, Any], version: str, author: str) -> None:
    doc["active"] = version
    doc["split"] = None
    doc["history"] = [*doc.get("history", []), version][-_HISTORY:]
    doc["activated_by"] = author


def _bump_secrets(doc: dict[str, Any] | None) -> dict[str, Any]:
    doc = doc or {"active": None, "split": None, "secrets_rev": 0, "history": []}
    doc["secrets_rev"] = int(doc.get("secrets_rev", 0)) + 1
    return doc


def _scope(value: str) -> Scope:
    for scope in SCOPES:
        if scope == value:
            return scope
    raise ControlError(f"unknown scope {value!r}")
