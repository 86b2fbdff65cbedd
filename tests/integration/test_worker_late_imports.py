"""A worker can import a module nobody imported before the fork.

When the node runs as root and the interpreter lives under a directory other users
cannot search (a home directory of mode 0700), the zygote pins import paths to open
directory descriptors before dropping to the deployment's uid; workers must keep
those descriptors, or every stdlib module first imported inside a request fails.
"""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.integration

LATE_IMPORT = """
from edgerun import Response

async def fetch(request, env, ctx):
    import wave  # a stdlib module nothing in edgerun imports

    return Response.json({"module": wave.__name__})
"""


def test_a_module_first_imported_in_a_request_is_found(tmp_path, edgerun_node):
    project = tmp_path / "late"
    project.mkdir()
    (project / "edgerun.toml").write_text('name = "late"\nmain = "app.py"\n')
    (project / "app.py").write_text(textwrap.dedent(LATE_IMPORT))
    node = edgerun_node(project, command="node")
    response = node.client.get("/")
    assert response.status_code == 200, response.text
    assert response.json() == {"module": "wave"}
