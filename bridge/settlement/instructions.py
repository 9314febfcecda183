"""Client instructions to the settlement ledger: signed by the client, checkable by every node alone.

Why a signature over a canonical body (the wallet API's signed-request scheme, ``signer/requests.py``)
rather than an authenticated channel: an instruction reaches one node, the coordinator orders it
into a batch, and *every* node must be able to verify — without trusting either of them — that
this client asked for exactly this. A signature over canonical bytes is transferable; a TLS
session is not. EIP-712 would let a browser wallet sign too, but our clients already hold wallet
API keys (33-byte secp256k1), and one scheme for both APIs is one thing to audit.

Body (canonical ``Encoder`` fields, in order): ``DOMAIN``, kind, client public key (33 bytes),
idempotency key, issued-at (Unix ms), then the kind's parameters (see ``InstructionBody.encode``).
The signature is DER ECDSA (low-S) over SHA-256 of the body by the client key.

Idempotency: ``(client, key)`` names one instruction forever. The same body sent again (a retry,
perhaps re-signed with a fresh timestamp — ``identity()`` leaves the time out) gets the first
outcome and changes nothing; a *different* body under a used key is rejected.

A trade's id commits to its terms: ``trade_id = SHA-256(TRADE_TAG ‖ identity of the submission)``,
so an affirmation, which signs the trade id, signs the legs, the mode and the deadline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass

from ...protocol.encoding import Decoder, Encoder
from ...protocol.errors import InvalidInput
from ...protocol.identity import PartyIdentity, verify_signature

DOMAIN = b"fusion-prime/settlement-instruction/v1"
TRADE_TAG = b"fusion-prime/settlement-trade/v1"
WITHDRAWAL_TAG = b"fusion-prime/settlement-withdrawal/v1"

OPEN_ACCOUNT = "open-account"
SUBMIT_TRADE = "submit-trade"
AFFIRM = "affirm"
DISPUTE = "dispute"
CANCEL = "cancel"
WITHDRAW = "withdraw"
KINDS = (OPEN_ACCOUNT, SUBMIT_TRADE, AFFIRM, DISPUTE, CANCEL, WITHDRAW)

GROSS = "gross"  # settles the moment the last party affirms
NET = "net"  # settles in the next netting cycle
MODES = (GROSS, NET)

MAX_LEGS = 16
MAX_QUANTITY = (1 << 127) - 1  # one leg; balances are kept below 2**128 (merkle.py)
MAX_TEXT = 256
_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,64}\Z")
ASSET = re.compile(r"^[A-Za-z0-9.-]{1,16}\Z")
_LABEL = re.compile(r"^[^\x00-\x1f\x7f]{0,64}\Z")


class InstructionError(InvalidInput):
    """Bytes that are not a canonical, correctly signed settlement instruction."""


@dataclass(frozen=True, order=True)
class Leg:
    """One movement of a trade: ``party`` receives ``quantity`` of ``asset`` (negative: delivers)."""

    party: bytes
    asset: str
    quantity: int

    def validate(self) -> None:
        if len(self.party) != 33 or self.party[0] not in (2, 3):
            raise InstructionError("a leg's party must be a 33-byte compressed public key")
        if not ASSET.match(self.asset):
            raise InstructionError(f"bad asset symbol {self.asset[:20]!r}")
        if self.quantity == 0 or abs(self.quantity) > MAX_QUANTITY:
            raise InstructionError("a leg's quantity must be non-zero and below 2**127")


@dataclass(frozen=True)
class InstructionBody:
    kind: str
    client: bytes  # 33-byte compressed secp256k1 public key
    key: str  # idempotency key
    issued_at_ms: int
    label: str = ""  # open-account
    legs: tuple[Leg, ...] = ()  # submit-trade
    mode: str = ""  # submit-trade
    deadline_ms: int = 0  # submit-trade: must be cut (net) or settled (gross) before this
    reference: str = ""  # submit-trade: the desk's own reference, free text
    trade_id: bytes = b""  # affirm, dispute, cancel
    reason: str = ""  # dispute
    asset: str = ""  # withdraw
    amount: int = 0  # withdraw
    destination_chain: str = ""  # withdraw: CAIP-2 of the chain paid on
    destination: str = ""  # withdraw: the address paid

    # -- encoding
    def encode(self) -> bytes:
        enc = Encoder().bytes(DOMAIN).bytes(self.kind.encode()).bytes(self.client).bytes(self.key.encode())
        enc.uint(self.issued_at_ms)
        if self.kind == OPEN_ACCOUNT:
            enc.bytes(self.label.encode())
        elif self.kind == SUBMIT_TRADE:
            enc.list_of_bytes(_leg_bytes(leg) for leg in self.legs)
            enc.bytes(self.mode.encode()).uint(self.deadline_ms).bytes(self.reference.encode())
        elif self.kind in (AFFIRM, CANCEL):
            enc.bytes(self.trade_id)
        elif self.kind == DISPUTE:
            enc.bytes(self.trade_id).bytes(self.reason.encode())
        elif self.kind == WITHDRAW:
            enc.bytes(self.asset.encode()).uint(self.amount).bytes(self.destination_chain.encode())
            enc.bytes(self.destination.encode())
        return enc.finish()

    @classmethod
    def decode(cls, data: bytes) -> InstructionBody:
        try:
            d = Decoder(data, "settlement instruction")
            if d.bytes() != DOMAIN:
                raise InstructionError("not a Fusion Prime settlement instruction")
            kind = _text(d.bytes())
            if kind not in KINDS:
                raise InstructionError(f"unknown instruction kind {kind!r}")
            fields: dict = {"kind": kind, "client": d.bytes(33), "key": _text(d.bytes()),
                            "issued_at_ms": d.uint(64)}
            if kind == OPEN_ACCOUNT:
                fields["label"] = _text(d.bytes())
            elif kind == SUBMIT_TRADE:
                fields["legs"] = tuple(_leg_from(raw) for raw in d.list_of_bytes())
                fields["mode"] = _text(d.bytes())
                fields["deadline_ms"] = d.uint(64)
                fields["reference"] = _text(d.bytes())
            elif kind in (AFFIRM, CANCEL):
                fields["trade_id"] = d.bytes(32)
            elif kind == DISPUTE:
                fields["trade_id"] = d.bytes(32)
                fields["reason"] = _text(d.bytes())
            elif kind == WITHDRAW:
                fields["asset"] = _text(d.bytes())
                fields["amount"] = d.uint(128)
                fields["destination_chain"] = _text(d.bytes())
                fields["destination"] = _text(d.bytes())
            d.finish()
        except InstructionError:
            raise
        except InvalidInput as exc:
            raise InstructionError(str(exc)) from exc
        body = cls(**fields)
        body.validate()
        if body.encode() != bytes(data):  # e.g. legs out of canonical order
            raise InstructionError("instruction body is not in canonical form")
        return body

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise InstructionError(f"unknown instruction kind {self.kind!r}")
        if len(self.client) != 33 or self.client[0] not in (2, 3):
            raise InstructionError("client must be a 33-byte compressed public key")
        if not _KEY.match(self.key):
            raise InstructionError("idempotency key must be 1-64 characters of [A-Za-z0-9._:-]")
        if not 0 < self.issued_at_ms < 1 << 63:
            raise InstructionError("issued-at is out of range")
        if self.kind == OPEN_ACCOUNT and not _LABEL.match(self.label):
            raise InstructionError("label: at most 64 printable characters")
        if self.kind == SUBMIT_TRADE:
            self._validate_trade()
        if self.kind in (AFFIRM, CANCEL, DISPUTE) and len(self.trade_id) != 32:
            raise InstructionError("trade id must be 32 bytes")
        if self.kind == DISPUTE and not 0 < len(self.reason) <= MAX_TEXT:
            raise InstructionError(f"a dispute needs a reason of 1-{MAX_TEXT} characters")
        if self.kind == WITHDRAW:
            if not ASSET.match(self.asset):
                raise InstructionError("bad asset symbol")
            if not 0 < self.amount <= MAX_QUANTITY:
                raise InstructionError("withdrawal amount must be positive and below 2**127")
            if not 3 <= len(self.destination_chain) <= 64 or ":" not in self.destination_chain:
                raise InstructionError("destination chain must be a CAIP-2 chain id")
            if not 1 <= len(self.destination) <= 128 or not self.destination.isprintable():
                raise InstructionError("destination must be 1-128 printable characters")

    def _validate_trade(self) -> None:
        if self.mode not in MODES:
            raise InstructionError(f"mode must be one of {', '.join(MODES)}")
        if not 2 <= len(self.legs) <= MAX_LEGS:
            raise InstructionError(f"a trade has 2 to {MAX_LEGS} legs")
        for leg in self.legs:
            leg.validate()
        if list(self.legs) != sorted(self.legs):
            raise InstructionError("legs must be sorted (party, asset, quantity)")
        if len({(leg.party, leg.asset) for leg in self.legs}) != len(self.legs):
            raise InstructionError("one leg per (party, asset)")
        sums: dict[str, int] = {}
        for leg in self.legs:
            sums[leg.asset] = sums.get(leg.asset, 0) + leg.quantity
        if any(sums.values()):
            raise InstructionError("every asset's legs must sum to zero (what one side delivers the other receives)")
        parties = {leg.party for leg in self.legs}
        if len(parties) < 2:
            raise InstructionError("a trade is between at least two parties")
        if self.client not in parties:
            raise InstructionError("the submitter must be a party to the trade")
        if not 0 < self.deadline_ms < 1 << 63:
            raise InstructionError("a trade needs a deadline")
        if not _LABEL.match(self.reference):
            raise InstructionError("reference: at most 64 printable characters")

    # -- derived values
    def identity(self) -> bytes:
        """What makes two instructions "the same" for idempotency: everything but the issue time."""
        return dataclasses.replace(self, issued_at_ms=1).encode()

    def digest_to_sign(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    @property
    def new_trade_id(self) -> bytes:
        """The id of the trade this submission creates (commits to its terms)."""
        assert self.kind == SUBMIT_TRADE
        return hashlib.sha256(TRADE_TAG + self.identity()).digest()

    @property
    def withdrawal_id(self) -> bytes:
        assert self.kind == WITHDRAW
        return hashlib.sha256(WITHDRAWAL_TAG + self.identity()).digest()

    def parties(self) -> tuple[bytes, ...]:
        return tuple(sorted({leg.party for leg in self.legs}))


def _text(raw: bytes) -> str:
    if len(raw) > 4 * MAX_TEXT:
        raise InstructionError("text field too long")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InstructionError("text field is not UTF-8") from exc


def _leg_bytes(leg: Leg) -> bytes:
    return Encoder().bytes(leg.party).bytes(leg.asset.encode()).int(leg.quantity).finish()


def _leg_from(raw: bytes) -> Leg:
    d = Decoder(raw, "trade leg")
    leg = Leg(d.bytes(33), _text(d.bytes()), d.int(127))
    d.finish()
    return leg


@dataclass(frozen=True)
class SignedInstruction:
    """A body and its client's signature, checked when built from bytes."""

    body: InstructionBody
    signature: bytes

    def to_bytes(self) -> bytes:
        return Encoder().bytes(self.body.encode()).bytes(self.signature).finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedInstruction:
        """Parse and verify: raises ``InstructionError`` for anything but a correctly signed body."""
        try:
            d = Decoder(data, "signed instruction")
            raw_body, signature = d.bytes(), d.bytes()
            d.finish()
        except InstructionError:
            raise
        except InvalidInput as exc:
            raise InstructionError(str(exc)) from exc
        body = InstructionBody.decode(raw_body)
        if not verify_signature(body.client, body.digest_to_sign(), signature):
            raise InstructionError("client signature does not verify")
        return cls(body, signature)


def sign_instruction(client: PartyIdentity, body: InstructionBody) -> SignedInstruction:
    """Client side: validate and sign."""
    if body.client != client.public_key:
        raise InstructionError("the body names another client")
    body.validate()
    return SignedInstruction(body, client.sign(body.digest_to_sign()))


def trade_legs(legs: list[tuple[bytes, str, int]] | tuple[Leg, ...]) -> tuple[Leg, ...]:
    """Legs in the canonical (sorted) order a submission needs."""
    return tuple(sorted(leg if isinstance(leg, Leg) else Leg(*leg) for leg in legs))
