// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {EscrowBase} from "./EscrowBase.sol";
import {SettlementEscrow} from "../src/SettlementEscrow.sol";
import {StrictECDSA} from "../src/lib/StrictECDSA.sol";
import {MockERC20} from "./mocks/MockERC20.sol";
import {DeskWallet, FeeOnTransferToken, ReentrantToken} from "./mocks/EscrowMocks.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

contract SettlementEscrowTest is EscrowBase {
    uint256 internal constant A_PK = 0xA;
    uint256 internal constant B_PK = 0xB;

    SettlementEscrow internal escrow;
    MockERC20 internal usdc;
    MockERC20 internal wbtc;
    address internal partyA;
    address internal partyB;

    function setUp() public {
        vm.warp(1_750_000_000);
        escrow = new SettlementEscrow();
        usdc = new MockERC20("USD Coin", "USDC");
        wbtc = new MockERC20("Wrapped BTC", "WBTC");
        partyA = vm.addr(A_PK);
        partyB = vm.addr(B_PK);
    }

    // A sells 2 WBTC to B for 130,000 USDC.
    function defaultTrade() internal view returns (SettlementEscrow.Trade memory) {
        return SettlementEscrow.Trade({
            partyA: partyA,
            assetA: address(wbtc),
            amountA: 2e8,
            partyB: partyB,
            assetB: address(usdc),
            amountB: 130_000e6,
            deadline: block.timestamp + 1 days,
            salt: 42
        });
    }

    function openTrade(SettlementEscrow.Trade memory t) internal returns (bytes32) {
        bytes32 d = tradeDigest(escrow, t);
        return escrow.open(t, signPacked(A_PK, d), signPacked(B_PK, d));
    }

    function fundLeg(SettlementEscrow.Trade memory t, bool legA) internal {
        address party = legA ? t.partyA : t.partyB;
        address asset = legA ? t.assetA : t.assetB;
        uint256 amount = legA ? t.amountA : t.amountB;
        if (asset == address(0)) {
            vm.deal(party, amount);
            vm.prank(party);
            escrow.fund{value: amount}(t);
        } else {
            MockERC20(asset).mint(party, amount);
            vm.startPrank(party);
            MockERC20(asset).approve(address(escrow), amount);
            escrow.fund(t);
            vm.stopPrank();
        }
    }

    function status(bytes32 id) internal view returns (SettlementEscrow.Status s) {
        (s,,,,) = escrow.trades(id);
    }

    // ---- agreement ----

    function test_tradeIdIsTheEip712Digest() public view {
        SettlementEscrow.Trade memory t = defaultTrade();
        assertEq(escrow.domainSeparator(), escrowDomain(escrow), "domain");
        assertEq(escrow.hashTrade(t), tradeHash(t), "struct hash");
        assertEq(escrow.tradeId(t), tradeDigest(escrow, t), "trade id");
        assertEq(escrow.cancelDigest(t), cancelDigestOf(escrow, t), "cancel digest (nested struct)");
    }

    function test_openNeedsBothPartiesSignatures() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 d = tradeDigest(escrow, t);
        bytes memory sigA = signPacked(A_PK, d);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.InvalidSignature.selector, partyB));
        escrow.open(t, sigA, sigA);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.InvalidSignature.selector, partyA));
        escrow.open(t, signPacked(0xC, d), signPacked(B_PK, d));
        // A high-S twin of a valid signature is refused.
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(B_PK, d);
        bytes32 highS = bytes32(SECP256K1_N - uint256(s));
        vm.expectRevert(abi.encodeWithSelector(StrictECDSA.SignatureHighS.selector, highS));
        escrow.open(t, sigA, abi.encodePacked(r, highS, v == 27 ? uint8(28) : uint8(27)));

        bytes32 id = escrow.open(t, sigA, signPacked(B_PK, d));
        assertTrue(status(id) == SettlementEscrow.Status.Open, "open");
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.WrongStatus.selector, id, SettlementEscrow.Status.Open));
        escrow.open(t, sigA, signPacked(B_PK, d));
    }

    function test_openRejectsMalformedTrades() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        t.partyB = partyA;
        vm.expectRevert(SettlementEscrow.InvalidTrade.selector);
        escrow.open(t, "", "");
        t = defaultTrade();
        t.amountA = 0;
        vm.expectRevert(SettlementEscrow.InvalidTrade.selector);
        escrow.open(t, "", "");
        t = defaultTrade();
        t.assetB = address(0x1234); // no code: not a token
        vm.expectRevert(SettlementEscrow.InvalidTrade.selector);
        escrow.open(t, "", "");
        t = defaultTrade();
        t.deadline = block.timestamp - 1;
        vm.expectPartialRevert(SettlementEscrow.TradeExpired.selector);
        escrow.open(t, "", "");
    }

    // ---- settlement ----

    function test_settleDeliversBothLegs() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        fundLeg(t, true);
        fundLeg(t, false);
        vm.expectEmit(true, true, true, true, address(escrow));
        emit SettlementEscrow.TradeSettled(id, partyA, partyB);
        escrow.settle(t);
        assertEq(wbtc.balanceOf(partyB), 2e8, "B received A's leg");
        assertEq(usdc.balanceOf(partyA), 130_000e6, "A received B's leg");
        assertEq(wbtc.balanceOf(address(escrow)) + usdc.balanceOf(address(escrow)), 0, "escrow empty");
        assertTrue(status(id) == SettlementEscrow.Status.Settled, "settled");
        vm.expectRevert(
            abi.encodeWithSelector(SettlementEscrow.WrongStatus.selector, id, SettlementEscrow.Status.Settled)
        );
        escrow.settle(t);
    }

    function test_settleEthAgainstToken() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        t.assetA = address(0);
        t.amountA = 40 ether;
        openTrade(t);
        fundLeg(t, true);
        fundLeg(t, false);
        escrow.settle(t);
        assertEq(partyB.balance, 40 ether, "B received ETH");
        assertEq(usdc.balanceOf(partyA), 130_000e6, "A received USDC");
        assertEq(address(escrow).balance, 0, "no ETH left");
    }

    function test_settleWithOneLegUnfundedReverts() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.LegNotFunded.selector, id));
        escrow.settle(t);
        fundLeg(t, true);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.LegNotFunded.selector, id));
        escrow.settle(t);
        assertEq(usdc.balanceOf(partyA), 0, "nothing delivered to A");
        assertEq(wbtc.balanceOf(partyB), 0, "nothing delivered to B");
    }

    function test_settleWithOnlyBFundedReverts() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        fundLeg(t, false);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.LegNotFunded.selector, id));
        escrow.settle(t);
    }

    function test_settleAfterDeadlineReverts() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        fundLeg(t, true);
        fundLeg(t, false);
        vm.warp(t.deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.TradeExpired.selector, id, t.deadline));
        escrow.settle(t);
    }

    function test_settleAtTheDeadlineSecondSucceeds() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        openTrade(t);
        fundLeg(t, true);
        fundLeg(t, false);
        vm.warp(t.deadline);
        escrow.settle(t);
    }

    /// Issue 13, defect 5: in the deadline second a trade can still settle, so it must not be
    /// refundable yet (refund and settle in the same second would pay a leg twice).
    function test_refundAtTheDeadlineSecondReverts() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        fundLeg(t, true);
        fundLeg(t, false);
        vm.warp(t.deadline);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.TradeNotExpired.selector, id, t.deadline));
        escrow.refund(t, partyA);
        escrow.settle(t);
        assertEq(wbtc.balanceOf(partyB), t.amountA, "settled once");
    }

    /// The same race, with a second trade's collateral in the escrow that a double payout would take.
    function test_refundThenSettleInTheDeadlineSecondCannotDrainAnotherTrade() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        SettlementEscrow.Trade memory other = defaultTrade();
        other.salt = 43;
        openTrade(t);
        openTrade(other);
        fundLeg(t, true);
        fundLeg(t, false);
        fundLeg(other, true);
        vm.warp(t.deadline);
        try escrow.refund(t, partyA) {} catch {}
        try escrow.settle(t) {} catch {}
        assertEq(wbtc.balanceOf(address(escrow)), other.amountA, "the other trade's leg is untouched");
    }

    // ---- leaving a trade ----

    function test_deadlineIsBounded() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        t.deadline = block.timestamp + 100 * 365 days;
        vm.expectRevert(
            abi.encodeWithSelector(
                SettlementEscrow.DeadlineTooFar.selector, t.deadline, block.timestamp + escrow.MAX_TRADE_DURATION()
            )
        );
        escrow.open(t, "", "");
        t.deadline = block.timestamp + escrow.MAX_TRADE_DURATION();
        openTrade(t);
    }

    /// A funded party whose counterparty never funds leaves at once, without waiting for the deadline.
    function test_fundedPartyAbortsWhenTheOtherNeverFunds() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        fundLeg(t, true);
        vm.prank(partyA);
        escrow.abort(t);
        assertEq(wbtc.balanceOf(partyA), t.amountA, "A's leg back");
        assertTrue(status(id) == SettlementEscrow.Status.Cancelled, "cancelled");
        // B can no longer fund, nothing settles, and nothing is refunded twice.
        usdc.mint(partyB, t.amountB);
        vm.startPrank(partyB);
        usdc.approve(address(escrow), t.amountB);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.WrongStatus.selector, id, SettlementEscrow.Status.Cancelled));
        escrow.fund(t);
        vm.stopPrank();
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.NothingToRefund.selector, id, partyA));
        escrow.refund(t, partyA);
    }

    function test_abortRules() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        address stranger = makeAddr("stranger");
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.NotAParty.selector, stranger));
        escrow.abort(t);
        fundLeg(t, true);
        fundLeg(t, false);
        vm.prank(partyB);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.BothLegsFunded.selector, id));
        escrow.abort(t);
        escrow.settle(t);
        vm.prank(partyA);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.WrongStatus.selector, id, SettlementEscrow.Status.Settled));
        escrow.abort(t);
    }

    /// Found by the model-based invariant: a leg refunded after the deadline must not be paid
    /// again by a later abort (with another trade's collateral in the escrow).
    function test_abortAfterARefundPaysNothingTwice() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        SettlementEscrow.Trade memory other = defaultTrade();
        other.salt = 43;
        openTrade(t);
        openTrade(other);
        fundLeg(t, false);
        fundLeg(other, false);
        vm.warp(t.deadline + 1);
        escrow.refund(t, partyB);
        vm.prank(partyA);
        escrow.abort(t);
        assertEq(usdc.balanceOf(partyB), t.amountB, "B's leg back once");
        assertEq(usdc.balanceOf(address(escrow)), other.amountB, "the other trade's leg is untouched");
    }

    /// The unfunded side may abort too (it could equally never fund): the funded leg goes home.
    function test_unfundedPartyAbortReturnsTheFundedLeg() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        openTrade(t);
        fundLeg(t, false);
        vm.prank(partyA);
        escrow.abort(t);
        assertEq(usdc.balanceOf(partyB), t.amountB, "B's leg back to B");
        assertEq(usdc.balanceOf(address(escrow)), 0, "nothing held");
    }

    // ---- funding rules ----

    function test_fundingRules() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        address stranger = makeAddr("stranger");
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.NotAParty.selector, stranger));
        escrow.fund(t);
        // ETH with an ERC-20 leg is refused
        vm.deal(partyA, 1 ether);
        vm.prank(partyA);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.WrongValue.selector, 1, 0));
        escrow.fund{value: 1}(t);
        fundLeg(t, true);
        vm.prank(partyA);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.AlreadyFunded.selector, id, partyA));
        escrow.fund(t);
        // an ETH leg needs exactly its amount
        SettlementEscrow.Trade memory e = defaultTrade();
        e.assetB = address(0);
        e.amountB = 3 ether;
        openTrade(e);
        vm.deal(partyB, 10 ether);
        vm.prank(partyB);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.WrongValue.selector, 3 ether - 1, 3 ether));
        escrow.fund{value: 3 ether - 1}(e);
        // unopened trades cannot be funded
        SettlementEscrow.Trade memory u = defaultTrade();
        u.salt = 7;
        vm.prank(partyA);
        vm.expectRevert(
            abi.encodeWithSelector(
                SettlementEscrow.WrongStatus.selector, tradeDigest(escrow, u), SettlementEscrow.Status.None
            )
        );
        escrow.fund(u);
    }

    function test_feeOnTransferTokenIsRefused() public {
        FeeOnTransferToken fee = new FeeOnTransferToken();
        SettlementEscrow.Trade memory t = defaultTrade();
        t.assetA = address(fee);
        openTrade(t);
        fee.mint(partyA, t.amountA);
        vm.startPrank(partyA);
        fee.approve(address(escrow), t.amountA);
        vm.expectRevert(
            abi.encodeWithSelector(SettlementEscrow.AmountNotReceived.selector, t.amountA - t.amountA / 100, t.amountA)
        );
        escrow.fund(t);
        vm.stopPrank();
    }

    // ---- refunds ----

    function test_refundsAfterDeadlineReturnExactlyEachOwnLeg() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        fundLeg(t, true);
        fundLeg(t, false);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.TradeNotExpired.selector, id, t.deadline));
        escrow.refund(t, partyA);

        vm.warp(t.deadline + 1);
        escrow.refund(t, partyA);
        assertEq(wbtc.balanceOf(partyA), 2e8, "A got its WBTC back");
        assertEq(usdc.balanceOf(partyA), 0, "A got none of B's leg");
        assertEq(wbtc.balanceOf(partyB), 0, "B got none of A's leg");
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.NothingToRefund.selector, id, partyA));
        escrow.refund(t, partyA);

        vm.prank(makeAddr("anyone")); // anyone may trigger it; the leg still goes to its funder
        escrow.refund(t, partyB);
        assertEq(usdc.balanceOf(partyB), 130_000e6, "B got its USDC back");
        assertEq(wbtc.balanceOf(address(escrow)) + usdc.balanceOf(address(escrow)), 0, "escrow empty");
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.NotAParty.selector, address(this)));
        escrow.refund(t, address(this));
    }

    function test_unfundedLegHasNothingToRefund() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        fundLeg(t, true);
        vm.warp(t.deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.NothingToRefund.selector, id, partyB));
        escrow.refund(t, partyB);
        escrow.refund(t, partyA);
        assertEq(wbtc.balanceOf(partyA), 2e8, "A refunded");
    }

    function testFuzz_refundReturnsOnlyOwnLeg(uint256 amountA, uint256 amountB, uint8 funded, bool ethLegA, uint256 late)
        public
    {
        SettlementEscrow.Trade memory t = defaultTrade();
        t.amountA = bound(amountA, 1, 1e30);
        t.amountB = bound(amountB, 1, 1e30);
        if (ethLegA) t.assetA = address(0);
        openTrade(t);
        bool fa = funded & 1 != 0;
        bool fb = funded & 2 != 0;
        if (fa) fundLeg(t, true);
        if (fb) fundLeg(t, false);
        vm.warp(t.deadline + bound(late, 1, 365 days));
        if (fa) escrow.refund(t, partyA);
        if (fb) escrow.refund(t, partyB);
        uint256 aHasOwn = ethLegA ? partyA.balance : wbtc.balanceOf(partyA);
        uint256 bHasA = ethLegA ? partyB.balance : wbtc.balanceOf(partyB);
        assertEq(aHasOwn, fa ? t.amountA : 0, "A's own leg back");
        assertEq(bHasA, 0, "B never gets A's leg on refund");
        assertEq(usdc.balanceOf(partyB), fb ? t.amountB : 0, "B's own leg back");
        assertEq(usdc.balanceOf(partyA), 0, "A never gets B's leg on refund");
        assertEq(address(escrow).balance + wbtc.balanceOf(address(escrow)) + usdc.balanceOf(address(escrow)), 0, "empty");
    }

    // ---- cancellation ----

    function test_mutualCancellationReleasesLegsAtOnce() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 id = openTrade(t);
        fundLeg(t, true);
        bytes32 c = cancelDigestOf(escrow, t);
        // One party alone cannot cancel.
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.InvalidSignature.selector, partyB));
        escrow.cancel(t, signPacked(A_PK, c), signPacked(A_PK, c));
        // A signature on the trade itself is not a cancellation.
        bytes32 d = tradeDigest(escrow, t);
        vm.expectRevert(abi.encodeWithSelector(SettlementEscrow.InvalidSignature.selector, partyA));
        escrow.cancel(t, signPacked(A_PK, d), signPacked(B_PK, c));

        vm.expectEmit(true, true, true, true, address(escrow));
        emit SettlementEscrow.TradeCancelled(id);
        escrow.cancel(t, signPacked(A_PK, c), signPacked(B_PK, c));
        escrow.refund(t, partyA); // before the deadline: cancellation releases at once
        assertEq(wbtc.balanceOf(partyA), 2e8, "A refunded");
        vm.expectRevert(
            abi.encodeWithSelector(SettlementEscrow.WrongStatus.selector, id, SettlementEscrow.Status.Cancelled)
        );
        escrow.settle(t);
        vm.prank(partyB);
        vm.expectRevert(
            abi.encodeWithSelector(SettlementEscrow.WrongStatus.selector, id, SettlementEscrow.Status.Cancelled)
        );
        escrow.fund(t);
    }

    function test_cancelBeforeOpenPreventsOpening() public {
        SettlementEscrow.Trade memory t = defaultTrade();
        bytes32 c = cancelDigestOf(escrow, t);
        escrow.cancel(t, signPacked(A_PK, c), signPacked(B_PK, c));
        bytes32 d = tradeDigest(escrow, t);
        vm.expectRevert(
            abi.encodeWithSelector(SettlementEscrow.WrongStatus.selector, d, SettlementEscrow.Status.Cancelled)
        );
        escrow.open(t, signPacked(A_PK, d), signPacked(B_PK, d));
    }

    // ---- hostile counterparties ----

    function test_reentrancyFromATokenReverts() public {
        ReentrantToken bad = new ReentrantToken();
        SettlementEscrow.Trade memory t = defaultTrade();
        t.assetA = address(bad);
        openTrade(t);
        bad.mint(partyA, t.amountA);
        vm.startPrank(partyA);
        bad.approve(address(escrow), t.amountA);
        escrow.fund(t);
        vm.stopPrank();
        fundLeg(t, false);
        // When the escrow pays A's leg out, the token tries to re-enter and refund A's leg too.
        bad.arm(address(escrow), abi.encodeCall(SettlementEscrow.refund, (t, partyA)));
        vm.expectRevert(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector);
        escrow.settle(t);
        assertEq(bad.balanceOf(address(escrow)), t.amountA, "A's leg still in escrow");
        assertEq(usdc.balanceOf(address(escrow)), t.amountB, "B's leg still in escrow");
    }

    /// Whatever gas limit a relayer picks, a settlement either reverts or delivers the ETH leg to a
    /// recipient that accepts it: starving the push to turn a delivery into a credit is impossible.
    function testFuzz_starvedEthPushNeverBecomesACredit(uint256 gasLimit) public {
        uint256 ownerPk = 0xD35C;
        DeskWallet desk = new DeskWallet(vm.addr(ownerPk));
        desk.setRefuseEth(false); // accepts, but its receive hook needs ~22k gas
        SettlementEscrow.Trade memory t = defaultTrade();
        t.assetA = address(0);
        t.amountA = 1 ether;
        t.partyB = address(desk);
        bytes32 d = tradeDigest(escrow, t);
        escrow.open(t, signPacked(A_PK, d), signPacked(ownerPk, d));
        fundLeg(t, true);
        usdc.mint(address(desk), t.amountB);
        desk.approve(usdc, address(escrow), t.amountB);
        desk.fund(escrow, t);
        gasLimit = bound(gasLimit, 30_000, 400_000);
        try escrow.settle{gas: gasLimit}(t) {
            assertEq(address(desk).balance, 1 ether, "delivered");
            assertEq(escrow.ethOwed(address(desk)), 0, "not credited");
        } catch {
            assertEq(address(escrow).balance, 1 ether, "reverted: ETH still in escrow");
            assertEq(usdc.balanceOf(partyA), 0, "reverted: nothing delivered");
        }
    }

    /// A counterparty that refuses ETH cannot block settlement (no free option): its ETH is
    /// credited and withdrawn later. The wallet also signs through ERC-1271.
    function test_counterpartyRefusingEthCannotBlockSettlement() public {
        uint256 ownerPk = 0xD35C;
        DeskWallet desk = new DeskWallet(vm.addr(ownerPk));
        SettlementEscrow.Trade memory t = SettlementEscrow.Trade({
            partyA: partyA,
            assetA: address(0),
            amountA: 5 ether,
            partyB: address(desk),
            assetB: address(usdc),
            amountB: 15_000e6,
            deadline: block.timestamp + 1 days,
            salt: 1
        });
        bytes32 d = tradeDigest(escrow, t);
        escrow.open(t, signPacked(A_PK, d), signPacked(ownerPk, d));
        fundLeg(t, true);
        usdc.mint(address(desk), t.amountB);
        desk.approve(usdc, address(escrow), t.amountB);
        desk.fund(escrow, t);

        escrow.settle(t);
        assertEq(usdc.balanceOf(partyA), 15_000e6, "A paid");
        assertEq(escrow.ethOwed(address(desk)), 5 ether, "desk's ETH credited");
        assertEq(address(escrow).balance, 5 ether, "ETH held for the desk");
        desk.setRefuseEth(false);
        desk.withdrawEth(escrow);
        assertEq(address(desk).balance, 5 ether, "desk withdrew");
        assertEq(escrow.totalEthOwed(), 0, "nothing owed");
    }

    /// A contract party that can never take ETH withdraws its credit to another address.
    function test_withdrawEthToAnotherAddress() public {
        uint256 ownerPk = 0xD35C;
        DeskWallet desk = new DeskWallet(vm.addr(ownerPk));
        SettlementEscrow.Trade memory t = SettlementEscrow.Trade({
            partyA: partyA,
            assetA: address(0),
            amountA: 5 ether,
            partyB: address(desk),
            assetB: address(usdc),
            amountB: 15_000e6,
            deadline: block.timestamp + 1 days,
            salt: 2
        });
        bytes32 d = tradeDigest(escrow, t);
        escrow.open(t, signPacked(A_PK, d), signPacked(ownerPk, d));
        fundLeg(t, true);
        usdc.mint(address(desk), t.amountB);
        desk.approve(usdc, address(escrow), t.amountB);
        desk.fund(escrow, t);
        escrow.settle(t);
        vm.expectRevert(SettlementEscrow.EthTransferFailed.selector);
        desk.withdrawEth(escrow); // it still refuses ETH
        address payable treasury = payable(makeAddr("treasury"));
        vm.expectRevert(SettlementEscrow.ZeroRecipient.selector);
        desk.withdrawEthTo(escrow, payable(address(0)));
        vm.expectEmit(true, true, true, true, address(escrow));
        emit SettlementEscrow.EthWithdrawn(address(desk), 5 ether);
        desk.withdrawEthTo(escrow, treasury);
        assertEq(treasury.balance, 5 ether, "paid to the named address");
        assertEq(escrow.ethOwed(address(desk)), 0, "credit gone");
        vm.prank(partyA);
        vm.expectRevert(SettlementEscrow.NothingOwed.selector);
        escrow.withdrawEthTo(treasury);
    }
}
