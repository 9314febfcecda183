// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {GatewayBase} from "./GatewayBase.sol";
import {Gateway} from "../src/Gateway.sol";
import {WrappedAsset} from "../src/WrappedAsset.sol";

/// @notice Signer rotation: delayed, vetoable, proof of possession, epochs.
contract GatewayRotationTest is GatewayBase {
    bytes32 internal rotationId;
    uint256 internal rotationNonce;
    uint256 internal rotationDeadline;
    uint256 internal proposedAt;

    function setUp() public override {
        super.setUp();
        proposedAt = block.timestamp;
        (rotationId, rotationNonce, rotationDeadline) = proposeRotation(GROUP_PK, NEXT_GROUP_PK);
    }

    function executeIt() internal {
        gateway.executeRotation(nextGroup, rotationNonce, rotationDeadline);
    }

    function test_rotationWaitsTheDelay() public {
        vm.warp(proposedAt + ADMIN_DELAY - 1);
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionNotReady.selector, rotationId, proposedAt + ADMIN_DELAY));
        executeIt();
        assertEq(gateway.activeSigner(), group, "old key still active");
        vm.warp(proposedAt + ADMIN_DELAY);
        vm.prank(relayer); // anyone executes
        executeIt();
        (address active, uint32 e, address previous, uint256 until) = gateway.signerSchedule();
        assertEq(active, nextGroup, "new key active");
        assertEq(uint256(e), 1, "epoch 1");
        assertEq(previous, group, "previous");
        assertEq(until, block.timestamp + RETENTION, "retention from execution");
    }

    function test_guardianVetoesARotation() public {
        vm.prank(guardian);
        gateway.veto(rotationId);
        vm.warp(proposedAt + ADMIN_DELAY);
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionNotQueued.selector, rotationId, Gateway.ActionStatus.Vetoed));
        executeIt();
        assertEq(gateway.activeSigner(), group, "unchanged");
    }

    function test_onlyTheGuardianVetoes() public {
        vm.prank(group);
        vm.expectRevert(abi.encodeWithSelector(Gateway.NotGuardian.selector, group));
        gateway.veto(rotationId);
    }

    /// Issue 13, defect 1: the thief (holding the group key) can neither cancel nor displace the
    /// operators' rotation; its own proposal sits beside it and the guardian vetoes it. Executing the
    /// operators' rotation voids everything else the old key queued.
    function test_thiefCannotDisplaceTheOperatorsRotation() public {
        uint256 thiefPk = 0x7415F;
        (bytes32 thiefId, uint256 tn, uint256 td) = proposeRotation(GROUP_PK, thiefPk);
        // and it queues a looser cap while at it
        Gateway.AssetConfig memory c = btcConfig();
        c.mintCap = type(uint128).max;
        (bytes32 capId,, uint256 cn, uint256 cd) = proposeConfig(GROUP_PK, address(btc), c);
        vm.prank(guardian);
        gateway.veto(thiefId);
        vm.warp(proposedAt + ADMIN_DELAY);
        executeIt();
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionNotQueued.selector, thiefId, Gateway.ActionStatus.Vetoed));
        gateway.executeRotation(vm.addr(thiefPk), tn, td);
        // The cap raise was not vetoed, but it belongs to the old epoch: void.
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionStale.selector, capId));
        gateway.executeConfigureAsset(address(btc), c, cn, cd);
        assertEq(gateway.activeSigner(), nextGroup, "operators' key");
    }

    function test_rotationRefusesAddressesThatCannotSign() public {
        address[5] memory bad = [address(gateway), address(btc), group, guardian, address(0)];
        for (uint256 i = 0; i < bad.length; i++) {
            uint256 n = gateway.adminNonce();
            uint256 d = block.timestamp + 1 hours;
            bytes memory sig = adminSig(GROUP_PK, rotateHash(bad[i], n, d));
            if (bad[i] == address(0)) vm.expectRevert(Gateway.ZeroAddress.selector);
            else vm.expectRevert(abi.encodeWithSelector(Gateway.InvalidSigner.selector, bad[i]));
            gateway.rotateSigner(bad[i], n, d, sig, sig);
        }
        // A key that did not co-sign is refused too (it might be a typo, or nobody's key).
        uint256 n2 = gateway.adminNonce();
        uint256 d2 = block.timestamp + 1 hours;
        address stranger = vm.addr(0x5757);
        bytes memory groupSig = adminSig(GROUP_PK, rotateHash(stranger, n2, d2));
        vm.expectRevert(abi.encodeWithSelector(Gateway.NewSignerDidNotSign.selector, stranger));
        gateway.rotateSigner(stranger, n2, d2, groupSig, groupSig);
    }

    function test_oldKeyWorksDuringRetentionNotAfter() public {
        Gateway.MintOrder memory during = order(keccak256("in-flight"), 0, 1e8);
        during.deadline = block.timestamp + 30 days;
        Gateway.MintOrder memory afterwards = order(keccak256("late"), 0, 1e8);
        afterwards.deadline = block.timestamp + 30 days;
        vm.warp(proposedAt + ADMIN_DELAY);
        executeIt();
        uint256 activated = block.timestamp;

        vm.warp(activated + RETENTION - 1);
        gateway.mint(during, signOrder(GROUP_PK, during));
        assertEq(btc.balanceOf(alice), 1e8, "old key minted during retention");

        vm.warp(activated + RETENTION);
        bytes memory sig = signOrder(GROUP_PK, afterwards);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, group));
        gateway.mint(afterwards, sig);
        // the new key must sign it for the new epoch
        afterwards.signerEpoch = 1;
        gateway.mint(afterwards, signOrder(NEXT_GROUP_PK, afterwards));
    }

    function test_newKeyAdministersAtOnceOldKeyNot() public {
        vm.warp(proposedAt + ADMIN_DELAY);
        executeIt();
        uint256 n = gateway.adminNonce();
        uint256 d = block.timestamp + 1 hours;
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, group));
        gateway.pauseWithSignature(0, d, pauseSig(GROUP_PK, 0, d));
        gateway.pauseWithSignature(0, d, pauseSig(NEXT_GROUP_PK, 0, d));
        assertTrue(gateway.paused(), "new key paused");
        assertEq(gateway.adminNonce(), n, "no nonce for a pause");
    }

    /// Issue 13, defect 6: A -> B -> A must not revive A's old, unexecuted orders.
    function test_rotatingBackDoesNotReviveOldOrders() public {
        Gateway.MintOrder memory old = order(keccak256("signed-in-epoch-0"), 0, 1e8);
        old.deadline = block.timestamp + 365 days;
        bytes memory oldSig = signOrder(GROUP_PK, old);
        vm.warp(proposedAt + ADMIN_DELAY);
        executeIt(); // epoch 1: B
        vm.warp(block.timestamp + RETENTION);
        rotate(NEXT_GROUP_PK, GROUP_PK); // epoch 2: A again
        vm.warp(block.timestamp + RETENTION);
        assertEq(gateway.activeSigner(), group, "A is back");
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, group));
        gateway.mint(old, oldSig);
        old.signerEpoch = 2;
        gateway.mint(old, signOrder(GROUP_PK, old));
    }

    /// Orders name their epoch: a signature by the right key for the wrong epoch is refused, and
    /// during retention the previous key signs only the previous epoch.
    function testFuzz_epochBinding(uint32 claimed, uint256 dt) public {
        vm.warp(proposedAt + ADMIN_DELAY);
        executeIt();
        dt = bound(dt, 0, 2 * RETENTION);
        vm.warp(block.timestamp + dt);
        bool inRetention = dt < RETENTION;
        assertEq(gateway.acceptsMintSigner(nextGroup, claimed), claimed == 1, "new key: epoch 1 only");
        assertEq(gateway.acceptsMintSigner(group, claimed), claimed == 0 && inRetention, "old key: epoch 0 in retention");
    }
}

/// @notice Changing the guardian, and recovering from a lost guardian key.
contract GatewayGuardianTest is GatewayBase {
    function test_guardianChangeWaitsTheLongDelayAndCanBeVetoed() public {
        address next = makeAddr("next-guardian");
        (bytes32 id, uint256 n, uint256 d) = proposeGuardian(GROUP_PK, next);
        vm.warp(block.timestamp + ADMIN_DELAY);
        vm.expectPartialRevert(Gateway.ActionNotReady.selector);
        gateway.executeSetGuardian(next, n, d);
        vm.prank(guardian);
        gateway.veto(id);
        vm.warp(block.timestamp + GUARDIAN_DELAY);
        vm.expectPartialRevert(Gateway.ActionNotQueued.selector);
        gateway.executeSetGuardian(next, n, d);
        assertEq(gateway.guardian(), guardian, "unchanged");
    }

    /// The guardian lost its key: nobody vetoes, and the operators' replacement executes after
    /// GUARDIAN_DELAY. Meanwhile the bridge keeps working (a lost guardian is lost protection,
    /// not an outage).
    function test_lostGuardianKeyIsReplacedAfterTheDelay() public {
        address next = makeAddr("next-guardian");
        (, uint256 n, uint256 d) = proposeGuardian(GROUP_PK, next);
        mintAs(GROUP_PK, order(keccak256("still works"), 0, 1e8));
        vm.warp(block.timestamp + GUARDIAN_DELAY);
        vm.prank(relayer);
        gateway.executeSetGuardian(next, n, d);
        assertEq(gateway.guardian(), next, "replaced");
        vm.prank(next);
        gateway.pause();
        assertTrue(gateway.paused(), "new guardian pauses");
    }

    function test_guardianCannotBeTheSigner() public {
        uint256 n = gateway.adminNonce();
        uint256 d = block.timestamp + 1 hours;
        bytes memory sig = adminSig(GROUP_PK, guardianHash(group, n, d));
        vm.expectRevert(abi.encodeWithSelector(Gateway.InvalidGuardian.selector, group));
        gateway.setGuardian(group, n, d, sig);
    }

    /// Issue 13, defect 1, the whole attack: in one block the thief (holding the group key) tries
    /// to remove the guardian, unpause, raise the cap to 2^128-1 and mint 1,000,000 fpBTC. Nothing
    /// of it lands before the guardian can react; the guardian vetoes it all and pauses again.
    function test_stolenGroupKeyCannotUndoTheSafeguards() public {
        vm.prank(guardian);
        gateway.pause();
        (bytes32 g,,) = proposeGuardian(GROUP_PK, address(0));
        (bytes32 u, uint256 un, uint256 ud) = proposeUnpause(GROUP_PK);
        Gateway.AssetConfig memory c = btcConfig();
        c.mintCap = type(uint128).max;
        c.supplyCeiling = type(uint128).max;
        c.largeMintThreshold = type(uint128).max;
        (bytes32 k, bool applied,,) = proposeConfig(GROUP_PK, address(btc), c);
        assertTrue(!applied, "raising the cap is queued");
        Gateway.MintOrder memory big = order(keccak256("fake"), 0, 1_000_000e8);
        bytes memory bigSig = signOrder(GROUP_PK, big);
        vm.expectRevert(Gateway.GatewayPaused.selector);
        gateway.mint(big, bigSig);
        // The guardian reacts within the delay.
        vm.startPrank(guardian);
        gateway.veto(g);
        gateway.veto(u);
        gateway.veto(k);
        gateway.pause(); // still works: still the guardian, and idempotent
        vm.stopPrank();
        vm.warp(block.timestamp + GUARDIAN_DELAY);
        vm.expectPartialRevert(Gateway.ActionNotQueued.selector);
        gateway.executeUnpause(un, ud);
        assertTrue(gateway.paused(), "still paused");
        assertEq(gateway.guardian(), guardian, "still the guardian");
        assertEq(btc.totalSupply(), 0, "nothing minted");
    }

    /// Without the pause, the thief gets at most the rate limit: one cap now, refilling at CAP per
    /// WINDOW, and large orders wait for the guardian's veto.
    function test_stolenGroupKeyIsBoundedByTheLimits() public {
        Gateway.AssetConfig memory c = btcConfig();
        c.largeMintThreshold = 10e8;
        configure(GROUP_PK, address(btc), c);
        for (uint32 i = 0; i < 10; i++) mintAs(GROUP_PK, order(keccak256("thief"), i, 10e8));
        Gateway.MintOrder memory more = order(keccak256("thief"), 10, 10e8);
        bytes memory sig = signOrder(GROUP_PK, more);
        vm.expectPartialRevert(Gateway.WindowCapExceeded.selector);
        gateway.mint(more, sig);
        Gateway.MintOrder memory big = order(keccak256("thief-big"), 0, 50e8);
        bytes32 id = mintAs(GROUP_PK, big);
        vm.prank(guardian);
        gateway.veto(id);
        vm.prank(guardian);
        gateway.pause();
        assertEq(btc.totalSupply(), CAP, "at most one cap before the guardian reacted");
    }
}

/// @notice Mints and refunds above the large-mint threshold wait for a guardian veto.
contract GatewayLargeMintTest is GatewayBase {
    uint256 internal constant THRESHOLD = 10e8;

    function setUp() public override {
        super.setUp();
        Gateway.AssetConfig memory c = btcConfig();
        c.largeMintThreshold = THRESHOLD;
        configure(GROUP_PK, address(btc), c);
    }

    function test_largeMintWaitsThenExecutes() public {
        mintAs(GROUP_PK, order(keccak256("small"), 0, THRESHOLD)); // at the threshold: immediate
        assertEq(btc.totalSupply(), THRESHOLD, "small minted");
        Gateway.MintOrder memory o = order(keccak256("large"), 0, THRESHOLD + 1);
        uint256 queuedAt = block.timestamp;
        bytes32 id = mintAs(GROUP_PK, o);
        assertEq(btc.totalSupply(), THRESHOLD, "large only queued");
        (Gateway.ActionStatus st, uint256 eta,,) = gateway.actionState(id);
        assertTrue(st == Gateway.ActionStatus.Queued, "queued");
        assertEq(eta, queuedAt + LARGE_MINT_DELAY, "eta");
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionNotReady.selector, id, eta));
        gateway.executeMint(o);
        // resubmitting the same signed order does not queue it twice
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionAlreadyExists.selector, id, Gateway.ActionStatus.Queued));
        gateway.mint(o, sig);
        vm.warp(eta);
        vm.prank(relayer);
        gateway.executeMint(o);
        assertEq(btc.balanceOf(alice), 2 * THRESHOLD + 1, "executed");
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionNotQueued.selector, id, Gateway.ActionStatus.Executed));
        gateway.executeMint(o);
    }

    function test_vetoedLargeMintNeverExecutes() public {
        Gateway.MintOrder memory o = order(keccak256("large"), 0, 50e8);
        o.deadline = block.timestamp + 30 days;
        bytes32 id = mintAs(GROUP_PK, o);
        vm.prank(guardian);
        gateway.veto(id);
        vm.warp(block.timestamp + LARGE_MINT_DELAY);
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionNotQueued.selector, id, Gateway.ActionStatus.Vetoed));
        gateway.executeMint(o);
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionAlreadyExists.selector, id, Gateway.ActionStatus.Vetoed));
        gateway.mint(o, sig);
        assertEq(btc.totalSupply(), 0, "nothing minted");
    }

    /// Two orders for one deposit may both be queued; only one ever mints.
    function test_queuedOrdersForOneDepositMintOnce() public {
        Gateway.MintOrder memory a = order(keccak256("dep"), 0, 20e8);
        Gateway.MintOrder memory b = order(keccak256("dep"), 0, 20e8);
        b.nonce += 1;
        mintAs(GROUP_PK, a);
        mintAs(GROUP_PK, b);
        vm.warp(block.timestamp + LARGE_MINT_DELAY);
        gateway.executeMint(a);
        vm.expectPartialRevert(Gateway.DepositAlreadyMinted.selector);
        gateway.executeMint(b);
        assertEq(btc.totalSupply(), 20e8, "one mint");
    }

    function test_queuedMintOfThePreviousEpochExpiresWithRetention() public {
        Gateway.MintOrder memory o = order(keccak256("large"), 0, 50e8);
        mintAs(GROUP_PK, o);
        Gateway.MintOrder memory o2 = order(keccak256("large2"), 0, 20e8);
        mintAs(GROUP_PK, o2);
        rotate(GROUP_PK, NEXT_GROUP_PK); // waits ADMIN_DELAY > LARGE_MINT_DELAY
        gateway.executeMint(o); // within retention
        vm.warp(block.timestamp + RETENTION);
        vm.expectPartialRevert(Gateway.ActionStale.selector);
        gateway.executeMint(o2);
        assertEq(btc.totalSupply(), 50e8, "only the first");
    }

    function test_executeMintWhilePausedReverts() public {
        Gateway.MintOrder memory o = order(keccak256("large"), 0, 50e8);
        mintAs(GROUP_PK, o);
        vm.prank(guardian);
        gateway.pause();
        vm.warp(block.timestamp + LARGE_MINT_DELAY);
        vm.expectRevert(Gateway.GatewayPaused.selector);
        gateway.executeMint(o);
    }
}

/// @notice Refunds are tied to recorded burns.
contract GatewayRefundTest is GatewayBase {
    bytes internal constant DEST = bytes("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq");

    function setUp() public override {
        super.setUp();
        mintAs(GROUP_PK, order(keccak256("funding"), 0, 5e8));
        vm.prank(alice);
        gateway.burn(address(btc), 1e8, DEST); // burn 1
    }

    function refundAs(uint256 pk, Gateway.RefundBurn memory r) internal returns (bytes32) {
        bytes memory sig = signRefund(pk, r);
        vm.prank(relayer);
        return gateway.refund(r, sig);
    }

    function test_refundReturnsExactlyTheBurnOnce() public {
        (bool recorded, bool refunded) = gateway.burnStatus(1, address(btc), alice, 1e8);
        assertTrue(recorded && !refunded, "recorded");
        Gateway.RefundBurn memory r = refundOf(1, address(btc), alice, 1e8);
        bytes32 digest = digestOf(refundStructHash(r));
        vm.expectEmit(true, true, true, true, address(gateway));
        emit Gateway.Refunded(gateway.burnIdOf(1), address(btc), alice, 1, 1e8, digest);
        refundAs(GROUP_PK, r);
        assertEq(btc.balanceOf(alice), 5e8, "refunded");
        (recorded, refunded) = gateway.burnStatus(1, address(btc), alice, 1e8);
        assertTrue(recorded && refunded, "marked refunded");
        // Issue 13, defect 2: a second refund of the same burn — however worded — fails.
        Gateway.RefundBurn memory again = refundOf(1, address(btc), alice, 1e8);
        again.deadline += 1;
        bytes memory sig = signRefund(GROUP_PK, again);
        vm.expectRevert(abi.encodeWithSelector(Gateway.BurnAlreadyRefunded.selector, 1));
        gateway.refund(again, sig);
    }

    function test_refundMustMatchTheRecordedBurn() public {
        Gateway.RefundBurn[4] memory bad = [
            refundOf(1, address(btc), alice, 3e8), // more than was burned
            refundOf(1, address(btc), makeAddr("bob"), 1e8), // to someone else
            refundOf(1, address(0xbeef), alice, 1e8), // another asset
            refundOf(1, address(btc), alice, 1e8 - 1) // less
        ];
        for (uint256 i = 0; i < bad.length; i++) {
            bytes memory sig = signRefund(GROUP_PK, bad[i]);
            vm.expectRevert(abi.encodeWithSelector(Gateway.BurnMismatch.selector, 1));
            gateway.refund(bad[i], sig);
        }
        Gateway.RefundBurn memory never = refundOf(7, address(btc), alice, 3e8); // a burn that never existed
        bytes memory s7 = signRefund(GROUP_PK, never);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnknownBurn.selector, 7));
        gateway.refund(never, s7);
        assertEq(btc.totalSupply(), 4e8, "nothing re-minted");
    }

    function test_refundNeedsTheGroupKeyOfItsEpoch() public {
        Gateway.RefundBurn memory r = refundOf(1, address(btc), alice, 1e8);
        bytes memory sig = signRefund(0xBAD, r);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, vm.addr(0xBAD)));
        gateway.refund(r, sig);
        r.signerEpoch = 1;
        sig = signRefund(GROUP_PK, r);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, group));
        gateway.refund(r, sig);
    }

    /// Refunds are supply increases: they count against the mint rate limit and the ceiling, so a
    /// thief cannot re-mint every burn ever paid out.
    function test_refundsCountAgainstTheMintLimit() public {
        mintAs(GROUP_PK, order(keccak256("fill"), 0, CAP - 5e8));
        Gateway.RefundBurn memory r = refundOf(1, address(btc), alice, 1e8);
        bytes memory sig = signRefund(GROUP_PK, r);
        vm.expectRevert(abi.encodeWithSelector(Gateway.WindowCapExceeded.selector, address(btc), 1e8, 0));
        gateway.refund(r, sig);
    }

    function test_largeRefundWaitsForTheVeto() public {
        Gateway.AssetConfig memory c = btcConfig();
        c.largeMintThreshold = 0.5e8;
        configure(GROUP_PK, address(btc), c);
        Gateway.RefundBurn memory r = refundOf(1, address(btc), alice, 1e8);
        bytes32 id = refundAs(GROUP_PK, r);
        assertEq(btc.balanceOf(alice), 4e8, "queued, not refunded");
        vm.warp(block.timestamp + LARGE_MINT_DELAY);
        gateway.executeRefund(r);
        assertEq(btc.balanceOf(alice), 5e8, "refunded after the delay");
        (Gateway.ActionStatus st,,,) = gateway.actionState(id);
        assertTrue(st == Gateway.ActionStatus.Executed, "executed");
    }

    function test_burnRecordIsTheCommitment() public view {
        bytes32 expected = keccak256(abi.encode(address(btc), alice, uint256(1e8)));
        expected = bytes32(uint256(expected) & ~uint256(1));
        assertEq(gateway.burnRecord(1), expected, "record");
    }
}

/// @notice Configuration: tightening applies at once, loosening waits with a veto.
contract GatewayConfigTest is GatewayBase {
    function test_newAssetWaitsAndCanBeVetoed() public {
        WrappedAsset eth = new WrappedAsset("Fusion Prime ETH", "fpETH", 18, address(gateway));
        (bytes32 id, bool applied, uint256 n, uint256 d) = proposeConfig(GROUP_PK, address(eth), ethConfig());
        assertTrue(!applied, "a new asset is queued");
        vm.prank(guardian);
        gateway.veto(id);
        vm.warp(block.timestamp + ADMIN_DELAY);
        Gateway.AssetConfig memory c = ethConfig();
        vm.expectPartialRevert(Gateway.ActionNotQueued.selector);
        gateway.executeConfigureAsset(address(eth), c, n, d);
        (,,,, uint256 length,,,) = gateway.assetConfig(address(eth));
        assertEq(length, 0, "not configured");
    }

    /// The thief's first move in issue 13 — raise the cap — waits for the guardian.
    function test_raisingOnlyTheCapIsQueued() public {
        Gateway.AssetConfig memory c = btcConfig();
        c.mintCap = type(uint128).max;
        (bytes32 id, bool applied,,) = proposeConfig(GROUP_PK, address(btc), c);
        assertTrue(!applied, "queued");
        (,, uint256 mintCap,,,,,) = gateway.assetConfig(address(btc));
        assertEq(mintCap, CAP, "unchanged until executed");
        (Gateway.ActionStatus st, uint256 eta,,) = gateway.actionState(id);
        assertTrue(st == Gateway.ActionStatus.Queued, "in the queue");
        assertEq(eta, block.timestamp + ADMIN_DELAY, "eta");
    }

    /// Each field loosened alone is queued; each tightened alone applies at once.
    function testFuzz_onlyTighteningAppliesAtOnce(uint8 field, bool loosen) public {
        Gateway.AssetConfig memory c = btcConfig();
        field = uint8(bound(field, 0, 5));
        if (field == 0) c.mintCap = loosen ? CAP + 1 : CAP - 1;
        else if (field == 1) c.burnCap = loosen ? BURN_CAP + 1 : BURN_CAP - 1;
        else if (field == 2) c.supplyCeiling = loosen ? CEILING + 1 : CEILING - 1;
        else if (field == 3) c.largeMintThreshold = loosen ? CAP + 1 : CAP - 1;
        else if (field == 4) c.minBurn = loosen ? MIN_BURN - 1 : MIN_BURN + 1;
        else c.windowLength = loosen ? WINDOW - 1 : WINDOW + 1;
        (, bool applied,,) = proposeConfig(GROUP_PK, address(btc), c);
        assertEq(applied, !loosen, "applied iff tightening");
    }

    /// A tightening applied later voids a looser configuration queued earlier, so the queue can never
    /// undo a cut made since.
    function test_tighteningVoidsQueuedLoosening() public {
        Gateway.AssetConfig memory up = btcConfig();
        up.mintCap = 2 * CAP;
        (bytes32 id,, uint256 n, uint256 d) = proposeConfig(GROUP_PK, address(btc), up);
        Gateway.AssetConfig memory down = btcConfig();
        down.mintCap = CAP / 2;
        configure(GROUP_PK, address(btc), down);
        vm.warp(block.timestamp + ADMIN_DELAY);
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionStale.selector, id));
        gateway.executeConfigureAsset(address(btc), up, n, d);
        (,, uint256 mintCap,,,,,) = gateway.assetConfig(address(btc));
        assertEq(mintCap, CAP / 2, "the cut stands");
    }

    function test_constructorRefusesUnsafeParameters() public {
        vm.expectRevert(Gateway.InvalidDelay.selector);
        new Gateway(group, guardian, 0, GUARDIAN_DELAY, LARGE_MINT_DELAY, RETENTION);
        vm.expectRevert(Gateway.InvalidDelay.selector);
        new Gateway(group, guardian, ADMIN_DELAY, ADMIN_DELAY - 1, LARGE_MINT_DELAY, RETENTION);
        vm.expectRevert(Gateway.InvalidDelay.selector);
        new Gateway(group, guardian, ADMIN_DELAY, GUARDIAN_DELAY, RETENTION + 1, RETENTION);
        vm.expectRevert(abi.encodeWithSelector(Gateway.InvalidGuardian.selector, group));
        new Gateway(group, group, ADMIN_DELAY, GUARDIAN_DELAY, LARGE_MINT_DELAY, RETENTION);
        vm.expectRevert(abi.encodeWithSelector(Gateway.InvalidSigner.selector, address(btc)));
        new Gateway(address(btc), guardian, ADMIN_DELAY, GUARDIAN_DELAY, LARGE_MINT_DELAY, RETENTION);
    }
}
