"""A whole bridge network on loopback: three signer nodes with their bridges, the Bitcoin devnet and two anvils.

Three signer nodes, each with its bridge (``python -m fusion_prime.bridge.daemon``: node, wallet
API, Bridge API and the bridge runtime in one OS process), a Bitcoin regtest devnet
(libbitcoinkernel behind the Bitcoin Core JSON-RPC façade, in the calling process), a source anvil
(31337) and a destination anvil (31338). The group key is created through the wallet API, the
Gateway and fpBTC/fpETH are deployed with its address as signer and configured with group-signed
orders.

:func:`bridge_network` builds it and tears it down; :class:`Net` drives it (deposit addresses,
states through each node's Bridge API, balances and ``Minted`` events on-chain, each node's own
bridge database read-only, each node's explorer page (:meth:`Net.explorer_url`), and stopping,
killing and restarting a node's daemon with another bridge configuration).

It lives in the package, not beside the tests, because ``make demo``
(:mod:`fusion_prime.bridge.demo`) runs the same network the bridge's network tests run
(``tests/helpers/fp_bridge_net.py`` re-exports it): one network, so the demo shows what the
tests check. Every wait here is bounded by :data:`HANG_GUARD` and fails with
:class:`LocalnetError` naming what it waited for - a hang guard, never a speed claim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from coincurve import PrivateKey
from eth_account import Account
from web3 import Web3
from web3.logs import DISCARD

from fusion_prime.bridge.chains.bitcoin.encoding import (
    REGTEST,
    address_to_script,
    p2wpkh_script,
    parse_hash_hex,
    script_to_address,
)
from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer
from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from fusion_prime.bridge.chains.evm.anvil import AnvilProcess
from fusion_prime.bridge.chainview import artifact, gateway_contract
from fusion_prime.bridge.client import BridgeClient
from fusion_prime.bridge.config import bridge_toml
from fusion_prime.bridge.deploy import DEST_BITCOIN, DEST_EVM, AssetSpec, deploy_bridge
from fusion_prime.bridge.watchers import MINTED_TOPIC
from fusion_prime.node.config import config_to_toml, load_config
from fusion_prime.node.devnet import create_devnet, free_ports
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.client import WalletClient, create_key_with_progress, new_request_id

BTC_CHAIN = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
SRC_CHAIN = "eip155:31337"
DST_CHAIN = "eip155:31338"
COIN = 100_000_000
ETHER = 10**18
ADMIN = PartyIdentity.generate()
#: the payout rules (issue 15): 20,000 sat kept from every burn, 2 sat/vB on regtest (no estimates),
#: burns batched for 2 s
BTC_WITHDRAWALS = {"withdrawal_fee": 20_000, "max_fee_rate": 50, "fallback_fee_rate": 2, "max_batch": 20,
                   "batch_wait_seconds": 2, "stuck_after_seconds": 600, "payout_confirmations": 1,
                   "payout_takeover_seconds": 30}
BTC_RULES = {"min_confirmations": 2, "value_per_block": 50 * COIN, "max_confirmations": 6, "dust_limit": 294,
             "sweep_cost": 10_000, **BTC_WITHDRAWALS}
#: ETH payouts: 0.001 ETH kept from every burn (covers 21,000 gas up to 40 gwei), 2 gwei when the
#: chain has no fee history; sweeping a deposit into custody costs gas that withdrawal fees earn
#: back, so custody may run up to 0.01 ETH below the supply (THORChain's permitted gap)
ETH_WITHDRAWALS = {"withdrawal_fee": 10**15, "max_fee_rate": 40 * 10**9, "fallback_fee_rate": 2 * 10**9,
                   "batch_wait_seconds": 0, "stuck_after_seconds": 600, "payout_confirmations": 1,
                   "payout_takeover_seconds": 30, "solvency_tolerance": 10**16}
ETH_RULES = {"min_confirmations": 2, "value_per_block": ETHER, "max_confirmations": 6, "dust_limit": 0,
             "sweep_cost": 10**15, **ETH_WITHDRAWALS}
#: the Gateway's large-mint thresholds (mints above them are queued for ``LARGE_MINT_DELAY``)
LARGE_BTC = 500 * COIN
LARGE_ETH = 500 * ETHER
LARGE_MINT_DELAY = 60
#: the Bitcoin devnet's JSON-RPC login: a loopback devnet's, known to every node's bridge.toml
RPC_USER = "tester"
RPC_PASSWORD = "secret"  # noqa: S105 - a devnet's on loopback, not a secret


#: How long any one wait of the network may take before it fails instead of hanging: far above
#: what a loaded 2-core machine needs (the tests' own guard, ``tests/helpers/fp_guards.py``, is the
#: same figure). A hang guard, not a speed claim.
HANG_GUARD = 600.0


class LocalnetError(AssertionError):
    """A wait of the network that did not complete: it timed out, or a daemon exited meanwhile.

    An ``AssertionError`` because the network's tests waited through ``assert`` before this module
    left ``tests/helpers``: they fail exactly as they did, and pytest reports the message."""


def wait_until(what: str, check: Callable[[], Any], timeout: float = HANG_GUARD,
               procs: dict[str, Any] | None = None, interval: float = 0.2) -> Any:
    """Poll until ``check()`` is truthy and return its value; raise :class:`LocalnetError` (never
    hang) after ``timeout`` - a hang guard, not a speed claim - and at once if a daemon in
    ``procs`` exited, since nothing it was to do will happen then."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if procs:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise LocalnetError(f"{', '.join(dead)} exited while waiting for {what}")
        if time.monotonic() >= deadline:
            raise LocalnetError(f"timed out waiting for {what}")
        time.sleep(interval)


class Miner:
    """A regtest key that mines coinbases and pays deposits from them."""

    def __init__(self, rpc: BitcoinRPC) -> None:
        self.rpc = rpc
        self.key = PrivateKey((0x5EED).to_bytes(32, "big"))
        self.script = p2wpkh_script(self.key.public_key.format(compressed=True))
        self.address = script_to_address(self.script, REGTEST)
        self.coins: list[tuple[str, int, int]] = []  # spendable (txid, vout, value)

    def mine(self, n: int = 1) -> list[str]:
        return self.rpc.generatetoaddress(n, self.address)

    def fund(self, blocks: int) -> None:
        hashes = self.mine(blocks + 100)
        for h in hashes[:blocks]:
            cb = self.rpc.getblock(h, 2)["tx"][0]
            self.coins.append((cb["txid"], 0, int(Decimal(str(cb["vout"][0]["value"])) * COIN)))

    def pay(self, address: str, amount: int, fee: int = 2_000) -> tuple[str, int]:
        """Send ``amount`` sat to ``address`` (output 0), change back; returns (txid, vout)."""
        txid, vout, value = self.coins.pop(0)
        outs = [TxOut(amount, address_to_script(address, REGTEST)), TxOut(value - amount - fee, self.script)]
        tx = Tx(2, [TxIn(OutPoint(parse_hash_hex(txid), vout), sequence=0xFFFFFFFD)], outs)
        sign_p2wpkh(tx, 0, self.key.secret, value)
        sent = self.rpc.sendrawtransaction(tx.serialize().hex())
        self.coins.append((sent, 1, value - amount - fee))
        return sent, 0


@dataclasses.dataclass
class Net:
    base: Path
    devnet: list[Any]
    procs: dict[str, subprocess.Popen[bytes]]
    wallet_ports: dict[str, int]
    bridge_ports: dict[str, int]
    certs: dict[str, bytes]
    rpc: BitcoinRPC
    rpc_url: str
    btc_node: RegtestNode
    miner: Miner
    src: Web3
    dst: Web3
    src_url: str
    dst_url: str
    key_id: bytes
    gateway: Any
    tokens: dict[str, Any]
    relayers: dict[str, Any]
    deployment: Any
    starts: dict[str, int]
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    # -- the nodes' APIs
    def bridge(self, node_id: str) -> BridgeClient:
        return BridgeClient(f"127.0.0.1:{self.bridge_ports[node_id]}", self.certs[node_id], server_name=node_id)

    def settlement(self, node_id: str, identity: PartyIdentity) -> Any:
        """A settlement client (``bridge/settlement/client.py``) of ``identity`` at ``node_id``."""
        from fusion_prime.bridge.settlement.client import SettlementClient

        return SettlementClient(f"127.0.0.1:{self.bridge_ports[node_id]}", self.certs[node_id], identity=identity,
                                server_name=node_id)

    def explorer_url(self, node_id: str) -> str:
        """``node_id``'s explorer page (``bridge/explorer.py``, on loopback), once its daemon runs the
        bridge (it starts with the bridge, after the group key and the Gateway exist)."""
        path = self.devnode(node_id).folder / "explorer.port"
        port = wait_until(f"{node_id} explorer", lambda: _port(path), procs=self.procs)
        return f"http://127.0.0.1:{port}/"

    def wallet(self, node_id: str = "node1") -> WalletClient:
        return WalletClient(f"127.0.0.1:{self.wallet_ports[node_id]}", self.certs[node_id], ADMIN,
                            server_name=node_id)

    def address(self, source: str, recipient: str, nodes: tuple[str, ...] | None = None) -> str:
        """Register (at every node, or at ``nodes``: each watches only addresses it was told of)
        and check that all of them derive the same deposit address on their own."""
        answers = set()
        for node_id in nodes if nodes is not None else tuple(self.bridge_ports):
            with self.bridge(node_id) as b:
                answers.add(b.deposit_address(DST_CHAIN, recipient, source=source).address)
        if len(answers) != 1:
            raise LocalnetError(f"the nodes derived different deposit addresses: {sorted(answers)}")
        return answers.pop()

    def state(self, node_id: str, did: bytes) -> str:
        from fusion_prime.bridge.client import BridgeError

        with self.bridge(node_id) as b:
            try:
                return b.deposit(did).state
            except BridgeError:
                return "unknown"

    def states(self, did: bytes, nodes: tuple[str, ...] | None = None) -> set[str]:
        return {self.state(n, did) for n in (nodes if nodes is not None else tuple(self.bridge_ports))}

    def status(self, node_id: str) -> dict[str, Any]:
        path = self.base / node_id / "bridge-status.json"
        return json.loads(path.read_text()) if path.exists() else {}

    # -- on-chain
    def balance(self, symbol: str, who: str) -> int:
        return int(self.tokens[symbol].functions.balanceOf(Web3.to_checksum_address(who)).call())

    def minted_events(self, did: bytes) -> list[Any]:
        logs = self.dst.eth.get_logs({"address": self.gateway.address, "fromBlock": 0,
                                      "topics": [MINTED_TOPIC, "0x" + did.hex()]})
        return list(logs)

    # -- a node's own records (its bridge database, read-only beside the running daemon)
    def events(self, node_id: str, event: str, did: bytes | None = None) -> list[dict[str, Any]]:
        """``event`` rows of ``node_id``'s bridge event log (for ``did``), details parsed."""
        path = self.base / node_id / "bridge.sqlite3"
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            q = "SELECT detail FROM bridge_events WHERE event = ?"
            args: list[Any] = [event]
            if did is not None:
                q += " AND deposit_id = ?"
                args.append(did)
            rows = conn.execute(q + " ORDER BY seq", args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def withdrawal(self, node_id: str, burn_id: bytes) -> dict[str, Any] | None:
        """``node_id``'s status row of a burn (its bridge database, read-only)."""
        path = self.base / node_id / "bridge.sqlite3"
        if not path.exists():
            return None
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            conn.row_factory = sqlite3.Row
            try:
                row = conn.execute("SELECT * FROM withdrawals WHERE burn_id = ?", (burn_id,)).fetchone()
            except sqlite3.OperationalError:  # not migrated yet
                return None
        return dict(row) if row is not None else None

    def burn(self, symbol: str, holder: str, amount: int, destination: bytes) -> tuple[int, bytes]:
        """``holder`` (an unlocked anvil account) burns; returns (burn nonce, burn id)."""
        tx = self.gateway.functions.burn(self.tokens[symbol].address, amount, destination).transact(
            {"from": Web3.to_checksum_address(holder)})
        receipt = self.dst.eth.wait_for_transaction_receipt(tx)
        if receipt["status"] != 1:
            raise LocalnetError(f"burn transaction {bytes(tx).hex()} reverted")
        (event,) = self.gateway.events.Burned().process_receipt(receipt, errors=DISCARD)  # (token Transfer logs)
        return int(event["args"]["burnNonce"]), bytes(event["args"]["burnId"])

    def log_text(self, node_id: str, *, current: bool = False) -> str:
        """``node_id``'s daemon logs (only its current run's, with ``current``)."""
        folder = self.base / node_id
        if current:
            return (folder / f"bridge-daemon-{self.starts[node_id]}.log").read_text(errors="replace")
        return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("bridge-daemon-*.log")))

    # -- the daemons
    def write_bridge(self, node_id: str, **overrides: Any) -> None:
        """Rewrite ``node_id``'s bridge section, with ``overrides`` (kept for later restarts;
        ``btc_rpc`` replaces its Bitcoin endpoint)."""
        self.overrides[node_id] = {**self.overrides.get(node_id, {}), **overrides}
        d = self.devnode(node_id)
        _write_bridge(d, self.rpc_url, self.src_url, self.dst_url, key_id=self.key_id.hex(),
                      gateway=self.deployment.gateway, tokens=self.deployment.tokens, **self.overrides[node_id])

    def devnode(self, node_id: str) -> Any:
        return next(d for d in self.devnet if d.node_id == node_id)

    def stop(self, node_id: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs.pop(node_id)
        proc.send_signal(sig)
        return proc.wait(timeout=60)

    def start(self, node_id: str) -> None:
        d = self.devnode(node_id)
        self.procs[node_id] = _start(d, self.starts)
        self.wallet_ports[node_id] = wait_until(f"{node_id} wallet port", lambda: _port(d.folder / "wallet.port"),
                                              procs=self.procs)
        self.bridge_ports[node_id] = wait_until(f"{node_id} bridge", lambda: _port(d.folder / "bridge.port"),
                                              procs=self.procs)

    def restart_all(self, **overrides: Any) -> None:
        """Stop every daemon, rewrite every bridge section with ``overrides``, start them again."""
        for node_id in list(self.procs):
            self.stop(node_id)
        for d in self.devnet:
            self.write_bridge(d.node_id, **overrides)
        for d in self.devnet:
            self.start(d.node_id)


def _start(d: Any, starts: dict[str, int]) -> subprocess.Popen[bytes]:
    starts[d.node_id] = starts.get(d.node_id, 0) + 1
    for f in ("wallet.port", "bridge.port", "explorer.port"):
        (d.folder / f).unlink(missing_ok=True)
    log = open(d.folder / f"bridge-daemon-{starts[d.node_id]}.log", "wb")
    listen = (d.folder / "bridge.listen").read_text().strip() if (d.folder / "bridge.listen").exists() \
        else "127.0.0.1:0"
    return subprocess.Popen(  # noqa: S603 - this interpreter, our own daemon, paths we created
        [sys.executable, "-m", "fusion_prime.bridge.daemon", "--config", str(d.config_path), "--bridge",
         str(d.folder / "bridge.toml"), "--policy", str(d.folder / "policy.toml"), "--port-file",
         str(d.folder / "wallet.port"), "--bridge-port-file", str(d.folder / "bridge.port"),
         "--explorer-port-file", str(d.folder / "explorer.port"), "--bridge-listen", listen],
        # its own session: a Ctrl-C in the terminal reaches the demo, which SIGTERMs each daemon and
        # checks it exits 0 - not every daemon at once mid-step
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def _write_bridge(d: Any, rpc_url: str, src_url: str, dst_url: str, *, key_id: str = "", gateway: str = "",
                  tokens: dict[str, str] | None = None, btc_rpc: str | None = None,
                  btc: dict[str, Any] | None = None, **overrides: Any) -> None:
    """``btc``: keys of the Bitcoin chain's table to override (its withdrawal settings)."""
    tokens = tokens or {}
    bridge = {"key_id": key_id, "database": f"sqlite:///{d.folder / 'bridge.sqlite3'}",
              "destination_chain": DST_CHAIN, "destination_rpc": dst_url, "gateway": gateway,
              "relayer_key_file": str(d.folder / "relayer.key"), "admin_clients": [ADMIN.public_key.hex()],
              "poll_interval": 0.2, "coordinator_takeover_seconds": 5.0, "retry_seconds": 1.0,
              "status_file": str(d.folder / "bridge-status.json"), **overrides}
    chains = [
        {"caip2": BTC_CHAIN, "rpc": btc_rpc or rpc_url, "rpc_user": RPC_USER, "rpc_password": RPC_PASSWORD,
         "symbol": "BTC", "asset": tokens.get("fpBTC", ""), **BTC_RULES, **(btc or {})},
        {"caip2": SRC_CHAIN, "rpc": src_url, "symbol": "ETH", "asset": tokens.get("fpETH", ""), **ETH_RULES},
    ]
    # whole or not at all: a daemon already polling for its bridge section must never read it
    # half-written (an empty file is "no [bridge] table", and the daemon exits)
    partial = d.folder / "bridge.toml.partial"
    partial.write_text(bridge_toml(bridge, chains))
    partial.replace(d.folder / "bridge.toml")


def _following(d: Any, btc_tip: int) -> bool:
    path = d.folder / "bridge-status.json"
    try:
        chains = json.loads(path.read_text()).get("chains", {})
    except (OSError, ValueError):
        return False
    return (int(chains.get(BTC_CHAIN, {}).get("tip", -1)) >= btc_tip
            and int(chains.get(SRC_CHAIN, {}).get("tip", -1)) >= 0)


def _node_overrides(devnet: list[Any], d: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    if "peers" not in overrides:
        return dict(overrides)
    return {**overrides, "peers": _bridge_peers(devnet, d)}


def _port(path: Path) -> int | None:
    return int(path.read_text()) if path.exists() and path.read_text() else None


def _tune_nodes(devnet: list[Any], presign_pool_depth: int | None) -> None:
    """Rewrite each node's config with the requested presignature pool depth."""
    if presign_pool_depth is None:
        return
    for d in devnet:
        cfg = dataclasses.replace(load_config(d.config_path), presign_pool_depth=presign_pool_depth)
        d.config_path.write_text(config_to_toml(cfg))
        load_config(d.config_path)


def _bridge_peers(devnet: list[Any], d: Any) -> list[dict[str, str]]:
    """``d``'s ``[[bridge.peers]]``: every other node's Bridge endpoint and certificate."""
    return [{"node_id": p.node_id, "address": (p.folder / "bridge.listen").read_text().strip(),
             "tls_cert": str(p.folder / "tls.crt")} for p in devnet if p.node_id != d.node_id]


@contextlib.contextmanager
def bridge_network(base: Path, *, security_level: str | None = None, presign_pool_depth: int | None = None,
                   round_deadline_seconds: float = 20.0, forward_registrations: bool = False,
                   settlement: dict[str, Any] | None = None,
                   progress: Callable[[str], None] | None = None, **overrides: Any) -> Iterator[Net]:
    """The whole network, running; ``overrides`` go into every node's bridge section.

    ``security_level`` (default: the devnet's test level) and ``presign_pool_depth`` (default: the
    node's) configure the signer nodes; ``forward_registrations`` gives each node fixed Bridge API
    ports and lists the other nodes' Bridge endpoints in its ``[[bridge.peers]]``, so a deposit
    address registered at one node is forwarded to the others (off by default: the late-registration
    tests need a node that does not know an address yet).

    ``progress`` is told, in a line each, what has just been set up (the demo prints it; the tests
    pass nothing), so a bring-up that takes half a minute at the 128-bit level is not silent.

    ``settlement`` (``[bridge.settlement]`` keys) runs the custody ledger too, coordinated by node1,
    with its checkpoints published to a ``SettlementCheckpoints`` registry deployed beside the
    Gateway (it implies ``forward_registrations``: followers pull batches from node1's API)."""
    say = progress or (lambda _line: None)
    btc_node = RegtestNode(base / "btc")
    server = BitcoinRPCServer(btc_node, user=RPC_USER, password=RPC_PASSWORD).start()
    rpc = BitcoinRPC(server.url, RPC_USER, RPC_PASSWORD)
    say(f"Bitcoin devnet (regtest, libbitcoinkernel) with its JSON-RPC server at {server.url}")
    src_anvil, dst_anvil = AnvilProcess(31_337).start(), AnvilProcess(31_338).start()
    say(f"anvil {SRC_CHAIN} (source: ETH) at {src_anvil.url}, anvil {DST_CHAIN} (destination: the Gateway) "
        f"at {dst_anvil.url}")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        miner = Miner(rpc)
        miner.fund(8)
        if progress is not None:  # (an RPC call: only for someone who listens)
            progress(f"mined {rpc.get_block_count()} regtest blocks: spendable coins for the deposits")
        src = Web3(Web3.HTTPProvider(src_anvil.url))
        dst = Web3(Web3.HTTPProvider(dst_anvil.url))
        devnet = create_devnet(base, 3, with_metrics=False, round_deadline_seconds=round_deadline_seconds,
                               security_level=security_level)
        _tune_nodes(devnet, presign_pool_depth)
        if progress is not None:  # (reads a config: only for someone who listens)
            level = load_config(devnet[0].config_path).security_level
            progress(f"{len(devnet)} signer nodes configured under {base} (security level {level}): identity keys, "
                     "TLS certificates, encrypted storage")
        if forward_registrations or settlement is not None:
            for d, port in zip(devnet, free_ports(len(devnet)), strict=True):
                (d.folder / "bridge.listen").write_text(f"127.0.0.1:{port}")
            overrides = {**overrides, "peers": None}  # filled per node below
        relayers = {}
        starts: dict[str, int] = {}
        for d in devnet:
            (d.folder / "policy.toml").write_text(
                "[default]\n"
                f'clients = ["{ADMIN.public_key.hex()}"]\n'
                "max_signatures_per_window = 1000\n"
                "window_seconds = 3600\n"
                f'create_key_clients = ["{ADMIN.public_key.hex()}"]\n')
            acct = Account.create()
            relayers[d.node_id] = acct
            (d.folder / "relayer.key").write_text(acct.key.hex())
            dst.provider.make_request("anvil_setBalance", [acct.address, hex(100 * ETHER)])
            _write_bridge(d, server.url, src_anvil.url, dst_anvil.url, **_node_overrides(devnet, d, overrides))
            procs[d.node_id] = _start(d, starts)
        say("bridge daemons started (node, wallet API, Bridge API and bridge in one process each): "
            + ", ".join(f"{n} pid {p.pid}" for n, p in procs.items()))
        ports = {d.node_id: wait_until(f"{d.node_id} wallet port", lambda d=d: _port(d.folder / "wallet.port"),
                                     procs=procs) for d in devnet}
        certs = {d.node_id: (d.folder / "tls.crt").read_bytes() for d in devnet}
        with WalletClient(f"127.0.0.1:{ports['node1']}", certs["node1"], ADMIN, server_name="node1") as w:
            say("wallet APIs up; creating the 2-of-3 group key through node1's wallet API (key generation, "
                "then aux info: each node generates its own Paillier safe primes)")
            # each phase as node1 reports it (the demo shows them while they run)
            created = create_key_with_progress(w, 2, 3, "bridge", new_request_id(),
                                               None if progress is None else
                                               lambda line: say("create-key " + line.split(": ", 1)[1]))
            key_id = bytes(created.key_id)
            say(f"group key created (key id {key_id.hex()}); no node ever holds its private key")
            wait_until("presignatures", lambda: any(k.key_id == key_id and k.presignatures_available >= 2
                                                  for k in w.list_keys()), procs=procs)
            signer = w.public_key(key_id, "m").ethereum_address
            say(f"presignatures in the pool; deploying the Gateway, fpBTC and fpETH on {DST_CHAIN} with the group "
                f"key's address {signer} as signer (each configuration order signed by the group)")

            def sign_digest(digest: bytes) -> tuple[int, int, int]:
                sig = w.sign(key_id, digest, "m")
                return sig.r, sig.s, sig.recovery_id

            specs = [
                AssetSpec("Fusion Prime BTC", "fpBTC", 8, BTC_CHAIN, DEST_BITCOIN, 1000 * COIN, 1000 * COIN, 86_400,
                          10_000 * COIN, LARGE_BTC, 10_000),
                AssetSpec("Fusion Prime ETH", "fpETH", 18, SRC_CHAIN, DEST_EVM, 1000 * ETHER, 1000 * ETHER, 86_400,
                          10_000 * ETHER, LARGE_ETH, 10**15),
            ]
            deployment = deploy_bridge(dst, sender=dst.eth.accounts[0], signer=signer, guardian=dst.eth.accounts[3],
                                       assets=specs, sign_digest=sign_digest, devnet=True,
                                       # short: the devnet moves the destination clock past each delay, and
                                       # order deadlines are judged by that clock
                                       admin_delay=60, guardian_delay=120, large_mint_delay=LARGE_MINT_DELAY,
                                       signer_retention=60)
        say(f"Gateway {deployment.gateway}, fpBTC {deployment.tokens['fpBTC']}, fpETH {deployment.tokens['fpETH']}; "
            "each node's bridge.toml now names them")
        if settlement is not None:
            from fusion_prime.bridge.settlement.checkpoint import GENESIS_ROOT
            from fusion_prime.bridge.settlement.publish import deploy_registry

            registry = deploy_registry(dst, deployment.gateway, GENESIS_ROOT, dst.eth.accounts[0])
            say(f"SettlementCheckpoints registry {registry}: every cycle's checkpoint is published there")
            overrides = {**overrides, "settlement": {"coordinator": "node1", "registry": registry, **settlement}}
        node_overrides: dict[str, dict[str, Any]] = {}
        for d in devnet:
            per_node = node_overrides[d.node_id] = _node_overrides(devnet, d, overrides)
            if settlement is not None:
                per_node["settlement"] = {**per_node["settlement"], "checkpoint_dir": str(d.folder / "checkpoints")}
            _write_bridge(d, server.url, src_anvil.url, dst_anvil.url, key_id=key_id.hex(),
                          gateway=deployment.gateway, tokens=deployment.tokens, **per_node)
        bridge_ports = {d.node_id: wait_until(f"{d.node_id} bridge", lambda d=d: _port(d.folder / "bridge.port"),
                                            procs=procs) for d in devnet}
        # The Bridge API answers before each runtime's first block walk, and a fresh runtime starts
        # at the tip it first sees: wait until every one follows, or a deposit mined in between is
        # below where a slow node starts.
        tip = rpc.get_block_count()
        wait_until("every bridge following the chains", lambda: all(
            _following(d, tip) for d in devnet), procs=procs)
        say("every bridge follows the Bitcoin devnet and both anvils")
        token_abi = artifact("WrappedAsset")["abi"]
        tokens = {s: dst.eth.contract(address=a, abi=token_abi) for s, a in deployment.tokens.items()}
        yield Net(base=base, devnet=devnet, procs=procs, wallet_ports=ports, bridge_ports=bridge_ports, certs=certs,
                  rpc=rpc, rpc_url=server.url, btc_node=btc_node, miner=miner, src=src, dst=dst,
                  src_url=src_anvil.url, dst_url=dst_anvil.url, key_id=key_id,
                  gateway=gateway_contract(dst, deployment.gateway), tokens=tokens, relayers=relayers,
                  deployment=deployment, starts=starts,
                  overrides=node_overrides)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        src_anvil.stop()
        dst_anvil.stop()
        rpc.close()
        server.stop()
        btc_node.close()
