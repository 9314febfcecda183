"""The CGGMP21 phases as the node runs them: proposal parameters → machine → stored output.

Each handler turns a validated proposal into this node's :class:`RoundMachine`, and turns the
machine's output into durable state. What ends up where:

=========  ==================================  ===========================================
phase      machine                              output stored as (id)
=========  ==================================  ===========================================
keygen     ``KeygenMachine``                    key share (``KeyShare.key_id``)
aux-info   ``AuxInfoMachine``                   aux info (``AuxInfo.aux_id``)
presign    ``PresignMachine``                   presignature (``Presignature.presign_id``)
sign       ``SignMachine``                      nothing: the signature goes to the caller
=========  ==================================  ===========================================

The sign handler consumes the presignature - durably, in storage - *inside* ``build``, i.e.
before the machine exists and therefore before ``start()`` can emit this node's σ_i. If the
presignature is already consumed the node refuses the session. A refused or failed sign
session loses the presignature; it never makes it usable again.

Security levels: a proposal names its level; a test-only level (small Paillier moduli) is
refused unless the node runs in test mode, whatever the coordinator asks for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..protocol.aux_info import AuxInfo, AuxInfoMachine
from ..protocol.errors import InsecureParameters
from ..protocol.keygen import KeygenMachine, KeyShare
from ..protocol.levels import SecurityLevel, level_by_name
from ..protocol.machine import RoundMachine
from ..protocol.presign import Presignature, PresignMachine
from ..protocol.sign import SignMachine
from .session import PhaseHandler, Refuse, SessionContext, SessionOutcome
from .storage import NotFound, PresignatureUnavailable, Storage

PrimeSource = Callable[[SecurityLevel, int], "tuple[int, int] | None"]


def check_level(name: str, test_mode: bool) -> SecurityLevel:
    try:
        level = level_by_name(name)
    except InsecureParameters as exc:
        raise Refuse(str(exc)) from None
    if level.test_only and not test_mode:
        raise Refuse(f"security level {name!r} is for tests only; this node is not in test mode")
    return level


def _storage(ctx: SessionContext) -> Storage:
    if ctx.storage is None:
        raise Refuse("this node has no storage configured")
    return ctx.storage


def _participants(ctx: SessionContext) -> list[str]:
    return list(ctx.proposal.participants)


def load_key_share(storage: Storage, key_id: bytes) -> KeyShare:
    try:
        return KeyShare.from_bytes(storage.get_key_share(key_id))
    except NotFound:
        raise Refuse(f"no share of key {key_id.hex()} on this node") from None


class KeygenPhase:
    phase = "keygen"

    def build(self, ctx: SessionContext) -> RoundMachine:
        params = ctx.proposal.keygen
        level = check_level(params.level, ctx.test_mode)
        _storage(ctx)
        return KeygenMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster,
                             threshold=params.threshold, level=level)

    def finish(self, ctx: SessionContext, output: KeyShare) -> dict[str, Any]:
        key_id = bytes.fromhex(output.key_id)
        _storage(ctx).put_key_share(key_id, parties=_participants(ctx), threshold=output.threshold,
                                    level=output.level, share=output.to_bytes(), public_key=output.group_key.to_bytes())
        return {"key_id": key_id, "public_key": output.group_key.to_bytes(), "chain_code": output.chain_code}

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None:
        return None  # nothing was stored: a failed keygen leaves no trace but the audit log


class AuxInfoPhase:
    phase = "aux-info"

    def __init__(self, primes: PrimeSource | None = None) -> None:
        # Safe-prime generation dominates aux info; a node may feed primes from a pool.
        self.primes = primes

    def build(self, ctx: SessionContext) -> RoundMachine:
        level = check_level(ctx.proposal.aux_info.level, ctx.test_mode)
        _storage(ctx)
        primes = self.primes(level, ctx.me) if self.primes else None
        return AuxInfoMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster, level=level,
                              primes=primes)

    def finish(self, ctx: SessionContext, output: AuxInfo) -> dict[str, Any]:
        aux_id = bytes.fromhex(output.aux_id)
        _storage(ctx).put_aux_info(aux_id, parties=_participants(ctx), level=output.level, aux=output.to_bytes())
        return {"aux_id": aux_id}

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None:
        return None


class PresignPhase:
    phase = "presign"

    def build(self, ctx: SessionContext) -> RoundMachine:
        storage = _storage(ctx)
        params = ctx.proposal.presign
        key_share = load_key_share(storage, params.key_id)
        check_level(key_share.level, ctx.test_mode)
        try:
            aux = AuxInfo.from_bytes(storage.get_aux_info(params.aux_id))
        except NotFound:
            raise Refuse(f"no aux info {params.aux_id.hex()} on this node") from None
        return PresignMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster,
                              key_share=key_share, aux_info=aux)

    def finish(self, ctx: SessionContext, output: Presignature) -> dict[str, Any]:
        key_id = ctx.proposal.presign.key_id
        _storage(ctx).put_presignature(output.presign_id, key_id=key_id, signers=_participants(ctx),
                                       data=output.to_bytes())
        return {"presignature_id": output.presign_id, "key_id": key_id}

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None:
        return None


class SignPhase:
    phase = "sign"

    def build(self, ctx: SessionContext) -> RoundMachine:
        storage = _storage(ctx)
        params = ctx.proposal.sign
        key_share = load_key_share(storage, params.key_id)
        check_level(key_share.level, ctx.test_mode)
        try:
            # Durably consumed before the machine exists, so before σ_i can leave this node.
            raw = storage.consume_presignature(params.presignature_id, ctx.session_id)
        except (NotFound, PresignatureUnavailable) as exc:
            raise Refuse(str(exc)) from None
        presignature = Presignature.from_bytes(raw)
        try:  # only needed to name the culprit if the combined signature fails
            aux = AuxInfo.from_bytes(storage.get_aux_info(bytes.fromhex(presignature.aux_id)))
        except NotFound:
            aux = None
        return SignMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster, key_share=key_share,
                           presignature=presignature, digest=params.digest, path=tuple(params.path), aux_info=aux)

    def finish(self, ctx: SessionContext, output: Any) -> Any:
        return output  # the Signature: returned to the coordinator's caller, never stored

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None:
        return None  # the presignature stays consumed: losing one is safe, reusing one is not


def cggmp21_phases(primes: PrimeSource | None = None) -> dict[str, PhaseHandler]:
    handlers: list[PhaseHandler] = [KeygenPhase(), AuxInfoPhase(primes), PresignPhase(), SignPhase()]
    return {h.phase: h for h in handlers}
