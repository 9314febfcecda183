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

import json
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
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


class DeployError(ValueError):
    """A deployment input or step the operator can act on, said in one line."""


@dataclass(frozen=True)
class QueuedConfiguration:
    """A group-signed ``ConfigureAsset`` waiting out ``ADMIN_DELAY`` in the Gateway's queue:
    anyone may execute it from ``eta`` on (the guardian may veto it before)."""

    symbol: str
    token: str
    config: tuple[Any, ...]
    nonce: int
    deadline: int
    eta: int


@dataclass
class Deployment:
    gateway: str
    tokens: dict[str, str] = field(default_factory=dict)  # symbol -> address
    source_chains: dict[str, str] = field(default_factory=dict)  # symbol -> CAIP-2 of the chain it wraps
    queued: list[QueuedConfiguration] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"gateway": self.gateway, "tokens": self.tokens, "source_chains": self.source_chains,
                           "queued": [{**asdict(q), "config": [str(v) if isinstance(v, int) else v for v in q.config]}
                                      for q in self.queued]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        """A deployment file as ``to_json`` wrote it; anything else is a :class:`DeployError`."""
        try:
            data = json.loads(text)
            queued = [QueuedConfiguration(
                str(q["symbol"]), Web3.to_checksum_address(q["token"]),
                (str(q["config"][0]), *(int(v) for v in q["config"][1:])), int(q["nonce"]), int(q["deadline"]),
                int(q["eta"])) for q in data.get("queued", [])]
            return cls(gateway=Web3.to_checksum_address(data["gateway"]),
                       tokens={str(k): Web3.to_checksum_address(v) for k, v in data["tokens"].items()},
                       source_chains={str(k): str(v) for k, v in data.get("source_chains", {}).items()},
                       queued=queued)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise DeployError(f"not a deployment file: {type(exc).__name__}: {exc}") from None


#: Who pays for the deployment: an account the endpoint holds (an anvil dev account, by
#: address) or a key this process signs with (a real chain).
Sender = str | LocalAccount


def _send(w3: Web3, sender: Sender, fn: Any) -> Any:
    """Send; wait; refuse a revert."""
    if isinstance(sender, str):
        tx_hash = fn.transact({"from": sender})
    else:
        tx = fn.build_transaction({"from": sender.address,
                                   "nonce": w3.eth.get_transaction_count(sender.address, "pending")})
        tx_hash = w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if int(receipt["status"]) != 1:
        raise DeployError(f"transaction 0x{bytes(tx_hash).hex()} reverted")
    return receipt


def _deploy(w3: Web3, sender: Sender, name: str, *args: Any) -> Any:
    art = artifact(name)
    receipt = _send(w3, sender, w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]).constructor(*args))
    return w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])


def advance_time(w3: Web3, seconds: int) -> None:
    """Devnet only: move anvil's clock forward and mine a block."""
    w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def configure_asset(w3: Web3, gateway: Any, token: str, spec: AssetSpec, sign_digest: DigestSigner, sender: Sender,
                    *, devnet: bool) -> QueuedConfiguration | None:
    """Group-sign ``ConfigureAsset`` and submit it; if it was queued and this is a devnet, wait out
    the delay on anvil's clock and execute it. Returns the order still queued (None: in effect)."""
    nonce = int(gateway.functions.adminNonce().call())
    deadline = int(w3.eth.get_block("latest")["timestamp"]) + 3600
    config = spec.config_tuple()
    struct = bytes(gateway.functions.hashConfigureAsset(token, config, nonce, deadline).call())
    digest = keccak256(b"\x19\x01" + bytes(gateway.functions.domainSeparator().call()) + struct)
    r, s, rec = sign_digest(digest)
    signature = encode_signature(r, s, rec)
    receipt = _send(w3, sender, gateway.functions.configureAsset(token, config, nonce, deadline, signature))
    proposed = gateway.events.AssetConfigProposed().process_receipt(receipt, errors=DISCARD)
    if not proposed:
        return None
    queued = QueuedConfiguration(spec.symbol, token, config, nonce, deadline, int(proposed[0]["args"]["eta"]))
    if not devnet:
        return queued  # the operators execute it after ADMIN_DELAY (the guardian may veto)
    advance_time(w3, int(gateway.functions.ADMIN_DELAY().call()))
    _send(w3, sender, gateway.functions.executeConfigureAsset(token, config, nonce, deadline))
    return None


def execute_queued(w3: Web3, sender: Sender, deployment: Deployment) -> tuple[list[str], list[str]]:
    """Execute every queued configuration whose delay has passed (by the chain's clock):
    (symbols executed now, symbols already in effect). Running it again after a crash half-way
    goes on where it stopped. One not due yet is refused before anything is sent, naming its
    time."""
    gateway = w3.eth.contract(address=Web3.to_checksum_address(deployment.gateway), abi=artifact("Gateway")["abi"])
    # assetConfig: (source chain hash, destination kind, mint cap, burn cap, window, ceiling,
    # large-mint threshold, min burn) - everything but the chain's name is compared
    pending = [q for q in deployment.queued
               if tuple(gateway.functions.assetConfig(q.token).call()[1:]) != tuple(q.config[1:])]
    now = int(w3.eth.get_block("latest")["timestamp"])
    early = [q for q in pending if q.eta > now]
    if early:
        raise DeployError("not executable yet: " + ", ".join(f"{q.symbol} from chain time {q.eta} "
                                                             f"({q.eta - now} s from now)" for q in early))
    for q in pending:
        _send(w3, sender, gateway.functions.executeConfigureAsset(q.token, q.config, q.nonce, q.deadline))
    return [q.symbol for q in pending], [q.symbol for q in deployment.queued if q not in pending]


_ASSET_FIELDS = {"name": str, "symbol": str, "decimals": int, "source_chain": str, "destination": str,
                 "mint_cap": int, "burn_cap": int, "window": int, "ceiling": int, "large_mint_threshold": int,
                 "min_burn": int}
_DESTINATION_KINDS = {"evm": DEST_EVM, "bitcoin": DEST_BITCOIN}


def load_assets(path: Path) -> list[AssetSpec]:
    """The wrapped assets to deploy, from a TOML file of ``[[asset]]`` tables (every field of
    :class:`AssetSpec`; ``destination`` is ``"bitcoin"`` or ``"evm"``: what a burn pays to).
    Checked whole before anything is sent."""
    try:
        tables = tomllib.loads(path.read_text()).get("asset")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"{path}: {exc}") from None
    if not isinstance(tables, list) or not tables:
        raise DeployError(f"{path}: no [[asset]] table")
    specs: list[AssetSpec] = []
    for i, table in enumerate(tables, 1):
        where = f"{path}: asset {i}"
        unknown = sorted(set(table) - set(_ASSET_FIELDS))
        missing = sorted(set(_ASSET_FIELDS) - set(table))
        if unknown or missing:
            raise DeployError(f"{where}: " + "; ".join(
                part for part in (f"unknown {', '.join(unknown)}" if unknown else "",
                                  f"missing {', '.join(missing)}" if missing else "") if part))
        for name, kind in _ASSET_FIELDS.items():
            value = table[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DeployError(f"{where}: {name} must be {'an integer' if kind is int else 'a string'}")
            if kind is int and not 0 <= value < 2**256:
                raise DeployError(f"{where}: {name} out of range")
        if table["destination"] not in _DESTINATION_KINDS:
            raise DeployError(f"{where}: destination must be one of {', '.join(_DESTINATION_KINDS)}")
        if not table["symbol"] or not table["name"] or table["decimals"] > 36 or table["window"] == 0:
            raise DeployError(f"{where}: empty name or symbol, more than 36 decimals, or a zero window")
        specs.append(AssetSpec(table["name"], table["symbol"], table["decimals"], table["source_chain"],
                               _DESTINATION_KINDS[table["destination"]], table["mint_cap"], table["burn_cap"],
                               table["window"], table["ceiling"], table["large_mint_threshold"], table["min_burn"]))
    symbols = [s.symbol for s in specs]
    if len(set(symbols)) != len(symbols):
        raise DeployError(f"{path}: a symbol appears twice")
    return specs


def deploy_bridge(w3: Web3, *, sender: Sender, signer: str, guardian: str, assets: list[AssetSpec],
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
        queued = configure_asset(w3, gateway, token.address, spec, sign_digest, sender, devnet=devnet)
        out.tokens[spec.symbol] = token.address
        out.source_chains[spec.symbol] = spec.source_chain
        if queued is not None:
            out.queued.append(queued)
    return out
