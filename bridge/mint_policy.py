"""What every node checks, from its *own* chain view, before it co-signs a mint order.

A coordinator (or up to t−1 colluding nodes) proposes a ``MintOrder`` and its digest; each
participant's policy rebuilds everything it can from its own connection to the chains and its own
records and refuses on any difference, with a reason precise enough for the audit log. The checks
are pure: the chain answers come through :class:`ChainView`, the time through ``now``, so every
refusal is a unit test and the same code runs in the node's authorize hook.

A participant signs only if, by its own view:

1. the digest is the one *it* computes for this Gateway and destination chain (a coordinator
   cannot get a signature on bytes other than the order shown);
2. the asset is one this node mints, from exactly its configured source chain;
3. the order names the Gateway's current signer epoch;
4. the deadline is ahead, but not further than the configured horizon (a far deadline would keep
   an order alive — and a re-issue impossible — for too long);
5. the amount is not dust;
6. it has not already co-signed a *different* order for the deposit that may still be submitted
   (re-signing the identical order after a failed session is fine; a re-issue is allowed only
   after every earlier order's deadline plus a clock-skew grace, and only with the same terms);
7. the deposit is not already minted on-chain (``mintedDeposit``);
8. the output (Bitcoin) or top-level value transfer (EVM) exists, succeeded, is not a deposit to
   a settlement account (those are credited to a ledger account, never minted: issue 16), pays
   the address derived for exactly (source chain, this destination chain, recipient), for exactly
   the amount, at the value-aware depth.

The Gateway's one-mint-per-deposit is the last line; these checks make sure the group never
signs an order that should not mint in the first place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fusion_prime.protocol.addresses import hash160
from fusion_prime.protocol.curve import Point

from .derivation import DerivationError, deposit_address, same_address
from .orders import (
    EVM_NATIVE_VOUT,
    ChainParams,
    MintOrder,
    OrderError,
    chain_kind,
    checksum_address,
    evm_chain_id,
    is_dust,
    minimum_deposit,
    required_confirmations,
)


@dataclass(frozen=True)
class BitcoinOutput:
    """One transaction output as this node's Bitcoin connection reports it (``gettxout`` or the
    block's transaction, with the confirmations of the containing block)."""

    script_pubkey: bytes | None
    address: str | None
    value_sat: int
    confirmations: int
    block_hash: str


@dataclass(frozen=True)
class EvmDeposit:
    """A transaction's top-level value transfer as this node's EVM connection reports it."""

    to: str
    value_wei: int
    confirmations: int
    status: int  # receipt status: 1 = success


class ChainView(Protocol):
    """What the node's own chain connections and records answer. Implementations live at the edge."""

    def bitcoin_output(self, txid: str, vout: int) -> BitcoinOutput | None:
        """The output ``txid:vout`` (RPC display order) in the best chain, or None."""
        ...

    def evm_deposit(self, tx_hash: str, index: int) -> EvmDeposit | None:
        """The deposit ``index`` of ``tx_hash`` on the source EVM chain (``EVM_NATIVE_VOUT``: the
        top-level value transfer), or None if there is no such transaction in the best chain."""
        ...

    def minted_on_destination(self, deposit_id: bytes) -> bool:
        """Whether ``Gateway.mintedDeposit(deposit_id)`` is set on the destination chain."""
        ...

    def gateway_signer_epoch(self) -> int:
        """The Gateway's current signer epoch (``signerSchedule()``)."""
        ...

    def cosigned_orders(self, deposit_id: bytes) -> Sequence[MintOrder]:
        """Every order for ``deposit_id`` this node has already co-signed (its local record)."""
        ...

    def settlement_deposit(self, deposit_id: bytes, address: str | None) -> str | None:
        """Why ``deposit_id`` (paying ``address``, when known) is a settlement account deposit by this
        node's records — recorded as one, credited to an account, or paying an address registered
        for an account — or None. Such a deposit is never minted."""
        ...


@dataclass(frozen=True)
class AssetRule:
    """A wrapped asset on the destination chain and the one chain its deposits come from."""

    asset: str
    source_chain: str
    params: ChainParams

    def __post_init__(self) -> None:
        if checksum_address(self.asset, "asset") != self.asset:
            raise OrderError("asset must be EIP-55")
        chain_kind(self.source_chain)


@dataclass(frozen=True)
class PolicyConfig:
    """The node's bridge configuration for one destination Gateway."""

    group_key: Point
    chain_code: bytes
    destination_chain: str
    gateway: str
    assets: tuple[AssetRule, ...]
    max_deadline_ahead: int = 2 * 3600
    min_deadline_ahead: int = 60
    expiry_grace: int = 120

    def __post_init__(self) -> None:
        evm_chain_id(self.destination_chain)
        if checksum_address(self.gateway, "gateway") != self.gateway:
            raise OrderError("gateway must be EIP-55")
        if len({a.asset for a in self.assets}) != len(self.assets):
            raise OrderError("one rule per asset")

    def rule(self, asset: str) -> AssetRule | None:
        return next((a for a in self.assets if a.asset == asset), None)


@dataclass(frozen=True)
class Verdict:
    """``ok`` and, when refused, a machine-readable ``code`` and a sentence for the audit log."""

    ok: bool
    reason: str
    code: str = "ok"


def _refuse(code: str, reason: str) -> Verdict:
    return Verdict(False, reason, code)


def check_mint(order: MintOrder, digest: bytes, view: ChainView, config: PolicyConfig, *, now: int) -> Verdict:
    """Whether this node co-signs ``digest`` as ``order``; every refusal names what differs."""
    if not isinstance(order, MintOrder):
        return _refuse("malformed", "not a MintOrder")
    expected = order.digest(config.gateway, evm_chain_id(config.destination_chain))
    if digest != expected:
        return _refuse("digest_mismatch", f"digest {digest.hex()} is not this order's digest {expected.hex()} for "
                                          f"gateway {config.gateway} on {config.destination_chain}")
    rule = config.rule(order.asset)
    if rule is None:
        return _refuse("unknown_asset", f"asset {order.asset} is not minted by this bridge")
    if order.source_chain != rule.source_chain:
        return _refuse("wrong_source_chain", f"asset {order.asset} comes from {rule.source_chain}, "
                                             f"not {order.source_chain}")
    epoch = view.gateway_signer_epoch()
    if order.signer_epoch != epoch:
        return _refuse("wrong_signer_epoch",
                       f"order names signer epoch {order.signer_epoch}; the Gateway is at {epoch}")
    if order.deadline < now + config.min_deadline_ahead:
        return _refuse("deadline_passed", f"deadline {order.deadline} has passed or is less than "
                                          f"{config.min_deadline_ahead} s away (now {now})")
    if order.deadline > now + config.max_deadline_ahead:
        return _refuse("deadline_too_far", f"deadline {order.deadline} is more than {config.max_deadline_ahead} s "
                                           f"ahead (now {now})")
    if is_dust(order.amount, rule.params):
        return _refuse("dust", f"amount {order.amount} is below the minimum deposit {minimum_deposit(rule.params)}")

    try:
        derived = deposit_address(config.group_key, config.chain_code, order.source_chain,
                                  config.destination_chain, order.recipient)
    except DerivationError as exc:
        return _refuse("wrong_address", f"no deposit address for this route: {exc}")

    kind = chain_kind(order.source_chain)
    if kind == "bitcoin":
        output = view.bitcoin_output(order.source_txid, order.vout)
        if output is None:
            return _refuse("no_such_output", f"no output {order.source_txid}:{order.vout} on {order.source_chain}")
        paid_to = output.address
        script = bytes([0, 20]) + hash160(derived.public_key)
        pays = (output.script_pubkey == script) if output.script_pubkey is not None else (
            output.address is not None and same_address("bitcoin", output.address, derived.address))
        value, confirmations = output.value_sat, output.confirmations
    else:
        if order.vout != EVM_NATIVE_VOUT:
            return _refuse("no_such_output", f"EVM deposit index {order.vout} is not a native transfer "
                                             f"({EVM_NATIVE_VOUT}); token deposits are not supported")
        deposit = view.evm_deposit(order.source_txid, order.vout)
        if deposit is None:
            return _refuse("no_such_output", f"no transaction 0x{order.source_txid} on {order.source_chain}")
        if deposit.status != 1:
            return _refuse("failed_transaction", f"transaction 0x{order.source_txid} reverted")
        paid_to = deposit.to
        pays = same_address("evm", deposit.to, derived.address)
        value, confirmations = deposit.value_wei, deposit.confirmations
    account = view.settlement_deposit(order.deposit_id, paid_to)
    if account is not None:
        return _refuse("account_deposit", f"deposit 0x{order.deposit_id.hex()} {account}: it is credited to a "
                                          "settlement account, never minted")
    if not pays:
        return _refuse("wrong_address", f"the deposit does not pay {derived.address}, the address of "
                                        f"{order.recipient} on {config.destination_chain}")
    if order.amount > value:
        return _refuse("amount_inflated", f"order amount {order.amount} exceeds the deposit's {value}")
    if order.amount < value:
        return _refuse("amount_deflated", f"order amount {order.amount} is less than the deposit's {value}")
    if is_dust(value, rule.params):
        return _refuse("dust", f"deposit {value} is below the minimum deposit {minimum_deposit(rule.params)}")
    needed = required_confirmations(value, rule.params)
    if confirmations < needed:
        return _refuse("below_depth", f"{confirmations} of {needed} confirmations")

    # What this node already did and what the destination chain says come after the facts of
    # the deposit: an order that misstates the deposit is refused for that, whatever else is
    # true, so the reason a refusal gives does not depend on timing.
    did = order.deposit_id
    previous = [o for o in view.cosigned_orders(did) if o != order]
    for prev in previous:
        if not prev.same_deposit_terms(order):
            return _refuse("cosigned_different_order", f"this node co-signed order nonce {prev.nonce} for deposit "
                                                       f"0x{did.hex()} with other terms")
        if now <= prev.deadline + config.expiry_grace:
            return _refuse("cosigned_different_order", f"this node co-signed order nonce {prev.nonce} for deposit "
                                                       f"0x{did.hex()}, still live until {prev.deadline}")
    if view.minted_on_destination(did):
        return _refuse("already_minted", f"deposit 0x{did.hex()} is already minted on {config.destination_chain}")

    return Verdict(True, "ok")
