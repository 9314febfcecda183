"""The wallet API end to end: three signer daemons (separate processes, gRPC + mTLS between
them, TLS to the client), each with its own policy file.

Shows: a wallet creates a key and signs at a derived path (verified by libsecp256k1); the
same request id returns the first result without a new session; an unauthenticated client, a
client the policy does not allow and a request over the window limit are refused by the node;
a coordinator whose own policy lets a client through still gets nothing when the other nodes'
policies say no; malformed digests, paths and key ids are clear errors.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from coincurve import PublicKey
from fp_guards import HANG_GUARD

from fusion_prime.node.devnet import create_devnet
from fusion_prime.proto.generated import wallet_pb2
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.signer.client import WalletClient, WalletError
from fusion_prime.signer.requests import KIND_SIGN, RequestBody, make_request

ALICE, MALLORY, BOB = PartyIdentity.generate(), PartyIdentity.generate(), PartyIdentity.generate()
# CAROL signs only after the reshare: ALICE's window (6 per hour here) is used by the tests before it
CAROL = PartyIdentity.generate()
# one network for the whole module: the tests run in one xdist worker, in file order
pytestmark = pytest.mark.xdist_group(name="wallet-network")


def _policy(path: Path, clients: list[PartyIdentity], limit: int) -> Path:
    keys = ", ".join(f'"{c.public_key.hex()}"' for c in clients)
    path.write_text(
        "[default]\n"
        f"clients = [{keys}]\n"
        f"max_signatures_per_window = {limit}\n"
        "window_seconds = 3600\n"
        f'create_key_clients = ["{ALICE.public_key.hex()}"]\n'
    )
    return path


@pytest.fixture(scope="module")
def network(tmp_path_factory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("wallet-devnet")
    devnet = create_devnet(base, 3, with_metrics=False, round_deadline_seconds=20.0)
    procs, ports = [], {}
    for i, node in enumerate(devnet):
        # node1 is the misbehaving coordinator: its own policy also lets MALLORY in
        clients = [ALICE, BOB, CAROL, MALLORY] if i == 0 else [ALICE, BOB, CAROL]
        policy = _policy(node.folder / "policy.toml", clients, limit=6)
        port_file = node.folder / "wallet.port"
        log = open(node.folder / "signer.log", "wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fusion_prime.signer.daemon", "--config", str(node.config_path), "--policy",
             str(policy), "--port-file", str(port_file)], stdout=subprocess.DEVNULL, stderr=log))
        ports[node.node_id] = port_file
    deadline = time.time() + HANG_GUARD
    while not all(p.exists() and p.read_text() for p in ports.values()):
        assert time.time() < deadline, "signer daemons did not start"
        assert all(p.poll() is None for p in procs), "a signer daemon died at startup"
        time.sleep(0.2)
    certs = {d.node_id: (d.folder / "tls.crt").read_bytes() for d in devnet}
    yield {"devnet": devnet, "ports": {k: int(v.read_text()) for k, v in ports.items()}, "certs": certs}
    for p in procs:
        p.terminate()
    for p in procs:
        assert p.wait(timeout=HANG_GUARD) == 0


def _client(network, node_id: str, who: PartyIdentity) -> WalletClient:  # type: ignore[no-untyped-def]
    return WalletClient(f"127.0.0.1:{network['ports'][node_id]}", network["certs"][node_id], who,
                        server_name=node_id)


def _wait_for_pool(w: WalletClient, key_id: bytes, at_least: int = 2) -> None:
    deadline = time.time() + HANG_GUARD
    while not any(k.key_id == key_id and k.presignatures_available >= at_least for k in w.list_keys()):
        assert time.time() < deadline, "the presignature pool never filled"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def key(network):  # type: ignore[no-untyped-def]
    with _client(network, "node1", ALICE) as w:
        created = w.create_key(2, 3, "treasury")
        key_id = bytes(created.key_id)
        _wait_for_pool(w, key_id)
    return key_id


def test_wallet_signs_at_a_derived_path(network, key) -> None:  # type: ignore[no-untyped-def]
    digest = bytes(range(32))
    with _client(network, "node1", ALICE) as w:
        info = w.public_key(key, "m/0/1")
        sig = w.sign(key, digest, "m/0/1", request_id="pay-0001")
        assert sig.public_key.to_bytes() == bytes(info.public_key)
        assert PublicKey(bytes(info.public_key)).verify(sig.to_der(), digest, hasher=None)
        assert info.ethereum_address.startswith("0x") and info.bitcoin_address.startswith("bcrt1q")
        # the same request id again: the stored result, flagged as replayed, no new session
        again = w.sign_request(make_request(ALICE, RequestBody(
            KIND_SIGN, ALICE.public_key, "pay-0001", int(time.time() * 1000), key_id=key, digest=digest,
            path=(0, 1))))
        assert again.replayed and int.from_bytes(again.r, "big") == sig.r
        # and with a different body: refused
        with pytest.raises(WalletError, match="already used"):
            w.sign(key, bytes(32), "m/0/1", request_id="pay-0001")


def test_unauthenticated_and_unknown_clients_are_refused(network, key) -> None:  # type: ignore[no-untyped-def]
    with _client(network, "node2", ALICE) as w:
        with pytest.raises(WalletError, match="UNAUTHENTICATED"):
            w.sign_request(wallet_pb2.SignedRequest(body=b"whatever"))
    with _client(network, "node2", MALLORY) as w, pytest.raises(WalletError, match=r"PERMISSION_DENIED.*not allowed"):
        w.sign(key, bytes(32), "m/0")


def test_a_lenient_coordinator_cannot_override_the_other_nodes(network, key) -> None:  # type: ignore[no-untyped-def]
    """node1's own policy lets MALLORY in; node2 and node3 refuse, so no signature exists."""
    with _client(network, "node1", ALICE) as w:
        _wait_for_pool(w, key)
    with _client(network, "node1", MALLORY) as w, pytest.raises(WalletError) as info:
        w.sign(key, bytes([7]) * 32, "m/0")
    assert info.value.code == "ABORTED"
    assert "not allowed" in str(info.value) or "refused" in str(info.value)


def test_malformed_inputs_are_clear_errors(network, key) -> None:  # type: ignore[no-untyped-def]
    with _client(network, "node2", ALICE) as w:
        with pytest.raises(InvalidInput, match="32 bytes"):
            w.sign(key, b"short", "m/0")
        with pytest.raises(InvalidInput, match="hardened"):
            w.sign(key, bytes(32), "m/0'")
        with pytest.raises(InvalidInput, match="key id"):
            w.sign(b"\x01" * 3, bytes(32), "m/0")
        # a correctly signed body that the SDK would never build: the node says what is wrong
        body = RequestBody(KIND_SIGN, ALICE.public_key, "raw-1", int(time.time() * 1000), key_id=key,
                           digest=bytes(31))
        raw = wallet_pb2.SignedRequest(body=body.encode(), signature=ALICE.sign(body.digest_to_sign()))
        with pytest.raises(WalletError, match=r"INVALID_ARGUMENT.*32 bytes"):
            w.sign_request(raw)
        good = RequestBody(KIND_SIGN, ALICE.public_key, "raw-2", int(time.time() * 1000), key_id=key,
                           digest=bytes(32))
        with pytest.raises(WalletError, match="UNAUTHENTICATED"):  # signed by someone else than the client
            w.sign_request(wallet_pb2.SignedRequest(body=good.encode(), signature=MALLORY.sign(good.digest_to_sign())))
        with pytest.raises(WalletError, match="NOT_FOUND"):
            w.public_key(b"\x02" * 16, "m/0")


def test_cli_signs_a_digest(network, key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    secret = tmp_path / "client.key"
    secret.write_text(ALICE.secret_bytes().hex())
    secret.chmod(0o600)
    node = network["devnet"][1]
    with _client(network, "node1", ALICE) as w:
        _wait_for_pool(w, key, 1)
    common = [sys.executable, "-m", "fusion_prime.signer.cli", "--target", f"127.0.0.1:{network['ports']['node2']}",
              "--server-cert", str(node.folder / "tls.crt"), "--server-name", "node2", "--client-key", str(secret)]
    digest = bytes(range(1, 33))
    pub = json.loads(subprocess.run([*common, "pubkey", "--key", key.hex(), "--path", "m/3"], check=True,
                                    capture_output=True, text=True).stdout)
    out = subprocess.run([*common, "sign-digest", "--key", key.hex(), "--digest", digest.hex(), "--path", "m/3"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sig = json.loads(out.stdout)
    assert sig["public_key"] == pub["public_key"]
    from fusion_prime.protocol.curve import Point
    from fusion_prime.protocol.ecdsa import Signature

    s = Signature(int(sig["r"], 16), int(sig["s"], 16), sig["recovery_id"],
                  Point.from_bytes(bytes.fromhex(sig["public_key"])))
    assert PublicKey(bytes.fromhex(pub["public_key"])).verify(s.to_der(), digest, hasher=None)
    bad = subprocess.run([*common, "sign-digest", "--key", "zz", "--digest", digest.hex()], capture_output=True,
                         text=True)
    # a malformed key id is an input error found before anything is sent: exit 2, one line
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and len(bad.stderr.splitlines()) == 1


def test_eip1559_transfer_signed_by_the_network_moves_balances_on_anvil(network, key, anvil) -> None:  # type: ignore[no-untyped-def]
    from eth_account import Account
    from web3 import Web3

    from fusion_prime.signer.ethereum import address_at, fill_transaction, sign_transaction

    path = "m/44/60/0/3"
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    with _client(network, "node1", ALICE) as w:
        _wait_for_pool(w, key, 1)
        signer = w.signer(key)
        sender = address_at(signer, path)
        assert sender == w.public_key(key, path).ethereum_address
        w3.eth.wait_for_transaction_receipt(w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": sender,
                                                                     "value": 10**18}))
        recipient = w3.eth.accounts[5]
        before = w3.eth.get_balance(recipient)
        tx = fill_transaction(w3, sender, to=recipient, value=10**15)
        signed = sign_transaction(tx, signer, path)
    assert Account.recover_transaction(signed.raw) == sender
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw))
    assert receipt["status"] == 1
    assert w3.eth.get_balance(recipient) == before + 10**15
    assert w3.eth.get_balance(sender) == 10**18 - 10**15 - receipt["gasUsed"] * receipt["effectiveGasPrice"]


def test_p2wpkh_spend_signed_by_the_network_passes_bitcoin_core_script_checks(network, key) -> None:  # type: ignore[no-untyped-def]
    from fp_local_signer import kernel_verify

    from fusion_prime.signer.bitcoin import OutPoint, Utxo, build_p2wpkh_spend, p2wpkh_script, sign_spend

    path = "m/0/9"
    with _client(network, "node1", ALICE) as w:
        _wait_for_pool(w, key, 1)
        signer = w.signer(key)
        script = p2wpkh_script(signer.public_key(path).to_bytes())
        coin = Utxo(OutPoint(bytes(range(32)), 1), 250_000, script, path)
        spend = build_p2wpkh_spend([coin], [(w.public_key(key, "m/1/1").bitcoin_address, 100_000)], 5,
                                   w.public_key(key, "m/1/2").bitcoin_address)
        raw = sign_spend(spend, signer).serialize()
    spent = [(coin.value, coin.script_pubkey)]
    assert kernel_verify(raw, spent)
    for pos in (len(raw) // 3, len(raw) // 2, len(raw) - 5):  # a changed byte breaks it
        mutated = bytearray(raw)
        mutated[pos] ^= 0x01
        assert not kernel_verify(bytes(mutated), spent)


def test_refresh_and_reshare_through_the_wallet_api(network, key) -> None:  # type: ignore[no-untyped-def]
    """Key administration: only create_key_clients may ask; the group key and addresses stay."""
    with _client(network, "node2", MALLORY) as w, pytest.raises(WalletError, match="PERMISSION_DENIED"):
        w.refresh(key)
    with _client(network, "node1", ALICE) as w:
        before = w.public_key(key, "m/0/1")
        refreshed = w.refresh(key)
        assert refreshed.state == "done", refreshed
        assert w.public_key(key, "m/0/1").public_key == before.public_key
        reshared = w.reshare(key, ["node1", "node2", "node3"], 3)  # 2-of-3 -> 3-of-3, same nodes
        assert reshared.state == "done", reshared
        assert [k.threshold for k in w.list_keys() if k.key_id == key] == [3]
    with _client(network, "node1", CAROL) as w:
        _wait_for_pool(w, key, 1)
        digest = bytes([9]) * 32
        sig = w.sign(key, digest, "m/0/1")
        assert PublicKey(bytes(before.public_key)).verify(sig.to_der(), digest, hasher=None)


def test_window_limit(network, key) -> None:  # type: ignore[no-untyped-def]
    """BOB signs only here, so his window (6 per hour in these policies) is his own whatever the
    order the tests run in."""
    with _client(network, "node1", BOB) as w:
        refused = None
        for i in range(14):
            _wait_for_pool(w, key, 1)
            try:
                w.sign(key, bytes([i]) * 32, "m/9")
            except WalletError as exc:
                refused = exc
                break
        assert refused is not None and "limit" in str(refused), refused


def test_async_client(network, key) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from fusion_prime.signer.client import AsyncWalletClient

    async def main() -> None:
        client = AsyncWalletClient(f"127.0.0.1:{network['ports']['node3']}", network["certs"]["node3"], ALICE,
                                   server_name="node3")
        try:
            keys = await client.list_keys()
            assert any(k.key_id == key for k in keys)
            info = await client.public_key(key, "m/2")
            assert info.bitcoin_address.startswith("bcrt1q")
        finally:
            await client.close()

    asyncio.run(main())
