"""The deployment on three separate network hosts: three network namespaces, each with its own
address on one bridge (and a fourth for the wallet client), as docker/operators.toml lays them
out. Each operator's folder is made inside its own namespace by ``docker/prepare.py`` (init
--advertise, roster export, roster add: the operator CLI), each node runs the command the
compose file gives its service, binds and advertises only its own host address, and the
wallet client on the fourth host creates a 2-of-3 key and signs through every node; coincurve
verifies each signature.

Needs root and iproute2 (``ip netns``); skipped otherwise. The namespaces have unique names per
run and are removed in a finalizer even when the test fails."""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from coincurve import PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fp_bridge_net import wait_for
from fp_guards import HANG_GUARD

from fusion_prime.node.config import load_config
from fusion_prime.node.tls import certificate_hosts
from fusion_prime.protocol.identity import PartyIdentity

DOCKER = Path(__file__).resolve().parents[2] / "docker"
IP = shutil.which("ip") or "/usr/sbin/ip"

pytestmark = [
    pytest.mark.xdist_group(name="deploy-netns"),
    pytest.mark.skipif(os.geteuid() != 0 or not Path(IP).exists(),
                       reason="network namespaces need root and iproute2 (ip netns)"),
]


def load_prepare() -> ModuleType:
    """docker/prepare.py - the operators' preparation that compose's folders come from."""
    spec = importlib.util.spec_from_file_location("fp_docker_prepare", DOCKER / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def healthcheck_command() -> list[str]:
    """The node image's HEALTHCHECK (exec form), as docker would run it in the container."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    node_stage = text.split(" AS node", 1)[1].split("\nFROM ", 1)[0]
    line = next(ln for ln in node_stage.splitlines() if ln.startswith("HEALTHCHECK"))
    return json.loads(line.split(" CMD ", 1)[1])


def ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=60)


class Hosts:
    """One namespace per operator plus a hub holding the bridge (and the client's address)."""

    def __init__(self, node_ids: list[str]) -> None:
        tag = secrets.token_hex(3)
        self.hub = f"fp{tag}-hub"
        self.ns = {node_id: f"fp{tag}-{node_id}" for node_id in node_ids}
        self.created: list[str] = []

    def up(self, addresses: dict[str, str], client: str, prefix: int) -> None:
        ip("netns", "add", self.hub)
        self.created.append(self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "addr", "add", f"{client}/{prefix}", "dev", "br0")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for i, (node_id, ns) in enumerate(self.ns.items()):
            ip("netns", "add", ns)
            self.created.append(ns)
            ip("-n", self.hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0")
            ip("-n", self.hub, "link", "set", f"v{i}", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{addresses[node_id]}/{prefix}", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")

    def down(self) -> None:
        for ns in reversed(self.created):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=60)

    def exec(self, ns: str, argv: list[str]) -> list[str]:
        return [IP, "netns", "exec", ns, *argv]


def listening(hosts: Hosts, ns: str) -> set[tuple[str, int]]:
    """Every TCP socket listening in namespace ``ns`` (from its own /proc/net/tcp{,6})."""
    found = set()
    for table, size in (("tcp", 4), ("tcp6", 16)):
        text = subprocess.run(hosts.exec(ns, ["cat", f"/proc/net/{table}"]), capture_output=True, text=True,
                              check=True, timeout=60).stdout
        for row in text.splitlines()[1:]:
            fields = row.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
            address = ipaddress.ip_address(packed)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            found.add((str(address), int(port_hex, 16)))
    return found


@pytest.fixture
def network(tmp_path: Path) -> Iterator[dict]:  # type: ignore[type-arg]
    prepare = load_prepare()
    plan = prepare.load_plan(DOCKER / "operators.toml")
    subnet = ipaddress.ip_network(plan.subnet)
    client_address = str(list(subnet.hosts())[-1])
    hosts = Hosts([op.node_id for op in plan.operators])
    procs: dict[str, subprocess.Popen[bytes]] = {}
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "BCL_DATA_DIR": os.environ.get("BCL_DATA_DIR", str(tmp_path / "bitcoinlib"))}
    try:
        hosts.up({op.node_id: op.host for op in plan.operators}, client_address, subnet.prefixlen)
        yield {"prepare": prepare, "plan": plan, "hosts": hosts, "procs": procs, "env": env,
               "client_address": client_address}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=60)
        hosts.down()


def test_three_hosts_sign_across_namespaces(network, tmp_path):
    prepare, plan, hosts, procs, env = (network[k] for k in ("prepare", "plan", "hosts", "procs", "env"))
    ops = {op.node_id: op for op in plan.operators}
    client = PartyIdentity.generate()

    # 1. Each operator prepares its folder on its own host; entries travel as files.
    def in_namespace(op, argv) -> None:  # type: ignore[no-untyped-def]
        result = subprocess.run(hosts.exec(hosts.ns[op.node_id], [sys.executable, "-m", "fusion_prime.node.cli",
                                                                   *argv]),
                                capture_output=True, text=True, env=env, timeout=HANG_GUARD)
        assert result.returncode == 0, f"{op.node_id} {argv[:2]}: {result.stderr}"

    folders = prepare.prepare(plan, tmp_path / "operators", client.public_key, run_cli=in_namespace)
    for node_id, folder in folders.items():
        cfg = load_config(folder / "node.toml")
        assert cfg.listen == plan.peer_address(ops[node_id])  # binds its own host address, not 0.0.0.0
        assert {e.node_id: e.address for e in cfg.roster} == {o.node_id: plan.peer_address(o) for o in ops.values()}
        for e in cfg.roster:  # every certificate names the host its node advertises
            assert ops[e.node_id].host in certificate_hosts(e.tls_cert.read_bytes())[1]

    # 2. Every node runs the compose service's command from its folder, in its namespace.
    for node_id, folder in folders.items():
        log = open(tmp_path / f"{node_id}.log", "wb")  # the daemon writes its log here until it exits
        procs[node_id] = subprocess.Popen(hosts.exec(hosts.ns[node_id], prepare.daemon_argv(plan, ops[node_id])),
                                          cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=log)
    health = healthcheck_command()
    for node_id in folders:
        wait_for(f"{node_id} healthy", lambda n=node_id: subprocess.run(
            hosts.exec(hosts.ns[n], health), env=env, capture_output=True, timeout=60).returncode == 0, procs=procs)

    def wallet(node_id: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """The wallet CLI on the client's host (the hub namespace), talking to one node."""
        key_file = tmp_path / "client.key"
        if not key_file.exists():
            key_file.write_text(client.secret_bytes().hex())
            key_file.chmod(0o600)
        return subprocess.run(hosts.exec(hosts.hub, [
            sys.executable, "-m", "fusion_prime.signer.cli", "--target", f"{ops[node_id].host}:{plan.wallet_port}",
            "--server-cert", str(folders[node_id] / "tls.crt"), "--server-name", node_id,
            "--client-key", str(key_file), *argv]), capture_output=True, text=True, env=env, timeout=HANG_GUARD)

    for node_id in folders:
        wait_for(f"{node_id}'s wallet API", lambda n=node_id: wallet(n, "keys").returncode == 0, procs=procs)

    # 3. Each node bound its own host address only (and loopback for /healthz).
    for node_id in folders:
        host = ops[node_id].host
        assert listening(hosts, hosts.ns[node_id]) == {(host, plan.peer_port), (host, plan.wallet_port),
                                                       ("127.0.0.1", 9101)}, node_id

    # 4. A 2-of-3 key made through node1, a signature coordinated by each node, verified.
    created = wallet("node1", "create-key", "--threshold", "2", "--parties", "3", "--label", "netns")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["threshold"] == 2 and sorted(key["parties"]) == sorted(ops)
    group_key = bytes.fromhex(key["public_key"])
    for node_id in folders:
        listed = json.loads(wallet(node_id, "keys").stdout)
        assert [k["public_key"] for k in listed if k["key_id"] == key["key_id"]] == [key["public_key"]], node_id
    for node_id in folders:
        digest = hashlib.sha256(f"signed through {node_id} on its own host".encode()).digest()
        signed = wallet(node_id, "sign-digest", "--key", key["key_id"], "--digest", digest.hex())
        assert signed.returncode == 0, f"{node_id}: {signed.stderr}"
        sig = json.loads(signed.stdout)
        der = encode_dss_signature(int(sig["r"], 16), int(sig["s"], 16))
        assert PublicKey(group_key).verify(der, digest, hasher=None), node_id
        assert sig["public_key"] == key["public_key"]

    # 5. SIGTERM drains every node; each exits cleanly.
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    for node_id, proc in procs.items():
        assert proc.wait(timeout=HANG_GUARD) == 0, (tmp_path / f"{node_id}.log").read_text()[-2000:]
