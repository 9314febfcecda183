"""The bridge section of a node operator's configuration (its own TOML file, ``--bridge``).

Every endpoint here is *this operator's own*: its Bitcoin node, its EVM nodes, its database. A
node never learns a chain fact from another operator; that is what makes its co-signature worth
something (``bridge/mint_policy.py``).

Example::

    [bridge]
    key_id = "…hex…"                  # the group key the Gateway trusts; empty: not set up yet
    database = "sqlite:////var/lib/fp/bridge.sqlite3"
    destination_chain = "eip155:31338"
    destination_rpc = "http://127.0.0.1:8546"
    gateway = "0x…"                   # empty: not deployed yet
    relayer_key_file = "relayer.key"  # hex private key of the account that pays for relaying
    admin_clients = ["…wallet client public key hex…"]   # may sign at the bridge key's paths
    coordinator_takeover_seconds = 10.0

    [[bridge.chains]]
    caip2 = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
    rpc = "http://127.0.0.1:18443"
    rpc_user = "fusion"
    rpc_password = "…"
    symbol = "BTC"                    # what is deposited
    asset = "0x…"                     # the wrapped token minted for it (fpBTC)
    min_confirmations = 3
    value_per_block = 5000000000
    max_confirmations = 6
    dust_limit = 294
    sweep_cost = 200
    withdrawal_fee = 20000            # base units kept from every burn (pays the fee); 0: no payouts
    max_fee_rate = 50                 # Bitcoin: sat/vB; EVM: maxFeePerGas in wei
    fallback_fee_rate = 2             # when the node's own estimator has nothing (regtest)
    max_batch = 100                   # burns per Bitcoin payout
    batch_wait_seconds = 30           # the oldest payable burn waits at most this for a batch
    stuck_after_seconds = 600         # an unconfirmed payout is bumped after this
    payout_confirmations = 1          # a payout is "confirmed" at this depth
    solvency_tolerance = 0            # custody may fall this far below liabilities (fees, sweeps)
    large_withdrawal = 1000000000     # a burn above this waits large_withdrawal_delay_seconds (default 3 h)

    [[bridge.peers]]                  # the other operators' Bridge APIs: a deposit address registered
    node_id = "node2"                 # here is forwarded to them (each derives it again itself)
    address = "node2.example:7443"
    tls_cert = "peers/node2.crt"      # pinned; the TLS server name is node_id

    [bridge.explorer]                 # the read-only explorer page (bridge/explorer.py); on by default
    listen = "127.0.0.1:7180"         # default 127.0.0.1:0 (a free port, logged and in --explorer-port-file)
    enabled = true
    allowed_hosts = []                # Host names served besides localhost and IP literals (DNS rebinding)
    sample_seconds = 60               # a reserve sample at least this often while nothing moves
    max_samples = 5000                # reserve samples kept per asset (older ones are deleted)

A section without ``key_id``, ``gateway`` or the assets is *incomplete*: the daemon then runs the
signer and wallet API and waits for the operator to finish it (the key is created through the
wallet API and the Gateway deployed with it, so neither exists when the node first starts).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion_prime.protocol.hd import parse_path

from .orders import ChainParams, OrderError, chain_kind, check_caip2, checksum_address, evm_chain_id


class BridgeConfigError(ValueError):
    """The bridge section is malformed (an incomplete one is not an error: see :attr:`complete`)."""


@dataclass(frozen=True)
class WithdrawalSettings:
    """The payout rules of one source chain; every operator must configure the same values (a
    participant rebuilds the coordinator's payout with its own and co-signs only an identical one)."""

    withdrawal_fee: int
    max_fee_rate: int
    fallback_fee_rate: int
    fee_band: float = 2.0
    min_input_confirmations: int = 1
    payout_confirmations: int = 1
    max_batch: int = 100
    batch_wait_seconds: int = 30
    stuck_after_seconds: int = 600
    solvency_tolerance: int = 0
    payout_takeover_seconds: float = 60.0
    #: a burn above this (base units; 0: none) waits ``large_withdrawal_delay_seconds`` before it
    #: is paid: the guardian's window to pause
    large_withdrawal: int = 0
    large_withdrawal_delay_seconds: int = 3 * 3600


@dataclass(frozen=True)
class SourceChain:
    caip2: str
    rpc: str
    symbol: str
    asset: str | None
    params: ChainParams
    rpc_user: str | None = None
    rpc_password: str | None = None
    start_height: int | None = None  # first block to scan on a fresh database (default: the tip)
    withdrawals: WithdrawalSettings | None = None  # None: burns of this asset are refunded, never paid

    @property
    def kind(self) -> str:
        return chain_kind(self.caip2)


@dataclass(frozen=True)
class BridgePeer:
    """Another operator's Bridge API, where this node forwards the deposit addresses registered
    here (``BridgeServicer`` → ``RegistrationForwarder``); its certificate is pinned and its TLS
    server name is ``node_id``."""

    node_id: str
    address: str
    tls_cert: Path


@dataclass(frozen=True)
class SettlementSettings:
    """``[bridge.settlement]``: the custody ledger every node keeps (``bridge/settlement/``).

    Every node of the network must use the same values (they decide what the ledger does with a
    batch); a node with other values computes other roots and is named at the first checkpoint."""

    coordinator: str  # the node id that orders instructions into batches
    cycle_seconds: float = 60.0  # a netting cycle's cut-off this long after the previous one
    dispute_window_seconds: float = 30.0  # between a cut-off and the cycle's finalisation
    batch_interval_seconds: float = 0.05  # the coordinator cuts a batch this often when there is work
    max_batch_entries: int = 2000
    snapshot_every: int = 1000  # batches between replica snapshots (a restart replays the batches since)
    registry: str | None = None  # the SettlementCheckpoints contract on the destination chain
    open_to: frozenset[bytes] | None = None  # client keys that may open accounts; None: anyone
    max_clock_skew_seconds: float = 30.0  # a batch timed further ahead of this node's clock is refused
    #: a batch this node cannot verify yet (a deposit it has not seen) is refused after this long
    unverified_batch_seconds: float = 300.0
    checkpoint_dir: Path | None = None  # each signed checkpoint is also written here as a file


@dataclass(frozen=True)
class ExplorerSettings:
    """``[bridge.explorer]``: the read-only explorer page this node serves (``bridge/explorer.py``).

    Loopback by default: the page shows nothing secret, but it is this operator's view of its own
    node, so reaching it from elsewhere is a choice (an SSH tunnel, or a ``listen`` on another
    address behind the operator's own access control)."""

    enabled: bool = True
    listen: str = "127.0.0.1:0"  # port 0: a free port, logged and written to --explorer-port-file
    #: Host header names answered besides localhost and IP literals (a DNS-rebinding page gets 403)
    allowed_hosts: tuple[str, ...] = ()
    sample_seconds: float = 60.0  # a reserve sample at least this often while nothing moves
    max_samples: int = 5000  # reserve samples kept per asset

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` with a port in 0..65535 (0: any free port)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BridgeConfigError(f"listen {value!r} is not host:port (port 0-65535)")
    return host, int(port)


@dataclass(frozen=True)
class BridgeConfig:
    path: Path | None
    key_id: bytes | None
    database: str
    destination_chain: str
    destination_rpc: str
    gateway: str | None
    relayer_key_file: Path | None
    chains: tuple[SourceChain, ...]
    signer_path: tuple[int, ...] = ()
    admin_clients: frozenset[bytes] = frozenset()
    poll_interval: float = 0.25
    coordinator_takeover_seconds: float = 10.0
    retry_seconds: float = 2.0
    order_slot_seconds: int = 600
    max_deadline_ahead: int = 2 * 3600
    min_deadline_ahead: int = 60
    expiry_grace: int = 120
    destination_confirmations: int = 1
    status_file: Path | None = None
    peers: tuple[BridgePeer, ...] = ()
    settlement: SettlementSettings | None = None
    explorer: ExplorerSettings = ExplorerSettings()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether the bridge can run (key created, Gateway deployed, every asset known)."""
        return self.key_id is not None and self.gateway is not None and all(c.asset for c in self.chains) \
            and bool(self.chains)

    @property
    def destination_chain_id(self) -> int:
        return evm_chain_id(self.destination_chain)

    def chain(self, caip2: str) -> SourceChain | None:
        return next((c for c in self.chains if c.caip2 == caip2), None)


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ..., *, where: str) -> Any:
    if key not in d:
        if default is ...:
            raise BridgeConfigError(f"{where}: {key} is required")
        return default
    value = d[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BridgeConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


def parse_bridge_config(data: dict[str, Any], path: Path | None = None) -> BridgeConfig:
    """Validate a parsed TOML document (its ``[bridge]`` table)."""
    base = path.parent if path is not None else Path.cwd()
    b = data.get("bridge")
    if not isinstance(b, dict):
        raise BridgeConfigError("no [bridge] table")
    w = "[bridge]"
    try:
        key_hex = _get(b, "key_id", str, "", where=w)
        key_id = bytes.fromhex(key_hex) if key_hex else None
        gateway_text = _get(b, "gateway", str, "", where=w)
        gateway = checksum_address(gateway_text, "gateway") if gateway_text else None
        destination = check_caip2(_get(b, "destination_chain", str, where=w))
        evm_chain_id(destination)
        relayer = _get(b, "relayer_key_file", str, "", where=w)
        chains = []
        for i, c in enumerate(_get(b, "chains", list, [], where=w)):
            cw = f"[[bridge.chains]] #{i + 1}"
            if not isinstance(c, dict):
                raise BridgeConfigError(f"{cw} must be a table")
            caip2 = check_caip2(_get(c, "caip2", str, where=cw))
            chain_kind(caip2)
            asset_text = _get(c, "asset", str, "", where=cw)
            params = ChainParams(
                min_confirmations=_get(c, "min_confirmations", int, where=cw),
                value_per_block=_get(c, "value_per_block", int, where=cw),
                max_confirmations=_get(c, "max_confirmations", int, where=cw),
                dust_limit=_get(c, "dust_limit", int, 0, where=cw),
                sweep_cost=_get(c, "sweep_cost", int, 0, where=cw))
            start = _get(c, "start_height", int, -1, where=cw)
            fee = _get(c, "withdrawal_fee", int, 0, where=cw)
            settings = None
            if fee > 0:
                settings = WithdrawalSettings(
                    withdrawal_fee=fee, max_fee_rate=_get(c, "max_fee_rate", int, where=cw),
                    fallback_fee_rate=_get(c, "fallback_fee_rate", int, where=cw),
                    fee_band=float(_get(c, "fee_band", (int, float), 2.0, where=cw)),
                    min_input_confirmations=_get(c, "min_input_confirmations", int, 1, where=cw),
                    payout_confirmations=_get(c, "payout_confirmations", int, 1, where=cw),
                    max_batch=_get(c, "max_batch", int, 100, where=cw),
                    batch_wait_seconds=_get(c, "batch_wait_seconds", int, 30, where=cw),
                    stuck_after_seconds=_get(c, "stuck_after_seconds", int, 600, where=cw),
                    solvency_tolerance=_get(c, "solvency_tolerance", int, 0, where=cw),
                    payout_takeover_seconds=float(_get(c, "payout_takeover_seconds", (int, float), 60.0, where=cw)),
                    large_withdrawal=_get(c, "large_withdrawal", int, 0, where=cw),
                    large_withdrawal_delay_seconds=_get(c, "large_withdrawal_delay_seconds", int, 3 * 3600,
                                                        where=cw))
                if not (0 < settings.fallback_fee_rate <= settings.max_fee_rate and settings.fee_band >= 1
                        and settings.min_input_confirmations >= 1 and settings.payout_confirmations >= 1
                        and 1 <= settings.max_batch <= 1000 and settings.batch_wait_seconds >= 0
                        and settings.stuck_after_seconds > 0 and settings.solvency_tolerance >= 0
                        and settings.large_withdrawal >= 0 and settings.large_withdrawal_delay_seconds >= 0):
                    raise BridgeConfigError(f"{cw}: withdrawal settings out of range (0 < fallback_fee_rate <= "
                                            "max_fee_rate, fee_band >= 1, confirmations >= 1, 1 <= max_batch "
                                            "<= 1000, stuck_after_seconds > 0, solvency_tolerance >= 0)")
            chains.append(SourceChain(
                caip2=caip2, rpc=_get(c, "rpc", str, where=cw), symbol=_get(c, "symbol", str, where=cw),
                asset=checksum_address(asset_text, "asset") if asset_text else None, params=params,
                rpc_user=_get(c, "rpc_user", str, None, where=cw),
                rpc_password=_get(c, "rpc_password", str, None, where=cw),
                start_height=start if start >= 0 else None, withdrawals=settings))
        if len({c.caip2 for c in chains}) != len(chains):
            raise BridgeConfigError("one [[bridge.chains]] entry per source chain")
        if destination in {c.caip2 for c in chains}:
            raise BridgeConfigError("the destination chain cannot also be a source chain")
        peers = []
        for i, p in enumerate(_get(b, "peers", list, [], where=w)):
            pw = f"[[bridge.peers]] #{i + 1}"
            if not isinstance(p, dict):
                raise BridgeConfigError(f"{pw} must be a table")
            peer_id = _get(p, "node_id", str, where=pw)
            address = _get(p, "address", str, where=pw)
            cert = _get(p, "tls_cert", str, where=pw)
            if not peer_id or not address or not cert:
                raise BridgeConfigError(f"{pw}: node_id, address and tls_cert must not be empty")
            peers.append(BridgePeer(peer_id, address, base / cert))
        if len({p.node_id for p in peers}) != len(peers):
            raise BridgeConfigError("one [[bridge.peers]] entry per node")
        status = _get(b, "status_file", str, "", where=w)
        settlement = _settlement(_get(b, "settlement", dict, {}, where=w), base)
        explorer = _explorer(_get(b, "explorer", dict, {}, where=w))
        return BridgeConfig(
            path=path, key_id=key_id, database=_get(b, "database", str, where=w), destination_chain=destination,
            destination_rpc=_get(b, "destination_rpc", str, where=w), gateway=gateway,
            relayer_key_file=(base / relayer) if relayer else None, chains=tuple(chains),
            signer_path=tuple(parse_path(_get(b, "signer_path", str, "m", where=w))),
            admin_clients=frozenset(bytes.fromhex(x) for x in _get(b, "admin_clients", list, [], where=w)),
            poll_interval=float(_get(b, "poll_interval", (int, float), 0.25, where=w)),
            coordinator_takeover_seconds=float(_get(b, "coordinator_takeover_seconds", (int, float), 10.0, where=w)),
            retry_seconds=float(_get(b, "retry_seconds", (int, float), 2.0, where=w)),
            order_slot_seconds=_get(b, "order_slot_seconds", int, 600, where=w),
            max_deadline_ahead=_get(b, "max_deadline_ahead", int, 2 * 3600, where=w),
            min_deadline_ahead=_get(b, "min_deadline_ahead", int, 60, where=w),
            expiry_grace=_get(b, "expiry_grace", int, 120, where=w),
            destination_confirmations=_get(b, "destination_confirmations", int, 1, where=w),
            status_file=(base / status) if status else None,
            peers=tuple(peers),
            settlement=settlement,
            explorer=explorer,
        )
    except (OrderError, ValueError) as exc:
        if isinstance(exc, BridgeConfigError):
            raise
        raise BridgeConfigError(str(exc)) from None


def _settlement(t: dict[str, Any], base: Path) -> SettlementSettings | None:
    if not t:
        return None
    w = "[bridge.settlement]"
    registry = _get(t, "registry", str, "", where=w)
    open_to = _get(t, "open_to", list, None, where=w)
    folder = _get(t, "checkpoint_dir", str, "", where=w)
    s = SettlementSettings(
        coordinator=_get(t, "coordinator", str, where=w),
        cycle_seconds=float(_get(t, "cycle_seconds", (int, float), 60.0, where=w)),
        dispute_window_seconds=float(_get(t, "dispute_window_seconds", (int, float), 30.0, where=w)),
        batch_interval_seconds=float(_get(t, "batch_interval_seconds", (int, float), 0.05, where=w)),
        max_batch_entries=_get(t, "max_batch_entries", int, 2000, where=w),
        snapshot_every=_get(t, "snapshot_every", int, 1000, where=w),
        registry=checksum_address(registry, "registry") if registry else None,
        open_to=None if open_to is None else frozenset(bytes.fromhex(x) for x in open_to),
        max_clock_skew_seconds=float(_get(t, "max_clock_skew_seconds", (int, float), 30.0, where=w)),
        unverified_batch_seconds=float(_get(t, "unverified_batch_seconds", (int, float), 300.0, where=w)),
        checkpoint_dir=(base / folder) if folder else None)
    if not (s.coordinator and s.cycle_seconds > 0 and s.dispute_window_seconds >= 0
            and 0 < s.batch_interval_seconds <= 10 and 1 <= s.max_batch_entries <= 20_000 and s.snapshot_every >= 1
            and s.max_clock_skew_seconds > 0 and s.unverified_batch_seconds > 0):
        raise BridgeConfigError(f"{w}: coordinator required; cycle_seconds > 0, dispute_window_seconds >= 0, "
                                "0 < batch_interval_seconds <= 10, 1 <= max_batch_entries <= 20000, "
                                "snapshot_every >= 1, max_clock_skew_seconds > 0, unverified_batch_seconds > 0")
    return s


def _explorer(t: dict[str, Any]) -> ExplorerSettings:
    w = "[bridge.explorer]"
    hosts = _get(t, "allowed_hosts", list, [], where=w)
    if not all(isinstance(h, str) and h and len(h) <= 253 for h in hosts):
        raise BridgeConfigError(f"{w}: allowed_hosts must be host names")
    s = ExplorerSettings(
        enabled=_get(t, "enabled", bool, True, where=w),
        listen=_get(t, "listen", str, "127.0.0.1:0", where=w),
        allowed_hosts=tuple(h.lower() for h in hosts),
        sample_seconds=float(_get(t, "sample_seconds", (int, float), 60.0, where=w)),
        max_samples=_get(t, "max_samples", int, 5000, where=w))
    parse_listen(s.listen)
    if not (s.sample_seconds > 0 and 10 <= s.max_samples <= 1_000_000):
        raise BridgeConfigError(f"{w}: sample_seconds > 0 and 10 <= max_samples <= 1000000")
    return s


def load_bridge_config(path: Path) -> BridgeConfig:
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise BridgeConfigError(f"{path}: {exc}") from None
    return parse_bridge_config(data, Path(path).resolve())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def bridge_toml(bridge: dict[str, Any], chains: list[dict[str, Any]]) -> str:
    """Write a bridge section (tests and the devnet tooling use it); ``bridge["peers"]``, a list of
    tables, becomes ``[[bridge.peers]]``; ``bridge["settlement"]`` and ``bridge["explorer"]``, tables,
    become ``[bridge.settlement]`` and ``[bridge.explorer]``."""
    bridge = dict(bridge)
    peers = bridge.pop("peers", None) or []
    settlement = bridge.pop("settlement", None)
    explorer = bridge.pop("explorer", None)
    lines = ["[bridge]"] + [f"{k} = {_toml_value(v)}" for k, v in bridge.items()]
    for c in chains:
        lines += ["", "[[bridge.chains]]"] + [f"{k} = {_toml_value(v)}" for k, v in c.items()]
    for p in peers:
        lines += ["", "[[bridge.peers]]"] + [f"{k} = {_toml_value(v)}" for k, v in p.items()]
    if settlement:
        lines += ["", "[bridge.settlement]"] + [f"{k} = {_toml_value(v)}" for k, v in settlement.items()]
    if explorer:
        lines += ["", "[bridge.explorer]"] + [f"{k} = {_toml_value(v)}" for k, v in explorer.items()]
    return "\n".join(lines) + "\n"
