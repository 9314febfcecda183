"""Π^dec — Paillier decryption modulo q (CGGMP21 App. C.6, Fig. 30).

Fig. 30 in the pre-2024-10-21 numbering (``zk/__init__``), as synedrion ("Section C.6, Fig. 30")
and Safeheron ("Section C.6 (Figure 30)") cite it; not read from the paper text itself. (The
2024-10-21 revision's Π^dec, Fig. 28 there, is a different proof: decryption in the exponent.)

Used by the identification procedures after a failed δ- or σ-check: a party shows that the
value it broadcast (δ_i, σ_i) is, modulo the curve order q, the decryption of a ciphertext the
other parties can compute homomorphically from the presigning transcript.

Statement: the prover's key N0, a ciphertext C under N0, x ∈ Z_q, the verifier's ring-Pedersen
parameters (N̂, s, t), and a public bit bound ``y_bits`` that both sides take from the context.
Witness: an integer y with |y| ≤ 2^y_bits and ρ ∈ Z*_N0 such that C = (1+N0)^y·ρ^N0 mod N0²
and y ≡ x (mod q).

    α ← ±2^(y_bits+ε), μ ← ±2^ℓ·N̂, ν ← ±2^(ℓ+ε)·N̂, r ← Z*_N0
    S = s^y t^μ, T = s^α t^ν (mod N̂), A = (1+N0)^α r^N0 mod N0², γ = α mod q
    e ← ±2^challenge_bits (from the transcript, after S, T, A, γ; the paper draws e ← ±q)
    z1 = α + e·y, z2 = ν + e·μ, w = r·ρ^e mod N0
    verify: z1 ∈ ±2^(y_bits+ε);
            (1+N0)^z1·w^N0 = A·C^e mod N0²; z1 ≡ γ + e·x (mod q); s^z1 t^z2 = T·S^e mod N̂

Deviations from the figure, and why:

* **α is sized by y, not by ℓ.** The figure draws α ← ±2^(ℓ+ε), which hides e·y only for
  y ∈ ±2^ℓ. In the identification procedures y is a sum of MtA plaintexts (k·γ plus terms of
  up to ~2^(ℓ'+ε) each), far beyond 2^ℓ, so z1 = α + e·y would leak y. We draw
  α ← ±2^(y_bits+ε): for |y| ≤ 2^y_bits and |e| ≤ 2^c (c = challenge_bits), z1 = α + e·y and
  a simulated z1 = α differ in statistical distance by at most |e·y| / 2^(y_bits+ε) ≤ 2^(c-ε),
  and the level guarantees ε ≥ c + stat_bits. μ and ν keep the figure's sizes: μ ← ±2^ℓ·N̂ already
  makes t^μ statistically uniform in ⟨t⟩ whatever y is, and ν ← ±2^(ℓ+ε)·N̂ hides e·μ.

* **The verifier checks z1 ∈ ±2^(y_bits+ε)** (the figure checks no range). Without it the
  relation is vacuous: for any x' the integer y' = dec(C) + k·N0 with
  k = (x' - dec(C))·N0^(-1) mod q satisfies C = (1+N0)^y'·ρ^N0 and y' ≡ x' (mod q), so an
  honest run of the figure with witness y' "proves" any value modulo q. With the range
  check, the extracted witness y* = (z1 - z1')/(e - e') has |y*| ≤ 2^(y_bits+ε+1), and
  ``y_bits + ε + 3 ≤ bits(N0)`` makes 2^(y_bits+ε+1) < N0/2, so y* is *the* signed
  decryption of C and the claim "dec(C) ≡ x (mod q)" is what is proven. (Soundness of the
  division by e - e' rests on the verifier's ring-Pedersen parameters, as for Π^enc.)
  Completeness: an honest z1 leaves the range with probability at most 2^(c-ε) (α near the
  edge), the same negligible error as Π^enc / Π^aff-g / Π^log*.

* **y_bits is bound into the challenge**, so a proof made for one bound never verifies
  under another.

Choosing y_bits: for the δ-check of n signers the plaintext is k_i·γ_i + Σ_j (α_ij + β_ij),
so y_bits = level.mta_bound_bits() + ⌈log2 n⌉ + 1 is safe. ``check_y_bits`` refuses a bound
for which the level's smallest modulus could not make the decryption unique
(y_bits + ε + 3 > paillier_bits): at LEVEL_128 that leaves room for y_bits ≤ 2839, at the
2048-bit test level for y_bits ≤ 1815.
"""

from __future__ import annotations

from dataclasses import dataclass

from gmpy2 import mpz

from ..curve import Q
from ..encoding import Decoder, Encoder
from ..errors import InsecureParameters
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

NAME = "dec"

# Room between the extracted witness bound 2^(y_bits+ε+1) and N0/2 ≥ 2^(bits(N0)-2).
_MODULUS_MARGIN_BITS = 3


@dataclass(frozen=True)
class DecStatement:
    """Public values: the prover's key N0, C under N0, and the claimed residue x ∈ Z_q."""

    N0: PaillierPublicKey
    C: int
    x: int


@dataclass(frozen=True)
class DecProof:
    S: int
    T: int
    A: int
    gamma: int
    z1: int
    z2: int
    w: int

    def to_bytes(self) -> bytes:
        enc = Encoder().uint(self.S).uint(self.T).uint(self.A).uint(self.gamma)
        return enc.int(self.z1).int(self.z2).uint(self.w).finish()

    @classmethod
    def from_bytes(cls, data: bytes, level: SecurityLevel) -> DecProof:
        dec = Decoder(data, "Π^dec proof")
        bits = level.max_int_bits()
        fields = (
            dec.uint(bits),
            dec.uint(bits),
            dec.uint(bits),
            dec.uint(Q.bit_length()),
            dec.int(bits),
            dec.int(bits),
            dec.uint(bits),
        )
        dec.finish()
        return cls(*(mpz(f) for f in fields))


def check_y_bits(level: SecurityLevel, y_bits: int) -> None:
    """Refuse a plaintext bound the level's moduli cannot make unique (a caller's error)."""
    if isinstance(y_bits, bool) or not isinstance(y_bits, int) or y_bits < 1:
        raise InsecureParameters("Π^dec: y_bits must be a positive integer")
    if y_bits + level.epsilon + _MODULUS_MARGIN_BITS > level.paillier_bits:
        raise InsecureParameters(
            f"Π^dec: y_bits = {y_bits} too large for {level.paillier_bits}-bit moduli "
            "(decryption modulo q would not be unique)"
        )


def _challenge(
    ctx: ProofContext,
    level: SecurityLevel,
    st: DecStatement,
    aux: RingPedersenParams,
    y_bits: int,
    S: int,
    T: int,
    A: int,
    gamma: int,
) -> mpz:
    tr = ctx.transcript(NAME, level)
    tr.append_ints("q,y-bits", (Q, y_bits))
    bind_paillier(tr, "N0", st.N0)
    bind_ring_pedersen(tr, "aux", aux)
    tr.append_ints("C,x", (st.C, st.x))
    tr.append_ints("S,T,A,gamma", (S, T, A, gamma))
    return mpz(tr.challenge_pm("e", level.challenge_bits))


def prove(
    ctx: ProofContext,
    level: SecurityLevel,
    st: DecStatement,
    aux: RingPedersenParams,
    y: int,
    rho: int,
    *,
    y_bits: int,
) -> DecProof:
    """``st.N0`` should be the prover's secret key (CRT; ``recover_randomness`` gives ρ)."""
    check_y_bits(level, y_bits)
    N0 = st.N0
    alpha = sample_pm_bits(y_bits + level.epsilon)
    mu = sample_pm((mpz(1) << level.ell) * aux.n)
    nu = sample_pm((mpz(1) << (level.ell + level.epsilon)) * aux.n)
    r = sample_unit(N0.n)
    S = aux.commit(y, mu)
    T = aux.commit(alpha, nu)
    A = paillier_raw(N0, alpha, r)
    gamma = alpha % Q
    e = _challenge(ctx, level, st, aux, y_bits, S, T, A, gamma)
    return DecProof(
        S=S,
        T=T,
        A=A,
        gamma=gamma,
        z1=alpha + e * mpz(y),
        z2=nu + e * mu,
        w=r * N0.pow_n(rho, e) % N0.n,
    )


def verify(
    ctx: ProofContext,
    level: SecurityLevel,
    st: DecStatement,
    aux: RingPedersenParams,
    proof: DecProof,
    *,
    y_bits: int,
) -> None:
    """``aux`` may be the verifier's secret ring-Pedersen parameters (CRT)."""
    check_y_bits(level, y_bits)
    check = Checker(NAME)
    N0 = st.N0
    check.require(
        N0.bits >= y_bits + level.epsilon + _MODULUS_MARGIN_BITS, "N0 too small for the plaintext bound"
    )
    check.ciphertext(N0, st.C, "C")
    check.require(0 <= st.x < Q, "x not in Z_q")
    check.unit(proof.S, aux.n, "S")
    check.unit(proof.T, aux.n, "T")
    check.ciphertext(N0, proof.A, "A")
    check.require(0 <= proof.gamma < Q, "gamma not in Z_q")
    check.unit(proof.w, N0.n, "w")
    check.in_range(proof.z1, mpz(1) << (y_bits + level.epsilon), "z1")
    e = _challenge(ctx, level, st, aux, y_bits, proof.S, proof.T, proof.A, proof.gamma)
    check.require(
        paillier_raw(N0, proof.z1, proof.w) == proof.A * N0.pow_n2(st.C, e) % N0.n2,
        "(1+N0)^z1·w^N0 != A·C^e",
    )
    check.require((proof.z1 - proof.gamma - e * st.x) % Q == 0, "z1 != gamma + e·x (mod q)")
    check.require(aux.commit(proof.z1, proof.z2) == proof.T * aux.pow(proof.S, e) % aux.n, "s^z1 t^z2 != T·S^e")
