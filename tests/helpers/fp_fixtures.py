"""Pre-generated, public, test-only key material, so tests do not spend minutes in prime generation.

The primes in tests/fixtures/safe_primes.json were produced by
`fusion_prime.protocol.primes.random_safe_prime`; tests that exercise generation itself
generate fresh primes at the small size.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from fusion_prime.protocol.levels import SecurityLevel
from fusion_prime.protocol.paillier import PaillierSecretKey
from fusion_prime.protocol.ring_pedersen import RingPedersenSecret

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@cache
def safe_primes(bits: int) -> tuple[int, ...]:
    data = json.loads((FIXTURES / "safe_primes.json").read_text())
    return tuple(int(p) for p in data[str(bits)])


@cache
def paillier_key(level: SecurityLevel, index: int) -> PaillierSecretKey:
    """The index-th test key of the level (distinct indices give keys with distinct primes)."""
    primes = safe_primes(level.prime_bits)
    return PaillierSecretKey(primes[2 * index], primes[2 * index + 1])


@cache
def ring_pedersen(level: SecurityLevel, index: int) -> RingPedersenSecret:
    return RingPedersenSecret.from_paillier(paillier_key(level, index))
