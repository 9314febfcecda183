// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {StrictECDSA} from "./lib/StrictECDSA.sol";

/// @title SettlementEscrow
/// @notice Delivery-versus-payment for one OTC trade at a time: party A delivers `amountA` of
///         `assetA` to party B, party B delivers `amountB` of `assetB` to party A, both or neither.
/// @dev Life of a trade (the id is the EIP-712 digest of the {Trade}):
///      1. both parties sign the Trade; anyone submits both signatures with {open};
///      2. each party funds its own leg with {fund} (ERC-20 by `transferFrom`, native ETH by value);
///      3. while `block.timestamp <= deadline` and both legs are in, anyone may {settle}: the trade is
///         marked settled first, then each leg goes to the counterparty — one transaction, so both
///         legs move or the whole call reverts and neither does;
///      4. otherwise, after the deadline (or after a {cancel} signed by both, or an {abort} by either
///         party while a leg is still missing), each funded leg can only go back to the party that
///         funded it, exactly once ({refund}; {abort} returns the funded leg itself).
///      A deadline is at most `MAX_TRADE_DURATION` after opening, and until both legs are in either
///      party may {abort}: nobody can lock a counterparty's funded leg for long, and a first funder
///      does not hand the other side a free option while it waits for the second leg.
///      Settlement and refund are the only ways value leaves a trade, and each marks its legs as
///      released before transferring, so no sequence of calls releases a leg twice or one leg
///      without the other.
///
///      Why a native-ETH delivery that fails is credited instead of reverting: a counterparty whose
///      receiving contract could make `settle` revert at will would hold a free option (settle if the
///      price moved its way, block until the deadline otherwise). ETH is pushed with a bounded gas
///      stipend; if the recipient refuses it, the amount is credited to {ethOwed} and pulled later with
///      {withdrawEth}. ERC-20 legs are pushed with SafeERC20: a standard ERC-20 gives its recipient no
///      veto. Tokens with transfer fees, rebasing balances or recipient hooks (ERC-777) are outside
///      what this escrow supports; funding checks the exact amount arrived and reverts otherwise.
///
///      Reentrancy: every external state-changing function is `nonReentrant` (transient-storage
///      guard) and follows checks-effects-interactions.
contract SettlementEscrow is EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice The terms both parties sign. `assetA == address(0)` means native ETH.
    /// @param salt makes otherwise identical trades distinct (e.g. the desk's trade reference).
    struct Trade {
        address partyA;
        address assetA;
        uint256 amountA;
        address partyB;
        address assetB;
        uint256 amountB;
        uint256 deadline;
        uint256 salt;
    }

    enum Status {
        None, // never opened
        Open, // both signatures checked; legs may be funded
        Settled, // both legs delivered
        Cancelled // cancelled by both parties; funded legs refundable
    }

    /// @dev One storage slot per trade.
    struct TradeState {
        Status status;
        bool fundedA; // party A's leg is in escrow (or was)
        bool fundedB;
        bool releasedA; // party A's leg has left escrow (delivered to B or refunded to A)
        bool releasedB;
    }

    string private constant TRADE_TYPE =
        "Trade(address partyA,address assetA,uint256 amountA,address partyB,address assetB,uint256 amountB,uint256 deadline,uint256 salt)";
    bytes32 public constant TRADE_TYPEHASH = keccak256(bytes(TRADE_TYPE));
    /// @dev EIP-712 nested type: the referenced struct's type string is appended.
    bytes32 public constant CANCEL_TYPEHASH = keccak256(abi.encodePacked("CancelTrade(Trade trade)", TRADE_TYPE));

    /// @notice Longest a trade may run: `open` refuses a deadline further than this from now, so a
    ///         funded leg is never locked for longer (a first funder would otherwise give the
    ///         counterparty a free option for as long as it signed).
    uint256 public constant MAX_TRADE_DURATION = 30 days;

    /// @notice Gas forwarded with a native-ETH delivery: enough for a smart-contract wallet's
    ///         receive hook, too little for a recipient to grief the caller by burning gas.
    uint256 public constant ETH_PUSH_GAS = 50_000;

    /// @notice slot 2 (slots 0-1 are OpenZeppelin EIP712's string fallbacks): trade id => state.
    mapping(bytes32 tradeId => TradeState) public trades;
    /// @notice slot 3: native ETH a recipient refused on delivery, withdrawable with {withdrawEth}.
    mapping(address account => uint256 amount) public ethOwed;
    /// @notice slot 4: total of {ethOwed}, for the solvency invariant.
    uint256 public totalEthOwed;

    event TradeOpened(
        bytes32 indexed tradeId, address indexed partyA, address indexed partyB, uint256 deadline, uint256 salt
    );
    event LegFunded(bytes32 indexed tradeId, address indexed party, address asset, uint256 amount);
    event TradeSettled(bytes32 indexed tradeId, address indexed partyA, address indexed partyB);
    event TradeCancelled(bytes32 indexed tradeId);
    /// @notice `by` (a party) withdrew from a trade whose other leg was not yet funded.
    event TradeAborted(bytes32 indexed tradeId, address indexed by);
    event LegRefunded(bytes32 indexed tradeId, address indexed party, address asset, uint256 amount);
    event EthCredited(address indexed account, uint256 amount);
    event EthWithdrawn(address indexed account, uint256 amount);

    error InvalidTrade();
    error TradeExpired(bytes32 tradeId, uint256 deadline);
    error TradeNotExpired(bytes32 tradeId, uint256 deadline);
    error DeadlineTooFar(uint256 deadline, uint256 latest);
    error BothLegsFunded(bytes32 tradeId);
    error AlreadyReleased(bytes32 tradeId);
    error WrongStatus(bytes32 tradeId, Status status);
    error InvalidSignature(address party);
    error NotAParty(address caller);
    error AlreadyFunded(bytes32 tradeId, address party);
    error LegNotFunded(bytes32 tradeId);
    error NothingToRefund(bytes32 tradeId, address party);
    error WrongValue(uint256 sent, uint256 expected);
    error AmountNotReceived(uint256 received, uint256 expected);
    error NothingOwed();
    error EthTransferFailed();
    error ZeroRecipient();

    constructor() EIP712("Fusion Prime Settlement", "1") {}

    // ------------------------------------------------------------------------------------------
    // Trade life cycle
    // ------------------------------------------------------------------------------------------

    /// @notice Register a trade both parties signed. Anyone may submit it.
    /// @param sigA party A's signature over {tradeId}(t) (65-byte ECDSA, low-S; or ERC-1271 if A is a contract)
    /// @param sigB party B's signature over the same digest
    function open(Trade calldata t, bytes calldata sigA, bytes calldata sigB)
        external
        nonReentrant
        returns (bytes32 id)
    {
        if (
            t.partyA == address(0) || t.partyB == address(0) || t.partyA == t.partyB || t.amountA == 0
                || t.amountB == 0
        ) revert InvalidTrade();
        if ((t.assetA != address(0) && t.assetA.code.length == 0) || (t.assetB != address(0) && t.assetB.code.length == 0))
        {
            revert InvalidTrade();
        }
        id = tradeId(t);
        if (block.timestamp > t.deadline) revert TradeExpired(id, t.deadline);
        if (t.deadline > block.timestamp + MAX_TRADE_DURATION) {
            revert DeadlineTooFar(t.deadline, block.timestamp + MAX_TRADE_DURATION);
        }
        TradeState storage st = trades[id];
        if (st.status != Status.None) revert WrongStatus(id, st.status);
        _requireSignature(t.partyA, id, sigA);
        _requireSignature(t.partyB, id, sigB);
        st.status = Status.Open;
        emit TradeOpened(id, t.partyA, t.partyB, t.deadline, t.salt);
    }

    /// @notice Fund your own leg. Party A sends `amountA` of `assetA`, party B `amountB` of `assetB`
    ///         (ERC-20: approve this contract first; ETH: send exactly the amount as value).
    function fund(Trade calldata t) external payable nonReentrant {
        bytes32 id = tradeId(t);
        TradeState storage st = trades[id];
        if (st.status != Status.Open) revert WrongStatus(id, st.status);
        if (block.timestamp > t.deadline) revert TradeExpired(id, t.deadline);
        address asset;
        uint256 amount;
        if (msg.sender == t.partyA) {
            if (st.fundedA) revert AlreadyFunded(id, msg.sender);
            st.fundedA = true;
            (asset, amount) = (t.assetA, t.amountA);
        } else if (msg.sender == t.partyB) {
            if (st.fundedB) revert AlreadyFunded(id, msg.sender);
            st.fundedB = true;
            (asset, amount) = (t.assetB, t.amountB);
        } else {
            revert NotAParty(msg.sender);
        }
        _pullIn(asset, amount);
        emit LegFunded(id, msg.sender, asset, amount);
    }

    /// @notice Deliver both legs: A's to B and B's to A. Anyone may call it once both legs are
    ///         funded, up to and including the deadline second.
    function settle(Trade calldata t) external nonReentrant {
        bytes32 id = tradeId(t);
        TradeState storage st = trades[id];
        if (st.status != Status.Open) revert WrongStatus(id, st.status);
        if (block.timestamp > t.deadline) revert TradeExpired(id, t.deadline);
        if (!st.fundedA || !st.fundedB) revert LegNotFunded(id);
        // Unreachable while refund only runs after the deadline or a cancellation; kept so that no
        // future edit of those rules can pay out a leg that already left.
        if (st.releasedA || st.releasedB) revert AlreadyReleased(id);
        st.status = Status.Settled;
        st.releasedA = true;
        st.releasedB = true;
        _payOut(t.assetA, t.partyB, t.amountA);
        _payOut(t.assetB, t.partyA, t.amountB);
        emit TradeSettled(id, t.partyA, t.partyB);
    }

    /// @notice Cancel a trade both parties agree to drop (before it settles; it need not be open
    ///         yet, so a signed trade can be killed before anyone submits it). Funded legs then
    ///         become refundable to their own parties at once, without waiting for the deadline.
    /// @param sigA party A's signature over the EIP-712 `CancelTrade(Trade trade)` message
    /// @param sigB party B's signature over the same
    function cancel(Trade calldata t, bytes calldata sigA, bytes calldata sigB) external nonReentrant {
        bytes32 id = tradeId(t);
        TradeState storage st = trades[id];
        if (st.status != Status.None && st.status != Status.Open) revert WrongStatus(id, st.status);
        bytes32 digest = cancelDigest(t);
        _requireSignature(t.partyA, digest, sigA);
        _requireSignature(t.partyB, digest, sigB);
        st.status = Status.Cancelled;
        emit TradeCancelled(id);
    }

    /// @notice Withdraw from an open trade while at least one leg is still unfunded (either party
    ///         may; the counterparty could equally just never fund). The trade is cancelled and the
    ///         funded leg, if any, goes straight back to its funder.
    function abort(Trade calldata t) external nonReentrant {
        bytes32 id = tradeId(t);
        TradeState storage st = trades[id];
        if (st.status != Status.Open) revert WrongStatus(id, st.status);
        if (msg.sender != t.partyA && msg.sender != t.partyB) revert NotAParty(msg.sender);
        if (st.fundedA && st.fundedB) revert BothLegsFunded(id);
        st.status = Status.Cancelled;
        emit TradeAborted(id, msg.sender);
        // At most one leg is funded; after the deadline it may already have been refunded.
        if (st.fundedA && !st.releasedA) {
            st.releasedA = true;
            _payOut(t.assetA, t.partyA, t.amountA);
            emit LegRefunded(id, t.partyA, t.assetA, t.amountA);
        } else if (st.fundedB && !st.releasedB) {
            st.releasedB = true;
            _payOut(t.assetB, t.partyB, t.amountB);
            emit LegRefunded(id, t.partyB, t.assetB, t.amountB);
        }
    }

    /// @notice Return `party`'s own leg to `party`: after the deadline of an unsettled trade, or
    ///         after a cancellation. Anyone may trigger it; the leg can only go to its funder.
    function refund(Trade calldata t, address party) external nonReentrant {
        bytes32 id = tradeId(t);
        TradeState storage st = trades[id];
        if (st.status == Status.Open) {
            if (block.timestamp <= t.deadline) revert TradeNotExpired(id, t.deadline);
        } else if (st.status != Status.Cancelled) {
            revert WrongStatus(id, st.status);
        }
        address asset;
        uint256 amount;
        if (party == t.partyA) {
            if (!st.fundedA || st.releasedA) revert NothingToRefund(id, party);
            st.releasedA = true;
            (asset, amount) = (t.assetA, t.amountA);
        } else if (party == t.partyB) {
            if (!st.fundedB || st.releasedB) revert NothingToRefund(id, party);
            st.releasedB = true;
            (asset, amount) = (t.assetB, t.amountB);
        } else {
            revert NotAParty(party);
        }
        _payOut(asset, party, amount);
        emit LegRefunded(id, party, asset, amount);
    }

    /// @notice Withdraw native ETH that was credited to you because a push to you failed.
    function withdrawEth() external nonReentrant {
        _withdrawEth(payable(msg.sender));
    }

    /// @notice Withdraw your ETH credit to another address — for a contract party that cannot
    ///         receive ETH itself (the reason it was credited in the first place).
    function withdrawEthTo(address payable to) external nonReentrant {
        if (to == address(0)) revert ZeroRecipient();
        _withdrawEth(to);
    }

    // ------------------------------------------------------------------------------------------
    // Views
    // ------------------------------------------------------------------------------------------

    /// @notice The EIP-712 struct hash of a trade.
    function hashTrade(Trade calldata t) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                TRADE_TYPEHASH, t.partyA, t.assetA, t.amountA, t.partyB, t.assetB, t.amountB, t.deadline, t.salt
            )
        );
    }

    /// @notice The trade id: the EIP-712 digest both parties sign to agree to the trade.
    function tradeId(Trade calldata t) public view returns (bytes32) {
        return _hashTypedDataV4(hashTrade(t));
    }

    /// @notice The EIP-712 digest both parties sign to cancel the trade.
    function cancelDigest(Trade calldata t) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(CANCEL_TYPEHASH, hashTrade(t))));
    }

    /// @notice The EIP-712 domain separator.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ------------------------------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------------------------------

    /// @dev A contract party (a multisig desk wallet) signs through ERC-1271; an EOA — or an
    ///      EIP-7702 account whose code does not answer ERC-1271 — by a strict (low-S, v ∈ {27,28})
    ///      ECDSA signature.
    function _requireSignature(address party, bytes32 digest, bytes calldata signature) private view {
        if (party.code.length != 0 && SignatureChecker.isValidERC1271SignatureNow(party, digest, signature)) return;
        if (StrictECDSA.recover(digest, signature) != party) revert InvalidSignature(party);
    }

    /// @dev Take exactly `amount` of `asset` from the caller.
    function _pullIn(address asset, uint256 amount) private {
        if (asset == address(0)) {
            if (msg.value != amount) revert WrongValue(msg.value, amount);
            return;
        }
        if (msg.value != 0) revert WrongValue(msg.value, 0);
        IERC20 token = IERC20(asset);
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != amount) revert AmountNotReceived(received, amount);
    }

    /// @dev Pay the caller's whole ETH credit to `to` (effects first: the credit is gone before the call).
    function _withdrawEth(address payable to) private {
        uint256 amount = ethOwed[msg.sender];
        if (amount == 0) revert NothingOwed();
        ethOwed[msg.sender] = 0;
        totalEthOwed -= amount;
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert EthTransferFailed();
        emit EthWithdrawn(msg.sender, amount);
    }

    /// @dev Deliver `amount` of `asset` to `to`; a refused ETH push is credited, not reverted.
    function _payOut(address asset, address to, uint256 amount) private {
        if (asset == address(0)) {
            // A relayer cannot starve this push on purpose to turn a delivery into a credit: with
            // less than the full stipend forwarded (EIP-150 forwards at most 63/64 of what is left),
            // the 1/64 kept back is far below the ~45,000 gas the credit below needs, so the whole
            // settlement reverts instead (testFuzz_starvedEthPushNeverBecomesACredit).
            (bool ok,) = to.call{value: amount, gas: ETH_PUSH_GAS}("");
            if (!ok) {
                ethOwed[to] += amount;
                totalEthOwed += amount;
                emit EthCredited(to, amount);
            }
        } else {
            IERC20(asset).safeTransfer(to, amount);
        }
    }
}
