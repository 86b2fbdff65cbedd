"""The project config, ``edgerun.toml``: parsed, validated, frozen.

:func:`load_project` reads a project directory's ``edgerun.toml`` (or a named file),
:func:`parse_project` parses text; both return a :class:`ProjectConfig` or raise
:class:`~edgerun.errors.ConfigError` naming the file, the 1-based line and what to
change. A file is rejected as a whole before anything runs: unknown keys (with a
"did you mean" hint), wrong types, out-of-range limits, invalid or clashing binding
names, bad route patterns, and sections this version does not implement yet
(``[[db]]``, ``[[stream]]``, ``[[ratelimit]]``, ``[auth]``, ``[triggers]``).

Example::

    name = "user-api"
    main = "app.py"                       # or "pkg.module:app"
    routes = ["api.example.com/users/*"]
    [limits]
    cpu_ms = 50
    [vars]
    API_VERSION = "2"
    [[kv]]
    binding = "KV"
    namespace = "users"
    [[cache]]
    binding = "PAGES"
"""

from __future__ import annotations

import contextlib
import difflib
import keyword
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import Any, Final, Literal, NoReturn, TypeAlias

from edgerun.edge.routes import RoutePattern
from edgerun.errors import ConfigError

__all__ = [
    "CONFIG_FILENAME",
    "CacheConfig",
    "KVBackend",
    "KVConfig",
    "LimitsConfig",
    "Mode",
    "NetworkConfig",
    "Outbound",
    "ProjectConfig",
    "ScalingConfig",
    "VarValue",
    "load_project",
    "parse_project",
]

CONFIG_FILENAME: Final = "edgerun.toml"
"""The file :func:`load_project` looks for in a project directory."""

VarValue: TypeAlias = str | int | float | bool | list["VarValue"] | dict[str, "VarValue"]
"""A ``[vars]`` value: JSON-like, as in Workers (TOML dates and times are rejected)."""

Mode: TypeAlias = Literal["isolated", "inprocess"]
"""How a deployment's code runs: worker processes (default) or the node's own loop."""

KVBackend: TypeAlias = Literal["sqlite", "memory", "nats"]
"""Where a KV namespace lives: the node's SQLite file, its memory, or NATS JetStream."""

Outbound: TypeAlias = Literal["public", "all", "none"]
"""What a deployment's code may connect to: public addresses, anything, or nothing."""

_MIB: Final = 1024 * 1024

# Inclusive bounds for [limits]; a value outside is almost always a unit mistake
# (seconds written as milliseconds, bytes as megabytes), so it is an error, not a clamp.
_LIMIT_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "cpu_ms": (1, 600_000),
    "wall_ms": (1, 900_000),
    "memory_mb": (16, 65_536),
    "max_concurrency": (1, 10_000),
    "first_request_cpu_ms": (1, 600_000),
    "max_processes": (1, 4_096),
    "max_disk_mb": (1, 1_048_576),
}
# [scaling]: integer keys with their bounds; idle_s (a number) and keep_zygote (a
# bool) are checked on their own.
_SCALING_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "target_concurrency": (1, 10_000),
    "min_workers": (0, 256),
    "max_workers": (1, 256),
}
_SCALING_KEYS: Final = (*_SCALING_BOUNDS, "idle_s", "keep_zygote", "handoff")
_IDLE_S_MAX: Final = 86_400.0
_MODES: Final[dict[str, Mode]] = {"isolated": "isolated", "inprocess": "inprocess"}
_DEFAULT_CACHE_BYTES: Final = 64 * _MIB
_CACHE_MAX_BYTES_BOUNDS: Final = (1, 64 * 1024 * _MIB)
_VAR_MAX_DEPTH: Final = 32

_TOP_KEYS: Final = (
    "name",
    "main",
    "mode",
    "routes",
    "limits",
    "scaling",
    "network",
    "vars",
    "kv",
    "cache",
)
_OUTBOUND: Final[dict[str, Outbound]] = {"public": "public", "all": "all", "none": "none"}
_KV_KEYS: Final = ("binding", "namespace", "backend", "stale_if_error")
_CACHE_KEYS: Final = ("binding", "max_bytes")
_KV_BACKENDS: Final[dict[str, KVBackend]] = {"sqlite": "sqlite", "memory": "memory", "nats": "nats"}
# Sections the design describes that this version does not implement; naming them
# explicitly beats a generic "unknown key", which would suggest a typo.
_UNSUPPORTED: Final = {
    "db": "[[db]]",
    "stream": "[[stream]]",
    "ratelimit": "[[ratelimit]]",
    "auth": "[auth]",
    "triggers": "[triggers]",
}

# DNS-label rules: the name ends up in hostnames, namespaces and file names.
_NAME_RE: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# KV namespaces become SQLite table names and NATS bucket names; this is the
# intersection of what both accept.
_NAMESPACE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_DOTTED_IDENT_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Per-request limits (``[limits]``): CPU time, wall time and worker memory.

    ``cpu_ms`` (1..600000, default 50) and ``wall_ms`` (1..900000, default 30000) bound
    one request; ``memory_mb`` (16..65536, default 128) bounds one worker process: in
    the isolated mode it is the address space a worker may add on top of the zygote
    image it was forked from. Going over one fails the request with ``exceeded_cpu`` /
    ``exceeded_wall`` / ``exceeded_memory``. ``max_concurrency`` (1..10000, default 16)
    is the most requests one worker runs at once; more wait in a bounded queue.
    ``first_request_cpu_ms`` (1..600000, default 1000) is the CPU budget of each
    worker's first request instead, when larger than ``cpu_ms``: first-use work
    (imports inside the handler, a TLS context) is paid once per worker and must not
    fail a request or kill the worker. ``max_processes`` (1..4096, default 32)
    bounds the processes and threads a deployment's code may start on top of its
    zygote and workers (a fork bomb gets ``EAGAIN``); ``max_disk_mb`` (1..1048576,
    default 1024) bounds any file it writes and its private ``/tmp``.
    """

    cpu_ms: int = 50
    wall_ms: int = 30_000
    memory_mb: int = 128
    max_concurrency: int = 16
    first_request_cpu_ms: int = 1000
    max_processes: int = 32
    max_disk_mb: int = 1024


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """A deployment's network (``[network]``, isolated mode on a node run as root).

    ``outbound = "public"`` (default) lets its code reach public addresses only:
    loopback, private, link-local and other special ranges are refused, except the
    node's DNS resolvers and the servers its bindings use (``node.firewall``);
    ``"all"`` lets it open connections anywhere (a backend on the LAN); ``"none"``
    gives its processes an empty network namespace, where every connect fails
    (bindings that need the network, such as NATS KV, fail the same way).
    Serving sockets (``listen``/``accept``) are refused either way.
    """

    outbound: Outbound = "public"


@dataclass(frozen=True, slots=True)
class ScalingConfig:
    """How a deployment's worker pool grows and shrinks (``[scaling]``, isolated mode).

    A new worker is forked while the in-flight requests per worker exceed
    ``target_concurrency`` (1..10000, default 4, at most ``limits.max_concurrency``), up
    to ``max_workers`` (1..256, default 4); ``min_workers`` (0..256, default 0, at most
    ``max_workers``) stay up even when idle. A worker idle for ``idle_s`` seconds (a
    number, 0 < idle_s <= 86400, default 60) is reaped; with ``min_workers = 0`` the
    pool then scales to zero. ``keep_zygote`` (default true) keeps the deployment's
    zygote when the pool is at zero, so a cold start is a fork, not an interpreter start.
    ``handoff`` (default true) lets the node hand a client connection to a worker,
    which then serves its requests itself (the node leaves the data path; each held
    connection counts like a request in flight); false proxies every request.
    """

    target_concurrency: int = 4
    min_workers: int = 0
    max_workers: int = 4
    idle_s: float = 60.0
    keep_zygote: bool = True
    handoff: bool = True


@dataclass(frozen=True, slots=True)
class KVConfig:
    """One ``[[kv]]`` binding: ``env.<binding>`` is the KV namespace ``namespace``.

    ``namespace`` defaults to the binding name lowercased; two bindings may share a
    namespace. ``backend`` is ``"sqlite"`` (durable), ``"memory"`` or ``"nats"`` (a
    JetStream bucket shared by every node; needs ``edgerun node --nats URL``); ``None``
    (not written) lets the node choose: NATS when it runs with ``--nats``, else SQLite,
    so one project runs unchanged on one machine and scaled out.
    ``stale_if_error``: while the backend is unreachable, ``get`` serves the last value
    this worker read or wrote for the key (a bounded per-worker cache) instead of
    raising ``KVUnavailable``.
    """

    binding: str
    namespace: str
    backend: KVBackend | None = None
    stale_if_error: bool = False


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """One ``[[cache]]`` binding: ``env.<binding>`` is a cache holding at most ``max_bytes``."""

    binding: str
    max_bytes: int = _DEFAULT_CACHE_BYTES


def _empty_vars() -> Mapping[str, VarValue]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    """A validated ``edgerun.toml``; build it with :func:`load_project` or :func:`parse_project`.

    ``name``: 1..63 lowercase letters, digits and ``-``. ``main``: the entry file
    (``"app.py"``, relative to ``root``) or module (``"app"``, ``"pkg.module:app"``).
    ``routes``: ``host/path`` patterns (see :mod:`edgerun.edge.routes`); the default
    ``("*/*",)`` serves everything. ``mode``: ``"isolated"`` (default: worker processes,
    every limit enforced) or ``"inprocess"`` (trusted code on the node's loop).
    ``scaling``: the worker pool's autoscaling (isolated mode). ``vars``: read-only
    mapping of plain values (nested arrays/tables are plain lists/dicts: copy before
    mutating). ``kv`` and ``cache``: bindings in file order. ``root``: the absolute
    project directory; ``file``: the absolute config path. Binding and var names are
    unique Python identifiers.
    Constructing it directly skips validation (meant for tests).
    """

    name: str
    main: str = "app.py"
    routes: tuple[str, ...] = ("*/*",)
    limits: LimitsConfig = LimitsConfig()
    mode: Mode = "isolated"
    scaling: ScalingConfig = ScalingConfig()
    network: NetworkConfig = NetworkConfig()
    vars: Mapping[str, VarValue] = field(default_factory=_empty_vars, hash=False)
    kv: tuple[KVConfig, ...] = ()
    cache: tuple[CacheConfig, ...] = ()
    root: Path = Path(".")
    file: Path = Path(CONFIG_FILENAME)

    @property
    def main_path(self) -> Path | None:
        """The entry file under ``root`` when ``main`` is a ``.py`` path, else ``None``."""
        return self.root / self.main if self.main.endswith(".py") else None

    def route_patterns(self) -> tuple[RoutePattern, ...]:
        """``routes`` parsed into :class:`RoutePattern` objects (they were validated)."""
        return tuple(RoutePattern.parse(r) for r in self.routes)

    def binding_names(self) -> tuple[str, ...]:
        """Every name ``env`` exposes: vars, then KV bindings, then caches, in file order."""
        return (
            *self.vars,
            *(kv.binding for kv in self.kv),
            *(c.binding for c in self.cache),
        )


def load_project(path: str | os.PathLike[str]) -> ProjectConfig:
    """Load a project: ``path`` is a project directory (its ``edgerun.toml``) or the file.

    Raises ``ConfigError`` when the file is missing (suggesting ``edgerun init``),
    unreadable, not UTF-8 (a BOM is accepted), or invalid (see :func:`parse_project`).
    Error messages name the file as ``path`` spells it; the returned config holds
    absolute ``root`` and ``file`` paths.
    """
    given = Path(path)
    file = given / CONFIG_FILENAME if given.is_dir() else given
    shown = str(file)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if given.is_dir():
            reason = (
                f"no {CONFIG_FILENAME} in {str(given)!r}; run `edgerun init` there to create one"
            )
        else:
            reason = f"{shown!r} does not exist; run `edgerun init` to create a project"
        raise ConfigError(reason, file=shown) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {shown!r}: {exc.strerror or exc}", file=shown) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"the file is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save it as UTF-8",
            file=shown,
            line=line,
        ) from None
    absolute = Path(os.path.abspath(file))
    return _parse(text, shown=shown, file=absolute, root=absolute.parent)


def parse_project(
    text: str, *, file: str = CONFIG_FILENAME, root: str | os.PathLike[str] | None = None
) -> ProjectConfig:
    """Parse and validate ``edgerun.toml`` text; raise ``ConfigError`` on anything invalid.

    ``file`` is the name errors show (``"file:line: reason"``). ``root`` is the project
    directory (default: the directory of ``file``, relative to the current directory);
    a relative ``file`` is taken inside ``root``. Every error carries the 1-based line
    of the offending key (or of its table header when the key is missing) and a reason
    saying what to change. Only ``ConfigError`` escapes, whatever the text.
    """
    shown = file
    if root is None:
        file_path = Path(os.path.abspath(file))
        root_path = file_path.parent
    else:
        root_path = Path(os.path.abspath(root))
        file_path = Path(file) if os.path.isabs(file) else root_path / file
    return _parse(text, shown=shown, file=file_path, root=root_path)


def _parse(text: str, *, shown: str, file: Path, root: Path) -> ProjectConfig:
    # Editors on Windows like to prepend a BOM; TOML forbids it, users do not see it.
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(exc, text, shown) from exc
    except RecursionError:
        raise ConfigError(
            "arrays or inline tables are nested too deeply; flatten them", file=shown, line=1
        ) from None
    return _Checker(text, shown).project(data, root=root, file=file)


# --- TOML syntax errors -----------------------------------------------------------------

_POS_RE: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_END_RE: Final = re.compile(r"\s*\(at end of document\)\s*$")
_DECLARE_RE: Final = re.compile(r"^Cannot declare \((.*)\) twice")
_KEY_PART_RE: Final = re.compile(r"'([^']*)'|\"([^\"]*)\"")
_SYNTAX_HINTS: Final = {
    "Invalid value": '; strings need quotes, e.g. key = "value"',
    "Unterminated string": "; close the string with the same quote it opens with",
    "Cannot overwrite a value": "; each key may appear only once per table",
    "Invalid statement": "; a line must be a key = value pair, a [table] or a comment",
}


def _syntax_error(exc: tomllib.TOMLDecodeError, text: str, shown: str) -> ConfigError:
    # tomllib (3.11-3.13) puts the position only in the message; 3.14 adds attributes.
    msg = str(exc.args[0]) if exc.args else str(exc)
    line: int | None = getattr(exc, "lineno", None)
    where = ""
    if (m := _POS_RE.search(msg)) is not None:
        line = line or int(m[1])
        where = f" (column {m[2]})"
        msg = msg[: m.start()]
    elif (m := _END_RE.search(msg)) is not None:
        msg = msg[: m.start()]
        where = " at the end of the file"
        # Report the last line with content: the unterminated construct is above it.
        line = line or text.rstrip().count("\n") + 1
    hint = next((h for prefix, h in _SYNTAX_HINTS.items() if msg.startswith(prefix)), "")
    if (m := _DECLARE_RE.match(msg)) is not None:
        # "Cannot declare ('a', 'b') twice" names the table as a Python tuple; show [a.b].
        table = ".".join(a or b for a, b in _KEY_PART_RE.findall(m[1]))
        msg = f"cannot declare [{table}] twice"
        hint = "; each [table] header may appear only once (use [[table]] for a list)"
    detail = msg[:1].lower() + msg[1:]
    return ConfigError(f"invalid TOML: {detail}{where}{hint}", file=shown, line=line or 1)


# --- schema validation ------------------------------------------------------------------

_KeyPath: TypeAlias = tuple[str | int, ...]


def _show(value: object) -> str:
    """Render a value as the user wrote it in TOML, for "(got ...)" in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return f"the date/time {value.isoformat()}"
    return repr(value)


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Checker:
    """Validates parsed TOML data, raising ConfigError with a located line."""

    def __init__(self, text: str, shown: str) -> None:
        self._text = text
        self._shown = shown
        self._locator: _Locator | None = None

    def line(self, path: _KeyPath) -> int:
        # Locating is only needed for errors and name clashes; build it lazily.
        if self._locator is None:
            self._locator = _Locator(self._text)
        return self._locator.line(path)

    def fail(self, path: _KeyPath, reason: str) -> NoReturn:
        raise ConfigError(reason, file=self._shown, line=self.line(path))

    def project(self, data: dict[str, Any], *, root: Path, file: Path) -> ProjectConfig:
        for key in data:
            if key in _UNSUPPORTED:
                section = _UNSUPPORTED[key]
                self.fail(
                    (key,),
                    f"{section} is not supported by this version of edgerun yet; "
                    f"remove the {section} section",
                )
            if key not in _TOP_KEYS:
                self.fail(
                    (key,),
                    f"unknown top-level key {key!r}; allowed: {', '.join(_TOP_KEYS)}"
                    + _suggest(key, _TOP_KEYS),
                )
        if "name" not in data:
            self.fail(("name",), "missing required key 'name'; add name = \"my-project\" first")
        name = self.name(data["name"])
        main = self.main(data["main"]) if "main" in data else "app.py"
        routes = self.routes(data["routes"]) if "routes" in data else ("*/*",)
        limits = self.limits(data["limits"]) if "limits" in data else LimitsConfig()
        mode = self.mode(data["mode"]) if "mode" in data else "isolated"
        scaling = self.scaling(data["scaling"]) if "scaling" in data else ScalingConfig()
        if scaling.target_concurrency > limits.max_concurrency:
            path = ("scaling", "target_concurrency")
            if "target_concurrency" not in data.get("scaling", {}):
                path = ("limits", "max_concurrency")
            self.fail(
                path,
                f"scaling.target_concurrency ({scaling.target_concurrency}) must not exceed "
                f"limits.max_concurrency ({limits.max_concurrency}): a worker would never "
                "be busy enough to grow the pool; lower one or raise the other",
            )
        network = self.network(data["network"]) if "network" in data else NetworkConfig()
        vars_ = self.vars(data["vars"]) if "vars" in data else {}
        kv = self.kv(data["kv"]) if "kv" in data else ()
        cache = self.cache(data["cache"]) if "cache" in data else ()
        self.unique_names(vars_, kv, cache)
        return ProjectConfig(
            name=name,
            main=main,
            routes=routes,
            limits=limits,
            mode=mode,
            scaling=scaling,
            network=network,
            vars=MappingProxyType(vars_),
            kv=kv,
            cache=cache,
            root=root,
            file=file,
        )

    def name(self, value: object) -> str:
        if not isinstance(value, str):
            self.fail(("name",), f'name must be a string like "my-api" (got {_show(value)})')
        if not _NAME_RE.match(value):
            fixed = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")[:63].strip("-")
            hint = f", e.g. {fixed!r}" if fixed and _NAME_RE.match(fixed) else ""
            self.fail(
                ("name",),
                f"name {value!r} is invalid: use 1 to 63 lowercase letters, digits and '-', "
                f"starting and ending with a letter or digit{hint}",
            )
        return value

    def main(self, value: object) -> str:
        path: _KeyPath = ("main",)
        usage = "a .py file in the project ('app.py') or a module ('app', 'pkg.module:app')"
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"main must be {usage} (got {_show(value)})")
        main = value.strip()
        if main.endswith(".py"):
            if "\\" in main:
                self.fail(path, f"main {main!r} must use '/' between directories")
            if PurePosixPath(main).is_absolute() or PureWindowsPath(main).is_absolute():
                self.fail(path, f"main {main!r} must be a path relative to the project directory")
            if ".." in PurePosixPath(main).parts:
                self.fail(path, f"main {main!r} must stay inside the project directory (no '..')")
            return main
        module, _, attr = main.partition(":")
        if module.endswith(".py") or "/" in module:
            dotted = module.removesuffix(".py").replace("/", ".")
            better = f"{dotted}:{attr}" if attr else f"{module.removesuffix('.py')}.py"
            self.fail(path, f"main {main!r} mixes a file path and a module; write {better!r}")
        if not _DOTTED_IDENT_RE.match(module) or (":" in main and not _DOTTED_IDENT_RE.match(attr)):
            self.fail(path, f"main {main!r} is not valid: it must be {usage}")
        return main

    def routes(self, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            self.fail(("routes",), f"routes must be an array: routes = [{value!r}]")
        if not isinstance(value, list):
            self.fail(
                ("routes",), f'routes must be an array like ["example.com/*"] (got {_show(value)})'
            )
        if not value:
            self.fail(
                ("routes",),
                "routes is empty; list at least one pattern, or remove it to serve '*/*'",
            )
        seen: dict[str, int] = {}
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(
                    ("routes", i),
                    f"routes[{i}] must be a string like 'example.com/*' (got {_show(item)})",
                )
            try:
                pattern = RoutePattern.parse(item)
            except ValueError as exc:
                self.fail(("routes", i), str(exc))
            if pattern.pattern in seen:
                first = self.line(("routes", seen[pattern.pattern]))
                self.fail(
                    ("routes", i),
                    f"route {pattern.pattern!r} is listed twice (also at line {first}); remove one",
                )
            seen[pattern.pattern] = i
            out.append(pattern.pattern)
        return tuple(out)

    def table(self, value: object, path: _KeyPath, header: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(
                path, f"{'.'.join(map(str, path))} must be a table: write {header} on its own line"
            )
        return value

    def unknown_keys(
        self, data: dict[str, Any], path: _KeyPath, where: str, allowed: tuple[str, ...]
    ) -> None:
        for key in data:
            if key not in allowed:
                self.fail(
                    (*path, key),
                    f"unknown key {key!r} in {where}; allowed: {', '.join(allowed)}"
                    + _suggest(key, allowed),
                )

    def int_in(self, value: object, path: _KeyPath, label: str, bounds: tuple[int, int]) -> int:
        low, high = bounds
        # bool is an int subclass in Python, but `cpu_ms = true` is never meant as 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(path, f"{label} must be a positive integer (got {_show(value)})")
        if not low <= value <= high:
            self.fail(path, f"{label} must be between {low} and {high} (got {value})")
        return value

    def limits(self, value: object) -> LimitsConfig:
        data = self.table(value, ("limits",), "[limits]")
        self.unknown_keys(data, ("limits",), "[limits]", tuple(_LIMIT_BOUNDS))
        checked = {
            key: self.int_in(data[key], ("limits", key), f"limits.{key}", bounds)
            for key, bounds in _LIMIT_BOUNDS.items()
            if key in data
        }
        return LimitsConfig(**checked)

    def mode(self, value: object) -> Mode:
        choices = tuple(_MODES)
        if not isinstance(value, str) or value not in _MODES:
            extra = _suggest(value, choices) if isinstance(value, str) else ""
            self.fail(
                ("mode",),
                f"mode must be one of {', '.join(map(repr, choices))} (got {_show(value)})" + extra,
            )
        return _MODES[value]

    def scaling(self, value: object) -> ScalingConfig:
        data = self.table(value, ("scaling",), "[scaling]")
        self.unknown_keys(data, ("scaling",), "[scaling]", _SCALING_KEYS)
        ints: dict[str, int] = {}
        for key, (low, high) in _SCALING_BOUNDS.items():
            if key not in data:
                continue
            item = data[key]
            path = ("scaling", key)
            if isinstance(item, bool) or not isinstance(item, int) or item < low:
                kind = "a non-negative" if low == 0 else "a positive"
                self.fail(path, f"scaling.{key} must be {kind} integer (got {_show(item)})")
            if item > high:
                self.fail(path, f"scaling.{key} must be between {low} and {high} (got {item})")
            ints[key] = item
        out = ScalingConfig(**ints)  # type: ignore[arg-type]
        if out.min_workers > out.max_workers:
            key = "min_workers" if "min_workers" in data else "max_workers"
            self.fail(
                ("scaling", key),
                f"scaling.min_workers ({out.min_workers}) must not exceed scaling.max_workers "
                f"({out.max_workers})",
            )
        idle_s = out.idle_s
        if "idle_s" in data:
            raw = data["idle_s"]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                self.fail(
                    ("scaling", "idle_s"),
                    f"scaling.idle_s must be a number of seconds (got {_show(raw)})",
                )
            if not (math.isfinite(raw) and 0 < raw <= _IDLE_S_MAX):
                self.fail(
                    ("scaling", "idle_s"),
                    f"scaling.idle_s must be more than 0 and at most {_IDLE_S_MAX:g} seconds "
                    f"(got {raw})",
                )
            idle_s = float(raw)
        keep = self.scaling_flag(data, "keep_zygote", out.keep_zygote)
        handoff = self.scaling_flag(data, "handoff", out.handoff)
        return ScalingConfig(
            target_concurrency=out.target_concurrency,
            min_workers=out.min_workers,
            max_workers=out.max_workers,
            idle_s=idle_s,
            keep_zygote=keep,
            handoff=handoff,
        )

    def scaling_flag(self, data: dict[str, Any], key: str, default: bool) -> bool:
        """A true/false key of ``[scaling]`` (``default`` when absent)."""
        if key not in data:
            return default
        raw = data[key]
        if not isinstance(raw, bool):
            self.fail(("scaling", key), f"scaling.{key} must be true or false (got {_show(raw)})")
        return raw

    def binding_name(self, value: object, path: _KeyPath, what: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f'{what} must be a string like "MY_BINDING" (got {_show(value)})')
        if not value.isidentifier() or not value.isascii() or keyword.iskeyword(value):
            self.fail(
                path,
                f"{what} {value!r} must be a valid Python identifier (ASCII letters, digits "
                "and '_', not starting with a digit, not a keyword), e.g. 'MY_BINDING'",
            )
        if value.startswith("_"):
            self.fail(path, f"{what} {value!r} must not start with '_' (reserved by edgerun)")
        return value

    def vars(self, value: object) -> dict[str, VarValue]:
        data = self.table(value, ("vars",), "[vars]")
        out: dict[str, VarValue] = {}
        for key, item in data.items():
            self.binding_name(key, ("vars", key), "var name")
            out[key] = self.var_value(item, ("vars", key), f"vars.{key}", 0)
        return out

    def var_value(self, value: object, path: _KeyPath, label: str, depth: int) -> VarValue:
        if depth > _VAR_MAX_DEPTH:
            self.fail(path, f"{label} nests more than {_VAR_MAX_DEPTH} levels deep; flatten it")
        if isinstance(value, str | bool | int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                self.fail(
                    path, f"{label} must be a finite number (got {value}); JSON has no {value}"
                )
            return value
        if isinstance(value, list):
            return [
                self.var_value(v, (*path, i), f"{label}[{i}]", depth + 1)
                for i, v in enumerate(value)
            ]
        if isinstance(value, dict):
            return {
                k: self.var_value(v, (*path, k), f"{label}.{k}", depth + 1)
                for k, v in value.items()
            }
        self.fail(
            path,
            f"{label} must be a string, number, boolean, array or table (got {_show(value)}); "
            "quote it to pass it as a string",
        )

    def array_of_tables(self, value: object, key: str) -> list[dict[str, Any]]:
        hint = f"write [[{key}]] (two brackets) before each binding"
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail((key,), f"{key} must be an array of tables: {hint} (got {_show(value)})")
        return value

    def kv(self, value: object) -> tuple[KVConfig, ...]:
        out: list[KVConfig] = []
        for i, entry in enumerate(self.array_of_tables(value, "kv")):
            where = f"[[kv]] #{i + 1}"
            self.unknown_keys(entry, ("kv", i), where, _KV_KEYS)
            if "binding" not in entry:
                self.fail(("kv", i), f'{where} needs a binding name: add binding = "KV"')
            binding = self.binding_name(entry["binding"], ("kv", i, "binding"), "kv binding")
            namespace = binding.lower()
            if "namespace" in entry:
                ns = entry["namespace"]
                if not isinstance(ns, str) or not _NAMESPACE_RE.match(ns):
                    self.fail(
                        ("kv", i, "namespace"),
                        f"kv namespace must be 1 to 64 letters, digits, '_' or '-', starting "
                        f"with a letter or digit (got {_show(ns)})",
                    )
                namespace = ns
            backend: KVBackend | None = None
            if "backend" in entry:
                raw = entry["backend"]
                choices = tuple(_KV_BACKENDS)
                if not isinstance(raw, str) or raw not in _KV_BACKENDS:
                    extra = _suggest(raw, choices) if isinstance(raw, str) else ""
                    self.fail(
                        ("kv", i, "backend"),
                        f"kv backend must be one of {', '.join(map(repr, choices))} "
                        f"(got {_show(raw)}){extra}",
                    )
                backend = _KV_BACKENDS[raw]
            stale = entry.get("stale_if_error", False)
            if not isinstance(stale, bool):
                self.fail(
                    ("kv", i, "stale_if_error"),
                    f"kv stale_if_error must be true or false (got {_show(stale)})",
                )
            out.append(
                KVConfig(
                    binding=binding, namespace=namespace, backend=backend, stale_if_error=stale
                )
            )
        return tuple(out)

    def network(self, value: object) -> NetworkConfig:
        data = self.table(value, ("network",), "[network]")
        self.unknown_keys(data, ("network",), "[network]", ("outbound",))
        if "outbound" not in data:
            return NetworkConfig()
        outbound = data["outbound"]
        choices = tuple(_OUTBOUND)
        if not isinstance(outbound, str) or outbound not in _OUTBOUND:
            extra = _suggest(outbound, choices) if isinstance(outbound, str) else ""
            self.fail(
                ("network", "outbound"),
                f"network.outbound must be one of {', '.join(map(repr, choices))} "
                f"(got {_show(outbound)})" + extra,
            )
        return NetworkConfig(outbound=_OUTBOUND[outbound])

    def cache(self, value: object) -> tuple[CacheConfig, ...]:
        out: list[CacheConfig] = []
        for i, entry in enumerate(self.array_of_tables(value, "cache")):
            where = f"[[cache]] #{i + 1}"
            self.unknown_keys(entry, ("cache", i), where, _CACHE_KEYS)
            if "binding" not in entry:
                self.fail(("cache", i), f'{where} needs a binding name: add binding = "CACHE"')
            binding = self.binding_name(entry["binding"], ("cache", i, "binding"), "cache binding")
            max_bytes = _DEFAULT_CACHE_BYTES
            if "max_bytes" in entry:
                max_bytes = self.int_in(
                    entry["max_bytes"],
                    ("cache", i, "max_bytes"),
                    "cache.max_bytes",
                    _CACHE_MAX_BYTES_BOUNDS,
                )
            out.append(CacheConfig(binding=binding, max_bytes=max_bytes))
        return tuple(out)

    def unique_names(
        self,
        vars_: dict[str, VarValue],
        kv: tuple[KVConfig, ...],
        cache: tuple[CacheConfig, ...],
    ) -> None:
        # Vars and bindings share one namespace: they are all attributes of `env`.
        claims: list[tuple[int, str, str]] = [(self.line(("vars", k)), k, "[vars]") for k in vars_]
        claims += [
            (self.line(("kv", i, "binding")), b.binding, f"[[kv]] #{i + 1}")
            for i, b in enumerate(kv)
        ]
        claims += [
            (self.line(("cache", i, "binding")), c.binding, f"[[cache]] #{i + 1}")
            for i, c in enumerate(cache)
        ]
        if len({name for _, name, _ in claims}) == len(claims):
            return
        first: dict[str, tuple[int, str]] = {}
        for line, name, where in sorted(claims, key=lambda c: c[0]):
            if name in first:
                line0, where0 = first[name]
                raise ConfigError(
                    f"name {name!r} is used twice: by {where0} at line {line0} and by {where} "
                    f"at line {line}; vars and bindings share env, so rename one",
                    file=self._shown,
                    line=line,
                )
            first[name] = (line, where)


# --- locating keys in the source --------------------------------------------------------

_BARE_KEY_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
)
_SCALAR_END: Final = frozenset(",]}#\r\n")


class _GiveUp(Exception):
    """The locator met something it does not understand; keep what it found so far."""


class _Locator:
    """Map TOML key paths to the 1-based line where each is defined.

    tomllib returns no positions, so this re-scans the (already valid) source: table
    headers, ``[[array]]`` headers counted per parent, ``key = value`` lines with dotted
    and quoted keys, array elements (``("routes", 2)``) and inline-table keys. Lookups of
    a path that was never written (a missing key) fall back to the nearest enclosing
    key or table header, then to line 1. It only improves messages, so it never raises.
    """

    def __init__(self, text: str) -> None:
        self._s = text
        self._i = 0
        self._line = 1
        self._lines: dict[_KeyPath, int] = {}
        # Number of [[x]] headers seen so far, per resolved array path.
        self._arrays: dict[_KeyPath, int] = {}
        # A locator bug must never hide the real config error: keep what was found.
        with contextlib.suppress(Exception):
            self._document()

    def line(self, path: _KeyPath) -> int:
        """The line of ``path``, else of its nearest recorded ancestor, else 1."""
        for n in range(len(path), 0, -1):
            hit = self._lines.get(path[:n])
            if hit is not None:
                return hit
        return 1

    def _record(self, path: _KeyPath, line: int) -> None:
        self._lines.setdefault(path, line)

    def _peek(self) -> str:
        return self._s[self._i] if self._i < len(self._s) else ""

    def _goto(self, j: int) -> None:
        self._line += self._s.count("\n", self._i, j)
        self._i = j

    def _skip_ws(self) -> None:
        j = self._i
        while j < len(self._s) and self._s[j] in " \t":
            j += 1
        self._i = j

    def _skip_blank(self) -> None:
        """Skip spaces, newlines and comments."""
        s = self._s
        while self._i < len(s):
            c = s[self._i]
            if c in " \t\r":
                self._i += 1
            elif c == "\n":
                self._i += 1
                self._line += 1
            elif c == "#":
                end = s.find("\n", self._i)
                self._i = len(s) if end == -1 else end
            else:
                return

    def _expect(self, token: str) -> None:
        if not self._s.startswith(token, self._i):
            raise _GiveUp
        self._goto(self._i + len(token))

    def _document(self) -> None:
        table: _KeyPath = ()
        while True:
            self._skip_blank()
            if self._i >= len(self._s):
                return
            start = self._i
            line = self._line
            if self._s.startswith("[[", self._i):
                self._goto(self._i + 2)
                keys = self._key()
                self._expect("]]")
                table = self._open_table(keys, line, array=True)
            elif self._peek() == "[":
                self._goto(self._i + 1)
                keys = self._key()
                self._expect("]")
                table = self._open_table(keys, line, array=False)
            else:
                path = self._key_path(table, self._key(), line)
                self._expect("=")
                self._skip_ws()
                self._value(path)
            if self._i == start:
                raise _GiveUp

    def _open_table(self, keys: list[str], line: int, *, array: bool) -> _KeyPath:
        path: _KeyPath = ()
        for n, key in enumerate(keys):
            path = (*path, key)
            self._record(path, line)
            if n == len(keys) - 1 and array:
                count = self._arrays.get(path, 0)
                self._arrays[path] = count + 1
                path = (*path, count)
                self._record(path, line)
            elif path in self._arrays:
                # [a.b] after [[a]] refers to the latest element of a.
                path = (*path, self._arrays[path] - 1)
        return path

    def _key_path(self, base: _KeyPath, keys: list[str], line: int) -> _KeyPath:
        path = base
        for key in keys:
            path = (*path, key)
            self._record(path, line)
        return path

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip_ws()
            c = self._peek()
            if c == '"':
                raw = self._basic_string()
                parts.append(str(tomllib.loads(f"k = {raw}")["k"]))
            elif c == "'":
                raw = self._literal_string()
                parts.append(raw[1:-1])
            else:
                j = self._i
                while j < len(self._s) and self._s[j] in _BARE_KEY_CHARS:
                    j += 1
                if j == self._i:
                    raise _GiveUp
                parts.append(self._s[self._i : j])
                self._i = j
            self._skip_ws()
            if self._peek() != ".":
                return parts
            self._i += 1

    def _basic_string(self) -> str:
        s, j = self._s, self._i + 1
        while s[j] != '"':
            j += 2 if s[j] == "\\" else 1
        raw = s[self._i : j + 1]
        self._goto(j + 1)
        return raw

    def _literal_string(self) -> str:
        j = self._s.index("'", self._i + 1)
        raw = self._s[self._i : j + 1]
        self._goto(j + 1)
        return raw

    def _multiline_string(self, delim: str) -> None:
        s, j = self._s, self._i + 3
        escapes = delim == '"""'
        while not s.startswith(delim, j):
            if j >= len(s):
                raise _GiveUp
            j += 2 if escapes and s[j] == "\\" else 1
        j += 3
        # Up to two quotes may directly follow the closing delimiter as content.
        for _ in range(2):
            if j < len(s) and s[j] == delim[0]:
                j += 1
        self._goto(j)

    def _value(self, path: _KeyPath) -> None:
        s, i = self._s, self._i
        if s.startswith('"""', i) or s.startswith("'''", i):
            self._multiline_string(s[i : i + 3])
        elif s.startswith('"', i):
            self._basic_string()
        elif s.startswith("'", i):
            self._literal_string()
        elif s.startswith("[", i):
            self._array(path)
        elif s.startswith("{", i):
            self._inline_table(path)
        else:
            j = i
            while j < len(s) and s[j] not in _SCALAR_END:
                j += 1
            if j == i:
                raise _GiveUp
            self._i = j

    def _array(self, path: _KeyPath) -> None:
        self._goto(self._i + 1)
        index = 0
        while True:
            self._skip_blank()
            if self._peek() == "]":
                self._goto(self._i + 1)
                return
            element = (*path, index)
            self._record(element, self._line)
            self._value(element)
            self._skip_blank()
            if self._peek() == ",":
                self._goto(self._i + 1)
                index += 1
            elif self._peek() != "]":
                raise _GiveUp

    def _inline_table(self, path: _KeyPath) -> None:
        self._goto(self._i + 1)
        while True:
            self._skip_blank()
            if self._peek() == "}":
                self._goto(self._i + 1)
                return
            sub = self._key_path(path, self._key(), self._line)
            self._expect("=")
            self._skip_ws()
            self._value(sub)
            self._skip_blank()
            if self._peek() == ",":
                self._goto(self._i + 1)
            elif self._peek() != "}":
                raise _GiveUp
