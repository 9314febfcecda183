"""Online signing (CGGMP21 Fig. 8), with Groth–Shoup re-randomisation and a consume-then-release
round in front of it.

With a presignature (R = k^-1·G, k_i, χ_i; Σχ_i = k·x) and a digest m, each signer sends σ_i
and the group's signature is s = Σ σ_j.

Rounds (each is a main step and an echo step, see ``machine``):

Round 1  **consumption acknowledgement** (not in the paper). Every signer broadcasts a signed
         ``ConsumptionAck``: "I have durably marked presignature ``presign_id`` of key ``key_id``
         at ``epoch`` consumed, and use it with these signers for this digest and this derived
         key". A peer's ack that names anything else blames that peer.
Round 2  σ_i (CGGMP21 Fig. 8, round 1), computed and sent only now, after every signer's ack
         and every echo of round 1 is in.
Round 3  identification (Fig. 8, "Output", step 2) — only if the combined signature fails.
Then     **confirmation** (not in the paper; ``RoundMachine.require_confirmation``, issue 11):
         every signer broadcasts a signed ``CONFIRM`` of the transcript digest, and the machine
         is ``DONE`` - its signature released to the node - only with every signer's
         confirmation (a ``Certificate``).

Why round 1 exists (DESIGN.md §3, "Presignature pool"): the paper assumes every party keeps its
state, so a presignature is used once. A real node can lose that memory — its database rolled
back by a lost WAL or a restored file copy — and see a consumed presignature as available
again. Had it released σ_i for a second digest with the same (k_i, χ_i), a peer holding both
partial signatures of that party solves two linear equations for k_i and χ_i; with the other
signers' own values that gives k and k·x, hence x (issue 12 reproduced it with two signers).
The node builds this machine only after durably consuming the presignature itself
(``node.phases.SignPhase``), so a signer's ack states a fact, not an intention; and because
σ_i leaves only after *every* signer's ack, a presignature is released only if every
participant has consumed it. A rolled-back node's peers still remember the presignature as
consumed, refuse the session, never ack, and the rolled-back node's σ_i never leaves. Reusing
a presignature takes a rollback of every participant's database, not one. The cost is one
extra round (two message delays) on the online path. The signed acks are evidence a node can
keep to notice that its own database went backwards (``SignMachine.acknowledgements``).

Derived keys (BIP32, ``hd``) have private key x' = x + τ. Groth & Shoup (eprint 2021/1330,
§7) show that presignatures whose R is fixed before the message and tweak are chosen can be
abused across related keys; their fix, followed here, re-randomises the presignature with a
public scalar ρ = H(presignature, X', τ, m):

    R' = ρ·R   (nonce k' = k/ρ),   r = R'.x mod q
    σ_i = ρ^-1 · ( k_i·(m + r·τ) + r·χ_i )         so that  Σσ_i = k'·(m + r·x')

The combined signature is verified against X' before it is returned, normalised to low-S,
with the recovery id of R'.

Why the confirmation (issue 11, "Outcomes agree"): Fig. 8 lets each signer output as soon as
its own view of the σ round is complete and consistent. Echoes are judged by each receiver
alone, so a signer that sends a malformed (signed) round-2 echo - or, after the round,
anything - to one peer only could leave one honest signer done with the signature and another
aborted naming it; a wallet or a bridge would then see one node report a signature that
another node's audit log records as a failed session, and the coordinator would retry on a
new presignature for a signature that already exists. With the confirmation step an honest
signer confirms only once its own round 2 (and every earlier round) ended without a fault,
so while any honest signer aborts, no honest signer holds every confirmation; the aborting
signer's notice carries the signed evidence (the bad echo) and every other honest signer
re-judges it and names the same culprit. Nothing durable has to be written before confirming
(the presignature was consumed before round 1; the signature is public), so the machine
confirms in the step that completes round 2 (``require_confirmation(store=False)``): the
cost is one message delay, and the ConsumptionAck guarantee is untouched - σ_i still leaves
only after every signer's ack. The confirmation cannot make σ_j un-sent: a signer that holds
every σ_j can compute the signature whatever the others decide, so an aborted session's
signature may exist at its culprit. That is harmless (it is a valid signature of a digest
every signer agreed to sign, under a presignature nobody uses again); what the step secures
is that the honest signers, and so the node that answers the caller, agree on the outcome.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gmpy2 import mpz

from .aux_info import AuxInfo
from .curve import Point, Q, scalar_from_bytes, scalar_to_bytes
from .ecdsa import Signature, normalize, verify
from .encoding import Decoder, Encoder
from .errors import InvalidInput, InvalidProof
from .hd import derive
from .identity import PartyIdentity, verify_signature
from .keygen import KeyShare
from .levels import SecurityLevel, level_by_name
from .machine import BROADCAST, KIND_MAIN, Blame, ProtocolMessage, RoundMachine, bind_session
from .paillier import PaillierPublicKey, sample_unit
from .presign import (
    InvalidRevealedElement,
    Presignature,
    Round2Ciphertexts,
    identification_y_bits,
    open_round2_message,
    round2_ciphertexts,
)
from .vss import lagrange_coefficient
from .zk import dec, mul_star
from .zk.common import ProofContext


def rerandomizer(presignature: Presignature, public_key: Point, tweak: int, digest: bytes) -> int:
    data = (
        Encoder().bytes(b"fusion-prime/groth-shoup-rerandomize/v1").bytes(presignature.presign_id)
        .bytes(presignature.R.to_bytes()).bytes(public_key.to_bytes()).bytes(scalar_to_bytes(tweak))
        .bytes(digest).finish()
    )
    counter = 0
    while True:  # rejection sampling into [1, q)
        value = int.from_bytes(hashlib.sha512(data + counter.to_bytes(4, "big")).digest()[:32], "big")
        if 0 < value < Q:
            return value
        counter += 1


ACK_TAG = b"fusion-prime/sign/presignature-consumed/v1"
ACK_ROUND, SIGMA_ROUND, IDENTIFICATION_ROUND = 1, 2, 3


@dataclass(frozen=True)
class ConsumptionAck:
    """A signer's round-1 statement: it has durably consumed presignature ``presign_id`` and
    uses it only for this signature. Every field is something all signers of the session must
    agree on — the presignature (its id binds the presign session, signer set, group key, aux
    info and epoch), the key and its epoch, the signer set, the digest, the derivation path and
    the derived public key — so an ack that differs in any field shows that its sender is not
    signing the same thing with the same presignature, and it is blamed before any σ_i exists.
    Signed as a protocol message, it is also evidence a node can keep and show: "party j said
    in session s that presignature p is consumed"."""

    presign_id: bytes
    key_id: str
    epoch: int
    signers: tuple[int, ...]
    digest: bytes
    path: tuple[int, ...]
    public_key: Point  # the derived key X' the signature must verify under

    def to_bytes(self) -> bytes:
        return (
            Encoder().bytes(ACK_TAG).bytes(self.presign_id).bytes(self.key_id.encode()).uint(self.epoch)
            .uints(self.signers).bytes(self.digest).uints(self.path).bytes(self.public_key.to_bytes()).finish()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ConsumptionAck:
        d = Decoder(data, "presignature consumption ack")
        if d.bytes() != ACK_TAG:
            raise InvalidInput("not a presignature consumption ack")
        presign_id, key_id = d.bytes(32), d.bytes()
        epoch, signers, digest = d.uint(32), tuple(d.uints(max_bits=32)), d.bytes(32)
        path, public_key = tuple(d.uints(max_bits=32)), Point.from_bytes(d.bytes(33))
        d.finish()
        try:
            key_text = key_id.decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidInput("ack key id is not ASCII") from exc
        return cls(presign_id, key_text, epoch, signers, digest, path, public_key)


def open_consumption_ack(raw: bytes, roster: Mapping[int, bytes]) -> tuple[bytes, int, ConsumptionAck]:
    """Verify a signed round-1 message of a sign session (as kept from
    ``SignMachine.acknowledgements``) and return (session id, signer, ack). Raises InvalidInput
    if it is not a sign ack signed by a roster member."""
    msg = ProtocolMessage.from_bytes(raw)
    genuine = (msg.phase == SignMachine.phase and msg.round == ACK_ROUND and msg.kind == KIND_MAIN
               and msg.receiver == BROADCAST and msg.sender in roster
               and verify_signature(roster[msg.sender], msg.digest(), msg.signature))
    if not genuine:
        raise InvalidInput("not a signed presignature consumption ack")
    return msg.session_id, msg.sender, ConsumptionAck.from_bytes(msg.payload)


class SignMachine(RoundMachine):
    phase = "sign"
    rounds = 3  # ack, σ, and identification - which runs only when the combined signature fails

    def __init__(
        self,
        session_id: bytes,
        me: int,
        signers: Sequence[int],
        identity: PartyIdentity,
        roster: Mapping[int, bytes],
        *,
        key_share: KeyShare,
        presignature: Presignature,
        digest: bytes,
        path: str | Sequence[int] = (),
        aux_info: AuxInfo | Callable[[], AuxInfo] | None = None,
    ) -> None:
        """Build the machine only after ``presignature`` is durably consumed: its first message
        is this party's acknowledgement that it is.

        ``aux_info`` is needed only to identify a culprit when the combined signature fails.
        It may be a zero-argument loader instead of the object: the happy path then never pays
        for it (parsing a party's aux secrets costs a full-size modular exponentiation), and
        the loader runs - once - only if identification starts."""
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise InvalidInput("the digest to sign must be exactly 32 bytes")
        if sorted(signers) != list(presignature.signers):
            raise InvalidInput("signer set differs from the presignature's")
        if presignature.key_id != key_share.key_id or presignature.index != me or key_share.index != me:
            raise InvalidInput("presignature belongs to another key or party")
        if presignature.epoch != key_share.epoch:
            raise InvalidInput("presignature was made before the key's last refresh")
        super().__init__(session_id, me, signers, identity, roster)
        # Outcomes agree (issue 11): done only with every signer's confirmation; see the module doc.
        self.require_confirmation(store=False)
        self.derived = derive(key_share.group_key, key_share.chain_code, path)
        self.digest = digest
        self.ssid = bind_session(
            session_id, self.phase, Encoder().bytes(presignature.presign_id).bytes(digest).uints(self.derived.path)
        )
        self._ack = ConsumptionAck(presignature.presign_id, presignature.key_id, presignature.epoch,
                                   tuple(self.parties), digest, self.derived.path, self.derived.public_key)
        rho = rerandomizer(presignature, self.derived.public_key, self.derived.tweak, digest)
        self._R = presignature.R * rho
        self._r = self._R.x % Q
        if self._r == 0:
            raise InvalidInput("presignature gives r = 0; use another")
        m = int.from_bytes(digest, "big") % Q
        tau = self.derived.tweak
        rho_inv = pow(rho, -1, Q)
        # σ_i = a·k_i + b·χ_i with public a = ρ^-1·(m + r·τ), b = ρ^-1·r (mod q)
        self._a, self._b = rho_inv * (m + self._r * tau) % Q, rho_inv * self._r % Q
        self._sigma: int | None = None  # computed in round 2, once every signer has acknowledged
        self._sigmas: dict[int, int] = {}
        self._signature: Signature | None = None
        self._presignature, self._key_share = presignature, key_share
        self._aux: AuxInfo | None = None
        self._aux_loader: Callable[[], AuxInfo] | None = None
        if callable(aux_info):
            self._aux_loader = aux_info
        elif aux_info is not None:
            self._aux = self._checked_aux(aux_info)
        self._identifying = False
        # identification: per signer (Ĥ_i, Π^mul* list, revealed raw messages, Π^dec list)
        self._evidence: dict[int, tuple[int, list[bytes], list[bytes], list[bytes]]] = {}
        self._revealed: dict[tuple[int, int], Round2Ciphertexts] = {}  # (a, b) -> m(a→b), from b's reveal
        self._bad_reveals: dict[tuple[int, int], str] = {}  # (signer, revealer) -> why

    @property
    def acknowledgements(self) -> dict[int, bytes]:
        """Every peer's signed consumption ack (raw protocol messages, ``open_consumption_ack``
        reads them), once round 1 is complete; empty before. What a node can keep as proof that
        its peers consumed the presignature."""
        if self.round <= ACK_ROUND:  # round 2 starts only when round 1 is complete everywhere
            return {}
        main = self._st(ACK_ROUND).main
        return {j: main[(j, BROADCAST)].to_bytes() for j in self.peers}

    def _round_broadcasts(self, r: int) -> bool:
        return True

    def _round_private(self, r: int) -> bool:
        return False

    def _is_last_round(self, r: int) -> bool:
        return r == IDENTIFICATION_ROUND or (r == SIGMA_ROUND and not self._identifying)

    def _make_round(self, r: int) -> tuple[bytes | None, dict[int, bytes]]:
        if r == ACK_ROUND:
            return self._ack.to_bytes(), {}
        if r == SIGMA_ROUND:
            # Every signer's ack and every echo of round 1 is in (the engine starts round 2 only
            # then): every participant has consumed the presignature, σ_i may leave.
            self._sigma = self._partial_signature()
            self._sigmas[self.me] = self._sigma
            return Encoder().bytes(scalar_to_bytes(self._sigma)).finish(), {}
        return self._identify_round(), {}

    def _partial_signature(self) -> int:
        """σ_i = a·k_i + b·χ_i (CGGMP21 Fig. 8 round 1, re-randomised as in the module doc)."""
        return (self._a * self._presignature.k + self._b * self._presignature.chi) % Q

    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        if r == ACK_ROUND:
            self._take_ack(sender, payload)
        elif r == SIGMA_ROUND:
            d = Decoder(payload, "sign round 2 (σ)")
            self._sigmas[sender] = scalar_from_bytes(d.bytes(32), allow_zero=True)
            d.finish()
        else:
            self._take_identification(sender, payload)

    def _take_ack(self, sender: int, payload: bytes) -> None:
        ack = ConsumptionAck.from_bytes(payload)
        mine = self._ack
        for name in ("presign_id", "key_id", "epoch", "signers", "digest", "path", "public_key"):
            if getattr(ack, name) != getattr(mine, name):
                raise Blame(sender, f"acknowledged a presignature consumption for a different {name}: it is not "
                                    f"signing the same digest with the same presignature")

    def _take_private(self, r: int, sender: int, payload: bytes) -> None:  # never called: no private rounds
        raise Blame(sender, "signing has no private messages")

    def _check_private(self, r: int, sender: int, receiver: int, payload: bytes) -> None:
        raise Blame(sender, "signing has no private messages")

    def _end_round(self, r: int) -> None:
        if r == ACK_ROUND:
            return
        if r == IDENTIFICATION_ROUND:
            self._judge_identification()  # always raises: names the culprits
        s = sum(self._sigmas.values()) % Q
        if s == 0 or not verify(self.derived.public_key, self.digest, self._r, s):
            self._load_aux()
            if self._aux is None:
                raise Blame((), "the combined signature does not verify (no aux info to identify the culprit)")
            self._identifying = True  # CGGMP21 Fig. 8, "Output", step 2
            return
        self._signature = normalize(self._R, self._r, s, self.derived.public_key)

    def _checked_aux(self, aux: AuxInfo) -> AuxInfo:
        if aux.index != self.me or aux.aux_id != self._presignature.aux_id:
            raise InvalidInput("aux info is not the one this presignature was made under")
        return aux

    def _load_aux(self) -> None:
        """Resolve a lazily supplied aux info (identification only). A loader that fails, or
        returns aux info of another party or presignature, leaves the abort unattributed."""
        loader, self._aux_loader = self._aux_loader, None
        if loader is None or self._aux is not None:
            return
        try:
            self._aux = self._checked_aux(loader())
        except (InvalidInput, ValueError, LookupError, RuntimeError) as exc:
            raise Blame((), f"the combined signature does not verify, and this party's aux info could not be "
                            f"loaded to identify the culprit: {exc}") from exc

    # identification (round 3) ------------------------------------------------------------------
    # σ_i = a·k_i + b·χ_i and χ_i = dec_i(Ĉ_i), Ĉ_i = Ĥ_i·∏_j D̂_{i,j}·∏_j F̂_{j,i}^-1, where
    # Ĥ_i = K_i^(w_i)·ρ^N encrypts k_i·w_i (Π^mul* against W_i). Each signer publishes Ĥ_i, the
    # signed presign round-2 messages it received, and Π^dec proofs that
    #     σ_i ≡ dec_i(K_i^a · Ĉ_i^b)  (mod q)
    # for every verifier; a σ_i that is not what its ciphertexts say cannot be proven.

    def _ctx(self, prover: int) -> ProofContext:
        return ProofContext(self.ssid, prover)

    def _y_bits(self, level: SecurityLevel) -> int:
        chi_bits = identification_y_bits(level.mta_bound_bits(), len(self.parties))
        return max(2 * 256, 256 + chi_bits) + 1

    def _W(self, i: int) -> Point:
        return self._key_share.public_shares[i] * lagrange_coefficient(i, self.parties)

    def _paillier_keys(self) -> dict[int, PaillierPublicKey]:
        assert self._aux is not None
        return {j: self._aux.public[j].paillier for j in self.parties}

    def _identify_round(self) -> bytes:
        assert self._aux is not None and self._sigma is not None
        me, aux, pre = self.me, self._aux, self._presignature
        level = level_by_name(aux.level)
        paillier = aux.paillier_secret
        w = lagrange_coefficient(me, self.parties) * self._key_share.secret_share % Q
        rho_h = sample_unit(paillier.n)
        H = paillier.pow_n2(pre.K[me], w) * paillier.rho_to_n(rho_h) % paillier.n2
        st = mul_star.MulStarStatement(paillier, pre.K[me], H, self._W(me))
        mul_proofs = [mul_star.prove(self._ctx(me), level, st, aux.public[j].ring_pedersen, w, rho_h).to_bytes()
                      for j in self.peers]
        received = [pre.received_round2[j] for j in self.peers]
        self._evidence[me] = (H, [], received, [])
        for j in self.peers:  # what we received and sent in presign round 2, verified there
            self._revealed[(j, me)] = round2_ciphertexts(ProtocolMessage.from_bytes(pre.received_round2[j]).payload)
            self._revealed[(me, j)] = round2_ciphertexts(pre.sent_round2[j])
        c = self._sigma_ciphertext(me)
        y, rho_c = paillier.decrypt(c), paillier.recover_randomness(c)
        dec_proofs = [dec.prove(self._ctx(me), level, dec.DecStatement(paillier, c, self._sigma),
                                aux.public[j].ring_pedersen, y, rho_c, y_bits=self._y_bits(level)).to_bytes()
                      for j in self.peers]
        return Encoder().uint(H).list_of_bytes(mul_proofs).list_of_bytes(received).list_of_bytes(dec_proofs).finish()

    def _take_identification(self, sender: int, payload: bytes) -> None:
        """Parse and validate ``sender``'s identification broadcast: Ĥ ∈ Z*_{N²}, one Π^mul*,
        one revealed message and one Π^dec per other signer (in signer order), each revealed
        message genuine (signed by its sender for ``sender`` in the presign session's round 2)
        and each of its ciphertexts in Z*_{N²} of its key. Not genuine blames ``sender`` now;
        genuine but invalid is judged at the end of the round, naming signer and ``sender``
        (``InvalidRevealedElement``). The proofs themselves are parsed and checked by
        ``_judge_identification``, where a malformed one names its prover."""
        assert self._aux is not None
        others = [j for j in self.parties if j != sender]
        key = self._aux.public[sender].paillier
        d = Decoder(payload, "sign identification")
        H = key.validate_ciphertext(mpz(d.uint(2 * key.bits)))
        mul_proofs, received, dec_proofs = d.list_of_bytes(len(others)), d.list_of_bytes(len(others)), \
            d.list_of_bytes(len(others))
        d.finish()
        keys = self._paillier_keys()
        for j, raw in zip(others, received, strict=True):
            try:
                self._revealed[(j, sender)] = open_round2_message(raw, self._presignature.session_id, j, sender,
                                                                  self._roster, keys)
            except InvalidRevealedElement as exc:
                self._bad_reveals[(j, sender)] = str(exc)
            except InvalidInput as exc:
                raise Blame(sender, f"revealed evidence is not genuine: {exc}") from exc
        self._evidence[sender] = (H, mul_proofs, received, dec_proofs)

    def _sigma_ciphertext(self, i: int) -> mpz:
        """K_i^a · Ĉ_i^b under N_i, Ĉ_i = Ĥ_i · ∏_j D̂_{i,j} · ∏_j F̂_{j,i}^-1, where D̂_{i,j} is
        in m(j→i) (revealed by i) and F̂_{j,i} in m(i→j) (revealed by j; our own we know). Every
        element was validated on receipt, so the inversions cannot fail."""
        assert self._aux is not None
        Ni = self._aux.paillier_secret if i == self.me else self._aux.public[i].paillier
        c = self._evidence[i][0]
        for j in self.parties:
            if j != i:
                D_hat_ij = self._revealed[(j, i)][2]
                F_hat_ji = self._revealed[(i, j)][3]
                c = c * D_hat_ij * Ni.pow_n2(F_hat_ji, -1) % Ni.n2
        return Ni.pow_n2(self._presignature.K[i], self._a) * Ni.pow_n2(c, self._b) % Ni.n2

    def _judge_identification(self) -> None:
        assert self._aux is not None
        if self._bad_reveals:
            # Provably malicious signer/revealer pairs; nothing can be computed from their
            # elements, so they are named and nobody else.
            named = {p for pair in self._bad_reveals for p in pair}
            raise Blame(named, "identification: " + "; ".join(v for _, v in sorted(self._bad_reveals.items())))
        level = level_by_name(self._aux.level)
        culprits: dict[int, str] = {}
        for i in self.peers:
            H, mul_proofs, _, dec_proofs = self._evidence[i]
            Ni = self._aux.public[i].paillier
            verifiers = [j for j in self.parties if j != i]
            try:
                st = mul_star.MulStarStatement(Ni, self._presignature.K[i], H, self._W(i))
                statement = dec.DecStatement(Ni, self._sigma_ciphertext(i), self._sigmas[i])
                for v, mp, dp in zip(verifiers, mul_proofs, dec_proofs, strict=True):
                    rp = self._aux.ring_pedersen_secret if v == self.me else self._aux.public[v].ring_pedersen
                    mul_star.verify(self._ctx(i), level, st, rp, mul_star.MulStarProof.from_bytes(mp, level))
                    dec.verify(self._ctx(i), level, statement, rp, dec.DecProof.from_bytes(dp, level),
                               y_bits=self._y_bits(level))
            except (InvalidInput, InvalidProof) as exc:
                culprits[i] = str(exc)
        if not culprits:
            raise Blame((), "the signature failed, yet every signer proved its σ_i; the abort cannot be attributed")
        reasons = "; ".join(f"party {i}: {why}" for i, why in sorted(culprits.items()))
        raise Blame(culprits.keys(), f"the combined signature does not verify; {reasons}")

    def _result(self) -> Signature:
        assert self._signature is not None
        return self._signature
