"""The deposit → mint workflow of one source chain, as a sans-IO state machine.

The edge (a chain follower, the signing client, a destination-chain watcher, the database) feeds
*observations* into :meth:`DepositMachine.handle` together with the current time, and carries out
the *actions* it returns: start a signing session, relay a signed order, pause the Gateway, raise
an alert, persist a transition. The machine itself does no I/O and reads no clock, so every
scenario (reorgs, crashes, duplicate reports, racing coordinators) is a plain unit test, and its
whole state round-trips through :meth:`to_dict`/:meth:`from_dict` so the edge can persist it after
every step and restore it exactly after a crash.

States of a deposit (one per ``(source chain, txid, vout)``, keyed by the Gateway's deposit id)::

    (new output) ──dust──────────────────────────────────────────────► dust (terminal, reported)
         │
         ▼
       seen ─► confirming (k of N) ─► confirmed ─► signing ─► signed ─► minted
         ▲          │                     │           │  ▲       │         │
         │          ▼                     ▼           ▼  │       ▼         ▼ (block disconnected)
         └──── reorged ◄──────────────────┴───────────┴──┴───────┘      erratum (chain paused)
      (re-included)           (block disconnected before the mint)

* ``signing → signing``: a failed signing session is retried with **the same order** while it is
  live; ``signed → signing``: an order whose deadline (plus a clock-skew grace) passed without a
  ``Minted``/``MintQueued`` is re-issued with a fresh nonce and deadline. These are the only ways
  a second order for a deposit ever comes into being, and only once the first can no longer be
  submitted (``block.timestamp <= deadline`` is the Gateway's rule). Even if that reasoning failed
  (a destination clock far behind ours), the Gateway's ``mintedDeposit[depositId]`` — keyed by the
  deposit, not the order — lets at most one of them mint: both orders carry the same deposit id.
* A deposit reorganised out before its mint keeps its order (if any) and is *re-seen* if the same
  output is re-included: it then re-confirms and reuses the order (and signature) it already had,
  so re-inclusion never yields a different order. Left out, it is forgotten for minting purposes
  (inert ``reorged``; the record stays so the user can see what happened).
* A deposit reorganised out *after* ``Minted`` (or minted while out of the chain) is an
  **erratum**: the machine emits ``PauseChain`` and an ``Alert`` naming it, and stops proposing and
  relaying until the operators send :class:`Resume`.
* The mint amount equals the deposit amount in base units (fpBTC has Bitcoin's 8 decimals, fpETH
  Ether's 18): no conversion, no rounding.

Time: ``now`` (Unix seconds) is given with every observation; :class:`Tick` exists only to let time
pass (deadline expiry) when nothing else happens.

**Settlement account deposits** (issue 16): an output to a custody account's deposit address
(``destination_chain == SETTLEMENT_DESTINATION``, ``recipient`` = the party's hex; see
``derivation.py``) follows the same path — re-derived address, value-aware depth, dust, reorgs —
but it is **never minted**: at depth it stays ``confirmed`` (no order is ever issued for it, and a
signature or a ``Minted`` for it is an alert), waiting for the settlement coordinator to put a
``Credit`` for it into a ledger batch (``bridge/settlement/funding.py``). Once the edge reports
:class:`Credited`, the deposit is backing a ledger balance exactly as a minted one backs supply:
reorganised out after that (or credited while out of the chain) it is an **erratum**, like a
reorg after a mint. Only a machine configured with ``accounts=True`` takes such outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fusion_prime.protocol.curve import Point

from .derivation import (
    SETTLEMENT_DESTINATION,
    DerivationError,
    account_deposit,
    deposit_address,
    party_hex,
    same_address,
)
from .orders import (
    ChainParams,
    MintOrder,
    OrderError,
    chain_kind,
    check_caip2,
    checksum_address,
    deposit_id,
    evm_chain_id,
    is_dust,
    minimum_deposit,
    recover_signer,
    required_confirmations,
    txid_bytes,
)

SEEN = "seen"
CONFIRMING = "confirming"
CONFIRMED = "confirmed"
SIGNING = "signing"
SIGNED = "signed"
MINTED = "minted"
DUST = "dust"
REORGED = "reorged"
ERRATUM = "erratum"
STATES = (SEEN, CONFIRMING, CONFIRMED, SIGNING, SIGNED, MINTED, DUST, REORGED, ERRATUM)
#: States in which the deposit's block is (believed) in the best chain and no mint is known.
_IN_CHAIN_UNMINTED = (SEEN, CONFIRMING, CONFIRMED, SIGNING, SIGNED)


def _hex32(value: bytes) -> str:
    return "0x" + value.hex()


# -------------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class DepositOutput:
    """An output (Bitcoin) or value transfer / deposit log (EVM) paying a registered deposit address.

    The edge resolves ``address`` to the ``(destination_chain, recipient)`` it was registered for;
    the machine re-derives the address from those when it knows the group key, so a wrong
    resolution cannot credit another recipient. ``txid`` is in RPC display order. For an ETH
    deposit ``txid`` is the transaction hash and ``vout`` is ``orders.EVM_NATIVE_VOUT`` (the
    transaction's top-level value transfer; only top-level transfers to the derived address count).
    """

    txid: str
    vout: int
    address: str
    amount: int
    destination_chain: str
    recipient: str


@dataclass(frozen=True)
class BlockConnected:
    height: int
    hash: str
    parent: str
    outputs: tuple[DepositOutput, ...] = ()


@dataclass(frozen=True)
class ChainTip:
    height: int


@dataclass(frozen=True)
class BlockDisconnected:
    height: int
    hash: str


@dataclass(frozen=True)
class OrderSigned:
    deposit_id: str
    order: MintOrder
    signature: bytes


@dataclass(frozen=True)
class SigningFailed:
    deposit_id: str
    reason: str = ""


@dataclass(frozen=True)
class MintSeen:
    """A ``Minted`` event on the destination chain (at the depth the edge trusts)."""

    deposit_id: str
    tx_hash: str
    block: int
    order_digest: str | None = None
    #: the edge found the minting order among those this node co-signed as a participant
    cosigned: bool = False


@dataclass(frozen=True)
class MintQueuedSeen:
    """A ``MintQueued`` event: a large mint waits for the guardian's window; it can execute after its
    deadline (``executeMint`` does not check it), so its deposit must not be re-issued meanwhile."""

    deposit_id: str
    order_digest: str
    eta: int


@dataclass(frozen=True)
class Tick:
    """Nothing happened but time passed: check deadlines."""


@dataclass(frozen=True)
class SignerEpochChanged:
    epoch: int


@dataclass(frozen=True)
class Credited:
    """A settlement batch credited this (account) deposit to its party's ledger account: from now
    on it backs a balance, so leaving the chain is an erratum. ``reference`` names the batch."""

    deposit_id: str
    reference: str = ""


@dataclass(frozen=True)
class Resume:
    """The operators resolved an erratum (and the Gateway was unpaused): mint again."""

    reason: str = ""


Observation = (BlockConnected | ChainTip | BlockDisconnected | OrderSigned | SigningFailed | MintSeen
               | MintQueuedSeen | Tick | SignerEpochChanged | Resume | Credited)


# ------------------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class ProposeMint:
    deposit_id: str
    order: MintOrder


@dataclass(frozen=True)
class Relay:
    deposit_id: str
    order: MintOrder
    signature: bytes


@dataclass(frozen=True)
class PauseChain:
    chain: str
    reason: str
    deposit_id: str


@dataclass(frozen=True)
class Alert:
    severity: str  # "critical" | "warning"
    message: str
    deposit_id: str | None = None


@dataclass(frozen=True)
class Record:
    deposit_id: str
    old_state: str | None
    new_state: str
    detail: str


@dataclass(frozen=True)
class ReportDust:
    deposit_id: str
    txid: str
    vout: int
    address: str
    amount: int
    minimum: int


@dataclass(frozen=True)
class Rescan:
    """Re-feed blocks from ``from_height``: a block arrived whose parent is not the block this
    machine holds below it (a reorg the follower did not report)."""

    from_height: int


Action = ProposeMint | Relay | PauseChain | Alert | Record | ReportDust | Rescan


# -------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Route:
    """Where deposits for one destination chain mint: the wrapped asset and its Gateway there."""

    destination_chain: str
    asset: str
    gateway: str

    def __post_init__(self) -> None:
        if chain_kind(self.destination_chain) != "evm":
            raise OrderError("a route's destination must be an EVM chain")
        if checksum_address(self.asset, "asset") != self.asset or checksum_address(self.gateway) != self.gateway:
            raise OrderError("route addresses must be EIP-55")


@dataclass(frozen=True)
class DepositConfig:
    """Static configuration (not part of the persisted state: the edge supplies it on restore).

    ``group_key``/``chain_code`` make the machine re-derive every reported deposit address;
    ``signer`` (the group key's EVM address) makes it verify every signature before relaying.
    ``accounts`` makes it take deposits to settlement account addresses (never minted; see the
    module docstring); without it such an output is ignored with a warning like any unknown route.
    """

    source_chain: str
    params: ChainParams
    routes: tuple[Route, ...]
    order_lifetime: int = 3600
    expiry_grace: int = 120
    header_window: int = 2016
    group_key: Point | None = None
    chain_code: bytes | None = None
    signer: str | None = None
    accounts: bool = False

    def __post_init__(self) -> None:
        chain_kind(check_caip2(self.source_chain))
        if len({r.destination_chain for r in self.routes}) != len(self.routes):
            raise OrderError("one route per destination chain")
        if self.order_lifetime <= 0 or self.expiry_grace < 0 or self.header_window < self.params.max_confirmations:
            raise OrderError("order_lifetime > 0, expiry_grace >= 0, header_window >= max_confirmations")

    def route(self, destination_chain: str) -> Route | None:
        return next((r for r in self.routes if r.destination_chain == destination_chain), None)


# -------------------------------------------------------------------------------------- deposit


@dataclass
class Deposit:
    """One deposit's record: its facts, where it is, and every order ever issued for it."""

    deposit_id: str
    txid: str
    vout: int
    address: str
    amount: int
    destination_chain: str
    recipient: str
    state: str
    required: int
    block_hash: str | None = None
    block_height: int | None = None
    confirmations: int = 0
    order: MintOrder | None = None
    signature: bytes | None = None
    issued: list[MintOrder] = field(default_factory=list)  # every order issued or adopted, oldest first
    queued: bool = False
    minted_tx: str | None = None
    minted_block: int | None = None
    minted_digest: str | None = None
    credited: str | None = None  # account deposits: the batch that credited it (see Credited)

    @property
    def account(self) -> bool:
        """A deposit to a settlement account's address: credited by a ledger batch, never minted."""
        return self.destination_chain == SETTLEMENT_DESTINATION

    def to_dict(self) -> dict[str, Any]:
        return {
            "deposit_id": self.deposit_id, "txid": self.txid, "vout": self.vout, "address": self.address,
            "amount": self.amount, "destination_chain": self.destination_chain, "recipient": self.recipient,
            "state": self.state, "required": self.required, "block_hash": self.block_hash,
            "block_height": self.block_height, "confirmations": self.confirmations,
            "order": self.order.to_dict() if self.order else None,
            "signature": self.signature.hex() if self.signature is not None else None,
            "issued": [o.to_dict() for o in self.issued], "queued": self.queued, "minted_tx": self.minted_tx,
            "minted_block": self.minted_block, "minted_digest": self.minted_digest, "credited": self.credited,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Deposit:
        if d["state"] not in STATES:
            raise ValueError(f"unknown deposit state {d['state']!r}")
        return cls(
            deposit_id=d["deposit_id"], txid=d["txid"], vout=d["vout"], address=d["address"], amount=d["amount"],
            destination_chain=d["destination_chain"], recipient=d["recipient"], state=d["state"],
            required=d["required"], block_hash=d["block_hash"], block_height=d["block_height"],
            confirmations=d["confirmations"], order=MintOrder.from_dict(d["order"]) if d["order"] else None,
            signature=bytes.fromhex(d["signature"]) if d["signature"] is not None else None,
            issued=[MintOrder.from_dict(o) for o in d["issued"]], queued=d["queued"], minted_tx=d["minted_tx"],
            minted_block=d["minted_block"], minted_digest=d["minted_digest"], credited=d.get("credited"),
        )


# -------------------------------------------------------------------------------------- machine


class DepositMachine:
    """Deposits of one source chain, from first sight to mint (see the module docstring)."""

    def __init__(self, config: DepositConfig) -> None:
        self.config = config
        self.tip = -1
        self.headers: dict[int, str] = {}
        self.deposits: dict[str, Deposit] = {}
        self.next_nonce = 1
        self.signer_epoch = 0
        self.paused = False
        self.pause_reason = ""
        self.minted_unseen: dict[str, dict[str, Any]] = {}

    # -- persistence

    def to_dict(self) -> dict[str, Any]:
        """Everything that evolves, JSON-ready; with the same config :meth:`from_dict` restores an
        identical machine (same future actions for the same observations)."""
        return {
            "version": 1, "source_chain": self.config.source_chain, "tip": self.tip,
            "headers": {str(h): v for h, v in sorted(self.headers.items())},
            "deposits": {k: d.to_dict() for k, d in sorted(self.deposits.items())},
            "next_nonce": self.next_nonce, "signer_epoch": self.signer_epoch, "paused": self.paused,
            "pause_reason": self.pause_reason, "minted_unseen": dict(sorted(self.minted_unseen.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], config: DepositConfig) -> DepositMachine:
        if data.get("version") != 1 or data.get("source_chain") != config.source_chain:
            raise ValueError("state is not a version-1 state of this source chain")
        m = cls(config)
        m.tip = data["tip"]
        m.headers = {int(h): v for h, v in data["headers"].items()}
        m.deposits = {k: Deposit.from_dict(d) for k, d in data["deposits"].items()}
        m.next_nonce = data["next_nonce"]
        m.signer_epoch = data["signer_epoch"]
        m.paused = data["paused"]
        m.pause_reason = data["pause_reason"]
        m.minted_unseen = {k: dict(v) for k, v in data["minted_unseen"].items()}
        return m

    def resume_actions(self, now: int) -> list[Action]:
        """What a restarted edge must (re)do: re-propose live in-flight orders (the signer's policy
        accepts the identical digest again), re-relay signed ones (a duplicate relay just reverts
        with ``DepositAlreadyMinted``), and whatever time made due while it was down."""
        out: list[Action] = []
        if not self.paused:
            for dep in self._ordered():
                if dep.order is None or self._expired(dep.order, now):
                    continue
                if dep.state == SIGNING:
                    out.append(ProposeMint(dep.deposit_id, dep.order))
                elif dep.state == SIGNED and dep.signature is not None:
                    out.append(Relay(dep.deposit_id, dep.order, dep.signature))
        self._check_time(now, out)
        return out

    # -- dispatch

    def handle(self, observation: Observation, now: int) -> list[Action]:
        """Apply one observation at time ``now``; return the actions, in order."""
        out: list[Action] = []
        match observation:
            case BlockConnected():
                self._on_block(observation, now, out)
            case BlockDisconnected():
                self._disconnect_from(observation.height, out, only_hash=observation.hash)
                self._advance_all(now, out)
            case ChainTip():
                self.tip = observation.height
                self._advance_all(now, out)
            case OrderSigned():
                self._on_signed(observation, now, out)
            case SigningFailed():
                self._on_signing_failed(observation, now, out)
            case MintSeen():
                self._on_minted(observation, out)
            case MintQueuedSeen():
                self._on_queued(observation, out)
            case SignerEpochChanged():
                self.signer_epoch = observation.epoch
            case Resume():
                self._on_resume(observation, now, out)
            case Credited():
                self._on_credited(observation, out)
            case Tick():
                pass
            case _:
                raise TypeError(f"not an observation: {observation!r}")
        self._check_time(now, out)
        return out

    # -- helpers

    def _ordered(self) -> list[Deposit]:
        """Deposits in deposit-id order: the order of the actions must not depend on how the edge's
        storage orders keys (JSONB, for one, does not keep insertion order)."""
        return [self.deposits[k] for k in sorted(self.deposits)]

    def get(self, deposit_id_hex: str) -> Deposit | None:
        return self.deposits.get(deposit_id_hex)

    def _set(self, dep: Deposit, new: str, detail: str, out: list[Action]) -> None:
        out.append(Record(dep.deposit_id, dep.state, new, detail))
        dep.state = new

    def _expired(self, order: MintOrder, now: int) -> bool:
        return now > order.deadline + self.config.expiry_grace

    def _route_digest(self, order: MintOrder, destination_chain: str) -> bytes:
        route = self.config.route(destination_chain)
        assert route is not None
        return order.digest(route.gateway, evm_chain_id(destination_chain))

    # -- blocks

    def _on_block(self, block: BlockConnected, now: int, out: list[Action]) -> None:
        if self.headers.get(block.height) == block.hash:
            self._take_outputs(block, out)  # a re-delivered block: outputs are idempotent
            self._advance_all(now, out)
            return
        if any(h >= block.height for h in self.headers):  # a disconnect we were not told about
            self._disconnect_from(block.height, out)
        below = self.headers.get(block.height - 1)
        if below is not None and below != block.parent:
            self._disconnect_from(block.height - 1, out)
            out.append(Rescan(block.height - 1))
            self._advance_all(now, out)
            return
        if below is None and self.headers and max(self.headers) < block.height - 1:
            out.append(Rescan(max(self.headers) + 1))  # a gap: blocks were skipped
            return
        self.headers[block.height] = block.hash
        self.tip = max(self.tip, block.height)
        floor = self.tip - self.config.header_window
        for h in [h for h in self.headers if h < floor]:
            del self.headers[h]
        self._take_outputs(block, out)
        self._advance_all(now, out)

    def _take_outputs(self, block: BlockConnected, out: list[Action]) -> None:
        for output in block.outputs:
            self._take_output(output, block, out)

    def _take_output(self, o: DepositOutput, block: BlockConnected, out: list[Action]) -> None:
        cfg = self.config
        try:
            txid = txid_bytes(o.txid).hex()
            did = "0x" + deposit_id(cfg.source_chain, txid, o.vout).hex()
            if o.destination_chain == SETTLEMENT_DESTINATION:
                if not cfg.accounts:
                    raise OrderError("settlement account deposits are not taken on this chain")
                recipient = party_hex(o.recipient)
            else:
                recipient = checksum_address(o.recipient, "recipient")
                if cfg.route(o.destination_chain) is None:
                    raise OrderError(f"no route to {o.destination_chain}")
            if isinstance(o.amount, bool) or not isinstance(o.amount, int) or o.amount < 0:
                raise OrderError("amount must be a non-negative integer")
            if cfg.group_key is not None and cfg.chain_code is not None:
                if o.destination_chain == SETTLEMENT_DESTINATION:
                    derived = account_deposit(cfg.group_key, cfg.chain_code, cfg.source_chain, recipient)
                else:
                    derived = deposit_address(cfg.group_key, cfg.chain_code, cfg.source_chain, o.destination_chain,
                                              recipient)
                if not same_address(chain_kind(cfg.source_chain), derived.address, o.address):
                    raise OrderError(f"{o.address} is not the deposit address of {o.destination_chain}/{recipient}")
        except (OrderError, DerivationError) as exc:
            out.append(Alert("warning", f"ignored output {o.txid}:{o.vout} in block {block.hash}: {exc}"))
            return
        dep = self.deposits.get(did)
        if dep is not None:
            facts = (dep.address, dep.amount, dep.destination_chain, dep.recipient)
            if facts != (o.address, o.amount, o.destination_chain, recipient):
                out.append(Alert("critical", f"output {txid}:{o.vout} reported with different facts "
                                             f"{(o.address, o.amount, o.destination_chain, recipient)} than "
                                             f"recorded {facts}; ignored", did))
                return
            self._reseen(dep, block, out)
            return
        dep = Deposit(deposit_id=did, txid=txid, vout=o.vout, address=o.address, amount=o.amount,
                      destination_chain=o.destination_chain, recipient=recipient, state=SEEN,
                      required=required_confirmations(o.amount, cfg.params), block_hash=block.hash,
                      block_height=block.height)
        self.deposits[did] = dep
        if is_dust(o.amount, cfg.params):
            dep.state = DUST
            minimum = minimum_deposit(cfg.params)
            out.append(Record(did, None, DUST, f"{o.amount} below the minimum deposit {minimum}; never minted"))
            out.append(ReportDust(did, txid, o.vout, o.address, o.amount, minimum))
            return
        out.append(Record(did, None, SEEN, f"in block {block.height} {block.hash}"))
        unseen = self.minted_unseen.pop(did, None)
        if unseen is not None:  # the destination told us first (our source view was behind)
            dep.minted_tx, dep.minted_block = unseen["tx_hash"], unseen["block"]
            dep.minted_digest = unseen.get("order_digest")
            self._set(dep, MINTED, f"already minted in {dep.minted_tx}", out)

    def _reseen(self, dep: Deposit, block: BlockConnected, out: list[Action]) -> None:
        if dep.block_hash == block.hash:
            return  # the same observation twice
        old = dep.block_hash
        dep.block_hash, dep.block_height, dep.confirmations = block.hash, block.height, 0
        if dep.state == REORGED:
            self._set(dep, SEEN, f"re-included in block {block.height} {block.hash}", out)
        elif dep.state in (MINTED, ERRATUM, DUST):
            out.append(Record(dep.deposit_id, dep.state, dep.state,
                              f"re-included in block {block.height} {block.hash}"))
        else:  # moved without a disconnect report: re-confirm at the new height
            out.append(Record(dep.deposit_id, dep.state, dep.state, f"moved from block {old} to {block.hash}"))
            if dep.state in (CONFIRMED, SIGNING, SIGNED):
                self._set(dep, CONFIRMING, "re-confirming in its new block", out)

    def _disconnect_from(self, height: int, out: list[Action], only_hash: str | None = None) -> None:
        """Disconnect every block at ``height`` and above (top down) — or, for an explicit report of
        a block we do not hold, just the deposits recorded in it."""
        doomed = sorted((h for h in self.headers if h >= height), reverse=True)
        hashes = [self.headers.pop(h) for h in doomed]
        if only_hash is not None and only_hash not in hashes:
            hashes.append(only_hash)
        self.tip = min(self.tip, height - 1)
        for block_hash in hashes:
            for dep in [d for d in self._ordered() if d.block_hash == block_hash]:
                self._reorged_out(dep, out)

    def _reorged_out(self, dep: Deposit, out: list[Action]) -> None:
        where = f"block {dep.block_height} {dep.block_hash} disconnected"
        dep.block_hash, dep.block_height, dep.confirmations = None, None, 0
        if dep.state == MINTED:
            self._erratum(dep, f"{where} after the mint in {dep.minted_tx}", out)
        elif dep.account and dep.credited is not None and dep.state in _IN_CHAIN_UNMINTED:
            self._erratum(dep, f"{where} after it was credited to its settlement account ({dep.credited})", out)
        elif dep.state in _IN_CHAIN_UNMINTED:
            had_order = dep.order is not None and dep.state in (SIGNING, SIGNED)
            self._set(dep, REORGED, where + ("; its order is kept and not relayed" if had_order else ""), out)
            if had_order:
                out.append(Alert("warning", f"deposit {dep.deposit_id} reorganised out with order nonce "
                                            f"{dep.order.nonce if dep.order else '?'} outstanding", dep.deposit_id))
        # dust, reorged, erratum: nothing more to do

    def _erratum(self, dep: Deposit, reason: str, out: list[Action]) -> None:
        self._set(dep, ERRATUM, reason, out)
        self.paused, self.pause_reason = True, f"erratum {dep.deposit_id}: {reason}"
        out.append(PauseChain(self.config.source_chain, reason, dep.deposit_id))
        out.append(Alert("critical", f"ERRATUM: deposit {dep.deposit_id} ({dep.txid}:{dep.vout}, {dep.amount} to "
                                     f"{dep.recipient}) {reason}; minting from {self.config.source_chain} paused",
                         dep.deposit_id))

    # -- depth

    def _advance_all(self, now: int, out: list[Action]) -> None:
        for dep in self._ordered():
            if dep.state in (SEEN, CONFIRMING):
                self._advance(dep, now, out)

    def _advance(self, dep: Deposit, now: int, out: list[Action]) -> None:
        assert dep.block_height is not None
        k = max(0, self.tip - dep.block_height + 1)
        if k == dep.confirmations and dep.state == CONFIRMING:
            return
        dep.confirmations = k
        if k >= dep.required:
            if dep.account:
                self._set(dep, CONFIRMED, f"{k} of {dep.required} confirmations; "
                                          + ("credited" if dep.credited else "awaits its settlement credit")
                                          + " (never minted)", out)
                return
            self._set(dep, CONFIRMED, f"{k} of {dep.required} confirmations", out)
            self._start_mint(dep, now, out)
        elif k > 0:
            self._set(dep, CONFIRMING, f"{k} of {dep.required} confirmations", out)

    # -- orders

    def _start_mint(self, dep: Deposit, now: int, out: list[Action]) -> None:
        """From ``confirmed``: reuse the order this deposit already has while it is live (so a
        re-confirmation or restart never yields a second order), else issue a new one. Never for a
        settlement account deposit: its value is credited to a ledger account, not minted."""
        if dep.account:
            return
        if self.paused:
            out.append(Record(dep.deposit_id, dep.state, dep.state, f"waiting: {self.pause_reason}"))
            return
        order = dep.order
        if order is not None and (not self._expired(order, now) or dep.queued):
            if dep.signature is not None:
                self._set(dep, SIGNED, f"reusing signed order nonce {order.nonce}", out)
                out.append(Relay(dep.deposit_id, order, dep.signature))
            elif not self._expired(order, now):
                self._set(dep, SIGNING, f"reusing order nonce {order.nonce}", out)
                out.append(ProposeMint(dep.deposit_id, order))
            return
        self._issue(dep, now, out)

    def _issue(self, dep: Deposit, now: int, out: list[Action]) -> None:
        if dep.account:  # unreachable through _start_mint; kept so no path can ever mint an account deposit
            out.append(Alert("critical", f"refused to issue a mint order for settlement account deposit "
                                         f"{dep.deposit_id}", dep.deposit_id))
            return
        route = self.config.route(dep.destination_chain)
        assert route is not None
        order = MintOrder(asset=route.asset, source_chain=self.config.source_chain, source_txid=dep.txid,
                          vout=dep.vout, recipient=dep.recipient, amount=dep.amount, signer_epoch=self.signer_epoch,
                          nonce=self.next_nonce, deadline=now + self.config.order_lifetime)
        self.next_nonce += 1
        previous = dep.order
        dep.order, dep.signature = order, None
        dep.issued.append(order)
        detail = f"order nonce {order.nonce} deadline {order.deadline}"
        if previous is not None:
            detail += f" (re-issue: nonce {previous.nonce} expired at {previous.deadline} unminted)"
        self._set(dep, SIGNING, detail, out)
        out.append(ProposeMint(dep.deposit_id, order))

    def _check_time(self, now: int, out: list[Action]) -> None:
        if self.paused:
            return
        for dep in self._ordered():
            if dep.state in (SIGNING, SIGNED) and dep.order is not None and not dep.queued \
                    and self._expired(dep.order, now):
                self._issue(dep, now, out)

    def _terms_match(self, dep: Deposit, order: MintOrder) -> bool:
        route = self.config.route(dep.destination_chain)
        return route is not None and (
            order.asset, order.source_chain, order.source_txid, order.vout, order.recipient, order.amount) == (
            route.asset, self.config.source_chain, dep.txid, dep.vout, dep.recipient, dep.amount)

    def _on_signed(self, ev: OrderSigned, now: int, out: list[Action]) -> None:
        dep = self.deposits.get(ev.deposit_id)
        if dep is None or "0x" + ev.order.deposit_id.hex() != ev.deposit_id or not self._terms_match(dep, ev.order):
            out.append(Alert("critical", f"signed order for {ev.deposit_id} does not match any deposit's terms: "
                                         f"{ev.order}", ev.deposit_id))
            return
        if self.config.signer is not None:
            try:
                signer = recover_signer(self._route_digest(ev.order, dep.destination_chain), ev.signature)
            except OrderError as exc:
                signer = f"<{exc}>"
            if signer != checksum_address(self.config.signer):
                out.append(Alert("critical", f"signature on order nonce {ev.order.nonce} recovers {signer}, not "
                                             f"the group key", ev.deposit_id))
                return
        if dep.order == ev.order and dep.signature == ev.signature and dep.state == SIGNED:
            return  # the same signature reported twice
        if dep.state in (MINTED, ERRATUM, DUST) or self._expired(ev.order, now):
            out.append(Record(dep.deposit_id, dep.state, dep.state,
                              f"signature for order nonce {ev.order.nonce} ignored ({dep.state}"
                              f"{', expired' if self._expired(ev.order, now) else ''})"))
            return
        if dep.order != ev.order:
            if dep.order is not None and dep.signature is not None and not self._expired(dep.order, now):
                out.append(Record(dep.deposit_id, dep.state, dep.state,
                                  f"second signed order nonce {ev.order.nonce} not relayed; "
                                  f"nonce {dep.order.nonce} is live"))
                return
            # another coordinator's order for exactly this deposit's terms: adopt it instead of ours
            dep.order = ev.order
            if ev.order not in dep.issued:
                dep.issued.append(ev.order)
        dep.signature = ev.signature
        if dep.state in (CONFIRMED, SIGNING, SIGNED) and not self.paused:
            self._set(dep, SIGNED, f"order nonce {ev.order.nonce} signed", out)
            out.append(Relay(dep.deposit_id, ev.order, ev.signature))
        else:
            out.append(Record(dep.deposit_id, dep.state, dep.state,
                              f"signature for order nonce {ev.order.nonce} stored, not relayed "
                              f"({'paused' if self.paused else dep.state})"))

    def _on_signing_failed(self, ev: SigningFailed, now: int, out: list[Action]) -> None:
        dep = self.deposits.get(ev.deposit_id)
        if dep is None or dep.state != SIGNING or dep.order is None or self.paused:
            return
        if self._expired(dep.order, now):
            self._issue(dep, now, out)
            return
        out.append(Record(dep.deposit_id, SIGNING, SIGNING, f"signing failed ({ev.reason}); same order retried"))
        out.append(ProposeMint(dep.deposit_id, dep.order))

    def _on_minted(self, ev: MintSeen, out: list[Action]) -> None:
        dep = self.deposits.get(ev.deposit_id)
        if dep is None:
            self.minted_unseen[ev.deposit_id] = {"tx_hash": ev.tx_hash, "block": ev.block,
                                                 "order_digest": ev.order_digest}
            out.append(Alert("warning", f"Minted for deposit {ev.deposit_id} in {ev.tx_hash}, which this node "
                                        f"has not seen on {self.config.source_chain}", ev.deposit_id))
            return
        if dep.state in (MINTED, ERRATUM):
            if dep.minted_tx not in (None, ev.tx_hash):
                out.append(Alert("critical", f"a second Minted for {dep.deposit_id}: {ev.tx_hash} after "
                                             f"{dep.minted_tx}", dep.deposit_id))
            return
        if dep.account:
            out.append(Alert("critical", f"settlement account deposit {dep.deposit_id} was MINTED in {ev.tx_hash}: "
                                         "the group never signs a mint for an account deposit", dep.deposit_id))
        dep.minted_tx, dep.minted_block, dep.minted_digest = ev.tx_hash, ev.block, ev.order_digest
        known = {"0x" + self._route_digest(o, dep.destination_chain).hex() for o in dep.issued}
        if ev.order_digest is not None and ev.order_digest not in known and not ev.cosigned:
            out.append(Alert("warning", f"deposit {dep.deposit_id} minted by order {ev.order_digest}, which this "
                                        f"node did not issue", dep.deposit_id))
        if dep.state == REORGED:
            self._erratum(dep, f"minted in {ev.tx_hash} while its block is not in the chain", out)
            return
        if dep.state in (SEEN, CONFIRMING, DUST):
            out.append(Alert("warning", f"deposit {dep.deposit_id} minted in {ev.tx_hash} while this node has it "
                                        f"{dep.state} ({dep.confirmations} of {dep.required})", dep.deposit_id))
        self._set(dep, MINTED, f"minted in {ev.tx_hash} (block {ev.block})", out)

    def _on_queued(self, ev: MintQueuedSeen, out: list[Action]) -> None:
        dep = self.deposits.get(ev.deposit_id)
        if dep is None or dep.queued:
            return
        dep.queued = True
        out.append(Record(dep.deposit_id, dep.state, dep.state,
                          f"large mint {ev.order_digest} queued until {ev.eta}; no re-issue while queued"))

    def _on_credited(self, ev: Credited, out: list[Action]) -> None:
        dep = self.deposits.get(ev.deposit_id)
        if dep is None or not dep.account:
            out.append(Alert("critical" if dep is not None else "warning",
                             f"a settlement credit names deposit {ev.deposit_id}, which this node "
                             + ("holds as a mint deposit" if dep is not None else "has not seen"), ev.deposit_id))
            return
        if dep.credited is not None:
            return  # the same credit reported twice
        dep.credited = ev.reference or "credited"
        if dep.state == REORGED:
            self._erratum(dep, f"credited ({dep.credited}) while its block is not in the chain", out)
            return
        if dep.state != CONFIRMED:  # e.g. moved to another block since: it re-confirms, still in the chain
            out.append(Alert("warning", f"settlement account deposit {dep.deposit_id} credited ({dep.credited}) "
                                         f"while this node has it {dep.state} ({dep.confirmations} of "
                                         f"{dep.required})", dep.deposit_id))
        out.append(Record(dep.deposit_id, dep.state, dep.state, f"credited to its settlement account ({dep.credited})"))

    def _on_resume(self, ev: Resume, now: int, out: list[Action]) -> None:
        if not self.paused:
            return
        self.paused, self.pause_reason = False, ""
        for dep in self._ordered():
            if dep.state == CONFIRMED:
                self._start_mint(dep, now, out)
            elif dep.state == SIGNED and dep.order is not None and dep.signature is not None \
                    and not self._expired(dep.order, now):
                out.append(Relay(dep.deposit_id, dep.order, dep.signature))
            elif dep.state == SIGNING and dep.order is not None and not self._expired(dep.order, now):
                out.append(ProposeMint(dep.deposit_id, dep.order))
