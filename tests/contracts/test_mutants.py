"""Mutation check: each defect issue 13 found, re-introduced into a copy of the sources, must make a test fail.

Every mutant is a single textual edit of contracts/src (a `<=` turned into `<`, a check dropped, a delay zeroed).
It is applied to a temporary copy holding only the sources and tests it needs (solc-js is slow, so the fewer files the
faster), and the named forge tests must then fail — and fail in the test that is meant to catch it, not merely fail
to compile. Two mutants run at a time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from fp_contracts import ROOT

FORGE = ROOT / "node_modules" / ".bin" / "forge"
CONTRACTS = ROOT / "contracts"

ESCROW_FILES = ("src/SettlementEscrow.sol", "src/lib", "test/base", "test/mocks", "test/EscrowBase.sol",
                "test/SettlementEscrow.t.sol")
GATEWAY_FILES = ("src/Gateway.sol", "src/WrappedAsset.sol", "src/lib", "test/base", "test/GatewayBase.sol")


@dataclass(frozen=True)
class Mutant:
    name: str
    source: str  # relative to contracts/
    old: str
    new: str
    files: tuple[str, ...]  # what the copy needs
    match_contract: str
    killers: tuple[str, ...]  # at least one of these tests must fail


MUTANTS = [
    Mutant("escrow: refund allowed in the deadline second (<= -> <)", "src/SettlementEscrow.sol",
           "if (block.timestamp <= t.deadline) revert TradeNotExpired",
           "if (block.timestamp < t.deadline) revert TradeNotExpired",
           ESCROW_FILES, "SettlementEscrowTest", ("test_refundAtTheDeadlineSecondReverts",)),
    Mutant("escrow: abort pays a leg already refunded", "src/SettlementEscrow.sol",
           "} else if (st.fundedB && !st.releasedB) {", "} else if (st.fundedB) {",
           ESCROW_FILES, "SettlementEscrowTest", ("test_abortAfterARefundPaysNothingTwice",)),
    Mutant("escrow: no maximum deadline", "src/SettlementEscrow.sol",
           "if (t.deadline > block.timestamp + MAX_TRADE_DURATION) {", "if (false) {",
           ESCROW_FILES, "SettlementEscrowTest", ("test_deadlineIsBounded",)),
    Mutant("gateway: queued actions without a delay", "src/Gateway.sol",
           "eta = block.timestamp + delay;", "eta = block.timestamp;",
           (*GATEWAY_FILES, "test/GatewaySafeguards.t.sol"), "GatewayRotationTest|GatewayGuardianTest",
           ("test_rotationWaitsTheDelay", "test_guardianChangeWaitsTheLongDelayAndCanBeVetoed")),
    Mutant("gateway: a vetoed action still executes", "src/Gateway.sol",
           "if (p.status != ActionStatus.Queued) revert ActionNotQueued(actionId, p.status);\n"
           "        if (block.timestamp < p.eta)",
           "if (p.status == ActionStatus.None) revert ActionNotQueued(actionId, p.status);\n"
           "        if (block.timestamp < p.eta)",
           (*GATEWAY_FILES, "test/GatewaySafeguards.t.sol"), "GatewayRotationTest|GatewayLargeMintTest",
           ("test_guardianVetoesARotation", "test_vetoedLargeMintNeverExecutes")),
    Mutant("gateway: a looser cap applies at once", "src/Gateway.sol",
           "c.mintCap <= a.mintCap", "true",
           (*GATEWAY_FILES, "test/GatewaySafeguards.t.sol"), "GatewayGuardianTest|GatewayConfigTest",
           ("test_raisingOnlyTheCapIsQueued", "testFuzz_onlyTighteningAppliesAtOnce")),
    Mutant("gateway: a refund does not mark its burn", "src/Gateway.sol",
           "burnRecord[r.burnNonce] = bytes32(uint256(burnRecord[r.burnNonce]) | REFUNDED_BIT);", "",
           (*GATEWAY_FILES, "test/GatewaySafeguards.t.sol"), "GatewayRefundTest",
           ("test_refundReturnsExactlyTheBurnOnce",)),
    Mutant("gateway: orders of an old epoch accepted (A -> B -> A revives)", "src/Gateway.sol",
           "if (orderEpoch == epoch) return key == _signer;", "if (orderEpoch <= epoch) return key == _signer;",
           (*GATEWAY_FILES, "test/GatewaySafeguards.t.sol"), "GatewayRotationTest",
           ("test_rotatingBackDoesNotReviveOldOrders",)),
    Mutant("gateway: rotation to a contract (the gateway, the token)", "src/Gateway.sol",
           "newSigner == address(this) || newSigner.code.length != 0 || ", "",
           (*GATEWAY_FILES, "test/GatewaySafeguards.t.sol"), "GatewayRotationTest",
           ("test_rotationRefusesAddressesThatCannotSign",)),
    Mutant("gateway: any source chain encoding accepted", "src/Gateway.sol",
           "if (order.sourceChain != a.sourceChain) revert", "if (false) revert",
           (*GATEWAY_FILES, "test/Gateway.t.sol"), "GatewayMintTest",
           ("test_depositOnlyUnderTheAssetsCanonicalChainKey",)),
    Mutant("gateway: reconfiguring resets the mint limit", "src/Gateway.sol",
           "a.mintUsed = uint128(_bucketLevel(a.mintUsed, a.mintUpdatedAt, a.mintCap, length));", "a.mintUsed = 0;",
           (*GATEWAY_FILES, "test/Gateway.t.sol"), "GatewayMintTest",
           ("test_reconfiguringDoesNotResetTheLimit",)),
    Mutant("gateway: no burn rate limit", "src/Gateway.sol",
           "if (amount > remaining) revert BurnCapExceeded", "if (false) revert BurnCapExceeded",
           (*GATEWAY_FILES, "test/Gateway.t.sol"), "GatewayBurnTest", ("test_burnRateLimit",)),
    Mutant("gateway: 20 zero bytes accepted as an EVM destination", "src/Gateway.sol",
           "uint160(bytes20(d)) > 0xffff", "uint160(bytes20(d)) >= 0",
           (*GATEWAY_FILES, "test/Gateway.t.sol"), "GatewayBurnTest", ("test_evmDestinationsAreChecked",)),
    Mutant("gateway: a no-op unpause uses the nonce", "src/Gateway.sol",
           "if (!paused) revert NotPaused();", "",
           (*GATEWAY_FILES, "test/Gateway.t.sol"), "GatewayMintTest",
           ("test_noOpUnpauseIsRefusedWithoutUsingTheNonce",)),
    Mutant("gateway: no supply ceiling", "src/Gateway.sol",
           "if (supplyAfter > a.supplyCeiling) revert", "if (false) revert",
           (*GATEWAY_FILES, "test/Gateway.t.sol"), "GatewayMintTest",
           ("test_supplyCeilingHoldsAcrossWindows",)),
    Mutant("gateway: a large mint is not queued", "src/Gateway.sol",
           "if (order.amount > a.largeMintThreshold) {", "if (false) {",
           (*GATEWAY_FILES, "test/GatewaySafeguards.t.sol"), "GatewayLargeMintTest",
           ("test_largeMintWaitsThenExecutes", "test_vetoedLargeMintNeverExecutes")),
    Mutant("gateway: a refund need not match its burn's record", "src/Gateway.sol",
           "if (_withoutRefundBit(record) != _burnCommitment(r.asset, r.burner, r.amount)) revert BurnMismatch"
           "(r.burnNonce);", "",
           (*GATEWAY_FILES, "test/GatewaySafeguards.t.sol"), "GatewayRefundTest",
           ("test_refundMustMatchTheRecordedBurn",)),
    Mutant("gateway: a pause signature spent by an unpause pauses again", "src/Gateway.sol",
           "if (unpauseCount_ != unpauseCount) revert StalePause(unpauseCount_, unpauseCount);", "",
           (*GATEWAY_FILES, "test/Gateway.t.sol"), "GatewayMintTest",
           ("test_groupKeyPausesDirectlyOrBySignature",)),
    Mutant("escrow: withdrawEthTo pays the caller, not the named address", "src/SettlementEscrow.sol",
           "        _withdrawEth(to);\n    }", "        _withdrawEth(payable(msg.sender));\n    }",
           ESCROW_FILES, "SettlementEscrowTest", ("test_withdrawEthToAnotherAddress",)),
]


def _run_mutant(m: Mutant, workdir: Path) -> tuple[Mutant, int, str]:
    project = workdir / "contracts"
    for rel in (*m.files, "foundry.toml", "tools"):
        src = CONTRACTS / rel
        dst = project / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    (workdir / "node_modules").symlink_to(ROOT / "node_modules")  # the wrapper must cope with a symlink
    target = project / m.source
    text = target.read_text()
    assert text.count(m.old) == 1, f"{m.name}: the mutated text must occur exactly once in {m.source}"
    target.write_text(text.replace(m.old, m.new))
    env = {**os.environ, "FOUNDRY_OFFLINE": "true", "NO_COLOR": "1"}
    result = subprocess.run(
        [str(FORGE), "test", "--offline", "--mc", m.match_contract, "--fuzz-runs", "64"],
        cwd=project, capture_output=True, text=True, timeout=600, env=env, check=False,
    )
    return m, result.returncode, result.stdout + result.stderr


@pytest.mark.skipif(not FORGE.exists(), reason="forge is part of the toolchain (`make setup`)")
def test_every_mutant_is_killed(tmp_path: Path, record_property) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda im: _run_mutant(im[1], tmp_path / f"m{im[0]}"), enumerate(MUTANTS)))
    survivors = []
    for m, code, output in results:
        assert "Compiler run successful" in output, f"{m.name}: did not compile\n{output[-3000:]}"
        # "[FAIL: <reason, may contain brackets>] test_name(args) (gas: …)"
        failed = re.findall(r"^\[FAIL.*\]\s+((?:test|invariant)\w*)\(", output, flags=re.MULTILINE)
        killed_by = sorted(set(failed) & set(m.killers))
        print(f"mutant {m.name!r}: killed by {', '.join(sorted(set(failed))) or 'NOTHING'}")
        record_property(f"mutant {m.name}", ", ".join(sorted(set(failed))) or "survived")
        if code == 0 or not killed_by:
            survivors.append(f"{m.name} (failed: {failed or 'none'})")
    assert not survivors, "mutants survived:\n" + "\n".join(survivors)


def test_mutated_texts_exist_in_the_sources() -> None:
    """Cheap guard, runs without forge: a refactor that moves a mutated line must update the mutant."""
    for m in MUTANTS:
        assert (CONTRACTS / m.source).read_text().count(m.old) == 1, m.name
