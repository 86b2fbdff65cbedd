"""Geo resolution: the client's real address and where it is.

:class:`GeoResolver` turns a connection's peer address and the request headers into
``(client_ip, Geo)``. Headers are only believed when someone we trust wrote them:

* **Client address.** The peer address, unless the peer is a configured trusted proxy;
  then ``X-Forwarded-For`` is walked from the right, skipping trusted hops, and the
  first untrusted hop is the client (if every hop is trusted, the left-most one is).
  Without ``X-Forwarded-For``, a trusted proxy's ``CF-Connecting-IP`` or ``X-Real-IP``
  is used. IPv4-mapped IPv6 peers (``::ffff:1.2.3.4``) are reported as IPv4.
* **Geo headers** (``x-edgerun-*``, Cloudflare ``cf-ipcountry``/``cf-ipcity``/...,
  Vercel ``x-vercel-ip-*``, CloudFront ``cloudfront-viewer-*``, App Engine
  ``x-appengine-*``) are honoured when the peer is a trusted proxy *and*
  ``trust_geo_headers`` is set (a proxy trusted for ``X-Forwarded-For`` does not
  necessarily strip geo headers a client sends), or in ``dev`` from anyone.
  ``x-edgerun-city`` and ``x-edgerun-region`` are percent-encoded UTF-8, as Vercel's
  city header is, so non-ASCII names survive HTTP headers.
* **Otherwise** the country comes from the offline ``iptocc`` database; a MaxMind-format
  ``.mmdb`` (``mmdb_path``, needs ``edgerun[geo]``) adds region (ISO 3166-2 subdivision
  code, e.g. ``"TX"``), city, latitude/longitude, timezone and ASN, and its country
  wins over ``iptocc``'s. Private, loopback and other non-global addresses get no
  country from ``iptocc``.

Invalid header values are ignored field by field, never raised: a country must be two
ASCII letters (upper-cased; ``XX``/``ZZ``, which proxies send for "unknown", and
values like Cloudflare's ``T1`` for Tor give ``None``).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias
from urllib.parse import unquote

import iptocc

from edgerun.http import Geo

__all__ = ["GeoResolver", "HeaderGetter", "normalize_country", "parse_ip"]

HeaderGetter: TypeAlias = Callable[[str], "str | None"]
"""Look up a request header by lowercase name (case-insensitively); ``None`` if absent.
For a repeated header, return the values joined with ``", "`` (``X-Forwarded-For``)."""

_Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Per-process caches of per-address work (parsing costs ~2 us, more than the lookup).
_CACHE_SIZE: Final = 8192
# Longer than any "[ipv6%zone]:port" text: anything longer is not an address, and
# keeping it out of the cache stops huge headers from pinning memory.
_MAX_ADDRESS_LEN: Final = 64
_MAX_TEXT_LEN: Final = 256
_UNKNOWN_COUNTRIES: Final = frozenset({"XX", "ZZ"})
_TIMEZONE_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,3}$")

# Most specific source first: edgerun's own gateway, then the big CDNs.
_COUNTRY_HEADERS: Final = (
    "x-edgerun-country",
    "cf-ipcountry",
    "x-vercel-ip-country",
    "cloudfront-viewer-country",
    "x-appengine-country",
)
_REGION_HEADERS: Final = (
    "x-edgerun-region",
    "cf-region-code",
    "x-vercel-ip-country-region",
    "cloudfront-viewer-country-region",
    "x-appengine-region",
)
_CITY_HEADERS: Final = (
    "x-edgerun-city",
    "cf-ipcity",
    "x-vercel-ip-city",
    "cloudfront-viewer-city",
    "x-appengine-city",
)
_LATITUDE_HEADERS: Final = (
    "x-edgerun-latitude",
    "cf-iplatitude",
    "x-vercel-ip-latitude",
    "cloudfront-viewer-latitude",
)
_LONGITUDE_HEADERS: Final = (
    "x-edgerun-longitude",
    "cf-iplongitude",
    "x-vercel-ip-longitude",
    "cloudfront-viewer-longitude",
)
_TIMEZONE_HEADERS: Final = (
    "x-edgerun-timezone",
    "cf-timezone",
    "x-vercel-ip-timezone",
    "cloudfront-viewer-time-zone",
)
_ASN_HEADERS: Final = ("x-edgerun-asn", "cloudfront-viewer-asn")
_PERCENT_ENCODED: Final = frozenset({"x-edgerun-city", "x-edgerun-region", "x-vercel-ip-city"})
_CLIENT_IP_HEADERS: Final = ("cf-connecting-ip", "x-real-ip")


def _no_headers(name: str) -> str | None:
    return None


def normalize_country(value: object) -> str | None:
    """Return an ISO 3166-1 alpha-2 code upper-cased, or ``None`` if ``value`` is not one.

    Accepts two ASCII letters in any case (surrounding spaces ignored); ``XX`` and ``ZZ``
    ("unknown" for several proxies) and anything else give ``None``. Never raises.
    """
    if not isinstance(value, str):
        return None
    v = value.strip()
    if len(v) != 2 or not v.isascii() or not v.isalpha():
        return None
    v = v.upper()
    return None if v in _UNKNOWN_COUNTRIES else v


def parse_ip(text: str | None) -> _Address | None:
    """Parse an address as found in a peer or a proxy header; ``None`` if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``::1``, ``[::1]`` and ``[::1]:5678`` (some
    proxies append ports), with surrounding spaces or quotes. IPv4-mapped IPv6 gives the
    IPv4 address. Results are cached; never raises.
    """
    if not text or len(text) > _MAX_ADDRESS_LEN:
        return None
    return _parse_ip_cached(text)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_ip_cached(text: str) -> _Address | None:
    s = text.strip().strip('"')
    if s.startswith("["):
        end = s.find("]")
        if end == -1:
            return None
        s = s[1:end]
    elif s.count(":") == 1:
        s = s.partition(":")[0]
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _parse_networks(entries: Sequence[str]) -> tuple[_Network, ...]:
    if isinstance(entries, str):
        # A bare string would be iterated character by character: a silent misconfig.
        entries = [entries]
    nets: list[_Network] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"trusted proxy {entry!r} is not an IP address or CIDR range "
                "(e.g. '10.0.0.1' or '10.0.0.0/8')"
            ) from None
    return tuple(nets)


def _fix_mojibake(value: str) -> str:
    # Servers decode header bytes as latin-1; a proxy that sent raw UTF-8 ("Zürich")
    # arrives as "ZÃ¼rich". Re-decoding is a no-op for ASCII and for genuine latin-1.
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _clean_text(value: str, *, percent_encoded: bool) -> str | None:
    v = value.strip()
    if not v or len(v) > _MAX_TEXT_LEN:
        return None
    v = _fix_mojibake(v)
    if percent_encoded and "%" in v:
        try:
            v = unquote(v, errors="strict").strip()
        except UnicodeDecodeError:
            return None
    if not v or any(c < " " or c == "\x7f" for c in v):
        return None
    return v


def _parse_coordinate(value: str, limit: float) -> float | None:
    try:
        f = float(value.strip())
    except ValueError:
        return None
    return f if math.isfinite(f) and -limit <= f <= limit else None


def _parse_asn(value: str) -> int | None:
    v = value.strip()
    if v[:2].upper() == "AS":
        v = v[2:]
    if not v.isascii() or not v.isdigit() or len(v) > 10:
        return None
    n = int(v)
    return n if 0 < n < 2**32 else None


def _parse_timezone(value: str) -> str | None:
    v = value.strip()
    return v if len(v) <= 64 and _TIMEZONE_RE.match(v) else None


def _dig(record: object, *keys: str | int) -> object:
    """Follow keys/indices through nested dicts/lists; ``None`` if any step is missing."""
    cur = record
    for key in keys:
        if isinstance(key, int) and isinstance(cur, list) and -len(cur) <= key < len(cur):
            cur = cur[key]
        elif isinstance(key, str) and isinstance(cur, dict):
            cur = cur.get(key)
        else:
            return None
    return cur


def _geo_from_record(record: object) -> Geo:
    """Read the fields edgerun uses from a MaxMind City/Country/ASN-style record."""
    country = normalize_country(_dig(record, "country", "iso_code")) or normalize_country(
        _dig(record, "registered_country", "iso_code")
    )
    region = _dig(record, "subdivisions", 0, "iso_code")
    names = _dig(record, "city", "names")
    city = _dig(names, "en")
    if city is None and isinstance(names, dict) and names:
        city = next(iter(names.values()))
    lat = _dig(record, "location", "latitude")
    lon = _dig(record, "location", "longitude")
    if not (isinstance(lat, float | int) and isinstance(lon, float | int)):
        lat = lon = None
    tz = _dig(record, "location", "time_zone")
    asn = _dig(record, "autonomous_system_number")
    return Geo(
        country=country,
        region=region if isinstance(region, str) and region else None,
        city=city if isinstance(city, str) and city else None,
        latitude=float(lat) if lat is not None else None,
        longitude=float(lon) if lon is not None else None,
        timezone=tz if isinstance(tz, str) and tz else None,
        asn=asn if isinstance(asn, int) and not isinstance(asn, bool) and asn > 0 else None,
    )


def _iptocc_country(ip: _Address) -> str | None:
    # Non-global addresses (private, loopback, CGNAT, documentation) have no country.
    if not ip.is_global:
        return None
    try:
        return normalize_country(iptocc.country_code(str(ip)))
    except (TypeError, ValueError):
        return None


class GeoResolver:
    """Resolve a request's client address and :class:`~edgerun.http.Geo` (see module doc).

    ``trusted_proxies``: IP addresses or CIDR ranges whose forwarding headers are
    believed. ``trust_geo_headers``: also believe their geo headers (requires
    ``trusted_proxies`` unless ``dev``). ``dev``: believe geo headers from anyone and
    fall back to ``dev_country``/``dev_region`` (for ``edgerun dev`` on localhost).
    ``pop``: the serving location stamped on every Geo. ``mmdb_path``: a MaxMind-format
    database for city-level data. Raises ``ValueError`` at construction for an invalid
    proxy entry, an invalid ``dev_country``, a missing ``maxminddb`` package or an
    unreadable database; :meth:`resolve` never raises. Safe to share between threads.
    """

    def __init__(
        self,
        *,
        trusted_proxies: Sequence[str] = (),
        trust_geo_headers: bool = False,
        dev: bool = False,
        dev_country: str | None = None,
        dev_region: str | None = None,
        pop: str | None = None,
        mmdb_path: str | None = None,
    ) -> None:
        self._trusted = _parse_networks(trusted_proxies)
        if trust_geo_headers and not self._trusted and not dev:
            raise ValueError(
                "trust_geo_headers has no effect without trusted_proxies: list the proxies "
                "that set geo headers (e.g. trusted_proxies=['10.0.0.0/8'])"
            )
        self._trust_geo_headers = trust_geo_headers
        self._dev = dev
        self._dev_country = None
        if dev_country is not None:
            self._dev_country = normalize_country(dev_country)
            if self._dev_country is None:
                raise ValueError(
                    f"dev_country must be a two-letter country code like 'US' (got {dev_country!r})"
                )
        self._dev_region = dev_region or None
        self._pop = pop or None
        self._reader: Any = None
        if mmdb_path is not None:
            self._reader = _open_mmdb(mmdb_path)
        # Bound per instance: results depend on this resolver's proxies and database.
        self._empty = Geo(pop=self._pop)
        self._is_trusted = functools.lru_cache(maxsize=_CACHE_SIZE)(self._is_trusted_uncached)
        self._peer = functools.lru_cache(maxsize=_CACHE_SIZE)(self._peer_uncached)
        self._lookup = functools.lru_cache(maxsize=_CACHE_SIZE)(self._lookup_uncached)
        # Without trusted proxies and outside dev, no header can change the answer: it
        # depends on the peer address alone, so whole answers are cached by its text.
        self._by_peer: dict[str, tuple[str | None, Geo]] | None = (
            None if self._trusted or dev else {}
        )

    @property
    def pop(self) -> str | None:
        """The serving edge location stamped on every Geo this resolver returns."""
        return self._pop

    def close(self) -> None:
        """Release the ``.mmdb`` file, if one was opened; later lookups use ``iptocc`` only."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        self._lookup.cache_clear()
        if self._by_peer is not None:
            self._by_peer.clear()

    @property
    def per_peer(self) -> bool:
        """True when the answer depends on the peer address alone (no trusted proxies,
        not dev): then it is the same for every request on a connection."""
        return self._by_peer is not None

    def is_trusted(self, ip: str | None) -> bool:
        """Tell whether ``ip`` is one of the configured trusted proxies."""
        addr = parse_ip(ip)
        return addr is not None and self._is_trusted(addr)

    def resolve(
        self,
        peer_ip: str | None,
        get_header: HeaderGetter = _no_headers,
        get_all: Callable[[str], Sequence[str]] | None = None,
    ) -> tuple[str | None, Geo]:
        """Return ``(client_ip, geo)`` for a request from ``peer_ip`` with these headers.

        ``peer_ip`` is the socket peer address (``None`` for e.g. a Unix socket);
        ``get_header(name)`` is called with lowercase names. Pass ``get_all`` (every
        value of a header, in order, e.g. ``headers.getlist``) when ``get_header``
        returns only the first value: some proxies (HAProxy) add their own
        ``X-Forwarded-For`` line after the client's, and the first line is then the
        client's forgery. ``client_ip`` is the normalised address text, or ``None`` when
        no address is known. Never raises on any header or peer value.
        """
        by_peer = self._by_peer
        if by_peer is not None and peer_ip:
            found = by_peer.get(peer_ip)
            if found is not None:
                return found
            found = self._resolve(peer_ip, get_header, get_all)
            if len(peer_ip) <= _MAX_ADDRESS_LEN:
                if len(by_peer) >= _CACHE_SIZE:
                    by_peer.clear()
                by_peer[peer_ip] = found
            return found
        return self._resolve(peer_ip, get_header, get_all)

    def _resolve(
        self,
        peer_ip: str | None,
        get_header: HeaderGetter,
        get_all: Callable[[str], Sequence[str]] | None,
    ) -> tuple[str | None, Geo]:
        info = self._peer(peer_ip) if peer_ip and len(peer_ip) <= _MAX_ADDRESS_LEN else None
        if info is None:
            peer, client_text, trusted = None, None, False
        else:
            peer, client_text, trusted = info
        client = peer
        if trusted:
            client = self._client_behind(peer, get_header, get_all)
            if client is not peer:
                client_text = None if client is None else str(client)
        if not (self._dev or (trusted and self._trust_geo_headers)):
            # The common case, answered from two caches: untrusted peer, no headers.
            return client_text, self._empty if client is None else self._lookup(client)
        dev_country = self._dev_country if self._dev else None
        dev_region = self._dev_region if self._dev else None
        geo = _geo_from_headers(get_header, dev_country, dev_region)
        if client is not None and (geo.country is None or self._reader is not None):
            return client_text, _merge(geo, self._lookup(client))
        return client_text, _merge(geo, self._empty)

    def _peer_uncached(self, text: str) -> tuple[_Address, str, bool] | None:
        ip = parse_ip(text)
        return None if ip is None else (ip, str(ip), self._is_trusted(ip))

    def _is_trusted_uncached(self, ip: _Address) -> bool:
        return any(ip in net for net in self._trusted)

    def _client_behind(
        self,
        peer: _Address | None,
        get_header: HeaderGetter,
        get_all: Callable[[str], Sequence[str]] | None,
    ) -> _Address | None:
        if get_all is not None:
            forwarded: str | None = ",".join(
                v for v in get_all("x-forwarded-for") if isinstance(v, str)
            )
        else:
            forwarded = _header(get_header, "x-forwarded-for")
        if forwarded:
            nearest = peer
            for hop in reversed(forwarded.split(",")):
                if not hop.strip():
                    continue  # "a, , b" from sloppily joined headers
                ip = parse_ip(hop)
                if ip is None:
                    # An unreadable hop was not written by a proxy we trust; stop at the
                    # last address we could verify.
                    return nearest
                if not self._is_trusted(ip):
                    return ip
                nearest = ip
            return nearest
        for name in _CLIENT_IP_HEADERS:
            ip = parse_ip(_header(get_header, name))
            if ip is not None:
                return ip
        return peer

    def _lookup_uncached(self, ip: _Address) -> Geo:
        """Database geo for ``ip`` (mmdb, then iptocc for the country), stamped with pop."""
        found = self._empty
        if self._reader is not None:
            try:
                record = self._reader.get(ip)
            except Exception:
                # An IPv6 address against an IPv4-only database raises ValueError, a
                # corrupt file raises InvalidDatabaseError: neither may fail a request.
                record = None
            if record is not None:
                found = _merge(_geo_from_record(record), self._empty)
        if found.country is None:
            country = _iptocc_country(ip)
            if country is not None:
                found = _merge(Geo(country=country), found)
        return found


def _open_mmdb(path: str) -> Any:
    try:
        import maxminddb
    except ImportError:
        raise ValueError(
            "mmdb_path needs the maxminddb package: pip install 'edgerun[geo]'"
        ) from None
    try:
        return maxminddb.open_database(path)
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise ValueError(f"cannot open the geo database {path!r}: {exc}") from None


def _header(get_header: HeaderGetter, name: str) -> str | None:
    value = get_header(name)
    return value if isinstance(value, str) else None


def _first(get_header: HeaderGetter, names: tuple[str, ...], parse: Callable[[str], Any]) -> Any:
    for name in names:
        raw = _header(get_header, name)
        if raw is not None:
            value = parse(raw)
            if value is not None:
                return value
    return None


def _geo_from_headers(
    get_header: HeaderGetter, default_country: str | None, default_region: str | None
) -> Geo:
    """Geo fields from trusted headers (pop unset); the defaults fill country and region."""

    def text(name: str) -> str | None:
        raw = _header(get_header, name)
        return None if raw is None else _clean_text(raw, percent_encoded=name in _PERCENT_ENCODED)

    def first_text(names: tuple[str, ...]) -> str | None:
        for name in names:
            value = text(name)
            if value is not None:
                return value
        return None

    lat = _first(get_header, _LATITUDE_HEADERS, lambda v: _parse_coordinate(v, 90.0))
    lon = _first(get_header, _LONGITUDE_HEADERS, lambda v: _parse_coordinate(v, 180.0))
    if lat is None or lon is None:
        lat = lon = None  # half a coordinate is worse than none
    return Geo(
        country=_first(get_header, _COUNTRY_HEADERS, normalize_country) or default_country,
        region=first_text(_REGION_HEADERS) or default_region,
        city=first_text(_CITY_HEADERS),
        latitude=lat,
        longitude=lon,
        timezone=_first(get_header, _TIMEZONE_HEADERS, _parse_timezone),
        asn=_first(get_header, _ASN_HEADERS, _parse_asn),
    )


def _merge(primary: Geo, fallback: Geo) -> Geo:
    """Fill ``primary``'s missing fields (and pop) from ``fallback``.

    When both name a country and they differ, only the ASN is taken from ``fallback``:
    its city and coordinates describe another country.
    """
    pop = primary.pop or fallback.pop
    asn = primary.asn if primary.asn is not None else fallback.asn
    if (
        primary.country is not None
        and fallback.country is not None
        and primary.country != fallback.country
    ):
        fallback = Geo()
    located = primary.latitude is not None
    return Geo(
        country=primary.country or fallback.country,
        region=primary.region or fallback.region,
        city=primary.city or fallback.city,
        latitude=primary.latitude if located else fallback.latitude,
        longitude=primary.longitude if located else fallback.longitude,
        timezone=primary.timezone or fallback.timezone,
        asn=asn,
        pop=pop,
    )
