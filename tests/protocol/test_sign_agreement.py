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
             hold: Callable[[int, ProtocolMessage], bool] | None = None,
             released: Callable[[], None] | None = None) -> None:
    """Like ``protocol.runner`` (every message as bytes, in order), with a ``rewrite`` per
    receiver and messages ``hold`` picks delivered only once nothing else is left to deliver
    (``released`` is called just before they are)."""
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
            if released is not None:
                released()
                released = None
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
    # party 2 had confirmed; party 1's notice proves that party 1 never will, so party 2 knows
    # no certificate can exist and its node need not ask the peers for one (node.session)
    assert ms[2].confirmed and ms[2].certificate_impossible


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


# The independent review of the sign confirmation (issue 11): R1-R9 are its attacks. -----------

def _timeout_payload(slots: tuple[int, ...], evidence: tuple[bytes, ...] = ()) -> bytes:
    """A timeout notice's payload: ``slots`` flattened as (party, round, kind, private)."""
    return (Encoder().uints([]).uints(list(slots)).uints([]).bytes(b"round deadline passed")
            .list_of_bytes(evidence).finish())


LATE_ATTACKS = ["junk", "other-transcript", "two-confirmations", "malformed-notice", "malformed-relay",
                "second-sigma"]


def _late_attack(attack: str, confirm: bytes, sigma: bytes) -> list[bytes]:
    """What party 3 sends party 2 in place of (or with) its confirmation, signed with its key."""
    me = identities(3)[CULPRIT]
    if attack == "junk":  # R1: a message no round allows
        return [resign(confirm, me, b"junk", round=9, kind=KIND_MAIN)]
    if attack == "other-transcript":  # R2
        return [resign(confirm, me, bytes(32))]
    if attack == "two-confirmations":  # another one, then the true one
        return [resign(confirm, me, bytes(32)), confirm]
    if attack == "malformed-notice":  # R5
        return [resign(confirm, me, b"\xffnot a notice", kind=KIND_ABORT)]
    if attack == "malformed-relay":  # R6
        return [resign(confirm, me, b"\xffnot a relay", kind=KIND_RELAY)]
    assert attack == "second-sigma"  # R7: a second, different σ_3
    return [resign(sigma, me, Encoder().bytes(scalar_to_bytes(1)).finish())]


@pytest.mark.parametrize("attack", LATE_ATTACKS)
def test_a_fault_shown_to_a_signer_after_it_confirmed_does_not_split(attack: str) -> None:
    """Party 3 confirms to party 1; to party 2 - once party 2 has confirmed - it sends a fault
    of its own instead (a message no round allows, a confirmation of another transcript, a
    malformed notice or relay, a second σ). Before: party 1 was done with the signature while
    party 2 aborted naming party 3 - the sign split the confirmation was meant to close. Now
    party 2, having confirmed, records the fault and waits: party 1's relay brings party 3's
    true confirmation, and both are done with the same signature."""
    ms, digest = _machines()
    sigma: dict[str, bytes] = {}
    late: set[bytes] = set()  # the signatures of what party 3 sends party 2 instead

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender != CULPRIT:
            return [raw]
        if msg.kind == KIND_MAIN and msg.round == SIGMA_ROUND:
            sigma.setdefault("sigma", raw)
        if receiver == 2 and msg.kind == KIND_RELAY:
            return []  # party 2 can complete only through party 1's relay
        if receiver == 2 and msg.kind == KIND_CONFIRM:
            out = _late_attack(attack, raw, sigma["sigma"])
            late.update(ProtocolMessage.from_bytes(m).signature for m in out)
            return out
        return [raw]

    def released() -> None:  # the attack reaches party 2 only now
        assert ms[2].confirmed and ms[2].status is Status.RUNNING
        assert ms[1].status is Status.DONE

    _deliver(ms, rewrite, hold=lambda to, m: to == 2 and (m.kind == KIND_RELAY or m.signature in late),
             released=released)
    assert late
    for i in HONEST:
        assert ms[i].status is Status.DONE, (i, ms[i].abort)
        assert ms[i].certificate is not None and ms[i].certificate.verify(list(SIGNERS), ROSTER)
    assert ms[1].output == ms[2].output
    assert PublicKey(ms[1].output.public_key.to_bytes()).verify(ms[1].output.to_der(), digest, hasher=None)
    assert list(ms[2].late_faults) == [CULPRIT] and ms[1].late_faults == {}


def test_a_bad_confirmation_before_sigma_does_not_get_its_receiver_named() -> None:
    """R9: party 3 sends party 2 a confirmation of another transcript before its σ, and its σ
    last. Party 2's last step signs its round-2 echo and its confirmation and then finds the
    bad confirmation. Before: the blame dropped that echo and confirmation, party 1 waited for
    the echo and at its deadline named party 2 - an honest signer. Now the late fault is only
    recorded (and what a step signed is sent whatever happens): both are done."""
    ms, digest = _machines()
    me = identities(3)[CULPRIT]

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender == CULPRIT and receiver == 2 and msg.kind == KIND_MAIN and msg.round == SIGMA_ROUND:
            early = ProtocolMessage(msg.session_id, msg.phase, ms[2].rounds + 1, KIND_CONFIRM, CULPRIT,
                                    BROADCAST, b"").to_bytes()
            return [resign(early, me, bytes(32)), raw]
        return [raw]

    _deliver(ms, rewrite, hold=lambda to, m: (to == 2 and m.sender == CULPRIT and m.kind == KIND_MAIN
                                              and m.round == SIGMA_ROUND))
    for i in HONEST:
        assert ms[i].status is Status.DONE, (i, ms[i].abort, ms[i].waiting_for())
    assert ms[1].output == ms[2].output
    assert PublicKey(ms[1].output.public_key.to_bytes()).verify(ms[1].output.to_der(), digest, hasher=None)
    assert list(ms[2].late_faults) == [CULPRIT]


def test_a_blame_does_not_swallow_the_echo_its_step_signed() -> None:
    """Party 3 sends party 2 a malformed σ-round echo early and its σ last: party 2's last step
    validates round 2, signs its echo, and only then reads the bad echo and stops. Before, the
    blame dropped that echo (only the abort notice left), so party 1 never got it. Now the echo
    leaves with the notice, and both name party 3."""
    ms, _ = _machines()
    me = identities(3)[CULPRIT]
    sent_by_2: list[ProtocolMessage] = []

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender == 2:
            sent_by_2.append(msg)
        if sender == CULPRIT and receiver == 2 and msg.kind == KIND_ECHO and msg.round == SIGMA_ROUND:
            return [resign(raw, me, b"\x01not an echo")]
        return [raw]

    _deliver(ms, rewrite, hold=lambda to, m: (to == 2 and m.sender == CULPRIT and m.kind == KIND_MAIN
                                              and m.round == SIGMA_ROUND))
    assert aborts(ms, HONEST) == {1: (CULPRIT,), 2: (CULPRIT,)}
    kinds = [(m.round, m.kind) for m in sent_by_2]
    assert (SIGMA_ROUND, KIND_ECHO) in kinds
    assert kinds.index((SIGMA_ROUND, KIND_ECHO)) < kinds.index((ms[2].rounds + 1, KIND_ABORT))


@pytest.mark.parametrize("to", [(1, 2), (1,)], ids=["to-both", "to-party-1-only"])
def test_a_timeout_notice_instead_of_a_confirmation_names_its_sender_everywhere(to: tuple[int, ...]) -> None:
    """R3: party 3 withholds its confirmation and sends, instead, a timeout notice saying it
    lacks both honest confirmations (R3b: to party 1 only; party 1's own timeout notice
    forwards it to party 2). A timeout notice judged a second time used to fall through to the
    'stopped' path, excusing party 3's missing confirmation: both honest signers named nobody
    and each ended in a dispute with party 3 (R3b: different culprits). Both honest signers
    hold each other's confirmation, so party 3's claim is one neither backs: both name it."""
    ms, _ = _machines()
    me = identities(3)[CULPRIT]
    last = ms[1].rounds + 1
    claim = (1, last, KIND_CONFIRM, 0, 2, last, KIND_CONFIRM, 0)

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender == CULPRIT and msg.kind in (KIND_CONFIRM, KIND_RELAY):
            return [resign(raw, me, _timeout_payload(claim), kind=KIND_ABORT)] if receiver in to else []
        return [raw]

    _deliver(ms, rewrite)
    assert all(ms[i].status is Status.RUNNING and ms[i].confirmed for i in HONEST)
    _deadline(ms)
    assert aborts(ms, HONEST) == {1: (CULPRIT,), 2: (CULPRIT,)}
    assert ms[1].abort.disputes == ms[2].abort.disputes == ()


def test_a_stop_and_then_a_timeout_notice_puts_no_honest_signer_in_a_dispute() -> None:
    """R8: party 3 withholds its confirmation and sends both honest signers, after they
    confirmed, a notice that it stopped and then a timeout notice saying it lacks their
    confirmations. Before: each honest signer ended in a dispute with party 3 (a retry may then
    avoid an honest node). A party that said it stopped waits for nothing, so its claims are not
    counted: both end naming nobody, with no dispute - as after the stop alone."""
    ms, _ = _machines()
    me = identities(3)[CULPRIT]
    last = ms[1].rounds + 1
    claim = (1, last, KIND_CONFIRM, 0, 2, last, KIND_CONFIRM, 0)

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender == CULPRIT and msg.kind in (KIND_CONFIRM, KIND_RELAY):
            return [resign(raw, me, _stop_notice()(msg), kind=KIND_ABORT),
                    resign(raw, me, _timeout_payload(claim), kind=KIND_ABORT)]
        return [raw]

    _deliver(ms, rewrite, hold=lambda to, m: m.sender == CULPRIT and m.kind == KIND_ABORT)
    assert all(ms[i].status is Status.RUNNING and ms[i].confirmed for i in HONEST)
    _deadline(ms)
    assert aborts(ms, HONEST) == {1: (), 2: ()}
    assert ms[1].abort.disputes == ms[2].abort.disputes == ()


def test_two_confirmations_shown_before_the_last_round_name_their_signer_everywhere() -> None:
    """Party 3 sends party 2, before anyone has its σ, two different confirmations. Party 2 has
    not confirmed, so it stops naming party 3 with both as evidence. Before: party 1, which
    had no transcript yet to compare them with, found nothing in that evidence, and once its
    round 2 was done aborted 'party 2 stopped', naming nobody - different verdicts. Two
    confirmations signed by one party prove its fault to anyone: both name party 3."""
    ms, _ = _machines()
    me = identities(3)[CULPRIT]

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender == CULPRIT and receiver == 2 and msg.kind == KIND_MAIN and msg.round == SIGMA_ROUND:
            early = ProtocolMessage(msg.session_id, msg.phase, ms[2].rounds + 1, KIND_CONFIRM, CULPRIT,
                                    BROADCAST, b"").to_bytes()
            return [resign(early, me, bytes(32)), resign(early, me, b"\x01" * 32), raw]
        return [raw]

    _deliver(ms, rewrite, hold=lambda to, m: m.sender == CULPRIT and m.kind == KIND_MAIN and m.round == SIGMA_ROUND)
    assert aborts(ms, HONEST) == {1: (CULPRIT,), 2: (CULPRIT,)}
    assert not ms[1].confirmed and not ms[2].confirmed


def test_a_stop_shown_to_one_signer_after_its_timeout_notice_is_not_counted() -> None:
    """R4: party 3 withholds its confirmation; after the honest signers' timeout notices were
    exchanged it shows party 1 alone, in its grace window, a notice that it stopped. Party 1's
    timeout notice has left and cannot pass that on, so party 2 never learns it. Before:
    party 1 excused party 3 (naming nobody) while party 2 named it. Now the verdict counts only
    what was held when the timeout notice went out, and what other timeout notices forward:
    both name party 3."""
    ms, _ = _machines()
    me = identities(3)[CULPRIT]
    kept: list[bytes] = []

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender == CULPRIT and msg.kind in (KIND_CONFIRM, KIND_RELAY):
            kept.append(raw)
            return []
        return [raw]

    _deliver(ms, rewrite)
    waiting = {i: ms[i].waiting_for() for i in HONEST}
    notices = {i: ms[i].timeout_notice(waiting[i]) for i in HONEST}
    for raw in notices[1]:
        ms[2].receive(raw)
    for raw in notices[2]:
        ms[1].receive(raw)
    ms[1].receive(resign(kept[0], me, _stop_notice()(ProtocolMessage.from_bytes(kept[0])), kind=KIND_ABORT))
    for i in HONEST:
        ms[i].conclude_timeout(waiting[i])
    assert aborts(ms, HONEST) == {1: (CULPRIT,), 2: (CULPRIT,)}
    assert "not counted" in ms[1].abort.reason


def test_a_fault_shown_to_one_signer_reaches_the_other_at_the_deadline() -> None:
    """Party 3 withholds its confirmation, tells both honest signers (after they confirmed)
    that it stopped, and shows party 1 alone a message no round allows. Before: party 1 named
    party 3 (a proven fault) while party 2 excused it (a stop) and named nobody. Now party 1's
    timeout notice carries party 3's signed message; party 2 re-judges it: both name party 3."""
    ms, _ = _machines()
    me = identities(3)[CULPRIT]

    def rewrite(sender: int, receiver: int, msg: ProtocolMessage, raw: bytes) -> list[bytes]:
        if sender == CULPRIT and msg.kind in (KIND_CONFIRM, KIND_RELAY):
            stop = resign(raw, me, _stop_notice()(msg), kind=KIND_ABORT)
            return [stop, resign(raw, me, b"junk", round=9, kind=KIND_MAIN)] if receiver == 1 else [stop]
        return [raw]

    _deliver(ms, rewrite, hold=lambda to, m: m.sender == CULPRIT and m.round > SIGMA_ROUND)
    assert all(ms[i].status is Status.RUNNING and ms[i].confirmed for i in HONEST)
    assert list(ms[1].late_faults) == [CULPRIT] and ms[2].late_faults == {}
    _deadline(ms)
    assert aborts(ms, HONEST) == {1: (CULPRIT,), 2: (CULPRIT,)}
    assert ms[1].abort.disputes == ms[2].abort.disputes == ()
