"""Three signer daemons (``python -m fusion_prime.signer.daemon``) as separate processes: gRPC +
mTLS between them, TLS to the wallet client, at the test security level. For tests that stop,
kill and restart nodes (issue 12: availability, rollback)."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from coincurve import PublicKey
from fp_guards import HANG_GUARD

from fusion_prime.node.devnet import create_devnet
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.client import WalletClient


class SignerNet:
    def __init__(self, base: Path, client: PartyIdentity, *, limit: int = 100_000) -> None:
        self.devnet = create_devnet(base, 3, with_metrics=False, round_deadline_seconds=20.0)
        self.by_id = {d.node_id: d for d in self.devnet}
        self.client = client
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.certs = {d.node_id: (d.folder / "tls.crt").read_bytes() for d in self.devnet}
        for d in self.devnet:
            (d.folder / "policy.toml").write_text(
                "[default]\n"
                f'clients = ["{client.public_key.hex()}"]\n'
                f"max_signatures_per_window = {limit}\n"
                "window_seconds = 3600\n"
                f'create_key_clients = ["{client.public_key.hex()}"]\n')
        self.starts: dict[str, int] = defaultdict(int)

    def start(self, node_id: str) -> None:
        d = self.by_id[node_id]
        port_file = d.folder / "wallet.port"
        port_file.unlink(missing_ok=True)
        self.starts[node_id] += 1
        log = open(d.folder / f"signer-{self.starts[node_id]}.log", "wb")
        self.procs[node_id] = subprocess.Popen(
            [sys.executable, "-m", "fusion_prime.signer.daemon", "--config", str(d.config_path), "--policy",
             str(d.folder / "policy.toml"), "--port-file", str(port_file)],
            stdout=subprocess.DEVNULL, stderr=log)

    def wait_started(self, *node_ids: str, timeout: float = HANG_GUARD) -> None:
        deadline = time.time() + timeout
        for node_id in node_ids:
            port_file = self.by_id[node_id].folder / "wallet.port"
            while not (port_file.exists() and port_file.read_text()):
                assert time.time() < deadline, f"{node_id} did not start"
                assert self.procs[node_id].poll() is None, f"{node_id} died at startup"
                time.sleep(0.1)
            self.ports[node_id] = int(port_file.read_text())

    def start_all(self) -> None:
        for d in self.devnet:
            self.start(d.node_id)
        self.wait_started(*self.by_id)

    def stop(self, node_id: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs.pop(node_id)
        proc.send_signal(sig)
        return proc.wait(timeout=HANG_GUARD)

    def stop_all(self) -> None:
        for node_id in list(self.procs):
            if self.procs[node_id].poll() is None:
                self.procs[node_id].terminate()
        for node_id, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=HANG_GUARD)
            finally:
                if proc.poll() is None:
                    proc.kill()
            del self.procs[node_id]

    def client_for(self, node_id: str) -> WalletClient:
        return WalletClient(f"127.0.0.1:{self.ports[node_id]}", self.certs[node_id], self.client,
                            server_name=node_id)

    def data_dir(self, node_id: str) -> Path:
        return self.by_id[node_id].folder / "data"

    def storage(self, node_id: str):  # type: ignore[no-untyped-def]
        """The node's database (open it only while the node is stopped)."""
        from fusion_prime.node.storage import KeyMaterial, Storage

        d = self.by_id[node_id]
        return Storage(d.folder / "data" / "node.sqlite3", KeyMaterial.key_file(d.folder / "storage.key"),
                       allow_weak_kdf=True)


def verifies(public_key: bytes, digest: bytes, sig) -> bool:  # type: ignore[no-untyped-def]
    return PublicKey(public_key).verify(sig.to_der(), digest, hasher=None)


def digest_of(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()
