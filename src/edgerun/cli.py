"""The ``edgerun`` command line (typer + rich).

Every command has ``--help``. Errors a user can cause are printed as one red line
(file, line and reason for configs) and exit with status 1; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgerun.errors import EdgerunError

__all__ = ["app", "main"]

T = TypeVar("T")

app = typer.Typer(
    name="edgerun",
    help="Self-hosted edge serverless for Python: run fetch handlers and ASGI apps at the edge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
kv_app = typer.Typer(
    help="Read and write a project's KV namespaces (same state as `dev`).", no_args_is_help=True
)
secret_app = typer.Typer(
    help="Manage a project's secrets (values are never printed).", no_args_is_help=True
)
app.add_typer(kv_app, name="kv")
app.add_typer(secret_app, name="secret")

out = Console()
err = Console(stderr=True)
_state: dict[str, bool] = {"debug": False}


class CliError(EdgerunError):
    """A usage error detected by the CLI itself."""

    code = "usage"


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn user-caused errors into one line unless --debug."""
    try:
        return fn()
    except (EdgerunError, OSError, ValueError) as exc:
        if _state["debug"]:
            raise
        message = str(exc) if not isinstance(exc, EdgerunError) else exc.message
        raise _fail(message) from None


def _run(
    coro_fn: Callable[[], Coroutine[Any, Any, T]],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    def go() -> T:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro_fn())

    return _guard(go)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO; the control commands print their own result.
    logging.getLogger("httpx").setLevel(logging.DEBUG if debug else logging.WARNING)


ProjectDir = Annotated[
    Path, typer.Argument(help="Project directory (holding edgerun.toml).", show_default=True)
]
StateDirOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where KV data and secrets live (default: DIR/.edgerun)."),
]


_URL_ENV = "EDGERUN_CONTROL"
_TOKEN_ENV = "EDGERUN_TOKEN"
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="API token (or $EDGERUN_TOKEN).", envvar=_TOKEN_ENV)
]


def _state_dir(project: Path, state_dir: Path | None) -> Path:
    from edgerun.node.state import default_state_dir

    return state_dir if state_dir is not None else default_state_dir(project.resolve())


# -- init ---------------------------------------------------------------------------


@app.command()
def init(
    name: Annotated[str, typer.Argument(help="Project name (lowercase, digits, '-').")],
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to create it (default: ./NAME).")
    ] = None,
) -> None:
    """Create a new project from a template that runs as-is with `edgerun dev`."""
    import re

    def go() -> Path:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name):
            raise CliError(f"invalid project name {name!r}: use lowercase letters, digits and '-'")
        target = directory or Path(name)
        if target.exists() and any(target.iterdir()):
            raise CliError(f"{target} already exists and is not empty")
        template = resources.files("edgerun") / "templates" / "basic"
        target.mkdir(parents=True, exist_ok=True)
        for item in template.iterdir():
            if item.is_file():
                text = item.read_text("utf-8").replace("{{name}}", name)
                (target / item.name).write_text(text, "utf-8")
        return target

    target = _guard(go)
    out.print(f"[green]created[/] {target}  — next: [bold]edgerun dev {target}[/]")


# -- dev / node ---------------------------------------------------------------------


def _serve(opts: Any) -> None:
    from edgerun.node.run import run_node
    from edgerun.node.server import loop_factory

    def ready(host: str, port: int) -> None:
        # The exact line test fixtures wait for; keep it stable.
        print(f"edgerun: ready on http://{host}:{port}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        # The node's loop is uvloop (when installed): its transports and timers are C,
        # which roughly halves the per-request cost of the event loop itself.
        _run(lambda: run_node(opts, on_ready=ready), loop_factory=loop_factory())


ServerOpt = Annotated[
    str,
    typer.Option("--server", help="HTTP server: uvicorn (default, strict) or granian (fast)."),
]


MaxBodyOpt = Annotated[
    int, typer.Option("--max-body-bytes", help="Reject request bodies larger than this (413).")
]
HeaderTimeoutOpt = Annotated[
    float, typer.Option("--header-timeout", help="Seconds a client has to send its headers.")
]
BodyTimeoutOpt = Annotated[
    float, typer.Option("--body-timeout", help="Seconds a client has to send its body.")
]


AccessLogOpt = Annotated[bool, typer.Option(help="Log one line per request to stderr.")]


def _http_limits(max_body: int, header_timeout: float, body_timeout: float) -> Any:
    from edgerun.security.limits import HttpLimits

    return _guard(
        lambda: HttpLimits(
            max_body_bytes=max_body, header_timeout_s=header_timeout, body_timeout_s=body_timeout
        )
    )


def _server(value: str) -> Literal["uvicorn", "granian"]:
    if value not in ("uvicorn", "granian"):
        raise _fail(f"--server must be uvicorn or granian, not {value!r}")
    return "uvicorn" if value == "uvicorn" else "granian"


@app.command()
def dev(
    project: ProjectDir = Path("."),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8787,
    country: Annotated[
        str | None, typer.Option(help="Pretend requests come from this country (ISO code).")
    ] = None,
    region: Annotated[str | None, typer.Option(help="Pretend region/subdivision for geo.")] = None,
    server: ServerOpt = "uvicorn",
    state_dir: StateDirOpt = None,
    reload: Annotated[bool, typer.Option(help="Reload on file changes.")] = True,
    max_body_bytes: MaxBodyOpt = 16 * 1024 * 1024,
    header_timeout: HeaderTimeoutOpt = 10.0,
    body_timeout: BodyTimeoutOpt = 30.0,
    access_log: AccessLogOpt = True,
) -> None:
    """Serve a project locally, reloading on change; geo headers are honoured (dev only)."""
    from edgerun.node.run import NodeOptions

    opts = NodeOptions(
        projects=[project],
        host=host,
        port=port,
        server=_server(server),
        state_dir=state_dir,
        dev=True,
        reload=reload,
        debug=True,
        country=country.upper() if country else None,
        region=region,
        pop="dev",
        access_log=access_log,
        http_limits=_http_limits(max_body_bytes, header_timeout, body_timeout),
    )
    _serve(opts)


@app.command()
def node(
    projects: Annotated[
        list[Path] | None,
        typer.Argument(help="Project directories to serve (optional with a control plane)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8787,
    server: ServerOpt = "uvicorn",
    state_dir: StateDirOpt = None,
    embedded_control: Annotated[
        bool,
        typer.Option(
            "--embedded-control",
            help="Also run the control plane in this process, at /__edgerun/control.",
        ),
    ] = False,
    control: Annotated[
        str | None,
        typer.Option("--control", help="Follow the control plane at this URL.", envvar=_URL_ENV),
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="A node-scoped token for --control.", envvar=_TOKEN_ENV)
    ] = None,
    control_nats: Annotated[
        str | None,
        typer.Option(
            "--control-nats",
            help="Follow control state kept in NATS JetStream at this URL (no HTTP needed); "
            "--nats alone, without project directories, implies it.",
        ),
    ] = None,
    pop: Annotated[str | None, typer.Option(help="Name of this edge location.")] = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region", help="The edge region this node serves (request.geo.pop unless --pop)."
        ),
    ] = None,
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            help="NATS server (nats://host:port, JetStream) for KV namespaces without a backend.",
            envvar="EDGERUN_NATS_URL",
        ),
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option("--trusted-proxy", help="IP/CIDR whose X-Forwarded-For is trusted."),
    ] = None,
    max_body_bytes: MaxBodyOpt = 16 * 1024 * 1024,
    header_timeout: HeaderTimeoutOpt = 10.0,
    body_timeout: BodyTimeoutOpt = 30.0,
    trust_geo_headers: Annotated[
        bool,
        typer.Option(help="Also trust geo headers (cf-ipcountry, ...) from trusted proxies."),
    ] = False,
    access_log: AccessLogOpt = False,
) -> None:
    """Run a production edge node serving projects by route (from dirs or a control plane)."""
    from edgerun.node.run import NodeOptions

    if sum(map(bool, (embedded_control, control, control_nats))) > 1:
        raise _fail("use one of --embedded-control, --control URL or --control-nats URL")
    if control and not token:
        raise _fail(f"--control needs --token (a node-scoped token) or ${_TOKEN_ENV}")
    if not projects and not (embedded_control or control or control_nats or nats):
        raise _fail(
            "give project directories, --embedded-control, --control URL or --control-nats URL"
        )
    opts = NodeOptions(
        projects=projects or [],
        embedded_control=embedded_control,
        control_url=control,
        control_token=token,
        control_nats=control_nats,
        host=host,
        port=port,
        server=_server(server),
        state_dir=state_dir,
        dev=False,
        reload=False,
        debug=_state["debug"],
        pop=pop,
        edge_region=region,
        nats_url=nats,
        trusted_proxies=tuple(trusted_proxy or ()),
        trust_geo_headers=trust_geo_headers,
        access_log=access_log,
        http_limits=_http_limits(max_body_bytes, header_timeout, body_timeout),
    )
    _serve(opts)


# -- usage --------------------------------------------------------------------------


@app.command()
def usage(
    url: Annotated[
        str, typer.Option(help="The node to ask (its /__edgerun/usage answers local callers).")
    ] = "http://127.0.0.1:8787",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    remote: Annotated[
        str | None,
        typer.Option(
            "--remote", help="Ask a control plane instead (all nodes summed).", envvar=_URL_ENV
        ),
    ] = None,
    token: TokenOpt = None,
) -> None:
    """Show per-deployment usage of a running node: requests, CPU-ms, bytes, errors."""
    import httpx

    def fetch() -> Any:
        if remote is not None:
            return _api(remote, token, "GET", "/usage")["deployments"]
        try:
            r = httpx.get(url.rstrip("/") + "/__edgerun/usage", timeout=10.0)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the node at {url}: {exc}") from None
        if r.status_code != 200:
            raise CliError(f"the node at {url} answered {r.status_code}: {r.text[:200]}")
        return r.json()["deployments"]

    data = _guard(fetch)
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    table = Table(
        "deployment",
        "requests",
        "cpu ms",
        "wall ms",
        "bytes in",
        "bytes out",
        "cold starts",
        "errors",
    )
    for name, u in data.items():
        errors = ", ".join(f"{k}={v}" for k, v in u["errors"].items()) or "-"
        table.add_row(
            name,
            str(u["requests"]),
            f"{u['cpu_ms']:.1f}",
            f"{u['wall_ms']:.1f}",
            str(u["bytes_in"]),
            str(u["bytes_out"]),
            str(u["cold_starts"]),
            errors,
        )
    out.print(table)


# -- kv -----------------------------------------------------------------------------

BindingOpt = Annotated[str, typer.Option("--binding", "-b", help="KV binding name, e.g. KV.")]


def _kv_call(project: Path, binding: str, state_dir: Path | None, op: Callable[[Any], Any]) -> Any:
    from edgerun.bindings.kv import open_kv
    from edgerun.config import load_project

    async def go() -> Any:
        config = load_project(project)
        match = [k for k in config.kv if k.binding == binding]
        if not match:
            names = ", ".join(k.binding for k in config.kv) or "none"
            raise CliError(f"no [[kv]] binding named {binding!r} in {config.file} (have: {names})")
        path = _state_dir(project, state_dir)
        path.mkdir(parents=True, exist_ok=True)
        kv = open_kv(match[0].namespace, backend="sqlite", path=path / "kv.sqlite3")
        try:
            return await op(kv)
        finally:
            await kv.close()

    return _run(go)


def _parse_key(key: str, as_tuple: bool) -> Any:
    if not as_tuple:
        return key
    try:
        parts = json.loads(key)
    except ValueError:
        raise _fail(
            f"--tuple keys are JSON arrays, e.g. '[\"analytics\", 1]'; got {key!r}"
        ) from None
    if not isinstance(parts, list):
        raise _fail(f"--tuple keys are JSON arrays; got {key!r}")
    return tuple(parts)


TupleOpt = Annotated[bool, typer.Option("--tuple", help="KEY is a JSON array (a tuple key).")]


@kv_app.command("get")
def kv_get(
    key: Annotated[str, typer.Argument(help="The key.")],
    binding: BindingOpt,
    project: ProjectDir = Path("."),
    state_dir: StateDirOpt = None,
    as_tuple: TupleOpt = False,
) -> None:
    """Print the value of KEY (exit 1 if missing)."""
    k = _parse_key(key, as_tuple)
    value = _kv_call(project, binding, state_dir, lambda kv: kv.get(k, type="bytes"))
    if value is None:
        raise _fail(f"key {key!r} not found in {binding}")
    sys.stdout.buffer.write(value)
    sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


@kv_app.command("put")
def kv_put(
    key: Annotated[str, typer.Argument(help="The key.")],
    value: Annotated[
        str | None, typer.Argument(help="The value (or use --file / stdin '-').")
    ] = None,
    binding: BindingOpt = "KV",
    project: ProjectDir = Path("."),
    state_dir: StateDirOpt = None,
    ttl: Annotated[int | None, typer.Option("--ttl", help="Expire after N seconds.")] = None,
    metadata: Annotated[str | None, typer.Option(help="JSON metadata.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="Read the value from a file.")] = None,
    as_tuple: TupleOpt = False,
) -> None:
    """Store VALUE under KEY."""
    k = _parse_key(key, as_tuple)
    if file is not None:
        data: bytes = _guard(file.read_bytes)
    elif value == "-" or value is None:
        data = sys.stdin.buffer.read()
    else:
        data = value.encode()
    meta = None
    if metadata is not None:
        try:
            meta = json.loads(metadata)
        except ValueError as exc:
            raise _fail(f"--metadata must be JSON: {exc}") from None
    _kv_call(
        project,
        binding,
        state_dir,
        lambda kv: kv.put(k, data, expiration_ttl=ttl, metadata=meta),
    )
    out.print(f"[green]stored[/] {key}")


@kv_app.command("delete")
def kv_delete(
    key: Annotated[str, typer.Argument(help="The key.")],
    binding: BindingOpt,
    project: ProjectDir = Path("."),
    state_dir: StateDirOpt = None,
    as_tuple: TupleOpt = False,
) -> None:
    """Delete KEY (no error if it does not exist)."""
    k = _parse_key(key, as_tuple)
    _kv_call(project, binding, state_dir, lambda kv: kv.delete(k))
    out.print(f"[green]deleted[/] {key}")


@kv_app.command("list")
def kv_list(
    binding: BindingOpt,
    project: ProjectDir = Path("."),
    state_dir: StateDirOpt = None,
    prefix: Annotated[str | None, typer.Option(help="Only keys starting with this.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many keys (1..1000).")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    as_tuple: TupleOpt = False,
) -> None:
    """List keys with their expiration and metadata."""
    p = _parse_key(prefix, as_tuple) if prefix is not None else None
    result = _kv_call(project, binding, state_dir, lambda kv: kv.list(prefix=p, limit=limit))
    rows = [
        {
            "name": list(k.name) if isinstance(k.name, tuple) else k.name,
            "expiration": k.expiration,
            "metadata": k.metadata,
        }
        for k in result.keys
    ]
    if as_json:
        print(
            json.dumps(
                {"keys": rows, "list_complete": result.list_complete, "cursor": result.cursor},
                default=repr,
            )
        )
        return
    table = Table("key", "expiration", "metadata")
    for row in rows:
        table.add_row(
            str(row["name"]),
            str(row["expiration"] or ""),
            json.dumps(row["metadata"]) if row["metadata"] is not None else "",
        )
    out.print(table)


# -- secrets ------------------------------------------------------------------------


@secret_app.command("put")
def secret_put(
    name: Annotated[str, typer.Argument(help="Secret name (a Python identifier).")],
    project: ProjectDir = Path("."),
    state_dir: StateDirOpt = None,
    remote: Annotated[
        str | None,
        typer.Option("--remote", help="Store it in this control plane instead.", envvar=_URL_ENV),
    ] = None,
    token: TokenOpt = None,
) -> None:
    """Set secret NAME; the value is read from stdin (prompted, hidden, on a terminal)."""
    from edgerun.control.secrets import SecretStore, validate_secret_name

    _guard(lambda: validate_secret_name(name))
    if sys.stdin.isatty():
        value = typer.prompt(f"Value for {name}", hide_input=True)
    else:
        value = sys.stdin.read().rstrip("\r\n")
    if not value:
        raise _fail("the secret value is empty")
    if remote is not None:
        target = _project_name(project)
        _api(remote, token, "PUT", f"/projects/{target}/secrets/{name}", json={"value": value})
        out.print(f"[green]stored secret[/] {name} for {target} on {remote}")
        return
    store = SecretStore(_state_dir(project, state_dir))
    _guard(lambda: store.put(name, value))
    out.print(f"[green]stored secret[/] {name}")


@secret_app.command("list")
def secret_list(project: ProjectDir = Path("."), state_dir: StateDirOpt = None) -> None:
    """List secret names (never values)."""
    from edgerun.control.secrets import SecretStore

    for n in _guard(SecretStore(_state_dir(project, state_dir)).names):
        print(n)


@secret_app.command("delete")
def secret_delete(
    name: Annotated[str, typer.Argument(help="Secret name.")],
    project: ProjectDir = Path("."),
    state_dir: StateDirOpt = None,
) -> None:
    """Delete secret NAME."""
    from edgerun.control.secrets import SecretStore

    if not _guard(lambda: SecretStore(_state_dir(project, state_dir)).delete(name)):
        raise _fail(f"no secret named {name!r}")
    out.print(f"[green]deleted secret[/] {name}")


# -- control plane: control, token, deploy, versions, promote, rollback, split -------
#
# The control API lives at <URL>/__edgerun/control/v1 on `edgerun control` and on a
# node started with --embedded-control alike, so --to is always just the server URL.
# ROUTE in `edgerun split` is the project name: a split applies to every route of
# the project (routes belong to versions, and a split is between versions).

token_app = typer.Typer(help="Create control-plane API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")

ToOpt = Annotated[
    str, typer.Option("--to", help="Control plane URL (or $EDGERUN_CONTROL).", envvar=_URL_ENV)
]
ProjectOpt = Annotated[
    str | None,
    typer.Option("--project", "-p", help="Project name (default: from ./edgerun.toml)."),
]
ControlStateOpt = Annotated[
    Path,
    typer.Option("--state-dir", help="Where the control plane keeps its database and bundles."),
]
ControlNatsOpt = Annotated[
    str | None,
    typer.Option(
        "--nats",
        help="Keep control state in NATS JetStream at this URL instead of --state-dir.",
        envvar="EDGERUN_CONTROL_NATS",
    ),
]


def _api(url: str, token: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """Call the control API; any failure becomes a one-line ``CliError``."""
    import httpx

    from edgerun.control.api import CONTROL_PREFIX

    if not token:
        raise _fail(f"a token is required: --token or ${_TOKEN_ENV}")
    target = url.rstrip("/") + CONTROL_PREFIX + "/v1" + path

    def call() -> Any:
        try:
            r = httpx.request(
                method,
                target,
                headers={"authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(120.0, connect=10.0),
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach the control plane at {url}: {exc}") from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            message = error.get("message") or r.text[:200]
            raise CliError(f"{error.get('code', r.status_code)}: {message}")
        return body

    return _guard(call)


def _project_name(project: Path | str | None) -> str:
    """A project name: given, or read from the edgerun.toml of a directory (default .)."""
    from edgerun.config import load_project

    if isinstance(project, str):
        return project
    directory = project if project is not None else Path(".")
    if project is None and not (directory / "edgerun.toml").exists():
        raise _fail("which project? pass --project NAME or run this inside a project directory")
    return _guard(lambda: load_project(directory)).name


@app.command("control")
def control_server(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8788,
    state_dir: ControlStateOpt = Path(".edgerun-control"),
    nats: ControlNatsOpt = None,
) -> None:
    """Run the control plane: deploy API, versions, splits, secrets, tokens.

    With --nats the state lives in NATS JetStream (nodes follow it with
    `edgerun node --control-nats URL`) and --state-dir only caches bundles.
    """
    from edgerun.node.control_host import run_control

    def ready(h: str, p: int) -> None:
        print(f"edgerun: ready on http://{h}:{p}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        _run(
            lambda: run_control(
                host=host, port=port, state_dir=state_dir, on_ready=ready, nats_url=nats
            )
        )


@token_app.command("create")
def token_create(
    scope: Annotated[str, typer.Option(help="read, deploy, admin or node.")],
    name: Annotated[str | None, typer.Option(help="Who it is for (shown as author).")] = None,
    state_dir: ControlStateOpt = Path(".edgerun-control"),
    nats: ControlNatsOpt = None,
) -> None:
    """Create an API token in a control plane's state dir; it is printed once, stored hashed.

    For a node with --embedded-control, use its state dir plus /control; for a control
    plane started with --nats, the same --nats URL.
    """
    from edgerun.control.store import ControlState, ControlStore

    def create() -> str:
        store: ControlState
        if nats:
            from edgerun.control.jetstream import JetStreamControlStore

            store = JetStreamControlStore(nats, state_dir)
        else:
            store = ControlStore(state_dir)
        try:
            token, owner = store.create_token(scope, name)
        finally:
            store.close()
        err.print(f"created {owner.scope} token {owner.name!r} (shown once; keep it secret)")
        return token

    print(_guard(create))


@app.command()
def deploy(
    project: ProjectDir = Path("."),
    to: ToOpt = "http://127.0.0.1:8788",
    token: TokenOpt = None,
    message: Annotated[str, typer.Option("--message", "-m", help="Why (kept with it).")] = "",
    activate: Annotated[
        bool, typer.Option(help="Make it the active version (else only upload).")
    ] = True,
) -> None:
    """Bundle a project, upload it, and (by default) make it the serving version."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from edgerun.control.pack import pack_project

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err
    ) as progress:
        build = progress.add_task("build ", total=None)
        packed = _guard(lambda: pack_project(project))
        progress.update(build, total=packed.size, completed=packed.size)
        upload = progress.add_task("upload", total=len(packed.data))

        def chunks() -> Any:
            step = 64 * 1024
            for i in range(0, len(packed.data), step):
                chunk = packed.data[i : i + step]
                yield chunk
                progress.advance(upload, len(chunk))

        body = _api(
            to,
            token,
            "POST",
            "/versions",
            params={"message": message, "activate": "1" if activate else "0"},
            content=chunks(),
        )
    version = body["version"]
    state = "new" if body["created"] else "unchanged content"
    live = "active" if body["project"]["active"] == version["id"] else "uploaded, not active"
    out.print(
        f"[green]deployed[/] {version['project']} [bold]{version['id']}[/] ({state}, {live}) "
        f"to {to}"
    )
    print(version["id"])


@app.command()
def versions(
    project: ProjectOpt = None,
    to: ToOpt = "http://127.0.0.1:8788",
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a project's versions, newest first; the active one is marked."""
    import datetime

    name = _project_name(project)
    body = _api(to, token, "GET", f"/projects/{name}/versions")
    if as_json:
        print(json.dumps(body, indent=2))
        return
    split = (body["project"].get("split") or {}).get("weights") or {}
    table = Table("", "version", "created", "by", "traffic", "message")
    for v in body["versions"]:
        when = datetime.datetime.fromtimestamp(v["created"]).strftime("%Y-%m-%d %H:%M:%S")
        traffic = (
            f"{split[v['id']]}%"
            if v["id"] in split
            else ("100%" if v["active"] and not split else "")
        )
        table.add_row("*" if v["active"] else "", v["id"], when, v["author"], traffic, v["message"])
    out.print(table)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The version id to serve.")],
    project: ProjectOpt = None,
    to: ToOpt = "http://127.0.0.1:8788",
    token: TokenOpt = None,
) -> None:
    """Make VERSION the active version (clears any split)."""
    name = _project_name(project)
    body = _api(to, token, "POST", f"/projects/{name}/promote", json={"version": version})
    out.print(f"[green]{name} now serves[/] {body['project']['active']}")


@app.command()
def rollback(
    version: Annotated[
        str | None, typer.Argument(help="Version to return to (default: the previous one).")
    ] = None,
    project: ProjectOpt = None,
    to: ToOpt = "http://127.0.0.1:8788",
    token: TokenOpt = None,
) -> None:
    """Serve the previously active version again (or VERSION)."""
    name = _project_name(project)
    payload = {"version": version} if version else {}
    body = _api(to, token, "POST", f"/projects/{name}/rollback", json=payload)
    out.print(f"[green]{name} rolled back to[/] {body['project']['active']}")
    print(body["project"]["active"])


@app.command()
def split(
    route: Annotated[str, typer.Argument(help="The project name (its routes are split).")],
    weights: Annotated[
        list[str] | None, typer.Argument(help="VERSION=PERCENT pairs summing to 100.")
    ] = None,
    key: Annotated[
        str, typer.Option(help="Stickiness key: cookie, or header:<name> (e.g. a user id).")
    ] = "cookie",
    clear: Annotated[bool, typer.Option("--clear", help="Remove the split.")] = False,
    to: ToOpt = "http://127.0.0.1:8788",
    token: TokenOpt = None,
) -> None:
    """Split a project's traffic between versions, sticky per client."""
    if clear:
        _api(to, token, "DELETE", f"/projects/{route}/split")
        out.print(f"[green]split removed[/]: {route} serves its active version")
        return
    parsed: dict[str, int] = {}
    for item in weights or []:
        version, sep, percent = item.partition("=")
        if not sep or not percent.strip().isdigit():
            raise _fail(f"{item!r} is not VERSION=PERCENT (e.g. v1a2b3c4d5e6f=90)")
        parsed[version.strip()] = int(percent)
    if not parsed:
        raise _fail("give VERSION=PERCENT pairs, or --clear")
    _api(to, token, "PUT", f"/projects/{route}/split", json={"weights": parsed, "key": key})
    shares = ", ".join(f"{v} {w}%" for v, w in parsed.items())
    out.print(f"[green]split[/] {route}: {shares} (sticky by {key})")


def main() -> None:
    """Console-script entry point."""
    app()
