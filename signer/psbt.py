"""BIP174 partially signed Bitcoin transactions (version 0) for P2WPKH spends.

Parse (strictly: every key, length and encoding is checked, duplicates and trailing bytes are
refused, unknown and proprietary records are kept and written back), add partial signatures
from the threshold signer, finalize P2WPKH inputs, extract the network transaction, and
serialise back out. Everything parsed from outside raises :class:`PSBTError` with the reason —
never an IndexError/struct.error from deep inside.

Signing with only ``witness_utxo`` trusts the PSBT for the input amounts (the segwit v0 "fee
attack": a creator can lie about amounts across two signing rounds). Pass
``require_non_witness_utxo=True`` to :func:`sign_psbt` to insist on the full previous
transactions, whose txids are checked against the outpoints.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from fusion_prime.protocol.addresses import hash160
from fusion_prime.protocol.hd import HARDENED, parse_path

from .bitcoin import (
    HALF_ORDER,
    MAX_MONEY,
    SIGHASH_ALL,
    VALID_SIGHASH_TYPES,
    BitcoinError,
    DigestSigner,
    Reader,
    Tx,
    TxOut,
    UnsignedSpend,
    checked_remote_signature,
    der_decode_signature,
    der_encode_signature,
    p2wpkh_program,
    p2wpkh_sighash,
    ser_bytes,
    ser_compact_size,
    verify_der_signature,
)

MAGIC = b"psbt\xff"

GLOBAL_UNSIGNED_TX = 0x00
GLOBAL_XPUB = 0x01
GLOBAL_VERSION = 0xFB

IN_NON_WITNESS_UTXO = 0x00
IN_WITNESS_UTXO = 0x01
IN_PARTIAL_SIG = 0x02
IN_SIGHASH_TYPE = 0x03
IN_REDEEM_SCRIPT = 0x04
IN_WITNESS_SCRIPT = 0x05
IN_BIP32_DERIVATION = 0x06
IN_FINAL_SCRIPTSIG = 0x07
IN_FINAL_SCRIPTWITNESS = 0x08

OUT_REDEEM_SCRIPT = 0x00
OUT_WITNESS_SCRIPT = 0x01
OUT_BIP32_DERIVATION = 0x02


class PSBTError(BitcoinError):
    """A PSBT is malformed, inconsistent, or cannot be signed/finalized as asked."""


@dataclass(frozen=True)
class KeyOrigin:
    """BIP32 origin of a key: master fingerprint and derivation path."""

    fingerprint: bytes
    path: tuple[int, ...]

    def serialize(self) -> bytes:
        return self.fingerprint + b"".join(struct.pack("<I", i) for i in self.path)

    @classmethod
    def parse(cls, data: bytes, what: str) -> KeyOrigin:
        if len(data) < 4 or len(data) % 4:
            raise PSBTError(f"{what}: key origin must be a 4-byte fingerprint plus 4 bytes per path step")
        return cls(data[:4], tuple(struct.unpack_from("<I", data, o)[0] for o in range(4, len(data), 4)))

    def path_string(self) -> str | None:
        """``m/a/b/c`` if every step is non-hardened (the only kind a threshold key has), else None."""
        if any(i >= HARDENED for i in self.path):
            return None
        return "/".join(["m", *map(str, self.path)])


@dataclass
class PsbtInput:
    non_witness_utxo: Tx | None = None
    witness_utxo: TxOut | None = None
    partial_sigs: dict[bytes, bytes] = field(default_factory=dict)
    sighash_type: int | None = None
    redeem_script: bytes | None = None
    witness_script: bytes | None = None
    bip32_derivation: dict[bytes, KeyOrigin] = field(default_factory=dict)
    final_script_sig: bytes | None = None
    final_script_witness: list[bytes] | None = None
    unknown: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.final_script_sig is not None or self.final_script_witness is not None


@dataclass
class PsbtOutput:
    redeem_script: bytes | None = None
    witness_script: bytes | None = None
    bip32_derivation: dict[bytes, KeyOrigin] = field(default_factory=dict)
    unknown: dict[bytes, bytes] = field(default_factory=dict)


def _check_pubkey(data: bytes, what: str) -> bytes:
    from coincurve import PublicKey

    if not ((len(data) == 33 and data[0] in (2, 3)) or (len(data) == 65 and data[0] == 4)):
        raise PSBTError(f"{what}: invalid public key encoding")
    try:
        PublicKey(data)
    except ValueError:
        raise PSBTError(f"{what}: public key is not on the curve") from None
    return data


def _read_map(reader: Reader, what: str) -> list[tuple[int, bytes, bytes]]:
    """One key-value map up to its 0x00 separator, as (type, key data, value); duplicates refused."""
    seen: set[bytes] = set()
    out = []
    while True:
        key = reader.var_bytes()
        if not key:
            return out
        if key in seen:
            raise PSBTError(f"{what}: duplicate key {key.hex()}")
        seen.add(key)
        key_reader = Reader(key, f"{what} key")
        key_type = key_reader.compact_size()
        out.append((key_type, key[key_reader.pos :], reader.var_bytes()))


def _full_key(key_type: int, key_data: bytes) -> bytes:
    return ser_compact_size(key_type) + key_data


def _no_key_data(key_type: int, key_data: bytes, what: str) -> None:
    if key_data:
        raise PSBTError(f"{what}: key type {key_type:#x} must be exactly one byte")


def _parse_witness_stack(data: bytes, what: str) -> list[bytes]:
    r = Reader(data, what)
    items = [r.var_bytes() for _ in range(r.compact_size())]
    if not r.at_end():
        raise PSBTError(f"{what}: trailing bytes")
    return items


def _parse_txout(data: bytes, what: str) -> TxOut:
    r = Reader(data, what)
    value = r.i64()
    script = r.var_bytes()
    if not r.at_end():
        raise PSBTError(f"{what}: trailing bytes")
    if not 0 <= value <= MAX_MONEY:
        raise PSBTError(f"{what}: value {value} out of range")
    return TxOut(value, script)


@dataclass
class Psbt:
    tx: Tx
    inputs: list[PsbtInput]
    outputs: list[PsbtOutput]
    xpubs: dict[bytes, KeyOrigin] = field(default_factory=dict)
    version: int | None = None
    unknown: dict[bytes, bytes] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_unsigned_tx(cls, tx: Tx) -> Psbt:
        if any(i.script_sig or i.witness for i in tx.vin):
            raise PSBTError("the unsigned transaction must have empty scriptSigs and witnesses")
        return cls(tx.copy(), [PsbtInput() for _ in tx.vin], [PsbtOutput() for _ in tx.vout])

    @classmethod
    def from_spend(cls, spend: UnsignedSpend, signer: DigestSigner | None = None) -> Psbt:
        """A PSBT of a built spend with ``witness_utxo`` on every input and, when ``signer`` is
        given, the BIP32 origin (root fingerprint + path) of each input's key."""
        psbt = cls.from_unsigned_tx(spend.tx)
        fingerprint = root_fingerprint(signer) if signer is not None else None
        for pin, utxo in zip(psbt.inputs, spend.utxos, strict=True):
            pin.witness_utxo = TxOut(utxo.value, utxo.script_pubkey)
            if signer is not None and fingerprint is not None:
                pub = signer.public_key(utxo.path).to_bytes()
                pin.bip32_derivation[pub] = KeyOrigin(fingerprint, parse_path(utxo.path))
        return psbt

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_base64(cls, text: str) -> Psbt:
        if not isinstance(text, str):
            raise PSBTError("a base64 PSBT must be a string")
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise PSBTError("PSBT is not valid base64") from None
        return cls.parse(raw)

    @classmethod
    def parse(cls, data: bytes) -> Psbt:
        if not isinstance(data, bytes | bytearray):
            raise PSBTError("PSBT must be bytes")
        if not bytes(data).startswith(MAGIC):
            raise PSBTError("not a PSBT: missing magic bytes 'psbt\\xff'")
        try:
            return cls._parse(Reader(bytes(data)[len(MAGIC) :], "PSBT"))
        except PSBTError:
            raise
        except BitcoinError as exc:
            raise PSBTError(f"malformed PSBT: {exc}") from None

    @classmethod
    def _parse(cls, reader: Reader) -> Psbt:
        tx: Tx | None = None
        xpubs: dict[bytes, KeyOrigin] = {}
        version: int | None = None
        unknown: dict[bytes, bytes] = {}
        for kt, kd, value in _read_map(reader, "global map"):
            if kt == GLOBAL_UNSIGNED_TX:
                _no_key_data(kt, kd, "global unsigned tx")
                tx = Tx.from_bytes(value, allow_witness=False)
            elif kt == GLOBAL_XPUB:
                if len(kd) != 78:
                    raise PSBTError("global xpub: key must carry a 78-byte extended public key")
                xpubs[kd] = KeyOrigin.parse(value, "global xpub")
            elif kt == GLOBAL_VERSION:
                _no_key_data(kt, kd, "global version")
                if len(value) != 4:
                    raise PSBTError("global version must be 4 bytes")
                version = struct.unpack("<I", value)[0]
                if version != 0:
                    raise PSBTError(f"unsupported PSBT version {version} (only version 0 is supported)")
            else:
                unknown[_full_key(kt, kd)] = value
        if tx is None:
            raise PSBTError("PSBT has no unsigned transaction")
        if any(i.script_sig for i in tx.vin):
            raise PSBTError("unsigned transaction has a non-empty scriptSig")
        if len({i.prevout for i in tx.vin}) != len(tx.vin):
            raise PSBTError("unsigned transaction spends the same outpoint twice")
        inputs = [cls._parse_input(reader, tx, i) for i in range(len(tx.vin))]
        outputs = [cls._parse_output(reader, i) for i in range(len(tx.vout))]
        if not reader.at_end():
            raise PSBTError("trailing bytes after the last output map")
        return cls(tx, inputs, outputs, xpubs, version, unknown)

    @staticmethod
    def _parse_input(reader: Reader, tx: Tx, index: int) -> PsbtInput:
        what = f"input {index}"
        pin = PsbtInput()
        for kt, kd, value in _read_map(reader, f"{what} map"):
            if kt == IN_NON_WITNESS_UTXO:
                _no_key_data(kt, kd, f"{what} non-witness utxo")
                prev = Tx.from_bytes(value)
                outpoint = tx.vin[index].prevout
                if prev.txid != outpoint.txid:
                    raise PSBTError(f"{what}: non-witness utxo does not match the outpoint's txid")
                if outpoint.n >= len(prev.vout):
                    raise PSBTError(f"{what}: outpoint index {outpoint.n} beyond the previous transaction")
                pin.non_witness_utxo = prev
            elif kt == IN_WITNESS_UTXO:
                _no_key_data(kt, kd, f"{what} witness utxo")
                pin.witness_utxo = _parse_txout(value, f"{what} witness utxo")
            elif kt == IN_PARTIAL_SIG:
                pub = _check_pubkey(kd, f"{what} partial signature")
                der_decode_signature(value)
                pin.partial_sigs[pub] = value
            elif kt == IN_SIGHASH_TYPE:
                _no_key_data(kt, kd, f"{what} sighash type")
                if len(value) != 4:
                    raise PSBTError(f"{what}: sighash type must be 4 bytes")
                pin.sighash_type = struct.unpack("<I", value)[0]
            elif kt == IN_REDEEM_SCRIPT:
                _no_key_data(kt, kd, f"{what} redeem script")
                pin.redeem_script = value
            elif kt == IN_WITNESS_SCRIPT:
                _no_key_data(kt, kd, f"{what} witness script")
                pin.witness_script = value
            elif kt == IN_BIP32_DERIVATION:
                pub = _check_pubkey(kd, f"{what} bip32 derivation")
                pin.bip32_derivation[pub] = KeyOrigin.parse(value, f"{what} bip32 derivation")
            elif kt == IN_FINAL_SCRIPTSIG:
                _no_key_data(kt, kd, f"{what} final scriptSig")
                pin.final_script_sig = value
            elif kt == IN_FINAL_SCRIPTWITNESS:
                _no_key_data(kt, kd, f"{what} final scriptWitness")
                pin.final_script_witness = _parse_witness_stack(value, f"{what} final scriptWitness")
            else:
                pin.unknown[_full_key(kt, kd)] = value
        if pin.non_witness_utxo is not None and pin.witness_utxo is not None:
            prev_out = pin.non_witness_utxo.vout[tx.vin[index].prevout.n]
            if prev_out != pin.witness_utxo:
                raise PSBTError(f"{what}: witness utxo disagrees with the non-witness utxo")
        return pin

    @staticmethod
    def _parse_output(reader: Reader, index: int) -> PsbtOutput:
        what = f"output {index}"
        pout = PsbtOutput()
        for kt, kd, value in _read_map(reader, f"{what} map"):
            if kt == OUT_REDEEM_SCRIPT:
                _no_key_data(kt, kd, f"{what} redeem script")
                pout.redeem_script = value
            elif kt == OUT_WITNESS_SCRIPT:
                _no_key_data(kt, kd, f"{what} witness script")
                pout.witness_script = value
            elif kt == OUT_BIP32_DERIVATION:
                pub = _check_pubkey(kd, f"{what} bip32 derivation")
                pout.bip32_derivation[pub] = KeyOrigin.parse(value, f"{what} bip32 derivation")
            else:
                pout.unknown[_full_key(kt, kd)] = value
        return pout

    # ------------------------------------------------------------------ serialisation
    def serialize(self) -> bytes:
        def rec(key_type: int, key_data: bytes, value: bytes) -> bytes:
            return ser_bytes(_full_key(key_type, key_data)) + ser_bytes(value)

        def unknowns(m: dict[bytes, bytes]) -> bytes:
            return b"".join(ser_bytes(k) + ser_bytes(v) for k, v in m.items())

        out = [MAGIC, rec(GLOBAL_UNSIGNED_TX, b"", self.tx.serialize(with_witness=False))]
        out += [rec(GLOBAL_XPUB, k, o.serialize()) for k, o in self.xpubs.items()]
        if self.version is not None:
            out.append(rec(GLOBAL_VERSION, b"", struct.pack("<I", self.version)))
        out += [unknowns(self.unknown), b"\x00"]
        for pin in self.inputs:
            if pin.non_witness_utxo is not None:
                out.append(rec(IN_NON_WITNESS_UTXO, b"", pin.non_witness_utxo.serialize()))
            if pin.witness_utxo is not None:
                out.append(rec(IN_WITNESS_UTXO, b"", pin.witness_utxo.serialize()))
            out += [rec(IN_PARTIAL_SIG, k, v) for k, v in pin.partial_sigs.items()]
            if pin.sighash_type is not None:
                out.append(rec(IN_SIGHASH_TYPE, b"", struct.pack("<I", pin.sighash_type)))
            if pin.redeem_script is not None:
                out.append(rec(IN_REDEEM_SCRIPT, b"", pin.redeem_script))
            if pin.witness_script is not None:
                out.append(rec(IN_WITNESS_SCRIPT, b"", pin.witness_script))
            out += [rec(IN_BIP32_DERIVATION, k, o.serialize()) for k, o in pin.bip32_derivation.items()]
            if pin.final_script_sig is not None:
                out.append(rec(IN_FINAL_SCRIPTSIG, b"", pin.final_script_sig))
            if pin.final_script_witness is not None:
                stack = ser_compact_size(len(pin.final_script_witness))
                stack += b"".join(ser_bytes(item) for item in pin.final_script_witness)
                out.append(rec(IN_FINAL_SCRIPTWITNESS, b"", stack))
            out += [unknowns(pin.unknown), b"\x00"]
        for pout in self.outputs:
            if pout.redeem_script is not None:
                out.append(rec(OUT_REDEEM_SCRIPT, b"", pout.redeem_script))
            if pout.witness_script is not None:
                out.append(rec(OUT_WITNESS_SCRIPT, b"", pout.witness_script))
            out += [rec(OUT_BIP32_DERIVATION, k, o.serialize()) for k, o in pout.bip32_derivation.items()]
            out += [unknowns(pout.unknown), b"\x00"]
        return b"".join(out)

    def to_base64(self) -> str:
        return base64.b64encode(self.serialize()).decode()

    # ------------------------------------------------------------------ inspection
    def spent_output(self, index: int) -> TxOut | None:
        """The output input ``index`` spends, from witness_utxo or the (txid-checked) full tx."""
        pin = self.inputs[index]
        if pin.witness_utxo is not None:
            return pin.witness_utxo
        if pin.non_witness_utxo is not None:
            return pin.non_witness_utxo.vout[self.tx.vin[index].prevout.n]
        return None

    def fee(self) -> int:
        """Inputs minus outputs; PSBTError if an input amount is unknown or the fee is negative."""
        total = 0
        for i in range(len(self.inputs)):
            spent = self.spent_output(i)
            if spent is None:
                raise PSBTError(f"input {i}: amount unknown (no utxo record)")
            total += spent.value
        fee = total - sum(o.value for o in self.tx.vout)
        if fee < 0:
            raise PSBTError(f"outputs exceed inputs by {-fee} sat")
        return fee


def root_fingerprint(signer: DigestSigner) -> bytes:
    """BIP32 fingerprint of the threshold root key: first 4 bytes of hash160(compressed key)."""
    return hash160(signer.public_key("m").to_bytes())[:4]


def _path_for_input(psbt: Psbt, index: int, signer: DigestSigner, fingerprint: bytes) -> tuple[str, bytes] | None:
    for pub, origin in psbt.inputs[index].bip32_derivation.items():
        path = origin.path_string()
        if origin.fingerprint != fingerprint or path is None:
            continue
        if signer.public_key(path).to_bytes() == pub:
            return path, pub
    return None


def sign_psbt(psbt: Psbt, signer: DigestSigner, paths: Mapping[int, str] | None = None, *,
              allowed_sighash: frozenset[int] = frozenset({SIGHASH_ALL}),
              require_non_witness_utxo: bool = False) -> list[int]:
    """Add the threshold key's partial signature to every P2WPKH input it owns; return their indices.

    With ``paths`` (input index → derivation path) exactly those inputs are signed and each must
    be a P2WPKH output of that path's key. Without it, inputs are matched through their BIP32
    derivation records (the root fingerprint must be this key's, the path non-hardened).
    Only SIGHASH_ALL is signed unless ``allowed_sighash`` says otherwise.
    """
    for t in allowed_sighash:
        if t not in VALID_SIGHASH_TYPES:
            raise PSBTError(f"unknown sighash type {t:#x} in allowed_sighash")
    fingerprint = root_fingerprint(signer)
    if paths is not None:
        for i in paths:
            if not isinstance(i, int) or not 0 <= i < len(psbt.inputs):
                raise PSBTError(f"input index {i!r} out of range for {len(psbt.inputs)} inputs")
    signed = []
    for i, pin in enumerate(psbt.inputs):
        if pin.is_final:
            continue
        if paths is not None:
            if i not in paths:
                continue
            path = paths[i]
            pub = signer.public_key(path).to_bytes()
        else:
            found = _path_for_input(psbt, i, signer, fingerprint)
            if found is None:
                continue
            path, pub = found
        if require_non_witness_utxo and pin.non_witness_utxo is None:
            raise PSBTError(f"input {i}: the full previous transaction (non-witness utxo) is required")
        spent = psbt.spent_output(i)
        if spent is None:
            raise PSBTError(f"input {i}: no witness utxo, cannot compute the BIP143 sighash")
        program = p2wpkh_program(spent.script_pubkey)
        if program is None:
            raise PSBTError(f"input {i}: only P2WPKH inputs can be signed")
        if program != hash160(pub):
            raise PSBTError(f"input {i}: the key at {path} does not own this output")
        hashtype = SIGHASH_ALL if pin.sighash_type is None else pin.sighash_type
        if hashtype not in allowed_sighash:
            raise PSBTError(f"input {i}: sighash type {hashtype:#x} is not allowed for this signer")
        digest = p2wpkh_sighash(psbt.tx, i, pub, spent.value, hashtype)
        key = signer.public_key(path)
        sig = checked_remote_signature(signer, digest, path, key)
        pin.partial_sigs[pub] = der_encode_signature(sig.r, sig.s) + bytes([hashtype])
        signed.append(i)
    return signed


def finalize_psbt(psbt: Psbt) -> None:
    """Finalize every P2WPKH input: witness [sig, key] from a verified partial signature.

    Every partial signature used is checked (strict DER, low-S, matching sighash type, verifies
    against the BIP143 digest). All-or-nothing: if any input cannot be finalized, PSBTError names
    the first such input and the PSBT is left unchanged.
    """
    finals: dict[int, list[bytes]] = {}
    for i, pin in enumerate(psbt.inputs):
        if not pin.is_final:
            finals[i] = _final_witness(psbt, i)
    for i, witness in finals.items():
        pin = psbt.inputs[i]
        pin.final_script_witness = witness
        pin.final_script_sig = None
        pin.partial_sigs = {}
        pin.sighash_type = None
        pin.redeem_script = pin.witness_script = None
        pin.bip32_derivation = {}


def _final_witness(psbt: Psbt, i: int) -> list[bytes]:
    pin = psbt.inputs[i]
    spent = psbt.spent_output(i)
    if spent is None:
        raise PSBTError(f"input {i}: cannot finalize without the spent output")
    program = p2wpkh_program(spent.script_pubkey)
    if program is None:
        raise PSBTError(f"input {i}: only P2WPKH inputs can be finalized here")
    match = [(pub, sig) for pub, sig in pin.partial_sigs.items() if len(pub) == 33 and hash160(pub) == program]
    if not match:
        raise PSBTError(f"input {i}: no partial signature from the key this output pays")
    pub, sig = match[0]
    r, s, hashtype = der_decode_signature(sig)
    if pin.sighash_type is not None and hashtype != pin.sighash_type:
        raise PSBTError(f"input {i}: signature sighash {hashtype:#x} differs from the requested "
                        f"{pin.sighash_type:#x}")
    if hashtype not in VALID_SIGHASH_TYPES:
        raise PSBTError(f"input {i}: invalid sighash type {hashtype:#x}")
    if s > HALF_ORDER:
        raise PSBTError(f"input {i}: partial signature is high-S (non-standard)")
    digest = p2wpkh_sighash(psbt.tx, i, pub, spent.value, hashtype)
    if not verify_der_signature(pub, digest, r, s):
        raise PSBTError(f"input {i}: partial signature does not verify")
    return [sig, pub]


def extract_transaction(psbt: Psbt) -> Tx:
    """The network transaction of a fully finalized PSBT."""
    tx = psbt.tx.copy()
    for i, pin in enumerate(psbt.inputs):
        if not pin.is_final:
            raise PSBTError(f"input {i} is not finalized")
        tx.vin[i].script_sig = pin.final_script_sig or b""
        tx.vin[i].witness = list(pin.final_script_witness or [])
    if all(psbt.spent_output(i) is not None for i in range(len(psbt.inputs))):
        psbt.fee()  # refuses a transaction whose outputs exceed its inputs
    return tx
