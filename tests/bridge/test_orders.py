"""Mint orders: deposit ids against the contracts' test vectors, the EIP-712 digest against
eth-account, the canonical encoding, signatures and the value-aware confirmation rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_prime.bridge.orders import (
    MINT_ORDER_TYPEHASH,
    ChainParams,
    MintOrder,
    OrderError,
    chain_key,
    decode_signature,
    deposit_id,
    encode_signature,
    is_dust,
    minimum_deposit,
    recover_signer,
    required_confirmations,
)
from fusion_prime.protocol.curve import HALF_Q, Q

ROOT = Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "contracts" / "test-vectors" / "deposit_ids.json").read_text())
README = (ROOT / "contracts" / "README.md").read_text()

# The Gateway's typed data exactly as tests/contracts/fp_contracts.py writes it (copied, not imported:
# that module pulls in web3 and anvil helpers; the field list is the contract's struct).
EIP712_DOMAIN = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
MINT_ORDER_TYPES = {
    "MintOrder": [
        {"name": "asset", "type": "address"},
        {"name": "sourceChain", "type": "bytes32"},
        {"name": "sourceTxId", "type": "bytes32"},
        {"name": "vout", "type": "uint32"},
        {"name": "recipient", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "signerEpoch", "type": "uint32"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}
GATEWAY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
BTC_REGTEST = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"


def order(**overrides: Any) -> MintOrder:
    fields: dict[str, Any] = {
        "asset": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
        "source_chain": BTC_REGTEST,
        "source_txid": "ab" * 32,
        "vout": 1,
        "recipient": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "amount": 1_2345_6789,
        "signer_epoch": 0,
        "nonce": 7,
        "deadline": 1_800_000_000,
    }
    fields.update(overrides)
    return MintOrder(**fields)


def eth_account_digest(o: MintOrder, chain_id: int, gateway: str = GATEWAY) -> bytes:
    message = {
        "asset": o.asset, "sourceChain": keccak(text=o.source_chain), "sourceTxId": bytes.fromhex(o.source_txid),
        "vout": o.vout, "recipient": o.recipient, "amount": o.amount, "signerEpoch": o.signer_epoch,
        "nonce": o.nonce, "deadline": o.deadline,
    }
    full = {"types": {"EIP712Domain": EIP712_DOMAIN, **MINT_ORDER_TYPES}, "primaryType": "MintOrder",
            "domain": {"name": "Fusion Prime Gateway", "version": "1", "chainId": chain_id,
                       "verifyingContract": gateway},
            "message": message}
    signable = encode_typed_data(full_message=full)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


# ---- deposit ids


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["note"][:40])
def test_deposit_ids_match_the_contract_vectors(vector: dict[str, Any]) -> None:
    assert "0x" + chain_key(vector["caip2"]).hex() == vector["chainKey"]
    assert "0x" + deposit_id(vector["caip2"], vector["sourceTxId"], vector["vout"]).hex() == vector["depositId"]
    txid = vector["sourceTxId"][2:]
    assert deposit_id(vector["caip2"], bytes.fromhex(txid), vector["vout"]).hex() == vector["depositId"][2:]
    o = order(source_chain=vector["caip2"], source_txid=txid, vout=vector["vout"])
    assert "0x" + o.deposit_id.hex() == vector["depositId"]


def test_byte_reversed_txid_gives_the_wrong_id() -> None:
    wrong = VECTORS["wrong"]["byteReversedTxId"]
    right = VECTORS["vectors"][0]
    assert wrong["sourceTxId"][2:] == bytes.fromhex(right["sourceTxId"][2:])[::-1].hex()
    assert "0x" + deposit_id(wrong["caip2"], wrong["sourceTxId"], 0).hex() == wrong["depositId"]
    assert wrong["depositId"] != right["depositId"]


def test_deposit_id_is_the_abi_encoding() -> None:
    txid = bytes(range(32))
    expected = keccak(abi_encode(["bytes32", "bytes32", "uint32"], [keccak(text="eip155:1"), txid, 5]))
    assert deposit_id("eip155:1", txid, 5) == expected


@pytest.mark.parametrize(
    "caip2",
    ["eip155:01", "eip155:0", "eip155:", "eip155", ":1", "EIP155:1", "eip155:1a", "eip155:-1",
     "bip122:0F9188F13CB7B2C71F2A335E3A4FC328", "bip122:0f9188f1", "bip122:0f9188f13cb7b2c71f2a335e3a4fc3280",
     "ab:1", "abcdefghi:1", "eip155:1 ", "eip155:" + "1" * 33, "cosmos:hub/4"],
)
def test_non_canonical_chain_ids_are_refused(caip2: str) -> None:
    with pytest.raises(OrderError):
        chain_key(caip2)


def test_other_namespaces_follow_the_contract_rules() -> None:
    assert chain_key("cosmos:cosmoshub-4") == keccak(text="cosmos:cosmoshub-4")
    with pytest.raises(OrderError):
        order(source_chain="cosmos:cosmoshub-4")  # the bridge mints only from bip122/eip155


# ---- EIP-712


def test_typehash_is_the_one_the_readme_pins() -> None:
    assert "0x" + MINT_ORDER_TYPEHASH.hex() in README


@pytest.mark.parametrize("chain_id", [1, 31_337, 31_338])
def test_digest_matches_eth_account(chain_id: int) -> None:
    o = order()
    assert o.digest(GATEWAY, chain_id) == eth_account_digest(o, chain_id)


@settings(max_examples=60, deadline=None)
@given(
    asset=st.binary(min_size=20, max_size=20).filter(any),
    txid=st.binary(min_size=32, max_size=32),
    vout=st.integers(0, 2**32 - 1),
    recipient=st.binary(min_size=20, max_size=20).filter(any),
    amount=st.integers(1, 2**256 - 1),
    epoch=st.integers(0, 2**32 - 1),
    nonce=st.integers(0, 2**256 - 1),
    deadline=st.integers(0, 2**256 - 1),
    chain=st.sampled_from([BTC_REGTEST, "eip155:1", "eip155:31337", "bip122:000000000019d6689c085ae165831e93"]),
    chain_id=st.integers(1, 2**64),
    gateway=st.binary(min_size=20, max_size=20),
)
def test_digest_matches_eth_account_for_any_order(asset: bytes, txid: bytes, vout: int, recipient: bytes,
                                                  amount: int, epoch: int, nonce: int, deadline: int,
                                                  chain: str, chain_id: int, gateway: bytes) -> None:
    o = MintOrder.create(asset=asset, source_chain=chain, source_txid=txid, vout=vout, recipient=recipient,
                         amount=amount, signer_epoch=epoch, nonce=nonce, deadline=deadline)
    gw = "0x" + gateway.hex()
    assert o.digest(gw, chain_id) == eth_account_digest(o, chain_id, to_checksum_address(gw))
    assert MintOrder.from_bytes(o.to_bytes()) == o
    assert MintOrder.from_dict(json.loads(json.dumps(o.to_dict()))) == o


def test_domain_binds_chain_and_contract() -> None:
    o = order()
    digests = {o.digest(GATEWAY, 31_338), o.digest(GATEWAY, 31_337),
               o.digest("0x" + "11" * 20, 31_338)}
    assert len(digests) == 3


def test_signature_by_eth_account_recovers() -> None:
    acct = Account.from_key(b"\x01" * 32)
    o = order()
    full = {"types": {"EIP712Domain": EIP712_DOMAIN, **MINT_ORDER_TYPES}, "primaryType": "MintOrder",
            "domain": {"name": "Fusion Prime Gateway", "version": "1", "chainId": 31_338,
                       "verifyingContract": GATEWAY},
            "message": {"asset": o.asset, "sourceChain": keccak(text=o.source_chain),
                        "sourceTxId": bytes.fromhex(o.source_txid), "vout": o.vout, "recipient": o.recipient,
                        "amount": o.amount, "signerEpoch": o.signer_epoch, "nonce": o.nonce,
                        "deadline": o.deadline}}
    sig = bytes(acct.sign_message(encode_typed_data(full_message=full)).signature)
    assert recover_signer(o.digest(GATEWAY, 31_338), sig) == acct.address


# ---- canonical encoding


def test_encoding_round_trip_and_layout() -> None:
    o = order()
    data = o.to_bytes()
    assert data[0] == 1 and len(data) == 1 + 20 + 1 + len(BTC_REGTEST) + 32 + 4 + 20 + 32 + 4 + 32 + 32
    assert MintOrder.from_bytes(data) == o


def test_encoding_refuses_non_canonical_input() -> None:
    data = order().to_bytes()
    bad = [
        b"",
        data[:-1],
        data + b"\x00",
        b"\x02" + data[1:],
        data[:1] + bytes(20) + data[21:],  # zero asset
    ]
    # chain id with a leading zero, same length prefix patched
    chain = b"eip155:01"
    patched = data[:21] + bytes([len(chain)]) + chain + data[22 + len(BTC_REGTEST):]
    bad.append(patched)
    # length prefix that lies
    bad.append(data[:21] + bytes([data[21] + 1]) + data[22:])
    # upper-case bip122 reference
    up = BTC_REGTEST.upper().replace("BIP122", "bip122").encode()
    bad.append(data[:22] + up + data[22 + len(up):])
    # zero amount
    amount_at = 22 + len(BTC_REGTEST) + 32 + 4 + 20
    bad.append(data[:amount_at] + bytes(32) + data[amount_at + 32:])
    # zero recipient
    rec_at = 22 + len(BTC_REGTEST) + 32 + 4
    bad.append(data[:rec_at] + bytes(20) + data[rec_at + 20:])
    for item in bad:
        with pytest.raises(OrderError):
            MintOrder.from_bytes(item)


def test_fields_are_stored_in_one_spelling() -> None:
    with pytest.raises(OrderError):
        order(asset="0xe7f1725e7734ce288f8367e1bb143e90bb3f0512")  # not EIP-55
    with pytest.raises(OrderError):
        order(source_txid="AB" * 32)
    with pytest.raises(OrderError):
        order(source_txid="0x" + "ab" * 32)
    with pytest.raises(OrderError):
        order(vout=2**32)
    with pytest.raises(OrderError):
        order(amount=0)
    with pytest.raises(OrderError):
        order(recipient="0x0000000000000000000000000000000000000000")
    with pytest.raises(OrderError):
        order(nonce=True)
    loose = MintOrder.create(asset="0xe7f1725e7734ce288f8367e1bb143e90bb3f0512", source_chain=BTC_REGTEST,
                             source_txid="0x" + "AB" * 32, vout=1,
                             recipient="0x70997970c51812dc3a010c7d01b50e0d17dc79c8", amount=1_2345_6789,
                             signer_epoch=0, nonce=7, deadline=1_800_000_000)
    assert loose == order()


def test_same_deposit_terms() -> None:
    o = order()
    assert o.same_deposit_terms(order(nonce=8, deadline=1, signer_epoch=3))
    assert not o.same_deposit_terms(order(amount=o.amount + 1))
    assert not o.same_deposit_terms(order(vout=2))


# ---- signatures


def test_signature_encoding_normalises_low_s() -> None:
    key = PrivateKey(b"\x02" * 32)
    digest = keccak(b"order")
    raw = key.sign_recoverable(digest, hasher=None)
    r, s, rec = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    address = "0x" + keccak(key.public_key.format(compressed=False)[1:])[-20:].hex()
    for s_, rec_ in ((s, rec), (Q - s, rec ^ 1)):  # the same signature given high or low
        sig = encode_signature(r, s_, rec_)
        assert int.from_bytes(sig[32:64], "big") <= HALF_Q and sig[64] in (27, 28)
        assert recover_signer(digest, sig).lower() == address
        assert decode_signature(sig)[:2] == (r, min(s, Q - s))


def test_signature_decoding_is_strict() -> None:
    good = encode_signature(5, 7, 0)
    for bad in (good[:-1], good[:64] + b"\x00", good[:64] + b"\x1d",
                good[:32] + (Q - 7).to_bytes(32, "big") + good[64:], bytes(32) + good[32:]):
        with pytest.raises(OrderError):
            decode_signature(bad)
    with pytest.raises(OrderError):
        encode_signature(5, 7, 2)  # R.x >= n cannot be expressed in v


# ---- confirmations and dust

BTC = ChainParams(min_confirmations=2, value_per_block=50_0000_0000, max_confirmations=12, dust_limit=294,
                  sweep_cost=1_000)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 2), (1, 2), (50_0000_0000, 2), (2 * 50_0000_0000, 2), (2 * 50_0000_0000 + 1, 3),
     (7 * 50_0000_0000, 7), (1_000 * 50_0000_0000, 12)],
)
def test_value_aware_confirmations(value: int, expected: int) -> None:
    assert required_confirmations(value, BTC) == expected


def test_confirmations_use_exact_integer_ceiling() -> None:
    eth = ChainParams(min_confirmations=1, value_per_block=2 * 10**18, max_confirmations=10**12)
    value = 10**30 + 1  # float division would round this
    assert required_confirmations(value, eth) == 5 * 10**11 + 1


def test_dust() -> None:
    assert minimum_deposit(BTC) == 1_001
    assert is_dust(0, BTC) and is_dust(293, BTC) and is_dust(1_000, BTC)
    assert not is_dust(1_001, BTC)
    no_sweep = ChainParams(min_confirmations=1, value_per_block=1, max_confirmations=1, dust_limit=294)
    assert is_dust(293, no_sweep) and not is_dust(294, no_sweep)


def test_chain_params_validation() -> None:
    for kwargs in ({"min_confirmations": 0, "value_per_block": 1, "max_confirmations": 1},
                   {"min_confirmations": 3, "value_per_block": 1, "max_confirmations": 2},
                   {"min_confirmations": 1, "value_per_block": 0, "max_confirmations": 2}):
        with pytest.raises(OrderError):
            ChainParams(**kwargs)
    assert ChainParams.from_dict(BTC.to_dict()) == BTC


# ---- refunds


def test_refund_digest_matches_eth_account_and_round_trips() -> None:
    from fusion_prime.bridge.orders import RefundOrder, burn_id

    r = RefundOrder(burn_nonce=9, asset="0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
                    burner="0x70997970C51812dc3A010C7d01b50e0d17dc79C8", amount=5_000, signer_epoch=2,
                    deadline=1_800_000_000)
    types = {"EIP712Domain": EIP712_DOMAIN,
             "RefundBurn": [{"name": "burnNonce", "type": "uint256"}, {"name": "asset", "type": "address"},
                            {"name": "burner", "type": "address"}, {"name": "amount", "type": "uint256"},
                            {"name": "signerEpoch", "type": "uint32"}, {"name": "deadline", "type": "uint256"}]}
    full = {"types": types, "primaryType": "RefundBurn",
            "domain": {"name": "Fusion Prime Gateway", "version": "1", "chainId": 31338, "verifyingContract": GATEWAY},
            "message": {"burnNonce": 9, "asset": r.asset, "burner": r.burner, "amount": 5_000, "signerEpoch": 2,
                        "deadline": 1_800_000_000}}
    signable = encode_typed_data(full_message=full)
    assert r.digest(GATEWAY, 31338) == keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert RefundOrder.from_bytes(r.to_bytes()) == r
    with pytest.raises(OrderError):
        RefundOrder.from_bytes(r.to_bytes() + b"\x00")
    # the burn id is abi.encode(chainId, gateway, nonce), hashed
    expected = keccak(abi_encode(["uint256", "address", "uint256"], [31338, GATEWAY, 9]))
    assert burn_id(31338, GATEWAY, 9) == expected
