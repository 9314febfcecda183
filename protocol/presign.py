"""Presigning, three rounds, message-independent (CGGMP21 Fig. 7, threshold form §1.2.7).

Signers S (|S| ≥ t) first turn their shares into additive ones with Lagrange coefficients:
w_i = λ_i(S)·x_i, W_j = λ_j(S)·X_j, so Σ_{j∈S} w_j = x.

Round 1  k_i, γ_i ← F_q; K_i = enc_i(k_i; ρ_i), G_i = enc_i(γ_i; ν_i). Broadcast (K_i, G_i);
         send each j Π^enc for K_i against j's ring-Pedersen parameters.
Round 2  Γ_i = γ_i·G. For each j, the two MtAs with j's K_j, each with a fresh mask
         y ← ±2^ℓ' (β = -y is this party's additive share):
           D_{j,i} = γ_i ⊙ K_j ⊕ enc_j(y),  F_{j,i} = enc_i(y)    with Π^aff-g vs Γ_i
           D̂_{j,i} = w_i ⊙ K_j ⊕ enc_j(ŷ),  F̂_{j,i} = enc_i(ŷ)    with Π^aff-g vs W_i
         and Π^log* that G_i encrypts log Γ_i. Broadcast Γ_i, send the rest to j.
Round 3  Γ = Σ Γ_j, Δ_i = k_i·Γ; α_{i,j} = dec_i(D_{i,j}), α̂_{i,j} = dec_i(D̂_{i,j});
         δ_i = γ_i·k_i + Σ_j (α_{i,j} + β_{i,j}),  χ_i = w_i·k_i + Σ_j (α̂_{i,j} + β̂_{i,j}).
         Broadcast (δ_i, Δ_i); send each j Π^log* that K_i encrypts log_Γ Δ_i.
Output   δ = Σ δ_j, checked by δ·G = Σ Δ_j (= k·γ·G); R = δ^-1·Γ = k^-1·G.
         Presignature (R, k_i, χ_i) for this signer set, with Σ χ_i = k·x.

The ranges proven by Π^enc and Π^aff-g, together with the level's inequalities, guarantee
the MtA sums never wrap modulo N (the Alpha-Rays family of attacks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gmpy2 import gcd, mpz

from .aux_info import AuxInfo
from .curve import Point, Q, random_scalar, scalar_from_bytes, scalar_to_bytes
from .encoding import Decoder, Encoder
from .errors import InvalidInput, InvalidProof
from .identity import PartyIdentity, verify_signature
from .keygen import KeyShare
from .levels import level_by_name
from .machine import KIND_MAIN, Blame, ProtocolMessage, RoundMachine, bind_session
from .paillier import PaillierPublicKey, sample_unit
from .vss import lagrange_coefficient
from .zk import aff_g, dec, enc, log_star, mul
from .zk.common import ProofContext, paillier_raw, sample_pm_bits


@dataclass(frozen=True, repr=False)
class Presignature:
    """One party's part of a presignature; usable for exactly one signature.

    Besides (R, k_i, χ_i) it keeps what signing's identification round needs if the final
    signature fails: every signer's K_j, and the round-2 messages this party received
    (signed by their senders) and sent — the MtA ciphertexts D̂, F̂ that define χ_i.
    """

    presign_id: bytes
    key_id: str
    epoch: int
    signers: tuple[int, ...]
    index: int
    R: Point
    k: int
    chi: int
    session_id: bytes = b""
    K: Mapping[int, int] = field(default_factory=dict)
    received_round2: Mapping[int, bytes] = field(default_factory=dict)  # raw signed m(j→me)
    sent_round2: Mapping[int, bytes] = field(default_factory=dict)  # payload of m(me→j)
    aux_id: str = ""  # the aux info the MtA ciphertexts were made under

    def to_bytes(self) -> bytes:
        enc_ = Encoder().bytes(self.presign_id).bytes(self.key_id.encode()).uint(self.epoch).uints(self.signers)
        enc_.uint(self.index).bytes(self.R.to_bytes()).bytes(scalar_to_bytes(self.k)).bytes(scalar_to_bytes(self.chi))
        enc_.bytes(self.session_id).uints(self.K[j] for j in self.signers)
        peers = [j for j in self.signers if j != self.index]
        enc_.list_of_bytes(self.received_round2[j] for j in peers).list_of_bytes(self.sent_round2[j] for j in peers)
        return enc_.bytes(self.aux_id.encode()).finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> Presignature:
        d = Decoder(data, "presignature")
        presign_id, key_id, epoch = d.bytes(32), d.bytes().decode(), d.uint(32)
        signers = tuple(d.uints(max_bits=32))
        index, R = d.uint(32), Point.from_bytes(d.bytes(33))
        k, chi = scalar_from_bytes(d.bytes(32)), scalar_from_bytes(d.bytes(32), allow_zero=True)
        session_id = d.bytes()
        K = dict(zip(signers, (mpz(v) for v in d.uints(len(signers))), strict=True))
        peers = [j for j in signers if j != index]
        received = dict(zip(peers, d.list_of_bytes(len(peers)), strict=True))
        sent = dict(zip(peers, d.list_of_bytes(len(peers)), strict=True))
        aux_id = d.bytes().decode()
        d.finish()
        return cls(presign_id, key_id, epoch, signers, index, R, k, chi, session_id, K, received, sent, aux_id)

    def __repr__(self) -> str:
        return f"Presignature(id={self.presign_id.hex()[:16]}, key_id={self.key_id}, signers={list(self.signers)})"


@dataclass
class _PeerData:
    K: int = 0
    G: int = 0
    Gamma: Point = field(default_factory=Point.identity)
    D: int = 0
    D_hat: int = 0
    delta: int = 0
    Delta: Point = field(default_factory=Point.identity)


def check_signer_set(key_share: KeyShare, aux_info: AuxInfo, signers: Sequence[int], me: int) -> list[int]:
    signers = sorted(signers)
    if len(signers) < key_share.threshold:
        raise InvalidInput(f"{len(signers)} signers cannot sign for a threshold of {key_share.threshold}")
    if not set(signers) <= set(key_share.parties) or not set(signers) <= set(aux_info.parties):
        raise InvalidInput("signers must hold shares of the key and aux info")
    if key_share.index != me or aux_info.index != me:
        raise InvalidInput("key share or aux info belongs to another party")
    if key_share.level != aux_info.level:
        raise InvalidInput("key share and aux info are for different security levels")
    return signers


def identification_y_bits(level_mta_bits: int, signers: int) -> int:
    """Bound on |dec(H_i·∏D_{i,j}·∏F_{j,i}^-1)| = |k_i·γ_i + Σ_j (α_{i,j} - y_{i,j})|: every
    α is a verified MtA value (≤ 2^mta_bits), every y a mask ≤ 2^ℓ' < 2^mta_bits, and k·γ < q²."""
    return level_mta_bits + (2 * signers).bit_length() + 1


Round2Ciphertexts = tuple[mpz, mpz, mpz, mpz]  # (D, F, D̂, F̂) of one presign round-2 message


class InvalidRevealedElement(InvalidInput):
    """A *genuine* presign round-2 message (its sender's signature checks) revealed in an
    identification round, whose content is invalid. Both its signer and its revealer are at
    fault: the signer signed an invalid element, and the revealer — its receiver — verified
    exactly these ciphertexts with Π^aff-g in round 2 and would have complained then had it been
    honest (or it reveals a message it never received). Raised by ``open_round2_message``; the
    identification rounds name ``signer`` and ``revealer`` together."""

    def __init__(self, signer: int, revealer: int, reason: str) -> None:
        super().__init__(f"the presign round-2 message party {signer} signed for party {revealer}, revealed by "
                         f"party {revealer}, is invalid: {reason}")
        self.signer, self.revealer = signer, revealer


def open_round2_message(raw: bytes, session_id: bytes, sender: int, receiver: int, roster: Mapping[int, bytes],
                        keys: Mapping[int, PaillierPublicKey]) -> Round2Ciphertexts:
    """Check that ``raw`` is the presign round-2 message ``sender`` signed for ``receiver`` in
    session ``session_id`` and return its ciphertexts (D, F, D̂, F̂), each validated like any
    received element (``check_round2_ciphertexts``). Identification rounds rely on it: a party
    reveals what it received and cannot change a byte of it.

    Raises ``InvalidInput`` if the message is not genuine (the revealer alone is to blame) and
    ``InvalidRevealedElement`` if it is genuine but its content is invalid (signer and revealer)."""
    try:
        msg = ProtocolMessage.from_bytes(raw)
    except InvalidInput as exc:
        raise InvalidInput(f"not a presign round-2 message: {exc}") from exc
    genuine = (msg.session_id == session_id and msg.phase == PresignMachine.phase and msg.round == 2
               and msg.kind == KIND_MAIN and msg.sender == sender and msg.receiver == receiver
               and sender in roster and verify_signature(roster[sender], msg.digest(), msg.signature))
    if not genuine:
        raise InvalidInput(f"not a presign round-2 message signed by party {sender} for party {receiver}")
    try:
        return check_round2_ciphertexts(round2_ciphertexts(msg.payload), keys[sender], keys[receiver])
    except InvalidInput as exc:
        raise InvalidRevealedElement(sender, receiver, str(exc)) from exc


def round2_ciphertexts(payload: bytes) -> Round2Ciphertexts:
    """The four ciphertexts at the head of a round-2 private payload, *unvalidated*: only for
    messages this party made or already verified (``check_round2_ciphertexts`` otherwise)."""
    d = Decoder(payload, "presign round 2 private")
    return mpz(d.uint()), mpz(d.uint()), mpz(d.uint()), mpz(d.uint())


def check_round2_ciphertexts(cts: Round2Ciphertexts, sender_key: PaillierPublicKey,
                             receiver_key: PaillierPublicKey) -> Round2Ciphertexts:
    """m(j→i) = (D_{i,j}, F_{i,j}, D̂_{i,j}, F̂_{i,j}): D and D̂ are MtA outputs under the
    receiver's N_i, F and F̂ encrypt j's masks under the sender's N_j (CGGMP21 Fig. 7, round 2).
    Each must lie in Z*_{N²} of its key — 0, ≥ N², or sharing a factor with N are refused (an
    identification round inverts F and F̂, which a non-unit would crash)."""
    keys = (receiver_key, sender_key, receiver_key, sender_key)
    for name, key, c in zip(("D", "F", "D̂", "F̂"), keys, cts, strict=True):
        if not 0 < c < key.n2 or gcd(c, key.n) != 1:
            raise InvalidInput(f"{name} is not a ciphertext in Z*_{{N^2}} of its key")
    return cts


class PresignMachine(RoundMachine):
    phase = "presign"
    rounds = 4  # the fourth, identification, runs only when the δ-check fails

    def __init__(
        self,
        session_id: bytes,
        me: int,
        signers: Sequence[int],
        identity: PartyIdentity,
        roster: Mapping[int, bytes],
        *,
        key_share: KeyShare,
        aux_info: AuxInfo,
    ) -> None:
        signers = check_signer_set(key_share, aux_info, signers, me)
        super().__init__(session_id, me, signers, identity, roster)
        self.level = level_by_name(key_share.level)
        self.key_share = key_share
        self.ssid = bind_session(
            session_id,
            self.phase,
            Encoder().uints(signers).bytes(key_share.group_key.to_bytes()).bytes(aux_info.aux_digest)
            .uint(key_share.epoch),
        )
        self._paillier = aux_info.paillier_secret
        self._rp = aux_info.ring_pedersen_secret
        self._aux_id = aux_info.aux_id
        self._N: dict[int, PaillierPublicKey] = {j: aux_info.public[j].paillier for j in signers}
        self._aux = {j: aux_info.public[j].ring_pedersen for j in signers}
        self._w = lagrange_coefficient(me, signers) * key_share.secret_share % Q
        self._W = {j: key_share.public_shares[j] * lagrange_coefficient(j, signers) for j in signers}
        self._k, self._gamma = random_scalar(), random_scalar()
        K, self._rho = self._paillier.encrypt(self._k)
        G, self._nu = self._paillier.encrypt(self._gamma)
        self._peer: dict[int, _PeerData] = {j: _PeerData() for j in signers}
        self._peer[me].K, self._peer[me].G = K, G
        self._beta: dict[int, int] = {}
        self._beta_hat: dict[int, int] = {}
        self._Gamma = Point.identity()
        self._delta = 0
        self._chi = 0
        self._R = Point.identity()
        self._round2_sent: dict[int, bytes] = {}
        self._identifying = False
        self._round2: dict[tuple[int, int], tuple[mpz, mpz]] = {}  # (a, b) -> (D_{b,a}, F_{b,a}) of m(a→b)
        self._H: dict[int, int] = {}
        self._mul_proofs: dict[int, mul.MulProof] = {}
        self._dec_proofs: dict[int, list[dec.DecProof]] = {}
        self._bad_reveals: dict[tuple[int, int], str] = {}  # (signer, revealer) -> why, judged at round end

    def _ctx(self, prover: int) -> ProofContext:
        return ProofContext(self.ssid, prover)

    def _round_broadcasts(self, r: int) -> bool:
        return True

    def _round_private(self, r: int) -> bool:
        return r <= 3

    def _is_last_round(self, r: int) -> bool:
        return r == 4 or (r == 3 and not self._identifying)

    # round 1 -------------------------------------------------------------------------------
    def _make_round(self, r: int) -> tuple[bytes | None, dict[int, bytes]]:
        return {1: self._presign_round1, 2: self._presign_round2, 3: self._presign_round3,
                4: self._identify_round}[r]()

    def _presign_round1(self) -> tuple[bytes, dict[int, bytes]]:
        mine = self._peer[self.me]
        private = {
            j: enc.prove(self._ctx(self.me), self.level, self._paillier, mine.K, self._aux[j], self._k, self._rho)
            .to_bytes()
            for j in self.peers
        }
        return Encoder().uint(mine.K).uint(mine.G).finish(), private

    # round 2 -------------------------------------------------------------------------------
    def _presign_round2(self) -> tuple[bytes, dict[int, bytes]]:
        lv = self.level
        Gamma_i = Point.base_mul(self._gamma)
        self._peer[self.me].Gamma = Gamma_i
        mine = self._peer[self.me]
        private = {}
        for j in self.peers:
            Nj, Kj = self._N[j], self._peer[j].K
            y, y_hat = sample_pm_bits(lv.ell_prime), sample_pm_bits(lv.ell_prime)
            s, s_hat = sample_unit(Nj.n), sample_unit(Nj.n)
            r, r_hat = sample_unit(self._paillier.n), sample_unit(self._paillier.n)
            D = Nj.pow_n2(Kj, self._gamma) * paillier_raw(Nj, y, s) % Nj.n2
            F = paillier_raw(self._paillier, y, r)
            D_hat = Nj.pow_n2(Kj, self._w) * paillier_raw(Nj, y_hat, s_hat) % Nj.n2
            F_hat = paillier_raw(self._paillier, y_hat, r_hat)
            psi = aff_g.prove(self._ctx(self.me), lv, aff_g.AffGStatement(Nj, self._paillier, Kj, D, F, Gamma_i),
                              self._aux[j], self._gamma, y, s, r)
            psi_hat = aff_g.prove(self._ctx(self.me), lv,
                                  aff_g.AffGStatement(Nj, self._paillier, Kj, D_hat, F_hat, self._W[self.me]),
                                  self._aux[j], self._w, y_hat, s_hat, r_hat)
            psi_log = log_star.prove(self._ctx(self.me), lv,
                                     log_star.LogStarStatement(self._paillier, mine.G, Gamma_i, Point.generator()),
                                     self._aux[j], self._gamma, self._nu)
            self._beta[j], self._beta_hat[j] = int(-y), int(-y_hat)
            private[j] = (
                Encoder().uint(D).uint(F).uint(D_hat).uint(F_hat)
                .bytes(psi.to_bytes()).bytes(psi_hat.to_bytes()).bytes(psi_log.to_bytes()).finish()
            )
            self._round2_sent[j] = private[j]
        return Encoder().bytes(Gamma_i.to_bytes()).finish(), private

    # round 3 -------------------------------------------------------------------------------
    def _presign_round3(self) -> tuple[bytes, dict[int, bytes]]:
        self._Gamma = Point.sum(self._peer[j].Gamma for j in self.parties)
        if self._Gamma.is_identity:
            raise Blame(self.parties, "Γ is the identity")
        Delta_i = self._Gamma * self._k
        delta, chi = self._gamma * self._k, self._w * self._k
        for j in self.peers:
            alpha = self._paillier.decrypt(self._peer[j].D)
            alpha_hat = self._paillier.decrypt(self._peer[j].D_hat)
            delta += alpha + self._beta[j]
            chi += alpha_hat + self._beta_hat[j]
        self._delta, self._chi = delta % Q, chi % Q
        self._peer[self.me].delta, self._peer[self.me].Delta = self._delta, Delta_i
        mine = self._peer[self.me]
        private = {
            j: log_star.prove(self._ctx(self.me), self.level,
                              log_star.LogStarStatement(self._paillier, mine.K, Delta_i, self._Gamma),
                              self._aux[j], self._k, self._rho).to_bytes()
            for j in self.peers
        }
        return Encoder().bytes(scalar_to_bytes(self._delta)).bytes(Delta_i.to_bytes()).finish(), private

    # validation ----------------------------------------------------------------------------
    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        peer = self._peer[sender]
        if r == 1:
            d = Decoder(payload, "presign round 1")
            bits = 2 * self._N[sender].bits
            K, G = mpz(d.uint(bits)), mpz(d.uint(bits))
            d.finish()
            Nj = self._N[sender]
            peer.K, peer.G = Nj.validate_ciphertext(K), Nj.validate_ciphertext(G)
        elif r == 2:
            d = Decoder(payload, "presign round 2")
            peer.Gamma = Point.from_bytes(d.bytes(33))
            d.finish()
        elif r == 3:
            d = Decoder(payload, "presign round 3")
            peer.delta = scalar_from_bytes(d.bytes(32), allow_zero=True)
            peer.Delta = Point.from_bytes(d.bytes(33))
            d.finish()
        else:
            self._take_identification(sender, payload)

    def _take_private(self, r: int, sender: int, payload: bytes) -> None:
        self._verify_private(r, sender, self.me, payload, store=True)

    def _check_private(self, r: int, sender: int, receiver: int, payload: bytes) -> None:
        self._verify_private(r, sender, receiver, payload, store=False)

    def _verify_private(self, r: int, sender: int, receiver: int, payload: bytes, *, store: bool) -> None:
        """Verify sender's private message to receiver; as the receiver we use our secrets (CRT)."""
        lv = self.level
        ctx = self._ctx(sender)
        own = receiver == self.me
        N_recv = self._paillier if own else self._N[receiver]
        aux = self._rp if own else self._aux[receiver]
        N_send = self._N[sender]
        if r == 1:
            proof = enc.EncProof.from_bytes(payload, lv)
            enc.verify(ctx, lv, N_send, self._peer[sender].K, aux, proof)
            return
        if r == 2:
            d = Decoder(payload, "presign round 2 private")
            bits = 2 * max(N_recv.bits, N_send.bits)
            D, F, D_hat, F_hat = check_round2_ciphertexts(
                (mpz(d.uint(bits)), mpz(d.uint(bits)), mpz(d.uint(bits)), mpz(d.uint(bits))), N_send, N_recv)
            psi = aff_g.AffGProof.from_bytes(d.bytes(), lv)
            psi_hat = aff_g.AffGProof.from_bytes(d.bytes(), lv)
            psi_log = log_star.LogStarProof.from_bytes(d.bytes(), lv)
            d.finish()
            K_recv = self._peer[receiver].K
            Gamma_j = self._peer[sender].Gamma
            aff_g.verify(ctx, lv, aff_g.AffGStatement(N_recv, N_send, K_recv, D, F, Gamma_j), aux, psi)
            aff_g.verify(ctx, lv, aff_g.AffGStatement(N_recv, N_send, K_recv, D_hat, F_hat, self._W[sender]), aux,
                         psi_hat)
            log_star.verify(ctx, lv, log_star.LogStarStatement(N_send, self._peer[sender].G, Gamma_j,
                                                               Point.generator()), aux, psi_log)
            if store:
                self._peer[sender].D, self._peer[sender].D_hat = D, D_hat
            return
        proof = log_star.LogStarProof.from_bytes(payload, lv)
        st = log_star.LogStarStatement(N_send, self._peer[sender].K, self._peer[sender].Delta, self._Gamma)
        log_star.verify(ctx, lv, st, aux, proof)

    def _end_round(self, r: int) -> None:
        if r == 4:
            self._judge_identification()
        if r != 3:
            return
        delta = sum(self._peer[j].delta for j in self.parties) % Q
        if delta == 0 or Point.base_mul(delta) != Point.sum(self._peer[j].Delta for j in self.parties):
            # Every proof verified, yet δ is inconsistent with the Δ_j: someone lied about δ_j.
            # Everyone runs the identification round (CGGMP21 Fig. 7, "Output", step 2).
            self._identifying = True
            return
        self._R = self._Gamma * pow(delta, -1, Q)

    # identification (round 4) -----------------------------------------------------------------
    # Each party i publishes H_i = enc_i(k_i·γ_i) with Π^mul (against K_i, G_i), reveals the signed
    # round-2 messages it received (so everyone learns D_{i,j} and, from the others' reveals, the
    # F_{j,i} that i sent), and proves with Π^dec, for every verifier, that
    #     δ_i ≡ dec_i(H_i · ∏_j D_{i,j} · ∏_j F_{j,i}^-1)  (mod q).
    # Every earlier proof already pins the D and F ciphertexts down, so a party whose δ_i is
    # not the decryption of its own ciphertexts cannot produce these proofs and is named.

    def _y_bits(self) -> int:
        return identification_y_bits(self.level.mta_bound_bits(), len(self.parties))

    def _delta_ciphertext(self, i: int) -> int:
        """H_i · ∏_j D_{i,j} · ∏_j F_{j,i}^-1 under N_i, where m(a→b) = (D_{b,a}, F_{b,a})."""
        Ni = self._paillier if i == self.me else self._N[i]
        c = self._H[i]
        for j in self.parties:
            if j != i:
                D_ij = self._round2[(j, i)][0]
                F_ji = self._round2[(i, j)][1]
                c = c * D_ij * Ni.pow_n2(F_ji, -1) % Ni.n2
        return c

    def _identify_round(self) -> tuple[bytes, dict[int, bytes]]:
        me, lv = self.me, self.level
        mine = self._peer[me]
        for j in self.peers:
            self._round2[(j, me)] = round2_ciphertexts(self._st(2).main[(j, me)].payload)[:2]
            self._round2[(me, j)] = round2_ciphertexts(self._round2_sent[j])[:2]
        rho_h = sample_unit(self._paillier.n)
        H = self._paillier.pow_n2(mine.G, self._k) * self._paillier.rho_to_n(rho_h) % self._paillier.n2
        self._H[me] = H
        mul_proof = mul.prove(self._ctx(me), lv, mul.MulStatement(self._paillier, mine.K, mine.G, H),
                              self._k, rho_h, self._rho)
        c = self._delta_ciphertext(me)
        y, rho_c = self._paillier.decrypt(c), self._paillier.recover_randomness(c)
        proofs = [dec.prove(self._ctx(me), lv, dec.DecStatement(self._paillier, c, self._delta), self._aux[j], y,
                            rho_c, y_bits=self._y_bits()).to_bytes() for j in self.peers]
        received = [self._st(2).main[(j, me)].to_bytes() for j in self.peers]
        payload = Encoder().uint(H).bytes(mul_proof.to_bytes()).list_of_bytes(received).list_of_bytes(proofs)
        return payload.finish(), {}

    def _take_identification(self, sender: int, payload: bytes) -> None:
        """Parse and validate ``sender``'s identification broadcast. Everything in it is
        validated before use: H ∈ Z*_{N²}, the proofs' encodings, the count and order of the
        revealed messages (one per other signer, in signer order), each one genuine (signed by
        its sender for ``sender`` in this session's round 2) and each of its ciphertexts in
        Z*_{N²} of its key. A message that is not genuine blames ``sender`` at once; a genuine
        one with an invalid element is remembered and judged at the end of the round (after the
        echoes, so every honest party judges the same broadcasts), naming its signer and
        ``sender`` — see ``InvalidRevealedElement``."""
        lv = self.level
        others = [j for j in self.parties if j != sender]
        d = Decoder(payload, "presign identification")
        H = self._N[sender].validate_ciphertext(mpz(d.uint(2 * self._N[sender].bits)))
        mul_proof = mul.MulProof.from_bytes(d.bytes(), lv)
        received = d.list_of_bytes(len(others))
        proofs = [dec.DecProof.from_bytes(b, lv) for b in d.list_of_bytes(len(others))]
        d.finish()
        for j, raw in zip(others, received, strict=True):
            try:
                D, F, _, _ = open_round2_message(raw, self.session_id, j, sender, self._roster, self._N)
            except InvalidRevealedElement as exc:
                self._bad_reveals[(j, sender)] = str(exc)
                continue
            except InvalidInput as exc:
                raise Blame(sender, f"revealed evidence is not genuine: {exc}") from exc
            self._round2[(j, sender)] = (D, F)
        self._H[sender] = H
        self._mul_proofs[sender] = mul_proof
        self._dec_proofs[sender] = proofs

    def _judge_identification(self) -> None:
        if self._bad_reveals:
            # Nothing of the δ-ciphertexts can be computed from invalid elements; the parties
            # who produced them are provably malicious, so they are named and nobody else.
            named = {p for pair in self._bad_reveals for p in pair}
            raise Blame(named, "identification: " + "; ".join(v for _, v in sorted(self._bad_reveals.items())))
        culprits: dict[int, str] = {}
        for i in self.peers:
            try:
                self._check_identification(i)
            except (InvalidInput, InvalidProof) as exc:
                culprits[i] = str(exc)
        if not culprits:
            raise Blame((), "δ-check failed, yet every party proved its δ_i; the abort cannot be attributed")
        reasons = "; ".join(f"party {i}: {why}" for i, why in sorted(culprits.items()))
        raise Blame(culprits.keys(), f"δ-check failed; {reasons}")

    def _check_identification(self, i: int) -> None:
        lv, Ni = self.level, self._N[i]
        mul.verify(self._ctx(i), lv, mul.MulStatement(Ni, self._peer[i].K, self._peer[i].G, self._H[i]),
                   self._mul_proofs[i])
        statement = dec.DecStatement(Ni, self._delta_ciphertext(i), self._peer[i].delta)
        for verifier, proof in zip([j for j in self.parties if j != i], self._dec_proofs[i], strict=True):
            aux = self._rp if verifier == self.me else self._aux[verifier]
            dec.verify(self._ctx(i), lv, statement, aux, proof, y_bits=self._y_bits())

    def _result(self) -> Presignature:
        return Presignature(
            presign_id=self.ssid,
            key_id=self.key_share.key_id,
            epoch=self.key_share.epoch,
            signers=tuple(self.parties),
            index=self.me,
            R=self._R,
            k=self._k,
            chi=self._chi,
            session_id=self.session_id,
            K={j: self._peer[j].K for j in self.parties},
            received_round2={j: self._st(2).main[(j, self.me)].to_bytes() for j in self.peers},
            sent_round2=dict(self._round2_sent),
            aux_id=self._aux_id,
        )
