"""Sign sessions end the same way at every honest signer (issue 11, "Outcomes agree").

A signer that makes the σ round (the last one) end differently at different peers - a malformed,
lying or equivocating message or echo to one signer only - used to leave one honest signer done
with the signature and another aborted naming it. Now a sign machine is done only with every
signer's signed confirmation of the same transcript (``RoundMachine.require_confirmation``,
``store=False``), so every honest signer aborts naming the same culprit, or all are done with
the same signature. The confirmation step itself cannot be split either: a party that confirms
to some peers and says "I stopped" to another does not leave that one aborted while the others
finish.

All through the real machines and their encoded, signed messages; the culprit (party 3) signs
whatever it sends with its own key.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable

import pytest
from coincurve import PublicKey
from fp_network import aborts, committee, identities, presign_with, resign, run, sign_machines_with

from fusion_prime.protocol.curve import Q, scalar_from_bytes, scalar_to_bytes
from fusion_prime.protocol.encoding import Decoder, Encoder
from fusion_prime.protocol.machine import (
    BROADCAST,
    KIND_ABORT,
    KIND_CONFIRM,
    KIND_ECHO,
    KIND_MAIN,
    KIND_RELAY,
    ProtocolMessage,
    SessionAborted,
    Status,
)
from fusion_prime.protocol.sign import SIGMA_ROUND, SignMachine

SIGNERS = (1, 2, 3)
CULPRIT = 3
HONEST = (1, 2)
ROSTER = {i: k.public_key for i, k in identities(3).items()}
Rewrite = Callable[[int, int, ProtocolMessage, bytes], list[bytes]]


def _machines() -> tuple[dict[int, SignMachine], bytes]:
    shares, aux = committee(2, 3)
    pre, _ = presign_with(shares, aux, SIGNERS)
    digest = secrets.token_bytes(32)
    return sign_machines_with(shares, pre, digest, (), aux), digest


def _culprit_rewrites(when: Callable[[int, ProtocolMessage], bool],
                      payload: Callable[[ProtocolMessage], bytes]) -> Rewrite:
    """Party 3 sends, to the receivers ``when`` picks, ``payload(msg)`` signed with its own key."""
    me = identities(3)[CULPRIT]

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender == CULPRIT and when(receiver, msg):
            return [resign(raw, me, payload(msg))]
        return [raw]

    return rewrite


def _deliver(machines: dict[int, SignMachine], rewrite: Rewrite | None = None,
             hold: Callable[[int, ProtocolMessage], bool] | None = None) -> None:
    """Like ``protocol.runner`` (every message as bytes, in order), with a ``rewrite`` per
    receiver and messages ``hold`` picks delivered only once nothing else is left to deliver."""
    queue: deque[tuple[int, bytes]] = deque()
    held: list[tuple[int, bytes]] = []

    def post(sender: int, raw: bytes) -> None:
        msg = ProtocolMessage.from_bytes(raw)
        targets = [p for p in machines if p != sender] if msg.receiver == BROADCAST else [msg.receiver]
        for target in targets:
            for item in rewrite(sender, target, msg, raw) if rewrite else [raw]:
                late = hold is not None and hold(target, ProtocolMessage.from_bytes(item))
                (held if late else queue).append((target, item))

    for i, m in machines.items():
        for raw in m.start():
            post(i, raw)
    while queue or held:
        if not queue:
            queue.extend(held)
            held.clear()
            hold = None
        target, raw = queue.popleft()
        for reply in machines[target].receive(raw):
            post(target, reply)


def _deadline(machines: dict[int, SignMachine], parties=HONEST) -> None:  # type: ignore[no-untyped-def]
    """Every party in ``parties`` reaches its deadline: timeout notices are exchanged among them,
    then each concludes (what the node's driver does, without clocks)."""
    waiting = {i: machines[i].waiting_for() for i in parties}
    notices = {i: machines[i].timeout_notice(waiting[i]) for i in parties}
    for i in parties:
        for j in parties:
            if j != i:
                for raw in notices[i]:
                    machines[j].receive(raw)
    for i in parties:
        machines[i].conclude_timeout(waiting[i])


def _stop_notice(reason: bytes = b"could not store the output: disk full",
                 evidence: tuple[bytes, ...] = ()) -> Callable[[ProtocolMessage], bytes]:
    return lambda msg: Encoder().uints([]).uints([]).uints([]).bytes(reason).list_of_bytes(evidence).finish()


def test_an_honest_sign_is_done_only_with_every_signers_confirmation() -> None:
    ms, digest = _machines()
    out = run(ms)
    assert sorted(out) == list(SIGNERS)
    assert len({(o.r, o.s) for o in out.values()}) == 1
    assert PublicKey(out[1].public_key.to_bytes()).verify(out[1].to_der(), digest, hasher=None)
    transcripts = set()
    for m in ms.values():
        assert m.certificate is not None and m.certificate.verify(list(SIGNERS), ROSTER)
        transcripts.add(m.certificate.transcript)
    assert len(transcripts) == 1


def _garbage_echo(msg: ProtocolMessage) -> bytes:
    return b"\x01not an echo"


def _misreporting_echo(msg: ProtocolMessage) -> bytes:
    """The echo, with party 2's σ-round broadcast reported under a hash party 2 never signed."""
    d = Decoder(msg.payload, "echo")
    entries, complaints = d.list_of_bytes(), d.list_of_bytes()
    forged = []
    for raw in entries:
        e = Decoder(raw, "entry")
        j, phash, sig = e.uint(32), e.bytes(32), e.bytes()
        if j == 2:
            phash = bytes(32)
        forged.append(Encoder().uint(j).bytes(phash).bytes(sig).finish())
    return Encoder().list_of_bytes(forged).list_of_bytes(complaints).finish()


def _echo_with_a_false_complaint(msg: ProtocolMessage) -> bytes:
    """The echo plus a complaint against party 2 (sign has no private messages to complain of)."""
    d = Decoder(msg.payload, "echo")
    entries, complaints = d.list_of_bytes(), d.list_of_bytes()
    fake = Encoder().uint(2).bytes(b"\x00" * 40).finish()
    return Encoder().list_of_bytes(entries).list_of_bytes([*complaints, fake]).finish()


@pytest.mark.parametrize("echo", [_garbage_echo, _misreporting_echo, _echo_with_a_false_complaint],
                         ids=["garbage", "misreport", "false-complaint"])
def test_a_bad_sigma_round_echo_to_one_signer_aborts_every_honest_signer(echo) -> None:  # type: ignore[no-untyped-def]
    """Before: party 2, whose echo from party 3 was fine, was done with the signature while
    party 1 aborted naming party 3. Now party 2 waits for party 1's confirmation, which never
    comes, and re-judges the signed echo in party 1's abort notice: both name party 3."""
    ms, _ = _machines()
    _deliver(ms, _culprit_rewrites(lambda to, m: to == 1 and m.kind == KIND_ECHO and m.round == SIGMA_ROUND, echo))
    assert aborts(ms, HONEST) == {1: (CULPRIT,), 2: (CULPRIT,)}
    for i in HONEST:
        assert ms[i].status is Status.ABORTED and ms[i].certificate is None
        with pytest.raises(SessionAborted):
            ms[i].result()


def test_a_different_sigma_to_one_signer_aborts_every_honest_signer() -> None:
    """Party 3 sends party 1 a valid scalar that is not its σ_3 (party 2 gets the true one):
    the echoes show two σ_3 both signed by party 3, and nobody outputs a signature."""
    def other_sigma(msg: ProtocolMessage) -> bytes:
        sigma = scalar_from_bytes(Decoder(msg.payload, "σ").bytes(32), allow_zero=True)
        return Encoder().bytes(scalar_to_bytes((sigma + 1) % Q)).finish()

    ms, _ = _machines()
    _deliver(ms, _culprit_rewrites(lambda to, m: to == 1 and m.round == SIGMA_ROUND and m.kind == KIND_MAIN,
                                   other_sigma))
    assert aborts(ms, HONEST) == {1: (CULPRIT,), 2: (CULPRIT,)}
    assert "equivocated" in ms[1].abort.reason and "equivocated" in ms[2].abort.reason


@pytest.mark.parametrize("notice", ["stopped", "proves-its-own-fault"])
def test_confirming_to_one_signer_and_stopping_another_does_not_split(notice: str) -> None:
    """Party 3 sends its confirmation to party 2 only, and to party 1 - after party 1 confirmed
    - a notice that it stopped (or one proving only a fault of its own: two different echoes it
    signed). Before, party 1 aborted on it while party 2 completed the certificate. Now party 1,
    having confirmed, waits: party 2 completes the certificate, relays it, and both are done
    with the same signature."""
    ms, digest = _machines()
    me = identities(3)[CULPRIT]
    echoes: list[bytes] = []

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender != CULPRIT:
            return [raw]
        if msg.kind == KIND_ECHO and msg.round == SIGMA_ROUND and not echoes:
            echoes.extend([raw, resign(raw, me, b"\x01another echo")])
        if msg.kind in (KIND_CONFIRM, KIND_RELAY) and receiver == 1:
            evidence = tuple(echoes) if notice == "proves-its-own-fault" else ()
            return [resign(raw, me, _stop_notice(evidence=evidence)(msg), kind=KIND_ABORT)]
        return [raw]

    # party 3's notice, then party 2's relay, reach party 1 only once party 1 has confirmed
    _deliver(ms, rewrite, hold=lambda to, m: to == 1 and m.kind in (KIND_ABORT, KIND_RELAY))
    assert ms[1].confirmed
    for i in HONEST:
        assert ms[i].status is Status.DONE, (i, ms[i].abort)
        assert ms[i].certificate is not None and ms[i].certificate.verify(list(SIGNERS), ROSTER)
    assert ms[1].output == ms[2].output
    assert PublicKey(ms[1].output.public_key.to_bytes()).verify(ms[1].output.to_der(), digest, hasher=None)


def test_a_stop_shown_to_one_signer_after_it_confirmed_is_judged_alike_at_the_deadline() -> None:
    """Party 3 confirms to nobody and tells only party 1 (after party 1 confirmed) that it
    stopped. Nobody can finish; at the deadline party 1's timeout notice forwards party 3's
    signed stop notice, so party 2 judges from the same statements: both abort naming nobody
    (a stop is not a fault that can be shown) - not party 1 excusing it and party 2 naming it."""
    ms, _ = _machines()
    me = identities(3)[CULPRIT]

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender == CULPRIT and msg.kind in (KIND_CONFIRM, KIND_RELAY):
            return [resign(raw, me, _stop_notice()(msg), kind=KIND_ABORT)] if receiver == 1 else []
        return [raw]

    _deliver(ms, rewrite, hold=lambda to, m: to == 1 and m.sender == CULPRIT and m.kind == KIND_ABORT)
    assert all(ms[i].status is Status.RUNNING and ms[i].confirmed for i in HONEST)
    _deadline(ms)
    assert aborts(ms, HONEST) == {1: (), 2: ()}
    assert ms[1].abort.disputes == ms[2].abort.disputes == ()


def test_a_confirmation_withheld_from_everyone_names_its_signer_everywhere() -> None:
    ms, _ = _machines()
    _deliver(ms, lambda s, r, m, raw: [] if s == CULPRIT and m.kind in (KIND_CONFIRM, KIND_RELAY) else [raw])
    assert all(ms[i].status is Status.RUNNING for i in HONEST)
    _deadline(ms)
    assert aborts(ms, HONEST) == {1: (CULPRIT,), 2: (CULPRIT,)}
    assert all(ms[i].certificate is None for i in HONEST)


def test_no_sigma_leaves_before_every_ack_and_the_confirmation_follows_sigma() -> None:
    """The confirmation is added after round 2: the ConsumptionAck guarantee (σ only once
    every signer acknowledged consumption) is untouched, and each confirmation is sent only
    after its signer's σ-round echo."""
    ms, _ = _machines()
    sent: list[ProtocolMessage] = []
    run(ms, lambda s, r, raw: (sent.append(ProtocolMessage.from_bytes(raw)), [raw])[1])
    for i in SIGNERS:
        mine = [m for m in sent if m.sender == i]
        order = [(m.round, m.kind) for m in mine]
        first_sigma = order.index((SIGMA_ROUND, KIND_MAIN))
        assert (1, KIND_ECHO) in order[:first_sigma]
        assert order.index((ms[i].rounds + 1, KIND_CONFIRM)) > order.index((SIGMA_ROUND, KIND_ECHO))
