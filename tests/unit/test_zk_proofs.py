"""Every CGGMP21 proof: completeness at both levels, and soundness in practice.

Soundness in practice means: changing any statement element, the session id, the prover's
index, the level, or any single field of the proof makes verification fail; and witnesses
outside the ranges produce proofs that do not verify.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fp_fixtures import paillier_key, ring_pedersen
from gmpy2 import mpz

from fusion_prime.protocol.curve import Point, random_scalar
from fusion_prime.protocol.errors import InvalidInput, InvalidProof
from fusion_prime.protocol.levels import LEVEL_128, LEVEL_TEST, SecurityLevel
from fusion_prime.protocol.paillier import sample_unit
from fusion_prime.protocol.zk import aff_g, enc, fac, log_star, mod, prm, sch
from fusion_prime.protocol.zk.common import ProofContext, paillier_raw, sample_pm_bits

CTX = ProofContext(b"session-0123456789abcdef", 2)

REJECTED = (InvalidProof, InvalidInput)


@dataclass
class Case:
    """One proof instance: how to prove it, verify it, and which statement parts to tweak."""

    name: str
    statement: dict[str, Any]
    prove: Callable[[ProofContext, SecurityLevel, dict[str, Any]], Any]
    verify: Callable[[ProofContext, SecurityLevel, dict[str, Any], Any], None]
    decode: Callable[[bytes, SecurityLevel], Any]
    tweakable: list[str] = field(default_factory=list)


def _tweak(value: Any) -> Any:
    if isinstance(value, Point):
        return value + Point.generator()
    if isinstance(value, tuple):
        return (_tweak(value[0]), *value[1:])
    if isinstance(value, (int, type(mpz(0)))):
        return value + 1
    raise TypeError(type(value))


def _sch_case(level: SecurityLevel) -> Case:
    x = random_scalar()
    return Case(
        "sch",
        {"X": Point.base_mul(x), "x": x},
        lambda c, lv, s: sch.prove(c, lv, s["X"], s["x"]),
        lambda c, lv, s, p: sch.verify(c, lv, s["X"], p),
        lambda b, lv: sch.SchnorrProof.from_bytes(b),
        ["X"],
    )


def _enc_case(level: SecurityLevel) -> Case:
    prover_key, verifier_rp = paillier_key(level, 0), ring_pedersen(level, 1)
    k = random_scalar()
    K, rho = prover_key.encrypt(k)
    return Case(
        "enc",
        {"N0": prover_key.public_key(), "K": K, "aux": verifier_rp.public(), "k": k, "rho": rho},
        lambda c, lv, s: enc.prove(c, lv, prover_key, s["K"], s["aux"], s["k"], s["rho"]),
        lambda c, lv, s, p: enc.verify(c, lv, s["N0"], s["K"], verifier_rp if s["aux"] == verifier_rp else s["aux"], p),
        enc.EncProof.from_bytes,
        ["K"],
    )


def _aff_g_inputs(level: SecurityLevel, x: int, y: int) -> dict[str, Any]:
    verifier_key, prover_key = paillier_key(level, 1), paillier_key(level, 0)
    N0, N1 = verifier_key.public_key(), prover_key.public_key()
    C, _ = N0.encrypt(random_scalar())
    rho, rho_y = sample_unit(N0.n), sample_unit(N1.n)
    D = N0.pow_n2(C, x) * paillier_raw(N0, y, rho) % N0.n2
    Y = paillier_raw(N1, y, rho_y)
    return {"N0": N0, "N1": N1, "C": C, "D": D, "Y": Y, "X": Point.base_mul(x), "x": x, "y": y, "rho": rho,
            "rho_y": rho_y}


def _aff_g_case(level: SecurityLevel, x: int | None = None, y: int | None = None) -> Case:
    verifier_key, prover_key = paillier_key(level, 1), paillier_key(level, 0)
    verifier_rp = ring_pedersen(level, 1)
    x = random_scalar() if x is None else x
    y = sample_pm_bits(level.ell_prime) if y is None else y
    s0 = _aff_g_inputs(level, x, y)

    def statement(s: dict[str, Any], *, prover_side: bool) -> aff_g.AffGStatement:
        N0 = verifier_key if (not prover_side and s["N0"] == verifier_key) else s["N0"]
        N1 = prover_key if (prover_side and s["N1"] == prover_key) else s["N1"]
        return aff_g.AffGStatement(N0, N1, s["C"], s["D"], s["Y"], s["X"])

    return Case(
        "aff-g",
        s0,
        lambda c, lv, s: aff_g.prove(c, lv, statement(s, prover_side=True), verifier_rp.public(), s["x"], s["y"],
                                     s["rho"], s["rho_y"]),
        lambda c, lv, s, p: aff_g.verify(c, lv, statement(s, prover_side=False), verifier_rp, p),
        aff_g.AffGProof.from_bytes,
        ["C", "D", "Y", "X"],
    )


def _log_star_case(level: SecurityLevel, x: int | None = None) -> Case:
    prover_key, verifier_rp = paillier_key(level, 0), ring_pedersen(level, 1)
    x = random_scalar() if x is None else x
    g = Point.base_mul(random_scalar())
    C, rho = prover_key.public_key().encrypt(x)
    st = {"N0": prover_key.public_key(), "C": C, "X": g * x, "g": g, "x": x, "rho": rho}

    def statement(s: dict[str, Any], key: Any) -> log_star.LogStarStatement:
        return log_star.LogStarStatement(key if s["N0"] == key else s["N0"], s["C"], s["X"], s["g"])

    return Case(
        "log*",
        st,
        lambda c, lv, s: log_star.prove(c, lv, statement(s, prover_key), verifier_rp.public(), s["x"], s["rho"]),
        lambda c, lv, s, p: log_star.verify(c, lv, statement(s, prover_key.public_key()), verifier_rp, p),
        log_star.LogStarProof.from_bytes,
        ["C", "X", "g"],
    )


def _mod_case(level: SecurityLevel) -> Case:
    key = paillier_key(level, 0)
    return Case(
        "mod",
        {"N": key.n},
        lambda c, lv, s: mod.prove(c, lv, key),
        lambda c, lv, s, p: mod.verify(c, lv, s["N"], p),
        mod.ModProof.from_bytes,
        ["N"],
    )


def _prm_case(level: SecurityLevel) -> Case:
    secret = ring_pedersen(level, 0)
    return Case(
        "prm",
        {"params": secret.public()},
        lambda c, lv, s: prm.prove(c, lv, secret),
        lambda c, lv, s, p: prm.verify(c, lv, s["params"], p),
        prm.PrmProof.from_bytes,
        [],
    )


def _fac_case(level: SecurityLevel) -> Case:
    key, verifier_rp = paillier_key(level, 0), ring_pedersen(level, 1)
    return Case(
        "fac",
        {"N0": key.n},
        lambda c, lv, s: fac.prove(c, lv, key, verifier_rp.public()),
        lambda c, lv, s, p: fac.verify(c, lv, s["N0"], verifier_rp, p),
        fac.FacProof.from_bytes,
        ["N0"],
    )


BUILDERS = [_sch_case, _enc_case, _aff_g_case, _log_star_case, _mod_case, _prm_case, _fac_case]
NAMES = ["sch", "enc", "aff-g", "log*", "mod", "prm", "fac"]


@pytest.fixture(scope="module", params=list(zip(NAMES, BUILDERS, strict=True)), ids=NAMES)
def proven(request):  # type: ignore[no-untyped-def]
    case = request.param[1](LEVEL_TEST)
    return case, case.prove(CTX, LEVEL_TEST, case.statement)


# completeness ---------------------------------------------------------------------------------
def test_honest_proof_verifies_after_encoding_round_trip(proven) -> None:  # type: ignore[no-untyped-def]
    case, proof = proven
    decoded = case.decode(proof.to_bytes(), LEVEL_TEST)
    assert decoded == proof
    assert decoded.to_bytes() == proof.to_bytes()
    case.verify(CTX, LEVEL_TEST, case.statement, decoded)


@pytest.mark.slow
@pytest.mark.parametrize("builder", BUILDERS, ids=NAMES)
def test_completeness_at_the_default_level(builder) -> None:  # type: ignore[no-untyped-def]
    case = builder(LEVEL_128)
    proof = case.decode(case.prove(CTX, LEVEL_128, case.statement).to_bytes(), LEVEL_128)
    case.verify(CTX, LEVEL_128, case.statement, proof)


# binding to context ---------------------------------------------------------------------------
def test_other_session_or_prover_or_level_fails(proven) -> None:  # type: ignore[no-untyped-def]
    case, proof = proven
    for ctx in (ProofContext(b"session-0123456789abcdeF", 2), ProofContext(CTX.session_id, 3)):
        with pytest.raises(REJECTED):
            case.verify(ctx, LEVEL_TEST, case.statement, proof)
    other_level = dataclasses.replace(LEVEL_TEST, name="test-other", m=LEVEL_TEST.m)
    with pytest.raises(REJECTED):
        case.verify(CTX, other_level, case.statement, proof)


def test_changing_any_statement_element_fails(proven) -> None:  # type: ignore[no-untyped-def]
    case, proof = proven
    for name in case.tweakable:
        changed = dict(case.statement)
        changed[name] = _tweak(changed[name])
        with pytest.raises(REJECTED):
            case.verify(CTX, LEVEL_TEST, changed, proof)


def test_changing_any_proof_field_fails(proven) -> None:  # type: ignore[no-untyped-def]
    case, proof = proven
    for f in dataclasses.fields(proof):
        value = getattr(proof, f.name)
        if f.name in ("a", "b"):  # Π^mod's bit vectors: flip one bit
            value = (1 - value[0], *value[1:])
        else:
            value = _tweak(value)
        with pytest.raises(REJECTED):
            case.verify(CTX, LEVEL_TEST, case.statement, dataclasses.replace(proof, **{f.name: value}))


def test_malformed_encodings_are_rejected(proven) -> None:  # type: ignore[no-untyped-def]
    case, proof = proven
    data = proof.to_bytes()
    for bad in (data[:-1], data + b"\x00", b"", data[:10]):
        with pytest.raises(REJECTED):
            case.decode(bad, LEVEL_TEST)


# ranges ---------------------------------------------------------------------------------------
def test_enc_rejects_plaintext_outside_the_range() -> None:
    case = _enc_case(LEVEL_TEST)
    key = paillier_key(LEVEL_TEST, 0)
    big = mpz(1) << (LEVEL_TEST.ell + LEVEL_TEST.epsilon + 2)
    K, rho = key.public_key().encrypt(big)
    st = dict(case.statement, K=K, k=big, rho=rho)
    with pytest.raises(InvalidProof, match="z1 out of range"):
        case.verify(CTX, LEVEL_TEST, st, case.prove(CTX, LEVEL_TEST, st))


def test_aff_g_rejects_x_or_y_outside_the_ranges() -> None:
    too_big_x = mpz(1) << (LEVEL_TEST.ell + LEVEL_TEST.epsilon + 2)
    case = _aff_g_case(LEVEL_TEST, x=too_big_x)
    with pytest.raises(InvalidProof, match="z1 out of range"):
        case.verify(CTX, LEVEL_TEST, case.statement, case.prove(CTX, LEVEL_TEST, case.statement))
    too_big_y = mpz(1) << (LEVEL_TEST.ell_prime + LEVEL_TEST.epsilon + 2)
    case = _aff_g_case(LEVEL_TEST, y=too_big_y)
    with pytest.raises(InvalidProof, match="z2 out of range"):
        case.verify(CTX, LEVEL_TEST, case.statement, case.prove(CTX, LEVEL_TEST, case.statement))


def test_log_star_rejects_exponent_outside_the_range() -> None:
    big = mpz(1) << (LEVEL_TEST.ell + LEVEL_TEST.epsilon + 2)
    case = _log_star_case(LEVEL_TEST, x=big)
    with pytest.raises(InvalidProof, match="z1 out of range"):
        case.verify(CTX, LEVEL_TEST, case.statement, case.prove(CTX, LEVEL_TEST, case.statement))


def test_proof_objects_do_not_leak_witnesses_into_errors() -> None:
    case = _enc_case(LEVEL_TEST)
    proof = case.prove(CTX, LEVEL_TEST, case.statement)
    try:
        case.verify(ProofContext(b"x" * 16, 2), LEVEL_TEST, case.statement, proof)
    except InvalidProof as exc:
        message = str(exc)
    assert str(case.statement["k"]) not in message and str(int(case.statement["rho"])) not in message
    commitment = sch.commit()
    assert str(commitment.alpha) not in repr(commitment)
