"""Errors raised by the protocol layer.

Every error message is written for an operator's log: it says *what* was wrong with *which*
public value, and never includes a secret (no witness, share, nonce or prime factor appears
in any message built here).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error the protocol layer raises on purpose."""


class InvalidInput(ProtocolError, ValueError):
    """A value received from outside (a peer, a client, a file) is malformed or out of range."""


class InvalidProof(ProtocolError):
    """A zero-knowledge proof did not verify; the message names the failed check."""

    def __init__(self, proof: str, reason: str) -> None:
        super().__init__(f"{proof}: {reason}")
        self.proof = proof
        self.reason = reason


class InsecureParameters(ProtocolError):
    """Parameters that do not meet the security level (too small, too few repetitions...)."""
