"""KVLimits: the documented defaults, immutability, and refusal of nonsense."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from edgerun.bindings.kv.limits import DEFAULT_LIMITS, KVLimits


def test_defaults_match_the_contract() -> None:
    assert (
        KVLimits(
            max_key_bytes=512,
            max_value_bytes=25 * 1024 * 1024,
            max_metadata_bytes=1024,
            min_ttl_seconds=1.0,
            max_list_limit=1000,
        )
        == DEFAULT_LIMITS
    )


def test_limits_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_key_bytes = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("max_key_bytes", 0),
        ("max_value_bytes", -1),
        ("max_metadata_bytes", 1.5),
        ("max_list_limit", True),
        ("min_ttl_seconds", 0),
        ("min_ttl_seconds", float("nan")),
    ],
)
def test_non_positive_limits_are_refused(field: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=field):
        KVLimits(**{field: bad})


def test_raised_limits_are_accepted() -> None:
    # The inverted twin of the refusals above.
    roomy = KVLimits(max_key_bytes=2048, max_list_limit=10_000, min_ttl_seconds=0.001)
    assert (roomy.max_key_bytes, roomy.max_list_limit, roomy.min_ttl_seconds) == (
        2048,
        10_000,
        0.001,
    )
