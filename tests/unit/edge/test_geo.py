"""Geo resolution (edgerun.edge.geo): who the client is and where, trusting only proxies."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.edge.geo import GeoResolver, normalize_country, parse_ip
from edgerun.http import Geo

GOOGLE_DNS = "8.8.8.8"  # iptocc: US
CLOUDFLARE_DNS = "1.1.1.1"  # iptocc: AU (APNIC research prefix)


def headers(**values: str):
    """A case-insensitive header getter, as the node passes ``request.headers.get``."""
    table = {k.replace("_", "-").lower(): v for k, v in values.items()}
    return lambda name: table.get(name.lower())


# --- client address -----------------------------------------------------------------------


def test_untrusted_peer_cannot_spoof_address_or_geo():
    resolver = GeoResolver(trusted_proxies=["10.0.0.0/8"], trust_geo_headers=True)
    ip, geo = resolver.resolve(
        GOOGLE_DNS,
        headers(
            x_forwarded_for="1.1.1.1",
            cf_connecting_ip="1.1.1.1",
            x_real_ip="1.1.1.1",
            cf_ipcountry="JP",
            x_edgerun_country="JP",
            x_edgerun_city="Tokyo",
        ),
    )
    assert ip == GOOGLE_DNS
    assert geo == Geo(country="US")


def test_trusted_proxy_forwarded_for_and_geo_headers_are_honoured():
    resolver = GeoResolver(trusted_proxies=["10.0.0.0/8"], trust_geo_headers=True)
    ip, geo = resolver.resolve(
        "10.0.0.1",
        headers(x_forwarded_for=GOOGLE_DNS, cf_ipcountry="jp", x_edgerun_city="Tokyo"),
    )
    assert ip == GOOGLE_DNS
    assert geo.country == "JP"
    assert geo.city == "Tokyo"


def test_trusted_proxy_without_trust_geo_headers_still_ignores_geo_headers():
    # A proxy trusted for X-Forwarded-For may pass a client's cf-ipcountry through.
    resolver = GeoResolver(trusted_proxies=["10.0.0.0/8"])
    ip, geo = resolver.resolve("10.0.0.1", headers(x_forwarded_for=GOOGLE_DNS, cf_ipcountry="JP"))
    assert ip == GOOGLE_DNS
    assert geo.country == "US"


def test_inverted_twin_untrusted_peer_with_the_same_headers_keeps_its_own_address():
    resolver = GeoResolver(trusted_proxies=["10.0.0.0/8"], trust_geo_headers=True)
    ip, geo = resolver.resolve(
        "192.168.1.5", headers(x_forwarded_for=GOOGLE_DNS, cf_ipcountry="JP")
    )
    assert ip == "192.168.1.5"
    assert geo.country is None  # private address: no country, and the header is ignored


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        # The client prepended a forgery; the right-most untrusted hop is the real client.
        ("6.6.6.6, 8.8.8.8, 10.0.0.3", GOOGLE_DNS),
        ("8.8.8.8,10.0.0.3,10.0.0.2", GOOGLE_DNS),
        # Every hop trusted: the left-most is the client.
        ("10.0.0.9, 10.0.0.3", "10.0.0.9"),
        # Ports and brackets some proxies add.
        ("8.8.8.8:5555", GOOGLE_DNS),
        ("[2001:4860:4860::8888]:443, 10.0.0.3", "2001:4860:4860::8888"),
        # An unreadable hop: stop at the last address a trusted proxy vouched for.
        ("8.8.8.8, garbage, 10.0.0.3", "10.0.0.3"),
        ("unknown", "10.0.0.1"),
        # Empty items from sloppily joined headers are skipped.
        ("8.8.8.8, , 10.0.0.3,", GOOGLE_DNS),
        ("::ffff:8.8.8.8", GOOGLE_DNS),
    ],
)
def test_forwarded_for_is_walked_from_the_right(xff, expected):
    resolver = GeoResolver(trusted_proxies=["10.0.0.0/8"])
    ip, _ = resolver.resolve("10.0.0.1", headers(x_forwarded_for=xff))
    assert ip == expected


def test_get_all_sees_a_proxy_added_forwarded_for_line():
    # HAProxy adds its own X-Forwarded-For line after the client's forged one.
    lines = {"x-forwarded-for": ["6.6.6.6", GOOGLE_DNS]}
    resolver = GeoResolver(trusted_proxies=["10.0.0.1"])
    first_only = resolver.resolve("10.0.0.1", lambda n: (lines.get(n) or [None])[0])
    every_line = resolver.resolve(
        "10.0.0.1", lambda n: (lines.get(n) or [None])[0], lambda n: lines.get(n, [])
    )
    assert first_only[0] == "6.6.6.6"
    assert every_line[0] == GOOGLE_DNS


def test_connecting_ip_headers_from_a_trusted_proxy_without_forwarded_for():
    resolver = GeoResolver(trusted_proxies=["10.0.0.1", "::1"])
    assert resolver.resolve("10.0.0.1", headers(cf_connecting_ip=GOOGLE_DNS))[0] == GOOGLE_DNS
    assert resolver.resolve("::1", headers(x_real_ip=CLOUDFLARE_DNS))[0] == CLOUDFLARE_DNS
    assert resolver.resolve("10.0.0.1", headers(x_real_ip="nonsense"))[0] == "10.0.0.1"
    assert resolver.resolve("10.0.0.1")[0] == "10.0.0.1"


def test_peer_normalisation():
    resolver = GeoResolver()
    assert resolver.resolve("::ffff:8.8.8.8") == (GOOGLE_DNS, Geo(country="US"))
    assert resolver.resolve(None) == (None, Geo())
    assert resolver.resolve("") == (None, Geo())
    assert resolver.resolve("not-an-ip") == (None, Geo())


def test_is_trusted():
    resolver = GeoResolver(trusted_proxies=["10.0.0.0/8", "2001:db8::1"])
    assert resolver.is_trusted("10.1.2.3")
    assert resolver.is_trusted("::ffff:10.1.2.3")
    assert resolver.is_trusted("2001:db8::1")
    assert not resolver.is_trusted("11.0.0.1")
    assert not resolver.is_trusted(None)
    assert not resolver.is_trusted("junk")


# --- country lookup and header values -----------------------------------------------------


def test_iptocc_gives_the_country_of_a_public_address():
    resolver = GeoResolver()
    assert resolver.resolve(GOOGLE_DNS)[1].country == "US"
    assert resolver.resolve("2001:4860:4860::8888")[1].country == "US"


@pytest.mark.parametrize(
    "ip", ["10.0.0.1", "192.168.0.1", "127.0.0.1", "::1", "fe80::1", "100.64.0.1"]
)
def test_private_and_loopback_addresses_have_no_country(ip):
    client, geo = GeoResolver().resolve(ip)
    assert client == ip
    assert geo.country is None


def test_pop_is_stamped_on_every_geo():
    resolver = GeoResolver(pop="fra1", trusted_proxies=["10.0.0.1"], trust_geo_headers=True)
    assert resolver.pop == "fra1"
    assert resolver.resolve(GOOGLE_DNS)[1].pop == "fra1"
    assert resolver.resolve(None)[1] == Geo(pop="fra1")
    assert resolver.resolve("10.0.0.1", headers(cf_ipcountry="DE"))[1] == Geo(
        country="DE", pop="fra1"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("fr", "FR"),
        (" De ", "DE"),
        ("XX", None),
        ("zz", None),
        ("T1", None),
        ("USA", None),
        ("", None),
        ("é1", None),
        ("ÄÖ", None),
        (None, None),
        (12, None),
    ],
)
def test_normalize_country(value, expected):
    assert normalize_country(value) == expected


def test_header_values_are_validated_field_by_field():
    resolver = GeoResolver(dev=True)
    _, geo = resolver.resolve(
        "127.0.0.1",
        headers(
            x_edgerun_country="T1",  # invalid: ignored, next source is used
            cf_ipcountry="ch",
            x_vercel_ip_city="Z%C3%BCrich",
            x_vercel_ip_country_region="ZH",
            cf_iplatitude="47.37",
            cf_iplongitude="8.54",
            x_edgerun_timezone="Europe/Zurich",
            cloudfront_viewer_asn="AS3303",
        ),
    )
    assert geo == Geo(
        country="CH",
        region="ZH",
        city="Zürich",
        latitude=47.37,
        longitude=8.54,
        timezone="Europe/Zurich",
        asn=3303,
    )


@pytest.mark.parametrize(
    ("extra", "field", "expected"),
    [
        ({"cf_iplatitude": "91", "cf_iplongitude": "8"}, "latitude", None),
        ({"cf_iplatitude": "nan", "cf_iplongitude": "8"}, "latitude", None),
        ({"cf_iplatitude": "45"}, "latitude", None),  # half a coordinate is dropped
        ({"x_edgerun_timezone": "Europe/Zurich; rm -rf"}, "timezone", None),
        ({"x_edgerun_asn": "AS0"}, "asn", None),
        ({"x_edgerun_asn": "99999999999"}, "asn", None),
        ({"x_edgerun_asn": "٣٣٠٣"}, "asn", None),  # non-ASCII digits
        ({"x_edgerun_city": "a\x01b"}, "city", None),
        ({"x_edgerun_city": "%FF%FE"}, "city", None),  # not UTF-8 once decoded
        ({"x_edgerun_city": "x" * 300}, "city", None),
        ({"x_edgerun_city": "S%C3%A3o%20Paulo"}, "city", "São Paulo"),
        # Raw UTF-8 bytes decoded as latin-1 by the HTTP server are repaired.
        ({"cf_ipcity": "ZÃ¼rich"}, "city", "Zürich"),
        ({"x_edgerun_region": "Île-de-France"}, "region", "Île-de-France"),
    ],
)
def test_invalid_header_values_are_ignored(extra, field, expected):
    _, geo = GeoResolver(dev=True).resolve("127.0.0.1", headers(**extra))
    assert getattr(geo, field) == expected


def test_dev_headers_override_dev_defaults():
    resolver = GeoResolver(dev=True, dev_country="de", dev_region="BE")
    assert resolver.resolve("127.0.0.1")[1] == Geo(country="DE", region="BE")
    _, geo = resolver.resolve(
        "127.0.0.1",
        headers(x_edgerun_country="fr", x_edgerun_city="Paris", x_edgerun_region="IDF"),
    )
    assert geo == Geo(country="FR", region="IDF", city="Paris")


def test_dev_trusts_geo_headers_from_anyone_but_not_forwarded_for():
    _, geo = GeoResolver(dev=True).resolve("203.0.113.9", headers(cf_ipcountry="JP"))
    assert geo.country == "JP"
    ip, _ = GeoResolver(dev=True).resolve("203.0.113.9", headers(x_forwarded_for=GOOGLE_DNS))
    assert ip == "203.0.113.9"


def test_dev_country_beats_the_ip_database():
    _, geo = GeoResolver(dev=True, dev_country="BR").resolve(GOOGLE_DNS)
    assert geo.country == "BR"


def test_dev_defaults_are_ignored_outside_dev():
    _, geo = GeoResolver(dev_country="BR", dev_region="SP").resolve("127.0.0.1")
    assert geo == Geo()


# --- construction errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, "not an IP address or CIDR"),
        ({"trusted_proxies": ["proxy.internal"]}, "not an IP address or CIDR"),
        ({"dev": True, "dev_country": "France"}, "two-letter country code"),
        ({"trust_geo_headers": True}, "without trusted_proxies"),
        ({"mmdb_path": "does-not-exist.mmdb"}, "cannot open the geo database"),
    ],
)
def test_invalid_construction_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GeoResolver(**kwargs)


def test_a_single_string_is_one_trusted_proxy():
    resolver = GeoResolver(trusted_proxies="10.0.0.1")  # type: ignore[arg-type]
    assert resolver.is_trusted("10.0.0.1")


def test_garbage_mmdb_file_is_rejected(tmp_path):
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a database" * 10)
    with pytest.raises(ValueError, match="cannot open the geo database"):
        GeoResolver(mmdb_path=str(bad))


# --- MaxMind databases --------------------------------------------------------------------
# A minimal MaxMind DB writer (IPv4 tree, 24-bit records) so the real `maxminddb` reader
# is exercised on a real file: format from the public MaxMind DB specification.


def _ctrl(type_: int, size: int) -> bytes:
    extra = b""
    if size >= 65821:
        extra, size = (size - 65821).to_bytes(3, "big"), 31
    elif size >= 285:
        extra, size = (size - 285).to_bytes(2, "big"), 30
    elif size >= 29:
        extra, size = bytes([size - 29]), 29
    if type_ <= 7:
        return bytes([(type_ << 5) | size]) + extra
    return bytes([size, type_ - 7]) + extra


class _U16(int):
    """An int stored as uint16 (libmaxminddb checks metadata field types strictly)."""


class _U64(int):
    """An int stored as uint64."""


def _encode(value: object) -> bytes:
    if isinstance(value, _U16 | _U64):
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return _ctrl(5 if isinstance(value, _U16) else 9, len(raw)) + raw
    if isinstance(value, bool):
        return _ctrl(14, int(value))
    if isinstance(value, str):
        raw = value.encode()
        return _ctrl(2, len(raw)) + raw
    if isinstance(value, float):
        return _ctrl(3, 8) + struct.pack(">d", value)
    if isinstance(value, int):
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
        return _ctrl(6 if value < 2**32 else 9, len(raw)) + raw
    if isinstance(value, dict):
        return _ctrl(7, len(value)) + b"".join(_encode(k) + _encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _ctrl(11, len(value)) + b"".join(_encode(v) for v in value)
    raise TypeError(value)


def write_mmdb(path: Path, networks: dict[str, dict[str, object]]) -> None:
    data = b""
    nodes: list[list[tuple[str, int] | None]] = [[None, None]]
    for cidr, record in networks.items():
        net = ipaddress.IPv4Network(cidr)
        offset, data = len(data), data + _encode(record)
        addr, node = int(net.network_address), 0
        for depth in range(net.prefixlen):
            bit = (addr >> (31 - depth)) & 1
            if depth == net.prefixlen - 1:
                nodes[node][bit] = ("data", offset)
                break
            nxt = nodes[node][bit]
            if nxt is None:
                nodes.append([None, None])
                nxt = ("node", len(nodes) - 1)
                nodes[node][bit] = nxt
            node = nxt[1]
    count = len(nodes)

    def record_value(rec: tuple[str, int] | None) -> int:
        if rec is None:
            return count
        kind, n = rec
        return n if kind == "node" else count + 16 + n

    tree = b"".join(
        record_value(left).to_bytes(3, "big") + record_value(right).to_bytes(3, "big")
        for left, right in nodes
    )
    metadata = {
        "node_count": count,
        "record_size": _U16(24),
        "ip_version": _U16(4),
        "database_type": "edgerun-test",
        "languages": ["en"],
        "binary_format_major_version": _U16(2),
        "binary_format_minor_version": _U16(0),
        "build_epoch": _U64(1_700_000_000),
        "description": {"en": "test"},
    }
    path.write_bytes(tree + bytes(16) + data + b"\xab\xcd\xefMaxMind.com" + _encode(metadata))


@pytest.fixture
def mmdb(tmp_path: Path) -> str:
    path = tmp_path / "city.mmdb"
    write_mmdb(
        path,
        {
            "81.2.69.0/24": {
                "country": {"iso_code": "GB"},
                "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
                "city": {"names": {"en": "London", "de": "London"}},
                "location": {
                    "latitude": 51.5142,
                    "longitude": -0.0931,
                    "time_zone": "Europe/London",
                },
                "autonomous_system_number": 20712,
            },
            # A private range, as a company database for its own offices would have.
            "10.1.0.0/16": {"country": {"iso_code": "DE"}, "city": {"names": {"de": "München"}}},
            # Only an ASN: the country must still come from iptocc.
            "1.1.1.0/24": {"autonomous_system_number": 13335},
        },
    )
    return str(path)


def test_mmdb_supplies_city_level_data(mmdb):
    resolver = GeoResolver(mmdb_path=mmdb, pop="lhr")
    try:
        ip, geo = resolver.resolve("81.2.69.160")
        assert ip == "81.2.69.160"
        assert geo == Geo(
            country="GB",
            region="ENG",
            city="London",
            latitude=51.5142,
            longitude=-0.0931,
            timezone="Europe/London",
            asn=20712,
            pop="lhr",
        )
        assert resolver.resolve("10.1.2.3")[1] == Geo(country="DE", city="München", pop="lhr")
        assert resolver.resolve(CLOUDFLARE_DNS)[1] == Geo(country="AU", asn=13335, pop="lhr")
        # Not in the database: iptocc still answers.
        assert resolver.resolve(GOOGLE_DNS)[1] == Geo(country="US", pop="lhr")
        # IPv6 against an IPv4-only database is a ValueError inside maxminddb: absorbed.
        assert resolver.resolve("2001:4860:4860::8888")[1] == Geo(country="US", pop="lhr")
    finally:
        resolver.close()
    # After close, lookups fall back to iptocc alone.
    assert resolver.resolve("81.2.69.160")[1].city is None


def test_header_country_that_disagrees_with_the_database_keeps_only_the_asn(mmdb):
    resolver = GeoResolver(mmdb_path=mmdb, trusted_proxies=["10.0.0.1"], trust_geo_headers=True)
    _, geo = resolver.resolve("10.0.0.1", headers(x_forwarded_for="81.2.69.160", cf_ipcountry="FR"))
    assert geo == Geo(country="FR", asn=20712)
    _, geo = resolver.resolve("10.0.0.1", headers(x_forwarded_for="81.2.69.160", cf_ipcountry="GB"))
    assert geo.city == "London"


# --- properties ---------------------------------------------------------------------------

_HEADER_NAMES = [
    "x-forwarded-for",
    "cf-connecting-ip",
    "x-real-ip",
    "cf-ipcountry",
    "x-edgerun-country",
    "x-edgerun-region",
    "x-edgerun-city",
    "x-vercel-ip-city",
    "cf-ipcity",
    "cf-iplatitude",
    "cf-iplongitude",
    "x-edgerun-timezone",
    "x-edgerun-asn",
    "cloudfront-viewer-asn",
]


@settings(max_examples=300)
@given(
    peer=st.one_of(st.none(), st.text(max_size=50), st.ip_addresses().map(str)),
    values=st.dictionaries(st.sampled_from(_HEADER_NAMES), st.text(max_size=80)),
    dev=st.booleans(),
)
def test_resolve_never_raises_on_arbitrary_headers(peer, values, dev):
    resolver = GeoResolver(
        trusted_proxies=["0.0.0.0/0", "::/0"], trust_geo_headers=True, dev=dev, pop="p"
    )
    ip, geo = resolver.resolve(peer, values.get)
    assert ip is None or parse_ip(ip) is not None
    assert geo.pop == "p"
    assert geo.country is None or (len(geo.country) == 2 and geo.country.isupper())
    assert (geo.latitude is None) == (geo.longitude is None)


@given(st.text(max_size=100))
def test_parse_ip_never_raises(text):
    result = parse_ip(text)
    assert result is None or isinstance(result, ipaddress.IPv4Address | ipaddress.IPv6Address)
