"""The settlement ledger's Merkle-sum tree: hashes recomputed by hand, every proof of random ledgers
verifies, and every change to a proof (leaf, sibling, shape, other assets) makes it fail."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion_prime.bridge.settlement.merkle import (
    EMPTY_ROOT,
    LEFT,
    MAX_AMOUNT,
    RIGHT,
    AccountLeaf,
    AssetEntry,
    BalanceProof,
    MerkleError,
    ProofStep,
    build_tree,
    compute_proof_root,
    ledger_root,
    verify_balance_proof,
)


def tagged(tag: bytes, msg: bytes) -> bytes:
    t = hashlib.sha256(tag).digest()
    return hashlib.sha256(t + t + msg).digest()


M = b"FusionPrime/settlement/merkle/v1"
R = b"FusionPrime/settlement/ledger-root/v1"


def u128(x: int) -> bytes:
    return x.to_bytes(16, "big")


def party(n: int) -> bytes:
    return b"\x02" + n.to_bytes(32, "big")  # one prefix: parties sort by n


def leaf_hash(p: bytes, asset: str, balance: int, held: int) -> bytes:
    return tagged(M, b"\x00" + p + bytes([len(asset)]) + asset.encode() + u128(balance) + u128(held))


def node(lh: bytes, ls: int, rh: bytes, rs: int) -> bytes:
    return tagged(M, b"\x01" + lh + u128(ls) + rh + u128(rs))


def root_of(entries: list[tuple[str, bytes, int, int]]) -> bytes:
    body = len(entries).to_bytes(4, "big")
    for asset, h, total, count in entries:
        body += bytes([len(asset)]) + asset.encode() + h + u128(total) + count.to_bytes(8, "big")
    return tagged(R, body)


# ------------------------------------------------------------------------------- known answers


def test_empty_root_is_the_formula_over_no_asset_and_not_zero() -> None:
    assert EMPTY_ROOT == root_of([]) == build_tree([]).root
    assert EMPTY_ROOT != bytes(32)
    assert build_tree([]).totals == {}


def test_hashes_by_hand_with_an_odd_level() -> None:
    """Three BTC leaves: (a, b) pair up, c is promoted unchanged, then (ab, c); one ETH leaf."""
    a, b, c = party(1), party(2), party(3)
    leaves = [AccountLeaf(c, "BTC", 7, 0), AccountLeaf(a, "BTC", 5, 1), AccountLeaf(b, "BTC", 0, 0),
              AccountLeaf(b, "ETH", 10**18, 10**17)]
    tree = build_tree(leaves)
    la, lb, lc = leaf_hash(a, "BTC", 5, 1), leaf_hash(b, "BTC", 0, 0), leaf_hash(c, "BTC", 7, 0)
    ab = node(la, 5, lb, 0)
    btc = node(ab, 5, lc, 7)
    eth = leaf_hash(b, "ETH", 10**18, 10**17)
    assert tree.root == root_of([("BTC", btc, 12, 3), ("ETH", eth, 10**18, 1)])
    assert tree.totals == {"BTC": 12, "ETH": 10**18}
    assert tree.counts == {"BTC": 3, "ETH": 1}
    assert len(tree) == 4

    pc = tree.proof(c, "BTC")  # promoted at level 0: one step only, the left sibling ab
    assert (pc.index, pc.count) == (2, 3)
    assert pc.path == (ProofStep(LEFT, ab, 5),)
    assert pc.others == (AssetEntry("ETH", eth, 10**18, 1),)
    pa = tree.proof(a, "BTC")
    assert pa.path == (ProofStep(RIGHT, lb, 0), ProofStep(RIGHT, lc, 7))
    pe = tree.proof(b, "ETH")
    assert pe.path == () and pe.others == (AssetEntry("BTC", btc, 12, 3),)
    for p in (pa, tree.proof(b, "BTC"), pc, pe):
        assert verify_balance_proof(tree.root, p)


def test_order_of_input_does_not_matter_and_any_change_does() -> None:
    rng = random.Random(7)
    leaves = [AccountLeaf(party(i), asset, 1000 + i, i) for i in range(30) for asset in ("BTC", "ETH")]
    root = build_tree(leaves).root
    shuffled = leaves[:]
    rng.shuffle(shuffled)
    assert build_tree(shuffled).root == root
    moved = leaves[:]
    moved[0] = replace(leaves[0], balance=leaves[0].balance - 1)
    moved[2] = replace(leaves[2], balance=leaves[2].balance + 1)  # same total, one unit moved
    assert build_tree(moved).root != root
    assert build_tree(moved).totals == build_tree(leaves).totals
    assert build_tree([*leaves, AccountLeaf(party(99), "BTC", 0, 0)]).root != root  # a zero account counts too


def test_no_duplication_of_the_last_node() -> None:
    """Bitcoin's odd rule (duplicate the last node) would make [x, y, z] and [x, y, z, z] one root;
    here the count is in the root and nothing is duplicated."""
    x, y, z = (leaf_hash(party(i), "BTC", 1, 0) for i in range(3))
    three = node(node(x, 1, y, 1), 2, z, 1)
    duplicated = node(node(x, 1, y, 1), 2, node(z, 1, z, 1), 2)
    tree = build_tree([AccountLeaf(party(i), "BTC", 1, 0) for i in range(3)])
    assert tree.entries[0].root == three != duplicated


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs", [
    {"party": b"\x02" * 32},
    {"party": b"\x04" + bytes(32)},
    {"party": "02" * 33},
    {"asset": ""},
    {"asset": "X" * 17},
    {"asset": "BT C"},
    {"asset": "BTC/"},
    {"asset": "ÉTH"},
    {"balance": -1},
    {"balance": 2**128},
    {"balance": True},
    {"balance": 1.0},
    {"held": 11},
    {"held": -1},
])
def test_leaf_validation(kwargs: dict) -> None:
    base = {"party": party(1), "asset": "BTC", "balance": 10, "held": 0}
    with pytest.raises(MerkleError):
        AccountLeaf(**{**base, **kwargs})


def test_leaf_accepts_the_edges() -> None:
    AccountLeaf(party(1), "A", MAX_AMOUNT, MAX_AMOUNT)
    AccountLeaf(bytearray(party(2)), "usdc.e-2", 0, 0)
    assert isinstance(AccountLeaf(bytearray(party(2)), "X", 0, 0).party, bytes)


def test_duplicate_account_is_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        build_tree([AccountLeaf(party(1), "BTC", 1, 0), AccountLeaf(party(2), "BTC", 1, 0),
                    AccountLeaf(party(1), "BTC", 2, 0)])
    build_tree([AccountLeaf(party(1), "BTC", 1, 0), AccountLeaf(party(1), "ETH", 1, 0)])  # other asset: fine


def test_total_overflow_is_refused() -> None:
    with pytest.raises(ValueError, match="overflow"):
        build_tree([AccountLeaf(party(1), "BTC", MAX_AMOUNT, 0), AccountLeaf(party(2), "BTC", 1, 0)])
    build_tree([AccountLeaf(party(1), "BTC", MAX_AMOUNT, 0), AccountLeaf(party(2), "ETH", 1, 0)])


def test_non_leaves_are_refused() -> None:
    with pytest.raises(TypeError):
        build_tree([(party(1), "BTC", 1, 0)])  # type: ignore[list-item]


def test_absent_account_is_a_key_error() -> None:
    tree = build_tree([AccountLeaf(party(1), "BTC", 1, 0)])
    with pytest.raises(KeyError):
        tree.proof(party(2), "BTC")
    with pytest.raises(KeyError):
        tree.proof(party(1), "ETH")
    assert tree.proofs_for(party(2)) == ()
    assert [p.leaf.asset for p in tree.proofs_for(party(1))] == ["BTC"]


def test_ledger_root_requires_sorted_unique_entries() -> None:
    e1, e2 = AssetEntry("A", bytes(32), 0, 1), AssetEntry("B", bytes(32), 0, 1)
    ledger_root([e1, e2])
    for bad in ([e2, e1], [e1, e1]):
        with pytest.raises(MerkleError):
            ledger_root(bad)


# ------------------------------------------------------------------------------- random ledgers

ASSETS = ("BTC", "ETH", "USDC", "fpBTC", "x.y-z")
amounts = st.one_of(st.integers(0, 10**6), st.integers(0, 2**100))


@st.composite
def ledgers(draw: st.DrawFn, max_parties: int = 12) -> list[AccountLeaf]:
    parties = draw(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=max_parties, unique=True))
    leaves = []
    for i, raw in enumerate(parties):
        p = bytes([2 + i % 2]) + raw
        for asset in draw(st.sets(st.sampled_from(ASSETS), min_size=1, max_size=3)):
            balance = draw(amounts)
            held = draw(st.integers(0, balance))
            leaves.append(AccountLeaf(p, asset, balance, held))
    return leaves


@settings(max_examples=60, deadline=None)
@given(ledgers())
def test_every_proof_verifies_and_totals_are_the_sums(leaves: list[AccountLeaf]) -> None:
    tree = build_tree(leaves)
    for asset in {leaf.asset for leaf in leaves}:
        assert tree.totals[asset] == sum(leaf.balance for leaf in leaves if leaf.asset == asset)
        assert tree.counts[asset] == sum(1 for leaf in leaves if leaf.asset == asset)
    assert set(tree.totals) == {leaf.asset for leaf in leaves}
    for leaf in leaves:
        proof = tree.proof(leaf.party, leaf.asset)
        assert proof.leaf == leaf
        assert verify_balance_proof(tree.root, proof)
        root, entries = compute_proof_root(proof)
        assert root == tree.root and entries == tree.entries
        # JSON round trip, through text
        again = BalanceProof.from_dict(json.loads(json.dumps(proof.to_dict())))
        assert again == proof


def _tampered(proof: BalanceProof, data: st.DataObject) -> BalanceProof:
    """One change to one field of the proof (each strategy is a real change)."""
    leaf = proof.leaf
    options = ["balance", "held", "party", "asset", "index", "count"]
    if proof.path:
        options += ["step_hash", "step_sum", "step_side", "drop_step"]
    options += ["add_step"]
    if proof.others:
        options += ["other_total", "other_root", "other_count", "drop_other"]
    options += ["add_other"]
    what = data.draw(st.sampled_from(options))
    if what == "balance":
        b = data.draw(st.integers(max(leaf.held, 0), MAX_AMOUNT).filter(lambda v: v != leaf.balance))
        return replace(proof, leaf=replace(leaf, balance=b))
    if what == "held":
        if leaf.balance == 0:
            return replace(proof, leaf=replace(leaf, balance=1, held=1))
        h = data.draw(st.integers(0, leaf.balance).filter(lambda v: v != leaf.held))
        return replace(proof, leaf=replace(leaf, held=h))
    if what == "party":
        p = data.draw(st.binary(min_size=32, max_size=32).map(lambda r: b"\x03" + r).filter(lambda v: v != leaf.party))
        return replace(proof, leaf=replace(leaf, party=p))
    if what == "asset":
        taken = {leaf.asset} | {e.asset for e in proof.others}
        a = data.draw(st.sampled_from([x for x in (*ASSETS, "ZZZ") if x not in taken]))
        return replace(proof, leaf=replace(leaf, asset=a))
    if what == "index":
        if proof.count == 1:
            return replace(proof, count=2, index=1)
        i = data.draw(st.integers(0, proof.count - 1).filter(lambda v: v != proof.index))
        return replace(proof, index=i)
    if what == "count":
        c = data.draw(st.integers(proof.index + 1, proof.count + 5).filter(lambda v: v != proof.count))
        return replace(proof, count=c)
    path = list(proof.path)
    if what in ("step_hash", "step_sum", "step_side", "drop_step"):
        k = data.draw(st.integers(0, len(path) - 1))
        s = path[k]
        if what == "step_hash":
            path[k] = replace(s, hash=data.draw(st.binary(min_size=32, max_size=32).filter(lambda v: v != s.hash)))
        elif what == "step_sum":
            path[k] = replace(s, sum=data.draw(st.integers(0, 2**64).filter(lambda v: v != s.sum)))
        elif what == "step_side":
            path[k] = replace(s, side=LEFT if s.side == RIGHT else RIGHT)
        else:
            del path[k]
        return replace(proof, path=tuple(path))
    if what == "add_step":
        k = data.draw(st.integers(0, len(path)))
        path.insert(k, ProofStep(data.draw(st.sampled_from([LEFT, RIGHT])), bytes(32), 0))
        return replace(proof, path=tuple(path))
    others = list(proof.others)
    if what in ("other_total", "other_root", "other_count", "drop_other"):
        k = data.draw(st.integers(0, len(others) - 1))
        e = others[k]
        if what == "other_total":
            others[k] = replace(e, total=data.draw(st.integers(0, MAX_AMOUNT).filter(lambda v: v != e.total)))
        elif what == "other_root":
            others[k] = replace(e, root=data.draw(st.binary(min_size=32, max_size=32).filter(lambda v: v != e.root)))
        elif what == "other_count":
            others[k] = replace(e, count=data.draw(st.integers(1, 10**6).filter(lambda v: v != e.count)))
        else:
            del others[k]
        return replace(proof, others=tuple(others))
    # add_other: an asset the ledger does not have
    taken = {leaf.asset} | {e.asset for e in others}
    a = data.draw(st.sampled_from([x for x in (*ASSETS, "ZZZ") if x not in taken]))
    others = sorted([*others, AssetEntry(a, bytes(32), 0, 1)], key=lambda e: e.asset)
    return replace(proof, others=tuple(others))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ledgers(max_parties=8), st.data())
def test_any_change_to_a_proof_makes_it_fail(leaves: list[AccountLeaf], data: st.DataObject) -> None:
    tree = build_tree(leaves)
    leaf = data.draw(st.sampled_from(leaves))
    proof = tree.proof(leaf.party, leaf.asset)
    bad = _tampered(proof, data)
    assert bad != proof
    assert not verify_balance_proof(tree.root, bad)


def test_a_proof_never_verifies_against_zero_or_malformed_roots() -> None:
    tree = build_tree([AccountLeaf(party(1), "BTC", 1, 0)])
    proof = tree.proof(party(1), "BTC")
    assert verify_balance_proof(tree.root, proof)
    assert not verify_balance_proof(bytes(32), proof)
    assert not verify_balance_proof(tree.root[:31], proof)
    assert not verify_balance_proof(tree.root, "proof")  # type: ignore[arg-type]


def test_a_proof_cannot_bring_its_own_asset_entry() -> None:
    tree = build_tree([AccountLeaf(party(1), "BTC", 5, 0), AccountLeaf(party(1), "ETH", 5, 0)])
    proof = tree.proof(party(1), "BTC")
    own = AssetEntry("BTC", bytes(32), 0, 1)
    with pytest.raises(MerkleError, match="own asset"):
        compute_proof_root(replace(proof, others=(own, *proof.others)))


def test_a_sibling_sum_cannot_overflow() -> None:
    tree = build_tree([AccountLeaf(party(1), "BTC", 5, 0), AccountLeaf(party(2), "BTC", 5, 0)])
    proof = tree.proof(party(1), "BTC")
    big = replace(proof, path=(replace(proof.path[0], sum=MAX_AMOUNT),))
    with pytest.raises(MerkleError, match="overflow"):
        compute_proof_root(big)


def test_hundred_parties_four_assets() -> None:
    """The issue's scale (10,000 trades among 100 parties settle into at most 100 × assets accounts)."""
    rng = random.Random(16)
    leaves = [AccountLeaf(party(i), a, b := rng.randrange(10**12), rng.randrange(b + 1))
              for i in range(100) for a in ("BTC", "ETH", "USDC", "SOL")]
    tree = build_tree(leaves)
    for leaf in leaves:
        assert verify_balance_proof(tree.root, tree.proof(leaf.party, leaf.asset))
    assert len(tree.proofs_for(party(5))) == 4


# ------------------------------------------------------------------------------------ JSON form


def test_json_form_is_strict() -> None:
    a, b = party(0xABC), party(0xDEF)  # hex digits with letters, so case matters
    tree = build_tree([AccountLeaf(a, "BTC", 5, 1), AccountLeaf(b, "BTC", 7, 0)])
    good = tree.proof(a, "BTC").to_dict()
    assert good["leaf"] == {"party": a.hex(), "asset": "BTC", "balance": "5", "held": "1"}
    assert good["path"][0]["hash"].startswith("0x")

    def mutate(f: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
        d = json.loads(json.dumps(good))
        f(d)
        return d

    bad = [
        mutate(lambda d: d.update(extra=1)),
        mutate(lambda d: d.pop("others")),
        mutate(lambda d: d["leaf"].update(balance=5)),  # a JSON number, not a decimal string
        mutate(lambda d: d["leaf"].update(balance="05")),
        mutate(lambda d: d["leaf"].update(balance="-5")),
        mutate(lambda d: d["leaf"].update(party=d["leaf"]["party"].upper())),
        mutate(lambda d: d["path"][0].update(hash=d["path"][0]["hash"][2:])),
        mutate(lambda d: d["path"][0].update(sum="1e3")),
        mutate(lambda d: d.update(index=0.0)),
        mutate(lambda d: d.update(index=True)),
        mutate(lambda d: d.update(path={})),
    ]
    for d in bad:
        with pytest.raises(MerkleError):
            BalanceProof.from_dict(d)
    assert BalanceProof.from_dict(good) == tree.proof(a, "BTC")
