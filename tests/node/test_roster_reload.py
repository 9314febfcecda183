"""Adding an operator without restarting the network: the roster is reloaded from the config
file (SIGHUP in `cli run`), the new node's TLS handshakes are accepted from then on, and a
resharing brings it into a key's committee. Real gRPC + mutual TLS on loopback, SQLite, test
level ``test-2048``; four nodes in this process."""

from __future__ import annotations

import dataclasses
import hashlib

import trio
from coincurve import PublicKey
from coincurve.ecdsa import cdata_to_der, deserialize_compact
from fp_guards import HANG_GUARD
from fp_node_helpers import make_node, running_nodes

from fusion_prime.node.config import config_to_toml, load_config
from fusion_prime.node.devnet import create_devnet


def write_roster(devnode, keep) -> None:
    """Rewrite a node's config with only the roster entries in ``keep``."""
    cfg = load_config(devnode.config_path)
    devnode.config_path.write_text(
        config_to_toml(dataclasses.replace(cfg, roster=tuple(e for e in cfg.roster if e.node_id in keep))))


def verifies(public_key: bytes, digest: bytes, sig) -> bool:
    compact = sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big")
    return PublicKey(public_key).verify(cdata_to_der(deserialize_compact(compact)), digest, hasher=None)


async def healthy(node, phase="reshare") -> set[str]:
    return set(await node.sessions.healthy_peers(phase))


async def wait_healthy(node, peers, timeout=HANG_GUARD) -> None:
    with trio.fail_after(timeout):
        while not set(peers) <= await healthy(node):
            await trio.sleep(0.2)


def test_a_node_added_by_roster_reload_joins_a_committee_through_resharing(tmp_path):
    devnet = create_devnet(tmp_path / "net", 4, round_deadline_seconds=20.0, scrypt_log2_n=10, with_metrics=False)
    full = {d.node_id: d.config_path.read_text() for d in devnet}
    for d in devnet[:3]:  # node1..node3 start without node4: it arrives later
        write_roster(d, {"node1", "node2", "node3"})
    nodes = [make_node(d, fill_pool=False, prime_pool=False) for d in devnet]
    n1, n2, n3, n4 = nodes

    async def main():
        async with running_nodes(*nodes):
            await wait_healthy(n1, ["node2", "node3"])
            # node4 knows the others, but they do not know it: its handshakes are refused.
            assert await healthy(n4) == set()
            kg = await n1.keygen(2, 3)
            assert kg.ok and set(kg.participants) == {"node1", "node2", "node3"}, kg
            key_id, group_key = kg.output["key_id"], kg.output["public_key"]
            assert (await n1.aux_info(["node1", "node2", "node3"])).ok

            # A reload that changes a staying peer's identity key is refused and changes nothing.
            cfg = load_config(devnet[0].config_path)
            forged = tuple(dataclasses.replace(e, identity_public_key=n4.material.identity.public_key)
                           if e.node_id == "node2" else e for e in cfg.roster)
            devnet[0].config_path.write_text(config_to_toml(dataclasses.replace(cfg, roster=forged)))
            assert n1.reload_roster_from_file() is None
            assert n1.material.peers["node2"].identity_public_key == n2.material.identity.public_key
            assert (await n1.presign(key_id, ["node1", "node2"])).ok, "node2 still works with node1"

            # The operators add node4 to their configs and send SIGHUP: no restart.
            for d, node in zip(devnet[:3], nodes[:3], strict=True):
                d.config_path.write_text(full[d.node_id])
                change = node.reload_roster_from_file()
                assert change is not None and change.added == ("node4",) and change.removed == (), change
            await wait_healthy(n1, ["node2", "node3", "node4"])
            await wait_healthy(n4, ["node1", "node2", "node3"])

            out = await n1.reshare(key_id, ["node1", "node2", "node4"], 2)
            assert out.ok, out
            assert n4.storage.key_info(key_id)["parties"] == ["node1", "node2", "node4"]
            assert n3.storage.key_info(key_id) is None, "node3 left the committee and retired its share"
            pre = await n1.presign(key_id, ["node1", "node4"])
            assert pre.ok, pre
            digest = hashlib.sha256(b"signed with the operator added at run time").digest()
            sig = await n1.sign(key_id, digest)
            assert sig.ok and verifies(group_key, digest, sig.output), sig

            # node4 is in a committee now: removing it is refused; removing node3 is not.
            write_roster(devnet[0], {"node1", "node2", "node3"})
            assert n1.reload_roster_from_file() is None and "node4" in n1.material.peers
            devnet[0].config_path.write_text(full["node1"])
            write_roster(devnet[0], {"node1", "node2", "node4"})
            change = n1.reload_roster_from_file()
            assert change is not None and change.removed == ("node3",)
            with trio.fail_after(HANG_GUARD):
                while "node1" in await healthy(n3, "sign"):  # its calls are refused from now on
                    await trio.sleep(0.2)
            assert "node3" not in await healthy(n1, "sign")

    trio.run(main)


def test_sighup_reloads_the_roster_of_a_running_node_process(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    devnet = create_devnet(tmp_path / "net", 3, scrypt_log2_n=10, with_metrics=False)
    full = devnet[0].config_path.read_text()
    write_roster(devnet[0], {"node1", "node2"})
    log = tmp_path / "node1.log"
    proc = subprocess.Popen([sys.executable, "-m", "fusion_prime.node.cli", "run", "--config",
                             str(devnet[0].config_path)], stdout=subprocess.DEVNULL, stderr=open(log, "wb"))

    def events() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]

    def wait_for(event: str) -> dict:
        deadline = time.time() + HANG_GUARD
        while time.time() < deadline:
            found = [e for e in events() if e["event"] == event]
            if found:
                return found[-1]
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"no {event!r} in the node's log")

    try:
        wait_for("node running")
        devnet[0].config_path.write_text("this is not TOML [")
        proc.send_signal(signal.SIGHUP)
        assert "not valid TOML" in wait_for("roster reload refused")["reason"]
        devnet[0].config_path.write_text(full)
        proc.send_signal(signal.SIGHUP)
        assert wait_for("roster reloaded")["added"] == ["node3"]
        assert proc.poll() is None, "SIGHUP does not stop the node"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG_GUARD) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
