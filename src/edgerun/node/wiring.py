"""Config -> bindings, in one place, for both isolation modes; worker identities.

``binding_specs(config)`` turns a project's binding sections into plain
``BindingSpec`` values (they cross the process boundary to a zygote);
``open_bindings(specs, state_dir, clock)`` opens them (in the node for
``mode = "inprocess"``, in each worker for ``mode = "isolated"``).
``isolated_spec`` builds the whole deployment ``Spec`` for a zygote, including the
uid it runs as: when the node runs as root, each deployment gets its own stable
unprivileged uid/gid, its state directory is handed to that uid (mode 0700) and its
code is staged into ``<state>/code`` so neither is readable by other deployments.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import edgerun
from edgerun.bindings.base import Binding, open_all
from edgerun.bindings.cache import CACHE_FILENAME, Cache, SqliteCacheStore
from edgerun.bindings.kv import open_kv
from edgerun.clock import Clock, SystemClock
from edgerun.config import ProjectConfig
from edgerun.errors import ConfigError
from edgerun.runtime.isolate.harden import blocking_directory
from edgerun.runtime.isolate.pool import PoolSettings
from edgerun.runtime.isolate.protocol import BindingSpec, Spec

__all__ = [
    "KV_FILENAME",
    "UID_BASE",
    "binding_specs",
    "deployment_uid",
    "isolated_spec",
    "open_bindings",
    "pool_settings",
    "zygote_command",
]

_log = logging.getLogger("edgerun.isolate")

KV_FILENAME = "kv.sqlite3"
"""The project's KV database, in its state directory (``StateDir.kv_file``)."""

UID_BASE = 200_000
"""Deployment uids are ``UID_BASE + crc32(name) % UID_SPAN``: above any system account."""
_UID_SPAN = 1_000_000
# A deployment's processes get no variable of the node's (it may hold the node's
# control-plane token or cloud credentials): only these, then its own [vars].
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
SKIP_PATTERNS: tuple[str, ...] = (
    ".edgerun",
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    "node_modules",
)
"""Names (fnmatch patterns) not copied into the staged code: state, caches and VCS data."""
_SKIP = shutil.ignore_patterns(*SKIP_PATTERNS)


def staging_ignore(state_dir: Path) -> Callable[[str, list[str]], set[str]]:
    """The ``copytree`` ignore callable for staging code: ``_SKIP`` plus ``state_dir``.

    ``--state-dir`` may lie anywhere inside the project (not only ``.edgerun``);
    copying it would copy the staged copy into itself until the path is too deep.
    """
    state = state_dir.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(_SKIP(directory, names))
        base = Path(directory).resolve()
        skipped.update(name for name in names if (base / name).resolve() == state)
        return skipped

    return ignore


def binding_specs(config: ProjectConfig, *, nats_url: str | None = None) -> list[BindingSpec]:
    """The project's bindings as plain specs, in declaration order.

    ``nats_url`` is the node's NATS server (``edgerun node --nats``): a ``[[kv]]``
    without an explicit ``backend`` uses NATS when it is set and SQLite otherwise, so a
    project runs unchanged on one machine and scaled out. The URL travels in the spec
    because isolated workers open their bindings themselves, after the fork. Raises
    ``ConfigError`` for ``backend = "nats"`` on a node without a NATS URL.
    """
    specs: list[BindingSpec] = []
    for kv in config.kv:
        backend = kv.backend or ("nats" if nats_url else "sqlite")
        options: dict[str, Any] = {"namespace": kv.namespace, "backend": backend}
        if backend == "nats":
            if not nats_url:
                raise ConfigError(
                    f'[[kv]] {kv.binding} uses backend = "nats" but this node has no NATS '
                    f"server: run it with edgerun node --nats URL",
                    file=str(config.file),
                )
            options["url"] = nats_url
        if kv.stale_if_error:
            options["stale_if_error"] = True
        specs.append(BindingSpec("kv", kv.binding, options))
    specs += [BindingSpec("cache", c.binding, {"max_bytes": c.max_bytes}) for c in config.cache]
    return specs


async def open_bindings(
    specs: list[BindingSpec], state_dir: Path, clock: Clock | None = None
) -> dict[str, Binding]:
    """Open every binding (all or nothing, see ``open_all``); KV lives in ``state_dir``."""
    clock = clock or SystemClock()
    openers = {}
    for spec in specs:
        openers[spec.name] = _opener(spec, state_dir, clock)
    return await open_all(openers)


def _opener(spec: BindingSpec, state_dir: Path, clock: Clock) -> Any:
    options = spec.options
    if spec.kind == "kv":

        async def kv() -> Binding:
            url = options.get("url")
            return open_kv(
                str(options["namespace"]),
                backend=str(options.get("backend", "sqlite")),
                path=state_dir / KV_FILENAME,
                clock=clock,
                # A NATS backend connects on first use, i.e. in the worker that
                # serves the request, never in the zygote it was forked from.
                url=None if url is None else str(url),
                stale_if_error=bool(options.get("stale_if_error", False)),
            )

        return kv
    if spec.kind == "cache":

        async def cache() -> Binding:
            return Cache(
                spec.name,
                max_bytes=int(options["max_bytes"]),
                clock=clock,
                store=shared_cache_store(state_dir),
            )

        return cache
    raise ValueError(f"unknown binding kind {spec.kind!r} for {spec.name!r}")


# One connection per process and file; keyed by pid too so a forked child never uses
# a connection it inherited (SQLite connections must not cross a fork).
_CACHE_STORES: dict[tuple[int, Path], SqliteCacheStore] = {}


def shared_cache_store(state_dir: Path) -> SqliteCacheStore:
    """The deployment's Cache API store in ``state_dir``, shared by all its workers.

    Every cache binding and ``caches.default`` of a worker use it, so a response put
    by one worker is a hit in the others and outlives the worker that stored it.
    """
    key = (os.getpid(), state_dir.resolve())
    store = _CACHE_STORES.get(key)
    if store is None:
        store = _CACHE_STORES[key] = SqliteCacheStore(state_dir / CACHE_FILENAME)
    return store


def deployment_uid(name: str) -> int:
    """The stable unprivileged uid (and gid) of deployment ``name``."""
    return UID_BASE + zlib.crc32(name.encode()) % _UID_SPAN


def zygote_command(specs: Sequence[BindingSpec] = ()) -> list[str]:
    """The program a zygote runs: this interpreter, ``-m edgerun.node.worker_main``.

    Binding modules the workers will need (the NATS client, about 90 ms to import) are
    named with ``--preload`` so the zygote imports them once and every forked worker
    inherits them, instead of each paying for the import on its cold start. Importing
    opens no connection: workers connect after the fork.
    """
    command = [sys.executable, "-m", "edgerun.node.worker_main"]
    if any(s.kind == "kv" and s.options.get("backend") == "nats" for s in specs):
        command += ["--preload", "edgerun.bindings.kv.nats"]
    return command


def pool_settings(config: ProjectConfig) -> PoolSettings:
    """``[scaling]`` and ``limits.max_concurrency`` as pool settings."""
    s = config.scaling
    return PoolSettings(
        target_concurrency=s.target_concurrency,
        min_workers=s.min_workers,
        max_workers=s.max_workers,
        idle_s=s.idle_s,
        keep_zygote=s.keep_zygote,
        max_concurrency=config.limits.max_concurrency,
        handoff=s.handoff,
    )


def _environ(config: ProjectConfig, state_dir: Path) -> dict[str, str]:
    """The whole environment of a deployment's zygote and workers, from its config alone.

    It is also the environment the zygote is *started* with, so ``/proc/<pid>/environ``
    shows nothing else. ``PYTHONPATH`` is set only when the node found edgerun
    through its own ``PYTHONPATH`` (a source checkout), and then names that one entry.
    """
    env = {
        "PATH": f"{os.path.dirname(sys.executable)}:{_BASE_PATH}",
        "LANG": "C.UTF-8",
        "HOME": str(state_dir),
        "TMPDIR": "/tmp",
    }
    here = Path(edgerun.__file__).resolve().parent.parent
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and Path(entry).resolve() == here:
            env["PYTHONPATH"] = str(here)
    for name, value in config.vars.items():
        if isinstance(value, str):
            env[name] = value
    return env


def _hand_over(state_dir: Path, config: ProjectConfig, uid: int) -> Path:
    """Give ``uid`` its state dir (0700) and a private copy of the code; return the copy.

    The copy exists because the project directory may sit where the uid cannot reach
    it (a home directory of mode 0700) and because other deployments must not read
    it. ``secrets.json`` stays root's: secrets reach the worker in the spec.
    """
    os.chown(state_dir, uid, uid)
    os.chmod(state_dir, 0o700)
    for child in state_dir.iterdir():
        if child.name.startswith(KV_FILENAME):
            os.chown(child, uid, uid)
    code = state_dir / "code"
    if code.exists():
        shutil.rmtree(code)
    shutil.copytree(config.root, code, ignore=staging_ignore(state_dir), symlinks=True)
    for dirpath, _dirnames, filenames in os.walk(code):
        os.chown(dirpath, uid, uid)
        os.chmod(dirpath, 0o700)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)
    return code


def isolated_spec(
    config: ProjectConfig,
    state_dir: Path,
    secrets: Mapping[str, str],
    *,
    debug: bool = False,
    nats_url: str | None = None,
) -> Spec:
    """The zygote ``Spec`` of a deployment (see the module docstring).

    ``nats_url``: the node's NATS server for KV namespaces (see ``binding_specs``).

    When the node is root but the state directory is not reachable by other users
    (an ancestor lacks the search bit), workers keep the node's identity and a
    warning says which directory to open up.
    """
    uid: int | None = None
    code_root = config.root
    if os.geteuid() == 0:
        blocked = blocking_directory(state_dir)
        if blocked is None:
            uid = deployment_uid(config.name)
            code_root = _hand_over(state_dir, config, uid)
        else:
            _log.warning(
                "%s: workers keep running as root: its state directory %s is not reachable "
                "by an unprivileged user (%s is not searchable by others); choose a "
                "--state-dir under a world-searchable directory to isolate it",
                config.name,
                state_dir,
                blocked,
            )
    limits = config.limits
    return Spec(
        name=config.name,
        code_root=str(code_root),
        main=config.main,
        state_dir=str(state_dir),
        environ=_environ(config, state_dir),
        vars=dict(config.vars),
        secrets={name: str(value) for name, value in secrets.items()},
        bindings=binding_specs(config, nats_url=nats_url),
        cpu_ms=limits.cpu_ms,
        wall_ms=limits.wall_ms,
        memory_mb=limits.memory_mb,
        max_concurrency=limits.max_concurrency,
        uid=uid,
        gid=uid,
        debug=debug,
        # The zygote and every worker count against the uid's task limit too.
        max_tasks=limits.max_processes + config.scaling.max_workers + 1,
        disk_mb=limits.max_disk_mb,
        network=config.network.outbound != "none",
        first_cpu_ms=limits.first_request_cpu_ms,
    )
