"""Deploy the destination side of the bridge: the Gateway and its wrapped assets (fpBTC, fpETH).

The Gateway's signer is the group key's Ethereum address (the threshold key at the bridge's signer
path), so nothing on the destination chain ever holds a private key that can mint. The first
configuration of an asset is a risk-raising change and waits ``ADMIN_DELAY`` in the Gateway's
queue (vetoable by the guardian); on a devnet this module moves anvil's clock past it
(``evm_increaseTime``/``evm_mine``) and executes it, in production the operators execute it after
the delay. The ``ConfigureAsset`` orders are signed through ``sign_digest`` — the wallet API of
the nodes by one of the bridge's admin clients, whom every node's authorize hook checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from web3 import Web3
from web3.logs import DISCARD

from fusion_prime.protocol.addresses import keccak256

from .chainview import artifact
from .orders import encode_signature

#: 32-byte digest -> (r, s, recovery id): the threshold network's signing API at the signer path.
DigestSigner = Callable[[bytes], tuple[int, int, int]]

DEST_EVM = 1
DEST_BITCOIN = 2


@dataclass(frozen=True)
class AssetSpec:
    """One wrapped asset and its Gateway limits (base units of the source chain)."""

    name: str
    symbol: str
    decimals: int
    source_chain: str
    destination_kind: int
    mint_cap: int
    burn_cap: int
    window: int
    ceiling: int
    large_mint_threshold: int
    min_burn: int

    def config_tuple(self) -> tuple[Any, ...]:
        return (self.source_chain, self.destination_kind, self.mint_cap, self.burn_cap, self.window, self.ceiling,
                self.large_mint_threshold, self.min_burn)


@dataclass
class Deployment:
    gateway: str
    tokens: dict[str, str] = field(default_factory=dict)  # symbol -> address


def _send(w3: Web3, sender: str, fn: Any) -> Any:
    """Send from an account the endpoint holds (an anvil dev account); wait; refuse a revert."""
    tx_hash = fn.transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if int(receipt["status"]) != 1:
        raise RuntimeError(f"transaction {bytes(tx_hash).hex()} reverted")
    return receipt


def _deploy(w3: Web3, sender: str, name: str, *args: Any) -> Any:
    art = artifact(name)
    receipt = _send(w3, sender, w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]).constructor(*args))
    return w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])


def advance_time(w3: Web3, seconds: int) -> None:
    """Devnet only: move anvil's clock forward and mine a block."""
    w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def configure_asset(w3: Web3, gateway: Any, token: str, spec: AssetSpec, sign_digest: DigestSigner, sender: str,
                    *, devnet: bool) -> None:
    """Group-sign ``ConfigureAsset`` and submit it; if it was queued and this is a devnet, wait out
    the delay on anvil's clock and execute it."""
    nonce = int(gateway.functions.adminNonce().call())
    deadline = int(w3.eth.get_block("latest")["timestamp"]) + 3600
    config = spec.config_tuple()
    struct = bytes(gateway.functions.hashConfigureAsset(token, config, nonce, deadline).call())
    digest = keccak256(b"\x19\x01" + bytes(gateway.functions.domainSeparator().call()) + struct)
    r, s, rec = sign_digest(digest)
    signature = encode_signature(r, s, rec)
    receipt = _send(w3, sender, gateway.functions.configureAsset(token, config, nonce, deadline, signature))
    if gateway.events.AssetConfigProposed().process_receipt(receipt, errors=DISCARD):
        if not devnet:
            return  # the operators execute it after ADMIN_DELAY (the guardian may veto)
        advance_time(w3, int(gateway.functions.ADMIN_DELAY().call()))
        _send(w3, sender, gateway.functions.executeConfigureAsset(token, config, nonce, deadline))


def deploy_bridge(w3: Web3, *, sender: str, signer: str, guardian: str, assets: list[AssetSpec],
                  sign_digest: DigestSigner, devnet: bool, admin_delay: int = 2 * 86400,
                  guardian_delay: int = 14 * 86400, large_mint_delay: int = 3 * 3600,
                  signer_retention: int = 86400) -> Deployment:
    """Deploy the Gateway (signer = the group key's address) and one WrappedAsset per spec, and
    configure each asset with a group-signed order."""
    gateway = _deploy(w3, sender, "Gateway", Web3.to_checksum_address(signer), Web3.to_checksum_address(guardian),
                      admin_delay, guardian_delay, large_mint_delay, signer_retention)
    out = Deployment(gateway=gateway.address)
    for spec in assets:
        token = _deploy(w3, sender, "WrappedAsset", spec.name, spec.symbol, spec.decimals, gateway.address)
        configure_asset(w3, gateway, token.address, spec, sign_digest, sender, devnet=devnet)
        out.tokens[spec.symbol] = token.address
    return out
