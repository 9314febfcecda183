"""Settlement checkpoints: the group-signed statement that closes a cycle, and its verification.

A cycle ends with a :class:`Checkpoint` — cycle number, the previous checkpoint's ledger root, the
new ledger root (``merkle.py``), the last replicated batch it includes, the per-asset totals and a
time. Each node co-signs (threshold ECDSA) only a checkpoint whose root it computed itself from its
own replica, so a valid signature means a threshold of nodes reached the same ledger. The signed
checkpoint goes to two places that need no trust in whoever relays it:

* the ``SettlementCheckpoints`` registry on the destination EVM chain, which checks the signature
  against the Gateway's active signer and that the chain of roots is unbroken (``publish.py``);
* a JSON file anyone can check offline, optionally with balance proofs
  (``python -m fusion_prime.bridge.settlement.checkpoint verify FILE --signer 0x…``).

**Chain.** Cycle 1 names :data:`GENESIS_ROOT` as its previous root: the root of the empty ledger
(``merkle.EMPTY_ROOT``), because the ledger starts empty. Cycle ``n + 1`` names cycle ``n``'s
``root``. Roots are never zero (a zero root must never verify — Nomad, 2022). Two cycles with no
change in between have equal roots; the chain still advances by cycle number.

**EIP-712.** Domain ``EIP712Domain(string name,string version,uint256 chainId,address
verifyingContract)`` = (``"FusionPrimeSettlement"``, ``"1"``, chain id, registry address); type
``Checkpoint(uint64 cycle,bytes32 prevRoot,bytes32 root,uint64 batchSeq,bytes32 batchHash,bytes32
totalsHash,uint64 timeMs)``. The digest is ``keccak256(0x1901 ‖ domainSeparator ‖ hashStruct)``,
so a signature is bound to one registry on one chain (no cross-chain replay).

**totalsHash** is the EIP-712 encoding of an array ``AssetTotal[]`` with ``AssetTotal(string
asset,uint256 total,uint256 pending)``: ``keccak256(hashStruct(t_1) ‖ … ‖ hashStruct(t_k))`` with
``hashStruct(t) = keccak256(typehash ‖ keccak256(utf8 asset) ‖ uint256 total ‖ uint256 pending)``
over the totals sorted by asset (``keccak256("")`` for none). Standard EIP-712, so a wallet or
Solidity can recompute it; the registry does not need to — it only stores and emits it.
``total`` is the sum of the asset's balances (the Merkle-sum tree's asset total, 0 for an asset
with no account), ``pending`` the withdrawals accepted but not yet paid out — together the
ledger's liabilities, which the bridge's proof of reserves (``bridge/reserves.py``) must cover.

**Signatures** are 65 bytes ``r ‖ s ‖ v`` with low ``s`` and ``v ∈ {27, 28}`` — what
``StrictECDSA`` on chain accepts, recovered here with coincurve (``orders.recover_signer``).

**Canonical bytes** (:meth:`Checkpoint.to_bytes`, how a checkpoint rides in a sign proposal):
``protocol/encoding`` fields ``uint version(1), uint cycle, bytes prevRoot(32), bytes root(32),
uint batchSeq, bytes batchHash(32), list[bytes(asset field ‖ uint total ‖ uint pending)], uint
timeMs``; decoding accepts exactly what encoding produces.

**JSON** (:meth:`Checkpoint.to_dict`, the file format): hashes ``0x``-prefixed lowercase hex,
amounts decimal strings (they exceed what a JSON double holds exactly), cycle / batch sequence /
time JSON integers, addresses EIP-55.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from fusion_prime.protocol.addresses import keccak256
from fusion_prime.protocol.encoding import Decoder, Encoder
from fusion_prime.protocol.errors import InvalidInput

from ..orders import (
    EIP712_DOMAIN_TYPEHASH,
    OrderError,
    address_bytes,
    checksum_address,
    encode_signature,
    recover_signer,
    to_checksum_address,
)
from .merkle import (
    EMPTY_ROOT,
    MAX_AMOUNT,
    AssetEntry,
    BalanceProof,
    LedgerTree,
    MerkleError,
    check_asset,
    compute_proof_root,
)

UINT64_MAX = 2**64 - 1
UINT256_MAX = 2**256 - 1

DOMAIN_NAME = "FusionPrimeSettlement"
DOMAIN_VERSION = "1"
CHECKPOINT_TYPE = ("Checkpoint(uint64 cycle,bytes32 prevRoot,bytes32 root,uint64 batchSeq,bytes32 batchHash,"
                   "bytes32 totalsHash,uint64 timeMs)")
CHECKPOINT_TYPEHASH = keccak256(CHECKPOINT_TYPE.encode())
ASSET_TOTAL_TYPE = "AssetTotal(string asset,uint256 total,uint256 pending)"
ASSET_TOTAL_TYPEHASH = keccak256(ASSET_TOTAL_TYPE.encode())

#: ``prevRoot`` of cycle 1: the root of the empty ledger. The registry is deployed with it.
GENESIS_ROOT = EMPTY_ROOT

#: Version of :meth:`Checkpoint.to_bytes`; bump it (and keep decoding the old one) if the layout changes.
ENCODING_VERSION = 1
FILE_FORMAT = "fusion-prime/settlement-checkpoint"
FILE_VERSION = 1

#: 32-byte digest -> (r, s, recovery id): the threshold network's signing API (as in ``bridge/deploy.py``).
DigestSigner = Callable[[bytes], tuple[int, int, int]]

Total = tuple[str, int, int]


class CheckpointError(ValueError):
    """A checkpoint, signature, file or chain of checkpoints that does not hold."""


class ChainError(CheckpointError):
    """A sequence of checkpoints that does not chain: the message names the first break."""


def _u(value: Any, what: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= limit:
        raise CheckpointError(f"{what} {value} out of range [0, {limit}]")
    return value


def _b32(value: Any, what: str, *, nonzero: bool) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise CheckpointError(f"{what} must be 32 bytes")
    if nonzero and not any(value):
        raise CheckpointError(f"{what} must not be zero")
    return bytes(value)


def _u256(value: int) -> bytes:
    return value.to_bytes(32, "big")


def domain_separator(chain_id: int, registry: str | bytes) -> bytes:
    """``hashStruct(EIP712Domain)`` of the registry at ``registry`` on chain ``chain_id``."""
    return keccak256(EIP712_DOMAIN_TYPEHASH + keccak256(DOMAIN_NAME.encode()) + keccak256(DOMAIN_VERSION.encode())
                     + _u256(_u(chain_id, "chain_id", UINT256_MAX)) + bytes(12) + address_bytes(registry, "registry"))


def totals_hash(totals: Iterable[Total]) -> bytes:
    """EIP-712 ``encodeData`` of ``AssetTotal[]`` (see the module docstring)."""
    return keccak256(b"".join(
        keccak256(ASSET_TOTAL_TYPEHASH + keccak256(asset.encode()) + _u256(total) + _u256(pending))
        for asset, total, pending in totals))


# -------------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True)
class Checkpoint:
    """The statement a cycle ends with. Every field is checked here (one spelling per value), so
    equal checkpoints compare equal, encode identically and have one digest."""

    cycle: int
    prev_root: bytes
    root: bytes
    batch_seq: int
    batch_hash: bytes
    totals: tuple[Total, ...]
    time_ms: int

    def __post_init__(self) -> None:
        if _u(self.cycle, "cycle", UINT64_MAX) < 1:
            raise CheckpointError("cycles start at 1")
        object.__setattr__(self, "prev_root", _b32(self.prev_root, "prev_root", nonzero=True))
        object.__setattr__(self, "root", _b32(self.root, "root", nonzero=True))
        _u(self.batch_seq, "batch_seq", UINT64_MAX)
        object.__setattr__(self, "batch_hash", _b32(self.batch_hash, "batch_hash", nonzero=False))
        _u(self.time_ms, "time_ms", UINT64_MAX)
        if isinstance(self.totals, str | bytes) or not isinstance(self.totals, Iterable):
            raise CheckpointError("totals must be a sequence of (asset, total, pending)")
        totals = []
        for item in self.totals:
            if not isinstance(item, tuple | list) or len(item) != 3:
                raise CheckpointError("each total must be (asset, total, pending)")
            asset, total, pending = item
            try:
                check_asset(asset)
            except MerkleError as exc:
                raise CheckpointError(str(exc)) from None
            totals.append((asset, _u(total, f"{asset} total", MAX_AMOUNT), _u(pending, f"{asset} pending", MAX_AMOUNT)))
        for a, b in pairwise(totals):
            if not a[0] < b[0]:
                raise CheckpointError(f"totals must be strictly sorted by asset: {a[0]!r} then {b[0]!r}")
        object.__setattr__(self, "totals", tuple(totals))

    # -- EIP-712

    def totals_hash(self) -> bytes:
        return totals_hash(self.totals)

    def struct_hash(self) -> bytes:
        """``hashStruct(Checkpoint)``: the typehash and each field as one 32-byte ABI word."""
        return keccak256(CHECKPOINT_TYPEHASH + _u256(self.cycle) + self.prev_root + self.root + _u256(self.batch_seq)
                         + self.batch_hash + self.totals_hash() + _u256(self.time_ms))

    def digest(self, chain_id: int, registry: str | bytes) -> bytes:
        """The EIP-712 digest the registry at ``registry`` on chain ``chain_id`` recovers the signer from."""
        return keccak256(b"\x19\x01" + domain_separator(chain_id, registry) + self.struct_hash())

    def as_tuple(self) -> tuple[int, bytes, bytes, int, bytes, bytes, int]:
        """The ``SettlementCheckpoints.Checkpoint`` calldata tuple."""
        return (self.cycle, self.prev_root, self.root, self.batch_seq, self.batch_hash, self.totals_hash(),
                self.time_ms)

    def totals_map(self) -> dict[str, tuple[int, int]]:
        """Asset → (sum of balances, pending withdrawals)."""
        return {a: (t, p) for a, t, p in self.totals}

    # -- canonical bytes

    def to_bytes(self) -> bytes:
        items = [Encoder().bytes(a.encode("ascii")).uint(t).uint(p).finish() for a, t, p in self.totals]
        return (Encoder().uint(ENCODING_VERSION).uint(self.cycle).bytes(self.prev_root).bytes(self.root)
                .uint(self.batch_seq).bytes(self.batch_hash).list_of_bytes(items).uint(self.time_ms).finish())

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Decode :meth:`to_bytes` output; anything else (another version, trailing bytes, a
        non-minimal integer, unsorted totals) raises :class:`CheckpointError`."""
        try:
            d = Decoder(data, "checkpoint")
            if d.uint(8) != ENCODING_VERSION:
                raise CheckpointError("not a version-1 encoded checkpoint")
            cycle, prev_root, root = d.uint(64), d.bytes(32), d.bytes(32)
            batch_seq, batch_hash = d.uint(64), d.bytes(32)
            totals = []
            for raw in d.list_of_bytes():
                inner = Decoder(raw, "checkpoint total")
                asset_raw = inner.bytes()
                total, pending = inner.uint(128), inner.uint(128)
                inner.finish()
                totals.append((asset_raw.decode("ascii"), total, pending))
            time_ms = d.uint(64)
            d.finish()
        except (InvalidInput, UnicodeDecodeError) as exc:
            raise CheckpointError(f"malformed checkpoint encoding: {exc}") from None
        checkpoint = cls(cycle, prev_root, root, batch_seq, batch_hash, tuple(totals), time_ms)
        if checkpoint.to_bytes() != bytes(data):  # the encoding is a bijection; belt and braces
            raise CheckpointError("non-canonical checkpoint encoding")
        return checkpoint

    # -- JSON

    def to_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "prev_root": _hex(self.prev_root), "root": _hex(self.root),
                "batch_seq": self.batch_seq, "batch_hash": _hex(self.batch_hash),
                "totals": [{"asset": a, "total": str(t), "pending": str(p)} for a, t, p in self.totals],
                "time_ms": self.time_ms}

    @classmethod
    def from_dict(cls, data: Any) -> Checkpoint:
        d = _obj(data, "checkpoint", {"cycle", "prev_root", "root", "batch_seq", "batch_hash", "totals", "time_ms"})
        totals_raw = d["totals"]
        if not isinstance(totals_raw, list):
            raise CheckpointError("checkpoint totals must be a JSON array")
        totals = []
        for item in totals_raw:
            t = _obj(item, "checkpoint total", {"asset", "total", "pending"})
            totals.append((t["asset"], _dec(t["total"], "total"), _dec(t["pending"], "pending")))
        return cls(cycle=d["cycle"], prev_root=_unhex(d["prev_root"], "prev_root"), root=_unhex(d["root"], "root"),
                   batch_seq=d["batch_seq"], batch_hash=_unhex(d["batch_hash"], "batch_hash"), totals=tuple(totals),
                   time_ms=d["time_ms"])


def next_checkpoint(previous: Checkpoint | None, tree: LedgerTree, *, batch_seq: int, batch_hash: bytes,
                    pending: Mapping[str, int], time_ms: int, genesis: bytes = GENESIS_ROOT) -> Checkpoint:
    """The checkpoint that follows ``previous`` (``None``: cycle 1, after ``genesis``) for the ledger
    ``tree``. Totals list every asset with an account or a pending withdrawal. Refuses a batch
    sequence that goes backwards (a checkpoint includes every batch up to ``batch_seq``)."""
    if previous is not None and batch_seq < previous.batch_seq:
        raise CheckpointError(f"batch_seq {batch_seq} is before the previous checkpoint's {previous.batch_seq}")
    balances = tree.totals
    for asset in pending:
        try:
            check_asset(asset)
        except MerkleError as exc:
            raise CheckpointError(str(exc)) from None
    totals = tuple((a, balances.get(a, 0), pending.get(a, 0)) for a in sorted(set(balances) | set(pending)))
    return Checkpoint(cycle=previous.cycle + 1 if previous else 1, prev_root=previous.root if previous else genesis,
                      root=tree.root, batch_seq=batch_seq, batch_hash=batch_hash, totals=totals, time_ms=time_ms)


def check_totals(checkpoint: Checkpoint, entries: Iterable[AssetEntry]) -> None:
    """The checkpoint's stated balance totals are the tree's: every asset of the tree is listed with
    its tree total, and an asset listed without a tree entry has a total of 0 (only pending)."""
    stated = checkpoint.totals_map()
    seen = set()
    for e in entries:
        seen.add(e.asset)
        if e.asset not in stated:
            raise CheckpointError(f"asset {e.asset} is in the ledger root but not in the checkpoint's totals")
        if stated[e.asset][0] != e.total:
            raise CheckpointError(f"asset {e.asset}: the checkpoint states a total of {stated[e.asset][0]}, "
                                  f"the ledger root commits to {e.total}")
    for asset, (total, _) in stated.items():
        if asset not in seen and total != 0:
            raise CheckpointError(f"asset {asset}: the checkpoint states a total of {total} but the ledger has no "
                                  f"account in it")


def check_proof(checkpoint: Checkpoint, proof: BalanceProof) -> None:
    """``proof`` verifies against the checkpoint's root, and the totals it commits to are the
    checkpoint's stated totals; :class:`CheckpointError` naming the account otherwise."""
    who = f"{proof.leaf.party.hex()}/{proof.leaf.asset}" if isinstance(proof, BalanceProof) else "?"
    try:
        root, entries = compute_proof_root(proof)
    except MerkleError as exc:
        raise CheckpointError(f"balance proof {who}: {exc}") from None
    if root != checkpoint.root:
        raise CheckpointError(f"balance proof {who} does not lead to the checkpoint's root")
    try:
        check_totals(checkpoint, entries)
    except CheckpointError as exc:
        raise CheckpointError(f"balance proof {who}: {exc}") from None


# ---------------------------------------------------------------------------------- signed


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint, its 65-byte group signature and the domain it was signed for."""

    checkpoint: Checkpoint
    signature: bytes
    chain_id: int
    registry: str

    def __post_init__(self) -> None:
        if not isinstance(self.checkpoint, Checkpoint):
            raise CheckpointError("checkpoint must be a Checkpoint")
        if not isinstance(self.signature, bytes | bytearray) or len(self.signature) != 65:
            raise CheckpointError("signature must be 65 bytes r || s || v")
        object.__setattr__(self, "signature", bytes(self.signature))
        if _u(self.chain_id, "chain_id", UINT256_MAX) == 0:
            raise CheckpointError("chain_id must be positive")
        try:
            object.__setattr__(self, "registry", checksum_address(self.registry, "registry"))
        except OrderError as exc:
            raise CheckpointError(str(exc)) from None

    @property
    def digest(self) -> bytes:
        return self.checkpoint.digest(self.chain_id, self.registry)

    def signer(self) -> str:
        """The EIP-55 address that signed (strict: low-s, v ∈ {27, 28}); CheckpointError otherwise."""
        try:
            return recover_signer(self.digest, self.signature)
        except OrderError as exc:
            raise CheckpointError(f"bad checkpoint signature: {exc}") from None

    def domain(self) -> dict[str, Any]:
        return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": self.chain_id,
                "verifyingContract": self.registry}


def sign_checkpoint(checkpoint: Checkpoint, chain_id: int, registry: str | bytes,
                    sign_digest: DigestSigner) -> SignedCheckpoint:
    """Sign through ``sign_digest`` (the threshold network, or a local key in tests); the signature
    is normalised to low-s with ``v = 27 + recovery id``."""
    registry_address = to_checksum_address(address_bytes(registry, "registry"))
    r, s, rec = sign_digest(checkpoint.digest(chain_id, registry_address))
    return SignedCheckpoint(checkpoint, encode_signature(r, s, rec), chain_id, registry_address)


def verify_signed_checkpoint(signed: SignedCheckpoint, signer_address: str | bytes) -> bool:
    """Whether ``signed`` carries a strict signature by ``signer_address`` over its digest."""
    try:
        expected = address_bytes(signer_address, "signer")
        return isinstance(signed, SignedCheckpoint) and address_bytes(signed.signer()) == expected
    except (OrderError, CheckpointError):
        return False


def verify_chain(checkpoints: Sequence[SignedCheckpoint], signer: str | bytes, *,
                 genesis: bytes = GENESIS_ROOT) -> None:
    """Check an unbroken run of signed checkpoints; :class:`ChainError` at the first break.

    Each is signed by ``signer`` for the same chain and registry as the first; cycles are
    consecutive; each ``prev_root`` is the previous ``root`` (a run that starts at cycle 1 starts
    from ``genesis``); the batch sequence never goes back, and the same sequence names the same batch.
    """
    previous: SignedCheckpoint | None = None
    for n, signed in enumerate(checkpoints):
        if not isinstance(signed, SignedCheckpoint):
            raise ChainError(f"item {n} is not a SignedCheckpoint")
        c = signed.checkpoint
        where = f"cycle {c.cycle} (item {n})"
        if not verify_signed_checkpoint(signed, signer):
            raise ChainError(f"{where}: not signed by {signer if isinstance(signer, str) else signer.hex()}")
        if previous is None:
            if c.cycle == 1 and c.prev_root != genesis:
                raise ChainError(f"{where}: prev_root {_hex(c.prev_root)} is not the genesis root {_hex(genesis)}")
        else:
            p = previous.checkpoint
            if (signed.chain_id, signed.registry) != (previous.chain_id, previous.registry):
                raise ChainError(f"{where}: signed for chain {signed.chain_id} registry {signed.registry}, the run "
                                 f"for chain {previous.chain_id} registry {previous.registry}")
            if c.cycle != p.cycle + 1:
                raise ChainError(f"{where}: cycle does not follow {p.cycle}")
            if c.prev_root != p.root:
                raise ChainError(f"{where}: prev_root {_hex(c.prev_root)} is not cycle {p.cycle}'s root "
                                 f"{_hex(p.root)}")
            if c.batch_seq < p.batch_seq:
                raise ChainError(f"{where}: batch_seq {c.batch_seq} goes back from {p.batch_seq}")
            if c.batch_seq == p.batch_seq and c.batch_hash != p.batch_hash:
                raise ChainError(f"{where}: batch {c.batch_seq} has another hash than in cycle {p.cycle}")
        previous = signed


# ------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class CheckpointFile:
    """The published JSON file: a signed checkpoint and, optionally, balance proofs against it."""

    signed: SignedCheckpoint
    proofs: tuple[BalanceProof, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        s = self.signed
        return {"format": FILE_FORMAT, "version": FILE_VERSION, "domain": s.domain(),
                "checkpoint": s.checkpoint.to_dict(), "digest": _hex(s.digest), "signature": _hex(s.signature),
                "proofs": [p.to_dict() for p in self.proofs]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> CheckpointFile:
        """Strict: the format and version, the domain's name and version, and the stated digest
        must be exactly what this module writes (the digest is recomputed, never trusted)."""
        d = _obj(data, "checkpoint file",
                 {"format", "version", "domain", "checkpoint", "digest", "signature", "proofs"})
        if d["format"] != FILE_FORMAT or d["version"] != FILE_VERSION:
            raise CheckpointError(f"not a {FILE_FORMAT} version {FILE_VERSION} file")
        dom = _obj(d["domain"], "domain", {"name", "version", "chainId", "verifyingContract"})
        if dom["name"] != DOMAIN_NAME or dom["version"] != DOMAIN_VERSION:
            raise CheckpointError(f"domain is not ({DOMAIN_NAME!r}, {DOMAIN_VERSION!r})")
        if not isinstance(dom["verifyingContract"], str):
            raise CheckpointError("domain verifyingContract must be an address string")
        signed = SignedCheckpoint(Checkpoint.from_dict(d["checkpoint"]), _unhex(d["signature"], "signature", 65),
                                  dom["chainId"], dom["verifyingContract"])
        if signed.registry != dom["verifyingContract"]:
            raise CheckpointError("domain verifyingContract must be written in its EIP-55 form")
        if _unhex(d["digest"], "digest") != signed.digest:
            raise CheckpointError("the stated digest is not the checkpoint's EIP-712 digest")
        if not isinstance(d["proofs"], list):
            raise CheckpointError("proofs must be a JSON array")
        try:
            proofs = tuple(BalanceProof.from_dict(p) for p in d["proofs"])
        except MerkleError as exc:
            raise CheckpointError(f"malformed balance proof: {exc}") from None
        return cls(signed, proofs)

    @classmethod
    def from_json(cls, text: str | bytes) -> CheckpointFile:
        try:
            data = json.loads(text, parse_float=_no_float, parse_constant=_no_float, object_pairs_hook=_no_duplicates)
        except ValueError as exc:  # JSONDecodeError and ours
            raise CheckpointError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)


def write_checkpoint_file(path: str | Path, signed: SignedCheckpoint, proofs: Iterable[BalanceProof] = ()) -> None:
    """Write the JSON file; every proof is checked against the checkpoint first (a file must never
    carry a proof that fails)."""
    proofs = tuple(proofs)
    for proof in proofs:
        check_proof(signed.checkpoint, proof)
    Path(path).write_text(CheckpointFile(signed, proofs).to_json(), encoding="utf-8")


def read_checkpoint_file(path: str | Path) -> CheckpointFile:
    """Parse a checkpoint file (format only: :func:`verify_checkpoint_file` checks what it says)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    return CheckpointFile.from_json(text)


def verify_checkpoint_file(path: str | Path, signer: str | bytes, *, prev: str | Path | None = None,
                           genesis: bytes = GENESIS_ROOT) -> CheckpointFile:
    """Everything the CLI checks, raising :class:`CheckpointError` with the first problem: the
    signature is ``signer``'s; with ``prev``, that file is ``signer``'s too and this one follows it
    (same domain, next cycle, its root as ``prev_root``); without it, cycle 1 must start from
    ``genesis``; every included balance proof leads to the root with the stated totals."""
    current = read_checkpoint_file(path)
    run = [current.signed]
    if prev is not None:
        before = read_checkpoint_file(prev)
        for proof in before.proofs:
            check_proof(before.signed.checkpoint, proof)
        run.insert(0, before.signed)
    verify_chain(run, signer, genesis=genesis)
    for proof in current.proofs:
        check_proof(current.signed.checkpoint, proof)
    return current


# -------------------------------------------------------------------------------------- JSON


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def _unhex(value: Any, what: str, size: int = 32) -> bytes:
    if (not isinstance(value, str) or not value.startswith("0x") or len(value) != 2 + 2 * size
            or value[2:] != value[2:].lower()):
        raise CheckpointError(f"{what} must be 0x-prefixed lowercase hex of {size} bytes")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise CheckpointError(f"{what} must be 0x-prefixed lowercase hex of {size} bytes") from None


def _dec(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or (len(value) > 1 and value[0] == "0"):
        raise CheckpointError(f"{what} must be a canonical decimal string")
    return int(value)


def _obj(value: Any, what: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} must be a JSON object")
    if set(value) != keys:
        raise CheckpointError(f"{what}: missing keys {sorted(keys - set(value))}, unknown keys "
                              f"{sorted(set(value) - keys)}")
    return value


def _no_float(text: str) -> Any:
    raise CheckpointError(f"non-integer number {text} (amounts are decimal strings)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CheckpointError(f"duplicate key {key!r}")
        out[key] = value
    return out


# --------------------------------------------------------------------------------------- CLI


def _run_verify(args: argparse.Namespace) -> int:
    try:
        genesis = _unhex(args.genesis, "--genesis") if args.genesis else GENESIS_ROOT
        signer = checksum_address(args.signer, "--signer")
        checked = verify_checkpoint_file(args.file, signer, prev=args.prev, genesis=genesis)
    except Exception as exc:  # every failure is one line and exit 1, never a traceback
        reason = str(exc) if isinstance(exc, CheckpointError | OrderError) else f"{type(exc).__name__}: {exc}"
        print(f"invalid: {reason}")
        return 1
    c = checked.signed.checkpoint
    print(f"valid: cycle {c.cycle} root {_hex(c.root)} signed by {signer} for registry {checked.signed.registry} "
          f"on chain {checked.signed.chain_id}; {len(checked.proofs)} balance proof(s) verified"
          + (f"; follows cycle {c.cycle - 1}" if args.prev else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion_prime.bridge.settlement.checkpoint",
                                     description="Fusion Prime settlement checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check a checkpoint file",
                       description="Check a checkpoint file's signature, its link to the previous one and its "
                                   "balance proofs; print one line and exit 0 (valid) or 1 (invalid).")
    p.add_argument("file", help="the checkpoint file (JSON)")
    p.add_argument("--signer", required=True, help="the group key's address (the Gateway's active signer)")
    p.add_argument("--prev", metavar="FILE", help="the previous cycle's checkpoint file")
    p.add_argument("--genesis", metavar="HEX", help="prev_root of cycle 1 (default: the empty-ledger root)")
    p.set_defaults(handler=_run_verify)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
