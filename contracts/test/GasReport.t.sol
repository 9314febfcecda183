// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {GatewayBase} from "./GatewayBase.sol";
import {Gateway} from "../src/Gateway.sol";
import {SettlementEscrow} from "../src/SettlementEscrow.sol";
import {MockERC20} from "./mocks/MockERC20.sol";

/// @notice Logs the execution gas of mint, burn, refund and settle (cold storage, as in a fresh
///         transaction; excludes the 21,000 intrinsic gas and calldata, which the anvil test in
///         tests/contracts reports as full transaction gas). Run `forge test -vv --mc GasReport`.
contract GasReportTest is GatewayBase {
    function test_gasMintBurnSettle() public {
        Gateway.MintOrder memory o = order(keccak256("gas"), 0, 1e8);
        bytes memory sig = signOrder(GROUP_PK, o);
        uint256 g = gasleft();
        gateway.mint(o, sig);
        uint256 mintGas = g - gasleft();
        emit log_named_uint("gas Gateway.mint (new recipient)", mintGas);

        vm.prank(alice);
        g = gasleft();
        gateway.burn(address(btc), 0.5e8, bytes("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"));
        uint256 burnGas = g - gasleft();
        emit log_named_uint("gas Gateway.burn (bech32 destination)", burnGas);

        Gateway.RefundBurn memory r = refundOf(1, address(btc), alice, 0.5e8);
        bytes memory refundSig = signRefund(GROUP_PK, r);
        g = gasleft();
        gateway.refund(r, refundSig);
        uint256 refundGas = g - gasleft();
        emit log_named_uint("gas Gateway.refund", refundGas);

        SettlementEscrow escrow = new SettlementEscrow();
        MockERC20 usdc = new MockERC20("USD Coin", "USDC");
        MockERC20 wbtc = new MockERC20("Wrapped BTC", "WBTC");
        (uint256 aPk, uint256 bPk) = (0xA, 0xB);
        SettlementEscrow.Trade memory t = SettlementEscrow.Trade({
            partyA: vm.addr(aPk),
            assetA: address(wbtc),
            amountA: 2e8,
            partyB: vm.addr(bPk),
            assetB: address(usdc),
            amountB: 130_000e6,
            deadline: block.timestamp + 1 days,
            salt: 1
        });
        bytes32 d = escrow.tradeId(t);
        escrow.open(t, signPacked(aPk, d), signPacked(bPk, d));
        wbtc.mint(t.partyA, t.amountA);
        usdc.mint(t.partyB, t.amountB);
        vm.startPrank(t.partyA);
        wbtc.approve(address(escrow), t.amountA);
        escrow.fund(t);
        vm.stopPrank();
        vm.startPrank(t.partyB);
        usdc.approve(address(escrow), t.amountB);
        escrow.fund(t);
        vm.stopPrank();
        g = gasleft();
        escrow.settle(t);
        uint256 settleGas = g - gasleft();
        emit log_named_uint("gas SettlementEscrow.settle (ERC-20 vs ERC-20)", settleGas);

        // Regression guards with headroom, so a change that makes these paths much dearer is noticed.
        assertTrue(mintGas < 120_000, "mint gas");
        // The burn record (one new slot, 22,100 gas) is what ties a refund to a real burn.
        assertTrue(burnGas < 80_000, "burn gas");
        assertTrue(refundGas < 80_000, "refund gas");
        assertTrue(settleGas < 90_000, "settle gas");
    }
}
