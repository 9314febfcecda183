"""Π^fac — no small factor (CGGMP21 App. C.5, Fig. 28).

Claim: N0 = p·q with both factors larger than about 2^ℓ. The proof is made once per
*recipient*, against the recipient's ring-Pedersen parameters, because its soundness rests on
the verifier's own N̂ (a prover cannot fake a factorisation in a group whose order it does not
know). BitForge (CVE-2023-33241) exploited implementations that skipped this proof: a modulus
with tiny factors lets its owner decrypt other parties' MtA shares bit by bit.

    α, β ← ±2^(ℓ+ε)·√N0,  μ, ν ← ±2^ℓ·N̂,  σ ← ±2^ℓ·N0·N̂,  r ← ±2^(ℓ+ε)·N0·N̂,
    x, y ← ±2^(ℓ+ε)·N̂
    P = s^p t^μ, Q = s^q t^ν, A = s^α t^x, B = s^β t^y, T = Q^α t^r   (mod N̂), and σ
    e ← ±2^challenge_bits;  σ̂ = σ - ν·p
    z1 = α + e·p, z2 = β + e·q, w1 = x + e·μ, w2 = y + e·ν, v = r + e·σ̂
    verify, with R = s^N0 t^σ:  s^z1 t^w1 = A·P^e,  s^z2 t^w2 = B·Q^e,  Q^z1 t^v = T·R^e,
            z1, z2 ∈ ±2^(ℓ+ε)·√N0
"""

from __future__ import annotations

from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from ..encoding import Decoder, Encoder
from ..levels import SecurityLevel
from ..paillier import PaillierSecretKey
from ..ring_pedersen import RingPedersenParams
from .common import Checker, ProofContext, bind_ring_pedersen, sample_pm

NAME = "fac"


@dataclass(frozen=True)
class FacProof:
    P: int
    Q: int
    A: int
    B: int
    T: int
    sigma: int
    z1: int
    z2: int
    w1: int
    w2: int
    v: int

    def to_bytes(self) -> bytes:
        enc = Encoder()
        for value in (self.P, self.Q, self.A, self.B, self.T):
            enc.uint(value)
        for value in (self.sigma, self.z1, self.z2, self.w1, self.w2, self.v):
            enc.int(value)
        return enc.finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> FacProof:
        dec = Decoder(data, "Π^fac proof")
        bits = level.max_int_bits()
        commitments = [mpz(dec.uint(bits)) for _ in range(5)]
        responses = [mpz(dec.int(bits)) for _ in range(6)]
        dec.finish()
        return cls(*commitments, *responses)


def _challenge(
    ctx: ProofContext, level: SecurityLevel, n0: int, aux: RingPedersenParams, pf: FacProof
) -> mpz:
    tr = ctx.transcript(NAME, level)
    tr.append_int("N0", n0)
    bind_ring_pedersen(tr, "aux", aux)
    tr.append_ints("P,Q,A,B,T,sigma", (pf.P, pf.Q, pf.A, pf.B, pf.T, pf.sigma))
    return mpz(tr.challenge_pm("e", level.challenge_bits))


def prove(
    ctx: ProofContext, level: SecurityLevel, key: PaillierSecretKey, aux: RingPedersenParams
) -> FacProof:
    n0, p, q = key.n, key.p, key.q
    root = gmpy2.isqrt(n0)
    two_l, two_le = mpz(1) << level.ell, mpz(1) << (level.ell + level.epsilon)
    alpha, beta = sample_pm(two_le * root), sample_pm(two_le * root)
    mu, nu = sample_pm(two_l * aux.n), sample_pm(two_l * aux.n)
    sigma = sample_pm(two_l * n0 * aux.n)
    r = sample_pm(two_le * n0 * aux.n)
    x, y = sample_pm(two_le * aux.n), sample_pm(two_le * aux.n)
    P, Q = aux.commit(p, mu), aux.commit(q, nu)
    A, B = aux.commit(alpha, x), aux.commit(beta, y)
    T = aux.pow(Q, alpha) * aux.pow(aux.t, r) % aux.n
    zero = mpz(0)
    first = FacProof(P, Q, A, B, T, sigma, zero, zero, zero, zero, zero)
    e = _challenge(ctx, level, n0, aux, first)
    sigma_hat = sigma - nu * p
    return FacProof(
        P, Q, A, B, T, sigma,
        z1=alpha + e * p,
        z2=beta + e * q,
        w1=x + e * mu,
        w2=y + e * nu,
        v=r + e * sigma_hat,
    )


def verify(
    ctx: ProofContext, level: SecurityLevel, n0: int, aux: RingPedersenParams, proof: FacProof
) -> None:
    """``aux`` is the verifier's own parameters (pass the secret to verify by CRT)."""
    check = Checker(NAME)
    n0 = mpz(n0)
    check.require(n0.bit_length() >= level.paillier_bits, f"N0 has fewer than {level.paillier_bits} bits")
    for name in ("P", "Q", "A", "B", "T"):
        check.unit(getattr(proof, name), aux.n, name)
    bound = (mpz(1) << (level.ell + level.epsilon)) * gmpy2.isqrt(n0)
    check.in_range(proof.z1, bound, "z1")
    check.in_range(proof.z2, bound, "z2")
    e = _challenge(ctx, level, n0, aux, proof)
    n = aux.n
    R = aux.commit(n0, proof.sigma)
    check.require(aux.commit(proof.z1, proof.w1) == proof.A * aux.pow(proof.P, e) % n, "s^z1 t^w1 != A·P^e")
    check.require(aux.commit(proof.z2, proof.w2) == proof.B * aux.pow(proof.Q, e) % n, "s^z2 t^w2 != B·Q^e")
    check.require(
        aux.pow(proof.Q, proof.z1) * aux.pow(aux.t, proof.v) % n == proof.T * aux.pow(R, e) % n,
        "Q^z1 t^v != T·R^e",
    )
