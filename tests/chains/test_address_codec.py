"""The one Bitcoin address↔script codec (``protocol.addresses``) and the views on it.

The signer SDK (``signer.bitcoin``, networks by name, ``BitcoinError``) and the bridge's chain
code (``bridge.chains.bitcoin.encoding``, ``Network`` objects, ``DecodeError``) must accept the
same addresses, map them to the same scripts and refuse the same inputs, on every network and for
every address type - a deposit address one side accepts and the other refuses, or maps to another
script, is a lost deposit. References that do not share the codec: the BIP173/BIP350 and Base58
published vectors, and bitcoinlib's own bech32/bech32m/Base58Check encoders.
"""

from __future__ import annotations

import random

import pytest
from bitcoinlib.encoding import pubkeyhash_to_addr_base58, pubkeyhash_to_addr_bech32

from fusion_prime.bridge.chains.bitcoin import encoding as bridge
from fusion_prime.bridge.payouts import UnpayableDestination, decode_destination
from fusion_prime.protocol import addresses as codec
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.signer import bitcoin as signer_btc

#: (the signer's network name, Bitcoin Core's chain name the bridge's devnet uses)
NETWORKS = [("mainnet", "main"), ("testnet", "test"), ("signet", "signet"), ("regtest", "regtest")]


def reference_address(kind: str, program: bytes, network: codec.BitcoinNetwork) -> str:
    """bitcoinlib's encoding (its own bech32/bech32m and Base58Check)."""
    if kind == "p2pkh":
        return pubkeyhash_to_addr_base58(program, prefix=bytes([network.p2pkh_prefix]))
    if kind == "p2sh":
        return pubkeyhash_to_addr_base58(program, prefix=bytes([network.p2sh_prefix]))
    version = int(kind[1:])
    if len(program) not in (20, 32, 40):  # bitcoinlib reads other lengths as a whole witness script
        program = bytes([0x50 + version if version else 0, len(program)]) + program
    return pubkeyhash_to_addr_bech32(program, prefix=network.hrp, witver=version,
                                     checksum_xor=1 if version == 0 else 0x2BC830A3)


def random_destinations(rng: random.Random) -> list[tuple[str, bytes, bytes]]:
    """(kind, program, scriptPubKey) for every address type Core can encode."""
    out = []
    for _ in range(3):
        h20, h32 = rng.randbytes(20), rng.randbytes(32)
        out += [("p2pkh", h20, bytes([0x76, 0xA9, 20]) + h20 + bytes([0x88, 0xAC])),
                ("p2sh", h20, bytes([0xA9, 20]) + h20 + bytes([0x87])),
                ("v0", h20, bytes([0x00, 20]) + h20),  # P2WPKH
                ("v0", h32, bytes([0x00, 32]) + h32),  # P2WSH
                ("v1", h32, bytes([0x51, 32]) + h32),  # P2TR
                ("v1", bytes.fromhex("4e73"), bytes.fromhex("51024e73"))]  # P2A anchor
        version = rng.randrange(1, 17)
        # (not 18, 30 or 38 bytes: bitcoinlib would take those scripts of 20, 32, 40 bytes for a program)
        program = rng.randbytes(rng.choice([n for n in range(2, 41) if n not in (18, 30, 38)]))
        out.append((f"v{version}", program, bytes([0x50 + version, len(program)]) + program))  # future versions
    return out


@pytest.mark.parametrize(("name", "core_name"), NETWORKS)
def test_signer_and_bridge_views_agree_on_every_address_type(name: str, core_name: str) -> None:
    network, bridge_net = codec.bitcoin_network(name), bridge.NETWORKS[core_name]
    assert bridge_net == network  # the bridge's chain names reach the same parameters
    rng = random.Random(name)
    for kind, program, script in random_destinations(rng):
        address = reference_address(kind, program, network)
        assert codec.script_to_address(script, network) == address
        assert signer_btc.script_to_address(script, name) == bridge.script_to_address(script, bridge_net) == address
        assert signer_btc.address_to_script(address, name) == bridge.address_to_script(address, bridge_net) == script
        if kind[0] == "v":  # bech32 may be written in capitals, in one case only
            assert signer_btc.address_to_script(address.upper(), name) == script
            assert bridge.address_to_script(address.upper(), bridge_net) == script
        if kind in ("p2pkh", "p2sh") or script[:2] in (b"\x00\x14", b"\x00\x20") or script[:2] == b"\x51\x20":
            assert decode_destination(address.encode(), name) == script  # payouts' stricter decoder agrees
        # An address of any other network (other prefix) is refused by both, as another network's.
        for other, _ in NETWORKS:
            other_net = codec.bitcoin_network(other)
            foreign = reference_address(kind, program, other_net)
            if foreign == address:
                continue  # testnet, signet and regtest share Base58 versions; testnet and signet share "tb"
            with pytest.raises(signer_btc.BitcoinError, match="wrong network"):
                signer_btc.address_to_script(foreign, name)
            with pytest.raises(bridge.DecodeError, match="wrong network"):
                bridge.address_to_script(foreign, bridge_net)


def test_scripts_without_an_address() -> None:
    for script in [b"", b"\x6a\x04abcd", bytes([0x00, 16]) + bytes(16), bytes([0x00, 21]) + bytes(21),
                   bytes([0x51, 1, 0]), bytes([0x21]) + b"\x02" + bytes(32) + b"\xac", b"\x76\xa9\x14" + bytes(20)]:
        for name, core in NETWORKS:
            assert signer_btc.script_to_address(script, name) is None
            assert bridge.script_to_address(script, bridge.NETWORKS[core]) is None


# ------------------------------------------------------------------------------ published vectors

VALID = [
    # BIP350 "valid segwit addresses" (BIP173 v0 ones included)
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "mainnet", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "testnet",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y", "mainnet",
     "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("BC1SW50QGDZ25J", "mainnet", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "mainnet", "5210751e76e8199196d454941c45d1b3a323"),
    ("tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy", "testnet",
     "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c", "testnet",
     "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0", "mainnet",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
    # Base58Check (the Bitcoin wiki's P2PKH and BIP16's P2SH examples)
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "mainnet", "76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "mainnet", "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87"),
]

INVALID = [
    # BIP350 "invalid addresses"
    ("tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut", "testnet"),  # invalid hrp
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "mainnet"),  # v1 with bech32
    ("tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "testnet"),  # v2 with bech32
    ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "mainnet"),  # v16 with bech32
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "mainnet"),  # v0 with bech32m
    ("tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "testnet"),  # v0 with bech32m
    ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "mainnet"),  # invalid character
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "mainnet"),  # version 17
    ("bc1pw5dgrnzv", "mainnet"),  # 1-byte program
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav", "mainnet"),  # 41 bytes
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "mainnet"),  # v0 of 16 bytes
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "testnet"),  # mixed case
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "mainnet"),  # zero padding > 4 bits
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "testnet"),  # non-zero padding
    ("bc1gmk9yu", "mainnet"),  # empty data
    # Base58Check: a changed character (checksum), and nothing that is not an address
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3", "mainnet"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLz", "mainnet"),
    ("0BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "mainnet"),
    ("", "regtest"),
]


@pytest.mark.parametrize(("address", "name", "script"), VALID)
def test_published_valid_vectors(address: str, name: str, script: str) -> None:
    network = codec.bitcoin_network(name)
    assert codec.address_to_script(address, network).hex() == script
    canonical = address.lower() if address[:2].lower() in ("bc", "tb") else address  # bech32 is written lower
    assert codec.script_to_address(bytes.fromhex(script), network) == canonical
    assert signer_btc.address_to_script(address, name).hex() == script
    core = dict(NETWORKS)[name]
    assert bridge.address_to_script(address, bridge.NETWORKS[core]).hex() == script


@pytest.mark.parametrize(("address", "name"), INVALID)
def test_published_invalid_vectors_are_refused_by_every_view(address: str, name: str) -> None:
    with pytest.raises(InvalidInput):
        codec.address_to_script(address, codec.bitcoin_network(name))
    with pytest.raises(signer_btc.BitcoinError):
        signer_btc.address_to_script(address, name)
    with pytest.raises(bridge.DecodeError):
        bridge.address_to_script(address, bridge.NETWORKS[dict(NETWORKS)[name]])


def test_errors_say_what_is_wrong_in_one_line() -> None:
    regtest = codec.BITCOIN_REGTEST
    good = codec.script_to_address(bytes([0x00, 20]) + bytes(range(20)), regtest)
    assert good is not None
    cases = [
        (good[:-1] + ("q" if good[-1] != "q" else "p"), "checksum"),
        (good[:8] + good[8:].upper(), "mixes upper and lower case"),
        ("bcrt1" + "q" * 100, "longer than 90"),
        ("not an address!", "not a valid regtest address"),
        (pubkeyhash_to_addr_base58(bytes(21), prefix=b"\x6f"), "payload of 22 bytes"),
        (pubkeyhash_to_addr_base58(bytes(20), prefix=b"\x30"), "not a valid regtest address"),
        ("x" * 10_000, "not a valid regtest address"),
    ]
    for address, why in cases:
        with pytest.raises(InvalidInput, match=why) as caught:
            codec.address_to_script(address, regtest)
        message = str(caught.value)
        assert "\n" not in message and len(message) < 300  # one line, the input cut short
    with pytest.raises(InvalidInput, match="unknown Bitcoin network 'moonnet'"):
        codec.bitcoin_network("moonnet")
    with pytest.raises(signer_btc.BitcoinError, match="unknown Bitcoin network"):
        signer_btc.address_to_script(good, "moonnet")
    with pytest.raises(UnpayableDestination):  # payouts' decoder refuses the same wrong-network input
        decode_destination(codec.script_to_address(bytes([0x00, 20]) + bytes(20), codec.BITCOIN_MAINNET).encode(),
                           "regtest")
