"""The settlement ledger's Merkle-sum tree: one root that commits to every client balance.

Why a Merkle-*sum* tree (Maxwell's proof of liabilities) rather than a plain Merkle tree: a
client's proof must show not only that its balance is in the ledger, but that it is *counted* in
the asset total the checkpoint states. Every node carries the sum of the balances below it, and a
parent hashes both children's sums, so changing any sum anywhere changes the root. The sums are
unsigned 128-bit integers, so no sibling can carry a negative sum that would hide a balance.

Layout (all of it fixed here; a change is a new version of the tags):

* **Leaf** of ``(party, asset, balance, held)``::

      leaf_hash = SHA256(t_M ‖ t_M ‖ 0x00 ‖ party(33) ‖ len(asset)(1) ‖ asset ‖ balance(16) ‖ held(16))

  with ``t_M = SHA256("FusionPrime/settlement/merkle/v1")`` (BIP340-style tagged hash, so no
  other protocol's hash can be a node here) and amounts 16-byte big-endian. The leaf's sum is its
  ``balance`` (``held`` is a part of it, committed but not summed). The asset is in the leaf, so a
  leaf of one asset's tree can never pass as a leaf of another's.
* **Internal node**::

      node_hash = SHA256(t_M ‖ t_M ‖ 0x01 ‖ left_hash ‖ left_sum(16) ‖ right_hash ‖ right_sum(16))
      node_sum  = left_sum + right_sum          (must stay below 2**128)

  The 0x00 / 0x01 prefixes make a leaf and an internal node never hash the same bytes (the
  second-preimage trick that fools naive Merkle verifiers).
* **One tree per asset**: its leaves sorted by party bytes (one leaf per party and asset). Level
  by level, nodes are paired left to right; **an odd node count promotes the last node unchanged**
  (same hash, same sum) to the next level — it is never paired with itself (Bitcoin's
  duplication, CVE-2012-2459, would let two different leaf lists share a root). The asset root is
  the single node left: ``(hash, total)``, the total being the sum of the asset's balances.
* **Ledger root** over the assets sorted by symbol (only assets with at least one leaf)::

      root = SHA256(t_R ‖ t_R ‖ n_assets(4) ‖ for each: len(asset)(1) ‖ asset ‖ asset_hash ‖ total(16) ‖ count(8))

  with ``t_R = SHA256("FusionPrime/settlement/ledger-root/v1")``. The leaf count is in the root,
  so a proof's position (index of count) is bound too: a verifier recomputes the exact shape of
  the path from (index, count) and accepts no other. The empty ledger's root is this formula
  over zero assets, :data:`EMPTY_ROOT` — a fixed non-zero constant. A zero root is never the
  root of anything (Nomad, 2022: an uninitialised zero root was accepted as proven), and the
  registry contract refuses it too.

A :class:`BalanceProof` carries the leaf, its index and the asset's leaf count, the siblings
(hash, sum, side) from the leaf up, and the other assets' entries (symbol, root hash, total,
count). :func:`verify_balance_proof` recomputes the asset root and total from the leaf and the
path, then the ledger root from all entries, and compares it with the root the client trusts (the
signed checkpoint's): no claimed total is ever taken at face value.

Pure: standard library only, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from operator import attrgetter
from typing import Any

PARTY_BYTES = 33
#: Balances, held amounts, sums and totals are below 2**128 (16-byte big-endian on the wire).
AMOUNT_BYTES = 16
MAX_AMOUNT = 2**128 - 1
MAX_COUNT = 2**64 - 1
ASSET_PATTERN = re.compile(r"[A-Za-z0-9.-]{1,16}")

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
MERKLE_TAG = b"FusionPrime/settlement/merkle/v1"
ROOT_TAG = b"FusionPrime/settlement/ledger-root/v1"

LEFT = "left"
RIGHT = "right"


def _tagged_hasher(tag: bytes) -> Any:
    """A SHA-256 state that has absorbed ``SHA256(tag) ‖ SHA256(tag)``; ``.copy()`` is one tagged hash
    without hashing the tag again (the tree hashes ~2n times)."""
    t = hashlib.sha256(tag).digest()
    return hashlib.sha256(t + t)


_MERKLE = _tagged_hasher(MERKLE_TAG)
_ROOT = _tagged_hasher(ROOT_TAG)


class MerkleError(ValueError):
    """A leaf, proof or entry that is malformed, out of range or not in canonical form."""


def _amount(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MerkleError(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_AMOUNT:
        raise MerkleError(f"{what} {value} out of range [0, 2**128)")
    return value


def check_asset(asset: Any) -> str:
    """``asset`` if it is a symbol of 1–16 characters from ``[A-Za-z0-9.-]`` (case-sensitive), else raise."""
    if not isinstance(asset, str) or not ASSET_PATTERN.fullmatch(asset):
        raise MerkleError(f"asset {asset!r} is not 1-16 characters of [A-Za-z0-9.-]")
    return asset


def check_party(party: Any) -> bytes:
    """33 bytes starting 0x02/0x03 (a compressed secp256k1 key's shape; the curve point itself is
    not decoded here: that costs ~20 µs a leaf and the instruction layer already checked it)."""
    if not isinstance(party, bytes | bytearray) or len(party) != PARTY_BYTES or party[0] not in (2, 3):
        raise MerkleError("party must be a 33-byte compressed secp256k1 public key")
    return bytes(party)


def _asset_field(asset: str) -> bytes:
    raw = asset.encode("ascii")
    return bytes([len(raw)]) + raw


# ------------------------------------------------------------------------------------ leaves


@dataclass(frozen=True)
class AccountLeaf:
    """One client's account in one asset: ``balance`` owned in total, of which ``held`` is reserved
    (open orders, pending withdrawals). ``0 <= held <= balance < 2**128``."""

    party: bytes
    asset: str
    balance: int
    held: int

    def __post_init__(self) -> None:
        party = check_party(self.party)
        if party is not self.party:
            object.__setattr__(self, "party", party)  # a bytearray becomes immutable bytes
        check_asset(self.asset)
        _amount(self.balance, "balance")
        if _amount(self.held, "held") > self.balance:
            raise MerkleError(f"held {self.held} exceeds balance {self.balance}")

    def encode(self) -> bytes:
        """``0x00 ‖ party ‖ len(asset) ‖ asset ‖ balance(16) ‖ held(16)``: what the leaf hash covers."""
        return (LEAF_PREFIX + self.party + _asset_field(self.asset)
                + self.balance.to_bytes(AMOUNT_BYTES, "big") + self.held.to_bytes(AMOUNT_BYTES, "big"))

    def hash(self) -> bytes:
        h = _MERKLE.copy()
        h.update(self.encode())
        return h.digest()

    def to_dict(self) -> dict[str, Any]:
        return {"party": self.party.hex(), "asset": self.asset, "balance": str(self.balance),
                "held": str(self.held)}

    @classmethod
    def from_dict(cls, data: Any) -> AccountLeaf:
        d = _exact_keys(data, "leaf", {"party", "asset", "balance", "held"})
        return cls(party=_hex(d["party"], PARTY_BYTES, "leaf party"), asset=_str(d["asset"], "leaf asset"),
                   balance=_dec(d["balance"], "leaf balance"), held=_dec(d["held"], "leaf held"))


def node_hash(left_hash: bytes, left_sum: int, right_hash: bytes, right_sum: int) -> bytes:
    """``H(0x01 ‖ left hash ‖ left sum ‖ right hash ‖ right sum)`` (sums 16-byte big-endian)."""
    h = _MERKLE.copy()
    h.update(NODE_PREFIX + left_hash + left_sum.to_bytes(AMOUNT_BYTES, "big")
             + right_hash + right_sum.to_bytes(AMOUNT_BYTES, "big"))
    return h.digest()


# ------------------------------------------------------------------------------- ledger root


@dataclass(frozen=True)
class AssetEntry:
    """One asset's line in the ledger root: its tree's root hash, total balance and leaf count."""

    asset: str
    root: bytes
    total: int
    count: int

    def __post_init__(self) -> None:
        check_asset(self.asset)
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise MerkleError("asset root must be 32 bytes")
        _amount(self.total, "asset total")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count <= MAX_COUNT:
            raise MerkleError("asset leaf count must be in [1, 2**64)")

    def encode(self) -> bytes:
        return (_asset_field(self.asset) + self.root + self.total.to_bytes(AMOUNT_BYTES, "big")
                + self.count.to_bytes(8, "big"))

    def to_dict(self) -> dict[str, Any]:
        return {"asset": self.asset, "root": "0x" + self.root.hex(), "total": str(self.total), "count": self.count}

    @classmethod
    def from_dict(cls, data: Any) -> AssetEntry:
        d = _exact_keys(data, "asset entry", {"asset", "root", "total", "count"})
        return cls(asset=_str(d["asset"], "entry asset"), root=_hex(d["root"], 32, "entry root", prefix=True),
                   total=_dec(d["total"], "entry total"), count=_int(d["count"], "entry count"))


def ledger_root(entries: Iterable[AssetEntry]) -> bytes:
    """The ledger root over asset entries, which must be strictly sorted by asset (one per asset)."""
    items = list(entries)
    for a, b in pairwise(items):
        if not a.asset < b.asset:
            raise MerkleError(f"asset entries not strictly sorted: {a.asset!r} then {b.asset!r}")
    h = _ROOT.copy()
    h.update(len(items).to_bytes(4, "big"))
    for e in items:
        h.update(e.encode())
    return h.digest()


#: The root of the ledger with no account at all: the ledger-root formula over zero assets.
EMPTY_ROOT = ledger_root(())


# ------------------------------------------------------------------------------------ proofs


@dataclass(frozen=True)
class ProofStep:
    """The sibling at one level: its hash, its sum and on which side of the path it sits."""

    side: str  # LEFT: the sibling is the left child (our node is the right one); RIGHT: the opposite
    hash: bytes
    sum: int

    def __post_init__(self) -> None:
        if self.side not in (LEFT, RIGHT):
            raise MerkleError(f"proof step side must be {LEFT!r} or {RIGHT!r}")
        if not isinstance(self.hash, bytes) or len(self.hash) != 32:
            raise MerkleError("proof step hash must be 32 bytes")
        _amount(self.sum, "proof step sum")

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "hash": "0x" + self.hash.hex(), "sum": str(self.sum)}

    @classmethod
    def from_dict(cls, data: Any) -> ProofStep:
        d = _exact_keys(data, "proof step", {"side", "hash", "sum"})
        return cls(side=_str(d["side"], "step side"), hash=_hex(d["hash"], 32, "step hash", prefix=True),
                   sum=_dec(d["sum"], "step sum"))


@dataclass(frozen=True)
class BalanceProof:
    """What a client needs to check its account against a ledger root.

    ``index``/``count``: the leaf's position among its asset's ``count`` sorted leaves (they fix the
    path's shape); ``path``: siblings from the leaf up (levels where the node was promoted have
    none); ``others``: every *other* asset's entry, sorted — the client's own asset entry is
    recomputed, never supplied.
    """

    leaf: AccountLeaf
    index: int
    count: int
    path: tuple[ProofStep, ...]
    others: tuple[AssetEntry, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.leaf, AccountLeaf):
            raise MerkleError("proof leaf must be an AccountLeaf")
        object.__setattr__(self, "path", tuple(self.path))
        object.__setattr__(self, "others", tuple(self.others))
        if any(not isinstance(s, ProofStep) for s in self.path):
            raise MerkleError("proof path must hold ProofStep items")
        if any(not isinstance(e, AssetEntry) for e in self.others):
            raise MerkleError("proof entries must be AssetEntry items")
        if _int(self.count, "proof count") < 1 or self.count > MAX_COUNT:
            raise MerkleError("proof count must be in [1, 2**64)")
        if not 0 <= _int(self.index, "proof index") < self.count:
            raise MerkleError("proof index must be in [0, count)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: keys and hashes hex (hashes ``0x``-prefixed), amounts decimal strings (they
        exceed what a JSON double holds exactly), index and count JSON integers."""
        return {"leaf": self.leaf.to_dict(), "index": self.index, "count": self.count,
                "path": [s.to_dict() for s in self.path], "others": [e.to_dict() for e in self.others]}

    @classmethod
    def from_dict(cls, data: Any) -> BalanceProof:
        """Strict inverse of :meth:`to_dict` (unknown or missing keys, floats, upper-case hex and
        non-canonical decimals are refused)."""
        d = _exact_keys(data, "balance proof", {"leaf", "index", "count", "path", "others"})
        return cls(leaf=AccountLeaf.from_dict(d["leaf"]), index=_int(d["index"], "proof index"),
                   count=_int(d["count"], "proof count"),
                   path=tuple(ProofStep.from_dict(s) for s in _list(d["path"], "proof path")),
                   others=tuple(AssetEntry.from_dict(e) for e in _list(d["others"], "proof others")))


def compute_proof_root(proof: BalanceProof) -> tuple[bytes, tuple[AssetEntry, ...]]:
    """Recompute ``(ledger root, every asset entry)`` from a proof, or raise :class:`MerkleError`.

    The path must have exactly the shape that ``(index, count)`` gives under the promotion rule:
    at each level the node at an odd index has a left sibling, one at an even index a right
    sibling unless it is the level's last node (promoted: no step). Every partial sum is checked
    to stay below 2**128. The proof's own asset must not appear among ``others``.
    """
    if not isinstance(proof, BalanceProof):
        raise MerkleError("not a BalanceProof")
    leaf = proof.leaf
    h, s = leaf.hash(), leaf.balance
    i, n = proof.index, proof.count
    steps = iter(proof.path)
    used = 0
    while n > 1:
        if i % 2 == 1 or i + 1 < n:
            step = next(steps, None)
            if step is None:
                raise MerkleError("proof path is too short for its index and count")
            used += 1
            expected_side = LEFT if i % 2 == 1 else RIGHT
            if step.side != expected_side:
                raise MerkleError(f"proof step {used} is on the {step.side} side; index {proof.index} "
                                  f"of {proof.count} puts it on the {expected_side}")
            total = s + step.sum
            if total > MAX_AMOUNT:
                raise MerkleError("proof sums overflow 2**128")
            h = node_hash(step.hash, step.sum, h, s) if step.side == LEFT else node_hash(h, s, step.hash, step.sum)
            s = total
        i //= 2
        n = (n + 1) // 2
    if used != len(proof.path):
        raise MerkleError("proof path is longer than its index and count allow")
    own = AssetEntry(leaf.asset, h, s, proof.count)
    if any(e.asset == leaf.asset for e in proof.others):
        raise MerkleError(f"proof supplies an entry for its own asset {leaf.asset!r}")
    entries = tuple(sorted((*proof.others, own), key=attrgetter("asset")))
    return ledger_root(entries), entries


def verify_balance_proof(root: bytes, proof: BalanceProof) -> bool:
    """Whether ``proof`` shows its leaf, counted in its asset's total, under ledger ``root``."""
    if not isinstance(root, bytes) or len(root) != 32 or root == bytes(32):
        return False
    try:
        computed, _ = compute_proof_root(proof)
    except MerkleError:
        return False
    return computed == root


# -------------------------------------------------------------------------------------- tree


class _AssetTree:
    """One asset's levels, leaves first: parallel lists of hashes and sums per level."""

    __slots__ = ("hashes", "leaves", "parties", "sums")

    def __init__(self, leaves: list[AccountLeaf]) -> None:
        self.leaves = leaves
        self.parties = [leaf.party for leaf in leaves]
        hashes = [leaf.hash() for leaf in leaves]
        sums = [leaf.balance for leaf in leaves]
        self.hashes = [hashes]
        self.sums = [sums]
        merkle, prefix = _MERKLE, NODE_PREFIX
        while len(hashes) > 1:
            up_h: list[bytes] = []
            up_s: list[int] = []
            for j in range(0, len(hashes) - 1, 2):
                ls, rs = sums[j], sums[j + 1]
                h = merkle.copy()
                h.update(prefix + hashes[j] + ls.to_bytes(16, "big") + hashes[j + 1] + rs.to_bytes(16, "big"))
                up_h.append(h.digest())
                up_s.append(ls + rs)  # <= the asset total, checked below 2**128 before building
            if len(hashes) % 2:
                up_h.append(hashes[-1])
                up_s.append(sums[-1])
            hashes, sums = up_h, up_s
            self.hashes.append(hashes)
            self.sums.append(sums)

    @property
    def root(self) -> bytes:
        return self.hashes[-1][0]

    @property
    def total(self) -> int:
        return self.sums[-1][0]

    def index_of(self, party: bytes) -> int:
        i = bisect_left(self.parties, party)
        if i == len(self.parties) or self.parties[i] != party:
            raise KeyError(party)
        return i

    def path(self, index: int) -> tuple[ProofStep, ...]:
        steps = []
        i = index
        for level_h, level_s in zip(self.hashes[:-1], self.sums[:-1], strict=True):
            sibling = i ^ 1
            if sibling < len(level_h):
                steps.append(ProofStep(LEFT if sibling < i else RIGHT, level_h[sibling], level_s[sibling]))
            i //= 2
        return tuple(steps)


class LedgerTree:
    """The Merkle-sum trees of a whole ledger and its root. Build with :func:`build_tree`."""

    def __init__(self, trees: Mapping[str, _AssetTree]) -> None:
        self._trees = dict(sorted(trees.items()))
        self.entries: tuple[AssetEntry, ...] = tuple(
            AssetEntry(a, t.root, t.total, len(t.leaves)) for a, t in self._trees.items())
        #: the ledger root (``EMPTY_ROOT`` for no accounts)
        self.root: bytes = ledger_root(self.entries)

    @property
    def totals(self) -> dict[str, int]:
        """Asset → sum of its balances (a fresh dict: callers may keep or change it)."""
        return {e.asset: e.total for e in self.entries}

    @property
    def counts(self) -> dict[str, int]:
        """Asset → number of accounts (leaves)."""
        return {e.asset: e.count for e in self.entries}

    @property
    def assets(self) -> tuple[str, ...]:
        return tuple(self._trees)

    def __len__(self) -> int:
        return sum(e.count for e in self.entries)

    def leaves(self, asset: str) -> tuple[AccountLeaf, ...]:
        """The asset's leaves in tree order (sorted by party); KeyError for an asset with none."""
        return tuple(self._trees[asset].leaves)

    def leaf(self, party: bytes, asset: str) -> AccountLeaf:
        tree = self._trees[asset]
        return tree.leaves[tree.index_of(bytes(party))]

    def proof(self, party: bytes, asset: str) -> BalanceProof:
        """The proof of ``party``'s account in ``asset``; KeyError if the ledger has no such account."""
        tree = self._trees[asset]
        index = tree.index_of(bytes(party))
        return BalanceProof(leaf=tree.leaves[index], index=index, count=len(tree.leaves), path=tree.path(index),
                            others=tuple(e for e in self.entries if e.asset != asset))

    def proofs_for(self, party: bytes) -> tuple[BalanceProof, ...]:
        """Proofs of every account ``party`` has, in asset order (what a client statement carries)."""
        out = []
        for asset, tree in self._trees.items():
            try:
                tree.index_of(bytes(party))
            except KeyError:
                continue
            out.append(self.proof(party, asset))
        return tuple(out)


def build_tree(leaves: Iterable[AccountLeaf]) -> LedgerTree:
    """Build the ledger's trees and root. One leaf per (party, asset): a duplicate raises
    :class:`MerkleError` (a ValueError), as does an asset total of 2**128 or more.

    Cost: one sort per asset and about two hashes per leaf; the only per-leaf objects kept are the
    leaves themselves, their hashes and their sums."""
    by_asset: dict[str, list[AccountLeaf]] = {}
    for leaf in leaves:
        if not isinstance(leaf, AccountLeaf):
            raise TypeError(f"leaves must be AccountLeaf, got {type(leaf).__name__}")
        by_asset.setdefault(leaf.asset, []).append(leaf)
    trees: dict[str, _AssetTree] = {}
    for asset, group in by_asset.items():
        group.sort(key=attrgetter("party"))
        for a, b in pairwise(group):
            if a.party == b.party:
                raise MerkleError(f"duplicate account: party {a.party.hex()} asset {asset!r}")
        if sum(leaf.balance for leaf in group) > MAX_AMOUNT:
            raise MerkleError(f"asset {asset!r}: total balance overflows 2**128")
        trees[asset] = _AssetTree(group)
    return LedgerTree(trees)


# ------------------------------------------------------------------------ strict JSON readers


def _exact_keys(data: Any, what: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MerkleError(f"{what} must be a JSON object")
    if set(data) != keys:
        missing, extra = sorted(keys - set(data)), sorted(set(data) - keys)
        raise MerkleError(f"{what}: missing keys {missing}, unknown keys {extra}")
    return data


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise MerkleError(f"{what} must be a string")
    return value


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MerkleError(f"{what} must be an integer")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MerkleError(f"{what} must be a JSON array")
    return value


_DEC = re.compile(r"0|[1-9][0-9]{0,38}")
_HEXCHARS = re.compile(r"[0-9a-f]*")


def _dec(value: Any, what: str) -> int:
    """A non-negative amount written as a canonical decimal string (no sign, no leading zeros)."""
    if not isinstance(value, str) or not _DEC.fullmatch(value):
        raise MerkleError(f"{what} must be a canonical decimal string")
    return _amount(int(value), what)


def _hex(value: Any, size: int, what: str, *, prefix: bool = False) -> bytes:
    """Exactly ``size`` bytes as lowercase hex (``0x``-prefixed when ``prefix``)."""
    if not isinstance(value, str):
        raise MerkleError(f"{what} must be a hex string")
    if prefix:
        if not value.startswith("0x"):
            raise MerkleError(f"{what} must be 0x-prefixed")
        value = value[2:]
    if len(value) != 2 * size or not _HEXCHARS.fullmatch(value):
        raise MerkleError(f"{what} must be {size} bytes of lowercase hex")
    return bytes.fromhex(value)
