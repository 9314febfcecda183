"""DvP settlement on a running anvil: fpBTC (minted through the gateway) against native ETH."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from fp_contracts import (
    Anvil,
    Bridge,
    deploy,
    error_selector,
    fund_and_impersonate,
    now,
    revert_selector,
    sign_typed,
    transact,
)
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

TRADE_FIELDS = [
    ("partyA", "address"), ("assetA", "address"), ("amountA", "uint256"),
    ("partyB", "address"), ("assetB", "address"), ("amountB", "uint256"),
    ("deadline", "uint256"), ("salt", "uint256"),
]
TRADE_TYPES = {"Trade": [{"name": n, "type": t} for n, t in TRADE_FIELDS]}
ETH = "0x0000000000000000000000000000000000000000"


def sign_trade(key: LocalAccount, chain: Anvil, escrow: Any, trade: dict[str, Any]) -> bytes:
    domain = {"name": "Fusion Prime Settlement", "version": "1", "chainId": chain.chain_id,
              "verifyingContract": escrow.address}
    return sign_typed(key, domain, TRADE_TYPES, "Trade", trade)


def as_tuple(trade: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(trade[n] for n, _ in TRADE_FIELDS)


@pytest.fixture
def setup(chain_a: Anvil) -> dict[str, Any]:
    w3 = chain_a.w3
    bridge = Bridge(chain_a, Account.create())
    alice, bob = Account.create(), Account.create()  # desks holding their own keys
    for who in (alice, bob):
        fund_and_impersonate(w3, who.address)
    order = bridge.order(b"\x55" * 32, 0, 2 * 10**8, alice.address)
    transact(w3, bridge.mint_call(order, bridge.sign(order)), bridge.relayer)
    escrow = deploy(w3, "SettlementEscrow", w3.eth.accounts[0])
    trade = {"partyA": alice.address, "assetA": bridge.token.address, "amountA": 2 * 10**8,
             "partyB": bob.address, "assetB": ETH, "amountB": 30 * 10**18,
             "deadline": now(chain_a) + 3600, "salt": 7}
    return {"w3": w3, "chain": chain_a, "bridge": bridge, "alice": alice, "bob": bob, "escrow": escrow,
            "trade": trade}


def test_dvp_settles_both_legs_atomically(setup: dict[str, Any], record_property) -> None:
    w3, chain, bridge, escrow, trade = setup["w3"], setup["chain"], setup["bridge"], setup["escrow"], setup["trade"]
    alice, bob = setup["alice"], setup["bob"]
    t = as_tuple(trade)
    sig_a = sign_trade(alice, chain, escrow, trade)
    sig_b = sign_trade(bob, chain, escrow, trade)
    receipt = transact(w3, escrow.functions.open(t, sig_a, sig_b), bridge.relayer)
    (opened,) = escrow.events.TradeOpened().process_receipt(receipt, errors=DISCARD)
    trade_id = opened["args"]["tradeId"]
    assert trade_id == escrow.functions.tradeId(t).call()

    transact(w3, bridge.token.functions.approve(escrow.address, trade["amountA"]), alice.address)
    transact(w3, escrow.functions.fund(t), alice.address)
    # one leg in: settlement is impossible
    with pytest.raises(ContractLogicError) as info:
        escrow.functions.settle(t).call({"from": bridge.relayer})
    assert revert_selector(info.value) == error_selector(escrow.abi, "LegNotFunded")

    transact(w3, escrow.functions.fund(t), bob.address, value=trade["amountB"])
    alice_eth = w3.eth.get_balance(alice.address)
    receipt = transact(w3, escrow.functions.settle(t), bridge.relayer)
    record_property("gas anvil SettlementEscrow.settle fpBTC-vs-ETH [tx]", receipt["gasUsed"])
    print(f"gas SettlementEscrow.settle (full tx, ERC-20 vs ETH): {receipt['gasUsed']}")

    (settled,) = escrow.events.TradeSettled().process_receipt(receipt, errors=DISCARD)
    assert settled["args"]["tradeId"] == trade_id
    assert bridge.token.functions.balanceOf(bob.address).call() == 2 * 10**8
    assert bridge.token.functions.balanceOf(alice.address).call() == 0
    assert w3.eth.get_balance(alice.address) == alice_eth + trade["amountB"]
    assert w3.eth.get_balance(escrow.address) == 0
    assert escrow.functions.trades(trade_id).call()[0] == 2  # Status.Settled


def test_refund_after_deadline_returns_own_leg(setup: dict[str, Any]) -> None:
    w3, chain, bridge, escrow, trade = setup["w3"], setup["chain"], setup["bridge"], setup["escrow"], setup["trade"]
    alice, bob = setup["alice"], setup["bob"]
    t = as_tuple(trade)
    transact(w3, escrow.functions.open(t, sign_trade(alice, chain, escrow, trade),
                                       sign_trade(bob, chain, escrow, trade)), bridge.relayer)
    transact(w3, bridge.token.functions.approve(escrow.address, trade["amountA"]), alice.address)
    transact(w3, escrow.functions.fund(t), alice.address)
    w3.provider.make_request("evm_setNextBlockTimestamp", [trade["deadline"] + 1])
    w3.provider.make_request("evm_mine", [])
    with pytest.raises(ContractLogicError) as info:
        escrow.functions.settle(t).call({"from": bridge.relayer})
    assert revert_selector(info.value) == error_selector(escrow.abi, "TradeExpired")
    transact(w3, escrow.functions.refund(t, alice.address), bridge.relayer)
    assert bridge.token.functions.balanceOf(alice.address).call() == trade["amountA"]
    assert bridge.token.functions.balanceOf(bob.address).call() == 0


def test_funded_party_aborts_when_the_other_never_funds(setup: dict[str, Any]) -> None:
    w3, chain, bridge, escrow, trade = setup["w3"], setup["chain"], setup["bridge"], setup["escrow"], setup["trade"]
    alice, bob = setup["alice"], setup["bob"]
    t = as_tuple(trade)
    transact(w3, escrow.functions.open(t, sign_trade(alice, chain, escrow, trade),
                                       sign_trade(bob, chain, escrow, trade)), bridge.relayer)
    transact(w3, bridge.token.functions.approve(escrow.address, trade["amountA"]), alice.address)
    transact(w3, escrow.functions.fund(t), alice.address)
    receipt = transact(w3, escrow.functions.abort(t), alice.address)  # no waiting for the deadline
    assert escrow.events.TradeAborted().process_receipt(receipt, errors=DISCARD)
    assert bridge.token.functions.balanceOf(alice.address).call() == trade["amountA"]
    with pytest.raises(ContractLogicError) as info:
        escrow.functions.fund(t).call({"from": bob.address, "value": trade["amountB"]})
    assert revert_selector(info.value) == error_selector(escrow.abi, "WrongStatus")


def test_deadline_is_bounded(setup: dict[str, Any]) -> None:
    chain, escrow, trade = setup["chain"], setup["escrow"], setup["trade"]
    far = {**trade, "deadline": now(chain) + 100 * 365 * 86_400}
    with pytest.raises(ContractLogicError) as info:
        escrow.functions.open(as_tuple(far), b"", b"").call()
    assert revert_selector(info.value) == error_selector(escrow.abi, "DeadlineTooFar")
