"""Order-preserving byte encoding of KV keys (``str`` keys and tuple keys).

Backends store and order keys as opaque bytes, so the encoding alone decides how
``list()`` orders and prefix-matches keys. Comparing two encodings bytewise gives the
same answer as comparing the keys:

- A whole key starts with a kind tag: ``0x01`` for a ``str`` key (followed by its
  UTF-8 bytes), ``0x02`` for a tuple key (followed by its parts). The tag keeps
  ``"a"`` and ``("a",)`` apart, and puts every ``str`` key before every tuple key.
- Tuple parts use the FoundationDB tuple-layer scheme that Deno KV also uses: a
  type code, then an order-preserving body. Across types the order is
  ``bytes < str < int < float < False < True``; within a type it is the natural
  order (ints numerically, negatives included; strings by code point; bytes
  lexicographically). ``int`` and ``float`` are different types, as in Deno KV
  (``(1,)`` and ``(1.0,)`` are two keys); ``-0.0`` is stored as ``0.0`` because Python
  considers them equal; NaN is refused because it is not equal to itself.
- Each encoded part is self-delimiting, so a tuple is a prefix of another tuple
  exactly when its encoding is a byte prefix of the other's encoding.

This module is a pure codec: it raises ``TypeError``/``ValueError``; ``validate``
turns those into user-facing ``KVValidationError`` messages.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

__all__ = [
    "STR_KEY",
    "TUPLE_KEY",
    "KVKey",
    "KVKeyPart",
    "decode_cursor",
    "decode_key",
    "decode_tuple",
    "encode_cursor",
    "encode_key",
    "encode_tuple",
    "prefix_range",
    "successor",
]

KVKeyPart = str | int | float | bytes | bool
"""One element of a tuple key."""

KVKey = str | tuple[KVKeyPart, ...]
"""A KV key: a string, or a tuple of parts for hierarchical keys."""

STR_KEY = b"\x01"
"""Kind tag that starts the encoding of a ``str`` key."""
TUPLE_KEY = b"\x02"
"""Kind tag that starts the encoding of a tuple key."""

# Part type codes (FoundationDB tuple layer). Ints take 0x0b..0x1d: 0x14 is zero,
# 0x14 +/- n is an int whose magnitude fits in n bytes (n <= 8), and 0x0b / 0x1d are
# negative / positive ints of up to 255 bytes with an explicit length byte.
_BYTES = 0x01
_STR = 0x02
_INT_NEG_BIG = 0x0B
_INT_ZERO = 0x14
_INT_POS_BIG = 0x1D
_FLOAT = 0x21
_FALSE = 0x26
_TRUE = 0x27

_MAX_INT_BYTES = 255
_SIGN_BIT = 1 << 63
_ALL_BITS = (1 << 64) - 1
_DOUBLE = struct.Struct(">d")
_U64 = struct.Struct(">Q")


def _escape(data: bytes) -> bytes:
    # 0x00 terminates a bytes/str part, so a 0x00 inside one is written 0x00 0xff;
    # 0xff sorts above every type code, keeping b"a\x00" after b"a" followed by a part.
    return data.replace(b"\x00", b"\x00\xff") + b"\x00"


def _encode_int(value: int, out: bytearray) -> None:
    if value == 0:
        out.append(_INT_ZERO)
        return
    size = (abs(value).bit_length() + 7) // 8
    if size > _MAX_INT_BYTES:
        raise ValueError(f"int key parts are limited to {_MAX_INT_BYTES} bytes, got {size}")
    if value > 0:
        body = value.to_bytes(size, "big")
        if size <= 8:
            out.append(_INT_ZERO + size)
        else:
            out += bytes((_INT_POS_BIG, size))
    else:
        # One's complement: more negative numbers get smaller bodies, and larger
        # magnitudes get smaller type codes (or smaller length bytes).
        body = (value + (1 << (8 * size)) - 1).to_bytes(size, "big")
        if size <= 8:
            out.append(_INT_ZERO - size)
        else:
            out += bytes((_INT_NEG_BIG, size ^ 0xFF))
    out += body


def _encode_float(value: float, out: bytearray) -> None:
    if math.isnan(value):
        raise ValueError("NaN cannot be part of a key (it is not equal to itself)")
    if value == 0.0:
        value = 0.0  # fold -0.0 into 0.0: Python treats them as the same key
    (bits,) = _U64.unpack(_DOUBLE.pack(value))
    # IEEE 754 sorts like sign-magnitude ints: flip everything for negatives and
    # only the sign bit for positives to get an unsigned order.
    bits ^= _ALL_BITS if bits & _SIGN_BIT else _SIGN_BIT
    out.append(_FLOAT)
    out += _U64.pack(bits)


def encode_tuple(parts: tuple[object, ...]) -> bytes:
    """Encode the parts of a tuple key, without the kind tag.

    Raises ``TypeError`` for a part that is not ``str``, ``int``, ``float``, ``bytes``
    (``bytearray``/``memoryview`` are read as bytes) or ``bool``, and ``ValueError``
    for NaN, a string that is not valid Unicode (lone surrogates), or an int whose
    magnitude needs more than 255 bytes.
    """
    out = bytearray()
    for part in parts:
        # bool before int: bool is a subclass of int but a type of its own here.
        if part is True:
            out.append(_TRUE)
        elif part is False:
            out.append(_FALSE)
        elif isinstance(part, str):
            try:
                raw = part.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"string part {part!r} is not valid Unicode") from None
            out.append(_STR)
            out += _escape(raw)
        elif isinstance(part, int):
            _encode_int(part, out)
        elif isinstance(part, float):
            _encode_float(part, out)
        elif isinstance(part, bytes | bytearray | memoryview):
            out.append(_BYTES)
            out += _escape(bytes(part))
        else:
            raise TypeError(
                f"a tuple key part must be str, int, float, bytes or bool, "
                f"not {type(part).__name__}"
            )
    return bytes(out)


def _read_escaped(data: bytes, pos: int) -> tuple[bytes, int]:
    chunks = []
    while True:
        end = data.index(b"\x00", pos)  # ValueError if unterminated
        chunks.append(data[pos:end])
        if end + 1 < len(data) and data[end + 1] == 0xFF:
            chunks.append(b"\x00")
            pos = end + 2
        else:
            return b"".join(chunks), end + 1


def decode_tuple(data: bytes) -> tuple[KVKeyPart, ...]:
    """Decode the output of ``encode_tuple``; raises ``ValueError`` on malformed input."""
    try:
        return _decode_parts(data)
    except IndexError:
        raise ValueError("truncated tuple key") from None


def _decode_parts(data: bytes) -> tuple[KVKeyPart, ...]:
    parts: list[KVKeyPart] = []
    pos, size = 0, len(data)
    while pos < size:
        code = data[pos]
        pos += 1
        if code in (_STR, _BYTES):
            raw, pos = _read_escaped(data, pos)
            parts.append(raw.decode("utf-8") if code == _STR else raw)
        elif _INT_NEG_BIG <= code <= _INT_POS_BIG:
            if code == _INT_POS_BIG:
                n, pos = data[pos], pos + 1
            elif code == _INT_NEG_BIG:
                n, pos = data[pos] ^ 0xFF, pos + 1
            else:
                n = abs(code - _INT_ZERO)
            if pos + n > size:
                raise ValueError("truncated int part")
            magnitude = int.from_bytes(data[pos : pos + n], "big")
            pos += n
            parts.append(magnitude if code >= _INT_ZERO else magnitude - (1 << (8 * n)) + 1)
        elif code == _FLOAT:
            if pos + 8 > size:
                raise ValueError("truncated float part")
            (bits,) = _U64.unpack_from(data, pos)
            pos += 8
            bits ^= _SIGN_BIT if bits & _SIGN_BIT else _ALL_BITS
            parts.append(_DOUBLE.unpack(_U64.pack(bits))[0])
        elif code == _FALSE:
            parts.append(False)
        elif code == _TRUE:
            parts.append(True)
        else:
            raise ValueError(f"unknown key part type code 0x{code:02x} at byte {pos - 1}")
    return tuple(parts)


def encode_key(key: KVKey) -> bytes:
    """Encode a whole key (kind tag + body); same errors as ``encode_tuple``.

    No size limit is applied here; ``validate.check_key`` does that.
    """
    if isinstance(key, str):
        try:
            return STR_KEY + key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"key {key!r} is not valid Unicode") from None
    if isinstance(key, tuple):
        return TUPLE_KEY + encode_tuple(key)
    raise TypeError(f"a key must be a str or a tuple, not {type(key).__name__}")


def decode_key(data: bytes) -> KVKey:
    """Decode the output of ``encode_key``; raises ``ValueError`` on malformed input."""
    kind = data[:1]
    if kind == STR_KEY:
        return data[1:].decode("utf-8")
    if kind == TUPLE_KEY:
        return decode_tuple(data[1:])
    raise ValueError(f"unknown key kind tag {kind!r}")


def successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix``.

    ``None`` when there is none (``prefix`` is empty or all ``0xff``): the range is
    then unbounded above.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def prefix_range(encoded_prefix: bytes) -> tuple[bytes, bytes | None]:
    """``(start, end)`` covering exactly the keys that start with ``encoded_prefix``.

    ``start`` is inclusive and ``end`` exclusive (``None``: no upper bound).
    """
    return encoded_prefix, successor(encoded_prefix)


def encode_cursor(last_key: bytes) -> str:
    """An opaque ``list()`` cursor meaning "continue after ``last_key``"."""
    return base64.urlsafe_b64encode(last_key).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> bytes:
    """The encoded key a cursor continues after; ``ValueError`` if it is not a cursor."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a list() cursor: {exc}") from None
    if raw[:1] not in (STR_KEY, TUPLE_KEY):
        raise ValueError("not a list() cursor")
    return raw
