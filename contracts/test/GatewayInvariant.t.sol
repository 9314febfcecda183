// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {GatewayBase} from "./GatewayBase.sol";
import {Gateway} from "../src/Gateway.sol";
import {WrappedAsset} from "../src/WrappedAsset.sol";

/// @notice Drives the gateway with random mints (small and large, with colliding deposits),
///         burns (valid and invalid destinations), refunds (honest and tampered), queued
///         executions, vetoes, pauses and unpauses, tightening and loosening configurations,
///         signer rotations, a thief's orders and time travel.
/// @dev Like the escrow handler it predicts whether each call must succeed, makes the call plainly
///      if so and under `vm.expectRevert` if not (`fail_on_revert` is on), and keeps independent
///      ghost totals the invariants check the contract against.
contract GatewayHandler is GatewayBase {
    uint256 internal constant THIEF_PK = 0x7415F;
    uint256 internal constant LOOSE_CAP = 100e8;
    uint256 internal constant TIGHT_CAP = 40e8;
    uint256 internal constant THRESHOLD = 20e8;
    uint256 internal constant HANDLER_CEILING = 300e8;

    // the key pool the operators rotate through
    uint256[3] internal _keys = [GROUP_PK, NEXT_GROUP_PK, 0xC0C0];
    uint256 public keyIndex;

    address[3] internal _holders;

    // ghosts
    uint256 public ghostMinted;
    uint256 public ghostBurned;
    uint256 public ghostRefunded;
    uint256 public issuedWhilePaused;
    uint256 public maxCapEver;
    uint256 public minWindowEver;
    mapping(bytes32 depositId => uint256) public mintsOf;
    uint256 public mintedDeposits;
    uint256[] internal _issueTimes;
    uint256[] internal _issuedBefore; // total issued before the i-th issuance
    uint256 public totalIssued;
    uint256 public rateViolations;

    struct BurnGhost {
        address burner;
        uint256 amount;
        bool refunded;
    }

    mapping(uint256 burnNonce => BurnGhost) internal _burns;

    struct Queued {
        bool isRefund;
        Gateway.MintOrder order;
        Gateway.RefundBurn refund;
        bytes32 id;
        bool done;
    }

    Queued[] internal _queued;

    struct PendingAdmin {
        uint8 kind; // 1 config, 2 unpause, 3 rotation
        Gateway.AssetConfig config;
        uint256 nonce;
        uint256 deadline;
        uint256 newKeyIndex;
        bytes32 id;
        bool done;
    }

    PendingAdmin[] internal _admin;

    mapping(bytes32 kind => uint256) public ok;
    mapping(bytes32 kind => uint256) public refused;
    bytes32[] internal _kinds;

    constructor(Gateway gateway_, WrappedAsset btc_, address guardian_) {
        gateway = gateway_;
        btc = btc_;
        guardian = guardian_;
        _holders = [makeAddr("h0"), makeAddr("h1"), makeAddr("h2")];
        maxCapEver = LOOSE_CAP;
        minWindowEver = WINDOW;
        bytes32[14] memory k = [
            bytes32("mint"),
            "mintQueued",
            "burn",
            "refund",
            "refundQueued",
            "execute",
            "veto",
            "pause",
            "unpauseProposed",
            "unpause",
            "configure",
            "rotationProposed",
            "rotation",
            "thief"
        ];
        for (uint256 i = 0; i < k.length; i++) _kinds.push(k[i]);
    }

    function kinds() external view returns (bytes32[] memory) {
        return _kinds;
    }

    /// @dev The fuzzer must not redeploy the fixture through the inherited setUp.
    function setUp() public override {}

    function holder(uint256 i) external view returns (address) {
        return _holders[i];
    }

    function burnGhost(uint256 n) external view returns (BurnGhost memory) {
        return _burns[n];
    }

    // ---- helpers ----

    function _count(bytes32 kind, bool success) internal {
        if (success) ok[kind]++;
        else refused[kind]++;
    }

    function _pk() internal view returns (uint256) {
        return _keys[keyIndex];
    }

    function _remaining() internal view returns (uint256 mintRemaining, uint256 burnRemaining) {
        (, mintRemaining, burnRemaining,) = gateway.assetState(address(btc));
    }

    function _threshold() internal view returns (uint256 t) {
        (,,,,,, t,) = gateway.assetConfig(address(btc));
    }

    /// @dev Record an issuance (mint or refund) and check the rate bound independently of the
    ///      contract's bucket: over the span from any earlier issuance to now, at most
    ///      cap + cap * span / window (with the largest cap ever configured) was issued.
    function _issued(uint256 amount) internal {
        _issueTimes.push(block.timestamp);
        _issuedBefore.push(totalIssued);
        totalIssued += amount;
        for (uint256 i = 0; i < _issueTimes.length; i++) {
            uint256 span = block.timestamp - _issueTimes[i];
            if (totalIssued - _issuedBefore[i] > maxCapEver + maxCapEver * span / minWindowEver) rateViolations++;
        }
        if (gateway.paused()) issuedWhilePaused++;
        (uint256 supply,,,) = gateway.assetState(address(btc));
        (,,,,, uint256 ceiling,,) = gateway.assetConfig(address(btc));
        assertTrue(supply <= ceiling, "issued above the ceiling");
    }

    function _config(bool loose) internal pure returns (Gateway.AssetConfig memory c) {
        c = btcConfig();
        c.mintCap = loose ? LOOSE_CAP : TIGHT_CAP;
        c.burnCap = loose ? LOOSE_CAP : TIGHT_CAP;
        c.supplyCeiling = HANDLER_CEILING;
        c.largeMintThreshold = THRESHOLD;
    }

    // ---- mint, burn, refund ----

    /// Deposits come from a small space (6 transactions x 2 outputs), so collisions are frequent.
    function mint(uint256 seed, uint256 amount, uint256 who) external {
        Gateway.MintOrder memory o = order(bytes32(seed % 6), uint32((seed / 6) % 2), bound(amount, 1, 60e8));
        o.recipient = _holders[who % 3];
        o.nonce = seed; // distinct orders for the same deposit
        bytes32 depositId = gateway.depositIdOf(o.sourceChain, o.sourceTxId, o.vout);
        bool large = o.amount > _threshold();
        (uint256 mintRemaining,) = _remaining();
        (Gateway.ActionStatus st,,,) = gateway.actionState(orderDigest(o));
        bool success = !gateway.paused() && gateway.mintedDeposit(depositId) == 0
            && (large ? st == Gateway.ActionStatus.None : o.amount <= mintRemaining);
        bytes memory sig = signOrder(_pk(), o);
        if (!success) vm.expectRevert();
        gateway.mint(o, sig);
        if (success && large) {
            _queued.push(Queued(false, o, refundOf(0, address(0), address(0), 0), orderDigest(o), false));
        } else if (success) {
            _minted(depositId, o.amount);
        }
        _count(large ? bytes32("mintQueued") : bytes32("mint"), success);
    }

    function _minted(bytes32 depositId, uint256 amount) internal {
        mintsOf[depositId]++;
        assertEq(mintsOf[depositId], 1, "a deposit minted twice");
        mintedDeposits++;
        ghostMinted += amount;
        _issued(amount);
    }

    function burn(uint256 who, uint256 amount, uint8 destPick) external {
        address h = _holders[who % 3];
        uint256 balance = btc.balanceOf(h);
        amount = bound(amount, MIN_BURN - 1, balance + MIN_BURN);
        bool validDest = destPick % 5 != 0;
        bytes memory dest = validDest ? bytes("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq") : new bytes(20);
        (, uint256 burnRemaining) = _remaining();
        bool success =
            !gateway.paused() && validDest && amount >= MIN_BURN && amount <= balance && amount <= burnRemaining;
        if (!success) vm.expectRevert();
        vm.prank(h);
        uint256 n = gateway.burn(address(btc), amount, dest);
        if (success) {
            _burns[n] = BurnGhost(h, amount, false);
            ghostBurned += amount;
        }
        _count("burn", success);
    }

    /// Refund a recorded burn; one call in four is tampered (another amount or burner).
    function refund(uint256 nonceSeed, uint8 tamper) external {
        uint256 count = gateway.burnCount();
        if (count == 0) return;
        uint256 n = 1 + nonceSeed % count;
        BurnGhost memory b = _burns[n];
        Gateway.RefundBurn memory r = refundOf(n, address(btc), b.burner, b.amount);
        r.deadline = block.timestamp + (nonceSeed % 1000); // distinct digests for repeated refunds
        if (tamper % 4 == 1) r.amount += 1;
        if (tamper % 4 == 2) r.burner = _holders[0] == b.burner ? _holders[1] : _holders[0];
        bool large = r.amount > _threshold();
        (uint256 mintRemaining,) = _remaining();
        (Gateway.ActionStatus st,,,) = gateway.actionState(digestOf(refundStructHash(r)));
        bool success = !gateway.paused() && tamper % 4 != 1 && tamper % 4 != 2 && !b.refunded
            && (large ? st == Gateway.ActionStatus.None : r.amount <= mintRemaining);
        bytes memory sig = signRefund(_pk(), r);
        if (!success) vm.expectRevert();
        gateway.refund(r, sig);
        if (success && large) {
            _queued.push(Queued(true, order(0, 0, 0), r, digestOf(refundStructHash(r)), false));
        } else if (success) {
            _refunded(n, r.amount);
        }
        _count(large ? bytes32("refundQueued") : bytes32("refund"), success);
    }

    function _refunded(uint256 n, uint256 amount) internal {
        assertTrue(!_burns[n].refunded, "a burn refunded twice");
        assertEq(amount, _burns[n].amount, "refund of another amount");
        _burns[n].refunded = true;
        ghostRefunded += amount;
        _issued(amount);
    }

    function _queuedOk(uint256 i) internal view returns (bool) {
        Queued storage q = _queued[i];
        (Gateway.ActionStatus st, uint256 eta, uint32 e,) = gateway.actionState(q.id);
        (, uint32 epoch_,, uint256 until) = gateway.signerSchedule();
        bool epochOk = e == epoch_ || (epoch_ != 0 && e == epoch_ - 1 && block.timestamp < until);
        (uint256 mintRemaining,) = _remaining();
        uint256 amount = q.isRefund ? q.refund.amount : q.order.amount;
        bool stillValid = q.isRefund
            ? !_burns[q.refund.burnNonce].refunded
            : gateway.mintedDeposit(gateway.depositIdOf(q.order.sourceChain, q.order.sourceTxId, q.order.vout)) == 0;
        return !gateway.paused() && st == Gateway.ActionStatus.Queued && block.timestamp >= eta && epochOk
            && stillValid && amount <= mintRemaining;
    }

    /// Three calls in four go to a queued item predicted to execute, if any.
    function executeQueued(uint256 idx) external {
        if (_queued.length == 0) return;
        uint256 i = idx % _queued.length;
        if (idx % 4 != 0) {
            for (uint256 k = 0; k < _queued.length; k++) {
                if (_queuedOk((idx % _queued.length + k) % _queued.length)) {
                    i = (idx % _queued.length + k) % _queued.length;
                    break;
                }
            }
        }
        Queued storage q = _queued[i];
        uint256 amount = q.isRefund ? q.refund.amount : q.order.amount;
        bool success = _queuedOk(i);
        if (!success) vm.expectRevert();
        if (q.isRefund) gateway.executeRefund(q.refund);
        else gateway.executeMint(q.order);
        if (success) {
            q.done = true;
            if (q.isRefund) {
                _refunded(q.refund.burnNonce, amount);
            } else {
                _minted(gateway.depositIdOf(q.order.sourceChain, q.order.sourceTxId, q.order.vout), amount);
            }
        }
        _count("execute", success);
    }

    /// The guardian vetoes a queued mint, refund or administrative action.
    function veto(uint256 idx, bool admin) external {
        if (idx % 3 != 0) return; // the guardian vetoes now and then, not everything
        idx /= 3;
        bytes32 id;
        if (admin && _admin.length != 0) id = _admin[idx % _admin.length].id;
        else if (_queued.length != 0) id = _queued[idx % _queued.length].id;
        else return;
        (Gateway.ActionStatus st,,,) = gateway.actionState(id);
        bool success = st == Gateway.ActionStatus.Queued;
        if (!success) vm.expectRevert();
        vm.prank(guardian);
        gateway.veto(id);
        _count("veto", success);
    }

    /// A thief's key signs mints and administrative actions: always refused.
    function thief(uint256 seed) external {
        Gateway.MintOrder memory o = order(bytes32(seed), 0, 1e8);
        bytes memory sig = signOrder(THIEF_PK, o);
        vm.expectRevert();
        gateway.mint(o, sig);
        _count("thief", false);
    }

    // ---- pause ----

    function pause(uint8 how) external {
        if (how % 40 >= 3) return; // pauses are rare, so the bridge mostly runs
        if (how % 3 == 0) {
            vm.prank(guardian);
            gateway.pause();
        } else if (how % 3 == 1) {
            vm.prank(vm.addr(_pk()));
            gateway.pause();
        } else {
            uint256 d = block.timestamp + 1 hours;
            gateway.pauseWithSignature(gateway.unpauseCount(), d, pauseSig(_pk(), gateway.unpauseCount(), d));
        }
        assertTrue(gateway.paused(), "pause never fails");
        _count("pause", true);
    }

    function proposeUnpause() external {
        bool success = gateway.paused();
        uint256 n = gateway.adminNonce();
        uint256 d = block.timestamp + 1 hours;
        bytes memory sig = unpauseSig(_pk(), n, d);
        if (!success) vm.expectRevert(Gateway.NotPaused.selector);
        bytes32 id = gateway.unpause(n, d, sig);
        assertEq(gateway.adminNonce(), success ? n + 1 : n, "a refused unpause uses no nonce");
        if (success) _admin.push(PendingAdmin(2, btcConfig(), n, d, 0, id, false));
        _count("unpauseProposed", success);
    }

    // ---- administration ----

    function configure(uint8 pick) external {
        if (pick % 4 != 0) return; // reconfigurations are rare
        Gateway.AssetConfig memory c = _config(pick % 8 == 0);
        (,, uint256 cap,,,,,) = gateway.assetConfig(address(btc));
        (bytes32 id, bool applied, uint256 n, uint256 d) = proposeConfig(_pk(), address(btc), c);
        assertEq(applied, c.mintCap <= cap, "tightening applies, loosening queues");
        if (!applied) _admin.push(PendingAdmin(1, c, n, d, 0, id, false));
        _count("configure", true);
    }

    function proposeRotation(uint256 to) external {
        if (to % 4 != 0) return; // rotations are rare
        to /= 4;
        uint256 next = to % 3;
        if (next == keyIndex) next = (next + 1) % 3;
        (bytes32 id, uint256 n, uint256 d) = GatewayBase.proposeRotation(_pk(), _keys[next]);
        _admin.push(PendingAdmin(3, btcConfig(), n, d, next, id, false));
        _count("rotationProposed", true);
    }

    function _adminOk(uint256 i) internal view returns (bool success) {
        PendingAdmin storage p = _admin[i];
        (Gateway.ActionStatus st, uint256 eta, uint32 e, uint32 tag) = gateway.actionState(p.id);
        (, uint32 epoch_,,) = gateway.signerSchedule();
        (,,, uint32 version) = gateway.assetState(address(btc));
        success = st == Gateway.ActionStatus.Queued && block.timestamp >= eta && e == epoch_;
        if (p.kind == 1) success = success && tag == version;
        if (p.kind == 2) success = success && tag == gateway.unpauseCount();
        if (p.kind == 3) success = success && vm.addr(_keys[p.newKeyIndex]) != gateway.activeSigner();
    }

    /// Three calls in four go to an administrative action predicted to execute, if any.
    function executeAdmin(uint256 idx) external {
        if (_admin.length == 0) return;
        uint256 i = idx % _admin.length;
        if (idx % 4 != 0) {
            for (uint256 k = 0; k < _admin.length; k++) {
                if (_adminOk((idx % _admin.length + k) % _admin.length)) {
                    i = (idx % _admin.length + k) % _admin.length;
                    break;
                }
            }
        }
        PendingAdmin storage p = _admin[i];
        bool success = _adminOk(i);
        if (!success) vm.expectRevert();
        if (p.kind == 1) gateway.executeConfigureAsset(address(btc), p.config, p.nonce, p.deadline);
        else if (p.kind == 2) gateway.executeUnpause(p.nonce, p.deadline);
        else gateway.executeRotation(vm.addr(_keys[p.newKeyIndex]), p.nonce, p.deadline);
        if (success) {
            p.done = true;
            if (p.kind == 3) keyIndex = p.newKeyIndex;
            if (p.kind == 1 && p.config.mintCap > maxCapEver) maxCapEver = p.config.mintCap;
        }
        bytes32 kind = p.kind == 1 ? bytes32("configure") : p.kind == 2 ? bytes32("unpause") : bytes32("rotation");
        _count(kind, success);
    }

    function warp(uint256 dt) external {
        vm.warp(block.timestamp + bound(dt, 0, 1 days));
    }
}

contract GatewayInvariantTest is GatewayBase {
    GatewayHandler internal handler;

    function setUp() public override {
        super.setUp();
        Gateway.AssetConfig memory c = btcConfig();
        c.supplyCeiling = 300e8;
        c.largeMintThreshold = 20e8;
        configure(GROUP_PK, address(btc), c);
        handler = new GatewayHandler(gateway, btc, guardian);
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    /// forge-config: default.invariant.depth = 100
    function invariant_gateway() public view {
        // Supply is exactly minted - burned + refunded: on the token, in the gateway's books, and
        // in the handler's independent ghost totals.
        uint256 ghost = handler.ghostMinted() - handler.ghostBurned() + handler.ghostRefunded();
        assertEq(btc.totalSupply(), ghost, "token supply");
        (uint256 supply,,,) = gateway.assetState(address(btc));
        assertEq(supply, ghost, "gateway supply");
        uint256 held;
        for (uint256 i = 0; i < 3; i++) held += btc.balanceOf(handler.holder(i));
        assertEq(held, ghost, "every token is a holder's");
        // Nothing is issued while paused.
        assertEq(handler.issuedWhilePaused(), 0, "issued while paused");
        // Rate: checked by the handler at every issuance against all earlier ones.
        assertEq(handler.rateViolations(), 0, "rate limit");
        // One mint per deposit: every successful mint was of a new deposit.
        assertEq(handler.totalIssued(), handler.ghostMinted() + handler.ghostRefunded(), "issuance ledger");
    }

    function afterInvariant() external {
        bytes32[] memory ks = handler.kinds();
        for (uint256 i = 0; i < ks.length; i++) {
            string memory k = _str(ks[i]);
            _total(string.concat("gateway ok ", k), string.concat("FP_INV_GATEWAY_OK_", k), handler.ok(ks[i]));
            _total(string.concat("gateway refused ", k), string.concat("FP_INV_GATEWAY_NO_", k), handler.refused(ks[i]));
        }
    }

    function _total(string memory label, string memory key, uint256 add) internal {
        uint256 total = vm.envOr(key, uint256(0)) + add;
        vm.setEnv(key, vm.toString(total));
        emit log_named_uint(string.concat("total ", label), total);
    }

    function _str(bytes32 b) internal pure returns (string memory s) {
        uint256 len;
        while (len < 32 && b[len] != 0) len++;
        bytes memory out = new bytes(len);
        for (uint256 i = 0; i < len; i++) out[i] = b[i];
        s = string(out);
    }
}
