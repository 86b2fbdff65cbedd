"""The ``workers`` compatibility module: Cloudflare Python Workers files run unmodified."""

from __future__ import annotations

import workers
from edgerun.adapters import workers_compat
from edgerun.http import Request, Response
from edgerun.runtime import Context, Env, WorkerEntrypoint, load_entry


def test_workers_exports_edgeruns_classes():
    assert workers.Response is Response
    assert workers.Request is Request
    assert workers.WorkerEntrypoint is WorkerEntrypoint
    assert set(workers.__all__) == set(workers_compat.__all__)


async def test_response_json_and_entrypoint_attributes():
    response = workers.Response.json({"a": 1}, status=201)
    assert response.status == 201
    assert await response.json_body() == {"a": 1}
    entrypoint = workers.WorkerEntrypoint("the-ctx", "the-env")
    assert (entrypoint.ctx, entrypoint.env) == ("the-ctx", "the-env")


async def test_a_workers_file_runs_unmodified(make_project):
    # As published in Cloudflare's Python Workers examples.
    root = make_project(
        {
            "src/entry.py": """
            from workers import Response, WorkerEntrypoint

            class Default(WorkerEntrypoint):
                async def fetch(self, request):
                    name = (await request.json())["name"]
                    return Response(f"Hello {name} from {self.env.REGION}!")
            """
        }
    )
    entry = load_entry(root, "src/entry.py")
    assert entry.kind == "workers"
    request = Request("POST", "https://example.com/", body=b'{"name": "World"}')
    response = await entry.handler(request, Env(vars={"REGION": "icn"}), Context("r"))
    assert await response.text() == "Hello World from icn!"
