// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {EscrowBase} from "./EscrowBase.sol";
import {SettlementEscrow} from "../src/SettlementEscrow.sol";
import {MockERC20} from "./mocks/MockERC20.sol";

/// @notice Drives the escrow with random sequences of open / fund / settle / refund / cancel /
///         time travel over a handful of trades. Every trade has its own two parties, so each
///         party's balances are attributable to exactly one trade and the invariants can read the
///         truth from balances rather than from the escrow's own bookkeeping.
contract EscrowHandler is EscrowBase {
    uint256 internal constant MAX_TRADES = 6;

    SettlementEscrow public immutable escrow;
    MockERC20 public immutable x;
    MockERC20 public immutable y;
    SettlementEscrow.Trade[] internal _trades;
    uint256 public settledCount;
    uint256 public refundCount;
    uint256 public cancelCount;

    constructor(SettlementEscrow escrow_, MockERC20 x_, MockERC20 y_) {
        escrow = escrow_;
        x = x_;
        y = y_;
    }

    function tradeCount() external view returns (uint256) {
        return _trades.length;
    }

    function tradeAt(uint256 i) external view returns (SettlementEscrow.Trade memory) {
        return _trades[i];
    }

    function pkOf(uint256 i, bool legA) public pure returns (uint256) {
        return 1000 + 2 * i + (legA ? 1 : 2);
    }

    function openTrade(uint256 amountA, uint256 amountB, uint256 duration, uint8 assetPair) external {
        uint256 i = _trades.length;
        if (i >= MAX_TRADES) return;
        address[3] memory assets = [address(x), address(y), address(0)];
        uint256 pair = assetPair % 6; // ordered pairs of distinct assets
        address assetA = assets[pair / 2];
        address assetB = assets[(pair / 2 + 1 + pair % 2) % 3];
        SettlementEscrow.Trade memory t = SettlementEscrow.Trade({
            partyA: vm.addr(pkOf(i, true)),
            assetA: assetA,
            amountA: bound(amountA, 1, 1e24),
            partyB: vm.addr(pkOf(i, false)),
            assetB: assetB,
            amountB: bound(amountB, 1, 1e24),
            deadline: block.timestamp + bound(duration, 1 hours, 3 days),
            salt: i
        });
        bytes32 d = tradeDigest(escrow, t);
        escrow.open(t, signPacked(pkOf(i, true), d), signPacked(pkOf(i, false), d));
        _trades.push(t);
    }

    function fund(uint256 idx, bool legA) external {
        if (_trades.length == 0) return;
        SettlementEscrow.Trade memory t = _trades[idx % _trades.length];
        address party = legA ? t.partyA : t.partyB;
        address asset = legA ? t.assetA : t.assetB;
        uint256 amount = legA ? t.amountA : t.amountB;
        if (asset == address(0)) {
            uint256 before = party.balance;
            vm.deal(party, before + amount);
            vm.prank(party);
            try escrow.fund{value: amount}(t) {}
            catch {
                vm.deal(party, before); // undo, so balances only ever reflect escrow movements
            }
        } else {
            MockERC20(asset).mint(party, amount);
            vm.prank(party);
            MockERC20(asset).approve(address(escrow), amount);
            vm.prank(party);
            try escrow.fund(t) {}
            catch {
                MockERC20(asset).burn(party, amount);
            }
        }
    }

    function settle(uint256 idx) external {
        if (_trades.length == 0) return;
        try escrow.settle(_trades[idx % _trades.length]) {
            settledCount++;
        } catch {}
    }

    function refund(uint256 idx, bool legA) external {
        if (_trades.length == 0) return;
        SettlementEscrow.Trade memory t = _trades[idx % _trades.length];
        try escrow.refund(t, legA ? t.partyA : t.partyB) {
            refundCount++;
        } catch {}
    }

    function cancel(uint256 idx) external {
        // Cancel only one call in five, so most trades live long enough to be funded and settled.
        if (_trades.length == 0 || idx % 5 != 0) return;
        idx /= 5;
        uint256 i = idx % _trades.length;
        SettlementEscrow.Trade memory t = _trades[i];
        bytes32 c = cancelDigestOf(escrow, t);
        try escrow.cancel(t, signPacked(pkOf(i, true), c), signPacked(pkOf(i, false), c)) {
            cancelCount++;
        } catch {}
    }

    function warp(uint256 dt) external {
        vm.warp(block.timestamp + bound(dt, 0, 1 days));
    }
}

contract EscrowInvariantTest is EscrowBase {
    SettlementEscrow internal escrow;
    MockERC20 internal x;
    MockERC20 internal y;
    EscrowHandler internal handler;

    function setUp() public {
        vm.warp(1_750_000_000);
        escrow = new SettlementEscrow();
        x = new MockERC20("X", "X");
        y = new MockERC20("Y", "Y");
        handler = new EscrowHandler(escrow, x, y);
    }

    /// @dev forge's invariant fuzzer calls only these contracts.
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function balanceOf(address asset, address who) internal view returns (uint256) {
        return asset == address(0) ? who.balance : MockERC20(asset).balanceOf(who);
    }

    /// Both legs are delivered or neither: B holds A's asset exactly when A holds B's, and only
    /// for a settled trade. Nobody ever ends up with the counterparty's leg any other way.
    function invariant_bothLegsOrNeither() public view {
        for (uint256 i = 0; i < handler.tradeCount(); i++) {
            SettlementEscrow.Trade memory t = handler.tradeAt(i);
            (SettlementEscrow.Status status,,,,) = escrow.trades(escrow.tradeId(t));
            uint256 bGotA = balanceOf(t.assetA, t.partyB);
            uint256 aGotB = balanceOf(t.assetB, t.partyA);
            bool settled = status == SettlementEscrow.Status.Settled;
            assertEq(bGotA, settled ? t.amountA : 0, "B's receipt of A's leg");
            assertEq(aGotB, settled ? t.amountB : 0, "A's receipt of B's leg");
        }
    }

    /// A party only ever gets its own leg back through a refund, exactly once, in full.
    function invariant_refundsAreExactlyOwnLeg() public view {
        for (uint256 i = 0; i < handler.tradeCount(); i++) {
            SettlementEscrow.Trade memory t = handler.tradeAt(i);
            (SettlementEscrow.Status status, bool fundedA, bool fundedB, bool releasedA, bool releasedB) =
                escrow.trades(escrow.tradeId(t));
            bool settled = status == SettlementEscrow.Status.Settled;
            assertEq(balanceOf(t.assetA, t.partyA), (fundedA && releasedA && !settled) ? t.amountA : 0, "A own");
            assertEq(balanceOf(t.assetB, t.partyB), (fundedB && releasedB && !settled) ? t.amountB : 0, "B own");
        }
    }

    /// The escrow holds exactly the legs that are funded and not yet released: no value is created,
    /// lost or stranded.
    function invariant_escrowHoldsExactlyTheLockedLegs() public view {
        uint256 lockedX;
        uint256 lockedY;
        uint256 lockedEth;
        for (uint256 i = 0; i < handler.tradeCount(); i++) {
            SettlementEscrow.Trade memory t = handler.tradeAt(i);
            (, bool fundedA, bool fundedB, bool releasedA, bool releasedB) = escrow.trades(escrow.tradeId(t));
            if (fundedA && !releasedA) {
                if (t.assetA == address(x)) lockedX += t.amountA;
                else if (t.assetA == address(y)) lockedY += t.amountA;
                else lockedEth += t.amountA;
            }
            if (fundedB && !releasedB) {
                if (t.assetB == address(x)) lockedX += t.amountB;
                else if (t.assetB == address(y)) lockedY += t.amountB;
                else lockedEth += t.amountB;
            }
        }
        assertEq(x.balanceOf(address(escrow)), lockedX, "X held");
        assertEq(y.balanceOf(address(escrow)), lockedY, "Y held");
        assertEq(address(escrow).balance, lockedEth + escrow.totalEthOwed(), "ETH held");
    }
}
