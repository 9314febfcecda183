"""The combined sieve: it never rejects a safe prime and only ever returns safe primes."""

from __future__ import annotations

import secrets

import gmpy2
import numpy as np
import pytest
from gmpy2 import mpz

from fusion_prime.protocol.primes import (
    DEEP_SIEVE_MAX,
    WINDOW,
    _DeepSieve,
    _get_deep_table,
    _sieve_small,
    _sieve_window,
    is_safe_prime,
    naive_safe_prime,
    random_safe_prime,
    sieve_bound,
)


def _slow_marks(q0: mpz, deltas: range, bound: int) -> list[bool]:
    """For each δ: does q0 + 2δ or 2(q0 + 2δ) + 1 have an odd prime factor below ``bound``?

    Independent of the sieve: a gcd with the product of the odd primes below ``bound``, reduced
    first by the product of a block of candidates (a one-level remainder tree) to keep it quick.
    """
    odd_primorial = gmpy2.primorial(bound - 1) // 2
    out: list[bool] = []
    block = 512
    for start in range(deltas.start, deltas.stop, block):
        xs = [(q0 + 2 * d) * (2 * (q0 + 2 * d) + 1) for d in range(start, min(start + block, deltas.stop))]
        product = mpz(1)
        for x in xs:
            product *= x
        rem = odd_primorial % product
        out.extend(gmpy2.gcd(rem % x, x) > 1 for x in xs)
    return out


def test_generated_primes_are_safe_blum_and_sized() -> None:
    for bits in (128, 256, 512):
        p = random_safe_prime(bits)
        assert p.bit_length() == bits
        assert p >> (bits - 2) == 3  # top two bits set: products have exactly 2·bits bits
        assert is_safe_prime(p)
        assert p % 4 == 3


def test_generated_1024_bit_primes_are_safe_with_top_two_bits_set() -> None:
    assert sieve_bound(1024) > WINDOW  # the deep (numpy) stage is in use at this size
    seen = set()
    for _ in range(3):
        p = random_safe_prime(1024)
        assert p.bit_length() == 1024
        assert p >> 1022 == 3
        assert is_safe_prime(p)
        assert gmpy2.is_prime((p - 1) // 2, 40) and gmpy2.is_prime(p, 40)
        seen.add(p)
    assert len(seen) == 3


def test_deep_residues_match_python_modulo() -> None:
    table = _get_deep_table()
    q0 = mpz(secrets.randbits(1535)) | 1
    residues = table.residues(q0, table.count)
    expected = [int(q0 % r) for r in table.r.tolist()]
    assert residues.tolist() == expected


@pytest.mark.parametrize("bound", [1 << 17, 1 << 20])
def test_sieve_marks_exactly_the_candidates_with_a_factor_below_the_bound(bound: int) -> None:
    # whole window: a δ is marked if and only if q or 2q+1 has an odd prime factor below bound
    q0 = mpz(secrets.randbits(300)) | (mpz(1) << 300) | 1
    marks = _sieve_window(q0, bound)
    assert len(marks) == WINDOW
    assert [bool(m) for m in marks] == _slow_marks(q0, range(WINDOW), bound)


def test_deepest_sieve_against_the_slow_check() -> None:
    q0 = mpz(secrets.randbits(1535)) | (mpz(3) << 1533) | 1
    marks = _sieve_window(q0, DEEP_SIEVE_MAX)
    deltas = range(WINDOW - 1024, WINDOW)  # the end of the window, where offsets are largest
    assert [bool(marks[d]) for d in deltas] == _slow_marks(q0, deltas, DEEP_SIEVE_MAX)
    # the deep sieve removes more than the small primes alone
    assert marks.count(0) < _sieve_window(q0, 1 << 17).count(0)


def test_consecutive_windows_match_fresh_sieves() -> None:
    """Offsets carried from window to window give the same marks as sieving each window afresh."""
    bound = 1 << 21
    q0 = mpz(secrets.randbits(1023)) | (mpz(3) << 1021) | 1
    deep = _DeepSieve(q0, bound)
    for w in range(4):
        qw = q0 + 2 * WINDOW * w
        marks = _sieve_small(qw)
        deep.mark(np.frombuffer(marks, dtype=np.uint8))
        assert marks == _sieve_window(qw, bound)
    deltas = range(0, 1024)
    assert [bool(marks[d]) for d in deltas] == _slow_marks(qw, deltas, bound)


def test_the_sieve_never_rejects_a_safe_prime() -> None:
    p = random_safe_prime(512)
    q = mpz((p - 1) // 2)
    for delta in (0, 1, 12345, WINDOW - 1):
        assert _sieve_window(q - 2 * delta, DEEP_SIEVE_MAX)[delta] == 0
    # three windows further on, through carried offsets
    delta = 3 * WINDOW + 77
    q0 = q - 2 * delta
    deep = _DeepSieve(q0, DEEP_SIEVE_MAX)
    for w in range(4):
        marks = _sieve_small(q0 + 2 * WINDOW * w)
        deep.mark(np.frombuffer(marks, dtype=np.uint8))
    assert marks[77] == 0


def test_naive_baseline_also_returns_safe_primes() -> None:
    assert is_safe_prime(naive_safe_prime(128))
