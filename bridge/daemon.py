"""``python -m fusion_prime.bridge.daemon``: a signer node with its bridge — the composition root.

Where the bridge runs: *inside the signer daemon's process*, composed here, not in a process of its
own. The node package never imports the bridge; this module builds the same node as
``fusion_prime.signer.daemon`` (transport, sessions, storage, pool, wallet API) and plugs the
bridge in from outside: the node's ``authorize`` hook is ``BridgeAuthorizer ∘ WalletAuthorizer``
(bridge sign requests are checked against this node's own chain view, everything else by the
wallet policy), and the bridge runtime calls ``Node.sign`` directly on the node's trio loop. One
process per operator means one thing to deploy and no extra authenticated channel between the
bridge and its signer (a separate bridge process would need one, and that channel would become
something to attack).

Start-up: the node and the wallet API start at once. The bridge needs the group key (created
through the wallet API) and the Gateway (deployed with that key as signer), so a bridge file that
does not name them yet is re-read every second until it does; then the bridge database opens, the
authorize hook gets its chain view, the Bridge gRPC service and the runtime start, and with them the
read-only explorer page (``bridge/explorer.py``, ``[bridge.explorer]``, loopback by default).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

import trio
from web3 import Web3

from ..node.cli import fail_logged, operator_error
from ..node.commandline import OneLineParser
from ..node.config import is_loopback, load_config
from ..node.daemon import Node
from ..node.logs import configure_logging, log_event
from ..node.material import storage_key
from ..node.phases import load_key_share
from ..signer.policy import PolicyBook, PolicyEnforcer
from ..signer.service import WalletAuthorizer, WalletServicer, start_wallet_server
from .authorizer import BridgeAuthorizer, BridgeContext
from .chains.bitcoin.rpcclient import BitcoinRPC
from .chainview import NodeChainView, gateway_contract
from .config import BridgeConfig, load_bridge_config
from .db import open_database
from .derivation import deposit_address
from .evm_withdrawal import route_authorize
from .mint_policy import AssetRule, PolicyConfig
from .requests import AttestationRequest, EvmPayoutRequest, PayoutInputRequest, RefundRequest
from .runtime import BridgeRuntime
from .withdrawal_runtime import WithdrawalAuthorizer, WithdrawalRuntime, attach_evm_solvency, build_sides

log = logging.getLogger("fusion_prime.bridge.daemon")
CONFIG_POLL_SECONDS = 1.0


def _endpoints(bcfg: BridgeConfig) -> tuple[dict[str, Any], BitcoinRPC | None, Web3 | None, Web3]:
    sources: dict[str, Any] = {}
    bitcoin = source_evm = None
    for chain in bcfg.chains:
        if chain.kind == "bitcoin":
            bitcoin = BitcoinRPC(chain.rpc, chain.rpc_user, chain.rpc_password)
            sources[chain.caip2] = bitcoin
        else:
            source_evm = Web3(Web3.HTTPProvider(chain.rpc, request_kwargs={"timeout": 30}))
            sources[chain.caip2] = source_evm
    destination = Web3(Web3.HTTPProvider(bcfg.destination_rpc, request_kwargs={"timeout": 30}))
    return sources, bitcoin, source_evm, destination


async def run_bridge(node: Node, authorizer: BridgeAuthorizer, bridge_path: Path, *, bridge_listen: str,
                     bridge_port_file: Path | None, explorer_port_file: Path | None = None) -> None:
    """Wait for a complete bridge section, then run the bridge (and its explorer page) until cancelled."""
    while True:
        bcfg = load_bridge_config(bridge_path)
        if bcfg.key_id is not None:
            authorizer.reserved_key = bcfg.key_id
            authorizer.admin_clients = bcfg.admin_clients
            authorizer.signer_path = bcfg.signer_path
        if bcfg.complete and bcfg.key_id is not None and node.storage.key_info(bcfg.key_id) is not None:
            break
        await trio.sleep(CONFIG_POLL_SECONDS)
    assert bcfg.key_id is not None and bcfg.gateway is not None
    share = load_key_share(node.storage, bcfg.key_id)
    committee = list(node.storage.key_info(bcfg.key_id)["parties"])
    db = await trio.to_thread.run_sync(open_database, bcfg.database)
    sources, bitcoin, source_evm, destination = _endpoints(bcfg)
    view = NodeChainView(db, bitcoin=bitcoin, source_evm=source_evm, destination=destination, gateway=bcfg.gateway,
                         bitcoin_chains=[c.caip2 for c in bcfg.chains if c.kind == "bitcoin"])
    policy = PolicyConfig(group_key=share.group_key, chain_code=share.chain_code,
                          destination_chain=bcfg.destination_chain, gateway=bcfg.gateway,
                          assets=tuple(AssetRule(c.asset, c.caip2, c.params) for c in bcfg.chains if c.asset),
                          max_deadline_ahead=bcfg.max_deadline_ahead, min_deadline_ahead=bcfg.min_deadline_ahead,
                          expiry_grace=bcfg.expiry_grace)
    authorizer.context = BridgeContext(key_id=bcfg.key_id, signer_path=bcfg.signer_path, policy=policy, view=view,
                                       db=db, admin_clients=bcfg.admin_clients)
    runtime = BridgeRuntime(bcfg, db=db, sign=node.sign, node_id=node.cfg.node_id, committee=committee,
                            group_key=share.group_key, chain_code=share.chain_code, view=view, sources=sources,
                            destination=destination, registry=node.metrics.registry)
    runtime.withdrawals = _withdrawal_side(node, authorizer, bcfg, db, share, committee, destination, bitcoin,
                                           runtime, sources)
    settlement = _settlement_side(node, authorizer, bcfg, db, share, runtime)
    server = servicer = explorer = None
    try:
        server, servicer = _start_service(node, bcfg, db, share, bridge_listen, bridge_port_file, settlement)
        if servicer is not None and runtime.withdrawals is not None:
            token = trio.lowlevel.current_trio_token()
            readers = _reserve_readers(bcfg, sources)
            servicer.reserves = functools.partial(runtime.withdrawals.prove_reserves, token, readers)
        forwarder = getattr(servicer, "forwarder", None)
        if settlement is not None and settlement.funding is not None and forwarder is not None:
            settlement.funding.forward = forwarder.submit  # account addresses reach every node's watchers
        if forwarder is not None:
            runtime.status_extra["registration_forwarding"] = lambda: {
                "pending": forwarder.pending(), "forwarded": dict(forwarder.forwarded),
                "refused": forwarder.refused[-20:]}
        explorer = _start_explorer(node, bcfg, db, runtime, explorer_port_file)
        log_event(log, logging.INFO, "bridge running", node=node.cfg.node_id, gateway=bcfg.gateway,
                  chains=[c.caip2 for c in bcfg.chains])
        async with trio.open_nursery() as nursery:
            if settlement is not None:
                nursery.start_soon(settlement.run)
            if explorer is not None:
                nursery.start_soon(explorer.watch.run)
            await runtime.run()
            nursery.cancel_scope.cancel()
    finally:
        if explorer is not None:
            explorer.stop()
        authorizer.settlement = None
        authorizer.context = None
        authorizer.withdrawal_hooks = {}
        if servicer is not None and hasattr(servicer, "close"):
            servicer.close()
            if getattr(servicer, "forwarder", None) is not None:
                servicer.forwarder.close()
        if server is not None:
            server.stop(grace=1.0)
        db.close()


def _start_explorer(node: Node, bcfg: BridgeConfig, db: Any, runtime: BridgeRuntime,
                    port_file: Path | None) -> Any:
    """The read-only explorer page (``bridge/explorer.py``), unless ``[bridge.explorer] enabled =
    false``. A port it cannot bind is logged and the bridge runs without it: a status page is not
    worth stopping custody for."""
    if not bcfg.explorer.enabled:
        return None
    from .config import parse_listen
    from .explorer import start_explorer

    try:
        explorer = start_explorer(node, bcfg, db, runtime)
    except OSError as exc:
        log_event(log, logging.ERROR, "bridge explorer not started: cannot listen", listen=bcfg.explorer.listen,
                  error=str(exc))
        return None
    host, _ = parse_listen(bcfg.explorer.listen)
    if not is_loopback(host):
        log_event(log, logging.WARNING, "bridge explorer listens beyond loopback: anyone who reaches it sees this "
                  "node's view of the bridge", listen=bcfg.explorer.listen)
    if port_file is not None:
        port_file.write_text(str(explorer.server.port))
    log_event(log, logging.INFO, "bridge explorer serving", node=node.cfg.node_id, url=explorer.server.url)
    return explorer


def _reserve_readers(bcfg: BridgeConfig, sources: dict[str, Any]) -> dict[str, Any]:
    from .reserves import BitcoinRPCReader, Web3Reader

    return {c.caip2: (BitcoinRPCReader(sources[c.caip2]) if c.kind == "bitcoin" else Web3Reader(sources[c.caip2]))
            for c in bcfg.chains if c.caip2 in sources}


def _withdrawal_side(node: Node, authorizer: BridgeAuthorizer, bcfg: BridgeConfig, db: Any, share: Any,
                     committee: list[str], destination: Any, bitcoin: Any, runtime: BridgeRuntime,
                     sources: dict[str, Any]) -> Any:
    """Burns → payouts and refunds (``bridge/withdrawal_runtime.py``), and the participant's hooks.

    Payouts need every two signing sets to share a node (``2 × threshold > committee``): that node
    refuses a second payout of a burn it saw in a first. Without it, burns are refunded instead."""
    assert bcfg.gateway is not None and bcfg.key_id is not None
    info = node.storage.key_info(bcfg.key_id) or {}
    threshold = int(info.get("threshold", 0))
    if 2 * threshold <= len(committee):
        log_event(log, logging.WARNING, "payouts disabled: two signing sets of this committee need not share a node",
                  threshold=threshold, committee=len(committee))
        bcfg = dataclasses.replace(bcfg, chains=tuple(dataclasses.replace(c, withdrawals=None) for c in bcfg.chains))
    evm_sources = {c.caip2: sources[c.caip2] for c in bcfg.chains if c.kind == "evm" and c.caip2 in sources}
    sides = build_sides(bcfg, group_key=share.group_key, chain_code=share.chain_code, bitcoin=bitcoin, db=db,
                        evm_sources=evm_sources, sign=node.sign, node_id=node.cfg.node_id)
    gateway = gateway_contract(destination, bcfg.gateway)
    hooks = WithdrawalAuthorizer(db=db, sides=sides, gateway=gateway, destination_chain_id=bcfg.destination_chain_id,
                                 gateway_address=bcfg.gateway, signer_path=bcfg.signer_path, node_id=node.cfg.node_id,
                                 max_deadline_ahead=bcfg.max_deadline_ahead, group_key=share.group_key,
                                 chain_code=share.chain_code, destination_chain=bcfg.destination_chain)
    attach_evm_solvency(sides, hooks)
    authorizer.withdrawal_hooks = {PayoutInputRequest: hooks.payout_input, RefundRequest: hooks.refund,
                                   AttestationRequest: hooks.attestation}
    evm_sides = [s.evm for s in sides.values() if s.evm is not None]
    if evm_sides:
        authorizer.withdrawal_hooks[EvmPayoutRequest] = hooks.gate_evm(route_authorize(evm_sides))
    authorizer.solvency = lambda asset: next(((s.solvent, s.solvency_reason) for s in sides.values()
                                              if s.asset.lower() == asset.lower()), (True, ""))
    return WithdrawalRuntime(bcfg, db=db, sign=node.sign, node_id=node.cfg.node_id, committee=committee,
                             group_key=share.group_key, chain_code=share.chain_code, destination=destination,
                             gateway=gateway, bitcoin=bitcoin, authorizer=hooks,
                             relay=runtime._transact if runtime.relayer is not None else None,
                             alert=runtime._alert, pause=runtime.pause_for)


def _settlement_side(node: Node, authorizer: BridgeAuthorizer, bcfg: BridgeConfig, db: Any, share: Any,
                     runtime: BridgeRuntime) -> Any:
    """The custody ledger (``bridge/settlement/``), if ``[bridge.settlement]`` is configured: its
    runtime, the deposits that credit accounts, the withdrawals paid from them, and the
    participant's checkpoint hook."""
    settings = bcfg.settlement
    if settings is None:
        return None
    from fusion_prime.protocol.addresses import ethereum_address
    from fusion_prime.protocol.hd import derive

    from .settlement.runtime import Peer, SettlementRuntime

    assert bcfg.gateway is not None and bcfg.key_id is not None
    keys = {nid: p.identity_public_key for nid, p in node.material.peers.items()}
    keys[node.cfg.node_id] = node.material.identity.public_key
    if settings.coordinator not in keys:
        raise ValueError(f"[bridge.settlement] coordinator {settings.coordinator!r} is not in the roster")
    peers = [Peer(p.node_id, p.address, p.tls_cert.read_bytes()) for p in bcfg.peers]
    assets = {c.symbol: c.caip2 for c in bcfg.chains}
    signer = ethereum_address(derive(share.group_key, share.chain_code, bcfg.signer_path).public_key)
    registry = settings.registry or bcfg.gateway
    funding = payouts = relay = None
    try:
        from .settlement.funding import Funding

        # paused: no credit from a chain an erratum paused; solvency: the withdrawal side counts
        # the ledger's liabilities (set_ledger_liabilities below)
        funding = Funding(db, group_key=share.group_key, chain_code=share.chain_code, assets=assets,
                          paused=runtime.chain_paused, solvency=runtime.withdrawals)
    except ImportError:  # pragma: no cover - shipped together
        log_event(log, logging.WARNING, "settlement: deposits cannot credit accounts on this node")
    if runtime.withdrawals is not None:
        try:
            from .settlement.payouts_link import AccountWithdrawals

            payouts = AccountWithdrawals(db, runtime.withdrawals)
        except (ImportError, ValueError) as exc:
            log_event(log, logging.WARNING, "settlement: account withdrawals are not paid by this node",
                      reason=str(exc))
    if settings.registry is not None and runtime.relayer is not None:
        from .settlement.publish import CheckpointRelay

        relay = CheckpointRelay(runtime.destination, settings.registry, runtime.relayer)
    settlement = SettlementRuntime(
        settings, db=db, node_id=node.cfg.node_id, identity=node.material.identity, node_keys=keys, peers=peers,
        assets=list(assets), sign=node.sign, key_id=bcfg.key_id, signer_path=bcfg.signer_path,
        signer_address=signer, chain_id=bcfg.destination_chain_id, registry=registry, funding=funding,
        payouts=payouts, relay=relay)
    if payouts is not None:
        payouts.pending(settlement.withdrawal)
    if funding is not None and runtime.withdrawals is not None:
        funding.solvency = runtime.withdrawals
        funding.set_ledger_liabilities(settlement.liabilities)
    authorizer.settlement = settlement
    return settlement


def _start_service(node: Node, bcfg: BridgeConfig, db: Any, share: Any, listen: str, port_file: Path | None,
                   settlement: Any = None) -> tuple[Any, Any]:
    """The Bridge gRPC service (``bridge/service.py``, written beside this module)."""
    try:
        from . import service
    except ImportError:  # pragma: no cover - the service ships with the bridge; kept for partial checkouts
        log_event(log, logging.WARNING, "bridge service not available: no Bridge gRPC API on this node")
        return None, None
    sources = {c.caip2: service.SourceChain(asset=c.symbol, params=c.params) for c in bcfg.chains}
    destinations = {bcfg.destination_chain: {c.caip2: c.asset or "" for c in bcfg.chains}}
    forwarder = None
    if bcfg.peers:
        peers = [service.PeerEndpoint(p.node_id, p.address, p.tls_cert.read_bytes()) for p in bcfg.peers
                 if p.node_id != node.cfg.node_id]
        forwarder = service.RegistrationForwarder(db, peers, node_id=node.cfg.node_id)
    servicer = service.BridgeServicer(db, functools.partial(deposit_address, share.group_key, share.chain_code),
                                      sources=sources, destinations=destinations, node_id=node.cfg.node_id,
                                      forwarder=forwarder)
    funding = getattr(settlement, "funding", None)
    if funding is not None:
        # account deposit addresses: served (and registered when a peer forwards one), and a new
        # registration here is forwarded to the peers like any deposit address
        servicer.funding = funding
        if forwarder is not None:
            funding.forward = forwarder.submit
    extra = []
    if settlement is not None:
        from .settlement.service import SettlementServicer, add_to_server

        extra.append(add_to_server(SettlementServicer(
            settlement, admins=bcfg.admin_clients, funding=settlement.funding,
            sources={c.symbol: c.caip2 for c in bcfg.chains})))
    server, port = service.start_bridge_server(servicer, listen, node.cfg.tls_cert.read_bytes(),
                                               node.cfg.tls_key.read_bytes(), extra=extra)
    if forwarder is not None:
        forwarder.start()  # after the server: a peer's forward to us may arrive meanwhile, that is fine
    if port_file is not None:
        port_file.write_text(str(port))
    return server, servicer


async def serve(config: Path, bridge: Path, policy: Path, wallet_listen: str, *, port_file: Path | None = None,
                bridge_listen: str = "127.0.0.1:0", bridge_port_file: Path | None = None,
                explorer_port_file: Path | None = None) -> None:
    cfg = load_config(config)
    book = PolicyBook.load(policy)  # a bad policy or bridge file stops the node before it opens anything
    load_bridge_config(bridge)
    wallet = WalletAuthorizer(None)
    authorizer = BridgeAuthorizer(wallet, cfg.node_id)
    node = Node(cfg, storage_key(cfg, dict(os.environ)), authorize=authorizer.in_thread)
    enforcer = PolicyEnforcer(book, cfg.data_dir / "wallet-policy.sqlite3")
    wallet.enforcer = enforcer
    server = None
    try:
        async with trio.open_nursery() as nursery:
            async def run_node(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                await node.run(handle_signals=True, task_status=task_status)
                nursery.cancel_scope.cancel()  # the node stopped (SIGTERM): so does its bridge

            await nursery.start(run_node)
            servicer = WalletServicer(node, enforcer, trio.lowlevel.current_trio_token())
            server, port = start_wallet_server(servicer, wallet_listen, cfg.tls_cert.read_bytes(),
                                               cfg.tls_key.read_bytes())
            nursery.start_soon(functools.partial(run_bridge, node, authorizer, bridge, bridge_listen=bridge_listen,
                                                 bridge_port_file=bridge_port_file,
                                                 explorer_port_file=explorer_port_file))
            if port_file is not None:
                port_file.write_text(str(port))
    finally:
        if server is not None:
            server.stop(grace=1.0)
        enforcer.close()


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="fusion-prime-bridge-daemon", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    parser.add_argument("--bridge", type=Path, required=True, help="this node's bridge section (TOML)")
    parser.add_argument("--policy", type=Path, required=True, help="this node's wallet policy (TOML)")
    parser.add_argument("--wallet-listen", default="127.0.0.1:0", help="address of the wallet API")
    parser.add_argument("--port-file", type=Path, help="write the bound wallet port here")
    parser.add_argument("--bridge-listen", default="127.0.0.1:0", help="address of the Bridge API")
    parser.add_argument("--bridge-port-file", type=Path, help="write the bound Bridge API port here")
    parser.add_argument("--explorer-port-file", type=Path,
                        help="write the bound port of the explorer page here ([bridge.explorer] listen)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        trio.run(lambda: serve(args.config, args.bridge, args.policy, args.wallet_listen, port_file=args.port_file,
                               bridge_listen=args.bridge_listen, bridge_port_file=args.bridge_port_file,
                               explorer_port_file=args.explorer_port_file))
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        known = operator_error(exc)
        if known is None:
            raise
        return fail_logged(known, "fusion_prime.bridge.daemon")
    return 0


if __name__ == "__main__":
    sys.exit(main())
