"""The gateway and wrapped asset on a running anvil, driven by web3.py.

The group key here is a plain local key (eth-account); in production the same 65-byte signature
comes from the CGGMP21 threshold signer. EIP-712 hashing on the Python side is eth-account's own
implementation, so agreement with the contract is a real cross-check.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from fp_contracts import (
    BTC_CHAIN,
    EIP712_DOMAIN,
    MINT_ORDER_TYPES,
    RETENTION,
    ROTATION_DELAY,
    Anvil,
    Bridge,
    domain,
    error_selector,
    fund_and_impersonate,
    revert_selector,
    transact,
)
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD


def expect_revert(call: Any, sender: str, abi: list[dict[str, Any]], error: str) -> None:
    with pytest.raises(ContractLogicError) as info:
        call.call({"from": sender})
    assert revert_selector(info.value) == error_selector(abi, error), info.value


def test_order_signed_by_local_key_mints_and_burn_emits_event(chain_a: Anvil, record_property) -> None:
    w3 = chain_a.w3
    bridge = Bridge(chain_a, Account.create())
    alice = w3.eth.accounts[2]
    txid = bytes.fromhex("4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b")
    order = bridge.order(txid, 1, 150_000_000, alice)
    sig = bridge.sign(order)

    # eth-account's EIP-712 digest is the contract's digest
    signable = encode_typed_data(full_message={
        "types": {"EIP712Domain": EIP712_DOMAIN, **MINT_ORDER_TYPES}, "primaryType": "MintOrder",
        "domain": domain(chain_a, bridge.gateway), "message": order})
    digest = Web3.keccak(b"\x19\x01" + signable.header + signable.body)
    as_tuple = tuple(order[f["name"]] for f in MINT_ORDER_TYPES["MintOrder"])
    assert bridge.gateway.functions.mintOrderDigest(as_tuple).call() == digest
    assert sig[64] in (27, 28)

    receipt = transact(w3, bridge.mint_call(order, sig), bridge.relayer)  # anyone relays
    record_property("gas anvil Gateway.mint [tx]", receipt["gasUsed"])
    print(f"gas Gateway.mint (full tx): {receipt['gasUsed']}")
    assert bridge.token.functions.balanceOf(alice).call() == 150_000_000

    (minted,) = bridge.gateway.events.Minted().process_receipt(receipt, errors=DISCARD)
    deposit_id = Web3.keccak(abi_encode(["uint256", "bytes32", "uint32"], [BTC_CHAIN, txid, 1]))
    assert minted["args"]["depositId"] == deposit_id
    assert minted["args"]["recipient"] == alice
    assert minted["args"]["amount"] == 150_000_000
    assert minted["args"]["sourceTxId"] == txid
    assert minted["args"]["vout"] == 1
    assert minted["args"]["orderDigest"] == digest
    assert minted["args"]["signer"] == bridge.group.address
    assert bridge.gateway.functions.mintedDeposit(deposit_id).call() == digest

    # the same order again, or a re-signed order for the same deposit, never mints twice
    expect_revert(bridge.mint_call(order, sig), bridge.relayer, bridge.gateway.abi, "DepositAlreadyMinted")
    reissued = {**order, "nonce": order["nonce"] + 1, "amount": 1}
    expect_revert(bridge.mint_call(reissued, bridge.sign(reissued)), bridge.relayer, bridge.gateway.abi,
                  "DepositAlreadyMinted")

    # burn with a Bitcoin destination
    destination = b"bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
    receipt = transact(w3, bridge.gateway.functions.burn(bridge.token.address, 50_000_000, destination), alice)
    record_property("gas anvil Gateway.burn [tx]", receipt["gasUsed"])
    print(f"gas Gateway.burn (full tx): {receipt['gasUsed']}")
    (burned,) = bridge.gateway.events.Burned().process_receipt(receipt, errors=DISCARD)
    burn_id = Web3.keccak(abi_encode(["uint256", "address", "uint256"], [chain_a.chain_id, bridge.gateway.address, 1]))
    assert burned["args"]["burnId"] == burn_id
    assert burned["args"]["asset"] == bridge.token.address
    assert burned["args"]["burner"] == alice
    assert burned["args"]["burnNonce"] == 1
    assert burned["args"]["amount"] == 50_000_000
    assert burned["args"]["destination"] == destination
    topic0 = Web3.keccak(text="Burned(bytes32,address,address,uint256,uint256,bytes)")
    (raw,) = [log for log in receipt["logs"] if log["address"] == bridge.gateway.address]
    assert raw["topics"][0] == topic0 and raw["topics"][1] == burn_id
    assert bridge.token.functions.balanceOf(alice).call() == 100_000_000
    assert bridge.token.functions.totalSupply().call() == 100_000_000


def test_order_for_one_chain_is_refused_on_another_at_the_same_address(chain_a: Anvil, chain_b: Anvil) -> None:
    group = Account.create()
    deployer = Account.create().address  # fresh on both chains: same nonce, so same gateway address
    fund_and_impersonate(chain_a.w3, deployer)
    fund_and_impersonate(chain_b.w3, deployer)
    on_a = Bridge(chain_a, group, deployer)
    on_b = Bridge(chain_b, group, deployer)
    assert on_a.gateway.address == on_b.gateway.address
    assert on_a.token.address == on_b.token.address

    order = on_a.order(b"\x11" * 32, 0, 10**8, chain_a.w3.eth.accounts[2])
    sig = on_a.sign(order)
    expect_revert(on_b.mint_call(order, sig), on_b.relayer, on_b.gateway.abi, "UnauthorizedSigner")
    transact(chain_a.w3, on_a.mint_call(order, sig), on_a.relayer)


def test_malleated_and_foreign_signatures_are_refused(chain_a: Anvil) -> None:
    bridge = Bridge(chain_a, Account.create())
    order = bridge.order(b"\x22" * 32, 0, 10**8, chain_a.w3.eth.accounts[2])
    sig = bridge.sign(order)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(sig[32:64], "big")
    high_s = sig[:32] + (n - s).to_bytes(32, "big") + bytes([55 - sig[64]])  # 27 <-> 28
    expect_revert(bridge.mint_call(order, high_s), bridge.relayer, bridge.gateway.abi, "SignatureHighS")
    v_zero = sig[:64] + bytes([sig[64] - 27])
    expect_revert(bridge.mint_call(order, v_zero), bridge.relayer, bridge.gateway.abi, "SignatureBadV")
    stranger = bridge.sign(order, Account.create())
    expect_revert(bridge.mint_call(order, stranger), bridge.relayer, bridge.gateway.abi, "UnauthorizedSigner")


def test_pause_by_guardian_and_unpause_by_group_key(chain_a: Anvil) -> None:
    bridge = Bridge(chain_a, Account.create())
    order = bridge.order(b"\x33" * 32, 0, 10**8, chain_a.w3.eth.accounts[2])
    sig = bridge.sign(order)
    transact(chain_a.w3, bridge.gateway.functions.pause(), bridge.guardian)
    expect_revert(bridge.mint_call(order, sig), bridge.relayer, bridge.gateway.abi, "GatewayPaused")
    bridge.admin("Unpause", [], lambda n, d, s: bridge.gateway.functions.unpause(n, d, s))
    transact(chain_a.w3, bridge.mint_call(order, sig), bridge.relayer)


def test_key_rotation_with_delay_and_retention(chain_a: Anvil) -> None:
    w3 = chain_a.w3
    bridge = Bridge(chain_a, Account.create())
    new_group = Account.create()
    receipt = bridge.admin("RotateSigner", [("newSigner", "address", new_group.address)],
                           lambda n, d, s: bridge.gateway.functions.rotateSigner(new_group.address, n, d, s))
    activates_at = w3.eth.get_block(receipt["blockNumber"])["timestamp"] + ROTATION_DELAY

    def order_for(i: int) -> dict[str, Any]:
        o = bridge.order(bytes([0x40 + i]) * 32, 0, 10**6, w3.eth.accounts[2])
        o["deadline"] = activates_at + 10 * RETENTION
        return o

    def at(ts: int) -> None:
        w3.provider.make_request("evm_setNextBlockTimestamp", [ts])
        w3.provider.make_request("evm_mine", [])

    early = order_for(1)
    expect_revert(bridge.mint_call(early, bridge.sign(early, new_group)), bridge.relayer, bridge.gateway.abi,
                  "UnauthorizedSigner")
    at(activates_at)
    transact(w3, bridge.mint_call(early, bridge.sign(early, new_group)), bridge.relayer)
    in_flight = order_for(2)
    transact(w3, bridge.mint_call(in_flight, bridge.sign(in_flight)), bridge.relayer)  # old key, in retention
    at(activates_at + RETENTION)
    late = order_for(3)
    expect_revert(bridge.mint_call(late, bridge.sign(late)), bridge.relayer, bridge.gateway.abi, "UnauthorizedSigner")
    assert bridge.gateway.functions.activeSigner().call() == new_group.address
