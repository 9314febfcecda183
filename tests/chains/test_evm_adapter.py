"""The EVM adapter against a real anvil: logs, confirmations, reorg detection, remote signing."""

from __future__ import annotations

from coincurve import PrivateKey
from eth_utils import keccak, to_checksum_address
from fp_guards import HANG_GUARD

from fusion_prime.bridge.chains.evm.adapter import (
    LogFollower,
    RemoteSignerAccount,
    connect,
    estimate_eip1559_fees,
)

TOPIC = keccak(b"Deposit(bytes)")
# Runtime: copy calldata to memory and LOG1(topic, calldata); constructor returns that runtime.
# CALLDATASIZE PUSH1 0 PUSH1 0 CALLDATACOPY; PUSH32 topic; CALLDATASIZE PUSH1 0 LOG1; STOP
RUNTIME = bytes.fromhex("366000600037") + b"\x7f" + TOPIC + bytes.fromhex("366000a100")
# PUSH1 len DUP1 PUSH1 11 PUSH1 0 CODECOPY PUSH1 0 RETURN, followed by the runtime (init is 11 bytes)
INIT = bytes.fromhex("60") + bytes([len(RUNTIME)]) + bytes.fromhex("80600b6000396000f3") + RUNTIME
ANVIL_KEY0 = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")


def make_signer(secret: bytes):
    key = PrivateKey(secret)

    def sign(digest: bytes) -> tuple[int, int, int]:
        sig = key.sign_recoverable(digest, hasher=None)
        return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]

    address = to_checksum_address(keccak(key.public_key.format(compressed=False)[1:])[-20:])
    return address, sign


def test_remote_signing_logs_and_reorg(anvil) -> None:
    w3 = connect(anvil.url)
    address, sign = make_signer(ANVIL_KEY0)
    account = RemoteSignerAccount(w3, address, sign)
    assert account.chain_id == 31337
    fees = estimate_eip1559_fees(w3)
    assert fees.max_fee_per_gas >= fees.base_fee + fees.max_priority_fee_per_gas

    deploy = account.send(None, data=INIT, gas=200_000)
    contract = w3.eth.wait_for_transaction_receipt(deploy)["contractAddress"]
    assert w3.eth.get_code(contract) == RUNTIME

    follower = LogFollower(w3, addresses=[contract], topics=[["0x" + TOPIC.hex()]], confirmations=2,
                           start_block=w3.eth.block_number)
    follower.poll()
    kept = account.send(contract, data=b"kept", gas=100_000)
    w3.eth.wait_for_transaction_receipt(kept)
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]
    doomed = [account.send(contract, data=f"doomed-{i}".encode(), gas=100_000) for i in range(2)]
    for h in doomed:
        w3.eth.wait_for_transaction_receipt(h)
    first = follower.poll()
    assert [e.data for e in first.new_logs] == [b"kept", b"doomed-0", b"doomed-1"]
    assert [e.data for e in first.confirmed] == [b"kept", b"doomed-0"]  # depth 2: the head is unconfirmed

    # Reorg: revert to the snapshot and mine a different, longer branch.
    assert w3.provider.make_request("evm_revert", [snapshot])["result"] is True
    account.resync_nonce()
    other = account.send(contract, data=b"other-branch", gas=100_000)
    w3.eth.wait_for_transaction_receipt(other)
    w3.provider.make_request("anvil_mine", [hex(3)])
    update = follower.poll()
    assert update.reorgs and update.reorgs[0].depth == 2
    assert sorted(e.data for e in update.orphaned) == [b"doomed-0", b"doomed-1"]
    assert [e.data for e in update.orphaned_confirmed] == [b"doomed-0"]
    assert [e.data for e in update.new_logs] == [b"other-branch"]
    assert [e.data for e in update.confirmed] == [b"other-branch"]
    assert follower.poll().orphaned == []


def test_signature_from_wrong_key_is_refused(anvil) -> None:
    w3 = connect(anvil.url)
    address, _ = make_signer(ANVIL_KEY0)
    _, wrong = make_signer(b"\x07" * 32)
    account = RemoteSignerAccount(w3, address, wrong)
    before = w3.eth.get_transaction_count(address)
    try:
        account.send(address, value=1, gas=21_000)
    except ValueError as exc:
        assert "recovers to" in str(exc)
    else:
        raise AssertionError("a foreign signature was accepted")
    assert w3.eth.get_transaction_count(address) == before


def test_devnet_entry_point_starts_and_stops() -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "fusion_prime.bridge.chains.devnet"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert [c["chain_id"] for c in info["evm"]] == [31337, 31338]
        from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC

        btc = BitcoinRPC(info["bitcoin"]["url"], info["bitcoin"]["user"], info["bitcoin"]["password"])
        assert btc.getblockchaininfo()["chain"] == "regtest"
        assert {connect(c["url"]).eth.chain_id for c in info["evm"]} == {31337, 31338}
    finally:
        proc.terminate()
        assert proc.wait(timeout=HANG_GUARD) == 0
