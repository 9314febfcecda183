"""The wallet users' friction (issue 17), end to end: three signer daemons as separate processes
(gRPC + mutual TLS between them, TLS to the wallet), the CLI as a real process.

* ``create-key`` shows its phases while they happen (Status stream); the coordinator logs aux
  info (started, done) and the participants log that they generate their primes;
* the label and the epoch are in the key listing;
* an unknown key id is NOT_FOUND (Sign, GetPublicKey, Refresh, Reshare) and charges nothing;
  clients the policy does not name cannot list keys or read public keys;
* ``sign-eip1559`` output recovers (eth-account) to the key's address; ``sign-psbt`` output is
  accepted by the Bitcoin devnet (libbitcoinkernel's checks) and mined;
* the asynchronous SDK does what the synchronous one does (create, sign through ``signer()``,
  status, watch, refresh, reshare, ``async with``);
* the wallet policy state survives a restore from its backup: an answered request replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rlp
from fp_guards import HANG_GUARD
from fp_signer_net import SignerNet, digest_of, verifies

from fusion_prime.proto.generated import wallet_pb2
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.client import AsyncWalletClient, WalletClient, WalletError

ALICE, STRANGER = PartyIdentity.generate(), PartyIdentity.generate()
UNKNOWN_KEY = b"\x5a" * 16
#: installed by `pip install -e .` (pyproject's [project.scripts]) beside the interpreter
WALLET_CLI = Path(sys.executable).parent / "fusion-prime-wallet"
pytestmark = pytest.mark.xdist_group(name="wallet-usability-network")


@pytest.fixture(scope="module")
def net(tmp_path_factory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("wallet-usability")
    network = SignerNet(base / "net", ALICE)
    network.keys = {}
    for who, name in ((ALICE, "alice"), (STRANGER, "stranger")):
        path = base / f"{name}.key"
        path.write_text(who.secret_bytes().hex())
        path.chmod(0o600)
        network.keys[name] = path
    network.start_all()
    yield network
    network.stop_all()


def _cli(net: SignerNet, node_id: str, *args: str, who: str = "alice") -> subprocess.CompletedProcess[str]:
    """The wallet CLI by its console-script name, as a user runs it."""
    return subprocess.run(
        [str(WALLET_CLI), "--target", f"127.0.0.1:{net.ports[node_id]}",
         "--server-cert", str(net.by_id[node_id].folder / "tls.crt"), "--server-name", node_id,
         "--client-key", str(net.keys[who]), *args],
        capture_output=True, text=True, timeout=HANG_GUARD)


def _ok(proc: subprocess.CompletedProcess[str]):  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _refused(proc: subprocess.CompletedProcess[str], code: str) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: " + code), proc.stderr
    return lines[0]


def _log_events(net: SignerNet, node_id: str) -> list[dict]:
    events = []
    for path in sorted(net.by_id[node_id].folder.glob("signer-*.log")):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
    return events


def _authorised_rows(net: SignerNet, node_id: str) -> int:
    state = net.data_dir(node_id) / "wallet-policy.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM authorised").fetchone()[0])


def _wait_for_pool(w: WalletClient, key_id: bytes) -> None:
    deadline = time.time() + HANG_GUARD
    while not any(k.key_id == key_id and k.presignatures_available >= 1 for k in w.list_keys()):
        assert time.time() < deadline, "the presignature pool never filled"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def key(net) -> bytes:  # type: ignore[no-untyped-def]
    """Created through the CLI, whose phases are read line by line while it runs."""
    node = net.by_id["node1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusion_prime.signer.cli", "create-key", "--threshold", "2", "--parties", "3",
         "--label", "treasury", "--request-id", "create-treasury", "--target", f"127.0.0.1:{net.ports['node1']}",
         "--server-cert", str(node.folder / "tls.crt"), "--server-name", "node1", "--client-key",
         str(net.keys["alice"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress, seen_while_running = [], []
    assert proc.stderr is not None
    for line in proc.stderr:
        progress.append(line.rstrip("\n"))
        seen_while_running.append(proc.poll() is None)
    out, _ = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 0, progress
    net.create_progress = (progress, seen_while_running)
    return bytes.fromhex(json.loads(out)["key_id"])


def test_create_key_shows_its_phases_as_they_happen_and_the_node_logs_aux_info(net, key) -> None:  # type: ignore[no-untyped-def]
    progress, seen_while_running = net.create_progress
    states = [line.split(": ", 1)[1].split(":")[0] for line in progress]
    assert states == ["authorised", "running (keygen)", "running (aux-info)", "done"], progress
    assert all(line.startswith("create-key create-treasury: ") for line in progress)
    assert progress[-1].endswith(key.hex())
    # the aux-info line was read while the CLI still waited for the key: shown as it happened
    assert seen_while_running[2], progress
    aux = [e for e in _log_events(net, "node1") if e.get("event") == "wallet create-key: aux info"]
    assert [e["state"] for e in aux if e["state"] != "running"] == ["started", "done"]
    assert aux[-1]["key_id"] == key.hex() and aux[-1]["seconds"] > 0
    for participant in ("node2", "node3"):
        assert any(e.get("event") == "aux info authorised: generating this node's Paillier primes"
                   for e in _log_events(net, participant)), participant


def test_the_listing_has_label_and_epoch_and_needs_a_known_client(net, key) -> None:  # type: ignore[no-untyped-def]
    # node1 served the CreateKey; node2 and node3 take the label from the key generation's
    # proposal, which carries the client's signed request
    for node_id in ("node1", "node2", "node3"):
        listed = _ok(_cli(net, node_id, *(("keys",) if node_id == "node1" else ("keys", "list"))))
        assert [(k["key_id"], k["label"], k["epoch"], k["threshold"]) for k in listed] == \
            [(key.hex(), "treasury", 0, 2)], node_id
    # a client no policy names: refused, nothing listed
    _refused(_cli(net, "node1", "keys", who="stranger"), "PERMISSION_DENIED")
    _refused(_cli(net, "node2", "pubkey", "--key", key.hex(), who="stranger"), "PERMISSION_DENIED")
    with net.client_for("node3") as w:
        with pytest.raises(WalletError, match="UNAUTHENTICATED"):
            w._call("ListKeys", wallet_pb2.SignedRequest())  # unsigned
        assert [bytes(k.key_id) for k in w.list_keys()] == [key]


def test_an_unknown_key_is_not_found_and_charges_nothing(net, key) -> None:  # type: ignore[no-untyped-def]
    before = _authorised_rows(net, "node2")
    with net.client_for("node2") as w:
        for call in (lambda: w.sign(UNKNOWN_KEY, digest_of("unknown"), "m/0"),
                     lambda: w.public_key(UNKNOWN_KEY, "m/0"),
                     lambda: w.refresh(UNKNOWN_KEY),
                     lambda: w.reshare(UNKNOWN_KEY, ["node1", "node2", "node3"], 2)):
            with pytest.raises(WalletError) as info:
                call()
            assert info.value.code == "NOT_FOUND" and UNKNOWN_KEY.hex() in str(info.value)
    line = _refused(_cli(net, "node2", "sign-digest", "--key", UNKNOWN_KEY.hex(), "--digest", "11" * 32),
                    "NOT_FOUND")
    assert "Traceback" not in line
    assert _authorised_rows(net, "node2") == before


def test_cli_signs_an_eip1559_transaction(net, key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from eth_account import Account

    path = "m/44/60/0/7"
    sender = _ok(_cli(net, "node2", "pubkey", "--key", key.hex(), "--path", path))["ethereum_address"]
    recipient = "0x" + "42" * 20
    signed = _ok(_cli(net, "node2", "sign-eip1559", "--key", key.hex(), "--path", path, "--chain-id", "31337",
                      "--nonce", "3", "--max-fee-per-gas", "2000000000", "--max-priority-fee-per-gas", "1000000000",
                      "--to", recipient, "--value", "12345"))
    assert Account.recover_transaction(signed["raw"]) == sender == signed["from"]
    raw = bytes.fromhex(signed["raw"][2:])
    fields = rlp.decode(raw[1:])  # type 2: chain id, nonce, tip, max fee, gas, to, value, data, ...
    assert raw[0] == 2 and [int.from_bytes(fields[i], "big") for i in (0, 1, 2, 3, 4, 6)] == [
        31337, 3, 1_000_000_000, 2_000_000_000, 21_000, 12345]
    assert fields[5] == bytes.fromhex("42" * 20) and fields[7] == b""
    # the same from a web3-style JSON file, with a call-data field and hex numbers
    tx_file = tmp_path / "tx.json"
    tx_file.write_text(json.dumps({"chainId": 31337, "nonce": "0x4", "maxFeePerGas": "0x77359400",
                                   "maxPriorityFeePerGas": 1_000_000_000, "gas": 50_000, "to": recipient,
                                   "value": "0", "data": "0xdeadbeef", "from": sender}))
    from_file = _ok(_cli(net, "node2", "sign-eip1559", "--key", key.hex(), "--path", path, "--tx", str(tx_file)))
    assert Account.recover_transaction(from_file["raw"]) == sender and from_file["raw"] != signed["raw"]
    # a file whose sender is not the key's address at that path: refused before signing
    other_path = _cli(net, "node2", "sign-eip1559", "--key", key.hex(), "--path", "m/44/60/0/8", "--tx", str(tx_file))
    assert other_path.returncode == 2 and "is from" in other_path.stderr and len(other_path.stderr.splitlines()) == 1


def test_cli_signs_a_psbt_the_bitcoin_devnet_accepts(net, key, btc_rpc, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fp_local_signer import kernel_verify

    from fusion_prime.signer.bitcoin import COIN, Utxo, build_p2wpkh_spend
    from fusion_prime.signer.psbt import Psbt

    coin_path = "m/0/21"
    with net.client_for("node1") as w:
        signer = w.signer(key)
        address = w.public_key(key, coin_path).bitcoin_address
        miner = w.public_key(key, "m/9/9").bitcoin_address
        btc_rpc.generatetoaddress(1, address)
        btc_rpc.generatetoaddress(100, miner)  # coinbase maturity
        coins = [Utxo.from_rpc(u, coin_path) for u in btc_rpc.scantxoutset("start", [f"addr({address})"])["unspents"]]
        spend = build_p2wpkh_spend(coins, [(w.public_key(key, "m/8/1").bitcoin_address, 10 * COIN)], 2,
                                   change=w.public_key(key, "m/1/1").bitcoin_address)
        psbt_file = tmp_path / "spend.psbt"
        psbt_file.write_text(Psbt.from_spend(spend, signer).to_base64())  # BIP32 origins: matched by the CLI
    out_file = tmp_path / "signed.psbt"
    result = _ok(_cli(net, "node3", "sign-psbt", "--key", key.hex(), "--psbt", str(psbt_file),
                      "--out", str(out_file)))
    assert result["complete"] and result["signed_inputs"] == list(range(len(coins)))
    raw = bytes.fromhex(result["tx"])
    spent = [(c.value, c.script_pubkey) for c in coins]
    assert kernel_verify(raw, spent)
    mutated = bytearray(raw)
    mutated[len(raw) // 2] ^= 1
    assert not kernel_verify(bytes(mutated), spent)
    assert Psbt.from_base64(out_file.read_text()).inputs[0].is_final
    txid = btc_rpc.sendrawtransaction(result["tx"])
    assert txid == result["txid"]
    btc_rpc.generatetoaddress(1, address)
    assert btc_rpc.getrawtransaction(txid, True)["confirmations"] == 1
    # --no-finalize keeps the partial signatures for another signer
    partial = _ok(_cli(net, "node3", "sign-psbt", "--key", key.hex(), "--psbt", str(psbt_file), "--no-finalize"))
    assert not partial["complete"] and "tx" not in partial
    assert all(len(i.partial_sigs) == 1 for i in Psbt.from_base64(partial["psbt"]).inputs)


def test_the_async_sdk_has_the_sync_surface(net, key) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with AsyncWalletClient(f"127.0.0.1:{net.ports['node3']}", net.certs["node3"], ALICE,
                                     server_name="node3") as w:
            created = await w.create_key(2, 3, "async", request_id="async-create")
            new_key = bytes(created.key_id)
            assert [u.state for u in await w.status("async-create")][-1] == "done"
            listed = {bytes(k.key_id): k for k in await w.list_keys()}
            assert listed[new_key].label == "async" and listed[new_key].epoch == 0 and key in listed
            signer = w.signer(new_key)
            pub = await signer.public_key("m/0/5")
            digest = digest_of("async sign")
            sig = await signer.sign_digest(digest, "m/0/5")
            assert sig.public_key == pub and verifies(pub.to_bytes(), digest, sig)
            refreshed = await w.refresh(new_key, request_id="async-refresh")
            assert refreshed.state == "done", refreshed
            assert [u.state async for u in w.watch("async-refresh")][-2:] == ["running", "done"]
            reshared = await w.reshare(new_key, ["node1", "node2", "node3"], 3, request_id="async-reshare")
            assert reshared.state == "done", reshared
            after = {bytes(k.key_id): k for k in await w.list_keys()}[new_key]
            assert after.threshold == 3 and after.epoch > 1 and after.label == "async"
            assert (await w.public_key(new_key, "m/0/5")).public_key == pub.to_bytes()  # same key
            with pytest.raises(WalletError, match="NOT_FOUND"):
                await w.sign(UNKNOWN_KEY, digest, "m/0")

    asyncio.run(main())


def test_the_wallet_state_survives_a_restore_from_its_backup(net, key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    node = net.by_id["node2"]
    digest = digest_of("paid before the backup")
    with net.client_for("node2") as w:
        _wait_for_pool(w, key)
        first = w.sign(key, digest, "m/0/1", request_id="before-backup")
    backup = tmp_path / "node2-wallet-state.sqlite3"
    made = subprocess.run([sys.executable, "-m", "fusion_prime.signer.daemon", "backup", "--config",
                           str(node.config_path), "--out", str(backup)], capture_output=True, text=True,
                          timeout=HANG_GUARD)
    assert made.returncode == 0 and backup.exists(), made.stderr
    rows_in_backup = _authorised_rows(net, "node2")
    with net.client_for("node2") as w:
        w.sign(key, digest_of("paid after the backup"), "m/0/1", request_id="after-backup")
    assert net.stop("node2") == 0
    state = net.data_dir("node2") / "wallet-policy.sqlite3"
    # a stopped daemon closed its state cleanly: one self-contained file, no -wal/-shm beside it
    assert [p.name for p in net.data_dir("node2").glob("wallet-policy.sqlite3*")] == [state.name]
    state.rename(tmp_path / "lost.sqlite3")
    # started without its state while it holds a key: the daemon says so in its log
    net.start("node2")
    net.wait_started("node2")
    assert any(e.get("event", "").startswith("wallet policy state is new but this node holds keys")
               for e in _log_events(net, "node2"))
    assert net.stop("node2") == 0
    state.unlink()
    restored = subprocess.run([sys.executable, "-m", "fusion_prime.signer.daemon", "restore", "--config",
                               str(node.config_path), "--backup", str(backup)], capture_output=True, text=True,
                              timeout=HANG_GUARD)
    assert restored.returncode == 0, restored.stderr
    assert _authorised_rows(net, "node2") == rows_in_backup
    net.start("node2")
    net.wait_started("node2")
    with net.client_for("node2") as w:
        # answered before the backup: replayed from the restored state, no new session
        again = w.sign_request(w._sign_request(key, digest, "m/0/1", "before-backup"))
        assert again.replayed and int.from_bytes(again.r, "big") == first.r
        assert [u.state for u in w.status("before-backup")] == ["done"]
        with pytest.raises(WalletError, match="already used"):
            w.sign(key, digest_of("something else"), "m/0/1", request_id="before-backup")
