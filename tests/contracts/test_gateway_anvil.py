"""The gateway and wrapped asset on a running anvil, driven by web3.py.

The group key here is a plain local key (eth-account); in production the same 65-byte signature
comes from the CGGMP21 threshold signer. EIP-712 hashing on the Python side is eth-account's own
implementation, so agreement with the contract is a real cross-check.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from fp_contracts import (
    ADMIN_DELAY,
    BTC_CHAIN,
    CONFIGURE_TYPES,
    EIP712_DOMAIN,
    LARGE_MINT_DELAY,
    MINT_ORDER_TYPES,
    REFUND_TYPES,
    RETENTION,
    TEST_VECTORS,
    Anvil,
    Bridge,
    advance,
    btc_config,
    chain_key,
    config_tuple,
    deposit_id,
    domain,
    error_selector,
    fund_and_impersonate,
    now,
    revert_selector,
    sign_typed,
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
    expected_id = Web3.keccak(abi_encode(["bytes32", "bytes32", "uint32"], [BTC_CHAIN, txid, 1]))
    assert minted["args"]["depositId"] == expected_id
    assert minted["args"]["recipient"] == alice
    assert minted["args"]["amount"] == 150_000_000
    assert minted["args"]["sourceTxId"] == txid
    assert minted["args"]["vout"] == 1
    assert minted["args"]["orderDigest"] == digest
    assert minted["args"]["signer"] == bridge.group.address
    assert bridge.gateway.functions.mintedDeposit(expected_id).call() == digest

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
    _, n, d = bridge.admin("Unpause", [], lambda n, d, s: bridge.gateway.functions.unpause(n, d, s))
    # the unpause is queued: it waits ADMIN_DELAY, during which the guardian could veto it
    expect_revert(bridge.gateway.functions.executeUnpause(n, d), bridge.relayer, bridge.gateway.abi,
                  "ActionNotReady")
    advance(chain_a, ADMIN_DELAY)
    transact(chain_a.w3, bridge.gateway.functions.executeUnpause(n, d), bridge.relayer)
    order["deadline"] = now(chain_a) + 3600
    sig = bridge.sign(order)
    transact(chain_a.w3, bridge.mint_call(order, sig), bridge.relayer)


def test_key_rotation_with_delay_veto_and_retention(chain_a: Anvil) -> None:
    w3 = chain_a.w3
    bridge = Bridge(chain_a, Account.create())
    new_group = Account.create()
    thief = Account.create()

    def propose(new_key: Any) -> tuple[bytes, int, int]:
        nonce = bridge.gateway.functions.adminNonce().call()
        deadline = now(chain_a) + 3600
        types = {"RotateSigner": [{"name": "newSigner", "type": "address"}, {"name": "nonce", "type": "uint256"},
                                  {"name": "deadline", "type": "uint256"}]}
        message = {"newSigner": new_key.address, "nonce": nonce, "deadline": deadline}
        # both the active key and the new key sign the same digest (proof that the new key can sign)
        sig = sign_typed(bridge.group, domain(chain_a, bridge.gateway), types, "RotateSigner", message)
        new_sig = sign_typed(new_key, domain(chain_a, bridge.gateway), types, "RotateSigner", message)
        receipt = transact(w3, bridge.gateway.functions.rotateSigner(new_key.address, nonce, deadline, sig, new_sig),
                           bridge.relayer)
        (proposed,) = bridge.gateway.events.SignerRotationProposed().process_receipt(receipt, errors=DISCARD)
        # the action id is the EIP-712 digest both keys signed, computed here by eth-account
        signable = encode_typed_data(full_message={"types": {"EIP712Domain": EIP712_DOMAIN, **types},
                                                   "primaryType": "RotateSigner",
                                                   "domain": domain(chain_a, bridge.gateway), "message": message})
        assert proposed["args"]["actionId"] == Web3.keccak(b"\x19\x01" + signable.header + signable.body)
        return proposed["args"]["actionId"], nonce, deadline

    operators_id, n, d = propose(new_group)
    thief_id, tn, td = propose(thief)  # beside the operators' proposal, not instead of it
    transact(w3, bridge.gateway.functions.veto(thief_id), bridge.guardian)

    def order_for(i: int) -> dict[str, Any]:
        o = bridge.order(bytes([0x40 + i]) * 32, 0, 10**6, w3.eth.accounts[2])
        o["deadline"] = now(chain_a) + 10 * ADMIN_DELAY
        return o

    early = {**order_for(1), "signerEpoch": 1}
    expect_revert(bridge.mint_call(early, bridge.sign(early, new_group)), bridge.relayer, bridge.gateway.abi,
                  "UnauthorizedSigner")
    expect_revert(bridge.gateway.functions.executeRotation(new_group.address, n, d), bridge.relayer,
                  bridge.gateway.abi, "ActionNotReady")
    in_flight = order_for(2)  # epoch 0, signed before the rotation
    advance(chain_a, ADMIN_DELAY)
    expect_revert(bridge.gateway.functions.executeRotation(thief.address, tn, td), bridge.relayer,
                  bridge.gateway.abi, "ActionNotQueued")
    transact(w3, bridge.gateway.functions.executeRotation(new_group.address, n, d), bridge.relayer)
    assert bridge.gateway.functions.activeSigner().call() == new_group.address
    assert bridge.epoch() == 1
    transact(w3, bridge.mint_call(early, bridge.sign(early, new_group)), bridge.relayer)
    transact(w3, bridge.mint_call(in_flight, bridge.sign(in_flight)), bridge.relayer)  # old key, in retention
    advance(chain_a, RETENTION)
    late = {**order_for(3), "signerEpoch": 0}
    expect_revert(bridge.mint_call(late, bridge.sign(late)), bridge.relayer, bridge.gateway.abi, "UnauthorizedSigner")
    assert operators_id != thief_id


def test_large_mint_waits_and_guardian_vetoes(chain_a: Anvil) -> None:
    w3 = chain_a.w3
    bridge = Bridge(chain_a, Account.create())
    alice = w3.eth.accounts[2]
    big = bridge.order(b"\x61" * 32, 0, 60 * 10**8, alice)  # above the 50 BTC threshold
    big["deadline"] = now(chain_a) + 10 * LARGE_MINT_DELAY
    receipt = transact(w3, bridge.mint_call(big, bridge.sign(big)), bridge.relayer)
    (queued,) = bridge.gateway.events.MintQueued().process_receipt(receipt, errors=DISCARD)
    assert bridge.token.functions.totalSupply().call() == 0
    as_tuple = tuple(big[f["name"]] for f in MINT_ORDER_TYPES["MintOrder"])
    expect_revert(bridge.gateway.functions.executeMint(as_tuple), bridge.relayer, bridge.gateway.abi,
                  "ActionNotReady")
    advance(chain_a, LARGE_MINT_DELAY)
    transact(w3, bridge.gateway.functions.executeMint(as_tuple), bridge.relayer)
    assert bridge.token.functions.balanceOf(alice).call() == 60 * 10**8

    fake = bridge.order(b"\x62" * 32, 0, 70 * 10**8, alice)
    receipt = transact(w3, bridge.mint_call(fake, bridge.sign(fake)), bridge.relayer)
    (queued,) = bridge.gateway.events.MintQueued().process_receipt(receipt, errors=DISCARD)
    transact(w3, bridge.gateway.functions.veto(queued["args"]["orderDigest"]), bridge.guardian)
    advance(chain_a, LARGE_MINT_DELAY)
    fake_tuple = tuple(fake[f["name"]] for f in MINT_ORDER_TYPES["MintOrder"])
    expect_revert(bridge.gateway.functions.executeMint(fake_tuple), bridge.relayer, bridge.gateway.abi,
                  "ActionNotQueued")


def test_refund_is_tied_to_the_recorded_burn(chain_a: Anvil) -> None:
    w3 = chain_a.w3
    bridge = Bridge(chain_a, Account.create())
    alice = w3.eth.accounts[2]
    o = bridge.order(b"\x71" * 32, 0, 3 * 10**8, alice)
    transact(w3, bridge.mint_call(o, bridge.sign(o)), bridge.relayer)
    expect_revert(bridge.gateway.functions.burn(bridge.token.address, 10**8, b"\x00" * 20), alice,
                  bridge.gateway.abi, "InvalidDestination")
    receipt = transact(w3, bridge.gateway.functions.burn(bridge.token.address, 10**8,
                                                         b"bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"), alice)
    (burned,) = bridge.gateway.events.Burned().process_receipt(receipt, errors=DISCARD)
    burn_nonce = burned["args"]["burnNonce"]

    # the digest of a refund, computed independently by eth-account, is the contract's
    refund = bridge.refund(burn_nonce, alice, 10**8)
    signable = encode_typed_data(full_message={"types": {"EIP712Domain": EIP712_DOMAIN, **REFUND_TYPES},
                                               "primaryType": "RefundBurn",
                                               "domain": domain(chain_a, bridge.gateway), "message": refund})
    digest = Web3.keccak(b"\x19\x01" + signable.header + signable.body)
    refund_tuple = tuple(refund[f["name"]] for f in REFUND_TYPES["RefundBurn"])
    assert bridge.gateway.functions.refundDigest(refund_tuple).call() == digest

    # a refund of more than was burned, or to someone else, or of a burn that never was: refused
    for bad in ({**refund, "amount": 3 * 10**8}, {**refund, "burner": w3.eth.accounts[1]}):
        expect_revert(bridge.refund_call(bad, bridge.sign_refund(bad)), bridge.relayer, bridge.gateway.abi,
                      "BurnMismatch")
    never = {**refund, "burnNonce": burn_nonce + 5}
    expect_revert(bridge.refund_call(never, bridge.sign_refund(never)), bridge.relayer, bridge.gateway.abi,
                  "UnknownBurn")
    receipt = transact(w3, bridge.refund_call(refund, bridge.sign_refund(refund)), bridge.relayer)
    (refunded,) = bridge.gateway.events.Refunded().process_receipt(receipt, errors=DISCARD)
    assert refunded["args"]["burnId"] == burned["args"]["burnId"]
    assert refunded["args"]["orderDigest"] == digest
    assert bridge.token.functions.balanceOf(alice).call() == 3 * 10**8
    again = {**refund, "deadline": refund["deadline"] + 1}
    expect_revert(bridge.refund_call(again, bridge.sign_refund(again)), bridge.relayer, bridge.gateway.abi,
                  "BurnAlreadyRefunded")


def test_configuration_digest_and_delay(chain_a: Anvil) -> None:
    """A looser cap is queued under the digest the group signed (nested AssetConfig struct, eth-account's
    encoding), executes only after ADMIN_DELAY, and a tighter one applies at once."""
    w3 = chain_a.w3
    bridge = Bridge(chain_a, Account.create())
    looser = btc_config(mintCap=200 * 10**8)
    nonce = bridge.gateway.functions.adminNonce().call()
    deadline = now(chain_a) + 3600
    sig = bridge.sign_configure(looser, nonce, deadline)
    receipt = transact(w3, bridge.gateway.functions.configureAsset(
        bridge.token.address, config_tuple(looser), nonce, deadline, sig), bridge.relayer)
    (proposed,) = bridge.gateway.events.AssetConfigProposed().process_receipt(receipt, errors=DISCARD)
    message = {"asset": bridge.token.address, "config": looser, "nonce": nonce, "deadline": deadline}
    signable = encode_typed_data(full_message={"types": {"EIP712Domain": EIP712_DOMAIN, **CONFIGURE_TYPES},
                                               "primaryType": "ConfigureAsset",
                                               "domain": domain(chain_a, bridge.gateway), "message": message})
    assert proposed["args"]["actionId"] == Web3.keccak(b"\x19\x01" + signable.header + signable.body)
    execute = bridge.gateway.functions.executeConfigureAsset(bridge.token.address, config_tuple(looser), nonce,
                                                             deadline)
    expect_revert(execute, bridge.relayer, bridge.gateway.abi, "ActionNotReady")
    advance(chain_a, ADMIN_DELAY)
    transact(w3, execute, bridge.relayer)
    assert bridge.gateway.functions.assetConfig(bridge.token.address).call()[2] == 200 * 10**8
    receipt = bridge.configure(btc_config(mintCap=10**8))
    assert bridge.gateway.events.AssetConfigured().process_receipt(receipt, errors=DISCARD), "tightening applies"
    assert bridge.gateway.functions.assetConfig(bridge.token.address).call()[2] == 10**8


def test_deposit_id_vectors_match_the_contract(chain_a: Anvil) -> None:
    """contracts/test-vectors/deposit_ids.json: the ids the nodes must build, checked against the contract."""
    bridge = Bridge(chain_a, Account.create())
    doc = json.loads(TEST_VECTORS.read_text())
    assert len(doc["vectors"]) >= 5
    for v in doc["vectors"]:
        key = bytes.fromhex(v["chainKey"][2:])
        txid = bytes.fromhex(v["sourceTxId"][2:])
        assert chain_key(v["caip2"]) == key
        assert bridge.gateway.functions.chainKeyOf(v["caip2"]).call() == key
        assert deposit_id(v["caip2"], txid, v["vout"]).hex() == v["depositId"][2:]
        assert bridge.gateway.functions.depositIdOf(key, txid, v["vout"]).call().hex() == v["depositId"][2:]
    wrong = doc["wrong"]["byteReversedTxId"]
    assert wrong["depositId"] != doc["vectors"][0]["depositId"]
    for bad in doc["invalidCaip2"]:
        expect_revert(bridge.gateway.functions.chainKeyOf(bad), bridge.relayer, bridge.gateway.abi, "InvalidChainId")
