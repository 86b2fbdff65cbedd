"""Test helpers for edgerun users (and edgerun's own tests).

The pytest plugin (fixtures ``edgerun_node`` and ``fake_clock``) is registered
automatically through the ``pytest11`` entry point when edgerun is installed.
"""

from edgerun.clock import FakeClock
from edgerun.testing.process import NodeStartError, RunningNode, start_node

__all__ = ["FakeClock", "NodeStartError", "RunningNode", "start_node"]
