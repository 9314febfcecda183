"""BIP143 signature hashing and P2WPKH signing — re-exported from the signer SDK.

The canonical implementation lives in :mod:`fusion_prime.signer.bitcoin` (the bridge may import
the signer SDK, never the other way round), so the digest the bridge asks the threshold network
to sign and the digest the wallet SDK computes are one piece of code. The helpers are duck-typed
over the transaction and accept this package's :class:`~fusion_prime.bridge.chains.bitcoin.tx.Tx`.

:func:`bip143_sighash` is what the signer is asked to sign, :func:`finalize_p2wpkh_input` places a
returned (r, s) into the witness, :func:`sign_p2wpkh` is the single-key path used by tests and the
devnet faucet, :func:`sign_p2wpkh_with` signs through a ``digest -> (r, s)`` callback.
"""

from __future__ import annotations

from fusion_prime.signer.bitcoin import (
    _VALID_SIGHASH,
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
    bip143_sighash,
    der_encode_signature,
    finalize_p2wpkh_input,
    p2wpkh_sighash,
    sign_p2wpkh,
    sign_p2wpkh_with,
)

__all__ = [
    "SIGHASH_ALL",
    "SIGHASH_ANYONECANPAY",
    "SIGHASH_NONE",
    "SIGHASH_SINGLE",
    "_VALID_SIGHASH",
    "bip143_sighash",
    "der_encode_signature",
    "finalize_p2wpkh_input",
    "p2wpkh_sighash",
    "sign_p2wpkh",
    "sign_p2wpkh_with",
]
