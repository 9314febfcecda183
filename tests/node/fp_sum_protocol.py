"""A tiny two-round protocol on the real RoundMachine engine, to test the node's session
machinery before (and independently of) the CGGMP21 machines.

Round 1: every party broadcasts a commitment to a random 64-bit value and sends each peer a
private random value. Round 2: every party broadcasts the opening. Output: the sum of all
opened values and the sum of the private values received. A party whose opening does not
match its commitment is blamed.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from fusion_prime.proto.generated import peer_pb2
from fusion_prime.protocol.encoding import Decoder, Encoder
from fusion_prime.protocol.machine import Blame, ProtocolMessage, RoundMachine


class SumMachine(RoundMachine):
    phase = "sum"
    rounds = 2

    def __init__(self, *args: Any, slow: float = 0.0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.value = secrets.randbits(64)
        self.salt = secrets.token_bytes(16)
        self.slow = slow
        self.commitments: dict[int, bytes] = {}
        self.opened: dict[int, int] = {self.me: self.value}
        self.private_in: dict[int, int] = {}

    def _commit(self, value: int, salt: bytes) -> bytes:
        return hashlib.sha256(self.session_id + value.to_bytes(8, "big") + salt).digest()

    def _opening(self) -> tuple[int, bytes]:
        return self.value, self.salt

    def _round_broadcasts(self, r: int) -> bool:
        return True

    def _round_private(self, r: int) -> bool:
        return r == 1

    def _make_round(self, r: int):
        if r == 1:
            private = {j: Encoder().uint(secrets.randbits(32)).finish() for j in self.peers}
            return Encoder().bytes(self._commit(self.value, self.salt)).finish(), private
        value, salt = self._opening()
        return Encoder().uint(value).bytes(salt).finish(), {}

    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        if self.slow:
            time.sleep(self.slow)  # stands in for heavy arithmetic that releases the GIL
        dec = Decoder(payload, "sum")
        if r == 1:
            self.commitments[sender] = dec.bytes(32)
            dec.finish()
            return
        value, salt = dec.uint(64), dec.bytes(16)
        dec.finish()
        if self._commit(value, salt) != self.commitments[sender]:
            raise Blame(sender, "opening does not match the commitment")
        self.opened[sender] = value

    def _take_private(self, r: int, sender: int, payload: bytes) -> None:
        dec = Decoder(payload, "sum private")
        self.private_in[sender] = dec.uint(32)
        dec.finish()

    def _check_private(self, r: int, sender: int, receiver: int, payload: bytes) -> None:
        Decoder(payload, "sum private").uint(32)

    def _result(self) -> dict[str, int]:
        return {"sum": sum(self.opened.values()) % 2**64, "private": sum(self.private_in.values())}


class CheatingSumMachine(SumMachine):
    """Opens a different value than it committed to."""

    def _opening(self) -> tuple[int, bytes]:
        return (self.value + 1) % 2**64, self.salt


class MuteSumMachine(SumMachine):
    """Accepts the session and then never says anything."""

    def start(self) -> list[bytes]:
        super().start()
        return []

    def receive(self, data: bytes) -> list[bytes]:
        super().receive(data)
        return []

    def timeout_notice(self, waiting):  # silent to the end: not even a timeout notice
        return []


class GarbageSumMachine(SumMachine):
    """Sends, in place of each of its real messages, garbage under its own name with the right
    round and kind: a broken signature (``garble = "signature"``) or a properly signed message
    for another session (``garble = "session"``). Its real messages never leave. The machines
    receiving them drop them without blame (nothing proves who made them)."""

    garble = "signature"

    def _garbled(self, out: list[bytes]) -> list[bytes]:
        bad = []
        for raw in out:
            m = ProtocolMessage.from_bytes(raw)
            if self.garble == "signature":
                sig = m.signature[:-1] + bytes([m.signature[-1] ^ 1])
                bad.append(ProtocolMessage(m.session_id, m.phase, m.round, m.kind, m.sender, m.receiver, m.payload,
                                           sig).to_bytes())
            else:
                other = ProtocolMessage(hashlib.sha256(m.session_id).digest(), m.phase, m.round, m.kind, m.sender,
                                        m.receiver, m.payload)
                bad.append(ProtocolMessage(other.session_id, m.phase, m.round, m.kind, m.sender, m.receiver,
                                           m.payload, self._identity.sign(other.digest())).to_bytes())
        return bad

    def start(self) -> list[bytes]:
        return self._garbled(super().start())

    def receive(self, data: bytes) -> list[bytes]:
        return self._garbled(super().receive(data))


class OtherSessionSumMachine(GarbageSumMachine):
    garble = "session"


class SumPhase:
    """PhaseHandler for the sum protocol; ``behaviour`` picks honest, cheating, mute or garbage."""

    phase = "sum"

    def __init__(self, behaviour: str = "honest", slow: float = 0.0) -> None:
        self.behaviour = behaviour
        self.slow = slow
        self.finished: list[Any] = []
        self.failures: list[Any] = []

    def build(self, ctx):
        cls = {"honest": SumMachine, "cheat": CheatingSumMachine, "mute": MuteSumMachine,
               "garbage": GarbageSumMachine, "other-session": OtherSessionSumMachine}[self.behaviour]
        return cls(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster, slow=self.slow)

    def finish(self, ctx, output):
        self.finished.append(output)
        return output

    def failed(self, ctx, outcome):
        self.failures.append(outcome)


def fill_sum(proposal: peer_pb2.SessionProposal) -> None:
    proposal.opaque.data = b"sum"


class FastSumMachine(SumMachine):
    phase = "fast"


class FastSumPhase(SumPhase):
    phase = "fast"

    def build(self, ctx):
        return FastSumMachine(ctx.session_id, ctx.me, ctx.parties, ctx.identity, ctx.roster)
