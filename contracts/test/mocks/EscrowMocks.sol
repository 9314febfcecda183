// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {SettlementEscrow} from "../../src/SettlementEscrow.sol";

/// @notice An ERC-20 that takes a 1% fee on every transfer (unsupported by the escrow).
contract FeeOnTransferToken is ERC20 {
    constructor() ERC20("Fee", "FEE") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (from != address(0) && to != address(0)) {
            uint256 fee = value / 100;
            super._update(from, address(0), fee);
            value -= fee;
        }
        super._update(from, to, value);
    }
}

/// @notice An ERC-20 whose transfers call back into the escrow, to prove the reentrancy guard.
contract ReentrantToken is ERC20 {
    address public target;
    bytes public callback;

    constructor() ERC20("Reenter", "RE") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function arm(address target_, bytes calldata callback_) external {
        target = target_;
        callback = callback_;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (target != address(0) && from == target) {
            (bool ok, bytes memory ret) = target.call(callback);
            if (!ok) {
                assembly ("memory-safe") {
                    revert(add(ret, 32), mload(ret))
                }
            }
        }
    }
}

/// @notice A contract wallet (think multisig desk): signs through ERC-1271 by its owner key and can
///         be told to refuse incoming ETH, as a hostile counterparty would to block a settlement.
contract DeskWallet is IERC1271 {
    address public immutable owner;
    bool public refuseEth = true;

    constructor(address owner_) {
        owner = owner_;
    }

    function setRefuseEth(bool value) external {
        refuseEth = value;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) return 0xffffffff;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        return ecrecover(hash, v, r, s) == owner ? IERC1271.isValidSignature.selector : bytes4(0xffffffff);
    }

    function approve(ERC20 token, address spender, uint256 amount) external {
        token.approve(spender, amount);
    }

    function fund(SettlementEscrow escrow, SettlementEscrow.Trade calldata t) external payable {
        escrow.fund{value: msg.value}(t);
    }

    function withdrawEth(SettlementEscrow escrow) external {
        escrow.withdrawEth();
    }

    function withdrawEthTo(SettlementEscrow escrow, address payable to) external {
        escrow.withdrawEthTo(to);
    }

    function abort(SettlementEscrow escrow, SettlementEscrow.Trade calldata t) external {
        escrow.abort(t);
    }

    /// @dev Accepting costs real gas (a cold storage write), like a smart-contract wallet's hook.
    uint256 public received;

    receive() external payable {
        if (refuseEth) revert("no ETH please");
        received += msg.value;
    }
}
