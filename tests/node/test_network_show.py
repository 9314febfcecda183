"""The issue's remaining "Show" items, on a real 3-process network at the test level.

node2 and node3 are separate OS processes started with the operator CLI; node1 - the
coordinator, the node a wallet API would call - runs in the test process (a fresh ``Node``
per test on the same data directory). Everything between them is gRPC with mutual TLS on
loopback, signed envelopes and encrypted SQLite with ``synchronous=FULL``.

One network (keygen + aux info) serves the whole module; under ``--dist loadgroup`` the
tests run in one xdist worker, in file order.

* 50 signatures from a pool the node filled itself: all verify (libsecp256k1), all R distinct,
  and every participant consumed exactly one presignature per signature.
* 20 concurrent sign requests all complete and verify.
* A presign batch in flight does not block online signing (latencies measured and recorded).
* Backup, restore into a fresh data directory, the restored node in place of the original:
  the network signs again; the backup does not bring a presignature back; a wrong passphrase
  is a clear error and leaves the target untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from coincurve import PublicKey
from fp_guards import HANG_GUARD
from fp_node_helpers import make_node, running_nodes

from fusion_prime.node.config import StorageKeySource, config_to_toml, load_config
from fusion_prime.node.devnet import create_devnet
from fusion_prime.node.storage import database_summary

pytestmark = pytest.mark.xdist_group(name="network-show")

PASSPHRASE_ENV = "FP_SHOW_PASSPHRASE"
PASSPHRASE = "node3 operator passphrase"
ALL = ["node1", "node2", "node3"]


# -------------------------------------------------------------------------------------------
# The network
# -------------------------------------------------------------------------------------------


def _rewrite(config_path: Path, **changes) -> None:
    cfg = dataclasses.replace(load_config(config_path), **changes)
    config_path.write_text(config_to_toml(cfg))


def _spawn(config_path: Path, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.node.cli", "run", "--config", str(config_path), "--log-level", "INFO"],
        stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"), env={**os.environ, **(env or {})},
    )


def _summary(config_path: Path) -> dict:
    """What a node process has committed, read from its database without its key."""
    return database_summary(load_config(config_path).database_path)


def _wait_for(predicate, what: str, timeout: float = HANG_GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def _wait_healthy(node, peers, timeout: float = HANG_GUARD) -> None:
    with trio.fail_after(timeout):
        while not set(peers) <= set(await node.sessions.healthy_peers("sign")):
            await trio.sleep(0.1)


def _verify(group_key: bytes, digest: bytes, sig) -> bool:
    return PublicKey(group_key).verify(sig.to_der(), digest, hasher=None)


def _digest(tag: str, i: int) -> bytes:
    return hashlib.sha256(f"{tag} #{i}".encode()).digest()


@dataclasses.dataclass
class Net:
    base: Path
    devnet: list
    procs: dict[str, subprocess.Popen]
    configs: dict[str, Path]
    key_id: bytes = b""
    group_key: bytes = b""

    def env(self, node_id: str) -> dict[str, str]:
        return {PASSPHRASE_ENV: PASSPHRASE} if node_id == "node3" else {}

    def presigs(self, node_id: str) -> dict[str, int]:
        return _summary(self.configs[node_id])["presignatures"]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    base = tmp_path_factory.mktemp("show-net")
    devnet = create_devnet(base / "net", 3, round_deadline_seconds=20.0, scrypt_log2_n=10, with_metrics=False)
    configs = {d.node_id: d.config_path for d in devnet}
    # node2 and node3 never start presign sessions of their own: the tests decide what is presigned.
    _rewrite(configs["node2"], presign_pool_depth=0)
    # node3's storage key comes from an operator passphrase (what the restore test needs).
    _rewrite(configs["node3"], presign_pool_depth=0,
             storage=StorageKeySource(passphrase_env=PASSPHRASE_ENV, scrypt_log2_n=10))
    # node1 fills its own pool in the first test: depth 50.
    _rewrite(configs["node1"], presign_pool_depth=50)
    network = Net(base, devnet, {}, configs)
    for node_id in ("node2", "node3"):
        network.procs[node_id] = _spawn(configs[node_id], base / f"{node_id}.log", network.env(node_id))
    try:
        node1 = make_node(devnet[0], fill_pool=False)

        async def setup():
            async with running_nodes(node1):
                await _wait_healthy(node1, ["node2", "node3"])
                kg = await node1.keygen(2, 3)
                assert kg.ok, kg
                network.key_id, network.group_key = kg.output["key_id"], kg.output["public_key"]
                aux = await node1.aux_info(ALL)
                assert aux.ok, aux

        trio.run(setup)
        # The coordinator's outcome can precede a participant's commit by a moment.
        _wait_for(lambda: all(_summary(configs[n])["aux_info"] == 1 for n in ("node2", "node3")), "aux info stored")
        yield network
    finally:
        for p in network.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in network.procs.values():
            try:
                codes.append(p.wait(timeout=HANG_GUARD))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(None)
    assert codes == [0, 0], f"node processes did not shut down cleanly: {codes}"


# -------------------------------------------------------------------------------------------
# The tests
# -------------------------------------------------------------------------------------------


def test_pool_fill_then_fifty_signatures_all_verify_with_distinct_r(net, record_property):
    """Key generation and aux info (fixture), the node's own background pool fills to depth 50,
    then 50 online signatures: every one verifies under the group key, no two share an R, and
    each signer consumed exactly 50 presignatures."""
    node1 = make_node(net.devnet[0], fill_pool=True)
    before = {n: net.presigs(n)["consumed"] for n in ("node1", "node2")}

    async def main():
        async with running_nodes(node1):
            await _wait_healthy(node1, ["node2", "node3"])
            t0 = time.perf_counter()
            with trio.fail_after(HANG_GUARD):
                while node1.storage.presignature_counts(net.key_id).available < 50:
                    await trio.sleep(0.1)
            fill = time.perf_counter() - t0
            # node1 leads one signer set ({node1, node2}); node2 has committed its halves too.
            await trio.to_thread.run_sync(
                lambda: _wait_for(lambda: net.presigs("node2")["available"] >= 50, "node2's presignatures"))
            rs, latencies = set(), []
            for i in range(50):
                digest = _digest("fifty", i)
                s0 = time.perf_counter()
                out = await node1.sign(net.key_id, digest)
                latencies.append(time.perf_counter() - s0)
                assert out.ok, out
                assert _verify(net.group_key, digest, out.output), f"signature {i} does not verify"
                assert out.output.is_low_s
                rs.add(out.output.r)
            assert len(rs) == 50, "every signature used a fresh presignature (all R distinct)"
            latencies.sort()
            record_property("pool_fill_50_s", round(fill, 2))
            record_property("sign_p50_ms", round(1000 * latencies[25], 1))
            print(f"pool fill (50): {fill:.1f} s; online sign p50 {1000 * latencies[25]:.1f} ms, "
                  f"max {1000 * latencies[-1]:.1f} ms")

    trio.run(main)
    after_node1 = net.presigs("node1")["consumed"]
    after_node2 = net.presigs("node2")["consumed"]
    assert after_node1 - before["node1"] == 50 and after_node2 - before["node2"] == 50, (
        "each signer consumed exactly one presignature per signature")


def test_twenty_concurrent_sign_requests_all_complete(net):
    node1 = make_node(net.devnet[0], fill_pool=False)

    async def main():
        async with running_nodes(node1):
            await _wait_healthy(node1, ["node2", "node3"])
            sets = (["node1", "node2"], ["node1", "node3"])

            async def presigner(k: int):
                for i in range(k, 20, 2):
                    pre = await node1.presign(net.key_id, sets[i % 2])
                    assert pre.ok, pre

            async with trio.open_nursery() as n:
                for k in range(2):
                    n.start_soon(presigner, k)
            await trio.to_thread.run_sync(lambda: _wait_for(
                lambda: net.presigs("node2")["available"] >= 10 and net.presigs("node3")["available"] >= 10,
                "participants' presignatures"))
            results = {}

            async def one(i: int):
                results[i] = await node1.sign(net.key_id, _digest("concurrent", i))

            t0 = time.perf_counter()
            async with trio.open_nursery() as n:
                for i in range(20):
                    n.start_soon(one, i)
            wall = time.perf_counter() - t0
            assert len(results) == 20
            failed = {i: r for i, r in results.items() if not r.ok}
            assert not failed, failed
            for i, r in results.items():
                assert _verify(net.group_key, _digest("concurrent", i), r.output)
            assert len({r.output.r for r in results.values()}) == 20
            assert len({r.session_id for r in results.values()}) == 20
            print(f"20 concurrent signatures in {wall:.2f} s")

    trio.run(main)


def test_presign_in_flight_does_not_block_online_signing(net, record_property):
    """Start a batch of presign sessions (the heavy phase), then sign while it runs. Every
    online sign completes while the batch is still in flight; latencies are measured and
    recorded (the benchmark owns the speed targets; here only a generous bound)."""
    node1 = make_node(net.devnet[0], fill_pool=False)
    signs = 5

    async def main():
        async with running_nodes(node1):
            await _wait_healthy(node1, ["node2", "node3"])
            for _ in range(signs + 2):  # the online signs draw on {node1, node2}
                assert (await node1.presign(net.key_id, ["node1", "node2"])).ok
            await trio.to_thread.run_sync(lambda: _wait_for(
                lambda: net.presigs("node2")["available"] >= signs + 2, "node2's presignatures"))
            idle = []
            for i in range(2):  # reference latencies with nothing else running
                s0 = time.perf_counter()
                out = await node1.sign(net.key_id, _digest("idle", i))
                idle.append(time.perf_counter() - s0)
                assert out.ok, out

            batch_done = trio.Event()
            batch: list = []

            async def presign_batch():
                async def one():  # the batch runs on node1 and node3: node1 is shared with the signs
                    batch.append(await node1.presign(net.key_id, ["node1", "node3"]))

                async with trio.open_nursery() as n:
                    for _ in range(3):
                        n.start_soon(one)
                batch_done.set()

            latencies, during = [], []
            async with trio.open_nursery() as n:
                n.start_soon(presign_batch)
                # Wait until the batch is inside its heavy rounds on node1.
                with trio.fail_after(HANG_GUARD):
                    while node1.sessions.active_sessions < 3:
                        await trio.sleep(0.005)
                await trio.sleep(0.05)
                for i in range(signs):
                    s0 = time.perf_counter()
                    out = await node1.sign(net.key_id, _digest("during presign", i))
                    latencies.append(time.perf_counter() - s0)
                    during.append(not batch_done.is_set())
                    assert out.ok, out
                    assert _verify(net.group_key, _digest("during presign", i), out.output)
            assert len(batch) == 3 and all(b.ok for b in batch), batch
            assert during[0], "the first online sign finished while the presign batch was still running"
            record_property("sign_during_presign_ms", [round(1000 * t, 1) for t in latencies])
            record_property("sign_idle_ms", [round(1000 * t, 1) for t in idle])
            print(f"online sign while a presign batch runs: {[round(1000 * t, 1) for t in latencies]} ms "
                  f"({sum(during)}/{signs} finished before the batch); idle: "
                  f"{[round(1000 * t, 1) for t in idle]} ms")
            # (no duration asserted: the order above - an online sign done while the batch still
            # ran - is the property; the latencies are printed for the reader and the benchmark)

    trio.run(main)


def test_backup_restore_into_fresh_directory_and_the_network_signs_again(net, tmp_path):
    cfg3 = load_config(net.configs["node3"])
    folder = net.configs["node3"].parent
    backup = tmp_path / "node3.backup"

    def cli(*args: str, passphrase: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fusion_prime.node.cli", *args], capture_output=True,
                              text=True, timeout=60, env={**os.environ, PASSPHRASE_ENV: passphrase})

    node1 = make_node(net.devnet[0], fill_pool=False)
    state: dict = {}

    async def before_backup():
        async with running_nodes(node1):
            await _wait_healthy(node1, ["node2", "node3"])
            # A key of its own (the committee's aux info is reused), so presignature choice is exact.
            kg = await node1.keygen(2, 3)
            assert kg.ok, kg
            state["key_id"], state["group_key"] = kg.output["key_id"], kg.output["public_key"]
            await trio.to_thread.run_sync(lambda: _wait_for(
                lambda: _summary(net.configs["node3"])["keys"] >= 2, "node3's key share"))
            # One presignature for {node1, node3} exists when the backup is taken.
            assert (await node1.presign(state["key_id"], ["node1", "node3"])).ok

    trio.run(before_backup)
    _wait_for(lambda: net.presigs("node3")["available"] >= 1, "node3's presignature")

    # Online backup of the running node3 with the operator CLI.
    out = cli("backup", "--config", str(net.configs["node3"]), "--out", str(backup), passphrase=PASSPHRASE)
    assert out.returncode == 0, out.stderr
    assert backup.exists()

    # A fresh data directory for the restored node: same identity, certificate and address.
    fresh_dir = folder / "data-restored"
    fresh_dir.mkdir()
    restored_cfg = folder / "node-restored.toml"
    restored_cfg.write_text(config_to_toml(dataclasses.replace(cfg3, path=restored_cfg, data_dir=fresh_dir)))
    assert load_config(restored_cfg).database_path.parent == fresh_dir

    # Wrong passphrase: one clear error, exit status 2, and the target stays as it was (empty).
    wrong = cli("restore", "--config", str(restored_cfg), "--backup", str(backup), passphrase="not the passphrase")
    assert wrong.returncode == 2
    assert "wrong passphrase" in wrong.stderr and "nothing was restored" in wrong.stderr, wrong.stderr
    assert PASSPHRASE not in wrong.stderr
    assert list(fresh_dir.iterdir()) == [], "a failed restore left something in the target"
    # The right one restores.
    ok = cli("restore", "--config", str(restored_cfg), "--backup", str(backup), passphrase=PASSPHRASE)
    assert ok.returncode == 0, ok.stderr
    restored = _summary(restored_cfg)
    assert restored["node_id"] == "node3" and restored["keys"] == 2 and restored["aux_info"] == 1
    assert restored["presignatures"]["available"] == 0, "a backup never carries a usable presignature"

    # The restored node replaces the original (same port): stop the original first.
    original = net.procs["node3"]
    original.send_signal(signal.SIGTERM)
    assert original.wait(timeout=HANG_GUARD) == 0
    net.procs["node3"] = _spawn(restored_cfg, net.base / "node3-restored.log", net.env("node3"))
    net.configs["node3"] = restored_cfg

    node1 = make_node(net.devnet[0], fill_pool=False)

    async def after_restore():
        async with running_nodes(node1):
            node1.sessions.forget_health(["node3"])
            await _wait_healthy(node1, ["node2", "node3"])
            key_id, group_key = state["key_id"], state["group_key"]
            # node1 still holds its half of the pre-backup presignature; the restored node3 does
            # not have the other half back. node1's pool resync (at start) learns that from node3
            # and discards it, so it is never used - and the sign still succeeds, on another
            # presignature made on demand.
            stale_ids = [bytes(r[0]) for r in node1.storage._conn().execute(
                "SELECT presig_id FROM presignatures WHERE key_id = ? AND state = 'available'", (key_id,)).fetchall()]
            assert len(stale_ids) == 1
            digest = _digest("stale", 0)
            stale = await node1.sign(key_id, digest)
            assert stale.ok and _verify(group_key, digest, stale.output), stale
            with trio.fail_after(HANG_GUARD):  # the resync pass that asks node3 runs in the background
                while node1.storage.presignature_state(stale_ids[0]) != "consumed":
                    await trio.sleep(0.2)
            discarded = [e for e in node1.storage.audit_log() if e["event"] == "presignature-discarded"]
            assert any(stale_ids[0].hex() in str(e["detail"]) for e in discarded), discarded
            # Fresh presignatures with the restored node, and the network signs again (key B has
            # only {node1, node3} presignatures, so the restored node3 takes part in each).
            for _ in range(2):
                assert (await node1.presign(key_id, ["node1", "node3"])).ok
            await trio.to_thread.run_sync(lambda: _wait_for(
                lambda: net.presigs("node3")["available"] >= 2, "the restored node's presignatures"))
            for i in range(2):
                digest = _digest("after restore", i)
                out = await node1.sign(key_id, digest)
                assert out.ok, out
                assert out.participants == ("node1", "node3")
                assert _verify(group_key, digest, out.output)
            assert net.presigs("node3")["consumed"] >= 2  # the two just used

    trio.run(after_restore)
