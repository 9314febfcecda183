"""The burn → payout state machine (bridge/withdrawals.py) without chains: every scenario is a
sequence of observations, and each test asserts what the machine does (and does not) ask for."""

from __future__ import annotations

import json

import pytest

from fusion_prime.bridge.withdrawals import (
    BROADCAST,
    CONFIRMED,
    QUEUED,
    REFUND_SIGNED,
    REFUNDED,
    REFUNDING,
    SIGNED,
    SIGNING,
    Alert,
    Broadcast,
    BuildPayout,
    Burn,
    BurnSeen,
    BurnsScanned,
    PayoutBroadcast,
    PayoutDepth,
    PayoutFailed,
    PayoutFound,
    PayoutSigned,
    ProposeRefund,
    RefundSeen,
    RefundSigned,
    RelayRefund,
    RescanBurns,
    Tick,
    WithdrawalConfig,
    WithdrawalMachine,
    payout_id_of,
)

ASSET = "0x" + "ab" * 20


def _burn(nonce: int, amount: int = 100_000, destination: bytes = b"bcrt1qgood", block: int = 10) -> Burn:
    return Burn(burn_id="0x" + nonce.to_bytes(32, "big").hex(), nonce=nonce, asset=ASSET, burner="0x" + "11" * 20,
                amount=amount, destination=destination, block=block, tx_hash="0x" + "ee" * 32)


def _classify(burn: Burn) -> str | None:
    if burn.destination.startswith(b"bad"):
        return "unpayable: not an address"
    if burn.amount < 1000:
        return "below_minimum: 999 < 1000"
    return None


def _machine(**kw) -> WithdrawalMachine:
    settings = {"payout_confirmations": 2, "max_batch": 3, "batch_wait": 30, "stuck_after": 600, "retry_after": 30,
                "rebroadcast_after": 60, **kw}
    cfg = WithdrawalConfig(asset=ASSET, source_chain="bip122:0f9188f13cb7b2c71f2a335e3a4fc328", classify=_classify,
                           **settings)
    m = WithdrawalMachine(cfg)
    m.coordinating = True
    return m


def _only(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    return found


def test_burns_wait_for_a_full_batch_or_the_batch_wait_then_one_payout_in_nonce_order():
    m = _machine()
    assert not _only(m.handle(BurnSeen(_burn(2)), 1000), BuildPayout)
    assert not _only(m.handle(BurnSeen(_burn(1)), 1001), BuildPayout)
    assert not _only(m.handle(Tick(), 1029), BuildPayout)  # 29 s: still waiting
    (build,) = _only(m.handle(Tick(), 1030), BuildPayout)
    assert build.burn_ids == (_burn(1).burn_id, _burn(2).burn_id)
    assert build.payout_id == payout_id_of(build.burn_ids) and build.replaces is None
    assert {m.get(b).state for b in build.burn_ids} == {SIGNING}
    # a third batch of max_batch goes at once
    for n in (3, 4, 5):
        m.handle(BurnSeen(_burn(n)), 1031)
    assert not _only(m.handle(Tick(), 1031), BuildPayout), "one payout built at a time"


def test_a_full_batch_goes_without_waiting():
    m = _machine()
    m.handle(BurnSeen(_burn(1)), 1000)
    m.handle(BurnSeen(_burn(2)), 1000)
    (build,) = _only(m.handle(BurnSeen(_burn(3)), 1000), BuildPayout)
    assert len(build.burn_ids) == 3


@pytest.mark.parametrize("end", [Tick(), BurnsScanned(10)])
def test_with_no_batch_wait_the_burns_of_one_scan_are_paid_in_one_payout(end) -> None:  # type: ignore[no-untyped-def]
    """batch_wait 0 paid one block's burns in two payouts: the first alone, cut as soon as it was
    seen. The burns of one scan now go together, at the scan's end or the next tick."""
    m = _machine(batch_wait=0, max_batch=10)
    for n in (1, 2, 3, 4):
        assert not _only(m.handle(BurnSeen(_burn(n)), 1000), BuildPayout), "not cut at the first burn"
    (build,) = _only(m.handle(end, 1000), BuildPayout)
    assert [m.get(b).burn.nonce for b in build.burn_ids] == [1, 2, 3, 4]


def test_signed_payout_is_broadcast_and_confirms_at_depth():
    m = _machine()
    for n in (1, 2, 3):
        acts = m.handle(BurnSeen(_burn(n)), 1000)
    (build,) = _only(acts, BuildPayout)
    (bc,) = _only(m.handle(PayoutSigned(build.payout_id, "aa" * 32, "00ff", 500, 2), 1001), Broadcast)
    assert bc.txid == "aa" * 32 and m.get(build.burn_ids[0]).state == SIGNED
    m.handle(PayoutBroadcast(build.payout_id, "aa" * 32, True), 1002)
    assert m.get(build.burn_ids[0]).state == BROADCAST
    m.handle(PayoutDepth("aa" * 32, 1), 1100)
    assert m.get(build.burn_ids[0]).state == BROADCAST  # 1 of 2
    m.handle(PayoutDepth("aa" * 32, 2), 1200)
    assert all(m.get(b).state == CONFIRMED for b in build.burn_ids)
    assert m.in_flight() == 0


def test_a_stuck_payout_is_bumped_as_a_replacement_and_either_variant_confirming_pays():
    m = _machine()
    for n in (1, 2, 3):
        acts = m.handle(BurnSeen(_burn(n)), 1000)
    (build,) = _only(acts, BuildPayout)
    m.handle(PayoutSigned(build.payout_id, "aa" * 32, "01", 500, 1), 1001)
    m.handle(PayoutBroadcast(build.payout_id, "aa" * 32, True), 1001)
    m.handle(PayoutDepth("aa" * 32, 0), 1300)
    assert not _only(m.handle(Tick(), 1600), BuildPayout)
    (bump,) = _only(m.handle(Tick(), 1601), BuildPayout)
    assert bump.replaces == "aa" * 32 and bump.burn_ids == build.burn_ids and bump.payout_id == build.payout_id
    assert not _only(m.handle(Tick(), 1602), BuildPayout), "one bump per window"
    (bc,) = _only(m.handle(PayoutSigned(build.payout_id, "bb" * 32, "02", 900, 3, replaces="aa" * 32), 1603),
                  Broadcast)
    assert bc.txid == "bb" * 32
    m.handle(PayoutBroadcast(build.payout_id, "bb" * 32, True), 1603)
    # the *original* confirms after all (a miner had it): it pays, the machine follows it
    m.handle(PayoutDepth("aa" * 32, 2), 1700)
    assert all(m.get(b).state == CONFIRMED and m.get(b).txid == "aa" * 32 for b in build.burn_ids)
    assert len(m.payouts[build.payout_id].variants) == 2, "every signed variant is archived"


def test_a_failed_signing_rebatches_but_a_signed_payout_is_never_given_up():
    m = _machine()
    for n in (1, 2, 3):
        acts = m.handle(BurnSeen(_burn(n)), 1000)
    (build,) = _only(acts, BuildPayout)
    m.handle(PayoutFailed(build.payout_id, "session aborted"), 1001)
    assert all(m.get(b).state == QUEUED for b in build.burn_ids)
    assert not _only(m.handle(Tick(), 1002), BuildPayout), "retried only after retry_after"
    (again,) = _only(m.handle(Tick(), 1031), BuildPayout)
    assert again.payout_id == build.payout_id, "the same burns make the same payout"
    m.handle(PayoutSigned(again.payout_id, "aa" * 32, "01", 500, 1), 1032)
    acts = m.handle(PayoutFailed(again.payout_id, "bump refused", replaces="aa" * 32), 1033)
    assert all(m.get(b).state == SIGNED for b in build.burn_ids)
    assert not _only(acts, BuildPayout)


def test_unpayable_and_below_minimum_burns_are_refunded_once_and_never_paid():
    m = _machine()
    acts = m.handle(BurnSeen(_burn(1, destination=b"bad address")), 1000)
    (refund,) = _only(acts, ProposeRefund)
    assert refund.reason.startswith("unpayable")
    acts = m.handle(BurnSeen(_burn(2, amount=999)), 1000)
    assert _only(acts, ProposeRefund)[0].reason.startswith("below_minimum")
    assert not _only(m.handle(Tick(), 5000), BuildPayout)
    (relay,) = _only(m.handle(RefundSigned(_burn(1).burn_id, {"sig": "00"}), 1001), RelayRefund)
    assert m.get(_burn(1).burn_id).state == REFUND_SIGNED and relay.refund == {"sig": "00"}
    m.handle(RefundSeen(_burn(1).burn_id, "0x" + "cd" * 32), 1002)
    assert m.get(_burn(1).burn_id).state == REFUNDED
    assert m.get(_burn(2).burn_id).state == REFUNDING


def test_a_nonce_gap_asks_for_one_rescan_and_the_late_burn_fills_it():
    m = _machine()
    m.handle(BurnSeen(_burn(1, block=5)), 1000)
    acts = m.handle(BurnSeen(_burn(3, block=9)), 1000)
    (rescan,) = _only(acts, RescanBurns)
    assert rescan.missing_nonce == 2 and rescan.from_block == 5
    assert not _only(m.handle(BurnSeen(_burn(4, block=9)), 1000), RescanBurns), "asked once per gap"
    m.handle(BurnSeen(_burn(2, block=7)), 1001)
    assert m.next_nonce == 5


def test_a_burn_redelivered_is_the_same_burn_and_different_facts_raise_an_alarm():
    m = _machine()
    m.handle(BurnSeen(_burn(1)), 1000)
    again = m.handle(BurnSeen(_burn(1)), 1001)
    assert not _only(again, Alert) and not [a for a in again if getattr(a, "burn_id", None) == _burn(1).burn_id]
    forged = Burn(**{**_burn(1).__dict__, "amount": 10**12})
    (alert,) = _only(m.handle(BurnSeen(forged), 1002), Alert)
    assert alert.severity == "critical" and m.get(_burn(1).burn_id).burn.amount == 100_000


def test_a_non_coordinator_builds_nothing_and_adopts_the_payout_it_finds_on_chain():
    m = _machine()
    m.coordinating = False
    for n in (1, 2, 3):
        assert not _only(m.handle(BurnSeen(_burn(n)), 1000), BuildPayout)
    ids = tuple(_burn(n).burn_id for n in (1, 2))
    m.handle(PayoutFound(payout_id_of(ids), ids, "cc" * 32, "03", 0), 1100)
    assert [m.get(b).state for b in ids] == [BROADCAST, BROADCAST]
    assert m.get(_burn(3).burn_id).state == QUEUED
    m.handle(PayoutDepth("cc" * 32, 2), 1200)
    assert [m.get(b).state for b in ids] == [CONFIRMED, CONFIRMED]


def test_a_variant_unknown_to_the_chain_is_broadcast_again():
    m = _machine()
    for n in (1, 2, 3):
        acts = m.handle(BurnSeen(_burn(n)), 1000)
    (build,) = _only(acts, BuildPayout)
    m.handle(PayoutSigned(build.payout_id, "aa" * 32, "01", 500, 1), 1001)
    m.handle(PayoutBroadcast(build.payout_id, "aa" * 32, True), 1001)
    m.handle(PayoutDepth("aa" * 32, None), 1010)  # dropped from the mempool
    assert not _only(m.handle(Tick(), 1069), Broadcast)
    (again,) = _only(m.handle(Tick(), 1070), Broadcast)
    assert again.txid == "aa" * 32 and again.raw == "01"


def test_the_machine_round_trips_through_its_snapshot_and_resumes_a_lost_build():
    m = _machine()
    for n in (1, 2, 3):
        acts = m.handle(BurnSeen(_burn(n)), 1000)
    (build,) = _only(acts, BuildPayout)
    m.handle(BurnSeen(_burn(4, destination=b"bad")), 1000)
    m.handle(RefundSigned(_burn(4).burn_id, {"sig": "01"}), 1001)
    snap = json.loads(json.dumps(m.to_dict()))
    again = WithdrawalMachine.from_dict(snap, m.config)
    again.coordinating = True
    assert again.to_dict() == m.to_dict()
    acts = again.resume_actions(1002)
    assert [a.payout_id for a in _only(acts, BuildPayout)] == [build.payout_id]
    assert [a.burn_id for a in _only(acts, RelayRefund)] == [_burn(4).burn_id]


def test_a_bad_burn_id_is_refused():
    with pytest.raises(ValueError):
        Burn(burn_id="0x1234", nonce=1, asset=ASSET, burner="0x" + "11" * 20, amount=1, destination=b"x", block=1,
             tx_hash="0x")


def test_a_large_burn_waits_its_delay_before_it_is_batched():
    m = _machine(hold_above=1_000_000, hold_seconds=3_600)
    acts = m.handle(BurnSeen(_burn(1, amount=5_000_000)), 1000)
    assert m.get(_burn(1).burn_id).state == QUEUED and not _only(acts, BuildPayout)
    m.handle(BurnSeen(_burn(2, amount=10_000)), 1000)  # small: paid without waiting for the large one
    (small,) = _only(m.handle(Tick(), 1030), BuildPayout)
    assert small.burn_ids == (_burn(2).burn_id,)
    m.handle(PayoutSigned(small.payout_id, "aa" * 32, "01", 500, 1), 1031)
    assert not _only(m.handle(Tick(), 4599), BuildPayout), "the large burn is still inside its delay"
    (later,) = _only(m.handle(Tick(), 4600), BuildPayout)
    assert later.burn_ids == (_burn(1).burn_id,)
