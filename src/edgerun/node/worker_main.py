"""The zygote program: ``python -m edgerun.node.worker_main --control-fd N``.

Started by the node (``IsolatedInvoker``) in a fresh interpreter for one deployment.
It injects the node's binding factory (``wiring.open_bindings``, opened in each
worker relative to its state directory) and the HTTP server for handed-off
connections (``node.direct``) into ``runtime.isolate.zygote``, which does
the rest: read the spec, drop privileges, import the user's code, fork workers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import edgerun
from edgerun.bindings.base import Binding
from edgerun.bindings.cache import CacheStorage
from edgerun.node.direct import serve_connections
from edgerun.node.wiring import open_bindings, shared_cache_store
from edgerun.runtime.isolate.protocol import BindingSpec
from edgerun.runtime.isolate.zygote import main_exit, serve_zygote


async def _open_in_worker(specs: list[BindingSpec]) -> Mapping[str, Binding]:
    # The worker's cwd is its state directory (entered before privileges were
    # dropped); the KV file is opened by its absolute path.
    state_dir = Path.cwd()
    # caches.default is process-wide: give it the deployment's shared store, so it
    # behaves the same whichever worker serves a request (and after workers are reaped).
    # The same object, re-pointed: the user's module, imported in the zygote, may hold it.
    caches: CacheStorage = edgerun.caches
    caches.use_store(shared_cache_store(state_dir))
    return await open_bindings(specs, state_dir)


def main(argv: list[str] | None = None) -> None:
    """Parse ``--control-fd`` (and ``--preload``), run the zygote, exit with its status."""
    parser = argparse.ArgumentParser(prog="edgerun-zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        help="an edgerun module to import before forking workers (repeatable)",
    )
    args = parser.parse_args(argv)
    for module in args.preload:
        # Only edgerun's own modules: this is an optimisation, not a plugin hook.
        if module.startswith("edgerun."):
            importlib.import_module(module)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(levelname)s %(name)s [pid %(process)d]: %(message)s",
    )
    control = socket.socket(fileno=args.control_fd)
    control.setblocking(True)
    main_exit(serve_zygote(control, _open_in_worker, serve_connections))


if __name__ == "__main__":
    main()
