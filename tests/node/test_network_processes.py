"""The real thing: CGGMP21 between three node *processes'* worth of daemons - node1 runs in
the test process (as coordinator, since the wallet API is not part of the node), node2 and
node3 are separate OS processes started with the operator CLI - over gRPC with mutual TLS
on loopback, at the test security level."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import trio
from coincurve import PublicKey
from fp_guards import HANG_GUARD
from fp_node_helpers import LogCapture, make_node, running_nodes

from fusion_prime.node.devnet import create_devnet
from fusion_prime.protocol.keygen import KeyShare


def spawn(devnode, log_path):
    return subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.node.cli", "run", "--config", str(devnode.config_path),
         "--log-level", "DEBUG"],
        stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"),
    )


async def wait_healthy(node, peers, timeout=HANG_GUARD):
    with trio.fail_after(timeout):
        while True:
            healthy = await node.sessions.healthy_peers("keygen")
            if set(peers) <= set(healthy):
                return
            await trio.sleep(0.2)


def secrets_of(devnet) -> list[str]:
    out = []
    for d in devnet:
        out.append((d.folder / "identity.key").read_text().strip())
        out.append((d.folder / "storage.key").read_text().strip())
    return out


def test_three_process_network_keygen_presign_sign(tmp_path):
    devnet = create_devnet(tmp_path / "net", 3, round_deadline_seconds=20.0, scrypt_log2_n=10)
    logs = [tmp_path / f"node{i}.log" for i in (2, 3)]
    procs = [spawn(devnet[1], logs[0]), spawn(devnet[2], logs[1])]
    capture = LogCapture()
    node1 = make_node(devnet[0], fill_pool=False)
    secret_values: list[str] = []
    try:
        async def main():
            async with running_nodes(node1):
                await wait_healthy(node1, ["node2", "node3"])
                kg = await node1.keygen(2, 3)
                assert kg.ok, kg
                key_id, group_key = kg.output["key_id"], kg.output["public_key"]
                share = KeyShare.from_bytes(node1.storage.get_key_share(key_id))
                secret_values.append(f"{share.secret_share:064x}")
                aux = await node1.aux_info(["node1", "node2", "node3"])
                assert aux.ok, aux
                for signers in (["node1", "node2"], ["node1", "node3"], ["node1", "node2"]):
                    pre = await node1.presign(key_id, signers)
                    assert pre.ok, pre
                rs = set()
                for i in range(3):
                    digest = hashlib.sha256(b"message %d" % i).digest()
                    t0 = time.perf_counter()
                    out = await node1.sign(key_id, digest)
                    assert out.ok, out
                    sig = out.output
                    compact = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big")
                    from coincurve.ecdsa import cdata_to_der, deserialize_compact

                    assert PublicKey(group_key).verify(cdata_to_der(deserialize_compact(compact)), digest,
                                                       hasher=None), "signature verifies under the group key"
                    assert sig.is_low_s
                    rs.add(sig.r)
                    print(f"sign {i}: {1000 * (time.perf_counter() - t0):.1f} ms")
                assert len(rs) == 3, "every signature used a fresh presignature"
                # Past the pool a presignature is made on demand: slower, never a failure.
                more = await node1.sign(key_id, hashlib.sha256(b"one past the pool").digest())
                assert more.ok and more.output.r not in rs, more
                counts = node1.storage.presignature_counts(key_id)
                assert counts.consumed == 4 and node1.storage.led_presignatures(key_id, "node1") == []

        trio.run(main)
        # Graceful shutdown on SIGTERM.
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(timeout=HANG_GUARD) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        capture.close()
    text = capture.text + "".join(p.read_text() for p in logs)
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(e["event"] == "session finished" and e.get("phase") == "presign" for e in lines)
    assert any(e["event"] == "signal received" for e in lines)
    for value in secrets_of(devnet) + secret_values:
        assert value not in text, "secret material in the logs"
    assert os.path.getsize(logs[0]) > 0


def _verify(group_key: bytes, digest: bytes, sig) -> bool:
    from coincurve.ecdsa import cdata_to_der, deserialize_compact

    compact = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big")
    return PublicKey(group_key).verify(cdata_to_der(deserialize_compact(compact)), digest, hasher=None)


def test_sigkill_during_presign_then_recovery(tmp_path):
    # Short enough to show the abort comes from the deadline; aux info's rounds (prime
    # generation + proofs) get 4x that (HEAVY_PHASE_DEADLINE_FACTOR), which fits on a loaded
    # 2-core CI machine.
    devnet = create_devnet(tmp_path / "net", 3, round_deadline_seconds=8.0, scrypt_log2_n=10)
    for d in devnet:  # no background presigning: node3's envelopes below are from this session's presign
        d.config_path.write_text(d.config_path.read_text().replace("presign_pool_depth = 8", "presign_pool_depth = 0"))
    logs = [tmp_path / f"node{i}.log" for i in (2, 3)]
    procs = {"node2": spawn(devnet[1], logs[0]), "node3": spawn(devnet[2], logs[1])}
    node1 = make_node(devnet[0], fill_pool=False)
    try:
        async def main():
            async with running_nodes(node1):
                await wait_healthy(node1, ["node2", "node3"])
                kg = await node1.keygen(2, 3)
                assert kg.ok, kg
                key_id, group_key = kg.output["key_id"], kg.output["public_key"]
                assert (await node1.aux_info(["node1", "node2", "node3"])).ok
                assert (await node1.presign(key_id, ["node1", "node3"])).ok
                rs = []
                first = await node1.sign(key_id, b"\x01" * 32)
                assert first.ok and _verify(group_key, b"\x01" * 32, first.output)
                rs.append(first.output.r)

                # SIGKILL node3 in the middle of a presign session.
                result = {}

                async def presign():
                    result["outcome"] = await node1.presign(key_id, ["node1", "node3"])

                def from_node3() -> float:
                    return node1.metrics.registry.get_sample_value(
                        "fp_envelopes_received_total", {"peer": "node3", "outcome": "accepted"}) or 0.0

                before = from_node3()
                async with trio.open_nursery() as n:
                    n.start_soon(presign)
                    while from_node3() == before:  # node3 is in the session: its round 1 arrived
                        await trio.sleep(0.001)
                    procs["node3"].send_signal(signal.SIGKILL)
                outcome = result["outcome"]
                assert outcome.status == "timeout" and outcome.culprits == ("node3",), outcome
                # ended by its round deadline ("timeout", node3 named), not by a hang guard
                assert procs["node3"].wait(timeout=10) == -signal.SIGKILL

                # Restart node3 from its database; the network signs again.
                procs["node3"] = spawn(devnet[2], tmp_path / "node3-restarted.log")
                await wait_healthy(node1, ["node2", "node3"])
                assert (await node1.presign(key_id, ["node1", "node3"])).ok
                assert (await node1.presign(key_id, ["node1", "node2"])).ok
                for i in range(2):
                    digest = bytes([i + 2]) * 32
                    out = await node1.sign(key_id, digest)
                    assert out.ok and _verify(group_key, digest, out.output)
                    rs.append(out.output.r)
                assert len(set(rs)) == len(rs) == 3, "no presignature was used twice across the crash"

        trio.run(main)
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            assert p.wait(timeout=HANG_GUARD) == 0
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    from fusion_prime.node.storage import KeyMaterial, Storage

    with Storage(devnet[2].folder / "data" / "node.sqlite3",
                 KeyMaterial.key_file(devnet[2].folder / "storage.key"), allow_weak_kdf=True) as store:
        events = [e["event"] for e in store.audit_log()]
        assert "session-interrupted" in events, "the killed session is on record as interrupted"
        assert store.verify_audit_chain()
