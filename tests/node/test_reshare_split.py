"""Issue 11's headline defect, through the real message path: a resharing whose last round
one malicious new member makes end differently at different peers must not destroy the key.

Old key 2-of-3 on {node1, node2, node3}; dealers {node1, node2}; new committee {node3, node4,
node5}. node5 sends a malformed (but signed) last-round echo to node3 and node4 only. Before:
node1 and node2 retired their shares, node3 and node4 aborted, only node5 held a new share -
fewer than t shares of either version, the key was gone. Now nobody makes anything current
before every participant confirmed: everybody aborts naming node5, every old share is intact
and signs, and a retry of the resharing completes."""

from __future__ import annotations

import hashlib

import trio
from fp_guards import HANG_GUARD
from fp_node_helpers import make_node, running_nodes
from test_agreement import _resigned, _tamper
from test_network_refresh import keygen, verifies

from fusion_prime.node.devnet import create_devnet
from fusion_prime.protocol.machine import KIND_ECHO


def test_a_split_last_round_of_a_reshare_keeps_the_key_and_a_retry_completes(tmp_path):
    devnet = create_devnet(tmp_path / "net", 5, round_deadline_seconds=20.0, scrypt_log2_n=10)
    for d in devnet:
        text = d.config_path.read_text()
        d.config_path.write_text(text.replace("presign_pool_depth = 8", "presign_pool_depth = 0"))
    nodes = [make_node(d, fill_pool=False) for d in devnet]
    node1 = nodes[0]
    tampering = {"on": True}

    def rule(peer, msg, identity):
        if tampering["on"] and msg.phase == "reshare" and msg.kind == KIND_ECHO and msg.round == 2 \
                and peer in ("node3", "node4"):
            return _resigned(msg, identity, b"\x02not an echo")
        return msg.to_bytes()

    _tamper(nodes[4], rule)

    async def main():
        async with running_nodes(*nodes):
            key_id, group_key = await keygen(node1, ["node1", "node2", "node3"], 2)
            split = await node1.reshare(key_id, ["node3", "node4", "node5"], 2, dealers=["node1", "node2"])
            assert not split.ok and split.culprits == ("node5",), split
            with trio.fail_after(HANG_GUARD):
                for n in nodes[:4]:
                    while n.storage.session_state(split.session_id) in (None, "running"):
                        await trio.sleep(0.05)
            for n in nodes[:4]:
                events = [e for e in n.storage.audit_log() if e["session_id"] == split.session_id
                          and e["event"] in ("session-aborted", "session-timeout", "session-done")]
                assert events[-1]["event"] == "session-aborted", (n.cfg.node_id, events)
                assert events[-1]["detail"]["culprits"] == ["node5"], (n.cfg.node_id, events)
            # every old share is still there, at epoch 0, and still signs
            for n in nodes[:3]:
                assert n.storage.key_epoch(key_id) == 0, n.cfg.node_id
                assert n.storage.retired_key(key_id) is None, n.cfg.node_id
            for n in nodes[3:]:
                assert n.storage.key_info(key_id) is None, n.cfg.node_id
            pre = await node1.presign(key_id, ["node1", "node2"])
            assert pre.ok, pre
            digest = hashlib.sha256(b"the key survived").digest()
            signed = await node1.sign(key_id, digest)
            assert signed.ok and verifies(group_key, digest, signed.output), signed
            # node5 behaves now: the retry completes, the dealers retire, the new members hold epoch 1
            tampering["on"] = False
            retry = await node1.reshare(key_id, ["node3", "node4", "node5"], 2, dealers=["node1", "node2"])
            assert retry.ok, retry
            with trio.fail_after(HANG_GUARD):
                for n in nodes:
                    while n.storage.session_state(retry.session_id) in (None, "running"):
                        await trio.sleep(0.05)
            for n in nodes[2:]:
                assert n.storage.key_epoch(key_id) == 1, n.cfg.node_id
                assert n.storage.key_info(key_id)["public_key"] == group_key
            for n in nodes[:2]:
                assert n.storage.retired_key(key_id) is not None, n.cfg.node_id

    trio.run(main)
