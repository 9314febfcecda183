"""Paillier: round trips, homomorphisms, CRT = plain arithmetic, ciphertext validation."""

from __future__ import annotations

import gmpy2
import pytest
from fp_fixtures import paillier_key
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_prime.protocol.errors import InsecureParameters, InvalidInput
from fusion_prime.protocol.levels import LEVEL_TEST
from fusion_prime.protocol.paillier import PaillierPublicKey, PaillierSecretKey, sample_unit
from fusion_prime.protocol.primes import random_safe_prime

KEY = paillier_key(LEVEL_TEST, 0)
PUB = KEY.public_key()
HALF = int(PUB.half_n)
plaintexts = st.integers(min_value=-HALF, max_value=HALF)
small = st.integers(min_value=-(2**600), max_value=2**600)


@settings(max_examples=60, deadline=None)
@given(plaintexts)
def test_round_trip(m: int) -> None:
    c, _ = PUB.encrypt(m)
    assert KEY.decrypt(c) == m


@settings(max_examples=40, deadline=None)
@given(small, small, st.integers(min_value=-(2**256), max_value=2**256))
def test_homomorphic_identities(a: int, b: int, k: int) -> None:
    ca, _ = PUB.encrypt(a)
    cb, _ = KEY.encrypt(b)  # encryption under the secret key (CRT) is the same function
    assert KEY.decrypt(PUB.add(ca, cb)) == a + b
    assert KEY.decrypt(PUB.mul(ca, k)) == a * k
    assert KEY.decrypt(PUB.add(PUB.mul(ca, k), cb)) == a * k + b


@settings(max_examples=20, deadline=None)
@given(small, st.integers(min_value=-(2**900), max_value=2**900))
def test_crt_arithmetic_equals_plain_arithmetic(m: int, e: int) -> None:
    rho = sample_unit(PUB.n)
    assert KEY.encrypt_with(m, rho) == PUB.encrypt_with(m, rho)
    assert KEY.pow_n2(rho, e) == gmpy2.powmod(rho, e, PUB.n2)
    assert KEY.pow_n(rho, e) == gmpy2.powmod(rho, e, PUB.n)


def test_randomness_is_recoverable() -> None:
    c, rho = PUB.encrypt(-12345)
    assert KEY.recover_randomness(c) == rho


@pytest.mark.parametrize(
    "bad",
    [0, lambda k: k.n2, lambda k: k.n2 + 5, lambda k: k.p, lambda k: k.q * 7, lambda k: -1],
    ids=["zero", "N^2", "above N^2", "p", "multiple of q", "negative"],
)
def test_ciphertexts_outside_the_group_are_rejected(bad) -> None:  # type: ignore[no-untyped-def]
    value = bad(KEY) if callable(bad) else bad
    with pytest.raises(InvalidInput):
        PUB.validate_ciphertext(value)
    with pytest.raises(InvalidInput):
        KEY.decrypt(value)


def test_plaintext_range_is_enforced() -> None:
    with pytest.raises(InvalidInput):
        PUB.encrypt(HALF + 1)


def test_key_generation_from_fresh_safe_primes() -> None:
    key = PaillierSecretKey.generate(768)
    assert key.bits == 768
    key.check_factors()
    assert key.p % 4 == 3 and key.q % 4 == 3
    c, _ = key.encrypt(42)
    assert key.decrypt(c) == 42


def test_non_safe_factors_are_refused() -> None:
    p = random_safe_prime(256)
    q = gmpy2.next_prime(2**255 + 2**254)  # a prime, almost surely not safe
    while (q - 1) // 2 % 2 == 0 or gmpy2.is_prime((q - 1) // 2):
        q = gmpy2.next_prime(q)
    with pytest.raises(InsecureParameters):
        PaillierSecretKey(p, int(q)).check_factors()


def test_repr_shows_no_secret() -> None:
    text = repr(KEY) + str(KEY)
    for secret in (KEY.p, KEY.q, KEY.phi):
        assert str(int(secret)) not in text
        assert format(int(secret), "x") not in text
    assert "PaillierSecretKey" in text
    assert PaillierPublicKey(KEY.n) == PUB
