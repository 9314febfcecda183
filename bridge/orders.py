"""Mint orders: the EIP-712 ``MintOrder`` of the Gateway, deposit ids, signatures, confirmation rules.

Everything here is a pure function of its inputs (no chain, no clock, no socket), because every
node must reach *the same bytes* from its own view: the coordinator builds an order, each
participant rebuilds it from its own chain connection and compares digests, and the Gateway
recomputes the digest on-chain. So the encodings follow ``contracts/README.md`` to the byte:

* ``chain_key(caip2) = keccak256(utf8(caip2))`` of a *canonical* CAIP-2 id (``Gateway.chainKeyOf``'s
  rules, refused otherwise), so one chain has one key and one deposit has one id;
* ``deposit_id = keccak256(abi.encode(bytes32 chainKey, bytes32 sourceTxId, uint32 vout))``, with the
  Bitcoin txid in RPC display order (``bytes.fromhex(rpc_txid)``) and, for EVM, the transaction hash;
* the digest ``keccak256(0x1901 ‖ domainSeparator ‖ hashStruct(order))`` under the domain
  ``("Fusion Prime Gateway", "1", chainId, gateway)``;
* signatures ``r ‖ s ‖ v`` with ``s ≤ n/2`` and ``v = 27 + recovery id`` (``StrictECDSA``).

``MintOrder.to_bytes()`` is the order's canonical binary form for carrying it inside a sign
proposal; ``from_bytes`` accepts only what ``to_bytes`` produces (anything else is refused), so
two nodes can never disagree about which order a proposal names.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from fusion_prime.protocol.addresses import keccak256
from fusion_prime.protocol.curve import HALF_Q, Q

UINT32_MAX = 2**32 - 1
UINT256_MAX = 2**256 - 1

GATEWAY_NAME = "Fusion Prime Gateway"
GATEWAY_VERSION = "1"
EIP712_DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
MINT_ORDER_TYPE = (
    "MintOrder(address asset,bytes32 sourceChain,bytes32 sourceTxId,uint32 vout,address recipient,"
    "uint256 amount,uint32 signerEpoch,uint256 nonce,uint256 deadline)"
)
EIP712_DOMAIN_TYPEHASH = keccak256(EIP712_DOMAIN_TYPE.encode())
#: Pinned in contracts/README.md; a test checks this constant against it.
MINT_ORDER_TYPEHASH = keccak256(MINT_ORDER_TYPE.encode())

#: ``vout`` of a native-coin (ETH) deposit: the transaction's own top-level value transfer, which has
#: no log. ``contracts/README.md`` makes an EVM ``vout`` the index of the deposit log within its
#: receipt; a receipt never holds 2^32 − 1 logs, so this value can never collide with a log-based
#: deposit (a token transfer) of the same transaction, and a transaction has one top-level transfer.
EVM_NATIVE_VOUT = UINT32_MAX

#: Version byte of ``MintOrder.to_bytes``; bump it (and keep decoding the old one) if the layout changes.
ORDER_ENCODING_VERSION = 1

_NAMESPACE = re.compile(r"[-a-z0-9]{3,8}")
_REFERENCE = re.compile(r"[-_a-zA-Z0-9]{1,32}")
_EIP155_REF = re.compile(r"[1-9][0-9]{0,31}")
_BIP122_REF = re.compile(r"[0-9a-f]{32}")
_TXID = re.compile(r"[0-9a-f]{64}")
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class OrderError(ValueError):
    """A chain id, address, order field or signature is malformed or not in canonical form."""


# ------------------------------------------------------------------------------------ chains


def check_caip2(caip2: str) -> str:
    """Return ``caip2`` if it is canonical by ``Gateway.chainKeyOf``'s rules, else raise.

    Canonical means: namespace ``[-a-z0-9]{3,8}``, reference ``[-_a-zA-Z0-9]{1,32}``; for ``eip155``
    a decimal chain id without leading zeros, for ``bip122`` exactly 32 lowercase hex digits. Any
    other spelling of the same chain would give another chain key, hence another deposit id for
    the same deposit: exactly what the one-mint-per-deposit rule must never allow.
    """
    if not isinstance(caip2, str):
        raise OrderError(f"CAIP-2 chain id must be a string, got {type(caip2).__name__}")
    namespace, sep, reference = caip2.partition(":")
    if not sep or not _NAMESPACE.fullmatch(namespace) or not _REFERENCE.fullmatch(reference):
        raise OrderError(f"{caip2!r} is not a CAIP-2 chain id")
    if namespace == "eip155" and not _EIP155_REF.fullmatch(reference):
        raise OrderError(f"{caip2!r}: eip155 reference must be a decimal chain id without leading zeros")
    if namespace == "bip122" and not _BIP122_REF.fullmatch(reference):
        raise OrderError(f"{caip2!r}: bip122 reference must be 32 lowercase hex digits of the genesis hash")
    return caip2


def chain_kind(caip2: str) -> str:
    """``"bitcoin"`` (bip122) or ``"evm"`` (eip155); the bridge supports no other namespace."""
    namespace = check_caip2(caip2).partition(":")[0]
    if namespace == "bip122":
        return "bitcoin"
    if namespace == "eip155":
        return "evm"
    raise OrderError(f"{caip2!r}: only eip155 and bip122 chains are supported")


def evm_chain_id(caip2: str) -> int:
    """The EIP-155 chain id named by an ``eip155:<id>`` CAIP-2 id."""
    if chain_kind(caip2) != "evm":
        raise OrderError(f"{caip2!r} is not an EVM chain")
    return int(caip2.partition(":")[2])


def chain_key(caip2: str) -> bytes:
    """``keccak256(utf8(caip2))`` of a canonical CAIP-2 id: the Gateway's ``sourceChain``."""
    return keccak256(check_caip2(caip2).encode())


def deposit_id(chain: str, txid: str | bytes, vout: int) -> bytes:
    """``keccak256(abi.encode(chainKey, sourceTxId, uint32 vout))`` — ``Gateway.depositIdOf``.

    ``txid`` is the 64-hex transaction id as the chain's RPC displays it (Bitcoin: never the
    internal byte-reversed order) or its 32 bytes.
    """
    raw = txid_bytes(txid)
    return keccak256(chain_key(chain) + raw + _u256(_uint(vout, "vout", UINT32_MAX)))


def txid_bytes(txid: str | bytes) -> bytes:
    """32 bytes of a transaction id given as 64 hex digits (optionally ``0x``-prefixed) or bytes."""
    if isinstance(txid, bytes | bytearray):
        if len(txid) != 32:
            raise OrderError(f"transaction id must be 32 bytes, got {len(txid)}")
        return bytes(txid)
    if isinstance(txid, str):
        text = txid[2:] if txid.startswith("0x") else txid
        if _TXID.fullmatch(text.lower()) and len(text) == 64:
            return bytes.fromhex(text)
    raise OrderError(f"transaction id {txid!r} is not 64 hex digits")


# --------------------------------------------------------------------------------- addresses


def to_checksum_address(raw: bytes) -> str:
    """EIP-55 encoding of 20 address bytes (the one spelling ``MintOrder`` stores)."""
    if len(raw) != 20:
        raise OrderError("address must be 20 bytes")
    body = raw.hex()
    check = keccak256(body.encode()).hex()
    return "0x" + "".join(c.upper() if int(check[i], 16) >= 8 else c for i, c in enumerate(body))


def address_bytes(value: str | bytes, what: str = "address") -> bytes:
    """20 bytes of an EVM address: raw bytes, all-lowercase/all-uppercase hex or valid EIP-55."""
    if isinstance(value, bytes | bytearray):
        if len(value) != 20:
            raise OrderError(f"{what} must be 20 bytes, got {len(value)}")
        return bytes(value)
    if not isinstance(value, str) or not _HEX_ADDRESS.fullmatch(value):
        raise OrderError(f"{what} {value!r} is not a 0x-prefixed 20-byte hex address")
    raw = bytes.fromhex(value[2:])
    body = value[2:]
    if body not in (body.lower(), body.upper()) and to_checksum_address(raw) != value:
        raise OrderError(f"{what} {value} has an invalid EIP-55 checksum")
    return raw


def checksum_address(value: str | bytes, what: str = "address") -> str:
    """The EIP-55 spelling of an address; the zero address is refused (nothing may mint to it)."""
    raw = address_bytes(value, what)
    if raw == bytes(20):
        raise OrderError(f"{what} is the zero address")
    return to_checksum_address(raw)


# ---------------------------------------------------------------------------------- the order


def _uint(value: Any, what: str, limit: int = UINT256_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OrderError(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= limit:
        raise OrderError(f"{what} {value} out of range [0, {limit}]")
    return value


def _u256(value: int) -> bytes:
    return value.to_bytes(32, "big")


@dataclass(frozen=True)
class MintOrder:
    """A group-signed instruction to mint ``amount`` of ``asset`` to ``recipient`` for a deposit.

    Fields are stored in exactly one spelling (checked here, so two equal orders compare equal
    and serialise identically): addresses EIP-55, ``source_chain`` a canonical CAIP-2 id,
    ``source_txid`` 64 lowercase hex digits in RPC display order. Use :meth:`create` to build one
    from looser input. Zero amount, zero asset and zero recipient are refused because the Gateway
    refuses them too — an order it can never execute must not be signed.
    """

    asset: str
    source_chain: str
    source_txid: str
    vout: int
    recipient: str
    amount: int
    signer_epoch: int
    nonce: int
    deadline: int

    def __post_init__(self) -> None:
        if checksum_address(self.asset, "asset") != self.asset:
            raise OrderError(f"asset {self.asset!r} must be given in its EIP-55 form")
        if checksum_address(self.recipient, "recipient") != self.recipient:
            raise OrderError(f"recipient {self.recipient!r} must be given in its EIP-55 form")
        chain_kind(self.source_chain)
        if not isinstance(self.source_txid, str) or not _TXID.fullmatch(self.source_txid):
            raise OrderError(f"source_txid {self.source_txid!r} must be 64 lowercase hex digits (no 0x)")
        _uint(self.vout, "vout", UINT32_MAX)
        if _uint(self.amount, "amount") == 0:
            raise OrderError("amount must be positive")
        _uint(self.signer_epoch, "signer_epoch", UINT32_MAX)
        _uint(self.nonce, "nonce")
        _uint(self.deadline, "deadline")

    @classmethod
    def create(cls, *, asset: str | bytes, source_chain: str, source_txid: str | bytes, vout: int,
               recipient: str | bytes, amount: int, signer_epoch: int, nonce: int, deadline: int) -> MintOrder:
        """Build an order from loose spellings (any-case hex, ``0x`` txids, raw bytes)."""
        return cls(asset=checksum_address(asset, "asset"), source_chain=source_chain,
                   source_txid=txid_bytes(source_txid).hex(), vout=vout,
                   recipient=checksum_address(recipient, "recipient"), amount=amount,
                   signer_epoch=signer_epoch, nonce=nonce, deadline=deadline)

    # -- identities

    @property
    def source_chain_key(self) -> bytes:
        return chain_key(self.source_chain)

    @property
    def deposit_id(self) -> bytes:
        """The Gateway's id of the deposit this order mints (what ``mintedDeposit`` is keyed by)."""
        return deposit_id(self.source_chain, self.source_txid, self.vout)

    def same_deposit_terms(self, other: MintOrder) -> bool:
        """Whether ``other`` mints the same deposit, of the same asset, to the same recipient, for
        the same amount — i.e. differs at most in signer epoch, nonce and deadline (a re-issue)."""
        return (self.asset, self.source_chain, self.source_txid, self.vout, self.recipient, self.amount) == (
            other.asset, other.source_chain, other.source_txid, other.vout, other.recipient, other.amount)

    # -- EIP-712

    def struct_hash(self) -> bytes:
        """``hashStruct(MintOrder)``: the typehash and each field as one 32-byte ABI word."""
        return keccak256(
            MINT_ORDER_TYPEHASH
            + bytes(12) + address_bytes(self.asset)
            + self.source_chain_key
            + bytes.fromhex(self.source_txid)
            + _u256(self.vout)
            + bytes(12) + address_bytes(self.recipient)
            + _u256(self.amount)
            + _u256(self.signer_epoch)
            + _u256(self.nonce)
            + _u256(self.deadline)
        )

    def digest(self, gateway: str | bytes, chain_id: int) -> bytes:
        """The EIP-712 digest the Gateway at ``gateway`` on chain ``chain_id`` recovers the signer from."""
        return keccak256(b"\x19\x01" + domain_separator(gateway, chain_id) + self.struct_hash())

    # -- canonical encodings

    def to_bytes(self) -> bytes:
        """Version ‖ asset(20) ‖ len(u8) ‖ CAIP-2 ‖ txid(32) ‖ vout(u32) ‖ recipient(20) ‖ amount(32)
        ‖ epoch(u32) ‖ nonce(32) ‖ deadline(32). Fixed widths, one length prefix: one order, one
        byte string."""
        chain = self.source_chain.encode()
        return (
            bytes([ORDER_ENCODING_VERSION])
            + address_bytes(self.asset)
            + bytes([len(chain)]) + chain
            + bytes.fromhex(self.source_txid)
            + self.vout.to_bytes(4, "big")
            + address_bytes(self.recipient)
            + _u256(self.amount)
            + self.signer_epoch.to_bytes(4, "big")
            + _u256(self.nonce)
            + _u256(self.deadline)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> MintOrder:
        """Decode :meth:`to_bytes` output; refuses any other input (wrong version, length, trailing
        bytes, non-canonical chain id, zero or mis-spelt fields)."""
        if not isinstance(data, bytes | bytearray):
            raise OrderError("encoded order must be bytes")
        data = bytes(data)
        if len(data) < 22 or data[0] != ORDER_ENCODING_VERSION:
            raise OrderError("not a version-1 encoded mint order")
        n = data[21]
        expected = 1 + 20 + 1 + n + 32 + 4 + 20 + 32 + 4 + 32 + 32
        if len(data) != expected:
            raise OrderError(f"encoded mint order must be {expected} bytes, got {len(data)}")
        pos = 22
        try:
            chain = data[pos:pos + n].decode("ascii")
        except UnicodeDecodeError:
            raise OrderError("source chain is not ASCII") from None
        pos += n

        def take(k: int) -> bytes:
            nonlocal pos
            out = data[pos:pos + k]
            pos += k
            return out

        txid = take(32)
        vout = int.from_bytes(take(4), "big")
        recipient = take(20)
        amount = int.from_bytes(take(32), "big")
        epoch = int.from_bytes(take(4), "big")
        nonce = int.from_bytes(take(32), "big")
        deadline = int.from_bytes(take(32), "big")
        order = cls(asset=checksum_address(data[1:21], "asset"), source_chain=chain, source_txid=txid.hex(),
                    vout=vout, recipient=checksum_address(recipient, "recipient"), amount=amount,
                    signer_epoch=epoch, nonce=nonce, deadline=deadline)
        if order.to_bytes() != data:  # belt and braces: the encoding is a bijection
            raise OrderError("non-canonical mint order encoding")
        return order

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (ints stay ints: Python's JSON has no precision limit)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MintOrder:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


REFUND_BURN_TYPE = ("RefundBurn(uint256 burnNonce,address asset,address burner,uint256 amount,uint32 signerEpoch,"
                    "uint256 deadline)")
REFUND_BURN_TYPEHASH = keccak256(REFUND_BURN_TYPE.encode())
REFUND_ENCODING_VERSION = 1


def burn_id(chain_id: int, gateway: str | bytes, burn_nonce: int) -> bytes:
    """``keccak256(abi.encode(chainId, gateway, burnNonce))`` — ``Gateway.burnIdOf``."""
    return keccak256(_u256(_uint(chain_id, "chain_id")) + bytes(12) + address_bytes(gateway, "gateway")
                     + _u256(_uint(burn_nonce, "burn_nonce")))


@dataclass(frozen=True)
class RefundOrder:
    """A group-signed ``RefundBurn``: re-mint exactly a recorded burn to its burner, once (the
    Gateway checks the burn record). Signed only for a burn the nodes cannot pay."""

    burn_nonce: int
    asset: str
    burner: str
    amount: int
    signer_epoch: int
    deadline: int

    def __post_init__(self) -> None:
        if _uint(self.burn_nonce, "burn_nonce") == 0:
            raise OrderError("burn nonces start at 1")
        if checksum_address(self.asset, "asset") != self.asset:
            raise OrderError(f"asset {self.asset!r} must be given in its EIP-55 form")
        if checksum_address(self.burner, "burner") != self.burner:
            raise OrderError(f"burner {self.burner!r} must be given in its EIP-55 form")
        if _uint(self.amount, "amount") == 0:
            raise OrderError("amount must be positive")
        _uint(self.signer_epoch, "signer_epoch", UINT32_MAX)
        _uint(self.deadline, "deadline")

    def struct_hash(self) -> bytes:
        return keccak256(REFUND_BURN_TYPEHASH + _u256(self.burn_nonce) + bytes(12) + address_bytes(self.asset)
                         + bytes(12) + address_bytes(self.burner) + _u256(self.amount)
                         + _u256(self.signer_epoch) + _u256(self.deadline))

    def digest(self, gateway: str | bytes, chain_id: int) -> bytes:
        return keccak256(b"\x19\x01" + domain_separator(gateway, chain_id) + self.struct_hash())

    def as_tuple(self) -> tuple[int, str, str, int, int, int]:
        """The ``RefundBurn`` calldata tuple."""
        return (self.burn_nonce, self.asset, self.burner, self.amount, self.signer_epoch, self.deadline)

    def to_bytes(self) -> bytes:
        """Version ‖ nonce(32) ‖ asset(20) ‖ burner(20) ‖ amount(32) ‖ epoch(u32) ‖ deadline(32)."""
        return (bytes([REFUND_ENCODING_VERSION]) + _u256(self.burn_nonce) + address_bytes(self.asset)
                + address_bytes(self.burner) + _u256(self.amount) + self.signer_epoch.to_bytes(4, "big")
                + _u256(self.deadline))

    @classmethod
    def from_bytes(cls, data: bytes) -> RefundOrder:
        data = bytes(data)
        if len(data) != 1 + 32 + 20 + 20 + 32 + 4 + 32 or data[0] != REFUND_ENCODING_VERSION:
            raise OrderError("not a version-1 encoded refund order")
        order = cls(burn_nonce=int.from_bytes(data[1:33], "big"), asset=checksum_address(data[33:53], "asset"),
                    burner=checksum_address(data[53:73], "burner"), amount=int.from_bytes(data[73:105], "big"),
                    signer_epoch=int.from_bytes(data[105:109], "big"), deadline=int.from_bytes(data[109:141], "big"))
        if order.to_bytes() != data:
            raise OrderError("non-canonical refund order encoding")
        return order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefundOrder:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def domain_separator(gateway: str | bytes, chain_id: int) -> bytes:
    """``hashStruct(EIP712Domain)`` of the Gateway: binds chain id and contract (no cross-chain replay)."""
    return keccak256(
        EIP712_DOMAIN_TYPEHASH
        + keccak256(GATEWAY_NAME.encode())
        + keccak256(GATEWAY_VERSION.encode())
        + _u256(_uint(chain_id, "chain_id"))
        + bytes(12) + address_bytes(gateway, "gateway")
    )


# --------------------------------------------------------------------------------- signatures


def encode_signature(r: int, s: int, recovery_id: int) -> bytes:
    """65-byte ``r ‖ s ‖ v`` as ``StrictECDSA`` accepts it: ``s`` normalised to the low half (which
    flips the recovery id's parity), then ``v = 27 + recovery id``. A recovery id ≥ 2 (R.x ≥ n)
    cannot be expressed in ``v`` and is refused: sign again."""
    if not (0 < r < Q and 0 < s < Q):
        raise OrderError("signature r and s must be in [1, n)")
    if recovery_id not in (0, 1, 2, 3):
        raise OrderError(f"recovery id {recovery_id} is not in 0..3")
    if s > HALF_Q:
        s, recovery_id = Q - s, recovery_id ^ 1
    if recovery_id > 1:
        raise OrderError("signature has R.x >= n; the EVM cannot express it, sign again")
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + recovery_id])


def decode_signature(signature: bytes) -> tuple[int, int, int]:
    """(r, s, recovery id) of a strict 65-byte signature; anything ``StrictECDSA`` refuses is refused."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        raise OrderError("signature must be 65 bytes r || s || v")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if not (0 < r < Q and 0 < s <= HALF_Q):
        raise OrderError("signature r/s out of range or s not low")
    if v not in (27, 28):
        raise OrderError("signature v must be 27 or 28")
    return r, s, v - 27


def recover_signer(digest: bytes, signature: bytes) -> str:
    """The EIP-55 address that signed ``digest`` (what ``ecrecover`` returns), or OrderError."""
    from coincurve import PublicKey  # the protocol layer's curve library

    r, s, rec = decode_signature(signature)
    if len(digest) != 32:
        raise OrderError("digest must be 32 bytes")
    try:
        key = PublicKey.from_signature_and_message(
            r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([rec]), digest, hasher=None)
    except Exception as exc:  # coincurve raises plain Exception on an unrecoverable signature
        raise OrderError(f"signature does not recover: {exc}") from None
    return to_checksum_address(keccak256(key.format(compressed=False)[1:])[-20:])


# ------------------------------------------------------------------------- confirmation rules


@dataclass(frozen=True)
class ChainParams:
    """Per-source-chain deposit rules, in the chain's base unit (satoshi, wei).

    * ``min_confirmations`` — the floor N of THORChain's rule;
    * ``value_per_block`` — what one block's work is worth (Bitcoin: the block subsidy): a deposit
      worth k blocks waits k blocks, so reorganising it out costs an attacker more than it gains;
    * ``max_confirmations`` — the cap, so a whale deposit still completes in bounded time (larger
      ones are additionally bounded on-chain by the Gateway's large-mint delay and rate limits);
    * ``dust_limit`` — below it the output is not economically spendable (Core's dust rule:
      294 sat for P2WPKH at 3 sat/vB);
    * ``sweep_cost`` — what moving the deposit into custody later costs (input weight × fee rate;
      on EVM the sweep transaction's gas): a deposit that does not exceed it would mint tokens
      that custody can never back after the sweep.
    """

    min_confirmations: int
    value_per_block: int
    max_confirmations: int
    dust_limit: int = 0
    sweep_cost: int = 0

    def __post_init__(self) -> None:
        if _uint(self.min_confirmations, "min_confirmations") < 1:
            raise OrderError("min_confirmations must be at least 1")
        if _uint(self.value_per_block, "value_per_block") < 1:
            raise OrderError("value_per_block must be positive")
        if _uint(self.max_confirmations, "max_confirmations") < self.min_confirmations:
            raise OrderError("max_confirmations must be >= min_confirmations")
        _uint(self.dust_limit, "dust_limit")
        _uint(self.sweep_cost, "sweep_cost")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChainParams:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def required_confirmations(value: int, params: ChainParams) -> int:
    """``min(cap, max(N, ⌈value ÷ value_per_block⌉))`` — THORChain's value-aware depth."""
    _uint(value, "value")
    by_value = -(-value // params.value_per_block)  # exact integer ceil (no float rounding on wei)
    return min(params.max_confirmations, max(params.min_confirmations, by_value))


def minimum_deposit(params: ChainParams) -> int:
    """The smallest value that is minted: at least the dust limit, and more than the sweep cost."""
    return max(params.dust_limit, params.sweep_cost + 1)


def is_dust(value: int, params: ChainParams) -> bool:
    """Below the minimum deposit: recorded and reported, never minted."""
    return _uint(value, "value") < minimum_deposit(params)
