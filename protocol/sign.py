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
from collections.abc import Mapping, Sequence

from .curve import Point, Q, scalar_from_bytes, scalar_to_bytes
from .ecdsa import Signature, normalize, verify
from .encoding import Decoder, Encoder
from .errors import InvalidInput
from .hd import derive
from .identity import PartyIdentity
from .keygen import KeyShare
from .machine import Blame, RoundMachine, bind_session
from .presign import Presignature


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
    rounds = 1

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
    ) -> None:
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
        self._sigma = pow(rho, -1, Q) * (presignature.k * (m + self._r * tau) + self._r * presignature.chi) % Q
        self._sigmas: dict[int, int] = {me: self._sigma}
        self._signature: Signature | None = None

    def _round_broadcasts(self, r: int) -> bool:
        return True

    def _round_private(self, r: int) -> bool:
        return False

    def _make_round(self, r: int) -> tuple[bytes | None, dict[int, bytes]]:
        return Encoder().bytes(scalar_to_bytes(self._sigma)).finish(), {}

    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        dec = Decoder(payload, "sign round 1")
        self._sigmas[sender] = scalar_from_bytes(dec.bytes(32), allow_zero=True)
        dec.finish()

    def _take_private(self, r: int, sender: int, payload: bytes) -> None:
        raise Blame(sender, "signing has no private messages")

    def _check_private(self, r: int, sender: int, receiver: int, payload: bytes) -> None:
        raise Blame(sender, "signing has no private messages")

    def _end_round(self, r: int) -> None:
        s = sum(self._sigmas.values()) % Q
        if s == 0 or not verify(self.derived.public_key, self.digest, self._r, s):
            # Naming the signer whose σ_j is wrong needs the identification of ``identify``.
            raise Blame((), "the combined signature does not verify")
        self._signature = normalize(self._R, self._r, s, self.derived.public_key)

    def _result(self) -> Signature:
        assert self._signature is not None
        return self._signature
