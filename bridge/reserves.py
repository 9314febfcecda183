"""Solvency rules and the proof of reserves: custody must cover what the bridge owes, provably.

Two halves, one arithmetic.

**Solvency (pure).** Per asset, *custody* is what the group keys control on the source chain
(Bitcoin: UTXOs at the custody address and at deposit addresses; ETH: the custody address and
deposit addresses not yet swept) and *liabilities* are the wrapped supply on the destination chain
plus withdrawals in flight (burned, not yet paid). Sweeps and miner fees cost custody a little that
withdrawal fees later earn back, so each asset has a ``tolerance`` — THORChain's permitted gap:
solvent ⇔ ``custody + tolerance ≥ liabilities``. :func:`after_mint` and :func:`after_payout` give
the verdict *after* an action, so a node co-signs a mint or a payout only if the bridge is still
solvent once it happened (a node that finds otherwise refuses, and the network pauses minting).

**Proof of reserves.** A report anyone can check against the chains without trusting the
operators: for every custody and deposit address, the group key's BIP32 child at the stated path
signs :func:`attestation_digest` over a fresh challenge (a recent destination-chain block: its hash
cannot be known in advance, so the signatures prove the key was usable *after* that block), and the
report states each address's balance at a stated source-chain block, the wrapped supply at a stated
destination block and the withdrawals in flight. :func:`build_report` makes one (the threshold
network signs each attestation at its path), :func:`verify_report` checks one, and
``python -m fusion_prime.bridge.reserves verify`` is the command line for it.

Why a verifier can trust a verified report:

* each child key is recomputed from the group key and the path (``protocol/hd``), so its private
  key is the group's key plus a public tweak — only a threshold of operators can sign with it,
  whatever chain code the report states; and the group key is checked to be the Gateway's signer
  (``activeSigner``), so the key whose reserves are proven is the key that mints;
* each address is recomputed from its child key, so coins are counted only at addresses the group
  controls, and an address or a coin is counted at most once (duplicates make the report malformed);
* balances, supply and the challenge are read from the chains, never taken from the report:
  solvency is judged on what the chains say, and every statement that differs is a problem.

What a verifier can check at a past height, and what it cannot:

* Bitcoin keeps no historical UTXO set. A verifier can show that each listed output was created in
  a block of the active chain at or below the stated height, with the stated value and script
  (``getrawtransaction`` in that block: no transaction index needed). "Unspent at height H" is
  decided as: unspent now (``gettxout``, mempool ignored) ⇒ unspent at H; spent now ⇒ unspent at H
  exactly when the spend is in a block after H, found by reading blocks H+1…tip. That needs those
  blocks (a pruned node may lack them) and costs one block read per block of the report's age,
  which ``max_age`` bounds. A stated block that left the active chain (a reorg) makes the asset's
  balances unverifiable. A spend still in the mempool does not count: the coin was unspent at H.
* EVM chains answer ``eth_getBalance`` and ``eth_call`` at a past block only while the node keeps
  that block's state (an archive node always; a full node for about the last 128 blocks).
* A report proves the balances at its stated heights, not at the moment it is read: coins that left
  after them are not seen. ``max_age`` (per chain, in blocks behind the head) is how much of that a
  verifier accepts; the same bound makes an old challenge stale.
* That the list of in-flight withdrawals is complete cannot be checked from chain state (a burn
  that was paid and one that was not look the same on the destination chain); each listed one is
  checked to be a recorded, unrefunded burn of that asset — an omitted one understates liabilities.

Canonical JSON: keys sorted, no whitespace, ASCII; amounts as decimal strings (wei exceed what a
JSON double holds exactly); heights, output indices and burn nonces as JSON integers; Bitcoin
hashes as 64 lowercase hex digits in RPC display order, EVM hashes ``0x``-prefixed lowercase;
keys, chain code and signatures (64 bytes ``r ‖ s``) lowercase hex; Bitcoin addresses lowercase
bech32, EVM addresses EIP-55; paths ``m/…``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from coincurve import PublicKey

from fusion_prime.protocol.addresses import BECH32_HRP, ethereum_address, p2wpkh_address, segwit_decode
from fusion_prime.protocol.curve import HALF_Q, Point, Q
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.hd import derive, parse_path
from fusion_prime.signer.bitcoin import BitcoinError, address_to_script, der_encode_signature, p2wpkh_script

from .custody import CUSTODY_PURPOSE
from .derivation import DerivationError, bitcoin_network, is_deposit_path, path_string, tagged_hash
from .orders import OrderError, address_bytes, chain_key, chain_kind, to_checksum_address

if TYPE_CHECKING:
    from web3 import Web3

    from .chains.bitcoin.rpcclient import BitcoinRPC

RESERVES_TAG = b"FusionPrime/reserves/v1"
REPORT_FORMAT = "fusion-prime/proof-of-reserves"
REPORT_VERSION = 1
ROLES = ("custody", "deposit")
COIN = 100_000_000

#: How many blocks behind its chain's head a stated block may be before the report is stale:
#: about a day on Bitcoin (10-minute blocks) and on Ethereum (12-second blocks).
DEFAULT_MAX_AGE = {"bitcoin": 144, "evm": 7200}

#: topic0 of ``AssetConfigured(address,bytes32,uint32,(string,uint8,uint256,...))`` (contracts/README.md)
ASSET_CONFIGURED_TOPIC = "0xa6558d06c6f5578faf1dd53404b676e81c2335a51e7dba9d8f3bfefc4f720d2c"


# =========================================================================================
# Solvency (pure)
# =========================================================================================


class SolvencyError(ValueError):
    """A solvency input is not a non-negative integer amount."""


def _non_negative(value: Any, what: str, error: type[ValueError] = SolvencyError) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise error(f"{what} must be a non-negative integer, got {value!r}")
    return value


@dataclass(frozen=True)
class SolvencyInputs:
    """One asset's books in base units of its source chain (satoshi, wei)."""

    asset: str  # a name for reasons and logs: the symbol, e.g. "fpBTC"
    custody: int  # what the group keys control on the source chain
    supply: int  # the wrapped supply on the destination chain
    in_flight: int = 0  # withdrawals burned (so no longer in supply) but not yet paid
    tolerance: int = 0  # the permitted gap (sweep and miner fees not yet earned back)
    #: what the settlement ledger owes in this asset (issue 16): account balances plus account
    #: withdrawals not yet paid out — deposits credited to accounts are in custody like minted ones
    ledger: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.asset, str) or not self.asset:
            raise SolvencyError("asset must be a non-empty name")
        for name in ("custody", "supply", "in_flight", "tolerance", "ledger"):
            _non_negative(getattr(self, name), f"{self.asset} {name}")

    @property
    def liabilities(self) -> int:
        return self.supply + self.in_flight + self.ledger


@dataclass(frozen=True)
class SolvencyVerdict:
    """``gap`` is how much custody falls short of liabilities (negative: a surplus); solvent
    means ``gap ≤ tolerance``. ``reason`` states the numbers and the asset either way."""

    ok: bool
    custody: int
    liabilities: int
    gap: int
    reason: str


def _verdict(inputs: SolvencyInputs, prefix: str = "") -> SolvencyVerdict:
    liabilities = inputs.liabilities
    gap = liabilities - inputs.custody
    ok = gap <= inputs.tolerance
    ledger = f" + ledger {inputs.ledger}" if inputs.ledger else ""
    books = (f"custody {inputs.custody} + tolerance {inputs.tolerance} {'>=' if ok else '<'} liabilities "
             f"{liabilities} (supply {inputs.supply} + in flight {inputs.in_flight}{ledger})")
    if ok:
        reason = f"{prefix}{inputs.asset} solvent: {books}"
    else:
        reason = f"{prefix}{inputs.asset} insolvent: {books}: short by {gap - inputs.tolerance}"
    return SolvencyVerdict(ok=ok, custody=inputs.custody, liabilities=liabilities, gap=gap, reason=reason)


def check_solvency(inputs: SolvencyInputs) -> SolvencyVerdict:
    """Whether custody, with the permitted gap, covers the wrapped supply and the unpaid burns."""
    return _verdict(inputs)


def after_mint(inputs: SolvencyInputs, amount: int) -> SolvencyVerdict:
    """The verdict once ``amount`` more is minted: the deposit it mints is already in custody (a
    deposit address counts), so only the supply grows. A node co-signs the mint only if ``ok``."""
    _non_negative(amount, f"{inputs.asset} mint amount")
    after = SolvencyInputs(inputs.asset, inputs.custody, inputs.supply + amount, inputs.in_flight, inputs.tolerance,
                           inputs.ledger)
    return _verdict(after, f"after minting {amount}: ")


def after_payout(inputs: SolvencyInputs, burned_amount: int, spent: int) -> SolvencyVerdict:
    """The verdict once a payout of burns totalling ``burned_amount`` confirms, taking ``spent``
    out of custody (what leaves the group: payouts plus miner fee, i.e. inputs minus change).

    The burns already left the supply; the payout moves them out of the in-flight liabilities.
    A payout for more than is in flight, or spending more than custody holds, is refused: the
    books cannot explain it, whatever the totals say.
    """
    _non_negative(burned_amount, f"{inputs.asset} burned amount")
    _non_negative(spent, f"{inputs.asset} payout spend")
    prefix = f"after paying out {burned_amount} (spending {spent}): "
    if burned_amount > inputs.in_flight:
        return SolvencyVerdict(False, inputs.custody, inputs.liabilities, inputs.liabilities - inputs.custody,
                               f"{prefix}{inputs.asset}: pays {burned_amount} but only {inputs.in_flight} "
                               "is in flight (burned and unpaid)")
    if spent > inputs.custody:
        return SolvencyVerdict(False, inputs.custody, inputs.liabilities, inputs.liabilities - inputs.custody,
                               f"{prefix}{inputs.asset}: spends {spent} but custody holds only {inputs.custody}")
    after = SolvencyInputs(inputs.asset, inputs.custody - spent, inputs.supply, inputs.in_flight - burned_amount,
                           inputs.tolerance, inputs.ledger)
    return _verdict(after, prefix)


# =========================================================================================
# The report
# =========================================================================================


class ReportError(ValueError):
    """A report, or an input to one, is malformed or not in its canonical spelling."""


def _hex_bytes(text: Any, size: int, what: str, *, prefix: bool = False) -> bytes:
    """Bytes of lowercase hex (``0x``-prefixed when ``prefix``), exactly ``size`` bytes."""
    if not isinstance(text, str):
        raise ReportError(f"{what} must be a hex string")
    body = text
    if prefix:
        if not text.startswith("0x"):
            raise ReportError(f"{what} must start with 0x")
        body = text[2:]
    if len(body) != 2 * size or body != body.lower() or any(c not in "0123456789abcdef" for c in body):
        raise ReportError(f"{what} must be {2 * size} lowercase hex digits")
    return bytes.fromhex(body)


def _block_hash_bytes(chain: str, block_hash: Any, what: str) -> bytes:
    """32 bytes of a block hash in its chain's canonical spelling (see the module docstring)."""
    return _hex_bytes(block_hash, 32, what, prefix=_kind(chain) == "evm")


def _kind(chain: Any) -> str:
    try:
        return chain_kind(chain)
    except OrderError as exc:
        raise ReportError(str(exc)) from None


def _network(chain: str) -> str:
    try:
        return bitcoin_network(chain)
    except DerivationError as exc:
        raise ReportError(str(exc)) from None


def _height(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ReportError(f"{what} must be an integer in [0, 2^63)")
    return value


def _amount(value: Any, what: str) -> int:
    return _non_negative(value, what, ReportError)


def canonical_address(chain: str, address: Any) -> str:
    """``address`` if it is in its canonical spelling on ``chain`` (lowercase bech32 on a Bitcoin
    chain, EIP-55 on an EVM chain); ReportError otherwise — one address, one signed byte string."""
    if not isinstance(address, str):
        raise ReportError("address must be a string")
    if _kind(chain) == "bitcoin":
        if address != address.lower():
            raise ReportError(f"Bitcoin address {address!r} must be lowercase")
        try:
            segwit_decode(BECH32_HRP[_network(chain)], address)
        except InvalidInput as exc:
            raise ReportError(f"{address!r}: {exc}") from None
        return address
    try:
        raw = address_bytes(address)
    except OrderError as exc:
        raise ReportError(str(exc)) from None
    if to_checksum_address(raw) != address:
        raise ReportError(f"EVM address {address!r} must be in its EIP-55 spelling")
    return address


def _path_text(path: tuple[int, ...]) -> str:
    """``m/…``; the root itself is ``m`` (``parse_path`` reads both back)."""
    return path_string(path) if path else "m"


def _path(value: Any, what: str) -> tuple[int, ...]:
    try:
        return parse_path(value)
    except (InvalidInput, TypeError) as exc:
        raise ReportError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class Challenge:
    """A destination-chain block the report is fresh against: its hash was unknowable before it was
    mined, so a signature over it was made after it."""

    chain: str
    height: int
    block_hash: str

    def __post_init__(self) -> None:
        _block_hash_bytes(self.chain, self.block_hash, "challenge hash")
        _height(self.height, "challenge height")


def attestation_digest(challenge: Challenge, chain: str, address: str) -> bytes:
    """What the child key of ``address`` signs: BIP340's tagged hash (tag ``RESERVES_TAG``) of

    ``u8 len ‖ challenge chain ‖ u64 challenge height ‖ challenge hash (32) ‖ u8 len ‖ chain ‖ u8 len
    ‖ address``, chain ids and the address as ASCII in their canonical spelling.

    The tag keeps the digest apart from every other hash the key signs (a sighash, an EIP-712
    order), and the length prefixes keep any two inputs apart. A node asked to sign an attestation
    must recompute this digest itself from (challenge, chain, address) — signing a digest handed to
    it could sign a transaction instead.
    """
    if not isinstance(challenge, Challenge):
        raise ReportError("challenge must be a Challenge")
    _kind(chain)
    chain_b = chain.encode("ascii")
    address_b = canonical_address(chain, address).encode("ascii")
    challenge_chain = challenge.chain.encode("ascii")
    message = (bytes([len(challenge_chain)]) + challenge_chain + challenge.height.to_bytes(8, "big")
               + _block_hash_bytes(challenge.chain, challenge.block_hash, "challenge hash")
               + bytes([len(chain_b)]) + chain_b + bytes([len(address_b)]) + address_b)
    return tagged_hash(RESERVES_TAG, message)


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway whose tokens the report covers, and the path of its signer under the group key."""

    chain: str
    address: str
    signer_path: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if _kind(self.chain) != "evm":
            raise ReportError("the Gateway lives on an EVM chain")
        canonical_address(self.chain, self.address)
        _path(self.signer_path, "signer path")


@dataclass(frozen=True)
class ReportUtxo:
    """An unspent output at the stated height: ``height`` is the block it was confirmed in (so a
    verifier finds it with ``getrawtransaction`` without a transaction index)."""

    txid: str
    vout: int
    value: int
    height: int

    def __post_init__(self) -> None:
        _hex_bytes(self.txid, 32, "txid")
        if isinstance(self.vout, bool) or not isinstance(self.vout, int) or not 0 <= self.vout < 2**32:
            raise ReportError("vout must be an integer in [0, 2^32)")
        _amount(self.value, "UTXO value")
        _height(self.height, "UTXO height")


@dataclass(frozen=True)
class AddressProof:
    """One address of the group: its path, child key, attestation signature and balance."""

    role: str  # "custody" or "deposit"
    address: str
    path: tuple[int, ...]
    public_key: bytes  # compressed child key
    signature: bytes  # r ‖ s over attestation_digest(challenge, chain, address)
    balance: int
    utxos: tuple[ReportUtxo, ...] | None = None  # Bitcoin only

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ReportError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        _path(self.path, "path")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != 33 or self.public_key[0] not in (2, 3):
            raise ReportError("public key must be 33 bytes (compressed)")
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise ReportError("signature must be 64 bytes (r ‖ s)")
        _amount(self.balance, "balance")
        if self.utxos is not None:
            if not isinstance(self.utxos, tuple) or not all(isinstance(u, ReportUtxo) for u in self.utxos):
                raise ReportError("utxos must be a tuple of ReportUtxo")
            outpoints = [(u.txid, u.vout) for u in self.utxos]
            if len(set(outpoints)) != len(outpoints):
                raise ReportError(f"{self.address}: a UTXO is listed twice")


@dataclass(frozen=True)
class SupplyStatement:
    """The wrapped token's ``totalSupply`` at a destination block."""

    token: str
    block: int
    block_hash: str
    amount: int

    def __post_init__(self) -> None:
        _height(self.block, "supply block")
        _hex_bytes(self.block_hash, 32, "supply block hash", prefix=True)
        _amount(self.amount, "supply")
        try:
            if to_checksum_address(address_bytes(self.token)) != self.token:
                raise ReportError(f"token {self.token!r} must be in its EIP-55 spelling")
        except OrderError as exc:
            raise ReportError(str(exc)) from None


@dataclass(frozen=True)
class InFlightWithdrawal:
    """A burn the bridge has not paid yet: ``Gateway.burnStatus(burn_nonce, token, burner, amount)``."""

    burn_nonce: int
    burner: str
    amount: int

    def __post_init__(self) -> None:
        _height(self.burn_nonce, "burn nonce")
        if self.burn_nonce == 0:
            raise ReportError("burn nonces start at 1")
        try:
            if to_checksum_address(address_bytes(self.burner)) != self.burner:
                raise ReportError(f"burner {self.burner!r} must be in its EIP-55 spelling")
        except OrderError as exc:
            raise ReportError(str(exc)) from None
        _amount(self.amount, "in-flight amount")


@dataclass(frozen=True)
class Totals:
    """The report's own sums, stated so a reader sees them at once (the verifier recomputes them)."""

    custody: int
    supply: int
    in_flight: int
    liabilities: int

    def __post_init__(self) -> None:
        for name in ("custody", "supply", "in_flight", "liabilities"):
            _amount(getattr(self, name), f"total {name}")


@dataclass(frozen=True)
class AssetReserves:
    """One asset: its source chain's balances at one block, its supply, its unpaid burns."""

    symbol: str
    source_chain: str
    height: int
    block_hash: str
    tolerance: int
    addresses: tuple[AddressProof, ...]
    supply: SupplyStatement
    in_flight: tuple[InFlightWithdrawal, ...]
    totals: Totals

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or not self.symbol or not self.symbol.isprintable():
            raise ReportError("symbol must be a non-empty printable string")
        kind = _kind(self.source_chain)
        if kind == "bitcoin":
            _network(self.source_chain)
        _height(self.height, f"{self.symbol} height")
        _block_hash_bytes(self.source_chain, self.block_hash, f"{self.symbol} block hash")
        _amount(self.tolerance, f"{self.symbol} tolerance")
        if not all(isinstance(a, AddressProof) for a in self.addresses):
            raise ReportError("addresses must be AddressProof values")
        seen: set[str] = set()
        outpoints: set[tuple[str, int]] = set()
        for proof in self.addresses:
            canonical_address(self.source_chain, proof.address)
            if proof.address in seen:
                raise ReportError(f"{self.symbol}: address {proof.address} is listed twice")
            seen.add(proof.address)
            if (proof.utxos is None) != (kind == "evm"):
                raise ReportError(f"{self.symbol}: {proof.address}: UTXOs are listed for Bitcoin addresses only "
                                  "(and must be, even if none)")
            for u in proof.utxos or ():
                if (u.txid, u.vout) in outpoints:
                    raise ReportError(f"{self.symbol}: UTXO {u.txid}:{u.vout} is listed under two addresses")
                outpoints.add((u.txid, u.vout))
        nonces = [w.burn_nonce for w in self.in_flight]
        if len(set(nonces)) != len(nonces):
            raise ReportError(f"{self.symbol}: an in-flight burn is listed twice")


def _custody_total(asset: AssetReserves) -> int:
    return sum(p.balance for p in asset.addresses)


def _in_flight_total(asset: AssetReserves) -> int:
    return sum(w.amount for w in asset.in_flight)


@dataclass(frozen=True)
class ReservesReport:
    """A whole proof of reserves (see the module docstring); ``to_json`` is its canonical form."""

    challenge: Challenge
    group_key: bytes  # compressed
    chain_code: bytes
    gateway: GatewayRef
    assets: tuple[AssetReserves, ...]
    version: int = REPORT_VERSION

    def __post_init__(self) -> None:
        if self.version != REPORT_VERSION:
            raise ReportError(f"unsupported report version {self.version!r} (this verifier reads {REPORT_VERSION})")
        if not isinstance(self.challenge, Challenge) or not isinstance(self.gateway, GatewayRef):
            raise ReportError("challenge and gateway must be Challenge and GatewayRef values")
        try:
            Point.from_bytes(self.group_key)
        except (InvalidInput, TypeError, ValueError):
            raise ReportError("group key is not a compressed secp256k1 point") from None
        if not isinstance(self.chain_code, bytes) or len(self.chain_code) != 32:
            raise ReportError("chain code must be 32 bytes")
        if not self.assets or not all(isinstance(a, AssetReserves) for a in self.assets):
            raise ReportError("a report covers at least one asset")
        for attr in ("symbol", "source_chain"):
            values = [getattr(a, attr) for a in self.assets]
            if len(set(values)) != len(values):
                # one source chain per asset: the native coin's balances would otherwise count twice
                raise ReportError(f"two assets share a {attr.replace('_', ' ')}")
        tokens = [a.supply.token for a in self.assets]
        if len(set(tokens)) != len(tokens):
            raise ReportError("two assets share a token")

    # -- canonical encodings

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "version": self.version,
            "challenge": {"chain": self.challenge.chain, "height": self.challenge.height,
                          "hash": self.challenge.block_hash},
            "group_key": {"public_key": self.group_key.hex(), "chain_code": self.chain_code.hex()},
            "gateway": {"chain": self.gateway.chain, "address": self.gateway.address,
                        "signer_path": _path_text(self.gateway.signer_path)},
            "assets": [_asset_to_dict(a) for a in self.assets],
        }

    def to_json(self) -> str:
        """Keys sorted, no whitespace, ASCII: one report, one byte string."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON: what to publish beside the report."""
        return hashlib.sha256(self.to_json().encode("ascii")).digest()

    @classmethod
    def from_dict(cls, data: Any) -> ReservesReport:
        """Refuses anything but a version-1 report: unknown or missing keys, wrong types, spellings
        that are not canonical, duplicate addresses, UTXOs, assets."""
        d = _obj(data, "report", {"format", "version", "challenge", "group_key", "gateway", "assets"})
        if d["format"] != REPORT_FORMAT:
            raise ReportError(f"report: format must be {REPORT_FORMAT!r}")
        if d["version"] != REPORT_VERSION or isinstance(d["version"], bool):
            raise ReportError(f"report: unsupported version {d['version']!r} (this verifier reads {REPORT_VERSION})")
        c = _obj(d["challenge"], "challenge", {"chain", "height", "hash"})
        g = _obj(d["group_key"], "group_key", {"public_key", "chain_code"})
        gw = _obj(d["gateway"], "gateway", {"chain", "address", "signer_path"})
        assets = d["assets"]
        if not isinstance(assets, list):
            raise ReportError("assets must be a list")
        return cls(
            challenge=Challenge(chain=_str(c["chain"], "challenge.chain"), height=c["height"], block_hash=c["hash"]),
            group_key=_hex_bytes(g["public_key"], 33, "group_key.public_key"),
            chain_code=_hex_bytes(g["chain_code"], 32, "group_key.chain_code"),
            gateway=GatewayRef(chain=_str(gw["chain"], "gateway.chain"), address=gw["address"],
                               signer_path=_path_field(gw["signer_path"], "gateway.signer_path")),
            assets=tuple(_asset_from_dict(a, f"assets[{i}]") for i, a in enumerate(assets)),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ReservesReport:
        try:
            data = json.loads(text, parse_float=_no_float, parse_constant=_no_float)
        except ReportError:
            raise
        except (ValueError, TypeError) as exc:
            raise ReportError(f"not JSON: {exc}") from None
        return cls.from_dict(data)


def _no_float(text: str) -> Any:
    raise ReportError(f"numbers in a report are integers or decimal strings, not {text!r}")


def _obj(value: Any, what: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ReportError(f"{what} must be an object")
    missing, extra = keys - value.keys(), value.keys() - keys
    if missing or extra:
        parts = ([f"missing {', '.join(sorted(missing))}"] if missing else []) + (
            [f"unknown {', '.join(sorted(extra))}"] if extra else [])
        raise ReportError(f"{what}: {'; '.join(parts)}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ReportError(f"{what} must be a string")
    return value


def _dec(value: Any, what: str) -> int:
    """A decimal-string amount: digits only, no sign, no leading zero, at most a uint256."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or (len(value) > 1 and value[0] == "0"):
        raise ReportError(f"{what} must be a decimal string without leading zeros")
    if len(value) > 78 or int(value) >= 2**256:
        raise ReportError(f"{what} is larger than any amount on chain (2^256 - 1)")
    return int(value)


def _path_field(value: Any, what: str) -> tuple[int, ...]:
    """A path in the report's one spelling, ``m/…`` with plain decimal indices."""
    if not isinstance(value, str):
        raise ReportError(f"{what} must be a string m/…")
    path = _path(value, what)
    if _path_text(path) != value:
        raise ReportError(f"{what} {value!r} is not in its canonical spelling {_path_text(path)!r}")
    return path


def _asset_to_dict(a: AssetReserves) -> dict[str, Any]:
    def proof(p: AddressProof) -> dict[str, Any]:
        out: dict[str, Any] = {"role": p.role, "address": p.address, "path": _path_text(p.path),
                               "public_key": p.public_key.hex(), "signature": p.signature.hex(),
                               "balance": str(p.balance)}
        if p.utxos is not None:
            out["utxos"] = [{"txid": u.txid, "vout": u.vout, "value": str(u.value), "height": u.height}
                            for u in p.utxos]
        return out

    return {
        "symbol": a.symbol, "source_chain": a.source_chain, "height": a.height, "block_hash": a.block_hash,
        "tolerance": str(a.tolerance),
        "addresses": [proof(p) for p in a.addresses],
        "supply": {"token": a.supply.token, "block": a.supply.block, "block_hash": a.supply.block_hash,
                   "amount": str(a.supply.amount)},
        "in_flight": [{"burn_nonce": w.burn_nonce, "burner": w.burner, "amount": str(w.amount)}
                      for w in a.in_flight],
        "totals": {"custody": str(a.totals.custody), "supply": str(a.totals.supply),
                   "in_flight": str(a.totals.in_flight), "liabilities": str(a.totals.liabilities)},
    }


def _asset_from_dict(value: Any, where: str) -> AssetReserves:
    d = _obj(value, where, {"symbol", "source_chain", "height", "block_hash", "tolerance", "addresses", "supply",
                            "in_flight", "totals"})
    if not isinstance(d["addresses"], list) or not isinstance(d["in_flight"], list):
        raise ReportError(f"{where}: addresses and in_flight must be lists")
    addresses = []
    for i, entry in enumerate(d["addresses"]):
        w = f"{where}.addresses[{i}]"
        keys = {"role", "address", "path", "public_key", "signature", "balance"}
        p = _obj(entry, w, keys | ({"utxos"} if isinstance(entry, dict) and "utxos" in entry else set()))
        utxos = None
        if "utxos" in p:
            if not isinstance(p["utxos"], list):
                raise ReportError(f"{w}.utxos must be a list")
            utxos = tuple(ReportUtxo(txid=_str(u["txid"], f"{w}.utxos[{j}].txid"), vout=u["vout"],
                                     value=_dec(u["value"], f"{w}.utxos[{j}].value"), height=u["height"])
                          for j, u in ((j, _obj(u, f"{w}.utxos[{j}]", {"txid", "vout", "value", "height"}))
                                       for j, u in enumerate(p["utxos"])))
        addresses.append(AddressProof(
            role=_str(p["role"], f"{w}.role"), address=_str(p["address"], f"{w}.address"),
            path=_path_field(p["path"], f"{w}.path"), public_key=_hex_bytes(p["public_key"], 33, f"{w}.public_key"),
            signature=_hex_bytes(p["signature"], 64, f"{w}.signature"), balance=_dec(p["balance"], f"{w}.balance"),
            utxos=utxos))
    s = _obj(d["supply"], f"{where}.supply", {"token", "block", "block_hash", "amount"})
    t = _obj(d["totals"], f"{where}.totals", {"custody", "supply", "in_flight", "liabilities"})
    in_flight = tuple(
        InFlightWithdrawal(burn_nonce=w["burn_nonce"], burner=_str(w["burner"], f"{where}.in_flight[{i}].burner"),
                           amount=_dec(w["amount"], f"{where}.in_flight[{i}].amount"))
        for i, w in ((i, _obj(w, f"{where}.in_flight[{i}]", {"burn_nonce", "burner", "amount"}))
                     for i, w in enumerate(d["in_flight"])))
    return AssetReserves(
        symbol=_str(d["symbol"], f"{where}.symbol"), source_chain=_str(d["source_chain"], f"{where}.source_chain"),
        height=d["height"], block_hash=d["block_hash"], tolerance=_dec(d["tolerance"], f"{where}.tolerance"),
        addresses=tuple(addresses),
        supply=SupplyStatement(token=_str(s["token"], f"{where}.supply.token"), block=s["block"],
                               block_hash=s["block_hash"], amount=_dec(s["amount"], f"{where}.supply.amount")),
        in_flight=in_flight,
        totals=Totals(custody=_dec(t["custody"], f"{where}.totals.custody"),
                      supply=_dec(t["supply"], f"{where}.totals.supply"),
                      in_flight=_dec(t["in_flight"], f"{where}.totals.in_flight"),
                      liabilities=_dec(t["liabilities"], f"{where}.totals.liabilities")))


def solvency_inputs(asset: AssetReserves) -> SolvencyInputs:
    """The report's stated books of one asset as solvency inputs."""
    return SolvencyInputs(asset.symbol, _custody_total(asset), asset.supply.amount, _in_flight_total(asset),
                          asset.tolerance)


def summary(report: ReservesReport) -> str:
    """One line: the challenge and each asset's custody against its liabilities (as stated)."""
    c = report.challenge
    parts = []
    for a in report.assets:
        v = check_solvency(solvency_inputs(a))
        parts.append(f"{a.symbol} custody {v.custody} >= liabilities {v.liabilities} (supply {a.supply.amount} + "
                     f"in flight {_in_flight_total(a)}, tolerance {a.tolerance}) at {a.source_chain}@{a.height}"
                     if v.ok else v.reason)
    return f"proof of reserves against {c.chain}@{c.height} ({c.block_hash}): " + "; ".join(parts)


# =========================================================================================
# Chain readers
# =========================================================================================


@dataclass(frozen=True)
class ScannedUtxo:
    script: bytes
    txid: str
    vout: int
    value: int
    height: int


@dataclass(frozen=True)
class UtxoScan:
    """The UTXOs paying some scripts, all as of one block (``scantxoutset`` is atomic)."""

    height: int
    block_hash: str
    utxos: tuple[ScannedUtxo, ...]


@runtime_checkable
class BitcoinReader(Protocol):
    """What the report needs from a Bitcoin node (hashes and txids in RPC display order)."""

    def genesis_hash(self) -> str: ...
    def tip_height(self) -> int: ...
    def block_hash(self, height: int) -> str | None: ...  # active chain; None past the tip
    def scan(self, scripts: Sequence[bytes]) -> UtxoScan: ...
    def output(self, txid: str, vout: int, block_hash: str) -> tuple[int, bytes] | None: ...  # (value, script)
    def is_unspent(self, txid: str, vout: int) -> bool: ...  # in the active chain's UTXO set, mempool ignored
    def spent_outpoints(self, block_hash: str) -> frozenset[tuple[str, int]]: ...


@runtime_checkable
class EvmReader(Protocol):
    """What the report needs from an EVM node (every view at a given block number)."""

    def chain_id(self) -> int: ...
    def head(self) -> int: ...
    def block_hash(self, number: int) -> str | None: ...  # 0x-prefixed lowercase; None past the head
    def balance(self, address: str, block: int) -> int: ...
    def total_supply(self, token: str, block: int) -> int: ...
    def token_gateway(self, token: str, block: int) -> str: ...
    def gateway_signer(self, gateway: str, block: int) -> str: ...
    def asset_source_chain(self, gateway: str, token: str, block: int) -> bytes: ...  # chainKey (32 bytes)
    def asset_supply(self, gateway: str, token: str, block: int) -> int: ...
    def burn_status(self, gateway: str, burn_nonce: int, token: str, burner: str, amount: int,
                    block: int) -> tuple[bool, bool]: ...  # (recorded, refunded)
    def configured_assets(self, gateway: str, to_block: int) -> dict[str, bytes]: ...  # token -> chainKey


ChainReader = BitcoinReader | EvmReader


def _sat(value: Any) -> int:
    try:
        sat = Decimal(str(value)) * COIN
    except InvalidOperation:
        raise ReportError(f"not an amount: {value!r}") from None
    if sat != sat.to_integral_value() or sat < 0:
        raise ReportError(f"amount {value!r} is not a whole number of satoshi")
    return int(sat)


class BitcoinRPCReader:
    """:class:`BitcoinReader` over the Bitcoin Core JSON-RPC client (the devnet or a real bitcoind;
    no transaction index needed: every transaction is looked up in its block)."""

    def __init__(self, rpc: BitcoinRPC) -> None:
        self.rpc = rpc

    def genesis_hash(self) -> str:
        return str(self.rpc.call("getblockhash", 0))

    def tip_height(self) -> int:
        return int(self.rpc.call("getblockcount"))

    def block_hash(self, height: int) -> str | None:
        from .chains.bitcoin.rpcclient import BitcoinRPCError

        if height > self.tip_height():
            return None
        try:
            return str(self.rpc.call("getblockhash", height))
        except BitcoinRPCError:
            return None

    def scan(self, scripts: Sequence[bytes]) -> UtxoScan:
        result = self.rpc.call("scantxoutset", "start", [f"raw({s.hex()})" for s in scripts])
        wanted = set(scripts)
        utxos = []
        for u in result["unspents"]:
            script = bytes.fromhex(u["scriptPubKey"])
            if script in wanted:
                utxos.append(ScannedUtxo(script=script, txid=str(u["txid"]), vout=int(u["vout"]),
                                         value=_sat(u["amount"]), height=int(u["height"])))
        return UtxoScan(height=int(result["height"]), block_hash=str(result["bestblock"]), utxos=tuple(utxos))

    def output(self, txid: str, vout: int, block_hash: str) -> tuple[int, bytes] | None:
        from .chains.bitcoin.rpcclient import BitcoinRPCError

        try:
            tx = self.rpc.call("getrawtransaction", txid, True, block_hash)
        except BitcoinRPCError:
            return None
        outs = tx.get("vout", [])
        if not 0 <= vout < len(outs):
            return None
        return _sat(outs[vout]["value"]), bytes.fromhex(outs[vout]["scriptPubKey"]["hex"])

    def is_unspent(self, txid: str, vout: int) -> bool:
        return self.rpc.call("gettxout", txid, vout, False) is not None

    def spent_outpoints(self, block_hash: str) -> frozenset[tuple[str, int]]:
        block = self.rpc.call("getblock", block_hash, 2)
        return frozenset((str(i["txid"]), int(i["vout"])) for tx in block["tx"] for i in tx["vin"] if "txid" in i)


class Web3Reader:
    """:class:`EvmReader` over web3.py (an archive node, or one that still holds the stated blocks'
    state: ``eth_getBalance`` and ``eth_call`` at a past block need it). ``configured_assets`` reads
    the Gateway's ``AssetConfigured`` logs from block 0; a provider that caps log ranges needs a
    reader that pages them."""

    def __init__(self, w3: Web3) -> None:
        from .chainview import artifact

        self.w3 = w3
        self._gateway_abi = artifact("Gateway")["abi"]
        self._token_abi = artifact("WrappedAsset")["abi"]

    def _gateway(self, address: str) -> Any:
        return self.w3.eth.contract(address=to_checksum_address(address_bytes(address)), abi=self._gateway_abi)

    def _token(self, address: str) -> Any:
        return self.w3.eth.contract(address=to_checksum_address(address_bytes(address)), abi=self._token_abi)

    def chain_id(self) -> int:
        return int(self.w3.eth.chain_id)

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def block_hash(self, number: int) -> str | None:
        from web3.exceptions import BlockNotFound

        try:
            block = self.w3.eth.get_block(number)
        except BlockNotFound:
            return None
        return "0x" + bytes(block["hash"]).hex()

    def balance(self, address: str, block: int) -> int:
        return int(self.w3.eth.get_balance(to_checksum_address(address_bytes(address)), block_identifier=block))

    def total_supply(self, token: str, block: int) -> int:
        return int(self._token(token).functions.totalSupply().call(block_identifier=block))

    def token_gateway(self, token: str, block: int) -> str:
        return to_checksum_address(address_bytes(self._token(token).functions.gateway().call(block_identifier=block)))

    def gateway_signer(self, gateway: str, block: int) -> str:
        signer = self._gateway(gateway).functions.activeSigner().call(block_identifier=block)
        return to_checksum_address(address_bytes(signer))

    def asset_source_chain(self, gateway: str, token: str, block: int) -> bytes:
        config = self._gateway(gateway).functions.assetConfig(to_checksum_address(address_bytes(token))).call(
            block_identifier=block)
        return bytes(config[0])

    def asset_supply(self, gateway: str, token: str, block: int) -> int:
        state = self._gateway(gateway).functions.assetState(to_checksum_address(address_bytes(token))).call(
            block_identifier=block)
        return int(state[0])

    def burn_status(self, gateway: str, burn_nonce: int, token: str, burner: str, amount: int,
                    block: int) -> tuple[bool, bool]:
        recorded, refunded = self._gateway(gateway).functions.burnStatus(
            burn_nonce, to_checksum_address(address_bytes(token)), to_checksum_address(address_bytes(burner)),
            amount).call(block_identifier=block)
        return bool(recorded), bool(refunded)

    def configured_assets(self, gateway: str, to_block: int) -> dict[str, bytes]:
        logs = self.w3.eth.get_logs({"address": to_checksum_address(address_bytes(gateway)), "fromBlock": 0,
                                     "toBlock": to_block, "topics": [ASSET_CONFIGURED_TOPIC]})
        out: dict[str, bytes] = {}
        for log in logs:
            topics = [bytes(t) for t in log["topics"]]
            out[to_checksum_address(topics[1][-20:])] = topics[2]
        return out


def reader_chain_id(reader: ChainReader) -> str:
    """The CAIP-2 id of the chain a reader's endpoint is on (asked of the endpoint itself)."""
    if isinstance(reader, BitcoinReader):
        return "bip122:" + reader.genesis_hash()[:32]
    return f"eip155:{reader.chain_id()}"


# =========================================================================================
# Building a report
# =========================================================================================

#: (digest, path "m/…") -> (r, s): the threshold network's signature at that path (tests: a local key).
AttestationSigner = Callable[[bytes, str], tuple[int, int]]


@dataclass(frozen=True)
class ReserveAddress:
    """An address of the group to attest: its chain, path and role (the address itself is derived)."""

    chain: str
    path: tuple[int, ...]
    role: str

    def __post_init__(self) -> None:
        _kind(self.chain)
        _path(self.path, "path")
        if self.role not in ROLES:
            raise ReportError(f"role must be one of {', '.join(ROLES)}")

    @classmethod
    def custody(cls, chain: str, generation: int = 0) -> ReserveAddress:
        return cls(chain, (CUSTODY_PURPOSE, generation), "custody")

    @classmethod
    def deposit(cls, chain: str, path: Sequence[int]) -> ReserveAddress:
        """A deposit address by its path (``DepositAddress.path`` of ``bridge/derivation``)."""
        return cls(chain, tuple(path), "deposit")


@dataclass(frozen=True)
class AssetPlan:
    """What the operators state about an asset besides balances: its token, permitted gap and
    the burns they have not paid yet (from their own records)."""

    symbol: str
    source_chain: str
    token: str
    tolerance: int = 0
    in_flight: tuple[InFlightWithdrawal, ...] = ()


def address_of(chain: str, public_key: Point) -> str:
    """The address an attestation names: P2WPKH on Bitcoin, the EIP-55 address on EVM."""
    if _kind(chain) == "bitcoin":
        return p2wpkh_address(public_key, _network(chain))
    return ethereum_address(public_key)


def verify_attestation(public_key: bytes, digest: bytes, signature: bytes) -> bool:
    """libsecp256k1's verification of ``r ‖ s`` (which insists on low-S, as Bitcoin and EVM do)."""
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        return bool(PublicKey(public_key).verify(der_encode_signature(r, s), digest, hasher=None))
    except (ValueError, TypeError, BitcoinError):
        return False


def latest_challenge(reader: ChainReader, chain: str, depth: int = 0) -> Challenge:
    """The block ``depth`` below the head of ``chain`` as a challenge (what the operators take when
    they start a report; a little depth keeps a reorg from unmaking the challenge)."""
    head = reader.tip_height() if isinstance(reader, BitcoinReader) else reader.head()
    height = head - _non_negative(depth, "challenge depth", ReportError)
    if height < 0:
        raise ReportError(f"{chain}: the chain is not {depth} blocks long")
    block_hash = reader.block_hash(height)
    if block_hash is None:
        raise ReportError(f"{chain}: the head block {height} has no hash")
    return Challenge(chain, height, block_hash)


def _reader_for(readers: Mapping[str, ChainReader], chain: str, kind: type[Any]) -> Any:
    reader = readers.get(chain)
    if reader is None or not isinstance(reader, kind):
        raise ReportError(f"no {kind.__name__} given for {chain}")
    return reader


def build_report(*, challenge: Challenge, group_key: bytes, chain_code: bytes, gateway: GatewayRef,
                 assets: Sequence[AssetPlan], addresses: Sequence[ReserveAddress], sign: AttestationSigner,
                 readers: Mapping[str, ChainReader], skip_empty: bool = True) -> ReservesReport:
    """Read each address's balance (one block per source chain), the supply at the destination's
    head, sign each attestation at its path, and assemble the report.

    Every address is derived here from the group key (a caller's list names paths, not addresses),
    and every signature is checked before it is published, so a faulty signer is caught by the
    operators rather than by the public. With ``skip_empty`` an address holding nothing is left
    out (it proves nothing and would cost a threshold signature). Chain read errors propagate.
    """
    group = Point.from_bytes(group_key)
    by_chain: dict[str, list[ReserveAddress]] = {}
    for a in addresses:
        by_chain.setdefault(a.chain, []).append(a)
    plan_chains = {p.source_chain for p in assets}
    if stray := set(by_chain) - plan_chains:
        raise ReportError(f"addresses on chains no asset names: {', '.join(sorted(stray))}")
    destination = _reader_for(readers, gateway.chain, EvmReader)
    supply_block = destination.head()
    supply_hash = destination.block_hash(supply_block)
    if supply_hash is None:
        raise ReportError(f"{gateway.chain}: the head block {supply_block} has no hash")
    out = []
    for plan in sorted(assets, key=lambda p: p.symbol):
        chain = plan.source_chain
        derived = []
        for a in by_chain.get(chain, []):
            child = derive(group, chain_code, a.path).public_key
            derived.append((a, child, address_of(chain, child)))
        reader = _reader_for(readers, chain, BitcoinReader if _kind(chain) == "bitcoin" else EvmReader)
        proofs: list[tuple[ReserveAddress, Point, str, int, tuple[ReportUtxo, ...] | None]] = []
        if isinstance(reader, BitcoinReader):
            scripts = {p2wpkh_script(child.to_bytes()): (a, child, addr) for a, child, addr in derived}
            scan = reader.scan(list(scripts))
            height, block_hash = scan.height, scan.block_hash
            coins: dict[bytes, list[ReportUtxo]] = {s: [] for s in scripts}
            for u in scan.utxos:
                coins[u.script].append(ReportUtxo(u.txid, u.vout, u.value, u.height))
            for script, (a, child, addr) in scripts.items():
                listed = tuple(sorted(coins[script], key=lambda u: (u.txid, u.vout)))
                proofs.append((a, child, addr, sum(u.value for u in listed), listed))
        else:
            height = reader.head()
            found = reader.block_hash(height)
            if found is None:
                raise ReportError(f"{chain}: the head block {height} has no hash")
            block_hash = found
            for a, child, addr in derived:
                proofs.append((a, child, addr, reader.balance(addr, height), None))
        signed = []
        for a, child, addr, balance, utxos in sorted(proofs, key=lambda p: p[2]):
            if skip_empty and balance == 0:
                continue
            digest = attestation_digest(challenge, chain, addr)
            r, s = sign(digest, _path_text(a.path))
            if not (0 < r < Q and 0 < s < Q):
                raise ReportError(f"the signer returned an out-of-range signature for {addr}")
            s = s if s <= HALF_Q else Q - s
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
            if not verify_attestation(child.to_bytes(), digest, signature):
                raise ReportError(f"the signer's signature for {addr} at {_path_text(a.path)} does not verify")
            signed.append(AddressProof(a.role, addr, a.path, child.to_bytes(), signature, balance, utxos))
        supply = SupplyStatement(plan.token, supply_block, supply_hash,
                                 destination.total_supply(plan.token, supply_block))
        in_flight = tuple(sorted(plan.in_flight, key=lambda w: w.burn_nonce))
        custody = sum(p.balance for p in signed)
        pending = sum(w.amount for w in in_flight)
        out.append(AssetReserves(plan.symbol, chain, height, block_hash, plan.tolerance, tuple(signed), supply,
                                 in_flight, Totals(custody, supply.amount, pending, supply.amount + pending)))
    return ReservesReport(challenge=challenge, group_key=group.to_bytes(), chain_code=chain_code, gateway=gateway,
                          assets=tuple(out))


# =========================================================================================
# Verifying a report
# =========================================================================================


class _Unreadable(Exception):
    """A chain read failed; the check it served becomes a problem, never a traceback."""


class _Verifier:
    def __init__(self, report: ReservesReport, readers: Mapping[str, ChainReader],
                 max_age: Mapping[str, int], tolerances: Mapping[str, int]) -> None:
        self.report = report
        self.readers = readers
        self.max_age = max_age
        self.tolerances = tolerances
        self.problems: list[str] = []
        self._identified: dict[str, bool] = {}
        self._heads: dict[str, int] = {}
        self._spent: dict[tuple[str, int], frozenset[tuple[str, int]] | None] = {}

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def read(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # any endpoint failure makes this check unverifiable: say so
            self.problem(f"{what}: chain read failed: {type(exc).__name__}: {exc}")
            raise _Unreadable from None

    # -- chains
    def reader(self, chain: str, kind: str) -> Any:
        """The reader of ``chain`` once its endpoint is shown to be on that chain, else None."""
        reader = self.readers.get(chain)
        if reader is None:
            if chain not in self._identified:
                self.problem(f"{chain}: no endpoint given for this chain: nothing on it can be checked")
                self._identified[chain] = False
            return None
        if chain not in self._identified:
            wants = BitcoinReader if kind == "bitcoin" else EvmReader
            if not isinstance(reader, wants):
                self.problem(f"{chain}: the endpoint given is not a {kind} reader")
                self._identified[chain] = False
                return None
            try:
                actual = self.read(f"{chain}: chain id", lambda: reader_chain_id(reader))
            except _Unreadable:
                self._identified[chain] = False
                return None
            if actual != chain:
                self.problem(f"{chain}: the endpoint given is on {actual}, another chain")
            self._identified[chain] = actual == chain
        return reader if self._identified[chain] else None

    def head(self, chain: str, reader: Any) -> int:
        if chain not in self._heads:
            self._heads[chain] = self.read(
                f"{chain}: head", reader.tip_height if isinstance(reader, BitcoinReader) else reader.head)
        return self._heads[chain]

    def block(self, chain: str, reader: Any, height: int, block_hash: str, what: str) -> bool:
        """Whether ``block_hash`` is the active chain's block at ``height`` and recent enough."""
        try:
            found = self.read(f"{what}: block {height}", lambda: reader.block_hash(height))
            head = self.head(chain, reader)
        except _Unreadable:
            return False
        if found is None:
            self.problem(f"{what}: {chain} has no block at height {height} (head {head}): unknown block")
            return False
        if found.lower() != block_hash:
            self.problem(f"{what}: block {block_hash} is not on {chain} (the block at height {height} is {found})")
            return False
        age = head - height
        limit = self.max_age.get(chain, DEFAULT_MAX_AGE[_kind(chain)])
        if age > limit:
            self.problem(f"{what}: stale: block {height} of {chain} is {age} blocks behind the head {head} "
                         f"(at most {limit} allowed)")
            return False
        return True

    # -- the report as a whole
    def run(self, expected_group_key: bytes | None) -> None:
        r = self.report
        if expected_group_key is not None and expected_group_key != r.group_key:
            self.problem(f"group key {r.group_key.hex()} is not the expected {expected_group_key.hex()}")
        c = r.challenge
        reader = self.reader(c.chain, _kind(c.chain))
        if reader is not None:
            self.block(c.chain, reader, c.height, c.block_hash, "challenge")
        self.check_gateway()
        for asset in r.assets:
            try:
                self.check_asset(asset)
            except ReportError as exc:  # a value the chain answered that cannot even be read
                self.problem(f"{asset.symbol}: {exc}")

    def check_gateway(self) -> None:
        r, gw = self.report, self.report.gateway
        reader = self.reader(gw.chain, "evm")
        if reader is None:
            return
        try:
            signer_key = derive(Point.from_bytes(r.group_key), r.chain_code, gw.signer_path).public_key
        except InvalidInput as exc:
            self.problem(f"gateway signer path {_path_text(gw.signer_path)}: {exc}")
            return
        block = r.challenge.height if r.challenge.chain == gw.chain else None
        try:
            at = block if block is not None else self.head(gw.chain, reader)
            signer = self.read("gateway signer", lambda: reader.gateway_signer(gw.address, at))
            upto = max(a.supply.block for a in r.assets)
            configured = self.read("gateway assets", lambda: reader.configured_assets(gw.address, upto))
        except _Unreadable:
            return
        expected = ethereum_address(signer_key)
        if signer != expected:
            self.problem(f"the group key's signer at {_path_text(gw.signer_path)} is {expected}, but the Gateway "
                         f"{gw.address} is signed for by {signer} at block {at}: not this group's Gateway")
        listed = {a.supply.token for a in r.assets}
        for token in sorted(set(configured) - listed):
            self.problem(f"the Gateway {gw.address} has asset {token} configured (source chain key "
                         f"0x{configured[token].hex()}) but the report leaves it out: its supply is a liability too")

    # -- one asset
    def check_asset(self, asset: AssetReserves) -> None:
        tag = asset.symbol
        kind = _kind(asset.source_chain)
        custody = self.check_balances(asset, kind)
        supply = self.check_supply(asset)
        if asset.totals != Totals(_custody_total(asset), asset.supply.amount, _in_flight_total(asset),
                                  asset.supply.amount + _in_flight_total(asset)):
            self.problem(f"{tag}: stated totals {asset.totals} do not add up (custody {_custody_total(asset)}, "
                         f"supply {asset.supply.amount}, in flight {_in_flight_total(asset)})")
        if custody is None or supply is None:
            self.problem(f"{tag}: solvency not checked: the chains could not confirm "
                         f"{'the balances' if custody is None else 'the supply'}")
            return
        tolerance = self.tolerances.get(tag, asset.tolerance)
        verdict = check_solvency(SolvencyInputs(tag, custody, supply, _in_flight_total(asset), tolerance))
        if not verdict.ok:
            self.problem(f"{verdict.reason} (custody as the chain shows it at {asset.source_chain}@{asset.height}, "
                         f"supply at block {asset.supply.block})")

    def proof_ok(self, asset: AssetReserves, proof: AddressProof) -> bool:
        """The address is the group key's child at its path, and that child signed the challenge."""
        r, where = self.report, f"{asset.symbol}: {proof.address}"
        ok = True
        try:
            child = derive(Point.from_bytes(r.group_key), r.chain_code, proof.path).public_key
        except InvalidInput as exc:
            self.problem(f"{where}: path {_path_text(proof.path)}: {exc}")
            return False
        if child.to_bytes() != proof.public_key:
            self.problem(f"{where}: public key {proof.public_key.hex()} is not the group key's child at "
                         f"{_path_text(proof.path)} ({child.to_bytes().hex()}): not derived from the group key")
            ok = False
        try:
            own_address = address_of(asset.source_chain, Point.from_bytes(proof.public_key))
        except InvalidInput:
            self.problem(f"{where}: public key {proof.public_key.hex()} is not a point")
            return False
        if own_address != proof.address:
            self.problem(f"{where}: is not the address of its public key ({own_address})")
            ok = False
        digest = attestation_digest(r.challenge, asset.source_chain, proof.address)
        if not verify_attestation(proof.public_key, digest, proof.signature):
            self.problem(f"{where}: signature does not verify under its public key over the challenge "
                         f"{r.challenge.block_hash} (a low-S ECDSA signature of the attestation digest)")
            ok = False
        # a settlement account's deposit address (issue 16) holds custody like a mint deposit address
        shape = {"custody": len(proof.path) == 2 and proof.path[0] == CUSTODY_PURPOSE,
                 "deposit": is_deposit_path(proof.path)}
        if not shape[proof.role]:
            self.problem(f"{where}: role {proof.role} but path {_path_text(proof.path)} is not a {proof.role} path")
        return ok

    def check_balances(self, asset: AssetReserves, kind: str) -> int | None:
        """The custody the chain confirms for this asset (only at addresses with valid proofs), or
        None when the stated block itself cannot be checked."""
        chain, tag = asset.source_chain, asset.symbol
        valid = {p.address: self.proof_ok(asset, p) for p in asset.addresses}
        reader = self.reader(chain, kind)
        if reader is None or not self.block(chain, reader, asset.height, asset.block_hash, f"{tag} balances"):
            return None
        custody = 0
        for proof in asset.addresses:
            where = f"{tag}: {proof.address}"
            if kind == "evm":
                try:
                    balance = self.read(where, lambda p=proof: reader.balance(p.address, asset.height))
                except _Unreadable:
                    continue
                if balance != proof.balance:
                    self.problem(f"{where}: balance at block {asset.height} is {balance} wei, the report says "
                                 f"{proof.balance}")
                custody += balance if valid[proof.address] else 0
                continue
            if sum(u.value for u in proof.utxos or ()) != proof.balance:
                self.problem(f"{where}: balance {proof.balance} is not the sum of its UTXOs "
                             f"({sum(u.value for u in proof.utxos or ())})")
            for u in proof.utxos or ():
                confirmed = self.check_utxo(asset, reader, proof, u)
                custody += confirmed if valid[proof.address] else 0
        return custody

    def check_utxo(self, asset: AssetReserves, reader: Any, proof: AddressProof, u: ReportUtxo) -> int:
        """The UTXO's value as the chain has it if it paid the address, was confirmed by the stated
        height and was still unspent there; 0 (and a problem) otherwise. How "unspent at a past
        height" is decided, and its limits, is in the module docstring."""
        where = f"{asset.symbol}: {proof.address}: UTXO {u.txid}:{u.vout}"
        if u.height > asset.height:
            self.problem(f"{where}: confirmed at height {u.height}, after the stated height {asset.height}")
            return 0
        try:
            block_hash = self.read(where, lambda: reader.block_hash(u.height))
            if block_hash is None:
                self.problem(f"{where}: no block at height {u.height}")
                return 0
            found = self.read(where, lambda: reader.output(u.txid, u.vout, block_hash))
            if found is None:
                self.problem(f"{where}: no such output in block {block_hash} at height {u.height}")
                return 0
            value, script = found
            try:
                wanted = address_to_script(proof.address, _network(asset.source_chain))
            except BitcoinError:
                wanted = b""
            if script != wanted:
                self.problem(f"{where}: pays script {script.hex()}, not the address")
                return 0
            if value != u.value:
                self.problem(f"{where}: value on chain is {value} sat, the report says {u.value}")
            if self.read(where, lambda: reader.is_unspent(u.txid, u.vout)):
                return value
            spent_later = self.spent_after(asset, reader)
        except _Unreadable:
            return 0
        if spent_later is None:
            self.problem(f"{where}: spent now; whether it was unspent at height {asset.height} cannot be told")
            return 0
        if (u.txid, u.vout) not in spent_later:
            self.problem(f"{where}: was spent at or before the stated height {asset.height}: not in custody there")
            return 0
        return value

    def spent_after(self, asset: AssetReserves, reader: Any) -> frozenset[tuple[str, int]] | None:
        """Outpoints spent in blocks after the asset's stated height up to the tip (cached)."""
        key = (asset.source_chain, asset.height)
        cached = self._spent
        if key in cached:
            return cached[key]
        cached[key] = None  # also the answer if a read below fails: asked again, it would fail again
        tip = self.head(asset.source_chain, reader)
        if tip - asset.height > self.max_age.get(asset.source_chain, DEFAULT_MAX_AGE["bitcoin"]):
            return None
        spent: set[tuple[str, int]] = set()
        for height in range(asset.height + 1, tip + 1):
            block_hash = self.read(f"{asset.symbol}: block {height}", lambda h=height: reader.block_hash(h))
            if block_hash is None:
                return None
            spent |= self.read(f"{asset.symbol}: block {height}", lambda b=block_hash: reader.spent_outpoints(b))
        cached[key] = frozenset(spent)
        return cached[key]

    def check_supply(self, asset: AssetReserves) -> int | None:
        """The token's supply as the destination chain has it at the stated block, or None."""
        gw, s, tag = self.report.gateway, asset.supply, asset.symbol
        reader = self.reader(gw.chain, "evm")
        if reader is None or not self.block(gw.chain, reader, s.block, s.block_hash, f"{tag} supply"):
            return None
        c = self.report.challenge
        if c.chain == gw.chain and s.block < c.height:
            self.problem(f"{tag}: supply read at block {s.block}, before the challenge block {c.height}")
        try:
            total = self.read(f"{tag} supply", lambda: reader.total_supply(s.token, s.block))
            token_gateway = self.read(f"{tag} token", lambda: reader.token_gateway(s.token, s.block))
            source_key = self.read(f"{tag} asset config", lambda: reader.asset_source_chain(gw.address, s.token,
                                                                                           s.block))
            books = self.read(f"{tag} asset state", lambda: reader.asset_supply(gw.address, s.token, s.block))
        except _Unreadable:
            return None
        if total != s.amount:
            self.problem(f"{tag}: supply stated {s.amount}, but totalSupply of {s.token} at block {s.block} is "
                         f"{total}: {'understated' if s.amount < total else 'overstated'} by {abs(total - s.amount)}")
        if token_gateway != gw.address:
            self.problem(f"{tag}: token {s.token} is minted by {token_gateway}, not by the Gateway {gw.address}")
        if source_key != chain_key(asset.source_chain):
            self.problem(f"{tag}: the Gateway does not back {s.token} with {asset.source_chain} (its source chain "
                         f"key is 0x{source_key.hex()})")
        if books != total:
            self.problem(f"{tag}: the Gateway's books say supply {books}, the token says {total}")
        for w in asset.in_flight:
            try:
                recorded, refunded = self.read(
                    f"{tag} burn {w.burn_nonce}",
                    lambda w=w: reader.burn_status(gw.address, w.burn_nonce, s.token, w.burner, w.amount, s.block))
            except _Unreadable:
                continue
            if not recorded:
                self.problem(f"{tag}: in-flight burn {w.burn_nonce} ({w.amount} by {w.burner}) is not a burn the "
                             f"Gateway recorded by block {s.block}")
            elif refunded:
                self.problem(f"{tag}: in-flight burn {w.burn_nonce} was refunded by block {s.block}")
        return total


def _parse_group_key(value: bytes | str | None) -> bytes | None:
    if value is None:
        return None
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    try:
        return Point.from_bytes(raw).to_bytes()
    except InvalidInput:
        raise ReportError("the expected group key is not a compressed secp256k1 point") from None


def verify_report(report: ReservesReport | str | bytes | Mapping[str, Any], readers: Mapping[str, ChainReader],
                  expected_group_key: bytes | str | None = None, *, max_age: Mapping[str, int] | None = None,
                  tolerances: Mapping[str, int] | None = None) -> list[str]:
    """Every problem with ``report`` against the chains (empty: valid), each naming what it is about.

    ``readers`` maps CAIP-2 ids to readers of the report's chains (the challenge's, each source
    chain, the Gateway's); each endpoint is first checked to be on the chain it is given for.
    ``max_age`` bounds, per chain, how many blocks behind its head a stated block may be
    (:data:`DEFAULT_MAX_AGE` otherwise): a challenge older than that is stale. ``tolerances``
    replaces the report's own permitted gap for the assets it names (a verifier need not accept the
    operators' figure).

    Checked: the report's form; every attestation signature (libsecp256k1, low-S) under its child
    key; each child key is the group key's child at its path and each address that key's address;
    the group key's signer address is the Gateway's ``activeSigner``; the challenge block is on its
    chain and recent; each source block is on its chain and recent; each balance at its stated
    block (Bitcoin: each UTXO existed there with its value and script and was unspent; EVM:
    ``eth_getBalance``); each token's ``totalSupply`` at the stated block, minted by that Gateway,
    backed by that source chain, equal to the Gateway's books; no asset the Gateway configured is
    missing; each in-flight burn is recorded and unrefunded; the stated totals add up; and custody
    as the chain shows it + tolerance ≥ supply as the chain shows it + in flight. What cannot be
    checked at a past height is in the module docstring.
    """
    try:
        if not isinstance(report, ReservesReport):
            report = (ReservesReport.from_dict(dict(report)) if isinstance(report, Mapping)
                      else ReservesReport.from_json(report))
        expected = _parse_group_key(expected_group_key)
    except Exception as exc:  # whatever is wrong with the input, the answer is a problem, not a traceback
        return [f"malformed report: {exc}" if isinstance(exc, ReportError)
                else f"malformed report: {type(exc).__name__}: {exc}"]
    verifier = _Verifier(report, readers, dict(max_age or {}), dict(tolerances or {}))
    verifier.run(expected)
    return verifier.problems


# =========================================================================================
# Command line
# =========================================================================================

EXIT_VALID, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def _pairs(values: Iterable[str] | None, what: str, number: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or ():
        key, sep, value = item.rpartition("=")
        if not sep or not key or not value:
            raise ReportError(f"{what} must be KEY=VALUE, got {item!r}")
        if number:
            if not value.isdigit():
                raise ReportError(f"{what} {item!r}: the value must be a non-negative integer")
            out[key] = int(value)
        else:
            out[key] = value
    return out


def add_subcommands(subparsers: Any) -> None:
    """Mount ``verify`` on an argparse subparsers object (this module's CLI, or the bridge's)."""
    p = subparsers.add_parser("verify", help="check a proof-of-reserves report against the chains",
                              description="Check a proof-of-reserves report against the chains; print each "
                                          "problem and exit 1, or print a one-line summary and exit 0.")
    p.add_argument("report", help="the report (JSON); - reads standard input")
    p.add_argument("--bitcoin-rpc", action="append", default=[], metavar="URL",
                   help="a Bitcoin node's JSON-RPC, http://user:password@host:port (repeatable)")
    p.add_argument("--bitcoin-rpc-cookie", metavar="FILE", help="bitcoind's cookie file instead of user:password")
    p.add_argument("--evm", action="append", default=[], metavar="CAIP2=URL",
                   help="an EVM chain's JSON-RPC, e.g. eip155:1=https://… (repeatable)")
    p.add_argument("--group-key", metavar="HEX", help="the group key you expect (compressed, 33 bytes)")
    p.add_argument("--max-age", action="append", default=[], metavar="CAIP2=BLOCKS",
                   help="how far behind the head a stated block may be (default: 144 on Bitcoin, 7200 on EVM)")
    p.add_argument("--tolerance", action="append", default=[], metavar="SYMBOL=UNITS",
                   help="your permitted gap for an asset instead of the report's")
    p.set_defaults(reserves_handler=run_verify)


def _readers(args: argparse.Namespace) -> dict[str, ChainReader]:
    from web3 import Web3

    from .chains.bitcoin.rpcclient import BitcoinRPC

    readers: dict[str, ChainReader] = {}
    for url in args.bitcoin_rpc:
        rpc = BitcoinRPC(url, cookie_file=args.bitcoin_rpc_cookie) if args.bitcoin_rpc_cookie else BitcoinRPC(url)
        reader = BitcoinRPCReader(rpc)
        readers[reader_chain_id(reader)] = reader
    for chain, url in _pairs(args.evm, "--evm", number=False).items():
        _kind(chain)
        readers[chain] = Web3Reader(Web3(Web3.HTTPProvider(url)))
    return readers


def run_verify(args: argparse.Namespace) -> int:
    """The ``verify`` command: problems on stdout and 1, or the summary and 0; 2 when it cannot run."""
    try:
        text = sys.stdin.read() if args.report == "-" else Path(args.report).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot read {args.report}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        max_age = _pairs(args.max_age, "--max-age", number=True)
        tolerances = _pairs(args.tolerance, "--tolerance", number=True)
        expected = _parse_group_key(args.group_key)
        readers = _readers(args)
    except Exception as exc:  # a bad argument or an endpoint that cannot even say which chain it is
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    problems = verify_report(text, readers, expected, max_age=max_age, tolerances=tolerances)
    if problems:
        for p in problems:
            print(f"problem: {p}")
        print(f"INVALID: {len(problems)} problem(s)")
        return EXIT_PROBLEMS
    print("valid: " + summary(ReservesReport.from_json(text)))
    return EXIT_VALID


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion_prime.bridge.reserves",
                                     description="Fusion Prime proof of reserves.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return int(args.reserves_handler(args))


if __name__ == "__main__":
    sys.exit(main())
