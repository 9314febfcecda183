"""The explorer's JSON views and its HTTP server, over a real SQLite bridge database with rows in it
and a real signer storage file (``bridge/explorer.py``).

Shows: each view reports what the database holds (a minted deposit's confirmations, outpoint and
mint tx; a withdrawal's payout txid and its bump; reserve samples in order, thinned and bounded;
sessions and the nodes they blamed); a hostile string is returned intact but never as markup (no
``<`` in any response byte); the server answers GET and HEAD only (405 with ``Allow`` for POST,
PUT, DELETE and made-up methods, the body unread beyond a bound); a Host name that is not loopback
or allowed is refused (DNS rebinding); no response carries a secret field, a client key or the
storage passphrase.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fusion_prime.bridge import db as dbm
from fusion_prime.bridge.db import BridgeDB, Deposit, DepositAddress, open_database
from fusion_prime.bridge.derivation import SETTLEMENT_DESTINATION
from fusion_prime.bridge.explorer import (
    ExplorerServer,
    ExplorerViews,
    ReserveRecorder,
    ReserveSample,
    account_fingerprint,
    host_allowed,
)
from fusion_prime.bridge.orders import deposit_id
from fusion_prime.node.storage import KeyMaterial, Storage

BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
ETH = "eip155:31337"
DST = "eip155:31338"
FPBTC = "0x" + "11" * 20
RECIPIENT = "0x" + "a1" * 20
PARTY = "02" + "5c" * 32  # a settlement client's public key: never shown
PASSPHRASE = "correct horse battery staple, explorer test"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>&amp;'
MINTED_TXID = "ab" * 32
MINT_TX = "0x" + "cd" * 32


def _address(db: BridgeDB, address: str, recipient: str, destination: str = DST, chain: str = BTC,
             asset: str = "BTC") -> None:
    db.register_address(DepositAddress(address=address, asset=asset, source_chain=chain,
                                       destination_chain=destination, recipient=recipient, path=(1, 2, 3)))


def _deposit(txid: str, address: str, amount: int, recipient: str, *, destination: str = DST, chain: str = BTC,
             asset: str = "BTC", **fields: Any) -> Deposit:
    return Deposit(deposit_id=deposit_id(chain, txid, 0), asset=asset, source_chain=chain, txid=txid, vout=0,
                   address=address, amount=amount, recipient=recipient, destination_chain=destination, **fields)


def _seed(db: BridgeDB) -> dict[str, Any]:
    """A minted BTC deposit, a dust one with a hostile reason, a settlement-account deposit, a
    Gateway withdrawal paid by a payout that was bumped once (hostile destination), an account
    withdrawal, and two chain cursors."""
    _address(db, "bcrt1qminted", RECIPIENT)
    minted = _deposit(MINTED_TXID, "bcrt1qminted", 125_000_000, RECIPIENT, state="confirming", confirmations=1,
                      required_confirmations=2, height=101, block_hash="ee" * 32)
    db.upsert_deposit(minted)
    did = minted.deposit_id
    db.update_deposit(did, state="confirmed", confirmations=2)
    db.update_deposit(did, state="signing")
    db.update_deposit(did, state="signed", order_digest=b"\x07" * 32, signature=b"\x08" * 65)
    db.update_deposit(did, state="minted", mint_tx=MINT_TX, minted_block=55)
    _address(db, "bcrt1qdust", "0x" + "d5" * 20)
    dust = _deposit("cd" * 32, "bcrt1qdust", 5_000, "0x" + "d5" * 20, state="dust", reason=HOSTILE,
                    required_confirmations=2)
    db.upsert_deposit(dust)
    _address(db, "bcrt1qaccount", PARTY, destination=SETTLEMENT_DESTINATION)
    account = _deposit("ef" * 32, "bcrt1qaccount", 70_000_000, PARTY, destination=SETTLEMENT_DESTINATION,
                       state="confirming", confirmations=1, required_confirmations=2)
    db.upsert_deposit(account)
    burn_id = b"\x42" * 32
    with db.transaction() as tx:
        tx.put_withdrawal({
            "burn_id": burn_id, "asset": FPBTC, "source_chain": BTC, "burn_nonce": 1, "burner": RECIPIENT,
            "amount": 40_000_000, "destination": HOSTILE.encode().hex(), "burn_block": 60, "burn_tx": "0x" + "99" * 32,
            "state": "broadcast", "payout_id": "0x" + "77" * 32, "txid": "b2" * 32, "confirmations": 0,
            "required_confirmations": 1, "refund_tx": None, "reason": None})
        tx.archive_payout(txid="b1" * 32, payout_id="0x" + "77" * 32, source_chain=BTC, role="coordinator",
                          burn_ids=["0x" + burn_id.hex()], inputs=[f"{MINTED_TXID}:0"], fee=400)
        tx.archive_payout(txid="b2" * 32, payout_id="0x" + "77" * 32, source_chain=BTC, role="coordinator",
                          burn_ids=["0x" + burn_id.hex()], inputs=[f"{MINTED_TXID}:0"], fee=900, replaces="b1" * 32)
        tx.put_account_withdrawal({
            "burn_id": b"\x43" * 32, "withdrawal_id": b"\x44" * 32, "party": PARTY, "ledger_asset": "BTC",
            "asset": FPBTC, "source_chain": BTC, "burn_nonce": 2**255 + 1, "amount": 1_000_000,
            "destination": b"bcrt1qpayee".hex(), "created_ms": 1, "state": "queued", "confirmations": 0,
            "required_confirmations": 1})
        tx.set_cursor(BTC, 120, "aa" * 32)
        tx.set_cursor(ETH, 30, "0x" + "bb" * 32)
    return {"minted": did, "dust": dust.deposit_id, "account": account.deposit_id, "burn": burn_id}


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[BridgeDB]:
    db = open_database(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path / "node.sqlite3", KeyMaterial.passphrase(PASSPHRASE), node_id="node1",
                    scrypt_log2_n=10, allow_weak_kdf=True)
    try:
        yield store
    finally:
        store.close()


def _snapshot() -> dict[str, Any]:
    return {"at": 1.0, "node": {"node_id": "node1", "status": "serving", "pool": {"state": "synced"}},
            "peers": [{"node_id": "node2", "address": "127.0.0.1:1", "status": "serving", "envelopes_sent": 3,
                       "delivery_failures": 0}],
            "chains": {BTC: {"tip": 121, "paused": True, "pause_reason": HOSTILE}},
            "solvency": {"BTC": {"asset": FPBTC, "chain": BTC, "solvent": True, "reason": ""}}}


@pytest.fixture
def views(bridge: BridgeDB, storage: Storage) -> ExplorerViews:
    return ExplorerViews(bridge, node_id="node1", snapshot=_snapshot, storage=storage, key_id=b"\x01" * 32,
                         pool_target=8, sessions_db=storage.path)


# ------------------------------------------------------------------------------------------ views


def test_deposits_view_shows_confirmations_outpoint_and_mint(bridge: BridgeDB, views: ExplorerViews) -> None:
    ids = _seed(bridge)
    doc = views.deposits({})
    by_id = {d["deposit_id"]: d for d in doc["deposits"]}
    assert set(by_id) == {"0x" + i.hex() for i in (ids["minted"], ids["dust"], ids["account"])}
    minted = by_id["0x" + ids["minted"].hex()]
    assert minted["state"] == "minted" and minted["mint_tx"] == MINT_TX and minted["minted_block"] == 55
    assert (minted["confirmations"], minted["required_confirmations"]) == (2, 2)
    assert minted["outpoint"] == f"{MINTED_TXID}:0" and minted["amount"] == "125000000"
    assert minted["amount_display"] == "1.25"
    assert by_id["0x" + ids["dust"].hex()]["reason"] == HOSTILE  # returned intact (the page escapes it)
    # the settlement client's key is never shown: a fingerprint of it instead
    assert by_id["0x" + ids["account"].hex()]["recipient"] == account_fingerprint(PARTY)
    assert doc["counts"]["minted"] == 1 and doc["counts"]["dust"] == 1 and doc["counts"]["confirming"] == 1
    # newest change first: the account deposit was written last
    assert doc["deposits"][0]["deposit_id"] == "0x" + ids["account"].hex()
    # search and filters
    assert [d["deposit_id"] for d in views.deposits({"q": [MINTED_TXID.upper()]})["deposits"]] == \
        ["0x" + ids["minted"].hex()]
    assert [d["deposit_id"] for d in views.deposits({"q": ["0x" + ids["dust"].hex()]})["deposits"]] == \
        ["0x" + ids["dust"].hex()]
    assert [d["state"] for d in views.deposits({"state": ["minted"]})["deposits"]] == ["minted"]
    assert len(views.deposits({"limit": ["1"]})["deposits"]) == 1


def test_withdrawals_view_shows_payout_txid_and_bumps(bridge: BridgeDB, views: ExplorerViews) -> None:
    ids = _seed(bridge)
    doc = views.withdrawals({})
    by_id = {w["burn_id"]: w for w in doc["withdrawals"]}
    burn = by_id["0x" + ids["burn"].hex()]
    assert burn["kind"] == "burn" and burn["txid"] == "b2" * 32 and burn["state"] == "broadcast"
    assert burn["bumps"] == 1
    assert [(v["txid"], v["replaces"]) for v in burn["payouts"]] == [("b1" * 32, None), ("b2" * 32, "b1" * 32)]
    assert burn["destination"] == HOSTILE and burn["amount_display"] == "0.4"
    account = by_id["0x" + (b"\x43" * 32).hex()]
    assert account["kind"] == "account" and account["withdrawal_id"] == "0x" + (b"\x44" * 32).hex()
    assert account["destination"] == "bcrt1qpayee" and "party" not in account


def test_reserve_recorder_keeps_moves_and_bounds_history(bridge: BridgeDB, views: ExplorerViews) -> None:
    recorder = ReserveRecorder(bridge, sample_seconds=60.0, max_samples=10)

    def sample(at: float, custody: int, supply: int, solvent: bool = True) -> ReserveSample:
        return ReserveSample(at=at, asset=FPBTC, symbol="BTC", chain=BTC, custody=custody, supply=supply,
                             in_flight=5, ledger=7, tolerance=0, solvent=solvent, source_height=100 + int(at),
                             destination_height=50 + int(at))

    for at in (1.0, 2.0, 3.0):  # nothing moved: one sample kept
        recorder.offer(sample(at, 1000, 900))
    assert recorder.flush() == 1
    recorder.offer(sample(4.0, 1000, 950))  # the supply moved
    recorder.offer(sample(70.0, 1000, 950))  # a minute passed
    recorder.offer(sample(80.0, 1000, 950))  # neither
    assert recorder.flush() == 2
    doc = views.reserves({})
    (asset,) = doc["assets"]
    assert asset["symbol"] == "BTC" and asset["decimals"] == 8
    assert [s["at"] for s in asset["samples"]] == [1.0, 4.0, 70.0]  # chronological
    latest = asset["latest"]
    assert latest["supply"] == "950" and latest["liabilities"] == str(950 + 5 + 7) and latest["custody"] == "1000"
    assert latest["source_height"] == 170 and latest["destination_height"] == 120
    # a restarted recorder knows the last written sample: an unchanged figure is not written again
    again = ReserveRecorder(bridge, sample_seconds=60.0, max_samples=10)
    again.offer(sample(90.0, 1000, 950))
    assert again.flush() == 0
    # bounded: only the newest max_samples stay
    for i in range(25):
        again.offer(sample(100.0 + i, 1000 + i, 950))
    again.flush()
    samples = views.reserves({"limit": ["1000"]})["assets"][0]["samples"]
    assert len(samples) == 10 and samples[-1]["custody"] == str(1000 + 24) and samples[0]["custody"] == "1015"


def test_sessions_view_lists_sessions_and_blames(storage: Storage, views: ExplorerViews) -> None:
    storage.session_started(b"\x01" * 32, phase="sign", coordinator="node1", participants=["node1", "node2"])
    storage.session_finished(b"\x01" * 32, state="done")
    storage.session_started(b"\x02" * 32, phase="presign", coordinator="node1", participants=["node1", "node3"])
    storage.session_finished(b"\x02" * 32, state="aborted", culprits=["node3"], reason=HOSTILE)
    storage.session_started(b"\x03" * 32, phase="presign", coordinator="node2", participants=["node2", "node3"])
    storage.session_finished(b"\x03" * 32, state="timeout", culprits=["node3"], reason="round deadline passed")
    doc = views.sessions({})
    assert [s["session_id"] for s in doc["sessions"]] == ["0x" + (bytes([i]) * 32).hex() for i in (3, 2, 1)]
    first = doc["sessions"][-1]
    assert first["phase"] == "sign" and first["state"] == "done" and first["participants"] == ["node1", "node2"]
    assert first["culprits"] == [] and first["finished_at"] >= first["created_at"]
    assert doc["blames"] == [{"node": "node3", "sessions": 2, "last_at": doc["blames"][0]["last_at"],
                              "last_phase": "presign", "last_session": "0x" + (b"\x03" * 32).hex(),
                              "last_reason": "round deadline passed"}]
    assert doc["counts"] == {"done": 1, "aborted": 1, "timeout": 1}


def test_health_view_combines_snapshot_database_and_pool(bridge: BridgeDB, views: ExplorerViews) -> None:
    _seed(bridge)
    doc = views.health({})
    assert doc["signer"]["status"] == "serving" and [p["node_id"] for p in doc["peers"]] == ["node2"]
    chains = {c["chain"]: c for c in doc["chains"]}
    assert chains[BTC]["height"] == 120 and chains[BTC]["tip"] == 121 and chains[BTC]["paused"]
    assert chains[ETH]["height"] == 30 and not chains[ETH]["paused"]
    assert doc["schema_version"] == dbm.SCHEMA_VERSION and doc["event_seq"] > 0
    (key,) = doc["pool"]["keys"]
    assert key == {"key_id": "0x" + "01" * 32, "bridge_key": True, "available": 0, "reserved": 0, "consumed": 0,
                   "signer_sets": []}
    assert doc["pool"]["target_depth"] == 8


def test_bad_parameters_are_refused(views: ExplorerViews) -> None:
    from fusion_prime.bridge.explorer import BadRequest

    for params in ({"state": ["nonsense"]}, {"limit": ["-3"]}, {"limit": ["x"]}, {"q": ["a" * 141]}):
        with pytest.raises(BadRequest):
            views.deposits(params)


# ------------------------------------------------------------------------------------------ HTTP


@pytest.fixture
def server(views: ExplorerViews) -> Iterator[ExplorerServer]:
    s = ExplorerServer(views, "127.0.0.1", 0, allowed_hosts=("explorer.example",)).start()
    try:
        yield s
    finally:
        s.stop()


def _request(server: ExplorerServer, method: str, path: str, *, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _walk_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _walk_keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_keys(v)


def test_api_answers_json_with_markup_escaped_and_no_secret(bridge: BridgeDB, storage: Storage,
                                                            server: ExplorerServer) -> None:
    _seed(bridge)
    storage.session_started(b"\x02" * 32, phase="presign", coordinator="node1", participants=["node1", "node3"])
    storage.session_finished(b"\x02" * 32, state="aborted", culprits=["node3"], reason=HOSTILE)
    secret_field = ("share", "passphrase", "secret", "private", "password", "key_file", "signature", "party",
                    "client_key", "order_json")
    bodies = {}
    for name in ExplorerServer.ROUTES:
        status, headers, body = _request(server, "GET", f"/api/{name}")
        assert status == 200, (name, body)
        assert headers["content-type"] == "application/json"
        assert headers["x-content-type-options"] == "nosniff" and headers["cache-control"] == "no-store"
        assert b"<" not in body and b">" not in body and b"&" not in body  # escaped as \u003c...
        doc = json.loads(body)
        assert not [k for k in _walk_keys(doc) if any(s in k.lower() for s in secret_field)], name
        bodies[name] = body.decode()
    everything = "".join(bodies.values())
    assert PARTY not in everything and PARTY.upper() not in everything  # a client key
    assert PASSPHRASE not in everything
    assert ("08" * 65) not in everything  # the order signature is not served either (not needed)
    # the hostile strings came back intact once decoded
    assert any(d["reason"] == HOSTILE for d in json.loads(bodies["deposits"])["deposits"])
    assert json.loads(bodies["sessions"])["sessions"][0]["reason"] == HOSTILE


def test_page_and_assets_are_served_with_a_strict_policy(server: ExplorerServer) -> None:
    status, headers, body = _request(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="/explorer.js"' in body
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert headers["x-frame-options"] == "DENY"
    for path, kind in (("/explorer.js", "text/javascript"), ("/explorer.css", "text/css")):
        status, headers, body = _request(server, "GET", path)
        assert status == 200 and headers["content-type"].startswith(kind) and body
    js = _request(server, "GET", "/explorer.js")[2]
    for sink in (b".innerHTML", b".outerHTML", b"insertAdjacentHTML", b"document.write", b"eval("):
        assert sink not in js, sink
    assert _request(server, "GET", "/nothing-here")[0] == 404
    assert _request(server, "GET", "/favicon.ico")[:3:2] == (204, b"")


def test_only_get_and_head_are_answered(bridge: BridgeDB, server: ExplorerServer) -> None:
    _seed(bridge)
    before = bridge.events()
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FROBNICATE"):
        status, headers, body = _request(server, method, "/api/deposits", body=b'{"state": "minted"}',
                                         headers={"Content-Type": "application/json"})
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD" and json.loads(body)["error"].startswith("this explorer is read-only")
    # a large body is not read: the answer is still 405 and the connection closes
    status, _, _ = _request(server, "POST", "/api/deposits", body=b"x" * 200_000)
    assert status == 405
    status, headers, body = _request(server, "HEAD", "/api/deposits")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert bridge.events() == before  # nothing written
    # the server still serves afterwards
    assert _request(server, "GET", "/api/health")[0] == 200


def test_host_header_guards_against_dns_rebinding(server: ExplorerServer) -> None:
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost:8080", "[::1]:9",
                 "explorer.example:443", "10.1.2.3"):
        assert _request(server, "GET", "/api/health", headers={"Host": host})[0] == 200, host
    for host in ("evil.example", f"attacker.example:{server.port}", "127.0.0.1.evil.example"):
        status, _, body = _request(server, "GET", "/api/health", headers={"Host": host})
        assert status == 403 and b"allowed_hosts" in body, host
    assert host_allowed(None, frozenset())
    assert not host_allowed("LOCALHOST.evil.example", frozenset())


def test_long_urls_and_bad_queries_are_refused(server: ExplorerServer) -> None:
    assert _request(server, "GET", "/api/deposits?q=" + "a" * 3000)[0] == 414
    status, _, body = _request(server, "GET", "/api/deposits?state=nonsense")
    assert status == 400 and b"state must be one of" in body
    status, _, body = _request(server, "GET", "/api/deposits?" + "&".join(f"k{i}=1" for i in range(20)))
    assert status == 400


def test_explorer_settings_parse_and_round_trip(tmp_path: Path) -> None:
    from fusion_prime.bridge.config import BridgeConfigError, ExplorerSettings, bridge_toml, load_bridge_config

    base = {"database": "sqlite:///x.sqlite3", "destination_chain": DST, "destination_rpc": "http://127.0.0.1:1"}
    path = tmp_path / "bridge.toml"
    path.write_text(bridge_toml(base, []))
    assert load_bridge_config(path).explorer == ExplorerSettings()  # on, loopback, a free port
    assert ExplorerSettings().host_port == ("127.0.0.1", 0)
    path.write_text(bridge_toml({**base, "explorer": {"listen": "[::1]:7180", "enabled": False,
                                                      "allowed_hosts": ["Explorer.Example"], "max_samples": 100}}, []))
    settings = load_bridge_config(path).explorer
    assert settings.host_port == ("::1", 7180) and not settings.enabled
    assert settings.allowed_hosts == ("explorer.example",) and settings.max_samples == 100
    for bad in ({"listen": "7180"}, {"listen": "127.0.0.1:70000"}, {"max_samples": 1}, {"sample_seconds": 0},
                {"allowed_hosts": [""]}, {"enabled": "yes"}):
        path.write_text(bridge_toml({**base, "explorer": bad}, []))
        with pytest.raises(BridgeConfigError):
            load_bridge_config(path)


def test_fingerprint_is_not_the_key() -> None:
    shown = account_fingerprint(PARTY)
    assert PARTY not in shown and shown == "account " + hashlib.sha256(PARTY.encode()).hexdigest()[:16]
