"""The wallet's tools without a signing network (issue 17, the signer/wallet items).

* ``fusion-prime-wallet keys new`` / ``policy init``: a 0600 client key, a policy file the
  daemon's own loader accepts; refusals leave nothing behind.
* Every CLI and daemon error is one line on stderr with exit 2 (usage, configuration, input -
  found before anything is sent) or 1 (the node refused or could not be reached), no traceback.
  Some run as real processes (a traceback would show on their stderr), the rest call ``main``.
* The wallet policy state (idempotency, rate windows, labels): a backup taken while it is being
  written restores into a fresh file with every record, and a restored node still refuses what
  the window refuses and replays what it answered before the backup.
* The real WalletServicer over gRPC + TLS with a real storage and policy file: reads are
  signed and answered only to clients the policy names; an unknown key is NOT_FOUND before
  anything is recorded or charged.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from fp_wallet_server import serving_wallet

from fusion_prime.node.devnet import create_devnet
from fusion_prime.node.identity import load_identity
from fusion_prime.node.storage import Storage
from fusion_prime.proto.generated import wallet_pb2
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer import cli, daemon
from fusion_prime.signer.client import WalletClient, WalletError
from fusion_prime.signer.policy import PolicyBook, PolicyEnforcer, PolicyRefusal, backup_state, restore_state
from fusion_prime.signer.requests import (
    KIND_LIST_KEYS,
    KIND_SIGN,
    RequestBody,
    VerifiedRequest,
    list_keys_request,
    make_request,
    public_key_request,
)
from fusion_prime.signer.service import start_wallet_server

ADMIN, ALICE, BOB, STRANGER = (PartyIdentity.generate() for _ in range(4))
KEY_A, KEY_B = b"\xaa" * 16, b"\xbb" * 16


def _run(*args: str, module: str = "fusion_prime.signer.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120)


def _one_line_error(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _main(capsys: pytest.CaptureFixture[str], *argv: str, main=cli.main) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's exit (usage errors)
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- keys new, policy init
def test_keys_new_writes_a_private_key_file_and_prints_its_public_key(tmp_path: Path) -> None:
    out = _run("keys", "new", "--out", str(tmp_path / "alice.key"))
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    key_file = tmp_path / "alice.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_identity(key_file).public_key.hex() == printed["public_key"]
    again = _run("keys", "new", "--out", str(key_file))  # never overwrites a key
    assert again.returncode == 2 and "already exists" in _one_line_error(again.stderr)
    assert load_identity(key_file).public_key.hex() == printed["public_key"]


def test_policy_init_writes_what_the_daemon_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.toml"
    code, out, err = _main(capsys, "policy", "init", "--out", str(policy), "--sign-client", ALICE.public_key.hex(),
                           "--sign-client", BOB.public_key.hex(), "--admin-client", ADMIN.public_key.hex(),
                           "--max-signatures", "7", "--window-seconds", "60", "--approvals-required", "1",
                           "--approver", STRANGER.public_key.hex())
    assert code == 0, err
    book = PolicyBook.load(policy)  # the daemon's loader
    assert book.default.clients == {ALICE.public_key, BOB.public_key}
    assert book.create_key_clients == {ADMIN.public_key}
    assert (book.default.max_signatures_per_window, book.default.window_seconds) == (7, 60)
    assert book.default.approvals_required == 1 and book.default.approvers == {STRANGER.public_key}
    assert json.loads(out)["file"] == str(policy)
    # refusals: an existing file, a key that is not a compressed public key, a file the
    # loader refuses (more approvals than approvers) - one line, exit 2, nothing written
    code, _, err = _main(capsys, "policy", "init", "--out", str(policy), "--sign-client", ALICE.public_key.hex())
    assert code == 2 and "already exists" in _one_line_error(err)
    fresh = tmp_path / "other.toml"
    code, _, err = _main(capsys, "policy", "init", "--out", str(fresh), "--sign-client", "02abcd")
    assert code == 2 and "compressed" in _one_line_error(err) and not fresh.exists()
    code, _, err = _main(capsys, "policy", "init", "--out", str(fresh), "--sign-client", ALICE.public_key.hex(),
                         "--approvals-required", "2", "--approver", BOB.public_key.hex())
    assert code == 2 and "more approvals required" in _one_line_error(err)
    assert not fresh.exists() and not list(tmp_path.glob("*.tmp"))


# ----------------------------------------------------------------------------- CLI errors
def test_cli_errors_are_one_line_with_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "client.key"
    assert _main(capsys, "keys", "new", "--out", str(key))[0] == 0
    node = create_devnet(tmp_path / "net", 1, with_metrics=False)[0]
    cert = node.folder / "tls.crt"
    # nothing listens on this port: a call would be UNAVAILABLE (exit 1), so an exit 2 below
    # proves the error was found before anything was sent
    remote = ["--target", "127.0.0.1:9", "--server-cert", str(cert), "--server-name", "node1",
              "--client-key", str(key)]
    cases = [
        ((), "required"),  # no command
        (("frobnicate",), "invalid choice"),
        (("sign-digest", "--key", "00" * 16), "--digest"),  # a required option missing
        (("keys",), "--target"),  # a remote command without the connection options
        ((*remote, "sign-digest", "--key", "zz", "--digest", "00" * 32), "not hex"),
        ((*remote, "sign-digest", "--key", "00" * 16, "--digest", "00" * 31), "32 bytes"),
        ((*remote, "pubkey", "--key", "00" * 16, "--path", "m/0'"), "hardened"),
        ((*remote, "sign-eip1559", "--key", "00" * 16, "--path", "m/0", "--to", "0x" + "11" * 20),
         "--chain-id"),
        ((*remote, "sign-eip1559", "--key", "00" * 16, "--path", "m/0", "--tx", str(tmp_path / "missing.json")),
         "missing.json"),
        ((*remote, "sign-psbt", "--key", "00" * 16, "--psbt", str(cert)), "PSBT"),
        ((*remote, "sign-psbt", "--key", "00" * 16, "--psbt", str(cert), "--input-path", "x"), "INDEX=PATH"),
        (("--target", "127.0.0.1:9", "--server-cert", str(tmp_path / "nope.crt"), "--client-key", str(key), "keys"),
         "nope.crt"),
    ]
    for argv, expected in cases:
        code, out, err = _main(capsys, *argv)
        assert code == 2 and expected in _one_line_error(err), (argv, err)
        assert out == ""
    # the connection options may follow the command as well
    code, _, err = _main(capsys, "keys", "list", *remote)
    assert code == 1 and "UNAVAILABLE" in _one_line_error(err)
    # a client key file the group or others may read is refused before anything is sent
    key.chmod(0o644)
    code, _, err = _main(capsys, *remote, "keys")
    assert code == 2 and "too open" in _one_line_error(err)
    # as real processes: no traceback, the same codes
    proc = _run(*remote, "keys")
    assert proc.returncode == 2 and "chmod 600" in _one_line_error(proc.stderr)
    key.chmod(0o600)
    proc = _run(*remote, "sign-digest", "--key", "00" * 16, "--digest", "00" * 32)
    assert proc.returncode == 1 and "UNAVAILABLE" in _one_line_error(proc.stderr)
    proc = _run("sign-psbt", "--psbt")
    assert proc.returncode == 2 and "--psbt" in _one_line_error(proc.stderr)


# ----------------------------------------------------------------------------- daemon errors
def test_daemon_errors_are_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = create_devnet(tmp_path / "net", 1, with_metrics=False)[0]
    config = str(node.config_path)
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text('[default]\nclients = ["zz"]\n')
    good_policy = tmp_path / "good.toml"
    good_policy.write_text(f'[default]\nclients = ["{ALICE.public_key.hex()}"]\n')
    damaged = create_devnet(tmp_path / "damaged", 1, with_metrics=False)[0]
    (damaged.folder / "data").mkdir(exist_ok=True)
    (damaged.folder / "data" / "wallet-policy.sqlite3").write_bytes(b"not a database, " * 256)
    # `run` (also in its original form, without the command) as real processes: they configure
    # logging, and `run` logs the error as a JSON line besides the one error line
    for argv, expected in [
        (("--config", config), "--policy"),
        (("run", "--config", config, "--policy", str(tmp_path / "missing.toml")), "missing.toml"),
        (("run", "--config", config, "--policy", str(bad_policy)), "clients entry 'zz' is not hex"),
        (("--config", str(tmp_path / "none.toml"), "--policy", str(bad_policy)), "none.toml"),
        (("run", "--config", config, "--policy", str(bad_policy), "--log-level", "CHATTY"), "CHATTY"),
        (("run", "--config", str(damaged.config_path), "--policy", str(good_policy)), "cannot be opened"),
    ]:
        proc = _run(*argv, module="fusion_prime.signer.daemon")
        lines = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (argv, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (argv, proc.stderr)
    # a bug (here: the policy loader raises something unexpected) is one line and exit 1 too;
    # its traceback is only inside the JSON log line
    launcher = ("import sys; from fusion_prime.signer import daemon\n"
                "def broken(path): raise RuntimeError('boom')\n"
                "daemon.PolicyBook.load = broken; sys.exit(daemon.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", launcher, "--config", config, "--policy", str(good_policy)],
                          capture_output=True, text=True, timeout=120)
    plain = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
    assert proc.returncode == 1 and plain == ["error: internal error (RuntimeError: boom); the log has the details"]
    logged = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in logged if e["level"] == "error"] == ["signer daemon failed"]
    for argv, expected in [
        (("backup", "--config", config, "--out", str(tmp_path / "b.sqlite3")), "no wallet policy state"),
        (("backup", "--config", config), "--out"),
        (("restore", "--config", config, "--backup", str(tmp_path / "missing.sqlite3")), "no such backup"),
        (("restore", "--config", config, "--backup", config), "not a readable wallet policy state backup"),
    ]:
        code, out, err = _main(capsys, *argv, main=daemon.main)
        assert code == 2 and expected in _one_line_error(err) and out == "", (argv, err)


# ----------------------------------------------------------------------------- policy state backup
def _request(who: PartyIdentity, request_id: str, key_id: bytes = KEY_A, digest: bytes = b"\x01" * 32
             ) -> VerifiedRequest:
    body = RequestBody(KIND_SIGN, who.public_key, request_id, int(time.time() * 1000), key_id=key_id, digest=digest)
    return VerifiedRequest(body, frozenset(), b"")


def _book(tmp_path: Path, limit: int) -> PolicyBook:
    path = tmp_path / "policy.toml"
    path.write_text(f'[default]\nclients = ["{ALICE.public_key.hex()}"]\nmax_signatures_per_window = {limit}\n'
                    f'window_seconds = 3600\ncreate_key_clients = ["{ADMIN.public_key.hex()}"]\n')
    return PolicyBook.load(path)


def test_a_backup_taken_while_the_state_is_written_restores_idempotency_and_windows(tmp_path: Path) -> None:
    live = tmp_path / "data" / "wallet-policy.sqlite3"
    live.parent.mkdir()
    enforcer = PolicyEnforcer(_book(tmp_path, limit=3), live)
    first, second = _request(ALICE, "pay-1"), _request(ALICE, "pay-2", digest=b"\x02" * 32)
    assert enforcer.check(first) is False and enforcer.check(second) is False
    enforcer.store_result(first, b"first signature")
    enforcer.check(second, session_id=b"s" * 32)
    # the daemon keeps the file open and its last writes are still in the WAL, not the main file
    assert Path(str(live) + "-wal").stat().st_size > 0
    backup = tmp_path / "backups" / "node1-wallet.sqlite3"
    counts = backup_state(live, backup, node_id="node1")
    assert counts == {"authorised": 2, "authorised_sessions": 1}
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    after = _request(ALICE, "pay-3", digest=b"\x03" * 32)  # answered after the backup
    enforcer.check(after)
    enforcer.close()
    with pytest.raises(ValueError, match="already exists"):
        backup_state(live, backup, node_id="node1")
    with pytest.raises(ValueError, match="already exists"):  # never over a live file
        restore_state(backup, live, node_id="node1")
    lost = tmp_path / "lost-disk" / "wallet-policy.sqlite3"
    with pytest.raises(ValueError, match="belongs to node 'node1'"):
        restore_state(backup, lost, node_id="node2")
    assert not lost.exists()
    restored = restore_state(backup, lost, node_id="node1")
    assert restored["authorised"] == 2 and restored["backup_created_at"] <= time.time()
    assert stat.S_IMODE(lost.stat().st_mode) == 0o600
    again = PolicyEnforcer(_book(tmp_path, limit=3), lost)
    try:
        # idempotency: the request answered before the backup replays its stored result
        assert again.check(_request(ALICE, "pay-1")) is True
        assert again.stored_result(ALICE.public_key, "pay-1") == b"first signature"
        with pytest.raises(PolicyRefusal, match="different request"):
            again.check(_request(ALICE, "pay-1", digest=b"\x09" * 32))
        assert again.sessions_of(ALICE.public_key, "pay-2") == [b"s" * 32]
        # the window: two charged before the backup; the one after it is unknown here, so this
        # node alone would allow one more than the others do (they refuse: see the README)
        assert again.used_in_window(ALICE.public_key, KEY_A) == 2
        assert again.check(_request(ALICE, "pay-3", digest=b"\x03" * 32)) is False
        with pytest.raises(PolicyRefusal, match="limit reached"):
            again.check(_request(ALICE, "pay-4", digest=b"\x04" * 32))
    finally:
        again.close()


def test_the_daemon_backs_up_and_restores_the_state_of_its_own_node(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    node1, node2 = create_devnet(tmp_path / "net", 2, with_metrics=False)
    data1 = node1.folder / "data"
    data1.mkdir(exist_ok=True)
    enforcer = PolicyEnforcer(_book(tmp_path, limit=5), data1 / daemon.STATE_FILE)
    enforcer.check(_request(ALICE, "kept"))
    backup = tmp_path / "node1-state.sqlite3"
    code, out, err = _main(capsys, "backup", "--config", str(node1.config_path), "--out", str(backup),
                           main=daemon.main)
    assert code == 0 and "1 authorised requests" in out, err
    enforcer.close()
    code, _, err = _main(capsys, "restore", "--config", str(node2.config_path), "--backup", str(backup),
                         main=daemon.main)
    assert code == 2 and "belongs to node 'node1'" in _one_line_error(err)
    code, _, err = _main(capsys, "restore", "--config", str(node1.config_path), "--backup", str(backup),
                         main=daemon.main)
    assert code == 2 and "stop the daemon and move it away" in _one_line_error(err)
    (data1 / daemon.STATE_FILE).rename(tmp_path / "moved-away.sqlite3")
    code, out, err = _main(capsys, "restore", "--config", str(node1.config_path), "--backup", str(backup),
                           main=daemon.main)
    assert code == 0 and "restored" in out, err
    with contextlib.closing(sqlite3.connect(data1 / daemon.STATE_FILE)) as db:
        assert db.execute("SELECT request_id FROM authorised").fetchall() == [("kept",)]
    # SQLite files of another state file beside the target: refused, they would be applied to it
    elsewhere = tmp_path / "elsewhere" / daemon.STATE_FILE
    elsewhere.parent.mkdir()
    Path(f"{elsewhere}-wal").write_bytes(b"")
    with pytest.raises(ValueError, match="-wal away with the file they belong to"):
        restore_state(backup, elsewhere, node_id="node1")
    assert not elsewhere.exists()


# ----------------------------------------------------------------------------- reads and NOT_FOUND
class StandInNode:
    """The servicer's view of a node: real storage; ``sign`` must never be reached here."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.cfg = SimpleNamespace(node_id="node1")
        self.sign_calls = 0

    async def sign(self, *args: object, **kwargs: object) -> None:
        self.sign_calls += 1
        raise AssertionError("a request for an unknown key reached the node")

    refresh = reshare = sign


@pytest.fixture
def wallet(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real WalletServicer behind TLS; KEY_A may be used by ALICE, KEY_B by BOB, ADMIN
    administers; the storage holds both keys (stand-in shares: enough for ListKeys)."""
    policy = (f'[default]\nclients = ["{ALICE.public_key.hex()}"]\nmax_signatures_per_window = 10\n'
              f'window_seconds = 3600\ncreate_key_clients = ["{ADMIN.public_key.hex()}"]\n'
              f'[keys."{KEY_B.hex()}"]\nclients = ["{BOB.public_key.hex()}"]\n')

    def hold_both_keys(storage: Storage) -> None:
        for key_id in (KEY_A, KEY_B):
            storage.put_key_share(key_id, parties=["node1", "node2"], threshold=2, level="test-2048",
                                  share=b"stand-in share", public_key=ALICE.public_key)

    clients: list[WalletClient] = []
    with serving_wallet(tmp_path, policy, StandInNode, hold_both_keys) as served:

        def client(who: PartyIdentity) -> WalletClient:
            clients.append(WalletClient(f"127.0.0.1:{served.port}", served.cert, who, server_name="node1"))
            return clients[-1]

        yield SimpleNamespace(client=client, enforcer=served.enforcer, node=served.node, servicer=served.servicer,
                              port=served.port, tls=(served.cert, served.key))
        for c in clients:
            c.close()


def test_a_second_wallet_server_on_a_taken_port_fails_to_start(wallet) -> None:  # type: ignore[no-untyped-def]
    """gRPC's default SO_REUSEPORT would let a second daemon bind the wallet port and silently
    take half of the wallets' connections; the second one fails to start instead."""
    with pytest.raises((OSError, RuntimeError), match=r"cannot listen|Failed to bind"):  # grpcio's bind error
        start_wallet_server(wallet.servicer, f"127.0.0.1:{wallet.port}", *wallet.tls)
    assert wallet.client(ADMIN).list_keys()  # the first one still serves


def test_reads_are_signed_and_only_for_clients_the_policy_names(wallet) -> None:  # type: ignore[no-untyped-def]
    def listed(who: PartyIdentity) -> list[bytes]:
        return sorted(bytes(k.key_id) for k in wallet.client(who).list_keys())

    assert listed(ADMIN) == [KEY_A, KEY_B]  # an administrator sees every key
    assert listed(ALICE) == [KEY_A]  # a client the keys it may use
    assert listed(BOB) == [KEY_B]
    info = wallet.client(ALICE).list_keys()[0]
    assert (info.epoch, info.label, info.threshold, list(info.parties)) == (0, "", 2, ["node1", "node2"])
    with pytest.raises(WalletError, match=r"PERMISSION_DENIED.*not named"):
        wallet.client(STRANGER).list_keys()
    with pytest.raises(WalletError, match="PERMISSION_DENIED"):
        wallet.client(STRANGER).public_key(KEY_A, "m/0")
    with pytest.raises(WalletError, match=r"PERMISSION_DENIED.*not allowed to use this key"):
        wallet.client(BOB).public_key(KEY_A, "m/0")
    # unsigned, or signed by another key than the one it names: UNAUTHENTICATED
    stub = wallet.client(ALICE)._stub
    for method in ("ListKeys", "GetPublicKey"):
        with pytest.raises(grpc.RpcError) as info_:
            getattr(stub, method)(wallet_pb2.SignedRequest(), timeout=30)
        assert info_.value.code() == grpc.StatusCode.UNAUTHENTICATED
    forged = list_keys_request(ALICE)
    forged.signature = STRANGER.sign(RequestBody.decode(forged.body).digest_to_sign())
    with pytest.raises(grpc.RpcError) as info_:
        stub.ListKeys(forged, timeout=30)
    assert info_.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # a signed request of another kind is not a read
    with pytest.raises(grpc.RpcError) as info_:
        stub.GetPublicKey(list_keys_request(ALICE), timeout=30)
    assert info_.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert RequestBody.decode(public_key_request(ALICE, KEY_A, "m/1", "mainnet").body).network == "mainnet"
    assert RequestBody.decode(list_keys_request(ALICE).body).kind == KIND_LIST_KEYS


def test_an_unknown_key_is_not_found_before_anything_is_recorded(wallet) -> None:  # type: ignore[no-untyped-def]
    unknown = b"\x0c" * 16
    alice = wallet.client(ALICE)
    admin = wallet.client(ADMIN)
    with pytest.raises(WalletError, match="NOT_FOUND"):
        alice.sign(unknown, b"\x05" * 32, "m/0", request_id="pay-unknown")
    with pytest.raises(WalletError, match="NOT_FOUND"):
        alice.public_key(unknown, "m/0")
    with pytest.raises(WalletError, match="NOT_FOUND"):
        admin.refresh(unknown, request_id="refresh-unknown")
    with pytest.raises(WalletError, match="NOT_FOUND"):
        admin.reshare(unknown, ["node1", "node2"], 2, request_id="reshare-unknown")
    assert wallet.node.sign_calls == 0
    # nothing recorded: no window charge, and the request ids are still free
    assert wallet.enforcer.used_in_window(ALICE.public_key, unknown) == 0
    rows = wallet.enforcer._db.execute("SELECT COUNT(*) FROM authorised").fetchone()[0]
    assert rows == 0
    assert [u.state for u in alice.status("pay-unknown")] == ["refused"]
    # a stranger learns nothing about which keys exist: refused before the key lookup
    with pytest.raises(WalletError, match="PERMISSION_DENIED"):
        wallet.client(STRANGER).sign(unknown, b"\x05" * 32, "m/0")


def test_request_bodies_of_the_reads_round_trip_and_refuse_bad_fields() -> None:
    body = RequestBody.decode(public_key_request(ALICE, KEY_A, "m/3/4", "testnet").body)
    assert (body.key_id, body.path, body.network) == (KEY_A, (3, 4), "testnet")
    with pytest.raises(ValueError, match="Bitcoin network"):
        public_key_request(ALICE, KEY_A, "m", "moonnet")
    with pytest.raises(ValueError, match="key id"):
        public_key_request(ALICE, b"\x01" * 32)
    request = make_request(ALICE, RequestBody(KIND_LIST_KEYS, ALICE.public_key, "l-1", int(time.time() * 1000)))
    assert RequestBody.decode(request.body).kind == KIND_LIST_KEYS
