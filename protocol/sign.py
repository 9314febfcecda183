"""Online signing, one round (CGGMP21 Fig. 8), with Groth–Shoup re-randomisation.

With a presignature (R = k^-1·G, k_i, χ_i; Σχ_i = k·x) and a digest m, each signer sends
σ_i and the group's signature is s = Σ σ_j.

Derived keys (BIP32, ``hd``) have private key x' = x + τ. Groth & Shoup (eprint 2021/1330,
§7) show that presignatures whose R is fixed before the message and tweak are chosen can be
abused across related keys; their fix, followed here, re-randomises the presignature with a
public scalar ρ = H(presignature, X', τ, m):

    R' = ρ·R   (nonce k' = k/ρ),   r = R'.x mod q
    σ_i = ρ^-1 · ( k_i·(m + r·τ) + r·χ_i )         so that  Σσ_i = k'·(m + r·x')

The combined signature is verified against X' before it is returned, normalised to low-S,
with the recovery id of R'. A presignature must be used at most once: the node marks it
consumed durably before this machine's σ_i leaves the process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence

from gmpy2 import mpz

from .aux_info import AuxInfo
from .curve import Point, Q, scalar_from_bytes, scalar_to_bytes
from .ecdsa import Signature, normalize, verify
from .encoding import Decoder, Encoder
from .errors import InvalidInput, InvalidProof
from .hd import derive
from .identity import PartyIdentity
from .keygen import KeyShare
from .levels import SecurityLevel, level_by_name
from .machine import Blame, ProtocolMessage, RoundMachine, bind_session
from .paillier import sample_unit
from .presign import Presignature, identification_y_bits, open_round2_message, round2_ciphertexts
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


class SignMachine(RoundMachine):
    phase = "sign"
    rounds = 2  # the second, identification, runs only when the combined signature fails

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
        """``aux_info`` is needed only to identify a culprit when the combined signature fails.
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
        self.derived = derive(key_share.group_key, key_share.chain_code, path)
        self.digest = digest
        self.ssid = bind_session(
            session_id, self.phase, Encoder().bytes(presignature.presign_id).bytes(digest).uints(self.derived.path)
        )
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
        self._sigma = (self._a * presignature.k + self._b * presignature.chi) % Q
        self._sigmas: dict[int, int] = {me: self._sigma}
        self._signature: Signature | None = None
        self._presignature, self._key_share = presignature, key_share
        self._aux: AuxInfo | None = None
        self._aux_loader: Callable[[], AuxInfo] | None = None
        if callable(aux_info):
            self._aux_loader = aux_info
        elif aux_info is not None:
            self._aux = self._checked_aux(aux_info)
        self._identifying = False
        self._evidence: dict[int, tuple[int, list[bytes], list[bytes], list[bytes]]] = {}

    def _round_broadcasts(self, r: int) -> bool:
        return True

    def _round_private(self, r: int) -> bool:
        return False

    def _is_last_round(self, r: int) -> bool:
        return r == 2 or not self._identifying

    def _make_round(self, r: int) -> tuple[bytes | None, dict[int, bytes]]:
        if r == 2:
            return self._identify_round(), {}
        return Encoder().bytes(scalar_to_bytes(self._sigma)).finish(), {}

    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        if r == 2:
            self._take_identification(sender, payload)
            return
        d = Decoder(payload, "sign round 1")
        self._sigmas[sender] = scalar_from_bytes(d.bytes(32), allow_zero=True)
        d.finish()

    def _take_private(self, r: int, sender: int, payload: bytes) -> None:  # never called: no private rounds
        raise Blame(sender, "signing has no private messages")

    def _check_private(self, r: int, sender: int, receiver: int, payload: bytes) -> None:
        raise Blame(sender, "signing has no private messages")

    def _end_round(self, r: int) -> None:
        if r == 2:
            self._judge_identification()
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

    # identification (round 2) ------------------------------------------------------------------
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

    def _identify_round(self) -> bytes:
        assert self._aux is not None
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
        c = self._sigma_ciphertext(me)
        y, rho_c = paillier.decrypt(c), paillier.recover_randomness(c)
        dec_proofs = [dec.prove(self._ctx(me), level, dec.DecStatement(paillier, c, self._sigma),
                                aux.public[j].ring_pedersen, y, rho_c, y_bits=self._y_bits(level)).to_bytes()
                      for j in self.peers]
        return Encoder().uint(H).list_of_bytes(mul_proofs).list_of_bytes(received).list_of_bytes(dec_proofs).finish()

    def _take_identification(self, sender: int, payload: bytes) -> None:
        assert self._aux is not None
        others = [j for j in self.parties if j != sender]
        d = Decoder(payload, "sign identification")
        H = self._aux.public[sender].paillier.validate_ciphertext(mpz(d.uint()))
        mul_proofs, received, dec_proofs = d.list_of_bytes(len(others)), d.list_of_bytes(len(others)), \
            d.list_of_bytes(len(others))
        d.finish()
        for j, raw in zip(others, received, strict=True):
            try:
                open_round2_message(raw, self._presignature.session_id, j, sender, self._roster)
            except InvalidInput as exc:
                raise Blame(sender, f"revealed evidence is not genuine: {exc}") from exc
        self._evidence[sender] = (H, mul_proofs, received, dec_proofs)

    def _round2(self, sender: int, receiver: int) -> tuple[mpz, mpz, mpz, mpz]:
        """Ciphertexts of the presign message m(sender→receiver), from the receiver's reveal."""
        _, _, received, _ = self._evidence[receiver]
        others = [j for j in self.parties if j != receiver]
        return round2_ciphertexts(ProtocolMessage.from_bytes(received[others.index(sender)]).payload)

    def _sigma_ciphertext(self, i: int) -> mpz:
        assert self._aux is not None
        Ni = self._aux.paillier_secret if i == self.me else self._aux.public[i].paillier
        c = self._evidence[i][0]
        for j in self.parties:
            if j != i:
                D_hat_ij = self._round2(j, i)[2]
                # m(i→j) as j revealed it; our own messages we know without anyone's reveal
                sent = round2_ciphertexts(self._presignature.sent_round2[j]) if i == self.me else self._round2(i, j)
                c = c * D_hat_ij * Ni.pow_n2(sent[3], -1) % Ni.n2
        return Ni.pow_n2(self._presignature.K[i], self._a) * Ni.pow_n2(c, self._b) % Ni.n2

    def _judge_identification(self) -> None:
        assert self._aux is not None
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
