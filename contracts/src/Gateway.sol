// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {StrictECDSA} from "./lib/StrictECDSA.sol";

/// @notice What the gateway needs from a wrapped asset.
interface IWrappedAsset {
    function gateway() external view returns (address);
    function mint(address to, uint256 amount) external;
    function burn(address from, uint256 amount) external;
}

/// @title Gateway
/// @notice Mints wrapped assets against deposits that the Fusion Prime custody network has
///         observed and co-signed, burns them against payout requests the nodes watch, and refunds
///         burns the nodes could not pay.
/// @dev Trust model. The "group key" is an ordinary secp256k1 address whose private key never
///      exists in one place: it is held as CGGMP21 threshold shares by the node operators. To this
///      contract it is just the signer. Everything the group decides reaches the chain as an
///      EIP-712 signature that anyone may relay, so the group key needs no gas on this chain and a
///      relayer can never alter what was signed.
///
///      The contract is built so that a thief holding the group key gets at most what the
///      safeguards allow before someone independent of the key (the guardian) can react:
///      - every mint and refund is rate-limited per asset (a token bucket: `mintCap` per
///        `windowLength`) and bounded by a per-asset total supply ceiling;
///      - a mint or refund above the asset's `largeMintThreshold` is only queued; it executes after
///        `LARGE_MINT_DELAY` unless the guardian vetoes it (optimistic minting, as tBTC v2 does);
///      - every administrative action that raises risk — a new asset, a looser limit, unpausing,
///        replacing or removing the guardian, rotating the signer — is queued for `ADMIN_DELAY`
///        (`GUARDIAN_DELAY` for the guardian) and the guardian can veto it; only actions that
///        strictly tighten a limit apply at once;
///      - the guardian pauses with a plain call (no nonce, nothing can make it fail), the group key
///        pauses by signature on a nonce-free, idempotent path; only a delayed, vetoable unpause
///        reopens;
///      - a rotation to a new key voids everything the old key had queued (actions are bound to
///        the signer epoch) and orders carry the epoch, so rotating back to an old key does not
///        revive its old orders.
///      Other properties, and where each is enforced:
///      - one mint per deposit: `mintedDeposit[depositId]` is set before the token is minted; the
///        deposit id covers (sourceChain, sourceTxId, vout) only, and the source chain must be the
///        asset's own (fixed at its first configuration), so a deposit has one id;
///      - refunds are tied to real burns: each burn is recorded, and a refund re-mints exactly that
///        burn's amount of that asset to its burner, once;
///      - no cross-chain or cross-contract replay: chainId and verifyingContract are in the
///        EIP-712 domain (OpenZeppelin EIP712 recomputes the separator if the chain forks);
///      - no malleated signature: {StrictECDSA} rejects high-S and v ∉ {27, 28};
///      - payouts are bounded on-chain too: burns have their own per-asset token bucket, and a
///        burn's destination must be well-formed for the asset's home chain.
contract Gateway is EIP712 {
    // ------------------------------------------------------------------------------------------
    // Types
    // ------------------------------------------------------------------------------------------

    /// @notice A group-signed instruction to mint `amount` of `asset` to `recipient` for the deposit
    ///         `(sourceChain, sourceTxId, vout)`.
    /// @param asset the WrappedAsset to mint (bound into the signature so an order for one asset
    ///        can never mint another).
    /// @param sourceChain `keccak256` of the CAIP-2 id of the chain the deposit happened on; it must
    ///        equal the asset's configured source chain (see {chainKeyOf} and README).
    /// @param sourceTxId the deposit transaction id as 32 bytes (Bitcoin: the txid in RPC display
    ///        order, i.e. `bytes.fromhex(txid)`; EVM: the transaction hash).
    /// @param vout the output index (Bitcoin), or the index of the deposit log within its
    ///        transaction's receipt (EVM; not the block-wide log index, which a reorg can change).
    /// @param recipient who receives the wrapped tokens.
    /// @param amount base units of the asset to mint.
    /// @param signerEpoch the signer epoch the order was signed in ({signerSchedule}); only the key of
    ///        that epoch can have signed it, so a rotation back to an old key does not revive it.
    /// @param nonce the bridge's order number; it makes every signed order distinct (e.g. a re-issue
    ///        after expiry) and is reported in {Minted}. Replay protection is the deposit id.
    /// @param deadline last second (inclusive, block timestamp) at which the order may be submitted.
    struct MintOrder {
        address asset;
        bytes32 sourceChain;
        bytes32 sourceTxId;
        uint32 vout;
        address recipient;
        uint256 amount;
        uint32 signerEpoch;
        uint256 nonce;
        uint256 deadline;
    }

    /// @notice A group-signed instruction to undo burn number `burnNonce`: re-mint its `amount` of
    ///         `asset` to its `burner`. All three must match what the gateway recorded for that burn.
    struct RefundBurn {
        uint256 burnNonce;
        address asset;
        address burner;
        uint256 amount;
        uint32 signerEpoch;
        uint256 deadline;
    }

    /// @notice How a burn's destination must look for an asset's home chain.
    enum DestinationKind {
        None, // unconfigured
        EvmAddress, // exactly 20 bytes, not zero, not a precompile (address > 0xffff)
        BitcoinAddress // 26-90 ASCII letters and digits (base58 or bech32/bech32m text)
    }

    /// @notice An asset's limits, as signed in a {ConfigureAsset} message.
    /// @param sourceChain the CAIP-2 id of the asset's home chain ("bip122:000000000019d6689c085ae165831e93",
    ///        "eip155:1"); fixed by the first configuration.
    /// @param destinationKind what a burn destination must look like (fixed with the source chain).
    /// @param mintCap base units mintable (mints and refunds together) per `windowLength`.
    /// @param burnCap base units burnable per `windowLength`.
    /// @param windowLength seconds in which a fully used cap refills.
    /// @param supplyCeiling most base units outstanding at any time.
    /// @param largeMintThreshold mints and refunds above this wait `LARGE_MINT_DELAY` with a guardian veto.
    /// @param minBurn smallest burn accepted.
    struct AssetConfig {
        string sourceChain;
        DestinationKind destinationKind;
        uint256 mintCap;
        uint256 burnCap;
        uint256 windowLength;
        uint256 supplyCeiling;
        uint256 largeMintThreshold;
        uint256 minBurn;
    }

    /// @dev Per-asset limits and running state. Mints write slots 0 and 2, burns slots 1 and 2.
    ///      Each rate limit is a token bucket: `used` decays by `cap * elapsed / windowLength`.
    struct AssetState {
        // slot 0
        uint128 mintUsed; // mint bucket level as of mintUpdatedAt
        uint64 mintUpdatedAt;
        uint64 windowLength; // 0 means "asset not configured"
        // slot 1
        uint128 burnUsed; // burn bucket level as of burnUpdatedAt
        uint64 burnUpdatedAt;
        uint32 configVersion; // bumped by every applied configuration; queued ones must match it
        DestinationKind destinationKind;
        // slot 2
        uint128 supply; // outstanding units: minted - burned + refunded
        uint128 supplyCeiling;
        // slot 3
        uint128 mintCap;
        uint128 largeMintThreshold;
        // slot 4
        uint128 burnCap;
        uint128 minBurn;
        // slot 5
        bytes32 sourceChain;
    }

    enum ActionStatus {
        None,
        Queued,
        Executed,
        Vetoed
    }

    /// @dev A queued action (administrative change, large mint or large refund), keyed by the
    ///      EIP-712 digest the group key signed for it.
    struct PendingAction {
        ActionStatus status;
        uint64 eta; // executable from this second on
        uint32 epoch; // signer epoch the action was signed in
        uint32 tag; // admin: asset config version / unpause count at queueing time; else 0
    }

    // ------------------------------------------------------------------------------------------
    // Constants and immutables
    // ------------------------------------------------------------------------------------------

    bytes32 public constant MINT_ORDER_TYPEHASH = keccak256(
        "MintOrder(address asset,bytes32 sourceChain,bytes32 sourceTxId,uint32 vout,address recipient,uint256 amount,uint32 signerEpoch,uint256 nonce,uint256 deadline)"
    );
    bytes32 public constant REFUND_BURN_TYPEHASH = keccak256(
        "RefundBurn(uint256 burnNonce,address asset,address burner,uint256 amount,uint32 signerEpoch,uint256 deadline)"
    );
    bytes32 public constant ROTATE_SIGNER_TYPEHASH =
        keccak256("RotateSigner(address newSigner,uint256 nonce,uint256 deadline)");
    bytes32 public constant PAUSE_TYPEHASH = keccak256("Pause(uint256 unpauseCount,uint256 deadline)");
    bytes32 public constant UNPAUSE_TYPEHASH = keccak256("Unpause(uint256 nonce,uint256 deadline)");
    string private constant ASSET_CONFIG_TYPE =
        "AssetConfig(string sourceChain,uint8 destinationKind,uint256 mintCap,uint256 burnCap,uint256 windowLength,uint256 supplyCeiling,uint256 largeMintThreshold,uint256 minBurn)";
    bytes32 public constant ASSET_CONFIG_TYPEHASH = keccak256(bytes(ASSET_CONFIG_TYPE));
    /// @dev EIP-712 nested type: the referenced struct's type string is appended.
    bytes32 public constant CONFIGURE_ASSET_TYPEHASH = keccak256(
        abi.encodePacked("ConfigureAsset(address asset,AssetConfig config,uint256 nonce,uint256 deadline)", ASSET_CONFIG_TYPE)
    );
    bytes32 public constant SET_GUARDIAN_TYPEHASH =
        keccak256("SetGuardian(address guardian,uint256 nonce,uint256 deadline)");

    /// @notice Longest accepted burn destination: Bitcoin's longest address (bech32m) is 90 chars.
    uint256 public constant MAX_DESTINATION_LENGTH = 90;
    /// @notice Shortest Bitcoin address text (base58 P2PKH can be 26 chars).
    uint256 public constant MIN_BITCOIN_ADDRESS_LENGTH = 26;

    /// @notice Seconds a risk-raising administrative action (new asset, looser limit, unpause,
    ///         signer rotation) waits in the queue, during which the guardian can veto it.
    uint256 public immutable ADMIN_DELAY;
    /// @notice Seconds a change of guardian waits (>= ADMIN_DELAY); the current guardian can veto it.
    ///         This is also how the operators recover from a lost guardian key.
    uint256 public immutable GUARDIAN_DELAY;
    /// @notice Seconds a mint or refund above the asset's `largeMintThreshold` waits for a veto.
    uint256 public immutable LARGE_MINT_DELAY;
    /// @notice Seconds after a rotation during which orders of the previous epoch (by the previous
    ///         key) are still accepted (>= LARGE_MINT_DELAY, so a queued large mint can complete).
    uint256 public immutable SIGNER_RETENTION;

    /// @dev Bit c is set iff the byte c is an ASCII digit or letter ([0-9A-Za-z]).
    uint256 private constant ALPHANUMERIC = (((1 << 10) - 1) << 0x30) | (((1 << 26) - 1) << 0x41) | (((1 << 26) - 1) << 0x61);

    /// @dev The value refunded burn records carry in bit 0.
    uint256 private constant REFUNDED_BIT = 1;

    // ------------------------------------------------------------------------------------------
    // Storage (slots 0 and 1 belong to OpenZeppelin EIP712's string fallbacks; see README)
    // ------------------------------------------------------------------------------------------

    /// @dev slot 2: the active group key, its epoch and the end (exclusive) of the previous key's
    ///      retention, packed so a mint reads one slot.
    address private _signer;
    uint32 private _epoch;
    uint64 private _retiredUntil;
    /// @dev slot 3: the key of epoch `_epoch - 1`.
    address private _retiredSigner;
    /// @notice slot 4: the independent party that may pause and veto (never unpause or propose).
    address public guardian;
    /// @notice slot 4: when true, mint, refund, burn and their queued executions revert.
    bool public paused;
    /// @notice slot 4: how many times the gateway was unpaused; a signed pause names this count,
    ///         so it is spent by the next unpause and can never re-pause a later, deliberate reopening.
    uint32 public unpauseCount;
    /// @notice slot 5: the nonce the next administrative signature must carry (strictly sequential,
    ///         so every signed administrative action executes at most once and in order). Pausing
    ///         does not use it.
    uint256 public adminNonce;
    /// @notice slot 6: number of burns so far; the n-th burn has burn nonce n (starting at 1).
    uint256 public burnCount;
    /// @notice slot 7: deposit id => EIP-712 digest of the order that minted it (zero = not minted).
    mapping(bytes32 depositId => bytes32 orderDigest) public mintedDeposit;
    /// @dev slot 8: per-asset limits and state.
    mapping(address asset => AssetState) private _assets;
    /// @notice slot 9: burn nonce => `keccak256(abi.encode(asset, burner, amount))` with bit 0
    ///         cleared, and bit 0 set once the burn has been refunded (zero = no such burn).
    mapping(uint256 burnNonce => bytes32 record) public burnRecord;
    /// @dev slot 10: queued actions by the digest the group key signed.
    mapping(bytes32 actionId => PendingAction) private _actions;

    // ------------------------------------------------------------------------------------------
    // Events (the interface the nodes' watchers and the guardian's monitor consume; see README)
    // ------------------------------------------------------------------------------------------

    /// @notice A deposit was minted. `orderDigest` is the EIP-712 digest the group signed.
    event Minted(
        bytes32 indexed depositId,
        address indexed asset,
        address indexed recipient,
        uint256 amount,
        bytes32 sourceChain,
        bytes32 sourceTxId,
        uint32 vout,
        uint256 nonce,
        bytes32 orderDigest,
        address signer
    );
    /// @notice `burner` burned `amount` of `asset` and asks for a payout to `destination`.
    ///         `burnId = keccak256(abi.encode(block.chainid, address(this), burnNonce))` is globally
    ///         unique and is what the nodes key their payout on.
    event Burned(
        bytes32 indexed burnId,
        address indexed asset,
        address indexed burner,
        uint256 burnNonce,
        uint256 amount,
        bytes destination
    );
    /// @notice Burn `burnNonce` was undone: its amount was re-minted to its burner.
    event Refunded(
        bytes32 indexed burnId,
        address indexed asset,
        address indexed burner,
        uint256 burnNonce,
        uint256 amount,
        bytes32 orderDigest
    );
    /// @notice A mint above the large-mint threshold was queued; it executes from `eta` unless vetoed.
    event MintQueued(
        bytes32 indexed orderDigest,
        bytes32 indexed depositId,
        address indexed asset,
        address recipient,
        uint256 amount,
        uint256 eta
    );
    /// @notice A refund above the large-mint threshold was queued; it executes from `eta` unless vetoed.
    event RefundQueued(
        bytes32 indexed orderDigest, bytes32 indexed burnId, address indexed asset, uint256 amount, uint256 eta
    );
    /// @notice Any action entered the queue. `actionType` is the EIP-712 typehash of what was signed.
    event ActionQueued(bytes32 indexed actionId, bytes32 indexed actionType, uint256 eta);
    event ActionExecuted(bytes32 indexed actionId);
    event ActionVetoed(bytes32 indexed actionId, address indexed guardian);
    /// @notice The active key proposed `newSigner` (which co-signed the proposal).
    event SignerRotationProposed(
        bytes32 indexed actionId, address indexed currentSigner, address indexed newSigner, uint256 eta
    );
    /// @notice A rotation took effect: `newSigner` signs epoch `epoch`; `previousSigner` still signs
    ///         orders of the previous epoch until `retainedUntil` (exclusive).
    event SignerActivated(
        address indexed newSigner, address indexed previousSigner, uint32 epoch, uint256 retainedUntil
    );
    event GuardianChangeProposed(
        bytes32 indexed actionId, address indexed currentGuardian, address indexed newGuardian, uint256 eta
    );
    event GuardianChanged(address indexed previousGuardian, address indexed newGuardian);
    /// @notice A configuration was queued (risk-raising) rather than applied.
    event AssetConfigProposed(bytes32 indexed actionId, address indexed asset, AssetConfig config, uint256 eta);
    /// @notice A configuration took effect (version `version` of the asset's limits).
    event AssetConfigured(address indexed asset, bytes32 indexed sourceChain, uint32 version, AssetConfig config);
    event Paused(address indexed by);
    event Unpaused(address indexed by);

    // ------------------------------------------------------------------------------------------
    // Errors
    // ------------------------------------------------------------------------------------------

    error ZeroAddress();
    error ZeroAmount();
    error InvalidDelay();
    error GatewayPaused();
    error NotPaused();
    error OrderExpired(uint256 deadline, uint256 nowTimestamp);
    error AuthorizationExpired(uint256 deadline, uint256 nowTimestamp);
    error UnauthorizedSigner(address recovered);
    error NewSignerDidNotSign(address newSigner);
    error InvalidSigner(address signer);
    error InvalidGuardian(address guardian);
    error DepositAlreadyMinted(bytes32 depositId, bytes32 mintedByOrder);
    error WrongSourceChain(address asset, bytes32 given, bytes32 expected);
    error AssetNotConfigured(address asset);
    error WindowCapExceeded(address asset, uint256 requested, uint256 remaining);
    error BurnCapExceeded(address asset, uint256 requested, uint256 remaining);
    error SupplyCeilingExceeded(address asset, uint256 supplyAfter, uint256 ceiling);
    error BadAdminNonce(uint256 given, uint256 expected);
    error StalePause(uint256 given, uint256 current);
    error NotGuardianOrSigner(address caller);
    error NotGuardian(address caller);
    error NotThisGateway(address asset, address itsGateway);
    error InvalidAssetConfig();
    error InvalidChainId();
    error SourceChainFixed(address asset);
    error BurnBelowMinimum(uint256 amount, uint256 minBurn);
    error InvalidDestination(DestinationKind kind, uint256 length);
    error UnknownBurn(uint256 burnNonce);
    error BurnMismatch(uint256 burnNonce);
    error BurnAlreadyRefunded(uint256 burnNonce);
    error ActionAlreadyExists(bytes32 actionId, ActionStatus status);
    error ActionNotQueued(bytes32 actionId, ActionStatus status);
    error ActionNotReady(bytes32 actionId, uint256 eta);
    error ActionStale(bytes32 actionId);

    // ------------------------------------------------------------------------------------------
    // Construction
    // ------------------------------------------------------------------------------------------

    /// @param initialSigner the group key's address.
    /// @param initialGuardian the address allowed to pause and veto (may be zero: nobody can veto,
    ///        and the delays only give users time to leave).
    /// @param adminDelay see {ADMIN_DELAY} (> 0).
    /// @param guardianDelay see {GUARDIAN_DELAY} (>= adminDelay).
    /// @param largeMintDelay see {LARGE_MINT_DELAY} (> 0).
    /// @param signerRetention see {SIGNER_RETENTION} (>= largeMintDelay).
    constructor(
        address initialSigner,
        address initialGuardian,
        uint256 adminDelay,
        uint256 guardianDelay,
        uint256 largeMintDelay,
        uint256 signerRetention
    ) EIP712("Fusion Prime Gateway", "1") {
        if (initialSigner == address(0)) revert ZeroAddress();
        if (initialSigner.code.length != 0) revert InvalidSigner(initialSigner);
        if (initialGuardian == initialSigner) revert InvalidGuardian(initialGuardian);
        // A zero delay would let a stolen key act before anyone can react; the uint32 bound keeps
        // every eta representable in the packed uint64 fields.
        if (
            adminDelay == 0 || largeMintDelay == 0 || guardianDelay < adminDelay || signerRetention < largeMintDelay
                || guardianDelay > type(uint32).max || signerRetention > type(uint32).max
                || largeMintDelay > type(uint32).max
        ) revert InvalidDelay();
        ADMIN_DELAY = adminDelay;
        GUARDIAN_DELAY = guardianDelay;
        LARGE_MINT_DELAY = largeMintDelay;
        SIGNER_RETENTION = signerRetention;
        _signer = initialSigner;
        emit SignerActivated(initialSigner, address(0), 0, block.timestamp);
        guardian = initialGuardian;
        emit GuardianChanged(address(0), initialGuardian);
    }

    // ------------------------------------------------------------------------------------------
    // Mint, burn, refund
    // ------------------------------------------------------------------------------------------

    /// @notice Execute a group-signed mint order, or queue it if it is above the asset's
    ///         large-mint threshold. Anyone may relay it: the signature, not the caller, is the
    ///         authority, and the caller cannot change any field.
    /// @param order the order, exactly as signed.
    /// @param signature 65 bytes `r ‖ s ‖ v` over the EIP-712 digest of `order`, by the key of
    ///        `order.signerEpoch` (the active key, or the previous one during its retention).
    /// @return digest the EIP-712 digest of the order (also the id of a queued mint).
    function mint(MintOrder calldata order, bytes calldata signature) external returns (bytes32 digest) {
        if (paused) revert GatewayPaused();
        if (block.timestamp > order.deadline) revert OrderExpired(order.deadline, block.timestamp);
        if (order.amount == 0) revert ZeroAmount();
        if (order.recipient == address(0)) revert ZeroAddress();

        digest = _hashTypedDataV4(hashMintOrder(order));
        address signer = StrictECDSA.recover(digest, signature);
        if (!_acceptsForMint(signer, order.signerEpoch)) revert UnauthorizedSigner(signer);

        AssetState storage a = _assets[order.asset];
        bytes32 depositId = _checkDeposit(a, order);
        if (order.amount > a.largeMintThreshold) {
            uint256 eta = _queue(digest, MINT_ORDER_TYPEHASH, LARGE_MINT_DELAY, order.signerEpoch, 0);
            emit MintQueued(digest, depositId, order.asset, order.recipient, order.amount, eta);
            return digest;
        }
        _mintDeposit(a, order, depositId, digest, signer);
    }

    /// @notice Execute a queued large mint once its delay has passed (anyone may call). It fails if
    ///         the guardian vetoed it, if its signer epoch is no longer accepted, if another order
    ///         for the same deposit minted meanwhile, or if it does not fit the limits now.
    function executeMint(MintOrder calldata order) external returns (bytes32 digest) {
        if (paused) revert GatewayPaused();
        digest = _hashTypedDataV4(hashMintOrder(order));
        _consumeIssuance(digest);
        AssetState storage a = _assets[order.asset];
        bytes32 depositId = _checkDeposit(a, order);
        _mintDeposit(a, order, depositId, digest, _signerOfEpoch(order.signerEpoch));
    }

    /// @notice Burn `amount` of your `asset` and ask the custody network to pay it out to
    ///         `destination` on the asset's home chain.
    /// @dev The gateway burns from `msg.sender` only. The destination is checked for the form its
    ///      asset's home chain uses (see {DestinationKind}); the nodes decode it fully, and one they
    ///      cannot pay to is refunded with {refund}, never silently dropped. The burn is recorded
    ///      (asset, burner, amount) so that a refund can only ever undo this burn, once.
    /// @return burnNonce this burn's sequence number (also in {Burned}).
    function burn(address asset, uint256 amount, bytes calldata destination) external returns (uint256 burnNonce) {
        if (paused) revert GatewayPaused();
        AssetState storage a = _assets[asset];
        uint256 length = a.windowLength;
        if (length == 0) revert AssetNotConfigured(asset);
        if (amount == 0) revert ZeroAmount();
        if (amount < a.minBurn) revert BurnBelowMinimum(amount, a.minBurn);
        _checkDestination(a.destinationKind, destination);

        uint256 cap = a.burnCap;
        uint256 used = _bucketLevel(a.burnUsed, a.burnUpdatedAt, cap, length);
        uint256 remaining = cap > used ? cap - used : 0;
        if (amount > remaining) revert BurnCapExceeded(asset, amount, remaining);
        // Fits: used + amount <= cap < 2^128, and the supply only shrinks (the token refuses to burn
        // more than the burner holds, and every token in existence is counted in `supply`).
        // forge-lint: disable-next-line(unsafe-typecast)
        a.burnUsed = uint128(used + amount);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.burnUpdatedAt = uint64(block.timestamp);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.supply -= uint128(amount);

        burnNonce = ++burnCount;
        burnRecord[burnNonce] = _burnCommitment(asset, msg.sender, amount);
        IWrappedAsset(asset).burn(msg.sender, amount);
        emit Burned(burnIdOf(burnNonce), asset, msg.sender, burnNonce, amount, destination);
    }

    /// @notice Undo a recorded burn the nodes could not pay out: re-mint exactly its amount of its
    ///         asset to its burner, once. Group-signed; anyone may relay. A refund is a supply
    ///         increase like a mint: it counts against the asset's mint cap and supply ceiling, and
    ///         above the large-mint threshold it is queued with a guardian veto.
    function refund(RefundBurn calldata r, bytes calldata signature) external returns (bytes32 digest) {
        if (paused) revert GatewayPaused();
        if (block.timestamp > r.deadline) revert OrderExpired(r.deadline, block.timestamp);
        digest = _hashTypedDataV4(hashRefundBurn(r));
        address signer = StrictECDSA.recover(digest, signature);
        if (!_acceptsForMint(signer, r.signerEpoch)) revert UnauthorizedSigner(signer);
        _checkBurn(r);
        AssetState storage a = _assets[r.asset];
        if (r.amount > a.largeMintThreshold) {
            uint256 eta = _queue(digest, REFUND_BURN_TYPEHASH, LARGE_MINT_DELAY, r.signerEpoch, 0);
            emit RefundQueued(digest, burnIdOf(r.burnNonce), r.asset, r.amount, eta);
            return digest;
        }
        _refund(a, r, digest);
    }

    /// @notice Execute a queued large refund once its delay has passed (anyone may call).
    function executeRefund(RefundBurn calldata r) external returns (bytes32 digest) {
        if (paused) revert GatewayPaused();
        digest = _hashTypedDataV4(hashRefundBurn(r));
        _consumeIssuance(digest);
        _checkBurn(r);
        _refund(_assets[r.asset], r, digest);
    }

    // ------------------------------------------------------------------------------------------
    // Pause
    // ------------------------------------------------------------------------------------------

    /// @notice Pause mint, refund and burn. Callable by the guardian or by the active group key.
    ///         No nonce and idempotent, so nothing signed earlier and no other monitor racing to
    ///         pause can make it fail.
    function pause() external {
        if (msg.sender != guardian && msg.sender != _signer) revert NotGuardianOrSigner(msg.sender);
        _pause(msg.sender);
    }

    /// @notice Pause on a group-key signature relayed by anyone. The signed `Pause` names the
    ///         current {unpauseCount} instead of an administrative nonce: it cannot be blocked by
    ///         other signed messages, may be relayed any number of times while the gateway stays
    ///         paused (idempotent), and is spent by the next unpause.
    function pauseWithSignature(uint256 unpauseCount_, uint256 deadline, bytes calldata signature) external {
        if (block.timestamp > deadline) revert AuthorizationExpired(deadline, block.timestamp);
        if (unpauseCount_ != unpauseCount) revert StalePause(unpauseCount_, unpauseCount);
        bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(PAUSE_TYPEHASH, unpauseCount_, deadline)));
        address signer = StrictECDSA.recover(digest, signature);
        if (signer != _signer) revert UnauthorizedSigner(signer);
        _pause(signer);
    }

    /// @notice Queue an unpause (group-signed). It executes after `ADMIN_DELAY` unless the guardian
    ///         vetoes it; a pause in between is not undone by it (it names the unpause count).
    ///         Refused, without using the nonce, when the gateway is not paused.
    function unpause(uint256 nonce, uint256 deadline, bytes calldata signature) external returns (bytes32 actionId) {
        if (!paused) revert NotPaused();
        actionId = _authorizeAdmin(keccak256(abi.encode(UNPAUSE_TYPEHASH, nonce, deadline)), nonce, deadline, signature);
        _queue(actionId, UNPAUSE_TYPEHASH, ADMIN_DELAY, _epoch, unpauseCount);
    }

    /// @notice Execute a queued unpause (anyone may call).
    function executeUnpause(uint256 nonce, uint256 deadline) external {
        bytes32 actionId = _hashTypedDataV4(keccak256(abi.encode(UNPAUSE_TYPEHASH, nonce, deadline)));
        _consumeAdmin(actionId, unpauseCount);
        paused = false;
        unpauseCount += 1;
        emit Unpaused(_signer);
    }

    // ------------------------------------------------------------------------------------------
    // Guardian
    // ------------------------------------------------------------------------------------------

    /// @notice Veto a queued action: an administrative change, a large mint or a large refund.
    ///         Final: a vetoed action never executes (the group may sign a new one, which queues anew).
    function veto(bytes32 actionId) external {
        if (msg.sender != guardian) revert NotGuardian(msg.sender);
        PendingAction storage p = _actions[actionId];
        if (p.status != ActionStatus.Queued) revert ActionNotQueued(actionId, p.status);
        p.status = ActionStatus.Vetoed;
        emit ActionVetoed(actionId, msg.sender);
    }

    // ------------------------------------------------------------------------------------------
    // Group-key administration
    // ------------------------------------------------------------------------------------------

    /// @notice Propose `newSigner` as the next group key. Signed by the active key *and* by the new
    ///         key over the same digest (proof that the new key can sign, so a rotation can never
    ///         lock the gateway out). Executes after `ADMIN_DELAY` unless the guardian vetoes it.
    ///         Several proposals may be queued at once (so a thief's proposal cannot displace the
    ///         operators'); the first executed bumps the epoch and voids the others, and everything
    ///         else the old key had queued.
    function rotateSigner(
        address newSigner,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature,
        bytes calldata newSignerSignature
    ) external returns (bytes32 actionId) {
        _checkNewSigner(newSigner);
        actionId = _authorizeAdmin(
            keccak256(abi.encode(ROTATE_SIGNER_TYPEHASH, newSigner, nonce, deadline)), nonce, deadline, signature
        );
        if (StrictECDSA.recover(actionId, newSignerSignature) != newSigner) revert NewSignerDidNotSign(newSigner);
        uint256 eta = _queue(actionId, ROTATE_SIGNER_TYPEHASH, ADMIN_DELAY, _epoch, 0);
        emit SignerRotationProposed(actionId, _signer, newSigner, eta);
    }

    /// @notice Execute a queued rotation (anyone may call). The previous key keeps signing orders
    ///         of its epoch for `SIGNER_RETENTION`; administrative actions need the new key at once.
    function executeRotation(address newSigner, uint256 nonce, uint256 deadline) external {
        bytes32 actionId = _hashTypedDataV4(keccak256(abi.encode(ROTATE_SIGNER_TYPEHASH, newSigner, nonce, deadline)));
        _consumeAdmin(actionId, 0);
        _checkNewSigner(newSigner); // the guardian may have changed since the proposal
        address previous = _signer;
        uint32 epoch = _epoch + 1;
        uint256 retainedUntil = block.timestamp + SIGNER_RETENTION;
        _signer = newSigner;
        _epoch = epoch;
        // forge-lint: disable-next-line(unsafe-typecast) a timestamp plus a uint32 retention fits
        _retiredUntil = uint64(retainedUntil);
        _retiredSigner = previous;
        emit SignerActivated(newSigner, previous, epoch, retainedUntil);
    }

    /// @notice Configure `asset` (which must name this gateway as its minter). A change that only
    ///         tightens (every cap, the ceiling and the threshold not higher, `minBurn` not lower,
    ///         the window not shorter) applies at once and voids any configuration still queued for
    ///         the asset; anything else — including the first configuration — is queued for
    ///         `ADMIN_DELAY` with a guardian veto. The source chain and destination kind are fixed
    ///         by the first configuration (changing them would change what a deposit id means).
    /// @return actionId the signed digest (the queue key when queued)
    /// @return applied whether the configuration took effect now
    function configureAsset(
        address asset,
        AssetConfig calldata config,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external returns (bytes32 actionId, bool applied) {
        bytes32 chain = _validateConfig(asset, config);
        actionId = _authorizeAdmin(hashConfigureAsset(asset, config, nonce, deadline), nonce, deadline, signature);
        AssetState storage a = _assets[asset];
        if (_tightens(a, config)) {
            _applyConfig(a, asset, chain, config);
            return (actionId, true);
        }
        uint256 eta = _queue(actionId, CONFIGURE_ASSET_TYPEHASH, ADMIN_DELAY, _epoch, a.configVersion);
        emit AssetConfigProposed(actionId, asset, config, eta);
    }

    /// @notice Execute a queued configuration (anyone may call).
    function executeConfigureAsset(address asset, AssetConfig calldata config, uint256 nonce, uint256 deadline)
        external
    {
        bytes32 actionId = _hashTypedDataV4(hashConfigureAsset(asset, config, nonce, deadline));
        AssetState storage a = _assets[asset];
        _consumeAdmin(actionId, a.configVersion);
        _applyConfig(a, asset, _validateConfig(asset, config), config);
    }

    /// @notice Propose a new guardian (zero removes it). Executes after `GUARDIAN_DELAY` unless the
    ///         current guardian vetoes it — so a thief with the group key cannot remove the guardian,
    ///         while operators whose guardian lost its key replace it after the delay.
    function setGuardian(address newGuardian, uint256 nonce, uint256 deadline, bytes calldata signature)
        external
        returns (bytes32 actionId)
    {
        if (newGuardian == _signer || newGuardian == address(this)) revert InvalidGuardian(newGuardian);
        actionId = _authorizeAdmin(
            keccak256(abi.encode(SET_GUARDIAN_TYPEHASH, newGuardian, nonce, deadline)), nonce, deadline, signature
        );
        uint256 eta = _queue(actionId, SET_GUARDIAN_TYPEHASH, GUARDIAN_DELAY, _epoch, 0);
        emit GuardianChangeProposed(actionId, guardian, newGuardian, eta);
    }

    /// @notice Execute a queued guardian change (anyone may call).
    function executeSetGuardian(address newGuardian, uint256 nonce, uint256 deadline) external {
        bytes32 actionId =
            _hashTypedDataV4(keccak256(abi.encode(SET_GUARDIAN_TYPEHASH, newGuardian, nonce, deadline)));
        _consumeAdmin(actionId, 0);
        if (newGuardian == _signer) revert InvalidGuardian(newGuardian);
        emit GuardianChanged(guardian, newGuardian);
        guardian = newGuardian;
    }

    // ------------------------------------------------------------------------------------------
    // Views
    // ------------------------------------------------------------------------------------------

    /// @notice The EIP-712 struct hash of a mint order (`hashStruct` in EIP-712 terms).
    function hashMintOrder(MintOrder calldata o) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                MINT_ORDER_TYPEHASH,
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

    /// @notice The EIP-712 struct hash of a refund.
    function hashRefundBurn(RefundBurn calldata r) public pure returns (bytes32) {
        return keccak256(
            abi.encode(REFUND_BURN_TYPEHASH, r.burnNonce, r.asset, r.burner, r.amount, r.signerEpoch, r.deadline)
        );
    }

    /// @notice The EIP-712 struct hash of a `ConfigureAsset` message (nested `AssetConfig`).
    function hashConfigureAsset(address asset, AssetConfig calldata c, uint256 nonce, uint256 deadline)
        public
        pure
        returns (bytes32)
    {
        bytes32 configHash = keccak256(
            abi.encode(
                ASSET_CONFIG_TYPEHASH,
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
        return keccak256(abi.encode(CONFIGURE_ASSET_TYPEHASH, asset, configHash, nonce, deadline));
    }

    /// @notice The digest the group key signs for `order` on this chain and gateway.
    function mintOrderDigest(MintOrder calldata order) external view returns (bytes32) {
        return _hashTypedDataV4(hashMintOrder(order));
    }

    /// @notice The digest the group key signs for a refund on this chain and gateway.
    function refundDigest(RefundBurn calldata r) external view returns (bytes32) {
        return _hashTypedDataV4(hashRefundBurn(r));
    }

    /// @notice The EIP-712 domain separator (chain id and this address are in it).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The replay key of a deposit: one mint per (source chain, transaction, output).
    /// @param sourceChain `chainKeyOf(caip2)` of the deposit's chain.
    function depositIdOf(bytes32 sourceChain, bytes32 sourceTxId, uint32 vout) public pure returns (bytes32) {
        return keccak256(abi.encode(sourceChain, sourceTxId, vout));
    }

    /// @notice The canonical key of a chain: `keccak256` of its CAIP-2 id, which must be in
    ///         canonical form — namespace `[-a-z0-9]{3,8}`, reference `[-_a-zA-Z0-9]{1,32}`;
    ///         for `eip155` a decimal chain id without leading zeros; for `bip122` the 32 lowercase
    ///         hex digits of the genesis block hash prefix. One chain therefore has one key (e.g.
    ///         "eip155:1" only; not "eip155:01" nor the bare number 1).
    function chainKeyOf(string calldata caip2) public pure returns (bytes32) {
        bytes calldata s = bytes(caip2);
        uint256 colon;
        while (colon < s.length && s[colon] != ":") colon++;
        uint256 refLength = s.length - (colon == s.length ? s.length : colon + 1);
        if (colon < 3 || colon > 8 || colon == s.length || refLength == 0 || refLength > 32) revert InvalidChainId();
        for (uint256 i = 0; i < colon; i++) {
            bytes1 c = s[i];
            if (!((c >= "a" && c <= "z") || (c >= "0" && c <= "9") || c == "-")) revert InvalidChainId();
        }
        bytes32 ns = keccak256(s[:colon]);
        bool eip155 = ns == keccak256("eip155");
        bool bip122 = ns == keccak256("bip122");
        if (bip122 && refLength != 32) revert InvalidChainId();
        if (eip155 && s[colon + 1] == "0") revert InvalidChainId();
        for (uint256 i = colon + 1; i < s.length; i++) {
            bytes1 c = s[i];
            bool digit = c >= "0" && c <= "9";
            bool ok;
            if (eip155) ok = digit;
            else if (bip122) ok = digit || (c >= "a" && c <= "f");
            else ok = digit || (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c == "-" || c == "_";
            if (!ok) revert InvalidChainId();
        }
        return keccak256(s);
    }

    /// @notice The globally unique id of burn number `burnNonce` of this gateway on this chain.
    function burnIdOf(uint256 burnNonce) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), burnNonce));
    }

    /// @notice Whether burn `burnNonce` is recorded as (asset, burner, amount), and whether it was refunded.
    function burnStatus(uint256 burnNonce, address asset, address burner, uint256 amount)
        external
        view
        returns (bool recorded, bool refunded)
    {
        bytes32 record = burnRecord[burnNonce];
        recorded = record != 0 && _withoutRefundBit(record) == _burnCommitment(asset, burner, amount);
        refunded = recorded && uint256(record) & REFUNDED_BIT != 0;
    }

    /// @notice The key that signs administrative actions and orders of the current epoch.
    function activeSigner() external view returns (address) {
        return _signer;
    }

    /// @notice The key schedule as of now.
    /// @return active the active key
    /// @return epoch its epoch (orders must carry it)
    /// @return previous the key of epoch `epoch - 1` (zero if none)
    /// @return previousValidUntil orders of the previous epoch are accepted while block.timestamp < this
    function signerSchedule()
        external
        view
        returns (address active, uint32 epoch, address previous, uint256 previousValidUntil)
    {
        return (_signer, _epoch, _retiredSigner, _retiredUntil);
    }

    /// @notice Whether an order of `epoch` signed by `key` would be accepted now.
    function acceptsMintSigner(address key, uint32 epoch) external view returns (bool) {
        return key != address(0) && _acceptsForMint(key, epoch);
    }

    /// @notice A queued action's state.
    function actionState(bytes32 actionId)
        external
        view
        returns (ActionStatus status, uint256 eta, uint32 epoch, uint32 tag)
    {
        PendingAction storage p = _actions[actionId];
        return (p.status, p.eta, p.epoch, p.tag);
    }

    /// @notice An asset's configuration (`sourceChain` as its key).
    function assetConfig(address asset)
        external
        view
        returns (
            bytes32 sourceChain,
            DestinationKind destinationKind,
            uint256 mintCap,
            uint256 burnCap,
            uint256 windowLength,
            uint256 supplyCeiling,
            uint256 largeMintThreshold,
            uint256 minBurn
        )
    {
        AssetState storage a = _assets[asset];
        return (
            a.sourceChain,
            a.destinationKind,
            a.mintCap,
            a.burnCap,
            a.windowLength,
            a.supplyCeiling,
            a.largeMintThreshold,
            a.minBurn
        );
    }

    /// @notice An asset's running state now: outstanding supply, and how much can be minted and
    ///         burned right now under the rate limits.
    function assetState(address asset)
        external
        view
        returns (uint256 supply, uint256 mintRemaining, uint256 burnRemaining, uint32 configVersion)
    {
        AssetState storage a = _assets[asset];
        supply = a.supply;
        configVersion = a.configVersion;
        uint256 length = a.windowLength;
        if (length == 0) return (supply, 0, 0, configVersion);
        uint256 used = _bucketLevel(a.mintUsed, a.mintUpdatedAt, a.mintCap, length);
        mintRemaining = a.mintCap > used ? a.mintCap - used : 0;
        uint256 headroom = a.supplyCeiling > supply ? a.supplyCeiling - supply : 0;
        if (headroom < mintRemaining) mintRemaining = headroom;
        used = _bucketLevel(a.burnUsed, a.burnUpdatedAt, a.burnCap, length);
        burnRemaining = a.burnCap > used ? a.burnCap - used : 0;
    }

    // ------------------------------------------------------------------------------------------
    // Internals: keys and the queue
    // ------------------------------------------------------------------------------------------

    /// @dev Orders of the current epoch need the active key; orders of the previous epoch the
    ///      previous key, strictly before the end of its retention. Nothing older.
    function _acceptsForMint(address key, uint32 orderEpoch) private view returns (bool) {
        uint32 epoch = _epoch;
        if (orderEpoch == epoch) return key == _signer;
        return epoch != 0 && orderEpoch == epoch - 1 && key == _retiredSigner && block.timestamp < _retiredUntil;
    }

    function _signerOfEpoch(uint32 e) private view returns (address) {
        return e == _epoch ? _signer : _retiredSigner;
    }

    /// @dev A new key must be able to sign: not zero, no code (this gateway, a token, any
    ///      contract), not the active key, not the guardian (the two roles must stay independent).
    function _checkNewSigner(address newSigner) private view {
        if (newSigner == address(0)) revert ZeroAddress();
        if (newSigner == address(this) || newSigner.code.length != 0 || newSigner == _signer || newSigner == guardian)
        {
            revert InvalidSigner(newSigner);
        }
    }

    /// @dev Check an administrative signature by the active key and consume its nonce.
    /// @return digest the signed EIP-712 digest (the action id)
    function _authorizeAdmin(bytes32 structHash, uint256 nonce, uint256 deadline, bytes calldata signature)
        private
        returns (bytes32 digest)
    {
        if (block.timestamp > deadline) revert AuthorizationExpired(deadline, block.timestamp);
        uint256 expected = adminNonce;
        if (nonce != expected) revert BadAdminNonce(nonce, expected);
        digest = _hashTypedDataV4(structHash);
        address recovered = StrictECDSA.recover(digest, signature);
        if (recovered != _signer) revert UnauthorizedSigner(recovered);
        adminNonce = expected + 1;
    }

    function _queue(bytes32 actionId, bytes32 actionType, uint256 delay, uint32 epoch, uint32 tag)
        private
        returns (uint256 eta)
    {
        PendingAction storage p = _actions[actionId];
        if (p.status != ActionStatus.None) revert ActionAlreadyExists(actionId, p.status);
        eta = block.timestamp + delay;
        p.status = ActionStatus.Queued;
        // forge-lint: disable-next-line(unsafe-typecast) a timestamp plus a uint32 delay fits
        p.eta = uint64(eta);
        p.epoch = epoch;
        p.tag = tag;
        emit ActionQueued(actionId, actionType, eta);
    }

    /// @dev Mark a queued action executed if it is due and still valid.
    function _consume(bytes32 actionId) private returns (PendingAction storage p) {
        p = _actions[actionId];
        if (p.status != ActionStatus.Queued) revert ActionNotQueued(actionId, p.status);
        if (block.timestamp < p.eta) revert ActionNotReady(actionId, p.eta);
        p.status = ActionStatus.Executed;
        emit ActionExecuted(actionId);
    }

    /// @dev Administrative actions are void once the epoch changed (a rotation) or once what they
    ///      were queued against changed (`tag`: the asset's config version, the unpause count).
    function _consumeAdmin(bytes32 actionId, uint32 tag) private {
        PendingAction storage p = _consume(actionId);
        if (p.epoch != _epoch || p.tag != tag) revert ActionStale(actionId);
    }

    /// @dev Queued mints and refunds stay valid while their epoch's key is accepted for orders.
    function _consumeIssuance(bytes32 actionId) private {
        PendingAction storage p = _consume(actionId);
        uint32 e = p.epoch;
        uint32 epoch = _epoch;
        if (!(e == epoch || (epoch != 0 && e == epoch - 1 && block.timestamp < _retiredUntil))) {
            revert ActionStale(actionId);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Internals: limits
    // ------------------------------------------------------------------------------------------

    /// @dev The bucket level now: `used` drains at `cap / length` per second since `updatedAt`.
    function _bucketLevel(uint256 used, uint256 updatedAt, uint256 cap, uint256 length)
        private
        view
        returns (uint256)
    {
        // cap < 2^128 and elapsed < 2^64: the product cannot overflow.
        uint256 drained = cap * (block.timestamp - updatedAt) / length;
        return used > drained ? used - drained : 0;
    }

    /// @dev Charge a supply increase (mint or refund) to the asset's mint bucket and ceiling.
    function _issue(AssetState storage a, address asset, uint256 amount) private {
        uint256 length = a.windowLength;
        if (length == 0) revert AssetNotConfigured(asset);
        uint256 cap = a.mintCap;
        uint256 used = _bucketLevel(a.mintUsed, a.mintUpdatedAt, cap, length);
        uint256 remaining = cap > used ? cap - used : 0;
        if (amount > remaining) revert WindowCapExceeded(asset, amount, remaining);
        uint256 supplyAfter = a.supply + amount;
        if (supplyAfter > a.supplyCeiling) revert SupplyCeilingExceeded(asset, supplyAfter, a.supplyCeiling);
        // Fits: used + amount <= cap < 2^128 and supplyAfter <= ceiling < 2^128.
        // forge-lint: disable-next-line(unsafe-typecast)
        a.mintUsed = uint128(used + amount);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.mintUpdatedAt = uint64(block.timestamp);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.supply = uint128(supplyAfter);
    }

    /// @dev The asset is configured, the order names its source chain, and the deposit is unminted.
    function _checkDeposit(AssetState storage a, MintOrder calldata order) private view returns (bytes32 depositId) {
        if (a.windowLength == 0) revert AssetNotConfigured(order.asset);
        if (order.sourceChain != a.sourceChain) revert WrongSourceChain(order.asset, order.sourceChain, a.sourceChain);
        depositId = depositIdOf(order.sourceChain, order.sourceTxId, order.vout);
        bytes32 previous = mintedDeposit[depositId];
        if (previous != bytes32(0)) revert DepositAlreadyMinted(depositId, previous);
    }

    function _mintDeposit(
        AssetState storage a,
        MintOrder calldata order,
        bytes32 depositId,
        bytes32 digest,
        address signer
    ) private {
        // Effects before the interaction: the deposit is spent and the limits charged before the
        // token is called, so no re-entrant path can observe an unspent deposit.
        mintedDeposit[depositId] = digest;
        _issue(a, order.asset, order.amount);
        IWrappedAsset(order.asset).mint(order.recipient, order.amount);
        emit Minted(
            depositId,
            order.asset,
            order.recipient,
            order.amount,
            order.sourceChain,
            order.sourceTxId,
            order.vout,
            order.nonce,
            digest,
            signer
        );
    }

    function _burnCommitment(address asset, address burner, uint256 amount) private pure returns (bytes32) {
        return _withoutRefundBit(keccak256(abi.encode(asset, burner, amount)));
    }

    function _withoutRefundBit(bytes32 record) private pure returns (bytes32) {
        return bytes32(uint256(record) & ~REFUNDED_BIT);
    }

    /// @dev The refund names a recorded, unrefunded burn exactly.
    function _checkBurn(RefundBurn calldata r) private view {
        bytes32 record = burnRecord[r.burnNonce];
        if (record == 0) revert UnknownBurn(r.burnNonce);
        if (_withoutRefundBit(record) != _burnCommitment(r.asset, r.burner, r.amount)) revert BurnMismatch(r.burnNonce);
        if (uint256(record) & REFUNDED_BIT != 0) revert BurnAlreadyRefunded(r.burnNonce);
    }

    function _refund(AssetState storage a, RefundBurn calldata r, bytes32 digest) private {
        burnRecord[r.burnNonce] = bytes32(uint256(burnRecord[r.burnNonce]) | REFUNDED_BIT);
        _issue(a, r.asset, r.amount);
        IWrappedAsset(r.asset).mint(r.burner, r.amount);
        emit Refunded(burnIdOf(r.burnNonce), r.asset, r.burner, r.burnNonce, r.amount, digest);
    }

    /// @dev A destination in the form the asset's home chain uses. The nodes decode it fully (and
    ///      refund what they cannot pay); this check stops what is malformed on its face — e.g. the
    ///      zero address or a precompile for an EVM payout, or binary junk for a Bitcoin one.
    function _checkDestination(DestinationKind kind, bytes calldata d) private pure {
        if (kind == DestinationKind.EvmAddress) {
            if (d.length == 20 && uint160(bytes20(d)) > 0xffff) return;
        } else if (kind == DestinationKind.BitcoinAddress) {
            uint256 length = d.length;
            if (length >= MIN_BITCOIN_ADDRESS_LENGTH && length <= MAX_DESTINATION_LENGTH) {
                // Every byte must be an ASCII letter or digit: bit c of ALPHANUMERIC is set iff byte c is.
                bool ok = true;
                assembly ("memory-safe") {
                    let offset := d.offset
                    for { let i := 0 } lt(i, length) { i := add(i, 1) } {
                        let c := byte(0, calldataload(add(offset, i)))
                        ok := and(ok, and(shr(c, ALPHANUMERIC), 1))
                    }
                }
                if (ok) return;
            }
        }
        revert InvalidDestination(kind, d.length);
    }

    // ------------------------------------------------------------------------------------------
    // Internals: configuration
    // ------------------------------------------------------------------------------------------

    /// @dev Range and consistency checks; returns the source chain's key.
    function _validateConfig(address asset, AssetConfig calldata c) private view returns (bytes32 chain) {
        if (
            c.windowLength == 0 || c.windowLength > type(uint32).max || c.mintCap > type(uint128).max
                || c.burnCap > type(uint128).max || c.supplyCeiling > type(uint128).max
                || c.largeMintThreshold > type(uint128).max || c.minBurn > type(uint128).max
                || c.destinationKind == DestinationKind.None
        ) revert InvalidAssetConfig();
        chain = chainKeyOf(c.sourceChain);
        AssetState storage a = _assets[asset];
        if (a.windowLength != 0 && (chain != a.sourceChain || c.destinationKind != a.destinationKind)) {
            revert SourceChainFixed(asset);
        }
        if (asset.code.length == 0) revert InvalidAssetConfig();
        address itsGateway = IWrappedAsset(asset).gateway();
        if (itsGateway != address(this)) revert NotThisGateway(asset, itsGateway);
    }

    /// @dev Whether `c` only tightens the asset's current limits (an unconfigured asset never does).
    function _tightens(AssetState storage a, AssetConfig calldata c) private view returns (bool) {
        return a.windowLength != 0 && c.mintCap <= a.mintCap && c.burnCap <= a.burnCap
            && c.supplyCeiling <= a.supplyCeiling && c.largeMintThreshold <= a.largeMintThreshold
            && c.minBurn >= a.minBurn && c.windowLength >= a.windowLength;
    }

    /// @dev Apply a configuration. Both buckets are first brought up to now under the old limits, so
    ///      a change (of a cap or of the window length) takes effect from now on and never resets
    ///      what was already used.
    function _applyConfig(AssetState storage a, address asset, bytes32 chain, AssetConfig calldata c) private {
        uint256 length = a.windowLength;
        if (length != 0) {
            // forge-lint: disable-next-line(unsafe-typecast) a bucket level never exceeds its uint128 start
            a.mintUsed = uint128(_bucketLevel(a.mintUsed, a.mintUpdatedAt, a.mintCap, length));
            // forge-lint: disable-next-line(unsafe-typecast)
            a.burnUsed = uint128(_bucketLevel(a.burnUsed, a.burnUpdatedAt, a.burnCap, length));
        }
        // forge-lint: disable-next-line(unsafe-typecast)
        a.mintUpdatedAt = uint64(block.timestamp);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.burnUpdatedAt = uint64(block.timestamp);
        // The casts below are range-checked in _validateConfig.
        // forge-lint: disable-next-line(unsafe-typecast)
        a.windowLength = uint64(c.windowLength);
        uint32 version = a.configVersion + 1;
        a.configVersion = version;
        a.destinationKind = c.destinationKind;
        // forge-lint: disable-next-line(unsafe-typecast)
        a.supplyCeiling = uint128(c.supplyCeiling);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.mintCap = uint128(c.mintCap);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.largeMintThreshold = uint128(c.largeMintThreshold);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.burnCap = uint128(c.burnCap);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.minBurn = uint128(c.minBurn);
        a.sourceChain = chain;
        emit AssetConfigured(asset, chain, version, c);
    }

    function _pause(address by) private {
        if (paused) return;
        paused = true;
        emit Paused(by);
    }
}
