"""Security levels check their own inequalities."""

from __future__ import annotations

import dataclasses

import pytest

from fusion_prime.protocol.errors import InsecureParameters
from fusion_prime.protocol.levels import LEVEL_128, LEVEL_TEST, level_by_name


def test_default_level_is_cggmp21_security_level_128() -> None:
    lv = LEVEL_128
    assert (lv.ell, lv.ell_prime, lv.epsilon, lv.m, lv.challenge_bits) == (256, 848, 230, 128, 128)
    assert lv.paillier_bits >= 3072 and not lv.test_only
    assert LEVEL_TEST.test_only and LEVEL_TEST.m >= 80
    assert level_by_name("128") is LEVEL_128


@pytest.mark.parametrize("level", [LEVEL_128, LEVEL_TEST], ids=lambda lv: lv.name)
def test_mta_sums_cannot_wrap_modulo_n(level) -> None:  # type: ignore[no-untyped-def]
    """|x·k + y| for x, k ∈ ±2^(ℓ+ε), y ∈ ±2^(ℓ'+ε) — the worst a verified MtA allows —
    stays below N/2 for the smallest N the level accepts."""
    smallest_n = 2 ** (level.paillier_bits - 1)
    worst = 2 ** (level.ell + level.epsilon) * 2 ** (level.ell + level.epsilon) + 2 ** (level.ell_prime + level.epsilon)
    assert worst < smallest_n // 2
    # and the masks hide what they must hide
    assert level.epsilon >= level.challenge_bits + level.stat_bits
    assert level.ell_prime >= 2 * level.ell + level.epsilon + level.stat_bits


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"m": 79}, "repetitions"),
        ({"m": 1}, "repetitions"),
        ({"challenge_bits": 64, "epsilon": 230}, "challenges"),
        ({"epsilon": 100}, "epsilon"),
        ({"ell_prime": 600}, "ell_prime"),
        ({"paillier_bits": 1024, "test_only": True}, "wrap"),
        ({"paillier_bits": 1480, "test_only": True}, r"Π\^fac cannot exclude"),  # 1480 < 4·256 + 2·230 + 2
        ({"paillier_bits": 2048}, "3072"),
        ({"ell": 128}, "ell"),
    ],
)
def test_inconsistent_levels_cannot_be_built(change: dict, message: str) -> None:
    with pytest.raises(InsecureParameters, match=message):
        dataclasses.replace(LEVEL_128, **change)


def test_unknown_level_name() -> None:
    with pytest.raises(InsecureParameters):
        level_by_name("toy")
