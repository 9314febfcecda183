"""Π^log* — knowledge of exponent vs Paillier encryption (CGGMP21 App. C.2, Fig. 25).

Statement: the prover's key N0, C = (1+N0)^x·ρ^N0 mod N0², a base point g and X = x·g, and
the verifier's ring-Pedersen (N̂, s, t). Claim: the plaintext of C is the discrete log of X
to base g, and lies in ±2^ℓ (up to ε). Presigning uses it twice: for Γ_i against G_i, and for
Δ_i = k_i·Γ against K_i.

    α ← ±2^(ℓ+ε), μ ← ±2^ℓ·N̂, r ← Z*_N0, γ ← ±2^(ℓ+ε)·N̂
    S = s^x t^μ, A = (1+N0)^α r^N0, Y = α·g, D = s^α t^γ
    z1 = α + e·x, z2 = r·ρ^e mod N0, z3 = γ + e·μ
    verify: z1 ∈ ±2^(ℓ+ε); (1+N0)^z1 z2^N0 = A·C^e; z1·g = Y + e·X; s^z1 t^z3 = D·S^e
"""

from __future__ import annotations

from dataclasses import dataclass

from gmpy2 import mpz

from ..curve import Point
from ..encoding import Decoder, Encoder
from ..levels import SecurityLevel
from ..paillier import PaillierPublicKey, sample_unit
from ..ring_pedersen import RingPedersenParams
from .common import (
    Checker,
    ProofContext,
    bind_paillier,
    bind_ring_pedersen,
    decode_point,
    encode_point,
    paillier_raw,
    sample_pm,
    sample_pm_bits,
)

NAME = "log*"


@dataclass(frozen=True)
class LogStarStatement:
    N0: PaillierPublicKey
    C: int
    X: Point
    g: Point


@dataclass(frozen=True)
class LogStarProof:
    S: int
    A: int
    Y: Point
    D: int
    z1: int
    z2: int
    z3: int

    def to_bytes(self) -> bytes:
        enc = Encoder().uint(self.S).uint(self.A)
        encode_point(enc, self.Y)
        return enc.uint(self.D).int(self.z1).uint(self.z2).int(self.z3).finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> LogStarProof:
        dec = Decoder(data, "Π^log* proof")
        bits = level.max_int_bits()
        S, A = mpz(dec.uint(bits)), mpz(dec.uint(bits))
        Y = decode_point(dec)
        D, z1, z2, z3 = mpz(dec.uint(bits)), mpz(dec.int(bits)), mpz(dec.uint(bits)), mpz(dec.int(bits))
        dec.finish()
        return cls(S, A, Y, D, z1, z2, z3)


def _challenge(
    ctx: ProofContext,
    level: SecurityLevel,
    st: LogStarStatement,
    aux: RingPedersenParams,
    S: int,
    A: int,
    Y: Point,
    D: int,
) -> mpz:
    tr = ctx.transcript(NAME, level)
    bind_paillier(tr, "N0", st.N0)
    bind_ring_pedersen(tr, "aux", aux)
    tr.append_int("C", st.C)
    tr.append_point("X", st.X)
    tr.append_point("g", st.g)
    tr.append_ints("S,A", (S, A))
    tr.append_point("Y", Y)
    tr.append_int("D", D)
    return mpz(tr.challenge_pm("e", level.challenge_bits))


def prove(
    ctx: ProofContext,
    level: SecurityLevel,
    st: LogStarStatement,
    aux: RingPedersenParams,
    x: int,
    rho: int,
) -> LogStarProof:
    l_eps = level.ell + level.epsilon
    alpha = sample_pm_bits(l_eps)
    mu = sample_pm((mpz(1) << level.ell) * aux.n)
    r = sample_unit(st.N0.n)
    gamma = sample_pm((mpz(1) << l_eps) * aux.n)
    S = aux.commit(x, mu)
    A = paillier_raw(st.N0, alpha, r)
    Y = st.g * alpha
    D = aux.commit(alpha, gamma)
    e = _challenge(ctx, level, st, aux, S, A, Y, D)
    return LogStarProof(
        S, A, Y, D, alpha + e * x, r * st.N0.pow_n(rho, e) % st.N0.n, gamma + e * mu
    )


def verify(
    ctx: ProofContext,
    level: SecurityLevel,
    st: LogStarStatement,
    aux: RingPedersenParams,
    proof: LogStarProof,
) -> None:
    check = Checker(NAME)
    N0 = st.N0
    check.ciphertext(N0, st.C, "C")
    check.point(st.X, "X")
    check.point(st.g, "g")
    check.unit(proof.S, aux.n, "S")
    check.ciphertext(N0, proof.A, "A")
    check.point(proof.Y, "Y")
    check.unit(proof.D, aux.n, "D")
    check.unit(proof.z2, N0.n, "z2")
    check.in_range(proof.z1, mpz(1) << (level.ell + level.epsilon), "z1")
    e = _challenge(ctx, level, st, aux, proof.S, proof.A, proof.Y, proof.D)
    check.require(
        paillier_raw(N0, proof.z1, proof.z2) == proof.A * N0.pow_n2(st.C, e) % N0.n2,
        "(1+N0)^z1·z2^N0 != A·C^e",
    )
    check.require(st.g * proof.z1 == proof.Y + st.X * e, "z1·g != Y + e·X")
    check.require(aux.commit(proof.z1, proof.z3) == proof.D * aux.pow(proof.S, e) % aux.n, "s^z1 t^z3 != D·S^e")
