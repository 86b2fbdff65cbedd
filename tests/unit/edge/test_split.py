"""Weighted sticky splits: shares, stickiness, forged cookies, validation."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from edgerun.edge.split import Split, SplitError, parse_split_key

A, B, C = "v" + "a" * 12, "v" + "b" * 12, "v" + "c" * 12


@pytest.mark.parametrize("weights", [{A: 90, B: 10}, {A: 50, B: 50}, {A: 20, B: 30, C: 50}])
def test_shares_over_10000_clients_are_within_two_points(weights):
    split = Split.create(weights, salt="shop")
    rng = random.Random(7)
    counts: Counter[str] = Counter()
    for _ in range(10_000):
        counts[split.assign(None, new_id=lambda: f"{rng.getrandbits(128):032x}").version] += 1
    for version, weight in weights.items():
        assert abs(counts[version] / 100 - weight) <= 2, (version, counts)


def test_a_client_keeps_its_version_via_the_cookie():
    split = Split.create({A: 50, B: 50})
    first = split.assign(None)
    assert first.set_cookie is not None and first.set_cookie.startswith(first.version + ".")
    for _ in range(20):
        again = split.assign(first.set_cookie)
        assert again.version == first.version and again.set_cookie is None


def test_stickiness_survives_a_weight_change():
    before = Split.create({A: 90, B: 10})
    after = Split.create({A: 10, B: 90})
    cookies = [before.assign(None).set_cookie for _ in range(200)]
    for cookie in cookies:
        assert cookie is not None
        assert after.assign(cookie).version == cookie.split(".")[0]


def test_a_forged_or_stale_cookie_is_reassigned_not_an_error():
    split = Split.create({A: 50, B: 50})
    client = "0123456789abcdef0123456789abcdef"
    forged = split.assign(f"v999999999999.{client}")
    assert forged.version in (A, B)
    assert forged.set_cookie == f"{forged.version}.{client}"  # same client id kept
    assert forged.version == split.bucket_of(client)  # deterministic
    for junk in ("", "garbage", "a.b.c", f"{A}.not-hex", "\x00"):
        result = split.assign(junk)
        assert result.version in (A, B) and result.set_cookie is not None


def test_header_keyed_splits_are_deterministic_without_cookies():
    split = Split.create({A: 50, B: 50}, key="header:X-User")
    seen = {split.assign(None, {"x-user": "alice"}.get).version for _ in range(10)}
    assert len(seen) == 1
    assert split.assign(None, {"x-user": "alice"}.get).set_cookie is None
    # Without the header it falls back to a cookie.
    assert split.assign(None, {}.get).set_cookie is not None


def test_the_salt_decorrelates_projects():
    one, two = Split.create({A: 50, B: 50}, salt="one"), Split.create({A: 50, B: 50}, salt="two")
    keys = [f"{i:032x}" for i in range(400)]
    same = sum(one.bucket_of(k) == two.bucket_of(k) for k in keys)
    assert 100 < same < 300


def test_zero_weight_versions_get_nothing():
    split = Split.create({A: 100, B: 0})
    assert {split.assign(None).version for _ in range(100)} == {A}
    assert split.assign(f"{B}.{'0' * 32}").version == A


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "1 to 10"),
        ({A: 90, B: 20}, "sum to 100"),
        ({A: 101}, "0..100"),
        ({A: -1, B: 101}, "0..100"),
        ({"latest": 100}, "version id"),
        ({A: 50.5, B: 49.5}, "integer"),
    ],
)
def test_invalid_splits_are_refused(weights, message):
    with pytest.raises(SplitError, match=message):
        Split.create(weights)


def test_split_keys():
    assert parse_split_key("cookie") is None
    assert parse_split_key("header:X-User-Id") == "x-user-id"
    for bad in ("jwt", "header:", "header:bad name", "cookie:x"):
        with pytest.raises(SplitError):
            parse_split_key(bad)
