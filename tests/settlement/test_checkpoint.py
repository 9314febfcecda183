"""Settlement checkpoints: canonical encodings, the EIP-712 digest against eth-account's own
implementation, strict signatures, chains of checkpoints, the JSON file and its CLI, and the
registry contract on anvil (deploy, publish two cycles, refuse a fork)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_account import Account
from eth_account.messages import encode_typed_data
from fp_guards import HANG_GUARD
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from fusion_prime.bridge.chains.evm.adapter import connect
from fusion_prime.bridge.chains.evm.anvil import AnvilProcess
from fusion_prime.bridge.deploy import deploy_bridge
from fusion_prime.bridge.settlement.checkpoint import (
    ASSET_TOTAL_TYPE,
    CHECKPOINT_TYPE,
    GENESIS_ROOT,
    ChainError,
    Checkpoint,
    CheckpointError,
    CheckpointFile,
    SignedCheckpoint,
    check_proof,
    check_totals,
    next_checkpoint,
    read_checkpoint_file,
    sign_checkpoint,
    verify_chain,
    verify_checkpoint_file,
    verify_signed_checkpoint,
    write_checkpoint_file,
)
from fusion_prime.bridge.settlement.merkle import EMPTY_ROOT, MAX_AMOUNT, AccountLeaf, build_tree
from fusion_prime.bridge.settlement.publish import (
    deploy_registry,
    publish_checkpoint,
    published_root,
    registry_contract,
    registry_state,
)
from fusion_prime.protocol.curve import Q

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CHAIN_ID = 31337
EIP712_DOMAIN = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
CHECKPOINT_TYPES = {"Checkpoint": [
    {"name": "cycle", "type": "uint64"},
    {"name": "prevRoot", "type": "bytes32"},
    {"name": "root", "type": "bytes32"},
    {"name": "batchSeq", "type": "uint64"},
    {"name": "batchHash", "type": "bytes32"},
    {"name": "totalsHash", "type": "bytes32"},
    {"name": "timeMs", "type": "uint64"},
]}
ASSET_TOTAL_FIELDS = [{"name": "asset", "type": "string"}, {"name": "total", "type": "uint256"},
                      {"name": "pending", "type": "uint256"}]

GROUP = PrivateKey(bytes.fromhex("11" * 32))
GROUP_ACCOUNT = Account.from_key(GROUP.secret)
OTHER = PrivateKey(bytes.fromhex("22" * 32))


def signer_of(key: PrivateKey) -> Callable[[bytes], tuple[int, int, int]]:
    """A local key as the threshold network's DigestSigner (digest -> r, s, recovery id)."""
    def sign(digest: bytes) -> tuple[int, int, int]:
        raw = key.sign_recoverable(digest, hasher=None)
        return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    return sign


def party(n: int) -> bytes:
    return b"\x03" + n.to_bytes(32, "big")


def ledger(shift: int = 0) -> list[AccountLeaf]:
    return [AccountLeaf(party(i), a, 1000 * i + shift, i) for i in range(1, 6) for a in ("BTC", "ETH")]


def checkpoint(cycle: int = 1, prev: bytes = GENESIS_ROOT, root: bytes = b"\x11" * 32, **kw: Any) -> Checkpoint:
    fields: dict[str, Any] = {"cycle": cycle, "prev_root": prev, "root": root, "batch_seq": 10 * cycle,
                              "batch_hash": bytes([cycle % 256]) * 32,
                              "totals": (("BTC", 15000, 7), ("ETH", 15000, 0)), "time_ms": 1_750_000_000_000 + cycle}
    fields.update(kw)
    return Checkpoint(**fields)


def eth_digest(c: Checkpoint, chain_id: int = CHAIN_ID, registry: str = REGISTRY) -> bytes:
    """The digest as eth-account computes it from the typed data (independent of checkpoint.py)."""
    signable = encode_typed_data(full_message={
        "types": {"EIP712Domain": EIP712_DOMAIN, **CHECKPOINT_TYPES}, "primaryType": "Checkpoint",
        "domain": {"name": "FusionPrimeSettlement", "version": "1", "chainId": chain_id,
                   "verifyingContract": registry},
        "message": {"cycle": c.cycle, "prevRoot": c.prev_root, "root": c.root, "batchSeq": c.batch_seq,
                    "batchHash": c.batch_hash, "totalsHash": c.totals_hash(), "timeMs": c.time_ms}})
    return bytes(Web3.keccak(b"\x19\x01" + signable.header + signable.body))


def eth_totals_hash_wrapped(totals: tuple) -> bytes:
    """hashStruct(Totals{AssetTotal[] totals}) by eth-account: keccak(typehash ‖ encodeData(array))."""
    signable = encode_typed_data(full_message={
        "types": {"EIP712Domain": EIP712_DOMAIN, "Totals": [{"name": "totals", "type": "AssetTotal[]"}],
                  "AssetTotal": ASSET_TOTAL_FIELDS},
        "primaryType": "Totals", "domain": {"name": "x", "version": "1", "chainId": 1, "verifyingContract": REGISTRY},
        "message": {"totals": [{"asset": a, "total": t, "pending": p} for a, t, p in totals]}})
    return bytes(signable.body)


# ------------------------------------------------------------------------------- the checkpoint


def test_type_strings_are_the_contracts() -> None:
    src = (ROOT / "contracts" / "src" / "SettlementCheckpoints.sol").read_text()
    assert f'"{CHECKPOINT_TYPE}"' in src
    assert ASSET_TOTAL_TYPE in src
    assert GENESIS_ROOT == EMPTY_ROOT != bytes(32)


@pytest.mark.parametrize("kw", [
    {"cycle": 0}, {"cycle": 2**64}, {"cycle": True}, {"prev": bytes(32)}, {"root": bytes(32)}, {"root": b"\x01" * 31},
    {"batch_seq": -1}, {"batch_hash": b"x"}, {"time_ms": 2**64},
    {"totals": (("ETH", 1, 0), ("BTC", 1, 0))}, {"totals": (("BTC", 1, 0), ("BTC", 2, 0))},
    {"totals": (("BTC", 2**128, 0),)}, {"totals": (("BTC", 1, -1),)}, {"totals": (("B C", 1, 0),)},
    {"totals": (("BTC", 1),)}, {"totals": "BTC"},
])
def test_checkpoint_validation(kw: dict[str, Any]) -> None:
    with pytest.raises(CheckpointError):
        checkpoint(**kw)


def test_lists_become_tuples_and_zero_batch_hash_is_allowed() -> None:
    c = checkpoint(totals=[["BTC", 1, 0]], batch_hash=bytes(32), batch_seq=0)
    assert c.totals == (("BTC", 1, 0),)
    assert c == checkpoint(totals=(("BTC", 1, 0),), batch_hash=bytes(32), batch_seq=0)


checkpoints = st.builds(
    Checkpoint,
    cycle=st.integers(1, 2**64 - 1),
    prev_root=st.binary(min_size=32, max_size=32).filter(any),
    root=st.binary(min_size=32, max_size=32).filter(any),
    batch_seq=st.integers(0, 2**64 - 1),
    batch_hash=st.binary(min_size=32, max_size=32),
    totals=st.dictionaries(st.from_regex(r"[A-Za-z0-9.-]{1,16}", fullmatch=True),
                           st.tuples(st.integers(0, MAX_AMOUNT), st.integers(0, MAX_AMOUNT)), max_size=5)
    .map(lambda d: tuple((a, t, p) for a, (t, p) in sorted(d.items()))),
    time_ms=st.integers(0, 2**64 - 1),
)


@settings(max_examples=150, deadline=None)
@given(checkpoints, st.data())
def test_encodings_round_trip_and_nothing_else_decodes_to_it(c: Checkpoint, data: st.DataObject) -> None:
    raw = c.to_bytes()
    assert Checkpoint.from_bytes(raw) == c
    assert Checkpoint.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    # one changed byte never decodes to the same checkpoint; trailing bytes never decode
    i = data.draw(st.integers(0, len(raw) - 1))
    flipped = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1:]
    try:
        assert Checkpoint.from_bytes(flipped) != c
    except CheckpointError:
        pass
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(raw + b"\x00")


@settings(max_examples=40, deadline=None)
@given(checkpoints, st.integers(1, 2**64), st.binary(min_size=20, max_size=20).filter(any))
def test_digest_is_eth_accounts(c: Checkpoint, chain_id: int, registry_raw: bytes) -> None:
    registry = Web3.to_checksum_address(registry_raw)
    assert c.digest(chain_id, registry) == eth_digest(c, chain_id, registry)
    wrapper_typehash = Web3.keccak(text="Totals(AssetTotal[] totals)" + ASSET_TOTAL_TYPE)
    assert eth_totals_hash_wrapped(c.totals) == Web3.keccak(wrapper_typehash + c.totals_hash())


def test_digest_binds_every_field_and_the_domain() -> None:
    c = checkpoint()
    base = c.digest(CHAIN_ID, REGISTRY)
    variants = [replace(c, cycle=2), replace(c, prev_root=b"\x22" * 32), replace(c, root=b"\x33" * 32),
                replace(c, batch_seq=11), replace(c, batch_hash=b"\x44" * 32), replace(c, time_ms=c.time_ms + 1),
                replace(c, totals=(("BTC", 15000, 8), ("ETH", 15000, 0))), replace(c, totals=(("BTC", 15000, 7),))]
    assert len({v.digest(CHAIN_ID, REGISTRY) for v in variants} | {base}) == len(variants) + 1
    assert c.digest(CHAIN_ID + 1, REGISTRY) != base
    assert c.digest(CHAIN_ID, "0x" + "ab" * 20) != base


def test_from_bytes_refuses_non_canonical_input() -> None:
    c = checkpoint()
    raw = c.to_bytes()
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(raw[:-1])
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(b"\x01" + raw[1:])  # the version field as bytes, not uint
    # version 2
    from fusion_prime.protocol.encoding import Encoder
    with pytest.raises(CheckpointError, match="version"):
        Checkpoint.from_bytes(Encoder().uint(2).finish() + raw[len(Encoder().uint(1).finish()):])
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes("not bytes")  # type: ignore[arg-type]


def test_from_dict_is_strict() -> None:
    good = checkpoint(root=b"\xab" * 32).to_dict()
    for bad in ({**good, "extra": 1}, {k: v for k, v in good.items() if k != "root"},
                {**good, "root": good["root"].upper().replace("0X", "0x")}, {**good, "root": good["root"][2:]},
                {**good, "cycle": 1.0}, {**good, "cycle": "1"},
                {**good, "totals": [{"asset": "BTC", "total": 15000, "pending": "7"}]},
                {**good, "totals": [{"asset": "BTC", "total": "015000", "pending": "7"}]},
                {**good, "totals": [{"asset": "BTC", "total": "15000", "pending": "7", "x": 1}]}):
        with pytest.raises(CheckpointError):
            Checkpoint.from_dict(bad)


# ---------------------------------------------------------------------------------- signatures


def test_signature_by_coincurve_recovers_to_its_address_in_eth_account() -> None:
    c = checkpoint()
    signed = sign_checkpoint(c, CHAIN_ID, REGISTRY.lower(), signer_of(GROUP))
    assert signed.registry == REGISTRY
    assert signed.signature[64] in (27, 28)
    assert int.from_bytes(signed.signature[32:64], "big") <= Q // 2
    assert signed.signer() == GROUP_ACCOUNT.address
    assert verify_signed_checkpoint(signed, GROUP_ACCOUNT.address)
    assert verify_signed_checkpoint(signed, GROUP_ACCOUNT.address.lower())
    signable = encode_typed_data(full_message={
        "types": {"EIP712Domain": EIP712_DOMAIN, **CHECKPOINT_TYPES}, "primaryType": "Checkpoint",
        "domain": {"name": "FusionPrimeSettlement", "version": "1", "chainId": CHAIN_ID, "verifyingContract": REGISTRY},
        "message": {"cycle": c.cycle, "prevRoot": c.prev_root, "root": c.root, "batchSeq": c.batch_seq,
                    "batchHash": c.batch_hash, "totalsHash": c.totals_hash(), "timeMs": c.time_ms}})
    assert Account.recover_message(signable, signature=signed.signature) == GROUP_ACCOUNT.address


def test_signature_by_eth_account_verifies_here() -> None:
    c = checkpoint()
    sig = bytes(Account.unsafe_sign_hash(eth_digest(c), GROUP.secret).signature)
    signed = SignedCheckpoint(c, sig, CHAIN_ID, REGISTRY)
    assert verify_signed_checkpoint(signed, GROUP_ACCOUNT.address)
    assert not verify_signed_checkpoint(signed, Account.from_key(OTHER.secret).address)
    # the same signature for another chain, registry or checkpoint is nobody's
    assert not verify_signed_checkpoint(replace(signed, chain_id=CHAIN_ID + 1), GROUP_ACCOUNT.address)
    assert not verify_signed_checkpoint(replace(signed, registry="0x" + "ab" * 20), GROUP_ACCOUNT.address)
    assert not verify_signed_checkpoint(replace(signed, checkpoint=replace(c, time_ms=0)), GROUP_ACCOUNT.address)
    assert not verify_signed_checkpoint(signed, "not an address")


def test_malleable_and_loose_signatures_are_refused() -> None:
    signed = sign_checkpoint(checkpoint(), CHAIN_ID, REGISTRY, signer_of(GROUP))
    r, s, v = signed.signature[:32], int.from_bytes(signed.signature[32:64], "big"), signed.signature[64]
    high = replace(signed, signature=r + (Q - s).to_bytes(32, "big") + bytes([55 - v]))  # the twin: 27 <-> 28
    assert not verify_signed_checkpoint(high, GROUP_ACCOUNT.address)
    with pytest.raises(CheckpointError, match="s not low"):
        high.signer()
    raw_v = replace(signed, signature=signed.signature[:64] + bytes([v - 27]))
    assert not verify_signed_checkpoint(raw_v, GROUP_ACCOUNT.address)
    with pytest.raises(CheckpointError):
        replace(signed, signature=signed.signature[:64])
    with pytest.raises(CheckpointError):
        replace(signed, registry="0x" + "00" * 20)
    with pytest.raises(CheckpointError):
        replace(signed, chain_id=0)


# --------------------------------------------------------------------------------------- chains


def chain_of(n: int, key: PrivateKey = GROUP) -> list[SignedCheckpoint]:
    out, prev = [], None
    for cycle in range(1, n + 1):
        tree = build_tree(ledger(cycle))
        c = next_checkpoint(prev, tree, batch_seq=5 * cycle, batch_hash=bytes([cycle]) * 32,
                            pending={"BTC": cycle, "SOL": 1}, time_ms=1000 * cycle)
        out.append(sign_checkpoint(c, CHAIN_ID, REGISTRY, signer_of(key)))
        prev = c
    return out


def test_next_checkpoint_follows_and_lists_every_asset() -> None:
    run = chain_of(2)
    c1, c2 = run[0].checkpoint, run[1].checkpoint
    assert (c1.cycle, c1.prev_root) == (1, GENESIS_ROOT)
    assert (c2.cycle, c2.prev_root) == (2, c1.root)
    tree = build_tree(ledger(2))
    assert c2.root == tree.root
    assert c2.totals == (("BTC", tree.totals["BTC"], 2), ("ETH", tree.totals["ETH"], 0), ("SOL", 0, 1))
    check_totals(c2, tree.entries)
    with pytest.raises(CheckpointError, match="batch_seq"):
        next_checkpoint(c2, tree, batch_seq=1, batch_hash=bytes(32), pending={}, time_ms=0)


def test_verify_chain_accepts_a_good_run_and_names_the_first_break() -> None:
    run = chain_of(4)
    verify_chain(run, GROUP_ACCOUNT.address)
    verify_chain(run[2:], GROUP_ACCOUNT.address)  # a run may start later
    verify_chain([], GROUP_ACCOUNT.address)

    with pytest.raises(ChainError, match=r"cycle 3 \(item 1\): cycle does not follow 1"):
        verify_chain([run[0], run[2]], GROUP_ACCOUNT.address)
    forged = sign_checkpoint(replace(run[2].checkpoint, prev_root=b"\x55" * 32), CHAIN_ID, REGISTRY, signer_of(GROUP))
    with pytest.raises(ChainError, match=r"cycle 3 .*prev_root 0x5555.* is not cycle 2's root"):
        verify_chain([run[0], run[1], forged, run[3]], GROUP_ACCOUNT.address)
    stranger = sign_checkpoint(run[1].checkpoint, CHAIN_ID, REGISTRY, signer_of(OTHER))
    with pytest.raises(ChainError, match=r"cycle 2 .*not signed by"):
        verify_chain([run[0], stranger], GROUP_ACCOUNT.address)
    with pytest.raises(ChainError, match="genesis"):
        verify_chain(run, GROUP_ACCOUNT.address, genesis=b"\x01" * 32)
    elsewhere = sign_checkpoint(run[1].checkpoint, CHAIN_ID + 1, REGISTRY, signer_of(GROUP))
    with pytest.raises(ChainError, match="chain"):
        verify_chain([run[0], elsewhere], GROUP_ACCOUNT.address)
    back = sign_checkpoint(replace(run[1].checkpoint, batch_seq=1), CHAIN_ID, REGISTRY, signer_of(GROUP))
    with pytest.raises(ChainError, match="goes back"):
        verify_chain([run[0], back], GROUP_ACCOUNT.address)
    other_batch = sign_checkpoint(replace(run[1].checkpoint, batch_seq=run[0].checkpoint.batch_seq),
                                  CHAIN_ID, REGISTRY, signer_of(GROUP))
    with pytest.raises(ChainError, match="another hash"):
        verify_chain([run[0], other_batch], GROUP_ACCOUNT.address)


def test_check_proof_ties_proofs_to_the_stated_totals() -> None:
    tree = build_tree(ledger())
    c = next_checkpoint(None, tree, batch_seq=1, batch_hash=bytes(32), pending={}, time_ms=0)
    proof = tree.proof(party(3), "ETH")
    check_proof(c, proof)
    lying = replace(c, totals=(("BTC", tree.totals["BTC"] - 1, 0), ("ETH", tree.totals["ETH"], 0)))
    with pytest.raises(CheckpointError, match="commits to"):
        check_proof(lying, proof)
    missing = replace(c, totals=(("ETH", tree.totals["ETH"], 0),))
    with pytest.raises(CheckpointError, match="not in the checkpoint's totals"):
        check_proof(missing, proof)
    phantom = replace(c, totals=(*c.totals, ("SOL", 5, 0)))
    with pytest.raises(CheckpointError, match="no account"):
        check_proof(phantom, proof)
    other_root = replace(c, root=build_tree(ledger(1)).root)
    with pytest.raises(CheckpointError, match="does not lead"):
        check_proof(other_root, proof)


# ------------------------------------------------------------------------------ files and CLI


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    run = chain_of(2)
    paths = {}
    for signed in run:
        tree = build_tree(ledger(signed.checkpoint.cycle))
        p = tmp_path / f"cycle-{signed.checkpoint.cycle}.json"
        write_checkpoint_file(p, signed, [tree.proof(party(2), "BTC"), tree.proof(party(4), "ETH")])
        paths[f"c{signed.checkpoint.cycle}"] = p
    return paths


def test_file_round_trip_and_strict_reading(files: dict[str, Path], tmp_path: Path) -> None:
    read = read_checkpoint_file(files["c2"])
    assert read.signed.checkpoint.cycle == 2 and len(read.proofs) == 2
    assert read.to_json() == files["c2"].read_text()
    verify_checkpoint_file(files["c2"], GROUP_ACCOUNT.address, prev=files["c1"])
    verify_checkpoint_file(files["c1"], GROUP_ACCOUNT.address)

    data = json.loads(files["c2"].read_text())
    assert data["domain"] == {"name": "FusionPrimeSettlement", "version": "1", "chainId": CHAIN_ID,
                              "verifyingContract": REGISTRY}
    cases = {
        "digest": {**data, "digest": "0x" + "00" * 32},
        "domain": {**data, "domain": {**data["domain"], "name": "Fusion Prime Settlement"}},
        "format": {**data, "format": "other"},
        "eip55": {**data, "domain": {**data["domain"], "verifyingContract": REGISTRY.lower()}},
        "proof": {**data, "proofs": [{"leaf": 1}]},
    }
    for name, bad in cases.items():
        with pytest.raises(CheckpointError):
            CheckpointFile.from_dict(bad)
        (tmp_path / f"{name}.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="non-integer"):
        CheckpointFile.from_json(files["c2"].read_text().replace('"chainId": 31337', '"chainId": 31337.0'))
    with pytest.raises(CheckpointError, match="duplicate"):
        CheckpointFile.from_json(files["c2"].read_text().replace("{", '{"format": "x", ', 1))
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint_file(tmp_path / "missing.json")


def test_writing_refuses_a_proof_that_fails(tmp_path: Path) -> None:
    signed = chain_of(1)[0]
    other_tree = build_tree(ledger(99))
    with pytest.raises(CheckpointError, match="does not lead"):
        write_checkpoint_file(tmp_path / "x.json", signed, [other_tree.proof(party(1), "BTC")])
    assert not (tmp_path / "x.json").exists()


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "fusion_prime.bridge.settlement.checkpoint", *map(str, args)],
                          capture_output=True, text=True, timeout=HANG_GUARD, env=env, check=False)


def test_cli_exit_codes(files: dict[str, Path], tmp_path: Path) -> None:
    signer = GROUP_ACCOUNT.address
    ok = run_cli("verify", files["c2"], "--signer", signer, "--prev", files["c1"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("valid: cycle 2 ") and ok.stdout.count("\n") == 1
    assert "2 balance proof(s)" in ok.stdout
    assert run_cli("verify", files["c1"], "--signer", signer.lower()).returncode == 0

    def invalid(*args: str | Path, reason: str) -> None:
        res = run_cli("verify", *args)
        assert res.returncode == 1, res.stdout + res.stderr
        assert res.stdout.startswith("invalid: ") and res.stdout.count("\n") == 1, res.stdout
        assert reason in res.stdout, res.stdout
        assert "Traceback" not in res.stderr

    other = Account.from_key(OTHER.secret).address
    invalid(files["c2"], "--signer", other, reason="not signed by")
    invalid(files["c1"], "--signer", signer, "--prev", files["c2"], reason="cycle does not follow")
    invalid(files["c2"], "--signer", signer, "--prev", files["c2"], reason="cycle does not follow")
    invalid(files["c1"], "--signer", signer, "--genesis", "0x" + "01" * 32, reason="genesis")
    invalid(tmp_path / "nope.json", "--signer", signer, reason="cannot read")
    invalid(files["c1"], "--signer", "0x1234", reason="--signer")

    # a tampered balance inside an included proof
    data = json.loads(files["c2"].read_text())
    data["proofs"][0]["leaf"]["balance"] = str(int(data["proofs"][0]["leaf"]["balance"]) + 1)
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    invalid(tampered, "--signer", signer, reason="does not lead to the checkpoint's root")
    # a changed root: the signature no longer matches (the digest is recomputed, the stated one refused)
    data = json.loads(files["c2"].read_text())
    data["checkpoint"]["root"] = "0x" + "ab" * 32
    tampered.write_text(json.dumps(data))
    invalid(tampered, "--signer", signer, reason="digest")
    tampered.write_text("{not json")
    invalid(tampered, "--signer", signer, reason="not valid JSON")


# ------------------------------------------------------------------------------------ on anvil


@pytest.fixture(scope="module")
def w3() -> Iterator[Web3]:
    anvil = AnvilProcess(chain_id=CHAIN_ID).start(timeout=HANG_GUARD)
    try:
        yield connect(anvil.url)
    finally:
        anvil.stop()


def error_selector(abi: list[dict[str, Any]], name: str) -> str:
    (item,) = [i for i in abi if i.get("type") == "error" and i["name"] == name]
    return Web3.to_hex(Web3.keccak(text=f"{name}({','.join(i['type'] for i in item['inputs'])})"))[:10]


def test_registry_on_anvil_publishes_two_cycles_and_refuses_a_fork(w3: Web3) -> None:
    deployer, relayer, guardian = w3.eth.accounts[0], w3.eth.accounts[1], w3.eth.accounts[3]

    def no_signing(digest: bytes) -> tuple[int, int, int]:
        raise AssertionError("no asset is configured, nothing to sign")

    deployment = deploy_bridge(w3, sender=deployer, signer=GROUP_ACCOUNT.address, guardian=guardian, assets=[],
                               sign_digest=no_signing, devnet=True)
    address = deploy_registry(w3, deployment.gateway, GENESIS_ROOT, deployer)
    registry = registry_contract(w3, address)
    assert registry_state(w3, address) == (0, GENESIS_ROOT)
    assert registry.functions.GATEWAY().call() == deployment.gateway
    domain = registry.functions.eip712Domain().call()
    assert (domain[1], domain[2], domain[3], domain[4]) == ("FusionPrimeSettlement", "1", CHAIN_ID, address)

    trees = [build_tree(ledger(1)), build_tree(ledger(2))]
    c1 = next_checkpoint(None, trees[0], batch_seq=3, batch_hash=b"\x03" * 32, pending={"BTC": 2}, time_ms=1000)
    c2 = next_checkpoint(c1, trees[1], batch_seq=7, batch_hash=b"\x07" * 32, pending={}, time_ms=2000)
    s1 = sign_checkpoint(c1, CHAIN_ID, address, signer_of(GROUP))
    s2 = sign_checkpoint(c2, CHAIN_ID, address, signer_of(GROUP))
    on_chain = bytes(registry.functions.checkpointDigest(c1.as_tuple()).call())
    assert on_chain == s1.digest == eth_digest(c1, registry=address)

    # cycle 1, relayed by an endpoint-held account
    tx1 = publish_checkpoint(w3, address, s1, relayer)
    receipt = w3.eth.wait_for_transaction_receipt(tx1, timeout=HANG_GUARD)
    assert receipt["status"] == 1
    (event,) = registry.events.CheckpointPublished().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["cycle"] == 1
    assert event["args"]["root"] == c1.root
    assert event["args"]["prevRoot"] == GENESIS_ROOT
    assert event["args"]["batchHash"] == c1.batch_hash
    assert event["args"]["totalsHash"] == c1.totals_hash()

    # cycle 2, relayed by a locally held key (signed and sent raw)
    local = Account.create()
    w3.provider.make_request("anvil_setBalance", [local.address, hex(10**18)])  # type: ignore[arg-type]
    tx2 = publish_checkpoint(w3, address, s2, local)
    assert w3.eth.wait_for_transaction_receipt(tx2, timeout=HANG_GUARD)["status"] == 1
    assert registry_state(w3, address) == (2, c2.root)
    assert published_root(w3, address, 1) == c1.root
    assert published_root(w3, address, 3) is None

    # a third that does not chain onto cycle 2 is refused before anything is sent
    fork = replace(next_checkpoint(c2, trees[0], batch_seq=9, batch_hash=b"\x09" * 32, pending={}, time_ms=3000),
                   prev_root=c1.root)
    s3 = sign_checkpoint(fork, CHAIN_ID, address, signer_of(GROUP))
    nonce = w3.eth.get_transaction_count(relayer)
    with pytest.raises(ContractLogicError) as info:
        publish_checkpoint(w3, address, s3, relayer)
    assert str(info.value.data).startswith(error_selector(registry.abi, "PrevRootMismatch"))
    assert w3.eth.get_transaction_count(relayer) == nonce
    # the same replayed, or signed by another key, or for another registry
    with pytest.raises(ContractLogicError) as info:
        publish_checkpoint(w3, address, s2, relayer)
    assert str(info.value.data).startswith(error_selector(registry.abi, "CycleNotNext"))
    good3 = next_checkpoint(c2, trees[0], batch_seq=9, batch_hash=b"\x09" * 32, pending={}, time_ms=3000)
    with pytest.raises(ContractLogicError) as info:
        publish_checkpoint(w3, address, sign_checkpoint(good3, CHAIN_ID, address, signer_of(OTHER)), relayer)
    assert str(info.value.data).startswith(error_selector(registry.abi, "UnauthorizedSigner"))
    with pytest.raises(CheckpointError, match="registry"):
        publish_checkpoint(w3, address, sign_checkpoint(good3, CHAIN_ID, REGISTRY, signer_of(GROUP)), relayer)
    with pytest.raises(CheckpointError, match="chain"):
        publish_checkpoint(w3, address, sign_checkpoint(good3, CHAIN_ID + 1, address, signer_of(GROUP)), relayer)
    # and the right one goes through
    tx3 = publish_checkpoint(w3, address, sign_checkpoint(good3, CHAIN_ID, address, signer_of(GROUP)), relayer)
    assert w3.eth.wait_for_transaction_receipt(tx3, timeout=HANG_GUARD)["status"] == 1
    assert registry_state(w3, address) == (3, good3.root)


def test_registry_refuses_a_zero_genesis(w3: Web3) -> None:
    with pytest.raises(ValueError, match="genesis_root"):
        deploy_registry(w3, "0x" + "11" * 20, bytes(32), w3.eth.accounts[0])


def test_the_coordinator_relays_every_signed_cycle_in_order_after_a_failed_relay_and_a_restart(
        w3: Web3, tmp_path: Path) -> None:
    """The registry takes only the next cycle, so a signed cycle never relayed would stop every
    later one for good. Here a relayer without gas fails, another relayer publishes cycle 1
    meanwhile, the node restarts: the coordinator's backlog notes cycle 1 as someone else's,
    relays 2 and 3 in order, and never sends cycle 3 before 2 is on-chain."""
    from fusion_prime.bridge.config import SettlementSettings
    from fusion_prime.bridge.db import open_database
    from fusion_prime.bridge.settlement.publish import CheckpointRelay
    from fusion_prime.bridge.settlement.runtime import ON_CHAIN, SettlementRuntime
    from fusion_prime.protocol.identity import PartyIdentity

    deployer, outsider, guardian = w3.eth.accounts[0], w3.eth.accounts[2], w3.eth.accounts[3]
    deployment = deploy_bridge(w3, sender=deployer, signer=GROUP_ACCOUNT.address, guardian=guardian, assets=[],
                               sign_digest=signer_of(GROUP), devnet=True)
    address = deploy_registry(w3, deployment.gateway, GENESIS_ROOT, deployer)
    trees = [build_tree(ledger(i)) for i in range(1, 4)]
    chain: list[Checkpoint] = []
    for i, tree in enumerate(trees):
        chain.append(next_checkpoint(chain[-1] if chain else None, tree, batch_seq=3 * (i + 1),
                                     batch_hash=bytes([i + 1]) * 32, pending={}, time_ms=1000 * (i + 1)))
    signed = [sign_checkpoint(c, CHAIN_ID, address, signer_of(GROUP)) for c in chain]
    relayer = Account.create()  # holds no ether yet: every relay fails
    db = open_database(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")

    def runtime() -> SettlementRuntime:
        """node1, the coordinator, over ``db`` (a start or a restart): nothing in memory survives."""
        settings = SettlementSettings(coordinator="node1")
        return SettlementRuntime(settings, db=db, node_id="node1", identity=PartyIdentity.generate(),
                                 node_keys={}, peers=[], assets=["BTC", "ETH"], sign=None, key_id=bytes(16),
                                 signer_path=(), signer_address=GROUP_ACCOUNT.address, chain_id=CHAIN_ID,
                                 registry=address, relay=CheckpointRelay(w3, address, relayer))

    try:
        node = runtime()
        for c, s in zip(chain[:2], signed[:2], strict=True):  # cycles 1 and 2 signed, 3 still unsigned
            node.store.put_checkpoint(c.cycle, c.root, c.to_bytes())
            node.store.set_signature(c.cycle, s.signature)
        node.store.put_checkpoint(chain[2].cycle, chain[2].root, chain[2].to_bytes())

        assert node._publish_backlog() is True  # behind: the relay failed (no gas)
        assert registry_state(w3, address) == (0, GENESIS_ROOT)
        assert [r["published_tx"] for r in node.store.checkpoints()] == [None, None, None]

        # another relayer publishes cycle 1 while this node is down; the node comes back with gas
        outsider_tx = publish_checkpoint(w3, address, signed[0], outsider)
        assert w3.eth.wait_for_transaction_receipt(outsider_tx, timeout=HANG_GUARD)["status"] == 1
        w3.provider.make_request("anvil_setBalance", [relayer.address, hex(10**18)])  # type: ignore[arg-type]
        node = runtime()
        assert node._publish_backlog() is True
        rows = {r["cycle"]: r for r in node.store.checkpoints()}
        assert rows[1]["published_tx"] == outsider_tx  # noted, not sent again: the relayer's first tx is cycle 2
        assert rows[1]["published_tx"] != ON_CHAIN
        assert w3.eth.get_transaction_count(relayer.address) == 1
        assert registry_state(w3, address) == (2, chain[1].root)
        assert rows[3]["published_tx"] is None  # unsigned: not relayed

        node.store.set_signature(3, signed[2].signature)
        node = runtime()
        node._publish_backlog()
        assert registry_state(w3, address) == (3, chain[2].root)
        assert w3.eth.get_transaction_count(relayer.address) == 2
        node._publish_backlog()  # cycle 2's own relay noted from the registry; nothing is sent again
        assert w3.eth.get_transaction_count(relayer.address) == 2
        assert node._publish_backlog() is False
        assert all(r["published_tx"] for r in node.store.checkpoints())
        assert published_root(w3, address, 2) == chain[1].root

        # the registry holds another root for cycle 4 than this node signed (only the group key
        # can do that: its history forked): a critical event, once, and nothing relayed over it
        ours = next_checkpoint(chain[2], build_tree(ledger(7)), batch_seq=12, batch_hash=b"\x04" * 32, pending={},
                               time_ms=4000)
        theirs = next_checkpoint(chain[2], build_tree(ledger(8)), batch_seq=12, batch_hash=b"\x04" * 32,
                                 pending={}, time_ms=4000)
        tx4 = publish_checkpoint(w3, address, sign_checkpoint(theirs, CHAIN_ID, address, signer_of(GROUP)), outsider)
        assert w3.eth.wait_for_transaction_receipt(tx4, timeout=HANG_GUARD)["status"] == 1
        node.store.put_checkpoint(4, ours.root, ours.to_bytes())
        node.store.set_signature(4, sign_checkpoint(ours, CHAIN_ID, address, signer_of(GROUP)).signature)
        for _ in range(3):
            assert node._publish_backlog() is True  # never marked published: it is not what the chain holds
        assert w3.eth.get_transaction_count(relayer.address) == 2
        conflicts = [e for e in _events(db) if e[0] == "settlement.registry_conflict"]
        assert len(conflicts) == 1 and conflicts[0][1]["cycle"] == 4
        assert conflicts[0][1]["registry"] == theirs.root.hex() and conflicts[0][1]["ours"] == ours.root.hex()
    finally:
        db.close()


def test_a_dropped_relay_beaten_by_another_relayer_records_the_transaction_that_published(
        w3: Web3, tmp_path: Path) -> None:
    """The coordinator's own relay of a cycle leaves the mempool unmined (dropped: fee spike, a
    restarted endpoint) and another relayer publishes the cycle: the row names the other
    relayer's transaction, never our hash that no block holds; a relay that did land is named by
    its own hash (its receipt, no log scan)."""
    from fusion_prime.bridge.config import SettlementSettings
    from fusion_prime.bridge.db import open_database
    from fusion_prime.bridge.settlement.publish import CheckpointRelay
    from fusion_prime.bridge.settlement.runtime import SettlementRuntime
    from fusion_prime.protocol.identity import PartyIdentity

    deployer, outsider, guardian = w3.eth.accounts[0], w3.eth.accounts[2], w3.eth.accounts[3]
    deployment = deploy_bridge(w3, sender=deployer, signer=GROUP_ACCOUNT.address, guardian=guardian, assets=[],
                               sign_digest=signer_of(GROUP), devnet=True)
    address = deploy_registry(w3, deployment.gateway, GENESIS_ROOT, deployer)
    chain: list[Checkpoint] = []
    for i in range(2):
        chain.append(next_checkpoint(chain[-1] if chain else None, build_tree(ledger(i + 1)), batch_seq=3 * (i + 1),
                                     batch_hash=bytes([i + 1]) * 32, pending={}, time_ms=1000 * (i + 1)))
    signed = [sign_checkpoint(c, CHAIN_ID, address, signer_of(GROUP)) for c in chain]
    relayer = Account.create()
    w3.provider.make_request("anvil_setBalance", [relayer.address, hex(10**18)])  # type: ignore[arg-type]
    db = open_database(f"sqlite:///{tmp_path / 'bridge.sqlite3'}")
    node = SettlementRuntime(SettlementSettings(coordinator="node1"), db=db, node_id="node1",
                             identity=PartyIdentity.generate(), node_keys={}, peers=[], assets=["BTC", "ETH"],
                             sign=None, key_id=bytes(16), signer_path=(), signer_address=GROUP_ACCOUNT.address,
                             chain_id=CHAIN_ID, registry=address, relay=CheckpointRelay(w3, address, relayer))
    try:
        for c, s in zip(chain, signed, strict=True):
            node.store.put_checkpoint(c.cycle, c.root, c.to_bytes())
            node.store.set_signature(c.cycle, s.signature)
        w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]
        try:
            assert node._publish_backlog() is True
            ours = node._relayed[1][1][-1]
            w3.provider.make_request("anvil_dropTransaction", [ours])  # type: ignore[arg-type]
            theirs = publish_checkpoint(w3, address, signed[0], outsider)
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        finally:
            w3.provider.make_request("evm_setAutomine", [True])  # type: ignore[arg-type]
        assert w3.eth.get_transaction_receipt(theirs)["status"] == 1  # type: ignore[arg-type]
        assert node.relay is not None and not node.relay.published_by(ours, 1)
        assert node._publish_backlog() is True  # cycle 1 noted, cycle 2 relayed by us
        rows = {r["cycle"]: r for r in node.store.checkpoints()}
        assert rows[1]["published_tx"] == theirs != ours
        mine = node._relayed[2][1][-1]
        assert w3.eth.wait_for_transaction_receipt(mine, timeout=HANG_GUARD)["status"] == 1  # type: ignore[arg-type]
        assert node._publish_backlog() is False
        rows = {r["cycle"]: r for r in node.store.checkpoints()}
        assert rows[2]["published_tx"] == mine
        assert node.relay.published_by(mine, 2) and not node.relay.published_by(mine, 1)
    finally:
        db.close()


def _events(db: Any) -> list[tuple[str, dict[str, Any]]]:
    import sqlalchemy as sa

    from fusion_prime.bridge import db as bdb

    t = bdb.bridge_events
    with db.read() as r:
        rows = r.conn.execute(sa.select(t.c.event, t.c.detail).order_by(t.c.seq)).all()
    return [(str(e), json.loads(d)) for e, d in rows]
