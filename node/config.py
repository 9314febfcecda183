"""The node's configuration: one TOML file per node.

Relative paths in the file are resolved against the file's own folder, so a node's folder
can be moved or mounted elsewhere as a whole. Validation collects *every* problem and
raises one :class:`ConfigError` that lists them with their TOML path, because an operator
fixing a config one error per restart is an operator who gives up.

Example::

    node_id = "alice"
    listen = "127.0.0.1:7001"
    data_dir = "data"
    identity_key = "identity.key"
    tls_cert = "tls.crt"
    tls_key = "tls.key"
    security_level = "128"
    presign_pool_depth = 8
    prime_pool_depth = 4                          # safe primes kept ready (2 per aux info / refresh)
    round_deadline_seconds = 30.0                 # x4 for aux info, refresh and reshare rounds

    [storage]
    passphrase_env = "FUSION_PRIME_PASSPHRASE"   # or: key_file = "storage.key"

    [metrics]
    listen = "127.0.0.1:9101"                     # loopback only

    [[roster]]
    node_id = "alice"
    index = 1
    address = "127.0.0.1:7001"
    identity_public_key = "02…"                   # 33-byte compressed secp256k1, hex
    tls_cert = "peers/alice.crt"
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ..protocol.errors import InsecureParameters
from ..protocol.levels import SecurityLevel, level_by_name

NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEFAULT_PASSPHRASE_ENV = "FUSION_PRIME_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
MIN_SCRYPT_LOG2_N = 15
DEFAULT_PRIME_POOL_DEPTH = 4  # two aux-info or refresh sessions' worth of safe primes
MAX_PRIME_POOL_DEPTH = 256


class ConfigError(ValueError):
    """The configuration is invalid; ``problems`` lists each issue with its TOML path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid node configuration {source}:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class PeerEntry:
    """One roster entry: who a node is, where it listens, and what it proves itself with."""

    node_id: str
    index: int
    address: str
    identity_public_key: bytes
    tls_cert: Path

    def tls_cert_pem(self) -> bytes:
        return self.tls_cert.read_bytes()


@dataclass(frozen=True)
class StorageKeySource:
    """Where the storage encryption key comes from: exactly one of the two."""

    passphrase_env: str | None = None
    key_file: Path | None = None
    scrypt_log2_n: int = MIN_SCRYPT_LOG2_N


@dataclass(frozen=True)
class NodeConfig:
    path: Path
    node_id: str
    listen: str
    data_dir: Path
    identity_key: Path
    tls_cert: Path
    tls_key: Path
    roster: tuple[PeerEntry, ...]
    storage: StorageKeySource
    metrics_listen: str | None = None
    security_level: str = "128"
    presign_pool_depth: int = 8
    prime_pool_depth: int = DEFAULT_PRIME_POOL_DEPTH
    round_deadline_seconds: float = 30.0
    test_mode: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def me(self) -> PeerEntry:
        return self.peer(self.node_id)

    def peer(self, node_id: str) -> PeerEntry:
        for entry in self.roster:
            if entry.node_id == node_id:
                return entry
        raise KeyError(node_id)

    @property
    def peers(self) -> tuple[PeerEntry, ...]:
        return tuple(e for e in self.roster if e.node_id != self.node_id)

    @property
    def level(self) -> SecurityLevel:
        return level_by_name(self.security_level)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "node.sqlite3"


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); raises ValueError with a reason."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected host:port")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise ValueError("missing host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not 1-65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Reader:
    """Typed access to a TOML table that records problems instead of raising at the first."""

    def __init__(self, data: dict[str, Any], prefix: str, problems: list[str]) -> None:
        self.data, self.prefix, self.problems = data, prefix, problems

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def get(self, key: str, kind: type | tuple[type, ...], *, required: bool = True, default: Any = None) -> Any:
        if key not in self.data:
            if required:
                self.problems.append(f"{self._name(key)}: missing")
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            self.problems.append(f"{self._name(key)}: expected a number, got a boolean")
            return default
        if not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.problems.append(f"{self._name(key)}: expected {expected}, got {type(value).__name__}")
            return default
        return value

    def unknown(self, known: set[str]) -> None:
        for key in sorted(set(self.data) - known):
            self.problems.append(f"{self._name(key)}: unknown setting (typo?)")


def _path(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


_TOP_KEYS = {
    "node_id", "listen", "data_dir", "identity_key", "tls_cert", "tls_key", "security_level",
    "presign_pool_depth", "prime_pool_depth", "round_deadline_seconds", "test_mode", "storage", "metrics", "roster",
}


def parse_config(data: dict[str, Any], path: Path) -> NodeConfig:
    """Validate a parsed TOML document; ``path`` locates relative paths and names errors."""
    problems: list[str] = []
    base = path.resolve().parent
    top = _Reader(data, "", problems)
    top.unknown(_TOP_KEYS)
    node_id = top.get("node_id", str, default="")
    if node_id and not NODE_ID_RE.match(node_id):
        problems.append(f"node_id: {node_id!r} must be 1-63 chars of a-z, 0-9 and '-', not starting with '-'")
    listen = top.get("listen", str, default="")
    if listen:
        try:
            parse_address(listen)
        except ValueError as exc:
            problems.append(f"listen: {listen!r}: {exc}")
    data_dir = _path(base, top.get("data_dir", str, default="data"))
    identity_key = _path(base, top.get("identity_key", str, default="identity.key"))
    tls_cert = _path(base, top.get("tls_cert", str, default="tls.crt"))
    tls_key = _path(base, top.get("tls_key", str, default="tls.key"))
    test_mode = top.get("test_mode", bool, required=False, default=False)
    level_name = top.get("security_level", str, required=False, default="128")
    try:
        level = level_by_name(level_name)
        if level.test_only and not test_mode:
            problems.append(
                f"security_level: {level_name!r} is a test-only level (small Paillier moduli); "
                "the node refuses it unless test_mode = true"
            )
    except InsecureParameters as exc:
        problems.append(f"security_level: {exc}")
    depth = top.get("presign_pool_depth", int, required=False, default=8)
    if isinstance(depth, int) and not 0 <= depth <= 10_000:
        problems.append(f"presign_pool_depth: {depth} is not in 0..10000")
    prime_depth = top.get("prime_pool_depth", int, required=False, default=DEFAULT_PRIME_POOL_DEPTH)
    if isinstance(prime_depth, int) and not 0 <= prime_depth <= MAX_PRIME_POOL_DEPTH:
        problems.append(f"prime_pool_depth: {prime_depth} is not in 0..{MAX_PRIME_POOL_DEPTH} (0 disables the pool)")
    deadline = top.get("round_deadline_seconds", (int, float), required=False, default=30.0)
    if isinstance(deadline, (int, float)) and not 0.05 <= deadline <= 3600:
        problems.append(f"round_deadline_seconds: {deadline} is not in 0.05..3600")

    storage_raw = top.get("storage", dict, required=False, default={"passphrase_env": DEFAULT_PASSPHRASE_ENV})
    st = _Reader(storage_raw or {}, "storage.", problems)
    st.unknown({"passphrase_env", "key_file", "scrypt_log2_n"})
    passphrase_env = st.get("passphrase_env", str, required=False)
    key_file = _path(base, st.get("key_file", str, required=False))
    log2_n = st.get("scrypt_log2_n", int, required=False, default=MIN_SCRYPT_LOG2_N)
    if (passphrase_env is None) == (key_file is None):
        problems.append("storage: set exactly one of passphrase_env (operator passphrase) or key_file")
    if isinstance(log2_n, int) and not (MIN_SCRYPT_LOG2_N <= log2_n <= 22 or (test_mode and 4 <= log2_n)):
        problems.append(
            f"storage.scrypt_log2_n: {log2_n} is outside {MIN_SCRYPT_LOG2_N}..22 "
            "(lower values are allowed only with test_mode = true)"
        )

    metrics_raw = top.get("metrics", dict, required=False, default={})
    mt = _Reader(metrics_raw or {}, "metrics.", problems)
    mt.unknown({"listen"})
    metrics_listen = mt.get("listen", str, required=False)
    if metrics_listen is not None:
        try:
            host, _ = parse_address(metrics_listen)
            if not is_loopback(host):
                problems.append(f"metrics.listen: {metrics_listen!r} must be a loopback address")
        except ValueError as exc:
            problems.append(f"metrics.listen: {metrics_listen!r}: {exc}")

    roster: list[PeerEntry] = []
    roster_raw = top.get("roster", list, default=[])
    for i, entry in enumerate(roster_raw or []):
        prefix = f"roster[{i}]."
        if not isinstance(entry, dict):
            problems.append(f"roster[{i}]: expected a table")
            continue
        r = _Reader(entry, prefix, problems)
        r.unknown({"node_id", "index", "address", "identity_public_key", "tls_cert"})
        peer_id = r.get("node_id", str, default="")
        if peer_id and not NODE_ID_RE.match(peer_id):
            problems.append(f"{prefix}node_id: {peer_id!r} is not a valid node id")
        index = r.get("index", int, default=0)
        if isinstance(index, int) and not 1 <= index < 2**31:
            problems.append(f"{prefix}index: {index} must be a positive party index")
        address = r.get("address", str, default="")
        if address:
            try:
                parse_address(address)
            except ValueError as exc:
                problems.append(f"{prefix}address: {address!r}: {exc}")
        pub_hex = r.get("identity_public_key", str, default="")
        pub = b""
        if pub_hex:
            try:
                pub = bytes.fromhex(pub_hex)
            except ValueError:
                problems.append(f"{prefix}identity_public_key: not hex")
            if pub and (len(pub) != 33 or pub[0] not in (2, 3)):
                problems.append(f"{prefix}identity_public_key: expected a 33-byte compressed secp256k1 key")
        cert = _path(base, r.get("tls_cert", str, default=None))
        if cert is not None and not cert.is_file():
            problems.append(f"{prefix}tls_cert: {cert} does not exist")
        roster.append(PeerEntry(peer_id, index, address, pub, cert or Path()))
    for what in ("node_id", "index", "address", "identity_public_key"):
        seen: dict[Any, int] = {}
        for i, e in enumerate(roster):
            value = getattr(e, what)
            if value in seen:
                problems.append(f"roster[{i}].{what}: duplicates roster[{seen[value]}]")
            seen.setdefault(value, i)
    if node_id and roster and node_id not in {e.node_id for e in roster}:
        problems.append(f"roster: this node ({node_id!r}) has no roster entry")
    if not roster:
        problems.append("roster: at least this node's own entry is required")

    if problems:
        raise ConfigError(str(path), problems)
    return NodeConfig(
        path=path.resolve(),
        node_id=node_id,
        listen=listen,
        data_dir=data_dir,  # type: ignore[arg-type]
        identity_key=identity_key,  # type: ignore[arg-type]
        tls_cert=tls_cert,  # type: ignore[arg-type]
        tls_key=tls_key,  # type: ignore[arg-type]
        roster=tuple(roster),
        storage=StorageKeySource(passphrase_env, key_file, log2_n),
        metrics_listen=metrics_listen,
        security_level=level_name,
        presign_pool_depth=depth,
        prime_pool_depth=prime_depth,
        round_deadline_seconds=float(deadline),
        test_mode=test_mode,
    )


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse_config(data, path)


def config_to_toml(cfg: NodeConfig) -> str:
    """Serialise a config with paths relative to the config file's folder where possible."""
    base = cfg.path.parent

    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(base))
        except ValueError:
            return str(p)

    storage: dict[str, Any] = {}
    if cfg.storage.passphrase_env:
        storage["passphrase_env"] = cfg.storage.passphrase_env
    if cfg.storage.key_file:
        storage["key_file"] = rel(cfg.storage.key_file)
    if cfg.storage.scrypt_log2_n != MIN_SCRYPT_LOG2_N:
        storage["scrypt_log2_n"] = cfg.storage.scrypt_log2_n
    doc: dict[str, Any] = {
        "node_id": cfg.node_id,
        "listen": cfg.listen,
        "data_dir": rel(cfg.data_dir),
        "identity_key": rel(cfg.identity_key),
        "tls_cert": rel(cfg.tls_cert),
        "tls_key": rel(cfg.tls_key),
        "security_level": cfg.security_level,
        "presign_pool_depth": cfg.presign_pool_depth,
        "prime_pool_depth": cfg.prime_pool_depth,
        "round_deadline_seconds": cfg.round_deadline_seconds,
        "test_mode": cfg.test_mode,
        "storage": storage,
    }
    if cfg.metrics_listen:
        doc["metrics"] = {"listen": cfg.metrics_listen}
    doc["roster"] = [
        {
            "node_id": e.node_id,
            "index": e.index,
            "address": e.address,
            "identity_public_key": e.identity_public_key.hex(),
            "tls_cert": rel(e.tls_cert),
        }
        for e in cfg.roster
    ]
    return tomli_w.dumps(doc)


# Deployment: advertised addresses and the roster entries operators exchange -------------------

ROSTER_ENTRY_TABLE = "roster_entry"


class RosterEntryError(ValueError):
    """A roster entry document is malformed, inconsistent, or clashes with the roster; the
    message is one line naming the file and the reason (nothing was changed)."""


def is_unspecified(host: str) -> bool:
    """0.0.0.0, ::, or an empty host: fine to bind, never an address a peer can dial."""
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def check_advertised(address: str) -> tuple[str, int]:
    """``host:port`` that peers can dial; raises ValueError with a one-line reason."""
    host, port = parse_address(address)
    if is_unspecified(host):
        raise ValueError(f"{address!r} is an unspecified address: peers cannot dial it; "
                         "advertise this host's own address or DNS name")
    return host, port


def host_covered(host: str, dns_names: set[str], ip_addresses: set[str]) -> bool:
    """Whether a certificate naming ``dns_names``/``ip_addresses`` names ``host``."""
    try:
        return str(ipaddress.ip_address(host)) in {str(ipaddress.ip_address(a)) for a in ip_addresses}
    except ValueError:
        return host.lower().rstrip(".") in {d.lower().rstrip(".") for d in dns_names}


@dataclass(frozen=True)
class RosterEntryDocument:
    """One node's roster entry as a self-contained document: what ``roster export`` prints and
    ``roster add`` takes. The certificate travels inline so that one file is one node - the
    six pastes and certificate copies of a three-node roster become three files."""

    node_id: str
    index: int
    address: str
    identity_public_key: bytes
    tls_cert_pem: bytes

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate, colon-separated: what operators compare out of band."""
        from .tls import fingerprint

        return ":".join(f"{b:02X}" for b in fingerprint(self.tls_cert_pem))

    def to_toml(self) -> str:
        pem = self.tls_cert_pem.decode("ascii").strip()
        return (
            "# fusion-prime roster entry: give this file to the other operators, who run\n"
            "#   fusion-prime-node roster add --config node.toml <this file>\n"
            f"# and compare the certificate fingerprint with you out of band:\n#   {self.fingerprint}\n"
            f"[{ROSTER_ENTRY_TABLE}]\n"
            f'node_id = "{self.node_id}"\n'
            f"index = {self.index}\n"
            f'address = "{self.address}"\n'
            f'identity_public_key = "{self.identity_public_key.hex()}"\n'
            f'tls_cert_sha256 = "{self.fingerprint}"\n'
            f'tls_cert = """\n{pem}\n"""\n'
        )

    @classmethod
    def parse(cls, text: str, source: str) -> RosterEntryDocument:
        """Parse and check one entry on its own: types, node id, address (not unspecified),
        identity key on the curve, certificate that parses, names this node id and the
        address's host, and matches the fingerprint written beside it."""
        from coincurve import PublicKey

        from .tls import TLSError, certificate_hosts, certificate_node_id

        def bad(reason: str) -> RosterEntryError:
            return RosterEntryError(f"{source}: {reason}")

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise bad(f"not a roster entry (not valid TOML: {exc})") from None
        entry = data.get(ROSTER_ENTRY_TABLE)
        if not isinstance(entry, dict):
            raise bad(f"not a roster entry (no [{ROSTER_ENTRY_TABLE}] table)")
        known = {"node_id", "index", "address", "identity_public_key", "tls_cert", "tls_cert_sha256"}
        if set(entry) - known:
            raise bad(f"unknown fields {sorted(set(entry) - known)}")
        for name, kind in (("node_id", str), ("index", int), ("address", str), ("identity_public_key", str),
                           ("tls_cert", str)):
            if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
                raise bad(f"{name} is missing or not a {kind.__name__}")
        node_id, index, address = entry["node_id"], entry["index"], entry["address"]
        if not NODE_ID_RE.match(node_id):
            raise bad(f"node_id {node_id!r} is not a valid node id")
        if not 1 <= index < 2**31:
            raise bad(f"index {index} is not a positive party index")
        try:
            host, _ = check_advertised(address)
        except ValueError as exc:
            raise bad(f"address: {exc}") from None
        try:
            public_key = bytes.fromhex(entry["identity_public_key"])
            if len(public_key) != 33 or public_key[0] not in (2, 3):
                raise ValueError
            PublicKey(public_key)
        except ValueError:
            raise bad("identity_public_key is not a compressed secp256k1 public key") from None
        pem = (entry["tls_cert"].strip() + "\n").encode("ascii", "replace")
        try:
            named = certificate_node_id(pem)
            dns_names, ips = certificate_hosts(pem)
        except (TLSError, ValueError) as exc:
            raise bad(f"tls_cert does not parse as a node certificate ({' '.join(str(exc).split())})") from None
        if named != node_id:
            raise bad(f"the certificate names node {named!r}, not {node_id!r}")
        if not host_covered(host, dns_names, ips):
            shown = ", ".join(sorted(dns_names | ips))
            raise bad(f"the certificate does not name the address host {host!r} (it names {shown}); "
                      "that node must run init --advertise with this address")
        doc = cls(node_id, index, address, public_key, pem)
        written = entry.get("tls_cert_sha256")
        if written is not None and (not isinstance(written, str) or written.upper() != doc.fingerprint):
            raise bad("tls_cert_sha256 is not the fingerprint of tls_cert (damaged in transit?)")
        return doc

    @classmethod
    def of_peer(cls, entry: PeerEntry) -> RosterEntryDocument:
        return cls(entry.node_id, entry.index, entry.address, entry.identity_public_key, entry.tls_cert_pem())


def export_roster_entry(cfg: NodeConfig) -> RosterEntryDocument:
    """This node's own entry, checked as a receiver will check it (so a certificate that does
    not name the advertised host is found here, not by every other operator)."""
    doc = RosterEntryDocument.of_peer(cfg.me)
    return RosterEntryDocument.parse(doc.to_toml(), f"{cfg.path} (this node's entry)")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` through a temporary sibling and a rename: a reader (the daemon on
    SIGHUP) sees the old file or the new one, never half of one."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class RosterAddition:
    """What ``add_roster_entries`` did with one document."""

    document: RosterEntryDocument
    source: str
    added: bool  # False: the roster already held exactly this entry


def add_roster_entries(config_path: Path, documents: list[tuple[str, str]]) -> list[RosterAddition]:
    """Merge roster entry documents ``(source name, text)`` into the config at ``config_path``.

    Every document is checked on its own and against the roster and the other documents (no
    second node id, index, address, identity key or certificate); an entry identical to one the
    roster holds is left as it is. Only if all pass are the certificates written beside the
    config (``peers/<id>.crt``, as the config format expects) and then the config, each through
    a rename; the new config is validated before it replaces the old one. Any refusal raises
    :class:`RosterEntryError` and changes nothing."""
    import os

    cfg = load_config(config_path)
    from .tls import fingerprint

    existing = {e.node_id: RosterEntryDocument.of_peer(e) for e in cfg.roster}
    taken: dict[tuple[str, Any], str] = {}
    for doc in existing.values():
        for what, value in _identity_fields(doc, fingerprint):
            taken[(what, value)] = f"roster entry {doc.node_id!r}"
    results: list[RosterAddition] = []
    for source, text in documents:
        doc = RosterEntryDocument.parse(text, source)
        held = existing.get(doc.node_id)
        if held is not None and _identity_fields(held, fingerprint) == _identity_fields(doc, fingerprint):
            results.append(RosterAddition(doc, source, added=False))
            continue
        for what, value in _identity_fields(doc, fingerprint):
            holder = taken.get((what, value))
            if holder is not None:
                shown = value.hex() if isinstance(value, bytes) else value
                raise RosterEntryError(f"{source}: {what} {shown!r} is already used by {holder}; nothing was changed")
        for what, value in _identity_fields(doc, fingerprint):
            taken[(what, value)] = f"{source} ({doc.node_id!r})"
        results.append(RosterAddition(doc, source, added=True))
    new = [r.document for r in results if r.added]
    if not new:
        return results

    peers_dir = cfg.path.parent / "peers"
    referenced = {e.tls_cert.resolve() for e in cfg.roster}
    cert_paths = {doc.node_id: peers_dir / f"{doc.node_id}.crt" for doc in new}
    for path in cert_paths.values():
        if path.resolve() in referenced:
            raise RosterEntryError(f"{path} is already a roster certificate of another entry; nothing was changed")
    text = cfg.path.read_text()
    appended = text.rstrip("\n") + "\n" + "".join(
        f'\n[[roster]]\nnode_id = "{d.node_id}"\nindex = {d.index}\naddress = "{d.address}"\n'
        f'identity_public_key = "{d.identity_public_key.hex()}"\ntls_cert = "peers/{d.node_id}.crt"\n' for d in new)
    written: list[Path] = []
    try:
        peers_dir.mkdir(exist_ok=True)
        for doc in new:
            write_atomic(cert_paths[doc.node_id], doc.tls_cert_pem)
            written.append(cert_paths[doc.node_id])
        try:
            merged = parse_config(tomllib.loads(appended), cfg.path)
        except (tomllib.TOMLDecodeError, ConfigError):
            # The file's own layout does not take appended tables (an inline roster array):
            # rewrite it whole from the parsed config instead.
            roster = cfg.roster + tuple(PeerEntry(d.node_id, d.index, d.address, d.identity_public_key,
                                                  cert_paths[d.node_id]) for d in new)
            appended = config_to_toml(dataclasses.replace(cfg, roster=roster))
            merged = parse_config(tomllib.loads(appended), cfg.path)
        if len(merged.roster) != len(cfg.roster) + len(new):
            raise RosterEntryError(f"{cfg.path}: the merged roster does not hold every entry; nothing was changed")
        write_atomic(cfg.path, appended.encode(), os.stat(cfg.path).st_mode & 0o777)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return results


def _identity_fields(doc: RosterEntryDocument, fingerprint: Any) -> list[tuple[str, Any]]:
    """What no two roster entries may share."""
    return [("node_id", doc.node_id), ("index", doc.index), ("address", doc.address),
            ("identity_public_key", doc.identity_public_key), ("certificate", fingerprint(doc.tls_cert_pem))]
