"""Create the files for an N-node network on loopback: identity keys, TLS certificates,
per-node TOML configs with a shared roster, and storage key files.

Used by ``fusion_prime.node.cli devnet`` and by the multi-process tests. Every node gets
its own folder; the roster references copies of every node's certificate in ``peers/`` so
that a node folder is self-contained (as it would be on an operator's machine).
"""

from __future__ import annotations

import random
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from .config import NodeConfig, PeerEntry, StorageKeySource, config_to_toml, load_config
from .identity import create_identity
from .storage import KeyMaterial
from .tls import create_certificate_files


@dataclass(frozen=True)
class DevnetNode:
    node_id: str
    folder: Path
    config_path: Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (may race with other processes; devnet only)."""
    return free_ports(1, host)[0]


def _below_ephemeral_range() -> range | None:
    """The ports under the kernel's ephemeral range (Linux: ``ip_local_port_range``), if there
    are enough of them to pick from."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(10_000, low) if low - 10_000 >= 4_096 else None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the OS considers free right now.

    Chosen at random *below* the ephemeral range where there is one: a port the OS hands out for
    ``bind(0)`` comes from the same range as every outgoing connection's local port, so with many
    connections open (a test suite, two of them side by side) one of them could take the port
    between this choice and the node's own bind - a devnet node then failed to start. Below the
    range only another chooser can take it. All sockets stay bound until every port is chosen:
    asking one at a time lets the same port be handed out twice, which once gave two devnet nodes
    one address.
    """
    pool = _below_ephemeral_range()
    pick = random.SystemRandom()
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, pick.choice(pool) if pool is not None else 0))
            except OSError:  # taken: draw again
                s.close()
                continue
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def create_devnet(
    base: Path,
    n: int,
    *,
    base_port: int | None = None,
    with_metrics: bool = True,
    test_mode: bool = True,
    security_level: str | None = None,
    round_deadline_seconds: float = 10.0,
    scrypt_log2_n: int | None = None,
) -> list[DevnetNode]:
    """Create ``n`` nodes named node1..nodeN under ``base``; returns their config paths."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    level = security_level or ("test-2048" if test_mode else "128")
    ids = [f"node{i}" for i in range(1, n + 1)]
    if base_port:
        ports = [base_port + i for i in range(n)]
        metric_ports = [base_port + 100 + i for i in range(n)] if with_metrics else []
    else:
        chosen = free_ports(2 * n if with_metrics else n)
        ports, metric_ports = chosen[:n], chosen[n:]
    identities, certs = {}, {}
    for node_id in ids:
        folder = base / node_id
        identities[node_id] = create_identity(folder / "identity.key")
        create_certificate_files(node_id, folder / "tls.crt", folder / "tls.key", hosts=["127.0.0.1"])
        certs[node_id] = folder / "tls.crt"
        KeyMaterial.create_key_file(folder / "storage.key")
    nodes = []
    for i, node_id in enumerate(ids):
        folder = base / node_id
        (folder / "peers").mkdir(exist_ok=True)
        roster = []
        for j, peer_id in enumerate(ids):
            copy = folder / "peers" / f"{peer_id}.crt"
            shutil.copyfile(certs[peer_id], copy)
            roster.append(PeerEntry(peer_id, j + 1, f"127.0.0.1:{ports[j]}", identities[peer_id].public_key, copy))
        cfg = NodeConfig(
            path=(folder / "node.toml").resolve(),
            node_id=node_id,
            listen=f"127.0.0.1:{ports[i]}",
            data_dir=folder / "data",
            identity_key=folder / "identity.key",
            tls_cert=folder / "tls.crt",
            tls_key=folder / "tls.key",
            roster=tuple(roster),
            storage=StorageKeySource(key_file=folder / "storage.key",
                                     scrypt_log2_n=scrypt_log2_n or 15),
            metrics_listen=f"127.0.0.1:{metric_ports[i]}" if with_metrics else None,
            security_level=level,
            round_deadline_seconds=round_deadline_seconds,
            test_mode=test_mode,
        )
        cfg.path.write_text(config_to_toml(cfg))
        load_config(cfg.path)  # what we wrote must validate
        nodes.append(DevnetNode(node_id, folder, cfg.path))
    return nodes
