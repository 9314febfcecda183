"""ETH payouts on a source EVM chain: the edge around the pure rules of ``bridge/evm_payouts.py``.

One :class:`EvmPayoutSide` per EVM source chain with withdrawals enabled. The integrator's
``WithdrawalRuntime`` drives it exactly like its Bitcoin code paths, and the node's authorize hook
sends it every :class:`~fusion_prime.bridge.requests.EvmPayoutRequest` (sign-request kind 5):

* **Refund rule** (:meth:`EvmPayoutSide.classify`, identical on every node): a burn is refunded when
  it does not exceed the withdrawal fee, or its destination is not 20 bytes, is the zero address or
  a precompile (≤ 0xffff), is the custody address, or has contract code on the source chain *now*
  (the latest block). Not "at the burn's block": the burn happened on the *destination* chain, so
  there is no source-chain block that is the burn's, and a pruned (non-archive) endpoint cannot
  answer ``eth_getCode`` at old blocks anyway; what decides whether a 21000-gas transfer works is
  the code when it executes, and the participants' check (``check_eth_payout``) asks the same
  question of the same block tag, so the coordinator and its co-signers agree on the rule.
* **Coordinating** (:meth:`~EvmPayoutSide.build`): the burn's nonce comes from the custody
  account's :class:`~fusion_prime.bridge.evm_payouts.NonceManager`, kept in the bridge database's
  ``meta`` table and written in the same database transaction as every step that changes it — so a
  crash anywhere resumes from a consistent ledger and no nonce is handed out twice (Anyswap's loss).
  A burn gets a nonce only once its payout is known to be buildable, so an unpayable burn never
  leaves a hole that holds up every later payout. The transaction is signed at the custody path in
  one sign session whose ``client_request`` is the whole proposal (:class:`EvmProposal`); the
  signature must recover to the custody address before the signed variant is archived
  (``payout_archive``: txid = the transaction hash, inputs = ``["<custody>:<nonce>"]``). A bump
  (``BuildPayout.replaces``) re-signs the same transfer at the same nonce with higher fees, so the
  original and every replacement compete for one nonce and at most one is mined.
* **As a participant** (:meth:`~EvmPayoutSide.authorize`): the proposal is decoded strictly, routed
  to ``check_eth_payout``/``check_gap_fill``/``check_sweep`` over :class:`NodeEvmView` (this node's
  own endpoint and database), and the decision is recorded in the same database transaction as the
  check, one decision at a time: an archive row (role ``cosigned``, keyed ``sighash:<digest>``
  since a participant never sees the final signature, so it cannot know the transaction hash) and a
  ``payout-cosigned``/``payout-refused`` event keyed by burn id. The next proposal for that burn or
  nonce is checked against these rows.
* **Sweeps** (:meth:`~EvmPayoutSide.sweep_due`): a deposit address whose deposit was minted (the
  Gateway's ``Minted`` log, :meth:`~EvmPayoutSide.note_minted`) is swept into custody through a sign
  session at the deposit address's own path. A sweep keeps back gas for the *cap* fee, not for the
  fee it offers, so it can be replaced at any fee up to the cap without exceeding the balance.
* **Upkeep** (:meth:`~EvmPayoutSide.maintain`): each ledger observes the chain — dropped
  transactions are re-broadcast, and at the coordinator nonces whose purpose was cancelled are
  filled by a 0-value custody self-transfer (signed like a payout) and stuck gap fillers and
  sweeps are replaced. Stuck *payouts* are left to the withdrawal machine, which asks for a bump.
* **Payouts of other coordinators** (:meth:`~EvmPayoutSide.found_payouts`): transactions sent from
  the custody address that this node did not build are found block by block, archived (role
  ``found``) and matched to the burns they pay.

Nothing secret passes through here: proposals, transactions and signatures are public, and the
signing key never exists in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import rlp
import trio
from sqlalchemy.dialects import postgresql, sqlite
from web3 import Web3

from fusion_prime.node.logs import log_event
from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.addresses import ethereum_address
from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.hd import derive
from fusion_prime.signer.ethereum import AccessListEntry, Eip1559Transaction, EthereumError

from . import db as dbm
from . import withdrawals
from .chains.evm.adapter import estimate_eip1559_fees
from .config import SourceChain
from .custody import CustodyAddress
from .derivation import DerivationError, deposit_address, path_string
from .evm_payouts import (
    GAP_FILL,
    SECP256K1_N,
    BelowMinimum,
    DepositAccount,
    EvmBurn,
    EvmPayoutError,
    EvmPayoutParams,
    FeeQuote,
    FillGap,
    GapFillProposal,
    NonceError,
    NonceManager,
    NothingToSweep,
    PayoutProposal,
    Rebroadcast,
    Replace,
    Settled,
    SweepProposal,
    UnpayableDestination,
    check_eth_payout,
    check_gap_fill,
    check_sweep,
    decode_signed_transaction,
    payout_destination,
    payout_purpose,
    payout_value,
    plan_eth_payout,
    plan_gap_fill,
    plan_replacement,
    plan_sweep,
)
from .mint_policy import Verdict
from .orders import EVM_NATIVE_VOUT, OrderError, address_bytes, chain_key, evm_chain_id, to_checksum_address
from .requests import EvmPayoutRequest, encode
from .watchers import MintedOutput
from .withdrawals import PayoutFailed, PayoutFound, PayoutSigned, burn_key, payout_id_of

log = logging.getLogger("fusion_prime.bridge.evm_withdrawal")

#: the events and archive roles the Bitcoin side uses too (``withdrawal_runtime``); same strings,
#: so the status API and the refund check see EVM decisions like Bitcoin ones
PAYOUT_COSIGNED = "payout-cosigned"
PAYOUT_REFUSED = "payout-refused"
REFUND_COSIGNED = "refund-cosigned"
ROLE_COORDINATOR, ROLE_COSIGNED, ROLE_FOUND = "coordinator", "cosigned", "found"
#: a participant's archive row is keyed by what it knows before the signature exists
SIGHASH_PREFIX = "sighash:"
LEDGER_META = "evm-nonces:"
SCAN_META = "evm-scan:"
#: a destination's ``eth_getCode`` answer is reused this long (classify runs on the event loop)
CODE_CACHE_SECONDS = 30.0
CODE_CACHE_LIMIT = 10_000
#: blocks searched for custody transactions per :meth:`EvmPayoutSide.found_payouts` call, and how
#: far back a node without a cursor starts
SCAN_BLOCKS_PER_CALL = 500
SCAN_START_BEHIND = 256
#: sweeps signed per :meth:`EvmPayoutSide.sweep_due` call (each is a sign session)
SWEEPS_PER_CALL = 4
#: when the estimator has no history, the fallback max fee gets at most this priority fee (wei)
FALLBACK_PRIORITY_FEE = 10**9
_ACCEPTED_AS_KNOWN = ("already known", "already imported", "known transaction", "alreadyknown")

SignFn = Callable[..., Awaitable[Any]]


class SolvencyFn(Protocol):
    """(burned amount, wei leaving custody, the decision's open database transaction; a
    settlement-account withdrawal's amount as ``account_paid`` instead of ``burned``) -> why the
    asset would be insolvent after it, or None."""

    def __call__(self, burned: int, spent: int, reader: dbm.Reader, *, account_paid: int = 0) -> str | None: ...


class EvmWithdrawalError(ValueError):
    """A configuration or chain answer that this module cannot work with."""


# ---------------------------------------------------------------------------- configuration


def evm_payout_params(chain: SourceChain) -> EvmPayoutParams:
    """The shared payout rules of ``chain`` from its ``[[bridge.chains]]`` withdrawal settings.

    ``max_fee_rate`` is the cap on maxFeePerGas in wei; ``fee_band`` is taken as the decimal the
    operator wrote (``2.0`` → 2, ``1.5`` → 3/2), never as a binary float, so every node computes the
    same band. Raises :class:`EvmWithdrawalError` with the reason when the settings cannot pay
    (e.g. a cap whose worst-case gas exceeds the withdrawal fee)."""
    w = chain.withdrawals
    if w is None:
        raise EvmWithdrawalError(f"{chain.caip2}: withdrawals are not enabled")
    try:
        return EvmPayoutParams(chain_id=evm_chain_id(chain.caip2), withdrawal_fee=w.withdrawal_fee,
                               max_fee_per_gas=w.max_fee_rate, fee_band=Fraction(repr(float(w.fee_band))),
                               stuck_after=w.stuck_after_seconds)
    except (EvmPayoutError, OrderError, ValueError) as exc:
        raise EvmWithdrawalError(f"{chain.caip2}: {exc}") from None


def estimate_fees(w3: Web3, fallback_max_fee: int) -> FeeQuote:
    """This node's own EIP-1559 estimate (``eth_feeHistory``: 2 × next base fee + median tip), or
    the configured fallback when the chain has no usable history (a fresh devnet, a pre-London
    chain, an endpoint without ``eth_feeHistory``). Every node configures the same fallback."""
    try:
        quote = estimate_eip1559_fees(w3)
        return FeeQuote(int(quote.max_fee_per_gas), min(int(quote.max_priority_fee_per_gas),
                                                        int(quote.max_fee_per_gas)))
    except Exception as exc:  # no history, or an endpoint that does not answer it: the fallback
        log_event(log, logging.INFO, "fee estimate unavailable, using the fallback", error=type(exc).__name__)
        return FeeQuote(fallback_max_fee, min(fallback_max_fee, FALLBACK_PRIORITY_FEE))


# --------------------------------------------------------------------------- the proposal


PROPOSAL_VERSION = 1
KIND_PAYOUT = 1
KIND_GAP_FILL = 2
KIND_SWEEP = 3
KIND_NAMES = {KIND_PAYOUT: "payout", KIND_GAP_FILL: "gap-fill", KIND_SWEEP: "sweep"}


class EvmProposalError(ValueError):
    """Bytes that are not a canonical EVM payout proposal."""


def _rlp_uint(item: Any, what: str, limit_bytes: int = 32) -> int:
    if not isinstance(item, bytes):
        raise EvmProposalError(f"{what} is not an RLP string")
    if len(item) > limit_bytes or (item and item[0] == 0):
        raise EvmProposalError(f"{what} is not a minimal big-endian integer of at most {limit_bytes} bytes")
    return int.from_bytes(item, "big")


def decode_unsigned_transaction(payload: bytes) -> Eip1559Transaction:
    """``0x02 || rlp([chain_id, nonce, tip, max_fee, gas, to, value, data, access_list])`` — strictly:
    canonical RLP and integers only, a recipient (no contract creation), and the bytes must be
    exactly what :meth:`Eip1559Transaction.signing_payload` produces for the result."""
    if not isinstance(payload, bytes) or len(payload) < 2 or payload[0] != 0x02:
        raise EvmProposalError("not an unsigned type-2 (EIP-1559) transaction")
    try:
        items = rlp.decode(payload[1:])
    except rlp.exceptions.RLPException:
        raise EvmProposalError("the transaction is not valid RLP") from None
    if not isinstance(items, list) or len(items) != 9:
        raise EvmProposalError("an unsigned type-2 transaction has 9 fields")
    chain_id, nonce = _rlp_uint(items[0], "chain_id", 8), _rlp_uint(items[1], "nonce", 8)
    tip, max_fee = _rlp_uint(items[2], "max_priority_fee_per_gas"), _rlp_uint(items[3], "max_fee_per_gas")
    gas, value = _rlp_uint(items[4], "gas", 8), _rlp_uint(items[6], "value")
    to, data, access = items[5], items[7], items[8]
    if not isinstance(to, bytes) or len(to) != 20:
        raise EvmProposalError("the recipient must be 20 bytes (a payout never creates a contract)")
    if not isinstance(data, bytes) or not isinstance(access, list):
        raise EvmProposalError("data must be a string and the access list a list")
    entries = []
    for entry in access:
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], bytes) or len(entry[0]) != 20
                or not isinstance(entry[1], list) or not all(isinstance(k, bytes) and len(k) == 32 for k in entry[1])):
            raise EvmProposalError("malformed access list entry (20-byte address, 32-byte storage keys)")
        entries.append(AccessListEntry(entry[0], tuple(entry[1])))
    try:
        tx = Eip1559Transaction.create(chain_id=chain_id, nonce=nonce, max_priority_fee_per_gas=tip,
                                       max_fee_per_gas=max_fee, gas=gas, to=to, value=value, data=data,
                                       access_list=entries)
        canonical = tx.signing_payload()
    except EthereumError as exc:
        raise EvmProposalError(f"invalid transaction: {exc}") from None
    if canonical != payload:
        raise EvmProposalError("the transaction is not in canonical encoding")
    return tx


@dataclass(frozen=True)
class EvmProposal:
    """What an EVM sign session is asked to sign, as every participant receives it.

    Encoding (version 1)::

        version(u8 = 1) ‖ kind(u8) ‖ subject ‖ unsigned transaction (0x02 ‖ rlp([...]))

    kind 1 (payout or replacement): subject = burn id (32 bytes); kind 2 (gap filler): no subject;
    kind 3 (sweep): subject = the deposit address (20 bytes). The path and the digest are not in
    here: a participant takes them from the sign session itself, so no description can differ from
    what is actually signed. :meth:`from_bytes` accepts only what :meth:`to_bytes` produces.
    """

    kind: int
    tx: Eip1559Transaction
    burn_id: bytes | None = None
    deposit_address: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in KIND_NAMES:
            raise EvmProposalError(f"unknown EVM proposal kind {self.kind!r}")
        if not isinstance(self.tx, Eip1559Transaction):
            raise EvmProposalError("tx must be an Eip1559Transaction")
        wants_burn, wants_deposit = self.kind == KIND_PAYOUT, self.kind == KIND_SWEEP
        if wants_burn != (self.burn_id is not None) or wants_deposit != (self.deposit_address is not None):
            raise EvmProposalError(f"a {KIND_NAMES[self.kind]} proposal names "
                                   + ("a burn id" if wants_burn else "a deposit address" if wants_deposit
                                      else "neither a burn nor a deposit address"))
        if self.burn_id is not None and (not isinstance(self.burn_id, bytes) or len(self.burn_id) != 32):
            raise EvmProposalError("burn id must be 32 bytes")
        if self.deposit_address is not None and (not isinstance(self.deposit_address, bytes)
                                                 or len(self.deposit_address) != 20):
            raise EvmProposalError("deposit address must be 20 bytes")

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]

    def to_bytes(self) -> bytes:
        subject = self.burn_id or self.deposit_address or b""
        try:
            return bytes([PROPOSAL_VERSION, self.kind]) + subject + self.tx.signing_payload()
        except EthereumError as exc:
            raise EvmProposalError(f"invalid transaction: {exc}") from None

    @classmethod
    def from_bytes(cls, raw: bytes) -> EvmProposal:
        if not isinstance(raw, bytes | bytearray) or len(raw) < 3:
            raise EvmProposalError("EVM proposal too short")
        raw = bytes(raw)
        if raw[0] != PROPOSAL_VERSION:
            raise EvmProposalError(f"unknown EVM proposal version {raw[0]}")
        kind = raw[1]
        if kind not in KIND_NAMES:
            raise EvmProposalError(f"unknown EVM proposal kind {kind}")
        size = {KIND_PAYOUT: 32, KIND_GAP_FILL: 0, KIND_SWEEP: 20}[kind]
        if len(raw) < 2 + size + 2:
            raise EvmProposalError("EVM proposal too short")
        subject, payload = raw[2:2 + size], raw[2 + size:]
        proposal = cls(kind, decode_unsigned_transaction(payload), burn_id=subject if kind == KIND_PAYOUT else None,
                       deposit_address=subject if kind == KIND_SWEEP else None)
        if proposal.to_bytes() != raw:
            raise EvmProposalError("non-canonical EVM proposal")
        return proposal

    def describe(self) -> dict[str, Any]:
        """Public facts for logs and events (no secret exists in a proposal)."""
        tx = self.tx
        out: dict[str, Any] = {"kind": self.kind_name, "chain_id": tx.chain_id, "nonce": tx.nonce,
                               "to": to_checksum_address(tx.to) if tx.to else None, "value": str(tx.value),
                               "max_fee_per_gas": str(tx.max_fee_per_gas),
                               "max_priority_fee_per_gas": str(tx.max_priority_fee_per_gas)}
        if self.burn_id is not None:
            out["burn_id"] = "0x" + self.burn_id.hex()
        if self.deposit_address is not None:
            out["deposit_address"] = to_checksum_address(self.deposit_address)
        return out


def proposal_chain_id(raw: bytes) -> int | None:
    """The chain id an encoded proposal's transaction is for, or None if it does not decode (the
    router uses it to pick the chain's side; the side then refuses the malformed proposal)."""
    try:
        return EvmProposal.from_bytes(raw).tx.chain_id
    except EvmProposalError:
        return None


def assemble_signed(tx: Eip1559Transaction, signature: Any, sender: bytes) -> bytes:
    """The raw signed transaction from a sign session's ``(r, s, recovery_id)``: a high-S answer is
    normalised (``n − s``, parity flipped — the same signature), ``R.x ≥ n`` (recovery id 2 or 3)
    cannot be encoded for Ethereum, and the result must decode strictly and recover to ``sender``
    for exactly ``tx``, or :class:`EvmPayoutError` says why."""
    try:
        r, s, rec = int(signature.r), int(signature.s), int(signature.recovery_id)
    except (AttributeError, TypeError, ValueError):
        raise EvmPayoutError("the sign session's output is not a signature") from None
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N) or rec not in (0, 1, 2, 3):
        raise EvmPayoutError("signature values out of range")
    if s > SECP256K1_N // 2:
        s, rec = SECP256K1_N - s, rec ^ 1
    if rec > 1:
        raise EvmPayoutError("signature has R.x >= n: Ethereum cannot encode it (sign again)")
    raw = tx.encode_signed(rec, r, s)
    decoded = decode_signed_transaction(raw)
    if decoded.sender != sender:
        raise EvmPayoutError(f"signature recovers to {to_checksum_address(decoded.sender)}, "
                             f"not {to_checksum_address(sender)}")
    if decoded.tx != tx:
        raise EvmPayoutError("the signed transaction is not the proposed one")
    return raw


# ------------------------------------------------------------------------------ the records


def _ledger_meta(chain: str, account: bytes) -> str:
    """meta names are at most 64 characters: the chain and account are hashed into the name (the
    stored ledger names its account, which is checked on every load)."""
    return LEDGER_META + hashlib.sha256(f"{chain}|{account.hex()}".encode()).hexdigest()[:48]


def _locked_meta(t: dbm.Transaction, name: str, initial: Callable[[], str]) -> str:
    """A meta value read with a row lock, created from ``initial()`` if absent. On PostgreSQL the
    row is inserted (or found inserted by a concurrent writer) *before* it is locked, so two first
    writers of one ledger queue on its row instead of both starting a ledger; SQLite's write lock
    already serialises them."""
    select = dbm.sa.select(dbm.meta.c.value).where(dbm.meta.c.name == name).with_for_update()
    value = t.conn.scalar(select)
    if value is not None:
        return str(value)
    insert = postgresql.insert if t.conn.dialect.name == "postgresql" else sqlite.insert
    t.conn.execute(insert(dbm.meta).values(name=name, value=initial()).on_conflict_do_nothing())
    return str(t.conn.scalar(select))


def _input_of(account: bytes, nonce: int) -> str:
    return f"{to_checksum_address(account)}:{nonce}"


def _parse_input(text: Any) -> tuple[bytes, int] | None:
    if not isinstance(text, str) or text.count(":") != 1:
        return None
    account, _, nonce = text.partition(":")
    try:
        return address_bytes(account), int(nonce)
    except (OrderError, ValueError):
        return None


def _hash_hex(value: Any) -> str | None:
    """``0x`` + 64 lowercase hex digits, or None for anything else (a participant's sighash key)."""
    if not isinstance(value, str):
        return None
    text = value.lower()
    body = text[2:] if text.startswith("0x") else text
    if len(body) != 64 or any(c not in "0123456789abcdef" for c in body):
        return None
    return "0x" + body


def _raw_bytes(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return bytes.fromhex(value[2:] if value.startswith("0x") else value)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the view


class NodeEvmView:
    """``evm_payouts.EvmPayoutView`` over this node's own endpoint and bridge database.

    Reads go through ``reader`` — inside :meth:`EvmPayoutSide.authorize` that is the decision's own
    write transaction, so the check sees exactly the records its decision is written beside.
    """

    def __init__(self, side: EvmPayoutSide, reader: dbm.Reader) -> None:
        self.side, self.reader = side, reader
        self._rows: list[dict[str, Any]] | None = None

    def _archive(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = self.reader.archived_payouts(self.side.chain.caip2)
        return self._rows

    def _at(self, account: bytes) -> list[tuple[int, dict[str, Any]]]:
        """(nonce, row) of every archived variant from ``account`` (oldest first)."""
        out = []
        for row in self._archive():
            for text in row["inputs"] or ():
                parsed = _parse_input(text)
                if parsed is not None and parsed[0] == account:
                    out.append((parsed[1], row))
        return out

    def burn(self, burn_id: bytes) -> EvmBurn | None:
        row = self.reader.get_withdrawal(burn_id)
        if row is None:
            # a settlement-account withdrawal: the row this node wrote from its own ledger replica
            # (whether the replica still has it pending is checked before, by the gate's hook)
            row = self.reader.get_account_withdrawal(burn_id)
        if row is None or row["asset"].lower() != self.side.asset.lower() \
                or row["source_chain"] != self.side.chain.caip2:
            return None
        refunded = row["state"] in (withdrawals.REFUND_SIGNED, withdrawals.REFUNDED, withdrawals.RETURNING,
                                    withdrawals.RETURNED) or any(
            e.event == REFUND_COSIGNED for e in self.reader.events(burn_id))
        try:
            destination = bytes.fromhex(row["destination"])
            return EvmBurn(burn_id, int(row["amount"]), destination, final=True, refunded=refunded,
                           payout_confirmed=row["state"] == withdrawals.CONFIRMED)
        except (ValueError, EvmPayoutError):
            return None

    def has_code(self, address: bytes) -> bool:
        return self.side.has_code(address)

    def fee_estimate(self) -> FeeQuote:
        return self.side.fee_estimate()

    def confirmed_nonce(self, account: bytes) -> int:
        return int(self.side.w3.eth.get_transaction_count(Web3.to_checksum_address(account), "latest"))

    def transaction_at_nonce(self, account: bytes, nonce: int) -> Eip1559Transaction | None:
        for n, row in self._at(account):
            raw = _raw_bytes(row["raw"])
            if n != nonce or raw is None:
                continue
            try:
                decoded = decode_signed_transaction(raw)
            except EvmPayoutError:
                continue
            if decoded.sender != account or decoded.tx.nonce != nonce:
                continue
            depth = self.side.depths(["0x" + decoded.hash.hex()], require_success=False)[0]
            if depth is not None and depth >= self.side.confirmations:
                return decoded.tx
        return None

    def cosigned_payout_nonce(self, burn_id: bytes) -> int | None:
        burn_hex = "0x" + burn_id.hex()
        found = None
        for nonce, row in self._at(self.side.custody_account):
            if row["role"] == ROLE_COSIGNED and burn_hex in (row["burn_ids"] or ()):
                found = nonce  # the latest: a burn moves nonce only once its first nonce is consumed
        return found

    def cosigned_at_nonce(self, account: bytes, nonce: int) -> str | None:
        for n, row in self._at(account):
            if n != nonce or row["role"] != ROLE_COSIGNED:
                continue
            ids = row["burn_ids"] or []
            if ids:
                try:
                    return payout_purpose(burn_key(ids[0]))
                except ValueError:
                    continue
            return GAP_FILL
        return None

    def has_later_transaction(self, account: bytes, nonce: int) -> bool:
        if any(n > nonce for n, row in self._at(account) if row["role"] in (ROLE_COSIGNED, ROLE_COORDINATOR)):
            return True
        return self.side.pool_has_nonce_above(account, nonce)

    def deposit_account(self, address: bytes) -> DepositAccount | None:
        path = self.side.deposit_path(address, self.reader)
        if path is None:
            return None
        balance = int(self.side.w3.eth.get_balance(Web3.to_checksum_address(address), "latest"))
        return DepositAccount(address, path, balance)


# ----------------------------------------------------------------------------- the side


@dataclass(frozen=True)
class _Deposit:
    address: bytes
    path: tuple[int, ...]


class EvmPayoutSide:
    """ETH payouts, sweeps and the participant's checks for one EVM source chain."""

    def __init__(self, *, chain: SourceChain, asset: str, w3: Web3, db: dbm.BridgeDB, params: EvmPayoutParams,
                 custody: CustodyAddress, group_key: Point, chain_code: bytes, destination_chain: str,
                 key_id: bytes, sign: SignFn, node_id: str, solvency: SolvencyFn | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if chain.withdrawals is None:
            raise EvmWithdrawalError(f"{chain.caip2}: withdrawals are not enabled")
        try:
            chain_id = evm_chain_id(chain.caip2)
        except OrderError as exc:
            raise EvmWithdrawalError(str(exc)) from None
        if params.chain_id != chain_id or custody.chain != chain.caip2:
            raise EvmWithdrawalError(f"{chain.caip2}: the payout parameters or the custody address are for "
                                     "another chain")
        self.chain, self.asset, self.w3, self.db, self.params = chain, asset, w3, db, params
        self.custody, self.group_key, self.chain_code = custody, group_key, chain_code
        self.destination_chain, self.key_id, self.sign_fn, self.node_id = destination_chain, key_id, sign, node_id
        self.solvency, self.clock = solvency, clock
        self.custody_account = address_bytes(custody.address)
        self.fallback_fee = chain.withdrawals.fallback_fee_rate
        #: a payout is final (and its nonce settled) at this depth
        self.confirmations = chain.withdrawals.payout_confirmations
        self._ledger_lock = threading.Lock()  # one ledger read-modify-write at a time in this process
        self._decision_lock = threading.Lock()  # one participant decision at a time: check-then-record
        self._code: dict[bytes, tuple[float, bool]] = {}
        self._code_lock = threading.Lock()
        self._unmatched: dict[str, tuple[bytes, int]] = {}  # custody transactions no known burn explains yet
        self._scan_resumed = False

    def __repr__(self) -> str:
        return f"EvmPayoutSide({self.chain.caip2}, asset={self.asset}, custody={self.custody.address})"

    # -- chain reads (worker threads)

    def has_code(self, address: bytes) -> bool:
        """``eth_getCode(address, "latest")`` is non-empty (cached briefly for :meth:`classify`)."""
        code = self.w3.eth.get_code(Web3.to_checksum_address(address), "latest")
        answer = len(code) > 0
        with self._code_lock:
            if len(self._code) >= CODE_CACHE_LIMIT:
                self._code.clear()
            self._code[bytes(address)] = (time.monotonic(), answer)
        return answer

    def prefetch_code(self, burns: Sequence[withdrawals.Burn]) -> None:
        """(worker thread) Ask the endpoint about the destinations of burns about to be fed to the
        machine, so :meth:`classify` — which the machine calls on the event loop — needs no RPC."""
        for burn in burns:
            if isinstance(burn.destination, bytes) and len(burn.destination) == 20:
                try:
                    self.has_code(burn.destination)
                except Exception as exc:  # classify asks again itself
                    log_event(log, logging.WARNING, "eth_getCode failed", chain=self.chain.caip2,
                              error=type(exc).__name__)

    def fee_estimate(self) -> FeeQuote:
        return estimate_fees(self.w3, self.fallback_fee)

    def _count(self, account: bytes, block: int | str) -> int:
        return int(self.w3.eth.get_transaction_count(Web3.to_checksum_address(account), block))  # type: ignore[arg-type]

    def _final_block(self) -> int:
        return max(0, int(self.w3.eth.block_number) - (self.confirmations - 1))

    def _rpc(self, method: str, params: list[Any]) -> Any:
        answer = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        error = answer.get("error")
        if error:
            message = error.get("message", error) if isinstance(error, dict) else error
            raise EvmWithdrawalError(f"{method}: {message}"[:300])
        return answer.get("result")

    def pool_has_nonce_above(self, account: bytes, nonce: int) -> bool:
        """Whether the endpoint's txpool holds a transaction from ``account`` above ``nonce`` (pending
        or queued behind a gap). An endpoint without ``txpool_content`` answers False."""
        try:
            content = self._rpc("txpool_content", [])
        except Exception:
            return False
        wanted = "0x" + account.hex()
        for group in ("pending", "queued"):
            for sender, txs in ((content or {}).get(group) or {}).items():
                if str(sender).lower() != wanted:
                    continue
                for n in txs:
                    try:
                        if int(str(n), 0) > nonce:
                            return True
                    except ValueError:  # an endpoint's odd spelling: not evidence of anything
                        continue
        return False

    def depths(self, txids: list[str], *, require_success: bool = True) -> list[int | None]:
        """(worker thread) Each variant: confirmations if mined, 0 if in the endpoint's txpool, None if
        unknown (never seen, dropped, replaced by a mined variant, or not a transaction hash — a
        participant's ``sighash:`` archive key). A mined transfer that *reverted* did not pay:
        it is reported as None (and logged) unless ``require_success`` is False."""
        out: list[int | None] = []
        head: int | None = None
        for txid in txids:
            h = _hash_hex(txid)
            if h is None:
                out.append(None)
                continue
            try:
                receipt = self._rpc("eth_getTransactionReceipt", [h])
                if receipt and receipt.get("blockNumber") is not None:
                    if require_success and int(receipt.get("status", "0x1"), 16) != 1:
                        log_event(log, logging.CRITICAL, "payout transaction reverted", chain=self.chain.caip2,
                                  txid=h)
                        out.append(None)
                        continue
                    head = int(self.w3.eth.block_number) if head is None else head
                    out.append(max(0, head - int(receipt["blockNumber"], 16) + 1))
                    continue
                tx = self._rpc("eth_getTransactionByHash", [h])
                out.append(0 if tx else None)
            except Exception as exc:  # an endpoint hiccup is "unknown", never a guess
                log_event(log, logging.WARNING, "payout depth unreadable", chain=self.chain.caip2, txid=h,
                          error=type(exc).__name__)
                out.append(None)
        return out

    def broadcast(self, raw_hex: str) -> tuple[bool, str]:
        """(worker thread) ``eth_sendRawTransaction``. Accepted: sent now, already in the pool
        ("already known"), or refused as "nonce too low" *because this very transaction is mined*
        (its receipt exists). Any other refusal is (False, the endpoint's message)."""
        raw = _raw_bytes(raw_hex)
        if raw is None:
            return False, "raw transaction is not hex"
        try:
            decoded = decode_signed_transaction(raw)
        except EvmPayoutError as exc:
            return False, f"not a signed payout: {exc}"
        try:
            answer = self.w3.provider.make_request("eth_sendRawTransaction", ["0x" + raw.hex()])  # type: ignore[arg-type]
        except Exception as exc:
            return False, f"endpoint: {type(exc).__name__}: {exc}"[:300]
        error = answer.get("error")
        if not error:
            return True, ""
        message = str(error.get("message", error) if isinstance(error, dict) else error)
        lowered = message.lower()
        if any(k in lowered for k in _ACCEPTED_AS_KNOWN):
            return True, ""
        if "nonce too low" in lowered:
            depth = self.depths(["0x" + decoded.hash.hex()], require_success=False)[0]
            if depth is not None and depth >= 1:
                return True, ""
        return False, message[:300]

    # -- the refund rule

    def classify(self, burn: withdrawals.Burn) -> str | None:
        """None for a payable burn, else ``"below_minimum: …"`` or ``"unpayable: …"``.

        Pure checks first (amount, 20 bytes, > 0xffff, not custody); then the destination's code
        at the latest block (see the module docstring for why not at the burn's block), from the
        cache :meth:`prefetch_code` fills, else asked here. If the endpoint cannot answer, the burn
        counts as payable: a refund is final, while a payout is checked again (code included)
        before it takes a nonce and by every co-signer."""
        try:
            payout_value(burn.amount, self.params)
        except BelowMinimum as exc:
            return f"below_minimum: {exc}"
        except EvmPayoutError as exc:
            return f"unpayable: {exc}"
        destination = burn.destination if isinstance(burn.destination, bytes) else b""
        try:
            payout_destination(destination, self.custody, has_code=False)
        except UnpayableDestination as exc:
            return f"unpayable: {exc}"
        with self._code_lock:
            cached = self._code.get(destination)
        if cached is not None and time.monotonic() - cached[0] <= CODE_CACHE_SECONDS:
            has_code = cached[1]
        else:
            try:
                has_code = self.has_code(destination)
            except Exception as exc:
                log_event(log, logging.WARNING, "destination code unknown; counted payable", chain=self.chain.caip2,
                          burn_id=burn.burn_id, error=type(exc).__name__)
                return None
        try:
            payout_destination(destination, self.custody, has_code=has_code)
        except UnpayableDestination as exc:
            return f"unpayable: {exc}"
        return None

    # -- custody and deposits

    def note_minted(self, output: MintedOutput) -> bool:
        """(worker thread) A ``Minted`` log at depth for this chain: its deposit address now holds
        group coins to sweep. Recorded as a custody coin (txid = the deposit transaction hash,
        vout = ``EVM_NATIVE_VOUT``), like a Bitcoin deposit output. Returns whether it was new."""
        if output.chain_key != chain_key(self.chain.caip2) or output.vout != EVM_NATIVE_VOUT:
            return False
        txid = output.txid.lower().removeprefix("0x")
        if _hash_hex(txid) is None:
            log_event(log, logging.ERROR, "minted deposit has a malformed transaction hash", chain=self.chain.caip2)
            return False
        try:
            d = deposit_address(self.group_key, self.chain_code, self.chain.caip2, self.destination_chain,
                                output.recipient)
        except DerivationError as exc:
            log_event(log, logging.ERROR, "minted deposit has no deposit address", chain=self.chain.caip2,
                      error=str(exc))
            return False
        with self.db.transaction() as t:
            return t.add_custody_coin(chain=self.chain.caip2, txid=txid, vout=EVM_NATIVE_VOUT, value=output.amount,
                                      path=list(d.path), public_key=d.public_key.hex(), origin="deposit")

    def _deposits(self, reader: dbm.Reader) -> list[_Deposit]:
        """Minted deposit addresses of this chain (one entry per address, sorted)."""
        seen: dict[bytes, _Deposit] = {}
        for row in reader.custody_coins(self.chain.caip2):
            if row["origin"] != "deposit":
                continue
            try:
                key = Point.from_bytes(bytes.fromhex(row["public_key"]))
                address = address_bytes(ethereum_address(key))
            except (ValueError, TypeError) as exc:  # a corrupt row names no address: skipped, not guessed
                log_event(log, logging.ERROR, "custody coin row unusable", chain=self.chain.caip2,
                          txid=row["txid"], error=type(exc).__name__)
                continue
            seen.setdefault(address, _Deposit(address, tuple(int(i) for i in row["path"])))
        return [seen[a] for a in sorted(seen)]

    def deposit_path(self, address: bytes, reader: dbm.Reader) -> tuple[int, ...] | None:
        """The path of a deposit address this node knows on this chain (minted, or registered here),
        re-derived from the group key: a record can say which path, never which key."""
        candidates = [d.path for d in self._deposits(reader) if d.address == address]
        registered = reader.get_address(to_checksum_address(address))
        if registered is not None and registered.source_chain == self.chain.caip2:
            candidates.append(tuple(int(i) for i in registered.path))
        for path in candidates:
            try:
                child = derive(self.group_key, self.chain_code, path).public_key
            except (ValueError, TypeError):  # InvalidInput: not a path this key derives
                log_event(log, logging.ERROR, "deposit path does not derive", chain=self.chain.caip2)
                continue
            if address_bytes(ethereum_address(child)) == address:
                return path
        return None

    def custody_total(self, reader: dbm.Reader | None = None) -> int:
        """(worker thread) Wei the group controls on this chain, for solvency: the custody address
        plus every minted deposit address not yet swept (or its leftover), each read at the
        endpoint's ``pending`` state so a broadcast payout has already left custody. ``reader``:
        an open transaction to read through (a participant's decision holds one)."""
        if reader is not None:
            deposits = self._deposits(reader)
        else:
            with self.db.read() as r:
                deposits = self._deposits(r)
        total = int(self.w3.eth.get_balance(self.custody.address, "pending"))  # type: ignore[arg-type]
        for d in deposits:
            total += int(self.w3.eth.get_balance(to_checksum_address(d.address), "pending"))  # type: ignore[arg-type]
        return total

    # -- the ledgers

    def _ledger(self, t: dbm.Transaction, account: bytes) -> NonceManager:
        """The stored ledger of ``account`` (row-locked), or a new one starting at the final count."""
        def fresh() -> str:
            ledger = NonceManager(account, self._count(account, self._final_block()))
            return json.dumps(ledger.to_dict(), sort_keys=True, separators=(",", ":"))

        raw = _locked_meta(t, _ledger_meta(self.chain.caip2, account), fresh)
        try:
            ledger = NonceManager.from_dict(json.loads(raw))
        except (ValueError, NonceError) as exc:
            raise NonceError(f"stored nonce ledger of {to_checksum_address(account)} is unusable: {exc}") from None
        if ledger.account != account:
            raise NonceError(f"stored nonce ledger names {to_checksum_address(ledger.account)}, "
                             f"not {to_checksum_address(account)}")
        return ledger

    def _save(self, t: dbm.Transaction, ledger: NonceManager) -> None:
        t.put_derived_meta(_ledger_meta(self.chain.caip2, ledger.account),
                  json.dumps(ledger.to_dict(), sort_keys=True, separators=(",", ":")))

    def ledger(self, account: bytes | None = None) -> NonceManager | None:
        """(worker thread) A copy of the stored ledger of ``account`` (default: custody), or None."""
        account = self.custody_account if account is None else account
        with self.db.read() as r:
            raw = r.get_meta(_ledger_meta(self.chain.caip2, account))
        return None if raw is None else NonceManager.from_dict(json.loads(raw))

    # -- signing

    async def _sign(self, tx: Eip1559Transaction, path: tuple[int, ...], sender: bytes,
                    proposal: EvmProposal) -> bytes | str:
        """One sign session for ``tx`` at ``path``; the raw signed transaction, or why not."""
        try:
            request = encode(EvmPayoutRequest(proposal.to_bytes()))
            digest = tx.signing_hash()
        except (EvmProposalError, EthereumError, ValueError) as exc:
            return f"proposal not encodable: {exc}"
        outcome = await self.sign_fn(self.key_id, digest, path, client_request=request)
        if not outcome.ok:
            return f"{outcome.status}: {outcome.reason}"[:500]
        try:
            return assemble_signed(tx, outcome.output, sender)
        except EvmPayoutError as exc:
            return f"signature rejected: {exc}"

    # -- payouts (coordinator)

    async def build(self, action: withdrawals.BuildPayout, burn: withdrawals.Burn) -> PayoutSigned | PayoutFailed:
        """Plan, sign and archive the payout (or, with ``action.replaces``, the bump) of ``burn``.

        Never raises for a bad burn, a chain hiccup or a refused session: the machine gets a
        :class:`PayoutFailed` with the reason and retries later. A payout whose nonce already holds
        a signed variant (a crash after signing) returns that variant instead of signing again."""
        if tuple(action.burn_ids) != (burn.burn_id,):
            return PayoutFailed(action.payout_id, "an EVM payout pays exactly one burn, the one given",
                                action.replaces)
        try:
            prepared = await trio.to_thread.run_sync(self._prepare_payout, action, burn)
        except (EvmPayoutError, EthereumError, EvmWithdrawalError, ValueError) as exc:
            return PayoutFailed(action.payout_id, f"{type(exc).__name__}: {exc}"[:500], action.replaces)
        except Exception as exc:  # the endpoint or the database: retried by the machine
            return PayoutFailed(action.payout_id, f"unavailable: {type(exc).__name__}: {exc}"[:500], action.replaces)
        if isinstance(prepared, PayoutSigned):
            return prepared
        tx, nonce = prepared
        proposal = EvmProposal(KIND_PAYOUT, tx, burn_id=burn_key(burn.burn_id))
        signed = await self._sign(tx, self.custody.path, self.custody_account, proposal)
        if isinstance(signed, str):
            log_event(log, logging.WARNING, "EVM payout not signed", node=self.node_id, chain=self.chain.caip2,
                      burn_id=burn.burn_id, nonce=nonce, reason=signed)
            return PayoutFailed(action.payout_id, signed, action.replaces)
        try:
            txid = await trio.to_thread.run_sync(self._archive_signed, action, burn, nonce, signed, proposal)
        except Exception as exc:  # not recorded, so not broadcast: the nonce keeps the burn, a retry re-signs
            return PayoutFailed(action.payout_id, f"signed payout not recorded: {type(exc).__name__}: {exc}"[:500],
                                action.replaces)
        log_event(log, logging.INFO, "EVM payout signed", node=self.node_id, chain=self.chain.caip2,
                  burn_id=burn.burn_id, nonce=nonce, txid=txid, max_fee_per_gas=tx.max_fee_per_gas,
                  replaces=action.replaces or "")
        return PayoutSigned(action.payout_id, txid, "0x" + signed.hex(), self.params.gas_limit * tx.max_fee_per_gas,
                            tx.max_fee_per_gas, action.replaces)

    def _evm_burn(self, burn: withdrawals.Burn) -> EvmBurn:
        return EvmBurn(burn_key(burn.burn_id), burn.amount, bytes(burn.destination))

    def _prepare_payout(self, action: withdrawals.BuildPayout, burn: withdrawals.Burn
                        ) -> tuple[Eip1559Transaction, int] | PayoutSigned:
        """(worker thread) The transaction to sign and its nonce, taken durably from the ledger."""
        evm_burn = self._evm_burn(burn)
        purpose = payout_purpose(evm_burn.burn_id)
        fees = self.fee_estimate()
        if action.replaces is not None:
            return self._prepare_replacement(action, evm_burn, fees)
        # Everything that can refuse the payout is checked before a nonce is taken.
        has_code = self.has_code(evm_burn.destination)
        plan_eth_payout(evm_burn, 0, fees, self.params, self.custody, destination_has_code=has_code)
        with self._ledger_lock, self.db.transaction() as t:
            ledger = self._ledger(t, self.custody_account)
            view = NodeEvmView(self, t)
            cosigned = view.cosigned_payout_nonce(evm_burn.burn_id)
            if cosigned is not None and ledger.nonce_of(purpose) != cosigned:
                try:  # this node co-signed the burn at another coordinator's nonce: propose that one
                    ledger.adopt(purpose, cosigned)
                except NonceError as exc:
                    log_event(log, logging.WARNING, "ledger disagrees with a co-signed payout", node=self.node_id,
                              burn_id=burn.burn_id, nonce=cosigned, error=str(exc))
            nonce = ledger.assign(purpose)
            owner = view.cosigned_at_nonce(self.custody_account, nonce)
            slot = ledger.slot(nonce)
            if owner not in (None, purpose) and (slot is None or not slot.signed):
                # this node co-signed that nonce for something else meanwhile: move to a fresh one
                # (the old one stays a gap that the co-signed transaction fills)
                ledger.adopt(purpose, ledger.next_nonce)
                nonce = ledger.assign(purpose)
                slot = ledger.slot(nonce)
            if nonce < ledger.confirmed_count:
                self._save(t, ledger)
                raise EvmPayoutError(f"the burn's nonce {nonce} is already final on chain; its payout is found "
                                     "there, or the nonce was consumed by another transaction")
            self._save(t, ledger)
            if slot is not None and slot.signed:
                latest = slot.latest
                assert latest is not None
                return self._signed_from_archive(action, latest.raw, latest.decoded.tx)
        tx = plan_eth_payout(evm_burn, nonce, fees, self.params, self.custody, destination_has_code=has_code)
        return tx, nonce

    def _prepare_replacement(self, action: withdrawals.BuildPayout, burn: EvmBurn, fees: FeeQuote
                             ) -> tuple[Eip1559Transaction, int]:
        purpose = payout_purpose(burn.burn_id)
        with self._ledger_lock, self.db.transaction() as t:
            ledger = self._ledger(t, self.custody_account)
            current: Eip1559Transaction | None = None
            row = t.archived_payout(action.replaces or "")
            raw = _raw_bytes(row["raw"]) if row is not None else None
            if raw is not None:  # the variant to bump, even one another coordinator signed
                decoded = decode_signed_transaction(raw)
                if decoded.sender != self.custody_account:
                    raise EvmPayoutError(f"{action.replaces} is not sent from the custody address")
                current = decoded.tx
                if ledger.nonce_of(purpose) != current.nonce:
                    ledger.adopt(purpose, current.nonce)
                    if ledger.slot(current.nonce) is not None:
                        ledger.record_signed(current.nonce, purpose, raw, int(self.clock()))
            nonce = ledger.nonce_of(purpose)
            if nonce is None:
                raise EvmPayoutError(f"no nonce is held for burn 0x{burn.burn_id.hex()}: nothing to replace")
            if nonce < ledger.confirmed_count:
                raise EvmPayoutError(f"nonce {nonce} is final on chain: a variant was mined, nothing to replace")
            latest = ledger.latest_transaction(nonce)
            if latest is not None and (current is None or latest.max_fee_per_gas >= current.max_fee_per_gas):
                current = latest
            if current is None:
                raise EvmPayoutError(f"no signed variant at nonce {nonce} to replace")
            self._save(t, ledger)
        return plan_replacement(current, fees, self.params), nonce

    def _signed_from_archive(self, action: withdrawals.BuildPayout, raw: bytes, tx: Eip1559Transaction
                             ) -> PayoutSigned:
        txid = "0x" + decode_signed_transaction(raw).hash.hex()
        return PayoutSigned(action.payout_id, txid, "0x" + raw.hex(), self.params.gas_limit * tx.max_fee_per_gas,
                            tx.max_fee_per_gas, action.replaces)

    def _archive_signed(self, action: withdrawals.BuildPayout, burn: withdrawals.Burn, nonce: int, raw: bytes,
                        proposal: EvmProposal) -> str:
        """(worker thread) The signed variant into the ledger and the archive, in one transaction."""
        purpose = payout_purpose(burn_key(burn.burn_id))
        with self._ledger_lock, self.db.transaction() as t:
            ledger = self._ledger(t, self.custody_account)
            tx_hash = ledger.record_signed(nonce, purpose, raw, int(self.clock()))
            self._save(t, ledger)
            txid = "0x" + tx_hash.hex()
            t.archive_payout(txid=txid, payout_id=action.payout_id, source_chain=self.chain.caip2,
                             role=ROLE_COORDINATOR, burn_ids=[burn.burn_id], inputs=[_input_of(self.custody_account,
                                                                                              nonce)],
                             fee=self.params.gas_limit * proposal.tx.max_fee_per_gas,
                             proposal=proposal.to_bytes().hex(), raw="0x" + raw.hex(), replaces=action.replaces)
        return txid

    def release(self, burn_id: str) -> int | None:
        """(worker thread) The burn will not be paid (it is refunded): if it holds a nonce that was
        never proposed, that nonce becomes a gap for :meth:`maintain` to fill. Returns the freed
        nonce, or None when there is nothing to free. A nonce is kept with its burn once this node
        accepted a proposal of it there (its own hook runs before it proposes): this node would
        then refuse a gap filler at that nonce itself, and a signed variant may exist."""
        burn = burn_key(burn_id)
        purpose = payout_purpose(burn)
        with self._ledger_lock, self.db.transaction() as t:
            ledger = self._ledger(t, self.custody_account)
            nonce = ledger.nonce_of(purpose)
            if nonce is None or nonce < ledger.confirmed_count:
                return None
            slot = ledger.slot(nonce)
            if slot is None or slot.signed or NodeEvmView(self, t).cosigned_payout_nonce(burn) is not None:
                log_event(log, logging.WARNING, "EVM payout nonce kept: the payout was proposed",
                          node=self.node_id, burn_id=burn_id, nonce=nonce)
                return None
            freed = ledger.cancel(purpose)
            self._save(t, ledger)
        log_event(log, logging.INFO, "EVM payout nonce released", node=self.node_id, burn_id=burn_id, nonce=freed)
        return freed

    def _gap_fillable(self, nonce: int) -> bool:
        """(worker thread) Whether this node should propose a gap filler at ``nonce`` of custody: the
        endpoint's pool holds nothing there, and this node knows no payout at that nonce (a gap in
        *its* ledger may be another coordinator's payout it adopted around; the co-signers of that
        payout would refuse the filler anyway, so proposing one only wastes a session)."""
        if self._count(self.custody_account, "pending") > nonce:
            return False
        with self.db.read() as r:
            rows = NodeEvmView(self, r)._at(self.custody_account)
        return not any(n == nonce and row["burn_ids"] for n, row in rows)

    # -- payouts of other coordinators

    def found_payouts(self, candidates: Sequence[withdrawals.Burn]) -> list[PayoutFound]:
        """(worker thread) Custody transactions mined since the last call that this node did not
        archive. A gap filler is archived (role ``found``); a transfer paying one of ``candidates``
        (the machine's unpaid burns: destination and value minus fee, preferring the burn this node
        co-signed at that nonce) is archived, adopted by the ledger and reported as
        :class:`PayoutFound`. A transfer that pays no candidate is logged as critical and kept in
        memory to be matched again (its burn may reach this node's follower later); after a
        restart the search starts ``SCAN_START_BEHIND`` blocks before the stored cursor, so it is
        found again. At most ``SCAN_BLOCKS_PER_CALL`` blocks per call; an endpoint error ends the
        call with what was found so far and the cursor where it was."""
        found: list[PayoutFound] = []
        for txid, (raw, number) in list(self._unmatched.items()):
            try:
                outcome = self._adopt_found(txid, raw, number, candidates)
            except Exception as exc:  # the database: tried again next call
                log_event(log, logging.WARNING, "found payout not recorded", txid=txid, error=type(exc).__name__)
                continue
            if outcome is not None:
                found.append(outcome)
        name = SCAN_META + self.chain.caip2
        try:
            head = int(self.w3.eth.block_number)
            cursor = self.db.get_meta(name)
            if cursor is None:
                start = max(0, head - SCAN_START_BEHIND)
            elif self._scan_resumed:
                start = int(cursor) + 1
            else:
                start = max(0, int(cursor) + 1 - SCAN_START_BEHIND)
            stop = min(head, start + SCAN_BLOCKS_PER_CALL - 1)
            if start > stop:
                return found
            with self.db.read() as r:
                known = {row["txid"] for row in r.archived_payouts(self.chain.caip2)}
            for number in range(start, stop + 1):
                block = self.w3.eth.get_block(number, full_transactions=True)
                for tx in block["transactions"]:
                    sender = tx.get("from")
                    if sender is None or address_bytes(Web3.to_checksum_address(sender)) != self.custody_account:
                        continue
                    txid = _hash_hex(bytes(tx["hash"]).hex())
                    if txid is None or txid in known or txid in self._unmatched:
                        continue
                    raw = _raw_bytes(self._rpc("eth_getRawTransactionByHash", [txid]))
                    if raw is None:
                        raise EvmWithdrawalError(f"the endpoint does not return transaction {txid}")
                    outcome = self._adopt_found(txid, raw, number, candidates)
                    if outcome is not None:
                        found.append(outcome)
            with self.db.transaction() as t:
                t.put_derived_meta(name, str(stop))
            self._scan_resumed = True
        except Exception as exc:  # an endpoint hiccup: the blocks are searched again next call
            log_event(log, logging.WARNING, "custody transaction search interrupted", node=self.node_id,
                      chain=self.chain.caip2, error=f"{type(exc).__name__}: {exc}"[:300])
        return found

    def found_payout(self, txid: str, candidates: Sequence[withdrawals.Burn]) -> PayoutFound | None:
        """(worker thread) One custody transaction by hash - a payout this node was told of (a
        ``WithdrawalPaid`` it could not confirm) - archived and matched like :meth:`found_payouts`
        does block by block; None if it is archived already, not mined, not from custody, or pays
        no candidate."""
        txid = _hash_hex(txid)
        if txid is None:
            return None
        with self.db.read() as r:
            if r.archived_payout(txid) is not None:
                return None
        tx = self.w3.eth.get_transaction(txid)  # type: ignore[arg-type]
        sender = tx.get("from")
        if tx.get("blockNumber") is None or sender is None or \
                address_bytes(Web3.to_checksum_address(sender)) != self.custody_account:
            return None
        raw = _raw_bytes(self._rpc("eth_getRawTransactionByHash", [txid]))
        if raw is None:
            raise EvmWithdrawalError(f"the endpoint does not return transaction {txid}")
        return self._adopt_found(txid, raw, int(tx["blockNumber"]), candidates)

    def _adopt_found(self, txid: str, raw: bytes, block: int, candidates: Sequence[withdrawals.Burn]
                     ) -> PayoutFound | None:
        """Archive and match one custody transaction another coordinator sent (see found_payouts)."""
        try:
            decoded = decode_signed_transaction(raw)
        except EvmPayoutError:
            decoded = None
        if decoded is None or decoded.sender != self.custody_account:
            log_event(log, logging.CRITICAL, "custody sent a transaction that is not a plain type-2 transfer",
                      chain=self.chain.caip2, txid=txid)
            self._unmatched.pop(txid, None)
            return None
        tx = decoded.tx
        matched: withdrawals.Burn | None = None
        if tx.to == self.custody_account and tx.value == 0 and not tx.data:
            payout_id, burn_ids = f"gap-fill:{tx.nonce}", []
        else:
            with self.db.read() as r:
                co_owner = NodeEvmView(self, r).cosigned_at_nonce(self.custody_account, tx.nonce)
            pays = []
            for b in candidates:
                try:
                    if (isinstance(b.destination, bytes) and b.destination == tx.to and not tx.data
                            and payout_value(b.amount, self.params) == tx.value):
                        pays.append(b)
                except EvmPayoutError:
                    continue
            pays.sort(key=lambda b: (payout_purpose(burn_key(b.burn_id)) != co_owner, b.nonce))
            if not pays:
                if txid not in self._unmatched:
                    log_event(log, logging.CRITICAL, "custody paid something no known burn asked for",
                              chain=self.chain.caip2, txid=txid, nonce=tx.nonce,
                              to=to_checksum_address(tx.to) if tx.to else None, value=str(tx.value))
                    if len(self._unmatched) >= CODE_CACHE_LIMIT:
                        self._unmatched.clear()
                    self._unmatched[txid] = (raw, block)
                return None
            matched = pays[0]
            payout_id, burn_ids = payout_id_of((matched.burn_id,)), [matched.burn_id]
        with self._ledger_lock, self.db.transaction() as t:
            t.archive_payout(txid=txid, payout_id=payout_id, source_chain=self.chain.caip2, role=ROLE_FOUND,
                             burn_ids=burn_ids, inputs=[_input_of(self.custody_account, tx.nonce)],
                             fee=self.params.gas_limit * tx.max_fee_per_gas, raw="0x" + raw.hex())
            if matched is not None:
                try:
                    ledger = self._ledger(t, self.custody_account)
                    purpose = payout_purpose(burn_key(matched.burn_id))
                    if ledger.nonce_of(purpose) != tx.nonce:
                        ledger.adopt(purpose, tx.nonce)
                        self._save(t, ledger)
                except NonceError as exc:
                    log_event(log, logging.WARNING, "found payout not adopted by the ledger", node=self.node_id,
                              txid=txid, error=str(exc))
        self._unmatched.pop(txid, None)
        if matched is None:
            return None
        confirmations = self.depths([txid], require_success=False)[0] or 0
        log_event(log, logging.INFO, "EVM payout found on chain", node=self.node_id, chain=self.chain.caip2,
                  txid=txid, burn_id=matched.burn_id, nonce=tx.nonce, confirmations=confirmations)
        return PayoutFound(payout_id, (matched.burn_id,), txid, "0x" + raw.hex(), confirmations)

    # -- sweeps

    async def sweep_due(self) -> None:
        """Sweep minted deposit addresses into custody, one sign session at a time (at most
        ``SWEEPS_PER_CALL``). An address is swept when what would arrive exceeds the worst-case gas
        at the cap (it is worth moving) and no earlier sweep of it is still unconfirmed."""
        done = 0
        try:
            deposits = await trio.to_thread.run_sync(self._sweepable)
        except Exception as exc:  # the database: the next call tries again
            log_event(log, logging.WARNING, "deposit addresses unreadable", node=self.node_id, error=type(exc).__name__)
            return
        for d in deposits:
            if done >= SWEEPS_PER_CALL:
                return
            try:
                prepared = await trio.to_thread.run_sync(self._prepare_sweep, d)
            except Exception as exc:  # one address's trouble must not stop the others
                log_event(log, logging.WARNING, "sweep not planned", node=self.node_id, chain=self.chain.caip2,
                          address=to_checksum_address(d.address), error=f"{type(exc).__name__}: {exc}"[:300])
                continue
            if prepared is None:
                continue
            tx, purpose = prepared
            done += 1
            try:
                await self._sign_and_send(tx, d.path, d.address, purpose,
                                          EvmProposal(KIND_SWEEP, tx, deposit_address=d.address))
            except Exception as exc:  # the nonce stays assigned, unsigned: the next call signs it again
                log_event(log, logging.WARNING, "sweep not signed", node=self.node_id, chain=self.chain.caip2,
                          address=to_checksum_address(d.address), error=f"{type(exc).__name__}: {exc}"[:300])

    def _sweepable(self) -> list[_Deposit]:
        with self.db.read() as r:
            return self._deposits(r)

    def _prepare_sweep(self, d: _Deposit) -> tuple[Eip1559Transaction, str] | None:
        """(worker thread) The sweep of ``d`` to sign (its nonce durably assigned), or None."""
        fees = self.fee_estimate()
        balance = int(self.w3.eth.get_balance(to_checksum_address(d.address), "pending"))  # type: ignore[arg-type]
        with self._ledger_lock, self.db.transaction() as t:
            ledger = self._ledger(t, d.address)
            ledger.observe(self._count(d.address, self._final_block()), self._count(d.address, "pending"),
                           int(self.clock()), stuck_after=self.params.stuck_after)
            live = ledger.slots()
            if any(s.signed for s in live):
                self._save(t, ledger)
                return None  # an earlier sweep is still on its way: maintain() looks after it
            unsigned = next((s for s in live if s.owner != GAP_FILL), None)
            nonce = unsigned.nonce if unsigned is not None else ledger.next_nonce
            tx = self._plan_sweep(d.address, balance, nonce, fees)
            if tx is None:
                self._save(t, ledger)
                return None
            purpose = unsigned.owner if unsigned is not None else f"sweep:{nonce}"
            if ledger.assign(purpose) != nonce:
                raise NonceError(f"sweep ledger of {to_checksum_address(d.address)} handed out another nonce")
            self._save(t, ledger)
        return tx, purpose

    def _plan_sweep(self, address: bytes, balance: int, nonce: int, fees: FeeQuote) -> Eip1559Transaction | None:
        """Keep back gas at the *cap* fee, not at the offered one: a replacement at any fee up to the
        cap then still fits the balance. None when what would arrive does not exceed that gas."""
        capped = min(fees.max_fee_per_gas, self.params.max_fee_per_gas)
        headroom = self.params.gas_limit * (self.params.max_fee_per_gas - capped)
        if balance <= headroom:
            return None
        try:
            tx = plan_sweep(address, balance - headroom, nonce, fees, self.params, self.custody)
        except NothingToSweep:
            return None
        return tx if tx.value > self.params.max_gas_cost else None

    async def _sign_and_send(self, tx: Eip1559Transaction, path: tuple[int, ...], sender: bytes, purpose: str,
                             proposal: EvmProposal) -> bool:
        """Sign a sweep or gap filler (or a replacement of one), record it in its ledger, broadcast."""
        signed = await self._sign(tx, path, sender, proposal)
        if isinstance(signed, str):
            log_event(log, logging.WARNING, f"EVM {proposal.kind_name} not signed", node=self.node_id,
                      chain=self.chain.caip2, sender=to_checksum_address(sender), nonce=tx.nonce, reason=signed)
            return False

        def record() -> None:
            with self._ledger_lock, self.db.transaction() as t:
                ledger = self._ledger(t, sender)
                ledger.record_signed(tx.nonce, purpose, signed, int(self.clock()))
                self._save(t, ledger)
                t.record_event(f"evm-{proposal.kind_name}-signed", {**proposal.describe(),
                                                                    "sender": to_checksum_address(sender)})

        try:
            await trio.to_thread.run_sync(record)
        except Exception as exc:
            log_event(log, logging.ERROR, f"EVM {proposal.kind_name} signed but not recorded", node=self.node_id,
                      error=f"{type(exc).__name__}: {exc}"[:300])
            return False
        ok, err = await trio.to_thread.run_sync(self.broadcast, "0x" + signed.hex())
        log_event(log, logging.INFO if ok else logging.WARNING, f"EVM {proposal.kind_name} broadcast",
                  node=self.node_id, chain=self.chain.caip2, sender=to_checksum_address(sender), nonce=tx.nonce,
                  accepted=ok, error=err)
        return True

    # -- upkeep

    async def maintain(self, *, coordinating: bool = True) -> None:
        """Each ledger (custody and deposit addresses) observes the chain; dropped transactions are
        re-broadcast, cancelled nonces filled, stuck gap fillers and sweeps replaced. A payout's
        ``Replace`` is ignored here: the machine bumps payouts (``BuildPayout.replaces``), so every
        payout variant it must watch is one it asked for.

        Every node should call it (its ledger then settles what the chain confirmed, and
        re-broadcasting is harmless); only the asset's coordinator signs (``coordinating``): a gap
        in a non-coordinator's ledger is usually a nonce another coordinator is using."""
        try:
            observed = await trio.to_thread.run_sync(self._observe_all)
        except Exception as exc:  # the endpoint or the database: the next call observes again
            log_event(log, logging.WARNING, "nonce ledgers not observed", node=self.node_id, chain=self.chain.caip2,
                      error=f"{type(exc).__name__}: {exc}"[:300])
            return
        for account, path, action in observed:
            if not coordinating and not isinstance(action, Rebroadcast | Settled):
                continue
            try:
                await self._act(account, path, action)
            except Exception as exc:  # one account's trouble must not stop the others
                log_event(log, logging.WARNING, "nonce ledger action failed", node=self.node_id,
                          sender=to_checksum_address(account), action=type(action).__name__,
                          error=f"{type(exc).__name__}: {exc}"[:300])

    async def _act(self, account: bytes, path: tuple[int, ...], action: Any) -> None:
        if isinstance(action, Rebroadcast):
            ok, err = await trio.to_thread.run_sync(self.broadcast, "0x" + action.raw.hex())
            log_event(log, logging.INFO if ok else logging.WARNING, "EVM transaction re-broadcast",
                      node=self.node_id, sender=to_checksum_address(account), nonce=action.nonce, error=err)
        elif isinstance(action, FillGap) and account == self.custody_account:
            if not await trio.to_thread.run_sync(self._gap_fillable, action.nonce):
                return
            fees = await trio.to_thread.run_sync(self.fee_estimate)
            tx = plan_gap_fill(action.nonce, fees, self.params, self.custody)
            await self._sign_and_send(tx, path, account, GAP_FILL, EvmProposal(KIND_GAP_FILL, tx))
        elif isinstance(action, Replace) and not action.owner.startswith("burn:"):
            await self._replace(account, path, action)
        elif isinstance(action, Settled) and action.owner.startswith("burn:"):
            await trio.to_thread.run_sync(self._check_settled, action)
        elif isinstance(action, FillGap):
            log_event(log, logging.WARNING, "a deposit address's nonce gap cannot be filled", node=self.node_id,
                      sender=to_checksum_address(account), nonce=action.nonce)

    def _observe_all(self) -> list[tuple[bytes, tuple[int, ...], Any]]:
        """(worker thread) observe() every ledger with live slots, saving each in its transaction."""
        with self.db.read() as r:
            accounts = [(self.custody_account, self.custody.path)] + [(d.address, d.path) for d in self._deposits(r)]
            stored = {a: r.get_meta(_ledger_meta(self.chain.caip2, a)) is not None for a, _ in accounts}
        out: list[tuple[bytes, tuple[int, ...], Any]] = []
        final = self._final_block()
        for account, path in accounts:
            if not stored[account]:
                continue
            try:
                with self._ledger_lock, self.db.transaction() as t:
                    ledger = self._ledger(t, account)
                    if not ledger.slots():
                        continue
                    actions = ledger.observe(self._count(account, final), self._count(account, "pending"),
                                             int(self.clock()), stuck_after=self.params.stuck_after)
                    self._save(t, ledger)
            except NonceError as exc:  # a reorg deeper than the final depth: stop and tell someone
                log_event(log, logging.CRITICAL, "nonce ledger refused the chain's answer", node=self.node_id,
                          sender=to_checksum_address(account), error=str(exc))
                continue
            out += [(account, path, a) for a in actions]
        return out

    async def _replace(self, account: bytes, path: tuple[int, ...], action: Replace) -> None:
        fees = await trio.to_thread.run_sync(self.fee_estimate)
        try:
            tx = plan_replacement(action.current, fees, self.params)
        except EvmPayoutError as exc:
            log_event(log, logging.WARNING, "stuck transaction not replaced", node=self.node_id,
                      sender=to_checksum_address(account), nonce=action.nonce, error=str(exc))
            return
        if action.owner == GAP_FILL:
            proposal = EvmProposal(KIND_GAP_FILL, tx)
        else:
            proposal = EvmProposal(KIND_SWEEP, tx, deposit_address=account)
        await self._sign_and_send(tx, path, account, action.owner, proposal)

    def _check_settled(self, action: Settled) -> None:
        """A payout's nonce is final: if none of this node's variants of it is mined, another
        transaction consumed it (another coordinator's variant, found by :meth:`found_payouts`,
        or something that did not pay the burn: the burn then needs a new nonce, which the
        participants allow only once they see that at final depth)."""
        mined = [d for d in self.depths(["0x" + h.hex() for h in action.tx_hashes], require_success=False)
                 if d is not None and d >= 1]
        if action.tx_hashes and not mined:
            log_event(log, logging.WARNING, "a payout's nonce was consumed by another transaction",
                      node=self.node_id, owner=action.owner, nonce=action.nonce)

    # -- the participant

    def authorize(self, proposal_pb: peer_pb2.SessionProposal, request: EvmPayoutRequest) -> tuple[bool, str]:
        """The participant's hook for an :class:`EvmPayoutRequest` on this chain (worker thread).

        Decodes the proposal strictly, checks it with ``evm_payouts`` against this node's own view
        (digest and path taken from the session), checks solvency for a new payout, and records
        the decision in the same database transaction as the check — an archive row and a
        ``payout-cosigned`` event on ``ok``, a ``payout-refused`` event otherwise — one decision at
        a time. Never raises: anything unexpected is a refusal with its reason."""
        s = proposal_pb.sign
        digest, path = bytes(s.digest), tuple(s.path)
        detail: dict[str, Any] = {"coordinator": proposal_pb.coordinator, "session_id": proposal_pb.session_id.hex(),
                                  "digest": "0x" + digest.hex(), "chain": self.chain.caip2}
        try:
            proposal = EvmProposal.from_bytes(request.proposal)
        except EvmProposalError as exc:
            return self._refuse(None, detail, "malformed", f"EVM proposal does not decode: {exc}")
        detail.update(proposal.describe())
        if proposal.tx.chain_id != self.params.chain_id:
            return self._refuse(proposal, detail, "wrong_chain",
                                f"the transaction is for chain {proposal.tx.chain_id}, not {self.params.chain_id}")
        with self._decision_lock:
            try:
                verdict = self._decide(proposal, digest, path, detail)
            except Exception as exc:  # an endpoint down or answering nonsense: refuse, never guess
                return self._refuse(proposal, detail, "view_unavailable", f"{type(exc).__name__}: {exc}")
        if not verdict.ok:
            log_event(log, logging.WARNING, "EVM proposal refused", node=self.node_id, code=verdict.code,
                      reason=verdict.reason[:500], **{k: v for k, v in detail.items() if k in ("kind", "nonce")})
            return False, f"bridge: {verdict.code}: {verdict.reason}"
        log_event(log, logging.INFO, f"EVM {proposal.kind_name} co-signed", node=self.node_id,
                  coordinator=proposal_pb.coordinator, nonce=proposal.tx.nonce,
                  burn_id=detail.get("burn_id", ""))
        return True, ""

    def _decide(self, proposal: EvmProposal, digest: bytes, path: tuple[int, ...], detail: dict[str, Any]
                ) -> Verdict:
        """Check and record in one transaction (the caller holds the decision lock)."""
        path_text = path_string(path)
        burn_id = proposal.burn_id
        with self._ledger_lock, self.db.transaction() as t:
            view = NodeEvmView(self, t)
            if proposal.kind == KIND_PAYOUT:
                assert burn_id is not None
                verdict = check_eth_payout(PayoutProposal(burn_id, proposal.tx, path_text, digest), view,
                                           self.params, self.custody)
                if verdict.ok and self.solvency is not None \
                        and view.cosigned_payout_nonce(burn_id) != proposal.tx.nonce:
                    burn = view.burn(burn_id)
                    spent = proposal.tx.value + self.params.gas_limit * proposal.tx.max_fee_per_gas
                    amount = burn.amount if burn is not None else 0
                    if t.get_account_withdrawal(burn_id) is not None:  # owed by the ledger, not burned
                        why = self.solvency(0, spent, t, account_paid=amount)
                    else:
                        why = self.solvency(amount, spent, t)
                    if why is not None:
                        verdict = Verdict(ok=False, reason=why, code="insolvent")
            elif proposal.kind == KIND_GAP_FILL:
                verdict = check_gap_fill(GapFillProposal(proposal.tx, path_text, digest), view, self.params,
                                         self.custody)
            else:
                assert proposal.deposit_address is not None
                verdict = check_sweep(SweepProposal(proposal.deposit_address, proposal.tx, path_text, digest), view,
                                      self.params, self.custody)
            if verdict.ok:
                self._record_cosigned(t, proposal, digest, detail)
            else:
                t.record_event(PAYOUT_REFUSED, {**detail, "code": verdict.code, "reason": verdict.reason[:1000]},
                               burn_id)
        return verdict

    def _record_cosigned(self, t: dbm.Transaction, proposal: EvmProposal, digest: bytes,
                         detail: dict[str, Any]) -> None:
        tx = proposal.tx
        if proposal.kind == KIND_SWEEP:  # every sweep pays custody: nothing to hold against the next one
            t.record_event(PAYOUT_COSIGNED, detail)
            return
        burn_hex = "0x" + proposal.burn_id.hex() if proposal.burn_id is not None else None
        t.archive_payout(txid=SIGHASH_PREFIX + "0x" + digest.hex(),
                         payout_id=payout_id_of((burn_hex,)) if burn_hex else f"gap-fill:{tx.nonce}",
                         source_chain=self.chain.caip2, role=ROLE_COSIGNED, burn_ids=[burn_hex] if burn_hex else [],
                         inputs=[_input_of(self.custody_account, tx.nonce)],
                         fee=self.params.gas_limit * tx.max_fee_per_gas, proposal=proposal.to_bytes().hex())
        t.record_event(PAYOUT_COSIGNED, detail, proposal.burn_id)
        if proposal.burn_id is None:
            return
        # Keep this node's own ledger in agreement, so that if it coordinates next it proposes the
        # nonce it co-signed. Safety does not depend on it (the archive row above does), so a ledger
        # that cannot follow is reported, not a reason to refuse.
        try:
            ledger = self._ledger(t, self.custody_account)
            purpose = payout_purpose(proposal.burn_id)
            if ledger.nonce_of(purpose) != tx.nonce:
                ledger.adopt(purpose, tx.nonce)
                self._save(t, ledger)
        except NonceError as exc:
            log_event(log, logging.WARNING, "co-signed payout not adopted by this node's ledger", node=self.node_id,
                      burn_id=burn_hex, nonce=tx.nonce, error=str(exc))

    def _refuse(self, proposal: EvmProposal | None, detail: dict[str, Any], code: str, reason: str
                ) -> tuple[bool, str]:
        burn_id = proposal.burn_id if proposal is not None else None
        try:
            with self.db.transaction() as t:
                t.record_event(PAYOUT_REFUSED, {**detail, "code": code, "reason": reason[:1000]}, burn_id)
        except Exception as exc:  # the refusal stands even if it cannot be recorded
            log_event(log, logging.ERROR, "EVM refusal not recorded", error=type(exc).__name__)
        log_event(log, logging.WARNING, "EVM proposal refused", node=self.node_id, code=code, reason=reason[:500])
        return False, f"bridge: {code}: {reason}"

    # -- status

    def status(self) -> dict[str, Any]:
        """(worker thread) The custody ledger in brief, for the runtime's status."""
        try:
            ledger = self.ledger()
        except (ValueError, NonceError) as exc:
            return {"custody": self.custody.address, "ledger": f"unreadable: {exc}"}
        if ledger is None:
            return {"custody": self.custody.address, "ledger": None}
        return {"custody": self.custody.address, "confirmed_nonce": ledger.confirmed_count,
                "next_nonce": ledger.next_nonce,
                "live": [{"nonce": s.nonce, "owner": s.owner, "variants": len(s.signed)} for s in ledger.slots()]}


def route_authorize(sides: Sequence[EvmPayoutSide]) -> Callable[[peer_pb2.SessionProposal, EvmPayoutRequest],
                                                                 tuple[bool, str]]:
    """One authorize hook for every EVM side: the proposal's chain id picks the side (the node's
    ``BridgeAuthorizer.withdrawal_hooks`` has one hook per request type)."""
    by_chain = {s.params.chain_id: s for s in sides}

    def hook(proposal_pb: peer_pb2.SessionProposal, request: EvmPayoutRequest) -> tuple[bool, str]:
        chain_id = proposal_chain_id(request.proposal)
        side = by_chain.get(chain_id) if chain_id is not None else None
        if side is None:
            if chain_id is None and len(by_chain) == 1:  # one side: let it refuse (and record) the bytes
                return next(iter(by_chain.values())).authorize(proposal_pb, request)
            return False, ("bridge: malformed: EVM proposal does not decode" if chain_id is None
                           else f"bridge: unknown_chain: this node pays nothing on chain {chain_id}")
        return side.authorize(proposal_pb, request)

    return hook
