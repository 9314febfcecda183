"""The node's long-term identity key, and how secret files are written and read.

A node has exactly one identity key, a secp256k1 :class:`PartyIdentity`. The protocol layer
signs every protocol message with it (transferable evidence for identifiable abort), and the
transport signs every envelope and proposal with the same key, so the roster needs one public
key per node, not two. The TLS certificate is a separate key (P-256, see ``tls.py``) because
TLS stacks do not speak secp256k1.

Secret files are written atomically with mode 0600 and refused on read when the group or
others can read them, the way ssh treats private keys: a key that anyone on the host could
have copied is not an identity.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..protocol.errors import InvalidInput
from ..protocol.identity import PartyIdentity


class IdentityError(RuntimeError):
    """The identity key file is missing, unreadable, malformed or too widely readable."""


def write_secret_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Create ``path`` with mode 0600 (atomically: a crash leaves the old file or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise IdentityError(f"{path} already exists; refusing to overwrite a secret")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_secret_file(path: Path) -> bytes:
    """Read a secret file, refusing one that the group or others may read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"{path}: secret file not found") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(f"{path}: permissions {oct(st.st_mode & 0o777)} are too open; run chmod 600 {path}")
    return path.read_bytes()


def create_identity(path: Path) -> PartyIdentity:
    identity = PartyIdentity.generate()
    write_secret_file(path, identity.secret_bytes().hex().encode() + b"\n")
    return identity


def load_identity(path: Path) -> PartyIdentity:
    text = read_secret_file(path).strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise IdentityError(f"{path}: not a hex-encoded identity key") from None
    if len(secret) != 32:
        raise IdentityError(f"{path}: identity key must be 32 bytes")
    try:
        return PartyIdentity.from_secret(secret)
    except InvalidInput as exc:
        raise IdentityError(f"{path}: {exc}") from None
