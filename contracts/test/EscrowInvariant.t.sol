// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {EscrowBase} from "./EscrowBase.sol";
import {SettlementEscrow} from "../src/SettlementEscrow.sol";
import {MockERC20} from "./mocks/MockERC20.sol";
import {DeskWallet} from "./mocks/EscrowMocks.sol";

/// @notice Drives the escrow with random sequences of open / fund / settle / refund / cancel /
///         abort / withdraw / time travel over up to eight trades, among four shared parties (one a
///         contract wallet that refuses ETH), with same-asset legs and cancellation before opening.
/// @dev Model-based: the handler keeps its own model of every trade and of every party's balances,
///      predicts whether each call must succeed or fail, and makes it so — a call predicted to
///      succeed is made plainly (a revert fails the run: `fail_on_revert` is on), a call predicted
///      to fail is made under `vm.expectRevert` (succeeding fails the run). Nothing is wrapped in
///      try/catch. Counters record how many calls of each kind succeeded and were refused.
contract EscrowHandler is EscrowBase {
    uint256 internal constant MAX_TRADES = 8;
    uint256 internal constant ACTORS = 4;
    uint256 internal constant DESK_OWNER_PK = 0xD35C;

    SettlementEscrow public immutable escrow;
    MockERC20 public immutable x;
    MockERC20 public immutable y;
    DeskWallet public immutable desk;

    struct Model {
        SettlementEscrow.Status status;
        bool fundedA;
        bool fundedB;
        bool releasedA;
        bool releasedB;
    }

    SettlementEscrow.Trade[] internal _trades;
    mapping(uint256 => Model) internal _model;
    /// @dev what each actor should hold of each asset (ETH: balance + escrow credit)
    mapping(address actor => mapping(address asset => uint256)) public expected;

    // calls that succeeded / were refused, per kind
    mapping(bytes32 kind => uint256) public ok;
    mapping(bytes32 kind => uint256) public refused;
    bytes32[] internal _kinds;

    constructor(SettlementEscrow escrow_, MockERC20 x_, MockERC20 y_) {
        escrow = escrow_;
        x = x_;
        y = y_;
        desk = new DeskWallet(vm.addr(DESK_OWNER_PK)); // refuses ETH
        bytes32[9] memory k =
            [bytes32("newTrade"), "open", "fund", "settle", "refund", "cancel", "abort", "withdrawEth", "withdrawEthTo"];
        for (uint256 i = 0; i < k.length; i++) _kinds.push(k[i]);
    }

    // ---- model access for the invariants ----

    function kinds() external view returns (bytes32[] memory) {
        return _kinds;
    }

    function tradeCount() external view returns (uint256) {
        return _trades.length;
    }

    function tradeAt(uint256 i) external view returns (SettlementEscrow.Trade memory) {
        return _trades[i];
    }

    function modelAt(uint256 i) external view returns (Model memory) {
        return _model[i];
    }

    function actor(uint256 i) public view returns (address) {
        return i == 3 ? address(desk) : vm.addr(pkOfActor(i));
    }

    function pkOfActor(uint256 i) public pure returns (uint256) {
        return i == 3 ? DESK_OWNER_PK : 1000 + i;
    }

    function assets() public view returns (address[3] memory) {
        return [address(x), address(y), address(0)];
    }

    // ---- helpers ----

    function _count(bytes32 kind, bool success) internal {
        if (success) ok[kind]++;
        else refused[kind]++;
    }

    function _sign(uint256 actorIdx, bytes32 digest) internal pure returns (bytes memory) {
        return signPacked(pkOfActor(actorIdx), digest);
    }

    function _actorIndex(address who) internal view returns (uint256) {
        for (uint256 i = 0; i < ACTORS; i++) {
            if (actor(i) == who) return i;
        }
        revert("not an actor");
    }

    /// @dev Credit `amount` of `asset` to `to` in the model the way the escrow pays it: ETH to the
    ///      desk is credited (it refuses the push), which the model counts as the desk's.
    function _paid(address asset, address to, uint256 amount) internal {
        expected[to][asset] += amount;
    }

    function _pick(uint256 idx) internal view returns (uint256 i, SettlementEscrow.Trade memory t, bool any) {
        if (_trades.length == 0) return (0, t, false);
        i = idx % _trades.length;
        return (i, _trades[i], true);
    }

    /// @dev Three calls in four are steered to a trade where the action is predicted to succeed
    ///      (if there is one), so settlement, refunds and aborts really happen; the fourth goes to a
    ///      random trade, which mostly exercises the refusals.
    function _steer(uint256 idx, bytes32 kind) internal view returns (uint256) {
        uint256 n = _trades.length;
        if (n == 0 || idx % 4 == 0) return idx / 4;
        for (uint256 k = 0; k < n; k++) {
            uint256 i = (idx / 4 + k) % n;
            if (_predict(kind, i, true) || _predict(kind, i, false)) return i;
        }
        return idx / 4;
    }

    function _predict(bytes32 kind, uint256 i, bool legA) internal view returns (bool) {
        Model storage m = _model[i];
        SettlementEscrow.Trade storage t = _trades[i];
        bool open_ = m.status == SettlementEscrow.Status.Open;
        bool live = block.timestamp <= t.deadline;
        if (kind == "open") return m.status == SettlementEscrow.Status.None && live;
        if (kind == "fund") return open_ && live && !(legA ? m.fundedA : m.fundedB);
        if (kind == "settle") return open_ && live && m.fundedA && m.fundedB;
        if (kind == "refund") {
            bool refundable = (open_ && !live) || m.status == SettlementEscrow.Status.Cancelled;
            return refundable && (legA ? (m.fundedA && !m.releasedA) : (m.fundedB && !m.releasedB));
        }
        if (kind == "cancel") return m.status == SettlementEscrow.Status.None || open_;
        if (kind == "abort") return open_ && !(m.fundedA && m.fundedB);
        return false;
    }

    // ---- actions ----

    /// A new signed trade (not yet opened: it may be cancelled before it is).
    function newTrade(uint256 amountA, uint256 amountB, uint256 duration, uint8 parties, uint8 assetPick) external {
        if (_trades.length >= MAX_TRADES) return;
        uint256 a = parties % ACTORS;
        uint256 b = (a + 1 + (parties / ACTORS) % (ACTORS - 1)) % ACTORS; // distinct from a
        address[3] memory as_ = assets();
        _trades.push(
            SettlementEscrow.Trade({
                partyA: actor(a),
                assetA: as_[assetPick % 3],
                amountA: bound(amountA, 1, 1e24),
                partyB: actor(b),
                assetB: as_[(assetPick / 3) % 3], // may equal assetA
                amountB: bound(amountB, 1, 1e24),
                deadline: block.timestamp + bound(duration, 12 hours, 3 days),
                salt: _trades.length
            })
        );
        _count("newTrade", true);
        // Three in four are opened at once; the rest stay signed-but-unopened (cancellable as such).
        if (duration % 4 != 0) this.open(_trades.length * 4 - 3);
    }

    function open(uint256 idx) external {
        (uint256 i, SettlementEscrow.Trade memory t, bool any) = _pick(_steer(idx, "open"));
        if (!any) return;
        bytes32 d = tradeDigest(escrow, t);
        bytes memory sigA = _sign(_actorIndex(t.partyA), d);
        bytes memory sigB = _sign(_actorIndex(t.partyB), d);
        bool success = _predict("open", i, true);
        if (!success) vm.expectRevert();
        escrow.open(t, sigA, sigB);
        if (success) _model[i].status = SettlementEscrow.Status.Open;
        _count("open", success);
    }

    function fund(uint256 idx, bool legA) external {
        (uint256 i, SettlementEscrow.Trade memory t, bool any) = _pick(_steer(idx, "fund"));
        if (!any) return;
        Model storage m = _model[i];
        if (idx % 4 != 0 && !_predict("fund", i, legA)) legA = !legA; // steer to the unfunded leg
        address party = legA ? t.partyA : t.partyB;
        address asset = legA ? t.assetA : t.assetB;
        uint256 amount = legA ? t.amountA : t.amountB;
        bool success = _predict("fund", i, legA);
        // Give the party exactly the amount, so its balance only ever reflects escrow movements.
        if (asset == address(0)) {
            vm.deal(party, party.balance + amount);
        } else {
            MockERC20(asset).mint(party, amount);
            vm.prank(party);
            MockERC20(asset).approve(address(escrow), amount);
        }
        if (!success) vm.expectRevert();
        vm.prank(party);
        escrow.fund{value: asset == address(0) ? amount : 0}(t);
        if (success) {
            if (legA) m.fundedA = true;
            else m.fundedB = true;
        } else if (asset == address(0)) {
            vm.deal(party, party.balance - amount);
        } else {
            MockERC20(asset).burn(party, amount);
        }
        _count("fund", success);
    }

    function settle(uint256 idx) external {
        (uint256 i, SettlementEscrow.Trade memory t, bool any) = _pick(_steer(idx, "settle"));
        if (!any) return;
        Model storage m = _model[i];
        bool success = _predict("settle", i, true);
        if (!success) vm.expectRevert();
        escrow.settle(t);
        if (success) {
            m.status = SettlementEscrow.Status.Settled;
            m.releasedA = true;
            m.releasedB = true;
            _paid(t.assetA, t.partyB, t.amountA);
            _paid(t.assetB, t.partyA, t.amountB);
        }
        _count("settle", success);
    }

    function refund(uint256 idx, bool legA) external {
        (uint256 i, SettlementEscrow.Trade memory t, bool any) = _pick(_steer(idx, "refund"));
        if (!any) return;
        Model storage m = _model[i];
        if (idx % 4 != 0 && !_predict("refund", i, legA)) legA = !legA;
        bool success = _predict("refund", i, legA);
        if (!success) vm.expectRevert();
        escrow.refund(t, legA ? t.partyA : t.partyB);
        if (success) {
            if (legA) {
                m.releasedA = true;
                _paid(t.assetA, t.partyA, t.amountA);
            } else {
                m.releasedB = true;
                _paid(t.assetB, t.partyB, t.amountB);
            }
        }
        _count("refund", success);
    }

    function cancel(uint256 idx) external {
        // Cancel one call in five, so most trades live long enough to be funded and settled.
        if (idx % 5 != 0) return;
        (uint256 i, SettlementEscrow.Trade memory t, bool any) = _pick(_steer(idx / 5, "cancel"));
        if (!any) return;
        bytes32 c = cancelDigestOf(escrow, t);
        bytes memory sigA = _sign(_actorIndex(t.partyA), c);
        bytes memory sigB = _sign(_actorIndex(t.partyB), c);
        Model storage m = _model[i];
        bool success = _predict("cancel", i, true);
        if (!success) vm.expectRevert();
        escrow.cancel(t, sigA, sigB);
        if (success) m.status = SettlementEscrow.Status.Cancelled;
        _count("cancel", success);
    }

    function abort(uint256 idx, bool byA) external {
        // Abort one call in five, so most trades live long enough to be funded and settled.
        if (idx % 5 != 0) return;
        (uint256 i, SettlementEscrow.Trade memory t, bool any) = _pick(_steer(idx / 5, "abort"));
        if (!any) return;
        Model storage m = _model[i];
        bool success = _predict("abort", i, true);
        if (!success) vm.expectRevert();
        vm.prank(byA ? t.partyA : t.partyB);
        escrow.abort(t);
        if (success) {
            m.status = SettlementEscrow.Status.Cancelled;
            if (m.fundedA && !m.releasedA) {
                m.releasedA = true;
                _paid(t.assetA, t.partyA, t.amountA);
            } else if (m.fundedB && !m.releasedB) {
                m.releasedB = true;
                _paid(t.assetB, t.partyB, t.amountB);
            }
        }
        _count("abort", success);
    }

    /// The desk refuses ETH, so its own withdrawal fails; to another address it succeeds.
    function withdrawEth(uint256 who, uint256 to, bool toOther) external {
        if (who % 4 != 0) {
            for (uint256 k = 0; k < ACTORS; k++) {
                if (escrow.ethOwed(actor((who / 4 + k) % ACTORS)) != 0) {
                    who = (who / 4 + k) % ACTORS;
                    break;
                }
            }
        }
        address from = actor(who % ACTORS);
        uint256 owed = escrow.ethOwed(from);
        if (!toOther) {
            bool success = owed != 0 && from != address(desk);
            if (!success) vm.expectRevert();
            vm.prank(from);
            escrow.withdrawEth();
            _count("withdrawEth", success);
        } else {
            address recipient = actor(to % 3); // an EOA
            bool success = owed != 0;
            if (!success) vm.expectRevert();
            vm.prank(from);
            escrow.withdrawEthTo(payable(recipient));
            if (success) {
                expected[from][address(0)] -= owed;
                expected[recipient][address(0)] += owed;
            }
            _count("withdrawEthTo", success);
        }
    }

    function warp(uint256 dt) external {
        vm.warp(block.timestamp + bound(dt, 0, 6 hours));
    }

    /// Land exactly on a trade's deadline second, or the one after: where settle and refund meet.
    function warpToDeadline(uint256 idx, bool after_) external {
        (, SettlementEscrow.Trade memory t, bool any) = _pick(_steer(idx, "settle"));
        if (!any || t.deadline < block.timestamp) return;
        vm.warp(t.deadline + (after_ ? 1 : 0));
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

    function holding(address asset, address who) internal view returns (uint256) {
        return asset == address(0) ? who.balance + escrow.ethOwed(who) : MockERC20(asset).balanceOf(who);
    }

    /// Every party holds exactly what the model says: what it received by settlement (the
    /// counterparty's leg, only for a settled trade) and what came back by refund or abort (its own
    /// leg, once). Nobody ever ends up with a leg any other way, and nothing is paid twice.
    /// One campaign checks every property after every call (separate invariant functions would
    /// each replay the same seeded sequence).
    /// forge-config: default.invariant.depth = 100
    function invariant_escrow() public view {
        balancesMatchTheModel();
        stateMatchesTheModel();
        escrowHoldsExactlyTheLockedLegs();
    }

    function balancesMatchTheModel() internal view {
        address[3] memory as_ = handler.assets();
        for (uint256 p = 0; p < 4; p++) {
            address who = handler.actor(p);
            for (uint256 k = 0; k < 3; k++) {
                assertEq(holding(as_[k], who), handler.expected(who, as_[k]), "party holdings");
            }
        }
    }

    /// The contract's record of every trade is the model's.
    function stateMatchesTheModel() internal view {
        for (uint256 i = 0; i < handler.tradeCount(); i++) {
            SettlementEscrow.Trade memory t = handler.tradeAt(i);
            EscrowHandler.Model memory m = handler.modelAt(i);
            (SettlementEscrow.Status status, bool fundedA, bool fundedB, bool releasedA, bool releasedB) =
                escrow.trades(escrow.tradeId(t));
            assertTrue(status == m.status, "status");
            assertEq(fundedA, m.fundedA, "fundedA");
            assertEq(fundedB, m.fundedB, "fundedB");
            assertEq(releasedA, m.releasedA, "releasedA");
            assertEq(releasedB, m.releasedB, "releasedB");
            // both legs or neither: settled means both delivered; a released leg was funded
            if (status == SettlementEscrow.Status.Settled) assertTrue(fundedA && fundedB && releasedA && releasedB, "settled");
            assertTrue(!releasedA || fundedA, "A released unfunded");
            assertTrue(!releasedB || fundedB, "B released unfunded");
        }
    }

    /// The escrow holds exactly the legs that are funded and not yet released (plus ETH credits):
    /// no value is created, lost or stranded.
    function escrowHoldsExactlyTheLockedLegs() internal view {
        uint256 lockedX;
        uint256 lockedY;
        uint256 lockedEth;
        for (uint256 i = 0; i < handler.tradeCount(); i++) {
            SettlementEscrow.Trade memory t = handler.tradeAt(i);
            EscrowHandler.Model memory m = handler.modelAt(i);
            if (m.fundedA && !m.releasedA) {
                if (t.assetA == address(x)) lockedX += t.amountA;
                else if (t.assetA == address(y)) lockedY += t.amountA;
                else lockedEth += t.amountA;
            }
            if (m.fundedB && !m.releasedB) {
                if (t.assetB == address(x)) lockedX += t.amountB;
                else if (t.assetB == address(y)) lockedY += t.amountB;
                else lockedEth += t.amountB;
            }
        }
        assertEq(x.balanceOf(address(escrow)), lockedX, "X held");
        assertEq(y.balanceOf(address(escrow)), lockedY, "Y held");
        assertEq(address(escrow).balance, lockedEth + escrow.totalEthOwed(), "ETH held");
    }

    /// Totals over all runs so far (the process environment outlives a run), printed with -vv
    /// after the last one: how many calls of each kind succeeded and were refused.
    function afterInvariant() external {
        bytes32[] memory ks = handler.kinds();
        for (uint256 i = 0; i < ks.length; i++) {
            string memory k = _str(ks[i]);
            _total(string.concat("escrow ok ", k), string.concat("FP_INV_ESCROW_OK_", k), handler.ok(ks[i]));
            _total(string.concat("escrow refused ", k), string.concat("FP_INV_ESCROW_NO_", k), handler.refused(ks[i]));
        }
    }

    function _total(string memory label, string memory key, uint256 add) internal {
        uint256 total = vm.envOr(key, uint256(0)) + add;
        vm.setEnv(key, vm.toString(total));
        emit log_named_uint(string.concat("total ", label), total);
    }

    function _str(bytes32 b) internal pure returns (string memory s) {
        uint256 n;
        while (n < 32 && b[n] != 0) n++;
        bytes memory out = new bytes(n);
        for (uint256 i = 0; i < n; i++) out[i] = b[i];
        s = string(out);
    }
}
