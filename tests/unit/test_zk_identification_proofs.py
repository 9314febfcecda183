"""The identification proofs Π^mul, Π^dec and Π^aff-p: completeness and soundness in practice.

Same method as test_zk_proofs.py: honest proofs verify at both levels and survive an encoding
round trip; changing the session id, the prover's index, the level, any statement element or
any proof field makes verification fail; and false statements (wrong product, wrong residue,
witnesses outside the ranges, a ciphertext of another value) produce proofs that do not verify.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gmpy2
import pytest
from fp_fixtures import paillier_key, ring_pedersen
from gmpy2 import mpz

from fusion_prime.protocol.curve import Point, Q, random_scalar
from fusion_prime.protocol.encoding import Encoder
from fusion_prime.protocol.errors import InsecureParameters, InvalidInput, InvalidProof
from fusion_prime.protocol.levels import LEVEL_128, LEVEL_TEST, SecurityLevel
from fusion_prime.protocol.paillier import PaillierPublicKey, PaillierSecretKey, sample_unit
from fusion_prime.protocol.ring_pedersen import RingPedersenParams
from fusion_prime.protocol.zk import aff_p, dec, mul, mul_star
from fusion_prime.protocol.zk.common import ProofContext, paillier_raw, sample_pm_bits

CTX = ProofContext(b"session-0123456789abcdef", 2)

REJECTED = (InvalidProof, InvalidInput)

PROVER, VERIFIER, OTHER = 0, 1, 3  # fixture key indices (LEVEL_128 has keys 0..3)


def dec_y_bits(level: SecurityLevel) -> int:
    """A δ-check plaintext bound: MtA sums of up to 2^7 signers, as the identification uses."""
    return level.mta_bound_bits() + 8


@dataclass
class Case:
    """One proof instance: how to prove it, verify it, and how to change each statement element."""

    name: str
    statement: dict[str, Any]
    prove: Callable[[ProofContext, SecurityLevel, dict[str, Any]], Any]
    verify: Callable[[ProofContext, SecurityLevel, dict[str, Any], Any], None]
    decode: Callable[[bytes, SecurityLevel], Any]
    tweaks: dict[str, Any] = field(default_factory=dict)
    # proof field -> ("ct" for Z*_{N²} or "unit" for Z*_N, the secret key whose N it lives under)
    elements: dict[str, tuple[str, PaillierSecretKey]] = field(default_factory=dict)
    # the Fiat–Shamir challenge of (statement, proof), and the proof fields sent before it
    challenge: Callable[[ProofContext, SecurityLevel, dict[str, Any], Any], Any] | None = None
    first_message: tuple[str, ...] = ()


def _tweak(value: Any) -> Any:
    if isinstance(value, Point):
        return value + Point.generator()
    if isinstance(value, (int, type(mpz(0)))):
        return value + 1
    raise TypeError(type(value))


def _other_key(level: SecurityLevel) -> PaillierPublicKey:
    return paillier_key(level, OTHER).public_key()


def _other_aux(level: SecurityLevel) -> RingPedersenParams:
    return ring_pedersen(level, OTHER).public()


def _secret_if_same(key: PaillierPublicKey, secret: Any) -> Any:
    """Use the CRT-accelerated secret key when the statement still names its modulus."""
    return secret if key == secret else key


def _aux_for_verifier(aux: RingPedersenParams, level: SecurityLevel) -> RingPedersenParams:
    secret = ring_pedersen(level, VERIFIER)
    return secret if aux == secret else aux


# Π^mul ----------------------------------------------------------------------------------------
def _mul_inputs(level: SecurityLevel, x: int, y: int, *, c_offset: int = 0, x_in_X: int | None = None) -> dict:
    key = paillier_key(level, PROVER)
    N = key.public_key()
    Y, _ = N.encrypt(y)
    rho, rho_x = sample_unit(N.n), sample_unit(N.n)
    X = paillier_raw(N, x if x_in_X is None else x_in_X, rho_x)
    C = N.pow_n2(Y, x) * paillier_raw(N, c_offset, rho) % N.n2  # Y^x·(1+N)^offset·ρ^N
    return {"N": N, "X": X, "Y": Y, "C": C, "x": x, "rho": rho, "rho_x": rho_x}


def _mul_case(level: SecurityLevel, x: int | None = None, **kwargs: Any) -> Case:
    key = paillier_key(level, PROVER)
    s0 = _mul_inputs(level, random_scalar() if x is None else x, random_scalar(), **kwargs)

    def statement(s: dict[str, Any], *, prover_side: bool) -> mul.MulStatement:
        N = _secret_if_same(s["N"], key) if prover_side else s["N"]
        return mul.MulStatement(N, s["X"], s["Y"], s["C"])

    return Case(
        "mul",
        s0,
        lambda c, lv, s: mul.prove(c, lv, statement(s, prover_side=True), s["x"], s["rho"], s["rho_x"]),
        lambda c, lv, s, p: mul.verify(c, lv, statement(s, prover_side=False), p),
        mul.MulProof.from_bytes,
        {"N": _other_key(level), **{k: _tweak(s0[k]) for k in ("X", "Y", "C")}},
        {"A": ("ct", key), "B": ("ct", key), "u": ("unit", key), "v": ("unit", key)},
        lambda c, lv, s, p: mul._challenge(c, lv, statement(s, prover_side=False), p.A, p.B),
        ("A", "B"),
    )


# Π^dec ----------------------------------------------------------------------------------------
def _dec_case(level: SecurityLevel, y: int | None = None, *, x: int | None = None) -> Case:
    key = paillier_key(level, PROVER)
    y_bits = dec_y_bits(level)
    y = sample_pm_bits(y_bits) if y is None else mpz(y)
    C, rho = key.public_key().encrypt(y)
    s0 = {
        "N0": key.public_key(),
        "C": C,
        "x": y % Q if x is None else x,
        "aux": ring_pedersen(level, VERIFIER).public(),
        "y_bits": y_bits,
        "y": y,
        "rho": rho,
    }

    def statement(s: dict[str, Any], *, prover_side: bool) -> dec.DecStatement:
        N0 = _secret_if_same(s["N0"], key) if prover_side else s["N0"]
        return dec.DecStatement(N0, s["C"], s["x"])

    return Case(
        "dec",
        s0,
        lambda c, lv, s: dec.prove(
            c, lv, statement(s, prover_side=True), s["aux"], s["y"], s["rho"], y_bits=s["y_bits"]
        ),
        lambda c, lv, s, p: dec.verify(
            c, lv, statement(s, prover_side=False), _aux_for_verifier(s["aux"], lv), p, y_bits=s["y_bits"]
        ),
        dec.DecProof.from_bytes,
        {
            "N0": _other_key(level),
            "aux": _other_aux(level),
            "C": _tweak(C),
            "x": (s0["x"] + 1) % Q,
            "y_bits": y_bits + 1,
        },
        {
            "A": ("ct", key),
            "w": ("unit", key),
            "S": ("unit", paillier_key(level, VERIFIER)),
            "T": ("unit", paillier_key(level, VERIFIER)),
        },
        lambda c, lv, s, p: dec._challenge(
            c, lv, statement(s, prover_side=False), s["aux"], s["y_bits"], p.S, p.T, p.A, p.gamma
        ),
        ("S", "T", "A", "gamma"),
    )


# Π^aff-p --------------------------------------------------------------------------------------
def _aff_p_case(
    level: SecurityLevel, x: int | None = None, y: int | None = None, *, x_in_X: int | None = None
) -> Case:
    verifier_key, prover_key = paillier_key(level, VERIFIER), paillier_key(level, PROVER)
    N0, N1 = verifier_key.public_key(), prover_key.public_key()
    x = random_scalar() if x is None else x
    y = sample_pm_bits(level.ell_prime) if y is None else y
    C, _ = N0.encrypt(random_scalar())
    rho, rho_x, rho_y = sample_unit(N0.n), sample_unit(N1.n), sample_unit(N1.n)
    s0 = {
        "N0": N0,
        "N1": N1,
        "C": C,
        "D": N0.pow_n2(C, x) * paillier_raw(N0, y, rho) % N0.n2,
        "Y": paillier_raw(N1, y, rho_y),
        "X": paillier_raw(N1, x if x_in_X is None else x_in_X, rho_x),
        "aux": ring_pedersen(level, VERIFIER).public(),
        "x": x,
        "y": y,
        "rho": rho,
        "rho_x": rho_x,
        "rho_y": rho_y,
    }

    def statement(s: dict[str, Any], *, prover_side: bool) -> aff_p.AffPStatement:
        N0 = s["N0"] if prover_side else _secret_if_same(s["N0"], verifier_key)
        N1 = _secret_if_same(s["N1"], prover_key) if prover_side else s["N1"]
        return aff_p.AffPStatement(N0, N1, s["C"], s["D"], s["Y"], s["X"])

    return Case(
        "aff-p",
        s0,
        lambda c, lv, s: aff_p.prove(
            c, lv, statement(s, prover_side=True), s["aux"], s["x"], s["y"], s["rho"], s["rho_x"], s["rho_y"]
        ),
        lambda c, lv, s, p: aff_p.verify(c, lv, statement(s, prover_side=False), _aux_for_verifier(s["aux"], lv), p),
        aff_p.AffPProof.from_bytes,
        {
            "N0": _other_key(level),
            "N1": _other_key(level),
            "aux": _other_aux(level),
            **{k: _tweak(s0[k]) for k in ("C", "D", "Y", "X")},
        },
        {
            "A": ("ct", verifier_key),
            "Bx": ("ct", prover_key),
            "By": ("ct", prover_key),
            "w": ("unit", verifier_key),
            "wx": ("unit", prover_key),
            "wy": ("unit", prover_key),
            **{k: ("unit", paillier_key(level, VERIFIER)) for k in ("E", "S", "F", "T")},  # N̂ = N_verifier
        },
        lambda c, lv, s, p: aff_p._challenge(c, lv, statement(s, prover_side=False), s["aux"], p),
        ("A", "Bx", "By", "E", "S", "F", "T"),
    )


# Π^mul* ---------------------------------------------------------------------------------------
def _mul_star_case(level: SecurityLevel, x: int | None = None) -> Case:
    prover_key = paillier_key(level, PROVER)
    N0 = prover_key.public_key()
    x = random_scalar() if x is None else x
    C, _ = N0.encrypt(random_scalar())
    rho = sample_unit(N0.n)
    s0 = {"N0": N0, "C": C, "D": N0.pow_n2(C, x) * N0.rho_to_n(rho) % N0.n2, "X": Point.base_mul(x),
          "aux": ring_pedersen(level, VERIFIER).public(), "x": x, "rho": rho}

    def statement(s: dict[str, Any], *, prover_side: bool) -> mul_star.MulStarStatement:
        N0 = _secret_if_same(s["N0"], prover_key) if prover_side else s["N0"]
        return mul_star.MulStarStatement(N0, s["C"], s["D"], s["X"])

    return Case(
        "mul*",
        s0,
        lambda c, lv, s: mul_star.prove(c, lv, statement(s, prover_side=True), s["aux"], s["x"], s["rho"]),
        lambda c, lv, s, p: mul_star.verify(c, lv, statement(s, prover_side=False),
                                            _aux_for_verifier(s["aux"], lv), p),
        mul_star.MulStarProof.from_bytes,
        {"N0": _other_key(level), "aux": _other_aux(level), **{k: _tweak(s0[k]) for k in ("C", "D", "X")}},
        {"A": ("ct", prover_key), "w": ("unit", prover_key),
         **{k: ("unit", paillier_key(level, VERIFIER)) for k in ("E", "S")}},
        lambda c, lv, s, p: mul_star._challenge(c, lv, statement(s, prover_side=False), s["aux"], p.A, p.Bx, p.E,
                                                p.S),
        ("A", "Bx", "E", "S"),
    )


BUILDERS = [_mul_case, _dec_case, _aff_p_case, _mul_star_case]
NAMES = ["mul", "dec", "aff-p", "mul*"]


@pytest.fixture(scope="module", params=list(zip(NAMES, BUILDERS, strict=True)), ids=NAMES)
def proven(request):  # type: ignore[no-untyped-def]
    case = request.param[1](LEVEL_TEST)
    return case, case.prove(CTX, LEVEL_TEST, case.statement)


def _prove_and_verify(case: Case, level: SecurityLevel = LEVEL_TEST) -> None:
    case.verify(CTX, level, case.statement, case.prove(CTX, level, case.statement))


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


def test_completeness_at_the_edges_of_the_ranges() -> None:
    lv = LEVEL_TEST
    _prove_and_verify(_aff_p_case(lv, x=-(mpz(1) << lv.ell), y=mpz(1) << lv.ell_prime))
    _prove_and_verify(_aff_p_case(lv, x=mpz(1) << lv.ell, y=-(mpz(1) << lv.ell_prime)))
    _prove_and_verify(_dec_case(lv, y=-(mpz(1) << dec_y_bits(lv))))
    _prove_and_verify(_dec_case(lv, y=mpz(1) << dec_y_bits(lv)))
    _prove_and_verify(_dec_case(lv, y=0))
    _prove_and_verify(_mul_case(lv, x=random_scalar() - Q))  # a negative multiplier


def test_dec_on_a_homomorphically_combined_ciphertext() -> None:
    """The identification use: the prover knows the plaintext sum and recovers ρ with its key."""
    lv = LEVEL_TEST
    key = paillier_key(lv, PROVER)
    N0 = key.public_key()
    k, g = random_scalar(), random_scalar()
    beta = sample_pm_bits(lv.ell_prime)
    K, _ = N0.encrypt(k)
    B, _ = N0.encrypt(beta)
    C = N0.add(N0.mul(K, g), B)  # enc(k·g + β), randomness unknown to anyone
    y = k * g + beta
    rho = key.recover_randomness(C)
    case = _dec_case(lv)
    st = dict(case.statement, C=C, x=y % Q, y=y, rho=rho)
    case.verify(CTX, lv, st, case.prove(CTX, lv, st))


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
    assert case.tweaks
    for name, value in case.tweaks.items():
        assert value != case.statement[name]
        with pytest.raises(REJECTED):
            case.verify(CTX, LEVEL_TEST, dict(case.statement, **{name: value}), proof)


def test_challenge_binds_every_statement_element_and_first_message_field(proven) -> None:  # type: ignore[no-untyped-def]
    """Checked on the challenge itself, so a binding cannot hide behind a failing equation."""
    case, proof = proven
    assert case.challenge is not None and case.first_message
    e = case.challenge(CTX, LEVEL_TEST, case.statement, proof)
    for name, value in case.tweaks.items():
        assert case.challenge(CTX, LEVEL_TEST, dict(case.statement, **{name: value}), proof) != e, name
    for name in case.first_message:
        changed = dataclasses.replace(proof, **{name: _tweak(getattr(proof, name))})
        assert case.challenge(CTX, LEVEL_TEST, case.statement, changed) != e, name
    assert {f.name for f in dataclasses.fields(proof)} - set(case.first_message)  # responses exist


def test_changing_any_proof_field_fails(proven) -> None:  # type: ignore[no-untyped-def]
    case, proof = proven
    for f in dataclasses.fields(proof):
        for value in (_tweak(getattr(proof, f.name)), -getattr(proof, f.name), mpz(0)):
            if value == getattr(proof, f.name):
                continue
            with pytest.raises(REJECTED):
                case.verify(CTX, LEVEL_TEST, case.statement, dataclasses.replace(proof, **{f.name: value}))


def test_group_elements_are_validated_before_use(proven) -> None:  # type: ignore[no-untyped-def]
    """Ciphertexts outside Z*_{N²}, commitments outside Z*_N̂, responses outside Z*_N: named."""
    case, proof = proven
    assert case.elements
    if "aux" in case.statement:
        assert case.statement["aux"].n == paillier_key(LEVEL_TEST, VERIFIER).n
    for name, (kind, key) in case.elements.items():
        bad_values = (0, key.p, key.n2) if kind == "ct" else (0, key.q, key.n)
        for bad in bad_values:
            with pytest.raises(InvalidProof, match=r"not in Z\*_N|not a ciphertext"):
                case.verify(CTX, LEVEL_TEST, case.statement, dataclasses.replace(proof, **{name: bad}))


def test_malformed_encodings_are_rejected(proven) -> None:  # type: ignore[no-untyped-def]
    case, proof = proven
    data = proof.to_bytes()
    for bad in (data[:-1], data + b"\x00", b"", data[:10], data + Encoder().uint(1).finish()):
        with pytest.raises(REJECTED):
            case.decode(bad, LEVEL_TEST)


# false statements: Π^mul ----------------------------------------------------------------------
def test_mul_rejects_a_product_that_is_off_by_one() -> None:
    case = _mul_case(LEVEL_TEST, c_offset=1)  # C encrypts x·y + 1
    with pytest.raises(InvalidProof, match=r"Y\^z·u\^N != A·C\^e"):
        _prove_and_verify(case)


def test_mul_rejects_x_other_than_the_plaintext_of_X() -> None:
    case = _mul_case(LEVEL_TEST, x_in_X=random_scalar())
    with pytest.raises(InvalidProof, match=r"\(1\+N\)\^z·v\^N != B·X\^e"):
        _prove_and_verify(case)


def test_mul_bounds_z_before_exponentiating() -> None:
    case = _mul_case(LEVEL_TEST)
    proof = case.prove(CTX, LEVEL_TEST, case.statement)
    too_big = mul.z_bound(LEVEL_TEST, case.statement["N"]) + 1
    with pytest.raises(InvalidProof, match="z out of range"):
        case.verify(CTX, LEVEL_TEST, case.statement, dataclasses.replace(proof, z=too_big))


# false statements: Π^dec ----------------------------------------------------------------------
def test_dec_rejects_x_other_than_y_mod_q() -> None:
    y = sample_pm_bits(dec_y_bits(LEVEL_TEST))
    case = _dec_case(LEVEL_TEST, y=y, x=(y + 1) % Q)
    with pytest.raises(InvalidProof, match=r"z1 != gamma \+ e·x \(mod q\)"):
        _prove_and_verify(case)


def test_dec_rejects_a_plaintext_beyond_y_bits() -> None:
    big = mpz(1) << (dec_y_bits(LEVEL_TEST) + LEVEL_TEST.epsilon + 2)
    with pytest.raises(InvalidProof, match="z1 out of range"):
        _prove_and_verify(_dec_case(LEVEL_TEST, y=big))


def test_dec_rejects_a_witness_shifted_by_a_multiple_of_n0() -> None:
    """y' = dec(C) + k·N0 also opens C and can be ≡ any x' (mod q): only the z1 range stops it.

    This is the reason Π^dec checks z1 although the paper's figure does not: the forged proof
    below passes every equation of the figure.
    """
    lv = LEVEL_TEST
    case = _dec_case(lv)
    st = case.statement
    N0, y = st["N0"], st["y"]
    x_forged = (y + 12345) % Q
    k = (x_forged - y) * gmpy2.invert(N0.n, Q) % Q
    y_forged = y + k * N0.n
    assert y_forged % Q == x_forged and paillier_raw(N0, y_forged, st["rho"]) == st["C"]
    forged_st = dict(st, x=x_forged, y=y_forged)
    proof = case.prove(CTX, lv, forged_st)
    # every equation of the paper's figure holds...
    e = dec._challenge(CTX, lv, dec.DecStatement(N0, st["C"], x_forged), st["aux"], st["y_bits"],
                       proof.S, proof.T, proof.A, proof.gamma)
    assert paillier_raw(N0, proof.z1, proof.w) == proof.A * N0.pow_n2(st["C"], e) % N0.n2
    assert (proof.z1 - proof.gamma - e * x_forged) % Q == 0
    aux = st["aux"]
    assert aux.commit(proof.z1, proof.z2) == proof.T * aux.pow(proof.S, e) % aux.n
    # ...and the range check is what rejects it
    with pytest.raises(InvalidProof, match="z1 out of range"):
        case.verify(CTX, lv, forged_st, proof)


def test_dec_refuses_a_plaintext_bound_the_modulus_cannot_support() -> None:
    lv = LEVEL_TEST
    case = _dec_case(lv)
    proof = case.prove(CTX, lv, case.statement)
    too_many = lv.paillier_bits - lv.epsilon - 2
    for bits in (too_many, 0, -5, True):
        st = dict(case.statement, y_bits=bits)
        with pytest.raises(InsecureParameters):
            case.verify(CTX, lv, st, proof)
        with pytest.raises(InsecureParameters):
            case.prove(CTX, lv, st)
    # a bound the 128-bit level allows, but a test-level N0 cannot support: the prover's key is blamed
    st = dict(case.statement, y_bits=lv.paillier_bits - lv.epsilon)
    with pytest.raises(InvalidProof, match="N0 too small"):
        case.verify(CTX, LEVEL_128, st, proof)


def test_dec_gamma_must_be_reduced_mod_q() -> None:
    case = _dec_case(LEVEL_TEST)
    proof = case.prove(CTX, LEVEL_TEST, case.statement)
    with pytest.raises(InvalidProof, match="gamma not in Z_q"):
        case.verify(CTX, LEVEL_TEST, case.statement, dataclasses.replace(proof, gamma=proof.gamma + Q))
    encoded = dataclasses.replace(proof, gamma=mpz(1) << 256).to_bytes()
    with pytest.raises(InvalidInput, match="exceeds 256 bits"):
        dec.DecProof.from_bytes(encoded, LEVEL_TEST)


# false statements: Π^aff-p --------------------------------------------------------------------
def test_aff_p_rejects_x_or_y_outside_the_ranges() -> None:
    too_big_x = mpz(1) << (LEVEL_TEST.ell + LEVEL_TEST.epsilon + 2)
    with pytest.raises(InvalidProof, match="z1 out of range"):
        _prove_and_verify(_aff_p_case(LEVEL_TEST, x=too_big_x))
    too_big_y = mpz(1) << (LEVEL_TEST.ell_prime + LEVEL_TEST.epsilon + 2)
    with pytest.raises(InvalidProof, match="z2 out of range"):
        _prove_and_verify(_aff_p_case(LEVEL_TEST, y=-too_big_y))


def test_aff_p_rejects_X_encrypting_another_x() -> None:
    case = _aff_p_case(LEVEL_TEST, x_in_X=random_scalar())
    with pytest.raises(InvalidProof, match=r"\(1\+N1\)\^z1·wx\^N1 != Bx·X\^e"):
        _prove_and_verify(case)


def test_aff_p_rejects_Y_encrypting_another_y() -> None:
    case = _aff_p_case(LEVEL_TEST)
    st = case.statement
    N1 = st["N1"]
    st = dict(st, Y=paillier_raw(N1, st["y"] + 1, st["rho_y"]))
    with pytest.raises(InvalidProof, match=r"\(1\+N1\)\^z2·wy\^N1 != By·Y\^e"):
        case.verify(CTX, LEVEL_TEST, st, case.prove(CTX, LEVEL_TEST, st))


def test_witnesses_do_not_appear_in_errors_or_reprs() -> None:
    case = _dec_case(LEVEL_TEST)
    proof = case.prove(CTX, LEVEL_TEST, case.statement)
    with pytest.raises(InvalidProof) as info:
        case.verify(ProofContext(b"x" * 16, 2), LEVEL_TEST, case.statement, proof)
    message = str(info.value)
    assert str(case.statement["y"]) not in message and str(int(case.statement["rho"])) not in message


def test_mul_star_rejects_x_outside_the_range_or_off_its_commitment() -> None:
    big = mpz(1) << (LEVEL_TEST.ell + LEVEL_TEST.epsilon + 2)
    case = _mul_star_case(LEVEL_TEST, x=big)
    with pytest.raises(InvalidProof, match="z1 out of range"):
        _prove_and_verify(case)
    case = _mul_star_case(LEVEL_TEST)
    lying = dict(case.statement, X=Point.base_mul(case.statement["x"] + 1))
    with pytest.raises(InvalidProof):
        case.verify(CTX, LEVEL_TEST, lying, case.prove(CTX, LEVEL_TEST, lying))
