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
        Gateway.RefundBurn memory r = refundOf(7, address(btc), alice, 5e7);
        assertEq(gateway.hashRefundBurn(r), refundStructHash(r), "refund struct hash");
        assertEq(gateway.refundDigest(r), digestOf(refundStructHash(r)), "refund digest");
        Gateway.AssetConfig memory c = btcConfig();
        assertEq(gateway.hashConfigureAsset(address(btc), c, 3, 4), configStructHash(address(btc), c, 3, 4), "config");
    }

    // ---- the happy path ----

    function test_mintByGroupKeyRelayedByAnyone() public {
        Gateway.MintOrder memory o = order(TXID, 0, 1.5e8);
        bytes32 depositId = keccak256(abi.encode(o.sourceChain, o.sourceTxId, o.vout));
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
        bytes32 depositId = gateway.depositIdOf(o.sourceChain, o.sourceTxId, o.vout);
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
        Gateway other = new Gateway(group, guardian, ADMIN_DELAY, GUARDIAN_DELAY, LARGE_MINT_DELAY, RETENTION);
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        bytes memory sig = signPacked(GROUP_PK, typedDigest(domainOf(address(other), block.chainid), orderStructHash(o)));
        vm.expectPartialRevert(Gateway.UnauthorizedSigner.selector);
        gateway.mint(o, sig);
    }

    /// Changing any single field after signing makes the signature worthless: every field is in
    /// the signed hash (including the asset to mint).
    function testFuzz_everyFieldIsSigned(uint8 field, uint256 delta) public {
        WrappedAsset eth = new WrappedAsset("Fusion Prime ETH", "fpETH", 18, address(gateway));
        Gateway.AssetConfig memory c = ethConfig();
        c.sourceChain = BTC_CAIP2; // same chain, so only the signature can tell the assets apart
        c.destinationKind = Gateway.DestinationKind.BitcoinAddress;
        configure(GROUP_PK, address(eth), c);
        Gateway.MintOrder memory o = order(TXID, 2, 1e8);
        o.deadline = block.timestamp + 1 hours;
        bytes memory sig = signOrder(GROUP_PK, o);
        uint256 d = bound(delta, 1, 1e6);
        field = uint8(bound(field, 0, 8));
        if (field == 0) o.asset = address(eth);
        else if (field == 1) o.sourceChain = bytes32(uint256(o.sourceChain) ^ d);
        else if (field == 2) o.sourceTxId = bytes32(uint256(o.sourceTxId) ^ d);
        // forge-lint: disable-next-line(unsafe-typecast) d <= 1e6 fits
        else if (field == 3) o.vout += uint32(d);
        // forge-lint: disable-next-line(unsafe-typecast) d <= 1e6 fits
        else if (field == 4) o.recipient = address(uint160(o.recipient) ^ uint160(d));
        else if (field == 5) o.amount += d;
        // forge-lint: disable-next-line(unsafe-typecast) d <= 1e6 fits
        else if (field == 6) o.signerEpoch += uint32(d);
        else if (field == 7) o.nonce += d;
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

    // ---- rate limit (token bucket), ceiling ----

    function test_orderOverWindowCapReverts() public {
        mintAs(GROUP_PK, order(TXID, 0, CAP - 1e8));
        Gateway.MintOrder memory o = order(TXID, 1, 1e8 + 1);
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.expectRevert(abi.encodeWithSelector(Gateway.WindowCapExceeded.selector, address(btc), 1e8 + 1, 1e8));
        gateway.mint(o, sig);
        // Exactly filling the cap is fine; it then refills at CAP per WINDOW.
        mintAs(GROUP_PK, order(TXID, 2, 1e8));
        (, uint256 remaining,,) = gateway.assetState(address(btc));
        assertEq(remaining, 0, "nothing left");
        vm.warp(block.timestamp + WINDOW / 4);
        (, remaining,,) = gateway.assetState(address(btc));
        assertEq(remaining, CAP / 4, "a quarter refilled after a quarter window");
        vm.warp(block.timestamp + WINDOW);
        mintAs(GROUP_PK, order(TXID, 3, CAP));
        assertEq(btc.totalSupply(), 2 * CAP, "two windows' worth");
    }

    /// An order above the cap is above the large-mint threshold too: it queues, and can never execute.
    function test_singleOrderAboveCapNeverMints() public {
        Gateway.MintOrder memory o = order(TXID, 0, CAP + 1);
        mintAs(GROUP_PK, o);
        vm.warp(block.timestamp + LARGE_MINT_DELAY);
        vm.expectRevert(abi.encodeWithSelector(Gateway.WindowCapExceeded.selector, address(btc), CAP + 1, CAP));
        gateway.executeMint(o);
    }

    /// Whatever sequence of orders arrives at whatever times, an order succeeds exactly when it fits
    /// the bucket (modelled here independently), and over any span the total minted is at most
    /// CAP + CAP * span / WINDOW.
    function testFuzz_rateLimitHolds(uint64[8] memory amounts, uint32[8] memory gaps) public {
        uint256 start = block.timestamp;
        uint256 levelAtLast; // the model's bucket level at its last charge
        uint256 last = block.timestamp;
        uint256 minted;
        for (uint256 i = 0; i < amounts.length; i++) {
            vm.warp(block.timestamp + bound(gaps[i], 0, WINDOW / 2));
            uint256 drained = CAP * (block.timestamp - last) / WINDOW;
            uint256 level = levelAtLast > drained ? levelAtLast - drained : 0;
            uint256 amount = bound(amounts[i], 1, CAP);
            // forge-lint: disable-next-line(unsafe-typecast) i < 8
            Gateway.MintOrder memory o = order(TXID, uint32(i), amount);
            bytes memory sig = signOrder(GROUP_PK, o);
            if (level + amount <= CAP) {
                gateway.mint(o, sig);
                minted += amount;
                levelAtLast = level + amount;
                last = block.timestamp;
            } else {
                vm.expectPartialRevert(Gateway.WindowCapExceeded.selector);
                gateway.mint(o, sig);
            }
            assertTrue(btc.totalSupply() <= CAP + CAP * (block.timestamp - start) / WINDOW, "rate exceeded");
        }
        assertEq(btc.totalSupply(), minted, "supply = accepted orders");
    }

    /// Changing the window length (or the cap) takes effect from now on: what was used stays used.
    function test_reconfiguringDoesNotResetTheLimit() public {
        mintAs(GROUP_PK, order(TXID, 0, CAP));
        // A longer window tightens: applied at once, and the bucket is still full.
        Gateway.AssetConfig memory c = btcConfig();
        c.windowLength = 2 * WINDOW;
        (, bool applied,,) = proposeConfig(GROUP_PK, address(btc), c);
        assertTrue(applied, "tightening applies at once");
        (, uint256 remaining,,) = gateway.assetState(address(btc));
        assertEq(remaining, 0, "still full after the change");
        Gateway.MintOrder memory o = order(TXID, 1, 1);
        o.deadline = block.timestamp + 30 days;
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.expectPartialRevert(Gateway.WindowCapExceeded.selector);
        gateway.mint(o, sig);
        vm.warp(block.timestamp + WINDOW);
        (, remaining,,) = gateway.assetState(address(btc));
        assertEq(remaining, CAP / 2, "refills at the new, slower rate");

        // A shorter window loosens: queued; at execution the bucket carries over too.
        c.windowLength = 1 hours;
        (, bool applied2, uint256 n, uint256 d) = proposeConfig(GROUP_PK, address(btc), c);
        assertTrue(!applied2, "loosening is queued");
        vm.warp(block.timestamp + ADMIN_DELAY);
        mintAs(GROUP_PK, order(TXID, 2, CAP));
        gateway.executeConfigureAsset(address(btc), c, n, d);
        (, remaining,,) = gateway.assetState(address(btc));
        assertEq(remaining, 0, "executing the change does not reset the bucket");
        vm.warp(block.timestamp + 360);
        (, remaining,,) = gateway.assetState(address(btc));
        assertEq(remaining, CAP / 10, "then refills per the new window");

        // A cap of zero halts the asset at once.
        c.mintCap = 0;
        (, bool applied3,,) = proposeConfig(GROUP_PK, address(btc), c);
        assertTrue(applied3, "halting applies at once");
        vm.warp(block.timestamp + 30 days);
        o = order(TXID, 9, 1);
        sig = signOrder(GROUP_PK, o);
        vm.expectPartialRevert(Gateway.WindowCapExceeded.selector);
        gateway.mint(o, sig);
    }

    function test_supplyCeilingHoldsAcrossWindows() public {
        Gateway.AssetConfig memory c = btcConfig();
        c.supplyCeiling = 150e8;
        configure(GROUP_PK, address(btc), c); // lower: applies at once
        mintAs(GROUP_PK, order(TXID, 0, CAP));
        vm.warp(block.timestamp + WINDOW);
        mintAs(GROUP_PK, order(TXID, 1, 50e8));
        vm.warp(block.timestamp + WINDOW);
        Gateway.MintOrder memory o = order(TXID, 2, 1);
        bytes memory sig = signOrder(GROUP_PK, o);
        vm.expectRevert(abi.encodeWithSelector(Gateway.SupplyCeilingExceeded.selector, address(btc), 150e8 + 1, 150e8));
        gateway.mint(o, sig);
        (uint256 supply, uint256 remaining,,) = gateway.assetState(address(btc));
        assertEq(supply, 150e8, "supply tracked");
        assertEq(remaining, 0, "the ceiling bounds what can be minted now");
        // Burning makes room again.
        vm.prank(alice);
        gateway.burn(address(btc), 1e8, bytes("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"));
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
        Gateway.AssetConfig memory c = ethConfig();
        bytes memory sig = adminSig(GROUP_PK, configStructHash(address(foreign), c, n, deadline));
        vm.expectRevert(abi.encodeWithSelector(Gateway.NotThisGateway.selector, address(foreign), address(0xdead)));
        gateway.configureAsset(address(foreign), c, n, deadline, sig);
    }

    // ---- canonical deposit ids ----

    /// The order must name the asset's own source chain in its one canonical encoding: another
    /// encoding of the same chain (the bare EIP-155 number, a CAIP-2 variant) is refused, so a
    /// deposit cannot be minted twice under two ids.
    function test_depositOnlyUnderTheAssetsCanonicalChainKey() public {
        mintAs(GROUP_PK, order(TXID, 0, 1e8));
        bytes32[3] memory variants = [
            bytes32(uint256(1)),
            keccak256("bip122:000000000019D6689C085AE165831E93"),
            keccak256("bip122:000000000019d6689c085ae165831e93 ")
        ];
        for (uint256 i = 0; i < variants.length; i++) {
            Gateway.MintOrder memory o = order(TXID, 0, 1e8);
            o.sourceChain = variants[i];
            bytes memory sig = signOrder(GROUP_PK, o);
            vm.expectRevert(abi.encodeWithSelector(Gateway.WrongSourceChain.selector, address(btc), variants[i], BTC_CHAIN));
            gateway.mint(o, sig);
        }
        assertEq(btc.totalSupply(), 1e8, "minted once");
    }

    function test_chainKeysAreCanonical() public {
        assertEq(gateway.chainKeyOf(BTC_CAIP2), BTC_CHAIN, "bitcoin mainnet");
        assertEq(gateway.chainKeyOf("eip155:1"), keccak256("eip155:1"), "ethereum");
        assertEq(gateway.chainKeyOf("eip155:8453"), keccak256("eip155:8453"), "base");
        assertEq(gateway.chainKeyOf("cosmos:cosmoshub-4"), keccak256("cosmos:cosmoshub-4"), "generic namespace");
        string[10] memory bad = [
            "eip155:01",
            "eip155:0",
            "eip155:0x1",
            "EIP155:1",
            "bip122:000000000019D6689C085AE165831E93",
            "bip122:000000000019d6689c085ae165831e9",
            "bip122:000000000019d6689c085ae165831e93a",
            "eip155",
            "ab:1",
            "cosmos:cosmos hub"
        ];
        for (uint256 i = 0; i < bad.length; i++) {
            vm.expectRevert(Gateway.InvalidChainId.selector);
            gateway.chainKeyOf(bad[i]);
        }
    }

    /// The first vector of contracts/test-vectors/deposit_ids.json (the Python test checks all of
    /// them against the contract): Bitcoin mainnet's genesis coinbase, output 0.
    function test_depositIdTestVector() public view {
        bytes32 id = gateway.depositIdOf(
            gateway.chainKeyOf(BTC_CAIP2), 0x4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b, 0
        );
        assertEq(id, 0x9747d4218a0fae382ac09951350ec2b91e03dfad9188c96ba07cb9d1563b9c22, "vector");
        assertEq(BTC_CHAIN, 0x6d0287c1b858c20eef48b10444a53c7ed5399e898d470671f127b49c54931377, "chain key");
    }

    function test_sourceChainIsFixedByTheFirstConfiguration() public {
        Gateway.AssetConfig memory c = btcConfig();
        c.sourceChain = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"; // regtest
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = adminSig(GROUP_PK, configStructHash(address(btc), c, n, deadline));
        vm.expectRevert(abi.encodeWithSelector(Gateway.SourceChainFixed.selector, address(btc)));
        gateway.configureAsset(address(btc), c, n, deadline, sig);
        c = btcConfig();
        c.destinationKind = Gateway.DestinationKind.EvmAddress;
        sig = adminSig(GROUP_PK, configStructHash(address(btc), c, n, deadline));
        vm.expectRevert(abi.encodeWithSelector(Gateway.SourceChainFixed.selector, address(btc)));
        gateway.configureAsset(address(btc), c, n, deadline, sig);
    }

    // ---- pause ----

    function test_mintWhilePausedReverts() public {
        Gateway.MintOrder memory o = order(TXID, 0, 1e8);
        o.deadline = block.timestamp + 30 days;
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
        bytes memory sig = unpauseSig(guardianPk, n, deadline);
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
        uint256 deadline = block.timestamp + 30 days;
        bytes memory sig = pauseSig(GROUP_PK, 1, deadline);
        vm.prank(relayer);
        gateway.pauseWithSignature(1, deadline, sig);
        assertTrue(gateway.paused(), "relayed signature");
        // Idempotent: relaying it again while paused is harmless, and uses no nonce.
        uint256 nonceBefore = gateway.adminNonce();
        gateway.pauseWithSignature(1, deadline, sig);
        assertEq(gateway.adminNonce(), nonceBefore, "no admin nonce used");
        // After the next unpause the same signature is spent: it cannot undo a deliberate reopening.
        unpauseAs(GROUP_PK);
        vm.expectRevert(abi.encodeWithSelector(Gateway.StalePause.selector, 1, 2));
        gateway.pauseWithSignature(1, deadline, sig);
    }

    /// Issue 13, defect 3: an earlier-signed administrative message relayed first must not make the
    /// emergency pause fail.
    function test_pauseIsNeverBlockedByAnAdminNonce() public {
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        Gateway.AssetConfig memory c = btcConfig();
        c.mintCap = CAP / 2;
        bytes memory configSig = adminSig(GROUP_PK, configStructHash(address(btc), c, n, deadline));
        bytes memory pSig = pauseSig(GROUP_PK, gateway.unpauseCount(), deadline);
        vm.prank(relayer);
        gateway.configureAsset(address(btc), c, n, deadline, configSig); // relayed first by anyone
        gateway.pauseWithSignature(gateway.unpauseCount(), deadline, pSig);
        assertTrue(gateway.paused(), "paused regardless");
    }

    function test_noOpUnpauseIsRefusedWithoutUsingTheNonce() public {
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = unpauseSig(GROUP_PK, n, deadline);
        vm.expectRevert(Gateway.NotPaused.selector);
        gateway.unpause(n, deadline, sig);
        assertEq(gateway.adminNonce(), n, "nonce unused");
    }

    function test_unpauseWaitsAndTheGuardianCanVetoIt() public {
        vm.prank(guardian);
        gateway.pause();
        (bytes32 id, uint256 n, uint256 d) = proposeUnpause(GROUP_PK);
        vm.warp(block.timestamp + ADMIN_DELAY - 1);
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionNotReady.selector, id, block.timestamp + 1));
        gateway.executeUnpause(n, d);
        vm.prank(guardian);
        gateway.veto(id);
        vm.warp(block.timestamp + 1);
        vm.expectRevert(abi.encodeWithSelector(Gateway.ActionNotQueued.selector, id, Gateway.ActionStatus.Vetoed));
        gateway.executeUnpause(n, d);
        assertTrue(gateway.paused(), "still paused");
    }

    function test_expiredAdminSignatureReverts() public {
        uint256 deadline = block.timestamp + 1 hours;
        bytes memory sig = pauseSig(GROUP_PK, 0, deadline);
        vm.warp(deadline + 1);
        vm.expectPartialRevert(Gateway.AuthorizationExpired.selector);
        gateway.pauseWithSignature(0, deadline, sig);
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
        vm.expectRevert(abi.encodeWithSelector(Gateway.AssetNotConfigured.selector, address(0xbeef)));
        gateway.burn(address(0xbeef), 1e8, DEST);
        vm.expectRevert(); // ERC20InsufficientBalance: nobody burns more than they hold
        gateway.burn(address(btc), 6e8, DEST);
        vm.stopPrank();
        assertEq(gateway.burnCount(), 0, "no burn recorded");
    }

    /// A Bitcoin asset's destination is 26-90 ASCII letters and digits; anything else is refused.
    function test_bitcoinDestinationsAreChecked() public {
        bytes[6] memory bad = [
            bytes(""),
            new bytes(20), // 20 zero bytes: an EVM-style address is no Bitcoin destination
            bytes("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5md "), // a space
            bytes("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq\n"),
            bytes("1BoatSLRHtKNngkdXEeobR76b53L"), // 28 chars: fine, checked below as good
            new bytes(91)
        ];
        for (uint256 i = 0; i < bad.length; i++) {
            if (i == 4) continue;
            vm.prank(alice);
            vm.expectRevert(
                abi.encodeWithSelector(
                    Gateway.InvalidDestination.selector, Gateway.DestinationKind.BitcoinAddress, bad[i].length
                )
            );
            gateway.burn(address(btc), 1e8, bad[i]);
        }
        bytes memory longest = new bytes(90);
        for (uint256 i = 0; i < 90; i++) longest[i] = "q";
        vm.startPrank(alice);
        gateway.burn(address(btc), 1e8, longest);
        gateway.burn(address(btc), 1e8, bad[4]);
        gateway.burn(address(btc), 1e8, bytes("bcrt1q6rhpng9evdsfnn833a4f4vej0asu6dk5srld6x"));
        vm.stopPrank();
    }

    /// An EVM asset's destination is exactly 20 bytes, not zero and not a precompile.
    function test_evmDestinationsAreChecked() public {
        WrappedAsset eth = new WrappedAsset("Fusion Prime ETH", "fpETH", 18, address(gateway));
        configure(GROUP_PK, address(eth), ethConfig());
        Gateway.MintOrder memory o = order(keccak256("eth-deposit"), 0, 1 ether);
        o.asset = address(eth);
        o.sourceChain = keccak256("eip155:1");
        mintAs(GROUP_PK, o);
        bytes[5] memory bad = [
            abi.encodePacked(address(0)), // the issue's 20 zero bytes
            abi.encodePacked(address(0x1)), // ecrecover precompile
            abi.encodePacked(address(0xffff)),
            DEST, // a Bitcoin address for an ETH payout
            abi.encodePacked(bytes32(uint256(uint160(alice)))) // 32 bytes
        ];
        for (uint256 i = 0; i < bad.length; i++) {
            vm.prank(alice);
            vm.expectRevert(
                abi.encodeWithSelector(Gateway.InvalidDestination.selector, Gateway.DestinationKind.EvmAddress, bad[i].length)
            );
            gateway.burn(address(eth), 0.1 ether, bad[i]);
        }
        vm.prank(alice);
        gateway.burn(address(eth), 0.1 ether, abi.encodePacked(alice));
        assertEq(eth.balanceOf(alice), 0.9 ether, "burned once");
    }

    /// Payouts are bounded on-chain: at most BURN_CAP per WINDOW (refilling continuously).
    function test_burnRateLimit() public {
        // 5e8 minted in setUp; give alice enough to hit the burn cap.
        mintAs(GROUP_PK, order(keccak256("more"), 0, CAP - 5e8));
        vm.warp(block.timestamp + WINDOW);
        mintAs(GROUP_PK, order(keccak256("more"), 1, 50e8));
        vm.startPrank(alice);
        gateway.burn(address(btc), BURN_CAP - 1e8, DEST);
        vm.expectRevert(abi.encodeWithSelector(Gateway.BurnCapExceeded.selector, address(btc), 1e8 + 1, 1e8));
        gateway.burn(address(btc), 1e8 + 1, DEST);
        gateway.burn(address(btc), 1e8, DEST);
        vm.warp(block.timestamp + WINDOW / 10);
        (,, uint256 burnRemaining,) = gateway.assetState(address(btc));
        assertEq(burnRemaining, BURN_CAP / 10, "refills continuously");
        gateway.burn(address(btc), BURN_CAP / 10, DEST);
        vm.stopPrank();
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

