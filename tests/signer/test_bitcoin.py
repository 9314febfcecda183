"""P2WPKH spends signed through the digest-signing interface: accepted by the devnet, verified by
libbitcoinkernel with all consensus flags (and refused after any one-byte change), fees and sizes."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from fp_local_signer import HighSSigner, LocalDigestSigner, WrongKeySigner, kernel_verify

from fusion_prime.bridge.chains.bitcoin import encoding as bridge_encoding
from fusion_prime.bridge.chains.bitcoin import signing as bridge_signing
from fusion_prime.protocol.addresses import p2wpkh_address
from fusion_prime.signer import bitcoin as btc
from fusion_prime.signer.bitcoin import (
    COIN,
    HALF_ORDER,
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_NONE,
    SIGHASH_SINGLE,
    BitcoinError,
    InsufficientFunds,
    OutPoint,
    RemoteSignatureError,
    Tx,
    TxIn,
    TxOut,
    Utxo,
    address_to_script,
    build_p2wpkh_spend,
    dust_threshold,
    estimate_p2wpkh_vsize,
    estimate_p2wpkh_weight,
    p2wpkh_script,
    sign_p2wpkh_input,
    sign_spend,
)


def utxo_at(signer: LocalDigestSigner, path: str, value: int, tag: int) -> Utxo:
    return Utxo(OutPoint(tag.to_bytes(32, "big"), tag % 3), value, p2wpkh_script(signer.public_key(path).to_bytes()),
                path)


def assert_every_byte_change_fails(raw: bytes, spent: list[tuple[int, bytes]]) -> None:
    assert kernel_verify(raw, spent)
    for pos in range(len(raw)):
        mutated = bytearray(raw)
        mutated[pos] ^= 0x01
        assert not kernel_verify(bytes(mutated), spent), f"still valid after changing byte {pos}"


def test_bip143_native_p2wpkh_vector() -> None:
    """The BIP143 'native P2WPKH' example: the second input's sighash."""
    unsigned = Tx.from_hex(
        "0100000002fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f0000000000eeffffffef51e1b804cc89d1"
        "82d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df378db99"
        "f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac11000000")
    pub = bytes.fromhex("025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee6357")
    digest = btc.p2wpkh_sighash(unsigned, 1, pub, 6 * COIN)
    assert digest.hex() == "c37af31116d1b27caf68aae9e3ac82f1477929014d5b917657d0eb49478cb670"
    with pytest.raises(IndexError):
        btc.p2wpkh_sighash(unsigned, 2, pub, 6 * COIN)
    with pytest.raises(BitcoinError, match="sighash"):
        btc.p2wpkh_sighash(unsigned, 1, pub, 6 * COIN, 0x04)
    with pytest.raises(BitcoinError, match="amount"):
        btc.p2wpkh_sighash(unsigned, 1, pub, -1)


def test_bridge_signing_is_the_signer_implementation() -> None:
    for name in ("bip143_sighash", "p2wpkh_sighash", "der_encode_signature", "finalize_p2wpkh_input",
                 "sign_p2wpkh", "sign_p2wpkh_with", "SIGHASH_ALL", "SIGHASH_NONE", "SIGHASH_SINGLE",
                 "SIGHASH_ANYONECANPAY"):
        assert getattr(bridge_signing, name) is getattr(btc, name)


def test_devnet_spend_signed_through_the_interface(btc_rpc, signer: LocalDigestSigner) -> None:
    rpc = btc_rpc
    paths = ["m/0/0", "m/0/1"]
    addrs = [p2wpkh_address(signer.public_key(p)) for p in paths]
    change_path, miner_path = "m/1/0", "m/9/9"
    change_addr = p2wpkh_address(signer.public_key(change_path))
    recipient = bridge_encoding.script_to_address(p2wpkh_script(signer.public_key("m/5").to_bytes()))
    rpc.generatetoaddress(1, addrs[0])
    rpc.generatetoaddress(1, addrs[1])
    rpc.generatetoaddress(100, p2wpkh_address(signer.public_key(miner_path)))
    utxos = [Utxo.from_rpc(u, p) for p, a in zip(paths, addrs, strict=True)
             for u in rpc.scantxoutset("start", [f"addr({a})"])["unspents"]]
    assert [u.value for u in utxos] == [50 * COIN, 50 * COIN]

    spend = build_p2wpkh_spend(utxos, [(recipient, 70 * COIN)], fee_rate=Decimal("2.5"), change=change_addr)
    assert len(spend.tx.vin) == 2 and spend.change_index is not None
    assert all(i.sequence == btc.SEQUENCE_RBF for i in spend.tx.vin)
    tx = sign_spend(spend, signer)
    assert sorted(p for _, p in signer.calls) == paths
    raw = tx.serialize()
    spent = [(u.value, u.script_pubkey) for u in spend.utxos]
    assert_every_byte_change_fails(raw, spent)

    assert rpc.testmempoolaccept([raw.hex()])[0]["allowed"] is True
    txid = rpc.sendrawtransaction(raw.hex())
    assert txid == tx.txid_hex
    entry = rpc.getmempoolentry(txid)
    assert entry["vsize"] == tx.vsize and entry["bip125-replaceable"] is True
    assert Decimal(entry["fees"]["base"]) * COIN == spend.fee
    assert spend.fee >= math.ceil(Decimal("2.5") * tx.vsize)
    assert 0 <= spend.estimated_vsize - tx.vsize <= 1

    rpc.generatetoaddress(1, p2wpkh_address(signer.public_key(miner_path)))
    assert rpc.getrawtransaction(txid, True)["confirmations"] == 1
    paid = rpc.scantxoutset("start", [f"addr({recipient})"])
    assert Decimal(paid["total_amount"]) == 70
    change = rpc.scantxoutset("start", [f"addr({change_addr})"])["unspents"]
    assert [int(Decimal(str(c["amount"])) * COIN) for c in change] == [30 * COIN - spend.fee]


@pytest.mark.parametrize("hashtype", [SIGHASH_ALL, SIGHASH_NONE, SIGHASH_SINGLE, SIGHASH_ALL | SIGHASH_ANYONECANPAY,
                                      SIGHASH_NONE | SIGHASH_ANYONECANPAY, SIGHASH_SINGLE | SIGHASH_ANYONECANPAY])
def test_every_sighash_type_against_the_kernel(signer: LocalDigestSigner, hashtype: int) -> None:
    """Each type verifies under the kernel, and exactly the parts it does not commit to can change."""
    mine, other = utxo_at(signer, "m/3/0", 2 * COIN, 7), utxo_at(signer, "m/3/1", COIN, 8)
    outs = [TxOut(COIN, p2wpkh_script(signer.public_key("m/4/0").to_bytes())),
            TxOut(COIN // 2, p2wpkh_script(signer.public_key("m/4/1").to_bytes()))]
    tx = Tx(2, [TxIn(mine.outpoint, sequence=btc.SEQUENCE_RBF)], list(outs))
    sign_p2wpkh_input(tx, 0, mine, signer, hashtype)
    assert tx.vin[0].witness[0][-1] == hashtype
    assert kernel_verify(tx.serialize(), [(mine.value, mine.script_pubkey)])
    base, anyone = hashtype & 0x1F, bool(hashtype & SIGHASH_ANYONECANPAY)

    grown = tx.copy()  # someone adds an input (signed by its own owner)
    grown.vin.append(TxIn(other.outpoint, sequence=btc.SEQUENCE_RBF))
    sign_p2wpkh_input(grown, 1, other, signer, SIGHASH_ALL)
    spent2 = [(mine.value, mine.script_pubkey), (other.value, other.script_pubkey)]
    assert kernel_verify(grown.serialize(), spent2) == anyone

    changed_out0 = tx.copy()
    changed_out0.vout[0].value -= 1
    assert kernel_verify(changed_out0.serialize(), [(mine.value, mine.script_pubkey)]) == (base == SIGHASH_NONE)
    changed_out1 = tx.copy()
    changed_out1.vout[1].value -= 1
    assert kernel_verify(changed_out1.serialize(), [(mine.value, mine.script_pubkey)]) == (base != SIGHASH_ALL)
    wrong_amount = [(mine.value + 1, mine.script_pubkey)]  # BIP143 commits to the amount in every mode
    assert not kernel_verify(tx.serialize(), wrong_amount)


def test_remote_signatures_are_checked(signer: LocalDigestSigner) -> None:
    u = utxo_at(signer, "m/0/3", COIN, 11)
    spend = build_p2wpkh_spend([u], [(p2wpkh_script(signer.public_key("m/7").to_bytes()), COIN // 2)], 1,
                               change=p2wpkh_script(signer.public_key("m/1/3").to_bytes()))
    with pytest.raises(RemoteSignatureError, match="does not verify"):
        sign_spend(spend, WrongKeySigner())
    tx = sign_spend(spend, HighSSigner())  # normalised to low-S, so standard
    _r, s, _ = btc.der_decode_signature(tx.vin[0].witness[0])
    assert s <= HALF_ORDER and kernel_verify(tx.serialize(), [(u.value, u.script_pubkey)])
    stranger = Utxo(u.outpoint, u.value, u.script_pubkey, "m/0/4")  # a path whose key does not own the coin
    with pytest.raises(BitcoinError, match="does not own"):
        sign_p2wpkh_input(spend.tx.copy(), 0, stranger, signer)
    with pytest.raises(BitcoinError, match="spends"):
        sign_p2wpkh_input(spend.tx.copy(), 0, utxo_at(signer, "m/0/3", COIN, 12), signer)


@pytest.mark.parametrize("n_inputs", [1, 2, 3, 5, 8])
def test_vsize_estimate_and_fee_rate(signer: LocalDigestSigner, n_inputs: int) -> None:
    utxos = [utxo_at(signer, f"m/2/{i}", 100_000, 100 + i) for i in range(n_inputs)]
    dest = address_to_script(p2wpkh_address(signer.public_key("m/8")))
    send = n_inputs * 100_000 - 60_000
    for rate in (1, Decimal("1.5"), 7, Decimal("33.3")):
        change = p2wpkh_address(signer.public_key("m/1/1"))
        spend = build_p2wpkh_spend(utxos, [(dest, send)], rate, change=change)
        tx = sign_spend(spend, signer)
        assert len(tx.vin) == n_inputs
        est_w = estimate_p2wpkh_weight(n_inputs, [o.script_pubkey for o in tx.vout])
        assert 0 <= est_w - tx.weight <= 2 * n_inputs
        assert spend.estimated_vsize == estimate_p2wpkh_vsize(n_inputs, [o.script_pubkey for o in tx.vout])
        assert spend.estimated_vsize >= tx.vsize
        fee = sum(u.value for u in spend.utxos) - sum(o.value for o in tx.vout)
        assert fee == spend.fee == math.ceil(Decimal(str(rate)) * spend.estimated_vsize)
        assert fee / tx.vsize >= float(rate)


def test_coin_selection_change_and_dust(signer: LocalDigestSigner) -> None:
    coins = [utxo_at(signer, "m/6/0", 5_000, 1), utxo_at(signer, "m/6/1", 40_000, 2),
             utxo_at(signer, "m/6/2", 20_000, 3)]
    dest = p2wpkh_script(signer.public_key("m/8").to_bytes())
    change = p2wpkh_script(signer.public_key("m/1/2").to_bytes())
    assert dust_threshold(dest) == 294 and dust_threshold(btc.address_to_script(
        "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", "regtest")) == 546 and dust_threshold(b"\x6a\x01\x00") == 0
    # Largest first: 40k alone pays 30k + fee, with change.
    s = build_p2wpkh_spend(coins, [(dest, 30_000)], 2, change=change, change_position=1)
    assert [u.value for u in s.utxos] == [40_000] and s.change_index == 1
    assert s.tx.vout[1].script_pubkey == change and s.tx.vout[1].value == 40_000 - 30_000 - s.fee
    # Leftover below the change dust threshold goes to the fee instead of a dust output.
    fee_no_change = 2 * estimate_p2wpkh_vsize(1, [dest])
    s = build_p2wpkh_spend(coins, [(dest, 40_000 - fee_no_change - 200)], 2, change=change)
    assert s.change_index is None and len(s.tx.vout) == 1 and s.fee == fee_no_change + 200
    # Needs two coins.
    s = build_p2wpkh_spend(coins, [(dest, 50_000)], 2, change=change, rbf=False, locktime=500)
    assert [u.value for u in s.utxos] == [40_000, 20_000]
    assert all(i.sequence == btc.SEQUENCE_NO_RBF for i in s.tx.vin) and s.tx.locktime == 500
    with pytest.raises(InsufficientFunds):
        build_p2wpkh_spend(coins, [(dest, 65_000)], 2, change=change)
    with pytest.raises(BitcoinError, match="dust"):
        build_p2wpkh_spend(coins, [(dest, 293)], 2, change=change)
    for bad_rate in (0, -1, "abc", float("nan"), 1_000_000, True):
        with pytest.raises(BitcoinError, match="fee rate"):
            build_p2wpkh_spend(coins, [(dest, 10_000)], bad_rate, change=change)
    with pytest.raises(BitcoinError, match="duplicate"):
        build_p2wpkh_spend([coins[0], coins[0]], [(dest, 1_000)], 2, change=change)
    with pytest.raises(BitcoinError, match="P2WPKH"):
        Utxo(OutPoint(b"\1" * 32, 0), 1000, b"\x51", "m/0")


def test_addresses_agree_with_the_bridge_decoder(signer: LocalDigestSigner) -> None:
    key = signer.public_key("m/0/0")
    good = [
        p2wpkh_address(key),
        bridge_encoding.script_to_address(bytes([0x00, 32]) + b"\x11" * 32),  # P2WSH
        bridge_encoding.script_to_address(bytes([0x51, 32]) + b"\x22" * 32),  # taproot (bech32m)
        bridge_encoding.script_to_address(bytes([0x76, 0xA9, 20]) + b"\x33" * 20 + bytes([0x88, 0xAC])),
        bridge_encoding.script_to_address(bytes([0xA9, 20]) + b"\x44" * 20 + bytes([0x87])),
    ]
    for addr in good:
        assert address_to_script(addr) == bridge_encoding.address_to_script(addr)
    assert address_to_script(good[0].upper()) == address_to_script(good[0])
    assert address_to_script(p2wpkh_address(key, "mainnet"), "mainnet") == p2wpkh_script(key.to_bytes())
    bad = [
        (p2wpkh_address(key, "mainnet"), "network"),
        (good[0][:-1] + ("q" if good[0][-1] != "q" else "p"), "checksum"),
        (good[0][:8] + good[0][8:].upper(), "mixes"),
        (good[3][:-1] + ("2" if good[3][-1] != "2" else "3"), "checksum"),
        ("", "non-empty"),
        ("bcrt1" + "q" * 100, "90"),
        ("not an address!", "not a valid"),
    ]
    for addr, match in bad:
        with pytest.raises(BitcoinError, match=match):
            address_to_script(addr)
    with pytest.raises(BitcoinError, match="network"):
        address_to_script(good[0], "moonnet")


def test_transaction_parsing_is_bounded() -> None:
    for junk in ["", "00", "zz", "0200000001", "02000000000100", "020000000001" + "00" * 40]:
        with pytest.raises(BitcoinError):
            Tx.from_hex(junk)
