"""The one Fiat–Shamir transcript of the project.

Why it looks like this: TSSHOCK's "α-shuffle" attack forged proofs in libraries that hashed a
plain concatenation of numbers, where (12, 3) and (1, 23) hash alike. Here every value enters
the hash as ``label || type || value``, label and value length-prefixed and the type from a
prefix-free set of tags, so the byte string fed to the hash is an injective function of the
sequence of (label, typed value) pairs. A list's type names its element type too (``li``,
``lp``): an empty list of integers and an empty list of points are different values and hash
differently, whatever label they carry. Every challenge is
derived from everything appended before it, then appended itself, so repeated challenges
(the m rounds of Π^mod and Π^prm) are distinct and each depends on all previous ones.

Challenges are drawn by rejection sampling from a SHA-512 counter-mode stream keyed by the
transcript state — no modular reduction, so no bias.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from math import gcd

from .curve import Point, Q
from .encoding import uint_to_bytes
from .errors import InvalidInput

_LEN = struct.Struct(">Q")

T_BYTES = b"b"
T_INT = b"i"
T_POINT = b"p"
T_LIST = b"l"  # always followed by the element type: T_LIST_INTS or T_LIST_POINTS
T_LIST_INTS = T_LIST + T_INT
T_LIST_POINTS = T_LIST + T_POINT
T_CHALLENGE = b"c"


def _lp(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


def encode_int(value: int) -> bytes:
    """Signed integer as sign byte + minimal magnitude (injective, no negative zero)."""
    value = int(value)
    return (b"\x01" if value < 0 else b"\x00") + uint_to_bytes(abs(value))


class _Stream:
    """SHA-512 in counter mode over a seed: an unbounded stream of pseudo-random bytes."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha512(self._seed + _LEN.pack(self._counter)).digest()
            self._counter += 1
            self._buffer += block
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def randbits(self, bits: int) -> int:
        nbytes = (bits + 7) // 8
        value = int.from_bytes(self.read(nbytes), "big")
        return value >> (8 * nbytes - bits)

    def below(self, bound: int) -> int:
        """Uniform in [0, bound) by rejection."""
        if bound <= 0:
            raise InvalidInput("empty challenge range")
        bits = bound.bit_length()
        while True:
            v = self.randbits(bits)
            if v < bound:
                return v


class Transcript:
    """A running hash of labelled values, from which challenges are derived."""

    def __init__(self, domain: str) -> None:
        self._h = hashlib.sha512()
        self._h.update(_lp(b"fusion-prime transcript v1"))
        self.append_bytes("domain", domain.encode())

    def copy(self) -> Transcript:
        clone = Transcript.__new__(Transcript)
        clone._h = self._h.copy()
        return clone

    def _append(self, label: str, kind: bytes, data: bytes) -> Transcript:
        # ``kind`` is one of b, i, p, c, li, lp: no tag is a prefix of another, so it needs no
        # length prefix for the encoding to stay injective.
        self._h.update(_lp(label.encode()) + kind + _lp(data))
        return self

    def append_bytes(self, label: str, data: bytes) -> Transcript:
        return self._append(label, T_BYTES, bytes(data))

    def append_int(self, label: str, value: int) -> Transcript:
        return self._append(label, T_INT, encode_int(value))

    def append_ints(self, label: str, values: Iterable[int]) -> Transcript:
        return self._append(label, T_LIST_INTS, b"".join(_lp(encode_int(v)) for v in values))

    def append_point(self, label: str, point: Point) -> Transcript:
        return self._append(label, T_POINT, point.to_bytes())

    def append_points(self, label: str, points: Iterable[Point]) -> Transcript:
        return self._append(label, T_LIST_POINTS, b"".join(_lp(p.to_bytes()) for p in points))

    # challenges -------------------------------------------------------------------------------
    def _stream(self, label: str) -> _Stream:
        """Seed a stream from the state, then absorb the seed: the next challenge differs."""
        self._append(label, T_CHALLENGE, b"")
        seed = self._h.copy().digest()
        self._h.update(_lp(seed))
        return _Stream(seed)

    def challenge_bytes(self, label: str, n: int = 32) -> bytes:
        return self._stream(label).read(n)

    def challenge_scalar(self, label: str) -> int:
        """Uniform in [0, Q)."""
        return self._stream(label).below(Q)

    def challenge_pm(self, label: str, bits: int) -> int:
        """Uniform in the closed interval [-2^bits, 2^bits] (the paper's ±2^bits)."""
        return self._stream(label).below(2 ** (bits + 1) + 1) - 2**bits

    def challenge_bits(self, label: str, count: int) -> list[int]:
        stream = self._stream(label)
        return [stream.randbits(1) for _ in range(count)]

    def challenge_units(self, label: str, modulus: int, count: int) -> list[int]:
        """``count`` distinct elements of Z*_modulus (Π^mod's y_1..y_m)."""
        if modulus.bit_length() < 64:
            raise InvalidInput("modulus too small to draw distinct challenges from")
        stream = self._stream(label)
        out: list[int] = []
        seen: set[int] = set()
        while len(out) < count:
            y = stream.below(modulus)
            if y in seen or gcd(y, modulus) != 1:
                continue
            seen.add(y)
            out.append(y)
        return out
