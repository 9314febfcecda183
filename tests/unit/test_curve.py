"""secp256k1 layer: validation of everything that can come from a peer, and unbiased sampling."""

from __future__ import annotations

import secrets

import pytest
from coincurve import PrivateKey, PublicKey

from fusion_prime.protocol.curve import Point, Q, random_scalar, scalar_from_bytes
from fusion_prime.protocol.errors import InvalidInput


def test_point_arithmetic_matches_libsecp256k1() -> None:
    a, b = random_scalar(), random_scalar()
    A, B = Point.base_mul(a), Point.base_mul(b)
    assert (A + B).to_bytes() == PrivateKey(((a + b) % Q).to_bytes(32, "big")).public_key.format()
    assert (A * b) == (B * a)
    assert (A - A).is_identity
    assert A + Point.identity() == A
    assert Point.from_bytes(A.to_bytes()) == A


def test_off_curve_point_is_rejected() -> None:
    good = Point.base_mul(random_scalar()).to_bytes()
    # x = 5 has no y on secp256k1 (5^3 + 7 = 132 is not a square mod p).
    with pytest.raises(InvalidInput):
        Point.from_bytes(b"\x02" + (5).to_bytes(32, "big"))
    with pytest.raises(InvalidInput):
        Point.from_bytes(b"\x04" + good[1:])  # wrong prefix
    with pytest.raises(InvalidInput):
        Point.from_bytes(good[:-1])  # short
    with pytest.raises(InvalidInput):
        Point.from_bytes(b"\x02" + b"\xff" * 32)  # x >= p


def test_identity_never_goes_on_the_wire() -> None:
    with pytest.raises(InvalidInput):
        Point.identity().to_bytes()
    with pytest.raises(InvalidInput):
        Point.from_bytes(b"\x00" * 33)


def test_scalar_decoding_refuses_instead_of_reducing() -> None:
    with pytest.raises(InvalidInput):
        scalar_from_bytes(Q.to_bytes(32, "big"))
    with pytest.raises(InvalidInput):
        scalar_from_bytes((2**256 - 1).to_bytes(32, "big"))
    with pytest.raises(InvalidInput):
        scalar_from_bytes(bytes(32))
    assert scalar_from_bytes((Q - 1).to_bytes(32, "big")) == Q - 1
    with pytest.raises(InvalidInput):
        scalar_from_bytes(b"\x01" * 31)


def test_random_scalars_are_unbiased() -> None:
    """Nonce bias: the top bit of k should be set with probability (Q - 2^255)/Q ≈ 1/2, and
    each of the low 8 bits uniform; a `% Q` or truncated sampler would skew these."""
    draws = [random_scalar() for _ in range(20000)]
    assert all(0 < k < Q for k in draws)
    assert len(set(draws)) == len(draws)
    n = len(draws)
    expected_top = (Q - 2**255) / Q
    top = sum(k >> 255 for k in draws) / n
    assert abs(top - expected_top) < 5 * (0.25 / n) ** 0.5
    # Chi-square over the low byte, 255 degrees of freedom: 99.99th percentile ≈ 340.
    counts = [0] * 256
    for k in draws:
        counts[k & 0xFF] += 1
    chi2 = sum((c - n / 256) ** 2 / (n / 256) for c in counts)
    assert chi2 < 340


def test_sum_reaching_identity() -> None:
    k = secrets.randbelow(Q - 1) + 1
    assert Point.sum([Point.base_mul(k), Point.base_mul(Q - k)]).is_identity
    assert Point.sum([]).is_identity
    key = PublicKey.from_secret(k.to_bytes(32, "big"))
    assert Point.from_public_key(key) == Point.base_mul(k)
