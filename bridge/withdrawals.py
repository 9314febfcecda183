"""The burn → payout workflow of one wrapped asset, as a sans-IO state machine.

The edge (the destination-chain burn follower, the payout planner and signer, the source-chain
broadcaster and watcher, the database) feeds *observations* into :meth:`WithdrawalMachine.handle`
with the current time and carries out the *actions* it returns. The machine does no I/O and reads
no clock, and its whole state round-trips through :meth:`to_dict`/:meth:`from_dict`, so the edge
persists it after every step (in the same database transaction as the step's records) and a
restarted node continues exactly where its last durable step left it.

States of a withdrawal (one per burn, keyed by the Gateway's burn id)::

    observed ─► queued ─► signing ─► signed ─► broadcast ─► confirmed
       │          ▲          │                    │  ▲
       │          └──────────┘ (session failed)   └──┘ bumped (same inputs, higher fee)
       ▼
    refunding ─► refund_signed ─► refunded            (unpayable destination, below minimum)
    returning ─► returned                             (the same, for an account withdrawal)

* A burn is acted on only once the follower delivers it at the required depth (the follower reads
  logs only below ``head − confirmations``, so it re-reads the log there); the same burn id
  delivered again is the same burn. Nonces are gap-free on-chain (``burnCount``): a nonce beyond
  the next expected one means a log was missed, and the machine asks for a rescan
  (:class:`RescanBurns`) while it still handles the burns it has.
* **Batching.** Payable burns wait in ``queued`` until ``max_batch`` of them are ready or the oldest
  has waited ``batch_wait`` seconds; then one :class:`BuildPayout` carries up to ``max_batch`` of
  them in burn-nonce order. The payout id is a hash of the burn ids, so any coordinator that
  batches the same burns names the same payout.
* **Only the coordinator acts.** Every node runs the same machine (it must know what is paid, to
  refuse paying it twice), but only while :attr:`coordinating` is set does it emit
  ``BuildPayout``/``Broadcast``/``ProposeRefund``. Payouts another coordinator made reach it as
  :class:`PayoutFound` from the source-chain watcher.
* **Stuck payouts are bumped, never rescheduled.** A broadcast payout still unconfirmed after
  ``stuck_after`` seconds is rebuilt as a replacement of its current variant (``replaces``: the
  planner keeps the same inputs and outputs and raises only the fee), so the variants conflict and
  at most one confirms. Every signed variant is kept (``Payout.variants``) and any of them
  confirming pays the burns. The burns of a payout that was broadcast never go back to ``queued``:
  only a payout whose signing failed before any variant existed is given up and re-batched —
  THORChain once paid an outbound twice by rescheduling one that could still confirm.
* **Large withdrawals wait.** A burn above ``hold_above`` stays ``queued`` for ``hold_seconds``
  (the node's own limit beyond the Gateway's window cap): the guardian's window to pause the
  Gateway, and a paused Gateway pays nothing out.
* **Refunds.** A burn the destination rules cannot pay (``classify`` names why) is refunded by a
  group-signed ``RefundBurn`` (the Gateway's refund rule: exactly the burned amount to the burner,
  once). A refund is never proposed for a burn that is in a payout.
* **Account withdrawals** (``bridge/settlement/payouts_link.py``). A withdrawal from a settlement
  account enters as a burn-like :class:`Burn` whose ``account_withdrawal`` names the ledger's
  withdrawal id: it is batched and paid exactly like a Gateway burn (same payout, same archive
  rules, ``amount − withdrawal_fee`` paid), but it has no Gateway nonce (no gap detection, no
  rescan), and when ``classify`` says it cannot be paid it goes to ``returning`` instead of
  ``refunding``: no Gateway refund exists for it, the settlement ledger credits the amount back
  (``WithdrawalReturned``), after which :class:`AccountClosed` ends it as ``returned``. Its burn
  id is :func:`account_burn_id` (a tagged SHA-256 of the withdrawal id: never a Gateway burn id,
  which is a keccak-256 of the Gateway's own fields) and its nonce :func:`account_nonce` (above
  every Gateway nonce, so in a batch its output follows the burns').

Time: ``now`` (Unix seconds) comes with every observation; :class:`Tick` lets time pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

OBSERVED = "observed"
QUEUED = "queued"
SIGNING = "signing"
SIGNED = "signed"
BROADCAST = "broadcast"
CONFIRMED = "confirmed"
REFUNDING = "refunding"
REFUND_SIGNED = "refund_signed"
REFUNDED = "refunded"
#: an account withdrawal that cannot be paid: waiting for the ledger to credit it back, then done
RETURNING = "returning"
RETURNED = "returned"
STATES = (OBSERVED, QUEUED, SIGNING, SIGNED, BROADCAST, CONFIRMED, REFUNDING, REFUND_SIGNED, REFUNDED, RETURNING,
          RETURNED)
FINAL = frozenset({CONFIRMED, REFUNDED, RETURNED})

#: payout states
BUILDING = "building"
PAYOUT_SIGNED = "signed"
PAYOUT_BROADCAST = "broadcast"
PAYOUT_CONFIRMED = "confirmed"
PAYOUT_FAILED = "failed"


def _bytes32_hex(value: str, what: str) -> str:
    text = value.lower()
    if not (text.startswith("0x") and len(text) == 66 and all(c in "0123456789abcdef" for c in text[2:])):
        raise ValueError(f"{what} must be 0x and 64 hex digits")
    return text


def burn_key(burn_id: str | bytes) -> bytes:
    """The 32 bytes of a burn id given as bytes or (0x-)hex."""
    raw = burn_id if isinstance(burn_id, bytes) else bytes.fromhex(burn_id.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError("burn id must be 32 bytes")
    return raw


#: the burn id of an account withdrawal is SHA-256(tag ‖ withdrawal id): a Gateway burn id is a
#: keccak-256 of (chain id, Gateway, nonce), so the two can only meet through a hash collision
ACCOUNT_BURN_TAG = b"fusion-prime/bridge/account-withdrawal/v1"
#: account withdrawals' nonces start here; the Gateway counts its burns from 1 and never gets close
ACCOUNT_NONCE_BASE = 1 << 255


def account_burn_id(withdrawal_id: bytes) -> str:
    """The burn id (0x-hex) under which the bridge pays the ledger's withdrawal ``withdrawal_id``."""
    if not isinstance(withdrawal_id, bytes) or len(withdrawal_id) != 32:
        raise ValueError("withdrawal id must be 32 bytes")
    return "0x" + hashlib.sha256(ACCOUNT_BURN_TAG + withdrawal_id).hexdigest()


def account_nonce(burn_id: str | bytes) -> int:
    """The ordering nonce of an account withdrawal's burn id: every node computes the same one
    alone, it sorts after every Gateway nonce, and two of them are equal only if their burn ids
    agree in 255 bits (a payout refuses two burns with one nonce)."""
    return ACCOUNT_NONCE_BASE | (int.from_bytes(burn_key(burn_id), "big") >> 1)


def payout_id_of(burn_ids: tuple[str, ...]) -> str:
    """The payout of these burns, whoever batches them (a pure function of the burn ids)."""
    h = hashlib.sha256(b"FusionPrime/bridge/payout/v1" + b"".join(bytes.fromhex(b[2:]) for b in burn_ids))
    return "0x" + h.hexdigest()


# -------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Burn:
    """A ``Burned`` log of the Gateway, as the follower read it at the required depth."""

    burn_id: str
    nonce: int
    asset: str
    burner: str
    amount: int
    destination: bytes
    block: int
    tx_hash: str
    #: 0x-hex of the settlement ledger's withdrawal id for an account withdrawal; "" for a Gateway burn
    account_withdrawal: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "burn_id", _bytes32_hex(self.burn_id, "burn id"))
        if self.nonce < 1 or self.amount <= 0 or self.block < 0:
            raise ValueError("a burn has nonce >= 1, a positive amount and a block")
        if self.account_withdrawal:
            wid = _bytes32_hex(self.account_withdrawal, "account withdrawal id")
            object.__setattr__(self, "account_withdrawal", wid)
            if account_burn_id(bytes.fromhex(wid[2:])) != self.burn_id or self.nonce != account_nonce(self.burn_id):
                raise ValueError("an account withdrawal's burn id and nonce are derived from its withdrawal id")

    @property
    def is_account(self) -> bool:
        """A withdrawal from a settlement account (no Gateway burn behind it)."""
        return bool(self.account_withdrawal)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["destination"] = self.destination.hex()
        if not self.account_withdrawal:
            del d["account_withdrawal"]  # a Gateway burn's snapshot is what it always was
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Burn:
        return cls(**{**d, "destination": bytes.fromhex(d["destination"])})


@dataclass
class Withdrawal:
    burn: Burn
    state: str
    observed_at: int
    payout_id: str | None = None
    txid: str | None = None  # the variant that confirmed (or the current one while broadcast)
    confirmations: int = 0
    reason: str = ""
    refund_tx: str | None = None
    refund: dict[str, Any] | None = None  # the signed RefundBurn (fields + signature hex)
    next_try: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "burn"}
        d["burn"] = self.burn.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Withdrawal:
        return cls(**{**d, "burn": Burn.from_dict(d["burn"])})


@dataclass
class Payout:
    payout_id: str
    burn_ids: tuple[str, ...]
    state: str
    created_at: int
    #: every signed variant, oldest first: {"txid", "raw", "fee", "fee_rate", "replaces", "at"}
    variants: list[dict[str, Any]] = field(default_factory=list)
    broadcast_at: int | None = None
    confirmations: int = 0
    mined_txid: str | None = None
    attempts: int = 0
    next_try: int = 0
    missing_since: int | None = None

    @property
    def current(self) -> dict[str, Any] | None:
        return self.variants[-1] if self.variants else None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["burn_ids"] = list(self.burn_ids)
        d["variants"] = [dict(v) for v in self.variants]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Payout:
        return cls(**{**d, "burn_ids": tuple(d["burn_ids"]), "variants": [dict(v) for v in d["variants"]]})


# -------------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class BurnSeen:
    burn: Burn


@dataclass(frozen=True)
class BurnsScanned:
    """Every ``Burned`` log up to ``block`` (at depth) was delivered."""

    block: int


@dataclass(frozen=True)
class RefundSeen:
    burn_id: str
    tx_hash: str


@dataclass(frozen=True)
class PayoutSigned:
    """A fully signed variant of a payout (the planner rebuilt and the network signed it)."""

    payout_id: str
    txid: str
    raw: str
    fee: int
    fee_rate: int
    replaces: str | None = None


@dataclass(frozen=True)
class PayoutFailed:
    """Building or signing a payout failed; nothing was signed (a variant that *was* signed is
    reported with :class:`PayoutSigned` first, and then the payout is never given up)."""

    payout_id: str
    reason: str
    replaces: str | None = None


@dataclass(frozen=True)
class PayoutBroadcast:
    payout_id: str
    txid: str
    accepted: bool
    error: str = ""


@dataclass(frozen=True)
class PayoutDepth:
    """What the source chain says of one variant: ``confirmations`` ≥ 1 mined, 0 in the mempool,
    None unknown (never seen, dropped, or conflicted by another variant that was mined)."""

    txid: str
    confirmations: int | None


@dataclass(frozen=True)
class PayoutFound:
    """A payout of these burns seen on the source chain that this node did not coordinate."""

    payout_id: str
    burn_ids: tuple[str, ...]
    txid: str
    raw: str
    confirmations: int


@dataclass(frozen=True)
class RefundSigned:
    burn_id: str
    refund: dict[str, Any]


@dataclass(frozen=True)
class RefundFailed:
    burn_id: str
    reason: str


@dataclass(frozen=True)
class AccountClosed:
    """The settlement ledger (this node's replica) ended an account withdrawal: ``paid`` (by
    ``txid``) or ``returned`` (credited back). A payout is never built for it after this."""

    burn_id: str
    status: str  # "paid" | "returned"
    txid: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Tick:
    pass


Observation = (BurnSeen | BurnsScanned | RefundSeen | PayoutSigned | PayoutFailed | PayoutBroadcast | PayoutDepth
               | PayoutFound | RefundSigned | RefundFailed | AccountClosed | Tick)


# -------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class RescanBurns:
    from_block: int
    missing_nonce: int


@dataclass(frozen=True)
class BuildPayout:
    """Plan, sign (every input) and report :class:`PayoutSigned`/:class:`PayoutFailed`.
    ``replaces``: the txid of the variant to bump (same inputs and outputs, higher fee)."""

    payout_id: str
    burn_ids: tuple[str, ...]
    replaces: str | None = None


@dataclass(frozen=True)
class Broadcast:
    payout_id: str
    txid: str
    raw: str


@dataclass(frozen=True)
class ProposeRefund:
    burn_id: str
    reason: str


@dataclass(frozen=True)
class RelayRefund:
    burn_id: str
    refund: dict[str, Any]


@dataclass(frozen=True)
class Alert:
    severity: str
    message: str
    burn_id: str | None = None


@dataclass(frozen=True)
class Record:
    burn_id: str
    old_state: str | None
    new_state: str
    detail: str


Action = RescanBurns | BuildPayout | Broadcast | ProposeRefund | RelayRefund | Alert | Record


# -------------------------------------------------------------------------------- the machine


@dataclass(frozen=True)
class WithdrawalConfig:
    asset: str
    source_chain: str
    #: None for a payable burn; otherwise why it must be refunded ("unpayable: …", "below_minimum: …")
    classify: Callable[[Burn], str | None]
    payout_confirmations: int = 1
    max_batch: int = 100
    batch_wait: int = 30
    stuck_after: int = 600
    retry_after: int = 30
    #: a broadcast variant unknown to the chain this long is broadcast again
    rebroadcast_after: int = 60
    first_nonce: int = 1
    #: a burn above this (base units; 0: none) waits ``hold_seconds`` before it is paid - the
    #: guardian's window to pause the Gateway (every co-signer enforces it too)
    hold_above: int = 0
    hold_seconds: int = 0


class WithdrawalMachine:
    """Every burn of one asset from observation to payout or refund (see the module docstring)."""

    def __init__(self, config: WithdrawalConfig) -> None:
        self.config = config
        self.withdrawals: dict[str, Withdrawal] = {}
        self.payouts: dict[str, Payout] = {}
        self.next_nonce = config.first_nonce
        self.scanned_block = -1
        self.coordinating = False
        self._rescan_asked: int | None = None  # the missing nonce a rescan was asked for

    # -- queries
    def get(self, burn_id: str) -> Withdrawal | None:
        return self.withdrawals.get(burn_id.lower())

    def payout_of(self, txid: str) -> Payout | None:
        for p in self.payouts.values():
            if any(v["txid"] == txid for v in p.variants):
                return p
        return None

    def in_flight(self) -> int:
        """Burned and not yet paid or refunded: a liability that is no longer in the wrapped supply.
        Account withdrawals are not in it: they never were supply, their liability is the ledger's."""
        return sum(w.burn.amount for w in self.withdrawals.values() if w.state not in FINAL and not w.burn.is_account)

    def reserved_txids(self) -> set[str]:
        """Every variant of every payout that has not confirmed: their inputs are spoken for."""
        return {v["txid"] for p in self.payouts.values() if p.state != PAYOUT_CONFIRMED for v in p.variants}

    # -- the step
    def handle(self, obs: Observation, now: int) -> list[Action]:
        out: list[Action] = []
        if isinstance(obs, BurnSeen):
            self._burn(obs.burn, now, out)
        elif isinstance(obs, BurnsScanned):
            self.scanned_block = max(self.scanned_block, obs.block)
        elif isinstance(obs, RefundSeen):
            self._refunded(obs, out)
        elif isinstance(obs, PayoutSigned):
            self._signed(obs, now, out)
        elif isinstance(obs, PayoutFailed):
            self._failed(obs, now, out)
        elif isinstance(obs, PayoutBroadcast):
            self._broadcast(obs, now, out)
        elif isinstance(obs, PayoutDepth):
            self._depth(obs, now, out)
        elif isinstance(obs, PayoutFound):
            self._found(obs, now, out)
        elif isinstance(obs, RefundSigned):
            self._refund_signed(obs, out)
        elif isinstance(obs, RefundFailed):
            w = self.get(obs.burn_id)
            if w is not None and w.state == REFUNDING:
                w.next_try = now + self.config.retry_after
                out.append(Record(w.burn.burn_id, REFUNDING, REFUNDING, f"refund not signed: {obs.reason}"[:500]))
        elif isinstance(obs, AccountClosed):
            self._account_closed(obs, out)
        # burns arrive one observation each, back to back from one scan: a partial batch cut at
        # the first of them paid one block's burns in two payouts (1, then the rest after it was
        # built). A full batch goes at once; a partial one waits for the scan's end (BurnsScanned)
        # or the next Tick, which batch them together.
        self._due(now, out, partial_batch=not isinstance(obs, BurnSeen))
        return out

    def resume_actions(self, now: int) -> list[Action]:
        """After a restart: what was in flight is retried (a session lost with the process), a
        signed refund is relayed again; broadcast variants are re-checked by the watcher."""
        out: list[Action] = []
        for p in self.payouts.values():
            if p.state == BUILDING:
                p.next_try = now  # re-planned: the same burns give the same transaction
        for w in self.withdrawals.values():
            if w.state == REFUND_SIGNED and w.refund is not None and self.coordinating:
                out.append(RelayRefund(w.burn.burn_id, w.refund))
            if w.state == REFUNDING:
                w.next_try = now
        self._due(now, out)
        return out

    # -- burns
    def _burn(self, burn: Burn, now: int, out: list[Action]) -> None:
        if burn.asset.lower() != self.config.asset.lower():
            return
        known = self.withdrawals.get(burn.burn_id)
        if known is not None:
            if known.burn != burn:  # same id, other facts: the follower or the chain is lying
                out.append(Alert("critical", f"burn {burn.burn_id} re-read with different facts", burn.burn_id))
            return
        w = Withdrawal(burn=burn, state=OBSERVED, observed_at=now)
        self.withdrawals[burn.burn_id] = w
        if burn.is_account:  # no Gateway nonce: nothing to count or rescan
            out.append(Record(burn.burn_id, None, OBSERVED, f"account withdrawal {burn.account_withdrawal} of "
                                                            f"{burn.amount}"))
        else:
            out.append(Record(burn.burn_id, None, OBSERVED, f"nonce {burn.nonce}, {burn.amount} in block {burn.block}"))
            self._advance_nonce(burn, out)
        why = self.config.classify(burn)
        if why is None and self.config.hold_above and burn.amount > self.config.hold_above:
            w.next_try = now + self.config.hold_seconds
            self._move(w, QUEUED, f"payable; held {self.config.hold_seconds} s (above {self.config.hold_above}): "
                                  "the guardian may pause meanwhile", out)
        elif why is None:
            self._move(w, QUEUED, "payable", out)
        else:
            w.reason = why
            # an account withdrawal has no Gateway burn to refund: the ledger credits it back
            self._move(w, RETURNING if burn.is_account else REFUNDING, why, out)

    def _account_closed(self, obs: AccountClosed, out: list[Action]) -> None:
        """The ledger ended an account withdrawal. Before any payout of it: it is done here too.
        Once a payout is being signed or is out, the payout decides (a payout that no longer finds
        the withdrawal pending is refused by every honest co-signer; one already out is alarming)."""
        w = self.get(obs.burn_id)
        if w is None or not w.burn.is_account or w.state in FINAL:
            return
        if obs.status not in ("paid", "returned"):
            return
        if w.state in (OBSERVED, QUEUED, RETURNING):
            if obs.status == "returned":
                self._move(w, RETURNED, f"returned to the account by the ledger: {obs.detail}", out)
            else:
                if w.state == RETURNING:
                    out.append(Alert("critical", f"account withdrawal {w.burn.account_withdrawal} is paid per the "
                                                 f"ledger ({obs.txid}) but unpayable by this node's rules",
                                     w.burn.burn_id))
                w.txid = obs.txid or w.txid
                self._move(w, CONFIRMED, f"paid per the ledger by {obs.txid}", out)
        elif obs.status == "returned" and w.state in (SIGNED, BROADCAST):
            out.append(Alert("critical", f"account withdrawal {w.burn.account_withdrawal} was returned by the "
                                         f"ledger while its payout {w.txid} is out", w.burn.burn_id))

    def _advance_nonce(self, burn: Burn, out: list[Action]) -> None:
        seen = {w.burn.nonce for w in self.withdrawals.values()}
        while self.next_nonce in seen:
            self.next_nonce += 1
        if burn.nonce > self.next_nonce and self._rescan_asked != self.next_nonce:
            self._rescan_asked = self.next_nonce
            below = [w.burn.block for w in self.withdrawals.values() if w.burn.nonce < self.next_nonce]
            start = max(below) if below else 0
            out.append(RescanBurns(start, self.next_nonce))
            out.append(Alert("warning", f"burn nonce {self.next_nonce} missing (saw {burn.nonce}): rescanning "
                                        f"from block {start}", burn.burn_id))

    def _move(self, w: Withdrawal, state: str, detail: str, out: list[Action]) -> None:
        old = w.state
        w.state = state
        out.append(Record(w.burn.burn_id, old, state, detail[:500]))

    # -- payouts
    def _signed(self, obs: PayoutSigned, now: int, out: list[Action]) -> None:
        p = self.payouts.get(obs.payout_id)
        if p is None or any(v["txid"] == obs.txid for v in p.variants):
            return
        if p.state in (PAYOUT_CONFIRMED,):
            return
        p.variants.append({"txid": obs.txid, "raw": obs.raw, "fee": obs.fee, "fee_rate": obs.fee_rate,
                           "replaces": obs.replaces, "at": now})
        if p.state in (BUILDING, PAYOUT_FAILED):
            p.state = PAYOUT_SIGNED
        for bid in p.burn_ids:
            w = self.withdrawals[bid]
            if w.state in (QUEUED, SIGNING):
                w.txid = obs.txid
                self._move(w, SIGNED, f"signed {obs.txid} (fee {obs.fee})", out)
            elif w.state in (SIGNED, BROADCAST):
                w.txid = obs.txid
                out.append(Record(bid, w.state, w.state, f"bump signed: {obs.txid} replaces {obs.replaces} "
                                                         f"(fee {obs.fee})"))
        if self.coordinating:
            out.append(Broadcast(p.payout_id, obs.txid, obs.raw))

    def _failed(self, obs: PayoutFailed, now: int, out: list[Action]) -> None:
        p = self.payouts.get(obs.payout_id)
        if p is None:
            return
        p.attempts += 1
        p.next_try = now + self.config.retry_after
        if p.variants:  # something was signed: never give the burns up; a bump is retried later
            out.append(Alert("warning", f"payout {p.payout_id} bump failed: {obs.reason}"[:500]))
            return
        p.state = PAYOUT_FAILED
        for bid in p.burn_ids:
            w = self.withdrawals[bid]
            if w.state == SIGNING:
                w.payout_id = None
                w.next_try = now + self.config.retry_after
                self._move(w, QUEUED, f"payout not signed, re-batched: {obs.reason}", out)
        del self.payouts[p.payout_id]
        out.append(Alert("warning", f"payout of {len(p.burn_ids)} burns not signed: {obs.reason}"[:500]))

    def _broadcast(self, obs: PayoutBroadcast, now: int, out: list[Action]) -> None:
        p = self.payouts.get(obs.payout_id)
        if p is None or p.state == PAYOUT_CONFIRMED:
            return
        if not obs.accepted:
            out.append(Alert("warning", f"broadcast of {obs.txid} refused: {obs.error}"[:500]))
            p.missing_since = p.missing_since or now
            return
        p.missing_since = None
        if p.state != PAYOUT_BROADCAST:
            p.state = PAYOUT_BROADCAST
        if obs.txid == (p.current or {}).get("txid"):
            p.broadcast_at = now
        for bid in p.burn_ids:
            w = self.withdrawals[bid]
            if w.state == SIGNED:
                self._move(w, BROADCAST, f"broadcast {obs.txid}", out)
            elif w.state == BROADCAST and w.txid != obs.txid:
                w.txid = obs.txid
                out.append(Record(bid, BROADCAST, BROADCAST, f"bumped: {obs.txid}"))

    def _depth(self, obs: PayoutDepth, now: int, out: list[Action]) -> None:
        p = self.payout_of(obs.txid)
        if p is None:
            return
        if obs.confirmations is None:
            if p.mined_txid == obs.txid:  # mined before, gone now: reorganised out
                p.mined_txid, p.confirmations = None, 0
                out.append(Alert("warning", f"payout {obs.txid} left the chain (reorg); watching its variants"))
            if obs.txid == (p.current or {}).get("txid") and p.state in (PAYOUT_SIGNED, PAYOUT_BROADCAST):
                p.missing_since = p.missing_since if p.missing_since is not None else now
            return
        if obs.confirmations == 0:
            if obs.txid == (p.current or {}).get("txid"):
                p.missing_since = None
            return
        # mined: this variant pays the burns, whatever the others do
        p.mined_txid, p.confirmations, p.missing_since = obs.txid, obs.confirmations, None
        done = obs.confirmations >= self.config.payout_confirmations
        if done:
            p.state = PAYOUT_CONFIRMED
        for bid in p.burn_ids:
            w = self.withdrawals[bid]
            w.txid, w.confirmations = obs.txid, obs.confirmations
            if done and w.state != CONFIRMED:
                self._move(w, CONFIRMED, f"paid by {obs.txid} ({obs.confirmations} confirmations)", out)

    def _found(self, obs: PayoutFound, now: int, out: list[Action]) -> None:
        """Another coordinator's payout: adopt it (its burns are paid or being paid)."""
        p = self.payouts.get(obs.payout_id)
        if p is None:
            p = Payout(obs.payout_id, tuple(obs.burn_ids), PAYOUT_BROADCAST, now, broadcast_at=now)
            self.payouts[p.payout_id] = p
        if not any(v["txid"] == obs.txid for v in p.variants):
            p.variants.append({"txid": obs.txid, "raw": obs.raw, "fee": 0, "fee_rate": 0, "replaces": None,
                               "at": now})
        for bid in p.burn_ids:
            w = self.withdrawals.get(bid)
            if w is None:
                continue  # the burn is not at depth here yet; its BurnSeen will find the payout
            if w.state in (OBSERVED, QUEUED, SIGNING, SIGNED):
                w.payout_id, w.txid = p.payout_id, obs.txid
                self._move(w, BROADCAST, f"paid by {obs.txid} (another coordinator)", out)
            elif w.state in (REFUNDING, REFUND_SIGNED, RETURNING, RETURNED):
                out.append(Alert("critical", f"burn {bid} is being refunded (or returned) and was paid by {obs.txid}",
                                 bid))
        self._depth(PayoutDepth(obs.txid, obs.confirmations), now, out)

    # -- refunds
    def _refund_signed(self, obs: RefundSigned, out: list[Action]) -> None:
        w = self.get(obs.burn_id)
        if w is None or w.state != REFUNDING:
            return
        w.refund = dict(obs.refund)
        self._move(w, REFUND_SIGNED, "refund signed", out)
        if self.coordinating:
            out.append(RelayRefund(w.burn.burn_id, w.refund))

    def _refunded(self, obs: RefundSeen, out: list[Action]) -> None:
        w = self.get(obs.burn_id)
        if w is None:
            return
        if w.state in (SIGNED, BROADCAST, CONFIRMED):
            out.append(Alert("critical", f"burn {w.burn.burn_id} refunded while paid by {w.txid}", w.burn.burn_id))
        w.refund_tx = obs.tx_hash
        if w.state != REFUNDED:
            self._move(w, REFUNDED, f"refunded by {obs.tx_hash}", out)

    # -- what is due now
    def _due(self, now: int, out: list[Action], *, partial_batch: bool = True) -> None:
        if not self.coordinating:
            return
        self._batch(now, out, partial=partial_batch)
        for p in list(self.payouts.values()):
            if p.state == BUILDING and p.next_try <= now and p.attempts > 0:
                p.next_try = now + self.config.retry_after  # at most one attempt in flight per window
                out.append(BuildPayout(p.payout_id, p.burn_ids))
            elif p.state in (PAYOUT_SIGNED, PAYOUT_BROADCAST) and p.mined_txid is None and p.current is not None:
                cur = p.current
                if p.missing_since is not None and now - p.missing_since >= self.config.rebroadcast_after:
                    p.missing_since = now  # again after another window if still unknown
                    out.append(Broadcast(p.payout_id, cur["txid"], cur["raw"]))
                elif (p.broadcast_at is not None and now - p.broadcast_at >= self.config.stuck_after
                      and p.next_try <= now):
                    p.next_try = now + self.config.stuck_after  # one bump per window
                    out.append(BuildPayout(p.payout_id, p.burn_ids, replaces=cur["txid"]))
        for w in self.withdrawals.values():
            if w.state == REFUNDING and w.next_try <= now:
                w.next_try = now + self.config.retry_after
                out.append(ProposeRefund(w.burn.burn_id, w.reason))

    def _batch(self, now: int, out: list[Action], *, partial: bool = True) -> None:
        ready = sorted((w for w in self.withdrawals.values() if w.state == QUEUED and w.next_try <= now),
                       key=lambda w: w.burn.nonce)
        if not ready:
            return
        if any(p.state == BUILDING for p in self.payouts.values()):
            return  # one payout being built at a time: the next one must see its inputs reserved
        oldest = min(w.observed_at for w in ready)
        if len(ready) < self.config.max_batch and (not partial or now - oldest < self.config.batch_wait):
            return
        batch = tuple(w.burn.burn_id for w in ready[: self.config.max_batch])
        pid = payout_id_of(batch)
        self.payouts[pid] = Payout(pid, batch, BUILDING, now, attempts=1, next_try=now + self.config.retry_after)
        for bid in batch:
            w = self.withdrawals[bid]
            w.payout_id = pid
            self._move(w, SIGNING, f"in payout {pid}", out)
        out.append(BuildPayout(pid, batch))

    # -- persistence
    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "next_nonce": self.next_nonce, "scanned_block": self.scanned_block,
                "withdrawals": {k: w.to_dict() for k, w in self.withdrawals.items()},
                "payouts": {k: p.to_dict() for k, p in self.payouts.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], config: WithdrawalConfig) -> WithdrawalMachine:
        if data.get("version") != 1:
            raise ValueError(f"unknown withdrawal machine snapshot version {data.get('version')!r}")
        m = cls(config)
        m.next_nonce = int(data["next_nonce"])
        m.scanned_block = int(data["scanned_block"])
        m.withdrawals = {k: Withdrawal.from_dict(v) for k, v in data["withdrawals"].items()}
        m.payouts = {k: Payout.from_dict(v) for k, v in data["payouts"].items()}
        return m
