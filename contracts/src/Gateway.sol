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
///         observed and co-signed, and burns them against payout requests the nodes watch.
/// @dev Trust model. The "group key" is an ordinary secp256k1 address whose private key never
///      exists in one place: it is held as CGGMP21 threshold shares by the node operators. To this
///      contract it is just `signer`. Everything the group decides reaches the chain as an EIP-712
///      signature that anyone may relay, so the group key needs no gas on this chain and a relayer
///      can never alter what was signed.
///
///      Safety properties, and where each is enforced:
///      - one mint per deposit: `mintedDeposit[depositId]` is set before the token is minted
///        (checks-effects-interactions); the deposit id covers (sourceChainId, sourceTxId, vout)
///        only, so even two *different* group-signed orders for the same deposit mint once;
///      - no cross-chain or cross-contract replay: chainId and verifyingContract are in the
///        EIP-712 domain (OpenZeppelin EIP712 recomputes the separator if the chain forks);
///      - no malleated signature: {StrictECDSA} rejects high-S and v ∉ {27, 28};
///      - bounded loss if the key or the nodes' checks fail: a per-asset cap per fixed time window;
///      - stop switch: a guardian (e.g. a monitoring service) can pause but never unpause, so
///        a compromised guardian can at worst halt the bridge, never reopen it;
///      - key rotation without a flag day: a new key announced by the current key becomes active
///        after `ROTATION_DELAY` (time for the guardian and users to react), and the previous key
///        stays valid for mint orders for `SIGNER_RETENTION` after activation so orders signed
///        just before the switch still execute. Administrative actions accept the active key only.
contract Gateway is EIP712 {
    // ------------------------------------------------------------------------------------------
    // Types
    // ------------------------------------------------------------------------------------------

    /// @notice A group-signed instruction to mint `amount` of `asset` to `recipient` for the deposit
    ///         `(sourceChainId, sourceTxId, vout)`.
    /// @param asset the WrappedAsset to mint (bound into the signature so an order for one asset
    ///        can never mint another).
    /// @param sourceChainId where the deposit happened: the EIP-155 chain id for EVM chains; for
    ///        other chains `uint256(keccak256(bytes(caip2)))` of the CAIP-2 chain id, e.g.
    ///        "bip122:000000000019d6689c085ae165831e93" for Bitcoin mainnet (see README).
    /// @param sourceTxId the deposit transaction id as 32 bytes (Bitcoin: the txid in RPC display
    ///        order, i.e. `bytes.fromhex(txid)`; EVM: the transaction hash).
    /// @param vout the output index (Bitcoin) or log index (EVM) of the deposit within that transaction.
    /// @param recipient who receives the wrapped tokens.
    /// @param amount base units of the asset to mint.
    /// @param nonce the bridge's order number; it makes every signed order distinct (e.g. a re-issue
    ///        after expiry) and is reported in {Minted}. Replay protection is the deposit id.
    /// @param deadline last second (inclusive, block timestamp) at which the order may execute.
    struct MintOrder {
        address asset;
        uint256 sourceChainId;
        bytes32 sourceTxId;
        uint32 vout;
        address recipient;
        uint256 amount;
        uint256 nonce;
        uint256 deadline;
    }

    /// @dev Per-asset mint limits and the running total of the current window.
    ///      Slot 0 is the only slot written by a mint.
    struct AssetState {
        // slot 0
        uint128 windowMinted; // minted so far in window `windowIndex`
        uint64 windowIndex; // block.timestamp / windowLength when windowMinted was last written
        // slot 1
        uint128 windowCap; // at most this much minted per window
        uint64 windowLength; // window length in seconds; 0 means "asset not configured"
        // slot 2
        uint128 minBurn; // smallest burn accepted (a payout below the destination chain's dust is unpayable)
    }

    // ------------------------------------------------------------------------------------------
    // Constants and immutables
    // ------------------------------------------------------------------------------------------

    bytes32 public constant MINT_ORDER_TYPEHASH = keccak256(
        "MintOrder(address asset,uint256 sourceChainId,bytes32 sourceTxId,uint32 vout,address recipient,uint256 amount,uint256 nonce,uint256 deadline)"
    );
    bytes32 public constant ROTATE_SIGNER_TYPEHASH =
        keccak256("RotateSigner(address newSigner,uint256 nonce,uint256 deadline)");
    bytes32 public constant CANCEL_ROTATION_TYPEHASH =
        keccak256("CancelRotation(address pendingSigner,uint256 nonce,uint256 deadline)");
    bytes32 public constant PAUSE_TYPEHASH = keccak256("Pause(uint256 nonce,uint256 deadline)");
    bytes32 public constant UNPAUSE_TYPEHASH = keccak256("Unpause(uint256 nonce,uint256 deadline)");
    bytes32 public constant CONFIGURE_ASSET_TYPEHASH = keccak256(
        "ConfigureAsset(address asset,uint256 windowCap,uint256 windowLength,uint256 minBurn,uint256 nonce,uint256 deadline)"
    );
    bytes32 public constant SET_GUARDIAN_TYPEHASH =
        keccak256("SetGuardian(address guardian,uint256 nonce,uint256 deadline)");

    /// @notice Longest accepted burn destination. Bitcoin's longest address (bech32m, 90 chars)
    ///         fits with room to spare; the bound stops a burner from making every watcher store
    ///         and parse an arbitrarily large blob.
    uint256 public constant MAX_DESTINATION_LENGTH = 128;

    /// @notice Seconds between the announcement of a new group key and its activation.
    uint256 public immutable ROTATION_DELAY;
    /// @notice Seconds after a rotation's activation during which the previous key still signs mints.
    uint256 public immutable SIGNER_RETENTION;

    // ------------------------------------------------------------------------------------------
    // Storage (slots 0 and 1 belong to OpenZeppelin EIP712's string fallbacks; see README)
    // ------------------------------------------------------------------------------------------

    /// @dev slot 2: the key that was active when the last rotation was settled, packed with the
    ///      activation time of the pending rotation (0 = none pending) so a mint reads one slot.
    address private _signer;
    uint64 private _pendingActivatesAt;
    /// @dev slot 3: the announced next key, active from `_pendingActivatesAt`.
    address private _pendingSigner;
    /// @dev slot 4: the previous key and the end (exclusive) of its retention period.
    address private _retiredSigner;
    uint64 private _retiredUntil;
    /// @notice slot 5: the address that may pause (and only pause).
    address public guardian;
    /// @notice slot 5: when true, mint and burn revert.
    bool public paused;
    /// @notice slot 6: the nonce the next administrative signature must carry (strictly sequential,
    ///         so every signed administrative action executes at most once and in order).
    uint256 public adminNonce;
    /// @notice slot 7: number of burns so far; the n-th burn has burn nonce n (starting at 1).
    uint256 public burnCount;
    /// @notice slot 8: deposit id => EIP-712 digest of the order that minted it (zero = not minted).
    mapping(bytes32 depositId => bytes32 orderDigest) public mintedDeposit;
    /// @dev slot 9: per-asset limits.
    mapping(address asset => AssetState) private _assets;

    // ------------------------------------------------------------------------------------------
    // Events (the interface the nodes' watchers consume; see README)
    // ------------------------------------------------------------------------------------------

    /// @notice A deposit was minted. `orderDigest` is the EIP-712 digest the group signed.
    event Minted(
        bytes32 indexed depositId,
        address indexed asset,
        address indexed recipient,
        uint256 amount,
        uint256 sourceChainId,
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
    /// @notice The active key announced `newSigner`, active from `activatesAt`.
    event SignerRotationProposed(address indexed currentSigner, address indexed newSigner, uint256 activatesAt);
    /// @notice A pending rotation was withdrawn (explicitly, or replaced by a newer proposal).
    event SignerRotationCancelled(address indexed pendingSigner);
    /// @notice A rotation took effect at `activatedAt` (emitted when it is recorded, which may be
    ///         later); `previousSigner` signs mints until `retainedUntil` (exclusive).
    event SignerActivated(
        address indexed newSigner, address indexed previousSigner, uint256 activatedAt, uint256 retainedUntil
    );
    event Paused(address indexed by);
    event Unpaused(address indexed by);
    event GuardianChanged(address indexed previousGuardian, address indexed newGuardian);
    event AssetConfigured(address indexed asset, uint256 windowCap, uint256 windowLength, uint256 minBurn);

    // ------------------------------------------------------------------------------------------
    // Errors
    // ------------------------------------------------------------------------------------------

    error ZeroAddress();
    error ZeroAmount();
    error InvalidDelay();
    error GatewayPaused();
    error OrderExpired(uint256 deadline, uint256 nowTimestamp);
    error AuthorizationExpired(uint256 deadline, uint256 nowTimestamp);
    error UnauthorizedSigner(address recovered);
    error DepositAlreadyMinted(bytes32 depositId, bytes32 mintedByOrder);
    error AssetNotConfigured(address asset);
    error WindowCapExceeded(address asset, uint256 requested, uint256 remaining);
    error BadAdminNonce(uint256 given, uint256 expected);
    error NotGuardianOrSigner(address caller);
    error SignerUnchanged(address signer);
    error NoPendingRotation();
    error PendingRotationMismatch(address pending, address given);
    error NotThisGateway(address asset, address itsGateway);
    error InvalidAssetConfig();
    error BurnBelowMinimum(uint256 amount, uint256 minBurn);
    error InvalidDestinationLength(uint256 length);

    // ------------------------------------------------------------------------------------------
    // Construction
    // ------------------------------------------------------------------------------------------

    /// @param initialSigner the group key's address.
    /// @param initialGuardian the address allowed to pause (may be zero: only the group key pauses).
    /// @param rotationDelay seconds from a rotation's announcement to its activation (> 0).
    /// @param signerRetention seconds the previous key keeps signing mints after activation.
    constructor(address initialSigner, address initialGuardian, uint256 rotationDelay, uint256 signerRetention)
        EIP712("Fusion Prime Gateway", "1")
    {
        if (initialSigner == address(0)) revert ZeroAddress();
        // A zero delay would let a stolen key replace itself instantly; the uint64 bound keeps
        // activation times representable in the packed slot.
        if (rotationDelay == 0 || rotationDelay > type(uint32).max || signerRetention > type(uint32).max) {
            revert InvalidDelay();
        }
        ROTATION_DELAY = rotationDelay;
        SIGNER_RETENTION = signerRetention;
        _signer = initialSigner;
        guardian = initialGuardian;
        emit SignerActivated(initialSigner, address(0), block.timestamp, block.timestamp);
        emit GuardianChanged(address(0), initialGuardian);
    }

    // ------------------------------------------------------------------------------------------
    // Mint and burn
    // ------------------------------------------------------------------------------------------

    /// @notice Execute a group-signed mint order. Anyone may relay it: the signature, not the
    ///         caller, is the authority, and the caller cannot change any field.
    /// @param order the order, exactly as signed.
    /// @param signature 65 bytes `r ‖ s ‖ v` over the EIP-712 digest of `order`, by the active key
    ///        or by the previous key during its retention period.
    /// @return digest the EIP-712 digest of the order (also in {Minted}).
    function mint(MintOrder calldata order, bytes calldata signature) external returns (bytes32 digest) {
        if (paused) revert GatewayPaused();
        if (block.timestamp > order.deadline) revert OrderExpired(order.deadline, block.timestamp);
        if (order.amount == 0) revert ZeroAmount();
        if (order.recipient == address(0)) revert ZeroAddress();

        digest = _hashTypedDataV4(hashMintOrder(order));
        address signer = StrictECDSA.recover(digest, signature);
        if (!_acceptsForMint(signer)) revert UnauthorizedSigner(signer);

        bytes32 depositId = depositIdOf(order.sourceChainId, order.sourceTxId, order.vout);
        bytes32 previous = mintedDeposit[depositId];
        if (previous != bytes32(0)) revert DepositAlreadyMinted(depositId, previous);

        // Effects before the interaction: the deposit is spent and the window charged before the
        // token is called, so no re-entrant path can observe an unspent deposit.
        mintedDeposit[depositId] = digest;
        _chargeWindow(order.asset, order.amount);

        IWrappedAsset(order.asset).mint(order.recipient, order.amount);
        _emitMinted(order, depositId, digest, signer);
    }

    /// @notice Burn `amount` of your `asset` and ask the custody network to pay it out to
    ///         `destination` (a Bitcoin address as UTF-8 text, or an address on another chain).
    /// @dev The gateway burns from `msg.sender` only. The destination is not parsed on-chain (the
    ///      nodes parse it for the asset's home chain); a destination they cannot pay to is refunded
    ///      by a mint order whose deposit is this burn (see README), never silently dropped.
    /// @return burnNonce this burn's sequence number (also in {Burned}).
    function burn(address asset, uint256 amount, bytes calldata destination) external returns (uint256 burnNonce) {
        if (paused) revert GatewayPaused();
        AssetState storage a = _assets[asset];
        if (a.windowLength == 0) revert AssetNotConfigured(asset);
        if (amount == 0) revert ZeroAmount();
        if (amount < a.minBurn) revert BurnBelowMinimum(amount, a.minBurn);
        if (destination.length == 0 || destination.length > MAX_DESTINATION_LENGTH) {
            revert InvalidDestinationLength(destination.length);
        }

        burnNonce = ++burnCount;
        IWrappedAsset(asset).burn(msg.sender, amount);
        emit Burned(burnIdOf(burnNonce), asset, msg.sender, burnNonce, amount, destination);
    }

    // ------------------------------------------------------------------------------------------
    // Pause
    // ------------------------------------------------------------------------------------------

    /// @notice Pause mint and burn. Callable by the guardian or by the active group key itself.
    ///         Idempotent, so several monitors racing to pause cannot make each other fail.
    function pause() external {
        if (msg.sender != guardian && msg.sender != activeSigner()) revert NotGuardianOrSigner(msg.sender);
        _setPaused(true, msg.sender);
    }

    /// @notice Pause on a group-key signature relayed by anyone.
    function pauseWithSignature(uint256 nonce, uint256 deadline, bytes calldata signature) external {
        address signer =
            _authorizeAdmin(keccak256(abi.encode(PAUSE_TYPEHASH, nonce, deadline)), nonce, deadline, signature);
        _setPaused(true, signer);
    }

    /// @notice Unpause on a group-key signature. The guardian has no way to unpause by design.
    function unpause(uint256 nonce, uint256 deadline, bytes calldata signature) external {
        address signer =
            _authorizeAdmin(keccak256(abi.encode(UNPAUSE_TYPEHASH, nonce, deadline)), nonce, deadline, signature);
        _setPaused(false, signer);
    }

    // ------------------------------------------------------------------------------------------
    // Group-key administration
    // ------------------------------------------------------------------------------------------

    /// @notice Announce `newSigner` as the next group key, active `ROTATION_DELAY` seconds from now.
    ///         Signed by the active key only (a retired key must not be able to steer the rotation).
    ///         A proposal replaces any rotation still pending, restarting the delay.
    function rotateSigner(address newSigner, uint256 nonce, uint256 deadline, bytes calldata signature) external {
        if (newSigner == address(0)) revert ZeroAddress();
        _authorizeAdmin(
            keccak256(abi.encode(ROTATE_SIGNER_TYPEHASH, newSigner, nonce, deadline)), nonce, deadline, signature
        );
        _settleRotation();
        address current = _signer;
        if (newSigner == current) revert SignerUnchanged(current);
        address replaced = _pendingSigner;
        if (replaced != address(0)) emit SignerRotationCancelled(replaced);
        uint256 activatesAt = block.timestamp + ROTATION_DELAY;
        _pendingSigner = newSigner;
        // forge-lint: disable-next-line(unsafe-typecast) timestamp + delay (< 2^32) is far below 2^64
        _pendingActivatesAt = uint64(activatesAt);
        emit SignerRotationProposed(current, newSigner, activatesAt);
    }

    /// @notice Withdraw the pending rotation to `pendingSigner` before it activates.
    /// @dev `pendingSigner` is in the signed message so a cancellation cannot hit a different,
    ///      later proposal than the one the group meant.
    function cancelSignerRotation(address pendingSigner, uint256 nonce, uint256 deadline, bytes calldata signature)
        external
    {
        _authorizeAdmin(
            keccak256(abi.encode(CANCEL_ROTATION_TYPEHASH, pendingSigner, nonce, deadline)),
            nonce,
            deadline,
            signature
        );
        _settleRotation();
        address pending = _pendingSigner;
        if (pending == address(0)) revert NoPendingRotation();
        if (pending != pendingSigner) revert PendingRotationMismatch(pending, pendingSigner);
        delete _pendingSigner;
        delete _pendingActivatesAt;
        emit SignerRotationCancelled(pending);
    }

    /// @notice Record a rotation whose activation time has passed. Optional: the contract already
    ///         treats the new key as active from that time; this only writes it down (and emits
    ///         {SignerActivated}) so storage and logs match. Anyone may call it.
    function activateSigner() external {
        _settleRotation();
    }

    /// @notice Enable `asset` (which must name this gateway as its minter) or change its limits.
    /// @param windowCap most base units mintable per window (0 halts minting of this asset).
    /// @param windowLength window length in seconds (> 0); windows are aligned to multiples of it.
    /// @param minBurn smallest burn accepted.
    function configureAsset(
        address asset,
        uint256 windowCap,
        uint256 windowLength,
        uint256 minBurn,
        uint256 nonce,
        uint256 deadline,
        bytes calldata signature
    ) external {
        _authorizeAdmin(
            keccak256(abi.encode(CONFIGURE_ASSET_TYPEHASH, asset, windowCap, windowLength, minBurn, nonce, deadline)),
            nonce,
            deadline,
            signature
        );
        if (windowLength == 0 || windowLength > type(uint64).max) revert InvalidAssetConfig();
        if (windowCap > type(uint128).max || minBurn > type(uint128).max) revert InvalidAssetConfig();
        if (asset.code.length == 0) revert InvalidAssetConfig();
        address itsGateway = IWrappedAsset(asset).gateway();
        if (itsGateway != address(this)) revert NotThisGateway(asset, itsGateway);

        AssetState storage a = _assets[asset];
        // Keep what was already minted in the current window, so reconfiguring can never reset the
        // rate limit: the running total carries over into the window that is current under the
        // new length.
        uint256 carried = (a.windowLength != 0 && a.windowIndex == block.timestamp / a.windowLength)
            ? a.windowMinted
            : 0;
        // The casts below are range-checked above (or are bounded by such a value: carried is a
        // previous uint128, the window index is at most the timestamp).
        // forge-lint: disable-next-line(unsafe-typecast)
        a.windowMinted = uint128(carried);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.windowIndex = uint64(block.timestamp / windowLength);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.windowCap = uint128(windowCap);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.windowLength = uint64(windowLength);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.minBurn = uint128(minBurn);
        emit AssetConfigured(asset, windowCap, windowLength, minBurn);
    }

    /// @notice Replace the guardian (zero removes it).
    function setGuardian(address newGuardian, uint256 nonce, uint256 deadline, bytes calldata signature) external {
        _authorizeAdmin(
            keccak256(abi.encode(SET_GUARDIAN_TYPEHASH, newGuardian, nonce, deadline)), nonce, deadline, signature
        );
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

    /// @notice The digest the group key signs for `order` on this chain and gateway.
    function mintOrderDigest(MintOrder calldata order) external view returns (bytes32) {
        return _hashTypedDataV4(hashMintOrder(order));
    }

    /// @notice The EIP-712 domain separator (chain id and this address are in it).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The replay key of a deposit: one mint per (source chain, transaction, output).
    function depositIdOf(uint256 sourceChainId, bytes32 sourceTxId, uint32 vout) public pure returns (bytes32) {
        return keccak256(abi.encode(sourceChainId, sourceTxId, vout));
    }

    /// @notice The globally unique id of burn number `burnNonce` of this gateway on this chain.
    function burnIdOf(uint256 burnNonce) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), burnNonce));
    }

    /// @notice The key that signs administrative actions and mint orders now.
    function activeSigner() public view returns (address active) {
        (active,,) = _keys();
    }

    /// @notice The full key schedule as of now.
    /// @return active the active key
    /// @return previous the previous key (zero if none)
    /// @return previousValidUntil the previous key signs mints while block.timestamp < this
    /// @return pending the announced next key (zero if none or already active)
    /// @return pendingActivatesAt when `pending` becomes active
    function signerSchedule()
        external
        view
        returns (address active, address previous, uint256 previousValidUntil, address pending, uint256 pendingActivatesAt)
    {
        (active, previous, previousValidUntil) = _keys();
        uint64 at = _pendingActivatesAt;
        if (at != 0 && block.timestamp < at) {
            pending = _pendingSigner;
            pendingActivatesAt = at;
        }
    }

    /// @notice Whether a mint order signed by `key` would be accepted now.
    function acceptsMintSigner(address key) external view returns (bool) {
        return key != address(0) && _acceptsForMint(key);
    }

    /// @notice An asset's limits and how much can still be minted in the current window.
    function assetState(address asset)
        external
        view
        returns (uint256 windowCap, uint256 windowLength, uint256 minBurn, uint256 mintedThisWindow, uint256 remaining)
    {
        AssetState storage a = _assets[asset];
        windowCap = a.windowCap;
        windowLength = a.windowLength;
        minBurn = a.minBurn;
        if (windowLength != 0 && a.windowIndex == block.timestamp / windowLength) mintedThisWindow = a.windowMinted;
        remaining = windowCap > mintedThisWindow ? windowCap - mintedThisWindow : 0;
    }

    // ------------------------------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------------------------------

    /// @dev The key schedule as of `block.timestamp`, computed without writing storage so a mint
    ///      never pays for recording a rotation: a pending rotation whose time has come is active.
    function _keys() private view returns (address active, address previous, uint256 previousValidUntil) {
        active = _signer;
        uint64 at = _pendingActivatesAt;
        if (at != 0 && block.timestamp >= at) {
            return (_pendingSigner, active, uint256(at) + SIGNER_RETENTION);
        }
        return (active, _retiredSigner, _retiredUntil);
    }

    /// @dev Mint orders: the active key, or the previous key strictly before the end of retention.
    function _acceptsForMint(address key) private view returns (bool) {
        (address active, address previous, uint256 previousValidUntil) = _keys();
        return key == active || (key == previous && block.timestamp < previousValidUntil);
    }

    /// @dev Write down a rotation whose activation time has passed.
    function _settleRotation() private {
        uint64 at = _pendingActivatesAt;
        if (at == 0 || block.timestamp < at) return;
        address previous = _signer;
        address next = _pendingSigner;
        uint256 retainedUntil = uint256(at) + SIGNER_RETENTION;
        _signer = next;
        _retiredSigner = previous;
        // forge-lint: disable-next-line(unsafe-typecast) a uint64 time plus a uint32 retention fits
        _retiredUntil = uint64(retainedUntil);
        delete _pendingSigner;
        delete _pendingActivatesAt;
        emit SignerActivated(next, previous, at, retainedUntil);
    }

    /// @dev Check an administrative signature by the active key and consume its nonce.
    function _authorizeAdmin(bytes32 structHash, uint256 nonce, uint256 deadline, bytes calldata signature)
        private
        returns (address recovered)
    {
        if (block.timestamp > deadline) revert AuthorizationExpired(deadline, block.timestamp);
        uint256 expected = adminNonce;
        if (nonce != expected) revert BadAdminNonce(nonce, expected);
        recovered = StrictECDSA.recover(_hashTypedDataV4(structHash), signature);
        if (recovered != activeSigner()) revert UnauthorizedSigner(recovered);
        adminNonce = expected + 1;
    }

    /// @dev Charge `amount` against the asset's current window; reverts if it would exceed the cap.
    function _chargeWindow(address asset, uint256 amount) private {
        AssetState storage a = _assets[asset];
        uint256 length = a.windowLength;
        if (length == 0) revert AssetNotConfigured(asset);
        uint256 index = block.timestamp / length;
        uint256 minted = a.windowIndex == index ? a.windowMinted : 0;
        uint256 cap = a.windowCap;
        uint256 remaining = cap > minted ? cap - minted : 0;
        if (amount > remaining) revert WindowCapExceeded(asset, amount, remaining);
        // Fits: minted + amount <= cap <= type(uint128).max, and index <= timestamp < 2^64.
        // forge-lint: disable-next-line(unsafe-typecast)
        a.windowMinted = uint128(minted + amount);
        // forge-lint: disable-next-line(unsafe-typecast)
        a.windowIndex = uint64(index);
    }

    function _setPaused(bool value, address by) private {
        if (paused == value) return;
        paused = value;
        if (value) emit Paused(by);
        else emit Unpaused(by);
    }

    /// @dev Split out of {mint} to keep the stack shallow without via-IR.
    function _emitMinted(MintOrder calldata o, bytes32 depositId, bytes32 digest, address signer) private {
        emit Minted(depositId, o.asset, o.recipient, o.amount, o.sourceChainId, o.sourceTxId, o.vout, o.nonce, digest, signer);
    }
}
