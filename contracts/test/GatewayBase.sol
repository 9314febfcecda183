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
    uint256 internal constant ROTATION_DELAY = 2 days;
    uint256 internal constant RETENTION = 1 days;
    uint256 internal constant WINDOW = 1 days;
    uint256 internal constant CAP = 100e8; // 100 BTC per day
    uint256 internal constant MIN_BURN = 10_000; // sats
    uint256 internal constant BTC_CHAIN = uint256(keccak256("bip122:000000000019d6689c085ae165831e93"));

    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant ORDER_TYPEHASH = keccak256(
        "MintOrder(address asset,uint256 sourceChainId,bytes32 sourceTxId,uint32 vout,address recipient,uint256 amount,uint256 nonce,uint256 deadline)"
    );

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
        gateway = new Gateway(group, guardian, ROTATION_DELAY, RETENTION);
        btc = new WrappedAsset("Fusion Prime BTC", "fpBTC", 8, address(gateway));
        configure(address(btc), CAP, WINDOW, MIN_BURN);
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

    function orderStructHash(Gateway.MintOrder memory o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ORDER_TYPEHASH,
                o.asset,
                o.sourceChainId,
                o.sourceTxId,
                o.vout,
                o.recipient,
                o.amount,
                o.nonce,
                o.deadline
            )
        );
    }

    function orderDigest(Gateway.MintOrder memory o) internal view returns (bytes32) {
        return typedDigest(domainOf(address(gateway), block.chainid), orderStructHash(o));
    }

    function signOrder(uint256 pk, Gateway.MintOrder memory o) internal view returns (bytes memory) {
        return signPacked(pk, orderDigest(o));
    }

    function order(bytes32 txid, uint32 vout, uint256 amount) internal view returns (Gateway.MintOrder memory) {
        return Gateway.MintOrder({
            asset: address(btc),
            sourceChainId: BTC_CHAIN,
            sourceTxId: txid,
            vout: vout,
            recipient: alice,
            amount: amount,
            nonce: uint256(txid) ^ vout,
            deadline: block.timestamp + 1 hours
        });
    }

    function mintAs(uint256 pk, Gateway.MintOrder memory o) internal returns (bytes32) {
        bytes memory sig = signOrder(pk, o);
        vm.prank(relayer);
        return gateway.mint(o, sig);
    }

    // ---- administrative messages ----

    function adminSig(uint256 pk, bytes32 structHash) internal view returns (bytes memory) {
        return signPacked(pk, typedDigest(domainOf(address(gateway), block.chainid), structHash));
    }

    function configure(address asset, uint256 cap, uint256 window, uint256 minBurn) internal {
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 h = keccak256(
            abi.encode(
                keccak256(
                    "ConfigureAsset(address asset,uint256 windowCap,uint256 windowLength,uint256 minBurn,uint256 nonce,uint256 deadline)"
                ),
                asset,
                cap,
                window,
                minBurn,
                n,
                deadline
            )
        );
        gateway.configureAsset(asset, cap, window, minBurn, n, deadline, adminSig(GROUP_PK, h));
    }

    function rotateSig(uint256 pk, address newSigner, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        return adminSig(
            pk,
            keccak256(
                abi.encode(
                    keccak256("RotateSigner(address newSigner,uint256 nonce,uint256 deadline)"),
                    newSigner,
                    nonce,
                    deadline
                )
            )
        );
    }

    function rotate(uint256 pk, address newSigner) internal {
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        gateway.rotateSigner(newSigner, n, deadline, rotateSig(pk, newSigner, n, deadline));
    }

    function pauseOrUnpauseSig(uint256 pk, bool pause_, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes memory)
    {
        bytes32 typehash = pause_
            ? keccak256("Pause(uint256 nonce,uint256 deadline)")
            : keccak256("Unpause(uint256 nonce,uint256 deadline)");
        return adminSig(pk, keccak256(abi.encode(typehash, nonce, deadline)));
    }

    function unpauseAs(uint256 pk) internal {
        uint256 n = gateway.adminNonce();
        uint256 deadline = block.timestamp + 1 hours;
        gateway.unpause(n, deadline, pauseOrUnpauseSig(pk, false, n, deadline));
    }
}
