"""API tokens for the control plane: format, scopes, hashing.

A token looks like ``ert_<id>_<secret>``: ``id`` (8 hex digits) finds the stored
record, ``secret`` (32 random bytes, urlsafe base64) is the credential. Only the
SHA-256 of the whole token is stored, and it is compared in constant time, so a
stolen database or a timing probe does not yield a usable token.

Scopes form a small lattice: ``admin`` can do everything; ``deploy`` can also
``read``; ``node`` (what ``edgerun node --control`` uses) can ``read`` and also fetch
bundles and secret values, which no other scope ever sees.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

__all__ = [
    "SCOPES",
    "Principal",
    "Scope",
    "allows",
    "hash_token",
    "new_token",
    "same_hash",
    "token_id",
]

Scope: TypeAlias = Literal["read", "deploy", "admin", "node"]
SCOPES: Final[tuple[Scope, ...]] = ("read", "deploy", "admin", "node")
"""Every scope a token may have."""

_GRANTS: Final[dict[str, frozenset[str]]] = {
    "read": frozenset({"read"}),
    "deploy": frozenset({"read", "deploy"}),
    "node": frozenset({"read", "node"}),
    "admin": frozenset({"read", "deploy", "admin", "node"}),
}
_TOKEN = re.compile(r"^ert_([0-9a-f]{8})_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token belongs to: its ``name`` (recorded as a version's author) and scope."""

    name: str
    scope: Scope


def allows(scope: str, needed: str) -> bool:
    """Whether a token of ``scope`` may perform an operation requiring ``needed``."""
    return needed in _GRANTS.get(scope, frozenset())


def new_token() -> tuple[str, str]:
    """A fresh random token and its id: ``("ert_<id>_<secret>", id)``."""
    ident = secrets.token_hex(4)
    return f"ert_{ident}_{secrets.token_urlsafe(32)}", ident


def token_id(token: str) -> str | None:
    """The id part of a well-formed token, else None (no lookup needed for junk)."""
    match = _TOKEN.match(token)
    return match.group(1) if match else None


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256 hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_hash(token: str, stored: str) -> bool:
    """Constant-time check that ``token`` hashes to ``stored``."""
    return hmac.compare_digest(hash_token(token), stored)
