"""Weighted, sticky traffic splits between versions of a project (A/B, canary).

Pure logic, no I/O: the node asks :meth:`Split.assign` which version a request goes
to and which cookie (if any) to set.

Assignment. A client is identified by a *client key*:

- by default a random 128-bit client id kept in the cookie ``edgerun-version``, whose
  value is ``<version>.<client id>`` (e.g. ``v3f2a9c01b2de.9c4e...``);
- or, with ``key = "header:<name>"``, the value of that request header (a user id set
  by an auth proxy, say); no cookie is set then.

A new client's version is a deterministic hash of ``route salt + client key`` into
10,000 buckets laid out by the weights, so assignment is uniform and reproducible.
A returning cookie client stays on the version its cookie names as long as that
version is still in the split (stickiness survives weight changes); a cookie naming a
version not in the split (old, removed or forged) is reassigned by its client id, and
a malformed cookie gets a fresh id: never an error.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = ["COOKIE", "Assignment", "Split", "SplitError", "parse_split_key"]

COOKIE: Final = "edgerun-version"
"""The cookie holding ``<version>.<client id>`` for cookie-keyed splits."""

COOKIE_MAX_AGE_S: Final = 30 * 24 * 3600
_BUCKETS: Final = 10_000
_CLIENT_ID = re.compile(r"^[0-9a-f]{32}$")
_VERSION = re.compile(r"^v[0-9a-f]{12}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")


class SplitError(ValueError):
    """A split definition is invalid; the message quotes the bad value."""


def parse_split_key(key: str) -> str | None:
    """Validate a split key: ``"cookie"`` (returns None) or ``"header:<name>"`` (the name).

    Raises ``SplitError`` for anything else.
    """
    if key == "cookie":
        return None
    kind, _, name = key.partition(":")
    if kind == "header" and _HEADER_NAME.match(name):
        return name.lower()
    raise SplitError(f"split key {key!r} is invalid: use 'cookie' or 'header:<header-name>'")


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where one request goes: ``version``, and the cookie value to set (or None)."""

    version: str
    set_cookie: str | None = None


@dataclass(frozen=True)
class Split:
    """Integer percentage ``weights`` per version (summing to 100) and a client ``key``.

    Construct through :meth:`create` to validate. ``salt`` (the project name) makes
    assignments independent between projects.
    """

    weights: Mapping[str, int]
    key: str = "cookie"
    salt: str = ""
    _bounds: tuple[tuple[int, str], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def create(cls, weights: Mapping[str, int], *, key: str = "cookie", salt: str = "") -> Split:
        """Validate and build a split.

        ``weights``: 1..10 versions (``v`` + 12 hex), each an integer 0..100, summing to
        100. Raises ``SplitError`` otherwise.
        """
        if not weights or len(weights) > 10:
            raise SplitError(f"a split names 1 to 10 versions, got {len(weights)}")
        for version, weight in weights.items():
            if not isinstance(version, str) or not _VERSION.match(version):
                raise SplitError(f"{version!r} is not a version id (v + 12 hex digits)")
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise SplitError(f"weight of {version} must be an integer 0..100, got {weight!r}")
        total = sum(weights.values())
        if total != 100:
            raise SplitError(f"split weights must sum to 100, got {total}")
        parse_split_key(key)
        # Stable order (sorted by version id) so every node lays out the buckets alike.
        ordered = sorted(weights.items())
        bounds: list[tuple[int, str]] = []
        upper = 0
        for version, weight in ordered:
            if weight == 0:
                continue
            upper += weight * (_BUCKETS // 100)
            bounds.append((upper, version))
        return cls(dict(ordered), key, salt, tuple(bounds))

    @property
    def versions(self) -> tuple[str, ...]:
        """The versions with a non-zero weight."""
        return tuple(v for _, v in self._bounds)

    def bucket_of(self, client_key: str) -> str:
        """The version a client key hashes to (deterministic for a given split)."""
        digest = hashlib.sha256(f"{self.salt}\0{client_key}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") % _BUCKETS
        for upper, version in self._bounds:
            if bucket < upper:
                return version
        return self._bounds[-1][1]  # unreachable: bounds end at _BUCKETS

    def assign(
        self,
        cookie: str | None,
        header: Callable[[str], str | None] | None = None,
        *,
        new_id: Callable[[], str] | None = None,
    ) -> Assignment:
        """Pick the version for a request; see the module docstring for the rules.

        ``cookie`` is the ``edgerun-version`` cookie value (or None); ``header(name)``
        returns a request header (for header-keyed splits); ``new_id`` makes a client
        id (default: 16 random bytes as hex; tests inject their own).
        """
        header_name = parse_split_key(self.key)
        if header_name is not None:
            value = header(header_name) if header is not None else None
            if value:
                return Assignment(self.bucket_of(value))
            # No key on this request: fall back to the cookie, so it is still sticky.
        version, _, client_id = (cookie or "").partition(".")
        if _CLIENT_ID.match(client_id):
            if version in self.versions:
                return Assignment(version)
        else:
            client_id = (new_id or _random_id)()
        chosen = self.bucket_of(client_id)
        return Assignment(chosen, f"{chosen}.{client_id}")


def _random_id() -> str:
    return os.urandom(16).hex()
