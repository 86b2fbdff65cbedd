"""The HTTP objects user code handles: ``Request``, ``Response``, ``Headers``.

Shapes follow DESIGN §1 (and feel like Workers' and httpx's): headers are a
case-insensitive multi-dict, the query string is a multi-dict, bodies are bytes or an
async iterator of chunks in both directions, cookies are read from ``request.cookies``
and written with ``response.set_cookie``.

These objects are independent of any server: the node's front ends build a
``Request`` from their protocol (ASGI or RSGI) and write a ``Response`` back.
"""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal, TypeAlias
from urllib.parse import SplitResult, parse_qsl, urlsplit

import msgspec

from edgerun.errors import MalformedJSON

__all__ = [
    "Geo",
    "Headers",
    "QueryParams",
    "Request",
    "Response",
    "Secret",
]

HeadersInit: TypeAlias = "Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None"
BodyInit: TypeAlias = "str | bytes | bytearray | memoryview | AsyncIterable[bytes | str] | None"

_FORBIDDEN_HEADER_CHARS = frozenset("\r\n\x00")
# RFC 9110 token characters, for header and cookie names.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TEXT_PLAIN = ("content-type", "text/plain; charset=utf-8")


@dataclass(frozen=True, slots=True)
class Geo:
    """Where a request comes from, as far as the edge knows (all fields optional)."""

    country: str | None = None
    region: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    timezone: str | None = None
    asn: int | None = None
    pop: str | None = None


_NO_GEO = Geo()


class Secret(str):
    """A string whose ``repr`` hides its value, so secrets do not leak into logs.

    It is a real ``str`` (compare it, format it into a header), only ``repr()`` — what
    loggers, tracebacks and debuggers show — is masked.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('**********')"


def _check_header(name: str, value: str) -> None:
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"invalid header name {name!r}: use letters, digits and -_.")
    if not _FORBIDDEN_HEADER_CHARS.isdisjoint(value):
        raise ValueError(f"invalid value for header {name!r}: CR, LF and NUL are not allowed")


class Headers:
    """Case-insensitive, multi-valued HTTP headers that keep their order.

    ``headers["X"]`` and ``get`` return the first value; ``getlist`` returns all of
    them. Names are stored lowercased (as HTTP/2 and ASGI do). Setting a value checks
    for CR/LF/NUL so a handler cannot inject headers.
    """

    # ``_store`` holds the decoded pairs; a Headers made by ``_lazy`` starts with only
    # ``_raw`` (the server's byte pairs) and decodes on first use, so a request whose
    # headers are only looked up by name, or passed on as bytes (ASGI apps), never pays
    # for decoding and re-encoding all of them.
    __slots__ = ("_lower", "_raw", "_store")

    def __init__(self, init: HeadersInit = None) -> None:
        self._raw: list[tuple[bytes, bytes]] | None = None
        self._lower = True
        self._store: list[tuple[str, str]] = []
        if init is None:
            return
        if isinstance(init, Headers):
            if init._raw is not None:
                self._raw = list(init._raw)
                self._lower = init._lower
            else:
                self._store = list(init._store)
            return
        pairs: Iterable[tuple[str, str]] = init.items() if isinstance(init, Mapping) else init
        for name, value in pairs:
            self.add(name, value)

    @property
    def _items(self) -> list[tuple[str, str]]:
        raw = self._raw
        if raw is not None:
            self._raw = None
            if self._lower:
                self._store = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
            else:
                self._store = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
        return self._store

    @_items.setter
    def _items(self, items: list[tuple[str, str]]) -> None:
        self._raw = None
        self._store = items

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Build from ASGI-style ``(name, value)`` byte pairs without re-validating them."""
        h = cls.__new__(cls)
        h._raw = None
        h._lower = True
        h._store = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
        return h

    @classmethod
    def _trusted(cls, items: list[tuple[str, str]]) -> Headers:
        """Take over ``(name, value)`` pairs whose names are already lower case (servers)."""
        h = cls.__new__(cls)
        h._raw = None
        h._lower = True
        h._store = items
        return h

    @classmethod
    def _lazy(cls, raw: list[tuple[bytes, bytes]], *, lowercase: bool) -> Headers:
        """Like ``from_raw``, decoding only when needed; ``raw`` is taken over, not copied.

        ``lowercase`` says the names are already lower case (uvicorn's parser lowercases
        them), which lets lookups compare bytes without decoding anything.
        """
        h = cls.__new__(cls)
        h._raw = raw
        h._lower = lowercase
        h._store = []
        return h

    def _raw_key(self, name: str) -> bytes | None:
        """``name`` as the bytes to look for in ``_raw`` (None: no raw header can match)."""
        try:
            return name.lower().encode("latin-1")
        except UnicodeEncodeError:
            return None

    def _put(self, lname: str, value: str) -> None:
        """``set`` for callers that pass a lowercase token name and a CR/LF/NUL-free value.

        Skips the checks ``set`` makes; the node uses it for its own headers.
        """
        raw = self._raw
        if raw is not None and self._lower:
            key = lname.encode("latin-1")
            if not any(k == key for k, _ in raw):
                raw.append((key, value.encode("latin-1")))
                return
        items = self._items
        for k, _ in items:
            if k == lname:
                self.set(lname, value)
                return
        items.append((lname, value))

    def raw(self) -> list[tuple[bytes, bytes]]:
        """The headers as ASGI-style lowercase ``(name, value)`` byte pairs."""
        raw = self._raw
        if raw is not None:
            return list(raw) if self._lower else [(k.lower(), v) for k, v in raw]
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self._store]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        raw = self._raw
        if raw is not None and self._lower:
            key = self._raw_key(name)
            for raw_name, raw_value in raw:
                if raw_name == key:
                    return raw_value.decode("latin-1")
            return default
        lname = name.lower()
        for k, value in self._items:
            if k == lname:
                return value
        return default

    def getlist(self, name: str) -> list[str]:
        """Every value of ``name``, in order (empty if absent)."""
        raw = self._raw
        if raw is not None and self._lower:
            key = self._raw_key(name)
            return [v.decode("latin-1") for k, v in raw if k == key]
        name = name.lower()
        return [v for k, v in self._items if k == name]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.set(name, value)

    def __delitem__(self, name: str) -> None:
        name = name.lower()
        self._items = [(k, v) for k, v in self._items if k != name]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        raw = self._raw
        if raw is not None and self._lower:
            key = self._raw_key(name)
            return any(k == key for k, _ in raw)
        name = name.lower()
        return any(k == name for k, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        raw = self._raw
        return len(raw) if raw is not None else len(self._store)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return sorted(self._items) == sorted(other._items)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = [
            (k, "***" if k in ("authorization", "cookie", "set-cookie") else v)
            for k, v in self._items
        ]
        return f"Headers({shown!r})"

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` with ``value``."""
        value = str(value)
        _check_header(name, value)
        lname = name.lower()
        for i, (k, _) in enumerate(self._items):
            if k == lname:
                self._items[i] = (lname, value)
                self._items[i + 1 :] = [(k2, v2) for k2, v2 in self._items[i + 1 :] if k2 != lname]
                return
        self._items.append((lname, value))

    def add(self, name: str, value: str) -> None:
        """Append a value for ``name``, keeping existing ones (e.g. ``Set-Cookie``)."""
        value = str(value)
        _check_header(name, value)
        self._items.append((name.lower(), value))

    append = add

    def setdefault(self, name: str, value: str) -> str:
        """Set ``name`` to ``value`` unless present; return the (first) value."""
        current = self.get(name)
        if current is None:
            self.add(name, value)
            return value
        return current

    def pop(self, name: str, default: str | None = None) -> str | None:
        """Remove ``name`` and return its first value (or ``default``)."""
        value = self.get(name, default)
        del self[name]
        return value

    def keys(self) -> list[str]:
        """The distinct header names, lowercased, in first-seen order."""
        return list(dict.fromkeys(k for k, _ in self._items))

    def values(self) -> list[str]:
        """Every value, in order."""
        return [v for _, v in self._items]

    def items(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair, in order; a name repeats for multi-valued headers."""
        return list(self._items)

    def copy(self) -> Headers:
        """An independent copy."""
        return Headers(self)


class QueryParams(Mapping[str, str]):
    """The query string as a read-only multi-dict: ``q["a"]`` is the first value.

    ``getlist("a")`` returns every value. Blank values are kept (``?a=`` gives ``""``).
    """

    __slots__ = ("_first", "_items")

    def __init__(self, query: str | Iterable[tuple[str, str]] = "") -> None:
        if isinstance(query, str):
            self._items = parse_qsl(query, keep_blank_values=True)
        else:
            self._items = list(query)
        self._first: dict[str, str] = {}
        for k, v in self._items:
            self._first.setdefault(k, v)

    def __getitem__(self, key: str) -> str:
        return self._first[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def getlist(self, key: str) -> list[str]:
        """Every value of ``key``, in order."""
        return [v for k, v in self._items if k == key]

    def multi_items(self) -> list[tuple[str, str]]:
        """Every ``(key, value)`` pair, in order."""
        return list(self._items)

    def __repr__(self) -> str:
        return f"QueryParams({self._items!r})"


def parse_cookie_header(value: str) -> dict[str, str]:
    """Parse a ``Cookie`` header leniently: bad pairs are skipped, never an error."""
    cookies: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, val = part.partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        cookies.setdefault(name, val)
    return cookies


class _Body:
    """A one-shot body: fixed bytes or an async chunk iterator, read at most once."""

    __slots__ = ("_data", "_stream", "_used", "streamed_bytes")

    def __init__(self, body: BodyInit) -> None:
        self._data: bytes | None
        self._stream: AsyncIterable[bytes | str] | None = None
        self._used = False
        # Bytes that came through a streamed body, for usage metering.
        self.streamed_bytes = 0
        if body is None:
            self._data = b""
        elif isinstance(body, bytes):
            self._data = body
        elif isinstance(body, str):
            self._data = body.encode()
        elif isinstance(body, bytearray | memoryview):
            self._data = bytes(body)
        elif isinstance(body, AsyncIterable):
            self._data = None
            self._stream = body
        else:
            raise TypeError(
                "a body must be str, bytes or an async iterator of bytes, "
                f"not {type(body).__name__}"
            )

    @property
    def fixed(self) -> bytes | None:
        return self._data

    @property
    def size(self) -> int:
        """Bytes of the body seen so far: all of a fixed body, what streamed of a stream."""
        return self.streamed_bytes if self._data is None else len(self._data)

    async def read(self) -> bytes:
        if self._data is not None:
            return self._data
        chunks = [c async for c in self.iter()]
        self._data = b"".join(chunks)
        self._stream = None
        return self._data

    async def iter(self) -> AsyncIterator[bytes]:
        if self._data is not None:
            if self._data:
                yield self._data
            return
        if self._used or self._stream is None:
            raise RuntimeError("the body stream has already been read")
        self._used = True
        async for chunk in self._stream:
            if isinstance(chunk, str):
                chunk = chunk.encode()
            if chunk:
                self.streamed_bytes += len(chunk)
                yield bytes(chunk)


def _charset(content_type: str | None) -> str:
    if content_type:
        for param in content_type.split(";")[1:]:
            key, _, val = param.strip().partition("=")
            if key.lower() == "charset" and val:
                return val.strip('"')
    return "utf-8"


class _BodyMethods:
    """Reading a one-shot body, shared by ``Request`` and ``Response``."""

    __slots__ = ()
    _body: _Body
    headers: Headers

    @property
    def body_used(self) -> bool:
        """True once a streamed body has been consumed."""
        return self._body._used

    async def body(self) -> bytes:
        """The whole body as bytes (a streamed body is read to the end and kept)."""
        return await self._body.read()

    async def text(self) -> str:
        """The body decoded with the Content-Type charset (UTF-8 by default)."""
        data = await self._body.read()
        return data.decode(_charset(self.headers.get("content-type")), errors="replace")


class Request(_BodyMethods):
    """An incoming (or constructed) HTTP request.

    ``Request(method, url, headers=..., body=...)``; ``url`` is the full URL. ``body``
    is bytes/str or an async iterator of chunks. ``await body()`` / ``text()`` /
    ``json()`` read it (once, then cached); ``stream()`` yields the chunks and can be
    used once. ``ip`` and ``geo`` are set by the node (through trusted proxies only).
    """

    __slots__ = ("_body", "_cookies", "_query", "_split", "geo", "headers", "ip", "method", "url")

    def __init__(
        self,
        method: str,
        url: str,
        *,
        headers: HeadersInit = None,
        body: BodyInit = None,
        ip: str | None = None,
        geo: Geo | None = None,
    ) -> None:
        self.method = method.upper()
        self.url = url
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.ip = ip
        self.geo = geo or _NO_GEO
        self._body = _Body(body)
        self._split: Any = None
        self._query: QueryParams | None = None
        self._cookies: dict[str, str] | None = None

    @classmethod
    def _from_server(
        cls,
        method: str,
        scheme: str,
        host: str,
        path: str,
        query: str,
        headers: Headers,
        body: BodyInit,
        ip: str | None,
    ) -> Request:
        """A request as a front end sees it: the URL's parts are known, so not re-parsed.

        ``path`` is the request target's path as sent (percent-encoding kept) and
        ``query`` its query string without ``?``; ``method`` is upper case.
        """
        self = cls.__new__(cls)
        self.method = method
        target = f"{path}?{query}" if query else path
        self.url = f"{scheme}://{host}{target}"
        self.headers = headers
        self.ip = ip
        self.geo = _NO_GEO
        self._body = _Body(body)
        self._query = None
        self._cookies = None
        # Only when urlsplit would find the same parts: an origin-form target without a
        # fragment, and a host that is no IPv6 literal (urlsplit validates those).
        if path[:1] == "/" and "#" not in target and "[" not in host and "]" not in host:
            self._split = SplitResult(scheme, host, path, query, "")
        else:
            self._split = None
        return self

    def _parts(self) -> Any:
        if self._split is None:
            self._split = urlsplit(self.url)
        return self._split

    @property
    def path(self) -> str:
        """The URL path (``/users/1``), percent-encoding kept."""
        return self._parts().path or "/"

    @property
    def query_string(self) -> str:
        """The raw query string, without ``?``."""
        return str(self._parts().query)

    @property
    def host(self) -> str:
        """The host the request was sent to (from the URL), with port if any."""
        return str(self._parts().netloc)

    @property
    def scheme(self) -> str:
        """``http`` or ``https``."""
        return str(self._parts().scheme)

    @property
    def query(self) -> QueryParams:
        """The query string as a multi-dict."""
        if self._query is None:
            self._query = QueryParams(self.query_string)
        return self._query

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies sent by the client (first value wins for repeated names)."""
        if self._cookies is None:
            cookies: dict[str, str] = {}
            for header in self.headers.getlist("cookie"):
                for k, v in parse_cookie_header(header).items():
                    cookies.setdefault(k, v)
            self._cookies = cookies
        return self._cookies

    @property
    def cf(self) -> Geo:
        """Alias of ``geo`` for code written for Cloudflare Workers."""
        return self.geo

    async def json(self) -> Any:
        """The body parsed as JSON.

        Raises ``MalformedJSON`` (HTTP 400 unless the handler catches it) when the body
        is not valid JSON, with the position of the problem.
        """
        data = await self._body.read()
        try:
            return _json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None

    def stream(self) -> AsyncIterator[bytes]:
        """The body as an async iterator of chunks; usable once for a streamed body."""
        return self._body.iter()

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


class Response(_BodyMethods):
    """An HTTP response: ``Response(body, status=200, headers=None)``.

    ``body`` is str (sent as UTF-8 text/plain unless a Content-Type is given), bytes,
    or an async iterator of chunks (streamed to the client as it is produced).
    """

    __slots__ = ("_body", "headers", "status")

    def __init__(
        self,
        body: BodyInit = None,
        status: int = 200,
        headers: HeadersInit = None,
    ) -> None:
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"status must be an integer from 200 to 599, got {status!r}")
        self.status = status
        if headers is None:
            self.headers = Headers()
        elif isinstance(headers, Headers):
            self.headers = headers.copy()
        else:
            self.headers = Headers(headers)
        if isinstance(body, str) and "content-type" not in self.headers:
            self.headers._items.append(_TEXT_PLAIN)
        self._body = _Body(body)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: HeadersInit = None) -> Response:
        """A JSON response (``application/json``) of ``obj``."""
        try:
            data = msgspec.json.encode(obj)
        except TypeError as exc:
            raise TypeError(f"Response.json could not encode the object: {exc}") from None
        resp = cls(data, status=status, headers=headers)
        resp.headers.setdefault("content-type", "application/json")
        return resp

    @classmethod
    def redirect(cls, url: str, status: int = 302) -> Response:
        """A redirect to ``url`` (status 301, 302, 303, 307 or 308)."""
        if status not in _REDIRECT_STATUSES:
            raise ValueError(
                f"redirect status must be one of 301, 302, 303, 307, 308, got {status}"
            )
        return cls(b"", status=status, headers={"location": url})

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    @property
    def content(self) -> bytes | None:
        """The body if it is fixed bytes (known length), else None (streamed)."""
        return self._body.fixed

    async def json_body(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(await self._body.read())

    def stream(self) -> AsyncIterator[bytes]:
        """The body as an async iterator of chunks (for servers and middleware)."""
        return self._body.iter()

    def clone(self) -> Response:
        """An independent copy; the body must be fixed (``await body()`` first if streamed)."""
        if self._body.fixed is None:
            raise RuntimeError("cannot clone a streamed response; await response.body() first")
        return Response(self._body.fixed, status=self.status, headers=self.headers.copy())

    def set_cookie(
        self,
        name: str,
        value: str = "",
        *,
        max_age: int | None = None,
        expires: datetime | int | float | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: Literal["lax", "strict", "none"] | None = "lax",
    ) -> None:
        """Add a ``Set-Cookie`` header.

        ``expires`` is a datetime or epoch seconds. ``samesite="none"`` requires
        ``secure=True`` (browsers drop it otherwise), so that is enforced here.
        """
        if not name or not set(name) <= _TOKEN_CHARS:
            raise ValueError(f"invalid cookie name {name!r}")
        if any(c in value for c in ';,"\\\r\n\x00 ') or any(ord(c) > 126 for c in value):
            raise ValueError(
                f'invalid cookie value {value[:40]!r}: quote or percent-encode ; , " \\ and spaces'
            )
        parts = [f"{name}={value}"]
        if max_age is not None:
            parts.append(f"Max-Age={int(max_age)}")
        if expires is not None:
            when = (
                expires
                if isinstance(expires, datetime)
                else datetime.fromtimestamp(float(expires), tz=UTC)
            )
            parts.append(f"Expires={format_datetime(when.astimezone(UTC), usegmt=True)}")
        if domain:
            parts.append(f"Domain={domain}")
        if path:
            parts.append(f"Path={path}")
        if secure:
            parts.append("Secure")
        if httponly:
            parts.append("HttpOnly")
        if samesite is not None:
            if samesite.lower() not in ("lax", "strict", "none"):
                raise ValueError(f"samesite must be 'lax', 'strict' or 'none', got {samesite!r}")
            if samesite.lower() == "none" and not secure:
                raise ValueError("samesite='none' requires secure=True")
            parts.append(f"SameSite={samesite.capitalize()}")
        self.headers.add("set-cookie", "; ".join(parts))

    def delete_cookie(
        self, name: str, *, path: str | None = "/", domain: str | None = None
    ) -> None:
        """Tell the client to drop cookie ``name`` (Max-Age=0, expired date)."""
        self.set_cookie(name, "", max_age=0, expires=0, path=path, domain=domain, samesite=None)

    def __repr__(self) -> str:
        return f"<Response {self.status}>"
