"""Key refresh and resharing over the real network: node1 coordinates in the test process,
the other nodes are separate OS processes started with the operator CLI; gRPC with mutual
TLS on loopback, SQLite storage, test level ``test-2048``."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys

import pytest
import trio
from coincurve import PublicKey
from coincurve.ecdsa import cdata_to_der, deserialize_compact
from fp_guards import HANG_GUARD
from fp_node_helpers import make_node, running_nodes

from fusion_prime.node.devnet import create_devnet
from fusion_prime.node.phases import PresignPhase
from fusion_prime.node.session import Refuse, SessionContext
from fusion_prime.node.storage import KeyMaterial, Storage
from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.hd import derive
from fusion_prime.protocol.keygen import KeyShare

PATHS = ["m/0", "m/1/2/3"]


def spawn(devnode, log_path):
    return subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.node.cli", "run", "--config", str(devnode.config_path)],
        stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
    )


def devnet_without_presign_pools(base, n):
    """No background presigning: the test decides which presignatures exist when."""
    devnet = create_devnet(base, n, round_deadline_seconds=20.0, scrypt_log2_n=10)
    for d in devnet:
        text = d.config_path.read_text()
        assert "presign_pool_depth = 8" in text
        d.config_path.write_text(text.replace("presign_pool_depth = 8", "presign_pool_depth = 0"))
    return devnet


async def wait_healthy(node, peers, timeout=HANG_GUARD):
    with trio.fail_after(timeout):
        while not set(peers) <= set(await node.sessions.healthy_peers("reshare")):
            await trio.sleep(0.2)


def verifies(public_key: bytes, digest: bytes, sig) -> bool:
    compact = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big")
    return PublicKey(public_key).verify(cdata_to_der(deserialize_compact(compact)), digest, hasher=None)


def addresses(share: KeyShare) -> dict[str, bytes]:
    return {p: derive(share.group_key, share.chain_code, p).public_key.to_bytes() for p in PATHS}


async def keygen(node1, committee, threshold):
    def fill(p):
        p.keygen.threshold, p.keygen.level = threshold, node1.cfg.security_level

    others = [n for n in node1.material.peers if n not in committee]
    kg = await node1.sessions.coordinate("keygen", len(committee), fill, required=committee, exclude=others,
                                         attempts=1)
    assert kg.ok, kg
    aux = await node1.aux_info(committee)
    assert aux.ok, aux
    return kg.output["key_id"], kg.output["public_key"]


async def sign_and_check(node1, key_id, group_key, share, tag: bytes, path=None):
    digest = hashlib.sha256(tag).digest()
    if path is None:
        out = await node1.sign(key_id, digest)
        assert out.ok, out
        assert verifies(group_key, digest, out.output)
        return out.output
    out = await node1.sign(key_id, digest, [int(x) for x in path.split("/")[1:]])
    assert out.ok, out
    assert verifies(addresses(share)[path], digest, out.output)
    return out.output


def open_db(devnode) -> Storage:
    return Storage(devnode.folder / "data" / "node.sqlite3", KeyMaterial.key_file(devnode.folder / "storage.key"),
                   allow_weak_kdf=True)


def presignature_rows(devnode, key_id):
    db = sqlite3.connect(devnode.folder / "data" / "node.sqlite3")
    try:
        return db.execute("SELECT epoch, state, data IS NULL FROM presignatures WHERE key_id = ?",
                          (key_id,)).fetchall()
    finally:
        db.close()


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            assert p.wait(timeout=HANG_GUARD) == 0
        finally:
            if p.poll() is None:
                p.kill()


def test_refresh_keeps_key_and_addresses_and_kills_old_presignatures(tmp_path):
    devnet = devnet_without_presign_pools(tmp_path / "net", 3)
    procs = [spawn(devnet[i], tmp_path / f"node{i + 1}.log") for i in (1, 2)]
    node1 = make_node(devnet[0], fill_pool=False)
    state = {}
    try:
        async def main():
            async with running_nodes(node1):
                await wait_healthy(node1, ["node2", "node3"])
                key_id, group_key = await keygen(node1, ["node1", "node2", "node3"], 2)
                old = KeyShare.from_bytes(node1.storage.get_key_share(key_id))
                for signers in (["node1", "node2"], ["node1", "node3"], ["node1", "node2"]):
                    pre = await node1.presign(key_id, signers)
                    assert pre.ok, pre
                await sign_and_check(node1, key_id, group_key, old, b"before refresh")

                refreshed = await node1.refresh(key_id)
                assert refreshed.ok, refreshed
                assert refreshed.output["epoch"] == 1 and refreshed.output["public_key"] == group_key
                assert refreshed.output["presignatures_invalidated"] == 2
                new = KeyShare.from_bytes(node1.storage.get_key_share(key_id))
                assert new.epoch == 1 and new.secret_share != old.secret_share
                assert new.group_key == old.group_key and new.chain_code == old.chain_code
                assert addresses(new) == addresses(old), "every address is unchanged"
                assert node1.storage.presignature_counts(key_id).available == 0
                # No presignature of the old epoch is usable: this sign makes one on demand, at the
                # new epoch, and its signature verifies under the unchanged group key.
                await sign_and_check(node1, key_id, group_key, None, b"with an old presignature")
                # A presign proposed with the old share version (a coordinator that has not seen
                # the refresh finish) is refused by the node itself, before any message: no proof
                # could verify across epochs, and no honest node must be blamed for that.
                stale = peer_pb2.SessionProposal(phase="presign", participants=["node1", "node2"])
                stale.presign.key_id = key_id
                stale.presign.aux_id = node1.storage.latest_aux_info(["node1", "node2", "node3"])
                stale.presign.epoch = 0
                ctx = SessionContext("node2", 2, None, stale, {"node1": 1, "node2": 2}, {}, node1.storage,
                                     test_mode=True)
                with pytest.raises(Refuse, match="at epoch 1 here, not 0"):
                    PresignPhase().build(ctx)
                # The network signs with the new shares, on both signer sets and at a derived address.
                for signers in (["node1", "node2"], ["node1", "node3"]):
                    pre = await node1.presign(key_id, signers)
                    assert pre.ok, pre
                await sign_and_check(node1, key_id, group_key, new, b"after refresh 1")
                await sign_and_check(node1, key_id, group_key, new, b"after refresh 2", path="m/1/2/3")
                state["key_id"] = key_id

        trio.run(main)
        stop(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    key_id = state["key_id"]
    for d in devnet:
        rows = presignature_rows(d, key_id)
        assert rows, f"{d.node_id} held presignatures"
        old_rows = [r for r in rows if r[0] == 0]
        assert all(state == "consumed" and erased for _, state, erased in old_rows), (
            f"{d.node_id}: a presignature made before the refresh is still usable")
        db = sqlite3.connect(d.folder / "data" / "node.sqlite3")
        aux_rows = db.execute("SELECT COUNT(*) FROM aux_info").fetchone()[0]
        db.close()
        assert aux_rows == 1, f"{d.node_id}: the old aux info (Paillier secret key) outlived the refresh"
        with open_db(d) as store:
            assert store.key_epoch(key_id) == 1
            assert "key-share-version-stored" in [e["event"] for e in store.audit_log()]
            assert store.verify_audit_chain()
    assert any(r[0] == 1 for r in presignature_rows(devnet[1], key_id))


def test_reshare_replaces_a_node_and_the_new_committee_signs(tmp_path):
    devnet = devnet_without_presign_pools(tmp_path / "net", 4)
    procs = [spawn(devnet[i], tmp_path / f"node{i + 1}.log") for i in (1, 2, 3)]
    node1 = make_node(devnet[0], fill_pool=False)
    state = {}
    try:
        async def main():
            async with running_nodes(node1):
                await wait_healthy(node1, ["node2", "node3", "node4"])
                key_id, group_key = await keygen(node1, ["node1", "node2", "node3"], 2)
                old = KeyShare.from_bytes(node1.storage.get_key_share(key_id))
                for signers in (["node1", "node3"], ["node1", "node2"]):
                    pre = await node1.presign(key_id, signers)
                    assert pre.ok, pre

                # 2-of-{1,2,3} -> 2-of-{1,2,4}: node3 deals (every healthy holder does) and leaves.
                out = await node1.reshare(key_id, ["node1", "node2", "node4"], 2)
                assert out.ok, out
                assert out.output["epoch"] == 1 and not out.output["retired"] and out.output["aux_id"]
                assert out.participants == ("node1", "node2", "node3", "node4")
                new = KeyShare.from_bytes(node1.storage.get_key_share(key_id))
                assert new.group_key == old.group_key and addresses(new) == addresses(old)
                assert node1.storage.key_info(key_id)["parties"] == ["node1", "node2", "node4"]
                assert node1.storage.presignature_counts(key_id).available == 0
                for signers in (["node1", "node4"], ["node1", "node2"]):
                    pre = await node1.presign(key_id, signers)
                    assert pre.ok, pre
                    await sign_and_check(node1, key_id, group_key, new, b"new committee " + signers[1].encode())
                state["key_id"] = key_id

        trio.run(main)
        stop(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    key_id = state["key_id"]
    with open_db(devnet[2]) as node3:
        assert node3.key_info(key_id) is None and key_id not in node3.list_keys()
        assert node3.retired_key(key_id)["epoch"] == 0
        assert presignature_rows(devnet[2], key_id) == [], "the leaving node keeps no presignature"
        assert "key-share-retired" in [e["event"] for e in node3.audit_log()]
    with open_db(devnet[3]) as node4:
        share = KeyShare.from_bytes(node4.get_key_share(key_id))
        assert share.epoch == 1 and share.parties == (1, 2, 4) and share.threshold == 2
