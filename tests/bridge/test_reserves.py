"""Solvency rules and the proof-of-reserves report, without chains.

The report is built over small in-memory readers (a fake Bitcoin node and a fake EVM chain that
answer from dictionaries), signed by a local key; the digest is recomputed here from its documented
layout with hashlib, the child keys with the independent ``bip32`` package, the signatures with
coincurve. The same checks against real chains are in ``test_reserves_chains.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import secrets
from dataclasses import dataclass, field

import pytest
from bip32 import BIP32
from coincurve import PrivateKey, PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_prime.bridge.custody import custody_address
from fusion_prime.bridge.derivation import deposit_address
from fusion_prime.bridge.orders import chain_key
from fusion_prime.bridge.reserves import (
    AddressProof,
    AssetPlan,
    Challenge,
    GatewayRef,
    InFlightWithdrawal,
    ReportError,
    ReserveAddress,
    ReservesReport,
    ScannedUtxo,
    SolvencyError,
    SolvencyInputs,
    UtxoScan,
    after_mint,
    after_payout,
    attestation_digest,
    build_report,
    check_solvency,
    verify_report,
)
from fusion_prime.protocol.addresses import p2wpkh_address
from fusion_prime.protocol.curve import Point, Q
from fusion_prime.protocol.hd import derive, xpub
from fusion_prime.signer.bitcoin import address_to_script, p2wpkh_script

BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
SRC = "eip155:31337"
DST = "eip155:31338"
GATEWAY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
FPBTC = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
FPETH = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
BURNER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
TAG = b"FusionPrime/reserves/v1"


# ----------------------------------------------------------------------------------- solvency

def test_exactly_solvent_is_solvent_and_one_unit_short_is_not() -> None:
    exact = check_solvency(SolvencyInputs("fpBTC", custody=300, supply=200, in_flight=100))
    assert exact.ok and exact.gap == 0 and exact.custody == 300 and exact.liabilities == 300
    short = check_solvency(SolvencyInputs("fpBTC", custody=299, supply=200, in_flight=100))
    assert not short.ok and short.gap == 1
    assert "fpBTC" in short.reason and "short by 1" in short.reason and "299" in short.reason


def test_tolerance_is_the_permitted_gap_and_no_more() -> None:
    within = check_solvency(SolvencyInputs("fpETH", custody=990, supply=1000, tolerance=10))
    assert within.ok and within.gap == 10
    beyond = check_solvency(SolvencyInputs("fpETH", custody=989, supply=1000, tolerance=10))
    assert not beyond.ok and beyond.gap == 11 and "short by 1" in beyond.reason and "tolerance 10" in beyond.reason


def test_after_mint_counts_the_new_supply_against_custody() -> None:
    books = SolvencyInputs("fpBTC", custody=100, supply=60, in_flight=30)
    assert check_solvency(books).ok
    last = after_mint(books, 10)
    assert last.ok and last.liabilities == 100 and last.custody == 100  # the deposit is already custody
    over = after_mint(books, 11)
    assert not over.ok and over.liabilities == 101 and "short by 1" in over.reason and "minting 11" in over.reason
    assert not after_mint(SolvencyInputs("fpBTC", 100, 60, 30, tolerance=0), 11).ok
    assert after_mint(SolvencyInputs("fpBTC", 100, 60, 30, tolerance=1), 11).ok


def test_after_payout_moves_the_burn_out_of_liabilities_and_the_spend_out_of_custody() -> None:
    books = SolvencyInputs("fpBTC", custody=100, supply=60, in_flight=40)
    paid = after_payout(books, burned_amount=40, spent=40)
    assert paid.ok and paid.custody == 60 and paid.liabilities == 60
    # a payout whose miner fee is not covered: one unit short, unless the tolerance covers it
    costly = after_payout(books, burned_amount=40, spent=41)
    assert not costly.ok and costly.custody == 59 and "short by 1" in costly.reason
    assert after_payout(dataclasses.replace(books, tolerance=1), 40, 41).ok
    # a custody that was already short is flipped back by a payout that takes less than it burns
    short = SolvencyInputs("fpBTC", custody=95, supply=60, in_flight=40)
    assert not check_solvency(short).ok
    assert after_payout(short, burned_amount=40, spent=35).ok


def test_after_payout_refuses_what_the_books_cannot_explain() -> None:
    books = SolvencyInputs("fpETH", custody=100, supply=60, in_flight=40)
    beyond = after_payout(books, burned_amount=41, spent=10)
    assert not beyond.ok and "only 40 is in flight" in beyond.reason
    overspend = after_payout(SolvencyInputs("fpETH", custody=10, supply=0, in_flight=40), 40, 11)
    assert not overspend.ok and "custody holds only 10" in overspend.reason


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", None])
def test_solvency_inputs_must_be_non_negative_integers(bad: object) -> None:
    with pytest.raises(SolvencyError, match="non-negative integer"):
        SolvencyInputs("fpBTC", custody=bad, supply=0)  # type: ignore[arg-type]
    with pytest.raises(SolvencyError):
        after_mint(SolvencyInputs("fpBTC", 1, 0), bad)  # type: ignore[arg-type]
    with pytest.raises(SolvencyError):
        after_payout(SolvencyInputs("fpBTC", 1, 0, 1), 1, bad)  # type: ignore[arg-type]


amounts = st.integers(min_value=0, max_value=2**130)


@given(amounts, amounts, amounts, amounts, amounts)
def test_solvency_is_custody_plus_tolerance_covering_supply_plus_in_flight(
        custody: int, supply: int, in_flight: int, tolerance: int, mint: int) -> None:
    books = SolvencyInputs("fpX", custody, supply, in_flight, tolerance)
    assert check_solvency(books).ok == (custody + tolerance >= supply + in_flight)
    assert after_mint(books, mint).ok == (custody + tolerance >= supply + mint + in_flight)


# ------------------------------------------------------------------------------ fake chains

def _hash() -> str:
    return secrets.token_bytes(32).hex()


@dataclass
class FakeBitcoin:
    """A chain of random block hashes, outputs in blocks, and which block spent each."""

    hashes: list[str] = field(default_factory=lambda: [_hash() for _ in range(20)])
    outputs: dict[tuple[str, int], tuple[int, bytes, int]] = field(default_factory=dict)  # value, script, height
    spent_at: dict[tuple[str, int], int] = field(default_factory=dict)

    def pay(self, script: bytes, value: int, height: int) -> tuple[str, int]:
        txid = _hash()
        self.outputs[(txid, 0)] = (value, script, height)
        return txid, 0

    def genesis_hash(self) -> str:
        return "0f9188f13cb7b2c71f2a335e3a4fc328" + self.hashes[0][32:]

    def tip_height(self) -> int:
        return len(self.hashes) - 1

    def block_hash(self, height: int) -> str | None:
        if height == 0:
            return self.genesis_hash()
        return self.hashes[height] if 0 <= height < len(self.hashes) else None

    def scan(self, scripts: list[bytes]) -> UtxoScan:
        tip = self.tip_height()
        found = tuple(ScannedUtxo(s, t, v, val, h) for (t, v), (val, s, h) in self.outputs.items()
                      if s in scripts and (t, v) not in self.spent_at)
        return UtxoScan(tip, self.hashes[tip], found)

    def output(self, txid: str, vout: int, block_hash: str) -> tuple[int, bytes] | None:
        out = self.outputs.get((txid, vout))
        if out is None or self.block_hash(out[2]) != block_hash:
            return None
        return out[0], out[1]

    def is_unspent(self, txid: str, vout: int) -> bool:
        return (txid, vout) in self.outputs and (txid, vout) not in self.spent_at

    def spent_outpoints(self, block_hash: str) -> frozenset[tuple[str, int]]:
        height = self.hashes.index(block_hash)
        return frozenset(o for o, h in self.spent_at.items() if h == height)


@dataclass
class FakeEvm:
    chain: int
    hashes: list[str] = field(default_factory=lambda: ["0x" + _hash() for _ in range(30)])
    balances: dict[str, int] = field(default_factory=dict)
    supplies: dict[str, int] = field(default_factory=dict)
    signer: str = ""
    burns: dict[int, tuple[str, str, int]] = field(default_factory=dict)

    def chain_id(self) -> int:
        return self.chain

    def head(self) -> int:
        return len(self.hashes) - 1

    def block_hash(self, number: int) -> str | None:
        return self.hashes[number] if 0 <= number < len(self.hashes) else None

    def balance(self, address: str, block: int) -> int:
        return self.balances.get(address, 0)

    def total_supply(self, token: str, block: int) -> int:
        return self.supplies[token]

    def token_gateway(self, token: str, block: int) -> str:
        return GATEWAY

    def gateway_signer(self, gateway: str, block: int) -> str:
        return self.signer

    def asset_source_chain(self, gateway: str, token: str, block: int) -> bytes:
        return chain_key(BTC if token == FPBTC else SRC)

    def asset_supply(self, gateway: str, token: str, block: int) -> int:
        return self.supplies[token]

    def burn_status(self, gateway: str, burn_nonce: int, token: str, burner: str, amount: int,
                    block: int) -> tuple[bool, bool]:
        return self.burns.get(burn_nonce) == (token, burner, amount), False

    def configured_assets(self, gateway: str, to_block: int) -> dict[str, bytes]:
        return {t: self.asset_source_chain(gateway, t, to_block) for t in self.supplies}


class Group:
    """A group key held in one place (a test stand-in for the threshold network)."""

    def __init__(self) -> None:
        self.secret = int.from_bytes(secrets.token_bytes(32), "big") % Q or 1
        self.key = Point.base_mul(self.secret)
        self.chain_code = secrets.token_bytes(32)

    def sign(self, digest: bytes, path: str) -> tuple[int, int]:
        child = (self.secret + derive(self.key, self.chain_code, path).tweak) % Q
        sig = PrivateKey(child.to_bytes(32, "big")).sign_recoverable(digest, hasher=None)
        return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")


@dataclass
class World:
    group: Group
    btc: FakeBitcoin
    src: FakeEvm
    dst: FakeEvm
    readers: dict[str, object]
    addresses: list[ReserveAddress]
    plans: list[AssetPlan]

    def build(self, **overrides: object) -> ReservesReport:
        head = self.dst.head()
        args: dict[str, object] = dict(
            challenge=Challenge(DST, head - 2, self.dst.hashes[head - 2]), group_key=self.group.key.to_bytes(),
            chain_code=self.group.chain_code, gateway=GatewayRef(DST, GATEWAY), assets=self.plans,
            addresses=self.addresses, sign=self.group.sign, readers=self.readers)
        args.update(overrides)
        return build_report(**args)  # type: ignore[arg-type]


@pytest.fixture
def world() -> World:
    return _make_world()


def _make_world() -> World:
    group = Group()
    btc, src, dst = FakeBitcoin(), FakeEvm(31337), FakeEvm(31338)
    dst.signer = _eth(group.key)
    recipient = "0x" + "11" * 20
    btc_custody = custody_address(group.key, group.chain_code, BTC)
    btc_deposit = deposit_address(group.key, group.chain_code, BTC, DST, recipient)
    eth_custody = custody_address(group.key, group.chain_code, SRC)
    btc.pay(p2wpkh_script(btc_custody.public_key), 200_000_000, 5)
    btc.pay(p2wpkh_script(btc_custody.public_key), 50_000_000, 7)
    btc.pay(p2wpkh_script(btc_deposit.public_key), 100_000_000, 9)
    src.balances[eth_custody.address] = 6 * 10**18
    dst.supplies = {FPBTC: 280_000_000, FPETH: 5 * 10**18}
    dst.burns[1] = (FPBTC, BURNER, 20_000_000)
    addresses = [ReserveAddress.custody(BTC), ReserveAddress.deposit(BTC, btc_deposit.path),
                 ReserveAddress.custody(SRC)]
    plans = [AssetPlan("fpBTC", BTC, FPBTC, tolerance=10_000,
                       in_flight=(InFlightWithdrawal(1, BURNER, 20_000_000),)),
             AssetPlan("fpETH", SRC, FPETH)]
    return World(group, btc, src, dst, {BTC: btc, SRC: src, DST: dst}, addresses, plans)


def _eth(key: Point) -> str:
    from fusion_prime.protocol.addresses import ethereum_address

    return ethereum_address(key)


# ------------------------------------------------------------------------------ the digest

def _independent_digest(challenge_chain: str, height: int, challenge_hash: bytes, chain: str, address: str) -> bytes:
    """The documented layout, recomputed here: BIP340 tagged hash of length-prefixed fields."""
    def lp(text: str) -> bytes:
        return bytes([len(text)]) + text.encode()

    message = lp(challenge_chain) + height.to_bytes(8, "big") + challenge_hash + lp(chain) + lp(address)
    tag = hashlib.sha256(TAG).digest()
    return hashlib.sha256(tag + tag + message).digest()


def test_attestation_digest_is_the_documented_tagged_hash_and_binds_every_field() -> None:
    block = secrets.token_bytes(32)
    challenge = Challenge(DST, 1234, "0x" + block.hex())
    address = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    digest = attestation_digest(challenge, BTC, address)
    assert digest == _independent_digest(DST, 1234, block, BTC, address)
    other_block = "0x" + secrets.token_bytes(32).hex()
    variants = {
        "challenge hash": attestation_digest(Challenge(DST, 1234, other_block), BTC, address),
        "challenge height": attestation_digest(Challenge(DST, 1235, challenge.block_hash), BTC, address),
        "challenge chain": attestation_digest(Challenge("eip155:1", 1234, challenge.block_hash), BTC, address),
        "chain": attestation_digest(challenge, "bip122:000000000019d6689c085ae165831e93",
                                    "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),
        "address": attestation_digest(challenge, BTC, p2wpkh_address(Point.base_mul(5), "regtest")),
    }
    assert all(v != digest for v in variants.values())
    assert len(set(variants.values())) == len(variants)


@pytest.mark.parametrize("chain, address", [
    (BTC, "BCRT1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KYGT080"),  # uppercase: another spelling of the same address
    (BTC, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"),  # a mainnet address on regtest
    (SRC, "0x5fbdb2315678afecb367f032d93f642f64180aa3"),  # lowercase, not EIP-55
    ("eip155:01", GATEWAY),  # not a canonical CAIP-2 id
])
def test_attestation_digest_refuses_non_canonical_inputs(chain: str, address: str) -> None:
    challenge = Challenge(DST, 1, "0x" + "ab" * 32)
    with pytest.raises(ReportError):
        attestation_digest(challenge, chain, address)


# -------------------------------------------------------------------- building and the JSON

def test_built_report_attests_each_funded_address_with_the_groups_child_key(world: World) -> None:
    report = world.build()
    assert [a.symbol for a in report.assets] == ["fpBTC", "fpETH"]
    btc, eth = report.assets
    assert sum(p.balance for p in btc.addresses) == 350_000_000
    assert btc.totals.custody == 350_000_000 and btc.totals.liabilities == 300_000_000
    assert eth.totals.custody == 6 * 10**18 and eth.totals.supply == 5 * 10**18
    root = BIP32.from_xpub(xpub(world.group.key, world.group.chain_code))  # an independent BIP32
    for asset in report.assets:
        for proof in asset.addresses:
            path = "m/" + "/".join(str(i) for i in proof.path)
            assert root.get_pubkey_from_path(path) == proof.public_key
            digest = _independent_digest(DST, report.challenge.height, bytes.fromhex(report.challenge.block_hash[2:]),
                                         asset.source_chain, proof.address)
            r, s = proof.signature[:32], proof.signature[32:]
            assert PublicKey(proof.public_key).verify(_der(r, s), digest, hasher=None)
            if asset.source_chain == BTC:
                assert address_to_script(proof.address, "regtest") == p2wpkh_script(proof.public_key)
    assert verify_report(report, world.readers) == []


def _der(r: bytes, s: bytes) -> bytes:
    def enc(x: bytes) -> bytes:
        x = x.lstrip(b"\0") or b"\0"
        if x[0] & 0x80:
            x = b"\0" + x
        return b"\x02" + bytes([len(x)]) + x

    body = enc(r) + enc(s)
    return b"\x30" + bytes([len(body)]) + body


def test_empty_addresses_are_left_out_unless_asked(world: World) -> None:
    recipient = "0x" + "22" * 20
    empty = deposit_address(world.group.key, world.group.chain_code, BTC, DST, recipient)
    world.addresses.append(ReserveAddress.deposit(BTC, empty.path))
    assert empty.address not in {p.address for p in world.build().assets[0].addresses}
    full = world.build(skip_empty=False)
    listed = {p.address: p for p in full.assets[0].addresses}
    assert listed[empty.address].balance == 0 and listed[empty.address].utxos == ()
    assert verify_report(full, world.readers) == []


def test_a_signer_whose_signature_does_not_verify_is_caught_by_the_builder(world: World) -> None:
    def wrong_key(digest: bytes, path: str) -> tuple[int, int]:
        return world.group.sign(digest, "m/1")

    with pytest.raises(ReportError, match="does not verify"):
        world.build(sign=wrong_key)


def test_report_json_round_trip_is_canonical(world: World) -> None:
    report = world.build()
    text = report.to_json()
    assert ReservesReport.from_json(text) == report
    # canonical: what the standard library writes for the same data with sorted keys and no spaces
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    # any other layout of the same data reads as the same report and writes back the canonical text
    assert ReservesReport.from_json(json.dumps(data, indent=3)).to_json() == text
    assert report.digest() == hashlib.sha256(text.encode()).digest()
    # amounts are strings (wei do not fit a JSON double), heights integers
    asset = data["assets"][1]
    assert asset["addresses"][0]["balance"] == str(6 * 10**18) and isinstance(asset["height"], int)
    assert data["format"] == "fusion-prime/proof-of-reserves" and data["version"] == 1


def _mutated(report: ReservesReport, edit: object) -> str:
    data = json.loads(report.to_json())
    edit(data)  # type: ignore[operator]
    return json.dumps(data)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(extra=1), "unknown extra"),
    (lambda d: d.pop("challenge"), "missing challenge"),
    (lambda d: d.update(version=2), "unsupported version"),
    (lambda d: d["assets"][0]["addresses"][0].update(balance=1), "decimal string"),
    (lambda d: d["assets"][0]["addresses"][0].update(balance="01"), "leading zeros"),
    (lambda d: d["assets"][0].update(height=1.0), "integers or decimal strings"),
    (lambda d: d["assets"][0]["addresses"].append(d["assets"][0]["addresses"][0]), "listed twice"),
    (lambda d: d["assets"][0]["addresses"][0].update(address=d["assets"][0]["addresses"][0]["address"].upper()),
     "lowercase"),
    (lambda d: d["assets"][1]["addresses"][0].update(address=d["assets"][1]["addresses"][0]["address"].lower()),
     "EIP-55"),
    (lambda d: d["assets"][1]["addresses"][0].update(utxos=[]), "Bitcoin addresses only"),
    (lambda d: d["assets"][1].update(symbol=d["assets"][0]["symbol"]), "share a symbol"),
    (lambda d: d["challenge"].update(hash="0x" + d["challenge"]["hash"][2:].upper()), "lowercase hex"),
    (lambda d: d["group_key"].update(public_key="02" + "00" * 32), "not a compressed"),
    (lambda d: d["assets"][0]["addresses"][0].update(path="m/1'/2"), "hardened"),
    (lambda d: d["assets"][0]["addresses"][0].update(role="treasury"), "role"),
])
def test_malformed_reports_are_refused_with_a_reason(world: World, edit: object, message: str) -> None:
    text = _mutated(world.build(), edit)
    with pytest.raises(ReportError, match=message):
        ReservesReport.from_json(text)
    problems = verify_report(text, world.readers)
    assert len(problems) == 1 and problems[0].startswith("malformed report:")


def test_not_json_at_all_is_a_problem_not_a_traceback(world: World) -> None:
    assert verify_report("{", world.readers)[0].startswith("malformed report: not JSON")
    assert verify_report(b"\xff\xfe", world.readers)[0].startswith("malformed report")


# ------------------------------------------------ verification logic over the fake chains

def test_a_coin_spent_after_the_stated_height_still_counts_one_spent_before_does_not(world: World) -> None:
    report = world.build()
    btc = report.assets[0]
    coin = btc.addresses[0].utxos[0]  # type: ignore[index]
    world.btc.hashes += [_hash(), _hash()]
    world.btc.spent_at[(coin.txid, coin.vout)] = btc.height + 1
    assert verify_report(report, world.readers) == []
    world.btc.spent_at[(coin.txid, coin.vout)] = btc.height  # spent in the stated block itself
    problems = verify_report(report, world.readers)
    assert any(f"UTXO {coin.txid}:{coin.vout}: was spent at or before the stated height {btc.height}" in p
               for p in problems), problems


def test_an_endpoint_on_another_chain_or_none_at_all_is_a_problem(world: World) -> None:
    report = world.build()
    wrong = dict(world.readers, **{SRC: FakeEvm(1)})
    problems = verify_report(report, wrong)
    assert any(f"{SRC}: the endpoint given is on eip155:1, another chain" in p for p in problems), problems
    assert any("fpETH: solvency not checked" in p for p in problems)
    missing = {k: v for k, v in world.readers.items() if k != BTC}
    problems = verify_report(report, missing)
    assert any(f"{BTC}: no endpoint given" in p for p in problems), problems


def test_a_reader_that_fails_gives_a_problem_not_a_traceback(world: World) -> None:
    class Broken(FakeEvm):
        def balance(self, address: str, block: int) -> int:
            raise ConnectionError("endpoint down")

    broken = Broken(31337, hashes=world.src.hashes, balances=world.src.balances)
    problems = verify_report(world.build(), dict(world.readers, **{SRC: broken}))
    assert any("chain read failed: ConnectionError: endpoint down" in p for p in problems), problems


def test_the_verifiers_own_tolerance_replaces_the_reports(world: World) -> None:
    world.dst.supplies[FPETH] = 6 * 10**18 + 5  # 5 wei over custody
    world.plans[1] = dataclasses.replace(world.plans[1], tolerance=5)
    report = world.build()
    assert verify_report(report, world.readers) == []
    problems = verify_report(report, world.readers, tolerances={"fpETH": 4})
    assert len(problems) == 1 and "fpETH insolvent" in problems[0] and "short by 1" in problems[0]


def test_the_expected_group_key_is_checked(world: World) -> None:
    report = world.build()
    assert verify_report(report, world.readers, expected_group_key=world.group.key.to_bytes().hex()) == []
    other = Point.base_mul(7).to_bytes()
    problems = verify_report(report, world.readers, expected_group_key=other)
    assert problems == [f"group key {world.group.key.to_bytes().hex()} is not the expected {other.hex()}"]


def test_no_secret_in_what_the_values_print(world: World) -> None:
    report = world.build()
    text = repr(report) + report.to_json()
    assert format(world.group.secret, "x") not in text and str(world.group.secret) not in text


def test_address_proof_rejects_a_bad_signature_length() -> None:
    with pytest.raises(ReportError, match="64 bytes"):
        AddressProof("custody", "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", (1, 0), b"\x02" + b"\1" * 32,
                     b"\0" * 63, 0, ())


# ------------------------------------------------------------------ any tampering, fuzzed

@functools.cache
def _shared() -> tuple[World, str]:
    world = _make_world()
    return world, world.build().to_json()


def _leaf_paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _leaf_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _leaf_paths(value, (*prefix, index))
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


@settings(deadline=None, max_examples=150)
@given(st.data())
def test_any_change_is_a_problem_never_a_traceback(data: st.DataObject) -> None:
    """Replace any one value of a valid report by any JSON value (or a near miss of the same value):
    the verifier answers with problems, never an exception, and only the two free labels (the
    asset's symbol, and its tolerance, which a verifier may override) can change without one."""
    world, text = _shared()
    base = json.loads(text)
    path = data.draw(st.sampled_from(_leaf_paths(base)))
    target = base
    for step in path[:-1]:
        target = target[step]  # type: ignore[index]
    old = target[path[-1]]  # type: ignore[index]
    near = [str(int(old) + 1)] if isinstance(old, str) and old.isdigit() else []
    near += [old + 1] if isinstance(old, int) and not isinstance(old, bool) else []
    near += [old[:-1] + ("0" if old[-1] != "0" else "1")] if isinstance(old, str) and old else []
    value = data.draw(st.sampled_from(near) | json_values if near else json_values)
    mutated = copy.deepcopy(base)
    holder = mutated
    for step in path[:-1]:
        holder = holder[step]  # type: ignore[index]
    holder[path[-1]] = value  # type: ignore[index]
    problems = verify_report(json.dumps(mutated), world.readers)
    assert isinstance(problems, list) and all(isinstance(p, str) and p for p in problems)
    if mutated != base and path[-1] not in ("symbol", "tolerance"):
        assert problems, (path, value)
