"""BitForge (CVE-2023-33241) and TSSHOCK against the aux-info proofs.

Each malicious modulus is built for real; its owner runs the proof algorithm with the
factorisation it has (the best a prover can do), and the verifier must reject.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import gmpy2
import pytest
from fp_fixtures import paillier_key, ring_pedersen
from gmpy2 import mpz

from fusion_prime.protocol.errors import InsecureParameters, InvalidInput, InvalidProof
from fusion_prime.protocol.levels import LEVEL_TEST, SecurityLevel
from fusion_prime.protocol.primes import random_safe_prime
from fusion_prime.protocol.ring_pedersen import RingPedersenParams
from fusion_prime.protocol.zk import fac, mod, prm
from fusion_prime.protocol.zk.common import ProofContext

LEVEL = LEVEL_TEST
CTX = ProofContext(b"bitforge-session-000001", 3)
BITS = LEVEL.paillier_bits


def _prime(bits: int, mod4: int) -> int:
    while True:
        p = gmpy2.next_prime(mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)))
        if p % 4 == mod4 and p.bit_length() == bits:
            return int(p)


@dataclass
class Claimed:
    """What a malicious prover holds: N and the factorisation it will prove with."""

    n: int
    p: int
    q: int
    phi: int

    def pow_n(self, base: int, exponent: int) -> mpz:
        return gmpy2.powmod(base, exponent, self.n)


def _small_factor() -> Claimed:
    p = random_safe_prime(64)  # a small Blum factor: Π^mod alone cannot see it
    q = _prime(BITS - 64 + 1, 3)
    return Claimed(p * q, p, q, (p - 1) * (q - 1))


def _p_squared_q() -> Claimed:
    p, q = _prime(BITS // 3, 3), _prime(BITS - 2 * (BITS // 3) + 1, 3)
    return Claimed(p * p * q, p * p, q, p * (p - 1) * (q - 1))


def _prime_modulus() -> Claimed:
    p = _prime(BITS, 3)
    return Claimed(p, p, 1, p - 1)


def _undersized() -> Claimed:
    p, q = random_safe_prime(BITS // 2 - 128), random_safe_prime(BITS // 2 - 128)
    return Claimed(p * q, p, q, (p - 1) * (q - 1))


def _non_blum() -> Claimed:
    p, q = _prime(BITS // 2, 1), _prime(BITS // 2, 3)
    return Claimed(p * q, p, q, (p - 1) * (q - 1))


def _try_mod(claimed: Claimed, level: SecurityLevel) -> mod.ModProof:
    try:
        return mod.prove(CTX, level, claimed)  # type: ignore[arg-type]
    except (ZeroDivisionError, ValueError):
        # No N-th roots exist / no inverse: send the best-looking garbage of the right shape.
        rnd = [mpz(secrets.randbelow(claimed.n)) for _ in range(level.m)]
        return mod.ModProof(mpz(2), tuple(rnd), (0,) * level.m, (0,) * level.m, tuple(rnd))


def _try_fac(claimed: Claimed) -> fac.FacProof:
    return fac.prove(CTX, LEVEL, claimed, ring_pedersen(LEVEL, 1).public())  # type: ignore[arg-type]


def _rejects(verify, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises((InvalidProof, InvalidInput)) as info:
        verify(*args)
    return str(info.value)


def test_small_factor_modulus_is_caught_by_fac() -> None:
    bad = _small_factor()
    assert bad.n.bit_length() >= BITS
    reason = _rejects(fac.verify, CTX, LEVEL, bad.n, ring_pedersen(LEVEL, 1), _try_fac(bad))
    assert "fac" in reason


@pytest.mark.parametrize(
    "make", [_p_squared_q, _prime_modulus, _undersized, _non_blum], ids=["p^2q", "prime", "undersized", "non-Blum"]
)
def test_bad_modulus_is_caught_by_mod(make) -> None:  # type: ignore[no-untyped-def]
    bad = make()
    reason = _rejects(mod.verify, CTX, LEVEL, bad.n, _try_mod(bad, LEVEL))
    assert reason.startswith("mod:")


@pytest.mark.parametrize("make", [_prime_modulus, _undersized], ids=["prime", "undersized"])
def test_fac_also_rejects_prime_and_undersized(make) -> None:  # type: ignore[no-untyped-def]
    bad = make()
    _rejects(fac.verify, CTX, LEVEL, bad.n, ring_pedersen(LEVEL, 1), _try_fac(bad))


def test_honest_modulus_passes_both() -> None:
    key = paillier_key(LEVEL, 0)
    mod.verify(CTX, LEVEL, key.n, mod.prove(CTX, LEVEL, key))
    fac.verify(CTX, LEVEL, key.n, ring_pedersen(LEVEL, 1), fac.prove(CTX, LEVEL, key, ring_pedersen(LEVEL, 1).public()))


def _forge_prm(params: RingPedersenParams, level: SecurityLevel) -> tuple[prm.PrmProof, list[int]]:
    """Guess each challenge bit: A_i = t^z_i · s^(-g_i). Right guesses pass their round."""
    n = params.n
    guesses = [secrets.randbits(1) for _ in range(level.m)]
    zs = tuple(mpz(secrets.randbelow(int(n))) for _ in range(level.m))
    s_inv = gmpy2.invert(params.s, n)
    A = tuple(gmpy2.powmod(params.t, z, n) * (s_inv if g else 1) % n for z, g in zip(zs, guesses, strict=True))
    return prm.PrmProof(A, zs), guesses


def test_prm_rejects_s_outside_the_subgroup_of_t() -> None:
    """s = -t^λ is not in ⟨t⟩ ⊆ QR(N). The prover does not know a discrete log, so it can
    only guess challenge bits (TSSHOCK c-guess); a guessed round passes exactly when the
    guess matches, so with m = 1 the forgery would succeed half the time — with m ≥ 80 never."""
    honest = ring_pedersen(LEVEL, 0)
    bad = RingPedersenParams(honest.n, honest.n - honest.s, honest.t)
    forged, guesses = _forge_prm(bad, LEVEL)
    # the per-round equation holds exactly on the rounds whose guess was right
    tr_bits = prm._challenges(CTX, LEVEL, bad, forged.A)
    matched = [i for i in range(LEVEL.m) if tr_bits[i] == guesses[i]]
    for i in matched:
        expected = forged.A[i] * (bad.s if tr_bits[i] else 1) % bad.n
        assert gmpy2.powmod(bad.t, forged.z[i], bad.n) == expected
    assert 0 < len(matched) < LEVEL.m
    _rejects(prm.verify, CTX, LEVEL, bad, forged)


def test_levels_refuse_few_repetitions() -> None:
    import dataclasses

    for m in (1, 8, 79):
        with pytest.raises(InsecureParameters):
            dataclasses.replace(LEVEL, m=m)


def test_mod_and_prm_proofs_must_have_m_rounds() -> None:
    key = paillier_key(LEVEL, 0)
    proof = mod.prove(CTX, LEVEL, key)
    short = mod.ModProof(proof.w, proof.x[:1], proof.a[:1], proof.b[:1], proof.z[:1])
    _rejects(mod.verify, CTX, LEVEL, key.n, short)
    with pytest.raises(InvalidInput):
        mod.ModProof.from_bytes(short.to_bytes(), LEVEL)
    secret = ring_pedersen(LEVEL, 0)
    p = prm.prove(CTX, LEVEL, secret)
    _rejects(prm.verify, CTX, LEVEL, secret.public(), prm.PrmProof(p.A[:1], p.z[:1]))
