"""Π^aff-g — Paillier affine operation with group commitment in range (CGGMP21 §6.2, Fig. 15).

The MtA proof of presigning. The prover (party i) takes the verifier's ciphertext C (under
the verifier's key N0), and publishes D = C^x·(1+N0)^y·ρ^N0 mod N0² and Y = enc_N1(y; ρ_y)
under its own key N1, together with X = x·G. Claim: x ∈ ±2^ℓ and y ∈ ±2^ℓ' (with slack ε),
the x inside D is the discrete log of X, and the y inside D is the plaintext of Y.

    α ← ±2^(ℓ+ε), β ← ±2^(ℓ'+ε), r ← Z*_N0, r_y ← Z*_N1,
    γ, δ ← ±2^(ℓ+ε)·N̂, m, μ ← ±2^ℓ·N̂
    A = C^α (1+N0)^β r^N0 mod N0², B_x = α·G, B_y = (1+N1)^β r_y^N1 mod N1²,
    E = s^α t^γ, S = s^x t^m, F = s^β t^δ, T = s^y t^μ  (mod N̂)
    z1 = α + e·x, z2 = β + e·y, z3 = γ + e·m, z4 = δ + e·μ,
    w = r·ρ^e mod N0, w_y = r_y·ρ_y^e mod N1
    verify: z1 ∈ ±2^(ℓ+ε), z2 ∈ ±2^(ℓ'+ε),
            C^z1 (1+N0)^z2 w^N0 = A·D^e mod N0², z1·G = B_x + e·X,
            (1+N1)^z2 w_y^N1 = B_y·Y^e mod N1², s^z1 t^z3 = E·S^e, s^z2 t^z4 = F·T^e
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

NAME = "aff-g"


@dataclass(frozen=True)
class AffGStatement:
    """Public values: verifier's key N0, prover's key N1, C and D under N0, Y under N1, X."""

    N0: PaillierPublicKey
    N1: PaillierPublicKey
    C: int
    D: int
    Y: int
    X: Point


@dataclass(frozen=True)
class AffGProof:
    A: int
    Bx: Point
    By: int
    E: int
    S: int
    F: int
    T: int
    z1: int
    z2: int
    z3: int
    z4: int
    w: int
    wy: int

    def to_bytes(self) -> bytes:
        enc = Encoder().uint(self.A)
        encode_point(enc, self.Bx)
        for v in (self.By, self.E, self.S, self.F, self.T):
            enc.uint(v)
        for v in (self.z1, self.z2, self.z3, self.z4):
            enc.int(v)
        return enc.uint(self.w).uint(self.wy).finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> AffGProof:
        dec = Decoder(data, "Π^aff-g proof")
        bits = level.max_int_bits()
        A = mpz(dec.uint(bits))
        Bx = decode_point(dec)
        By, E, S, F, T = (mpz(dec.uint(bits)) for _ in range(5))
        z1, z2, z3, z4 = (mpz(dec.int(bits)) for _ in range(4))
        w, wy = mpz(dec.uint(bits)), mpz(dec.uint(bits))
        dec.finish()
        return cls(A, Bx, By, E, S, F, T, z1, z2, z3, z4, w, wy)


def _challenge(
    ctx: ProofContext, level: SecurityLevel, st: AffGStatement, aux: RingPedersenParams, pf: AffGProof
) -> mpz:
    tr = ctx.transcript(NAME, level)
    bind_paillier(tr, "N0", st.N0)
    bind_paillier(tr, "N1", st.N1)
    bind_ring_pedersen(tr, "aux", aux)
    tr.append_ints("C,D,Y", (st.C, st.D, st.Y))
    tr.append_point("X", st.X)
    tr.append_int("A", pf.A)
    tr.append_point("Bx", pf.Bx)
    tr.append_ints("By,E,S,F,T", (pf.By, pf.E, pf.S, pf.F, pf.T))
    return mpz(tr.challenge_pm("e", level.challenge_bits))


def prove(
    ctx: ProofContext,
    level: SecurityLevel,
    st: AffGStatement,
    aux: RingPedersenParams,
    x: int,
    y: int,
    rho: int,
    rho_y: int,
) -> AffGProof:
    """``st.N1`` may be the prover's secret key: its encryptions then use CRT."""
    l_eps = level.ell + level.epsilon
    alpha = sample_pm_bits(l_eps)
    beta = sample_pm_bits(level.ell_prime + level.epsilon)
    r = sample_unit(st.N0.n)
    r_y = sample_unit(st.N1.n)
    gamma = sample_pm((mpz(1) << l_eps) * aux.n)
    m = sample_pm((mpz(1) << level.ell) * aux.n)
    delta = sample_pm((mpz(1) << l_eps) * aux.n)
    mu = sample_pm((mpz(1) << level.ell) * aux.n)

    A = st.N0.pow_n2(st.C, alpha) * paillier_raw(st.N0, beta, r) % st.N0.n2
    commitment = AffGProof(
        A=A,
        Bx=Point.base_mul(alpha),
        By=paillier_raw(st.N1, beta, r_y),
        E=aux.commit(alpha, gamma),
        S=aux.commit(x, m),
        F=aux.commit(beta, delta),
        T=aux.commit(y, mu),
        z1=mpz(0), z2=mpz(0), z3=mpz(0), z4=mpz(0), w=mpz(0), wy=mpz(0),
    )
    e = _challenge(ctx, level, st, aux, commitment)
    return AffGProof(
        A=commitment.A,
        Bx=commitment.Bx,
        By=commitment.By,
        E=commitment.E,
        S=commitment.S,
        F=commitment.F,
        T=commitment.T,
        z1=alpha + e * x,
        z2=beta + e * y,
        z3=gamma + e * m,
        z4=delta + e * mu,
        w=r * st.N0.pow_n(rho, e) % st.N0.n,
        wy=r_y * st.N1.pow_n(rho_y, e) % st.N1.n,
    )


def verify(
    ctx: ProofContext,
    level: SecurityLevel,
    st: AffGStatement,
    aux: RingPedersenParams,
    proof: AffGProof,
) -> None:
    """``st.N0`` and ``aux`` may be the verifier's secret key and parameters (CRT)."""
    check = Checker(NAME)
    N0, N1 = st.N0, st.N1
    check.ciphertext(N0, st.C, "C")
    check.ciphertext(N0, st.D, "D")
    check.ciphertext(N1, st.Y, "Y")
    check.point(st.X, "X")
    check.ciphertext(N0, proof.A, "A")
    check.point(proof.Bx, "Bx")
    check.ciphertext(N1, proof.By, "By")
    for name in ("E", "S", "F", "T"):
        check.unit(getattr(proof, name), aux.n, name)
    check.unit(proof.w, N0.n, "w")
    check.unit(proof.wy, N1.n, "wy")
    check.in_range(proof.z1, mpz(1) << (level.ell + level.epsilon), "z1")
    check.in_range(proof.z2, mpz(1) << (level.ell_prime + level.epsilon), "z2")
    e = _challenge(ctx, level, st, aux, proof)

    lhs = N0.pow_n2(st.C, proof.z1) * paillier_raw(N0, proof.z2, proof.w) % N0.n2
    check.require(lhs == proof.A * N0.pow_n2(st.D, e) % N0.n2, "C^z1·(1+N0)^z2·w^N0 != A·D^e")
    check.require(Point.base_mul(proof.z1) == proof.Bx + st.X * e, "z1·G != Bx + e·X")
    check.require(
        paillier_raw(N1, proof.z2, proof.wy) == proof.By * N1.pow_n2(st.Y, e) % N1.n2,
        "(1+N1)^z2·wy^N1 != By·Y^e",
    )
    check.require(aux.commit(proof.z1, proof.z3) == proof.E * aux.pow(proof.S, e) % aux.n, "s^z1 t^z3 != E·S^e")
    check.require(aux.commit(proof.z2, proof.z4) == proof.F * aux.pow(proof.T, e) % aux.n, "s^z2 t^z4 != F·T^e")
