"""The hook through which the dispatcher lets the control plane pick a version.

``Node.versions`` is a :class:`VersionChooser` (``node.sync.ControlSync`` when the node
follows a control plane, else None). After routing a request to a project's deployment,
the dispatcher awaits ``choose(deployment, request)``, which returns the deployment
that should run it (a split variant, a forced preview, or the same one) and headers to
add to the response (``x-edgerun-version``, a split's ``set-cookie``). Kept in its own
module so ``node.app`` does not import the sync machinery.
"""

from __future__ import annotations

from typing import Protocol

from edgerun.http import Request
from edgerun.node.deployment import Deployment

__all__ = ["VERSION_HEADER", "VersionChooser"]

VERSION_HEADER = "x-edgerun-version"
"""Response header naming the version that answered; on a request (with a ``read``
token in ``authorization``) it forces that version."""


class VersionChooser(Protocol):
    """Picks the deployment version that serves a routed request."""

    async def choose(
        self, deployment: Deployment, request: Request
    ) -> tuple[Deployment, list[tuple[str, str]]]:
        """Return the deployment to invoke and response headers to add.

        Must not await anything on the common path (no forced version), so that the
        choice and the dispatcher's ``enter()`` happen without a swap in between.
        """
        ...

    def fixed(self, deployment: Deployment) -> list[tuple[str, str]] | None:
        """The headers every request to ``deployment`` gets when no per-request choice
        exists (no split), else None. A forced version is per request: a request with
        the version header always goes through ``choose``."""
        ...
