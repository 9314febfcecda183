"""Deposit addresses: a BIP32 child of the group key that every node computes by itself.

The user's deposit address for *(source chain, destination chain, recipient)* is the address of
the group key's non-hardened child at a path that is a pure function of those three inputs. No
node has to trust another's database to learn whose deposit an output is: it re-derives the
address from the order's claimed destination and recipient and compares (the mint policy does
exactly that), and one key generation serves every user (hardened steps would need the private
key, which never exists in one place).

Scheme (version 1, fixed forever for a deployed key — changing any constant moves every address):

* message ``m = u8(len(src)) ‖ src ‖ u8(len(dst)) ‖ dst ‖ recipient(20)`` with ``src``/``dst`` the
  canonical CAIP-2 ids (ASCII) and ``recipient`` the 20 raw address bytes — length-prefixed so no
  two input triples share a message;
* ``h = SHA256(SHA256(TAG) ‖ SHA256(TAG) ‖ m)`` (a BIP340-style tagged hash: no other protocol's
  hash of the same bytes can collide with it), ``TAG = "FusionPrime/bridge/deposit/v1"``;
* path ``m / PURPOSE / c0 / … / c7`` with ``PURPOSE = 0x46504272`` (ASCII ``"FPBr"``, < 2^31) and
  ``c_i`` = bits ``31·i … 31·i+30`` of ``h`` read big-endian (the top 248 of its 256 bits), each
  ``< 2^31``: 248 bits make a collision between two users' paths as hard as a 124-bit search.

The address is P2WPKH (bech32, hrp by the Bitcoin network the source CAIP-2 names) for a bip122
source, the EIP-55 address for an eip155 source; the destination must be an EVM chain (the
Gateway lives there) different from the source.

**Settlement account deposit addresses** (issue 16, ``bridge/settlement/funding.py``): a deposit
that *credits a custody account* instead of minting goes to the address of *(source chain,
party)*, ``party`` being the client's 33-byte compressed secp256k1 key. Same construction, its own
constants, so no account address is ever a mint address or the custody address (their paths differ
in the first component, and a tagged hash under another tag is an unrelated function):

* ``m = u8(len(src)) ‖ src ‖ party(33)``, ``h = SHA256(SHA256(ACCOUNT_TAG) ‖ SHA256(ACCOUNT_TAG) ‖ m)``,
  ``ACCOUNT_TAG = "FusionPrime/settlement/account-deposit/v1"``;
* path ``m / ACCOUNT_PURPOSE / c0 / … / c7``, ``ACCOUNT_PURPOSE = 0x46505361`` (ASCII ``"FPSa"``),
  the ``c_i`` taken from ``h`` exactly as above.

Such an address is recorded with ``destination_chain = SETTLEMENT_DESTINATION`` (``"fusion:settlement"``,
CAIP-2 shaped so the bridge database's chain checks accept it, but no namespace the Gateway or
``orders.chain_kind`` knows: nothing can route a mint there) and ``recipient`` = the party's 66
lowercase hex digits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fusion_prime.protocol.addresses import ethereum_address, p2wpkh_address
from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.errors import InvalidInput
from fusion_prime.protocol.hd import HARDENED, derive

from .orders import OrderError, address_bytes, chain_kind, to_checksum_address

DERIVATION_TAG = b"FusionPrime/bridge/deposit/v1"
PURPOSE = 0x46504272  # "FPBr"
PATH_COMPONENTS = 8
COMPONENT_BITS = 31
ACCOUNT_TAG = b"FusionPrime/settlement/account-deposit/v1"
ACCOUNT_PURPOSE = 0x46505361  # "FPSa"
#: the destination chain recorded for a settlement account's deposit address (see the module docstring)
SETTLEMENT_DESTINATION = "fusion:settlement"

#: Bitcoin networks by the CAIP-2 reference (first 32 hex digits of the genesis block hash).
BITCOIN_NETWORKS = {
    "000000000019d6689c085ae165831e93": "mainnet",
    "000000000933ea01ad0ee984209779ba": "testnet",  # testnet3
    "00000000da84f2bafbbc53dee25a72ae": "testnet",  # testnet4
    "00000008819873e925422c1ff0f99f7c": "signet",
    "0f9188f13cb7b2c71f2a335e3a4fc328": "regtest",
}


class DerivationError(ValueError):
    """The inputs of a deposit address are not canonical or not a supported route."""


def bitcoin_network(caip2: str) -> str:
    """The network name (``mainnet``/``testnet``/``signet``/``regtest``) of a bip122 CAIP-2 id."""
    try:
        if chain_kind(caip2) != "bitcoin":
            raise DerivationError(f"{caip2!r} is not a Bitcoin chain")
    except OrderError as exc:
        raise DerivationError(str(exc)) from None
    try:
        return BITCOIN_NETWORKS[caip2.partition(":")[2]]
    except KeyError:
        raise DerivationError(f"{caip2!r}: unknown Bitcoin network (genesis prefix not recognised)") from None


def _recipient(recipient: str | bytes) -> bytes:
    try:
        raw = address_bytes(recipient, "recipient")
    except OrderError as exc:
        raise DerivationError(str(exc)) from None
    if raw == bytes(20):
        raise DerivationError("recipient is the zero address")
    return raw


def _check_route(source_chain: str, destination_chain: str) -> str:
    """The source chain's kind, after checking both ids are canonical and the route makes sense."""
    try:
        source_kind = chain_kind(source_chain)
        destination_kind = chain_kind(destination_chain)
    except OrderError as exc:
        raise DerivationError(str(exc)) from None
    if destination_kind != "evm":
        raise DerivationError(f"destination {destination_chain!r} must be an EVM chain (the Gateway's)")
    if source_chain == destination_chain:
        raise DerivationError("source and destination chain must differ")
    if source_kind == "bitcoin":
        bitcoin_network(source_chain)
    return source_kind


def tagged_hash(tag: bytes, message: bytes) -> bytes:
    """BIP340's ``SHA256(SHA256(tag) ‖ SHA256(tag) ‖ message)``."""
    t = hashlib.sha256(tag).digest()
    return hashlib.sha256(t + t + message).digest()


def path_message(source_chain: str, destination_chain: str, recipient: str | bytes) -> bytes:
    """The length-prefixed canonical inputs that the path hashes."""
    _check_route(source_chain, destination_chain)
    src, dst = source_chain.encode("ascii"), destination_chain.encode("ascii")
    return bytes([len(src)]) + src + bytes([len(dst)]) + dst + _recipient(recipient)


def _hash_path(purpose: int, digest: bytes) -> tuple[int, ...]:
    """``(purpose, c0, …, c7)`` with ``c_i`` the 31-bit groups of the top 248 bits of ``digest``."""
    h = int.from_bytes(digest, "big")
    total = PATH_COMPONENTS * COMPONENT_BITS
    top = h >> (256 - total)
    mask = (1 << COMPONENT_BITS) - 1
    components = tuple((top >> (total - COMPONENT_BITS * (i + 1))) & mask for i in range(PATH_COMPONENTS))
    path = (purpose, *components)
    assert all(0 <= c < HARDENED for c in path)
    return path


def deposit_path(source_chain: str, destination_chain: str, recipient: str | bytes) -> tuple[int, ...]:
    """``(PURPOSE, c0, …, c7)``: every component a non-hardened BIP32 index."""
    return _hash_path(PURPOSE, tagged_hash(DERIVATION_TAG, path_message(source_chain, destination_chain, recipient)))


def path_string(path: tuple[int, ...]) -> str:
    """``m/…`` form of a path (what the signer's ``DigestSigner`` takes)."""
    return "m/" + "/".join(str(i) for i in path)


@dataclass(frozen=True)
class DepositAddress:
    """Where a user deposits for one route, and what a signer needs to spend from it."""

    source_chain: str
    destination_chain: str
    recipient: str  # EIP-55 (a settlement account: the party's 66 lowercase hex digits)
    path: tuple[int, ...]
    address: str  # bech32 P2WPKH or EIP-55
    public_key: bytes  # compressed child key
    tweak: int  # child private key = group private key + tweak (mod n)

    @property
    def path_str(self) -> str:
        return path_string(self.path)


def deposit_address(group_key: Point, chain_code: bytes, source_chain: str, destination_chain: str,
                    recipient: str | bytes) -> DepositAddress:
    """The deposit address of *(source chain, destination chain, recipient)* under the group key."""
    kind = _check_route(source_chain, destination_chain)
    path = deposit_path(source_chain, destination_chain, recipient)
    child = derive(group_key, chain_code, path)
    if kind == "bitcoin":
        address = p2wpkh_address(child.public_key, bitcoin_network(source_chain))
    else:
        address = ethereum_address(child.public_key)
    return DepositAddress(source_chain=source_chain, destination_chain=destination_chain,
                          recipient=to_checksum_address(_recipient(recipient)), path=path, address=address,
                          public_key=child.public_key.to_bytes(), tweak=child.tweak)


# ------------------------------------------------------------------ settlement account addresses


def party_bytes(party: bytes | str) -> bytes:
    """The 33 bytes of a settlement party (a compressed secp256k1 key), given as bytes or as hex
    (optionally ``0x``-prefixed); anything that is not a point on the curve is refused."""
    if isinstance(party, str):
        text = party[2:] if party[:2] in ("0x", "0X") else party
        if len(text) != 66:
            raise DerivationError("a party is a 33-byte compressed public key (66 hex digits)")
        try:
            party = bytes.fromhex(text)
        except ValueError:
            raise DerivationError("a party is a 33-byte compressed public key (66 hex digits)") from None
    if not isinstance(party, bytes | bytearray):
        raise DerivationError(f"a party is bytes, not {type(party).__name__}")
    try:
        Point.from_bytes(bytes(party))
    except InvalidInput as exc:
        raise DerivationError(f"party: {exc}") from None
    return bytes(party)


def party_hex(party: bytes | str) -> str:
    """The one spelling of a party in the bridge database (``recipient`` of its deposit address):
    66 lowercase hex digits, no prefix."""
    return party_bytes(party).hex()


def _account_source(source_chain: str) -> str:
    try:
        kind = chain_kind(source_chain)
    except OrderError as exc:
        raise DerivationError(str(exc)) from None
    if kind == "bitcoin":
        bitcoin_network(source_chain)
    return kind


def account_path_message(source_chain: str, party: bytes | str) -> bytes:
    """``u8(len(src)) ‖ src ‖ party(33)``: what an account deposit path hashes."""
    _account_source(source_chain)
    src = source_chain.encode("ascii")
    return bytes([len(src)]) + src + party_bytes(party)


def account_deposit_path(party: bytes | str, source_chain: str) -> tuple[int, ...]:
    """``(ACCOUNT_PURPOSE, c0, …, c7)``: the path of ``party``'s deposit address on ``source_chain``."""
    return _hash_path(ACCOUNT_PURPOSE, tagged_hash(ACCOUNT_TAG, account_path_message(source_chain, party)))


def account_deposit(group_key: Point, chain_code: bytes, source_chain: str, party: bytes | str) -> DepositAddress:
    """The settlement account deposit address of ``party`` on ``source_chain`` (a
    :class:`DepositAddress` whose destination is :data:`SETTLEMENT_DESTINATION` and whose recipient
    is the party's hex), so the bridge's deposit path can carry it unchanged."""
    kind = _account_source(source_chain)
    path = account_deposit_path(party, source_chain)
    child = derive(group_key, chain_code, path)
    if kind == "bitcoin":
        address = p2wpkh_address(child.public_key, bitcoin_network(source_chain))
    else:
        address = ethereum_address(child.public_key)
    return DepositAddress(source_chain=source_chain, destination_chain=SETTLEMENT_DESTINATION,
                          recipient=party_hex(party), path=path, address=address,
                          public_key=child.public_key.to_bytes(), tweak=child.tweak)


def is_account_path(path: tuple[int, ...] | list[int]) -> bool:
    """Whether ``path`` has the shape of a settlement account deposit path."""
    return len(path) == 1 + PATH_COMPONENTS and path[0] == ACCOUNT_PURPOSE


def is_deposit_path(path: tuple[int, ...] | list[int]) -> bool:
    """Whether ``path`` has the shape of any deposit path the group holds coins at: a mint
    deposit's or a settlement account's (both are 'deposit' addresses in custody and reserves)."""
    return len(path) == 1 + PATH_COMPONENTS and path[0] in (PURPOSE, ACCOUNT_PURPOSE)


def same_address(kind: str, a: str, b: str) -> bool:
    """Address equality in each chain's own rules: bech32 is case-insensitive (one case per
    string), EVM addresses compare as 20 bytes whatever their checksum casing."""
    if kind == "bitcoin":
        return a.lower() == b.lower() and (a == a.lower() or a == a.upper())
    try:
        return address_bytes(a) == address_bytes(b)
    except OrderError:
        return False
