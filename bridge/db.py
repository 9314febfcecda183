"""The bridge's durable state: one data-access layer over SQLite (default) and PostgreSQL.

Why it looks like this:

* **One operator, one database.** Each node operator keeps its own bridge database; it is never
  shared between operators (a shared database would recreate Multichain's single point of
  control). SQLite is the default because it is embedded and needs nothing installed; PostgreSQL is
  for an operator who outgrows one machine. SQLAlchemy *Core* (no ORM) is the dialect switch: the
  same statements run on both, and the few places that differ (amount column type, triggers,
  ``BEGIN IMMEDIATE`` versus row locks) are spelled out below.
* **Every write is one transaction** (``with db.transaction() as tx:``); a method called on the
  :class:`BridgeDB` itself opens its own. An exception anywhere in the block rolls everything back,
  including the audit events, so a refused transition leaves nothing behind.
* **Claims are exclusive.** A row that is about to change state is read with
  ``SELECT ... FOR UPDATE`` on PostgreSQL (a second claimer waits for the first to commit and then
  sees the new state, so :meth:`Transaction.claim_deposit` returns ``None`` to it); on SQLite every
  write transaction starts with ``BEGIN IMMEDIATE`` (the database's single write lock, taken before
  anything is read), and writers of one process queue on a lock first so none spins in SQLite's
  busy loop.
* **Idempotency lives in the schema**: a deposit is its ``deposit_id`` and also its outpoint
  (``source_chain, txid, vout`` is unique); an address is registered once for one
  ``(asset, source_chain, destination_chain, recipient)``; one order digest belongs to one deposit.
  Repeating a write with the same values is a no-op that records nothing.
* **Deposits follow a state machine** (:data:`TRANSITIONS`): an illegal transition raises
  :class:`IllegalTransition` and writes nothing. What a deposit pays (asset, chains, outpoint,
  address, amount, recipient) is fixed at first sight; an update that disagrees is a
  :class:`Conflict`, never a silent overwrite, and a deposit must pay an address this node derived
  and registered for exactly that recipient and destination.
* **Every transition is audited** in ``bridge_events``, append-only (triggers refuse UPDATE and
  DELETE on both engines) and hash-chained like the node's audit log: each row's hash covers the
  previous row's hash, its sequence number, time, deposit, event name and detail, and the head of
  the chain is kept in ``meta``, so an edit, a deletion or a truncation made behind the
  application's back is found by :meth:`BridgeDB.verify_event_chain`. Events are appended when the
  transaction commits (the head's row lock is the last lock a writer takes), so PostgreSQL writers
  on different deposits only queue for that final step.
* **Amounts are Python ints end to end**, up to 2**256 - 1 (an ERC-20 amount is a uint256): stored
  as ``NUMERIC(78, 0)`` on PostgreSQL and as decimal text on SQLite, where a NUMERIC column would
  round anything above 2**63 to a float.
* **Schema versions** are ordered, forward-only migrations recorded in ``schema_version``; a
  database written by a newer build is refused rather than misread. Migrations run under the
  write lock (``BEGIN IMMEDIATE`` / an advisory lock), so two processes opening one database at
  once migrate it once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

__all__ = [
    "FINAL_STATES",
    "INITIAL_STATES",
    "SCHEMA_VERSION",
    "STATES",
    "TRANSITIONS",
    "BridgeDB",
    "BridgeDBError",
    "Conflict",
    "Cursor",
    "Deposit",
    "DepositAddress",
    "Event",
    "IllegalTransition",
    "InvalidRecord",
    "NotFound",
    "SchemaTooNew",
    "StaleState",
    "Transaction",
    "open_database",
]

MAX_AMOUNT = 2**256 - 1
GENESIS_HASH = b"\x00" * 32
EVENT_HEAD = "event_head"  # meta row holding {"seq": n, "hash": hex} of the last event
_RESERVED_META = frozenset({EVENT_HEAD})
_HASH_DOMAIN = b"fusion-prime/bridge-event/v1|"
_MIGRATION_LOCK_KEY = 0x46505F4252444745  # "FP_BRDGE": pg_advisory_xact_lock key for migrations
_SQLITE_BUSY_TIMEOUT_S = 60.0  # another *process* holding the write lock; this process's writers queue on a lock

# --- the deposit state machine -----------------------------------------------------------------

STATES = ("seen", "confirming", "confirmed", "dust", "signing", "signed", "minted", "reorged", "erratum")
INITIAL_STATES = frozenset({"seen", "confirming", "confirmed", "dust"})
"""A watcher may first see a deposit at any depth (a node restarted after it confirmed), or below
the minimum."""
FINAL_STATES = frozenset({"minted", "erratum"})
"""Rows in these states are frozen except for the transitions below (a minted deposit can still be
found reorganised out: ``erratum``)."""
TRANSITIONS: dict[str, frozenset[str]] = {
    "seen": frozenset({"confirming", "confirmed", "dust", "reorged"}),
    "confirming": frozenset({"confirmed", "dust", "reorged"}),
    # confirmed -> minted: the mint was observed on-chain (another coordinator's, or while this
    # node was down) before this node signed anything.
    "confirmed": frozenset({"signing", "dust", "reorged", "minted"}),
    # signing -> confirmed: the signing session failed and the deposit may be claimed again.
    "signing": frozenset({"signed", "confirmed", "minted", "reorged"}),
    # signed -> signing: the order's deadline passed unrelayed and a fresh order is needed;
    # signed -> erratum: a signed order whose deposit left the chain is a live hazard.
    "signed": frozenset({"minted", "signing", "reorged", "erratum"}),
    "minted": frozenset({"erratum"}),
    # reorged: re-included in another block (any depth), or minted anyway (erratum).
    "reorged": frozenset({"seen", "confirming", "confirmed", "dust", "erratum"}),
    "dust": frozenset({"reorged"}),
    "erratum": frozenset(),
}
_REASON_REQUIRED = frozenset({"dust", "reorged", "erratum"})

_CAIP2 = re.compile(r"^[-a-z0-9]{3,8}:[-_a-zA-Z0-9]{1,32}$")


# --- errors ---------------------------------------------------------------------------------------

class BridgeDBError(Exception):
    """Base class of the errors this module raises on purpose."""


class InvalidRecord(BridgeDBError, ValueError):
    """A value that can never be stored (bad chain id, amount out of range, wrong id length...)."""


class NotFound(BridgeDBError, LookupError):
    """The row an update names does not exist."""


class Conflict(BridgeDBError):
    """A write disagrees with what is already recorded under the same idempotency key."""


class IllegalTransition(BridgeDBError):
    """A deposit state change the state machine does not allow; nothing was written."""


class StaleState(BridgeDBError):
    """The deposit is no longer in the state the caller expected (another writer moved it)."""


class SchemaTooNew(BridgeDBError):
    """The database was written by a newer build; reading it could misinterpret it."""


# --- records --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DepositAddress:
    """A deposit address and what it is for: deposits to it mint to ``recipient`` on
    ``destination_chain``. ``path`` is the BIP32 path every node derives from (destination chain,
    recipient) on its own; chains are CAIP-2 ids (``bip122:<genesis prefix>``, ``eip155:<id>``)."""

    address: str
    asset: str
    source_chain: str
    destination_chain: str
    recipient: str
    path: tuple[int, ...]
    created_at: float = 0.0


@dataclasses.dataclass(frozen=True)
class Deposit:
    """One deposit (an output or transfer to a deposit address) and where it is in the workflow.

    ``deposit_id`` is the canonical bytes32 id the Gateway records (``contracts/README.md``);
    ``txid``/``block_hash``/``mint_tx`` are hex strings as the chains' RPCs print them.
    """

    deposit_id: bytes
    asset: str
    source_chain: str
    txid: str
    vout: int
    address: str
    amount: int
    recipient: str
    destination_chain: str
    state: str = "seen"
    block_hash: str | None = None
    height: int | None = None
    confirmations: int = 0
    required_confirmations: int = 0
    order_digest: bytes | None = None
    order_json: str | None = None
    signature: bytes | None = None
    mint_tx: str | None = None
    minted_block: int | None = None
    reason: str | None = None
    updated_at: float = 0.0


IDENTITY_FIELDS = ("asset", "source_chain", "txid", "vout", "address", "amount", "recipient", "destination_chain")
"""What a deposit *is*: fixed when it is first recorded."""
MUTABLE_FIELDS = ("state", "block_hash", "height", "confirmations", "required_confirmations", "order_digest",
                  "order_json", "signature", "mint_tx", "minted_block", "reason")
"""Where a deposit is: changed only through the state machine's checks."""


@dataclasses.dataclass(frozen=True)
class Cursor:
    """How far this node has processed a chain (the block it has fully scanned)."""

    chain: str
    height: int
    block_hash: str
    updated_at: float


@dataclasses.dataclass(frozen=True)
class Event:
    """One row of the append-only, hash-chained ``bridge_events`` table."""

    seq: int
    at: float
    deposit_id: bytes | None
    event: str
    detail: dict[str, Any]
    prev_hash: bytes
    hash: bytes


# --- schema ---------------------------------------------------------------------------------------

class Amount(sa.types.TypeDecorator[int]):
    """An unsigned integer below 2**256: NUMERIC(78, 0) on PostgreSQL, decimal text on SQLite (whose
    NUMERIC affinity would turn a value above 2**63 into a lossy REAL)."""

    impl = sa.String(78)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.Numeric(78, 0, asdecimal=True))
        return dialect.type_descriptor(sa.String(78))

    def process_bind_param(self, value: int | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        value = _check_amount(value)
        return Decimal(value) if dialect.name == "postgresql" else str(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> int | None:
        return None if value is None else int(value)


metadata = sa.MetaData()

schema_version_table = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Double, nullable=False),
)


def _define_v1(md: sa.MetaData) -> dict[str, sa.Table]:
    """The tables as migration 1 creates them. Migrations are frozen history: a later change to a
    table is a new migration plus a change to the runtime definitions, never an edit here."""
    state_list = ", ".join(f"'{s}'" for s in STATES)
    tables = [
        sa.Table(
            "deposit_addresses", md,
            sa.Column("address", sa.String(128), primary_key=True),
            sa.Column("asset", sa.String(32), nullable=False),
            sa.Column("source_chain", sa.String(64), nullable=False),
            sa.Column("destination_chain", sa.String(64), nullable=False),
            sa.Column("recipient", sa.String(128), nullable=False),
            sa.Column("path", sa.JSON, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.UniqueConstraint("asset", "source_chain", "destination_chain", "recipient",
                                name="deposit_addresses_one_per_recipient"),
        ),
        sa.Table(
            "deposits", md,
            sa.Column("deposit_id", sa.LargeBinary(32), primary_key=True),
            sa.Column("asset", sa.String(32), nullable=False),
            sa.Column("source_chain", sa.String(64), nullable=False),
            sa.Column("txid", sa.String(128), nullable=False),
            # BIGINT: an output index is a uint32 (and EVM native deposits use 2**32 - 1,
            # bridge/orders.py), which PostgreSQL's 32-bit signed INTEGER cannot hold.
            sa.Column("vout", sa.BigInteger, nullable=False),
            sa.Column("address", sa.String(128), sa.ForeignKey("deposit_addresses.address"), nullable=False),
            sa.Column("amount", Amount, nullable=False),
            sa.Column("recipient", sa.String(128), nullable=False),
            sa.Column("destination_chain", sa.String(64), nullable=False),
            sa.Column("block_hash", sa.String(128)),
            sa.Column("height", sa.BigInteger),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("confirmations", sa.Integer, nullable=False),
            sa.Column("required_confirmations", sa.Integer, nullable=False),
            sa.Column("order_digest", sa.LargeBinary(32)),
            sa.Column("order_json", sa.Text),
            sa.Column("signature", sa.LargeBinary),
            sa.Column("mint_tx", sa.String(128)),
            sa.Column("minted_block", sa.BigInteger),
            sa.Column("reason", sa.Text),
            sa.Column("updated_at", sa.Double, nullable=False),
            sa.UniqueConstraint("source_chain", "txid", "vout", name="deposits_one_per_outpoint"),
            sa.UniqueConstraint("order_digest", name="deposits_one_per_order"),
            sa.CheckConstraint(f"state IN ({state_list})", name="deposits_state_valid"),
            sa.CheckConstraint("vout >= 0 AND confirmations >= 0 AND required_confirmations >= 0",
                               name="deposits_counts_valid"),
            sa.Index("deposits_by_state", "state"),
            sa.Index("deposits_by_address", "address"),
        ),
        sa.Table(
            "chain_cursors", md,
            sa.Column("chain", sa.String(64), primary_key=True),
            sa.Column("height", sa.BigInteger, nullable=False),
            sa.Column("block_hash", sa.String(128), nullable=False),
            sa.Column("updated_at", sa.Double, nullable=False),
        ),
        sa.Table(
            "bridge_events", md,
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("at", sa.Double, nullable=False),
            sa.Column("deposit_id", sa.LargeBinary(32)),  # no FK: refusals name deposits that do not exist
            sa.Column("event", sa.String(64), nullable=False),
            sa.Column("detail", sa.Text, nullable=False),  # canonical JSON: the hash covers these exact bytes
            sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
            sa.Column("hash", sa.LargeBinary(32), nullable=False),
            sa.UniqueConstraint("prev_hash", name="bridge_events_linear"),  # the chain cannot fork
            sa.Index("bridge_events_by_deposit", "deposit_id", "seq"),
        ),
        sa.Table(
            "meta", md,
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        ),
    ]
    return {t.name: t for t in tables}


_tables = _define_v1(metadata)
deposit_addresses = _tables["deposit_addresses"]
deposits = _tables["deposits"]
chain_cursors = _tables["chain_cursors"]
bridge_events = _tables["bridge_events"]
meta = _tables["meta"]


def _migration_1(conn: Connection) -> None:
    """The tables, and the genesis head of the event chain."""
    v1 = sa.MetaData()
    _define_v1(v1)
    v1.create_all(conn)
    conn.execute(sa.insert(v1.tables["meta"]).values(
        name=EVENT_HEAD, value=json.dumps({"seq": 0, "hash": GENESIS_HASH.hex()})))


def _migration_2(conn: Connection) -> None:
    """Invariants the application must not be able to break by mistake: the event log is
    append-only, and a deposit row is never deleted (its history is the evidence)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(  # text(): SQLAlchemy escapes the '%' for psycopg's placeholders
            "CREATE FUNCTION bridge_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$"
        ))
        conn.exec_driver_sql(
            "CREATE TRIGGER bridge_events_append_only BEFORE UPDATE OR DELETE ON bridge_events "
            "FOR EACH ROW EXECUTE FUNCTION bridge_refuse_change()"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER deposits_no_delete BEFORE DELETE ON deposits "
            "FOR EACH ROW EXECUTE FUNCTION bridge_refuse_change()"
        )
    else:
        for statement in (
            "CREATE TRIGGER bridge_events_no_update BEFORE UPDATE ON bridge_events "
            "BEGIN SELECT RAISE(ABORT, 'bridge_events is append-only'); END",
            "CREATE TRIGGER bridge_events_no_delete BEFORE DELETE ON bridge_events "
            "BEGIN SELECT RAISE(ABORT, 'bridge_events is append-only'); END",
            "CREATE TRIGGER deposits_no_delete BEFORE DELETE ON deposits "
            "BEGIN SELECT RAISE(ABORT, 'deposits is append-only'); END",
        ):
            conn.exec_driver_sql(statement)


def _migration_3(conn: Connection) -> None:
    """``deposits.vout`` holds any uint32 (EVM native deposits use 2**32 - 1): 64-bit on
    PostgreSQL, where v1 made it a 32-bit INTEGER. SQLite's INTEGER is already 64-bit."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ALTER TABLE deposits ALTER COLUMN vout TYPE BIGINT")


def _define_v4(md: sa.MetaData) -> dict[str, sa.Table]:
    """Withdrawals (burn -> payout), as migration 4 creates them (frozen like ``_define_v1``)."""
    tables = [
        sa.Table(
            "withdrawals", md,
            sa.Column("burn_id", sa.LargeBinary(32), primary_key=True),
            sa.Column("asset", sa.String(64), nullable=False),
            sa.Column("source_chain", sa.String(64), nullable=False),
            sa.Column("burn_nonce", sa.BigInteger, nullable=False),
            sa.Column("burner", sa.String(64), nullable=False),
            sa.Column("amount", Amount, nullable=False),
            sa.Column("destination", sa.Text, nullable=False),  # hex of the raw bytes in Burned
            sa.Column("burn_block", sa.BigInteger, nullable=False),
            sa.Column("burn_tx", sa.String(128), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("payout_id", sa.String(66)),
            sa.Column("txid", sa.String(128)),
            sa.Column("confirmations", sa.Integer, nullable=False),
            sa.Column("required_confirmations", sa.Integer, nullable=False),
            sa.Column("refund_tx", sa.String(128)),
            sa.Column("reason", sa.Text),
            sa.Column("updated_at", sa.Double, nullable=False),
            sa.UniqueConstraint("asset", "burn_nonce", name="withdrawals_one_per_nonce"),
            sa.Index("withdrawals_by_state", "state"),
            sa.Index("withdrawals_by_burner", "burner"),
        ),
        # Every payout transaction this node built, co-signed or found, signed or not: the
        # archive THORChain and tBTC keep (a variant that can still confirm is never forgotten),
        # and what "this burn is already in a payout" is decided from.
        sa.Table(
            "payout_archive", md,
            sa.Column("txid", sa.String(128), primary_key=True),
            sa.Column("payout_id", sa.String(66), nullable=False),
            sa.Column("source_chain", sa.String(64), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),  # coordinator | cosigned | found
            sa.Column("burn_ids", sa.JSON, nullable=False),
            sa.Column("inputs", sa.JSON, nullable=False),  # ["txid:vout", ...] (EVM: ["account:nonce"])
            sa.Column("proposal", sa.Text),  # hex of the canonical proposal
            sa.Column("raw", sa.Text),  # hex of the signed transaction, once known
            sa.Column("fee", Amount, nullable=False),
            sa.Column("replaces", sa.String(128)),
            sa.Column("created_at", sa.Double, nullable=False),
            sa.Index("payout_archive_by_payout", "payout_id"),
        ),
        # Outputs the group key controls on a UTXO chain that payouts may spend: minted deposit
        # outputs (learned from the Gateway's Minted logs, so every node knows the same ones,
        # registered here or not) and payout change. Whether one is still unspent is asked of
        # this node's own chain endpoint every time.
        sa.Table(
            "custody_coins", md,
            sa.Column("chain", sa.String(64), primary_key=True),
            sa.Column("txid", sa.String(64), primary_key=True),
            sa.Column("vout", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("value", Amount, nullable=False),
            sa.Column("path", sa.JSON, nullable=False),
            sa.Column("public_key", sa.String(66), nullable=False),
            sa.Column("origin", sa.String(16), nullable=False),  # deposit | change
            sa.Column("created_at", sa.Double, nullable=False),
        ),
    ]
    return {t.name: t for t in tables}


_tables_v4 = _define_v4(metadata)
withdrawals = _tables_v4["withdrawals"]
payout_archive = _tables_v4["payout_archive"]
custody_coins = _tables_v4["custody_coins"]


def _migration_4(conn: Connection) -> None:
    """Withdrawal status rows and the payout archive (append-only: a payout is never forgotten)."""
    v4 = sa.MetaData()
    _define_v4(v4)
    v4.create_all(conn)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE TRIGGER payout_archive_no_delete BEFORE DELETE ON payout_archive "
            "FOR EACH ROW EXECUTE FUNCTION bridge_refuse_change()"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER withdrawals_no_delete BEFORE DELETE ON withdrawals "
            "FOR EACH ROW EXECUTE FUNCTION bridge_refuse_change()"
        )
    else:
        conn.exec_driver_sql("CREATE TRIGGER payout_archive_no_delete BEFORE DELETE ON payout_archive "
                             "BEGIN SELECT RAISE(ABORT, 'payout_archive is append-only'); END")
        conn.exec_driver_sql("CREATE TRIGGER withdrawals_no_delete BEFORE DELETE ON withdrawals "
                             "BEGIN SELECT RAISE(ABORT, 'withdrawals is append-only'); END")


def _define_v5(md: sa.MetaData) -> dict[str, sa.Table]:
    """The settlement replica (``bridge/settlement/store.py``), as migration 5 creates it (frozen)."""
    tables = [
        # Every batch this node applied, as signed by its coordinator: the replica's history, what
        # a lagging or resyncing peer replays, and the evidence against a coordinator that lied.
        sa.Table(
            "settlement_batches", md,
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("hash", sa.LargeBinary(32), nullable=False, unique=True),
            sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
            sa.Column("time_ms", sa.BigInteger, nullable=False),
            sa.Column("coordinator", sa.String(64), nullable=False),
            sa.Column("signed", sa.LargeBinary, nullable=False),
            sa.Column("outcomes", sa.JSON, nullable=False),
            sa.Column("stored_at", sa.Double, nullable=False),
        ),
        # The whole ledger at a batch (after every finalised cycle): a restart loads the latest
        # and replays the batches after it.
        sa.Table(
            "settlement_snapshots", md,
            sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("snapshot", sa.LargeBinary, nullable=False),
            sa.Column("created_at", sa.Double, nullable=False),
        ),
        # Materialised views for the back office (SQL reports), written in the batch's transaction.
        sa.Table(
            "settlement_accounts", md,
            sa.Column("party", sa.String(66), primary_key=True),
            sa.Column("asset", sa.String(16), primary_key=True),
            sa.Column("balance", Amount, nullable=False),
            sa.Column("held", Amount, nullable=False),
            sa.Column("updated_seq", sa.BigInteger, nullable=False),
        ),
        sa.Table(
            "settlement_trades", md,
            sa.Column("trade_id", sa.String(64), primary_key=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("mode", sa.String(8), nullable=False),
            sa.Column("cycle", sa.BigInteger, nullable=False),
            sa.Column("record", sa.JSON, nullable=False),
            sa.Column("updated_seq", sa.BigInteger, nullable=False),
            sa.Index("settlement_trades_by_status", "status"),
        ),
        sa.Table(
            "settlement_withdrawals", md,
            sa.Column("withdrawal_id", sa.String(64), primary_key=True),
            sa.Column("party", sa.String(66), nullable=False),
            sa.Column("asset", sa.String(16), nullable=False),
            sa.Column("amount", Amount, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("record", sa.JSON, nullable=False),
            sa.Column("updated_seq", sa.BigInteger, nullable=False),
            sa.Index("settlement_withdrawals_by_status", "status"),
        ),
        # Each cycle's checkpoint as this node computed it, and the group's signature once made.
        sa.Table(
            "settlement_checkpoints", md,
            sa.Column("cycle", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("root", sa.LargeBinary(32), nullable=False),
            sa.Column("checkpoint", sa.LargeBinary, nullable=False),
            # the leaves under its root (party, asset, balance, held) as JSON: clients' proofs
            sa.Column("accounts", sa.LargeBinary, nullable=False),
            sa.Column("signature", sa.LargeBinary),
            sa.Column("published_tx", sa.String(80)),
            sa.Column("created_at", sa.Double, nullable=False),
        ),
    ]
    return {t.name: t for t in tables}


_tables_v5 = _define_v5(metadata)
settlement_batches = _tables_v5["settlement_batches"]
settlement_snapshots = _tables_v5["settlement_snapshots"]
settlement_accounts = _tables_v5["settlement_accounts"]
settlement_trades = _tables_v5["settlement_trades"]
settlement_withdrawals = _tables_v5["settlement_withdrawals"]
settlement_checkpoints = _tables_v5["settlement_checkpoints"]


def _migration_5(conn: Connection) -> None:
    """The settlement replica; its batch log is append-only (a resync replaces the replica by
    replaying batches into a fresh database, never by editing history)."""
    v5 = sa.MetaData()
    _define_v5(v5)
    v5.create_all(conn)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE TRIGGER settlement_batches_append_only BEFORE UPDATE OR DELETE ON settlement_batches "
            "FOR EACH ROW EXECUTE FUNCTION bridge_refuse_change()"
        )
    else:
        for statement in (
            "CREATE TRIGGER settlement_batches_no_update BEFORE UPDATE ON settlement_batches "
            "BEGIN SELECT RAISE(ABORT, 'settlement_batches is append-only'); END",
            "CREATE TRIGGER settlement_batches_no_delete BEFORE DELETE ON settlement_batches "
            "BEGIN SELECT RAISE(ABORT, 'settlement_batches is append-only'); END",
        ):
            conn.exec_driver_sql(statement)


def _define_v6(md: sa.MetaData) -> dict[str, sa.Table]:
    """Account withdrawals on the payout side, as migration 6 creates them (frozen).

    A withdrawal from a settlement account is paid by the bridge's payout machinery under a burn id
    of its own (``withdrawals.account_burn_id``); this row is to it what a ``withdrawals`` row is to
    a Gateway burn — what the status API and every participant's payout check read. Separate from
    ``withdrawals`` because it is not a Gateway burn: it never counts as burned supply in flight,
    never appears in a proof of reserves as one, is never refunded on the Gateway, and its ordering
    nonce (above 2**255) does not fit that table's BIGINT."""
    tables = [
        sa.Table(
            "account_withdrawals", md,
            sa.Column("burn_id", sa.LargeBinary(32), primary_key=True),
            sa.Column("withdrawal_id", sa.LargeBinary(32), nullable=False, unique=True),  # the ledger's id
            sa.Column("party", sa.String(66), nullable=False),  # hex of the client key
            sa.Column("ledger_asset", sa.String(16), nullable=False),  # the ledger's asset symbol
            sa.Column("asset", sa.String(64), nullable=False),  # the withdrawal side paying it ("" if none)
            sa.Column("source_chain", sa.String(64), nullable=False),  # the chain paid on
            sa.Column("burn_nonce", Amount, nullable=False),  # withdrawals.account_nonce(burn_id)
            sa.Column("amount", Amount, nullable=False),
            sa.Column("destination", sa.Text, nullable=False),  # hex of the raw destination bytes paid
            sa.Column("created_ms", sa.BigInteger, nullable=False),  # the ledger batch's time
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("payout_id", sa.String(66)),
            sa.Column("txid", sa.String(128)),
            sa.Column("confirmations", sa.Integer, nullable=False),
            sa.Column("required_confirmations", sa.Integer, nullable=False),
            sa.Column("reason", sa.Text),
            # what this node's ledger replica last said of it: pending | paid | returned (a payout
            # confirmed here stays a liability of the ledger until its WithdrawalPaid is applied)
            sa.Column("ledger_status", sa.String(16), nullable=False, server_default="pending"),
            sa.Column("updated_at", sa.Double, nullable=False),
            sa.Index("account_withdrawals_by_state", "state"),
            sa.Index("account_withdrawals_by_ledger_status", "ledger_status"),
        ),
    ]
    return {t.name: t for t in tables}


_tables_v6 = _define_v6(metadata)
account_withdrawals = _tables_v6["account_withdrawals"]


def _migration_6(conn: Connection) -> None:
    """Account withdrawals on the payout side; append-only like ``withdrawals`` (a withdrawal that
    was ever in a payout is never forgotten)."""
    v6 = sa.MetaData()
    _define_v6(v6)
    v6.create_all(conn)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE TRIGGER account_withdrawals_no_delete BEFORE DELETE ON account_withdrawals "
            "FOR EACH ROW EXECUTE FUNCTION bridge_refuse_change()"
        )
    else:
        conn.exec_driver_sql("CREATE TRIGGER account_withdrawals_no_delete BEFORE DELETE ON account_withdrawals "
                             "BEGIN SELECT RAISE(ABORT, 'account_withdrawals is append-only'); END")


def _define_v7(md: sa.MetaData) -> dict[str, sa.Table]:
    """Reserve samples for the explorer's reserves-against-supply chart, as migration 7 creates them
    (frozen). One row per asset each time the withdrawal side judged solvency and something moved
    (or a while passed): what custody held, what was owed, and at which blocks. Derived, bounded
    history (``bridge/explorer.py`` keeps the latest rows per asset and deletes older ones), so not
    append-only and not audited: the proof of reserves, not this table, is the evidence."""
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: a rowid alias, so it counts up
    tables = [
        sa.Table(
            "reserve_samples", md,
            sa.Column("seq", big_id, primary_key=True, autoincrement=True),
            sa.Column("at", sa.Double, nullable=False),
            sa.Column("asset", sa.String(64), nullable=False),  # the wrapped token (withdrawal side's key)
            sa.Column("symbol", sa.String(16), nullable=False),  # what is deposited: BTC, ETH
            sa.Column("chain", sa.String(64), nullable=False),  # the source chain (CAIP-2)
            sa.Column("custody", Amount, nullable=False),
            sa.Column("supply", Amount, nullable=False),
            sa.Column("in_flight", Amount, nullable=False),
            sa.Column("ledger", Amount, nullable=False),
            sa.Column("tolerance", Amount, nullable=False),
            sa.Column("solvent", sa.Boolean, nullable=False),
            sa.Column("source_height", sa.BigInteger),  # this node's tip of the source chain then
            sa.Column("destination_height", sa.BigInteger),  # the block the supply was read at
            sa.Index("reserve_samples_by_asset", "asset", "seq"),
        ),
    ]
    return {t.name: t for t in tables}


_tables_v7 = _define_v7(metadata)
reserve_samples = _tables_v7["reserve_samples"]


def _migration_7(conn: Connection) -> None:
    """Reserve samples over time (the explorer's chart)."""
    v7 = sa.MetaData()
    _define_v7(v7)
    v7.create_all(conn)


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_migration_1, _migration_2, _migration_3, _migration_4,
                                                        _migration_5, _migration_6, _migration_7)
SCHEMA_VERSION = len(MIGRATIONS)


# --- validation and encoding -------------------------------------------------------------------

def _check_amount(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecord(f"amount must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_AMOUNT:
        raise InvalidRecord(f"amount {value} outside [0, 2**256)")
    return value


def _check_chain(name: str, value: str) -> None:
    if not isinstance(value, str) or not _CAIP2.match(value):
        raise InvalidRecord(f"{name} {value!r} is not a CAIP-2 chain id")


def _check_bytes32(name: str, value: bytes | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidRecord(f"{name} must be 32 bytes")


def _check_deposit(d: Deposit) -> None:
    _check_bytes32("deposit_id", d.deposit_id)
    _check_bytes32("order_digest", d.order_digest, optional=True)
    _check_chain("source_chain", d.source_chain)
    _check_chain("destination_chain", d.destination_chain)
    _check_amount(d.amount)
    if d.state not in TRANSITIONS:
        raise InvalidRecord(f"unknown deposit state {d.state!r}")
    for name in ("vout", "confirmations", "required_confirmations"):
        value = getattr(d, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise InvalidRecord(f"{name} must be an int in [0, 2**32)")
    for name in ("asset", "txid", "address", "recipient"):
        if not isinstance(getattr(d, name), str) or not getattr(d, name):
            raise InvalidRecord(f"{name} must be a non-empty string")
    if d.signature is not None and not isinstance(d.signature, bytes):
        raise InvalidRecord("signature must be bytes")
    # What each state means must be on the row, so a reader never has to guess.
    if d.state == "signed" and (d.order_digest is None or d.signature is None):
        raise InvalidRecord("a signed deposit needs its order digest and signature")
    if d.state == "minted" and d.mint_tx is None:
        raise InvalidRecord("a minted deposit needs its mint transaction")
    if d.state in _REASON_REQUIRED and not d.reason:
        raise InvalidRecord(f"a deposit in state {d.state!r} needs a reason")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
        return str(value)  # JSON readers that use doubles would round it
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _canonical(detail: dict[str, Any]) -> str:
    return json.dumps(_jsonable(detail), sort_keys=True, separators=(",", ":"))


def _event_hash(prev: bytes, seq: int, at: float, deposit_id: bytes | None, event: str, detail: str) -> bytes:
    body = json.dumps([seq, repr(float(at)), (deposit_id or b"").hex(), event, detail], separators=(",", ":"))
    return hashlib.sha256(_HASH_DOMAIN + prev + body.encode()).digest()


def _deposit_from_row(row: sa.Row[Any]) -> Deposit:
    m = row._mapping
    values = {f.name: m[f.name] for f in dataclasses.fields(Deposit)}
    for name in ("deposit_id", "order_digest", "signature"):
        if values[name] is not None:
            values[name] = bytes(values[name])
    return Deposit(**values)


def _address_from_row(row: sa.Row[Any]) -> DepositAddress:
    m = row._mapping
    return DepositAddress(address=m["address"], asset=m["asset"], source_chain=m["source_chain"],
                          destination_chain=m["destination_chain"], recipient=m["recipient"],
                          path=tuple(int(i) for i in m["path"]), created_at=m["created_at"])


def _event_from_row(row: sa.Row[Any]) -> Event:
    m = row._mapping
    return Event(seq=m["seq"], at=m["at"], deposit_id=None if m["deposit_id"] is None else bytes(m["deposit_id"]),
                 event=m["event"], detail=json.loads(m["detail"]), prev_hash=bytes(m["prev_hash"]),
                 hash=bytes(m["hash"]))


def _states(expect: str | Collection[str] | None) -> frozenset[str] | None:
    if expect is None:
        return None
    return frozenset({expect}) if isinstance(expect, str) else frozenset(expect)


# --- reading --------------------------------------------------------------------------------------

class Reader:
    """Queries over one connection; a :class:`Transaction` reads its own uncommitted writes."""

    def __init__(self, conn: Connection) -> None:
        self._c: Connection | None = conn

    @property
    def conn(self) -> Connection:
        if self._c is None:
            raise BridgeDBError("this transaction is finished; open a new one")
        return self._c

    def get_address(self, address: str) -> DepositAddress | None:
        row = self.conn.execute(sa.select(deposit_addresses).where(deposit_addresses.c.address == address)).first()
        return None if row is None else _address_from_row(row)

    def get_deposit(self, deposit_id: bytes) -> Deposit | None:
        row = self.conn.execute(sa.select(deposits).where(deposits.c.deposit_id == deposit_id)).first()
        return None if row is None else _deposit_from_row(row)

    def deposits_by_address(self, address: str) -> list[Deposit]:
        """Oldest first (by block height; not yet mined last)."""
        q = (sa.select(deposits).where(deposits.c.address == address)
             .order_by(sa.nulls_last(deposits.c.height.asc()), deposits.c.txid, deposits.c.vout))
        return [_deposit_from_row(r) for r in self.conn.execute(q)]

    def deposits_in_state(self, state: str, *, source_chain: str | None = None,
                          limit: int | None = None) -> list[Deposit]:
        """The work queue of one stage (e.g. every ``confirmed`` deposit waiting for a mint), oldest first."""
        if state not in TRANSITIONS:
            raise InvalidRecord(f"unknown deposit state {state!r}")
        q = sa.select(deposits).where(deposits.c.state == state)
        if source_chain is not None:
            q = q.where(deposits.c.source_chain == source_chain)
        q = q.order_by(sa.nulls_last(deposits.c.height.asc()), deposits.c.deposit_id).limit(limit)
        return [_deposit_from_row(r) for r in self.conn.execute(q)]

    def get_withdrawal(self, burn_id: bytes) -> dict[str, Any] | None:
        row = self.conn.execute(sa.select(withdrawals).where(withdrawals.c.burn_id == burn_id)).first()
        return None if row is None else dict(row._mapping)

    def get_account_withdrawal(self, burn_id: bytes) -> dict[str, Any] | None:
        """The account withdrawal paid under ``burn_id`` (``withdrawals.account_burn_id``), or None."""
        row = self.conn.execute(sa.select(account_withdrawals).where(account_withdrawals.c.burn_id == burn_id)).first()
        return None if row is None else dict(row._mapping)

    def account_withdrawal_by_id(self, withdrawal_id: bytes) -> dict[str, Any] | None:
        """The account withdrawal with the settlement ledger's id ``withdrawal_id``, or None."""
        row = self.conn.execute(sa.select(account_withdrawals)
                                .where(account_withdrawals.c.withdrawal_id == withdrawal_id)).first()
        return None if row is None else dict(row._mapping)

    def account_withdrawals_in(self, states: Collection[str] | None = None, asset: str | None = None, *,
                               ledger_status: str | None = None) -> list[dict[str, Any]]:
        """Account withdrawals in one of ``states`` (None: any), of one withdrawal side's ``asset``,
        with this ``ledger_status``, oldest first."""
        q = sa.select(account_withdrawals)
        if states is not None:
            q = q.where(account_withdrawals.c.state.in_(list(states)))
        if asset is not None:
            q = q.where(sa.func.lower(account_withdrawals.c.asset) == asset.lower())
        if ledger_status is not None:
            q = q.where(account_withdrawals.c.ledger_status == ledger_status)
        q = q.order_by(account_withdrawals.c.created_ms, account_withdrawals.c.burn_id)
        return [dict(r._mapping) for r in self.conn.execute(q).all()]

    def withdrawals_by_burner(self, burner: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.conn.execute(sa.select(withdrawals).where(sa.func.lower(withdrawals.c.burner) == burner.lower())
                                 .order_by(withdrawals.c.burn_nonce.desc()).limit(limit)).all()
        return [dict(r._mapping) for r in rows]

    def archived_payout(self, txid: str) -> dict[str, Any] | None:
        row = self.conn.execute(sa.select(payout_archive).where(payout_archive.c.txid == txid)).first()
        return None if row is None else dict(row._mapping)

    def archived_payouts(self, source_chain: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(payout_archive).order_by(payout_archive.c.created_at)
        if source_chain is not None:
            q = q.where(payout_archive.c.source_chain == source_chain)
        return [dict(r._mapping) for r in self.conn.execute(q).all()]

    def custody_coins(self, chain: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(sa.select(custody_coins).where(custody_coins.c.chain == chain)
                                 .order_by(custody_coins.c.txid, custody_coins.c.vout)).all()
        return [dict(r._mapping) for r in rows]

    def get_cursor(self, chain: str) -> Cursor | None:
        row = self.conn.execute(sa.select(chain_cursors).where(chain_cursors.c.chain == chain)).first()
        return None if row is None else Cursor(**row._mapping)

    def get_meta(self, name: str) -> str | None:
        return self.conn.scalar(sa.select(meta.c.value).where(meta.c.name == name))

    def events(self, deposit_id: bytes | None = None, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        """Events in order; one deposit's when ``deposit_id`` is given. ``after_seq`` lets a status
        stream resume where it stopped, so a reconnecting client loses nothing."""
        q = sa.select(bridge_events).where(bridge_events.c.seq > after_seq)
        if deposit_id is not None:
            q = q.where(bridge_events.c.deposit_id == deposit_id)
        q = q.order_by(bridge_events.c.seq).limit(limit)
        return [_event_from_row(r) for r in self.conn.execute(q)]

    def verify_event_chain(self) -> bool:
        """True iff every event's hash is intact, each covers its predecessor's, the sequence has no
        gap, and the last event is the head recorded in ``meta`` (so a truncated tail is caught)."""
        prev, expected_seq = GENESIS_HASH, 1
        q = sa.select(bridge_events).order_by(bridge_events.c.seq)
        for row in self.conn.execute(q):
            m = row._mapping
            if m["seq"] != expected_seq or bytes(m["prev_hash"]) != prev:
                return False
            deposit_id = None if m["deposit_id"] is None else bytes(m["deposit_id"])
            digest = _event_hash(prev, m["seq"], m["at"], deposit_id, m["event"], m["detail"])
            if bytes(m["hash"]) != digest:
                return False
            prev, expected_seq = digest, expected_seq + 1
        head = self.get_meta(EVENT_HEAD)
        if head is None:
            return False
        head_json = json.loads(head)
        return head_json == {"seq": expected_seq - 1, "hash": prev.hex()}


# --- writing --------------------------------------------------------------------------------------

class Transaction(Reader):
    """Writes inside one database transaction (obtained from :meth:`BridgeDB.transaction`).

    Events are queued and appended, hash-chained, just before the commit; if anything raises, the
    rows and their events are rolled back together.
    """

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._pending: list[tuple[bytes | None, str, str]] = []
        self._now = time.time()

    @property
    def _pg(self) -> bool:
        return self.conn.dialect.name == "postgresql"

    def _insert(self, table: sa.Table) -> Any:
        return (pg_dialect.insert if self._pg else sqlite_dialect.insert)(table)

    # events ------------------------------------------------------------------------------------
    def record_event(self, event: str, detail: dict[str, Any] | None = None, deposit_id: bytes | None = None) -> None:
        """Audit something that is not a row change (a refused mint proposal, an alert)."""
        if not event or len(event) > 64:
            raise InvalidRecord("event name must be 1-64 characters")
        _check_bytes32("deposit_id", deposit_id, optional=True)
        self._pending.append((deposit_id, event, _canonical(detail or {})))

    def _flush_events(self) -> None:
        if not self._pending:
            return
        # The head's row lock serialises appenders on PostgreSQL; taken last, so writers on
        # different deposits only queue here. (SQLite's write lock is already held.)
        head_row = self.conn.execute(sa.select(meta.c.value).where(meta.c.name == EVENT_HEAD).with_for_update()).first()
        if head_row is None:
            raise BridgeDBError("event chain head missing from meta")
        head = json.loads(head_row[0])
        seq, prev = int(head["seq"]), bytes.fromhex(head["hash"])
        rows = []
        for deposit_id, event, detail in self._pending:
            seq += 1
            at = time.time()
            digest = _event_hash(prev, seq, at, deposit_id, event, detail)
            rows.append({"seq": seq, "at": at, "deposit_id": deposit_id, "event": event, "detail": detail,
                         "prev_hash": prev, "hash": digest})
            prev = digest
        self.conn.execute(sa.insert(bridge_events), rows)
        self.conn.execute(sa.update(meta).where(meta.c.name == EVENT_HEAD)
                          .values(value=json.dumps({"seq": seq, "hash": prev.hex()})))
        self._pending.clear()

    # addresses ---------------------------------------------------------------------------------
    def register_address(self, address: DepositAddress) -> DepositAddress:
        """Record a derived deposit address; idempotent. Returns the stored row (its first
        ``created_at``). Raises :class:`Conflict` if the address, or the (asset, source, destination,
        recipient) it serves, is already recorded differently - two recipients at one address would
        mint one user's deposit to another."""
        _check_chain("source_chain", address.source_chain)
        _check_chain("destination_chain", address.destination_chain)
        if not all(isinstance(i, int) and 0 <= i < 2**32 for i in address.path):
            raise InvalidRecord("path must be BIP32 indices (0 <= i < 2**32)")
        row = {"address": address.address, "asset": address.asset, "source_chain": address.source_chain,
               "destination_chain": address.destination_chain, "recipient": address.recipient,
               "path": list(address.path), "created_at": self._now}
        # DO NOTHING on *any* unique key: with a conflict target, PostgreSQL would raise on the
        # other unique key when two writers insert the same row at once, instead of waiting.
        # RETURNING, not rowcount: psycopg reports -1 for this statement.
        inserted = self.conn.execute(
            self._insert(deposit_addresses).values(row).on_conflict_do_nothing()
            .returning(deposit_addresses.c.address)).first() is not None
        stored = self.get_address(address.address)
        if stored is None:
            raise Conflict(f"{address.source_chain}/{address.asset} → {address.destination_chain} "
                           f"{address.recipient} already has another deposit address")
        if dataclasses.replace(stored, created_at=0.0) != dataclasses.replace(address, created_at=0.0,
                                                                             path=tuple(address.path)):
            raise Conflict(f"deposit address {address.address} is already registered for something else")
        if inserted:
            self.record_event("address-registered", {k: v for k, v in row.items() if k != "created_at"})
        return stored

    # deposits ----------------------------------------------------------------------------------
    def _lock_deposit(self, deposit_id: bytes) -> Deposit | None:
        row = self.conn.execute(
            sa.select(deposits).where(deposits.c.deposit_id == deposit_id).with_for_update()
        ).first()
        return None if row is None else _deposit_from_row(row)

    def upsert_deposit(self, deposit: Deposit, *, expect_state: str | Collection[str] | None = None) -> Deposit:
        """Record a deposit, or move a recorded one to ``deposit``'s state and fields.

        A new deposit must start in one of :data:`INITIAL_STATES` and pay a registered address for
        the same asset, chains and recipient. An existing one must agree on every identity field
        (:data:`IDENTITY_FIELDS`, else :class:`Conflict`), and the state change must be allowed
        (else :class:`IllegalTransition`). ``expect_state`` makes it a compare-and-set: if the
        stored state is not one of those, :class:`StaleState` is raised. Writing the same values
        again changes nothing and records no event. Returns the stored deposit.
        """
        _check_deposit(deposit)
        expected = _states(expect_state)
        current = self._lock_deposit(deposit.deposit_id)
        if current is None:
            if expected is not None:
                raise StaleState(f"deposit {deposit.deposit_id.hex()} is not recorded (expected {sorted(expected)})")
            if deposit.state not in INITIAL_STATES:
                raise IllegalTransition(f"a new deposit cannot start in state {deposit.state!r}")
            self._check_pays_registered_address(deposit)
            row = {f.name: getattr(deposit, f.name) for f in dataclasses.fields(Deposit)}
            row["updated_at"] = self._now
            # DO NOTHING on any unique key (see register_address), then find out which one it was.
            inserted = self.conn.execute(
                self._insert(deposits).values(row).on_conflict_do_nothing()
                .returning(deposits.c.deposit_id)).first() is not None
            if inserted:
                stored = dataclasses.replace(deposit, updated_at=self._now)
                self.record_event(f"deposit-{deposit.state}",
                                  {"from": None, "to": deposit.state,
                                   "deposit": {k: v for k, v in row.items() if k not in ("deposit_id", "updated_at")}},
                                  deposit.deposit_id)
                return stored
            current = self._lock_deposit(deposit.deposit_id)  # another writer may have inserted it first
            if current is None:
                raise Conflict(f"outpoint {deposit.source_chain} {deposit.txid}:{deposit.vout} (or its order) "
                               "is already recorded under another deposit id")
        for name in IDENTITY_FIELDS:
            if getattr(current, name) != getattr(deposit, name):
                raise Conflict(f"deposit {deposit.deposit_id.hex()}: {name} is recorded as "
                               f"{getattr(current, name)!r}, not {getattr(deposit, name)!r}")
        return self._move(current, {name: getattr(deposit, name) for name in MUTABLE_FIELDS}, expected)

    def update_deposit(self, deposit_id: bytes, *, expect_state: str | Collection[str] | None = None,
                       **changes: Any) -> Deposit:
        """Change some of a recorded deposit's :data:`MUTABLE_FIELDS` (e.g. ``state="confirmed",
        confirmations=6``), with the same checks as :meth:`upsert_deposit`."""
        unknown = set(changes) - set(MUTABLE_FIELDS)
        if unknown:
            raise InvalidRecord(f"not mutable deposit fields: {sorted(unknown)}")
        current = self._lock_deposit(deposit_id)
        if current is None:
            raise NotFound(f"deposit {deposit_id.hex()} is not recorded")
        return self._move(current, changes, _states(expect_state))

    def claim_deposit(self, deposit_id: bytes, *, from_state: str | Collection[str] = "confirmed",
                      to_state: str = "signing", **changes: Any) -> Deposit | None:
        """Move a deposit from ``from_state`` to ``to_state`` if it is still there: the returned
        deposit means this caller won the claim, ``None`` means another writer moved it first (on
        PostgreSQL the row lock makes a concurrent claimer wait, then see the new state)."""
        try:
            return self.update_deposit(deposit_id, expect_state=from_state, state=to_state, **changes)
        except StaleState:
            return None

    def _move(self, current: Deposit, changes: dict[str, Any], expected: frozenset[str] | None) -> Deposit:
        if expected is not None and current.state not in expected:
            raise StaleState(f"deposit {current.deposit_id.hex()} is {current.state!r}, not {sorted(expected)}")
        new = dataclasses.replace(current, **changes)
        _check_deposit(new)
        diff = {name: getattr(new, name) for name in MUTABLE_FIELDS if getattr(new, name) != getattr(current, name)}
        if not diff:
            return current  # idempotent repeat: nothing to write, nothing to audit
        if new.state != current.state:
            if new.state not in TRANSITIONS[current.state]:
                raise IllegalTransition(f"deposit {current.deposit_id.hex()}: {current.state} → {new.state} "
                                        "is not allowed")
        elif current.state in FINAL_STATES:
            raise IllegalTransition(f"deposit {current.deposit_id.hex()} is {current.state}; it cannot change")
        try:
            with self.conn.begin_nested():
                self.conn.execute(sa.update(deposits).where(deposits.c.deposit_id == current.deposit_id)
                                  .values(**diff, updated_at=self._now))
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"deposit {current.deposit_id.hex()}: {sorted(diff)} collide with another deposit") from exc
        event = f"deposit-{new.state}" if new.state != current.state else "deposit-updated"
        self.record_event(event, {"from": current.state, "to": new.state, "changes": diff}, current.deposit_id)
        return dataclasses.replace(new, updated_at=self._now)

    def _check_pays_registered_address(self, deposit: Deposit) -> None:
        address = self.get_address(deposit.address)
        if address is None:
            raise Conflict(f"deposit to {deposit.address}, which this node never derived and registered")
        for name in ("asset", "source_chain", "destination_chain", "recipient"):
            if getattr(address, name) != getattr(deposit, name):
                raise Conflict(f"deposit to {deposit.address} names {name} {getattr(deposit, name)!r}; "
                               f"the address is for {getattr(address, name)!r}")

    # cursors and meta --------------------------------------------------------------------------
    def set_cursor(self, chain: str, height: int, block_hash: str) -> Cursor:
        """Record the last fully processed block of a chain; a move backwards (a reorg) is audited
        like any other, so the log shows what this node believed and when."""
        _check_chain("chain", chain)
        if isinstance(height, bool) or not isinstance(height, int) or height < 0:
            raise InvalidRecord("height must be a non-negative int")
        lock = sa.select(chain_cursors).where(chain_cursors.c.chain == chain).with_for_update()
        row = self.conn.execute(lock).first()
        cursor = Cursor(chain=chain, height=height, block_hash=block_hash, updated_at=self._now)
        if row is None:
            try:
                with self.conn.begin_nested():
                    self.conn.execute(sa.insert(chain_cursors).values(dataclasses.asdict(cursor)))
            except sa.exc.IntegrityError:
                # A concurrent first write; ours follows it.
                row = self.conn.execute(lock).first()
        if row is not None:
            previous = Cursor(**row._mapping)
            if (previous.height, previous.block_hash) == (height, block_hash):
                return previous
            self.conn.execute(sa.update(chain_cursors).where(chain_cursors.c.chain == chain)
                              .values(height=height, block_hash=block_hash, updated_at=self._now))
            detail = {"chain": chain, "height": height, "block_hash": block_hash,
                      "previous": {"height": previous.height, "block_hash": previous.block_hash}}
        else:
            detail = {"chain": chain, "height": height, "block_hash": block_hash, "previous": None}
        self.record_event("cursor-set", detail)
        return cursor

    def put_withdrawal(self, row: dict[str, Any]) -> None:
        """Insert or update a withdrawal's status row (what the status API shows); the machine's
        snapshot is the truth, this row mirrors it in the same transaction."""
        _check_bytes32("burn_id", row.get("burn_id"))
        row = {**row, "updated_at": self._now}
        current = self.conn.execute(sa.select(withdrawals.c.burn_id).where(withdrawals.c.burn_id == row["burn_id"])
                                    .with_for_update()).first()
        if current is None:
            self.conn.execute(sa.insert(withdrawals).values(row))
        else:
            fixed = {"burn_id", "asset", "source_chain", "burn_nonce", "burner", "amount", "destination"}
            self.conn.execute(sa.update(withdrawals).where(withdrawals.c.burn_id == row["burn_id"])
                              .values({k: v for k, v in row.items() if k not in fixed}))

    def put_account_withdrawal(self, row: dict[str, Any]) -> bool:
        """Insert or update an account withdrawal's row; returns whether it was new. What it pays
        (withdrawal id, party, assets, chain, nonce, amount, destination, time) is fixed at first
        sight: a row that disagrees is a :class:`Conflict`, never an overwrite."""
        _check_bytes32("burn_id", row.get("burn_id"))
        row = {**row, "updated_at": self._now}
        t = account_withdrawals
        current = self.conn.execute(sa.select(t).where(t.c.burn_id == row["burn_id"]).with_for_update()).first()
        fixed = ("withdrawal_id", "party", "ledger_asset", "asset", "source_chain", "burn_nonce", "amount",
                 "destination", "created_ms")
        if current is None:
            _check_bytes32("withdrawal_id", row.get("withdrawal_id"))
            self.conn.execute(sa.insert(t).values(row))
            return True
        have = current._mapping
        changed = [k for k in fixed if k in row and row[k] != have[k]]
        if changed:
            raise Conflict(f"account withdrawal 0x{row['burn_id'].hex()}: {', '.join(changed)} differ from the "
                           "recorded ones")
        self.conn.execute(sa.update(t).where(t.c.burn_id == row["burn_id"])
                          .values({k: v for k, v in row.items() if k not in fixed and k != "burn_id"}))
        return False

    def archive_payout(self, *, txid: str, payout_id: str, source_chain: str, role: str, burn_ids: list[str],
                       inputs: list[str], fee: int, proposal: str | None = None, raw: str | None = None,
                       replaces: str | None = None) -> bool:
        """Archive a payout variant once (idempotent per txid; a later call may add the signed
        ``raw``). Returns whether a new row was written. Audited."""
        existing = self.archived_payout(txid)
        if existing is not None:
            if raw and not existing["raw"]:
                self.conn.execute(sa.update(payout_archive).where(payout_archive.c.txid == txid).values(raw=raw))
            return False
        self.conn.execute(sa.insert(payout_archive).values(
            txid=txid, payout_id=payout_id, source_chain=source_chain, role=role, burn_ids=list(burn_ids),
            inputs=list(inputs), proposal=proposal, raw=raw, fee=fee, replaces=replaces, created_at=self._now))
        self.record_event("payout-archived", {"txid": txid, "payout_id": payout_id, "role": role,
                                              "burn_ids": list(burn_ids), "fee": fee, "replaces": replaces})
        return True

    def add_custody_coin(self, *, chain: str, txid: str, vout: int, value: int, path: list[int], public_key: str,
                         origin: str) -> bool:
        """Remember an output the group controls (idempotent). Returns whether it was new."""
        exists = self.conn.execute(sa.select(custody_coins.c.txid).where(
            (custody_coins.c.chain == chain) & (custody_coins.c.txid == txid) & (custody_coins.c.vout == vout))).first()
        if exists is not None:
            return False
        self.conn.execute(sa.insert(custody_coins).values(chain=chain, txid=txid, vout=vout, value=value,
                                                          path=list(path), public_key=public_key, origin=origin,
                                                          created_at=self._now))
        return True

    def put_derived_meta(self, name: str, value: str) -> None:
        """Upsert a meta row *without* an audit event: for derived state rewritten on every step
        (a machine snapshot, a nonce ledger, a cursor) whose transitions are audited one by one
        elsewhere. Operator settings go through :meth:`set_meta`."""
        if name in _RESERVED_META:
            raise InvalidRecord(f"meta {name!r} is maintained by the database layer")
        exists = self.conn.execute(sa.select(meta.c.name).where(meta.c.name == name)).first() is not None
        if exists:
            self.conn.execute(sa.update(meta).where(meta.c.name == name).values(value=value))
        else:
            self.conn.execute(sa.insert(meta).values(name=name, value=value))

    def set_meta(self, name: str, value: str) -> None:
        """A small operator setting (audited). The event chain's head is not writable this way."""
        if name in _RESERVED_META:
            raise InvalidRecord(f"meta {name!r} is maintained by the database layer")
        old = self.get_meta(name)
        if old == value:
            return
        if old is None:
            self.conn.execute(sa.insert(meta).values(name=name, value=value))
        else:
            self.conn.execute(sa.update(meta).where(meta.c.name == name).values(value=value))
        self.record_event("meta-set", {"name": name, "value": value, "previous": old})


# --- the database ---------------------------------------------------------------------------------

class BridgeDB:
    """An open bridge database. Thread-safe: each transaction checks out its own connection.

    Each convenience method runs in its own transaction; combine writes with
    ``with db.transaction() as tx:`` (and use ``tx``'s methods inside it - opening a second
    transaction from the same thread would wait on the first, so it is refused).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # One writer of this process at a time on SQLite: the others wait here, not in SQLite's busy loop.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._local = threading.local()

    def __enter__(self) -> BridgeDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection (a later call opens new ones)."""
        self.engine.dispose()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        if getattr(self._local, "active", False):
            raise BridgeDBError("a transaction is already open in this thread; use its methods")
        self._local.active = True
        try:
            yield
        finally:
            self._local.active = False

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One write transaction: committed (with its events) when the block ends, rolled back if it raises."""
        with self._guard():
            if self._write_lock is not None:
                self._write_lock.acquire()
            try:
                with self.engine.connect() as conn, conn.begin():
                    tx = Transaction(conn)
                    try:
                        yield tx
                        tx._flush_events()
                    finally:
                        tx._c = None
            finally:
                if self._write_lock is not None:
                    self._write_lock.release()

    @contextmanager
    def read(self) -> Iterator[Reader]:
        """A consistent read-only snapshot (REPEATABLE READ on PostgreSQL, a deferred transaction on SQLite)."""
        with self._guard(), self.engine.connect() as conn:
            conn.execution_options(fp_read=True)
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                reader = Reader(conn)
                try:
                    yield reader
                finally:
                    reader._c = None

    def schema_version(self) -> int:
        with self.read() as r:
            return int(r.conn.scalar(sa.select(sa.func.max(schema_version_table.c.version))) or 0)

    # writes ------------------------------------------------------------------------------------
    def register_address(self, address: DepositAddress) -> DepositAddress:
        with self.transaction() as tx:
            return tx.register_address(address)

    def upsert_deposit(self, deposit: Deposit, *, expect_state: str | Collection[str] | None = None) -> Deposit:
        with self.transaction() as tx:
            return tx.upsert_deposit(deposit, expect_state=expect_state)

    def update_deposit(self, deposit_id: bytes, *, expect_state: str | Collection[str] | None = None,
                       **changes: Any) -> Deposit:
        with self.transaction() as tx:
            return tx.update_deposit(deposit_id, expect_state=expect_state, **changes)

    def claim_deposit(self, deposit_id: bytes, *, from_state: str | Collection[str] = "confirmed",
                      to_state: str = "signing", **changes: Any) -> Deposit | None:
        with self.transaction() as tx:
            return tx.claim_deposit(deposit_id, from_state=from_state, to_state=to_state, **changes)

    def set_cursor(self, chain: str, height: int, block_hash: str) -> Cursor:
        with self.transaction() as tx:
            return tx.set_cursor(chain, height, block_hash)

    def set_meta(self, name: str, value: str) -> None:
        with self.transaction() as tx:
            tx.set_meta(name, value)

    def record_event(self, event: str, detail: dict[str, Any] | None = None, deposit_id: bytes | None = None) -> None:
        with self.transaction() as tx:
            tx.record_event(event, detail, deposit_id)

    # reads -------------------------------------------------------------------------------------
    def get_address(self, address: str) -> DepositAddress | None:
        with self.read() as r:
            return r.get_address(address)

    def get_deposit(self, deposit_id: bytes) -> Deposit | None:
        with self.read() as r:
            return r.get_deposit(deposit_id)

    def deposits_by_address(self, address: str) -> list[Deposit]:
        with self.read() as r:
            return r.deposits_by_address(address)

    def deposits_in_state(self, state: str, *, source_chain: str | None = None,
                          limit: int | None = None) -> list[Deposit]:
        with self.read() as r:
            return r.deposits_in_state(state, source_chain=source_chain, limit=limit)

    def get_cursor(self, chain: str) -> Cursor | None:
        with self.read() as r:
            return r.get_cursor(chain)

    def get_meta(self, name: str) -> str | None:
        with self.read() as r:
            return r.get_meta(name)

    def events(self, deposit_id: bytes | None = None, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        with self.read() as r:
            return r.events(deposit_id, after_seq=after_seq, limit=limit)

    def verify_event_chain(self) -> bool:
        with self.read() as r:
            return r.verify_event_chain()


# --- opening --------------------------------------------------------------------------------------

def _set_wal(cur: Any) -> Any:
    """``PRAGMA journal_mode=WAL``, waiting out a concurrent opener: switching a new file to WAL
    needs an exclusive lock, and SQLite answers "database is locked" at once (no busy handler)
    when another process or thread is opening or migrating the same file."""
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            return cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
        raise InvalidRecord("the bridge database must be a file (sqlite:///path), not in memory")
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_S})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin() emit our BEGIN (pysqlite's own would defer the write lock).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            mode = _set_wal(cur)
            if str(mode).lower() != "wal":
                raise BridgeDBError(f"SQLite refused WAL mode (got {mode!r})")
            cur.execute("PRAGMA synchronous=FULL")  # a committed transition survives power loss
            cur.execute("PRAGMA foreign_keys=ON")
        finally:
            cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock before reading what they will change: no lost update, and
        # no deadlock-prone upgrade from a read lock. Readers take a snapshot and block nobody.
        deferred = conn.get_execution_options().get("fp_read", False)
        conn.exec_driver_sql("BEGIN DEFERRED" if deferred else "BEGIN IMMEDIATE")

    return engine


def _postgres_engine(url: sa.URL) -> Engine:
    # READ COMMITTED plus row locks (SELECT ... FOR UPDATE) where a row is claimed: a waiting
    # claimer re-reads the committed row, so no retry loop for serialization failures is needed.
    return sa.create_engine(url, isolation_level="READ COMMITTED", pool_pre_ping=True)


def _migrate(engine: Engine, target: int) -> None:
    with engine.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        schema_version_table.create(conn, checkfirst=True)
        current = int(conn.scalar(sa.select(sa.func.max(schema_version_table.c.version))) or 0)
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(f"bridge database schema v{current} is newer than this build's v{SCHEMA_VERSION}")
        for version in range(current + 1, target + 1):
            MIGRATIONS[version - 1](conn)
            conn.execute(sa.insert(schema_version_table).values(version=version, applied_at=time.time()))


def open_database(url: str | sa.URL, *, schema_version: int = SCHEMA_VERSION) -> BridgeDB:
    """Open (creating and migrating as needed) a bridge database.

    ``url`` is ``sqlite:///path/to/bridge.sqlite3`` (the default kind: WAL, ``synchronous=FULL``,
    foreign keys on) or ``postgresql+psycopg://user:pw@host:port/db`` (``postgresql://`` is taken to
    mean psycopg 3, the only PostgreSQL driver pinned). ``schema_version`` stops the migrations
    early; only tests of the migrations themselves want that.
    """
    parsed = sa.make_url(url)
    if not 0 <= schema_version <= SCHEMA_VERSION:
        raise InvalidRecord(f"schema_version must be within 0..{SCHEMA_VERSION}")
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        engine = _sqlite_engine(parsed)
    elif backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise InvalidRecord(f"PostgreSQL driver {driver!r} is not supported; use postgresql+psycopg://")
        engine = _postgres_engine(parsed.set(drivername="postgresql+psycopg"))
    else:
        raise InvalidRecord(f"unsupported database URL scheme {parsed.drivername!r} (sqlite or postgresql+psycopg)")
    try:
        _migrate(engine, schema_version)
    except BaseException:
        engine.dispose()
        raise
    return BridgeDB(engine)
