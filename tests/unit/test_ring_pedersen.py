"""Ring-Pedersen parameters: the TSSHOCK c-split family of bad parameters is refused."""

from __future__ import annotations

import gmpy2
import pytest
from fp_fixtures import paillier_key, ring_pedersen

from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.levels import LEVEL_TEST
from fusion_prime.protocol.ring_pedersen import RingPedersenParams

RP = ring_pedersen(LEVEL_TEST, 0)
N = RP.n


@pytest.mark.parametrize(
    ("s", "t", "why"),
    [
        (lambda: RP.s, lambda: 1, "t = 1"),
        (lambda: RP.s, lambda: N - 1, "t = -1"),
        (lambda: RP.s, lambda: 0, "t = 0"),
        (lambda: RP.s, lambda: N, "t = N"),
        (lambda: 0, lambda: RP.t, "s = 0"),
        (lambda: N + RP.s, lambda: RP.t, "s >= N"),
        (lambda: paillier_key(LEVEL_TEST, 0).p, lambda: RP.t, "s shares a factor with N"),
        (lambda: RP.s, lambda: paillier_key(LEVEL_TEST, 0).q * 3, "t shares a factor with N"),
        (lambda: RP.t, lambda: RP.t, "s = t"),
    ],
)
def test_bad_parameters_are_rejected(s, t, why) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        RingPedersenParams(N, s(), t())


def test_commitment_is_s_to_x_t_to_y_and_crt_agrees() -> None:
    x, y = -(2**300) + 17, 2**900 + 5
    expected = gmpy2.powmod(RP.s, x, N) * gmpy2.powmod(RP.t, y, N) % N
    assert RP.commit(x, y) == expected
    assert RP.public().commit(x, y) == expected
    assert RP.s == gmpy2.powmod(RP.t, RP.lam, N)


def test_repr_shows_no_trapdoor() -> None:
    text = repr(RP)
    assert str(int(RP.lam)) not in text and format(int(RP.lam), "x") not in text


def test_fixed_base_batch_equals_plain_exponentiation() -> None:
    import secrets

    exponents = [secrets.randbits(1600) for _ in range(20)] + [0, 1, 2**1535]
    assert RP.public().pow_t_many(exponents) == [gmpy2.powmod(RP.t, e, N) for e in exponents]
