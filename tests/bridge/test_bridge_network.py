"""The bridge end to end through real processes (issue 14, "Done means").

Three signer nodes, each with its bridge (``python -m fusion_prime.bridge.daemon``: node, wallet
API, Bridge API and the bridge runtime in one process), a Bitcoin regtest devnet (libbitcoinkernel
behind the Bitcoin Core JSON-RPC façade, in this process), a source anvil (31337) and a destination
anvil (31338). The group key is created through the wallet API, the Gateway and fpBTC/fpETH are
deployed with its address as signer and configured with group-signed orders.

Shows: a BTC and an ETH deposit are each minted exactly once, to the right recipient, for the
right amount, and only after the right depth (nothing is minted while the deposit is one block
short; balances and ``Minted`` events are read on-chain); every node derives the same deposit
address on its own; a dust deposit is reported and never minted; a deposit reorganised out before
its depth (``invalidateblock`` and a competing branch) mints nothing; a reorg after a mint marks
the deposit an erratum on every node, the Gateway is paused with a group-signed ``Pause`` and the
status names the deposit.

The nodes wait with deadlines only to fail rather than hang; nothing here asserts a duration.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account import Account
from web3 import Web3

from fusion_prime.bridge.chains.bitcoin.encoding import REGTEST, p2wpkh_script, parse_hash_hex, script_to_address
from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer
from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from fusion_prime.bridge.chains.evm.anvil import AnvilProcess
from fusion_prime.bridge.chainview import gateway_contract
from fusion_prime.bridge.client import BridgeClient
from fusion_prime.bridge.config import bridge_toml
from fusion_prime.bridge.deploy import DEST_BITCOIN, DEST_EVM, AssetSpec, deploy_bridge
from fusion_prime.bridge.orders import EVM_NATIVE_VOUT, deposit_id
from fusion_prime.bridge.watchers import MINTED_TOPIC
from fusion_prime.node.devnet import create_devnet
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.client import WalletClient

pytestmark = pytest.mark.xdist_group(name="bridge-network")

BTC_CHAIN = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
SRC_CHAIN = "eip155:31337"
DST_CHAIN = "eip155:31338"
COIN = 100_000_000
ETHER = 10**18
ADMIN = PartyIdentity.generate()
RECIPIENT_A = "0x" + "a1" * 20
RECIPIENT_B = "0x" + "b2" * 20
BTC_RULES = {"min_confirmations": 2, "value_per_block": 50 * COIN, "max_confirmations": 6, "dust_limit": 294,
             "sweep_cost": 10_000}
ETH_RULES = {"min_confirmations": 2, "value_per_block": ETHER, "max_confirmations": 6, "dust_limit": 0,
             "sweep_cost": 10**15}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0, procs: dict[str, Any] | None = None) -> Any:
    """Poll until ``check()`` is truthy; fail (never hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if procs:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            assert not dead, f"{', '.join(dead)} exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


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
        from fusion_prime.bridge.chains.bitcoin.encoding import address_to_script

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
    btc_node: RegtestNode
    miner: Miner
    src: Web3
    dst: Web3
    key_id: bytes
    gateway: Any
    tokens: dict[str, Any]
    relayers: dict[str, Any]

    def bridge(self, node_id: str) -> BridgeClient:
        return BridgeClient(f"127.0.0.1:{self.bridge_ports[node_id]}", self.certs[node_id], server_name=node_id)

    def wallet(self, node_id: str = "node1") -> WalletClient:
        return WalletClient(f"127.0.0.1:{self.wallet_ports[node_id]}", self.certs[node_id], ADMIN,
                            server_name=node_id)

    def address(self, source: str, recipient: str) -> str:
        """Register (at every node: each watches only addresses it was told of) and check that
        all nodes derive the same deposit address on their own."""
        answers = set()
        for node_id in self.bridge_ports:
            with self.bridge(node_id) as b:
                answers.add(b.deposit_address(DST_CHAIN, recipient, source=source).address)
        assert len(answers) == 1, answers
        return answers.pop()

    def state(self, node_id: str, did: bytes) -> str:
        from fusion_prime.bridge.client import BridgeError

        with self.bridge(node_id) as b:
            try:
                return b.deposit(did).state
            except BridgeError:
                return "unknown"

    def states(self, did: bytes) -> set[str]:
        return {self.state(n, did) for n in self.bridge_ports}

    def balance(self, symbol: str, who: str) -> int:
        return int(self.tokens[symbol].functions.balanceOf(Web3.to_checksum_address(who)).call())

    def minted_events(self, did: bytes) -> list[Any]:
        logs = self.dst.eth.get_logs({"address": self.gateway.address, "fromBlock": 0,
                                      "topics": [MINTED_TOPIC, "0x" + did.hex()]})
        return list(logs)

    def status(self, node_id: str) -> dict[str, Any]:
        path = self.base / node_id / "bridge-status.json"
        return json.loads(path.read_text()) if path.exists() else {}


def _start(d: Any, base: Path, starts: dict[str, int]) -> subprocess.Popen[bytes]:
    starts[d.node_id] = starts.get(d.node_id, 0) + 1
    for f in ("wallet.port", "bridge.port"):
        (d.folder / f).unlink(missing_ok=True)
    log = open(d.folder / f"bridge-daemon-{starts[d.node_id]}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.bridge.daemon", "--config", str(d.config_path), "--bridge",
         str(d.folder / "bridge.toml"), "--policy", str(d.folder / "policy.toml"), "--port-file",
         str(d.folder / "wallet.port"), "--bridge-port-file", str(d.folder / "bridge.port")],
        stdout=subprocess.DEVNULL, stderr=log)


def _write_bridge(d: Any, rpc_url: str, src_url: str, dst_url: str, *, key_id: str = "", gateway: str = "",
                  tokens: dict[str, str] | None = None) -> None:
    tokens = tokens or {}
    bridge = {"key_id": key_id, "database": f"sqlite:///{d.folder / 'bridge.sqlite3'}",
              "destination_chain": DST_CHAIN, "destination_rpc": dst_url, "gateway": gateway,
              "relayer_key_file": str(d.folder / "relayer.key"), "admin_clients": [ADMIN.public_key.hex()],
              "poll_interval": 0.2, "coordinator_takeover_seconds": 5.0, "retry_seconds": 1.0,
              "status_file": str(d.folder / "bridge-status.json")}
    chains = [
        {"caip2": BTC_CHAIN, "rpc": rpc_url, "rpc_user": "tester", "rpc_password": "secret", "symbol": "BTC",
         "asset": tokens.get("fpBTC", ""), **BTC_RULES},
        {"caip2": SRC_CHAIN, "rpc": src_url, "symbol": "ETH", "asset": tokens.get("fpETH", ""), **ETH_RULES},
    ]
    (d.folder / "bridge.toml").write_text(bridge_toml(bridge, chains))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    base = tmp_path_factory.mktemp("bridge-net")
    btc_node = RegtestNode(base / "btc")
    server = BitcoinRPCServer(btc_node, user="tester", password="secret").start()
    rpc = BitcoinRPC(server.url, "tester", "secret")
    src_anvil, dst_anvil = AnvilProcess(31_337).start(), AnvilProcess(31_338).start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        miner = Miner(rpc)
        miner.fund(8)
        src = Web3(Web3.HTTPProvider(src_anvil.url))
        dst = Web3(Web3.HTTPProvider(dst_anvil.url))
        devnet = create_devnet(base, 3, with_metrics=False, round_deadline_seconds=20.0)
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
            _write_bridge(d, server.url, src_anvil.url, dst_anvil.url)
            procs[d.node_id] = _start(d, base, starts)
        ports = {d.node_id: wait_for(f"{d.node_id} wallet port", lambda d=d: _port(d.folder / "wallet.port"),
                                     procs=procs) for d in devnet}
        certs = {d.node_id: (d.folder / "tls.crt").read_bytes() for d in devnet}
        with WalletClient(f"127.0.0.1:{ports['node1']}", certs["node1"], ADMIN, server_name="node1") as w:
            key_id = bytes(w.create_key(2, 3, "bridge").key_id)
            wait_for("presignatures", lambda: any(k.key_id == key_id and k.presignatures_available >= 2
                                                  for k in w.list_keys()), procs=procs)
            signer = w.public_key(key_id, "m").ethereum_address

            def sign_digest(digest: bytes) -> tuple[int, int, int]:
                sig = w.sign(key_id, digest, "m")
                return sig.r, sig.s, sig.recovery_id

            specs = [
                AssetSpec("Fusion Prime BTC", "fpBTC", 8, BTC_CHAIN, DEST_BITCOIN, 1000 * COIN, 1000 * COIN, 86_400,
                          10_000 * COIN, 500 * COIN, 10_000),
                AssetSpec("Fusion Prime ETH", "fpETH", 18, SRC_CHAIN, DEST_EVM, 1000 * ETHER, 1000 * ETHER, 86_400,
                          10_000 * ETHER, 500 * ETHER, 10**15),
            ]
            deployment = deploy_bridge(dst, sender=dst.eth.accounts[0], signer=signer, guardian=dst.eth.accounts[3],
                                       assets=specs, sign_digest=sign_digest, devnet=True,
                                       # short: the devnet moves the destination clock past each delay, and
                                       # order deadlines are judged by that clock
                                       admin_delay=60, guardian_delay=120, large_mint_delay=60,
                                       signer_retention=60)
        for d in devnet:
            _write_bridge(d, server.url, src_anvil.url, dst_anvil.url, key_id=key_id.hex(),
                          gateway=deployment.gateway, tokens=deployment.tokens)
        bridge_ports = {d.node_id: wait_for(f"{d.node_id} bridge", lambda d=d: _port(d.folder / "bridge.port"),
                                            procs=procs) for d in devnet}
        token_abi = json.loads((Path(__file__).resolve().parents[2] / "contracts" / "artifacts" /
                                "WrappedAsset.json").read_text())["abi"]
        tokens = {s: dst.eth.contract(address=a, abi=token_abi) for s, a in deployment.tokens.items()}
        yield Net(base=base, devnet=devnet, procs=procs, wallet_ports=ports, bridge_ports=bridge_ports, certs=certs,
                  rpc=rpc, btc_node=btc_node, miner=miner, src=src, dst=dst, key_id=key_id,
                  gateway=gateway_contract(dst, deployment.gateway), tokens=tokens, relayers=relayers)
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


def _port(path: Path) -> int | None:
    return int(path.read_text()) if path.exists() and path.read_text() else None


# ------------------------------------------------------------------------------------ happy path

def test_btc_deposit_is_minted_once_after_its_depth(net: Net) -> None:
    address = net.address(BTC_CHAIN, RECIPIENT_A)
    amount = 125_000_000  # 1.25 BTC: value-aware depth max(2, ceil(1.25e8 / 50e8)) = 2
    txid, vout = net.miner.pay(address, amount)
    did = deposit_id(BTC_CHAIN, txid, vout)
    net.miner.mine(1)
    # one confirmation of two: every node has it confirming, and nothing is minted
    wait_for("1 of 2 confirmations everywhere", lambda: net.states(did) == {"confirming"}, procs=net.procs)
    assert net.balance("fpBTC", RECIPIENT_A) == 0
    assert bytes(net.gateway.functions.mintedDeposit(did).call()) == bytes(32)
    net.miner.mine(1)
    wait_for("fpBTC minted", lambda: net.balance("fpBTC", RECIPIENT_A) == amount, procs=net.procs)
    wait_for("minted everywhere", lambda: net.states(did) == {"minted"}, procs=net.procs)
    assert len(net.minted_events(did)) == 1
    assert bytes(net.gateway.functions.mintedDeposit(did).call()) != bytes(32)
    assert net.tokens["fpBTC"].functions.totalSupply().call() == amount


def test_eth_deposit_is_minted_once_after_its_depth(net: Net) -> None:
    address = net.address(SRC_CHAIN, RECIPIENT_B)
    amount = 2 * ETHER  # depth max(2, ceil(2e18 / 1e18)) = 2
    tx_hash = net.src.eth.send_transaction({"from": net.src.eth.accounts[0], "to": address, "value": amount})
    receipt = net.src.eth.wait_for_transaction_receipt(tx_hash)
    assert receipt["status"] == 1  # anvil mined it: 1 confirmation
    did = deposit_id(SRC_CHAIN, bytes(tx_hash), EVM_NATIVE_VOUT)
    wait_for("1 of 2 confirmations everywhere", lambda: net.states(did) == {"confirming"}, procs=net.procs)
    assert net.balance("fpETH", RECIPIENT_B) == 0
    net.src.provider.make_request("evm_mine", [])
    wait_for("fpETH minted", lambda: net.balance("fpETH", RECIPIENT_B) == amount, procs=net.procs)
    wait_for("minted everywhere", lambda: net.states(did) == {"minted"}, procs=net.procs)
    assert len(net.minted_events(did)) == 1


def test_dust_deposit_is_reported_not_minted(net: Net) -> None:
    recipient = "0x" + "d5" * 20
    address = net.address(BTC_CHAIN, recipient)
    txid, vout = net.miner.pay(address, 5_000)  # below the 10,000 sat minimum (sweep cost)
    did = deposit_id(BTC_CHAIN, txid, vout)
    net.miner.mine(3)
    wait_for("dust everywhere", lambda: net.states(did) == {"dust"}, procs=net.procs)
    reported = "0x" + did.hex()
    wait_for("dust reported", lambda: all(any(r["deposit_id"] == reported for r in net.status(n).get("dust", []))
                                          for n in net.bridge_ports), procs=net.procs)
    assert net.balance("fpBTC", recipient) == 0
    assert net.minted_events(did) == []


def test_reorg_before_depth_mints_nothing(net: Net) -> None:
    recipient = "0x" + "e6" * 20
    address = net.address(BTC_CHAIN, recipient)
    txid, vout = net.miner.pay(address, 30_000_000)
    did = deposit_id(BTC_CHAIN, txid, vout)
    block = net.miner.mine(1)[0]
    wait_for("confirming everywhere", lambda: net.states(did) == {"confirming"}, procs=net.procs)
    net.rpc.invalidateblock(block)
    # the transaction went back to the mempool; a competing branch without it is mined past the depth
    _drop_from_mempool(net, txid)
    net.miner.mine(3)
    wait_for("reorged everywhere", lambda: net.states(did) == {"reorged"}, procs=net.procs)
    net.miner.mine(2)
    time.sleep(2)  # give every node a chance to (wrongly) act; no timing is asserted
    assert net.states(did) == {"reorged"}
    assert net.balance("fpBTC", recipient) == 0
    assert net.minted_events(did) == []


def _drop_from_mempool(net: Net, txid: str) -> None:
    """Mine the competing branch without the deposit: double-spend its input back to the miner."""
    raw = net.rpc.getrawtransaction(txid, True)
    spent = raw["vin"][0]
    value = next(c for c in net.miner.coins if c[0] == txid)
    net.miner.coins.remove(value)
    # the input is the miner's coin that paid the deposit; spend it to the miner instead, with a higher fee
    prev = net.rpc.getrawtransaction(spent["txid"], True)
    prev_value = int(Decimal(str(prev["vout"][spent["vout"]]["value"])) * COIN)
    tx = Tx(2, [TxIn(OutPoint(parse_hash_hex(spent["txid"]), spent["vout"]), sequence=0xFFFFFFFD)],
            [TxOut(prev_value - 50_000, net.miner.script)])
    sign_p2wpkh(tx, 0, net.miner.key.secret, prev_value)
    replacement = tx.serialize().hex()
    net.rpc.call("generateblock", net.miner.address, [replacement])
    net.miner.coins.append((tx.txid_hex, 0, prev_value - 50_000))


def test_reorg_after_the_mint_pauses_and_reports_the_erratum(net: Net) -> None:
    """Last in the module: it leaves the Gateway paused."""
    recipient = "0x" + "f7" * 20
    address = net.address(BTC_CHAIN, recipient)
    amount = 40_000_000
    txid, vout = net.miner.pay(address, amount)
    did = deposit_id(BTC_CHAIN, txid, vout)
    block = net.miner.mine(1)[0]
    net.miner.mine(1)
    wait_for("minted", lambda: net.balance("fpBTC", recipient) == amount, procs=net.procs)
    wait_for("minted everywhere", lambda: net.states(did) == {"minted"}, procs=net.procs)
    net.rpc.invalidateblock(block)
    _drop_from_mempool(net, txid)
    net.miner.mine(3)
    wait_for("erratum everywhere", lambda: net.states(did) == {"erratum"}, procs=net.procs)
    wait_for("Gateway paused", lambda: net.gateway.functions.paused().call(), procs=net.procs)
    for node_id in net.bridge_ports:
        status = wait_for("status names the erratum", lambda n=node_id: (
            net.status(n).get("chains", {}).get(BTC_CHAIN, {}).get("paused") and net.status(n)), procs=net.procs)
        assert "0x" + did.hex() in status["chains"][BTC_CHAIN]["pause_reason"]
        assert any(a["deposit_id"] == "0x" + did.hex() and a["severity"] == "critical" for a in status["alerts"])
    assert len(net.minted_events(did)) == 1
