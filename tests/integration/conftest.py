"""Fixtures for the integration tests: a small KV-backed project for scale-out tests."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

KV_APP = """
from edgerun import Response
from edgerun.errors import KVUnavailable

async def fetch(request, env, ctx):
    if request.path == "/ping":
        return Response.json({"pop": request.geo.pop})
    key = request.path.removeprefix("/kv/")
    if request.method == "PUT":
        await env.KV.put(key, await request.text())
        return Response.json({"stored": key})
    if request.path.startswith("/guarded/"):
        # A handler may catch the outage itself and degrade on its own terms.
        try:
            value = await env.KV.get(request.path.removeprefix("/guarded/"))
        except KVUnavailable:
            return Response.json({"value": None, "degraded": True})
        return Response.json({"value": value, "degraded": False})
    return Response.json({"value": await env.KV.get(key), "pop": request.geo.pop})
"""


@pytest.fixture
def kv_project(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a project serving ``PUT/GET /kv/<key>`` over ``env.KV``, and ``/ping``.

    ``kv_toml`` replaces the default ``[[kv]]`` section (no backend: the node decides).
    """

    def make(name: str = "regional", kv_toml: str = '[[kv]]\nbinding = "KV"\n') -> Path:
        project = tmp_path / name
        project.mkdir()
        (project / "edgerun.toml").write_text(f'name = "{name}"\nmain = "app.py"\n{kv_toml}')
        (project / "app.py").write_text(textwrap.dedent(KV_APP))
        return project

    return make
