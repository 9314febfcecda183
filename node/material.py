"""Load and cross-check a node's key material against its configuration.

Startup refuses a node whose files disagree with the roster - an identity key whose public
key is not the roster's, a certificate that is not the one peers pin - because such a node
would be rejected by every peer anyway, only later and less clearly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.identity import PartyIdentity
from .config import NodeConfig
from .identity import IdentityError, load_identity
from .storage import KeyMaterial, StorageError
from .tls import RosterTrust, TLSMaterial
from .transport import PeerInfo


@dataclass(frozen=True)
class NodeMaterial:
    identity: PartyIdentity
    tls: TLSMaterial
    peers: dict[str, PeerInfo]

    @classmethod
    def load(cls, cfg: NodeConfig) -> NodeMaterial:
        identity = load_identity(cfg.identity_key)
        if identity.public_key != cfg.me.identity_public_key:
            raise IdentityError(
                f"{cfg.identity_key} holds identity key {identity.public_key.hex()[:16]}…, but the roster lists "
                f"{cfg.me.identity_public_key.hex()[:16]}… for {cfg.node_id!r}"
            )
        trust, peers = roster_of(cfg)
        tls = TLSMaterial.load(cfg.node_id, cfg.tls_cert, cfg.tls_key, trust)
        return cls(identity, tls, peers)

    def with_roster(self, cfg: NodeConfig) -> NodeMaterial:
        """The same identity and certificate against the roster of ``cfg`` (a reloaded config)."""
        trust, peers = roster_of(cfg)
        return NodeMaterial(self.identity, self.tls.with_trust(trust), peers)


def roster_of(cfg: NodeConfig) -> tuple[RosterTrust, dict[str, PeerInfo]]:
    """The pinned trust store and the peer table of a config's roster."""
    trust = RosterTrust.from_files((e.node_id, e.tls_cert) for e in cfg.roster)
    return trust, {e.node_id: PeerInfo(e.node_id, e.index, e.address, e.identity_public_key) for e in cfg.roster}


def storage_key(cfg: NodeConfig, environ: dict[str, str]) -> KeyMaterial:
    """The storage key material the config points at (passphrase env var or key file)."""
    if cfg.storage.key_file is not None:
        return KeyMaterial.key_file(cfg.storage.key_file)
    name = cfg.storage.passphrase_env or ""
    value = environ.get(name)
    if not value:
        raise StorageError(f"the storage passphrase is read from ${name}, which is not set")
    return KeyMaterial.passphrase(value)
