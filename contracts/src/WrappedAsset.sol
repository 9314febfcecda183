// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title WrappedAsset
/// @notice An ERC-20 claim on an asset held in Fusion Prime custody (BTC, ETH on another chain, …),
///         with EIP-2612 `permit`.
/// @dev Supply changes only through the {Gateway} fixed at construction:
///      - `mint` is called by the gateway after it has verified a group-signed deposit order, so
///        every token in existence is backed by a deposit the custody network observed;
///      - `burn` is called by the gateway when a holder burns *with a payout destination*. There is
///        deliberately no public `burn`: a burn that names no destination would destroy the claim
///        while the custody keeps the coins, and the nodes would have nothing to pay out to.
///      The gateway is immutable: re-pointing a live token at another minter is exactly the
///      capability an attacker would want, and a migration is better done as a new token.
///      EIP-2612: OpenZeppelin's ERC20Permit, whose EIP-712 domain is
///      (name = token name, version = "1", chainId, verifyingContract = this token); `permit`
///      rejects expired deadlines and high-S signatures, and nonces are per owner and sequential.
contract WrappedAsset is ERC20, ERC20Permit {
    /// @notice The only address allowed to mint and burn.
    address public immutable gateway;

    /// @dev Decimals of the underlying (8 for BTC, 18 for ETH) so amounts are 1:1 with custody.
    uint8 private immutable _DECIMALS;

    /// @notice The caller is not the gateway.
    error NotGateway(address caller);
    /// @notice The gateway address given at deployment is zero.
    error ZeroGateway();

    modifier onlyGateway() {
        if (msg.sender != gateway) revert NotGateway(msg.sender);
        _;
    }

    /// @param name_ ERC-20 name, also the EIP-712 domain name used by `permit`.
    /// @param symbol_ ERC-20 symbol.
    /// @param decimals_ decimals of the custodied asset, so one base unit here is one base unit there.
    /// @param gateway_ the {Gateway} that will mint and burn.
    constructor(string memory name_, string memory symbol_, uint8 decimals_, address gateway_)
        ERC20(name_, symbol_)
        ERC20Permit(name_)
    {
        if (gateway_ == address(0)) revert ZeroGateway();
        gateway = gateway_;
        _DECIMALS = decimals_;
    }

    /// @inheritdoc ERC20
    function decimals() public view override returns (uint8) {
        return _DECIMALS;
    }

    /// @notice Mint `amount` to `to`. Gateway only, after it has verified a mint order.
    function mint(address to, uint256 amount) external onlyGateway {
        _mint(to, amount);
    }

    /// @notice Burn `amount` from `from`. Gateway only; the gateway passes its own caller as `from`,
    ///         so a holder can only ever burn their own balance, and no allowance is needed.
    function burn(address from, uint256 amount) external onlyGateway {
        _burn(from, amount);
    }
}
