"""The control plane's durable state: versions, active pointers, splits, secrets, tokens.

One SQLite database (``<state_dir>/control.sqlite3``, WAL, ``synchronous=FULL`` so an
acknowledged deploy survives a power cut) plus the bundles by version id under
``<state_dir>/bundles/<id>/`` (extracted, read-only) and ``<id>.tar.gz`` (as uploaded,
what remote nodes download). Every change bumps a ``revision`` counter and calls the
registered listeners; nodes watch the revision to hot-swap.

Versions are immutable: uploading the same content again returns the stored record
(its first author, time and message). Promoting a version clears the project's split.
Secret values are write-only through every public method except
:meth:`ControlStore.secret_values`, which exists for nodes building a deployment's env.

:class:`ControlState` is the interface the control API and embedded nodes use; this
SQLite store implements it for one machine, ``control.jetstream.JetStreamControlStore``
for many (state in NATS JetStream).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from edgerun.control.secrets import MAX_SECRET_BYTES, validate_secret_name
from edgerun.control.tokens import (
    SCOPES,
    Principal,
    Scope,
    hash_token,
    new_token,
    same_hash,
    token_id,
)
from edgerun.edge.split import Split
from edgerun.errors import EdgerunError, NotFound
from edgerun.security.bundle import Bundle, BundleLimits, unpack_bundle

__all__ = ["ControlError", "ControlState", "ControlStore", "ProjectState", "VersionRecord"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, hash TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, created REAL NOT NULL, author TEXT NOT NULL,
    message TEXT NOT NULL, files INTEGER NOT NULL, size INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS versions_by_project ON versions (project, created);
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY, active TEXT, split TEXT, secrets_rev INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS activations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, version TEXT NOT NULL,
    at REAL NOT NULL, author TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS secrets (
    project TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (project, name));
CREATE TABLE IF NOT EXISTS usage (node TEXT PRIMARY KEY, snapshot TEXT NOT NULL, at REAL NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
"""


class ControlError(EdgerunError):
    """A control-plane request is invalid (unknown version, bad split, ...)."""

    code = "control_invalid"
    status = 400


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One uploaded version: content-addressed ``id``, its project, who/when/message."""

    id: str
    project: str
    created: float
    author: str
    message: str
    files: int
    size: int

    @classmethod
    def new(cls, bundle: Bundle, author: str, message: str) -> VersionRecord:
        """The record of a freshly unpacked ``bundle``, created now."""
        return cls(
            bundle.version,
            bundle.config.name,
            time.time(),
            author,
            message[:1000],
            bundle.files,
            bundle.size,
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ProjectState:
    """What a project should serve: ``active`` version, optional ``split``, secrets revision."""

    name: str
    active: str | None
    split: dict[str, Any] | None
    secrets_rev: int

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {"active": self.active, "split": self.split, "secrets_rev": self.secrets_rev}


Listener = Callable[[int], None]


class ControlState(Protocol):
    """The control plane's state: what ``ControlApi`` and embedded nodes read and write.

    Implementations: :class:`ControlStore` (SQLite, one machine) and
    ``edgerun.control.jetstream.JetStreamControlStore`` (NATS JetStream). Methods are
    synchronous and thread-safe; user errors are ``ControlError``/``NotFound``/
    ``BundleError``/``SplitError``. Secret values leave only through ``secret_values``.
    """

    def close(self) -> None:
        """Release the store's resources."""
        ...

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(revision)`` after every change made through this store."""
        ...

    @property
    def revision(self) -> int:
        """A number that grows with every change of versions, pointers, splits, secrets."""
        ...

    def create_token(self, scope: str, name: str | None = None) -> tuple[str, Principal]:
        """Create a token of ``scope``; return it (shown once, stored hashed) and its owner."""
        ...

    def verify_token(self, token: str) -> Principal | None:
        """The owner of ``token``, or None when it is malformed, unknown or wrong."""
        ...

    def add_version(
        self, data: bytes, *, author: str, message: str = "", activate: bool = True
    ) -> tuple[VersionRecord, bool]:
        """Validate and store a bundle; return its record and whether it is new."""
        ...

    def bundle_dir(self, version: str) -> Path:
        """The extracted, read-only directory of ``version`` (raises ``NotFound``)."""
        ...

    def bundle_archive(self, version: str) -> Path:
        """The uploaded .tar.gz of ``version`` (raises ``NotFound``)."""
        ...

    def versions(self, project: str) -> list[VersionRecord]:
        """The project's versions, newest first (raises ``NotFound``)."""
        ...

    def projects(self) -> list[ProjectState]:
        """Every project's desired state, by name."""
        ...

    def project(self, name: str) -> ProjectState:
        """One project's desired state (raises ``NotFound``)."""
        ...

    def promote(self, project: str, version: str, *, author: str) -> ProjectState:
        """Make ``version`` the project's active version and clear its split."""
        ...

    def rollback(self, project: str, version: str | None, *, author: str) -> ProjectState:
        """Activate ``version``, or (None) the version active before the current one."""
        ...

    def set_split(
        self, project: str, weights: dict[str, int] | None, *, key: str = "cookie"
    ) -> ProjectState:
        """Split the project's traffic by ``weights``, or clear it with None."""
        ...

    def put_secret(self, project: str, name: str, value: str) -> None:
        """Set a secret of ``project``."""
        ...

    def delete_secret(self, project: str, name: str) -> bool:
        """Delete a secret; return whether it existed."""
        ...

    def secret_names(self, project: str) -> list[str]:
        """The names of the project's secrets, sorted (never values)."""
        ...

    def secret_values(self, project: str) -> dict[str, str]:
        """The project's secrets with values: only for nodes building an env."""
        ...

    def report_usage(self, node: str, snapshot: dict[str, Any]) -> None:
        """Keep the latest usage snapshot a node reported."""
        ...

    def reported_usage(self) -> dict[str, dict[str, Any]]:
        """The latest snapshot of every node that reported, by node id."""
        ...


class ControlStore:
    """Durable control state in ``state_dir``; thread-safe (one connection, one lock)."""

    def __init__(self, state_dir: Path, *, bundle_limits: BundleLimits | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)  # it holds secrets and token hashes
        self.bundles = self.state_dir / "bundles"
        self.bundle_limits = bundle_limits or BundleLimits()
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        path = self.state_dir / "control.sqlite3"
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # -- change notification ----------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(revision)`` after every committed change (in the writer's thread)."""
        self._listeners.append(listener)

    @property
    def revision(self) -> int:
        """A counter bumped by every change of versions, pointers, splits or secrets."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
            return int(row[0])

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in one transaction, bump the revision, then notify listeners."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._db)
                self._db.execute("UPDATE meta SET value = value + 1 WHERE key='revision'")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            revision = self.revision
        for listener in list(self._listeners):
            listener(revision)
        return result

    # -- tokens -----------------------------------------------------------------------

    def create_token(self, scope: str, name: str | None = None) -> tuple[str, Principal]:
        """Create a token of ``scope``; return it (shown once, stored hashed) and its owner."""
        if scope not in SCOPES:
            raise ControlError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        token, ident = new_token()
        label = name or f"{scope}-{ident}"
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?)",
                (ident, label, scope, hash_token(token), time.time()),
            )
        return token, Principal(label, _scope(scope))

    def verify_token(self, token: str) -> Principal | None:
        """The owner of ``token``, or None when it is malformed, unknown or wrong."""
        ident = token_id(token)
        if ident is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT name, scope, hash FROM tokens WHERE id = ?", (ident,)
            ).fetchone()
        if row is None or not same_hash(token, row[2]):
            return None
        return Principal(row[0], _scope(row[1]))

    # -- versions ---------------------------------------------------------------------

    def add_version(
        self, data: bytes, *, author: str, message: str = "", activate: bool = True
    ) -> tuple[VersionRecord, bool]:
        """Validate and store a bundle; return its record and whether it is new.

        Raises a ``BundleError`` for a bad bundle (nothing stored). With ``activate`` the
        version becomes the project's active one (clearing any split).
        """
        bundle: Bundle = unpack_bundle(data, self.bundles, limits=self.bundle_limits)
        archive = self.bundles / f"{bundle.version}.tar.gz"
        if not archive.exists():
            tmp = archive.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, archive)
        record = VersionRecord.new(bundle, author, message)

        def write(db: sqlite3.Connection) -> tuple[VersionRecord, bool]:
            existing = self._version(db, record.id)
            created = existing is None
            if created:
                db.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.id,
                        record.project,
                        record.created,
                        record.author,
                        record.message,
                        record.files,
                        record.size,
                    ),
                )
            db.execute("INSERT OR IGNORE INTO projects (name) VALUES (?)", (record.project,))
            if activate:
                self._activate(db, record.project, record.id, author)
            return (existing or record), created

        result: tuple[VersionRecord, bool] = self._write(write)
        return result

    def bundle_dir(self, version: str) -> Path:
        """The extracted, read-only directory of ``version`` (raises ``NotFound``)."""
        path = self.bundles / version
        if not self._known(version) or not path.is_dir():
            raise NotFound(f"no version {version!r}")
        return path

    def bundle_archive(self, version: str) -> Path:
        """The uploaded .tar.gz of ``version`` (raises ``NotFound``)."""
        path = self.bundles / f"{version}.tar.gz"
        if not self._known(version) or not path.is_file():
            raise NotFound(f"no version {version!r}")
        return path

    def versions(self, project: str) -> list[VersionRecord]:
        """The project's versions, newest first (raises ``NotFound`` for an unknown project)."""
        self.project(project)
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM versions WHERE project = ? ORDER BY created DESC, id", (project,)
            ).fetchall()
        return [VersionRecord(*row) for row in rows]

    def _known(self, version: str) -> bool:
        with self._lock:
            return self._version(self._db, version) is not None

    @staticmethod
    def _version(db: sqlite3.Connection, version: str) -> VersionRecord | None:
        row = db.execute("SELECT * FROM versions WHERE id = ?", (version,)).fetchone()
        return VersionRecord(*row) if row else None

    # -- projects: active pointer, rollback, split -------------------------------------

    def projects(self) -> list[ProjectState]:
        """Every project's desired state, by name."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, active, split, secrets_rev FROM projects ORDER BY name"
            ).fetchall()
        return [_project(row) for row in rows]

    def project(self, name: str) -> ProjectState:
        """One project's desired state (raises ``NotFound``)."""
        with self._lock:
            row = self._db.execute(
                "SELECT name, active, split, secrets_rev FROM projects WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise NotFound(f"no project named {name!r} (deploy it first)")
        return _project(row)

    def promote(self, project: str, version: str, *, author: str) -> ProjectState:
        """Make ``version`` the project's active version and clear its split."""
        self._check_version(project, version)

        def write(db: sqlite3.Connection) -> None:
            self._activate(db, project, version, author)

        self._write(write)
        return self.project(project)

    def rollback(self, project: str, version: str | None, *, author: str) -> ProjectState:
        """Activate ``version``, or (None) the version active before the current one.

        Raises ``ControlError`` when there is no earlier version to return to.
        """
        state = self.project(project)
        if version is None:
            with self._lock:
                rows = self._db.execute(
                    "SELECT version FROM activations WHERE project = ? ORDER BY seq DESC",
                    (project,),
                ).fetchall()
            # The previous *distinct* version: skip the current one and its repeats.
            version = next((r[0] for r in rows if r[0] != state.active), None)
            if version is None:
                raise ControlError(f"{project} has no earlier version to roll back to")
        return self.promote(project, version, author=author)

    def set_split(
        self, project: str, weights: dict[str, int] | None, *, key: str = "cookie"
    ) -> ProjectState:
        """Split the project's traffic by ``weights`` (validated), or clear it with None."""
        if weights is not None:
            split = Split.create(weights, key=key, salt=project)
            for version in split.weights:
                self._check_version(project, version)
        value = json.dumps({"weights": weights, "key": key}) if weights is not None else None

        def write(db: sqlite3.Connection) -> None:
            db.execute("UPDATE projects SET split = ? WHERE name = ?", (value, project))

        self._write(write)
        return self.project(project)

    def _check_version(self, project: str, version: str) -> None:
        self.project(project)
        with self._lock:
            record = self._version(self._db, version)
        if record is None or record.project != project:
            raise ControlError(f"{project} has no version {version!r}")

    @staticmethod
    def _activate(db: sqlite3.Connection, project: str, version: str, author: str) -> None:
        db.execute(
            "UPDATE projects SET active = ?, split = NULL WHERE name = ?", (version, project)
        )
        db.execute(
            "INSERT INTO activations (project, version, at, author) VALUES (?, ?, ?, ?)",
            (project, version, time.time(), author),
        )

    # -- secrets ----------------------------------------------------------------------

    def put_secret(self, project: str, name: str, value: str) -> None:
        """Set a secret of ``project`` (the project need not be deployed yet)."""
        validate_secret_name(name)
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise ControlError(
                f"secret {name} is {len(value.encode())} bytes; the limit is {MAX_SECRET_BYTES}"
            )

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR IGNORE INTO projects (name) VALUES (?)", (project,))
            db.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?, ?)", (project, name, value))
            db.execute(
                "UPDATE projects SET secrets_rev = secrets_rev + 1 WHERE name = ?", (project,)
            )

        self._write(write)

    def delete_secret(self, project: str, name: str) -> bool:
        """Delete a secret; return whether it existed."""

        def write(db: sqlite3.Connection) -> bool:
            cur = db.execute("DELETE FROM secrets WHERE project = ? AND name = ?", (project, name))
            db.execute(
                "UPDATE projects SET secrets_rev = secrets_rev + 1 WHERE name = ?", (project,)
            )
            return cur.rowcount > 0

        existed: bool = self._write(write)
        return existed

    def secret_names(self, project: str) -> list[str]:
        """The names of the project's secrets, sorted (never values)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name FROM secrets WHERE project = ? ORDER BY name", (project,)
            ).fetchall()
        return [r[0] for r in rows]

    def secret_values(self, project: str) -> dict[str, str]:
        """The project's secrets with values: only for nodes building an env."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, value FROM secrets WHERE project = ?", (project,)
            ).fetchall()
        return dict(rows)

    # -- usage reports from remote nodes ------------------------------------------------

    def report_usage(self, node: str, snapshot: dict[str, Any]) -> None:
        """Keep the latest usage snapshot a node reported (not a revision change)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO usage VALUES (?, ?, ?)",
                (node, json.dumps(snapshot), time.time()),
            )

    def reported_usage(self) -> dict[str, dict[str, Any]]:
        """The latest snapshot of every node that reported, by node id."""
        with self._lock:
            rows = self._db.execute("SELECT node, snapshot FROM usage").fetchall()
        return {node: json.loads(snap) for node, snap in rows}


def _project(row: tuple[Any, ...]) -> ProjectState:
    return ProjectState(row[0], row[1], json.loads(row[2]) if row[2] else None, int(row[3]))


def _scope(value: str) -> Scope:
    for scope in SCOPES:
        if scope == value:
            return scope
    raise ControlError(f"unknown scope {value!r}")
