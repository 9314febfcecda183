"""A malicious party in each phase: every honest party aborts and names exactly that party.

The malicious party is played by rewriting its outgoing messages and signing them with its
own identity key (what a real corrupted node can do). Production code has no such hook.
"""

from __future__ import annotations

import contextlib
import secrets

from fp_fixtures import safe_primes
from fp_network import (
    aborts,
    aux_machines,
    committee,
    identities,
    keygen_machines,
    presign,
    presign_machines,
    primes_for,
    roster,
    run,
    sid,
    sign_machines,
    tamper,
)
from gmpy2 import mpz

from fusion_prime.protocol import presign as presign_module
from fusion_prime.protocol.aux_info import AuxInfoMachine
from fusion_prime.protocol.encoding import Decoder, Encoder
from fusion_prime.protocol.levels import LEVEL_TEST
from fusion_prime.protocol.machine import BROADCAST, KIND_MAIN, Status
from fusion_prime.protocol.primes import random_safe_prime
from fusion_prime.protocol.zk import enc, sch


def _main(round_no: int, broadcast: bool = True):  # type: ignore[no-untyped-def]
    return lambda m, _r: m.kind == KIND_MAIN and m.round == round_no and (m.receiver == BROADCAST) == broadcast


def _all_name(machines, honest, culprit) -> None:  # type: ignore[no-untyped-def]
    for i in honest:
        assert machines[i].status is Status.ABORTED, f"party {i} did not abort"
    assert aborts(machines, honest) == {i: (culprit,) for i in honest}


# key generation -------------------------------------------------------------------------------
def test_keygen_bad_schnorr_proof() -> None:
    def change(msg, _r):  # type: ignore[no-untyped-def]
        proof = sch.SchnorrProof.from_bytes(msg.payload)
        return sch.SchnorrProof(proof.A, (proof.z + 1) % sch.Q).to_bytes()

    ms = keygen_machines(2, 3)
    assert run(ms, tamper(3, 2, _main(3), change)) == {}
    _all_name(ms, (1, 3), 2)
    assert "z·G" in ms[1].abort.reason


def test_keygen_wrong_decommitment() -> None:
    def change(msg, _r):  # type: ignore[no-untyped-def]
        return msg.payload[:-1] + bytes([msg.payload[-1] ^ 1])  # the salt's last byte

    ms = keygen_machines(2, 3)
    run(ms, tamper(3, 2, _main(2), change))
    _all_name(ms, (1, 3), 2)
    assert "decommitment" in ms[3].abort.reason


def test_keygen_share_off_its_commitment_is_named_by_everyone() -> None:
    """Only party 3 gets a bad share; party 1 learns through 3's complaint and its evidence."""

    def change(msg, _r):  # type: ignore[no-untyped-def]
        share = int.from_bytes(Decoder(msg.payload).bytes(32), "big")
        return Encoder().bytes(((share + 1) % sch.Q).to_bytes(32, "big")).finish()

    ms = keygen_machines(2, 3)
    run(ms, tamper(3, 2, lambda m, r: m.round == 2 and m.receiver == 3, change))
    _all_name(ms, (1, 3), 2)
    assert "VSS" in ms[1].abort.reason


def test_keygen_equivocation_is_caught_by_the_echo() -> None:
    def change(msg, receiver):  # type: ignore[no-untyped-def]
        return Encoder().bytes(secrets.token_bytes(32)).finish() if receiver == 3 else msg.payload

    ms = keygen_machines(2, 3)
    run(ms, tamper(3, 2, _main(1), change))
    _all_name(ms, (1, 3), 2)
    assert "equivocated" in ms[1].abort.reason


def test_false_complaint_blames_the_complainer() -> None:
    """Party 3 forwards party 2's *valid* share as if it were bad."""
    ms = keygen_machines(2, 3)
    identity3 = identities(3)[3]
    captured: dict[str, bytes] = {}

    def intercept(sender, receiver, raw):  # type: ignore[no-untyped-def]
        from fp_network import resign

        from fusion_prime.protocol.machine import KIND_ECHO, ProtocolMessage

        msg = ProtocolMessage.from_bytes(raw)
        if sender == 2 and receiver == 3 and msg.round == 2 and msg.receiver == 3:
            captured["share"] = raw
        if sender == 3 and msg.kind == KIND_ECHO and msg.round == 2 and "share" in captured:
            dec = Decoder(msg.payload)
            entries, _ = dec.list_of_bytes(), dec.list_of_bytes()
            complaint = Encoder().uint(2).bytes(captured["share"]).finish()
            payload = Encoder().list_of_bytes(entries).list_of_bytes([complaint]).finish()
            return [resign(raw, identity3, payload)]
        return [raw]

    run(ms, intercept)
    assert aborts(ms, (1, 2)) == {1: (3,), 2: (3,)}


# aux info ---------------------------------------------------------------------------------------
def test_bitforge_modulus_with_small_factor_is_named_and_nothing_is_kept() -> None:
    ms = aux_machines(3)
    small = random_safe_prime(64)
    primes = safe_primes(LEVEL_TEST.prime_bits)
    big = mpz(primes[10]) * mpz(primes[11])  # only its size matters
    import gmpy2

    q = int(gmpy2.next_prime(big // small + 2**40))
    while q % 4 != 3:
        q = int(gmpy2.next_prime(q))
    session = ms[1].session_id
    ids = identities(3)
    ms[2] = AuxInfoMachine(session, 2, [1, 2, 3], ids[2], roster(3), level=LEVEL_TEST, primes=(small, q))
    out = run(ms)
    assert out == {}
    _all_name(ms, (1, 3), 2)
    assert "fac" in ms[1].abort.reason
    assert ms[1].output is None and ms[3].output is None


def test_aux_info_bad_mod_proof_is_named() -> None:
    def change(msg, _r):  # type: ignore[no-untyped-def]
        from fusion_prime.protocol.zk import mod

        proof = mod.ModProof.from_bytes(msg.payload, LEVEL_TEST)
        return mod.ModProof(proof.w, proof.x, (1 - proof.a[0], *proof.a[1:]), proof.b, proof.z).to_bytes()

    ms = aux_machines(3)
    run(ms, tamper(3, 3, _main(3), change))
    _all_name(ms, (1, 2), 3)


# presigning -----------------------------------------------------------------------------------
def test_presign_bad_enc_proof_to_one_party() -> None:
    def change(msg, _r):  # type: ignore[no-untyped-def]
        proof = enc.EncProof.from_bytes(msg.payload, LEVEL_TEST)
        return enc.EncProof(proof.S, proof.A, proof.C, proof.z1 + 1, proof.z2, proof.z3).to_bytes()

    ms = presign_machines(2, 3, (1, 2, 3))
    run(ms, tamper(3, 1, lambda m, r: m.round == 1 and m.receiver == 2, change))
    _all_name(ms, (2, 3), 1)


def test_presign_out_of_range_mta_value_is_named() -> None:
    """Party 3 uses an MtA mask far beyond ±2^ℓ' (the Alpha-Rays style of attack)."""
    ms = presign_machines(2, 3, (1, 2, 3))
    evil = ms[3]
    honest_round2 = evil._presign_round2

    def evil_round2():  # type: ignore[no-untyped-def]
        original = presign_module.sample_pm_bits
        presign_module.sample_pm_bits = lambda bits: original(bits + 300)
        try:
            return honest_round2()
        finally:
            presign_module.sample_pm_bits = original

    evil._presign_round2 = evil_round2  # type: ignore[method-assign]
    run(ms)
    _all_name(ms, (1, 2), 3)
    assert "aff-g" in ms[1].abort.reason and "out of range" in ms[1].abort.reason


def test_presign_equivocated_gamma() -> None:
    from fusion_prime.protocol.curve import Point

    def change(msg, receiver):  # type: ignore[no-untyped-def]
        if receiver != 1:
            return msg.payload
        return Encoder().bytes(Point.base_mul(secrets.randbelow(2**200) + 1).to_bytes()).finish()

    ms = presign_machines(2, 3, (1, 2, 3))
    run(ms, tamper(3, 2, _main(2), change))
    _all_name(ms, (1, 3), 2)


def test_presign_malformed_message() -> None:
    ms = presign_machines(2, 3, (1, 3))
    run(ms, tamper(3, 3, _main(1), lambda m, r: b"\x00garbage"))
    assert aborts(ms, (1,)) == {1: (3,)}


# signing ----------------------------------------------------------------------------------------
def test_sign_malformed_sigma_is_named() -> None:
    committee(2, 3)
    pre = presign(2, 3, (1, 2))
    ms = sign_machines(2, 3, pre, secrets.token_bytes(32))
    # round 1 is the consumption ack; σ travels in round 2
    run(ms, tamper(3, 2, _main(2), lambda m, r: Encoder().bytes(b"\xff" * 32).finish()))
    assert aborts(ms, (1,)) == {1: (2,)}


def test_no_machine_crashes_on_random_bytes() -> None:
    ms = keygen_machines(2, 3)
    for m in ms.values():
        m.start()
    for blob in (b"", b"\x00", secrets.token_bytes(100), b"\x01" * 5000):
        with contextlib.suppress(Exception):
            pass
        assert ms[1].receive(blob) == []
    assert ms[1].status is Status.RUNNING
    assert len(ms[1].rejected) == 4


def test_session_ids_are_bound() -> None:
    assert sid() != sid()
    _ = primes_for(LEVEL_TEST, 1)
