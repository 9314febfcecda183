"""Feldman verifiable secret sharing over secp256k1 and Lagrange interpolation.

A dealer shares a secret with a random polynomial f of degree t-1 and publishes the
commitments F_k = f_k·G to its coefficients; party i receives f(i) and checks it against
Σ_k i^k·F_k. In CGGMP21's threshold key generation each party is such a dealer and its
public share X_i = x_i·G is the commitment polynomial evaluated at i, so every party can
compute every other's public share without learning anything secret.

Party indices are the non-zero scalars 1..n; 0 is where the secret lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .curve import Point, Q, random_scalar
from .errors import InvalidInput


def check_indices(indices: Iterable[int]) -> list[int]:
    """Indices must be distinct, non-zero scalars (an index 0 would hand out the secret)."""
    out = list(indices)
    if len(set(out)) != len(out):
        raise InvalidInput("party indices are not distinct")
    for i in out:
        if not isinstance(i, int) or not 0 < i < Q:
            raise InvalidInput("party index must be a non-zero scalar")
    return out


@dataclass(frozen=True)
class Polynomial:
    """f(X) = c_0 + c_1·X + ... + c_{t-1}·X^{t-1} over Z_q; c_0 is the shared secret."""

    coefficients: tuple[int, ...]

    @staticmethod
    def random(secret: int, degree: int) -> Polynomial:
        if degree < 0:
            raise InvalidInput("polynomial degree must be >= 0")
        return Polynomial((secret % Q, *(random_scalar() for _ in range(degree))))

    def evaluate(self, x: int) -> int:
        acc = 0
        for c in reversed(self.coefficients):
            acc = (acc * x + c) % Q
        return acc

    def commitments(self) -> list[Point]:
        return [Point.base_mul(c) for c in self.coefficients]

    def __repr__(self) -> str:
        return f"Polynomial(degree={len(self.coefficients) - 1})"


def evaluate_commitments(commitments: Sequence[Point], x: int) -> Point:
    """Σ_k x^k·F_k: the public image of f(x)."""
    acc = Point.identity()
    for c in reversed(commitments):
        acc = acc * x + c
    return acc


def verify_share(index: int, share: int, commitments: Sequence[Point]) -> bool:
    return Point.base_mul(share) == evaluate_commitments(commitments, index)


def lagrange_coefficient(i: int, signers: Iterable[int], at: int = 0) -> int:
    """λ_i such that Σ_{j∈S} λ_j·f(j) = f(at) for deg f < |S|."""
    signers = check_indices(signers)
    if i not in signers:
        raise InvalidInput("index is not in the signer set")
    num, den = 1, 1
    for j in signers:
        if j == i:
            continue
        num = num * (at - j) % Q
        den = den * (i - j) % Q
    return num * pow(den, -1, Q) % Q


def interpolate_points(points: dict[int, Point], at: int = 0) -> Point:
    """Σ λ_j·P_j: the public counterpart of Lagrange interpolation."""
    signers = list(points)
    return Point.sum(points[j] * lagrange_coefficient(j, signers, at) for j in signers)
