"""Ethereum transactions and typed data signed by a remote (threshold) key.

The encodings are eth-account's: the EIP-1559 signing hash and the signed raw transaction come
from :class:`eth_account.typed_transactions.TypedTransaction`, the EIP-712 and EIP-191 digests
from :mod:`eth_account.messages`. What stays here is what a *threshold* signer needs around them
and eth-account cannot give, because it only signs with a private key it holds:

* strict input validation with one clear error (:class:`EthereumError`) before anything reaches
  the signer — eth-account coerces (a short ``bytes4``, a truthy ``bool``) where a custody network
  must refuse, and a few of its EIP-712 shortcuts differ from the specification, so typed data
  outside what it encodes exactly is refused rather than signed differently;
* asking the :class:`~fusion_prime.signer.bitcoin.DigestSigner` for the digest's signature,
  checking it (right key, low-S, recovery id) and placing (y_parity, r, s) into the raw
  transaction or the 65-byte ``r || s || v``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rlp
from eth_account.messages import SignableMessage, _hash_eip191_message, encode_defunct, encode_typed_data
from eth_account.typed_transactions import TypedTransaction
from eth_utils import to_checksum_address as _eip55

from fusion_prime.protocol.addresses import ethereum_address, keccak256
from fusion_prime.protocol.curve import Point

from .bitcoin import DigestSigner, RemoteSignatureError, checked_remote_signature

UINT256_MAX = 2**256 - 1
UINT64_MAX = 2**64 - 1
TX_TYPE_EIP1559 = 0x02


class EthereumError(ValueError):
    """A transaction field, address or typed-data value is malformed."""


# ------------------------------------------------------------------------------------ addresses


def to_checksum_address(raw: bytes) -> str:
    """EIP-55 mixed-case checksum encoding of a 20-byte address."""
    if not isinstance(raw, bytes | bytearray) or len(raw) != 20:
        raise EthereumError("address must be 20 bytes")
    return _eip55(bytes(raw))


def parse_address(value: str | bytes, what: str = "address") -> bytes:
    """20 address bytes from ``0x``-hex (EIP-55 checksum enforced when mixed-case) or raw bytes."""
    if isinstance(value, bytes | bytearray):
        if len(value) != 20:
            raise EthereumError(f"{what} must be 20 bytes, got {len(value)}")
        return bytes(value)
    if not isinstance(value, str) or not re.fullmatch(r"0[xX][0-9a-fA-F]{40}", value):
        raise EthereumError(f"{what} {value!r} is not a 0x-prefixed 20-byte hex address")
    raw = bytes.fromhex(value[2:])
    body = value[2:]
    if body != body.lower() and body != body.upper() and _eip55(raw) != "0x" + body:
        raise EthereumError(f"{what} {value} has an invalid EIP-55 checksum")
    return raw


def _hex_or_bytes(value: str | bytes, what: str) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        text = value[2:] if value[:2] in ("0x", "0X") else value
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise EthereumError(f"{what} is not hex") from None
    raise EthereumError(f"{what} must be bytes or a hex string")


def _uint(value: Any, what: str, limit: int = UINT256_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EthereumError(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= limit:
        raise EthereumError(f"{what} {value} out of range [0, {limit}]")
    return value


# ----------------------------------------------------------------------------------- EIP-1559


@dataclass(frozen=True)
class AccessListEntry:
    address: bytes
    storage_keys: tuple[bytes, ...] = ()


def _parse_access_list(items: Sequence[Any]) -> tuple[AccessListEntry, ...]:
    out = []
    for n, item in enumerate(items):
        if isinstance(item, AccessListEntry):
            out.append(item)
            continue
        if isinstance(item, Mapping):
            addr, keys = item.get("address"), item.get("storageKeys", item.get("storage_keys", ()))
        elif isinstance(item, Sequence) and not isinstance(item, str | bytes) and len(item) == 2:
            addr, keys = item
        else:
            raise EthereumError(f"access list entry {n} must be (address, storage keys)")
        if addr is None:
            raise EthereumError(f"access list entry {n} has no address")
        slots = tuple(_hex_or_bytes(k, f"access list entry {n} storage key") for k in keys)
        if any(len(s) != 32 for s in slots):
            raise EthereumError(f"access list entry {n}: storage keys must be 32 bytes")
        out.append(AccessListEntry(parse_address(addr, f"access list entry {n} address"), slots))
    return tuple(out)


@dataclass(frozen=True)
class Eip1559Transaction:
    """An unsigned type-2 transaction; construct with :meth:`create` to validate and coerce inputs."""

    chain_id: int
    nonce: int
    max_priority_fee_per_gas: int
    max_fee_per_gas: int
    gas: int
    to: bytes | None  # None: contract creation
    value: int = 0
    data: bytes = b""
    access_list: tuple[AccessListEntry, ...] = field(default_factory=tuple)

    @classmethod
    def create(cls, *, chain_id: int, nonce: int, max_priority_fee_per_gas: int, max_fee_per_gas: int,
               gas: int, to: str | bytes | None, value: int = 0, data: str | bytes = b"",
               access_list: Sequence[Any] = ()) -> Eip1559Transaction:
        tx = cls(chain_id, nonce, max_priority_fee_per_gas, max_fee_per_gas, gas,
                 None if to is None else parse_address(to, "to"), value, _hex_or_bytes(data, "data"),
                 _parse_access_list(access_list))
        tx.validate()
        return tx

    def validate(self) -> None:
        """Refuse what a node would reject anyway, before a threshold signature is spent on it."""
        if _uint(self.chain_id, "chain_id", UINT64_MAX) == 0:
            raise EthereumError("chain_id must be positive")
        _uint(self.nonce, "nonce", UINT64_MAX - 1)  # EIP-2681
        _uint(self.max_priority_fee_per_gas, "max_priority_fee_per_gas")
        _uint(self.max_fee_per_gas, "max_fee_per_gas")
        if self.max_priority_fee_per_gas > self.max_fee_per_gas:
            raise EthereumError("max_priority_fee_per_gas exceeds max_fee_per_gas")
        if _uint(self.gas, "gas", UINT64_MAX) < 21_000:
            raise EthereumError("gas below the 21000 intrinsic minimum")
        _uint(self.value, "value")
        if self.to is not None and (not isinstance(self.to, bytes) or len(self.to) != 20):
            raise EthereumError("to must be 20 bytes or None")
        if not isinstance(self.data, bytes):
            raise EthereumError("data must be bytes")
        if self.to is None and not self.data:
            raise EthereumError("a contract creation needs init code in data")

    def as_dict(self) -> dict[str, Any]:
        """The transaction in eth-account's (JSON-RPC) shape, without a signature."""
        fields: dict[str, Any] = {
            "type": TX_TYPE_EIP1559, "chainId": self.chain_id, "nonce": self.nonce,
            "maxPriorityFeePerGas": self.max_priority_fee_per_gas, "maxFeePerGas": self.max_fee_per_gas,
            "gas": self.gas, "value": self.value, "data": self.data,
            "accessList": [{"address": _eip55(e.address), "storageKeys": ["0x" + k.hex() for k in e.storage_keys]}
                           for e in self.access_list],
        }
        if self.to is not None:
            fields["to"] = self.to
        return fields

    def signing_payload(self) -> bytes:
        """``0x02 || rlp([chain_id, ..., access_list])``: what the bridge ships to co-signers.

        eth-account keeps its unsigned serialiser private, so this one list goes through pyrlp (the
        encoder eth-account itself uses); tests check ``keccak256`` of it equals eth-account's hash.
        """
        self.validate()
        fields = [self.chain_id, self.nonce, self.max_priority_fee_per_gas, self.max_fee_per_gas, self.gas,
                  b"" if self.to is None else self.to, self.value, self.data,
                  [[e.address, list(e.storage_keys)] for e in self.access_list]]
        return bytes([TX_TYPE_EIP1559]) + rlp.encode(fields)

    def signing_hash(self) -> bytes:
        self.validate()
        return bytes(TypedTransaction.from_dict(self.as_dict()).hash())

    def encode_signed(self, y_parity: int, r: int, s: int) -> bytes:
        """The raw transaction for ``eth_sendRawTransaction``. S is placed as given (no
        normalisation), so tests can build the high-S variant a node must refuse."""
        self.validate()
        return TypedTransaction.from_dict({**self.as_dict(), "v": y_parity, "r": r, "s": s}).encode()


@dataclass(frozen=True)
class SignedTransaction:
    raw: bytes
    hash: bytes
    sender: str
    y_parity: int
    r: int
    s: int

    @property
    def raw_hex(self) -> str:
        return "0x" + self.raw.hex()


def _eth_signature(signer: DigestSigner, digest: bytes, path: str) -> tuple[Point, int, int, int]:
    key = signer.public_key(path)
    sig = checked_remote_signature(signer, digest, path, key)
    if sig.recovery_id > 1:
        raise RemoteSignatureError("signature has R.x >= n; Ethereum cannot encode it, sign again")
    return key, sig.recovery_id, sig.r, sig.s


def sign_transaction(tx: Eip1559Transaction, signer: DigestSigner, path: str) -> SignedTransaction:
    """Sign ``tx`` with the key at ``path``; returns the raw type-2 transaction and its hash."""
    key, parity, r, s = _eth_signature(signer, tx.signing_hash(), path)
    raw = tx.encode_signed(parity, r, s)
    return SignedTransaction(raw, keccak256(raw), ethereum_address(key), parity, r, s)


def address_at(signer: DigestSigner, path: str) -> str:
    return ethereum_address(signer.public_key(path))


def fill_transaction(w3: Any, sender: str, *, to: str | bytes | None, value: int = 0, data: str | bytes = b"",
                     access_list: Sequence[Any] = (), nonce: int | None = None, gas: int | None = None,
                     max_fee_per_gas: int | None = None, max_priority_fee_per_gas: int | None = None,
                     base_fee_multiplier: int = 2) -> Eip1559Transaction:
    """Complete a transfer/call from ``sender`` with what the chain says.

    nonce: the pending transaction count; priority fee: ``eth_maxPriorityFeePerGas``; max fee:
    ``base_fee_multiplier`` × the latest base fee + priority fee (stays valid across several
    full blocks of base-fee increases); gas: ``eth_estimateGas``. Given values are kept.
    """
    sender_checked = to_checksum_address(parse_address(sender, "sender"))
    to_bytes = None if to is None else parse_address(to, "to")
    payload = _hex_or_bytes(data, "data")
    entries = _parse_access_list(access_list)
    chain_id = int(w3.eth.chain_id)
    if nonce is None:
        nonce = int(w3.eth.get_transaction_count(sender_checked, "pending"))
    if max_priority_fee_per_gas is None:
        max_priority_fee_per_gas = int(w3.eth.max_priority_fee)
    if max_fee_per_gas is None:
        block = w3.eth.get_block("latest")
        base_fee = block.get("baseFeePerGas")
        if base_fee is None:
            raise EthereumError("the chain has no base fee (pre-London); EIP-1559 transactions are not possible")
        max_fee_per_gas = base_fee_multiplier * int(base_fee) + max_priority_fee_per_gas
    if gas is None:
        call: dict[str, Any] = {"from": sender_checked, "value": value, "data": "0x" + payload.hex()}
        if to_bytes is not None:
            call["to"] = to_checksum_address(to_bytes)
        if entries:
            call["accessList"] = [{"address": to_checksum_address(e.address),
                                   "storageKeys": ["0x" + k.hex() for k in e.storage_keys]} for e in entries]
        gas = int(w3.eth.estimate_gas(call))
    return Eip1559Transaction.create(chain_id=chain_id, nonce=nonce, max_priority_fee_per_gas=max_priority_fee_per_gas,
                                     max_fee_per_gas=max_fee_per_gas, gas=gas, to=to_bytes, value=value,
                                     data=payload, access_list=entries)


def send_transaction(w3: Any, signer: DigestSigner, path: str, **fields: Any) -> SignedTransaction:
    """Fill from the provider, sign at ``path`` and broadcast; returns what was sent."""
    tx = fill_transaction(w3, address_at(signer, path), **fields)
    signed = sign_transaction(tx, signer, path)
    w3.eth.send_raw_transaction(signed.raw)
    return signed


# ------------------------------------------------------------------------------------ EIP-712
#
# eth-account hashes; this part decides whether it may. It refuses malformed or out-of-range
# values and hands over a canonical copy, so eth-account's lenient coercions never apply. Where
# eth-account departs from the specification - it hashes the domain with the standard fields in
# the standard order whatever EIP712Domain declares, derives primaryType instead of reading it,
# and cannot sign the domain alone - the input is held to what it encodes exactly, or refused.

_ATOMIC = re.compile(r"^(address|bool|string|bytes|bytes([1-9]|[12][0-9]|3[0-2])|u?int(8|16|24|32|40|48|56|64|72|80|88|"
                     r"96|104|112|120|128|136|144|152|160|168|176|184|192|200|208|216|224|232|240|248|256))$")
_ARRAY = re.compile(r"^(.+)\[(\d*)\]$")
_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_DOMAIN_FIELDS = (("name", "string"), ("version", "string"), ("chainId", "uint256"),
                  ("verifyingContract", "address"), ("salt", "bytes32"))

_Types = dict[str, list[tuple[str, str]]]


def _base_type(ftype: str) -> str:
    while (m := _ARRAY.match(ftype)) is not None:
        ftype = m.group(1)
    return ftype


def _check_types(types: Any) -> _Types:
    if not isinstance(types, Mapping):
        raise EthereumError("typed data 'types' must be a mapping")
    out: _Types = {}
    for name, fields_ in types.items():
        if not isinstance(name, str) or not _IDENT.match(name):
            raise EthereumError(f"invalid struct type name {name!r}")
        if not isinstance(fields_, Sequence) or isinstance(fields_, str):
            raise EthereumError(f"type {name}: fields must be a list")
        members = []
        for f in fields_:
            if not isinstance(f, Mapping) or not isinstance(f.get("name"), str) or not isinstance(f.get("type"), str):
                raise EthereumError(f"type {name}: each field needs a string name and type")
            if not _IDENT.match(f["name"]):
                raise EthereumError(f"type {name}: invalid field name {f['name']!r}")
            members.append((f["name"], f["type"]))
        if len({m[0] for m in members}) != len(members):
            raise EthereumError(f"type {name}: duplicate field names")
        out[name] = members
    for name, members in out.items():
        for fname, ftype in members:
            if not _ATOMIC.match(_base_type(ftype)) and _base_type(ftype) not in out:
                raise EthereumError(f"type {name}.{fname}: unknown type {ftype!r}")
    return out


def _reachable(primary: str, types: _Types) -> set[str]:
    found: set[str] = set()
    pending = [primary]
    while pending:
        name = pending.pop()
        if name in found or name not in types:
            continue
        found.add(name)
        pending += [_base_type(t) for _, t in types[name]]
    return found


def _int_value(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise EthereumError(f"{what}: expected an integer, got a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16) if value.lower().startswith(("0x", "-0x")) else int(value, 10)
        except ValueError:
            raise EthereumError(f"{what}: {value!r} is not an integer") from None
    raise EthereumError(f"{what}: expected an integer, got {type(value).__name__}")


def _canonical_value(ftype: str, value: Any, types: _Types, what: str) -> Any:
    if (m := _ARRAY.match(ftype)) is not None:
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise EthereumError(f"{what}: expected a list for {ftype}")
        if m.group(2) and len(value) != int(m.group(2)):
            raise EthereumError(f"{what}: {ftype} needs exactly {m.group(2)} items, got {len(value)}")
        return [_canonical_value(m.group(1), v, types, f"{what}[{i}]") for i, v in enumerate(value)]
    if ftype in types:
        return _canonical_struct(ftype, value, types, what)
    if ftype == "address":
        return parse_address(value, what)
    if ftype == "bool":
        if not isinstance(value, bool):
            raise EthereumError(f"{what}: expected a bool")
        return value
    if ftype == "string":
        if not isinstance(value, str):
            raise EthereumError(f"{what}: expected a string")
        return value
    if ftype.startswith("bytes"):
        raw = _hex_or_bytes(value, what)
        if ftype != "bytes" and len(raw) != int(ftype[5:]):
            raise EthereumError(f"{what}: {ftype} needs {ftype[5:]} bytes, got {len(raw)}")
        return raw
    bits = int(ftype[4:] if ftype.startswith("uint") else ftype[3:])
    n = _int_value(value, what)
    low, high = (0, 2**bits) if ftype.startswith("uint") else (-(2 ** (bits - 1)), 2 ** (bits - 1))
    if not low <= n < high:
        raise EthereumError(f"{what}: {n} out of range for {ftype}")
    return n


def _canonical_struct(primary: str, data: Any, types: _Types, what: str) -> dict[str, Any]:
    """Every declared field given, nothing else, each value checked (EIP-712 has no optional fields)."""
    if not isinstance(data, Mapping):
        raise EthereumError(f"{what}: expected an object for struct {primary}")
    declared = types[primary]
    extra = set(data) - {n for n, _ in declared}
    if extra:
        raise EthereumError(f"{what}: fields not in type {primary}: {sorted(extra)}")
    missing = [n for n, _ in declared if n not in data]
    if missing:
        raise EthereumError(f"{what}: missing fields of {primary}: {missing}")
    return {n: _canonical_value(t, data[n], types, f"{what}.{n}") for n, t in declared}


def _prepare(typed: Mapping[str, Any]) -> dict[str, Any]:
    """The typed data checked and in canonical form, in the shape eth-account encodes exactly:
    EIP712Domain the standard fields in the standard order, only the types primaryType uses."""
    if not isinstance(typed, Mapping):
        raise EthereumError("typed data must be a mapping with types, primaryType, domain, message")
    for key in ("types", "primaryType", "domain", "message"):
        if key not in typed:
            raise EthereumError(f"typed data has no {key!r}")
    types = _check_types(typed["types"])
    if not isinstance(typed["domain"], Mapping):
        raise EthereumError("typed data domain must be a mapping")
    declared = types.setdefault("EIP712Domain", [(n, t) for n, t in _DOMAIN_FIELDS if n in typed["domain"]])
    if declared != [(n, t) for n, t in _DOMAIN_FIELDS if n in {f for f, _ in declared}]:
        raise EthereumError("EIP712Domain must use the standard fields (name string, version string, chainId "
                            "uint256, verifyingContract address, salt bytes32) in that order")
    domain = _canonical_struct("EIP712Domain", typed["domain"], types, "domain")
    primary = typed["primaryType"]
    if not isinstance(primary, str) or primary not in types:
        raise EthereumError(f"primaryType {primary!r} is not declared in types")
    used = {"EIP712Domain"} if primary == "EIP712Domain" else _reachable(primary, types) | {"EIP712Domain"}
    for name in used - {"EIP712Domain"}:  # eth-account takes primaryType to be the type no other one uses
        refs = {_base_type(t) for _, t in types[name]}
        if "EIP712Domain" in refs or (name != primary and primary in refs):
            raise EthereumError(f"type {name} refers to {primary} or EIP712Domain; such typed data is not supported")
    message = None if primary == "EIP712Domain" else _canonical_struct(primary, typed["message"], types, "message")
    return {"types": {name: [{"name": n, "type": t} for n, t in types[name]] for name in sorted(used)},
            "primaryType": primary, "domain": domain, "message": message}


def _domain_separator(full: Mapping[str, Any]) -> bytes:
    # eth-account exposes hashStruct(domain) only as the header of an encoded message; the domain
    # serves as that message too (its hash is not used).
    domain_type = {"EIP712Domain": full["types"]["EIP712Domain"]}
    return bytes(encode_typed_data(full["domain"], domain_type, full["domain"]).header)


def domain_separator(typed: Mapping[str, Any]) -> bytes:
    return _domain_separator(_prepare(typed))


def hash_typed_data(typed: Mapping[str, Any]) -> bytes:
    """The EIP-712 digest ``keccak256(0x19 0x01 || domainSeparator || hashStruct(message))``.

    ``typed`` is the ``eth_signTypedData_v4`` JSON shape. When ``primaryType`` is
    ``EIP712Domain`` only the domain is signed (no message hash), as the specification says.
    """
    full = _prepare(typed)
    if full["message"] is None:
        return bytes(_hash_eip191_message(SignableMessage(b"\x01", _domain_separator(full), b"")))
    return bytes(_hash_eip191_message(encode_typed_data(full_message=full)))


def _rsv(parity: int, r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + parity])


def sign_typed_data(typed: Mapping[str, Any], signer: DigestSigner, path: str) -> bytes:
    """65-byte ``r || s || v`` (v = 27/28) over the EIP-712 digest, as ``eth_signTypedData_v4`` returns."""
    _, parity, r, s = _eth_signature(signer, hash_typed_data(typed), path)
    return _rsv(parity, r, s)


def personal_message_hash(message: bytes | str) -> bytes:
    """EIP-191 version 0x45: keccak256("\\x19Ethereum Signed Message:\\n" + len + message)."""
    if not isinstance(message, str | bytes | bytearray):
        raise EthereumError("a personal message must be text or bytes")
    data = message.encode() if isinstance(message, str) else bytes(message)
    return bytes(_hash_eip191_message(encode_defunct(primitive=data)))


def sign_personal_message(message: bytes | str, signer: DigestSigner, path: str) -> bytes:
    _, parity, r, s = _eth_signature(signer, personal_message_hash(message), path)
    return _rsv(parity, r, s)
