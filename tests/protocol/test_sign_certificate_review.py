"""Adversarial review of ``RoundMachine.certificate_impossible`` for signing (issue 11): the
flag makes the node skip its certificate lookup, so it must never be set while a certificate
can still exist. The malicious signer (party 3) tries to make a confirmed honest signer set it
with notices built from genuine signed messages of the honest signers - every message party 1
signed in the session, its relay, party 2's own messages - and faults of its own. A certificate
does exist (party 1 completed it), so party 2 must keep running, flag unset, and end done when
party 1's relay arrives. All through the real sign machines and their signed messages."""

from __future__ import annotations

import secrets

import pytest
from fp_network import committee, identities, presign_with, resign, sign_machines_with

from fusion_prime.protocol.encoding import Encoder
from fusion_prime.protocol.machine import (
    BROADCAST,
    KIND_ABORT,
    KIND_CONFIRM,
    KIND_RELAY,
    ProtocolMessage,
    Status,
)
from fusion_prime.protocol.sign import SignMachine

SIGNERS = (1, 2, 3)
CULPRIT = 3


def _notice(evidence: list[bytes], timeout: tuple[int, ...] = ()) -> bytes:
    """An abort notice payload (no culprits claimed: only evidence counts), or a timeout notice
    when ``timeout`` lists (party, round, kind, private) slots."""
    return (Encoder().uints([]).uints(list(timeout)).uints([]).bytes(b"stopped")
            .list_of_bytes(evidence).finish())


EVIDENCE = ["party 1's messages", "party 1's messages and two own confirmations",
            "party 2's own messages", "party 1's relay", "timeout notice forwarding party 1's messages"]


@pytest.mark.parametrize("evidence", EVIDENCE)
def test_genuine_honest_messages_in_a_late_notice_never_prove_a_certificate_impossible(evidence: str) -> None:
    shares, aux = committee(2, 3)
    pre, _ = presign_with(shares, aux, SIGNERS)
    ms: dict[int, SignMachine] = sign_machines_with(shares, pre, secrets.token_bytes(32), (), aux)
    me = identities(3)[CULPRIT]
    sent: dict[int, list[bytes]] = {i: [] for i in SIGNERS}
    withheld: list[bytes] = []  # party 1's relay to party 2, delivered last
    queue: list[tuple[int, bytes]] = []

    def post(sender: int, raw: bytes) -> None:
        msg = ProtocolMessage.from_bytes(raw)
        if raw not in sent[sender]:
            sent[sender].append(raw)
        for target in ([p for p in SIGNERS if p != sender] if msg.receiver == BROADCAST else [msg.receiver]):
            if sender == CULPRIT and target == 2 and msg.kind in (KIND_CONFIRM, KIND_RELAY):
                continue  # party 2 can complete only through party 1's relay
            if sender == 1 and target == 2 and msg.kind == KIND_RELAY:
                withheld.append(raw)
                continue
            queue.append((target, raw))

    for i, m in ms.items():
        for raw in m.start():
            post(i, raw)
    while queue:
        target, raw = queue.pop(0)
        for reply in ms[target].receive(raw):
            post(target, reply)
    assert ms[1].status is Status.DONE and ms[1].certificate is not None  # a certificate exists
    assert ms[2].confirmed and ms[2].status is Status.RUNNING and withheld

    own_confirm = next(r for r in sent[CULPRIT] if ProtocolMessage.from_bytes(r).kind == KIND_CONFIRM)
    chosen = {
        "party 1's messages": [r for r in sent[1] if ProtocolMessage.from_bytes(r).kind != KIND_RELAY],
        "party 1's messages and two own confirmations": [*sent[1], own_confirm, resign(own_confirm, me, bytes(32))],
        "party 2's own messages": sent[2],
        "party 1's relay": withheld,
        "timeout notice forwarding party 1's messages": sent[1],
    }[evidence]
    timeout = (1, 4, KIND_CONFIRM, 0) if evidence.startswith("timeout") else ()
    notice = resign(own_confirm, me, _notice(chosen, timeout), kind=KIND_ABORT)
    ms[2].receive(notice)
    assert ms[2].status is Status.RUNNING, ms[2].abort
    assert not ms[2].certificate_impossible
    # the notice was judged: a fault of party 3's own is recorded, nothing of anyone else
    assert list(ms[2].late_faults) == ([CULPRIT] if "two own" in evidence else [])
    for raw in withheld:
        ms[2].receive(raw)
    assert ms[2].status is Status.DONE, ms[2].abort
    assert ms[2].output == ms[1].output
