"""Find a project's entry point and adapt it to one handler shape.

``load_entry(root, main)`` imports the project's main module and detects, in the order
of DESIGN §1 (or takes the object named by ``main = "module:object"``):

1. ``async def fetch(request, env, ctx)``, the native form;
2. ``class Default(WorkerEntrypoint)`` with ``async def fetch(self, request)``, or
   ``async def on_fetch(request, env)``: Cloudflare Python Workers style;
3. an ASGI 3 app named ``app``, ``application`` or ``asgi`` (FastAPI, Starlette...).

Whatever the style, ``Entry.handler`` is ``await handler(request, env, ctx) ->
Response``. Handlers are called leniently: one declaring fewer parameters gets fewer
(decided once here, not per request). A plain ``def`` handler is allowed and called
directly on the event loop, so it blocks every other request while it runs: use it
only for work that never waits.

Import model (in-process): a ``.py`` entry file is imported under a module name unique
to its project directory, so two projects' ``app.py`` never collide; the project
directory is put at the front of ``sys.path`` (and kept there until ``unload``, so
imports done lazily inside a handler keep working); modules another loaded project
imported are hidden while this one imports, so a same-named helper module is this
project's own. All projects of one process still share ``sys.modules``: a helper first
imported lazily at request time may come from whichever project imported it first.
The isolated mode runs each deployment in its own processes and has no such sharing.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, cast

from edgerun.errors import EntrypointError
from edgerun.runtime.asgi import AsgiHandler
from edgerun.types import ASGIApp, Handler

__all__ = ["Entry", "EntryKind", "ScheduledHandler", "WorkerEntrypoint", "load_entry", "unload"]

EntryKind = Literal["fetch", "workers", "asgi"]

# ``await scheduled(event, env, ctx)``: a cron trigger's handler, normalised like fetch.
ScheduledHandler = Callable[[Any, Any, Any], Awaitable[None]]

_ASGI_NAMES = ("app", "application", "asgi")
# Modules whose ``fetch`` is an outbound HTTP client, not an entry point
# (``from workers import fetch`` / ``from js import fetch`` in Workers code).
_LIBRARY_MODULES = frozenset({"edgerun", "js", "pyodide", "workers"})
_ARGS = 3  # request, env, ctx (or event, env, ctx)

_LOOKED_FOR = (
    "edgerun looked for, in this order: `async def fetch(request, env, ctx)`; "
    "`class Default(WorkerEntrypoint)` with `async def fetch(self, request)`, or "
    "`async def on_fetch(request, env)`; an ASGI app named `app`, `application` or `asgi`. "
    'Define one of them, or name the object with main = "module:object" in edgerun.toml'
)

# Project root -> the sys.path entries load_entry added for it (removed by unload).
_projects: dict[str, list[str]] = {}
# Imports mutate process-wide state (sys.modules, sys.path): one load at a time.
_lock = threading.RLock()


class WorkerEntrypoint:
    """Base class of a Cloudflare-style entry point (``class Default(WorkerEntrypoint)``).

    edgerun creates one instance per request as ``Default(ctx, env)``, so ``self.env``
    and ``self.ctx`` are that request's; define ``async def fetch(self, request)``
    returning a Response, and optionally ``async def scheduled(self, event, env, ctx)``.
    Import it from the ``workers`` compatibility module, as Workers code does.
    """

    env: Any
    ctx: Any

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env


@dataclass(frozen=True, slots=True)
class Entry:
    """A loaded entry point.

    ``handler`` is the normalised ``await handler(request, env, ctx) -> Response``
    (the invoker checks the return type). ``kind`` says which style was found;
    ``asgi_app`` is the raw ASGI app when ``kind == "asgi"`` (``handler`` is then an
    ``AsgiHandler`` whose ``lifespan()`` must be started once per worker);
    ``scheduled`` is the normalised cron handler, or None; ``module`` is the imported
    main module.
    """

    handler: Handler
    kind: EntryKind
    module: ModuleType
    asgi_app: ASGIApp | None = None
    scheduled: ScheduledHandler | None = None


def load_entry(root: Path, main: str) -> Entry:
    """Import ``main`` from the project directory ``root`` and return its entry point.

    ``main`` is a ``.py`` path relative to ``root`` (``"app.py"``,
    ``"src/worker.py"``), a module (``"app"``, ``"pkg.module"``), or either followed by
    ``:object`` (``"pkg.module:app"``; ``object`` may be dotted). Raises
    ``EntrypointError`` when the file or module does not exist, when importing it
    raises (the message carries the traceback of the user's code), or when no entry
    point is found (the message lists what was looked for and how to set ``main``).
    Thread-safe, but it imports user code: call it off the event loop when the module
    is slow to import.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise EntrypointError(f"project directory {root} does not exist")
    target, sep, attr = main.partition(":")
    target = target.strip()
    attr = attr.strip()
    if not target or (sep and not attr):
        raise EntrypointError(
            f'main = {main!r} is not valid: use a file ("app.py"), a module ("app") '
            'or module:object ("app:app")'
        )
    with _lock:
        if target.endswith(".py") or "/" in target or os.sep in target:
            module = _import_file(root, main, target)
        else:
            module = _import_module(root, main, target)
    where = f"main = {main!r}"
    try:
        if attr:
            obj = _resolve_attr(module, attr, where)
            return _entry_from_object(obj, attr.rpartition(".")[2], module, where)
        return _detect(module, module, where)
    except EntrypointError:
        unload(root)  # a failed load leaves nothing behind, like a failed import
        raise


def unload(root: Path) -> list[str]:
    """Forget every module imported from files under ``root``; return their names.

    Drops those ``sys.modules`` entries and the ``sys.path`` entries ``load_entry``
    added for ``root``, and clears the import system's directory caches, so the next
    ``load_entry(root, ...)`` re-imports edited files (dev reload). Objects already
    loaded (an ``Entry`` still serving) keep working: they hold their modules.
    """
    root_s = str(Path(root).resolve())
    with _lock:
        removed = [name for name, _ in _modules_under(root_s)]
        for name in removed:
            del sys.modules[name]
        for path in _projects.pop(root_s, []):
            while path in sys.path:
                sys.path.remove(path)
            sys.path_importer_cache.pop(path, None)
        importlib.invalidate_caches()
    return removed


# -- importing ---------------------------------------------------------------------------


def _module_file(module: object) -> str | None:
    """The file (or package directory) a module was loaded from, if any."""
    try:
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            return file
        paths = getattr(module, "__path__", None)  # namespace packages have no __file__
        if paths is not None:
            for path in paths:
                return str(path)
    except Exception:  # lazy or proxy modules may raise on attribute access
        return None
    return None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _modules_under(root: str) -> list[tuple[str, ModuleType]]:
    found = []
    for name, module in list(sys.modules.items()):
        file = _module_file(module)
        if file is not None and _under(file, root):
            found.append((name, module))
    return found


def _import_file(root: Path, main: str, target: str) -> ModuleType:
    path = (root / target).resolve()
    if not _under(str(path), str(root)):
        raise EntrypointError(f"main = {main!r} points outside the project directory {root}")
    if not path.is_file():
        raise EntrypointError(f"main = {main!r}, but {path} does not exist")
    if path.suffix != ".py":
        raise EntrypointError(f"main = {main!r} must name a .py file")
    # Unique per project and file: two projects' app.py are two modules.
    digest = hashlib.sha1(str(root).encode(), usedforsecurity=False).hexdigest()[:12]
    slug = re.sub(r"\W", "_", str(path.relative_to(root).with_suffix("")))
    name = f"_edgerun_{digest}_{slug}"

    def run() -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise EntrypointError(f"main = {main!r}: {path} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        # Registered before executing, as the import system does: dataclasses, pickle
        # and pydantic look the module up by name while it runs.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module

    # Like `python src/worker.py`: the file's own directory first, then the root.
    return _guarded_import(root, main, [str(path.parent), str(root)], run, None)


def _import_module(root: Path, main: str, modname: str) -> ModuleType:
    if not all(part.isidentifier() for part in modname.split(".")):
        raise EntrypointError(f"main = {main!r}: {modname!r} is not a module name")
    module = _guarded_import(
        root, main, [str(root)], lambda: importlib.import_module(modname), modname
    )
    file = _module_file(module)
    if file is None or not _under(file, str(root)):
        raise EntrypointError(
            f"main = {main!r}: the module name {modname!r} is taken by "
            f"{file or 'a built-in module'} outside the project (the standard library or "
            "an installed package); rename your module or give main as a file path"
        )
    return module


def _guarded_import(
    root: Path,
    main: str,
    paths: list[str],
    run: Callable[[], ModuleType],
    modname: str | None,
) -> ModuleType:
    """Run an import with the project on sys.path and other projects' modules hidden."""
    root_s = str(root)
    added = _projects.setdefault(root_s, [])
    for path in reversed(dict.fromkeys(paths)):
        # At the front even if present further back (after another project's root):
        # this project's modules must win while it imports.
        if path in sys.path:
            sys.path.remove(path)
        elif path not in added:
            added.append(path)
        sys.path.insert(0, path)
    hidden: dict[str, ModuleType] = {}
    for other in _projects:
        if other != root_s and not _under(root_s, other):
            for name, module in _modules_under(other):
                file = _module_file(module)
                if file is not None and not _under(file, root_s):
                    hidden[name] = sys.modules.pop(name)
    try:
        return run()
    except EntrypointError:
        unload(root)
        raise
    except (Exception, SystemExit) as exc:
        unload(root)
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if modname is not None and missing and (modname + ".").startswith(missing + "."):
            raise EntrypointError(f"main = {main!r}: no module {missing!r} in {root}") from None
        raise EntrypointError(
            f"main = {main!r}: importing it raised {type(exc).__name__}: {exc}\n"
            f"{_user_traceback(exc, root_s)}"
        ) from exc
    finally:
        # Other projects get their modules back, except where this project now has
        # its own module of that name.
        for name, module in hidden.items():
            sys.modules.setdefault(name, module)


def _user_traceback(exc: BaseException, root: str) -> str:
    """The traceback of an import failure, trimmed to frames in the user's files."""
    tb = traceback.TracebackException.from_exception(exc)
    mine = [frame for frame in tb.stack if _under(frame.filename, root)]
    # A SyntaxError names its file and line itself; the import machinery's frames
    # above it are noise. Otherwise keep everything if no frame is the user's.
    if mine or isinstance(exc, SyntaxError):
        tb.stack = traceback.StackSummary.from_list(mine)
    return "".join(tb.format())


# -- detection ---------------------------------------------------------------------------


def _resolve_attr(module: ModuleType, attr: str, where: str) -> Any:
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")][:20]
            raise EntrypointError(
                f"{where}: {getattr(obj, '__name__', type(obj).__name__)} has no attribute "
                f"{part!r} (it has: {', '.join(names) or 'nothing public'})"
            ) from None
    return obj


def _is_library(obj: object) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module.partition(".")[0] in _LIBRARY_MODULES


def _detect(namespace: Any, module: ModuleType, where: str) -> Entry:
    """Auto-detect an entry point among a module's (or namespace object's) attributes."""
    scheduled = _module_scheduled(namespace, where)
    fetch = getattr(namespace, "fetch", None)
    if callable(fetch) and not inspect.isclass(fetch) and not _is_library(fetch):
        return Entry(_adapt(fetch, f"{where}: fetch"), "fetch", module, None, scheduled)
    default = getattr(namespace, "Default", None)
    if inspect.isclass(default) and issubclass(default, WorkerEntrypoint):
        handler, cls_scheduled = _adapt_class(default, where)
        return Entry(handler, "workers", module, None, cls_scheduled or scheduled)
    on_fetch = getattr(namespace, "on_fetch", None)
    if callable(on_fetch) and not inspect.isclass(on_fetch):
        return Entry(_adapt(on_fetch, f"{where}: on_fetch"), "workers", module, None, scheduled)
    for name in _ASGI_NAMES:
        app = getattr(namespace, name, None)
        if app is not None and _is_asgi(app):
            asgi = cast(ASGIApp, app)
            return Entry(AsgiHandler(asgi), "asgi", module, asgi, scheduled)
    raise EntrypointError(f"{where}: no entry point found. {_LOOKED_FOR}.")


def _entry_from_object(obj: Any, name: str, module: ModuleType, where: str) -> Entry:
    """The entry for the object ``main = "module:object"`` names."""
    if isinstance(obj, ModuleType) or (not callable(obj) and hasattr(obj, "fetch")):
        # A module or a namespace with a fetch (like Workers' `export default {fetch}`).
        return _detect(obj, module, where)
    scheduled = _module_scheduled(module, where)
    if inspect.isclass(obj):
        if issubclass(obj, WorkerEntrypoint):
            handler, cls_scheduled = _adapt_class(obj, where)
            return Entry(handler, "workers", module, None, cls_scheduled or scheduled)
        raise EntrypointError(
            f"{where} names the class {obj.__name__}; an entry-point class must subclass "
            "workers.WorkerEntrypoint"
        )
    if _is_asgi(obj):
        return Entry(AsgiHandler(obj), "asgi", module, obj, scheduled)
    if callable(obj):
        kind: EntryKind = "workers" if name == "on_fetch" else "fetch"
        return Entry(_adapt(obj, f"{where}: {name}"), kind, module, None, scheduled)
    raise EntrypointError(
        f"{where} names a {type(obj).__name__}, which is not an entry point. {_LOOKED_FOR}."
    )


def _module_scheduled(namespace: Any, where: str) -> ScheduledHandler | None:
    for name in ("scheduled", "on_scheduled"):
        fn = getattr(namespace, name, None)
        if callable(fn) and not inspect.isclass(fn) and not _is_library(fn):
            return cast(ScheduledHandler, _adapt(fn, f"{where}: {name}"))
    return None


def _positional_names(fn: Any) -> list[str] | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def _is_asgi(obj: Any) -> bool:
    """An ASGI 3 app: ``(scope, receive, send)``, or an instance with an async ``__call__``."""
    if inspect.isclass(obj) or isinstance(obj, ModuleType) or not callable(obj):
        return False
    names = _positional_names(obj)
    if names is not None and len(names) >= 3 and names[0] == "scope":
        return True
    if inspect.isroutine(obj):
        return False
    # A framework object (FastAPI(), Starlette(), middleware); one whose __call__ takes
    # a request is a fetch handler object, not an app.
    return inspect.iscoroutinefunction(type(obj).__call__) and (
        not names or names[0] not in ("request", "req")
    )


def _arity(fn: Any, what: str, skip: int = 0) -> int:
    """How many of (request, env, ctx) to pass ``fn`` (after ``skip`` leading ones: self)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return _ARGS  # no signature (some builtins): pass everything
    positional = 0
    required = 0
    variadic = False
    for p in params:
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
            if p.default is p.empty:
                required += 1
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            variadic = True
        elif p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty:
            raise EntrypointError(
                f"{what} has a required keyword-only parameter {p.name!r}; edgerun passes "
                "(request, env, ctx) positionally: give it a default or make it positional"
            )
    positional -= skip
    required -= skip
    if required > _ARGS:
        raise EntrypointError(
            f"{what} requires {required} arguments, but edgerun passes at most "
            f"{_ARGS}: (request, env, ctx)"
        )
    return _ARGS if variadic else max(0, min(positional, _ARGS))


def _adapt(fn: Callable[..., Any], what: str) -> Handler:
    """``fn`` as ``await handler(request, env, ctx)``, passing only what it declares."""
    n = _arity(fn, what)
    if inspect.iscoroutinefunction(fn):
        if n == 3:
            return cast(Handler, fn)  # the native form: no wrapper, no per-call cost
        if n == 2:

            async def two(request: Any, env: Any, ctx: Any) -> Any:
                return await fn(request, env)

            return two
        if n == 1:

            async def one(request: Any, env: Any, ctx: Any) -> Any:
                return await fn(request)

            return one

        async def none(request: Any, env: Any, ctx: Any) -> Any:
            return await fn()

        return none

    # A plain def (runs on the loop, blocking it) or an object with an async __call__:
    # call it, and await what it returns if that is awaitable.
    async def sync(request: Any, env: Any, ctx: Any) -> Any:
        result = fn(*(request, env, ctx)[:n])
        if inspect.isawaitable(result):
            result = await result
        return result

    return sync


def _adapt_class(
    cls: type[WorkerEntrypoint], where: str
) -> tuple[Handler, ScheduledHandler | None]:
    """Handlers that create ``cls(ctx, env)`` per request and call its methods."""
    if not callable(getattr(cls, "fetch", None)):
        raise EntrypointError(
            f"{where}: class {cls.__name__} has no fetch method; define "
            "`async def fetch(self, request)`"
        )
    fetch = cast(Handler, _method_caller(cls, "fetch", where))
    scheduled = None
    # WorkerEntrypoint itself defines no scheduled: only a subclass's counts.
    if callable(getattr(cls, "scheduled", None)):
        scheduled = cast(ScheduledHandler, _method_caller(cls, "scheduled", where))
    return fetch, scheduled


def _method_caller(
    cls: type[WorkerEntrypoint], method: str, where: str
) -> Callable[[Any, Any, Any], Awaitable[Any]]:
    n = _arity(getattr(cls, method), f"{where}: {cls.__name__}.{method}", skip=1)

    async def call(first: Any, env: Any, ctx: Any) -> Any:
        result = getattr(cls(ctx, env), method)(*(first, env, ctx)[:n])
        if inspect.isawaitable(result):
            result = await result
        return result

    return call
