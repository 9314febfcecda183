"""BIP174 PSBTs: create → sign through the interface → finalize → extract, accepted by the devnet;
malformed PSBTs refused with clear errors (and never with anything but PSBTError)."""

from __future__ import annotations

import base64
import random
import struct

import pytest
from fp_local_signer import LocalDigestSigner, kernel_verify

from fusion_prime.protocol.addresses import p2wpkh_address
from fusion_prime.signer.bitcoin import (
    COIN,
    SIGHASH_ALL,
    SIGHASH_ANYONECANPAY,
    SIGHASH_SINGLE,
    OutPoint,
    Tx,
    TxIn,
    TxOut,
    Utxo,
    build_p2wpkh_spend,
    der_encode_signature,
    p2wpkh_script,
    ser_bytes,
    sign_spend,
)
from fusion_prime.signer.psbt import (
    KeyOrigin,
    Psbt,
    PSBTError,
    extract_transaction,
    finalize_psbt,
    root_fingerprint,
    sign_psbt,
)

PATHS = ["m/0/10", "m/0/11"]


def make_spend(signer: LocalDigestSigner, values=(60_000, 50_000), send=90_000):
    utxos = [Utxo(OutPoint(bytes([i + 1]) * 32, i), v, p2wpkh_script(signer.public_key(p).to_bytes()), p)
             for i, (p, v) in enumerate(zip(PATHS, values, strict=True))]
    dest = p2wpkh_address(signer.public_key("m/8/0"))
    return build_p2wpkh_spend(utxos, [(dest, send)], 3, change=p2wpkh_address(signer.public_key("m/1/9")),
                              change_position=1)


def spent_of(spend) -> list[tuple[int, bytes]]:
    return [(u.value, u.script_pubkey) for u in spend.utxos]


def test_round_trip_create_sign_finalize_extract(signer: LocalDigestSigner) -> None:
    spend = make_spend(signer)
    psbt = Psbt.from_spend(spend, signer)
    fp = root_fingerprint(signer)
    assert all(next(iter(i.bip32_derivation.values())).fingerprint == fp for i in psbt.inputs)
    text = psbt.to_base64()
    assert text.startswith("cHNidP8") and Psbt.from_base64(text).to_base64() == text

    received = Psbt.from_base64(text)
    assert received.fee() == spend.fee
    assert sign_psbt(received, signer) == [0, 1]  # matched through the BIP32 origin records
    assert sorted(p for _, p in signer.calls) == PATHS
    signed_text = received.to_base64()
    again = Psbt.from_base64(signed_text)
    assert again.to_base64() == signed_text and all(len(i.partial_sigs) == 1 for i in again.inputs)

    finalize_psbt(again)
    final_text = again.to_base64()
    final = Psbt.from_base64(final_text)
    assert final.to_base64() == final_text
    assert all(i.is_final and not i.partial_sigs and not i.bip32_derivation for i in final.inputs)
    tx = extract_transaction(final)
    assert kernel_verify(tx.serialize(), spent_of(spend))
    # Same deterministic (RFC6979) signatures as signing the spend directly.
    assert tx.serialize() == sign_spend(spend, LocalDigestSigner()).serialize()


def test_psbt_spend_accepted_by_the_devnet(btc_rpc, signer: LocalDigestSigner) -> None:
    addr = p2wpkh_address(signer.public_key(PATHS[0]))
    btc_rpc.generatetoaddress(1, addr)
    btc_rpc.generatetoaddress(100, p2wpkh_address(signer.public_key("m/9")))
    utxos = [Utxo.from_rpc(u, PATHS[0]) for u in btc_rpc.scantxoutset("start", [f"addr({addr})"])["unspents"]]
    spend = build_p2wpkh_spend(utxos, [(p2wpkh_address(signer.public_key("m/8/1")), 10 * COIN)], 1,
                               change=p2wpkh_address(signer.public_key("m/1/1")))
    psbt = Psbt.from_base64(Psbt.from_spend(spend, signer).to_base64())
    assert sign_psbt(psbt, signer, {0: PATHS[0]}) == [0]
    psbt = Psbt.from_base64(psbt.to_base64())
    finalize_psbt(psbt)
    tx = extract_transaction(Psbt.from_base64(psbt.to_base64()))
    txid = btc_rpc.sendrawtransaction(tx.serialize().hex())
    btc_rpc.generatetoaddress(1, p2wpkh_address(signer.public_key("m/9")))
    assert btc_rpc.getrawtransaction(txid, True)["confirmations"] == 1


def test_partial_signing_and_finalize_checks(signer: LocalDigestSigner) -> None:
    spend = make_spend(signer)
    psbt = Psbt.from_spend(spend)  # no BIP32 records: nothing is matched without explicit paths
    assert sign_psbt(psbt, signer) == []
    assert sign_psbt(psbt, signer, {0: PATHS[0]}) == [0]
    with pytest.raises(PSBTError, match="input 1: no partial signature"):
        finalize_psbt(psbt)
    with pytest.raises(PSBTError, match="input 0 is not finalized"):
        extract_transaction(psbt)
    with pytest.raises(PSBTError, match="does not own"):
        sign_psbt(psbt, signer, {1: PATHS[0]})
    with pytest.raises(PSBTError, match="out of range"):
        sign_psbt(psbt, signer, {5: PATHS[0]})
    # A forged partial signature (right key, wrong digest) is refused at finalization.
    pub = signer.public_key(PATHS[1]).to_bytes()
    other = signer.sign_digest(b"\x42" * 32, PATHS[1])
    psbt.inputs[1].partial_sigs[pub] = der_encode_signature(other.r, other.s) + bytes([SIGHASH_ALL])
    with pytest.raises(PSBTError, match="input 1: partial signature does not verify"):
        finalize_psbt(psbt)
    # A lying witness_utxo amount yields a signature the chain rejects (BIP143 commits to it).
    liar = Psbt.from_spend(spend)
    liar.inputs[0].witness_utxo = TxOut(spend.utxos[0].value + 1000, spend.utxos[0].script_pubkey)
    sign_psbt(liar, signer, {0: PATHS[0], 1: PATHS[1]})
    finalize_psbt(liar)
    assert not kernel_verify(extract_transaction(liar).serialize(), spent_of(spend))


def test_sighash_policy(signer: LocalDigestSigner) -> None:
    spend = make_spend(signer)
    psbt = Psbt.from_spend(spend, signer)
    psbt.inputs[0].sighash_type = SIGHASH_SINGLE | SIGHASH_ANYONECANPAY
    with pytest.raises(PSBTError, match="input 0: sighash type 0x83 is not allowed"):
        sign_psbt(psbt, signer)
    assert signer.calls == []
    allowed = frozenset({SIGHASH_ALL, SIGHASH_SINGLE | SIGHASH_ANYONECANPAY})
    assert sign_psbt(psbt, signer, allowed_sighash=allowed) == [0, 1]
    finalize_psbt(psbt)
    tx = extract_transaction(psbt)
    assert tx.vin[0].witness[0][-1] == 0x83
    assert kernel_verify(tx.serialize(), spent_of(spend))


def test_non_witness_utxo(signer: LocalDigestSigner) -> None:
    script = p2wpkh_script(signer.public_key(PATHS[0]).to_bytes())
    prev = Tx(2, [TxIn(OutPoint(b"\x09" * 32, 0))], [TxOut(1000, b"\x51"), TxOut(80_000, script)])
    utxo = Utxo(OutPoint(prev.txid, 1), 80_000, script, PATHS[0])
    spend = build_p2wpkh_spend([utxo], [(p2wpkh_address(signer.public_key("m/8")), 30_000)], 2,
                               change=p2wpkh_address(signer.public_key("m/1/0")))
    psbt = Psbt.from_spend(spend, signer)
    with pytest.raises(PSBTError, match="non-witness utxo"):
        sign_psbt(psbt, signer, require_non_witness_utxo=True)
    psbt.inputs[0].non_witness_utxo = prev
    psbt.inputs[0].witness_utxo = None
    psbt = Psbt.from_base64(psbt.to_base64())
    assert sign_psbt(psbt, signer, require_non_witness_utxo=True) == [0]
    finalize_psbt(psbt)
    assert kernel_verify(extract_transaction(psbt).serialize(), [(80_000, script)])
    # The full previous transaction must be the one the outpoint names.
    tampered = Psbt.from_spend(spend, signer)
    bad_prev = prev.copy()
    bad_prev.locktime = 1
    tampered.inputs[0].non_witness_utxo = bad_prev
    with pytest.raises(PSBTError, match="does not match the outpoint"):
        Psbt.parse(tampered.serialize())
    disagree = Psbt.from_spend(spend, signer)
    disagree.inputs[0].non_witness_utxo = prev
    disagree.inputs[0].witness_utxo = TxOut(79_999, script)
    with pytest.raises(PSBTError, match="disagrees"):
        Psbt.parse(disagree.serialize())


# ----------------------------------------------------------------------------- malformed input


def rec(key: bytes, value: bytes) -> bytes:
    return ser_bytes(key) + ser_bytes(value)


def _unsigned() -> Tx:
    return Tx(2, [TxIn(OutPoint(b"\x01" * 32, 0), sequence=0xFFFFFFFD)], [TxOut(1000, bytes([0, 20]) + b"\x02" * 20)])


def _psbt(globals_: bytes | None = None, inp: bytes = b"", out: bytes = b"", tail: bytes = b"") -> bytes:
    g = rec(b"\x00", _unsigned().serialize()) if globals_ is None else globals_
    return b"psbt\xff" + g + b"\x00" + inp + b"\x00" + out + b"\x00" + tail


PUB = LocalDigestSigner().public_key("m/0").to_bytes()
WUTXO = rec(b"\x01", TxOut(5000, bytes([0, 20]) + b"\x03" * 20).serialize())

MALFORMED = [
    (b"", "magic"),
    (bytes.fromhex("0200000001") + b"\x00" * 40, "magic"),
    (b"psbt\xff", "truncated"),
    (_psbt()[:-1], "truncated"),
    (_psbt(tail=b"\x00"), "trailing bytes"),
    (_psbt(globals_=b""), "no unsigned transaction"),
    (_psbt(globals_=rec(b"\x00", _unsigned().serialize()) * 2), "duplicate key"),
    (_psbt(globals_=rec(b"\x00\x01", _unsigned().serialize())), "exactly one byte"),
    (_psbt(globals_=rec(b"\x00", _unsigned().serialize() + b"\x00")), "trailing bytes after transaction"),
    (_psbt(globals_=rec(b"\x00", _unsigned().serialize()) + rec(b"\xfb", struct.pack("<I", 2))), "version 2"),
    (_psbt(globals_=rec(b"\x00", _unsigned().serialize()) + rec(b"\xfb", b"\x00")), "4 bytes"),
    (_psbt(globals_=rec(b"\x00", _unsigned().serialize()) + rec(b"\x01" + b"\x00" * 10, b"\x00" * 4)), "78-byte"),
    (_psbt(globals_=rec(b"\x00", Tx(2, [TxIn(OutPoint(b"\x01" * 32, 0), b"\x51")], []).serialize())),
     "non-empty scriptSig"),
    (_psbt(globals_=rec(b"\x00", Tx(2, [TxIn(OutPoint(b"\x01" * 32, 0))] * 2, []).serialize())), "twice"),
    (_psbt(inp=rec(b"\x01", TxOut(5000, b"\x00").serialize() + b"\x00")), "witness utxo: trailing"),
    (_psbt(inp=rec(b"\x01", struct.pack("<q", -1) + b"\x00")), "out of range"),
    (_psbt(inp=rec(b"\x01", b"\x00" * 3)), "truncated"),
    (_psbt(inp=WUTXO + rec(b"\x02" + b"\x02" + b"\x00" * 32, b"\x30\x00\x01")), "public key is not on the curve"),
    (_psbt(inp=WUTXO + rec(b"\x02" + PUB[:20], b"\x30\x00\x01")), "invalid public key encoding"),
    (_psbt(inp=WUTXO + rec(b"\x02" + PUB, b"\x30\x06\x02\x01\x01\x02\x01\x01")), "strict DER"),
    (_psbt(inp=WUTXO + rec(b"\x03", b"\x01")), "sighash type must be 4 bytes"),
    (_psbt(inp=WUTXO + rec(b"\x06" + PUB, b"\x00" * 6)), "key origin"),
    (_psbt(inp=WUTXO + rec(b"\x08", b"\x02\x01")), "truncated"),
    (_psbt(inp=rec(b"\x00", _unsigned().serialize())), "does not match the outpoint"),
    (_psbt(out=rec(b"\x02" + PUB, b"\x00")), "key origin"),
    (_psbt(out=rec(b"\x00\x05", b"")), "exactly one byte"),
    (b"psbt\xff" + rec(b"\x00", _unsigned().serialize()) + b"\x00", "truncated"),  # input map missing
    (b"psbt\xff\xff" + b"\x00" * 8, "compact size"),
]


@pytest.mark.parametrize(("data", "match"), MALFORMED)
def test_malformed_psbts_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(PSBTError, match=match):
        Psbt.parse(data)


def test_base64_and_unknown_records() -> None:
    for bad in ["", "not base64!", "cHNidP8=garbage", 5]:
        with pytest.raises(PSBTError):
            Psbt.from_base64(bad)  # type: ignore[arg-type]
    # Unknown and proprietary records survive a round trip.
    data = _psbt(globals_=rec(b"\x00", _unsigned().serialize()) + rec(b"\xfc\x05hello\x01", b"prop"),
                 inp=WUTXO + rec(b"\x55\x01", b"x"), out=rec(b"\x77", b"y"))
    psbt = Psbt.parse(data)
    assert psbt.unknown == {b"\xfc\x05hello\x01": b"prop"} and psbt.inputs[0].unknown == {b"\x55\x01": b"x"}
    assert Psbt.parse(psbt.serialize()).serialize() == psbt.serialize() == data
    origin = KeyOrigin(b"\xaa\xbb\xcc\xdd", (1, 2, 0x80000000))
    assert origin.path_string() is None and KeyOrigin(b"\0" * 4, (1, 2)).path_string() == "m/1/2"


def test_fuzzed_psbts_raise_only_psbt_errors(signer: LocalDigestSigner) -> None:
    psbt = Psbt.from_spend(make_spend(signer), signer)
    sign_psbt(psbt, signer)
    data = psbt.serialize()
    for n in range(len(data)):
        with pytest.raises(PSBTError):
            Psbt.parse(data[:n])
    rng = random.Random(174)
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        try:
            Psbt.parse(bytes(mutated))
        except PSBTError:
            pass
    assert base64.b64decode(psbt.to_base64()) == data
