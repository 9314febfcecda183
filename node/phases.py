"""The CGGMP21 phases as the node runs them: proposal parameters → machine → stored output.

Each handler turns a validated proposal into this node's :class:`RoundMachine`, and turns the
machine's output into durable state. What ends up where:

===========  ==================================  ===========================================
phase        machine                              output stored as (id)
===========  ==================================  ===========================================
keygen       ``KeygenMachine``                    key share (``KeyShare.key_id``)
aux-info     ``AuxInfoMachine``                   aux info (``AuxInfo.aux_id``)
presign      ``PresignMachine``                   presignature (``Presignature.presign_id``)
sign         ``SignMachine``                      nothing: the signature goes to the caller
                                                  (once every signer confirmed the transcript)
key-refresh  ``KeyRefreshMachine``                new share version + aux info in one commit,
                                                  which erases old-epoch presignatures
reshare      ``ReshareMachine``                   new members: new share version; leaving
                                                  dealers: key retired, share deleted
===========  ==================================  ===========================================

Refresh and resharing carry their parameters as ``OpaqueParams`` (:class:`RefreshParams`,
:class:`ReshareParams`): the session id binds them like any other phase's, and a policy hook
can decode them with the same classes. A failure to store any output is reported as a
``ValueError`` with a clear reason, which the session manager turns into an abort.

The sign handler consumes the presignature - durably, in storage - *inside* ``build``, i.e.
before the machine exists and therefore before ``start()`` can emit this node's σ_i. If the
presignature is already consumed, belongs to another key, signer set or epoch, or is reserved
for another session, or led by another node than the proposal's coordinator (only a presignature's leader - the
node that coordinated its presign - may sign with it), the node refuses the session - and in those last cases it
stays unused. A refused or failed sign session loses the presignature; it never makes it usable again.

Security levels: a proposal names its level; a test-only level (small Paillier moduli) is
refused unless the node runs in test mode, whatever the coordinator asks for.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..protocol.aux_info import AuxInfo, AuxInfoMachine
from ..protocol.curve import Point
from ..protocol.ecdsa import Signature
from ..protocol.encoding import Decoder, Encoder
from ..protocol.errors import InsecureParameters, InvalidInput
from ..protocol.keygen import KeygenMachine, KeyShare, key_id_of
from ..protocol.levels import SecurityLevel, level_by_name
from ..protocol.machine import RoundMachine
from ..protocol.presign import Presignature, PresignMachine
from ..protocol.refresh import KeyRefreshMachine, RefreshResult
from ..protocol.reshare import KeyPublicInfo, ReshareMachine, RetiredShare
from ..protocol.sign import SignMachine
from .session import PhaseHandler, Refuse, SessionContext, SessionOutcome
from .storage import COORDINATOR_RESERVATION, NotFound, PresignatureUnavailable, Storage, StorageError

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


def _stage(ctx: SessionContext, data: bytes) -> None:
    """Durably store this session's output as pending before this node confirms it (see
    ``Storage.stage_output``): the session's machine confirms only after this returns. Each
    staging handler has a ``restore`` that turns these bytes back into the output, so that a
    certificate seen later (from a peer, after a restart) can still make it current."""
    _stored("the staged output", _storage(ctx).stage_output, ctx.session_id, ctx.proposal.phase, data,
            proposal=ctx.proposal.SerializeToString(), transcript=ctx.transcript)


class KeygenPhase:
    phase = "keygen"

    def stage(self, ctx: SessionContext, output: KeyShare) -> None:
        _stage(ctx, output.to_bytes())

    def restore(self, ctx: SessionContext, data: bytes) -> KeyShare:
        return KeyShare.from_bytes(data)

    def build(self, ctx: SessionContext) -> RoundMachine:
        params = ctx.proposal.keygen
        level = check_level(params.level, ctx.test_mode)
        _storage(ctx)
        return KeygenMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster,
                             threshold=params.threshold, level=level)

    def finish(self, ctx: SessionContext, output: KeyShare) -> dict[str, Any]:
        key_id = bytes.fromhex(output.key_id)
        _storage(ctx).put_key_share(key_id, parties=_participants(ctx), threshold=output.threshold,
                                    level=output.level, share=output.to_bytes(), public_key=output.group_key.to_bytes(),
                                    session_id=ctx.session_id)
        return {"key_id": key_id, "public_key": output.group_key.to_bytes(), "chain_code": output.chain_code}

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None:
        return None  # nothing was stored: a failed keygen leaves no trace but the audit log


class AuxInfoPhase:
    phase = "aux-info"

    def stage(self, ctx: SessionContext, output: AuxInfo) -> None:
        _stage(ctx, output.to_bytes())

    def restore(self, ctx: SessionContext, data: bytes) -> AuxInfo:
        return AuxInfo.from_bytes(data)

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

    def stage(self, ctx: SessionContext, output: Presignature) -> None:
        _stage(ctx, output.to_bytes())

    def restore(self, ctx: SessionContext, data: bytes) -> Presignature:
        return Presignature.from_bytes(data)

    def build(self, ctx: SessionContext) -> RoundMachine:
        storage = _storage(ctx)
        params = ctx.proposal.presign
        info = storage.key_info(params.key_id)
        if info is not None:  # checked from the public record, before the share is decrypted
            if info["epoch"] != params.epoch:
                # A refresh or resharing has finished on one side only: refuse, blame nobody.
                raise Refuse(f"key {params.key_id.hex()} is at epoch {info['epoch']} here, not {params.epoch}")
            # Only the committee's newest aux info: presignatures tied to an older one would keep
            # its Paillier secret key alive (storage erases old aux info once nothing needs it).
            latest = storage.latest_aux_info(info["parties"])
            if params.aux_id != latest:
                raise Refuse(f"aux info {params.aux_id.hex()} is not the newest of key {params.key_id.hex()}'s "
                             f"committee on this node (that is {latest.hex() if latest else 'none'})")
        key_share = load_key_share(storage, params.key_id)  # refuses an unknown key
        check_level(key_share.level, ctx.test_mode)
        try:
            aux = AuxInfo.from_bytes(storage.get_aux_info(params.aux_id))
        except NotFound:
            raise Refuse(f"no aux info {params.aux_id.hex()} on this node") from None
        return PresignMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster,
                              key_share=key_share, aux_info=aux)

    def finish(self, ctx: SessionContext, output: Presignature) -> dict[str, Any]:
        key_id = ctx.proposal.presign.key_id
        # Refused if a refresh or resharing made another share version current meanwhile.
        _stored("the presignature", _storage(ctx).put_presignature, output.presign_id, key_id=key_id,
                signers=_participants(ctx), data=output.to_bytes(), epoch=output.epoch,
                aux_id=ctx.proposal.presign.aux_id, leader=ctx.proposal.coordinator)
        return {"presignature_id": output.presign_id, "key_id": key_id}

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None:
        return None


class SignPhase:
    """No ``stage``: a signature is publicly verifiable and nothing durable changes at the end
    of a sign session (the presignature was consumed before it started). The session still
    ends the same way at every signer: the sign machine confirms its transcript by itself in
    the step that ends its last round and is done only with every signer's confirmation
    (``SignMachine``, ``require_confirmation(store=False)``; issue 11), so the driver has no
    store to wait for. The certificate is kept with the session's end and served to the other
    signers; a signer that confirmed but did not see the session completed keeps its signature
    in doubt (``encode_output``/``restore``) until a peer shows the certificate
    (``SessionManager._certificate_from_peers``, ``reconcile``)."""

    phase = "sign"

    def build(self, ctx: SessionContext) -> RoundMachine:
        storage = _storage(ctx)
        params = ctx.proposal.sign
        key_share = load_key_share(storage, params.key_id)
        check_level(key_share.level, ctx.test_mode)
        try:
            # Durably consumed before the machine exists, so before σ_i can leave this node -
            # and only if it is this key's, of its current epoch, made for exactly these
            # participants, and not reserved for another session: a bad proposal burns nothing.
            # A session this node coordinates takes the presignature it reserved for it (the
            # proposal's coordinator is authenticated: a peer cannot propose in our name).
            # Only the presignature's leader (the coordinator of its presign) may sign with it, so
            # coordinators on different nodes never collide on one: any other is refused before
            # anything is consumed, and nobody is blamed for it.
            own = ctx.proposal.coordinator == ctx.node_id
            raw = storage.consume_presignature(
                params.presignature_id, ctx.session_id, key_id=params.key_id, signers=_participants(ctx),
                reservation=COORDINATOR_RESERVATION if own else None, coordinator=ctx.proposal.coordinator)
        except (NotFound, PresignatureUnavailable) as exc:
            raise Refuse(str(exc)) from None
        presignature = Presignature.from_bytes(raw)
        aux_id = bytes.fromhex(presignature.aux_id)

        def aux() -> AuxInfo:
            # Only needed to name the culprit if the combined signature fails, so loaded only
            # then: parsing aux secrets costs a full-size exponentiation on the online path.
            return AuxInfo.from_bytes(storage.get_aux_info(aux_id))

        return SignMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster, key_share=key_share,
                           presignature=presignature, digest=params.digest, path=tuple(params.path), aux_info=aux)

    def finish(self, ctx: SessionContext, output: Any) -> Any:
        return output  # the Signature: returned to the coordinator's caller, never stored

    @staticmethod
    def encode_output(output: Signature) -> bytes:
        """A signature kept *in doubt* (confirmed here, no certificate yet): r, s, v and the key."""
        return Encoder().bytes(output.to_recoverable()).bytes(output.public_key.to_bytes()).finish()

    def restore(self, ctx: SessionContext, data: bytes) -> Signature:
        dec = Decoder(data, "signature in doubt")
        rsv, key = dec.bytes(65), dec.bytes(33)
        dec.finish()
        return Signature(int.from_bytes(rsv[:32], "big"), int.from_bytes(rsv[32:64], "big"), rsv[64],
                         Point.from_bytes(key))

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None:
        return None  # the presignature stays consumed: losing one is safe, reusing one is not


# -------------------------------------------------------------------------------------------
# Key refresh and resharing: parameters travel as OpaqueParams (bound into the session id)
# -------------------------------------------------------------------------------------------

REFRESH_PARAMS_TAG = b"fusion-prime/key-refresh-params/v1"
RESHARE_PARAMS_TAG = b"fusion-prime/reshare-params/v1"


@dataclass(frozen=True)
class RefreshParams:
    key_id: bytes
    epoch: int  # the share version to refresh: a participant holding another one refuses

    def encode(self) -> bytes:
        return Encoder().bytes(REFRESH_PARAMS_TAG).bytes(self.key_id).uint(self.epoch).finish()

    @classmethod
    def decode(cls, data: bytes) -> RefreshParams:
        dec = Decoder(data, "key-refresh parameters")
        if dec.bytes() != REFRESH_PARAMS_TAG:
            raise InvalidInput("not key-refresh parameters")
        params = cls(dec.bytes(16), dec.uint(32))
        dec.finish()
        return params


@dataclass(frozen=True)
class ReshareParams:
    """What every participant of a resharing agrees to. ``old`` is the public view of the key
    being reshared: old holders check it against their own share, newcomers - who have no
    other source - check that it names ``key_id`` (their policy may check the group key)."""

    key_id: bytes
    old: KeyPublicInfo
    dealers: tuple[str, ...]  # node ids
    new_parties: tuple[str, ...]  # node ids
    new_threshold: int

    def encode(self) -> bytes:
        o = self.old
        return (
            Encoder().bytes(RESHARE_PARAMS_TAG).bytes(self.key_id)
            .bytes(o.level.encode()).uint(o.threshold).uints(o.parties)
            .list_of_bytes(o.public_shares[p].to_bytes() for p in o.parties)
            .bytes(o.group_key.to_bytes()).bytes(o.chain_code).uint(o.epoch)
            .list_of_bytes(d.encode() for d in self.dealers)
            .list_of_bytes(n.encode() for n in self.new_parties)
            .uint(self.new_threshold)
            .finish()
        )

    @classmethod
    def decode(cls, data: bytes) -> ReshareParams:
        dec = Decoder(data, "reshare parameters")
        if dec.bytes() != RESHARE_PARAMS_TAG:
            raise InvalidInput("not reshare parameters")
        key_id = dec.bytes(16)
        level, threshold = dec.bytes().decode(), dec.uint(32)
        parties = tuple(dec.uints(max_bits=32))
        shares = [Point.from_bytes(b) for b in dec.list_of_bytes(len(parties), 33)]
        group_key, chain_code, epoch = Point.from_bytes(dec.bytes(33)), dec.bytes(32), dec.uint(32)
        dealers = tuple(b.decode() for b in dec.list_of_bytes())
        new_parties = tuple(b.decode() for b in dec.list_of_bytes())
        new_threshold = dec.uint(32)
        dec.finish()
        old = KeyPublicInfo(level, threshold, parties, dict(zip(parties, shares, strict=True)), group_key,
                            chain_code, epoch)
        return cls(key_id, old, dealers, new_parties, new_threshold)


def _opaque(ctx: SessionContext, decode: Callable[[bytes], Any]) -> Any:
    if ctx.proposal.WhichOneof("params") != "opaque":
        raise Refuse(f"{ctx.proposal.phase} proposal without its parameters")
    try:
        return decode(ctx.proposal.opaque.data)
    except (InvalidInput, ValueError, UnicodeDecodeError) as exc:
        raise Refuse(f"malformed {ctx.proposal.phase} parameters: {exc}") from None


def _stored(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Storing a session's output may fail (disk full, a stale version): turn it into a
    ``ValueError`` with a clear reason, which the session manager records as an abort."""
    try:
        return fn(*args, **kwargs)
    except (StorageError, sqlite3.Error) as exc:
        raise ValueError(f"could not store {what}: {exc}") from None


class KeyRefreshPhase:
    """Proactive refresh of one key by its whole committee: new shares (epoch + 1) and new aux
    info, stored atomically; presignatures of the old epoch are erased in the same commit."""

    phase = "key-refresh"

    def __init__(self, primes: PrimeSource | None = None) -> None:
        self.primes = primes

    def stage(self, ctx: SessionContext, output: RefreshResult) -> None:
        _stage(ctx, Encoder().bytes(output.key_share.to_bytes()).bytes(output.aux_info.to_bytes()).finish())

    def restore(self, ctx: SessionContext, data: bytes) -> RefreshResult:
        dec = Decoder(data, "staged refresh")
        share, aux = dec.bytes(), dec.bytes()
        dec.finish()
        return RefreshResult(KeyShare.from_bytes(share), AuxInfo.from_bytes(aux))

    def build(self, ctx: SessionContext) -> RoundMachine:
        storage = _storage(ctx)
        params: RefreshParams = _opaque(ctx, RefreshParams.decode)
        key_share = load_key_share(storage, params.key_id)
        level = check_level(key_share.level, ctx.test_mode)
        if key_share.epoch != params.epoch:
            raise Refuse(f"key {params.key_id.hex()} is at epoch {key_share.epoch} here, not {params.epoch}")
        info = storage.key_info(params.key_id) or {}
        if list(info.get("parties", [])) != _participants(ctx):
            raise Refuse("a refresh needs exactly the key's committee as participants")
        primes = self.primes(level, ctx.me) if self.primes else None
        return KeyRefreshMachine(ctx.session_id, ctx.me, ctx.identity, ctx.roster, key_share=key_share,
                                 primes=primes)

    def finish(self, ctx: SessionContext, output: RefreshResult) -> dict[str, Any]:
        params: RefreshParams = RefreshParams.decode(ctx.proposal.opaque.data)
        share, aux = output.key_share, output.aux_info
        if bytes.fromhex(share.key_id) != params.key_id:
            raise ValueError("the refreshed share belongs to another key")
        aux_id = bytes.fromhex(aux.aux_id)
        invalidated = _stored(
            "the refreshed key share", _storage(ctx).put_key_share_version, params.key_id, epoch=share.epoch,
            parties=_participants(ctx), threshold=share.threshold, level=share.level, share=share.to_bytes(),
            public_key=share.group_key.to_bytes(), session_id=ctx.session_id,
            aux=(aux_id, _participants(ctx), aux.level, aux.to_bytes()),
        )
        return {"key_id": params.key_id, "epoch": share.epoch, "aux_id": aux_id,
                "public_key": share.group_key.to_bytes(), "presignatures_invalidated": invalidated}

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None:
        return None  # nothing was stored: the old share stays current


class ResharePhase:
    """Move a key to a new committee. New members store a new share version (existing holders
    lose their old-epoch presignatures in the same commit); dealers that leave retire the key."""

    phase = "reshare"

    def stage(self, ctx: SessionContext, output: KeyShare | RetiredShare) -> None:
        # A leaving dealer stages its retirement: its share is deleted only with the
        # certificate, i.e. once every new member has stored its new share.
        _stage(ctx, b"retired" if isinstance(output, RetiredShare) else output.to_bytes())

    def restore(self, ctx: SessionContext, data: bytes) -> KeyShare | RetiredShare:
        if data == b"retired":
            return RetiredShare(ReshareParams.decode(ctx.proposal.opaque.data).key_id.hex())
        return KeyShare.from_bytes(data)

    def build(self, ctx: SessionContext) -> RoundMachine:
        storage = _storage(ctx)
        params: ReshareParams = _opaque(ctx, ReshareParams.decode)
        check_level(params.old.level, ctx.test_mode)
        dealers, new_parties = set(params.dealers), set(params.new_parties)
        if dealers | new_parties != set(_participants(ctx)):
            raise Refuse("participants must be exactly the dealers and the new committee")
        if key_id_of(params.old.group_key, params.old.chain_code) != params.key_id.hex():
            raise Refuse("the proposal's key id does not match its group key")
        key_share = None
        if storage.key_info(params.key_id) is not None:
            key_share = load_key_share(storage, params.key_id)
            if KeyPublicInfo.of(key_share) != params.old:
                raise Refuse(f"the proposal's view of key {params.key_id.hex()} (epoch {params.old.epoch}) differs "
                             f"from this node's share (epoch {key_share.epoch})")
        if ctx.node_id in dealers and key_share is None:
            raise Refuse(f"this node is named as a dealer but holds no share of key {params.key_id.hex()}")
        retired = storage.retired_key(params.key_id)
        if retired is not None and params.old.epoch < retired["epoch"]:
            raise Refuse(f"key {params.key_id.hex()} was already reshared past epoch {params.old.epoch}")
        return ReshareMachine(
            ctx.session_id, ctx.me, ctx.identity, ctx.roster, old=params.old,
            dealers=[ctx.index_of[d] for d in params.dealers],
            new_parties=[ctx.index_of[n] for n in params.new_parties],
            new_threshold=params.new_threshold,
            key_share=key_share if ctx.node_id in dealers else None,
        )

    def finish(self, ctx: SessionContext, output: KeyShare | RetiredShare) -> dict[str, Any]:
        params: ReshareParams = ReshareParams.decode(ctx.proposal.opaque.data)
        storage = _storage(ctx)
        if isinstance(output, RetiredShare):
            _stored("the retirement of the old share", storage.retire_key_share, params.key_id,
                    session_id=ctx.session_id)
            return {"key_id": params.key_id, "retired": True, "epoch": params.old.epoch}
        if bytes.fromhex(output.key_id) != params.key_id:
            raise ValueError("the new share belongs to another key")
        node_of = {i: n for n, i in ctx.index_of.items()}
        parties = [node_of[i] for i in output.parties]
        invalidated = _stored(
            "the new key share", storage.put_key_share_version, params.key_id, epoch=output.epoch,
            parties=parties, threshold=output.threshold, level=output.level, share=output.to_bytes(),
            public_key=output.group_key.to_bytes(), session_id=ctx.session_id,
        )
        return {"key_id": params.key_id, "retired": False, "epoch": output.epoch, "parties": parties,
                "threshold": output.threshold, "public_key": output.group_key.to_bytes(),
                "presignatures_invalidated": invalidated}

    def failed(self, ctx: SessionContext, outcome: SessionOutcome) -> None:
        return None  # nothing was stored: every participant keeps what it had


def cggmp21_phases(primes: PrimeSource | None = None) -> dict[str, PhaseHandler]:
    handlers: list[PhaseHandler] = [KeygenPhase(), AuxInfoPhase(primes), PresignPhase(), SignPhase(),
                                    KeyRefreshPhase(primes), ResharePhase()]
    return {h.phase: h for h in handlers}
