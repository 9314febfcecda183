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

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from fp_bridge_net import BTC_CHAIN, COIN, ETHER, SRC_CHAIN, Net, bridge_network, wait_for

from fusion_prime.bridge.chains.bitcoin.encoding import parse_hash_hex
from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from fusion_prime.bridge.orders import EVM_NATIVE_VOUT, deposit_id

pytestmark = pytest.mark.xdist_group(name="bridge-network")

RECIPIENT_A = "0x" + "a1" * 20
RECIPIENT_B = "0x" + "b2" * 20


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with bridge_network(tmp_path_factory.mktemp("bridge-net")) as n:
        yield n


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
