"""A batch: the coordinator's ordering of the ledger's inputs, signed by its node identity.

Replication by verification (issue 16): the coordinator decides only the *order* of inputs and the
batch time. Every node re-checks every entry on its own replica and applies the batch
deterministically (``ledger.py``), so a coordinator that lies cannot move a balance: a forged
instruction fails its client signature at every node, a credit for a deposit a node cannot see
on its own chain view is refused by that node (``runtime.py``), and a cycle cut-off before its time
is refused by the ledger itself.

Entries are either a client's ``SignedInstruction`` or a *system* entry the coordinator adds from
its view of the world, which each node verifies against its own:

* ``Credit`` — a deposit to an account's deposit address reached its depth (the bridge's deposit
  path, ``bridge/deposits.py``): the node checks its own bridge database.
* ``Cutoff(cycle)`` / ``Finalize(cycle)`` — the netting cycle's clock; the ledger checks the
  batch time against the cycle's schedule.
* ``WithdrawalPaid`` / ``WithdrawalReturned`` — a withdrawal's payout reached its depth, or its
  destination was found unpayable and the amount goes back to the account.

Batches form a hash chain (``prev_hash``); the coordinator signs ``SHA-256(BATCH_TAG ‖ body)`` with
its node identity key (the same key that signs its protocol messages, pinned in every roster).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ...protocol.encoding import Decoder, Encoder
from ...protocol.errors import InvalidInput
from ...protocol.identity import PartyIdentity, verify_signature
from .instructions import ASSET, InstructionError, SignedInstruction

BATCH_TAG = b"fusion-prime/settlement-batch/v1"
GENESIS_HASH = hashlib.sha256(b"fusion-prime/settlement-genesis/v1").digest()
MAX_ENTRIES = 20_000

E_INSTRUCTION = 1
E_CREDIT = 2
E_CUTOFF = 3
E_FINALIZE = 4
E_WITHDRAWAL_PAID = 5
E_WITHDRAWAL_RETURNED = 6


@dataclass(frozen=True)
class Credit:
    """A deposit credited to ``party``'s account instead of minted."""

    deposit_id: bytes  # 32 bytes, the bridge's deposit id (orders.deposit_id)
    party: bytes
    asset: str
    amount: int

    def encode(self) -> bytes:
        return Encoder().bytes(self.deposit_id).bytes(self.party).bytes(self.asset.encode()).uint(self.amount).finish()

    @classmethod
    def decode(cls, raw: bytes) -> Credit:
        d = Decoder(raw, "credit")
        out = cls(d.bytes(32), d.bytes(33), d.bytes().decode("ascii", "replace"), d.uint(127))
        d.finish()
        if not ASSET.match(out.asset) or out.amount <= 0:
            raise InvalidInput("credit: bad asset or amount")
        return out


@dataclass(frozen=True)
class Cutoff:
    cycle: int


@dataclass(frozen=True)
class Finalize:
    cycle: int


@dataclass(frozen=True)
class WithdrawalPaid:
    withdrawal_id: bytes
    txid: str  # the payout transaction (Bitcoin txid or EVM tx hash), for the report


@dataclass(frozen=True)
class WithdrawalReturned:
    withdrawal_id: bytes
    reason: str


SystemEntry = Credit | Cutoff | Finalize | WithdrawalPaid | WithdrawalReturned
Entry = SignedInstruction | SystemEntry


def encode_entry(entry: Entry) -> bytes:
    if isinstance(entry, SignedInstruction):
        return bytes([E_INSTRUCTION]) + entry.to_bytes()
    if isinstance(entry, Credit):
        return bytes([E_CREDIT]) + entry.encode()
    if isinstance(entry, Cutoff | Finalize):
        kind = E_CUTOFF if isinstance(entry, Cutoff) else E_FINALIZE
        return bytes([kind]) + Encoder().uint(entry.cycle).finish()
    if isinstance(entry, WithdrawalPaid):
        return bytes([E_WITHDRAWAL_PAID]) + Encoder().bytes(entry.withdrawal_id).bytes(entry.txid.encode()).finish()
    if isinstance(entry, WithdrawalReturned):
        return bytes([E_WITHDRAWAL_RETURNED]) + Encoder().bytes(entry.withdrawal_id).bytes(
            entry.reason.encode()).finish()
    raise TypeError(f"not a batch entry: {type(entry).__name__}")


def _strict(raw: bytes, encoding: str, what: str) -> str:
    """Text that encodes back to exactly ``raw``: a lenient decode ("replace") would let two encodings
    name one batch, so the hash a node stores (of the bytes received) and its ledger's head (of the
    batch re-encoded) would differ."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not {encoding}") from exc


def decode_entry(raw: bytes) -> Entry:
    """Parse one entry; a client instruction's signature is verified here (``InstructionError``)."""
    if not raw:
        raise InvalidInput("empty batch entry")
    kind, body = raw[0], raw[1:]
    if kind == E_INSTRUCTION:
        return SignedInstruction.from_bytes(body)
    if kind == E_CREDIT:
        return Credit.decode(body)
    d = Decoder(body, "batch entry")
    entry: Entry
    if kind in (E_CUTOFF, E_FINALIZE):
        cycle = d.uint(64)
        entry = Cutoff(cycle) if kind == E_CUTOFF else Finalize(cycle)
    elif kind == E_WITHDRAWAL_PAID:
        wid, txid = d.bytes(32), d.bytes()
        if len(txid) > 80:
            raise InvalidInput("withdrawal paid: txid too long")
        entry = WithdrawalPaid(wid, _strict(txid, "ascii", "withdrawal paid: txid"))
    elif kind == E_WITHDRAWAL_RETURNED:
        wid, reason = d.bytes(32), d.bytes()
        if len(reason) > 256:
            raise InvalidInput("withdrawal returned: reason too long")
        entry = WithdrawalReturned(wid, _strict(reason, "utf-8", "withdrawal returned: reason"))
    else:
        raise InvalidInput(f"unknown batch entry kind {kind}")
    d.finish()
    return entry


@dataclass(frozen=True)
class Batch:
    seq: int  # 1, 2, ...
    prev_hash: bytes  # the previous batch's hash (GENESIS_HASH for seq 1)
    time_ms: int  # the coordinator's clock; deadlines and the cycle schedule are judged by it
    coordinator: str  # node id
    entries: tuple[Entry, ...]

    def encode(self) -> bytes:
        return (Encoder().bytes(BATCH_TAG).uint(self.seq).bytes(self.prev_hash).uint(self.time_ms)
                .bytes(self.coordinator.encode()).list_of_bytes(encode_entry(e) for e in self.entries).finish())

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True)
class SignedBatch:
    batch: Batch
    signature: bytes
    raw: bytes = b""  # the batch's encoding as received (hashing it again is the expensive part)

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.raw or self.batch.encode()).digest()

    def to_bytes(self) -> bytes:
        return Encoder().bytes(self.raw or self.batch.encode()).bytes(self.signature).finish()


def sign_batch(identity: PartyIdentity, batch: Batch) -> SignedBatch:
    raw = batch.encode()
    return SignedBatch(batch, identity.sign(hashlib.sha256(raw).digest()), raw)


def decode_batch(data: bytes, coordinator_key: dict[str, bytes] | None = None) -> SignedBatch:
    """Parse a signed batch, verifying the coordinator's signature against ``coordinator_key``
    (node id → identity public key, from this node's roster) and every client signature inside.

    Raises ``InvalidInput`` (``InstructionError`` for a bad client instruction — a coordinator that
    ships one is at fault: honest coordinators check each instruction before ordering it)."""
    d = Decoder(data, "signed batch")
    raw, signature = d.bytes(), d.bytes()
    d.finish()
    b = Decoder(raw, "batch")
    if b.bytes() != BATCH_TAG:
        raise InvalidInput("not a settlement batch")
    seq, prev_hash, time_ms = b.uint(64), b.bytes(32), b.uint(64)
    coordinator = _strict(b.bytes(), "utf-8", "batch: coordinator id")
    raw_entries = b.list_of_bytes()
    b.finish()
    if len(raw_entries) > MAX_ENTRIES:
        raise InvalidInput(f"a batch holds at most {MAX_ENTRIES} entries")
    digest = hashlib.sha256(raw).digest()
    if coordinator_key is not None:
        key = coordinator_key.get(coordinator)
        if key is None or not verify_signature(key, digest, signature):
            raise InvalidInput(f"batch {seq} is not signed by its coordinator {coordinator[:64]!r}")
    try:
        entries = tuple(decode_entry(e) for e in raw_entries)
    except InstructionError as exc:
        raise InvalidInput(f"batch {seq} carries an invalid instruction: {exc}") from exc
    return SignedBatch(Batch(seq, prev_hash, time_ms, coordinator, entries), signature, raw)
