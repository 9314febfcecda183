"""Two colluding signers in the identification rounds (issue 11, item 3).

In presign round 4 and sign's identification round each signer reveals the presign round-2
messages it received, signed by their senders. Two colluders can put *any* element in such a
message: the sender signs it, the receiver reveals it without ever having complained about it.
Before the fix an honest verifier computed ``pow(F, -1, N²)`` on a revealed F = 0 (or a multiple
of a factor of N) and a ``ValueError`` escaped the machine — and the node. Now every revealed
element is validated like any received one, and an invalid one names both colluders: the signer
(its signature is on an invalid element) and the revealer (an honest receiver verifies exactly
these ciphertexts with Π^aff-g in round 2 and would have complained then; revealing a message it
accepted silently, or never received, is its own fault).

The colluders are played through the real message path: their outgoing messages are rewritten
and re-signed with their own identity keys (``resign``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fp_network import aborts, committee, identities, presign_machines, presign_with, resign, run, sign_machines_with
from gmpy2 import mpz

from fusion_prime.protocol.curve import Q, scalar_to_bytes
from fusion_prime.protocol.encoding import Decoder, Encoder
from fusion_prime.protocol.machine import BROADCAST, KIND_MAIN, ProtocolMessage, Status

# the presign round-2 private payload: D, F, D̂, F̂ then three proofs
D, F, D_HAT, F_HAT = range(4)


def _forge_round2(raw: bytes, which: int, value: int) -> bytes:
    """The same presign round-2 message with one ciphertext replaced, re-signed by its sender
    (the colluding signer)."""
    msg = ProtocolMessage.from_bytes(raw)
    d = Decoder(msg.payload)
    cts = [d.uint() for _ in range(4)]
    proofs = [d.bytes() for _ in range(3)]
    d.finish()
    cts[which] = value
    enc = Encoder()
    for c in cts:
        enc.uint(c)
    for p in proofs:
        enc.bytes(p)
    return resign(raw, identities(3)[msg.sender], enc.finish())


def _reveal_forged(revealer: int, signer: int, round_no: Callable[[], int], which: int, value: int,
                   layout: str):  # type: ignore[no-untyped-def]
    """Intercept: the revealer's identification broadcast carries, in the signer's slot, a
    round-2 message the signer re-signed with one ciphertext replaced."""
    peers = [j for j in (1, 2, 3) if j != revealer]

    def intercept(sender: int, receiver: int, raw: bytes) -> list[bytes]:
        msg = ProtocolMessage.from_bytes(raw)
        if sender != revealer or msg.round != round_no() or msg.kind != KIND_MAIN or msg.receiver != BROADCAST:
            return [raw]
        d = Decoder(msg.payload)
        if layout == "presign":  # H, Π^mul, received, Π^dec list
            H, mul_proof, received, proofs = d.uint(), d.bytes(), d.list_of_bytes(), d.list_of_bytes()
        else:  # sign: H, Π^mul* list, received, Π^dec list
            H, mul_proof, received, proofs = d.uint(), d.list_of_bytes(), d.list_of_bytes(), d.list_of_bytes()
        d.finish()
        received[peers.index(signer)] = _forge_round2(received[peers.index(signer)], which, value)
        enc = Encoder().uint(H)
        enc = enc.bytes(mul_proof) if layout == "presign" else enc.list_of_bytes(mul_proof)
        payload = enc.list_of_bytes(received).list_of_bytes(proofs).finish()
        return [resign(raw, identities(3)[revealer], payload)]

    return intercept


def _lying_about_delta(machine) -> None:  # type: ignore[no-untyped-def]
    """Makes the δ-check fail so that presigning's identification round runs."""
    honest_round3 = machine._presign_round3

    def round3():  # type: ignore[no-untyped-def]
        _, private = honest_round3()
        machine._delta = (machine._delta + 1) % Q
        machine._peer[machine.me].delta = machine._delta
        payload = Encoder().bytes(scalar_to_bytes(machine._delta)).bytes(machine._peer[machine.me].Delta.to_bytes())
        return payload.finish(), private

    machine._presign_round3 = round3


def _presign_collusion(which: int, value_of: Callable[[dict], int]) -> dict:  # type: ignore[type-arg]
    _, aux = committee(2, 3)
    ms = presign_machines(2, 3, (1, 2, 3))
    _lying_about_delta(ms[1])
    # party 1 reveals m(2→1); D and D̂ of it are under N_1, F and F̂ under N_2
    out = run(ms, _reveal_forged(1, 2, lambda: 4, which, value_of(aux), "presign"))
    assert out == {}
    return ms


def _p(aux, i: int) -> mpz:  # type: ignore[no-untyped-def]
    return aux[i].paillier_secret._p


def test_presign_revealed_F_zero_names_both_colluders_and_nobody_crashes() -> None:
    ms = _presign_collusion(F, lambda aux: 0)
    assert ms[3].status is Status.ABORTED
    assert aborts(ms, (3,)) == {3: (1, 2)}
    assert "not a ciphertext" in ms[3].abort.reason


def test_presign_revealed_F_multiple_of_the_signers_prime_is_named() -> None:
    ms = _presign_collusion(F, lambda aux: 3 * _p(aux, 2))
    assert aborts(ms, (3,)) == {3: (1, 2)}


def test_presign_revealed_D_multiple_of_the_receivers_prime_is_named() -> None:
    ms = _presign_collusion(D, lambda aux: _p(aux, 1) * 5)
    assert aborts(ms, (3,)) == {3: (1, 2)}


def test_presign_revealed_F_at_least_N_squared_is_named() -> None:
    ms = _presign_collusion(F, lambda aux: aux[2].public[2].paillier.n2 + 1)
    assert aborts(ms, (3,)) == {3: (1, 2)}


def test_presign_revealed_message_in_the_wrong_slot_names_the_revealer() -> None:
    """Party 1 puts m(3→1) where m(2→1) belongs: genuine signature, wrong sender - only the
    revealer is to blame."""
    ms = presign_machines(2, 3, (1, 2, 3))
    _lying_about_delta(ms[1])

    def intercept(sender: int, receiver: int, raw: bytes) -> list[bytes]:
        msg = ProtocolMessage.from_bytes(raw)
        if sender != 1 or msg.round != 4 or msg.kind != KIND_MAIN:
            return [raw]
        d = Decoder(msg.payload)
        H, mul_proof, received, proofs = d.uint(), d.bytes(), d.list_of_bytes(), d.list_of_bytes()
        payload = Encoder().uint(H).bytes(mul_proof).list_of_bytes([received[1], received[1]])
        return [resign(raw, identities(3)[1], payload.list_of_bytes(proofs).finish())]

    assert run(ms, intercept) == {}
    assert aborts(ms, (2, 3)) == {2: (1,), 3: (1,)}


# signing ------------------------------------------------------------------------------------------
def lie_about_sigma(machine, offset: int = 1) -> None:  # type: ignore[no-untyped-def]
    """The signer's own machine computes σ_i + offset and proves it consistently (so only its
    Π^dec fails): the honest σ_i is computed in the σ round (``_partial_signature``)."""
    honest = machine._partial_signature
    machine._partial_signature = lambda: (honest() + offset) % Q


def _sign_collusion(which: int, value_of: Callable[[dict], int]) -> dict:  # type: ignore[type-arg]
    shares, aux = committee(2, 3)
    pre, _ = presign_with(shares, aux, (1, 2, 3))
    ms = sign_machines_with(shares, pre, secrets.token_bytes(32), (), aux)
    lie_about_sigma(ms[1])
    assert run(ms, _reveal_forged(1, 2, lambda: ms[1].rounds, which, value_of(aux), "sign")) == {}
    return ms


def test_sign_revealed_F_hat_zero_names_both_colluders_and_nobody_crashes() -> None:
    ms = _sign_collusion(F_HAT, lambda aux: 0)
    assert ms[3].status is Status.ABORTED
    assert aborts(ms, (3,)) == {3: (1, 2)}
    assert "not a ciphertext" in ms[3].abort.reason


def test_sign_revealed_F_hat_multiple_of_the_signers_prime_is_named() -> None:
    ms = _sign_collusion(F_HAT, lambda aux: _p(aux, 2) * 7)
    assert aborts(ms, (3,)) == {3: (1, 2)}


def test_sign_revealed_D_hat_multiple_of_the_receivers_prime_is_named() -> None:
    ms = _sign_collusion(D_HAT, lambda aux: _p(aux, 1))
    assert aborts(ms, (3,)) == {3: (1, 2)}


def test_sign_revealed_unused_F_zero_is_still_named() -> None:
    """Sign identification uses only D̂ and F̂, but every revealed element is validated."""
    ms = _sign_collusion(F, lambda aux: 0)
    assert aborts(ms, (3,)) == {3: (1, 2)}
