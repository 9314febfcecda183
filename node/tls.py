"""TLS certificates and mutual TLS between roster nodes, pinned to the roster.

Trust model. There is no certificate authority: each node has a self-signed certificate
(ECDSA P-256, subjectAltName ``DNS:<node id>`` plus the advertised host, ``CA:FALSE``), and the roster lists every
node's certificate. A node's TLS trust store is exactly the roster's certificates, so:

* as a **server**, gRPC requires a client certificate (``require_client_auth``) that chains
  to the trust store; a self-signed certificate chains only to itself, so only roster
  certificates pass the handshake. Anything else is refused before a single RPC byte.
* as a **client**, the channel pins the same trust store and overrides the TLS target name
  with the peer's node id, so the server must present the certificate whose SAN is that
  node id — a roster node cannot impersonate another roster node's address.
* on **every call** the server additionally maps the SHA-256 fingerprint of the presented
  client certificate (``context.auth_context()['x509_pem_cert']``) to a roster node id
  (:meth:`RosterTrust.peer_node_id`) and the transport requires the envelope's sender to be
  that node. The handshake check alone would accept any certificate *issued by* a trusted
  one; pinning fingerprints closes that, and ``CA:FALSE`` makes such issuance invalid anyway.

The trust store follows the roster: the server's credentials are reloadable
(:func:`reloadable_server_credentials`), so a roster reloaded at run time (SIGHUP) admits a new
node from the next handshake on and refuses a removed one at once (per-call pinning).

Why P-256 and not the secp256k1 identity key: TLS libraries (BoringSSL inside grpcio) do not
support secp256k1 certificates. The identity key still authenticates every envelope.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .identity import read_secret_file, write_secret_file

CERT_VALIDITY_DAYS = 3650


class TLSError(RuntimeError):
    """A certificate or TLS key is missing, malformed, or does not match the roster."""


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def generate_certificate(node_id: str, hosts: Sequence[str] = ()) -> tuple[bytes, bytes]:
    """A fresh self-signed certificate for ``node_id``: (certificate PEM, private key PEM).

    ``hosts`` (IP addresses or DNS names) are added to the subjectAltName beside the node id:
    the host peers dial (``init --advertise``), so the certificate also names where it is
    served - peers still verify the node id, not the address."""
    names: list[x509.GeneralName] = [x509.DNSName(node_id)]
    for host in hosts:
        name = _host_name(host)
        if name not in names:
            names.append(name)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fusion-prime node")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def create_certificate_files(node_id: str, cert_path: Path, key_path: Path, hosts: Sequence[str] = ()) -> bytes:
    cert_pem, key_pem = generate_certificate(node_id, hosts)
    write_secret_file(key_path, key_pem)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert_pem)
    return cert_pem


def fingerprint(cert_pem: bytes) -> bytes:
    """SHA-256 over the certificate's DER encoding (what ``openssl x509 -fingerprint`` shows)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise TLSError(f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def certificate_node_id(cert_pem: bytes) -> str:
    """The node id a node certificate names: its one DNS subjectAltName, or - when it also names
    the DNS host it is served at - the DNS name that is also its common name."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise TLSError("certificate has no subjectAltName") from None
    dns = names.get_values_for_type(x509.DNSName)
    if len(dns) > 1:
        common = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        dns = [d for d in dns if d in common]
    if len(dns) != 1:
        raise TLSError("node certificate must carry exactly one DNS name (the node id)")
    return dns[0]


def certificate_hosts(cert_pem: bytes) -> tuple[set[str], set[str]]:
    """(DNS names, IP addresses) of a certificate's subjectAltName: where it may be served."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return (set(names.get_values_for_type(x509.DNSName)),
            {str(ip) for ip in names.get_values_for_type(x509.IPAddress)})


@dataclass(frozen=True)
class RosterTrust:
    """The pinned trust store: roster certificates and their fingerprints by node id."""

    certs: Mapping[str, bytes]  # node id -> PEM

    @classmethod
    def from_files(cls, entries: Iterable[tuple[str, Path]]) -> RosterTrust:
        certs: dict[str, bytes] = {}
        for node_id, path in entries:
            pem = path.read_bytes()
            named = certificate_node_id(pem)
            if named != node_id:
                raise TLSError(f"roster certificate {path} names {named!r}, but the roster entry is {node_id!r}")
            certs[node_id] = pem
        return cls(certs)

    def __post_init__(self) -> None:
        by_fp: dict[bytes, str] = {}
        for node_id, pem in self.certs.items():
            fp = fingerprint(pem)
            if fp in by_fp:
                raise TLSError(f"nodes {by_fp[fp]!r} and {node_id!r} share one certificate")
            by_fp[fp] = node_id
        object.__setattr__(self, "_by_fingerprint", by_fp)

    @property
    def bundle(self) -> bytes:
        """Concatenated PEMs: the root store handed to gRPC (sorted, so deterministic)."""
        return b"".join(self.certs[n].strip() + b"\n" for n in sorted(self.certs))

    def node_for_fingerprint(self, fp: bytes) -> str | None:
        return self._by_fingerprint.get(fp)  # type: ignore[attr-defined]

    def peer_node_id(self, context: grpc.ServicerContext) -> str | None:
        """Which roster node is on the other end of this call (None: not a pinned certificate)."""
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        if len(pems) != 1:
            return None
        try:
            return self.node_for_fingerprint(fingerprint(pems[0]))
        except TLSError:
            return None


@dataclass(frozen=True)
class TLSMaterial:
    """This node's certificate and key plus the roster trust store."""

    node_id: str
    cert_pem: bytes
    key_pem: bytes
    trust: RosterTrust

    @classmethod
    def load(cls, node_id: str, cert_path: Path, key_path: Path, trust: RosterTrust) -> TLSMaterial:
        cert_pem = cert_path.read_bytes()
        key_pem = read_secret_file(key_path)
        if trust.certs.get(node_id) is None or fingerprint(trust.certs[node_id]) != fingerprint(cert_pem):
            raise TLSError(f"{cert_path} is not the certificate the roster lists for {node_id!r}")
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise TLSError(f"{key_path} is not the private key of {cert_path}")
        return cls(node_id, cert_pem, key_pem, trust)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.trust.bundle, require_client_auth=True
        )

    def server_certificate_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key_pem, self.cert_pem)],
                                                          root_certificates=self.trust.bundle)

    def with_trust(self, trust: RosterTrust) -> TLSMaterial:
        """The same certificate and key against another roster (a reloaded configuration)."""
        listed = trust.certs.get(self.node_id)
        if listed is None or fingerprint(listed) != fingerprint(self.cert_pem):
            raise TLSError(f"the new roster does not list this node's certificate for {self.node_id!r}")
        return TLSMaterial(self.node_id, self.cert_pem, self.key_pem, trust)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.trust.bundle, private_key=self.key_pem, certificate_chain=self.cert_pem
        )

    @staticmethod
    def channel_options(peer_node_id: str) -> list[tuple[str, object]]:
        """Verify the server's certificate against the *expected* node id, not the address."""
        return [("grpc.ssl_target_name_override", peer_node_id), ("grpc.default_authority", peer_node_id)]


def reloadable_server_credentials(current: Callable[[], TLSMaterial]) -> grpc.ServerCredentials:
    """Server credentials whose trust store follows ``current()``: gRPC asks the fetcher at each
    new handshake, and it hands over a new configuration only when the roster's certificates
    changed - so a node added to the roster at run time can connect without a restart, and a
    removed one cannot open new connections."""
    served = [current().trust.bundle]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        material = current()
        if material.trust.bundle == served[0]:
            return None
        served[0] = material.trust.bundle
        return material.server_certificate_configuration()

    return grpc.dynamic_ssl_server_credentials(current().server_certificate_configuration(), fetch,
                                               require_client_authentication=True)
