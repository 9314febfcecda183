"""BTC payouts: the one transaction every node rebuilds for a batch of burns, its fee bump, and the
check a participant runs before it co-signs any input of it.

Why a pure rebuild and not a review: a coordinator (or t−1 colluding nodes) proposes the whole
unsigned transaction. A participant that merely *inspected* it would have to enumerate everything a
transaction can do wrong; a participant that *rebuilds* it from the burns, its own coin view and the
rules below, and co-signs only byte-identical bytes, refuses every deviation at once — another
address, a higher amount, change elsewhere, a fatter fee, other inputs, another locktime (Multichain's
accept worker, tBTC's followers). So every rule here is a pure function of its inputs: no clock, no
I/O, no randomness, no dependence on the order in which a node happens to list its coins.

The rules (``BtcPayoutParams`` holds the numbers):

* one output per burn, in burn-nonce order, paying ``amount − withdrawal_fee`` to the decoded
  destination (P2WPKH, P2WSH, P2TR, P2PKH, P2SH on the right network — anything else is refunded, as
  is a burn whose payout would be dust), then one change output to the custody address, last;
* coins at custody and deposit addresses with at least ``min_input_confirmations`` at the view height,
  largest first (ties by txid, vout), taken until they pay the outputs and the fee of the transaction
  *with* change; change below its dust threshold goes to the fee;
* the fee never exceeds ``min(max_fee_rate × vsize, burns × withdrawal_fee)``: the second term is
  what keeps custody solvent (custody loses payouts + fee while its liabilities fall by the burned
  amounts, i.e. by payouts + burns × withdrawal_fee);
* version 2, nLockTime = the view height (deterministic anti-fee-sniping: a random one could not be
  rebuilt), every input nSequence 0xfffffffd (BIP125).

A stuck payout is bumped by :func:`bump_payout`: the same inputs in the same order and the same
payout outputs, only the change shrinks — so the original and the replacement conflict and at most
one of them confirms (THORChain paid users twice by rescheduling an outbound on new inputs while the
original could still confirm). Nothing here ever re-selects inputs for a burn that has a payout.

Fee rates are sat/vB with at most three decimals (integer sat/kvB, Bitcoin Core's own ``CFeeRate``
unit) so that every node computes the same fee from the same rate: fee = ⌈rate × vsize⌉, vsize the
P2WPKH estimate of the signed transaction (exact but for the signatures, which it takes at their
largest: the real rate is never below the proposed one).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from functools import cached_property, lru_cache
from typing import Protocol

from fusion_prime.protocol.addresses import BECH32_HRP, b58check, b58check_decode, segwit_decode
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.signer.bitcoin import (
    HALF_ORDER,
    MAX_MONEY,
    SECP256K1_ORDER,
    SEQUENCE_RBF,
    WITNESS_SCALE_FACTOR,
    BitcoinError,
    Reader,
    dust_threshold,
    estimate_p2wpkh_vsize,
    estimate_p2wpkh_weight,
    finalize_p2wpkh_input,
    p2wpkh_script,
    p2wpkh_sighash,
    verify_der_signature,
)

from .chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut

#: What a fee rate may be given as (sat/vB); floats go through ``str`` so 1.1 means 1.1.
FeeRate = Decimal | int | str | float

TX_VERSION = 2
#: nLockTime below this is a block height (above, a Unix time): the view height must stay below it.
LOCKTIME_THRESHOLD = 500_000_000
#: Highest fee rate anything here accepts (sat/vB), the signer SDK's typo guard.
MAX_ANY_FEE_RATE = Decimal(10_000)
#: Longest ``replaces`` chain :func:`check_payout` follows (a loop guard; a payout is bumped a few times).
MAX_REPLACEMENT_CHAIN = 1_000

PROPOSAL_TAG = b"FPpayout"
PLAN_TAG = b"FPpyplan"
ENCODING_VERSION = 1

_P2PKH_PREFIX = {"mainnet": 0x00, "testnet": 0x6F, "signet": 0x6F, "regtest": 0x6F}
_P2SH_PREFIX = {"mainnet": 0x05, "testnet": 0xC4, "signet": 0xC4, "regtest": 0xC4}
_HEX = frozenset("0123456789abcdef")


# --------------------------------------------------------------------------------------- errors


class PayoutError(ValueError):
    """A payout cannot be built or a value is malformed; the message says why."""


class RefundableBurn(PayoutError):
    """The burn can never be paid on Bitcoin: the integrator refunds it (a mint order to the burner)."""


class UnpayableDestination(RefundableBurn):
    """The burn's destination is not a payable address of this network."""


class BelowMinimum(RefundableBurn):
    """The burn's amount minus the withdrawal fee would be a dust output."""


class UnpayableAmount(RefundableBurn):
    """The burn's amount is not a Bitcoin amount at all (above the 21M BTC money supply)."""


class FeeAboveCap(PayoutError):
    """The fee would exceed ``min(max_fee_rate × vsize, burns × withdrawal_fee)``."""


class InsufficientCustody(PayoutError):
    """The eligible custody coins cannot pay the burns and the fee."""


class TooManyInputs(InsufficientCustody):
    """Paying the batch would need more than ``max_inputs`` coins (pay fewer burns at once)."""


class TooManyBurns(PayoutError):
    """More burns than ``max_batch`` in one payout."""


class CannotBump(PayoutError):
    """A replacement at this rate would not be relayed (BIP125 rules 4 and 6), or there is no change."""


class SignatureRejected(PayoutError):
    """A signature for a payout input is missing, malformed, high-S or does not verify."""


# ----------------------------------------------------------------------------------- fee rates


def fee_rate_kvb(rate: FeeRate, what: str = "fee rate") -> int:
    """The rate in sat/kvB (an integer): the one canonical form every node computes fees from."""
    if isinstance(rate, bool) or not isinstance(rate, Decimal | int | str | float):
        raise PayoutError(f"{what} must be a number of sat/vB, not {type(rate).__name__}")
    try:
        value = Decimal(str(rate))
    except (InvalidOperation, ValueError):
        raise PayoutError(f"{what} {rate!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise PayoutError(f"{what} must be a positive number of sat/vB, not {rate!r}")
    if value > MAX_ANY_FEE_RATE:
        raise PayoutError(f"{what} {value} sat/vB is above the {MAX_ANY_FEE_RATE} sat/vB safety limit")
    kvb = value * 1000
    if kvb != kvb.to_integral_value():
        raise PayoutError(f"{what} {value} sat/vB has more than three decimals")
    return int(kvb)


def round_fee_rate(estimate: Decimal | int | str | float) -> Decimal:
    """A node's raw estimate (sat/vB, any precision; ``estimatesmartfee``'s BTC/kvB × 100 000) as
    a fee rate plans accept: rounded *up* to 0.001 sat/vB, at least 0.001."""
    try:
        value = Decimal(str(estimate))
    except (InvalidOperation, ValueError):
        raise PayoutError(f"fee estimate {estimate!r} is not a number") from None
    if isinstance(estimate, bool) or not value.is_finite() or value <= 0:
        raise PayoutError(f"fee estimate {estimate!r} is not a positive number of sat/vB")
    return canonical_fee_rate(max(value.quantize(Decimal("0.001"), rounding=ROUND_CEILING), Decimal("0.001")))


def _rate_of(kvb: int) -> Decimal:
    return Decimal(kvb).scaleb(-3)


def canonical_fee_rate(rate: FeeRate, what: str = "fee rate") -> Decimal:
    """``rate`` as the Decimal (three decimals) plans and proposals carry."""
    return _rate_of(fee_rate_kvb(rate, what))


def _fee(rate_kvb: int, vsize: int) -> int:
    """⌈rate × vsize⌉ in exact integer arithmetic."""
    return -(-rate_kvb * vsize // 1000)


# -------------------------------------------------------------------------------------- values


def _check_uint(value: object, what: str, bits: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise PayoutError(f"{what} must be an integer in [0, 2^{bits}), got {value!r}")
    return value


def _check_txid(txid: object, what: str = "txid") -> str:
    if not isinstance(txid, str) or len(txid) != 64 or not set(txid) <= _HEX:
        raise PayoutError(f"{what} must be 64 lowercase hex digits, got {txid!r}")
    return txid


@dataclass(frozen=True)
class BtcPayoutParams:
    """The shared payout rules; every node must be configured with the same values."""

    network: str
    withdrawal_fee: int  # sat deducted from every burn; covers its share of any fee
    max_fee_rate: Decimal  # sat/vB
    fee_band: Decimal = Decimal(2)  # a proposed rate lies in [own / band, own × band]
    min_input_confirmations: int = 1
    max_batch: int = 100
    max_inputs: int = 200
    incremental_relay_fee: Decimal = Decimal(1)  # sat/vB (BIP125 rule 4)

    def __post_init__(self) -> None:
        if self.network not in BECH32_HRP:
            raise PayoutError(f"unknown Bitcoin network {self.network!r} (one of {', '.join(BECH32_HRP)})")
        if _check_uint(self.withdrawal_fee, "withdrawal_fee", 63) <= 0 or self.withdrawal_fee > MAX_MONEY:
            raise PayoutError("withdrawal_fee must be a positive number of satoshis (it is what pays fees)")
        object.__setattr__(self, "max_fee_rate", canonical_fee_rate(self.max_fee_rate, "max_fee_rate"))
        object.__setattr__(self, "incremental_relay_fee",
                           canonical_fee_rate(self.incremental_relay_fee, "incremental_relay_fee"))
        try:
            band = Decimal(str(self.fee_band))
        except (InvalidOperation, ValueError):
            raise PayoutError(f"fee_band {self.fee_band!r} is not a number") from None
        if isinstance(self.fee_band, bool) or not band.is_finite() or band < 1:
            raise PayoutError("fee_band must be a number ≥ 1")
        object.__setattr__(self, "fee_band", band)
        if _check_uint(self.min_input_confirmations, "min_input_confirmations", 32) < 1:
            raise PayoutError("min_input_confirmations must be at least 1 (unconfirmed coins are never spent)")
        if not 1 <= _check_uint(self.max_batch, "max_batch", 16) <= 0xFFFF:
            raise PayoutError("max_batch must be between 1 and 65535")
        if not 1 <= _check_uint(self.max_inputs, "max_inputs", 16) <= 0xFFFF:
            raise PayoutError("max_inputs must be between 1 and 65535")


@dataclass(frozen=True)
class PayoutBurn:
    """A burn as a payout needs it: its id, nonce (the order of outputs), amount (sat), destination
    (the raw ``Burned.destination`` bytes, decoded only here)."""

    burn_id: bytes
    nonce: int
    amount: int
    destination: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.burn_id, bytes) or len(self.burn_id) != 32:
            raise PayoutError("burn id must be 32 bytes")
        _check_uint(self.nonce, "burn nonce", 256)
        _check_uint(self.amount, "burn amount", 256)
        if not isinstance(self.destination, bytes):
            raise PayoutError("burn destination must be bytes")

    def __repr__(self) -> str:
        return (f"PayoutBurn(burn_id=0x{self.burn_id.hex()}, nonce={self.nonce}, amount={self.amount}, "
                f"destination={self.destination!r})")


@dataclass(frozen=True)
class CustodyCoin:
    """An unspent P2WPKH output the group key controls (custody or deposit address) and what
    signing it needs: the BIP32 path of its key and that key."""

    txid: str  # display (RPC) order hex
    vout: int
    value: int
    script_pubkey: bytes
    path: tuple[int, ...]
    public_key: bytes  # compressed child key at ``path``
    height: int | None  # block height that created it; None = unconfirmed (never spent)

    def __post_init__(self) -> None:
        _check_txid(self.txid, "coin txid")
        _check_uint(self.vout, "coin vout", 32)
        if _check_uint(self.value, "coin value", 64) > MAX_MONEY or self.value == 0:
            raise PayoutError(f"coin {self.txid}:{self.vout} value {self.value} out of range")
        if not isinstance(self.path, tuple) or len(self.path) > 255 or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**31 for i in self.path):
            raise PayoutError(f"coin {self.txid}:{self.vout}: path must be a tuple of non-hardened indices")
        try:
            script = p2wpkh_script(self.public_key)
        except BitcoinError:
            raise PayoutError(f"coin {self.txid}:{self.vout}: public key must be 33 compressed bytes") from None
        if self.script_pubkey != script:
            raise PayoutError(f"coin {self.txid}:{self.vout} is not the P2WPKH output of its public key")
        if self.height is not None:
            _check_uint(self.height, "coin height", 32)

    @property
    def outpoint(self) -> OutPoint:
        return OutPoint.from_hex(self.txid, self.vout)

    @property
    def sort_key(self) -> tuple[int, str, int]:
        """Largest first, then by outpoint: every node orders the same coins the same way."""
        return (-self.value, self.txid, self.vout)

    def __str__(self) -> str:
        return f"{self.txid}:{self.vout}"


# ---------------------------------------------------------------------------------- destinations


def decode_destination(raw: bytes, network: str) -> bytes:
    """The scriptPubKey a burn's destination pays; :class:`UnpayableDestination` for anything but a
    P2WPKH, P2WSH, P2TR (bech32m, v1, 32 bytes), P2PKH or P2SH address of ``network``.

    Strict on purpose: BIP173/BIP350 checksums (bech32 for v0, bech32m for v1), one case, no
    witness version or program length that is not one of the three payable types, Base58Check with
    this network's version bytes, ASCII letters and digits only. tBTC v1 could not pay P2SH; a
    lenient decoder could pay a typo — both end in lost coins, a refund does not.
    """
    if network not in BECH32_HRP:
        raise PayoutError(f"unknown Bitcoin network {network!r}")
    if not isinstance(raw, bytes | bytearray):
        raise UnpayableDestination("destination must be bytes")
    if len(raw) > 90:  # before the cache: nothing longer is an address, and nothing longer is kept
        raise UnpayableDestination(f"destination is {len(raw)} bytes; no Bitcoin address is longer than 90")
    script, refusal = _decode_destination(bytes(raw), network)
    if refusal is not None:
        raise UnpayableDestination(refusal)
    return script


@lru_cache(maxsize=4096)
def _decode_destination(raw: bytes, network: str) -> tuple[bytes, str | None]:
    """(script, None) or (b"", why): cached, because every sign session of a 100-input payout
    rebuilds the same 100 outputs (the bech32 checksum is pure Python)."""
    try:
        return _decode_destination_uncached(raw, network), None
    except UnpayableDestination as exc:
        return b"", str(exc)


def _decode_destination_uncached(raw: bytes, network: str) -> bytes:
    if not raw:
        raise UnpayableDestination("destination is empty")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise UnpayableDestination("destination is not ASCII") from None
    if not text.isalnum():
        raise UnpayableDestination(f"destination {text!r} has characters other than letters and digits")
    hrp = BECH32_HRP[network]
    lower = text.lower()
    for other_network, other_hrp in BECH32_HRP.items():
        if lower.startswith(other_hrp + "1") and other_hrp != hrp:
            raise UnpayableDestination(f"destination {text!r} is a {other_network} address, not a {network} one")
    if lower.startswith(hrp + "1"):
        try:
            version, program = segwit_decode(hrp, text)
        except InvalidInput as exc:
            raise UnpayableDestination(f"destination {text!r}: {exc}") from None
        if version == 0 and len(program) in (20, 32):
            return bytes([0x00, len(program)]) + program
        if version == 1 and len(program) == 32:
            return bytes([0x51, 32]) + program
        raise UnpayableDestination(f"destination {text!r} is a witness v{version} program of {len(program)} bytes, "
                                   f"not P2WPKH, P2WSH or P2TR")
    try:
        payload = b58check_decode(text)
    except InvalidInput as exc:
        raise UnpayableDestination(f"destination {text!r} is neither a {network} segwit address nor "
                                   f"Base58Check ({exc})") from None
    if b58check(payload) != text:  # the decoding is a bijection; belt and braces
        raise UnpayableDestination(f"destination {text!r} is not canonical Base58Check")
    if len(payload) != 21:
        raise UnpayableDestination(f"destination {text!r} carries {len(payload)} bytes, not a version byte and a hash")
    prefix, digest = payload[0], payload[1:]
    if prefix == _P2PKH_PREFIX[network]:
        return bytes([0x76, 0xA9, 20]) + digest + bytes([0x88, 0xAC])
    if prefix == _P2SH_PREFIX[network]:
        return bytes([0xA9, 20]) + digest + bytes([0x87])
    others = sorted({n for n in _P2PKH_PREFIX if prefix in (_P2PKH_PREFIX[n], _P2SH_PREFIX[n])})
    if others:
        raise UnpayableDestination(f"destination {text!r} is a {'/'.join(others)} address, not a {network} one")
    raise UnpayableDestination(f"destination {text!r} has version byte {prefix:#04x}, not P2PKH or P2SH")


class _HasAmountAndDestination(Protocol):
    @property
    def amount(self) -> int: ...

    @property
    def destination(self) -> bytes: ...


def payout_value(burn: _HasAmountAndDestination, params: BtcPayoutParams) -> int:
    """What the burn's output pays: ``amount − withdrawal_fee``; :class:`BelowMinimum` below the
    destination's dust threshold, :class:`UnpayableDestination` / :class:`UnpayableAmount` if it can
    never be paid (all three are refunded)."""
    return _value_paying(burn.amount, decode_destination(burn.destination, params.network), params)


def _value_paying(amount: int, script: bytes, params: BtcPayoutParams) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise UnpayableAmount(f"burn amount {amount!r} is not a number of satoshis")
    if amount > MAX_MONEY:
        raise UnpayableAmount(f"burn amount {amount} sat is above Bitcoin's money supply")
    value = amount - params.withdrawal_fee
    dust = dust_threshold(script)
    if value < dust:
        raise BelowMinimum(f"burn of {amount} sat less the {params.withdrawal_fee}-sat withdrawal fee leaves "
                           f"{max(value, 0)} sat, below the {dust}-sat dust threshold of its destination "
                           f"(minimum {params.withdrawal_fee + dust} sat)")
    return value


def fee_cap(n_burns: int, vsize: int, params: BtcPayoutParams) -> int:
    """``min(⌈max_fee_rate × vsize⌉, n_burns × withdrawal_fee)``: the most a payout may spend on fees
    (rounded like fees are, so a payout at exactly the maximum rate is within it)."""
    return min(_fee(fee_rate_kvb(params.max_fee_rate), vsize), n_burns * params.withdrawal_fee)


# ------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class PayoutPlan:
    """An unsigned payout and everything signing, bumping and archiving it needs.

    Constructed by :func:`plan_payout`, :func:`bump_payout` or :meth:`from_bytes`; the constructor
    checks that the transaction spends exactly ``inputs`` (in order, BIP125-signalling), pays one
    output per burn plus at most a change output, and has nLockTime = ``view_height``, so a plan is
    never internally inconsistent. ``fee``, ``vsize`` (the signed-size estimate), ``txid`` and
    ``sighashes`` (BIP143, SIGHASH_ALL, one per input; computed when first asked for, or one at a
    time with :meth:`sighash`) are derived.
    """

    burns: tuple[PayoutBurn, ...]
    inputs: tuple[CustodyCoin, ...]
    unsigned_tx: bytes
    fee_rate: Decimal
    view_height: int
    replaces: str | None = None  # txid of the payout this one bumps
    fee: int = field(init=False)
    vsize: int = field(init=False)
    txid: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.burns, tuple) or not self.burns or not all(
                isinstance(b, PayoutBurn) for b in self.burns):
            raise PayoutError("a plan pays a non-empty tuple of PayoutBurn")
        if [(b.nonce, b.burn_id) for b in self.burns] != sorted({(b.nonce, b.burn_id) for b in self.burns}):
            raise PayoutError("a plan's burns are distinct and in nonce order")
        if len({b.burn_id for b in self.burns}) != len(self.burns):
            raise PayoutError("a burn appears twice in the plan")
        if not isinstance(self.inputs, tuple) or not self.inputs or not all(
                isinstance(c, CustodyCoin) for c in self.inputs):
            raise PayoutError("a plan spends a non-empty tuple of CustodyCoin")
        if len({(c.txid, c.vout) for c in self.inputs}) != len(self.inputs):
            raise PayoutError("a coin is spent twice in the plan")
        object.__setattr__(self, "fee_rate", canonical_fee_rate(self.fee_rate))
        if not 0 <= _check_uint(self.view_height, "view height", 32) < LOCKTIME_THRESHOLD:
            raise PayoutError("view height must be a block height below 500,000,000")
        if self.replaces is not None:
            _check_txid(self.replaces, "replaces")
        tx = _parse_unsigned(self.unsigned_tx)
        if tx.version != TX_VERSION or tx.locktime != self.view_height:
            raise PayoutError(f"a payout is version {TX_VERSION} with nLockTime = view height {self.view_height}")
        if [i.prevout for i in tx.vin] != [c.outpoint for c in self.inputs]:
            raise PayoutError("the transaction does not spend the plan's inputs in order")
        if any(i.sequence != SEQUENCE_RBF or i.script_sig for i in tx.vin):
            raise PayoutError("every payout input has an empty scriptSig and nSequence 0xfffffffd")
        if len(tx.vout) not in (len(self.burns), len(self.burns) + 1):
            raise PayoutError("a payout has one output per burn and at most one change output")
        total_in = sum(c.value for c in self.inputs)
        total_out = sum(o.value for o in tx.vout)
        if any(not 0 < o.value <= MAX_MONEY for o in tx.vout) or total_out > total_in:
            raise PayoutError("output values out of range or above the inputs")
        object.__setattr__(self, "fee", total_in - total_out)
        object.__setattr__(self, "vsize", estimate_p2wpkh_vsize(len(tx.vin), [o.script_pubkey for o in tx.vout]))
        object.__setattr__(self, "txid", tx.txid_hex)

    def __repr__(self) -> str:
        return (f"PayoutPlan(txid={self.txid}, burns={len(self.burns)}, inputs={len(self.inputs)}, fee={self.fee}, "
                f"fee_rate={self.fee_rate}, vsize={self.vsize}, view_height={self.view_height}, "
                f"replaces={self.replaces})")

    @property
    def tx(self) -> Tx:
        """A fresh copy of the unsigned transaction (the plan itself never changes)."""
        return Tx.from_bytes(self.unsigned_tx)

    def sighash(self, index: int) -> bytes:
        """The BIP143 SIGHASH_ALL digest of input ``index`` (P2WPKH script code of its coin's key)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.inputs):
            raise PayoutError(f"input {index!r} is not one of the payout's {len(self.inputs)} inputs")
        cached = self.__dict__.get("sighashes")
        if cached is not None:
            return cached[index]
        coin = self.inputs[index]
        return p2wpkh_sighash(self.tx, index, coin.public_key, coin.value)

    @cached_property
    def sighashes(self) -> tuple[bytes, ...]:
        """Every input's digest, in input order (what the threshold network is asked to sign)."""
        tx = self.tx
        return tuple(p2wpkh_sighash(tx, i, c.public_key, c.value) for i, c in enumerate(self.inputs))

    @property
    def burn_ids(self) -> tuple[bytes, ...]:
        return tuple(b.burn_id for b in self.burns)

    @property
    def payout_outputs(self) -> tuple[TxOut, ...]:
        return tuple(self.tx.vout[: len(self.burns)])

    @property
    def change(self) -> TxOut | None:
        vout = self.tx.vout
        return vout[len(self.burns)] if len(vout) > len(self.burns) else None

    def input_index(self, digest: bytes, path: Sequence[int]) -> int | None:
        """The input whose sighash is ``digest`` and whose key is at ``path`` — what a participant's
        sign hook checks a session's (digest, path) against — or None."""
        wanted = tuple(path)
        for i, (coin, sighash) in enumerate(zip(self.inputs, self.sighashes, strict=True)):
            if sighash == digest and coin.path == wanted:
                return i
        return None

    def to_bytes(self) -> bytes:
        """Canonical encoding for the node's archive (every signed variant is kept)."""
        out = [PLAN_TAG, bytes([ENCODING_VERSION]), struct.pack(">IQ", self.view_height,
                                                                  fee_rate_kvb(self.fee_rate))]
        out.append(_encode_optional_txid(self.replaces))
        out.append(struct.pack(">H", len(self.burns)))
        for b in self.burns:
            out += [b.burn_id, b.nonce.to_bytes(32, "big"), b.amount.to_bytes(32, "big"),
                    struct.pack(">I", len(b.destination)), b.destination]
        out.append(struct.pack(">H", len(self.inputs)))
        for c in self.inputs:
            out += [bytes.fromhex(c.txid), struct.pack(">IQ", c.vout, c.value), struct.pack(">B", len(c.path)),
                    b"".join(struct.pack(">I", i) for i in c.path), c.public_key,
                    b"\x00" if c.height is None else b"\x01" + struct.pack(">I", c.height)]
        out += [struct.pack(">I", len(self.unsigned_tx)), self.unsigned_tx]
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> PayoutPlan:
        """Decode :meth:`to_bytes`; anything else is refused with :class:`PayoutError`."""
        r = _reader(data, PLAN_TAG, "payout plan")
        view_height, rate_kvb = struct.unpack(">IQ", r.read(12))
        replaces = _decode_optional_txid(r)
        burns = []
        for _ in range(struct.unpack(">H", r.read(2))[0]):
            burn_id = r.read(32)
            nonce = int.from_bytes(r.read(32), "big")
            amount = int.from_bytes(r.read(32), "big")
            burns.append(PayoutBurn(burn_id, nonce, amount, r.read(struct.unpack(">I", r.read(4))[0])))
        coins = []
        for _ in range(struct.unpack(">H", r.read(2))[0]):
            txid = r.read(32).hex()
            vout, value = struct.unpack(">IQ", r.read(12))
            path = tuple(struct.unpack(">I", r.read(4))[0] for _ in range(r.u8()))
            public_key = r.read(33)
            flag = r.u8()
            if flag not in (0, 1):
                raise PayoutError("payout plan: bad height flag")
            height = struct.unpack(">I", r.read(4))[0] if flag else None
            coins.append(CustodyCoin(txid, vout, value, _p2wpkh_script_of(public_key), path, public_key, height))
        unsigned = r.read(struct.unpack(">I", r.read(4))[0])
        if not r.at_end():
            raise PayoutError("payout plan: trailing bytes")
        if rate_kvb == 0:
            raise PayoutError("payout plan: zero fee rate")
        plan = cls(tuple(burns), tuple(coins), unsigned, _rate_of(rate_kvb), view_height, replaces)
        if plan.to_bytes() != bytes(data):
            raise PayoutError("payout plan: non-canonical encoding")
        return plan


def _p2wpkh_script_of(public_key: bytes) -> bytes:
    try:
        return p2wpkh_script(public_key)
    except BitcoinError:
        raise PayoutError("public key must be 33 compressed bytes") from None


def _parse_unsigned(data: object) -> Tx:
    if not isinstance(data, bytes):
        raise PayoutError("unsigned transaction must be bytes")
    try:
        tx = Tx.from_bytes(data, allow_witness=False)
    except ValueError as exc:
        raise PayoutError(f"unsigned transaction does not parse: {exc}") from None
    if not tx.vin or not tx.vout or tx.serialize() != data:
        raise PayoutError("unsigned transaction must have inputs and outputs and no witness")
    return tx


class _PayoutReader(Reader):
    error = PayoutError


def _reader(data: object, tag: bytes, what: str) -> _PayoutReader:
    if not isinstance(data, bytes | bytearray):
        raise PayoutError(f"encoded {what} must be bytes")
    r = _PayoutReader(bytes(data), what)
    if r.read(len(tag)) != tag or r.u8() != ENCODING_VERSION:
        raise PayoutError(f"not a version-{ENCODING_VERSION} encoded {what}")
    return r


def _encode_optional_txid(txid: str | None) -> bytes:
    return b"\x00" if txid is None else b"\x01" + bytes.fromhex(txid)


def _decode_optional_txid(r: _PayoutReader) -> str | None:
    flag = r.u8()
    if flag not in (0, 1):
        raise PayoutError(f"{r.what}: bad 'replaces' flag")
    return r.read(32).hex() if flag else None


# ---------------------------------------------------------------------------------- planning


def _ordered_burns(burns: Iterable[PayoutBurn], params: BtcPayoutParams) -> tuple[PayoutBurn, ...]:
    burns = tuple(burns)
    if not burns:
        raise PayoutError("a payout needs at least one burn")
    if not all(isinstance(b, PayoutBurn) for b in burns):
        raise PayoutError("burns must be PayoutBurn values")
    if len(burns) > params.max_batch:
        raise TooManyBurns(f"{len(burns)} burns exceed the batch limit of {params.max_batch}")
    if len({b.burn_id for b in burns}) != len(burns):
        raise PayoutError("a burn appears twice in the batch")
    if len({b.nonce for b in burns}) != len(burns):
        raise PayoutError("two burns share a nonce")
    return tuple(sorted(burns, key=lambda b: (b.nonce, b.burn_id)))


def _eligible(coins: Iterable[CustodyCoin], view_height: int, params: BtcPayoutParams) -> list[CustodyCoin]:
    coins = list(coins)
    if not all(isinstance(c, CustodyCoin) for c in coins):
        raise PayoutError("coins must be CustodyCoin values")
    if len({(c.txid, c.vout) for c in coins}) != len(coins):
        raise PayoutError("a coin appears twice in the coin set")
    newest = view_height - params.min_input_confirmations + 1
    return sorted((c for c in coins if c.height is not None and c.height <= newest), key=lambda c: c.sort_key)


def _check_view_height(view_height: int) -> None:
    if not 0 <= _check_uint(view_height, "view height", 32) < LOCKTIME_THRESHOLD:
        raise PayoutError("view height must be a block height below 500,000,000")


def plan_payout(burns: Iterable[PayoutBurn], coins: Iterable[CustodyCoin], fee_rate: FeeRate,
                change_script: bytes, params: BtcPayoutParams, *, view_height: int) -> PayoutPlan:
    """The payout of ``burns`` from ``coins`` at ``fee_rate`` as of block ``view_height``.

    Deterministic in its arguments and independent of the order of ``burns`` and ``coins``. Raises
    :class:`UnpayableDestination` / :class:`BelowMinimum` / :class:`UnpayableAmount` for a burn that
    must be refunded (leave it out of the batch), :class:`FeeAboveCap`, :class:`InsufficientCustody`
    (:class:`TooManyInputs`), :class:`TooManyBurns`.
    """
    _check_view_height(view_height)
    if not isinstance(change_script, bytes) or not change_script:
        raise PayoutError("change script must be non-empty bytes")
    ordered = _ordered_burns(burns, params)
    rate_kvb = fee_rate_kvb(fee_rate)
    if rate_kvb > fee_rate_kvb(params.max_fee_rate):
        raise FeeAboveCap(f"fee rate {_rate_of(rate_kvb)} sat/vB is above the maximum {params.max_fee_rate} sat/vB")
    scripts = [decode_destination(b.destination, params.network) for b in ordered]
    payouts = [TxOut(_value_paying(b.amount, script, params), script)
               for b, script in zip(ordered, scripts, strict=True)]
    target = sum(o.value for o in payouts)
    change_dust = dust_threshold(change_script)
    n = len(ordered)
    # The estimate is separable: weight(k inputs, outputs) = weight(1, outputs) + weight(k, none) −
    # weight(1, none). Serialising a 100-output list once instead of once per candidate input keeps
    # a participant's rebuild (run for every input's sign session) cheap; the result is checked below.
    weight_one = {True: estimate_p2wpkh_weight(1, [*scripts, change_script]), False: estimate_p2wpkh_weight(1, scripts)}
    inputs_only_one = estimate_p2wpkh_weight(1, [])

    def vsize_of(k: int, with_change: bool) -> int:
        weight = weight_one[with_change] + estimate_p2wpkh_weight(k, []) - inputs_only_one
        return (weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR

    chosen: list[CustodyCoin] = []
    total = 0
    dropped_change_over_cap: str | None = None
    selected: tuple[list[CustodyCoin], int | None] | None = None
    for coin in _eligible(coins, view_height, params):
        if len(chosen) == params.max_inputs:
            raise TooManyInputs(f"paying {n} burns ({target} sat) needs more than {params.max_inputs} inputs")
        chosen.append(coin)
        total += coin.value
        vsize_change = vsize_of(len(chosen), True)
        fee_change = _fee(rate_kvb, vsize_change)
        cap = fee_cap(n, vsize_change, params)
        if fee_change > cap:  # another input only raises the fee; the cap's terms do not grow past it
            raise FeeAboveCap(f"fee {fee_change} sat for {len(chosen)} inputs at {_rate_of(rate_kvb)} sat/vB is above "
                              f"the cap {cap} sat ({n} burns × {params.withdrawal_fee} sat, "
                              f"{params.max_fee_rate} sat/vB × {vsize_change} vB)")
        if total < target + fee_change:
            continue
        change = total - target - fee_change
        if change >= change_dust:
            selected = (chosen, change)
            break
        fee_no_change = total - target
        vsize_no_change = vsize_of(len(chosen), False)
        if fee_no_change <= fee_cap(n, vsize_no_change, params):
            selected = (chosen, None)
            break
        # Dropping the dust change would overpay the cap; one more coin makes the change worth keeping.
        dropped_change_over_cap = (f"without change the fee would be {fee_no_change} sat, above the cap "
                                   f"{fee_cap(n, vsize_no_change, params)} sat, and no further coin is eligible")
    if selected is None:
        if dropped_change_over_cap is not None:
            raise FeeAboveCap(dropped_change_over_cap)
        eligible_total = sum(c.value for c in _eligible(coins, view_height, params))
        raise InsufficientCustody(f"eligible custody coins hold {eligible_total} sat; paying {n} burns needs "
                                  f"{target} sat plus the fee")
    inputs, change_value = selected
    outputs = [*payouts, TxOut(change_value, change_script)] if change_value is not None else payouts
    tx = Tx(TX_VERSION, [TxIn(c.outpoint, sequence=SEQUENCE_RBF) for c in inputs], outputs, view_height)
    plan = PayoutPlan(ordered, tuple(inputs), tx.serialize(), _rate_of(rate_kvb), view_height)
    if plan.vsize != vsize_of(len(inputs), change_value is not None):  # the separability above
        raise PayoutError("internal: the size estimate is not separable; payouts.plan_payout must be revisited")
    return plan


# ------------------------------------------------------------------------------------ bumping


def _min_real_vsize(n_inputs: int, scripts: Sequence[bytes]) -> int:
    """A lower bound on the signed vsize: the estimate takes 72-byte signatures; a low-S DER
    signature plus sighash byte is at least 69 bytes but for a 2^-24 chance per input."""
    weight = estimate_p2wpkh_weight(n_inputs, scripts) - 3 * n_inputs
    return (weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR


def _min_bump_fee(plan: PayoutPlan, vsize_new: int, params: BtcPayoutParams) -> int:
    """The least fee a replacement of ``plan`` of (estimated) ``vsize_new`` may pay: BIP125 rule 4
    (old fee + incremental relay fee × new size) and rule 6 (a higher rate than the original, with
    the original at its smallest possible real size and the replacement at its largest)."""
    tx = plan.tx
    rule4 = plan.fee + _fee(fee_rate_kvb(params.incremental_relay_fee), vsize_new)
    old_min = _min_real_vsize(len(tx.vin), [o.script_pubkey for o in tx.vout])
    rule6 = plan.fee * vsize_new // old_min + 1
    return max(rule4, rule6)


def minimum_bump_rate(plan: PayoutPlan, params: BtcPayoutParams) -> Decimal:
    """The smallest fee rate :func:`bump_payout` accepts for ``plan`` (keeping its change): what a
    coordinator proposes when its own estimate is lower."""
    if plan.change is None:
        raise CannotBump(f"payout {plan.txid} has no change output to take a higher fee from")
    vsize = plan.vsize
    least = _min_bump_fee(plan, vsize, params)
    return _rate_of(-(-((least - 1) * 1000 + 1) // vsize))  # smallest kvb with ⌈kvb × vsize / 1000⌉ ≥ least


def bump_payout(plan: PayoutPlan, new_fee_rate: FeeRate, params: BtcPayoutParams) -> PayoutPlan:
    """The replacement of ``plan`` at ``new_fee_rate``: the same inputs in the same order, the same
    payout outputs and locktime; only the change shrinks (and is dropped below dust).

    Raises :class:`CannotBump` if the replacement would not be relayed (BIP125 rules 4 and 6; use
    :func:`minimum_bump_rate`) or there is no change, :class:`FeeAboveCap` above the cap. Inputs are
    never re-selected: a payout on other inputs could confirm *beside* the original.
    """
    if not isinstance(plan, PayoutPlan):
        raise PayoutError("bump_payout needs a PayoutPlan")
    rate_kvb = fee_rate_kvb(new_fee_rate)
    change = plan.change
    if change is None:
        raise CannotBump(f"payout {plan.txid} has no change output to take a higher fee from")
    tx = plan.tx
    n = len(plan.burns)
    payouts = list(tx.vout[:n])
    scripts = [o.script_pubkey for o in payouts]
    total_in = sum(c.value for c in plan.inputs)
    target = sum(o.value for o in payouts)
    vsize_change = estimate_p2wpkh_vsize(len(plan.inputs), [*scripts, change.script_pubkey])
    fee_change = _fee(rate_kvb, vsize_change)
    least = _min_bump_fee(plan, vsize_change, params)
    if fee_change < least:
        raise CannotBump(f"a replacement of {plan.txid} must pay at least {least} sat (BIP125: {plan.fee} sat plus "
                         f"{params.incremental_relay_fee} sat/vB × {vsize_change} vB, and a higher rate); "
                         f"{_rate_of(rate_kvb)} sat/vB gives {fee_change} sat — at least "
                         f"{minimum_bump_rate(plan, params)} sat/vB is needed")
    cap = fee_cap(n, vsize_change, params)
    if fee_change > cap:
        raise FeeAboveCap(f"bumped fee {fee_change} sat at {_rate_of(rate_kvb)} sat/vB is above the cap {cap} sat "
                          f"({n} burns × {params.withdrawal_fee} sat, "
                          f"{params.max_fee_rate} sat/vB × {vsize_change} vB)")
    new_change = total_in - target - fee_change
    if new_change >= dust_threshold(change.script_pubkey):
        outputs = [*payouts, TxOut(new_change, change.script_pubkey)]
    else:
        fee_no_change = total_in - target
        vsize_no_change = estimate_p2wpkh_vsize(len(plan.inputs), scripts)
        cap = fee_cap(n, vsize_no_change, params)
        if fee_no_change > cap:
            raise FeeAboveCap(f"the bump leaves {max(new_change, 0)} sat of change, below dust; without change the fee "
                              f"would be {fee_no_change} sat, above the cap {cap} sat")
        outputs = payouts
    bumped = Tx(tx.version, [TxIn(i.prevout, sequence=i.sequence) for i in tx.vin], outputs, tx.locktime)
    return PayoutPlan(plan.burns, plan.inputs, bumped.serialize(), _rate_of(rate_kvb), plan.view_height,
                      replaces=plan.txid)


# --------------------------------------------------------------------------------- signatures


class _HasRS(Protocol):
    @property
    def r(self) -> int: ...

    @property
    def s(self) -> int: ...


def finalize_payout(plan: PayoutPlan, signatures: Sequence[tuple[int, int] | _HasRS]) -> Tx:
    """The signed payout: one (r, s) per input (or anything with ``.r``/``.s``, e.g. the threshold
    ``Signature``), each checked first — in range, low-S, verifying under the input's key against
    its sighash — so a faulty signer can never make the bridge broadcast a transaction the network
    rejects; :class:`SignatureRejected` names the input."""
    if not isinstance(plan, PayoutPlan):
        raise PayoutError("finalize_payout needs a PayoutPlan")
    signatures = list(signatures)
    if len(signatures) != len(plan.inputs):
        raise SignatureRejected(f"{len(signatures)} signatures for {len(plan.inputs)} inputs")
    tx = plan.tx
    for i, (coin, sighash, sig) in enumerate(zip(plan.inputs, plan.sighashes, signatures, strict=True)):
        where = f"input {i} ({coin})"
        try:
            r, s = (sig.r, sig.s) if not isinstance(sig, tuple) else sig
        except (AttributeError, ValueError, TypeError):
            raise SignatureRejected(f"{where}: not an (r, s) signature") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (r, s)) or not (
                0 < r < SECP256K1_ORDER and 0 < s < SECP256K1_ORDER):
            raise SignatureRejected(f"{where}: signature values out of range")
        if s > HALF_ORDER:
            raise SignatureRejected(f"{where}: high-S signature (non-standard)")
        if not verify_der_signature(coin.public_key, sighash, r, s):
            raise SignatureRejected(f"{where}: signature does not verify under the key at path {coin.path}")
        finalize_p2wpkh_input(tx, i, coin.public_key, r, s)
    return tx


# ---------------------------------------------------------------------------------- proposals


@dataclass(frozen=True)
class PayoutProposal:
    """What a coordinator asks participants to co-sign (inside its sign request): the unsigned
    transaction, the burns it pays (nonce order), the view it was built at and the fee rate, and
    for a fee bump the txid of the payout it replaces."""

    unsigned_tx: bytes
    burn_ids: tuple[bytes, ...]
    view_height: int
    view_block_hash: str  # display hex of the block at view_height in the coordinator's chain
    fee_rate: Decimal
    replaces: str | None = None

    def __post_init__(self) -> None:
        _parse_unsigned(self.unsigned_tx)
        if not isinstance(self.burn_ids, tuple) or not all(
                isinstance(b, bytes) and len(b) == 32 for b in self.burn_ids):
            raise PayoutError("burn ids must be a tuple of 32-byte ids")
        if not 1 <= len(self.burn_ids) <= 0xFFFF:
            raise PayoutError("a proposal names between 1 and 65535 burns")
        _check_view_height(self.view_height)
        _check_txid(self.view_block_hash, "view block hash")
        object.__setattr__(self, "fee_rate", canonical_fee_rate(self.fee_rate))
        if self.replaces is not None:
            _check_txid(self.replaces, "replaces")

    def __repr__(self) -> str:
        return (f"PayoutProposal(txid={self.txid}, burns={len(self.burn_ids)}, view_height={self.view_height}, "
                f"fee_rate={self.fee_rate}, replaces={self.replaces})")

    @classmethod
    def of(cls, plan: PayoutPlan, view_block_hash: str) -> PayoutProposal:
        """The proposal of ``plan``; ``view_block_hash`` is the hash of block ``plan.view_height``."""
        return cls(plan.unsigned_tx, plan.burn_ids, plan.view_height, view_block_hash, plan.fee_rate, plan.replaces)

    @property
    def tx(self) -> Tx:
        return Tx.from_bytes(self.unsigned_tx)

    @property
    def txid(self) -> str:
        return self.tx.txid_hex

    def to_bytes(self) -> bytes:
        """Tag ‖ version ‖ view height u32 ‖ block hash 32 ‖ rate sat/kvB u64 ‖ replaces (0 | 1 ‖ 32)
        ‖ burns u16 ‖ ids ‖ tx length u32 ‖ tx. One proposal, one byte string."""
        return b"".join([
            PROPOSAL_TAG, bytes([ENCODING_VERSION]), struct.pack(">I", self.view_height),
            bytes.fromhex(self.view_block_hash), struct.pack(">Q", fee_rate_kvb(self.fee_rate)),
            _encode_optional_txid(self.replaces), struct.pack(">H", len(self.burn_ids)), *self.burn_ids,
            struct.pack(">I", len(self.unsigned_tx)), self.unsigned_tx,
        ])

    @classmethod
    def from_bytes(cls, data: bytes) -> PayoutProposal:
        """Decode :meth:`to_bytes`; anything else is refused with :class:`PayoutError`."""
        r = _reader(data, PROPOSAL_TAG, "payout proposal")
        view_height = struct.unpack(">I", r.read(4))[0]
        block_hash = r.read(32).hex()
        rate_kvb = struct.unpack(">Q", r.read(8))[0]
        replaces = _decode_optional_txid(r)
        burn_ids = tuple(r.read(32) for _ in range(struct.unpack(">H", r.read(2))[0]))
        unsigned = r.read(struct.unpack(">I", r.read(4))[0])
        if not r.at_end():
            raise PayoutError("payout proposal: trailing bytes")
        if rate_kvb == 0:
            raise PayoutError("payout proposal: zero fee rate")
        proposal = cls(unsigned, burn_ids, view_height, block_hash, _rate_of(rate_kvb), replaces)
        if proposal.to_bytes() != bytes(data):
            raise PayoutError("payout proposal: non-canonical encoding")
        return proposal


# ------------------------------------------------------------------------------ the participant


@dataclass(frozen=True)
class BurnFacts:
    """A burn as this node's own chain view and records know it."""

    nonce: int
    amount: int  # sat
    destination: bytes  # raw Burned.destination
    final: bool  # seen at the required depth (and re-read there)
    refunded: bool  # a Refunded event (or a refund this node signed) exists
    paid_or_pending_in: str | None = None  # txid of a payout (any signed variant) paying it, or None


class PayoutView(Protocol):
    """What :func:`check_payout` asks of the node; implemented at the edge over the node's own
    Bitcoin endpoint, its destination-chain follower and its bridge database."""

    def tip_height(self) -> int:
        """Height of this node's best Bitcoin block."""
        ...

    def block_hash(self, height: int) -> str | None:
        """Display hex of this node's best-chain block at ``height``, or None."""
        ...

    def burn(self, burn_id: bytes) -> BurnFacts | None:
        """The burn of *this* asset (the one paid on this Bitcoin network) with this id, or None."""
        ...

    def custody_coins(self, view_height: int, exclude_reserved_except: str | None) -> Sequence[CustodyCoin]:
        """Unspent outputs (at this node's tip) at the custody and deposit addresses, created at or
        below ``view_height``, minus those spent by any payout this node archived (pending or
        confirmed) other than the one whose txid is ``exclude_reserved_except``.

        Deposit outputs belong here once they are final by the deposit rules (minted): a payout
        whose input is reorganised away cannot confirm, and it must not be rebuilt on other inputs
        while that input may come back — so only coins no reorg is expected to take are spent."""
        ...

    def fee_estimate(self) -> Decimal | None:
        """This node's own fee-rate estimate in sat/vB (None when it has none)."""
        ...

    def change_script(self) -> bytes:
        """The scriptPubKey of the current custody address (``bridge.custody``)."""
        ...

    def payout(self, txid: str) -> PayoutPlan | None:
        """An archived payout plan (one this node co-signed or saw proposed), or None."""
        ...


@dataclass(frozen=True)
class Verdict:
    """``ok`` and, when refused, a machine-readable ``code`` and a sentence for the audit log. On
    ``ok`` the node's own rebuilt ``plan`` comes along: its sighashes and paths are the only
    (digest, path) pairs the node may sign for this proposal (:meth:`PayoutPlan.input_index`)."""

    ok: bool
    code: str
    reason: str
    plan: PayoutPlan | None = field(default=None, compare=False)


def _refuse(code: str, reason: str) -> Verdict:
    return Verdict(False, code, reason)


def _replacement_family(view: PayoutView, replaces: str | None) -> set[str]:
    """The txids of ``replaces`` and every payout it (transitively) replaced, by this node's archive."""
    family: set[str] = set()
    current = replaces
    while current is not None and current not in family and len(family) < MAX_REPLACEMENT_CHAIN:
        family.add(current)
        archived = view.payout(current)
        current = archived.replaces if archived is not None else None
    return family


def _script_text(script: bytes) -> str:
    return script.hex()


def _difference(proposed: Tx, rebuilt: PayoutPlan) -> str:
    """Which part of the proposed transaction differs from this node's rebuild."""
    mine = rebuilt.tx
    n = len(rebuilt.burns)
    if proposed.version != mine.version:
        return f"version: proposed {proposed.version}, rebuilt {mine.version}"
    theirs_in = [(str(i.prevout), i.sequence) for i in proposed.vin]
    mine_in = [(str(i.prevout), i.sequence) for i in mine.vin]
    if theirs_in != mine_in:
        extra = sorted({p for p, _ in theirs_in} - {p for p, _ in mine_in})
        missing = sorted({p for p, _ in mine_in} - {p for p, _ in theirs_in})
        if extra or missing:
            return (f"inputs: the proposal spends {len(theirs_in)} coins, the rebuild {len(mine_in)}; not in the "
                    f"rebuild: {', '.join(extra[:5]) or 'none'}; missing: {', '.join(missing[:5]) or 'none'}")
        return "inputs: same coins in another order or with other nSequence values"
    if proposed.locktime != mine.locktime:
        return f"locktime: proposed {proposed.locktime}, rebuilt {mine.locktime} (the view height)"
    if len(proposed.vout) < n:
        return f"payout outputs: the proposal has {len(proposed.vout)} outputs for {n} burns"
    for k in range(n):
        a, b = proposed.vout[k], mine.vout[k]
        if (a.value, a.script_pubkey) != (b.value, b.script_pubkey):
            burn = rebuilt.burns[k]
            return (f"payout outputs: output {k} (burn nonce {burn.nonce}) pays {a.value} sat to "
                    f"{_script_text(a.script_pubkey)}; the burn pays {b.value} sat to {_script_text(b.script_pubkey)}")
    theirs_change, mine_change = proposed.vout[n:], mine.vout[n:]
    if len(theirs_change) > 1:
        return f"change: the proposal has {len(theirs_change)} outputs after the payouts; at most one is change"
    if [o.script_pubkey for o in theirs_change] != [o.script_pubkey for o in mine_change]:
        if theirs_change and mine_change:
            return (f"change: goes to {_script_text(theirs_change[0].script_pubkey)}, not to the custody script "
                    f"{_script_text(mine_change[0].script_pubkey)}")
        if theirs_change:
            return (f"change: the proposal has a change output to {_script_text(theirs_change[0].script_pubkey)}; "
                    f"the rebuild has none")
        return "change: the proposal has no change output; the rebuild returns change to custody"
    total_in = sum(c.value for c in rebuilt.inputs)
    theirs_fee = total_in - sum(o.value for o in proposed.vout)
    if theirs_fee != rebuilt.fee:
        return f"fee: the proposal pays {theirs_fee} sat, the rebuild {rebuilt.fee} sat"
    return "transaction bytes differ"


def check_payout(proposal: PayoutProposal, view: PayoutView, params: BtcPayoutParams) -> Verdict:
    """Whether this node co-signs ``proposal``; every refusal names what differs.

    The node rebuilds the payout itself — :func:`plan_payout` from the burns and its own coins at the
    proposal's view height, or :func:`bump_payout` of its archived original for a ``replaces`` — and
    accepts only byte-identical bytes. Before that it checks its view (not behind, same block at the
    view height), every burn (known, final, not refunded, not paid or pending in another payout,
    payable, above the minimum) and the fee rate (under the maximum, within the band around its own
    estimate). The order puts facts about the world before the transaction's details, so a refusal's
    reason does not depend on timing.

    A bump skips the block-hash check: its bytes follow from the archived original alone (its
    locktime is the original's view height), and a reorg below that height must not strand a payout
    whose inputs still exist.
    """
    if not isinstance(proposal, PayoutProposal):
        return _refuse("malformed", "not a PayoutProposal")
    ids = proposal.burn_ids
    if len(ids) > params.max_batch:
        return _refuse("too_many_burns", f"{len(ids)} burns exceed the batch limit of {params.max_batch}")
    seen: set[bytes] = set()
    for burn_id in ids:
        if burn_id in seen:
            return _refuse("burn_already_paid", f"burn 0x{burn_id.hex()} is named twice in one payout")
        seen.add(burn_id)

    tip = view.tip_height()
    if tip < proposal.view_height:
        return _refuse("behind", f"this node's tip {tip} is below the proposal's view height {proposal.view_height}")
    original: PayoutPlan | None = None
    if proposal.replaces is None:
        here = view.block_hash(proposal.view_height)
        if here != proposal.view_block_hash:
            return _refuse("different_view", f"block {proposal.view_height} is {here} here, not "
                                             f"{proposal.view_block_hash}")
    else:
        original = view.payout(proposal.replaces)
        if original is None:
            return _refuse("replaces_unknown", f"this node has no archived payout {proposal.replaces} to bump")

    txid = proposal.txid
    allowed_payouts = {txid} | _replacement_family(view, proposal.replaces)
    burns: list[PayoutBurn] = []
    for burn_id in ids:
        facts = view.burn(burn_id)
        name = f"burn 0x{burn_id.hex()}"
        if facts is None:
            return _refuse("unknown_burn", f"{name} is not a burn of this asset known to this node")
        if not facts.final:
            return _refuse("burn_not_final", f"{name} (nonce {facts.nonce}) is not at the required depth")
        if facts.refunded:
            return _refuse("burn_refunded", f"{name} (nonce {facts.nonce}) was refunded")
        if facts.paid_or_pending_in is not None and facts.paid_or_pending_in not in allowed_payouts:
            return _refuse("burn_already_paid", f"{name} (nonce {facts.nonce}) is paid or pending in payout "
                                                f"{facts.paid_or_pending_in}")
        try:
            burn = PayoutBurn(burn_id, facts.nonce, facts.amount, facts.destination)
            payout_value(burn, params)
        except BelowMinimum as exc:
            return _refuse("below_minimum", f"{name}: {exc}")
        except RefundableBurn as exc:
            return _refuse("unpayable", f"{name}: {exc}")
        except PayoutError as exc:
            return _refuse("unknown_burn", f"{name}: this node's record of it is malformed: {exc}")
        burns.append(burn)

    rate = proposal.fee_rate
    if rate > params.max_fee_rate:
        return _refuse("fee_above_cap", f"fee rate {rate} sat/vB is above the maximum {params.max_fee_rate} sat/vB")
    estimate = view.fee_estimate()
    try:
        own = Decimal(str(estimate))
    except (InvalidOperation, ValueError):
        own = Decimal("NaN")
    if estimate is None or not own.is_finite() or own <= 0:
        return _refuse("no_fee_estimate", f"this node has no usable fee estimate ({estimate!r}) to check the rate "
                                          f"against")
    if not (rate * params.fee_band >= own and rate <= own * params.fee_band):
        return _refuse("fee_out_of_band", f"fee rate {rate} sat/vB is outside [{own} / {params.fee_band}, "
                                          f"{own} × {params.fee_band}] around this node's estimate {own} sat/vB")

    try:
        if original is not None:
            if original.burn_ids != ids:
                return _refuse("rebuilt_different", f"payout outputs: the bump names other burns than the payout "
                                                    f"{original.txid} it replaces")
            if original.view_height != proposal.view_height:
                return _refuse("rebuilt_different", f"locktime: a bump keeps the view height {original.view_height} "
                                                    f"of the payout it replaces, not {proposal.view_height}")
            rebuilt = bump_payout(original, rate, params)
        else:
            coins = view.custody_coins(proposal.view_height, txid)
            rebuilt = plan_payout(burns, coins, rate, view.change_script(), params, view_height=proposal.view_height)
    except FeeAboveCap as exc:
        return _refuse("fee_above_cap", str(exc))
    except CannotBump as exc:
        return _refuse("cannot_bump", str(exc))
    except InsufficientCustody as exc:
        return _refuse("insufficient_custody", f"this node's coins cannot pay the batch: {exc}")
    except PayoutError as exc:
        return _refuse("rebuilt_different", f"this node cannot rebuild the payout: {exc}")

    if rebuilt.burn_ids != ids:
        return _refuse("rebuilt_different", "payout outputs: the proposal does not list its burns in nonce order")
    if rebuilt.unsigned_tx != proposal.unsigned_tx:
        return _refuse("rebuilt_different", _difference(proposal.tx, rebuilt))
    return Verdict(True, "ok", f"payout {txid} rebuilt identically", rebuilt)


def check_payout_input(proposal: PayoutProposal, input_index: int, digest: bytes, path: Sequence[int],
                       view: PayoutView, params: BtcPayoutParams) -> Verdict:
    """:func:`check_payout`, then that the sign session asks for exactly input ``input_index``: its
    BIP143 sighash in the node's *own* rebuild, with the key at that coin's path — a session for a
    digest or path the rebuild does not produce gets nothing, whatever the proposal says."""
    verdict = check_payout(proposal, view, params)
    if not verdict.ok or verdict.plan is None:
        return verdict
    plan = verdict.plan
    if isinstance(input_index, bool) or not isinstance(input_index, int) or not 0 <= input_index < len(plan.inputs):
        return _refuse("wrong_input", f"input {input_index!r} is not one of the payout's {len(plan.inputs)} inputs")
    if digest != plan.sighash(input_index):
        return _refuse("wrong_digest", f"the digest is not input {input_index}'s sighash in this node's rebuild")
    if tuple(path) != plan.inputs[input_index].path:
        return _refuse("wrong_path", f"path {tuple(path)} is not the key path {plan.inputs[input_index].path} of "
                                     f"input {input_index} ({plan.inputs[input_index]})")
    return verdict
