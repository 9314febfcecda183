// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {GatewayBase} from "./GatewayBase.sol";
import {SettlementCheckpoints} from "../src/SettlementCheckpoints.sol";
import {StrictECDSA} from "../src/lib/StrictECDSA.sol";

/// @notice The checkpoint registry: only the next cycle, chained to the last root, non-zero, signed
///         (strictly) by the Gateway's active key.
/// @dev Digests are computed here from the EIP-712 definitions, not with the registry's helpers.
contract SettlementCheckpointsTest is GatewayBase {
    uint256 internal constant N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    bytes32 internal constant CHECKPOINT_TYPEHASH = keccak256(
        "Checkpoint(uint64 cycle,bytes32 prevRoot,bytes32 root,uint64 batchSeq,bytes32 batchHash,bytes32 totalsHash,uint64 timeMs)"
    );
    bytes32 internal constant GENESIS = keccak256("the empty ledger");

    SettlementCheckpoints internal registry;

    event CheckpointPublished(
        uint64 indexed cycle, bytes32 indexed root, bytes32 prevRoot, bytes32 batchHash, bytes32 totalsHash
    );

    function setUp() public override {
        super.setUp();
        registry = new SettlementCheckpoints(address(gateway), GENESIS);
    }

    // ---- EIP-712, from the standard ----

    function cpDigest(SettlementCheckpoints.Checkpoint memory c) internal view returns (bytes32) {
        return cpDigestAt(address(registry), c);
    }

    function cpDigestAt(address reg, SettlementCheckpoints.Checkpoint memory c) internal view returns (bytes32) {
        bytes32 domain = keccak256(
            abi.encode(
                DOMAIN_TYPEHASH,
                keccak256(bytes("FusionPrimeSettlement")),
                keccak256(bytes("1")),
                block.chainid,
                reg
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                CHECKPOINT_TYPEHASH, c.cycle, c.prevRoot, c.root, c.batchSeq, c.batchHash, c.totalsHash, c.timeMs
            )
        );
        return keccak256(abi.encodePacked(hex"1901", domain, structHash));
    }

    function cp(uint64 cycle, bytes32 prevRoot, bytes32 root)
        internal
        view
        returns (SettlementCheckpoints.Checkpoint memory)
    {
        return SettlementCheckpoints.Checkpoint({
            cycle: cycle,
            prevRoot: prevRoot,
            root: root,
            batchSeq: cycle,
            batchHash: keccak256(abi.encode("batch", cycle)),
            totalsHash: keccak256(abi.encode("totals", cycle)),
            timeMs: uint64(block.timestamp) * 1000
        });
    }

    function signCp(uint256 pk, SettlementCheckpoints.Checkpoint memory c) internal view returns (bytes memory) {
        return signPacked(pk, cpDigest(c));
    }

    function publishAs(uint256 pk, SettlementCheckpoints.Checkpoint memory c) internal {
        bytes memory sig = signCp(pk, c);
        vm.prank(relayer); // anyone relays
        registry.publish(c, sig);
    }

    // ---- tests ----

    function test_digestIsTheStandardOne() public view {
        SettlementCheckpoints.Checkpoint memory c = cp(1, GENESIS, keccak256("root 1"));
        assertEq(registry.checkpointDigest(c), cpDigest(c), "digest");
        assertEq(registry.CHECKPOINT_TYPEHASH(), CHECKPOINT_TYPEHASH, "typehash");
    }

    function test_publishesTwoCyclesInARow() public {
        assertEq(uint256(registry.lastCycle()), 0, "nothing yet");
        assertEq(registry.lastRoot(), GENESIS, "genesis before the first cycle");
        assertEq(registry.rootOf(0), GENESIS, "rootOf(0)");

        SettlementCheckpoints.Checkpoint memory c1 = cp(1, GENESIS, keccak256("root 1"));
        bytes memory sig = signCp(GROUP_PK, c1);
        vm.expectEmit(true, true, false, true, address(registry));
        emit CheckpointPublished(1, c1.root, GENESIS, c1.batchHash, c1.totalsHash);
        vm.prank(relayer);
        bytes32 digest = registry.publish(c1, sig);
        assertEq(digest, cpDigest(c1), "returned digest");
        assertEq(uint256(registry.lastCycle()), 1, "cycle 1");
        assertEq(registry.lastRoot(), c1.root, "last root");
        assertEq(registry.rootOf(1), c1.root, "rootOf(1)");
        assertEq(registry.rootOf(2), bytes32(0), "cycle 2 not yet");

        // an unchanged ledger: same root again, still the next cycle
        SettlementCheckpoints.Checkpoint memory c2 = cp(2, c1.root, c1.root);
        publishAs(GROUP_PK, c2);
        assertEq(uint256(registry.lastCycle()), 2, "cycle 2");
        assertEq(registry.rootOf(2), c1.root, "rootOf(2)");
    }

    function test_wrongSignerIsRefused() public {
        SettlementCheckpoints.Checkpoint memory c = cp(1, GENESIS, keccak256("root 1"));
        uint256 strangerPk = 0x5757;
        bytes memory sig = signCp(strangerPk, c);
        vm.expectRevert(
            abi.encodeWithSelector(SettlementCheckpoints.UnauthorizedSigner.selector, vm.addr(strangerPk), group)
        );
        registry.publish(c, sig);
        // a signature by the right key for another registry (another domain) is refused too
        SettlementCheckpoints other = new SettlementCheckpoints(address(gateway), GENESIS);
        bytes memory forOther = signPacked(GROUP_PK, cpDigestAt(address(other), c));
        vm.expectPartialRevert(SettlementCheckpoints.UnauthorizedSigner.selector); // recovers to another address
        registry.publish(c, forOther);
        other.publish(c, forOther);
    }

    function test_onlyTheNextCycle() public {
        SettlementCheckpoints.Checkpoint memory skip = cp(2, GENESIS, keccak256("root 2"));
        bytes memory sig = signCp(GROUP_PK, skip);
        vm.expectRevert(abi.encodeWithSelector(SettlementCheckpoints.CycleNotNext.selector, uint64(1), uint64(2)));
        registry.publish(skip, sig);
        SettlementCheckpoints.Checkpoint memory zero = cp(0, GENESIS, keccak256("root 0"));
        sig = signCp(GROUP_PK, zero);
        vm.expectRevert(abi.encodeWithSelector(SettlementCheckpoints.CycleNotNext.selector, uint64(1), uint64(0)));
        registry.publish(zero, sig);
    }

    function testFuzz_onlyTheNextCycle(uint64 cycle) public {
        publishAs(GROUP_PK, cp(1, GENESIS, keccak256("root 1")));
        vm.assume(cycle != 2);
        SettlementCheckpoints.Checkpoint memory c = cp(cycle, keccak256("root 1"), keccak256("root x"));
        bytes memory sig = signCp(GROUP_PK, c);
        vm.expectRevert(abi.encodeWithSelector(SettlementCheckpoints.CycleNotNext.selector, uint64(2), cycle));
        registry.publish(c, sig);
    }

    function test_wrongPrevRootIsRefused() public {
        SettlementCheckpoints.Checkpoint memory c = cp(1, keccak256("not genesis"), keccak256("root 1"));
        bytes memory sig = signCp(GROUP_PK, c);
        vm.expectRevert(
            abi.encodeWithSelector(SettlementCheckpoints.PrevRootMismatch.selector, GENESIS, keccak256("not genesis"))
        );
        registry.publish(c, sig);

        publishAs(GROUP_PK, cp(1, GENESIS, keccak256("root 1")));
        SettlementCheckpoints.Checkpoint memory fork = cp(2, GENESIS, keccak256("root 2"));
        sig = signCp(GROUP_PK, fork);
        vm.expectRevert(
            abi.encodeWithSelector(SettlementCheckpoints.PrevRootMismatch.selector, keccak256("root 1"), GENESIS)
        );
        registry.publish(fork, sig);
    }

    function test_zeroRootIsRefused() public {
        SettlementCheckpoints.Checkpoint memory c = cp(1, GENESIS, bytes32(0));
        bytes memory sig = signCp(GROUP_PK, c);
        vm.expectRevert(SettlementCheckpoints.ZeroRoot.selector);
        registry.publish(c, sig);
    }

    function test_replayIsRefused() public {
        SettlementCheckpoints.Checkpoint memory c1 = cp(1, GENESIS, keccak256("root 1"));
        bytes memory sig = signCp(GROUP_PK, c1);
        registry.publish(c1, sig);
        vm.expectRevert(abi.encodeWithSelector(SettlementCheckpoints.CycleNotNext.selector, uint64(2), uint64(1)));
        registry.publish(c1, sig);
        // a second, different root for a cycle already written is refused the same way
        SettlementCheckpoints.Checkpoint memory rewrite = cp(1, GENESIS, keccak256("other root 1"));
        sig = signCp(GROUP_PK, rewrite);
        vm.expectRevert(abi.encodeWithSelector(SettlementCheckpoints.CycleNotNext.selector, uint64(2), uint64(1)));
        registry.publish(rewrite, sig);
        assertEq(registry.rootOf(1), c1.root, "first root stays");
    }

    function test_malleatedHighSSignatureIsRefused() public {
        SettlementCheckpoints.Checkpoint memory c = cp(1, GENESIS, keccak256("root 1"));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(GROUP_PK, cpDigest(c));
        bytes32 highS = bytes32(N - uint256(s));
        bytes memory twin = abi.encodePacked(r, highS, v == 27 ? uint8(28) : uint8(27));
        assertEq(ecrecover(cpDigest(c), v == 27 ? 28 : 27, r, highS), group, "the twin is valid for bare ecrecover");
        vm.expectRevert(abi.encodeWithSelector(StrictECDSA.SignatureHighS.selector, highS));
        registry.publish(c, twin);
        bytes memory badV = abi.encodePacked(r, s, v - 27);
        vm.expectRevert(abi.encodeWithSelector(StrictECDSA.SignatureBadV.selector, v - 27));
        registry.publish(c, badV);
        registry.publish(c, abi.encodePacked(r, s, v)); // the canonical one passes
    }

    function test_afterARotationOnlyTheNewKeySigns() public {
        publishAs(GROUP_PK, cp(1, GENESIS, keccak256("root 1")));
        rotate(GROUP_PK, NEXT_GROUP_PK);
        // the old key is refused at once, even inside the Gateway's retention window for orders
        (,, address previous, uint256 until) = gateway.signerSchedule();
        assertEq(previous, group, "group retired");
        assertTrue(block.timestamp < until, "inside retention");
        SettlementCheckpoints.Checkpoint memory c2 = cp(2, keccak256("root 1"), keccak256("root 2"));
        bytes memory oldSig = signCp(GROUP_PK, c2);
        vm.expectRevert(abi.encodeWithSelector(SettlementCheckpoints.UnauthorizedSigner.selector, group, nextGroup));
        registry.publish(c2, oldSig);
        // the same checkpoint signed again by the new key goes through
        publishAs(NEXT_GROUP_PK, c2);
        assertEq(registry.rootOf(2), keccak256("root 2"), "published by the new key");
    }

    function test_constructorRefusesZeroAndNonContracts() public {
        vm.expectRevert(SettlementCheckpoints.ZeroAddress.selector);
        new SettlementCheckpoints(address(0), GENESIS);
        vm.expectRevert(abi.encodeWithSelector(SettlementCheckpoints.GatewayNotAContract.selector, alice));
        new SettlementCheckpoints(alice, GENESIS);
        vm.expectRevert(SettlementCheckpoints.ZeroRoot.selector);
        new SettlementCheckpoints(address(gateway), bytes32(0));
    }
}
