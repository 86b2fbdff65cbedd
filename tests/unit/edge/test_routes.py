"""Route patterns (edgerun.edge.routes): parsing, matching and specificity."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.edge.routes import HostKind, RoutePattern, RouteTable, normalize_host

# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "kind", "host", "path", "prefix"),
    [
        ("*/*", HostKind.ANY, "", "/", True),
        ("api.example.com/users/*", HostKind.EXACT, "api.example.com", "/users/", True),
        ("*.example.com/x", HostKind.SUBDOMAINS, "example.com", "/x", False),
        ("*example.com/", HostKind.HOST_AND_SUBDOMAINS, "example.com", "/", False),
        ("Example.COM./a", HostKind.EXACT, "example.com", "/a", False),
        ("[::1]/*", HostKind.EXACT, "[::1]", "/", True),
        ("127.0.0.1/health", HostKind.EXACT, "127.0.0.1", "/health", False),
        ("  *.example.com/*  ", HostKind.SUBDOMAINS, "example.com", "/", True),
    ],
)
def test_parse_valid_patterns(pattern, kind, host, path, prefix):
    p = RoutePattern.parse(pattern)
    assert (p.host_kind, p.host, p.path, p.prefix) == (kind, host, path, prefix)
    assert str(p) == pattern.strip()


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("example.com", "write 'example.com/*'"),
        ("https://example.com/*", "must not include a scheme"),
        ("example.com:8080/*", "must not include a port"),
        ("example.com/a/*/b", "only allowed at the end of the path"),
        ("*.*.example.com/*", "only allowed at the start of the host"),
        ("ex*ample.com/*", "only allowed at the start of the host"),
        ("a..b/*", "is not a valid host"),
        ("exa mple.com/*", "is not a valid host"),
        ("/users", "has an empty host"),
        ("example.com/a?b=1", "must not contain a query"),
        ("example.com/a#frag", "must not contain a query"),
        ("", "must not be empty"),
        ("*.[::1]/*", "IPv6 address cannot take a wildcard"),
    ],
)
def test_parse_rejects_with_a_reason(pattern, reason):
    with pytest.raises(ValueError) as info:
        RoutePattern.parse(pattern)
    assert reason in str(info.value)


def test_parse_rejects_non_strings():
    with pytest.raises(ValueError, match="must be a string"):
        RoutePattern.parse(42)  # type: ignore[arg-type]


# --- matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "example.com"),
        (None, ""),
        ("", ""),
        ("Example.COM:8080", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:8787", "[::1]"),
        ("[::1]", "[::1]"),
        ("::1", "::1"),
    ],
)
def test_normalize_host(host, expected):
    assert normalize_host(host) == expected


@pytest.mark.parametrize(
    ("pattern", "host", "path", "expected"),
    [
        ("*/*", "anything", "/x", True),
        ("*/*", None, "", True),
        ("*/*", "a", "*", True),
        ("example.com/*", "example.com", "/", True),
        ("example.com/*", "EXAMPLE.com:443", "/a/b", True),
        ("example.com/*", "www.example.com", "/", False),
        ("*.example.com/*", "www.example.com", "/", True),
        ("*.example.com/*", "a.b.example.com", "/", True),
        ("*.example.com/*", "example.com", "/", False),
        ("*example.com/*", "example.com", "/", True),
        ("*example.com/*", "www.example.com", "/", True),
        # The wildcard stops at a dot boundary: other registrable domains never match.
        ("*example.com/*", "myexample.com", "/", False),
        ("*.example.com/*", "evilexample.com", "/", False),
        ("example.com/users/*", "example.com", "/users/42", True),
        ("example.com/users/*", "example.com", "/users/", True),
        ("example.com/users/*", "example.com", "/users", False),
        ("example.com/users*", "example.com", "/users", True),
        ("example.com/users*", "example.com", "/usersx", True),
        ("example.com/users", "example.com", "/users", True),
        ("example.com/users", "example.com", "/users/", False),
        ("example.com/users", "example.com", "/users?x=1", True),
        ("example.com/Users", "example.com", "/users", False),
        ("*/api/*", "a.test", "/api/v1", True),
        ("*/api/*", "a.test", "/web", False),
        ("[::1]/*", "[::1]:8080", "/", True),
    ],
)
def test_matches(pattern, host, path, expected):
    assert RoutePattern.parse(pattern).matches(host, path) is expected


# --- tables and specificity ---------------------------------------------------------------


def test_table_picks_the_most_specific_route():
    table = RouteTable(
        [
            ("*/*", "catch-all"),
            ("*example.com/*", "apex-and-subs"),
            ("*.example.com/*", "subs"),
            ("*.api.example.com/*", "api-subs"),
            ("www.example.com/*", "www"),
            ("www.example.com/images/*", "www-images"),
            ("www.example.com/images/logo.png", "logo"),
        ]
    )
    assert table.match("other.org", "/") == "catch-all"
    assert table.match("example.com", "/") == "apex-and-subs"
    assert table.match("shop.example.com", "/") == "subs"
    assert table.match("v1.api.example.com", "/") == "api-subs"
    assert table.match("www.example.com", "/") == "www"
    assert table.match("www.example.com", "/images/a.png") == "www-images"
    assert table.match("www.example.com", "/images/logo.png") == "logo"
    assert table.match("WWW.example.com:8443", "/images/logo.png?v=2") == "logo"
    assert len(table) == 7


def test_exact_host_beats_wildcard_host_even_with_a_longer_path():
    # As in Workers: a.example.com/* wins over *.example.com/a for a.example.com/a.
    table = RouteTable([("*.example.com/a", "wild"), ("a.example.com/*", "exact")])
    assert table.match("a.example.com", "/a") == "exact"


def test_longer_literal_path_beats_shorter_and_exact_beats_prefix():
    table = RouteTable([("x.test/images*", "short"), ("x.test/images/*", "long")])
    # Unlike the Workers quirk where /images* wins, the longer literal is more specific.
    assert table.match("x.test", "/images/hello") == "long"
    assert table.match("x.test", "/images") == "short"
    table = RouteTable([("x.test/a/*", "prefix"), ("x.test/a/", "exact")])
    assert table.match("x.test", "/a/") == "exact"
    assert table.match("x.test", "/a/b") == "prefix"


def test_ties_go_to_the_first_route_added():
    table = RouteTable([("*/*", "first"), ("*/*", "second")])
    assert table.match("h", "/") == "first"
    table = RouteTable([("h.test/*", 1), ("h.test/*", 2)])
    assert table.match("h.test", "/") == 1


def test_no_match_gives_none_and_empty_table():
    assert RouteTable([("a.test/*", 1)]).match("b.test", "/") is None
    assert RouteTable([("a.test/x", 1)]).match("a.test", "/y") is None
    empty: RouteTable[int] = RouteTable()
    assert empty.match("a", "/") is None
    assert len(empty) == 0


def test_match_route_returns_the_pattern_and_iteration_keeps_order():
    table = RouteTable([("b.test/*", "b"), ("*/*", "all"), ("a.test/*", "a")])
    found = table.match_route("a.test", "/")
    assert found is not None
    assert found[0].pattern == "a.test/*"
    assert found[1] == "a"
    assert [(str(p), t) for p, t in table] == [("b.test/*", "b"), ("*/*", "all"), ("a.test/*", "a")]


def test_add_returns_the_pattern_and_bad_patterns_raise():
    table: RouteTable[str] = RouteTable()
    assert table.add(RoutePattern.parse("x.test/*"), "x").host == "x.test"
    with pytest.raises(ValueError, match="has no path"):
        table.add("x.test", "y")


# --- properties ---------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_hosts = st.lists(_label, min_size=1, max_size=4).map(".".join)
_segment = st.from_regex(r"[A-Za-z0-9._~%-]{1,8}", fullmatch=True)
_paths = st.lists(_segment, max_size=4).map(lambda parts: "/" + "/".join(parts))


@given(host=st.one_of(st.none(), st.text()), path=st.text())
def test_catch_all_matches_everything(host, path):
    assert RoutePattern.parse("*/*").matches(host, path)
    assert RouteTable([("*/*", 1)]).match(host, path) == 1


@given(host=_hosts, path=_paths, star=st.booleans(), port=st.integers(1, 65535))
def test_a_pattern_matches_what_it_was_built_from(host, path, star, port):
    pattern = RoutePattern.parse(f"{host}{path}{'*' if star else ''}")
    assert pattern.matches(host, path)
    assert pattern.matches(f"{host.upper()}:{port}", path)
    assert RoutePattern.parse(f"*.{host}{path}").matches(f"www.{host}", path)
    assert RoutePattern.parse(f"*{host}{path}").matches(host, path)
    if star:
        assert pattern.matches(host, path + "/more")


@given(host=st.one_of(st.none(), st.text(max_size=30)), path=st.text(max_size=30))
def test_matching_never_raises(host, path):
    table = RouteTable([("a.test/x*", 1), ("*.test/*", 2), ("*/y", 3)])
    assert table.match(host, path) in (None, 1, 2, 3)


@given(
    labels=st.lists(_label, min_size=2, max_size=4),
    parts=st.lists(_segment, min_size=1, max_size=4),
    seed=st.integers(),
)
def test_specificity_order_is_independent_of_insertion_order(labels, parts, seed):
    host = ".".join(labels)
    parent = ".".join(labels[1:])
    path = "/" + "/".join(parts)
    # From least to most specific; every one of them matches host+path.
    ladder = [
        "*/*",
        f"*{parent}/*",
        f"*.{parent}/*",
        f"*{host}/*",
        f"{host}/*",
        f"{host}{path}*",
        f"{host}{path}",
    ]
    pairs = [(p, i) for i, p in enumerate(ladder)]
    random.Random(seed).shuffle(pairs)
    for cut in range(1, len(ladder) + 1):
        present = [pair for pair in pairs if pair[1] < cut]
        assert RouteTable(present).match(host, path) == cut - 1


@given(host=_hosts, short=_paths, extra=_segment, seed=st.integers())
def test_exact_host_always_beats_wildcards_and_longer_paths_win(host, short, extra, seed):
    long = short.rstrip("/") + "/" + extra
    pairs = [
        (f"*{host}{long}*", "wild-long"),
        (f"{host}{short}*", "exact-short"),
        (f"{host}{long}*", "exact-long"),
    ]
    random.Random(seed).shuffle(pairs)
    table = RouteTable(pairs)
    assert table.match(host, long) == "exact-long"
    assert table.match(host, short) == "exact-short"
