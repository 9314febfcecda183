// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "./base/Test.sol";
import {Gateway} from "../src/Gateway.sol";
import {WrappedAsset} from "../src/WrappedAsset.sol";

/// @notice Shared fixture: a gateway whose group key is a plain test key, with fpBTC configured.
/// @dev Digests are computed here from the EIP-712 definitions, independently of the contract's
///      own helpers, so a test signs what the standard says and not what the contract computes.
abstract contract GatewayBase is Test {
    uint256 internal constant GROUP_PK = 0xA11CE;
    uint256 internal constant NEXT_GROUP_PK = 0xB0B;
    uint256 internal constant ADMIN_DELAY = 2 days;
    uint256 internal constant GUARDIAN_DELAY = 14 days;
    uint256 internal constant LARGE_MINT_DELAY = 3 hours;
    uint256 internal constant RETENTION = 1 days;
    uint256 internal constant WINDOW = 1 days;
    uint256 internal constant CAP = 100e8; // 100 BTC per day
    uint256 internal constant BURN_CAP = 100e8;
    uint256 internal constant CEILING = 1_000e8;
    uint256 internal constant MIN_BURN = 10_000; // sats
    string internal constant BTC_CAIP2 = "bip122:000000000019d6689c085ae165831e93";
    bytes32 internal constant BTC_CHAIN = keccak256("bip122:000000000019d6689c085ae165831e93");
    string internal constant ETH_CAIP2 = "eip155:1";

    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant ORDER_TYPEHASH = keccak256(
        "MintOrder(address asset,bytes32 sourceChain,bytes32 sourceTxId,uint32 vout,address recipient,uint256 amount,uint32 signerEpoch,uint256 nonce,uint256 deadline)"
    );
    bytes32 internal constant REFUND_TYPEHASH = keccak256(
        "RefundBurn(uint256 burnNonce,address asset,address burner,uint256 amount,uint32 signerEpoch,uint256 deadline)"
    );
    string internal constant CONFIG_TYPE =
        "AssetConfig(string sourceChain,uint8 destinationKind,uint256 mintCap,uint256 burnCap,uint256 windowLength,uint256 supplyCeiling,uint256 largeMintThreshold,uint256 minBurn)";

    Gateway internal gateway;
    WrappedAsset internal btc;
    address internal group;
    address internal nextGroup;
    address internal guardian;
    address internal alice;
    address internal relayer;

    function setUp() public virtual {
        vm.warp(1_750_000_000);
        group = vm.addr(GROUP_PK);
        nextGroup = vm.addr(NEXT_GROUP_PK);
        guardian = makeAddr("guardian");
        alice = makeAddr("alice");
        relayer = makeAddr("relayer");
        gateway = new Gateway(group, guardian, ADMIN_DELAY, GUARDIAN_DELAY, LARGE_MINT_DELAY, RETENTION);
        btc = new WrappedAsset("Fusion Prime BTC", "fpBTC", 8, address(gateway));
        configure(GROUP_PK, address(btc), btcConfig());
    }

    // ---- EIP-712, computed from the standard ----

    function domainOf(address verifyingContract, uint256 chainId) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH,
                keccak256(bytes("Fusion Prime Gateway")),
                keccak256(bytes("1")),
                chainId,
                verifyingContract
            )
        );
    }

    function typedDigest(bytes32 domain, bytes32 structHash) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", domain, structHash));
    }

    function digestOf(bytes32 structHash) internal view returns (bytes32) {
        return typedDigest(domainOf(address(gateway), block.chainid), structHash);
    }

    function orderStructHash(Gateway.MintOrder memory o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ORDER_TYPEHASH,
                o.asset,
                o.sourceChain,
                o.sourceTxId,
                o.vout,
                o.recipient,
                o.amount,
                o.signerEpoch,
                o.nonce,
                o.deadline
            )
        );
    }

    function orderDigest(Gateway.MintOrder memory o) internal view returns (bytes32) {
        return digestOf(orderStructHash(o));
    }

    function signOrder(uint256 pk, Gateway.MintOrder memory o) internal view returns (bytes memory) {
        return signPacked(pk, orderDigest(o));
    }

    function epoch() internal view returns (uint32 e) {
        (, e,,) = gateway.signerSchedule();
    }

    function order(bytes32 txid, uint32 vout, uint256 amount) internal view returns (Gateway.MintOrder memory) {
        return Gateway.MintOrder({
            asset: address(btc),
            sourceChain: BTC_CHAIN,
            sourceTxId: txid,
            vout: vout,
            recipient: alice,
            amount: amount,
            signerEpoch: epoch(),
            nonce: uint256(txid) ^ vout,
            deadline: block.timestamp + 1 hours
        });
    }

    function mintAs(uint256 pk, Gateway.MintOrder memory o) internal returns (bytes32) {
        bytes memory sig = signOrder(pk, o);
        vm.prank(relayer);
        return gateway.mint(o, sig);
    }

    function refundStructHash(Gateway.RefundBurn memory r) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(REFUND_TYPEHASH, r.burnNonce, r.asset, r.burner, r.amount, r.signerEpoch, r.deadline)
        );
    }

    function refundOf(uint256 burnNonce, address asset, address burner, uint256 amount)
        internal
        view
        returns (Gateway.RefundBurn memory)
    {
        return Gateway.RefundBurn({
            burnNonce: burnNonce,
            asset: asset,
            burner: burner,
            amount: amount,
            signerEpoch: epoch(),
            deadline: block.timestamp + 1 hours
        });
    }

    function signRefund(uint256 pk, Gateway.RefundBurn memory r) internal view returns (bytes memory) {
        return signPacked(pk, digestOf(refundStructHash(r)));
    }

    // ---- asset configuration ----

    function btcConfig() internal pure returns (Gateway.AssetConfig memory) {
        return Gateway.AssetConfig({
            sourceChain: BTC_CAIP2,
            destinationKind: Gateway.DestinationKind.BitcoinAddress,
            mintCap: CAP,
            burnCap: BURN_CAP,
            windowLength: WINDOW,
            supplyCeiling: CEILING,
            largeMintThreshold: CAP, // nothing waits by default; tests that need it lower it
            minBurn: MIN_BURN
        });
    }

    function ethConfig() internal pure returns (Gateway.AssetConfig memory) {
        return Gateway.AssetConfig({
            sourceChain: ETH_CAIP2,
            destinationKind: Gateway.DestinationKind.EvmAddress,
            mintCap: 1_000 ether,
            burnCap: 1_000 ether,
            windowLength: WINDOW,
            supplyCeiling: 10_000 ether,
            largeMintThreshold: 1_000 ether,
            minBurn: 0.001 ether
        });
    }

    function configStructHash(address asset, Gateway.AssetConfig memory c, uint256 nonce, uint256 deadline)
        internal
        pure
        returns (bytes32)
    {
        bytes32 inner = keccak256(
            abi.encode(
                keccak256(bytes(CONFIG_TYPE)),
                keccak256(bytes(c.sourceChain)),
                uint8(c.destinationKind),
                c.mintCap,
                c.burnCap,
                c.windowLength,
                c.supplyCeiling,
                c.largeMintThreshold,
                c.minBurn
            )
        );
        return keccak256(
            abi.encode(
                keccak256(
                    abi.encodePacked(
                        "ConfigureAsset(address asset,AssetConfig config,uint256 nonce,uint256 deadline)", CONFIG_TYPE
                    )
                ),
                asset,
                inner,
                nonce,
                deadline
            )
        );
    }

    /// Sign and submit a configuration; returns the action id, whether it applied at once, and the
    /// nonce/deadline needed to execute it if it was queued.
    function proposeConfig(uint256 pk, address asset, Gateway.AssetConfig memory c)
        internal
        returns (bytes32 id, bool applied, uint256 nonce, uint256 deadline)
    {
        nonce = gateway.adminNonce();
        deadline = block.timestamp + 1 hours;
        bytes memory sig = signPacked(pk, digestOf(configStructHash(asset, c, nonce, deadline)));
        (id, applied) = gateway.configureAsset(asset, c, nonce, deadline, sig);
    }

    /// Configure, waiting out the delay if the change is queued.
    function configure(uint256 pk, address asset, Gateway.AssetConfig memory c) internal {
        (, bool applied, uint256 nonce, uint256 deadline) = proposeConfig(pk, asset, c);
        if (!applied) {
            vm.warp(block.timestamp + ADMIN_DELAY);
            gateway.executeConfigureAsset(asset, c, nonce, deadline);
        }
    }

    // ---- administrative messages ----

    function adminSig(uint256 pk, bytes32 structHash) internal view returns (bytes memory) {
        return signPacked(pk, digestOf(structHash));
    }

    function rotateHash(address newSigner, uint256 nonce, uint256 deadline) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("RotateSigner(address newSigner,uint256 nonce,uint256 deadline)"), newSigner, nonce, deadline
            )
        );
    }

    /// Propose a rotation from the key `pk` to the key `newPk` (both sign the same digest).
    function proposeRotation(uint256 pk, uint256 newPk) internal returns (bytes32 id, uint256 nonce, uint256 deadline) {
        nonce = gateway.adminNonce();
        deadline = block.timestamp + 1 hours;
        address newSigner = vm.addr(newPk);
        bytes32 h = rotateHash(newSigner, nonce, deadline);
        id = gateway.rotateSigner(newSigner, nonce, deadline, adminSig(pk, h), adminSig(newPk, h));
    }

    /// Propose, wait out the delay, execute.
    function rotate(uint256 pk, uint256 newPk) internal {
        (, uint256 nonce, uint256 deadline) = proposeRotation(pk, newPk);
        vm.warp(block.timestamp + ADMIN_DELAY);
        gateway.executeRotation(vm.addr(newPk), nonce, deadline);
    }

    function pauseSig(uint256 pk, uint256 unpauses, uint256 deadline) internal view returns (bytes memory) {
        return adminSig(pk, keccak256(abi.encode(keccak256("Pause(uint256 unpauseCount,uint256 deadline)"), unpauses, deadline)));
    }

    function unpauseSig(uint256 pk, uint256 nonce, uint256 deadline) internal view returns (bytes memory) {
        return adminSig(pk, keccak256(abi.encode(keccak256("Unpause(uint256 nonce,uint256 deadline)"), nonce, deadline)));
    }

    function proposeUnpause(uint256 pk) internal returns (bytes32 id, uint256 nonce, uint256 deadline) {
        nonce = gateway.adminNonce();
        deadline = block.timestamp + 1 hours;
        id = gateway.unpause(nonce, deadline, unpauseSig(pk, nonce, deadline));
    }

    /// Propose an unpause, wait out the delay, execute.
    function unpauseAs(uint256 pk) internal {
        (, uint256 nonce, uint256 deadline) = proposeUnpause(pk);
        vm.warp(block.timestamp + ADMIN_DELAY);
        gateway.executeUnpause(nonce, deadline);
    }

    function guardianHash(address newGuardian, uint256 nonce, uint256 deadline) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("SetGuardian(address guardian,uint256 nonce,uint256 deadline)"), newGuardian, nonce, deadline
            )
        );
    }

    function proposeGuardian(uint256 pk, address newGuardian)
        internal
        returns (bytes32 id, uint256 nonce, uint256 deadline)
    {
        nonce = gateway.adminNonce();
        deadline = block.timestamp + 1 hours;
        id = gateway.setGuardian(newGuardian, nonce, deadline, adminSig(pk, guardianHash(newGuardian, nonce, deadline)));
    }
}
