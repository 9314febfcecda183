"""The co-signing policy for mints: every refusal, the honest order, and a property that any
single-field change of an honest order is refused. The chain view is a fake (this is a unit
test of the checks that use it)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_prime.bridge.derivation import account_deposit, deposit_address
from fusion_prime.bridge.mint_policy import (
    AssetRule,
    BitcoinOutput,
    EvmDeposit,
    PolicyConfig,
    Verdict,
    check_mint,
)
from fusion_prime.bridge.orders import EVM_NATIVE_VOUT, ChainParams, MintOrder, address_bytes
from fusion_prime.protocol.addresses import hash160
from fusion_prime.protocol.curve import Point

BTC = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
ETH_SRC = "eip155:31337"
DEST = "eip155:31338"
FPBTC = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
FPETH = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
GATEWAY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BOB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
GROUP_KEY = Point.from_bytes(PrivateKey(hashlib.sha256(b"policy group").digest()).public_key.format())
CHAIN_CODE = hashlib.sha256(b"policy chain code").digest()
NOW = 1_700_000_000
TXID = "ab" * 32
ETH_TX = "cd" * 32
BTC_PARAMS = ChainParams(min_confirmations=3, value_per_block=50_0000_0000, max_confirmations=10, dust_limit=294,
                         sweep_cost=1_000)
ETH_PARAMS = ChainParams(min_confirmations=5, value_per_block=2 * 10**18, max_confirmations=64,
                         sweep_cost=21_000 * 10**9)
CONFIG = PolicyConfig(group_key=GROUP_KEY, chain_code=CHAIN_CODE, destination_chain=DEST, gateway=GATEWAY,
                      assets=(AssetRule(FPBTC, BTC, BTC_PARAMS), AssetRule(FPETH, ETH_SRC, ETH_PARAMS)),
                      max_deadline_ahead=7200, min_deadline_ahead=60, expiry_grace=120)
AMOUNT = 1_5000_0000


def p2wpkh(recipient: str, source: str = BTC) -> bytes:
    return bytes([0, 20]) + hash160(deposit_address(GROUP_KEY, CHAIN_CODE, source, DEST, recipient).public_key)


@dataclass
class FakeView:
    outputs: dict[tuple[str, int], BitcoinOutput] = field(default_factory=dict)
    evm: dict[tuple[str, int], EvmDeposit] = field(default_factory=dict)
    minted: set[bytes] = field(default_factory=set)
    epoch: int = 2
    cosigned: dict[bytes, list[MintOrder]] = field(default_factory=dict)
    accounts: dict[bytes, str] = field(default_factory=dict)  # deposit id -> why it is an account deposit

    def bitcoin_output(self, txid: str, vout: int) -> BitcoinOutput | None:
        return self.outputs.get((txid, vout))

    def evm_deposit(self, tx_hash: str, index: int) -> EvmDeposit | None:
        return self.evm.get((tx_hash, index))

    def minted_on_destination(self, deposit_id: bytes) -> bool:
        return deposit_id in self.minted

    def gateway_signer_epoch(self) -> int:
        return self.epoch

    def cosigned_orders(self, deposit_id: bytes) -> Sequence[MintOrder]:
        return self.cosigned.get(deposit_id, [])

    def settlement_deposit(self, deposit_id: bytes, address: str | None) -> str | None:
        return self.accounts.get(deposit_id)


def honest_view() -> FakeView:
    eth_addr = deposit_address(GROUP_KEY, CHAIN_CODE, ETH_SRC, DEST, ALICE).address
    return FakeView(
        outputs={
            (TXID, 1): BitcoinOutput(p2wpkh(ALICE), None, AMOUNT, 3, "00" * 32),
            (TXID, 0): BitcoinOutput(p2wpkh(BOB), None, AMOUNT, 3, "00" * 32),  # same tx, Bob's deposit
        },
        evm={(ETH_TX, EVM_NATIVE_VOUT): EvmDeposit(eth_addr, 10**18, 5, 1)},
    )


def honest(**overrides: Any) -> MintOrder:
    fields: dict[str, Any] = {"asset": FPBTC, "source_chain": BTC, "source_txid": TXID, "vout": 1,
                              "recipient": ALICE, "amount": AMOUNT, "signer_epoch": 2, "nonce": 1,
                              "deadline": NOW + 3600}
    fields.update(overrides)
    return MintOrder(**fields)


def honest_eth(**overrides: Any) -> MintOrder:
    return honest(**{"asset": FPETH, "source_chain": ETH_SRC, "source_txid": ETH_TX, "vout": EVM_NATIVE_VOUT,
                     "amount": 10**18, **overrides})


def check(order: MintOrder, view: FakeView | None = None, digest: bytes | None = None, now: int = NOW) -> Verdict:
    d = digest if digest is not None else order.digest(GATEWAY, 31338)
    return check_mint(order, d, view if view is not None else honest_view(), CONFIG, now=now)


def test_honest_orders_are_accepted() -> None:
    assert check(honest()) == Verdict(True, "ok")
    assert check(honest_eth()) == Verdict(True, "ok")
    # the identical order again (a retried signing session) is fine
    view = honest_view()
    view.cosigned[honest().deposit_id] = [honest()]
    assert check(honest(), view).ok


def test_address_form_of_a_bitcoin_output_is_accepted() -> None:
    view = honest_view()
    address = deposit_address(GROUP_KEY, CHAIN_CODE, BTC, DEST, ALICE).address
    view.outputs[(TXID, 1)] = BitcoinOutput(None, address.upper(), AMOUNT, 3, "00" * 32)
    assert check(honest(), view).ok


def refused(verdict: Verdict, code: str) -> None:
    assert not verdict.ok and verdict.code == code, verdict
    assert verdict.reason


def test_nonexistent_output() -> None:
    refused(check(honest(source_txid="ee" * 32)), "no_such_output")
    refused(check(honest(vout=7)), "no_such_output")
    refused(check(honest_eth(source_txid="ee" * 32)), "no_such_output")
    refused(check(honest_eth(vout=0)), "no_such_output")  # not the native-transfer index


def test_failed_evm_transaction() -> None:
    view = honest_view()
    view.evm[(ETH_TX, EVM_NATIVE_VOUT)] = replace(view.evm[(ETH_TX, EVM_NATIVE_VOUT)], status=0)
    refused(check(honest_eth(), view), "failed_transaction")


def test_wrong_amount() -> None:
    refused(check(honest(amount=AMOUNT + 1)), "amount_inflated")
    refused(check(honest(amount=AMOUNT - 1)), "amount_deflated")
    refused(check(honest_eth(amount=10**18 + 1)), "amount_inflated")


def test_output_must_pay_the_address_of_exactly_this_route() -> None:
    refused(check(honest(recipient=BOB)), "wrong_address")  # Alice's output claimed for Bob
    refused(check(honest(vout=0)), "wrong_address")  # Bob's output claimed for Alice
    view = honest_view()  # paid to Alice's address for another destination chain
    other = deposit_address(GROUP_KEY, CHAIN_CODE, BTC, "eip155:1", ALICE).public_key
    view.outputs[(TXID, 1)] = BitcoinOutput(bytes([0, 20]) + hash160(other), None, AMOUNT, 3, "00" * 32)
    refused(check(honest(), view), "wrong_address")
    view = honest_view()
    view.evm[(ETH_TX, EVM_NATIVE_VOUT)] = replace(view.evm[(ETH_TX, EVM_NATIVE_VOUT)], to=BOB)
    refused(check(honest_eth(), view), "wrong_address")


def test_depth_is_value_aware() -> None:
    view = honest_view()
    view.outputs[(TXID, 1)] = replace(view.outputs[(TXID, 1)], confirmations=2)
    refused(check(honest(), view), "below_depth")
    big = 4 * 50_0000_0000
    view.outputs[(TXID, 1)] = BitcoinOutput(p2wpkh(ALICE), None, big, 3, "00" * 32)
    refused(check(honest(amount=big), view), "below_depth")
    view.outputs[(TXID, 1)] = replace(view.outputs[(TXID, 1)], confirmations=4)
    assert check(honest(amount=big), view).ok


def test_already_minted() -> None:
    view = honest_view()
    view.minted.add(honest().deposit_id)
    refused(check(honest(), view), "already_minted")


def test_already_cosigned_a_different_order() -> None:
    view = honest_view()
    view.cosigned[honest().deposit_id] = [honest(nonce=9)]
    refused(check(honest(), view), "cosigned_different_order")
    # a re-issue with the same terms is allowed once the earlier order is expired (deadline + grace)
    first = honest(nonce=9, deadline=NOW - 121)
    view.cosigned[honest().deposit_id] = [first]
    assert check(honest(), view).ok
    view.cosigned[honest().deposit_id] = [replace(first, deadline=NOW - 120)]
    refused(check(honest(), view), "cosigned_different_order")
    # ... but never with other terms, even after expiry
    view.cosigned[honest().deposit_id] = [replace(first, amount=AMOUNT - 5)]
    refused(check(honest(), view), "cosigned_different_order")


def test_dust() -> None:
    view = honest_view()
    view.outputs[(TXID, 1)] = BitcoinOutput(p2wpkh(ALICE), None, 900, 3, "00" * 32)
    refused(check(honest(amount=900), view), "dust")


def test_wrong_asset_or_source_chain() -> None:
    refused(check(honest(asset=BOB)), "unknown_asset")
    refused(check(honest(source_chain="bip122:000000000019d6689c085ae165831e93")), "wrong_source_chain")
    refused(check(honest(asset=FPETH)), "wrong_source_chain")  # fpETH from Bitcoin
    refused(check(honest_eth(asset=FPBTC)), "wrong_source_chain")


def test_wrong_signer_epoch() -> None:
    refused(check(honest(signer_epoch=1)), "wrong_signer_epoch")
    refused(check(honest(signer_epoch=3)), "wrong_signer_epoch")


def test_digest_must_be_this_nodes_own() -> None:
    o = honest()
    refused(check(o, digest=o.digest(GATEWAY, 31337)), "digest_mismatch")  # another chain
    refused(check(o, digest=o.digest("0x" + "11" * 20, 31338)), "digest_mismatch")  # another contract
    refused(check(o, digest=honest(amount=AMOUNT + 1).digest(GATEWAY, 31338)), "digest_mismatch")
    refused(check(o, digest=b""), "digest_mismatch")


def test_deadline_window() -> None:
    refused(check(honest(deadline=NOW - 1)), "deadline_passed")
    refused(check(honest(deadline=NOW + 59)), "deadline_passed")
    assert check(honest(deadline=NOW + 60)).ok
    assert check(honest(deadline=NOW + 7200)).ok
    refused(check(honest(deadline=NOW + 7201)), "deadline_too_far")


# ---- property: any single-field change of an honest order is refused

FIELDS = ("asset", "source_chain", "source_txid", "vout", "recipient", "amount", "signer_epoch", "nonce", "deadline")
FACTS = FIELDS[:7]  # changing nonce/deadline alone is a legitimate re-issue before anything was co-signed

addresses = st.binary(min_size=20, max_size=20).filter(any).map(lambda b: MintOrder.create(
    asset=b, source_chain=BTC, source_txid=TXID, vout=0, recipient=b, amount=1, signer_epoch=0, nonce=0,
    deadline=0).asset)
values: dict[str, st.SearchStrategy[Any]] = {
    "asset": st.one_of(addresses, st.just(FPETH)),
    "source_chain": st.sampled_from(["bip122:000000000019d6689c085ae165831e93", ETH_SRC, "eip155:1", DEST,
                                     "bip122:000000000933ea01ad0ee984209779ba"]),
    "source_txid": st.one_of(st.binary(min_size=32, max_size=32).map(bytes.hex), st.just(TXID[::-1])),
    "vout": st.integers(0, 2**32 - 1),
    "recipient": st.one_of(addresses, st.just(BOB)),
    "amount": st.one_of(st.integers(1, 2**256 - 1), st.integers(AMOUNT - 3, AMOUNT + 3)),
    "signer_epoch": st.integers(0, 2**32 - 1),
    "nonce": st.integers(0, 2**256 - 1),
    "deadline": st.one_of(st.integers(0, 2**256 - 1), st.integers(NOW - 100, NOW + 8000)),
}


@st.composite
def mutation(draw: Any) -> tuple[str, MintOrder]:
    name = draw(st.sampled_from(FIELDS))
    value = draw(values[name].filter(lambda v: v != getattr(honest(), name)))
    return name, replace(honest(), **{name: value})


@settings(max_examples=200, deadline=None)
@given(mutation())
def test_any_single_field_change_is_refused(case: tuple[str, MintOrder]) -> None:
    name, changed = case
    # 1. shown with the honest digest: refused (the node signs only what it computes itself)
    refused(check(changed, digest=honest().digest(GATEWAY, 31338)), "digest_mismatch")
    # 2. self-consistent, after this node co-signed the honest order: refused
    view = honest_view()
    view.cosigned[honest().deposit_id] = [honest()]
    view.cosigned[changed.deposit_id] = [*view.cosigned.get(changed.deposit_id, [])]
    assert not check(changed, view).ok
    # 3. self-consistent, nothing co-signed yet: every change of a fact is refused
    if name in FACTS:
        assert not check(changed).ok


@pytest.mark.parametrize("name", FACTS)
def test_fact_changes_are_refused_with_their_own_reason(name: str) -> None:
    expected = {"asset": "unknown_asset", "source_chain": "wrong_source_chain", "source_txid": "no_such_output",
                "vout": "no_such_output", "recipient": "wrong_address", "amount": "amount_inflated",
                "signer_epoch": "wrong_signer_epoch"}
    change: dict[str, Any] = {"asset": "0x" + "12" * 20, "source_chain": "bip122:000000000019d6689c085ae165831e93",
                              "source_txid": "ef" * 32, "vout": 5, "recipient": BOB, "amount": AMOUNT + 1,
                              "signer_epoch": 3}
    value = change[name]
    if name == "asset":
        value = MintOrder.create(asset=address_bytes(value), source_chain=BTC, source_txid=TXID, vout=0,
                                 recipient=ALICE, amount=1, signer_epoch=0, nonce=0, deadline=0).asset
    refused(check(replace(honest(), **{name: value})), expected[name])


PARTY = PrivateKey(hashlib.sha256(b"policy settlement party").digest()).public_key.format()


def test_a_settlement_account_deposit_is_never_minted() -> None:
    """Issue 16: a deposit this node knows as a settlement account's (recorded, credited, or paying
    an account address) is refused even when the order otherwise matches the chain exactly."""
    for order in (honest(), honest_eth()):
        view = honest_view()
        view.accounts[order.deposit_id] = "was credited to a settlement account"
        refused(check(order, view), "account_deposit")
    # an output that pays a party's account address cannot be passed off as anyone's mint deposit:
    # the address derived for the order's recipient is another one, with or without a record here
    view = honest_view()
    account_btc = account_deposit(GROUP_KEY, CHAIN_CODE, BTC, PARTY)
    view.outputs[(TXID, 1)] = BitcoinOutput(bytes([0, 20]) + hash160(account_btc.public_key), account_btc.address,
                                            AMOUNT, 3, "00" * 32)
    refused(check(honest(), view), "wrong_address")
    account_eth = account_deposit(GROUP_KEY, CHAIN_CODE, ETH_SRC, PARTY)
    view.evm[(ETH_TX, EVM_NATIVE_VOUT)] = EvmDeposit(account_eth.address, 10**18, 5, 1)
    refused(check(honest_eth(), view), "wrong_address")

