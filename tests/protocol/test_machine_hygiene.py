"""The round engine refuses messages for the wrong session, round or sender, and duplicates."""

from __future__ import annotations

from fp_network import identities, keygen_machines, resign, run

from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.protocol.machine import BROADCAST, ProtocolMessage, Status


def _started():  # type: ignore[no-untyped-def]
    ms = keygen_machines(2, 3)
    first = {i: m.start() for i, m in ms.items()}
    return ms, first


def test_message_for_another_session_is_dropped_without_abort() -> None:
    ms, _ = _started()
    _, other_first = _started()
    assert ms[1].receive(other_first[2][0]) == []
    assert ms[1].status is Status.RUNNING
    assert "another session" in ms[1].rejected[-1]


def test_forged_sender_is_dropped() -> None:
    ms, first = _started()
    impostor = PartyIdentity.generate()
    forged = resign(first[2][0], impostor)  # claims to be party 2, signed by someone else
    assert ms[1].receive(forged) == []
    assert ms[1].status is Status.RUNNING and "bad signature" in ms[1].rejected[-1]


def test_message_addressed_elsewhere_is_dropped() -> None:
    ms, first = _started()
    raw = resign(first[2][0], identities(3)[2], receiver=3)
    assert ms[1].receive(raw) == []
    assert "addressed to party 3" in ms[1].rejected[-1]


def test_signed_message_for_a_round_that_does_not_exist_blames_its_sender() -> None:
    ms, first = _started()
    raw = resign(first[2][0], identities(3)[2], round=9)
    ms[1].receive(raw)
    assert ms[1].status is Status.ABORTED and ms[1].abort.culprits == (2,)


def test_duplicates_are_dropped_and_the_run_completes() -> None:
    ms = keygen_machines(2, 3)
    out = run(ms, lambda s, r, raw: [raw, raw])  # every message delivered twice
    assert len(out) == 3
    assert all(any("duplicate" in why for why in m.rejected) for m in ms.values())


def test_messages_arriving_early_are_buffered() -> None:
    """Deliver everything in reverse order within each batch: the machines still finish."""
    ms = keygen_machines(2, 3)
    pending: list[tuple[int, bytes]] = []
    for i, m in ms.items():
        pending += [(i, raw) for raw in m.start()]
    rounds = 0
    while pending and rounds < 50:
        rounds += 1
        batch, pending = list(reversed(pending)), []
        for sender, raw in batch:
            msg = ProtocolMessage.from_bytes(raw)
            targets = [p for p in ms if p != sender] if msg.receiver == BROADCAST else [msg.receiver]
            for t in targets:
                pending += [(t, reply) for reply in ms[t].receive(raw)]
    assert all(m.status is Status.DONE for m in ms.values())


def test_repr_of_messages_hides_payloads() -> None:
    _, first = _started()
    msg = ProtocolMessage.from_bytes(first[1][0])
    assert msg.payload.hex() not in repr(msg)
