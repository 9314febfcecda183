"""Issue 12, item 1 (node side): a node whose database went backwards - a lost WAL, a restored
file copy - notices it, quarantines and resynchronises its presignature pool with its peers,
so that no presignature is ever signed with twice (the peers' consumed ones are never proposed
again), and it signs again at once. Through real signer daemons (processes, gRPC + mTLS), and
in process over the real transport for the refusal codes and the resync RPC."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections import defaultdict

import pytest
import trio
from fp_guards import HANG_GUARD
from fp_node_helpers import LogCapture, make_node, running_nodes
from fp_signer_net import SignerNet, digest_of, verifies

from fusion_prime.node.devnet import create_devnet
from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.identity import PartyIdentity

ALICE = PartyIdentity.generate()


def _consumptions(net: SignerNet) -> dict[str, set[str]]:
    """Every presignature consumption on record anywhere: presignature -> sign sessions."""
    sessions: dict[str, set[str]] = defaultdict(set)
    for node_id in ("node1", "node2", "node3"):
        with net.storage(node_id) as store:
            assert store.verify_audit_chain()
            for e in store.audit_log():
                if e["event"] == "presignature-consumed":
                    detail = e["detail"] if isinstance(e["detail"], dict) else json.loads(e["detail"])
                    sessions[detail["presignature"]].add(e["session_id"])
    return sessions


def _audit_events(net: SignerNet, node_id: str, since: float = 0.0) -> list[str]:
    with net.storage(node_id) as store:
        return [e["event"] for e in store.audit_log() if e["at"] >= since]


def _wait_for_pool(net: SignerNet, node_id: str, key_id: bytes, at_least: int) -> None:
    deadline = time.time() + HANG_GUARD
    with net.client_for(node_id) as w:
        while not any(k.key_id == key_id and k.presignatures_available >= at_least for k in w.list_keys()):
            assert time.time() < deadline, "the presignature pool never filled"
            time.sleep(0.3)


def _sign(net: SignerNet, node_id: str, key_id: bytes, group_key: bytes, tag: str) -> None:
    with net.client_for(node_id) as w:
        sig = w.sign(key_id, digest_of(tag), "m", request_id=tag)
    assert verifies(group_key, digest_of(tag), sig)


def _restart(net: SignerNet, node_id: str) -> None:
    net.start(node_id)
    net.wait_started(node_id)


@pytest.fixture(scope="module")
def net(tmp_path_factory):  # type: ignore[no-untyped-def]
    network = SignerNet(tmp_path_factory.mktemp("rollback"), ALICE)
    network.start_all()
    yield network
    network.stop_all()


@pytest.mark.xdist_group(name="rollback-network")
def test_lost_wal_and_restored_copy_never_sign_a_presignature_twice(net) -> None:  # type: ignore[no-untyped-def]
    with net.client_for("node1") as w:
        created = w.create_key(2, 3, "rollback")
    key_id, group_key = bytes(created.key_id), bytes(created.group_public_key)
    # node1's own pool (the presignatures it leads, which ListKeys counts) is full, so node1
    # signs from its pool - not on demand - before and after its database goes back
    _wait_for_pool(net, "node1", key_id, 8)

    # 1. Lost WAL: a clean restart checkpoints the WAL into the main file; three signs go to
    #    the WAL only; kill -9, delete the WAL: the database is back before those signs.
    assert net.stop("node1") == 0
    _restart(net, "node1")
    for i in range(3):
        _sign(net, "node1", key_id, group_key, f"before-wal-loss-{i}")
    assert net.stop("node1", signal.SIGKILL) == -signal.SIGKILL
    data = net.data_dir("node1")
    for suffix in ("-wal", "-shm"):
        (data / f"node.sqlite3{suffix}").unlink(missing_ok=True)
    _restart(net, "node1")
    for i in range(3):  # the rolled-back node signs again straight away
        _sign(net, "node1", key_id, group_key, f"after-wal-loss-{i}")

    # 2. File-copy restore: copy the data folder of a stopped node, sign, put the copy back.
    assert net.stop("node1") == 0
    copy = data.parent / "data-copy"
    shutil.copytree(data, copy)
    _restart(net, "node1")
    for i in range(3):
        _sign(net, "node1", key_id, group_key, f"before-restore-{i}")
    assert net.stop("node1") == 0
    restored_at = time.time()
    shutil.rmtree(data)
    shutil.copytree(copy, data)
    _restart(net, "node1")
    for i in range(3):
        _sign(net, "node1", key_id, group_key, f"after-restore-{i}")

    net.stop_all()
    twice = {p: s for p, s in _consumptions(net).items() if len(s) > 1}
    assert not twice, f"presignatures consumed by two sign sessions (a second σ_i left a node): {twice}"
    events = _audit_events(net, "node1")
    assert events.count("pool-quarantined") >= 2 and events.count("pool-resynchronised") >= 2, (
        "both rollbacks were detected and resolved by a resync")
    after = _audit_events(net, "node1", since=restored_at)
    assert "presignature-discarded" in after and "pool-quarantined" in after
    log = "".join(p.read_text() for p in sorted(net.by_id["node1"].folder.glob("signer-*.log")))
    assert "database rollback detected" in log


# -------------------------------------------------------------------------------------------
# In process, over the real transport: refusal codes, the resync RPC, quarantine by evidence
# -------------------------------------------------------------------------------------------


def test_refusals_say_why_and_a_consumed_refusal_quarantines_until_resync(tmp_path) -> None:
    Refusal, State = peer_pb2.ProposalReply, peer_pb2.PresignatureStates
    devnet = create_devnet(tmp_path / "net", 3, round_deadline_seconds=10.0, scrypt_log2_n=10)
    for d in devnet:  # the test decides which presignatures exist
        d.config_path.write_text(d.config_path.read_text().replace("presign_pool_depth = 8", "presign_pool_depth = 0"))
    nodes = [make_node(d, fill_pool=False) for d in devnet]
    node1, node2, node3 = nodes
    capture = LogCapture()

    async def main() -> None:
        async with running_nodes(*nodes):
            with trio.fail_after(HANG_GUARD):
                while set(await node1.sessions.healthy_peers("sign")) != {"node2", "node3"}:
                    await trio.sleep(0.1)
            kg = await node1.keygen(2, 3)
            assert kg.ok, kg
            key_id = kg.output["key_id"]
            assert (await node1.aux_info(["node1", "node2", "node3"])).ok
            made = []
            for _ in range(3):
                pre = await node1.presign(key_id, ["node1", "node2"])
                assert pre.ok, pre
                made.append(pre.output["presignature_id"])
            first = made[0]

            # The resync RPC: node2 signs with it and holds it; node3 is not a signer and learns nothing.
            assert await node2.transport.presignature_status("node1", [first, b"\x00" * 32]) == [
                State.AVAILABLE, State.UNKNOWN]
            assert await node3.transport.presignature_status("node1", [first]) == [State.UNKNOWN]

            # Leader rule: node2 proposes a sign with node1's presignature. node1 refuses with a
            # code, consumes nothing; node2's own build refuses too; nobody is blamed.
            def fill(p: peer_pb2.SessionProposal) -> None:
                p.sign.key_id, p.sign.presignature_id, p.sign.digest = key_id, first, b"\x01" * 32

            proposal = node2.sessions._proposal("sign", ["node1", "node2"], fill, 10.0)
            reply = await node2.transport.propose("node1", proposal, 5.0)
            assert not reply.accepted and reply.refusal == Refusal.NOT_PRESIGNATURE_LEADER, reply
            out = await node2.sessions.coordinate("sign", 2, fill, required=["node1", "node2"], attempts=1)
            assert not out.ok and "node1" not in out.culprits
            assert node1.storage.presignature_state(first) == "available"
            assert node2.storage.presignature_state(first) == "available"

            # node1's database "went backwards": node2 consumed `first`, node1 still holds it.
            assert node2.storage.discard_presignature(first, "test: consumed in a session node1 forgot")
            signed = await node1.sign(key_id, b"\x02" * 32)
            assert signed.ok, signed
            assert "node2" not in signed.culprits
            assert node1.storage.presignature_state(first) == "consumed"
            assert node1.pool_status()["state"] == "synced" and not node1.quarantined
            assert node1.metrics.registry.get_sample_value("fp_pool_rollbacks_detected_total") == 1.0
            events = [e["event"] for e in node1.storage.audit_log()]
            assert events.index("pool-quarantined") < events.index("pool-resynchronised")
            assert node1.storage.pool_quarantine() is None

            # A quarantined node joins no sign session (refusal code, not a culprit). Its resync
            # pass (which would lift the quarantine at once: node2 holds nothing to verify) is
            # held back until the refusal has been seen.
            gate = trio.Event()
            resync = node2._resync

            async def held_resync() -> None:
                await gate.wait()
                await resync()

            node2._resync = held_resync
            await node2._enter_quarantine("test: evidence")
            assert node2.health()["pool"]["state"] == "quarantined"
            assert node2.storage.pool_quarantine() is not None, "persisted"
            proposal = node1.sessions._proposal("sign", ["node1", "node2"], fill, 10.0)
            reply = await node1.transport.propose("node2", proposal, 5.0)
            assert not reply.accepted and reply.refusal == Refusal.POOL_QUARANTINED
            gate.set()
            with trio.fail_after(HANG_GUARD):
                while node2.quarantined:
                    await trio.sleep(0.05)
            assert node2.storage.pool_quarantine() is None

    try:
        trio.run(main)
    finally:
        capture.close()
    lines = [e for e in capture.events() if e.get("event", "").startswith("database rollback detected")]
    assert len(lines) == 2 and {e["node"] for e in lines} == {"node1", "node2"}
