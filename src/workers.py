"""Cloudflare Python Workers compatibility: ``from workers import WorkerEntrypoint, Response``.

A thin alias of ``edgerun.adapters.workers_compat``, installed as a top-level module so
files written for Workers import it unmodified.
"""

from edgerun.adapters.workers_compat import Request, Response, WorkerEntrypoint, handler

__all__ = ["Request", "Response", "WorkerEntrypoint", "handler"]
