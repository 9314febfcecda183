"""Funding settlement accounts from bridge deposits (issue 16, ``bridge/settlement/funding.py``).

* The account deposit address scheme, recomputed here independently (the tagged hash written out,
  BIP32 CKDpub with coincurve's raw point arithmetic, bech32 with bitcoinlib, EIP-55 with eth-utils)
  and pinned; it never meets a bridge deposit path or the custody path.
* ``Funding`` over a real bridge database (SQLite and PostgreSQL): registration (idempotent,
  forwarded once), ``pending_credits`` (at depth only, oldest first, not credited, not paused),
  ``verify_credit`` (every refusal, and "retry" when merely not at depth or not known here) and
  ``credited`` (custody coin per chain, audit event, idempotent).
* The deposit machine with ``accounts=True``: an account deposit confirms but is never minted; a
  credit makes a later reorg an erratum. The mint policy's chain view knows account deposits.
* The Bridge service's ``GetDepositAddress`` for an account, and solvency counting the ledger.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bitcoinlib.encoding import pubkeyhash_to_addr_bech32
from coincurve import PrivateKey, PublicKey
from Crypto.Hash import RIPEMD160
from eth_utils import keccak, to_checksum_address
from fp_postgres import PostgresCluster, PostgresUnavailable
from web3 import Web3

from fusion_prime.bridge import db as dbm
from fusion_prime.bridge.chainview import NodeChainView
from fusion_prime.bridge.custody import CUSTODY_PURPOSE
from fusion_prime.bridge.db import BridgeDB, open_database
from fusion_prime.bridge.deposits import (
    CONFIRMED,
    ERRATUM,
    REORGED,
    Alert,
    BlockConnected,
    BlockDisconnected,
    Credited,
    DepositConfig,
    DepositMachine,
    DepositOutput,
    MintSeen,
    OrderSigned,
    PauseChain,
    ProposeMint,
    Relay,
    Resume,
    Route,
)
from fusion_prime.bridge.derivation import (
    ACCOUNT_PURPOSE,
    ACCOUNT_TAG,
    PURPOSE,
    SETTLEMENT_DESTINATION,
    DerivationError,
    account_deposit,
    deposit_address,
    deposit_path,
    is_deposit_path,
    party_bytes,
    path_string,
)
from fusion_prime.bridge.orders import EVM_NATIVE_VOUT, ChainParams, MintOrder, deposit_id
from fusion_prime.bridge.reserves import SolvencyInputs, after_mint, after_payout, check_solvency
from fusion_prime.bridge.service import BridgeServicer, SourceChain
from fusion_prime.bridge.settlement.batch import Credit
from fusion_prime.bridge.settlement.funding import (
    CREDITED_EVENT,
    Funding,
    FundingError,
    account_deposit_address,
    account_deposit_path,
    credited_deposits,
)
from fusion_prime.proto.generated import bridge_pb2
from fusion_prime.protocol.curve import Point

GROUP_SECRET = int.from_bytes(hashlib.sha256(b"fusion prime test group key").digest(), "big")
GROUP_KEY = Point.from_bytes(PrivateKey(GROUP_SECRET.to_bytes(32, "big")).public_key.format())
CHAIN_CODE = hashlib.sha256(b"fusion prime test chain code").digest()

BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
BTC_MAIN = "bip122:000000000019d6689c085ae165831e93"
ETH = "eip155:31337"
DST = "eip155:31338"
ASSETS = {"BTC": BTC, "ETH": ETH}
ALICE = PrivateKey(hashlib.sha256(b"settlement party alice").digest()).public_key.format()
BOB = PrivateKey(hashlib.sha256(b"settlement party bob").digest()).public_key.format()
MINT_RECIPIENT = "0x1111111111111111111111111111111111111111"

# Pinned: the scheme is fixed forever for a deployed key (changing a constant moves every address).
PINNED = {
    BTC: ("m/1179669345/390594339/1330622947/1127236011/1024447616/2030795518/1601377288/702895065/1097861917",
          "bcrt1qylmw902amylrzu0dtrxk8p02hxqnf4dyrw7vvw"),
    ETH: ("m/1179669345/1618612559/691054171/1660284614/147385759/2028657996/1540589890/600117436/1054060974",
          "0xc1939d857620c4BE8786Aa9ffd1e2201105C0473"),
    BTC_MAIN: ("m/1179669345/1915150822/136475407/711660798/1147021087/1148920291/1458334490/321982292/2054106359",
               "bc1qjuxtrph0tfhgk23t3wurhs82fryj76uftdzqu5"),
}
BTC_PARAMS = ChainParams(min_confirmations=3, value_per_block=50 * 10**8, max_confirmations=6, dust_limit=294,
                         sweep_cost=1_000)


# ----------------------------------------------------------------------------- independent derivation

def reference_path(src: str, party: bytes) -> tuple[int, ...]:
    tag = hashlib.sha256(b"FusionPrime/settlement/account-deposit/v1").digest()
    msg = bytes([len(src)]) + src.encode() + party
    bits = bin(int.from_bytes(hashlib.sha256(tag + tag + msg).digest(), "big"))[2:].zfill(256)
    return (int.from_bytes(b"FPSa", "big"), *(int(bits[31 * i: 31 * i + 31], 2) for i in range(8)))


def reference_child(path: tuple[int, ...]) -> bytes:
    key, chain = PrivateKey(GROUP_SECRET.to_bytes(32, "big")).public_key, CHAIN_CODE
    for index in path:
        digest = hmac.new(chain, key.format() + index.to_bytes(4, "big"), hashlib.sha512).digest()
        key = PublicKey.combine_keys([key, PrivateKey(digest[:32]).public_key])
        chain = digest[32:]
    return key.format()


def reference_address(src: str, party: bytes) -> tuple[str, str]:
    path = reference_path(src, party)
    child = reference_child(path)
    if src.startswith("bip122:"):
        prefix = "bcrt" if src == BTC else "bc"
        address = pubkeyhash_to_addr_bech32(RIPEMD160.new(hashlib.sha256(child).digest()).digest(), prefix=prefix,
                                            witver=0)
    else:
        address = to_checksum_address(keccak(PublicKey(child).format(compressed=False)[1:])[-20:])
    return "m/" + "/".join(map(str, path)), address


def test_account_addresses_match_an_independent_derivation_and_are_pinned() -> None:
    assert ACCOUNT_TAG == b"FusionPrime/settlement/account-deposit/v1" and ACCOUNT_PURPOSE == 0x46505361
    for chain, (path, address) in PINNED.items():
        assert reference_address(chain, ALICE) == (path, address)
        derived = account_deposit(GROUP_KEY, CHAIN_CODE, chain, ALICE)
        assert (path_string(derived.path), derived.address) == (path, address)
        assert account_deposit_path(ALICE, chain) == derived.path
        assert account_deposit_address(GROUP_KEY, CHAIN_CODE, chain, ALICE) == address
        assert derived.destination_chain == SETTLEMENT_DESTINATION and derived.recipient == ALICE.hex()
        assert reference_child(derived.path) == derived.public_key
    # the party may be given as hex, with or without 0x, either case
    for spelling in (ALICE.hex(), "0x" + ALICE.hex(), ALICE.hex().upper()):
        assert account_deposit(GROUP_KEY, CHAIN_CODE, BTC, spelling).address == PINNED[BTC][1]


def test_account_paths_never_meet_bridge_or_custody_paths() -> None:
    bridge = deposit_path(BTC, DST, MINT_RECIPIENT)
    for chain in (BTC, ETH, BTC_MAIN):
        for party in (ALICE, BOB):
            path = account_deposit_path(party, chain)
            assert path[0] == ACCOUNT_PURPOSE and path[0] not in (PURPOSE, CUSTODY_PURPOSE) and len(path) == 9
            assert all(0 <= c < 2**31 for c in path)  # non-hardened: every node derives it alone
            assert path != bridge and is_deposit_path(path) and is_deposit_path(bridge)
    # every input matters
    assert len({account_deposit_path(p, c) for p in (ALICE, BOB) for c in (BTC, ETH, BTC_MAIN)}) == 6
    # a party whose key bytes happen to be a recipient's never gets that recipient's mint address
    mint = deposit_address(GROUP_KEY, CHAIN_CODE, BTC, DST, MINT_RECIPIENT).address
    assert account_deposit(GROUP_KEY, CHAIN_CODE, BTC, ALICE).address != mint


@pytest.mark.parametrize("bad", [b"", ALICE[:32], b"\x04" + ALICE[1:], b"\x02" + b"\xff" * 32, "zz" * 33, 7])
def test_a_party_must_be_a_compressed_point(bad: Any) -> None:
    with pytest.raises(DerivationError):
        party_bytes(bad)
    with pytest.raises(DerivationError):
        account_deposit(GROUP_KEY, CHAIN_CODE, BTC, bad)


def test_an_account_source_must_be_a_supported_chain() -> None:
    for chain in ("cosmos:hub", SETTLEMENT_DESTINATION, "bip122:00000000000000000000000000000000"):
        with pytest.raises(DerivationError):
            account_deposit(GROUP_KEY, CHAIN_CODE, chain, ALICE)


# ------------------------------------------------------------------------------------------ databases

_CLUSTER: list[PostgresCluster] = []


def _cluster() -> PostgresCluster:
    if not _CLUSTER:
        try:
            cluster = PostgresCluster()
            atexit.register(cluster.stop)
            cluster.start()
        except PostgresUnavailable as exc:
            pytest.fail(f"PostgreSQL is required and could not start:\n{exc}", pytrace=False)
        _CLUSTER.append(cluster)
    return _CLUSTER[0]


@pytest.fixture(params=("sqlite", "postgresql"))
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BridgeDB]:
    if request.param == "sqlite":
        opened = open_database(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")
        try:
            yield opened
        finally:
            opened.close()
        return
    with _cluster().database("funding") as url:
        opened = open_database(url)
        try:
            yield opened
        finally:
            opened.close()


def funding(db: BridgeDB, **kw: Any) -> Funding:
    return Funding(db, group_key=GROUP_KEY, chain_code=CHAIN_CODE, assets=dict(ASSETS), **kw)


def txid(n: int) -> str:
    return hashlib.sha256(b"tx %d" % n).hexdigest()


def put_deposit(db: BridgeDB, f: Funding, party: bytes, asset: str, n: int, *, amount: int = 5_000_000,
                state: str = "confirmed", height: int = 100) -> bytes:
    """A deposit row to ``party``'s account address, as the bridge runtime's mirror writes it."""
    chain = ASSETS[asset]
    address = f.register(party, asset)
    vout = 0 if asset == "BTC" else EVM_NATIVE_VOUT
    did = deposit_id(chain, txid(n), vout)
    reason = {"dust": "below the minimum", "reorged": "block disconnected"}.get(state)
    db.upsert_deposit(dbm.Deposit(
        deposit_id=did, asset=asset, source_chain=chain, txid=txid(n), vout=vout, address=address, amount=amount,
        recipient=party.hex(), destination_chain=SETTLEMENT_DESTINATION, state=state, block_hash="bb" * 32,
        height=height, confirmations=3 if state == "confirmed" else 1, required_confirmations=3, reason=reason))
    return did


def test_register_is_idempotent_and_forwarded_once(db: BridgeDB) -> None:
    sent: list[dbm.DepositAddress] = []
    f = funding(db, forward=sent.append)
    address = f.register(ALICE, "BTC")
    assert address == PINNED[BTC][1]
    row = db.get_address(address)
    assert row is not None and (row.asset, row.source_chain, row.destination_chain, row.recipient) == (
        "BTC", BTC, SETTLEMENT_DESTINATION, ALICE.hex())
    assert path_string(row.path) == PINNED[BTC][0]
    assert f.register(ALICE, "BTC") == address and f.register_account(ALICE, "BTC")[1] is True
    assert [r.address for r in sent] == [address]
    assert f.register(ALICE, "ETH") == PINNED[ETH][1]
    with pytest.raises(FundingError):
        f.register(ALICE, "DOGE")
    with pytest.raises(FundingError):
        f.register(b"\x02" + b"\xff" * 32, "BTC")


def test_pending_credits_are_confirmed_uncredited_account_deposits_oldest_first(db: BridgeDB) -> None:
    f = funding(db)
    late = put_deposit(db, f, ALICE, "BTC", 1, height=120)
    early = put_deposit(db, f, BOB, "ETH", 2, amount=10**18, height=90)
    put_deposit(db, f, ALICE, "BTC", 3, state="confirming")
    put_deposit(db, f, ALICE, "BTC", 4, state="dust", amount=100)
    # a bridge (mint) deposit at depth is never offered
    mint = deposit_address(GROUP_KEY, CHAIN_CODE, BTC, DST, MINT_RECIPIENT)
    db.register_address(dbm.DepositAddress(mint.address, "BTC", BTC, DST, mint.recipient, mint.path))
    db.upsert_deposit(dbm.Deposit(deposit_id=deposit_id(BTC, txid(5), 0), asset="BTC", source_chain=BTC,
                                  txid=txid(5), vout=0, address=mint.address, amount=7_000_000,
                                  recipient=mint.recipient, destination_chain=DST, state="confirmed", height=80))
    offered = f.pending_credits(lambda d: False)
    assert offered == [Credit(early, BOB, "ETH", 10**18), Credit(late, ALICE, "BTC", 5_000_000)]
    assert f.pending_credits(lambda d: False, limit=1) == offered[:1]
    assert f.pending_credits(lambda d: d == early) == offered[1:]
    assert f.pending_credits(lambda d: False, eligible=lambda c: c.party == ALICE) == offered[1:]
    # once recorded as credited here, it is not offered again even if the ledger was not asked
    f.credited([offered[1]])
    assert f.pending_credits(lambda d: False) == offered[:1]
    # a chain paused by an erratum offers nothing (and its credits wait)
    g = funding(db, paused=lambda chain: chain == ETH)
    assert g.pending_credits(lambda d: False) == []
    assert g.verify_credit(offered[0]) is not None and g.verify_credit(offered[0]).startswith("retry:")


def test_verify_credit_accepts_only_what_this_node_saw_at_depth(db: BridgeDB) -> None:
    f = funding(db)
    did = put_deposit(db, f, ALICE, "BTC", 1)
    good = Credit(did, ALICE, "BTC", 5_000_000)
    assert f.verify_credit(good) is None

    def refused(credit: Credit, *words: str) -> None:
        why = f.verify_credit(credit)
        assert why is not None and not why.startswith("retry:"), why
        assert all(w in why for w in words), why

    refused(Credit(did, BOB, "BTC", 5_000_000), "account deposit address of " + BOB.hex())  # wrong party
    refused(Credit(did, ALICE, "BTC", 5_000_001), "5000000, not 5000001")  # wrong amount
    refused(Credit(did, ALICE, "BTC", 4_999_999), "not 4999999")
    refused(Credit(did, ALICE, "ETH", 5_000_000), BTC, ETH)  # wrong asset (another chain)
    refused(Credit(did, ALICE, "DOGE", 5_000_000), "DOGE")  # unknown asset
    refused(Credit(did, b"\x02" + b"\xff" * 32, "BTC", 5_000_000), "not a party key")
    # merely not (yet) at depth or not known here: retry, do not name the coordinator
    assert f.verify_credit(Credit(b"\x07" * 32, ALICE, "BTC", 5_000_000)).startswith("retry:")
    confirming = put_deposit(db, f, ALICE, "BTC", 2, state="confirming")
    why = f.verify_credit(Credit(confirming, ALICE, "BTC", 5_000_000))
    assert why is not None and why.startswith("retry:") and "1 of 3" in why
    # dust and reorged deposits are refused
    dust = put_deposit(db, f, ALICE, "BTC", 3, state="dust", amount=100)
    refused(Credit(dust, ALICE, "BTC", 100), "dust")
    reorged = put_deposit(db, f, ALICE, "BTC", 4, state="seen")
    db.update_deposit(reorged, state="reorged", reason="block disconnected")
    refused(Credit(reorged, ALICE, "BTC", 5_000_000), "reorganised")
    # a bridge deposit (it mints) is never a credit, whoever it names
    mint = deposit_address(GROUP_KEY, CHAIN_CODE, BTC, DST, MINT_RECIPIENT)
    db.register_address(dbm.DepositAddress(mint.address, "BTC", BTC, DST, mint.recipient, mint.path))
    minted = deposit_id(BTC, txid(9), 0)
    db.upsert_deposit(dbm.Deposit(deposit_id=minted, asset="BTC", source_chain=BTC, txid=txid(9), vout=0,
                                  address=mint.address, amount=5_000_000, recipient=mint.recipient,
                                  destination_chain=DST, state="confirmed", height=80))
    refused(Credit(minted, ALICE, "BTC", 5_000_000), "not a settlement account deposit")
    # a row that claims to be Alice's account deposit but pays another address (a forged record)
    forged = deposit_id(BTC, txid(10), 0)
    bob_address = f.register(BOB, "BTC")
    with db.transaction() as tx:
        tx.conn.execute(dbm.sa.insert(dbm.deposits).values(
            deposit_id=forged, asset="BTC", source_chain=BTC, txid=txid(10), vout=0, address=bob_address,
            amount=5_000_000, recipient=ALICE.hex(), destination_chain=SETTLEMENT_DESTINATION, state="confirmed",
            confirmations=3, required_confirmations=3, updated_at=0.0))
    refused(Credit(forged, ALICE, "BTC", 5_000_000), bob_address)


def test_credited_makes_custody_once_per_deposit(db: BridgeDB) -> None:
    f = funding(db)
    btc = put_deposit(db, f, ALICE, "BTC", 1)
    eth = put_deposit(db, f, BOB, "ETH", 2, amount=10**18)
    unknown = Credit(b"\x05" * 32, ALICE, "BTC", 1_000)
    credits = [Credit(btc, ALICE, "BTC", 5_000_000), Credit(eth, BOB, "ETH", 10**18), unknown]
    f.credited(credits, reference="batch 7")
    f.credited(credits, reference="batch 7")  # idempotent
    with db.read() as r:
        btc_coins, eth_coins = r.custody_coins(BTC), r.custody_coins(ETH)
        recorded = credited_deposits(r, [c.deposit_id for c in credits])
    alice_btc = account_deposit(GROUP_KEY, CHAIN_CODE, BTC, ALICE)
    bob_eth = account_deposit(GROUP_KEY, CHAIN_CODE, ETH, BOB)
    assert [(c["txid"], c["vout"], int(c["value"]), tuple(c["path"]), c["public_key"], c["origin"])
            for c in btc_coins] == [(txid(1), 0, 5_000_000, alice_btc.path, alice_btc.public_key.hex(), "deposit")]
    assert [(c["txid"], c["vout"], int(c["value"]), tuple(c["path"])) for c in eth_coins] == [
        (txid(2), EVM_NATIVE_VOUT, 10**18, bob_eth.path)]
    assert set(recorded) == {btc, eth, unknown.deposit_id}
    assert recorded[btc]["reference"] == "batch 7" and recorded[btc]["custody"] is True
    assert recorded[unknown.deposit_id]["custody"] is False  # no row here: its coin comes when the runtime sees it
    assert sum(1 for e in db.events() if e.event == CREDITED_EVENT) == 3
    assert db.verify_event_chain()


def test_the_mint_policy_view_knows_account_deposits(db: BridgeDB) -> None:
    f = funding(db)
    did = put_deposit(db, f, ALICE, "BTC", 1)
    view = NodeChainView(db, bitcoin=None, source_evm=None, destination=Web3(),
                         gateway="0x5FbDB2315678afecb367f032d93F642f64180aa3")
    assert "settlement account of " + ALICE.hex() in (view.settlement_deposit(did, None) or "")
    other = deposit_id(BTC, txid(2), 0)
    assert view.settlement_deposit(other, None) is None
    assert "settlement account deposit address" in (view.settlement_deposit(other, PINNED[BTC][1]) or "")
    f.credited([Credit(other, ALICE, "BTC", 1)])
    assert "credited" in (view.settlement_deposit(other, None) or "")
    assert view.settlement_deposit(deposit_id(BTC, txid(3), 0), "bcrt1qunrelated") is None


# ------------------------------------------------------------------------------------ deposit machine

def machine(**kw: Any) -> DepositMachine:
    base: dict[str, Any] = {"source_chain": BTC, "params": BTC_PARAMS,
                            "routes": (Route(DST, "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
                                             "0x5FbDB2315678afecb367f032d93F642f64180aa3"),),
                            "header_window": 100, "group_key": GROUP_KEY, "chain_code": CHAIN_CODE,
                            "accounts": True}
    base.update(kw)
    return DepositMachine(DepositConfig(**base))


def bh(height: int, fork: str = "") -> str:
    return hashlib.sha256(f"{fork}{height}".encode()).hexdigest()


def block(height: int, *outputs: DepositOutput, fork: str = "") -> BlockConnected:
    return BlockConnected(height, bh(height, fork), bh(height - 1, fork if height > 101 else ""), tuple(outputs))


def account_out(party: bytes = ALICE, amount: int = 5_000_000, address: str | None = None) -> DepositOutput:
    return DepositOutput(txid(1), 0, address or account_deposit(GROUP_KEY, CHAIN_CODE, BTC, party).address, amount,
                         SETTLEMENT_DESTINATION, party.hex())


DID = "0x" + deposit_id(BTC, txid(1), 0).hex()


def run(m: DepositMachine, *observations: Any) -> list[Any]:
    out: list[Any] = []
    for obs in observations:
        out += m.handle(obs, 1_700_000_000)
    return out


def test_account_deposit_confirms_and_is_never_minted() -> None:
    m = machine()
    actions = run(m, block(100, account_out()), block(101), block(102), block(103))
    dep = m.get(DID)
    assert dep is not None and dep.state == CONFIRMED and dep.account and dep.recipient == ALICE.hex()
    assert not [a for a in actions if isinstance(a, ProposeMint | Relay)]
    # nothing brings a mint about: time passing, a resume, a restart
    assert not [a for a in run(m, block(104), Resume("x")) + m.resume_actions(1_800_000_000)
                if isinstance(a, ProposeMint | Relay)]
    # a signature for an order naming it is refused; a Minted for it is a critical alert
    order = MintOrder(asset="0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512", source_chain=BTC, source_txid=txid(1),
                      vout=0, recipient=MINT_RECIPIENT, amount=5_000_000, signer_epoch=0, nonce=1,
                      deadline=1_700_000_600)
    signed = run(m, OrderSigned(DID, order, b"\x00" * 65))
    assert not [a for a in signed if isinstance(a, Relay)] and [a for a in signed if isinstance(a, Alert)]
    minted = run(m, MintSeen(DID, "0x" + "ee" * 32, 5))
    assert any(isinstance(a, Alert) and a.severity == "critical" and "MINTED" in a.message for a in minted)


def test_account_deposits_need_accounts_enabled_and_the_derived_address() -> None:
    off = machine(accounts=False)
    actions = run(off, block(100, account_out()))
    assert off.get(DID) is None and [a for a in actions if isinstance(a, Alert)]
    m = machine()
    wrong = account_out(address=account_deposit(GROUP_KEY, CHAIN_CODE, BTC, BOB).address)  # Bob's address, Alice named
    actions = run(m, block(100, wrong))
    assert m.get(DID) is None and any("not the deposit address" in a.message for a in actions
                                      if isinstance(a, Alert))
    run(m, block(100, account_out(amount=100)))
    assert m.get(DID) is not None and m.get(DID).state == "dust"


def test_a_credited_account_deposit_reorganised_out_is_an_erratum() -> None:
    m = machine()
    run(m, block(100, account_out()), block(101), block(102))
    assert run(m, Credited(DID, "batch 3"))
    assert m.get(DID).credited == "batch 3"
    assert run(m, Credited(DID, "batch 3")) == []  # the same credit twice
    restored = DepositMachine.from_dict(json.loads(json.dumps(m.to_dict())), m.config)
    assert restored.to_dict() == m.to_dict()
    actions = run(restored, BlockDisconnected(102, bh(102)), BlockDisconnected(101, bh(101)),
                  BlockDisconnected(100, bh(100)))
    assert restored.get(DID).state == ERRATUM and restored.paused
    assert [a for a in actions if isinstance(a, PauseChain)]
    # uncredited, the same reorg only forgets it; a credit arriving while it is out is an erratum
    m2 = machine()
    run(m2, block(100, account_out()), block(101), block(102), BlockDisconnected(102, bh(102)),
        BlockDisconnected(101, bh(101)), BlockDisconnected(100, bh(100)))
    assert m2.get(DID).state == REORGED and not m2.paused
    assert [a for a in run(m2, Credited(DID, "batch 9")) if isinstance(a, PauseChain)]
    assert m2.get(DID).state == ERRATUM
    # a credit for a deposit this machine holds as a mint deposit is a critical alert, nothing else
    m3 = machine()
    mint_out = DepositOutput(txid(1), 0, deposit_address(GROUP_KEY, CHAIN_CODE, BTC, DST, MINT_RECIPIENT).address,
                             5_000_000, DST, MINT_RECIPIENT)
    run(m3, block(100, mint_out))
    assert [a.severity for a in run(m3, Credited(DID)) if isinstance(a, Alert)] == ["critical"]
    assert m3.get(DID).credited is None


# ------------------------------------------------------------------------------------------- service

class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.aborted: tuple[Any, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def abort(self, code: Any, details: str) -> None:
        self.aborted = (code, details)
        raise Exception()

    def code(self) -> Any:
        return self.aborted[0] if self.aborted else None


def test_get_deposit_address_serves_and_registers_account_addresses(tmp_path: Path) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")
    try:
        servicer = BridgeServicer(db, lambda s, d, r: deposit_address(GROUP_KEY, CHAIN_CODE, s, d, r),
                                  sources={BTC: SourceChain("BTC", BTC_PARAMS)}, destinations=[DST], node_id="n1")
        request = bridge_pb2.DepositAddressRequest(destination_chain=SETTLEMENT_DESTINATION, recipient=ALICE.hex(),
                                                   asset="BTC")
        ctx = _Context()
        with pytest.raises(Exception, match=r"^$"):  # grpcio's abort: a bare Exception
            servicer.GetDepositAddress(request, ctx)  # no ledger on this node
        assert ctx.aborted is not None and ctx.aborted[0] == grpc.StatusCode.INVALID_ARGUMENT
        sent: list[dbm.DepositAddress] = []
        servicer.funding = funding(db, forward=sent.append)
        answer = servicer.GetDepositAddress(request, _Context())
        assert (answer.address, answer.path, answer.destination_chain, answer.recipient, answer.asset) == (
            PINNED[BTC][1], PINNED[BTC][0], SETTLEMENT_DESTINATION, ALICE.hex(), "BTC")
        assert not answer.already_registered and answer.minimum_deposit == "1001" and not answer.wrapped_token
        assert len(sent) == 1 and sent[0].destination_chain == SETTLEMENT_DESTINATION
        # the forwarded form (what a peer's RegistrationForwarder sends): registered, not forwarded again
        forwarded = bridge_pb2.DepositAddressRequest(destination_chain=SETTLEMENT_DESTINATION, recipient=BOB.hex(),
                                                     source_chain=BTC)
        answer = servicer.GetDepositAddress(forwarded, _Context((("x-fp-bridge-forwarded-from", "n2"),)))
        assert db.get_address(answer.address) is not None and len(sent) == 1
        assert servicer.GetDepositAddress(request, _Context()).already_registered
        for bad in (bridge_pb2.DepositAddressRequest(destination_chain=SETTLEMENT_DESTINATION, recipient="0x12",
                                                     asset="BTC"),
                    bridge_pb2.DepositAddressRequest(destination_chain=SETTLEMENT_DESTINATION,
                                                     recipient=ALICE.hex(), asset="ETH")):
            ctx = _Context()
            with pytest.raises(Exception, match=r"^$"):  # grpcio's abort: a bare Exception
                servicer.GetDepositAddress(bad, ctx)
            assert ctx.aborted is not None and ctx.aborted[0] == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        db.close()


# ------------------------------------------------------------------------------------------- solvency

def test_solvency_counts_the_ledger() -> None:
    books = SolvencyInputs("BTC", custody=10_000, supply=6_000, in_flight=1_000, tolerance=0, ledger=3_000)
    assert books.liabilities == 10_000 and check_solvency(books).ok
    assert "ledger 3000" in check_solvency(books).reason
    assert not after_mint(books, 1).ok  # a credited deposit is custody the ledger owes: no room to mint on it
    assert after_payout(books, 1_000, 1_000).ok and not after_payout(books, 1_000, 1_001).ok
    short = SolvencyInputs("BTC", custody=9_999, supply=6_000, in_flight=1_000, ledger=3_000)
    assert not check_solvency(short).ok
    # without a ledger the wording is what it always was
    assert "ledger" not in check_solvency(SolvencyInputs("BTC", custody=1, supply=1)).reason


def test_the_withdrawal_side_reads_the_ledger_outside_database_transactions(tmp_path: Path) -> None:
    from fusion_prime.bridge.withdrawal_runtime import AssetSide, WithdrawalAuthorizer

    db = open_database(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")
    try:
        calls: list[int] = []

        def liabilities() -> dict[str, int]:
            calls.append(1)
            return {"BTC": 3_000, "ETH": 7}

        hooks = WithdrawalAuthorizer(db=db, sides={}, gateway=None, destination_chain_id=31338,
                                     gateway_address="0x5FbDB2315678afecb367f032d93F642f64180aa3", signer_path=(),
                                     node_id="n1", max_deadline_ahead=3600)

        class _Chain:
            symbol = "BTC"

        side = AssetSide(chain=_Chain(), asset="0x" + "0b" * 20, params=None, view=None,  # type: ignore[arg-type]
                         classify=lambda burn: None)
        with db.read() as r:
            assert hooks.ledger_owed(side, r) == 0  # no ledger: nothing owed
        f = funding(db, solvency=hooks)
        f.set_ledger_liabilities(liabilities)
        with db.read() as r:
            with pytest.raises(RuntimeError):
                hooks.ledger_owed(side, r, fresh=False)  # never asked yet: unknown, not zero
            assert hooks.ledger_owed(side, r) == 3_000 and len(calls) == 1
            assert hooks.ledger_owed(side, r, fresh=False) == 3_000 and len(calls) == 1
    finally:
        db.close()
