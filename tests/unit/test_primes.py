"""The combined sieve: it never rejects a safe prime and only ever returns safe primes."""

from __future__ import annotations

import gmpy2
from gmpy2 import mpz

from fusion_prime.protocol.primes import (
    WINDOW,
    _sieve_window,
    is_safe_prime,
    naive_safe_prime,
    random_safe_prime,
)


def test_generated_primes_are_safe_blum_and_sized() -> None:
    for bits in (128, 256, 512):
        p = random_safe_prime(bits)
        assert p.bit_length() == bits
        assert p >> (bits - 2) == 3  # top two bits set: products have exactly 2·bits bits
        assert is_safe_prime(p)
        assert p % 4 == 3


def test_sieve_marks_exactly_the_candidates_with_small_factors() -> None:
    q0 = mpz(2**200 + 1)
    marks = _sieve_window(q0)
    assert len(marks) == WINDOW
    for delta in range(0, 3000):
        q = q0 + 2 * delta
        survives = marks[delta] == 0
        if gmpy2.is_prime(q, 30) and gmpy2.is_prime(2 * q + 1, 30):
            assert survives, "the sieve rejected a safe prime"
        if not survives:
            small = [r for r in (3, 5, 7, 11, 13) if q % r == 0 or (2 * q + 1) % r == 0]
            assert small or any(q % r == 0 or (2 * q + 1) % r == 0 for r in range(3, 1 << 17, 2))


def test_naive_baseline_also_returns_safe_primes() -> None:
    assert is_safe_prime(naive_safe_prime(128))
