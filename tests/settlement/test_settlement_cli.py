"""The settlement CLI (``bridge/settlement/cli.py``) against a real Settlement gRPC server.

One node: a ``SettlementRuntime`` as coordinator over a real SQLite bridge database, its
coordinator loop running in trio in a background thread, wrapped by the real
``SettlementServicer`` and served by grpc on loopback with server-auth TLS (a self-signed node
certificate, pinned by the CLI). The CLI runs in-process (``main([...])``, output read with
capsys) except where a real process is the point: Ctrl-C on ``watch`` and a closed stdout pipe.

No threshold signing (``sign=None``): checkpoints are computed and stored but never signed, so
``proof`` and the latest signed checkpoint answer NOT_FOUND here; signed checkpoints and proofs
are tested through the real processes in ``test_settlement_network.py``.

What stands in for the bridge: a tiny fake ``funding`` object (see ``FakeFunding``). Accounts are
credited only through the runtime's own path — the coordinator asks ``pending_credits``, every
``Credit`` is checked with ``verify_credit`` and applied in a signed batch — so balances move
exactly as they do for a real deposit; only the bridge's deposit watcher is not there.

Every failure must be one ``error:`` line on stderr, exit code 2 for a usage error and 1 for
anything else, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from coincurve import PrivateKey
from fp_guards import HANG_GUARD

from fusion_prime.bridge.config import SettlementSettings
from fusion_prime.bridge.db import open_database
from fusion_prime.bridge.settlement.batch import Credit
from fusion_prime.bridge.settlement.cli import main, parse_leg
from fusion_prime.bridge.settlement.funding import account_deposit_address
from fusion_prime.bridge.settlement.runtime import SettlementRuntime
from fusion_prime.bridge.settlement.service import SettlementServicer, add_to_server
from fusion_prime.node.identity import create_identity, load_identity
from fusion_prime.node.tls import generate_certificate
from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.identity import PartyIdentity

NODE = "node1"
BTC_CHAIN = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
ETH_CHAIN = "eip155:31337"
SOURCES = {"BTC": BTC_CHAIN, "ETH": ETH_CHAIN}
GROUP_KEY = Point.from_bytes(PrivateKey(hashlib.sha256(b"fusion prime cli test group key").digest())
                             .public_key.format())
CHAIN_CODE = hashlib.sha256(b"fusion prime cli test chain code").digest()
WAIT = HANG_GUARD  # polling the replica: a hang guard, never a speed bound
ETHER = 10**18


class FakeFunding:
    """Stands in for ``bridge.settlement.funding.Funding``: the three questions the runtime asks
    (``pending_credits``, ``verify_credit``, ``credited``) and the service's ``register``.

    A fake is fine here: this is a test of the CLI, and the runtime's use of a funding object is
    exactly these calls; the real deposit path (watchers, depth, reorgs) is tested with real chains
    in ``test_funding.py`` and ``test_settlement_network.py``. ``deposit`` plays "a deposit reached
    depth"; the coordinator then credits it through a signed batch like any other.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offered: dict[bytes, Credit] = {}
        self._credited: set[bytes] = set()

    def deposit(self, party: bytes, asset: str, amount: int) -> Credit:
        credit = Credit(secrets.token_bytes(32), party, asset, amount)
        with self._lock:
            self._offered[credit.deposit_id] = credit
        return credit

    def pending_credits(self, is_credited: Callable[[bytes], bool], limit: int = 500, *,
                        eligible: Callable[[Credit], bool] | None = None) -> list[Credit]:
        with self._lock:
            offered = [c for c in self._offered.values() if c.deposit_id not in self._credited]
        ready = [c for c in offered if not is_credited(c.deposit_id) and (eligible is None or eligible(c))]
        return ready[:limit]

    def verify_credit(self, credit: Credit) -> str | None:
        with self._lock:
            return None if self._offered.get(credit.deposit_id) == credit else "no such deposit here"

    def credited(self, credits: Sequence[Credit], *, reference: str = "") -> None:
        with self._lock:
            self._credited.update(c.deposit_id for c in credits)

    def register(self, party: bytes, asset: str) -> str:
        return account_deposit_address(GROUP_KEY, CHAIN_CODE, SOURCES[asset], party)


@dataclass
class Node:
    port: int
    cert: Path
    runtime: SettlementRuntime
    funding: FakeFunding
    admin_key: Path
    dir: Path

    def base(self, key: Path | None = None) -> list[str]:
        args = ["--target", f"127.0.0.1:{self.port}", "--cert", str(self.cert)]
        return args + (["--key", str(key)] if key is not None else [])

    def fund(self, key: Path, asset: str, amount: int) -> None:
        """Credit ``amount`` through the coordinator and wait until the replica shows it."""
        party = load_identity(key).public_key
        before = self.runtime.read(lambda led: led.balance(party, asset))
        self.funding.deposit(party, asset, amount)
        wait_for(lambda: self.runtime.read(lambda led: led.balance(party, asset)) == before + amount,
                 f"credit of {amount} {asset}")


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    home = tmp_path_factory.mktemp("settlement-cli")
    db = open_database(f"sqlite:///{home / 'bridge.sqlite3'}")
    identity = PartyIdentity.generate()
    funding = FakeFunding()
    # short cycles: a cycle is finalised (and its checkpoint stored) within seconds; the dispute
    # window stays long enough that a dispute right after affirming is always inside it
    settings = SettlementSettings(coordinator=NODE, cycle_seconds=2.0, dispute_window_seconds=3.0,
                                  batch_interval_seconds=0.02)
    runtime = SettlementRuntime(settings, db=db, node_id=NODE, identity=identity,
                                node_keys={NODE: identity.public_key}, peers=[], assets=["BTC", "ETH"], sign=None,
                                key_id=bytes(16), signer_path=(), signer_address="0x" + "11" * 20, chain_id=31338,
                                registry="0x" + "22" * 20, funding=funding)
    admin_key = home / "admin.key"
    admin = create_identity(admin_key)
    servicer = SettlementServicer(runtime, admins=frozenset({admin.public_key}), funding=funding, sources=SOURCES)
    cert_pem, key_pem = generate_certificate(NODE)
    cert = home / "node1.crt"
    cert.write_bytes(cert_pem)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    add_to_server(servicer)(server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    server.start()

    scope: dict[str, Any] = {}
    started = threading.Event()

    async def run() -> None:
        with trio.CancelScope() as cancel:
            scope["cancel"], scope["token"] = cancel, trio.lowlevel.current_trio_token()
            started.set()
            await runtime.run()

    thread = threading.Thread(target=trio.run, args=(run,), name="settlement-runtime", daemon=True)
    thread.start()
    try:
        assert started.wait(WAIT)
        wait_for(lambda: runtime.ledger is not None, "the ledger to load")
        yield Node(port, cert, runtime, funding, admin_key, home)
    finally:
        server.stop(None).wait(10)  # ends open streams (watch) first
        if "token" in scope:
            trio.from_thread.run_sync(scope["cancel"].cancel, trio_token=scope["token"])
        thread.join(15)
        assert not thread.is_alive(), "the settlement runtime did not stop"
        assert not runtime.halted, runtime.halted
        db.close()


Run = tuple[int, str, str]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(run: Run, code: int, *needles: str) -> str:
    """The failure contract: the exit code, nothing on stdout, one ``error:`` line on stderr."""
    rc, out, err = run
    assert rc == code, run
    assert out == "", run
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, run
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, run
    return err


def ok(run: Run) -> str:
    rc, out, err = run
    assert rc == 0, run
    assert "Traceback" not in err
    return out


def new_client(node: Node, capsys: pytest.CaptureFixture[str], name: str, *, open_account: bool = True) -> Path:
    key = node.dir / f"{name}-{secrets.token_hex(4)}.key"
    ok(cli(capsys, "key", "new", str(key)))
    if open_account:
        assert "account open" in ok(cli(capsys, *node.base(key), "open-account", "--label", name))
    return key


def pub(key: Path) -> str:
    return load_identity(key).public_key.hex()


def status_of(node: Node, capsys: pytest.CaptureFixture[str], key: Path, tid: str) -> dict[str, Any]:
    return json.loads(ok(cli(capsys, *node.base(key), "--json", "trade-status", tid)))


def balances(node: Node, capsys: pytest.CaptureFixture[str], key: Path) -> dict[str, dict[str, str]]:
    return json.loads(ok(cli(capsys, *node.base(key), "balances", "--json")))


# ------------------------------------------------------------------------------------ keys


def test_key_new_writes_a_0600_key_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "desk.key"
    public = ok(cli(capsys, "key", "new", str(key))).strip()
    assert public == pub(key) and len(public) == 66 and public[:2] in ("02", "03")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    assert_one_error(cli(capsys, "key", "new", str(key)), 1, "already exists")
    assert key.read_bytes() == before
    other = tmp_path / "other.key"
    data = json.loads(ok(cli(capsys, "--json", "key", "new", str(other))))
    assert data == {"public_key": pub(other), "file": str(other)}


def test_an_unusable_key_file_is_one_line(node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_error(cli(capsys, *node.base(tmp_path / "missing.key"), "balances"), 1, "not found")
    loose = tmp_path / "loose.key"
    loose.write_text(secrets.token_hex(32) + "\n")
    loose.chmod(0o644)  # readable by others: not an identity (node/identity.py)
    assert_one_error(cli(capsys, *node.base(loose), "balances"), 1, "chmod 600")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not hex\n")
    garbage.chmod(0o600)
    assert_one_error(cli(capsys, *node.base(garbage), "balances"), 1, "not a hex-encoded")
    assert_one_error(cli(capsys, *node.base(), "balances"), 2, "--key")


# ------------------------------------------------------------------------------------ accounts


def test_open_account_deposit_address_and_balances(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_client(node, capsys, "alice", open_account=False)
    out = ok(cli(capsys, *node.base(key), "--json", "open-account", "--label", "desk A"))
    first = json.loads(out)
    assert first["kind"] == "open-account" and first["accepted"] and not first["duplicate"]
    # the same instruction again is an idempotent repeat, said so
    again = ok(cli(capsys, *node.base(key), "open-account", "--label", "desk A"))
    assert "idempotent repeat" in again
    assert_one_error(cli(capsys, *node.base(key), "open-account", "--label", "desk B"), 1, "already open")
    assert balances(node, capsys, key) == {a: {"balance": "0", "held": "0", "available": "0"} for a in SOURCES}

    out = ok(cli(capsys, *node.base(key), "deposit-address", "BTC"))
    address = account_deposit_address(GROUP_KEY, CHAIN_CODE, BTC_CHAIN, bytes.fromhex(pub(key)))
    assert out == f"{address} (BTC on {BTC_CHAIN})\n"
    data = json.loads(ok(cli(capsys, *node.base(key), "deposit-address", "ETH", "--json")))
    assert data["source_chain"] == ETH_CHAIN and data["address"].startswith("0x")
    assert_one_error(cli(capsys, *node.base(key), "deposit-address", "DOGE"), 1, "INVALID_ARGUMENT")

    node.fund(key, "BTC", 1_234_567)
    assert balances(node, capsys, key)["BTC"] == {"balance": "1234567", "held": "0", "available": "1234567"}
    table = ok(cli(capsys, *node.base(key), "balances"))
    assert table.splitlines()[0].split() == ["asset", "balance", "held", "available"]
    assert table.splitlines()[1].split() == ["BTC", "1234567", "0", "1234567"]


def test_an_instruction_before_the_account_is_rejected(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_client(node, capsys, "late", open_account=False)
    assert_one_error(cli(capsys, *node.base(key), "withdraw", "BTC", "5", "--chain", BTC_CHAIN, "--to", "bcrt1qxyz"),
                     1, "withdraw rejected", "open one first")


# ------------------------------------------------------------------------------------ trades


def test_a_gross_trade_between_two_clients_settles(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    alice, bob = new_client(node, capsys, "alice"), new_client(node, capsys, "bob")
    node.fund(alice, "BTC", 50_000)
    node.fund(bob, "ETH", 3 * ETHER)
    rc, out, err = cli(capsys, *node.base(alice), "trade", "--mode", "gross", "--reference", "OTC-1", "--affirm",
                       "--leg", "me:BTC:-10000", "--leg", f"{pub(bob)}:BTC:10000",
                       "--leg", f"me:ETH:{2 * ETHER}", "--leg", f"{pub(bob)}:ETH:-{2 * ETHER}")
    assert rc == 0 and "affirmed as this client" in err, (rc, out, err)
    tid = out.strip()
    assert len(bytes.fromhex(tid)) == 32
    assert balances(node, capsys, alice)["BTC"] == {"balance": "50000", "held": "10000", "available": "40000"}
    assert status_of(node, capsys, alice, tid)["status"] == "pending"

    assert ok(cli(capsys, *node.base(bob), "affirm", tid)) == f"affirmed {tid}\n"
    t = status_of(node, capsys, bob, tid)
    assert t["status"] == "settled" and t["mode"] == "gross" and t["reference"] == "OTC-1"
    assert sorted(t["affirmed"]) == sorted([pub(alice), pub(bob)])
    assert {(leg["party"], leg["asset"], leg["quantity"]) for leg in t["legs"]} == {
        (pub(alice), "BTC", "-10000"), (pub(bob), "BTC", "10000"),
        (pub(alice), "ETH", str(2 * ETHER)), (pub(bob), "ETH", str(-2 * ETHER))}
    assert balances(node, capsys, alice) == {"BTC": {"balance": "40000", "held": "0", "available": "40000"},
                                             "ETH": {"balance": str(2 * ETHER), "held": "0",
                                                     "available": str(2 * ETHER)}}
    assert balances(node, capsys, bob) == {"BTC": {"balance": "10000", "held": "0", "available": "10000"},
                                           "ETH": {"balance": str(ETHER), "held": "0", "available": str(ETHER)}}
    text = ok(cli(capsys, *node.base(alice), "trade-status", tid))
    assert "status    settled" in text and f"{pub(alice)} (me) -10000 BTC [affirmed]" in text
    listed = ok(cli(capsys, *node.base(bob), "trades"))
    assert listed.startswith(f"{tid} settled") and "me +10000 BTC" in listed
    assert [x["trade_id"] for x in json.loads(ok(cli(capsys, *node.base(bob), "--json", "trades")))] == [tid]

    # the cycle's report: the admin client gets it (and the files); anyone else is refused
    cycle = str(t["cycle"])
    csv_file, json_file = node.dir / f"report-{tid[:8]}.csv", node.dir / f"report-{tid[:8]}.json"
    out = ok(cli(capsys, *node.base(node.admin_key), "report", cycle, "--csv", str(csv_file), "--json",
                 str(json_file)))
    assert f"cycle {cycle}" in out and f"wrote {csv_file}, {json_file}" in out
    report = json.loads(json_file.read_text())
    assert tid in report["settled_gross"]
    rows = csv_file.read_text().splitlines()
    assert rows[0] == "record,cycle,trade_id,mode,party,asset,quantity"
    assert f"leg,{cycle},{tid},gross,{pub(alice)},BTC,-10000" in rows
    assert json.loads(ok(cli(capsys, *node.base(node.admin_key), "--json", "report", cycle)))["cycle"] == int(cycle)
    assert_one_error(cli(capsys, *node.base(alice), "report", cycle), 1, "PERMISSION_DENIED", "admin")


def test_an_affirmation_without_the_funds_is_rejected_then_accepted_once_funded(
        node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    carol, dave = new_client(node, capsys, "carol"), new_client(node, capsys, "dave")
    node.fund(dave, "ETH", ETHER)
    legs = ["--leg", "me:BTC:-500", "--leg", f"{pub(dave)}:BTC:500", "--leg", f"me:ETH:{ETHER}",
            "--leg", f"{pub(dave)}:ETH:-{ETHER}"]
    rc, out, err = cli(capsys, *node.base(carol), "trade", "--mode", "gross", "--affirm", *legs)
    assert rc == 1 and out == "" and err.count("\n") == 1, (rc, out, err)
    assert err.startswith("error: trade ") and "submitted, but affirm rejected: insufficient available BTC" in err
    tid = err.split()[2]
    err = assert_one_error(cli(capsys, *node.base(carol), "affirm", tid), 1)
    assert err == "error: affirm rejected: insufficient available BTC for this delivery\n"
    assert balances(node, capsys, carol)["BTC"]["held"] == "0"  # nothing held

    node.fund(carol, "BTC", 500)
    ok(cli(capsys, *node.base(carol), "affirm", tid))  # a fresh idempotency key: not the first rejection again
    ok(cli(capsys, *node.base(dave), "affirm", tid))
    assert status_of(node, capsys, carol, tid)["status"] == "settled"
    assert_one_error(cli(capsys, *node.base(carol), "affirm", tid), 1, "affirm rejected: trade is settled")


def test_dispute_then_both_reaffirm_and_cancel(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    erin, frank = new_client(node, capsys, "erin"), new_client(node, capsys, "frank")
    node.fund(erin, "BTC", 1000)
    node.fund(frank, "ETH", ETHER)
    legs = ["--leg", "me:BTC:-1000", "--leg", f"{pub(frank)}:BTC:1000", "--leg", f"me:ETH:{ETHER}",
            "--leg", f"{pub(frank)}:ETH:-{ETHER}"]
    tid = ok(cli(capsys, *node.base(erin), "trade", "--mode", "net", "--affirm", "--deadline-seconds", "600",
                 *legs)).strip()
    ok(cli(capsys, *node.base(frank), "affirm", tid))
    assert status_of(node, capsys, erin, tid)["status"] in ("affirmed", "cut")
    assert ok(cli(capsys, *node.base(frank), "dispute", tid, "--reason", "wrong price")) == f"disputed {tid}\n"
    t = status_of(node, capsys, erin, tid)
    assert t["status"] == "disputed" and t["note"] == "wrong price" and t["affirmed"] == []
    # a disputed trade needs both affirmations again (the SDK's fixed per-trade affirm key would
    # get "accepted, duplicate" here and change nothing)
    ok(cli(capsys, *node.base(erin), "affirm", tid))
    ok(cli(capsys, *node.base(frank), "affirm", tid))
    assert status_of(node, capsys, erin, tid)["status"] in ("affirmed", "cut", "settled")
    assert_one_error(cli(capsys, *node.base(erin), "cancel", tid), 1, "cancel rejected")

    other = ok(cli(capsys, *node.base(frank), "trade", "--mode", "gross", *[
        "--leg", f"{pub(erin)}:BTC:-1", "--leg", "me:BTC:1", "--leg", f"{pub(erin)}:ETH:1", "--leg", "me:ETH:-1"])
    ).strip()
    data = json.loads(ok(cli(capsys, *node.base(erin), "--json", "cancel", other)))
    assert data["accepted"] and data["kind"] == "cancel" and data["ref"] == other
    assert status_of(node, capsys, frank, other)["status"] == "cancelled"
    assert_one_error(cli(capsys, *node.base(erin), "dispute", other, "--reason", "x"), 1, "dispute rejected")


def test_withdraw_and_withdrawals(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_client(node, capsys, "gina")
    node.fund(key, "ETH", 2 * ETHER)
    to = "0x" + "ab" * 20
    rc, out, err = cli(capsys, *node.base(key), "withdraw", "ETH", str(ETHER), "--chain", ETH_CHAIN, "--to", to)
    assert rc == 0 and "accepted" in err, (rc, out, err)
    wid = out.strip()
    found = json.loads(ok(cli(capsys, *node.base(key), "withdrawals", "--json")))
    assert [(w["withdrawal_id"], w["amount"], w["status"], w["destination"]) for w in found] == [
        (wid, str(ETHER), "pending", to)]
    assert balances(node, capsys, key)["ETH"]["balance"] == str(ETHER)
    assert_one_error(cli(capsys, *node.base(key), "withdraw", "ETH", str(5 * ETHER), "--chain", ETH_CHAIN, "--to",
                         to), 1, "withdraw rejected: insufficient available ETH")


def test_an_instruction_not_ordered_in_time_names_its_resend(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_client(node, capsys, "nina")
    node.fund(key, "ETH", 10)
    to = "0x" + "cd" * 20
    withdraw = ["withdraw", "ETH", "1", "--chain", ETH_CHAIN, "--to", to]
    # a 1 ms wait is shorter than the coordinator's batch interval: the node answers
    # DEADLINE_EXCEEDED but the instruction stays queued (a loaded machine may still order one in
    # time: try a few)
    for _ in range(5):
        run = cli(capsys, *node.base(key), "--wait-ms", "1", *withdraw)
        if run[0] != 0:
            break
    err = assert_one_error(run, 1, "DEADLINE_EXCEEDED", "the same withdraw command with --key-id withdraw-")
    match = re.search(r"--key-id (\S+)", err)
    assert match is not None
    rc, out, err = cli(capsys, *node.base(key), *withdraw, "--key-id", match.group(1))
    assert rc == 0 and "idempotent repeat" in err, (rc, out, err)
    wid = out.strip()
    found = json.loads(ok(cli(capsys, *node.base(key), "--json", "withdrawals")))
    assert [w["withdrawal_id"] for w in found].count(wid) == 1
    assert balances(node, capsys, key)["ETH"]["balance"] == str(10 - len(found))


# ------------------------------------------------------------------------------------ reads


def test_json_outputs_parse(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_client(node, capsys, "hal")
    status = json.loads(ok(cli(capsys, *node.base(), "--json", "status")))  # no key needed
    assert status["node"] == NODE and status["role"] == "coordinator" and status["halted"] == ""
    assert "role: coordinator" in ok(cli(capsys, *node.base(), "status"))
    assert json.loads(ok(cli(capsys, *node.base(key), "trades", "--json"))) == []
    assert json.loads(ok(cli(capsys, *node.base(key), "withdrawals", "--json"))) == []
    assert set(json.loads(ok(cli(capsys, *node.base(key), "--json", "balances")))) == set(SOURCES)


def test_not_found_answers(node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key = new_client(node, capsys, "ivan")
    assert_one_error(cli(capsys, *node.base(key), "trade-status", secrets.token_hex(32)), 1, "NOT_FOUND")
    # checkpoints are never signed on this node (sign=None): no proof, no latest signed checkpoint
    assert_one_error(cli(capsys, *node.base(key), "proof", "--out", str(tmp_path / "p.json")), 1, "NOT_FOUND",
                     "no signed checkpoint")
    assert not (tmp_path / "p.json").exists()
    assert_one_error(cli(capsys, *node.base(), "checkpoint"), 1, "NOT_FOUND")
    assert_one_error(cli(capsys, *node.base(node.admin_key), "report", "999999"), 1, "NOT_FOUND")


def test_checkpoint_of_a_finalised_cycle(node: Node, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # a cycle is cut only when something happened in it, and xdist may run this test first on
    # its worker's own node: open an account so there is a cycle 1 to finalise
    new_client(node, capsys, "ivan")
    wait_for(lambda: node.runtime.store.checkpoint(1) is not None, "cycle 1 to be finalised")
    data = json.loads(ok(cli(capsys, *node.base(), "--json", "checkpoint", "1")))
    row = node.runtime.store.checkpoint(1)
    assert data["cycle"] == 1 and data["signed"] is False and data["signature"] is None
    assert data["checkpoint"]["root"] == "0x" + row["root"].hex()
    assert "not signed yet" in ok(cli(capsys, *node.base(), "checkpoint", "1"))
    assert_one_error(cli(capsys, *node.base(), "checkpoint", "1", "--out", str(tmp_path / "c.json")), 1,
                     "not signed yet")


# ------------------------------------------------------------------------------------ failures


def test_unreachable_target_and_wrong_certificate(node: Node, capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    key = new_client(node, capsys, "judy", open_account=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert_one_error(cli(capsys, "--target", f"127.0.0.1:{closed}", "--cert", str(node.cert), "--key", str(key),
                         "balances"), 1, "UNAVAILABLE")
    impostor = tmp_path / "impostor.crt"
    impostor.write_bytes(generate_certificate(NODE)[0])  # the right name, not the pinned certificate
    assert_one_error(cli(capsys, "--target", f"127.0.0.1:{node.port}", "--cert", str(impostor), "--key", str(key),
                         "balances"), 1, "UNAVAILABLE")
    not_pem = tmp_path / "not.crt"
    not_pem.write_text("hello\n")
    assert_one_error(cli(capsys, "--target", f"127.0.0.1:{node.port}", "--cert", str(not_pem), "status"), 1,
                     "not a node certificate")
    assert_one_error(cli(capsys, "--target", f"127.0.0.1:{node.port}", "--cert", str(tmp_path / "none.crt"),
                         "status"), 1, "none.crt")


@pytest.mark.parametrize(("args", "needle"), [
    (["trade", "--mode", "gross", "--leg", "me:BTC", "--leg", "me:ETH:1"], "not PARTY:ASSET:QUANTITY"),
    (["trade", "--mode", "gross", "--leg", "bob:BTC:1", "--leg", "me:BTC:-1"], "party 'bob'"),
    (["trade", "--mode", "gross", "--leg", "me:BTC:1.5", "--leg", "me:BTC:-1"], "integer"),
    (["trade", "--mode", "gross", "--leg", "me:BTC:0", "--leg", "me:BTC:-1"], "zero"),
    (["trade", "--mode", "swap", "--leg", "me:BTC:1"], "invalid choice"),
    (["trade", "--leg", "me:BTC:1"], "--mode"),
    (["affirm", "abcd"], "64 hex digits"),
    (["withdraw", "ETH", "1e18", "--chain", ETH_CHAIN, "--to", "0x00"], "integer"),
    (["withdraw", "ETH", "-5", "--chain", ETH_CHAIN, "--to", "0x00"], "positive"),
    (["report", "x"], "integer"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2(node: Node, capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    assert_one_error(cli(capsys, *node.base(node.admin_key), *args), 2, needle)


def test_a_trade_the_sdk_refuses_to_sign_is_a_usage_error(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    key = new_client(node, capsys, "kim")
    other = PartyIdentity.generate().public_key.hex()
    assert_one_error(cli(capsys, *node.base(key), "trade", "--mode", "gross", "--leg", "me:BTC:-2",
                         "--leg", f"{other}:BTC:1"), 2, "sum to zero")
    a, b = PartyIdentity.generate().public_key.hex(), PartyIdentity.generate().public_key.hex()
    assert_one_error(cli(capsys, *node.base(key), "trade", "--mode", "gross", "--leg", f"{a}:BTC:-1",
                         "--leg", f"{b}:BTC:1"), 2, "submitter must be a party")


def test_parse_leg() -> None:
    me = PartyIdentity.generate().public_key
    other = PartyIdentity.generate().public_key
    assert parse_leg("me:BTC:-10", me) == (me, "BTC", -10)
    assert parse_leg(f"0x{other.hex()}:ETH:+7", me) == (other, "ETH", 7)


# ------------------------------------------------------------------------------------ processes


def _process(node: Node, key: Path, *args: str, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fusion_prime.bridge.settlement.cli", *node.base(key), *args],
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def test_watch_streams_until_ctrl_c(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    lena, mo = new_client(node, capsys, "lena"), new_client(node, capsys, "mo")
    node.fund(mo, "BTC", 7)
    tid = ok(cli(capsys, *node.base(lena), "trade", "--mode", "gross", "--leg", f"{pub(mo)}:BTC:-7",
                 "--leg", "me:BTC:7", "--leg", f"{pub(mo)}:ETH:1", "--leg", "me:ETH:-1")).strip()
    node.fund(lena, "ETH", 1)
    watch = _process(node, lena, "--json", "watch")
    guard = threading.Timer(WAIT, watch.kill)  # a hang guard for the blocking reads below
    guard.start()
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())  # the current state first
        assert first["trade_id"] == tid and first["status"] == "pending" and first["affirmed"] == []
        ok(cli(capsys, *node.base(lena), "affirm", tid))
        ok(cli(capsys, *node.base(mo), "affirm", tid))
        seen = []
        while not seen or seen[-1]["status"] != "settled":
            seen.append(json.loads(watch.stdout.readline()))
        # each change once, in order (the one-affirmation state may be skipped if both batches
        # were applied before the stream looked)
        assert [(u["status"], len(u["affirmed"])) for u in seen] in ([("pending", 1), ("settled", 2)],
                                                                      [("settled", 2)])
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=WAIT)
    finally:
        guard.cancel()
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0 and err == "", err


def test_a_closed_stdout_pipe_ends_quietly(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes (`… | head -0`)
    try:
        proc = _process(node, node.admin_key, "status", stdout=write_end)
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0 and err == "", err
