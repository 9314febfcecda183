"""Differential tests of ``signer.ethereum`` against eth-account signing with the same child key.

For seeded random EIP-1559 transactions, EIP-712 typed data and EIP-191 messages, the threshold
path (digest → DigestSigner → checks → placement) must give byte for byte what
``Account.sign_transaction`` / ``Account.sign_typed_data`` / ``Account.sign_message`` give with the
private key (RFC6979 nonces on both sides), and the signer must be recoverable from the result.
eth-account is also the encoder inside ``signer.ethereum``, so two checks do not lean on it: the
raw transaction is decoded with pyrlp and compared field by field with what was asked for, and
every EIP-712 digest is recomputed by a short reference written from the specification below -
which is what catches eth-account's departures from it (see ``test_eip712_refuses_what_eth_account_would_change``).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
import rlp
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_utils import to_checksum_address
from fp_local_signer import HighSSigner, LocalDigestSigner

from fusion_prime.protocol.addresses import keccak256
from fusion_prime.signer.bitcoin import HALF_ORDER
from fusion_prime.signer.ethereum import (
    Eip1559Transaction,
    EthereumError,
    address_at,
    domain_separator,
    hash_typed_data,
    personal_message_hash,
    sign_personal_message,
    sign_transaction,
    sign_typed_data,
)

PATH = "m/44/60/0/3"
SEEDS = range(12)
DOMAIN_FIELDS = [("name", "string"), ("version", "string"), ("chainId", "uint256"),
                 ("verifyingContract", "address"), ("salt", "bytes32")]


# ------------------------------------------------------------------------------ transactions


def random_transaction(rng: random.Random) -> dict[str, Any]:
    """eth-account's dict shape; ``to`` absent means a contract creation."""
    fee = rng.choice([0, 1, rng.randrange(2**64), rng.randrange(2**256)])
    tx: dict[str, Any] = {
        "type": 2, "chainId": rng.choice([1, 10, 31337, rng.randrange(1, 2**64)]),
        "nonce": rng.choice([0, 1, rng.randrange(2**64 - 1)]),
        "maxFeePerGas": fee, "maxPriorityFeePerGas": rng.randrange(fee + 1),
        "gas": rng.choice([21_000, rng.randrange(21_000, 2**64)]),
        "value": rng.choice([0, rng.randrange(2**256)]), "data": "0x" + rng.randbytes(rng.randrange(0, 80)).hex(),
        "accessList": [{"address": to_checksum_address(rng.randbytes(20)),
                        "storageKeys": ["0x" + rng.randbytes(32).hex() for _ in range(rng.randrange(3))]}
                       for _ in range(rng.randrange(3))],
    }
    if rng.random() < 0.8:
        tx["to"] = to_checksum_address(rng.randbytes(20))
    elif tx["data"] == "0x":
        tx["data"] = "0x00"  # a creation needs init code
    return tx


def ours(tx: dict[str, Any]) -> Eip1559Transaction:
    return Eip1559Transaction.create(
        chain_id=tx["chainId"], nonce=tx["nonce"], max_priority_fee_per_gas=tx["maxPriorityFeePerGas"],
        max_fee_per_gas=tx["maxFeePerGas"], gas=tx["gas"], to=tx.get("to"), value=tx["value"], data=tx["data"],
        access_list=tx["accessList"])


@pytest.mark.parametrize("seed", SEEDS)
def test_transactions_equal_eth_account_signing(seed: int, signer: LocalDigestSigner) -> None:
    rng = random.Random(seed)
    key = signer.private_key(PATH)
    for _ in range(4):
        fields = random_transaction(rng)
        tx = ours(fields)
        # The payload the bridge ships (pyrlp) and the hash eth-account signs describe one transaction.
        assert keccak256(tx.signing_payload()) == tx.signing_hash()
        signed = sign_transaction(tx, signer, PATH)
        theirs = Account.sign_transaction(fields, key)
        assert signed.raw == bytes(theirs.raw_transaction)
        assert signed.hash == bytes(theirs.hash) == keccak256(signed.raw)
        assert (signed.y_parity, signed.r, signed.s) == (theirs.v, theirs.r, theirs.s)
        assert signed.s <= HALF_ORDER
        assert Account.recover_transaction(signed.raw) == signed.sender == address_at(signer, PATH)
        # Decoded without eth-account: every field where EIP-1559 puts it, then (y_parity, r, s).
        assert signed.raw[0] == 2
        items = rlp.decode(signed.raw[1:])
        as_int = [int.from_bytes(items[i], "big") for i in (0, 1, 2, 3, 4, 6)]
        assert as_int == [fields["chainId"], fields["nonce"], fields["maxPriorityFeePerGas"], fields["maxFeePerGas"],
                          fields["gas"], fields["value"]]
        assert items[5] == (bytes.fromhex(fields["to"][2:]) if "to" in fields else b"")
        assert items[7] == bytes.fromhex(fields["data"][2:])
        assert items[8] == [[bytes.fromhex(e["address"][2:]), [bytes.fromhex(k[2:]) for k in e["storageKeys"]]]
                            for e in fields["accessList"]]
        assert [int.from_bytes(x, "big") for x in items[9:]] == [signed.y_parity, signed.r, signed.s]


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_a_high_s_answer_becomes_the_same_low_s_transaction(seed: int) -> None:
    rng = random.Random(seed)
    honest, high = LocalDigestSigner(), HighSSigner()
    tx = ours(random_transaction(rng))
    assert sign_transaction(tx, high, PATH) == sign_transaction(tx, honest, PATH)


# -------------------------------------------------------------------------------- EIP-712


def ref_encode_type(primary: str, types: dict[str, list[dict[str, str]]]) -> str:
    deps, todo = set(), [primary]
    while todo:
        name = todo.pop().split("[")[0]
        if name in types and name not in deps:
            deps.add(name)
            todo += [f["type"] for f in types[name]]
    order = [primary, *sorted(deps - {primary})]
    return "".join(f"{n}(" + ",".join(f"{f['type']} {f['name']}" for f in types[n]) + ")" for n in order)


def ref_encode_value(ftype: str, value: Any, types: dict[str, list[dict[str, str]]]) -> bytes:
    if ftype.endswith("]"):
        inner = ftype[: ftype.rindex("[")]
        return keccak256(b"".join(ref_encode_value(inner, v, types) for v in value))
    if ftype in types:
        return ref_hash_struct(ftype, value, types)
    if ftype == "string":
        return keccak256(value.encode())
    if ftype == "bytes":
        return keccak256(bytes.fromhex(value[2:]))
    if ftype.startswith("bytes"):
        return bytes.fromhex(value[2:]).ljust(32, b"\0")
    if ftype == "address":
        return bytes.fromhex(value[2:]).rjust(32, b"\0")
    if ftype == "bool":
        return int(value).to_bytes(32, "big")
    return (value % 2**256).to_bytes(32, "big")  # uintN, intN: two's complement


def ref_hash_struct(name: str, data: dict[str, Any], types: dict[str, list[dict[str, str]]]) -> bytes:
    encoded = b"".join(ref_encode_value(f["type"], data[f["name"]], types) for f in types[name])
    return keccak256(keccak256(ref_encode_type(name, types).encode()) + encoded)


def ref_digest(typed: dict[str, Any]) -> bytes:
    separator = ref_hash_struct("EIP712Domain", typed["domain"], typed["types"])
    if typed["primaryType"] == "EIP712Domain":
        return keccak256(b"\x19\x01" + separator)
    return keccak256(b"\x19\x01" + separator + ref_hash_struct(typed["primaryType"], typed["message"], typed["types"]))


def random_atomic(rng: random.Random) -> str:
    kind = rng.choice(["address", "bool", "string", "bytes", "bytesN", "uintN", "intN"])
    if kind == "bytesN":
        return f"bytes{rng.randrange(1, 33)}"
    if kind in ("uintN", "intN"):
        return f"{kind[:-1]}{8 * rng.randrange(1, 33)}"
    return kind


def random_value(rng: random.Random, ftype: str, types: dict[str, list[dict[str, str]]]) -> Any:
    if ftype.endswith("]"):
        inner, size = ftype[: ftype.rindex("[")], ftype[ftype.rindex("[") + 1 : -1]
        return [random_value(rng, inner, types) for _ in range(int(size) if size else rng.randrange(4))]
    if ftype in types:
        return {f["name"]: random_value(rng, f["type"], types) for f in types[ftype]}
    if ftype == "address":
        return to_checksum_address(rng.randbytes(20))
    if ftype == "bool":
        return rng.random() < 0.5
    if ftype == "string":
        return "".join(rng.choice("aZ09 -é€😀") for _ in range(rng.randrange(12)))
    if ftype == "bytes":
        return "0x" + rng.randbytes(rng.randrange(70)).hex()
    if ftype.startswith("bytes"):
        return "0x" + rng.randbytes(int(ftype[5:])).hex()
    bits = int(ftype[4:] if ftype.startswith("uint") else ftype[3:])
    low, high = (0, 2**bits - 1) if ftype.startswith("uint") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return rng.choice([low, high, 0, rng.randint(low, high)])


def random_typed_data(rng: random.Random) -> dict[str, Any]:
    """A chain of struct types S2 ← S1 ← S0 (primary), atomic and array fields, a random standard domain."""
    types: dict[str, list[dict[str, str]]] = {}
    below: str | None = None
    for level in reversed(range(rng.randrange(1, 4))):
        fields = []
        for i in range(rng.randrange(1, 5)):
            ftype = random_atomic(rng)
            if rng.random() < 0.3:
                ftype += rng.choice(["[]", f"[{rng.randrange(4)}]", "[][2]"])
            fields.append({"name": f"f{i}_{ftype.split('[')[0]}", "type": ftype})
        if below is not None:
            fields.insert(rng.randrange(len(fields) + 1), {"name": "child", "type": below + rng.choice(["", "[]"])})
        name = f"S{level}"
        types[name] = fields
        below = name
    domain_fields = [f for f in DOMAIN_FIELDS if rng.random() < 0.7]
    types["EIP712Domain"] = [{"name": n, "type": t} for n, t in domain_fields]
    domain = {n: random_value(rng, t, types) for n, t in domain_fields}
    return {"types": types, "primaryType": "S0", "domain": domain, "message": random_value(rng, "S0", types)}


@pytest.mark.parametrize("seed", SEEDS)
def test_typed_data_equals_the_specification_and_eth_account_signing(seed: int, signer: LocalDigestSigner) -> None:
    rng = random.Random(seed)
    key = signer.private_key(PATH)
    for _ in range(5):
        typed = random_typed_data(rng)
        before = copy.deepcopy(typed)
        digest = hash_typed_data(typed)
        assert typed == before  # the caller's object is not normalised in place
        assert digest == ref_digest(typed)
        assert domain_separator(typed) == ref_hash_struct("EIP712Domain", typed["domain"], typed["types"])
        sig = sign_typed_data(typed, signer, PATH)
        theirs = Account.sign_typed_data(key, full_message=copy.deepcopy(typed))
        assert sig == bytes(theirs.signature) and bytes(theirs.message_hash) == digest
        assert Account.recover_message(encode_typed_data(full_message=typed), signature=sig) == address_at(signer, PATH)
        # The specification signs what primaryType reaches; an unrelated declared type changes nothing
        # (eth-account alone would refuse it: it derives primaryType as the one unreferenced type).
        with_unused = copy.deepcopy(typed)
        with_unused["types"]["Unused"] = [{"name": "x", "type": "uint8"}]
        assert hash_typed_data(with_unused) == digest
        # Signing the domain alone (primaryType EIP712Domain), which eth-account has no call for.
        domain_only = {**copy.deepcopy(typed), "primaryType": "EIP712Domain", "message": {}}
        assert hash_typed_data(domain_only) == ref_digest(domain_only)


def test_eip712_refuses_what_eth_account_would_change(signer: LocalDigestSigner) -> None:
    """Inputs eth-account would sign *differently* from the specification (or coerce) never reach
    the signer: each is either refused here or shown to hash as the specification says."""
    rng = random.Random(99)
    typed = random_typed_data(rng)
    typed["types"]["EIP712Domain"] = [{"name": "chainId", "type": "uint256"}, {"name": "name", "type": "string"}]
    typed["domain"] = {"chainId": 5, "name": "reordered"}
    # eth-account hashes the domain in its own field order, not the declared one:
    assert bytes(encode_typed_data(full_message=copy.deepcopy(typed)).header) != \
        ref_hash_struct("EIP712Domain", typed["domain"], typed["types"])
    cases: list[tuple[dict[str, Any], str]] = [(typed, "standard fields")]
    custom = copy.deepcopy(typed)
    custom["types"]["EIP712Domain"] = [{"name": "name", "type": "string"}, {"name": "flavour", "type": "string"}]
    custom["domain"] = {"name": "x", "flavour": "y"}
    cases.append((custom, "standard fields"))
    narrow = copy.deepcopy(typed)
    narrow["types"]["EIP712Domain"] = [{"name": "chainId", "type": "uint64"}]
    narrow["domain"] = {"chainId": 5}
    cases.append((narrow, "standard fields"))
    base = {"types": {"M": [{"name": "tag", "type": "bytes4"}, {"name": "ok", "type": "bool"},
                            {"name": "text", "type": "string"}, {"name": "ids", "type": "uint8[2]"}]},
            "primaryType": "M", "domain": {"name": "x"},
            "message": {"tag": "0xdeadbeef", "ok": True, "text": "t", "ids": [1, 2]}}
    assert hash_typed_data(base) == ref_digest({**base, "types": {**base["types"], "EIP712Domain": [
        {"name": "name", "type": "string"}]}})
    for field, bad, why in [("tag", "0xdead", "needs 4 bytes"),  # eth-account pads it
                            ("ok", "no", "expected a bool"),  # eth-account reads it as True
                            ("text", 7, "expected a string"),  # eth-account encodes the integer's bytes
                            ("ids", [1, 2, 3], "exactly 2")]:  # eth-account does not count
        wrong = copy.deepcopy(base)
        wrong["message"][field] = bad
        cases.append((wrong, why))
    missing = copy.deepcopy(base)
    del missing["message"]["text"]  # eth-account encodes a missing string instead of refusing
    cases.append((missing, "missing fields"))
    looped = {"types": {"A": [{"name": "b", "type": "B"}], "B": [{"name": "a", "type": "A[]"}]},
              "primaryType": "A", "domain": {}, "message": {"b": {"a": []}}}
    cases.append((looped, "refers to A"))
    for bad_typed, why in cases:
        with pytest.raises(EthereumError, match=why):
            sign_typed_data(bad_typed, signer, PATH)
    assert signer.calls == []


# --------------------------------------------------------------------------------- EIP-191


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_personal_messages_equal_eth_account_signing(seed: int, signer: LocalDigestSigner) -> None:
    rng = random.Random(seed)
    key = signer.private_key(PATH)
    for message in [rng.randbytes(rng.randrange(200)), "".join(rng.choice("ab é€\n") for _ in range(30)), b"", ""]:
        signable = encode_defunct(text=message) if isinstance(message, str) else encode_defunct(primitive=message)
        data = message.encode() if isinstance(message, str) else message
        assert personal_message_hash(message) == keccak256(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode()
                                                           + data)
        sig = sign_personal_message(message, signer, PATH)
        assert sig == bytes(Account.sign_message(signable, key).signature)
        assert Account.recover_message(signable, signature=sig) == address_at(signer, PATH)
