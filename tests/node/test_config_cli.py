"""Config validation messages, the operator CLI, and the log redaction rules."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from fusion_prime.node.cli import main as cli
from fusion_prime.node.config import ConfigError, load_config
from fusion_prime.node.logs import configure_logging, log_event


def write(path, text):
    path.write_text(text)
    return path


def test_config_errors_are_collected_and_name_their_field(tmp_path):
    cert = write(tmp_path / "a.crt", "x")
    path = write(tmp_path / "node.toml", f'''
node_id = "Alice!"
listen = "127.0.0.1:99999"
security_level = "test-2048"
round_deadline_seconds = 0
colour = "blue"
[storage]
passphrase_env = "P"
key_file = "k"
[metrics]
listen = "0.0.0.0:9100"
[[roster]]
node_id = "bob"
index = 0
address = "nowhere"
identity_public_key = "zz"
tls_cert = "{cert}"
[[roster]]
node_id = "bob"
index = 2
address = "127.0.0.1:1"
identity_public_key = "02{"11" * 32}"
tls_cert = "missing.crt"
''')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    for expected in (
        "node_id: 'Alice!'", "listen: '127.0.0.1:99999': port", "test-only level", "round_deadline_seconds: 0",
        "colour: unknown setting", "storage: set exactly one", "metrics.listen: '0.0.0.0:9100' must be a loopback",
        "roster[0].index: 0", "roster[0].address: 'nowhere'", "roster[0].identity_public_key: not hex",
        "roster[1].tls_cert:", "roster[1].node_id: duplicates roster[0]", "has no roster entry",
    ):
        assert expected in text, f"missing {expected!r} in:\n{text}"
    assert len(err.value.problems) >= 13


def test_config_not_found_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path / "bad.toml", "node_id = "))


def test_devnet_config_round_trips(devnet3):
    cfg = load_config(devnet3[0].config_path)
    assert cfg.node_id == "node1" and [e.index for e in cfg.roster] == [1, 2, 3]
    assert cfg.test_mode and cfg.level.test_only


def test_cli_init_status_backup_restore(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSION_PRIME_PASSPHRASE", "a long operator passphrase")
    from fusion_prime.node.devnet import free_port

    assert cli(["init", "--dir", str(tmp_path / "alice"), "--node-id", "alice", "--listen", "127.0.0.1:7101",
                "--metrics", f"127.0.0.1:{free_port()}"]) == 0
    out = capsys.readouterr().out
    assert 'node_id = "alice"' in out and "identity_public_key" in out
    config = str(tmp_path / "alice" / "node.toml")
    assert oct(os.stat(tmp_path / "alice" / "identity.key").st_mode & 0o777) == "0o600"
    assert cli(["status", "--config", config]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["database"]["node_id"] == "alice" and status["database"]["keys"] == 0

    backup = tmp_path / "alice.backup"
    assert cli(["backup", "--config", config, "--out", str(backup)]) == 0
    capsys.readouterr()
    # Restoring over an existing database is refused.
    assert cli(["restore", "--config", config, "--backup", str(backup)]) == 2
    assert "fresh data directory" in capsys.readouterr().err
    (tmp_path / "alice" / "data").rename(tmp_path / "old-data")
    monkeypatch.setenv("FUSION_PRIME_PASSPHRASE", "the wrong passphrase")
    assert cli(["restore", "--config", config, "--backup", str(backup)]) == 2
    err = capsys.readouterr().err
    assert "wrong passphrase" in err and "nothing was restored" in err
    assert not (tmp_path / "alice" / "data" / "node.sqlite3").exists()
    monkeypatch.setenv("FUSION_PRIME_PASSPHRASE", "a long operator passphrase")
    assert cli(["restore", "--config", config, "--backup", str(backup)]) == 0
    capsys.readouterr()
    assert cli(["status", "--config", config]) == 0
    assert json.loads(capsys.readouterr().out)["daemon"]["status"] == "not running"


def test_cli_reports_wrong_passphrase_and_missing_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSION_PRIME_PASSPHRASE", "a long operator passphrase")
    cli(["init", "--dir", str(tmp_path / "bob"), "--node-id", "bob"])
    capsys.readouterr()
    config = str(tmp_path / "bob" / "node.toml")
    monkeypatch.setenv("FUSION_PRIME_PASSPHRASE", "not the right one")
    assert cli(["backup", "--config", config, "--out", str(tmp_path / "b")]) == 2
    assert "wrong passphrase" in capsys.readouterr().err
    monkeypatch.delenv("FUSION_PRIME_PASSPHRASE")
    assert cli(["backup", "--config", config, "--out", str(tmp_path / "b")]) == 2
    assert "FUSION_PRIME_PASSPHRASE, which is not set" in capsys.readouterr().err


def test_run_refuses_test_level_outside_test_mode(devnet3):
    text = devnet3[0].config_path.read_text().replace("test_mode = true", "test_mode = false")
    devnet3[0].config_path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "fusion_prime.node.cli", "run", "--config",
                           str(devnet3[0].config_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "test-only level" in proc.stderr and "scrypt_log2_n" in proc.stderr


def test_logs_redact_secrets_and_never_print_bytes():
    stream = io.StringIO()
    handler = configure_logging(logging.DEBUG, stream)
    try:
        log = logging.getLogger("fusion_prime.node.test")
        log_event(log, logging.INFO, "something", session_id=b"\x01" * 4, payload=b"SECRET-PAYLOAD",
                  share=12345, passphrase="hunter2", key=b"k" * 32, blob=b"RAW-BYTES", key_id=b"\xab",
                  nested={"secret_share": 1, "ok": 2})
        line = json.loads(stream.getvalue())
    finally:
        logging.getLogger("fusion_prime").removeHandler(handler)
    assert line["session_id"] == "01010101" and line["key_id"] == "ab"
    assert line["payload"] == line["share"] == line["passphrase"] == line["key"] == "[redacted]"
    assert line["blob"] == "<9 bytes>" and line["nested"] == {"secret_share": "[redacted]", "ok": 2}
    assert "SECRET" not in stream.getvalue() and "hunter2" not in stream.getvalue()
