"""`python -m fusion_prime.bridge.settlement.cli`: the settlement command line, on top of the SDK.

Every command but ``key new`` talks to one node's Bridge API, where the Settlement service is
served, over TLS, pinning that node's certificate (``--cert``; ``--server-name`` defaults to the
node id the certificate names). Instructions and reads of your own data are signed with your client
key (``--key``): the same file format as the wallet CLI's client key (the 32-byte secret in hex,
mode 0600), made with ``key new``.

    key new FILE                                   a client key file; prints its public key
    open-account [--label L]
    deposit-address ASSET                          where to deposit to fund your account
    balances
    trade --leg PARTY:ASSET:QUANTITY ... --mode gross|net [--affirm]
                                                   PARTY: 66 hex digits or "me"; QUANTITY < 0 delivers
    affirm | cancel TRADE_ID, dispute TRADE_ID --reason R
    withdraw ASSET AMOUNT --chain CAIP2 --to ADDRESS
    trades, trade-status TRADE_ID, watch, withdrawals
    report CYCLE [--csv FILE] [--json FILE]         (the bridge's admin clients only)
    proof --out FILE                               your balance proofs against the latest signed checkpoint
    checkpoint [CYCLE] [--out FILE], status

Amounts are integers in base units (satoshi, wei). Output is text, or JSON with ``--json``
(amounts as decimal strings, ids as hex). An error is one line on stderr (``error: …``), exit
code 2 for a usage error and 1 for anything else, never a traceback; a closed pipe (``… | head``)
ends the command quietly; Ctrl-C ends ``watch`` with exit code 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from ...node.commandline import EXIT_USAGE, OneLineParser, one_line, stdout_closed
from ...node.identity import IdentityError, create_identity, load_identity
from ...node.tls import TLSError, certificate_node_id
from ...proto.generated import settlement_pb2
from ...protocol.errors import InvalidInput
from ...protocol.identity import PartyIdentity
from ..client import to_dict
from . import checkpoint as cp
from .client import SettlementClient, SettlementRejected, new_key

PROG = "fusion-prime-settlement"
EXIT_ERROR = 1
VERIFY_HINT = ("python -m fusion_prime.bridge.settlement.checkpoint verify {file} "
               "--signer 0x<the Gateway's active signer>")


class UsageError(Exception):
    """An argument the command cannot use (exit code 2): nothing was sent."""


class CommandError(Exception):
    """A command that ran and failed for a reason the user can act on (exit code 1)."""


# ------------------------------------------------------------------------------------ arguments


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="host:port of a node's Bridge API (the Settlement service is served there)")
    parser.add_argument("--cert", help="that node's TLS certificate (PEM), pinned")
    parser.add_argument("--server-name", help="the name in the certificate (default: the node id it names)")
    parser.add_argument("--key", help="your client key file (32-byte secret in hex, mode 0600; see `key new`)")
    parser.add_argument("--timeout", type=_positive(float), default=30.0, help="seconds per read (default 30)")
    parser.add_argument("--wait-ms", type=_positive(int), default=20_000,
                        help="ms an instruction may wait to be ordered into a batch (default 20000, at most 60000)")
    parser.add_argument("--json", dest="as_json", action="store_true", help="JSON output")
    # `--json` is also accepted after the command (where it cannot mean a file): SUPPRESS keeps a
    # subcommand from resetting what was given before it
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", dest="as_json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    p = sub.add_parser("key", help="client key files")
    key_sub = p.add_subparsers(dest="key_command", required=True, metavar="new", parser_class=OneLineParser)
    p = key_sub.add_parser("new", parents=[out], help="create a client key file (mode 0600, never overwritten)")
    p.add_argument("file")

    p = sub.add_parser("open-account", parents=[out], help="open your account")
    p.add_argument("--label", default="", help="a name for the account (at most 64 characters)")
    p.add_argument("--key-id", help="idempotency key (default: the SDK's, one account per client)")

    p = sub.add_parser("deposit-address", parents=[out], help="your account's deposit address for an asset")
    p.add_argument("asset")

    sub.add_parser("balances", parents=[out], help="your balances, holds and what is available")

    p = sub.add_parser("trade", parents=[out], help="submit a DvP trade; prints its id")
    p.add_argument("--leg", action="append", required=True, metavar="PARTY:ASSET:QUANTITY",
                   help='a movement: PARTY (66 hex digits or "me") receives QUANTITY base units of ASSET '
                        "(negative: delivers); two or more")
    p.add_argument("--mode", required=True, choices=("gross", "net"),
                   help="gross: settles when the last party affirms; net: in the next netting cycle")
    deadline = p.add_mutually_exclusive_group()
    deadline.add_argument("--deadline-seconds", type=int, help="unwound if not settled (gross) or cut (net) within "
                                                               "this many seconds (default 3600)")
    deadline.add_argument("--deadline-ms", type=int, help="the same as an absolute Unix time in ms (to resend an "
                                                          "instruction exactly)")
    p.add_argument("--reference", default="", help="your own reference (at most 64 characters)")
    p.add_argument("--key-id", help="idempotency key: the same trade sent again gets the first outcome")
    p.add_argument("--affirm", action="store_true", help="also affirm it as this client")

    for name, what in (("affirm", "affirm a trade (holds what you deliver)"),
                       ("cancel", "cancel a trade not yet affirmed by every party")):
        p = sub.add_parser(name, parents=[out], help=what)
        p.add_argument("trade_id")
        p.add_argument("--key-id", help="idempotency key (default: a fresh one)")
    p = sub.add_parser("dispute", parents=[out], help="dispute an affirmed, unsettled trade")
    p.add_argument("trade_id")
    p.add_argument("--reason", required=True)
    p.add_argument("--key-id", help="idempotency key (default: a fresh one)")

    p = sub.add_parser("withdraw", parents=[out], help="withdraw from your account to a chain; prints its id")
    p.add_argument("asset")
    p.add_argument("amount", help="base units (an integer)")
    p.add_argument("--chain", required=True, help="CAIP-2 of the chain to be paid on, e.g. eip155:31337")
    p.add_argument("--to", required=True, dest="destination", help="the address paid")
    p.add_argument("--key-id", help="idempotency key: the same withdrawal sent again gets the first outcome")

    sub.add_parser("trades", parents=[out], help="your trades")
    p = sub.add_parser("trade-status", parents=[out], help="one of your trades")
    p.add_argument("trade_id")
    sub.add_parser("watch", parents=[out], help="your trades now, then every change (until Ctrl-C)")
    sub.add_parser("withdrawals", parents=[out], help="your withdrawals")

    # no `--json` flag here: `--json FILE` is where the report goes
    p = sub.add_parser("report", help="a cycle's settlement report (the bridge's admin clients only)")
    p.add_argument("cycle", help="the cycle number")
    p.add_argument("--csv", dest="csv_file", metavar="FILE", help="write the CSV report here")
    p.add_argument("--json", dest="json_file", metavar="FILE", help="write the JSON report here")

    p = sub.add_parser("proof", parents=[out], help="your balance proofs against the latest signed checkpoint")
    p.add_argument("--out", required=True, metavar="FILE", help='write the checkpoint file here ("-": stdout)')

    p = sub.add_parser("checkpoint", parents=[out], help="a cycle's checkpoint (default: the latest signed one)")
    p.add_argument("cycle", nargs="?", default="0")
    p.add_argument("--out", metavar="FILE", help="write the signed checkpoint file here")

    sub.add_parser("status", parents=[out], help="the node's settlement status")
    return parser


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    """An argparse type: a positive number (argparse turns the ValueError into a usage error)."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _int(text: str, what: str, *, positive: bool = False) -> int:
    """An integer in base units: decimal digits only (a ``1e18`` or ``0.5`` is a usage error, never
    rounded)."""
    body = text[1:] if text[:1] in "+-" else text
    if not body.isascii() or not body.isdigit():
        raise UsageError(f"{what} must be an integer (base units), not {text!r}")
    value = int(text)
    if positive and value <= 0:
        raise UsageError(f"{what} must be positive")
    return value


def _party(text: str, me: bytes) -> bytes:
    if text == "me":
        return me
    raw = text[2:] if text.lower().startswith("0x") else text
    try:
        party = bytes.fromhex(raw)
    except ValueError:
        party = b""
    if len(party) != 33 or party[0] not in (2, 3):
        raise UsageError(f'party {text!r} is not "me" nor a 33-byte compressed public key (66 hex digits)')
    return party


def parse_leg(text: str, me: bytes) -> tuple[bytes, str, int]:
    """``PARTY:ASSET:QUANTITY`` → a leg for the SDK."""
    parts = text.split(":")
    if len(parts) != 3 or not all(parts):
        raise UsageError(f"leg {text!r} is not PARTY:ASSET:QUANTITY")
    party, asset, quantity = parts
    value = _int(quantity, f"leg {text!r}: quantity")
    if value == 0:
        raise UsageError(f"leg {text!r}: quantity must not be zero")
    return _party(party, me), asset, value


def _trade_id(text: str) -> bytes:
    raw = text[2:] if text.lower().startswith("0x") else text
    try:
        tid = bytes.fromhex(raw)
    except ValueError:
        tid = b""
    if len(tid) != 32:
        raise UsageError(f"trade id {text!r} is not 32 bytes (64 hex digits)")
    return tid


# ------------------------------------------------------------------------------------ output


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], str] | str, *, lines: bool = False) -> None:
    """JSON (``--json``) or the text form; ``lines``: one compact JSON document per line (a stream)."""
    if args.as_json:
        _out(json.dumps(data, separators=(",", ":")) if lines else json.dumps(data, indent=2))
    else:
        _out(text() if callable(text) else text)


def _note(text: str) -> None:
    """Informational text for a person, kept off stdout so that stdout is only the answer."""
    print(text, file=sys.stderr)


def _short(party: bytes, me: bytes | None) -> str:
    return "me" if party == me else party.hex()[:16] + "…"


def _trade_dict(t: settlement_pb2.TradeStatus) -> dict[str, Any]:
    return to_dict(t)


def _trade_line(t: settlement_pb2.TradeStatus, me: bytes | None) -> str:
    legs = ", ".join(f"{_short(bytes(leg.party), me)} {int(leg.quantity):+d} {leg.asset}" for leg in t.legs)
    affirmed = f"{len(t.affirmed)}/{len({bytes(leg.party) for leg in t.legs})} affirmed"
    note = f" ({t.note})" if t.note else ""
    return f"{bytes(t.trade_id).hex()} {t.status:<9} {t.mode:<5} {affirmed}; {legs}{note}"


def _trade_text(t: settlement_pb2.TradeStatus, me: bytes | None) -> str:
    rows = [f"trade     {bytes(t.trade_id).hex()}", f"status    {t.status}" + (f" ({t.note})" if t.note else ""),
            f"mode      {t.mode}", f"deadline  {t.deadline_ms} ms ({_when(t.deadline_ms)})"]
    if t.cycle:
        rows.append(f"cycle     {t.cycle}" + (f", rolled {t.rolled} time(s)" if t.rolled else ""))
    if t.reference:
        rows.append(f"reference {t.reference}")
    affirmed = {bytes(a) for a in t.affirmed}
    for leg in t.legs:
        party = bytes(leg.party)
        mark = "affirmed" if party in affirmed else "not affirmed"
        rows.append(f"leg       {party.hex()}{' (me)' if party == me else ''} {int(leg.quantity):+d} {leg.asset} "
                    f"[{mark}]")
    return "\n".join(rows)


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _outcome(r: settlement_pb2.SubmitResponse) -> dict[str, Any]:
    return {"kind": r.kind, "accepted": r.accepted, "reason": r.reason, "ref": bytes(r.ref).hex(),
            "duplicate": r.duplicate, "batch_seq": r.batch_seq}


def _repeat(r: settlement_pb2.SubmitResponse) -> str:
    return " (an idempotent repeat: this is the first outcome, nothing changed)" if r.duplicate else ""


# ------------------------------------------------------------------------------------ commands


class _Session:
    """What a command needs: the parsed arguments, the client key (loaded only when a command
    signs) and the connected SDK client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._identity: PartyIdentity | None = None
        self._client: SettlementClient | None = None

    @property
    def identity(self) -> PartyIdentity:
        if self._identity is None:
            if not self.args.key:
                raise UsageError(f"`{self.args.command}` needs your client key: give --key FILE")
            self._identity = load_identity(Path(self.args.key))
        return self._identity

    @property
    def me(self) -> bytes:
        return self.identity.public_key

    @property
    def client(self) -> SettlementClient:
        if self._client is None:
            a = self.args
            if not a.target or not a.cert:
                raise UsageError("--target and --cert name the node to ask")
            cert = Path(a.cert).read_bytes()
            try:
                # the pinned certificate names the node; gRPC checks the server against that name
                server_name = a.server_name or certificate_node_id(cert)
            except (TLSError, ValueError) as exc:
                raise CommandError(f"{a.cert}: not a node certificate: {' '.join(str(exc).split())}") from None
            # reads need no key (checkpoint, status): a throwaway identity signs nothing there
            identity = self.identity if a.key or a.command not in ("checkpoint", "status") else \
                PartyIdentity.generate()
            self._client = SettlementClient(a.target, cert, identity=identity, server_name=server_name,
                                            timeout=a.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def submit(self, raw: bytes, resend: str) -> settlement_pb2.SubmitResponse:
        """Send one signed instruction. Not ordered in time, it may still be ordered later: the
        error names the exact command (``resend``, with its idempotency key) that gets its outcome."""
        try:
            # a node waits a minute at most (service.MAX_WAIT_MS); more would not fit the uint32 anyway
            return self.client.submit(raw, wait_ms=min(self.args.wait_ms, 60_000))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CommandError(f"DEADLINE_EXCEEDED: {exc.details()}; it may still be ordered: {resend} gets "
                                   "its outcome") from None
            raise


def _key_new(s: _Session) -> None:
    path = Path(s.args.file)
    if path.exists() or path.is_symlink():
        raise CommandError(f"{path} already exists; refusing to overwrite a key")
    identity = create_identity(path)
    public = identity.public_key.hex()
    _emit(s.args, {"public_key": public, "file": str(path)}, public)


def _open_account(s: _Session) -> None:
    key = s.args.key_id or "open-account"  # the SDK's: one account per client, opening it again is a repeat
    try:
        r = s.submit(s.client.open_account_bytes(s.args.label, key=key), f"open-account --key-id {key}")
    except SettlementRejected as exc:
        if s.args.key_id is None and "already used for a different instruction" in exc.response.reason:
            # the ledger's words for "you opened it before, with another label"
            raise CommandError("open-account rejected: this client's account is already open (with another "
                               "label)") from None
        raise
    _emit(s.args, _outcome(r), f"account open for {s.me.hex()}{_repeat(r)}")


def _deposit_address(s: _Session) -> None:
    r = s.client.deposit_address(s.args.asset)
    _emit(s.args, {"asset": s.args.asset, "address": r.address, "source_chain": r.source_chain},
          f"{r.address} ({s.args.asset} on {r.source_chain})")


def _balances(s: _Session) -> None:
    balances = s.client.balances()

    def text() -> str:
        rows = [f"{'asset':<8} {'balance':>24} {'held':>24} {'available':>24}"]
        rows += [f"{asset:<8} {b['balance']:>24} {b['held']:>24} {b['available']:>24}"
                 for asset, b in sorted(balances.items())]
        return "\n".join(rows)
    _emit(s.args, {asset: {k: str(v) for k, v in b.items()} for asset, b in balances.items()}, text)


def _trade(s: _Session) -> None:
    a = s.args
    legs = [parse_leg(text, s.me) for text in a.leg]
    if a.deadline_ms is not None:
        deadline_ms = a.deadline_ms
    else:
        seconds = 3600 if a.deadline_seconds is None else a.deadline_seconds
        if seconds <= 0:
            raise UsageError("--deadline-seconds must be positive")
        deadline_ms = int(time.time() * 1000) + seconds * 1000
    key = a.key_id or new_key("trade")
    raw = s.client.trade_bytes(legs, mode=a.mode, deadline_ms=deadline_ms, reference=a.reference, key=key)
    # the deadline is part of the instruction: resending it exactly needs the same one
    r = s.submit(raw, f"the same trade command with --key-id {key} --deadline-ms {deadline_ms}")
    tid = bytes(r.ref)
    affirmed = None
    if a.affirm:
        affirm_key = new_key("affirm")
        try:
            affirmed = s.submit(s.client.affirm_bytes(tid, key=affirm_key),
                                f"affirm {tid.hex()} --key-id {affirm_key}")
        except SettlementRejected as exc:
            raise CommandError(f"trade {tid.hex()} submitted, but {exc}") from None
        except CommandError as exc:
            raise CommandError(f"trade {tid.hex()} submitted, but affirming it failed: {exc}") from None
        except grpc.RpcError as exc:
            raise CommandError(f"trade {tid.hex()} submitted, but affirming it failed: {_rpc_text(exc)}") from None
    _emit(a, {"trade_id": tid.hex(), "submitted": _outcome(r), "affirmed": affirmed and _outcome(affirmed)},
          tid.hex())
    if not a.as_json:
        _note(f"{a.mode} trade submitted{_repeat(r)}" + ("; affirmed as this client" if affirmed is not None else
                                                          "; every party must now affirm it"))


def _on_trade(verb: str) -> Callable[[_Session], None]:
    def run(s: _Session) -> None:
        a = s.args
        tid = _trade_id(a.trade_id)
        # a fresh idempotency key by default: the SDK's fixed per-trade key would answer a second
        # affirmation (after a dispute, or after a rejection once funded) with the first outcome
        key = a.key_id or new_key(verb)
        if verb == "affirm":
            raw = s.client.affirm_bytes(tid, key=key)
        elif verb == "cancel":
            raw = s.client.cancel_bytes(tid, key=key)
        else:
            raw = s.client.dispute_bytes(tid, a.reason, key=key)
        again = f" --reason {json.dumps(a.reason)}" if verb == "dispute" else ""
        r = s.submit(raw, f"{verb} {tid.hex()}{again} --key-id {key}")
        done = {"affirm": "affirmed", "cancel": "cancelled", "dispute": "disputed"}[verb]
        _emit(a, _outcome(r), f"{done} {tid.hex()}{_repeat(r)}")
    return run


def _withdraw(s: _Session) -> None:
    a = s.args
    amount = _int(a.amount, "AMOUNT", positive=True)
    key = a.key_id or new_key("withdraw")
    r = s.submit(s.client.withdraw_bytes(a.asset, amount, a.chain, a.destination, key=key),
                 f"the same withdraw command with --key-id {key}")
    _emit(a, _outcome(r), bytes(r.ref).hex())
    if not a.as_json:
        _note(f"withdrawal of {amount} {a.asset} to {a.destination} on {a.chain} accepted{_repeat(r)}; "
              "follow it with `withdrawals`")


def _trades(s: _Session) -> None:
    trades = s.client.trades()
    me = s.me
    _emit(s.args, [_trade_dict(t) for t in trades],
          lambda: "\n".join(_trade_line(t, me) for t in trades) if trades else "no trades")


def _trade_status(s: _Session) -> None:
    t = s.client.trade(_trade_id(s.args.trade_id))
    me = s.me
    _emit(s.args, _trade_dict(t), lambda: _trade_text(t, me))


def _watch(s: _Session) -> None:
    me = s.me
    stream = s.client.watch_trades()
    try:
        for t in stream:
            _emit(s.args, _trade_dict(t), lambda t=t: _trade_line(t, me), lines=True)
    finally:
        stream.cancel()
    # only Ctrl-C ends a watch on purpose; a stream the node ended (it is shutting down) must not
    # look like success to a script that restarts the watch on failure
    raise CommandError("the node ended the stream (is it shutting down?); watch again")


def _withdrawals(s: _Session) -> None:
    found = s.client.withdrawals()

    def line(w: settlement_pb2.WithdrawalStatus) -> str:
        paid = f" txid {w.txid}" if w.txid else ""
        note = f" ({w.note})" if w.note else ""
        return (f"{bytes(w.withdrawal_id).hex()} {w.status:<8} {w.amount} {w.asset} to {w.destination} on "
                f"{w.destination_chain}{paid}{note}")
    _emit(s.args, [to_dict(w) for w in found], lambda: "\n".join(map(line, found)) if found else "no withdrawals")


def _report(s: _Session) -> None:
    a = s.args
    cycle = _int(a.cycle, "CYCLE", positive=True)
    r = s.client.cycle_report(cycle)
    written = []
    if a.csv_file:
        Path(a.csv_file).write_text(r.csv, encoding="utf-8")
        written.append(a.csv_file)
    if a.json_file:
        Path(a.json_file).write_text(r.json + "\n", encoding="utf-8")
        written.append(a.json_file)
    report = json.loads(r.json)

    def text() -> str:
        root = report["checkpoint"]["root"] if report.get("checkpoint") else "none yet"
        line = (f"cycle {report['cycle']} ({report['state']}): {len(report['settled_gross'])} gross and "
                f"{len(report['settled_net'])} net trade(s) settled, {len(report['rolled'])} rolled, "
                f"{len(report['disputed'])} disputed, {len(report['net_positions'])} net position(s); root {root}")
        return line + (f"\nwrote {', '.join(written)}" if written else "\n(--json FILE / --csv FILE save the report)")
    _emit(a, report, text)


def _proof(s: _Session) -> None:
    text = s.client.proof()
    try:
        found = cp.CheckpointFile.from_json(text)
    except cp.CheckpointError as exc:  # the node sent something no verifier would accept
        raise CommandError(f"the node's proof file is malformed: {exc}") from None
    c = found.signed.checkpoint
    if s.args.out == "-":
        _out(text.rstrip("\n"))
        return
    Path(s.args.out).write_text(text, encoding="utf-8")
    summary = {"file": s.args.out, "cycle": c.cycle, "root": "0x" + c.root.hex(), "proofs": len(found.proofs),
               "signed_by": _signer(found.signed), "verify": VERIFY_HINT.format(file=s.args.out)}
    _emit(s.args, summary, lambda: (
        f"wrote {s.args.out}: cycle {c.cycle}, root 0x{c.root.hex()}, {len(found.proofs)} balance proof(s), "
        f"signed by {summary['signed_by']}\nverify it (and that signer) with:\n  {summary['verify']}"))


def _signer(signed: cp.SignedCheckpoint) -> str:
    try:
        return signed.signer()
    except cp.CheckpointError as exc:
        return f"(unrecoverable: {exc})"


def _checkpoint(s: _Session) -> None:
    a = s.args
    cycle = _int(a.cycle, "CYCLE")
    if cycle < 0:
        raise UsageError("CYCLE must not be negative (0: the latest signed one)")
    r = s.client.checkpoint(cycle)
    c = cp.Checkpoint.from_bytes(bytes(r.checkpoint))
    signed = bool(r.signature)
    if a.out:
        if not r.json:
            raise CommandError(f"cycle {r.cycle}'s checkpoint is not signed yet: there is no file to verify")
        Path(a.out).write_text(r.json, encoding="utf-8")
    data: dict[str, Any] = {"cycle": r.cycle, "signed": signed, "checkpoint": c.to_dict(),
                            "signature": "0x" + bytes(r.signature).hex() if signed else None,
                            "published_tx": r.published_tx or None, "file": a.out}
    if r.json:
        data["signed_by"] = _signer(cp.CheckpointFile.from_json(r.json).signed)

    def text() -> str:
        rows = [f"cycle {r.cycle}: root 0x{c.root.hex()} (previous 0x{c.prev_root.hex()}), batch {c.batch_seq}, "
                f"{_when(c.time_ms)}"]
        rows += [f"  {asset}: total {total}, pending withdrawals {pending}" for asset, total, pending in c.totals]
        rows.append(f"signed by {data['signed_by']}" if signed else "not signed yet")
        if r.published_tx:
            rows.append(f"published in {r.published_tx}")
        if a.out:
            rows.append(f"wrote {a.out}; verify it with:\n  {VERIFY_HINT.format(file=a.out)}")
        return "\n".join(rows)
    _emit(a, data, text)


def _status(s: _Session) -> None:
    status = s.client.status()
    _emit(s.args, status, lambda: "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}"
                                            for k, v in sorted(status.items())))


COMMANDS: dict[str, Callable[[_Session], None]] = {
    "open-account": _open_account, "deposit-address": _deposit_address, "balances": _balances, "trade": _trade,
    "affirm": _on_trade("affirm"), "cancel": _on_trade("cancel"), "dispute": _on_trade("dispute"),
    "withdraw": _withdraw, "trades": _trades, "trade-status": _trade_status, "watch": _watch,
    "withdrawals": _withdrawals, "report": _report, "proof": _proof, "checkpoint": _checkpoint, "status": _status,
}


# ------------------------------------------------------------------------------------ errors


def _rpc_text(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    text = f"{name}: {details}"
    if code == grpc.StatusCode.UNAVAILABLE:
        text += " (is --target right, and --cert that node's certificate?)"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        text += " (try again, or a larger --timeout)"
    return text


def _fail(message: str, code: int) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> None:
    session = _Session(args)
    try:
        if args.command == "key":
            _key_new(session)
        else:
            COMMANDS[args.command](session)
    finally:
        session.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code (0 ok, 1 failed, 2 usage). Never raises, never a traceback."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error, already printed as one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        _run(args)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        stdout_closed()
        return 0
    except KeyboardInterrupt:
        return 0 if args.command == "watch" else 130
    except UsageError as exc:
        return _fail(f"{exc} (see --help)", EXIT_USAGE)
    except InvalidInput as exc:  # the SDK refused to sign what the arguments describe: nothing was sent
        return _fail(str(exc), EXIT_USAGE)
    except SettlementRejected as exc:
        return _fail(str(exc), EXIT_ERROR)
    except grpc.RpcError as exc:
        return _fail(_rpc_text(exc), EXIT_ERROR)
    except (CommandError, IdentityError, cp.CheckpointError) as exc:
        return _fail(str(exc), EXIT_ERROR)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", EXIT_ERROR)
    except Exception as exc:  # every failure is one line, never a traceback
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
