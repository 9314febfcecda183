"""EIP-1559 transactions and EIP-712 typed data signed through the digest-signing interface,
accepted by a real anvil and verified independently with eth-account."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_account.typed_transactions import TypedTransaction
from fp_local_signer import BadRecoverySigner, HighSSigner, LocalDigestSigner, WrongKeySigner
from web3 import Web3

from fusion_prime.protocol.addresses import keccak256
from fusion_prime.signer.bitcoin import HALF_ORDER, CallableSigner, RemoteSignatureError
from fusion_prime.signer.ethereum import (
    Eip1559Transaction,
    EthereumError,
    address_at,
    domain_separator,
    fill_transaction,
    hash_typed_data,
    parse_address,
    sign_personal_message,
    sign_transaction,
    sign_typed_data,
)

PATH = "m/44/60/0/7"
RECIPIENT = "0x000000000000000000000000000000000000bEEF"

MAIL = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
            {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"},
        ],
        "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
        "Mail": [{"name": "from", "type": "Person"}, {"name": "to", "type": "Person"},
                 {"name": "contents", "type": "string"}],
    },
    "primaryType": "Mail",
    "domain": {"name": "Ether Mail", "version": "1", "chainId": 1,
               "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"},
    "message": {"from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
                "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
                "contents": "Hello, Bob!"},
}

ORDER = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"}, {"name": "chainId", "type": "uint256"},
            {"name": "verifyingContract", "type": "address"}, {"name": "salt", "type": "bytes32"},
        ],
        "Leg": [{"name": "asset", "type": "address"}, {"name": "amount", "type": "int128"},
                {"name": "memo", "type": "bytes"}],
        "Order": [{"name": "legs", "type": "Leg[]"}, {"name": "ids", "type": "uint64[3]"},
                  {"name": "tag", "type": "bytes4"}, {"name": "final", "type": "bool"},
                  {"name": "notes", "type": "string[]"}],
    },
    "primaryType": "Order",
    "domain": {"name": "Fusion Prime DvP", "chainId": 31337,
               "verifyingContract": "0x5FbDB2315678afecb367f032d93F642f64180aa3", "salt": "0x" + "ab" * 32},
    "message": {
        "legs": [{"asset": "0x000000000000000000000000000000000000dEaD", "amount": -5, "memo": "0x0102"},
                 {"asset": "0x000000000000000000000000000000000000bEEF", "amount": 2**100, "memo": "0x"}],
        "ids": [1, 2, 2**64 - 1], "tag": "0xdeadbeef", "final": True, "notes": ["a", "é"],
    },
}


def _tx(**over) -> Eip1559Transaction:
    fields = dict(chain_id=31337, nonce=3, max_priority_fee_per_gas=10**9, max_fee_per_gas=3 * 10**9,
                  gas=60_000, to=RECIPIENT, value=12345, data=b"\x01\x02",
                  access_list=[(RECIPIENT, ["0x" + "00" * 31 + "01"])])
    fields.update(over)
    return Eip1559Transaction.create(**fields)


def test_signing_hash_and_raw_match_eth_account(signer: LocalDigestSigner) -> None:
    tx = _tx()
    ref = TypedTransaction.from_dict({
        "type": 2, "chainId": 31337, "nonce": 3, "maxPriorityFeePerGas": 10**9, "maxFeePerGas": 3 * 10**9,
        "gas": 60_000, "to": RECIPIENT, "value": 12345, "data": "0x0102",
        "accessList": [{"address": RECIPIENT, "storageKeys": ["0x" + "00" * 31 + "01"]}],
    })
    assert tx.signing_hash() == ref.hash()
    signed = sign_transaction(tx, CallableSigner(signer.sign_digest, signer.public_key), PATH)
    assert Account.recover_transaction(signed.raw) == signed.sender == address_at(signer, PATH)
    # eth-account signing with the same child key gives the same bytes (RFC6979 on both sides).
    theirs = Account.sign_transaction(ref.as_dict(), signer.private_key(PATH))
    assert theirs.raw_transaction == signed.raw and bytes(theirs.hash) == signed.hash == keccak256(signed.raw)
    assert signer.calls == [(tx.signing_hash(), PATH)]


def test_signatures_from_the_signer_are_checked() -> None:
    tx = _tx()
    with pytest.raises(RemoteSignatureError, match="does not verify"):
        sign_transaction(tx, WrongKeySigner(), PATH)
    with pytest.raises(RemoteSignatureError, match="recovery id"):
        sign_transaction(tx, BadRecoverySigner(), PATH)
    # High-S is the same signature; it is normalised (EIP-2) and still recovers the sender.
    signed = sign_transaction(tx, HighSSigner(), PATH)
    assert signed.s <= HALF_ORDER
    assert Account.recover_transaction(signed.raw) == signed.sender


def test_field_validation() -> None:
    for bad, match in [
        (dict(max_priority_fee_per_gas=5 * 10**9), "exceeds max_fee"),
        (dict(gas=20_000), "21000"),
        (dict(nonce=2**64 - 1), "nonce"),
        (dict(chain_id=0), "chain_id"),
        (dict(value=-1), "value"),
        (dict(value=True), "integer"),
        (dict(to="0x000000000000000000000000000000000000BeEF"), "checksum"),
        (dict(to="0x1234"), "20-byte"),
        (dict(to=None, data=b""), "init code"),
        (dict(data="0xzz"), "hex"),
        (dict(access_list=[(RECIPIENT, ["0x01"])]), "32 bytes"),
    ]:
        with pytest.raises(EthereumError, match=match):
            _tx(**bad)
    assert parse_address(RECIPIENT.lower()) == parse_address(RECIPIENT)


def test_eip1559_transfers_on_anvil(anvil, signer: LocalDigestSigner) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    sender = address_at(signer, PATH)
    funder = w3.eth.accounts[0]
    w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": funder, "to": sender, "value": 10**18}))
    assert w3.eth.get_balance(sender) == 10**18
    before_recipient = w3.eth.get_balance(RECIPIENT)

    value = 123_456_789_000
    tx = fill_transaction(w3, sender, to=RECIPIENT, value=value)
    assert tx.chain_id == 31_337 and tx.nonce == 0 and tx.gas == 21_000
    signed = sign_transaction(tx, signer, PATH)
    assert Account.recover_transaction(signed.raw) == sender
    assert w3.eth.send_raw_transaction(signed.raw) == signed.hash
    receipt = w3.eth.wait_for_transaction_receipt(signed.hash)
    assert receipt["status"] == 1 and receipt["from"] == sender and receipt["type"] == 2
    cost = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w3.eth.get_balance(RECIPIENT) == before_recipient + value
    assert w3.eth.get_balance(sender) == 10**18 - value - cost

    # Calldata and an access list, then a contract creation (to=None): nonce 1 and 2.
    slot = "0x" + "00" * 31 + "07"
    tx2 = fill_transaction(w3, sender, to=RECIPIENT, value=1, data=b"fusion", access_list=[(RECIPIENT, [slot])])
    assert tx2.nonce == 1 and tx2.gas > 21_000
    r2 = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(sign_transaction(tx2, signer, PATH).raw))
    assert r2["status"] == 1
    init = bytes.fromhex("602a60005260206000f3")  # returns 32 bytes of runtime code
    tx3 = fill_transaction(w3, sender, to=None, data=init)
    r3 = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(sign_transaction(tx3, signer, PATH).raw))
    assert r3["status"] == 1 and r3["contractAddress"] is not None
    assert len(w3.eth.get_code(r3["contractAddress"])) == 32
    assert w3.eth.get_transaction_count(sender) == 3

    # A transaction signed for another chain id is refused by the node.
    wrong_chain = sign_transaction(_tx(chain_id=1, nonce=3, to=RECIPIENT, data=b"", access_list=[]), signer, PATH)
    with pytest.raises(Exception, match=r"(?i)chain"):
        w3.eth.send_raw_transaction(wrong_chain.raw)


def test_eip712_spec_vector_and_recovery(signer: LocalDigestSigner) -> None:
    assert domain_separator(MAIL).hex() == "f2cee375fa42b42143804025fc449deafd50cc031ca257e0b194a650a912090f"
    assert hash_typed_data(MAIL).hex() == "be609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2"
    for typed in (MAIL, ORDER):
        sig = sign_typed_data(typed, signer, PATH)
        assert len(sig) == 65 and sig[64] in (27, 28)
        recovered = Account.recover_message(encode_typed_data(full_message=typed), signature=sig)
        assert recovered == address_at(signer, PATH)
    # Domain-only signing (primaryType EIP712Domain) and an inferred EIP712Domain type.
    inferred = {k: v for k, v in MAIL.items() if k != "types"}
    inferred["types"] = {k: v for k, v in MAIL["types"].items() if k != "EIP712Domain"}
    assert hash_typed_data(inferred) == hash_typed_data(MAIL)


def test_eip712_rejects_malformed(signer: LocalDigestSigner) -> None:
    import copy

    cases = []
    m = copy.deepcopy(MAIL)
    m["message"]["contents"] = 5
    cases.append((m, "expected a string"))
    m = copy.deepcopy(MAIL)
    del m["message"]["to"]
    cases.append((m, "missing fields"))
    m = copy.deepcopy(MAIL)
    m["message"]["extra"] = 1
    cases.append((m, "not in type"))
    m = copy.deepcopy(MAIL)
    m["types"]["Mail"][2]["type"] = "Strin"
    cases.append((m, "unknown type"))
    o = copy.deepcopy(ORDER)
    o["message"]["ids"] = [1, 2]
    cases.append((o, "exactly 3"))
    o = copy.deepcopy(ORDER)
    o["message"]["legs"][0]["amount"] = 2**127
    cases.append((o, "out of range for int128"))
    o = copy.deepcopy(ORDER)
    o["message"]["tag"] = "0xdead"
    cases.append((o, "needs 4 bytes"))
    cases.append(({"types": {}, "domain": {}}, "no 'primaryType'"))
    for typed, match in cases:
        with pytest.raises(EthereumError, match=match):
            sign_typed_data(typed, signer, PATH)
    assert signer.calls == []  # nothing malformed ever reaches the signer


def test_personal_message(signer: LocalDigestSigner) -> None:
    sig = sign_personal_message("custody attestation #1", signer, PATH)
    recovered = Account.recover_message(encode_defunct(text="custody attestation #1"), signature=sig)
    assert recovered == address_at(signer, PATH)
