"""secp256k1 scalars and points, on top of libsecp256k1 (coincurve).

Scalars are plain ``int`` values in [0, Q); the helpers here are the only way the protocol
draws them (rejection sampling from the OS generator, so no modular bias) or reads them from
the wire (out-of-range values are refused, never reduced). Points are immutable ``Point``
objects; the identity exists as a value because sums of shares can legitimately reach it, but
``Point.from_bytes`` refuses it, so no peer can ever send it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from coincurve import PublicKey

from .errors import InvalidInput

# Curve order and field prime of secp256k1 (SEC 2, §2.4.1).
Q = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
HALF_Q = Q // 2
POINT_BYTES = 33
SCALAR_BYTES = 32


def random_scalar() -> int:
    """A uniform non-zero scalar: rejection sampling of 256-bit draws, never ``% Q``."""
    while True:
        k = secrets.randbits(256)
        if 0 < k < Q:
            return k


def scalar_to_bytes(k: int) -> bytes:
    return (k % Q).to_bytes(SCALAR_BYTES, "big")


def scalar_from_bytes(data: bytes, *, allow_zero: bool = False) -> int:
    """Read a 32-byte big-endian scalar; values >= Q are refused rather than reduced."""
    if len(data) != SCALAR_BYTES:
        raise InvalidInput(f"scalar must be {SCALAR_BYTES} bytes, got {len(data)}")
    k = int.from_bytes(data, "big")
    if k >= Q:
        raise InvalidInput("scalar is not below the group order")
    if k == 0 and not allow_zero:
        raise InvalidInput("scalar is zero")
    return k


def check_scalar(k: int, *, allow_zero: bool = False) -> int:
    if not isinstance(k, int) or not 0 <= k < Q or (k == 0 and not allow_zero):
        raise InvalidInput("scalar out of range")
    return k


class Point:
    """A point of secp256k1, or the identity (``Point.identity()``)."""

    __slots__ = ("_key",)

    def __init__(self, key: PublicKey | None) -> None:
        self._key = key

    # construction -------------------------------------------------------------------------
    @staticmethod
    def identity() -> Point:
        return _IDENTITY

    @staticmethod
    def generator() -> Point:
        return _GENERATOR

    @staticmethod
    def base_mul(k: int) -> Point:
        """k·G; k is reduced mod Q (the caller's arithmetic is mod Q anyway)."""
        k %= Q
        if k == 0:
            return _IDENTITY
        return Point(PublicKey.from_secret(k.to_bytes(32, "big")))

    @staticmethod
    def from_bytes(data: bytes) -> Point:
        """Parse a 33-byte compressed SEC1 point; off-curve encodings and the identity fail."""
        if len(data) != POINT_BYTES or data[0] not in (2, 3):
            raise InvalidInput("point must be a 33-byte compressed SEC1 encoding")
        try:
            return Point(PublicKey(bytes(data)))
        except (ValueError, TypeError) as exc:
            raise InvalidInput("point is not on secp256k1") from exc

    @staticmethod
    def from_public_key(key: PublicKey) -> Point:
        return Point(key)

    @staticmethod
    def sum(points: Iterable[Point]) -> Point:
        keys = [p._key for p in points if p._key is not None]
        if not keys:
            return _IDENTITY
        if len(keys) == 1:
            return Point(keys[0])
        try:
            return Point(PublicKey.combine_keys(keys))
        except ValueError:  # the sum is the point at infinity
            return _IDENTITY

    # arithmetic ---------------------------------------------------------------------------
    def __add__(self, other: Point) -> Point:
        return Point.sum((self, other))

    def __neg__(self) -> Point:
        return self * (Q - 1)

    def __sub__(self, other: Point) -> Point:
        return self + (-other)

    def __mul__(self, k: int) -> Point:
        k %= Q
        if k == 0 or self._key is None:
            return _IDENTITY
        if k == 1:
            return self
        return Point(self._key.multiply(k.to_bytes(32, "big")))

    __rmul__ = __mul__

    # inspection ---------------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        return self._key is None

    def to_bytes(self) -> bytes:
        """Compressed SEC1 encoding; the identity has none (it never goes on the wire)."""
        if self._key is None:
            raise InvalidInput("the identity point has no encoding")
        return self._key.format(compressed=True)

    def to_uncompressed(self) -> bytes:
        if self._key is None:
            raise InvalidInput("the identity point has no encoding")
        return self._key.format(compressed=False)

    def xy(self) -> tuple[int, int]:
        if self._key is None:
            raise InvalidInput("the identity point has no coordinates")
        return self._key.point()

    @property
    def x(self) -> int:
        return self.xy()[0]

    def public_key(self) -> PublicKey:
        if self._key is None:
            raise InvalidInput("the identity point is not a public key")
        return self._key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Point):
            return NotImplemented
        if self._key is None or other._key is None:
            return self._key is None and other._key is None
        return self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(b"" if self._key is None else self.to_bytes())

    def __repr__(self) -> str:
        return "Point(identity)" if self._key is None else f"Point({self.to_bytes().hex()})"


_IDENTITY = Point(None)
_GENERATOR = Point(PublicKey.from_secret((1).to_bytes(32, "big")))
