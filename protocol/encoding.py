"""Canonical byte encoding of protocol values.

Proofs and protocol messages cross the network, so decoding is the first line of defence:
there is exactly one encoding of each value (minimal big-endian magnitudes, an explicit sign
byte, no negative zero, fixed field order) and anything else is rejected with a reason. Every
field is length-prefixed, which makes the encoding of a sequence of fields injective.

Layout of one field: ``type (1 byte) || length (4 bytes, big endian) || body``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from .errors import InvalidInput

T_BYTES = 0x01
T_UINT = 0x02
T_INT = 0x03
T_LIST = 0x04

# No single field we exchange is larger than this (a few 6144-bit numbers); the bound keeps a
# malicious peer from making us allocate or hash gigabytes.
MAX_FIELD_BYTES = 1 << 20

_HEADER = struct.Struct(">BI")


def uint_to_bytes(value: int) -> bytes:
    """Minimal big-endian magnitude; zero is the empty string."""
    if value < 0:
        raise InvalidInput("unsigned integer is negative")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _uint_from_bytes(body: bytes) -> int:
    if body and body[0] == 0:
        raise InvalidInput("integer has a leading zero byte (non-canonical)")
    return int.from_bytes(body, "big")


class Encoder:
    """Builds the canonical encoding of a sequence of fields."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def _field(self, kind: int, body: bytes) -> Encoder:
        if len(body) > MAX_FIELD_BYTES:
            raise InvalidInput("field too large to encode")
        self._parts.append(_HEADER.pack(kind, len(body)))
        self._parts.append(body)
        return self

    def bytes(self, value: bytes) -> Encoder:
        return self._field(T_BYTES, bytes(value))

    def uint(self, value: int) -> Encoder:
        return self._field(T_UINT, uint_to_bytes(int(value)))

    def int(self, value: int) -> Encoder:
        value = int(value)
        sign = b"\x01" if value < 0 else b"\x00"
        return self._field(T_INT, sign + uint_to_bytes(abs(value)))

    def uints(self, values: Iterable[int]) -> Encoder:
        inner = Encoder()
        for v in values:
            inner.uint(v)
        return self._field(T_LIST, inner.finish())

    def ints(self, values: Iterable[int]) -> Encoder:
        inner = Encoder()
        for v in values:
            inner.int(v)
        return self._field(T_LIST, inner.finish())

    def list_of_bytes(self, values: Iterable[bytes]) -> Encoder:
        inner = Encoder()
        for v in values:
            inner.bytes(v)
        return self._field(T_LIST, inner.finish())

    def finish(self) -> bytes:
        return b"".join(self._parts)


class Decoder:
    """Reads fields back, refusing anything that is not the canonical encoding."""

    def __init__(self, data: bytes, what: str = "message") -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"{what}: expected bytes")
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    def _field(self, kind: int) -> bytes:
        if self._pos + _HEADER.size > len(self._data):
            raise InvalidInput(f"{self._what}: truncated")
        got, length = _HEADER.unpack_from(self._data, self._pos)
        if got != kind:
            raise InvalidInput(f"{self._what}: expected field type {kind}, found {got}")
        if length > MAX_FIELD_BYTES:
            raise InvalidInput(f"{self._what}: field too large")
        start = self._pos + _HEADER.size
        end = start + length
        if end > len(self._data):
            raise InvalidInput(f"{self._what}: truncated")
        self._pos = end
        return self._data[start:end]

    def bytes(self, exact_length: int | None = None) -> bytes:
        body = self._field(T_BYTES)
        if exact_length is not None and len(body) != exact_length:
            raise InvalidInput(f"{self._what}: expected {exact_length} bytes, found {len(body)}")
        return body

    def uint(self, max_bits: int | None = None) -> int:
        value = _uint_from_bytes(self._field(T_UINT))
        if max_bits is not None and value.bit_length() > max_bits:
            raise InvalidInput(f"{self._what}: integer exceeds {max_bits} bits")
        return value

    def int(self, max_bits: int | None = None) -> int:
        body = self._field(T_INT)
        if not body or body[0] not in (0, 1):
            raise InvalidInput(f"{self._what}: bad sign byte")
        magnitude = _uint_from_bytes(body[1:])
        if body[0] == 1 and magnitude == 0:
            raise InvalidInput(f"{self._what}: negative zero (non-canonical)")
        if max_bits is not None and magnitude.bit_length() > max_bits:
            raise InvalidInput(f"{self._what}: integer exceeds {max_bits} bits")
        return -magnitude if body[0] == 1 else magnitude

    def uints(self, count: int | None = None, max_bits: int | None = None) -> list[int]:
        inner = Decoder(self._field(T_LIST), self._what)
        out: list[int] = []
        while not inner.at_end():
            out.append(inner.uint(max_bits))
        self._check_count(out, count)
        return out

    def ints(self, count: int | None = None, max_bits: int | None = None) -> list[int]:
        inner = Decoder(self._field(T_LIST), self._what)
        out: list[int] = []
        while not inner.at_end():
            out.append(inner.int(max_bits))
        self._check_count(out, count)
        return out

    def list_of_bytes(self, count: int | None = None, exact_length: int | None = None) -> list[bytes]:
        inner = Decoder(self._field(T_LIST), self._what)
        out: list[bytes] = []
        while not inner.at_end():
            out.append(inner.bytes(exact_length))
        self._check_count(out, count)
        return out

    def _check_count(self, items: list, count: int | None) -> None:
        if count is not None and len(items) != count:
            raise InvalidInput(f"{self._what}: expected {count} items, found {len(items)}")

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def finish(self) -> None:
        if not self.at_end():
            raise InvalidInput(f"{self._what}: trailing bytes")
