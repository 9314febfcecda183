"""The withdrawal side's edges: burns in, payouts and refunds out, and every participant's checks.

:class:`~fusion_prime.bridge.withdrawals.WithdrawalMachine` decides *what* should happen to each
burn; this module makes it happen on this node's own endpoints and database, and decides, as a
participant, whether this node co-signs what another node's machine asked for.

* **Burns** come from the destination chain's Gateway through :class:`BurnFollower` (at depth;
  a nonce gap makes the machine ask for a range rescan). Every node follows them, coordinator or
  not: a node must know what is paid to refuse paying it twice.
* **Custody coins** (Bitcoin) are the outputs of *minted* deposits — learned from the Gateway's
  ``Minted`` logs, so every node knows the same coins whether or not the deposit address was
  registered with it — and the change of confirmed payouts. Whether a coin is still unspent is
  asked of this node's own ``gettxout`` every time (:class:`BtcPayoutView`).
* **Coordinating.** The committee member ranked first for an asset coordinates its payouts; the
  next takes over when a payable burn waited ``payout_takeover_seconds`` per rank. A takeover is
  safe because two signing sets of a ``t+1 > n/2`` committee always share a node, and every node
  archives each payout it co-signs before it signs and refuses any *other* payout of a burn
  pending in one (``payouts.check_payout``): a second payout of one burn can never be signed.
  The daemon refuses to run payouts for a committee without that property.
* **Payouts.** ``BuildPayout`` → the plan (``payouts.plan_payout``; for a retry the *archived* plan
  of the same payout id, so a re-signature after a failed session is the identical transaction;
  for a bump ``payouts.bump_payout`` of the current variant) → archived → one sign session per
  input (digest = its BIP143 sighash, path = the spent coin's path, ``client_request`` = the whole
  proposal) → ``finalize_payout`` → ``PayoutSigned``; ``Broadcast`` → ``sendrawtransaction``;
  every variant of every unconfirmed payout is looked up each step (``PayoutDepth``).
* **As a participant** (:class:`WithdrawalAuthorizer`): a payout input is co-signed only if this
  node rebuilds the byte-identical transaction (``payouts.check_payout_input``) and the asset stays
  solvent after it (``reserves.after_payout``); the plan is archived and a ``payout-cosigned`` event
  written in the same database transaction as the decision. A refund is co-signed only for a burn
  this node knows at depth, that its own rules say cannot be paid, that is in no payout it knows,
  with the burn's exact facts, the Gateway's current signer epoch and a deadline in range.
* **Solvency.** Every ``SOLVENCY_EVERY`` steps each asset's custody (unspent custody coins) is
  compared with its liabilities (the Gateway's supply + burns in flight); an insolvent asset is
  refused every mint and payout by this node's hook, reported, and the Gateway is paused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol

import trio
from web3 import Web3

from fusion_prime.node.logs import log_event
from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.hd import derive, parse_path
from fusion_prime.signer.bitcoin import p2wpkh_script

from . import db as dbm
from .chains.bitcoin.rpcclient import BitcoinRPC, BitcoinRPCError
from .config import BridgeConfig, SourceChain
from .custody import CUSTODY_PURPOSE, CustodyAddress, custody_address
from .derivation import DerivationError, deposit_address, is_deposit_path
from .orders import RefundOrder, burn_id, chain_key, checksum_address, encode_signature, recover_signer
from .payouts import (
    BtcPayoutParams,
    BurnFacts,
    CustodyCoin,
    PayoutBurn,
    PayoutError,
    PayoutPlan,
    PayoutProposal,
    RefundableBurn,
    bump_payout,
    check_payout_input,
    decode_destination,
    finalize_payout,
    minimum_bump_rate,
    payout_value,
    plan_payout,
    round_fee_rate,
)
from .requests import AttestationRequest, PayoutInputRequest, RefundRequest, encode
from .reserves import (
    AssetPlan,
    Challenge,
    GatewayRef,
    InFlightWithdrawal,
    ReserveAddress,
    SolvencyInputs,
    SolvencyVerdict,
    Web3Reader,
    address_of,
    after_payout,
    attestation_digest,
    build_report,
    check_solvency,
    latest_challenge,
)
from .watchers import BurnFollower, MintedOutput
from .withdrawals import (
    RETURNED,
    RETURNING,
    Action,
    Alert,
    Broadcast,
    BuildPayout,
    Burn,
    BurnSeen,
    Observation,
    PayoutBroadcast,
    PayoutDepth,
    PayoutFailed,
    PayoutFound,
    PayoutSigned,
    ProposeRefund,
    Record,
    RefundFailed,
    RefundSigned,
    RelayRefund,
    RescanBurns,
    Tick,
    WithdrawalConfig,
    WithdrawalMachine,
    burn_key,
    payout_id_of,
)

log = logging.getLogger("fusion_prime.bridge.withdrawals")

SNAPSHOT_META = "withdrawal-state:"
BURN_CURSOR_META = "burn-cursor"
PAYOUT_COSIGNED = "payout-cosigned"
PAYOUT_REFUSED = "payout-refused"
REFUND_COSIGNED = "refund-cosigned"
REFUND_REFUSED = "refund-refused"
ATTESTATION_COSIGNED = "attestation-cosigned"
ATTESTATION_REFUSED = "attestation-refused"
#: a proof-of-reserves challenge (a destination block) at most this many blocks below the head
MAX_CHALLENGE_AGE = 64
SOLVENCY_EVERY = 10
#: consecutive short reads (SOLVENCY_EVERY steps apart) before this node halts anything
INSOLVENT_READS = 3
#: sign sessions of one payout run at most this many at a time (the presignature pool and the
#: per-key queue do the rest)
PAYOUT_SIGN_CONCURRENCY = 8
#: a participant's verdict on one proposal is reused for its other inputs this long
VERDICT_TTL = 30.0

SignFn = Callable[..., Awaitable[Any]]


def btc_params(chain: SourceChain, network: str) -> BtcPayoutParams:
    w = chain.withdrawals
    assert w is not None
    return BtcPayoutParams(network=network, withdrawal_fee=w.withdrawal_fee, max_fee_rate=Decimal(w.max_fee_rate),
                           fee_band=Decimal(str(w.fee_band)), min_input_confirmations=w.min_input_confirmations,
                           max_batch=w.max_batch)


def classify_burn(chain: SourceChain, params: BtcPayoutParams | None) -> Callable[[Burn], str | None]:
    """The refund rule every node applies identically: None for a payable burn, else why not."""

    def classify(burn: Burn) -> str | None:
        if chain.withdrawals is None or params is None:
            return f"unpayable: payouts on {chain.caip2} are not enabled"
        try:
            payout_value(PayoutBurn(burn_key(burn.burn_id), burn.nonce, burn.amount, burn.destination), params)
        except RefundableBurn as exc:
            code = "below_minimum" if type(exc).__name__ == "BelowMinimum" else "unpayable"
            return f"{code}: {exc}"
        except PayoutError as exc:
            return f"unpayable: {exc}"
        return None

    return classify


def payout_solvency(inputs: SolvencyInputs, burned: int, account_paid: int, spent: int) -> SolvencyVerdict:
    """``after_payout`` for a payout that may pay settlement-account withdrawals as well as burns.

    An account withdrawal was never wrapped supply: what it pays is owed by the settlement ledger
    (``inputs.ledger``: balances plus pending withdrawals), not burned and in flight. So its amount
    moves from the ledger's figure to the in-flight one before ``after_payout`` judges the payout;
    a ledger figure that does not even hold it is refused - the books cannot explain the payout."""
    if account_paid:
        if inputs.ledger < account_paid:
            return SolvencyVerdict(False, inputs.custody, inputs.liabilities, inputs.liabilities - inputs.custody,
                                   f"{inputs.asset}: pays account withdrawals of {account_paid} but the settlement "
                                   f"ledger owes only {inputs.ledger}")
        inputs = dataclasses.replace(inputs, in_flight=inputs.in_flight + account_paid,
                                     ledger=inputs.ledger - account_paid)
    return after_payout(inputs, burned + account_paid, spent)


def _account_burn_facts(r: dbm.Reader, burn_id: bytes, asset: str, chain: str) -> BurnFacts | None:
    """A settlement-account withdrawal as a payout's burn: the row this node wrote from its *own*
    ledger replica (``settlement/payouts_link.py``). That the replica still has it pending with
    exactly these terms is checked before any rebuild (``WithdrawalAuthorizer.account_terms``)."""
    row = r.get_account_withdrawal(burn_id)
    if row is None or row["asset"].lower() != asset.lower() or row["source_chain"] != chain:
        return None
    pending = _payouts_of(r, chain, "0x" + burn_id.hex())
    return BurnFacts(nonce=int(row["burn_nonce"]), amount=int(row["amount"]),
                     destination=bytes.fromhex(row["destination"]), final=True,
                     refunded=row["state"] in (RETURNING, RETURNED),
                     paid_or_pending_in=pending[-1]["txid"] if pending else None)


def account_status_row(m: WithdrawalMachine, burn_id: str) -> dict[str, Any]:
    """What an account withdrawal's ``account_withdrawals`` row mirrors of the machine (its terms
    are written once, by ``payouts_link.observe``, from the ledger replica)."""
    w = m.withdrawals[burn_id]
    return dict(burn_id=burn_key(burn_id), state=w.state, payout_id=w.payout_id, txid=w.txid,
                confirmations=w.confirmations, required_confirmations=m.config.payout_confirmations,
                reason=(w.reason or "")[:2000])


class AccountCheck(Protocol):
    """The settlement ledger's side of a participant's payout checks (``payouts_link.AccountWithdrawals``)."""

    def check(self, burn_ids: Sequence[bytes]) -> tuple[str, str] | None:
        """(code, reason) if a payout of ``burn_ids`` must be refused for an account withdrawal in it."""
        ...


# ----------------------------------------------------------------------------- the node's view


class BtcPayoutView:
    """``payouts.PayoutView`` over this node's own Bitcoin endpoint and bridge database."""

    def __init__(self, *, chain: SourceChain, asset: str, rpc: BitcoinRPC, db: dbm.BridgeDB,
                 params: BtcPayoutParams, custody: CustodyAddress) -> None:
        assert chain.withdrawals is not None
        self.chain, self.asset, self.rpc, self.db, self.params = chain, asset, rpc, db, params
        self.custody = custody
        self.fallback = Decimal(chain.withdrawals.fallback_fee_rate)

    def tip_height(self) -> int:
        return self.rpc.get_block_count()

    def block_hash(self, height: int) -> str | None:
        try:
            return self.rpc.get_block_hash(height)
        except BitcoinRPCError:
            return None

    def burn(self, burn_id: bytes) -> BurnFacts | None:
        with self.db.read() as r:
            row = r.get_withdrawal(burn_id)
            if row is None:
                return _account_burn_facts(r, burn_id, self.asset, self.chain.caip2)
            if row["asset"].lower() != self.asset.lower():
                return None
            refunded = row["state"] in ("refund_signed", "refunded") or any(
                e.event == REFUND_COSIGNED for e in r.events(burn_id))
            pending = _payouts_of(r, self.chain.caip2, "0x" + burn_id.hex())
        return BurnFacts(nonce=int(row["burn_nonce"]), amount=int(row["amount"]),
                         destination=bytes.fromhex(row["destination"]), final=True, refunded=refunded,
                         paid_or_pending_in=pending[-1]["txid"] if pending else None)

    def custody_coins(self, view_height: int, exclude_reserved_except: str | None) -> Sequence[CustodyCoin]:
        with self.db.read() as r:
            rows = r.custody_coins(self.chain.caip2)
            reserved = {i for p in r.archived_payouts(self.chain.caip2) if p["txid"] != exclude_reserved_except
                        for i in p["inputs"]}
        tip = self.tip_height()
        coins = []
        for row in rows:
            if f"{row['txid']}:{row['vout']}" in reserved:
                continue
            out = self.rpc.call("gettxout", row["txid"], int(row["vout"]), True)
            if not out:
                continue  # spent (in a block or this node's mempool)
            conf = int(out.get("confirmations", 0))
            height = tip - conf + 1 if conf > 0 else None
            if height is not None and height > view_height:
                continue
            try:
                coins.append(CustodyCoin(txid=row["txid"], vout=int(row["vout"]), value=int(row["value"]),
                                         script_pubkey=p2wpkh_script(bytes.fromhex(row["public_key"])),
                                         path=tuple(row["path"]), public_key=bytes.fromhex(row["public_key"]),
                                         height=height))
            except PayoutError as exc:
                log_event(log, logging.ERROR, "custody coin unusable", coin=f"{row['txid']}:{row['vout']}",
                          error=str(exc))
        return coins

    def unspent_total(self) -> int:
        """What the group controls on this chain right now (for solvency): every known custody
        coin still unspent, mempool included (an unconfirmed payout's change counts)."""
        with self.db.read() as r:
            rows = r.custody_coins(self.chain.caip2)
        total = 0
        for row in rows:
            out = self.rpc.call("gettxout", row["txid"], int(row["vout"]), True)
            if out:
                total += int(row["value"])
        return total

    def fee_estimate(self) -> Decimal | None:
        try:
            est = self.rpc.call("estimatesmartfee", 2)
        except BitcoinRPCError:
            est = None
        rate = (est or {}).get("feerate")
        if rate is None:
            return self.fallback  # every node configures the same fallback (regtest has no estimates)
        return round_fee_rate(Decimal(str(rate)) * 100_000)  # BTC/kvB -> sat/vB

    def change_script(self) -> bytes:
        return p2wpkh_script(self.custody.public_key)

    def payout(self, txid: str) -> PayoutPlan | None:
        with self.db.read() as r:
            row = r.archived_payout(txid)
        if row is None or not row["proposal"]:
            return None
        try:
            return PayoutPlan.from_bytes(bytes.fromhex(row["proposal"]))
        except PayoutError:
            return None


def _payouts_of(r: dbm.Reader, chain: str, burn_id: str) -> list[dict[str, Any]]:
    """Archived payouts (oldest first) of ``chain`` that pay ``burn_id``."""
    return [p for p in r.archived_payouts(chain) if burn_id in p["burn_ids"]]


# ----------------------------------------------------------------------------- the participant


@dataclasses.dataclass
class AssetSide:
    """One wrapped asset's withdrawal side as both the runtime and the authorize hook see it."""

    chain: SourceChain
    asset: str
    params: BtcPayoutParams | None
    view: BtcPayoutView | None
    classify: Callable[[Burn], str | None]
    solvent: bool = True
    solvency_reason: str = ""
    #: ETH payouts on an EVM source chain (``bridge/evm_withdrawal.py``); None on Bitcoin
    evm: Any = None


class WithdrawalAuthorizer:
    """The checks a participant runs before co-signing a payout input or a refund."""

    def __init__(self, *, db: dbm.BridgeDB, sides: dict[str, AssetSide], gateway: Any, destination_chain_id: int,
                 gateway_address: str, signer_path: tuple[int, ...], node_id: str,
                 max_deadline_ahead: int, group_key: Point | None = None, chain_code: bytes = b"",
                 destination_chain: str = "", clock: Callable[[], float] = time.time) -> None:
        self.db, self.sides, self.gateway = db, sides, gateway
        self.group_key, self.chain_code, self.destination_chain = group_key, chain_code, destination_chain
        self.destination_chain_id, self.gateway_address = destination_chain_id, gateway_address
        self.signer_path, self.node_id, self.max_deadline_ahead, self.clock = (
            signer_path, node_id, max_deadline_ahead, clock)
        self._lock = threading.Lock()  # one payout decision at a time: archive-then-sign is atomic
        self._verdicts: dict[bytes, tuple[float, PayoutPlan]] = {}
        #: the settlement ledger's check of account withdrawals in a payout (``payouts_link``); None:
        #: no ledger here, and every payout naming an account withdrawal is refused
        self.accounts: AccountCheck | None = None
        #: destination blocks through which this node has processed every Minted / Burned log
        #: (-1: not yet); solvency reads the supply at the lower one (see solvency_inputs)
        self.minted_through = -1
        self.burned_through = -1
        #: the settlement ledger's liabilities (``set_ledger_liabilities``); None: no ledger here
        self.ledger_liabilities: Callable[[], dict[str, int]] | None = None
        self._ledger_seen: dict[str, int] = {}  # its last answer (see ledger_owed)
        self._ledger_read = False

    # -- the settlement ledger's liabilities (issue 16)
    def set_ledger_liabilities(self, fn: Callable[[], dict[str, int]] | None) -> None:
        """Count what the settlement ledger owes in every solvency judgement of this node (the
        periodic check, the mint and payout co-signing checks, the EVM side's): ``fn()`` maps each
        ledger asset symbol (a source chain's ``symbol``) to its account balances plus its pending
        account withdrawals. Deposits credited to accounts are custody (``settlement/funding.py``),
        so without this they would look like surplus that a mint or a payout could use."""
        self.ledger_liabilities = fn

    def read_ledger(self) -> None:
        """Ask the ledger for its liabilities now (call it holding no database transaction)."""
        if self.ledger_liabilities is not None:
            self._ledger_seen = {k: int(v) for k, v in self.ledger_liabilities().items()}
            self._ledger_read = True

    def ledger_owed(self, side: AssetSide, reader: dbm.Reader, *, fresh: bool = True) -> int:
        """What the ledger owes in ``side``'s asset that is still in custody: ``fn()``'s figure less
        the account withdrawals whose payout is broadcast (like a burn, one stops counting once its
        payout is in this node's mempool: custody, read with the mempool, has already dropped; it
        leaves the ledger's pending withdrawals only when the payout's depth is reported in a
        batch). An unreadable ledger raises: solvency unknown, never guessed.

        ``fresh=False`` (a caller inside a database transaction) uses ``fn``'s last answer instead
        of asking again: the ledger's runtime holds its own lock while it writes a batch to this
        database, so asking it while holding the database's write lock could deadlock. The last
        answer is at most one solvency check old, and the ledger's total moves only by credits
        (whose deposits are custody already) and by paid withdrawals (whose payouts already left
        custody), so a stale figure errs by amounts custody has or no longer owes."""
        if self.ledger_liabilities is None:
            return 0
        if fresh:
            self.read_ledger()
        elif not self._ledger_read:
            raise RuntimeError("the settlement ledger's liabilities have not been read yet")
        owed = self._ledger_seen.get(side.chain.symbol, 0)
        if owed <= 0:
            return 0
        table = getattr(dbm, "account_withdrawals", None)
        if table is not None:
            # broadcast or confirmed here, and still pending in the replica as this node last read it
            # (payouts_link keeps ledger_status; a confirmed payout leaves the ledger's pending only
            # once its WithdrawalPaid is applied)
            rows = reader.conn.execute(dbm.sa.select(table.c.amount).where(
                (table.c.ledger_asset == side.chain.symbol) & table.c.state.in_(("broadcast", "confirmed"))
                & (table.c.ledger_status == "pending"))).all()
            owed -= sum(int(row[0]) for row in rows)
        return max(0, owed)

    def _side_of_burn(self, burn_id: bytes) -> AssetSide | None:
        with self.db.read() as r:
            row = r.get_withdrawal(burn_id) or r.get_account_withdrawal(burn_id)
        if row is None:
            return None
        return next((s for s in self.sides.values() if s.asset.lower() == row["asset"].lower()), None)

    # -- payout inputs
    def payout_input(self, proposal_pb: peer_pb2.SessionProposal, request: PayoutInputRequest) -> tuple[bool, str]:
        s = proposal_pb.sign
        digest, path = bytes(s.digest), tuple(s.path)
        try:
            proposal = PayoutProposal.from_bytes(request.proposal)
        except PayoutError as exc:
            return False, f"bridge: malformed: payout proposal does not decode: {exc}"
        side = self._side_of_burn(proposal.burn_ids[0]) if proposal.burn_ids else None
        if side is None or side.view is None or side.params is None:
            return False, "bridge: unknown_burn: the payout's first burn is not a burn this node can pay"
        detail: dict[str, Any] = {"txid": proposal.txid, "input": request.input_index,
                                  "coordinator": proposal_pb.coordinator, "session_id": proposal_pb.session_id.hex()}
        account = self.account_terms(proposal.burn_ids)  # every input: the ledger may move meanwhile
        if account is not None:
            return self._refuse_payout(proposal, detail, *account)
        with self._lock:
            key = request.proposal
            cached = self._verdicts.get(key)
            now = self.clock()
            if cached is not None and now - cached[0] <= VERDICT_TTL:
                plan = cached[1]
                i = request.input_index
                ok = 0 <= i < len(plan.inputs) and digest == plan.sighash(i) and path == plan.inputs[i].path
                if not ok:
                    return self._refuse_payout(proposal, detail, "wrong_input",
                                               f"input {i}: digest or path is not this node's rebuild's")
                return True, ""
            try:
                verdict = check_payout_input(proposal, request.input_index, digest, path, side.view, side.params)
            except Exception as exc:  # an endpoint down or answering nonsense: refuse, never guess
                return self._refuse_payout(proposal, detail, "view_unavailable", f"{type(exc).__name__}: {exc}")
            if not verdict.ok or verdict.plan is None:
                return self._refuse_payout(proposal, detail, verdict.code, verdict.reason)
            plan = verdict.plan
            if not side.solvent:
                return self._refuse_payout(proposal, detail, "insolvent", side.solvency_reason)
            held = self._held(side, plan.burn_ids)
            if held is not None:
                return self._refuse_payout(proposal, detail, *held)
            solvency = self._solvency_after(side, plan)
            if solvency is not None:
                return self._refuse_payout(proposal, detail, "insolvent", solvency)
            with self.db.transaction() as tx:
                tx.archive_payout(txid=plan.txid, payout_id=payout_id_of(tuple("0x" + b.hex() for b in plan.burn_ids)),
                                  source_chain=side.chain.caip2, role="cosigned",
                                  burn_ids=["0x" + b.hex() for b in plan.burn_ids],
                                  inputs=[str(c) for c in plan.inputs], fee=plan.fee,
                                  proposal=plan.to_bytes().hex(), replaces=plan.replaces)
                for b in plan.burn_ids:
                    tx.record_event(PAYOUT_COSIGNED, {**detail, "fee": plan.fee}, b)
            self._verdicts = {k: v for k, v in self._verdicts.items() if now - v[0] <= VERDICT_TTL}
            self._verdicts[key] = (now, plan)
        log_event(log, logging.INFO, "payout co-signed", node=self.node_id, txid=plan.txid,
                  burns=len(plan.burn_ids), inputs=len(plan.inputs), fee=plan.fee,
                  coordinator=proposal_pb.coordinator)
        return True, ""

    def account_terms(self, burn_ids: Sequence[bytes]) -> tuple[str, str] | None:
        """Why a payout of ``burn_ids`` is refused for a settlement-account withdrawal in it: it is
        not pending in *this node's* ledger replica with the terms this node recorded (the
        coordinator's word counts for nothing), or there is no ledger here to ask."""
        try:
            if self.accounts is not None:
                return self.accounts.check(burn_ids)
            with self.db.read() as r:
                named = [b for b in burn_ids if r.get_account_withdrawal(b) is not None]
        except Exception as exc:  # the database or the ledger does not answer: no co-signature on a guess
            return "view_unavailable", f"account withdrawals unreadable: {type(exc).__name__}: {exc}"
        if named:
            return "no_ledger", f"account withdrawal 0x{named[0].hex()}: this node keeps no settlement ledger"
        return None

    def _held(self, side: AssetSide, burn_ids: Sequence[bytes]) -> tuple[str, str] | None:
        """Why this node pays none of ``burn_ids`` yet: the Gateway is paused (the guardian's or the
        solvency halt: nothing goes out), or a large burn is still inside its delay - judged by its
        block's timestamp on the destination chain, which every node reads the same."""
        if bool(self.gateway.functions.paused().call()):
            return "gateway_paused", "the Gateway is paused: no payout until it is unpaused"
        w = side.chain.withdrawals
        if w is None or not w.large_withdrawal:
            return None
        now = self.clock()
        with self.db.read() as r:
            rows = [r.get_withdrawal(b) for b in burn_ids]
            accounts = [r.get_account_withdrawal(b) for b in burn_ids]
        for account in accounts:  # judged by its ledger batch's time, the same at every node
            if account is None or int(account["amount"]) <= w.large_withdrawal:
                continue
            at = int(account["created_ms"]) // 1000
            if now < at + w.large_withdrawal_delay_seconds:
                return "held", (f"account withdrawal 0x{account['withdrawal_id'].hex()} ({account['amount']}) is "
                                f"above {w.large_withdrawal} and waits until {at + w.large_withdrawal_delay_seconds}")
        for row in rows:
            if row is None or int(row["amount"]) <= w.large_withdrawal:
                continue
            at = int(self.gateway.w3.eth.get_block(int(row["burn_block"]))["timestamp"])
            if now < at + w.large_withdrawal_delay_seconds:
                return "held", (f"burn nonce {row['burn_nonce']} ({row['amount']}) is above {w.large_withdrawal} and "
                                f"waits until {at + w.large_withdrawal_delay_seconds}")
        return None

    def gate_evm(self, hook: Callable[[peer_pb2.SessionProposal, Any], tuple[bool, str]]
                 ) -> Callable[[peer_pb2.SessionProposal, Any], tuple[bool, str]]:
        """The EVM participant hook behind the same pause and large-withdrawal rules as Bitcoin's."""
        from .evm_withdrawal import EvmProposal, EvmProposalError

        def gated(proposal_pb: peer_pb2.SessionProposal, request: Any) -> tuple[bool, str]:
            try:
                burn = EvmProposal.from_bytes(request.proposal).burn_id
            except (EvmProposalError, ValueError):
                burn = None  # malformed: the EVM hook refuses and records it
            if burn is not None:
                account = self.account_terms([bytes(burn)])
                if account is not None:
                    log_event(log, logging.WARNING, "payout refused", node=self.node_id, code=account[0],
                              reason=account[1])
                    return False, f"bridge: {account[0]}: {account[1]}"
                side = self._side_of_burn(bytes(burn))
                if side is not None:
                    try:
                        held = self._held(side, [bytes(burn)])
                    except Exception as exc:  # the destination does not answer: no co-signature on a guess
                        held = ("view_unavailable", f"{type(exc).__name__}: {exc}")
                    if held is not None:
                        log_event(log, logging.WARNING, "payout refused", node=self.node_id, code=held[0],
                                  reason=held[1])
                        return False, f"bridge: {held[0]}: {held[1]}"
            return hook(proposal_pb, request)

        return gated

    def _solvency_after(self, side: AssetSide, plan: PayoutPlan) -> str | None:
        assert side.view is not None
        try:
            inputs = self.solvency_inputs(side)
        except Exception as exc:  # the chains do not answer: no co-signature on a guess
            return f"solvency unknown: {type(exc).__name__}: {exc}"
        burned = account_paid = 0
        with self.db.read() as r:
            for b in plan.burn_ids:
                row = r.get_withdrawal(b)
                if row is not None:
                    burned += int(row["amount"])
                    continue
                account = r.get_account_withdrawal(b)
                account_paid += int(account["amount"]) if account is not None else 0
        spent = sum(c.value for c in plan.inputs) - (plan.change.value if plan.change is not None else 0)
        if plan.replaces is not None:
            return None  # a bump spends the same inputs: it moves only fee from change, within the cap
        verdict = payout_solvency(inputs, burned, account_paid, spent)
        return None if verdict.ok else verdict.reason

    def solvency_inputs(self, side: AssetSide, reader: dbm.Reader | None = None) -> SolvencyInputs:
        """Custody, supply and burns in flight now (``reader``: an open transaction to read through)."""
        assert side.chain.withdrawals is not None and (side.view is not None or side.evm is not None)
        # One snapshot for both sides: the supply is read at the block through which this node has
        # processed every Minted and every Burned log, and only burns up to it count as in flight;
        # otherwise a mint the follower has not reached yet is in the supply but its coin not in
        # custody (100 mints in a row once read as a shortfall and paused the Gateway).
        through = min(self.minted_through, self.burned_through)
        if through < 0:
            raise RuntimeError("the destination followers have not read a block yet")
        custody = side.view.unspent_total() if side.view is not None else side.evm.custody_total(reader)
        supply = int(self.gateway.functions.assetState(side.asset).call(block_identifier=through)[_SUPPLY_INDEX])
        # Owed and not yet leaving custody: a burn counts until its payout is broadcast (from
        # then on the spend is in this node's mempool, so custody - read with the mempool - has
        # already dropped) or its refund re-minted it (then it is supply again).
        query = dbm.sa.select(dbm.withdrawals).where(
            (dbm.withdrawals.c.asset == side.asset) & (dbm.withdrawals.c.burn_block <= through)
            & dbm.withdrawals.c.state.notin_(("broadcast", "confirmed", "refunded")))
        if reader is not None:
            rows = reader.conn.execute(query).all()
        else:
            with self.db.read() as r:
                rows = r.conn.execute(query).all()
        in_flight = sum(int(row._mapping["amount"]) for row in rows)
        if reader is not None:
            ledger = self.ledger_owed(side, reader, fresh=False)
        else:
            self.read_ledger()  # outside any database transaction: see ledger_owed
            with self.db.read() as r:
                ledger = self.ledger_owed(side, r, fresh=False)
        return SolvencyInputs(asset=side.chain.symbol, custody=custody, supply=supply, in_flight=in_flight,
                              tolerance=side.chain.withdrawals.solvency_tolerance, ledger=ledger)

    def _refuse_payout(self, proposal: PayoutProposal, detail: dict[str, Any], code: str, reason: str
                       ) -> tuple[bool, str]:
        try:
            with self.db.transaction() as tx:
                for b in proposal.burn_ids[:100]:
                    tx.record_event(PAYOUT_REFUSED, {**detail, "code": code, "reason": reason[:1000]}, b)
        except Exception as exc:  # the refusal stands even if it cannot be recorded
            log_event(log, logging.ERROR, "payout refusal not recorded", error=str(exc))
        log_event(log, logging.WARNING, "payout refused", node=self.node_id, txid=proposal.txid, code=code,
                  reason=reason[:500])
        return False, f"bridge: {code}: {reason}"

    # -- refunds
    def refund(self, proposal_pb: peer_pb2.SessionProposal, request: RefundRequest) -> tuple[bool, str]:
        order = request.order
        s = proposal_pb.sign
        detail: dict[str, Any] = {"order": order.to_dict(), "coordinator": proposal_pb.coordinator,
                                  "session_id": proposal_pb.session_id.hex()}
        bid = burn_id(self.destination_chain_id, self.gateway_address, order.burn_nonce)
        with self._lock:
            code, reason = self._check_refund(order, bytes(s.digest), bid)
            try:
                with self.db.transaction() as tx:
                    if code is None:
                        tx.record_event(REFUND_COSIGNED, detail, bid)
                    else:
                        tx.record_event(REFUND_REFUSED, {**detail, "code": code, "reason": reason}, bid)
            except Exception as exc:
                if code is None:
                    return False, f"bridge: refund not recorded: {exc}"
        log_event(log, logging.INFO if code is None else logging.WARNING,
                  "refund co-signed" if code is None else "refund refused", node=self.node_id,
                  burn=str(order.burn_nonce), code=code or "ok", reason=reason)
        return (True, "") if code is None else (False, f"bridge: {code}: {reason}")

    def _check_refund(self, order: RefundOrder, digest: bytes, bid: bytes) -> tuple[str | None, str]:
        if digest != order.digest(self.gateway_address, self.destination_chain_id):
            return "digest_mismatch", "the digest is not this refund's digest on this node's Gateway"
        with self.db.read() as r:
            row = r.get_withdrawal(bid)
            payouts = [p["txid"] for side in self.sides.values()
                       for p in _payouts_of(r, side.chain.caip2, "0x" + bid.hex())]
        if row is None:
            return "unknown_burn", f"burn nonce {order.burn_nonce} is not known at depth here"
        facts = (int(row["burn_nonce"]), row["asset"].lower(), row["burner"].lower(), int(row["amount"]))
        if facts != (order.burn_nonce, order.asset.lower(), order.burner.lower(), order.amount):
            return "wrong_terms", "the refund's asset, burner or amount differ from the burn"
        side = next((sd for sd in self.sides.values() if sd.asset.lower() == row["asset"].lower()), None)
        if side is None:
            return "unknown_burn", "the burn's asset is not one this node serves"
        burn = Burn(burn_id="0x" + bid.hex(), nonce=int(row["burn_nonce"]), asset=row["asset"], burner=row["burner"],
                    amount=int(row["amount"]), destination=bytes.fromhex(row["destination"]),
                    block=int(row["burn_block"]), tx_hash=row["burn_tx"])
        why = side.classify(burn)
        if why is None:
            return "payable", "this node can pay the burn; it is not refunded"
        if payouts:
            return "burn_in_payout", f"the burn is in payout {payouts[-1]}"
        epoch = int(self.gateway.functions.signerSchedule().call()[1])
        if order.signer_epoch != epoch:
            return "wrong_epoch", f"signer epoch {order.signer_epoch} is not the Gateway's {epoch}"
        now = int(self.clock())
        if not now < order.deadline <= now + self.max_deadline_ahead:
            return "deadline_out_of_range", (f"deadline {order.deadline} is not within "
                                             f"({now}, {now + self.max_deadline_ahead}]")
        return None, why


    # -- proof-of-reserves attestations
    def attestation(self, proposal_pb: peer_pb2.SessionProposal, request: AttestationRequest) -> tuple[bool, str]:
        code, reason = self._check_attestation(request, bytes(proposal_pb.sign.digest), tuple(proposal_pb.sign.path))
        detail = {"chain": request.chain, "path": list(request.path), "challenge_height": request.challenge_height,
                  "coordinator": proposal_pb.coordinator}
        try:
            self.db.record_event(ATTESTATION_COSIGNED if code is None else ATTESTATION_REFUSED,
                                 {**detail, **({} if code is None else {"code": code, "reason": reason})})
        except Exception as exc:
            if code is None:
                return False, f"bridge: attestation not recorded: {exc}"
        return (True, "") if code is None else (False, f"bridge: {code}: {reason}")

    def _check_attestation(self, r: AttestationRequest, digest: bytes, path: tuple[int, ...]) -> tuple[str | None, str]:
        if self.group_key is None:
            return "not_configured", "this node has no group key for attestations"
        if path != r.path:
            return "wrong_path", "the session's path is not the attested address's path"
        if not ((len(path) == 2 and path[0] == CUSTODY_PURPOSE) or is_deposit_path(path)):
            return "not_a_reserve_address", f"path {path} is neither a custody nor a deposit path"
        if r.chain not in {side.chain.caip2 for side in self.sides.values()}:
            return "unknown_chain", f"{r.chain} is not a source chain of this bridge"
        if r.challenge_chain != self.destination_chain:
            return "wrong_challenge_chain", f"challenges are blocks of {self.destination_chain}"
        w3 = self.gateway.w3
        head = int(w3.eth.block_number)
        if not 0 <= head - r.challenge_height <= MAX_CHALLENGE_AGE:
            return "stale_challenge", f"block {r.challenge_height} is not within {MAX_CHALLENGE_AGE} of the head {head}"
        if bytes(w3.eth.get_block(r.challenge_height)["hash"]) != r.challenge_hash:
            return "unknown_challenge", f"block {r.challenge_height} has another hash here"
        child = derive(self.group_key, self.chain_code, path).public_key
        address = address_of(r.chain, child)
        challenge = Challenge(r.challenge_chain, r.challenge_height, "0x" + r.challenge_hash.hex())
        if digest != attestation_digest(challenge, r.chain, address):
            return "digest_mismatch", "the digest is not the attestation of the address this node derives"
        return None, address


_SUPPLY_INDEX = 0  # Gateway.assetState(asset) -> (supply, mintRemaining, burnRemaining, configVersion)


# ----------------------------------------------------------------------------- the runtime


@dataclasses.dataclass
class StepWrite:
    """What one machine step writes: taken from the machine inside the loop (under its lock), written
    in one database transaction - the status rows of every withdrawal it touched (a Gateway burn's
    in ``withdrawals``, an account withdrawal's in ``account_withdrawals``), its audit events and
    alerts, and the machine's snapshot, so a restart resumes from exactly the rows it shows."""

    asset: str
    snapshot: str
    rows: list[dict[str, Any]]
    accounts: list[dict[str, Any]]
    records: list[Record]
    alerts: list[Alert]

    @classmethod
    def of(cls, m: WithdrawalMachine, asset: str, actions: Sequence[Action]) -> StepWrite:
        snapshot = json.dumps(m.to_dict(), sort_keys=True, separators=(",", ":"))
        rows: list[dict[str, Any]] = []
        accounts: list[dict[str, Any]] = []
        touched = {a.burn_id for a in actions if isinstance(a, Record)}
        for bid in touched:
            w = m.get(bid)
            if w is None:
                continue
            if w.burn.is_account:
                accounts.append(account_status_row(m, bid))
                continue
            rows.append(dict(burn_id=burn_key(bid), asset=asset, source_chain=m.config.source_chain,
                             burn_nonce=w.burn.nonce, burner=w.burn.burner, amount=w.burn.amount,
                             destination=w.burn.destination.hex(), burn_block=w.burn.block, burn_tx=w.burn.tx_hash,
                             state=w.state, payout_id=w.payout_id, txid=w.txid, confirmations=w.confirmations,
                             required_confirmations=m.config.payout_confirmations, refund_tx=w.refund_tx,
                             reason=(w.reason or "")[:2000]))
        return cls(asset, snapshot, rows, accounts, [a for a in actions if isinstance(a, Record)],
                   [a for a in actions if isinstance(a, Alert)])

    def write(self, tx: dbm.Transaction) -> None:
        for row in self.rows:
            tx.put_withdrawal(row)
        for row in self.accounts:  # written first by payouts_link.observe, with the ledger's terms
            if tx.get_account_withdrawal(row["burn_id"]) is not None:
                tx.put_account_withdrawal(row)
            else:
                log_event(log, logging.ERROR, "account withdrawal has no row", burn_id=row["burn_id"].hex())
        for rec in self.records:
            tx.record_event("withdrawal-" + rec.new_state, {"from": rec.old_state, "detail": rec.detail},
                            burn_key(rec.burn_id))
        for a in self.alerts:
            tx.record_event("bridge-alert", {"severity": a.severity, "message": a.message},
                            burn_key(a.burn_id) if a.burn_id else None)
        tx.put_derived_meta(SNAPSHOT_META + self.asset, self.snapshot)


class WithdrawalRuntime:
    """One node's withdrawal edge loop; :meth:`step` runs inside the bridge runtime's loop."""

    def __init__(self, cfg: BridgeConfig, *, db: dbm.BridgeDB, sign: SignFn, node_id: str, committee: Sequence[str],
                 group_key: Point, chain_code: bytes, destination: Web3, gateway: Any, bitcoin: BitcoinRPC | None,
                 authorizer: WithdrawalAuthorizer, relay: Callable[[Any], str] | None,
                 alert: Callable[[str, str, str | None], None], pause: Callable[[str], Awaitable[None]],
                 clock: Callable[[], float] = time.time) -> None:
        assert cfg.key_id is not None and cfg.gateway is not None
        self.cfg, self.db, self.sign_fn, self.node_id = cfg, db, sign, node_id
        self.committee = sorted(committee)
        self.group_key, self.chain_code = group_key, chain_code
        self.destination, self.gateway, self.bitcoin = destination, gateway, bitcoin
        self.authorizer, self.relay, self.alert, self.pause, self.clock = authorizer, relay, alert, pause, clock
        self.sides = authorizer.sides
        self.machines: dict[str, WithdrawalMachine] = {}
        for asset, side in self.sides.items():
            w = side.chain.withdrawals
            wcfg = WithdrawalConfig(
                asset=asset, source_chain=side.chain.caip2, classify=side.classify,
                payout_confirmations=w.payout_confirmations if w else 1,
                max_batch=(1 if side.evm is not None else w.max_batch) if w else 1,
                batch_wait=w.batch_wait_seconds if w else 0,
                stuck_after=w.stuck_after_seconds if w else 600, retry_after=max(1, int(cfg.retry_seconds * 5)),
                hold_above=w.large_withdrawal if w else 0, hold_seconds=w.large_withdrawal_delay_seconds if w else 0)
            raw = db.get_meta(SNAPSHOT_META + asset)
            self.machines[asset] = (WithdrawalMachine.from_dict(json.loads(raw), wcfg) if raw
                                    else WithdrawalMachine(wcfg))
        cursor = db.get_meta(BURN_CURSOR_META)
        start = max(0, int(cursor) - 64) if cursor else 0
        self.burns = BurnFollower(destination, cfg.gateway, confirmations=cfg.destination_confirmations,
                                  start_block=start)
        self._lock = trio.Lock()
        self._in_flight: set[tuple[str, str]] = set()  # (kind, id) of builds/refunds/broadcasts running
        self._steps = 0
        self._nursery: trio.Nursery | None = None
        self._paused_for: set[str] = set()
        self._short: dict[str, int] = {}  # asset -> consecutive insolvent reads
        self._scanned: dict[str, int] = {}  # chain -> last block searched for payouts by others
        self._mempool_seen: set[str] = set()
        self._mempool_at = 0.0
        #: observations posted from other threads (settlement-account withdrawals), fed each step
        self._inbox: list[tuple[str, Observation]] = []
        self._inbox_lock = threading.Lock()
        #: (asset, txid) said to pay a withdrawal this node has not seen paid: looked up each step
        self._hints: set[tuple[str, str]] = set()
        #: the settlement ledger's link (``payouts_link.AccountWithdrawals``), reconciled each step
        self.accounts: Any = None
        #: told of every solvency judgement (asset, inputs, verdict) on the trio thread - the explorer
        #: records reserves against supply over time; it must return at once (no I/O)
        self.on_solvency: Callable[[str, SolvencyInputs, SolvencyVerdict], None] | None = None

    @property
    def minted_through(self) -> int:
        return self.authorizer.minted_through

    @minted_through.setter
    def minted_through(self, height: int) -> None:
        self.authorizer.minted_through = height

    def set_ledger_liabilities(self, fn: Callable[[], dict[str, int]] | None) -> None:
        """The settlement ledger's liabilities, counted by this side's solvency (see
        :meth:`WithdrawalAuthorizer.set_ledger_liabilities`)."""
        self.authorizer.set_ledger_liabilities(fn)

    # -- coordination
    def rank(self, asset: str) -> int:
        start = int(Web3.keccak(text=asset.lower()).hex().removeprefix("0x")[:8], 16) % len(self.committee)
        return (self.committee.index(self.node_id) - start) % len(self.committee)

    def _update_coordination(self, asset: str, now: int) -> None:
        m = self.machines[asset]
        side = self.sides[asset]
        takeover = side.chain.withdrawals.payout_takeover_seconds if side.chain.withdrawals else 60.0
        r = self.rank(asset)
        if r == 0:
            m.coordinating = True
            return
        waiting = [w.observed_at for w in m.withdrawals.values() if w.state in ("queued", "refunding")]
        m.coordinating = bool(waiting) and now - min(waiting) >= r * takeover

    def post(self, asset: str, obs: Observation) -> None:
        """(any thread) Hand ``obs`` to ``asset``'s machine at the next step: how the settlement
        ledger's account withdrawals (and what the ledger did with them) reach the machine."""
        with self._inbox_lock:
            self._inbox.append((asset, obs))

    async def _drain_inbox(self) -> None:
        with self._inbox_lock:
            posted, self._inbox = self._inbox, []
        for asset, obs in posted:
            if asset in self.machines:
                await self.feed(asset, obs)

    def hint_payout(self, asset: str, txid: str) -> None:
        """(any thread) ``txid`` is said to pay a withdrawal of ``asset`` that this node has not seen
        paid (a ``WithdrawalPaid`` in a ledger batch): look it up on this node's *own* chain at the
        next step. The block scan starts a few blocks below the tip after a restart, so a payout
        made while this node was down would otherwise stay unseen - and its ledger stalled on it."""
        with self._inbox_lock:
            if len(self._hints) < 1000:
                self._hints.add((asset, txid))

    async def _follow_hints(self) -> None:
        with self._inbox_lock:
            hints, self._hints = self._hints, set()
        for asset, txid in sorted(hints):
            side, m = self.sides.get(asset), self.machines.get(asset)
            if side is None or m is None:
                continue
            try:
                if side.evm is not None:
                    candidates = [w.burn for w in m.withdrawals.values()
                                  if w.state in ("observed", "queued", "signing", "signed", "broadcast")]
                    found = await trio.to_thread.run_sync(side.evm.found_payout, txid, candidates)
                    if found is not None:
                        await self.feed(asset, found)
                elif side.view is not None and self.bitcoin is not None:
                    spender = await trio.to_thread.run_sync(self._custody_spender, side, txid)
                    if spender is not None:
                        await self._adopt(asset, side, *spender)
            except Exception as exc:  # not on this node's chain (yet), an endpoint hiccup: asked again later
                log_event(log, logging.INFO, "payout hint not followed", node=self.node_id, txid=txid,
                          error=f"{type(exc).__name__}: {exc}"[:300])

    def _custody_spender(self, side: AssetSide, txid: str) -> tuple[dict[str, Any], int] | None:
        """(worker thread) ``txid`` from this node's own endpoint, if it spends a custody coin and is
        not archived here (otherwise the usual paths know it), with its confirmations."""
        assert self.bitcoin is not None
        with self.db.read() as r:
            if r.archived_payout(txid) is not None:
                return None
            coins = {f"{c['txid']}:{c['vout']}" for c in r.custody_coins(side.chain.caip2)}
        tx = self.bitcoin.get_raw_transaction(txid, True)
        if not any(f"{i.get('txid')}:{i.get('vout')}" in coins for i in tx.get("vin", []) if "txid" in i):
            return None
        return tx, int(tx.get("confirmations", 0) or 0)

    # -- the loop
    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        now = int(self.clock())
        for asset, m in self.machines.items():
            self._update_coordination(asset, now)
            async with self._lock:
                actions = m.resume_actions(now)
                await self._persist(asset, actions)
            self._execute(asset, actions)

    async def step(self) -> None:
        self._steps += 1
        now = int(self.clock())
        routed, _, warnings = await trio.to_thread.run_sync(self.burns.poll)
        for w in warnings:
            self.alert("critical", w, None)
        await self._prefetch(routed)
        for r in routed:
            if r.asset in self.machines:
                await self.feed(r.asset, r.observation)
        if self.accounts is not None:
            try:
                await trio.to_thread.run_sync(self.accounts.reconcile)
            except Exception as exc:  # the ledger not running yet, the database: next step again
                log_event(log, logging.WARNING, "account withdrawals not reconciled", node=self.node_id,
                          error=f"{type(exc).__name__}: {exc}"[:300])
        await self._drain_inbox()
        self.authorizer.burned_through = self.burns.follower._confirmed_upto
        for asset in self.machines:
            self._update_coordination(asset, now)
        await self._learn_cosigned()
        await self._scan_for_payouts()
        await self._follow_hints()
        await self._watch_payouts()
        if self._steps % SOLVENCY_EVERY == 1:
            await self._check_solvency()
        for asset in self.machines:
            await self.feed(asset, Tick())
        for asset, side in self.sides.items():
            if side.evm is not None:
                m = self.machines[asset]
                await side.evm.maintain(coordinating=m.coordinating)
                if m.coordinating and side.solvent:
                    await side.evm.sweep_due()
        head = await trio.to_thread.run_sync(lambda: int(self.destination.eth.block_number))
        await trio.to_thread.run_sync(self._save_cursor, head)

    def _save_cursor(self, head: int) -> None:
        with self.db.transaction() as tx:
            tx.put_derived_meta(BURN_CURSOR_META, str(head))

    async def feed(self, asset: str, obs: Observation) -> list[Action]:
        async with self._lock:
            m = self.machines[asset]
            actions = m.handle(obs, int(self.clock()))
            if actions or not isinstance(obs, Tick):
                await self._persist(asset, actions)
        self._execute(asset, actions)
        return actions

    async def _persist(self, asset: str, actions: list[Action]) -> None:
        step = StepWrite.of(self.machines[asset], asset, actions)

        def write() -> None:
            with self.db.transaction() as tx:
                step.write(tx)

        await trio.to_thread.run_sync(write)
        for a in step.alerts:
            self.alert(a.severity, a.message, a.burn_id)

    def _execute(self, asset: str, actions: list[Action]) -> None:
        assert self._nursery is not None
        for a in actions:
            if isinstance(a, BuildPayout):
                self._spawn(("build", a.payout_id + (a.replaces or "")), self._build_payout, asset, a)
            elif isinstance(a, Broadcast):
                self._spawn(("broadcast", a.txid), self._broadcast, asset, a)
            elif isinstance(a, ProposeRefund):
                self._spawn(("refund", a.burn_id), self._sign_refund, asset, a)
            elif isinstance(a, RelayRefund):
                self._spawn(("relay", a.burn_id), self._relay_refund, asset, a)
            elif isinstance(a, RescanBurns):
                self._spawn(("rescan", str(a.from_block)), self._rescan, a)

    def _spawn(self, key: tuple[str, str], fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if key in self._in_flight or self._nursery is None:
            return
        self._in_flight.add(key)

        async def run() -> None:
            try:
                await fn(*args)
            except Exception as exc:  # one failed action must not end the bridge
                log_event(log, logging.ERROR, "withdrawal action failed", node=self.node_id, action=key[0],
                          error=f"{type(exc).__name__}: {exc}")
            finally:
                self._in_flight.discard(key)

        self._nursery.start_soon(run)

    # -- burns
    async def _prefetch(self, routed: list[Any]) -> None:
        """Warm each EVM side's destination-code cache before its classify runs on the loop."""
        for asset, side in self.sides.items():
            if side.evm is None:
                continue
            burns = [r.observation.burn for r in routed if r.asset == asset and isinstance(r.observation, BurnSeen)]
            if burns:
                await trio.to_thread.run_sync(side.evm.prefetch_code, burns)

    async def _rescan(self, a: RescanBurns) -> None:
        routed = await trio.to_thread.run_sync(self.burns.rescan, a.from_block)
        await self._prefetch(routed)
        for r in routed:
            if r.asset in self.machines:
                await self.feed(r.asset, r.observation)

    # -- custody coins
    def note_minted(self, asset: str, output: MintedOutput) -> None:
        """(worker thread) A ``Minted`` log at depth: its deposit output is now a custody coin."""
        side = self.sides.get(asset)
        if side is None or output.chain_key != chain_key(side.chain.caip2):
            return
        if side.evm is not None:
            side.evm.note_minted(output)
            return
        try:
            d = deposit_address(self.group_key, self.chain_code, side.chain.caip2, self.cfg.destination_chain,
                                output.recipient)
        except DerivationError as exc:
            log_event(log, logging.ERROR, "minted deposit has no deposit address", error=str(exc))
            return
        with self.db.transaction() as tx:
            tx.add_custody_coin(chain=side.chain.caip2, txid=output.txid, vout=output.vout, value=output.amount,
                                path=list(d.path), public_key=d.public_key.hex(), origin="deposit")

    def _note_change(self, side: AssetSide, plan: PayoutPlan) -> None:
        change = plan.change
        if change is None or side.view is None or change.script_pubkey != side.view.change_script():
            return
        with self.db.transaction() as tx:
            tx.add_custody_coin(chain=side.chain.caip2, txid=plan.txid, vout=len(plan.tx.vout) - 1,
                                value=change.value, path=list(side.view.custody.path),
                                public_key=side.view.custody.public_key.hex(), origin="change")

    # -- payouts
    async def _build_payout(self, asset: str, a: BuildPayout) -> None:
        side = self.sides[asset]
        if ((side.view is None or side.params is None) and side.evm is None) or self.cfg.key_id is None:
            await self.feed(asset, PayoutFailed(a.payout_id, "payouts are not enabled for this asset", a.replaces))
            return
        if not side.solvent:
            await self.feed(asset, PayoutFailed(a.payout_id, f"insolvent: {side.solvency_reason}", a.replaces))
            return
        if a.replaces is None and await trio.to_thread.run_sync(lambda: bool(self.gateway.functions.paused().call())):
            await self.feed(asset, PayoutFailed(a.payout_id, "the Gateway is paused", a.replaces))
            return
        if side.evm is not None:
            w = self.machines[asset].get(a.burn_ids[0])
            if w is None:
                await self.feed(asset, PayoutFailed(a.payout_id, "burn unknown to this node", a.replaces))
                return
            await self.feed(asset, await side.evm.build(a, w.burn))
            return
        try:
            plan, block_hash = await trio.to_thread.run_sync(self._plan, asset, side, a)
        except (PayoutError, BitcoinRPCError) as exc:
            await self.feed(asset, PayoutFailed(a.payout_id, f"{type(exc).__name__}: {exc}", a.replaces))
            return
        proposal = PayoutProposal.of(plan, block_hash)
        raw_proposal = proposal.to_bytes()
        sigs: list[Any] = [None] * len(plan.inputs)
        failures: list[str] = []
        limiter = trio.CapacityLimiter(PAYOUT_SIGN_CONCURRENCY)

        async def sign_input(i: int) -> None:
            async with limiter:
                outcome = await self.sign_fn(self.cfg.key_id, plan.sighash(i), plan.inputs[i].path,
                                             client_request=encode(PayoutInputRequest(i, raw_proposal)))
            if outcome.ok:
                sigs[i] = outcome.output
            else:
                failures.append(f"input {i}: {outcome.status}: {outcome.reason}"[:300])

        async with trio.open_nursery() as n:
            for i in range(len(plan.inputs)):
                n.start_soon(sign_input, i)
        if failures:
            log_event(log, logging.WARNING, "payout signing failed", node=self.node_id, txid=plan.txid,
                      failures=len(failures), first=failures[0])
            await self.feed(asset, PayoutFailed(a.payout_id, failures[0], a.replaces))
            return
        try:
            tx = finalize_payout(plan, sigs)
        except PayoutError as exc:
            await self.feed(asset, PayoutFailed(a.payout_id, f"signatures rejected: {exc}", a.replaces))
            return
        raw = tx.serialize().hex()
        await trio.to_thread.run_sync(self._archive_signed, plan, raw)
        await trio.to_thread.run_sync(self._note_change, side, plan)
        log_event(log, logging.INFO, "payout signed", node=self.node_id, txid=plan.txid, burns=len(plan.burns),
                  inputs=len(plan.inputs), fee=plan.fee, replaces=plan.replaces or "")
        await self.feed(asset, PayoutSigned(a.payout_id, plan.txid, raw, plan.fee, int(plan.fee_rate), a.replaces))

    def _plan(self, asset: str, side: AssetSide, a: BuildPayout) -> tuple[PayoutPlan, str]:
        """(worker thread) The plan to sign: a bump of the current variant, the archived plan of
        this payout (a retry re-signs the identical transaction), or a fresh one."""
        assert side.view is not None and side.params is not None
        view, params = side.view, side.params
        if a.replaces is not None:
            original = view.payout(a.replaces)
            if original is None:
                raise PayoutError(f"no archived payout {a.replaces} to bump")
            estimate = view.fee_estimate() or view.fallback
            rate = max(round_fee_rate(estimate), minimum_bump_rate(original, params))
            plan = bump_payout(original, rate, params)
        else:
            plan = self._archived_plan(side, a.payout_id) or self._fresh_plan(asset, side, a)
        block_hash = view.block_hash(plan.view_height)
        if block_hash is None:
            raise PayoutError(f"block {plan.view_height} is not in this node's best chain")
        self._archive_plan(side, a.payout_id, plan, role="coordinator")
        return plan, block_hash

    def _archived_plan(self, side: AssetSide, payout_id: str) -> PayoutPlan | None:
        with self.db.read() as r:
            rows = [p for p in r.archived_payouts(side.chain.caip2)
                    if p["payout_id"] == payout_id and p["replaces"] is None and p["proposal"]]
        for row in rows:
            try:
                return PayoutPlan.from_bytes(bytes.fromhex(row["proposal"]))
            except PayoutError:
                continue
        return None

    def _fresh_plan(self, asset: str, side: AssetSide, a: BuildPayout) -> PayoutPlan:
        assert side.view is not None and side.params is not None
        m = self.machines[asset]
        burns = []
        for bid in a.burn_ids:
            w = m.get(bid)
            if w is None:
                raise PayoutError(f"burn {bid} unknown to this node's machine")
            burns.append(PayoutBurn(burn_key(bid), w.burn.nonce, w.burn.amount, w.burn.destination))
        tip = side.view.tip_height()
        coins = side.view.custody_coins(tip, None)
        estimate = side.view.fee_estimate() or side.view.fallback
        return plan_payout(burns, coins, round_fee_rate(estimate), side.view.change_script(), side.params,
                           view_height=tip)

    def _archive_plan(self, side: AssetSide, payout_id: str, plan: PayoutPlan, *, role: str) -> None:
        with self.db.transaction() as tx:
            tx.archive_payout(txid=plan.txid, payout_id=payout_id, source_chain=side.chain.caip2, role=role,
                              burn_ids=["0x" + b.hex() for b in plan.burn_ids], inputs=[str(c) for c in plan.inputs],
                              fee=plan.fee, proposal=plan.to_bytes().hex(), replaces=plan.replaces)

    def _archive_signed(self, plan: PayoutPlan, raw: str) -> None:
        with self.db.transaction() as tx:
            row = tx.archived_payout(plan.txid)
            if row is not None:
                tx.archive_payout(txid=plan.txid, payout_id=row["payout_id"], source_chain=row["source_chain"],
                                  role=row["role"], burn_ids=[], inputs=[], fee=0, raw=raw)

    async def _broadcast(self, asset: str, a: Broadcast) -> None:
        side = self.sides[asset]
        if side.evm is not None and a.raw:
            ok, err = await trio.to_thread.run_sync(side.evm.broadcast, a.raw)
            log_event(log, logging.INFO if ok else logging.WARNING,
                      "payout broadcast" if ok else "payout broadcast failed", node=self.node_id, txid=a.txid,
                      error=err)
            await self.feed(asset, PayoutBroadcast(a.payout_id, a.txid, ok, err))
            return
        if self.bitcoin is None or not a.raw:
            return
        rpc = self.bitcoin

        def send() -> tuple[bool, str]:
            try:
                rpc.send_raw_transaction(a.raw)
                return True, ""
            except BitcoinRPCError as exc:
                text = str(exc)
                if "already" in text.lower() or "txn-already" in text:
                    return True, ""
                return False, text

        ok, err = await trio.to_thread.run_sync(send)
        log_event(log, logging.INFO if ok else logging.WARNING, "payout broadcast" if ok else "payout broadcast failed",
                  node=self.node_id, txid=a.txid, error=err)
        await self.feed(asset, PayoutBroadcast(a.payout_id, a.txid, ok, err))

    async def _watch_payouts(self) -> None:
        """Each variant of each unconfirmed payout: mined (depth), in the mempool (0) or unknown."""
        for asset, m in self.machines.items():
            side = self.sides[asset]
            if (side.view is None or self.bitcoin is None) and side.evm is None:
                continue
            variants = [(p.payout_id, v["txid"]) for p in m.payouts.values() if p.state != "confirmed"
                        for v in p.variants]
            if not variants:
                continue
            if side.evm is not None:
                depths = await trio.to_thread.run_sync(side.evm.depths, [t for _, t in variants])
                for (_pid, txid), depth in zip(variants, depths, strict=True):
                    await self.feed(asset, PayoutDepth(txid, depth))
                continue
            depths = await trio.to_thread.run_sync(self._depths, [t for _, t in variants])
            for (_pid, txid), depth in zip(variants, depths, strict=True):
                if depth is not None and depth >= 1:
                    plan = await trio.to_thread.run_sync(side.view.payout, txid)
                    if plan is not None:
                        await trio.to_thread.run_sync(self._note_change, side, plan)
                await self.feed(asset, PayoutDepth(txid, depth))

    def _depths(self, txids: list[str]) -> list[int | None]:
        assert self.bitcoin is not None
        out: list[int | None] = []
        for txid in txids:
            try:
                tx = self.bitcoin.get_raw_transaction(txid, True)
                out.append(int(tx.get("confirmations", 0) or 0))
            except BitcoinRPCError:
                out.append(None)
        return out

    async def _learn_cosigned(self) -> None:
        """Payouts this node co-signed for another coordinator: their burns are being paid."""
        for asset, m in self.machines.items():
            side = self.sides[asset]
            if side.evm is not None:
                candidates = [w.burn for w in m.withdrawals.values()
                              if w.state in ("observed", "queued", "signing", "signed", "broadcast")]
                if candidates:
                    for found in await trio.to_thread.run_sync(side.evm.found_payouts, candidates):
                        await self.feed(asset, found)
                continue
            known = {v["txid"] for p in m.payouts.values() for v in p.variants}
            rows = await trio.to_thread.run_sync(self._archived, side.chain.caip2)
            for row in rows:
                if row["txid"] in known or row["role"] != "cosigned":
                    continue
                depths = await trio.to_thread.run_sync(self._depths, [row["txid"]]) if self.bitcoin else [None]
                if depths[0] is None:
                    continue  # not broadcast (yet): the coordinator may still finish or retry it
                ids = tuple(row["burn_ids"])
                plan = await trio.to_thread.run_sync(side.view.payout, row["txid"]) if side.view else None
                if plan is not None:
                    await trio.to_thread.run_sync(self._note_change, side, plan)
                await self.feed(asset, PayoutFound(payout_id_of(ids), ids, row["txid"], row["raw"] or "",
                                                   depths[0]))

    async def _scan_for_payouts(self) -> None:
        """Transactions spending custody coins that this node neither built nor co-signed: another
        coordinator's payout (or a bump of one). Each new block is searched once, the mempool at
        most every few seconds; the outputs are matched to this node's unpaid burns."""
        for asset, side in self.sides.items():
            if side.view is None or self.bitcoin is None:
                continue
            found = await trio.to_thread.run_sync(self._new_spenders, side)
            for tx, confirmations in found:
                await self._adopt(asset, side, tx, confirmations)

    def _new_spenders(self, side: AssetSide) -> list[tuple[dict[str, Any], int]]:
        """(worker thread) Unknown transactions spending one of this chain's custody coins."""
        assert self.bitcoin is not None
        rpc, chain = self.bitcoin, side.chain.caip2
        with self.db.read() as r:
            coins = {f"{c['txid']}:{c['vout']}" for c in r.custody_coins(chain)}
            archived = {p["txid"] for p in r.archived_payouts(chain)}
        if not coins:
            return []
        tip = rpc.get_block_count()
        start = self._scanned.get(chain, max(0, tip - 6)) + 1
        out: list[tuple[dict[str, Any], int]] = []

        def spends(tx: dict[str, Any]) -> bool:
            return tx.get("txid") not in archived and any(
                f"{i.get('txid')}:{i.get('vout')}" in coins for i in tx.get("vin", []) if "txid" in i)

        for height in range(start, tip + 1):
            block = rpc.get_block(rpc.get_block_hash(height), 2)
            out += [(tx, tip - height + 1) for tx in block["tx"] if spends(tx)]
        self._scanned[chain] = tip
        now = time.monotonic()
        if now - self._mempool_at >= 2.0:
            self._mempool_at = now
            for txid in rpc.call("getrawmempool"):
                if txid in archived or txid in self._mempool_seen:
                    continue
                self._mempool_seen.add(txid)
                try:
                    tx = rpc.get_raw_transaction(txid, True)
                except BitcoinRPCError:
                    continue
                if spends(tx):
                    out.append((tx, 0))
            if len(self._mempool_seen) > 10_000:
                self._mempool_seen.clear()
        return out

    async def _adopt(self, asset: str, side: AssetSide, tx: dict[str, Any], confirmations: int) -> None:
        """Match a found payout's outputs to this node's unpaid burns (destination script and
        payout value, burn-nonce order - how every coordinator lays them out); archive it, keep
        its change as a custody coin, and tell the machine."""
        assert side.view is not None and side.params is not None
        m = self.machines[asset]
        change_script = side.view.change_script()
        inputs = [f"{i['txid']}:{i['vout']}" for i in tx.get("vin", []) if "txid" in i]
        known = await trio.to_thread.run_sync(self._archived, side.chain.caip2)
        original = next((p for p in known if set(p["inputs"]) & set(inputs)), None)
        if original is not None:
            # a bump (or another variant) of a payout this node knows: same burns, same payout id
            await self._adopt_variant(asset, side, tx, confirmations, original, change_script)
            return
        candidates = sorted((w for w in m.withdrawals.values() if w.state in ("queued", "signing", "signed")),
                            key=lambda w: w.burn.nonce)
        expected = []
        for w in candidates:
            try:
                pb = PayoutBurn(burn_key(w.burn.burn_id), w.burn.nonce, w.burn.amount, w.burn.destination)
                expected.append((w, decode_destination(w.burn.destination, side.params.network).hex(),
                                 payout_value(pb, side.params)))
            except PayoutError:
                continue
        matched: list[str] = []
        change: tuple[int, int] | None = None
        used: set[str] = set()
        for n, o in enumerate(tx.get("vout", [])):
            script = o["scriptPubKey"]["hex"]
            value = int((Decimal(str(o["value"])) * 100_000_000).to_integral_exact())
            if script == change_script.hex():
                change = (n, value)
                continue
            hit = next((w for w, sc, v in expected if sc == script and v == value and w.burn.burn_id not in used), None)
            if hit is None:
                self.alert("critical", f"custody coins spent by {tx['txid']}, which pays an output no burn asked for",
                           None)
                return
            used.add(hit.burn.burn_id)
            matched.append(hit.burn.burn_id)
        if not matched:
            return
        ids = tuple(sorted(matched, key=lambda b: m.withdrawals[b].burn.nonce))
        pid = payout_id_of(ids)

        def record() -> None:
            with self.db.transaction() as t:
                t.archive_payout(txid=tx["txid"], payout_id=pid, source_chain=side.chain.caip2, role="found",
                                 burn_ids=list(ids), inputs=[f"{i['txid']}:{i['vout']}" for i in tx["vin"]],
                                 fee=0, raw=tx.get("hex") or None)
                if change is not None and side.view is not None:
                    t.add_custody_coin(chain=side.chain.caip2, txid=tx["txid"], vout=change[0], value=change[1],
                                       path=list(side.view.custody.path),
                                       public_key=side.view.custody.public_key.hex(), origin="change")

        await trio.to_thread.run_sync(record)
        log_event(log, logging.INFO, "payout found on chain", node=self.node_id, txid=tx["txid"], burns=len(ids),
                  confirmations=confirmations)
        await self.feed(asset, PayoutFound(pid, ids, tx["txid"], tx.get("hex") or "", confirmations))

    async def _adopt_variant(self, asset: str, side: AssetSide, tx: dict[str, Any], confirmations: int,
                             original: dict[str, Any], change_script: bytes) -> None:
        """A transaction spending an input of a known payout: accepted as its variant only if it
        pays exactly the same outputs (the change aside) - that is what a bump is."""
        def payouts(outputs: list[tuple[str, int]]) -> list[tuple[str, int]]:
            return [o for o in outputs if o[0] != change_script.hex()]

        outs = [(o["scriptPubKey"]["hex"], int((Decimal(str(o["value"])) * 100_000_000).to_integral_exact()))
                for o in tx.get("vout", [])]
        before: list[tuple[str, int]] = []
        plan = await trio.to_thread.run_sync(side.view.payout, original["txid"]) if side.view else None
        if plan is not None:
            before = [(o.script_pubkey.hex(), o.value) for o in plan.tx.vout]
        else:
            raw = original.get("raw")
            if raw and self.bitcoin is not None:
                decoded = await trio.to_thread.run_sync(self.bitcoin.call, "decoderawtransaction", raw)
                before = [(o["scriptPubKey"]["hex"], int((Decimal(str(o["value"])) * 100_000_000)
                                                         .to_integral_exact())) for o in decoded["vout"]]
        if before and payouts(outs) != payouts(before):
            self.alert("critical", f"{tx['txid']} spends the inputs of payout {original['txid']} but pays other "
                                   "outputs", None)
            return
        ids = tuple(original["burn_ids"])
        change = next(((n, v) for n, (sc, v) in enumerate(outs) if sc == change_script.hex()), None)

        def record() -> None:
            with self.db.transaction() as t:
                t.archive_payout(txid=tx["txid"], payout_id=original["payout_id"], source_chain=side.chain.caip2,
                                 role="found", burn_ids=list(ids), inputs=list(original["inputs"]), fee=0,
                                 raw=tx.get("hex") or None, replaces=original["txid"])
                if change is not None and side.view is not None:
                    t.add_custody_coin(chain=side.chain.caip2, txid=tx["txid"], vout=change[0], value=change[1],
                                       path=list(side.view.custody.path),
                                       public_key=side.view.custody.public_key.hex(), origin="change")

        await trio.to_thread.run_sync(record)
        log_event(log, logging.INFO, "payout variant found on chain", node=self.node_id, txid=tx["txid"],
                  replaces=original["txid"], confirmations=confirmations)
        await self.feed(asset, PayoutFound(original["payout_id"], ids, tx["txid"], tx.get("hex") or "",
                                           confirmations))

    def _archived(self, chain: str) -> list[dict[str, Any]]:
        with self.db.read() as r:
            return r.archived_payouts(chain)

    # -- refunds
    async def _sign_refund(self, asset: str, a: ProposeRefund) -> None:
        m = self.machines[asset]
        w = m.get(a.burn_id)
        if w is None or self.cfg.key_id is None or self.cfg.gateway is None:
            return
        epoch = await trio.to_thread.run_sync(lambda: int(self.gateway.functions.signerSchedule().call()[1]))
        now = int(self.clock())
        slot = self.cfg.order_slot_seconds
        order = RefundOrder(burn_nonce=w.burn.nonce, asset=checksum_address(asset), burner=checksum_address(
            w.burn.burner), amount=w.burn.amount, signer_epoch=epoch, deadline=(now // slot + 2) * slot)
        digest = order.digest(self.cfg.gateway, self.cfg.destination_chain_id)
        outcome = await self.sign_fn(self.cfg.key_id, digest, self.cfg.signer_path,
                                     client_request=encode(RefundRequest(order)))
        if not outcome.ok:
            await self.feed(asset, RefundFailed(a.burn_id, f"{outcome.status}: {outcome.reason}"))
            return
        sig = outcome.output
        signature = encode_signature(sig.r, sig.s, sig.recovery_id)
        if recover_signer(digest, signature) != Web3.to_checksum_address(
                "0x" + Web3.keccak(self._signer_key().to_uncompressed()[1:])[-20:].hex()):
            await self.feed(asset, RefundFailed(a.burn_id, "signature does not recover to the Gateway signer"))
            return
        await self.feed(asset, RefundSigned(a.burn_id, {"order": order.to_dict(), "signature": signature.hex()}))

    def _signer_key(self) -> Point:
        from fusion_prime.protocol.hd import derive

        return derive(self.group_key, self.chain_code, self.cfg.signer_path).public_key if self.cfg.signer_path \
            else self.group_key

    async def _relay_refund(self, asset: str, a: RelayRefund) -> None:
        if self.relay is None:
            return
        order = RefundOrder.from_dict(a.refund["order"])
        signature = bytes.fromhex(a.refund["signature"])
        delay = self.cfg.retry_seconds
        for _ in range(10):
            try:
                status = await trio.to_thread.run_sync(lambda: self.gateway.functions.burnStatus(
                    order.burn_nonce, order.asset, order.burner, order.amount).call())
                if bool(status[1]):
                    return  # refunded already (by another relayer)
                tx = await trio.to_thread.run_sync(self.relay, self.gateway.functions.refund(order.as_tuple(),
                                                                                             signature))
                log_event(log, logging.INFO, "refund relayed", node=self.node_id, burn_id=a.burn_id, tx=tx)
                return
            except Exception as exc:  # retried: an endpoint hiccup or a relayer short of gas
                log_event(log, logging.WARNING, "refund relay failed", node=self.node_id, burn_id=a.burn_id,
                          error=f"{type(exc).__name__}: {exc}")
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)

    # -- solvency
    async def _check_solvency(self) -> None:
        for asset, side in self.sides.items():
            if side.view is None and side.evm is None:
                continue
            try:
                inputs = await trio.to_thread.run_sync(self.authorizer.solvency_inputs, side)
            except Exception as exc:  # unknown is not insolvent; the co-sign checks refuse on their own
                log_event(log, logging.WARNING, "solvency unreadable", node=self.node_id, asset=asset, error=str(exc))
                continue
            verdict = check_solvency(inputs)
            if self.on_solvency is not None:
                try:
                    self.on_solvency(asset, inputs, verdict)
                except Exception as exc:  # an observer must never stop the solvency halt
                    log_event(log, logging.WARNING, "solvency observer failed", node=self.node_id, asset=asset,
                              error=f"{type(exc).__name__}: {exc}"[:300])
            # INSOLVENT_READS reads in a row must agree before this node halts anything: the custody read
            # (the chain, with its mempool) and the in-flight read (the database) are not one
            # snapshot, and a payout broadcast between them looks like a shortfall for a moment.
            short = self._short.get(asset, 0) + 1 if not verdict.ok else 0
            self._short[asset] = short
            if 0 < short < INSOLVENT_READS:
                continue
            was = side.solvent
            side.solvent, side.solvency_reason = verdict.ok, ("" if verdict.ok else verdict.reason)
            if not verdict.ok and was:
                self.alert("critical", f"custody short: {verdict.reason}", None)
            if not verdict.ok and asset not in self._paused_for:
                self._paused_for.add(asset)
                assert self._nursery is not None
                self._nursery.start_soon(self.pause, f"insolvent: {verdict.reason}")
            if verdict.ok:
                self._paused_for.discard(asset)

    # -- proof of reserves
    def prove_reserves(self, trio_token: trio.lowlevel.TrioToken, source_readers: dict[str, Any]) -> str:
        """(a gRPC worker thread) A proof-of-reserves report (``bridge/reserves.py``): every custody
        and minted-deposit address attested by the group key through one sign session each, which
        every participant checks on its own (``WithdrawalAuthorizer.attestation``)."""
        assert self.cfg.gateway is not None and self.cfg.key_id is not None
        readers: dict[str, Any] = {self.cfg.destination_chain: Web3Reader(self.destination), **source_readers}
        challenge = latest_challenge(readers[self.cfg.destination_chain], self.cfg.destination_chain, depth=1)
        addresses, assets = [], []
        with self.db.read() as r:
            for asset, side in self.sides.items():
                chain = side.chain.caip2
                if chain not in readers:
                    continue
                addresses.append(ReserveAddress.custody(chain))
                paths = sorted({tuple(c["path"]) for c in r.custody_coins(chain) if c["origin"] == "deposit"})
                addresses += [ReserveAddress.deposit(chain, p) for p in paths]
                rows = r.conn.execute(dbm.sa.select(dbm.withdrawals).where(
                    (dbm.withdrawals.c.asset == asset)
                    & dbm.withdrawals.c.state.notin_(("broadcast", "confirmed", "refunded")))).all()
                in_flight = tuple(InFlightWithdrawal(int(w._mapping["burn_nonce"]),
                                                     checksum_address(w._mapping["burner"]), int(w._mapping["amount"]))
                                  for w in rows)
                tolerance = side.chain.withdrawals.solvency_tolerance if side.chain.withdrawals else 0
                assets.append(AssetPlan(symbol=_token_symbol(self.destination, asset), source_chain=chain,
                                        token=asset, tolerance=tolerance, in_flight=in_flight))
        chains_of = {a.chain for a in addresses}

        def sign(digest: bytes, path_text: str) -> tuple[int, int]:
            path = tuple(parse_path(path_text))
            child = derive(self.group_key, self.chain_code, path).public_key
            chain = next((c for c in sorted(chains_of)
                          if attestation_digest(challenge, c, address_of(c, child)) == digest), None)
            if chain is None:
                raise ValueError("not an attestation of a listed address")
            request = AttestationRequest(chain, path, challenge.chain, challenge.height,
                                         bytes.fromhex(challenge.block_hash.removeprefix("0x")))
            outcome = trio.from_thread.run(lambda: self.sign_fn(self.cfg.key_id, digest, path,
                                                                client_request=encode(request)), trio_token=trio_token)
            if not outcome.ok:
                raise ValueError(f"attestation not signed: {outcome.status}: {outcome.reason}")
            return outcome.output.r, outcome.output.s

        report = build_report(challenge=challenge, group_key=self.group_key.to_bytes(), chain_code=self.chain_code,
                              gateway=GatewayRef(self.cfg.destination_chain, self.cfg.gateway, self.cfg.signer_path),
                              assets=assets, addresses=addresses, sign=sign, readers=readers)
        log_event(log, logging.INFO, "proof of reserves built", node=self.node_id, addresses=len(addresses),
                  challenge=challenge.height)
        return report.to_json()

    # -- status
    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for asset, m in self.machines.items():
            side = self.sides[asset]
            states: dict[str, int] = {}
            for w in m.withdrawals.values():
                states[w.state] = states.get(w.state, 0) + 1
            out[asset] = {"chain": side.chain.caip2, "coordinating": m.coordinating, "next_nonce": m.next_nonce,
                          "withdrawals": states, "payouts": len(m.payouts), "solvent": side.solvent,
                          "solvency_reason": side.solvency_reason}
            if side.evm is not None:
                try:
                    out[asset]["evm"] = side.evm.status()
                except Exception as exc:  # a status read must not stop the status file
                    out[asset]["evm"] = {"error": str(exc)}
        return out


def _token_symbol(w3: Web3, token: str) -> str:
    abi = [{"name": "symbol", "type": "function", "stateMutability": "view", "inputs": [],
            "outputs": [{"name": "", "type": "string"}]}]
    return str(w3.eth.contract(address=Web3.to_checksum_address(token), abi=abi).functions.symbol().call())


def build_sides(cfg: BridgeConfig, *, group_key: Point, chain_code: bytes, bitcoin: BitcoinRPC | None,
                db: dbm.BridgeDB, evm_sources: dict[str, Web3] | None = None, sign: SignFn | None = None,
                node_id: str = "") -> dict[str, AssetSide]:
    """Each configured asset's withdrawal side: Bitcoin payouts, or ETH payouts on an EVM source
    chain (``evm_sources`` and ``sign`` given), where enabled; otherwise its burns are refunded."""
    from .derivation import bitcoin_network
    from .evm_withdrawal import EvmPayoutSide, EvmWithdrawalError, evm_payout_params

    sides: dict[str, AssetSide] = {}
    for chain in cfg.chains:
        if chain.asset is None:
            continue
        params = view = evm = None
        if chain.kind == "bitcoin" and chain.withdrawals is not None and bitcoin is not None:
            params = btc_params(chain, bitcoin_network(chain.caip2))
            view = BtcPayoutView(chain=chain, asset=chain.asset, rpc=bitcoin, db=db, params=params,
                                 custody=custody_address(group_key, chain_code, chain.caip2))
        elif (chain.kind == "evm" and chain.withdrawals is not None and evm_sources and chain.caip2 in evm_sources
              and sign is not None and cfg.key_id is not None):
            try:
                evm = EvmPayoutSide(chain=chain, asset=chain.asset, w3=evm_sources[chain.caip2], db=db,
                                    params=evm_payout_params(chain),
                                    custody=custody_address(group_key, chain_code, chain.caip2),
                                    group_key=group_key, chain_code=chain_code,
                                    destination_chain=cfg.destination_chain, key_id=cfg.key_id, sign=sign,
                                    node_id=node_id)
            except EvmWithdrawalError as exc:
                log_event(log, logging.ERROR, "ETH payouts disabled for this chain", chain=chain.caip2, error=str(exc))
        side = AssetSide(chain=chain, asset=chain.asset, params=params, view=view,
                         classify=classify_burn(chain, params), evm=evm)
        if evm is not None:
            side.classify = evm.classify
        sides[chain.asset] = side
    return sides


def attach_evm_solvency(sides: dict[str, AssetSide], hooks: WithdrawalAuthorizer) -> None:
    """Give each EVM side the participant's solvency check (custody after the payout's worst-case spend)."""
    for side in sides.values():
        if side.evm is None:
            continue

        def check(burned: int, spent: int, reader: dbm.Reader | None = None, side: AssetSide = side,
                  account_paid: int = 0) -> str | None:
            if not side.solvent:
                return side.solvency_reason or "insolvent"
            try:
                verdict = payout_solvency(hooks.solvency_inputs(side, reader), burned, account_paid, spent)
            except Exception as exc:  # the chains do not answer: no co-signature on a guess
                return f"solvency unknown: {type(exc).__name__}: {exc}"
            return None if verdict.ok else verdict.reason

        side.evm.solvency = check
