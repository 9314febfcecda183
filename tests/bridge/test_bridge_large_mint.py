"""A mint above the asset's large-mint threshold, through the real processes.

The Gateway only *queues* such a mint (``MintQueued``, executable from ``eta`` unless the guardian
vetoes it). Shows: an ETH deposit of more than ``LARGE_ETH`` is signed and relayed, the Gateway
queues it and nothing is minted while the destination chain's clock is before the eta; once the
anvil clock passes the eta, the bridge sends ``executeMint`` — one transaction for the whole
network (the deposit's coordinator executes, the others wait their takeover rank and find it
done) — and the deposit is minted exactly once, on every node.

Nothing here asserts a duration; deadlines only turn a hang into a failure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fp_bridge_net import ETHER, LARGE_ETH, LARGE_MINT_DELAY, SRC_CHAIN, Net, bridge_network, wait_for
from web3 import Web3

from fusion_prime.bridge.orders import EVM_NATIVE_VOUT, deposit_id
from fusion_prime.bridge.watchers import MINT_QUEUED_TOPIC

pytestmark = pytest.mark.xdist_group(name="bridge-network")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with bridge_network(tmp_path_factory.mktemp("bridge-large")) as n:
        yield n


def _queued_events(net: Net, did: bytes) -> list[dict]:
    return list(net.dst.eth.get_logs({"address": net.gateway.address, "fromBlock": 0,
                                      "topics": [MINT_QUEUED_TOPIC, None, "0x" + did.hex()]}))


def _execute_txs(net: Net, from_block: int) -> list[dict]:
    """Every transaction (successful or reverted) that called ``executeMint`` on the Gateway."""
    selector = bytes(Web3.keccak(text="executeMint((address,bytes32,bytes32,uint32,address,uint256,uint32,"
                                      "uint256,uint256))")[:4])
    found = []
    for n in range(from_block, int(net.dst.eth.block_number) + 1):
        for tx in net.dst.eth.get_block(n, full_transactions=True)["transactions"]:
            if tx["to"] == net.gateway.address and bytes(tx["input"])[:4] == selector:
                found.append(tx)
    return found


def test_large_mint_is_queued_then_executed_once_after_its_eta(net: Net) -> None:
    recipient = Web3.to_checksum_address("0x" + "9a" * 20)
    address = net.address(SRC_CHAIN, recipient)
    amount = LARGE_ETH + ETHER  # above the threshold; depth: the 6-confirmation cap
    tx_hash = net.src.eth.send_transaction({"from": net.src.eth.accounts[1], "to": address, "value": amount})
    assert net.src.eth.wait_for_transaction_receipt(tx_hash)["status"] == 1
    did = deposit_id(SRC_CHAIN, bytes(tx_hash), EVM_NATIVE_VOUT)
    start_block = int(net.dst.eth.block_number)
    for _ in range(5):
        net.src.provider.make_request("evm_mine", [])
    queued = wait_for("MintQueued on the destination", lambda: _queued_events(net, did), procs=net.procs)
    assert len(queued) == 1
    eta = int.from_bytes(bytes(queued[0]["data"])[64:96], "big")
    assert eta > int(net.dst.eth.get_block("latest")["timestamp"])
    # before the eta nothing is minted, whatever the nodes do meanwhile (no assertion on time)
    time.sleep(3)
    assert net.balance("fpETH", recipient) == 0
    assert net.minted_events(did) == []
    assert _execute_txs(net, start_block) == []
    assert net.states(did) <= {"signed", "signing"}
    # the destination clock passes the eta
    net.dst.provider.make_request("evm_increaseTime", [LARGE_MINT_DELAY + 1])
    net.dst.provider.make_request("evm_mine", [])
    wait_for("fpETH minted", lambda: net.balance("fpETH", recipient) == amount, procs=net.procs)
    wait_for("minted everywhere", lambda: net.states(did) == {"minted"}, procs=net.procs)
    # every node had its chance to (wrongly) execute again: the takeover delay is 5 s
    time.sleep(8)
    assert len(net.minted_events(did)) == 1
    assert net.balance("fpETH", recipient) == amount
    executed = _execute_txs(net, start_block)
    assert len(executed) == 1, executed
    assert net.dst.eth.get_transaction_receipt(executed[0]["hash"])["status"] == 1
