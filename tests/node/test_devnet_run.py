"""`devnet --run` gives a network a wallet can use: every node runs as the signer daemon with
its wallet API, and the client key it writes may create a key and sign (issue 17: before, the
nodes ran without the wallet API and no key could ever be created on a devnet)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from coincurve import PublicKey
from fp_guards import HANG_GUARD

from fusion_prime.node.identity import load_identity
from fusion_prime.signer.client import WalletClient, WalletError

pytestmark = pytest.mark.xdist_group(name="devnet-run")  # one daemon network at a time


def test_devnet_run_serves_the_wallet_api_and_its_client_creates_a_key_and_signs(tmp_path: Path) -> None:
    base = tmp_path / "devnet"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.node.cli", "devnet", "--dir", str(base), "--nodes", "3",
         "--test-mode", "--run"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True)  # its daemons share its process group: nothing outlives a failed test

    def kill_group() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    guard = threading.Timer(HANG_GUARD, kill_group)  # the reads below block
    guard.start()
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any(line.startswith("try:") for line in lines):
            line = proc.stdout.readline()
            assert line, f"devnet --run ended before printing how to reach it: {lines}"
            lines.append(line.strip())
        wallet = next(x for x in lines if x.startswith("wallet API:"))
        ports = {m[0]: int(m[1]) for m in re.findall(r"(node\d) 127\.0\.0\.1:(\d+)", wallet)}
        assert set(ports) == {"node1", "node2", "node3"}
        client_key = base / "client.key"
        assert f"client key: {client_key}" in lines
        assert client_key.stat().st_mode & 0o077 == 0
        client = load_identity(client_key)
        deadline = time.monotonic() + HANG_GUARD
        for node_id, port in ports.items():  # the daemons are still starting
            node_cert = (base / node_id / "tls.crt").read_bytes()
            with WalletClient(f"127.0.0.1:{port}", node_cert, client, server_name=node_id) as w:
                while True:
                    try:
                        w.list_keys()
                        break
                    except (WalletError, grpc.RpcError):
                        assert proc.poll() is None and time.monotonic() < deadline, f"{node_id} never answered"
                        time.sleep(0.2)
        cert = (base / "node1" / "tls.crt").read_bytes()
        with WalletClient(f"127.0.0.1:{ports['node1']}", cert, client, server_name="node1") as w:
            # node1's first health probes may still miss a peer that came up last: CreateKey
            # probes again for a while (PEERS_WAIT_SECONDS) instead of refusing at once
            created = w.create_key(2, 3, "devnet")
            key_id, digest = bytes(created.key_id), bytes(range(32))
            info = w.public_key(key_id, "m/0/1")
            sig = w.sign(key_id, digest, "m/0/1")  # the first sign may run its presign on demand
            assert sig.public_key.to_bytes() == bytes(info.public_key)
            assert PublicKey(bytes(info.public_key)).verify(sig.to_der(), digest, hasher=None)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG_GUARD) == 0
    finally:
        guard.cancel()
        kill_group()  # the daemons too, whether or not devnet itself has ended
        proc.wait()


def test_free_ports_are_distinct_and_outside_the_range_outgoing_connections_use() -> None:
    from fusion_prime.node.devnet import free_ports

    ports = free_ports(64)
    assert len(set(ports)) == 64
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:
        pytest.skip("no ip_local_port_range on this system")
    if low - 10_000 >= 4_096:
        assert all(10_000 <= p < low for p in ports), ports
