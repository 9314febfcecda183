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
from eth_account.signers.local import LocalAccount
from fp_contracts import (
    EIP712_DOMAIN,
    Anvil,
    deploy,
    error_selector,
    fund_and_impersonate,
    revert_selector,
    sign_typed,
    transact,
)
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

ROTATION_DELAY = 3600
RETENTION = 600
CAP = 100 * 10**8
WINDOW = 86_400
MIN_BURN = 10_000
# Source chain id of Bitcoin mainnet: keccak256 of its CAIP-2 id (see contracts/README.md).
BTC_CHAIN = int.from_bytes(Web3.keccak(text="bip122:000000000019d6689c085ae165831e93"), "big")

MINT_ORDER_TYPES = {
    "MintOrder": [
        {"name": "asset", "type": "address"},
        {"name": "sourceChainId", "type": "uint256"},
        {"name": "sourceTxId", "type": "bytes32"},
        {"name": "vout", "type": "uint32"},
        {"name": "recipient", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}


def domain(chain: Anvil, gateway: Contract) -> dict[str, Any]:
    return {"name": "Fusion Prime Gateway", "version": "1", "chainId": chain.chain_id,
            "verifyingContract": gateway.address}


def now(chain: Anvil) -> int:
    return chain.w3.eth.get_block("latest")["timestamp"]


def admin_sign(key: LocalAccount, chain: Anvil, gateway: Contract, primary: str,
               fields: list[tuple[str, str, Any]]) -> bytes:
    types = {primary: [{"name": n, "type": t} for n, t, _ in fields]}
    return sign_typed(key, domain(chain, gateway), types, primary, {n: v for n, _, v in fields})


class Bridge:
    """One deployment: gateway + fpBTC configured, group key held locally."""

    def __init__(self, chain: Anvil, group: LocalAccount, deployer: str | None = None) -> None:
        w3 = chain.w3
        self.chain = chain
        self.group = group
        self.deployer = deployer or w3.eth.accounts[0]
        self.relayer = w3.eth.accounts[1]
        self.guardian = w3.eth.accounts[3]
        self.gateway = deploy(w3, "Gateway", self.deployer, group.address, self.guardian, ROTATION_DELAY, RETENTION)
        self.token = deploy(w3, "WrappedAsset", self.deployer, "Fusion Prime BTC", "fpBTC", 8, self.gateway.address)
        self.admin("ConfigureAsset", [("asset", "address", self.token.address), ("windowCap", "uint256", CAP),
                                      ("windowLength", "uint256", WINDOW), ("minBurn", "uint256", MIN_BURN)],
                   lambda n, d, s: self.gateway.functions.configureAsset(
                       self.token.address, CAP, WINDOW, MIN_BURN, n, d, s))

    def admin(self, primary: str, fields: list[tuple[str, str, Any]], call: Any, key: LocalAccount | None = None):
        nonce = self.gateway.functions.adminNonce().call()
        deadline = now(self.chain) + 3600
        sig = admin_sign(key or self.group, self.chain, self.gateway, primary,
                         [*fields, ("nonce", "uint256", nonce), ("deadline", "uint256", deadline)])
        return transact(self.chain.w3, call(nonce, deadline, sig), self.relayer)

    def order(self, txid: bytes, vout: int, amount: int, recipient: str) -> dict[str, Any]:
        return {"asset": self.token.address, "sourceChainId": BTC_CHAIN, "sourceTxId": txid, "vout": vout,
                "recipient": recipient, "amount": amount, "nonce": int.from_bytes(txid[:8], "big") + vout,
                "deadline": now(self.chain) + 3600}

    def sign(self, order: dict[str, Any], key: LocalAccount | None = None) -> bytes:
        return sign_typed(key or self.group, domain(self.chain, self.gateway), MINT_ORDER_TYPES, "MintOrder", order)

    def mint_call(self, order: dict[str, Any], sig: bytes) -> Any:
        as_tuple = tuple(order[f["name"]] for f in MINT_ORDER_TYPES["MintOrder"])
        return self.gateway.functions.mint(as_tuple, sig)


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
