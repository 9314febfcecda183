// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "./base/Test.sol";
import {SettlementEscrow} from "../src/SettlementEscrow.sol";

/// @notice EIP-712 helpers for the escrow, computed from the standard rather than the contract.
abstract contract EscrowBase is Test {
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 internal constant TRADE_TYPEHASH = keccak256(
        "Trade(address partyA,address assetA,uint256 amountA,address partyB,address assetB,uint256 amountB,uint256 deadline,uint256 salt)"
    );
    bytes32 internal constant CANCEL_TYPEHASH = keccak256(
        "CancelTrade(Trade trade)Trade(address partyA,address assetA,uint256 amountA,address partyB,address assetB,uint256 amountB,uint256 deadline,uint256 salt)"
    );

    function escrowDomain(SettlementEscrow escrow) internal view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH,
                keccak256(bytes("Fusion Prime Settlement")),
                keccak256(bytes("1")),
                block.chainid,
                address(escrow)
            )
        );
    }

    function tradeHash(SettlementEscrow.Trade memory t) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                TRADE_TYPEHASH, t.partyA, t.assetA, t.amountA, t.partyB, t.assetB, t.amountB, t.deadline, t.salt
            )
        );
    }

    function tradeDigest(SettlementEscrow escrow, SettlementEscrow.Trade memory t) internal view returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", escrowDomain(escrow), tradeHash(t)));
    }

    function cancelDigestOf(SettlementEscrow escrow, SettlementEscrow.Trade memory t) internal view returns (bytes32) {
        return keccak256(
            abi.encodePacked(hex"1901", escrowDomain(escrow), keccak256(abi.encode(CANCEL_TYPEHASH, tradeHash(t))))
        );
    }
}
