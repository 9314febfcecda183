"""Π^aff-p — Paillier affine operation with Paillier commitment in range (CGGMP21 App. C).

Figure number unknown: no implementation found cites one for Π^aff-p (taurushq-io/multi-party-sig,
webb-tools/cggmp-threshold-ecdsa and apache/incubator-milagro-mpc implement it without a number),
and the paper text was not available. An earlier note here said "Fig. 26"; that is unconfirmed.
In the numbering the rest of the package uses (``zk/__init__``) Π^aff-g is Fig. 15; in the
2024-10-21 revision it is Fig. 25.

The twin of Π^aff-g (``aff_g.py``) for the identification procedures, where the multiplier x
is committed as a Paillier ciphertext X = enc_N1(x; ρ_x) under the prover's own key instead of
as a group element x·G: a party re-proves its MtA ciphertexts against its own published
encryption of the multiplier (e.g. G_i = enc(γ_i)).

The prover (party i) takes the verifier's ciphertext C (under the verifier's key N0) and
publishes D = C^x·(1+N0)^y·ρ^N0 mod N0², Y = enc_N1(y; ρ_y) and X = enc_N1(x; ρ_x) under its
own key N1. Claim: x ∈ ±2^ℓ and y ∈ ±2^ℓ' (with slack ε), the x inside D is the plaintext of
X, and the y inside D is the plaintext of Y.

    α ← ±2^(ℓ+ε), β ← ±2^(ℓ'+ε), r ← Z*_N0, r_x, r_y ← Z*_N1,
    γ, δ ← ±2^(ℓ+ε)·N̂, m, μ ← ±2^ℓ·N̂
    A = C^α (1+N0)^β r^N0 mod N0²,
    B_x = (1+N1)^α r_x^N1, B_y = (1+N1)^β r_y^N1 mod N1²,
    E = s^α t^γ, S = s^x t^m, F = s^β t^δ, T = s^y t^μ  (mod N̂)
    e ← ±2^challenge_bits (from the transcript; the paper draws e ← ±q)
    z1 = α + e·x, z2 = β + e·y, z3 = γ + e·m, z4 = δ + e·μ,
    w = r·ρ^e mod N0, w_x = r_x·ρ_x^e mod N1, w_y = r_y·ρ_y^e mod N1
    verify: z1 ∈ ±2^(ℓ+ε), z2 ∈ ±2^(ℓ'+ε),
            C^z1 (1+N0)^z2 w^N0 = A·D^e mod N0²,
            (1+N1)^z1 w_x^N1 = B_x·X^e mod N1², (1+N1)^z2 w_y^N1 = B_y·Y^e mod N1²,
            s^z1 t^z3 = E·S^e, s^z2 t^z4 = F·T^e (mod N̂)

The ranges and the zero-knowledge margin are exactly Π^aff-g's (ε ≥ challenge_bits +
stat_bits, checked by the level).
"""

from __future__ import annotations

from dataclasses import dataclass

from gmpy2 import mpz

from ..encoding import Decoder, Encoder
from ..levels import SecurityLevel
from ..paillier import PaillierPublicKey, sample_unit
from ..ring_pedersen import RingPedersenParams
from .common import (
    Checker,
    ProofContext,
    bind_paillier,
    bind_ring_pedersen,
    paillier_raw,
    sample_pm,
    sample_pm_bits,
)

NAME = "aff-p"


@dataclass(frozen=True)
class AffPStatement:
    """Public values: verifier's key N0, prover's key N1, C and D under N0, Y and X under N1."""

    N0: PaillierPublicKey
    N1: PaillierPublicKey
    C: int
    D: int
    Y: int
    X: int


@dataclass(frozen=True)
class AffPProof:
    A: int
    Bx: int
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
    wx: int
    wy: int

    def to_bytes(self) -> bytes:
        enc = Encoder()
        for v in (self.A, self.Bx, self.By, self.E, self.S, self.F, self.T):
            enc.uint(v)
        for v in (self.z1, self.z2, self.z3, self.z4):
            enc.int(v)
        return enc.uint(self.w).uint(self.wx).uint(self.wy).finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> AffPProof:
        dec = Decoder(data, "Π^aff-p proof")
        bits = level.max_int_bits()
        A, Bx, By, E, S, F, T = (mpz(dec.uint(bits)) for _ in range(7))
        z1, z2, z3, z4 = (mpz(dec.int(bits)) for _ in range(4))
        w, wx, wy = (mpz(dec.uint(bits)) for _ in range(3))
        dec.finish()
        return cls(A, Bx, By, E, S, F, T, z1, z2, z3, z4, w, wx, wy)


def _challenge(
    ctx: ProofContext, level: SecurityLevel, st: AffPStatement, aux: RingPedersenParams, pf: AffPProof
) -> mpz:
    tr = ctx.transcript(NAME, level)
    bind_paillier(tr, "N0", st.N0)
    bind_paillier(tr, "N1", st.N1)
    bind_ring_pedersen(tr, "aux", aux)
    tr.append_ints("C,D,Y,X", (st.C, st.D, st.Y, st.X))
    tr.append_ints("A,Bx,By,E,S,F,T", (pf.A, pf.Bx, pf.By, pf.E, pf.S, pf.F, pf.T))
    return mpz(tr.challenge_pm("e", level.challenge_bits))


def prove(
    ctx: ProofContext,
    level: SecurityLevel,
    st: AffPStatement,
    aux: RingPedersenParams,
    x: int,
    y: int,
    rho: int,
    rho_x: int,
    rho_y: int,
) -> AffPProof:
    """``st.N1`` may be the prover's secret key: its encryptions then use CRT."""
    l_eps = level.ell + level.epsilon
    alpha = sample_pm_bits(l_eps)
    beta = sample_pm_bits(level.ell_prime + level.epsilon)
    r = sample_unit(st.N0.n)
    r_x = sample_unit(st.N1.n)
    r_y = sample_unit(st.N1.n)
    gamma = sample_pm((mpz(1) << l_eps) * aux.n)
    m = sample_pm((mpz(1) << level.ell) * aux.n)
    delta = sample_pm((mpz(1) << l_eps) * aux.n)
    mu = sample_pm((mpz(1) << level.ell) * aux.n)

    A = st.N0.pow_n2(st.C, alpha) * paillier_raw(st.N0, beta, r) % st.N0.n2
    commitment = AffPProof(
        A=A,
        Bx=paillier_raw(st.N1, alpha, r_x),
        By=paillier_raw(st.N1, beta, r_y),
        E=aux.commit(alpha, gamma),
        S=aux.commit(x, m),
        F=aux.commit(beta, delta),
        T=aux.commit(y, mu),
        z1=mpz(0), z2=mpz(0), z3=mpz(0), z4=mpz(0), w=mpz(0), wx=mpz(0), wy=mpz(0),
    )
    e = _challenge(ctx, level, st, aux, commitment)
    return AffPProof(
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
        wx=r_x * st.N1.pow_n(rho_x, e) % st.N1.n,
        wy=r_y * st.N1.pow_n(rho_y, e) % st.N1.n,
    )


def verify(
    ctx: ProofContext,
    level: SecurityLevel,
    st: AffPStatement,
    aux: RingPedersenParams,
    proof: AffPProof,
) -> None:
    """``st.N0`` and ``aux`` may be the verifier's secret key and parameters (CRT)."""
    check = Checker(NAME)
    N0, N1 = st.N0, st.N1
    check.ciphertext(N0, st.C, "C")
    check.ciphertext(N0, st.D, "D")
    check.ciphertext(N1, st.Y, "Y")
    check.ciphertext(N1, st.X, "X")
    check.ciphertext(N0, proof.A, "A")
    check.ciphertext(N1, proof.Bx, "Bx")
    check.ciphertext(N1, proof.By, "By")
    for name in ("E", "S", "F", "T"):
        check.unit(getattr(proof, name), aux.n, name)
    check.unit(proof.w, N0.n, "w")
    check.unit(proof.wx, N1.n, "wx")
    check.unit(proof.wy, N1.n, "wy")
    check.in_range(proof.z1, mpz(1) << (level.ell + level.epsilon), "z1")
    check.in_range(proof.z2, mpz(1) << (level.ell_prime + level.epsilon), "z2")
    e = _challenge(ctx, level, st, aux, proof)

    lhs = N0.pow_n2(st.C, proof.z1) * paillier_raw(N0, proof.z2, proof.w) % N0.n2
    check.require(lhs == proof.A * N0.pow_n2(st.D, e) % N0.n2, "C^z1·(1+N0)^z2·w^N0 != A·D^e")
    check.require(
        paillier_raw(N1, proof.z1, proof.wx) == proof.Bx * N1.pow_n2(st.X, e) % N1.n2,
        "(1+N1)^z1·wx^N1 != Bx·X^e",
    )
    check.require(
        paillier_raw(N1, proof.z2, proof.wy) == proof.By * N1.pow_n2(st.Y, e) % N1.n2,
        "(1+N1)^z2·wy^N1 != By·Y^e",
    )
    check.require(aux.commit(proof.z1, proof.z3) == proof.E * aux.pow(proof.S, e) % aux.n, "s^z1 t^z3 != E·S^e")
    check.require(aux.commit(proof.z2, proof.z4) == proof.F * aux.pow(proof.T, e) % aux.n, "s^z2 t^z4 != F·T^e")
