"""The explorer page in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, installed by
``make setup``), driven by selenium with the system driver only (selenium-manager never downloads).

Two tests:

* the page over a real SQLite bridge database seeded with hostile strings (a dust reason, a burn
  destination, a session's reason, a peer's name, all markup): each is shown as text, no element
  is injected and no script runs; the reserves chart is drawn from the samples;
* the page of a running bridge network (three daemons, the Bitcoin devnet, two anvils, at the test
  security level): a BTC deposit is made and the page shows it - its outpoint, confirmations and
  mint transaction as node1's Bridge API reports them - and the health section lists the peers with
  a numeric pool depth, the reserves chart reaches the on-chain supply, and the sign session of
  the mint is listed.

Every wait polls the DOM under the tests' hang guard (``fp_guards.HANG_GUARD``); no duration is
asserted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fp_bridge_net import wait_for
from fp_guards import HANG_GUARD

from fusion_prime.bridge.db import BridgeDB, Deposit, DepositAddress, open_database
from fusion_prime.bridge.explorer import ExplorerServer, ExplorerViews, ReserveRecorder, ReserveSample
from fusion_prime.bridge.orders import deposit_id
from fusion_prime.node.storage import KeyMaterial, Storage

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
DST = "eip155:31338"
FPBTC = "0x" + "11" * 20
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
HOSTILE_PEER = '<b id="injected">node9</b>'

#: reads one table row's cells (by data-field) in a single script run: the page re-renders every
#: few seconds, so reading cell by cell through WebDriver could see two different renders
ROW_JS = """
const row = document.querySelector(arguments[0]);
if (!row) return null;
const out = {};
for (const td of row.querySelectorAll('[data-field]')) out[td.dataset.field] = td.textContent;
for (const [k, v] of Object.entries(row.dataset)) out['@' + k] = v;
return out;
"""


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("headless Chromium is missing: `make setup` installs Debian's chromium and chromium-driver",
                    pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager must not fetch a browser or driver
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=os.devnull), options=options)
    driver.set_page_load_timeout(HANG_GUARD)
    driver.set_script_timeout(HANG_GUARD)
    try:
        yield driver
    finally:
        driver.quit()


def row(driver: Any, selector: str) -> dict[str, str] | None:
    return driver.execute_script(ROW_JS, selector)


# ------------------------------------------------------------------------------ hostile strings


def _seed_hostile(db: BridgeDB, storage: Storage) -> bytes:
    db.register_address(DepositAddress(address="bcrt1qdust", asset="BTC", source_chain=BTC, destination_chain=DST,
                                       recipient="0x" + "d5" * 20, path=(1, 2)))
    dust = Deposit(deposit_id=deposit_id(BTC, "cd" * 32, 0), asset="BTC", source_chain=BTC, txid="cd" * 32, vout=0,
                   address="bcrt1qdust", amount=5_000, recipient="0x" + "d5" * 20, destination_chain=DST,
                   state="dust", reason=HOSTILE, required_confirmations=2)
    db.upsert_deposit(dust)
    with db.transaction() as tx:
        tx.put_withdrawal({
            "burn_id": b"\x42" * 32, "asset": FPBTC, "source_chain": BTC, "burn_nonce": 1, "burner": "0x" + "a1" * 20,
            "amount": 40_000_000, "destination": HOSTILE.encode().hex(), "burn_block": 60, "burn_tx": "0x" + "99" * 32,
            "state": "refunding", "payout_id": None, "txid": None, "confirmations": 0, "required_confirmations": 1,
            "refund_tx": None, "reason": HOSTILE})
    recorder = ReserveRecorder(db, sample_seconds=1.0, max_samples=100)
    for i, supply in enumerate((0, 125_000_000, 125_000_000, 85_000_000)):
        recorder.offer(ReserveSample(at=1_700_000_000.0 + 60 * i, asset=FPBTC, symbol="BTC", chain=BTC,
                                     custody=125_000_000 if i else 0, supply=supply, in_flight=0, ledger=0,
                                     tolerance=0, solvent=True, source_height=100 + i, destination_height=50 + i))
    recorder.flush()
    storage.session_started(b"\x02" * 32, phase="presign", coordinator="node1", participants=["node1", "node3"])
    storage.session_finished(b"\x02" * 32, state="aborted", culprits=["node3"], reason=HOSTILE)
    return dust.deposit_id


def test_hostile_strings_are_shown_as_text(tmp_path: Path, browser: Any) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")
    storage = Storage(tmp_path / "node.sqlite3", KeyMaterial.passphrase("explorer page test"), node_id="node1",
                      scrypt_log2_n=10, allow_weak_kdf=True)
    try:
        did = _seed_hostile(db, storage)

        def snapshot() -> dict[str, Any]:
            return {"at": time.time(), "node": {"node_id": "node1", "status": "serving"},
                    "peers": [{"node_id": HOSTILE_PEER, "address": HOSTILE, "status": "serving",
                               "envelopes_sent": 1, "delivery_failures": 0}]}

        views = ExplorerViews(db, node_id="node1", snapshot=snapshot, storage=storage, key_id=b"\x01" * 32,
                              pool_target=8, sessions_db=storage.path)
        server = ExplorerServer(views, "127.0.0.1", 0).start()
        try:
            browser.get(server.url)
            dust = wait_for("the dust deposit on the page",
                            lambda: row(browser, f'tr[data-deposit-id="0x{did.hex()}"]'))
            assert dust["reason"] == HOSTILE and dust["state"] == "dust"
            burn = wait_for("the refund on the page", lambda: row(browser, 'tr[data-burn-id="0x' + "42" * 32 + '"]'))
            assert burn["destination"] == HOSTILE and burn["reason"] == HOSTILE
            peer = wait_for("the peer on the page", lambda: row(browser, "#peers tbody tr[data-peer]"))
            assert peer["node_id"] == HOSTILE_PEER and peer["address"] == HOSTILE
            session = wait_for("the session on the page", lambda: row(browser, "#sessions tbody tr[data-session-id]"))
            assert session["reason"] == HOSTILE and session["culprits"] == "node3"
            # nothing was injected and nothing ran
            assert browser.execute_script("return window.__pwned === undefined")
            assert browser.execute_script("return document.querySelectorAll('main img, main script, #injected')"
                                          ".length") == 0
            # the reserves chart: one polyline per series, one point per sample
            points = browser.execute_script(
                "const c = document.querySelector('svg[data-chart=\"BTC\"]'); if (!c) return null;"
                "return Array.from(c.querySelectorAll('polyline'), p => [p.dataset.series,"
                " p.getAttribute('points').trim().split(' ').length]);")
            assert sorted(points) == [["custody", 4], ["liabilities", 4], ["supply", 4]]
            supply = browser.execute_script(
                "return document.querySelector('[data-asset-symbol=\"BTC\"] dd[data-field=\"supply\"]')"
                ".dataset.raw")
            assert supply == "85000000"
        finally:
            server.stop()
    finally:
        storage.close()
        db.close()


# ------------------------------------------------------------------------------ the live network

RECIPIENT = "0x" + "e7" * 20


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fp_bridge_net import bridge_network

    with bridge_network(tmp_path_factory.mktemp("explorer-net")) as n:
        yield n


@pytest.mark.xdist_group(name="bridge-network")
def test_deposit_appears_on_the_page_as_the_bridge_api_reports_it(net: Any, browser: Any) -> None:
    from fp_bridge_net import BTC_CHAIN

    url = net.explorer_url("node1")
    browser.get(url)
    address = net.address(BTC_CHAIN, RECIPIENT)
    amount = 125_000_000  # 1.25 BTC: depth 2
    txid, vout = net.miner.pay(address, amount)
    did = deposit_id(BTC_CHAIN, txid, vout)
    net.miner.mine(1)
    selector = f'tr[data-deposit-id="0x{did.hex()}"]'
    seen = wait_for("the deposit on node1's page", lambda: row(browser, selector), procs=net.procs)
    assert seen["outpoint"] == f"{txid}:{vout}"
    net.miner.mine(1)
    shown = wait_for("the deposit minted on the page",
                 lambda: (r := row(browser, selector)) is not None and r["state"] == "minted" and r, procs=net.procs)
    with net.bridge("node1") as bridge:
        api = bridge.deposit(did)
    assert api.state == "minted"
    assert shown["outpoint"] == f"{api.txid}:{api.vout}" and api.txid == txid
    assert shown["confirmations"] == f"{api.confirmations} / {api.required_confirmations}"
    assert api.mint_tx and shown["mint_tx"] == api.mint_tx
    assert shown["@depositId"] == "0x" + bytes(api.deposit_id).hex()
    assert shown["amount"].startswith("1.25 ")

    # health: both peers listed (serving), the pool depth of the bridge key is a number
    peers = wait_for("both peers probed and serving", lambda: (p := browser.execute_script(
        "return Array.from(document.querySelectorAll('#peers tr[data-peer]'), r => [r.dataset.peer, r.dataset.status])"
    )) and sorted(p) == [["node2", "serving"], ["node3", "serving"]] and p, procs=net.procs)
    assert len(peers) == 2
    pool = row(browser, '#pool tr[data-bridge-key="true"]')
    assert pool is not None and pool["key_id"].startswith("0x" + net.key_id.hex())
    assert pool["available"].isdigit() and pool["target_depth"].isdigit()

    # reserves: the chart's latest supply reaches what the Gateway's token says on-chain
    supply = int(net.tokens["fpBTC"].functions.totalSupply().call())
    assert supply >= amount
    wait_for("the reserves chart at the on-chain supply", lambda: browser.execute_script(
        "const d = document.querySelector('[data-asset-symbol=\"BTC\"] dd[data-field=\"supply\"]');"
        "return d ? d.dataset.raw : null;") == str(supply), procs=net.procs)
    samples = int(browser.execute_script(
        "return document.querySelector('svg[data-chart=\"BTC\"]').dataset.samples"))
    assert samples >= 1

    # the mint was a threshold signature: a finished sign session is listed
    wait_for("a sign session on the page", lambda: browser.execute_script(
        "return document.querySelector('#sessions tr[data-phase=\"sign\"][data-state=\"done\"]') !== null"),
        procs=net.procs)
