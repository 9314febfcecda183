"""In-process committees for protocol tests: identities, keys and aux info at the test level.

Nothing here bypasses the protocol: every output comes from running the real machines over
their encoded messages with ``run_in_process``. Key generation and aux info results are cached
per committee so each test module pays for them once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

from fp_fixtures import safe_primes

from fusion_prime.protocol.aux_info import AuxInfo, AuxInfoMachine
from fusion_prime.protocol.identity import PartyIdentity
from fusion_prime.protocol.keygen import KeygenMachine, KeyShare
from fusion_prime.protocol.levels import LEVEL_TEST, SecurityLevel
from fusion_prime.protocol.machine import ProtocolMessage, RoundMachine
from fusion_prime.protocol.presign import Presignature, PresignMachine
from fusion_prime.protocol.runner import Intercept, run_in_process
from fusion_prime.protocol.sign import SignMachine

_IDENTITIES = {i: PartyIdentity.generate() for i in range(1, 11)}


def identities(n: int) -> dict[int, PartyIdentity]:
    """Parties 1..n; one global roster, so committees can overlap (resharing)."""
    return {i: _IDENTITIES[i] for i in range(1, n + 1)}


def roster(n: int) -> dict[int, bytes]:
    return {i: k.public_key for i, k in identities(n).items()}


def sid() -> bytes:
    return secrets.token_bytes(32)


def primes_for(level: SecurityLevel, index: int) -> tuple[int, int]:
    ps = safe_primes(level.prime_bits)
    return ps[2 * (index - 1)], ps[2 * (index - 1) + 1]


def run(machines: dict[int, RoundMachine], intercept: Intercept | None = None) -> dict[int, Any]:
    return run_in_process(machines, intercept)


def keygen_machines(t: int, n: int, level: SecurityLevel = LEVEL_TEST) -> dict[int, KeygenMachine]:
    session = sid()
    ids = identities(n)
    return {i: KeygenMachine(session, i, list(ids), ids[i], roster(n), threshold=t, level=level) for i in ids}


def aux_machines(n: int, level: SecurityLevel = LEVEL_TEST, parties: Sequence[int] | None = None
                 ) -> dict[int, AuxInfoMachine]:
    session = sid()
    parties = list(parties or range(1, n + 1))
    ids = identities(max(parties))
    return {i: AuxInfoMachine(session, i, parties, ids[i], roster(max(parties)), level=level,
                              primes=primes_for(level, i)) for i in parties}


def committee(t: int, n: int, level: SecurityLevel = LEVEL_TEST) -> tuple[dict[int, KeyShare], dict[int, AuxInfo]]:
    return _committee(t, n, level)


@cache
def _committee(t: int, n: int, level: SecurityLevel) -> tuple[dict[int, KeyShare], dict[int, AuxInfo]]:
    shares = run(keygen_machines(t, n, level))
    aux = run(aux_machines(n, level))
    assert len(shares) == n and len(aux) == n
    return shares, aux


def presign_machines(t: int, n: int, signers: Sequence[int], level: SecurityLevel = LEVEL_TEST
                     ) -> dict[int, PresignMachine]:
    shares, aux = committee(t, n, level)
    session = sid()
    ids = identities(n)
    return {i: PresignMachine(session, i, signers, ids[i], roster(n), key_share=shares[i], aux_info=aux[i])
            for i in signers}


def presign(t: int, n: int, signers: Sequence[int], level: SecurityLevel = LEVEL_TEST) -> dict[int, Presignature]:
    out = run(presign_machines(t, n, signers, level))
    assert sorted(out) == sorted(signers), "presigning did not finish"
    return out


def sign_machines(t: int, n: int, presignatures: dict[int, Presignature], digest: bytes, path: Any = (),
                  level: SecurityLevel = LEVEL_TEST) -> dict[int, SignMachine]:
    shares, _ = committee(t, n, level)
    session = sid()
    ids = identities(n)
    signers = sorted(presignatures)
    return {i: SignMachine(session, i, signers, ids[i], roster(n), key_share=shares[i],
                           presignature=presignatures[i], digest=digest, path=path) for i in signers}


# tampering, for adversarial tests only ----------------------------------------------------------
def resign(raw: bytes, identity: PartyIdentity, payload: bytes | None = None, **changes: Any) -> bytes:
    """What a malicious party can do: send anything, properly signed with its own key."""
    msg = ProtocolMessage.from_bytes(raw)
    fields = {"session_id": msg.session_id, "phase": msg.phase, "round": msg.round, "kind": msg.kind,
              "sender": msg.sender, "receiver": msg.receiver, "payload": msg.payload if payload is None else payload}
    fields.update(changes)
    unsigned = ProtocolMessage(**fields)  # type: ignore[arg-type]
    signed = ProtocolMessage(**fields, signature=identity.sign(unsigned.digest()))  # type: ignore[arg-type]
    return signed.to_bytes()


def tamper(n: int, culprit: int, when: Callable[[ProtocolMessage, int], bool],
           change: Callable[[ProtocolMessage, int], bytes]) -> Intercept:
    """Intercept that rewrites (and re-signs) the culprit's messages matching ``when``."""
    identity = identities(n)[culprit]

    def intercept(sender: int, receiver: int, raw: bytes) -> list[bytes]:
        if sender != culprit:
            return [raw]
        msg = ProtocolMessage.from_bytes(raw)
        if not when(msg, receiver):
            return [raw]
        return [resign(raw, identity, change(msg, receiver))]

    return intercept


def aborts(machines: dict[int, RoundMachine], honest: Iterable[int]) -> dict[int, tuple[int, ...]]:
    return {i: machines[i].abort.culprits if machines[i].abort else () for i in honest}


def presign_with(shares: dict[int, KeyShare], aux: dict[int, AuxInfo], signers: Sequence[int],
                 intercept: Intercept | None = None) -> tuple[dict[int, Presignature], dict[int, PresignMachine]]:
    session = sid()
    ids = identities(max(max(shares), max(aux)))
    rost = {i: k.public_key for i, k in ids.items()}
    machines = {i: PresignMachine(session, i, signers, ids[i], rost, key_share=shares[i], aux_info=aux[i])
                for i in signers}
    return run(machines, intercept), machines


def sign_with(shares: dict[int, KeyShare], presignatures: dict[int, Presignature], digest: bytes, path: Any = (),
              aux: dict[int, AuxInfo] | None = None) -> dict[int, Any]:
    return run(sign_machines_with(shares, presignatures, digest, path, aux))


def sign_machines_with(shares: dict[int, KeyShare], presignatures: dict[int, Presignature], digest: bytes,
                       path: Any = (), aux: dict[int, AuxInfo] | None = None) -> dict[int, SignMachine]:
    session = sid()
    ids = identities(max(shares))
    rost = {i: k.public_key for i, k in ids.items()}
    signers = sorted(presignatures)
    return {i: SignMachine(session, i, signers, ids[i], rost, key_share=shares[i], presignature=presignatures[i],
                           digest=digest, path=path, aux_info=aux[i] if aux else None) for i in signers}
