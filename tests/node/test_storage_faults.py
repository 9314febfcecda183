"""Storage faults (issue 12, item 7) and the JSON log's level (item 8).

Each fault - a wrong key file, a corrupt header, a truncated file, flipped bytes in the body, a
zeroed page, a flipped byte in a share's ciphertext - is refused when the database opens, by
the real processes an operator runs (``cli status``, ``cli backup``, the signer daemon): one
clear line on stderr, exit status 2, no traceback, the error in the daemon's JSON log, and the
database file byte-identical afterwards. A share damaged while the daemon runs reaches the
wallet client as DATA_LOSS with a clear message, and the node logs it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from fp_guards import HANG_GUARD

from fusion_prime.node.config import load_config
from fusion_prime.node.devnet import create_devnet
from fusion_prime.node.logs import JsonFormatter, log_event
from fusion_prime.node.material import storage_key
from fusion_prime.node.storage import (
    DatabaseDamaged,
    KeyMaterial,
    RecordCorrupt,
    Storage,
    StorageError,
    WrongKey,
    check_key,
    database_summary,
)
from fusion_prime.proto.generated import wallet_pb2_grpc
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.requests import list_keys_request, public_key_request

PAGE = 4096
KEY_ID = b"\x07" * 16  # a wallet key id (16 bytes): the daemon test asks for it through the wallet API
CLIENT = PartyIdentity.generate()


def _populated(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A one-node devnet whose database holds a key share, aux info and an audit trail."""
    node = create_devnet(tmp_path / "net", 1, with_metrics=False, scrypt_log2_n=10)[0]
    cfg = load_config(node.config_path)
    with Storage(cfg.database_path, storage_key(cfg, {}), node_id=cfg.node_id, scrypt_log2_n=10,
                 allow_weak_kdf=True) as store:
        store.put_key_share(KEY_ID, parties=["node1"], threshold=1, level="test-2048",
                            share=secrets.token_bytes(2000))
        store.put_aux_info(b"\x08" * 32, parties=["node1"], level="test-2048", aux=secrets.token_bytes(30_000))
        for i in range(150):
            store.append_audit("test-event", detail={"i": i})
    _checkpointed(cfg.database_path)
    policy = node.folder / "policy.toml"
    policy.write_text(f'[default]\nclients = ["{CLIENT.public_key.hex()}"]\nmax_signatures_per_window = 100\n'
                      "window_seconds = 3600\n")
    return node, cfg, policy


def _checkpointed(path: Path) -> None:
    """Everything in the main file (no -wal left), as after a clean shutdown."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    for ext in ("-wal", "-shm"):
        Path(str(path) + ext).unlink(missing_ok=True)


def _flip_share_byte(path: Path) -> None:
    db = sqlite3.connect(path)
    blob = bytearray(db.execute("SELECT share FROM key_shares WHERE key_id = ?", (KEY_ID,)).fetchone()[0])
    blob[40] ^= 0x01
    db.execute("UPDATE key_shares SET share = ? WHERE key_id = ?", (bytes(blob), KEY_ID))
    db.commit()
    db.close()


def _damage(kind: str, cfg) -> None:  # type: ignore[no-untyped-def]
    path: Path = cfg.database_path
    data = bytearray(path.read_bytes())
    if kind == "wrong-key-file":
        KeyMaterial.create_key_file(cfg.storage.key_file.with_name("other.key"))
        os.replace(cfg.storage.key_file.with_name("other.key"), cfg.storage.key_file)
        return
    if kind == "share-ciphertext":
        _flip_share_byte(path)
        _checkpointed(path)
        return
    if kind == "corrupt-header":
        data[0:16] = b"not a database!!"
    elif kind == "truncated":
        data = data[: len(data) // 2 + 123]
    elif kind == "flipped-bytes":
        for page in (2, 3, 5):  # the b-tree page-type byte of a few pages in the body
            data[(page - 1) * PAGE] ^= 0xFF
    elif kind == "zeroed-page":
        data[4 * PAGE: 5 * PAGE] = bytes(PAGE)
    path.write_bytes(bytes(data))


FAULTS = ["wrong-key-file", "corrupt-header", "truncated", "flipped-bytes", "zeroed-page", "share-ciphertext"]
EXPECTED = {"wrong-key-file": WrongKey, "corrupt-header": DatabaseDamaged, "truncated": DatabaseDamaged,
            "flipped-bytes": DatabaseDamaged, "zeroed-page": DatabaseDamaged, "share-ciphertext": RecordCorrupt}


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:  # type: ignore[type-arg,no-untyped-def]
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, **kw)


def _plain_lines(stderr: str) -> list[str]:
    """stderr lines that are not JSON log lines."""
    out = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            out.append(line)
    return out


def _log_lines(stderr: str) -> list[dict]:
    out = []
    for line in stderr.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_refused_at_open_in_process(tmp_path, fault):
    _node, cfg, _ = _populated(tmp_path)
    _damage(fault, cfg)
    before = cfg.database_path.read_bytes()
    with pytest.raises(EXPECTED[fault]) as info:
        Storage(cfg.database_path, storage_key(cfg, {}), node_id="node1", scrypt_log2_n=10, allow_weak_kdf=True)
    message = str(info.value)
    assert "\n" not in message and str(cfg.database_path) in message
    assert cfg.database_path.read_bytes() == before


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_gives_one_clear_line_and_exit_2_from_cli_and_signer_daemon(tmp_path, fault):
    node, cfg, policy = _populated(tmp_path)
    _damage(fault, cfg)
    before = cfg.database_path.read_bytes()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    commands = {
        "status": ["fusion_prime.node.cli", "status", "--config", str(node.config_path)],
        "backup": ["fusion_prime.node.cli", "backup", "--config", str(node.config_path),
                   "--out", str(tmp_path / "b.backup")],
        "signer-daemon": ["fusion_prime.signer.daemon", "--config", str(node.config_path), "--policy", str(policy),
                          "--port-file", str(tmp_path / "port")],
    }
    for name, args in commands.items():
        result = _run(args, env=env)
        where = f"{name} / {fault}: {result.stderr}"
        assert result.returncode == 2, where
        assert "Traceback" not in result.stderr, where
        plain = _plain_lines(result.stderr)
        assert len(plain) == 1 and plain[0].startswith("error: "), where
        assert "codec can't decode" not in plain[0], where
        assert cfg.database_path.read_bytes() == before, where
        assert not (tmp_path / "b.backup").exists() and not (tmp_path / "port").exists(), where
        if name == "signer-daemon":
            logged = [e for e in _log_lines(result.stderr) if e.get("event") == "storage fault"]
            assert logged and logged[0]["level"] == "error", where
            assert logged[0]["error"] == EXPECTED[fault].__name__, where


def test_status_names_an_intact_database_and_its_key(tmp_path):
    node, cfg, _ = _populated(tmp_path)
    result = _run(["fusion_prime.node.cli", "status", "--config", str(node.config_path)])
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["database"]["keys"] == 1 and doc["storage_key"].startswith("ok (2 sealed rows")
    assert check_key(cfg.database_path, storage_key(cfg, {}), allow_weak_kdf=True) == 2
    assert database_summary(cfg.database_path)["aux_info"] == 1


def test_an_empty_or_foreign_file_is_never_initialised_over(tmp_path):
    key = KeyMaterial.passphrase("a long passphrase")
    empty = tmp_path / "empty.sqlite3"
    empty.write_bytes(b"")
    with pytest.raises(DatabaseDamaged, match="empty"):
        Storage(empty, key, scrypt_log2_n=10, allow_weak_kdf=True)
    assert empty.read_bytes() == b""
    foreign = tmp_path / "foreign.sqlite3"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    with pytest.raises(DatabaseDamaged, match="not a fusion-prime database"):
        Storage(foreign, key, scrypt_log2_n=10, allow_weak_kdf=True)
    assert foreign.read_bytes() == before


def test_a_damaged_meta_table_is_damage_not_a_decode_error(tmp_path):
    _node, cfg, _ = _populated(tmp_path)
    db = sqlite3.connect(cfg.database_path)
    db.execute("UPDATE meta SET value = x'ff00ff' WHERE name = 'kdf'")
    db.commit()
    db.close()
    _checkpointed(cfg.database_path)
    before = cfg.database_path.read_bytes()
    with pytest.raises(DatabaseDamaged, match="meta table is damaged"):
        Storage(cfg.database_path, storage_key(cfg, {}), node_id="node1", scrypt_log2_n=10, allow_weak_kdf=True)
    assert cfg.database_path.read_bytes() == before


def test_a_row_damaged_at_runtime_is_record_corrupt_and_the_pool_survives(tmp_path):
    _node, cfg, _ = _populated(tmp_path)
    store = Storage(cfg.database_path, storage_key(cfg, {}), node_id="node1", scrypt_log2_n=10, allow_weak_kdf=True)
    try:
        assert len(store.get_key_share(KEY_ID)) == 2000
        _flip_share_byte(cfg.database_path)
        with pytest.raises(RecordCorrupt) as info:
            store.get_key_share(KEY_ID)
        assert isinstance(info.value, StorageError) and "key_shares row" in str(info.value)
        assert store.list_keys() == [KEY_ID]  # the connection went back to the pool unharmed
        store.append_audit("after-fault")
        assert store.verify_audit_chain()
    finally:
        store.close()


def test_signer_daemon_answers_data_loss_for_a_share_damaged_while_running_and_logs_it(tmp_path):
    node, cfg, policy = _populated(tmp_path)
    port_file = tmp_path / "port"
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fusion_prime.signer.daemon", "--config", str(node.config_path),
                                 "--policy", str(policy), "--port-file", str(port_file)],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        while not (port_file.exists() and port_file.read_text()):
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.1)
        cert = (node.folder / "tls.crt").read_bytes()
        channel = grpc.secure_channel(f"127.0.0.1:{int(port_file.read_text())}",
                                      grpc.ssl_channel_credentials(root_certificates=cert),
                                      options=[("grpc.ssl_target_name_override", "node1")])
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        with pytest.raises(grpc.RpcError) as before_damage:
            stub.GetPublicKey(public_key_request(CLIENT, KEY_ID), timeout=60)
        # the share is random bytes, not a KeyShare: decrypted fine, refused as input
        assert before_damage.value.code() != grpc.StatusCode.DATA_LOSS
        _flip_share_byte(cfg.database_path)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetPublicKey(public_key_request(CLIENT, KEY_ID), timeout=60)
        assert info.value.code() == grpc.StatusCode.DATA_LOSS, info.value
        assert "does not authenticate" in info.value.details() and "Trio" not in info.value.details()
        assert len(stub.ListKeys(list_keys_request(CLIENT), timeout=60).keys) == 1  # still serving
        channel.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=HANG_GUARD) == 0
    events = _log_lines(log_path.read_text())
    faults = [e for e in events if e.get("event") == "wallet rpc storage error"]
    assert faults and faults[0]["level"] == "error" and faults[0]["error"] == "RecordCorrupt"
    assert "does not authenticate" in faults[0]["exception"]
    # item 8: the log level of the "node opened" line is a log level, the security level its own field
    opened = [e for e in events if e.get("event") == "node opened"]
    assert opened and opened[0]["level"] == "info" and opened[0]["security_level"] == "test-2048"


def test_log_event_never_overwrites_the_lines_own_keys():
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("fusion_prime.test.reserved")
    logger.setLevel(logging.DEBUG)
    handler = Keep()
    logger.addHandler(handler)
    try:
        log_event(logger, logging.WARNING, "the event", level="128", ts="never", logger="nobody", event="other",
                  exception="none", node="node1")
    finally:
        logger.removeHandler(handler)
    doc = json.loads(JsonFormatter().format(records[0]))
    assert doc["level"] == "warning" and doc["event"] == "the event" and doc["logger"] == "fusion_prime.test.reserved"
    assert doc["ts"] != "never" and "exception" not in doc
    assert (doc["field_level"], doc["field_ts"], doc["field_logger"], doc["field_event"], doc["field_exception"]) == (
        "128", "never", "nobody", "other", "none")
    assert doc["node"] == "node1"
    # a record whose fields were passed some other way cannot overwrite them either
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    record.fp_fields = {"level": "128"}  # type: ignore[attr-defined]
    doc = json.loads(JsonFormatter().format(record))
    assert doc["level"] == "info" and doc["field_level"] == "128"
