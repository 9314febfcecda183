// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {GatewayBase} from "./GatewayBase.sol";
import {Gateway} from "../src/Gateway.sol";
import {WrappedAsset} from "../src/WrappedAsset.sol";
import {StrictECDSA} from "../src/lib/StrictECDSA.sol";

contract GatewayMintTest is GatewayBase {
    bytes32 internal constant TXID = keccak256("deposit-1");

    // ---- EIP-712 conformance ----

    function test_domainSeparatorIsEip712WithChainIdAndAddress() public view {
        assertEq(gateway.domainSeparator(), domainOf(address(gateway), block.chainid), "domain separator");
        (bytes1 fields, string memory name, string memory version, uint256 chainId, address verifying,,) =
            gateway.eip712Domain();
        assertEq(uint8(fields), 0x0f, "EIP-5267 fields: name, version, chainId, verifyingContract");
        assertEq(keccak256(bytes(name)), keccak256("Fusion Prime Gateway"), "name");
        assertEq(keccak256(bytes(version)), keccak256("1"), "version");
        assertEq(chainId, block.chainid, "chainId");
        assertEq(verifying, address(gateway), "verifyingContract");
    }

    function test_orderDigestMatchesIndependentComputation() public view {
        Gateway.MintOrder memory o = order(TXID, 3, 1e8);
        assertEq(gateway.hashMintOrder(o), orderStructHash(o), "struct hash");
        assertEq(gateway.mintOrderDigest(o), orderDigest(o), "digest");
    }

    // ---- the happy path ----

    function test_mintByGroupKeyRelayedByAnyone() public {
        Gateway.MintOrder memory o = order(TXID, 0, 1.5e8);
        bytes32 depositId = keccak256(abi.encode(o.sourceChainId, o.sourceTxId, o.vout));
        vm.expectEmit(true, true, true, true, address(gateway));
        emit Gateway.Minted(
            depositId, address(btc), alice, 1.5e8, BTC_CHAIN, TXID, 0, o.nonce, orderDigest(o), group
        );
        bytes32 digest = mintAs(GROUP_PK, o);
        assertEq(digest, orderDigest(o), "returned digest");
        assertEq(btc.balanceOf(alice), 1.5e8, "recipient credited");
        assertEq(btc.totalSupply(), 1.5e8, "supply");
        assertEq(gateway.mintedDeposit(depositId), digest, "deposit marked with its order");
    }

    // ---- replays ----

    function test_replayedOrderReverts() public {
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        bytes memory sig = signOrder(GROUP_PK, o);
        bytes32 digest = gateway.mint(o, sig);
        bytes32 depositId = gateway.depositIdOf(o.sourceChainId, o.sourceTxId, o.vout);
        vm.expectRevert(abi.encodeWithSelector(Gateway.DepositAlreadyMinted.selector, depositId, digest));
        gateway.mint(o, sig);
        assertEq(btc.totalSupply(), 1e8, "minted once");
    }

    /// A second, differently-worded order for the same deposit (new nonce, amount, recipient,
    /// deadline) is still the same deposit: it must not mint again.
    function testFuzz_sameDepositNeverMintsTwice(uint256 nonce, uint256 amount, address recipient, uint256 extra)
        public
    {
        vm.assume(recipient != address(0));
        Gateway.MintOrder memory first = order(TXID, 7, 2e8);
        mintAs(GROUP_PK, first);
        Gateway.MintOrder memory second = order(TXID, 7, bound(amount, 1, CAP - 2e8));
        second.nonce = nonce;
        second.recipient = recipient;
        second.deadline = block.timestamp + bound(extra, 0, 30 days);
        bytes memory sig = signOrder(GROUP_PK, second);
        vm.expectPartialRevert(Gateway.DepositAlreadyMinted.selector);
        gateway.mint(second, sig);
        assertEq(btc.totalSupply(), 2e8, "supply unchanged");
    }

    function test_otherOutputOfSameTransactionMintsSeparately() public {
        mintAs(GROUP_PK, order(TXID, 0, 1e8));
        mintAs(GROUP_PK, order(TXID, 1, 1e8));
        assertEq(btc.totalSupply(), 2e8, "two outputs, two mints");
    }

    // ---- domain binding ----

    function test_orderForAnotherChainIdReverts() public {
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        // Signed for chain 8453, submitted here.
        bytes memory sig = signPacked(GROUP_PK, typedDigest(domainOf(address(gateway), 8453), orderStructHash(o)));
        vm.expectPartialRevert(Gateway.UnauthorizedSigner.selector);
        gateway.mint(o, sig);

        // Signed here, then the chain id changes (a fork): the domain is recomputed and it fails.
        bytes memory sigHere = signOrder(GROUP_PK, o);
        vm.chainId(31_338);
        vm.expectPartialRevert(Gateway.UnauthorizedSigner.selector);
        gateway.mint(o, sigHere);
    }

    function test_orderForAnotherGatewayReverts() public {
        Gateway other = new Gateway(group, guardian, ROTATION_DELAY, RETENTION);
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        bytes memory sig = signPacked(GROUP_PK, typedDigest(domainOf(address(other), block.chainid), orderStructHash(o)));
        vm.expectPartialRevert(Gateway.UnauthorizedSigner.selector);
        gateway.mint(o, sig);
    }

    /// Changing any single field after signing makes the signature worthless: every field is in
    /// the signed hash (including the asset to mint).
    function testFuzz_everyFieldIsSigned(uint8 field, uint256 delta) public {
        WrappedAsset eth = new WrappedAsset("Fusion Prime ETH", "fpETH", 18, address(gateway));
        configure(address(eth), 1000 ether, WINDOW, 0);
        Gateway.MintOrder memory o = order(TXID, 2, 1e8);
        bytes memory sig = signOrder(GROUP_PK, o);
        uint256 d = bound(delta, 1, 1e6);
        field = uint8(bound(field, 0, 7));
        if (field == 0) o.asset = address(eth);
        else if (field == 1) o.sourceChainId += d;
        else if (field == 2) o.sourceTxId = bytes32(uint256(o.sourceTxId) ^ d);
        // forge-lint: disable-next-line(unsafe-typecast) d <= 1e6 fits
        else if (field == 3) o.vout += uint32(d);
        // forge-lint: disable-next-line(unsafe-typecast) d <= 1e6 fits
        else if (field == 4) o.recipient = address(uint160(o.recipient) ^ uint160(d));
        else if (field == 5) o.amount += d;
        else if (field == 6) o.nonce += d;
        else o.deadline += d;
        vm.expectPartialRevert(Gateway.UnauthorizedSigner.selector);
        gateway.mint(o, sig);
    }

    // ---- time ----

    function test_expiredOrderReverts() public {
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.warp(o.deadline); // the deadline second itself is still valid
        gateway.mint(o, sig);

        Gateway.MintOrder memory late = order(keccak256("deposit-2"), 0, 1e8);
        bytes memory lateSig = signOrder(GROUP_PK, late);
        vm.warp(late.deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(Gateway.OrderExpired.selector, late.deadline, late.deadline + 1));
        gateway.mint(late, lateSig);
    }

    function testFuzz_expiredOrderReverts(uint256 lateness) public {
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.warp(o.deadline + bound(lateness, 1, 3650 days));
        vm.expectPartialRevert(Gateway.OrderExpired.selector);
        gateway.mint(o, sig);
    }

    // ---- signature form ----

    function testFuzz_highSSignatureReverts(uint256 pk, bytes32 txid) public {
        pk = bound(pk, 1, SECP256K1_N - 1);
        Gateway.MintOrder memory o = order(txid, 0, 1e8);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(GROUP_PK, orderDigest(o));
        // The malleable twin: (r, n - s) with the other parity recovers the same key.
        bytes32 highS = bytes32(SECP256K1_N - uint256(s));
        uint8 flippedV = v == 27 ? 28 : 27;
        assertEq(ecrecover(orderDigest(o), flippedV, r, highS), group, "twin recovers the group key");
        vm.expectRevert(abi.encodeWithSelector(StrictECDSA.SignatureHighS.selector, highS));
        gateway.mint(o, abi.encodePacked(r, highS, flippedV));

        // The same holds whoever signed.
        (v, r, s) = vm.sign(pk, orderDigest(o));
        highS = bytes32(SECP256K1_N - uint256(s));
        vm.expectRevert(abi.encodeWithSelector(StrictECDSA.SignatureHighS.selector, highS));
        gateway.mint(o, abi.encodePacked(r, highS, v == 27 ? uint8(28) : uint8(27)));
    }

    function testFuzz_vOutside27Or28Reverts(uint8 badV) public {
        vm.assume(badV != 27 && badV != 28);
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        (, bytes32 r, bytes32 s) = vm.sign(GROUP_PK, orderDigest(o));
        vm.expectRevert(abi.encodeWithSelector(StrictECDSA.SignatureBadV.selector, badV));
        gateway.mint(o, abi.encodePacked(r, s, badV));
    }

    function test_malformedSignaturesRevert() public {
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        bytes memory sig = signOrder(GROUP_PK, o);
        bytes memory short = new bytes(64);
        for (uint256 i = 0; i < 64; i++) short[i] = sig[i];
        vm.expectRevert(abi.encodeWithSelector(StrictECDSA.SignatureBadLength.selector, 64));
        gateway.mint(o, short);
        vm.expectRevert(StrictECDSA.SignatureUnrecoverable.selector);
        gateway.mint(o, abi.encodePacked(bytes32(0), bytes32(uint256(1)), uint8(27)));
    }

    function testFuzz_nonGroupKeyReverts(uint256 pk) public {
        pk = bound(pk, 1, SECP256K1_N - 1);
        vm.assume(pk != GROUP_PK);
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, vm.addr(pk)));
        gateway.mint(o, signOrder(pk, o));
    }

    // ---- caps ----

    function test_orderOverWindowCapReverts() public {
        mintAs(GROUP_PK, order(TXID, 0, CAP - 1e8));
        Gateway.MintOrder memory o = order(TXID, 1, 1e8 + 1);
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.expectRevert(abi.encodeWithSelector(Gateway.WindowCapExceeded.selector, address(btc), 1e8 + 1, 1e8));
        gateway.mint(o, sig);
        // Exactly filling the window is fine; the next window starts from zero.
        mintAs(GROUP_PK, order(TXID, 2, 1e8));
        (,,, uint256 used, uint256 remaining) = gateway.assetState(address(btc));
        assertEq(used, CAP, "window full");
        assertEq(remaining, 0, "nothing left");
        vm.warp((block.timestamp / WINDOW + 1) * WINDOW);
        mintAs(GROUP_PK, order(TXID, 3, CAP));
        assertEq(btc.totalSupply(), 2 * CAP, "two windows' worth");
    }

    function test_singleOrderAboveCapReverts() public {
        Gateway.MintOrder memory o = order(TXID, 0, CAP + 1);
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.expectRevert(abi.encodeWithSelector(Gateway.WindowCapExceeded.selector, address(btc), CAP + 1, CAP));
        gateway.mint(o, sig);
    }

    /// Whatever sequence of orders arrives within one window, the total minted never exceeds the
    /// cap, and an order succeeds exactly when it fits.
    function testFuzz_windowCapHolds(uint64[8] memory amounts) public {
        // forge-lint: disable-next-line(divide-before-multiply) rounding down to the window start is the point
        uint256 start = (block.timestamp / WINDOW) * WINDOW;
        uint256 minted;
        for (uint256 i = 0; i < amounts.length; i++) {
            vm.warp(start + i * 1 hours);
            uint256 amount = bound(amounts[i], 1, CAP / 2);
            // forge-lint: disable-next-line(unsafe-typecast) i < 8
            Gateway.MintOrder memory o = order(TXID, uint32(i), amount);
            bytes memory sig = signOrder(GROUP_PK, o);
            if (minted + amount <= CAP) {
                gateway.mint(o, sig);
                minted += amount;
            } else {
                vm.expectPartialRevert(Gateway.WindowCapExceeded.selector);
                gateway.mint(o, sig);
            }
            assertTrue(btc.totalSupply() <= CAP, "cap exceeded");
        }
        assertEq(btc.totalSupply(), minted, "supply = accepted orders");
    }

    function test_reconfiguringDoesNotResetTheWindow() public {
        mintAs(GROUP_PK, order(TXID, 0, CAP));
        configure(address(btc), CAP, WINDOW, MIN_BURN);
        Gateway.MintOrder memory o = order(TXID, 1, 1);
        o.deadline = block.timestamp + 30 days;
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.expectPartialRevert(Gateway.WindowCapExceeded.selector);
        gateway.mint(o, sig);
        // Lowering the cap to zero halts the asset.
        configure(address(btc), 0, WINDOW, MIN_BURN);
        vm.warp(block.timestamp + WINDOW);
        vm.expectPartialRevert(Gateway.WindowCapExceeded.selector);
        gateway.mint(o, sig);
    }

    function test_unconfiguredAssetReverts() public {
        WrappedAsset eth = new WrappedAsset("Fusion Prime ETH", "fpETH", 18, address(gateway));
        Gateway.MintOrder memory o = order(TXID, 0, 1 ether);
        o.asset = address(eth);
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.expectRevert(abi.encodeWithSelector(Gateway.AssetNotConfigured.selector, address(eth)));
        gateway.mint(o, sig);
    }

    function test_assetOfAnotherGatewayCannotBeConfigured() public {
        WrappedAsset foreign = new WrappedAsset("Foreign", "F", 18, address(0xdead));
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 h = keccak256(
            abi.encode(gateway.CONFIGURE_ASSET_TYPEHASH(), address(foreign), CAP, WINDOW, MIN_BURN, n, deadline)
        );
        bytes memory sig = adminSig(GROUP_PK, h);
        vm.expectRevert(abi.encodeWithSelector(Gateway.NotThisGateway.selector, address(foreign), address(0xdead)));
        gateway.configureAsset(address(foreign), CAP, WINDOW, MIN_BURN, n, deadline, sig);
    }

    // ---- pause ----

    function test_mintWhilePausedReverts() public {
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.prank(guardian);
        gateway.pause();
        vm.expectRevert(Gateway.GatewayPaused.selector);
        gateway.mint(o, sig);
        unpauseAs(GROUP_PK);
        gateway.mint(o, sig);
        assertEq(btc.balanceOf(alice), 1e8, "mints again after unpause");
    }

    function test_guardianCanPauseButNeverUnpause() public {
        vm.prank(guardian);
        gateway.pause();
        assertTrue(gateway.paused(), "paused");
        // The guardian has no unpause entry point; a guardian "signature" is not the group key.
        uint256 guardianPk = uint256(keccak256(bytes("guardian")));
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = pauseOrUnpauseSig(guardianPk, false, n, deadline);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, guardian));
        gateway.unpause(n, deadline, sig);
        assertTrue(gateway.paused(), "still paused");
    }

    function test_strangerCannotPause() public {
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(Gateway.NotGuardianOrSigner.selector, alice));
        gateway.pause();
    }

    function test_groupKeyPausesDirectlyOrBySignature() public {
        vm.prank(group);
        gateway.pause();
        assertTrue(gateway.paused(), "direct");
        unpauseAs(GROUP_PK);
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = pauseOrUnpauseSig(GROUP_PK, true, n, deadline);
        vm.prank(relayer);
        gateway.pauseWithSignature(n, deadline, sig);
        assertTrue(gateway.paused(), "relayed signature");
        // Replaying the same signed pause after an unpause fails: admin nonces are single-use.
        unpauseAs(GROUP_PK);
        vm.expectRevert(abi.encodeWithSelector(Gateway.BadAdminNonce.selector, n, n + 2));
        gateway.pauseWithSignature(n, deadline, sig);
    }

    function test_expiredAdminSignatureReverts() public {
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = pauseOrUnpauseSig(GROUP_PK, true, n, deadline);
        vm.warp(deadline + 1);
        vm.expectPartialRevert(Gateway.AuthorizationExpired.selector);
        gateway.pauseWithSignature(n, deadline, sig);
    }

    // ---- token access ----

    function test_onlyGatewayMintsAndBurns() public {
        vm.expectRevert(abi.encodeWithSelector(WrappedAsset.NotGateway.selector, address(this)));
        btc.mint(alice, 1);
        vm.expectRevert(abi.encodeWithSelector(WrappedAsset.NotGateway.selector, address(this)));
        btc.burn(alice, 1);
    }
}

contract GatewayBurnTest is GatewayBase {
    bytes internal constant DEST = bytes("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq");

    function setUp() public override {
        super.setUp();
        mintAs(GROUP_PK, order(keccak256("funding"), 0, 5e8));
    }

    function test_burnEmitsWhatWatchersNeed() public {
        bytes32 burnId = keccak256(abi.encode(block.chainid, address(gateway), uint256(1)));
        vm.expectEmit(true, true, true, true, address(gateway));
        emit Gateway.Burned(burnId, address(btc), alice, 1, 2e8, DEST);
        vm.prank(alice);
        uint256 burnNonce = gateway.burn(address(btc), 2e8, DEST);
        assertEq(burnNonce, 1, "first burn nonce");
        assertEq(gateway.burnIdOf(1), burnId, "burn id");
        assertEq(btc.balanceOf(alice), 3e8, "balance reduced");
        assertEq(btc.totalSupply(), 3e8, "supply reduced");

        vm.prank(alice);
        assertEq(gateway.burn(address(btc), 1e8, DEST), 2, "nonces are sequential");
    }

    function test_burnRejectsBadRequests() public {
        vm.startPrank(alice);
        vm.expectRevert(abi.encodeWithSelector(Gateway.BurnBelowMinimum.selector, MIN_BURN - 1, MIN_BURN));
        gateway.burn(address(btc), MIN_BURN - 1, DEST);
        vm.expectRevert(abi.encodeWithSelector(Gateway.InvalidDestinationLength.selector, 0));
        gateway.burn(address(btc), 1e8, "");
        vm.expectRevert(abi.encodeWithSelector(Gateway.InvalidDestinationLength.selector, 129));
        gateway.burn(address(btc), 1e8, new bytes(129));
        vm.expectRevert(abi.encodeWithSelector(Gateway.AssetNotConfigured.selector, address(0xbeef)));
        gateway.burn(address(0xbeef), 1e8, DEST);
        vm.expectRevert(); // ERC20InsufficientBalance: nobody burns more than they hold
        gateway.burn(address(btc), 6e8, DEST);
        vm.stopPrank();
        assertEq(gateway.burnCount(), 0, "no burn recorded");
    }

    function test_burnWhilePausedReverts() public {
        vm.prank(guardian);
        gateway.pause();
        vm.prank(alice);
        vm.expectRevert(Gateway.GatewayPaused.selector);
        gateway.burn(address(btc), 1e8, DEST);
    }

    function testFuzz_burnOnlyTakesFromTheCaller(address caller, uint256 amount) public {
        vm.assume(caller != alice && caller != address(0));
        amount = bound(amount, MIN_BURN, 5e8);
        vm.prank(caller);
        vm.expectRevert();
        gateway.burn(address(btc), amount, DEST);
        assertEq(btc.balanceOf(alice), 5e8, "alice untouched");
    }

    /// EIP-2612: a permit signed over the token's own domain sets an allowance, once.
    function test_permitFollowsEip2612() public {
        uint256 ownerPk = 0x0A11CE2;
        address owner = vm.addr(ownerPk);
        address spender = makeAddr("spender");
        bytes32 domain = keccak256(
            abi.encode(
                DOMAIN_TYPEHASH,
                keccak256(bytes("Fusion Prime BTC")),
                keccak256(bytes("1")),
                block.chainid,
                address(btc)
            )
        );
        assertEq(btc.DOMAIN_SEPARATOR(), domain, "token domain");
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                owner,
                spender,
                123,
                0,
                deadline
            )
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(ownerPk, typedDigest(domain, structHash));
        btc.permit(owner, spender, 123, deadline, v, r, s);
        assertEq(btc.allowance(owner, spender), 123, "allowance");
        assertEq(btc.nonces(owner), 1, "nonce consumed");
        vm.expectRevert();
        btc.permit(owner, spender, 123, deadline, v, r, s);
    }
}

contract GatewayRotationTest is GatewayBase {
    uint256 internal activatesAt;

    function setUp() public override {
        super.setUp();
        rotate(GROUP_PK, nextGroup);
        activatesAt = block.timestamp + ROTATION_DELAY;
    }

    function test_newKeyRefusedBeforeDelayAcceptedAfter() public {
        Gateway.MintOrder memory o = order(keccak256("d"), 0, 1e8);
        o.deadline = block.timestamp + 30 days;
        bytes memory sig = signOrder(NEXT_GROUP_PK, o);
        vm.warp(activatesAt - 1);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, nextGroup));
        gateway.mint(o, sig);
        assertEq(gateway.activeSigner(), group, "old key still active");

        vm.warp(activatesAt);
        assertEq(gateway.activeSigner(), nextGroup, "new key active");
        gateway.mint(o, sig);
    }

    function test_pendingKeyCannotAdministerBeforeActivation() public {
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = pauseOrUnpauseSig(NEXT_GROUP_PK, true, n, deadline);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, nextGroup));
        gateway.pauseWithSignature(n, deadline, sig);
    }

    function test_oldKeyWorksDuringRetentionNotAfter() public {
        Gateway.MintOrder memory during = order(keccak256("in-flight"), 0, 1e8);
        during.deadline = activatesAt + 30 days;
        Gateway.MintOrder memory afterwards = order(keccak256("late"), 0, 1e8);
        afterwards.deadline = activatesAt + 30 days;

        vm.warp(activatesAt + RETENTION - 1);
        gateway.mint(during, signOrder(GROUP_PK, during));
        assertEq(btc.balanceOf(alice), 1e8, "old key minted during retention");

        vm.warp(activatesAt + RETENTION);
        bytes memory sig = signOrder(GROUP_PK, afterwards);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, group));
        gateway.mint(afterwards, sig);
        // and the new key is what works now
        gateway.mint(afterwards, signOrder(NEXT_GROUP_PK, afterwards));
    }

    /// The schedule as a function of time, checked against its definition at any instant.
    function testFuzz_rotationSchedule(uint256 dt) public {
        dt = bound(dt, 0, ROTATION_DELAY + RETENTION + 10 days);
        vm.warp(block.timestamp + dt);
        bool activated = block.timestamp >= activatesAt;
        assertEq(gateway.acceptsMintSigner(nextGroup), activated, "new key iff activated");
        assertEq(
            gateway.acceptsMintSigner(group), block.timestamp < activatesAt + RETENTION, "old key until retention ends"
        );
        assertEq(gateway.acceptsMintSigner(vm.addr(0xE11)), false, "strangers never");
        // Recording the activation (by anyone) changes nothing observable.
        gateway.activateSigner();
        assertEq(gateway.acceptsMintSigner(nextGroup), activated, "after settle: new key");
        assertEq(gateway.acceptsMintSigner(group), block.timestamp < activatesAt + RETENTION, "after settle: old key");
    }

    function test_retiredKeyCannotAdministerDuringRetention() public {
        vm.warp(activatesAt + 1);
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = rotateSig(GROUP_PK, vm.addr(0xBAD), n, deadline);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, group));
        gateway.rotateSigner(vm.addr(0xBAD), n, deadline, sig);
    }

    function test_rotationMustBeSignedByCurrentKey() public {
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = rotateSig(0xBAD, vm.addr(0xBAD), n, deadline);
        vm.expectRevert(abi.encodeWithSelector(Gateway.UnauthorizedSigner.selector, vm.addr(0xBAD)));
        gateway.rotateSigner(vm.addr(0xBAD), n, deadline, sig);
    }

    function test_cancelledRotationNeverActivates() public {
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 h = keccak256(abi.encode(gateway.CANCEL_ROTATION_TYPEHASH(), nextGroup, n, deadline));
        gateway.cancelSignerRotation(nextGroup, n, deadline, adminSig(GROUP_PK, h));
        vm.warp(activatesAt + RETENTION + 1);
        assertEq(gateway.activeSigner(), group, "still the original key");
        assertEq(gateway.acceptsMintSigner(nextGroup), false, "cancelled key refused");
    }

    function test_newProposalReplacesPendingAndRestartsDelay() public {
        vm.warp(block.timestamp + 1 days);
        address third = vm.addr(0x3333);
        rotate(GROUP_PK, third);
        vm.warp(activatesAt);
        assertEq(gateway.activeSigner(), group, "replaced proposal did not activate");
        vm.warp(block.timestamp + 1 days);
        assertEq(gateway.activeSigner(), third, "new proposal activates after its own delay");
    }

    function test_activationIsRecordedWithItsTrueTime() public {
        vm.warp(activatesAt + 5 hours);
        vm.expectEmit(true, true, true, true, address(gateway));
        emit Gateway.SignerActivated(nextGroup, group, activatesAt, activatesAt + RETENTION);
        gateway.activateSigner();
        (address active, address previous, uint256 until, address pending,) = gateway.signerSchedule();
        assertEq(active, nextGroup, "active");
        assertEq(previous, group, "previous");
        assertEq(until, activatesAt + RETENTION, "retention measured from activation");
        assertEq(pending, address(0), "nothing pending");
    }
}
