"""The edgerun pytest plugin (registered through the ``pytest11`` entry point).

Fixtures:

``edgerun_node``
    A factory: ``edgerun_node("path/to/project", country="KR")`` starts a real node
    process on a free port with a fresh state dir (or ``state_dir=``) and returns a
    ``RunningNode``
    (``.url``, ``.client`` — an ``httpx.Client`` with that base URL). Every node
    started in a test is stopped after it.

``fake_clock``
    A ``FakeClock`` for TTL and timeout tests that must not sleep.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from edgerun.clock import FakeClock
from edgerun.testing.process import RunningNode, start_node

__all__ = ["edgerun_node", "fake_clock"]

NodeFactory = Callable[..., RunningNode]


@pytest.fixture
def edgerun_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """Start real edgerun nodes on port 0 with fresh state; stopped after the test."""
    started: list[RunningNode] = []

    def factory(
        project: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        command: str = "dev",
        country: str | None = None,
        server: str = "uvicorn",
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> RunningNode:
        projects = [project] if isinstance(project, str | os.PathLike) else list(project)
        extra = ["--server", server, *args]
        if country is not None:
            extra += ["--country", country]
        if state_dir is None:
            state_dir = tmp_path_factory.mktemp("edgerun-state")
            _searchable(Path(state_dir))
        state = state_dir
        node = start_node(projects, state_dir=state, command=command, args=extra, env=env)
        started.append(node)
        return node

    yield factory
    for node in started:
        node.stop()


def _searchable(path: Path) -> None:
    """Let other users traverse (not list) the temp directories leading to ``path``.

    A node running as root drops each deployment's workers to its own uid, which must
    reach the deployment's state directory; pytest's temp root is mode 0700.
    """
    top = Path(tempfile.gettempdir()).resolve()
    for directory in [path.resolve(), *path.resolve().parents]:
        if directory == top or top not in directory.parents:
            break
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(directory, stat.S_IMODE(mode) | stat.S_IXOTH)


@pytest.fixture
def fake_clock() -> FakeClock:
    """A ``FakeClock`` starting at a fixed epoch time."""
    return FakeClock()
