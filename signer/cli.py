"""`fusion-prime-wallet` (`python -m fusion_prime.signer.cli`): the wallet command line, on the SDK.

Local commands (no node needed)
  keys new --out FILE        make a client key (file mode 0600) and print its public key
  policy init --out FILE     write a node's policy file, checked by the daemon's own loader

Remote commands talk to one node over TLS (pinning that node's certificate) and sign every
request - reads included - with the client key read from ``--client-key`` (hex, mode 0600:
a file others may read is refused). The connection options go before or after the command.
  keys [list]                the keys this client may use on that node (label, epoch, pool)
  pubkey                     public key and addresses at a path
  sign-digest                sign a 32-byte digest
  sign-eip1559               sign an EIP-1559 transaction (fields or a JSON file): raw transaction
  sign-psbt                  sign a PSBT's inputs of the key: signed PSBT, finalized tx when complete
  create-key                 generate a t-of-n key; its phases are shown as they happen
  refresh, reshare           key administration
  status                     what the node knows of a request

Output is JSON on stdout. Errors are one line on stderr (no traceback): exit status 2 for a
usage, configuration or input error (nothing was sent), 1 when the node refused or failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..node.commandline import EXIT_USAGE, OneLineParser, one_line
from ..node.identity import IdentityError, create_identity, load_identity
from ..protocol.errors import InvalidInput
from .client import WalletClient, WalletError, create_key_with_progress, new_request_id
from .policy import PolicyBook, render_policy

if TYPE_CHECKING:
    from .ethereum import Eip1559Transaction
    from .psbt import Psbt

# The transaction helpers (signer.ethereum, signer.bitcoin, signer.psbt) are imported by the
# commands that use them: the daemon imports this module for its parser and must not depend
# on them.

EXIT_REMOTE = 1


class UsageError(Exception):
    """Bad options, configuration or input, found before anything was sent (exit 2)."""


# ----------------------------------------------------------------------------- input parsing
def _key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"key id {text!r} is not hex") from None
    if len(key) != 16:
        raise UsageError("key id must be 32 hex characters")
    return key


def _hex_bytes(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise UsageError(f"{what} is not hex") from None


def _public_key(text: str) -> bytes:
    key = _hex_bytes(text, f"public key {text!r}")
    if len(key) != 33 or key[0] not in (2, 3):
        raise UsageError(f"public key {text!r} is not a 33-byte compressed key (66 hex characters)")
    return key


def _uint(value: Any, what: str) -> int:
    """An integer field given as a JSON number, a decimal string or a 0x-hex string."""
    if isinstance(value, bool):
        raise UsageError(f"{what} must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value, 16) if value.lower().startswith("0x") else int(value)
        except ValueError:
            raise UsageError(f"{what} {value!r} is not an integer") from None
    else:
        raise UsageError(f"{what} must be an integer")
    if number < 0:
        raise UsageError(f"{what} must not be negative")
    return number


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path} is not JSON: {exc}") from None


# EIP-1559 fields: (command-line option / snake_case name, web3's camelCase name)
_TX_FIELDS = (("chain_id", "chainId"), ("nonce", "nonce"), ("max_fee_per_gas", "maxFeePerGas"),
              ("max_priority_fee_per_gas", "maxPriorityFeePerGas"), ("gas", "gas"), ("to", "to"),
              ("value", "value"), ("data", "data"), ("access_list", "accessList"))


def eip1559_from(args: argparse.Namespace) -> tuple[Eip1559Transaction, str | None]:
    """The transaction of ``--tx FILE`` (snake_case or web3's camelCase names) with any field
    given as an option on top, and the ``from`` address the file names, if any."""
    doc: dict[str, Any] = {}
    if args.tx is not None:
        loaded = _read_json(args.tx, "transaction file")
        if not isinstance(loaded, dict):
            raise UsageError(f"transaction file {args.tx} must hold a JSON object")
        known = {n for pair in _TX_FIELDS for n in pair} | {"from", "type"}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise UsageError(f"transaction file {args.tx}: unknown fields {', '.join(unknown)}")
        if loaded.get("type") not in (None, 2, "0x2", "0x02", "2"):
            raise UsageError("only EIP-1559 (type 2) transactions can be signed here")
        for snake, camel in _TX_FIELDS:
            if camel in loaded or snake in loaded:
                doc[snake] = loaded.get(snake, loaded.get(camel))
        sender = loaded.get("from")
    else:
        sender = None
    for snake, _ in _TX_FIELDS:
        given = getattr(args, snake, None)
        if given is not None:
            doc[snake] = given
    from .ethereum import Eip1559Transaction, EthereumError

    doc.setdefault("gas", 21_000)
    doc.setdefault("value", 0)
    missing = [n for n in ("chain_id", "nonce", "max_fee_per_gas", "max_priority_fee_per_gas") if n not in doc]
    if missing:
        raise UsageError("missing transaction fields: " + ", ".join(f"--{m.replace('_', '-')}" for m in missing))
    if "to" not in doc:
        raise UsageError("missing --to (a contract creation needs \"to\": null in a --tx file)")
    try:
        tx = Eip1559Transaction.create(
            chain_id=_uint(doc["chain_id"], "chain_id"), nonce=_uint(doc["nonce"], "nonce"),
            max_fee_per_gas=_uint(doc["max_fee_per_gas"], "max_fee_per_gas"),
            max_priority_fee_per_gas=_uint(doc["max_priority_fee_per_gas"], "max_priority_fee_per_gas"),
            gas=_uint(doc["gas"], "gas"), to=doc["to"], value=_uint(doc["value"], "value"),
            data=doc.get("data") or b"", access_list=doc.get("access_list") or ())
    except (EthereumError, InvalidInput, TypeError) as exc:
        raise UsageError(f"transaction: {one_line(exc)}") from None
    return tx, sender


def _input_paths(pairs: Sequence[str]) -> dict[int, str] | None:
    if not pairs:
        return None
    out: dict[int, str] = {}
    for pair in pairs:
        index, sep, path = pair.partition("=")
        if not sep or not index.isdigit() or not path:
            raise UsageError(f"--input-path {pair!r}: expected INDEX=PATH, e.g. 0=m/0/1")
        out[int(index)] = path
    return out


def _read_psbt(path: Path) -> Psbt:
    from .psbt import Psbt, PSBTError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"PSBT file {path}: {exc.strerror or exc}") from None
    try:
        if data.startswith(b"psbt\xff"):
            return Psbt.parse(data)
        return Psbt.from_base64(data.decode("ascii").strip())
    except (PSBTError, UnicodeDecodeError) as exc:
        raise UsageError(f"PSBT file {path}: {one_line(exc)}") from None


# ----------------------------------------------------------------------------- local commands
def cmd_keys_new(args: argparse.Namespace) -> Any:
    identity = create_identity(args.out)  # mode 0600, never overwrites
    return {"public_key": identity.public_key.hex(), "file": str(args.out)}


def cmd_policy_init(args: argparse.Namespace) -> Any:
    if args.out.exists() and not args.force:
        raise UsageError(f"{args.out} already exists (--force replaces it)")
    if not args.sign_client and not args.admin_client:
        raise UsageError("name at least one --sign-client or --admin-client")
    text = render_policy(sign_clients=[_public_key(c) for c in args.sign_client],
                         admin_clients=[_public_key(c) for c in args.admin_client],
                         max_signatures_per_window=args.max_signatures, window_seconds=args.window_seconds,
                         approvals_required=args.approvals_required,
                         approvers=[_public_key(a) for a in args.approver])
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    try:
        book = PolicyBook.load(tmp)  # the daemon's own loader: what it would refuse is refused here
    except InvalidInput as exc:
        tmp.unlink()
        raise UsageError(one_line(exc)) from None
    tmp.replace(args.out)
    return {"file": str(args.out), "sign_clients": sorted(c.hex() for c in book.default.clients),
            "admin_clients": sorted(c.hex() for c in book.create_key_clients),
            "max_signatures_per_window": book.default.max_signatures_per_window,
            "window_seconds": book.default.window_seconds, "approvals_required": book.default.approvals_required}


# ----------------------------------------------------------------------------- remote commands
def _connect(args: argparse.Namespace) -> WalletClient:
    missing = [f"--{n.replace('_', '-')}" for n in ("target", "server_cert", "client_key")
               if getattr(args, n, None) is None]
    if missing:
        raise UsageError(f"'{args.command}' talks to a node: give {', '.join(missing)}")
    identity = load_identity(Path(args.client_key))  # refuses a key file others may read
    try:
        cert = Path(args.server_cert).read_bytes()
    except OSError as exc:
        raise UsageError(f"server certificate {args.server_cert}: {exc.strerror or exc}") from None
    return WalletClient(args.target, cert, identity, server_name=args.server_name)


def _key_info(k: Any) -> dict[str, Any]:
    return {"key_id": k.key_id.hex(), "label": k.label, "epoch": k.epoch, "threshold": k.threshold,
            "parties": list(k.parties), "public_key": k.group_public_key.hex(),
            "presignatures": k.presignatures_available}


def _update(u: Any) -> dict[str, Any]:
    return {"state": u.state, "phase": u.phase, "detail": u.detail, "culprits": list(u.culprits)}


def cmd_keys_list(w: WalletClient, args: argparse.Namespace) -> Any:
    return [_key_info(k) for k in w.list_keys()]


def cmd_pubkey(w: WalletClient, args: argparse.Namespace) -> Any:
    r = w.public_key(_key(args.key), args.path, args.network)
    return {"public_key": r.public_key.hex(), "ethereum_address": r.ethereum_address,
            "bitcoin_address": r.bitcoin_address, "path": r.path}


def cmd_sign_digest(w: WalletClient, args: argparse.Namespace) -> Any:
    digest = _hex_bytes(args.digest, "digest")
    if len(digest) != 32:
        raise UsageError("digest must be 32 bytes (64 hex characters)")
    sig = w.sign(_key(args.key), digest, args.path, request_id=args.request_id)
    return {"r": f"{sig.r:064x}", "s": f"{sig.s:064x}", "recovery_id": sig.recovery_id,
            "public_key": sig.public_key.to_bytes().hex()}


def cmd_sign_eip1559(w: WalletClient, args: argparse.Namespace) -> Any:
    from .ethereum import sign_transaction

    tx, sender = eip1559_from(args)
    signer = w.signer(_key(args.key))
    if sender is not None:
        own = w.public_key(signer.key_id, args.path).ethereum_address
        if sender.lower() != own.lower():
            raise UsageError(f"the transaction is from {sender}, but the key's address at {args.path} is {own}")
    signed = sign_transaction(tx, signer, args.path)
    return {"raw": signed.raw_hex, "hash": "0x" + signed.hash.hex(), "from": signed.sender, "path": args.path}


def cmd_sign_psbt(w: WalletClient, args: argparse.Namespace) -> Any:
    from .psbt import Psbt, PSBTError, extract_transaction, finalize_psbt, sign_psbt

    paths = _input_paths(args.input_path)
    psbt = _read_psbt(args.psbt)
    signer = w.signer(_key(args.key))
    try:
        signed = sign_psbt(psbt, signer, paths)
    except PSBTError as exc:
        raise UsageError(f"PSBT: {one_line(exc)}") from None
    out: dict[str, Any] = {"signed_inputs": signed, "complete": False}
    if not signed:
        raise UsageError("no input of this PSBT belongs to this key (give --input-path INDEX=PATH)")
    if not args.no_finalize:
        final = Psbt.parse(psbt.serialize())  # finalize a copy: all or nothing
        try:
            finalize_psbt(final)
            tx = extract_transaction(final)
        except PSBTError as exc:  # inputs of other signers still unsigned: hand the partial PSBT on
            out["not_final"] = one_line(exc)
        else:
            psbt = final
            out.update(complete=True, tx=tx.serialize().hex(), txid=tx.txid_hex)
    out["psbt"] = psbt.to_base64()
    if args.out is not None:
        args.out.write_text(out["psbt"] + "\n")
        out["file"] = str(args.out)
    return out


def cmd_create_key(w: WalletClient, args: argparse.Namespace) -> Any:
    request_id = args.request_id or new_request_id()
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    r = create_key_with_progress(w, args.threshold, args.parties, args.label, request_id, progress)
    return {"key_id": r.key_id.hex(), "label": args.label, "public_key": r.group_public_key.hex(),
            "threshold": r.threshold, "parties": list(r.parties), "request_id": request_id}


def cmd_refresh(w: WalletClient, args: argparse.Namespace) -> Any:
    return _update(w.refresh(_key(args.key), request_id=args.request_id))


def cmd_reshare(w: WalletClient, args: argparse.Namespace) -> Any:
    parties = [p for p in args.parties.split(",") if p]
    return _update(w.reshare(_key(args.key), parties, args.threshold, request_id=args.request_id))


def cmd_status(w: WalletClient, args: argparse.Namespace) -> Any:
    return [_update(u) for u in w.status(args.request_id)]


# ----------------------------------------------------------------------------- the parser
def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--target", default=default, help="host:port of a node's wallet API")
    parser.add_argument("--server-cert", default=default, help="that node's TLS certificate (PEM)")
    parser.add_argument("--server-name", default=default, help="the node id in its certificate")
    parser.add_argument("--client-key", default=default, help="file with the client secret key (hex, mode 0600)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fusion-prime-wallet", description=__doc__.splitlines()[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(
                               __doc__.splitlines()[1:]))
    _connection_options(parser, None)
    remote = OneLineParser(add_help=False)
    _connection_options(remote, argparse.SUPPRESS)  # the same options after the command
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", parents=[remote], help="list keys (default) or make a client key")
    keys_sub = keys.add_subparsers(dest="keys_command")
    keys_sub.add_parser("list", parents=[remote], help="the keys this client may use on the node")
    p = keys_sub.add_parser("new", help="make a client key file (mode 0600); prints the public key")
    p.add_argument("--out", type=Path, required=True)

    policy = sub.add_parser("policy", help="policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    p = policy_sub.add_parser("init", help="write a policy file (checked by the daemon's loader)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sign-client", action="append", default=[], help="a client public key (hex) that may sign")
    p.add_argument("--admin-client", action="append", default=[],
                   help="a client public key (hex) that may create, refresh and reshare keys")
    p.add_argument("--max-signatures", type=int, default=100, help="signatures per client per window")
    p.add_argument("--window-seconds", type=int, default=3600)
    p.add_argument("--approvals-required", type=int, default=0)
    p.add_argument("--approver", action="append", default=[], help="an operator approval key (hex)")
    p.add_argument("--force", action="store_true", help="replace an existing file")

    p = sub.add_parser("pubkey", parents=[remote], help="public key and addresses at a path")
    p.add_argument("--key", required=True)
    p.add_argument("--path", default="m")
    p.add_argument("--network", default="regtest")

    p = sub.add_parser("sign-digest", parents=[remote], help="sign a 32-byte digest (hex) at a path")
    p.add_argument("--key", required=True)
    p.add_argument("--digest", required=True)
    p.add_argument("--path", default="m")
    p.add_argument("--request-id")

    p = sub.add_parser("sign-eip1559", parents=[remote], help="sign an EIP-1559 transaction")
    p.add_argument("--key", required=True)
    p.add_argument("--path", required=True, help="the derivation path of the sending address")
    p.add_argument("--tx", type=Path, help="JSON file with the fields (snake_case or web3 camelCase)")
    p.add_argument("--chain-id", dest="chain_id")
    p.add_argument("--nonce")
    p.add_argument("--max-fee-per-gas", dest="max_fee_per_gas")
    p.add_argument("--max-priority-fee-per-gas", dest="max_priority_fee_per_gas")
    p.add_argument("--gas", help="gas limit (default 21000)")
    p.add_argument("--to", help="recipient address")
    p.add_argument("--value", help="wei (default 0)")
    p.add_argument("--data", help="call data (hex)")

    p = sub.add_parser("sign-psbt", parents=[remote], help="sign (and finalize) a PSBT")
    p.add_argument("--key", required=True)
    p.add_argument("--psbt", type=Path, required=True, help="PSBT file (base64 or binary)")
    p.add_argument("--input-path", action="append", default=[], metavar="INDEX=PATH",
                   help="sign this input with the key at PATH (default: inputs whose BIP32 origin is this key)")
    p.add_argument("--no-finalize", action="store_true", help="keep the partial signatures (other signers follow)")
    p.add_argument("--out", type=Path, help="also write the resulting PSBT (base64) here")

    p = sub.add_parser("create-key", parents=[remote], help="generate a new t-of-n key (progress on stderr)")
    p.add_argument("--threshold", type=int, required=True)
    p.add_argument("--parties", type=int, required=True)
    p.add_argument("--label", default="")
    p.add_argument("--request-id")
    p.add_argument("--quiet", action="store_true", help="no progress lines")

    p = sub.add_parser("refresh", parents=[remote], help="refresh a key's shares (same key, new epoch)")
    p.add_argument("--key", required=True)
    p.add_argument("--request-id")

    p = sub.add_parser("reshare", parents=[remote], help="move a key to a new committee or threshold")
    p.add_argument("--key", required=True)
    p.add_argument("--parties", required=True, help="node ids of the new committee, comma-separated")
    p.add_argument("--threshold", type=int, required=True)
    p.add_argument("--request-id")

    p = sub.add_parser("status", parents=[remote], help="what the node knows of a request")
    p.add_argument("--request-id", required=True)
    return parser


REMOTE: dict[str, Callable[[WalletClient, argparse.Namespace], Any]] = {
    "keys": cmd_keys_list, "pubkey": cmd_pubkey, "sign-digest": cmd_sign_digest, "sign-eip1559": cmd_sign_eip1559,
    "sign-psbt": cmd_sign_psbt, "create-key": cmd_create_key, "refresh": cmd_refresh, "reshare": cmd_reshare,
    "status": cmd_status,
}


def run(args: argparse.Namespace) -> Any:
    if args.command == "keys" and args.keys_command == "new":
        return cmd_keys_new(args)
    if args.command == "policy":
        return cmd_policy_init(args)
    with _connect(args) as w:
        return REMOTE[args.command](w, args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = run(args)
    except WalletError as exc:  # the node refused or failed (NOT_FOUND, PERMISSION_DENIED, UNAVAILABLE...)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_REMOTE
    except (UsageError, IdentityError, OSError, ValueError) as exc:
        # ValueError: InvalidInput and the helpers' BitcoinError, EthereumError, PSBTError -
        # except a signature the helpers refused to use, which is the node's doing
        helpers = sys.modules.get(f"{__package__}.bitcoin")  # loaded if a helper raised it
        if helpers is not None and isinstance(exc, helpers.RemoteSignatureError):
            print(f"error: the node's signature was refused: {one_line(exc)}", file=sys.stderr)
            return EXIT_REMOTE
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_REMOTE
    except Exception as exc:  # a bug: still one line, never a traceback with a client's data in it
        print(f"error: internal error ({type(exc).__name__}: {one_line(exc)})", file=sys.stderr)
        return EXIT_REMOTE
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
