"""Funding settlement accounts through the bridge's deposit path: deposits that credit, not mint.

Why it reuses the bridge instead of a deposit path of its own: everything that makes a mint safe
is what makes a credit safe — every node's own watcher sees the output on its own chain
connection, waits the value-aware depth, handles reorgs and dust (``bridge/deposits.py``), and
keeps the facts in its own database (``bridge/db.py``). The only difference is what happens at
depth: instead of a mint order, the settlement coordinator puts a ``Credit`` into a ledger batch,
and every node checks that credit against its *own* database before it applies the batch.

* **Addresses.** A party (a client's 33-byte compressed secp256k1 key) has one deposit address per
  source chain: the group key's BIP32 child at ``account_deposit_path(party, source_chain)`` —
  its own tag and purpose (``"FPSa"``), so it is never a mint deposit address nor the custody
  address (the scheme is in ``bridge/derivation.py``). It is registered in ``deposit_addresses``
  with ``destination_chain = SETTLEMENT_DESTINATION`` and ``recipient`` = the party's hex, so the
  watchers, the rescan of late registrations and the registration forwarding (``service.py``:
  a peer is sent the same ``GetDepositAddress`` with that destination and derives the address
  itself) carry it unchanged. The deposit machine re-derives it and **never proposes a mint** for
  it, and the mint policy refuses one at every participant (``mint_policy.check_mint``).
* **Credits.** :meth:`Funding.pending_credits` offers the coordinator the account deposits this
  node holds at depth (the machine's ``confirmed``) that the ledger has not credited;
  :meth:`Funding.verify_credit` is every node's check of a ``Credit`` entry: this node's own row
  for exactly that deposit, at depth, paying the address derived *here again* for exactly that
  party and the asset's chain, for exactly that amount. "Not yet" (unknown here, still
  confirming) is answered ``"retry: …"`` so a node one block behind waits instead of naming the
  coordinator.
* **Custody.** Once the batch is stored, :meth:`Funding.credited` makes the deposit custody on
  every node, like a ``Minted`` log does for a minted deposit: a Bitcoin output becomes a custody
  coin the payout machinery may spend (``withdrawal_runtime.BtcPayoutView``); an ETH deposit
  address becomes a deposit the EVM side sweeps into the custody address
  (``evm_withdrawal.EvmPayoutSide.sweep_due``). Both then count in solvency and in the proof of
  reserves. A ``settlement-credited`` event in the bridge's hash-chained audit log is the durable
  record (the bridge runtime reads it back to tell its deposit machine, which from then on treats
  a reorg of the deposit as an erratum, like a reorg after a mint).
* **Liabilities.** Solvency (custody ≥ wrapped supply + burns in flight) must also count what the
  ledger owes: the settlement runtime gives :meth:`Funding.set_ledger_liabilities` a callable
  (asset symbol → ledger balances + pending withdrawals), which it hands to the withdrawal side's
  ``WithdrawalAuthorizer.set_ledger_liabilities`` (``bridge/withdrawal_runtime.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from ...node.logs import log_event
from ...protocol.curve import Point
from .. import db as dbm
from ..db import BridgeDB
from ..derivation import (
    ACCOUNT_PURPOSE,
    ACCOUNT_TAG,
    SETTLEMENT_DESTINATION,
    DepositAddress,
    DerivationError,
    account_deposit,
    account_deposit_path,
    party_bytes,
    same_address,
)
from ..orders import EVM_NATIVE_VOUT, OrderError, chain_kind
from .batch import Credit

__all__ = [
    "ACCOUNT_PURPOSE",
    "ACCOUNT_TAG",
    "CREDITED_EVENT",
    "SETTLEMENT_DESTINATION",
    "Funding",
    "FundingError",
    "account_deposit_address",
    "account_deposit_path",
    "credited_deposits",
    "custody_coin_of",
]

log = logging.getLogger("fusion_prime.bridge.settlement.funding")

#: the audit event (``bridge_events``) that records a deposit credited to a settlement account
CREDITED_EVENT = "settlement-credited"
#: deposit ids per ``IN (...)`` query
_CHUNK = 500


class FundingError(ValueError):
    """A party, asset or chain this node cannot fund an account with."""


def account_deposit_address(group_key: Point, chain_code: bytes, source_chain: str, party: bytes) -> str:
    """The deposit address of ``party``'s settlement account on ``source_chain`` (bech32 P2WPKH on a
    Bitcoin chain, EIP-55 on an EVM chain); see ``bridge/derivation.py`` for the scheme."""
    return account_deposit(group_key, chain_code, source_chain, party).address


def custody_coin_of(deposit: dbm.Deposit, group_key: Point, chain_code: bytes) -> dict[str, Any] | None:
    """The ``custody_coins`` row a credited account deposit becomes, or None if ``deposit`` is not a
    settlement account deposit that pays the address derived for its party (the path is re-derived
    here, never taken from a record). Bitcoin: the output itself; EVM: the deposit transaction's
    top-level transfer (txid = the transaction hash, vout ``EVM_NATIVE_VOUT``), which is how the EVM
    side finds deposit addresses to sweep."""
    if deposit.destination_chain != SETTLEMENT_DESTINATION:
        return None
    try:
        derived = account_deposit(group_key, chain_code, deposit.source_chain, deposit.recipient)
        kind = chain_kind(deposit.source_chain)
    except (DerivationError, OrderError):
        return None
    if not same_address(kind, derived.address, deposit.address):
        return None
    txid = deposit.txid.lower().removeprefix("0x")
    if kind == "evm" and deposit.vout != EVM_NATIVE_VOUT:
        return None
    return {"chain": deposit.source_chain, "txid": txid, "vout": deposit.vout, "value": deposit.amount,
            "path": list(derived.path), "public_key": derived.public_key.hex(), "origin": "deposit"}


def credited_deposits(reader: dbm.Reader, deposit_ids: Iterable[bytes]) -> dict[bytes, dict[str, Any]]:
    """Of ``deposit_ids``, those this node recorded as credited (``CREDITED_EVENT``), with the event's
    detail. Uses the events table's per-deposit index; the audit log is the durable record."""
    ids = list(dict.fromkeys(deposit_ids))
    events = dbm.bridge_events
    out: dict[bytes, dict[str, Any]] = {}
    for i in range(0, len(ids), _CHUNK):
        rows = reader.conn.execute(sa.select(events.c.deposit_id, events.c.detail).where(
            events.c.deposit_id.in_(ids[i:i + _CHUNK]) & (events.c.event == CREDITED_EVENT))).all()
        for did, detail in rows:
            out.setdefault(bytes(did), _json(detail))
    return out


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class Funding:
    """One node's side of funding settlement accounts from bridge deposits (module docstring).

    ``assets`` maps each ledger asset symbol (``"BTC"``, ``"ETH"``: a bridge source chain's
    ``symbol``) to its source chain's CAIP-2 id. Optional hooks the composition root sets:

    * ``forward(record)`` — hand a registration new at this node to the other nodes (the bridge
      service's ``RegistrationForwarder.submit``), so every node's watchers see the address;
    * ``paused(source_chain) -> bool`` — the bridge runtime's ``chain_paused``: while a source
      chain is paused by an erratum, its deposits are neither offered nor accepted as credits
      (``"retry: …"``), as its mints are not proposed;
    * ``solvency`` — the withdrawal side that judges solvency (see :meth:`set_ledger_liabilities`).
    """

    def __init__(self, db: BridgeDB, *, group_key: Point, chain_code: bytes, assets: dict[str, str],
                 forward: Callable[[dbm.DepositAddress], None] | None = None,
                 paused: Callable[[str], bool] | None = None, solvency: Any = None) -> None:
        self.db, self.group_key, self.chain_code = db, group_key, chain_code
        self.assets: dict[str, str] = {}
        for symbol, chain in assets.items():
            try:
                chain_kind(chain)
            except OrderError as exc:
                raise FundingError(f"asset {symbol}: {exc}") from None
            self.assets[symbol] = chain
        self.symbol_of = {chain: symbol for symbol, chain in self.assets.items()}
        if len(self.symbol_of) != len(self.assets):
            raise FundingError("one asset per source chain")
        self.forward, self.paused, self.solvency = forward, paused, solvency
        self._liabilities: Callable[[], dict[str, int]] | None = None  # see set_ledger_liabilities

    # ------------------------------------------------------------------ addresses
    def chain_of(self, asset: str) -> str:
        try:
            return self.assets[asset]
        except KeyError:
            raise FundingError(f"no settlement asset {asset!r} here; known: "
                               f"{', '.join(sorted(self.assets)) or 'none'}") from None

    def derive(self, party: bytes, asset: str) -> DepositAddress:
        """The account deposit address of ``party`` for ``asset`` (derived, not registered)."""
        try:
            return account_deposit(self.group_key, self.chain_code, self.chain_of(asset), party)
        except DerivationError as exc:
            raise FundingError(str(exc)) from None

    def register_account(self, party: bytes, asset: str, *, forward: bool = True
                         ) -> tuple[DepositAddress, bool]:
        """Derive and register ``party``'s deposit address for ``asset``: (the address, whether it was
        registered already). Idempotent; a new registration is forwarded (``forward``) unless the
        caller is itself serving a peer's forward. ``Conflict`` if the database records another
        address for this party and chain (another group key)."""
        derived = self.derive(party, asset)
        record = dbm.DepositAddress(address=derived.address, asset=asset, source_chain=derived.source_chain,
                                    destination_chain=SETTLEMENT_DESTINATION, recipient=derived.recipient,
                                    path=tuple(derived.path))
        stored = self.db.get_address(derived.address)
        already = stored is not None and dataclasses.replace(stored, created_at=0.0) == record
        if not already:
            stored = self.db.register_address(record)
            log_event(log, logging.INFO, "settlement account deposit address registered", address=derived.address,
                      asset=asset, party=derived.recipient)
            if forward and self.forward is not None:
                self.forward(stored)
        return derived, already

    def register(self, party: bytes, asset: str) -> str:
        """Derive and register ``party``'s deposit address for ``asset`` (idempotent); the address."""
        return self.register_account(party, asset)[0].address

    # ------------------------------------------------------------------ credits
    def _paused(self, chain: str) -> bool:
        if self.paused is None:
            return False
        try:
            return bool(self.paused(chain))
        except Exception:  # unknown is not "go": no credit on a guess
            return True

    def pending_credits(self, is_credited: Callable[[bytes], bool], limit: int = 500, *,
                        eligible: Callable[[Credit], bool] | None = None) -> list[Credit]:
        """Credits the coordinator may put into the next batch: account deposits this node holds at
        depth (``confirmed``), on a chain that is not paused, not credited by the ledger
        (``is_credited(deposit_id)``) nor recorded here as credited, oldest first (by block height),
        at most ``limit``. ``eligible`` filters further (e.g. the party has an account: the ledger
        refuses a whole batch that credits a party without one)."""
        if limit <= 0:
            return []
        chains = [c for c in self.symbol_of if not self._paused(c)]
        if not chains:
            return []
        d, events = dbm.deposits, dbm.bridge_events
        credited_here = sa.select(events.c.seq).where(
            (events.c.deposit_id == d.c.deposit_id) & (events.c.event == CREDITED_EVENT)).exists()
        query = (sa.select(d).where((d.c.state == "confirmed") & (d.c.destination_chain == SETTLEMENT_DESTINATION)
                                    & d.c.source_chain.in_(chains) & ~credited_here)
                 .order_by(sa.nulls_last(d.c.height.asc()), d.c.deposit_id))
        out: list[Credit] = []
        with self.db.read() as r:
            for row in r.conn.execute(query):
                dep = dbm._deposit_from_row(row)
                if is_credited(dep.deposit_id):
                    continue
                try:
                    credit = Credit(dep.deposit_id, party_bytes(dep.recipient), self.symbol_of[dep.source_chain],
                                    dep.amount)
                except (DerivationError, KeyError):
                    continue  # not a row this node could have written: never offered
                if eligible is not None and not eligible(credit):
                    continue
                out.append(credit)
                if len(out) >= limit:
                    break
        return out

    def verify_credit(self, credit: Credit) -> str | None:
        """This node's own judgement of a ``Credit`` entry (the ledger's ``verify`` hook): None if it
        holds; ``"retry: …"`` if this node merely does not see it at depth (yet); any other string
        refuses the batch."""
        chain = self.assets.get(credit.asset)
        if chain is None:
            return f"credit of {credit.asset!r}, which this node does not fund accounts with"
        try:
            derived = account_deposit(self.group_key, self.chain_code, chain, credit.party)
        except DerivationError as exc:
            return f"credit to {credit.party.hex()}, which is not a party key: {exc}"
        did = credit.deposit_id.hex()
        dep = self.db.get_deposit(credit.deposit_id)
        if dep is None:
            return f"retry: deposit {did} is not known to this node (yet)"
        if dep.source_chain != chain:
            return f"deposit {did} is on {dep.source_chain}, not on {chain} where {credit.asset} comes from"
        if dep.destination_chain != SETTLEMENT_DESTINATION:
            return (f"deposit {did} is a bridge deposit to mint on {dep.destination_chain} for {dep.recipient}, "
                    "not a settlement account deposit")
        if not same_address(chain_kind(chain), dep.address, derived.address) or dep.recipient != derived.recipient:
            return (f"deposit {did} pays {dep.address} (account {dep.recipient}); the account deposit address of "
                    f"{derived.recipient} on {chain} is {derived.address}")
        if dep.asset != credit.asset:
            return f"deposit {did} is recorded as {dep.asset}, not {credit.asset}"
        if dep.amount != credit.amount:
            return f"deposit {did} is {dep.amount}, not {credit.amount}"
        if dep.state in ("seen", "confirming"):
            return f"retry: deposit {did} has {dep.confirmations} of {dep.required_confirmations} confirmations here"
        if dep.state == "dust":
            return f"deposit {did} of {dep.amount} is dust: recorded, never credited"
        if dep.state == "reorged":
            return f"deposit {did} was reorganised out of the chain here"
        if dep.state != "confirmed":
            return f"deposit {did} is {dep.state} here; only a confirmed account deposit is credited"
        if self._paused(chain):
            return f"retry: deposits from {chain} are paused on this node (an erratum)"
        return None

    def credited(self, credits: Sequence[Credit], *, reference: str = "") -> None:
        """After the batch that applied ``credits`` is stored (every node): each credited deposit
        becomes custody (a custody coin: Bitcoin's payouts spend it, the EVM side sweeps its
        address) and a ``settlement-credited`` audit event records it. Idempotent: a credit already
        recorded is skipped. A deposit this node has no matching row for is still recorded (the
        ledger applied it); its custody coin is added when the bridge runtime sees the deposit."""
        if not credits:
            return
        with self.db.transaction() as tx:
            done = credited_deposits(tx, (c.deposit_id for c in credits))
            for c in credits:
                if c.deposit_id in done:
                    continue
                dep = tx.get_deposit(c.deposit_id)
                coin = None
                if dep is not None and dep.recipient == c.party.hex() and dep.amount == c.amount:
                    coin = custody_coin_of(dep, self.group_key, self.chain_code)
                if coin is not None:
                    tx.add_custody_coin(**coin)
                detail = {"party": c.party.hex(), "asset": c.asset, "amount": c.amount, "reference": reference,
                          "custody": coin is not None}
                tx.record_event(CREDITED_EVENT, detail, c.deposit_id)
                done[c.deposit_id] = detail
                if coin is None:
                    log_event(log, logging.WARNING, "credited deposit not (yet) custody here",
                              deposit_id=c.deposit_id.hex(), asset=c.asset)

    # ------------------------------------------------------------------ solvency
    def set_ledger_liabilities(self, fn: Callable[[], dict[str, int]] | None) -> None:
        """Make this node's solvency count the ledger's liabilities. ``fn()`` maps each asset symbol
        to the sum of account balances plus pending account withdrawals; it is called from the
        withdrawal side's threads, so it must be cheap and thread-safe. Where solvency is judged:
        the withdrawal side's ``WithdrawalAuthorizer`` (``bridge/withdrawal_runtime.py``,
        ``set_ledger_liabilities`` / ``ledger_owed``: the periodic check that halts the Gateway,
        the payout co-signing checks, the EVM side's, and through ``side.solvent`` the mints), given
        here as ``solvency`` (the composition root sets it). That side subtracts the account
        withdrawals whose payout is already broadcast, as it does for burns. Set before ``solvency``
        is known, the callable is handed over when it is."""
        self._liabilities = fn
        if self.solvency is not None:
            self.solvency.set_ledger_liabilities(fn)

    def attach_solvency(self, solvency: Any) -> None:
        """The object that judges solvency (``WithdrawalRuntime`` or ``WithdrawalAuthorizer``)."""
        self.solvency = solvency
        if solvency is not None and self._liabilities is not None:
            solvency.set_ledger_liabilities(self._liabilities)
