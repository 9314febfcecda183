"""Deposit-address derivation: fixed vectors recomputed independently, and sensitivity to every input.

The child key is recomputed here with coincurve's raw point arithmetic (BIP32 CKDpub written out),
the bech32 address with bitcoinlib's encoder and the EIP-55 address with eth-utils, so a bug shared
by ``protocol.hd``/``protocol.addresses`` and this test is unlikely.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from bitcoinlib.encoding import pubkeyhash_to_addr_bech32
from coincurve import PrivateKey, PublicKey
from Crypto.Hash import RIPEMD160
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_prime.bridge.derivation import (
    DERIVATION_TAG,
    PURPOSE,
    DerivationError,
    bitcoin_network,
    deposit_address,
    deposit_path,
    same_address,
)
from fusion_prime.protocol.curve import Point

GROUP_SECRET = int.from_bytes(hashlib.sha256(b"fusion prime test group key").digest(), "big")
GROUP_KEY = Point.from_bytes(PrivateKey(GROUP_SECRET.to_bytes(32, "big")).public_key.format())
CHAIN_CODE = hashlib.sha256(b"fusion prime test chain code").digest()

BTC_REGTEST = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
BTC_MAIN = "bip122:000000000019d6689c085ae165831e93"
BTC_TEST = "bip122:000000000933ea01ad0ee984209779ba"
ANVIL_A = "eip155:31337"
ANVIL_B = "eip155:31338"
RECIPIENT = "0x1111111111111111111111111111111111111111"


def reference_path(src: str, dst: str, recipient: bytes) -> tuple[int, ...]:
    tag = hashlib.sha256(DERIVATION_TAG).digest()
    msg = bytes([len(src)]) + src.encode() + bytes([len(dst)]) + dst.encode() + recipient
    h = hashlib.sha256(tag + tag + msg).digest()
    bits = bin(int.from_bytes(h, "big"))[2:].zfill(256)
    return (PURPOSE, *(int(bits[31 * i: 31 * i + 31], 2) for i in range(8)))


def reference_child(path: tuple[int, ...]) -> bytes:
    key, chain = PrivateKey(GROUP_SECRET.to_bytes(32, "big")).public_key, CHAIN_CODE
    for index in path:
        digest = hmac.new(chain, key.format() + index.to_bytes(4, "big"), hashlib.sha512).digest()
        key = PublicKey.combine_keys([key, PrivateKey(digest[:32]).public_key])
        chain = digest[32:]
    return key.format()


def reference_p2wpkh(pubkey: bytes, hrp: str) -> str:
    h160 = RIPEMD160.new(hashlib.sha256(pubkey).digest()).digest()
    return pubkeyhash_to_addr_bech32(h160, prefix=hrp, witver=0)


def reference_eth(pubkey: bytes) -> str:
    return to_checksum_address(keccak(PublicKey(pubkey).format(compressed=False)[1:])[-20:])


# Pinned outputs of the scheme for the key above: any change to tag, purpose, encoding or bit
# slicing moves them (and would move every deployed user's address).
PINNED_BTC = (
    "m/1179665010/1048613984/185940515/1482091553/50585611/759339833/965817553/1117924562/221685860",
    "bcrt1q43eupdtyqtjcjj854g7nkj9k9hur0ljcxcldun",
)
PINNED_ETH = (
    "m/1179665010/1560484816/1338411087/1487534358/147104999/578876228/1975853014/1451140262/1141197460",
    "0xeE463278ced2eD32cCDF2A96F9ecED5537c72142",
)


@pytest.mark.parametrize(
    ("src", "dst", "hrp"),
    [(BTC_REGTEST, ANVIL_B, "bcrt"), (BTC_MAIN, "eip155:1", "bc"), (BTC_TEST, ANVIL_A, "tb")],
)
def test_bitcoin_deposit_address_matches_independent_computation(src: str, dst: str, hrp: str) -> None:
    got = deposit_address(GROUP_KEY, CHAIN_CODE, src, dst, RECIPIENT)
    path = reference_path(src, dst, bytes.fromhex(RECIPIENT[2:]))
    assert got.path == path
    assert len(path) == 9 and path[0] == PURPOSE and all(0 <= c < 2**31 for c in path)
    child = reference_child(path)
    assert got.public_key == child
    assert got.address == reference_p2wpkh(child, hrp)
    assert got.address.startswith(hrp + "1q")


def test_ethereum_deposit_address_matches_independent_computation() -> None:
    got = deposit_address(GROUP_KEY, CHAIN_CODE, ANVIL_A, ANVIL_B, RECIPIENT)
    path = reference_path(ANVIL_A, ANVIL_B, bytes.fromhex(RECIPIENT[2:]))
    assert got.path == path
    child = reference_child(path)
    assert got.address == reference_eth(child)
    assert got.recipient == to_checksum_address(RECIPIENT)


def test_pinned_vectors() -> None:
    """The scheme is frozen: these exact paths/addresses must never change for this key."""
    btc = deposit_address(GROUP_KEY, CHAIN_CODE, BTC_REGTEST, ANVIL_B, RECIPIENT)
    eth = deposit_address(GROUP_KEY, CHAIN_CODE, ANVIL_A, ANVIL_B, RECIPIENT)
    assert (btc.path_str, btc.address) == PINNED_BTC
    assert (eth.path_str, eth.address) == PINNED_ETH


def test_tweak_gives_the_child_private_key() -> None:
    from fusion_prime.protocol.curve import Q

    got = deposit_address(GROUP_KEY, CHAIN_CODE, BTC_REGTEST, ANVIL_B, RECIPIENT)
    child_secret = (GROUP_SECRET + got.tweak) % Q
    assert PrivateKey(child_secret.to_bytes(32, "big")).public_key.format() == got.public_key


def test_any_input_change_changes_the_address() -> None:
    base = deposit_address(GROUP_KEY, CHAIN_CODE, BTC_REGTEST, ANVIL_B, RECIPIENT).public_key
    variants = [
        (BTC_REGTEST, ANVIL_A, RECIPIENT),
        (BTC_REGTEST, "eip155:1", RECIPIENT),
        (BTC_MAIN, ANVIL_B, RECIPIENT),
        (BTC_REGTEST, ANVIL_B, "0x1111111111111111111111111111111111111112"),
        (BTC_REGTEST, ANVIL_B, "0x2111111111111111111111111111111111111111"),
        (ANVIL_A, ANVIL_B, RECIPIENT),
    ]
    keys = {deposit_address(GROUP_KEY, CHAIN_CODE, *v).public_key for v in variants}
    assert base not in keys and len(keys) == len(variants)
    other_code = deposit_address(GROUP_KEY, bytes(32), BTC_REGTEST, ANVIL_B, RECIPIENT).public_key
    other_key = deposit_address(GROUP_KEY + GROUP_KEY, CHAIN_CODE, BTC_REGTEST, ANVIL_B, RECIPIENT).public_key
    assert base not in (other_code, other_key)


@settings(max_examples=50, deadline=None)
@given(a=st.binary(min_size=20, max_size=20), b=st.binary(min_size=20, max_size=20))
def test_distinct_recipients_get_distinct_paths(a: bytes, b: bytes) -> None:
    if a == bytes(20) or b == bytes(20) or a == b:
        return
    assert deposit_path(BTC_REGTEST, ANVIL_B, a) != deposit_path(BTC_REGTEST, ANVIL_B, b)


def test_recipient_spellings_are_one_recipient() -> None:
    raw = bytes.fromhex("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
    spellings = ["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0x" + raw.hex(), "0x" + raw.hex().upper(), raw]
    paths = {deposit_path(BTC_REGTEST, ANVIL_B, s) for s in spellings}
    assert len(paths) == 1


@pytest.mark.parametrize(
    ("src", "dst", "recipient"),
    [
        ("eip155:031337", ANVIL_B, RECIPIENT),  # leading zero
        ("eip155:0", ANVIL_B, RECIPIENT),
        (ANVIL_A, "eip155:31338 ", RECIPIENT),
        ("bip122:0F9188F13CB7B2C71F2A335E3A4FC328", ANVIL_B, RECIPIENT),  # upper-case hex
        ("bip122:0f9188f13cb7b2c71f2a335e3a4fc32", ANVIL_B, RECIPIENT),  # 31 digits
        ("bip122:ffffffffffffffffffffffffffffffff", ANVIL_B, RECIPIENT),  # unknown network
        ("cosmos:cosmoshub-4", ANVIL_B, RECIPIENT),  # unsupported namespace
        (BTC_REGTEST, BTC_MAIN, RECIPIENT),  # destination must be EVM
        (ANVIL_A, ANVIL_A, RECIPIENT),  # same chain
        ("31337", ANVIL_B, RECIPIENT),
        (BTC_REGTEST, ANVIL_B, "0x" + "00" * 20),  # zero recipient
        (BTC_REGTEST, ANVIL_B, "0x1111"),  # short
        (BTC_REGTEST, ANVIL_B, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"),  # bad checksum
        (BTC_REGTEST, ANVIL_B, b"\x11" * 21),
        (BTC_REGTEST, ANVIL_B, "1111111111111111111111111111111111111111"),  # no 0x
    ],
)
def test_non_canonical_inputs_are_refused(src: str, dst: str, recipient: str | bytes) -> None:
    with pytest.raises(DerivationError):
        deposit_address(GROUP_KEY, CHAIN_CODE, src, dst, recipient)


def test_bitcoin_networks() -> None:
    assert bitcoin_network(BTC_MAIN) == "mainnet"
    assert bitcoin_network(BTC_REGTEST) == "regtest"
    assert bitcoin_network(BTC_TEST) == "testnet"
    with pytest.raises(DerivationError):
        bitcoin_network(ANVIL_A)


def test_same_address() -> None:
    btc = deposit_address(GROUP_KEY, CHAIN_CODE, BTC_REGTEST, ANVIL_B, RECIPIENT).address
    assert same_address("bitcoin", btc, btc.upper())
    assert not same_address("bitcoin", btc, btc[:-1] + ("q" if btc[-1] != "q" else "p"))
    eth = deposit_address(GROUP_KEY, CHAIN_CODE, ANVIL_A, ANVIL_B, RECIPIENT).address
    assert same_address("evm", eth, eth.lower())
    assert not same_address("evm", eth, "0x" + "22" * 20)
