"""BTC payouts on the Bitcoin devnet: the plans of bridge/payouts.py are valid, standard and confirm.

The devnet is libbitcoinkernel (Bitcoin Core's validation engine) behind the JSON-RPC façade: every
input's script runs through the kernel's interpreter with all consensus flags before the mempool
takes the transaction, and again when the block is connected. Coins sit at P2WPKH addresses of
children of a local "group" key (child private key = group secret + BIP32 tweak, as the threshold
signers' additive derivation); the signatures are made with coincurve. Destinations are encoded by
bitcoinlib, independently of the decoder under test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

import pytest
from bitcoinlib.encoding import pubkeyhash_to_addr_base58, pubkeyhash_to_addr_bech32
from coincurve import PrivateKey

from fusion_prime.bridge.chains.bitcoin.encoding import COIN, REGTEST, parse_hash_hex, script_to_address
from fusion_prime.bridge.chains.bitcoin.node import RegtestNode
from fusion_prime.bridge.chains.bitcoin.rpcclient import BitcoinRPC, BitcoinRPCError
from fusion_prime.bridge.chains.bitcoin.rpcserver import BitcoinRPCServer
from fusion_prime.bridge.chains.bitcoin.signing import sign_p2wpkh
from fusion_prime.bridge.chains.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from fusion_prime.bridge.payouts import (
    BtcPayoutParams,
    BurnFacts,
    CustodyCoin,
    PayoutBurn,
    PayoutPlan,
    PayoutProposal,
    bump_payout,
    check_payout,
    finalize_payout,
    plan_payout,
)
from fusion_prime.protocol.curve import Point, Q
from fusion_prime.protocol.hd import derive
from fusion_prime.signer.bitcoin import p2wpkh_script

GROUP_SECRET = int.from_bytes(hashlib.sha256(b"payout devnet: group secret").digest(), "big") % Q
GROUP_KEY = Point.base_mul(GROUP_SECRET)
CHAIN_CODE = hashlib.sha256(b"payout devnet: chain code").digest()
DEPOSIT_PURPOSE, CUSTODY_PURPOSE = 0x46504272, 0x46504375
PARAMS = BtcPayoutParams(network="regtest", withdrawal_fee=20_000, max_fee_rate=Decimal(100),
                         min_input_confirmations=2)


def key_at(path: tuple[int, ...]) -> tuple[bytes, int]:
    child = derive(GROUP_KEY, CHAIN_CODE, path)
    secret = (GROUP_SECRET + child.tweak) % Q
    public_key = child.public_key.to_bytes()
    assert PrivateKey(secret.to_bytes(32, "big")).public_key.format(compressed=True) == public_key
    return public_key, secret


CUSTODY_PATH = (CUSTODY_PURPOSE, 0)
CUSTODY_SCRIPT = p2wpkh_script(key_at(CUSTODY_PATH)[0])


def local_signatures(plan: PayoutPlan) -> list[tuple[int, int]]:
    """What the threshold network returns, made here with the one local key: low-S (r, s)."""
    out = []
    for coin, sighash in zip(plan.inputs, plan.sighashes, strict=True):
        compact = PrivateKey(key_at(coin.path)[1].to_bytes(32, "big")).sign_recoverable(sighash, hasher=None)
        s = int.from_bytes(compact[32:64], "big")
        out.append((int.from_bytes(compact[:32], "big"), min(s, Q - s)))
    return out


def destinations() -> list[tuple[str, bytes, bytes]]:
    """(kind, raw Burned.destination, scriptPubKey) for each payable type, encoded by bitcoinlib."""
    h32 = hashlib.sha256(b"payout devnet: destination").digest()
    h20 = hashlib.sha256(b"payout devnet: destination 20").digest()[:20]
    taproot_key = PrivateKey(hashlib.sha256(b"payout devnet: taproot").digest()).public_key.format()[1:]
    return [
        ("p2wpkh", pubkeyhash_to_addr_bech32(h20, prefix="bcrt", witver=0).encode(), bytes([0x00, 20]) + h20),
        ("p2wsh", pubkeyhash_to_addr_bech32(h32, prefix="bcrt", witver=0).encode(), bytes([0x00, 32]) + h32),
        ("p2tr", pubkeyhash_to_addr_bech32(taproot_key, prefix="bcrt", witver=1).encode(),
         bytes([0x51, 32]) + taproot_key),
        ("p2pkh", pubkeyhash_to_addr_base58(h20, prefix=b"\x6f").encode(),
         bytes([0x76, 0xA9, 20]) + h20 + bytes([0x88, 0xAC])),
        ("p2sh", pubkeyhash_to_addr_base58(h20, prefix=b"\xc4").encode(), bytes([0xA9, 20]) + h20 + bytes([0x87])),
    ]


@dataclass
class DevnetView:
    """check_payout's view over the devnet's RPC and a dict of burns, as the integrator would build it."""

    rpc: BitcoinRPC
    known_coins: list[CustodyCoin]
    burns: dict[bytes, BurnFacts] = field(default_factory=dict)
    archive: dict[str, PayoutPlan] = field(default_factory=dict)
    estimate: Decimal = Decimal(5)

    def tip_height(self) -> int:
        return int(self.rpc.getblockcount())

    def block_hash(self, height: int) -> str | None:
        return str(self.rpc.getblockhash(height))

    def burn(self, burn_id: bytes) -> BurnFacts | None:
        return self.burns.get(burn_id)

    def custody_coins(self, view_height: int, exclude_reserved_except: str | None) -> list[CustodyCoin]:
        reserved = {(c.txid, c.vout) for txid, plan in self.archive.items() if txid != exclude_reserved_except
                    for c in plan.inputs}
        return [c for c in self.known_coins if c.height is not None and c.height <= view_height
                and (c.txid, c.vout) not in reserved and self.rpc.gettxout(c.txid, c.vout, False) is not None]

    def fee_estimate(self) -> Decimal | None:
        return self.estimate

    def change_script(self) -> bytes:
        return CUSTODY_SCRIPT

    def payout(self, txid: str) -> PayoutPlan | None:
        return self.archive.get(txid)


@pytest.fixture
def rpc(tmp_path: Path) -> Iterator[BitcoinRPC]:
    node = RegtestNode(tmp_path / "btc")
    server = BitcoinRPCServer(node, user="payouts", password="devnet").start()
    client = BitcoinRPC(server.url, "payouts", "devnet")
    try:
        yield client
    finally:
        client.close()
        server.stop()
        node.close()


def fund(rpc: BitcoinRPC, values: list[int]) -> list[CustodyCoin]:
    """Mine a coinbase to a miner key, pay ``values`` to deposit addresses of the group key in one
    transaction, confirm it twice; the coins as the bridge's view records them."""
    miner = PrivateKey((0x5EED).to_bytes(32, "big"))
    miner_script = p2wpkh_script(miner.public_key.format())
    miner_address = script_to_address(miner_script, REGTEST)
    hashes = rpc.generatetoaddress(101, miner_address)
    coinbase = rpc.getblock(hashes[0], 2)["tx"][0]
    coinbase_value = int(Decimal(str(coinbase["vout"][0]["value"])) * COIN)
    paths = [(DEPOSIT_PURPOSE, i, 1, 2, 3, 4, 5, 6, 7) for i in range(len(values))]
    keys = [key_at(p)[0] for p in paths]
    outputs = [TxOut(v, p2wpkh_script(k)) for v, k in zip(values, keys, strict=True)]
    outputs.append(TxOut(coinbase_value - sum(values) - 10_000, miner_script))
    funding = Tx(2, [TxIn(OutPoint(parse_hash_hex(coinbase["txid"]), 0), sequence=0xFFFFFFFD)], outputs)
    sign_p2wpkh(funding, 0, miner.secret, coinbase_value)
    txid = rpc.sendrawtransaction(funding.serialize().hex())
    rpc.generatetoaddress(2, miner_address)
    height = int(rpc.getblockcount()) - 1
    return [CustodyCoin(txid, i, v, p2wpkh_script(k), p, k, height)
            for i, (v, k, p) in enumerate(zip(values, keys, paths, strict=True))]


def burn_of(nonce: int, amount: int, raw: bytes) -> PayoutBurn:
    return PayoutBurn(hashlib.sha256(f"devnet burn {nonce}".encode()).digest(), nonce, amount, raw)


def facts_of(burns: list[PayoutBurn]) -> dict[bytes, BurnFacts]:
    return {b.burn_id: BurnFacts(b.nonce, b.amount, b.destination, final=True, refunded=False) for b in burns}


def output_on_chain(rpc: BitcoinRPC, txid: str, vout: int) -> tuple[int, str, int]:
    out = rpc.gettxout(txid, vout, False)
    assert out is not None, f"{txid}:{vout} is not an unspent output of the best chain"
    return int(Decimal(str(out["value"])) * COIN), out["scriptPubKey"]["hex"], int(out["confirmations"])


def test_one_payout_to_every_destination_type_confirms(rpc: BitcoinRPC) -> None:
    coins = fund(rpc, [60_000_000, 50_000_000, 30_000_000, 20_000_000])
    dests = destinations()
    amounts = [12_000_000, 3_000_000, 25_000_000, 7_000_000, 40_000_000]
    burns = [burn_of(i + 1, a, raw) for i, (a, (_, raw, _)) in enumerate(zip(amounts, dests, strict=True))]
    view = DevnetView(rpc, coins, facts_of(burns))
    view_height = view.tip_height()
    plan = plan_payout(burns, view.custody_coins(view_height, None), 5, CUSTODY_SCRIPT, PARAMS,
                       view_height=view_height)
    proposal = PayoutProposal.of(plan, view.block_hash(view_height) or "")
    verdict = check_payout(PayoutProposal.from_bytes(proposal.to_bytes()), view, PARAMS)
    assert verdict.ok, verdict.reason

    signed = finalize_payout(plan, local_signatures(plan))
    accepted = rpc.testmempoolaccept([signed.serialize().hex()])[0]
    assert accepted["allowed"] is True, accepted
    assert rpc.sendrawtransaction(signed.serialize().hex()) == plan.txid
    entry = rpc.getmempoolentry(plan.txid)
    assert Decimal(str(entry["fees"]["base"])) * COIN == plan.fee and entry["bip125-replaceable"] is True
    assert entry["vsize"] <= plan.vsize and Decimal(plan.fee) / entry["vsize"] >= 5
    rpc.generatetoaddress(1, script_to_address(CUSTODY_SCRIPT, REGTEST))

    for k, (burn, (_, _, script)) in enumerate(zip(burns, dests, strict=True)):
        assert output_on_chain(rpc, plan.txid, k) == (burn.amount - PARAMS.withdrawal_fee, script.hex(), 1)
    change_value, change_script, _ = output_on_chain(rpc, plan.txid, 5)
    assert change_script == CUSTODY_SCRIPT.hex()
    spent = sum(c.value for c in plan.inputs)
    assert change_value == spent - sum(amounts) + 5 * PARAMS.withdrawal_fee - plan.fee
    for c in plan.inputs:
        assert rpc.gettxout(c.txid, c.vout, False) is None


def test_a_stuck_payout_is_bumped_on_the_same_inputs_and_confirms_once(rpc: BitcoinRPC) -> None:
    coins = fund(rpc, [30_000_000, 20_000_000, 10_000_000])
    (_, p2tr, p2tr_script), (_, p2sh, p2sh_script) = destinations()[2], destinations()[4]
    burns = [burn_of(1, 8_000_000, p2tr), burn_of(2, 9_000_000, p2sh)]
    view = DevnetView(rpc, coins, facts_of(burns), estimate=Decimal(1))
    view_height = view.tip_height()
    stuck = plan_payout(burns, view.custody_coins(view_height, None), 1, CUSTODY_SCRIPT, PARAMS,
                        view_height=view_height)
    assert check_payout(PayoutProposal.of(stuck, str(rpc.getblockhash(view_height))), view, PARAMS).ok
    original = finalize_payout(stuck, local_signatures(stuck))
    rpc.sendrawtransaction(original.serialize().hex())
    # what the integrator records once it co-signed: the plan archived, its burns pending in it
    view.archive[stuck.txid] = stuck
    view.burns = {k: replace(v, paid_or_pending_in=stuck.txid) for k, v in view.burns.items()}

    view.estimate = Decimal(4)
    bumped = bump_payout(stuck, 4, PARAMS)
    verdict = check_payout(PayoutProposal.of(bumped, str(rpc.getblockhash(view_height))), view, PARAMS)
    assert verdict.ok, verdict.reason
    replacement = finalize_payout(bumped, local_signatures(bumped))
    assert [i.prevout for i in replacement.vin] == [i.prevout for i in original.vin]
    assert rpc.sendrawtransaction(replacement.serialize().hex()) == bumped.txid
    assert rpc.getrawmempool() == [bumped.txid]  # the original was evicted (full RBF)

    rpc.generatetoaddress(1, script_to_address(CUSTODY_SCRIPT, REGTEST))
    assert rpc.getrawmempool() == []
    assert output_on_chain(rpc, bumped.txid, 0) == (8_000_000 - PARAMS.withdrawal_fee, p2tr_script.hex(), 1)
    assert output_on_chain(rpc, bumped.txid, 1) == (9_000_000 - PARAMS.withdrawal_fee, p2sh_script.hex(), 1)
    assert rpc.getrawtransaction(bumped.txid, True)["confirmations"] == 1

    # the original can no longer confirm: its inputs are spent, in the mempool and in a block
    assert rpc.gettxout(stuck.txid, 0, True) is None
    refused = rpc.testmempoolaccept([original.serialize().hex()])[0]
    assert refused["allowed"] is False and refused["reject-reason"] == "missing-inputs"
    with pytest.raises(BitcoinRPCError) as err:
        rpc.sendrawtransaction(original.serialize().hex())
    assert err.value.code == -25
    tip = rpc.getbestblockhash()
    with pytest.raises(BitcoinRPCError) as block_err:
        rpc.generateblock(script_to_address(CUSTODY_SCRIPT, REGTEST), [original.serialize().hex()])
    assert block_err.value.code == -25 and "consensus" in block_err.value.message, block_err.value
    assert rpc.getbestblockhash() == tip
