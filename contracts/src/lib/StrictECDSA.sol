// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title StrictECDSA
/// @notice Recovers the signer of a 65-byte secp256k1 signature `r ‖ s ‖ v`, accepting only the
///         canonical form.
/// @dev Why a library of our own rather than bare `ecrecover`: `ecrecover` accepts both `s` and
///      `n - s` for the same message (signature malleability) and returns `address(0)` instead of
///      failing. A malleable signature is a second, different byte string for the same order, so
///      anything keyed on signature bytes could be replayed; and `address(0)` must never compare
///      equal to an unset signer. We therefore require `s <= n/2` (the threshold signer normalises
///      to low-S, as Ethereum transactions require since EIP-2), `v ∈ {27, 28}` (no 0/1 or
///      EIP-155-style values, so one signature has one encoding) and a non-zero result.
///      Each failure has its own error so a relayer can tell a malformed signature from a
///      signature by the wrong key.
library StrictECDSA {
    /// @dev floor(n / 2) for the secp256k1 group order
    ///      n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141.
    uint256 internal constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    /// @notice The signature is not exactly 65 bytes (`r ‖ s ‖ v`).
    error SignatureBadLength(uint256 length);
    /// @notice `v` is not 27 or 28.
    error SignatureBadV(uint8 v);
    /// @notice `s` is in the upper half of the group order (the malleable twin of a valid signature).
    error SignatureHighS(bytes32 s);
    /// @notice `ecrecover` found no public key (r or s is zero or out of range, or no point has x = r).
    error SignatureUnrecoverable();

    /// @notice Recover the signer of `digest` from a packed 65-byte signature.
    function recover(bytes32 digest, bytes calldata signature) internal pure returns (address) {
        if (signature.length != 65) revert SignatureBadLength(signature.length);
        bytes32 r;
        bytes32 s;
        uint8 v;
        // Safe: the length was checked to be 65, so all three loads are within the calldata slice.
        assembly ("memory-safe") {
            r := calldataload(signature.offset)
            s := calldataload(add(signature.offset, 32))
            v := byte(0, calldataload(add(signature.offset, 64)))
        }
        return recover(digest, v, r, s);
    }

    /// @notice Recover the signer of `digest` from its components; reverts unless canonical.
    function recover(bytes32 digest, uint8 v, bytes32 r, bytes32 s) internal pure returns (address signer) {
        if (v != 27 && v != 28) revert SignatureBadV(v);
        if (uint256(s) > HALF_ORDER) revert SignatureHighS(s);
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert SignatureUnrecoverable();
    }
}
