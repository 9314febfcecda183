"""`make demo`: a 2-of-3 CGGMP21 network doing real work, end to end, over the real transport.

By default the demo creates a devnet (identity keys, TLS certificates, configs, storage key
files) in a temporary folder, starts **node2 and node3 as separate OS processes** with the
operator CLI (``python -m fusion_prime.node.cli run``), and runs **node1 in this process as
the coordinator** (the wallet API, which would normally ask node1 to sign, is not part of the
node). Everything between the nodes is gRPC with mutual TLS on loopback, signed envelopes,
encrypted SQLite storage — the daemon as an operator runs it:

1. 2-of-3 key generation (nobody ever holds the private key);
2. aux info — each node generates its own safe primes, in parallel, in its own process — and
   the Paillier / ring-Pedersen proofs;
3. a few presignatures into the pool (signer sets {node1, node2} and {node1, node3});
4. five signatures at a BIP32 path, each checked by two verifiers that share no code with
   the protocol: libsecp256k1 (coincurve) and eth-account's public-key recovery;
5. the group's Ethereum and Bitcoin regtest addresses, per-phase timings, and a clean
   shutdown (SIGTERM to the node processes; each must exit 0).

Runs at the default 128-bit level; ``--level test-2048`` (test mode, small moduli) is for the
test suite. ``--in-process`` keeps the original demo: the same protocol machines, all in this
process, no network.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import trio
from coincurve import PublicKey
from eth_account import Account

from ..protocol.addresses import ethereum_address, p2wpkh_address
from ..protocol.aux_info import AuxInfoMachine
from ..protocol.curve import Point
from ..protocol.ecdsa import Signature
from ..protocol.hd import derive, parse_path
from ..protocol.identity import PartyIdentity
from ..protocol.keygen import KeygenMachine
from ..protocol.levels import level_by_name
from ..protocol.presign import PresignMachine
from ..protocol.runner import run_in_process
from ..protocol.sign import SignMachine
from .config import config_to_toml, load_config
from .devnet import DevnetNode, create_devnet

# ---------------------------------------------------------------------------------------------
# Independent verification (no protocol code involved beyond the public key derivation)
# ---------------------------------------------------------------------------------------------


def verify_independently(public_key: Point, digest: bytes, sig: Signature) -> tuple[bool, bool, str]:
    """(libsecp256k1 verify, eth-account recovery matches, recovered address)."""
    ok_secp = PublicKey(public_key.to_bytes()).verify(sig.to_der(), digest, hasher=None)
    recovered = Account._recover_hash(digest, vrs=(27 + sig.recovery_id, sig.r, sig.s))
    return ok_secp, recovered == ethereum_address(public_key), recovered


# ---------------------------------------------------------------------------------------------
# The network: devnet files, node processes, the in-process coordinator
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Network:
    base: Path
    devnet: list[DevnetNode]
    procs: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for node_id, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"--- {node_id} ({path}) ---")
            out.extend(text[-lines:])
        return "\n".join(out)

    def shutdown(self, timeout: float = 60.0) -> dict[str, int | None]:
        """SIGTERM every node process; returns each exit code (None if it had to be killed)."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for node_id, p in self.procs.items():
            try:
                codes[node_id] = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes[node_id] = None
        return codes


def create_network_files(base: Path, *, level: str, round_deadline: float,
                         pool_depth: int = 0) -> list[DevnetNode]:
    """A 3-node devnet under ``base``. ``pool_depth`` is written into node2's and node3's configs
    (0 = their background pool stays idle, so the coordinator decides what gets presigned)."""
    test_mode = level_by_name(level).test_only
    devnet = create_devnet(base, 3, test_mode=test_mode, security_level=level,
                           round_deadline_seconds=round_deadline,
                           scrypt_log2_n=10 if test_mode else None)
    for d in devnet[1:]:
        cfg = dataclasses.replace(load_config(d.config_path), presign_pool_depth=pool_depth)
        d.config_path.write_text(config_to_toml(cfg))
    return devnet


@contextmanager
def node_processes(base: Path, devnet: Sequence[DevnetNode], *, log_level: str = "INFO") -> Iterator[Network]:
    """Start every node but the first as its own OS process (the operator CLI); on exit, any
    process still running is sent SIGTERM, then killed if it does not stop."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    net = Network(base, list(devnet), procs, logs)
    try:
        for d in devnet[1:]:
            logs[d.node_id] = base / f"{d.node_id}.log"
            with open(logs[d.node_id], "wb") as err:
                procs[d.node_id] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [sys.executable, "-m", "fusion_prime.node.cli", "run", "--config", str(d.config_path),
                     "--log-level", log_level],
                    stdout=subprocess.DEVNULL, stderr=err,
                )
        yield net
    finally:
        net.shutdown(timeout=30.0)


def open_coordinator(devnode: DevnetNode, **kw: Any) -> Any:
    from .daemon import Node
    from .material import storage_key

    cfg = load_config(devnode.config_path)
    return Node(cfg, storage_key(cfg, {}), **kw)


async def wait_healthy(node: Any, peers: Sequence[str], procs: dict[str, subprocess.Popen[bytes]],
                       timeout: float = 60.0) -> None:
    with trio.fail_after(timeout):
        while True:
            for node_id, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{node_id} exited with status {p.returncode} during startup")
            if set(peers) <= set(await node.sessions.healthy_peers("keygen")):
                return
            await trio.sleep(0.2)


def configure_node1_logging(path: Path) -> tuple[logging.Handler, TextIO]:
    from .logs import configure_logging

    stream = open(path, "w")  # closed by the caller
    return configure_logging(logging.INFO, stream), stream


# ---------------------------------------------------------------------------------------------
# The network demo
# ---------------------------------------------------------------------------------------------


class DemoFailed(Exception):
    pass


def _row(name: str, seconds: float, note: str = "") -> None:
    print(f"  {name:<34} {seconds:9.3f} s  {note}", flush=True)


async def _drive(node1: Any, net: Network, args: argparse.Namespace, results: dict[str, Any]) -> None:
    level = args.level
    t0 = time.perf_counter()
    await wait_healthy(node1, ["node2", "node3"], net.procs)
    _row("network up (node2, node3 healthy)", time.perf_counter() - t0, "gRPC + mTLS on loopback")

    t0 = time.perf_counter()
    kg = await node1.keygen(2, 3, level=level)
    if not kg.ok:
        raise DemoFailed(f"keygen failed: {kg}")
    _row("key generation (2-of-3)", time.perf_counter() - t0, f"participants {', '.join(kg.participants)}")
    key_id, group_key, chain_code = kg.output["key_id"], Point.from_bytes(kg.output["public_key"]), \
        kg.output["chain_code"]

    t0 = time.perf_counter()
    aux = await node1.aux_info(["node1", "node2", "node3"], level=level)
    if not aux.ok:
        raise DemoFailed(f"aux info failed: {aux}")
    _row("aux info (primes + proofs)", time.perf_counter() - t0, "each node generates its own safe primes")

    sets = (["node1", "node2"], ["node1", "node3"])
    t0 = time.perf_counter()
    for i in range(args.presignatures):
        for attempt in range(5):
            pre = await node1.presign(key_id, sets[i % 2])
            # A participant may not have stored the aux info yet when the coordinator finished
            # that session a moment earlier: it refuses, and a short wait fixes it.
            if pre.ok or pre.status != "refused" or attempt == 4:
                break
            await trio.sleep(0.5)
        if not pre.ok:
            raise DemoFailed(f"presign failed: {pre}")
    _row(f"presign pool fill ({args.presignatures})", time.perf_counter() - t0,
         f"{(time.perf_counter() - t0) / max(args.presignatures, 1):.3f} s each")

    path = parse_path(args.path)
    child = derive(group_key, chain_code, path).public_key
    latencies, rs = [], set()
    for i in range(args.signatures):
        digest = hashlib.sha256(f"{args.message} #{i}".encode()).digest()
        t0 = time.perf_counter()
        out = await node1.sign(key_id, digest, path)
        if not out.ok:
            raise DemoFailed(f"sign {i} failed: {out}")
        sig: Signature = out.output
        ok_secp, ok_eth, recovered = verify_independently(child, digest, sig)
        latencies.append(time.perf_counter() - t0)
        if not (ok_secp and ok_eth):
            raise DemoFailed(f"signature {i} does not verify (libsecp256k1 {ok_secp}, eth-account {ok_eth})")
        rs.add(sig.r)
        results.setdefault("signatures", []).append((digest, sig, out.participants, recovered))
    if len(rs) != args.signatures:
        raise DemoFailed("two signatures share an R: a presignature was used twice")
    _row(f"sign, online ({args.signatures}x, from pool)", sum(latencies),
         f"p50 {1000 * statistics.median(latencies):.1f} ms, max {1000 * max(latencies):.1f} ms "
         "(request -> verified signature)")
    results.update(group_key=group_key, child=child, path=path)


def network_demo(args: argparse.Namespace) -> int:
    level = level_by_name(args.level)
    print(f"Fusion Prime demo: 2-of-3 threshold ECDSA (CGGMP21) on a 3-node network, level {level.name}, "
          f"Paillier {level.paillier_bits} bits{' (TEST MODE)' if level.test_only else ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fusion-prime-demo-") as tmp:
        base = Path(args.dir).resolve() if args.dir else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        devnet = create_network_files(base / "net", level=level.name, round_deadline=args.round_deadline)
        _row("devnet files (keys, certs, configs)", time.perf_counter() - t0, str(base / "net"))
        handler, stream = configure_node1_logging(base / "node1.log")
        results: dict[str, Any] = {}
        failure: str | None = None
        with node_processes(base, devnet) as net:
            net.logs = {"node1": base / "node1.log", **net.logs}
            print(f"  node2, node3: pids {', '.join(str(p.pid) for p in net.procs.values())}; "
                  "node1 (coordinator) in this process", flush=True)
            node1 = open_coordinator(devnet[0], fill_pool=False)

            async def main() -> None:
                async with trio.open_nursery() as nursery:
                    await nursery.start(node1.run)
                    try:
                        await _drive(node1, net, args, results)
                    finally:
                        node1.stop()

            try:
                trio.run(main)
            except (DemoFailed, RuntimeError, trio.TooSlowError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
            t0 = time.perf_counter()
            codes = net.shutdown()
            _row("shutdown (SIGTERM)", time.perf_counter() - t0,
                 ", ".join(f"{n} exit {c}" for n, c in codes.items()))
            if failure is not None:
                print(f"\nDEMO FAILED: {failure}\n{net.log_tail()}", file=sys.stderr)
        logging.getLogger("fusion_prime").removeHandler(handler)
        stream.close()
        if failure is not None:
            return 1
        if any(c != 0 for c in codes.values()):
            print(f"\nDEMO FAILED: a node did not exit cleanly: {codes}", file=sys.stderr)
            return 1

    group_key, child = results["group_key"], results["child"]
    print()
    print(f"  group key              {group_key.to_bytes().hex()}")
    print(f"  Ethereum address       {ethereum_address(group_key)}")
    print(f"  Bitcoin regtest        {p2wpkh_address(group_key, 'regtest')}")
    print(f"  signing key {args.path:<10} {ethereum_address(child)}  /  {p2wpkh_address(child, 'regtest')}")
    for i, (digest, sig, signers, recovered) in enumerate(results["signatures"]):
        print(f"  signature {i} ({'+'.join(signers)})  digest {digest.hex()[:16]}…  r={sig.r:064x}"[:100]
              + f"…  v={sig.recovery_id}")
        print(f"      libsecp256k1 verify OK; eth-account recovers {recovered} OK")
    print(f"\nverified signatures: {len(results['signatures'])}/{args.signatures} "
          "(libsecp256k1 + eth-account), all R distinct; nodes shut down cleanly")
    return 0


# ---------------------------------------------------------------------------------------------
# The original in-process demo (``--in-process``)
# ---------------------------------------------------------------------------------------------


def _phase(name: str, machines: dict) -> dict:  # type: ignore[type-arg]
    start = time.perf_counter()
    out = run_in_process(machines)
    elapsed = time.perf_counter() - start
    if len(out) != len(machines):
        failed = {i: m.abort for i, m in machines.items() if m.abort}
        raise SystemExit(f"{name} failed: {failed}")
    print(f"  {name:<24} {elapsed:8.3f} s  ({len(machines)} parties, in process)")
    return out


def in_process_demo(args: argparse.Namespace) -> int:
    level = level_by_name(args.level)
    parties = [1, 2, 3]
    ids = {i: PartyIdentity.generate() for i in parties}
    roster = {i: k.public_key for i, k in ids.items()}
    print(f"Fusion Prime demo (in process): 2-of-3 threshold ECDSA (CGGMP21), level {level.name}, "
          f"Paillier {level.paillier_bits} bits")

    sid = secrets.token_bytes(32)
    shares = _phase("key generation", {i: KeygenMachine(sid, i, parties, ids[i], roster, threshold=2, level=level)
                                       for i in parties})
    sid = secrets.token_bytes(32)
    aux = _phase("aux info (primes+proofs)", {i: AuxInfoMachine(sid, i, parties, ids[i], roster, level=level)
                                              for i in parties})
    signers = [1, 3]
    sid = secrets.token_bytes(32)
    pre = _phase("presign (signers 1, 3)", {i: PresignMachine(sid, i, signers, ids[i], roster,
                                                              key_share=shares[i], aux_info=aux[i]) for i in signers})
    digest = hashlib.sha256(args.message.encode()).digest()
    sid = secrets.token_bytes(32)
    sigs = _phase("sign (online)", {i: SignMachine(sid, i, signers, ids[i], roster, key_share=shares[i],
                                                   presignature=pre[i], digest=digest, path=args.path)
                                    for i in signers})
    share = shares[1]
    child = derive(share.group_key, share.chain_code, args.path).public_key
    sig = sigs[1]
    print()
    print(f"  group key              {share.group_key.to_bytes().hex()}")
    print(f"  Ethereum address       {ethereum_address(share.group_key)}")
    print(f"  Bitcoin regtest        {p2wpkh_address(share.group_key, 'regtest')}")
    print(f"  signing key {args.path:<10} {ethereum_address(child)}  /  {p2wpkh_address(child, 'regtest')}")
    print(f"  digest                 sha256({args.message!r}) = {digest.hex()}")
    print(f"  signature              r={sig.r:064x}")
    print(f"                         s={sig.s:064x}  v={sig.recovery_id}")
    ok_secp, ok_eth, recovered = verify_independently(child, digest, sig)
    print(f"  libsecp256k1 verify    {'OK' if ok_secp else 'FAILED'}")
    print(f"  eth-account recovery   {recovered} {'OK' if ok_eth else 'FAILED'}")
    return 0 if ok_secp and ok_eth else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", default="128", help="security level name (default 128)")
    parser.add_argument("--message", default="Fusion Prime demo", help="text whose SHA-256 is signed")
    parser.add_argument("--path", default="m/0/7", help="BIP32 path of the signing key (non-hardened)")
    parser.add_argument("--in-process", action="store_true", help="the original demo: all parties in this process")
    parser.add_argument("--signatures", type=int, default=5, help="signatures to make (network demo)")
    parser.add_argument("--presignatures", type=int, default=None,
                        help="presignatures to put in the pool first (default: as many as signatures)")
    parser.add_argument("--round-deadline", type=float, default=60.0,
                        help="seconds per protocol round before a node is blamed (network demo)")
    parser.add_argument("--dir", default=None, help="keep the devnet and node logs here instead of a temp dir")
    args = parser.parse_args(argv)
    if args.in_process:
        return in_process_demo(args)
    if args.presignatures is None:
        args.presignatures = args.signatures
    if args.presignatures < args.signatures:
        parser.error("need at least as many presignatures as signatures")
    return network_demo(args)


if __name__ == "__main__":
    sys.exit(main())
