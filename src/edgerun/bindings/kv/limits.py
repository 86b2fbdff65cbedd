"""The documented limits of a KV namespace, as one frozen object."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "KVLimits"]

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class KVLimits:
    """Limits enforced by every KV backend (the defaults follow Cloudflare Workers KV).

    - ``max_key_bytes``: a key is non-empty and at most this many bytes: UTF-8 bytes
      for a ``str`` key, encoded bytes (see ``keys.encode_tuple``) for a tuple key.
    - ``max_value_bytes``: a value is at most this many bytes (``str`` as UTF-8).
    - ``max_metadata_bytes``: metadata serialises to at most this many bytes of JSON.
    - ``min_ttl_seconds``: ``expiration_ttl`` is at least this, and an absolute
      ``expiration`` at least this far in the future.
    - ``max_list_limit``: ``list(limit=...)`` is between 1 and this.
    - ``max_atomic_mutations``: an ``atomic()`` operation has at most this many writes
      and at most this many checks (1000 is also NATS's cap on an atomic batch).

    Raises ``ValueError`` on construction if a limit is not positive.
    """

    max_key_bytes: int = 512
    max_value_bytes: int = 25 * _MIB
    max_metadata_bytes: int = 1024
    min_ttl_seconds: float = 1.0
    max_list_limit: int = 1000
    max_atomic_mutations: int = 1000

    def __post_init__(self) -> None:
        for field in (
            "max_key_bytes",
            "max_value_bytes",
            "max_metadata_bytes",
            "max_list_limit",
            "max_atomic_mutations",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"KVLimits.{field} must be a positive int, got {value!r}")
        if not self.min_ttl_seconds > 0:
            raise ValueError(
                f"KVLimits.min_ttl_seconds must be positive, got {self.min_ttl_seconds!r}"
            )


DEFAULT_LIMITS = KVLimits()
"""The limits a namespace enforces unless ``open_kv(limits=...)`` says otherwise."""
