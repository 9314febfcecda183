"""Withdrawals from settlement accounts go out through the bridge's payout machinery (issue 16).

"Assets leave custody only through withdrawals": a ``Withdraw`` instruction debits an account into a
pending ``ledger.Withdrawal``; this module hands it to the withdrawal side as a *burn-like*
observation, and reports back to the ledger when it is paid or must be returned. Nothing here
signs, broadcasts or decides a payout: the ``WithdrawalMachine`` batches an account withdrawal with
the Gateway's burns and the payout coordinator pays it exactly as it pays a burn (one Bitcoin
transaction per batch, ETH from the custody address), keeping the same withdrawal fee
(``amount − withdrawal_fee`` is paid). Why through that machinery rather than a path of its own:
it already archives every payout before signing it, rebuilds it at every co-signer, bumps instead
of rescheduling and checks solvency, and a second path out of custody would need all of that again.

**The burn id.** An account withdrawal is paid under ``withdrawals.account_burn_id(withdrawal_id)``,
a tagged SHA-256 that no Gateway burn id (a keccak-256 of the Gateway's own fields) can equal, and
is ordered in a payout by ``withdrawals.account_nonce`` (after every Gateway burn). Every node
computes both alone from the ledger's withdrawal id.

**Every node, the same steps.** Each node applies the same ledger batches, and after storing one
that created pending withdrawals the settlement runtime calls :meth:`AccountWithdrawals.observe`
(and again after a restart for every still-pending one: it is idempotent). The node writes its
``account_withdrawals`` row (``bridge/db.py``, migration 6) from *its own* replica's record and
hands the withdrawal to its machine, so every node knows what is being paid and refuses to pay it
twice (the payout archive, as for burns).

**A co-signer's own view is its own replica.** Before co-signing any input of a payout that names
an account withdrawal, a participant asks its replica through the ``lookup`` registered with
:meth:`AccountWithdrawals.pending`: the withdrawal must be pending there, with exactly the terms
this node recorded (asset, chain, amount, destination) — then the payout is rebuilt from those
terms like any burn's, so another amount or destination is refused byte for byte. The
coordinator's word counts for nothing; a withdrawal the ledger already paid or returned is refused.

**Unpayable → returned, never refunded.** An account withdrawal has no Gateway burn to refund. A
destination the withdrawal side's rules cannot pay (the machine's refund classification: not an
address of that chain, below fee + dust, a contract on an EVM chain), an asset no side pays, or a
destination on another chain than the asset's, is *returned*: ``WithdrawalReturned`` in a ledger
batch, which credits the amount back to the account.

**Back to the ledger.** The settlement coordinator calls :meth:`finished` each batch tick for the
withdrawals whose payout reached its depth (``WithdrawalPaid(id, txid)``) or that must be returned,
and :meth:`reported` once the batch holding them is stored. Every node applying such a batch runs
:meth:`verify` against its own records first: the payout confirmed at depth by that transaction
here, or the same unpayable verdict; a view that is merely behind answers ``"retry: …"``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fusion_prime.node.logs import log_event

from .. import db as dbm
from ..orders import OrderError, address_bytes
from ..withdrawals import (
    BROADCAST,
    CONFIRMED,
    OBSERVED,
    QUEUED,
    RETURNED,
    RETURNING,
    SIGNED,
    SIGNING,
    AccountClosed,
    Burn,
    BurnSeen,
    account_burn_id,
    account_nonce,
)
from .batch import WithdrawalPaid, WithdrawalReturned
from .ledger import Withdrawal

if TYPE_CHECKING:
    from ..withdrawal_runtime import AssetSide

log = logging.getLogger("fusion_prime.bridge.settlement.payouts")

#: ``lookup(withdrawal_id)`` → this node's replica's record of that withdrawal (any status), or None
Lookup = Callable[[bytes], Withdrawal | None]

OBSERVED_EVENT = "account-withdrawal-observed"
CONFLICT_EVENT = "account-withdrawal-conflict"
#: at most this many entries per :meth:`AccountWithdrawals.finished` call (a batch holds 20 000)
MAX_FINISHED = 1000
#: a returned withdrawal's reason in the batch: printable ASCII, this long at most (the entry allows 256 bytes)
MAX_REASON = 200
#: ledger statuses
PENDING, PAID, RETURNED_STATUS = "pending", "paid", "returned"
_NOT_IN_PAYOUT = (OBSERVED, QUEUED, RETURNING)


class AccountWithdrawals:
    """One node's link between its settlement ledger replica and its withdrawal side.

    ``runtime`` is the node's ``WithdrawalRuntime`` (duck-typed: ``sides``, ``machines``,
    ``authorizer`` and ``post``); constructing the link attaches it to the runtime (reconciled each
    step) and to the runtime's authorizer (every participant check of a payout naming an account
    withdrawal). ``assets`` maps a ledger asset symbol to the withdrawal side (the key of
    ``runtime.sides``) that pays it; by default each side pays its source chain's ``symbol``.

    Thread-safe: ``observe``/``finished``/``reported``/``verify`` run in the settlement runtime's
    threads, ``check`` in the signing hooks' gRPC worker threads, ``reconcile`` in the withdrawal
    runtime's. Every method reads and writes the bridge database synchronously (short transactions).
    """

    def __init__(self, db: dbm.BridgeDB, runtime: Any, *, assets: Mapping[str, str] | None = None) -> None:
        self.db, self.runtime = db, runtime
        self.sides: dict[str, AssetSide] = runtime.sides
        if assets is None:
            assets = {side.chain.symbol: key for key, side in self.sides.items()}
        unknown = sorted(set(assets.values()) - set(self.sides))
        if unknown:
            raise ValueError(f"ledger assets mapped to withdrawal sides this node does not have: {unknown}")
        self.assets = dict(assets)
        self._lookup: Lookup | None = None
        self._lock = threading.Lock()
        self._reported: set[bytes] = set()
        self._unobserved: dict[bytes, Withdrawal] = {}  # observe() failed: tried again by reconcile()
        runtime.accounts = self
        runtime.authorizer.accounts = self

    @classmethod
    def for_runtime(cls, runtime: Any, *, assets: Mapping[str, str] | None = None) -> AccountWithdrawals:
        """The link of the node's ``WithdrawalRuntime`` (over its own bridge database)."""
        return cls(runtime.db, runtime, assets=assets)

    # ------------------------------------------------------------------ every node
    def pending(self, lookup: Lookup) -> None:
        """Register this node's replica: ``lookup(withdrawal_id)`` returns its ``Withdrawal`` record in
        whatever status (``pending``/``paid``/``returned``), or None if the replica has no such
        withdrawal. It must answer from the replica as of its last *stored* batch (never from a batch
        being applied, which may still be refused) and be callable from any thread. Until it is
        registered, every payout naming an account withdrawal is refused and nothing is reported."""
        self._lookup = lookup

    def observe(self, withdrawals: Sequence[Withdrawal]) -> None:
        """Withdrawals a stored batch created or ended (or, after a restart, every still-pending one).
        A pending one is recorded from this replica's terms and handed to the withdrawal machine; a
        paid or returned one (passing those is optional: :meth:`reconcile` finds them each step) is
        noted at once, so solvency stops counting it. Idempotent. Never raises for one withdrawal: a
        failed one is logged and tried again by :meth:`reconcile`."""
        closed = [w for w in withdrawals if w.status != PENDING]
        if closed:
            try:
                self._closed(closed)
            except Exception as exc:  # the database: reconcile() reads the replica again
                log_event(log, logging.ERROR, "ended account withdrawals not noted", error=f"{exc}"[:300])
        for w in withdrawals:
            if w.status != PENDING:
                continue
            try:
                self._observe(w)
            except Exception as exc:  # the database: the next reconcile tries again
                with self._lock:
                    self._unobserved[w.withdrawal_id] = w
                log_event(log, logging.ERROR, "account withdrawal not observed", withdrawal=w.withdrawal_id.hex(),
                          error=f"{type(exc).__name__}: {exc}"[:300])

    def _observe(self, w: Withdrawal) -> None:
        key_hex = account_burn_id(w.withdrawal_id)
        key = bytes.fromhex(key_hex[2:])
        asset, chain, raw, reason = self.route(w)
        terms = self._terms(w, key, asset, chain, raw)
        side = self.sides.get(asset)
        required = side.chain.withdrawals.payout_confirmations if side and side.chain.withdrawals else 1
        differs: list[str] = []
        with self.db.transaction() as t:
            have = t.get_account_withdrawal(key)
            if have is None:
                t.put_account_withdrawal({**terms, "state": RETURNING if reason else OBSERVED, "payout_id": None,
                                          "txid": None, "confirmations": 0, "required_confirmations": required,
                                          "reason": reason or None})
                t.record_event(OBSERVED_EVENT, {"withdrawal_id": w.withdrawal_id.hex(), "asset": w.asset,
                                                "amount": w.amount, "chain": w.destination_chain,
                                                "destination": w.destination, "returning": reason}, key)
            else:
                differs = _differences(have, terms)
                if differs:
                    t.record_event(CONFLICT_EVENT, {"withdrawal_id": w.withdrawal_id.hex(), "fields": differs}, key)
        if differs:
            # the replica and this node's record disagree: a payout of it is refused by check()
            log_event(log, logging.CRITICAL, "account withdrawal differs from its record",
                      withdrawal=w.withdrawal_id.hex(), fields=",".join(differs))
            return
        with self._lock:
            self._unobserved.pop(w.withdrawal_id, None)
        if not reason:
            self.runtime.post(asset, BurnSeen(self._burn(terms)))

    def route(self, w: Withdrawal) -> tuple[str, str, bytes, str]:
        """(withdrawal side, chain paid on, destination bytes as the payout decodes them, reason it
        cannot be paid or ""). Every node decides this from the same record and configuration;
        what a side's own rules refuse (the machine's ``classify``) is decided by the machine."""
        key = self.assets.get(w.asset, "")
        side = self.sides.get(key)
        text = w.destination.encode("utf-8", "replace")
        if side is None:
            return "", w.destination_chain, text, f"unpayable: no withdrawal side of this bridge pays {w.asset}"
        if w.destination_chain != side.chain.caip2:
            return key, w.destination_chain, text, (f"unpayable: {w.asset} is paid on {side.chain.caip2}, not on "
                                                    f"{w.destination_chain}")
        if w.amount <= 0:
            return key, side.chain.caip2, text, "unpayable: the amount is not positive"
        if side.chain.kind == "evm":
            try:
                return key, side.chain.caip2, address_bytes(w.destination, "destination"), ""
            except OrderError as exc:
                return key, side.chain.caip2, text, f"unpayable: {exc}"
        return key, side.chain.caip2, text, ""

    @staticmethod
    def _terms(w: Withdrawal, key: bytes, asset: str, chain: str, raw: bytes) -> dict[str, Any]:
        return {"burn_id": key, "withdrawal_id": w.withdrawal_id, "party": w.party.hex(), "ledger_asset": w.asset,
                "asset": asset, "source_chain": chain, "burn_nonce": account_nonce(key), "amount": w.amount,
                "destination": raw.hex(), "created_ms": w.created_ms}

    @staticmethod
    def _burn(row: Mapping[str, Any]) -> Burn:
        key = bytes(row["burn_id"])
        return Burn(burn_id="0x" + key.hex(), nonce=int(row["burn_nonce"]), asset=row["asset"], burner=row["party"],
                    amount=int(row["amount"]), destination=bytes.fromhex(row["destination"]), block=0, tx_hash="",
                    account_withdrawal="0x" + bytes(row["withdrawal_id"]).hex())

    def reconcile(self) -> None:
        """(each withdrawal-runtime step) What the ledger did meanwhile: each withdrawal the replica
        paid or returned gets its ``ledger_status`` (solvency stops counting it) and the machine is
        told (one the ledger ended is never paid here). Also retries failed observations."""
        with self._lock:
            retry = list(self._unobserved.values())
        if retry:
            self.observe(retry)
        lookup = self._lookup
        if lookup is None:
            return
        with self.db.read() as r:
            rows = r.account_withdrawals_in(ledger_status=PENDING)
        closed = [w for row in rows if (w := lookup(bytes(row["withdrawal_id"]))) is not None and w.status != PENDING]
        if closed:
            self._closed(closed)

    def _closed(self, withdrawals: Sequence[Withdrawal]) -> None:
        """The replica paid or returned these: record it, and tell the machine (an account
        withdrawal no side's machine holds - one no side pays - is ended on its row alone)."""
        posts: list[tuple[str, AccountClosed]] = []
        with self.db.transaction() as t:
            for w in withdrawals:
                key = bytes.fromhex(account_burn_id(w.withdrawal_id)[2:])
                row = t.get_account_withdrawal(key)
                if row is None or row["ledger_status"] == w.status:
                    continue
                change: dict[str, Any] = {"burn_id": key, "ledger_status": w.status}
                machine = self.runtime.machines.get(row["asset"]) if row["asset"] else None
                if machine is not None and machine.get("0x" + key.hex()) is not None:
                    posts.append((row["asset"], AccountClosed("0x" + key.hex(), w.status, w.txid, w.note[:200])))
                elif row["state"] in _NOT_IN_PAYOUT:
                    change["state"] = RETURNED if w.status == RETURNED_STATUS else CONFIRMED
                    change["txid"] = w.txid or row["txid"]
                t.put_account_withdrawal(change)
        for asset, obs in posts:
            self.runtime.post(asset, obs)

    # ------------------------------------------------------------------ the participant
    def check(self, burn_ids: Sequence[bytes]) -> tuple[str, str] | None:
        """Why this node co-signs no payout of ``burn_ids``, judged by its own replica: (code,
        reason) for the first account withdrawal among them that is unknown to the replica, no longer
        pending there (paid or returned), unpayable by the routing rules, or recorded here with other
        terms than the replica's. None when every account withdrawal in it checks out (burns are
        the payout checks' business)."""
        with self.db.read() as r:
            rows = [row for row in (r.get_account_withdrawal(bytes(b)) for b in burn_ids) if row is not None]
        if not rows:
            return None
        lookup = self._lookup
        for row in rows:
            wid = bytes(row["withdrawal_id"])
            name = f"account withdrawal 0x{wid.hex()}"
            if lookup is None:
                return "no_ledger", f"{name}: this node's settlement ledger is not attached"
            w = lookup(wid)
            if w is None:
                return "account_withdrawal_unknown", f"{name} is not in this node's ledger replica"
            if w.status != PENDING:
                paid = f" (by {w.txid})" if w.txid else ""
                return "account_withdrawal_not_pending", f"{name} is {w.status}{paid} in this node's ledger replica"
            asset, chain, raw, reason = self.route(w)
            if reason:
                return "account_withdrawal_unpayable", f"{name}: {reason}"
            differs = _differences(row, self._terms(w, bytes(row["burn_id"]), asset, chain, raw))
            if differs:
                return "account_withdrawal_terms", (f"{name}: this node's record differs from its ledger replica in "
                                                    f"{', '.join(differs)}")
        return None

    def leaving_custody(self, ledger_asset: str, reader: dbm.Reader | None = None) -> int:
        """What of ``ledger_asset``'s pending account withdrawals has already left custody: payouts
        broadcast (in this node's mempool) or confirmed whose ``WithdrawalPaid`` the replica had not
        applied when this node last read it. Solvency subtracts it from the ledger's liabilities, as
        a burn stops counting as in flight once its payout is broadcast. Reads the database only
        (``reader``: a transaction already open), never the replica: safe under the write lock."""
        def total(r: dbm.Reader) -> int:
            return sum(int(row["amount"]) for row in r.account_withdrawals_in((BROADCAST, CONFIRMED),
                                                                              ledger_status=PENDING)
                       if row["ledger_asset"] == ledger_asset)

        if reader is not None:
            return total(reader)
        with self.db.read() as r:
            return total(r)

    # ------------------------------------------------------------------ back to the ledger
    def finished(self) -> list[WithdrawalPaid | WithdrawalReturned]:
        """(the settlement coordinator, each batch tick) Account withdrawals whose payout reached its
        depth here, or that must be returned, still pending in the replica and not reported yet."""
        lookup = self._lookup
        if lookup is None:
            return []
        with self.db.read() as r:
            rows = r.account_withdrawals_in((CONFIRMED, RETURNING), ledger_status=PENDING)
        out: list[WithdrawalPaid | WithdrawalReturned] = []
        with self._lock:
            reported = set(self._reported)
        for row in rows:
            wid = bytes(row["withdrawal_id"])
            if wid in reported:
                continue
            w = lookup(wid)
            if w is None or w.status != PENDING:
                continue
            if row["state"] == CONFIRMED:
                if row["txid"]:
                    out.append(WithdrawalPaid(wid, str(row["txid"])))
            else:
                out.append(WithdrawalReturned(wid, _reason_text(row["reason"] or "unpayable")))
            if len(out) >= MAX_FINISHED:
                break
        return out

    def reported(self, ids: Sequence[bytes]) -> None:
        """The batch holding these withdrawal ids' entries is stored: :meth:`finished` leaves them out
        (the replica no longer has them pending anyway; this covers the ticks in between)."""
        with self._lock:
            self._reported.update(bytes(i) for i in ids)
            if len(self._reported) > 10_000 and self._lookup is not None:
                lookup = self._lookup
                self._reported = {i for i in self._reported if (w := lookup(i)) is not None and w.status == PENDING}

    def verify(self, entry: WithdrawalPaid | WithdrawalReturned) -> str | None:
        """(every node, before applying a batch) None if this node's own records agree with
        ``entry``; ``"retry: …"`` if they are merely behind (not observed yet, the payout not at its
        depth here yet); otherwise why the batch is refused."""
        with self.db.read() as r:
            row = r.account_withdrawal_by_id(entry.withdrawal_id)
            key = bytes(row["burn_id"]) if row is not None else b""
            archived = [p for p in r.archived_payouts(row["source_chain"])
                        if "0x" + key.hex() in (p["burn_ids"] or ())] if row is not None else []
            claimed = r.archived_payout(entry.txid) if isinstance(entry, WithdrawalPaid) else None
        name = f"withdrawal {entry.withdrawal_id.hex()}"
        if row is None:
            return f"retry: {name} is not observed by this node's payout side yet"
        state = row["state"]
        if isinstance(entry, WithdrawalPaid):
            if state in (RETURNING, RETURNED):
                return f"{name} cannot be paid by this node's rules ({row['reason']}); it is to be returned"
            if state == CONFIRMED and row["txid"] == entry.txid:
                return None
            if state == CONFIRMED:
                mine = _payout_id_of(archived, str(row["txid"]))
                if claimed is not None and mine is not None and claimed["payout_id"] == mine:
                    return f"retry: {name} is paid here by {row['txid']}, a variant of {entry.txid} (a reorg?)"
                return f"{name} is paid here by {row['txid']}, not by {entry.txid}"
            seen = f"; its payout {row['txid']} has {row['confirmations']} of {row['required_confirmations']} " \
                   "confirmations here" if row["txid"] else ""
            if claimed is None and row["asset"]:  # a payout this node has not seen: look for it on its chain
                hint = getattr(self.runtime, "hint_payout", None)
                if hint is not None:
                    hint(row["asset"], entry.txid)
            return f"retry: {name} is {state} here{seen}"
        # returned
        if state in (RETURNING, RETURNED):
            return None
        if state in (SIGNING, SIGNED, BROADCAST, CONFIRMED) or archived:
            where = archived[-1]["txid"] if archived else row["payout_id"]
            return f"{name} is in payout {where} here; it is not returned"
        side = self.sides.get(row["asset"])
        if side is None:
            return f"{name}: no withdrawal side pays it here, yet it is {state}"
        why = side.classify(self._burn(row))
        if why is None:
            return f"{name} is payable by this node's rules; it is not returned"
        return None


def _payout_id_of(archived: Sequence[Mapping[str, Any]], txid: str) -> str | None:
    """The payout id of the archived variant ``txid`` among ``archived``, or None."""
    return next((p["payout_id"] for p in archived if p["txid"] == txid), None)


_FIXED = ("withdrawal_id", "party", "ledger_asset", "asset", "source_chain", "burn_nonce", "amount", "destination",
          "created_ms")


def _differences(row: Mapping[str, Any], terms: Mapping[str, Any]) -> list[str]:
    """The recorded fields of ``row`` that are not ``terms``'."""
    out = []
    for k in _FIXED:
        have, want = row[k], terms[k]
        if isinstance(have, bytes | memoryview):
            have = bytes(have)
        if k in ("burn_nonce", "amount", "created_ms"):
            have = int(have)
        if have != want:
            out.append(k)
    return out


def _reason_text(reason: str) -> str:
    """A reason every node decodes to the same string: printable ASCII, at most MAX_REASON long."""
    text = "".join(c if " " <= c <= "~" else "?" for c in reason)
    return text[:MAX_REASON]
