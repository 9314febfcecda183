"""Issue 11, "Done means": a split at the last round of keygen, aux info, key refresh, presign and sign,
through the real message path - three in-process nodes over gRPC with mutual TLS, level
``test-2048`` - where node3's own transport rewrites what it sends to node1 only, signed with
node3's identity key. node2 gets node3's genuine messages.

Before the confirmation step (and, for sign, before sign had one) node2 finished while node1
aborted naming node3: a key share, a new epoch or a presignature current at one honest node and
not at another, or a signature reported by one node and a failed session by the other. Now, for
every phase: every honest participant ends aborted naming node3 alone, nothing becomes current
anywhere (no key, no new epoch, no presignature, no signature), and a retry without node3 - or,
where the committee must include it, an honest retry - completes.

The reshare split is tested in ``test_reshare_split.py``; the engine's cases (confirmation to
one peer only, withheld messages, false complaints) with the sum protocol in
``test_agreement.py``."""

from __future__ import annotations

import hashlib

import pytest
import trio
from fp_guards import HANG_GUARD
from fp_node_helpers import make_node, running_nodes
from test_agreement import _finished_record, _resigned, _tamper
from test_network_refresh import devnet_without_presign_pools, verifies

from fusion_prime.protocol.machine import BROADCAST, KIND_ECHO, KIND_MAIN, ProtocolMessage
from fusion_prime.protocol.sign import SIGMA_ROUND

LAST_ROUND = {"keygen": 3, "aux-info": 3, "key-refresh": 3, "presign": 3, "sign": SIGMA_ROUND}
HONEST = ("node1", "node2")


class Culprit:
    """node3's outgoing-message rule: in ``phase``'s last round, what ``kind`` names goes to
    node1 rewritten (and re-signed by node3); everything else - and everything to node2 - as
    the honest code produced it. ``phase = None`` switches it off."""

    def __init__(self, phase: str | None, kind: str = "echo") -> None:
        self.phase, self.kind = phase, kind
        self.rewritten = 0

    def __call__(self, peer: str, msg: ProtocolMessage, identity) -> bytes:  # type: ignore[no-untyped-def]
        if peer != "node1" or msg.phase != self.phase or msg.round != LAST_ROUND[msg.phase]:
            return msg.to_bytes()
        if self.kind == "echo" and msg.kind == KIND_ECHO:
            payload = b"\x01not an echo"
        elif self.kind == "private" and msg.kind == KIND_MAIN and msg.receiver != BROADCAST:
            payload = b"\x01not a round message"
        elif self.kind == "broadcast" and msg.kind == KIND_MAIN and msg.receiver == BROADCAST:
            payload = self.other_broadcast(msg)
        else:
            return msg.to_bytes()
        self.rewritten += 1
        return _resigned(msg, identity, payload)

    @staticmethod
    def other_broadcast(msg: ProtocolMessage) -> bytes:
        """For sign's σ round: a well-formed σ that is not node3's (σ + 1)."""
        from fusion_prime.protocol.curve import Q, scalar_from_bytes, scalar_to_bytes
        from fusion_prime.protocol.encoding import Decoder, Encoder

        sigma = scalar_from_bytes(Decoder(msg.payload, "σ").bytes(32), allow_zero=True)
        return Encoder().bytes(scalar_to_bytes((sigma + 1) % Q)).finish()


@pytest.fixture
def network(tmp_path):
    devnet = devnet_without_presign_pools(tmp_path / "net", 3)
    nodes = [make_node(d, fill_pool=False) for d in devnet]
    culprit = Culprit(None)
    _tamper(nodes[2], culprit)
    return nodes, culprit


async def _ended_everywhere(nodes, session_id: bytes) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(HANG_GUARD):
        for n in nodes:
            while n.storage.session_state(session_id) in (None, "running"):
                await trio.sleep(0.05)


async def _assert_split_averted(nodes, outcome, culprit: Culprit) -> None:  # type: ignore[no-untyped-def]
    """node1 coordinated ``outcome``: every honest participant ended aborted naming node3 alone."""
    assert culprit.rewritten, "node3 never misbehaved: the test would prove nothing"
    assert not outcome.ok and outcome.culprits == ("node3",), outcome
    await _ended_everywhere(nodes, outcome.session_id)
    for n in nodes[:2]:
        record = _finished_record(n, outcome.session_id)
        assert record["event"] == "session-aborted", (n.cfg.node_id, record)
        assert record["detail"]["culprits"] == ["node3"], (n.cfg.node_id, record)
    # node3 ran the honest code and its own output was never confirmed either
    assert _finished_record(nodes[2], outcome.session_id)["event"] != "session-done"


async def _wait_healthy(node1, peers, phase):  # type: ignore[no-untyped-def]
    """Until node1's health probes (2 s each) see every peer: on a loaded machine a probe can time
    out, and a session that requires every member would then fail before it starts."""
    with trio.fail_after(HANG_GUARD):
        while not set(peers) <= set(await node1.sessions.healthy_peers(phase)):
            await trio.sleep(0.2)


async def _keygen(node1, committee, threshold=2):  # type: ignore[no-untyped-def]
    await _wait_healthy(node1, [n for n in committee if n != node1.cfg.node_id], "keygen")

    def fill(p):  # type: ignore[no-untyped-def]
        p.keygen.threshold, p.keygen.level = threshold, node1.cfg.security_level

    others = [n for n in node1.material.peers if n not in committee]
    return await node1.sessions.coordinate("keygen", len(committee), fill, required=committee, exclude=others,
                                           attempts=1)


async def _key_with_aux(node1):  # type: ignore[no-untyped-def]
    kg = await _keygen(node1, ["node1", "node2", "node3"])
    assert kg.ok, kg
    aux = await node1.aux_info(["node1", "node2", "node3"])
    assert aux.ok, aux
    return kg.output["key_id"], kg.output["public_key"]


def test_keygen_split_at_the_last_round(network):  # type: ignore[no-untyped-def]
    nodes, culprit = network
    node1 = nodes[0]
    culprit.phase = "keygen"

    async def main():  # type: ignore[no-untyped-def]
        async with running_nodes(*nodes):
            split = await _keygen(node1, ["node1", "node2", "node3"])
            await _assert_split_averted(nodes, split, culprit)
            for n in nodes:
                assert n.storage.list_keys() == [], n.cfg.node_id
                staged = n.storage.staged_output(split.session_id)
                assert staged is None or staged[1] != "confirmed", (n.cfg.node_id, staged)
            retry = await _keygen(node1, list(HONEST))
            assert retry.ok, retry
            await _ended_everywhere(nodes[:2], retry.session_id)  # node2 may finish a moment after node1
            for n in nodes[:2]:
                assert n.storage.list_keys() == [retry.output["key_id"]], n.cfg.node_id
            assert nodes[2].storage.list_keys() == []

    trio.run(main)


def test_aux_info_split_at_the_last_round(network):  # type: ignore[no-untyped-def]
    """Aux info (each node's Paillier key and ring-Pedersen parameters) current at one node and
    not at another would leave the committee unable to presign with either version. Now no node
    holds the split run's aux info, and an honest retry gives all three the same one, with which
    they presign and sign."""
    nodes, culprit = network
    node1 = nodes[0]
    committee = ["node1", "node2", "node3"]

    async def main():  # type: ignore[no-untyped-def]
        async with running_nodes(*nodes):
            kg = await _keygen(node1, committee)
            assert kg.ok, kg
            key_id, group_key = kg.output["key_id"], kg.output["public_key"]
            await _ended_everywhere(nodes, kg.session_id)
            culprit.phase = "aux-info"
            await _wait_healthy(node1, committee[1:], "aux-info")
            split = await node1.aux_info(committee)
            await _assert_split_averted(nodes, split, culprit)
            for n in nodes:
                assert n.storage.latest_aux_info(committee) is None, n.cfg.node_id
            culprit.phase = None
            await _wait_healthy(node1, committee[1:], "aux-info")
            retry = await node1.aux_info(committee)
            assert retry.ok, retry
            await _ended_everywhere(nodes, retry.session_id)
            held = {n.storage.latest_aux_info(committee) for n in nodes}
            assert len(held) == 1 and None not in held, held
            pre = await node1.presign(key_id, ["node1", "node3"])
            assert pre.ok, pre
            digest = hashlib.sha256(b"after the aux-info retry").digest()
            signed = await node1.sign(key_id, digest)
            assert signed.ok and verifies(group_key, digest, signed.output), signed

    trio.run(main)


def test_key_refresh_split_at_the_last_round(network):  # type: ignore[no-untyped-def]
    """The review's case: after a split refresh node1 was at epoch 1 and node3 at epoch 0, and
    their presign failed with each blaming the other. Now every node stays at epoch 0 (and
    presigns and signs there), and an honest retry moves all three to epoch 1."""
    nodes, culprit = network
    node1 = nodes[0]

    async def main():  # type: ignore[no-untyped-def]
        async with running_nodes(*nodes):
            key_id, group_key = await _key_with_aux(node1)
            culprit.phase = "key-refresh"
            split = await node1.refresh(key_id)
            await _assert_split_averted(nodes, split, culprit)
            for n in nodes:
                assert n.storage.key_epoch(key_id) == 0, n.cfg.node_id
            pre = await node1.presign(key_id, ["node1", "node3"])
            assert pre.ok, pre
            digest = hashlib.sha256(b"epoch 0 still signs").digest()
            signed = await node1.sign(key_id, digest)
            assert signed.ok and verifies(group_key, digest, signed.output), signed
            culprit.phase = None
            retry = await node1.refresh(key_id)
            assert retry.ok, retry
            await _ended_everywhere(nodes, retry.session_id)
            for n in nodes:
                assert n.storage.key_epoch(key_id) == 1, n.cfg.node_id

    trio.run(main)


@pytest.mark.parametrize("kind", ["echo", "private"])
def test_presign_split_at_the_last_round(network, kind):  # type: ignore[no-untyped-def]
    """node3 sends node1 a malformed last-round echo, or a malformed last-round private message
    (which node1 turns into a complaint that node2 re-judges): no presignature anywhere, and a
    presign without node3 completes."""
    nodes, culprit = network
    node1 = nodes[0]

    async def main():  # type: ignore[no-untyped-def]
        async with running_nodes(*nodes):
            key_id, _ = await _key_with_aux(node1)
            culprit.phase, culprit.kind = "presign", kind
            split = await node1.presign(key_id, ["node1", "node2", "node3"])
            await _assert_split_averted(nodes, split, culprit)
            for n in nodes:
                assert n.storage.held_presignatures() == [], n.cfg.node_id
                counts = n.storage.presignature_counts(key_id)
                assert (counts.available, counts.reserved, counts.consumed) == (0, 0, 0), n.cfg.node_id
            retry = await node1.presign(key_id, list(HONEST))
            assert retry.ok, retry
            await _ended_everywhere(nodes[:2], retry.session_id)
            made = retry.output["presignature_id"]
            assert [n.storage.presignature_state(made) for n in nodes] == ["available", "available", None]

    trio.run(main)


@pytest.mark.parametrize("kind", ["echo", "broadcast"])
def test_sign_split_at_the_last_round(network, kind):  # type: ignore[no-untyped-def]
    """node3 sends node1 a malformed σ-round echo (before: node2 done with the signature, node1
    aborted), or a σ that is not its own (an equivocation the echoes expose). No node reports
    a signature, the presignature stays consumed at every signer, and the next request signs
    without node3."""
    nodes, culprit = network
    node1 = nodes[0]

    async def main():  # type: ignore[no-untyped-def]
        async with running_nodes(*nodes):
            key_id, group_key = await _key_with_aux(node1)
            pre = await node1.presign(key_id, ["node1", "node2", "node3"])
            assert pre.ok, pre
            await _ended_everywhere(nodes, pre.session_id)
            presig_id = pre.output["presignature_id"]
            culprit.phase, culprit.kind = "sign", kind
            digest = hashlib.sha256(b"split me").digest()
            split = await node1.sign(key_id, digest, attempts=1)
            assert split.output is None
            assert sorted(split.participants) == ["node1", "node2", "node3"], split
            await _assert_split_averted(nodes, split, culprit)
            for n in nodes:
                assert n.storage.presignature_state(presig_id) == "consumed", n.cfg.node_id
            retry = await node1.sign(key_id, digest)
            assert retry.ok and verifies(group_key, digest, retry.output), retry
            assert "node3" not in retry.participants, retry

    trio.run(main)


def test_a_confirmation_of_another_transcript_after_a_signer_confirmed_does_not_split_a_sign(network):  # type: ignore[no-untyped-def]
    """The review's R2 through the real path: node3 confirms to node1; to node2 - once node2
    has confirmed - it sends a confirmation of another transcript, and node1's relay reaches
    node2 only after it. Before: node1 reported the signature while node2 recorded a failed
    session naming node3 (a sign kept no certificate, so nothing reconciled them). Now node2,
    having confirmed, records node3's fault and completes with the relay: both are done."""
    from fusion_prime.protocol.machine import KIND_CONFIRM, KIND_RELAY

    nodes, _culprit = network
    node1, _node2, node3 = nodes
    state: dict = {}
    admit3 = node3.transport.admit

    def admit(inbound, *a, **kw):  # node3 sees node2's sign confirmation arrive
        try:
            m = ProtocolMessage.from_bytes(inbound.payload)
            if m.phase == "sign" and m.sender == 2 and m.kind == KIND_CONFIRM:
                state["node2 confirmed"].set()
        except Exception:  # not a protocol message: nothing to observe
            pass
        return admit3(inbound, *a, **kw)

    node3.transport.admit = admit
    send3, send1 = node3.transport.send, node1.transport.send
    identity3 = node3.material.identity

    async def node3_send(receiver, *, session_id, phase, round, broadcast, payload, deadline):  # type: ignore[no-untyped-def]
        msg = ProtocolMessage.from_bytes(payload)
        if receiver == "node2" and msg.phase == "sign" and msg.kind == KIND_RELAY:
            return True  # node2 can complete only through node1's relay
        if receiver == "node2" and msg.phase == "sign" and msg.kind == KIND_CONFIRM:
            await state["node2 confirmed"].wait()
            ok = await send3(receiver, session_id=session_id, phase=phase, round=round, broadcast=broadcast,
                             payload=_resigned(msg, identity3, bytes(32)), deadline=deadline)
            state["other confirmation delivered"].set()
            return ok
        return await send3(receiver, session_id=session_id, phase=phase, round=round, broadcast=broadcast,
                           payload=payload, deadline=deadline)

    async def node1_send(receiver, *, session_id, phase, round, broadcast, payload, deadline):  # type: ignore[no-untyped-def]
        msg = ProtocolMessage.from_bytes(payload)
        if receiver == "node2" and msg.phase == "sign" and msg.kind == KIND_RELAY:
            await state["other confirmation delivered"].wait()  # the network is slow on this one path
        return await send1(receiver, session_id=session_id, phase=phase, round=round, broadcast=broadcast,
                           payload=payload, deadline=deadline)

    node3.transport.send, node1.transport.send = node3_send, node1_send

    async def main():  # type: ignore[no-untyped-def]
        state["node2 confirmed"], state["other confirmation delivered"] = trio.Event(), trio.Event()
        async with running_nodes(*nodes):
            key_id, group_key = await _key_with_aux(node1)
            pre = await node1.presign(key_id, ["node1", "node2", "node3"])
            assert pre.ok, pre
            await _ended_everywhere(nodes, pre.session_id)
            digest = hashlib.sha256(b"confirmed, then lied to").digest()
            signed = await node1.sign(key_id, digest, attempts=1)
            # node1 answers once it holds every confirmation, which can be before node3 has seen
            # node2's and lied to it: wait for the lie (node1's relay to node2 waits for it too)
            with trio.fail_after(HANG_GUARD):
                await state["other confirmation delivered"].wait()
            assert signed.ok and verifies(group_key, digest, signed.output), signed
            assert sorted(signed.participants) == ["node1", "node2", "node3"], signed
            await _ended_everywhere(nodes[:2], signed.session_id)  # node1 answered; node2 may still be ending
            for n in nodes[:2]:
                record = _finished_record(n, signed.session_id)
                assert record["event"] == "session-done", (n.cfg.node_id, record)
            presig_id = pre.output["presignature_id"]
            for n in nodes:
                assert n.storage.presignature_state(presig_id) == "consumed", n.cfg.node_id

    trio.run(main)


def test_a_confirmation_sent_to_one_signer_after_the_others_deadline_does_not_split_a_sign(network):  # type: ignore[no-untyped-def]
    """The last split of issue 11, through the real path. node3 holds its σ-round echo to node1 back
    (node1 confirms later than node2, so its deadline is later), withholds its confirmation
    from node2, and sends it to node1 only once node2's deadline and notice grace are over -
    node1 completes the certificate, node2 had already timed out. Before: node2 (the
    coordinator) answered its caller with a failed session naming node3 while node1 held the
    signature, and its records said so for good. Now node2, having confirmed, asks its peers
    for the certificate and, while none has it, keeps the signature *in doubt* (its answer
    says so); its reconcile loop asks on, finds node1's certificate once node1 completed,
    and node2's side ends done too - both records agree."""
    from fusion_prime.protocol.machine import KIND_ABORT, KIND_CONFIRM, KIND_RELAY

    nodes, _culprit = network
    node1, node2, node3 = nodes
    deadline, held_back = 10.0, 8.0  # node1 confirms `held_back` s after node2
    state: dict = {}
    admit3 = node3.transport.admit

    def admit(inbound, *a, **kw):  # node3 sees node2's timeout notice arrive
        try:
            m = ProtocolMessage.from_bytes(inbound.payload)
            if m.phase == "sign" and m.sender == node2_index() and m.kind == KIND_ABORT:
                state["node2 timed out"].set()
        except Exception:  # not a protocol message: nothing to observe
            pass
        return admit3(inbound, *a, **kw)

    def node2_index() -> int:
        return state["index of node2"]

    node3.transport.admit = admit
    send3 = node3.transport.send

    async def node3_send(receiver, *, session_id, phase, round, broadcast, payload, deadline):  # type: ignore[no-untyped-def]
        msg = ProtocolMessage.from_bytes(payload)
        if phase == "sign":
            if msg.kind == KIND_RELAY or (msg.kind == KIND_CONFIRM and receiver == "node2"):
                return True  # node2 never hears from node3 again; node1 only its late confirmation
            if msg.kind == KIND_ECHO and msg.round == SIGMA_ROUND and receiver == "node1":
                await trio.sleep(held_back)
            if msg.kind == KIND_CONFIRM and receiver == "node1":
                await state["node2 timed out"].wait()
                # past node2's notice grace (2 s), and 3 s before node1's own deadline
                await trio.sleep(2.0 + 3.0)
                state["late confirmation sent"] = True
                deadline = trio.current_time() + 5.0  # a fresh envelope deadline: the one routed with it has passed
        return await send3(receiver, session_id=session_id, phase=phase, round=round, broadcast=broadcast,
                           payload=payload, deadline=deadline)

    node3.transport.send = node3_send
    node3.transport.certificate_provider = lambda peer, session_id: b""  # nor does it show its certificate

    async def main():  # type: ignore[no-untyped-def]
        state["node2 timed out"] = trio.Event()
        async with running_nodes(*nodes):
            key_id, group_key = await _key_with_aux(node1)
            await _wait_healthy(node2, ["node1", "node3"], "presign")
            pre = await node2.presign(key_id, ["node1", "node2", "node3"])
            assert pre.ok, pre
            await _ended_everywhere(nodes, pre.session_id)
            state["index of node2"] = node2.sessions.peers["node2"].index
            node2.sessions.round_deadline = deadline
            digest = hashlib.sha256(b"confirmed to one, late").digest()
            signed = await node2.sign(key_id, digest, attempts=1)
            assert sorted(signed.participants) == ["node1", "node2", "node3"], signed
            assert state["node2 timed out"].is_set()
            if signed.ok:  # node2 asked while node1 had already completed
                assert verifies(group_key, digest, signed.output), signed
            else:  # node2 answered before node1 completed: the signature is kept in doubt
                assert signed.status == "timeout" and "in doubt" in signed.reason, signed
            with trio.fail_after(HANG_GUARD):  # node3's late confirmation, node1 done, node2 reconciled
                while not state.get("late confirmation sent") or any(
                        n.storage.session_state(signed.session_id) != "done" for n in nodes[:2]):
                    await trio.sleep(0.2)
            for n in nodes[:2]:
                record = _finished_record(n, signed.session_id)
                assert record["event"] == "session-done", (n.cfg.node_id, record)
                # the certificate is kept with the session (served to a participant that asks)
                assert n.storage.certificate_for(signed.session_id, "node3"), n.cfg.node_id
            assert node1.storage.certificate_for(signed.session_id, "outsider") == b""
            # node2's signature, kept in doubt until node1's certificate came, is the group's
            if not signed.ok:
                phase, row_state, _output, certificate = node2.storage.staged_output(signed.session_id)
                assert (phase, row_state) == ("sign", "confirmed") and certificate

    trio.run(main)
