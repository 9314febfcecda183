"""Security levels: the sizes every proof and every Paillier key must respect.

A level is checked when it is built, so an inconsistent parameter set cannot exist at run
time. The constraints and where they come from (CGGMP21, eprint 2021/060, §2–§5 and the
parameter discussion of the threshold protocol; cggmp21's ``SecurityLevel128``):

* ``m >= 80`` repetitions of the binary-challenge proofs Π^mod and Π^prm. With m rounds a
  cheating prover wins with probability 2^-m; TSSHOCK's "c-guess" attack broke
  implementations that used a handful of rounds.
* ``challenge_bits >= 128``: the challenge e of Π^enc, Π^aff-g, Π^log*, Π^fac is uniform in
  ±2^challenge_bits. (The paper draws e from ±q; like cggmp21 we decouple the challenge size
  from the curve so that ε can be sized for it — see the next line.)
* ``epsilon >= challenge_bits + stat_bits``: the masks α ∈ ±2^(ℓ+ε) must statistically hide
  e·x for x ∈ ±2^ℓ, so the responses z = α + e·x leak nothing about the witness.
* ``ell >= 256``: every secp256k1 scalar an honest party encrypts fits in ±2^ℓ.
* ``ell_prime >= 2·ell + epsilon + stat_bits``: in MtA, the sender's mask β ∈ ±2^ℓ' must
  drown x·k even when the receiver's k is only proven to lie in ±2^(ℓ+ε).
* MtA no-wrap: ``2^(2(ℓ+ε)) + 2^(ℓ'+ε) < N/2`` for the smallest allowed N, i.e.
  ``max(2(ℓ+ε), ℓ'+ε) + 2 <= paillier_bits - 2``. The receiver decrypts x·k + y as an
  integer in (-N/2, N/2) and reduces it mod q; if the sum could wrap mod N, the result would
  be wrong mod q and the presignature would fail for honest parties, or leak.
* Π^fac needs ``paillier_bits >= 4·ell + 2·epsilon + 2``. The verifier accepts z1, z2 in
  ±√N0·2^(ℓ+ε), so the extracted factors are only bounded by √N0·2^(ℓ+ε); a factor p ≤ 2^ℓ
  forces the other to N0/2^ℓ, which exceeds that bound - and is caught - only when
  N0 > 2^(4ℓ+2ε). Below that size the proof says nothing about small factors.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InsecureParameters

MIN_REPETITIONS = 80


@dataclass(frozen=True)
class SecurityLevel:
    name: str
    paillier_bits: int
    ell: int
    ell_prime: int
    epsilon: int
    challenge_bits: int
    m: int
    stat_bits: int = 80
    test_only: bool = False

    def __post_init__(self) -> None:
        problems = list(self._violations())
        if problems:
            raise InsecureParameters(f"security level {self.name!r} rejected: " + "; ".join(problems))

    def _violations(self):  # type: ignore[no-untyped-def]
        if self.m < MIN_REPETITIONS:
            yield f"m = {self.m} repetitions < {MIN_REPETITIONS}"
        if self.challenge_bits < 128:
            yield f"challenges of {self.challenge_bits} bits < 128"
        if self.epsilon < self.challenge_bits + self.stat_bits:
            yield "epsilon too small to hide e·x (epsilon < challenge_bits + stat_bits)"
        if self.ell < 256:
            yield "ell < 256: secp256k1 scalars do not fit in ±2^ell"
        if self.ell_prime < 2 * self.ell + self.epsilon + self.stat_bits:
            yield "ell_prime too small: MtA mask beta does not drown x·k"
        if self.mta_bound_bits() > self.paillier_bits - 2:
            yield "MtA sums may wrap modulo N (2^(2(ell+eps)) + 2^(ell'+eps) >= N/2)"
        if self.paillier_bits < 4 * self.ell + 2 * self.epsilon + 2:
            yield "Paillier modulus smaller than 4·ell + 2·epsilon: Π^fac cannot exclude factors below 2^ell"
        if self.identification_bits() + self.epsilon + 3 > self.paillier_bits:
            yield "Paillier modulus too small for the signing identification (Π^dec would not be unique)"
        if self.paillier_bits % 2:
            yield "paillier_bits must be even (two primes of equal size)"
        if not self.test_only and self.paillier_bits < 3072:
            yield "production levels need Paillier moduli of at least 3072 bits"

    # derived sizes used by the proofs ---------------------------------------------------------
    def mta_bound_bits(self) -> int:
        """Bits of the largest |x·k + y| a verified MtA can decrypt to (plus one for the sum)."""
        return max(2 * (self.ell + self.epsilon), self.ell_prime + self.epsilon) + 1

    def identification_bits(self, max_parties: int = 64) -> int:
        """Bound on the plaintext signing's identification decrypts: b·χ_i + a·k_i with a, b < q
        and |χ_i| ≤ 2^(mta_bound + log2(2n) + 1) (a Lagrange-weighted share plus 2(n-1) MtA terms)."""
        return self.ell + self.mta_bound_bits() + (2 * max_parties).bit_length() + 2

    @property
    def prime_bits(self) -> int:
        return self.paillier_bits // 2

    def max_int_bits(self) -> int:
        """Upper bound on the size of any integer in a proof, for decoding limits."""
        return 4 * self.paillier_bits + self.ell_prime + self.epsilon + 64


# The default: 128-bit security (cggmp21 SecurityLevel128: ℓ=256, ℓ'=848, ε=230, m=128,
# challenges of 128 bits; Paillier moduli of 3072 bits).
LEVEL_128 = SecurityLevel(
    name="128",
    paillier_bits=3072,
    ell=256,
    ell_prime=848,
    epsilon=230,
    challenge_bits=128,
    m=128,
)

# For fast tests only: same ranges and challenges, so every range check is exercised at its
# real size, but 2048-bit moduli (the smallest size the identification proofs fit in) and the
# minimum m. The node refuses it outside tests.
LEVEL_TEST = SecurityLevel(
    name="test-2048",
    paillier_bits=2048,
    ell=256,
    ell_prime=848,
    epsilon=230,
    challenge_bits=128,
    m=MIN_REPETITIONS,
    test_only=True,
)

LEVELS = {level.name: level for level in (LEVEL_128, LEVEL_TEST)}


def level_by_name(name: str) -> SecurityLevel:
    try:
        return LEVELS[name]
    except KeyError:
        raise InsecureParameters(f"unknown security level {name!r}") from None
