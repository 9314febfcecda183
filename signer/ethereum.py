"""Ethereum transactions and typed data signed by a remote (threshold) key.

* EIP-1559 (type-2) transactions: :class:`Eip1559Transaction`, whose signing hash is
  ``keccak256(0x02 || rlp([chain_id, nonce, max_priority_fee_per_gas, max_fee_per_gas, gas, to,
  value, data, access_list]))``; :func:`sign_transaction` returns the raw signed transaction
  ``0x02 || rlp([..., y_parity, r, s])`` ready for ``eth_sendRawTransaction``.
* :func:`fill_transaction` takes nonce, fees, gas and chain id from a web3 provider.
* EIP-712 typed data: :func:`hash_typed_data` (``keccak256(0x19 0x01 || domainSeparator ||
  hashStruct(message))``) and :func:`sign_typed_data`; EIP-191 :func:`sign_personal_message`.

Only :func:`rlp.encode` is used from the Ethereum packages — hashing and signing are done here
and through the :class:`~fusion_prime.signer.bitcoin.DigestSigner`; every signature is checked
(right key, low-S, recovery id) before it is used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import rlp

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
    if len(raw) != 20:
        raise EthereumError("address must be 20 bytes")
    hex_addr = raw.hex()
    check = keccak256(hex_addr.encode()).hex()
    return "0x" + "".join(c.upper() if int(check[i], 16) >= 8 else c for i, c in enumerate(hex_addr))


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
    if body != body.lower() and body != body.upper() and to_checksum_address(raw) != "0x" + body:
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

    def _fields(self) -> list[Any]:
        return [
            self.chain_id, self.nonce, self.max_priority_fee_per_gas, self.max_fee_per_gas, self.gas,
            b"" if self.to is None else self.to, self.value, self.data,
            [[e.address, list(e.storage_keys)] for e in self.access_list],
        ]

    def signing_payload(self) -> bytes:
        self.validate()
        return bytes([TX_TYPE_EIP1559]) + rlp.encode(self._fields())

    def signing_hash(self) -> bytes:
        return keccak256(self.signing_payload())

    def encode_signed(self, y_parity: int, r: int, s: int) -> bytes:
        return bytes([TX_TYPE_EIP1559]) + rlp.encode([*self._fields(), y_parity, r, s])


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

_ATOMIC = re.compile(r"^(address|bool|string|bytes|bytes([1-9]|[12][0-9]|3[0-2])|u?int(8|16|24|32|40|48|56|64|72|80|88|"
                     r"96|104|112|120|128|136|144|152|160|168|176|184|192|200|208|216|224|232|240|248|256))$")
_ARRAY = re.compile(r"^(.+)\[(\d*)\]$")
_IDENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_DOMAIN_FIELDS = (("name", "string"), ("version", "string"), ("chainId", "uint256"),
                  ("verifyingContract", "address"), ("salt", "bytes32"))


def _check_types(types: Any) -> dict[str, list[tuple[str, str]]]:
    if not isinstance(types, Mapping):
        raise EthereumError("typed data 'types' must be a mapping")
    out: dict[str, list[tuple[str, str]]] = {}
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
            base = ftype
            while (m := _ARRAY.match(base)) is not None:
                base = m.group(1)
            if not _ATOMIC.match(base) and base not in out:
                raise EthereumError(f"type {name}.{fname}: unknown type {ftype!r}")
    return out


def _dependencies(primary: str, types: Mapping[str, list[tuple[str, str]]], found: set[str]) -> set[str]:
    if primary in found or primary not in types:
        return found
    found.add(primary)
    for _, ftype in types[primary]:
        base = ftype
        while (m := _ARRAY.match(base)) is not None:
            base = m.group(1)
        _dependencies(base, types, found)
    return found


def encode_type(primary: str, types: Mapping[str, list[tuple[str, str]]]) -> str:
    deps = _dependencies(primary, types, set()) - {primary}
    return "".join(f"{name}({','.join(f'{t} {n}' for n, t in types[name])})" for name in [primary, *sorted(deps)])


def type_hash(primary: str, types: Mapping[str, list[tuple[str, str]]]) -> bytes:
    return keccak256(encode_type(primary, types).encode())


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


def _encode_value(ftype: str, value: Any, types: Mapping[str, list[tuple[str, str]]], what: str) -> bytes:
    if (m := _ARRAY.match(ftype)) is not None:
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise EthereumError(f"{what}: expected a list for {ftype}")
        if m.group(2) and len(value) != int(m.group(2)):
            raise EthereumError(f"{what}: {ftype} needs exactly {m.group(2)} items, got {len(value)}")
        return keccak256(b"".join(_encode_value(m.group(1), v, types, f"{what}[{i}]") for i, v in enumerate(value)))
    if ftype in types:
        return hash_struct(ftype, value, types, what)
    if ftype == "address":
        return parse_address(value, what).rjust(32, b"\0")
    if ftype == "bool":
        if not isinstance(value, bool):
            raise EthereumError(f"{what}: expected a bool")
        return int(value).to_bytes(32, "big")
    if ftype == "string":
        if not isinstance(value, str):
            raise EthereumError(f"{what}: expected a string")
        return keccak256(value.encode())
    if ftype == "bytes":
        return keccak256(_hex_or_bytes(value, what))
    if ftype.startswith("bytes"):
        size = int(ftype[5:])
        raw = _hex_or_bytes(value, what)
        if len(raw) != size:
            raise EthereumError(f"{what}: {ftype} needs {size} bytes, got {len(raw)}")
        return raw.ljust(32, b"\0")
    bits = int(ftype[4:] if ftype.startswith("uint") else ftype[3:])
    n = _int_value(value, what)
    if ftype.startswith("uint"):
        if not 0 <= n < 2**bits:
            raise EthereumError(f"{what}: {n} out of range for {ftype}")
        return n.to_bytes(32, "big")
    if not -(2 ** (bits - 1)) <= n < 2 ** (bits - 1):
        raise EthereumError(f"{what}: {n} out of range for {ftype}")
    return (n % 2**256).to_bytes(32, "big")


def hash_struct(primary: str, data: Any, types: Mapping[str, list[tuple[str, str]]], what: str | None = None) -> bytes:
    """keccak256(typeHash || encodeData(data)); every declared field must be given, nothing else."""
    what = what or primary
    if not isinstance(data, Mapping):
        raise EthereumError(f"{what}: expected an object for struct {primary}")
    declared = types[primary]
    names = {n for n, _ in declared}
    extra = set(data) - names
    if extra:
        raise EthereumError(f"{what}: fields not in type {primary}: {sorted(extra)}")
    missing = [n for n, _ in declared if n not in data]
    if missing:
        raise EthereumError(f"{what}: missing fields of {primary}: {missing}")
    encoded = b"".join(_encode_value(t, data[n], types, f"{what}.{n}") for n, t in declared)
    return keccak256(type_hash(primary, types) + encoded)


def _prepare(typed: Mapping[str, Any]) -> tuple[dict[str, list[tuple[str, str]]], Mapping[str, Any], str, Any]:
    if not isinstance(typed, Mapping):
        raise EthereumError("typed data must be a mapping with types, primaryType, domain, message")
    for key in ("types", "primaryType", "domain", "message"):
        if key not in typed:
            raise EthereumError(f"typed data has no {key!r}")
    raw_types = dict(typed["types"]) if isinstance(typed["types"], Mapping) else typed["types"]
    domain = typed["domain"]
    if not isinstance(domain, Mapping):
        raise EthereumError("typed data domain must be a mapping")
    if isinstance(raw_types, dict) and "EIP712Domain" not in raw_types:
        unknown = set(domain) - {n for n, _ in _DOMAIN_FIELDS}
        if unknown:
            raise EthereumError(f"unknown domain fields {sorted(unknown)} (declare EIP712Domain in types)")
        raw_types["EIP712Domain"] = [{"name": n, "type": t} for n, t in _DOMAIN_FIELDS if n in domain]
    types = _check_types(raw_types)
    primary = typed["primaryType"]
    if not isinstance(primary, str) or primary not in types:
        raise EthereumError(f"primaryType {primary!r} is not declared in types")
    return types, domain, primary, typed["message"]


def domain_separator(typed: Mapping[str, Any]) -> bytes:
    types, domain, _, _ = _prepare(typed)
    return hash_struct("EIP712Domain", domain, types, "domain")


def hash_typed_data(typed: Mapping[str, Any]) -> bytes:
    """The EIP-712 digest ``keccak256(0x19 0x01 || domainSeparator || hashStruct(message))``.

    ``typed`` is the ``eth_signTypedData_v4`` JSON shape. When ``primaryType`` is
    ``EIP712Domain`` only the domain is signed (no message hash), as the specification says.
    """
    types, domain, primary, message = _prepare(typed)
    separator = hash_struct("EIP712Domain", domain, types, "domain")
    if primary == "EIP712Domain":
        return keccak256(b"\x19\x01" + separator)
    return keccak256(b"\x19\x01" + separator + hash_struct(primary, message, types, "message"))


def _rsv(parity: int, r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + parity])


def sign_typed_data(typed: Mapping[str, Any], signer: DigestSigner, path: str) -> bytes:
    """65-byte ``r || s || v`` (v = 27/28) over the EIP-712 digest, as ``eth_signTypedData_v4`` returns."""
    _, parity, r, s = _eth_signature(signer, hash_typed_data(typed), path)
    return _rsv(parity, r, s)


def personal_message_hash(message: bytes | str) -> bytes:
    """EIP-191 version 0x45: keccak256("\\x19Ethereum Signed Message:\\n" + len + message)."""
    data = message.encode() if isinstance(message, str) else bytes(message)
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)


def sign_personal_message(message: bytes | str, signer: DigestSigner, path: str) -> bytes:
    _, parity, r, s = _eth_signature(signer, personal_message_hash(message), path)
    return _rsv(parity, r, s)
