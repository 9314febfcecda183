"""BIP143 signature hashing and P2WPKH signing.

The bridge spends custody outputs with signatures produced elsewhere (the threshold signer), so
the digest computation is separate from the signature: :func:`bip143_sighash` is what the
signer is asked to sign, :func:`finalize_p2wpkh_input` places a returned (r, s) into the witness.
:func:`sign_p2wpkh` is the single-key path used by tests and the devnet faucet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .encoding import (
    SECP256K1_ORDER,
    hash160,
    hash256,
    is_compressed_pubkey,
    p2pkh_script_code,
    ser_compact_size,
)
from .tx import Tx

SIGHASH_ALL = 0x01
SIGHASH_NONE = 0x02
SIGHASH_SINGLE = 0x03
SIGHASH_ANYONECANPAY = 0x80
_VALID_SIGHASH = {1, 2, 3, 0x81, 0x82, 0x83}


def bip143_sighash(tx: Tx, index: int, script_code: bytes, amount: int, hashtype: int = SIGHASH_ALL) -> bytes:
    """The BIP143 (segwit v0) signature hash of input ``index``.

    ``script_code`` is the serialised script without its length prefix; for P2WPKH it is the
    P2PKH script of the key hash. ``amount`` is the value of the spent output — committing to
    it is what lets an offline signer know the fee it is approving.
    """
    if not 0 <= index < len(tx.vin):
        raise IndexError(f"input index {index} out of range for {len(tx.vin)} inputs")
    if hashtype not in _VALID_SIGHASH:
        raise ValueError(f"unsupported sighash type {hashtype:#x}")
    if not 0 <= amount <= 21_000_000 * 100_000_000:
        raise ValueError("amount out of range")
    base = hashtype & 0x1F
    anyone = bool(hashtype & SIGHASH_ANYONECANPAY)
    zero = b"\0" * 32
    hash_prevouts = zero if anyone else hash256(b"".join(i.prevout.serialize() for i in tx.vin))
    hash_sequence = (
        zero if anyone or base in (SIGHASH_NONE, SIGHASH_SINGLE)
        else hash256(b"".join(struct.pack("<I", i.sequence) for i in tx.vin))
    )
    if base not in (SIGHASH_NONE, SIGHASH_SINGLE):
        hash_outputs = hash256(b"".join(o.serialize() for o in tx.vout))
    elif base == SIGHASH_SINGLE and index < len(tx.vout):
        hash_outputs = hash256(tx.vout[index].serialize())
    else:
        hash_outputs = zero
    txin = tx.vin[index]
    preimage = b"".join([
        struct.pack("<i", tx.version), hash_prevouts, hash_sequence, txin.prevout.serialize(),
        ser_compact_size(len(script_code)),
        script_code, struct.pack("<q", amount), struct.pack("<I", txin.sequence), hash_outputs,
        struct.pack("<I", tx.locktime), struct.pack("<I", hashtype),
    ])
    return hash256(preimage)


def p2wpkh_sighash(tx: Tx, index: int, pubkey: bytes, amount: int, hashtype: int = SIGHASH_ALL) -> bytes:
    """BIP143 digest for a P2WPKH input owned by ``pubkey``."""
    if not is_compressed_pubkey(pubkey):
        raise ValueError("P2WPKH requires a compressed public key")
    return bip143_sighash(tx, index, p2pkh_script_code(hash160(pubkey)), amount, hashtype)


def der_encode_signature(r: int, s: int) -> bytes:
    """Strict DER encoding of (r, s) without the sighash byte."""
    if not (0 < r < SECP256K1_ORDER and 0 < s < SECP256K1_ORDER):
        raise ValueError("signature values out of range")

    def enc(x: int) -> bytes:
        b = x.to_bytes((x.bit_length() + 7) // 8, "big")
        if b[0] & 0x80:
            b = b"\0" + b
        return b"\x02" + bytes([len(b)]) + b

    body = enc(r) + enc(s)
    return b"\x30" + bytes([len(body)]) + body


def finalize_p2wpkh_input(tx: Tx, index: int, pubkey: bytes, r: int, s: int,
                          hashtype: int = SIGHASH_ALL) -> None:
    """Place a signature (r, s) produced by any signer into input ``index``'s witness.

    S is *not* normalised here on purpose: the threshold signer already returns low-S, and
    tests need to be able to build the high-S variant to exercise the mempool's policy check.
    """
    tx.vin[index].script_sig = b""
    tx.vin[index].witness = [der_encode_signature(r, s) + bytes([hashtype]), pubkey]


def sign_p2wpkh(tx: Tx, index: int, privkey: bytes, amount: int, hashtype: int = SIGHASH_ALL,
                high_s: bool = False) -> None:
    """Sign input ``index`` as P2WPKH with a single private key (coincurve, RFC6979 nonces).

    ``high_s=True`` replaces S by n - S — still a valid ECDSA signature (consensus accepts it)
    but non-standard under Core's LOW_S policy; it exists to test exactly that distinction.
    """
    from coincurve import PrivateKey

    key = PrivateKey(privkey)
    pubkey = key.public_key.format(compressed=True)
    digest = p2wpkh_sighash(tx, index, pubkey, amount, hashtype)
    compact = key.sign_recoverable(digest, hasher=None)
    r = int.from_bytes(compact[:32], "big")
    s = int.from_bytes(compact[32:64], "big")
    if s > SECP256K1_ORDER // 2:
        s = SECP256K1_ORDER - s
    if high_s:
        s = SECP256K1_ORDER - s
    finalize_p2wpkh_input(tx, index, pubkey, r, s, hashtype)


def sign_p2wpkh_with(tx: Tx, index: int, pubkey: bytes, amount: int,
                     signer: Callable[[bytes], tuple[int, int]], hashtype: int = SIGHASH_ALL) -> None:
    """Sign input ``index`` through a remote signer callback ``digest -> (r, s)``.

    The signature is verified against ``pubkey`` before it is placed, so a faulty or malicious
    signer cannot make the bridge broadcast a transaction that the network would reject.
    """
    from coincurve import PublicKey

    digest = p2wpkh_sighash(tx, index, pubkey, amount, hashtype)
    r, s = signer(digest)
    if s > SECP256K1_ORDER // 2:
        s = SECP256K1_ORDER - s
    der = der_encode_signature(r, s)
    if not PublicKey(pubkey).verify(der, digest, hasher=None):
        raise ValueError("remote signer returned a signature that does not verify")
    finalize_p2wpkh_input(tx, index, pubkey, r, s, hashtype)
