"""Isolated mode: a zygote per deployment, forked worker processes, limits, autoscaling.

Node side: ``IsolatedInvoker`` (the ``Invoker``), ``Pool`` (workers and autoscaling),
``ZygoteClient``. Process side: ``zygote.serve_zygote`` and ``worker.run_worker``,
started by the node's ``edgerun.node.worker_main`` program, which injects the binding
factory (this package never imports a binding backend). ``protocol`` is the wire
format between them.
"""

from edgerun.runtime.isolate.invoker import IsolatedInvoker
from edgerun.runtime.isolate.pool import PoolSettings
from edgerun.runtime.isolate.protocol import BindingSpec, Spec

__all__ = ["BindingSpec", "IsolatedInvoker", "PoolSettings", "Spec"]
