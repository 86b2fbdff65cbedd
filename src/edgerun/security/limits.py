"""The node's own HTTP safety caps: sizes, framing rules and deadlines (DESIGN §8).

The node does not trust its HTTP parser for safety. Whatever server carries the
request (uvicorn + httptools or granian), the same pure checks run on the request
head and the same meter runs on the body, so the two front ends refuse the same
requests with the same typed errors (``edgerun.errors``):

==========================================  ======  ======================
what                                        status  code
==========================================  ======  ======================
request target over ``max_url_bytes``       414     ``uri_too_long``
header names+values over ``max_header_bytes``
or more than ``max_headers`` headers        431     ``headers_too_large``
Content-Length with Transfer-Encoding,
duplicate Content-Length (even equal),
Content-Length not a plain decimal number,
duplicate or non-``chunked`` Transfer-
Encoding, duplicate or malformed Host       400     ``bad_request``
declared or received body over
``max_body_bytes``                          413     ``payload_too_large``
head or body slower than its deadline       408     ``request_timeout``
==========================================  ======  ======================

Everything here is pure (no I/O, no clock): the front ends and the protocol layer own
the timers and decide how to answer. This module imports only ``edgerun.errors``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import AnyStr

from edgerun.errors import HeadersTooLarge, PayloadTooLarge, RequestError, URITooLong

__all__ = [
    "BodyFraming",
    "BodyMeter",
    "HttpLimits",
    "check_framing",
    "check_head",
    "check_header_size",
    "check_url",
]

# Bytes a request head needs on the wire besides the target and the header names and
# values: the method, spaces and version on the request line, ": " and CRLF per header,
# and the blank line. Used only for the coarse raw-bytes backstop (``max_head_bytes``).
_REQUEST_LINE_OVERHEAD = 64
_PER_HEADER_OVERHEAD = 4

# RFC 3986 reg-name / IP-literal characters plus ":" for the port. A Host outside this
# set (a "/", "@", "?", "#", "\\" or whitespace) would change the meaning of the URL the
# node builds from it, so such a request is refused rather than "fixed".
_HOST_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=%:\[\]]*")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Caps the node enforces on every HTTP request, whatever server parses it.

    ``max_url_bytes``: length of the request target (path + query) as sent.
    ``max_header_bytes``: total of the names and values of all header fields.
    ``max_headers``: number of header fields (granian's parser also stops at 100).
    ``max_body_bytes``: declared (Content-Length) or received (chunked) body size.
    ``header_timeout_s``: deadline to receive a complete request head, counted from the
    connection opening or the previous response completing (the slowloris defence; an
    idle keep-alive connection is closed after it too).
    ``body_timeout_s``: deadline to receive the whole body once the head is in.
    Raises ``ValueError`` for a non-positive value.
    """

    max_url_bytes: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_body_bytes: int = 16 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_url_bytes", "max_header_bytes", "max_headers", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"HttpLimits.{name} must be a positive integer, got {value!r}")
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"HttpLimits.{name} must be a positive number, got {value!r}")

    @property
    def max_head_bytes(self) -> int:
        """Upper bound of a whole request head on the wire that can pass the caps.

        A coarse backstop for code that sees raw bytes before the parser reports
        fields (so a single endless header line is cut off, not buffered).
        """
        return (
            self.max_url_bytes
            + self.max_header_bytes
            + self.max_headers * _PER_HEADER_OVERHEAD
            + _REQUEST_LINE_OVERHEAD
        )


@dataclass(frozen=True, slots=True)
class BodyFraming:
    """How a checked request head says its body is framed.

    ``content_length`` is the declared length (None when absent); ``chunked`` is true
    for ``Transfer-Encoding: chunked``. ``has_body`` is false for a request that cannot
    carry a body (no Content-Length or Content-Length 0, not chunked).
    """

    content_length: int | None
    chunked: bool

    @property
    def has_body(self) -> bool:
        """True when body bytes are to be read after the head."""
        return self.chunked or bool(self.content_length)


_NO_BODY = BodyFraming(None, False)


def check_url(target_bytes: int, limits: HttpLimits) -> None:
    """Raise ``URITooLong`` (414) if a request target of ``target_bytes`` is over the cap."""
    if target_bytes > limits.max_url_bytes:
        raise URITooLong(
            f"the request target is {target_bytes} bytes or more; this node accepts at most "
            f"{limits.max_url_bytes} bytes: shorten the URL or send the data in the body"
        )


def check_header_size(total_bytes: int, count: int, limits: HttpLimits) -> None:
    """Raise ``HeadersTooLarge`` (431) if header bytes or the header count are over the caps.

    ``total_bytes`` is the sum of the lengths of all names and values seen so far, so
    a caller may check incrementally while the head arrives.
    """
    if count > limits.max_headers:
        raise HeadersTooLarge(
            f"the request has {count} header fields or more; this node accepts at most "
            f"{limits.max_headers}"
        )
    if total_bytes > limits.max_header_bytes:
        raise HeadersTooLarge(
            f"the request headers are {total_bytes} bytes or more (names + values); this node "
            f"accepts at most {limits.max_header_bytes} bytes: send fewer or smaller headers"
        )


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def check_head(
    method: str,
    target_bytes: int,
    headers: Iterable[tuple[AnyStr, AnyStr]],
    limits: HttpLimits,
    *,
    require_host: bool = False,
) -> BodyFraming:
    """Check a request head against the caps and framing rules; return its body framing.

    ``target_bytes`` is the length of the request target as sent (path + ``?`` + query).
    ``headers`` are ``(name, value)`` pairs, bytes (ASGI) or str (RSGI), in order, with
    repeated names kept. ``method`` is accepted for symmetry with the parsers; every
    method is treated alike (a GET may carry a body).

    Raises ``URITooLong`` (414), ``HeadersTooLarge`` (431), ``PayloadTooLarge`` (413)
    when the declared Content-Length is over ``max_body_bytes`` (before any body is
    read), or ``RequestError`` (400) for: Content-Length together with
    Transfer-Encoding, more than one Content-Length (even with equal values), a
    Content-Length that is not a plain decimal number, more than one
    Transfer-Encoding or one that is not exactly ``chunked``, more than one Host, or
    a Host with characters that cannot appear in a URL authority; and, with
    ``require_host`` (an HTTP/1.1 request; HTTP/1.0 has no such rule and HTTP/2 has
    ``:authority``), for a missing Host.
    """
    del method
    check_url(target_bytes, limits)
    count = 0
    total = 0
    lengths: list[str] = []
    encodings: list[str] = []
    hosts: list[str] = []
    for raw_name, raw_value in headers:
        count += 1
        total += len(raw_name) + len(raw_value)
        # Only three names matter here (Host, Content-Length, Transfer-Encoding: 4, 14
        # and 17 characters); filter on length before decoding anything.
        if len(raw_name) not in (4, 14, 17):
            continue
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
        if name == "host":
            hosts.append(_text(raw_value))
        elif name == "content-length":
            lengths.append(_text(raw_value))
        elif name == "transfer-encoding":
            encodings.append(_text(raw_value))
    check_header_size(total, count, limits)
    return check_framing(hosts, lengths, encodings, limits, require_host=require_host)


def check_framing(
    hosts: Sequence[str],
    lengths: Sequence[str],
    encodings: Sequence[str],
    limits: HttpLimits,
    *,
    require_host: bool = False,
) -> BodyFraming:
    """The Host and framing rules of ``check_head``, on values a parser already collected.

    ``hosts``, ``lengths`` and ``encodings`` are every value of Host, Content-Length and
    Transfer-Encoding, in order. For a caller that has enforced ``check_url`` and
    ``check_header_size`` while the head arrived (``node.protocol``), so each head is
    walked once. Raises as ``check_head`` does.
    """
    if require_host and not hosts:
        # RFC 9112 section 3.2: an HTTP/1.1 request without Host must get a 400.
        raise RequestError("the HTTP/1.1 request has no Host header; send exactly one")
    if len(hosts) > 1:
        raise RequestError("the request has more than one Host header; send exactly one")
    if hosts and _HOST_RE.fullmatch(hosts[0]) is None:
        raise RequestError(f"invalid Host header {hosts[0][:100]!r}")
    if lengths and encodings:
        raise RequestError(
            "the request has both Content-Length and Transfer-Encoding; send only one of them"
        )
    if len(encodings) > 1:
        raise RequestError("the request has more than one Transfer-Encoding header")
    if encodings:
        if encodings[0].strip().lower() != "chunked":
            raise RequestError(
                f"unsupported Transfer-Encoding {encodings[0][:100]!r}: only 'chunked' is accepted"
            )
        return BodyFraming(None, True)
    if len(lengths) > 1:
        raise RequestError("the request has more than one Content-Length header; send one")
    if not lengths:
        return _NO_BODY
    text = lengths[0].strip()
    # RFC 9110: 1*DIGIT. isdigit() alone would accept other scripts' digits and "²".
    if not text or not text.isascii() or not text.isdigit():
        raise RequestError(f"invalid Content-Length {lengths[0][:100]!r}: expected digits only")
    declared = int(text)
    if declared > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"the request body is {declared} bytes; this node accepts at most "
            f"{limits.max_body_bytes} bytes"
        )
    return BodyFraming(declared, False)


class BodyMeter:
    """Counts body bytes as they arrive and stops the request as soon as it is over the cap.

    ``feed(n)`` adds ``n`` bytes and raises ``PayloadTooLarge`` (413) the moment the total
    passes ``limits.max_body_bytes``, so a chunked body that never ends is cut off at the
    cap, not buffered. ``received`` is the running total.
    """

    __slots__ = ("limit", "received")

    def __init__(self, limits: HttpLimits) -> None:
        self.limit = limits.max_body_bytes
        self.received = 0

    def feed(self, n: int) -> None:
        """Account for ``n`` more body bytes; raise ``PayloadTooLarge`` past the cap."""
        self.received += n
        if self.received > self.limit:
            raise PayloadTooLarge(
                f"the request body is more than {self.limit} bytes; this node accepts at most "
                f"{self.limit} bytes"
            )
