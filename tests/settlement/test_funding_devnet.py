"""A real Bitcoin devnet deposit to a settlement account, through two nodes' bridge runtimes.

The Bitcoin devnet is libbitcoinkernel behind the JSON-RPC façade (in process). Each "node" is a
``BridgeRuntime`` over its own SQLite bridge database with its own RPC client, driven here by the
same calls its ``step`` makes on the source chain (block follower → deposit machine → database,
rescan of late registrations, credits learnt); its destination chain is never touched (nothing is
minted, which is the point). The account address is registered at node1 only when the deposit is
mined; node2 learns it afterwards (as a forwarded registration would arrive) and finds the deposit
by its rescan. At depth both databases offer the same credit, both verify it, neither proposes a
mint; ``credited`` makes it a custody coin at both; then the deposit's block is invalidated and
both machines declare the erratum and pause.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from coincurve import PrivateKey
from web3 import Web3

from fusion_prime.bridge.chains.bitcoin.encoding import COIN, REGTEST, parse_hash_hex, script_to_address
from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer
from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from fusion_prime.bridge.chainview import NodeChainView
from fusion_prime.bridge.config import BridgeConfig, SourceChain
from fusion_prime.bridge.db import BridgeDB, open_database
from fusion_prime.bridge.deposits import CONFIRMED, ERRATUM, PauseChain
from fusion_prime.bridge.derivation import account_deposit
from fusion_prime.bridge.orders import ChainParams, deposit_id
from fusion_prime.bridge.runtime import BridgeRuntime
from fusion_prime.bridge.settlement.batch import Credit
from fusion_prime.bridge.settlement.funding import Funding
from fusion_prime.protocol.curve import Point
from fusion_prime.signer.bitcoin import address_to_script, p2wpkh_script

BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
DST = "eip155:31338"
GATEWAY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
FPBTC = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
GROUP_KEY = Point.from_bytes(PrivateKey(hashlib.sha256(b"funding devnet group").digest()).public_key.format())
CHAIN_CODE = hashlib.sha256(b"funding devnet chain code").digest()
ALICE = PrivateKey(hashlib.sha256(b"funding devnet alice").digest()).public_key.format()
PARAMS = ChainParams(min_confirmations=3, value_per_block=50 * 10**8, max_confirmations=6, dust_limit=294,
                     sweep_cost=1_000)
AMOUNT = 50_000_000
MINER = PrivateKey((0x5EED).to_bytes(32, "big"))
MINER_ADDRESS = script_to_address(p2wpkh_script(MINER.public_key.format()), REGTEST)


@pytest.fixture
def devnet(tmp_path: Path) -> Iterator[tuple[RegtestNode, BitcoinRPCServer, BitcoinRPC]]:
    node = RegtestNode(tmp_path / "btc")
    server = BitcoinRPCServer(node, user="funding", password="devnet").start()
    rpc = BitcoinRPC(server.url, "funding", "devnet")
    try:
        yield node, server, rpc
    finally:
        rpc.close()
        server.stop()
        node.close()


class _Node:
    """One node's bridge runtime, database and funding side (destination chain never used)."""

    def __init__(self, base: Path, name: str, url: str, start_height: int) -> None:
        self.name = name
        self.db: BridgeDB = open_database(f"sqlite:///{base / (name + '.sqlite3')}")
        self.rpc = BitcoinRPC(url, "funding", "devnet")
        chain = SourceChain(caip2=BTC, rpc=url, symbol="BTC", asset=FPBTC, params=PARAMS, start_height=start_height)
        cfg = BridgeConfig(path=None, key_id=b"\x01" * 32, database="", destination_chain=DST,
                           destination_rpc="http://127.0.0.1:9", gateway=GATEWAY, relayer_key_file=None,
                           chains=(chain,))
        view = NodeChainView(self.db, bitcoin=self.rpc, source_evm=None, destination=Web3(), gateway=GATEWAY,
                             bitcoin_chains=[BTC])
        self.runtime = BridgeRuntime(cfg, db=self.db, sign=self._no_sign, node_id=name, committee=["n1", "n2"],
                                     group_key=GROUP_KEY, chain_code=CHAIN_CODE, view=view, sources={BTC: self.rpc},
                                     destination=Web3())
        self.paused: list[PauseChain] = []
        self.runtime._pause = self._record_pause  # type: ignore[method-assign]
        self.funding = Funding(self.db, group_key=GROUP_KEY, chain_code=CHAIN_CODE, assets={"BTC": BTC},
                               paused=self.runtime.chain_paused)

    async def _no_sign(self, *args: Any, **kw: Any) -> Any:
        raise AssertionError("nothing is signed for an account deposit")

    async def _record_pause(self, a: PauseChain) -> None:
        self.paused.append(a)

    async def poll(self) -> None:
        """What ``BridgeRuntime.step`` does on the source chain."""
        rt = self.runtime
        fresh = await trio.to_thread.run_sync(rt._fresh_addresses)
        for chain, follower in rt.followers.items():
            for obs in await trio.to_thread.run_sync(follower.poll):
                await rt.feed(chain, obs)
        if fresh:
            await rt._rescan_new_addresses(fresh)
        await rt._learn_credits()

    def close(self) -> None:
        self.rpc.close()
        self.db.close()


def _pay(rpc: BitcoinRPC, address: str, amount: int) -> str:
    """Spend a mature coinbase of the miner to ``address``; the transaction id."""
    first = int(rpc.getblockcount()) - 100
    coinbase = rpc.getblock(rpc.getblockhash(first), 2)["tx"][0]
    value = int(Decimal(str(coinbase["vout"][0]["value"])) * COIN)
    miner_script = p2wpkh_script(MINER.public_key.format())
    tx = Tx(2, [TxIn(OutPoint(parse_hash_hex(coinbase["txid"]), 0), sequence=0xFFFFFFFD)],
            [TxOut(amount, address_to_script(address, "regtest")), TxOut(value - amount - 10_000, miner_script)])
    sign_p2wpkh(tx, 0, MINER.secret, value)
    return str(rpc.sendrawtransaction(tx.serialize().hex()))


def test_a_devnet_deposit_to_an_account_is_credited_at_every_node_never_minted(
        devnet: tuple[RegtestNode, BitcoinRPCServer, BitcoinRPC], tmp_path: Path) -> None:
    chain, server, rpc = devnet
    rpc.generatetoaddress(101, MINER_ADDRESS)
    start = int(rpc.getblockcount()) + 1
    nodes = [_Node(tmp_path, "n1", server.url, start), _Node(tmp_path, "n2", server.url, start)]
    n1, n2 = nodes
    try:
        address = n1.funding.register(ALICE, "BTC")
        assert address == account_deposit(GROUP_KEY, CHAIN_CODE, BTC, ALICE).address
        txid = _pay(rpc, address, AMOUNT)
        rpc.generatetoaddress(1, MINER_ADDRESS)
        did = deposit_id(BTC, txid, 0)
        credit = Credit(did, ALICE, "BTC", AMOUNT)

        async def drive() -> None:
            async with trio.open_nursery() as nursery:
                for n in nodes:
                    n.runtime._nursery = nursery
                for n in nodes:
                    await n.poll()
                # node1 sees it; node2 does not know the address yet: "retry", never a refusal
                assert n1.db.get_deposit(did) is not None and n2.db.get_deposit(did) is None
                assert n2.funding.verify_credit(credit).startswith("retry:")  # type: ignore[union-attr]
                assert n1.funding.verify_credit(credit).startswith("retry:")  # type: ignore[union-attr]
                assert n1.funding.pending_credits(lambda d: False) == []
                # the registration reaches node2 (as the forwarder's call would): its rescan finds the deposit
                n2.funding.register_account(ALICE, "BTC", forward=False)
                rpc.generatetoaddress(2, MINER_ADDRESS)
                for n in nodes:
                    await n.poll()
                for n in nodes:
                    dep = n.runtime.machines[BTC].get("0x" + did.hex())
                    assert dep is not None and dep.state == CONFIRMED and dep.account, n.name
                    assert n.funding.pending_credits(lambda d: False) == [credit], n.name
                    assert n.funding.verify_credit(credit) is None, n.name
                    assert not n.runtime._pending and not n.runtime._in_flight  # no mint proposed
                    row = n.db.get_deposit(did)
                    assert row is not None and row.state == "confirmed" and row.recipient == ALICE.hex()
                # the batch is applied and stored at both: custody, and the machines learn it
                for n in nodes:
                    n.funding.credited([credit], reference="batch 1")
                    await n.poll()
                    assert n.runtime.machines[BTC].get("0x" + did.hex()).credited == "batch 1"
                    assert n.funding.pending_credits(lambda d: False) == []
                    with n.db.read() as r:
                        coins = r.custody_coins(BTC)
                    assert [(c["txid"], c["vout"], int(c["value"])) for c in coins] == [(txid, 0, AMOUNT)]
                # a longer branch without the deposit's block, after the credit: an erratum at both, and
                # deposits from the chain are paused (no credit, no mint)
                chain.mine_branch(parse_hash_hex(rpc.getblockhash(start - 1)), 4, b"\x51")
                assert rpc.getrawtransaction(txid, True).get("blockhash") is None  # back in the mempool
                for n in nodes:
                    await n.poll()
                for n in nodes:
                    dep = n.runtime.machines[BTC].get("0x" + did.hex())
                    assert dep.state == ERRATUM and n.runtime.chain_paused(BTC), n.name
                    assert n.db.get_deposit(did).state == "erratum"
                    assert n.funding.verify_credit(credit) is not None
                nursery.cancel_scope.cancel()

        trio.run(drive)
        for n in nodes:
            assert [p.deposit_id for p in n.paused] == ["0x" + did.hex()]
    finally:
        for n in nodes:
            n.close()
