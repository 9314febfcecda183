"""ETH deposits reorganised out of the source chain, through real processes (issue 14, "Reorgs").

The network of ``fp_bridge_net`` (three signer daemons with their bridges, the Bitcoin devnet, the
source anvil 31337, the destination anvil 31338 with the Gateway). The Bitcoin side's reorg tests
are in ``test_bridge_network.py``; these are the same two for an ETH deposit on the source anvil:

* a deposit reorganised out before its depth (every node has it ``confirming``, 1 of 2) is
  ``reorged`` on every node and never minted, even as the new branch grows past its depth;
* a deposit reorganised out after its mint is an ``erratum`` on every node: the Gateway is paused
  by a group-signed ``Pause`` (``pauseWithSignature``, ``Paused(by = the group key's address)``)
  and every node's status names the deposit.

How the reorg is made: the deposit is paid by a raw transaction signed here (a fresh key funded
with ``anvil_setBalance``), after an ``evm_snapshot`` of the source anvil. The reorg is
``evm_revert`` to that snapshot (anvil drops the reverted blocks and does not return their
transactions to its pool), then a *conflicting* transaction at the deposit's nonce (the payer to
itself, 0 value) mined at the deposit's height, then empty blocks until the new branch is longer
than the old one. The deposit's nonce is spent on the new branch, so the deposit can never come
back: re-broadcasting its exact signed bytes is refused (checked). Only the source anvil is
reorganised; the Gateway's chain (31338) is a separate process and keeps the mint.

The waits are hang guards (``wait_for``'s default deadline), never speed assertions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fp_bridge_net import ETHER, SRC_CHAIN, Net, bridge_network, wait_for
from web3 import Web3
from web3.exceptions import Web3RPCError

from fusion_prime.bridge.orders import EVM_NATIVE_VOUT, deposit_id

pytestmark = pytest.mark.xdist_group(name="bridge-network")

SRC_CHAIN_ID = 31_337
GWEI = 10**9
PAUSED_TOPIC = "0x" + Web3.keccak(text="Paused(address)").hex().removeprefix("0x")
PAUSE_WITH_SIGNATURE = bytes(Web3.keccak(text="pauseWithSignature(uint256,uint256,bytes)")[:4])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with bridge_network(tmp_path_factory.mktemp("bridge-evm-reorg")) as n:
        yield n


# ------------------------------------------------------------------------------ the source anvil

def _rpc(net: Net, method: str, *params: Any) -> Any:
    """One JSON-RPC call to the source anvil; an error fails the test."""
    resp = net.src.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in resp, (method, resp)
    return resp["result"]


def _payer(net: Net) -> LocalAccount:
    """A fresh key with 10 ETH on the source chain: its deposits are signed here, so the exact
    bytes can be re-broadcast after the reorg."""
    acct: LocalAccount = Account.create()
    _rpc(net, "anvil_setBalance", acct.address, hex(10 * ETHER))
    return acct


def _signed(payer: LocalAccount, to: str, value: int, nonce: int) -> bytes:
    tx = {"chainId": SRC_CHAIN_ID, "nonce": nonce, "to": Web3.to_checksum_address(to), "value": value,
          "gas": 21_000, "maxFeePerGas": 20 * GWEI, "maxPriorityFeePerGas": GWEI}
    return bytes(payer.sign_transaction(tx).raw_transaction)


def _tx_hash(net: Net, h: bytes) -> Any:
    return _rpc(net, "eth_getTransactionByHash", "0x" + h.hex())


class Deposit:
    """An ETH deposit paid after a snapshot of the source anvil (see the module docstring)."""

    def __init__(self, net: Net, recipient: str, amount: int) -> None:
        self.net, self.amount = net, amount
        self.address = net.address(SRC_CHAIN, recipient)
        self.payer = _payer(net)
        self.nonce = net.src.eth.get_transaction_count(self.payer.address)
        self.snapshot = _rpc(net, "evm_snapshot")
        self.raw = _signed(self.payer, self.address, amount, self.nonce)
        self.tx_hash = bytes(net.src.eth.send_raw_transaction(self.raw))
        receipt = net.src.eth.wait_for_transaction_receipt(self.tx_hash)
        assert receipt["status"] == 1  # anvil mined it: 1 confirmation
        self.height = int(receipt["blockNumber"])
        self.block = bytes(receipt["blockHash"])
        self.did = deposit_id(SRC_CHAIN, self.tx_hash, EVM_NATIVE_VOUT)
        assert net.src.eth.get_balance(self.address) == amount

    def reorganise_out(self) -> int:
        """Revert the source chain to before the deposit's block and mine a longer branch whose
        block at the deposit's height spends the deposit's nonce; returns the new tip."""
        net = self.net
        old_tip = int(net.src.eth.block_number)
        assert _rpc(net, "evm_revert", self.snapshot) is True
        assert int(net.src.eth.block_number) < self.height
        assert _tx_hash(net, self.tx_hash) is None, "evm_revert left the deposit in the chain"
        pool = _rpc(net, "txpool_content")
        assert not any(self.payer.address.lower() == a.lower() for part in pool.values() for a in part), \
            f"the deposit went back to the pool: {pool}"
        conflict = net.src.eth.send_raw_transaction(_signed(self.payer, self.payer.address, 0, self.nonce))
        receipt = net.src.eth.wait_for_transaction_receipt(conflict)
        assert receipt["status"] == 1
        tip = int(net.src.eth.block_number)
        if tip <= old_tip:
            _rpc(net, "anvil_mine", hex(old_tip + 1 - tip))
        new_tip = int(net.src.eth.block_number)
        assert new_tip > old_tip
        # the block that held the deposit is gone, the deposit is nowhere, its nonce is spent
        assert bytes(net.src.eth.get_block(self.height)["hash"]) != self.block
        assert _tx_hash(net, self.tx_hash) is None
        assert net.src.eth.get_balance(self.address) == 0
        assert net.src.eth.get_transaction_count(self.payer.address) == self.nonce + 1
        with pytest.raises(Web3RPCError, match="nonce too low"):
            net.src.eth.send_raw_transaction(self.raw)
        return new_tip


def _tips_at_least(net: Net, height: int) -> bool:
    return all(net.status(n).get("chains", {}).get(SRC_CHAIN, {}).get("tip", -1) >= height for n in net.bridge_ports)


# ---------------------------------------------------------------------------------------- tests

def test_eth_deposit_reorganised_out_before_its_depth_mints_nothing(net: Net) -> None:
    recipient = "0x" + "e8" * 20
    dep = Deposit(net, recipient, 3 * ETHER // 10)  # 0.3 ETH: value-aware depth max(2, ceil(0.3)) = 2
    wait_for("1 of 2 confirmations everywhere", lambda: net.states(dep.did) == {"confirming"}, procs=net.procs)
    assert net.balance("fpETH", recipient) == 0
    tip = dep.reorganise_out()
    wait_for("reorged everywhere", lambda: net.states(dep.did) == {"reorged"}, procs=net.procs)
    # the new branch goes on past the deposit's depth: the deposit stays out and nothing is minted
    _rpc(net, "anvil_mine", hex(3))
    wait_for("every node on the new tip", lambda: _tips_at_least(net, tip + 3), procs=net.procs)
    time.sleep(2)  # give every node a chance to (wrongly) act; no timing is asserted
    assert net.states(dep.did) == {"reorged"}
    assert net.balance("fpETH", recipient) == 0
    assert net.minted_events(dep.did) == []
    assert bytes(net.gateway.functions.mintedDeposit(dep.did).call()) == bytes(32)
    assert not net.gateway.functions.paused().call()


def test_eth_reorg_after_the_mint_pauses_and_reports_the_erratum(net: Net) -> None:
    """Last in the module: it leaves the Gateway paused."""
    recipient = "0x" + "f9" * 20
    amount = 4 * ETHER // 10  # depth 2
    dep = Deposit(net, recipient, amount)
    _rpc(net, "evm_mine")
    wait_for("fpETH minted", lambda: net.balance("fpETH", recipient) == amount, procs=net.procs)
    wait_for("minted everywhere", lambda: net.states(dep.did) == {"minted"}, procs=net.procs)
    assert len(net.minted_events(dep.did)) == 1
    assert not net.gateway.functions.paused().call()
    dep.reorganise_out()
    reported = "0x" + dep.did.hex()
    wait_for("erratum everywhere", lambda: net.states(dep.did) == {"erratum"}, procs=net.procs)
    wait_for("Gateway paused", lambda: net.gateway.functions.paused().call(), procs=net.procs)
    # paused by the group key's signature, relayed by a node (not the guardian's plain pause())
    with net.wallet() as w:
        group = Web3.to_checksum_address(w.public_key(net.key_id, "m").ethereum_address)
    (paused,) = net.dst.eth.get_logs({"address": net.gateway.address, "fromBlock": 0, "topics": [PAUSED_TOPIC]})
    assert Web3.to_checksum_address("0x" + bytes(paused["topics"][1])[-20:].hex()) == group
    pause_tx = net.dst.eth.get_transaction(paused["transactionHash"])
    assert bytes(pause_tx["input"])[:4] == PAUSE_WITH_SIGNATURE
    assert pause_tx["from"] in {a.address for a in net.relayers.values()}
    for node_id in net.bridge_ports:
        status = wait_for("status names the erratum", lambda n=node_id: (
            net.status(n).get("chains", {}).get(SRC_CHAIN, {}).get("paused") and net.status(n)), procs=net.procs)
        assert reported in status["chains"][SRC_CHAIN]["pause_reason"]
        assert any(a["deposit_id"] == reported and a["severity"] == "critical" for a in status["alerts"])
        assert [e["deposit_id"] for e in net.events(node_id, "chain-paused", dep.did)] == [reported]
    # the destination chain was not reorganised: the mint stands, once (the operators resolve it)
    assert len(net.minted_events(dep.did)) == 1
    assert net.balance("fpETH", recipient) == amount
