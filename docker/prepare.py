"""Prepare the three operators' folders of the compose network from ``docker/operators.toml``.

    python docker/prepare.py [--plan docker/operators.toml] [--out docker/operators]

It does what three operators would do, through the same operator CLI: each runs
``fusion-prime-node init --advertise`` for its node, exports its roster entry, and adds the other
two (``roster add`` checks each certificate and key). Then it writes each node's wallet policy
and bridge section and the Bitcoin devnet's RPC password (a compose secret), and a wallet client
key allowed to create keys and sign (``out/client.key``).

The same functions drive the three-host test (``tests/node/test_deploy_netns.py``): there every
CLI call runs inside that node's network namespace, and each daemon is started with
:func:`daemon_argv` - the command the compose file gives its service - from the node folder,
which is the container's working directory. Paths in every generated file are relative to the
node folder, so a folder works unchanged on the host, in a namespace and in the container.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Where a node folder is inside the node image (its WORKDIR); compose mounts into it.
CONTAINER_FOLDER = "/var/lib/fusion-prime/node"
BITCOIN_RPC_PORT = 18443
ANVIL_PORT = 8545
SOURCE_CHAIN_ID = 31337
DESTINATION_CHAIN_ID = 31338
BITCOIN_REGTEST = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
#: The files of a node folder that are secrets (mounted as compose secrets, mode 0600), the
#: public ones (mounted read-only), and the one the node writes (its database folder).
SECRET_FILES = ("identity.key", "tls.key", "storage.key", "bridge.toml")
PUBLIC_FILES = ("node.toml", "tls.crt", "peers", "policy.toml")
WRITABLE_FILES = ("data",)


class PlanError(ValueError):
    """The operators file is malformed; one line says where."""


@dataclass(frozen=True)
class Operator:
    node_id: str
    index: int
    host: str


@dataclass(frozen=True)
class Plan:
    subnet: str
    security_level: str
    test_mode: bool
    peer_port: int
    wallet_port: int
    bridge_port: int
    metrics: str
    operators: tuple[Operator, ...]
    bitcoin: str
    bitcoin_rpc_user: str
    anvil_source: str
    anvil_destination: str

    def peer_address(self, op: Operator) -> str:
        return f"{op.host}:{self.peer_port}"


def load_plan(path: Path) -> Plan:
    try:
        data = tomllib.loads(path.read_text())
        chains = data["chains"]
        operators = tuple(Operator(str(o["node_id"]), int(o["index"]), str(o["host"])) for o in data["operator"])
        plan = Plan(
            subnet=str(data["subnet"]), security_level=str(data["security_level"]), test_mode=bool(data["test_mode"]),
            peer_port=int(data["peer_port"]),
            wallet_port=int(data["wallet_port"]), bridge_port=int(data["bridge_port"]), metrics=str(data["metrics"]),
            operators=operators, bitcoin=str(chains["bitcoin"]), bitcoin_rpc_user=str(chains["bitcoin_rpc_user"]),
            anvil_source=str(chains["anvil_source"]), anvil_destination=str(chains["anvil_destination"]))
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"{path}: {type(exc).__name__}: {exc}") from None
    subnet = ipaddress.ip_network(plan.subnet)
    hosts = [op.host for op in operators] + [plan.bitcoin, plan.anvil_source, plan.anvil_destination]
    if len(set(hosts)) != len(hosts) or any(ipaddress.ip_address(h) not in subnet for h in hosts):
        raise PlanError(f"{path}: every host needs its own address inside {plan.subnet}")
    return plan


def init_argv(plan: Plan, op: Operator, folder: Path) -> list[str]:
    """``fusion-prime-node`` arguments that create ``op``'s folder: it binds and advertises its
    own host address, its certificate names that address, its storage key is a key file (a
    compose secret; a passphrase would have to sit in an environment variable)."""
    argv = ["init", "--dir", str(folder), "--node-id", op.node_id, "--index", str(op.index),
            "--listen", plan.peer_address(op), "--advertise", plan.peer_address(op), "--metrics", plan.metrics,
            "--level", plan.security_level, "--key-file"]
    return [*argv, "--test-mode"] if plan.test_mode else argv


def daemon_argv(plan: Plan, op: Operator) -> list[str]:
    """The node service's command (entry point first), run from the node folder: the signer
    daemon with its bridge in one process, wallet and Bridge APIs on the node's own address."""
    return ["fusion-prime-bridge-daemon", "--config", "node.toml", "--policy", "policy.toml", "--bridge",
            "bridge.toml", "--wallet-listen", f"{op.host}:{plan.wallet_port}",
            "--bridge-listen", f"{op.host}:{plan.bridge_port}"]


def policy_toml(client_public_key: bytes) -> str:
    """A wallet policy that lets one client create keys and sign (a demo network's admin)."""
    client = client_public_key.hex()
    return ("# Who may use this node's wallet API (every node checks its own copy).\n[default]\n"
            f'clients = ["{client}"]\nmax_signatures_per_window = 10000\nwindow_seconds = 3600\n'
            f'create_key_clients = ["{client}"]\n')


def bridge_toml(plan: Plan, op: Operator, rpc_password: str) -> str:
    """The node's bridge section, not set up yet (no key, no Gateway): the daemon runs the signer
    and wallet API and re-reads this file until the operator completes it. It holds the Bitcoin
    RPC password, so it is a secret."""
    peers = "".join(f'\n[[bridge.peers]]\nnode_id = "{p.node_id}"\naddress = "{p.host}:{plan.bridge_port}"\n'
                    f'tls_cert = "peers/{p.node_id}.crt"\n' for p in plan.operators if p != op)
    return (
        "[bridge]\n"
        'key_id = ""                      # the group key, once created through the wallet API\n'
        'gateway = ""                     # the Gateway, once deployed with that key as signer\n'
        'database = "sqlite:///data/bridge.sqlite3"\n'
        f'destination_chain = "eip155:{DESTINATION_CHAIN_ID}"\n'
        f'destination_rpc = "http://{plan.anvil_destination}:{ANVIL_PORT}"\n'
        "\n[[bridge.chains]]\n"
        f'caip2 = "{BITCOIN_REGTEST}"\nrpc = "http://{plan.bitcoin}:{BITCOIN_RPC_PORT}"\n'
        f'rpc_user = "{plan.bitcoin_rpc_user}"\nrpc_password = "{rpc_password}"\nsymbol = "BTC"\n'
        "min_confirmations = 2\nvalue_per_block = 5000000000\nmax_confirmations = 6\n"
        "\n[[bridge.chains]]\n"
        f'caip2 = "eip155:{SOURCE_CHAIN_ID}"\nrpc = "http://{plan.anvil_source}:{ANVIL_PORT}"\nsymbol = "ETH"\n'
        "min_confirmations = 2\nvalue_per_block = 1000000000000000000\nmax_confirmations = 6\n"
        + peers
    )


#: Runs one ``fusion-prime-node`` command *as* an operator (on its host, or in its namespace).
CliRunner = Callable[[Operator, Sequence[str]], None]


def run_here(op: Operator, argv: Sequence[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "fusion_prime.node.cli", *argv],  # noqa: S603
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{op.node_id}: fusion-prime-node {argv[0]}: {result.stderr.strip()}")


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def prepare(plan: Plan, out: Path, client_public_key: bytes, run_cli: CliRunner = run_here) -> dict[str, Path]:
    """Create every operator's folder under ``out`` (``out/<node id>``) and the chains' secret
    (``out/chains/bitcoin-rpc-password``); returns the node folders by node id."""
    out.mkdir(parents=True, exist_ok=True)
    folders = {op.node_id: out / op.node_id for op in plan.operators}
    entries = out / "entries"
    entries.mkdir(exist_ok=True)
    for op in plan.operators:
        run_cli(op, init_argv(plan, op, folders[op.node_id]))
    for op in plan.operators:  # each operator sends its entry to the others
        run_cli(op, ["roster", "export", "--config", str(folders[op.node_id] / "node.toml"),
                     "--out", str(entries / f"{op.node_id}.entry")])
    for op in plan.operators:
        others = [str(entries / f"{p.node_id}.entry") for p in plan.operators if p != op]
        run_cli(op, ["roster", "add", "--config", str(folders[op.node_id] / "node.toml"), *others])
    rpc_password = secrets.token_urlsafe(24)
    (out / "chains").mkdir(exist_ok=True)
    _write_secret(out / "chains" / "bitcoin-rpc-password", rpc_password + "\n")
    for op in plan.operators:
        (folders[op.node_id] / "policy.toml").write_text(policy_toml(client_public_key))
        _write_secret(folders[op.node_id] / "bridge.toml", bridge_toml(plan, op, rpc_password))
    return folders


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", type=Path, default=here / "operators.toml")
    parser.add_argument("--out", type=Path, default=here / "operators")
    parser.add_argument("--client-public-key", help="the wallet client's public key (hex); default: a new "
                        "client key is written to OUT/client.key")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan)
        if args.out.exists() and any(args.out.iterdir()):
            raise PlanError(f"{args.out} is not empty; remove it to prepare a new network")
        args.out.mkdir(parents=True, exist_ok=True)
        if args.client_public_key:
            client = bytes.fromhex(args.client_public_key)
        else:
            from fusion_prime.protocol.identity import PartyIdentity

            identity = PartyIdentity.generate()
            _write_secret(args.out / "client.key", identity.secret_bytes().hex() + "\n")
            client = identity.public_key
        prepare(plan, args.out, client)
    except (PlanError, RuntimeError, OSError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"prepared {', '.join(op.node_id for op in plan.operators)} under {args.out}")
    print(f"the container user (uid 10001) must read them: sudo chown -R 10001:10001 {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
