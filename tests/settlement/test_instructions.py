"""Settlement instructions and batches (``bridge/settlement/instructions.py``, ``batch.py``).

An instruction is checked by every node alone, so its encoding must be canonical (one body, one
byte string), its signature must bind every byte, and a trade id must commit to the trade's terms
(an affirmation signs only the id). A batch is the coordinator's signed ordering: a wrong signer, a
tampered entry or an entry that does not encode back to the bytes received must be refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from fusion_prime.bridge.settlement.batch import (
    BATCH_TAG,
    E_WITHDRAWAL_PAID,
    E_WITHDRAWAL_RETURNED,
    GENESIS_HASH,
    Batch,
    Credit,
    Cutoff,
    Entry,
    Finalize,
    WithdrawalPaid,
    WithdrawalReturned,
    decode_batch,
    decode_entry,
    encode_entry,
    sign_batch,
)
from fusion_prime.bridge.settlement.instructions import (
    AFFIRM,
    CANCEL,
    DISPUTE,
    GROSS,
    KINDS,
    MAX_LEGS,
    NET,
    OPEN_ACCOUNT,
    SUBMIT_TRADE,
    WITHDRAW,
    InstructionBody,
    InstructionError,
    Leg,
    SignedInstruction,
    sign_instruction,
    trade_legs,
)
from fusion_prime.protocol.encoding import Encoder
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.identity import PartyIdentity

ALICE, BOB, CAROL = (PartyIdentity.from_secret(bytes([i]) * 32) for i in (1, 2, 3))
NODE, OTHER_NODE = PartyIdentity.from_secret(b"\x0a" * 32), PartyIdentity.from_secret(b"\x0b" * 32)
T0 = 1_700_000_000_000
TID = hashlib.sha256(b"some trade").digest()


def dvp(seller: PartyIdentity = ALICE, buyer: PartyIdentity = BOB, btc: int = 5, eth: int = 70) -> tuple[Leg, ...]:
    return trade_legs([(seller.public_key, "BTC", -btc), (buyer.public_key, "BTC", btc),
                       (seller.public_key, "ETH", eth), (buyer.public_key, "ETH", -eth)])


def body_of(kind: str, client: PartyIdentity = ALICE, **kw: Any) -> InstructionBody:
    defaults: dict[str, dict[str, Any]] = {
        OPEN_ACCOUNT: {"label": "Alice Capital"},
        SUBMIT_TRADE: {"legs": dvp(), "mode": GROSS, "deadline_ms": T0 + 60_000, "reference": "desk-1"},
        AFFIRM: {"trade_id": TID},
        CANCEL: {"trade_id": TID},
        DISPUTE: {"trade_id": TID, "reason": "wrong price"},
        WITHDRAW: {"asset": "BTC", "amount": 3, "destination_chain": "bip122:000000000019d6689c085ae165831e93",
                   "destination": "bc1qexample"},
    }
    fields = {**defaults[kind], **kw}
    return InstructionBody(kind=kind, client=client.public_key, key=fields.pop("key", "k-1"),
                           issued_at_ms=fields.pop("issued_at_ms", T0), **fields)


# --------------------------------------------------------------------------- instructions


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_canonically(kind: str) -> None:
    signed = sign_instruction(ALICE, body_of(kind))
    raw = signed.to_bytes()
    back = SignedInstruction.from_bytes(raw)
    assert back == signed
    assert back.to_bytes() == raw
    assert InstructionBody.decode(signed.body.encode()) == signed.body


@pytest.mark.parametrize("kind", KINDS)
def test_a_flipped_bit_anywhere_is_refused(kind: str) -> None:
    """Every bit of the body and of the signature matters: flipping any one never yields a valid
    instruction (a flip either breaks the encoding or the signature)."""
    signed = sign_instruction(ALICE, body_of(kind))
    raw = signed.to_bytes()
    body_raw = signed.body.encode()
    body_at = raw.index(body_raw)
    sig_at = raw.rindex(signed.signature)
    positions = [*range(body_at, body_at + len(body_raw)), *range(sig_at, sig_at + len(signed.signature))]
    for pos in positions:
        for bit in (0, 7) if pos % 5 else range(8):  # every byte, all bits of every fifth
            bad = bytearray(raw)
            bad[pos] ^= 1 << bit
            with pytest.raises(InstructionError):
                SignedInstruction.from_bytes(bytes(bad))


def test_signature_of_another_client_is_refused() -> None:
    body = body_of(AFFIRM)
    forged = SignedInstruction(body, BOB.sign(body.digest_to_sign()))
    with pytest.raises(InstructionError, match="signature"):
        SignedInstruction.from_bytes(forged.to_bytes())
    with pytest.raises(InstructionError, match="another client"):
        sign_instruction(BOB, body)


def test_signature_over_another_body_is_refused() -> None:
    body = body_of(AFFIRM)
    other = dataclasses.replace(body, key="k-2")
    spliced = SignedInstruction(body, ALICE.sign(other.digest_to_sign()))
    with pytest.raises(InstructionError, match="signature does not verify"):
        SignedInstruction.from_bytes(spliced.to_bytes())


def _raw_submit(legs: list[bytes], client: bytes | None = None) -> bytes:
    enc = Encoder().bytes(b"fusion-prime/settlement-instruction/v1").bytes(SUBMIT_TRADE.encode())
    enc.bytes(client or ALICE.public_key).bytes(b"k-1").uint(T0).list_of_bytes(legs)
    return enc.bytes(GROSS.encode()).uint(T0 + 60_000).bytes(b"").finish()


def _leg_raw(leg: Leg) -> bytes:
    return Encoder().bytes(leg.party).bytes(leg.asset.encode()).int(leg.quantity).finish()


def test_unsorted_legs_are_not_canonical() -> None:
    legs = dvp()
    assert InstructionBody.decode(_raw_submit([_leg_raw(leg) for leg in legs])).legs == legs
    with pytest.raises(InstructionError, match="sorted"):
        InstructionBody.decode(_raw_submit([_leg_raw(leg) for leg in reversed(legs)]))
    with pytest.raises(InstructionError, match="sorted"):
        body_of(SUBMIT_TRADE, legs=tuple(reversed(legs))).validate()


def _bad_legs(legs: list[tuple[PartyIdentity, str, int]]) -> tuple[Leg, ...]:
    return trade_legs([(p.public_key, a, q) for p, a, q in legs])


@pytest.mark.parametrize(("legs", "client", "message"), [
    (_bad_legs([(ALICE, "BTC", -5), (BOB, "BTC", 4)]), ALICE, "sum to zero"),
    (_bad_legs([(ALICE, "BTC", -5), (BOB, "BTC", 5), (ALICE, "ETH", 1), (BOB, "ETH", -2)]), ALICE, "sum to zero"),
    (_bad_legs([(BOB, "BTC", -5), (CAROL, "BTC", 5)]), ALICE, "submitter must be a party"),
    (_bad_legs([(ALICE, "BTC", -5)]), ALICE, "2 to 16 legs"),
    (_bad_legs([(ALICE, "BTC", 0), (BOB, "BTC", 0)]), ALICE, "non-zero"),
    (_bad_legs([(ALICE, "BTC", -5), (BOB, "BTC", 5), (ALICE, "ETH", 0), (BOB, "ETH", 0)]), ALICE, "non-zero"),
    (_bad_legs([(ALICE, "BTC", -(1 << 127)), (BOB, "BTC", 1 << 127)]), ALICE, "below 2\\*\\*127"),
    (_bad_legs([(ALICE, "BTC\n", -5), (BOB, "BTC\n", 5)]), ALICE, "asset"),
])
def test_non_canonical_trades_are_refused(legs: tuple[Leg, ...], client: PartyIdentity, message: str) -> None:
    body = body_of(SUBMIT_TRADE, client=client, legs=legs)
    with pytest.raises(InstructionError, match=message):
        body.validate()
    with pytest.raises(InstructionError, match=message):
        sign_instruction(client, body)


def test_one_party_trade_is_refused() -> None:
    """A party trading with itself: one leg per (party, asset) and every asset summing to zero
    already rule it out (a single party's only leg in an asset cannot sum to zero)."""
    same_asset = (Leg(ALICE.public_key, "BTC", -5), Leg(ALICE.public_key, "BTC", 5))
    with pytest.raises(InstructionError, match="one leg per"):
        body_of(SUBMIT_TRADE, legs=same_asset).validate()
    two_assets = trade_legs([(ALICE.public_key, "BTC", -5), (ALICE.public_key, "ETH", 5)])
    with pytest.raises(InstructionError, match="sum to zero"):
        body_of(SUBMIT_TRADE, legs=two_assets).validate()


def test_more_than_sixteen_legs_is_refused() -> None:
    parties = [PartyIdentity.from_secret(bytes([i + 20]) * 32) for i in range(MAX_LEGS + 1)]
    legs = [(p.public_key, "BTC", 1) for p in parties[1:]] + [(parties[0].public_key, "BTC", -MAX_LEGS)]
    assert len(legs) == MAX_LEGS + 1
    with pytest.raises(InstructionError, match="2 to 16 legs"):
        body_of(SUBMIT_TRADE, client=parties[0], legs=trade_legs(legs)).validate()
    ok = trade_legs([*legs[1:MAX_LEGS], (parties[0].public_key, "BTC", -(MAX_LEGS - 1))])
    body_of(SUBMIT_TRADE, client=parties[0], legs=ok).validate()  # 16 legs are fine


@pytest.mark.parametrize(("kind", "change", "message"), [
    (SUBMIT_TRADE, {"mode": "later"}, "mode"),
    (SUBMIT_TRADE, {"deadline_ms": 0}, "deadline"),
    (SUBMIT_TRADE, {"reference": "x" * 65}, "reference"),
    (SUBMIT_TRADE, {"reference": "line\n"}, "reference"),
    (OPEN_ACCOUNT, {"label": "evil\n"}, "label"),
    (OPEN_ACCOUNT, {"key": "k-1\n"}, "idempotency key"),
    (OPEN_ACCOUNT, {"key": ""}, "idempotency key"),
    (OPEN_ACCOUNT, {"issued_at_ms": 0}, "issued-at"),
    (AFFIRM, {"trade_id": b"\x00" * 31}, "32 bytes"),
    (DISPUTE, {"reason": ""}, "reason"),
    (WITHDRAW, {"amount": 0}, "positive"),
    (WITHDRAW, {"asset": "BTC\n"}, "asset"),
    (WITHDRAW, {"destination_chain": "bitcoin"}, "CAIP-2"),
    (WITHDRAW, {"destination": ""}, "destination"),
])
def test_bad_fields_are_refused(kind: str, change: dict[str, Any], message: str) -> None:
    with pytest.raises(InstructionError, match=message):
        body_of(kind, **change).validate()


def test_a_bad_body_cannot_be_smuggled_in_signed() -> None:
    """A client that signs a body its own library would refuse (here: a leg sum off by one) still
    does not get it past ``from_bytes``: validation happens on decoding, not only on signing."""
    body = body_of(SUBMIT_TRADE, legs=_bad_legs([(ALICE, "BTC", -5), (BOB, "BTC", 4)]))
    raw = SignedInstruction(body, ALICE.sign(body.digest_to_sign())).to_bytes()
    with pytest.raises(InstructionError, match="sum to zero"):
        SignedInstruction.from_bytes(raw)


def test_decoding_refuses_trailing_bytes_unknown_kind_and_other_domains() -> None:
    raw = body_of(CANCEL).encode()
    with pytest.raises(InstructionError):
        InstructionBody.decode(raw + b"\x00")
    bad_kind = Encoder().bytes(b"fusion-prime/settlement-instruction/v1").bytes(b"steal").finish()
    with pytest.raises(InstructionError, match="unknown instruction kind"):
        InstructionBody.decode(bad_kind)
    other = Encoder().bytes(b"fusion-prime/wallet-request/v1").bytes(CANCEL.encode()).finish()
    with pytest.raises(InstructionError, match="not a Fusion Prime settlement instruction"):
        InstructionBody.decode(other)


# the encoded fields of each kind, and a changed value for each
ENCODED_FIELDS: dict[str, dict[str, Any]] = {
    OPEN_ACCOUNT: {"client": BOB.public_key, "key": "k-2", "label": "other"},
    SUBMIT_TRADE: {"client": BOB.public_key, "key": "k-2", "legs": dvp(btc=6), "mode": NET,
                   "deadline_ms": T0 + 60_001, "reference": "desk-2"},
    AFFIRM: {"client": BOB.public_key, "key": "k-2", "trade_id": b"\x01" * 32},
    CANCEL: {"client": BOB.public_key, "key": "k-2", "trade_id": b"\x01" * 32},
    DISPUTE: {"client": BOB.public_key, "key": "k-2", "trade_id": b"\x01" * 32, "reason": "other"},
    WITHDRAW: {"client": BOB.public_key, "key": "k-2", "asset": "ETH", "amount": 4, "destination_chain": "eip155:1",
               "destination": "0xabc"},
}


@pytest.mark.parametrize("kind", KINDS)
def test_identity_ignores_only_the_issue_time(kind: str) -> None:
    body = body_of(kind)
    later = dataclasses.replace(body, issued_at_ms=T0 + 12_345)
    assert later.identity() == body.identity()
    assert later.encode() != body.encode() and later.digest_to_sign() != body.digest_to_sign()
    for name, value in ENCODED_FIELDS[kind].items():
        changed = dataclasses.replace(body, **{name: value})
        assert changed.identity() != body.identity(), name
    assert dataclasses.replace(body, kind=CANCEL if kind != CANCEL else AFFIRM).identity() != body.identity()


def test_trade_id_commits_to_every_term() -> None:
    body = body_of(SUBMIT_TRADE)
    tid = body.new_trade_id
    assert dataclasses.replace(body, issued_at_ms=T0 + 1).new_trade_id == tid  # a re-signed retry: same trade
    changes: list[dict[str, Any]] = [
        {"legs": dvp(btc=6)}, {"legs": dvp(eth=71)}, {"legs": dvp(seller=ALICE, buyer=CAROL)},
        {"legs": trade_legs([*dvp(), (CAROL.public_key, "SOL", 1), (ALICE.public_key, "SOL", -1)])},
        {"mode": NET}, {"deadline_ms": T0 + 60_001}, {"reference": "desk-2"}, {"key": "k-2"},
        {"client": BOB.public_key},
    ]
    ids = {tid}
    for change in changes:
        other = dataclasses.replace(body, **change)
        other.validate()
        ids.add(other.new_trade_id)
    assert len(ids) == len(changes) + 1
    withdrawal = body_of(WITHDRAW)
    assert withdrawal.withdrawal_id != dataclasses.replace(withdrawal, amount=4).withdrawal_id
    assert withdrawal.withdrawal_id == dataclasses.replace(withdrawal, issued_at_ms=T0 + 9).withdrawal_id


def test_trade_legs_sorts_into_canonical_order() -> None:
    legs = dvp()
    assert list(legs) == sorted(legs)
    assert trade_legs(list(reversed(legs))) == legs
    assert body_of(SUBMIT_TRADE).parties() == tuple(sorted((ALICE.public_key, BOB.public_key)))


# --------------------------------------------------------------------------- batches


def _entries() -> tuple[Entry, ...]:
    return (
        sign_instruction(ALICE, body_of(SUBMIT_TRADE)),
        sign_instruction(BOB, body_of(AFFIRM, client=BOB)),
        Credit(b"\x05" * 32, ALICE.public_key, "BTC", 10**8),
        Cutoff(3),
        WithdrawalPaid(b"\x06" * 32, "ab" * 32),
        WithdrawalReturned(b"\x07" * 32, "address unpayable: ünïcode"),
        Finalize(3),
    )


def _batch(entries: tuple[Entry, ...] | None = None, seq: int = 1) -> Batch:
    return Batch(seq, GENESIS_HASH, T0, "node-a", _entries() if entries is None else entries)


def test_every_entry_kind_round_trips() -> None:
    for entry in _entries():
        raw = encode_entry(entry)
        assert decode_entry(raw) == entry
        assert encode_entry(decode_entry(raw)) == raw


def test_signed_batch_round_trips_and_verifies() -> None:
    signed = sign_batch(NODE, _batch())
    back = decode_batch(signed.to_bytes(), {"node-a": NODE.public_key})
    assert back.batch == signed.batch
    assert back.hash == signed.hash == signed.batch.hash == back.batch.hash
    assert back.to_bytes() == signed.to_bytes()


def test_batch_signed_by_the_wrong_node_is_refused() -> None:
    signed = sign_batch(OTHER_NODE, _batch())
    with pytest.raises(InvalidInput, match="not signed by its coordinator"):
        decode_batch(signed.to_bytes(), {"node-a": NODE.public_key})
    with pytest.raises(InvalidInput, match="not signed by its coordinator"):  # a coordinator not in the roster
        decode_batch(signed.to_bytes(), {"node-b": OTHER_NODE.public_key})


def test_batch_with_a_tampered_instruction_is_refused() -> None:
    """The coordinator re-signs the batch, but it cannot re-sign the client's instruction."""
    signed_ins = sign_instruction(ALICE, body_of(WITHDRAW))
    tampered = SignedInstruction(dataclasses.replace(signed_ins.body, destination="bc1qattacker"),
                                 signed_ins.signature)
    signed = sign_batch(NODE, _batch((tampered,)))
    with pytest.raises(InvalidInput, match="invalid instruction"):
        decode_batch(signed.to_bytes(), {"node-a": NODE.public_key})


def test_batch_bytes_tampered_after_signing_are_refused() -> None:
    raw = bytearray(sign_batch(NODE, _batch()).to_bytes())
    at = bytes(raw).index(b"node-a")
    raw[at] ^= 0x01  # "oode-a": still well-formed, a different coordinator name
    with pytest.raises(InvalidInput):
        decode_batch(bytes(raw), {"node-a": NODE.public_key, "oode-a": NODE.public_key})
    raw = bytearray(sign_batch(NODE, _batch()).to_bytes())
    raw[raw.index(b"\x05" * 32)] ^= 0x01  # the credited deposit id
    with pytest.raises(InvalidInput, match="not signed"):
        decode_batch(bytes(raw), {"node-a": NODE.public_key})


def test_unknown_or_empty_entry_kind_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown batch entry kind"):
        decode_entry(bytes([99]) + Encoder().uint(1).finish())
    with pytest.raises(InvalidInput, match="empty"):
        decode_entry(b"")
    with pytest.raises(TypeError):
        encode_entry("credit")  # type: ignore[arg-type]


def _raw_batch(raw_entries: list[bytes], coordinator: bytes = b"node-a") -> bytes:
    raw = (Encoder().bytes(BATCH_TAG).uint(1).bytes(GENESIS_HASH).uint(T0).bytes(coordinator)
           .list_of_bytes(raw_entries).finish())
    return Encoder().bytes(raw).bytes(NODE.sign(hashlib.sha256(raw).digest())).finish()


@pytest.mark.parametrize("raw_entry", [
    bytes([E_WITHDRAWAL_PAID]) + Encoder().bytes(b"\x01" * 32).bytes(b"\xffab").finish(),
    bytes([E_WITHDRAWAL_RETURNED]) + Encoder().bytes(b"\x01" * 32).bytes(b"bad \xc3").finish(),
], ids=["txid-not-ascii", "reason-not-utf8"])
def test_entries_that_do_not_encode_back_are_refused(raw_entry: bytes) -> None:
    """A lenient decode would make the batch's re-encoding (the ledger's head) differ from the bytes
    the node received and stored: every entry must encode back to exactly its bytes."""
    with pytest.raises(InvalidInput, match="is not"):
        decode_batch(_raw_batch([raw_entry]), {"node-a": NODE.public_key})


def test_coordinator_id_must_be_utf8() -> None:
    with pytest.raises(InvalidInput, match="coordinator id"):
        decode_batch(_raw_batch([], coordinator=b"node-\xff"), {"node-\ufffd": NODE.public_key})


def test_credit_entry_is_checked() -> None:
    good = Credit(b"\x05" * 32, ALICE.public_key, "BTC", 1)
    raw = encode_entry(good)
    assert decode_entry(raw) == good
    for bad in (dataclasses.replace(good, asset="B\xe9C"), dataclasses.replace(good, amount=0)):
        with pytest.raises(InvalidInput):
            decode_entry(encode_entry(bad))
    with pytest.raises(InvalidInput):
        decode_entry(raw + b"\x00")


def test_batch_hash_chains_over_everything() -> None:
    b = _batch()
    assert dataclasses.replace(b, seq=2).hash != b.hash
    assert dataclasses.replace(b, prev_hash=b"\x00" * 32).hash != b.hash
    assert dataclasses.replace(b, time_ms=T0 + 1).hash != b.hash
    assert dataclasses.replace(b, entries=b.entries[:-1]).hash != b.hash
    assert dataclasses.replace(b, entries=(b.entries[1], b.entries[0], *b.entries[2:])).hash != b.hash
