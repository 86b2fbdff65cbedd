"""The node as a process: routing, node endpoints, errors, entry-point styles, reload."""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def make_project(root: Path, name: str, app: str, extra_toml: str = "") -> Path:
    project = root / name
    project.mkdir(parents=True)
    (project / "edgerun.toml").write_text(f'name = "{name}"\nmain = "app.py"\n{extra_toml}')
    (project / "app.py").write_text(textwrap.dedent(app))
    return project


HELLO = """
from edgerun import Response
async def fetch(request, env, ctx):
    return Response.json({"project": NAME, "path": request.path, "rid": ctx.request_id})
"""


def named(name: str) -> str:
    return HELLO.replace("NAME", repr(name))


@pytest.fixture(params=["uvicorn", "granian"])
def server(request):
    return request.param


def test_routes_pick_the_project_by_host_and_path(tmp_path, edgerun_node, server):
    api = make_project(tmp_path, "api", named("api"), 'routes = ["api.example.com/*"]\n')
    shop = make_project(
        tmp_path, "shop", named("shop"), 'routes = ["*/shop/*", "shop.example.com/*"]\n'
    )
    node = edgerun_node([api, shop], command="node", server=server)
    c = node.client
    assert c.get("/v1/users", headers={"host": "api.example.com"}).json()["project"] == "api"
    assert c.get("/shop/cart", headers={"host": "anything.test"}).json()["project"] == "shop"
    assert c.get("/", headers={"host": "shop.example.com:8080"}).json()["project"] == "shop"
    missing = c.get("/nope", headers={"host": "other.test"})
    assert missing.status_code == 404
    err = missing.json()["error"]
    assert err["code"] == "not_found"
    assert "other.test/nope" in err["message"]
    assert err["request_id"] == missing.headers["x-edgerun-request-id"]


def test_healthz_and_request_id(tmp_path, edgerun_node, server):
    project = make_project(tmp_path, "hello", named("hello"))
    node = edgerun_node(project, server=server)
    health = node.client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    r = node.client.get("/a")
    assert r.json()["rid"] == r.headers["x-edgerun-request-id"]
    assert node.client.get("/a").json()["rid"] != r.json()["rid"]


FAILING = """
from edgerun import Response
async def fetch(request, env, ctx):
    if request.path == "/boom":
        raise RuntimeError("kaboom")
    if request.path == "/json":
        return Response.json(await request.json())
    if request.path == "/not-a-response":
        return {"oops": True}
    return Response("ok")
"""


def test_handler_exception_is_500_json_with_traceback_only_in_dev(tmp_path, edgerun_node):
    project = make_project(tmp_path, "failing", FAILING)
    dev = edgerun_node(project)
    r = dev.client.get("/boom")
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "internal"
    assert err["request_id"] == r.headers["x-edgerun-request-id"]
    assert "kaboom" in err["traceback"]
    assert dev.client.get("/ok").text == "ok"  # the node keeps serving

    prod = edgerun_node(project, command="node")
    r = prod.client.get("/boom")
    assert r.status_code == 500
    assert "traceback" not in r.json()["error"]
    assert "kaboom" not in r.text


def test_malformed_json_and_non_response(tmp_path, edgerun_node):
    project = make_project(tmp_path, "failing", FAILING)
    node = edgerun_node(project, command="node")
    ok = node.client.post("/json", json={"a": 1})
    assert ok.json() == {"a": 1}
    bad = node.client.post("/json", content=b'{"a": }')
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "malformed_json"
    wrong = node.client.get("/not-a-response")
    assert wrong.status_code == 500
    assert "Response" in wrong.json()["error"]["message"]


def test_oversized_body_is_413_and_within_limit_is_served(tmp_path, edgerun_node):
    project = make_project(
        tmp_path,
        "echo",
        """
        from edgerun import Response
        async def fetch(request):
            return Response.json({"size": len(await request.body())})
    """,
    )
    node = edgerun_node(project, command="node", args=["--max-body-bytes", "1024"])
    assert node.client.post("/", content=b"x" * 1024).json() == {"size": 1024}
    r = node.client.post("/", content=b"x" * 1025)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"

    def chunks():
        for _ in range(4):
            yield b"y" * 512

    r = httpx.post(node.url + "/", content=chunks())
    assert r.status_code == 413


def test_workers_style_and_asgi_projects(tmp_path, edgerun_node):
    workers = make_project(
        tmp_path,
        "cf",
        """
        from workers import Response, WorkerEntrypoint
        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response.json({"style": "workers", "greeting": self.env.GREETING})
    """,
        '[vars]\nGREETING = "hi"\n',
    )
    fastapi = make_project(
        tmp_path,
        "fa",
        """
        from contextlib import asynccontextmanager
        from fastapi import FastAPI
        from fastapi.responses import StreamingResponse

        started = []

        @asynccontextmanager
        async def lifespan(app):
            started.append(1)
            yield

        app = FastAPI(lifespan=lifespan)

        @app.get("/items/{item_id}")
        async def item(item_id: int, q: str = ""):
            return {"item_id": item_id, "q": q, "startups": len(started)}

        @app.get("/stream")
        async def stream():
            async def gen():
                for i in range(3):
                    yield f"chunk{i}\\n"
            return StreamingResponse(gen(), media_type="text/plain")
    """,
    )
    w = edgerun_node(workers)
    assert w.client.get("/").json() == {"style": "workers", "greeting": "hi"}
    f = edgerun_node(fastapi)
    for _ in range(3):
        assert f.client.get("/items/5", params={"q": "x"}).json() == {
            "item_id": 5,
            "q": "x",
            "startups": 1,
        }
    assert f.client.get("/stream").text == "chunk0\nchunk1\nchunk2\n"
    assert f.client.get("/items/notanint").status_code == 422


def test_dev_reloads_on_change_without_dropping_the_port(tmp_path, edgerun_node):
    project = make_project(
        tmp_path,
        "live",
        """
        from edgerun import Response
        async def fetch(request):
            return Response("v1")
    """,
    )
    node = edgerun_node(project, args=["--reload"])
    node.wait_for_line(r"watching for changes")
    assert node.client.get("/").text == "v1"
    (project / "app.py").write_text(
        "from edgerun import Response\nasync def fetch(request):\n    return Response('v2')\n"
    )
    node.wait_for_line(r"reloaded live")
    assert node.client.get("/").text == "v2"
    # A broken edit keeps the previous version serving.
    (project / "app.py").write_text("def fetch(:\n")
    node.wait_for_line(r"reload of live failed")
    assert node.client.get("/").text == "v2"


def test_relative_state_dir_works_for_isolated_workers(tmp_path):
    # Workers chdir into their state dir: a relative --state-dir must not be applied twice.
    from edgerun.testing import start_node
    from edgerun.testing.plugin import _searchable

    project = make_project(
        tmp_path,
        "rel",
        """
        from edgerun import Response
        async def fetch(request, env):
            await env.KV.put("k", "v")
            return Response(await env.KV.get("k"))
    """,
        '[[kv]]\nbinding = "KV"\n',
    )
    _searchable(tmp_path)  # so a root node drops the workers' uid and chdirs them
    node = start_node([project], state_dir="state", cwd=tmp_path, command="node")
    try:
        assert node.client.get("/").text == "v"
        assert (tmp_path / "state" / "kv.sqlite3").exists()
    finally:
        node.stop()
