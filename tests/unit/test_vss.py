"""Feldman VSS and Lagrange interpolation."""

from __future__ import annotations

import itertools

import pytest

from fusion_prime.protocol.curve import Point, Q, random_scalar
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.vss import (
    Polynomial,
    evaluate_commitments,
    interpolate_points,
    lagrange_coefficient,
    verify_share,
)


def test_shares_verify_and_any_t_reconstruct() -> None:
    secret = random_scalar()
    poly = Polynomial.random(secret, degree=2)  # t = 3
    commitments = poly.commitments()
    shares = {i: poly.evaluate(i) for i in range(1, 6)}
    for i, s in shares.items():
        assert verify_share(i, s, commitments)
    for subset in itertools.combinations(shares, 3):
        assert sum(lagrange_coefficient(i, subset) * shares[i] for i in subset) % Q == secret
        publics = {i: Point.base_mul(shares[i]) for i in subset}
        assert interpolate_points(publics) == Point.base_mul(secret)
    # two shares say nothing: interpolating them gives something else
    assert sum(lagrange_coefficient(i, (1, 2)) * shares[i] for i in (1, 2)) % Q != secret


def test_share_off_its_commitment_fails() -> None:
    poly = Polynomial.random(random_scalar(), degree=1)
    commitments = poly.commitments()
    assert not verify_share(2, (poly.evaluate(2) + 1) % Q, commitments)
    assert not verify_share(3, poly.evaluate(2), commitments)
    assert evaluate_commitments(commitments, 0) == commitments[0]


def test_indices_are_validated() -> None:
    with pytest.raises(InvalidInput):
        lagrange_coefficient(1, (1, 1, 2))
    with pytest.raises(InvalidInput):
        lagrange_coefficient(0, (0, 1))
    with pytest.raises(InvalidInput):
        lagrange_coefficient(3, (1, 2))
    assert repr(Polynomial.random(5, 2)) == "Polynomial(degree=2)"
