"""Outcomes agree, and nobody honest is named, when one participant misbehaves towards some
peers only - through the real message path (gRPC + mTLS between in-process nodes), with the
malicious node's own transport rewriting or dropping what it sends to chosen peers.

The protocol is the two-round sum protocol of ``fp_sum_protocol``, run with the node's
confirmation step (the phase handler stages its output), so these tests exercise exactly the
engine and driver code the CGGMP21 phases use."""

from __future__ import annotations

import pytest
import trio
from fp_guards import HANG_GUARD
from fp_node_helpers import make_node, running_nodes
from fp_sum_protocol import SumMachine, SumPhase, fill_sum

from fusion_prime.protocol.machine import (
    BROADCAST,
    KIND_ABORT,
    KIND_CONFIRM,
    KIND_ECHO,
    KIND_MAIN,
    KIND_RELAY,
    ProtocolMessage,
)


class StagedSumPhase(SumPhase):
    """The sum protocol with the node's confirmation step: its output is staged, then made
    current (``finish``) only with every participant's confirmation."""

    def __init__(self) -> None:
        super().__init__()
        self.staged: list = []

    def stage(self, ctx, output):
        ctx.storage.stage_output(ctx.session_id, ctx.proposal.phase, repr(output).encode(),
                                 proposal=ctx.proposal.SerializeToString(), transcript=ctx.transcript)
        self.staged.append(ctx.session_id)

    def restore(self, ctx, data):
        import ast

        return ast.literal_eval(data.decode())


def _tamper(node, rule):
    """Route node's outgoing protocol messages through ``rule(peer, msg) -> bytes | None``
    (None drops the message to that peer)."""
    original = node.transport.send
    identity = node.material.identity

    async def send(receiver, *, session_id, phase, round, broadcast, payload, deadline):
        msg = ProtocolMessage.from_bytes(payload)
        out = rule(receiver, msg, identity)
        if out is None:
            return True  # "sent": the peer never gets it
        return await original(receiver, session_id=session_id, phase=phase, round=round, broadcast=broadcast,
                              payload=out, deadline=deadline)

    node.transport.send = send


def _resigned(msg: ProtocolMessage, identity, payload: bytes) -> bytes:
    m = ProtocolMessage(msg.session_id, msg.phase, msg.round, msg.kind, msg.sender, msg.receiver, payload)
    return ProtocolMessage(m.session_id, m.phase, m.round, m.kind, m.sender, m.receiver, payload,
                           identity.sign(m.digest())).to_bytes()


class NoticeBugSumMachine(SumMachine):
    """A machine with a bug that an abort notice sets off (any exception no handler expects, in
    the code that judges a notice's evidence)."""

    def _accept_control(self, msg):
        if msg.kind == KIND_ABORT:
            raise ValueError("a bug in judging a notice")
        return super()._accept_control(msg)


class NoticeBugStagedSumPhase(StagedSumPhase):
    def build(self, ctx):
        return NoticeBugSumMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster)


def _network(devnet3, first: type[StagedSumPhase] = StagedSumPhase):
    phases = [first(), *(StagedSumPhase() for _ in devnet3[1:])]
    nodes = [make_node(d, phases={"sum": p}, fill_pool=False) for d, p in zip(devnet3, phases, strict=True)]
    return nodes, phases


async def _settled(nodes, session_id):
    with trio.fail_after(HANG_GUARD):
        for n in nodes:
            while n.storage.session_state(session_id) in (None, "running"):
                await trio.sleep(0.05)


def _finished_record(node, session_id):
    events = [e for e in node.storage.audit_log() if e["session_id"] == session_id
              and e["event"] in ("session-done", "session-aborted", "session-timeout")]
    assert events, (node.cfg.node_id, node.storage.session_state(session_id),
                    [e["event"] for e in node.storage.audit_log() if e["session_id"] == session_id])
    return events[-1]


def test_a_malformed_last_round_echo_to_one_peer_aborts_everyone_and_names_its_sender(devnet3):
    """node3 sends node1 a malformed (but signed) echo in the last round and node2 a good one.
    Before: node1 aborted alone and node2 finished - a split. Now node1's abort notice carries
    node3's signed echo; node2 re-judges it and names node3 too; nothing became current."""
    nodes, phases = _network(devnet3)

    def rule(peer, msg, identity):
        if peer == "node1" and msg.kind == KIND_ECHO and msg.round == 2:
            return _resigned(msg, identity, b"\x01not an echo")
        return msg.to_bytes()

    _tamper(nodes[2], rule)

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=5.0)
            await _settled(nodes[:2], outcome.session_id)
            assert outcome.status == "aborted" and outcome.culprits == ("node3",), outcome
            second = _finished_record(nodes[1], outcome.session_id)
            assert second["event"] == "session-aborted" and second["detail"]["culprits"] == ["node3"], second
            assert phases[0].finished == [] and phases[1].finished == [], "no honest node made the output current"
            staged = nodes[1].storage.staged_output(outcome.session_id)
            assert staged is None or staged[1] == "abandoned"

    trio.run(main)


def test_a_confirmation_sent_to_one_peer_only_still_completes_everywhere(devnet3):
    """node3 sends its confirmation to node1 only. node1 completes the certificate and relays
    it; node2 completes from the relay - both finish with the same output and certificate."""
    nodes, phases = _network(devnet3)

    def rule(peer, msg, identity):
        if peer == "node2" and msg.kind == KIND_CONFIRM:
            return None
        return msg.to_bytes()

    _tamper(nodes[2], rule)

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=5.0)
            assert outcome.ok, outcome
            await _settled(nodes, outcome.session_id)
            assert _finished_record(nodes[1], outcome.session_id)["event"] == "session-done"
            assert len(phases[0].finished) == len(phases[1].finished) == 1
            assert phases[0].finished[0]["sum"] == phases[1].finished[0]["sum"]
            for n in nodes[:2]:
                _phase, state, _, cert = n.storage.staged_output(outcome.session_id)
                assert state == "confirmed" and cert

    trio.run(main)


def test_no_output_is_current_anywhere_until_every_participant_confirmed(devnet3):
    """node3 computes the output but never confirms (it withholds its confirmation from
    everyone): node1 and node2 stage it, never make it current, and name node3."""
    nodes, phases = _network(devnet3)
    # its confirmation, and the relay that would carry it, reach nobody
    _tamper(nodes[2], lambda peer, msg, identity: None if msg.kind in (KIND_CONFIRM, KIND_RELAY) else msg.to_bytes())

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=2.0)
            await _settled(nodes[:2], outcome.session_id)
            assert not outcome.ok and outcome.culprits == ("node3",), outcome
            assert _finished_record(nodes[1], outcome.session_id)["detail"]["culprits"] == ["node3"]
            assert phases[0].finished == [] and phases[1].finished == []
            assert len(phases[0].staged) == 1 and len(phases[1].staged) == 1
            for n in nodes[:2]:
                assert n.storage.staged_output(outcome.session_id)[1] == "abandoned"

    trio.run(main)


def test_a_withheld_private_message_never_gets_its_victim_named(devnet3):
    """node3 withholds its round-1 private message to node1. Before: node2 and node3 named
    node1 (it never echoed). Now node1's timeout notice says whom it waits for; node2 names
    nobody honest: node1 and node3 are a dispute, and the retry avoids node3."""
    nodes, _phases = _network(devnet3)

    def rule(peer, msg, identity):
        if peer == "node1" and msg.kind == KIND_MAIN and msg.round == 1 and msg.receiver != BROADCAST:
            return None
        return msg.to_bytes()

    _tamper(nodes[2], rule)

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[1].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=2.0)
            await _settled(nodes[:2], outcome.session_id)
            for n in nodes[:2]:
                record = _finished_record(n, outcome.session_id)
                assert "node1" not in record["detail"]["culprits"], (n.cfg.node_id, record)
                assert "node2" not in record["detail"]["culprits"], (n.cfg.node_id, record)
            assert ("node1", "node3") in outcome.disputes, outcome
            # the coordinator (node2) retries without the disputed pair's other member... node1
            # and node3 are both avoided, so with three nodes no retry set of three exists:
            retry = await nodes[1].sessions.coordinate("sum", 2, fill_sum, exclude=["node3"], attempts=1)
            assert retry.ok, retry

    trio.run(main)


def test_a_false_complaint_shown_to_one_peer_names_the_complainer_everywhere(devnet3):
    """node3 puts a false complaint against node2 (node2's valid private message as
    'evidence') into its round-1 echo to node1 only. node1 judges it false and names node3;
    node2, which got a clean echo, learns it from node1's notice and names node3 as well."""
    from fusion_prime.protocol.encoding import Decoder, Encoder

    nodes, _phases = _network(devnet3)
    seen: dict = {}

    def rule(peer, msg, identity):
        if msg.kind == KIND_MAIN and msg.round == 1 and msg.receiver != BROADCAST:
            seen.setdefault("own", msg)
        if peer == "node1" and msg.kind == KIND_ECHO and msg.round == 1:
            entries, complaints = (lambda d: (d.list_of_bytes(), d.list_of_bytes()))(Decoder(msg.payload, "echo"))
            evidence = seen["from2"]
            fake = Encoder().uint(2).bytes(evidence.to_bytes()).finish()
            echo = Encoder().list_of_bytes(entries).list_of_bytes([*complaints, fake]).finish()
            return _resigned(msg, identity, echo)
        return msg.to_bytes()

    # node3 needs node2's signed private message to it: capture what node3's transport receives
    original_admit = nodes[2].transport.admit

    def admit(inbound, *a, **kw):
        try:
            m = ProtocolMessage.from_bytes(inbound.payload)
            if m.sender == 2 and m.kind == KIND_MAIN and m.receiver == 3:
                seen["from2"] = m
        except Exception:
            pass
        return original_admit(inbound, *a, **kw)

    nodes[2].transport.admit = admit
    _tamper(nodes[2], rule)

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=5.0)
            await _settled(nodes[:2], outcome.session_id)
            assert outcome.culprits == ("node3",), outcome
            assert _finished_record(nodes[1], outcome.session_id)["detail"]["culprits"] == ["node3"]

    trio.run(main)


def _starve_node2_of_the_certificate(nodes):
    """node3 never sends node2 its confirmation (nor its relay), and node1's relay to node2 is
    lost: node1 and node3 complete the certificate, node2 stays in the confirmation stage."""
    _tamper(nodes[2], lambda peer, msg, identity: None if peer == "node2" and msg.kind in (KIND_CONFIRM, KIND_RELAY)
            else msg.to_bytes())
    _tamper(nodes[0], lambda peer, msg, identity: None if peer == "node2" and msg.kind == KIND_RELAY
            else msg.to_bytes())


def test_a_participant_that_missed_the_certificate_gets_it_from_a_peer(devnet3):
    """The split the review found: node1 ends done, node2 times out having confirmed. node2
    then asks its peers (SessionCertificate), verifies the certificate against its own
    transcript and makes its staged output current - both end with the same output."""
    nodes, phases = _network(devnet3)
    _starve_node2_of_the_certificate(nodes)

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=5.0)
            assert outcome.ok, outcome
            # the output is applied (finish) before the certificate is recorded: wait for both
            with trio.fail_after(HANG_GUARD):
                while len(phases[1].finished) < 1 or nodes[1].storage.staged_output(outcome.session_id)[1] != \
                        "confirmed":
                    await trio.sleep(0.1)
            assert phases[1].finished[0]["sum"] == phases[0].finished[0]["sum"]
            _, state, _, cert = nodes[1].storage.staged_output(outcome.session_id)
            assert state == "confirmed" and cert

    trio.run(main)


def test_a_node_restarted_before_the_certificate_finds_it_at_start(devnet3, monkeypatch):
    """Same split, but node2 stops before it asks (its quick retries are switched off); a new
    node2 process-equivalent opened on the same files makes the output current at start."""
    from fusion_prime.node import session as session_mod

    async def never(self, session_id):
        return None

    monkeypatch.setattr(session_mod.SessionManager, "_reconcile_soon", never)
    monkeypatch.setattr(session_mod, "RECONCILE_FIRST_DELAY", 3600.0)
    nodes, phases = _network(devnet3)
    _starve_node2_of_the_certificate(nodes)
    state = {}

    async def first():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=2.0)
            assert outcome.ok, outcome
            await _settled(nodes[1:2], outcome.session_id)
            assert phases[1].finished == []
            assert nodes[1].storage.staged_output(outcome.session_id)[1] == "abandoned"
            state["sid"] = outcome.session_id

    trio.run(first)
    monkeypatch.setattr(session_mod, "RECONCILE_FIRST_DELAY", 0.2)
    again = StagedSumPhase()
    node1 = make_node(devnet3[0], phases={"sum": phases[0]}, fill_pool=False)
    node2 = make_node(devnet3[1], phases={"sum": again}, fill_pool=False)

    async def second():
        async with running_nodes(node1, node2):
            # the phase's output is applied first, then the certificate recorded (a crash between
            # them applies it again, never loses it): wait for both
            with trio.fail_after(HANG_GUARD):
                while not again.finished or node2.storage.staged_output(state["sid"])[1] != "confirmed":
                    await trio.sleep(0.1)
            assert again.finished[0]["sum"] == phases[0].finished[0]["sum"]

    trio.run(second)


@pytest.mark.parametrize("node1_machine", ["honest", "bug-on-notices"])
def test_confirming_to_one_peer_and_stopping_the_other_does_not_split(devnet3, node1_machine):
    """node3 sends its confirmation to node2 only; to node1 - once node1 has confirmed - it
    sends a signed notice saying it stopped. node2 completes the certificate and relays it
    (the relay reaches node1 after node3's notice). Before: node1 aborted on the notice while
    node2 finished. Now node1, having confirmed, does not end the session on a notice that
    proves nothing: the relay completes it, and both nodes finish with the same output.

    ``bug-on-notices``: node1's machine raises an unexpected exception on the notice (a bug a
    crafted message sets off). Before, node1's driver withdrew - aborted while node2 was done;
    now, having confirmed, it drops that message and completes with the relay."""
    from fusion_prime.protocol.encoding import Encoder

    nodes, phases = _network(devnet3, NoticeBugStagedSumPhase if node1_machine == "bug-on-notices"
                             else StagedSumPhase)
    state: dict = {}

    original_admit = nodes[2].transport.admit

    def admit(inbound, *a, **kw):  # node3 sees node1's confirmation arrive
        try:
            m = ProtocolMessage.from_bytes(inbound.payload)
            if m.sender == 1 and m.kind == KIND_CONFIRM:
                state["node1 confirmed"].set()
        except Exception:
            pass
        return original_admit(inbound, *a, **kw)

    nodes[2].transport.admit = admit
    send3, send2 = nodes[2].transport.send, nodes[1].transport.send
    identity3 = nodes[2].material.identity

    async def node3_send(receiver, *, session_id, phase, round, broadcast, payload, deadline):
        msg = ProtocolMessage.from_bytes(payload)
        if receiver == "node1" and msg.kind in (KIND_CONFIRM, KIND_RELAY):
            await state["node1 confirmed"].wait()
            stop = Encoder().uints([]).uints([]).uints([]).bytes(b"could not store: disk full").list_of_bytes([])
            unsigned = ProtocolMessage(msg.session_id, msg.phase, msg.round, KIND_ABORT, msg.sender, msg.receiver,
                                       stop.finish())
            payload = ProtocolMessage(unsigned.session_id, unsigned.phase, unsigned.round, KIND_ABORT,
                                      unsigned.sender, unsigned.receiver, unsigned.payload,
                                      identity3.sign(unsigned.digest())).to_bytes()
            ok = await send3(receiver, session_id=session_id, phase=phase, round=round, broadcast=broadcast,
                             payload=payload, deadline=deadline)
            state["notice delivered"].set()
            return ok
        return await send3(receiver, session_id=session_id, phase=phase, round=round, broadcast=broadcast,
                           payload=payload, deadline=deadline)

    async def node2_send(receiver, *, session_id, phase, round, broadcast, payload, deadline):
        if receiver == "node1" and ProtocolMessage.from_bytes(payload).kind == KIND_RELAY:
            await state["notice delivered"].wait()  # the network is slow on this one path
        return await send2(receiver, session_id=session_id, phase=phase, round=round, broadcast=broadcast,
                           payload=payload, deadline=deadline)

    nodes[2].transport.send, nodes[1].transport.send = node3_send, node2_send

    async def main():
        state["node1 confirmed"], state["notice delivered"] = trio.Event(), trio.Event()
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=5.0)
            assert state["notice delivered"].is_set(), "node3's notice must reach node1 before node2's relay"
            assert outcome.ok, outcome
            await _settled(nodes[:2], outcome.session_id)
            for n in nodes[:2]:
                assert _finished_record(n, outcome.session_id)["event"] == "session-done", n.cfg.node_id
                assert n.storage.staged_output(outcome.session_id)[1] == "confirmed"
            assert len(phases[0].finished) == len(phases[1].finished) == 1
            assert phases[0].finished[0]["sum"] == phases[1].finished[0]["sum"]

    trio.run(main)


def test_a_timeout_notice_in_place_of_a_confirmation_names_its_sender_at_every_node(devnet3):
    """The review's R3 through the real path: node3 never confirms; in place of its
    confirmation it sends each peer a signed timeout notice saying it lacks their
    confirmations. Before: node1 and node2 re-judged that notice as a 'stop' (excusing node3's
    missing confirmation), named nobody and each ended in a dispute with node3. Now both hold
    each other's confirmation, so node3's claim is one nobody backs: both name node3 alone,
    with no dispute, and nothing becomes current."""
    from fusion_prime.protocol.encoding import Encoder
    from fusion_prime.protocol.machine import KIND_ABORT

    nodes, phases = _network(devnet3)

    def rule(peer, msg, identity):
        if msg.kind == KIND_RELAY:
            return None
        if msg.kind != KIND_CONFIRM:
            return msg.to_bytes()
        last = msg.round
        claim = (Encoder().uints([]).uints([1, last, KIND_CONFIRM, 0, 2, last, KIND_CONFIRM, 0]).uints([])
                 .bytes(b"round deadline passed").list_of_bytes([]).finish())
        unsigned = ProtocolMessage(msg.session_id, msg.phase, msg.round, KIND_ABORT, msg.sender, msg.receiver, claim)
        return ProtocolMessage(unsigned.session_id, unsigned.phase, unsigned.round, KIND_ABORT, unsigned.sender,
                               unsigned.receiver, claim, identity.sign(unsigned.digest())).to_bytes()

    _tamper(nodes[2], rule)

    async def main():
        async with running_nodes(*nodes):
            outcome = await nodes[0].sessions.coordinate("sum", 3, fill_sum, attempts=1, round_deadline=2.0)
            await _settled(nodes[:2], outcome.session_id)
            assert not outcome.ok and outcome.culprits == ("node3",), outcome
            assert outcome.disputes == (), outcome
            assert _finished_record(nodes[1], outcome.session_id)["detail"]["culprits"] == ["node3"]
            assert phases[0].finished == [] and phases[1].finished == []

    trio.run(main)
