"""ETH payouts from the custody address: a durable nonce ledger, the transactions, and the co-signer's check.

A burn of fpETH is paid by a plain 21000-gas transfer from the custody address of the source EVM
chain (``bridge/custody.py``). Everything here is sans-IO: chain facts, fee estimates and the time
come in as arguments, so the coordinator and every participant run the same code on their own view.

**Why no burn is paid twice.** An account's transactions are ordered by nonce and exactly one
transaction per nonce can ever confirm. So the rule every participant enforces (:func:`check_eth_payout`)
is: *every transaction this node co-signs for one burn uses one nonce*. A retry re-signs the identical
transaction; a stuck payout is replaced by the same transaction with higher fees (geth's same-nonce
replacement), so the original and every replacement compete for one slot and at most one confirms.
The node never co-signs a nonce it co-signed for one burn for another burn or for a gap filler, and
it moves a burn to another nonce only once the chain shows, at final depth, that the first nonce was
consumed by a transaction that does not pay that burn. Anyswap lost funds when a restarted node reused
a nonce; here the :class:`NonceManager` is a plain value the integrator stores in the same database
transaction as every step, so a restart resumes exactly where the last committed step left it.

**Why custody stays solvent.** Each burn pays ``amount − withdrawal_fee``; a payout can cost at most
``gas_limit × max_fee_per_gas`` in gas, which :class:`EvmPayoutParams` requires to be at most the
withdrawal fee, so the custody keeps the difference and never pays gas out of other users' coins.

**Why some destinations are refused.** A 21000-gas transfer to a contract runs out of gas as soon as
the contract's code does anything, and it would fail again on every retry, so a destination with code
(as the node's view reports), the zero address and the precompiles (≤ 0xffff, the Gateway's own rule)
and the custody address itself are :class:`UnpayableDestination`: the integrator refunds such burns.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import rlp
from coincurve import PublicKey
from rlp.sedes import big_endian_int

from fusion_prime.protocol.addresses import keccak256
from fusion_prime.protocol.hd import parse_path
from fusion_prime.signer.ethereum import AccessListEntry, Eip1559Transaction, EthereumError

from .custody import CustodyAddress
from .mint_policy import Verdict
from .orders import OrderError, address_bytes, evm_chain_id, to_checksum_address

TRANSFER_GAS = 21_000
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: The owner of a nonce whose purpose was cancelled before it was signed: a 0-value self-transfer
#: (a gap filler) takes it, so that later nonces can confirm.
GAP_FILL = "gap-fill"
#: Destinations at or below this are the zero address or precompiles (the Gateway refuses them too).
HIGHEST_RESERVED_ADDRESS = 0xFFFF
MANAGER_FORMAT_VERSION = 1
_PURPOSE = re.compile(r"[!-~]{1,128}")  # printable ASCII, no spaces: safe in logs and JSON keys


class EvmPayoutError(ValueError):
    """A payout, sweep or nonce-ledger input is malformed or inconsistent."""


class BelowMinimum(EvmPayoutError):
    """The burn does not exceed the withdrawal fee: nothing would be left to pay (refund it)."""


class UnpayableDestination(EvmPayoutError):
    """A plain transfer to this destination cannot be made to work (refund the burn)."""


class NothingToSweep(EvmPayoutError):
    """The deposit balance does not cover the sweep's worst-case gas: nothing would arrive."""


class FeeCapReached(EvmPayoutError):
    """A replacement would need fees above the cap; keep re-broadcasting the current one."""


class NonceError(EvmPayoutError):
    """The nonce ledger was asked for something that could hand out a nonce twice, or is corrupt."""


# --------------------------------------------------------------------------------------- values


def _uint(value: Any, what: str, limit: int = 2**256 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EvmPayoutError(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= limit:
        raise EvmPayoutError(f"{what} {value} out of range [0, {limit}]")
    return value


def _ratio(value: Any, what: str) -> Fraction:
    """An exact ratio: floats are refused because 1.1 is not 11/10 in binary."""
    if isinstance(value, bool) or isinstance(value, float) or not isinstance(value, int | str | Fraction):
        raise EvmPayoutError(f"{what} must be an int, a Fraction or a decimal string, got {type(value).__name__}")
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise EvmPayoutError(f"{what} {value!r} is not a number") from None


def _ceil(value: Fraction) -> int:
    return -((-value.numerator) // value.denominator)


def _address(value: str | bytes, what: str) -> bytes:
    try:
        return address_bytes(value, what)
    except OrderError as exc:
        raise EvmPayoutError(str(exc)) from None


def _hex_address(raw: bytes | None) -> str:
    return "none" if raw is None else to_checksum_address(raw)


@dataclass(frozen=True)
class FeeQuote:
    """EIP-1559 fees per gas, in wei: an estimate, or what a transaction offers."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def __post_init__(self) -> None:
        if _uint(self.max_fee_per_gas, "max_fee_per_gas") == 0:
            raise EvmPayoutError("max_fee_per_gas must be positive")
        _uint(self.max_priority_fee_per_gas, "max_priority_fee_per_gas")
        if self.max_priority_fee_per_gas > self.max_fee_per_gas:
            raise EvmPayoutError("max_priority_fee_per_gas exceeds max_fee_per_gas")

    @classmethod
    def of(cls, tx: Eip1559Transaction) -> FeeQuote:
        return cls(tx.max_fee_per_gas, tx.max_priority_fee_per_gas)


@dataclass(frozen=True)
class EvmPayoutParams:
    """The shared rules of ETH payouts on one source chain (every node must configure the same).

    ``fee_band``: a proposed maxFeePerGas must lie within ``[own / band, own × band]`` of the
    node's own estimate (or sit at the cap when the estimate is above it). ``min_bump``: a
    replacement raises both fees by at least this factor (geth refuses less than 10 %).
    ``max_nonce_ahead``: how far above the confirmed count a participant co-signs, so a coordinator
    cannot park payouts behind a gap nobody will fill.
    """

    chain_id: int
    withdrawal_fee: int
    max_fee_per_gas: int
    fee_band: Fraction = Fraction(2)
    min_bump: Fraction = Fraction(11, 10)
    stuck_after: int = 600
    gas_limit: int = TRANSFER_GAS
    max_nonce_ahead: int = 64

    def __post_init__(self) -> None:
        if _uint(self.chain_id, "chain_id", 2**64 - 1) == 0:
            raise EvmPayoutError("chain_id must be positive")
        if _uint(self.withdrawal_fee, "withdrawal_fee") == 0:
            raise EvmPayoutError("withdrawal_fee must be positive")
        if _uint(self.max_fee_per_gas, "max_fee_per_gas") == 0:
            raise EvmPayoutError("max_fee_per_gas must be positive")
        if _uint(self.gas_limit, "gas_limit", 2**64 - 1) < TRANSFER_GAS:
            raise EvmPayoutError(f"gas_limit must be at least {TRANSFER_GAS} (a plain transfer)")
        if self.gas_limit * self.max_fee_per_gas > self.withdrawal_fee:
            raise EvmPayoutError(f"gas_limit × max_fee_per_gas = {self.gas_limit * self.max_fee_per_gas} exceeds "
                                 f"the withdrawal fee {self.withdrawal_fee}: payouts would spend other users' coins")
        band = _ratio(self.fee_band, "fee_band")
        bump = _ratio(self.min_bump, "min_bump")
        if band < 1:
            raise EvmPayoutError("fee_band must be at least 1")
        if bump < Fraction(11, 10):
            raise EvmPayoutError("min_bump must be at least 11/10 (geth refuses smaller replacements)")
        object.__setattr__(self, "fee_band", band)
        object.__setattr__(self, "min_bump", bump)
        if _uint(self.stuck_after, "stuck_after") == 0:
            raise EvmPayoutError("stuck_after must be positive")
        if _uint(self.max_nonce_ahead, "max_nonce_ahead") == 0:
            raise EvmPayoutError("max_nonce_ahead must be positive")

    @property
    def max_gas_cost(self) -> int:
        return self.gas_limit * self.max_fee_per_gas


@dataclass(frozen=True)
class EvmBurn:
    """A ``Burned`` event of fpETH as this node's own view reports it, keyed by burn id.

    ``amount`` is in fpETH base units, which are wei (18 decimals). ``final``: the burn is at the
    required depth and was re-read there. ``refunded``: ``Refunded`` was seen for it or this node
    co-signed a refund order — never pay it. ``payout_confirmed``: a payout of it (at any nonce)
    is confirmed by this node's records or the chain.
    """

    burn_id: bytes
    amount: int
    destination: bytes
    final: bool = True
    refunded: bool = False
    payout_confirmed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.burn_id, bytes) or len(self.burn_id) != 32:
            raise EvmPayoutError("burn_id must be 32 bytes")
        _uint(self.amount, "burn amount")
        if not isinstance(self.destination, bytes):
            raise EvmPayoutError("burn destination must be bytes")

    @property
    def purpose(self) -> str:
        return payout_purpose(self.burn_id)


def payout_purpose(burn_id: bytes) -> str:
    """The nonce-ledger purpose id of a burn's payout (one burn, one purpose, one nonce)."""
    if not isinstance(burn_id, bytes) or len(burn_id) != 32:
        raise EvmPayoutError("burn_id must be 32 bytes")
    return "burn:" + burn_id.hex()


def payout_value(amount: int, params: EvmPayoutParams) -> int:
    """What the destination receives: the burn minus the withdrawal fee."""
    _uint(amount, "burn amount")
    if amount <= params.withdrawal_fee:
        raise BelowMinimum(f"burn amount {amount} does not exceed the withdrawal fee {params.withdrawal_fee}")
    return amount - params.withdrawal_fee


def payout_destination(destination: bytes, custody: CustodyAddress, *, has_code: bool) -> bytes:
    """The 20-byte address a burn pays, or :class:`UnpayableDestination` with the reason."""
    if not isinstance(destination, bytes):
        raise UnpayableDestination("destination must be bytes")
    if len(destination) != 20:
        raise UnpayableDestination(f"destination is {len(destination)} bytes, an EVM address is 20")
    if int.from_bytes(destination, "big") <= HIGHEST_RESERVED_ADDRESS:
        raise UnpayableDestination(f"destination {_hex_address(destination)} is the zero address or a precompile")
    if destination == _address(custody.address, "custody address"):
        raise UnpayableDestination("destination is the custody address itself")
    if has_code:
        raise UnpayableDestination(f"destination {_hex_address(destination)} has contract code; a 21000-gas "
                                   "transfer to it can fail for ever")
    return destination


def _custody_bytes(custody: CustodyAddress, params: EvmPayoutParams) -> bytes:
    try:
        chain_id = evm_chain_id(custody.chain)
    except OrderError as exc:
        raise EvmPayoutError(f"custody address: {exc}") from None
    if chain_id != params.chain_id:
        raise EvmPayoutError(f"custody address is on chain {chain_id}, the payout parameters on {params.chain_id}")
    return _address(custody.address, "custody address")


def _capped(fees: FeeQuote, params: EvmPayoutParams) -> FeeQuote:
    """The node's estimate lowered to the cap: paying at the cap beats not paying when fees spike."""
    if not isinstance(fees, FeeQuote):
        raise EvmPayoutError("fees must be a FeeQuote")
    max_fee = min(fees.max_fee_per_gas, params.max_fee_per_gas)
    return FeeQuote(max_fee, min(fees.max_priority_fee_per_gas, max_fee))


def _transfer(params: EvmPayoutParams, nonce: int, fees: FeeQuote, to: bytes, value: int) -> Eip1559Transaction:
    _uint(nonce, "nonce", 2**64 - 2)
    try:
        return Eip1559Transaction.create(chain_id=params.chain_id, nonce=nonce,
                                         max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
                                         max_fee_per_gas=fees.max_fee_per_gas, gas=params.gas_limit, to=to,
                                         value=value)
    except EthereumError as exc:
        raise EvmPayoutError(str(exc)) from None


# ------------------------------------------------------------------------------------- builders


def plan_eth_payout(burn: EvmBurn, nonce: int, fees: FeeQuote, params: EvmPayoutParams, custody: CustodyAddress,
                    *, destination_has_code: bool) -> Eip1559Transaction:
    """The payout of ``burn`` at ``nonce`` from the custody address: a function of the burn's facts,
    the nonce and the fees only, so a retry after a failed session re-signs the identical transaction.

    ``destination_has_code`` is the view's answer for the destination (``eth_getCode`` non-empty);
    it is a required argument so no caller can forget to ask. Fees above the cap are lowered to it.
    """
    if not isinstance(burn, EvmBurn):
        raise EvmPayoutError("burn must be an EvmBurn")
    _custody_bytes(custody, params)
    to = payout_destination(burn.destination, custody, has_code=destination_has_code)
    return _transfer(params, nonce, _capped(fees, params), to, payout_value(burn.amount, params))


def minimum_bump(fees: FeeQuote, params: EvmPayoutParams) -> FeeQuote:
    """The lowest fees a node accepts as a replacement of ``fees``: each raised by ``min_bump``
    (rounded up) and by at least 1 wei, since geth also wants both strictly higher."""
    return FeeQuote(max(_ceil(fees.max_fee_per_gas * params.min_bump), fees.max_fee_per_gas + 1),
                    max(_ceil(fees.max_priority_fee_per_gas * params.min_bump), fees.max_priority_fee_per_gas + 1))


def plan_replacement(tx: Eip1559Transaction, new_fees: FeeQuote, params: EvmPayoutParams) -> Eip1559Transaction:
    """``tx`` with the same nonce, recipient, value and data and higher fees: the larger of the
    node's current estimate and the minimum bump, lowered to the cap. Raises :class:`FeeCapReached`
    when the cap leaves no room for a valid replacement."""
    if not isinstance(tx, Eip1559Transaction):
        raise EvmPayoutError("tx must be an Eip1559Transaction")
    if not isinstance(new_fees, FeeQuote):
        raise EvmPayoutError("new_fees must be a FeeQuote")
    if tx.chain_id != params.chain_id:
        raise EvmPayoutError(f"tx is for chain {tx.chain_id}, the parameters for {params.chain_id}")
    floor = minimum_bump(FeeQuote.of(tx), params)
    max_fee = min(max(new_fees.max_fee_per_gas, floor.max_fee_per_gas), params.max_fee_per_gas)
    priority = min(max(new_fees.max_priority_fee_per_gas, floor.max_priority_fee_per_gas), max_fee)
    if max_fee < floor.max_fee_per_gas or priority < floor.max_priority_fee_per_gas:
        raise FeeCapReached(f"a replacement of nonce {tx.nonce} needs maxFeePerGas ≥ {floor.max_fee_per_gas} and "
                            f"maxPriorityFeePerGas ≥ {floor.max_priority_fee_per_gas}; the cap is "
                            f"{params.max_fee_per_gas}")
    replacement = dataclasses.replace(tx, max_fee_per_gas=max_fee, max_priority_fee_per_gas=priority)
    try:
        replacement.validate()
    except EthereumError as exc:
        raise EvmPayoutError(str(exc)) from None
    return replacement


def plan_gap_fill(nonce: int, fees: FeeQuote, params: EvmPayoutParams, custody: CustodyAddress) -> Eip1559Transaction:
    """A 0-value transfer from the custody address to itself at ``nonce``: it consumes a nonce whose
    purpose was cancelled, so the transactions queued behind it can confirm, and moves no value."""
    return _transfer(params, nonce, _capped(fees, params), _custody_bytes(custody, params), 0)


def plan_sweep(deposit_address: str | bytes, balance: int, nonce: int, fees: FeeQuote, params: EvmPayoutParams,
               custody: CustodyAddress) -> Eip1559Transaction:
    """Move a deposit address's ``balance`` to the custody address, keeping back the worst-case gas
    (``gas_limit × maxFeePerGas``; what gas does not use stays at the deposit address for a later
    sweep). Raises :class:`NothingToSweep` when nothing would arrive."""
    source = _address(deposit_address, "deposit address")
    to = _custody_bytes(custody, params)
    if source == to:
        raise EvmPayoutError("a sweep's source is the custody address itself")
    capped = _capped(fees, params)
    value = _uint(balance, "balance") - params.gas_limit * capped.max_fee_per_gas
    if value <= 0:
        raise NothingToSweep(f"balance {balance} does not exceed the sweep's worst-case gas "
                             f"{params.gas_limit * capped.max_fee_per_gas}")
    return _transfer(params, nonce, capped, to, value)


# ------------------------------------------------------------------------- signed transactions


@dataclass(frozen=True)
class DecodedTransaction:
    """A signed type-2 transaction taken apart: what it does, who signed it, its hash."""

    tx: Eip1559Transaction
    sender: bytes
    hash: bytes


def _rlp_int(item: Any, what: str) -> int:
    if not isinstance(item, bytes):
        raise EvmPayoutError(f"{what} is not an RLP string")
    try:
        return int(big_endian_int.deserialize(item))
    except rlp.exceptions.DeserializationError:
        raise EvmPayoutError(f"{what} is not a minimal big-endian integer") from None


def decode_signed_transaction(raw: bytes) -> DecodedTransaction:
    """Parse ``0x02 || rlp([...])`` strictly (canonical encoding only, low-S, recovery parity 0/1) and
    recover the sender, so the ledger can refuse a transaction from another account or nonce."""
    if not isinstance(raw, bytes) or len(raw) < 2 or raw[0] != 0x02:
        raise EvmPayoutError("not a type-2 (EIP-1559) signed transaction")
    try:
        items = rlp.decode(raw[1:])
    except rlp.exceptions.DecodingError:
        raise EvmPayoutError("signed transaction is not valid RLP") from None
    if not isinstance(items, list) or len(items) != 12:
        raise EvmPayoutError("a signed type-2 transaction has 12 fields")
    names = ("chain_id", "nonce", "max_priority_fee_per_gas", "max_fee_per_gas", "gas")
    numbers = {name: _rlp_int(items[i], name) for i, name in enumerate(names)}
    to_item, value_item, data, access_item = items[5:9]
    if not isinstance(to_item, bytes) or len(to_item) not in (0, 20):
        raise EvmPayoutError("to must be empty or 20 bytes")
    if not isinstance(data, bytes) or not isinstance(access_item, list):
        raise EvmPayoutError("data must be a string and the access list a list")
    entries = []
    for entry in access_item:
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], bytes) or len(entry[0]) != 20
                or not isinstance(entry[1], list) or not all(isinstance(k, bytes) and len(k) == 32 for k in entry[1])):
            raise EvmPayoutError("malformed access list entry (20-byte address, 32-byte storage keys)")
        entries.append(AccessListEntry(entry[0], tuple(entry[1])))
    y_parity, r, s = (_rlp_int(items[9], "y_parity"), _rlp_int(items[10], "r"), _rlp_int(items[11], "s"))
    if y_parity not in (0, 1) or not 0 < r < SECP256K1_N or not 0 < s <= SECP256K1_N // 2:
        raise EvmPayoutError("signature values out of range (or not low-S)")
    try:
        tx = Eip1559Transaction.create(**numbers, to=to_item or None, value=_rlp_int(value_item, "value"),
                                       data=data, access_list=entries)
    except EthereumError as exc:
        raise EvmPayoutError(str(exc)) from None
    if tx.encode_signed(y_parity, r, s) != raw:
        raise EvmPayoutError("signed transaction is not in canonical encoding")
    compact = r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([y_parity])
    try:
        public = PublicKey.from_signature_and_message(compact, tx.signing_hash(), hasher=None)
    except Exception:  # libsecp256k1 refuses some (r, parity) pairs outright: no valid sender
        raise EvmPayoutError("no sender can be recovered from the signature") from None
    sender = keccak256(public.format(compressed=False)[1:])[12:]
    return DecodedTransaction(tx, sender, keccak256(raw))


# --------------------------------------------------------------------------------- nonce ledger


@dataclass(frozen=True)
class ArchivedTransaction:
    """One signed variant of a nonce, kept until the nonce is final so it can be re-broadcast."""

    raw: bytes
    signed_at: int
    decoded: DecodedTransaction = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoded", decode_signed_transaction(self.raw))


@dataclass(frozen=True)
class NonceSlot:
    """A nonce handed out and not yet final: its owner and every signed variant (oldest first)."""

    nonce: int
    owner: str  # a purpose id, or GAP_FILL
    signed: tuple[ArchivedTransaction, ...] = ()

    @property
    def latest(self) -> ArchivedTransaction | None:
        """The variant to broadcast: the highest maxFeePerGas (the one a mempool keeps), latest on a tie."""
        if not self.signed:
            return None
        return max(reversed(self.signed), key=lambda a: a.decoded.tx.max_fee_per_gas)


@dataclass(frozen=True)
class Rebroadcast:
    """The nonce's signed transaction is not in the endpoint's mempool: send ``raw`` again."""

    nonce: int
    owner: str
    raw: bytes


@dataclass(frozen=True)
class Replace:
    """The nonce's transaction is unconfirmed past ``stuck_after``: sign ``plan_replacement(current, …)``
    for the same owner (a payout's burn, or GAP_FILL) and record it with :meth:`NonceManager.record_signed`."""

    nonce: int
    owner: str
    current: Eip1559Transaction


@dataclass(frozen=True)
class FillGap:
    """The nonce's purpose was cancelled before it was signed: sign ``plan_gap_fill(nonce, …)`` and
    record it as ``GAP_FILL``."""

    nonce: int


@dataclass(frozen=True)
class Settled:
    """The nonce is final on chain. ``tx_hashes`` are the variants this ledger archived for it: the
    integrator checks which one has a receipt. If none does, another transaction consumed the nonce
    and ``owner`` is not done (for a payout: call :meth:`NonceManager.reassign` once the chain shows
    the consuming transaction does not pay that burn)."""

    nonce: int
    owner: str
    tx_hashes: tuple[bytes, ...]


NonceAction = Rebroadcast | Replace | FillGap | Settled


def _check_purpose(purpose_id: Any) -> str:
    if not isinstance(purpose_id, str) or not _PURPOSE.fullmatch(purpose_id):
        raise NonceError("a purpose id is 1 to 128 printable ASCII characters without spaces")
    if purpose_id == GAP_FILL:
        raise NonceError(f"{GAP_FILL!r} is reserved for gap fillers")
    return purpose_id


class NonceManager:
    """The nonce ledger of one sending account (the custody address, or one deposit address).

    Invariants, checked on every load: every nonce in ``[confirmed_count, next_nonce)`` has exactly
    one slot; a purpose owns at most one nonce, live or settled; a nonce is handed out once and
    never again — a cancelled purpose's nonce is filled by a gap filler, not given to the next payout
    (participants that saw it proposed for one purpose would refuse it for another).

    The integrator persists :meth:`to_dict` in the same database transaction as the step that changed
    it (an assignment, a signature, an observation), and calls :meth:`assign` before every proposal
    instead of caching nonces, so a crash at any point resumes from a consistent ledger.
    """

    def __init__(self, account: str | bytes, confirmed_count: int) -> None:
        self._account = _address(account, "account")
        self._confirmed = _uint(confirmed_count, "confirmed_count", 2**64 - 1)
        self._next = self._confirmed
        self._slots: dict[int, NonceSlot] = {}
        self._live: dict[str, int] = {}  # purpose → live nonce
        self._settled: dict[str, int] = {}  # purpose → final nonce
        self._cancelled: set[str] = set()

    # -- reading

    @property
    def account(self) -> bytes:
        return self._account

    @property
    def confirmed_count(self) -> int:
        return self._confirmed

    @property
    def next_nonce(self) -> int:
        return self._next

    def nonce_of(self, purpose_id: str) -> int | None:
        """The nonce ``purpose_id`` holds (live or final), or None."""
        return self._live.get(purpose_id, self._settled.get(purpose_id))

    def slot(self, nonce: int) -> NonceSlot | None:
        return self._slots.get(nonce)

    def slots(self) -> tuple[NonceSlot, ...]:
        return tuple(self._slots[n] for n in sorted(self._slots))

    def __repr__(self) -> str:
        return (f"NonceManager({_hex_address(self._account)}, confirmed={self._confirmed}, next={self._next}, "
                f"live={len(self._slots)}, settled={len(self._settled)})")

    # -- handing out

    def assign(self, purpose_id: str) -> int:
        """The nonce of ``purpose_id``: the one it already holds (live or final), else the next one."""
        purpose_id = _check_purpose(purpose_id)
        held = self.nonce_of(purpose_id)
        if held is not None:
            return held
        if purpose_id in self._cancelled:
            raise NonceError(f"{purpose_id} was cancelled; it never gets a nonce again")
        nonce = self._next
        self._slots[nonce] = NonceSlot(nonce, purpose_id)
        self._live[purpose_id] = nonce
        self._next = nonce + 1
        return nonce

    def cancel(self, purpose_id: str) -> int:
        """``purpose_id`` will not be signed (e.g. its burn is refunded instead): its nonce becomes a
        gap to fill. Only for a purpose never proposed for signing — once proposed, a payout keeps its
        nonce and is replaced, never cancelled. Returns the freed nonce."""
        purpose_id = _check_purpose(purpose_id)
        nonce = self._live.get(purpose_id)
        if nonce is None:
            raise NonceError(f"{purpose_id} holds no live nonce" +
                             (" (its nonce is already final)" if purpose_id in self._settled else ""))
        if self._slots[nonce].signed:
            raise NonceError(f"{purpose_id} is signed at nonce {nonce}; replace it, never cancel it")
        self._slots[nonce] = NonceSlot(nonce, GAP_FILL)
        del self._live[purpose_id]
        self._cancelled.add(purpose_id)
        return nonce

    def adopt(self, purpose_id: str, nonce: int) -> str | None:
        """This node co-signed ``purpose_id`` at ``nonce`` for another coordinator: make the ledger agree,
        so that if it coordinates next it proposes that nonce and never hands it to anything else.

        An unsigned assignment in the way gives way — this node did not co-sign it there, or it would
        have refused the other proposal — and is returned (its next :meth:`assign` gets a fresh nonce).
        A purpose that moves leaves a gap to fill; nonces skipped to reach ``nonce`` become gaps too.
        """
        purpose_id = _check_purpose(purpose_id)
        nonce = _uint(nonce, "nonce", 2**64 - 2)
        held = self.nonce_of(purpose_id)
        if held == nonce:
            return None
        if held is not None and (held < self._confirmed or self._slots[held].signed):
            raise NonceError(f"{purpose_id} is already signed or final at nonce {held}, not {nonce}")
        displaced: str | None = None
        if nonce < self._confirmed:
            if any(n == nonce for n in self._settled.values()):
                raise NonceError(f"final nonce {nonce} already belongs to another purpose")
        elif nonce < self._next:
            occupant = self._slots[nonce]
            if occupant.signed:
                raise NonceError(f"nonce {nonce} is signed for {occupant.owner}")
            displaced = None if occupant.owner == GAP_FILL else occupant.owner
        # every check passed: mutate. A co-signature is a fact, whatever this ledger planned for the purpose.
        self._cancelled.discard(purpose_id)
        if held is not None:
            self._slots[held] = NonceSlot(held, GAP_FILL)
            del self._live[purpose_id]
        if nonce < self._confirmed:
            self._settled[purpose_id] = nonce
            return None
        if displaced is not None:
            del self._live[displaced]
        for gap in range(self._next, nonce):
            self._slots[gap] = NonceSlot(gap, GAP_FILL)
        self._slots[nonce] = NonceSlot(nonce, purpose_id)
        self._live[purpose_id] = nonce
        self._next = max(self._next, nonce + 1)
        return displaced

    def reassign(self, purpose_id: str) -> int:
        """A fresh nonce for a purpose whose final nonce was consumed by a transaction that is not its
        own (the chain shows it at final depth): the only way a purpose ever changes nonce after signing."""
        purpose_id = _check_purpose(purpose_id)
        if purpose_id not in self._settled:
            raise NonceError(f"{purpose_id} has no final nonce; only a consumed nonce can be given up")
        del self._settled[purpose_id]
        return self.assign(purpose_id)

    # -- signing and the chain

    def record_signed(self, nonce: int, purpose_id: str, raw: bytes, now: int) -> bytes:
        """Archive a signed variant of ``nonce`` (the payout, a replacement, or a gap filler with
        ``purpose_id = GAP_FILL``); returns its hash. Refuses a transaction from another account, at
        another nonce, or paying something else than the variants already archived for the nonce."""
        nonce = _uint(nonce, "nonce", 2**64 - 2)
        now = _uint(now, "now")
        slot = self._slots.get(nonce)
        if slot is None:
            raise NonceError(f"nonce {nonce} is not live (final below {self._confirmed}, or never handed out)")
        if purpose_id != slot.owner:
            raise NonceError(f"nonce {nonce} belongs to {slot.owner}, not {purpose_id}")
        decoded = decode_signed_transaction(raw)
        if decoded.sender != self._account:
            raise NonceError(f"transaction is from {_hex_address(decoded.sender)}, not {_hex_address(self._account)}")
        if decoded.tx.nonce != nonce:
            raise NonceError(f"transaction has nonce {decoded.tx.nonce}, not {nonce}")
        if slot.signed:
            first = slot.signed[0].decoded.tx
            differs = _differences(first, decoded.tx, ("chain_id", "gas", "to", "value", "data", "access_list"))
            if differs:
                raise NonceError(f"nonce {nonce} was signed paying something else: " + "; ".join(differs))
            if any(a.raw == raw for a in slot.signed):
                return decoded.hash
        self._slots[nonce] = NonceSlot(nonce, slot.owner, (*slot.signed, ArchivedTransaction(raw, now)))
        return decoded.hash

    def latest_transaction(self, nonce: int) -> Eip1559Transaction | None:
        """The unsigned form of the variant to broadcast at ``nonce`` (what a replacement starts from)."""
        slot = self._slots.get(nonce)
        latest = None if slot is None else slot.latest
        return None if latest is None else latest.decoded.tx

    def observe(self, confirmed_count: int, pending_count: int, now: int, *,
                stuck_after: int) -> tuple[NonceAction, ...]:
        """Take the account's nonce counts and the time; say what to do.

        ``confirmed_count``: ``eth_getTransactionCount(account, block)`` at the bridge's final depth —
        it settles nonces, so a reorg cannot un-settle one (a decrease is a reorg deeper than the depth,
        refused with :class:`NonceError`: pause and report). ``pending_count``: the endpoint's
        ``eth_getTransactionCount(account, "pending")``; a signed nonce at or above it is not in the
        mempool and is re-broadcast. A signed nonce whose latest variant is ``stuck_after`` seconds old
        is replaced, unless an unsigned nonce below it blocks it anyway (bumping fees would not help).
        """
        confirmed_count = _uint(confirmed_count, "confirmed_count", 2**64 - 1)
        pending_count = _uint(pending_count, "pending_count", 2**64 - 1)
        now = _uint(now, "now")
        stuck_after = _uint(stuck_after, "stuck_after")
        if confirmed_count < self._confirmed:
            raise NonceError(f"final nonce count went down from {self._confirmed} to {confirmed_count}: a reorg "
                             "deeper than the final depth")
        actions: list[NonceAction] = []
        for nonce in sorted(n for n in self._slots if n < confirmed_count):
            slot = self._slots.pop(nonce)
            actions.append(Settled(nonce, slot.owner, tuple(a.decoded.hash for a in slot.signed)))
            if slot.owner != GAP_FILL:
                del self._live[slot.owner]
                self._settled[slot.owner] = nonce
        self._confirmed = confirmed_count
        self._next = max(self._next, confirmed_count)  # nonces consumed by transactions this ledger never saw
        in_pool_below = max(pending_count, confirmed_count)
        blocked = False
        for nonce in sorted(self._slots):
            slot = self._slots[nonce]
            latest = slot.latest
            if latest is None:
                if slot.owner == GAP_FILL:
                    actions.append(FillGap(nonce))
                blocked = True
                continue
            if nonce >= in_pool_below:
                actions.append(Rebroadcast(nonce, slot.owner, latest.raw))
            if not blocked and now - latest.signed_at >= stuck_after:
                actions.append(Replace(nonce, slot.owner, latest.decoded.tx))
        return tuple(actions)

    # -- persistence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; :meth:`from_dict` restores exactly this ledger."""
        return {
            "version": MANAGER_FORMAT_VERSION,
            "account": to_checksum_address(self._account),
            "confirmed_count": self._confirmed,
            "next_nonce": self._next,
            "slots": [{"nonce": s.nonce, "owner": s.owner,
                       "signed": [{"raw": "0x" + a.raw.hex(), "signed_at": a.signed_at} for a in s.signed]}
                      for s in self.slots()],
            "settled": dict(sorted(self._settled.items())),
            "cancelled": sorted(self._cancelled),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NonceManager:
        """Load a stored ledger, re-checking every invariant (a corrupt row is refused, not half-used)."""
        if not isinstance(data, Mapping):
            raise NonceError("a stored nonce ledger must be a mapping")
        if data.get("version") != MANAGER_FORMAT_VERSION:
            raise NonceError(f"unknown nonce ledger version {data.get('version')!r}")
        try:
            manager = cls(data["account"], data["confirmed_count"])
            manager._next = _uint(data["next_nonce"], "next_nonce", 2**64 - 1)
            slots, settled, cancelled = data["slots"], data["settled"], data["cancelled"]
        except KeyError as exc:
            raise NonceError(f"stored nonce ledger has no {exc.args[0]!r}") from None
        except EvmPayoutError as exc:
            raise NonceError(f"stored nonce ledger: {exc}") from None
        if manager._next < manager._confirmed:
            raise NonceError("stored nonce ledger: next_nonce below confirmed_count")
        if not isinstance(slots, Sequence) or not isinstance(settled, Mapping) or not isinstance(cancelled, Sequence):
            raise NonceError("stored nonce ledger: slots, settled and cancelled have the wrong types")
        try:
            for entry in slots:
                manager._load_slot(entry)
            for purpose, nonce in settled.items():
                owner = _check_purpose(purpose)
                if _uint(nonce, "settled nonce") >= manager._confirmed or owner in manager._live:
                    raise NonceError(f"settled {owner} at nonce {nonce} is not below the confirmed count or is live")
                manager._settled[owner] = nonce
            if len(set(manager._settled.values())) != len(manager._settled):
                raise NonceError("two settled purposes share a nonce")
            manager._cancelled = {_check_purpose(p) for p in cancelled}
        except (EvmPayoutError, TypeError, KeyError) as exc:
            raise NonceError(f"stored nonce ledger: {exc}") from None
        if set(manager._slots) != set(range(manager._confirmed, manager._next)):
            raise NonceError("stored nonce ledger: the live slots are not exactly [confirmed_count, next_nonce)")
        return manager

    def _load_slot(self, entry: Any) -> None:
        nonce = _uint(entry["nonce"], "slot nonce", 2**64 - 2)
        owner = entry["owner"]
        if owner != GAP_FILL:
            owner = _check_purpose(owner)
            if owner in self._live:
                raise NonceError(f"{owner} holds two nonces")
            self._live[owner] = nonce
        if nonce in self._slots:
            raise NonceError(f"two slots for nonce {nonce}")
        self._slots[nonce] = NonceSlot(nonce, owner)
        for variant in entry["signed"]:
            raw_hex = variant["raw"]
            if not isinstance(raw_hex, str) or not raw_hex.startswith("0x"):
                raise NonceError("an archived transaction must be 0x-hex")
            try:
                raw = bytes.fromhex(raw_hex[2:])
            except ValueError:
                raise NonceError("an archived transaction is not hex") from None
            self.record_signed(nonce, owner, raw, variant["signed_at"])


# ------------------------------------------------------------------------ the participant's check


@dataclass(frozen=True)
class DepositAccount:
    """A deposit address this node derived and registered, with what the chain says it holds."""

    address: bytes
    path: tuple[int, ...]
    balance: int


class EvmPayoutView(Protocol):
    """What this node's own chain connection and records answer. Implementations live at the edge
    (the integrator's runtime); every method is a read, none may block on other nodes."""

    def burn(self, burn_id: bytes) -> EvmBurn | None:
        """The fpETH burn with this id on the destination chain, or None if this node has not seen it."""
        ...

    def has_code(self, address: bytes) -> bool:
        """Whether ``eth_getCode(address)`` on the source chain is non-empty."""
        ...

    def fee_estimate(self) -> FeeQuote:
        """This node's own EIP-1559 fee estimate for the source chain."""
        ...

    def confirmed_nonce(self, account: bytes) -> int:
        """``eth_getTransactionCount(account, "latest")`` on the source chain."""
        ...

    def transaction_at_nonce(self, account: bytes, nonce: int) -> Eip1559Transaction | None:
        """The transaction from ``account`` with ``nonce`` in the best chain at the bridge's final depth
        (e.g. found through the archived hashes' receipts and :func:`decode_signed_transaction`), or
        None when none is known there yet."""
        ...

    def cosigned_payout_nonce(self, burn_id: bytes) -> int | None:
        """The custody nonce at which this node co-signed payouts of this burn, or None."""
        ...

    def cosigned_at_nonce(self, account: bytes, nonce: int) -> str | None:
        """The purpose (``payout_purpose(burn_id)`` or ``GAP_FILL``) this node co-signed at ``nonce`` of
        ``account``, or None."""
        ...

    def has_later_transaction(self, account: bytes, nonce: int) -> bool:
        """Whether this node co-signed, or its endpoint's mempool holds, a transaction from ``account``
        at a nonce above ``nonce`` (so ``nonce`` is a gap that keeps it from confirming)."""
        ...

    def deposit_account(self, address: bytes) -> DepositAccount | None:
        """The deposit address's derivation path and latest balance, or None if this node does not
        know it as one of its deposit addresses on the source chain."""
        ...


@dataclass(frozen=True)
class PayoutProposal:
    """A sign request for a burn's payout (or a replacement of it). ``path`` and ``digest`` are what
    the sign session will sign — taken from the session, not from the coordinator's description."""

    burn_id: bytes
    tx: Eip1559Transaction
    path: str
    digest: bytes


@dataclass(frozen=True)
class GapFillProposal:
    tx: Eip1559Transaction
    path: str
    digest: bytes


@dataclass(frozen=True)
class SweepProposal:
    deposit_address: bytes
    tx: Eip1559Transaction
    path: str
    digest: bytes


def _refuse(code: str, reason: str) -> Verdict:
    return Verdict(ok=False, reason=reason, code=code)


_OK = Verdict(ok=True, reason="ok", code="ok")


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return _hex_address(value) if len(value) == 20 else "0x" + value.hex()
    if value is None:
        return "none"
    return repr(value)


def _differences(expected: Eip1559Transaction, proposed: Eip1559Transaction, fields: Sequence[str]) -> list[str]:
    return [f"{name} is {_show(getattr(proposed, name))}, rebuilt {_show(getattr(expected, name))}"
            for name in fields if getattr(proposed, name) != getattr(expected, name)]


_SHAPE = ("chain_id", "gas", "to", "value", "data", "access_list")


def _envelope(proposal: Any, kind: type) -> Verdict | None:
    """The checks every proposal shares: its type, a valid transaction, the digest it will sign."""
    if not isinstance(proposal, kind):
        return _refuse("malformed", f"not a {kind.__name__}")
    tx = proposal.tx
    if not isinstance(tx, Eip1559Transaction):
        return _refuse("malformed", "the transaction is not an Eip1559Transaction")
    try:
        tx.validate()
        signing_hash = tx.signing_hash()
    except EthereumError as exc:
        return _refuse("malformed", f"invalid transaction: {exc}")
    if proposal.digest != signing_hash:
        return _refuse("digest_mismatch", f"digest {_show(proposal.digest)} is not the transaction's signing hash "
                                          f"{_show(signing_hash)}")
    return None


def _path_verdict(path: Any, sender_path: tuple[int, ...]) -> Verdict | None:
    """The session signs at the sender's path, so the signature can only be the sender's."""
    try:
        signing_path = parse_path(path)
    except Exception:  # InvalidInput or a wrong type: either way not a path this node signs at
        return _refuse("wrong_sender", f"signing path {path!r} is not a derivation path")
    if signing_path != sender_path:
        return _refuse("wrong_sender", f"signing path {path!r} is not the sender's path "
                                       f"m/{'/'.join(map(str, sender_path))}")
    return None


def _fee_verdict(tx: Eip1559Transaction, own: FeeQuote, params: EvmPayoutParams) -> Verdict | None:
    fee = tx.max_fee_per_gas
    if fee > params.max_fee_per_gas:
        return _refuse("fee_above_cap", f"maxFeePerGas {fee} is above the cap {params.max_fee_per_gas}")
    low = min(Fraction(own.max_fee_per_gas) / params.fee_band, Fraction(params.max_fee_per_gas))
    high = own.max_fee_per_gas * params.fee_band
    if not low <= fee <= high:
        return _refuse("fee_out_of_band", f"maxFeePerGas {fee} is outside [{_ceil(low)}, {math.floor(high)}] "
                                          f"around this node's estimate {own.max_fee_per_gas}")
    return None


def _nonce_window(nonce: int, confirmed: int, params: EvmPayoutParams) -> Verdict | None:
    if nonce < confirmed:
        return _refuse("stale_nonce", f"nonce {nonce} is below the account's confirmed count {confirmed}")
    if nonce >= confirmed + params.max_nonce_ahead:
        return _refuse("nonce_too_far", f"nonce {nonce} is {params.max_nonce_ahead} or more above the confirmed "
                                        f"count {confirmed}")
    return None


def _pays(tx: Eip1559Transaction | None, destination: bytes, value: int) -> bool:
    return tx is not None and tx.to == destination and tx.value == value and not tx.data


def check_eth_payout(proposal: PayoutProposal, view: EvmPayoutView, params: EvmPayoutParams,
                     custody: CustodyAddress) -> Verdict:
    """Whether this node co-signs ``proposal``: only the transaction it rebuilds itself from the burn's
    facts, at fees it finds reasonable, at the one nonce this burn may ever use. Facts are checked
    before this node's records so a refusal's reason does not depend on timing.

    On ``ok`` the integrator records, atomically with the co-signature: the burn's nonce
    (``cosigned_payout_nonce``) and ``payout_purpose(burn_id)`` at that custody nonce (``cosigned_at_nonce``).
    """
    try:
        custody_account = _custody_bytes(custody, params)
    except EvmPayoutError as exc:
        return _refuse("misconfigured", str(exc))
    refused = _envelope(proposal, PayoutProposal) or _path_verdict(proposal.path, custody.path)
    if refused:
        return refused
    tx = proposal.tx
    if not isinstance(proposal.burn_id, bytes) or len(proposal.burn_id) != 32:
        return _refuse("malformed", "burn id must be 32 bytes")
    burn_hex = "0x" + proposal.burn_id.hex()
    burn = view.burn(proposal.burn_id)
    if burn is None:
        return _refuse("unknown_burn", f"this node has not seen burn {burn_hex}")
    if burn.refunded:
        return _refuse("burn_refunded", f"burn {burn_hex} is refunded (or a refund was co-signed)")
    if not burn.final:
        return _refuse("burn_not_final", f"burn {burn_hex} is not at the required depth yet")
    if burn.payout_confirmed:
        return _refuse("burn_already_paid", f"a payout of burn {burn_hex} is already confirmed")
    try:
        payout_value(burn.amount, params)
    except BelowMinimum as exc:
        return _refuse("below_minimum", str(exc))
    try:
        has_code = len(burn.destination) == 20 and view.has_code(burn.destination)
        expected = plan_eth_payout(burn, tx.nonce, FeeQuote.of(tx), params, custody, destination_has_code=has_code)
    except UnpayableDestination as exc:
        return _refuse("unpayable", str(exc))
    except EvmPayoutError as exc:
        return _refuse("malformed", str(exc))
    differs = _differences(expected, tx, _SHAPE)
    if differs:
        return _refuse("rebuilt_different", "; ".join(differs))
    refused = _fee_verdict(tx, view.fee_estimate(), params)
    if refused:
        return refused

    # The nonce rule: one nonce per burn, one burn per nonce.
    confirmed = view.confirmed_nonce(custody_account)
    earlier = view.cosigned_payout_nonce(proposal.burn_id)
    consumed_by = None
    if earlier is not None and earlier < confirmed:
        consumed_by = view.transaction_at_nonce(custody_account, earlier)
        if _pays(consumed_by, expected.to, expected.value):
            return _refuse("burn_already_paid", f"nonce {earlier}, where this node co-signed burn {burn_hex}, "
                                                "was consumed by a transaction paying it")
    if earlier is not None and earlier != tx.nonce and consumed_by is None:
        return _refuse("second_payout", f"this node co-signed burn {burn_hex} at nonce {earlier}; a payout at "
                                        f"nonce {tx.nonce} could confirm as well (nonce {earlier} is not shown "
                                        "consumed, at final depth, by another transaction)")
    refused = _nonce_window(tx.nonce, confirmed, params)
    if refused:
        return refused
    owner = view.cosigned_at_nonce(custody_account, tx.nonce)
    if owner is not None and owner != payout_purpose(proposal.burn_id):
        return _refuse("nonce_in_use", f"this node co-signed nonce {tx.nonce} for {owner}")
    return _OK


def check_gap_fill(proposal: GapFillProposal, view: EvmPayoutView, params: EvmPayoutParams,
                   custody: CustodyAddress) -> Verdict:
    """Whether this node co-signs a gap filler: a 0-value custody self-transfer, at a nonce that holds
    up a later transaction and that this node never co-signed for a burn. On ``ok`` the integrator
    records ``GAP_FILL`` at that custody nonce."""
    try:
        custody_account = _custody_bytes(custody, params)
    except EvmPayoutError as exc:
        return _refuse("misconfigured", str(exc))
    refused = _envelope(proposal, GapFillProposal) or _path_verdict(proposal.path, custody.path)
    if refused:
        return refused
    tx = proposal.tx
    try:
        expected = plan_gap_fill(tx.nonce, FeeQuote.of(tx), params, custody)
    except EvmPayoutError as exc:
        return _refuse("malformed", str(exc))
    differs = _differences(expected, tx, _SHAPE)
    if differs:
        return _refuse("rebuilt_different", "; ".join(differs))
    refused = _fee_verdict(tx, view.fee_estimate(), params) or _nonce_window(
        tx.nonce, view.confirmed_nonce(custody_account), params)
    if refused:
        return refused
    owner = view.cosigned_at_nonce(custody_account, tx.nonce)
    if owner is not None and owner != GAP_FILL:
        return _refuse("nonce_in_use", f"this node co-signed nonce {tx.nonce} for {owner}")
    if owner is None and not view.has_later_transaction(custody_account, tx.nonce):
        return _refuse("not_a_gap", f"no later transaction of the custody address waits on nonce {tx.nonce}")
    return _OK


def check_sweep(proposal: SweepProposal, view: EvmPayoutView, params: EvmPayoutParams,
                custody: CustodyAddress) -> Verdict:
    """Whether this node co-signs a sweep: from a deposit address it knows, signed at that address's
    path, everything to the custody address, no more than the balance after worst-case gas. A value
    below the full sweep is accepted (a deposit arriving between two views only leaves more behind)."""
    try:
        custody_account = _custody_bytes(custody, params)
    except EvmPayoutError as exc:
        return _refuse("misconfigured", str(exc))
    refused = _envelope(proposal, SweepProposal)
    if refused:
        return refused
    tx = proposal.tx
    if not isinstance(proposal.deposit_address, bytes) or len(proposal.deposit_address) != 20:
        return _refuse("malformed", "deposit address must be 20 bytes")
    deposit = view.deposit_account(proposal.deposit_address)
    if deposit is None:
        return _refuse("unknown_deposit_address", f"{_show(proposal.deposit_address)} is not a deposit address of "
                                                  "this node")
    refused = _path_verdict(proposal.path, deposit.path)
    if refused:
        return refused
    try:
        shape = _transfer(params, tx.nonce, FeeQuote.of(tx), custody_account, tx.value)
    except EvmPayoutError as exc:
        return _refuse("malformed", str(exc))
    differs = _differences(shape, tx, _SHAPE)
    if differs:
        return _refuse("rebuilt_different", "; ".join(differs))
    worst_gas = params.gas_limit * tx.max_fee_per_gas
    if tx.value == 0 or tx.value + worst_gas > deposit.balance:
        return _refuse("sweep_exceeds_balance", f"value {tx.value} + worst-case gas {worst_gas} must be positive "
                                                f"and within the balance {deposit.balance}")
    return _fee_verdict(tx, view.fee_estimate(), params) or _nonce_window(
        tx.nonce, view.confirmed_nonce(proposal.deposit_address), params) or _OK
