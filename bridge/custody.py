"""The custody address of each source chain: where payouts take change and ETH deposits are swept.

Deposits arrive at per-user deposit addresses (``bridge/derivation.py``); everything the bridge
keeps *after* it moved coins (Bitcoin change, swept ETH) goes to one custody address per source
chain, a non-hardened BIP32 child of the group key that every node computes by itself — so no
node has to trust another's word that a change output really goes back to the group.

Scheme (version 1, fixed for a deployed key): path ``m / CUSTODY_PURPOSE / generation`` with
``CUSTODY_PURPOSE = 0x46504375`` (ASCII ``"FPCu"``, < 2^31, distinct from the deposit purpose
``"FPBr"`` so no deposit path can equal a custody path) and ``generation`` 0 until the operators
move custody (a new group key after a reshare keeps generation 0 under the new key). The address
is P2WPKH on a bip122 chain and the EIP-55 address on an eip155 chain, like deposit addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusion_prime.protocol.addresses import ethereum_address, p2wpkh_address
from fusion_prime.protocol.curve import Point
from fusion_prime.protocol.hd import derive

from .derivation import DerivationError, bitcoin_network, path_string
from .orders import OrderError, chain_kind

CUSTODY_PURPOSE = 0x46504375  # "FPCu"
CUSTODY_GENERATION = 0


@dataclass(frozen=True)
class CustodyAddress:
    """The group's custody address on one source chain and what a signer needs to spend from it."""

    chain: str  # CAIP-2
    path: tuple[int, ...]
    address: str  # bech32 P2WPKH or EIP-55
    public_key: bytes  # compressed child key

    @property
    def path_str(self) -> str:
        return path_string(self.path)


def custody_path(generation: int = CUSTODY_GENERATION) -> tuple[int, ...]:
    if not 0 <= generation < 2**31:
        raise DerivationError("custody generation must be a non-hardened index")
    return (CUSTODY_PURPOSE, generation)


def custody_address(group_key: Point, chain_code: bytes, chain: str,
                    generation: int = CUSTODY_GENERATION) -> CustodyAddress:
    """The custody address of ``chain`` (a canonical CAIP-2 id) under the group key."""
    try:
        kind = chain_kind(chain)
    except OrderError as exc:
        raise DerivationError(str(exc)) from None
    path = custody_path(generation)
    child = derive(group_key, chain_code, path)
    if kind == "bitcoin":
        address = p2wpkh_address(child.public_key, bitcoin_network(chain))
    else:
        address = ethereum_address(child.public_key)
    return CustodyAddress(chain=chain, path=path, address=address, public_key=child.public_key.to_bytes())
