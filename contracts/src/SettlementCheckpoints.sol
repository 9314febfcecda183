// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {StrictECDSA} from "./lib/StrictECDSA.sol";

/// @notice What the registry needs from the Gateway: whose signature speaks for the group.
interface IGatewaySigner {
    function activeSigner() external view returns (address);
}

/// @title SettlementCheckpoints
/// @notice Public, append-only record of the prime-settlement ledger's checkpoints: per cycle, the
///         Merkle-sum root of every client balance, chained to the previous cycle's root and signed
///         by the group key. Clients check their balance proofs against a root published here.
/// @dev Trust model. The signature is the only authority: anyone may relay `publish`, and a relayer
///      can neither alter what was signed nor skip, reorder or fork the chain of roots — cycle
///      `n + 1` must name cycle `n`'s root as its `prevRoot`, and each cycle is written once.
///      Whose signature: the Gateway's *active* signer, read at publication. The previous key is
///      not accepted during the Gateway's retention window: a checkpoint states the ledger now and
///      carries no signer epoch, and a rotation is announced `ADMIN_DELAY` ahead, so the nodes
///      simply sign a not-yet-published checkpoint again with the new key (the digest does not
///      depend on the key). Accepting a retired key would only widen what a stolen old key can do.
///      A stolen active key can publish a false next root, which blocks the honest one (the chain
///      admits one root per cycle): that is public evidence of the compromise, signed by the key;
///      recovery is the Gateway's rotation plus a new registry whose genesis is the last good root.
///      A zero root is refused in the constructor and in `publish`: an unset root must never pass
///      as a proven one (the Nomad bridge, 2022).
///      EIP-712 domain: ("FusionPrimeSettlement", "1", chainId, this) — see contracts/README.md and
///      bridge/settlement/checkpoint.py, which builds the same digest.
contract SettlementCheckpoints is EIP712 {
    /// @notice One cycle's checkpoint (field meanings in bridge/settlement/checkpoint.py).
    /// @param cycle 1, 2, 3, … without gaps.
    /// @param prevRoot the previous cycle's root (the genesis root for cycle 1).
    /// @param root the ledger's Merkle-sum root after this cycle; never zero.
    /// @param batchSeq the last replicated batch the cycle includes.
    /// @param batchHash that batch's hash.
    /// @param totalsHash EIP-712 hash of the per-asset totals `AssetTotal(string asset,uint256 total,uint256 pending)[]`;
    ///        stored in the event only.
    /// @param timeMs the cycle's time (Unix milliseconds), as the nodes agreed it.
    struct Checkpoint {
        uint64 cycle;
        bytes32 prevRoot;
        bytes32 root;
        uint64 batchSeq;
        bytes32 batchHash;
        bytes32 totalsHash;
        uint64 timeMs;
    }

    bytes32 public constant CHECKPOINT_TYPEHASH = keccak256(
        "Checkpoint(uint64 cycle,bytes32 prevRoot,bytes32 root,uint64 batchSeq,bytes32 batchHash,bytes32 totalsHash,uint64 timeMs)"
    );

    /// @notice The Gateway whose active signer signs checkpoints.
    IGatewaySigner public immutable GATEWAY;
    /// @notice `prevRoot` of cycle 1 (the nodes use the empty ledger's root).
    bytes32 public immutable GENESIS_ROOT;

    uint64 private _lastCycle;
    mapping(uint64 cycle => bytes32 root) private _roots;

    /// @notice Cycle `cycle`'s root was published.
    event CheckpointPublished(
        uint64 indexed cycle, bytes32 indexed root, bytes32 prevRoot, bytes32 batchHash, bytes32 totalsHash
    );

    error ZeroAddress();
    error GatewayNotAContract(address gateway);
    error ZeroRoot();
    error CycleNotNext(uint64 expected, uint64 cycle);
    error PrevRootMismatch(bytes32 expected, bytes32 prevRoot);
    error UnauthorizedSigner(address recovered, address activeSigner);

    /// @param gateway the Gateway (its `activeSigner()` is the group key).
    /// @param genesisRoot `prevRoot` of cycle 1; not zero.
    constructor(address gateway, bytes32 genesisRoot) EIP712("FusionPrimeSettlement", "1") {
        if (gateway == address(0)) revert ZeroAddress();
        if (gateway.code.length == 0) revert GatewayNotAContract(gateway);
        if (genesisRoot == bytes32(0)) revert ZeroRoot();
        GATEWAY = IGatewaySigner(gateway);
        GENESIS_ROOT = genesisRoot;
    }

    /// @notice Record the next cycle's checkpoint. Anyone may relay it; the group key's signature
    ///         (65 bytes `r ‖ s ‖ v`, low-S, v ∈ {27, 28}) is what authorises it.
    /// @return digest the EIP-712 digest that was signed.
    function publish(Checkpoint calldata c, bytes calldata signature) external returns (bytes32 digest) {
        uint64 expected = _lastCycle + 1;
        if (c.cycle != expected) revert CycleNotNext(expected, c.cycle);
        bytes32 last = rootOf(_lastCycle);
        if (c.prevRoot != last) revert PrevRootMismatch(last, c.prevRoot);
        if (c.root == bytes32(0)) revert ZeroRoot();
        digest = _hashTypedDataV4(hashCheckpoint(c));
        address signer = StrictECDSA.recover(digest, signature);
        address active = GATEWAY.activeSigner();
        if (signer != active) revert UnauthorizedSigner(signer, active);
        _lastCycle = c.cycle;
        _roots[c.cycle] = c.root;
        emit CheckpointPublished(c.cycle, c.root, c.prevRoot, c.batchHash, c.totalsHash);
    }

    /// @notice The last published cycle (0 before the first).
    function lastCycle() external view returns (uint64) {
        return _lastCycle;
    }

    /// @notice The last published root (the genesis root before the first cycle).
    function lastRoot() external view returns (bytes32) {
        return rootOf(_lastCycle);
    }

    /// @notice Cycle `cycle`'s root: the genesis root for 0, zero for a cycle not published yet.
    function rootOf(uint64 cycle) public view returns (bytes32) {
        return cycle == 0 ? GENESIS_ROOT : _roots[cycle];
    }

    /// @notice `hashStruct(Checkpoint)`.
    function hashCheckpoint(Checkpoint calldata c) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                CHECKPOINT_TYPEHASH, c.cycle, c.prevRoot, c.root, c.batchSeq, c.batchHash, c.totalsHash, c.timeMs
            )
        );
    }

    /// @notice The digest the group signs for `c` on this chain and registry.
    function checkpointDigest(Checkpoint calldata c) external view returns (bytes32) {
        return _hashTypedDataV4(hashCheckpoint(c));
    }

    /// @notice This registry's EIP-712 domain separator.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }
}
