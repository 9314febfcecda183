"""The round engine every CGGMP21 phase runs on: sans-IO, in the style of h11.

A machine is created with its inputs, ``start()`` returns the first outgoing messages (bytes),
and ``receive(bytes)`` takes one incoming message and returns what to send in reply. No
sockets, clocks or threads: the node decides when and how bytes move, and what a deadline is.

Each protocol round r runs in two steps:

1. **main**: every party sends its round-r messages — at most one broadcast and one private
   message per peer. When a party has all of them it validates them (proofs, ranges,
   encodings) in a fixed order.
2. **echo**: every party then sends to all a signed summary — for each sender, the hash of the
   broadcast it received and the sender's signature — plus *complaints*: private messages
   that failed validation, forwarded with the sender's signature as evidence.

From the echoes each party learns (a) whether anybody received a different broadcast from j:
two hashes, both signed by j, prove j equivocated (reliable broadcast, CGGMP21 §2 assumes
it); (b) whether a complaint is true: the evidence is re-validated from public data, and
either the accused or the complainer is blamed. Only then does the round's output feed the
next round. So every honest party aborts on the same faults and names the same culprits.

Anything that fails the signature or roster check is dropped and recorded in ``rejected``
(it is not from who it claims, so nobody can be blamed for it); anything properly signed but
wrong is a blame on its signer.
"""

from __future__ import annotations

import enum
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .encoding import Decoder, Encoder
from .errors import InvalidInput, InvalidProof, ProtocolError
from .identity import PartyIdentity, message_digest, verify_signature

BROADCAST = 0
KIND_MAIN = 0
KIND_ECHO = 1
MAX_PAYLOAD = 4 << 20


@dataclass(frozen=True)
class ProtocolMessage:
    session_id: bytes
    phase: str
    round: int
    kind: int
    sender: int
    receiver: int  # BROADCAST or a party index
    payload: bytes
    signature: bytes = b""

    @property
    def payload_hash(self) -> bytes:
        return hashlib.sha256(self.payload).digest()

    def digest(self) -> bytes:
        return message_digest(
            self.session_id, self.phase, self.round, self.kind, self.sender, self.receiver, self.payload_hash
        )

    def to_bytes(self) -> bytes:
        enc = Encoder().bytes(self.session_id).bytes(self.phase.encode()).uint(self.round).uint(self.kind)
        return enc.uint(self.sender).uint(self.receiver).bytes(self.payload).bytes(self.signature).finish()

    @classmethod
    def from_bytes(cls, data: bytes) -> ProtocolMessage:
        dec = Decoder(data, "protocol message")
        session_id = dec.bytes()
        phase = dec.bytes()
        round_no, kind, sender, receiver = dec.uint(16), dec.uint(8), dec.uint(32), dec.uint(32)
        payload = dec.bytes()
        signature = dec.bytes()
        dec.finish()
        if len(payload) > MAX_PAYLOAD:
            raise InvalidInput("protocol message payload too large")
        try:
            phase_text = phase.decode("ascii")
        except UnicodeDecodeError as exc:
            raise InvalidInput("phase name is not ASCII") from exc
        return cls(session_id, phase_text, round_no, kind, sender, receiver, payload, signature)

    def __repr__(self) -> str:  # payloads may be private (shares): never print them
        return (
            f"ProtocolMessage(phase={self.phase}, round={self.round}, kind={self.kind}, "
            f"sender={self.sender}, receiver={self.receiver}, payload_bytes={len(self.payload)})"
        )


class Blame(ProtocolError):
    """Raised inside a round handler: ``culprits`` sent something the protocol forbids."""

    def __init__(self, culprits: int | Iterable[int], reason: str) -> None:
        self.culprits = (culprits,) if isinstance(culprits, int) else tuple(sorted(set(culprits)))
        super().__init__(f"party {', '.join(map(str, self.culprits))}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Abort:
    """How a session ended when it did not succeed: who is to blame and why."""

    culprits: tuple[int, ...]
    reason: str


class Status(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    ABORTED = "aborted"


class SessionAborted(ProtocolError):
    def __init__(self, abort: Abort) -> None:
        super().__init__(f"aborted, culprits {list(abort.culprits)}: {abort.reason}")
        self.abort = abort


@dataclass
class _RoundState:
    main: dict[tuple[int, int], ProtocolMessage] = field(default_factory=dict)  # (sender, receiver)
    echo: dict[int, ProtocolMessage] = field(default_factory=dict)
    validated: bool = False
    complaints: list[tuple[int, ProtocolMessage]] = field(default_factory=list)


class RoundMachine(ABC):
    """Base of every phase. Subclasses implement the ``_round_*`` hooks below."""

    phase: str = ""
    rounds: int = 0

    def __init__(
        self,
        session_id: bytes,
        me: int,
        parties: Sequence[int],
        identity: PartyIdentity,
        roster: Mapping[int, bytes],
    ) -> None:
        if not isinstance(session_id, bytes) or not 16 <= len(session_id) <= 128:
            raise InvalidInput("session id must be 16 to 128 bytes")
        parties = sorted(parties)
        if len(set(parties)) != len(parties) or any(p <= 0 for p in parties):
            raise InvalidInput("party indices must be distinct and positive")
        if me not in parties:
            raise InvalidInput("this party is not among the participants")
        missing = [p for p in parties if p not in roster]
        if missing:
            raise InvalidInput(f"no identity key for parties {missing}")
        if roster[me] != identity.public_key:
            raise InvalidInput("identity key does not match this party's roster entry")
        self.session_id = session_id
        self.me = me
        self.parties: list[int] = parties
        self.peers: list[int] = [p for p in parties if p != me]
        self._identity = identity
        self._roster = {p: bytes(roster[p]) for p in parties}
        self._round = 0
        self._state: dict[int, _RoundState] = {}
        self.status = Status.RUNNING
        self.output: Any = None
        self.abort: Abort | None = None
        self.rejected: list[str] = []

    # hooks --------------------------------------------------------------------------------
    @abstractmethod
    def _round_broadcasts(self, r: int) -> bool:
        """Does every party send a broadcast in round r?"""

    @abstractmethod
    def _round_private(self, r: int) -> bool:
        """Does every party send a private message to every peer in round r?"""

    def _broadcasters(self, r: int) -> list[int]:
        """Who broadcasts in round r. Phases where only some parties speak (resharing: old
        dealers, new receivers) override this; the default is everyone or no one."""
        return list(self.parties) if self._round_broadcasts(r) else []

    def _private_receivers(self, r: int, sender: int) -> list[int]:
        """To whom ``sender`` sends a private message in round r (default: every other party)."""
        return [p for p in self.parties if p != sender] if self._round_private(r) else []

    @abstractmethod
    def _make_round(self, r: int) -> tuple[bytes | None, dict[int, bytes]]:
        """This party's round-r broadcast payload and private payloads by recipient."""

    @abstractmethod
    def _take_broadcast(self, r: int, sender: int, payload: bytes) -> None:
        """Validate and store a peer's broadcast; raise Blame(sender) if it is wrong."""

    @abstractmethod
    def _take_private(self, r: int, sender: int, payload: bytes) -> None:
        """Validate and store a private message to this party; raise Blame(sender)."""

    @abstractmethod
    def _check_private(self, r: int, sender: int, receiver: int, payload: bytes) -> None:
        """Third-party check of a private message (complaint evidence); raise Blame(sender)."""

    def _end_round(self, r: int) -> None:  # noqa: B027 - optional hook, most rounds need nothing
        """Round r is complete and consistent everywhere; raise Blame if the round's combined
        result shows a fault (for example a failed δ-check)."""

    def _is_last_round(self, r: int) -> bool:
        """Phases with an optional final round (presigning's identification round, run only
        when the δ-check fails) finish early when the round is not needed. ``rounds`` is the
        maximum, so a peer's message for the optional round is never mistaken for garbage."""
        return r == self.rounds

    @abstractmethod
    def _result(self) -> Any:
        """The phase's output, once the last round is complete."""

    # public API ---------------------------------------------------------------------------
    @property
    def round(self) -> int:
        return self._round

    def start(self) -> list[bytes]:
        if self._round != 0:
            raise ProtocolError("machine already started")
        return self._guarded(lambda: self._begin_round(1))

    def receive(self, data: bytes) -> list[bytes]:
        if self.status is not Status.RUNNING:
            return []
        try:
            msg = ProtocolMessage.from_bytes(data)
        except InvalidInput as exc:
            self.rejected.append(f"malformed message: {exc}")
            return []
        return self._guarded(lambda: self._accept(msg))

    def accepted(self, r: int) -> tuple[frozenset[tuple[int, int]], frozenset[int]]:
        """What this machine has *accepted* for round ``r``: the (sender, receiver) slots of its
        main messages (receiver ``BROADCAST`` for a broadcast) and the senders of its echoes.

        Only messages that passed the session, phase, roster, round and signature checks are
        here - what ``receive`` dropped into ``rejected`` never is. A driver that must say who
        failed to speak (a round deadline) asks this, so that a peer sending garbage in another
        party's place, or unsigned noise under its own name, cannot make honest parties look
        silent. Read-only; includes this party's own broadcast."""
        st = self._state.get(r)
        if st is None:
            return frozenset(), frozenset()
        return frozenset(st.main), frozenset(st.echo)

    def result(self) -> Any:
        """The output, or raise SessionAborted naming the culprits."""
        if self.status is Status.ABORTED and self.abort is not None:
            raise SessionAborted(self.abort)
        if self.status is not Status.DONE:
            raise ProtocolError("session not finished")
        return self.output

    # engine -------------------------------------------------------------------------------
    def _guarded(self, step) -> list[bytes]:  # type: ignore[no-untyped-def]
        out: list[bytes] = []
        try:
            step_out = step()
            if step_out:
                out.extend(step_out)
            out.extend(self._advance())
        except Blame as blame:
            self._abort(blame.culprits, blame.reason)
        return out

    def _abort(self, culprits: Iterable[int], reason: str) -> None:
        if self.status is Status.RUNNING:
            self.status = Status.ABORTED
            self.abort = Abort(tuple(sorted(set(culprits))), reason)

    def _sign(self, r: int, kind: int, receiver: int, payload: bytes) -> bytes:
        msg = ProtocolMessage(self.session_id, self.phase, r, kind, self.me, receiver, payload)
        signature = self._identity.sign(msg.digest())
        return ProtocolMessage(msg.session_id, msg.phase, r, kind, self.me, receiver, payload, signature).to_bytes()

    def _st(self, r: int) -> _RoundState:
        return self._state.setdefault(r, _RoundState())

    def _begin_round(self, r: int) -> list[bytes]:
        self._round = r
        broadcast, private = self._make_round(r)
        out: list[bytes] = []
        st = self._st(r)
        if self.me in self._broadcasters(r):
            if broadcast is None:
                raise ProtocolError("round must broadcast")
            signed = self._sign(r, KIND_MAIN, BROADCAST, broadcast)
            st.main[(self.me, BROADCAST)] = ProtocolMessage.from_bytes(signed)
            out.append(signed)
        receivers = sorted(self._private_receivers(r, self.me))
        if sorted(private) != receivers:
            raise ProtocolError("round must send exactly one private message to each of its receivers")
        out.extend(self._sign(r, KIND_MAIN, j, private[j]) for j in receivers)
        return out

    def _accept(self, msg: ProtocolMessage) -> list[bytes]:
        if msg.session_id != self.session_id or msg.phase != self.phase:
            self.rejected.append("message for another session or phase")
            return []
        if msg.sender not in self._roster or msg.sender == self.me:
            self.rejected.append(f"message from unknown or own index {msg.sender}")
            return []
        if msg.receiver not in (BROADCAST, self.me):
            self.rejected.append(f"message addressed to party {msg.receiver}")
            return []
        if not verify_signature(self._roster[msg.sender], msg.digest(), msg.signature):
            self.rejected.append(f"bad signature on a message claiming to be from party {msg.sender}")
            return []
        # From here on the sender provably sent this message.
        if not 1 <= msg.round <= self.rounds or msg.kind not in (KIND_MAIN, KIND_ECHO):
            raise Blame(msg.sender, f"signed a message for round {msg.round} kind {msg.kind}, which does not exist")
        if msg.kind == KIND_ECHO and msg.receiver != BROADCAST:
            raise Blame(msg.sender, "sent an echo privately")
        if msg.kind == KIND_MAIN:
            if msg.receiver == BROADCAST:
                expected = msg.sender in self._broadcasters(msg.round)
            else:
                expected = self.me in self._private_receivers(msg.round, msg.sender)
            if not expected:
                raise Blame(msg.sender, f"sent an unexpected {'broadcast' if msg.receiver == 0 else 'private'} "
                            f"message in round {msg.round}")
        st = self._st(msg.round)
        slot: dict[Any, ProtocolMessage]
        key: Any
        if msg.kind == KIND_MAIN:
            slot, key = st.main, (msg.sender, msg.receiver)
        else:
            slot, key = st.echo, msg.sender
        previous = slot.get(key)
        if previous is not None:
            if previous.payload == msg.payload:
                self.rejected.append(f"duplicate message from party {msg.sender}")
                return []
            raise Blame(msg.sender, f"signed two different messages for round {msg.round}")
        if msg.round < self._round and msg.kind == KIND_MAIN:
            raise Blame(msg.sender, f"sent a round {msg.round} message after that round ended")
        slot[key] = msg
        return []

    def _advance(self) -> list[bytes]:
        out: list[bytes] = []
        while self.status is Status.RUNNING and self._round >= 1:
            r = self._round
            st = self._st(r)
            if not st.validated:
                if not self._have_all_main(r):
                    break
                out.extend(self._validate_round(r))
                if self.status is not Status.RUNNING:
                    break
            if len(st.echo) < len(self.peers):
                break
            self._process_echoes(r)
            self._end_round(r)
            if self._is_last_round(r):
                self.output = self._result()
                self.status = Status.DONE
                break
            out.extend(self._begin_round(r + 1))
        return out

    def _have_all_main(self, r: int) -> bool:
        main = self._st(r).main
        broadcasters = self._broadcasters(r)
        for j in self.peers:
            if j in broadcasters and (j, BROADCAST) not in main:
                return False
            if self.me in self._private_receivers(r, j) and (j, self.me) not in main:
                return False
        return True

    def _validate_round(self, r: int) -> list[bytes]:
        st = self._st(r)
        blamed: dict[int, str] = {}
        broadcasters = self._broadcasters(r)
        for j in self.peers:
            if j in broadcasters:
                try:
                    self._take_broadcast(r, j, st.main[(j, BROADCAST)].payload)
                except Blame as blame:
                    blamed[j] = blame.reason
                except (InvalidInput, InvalidProof) as exc:
                    blamed[j] = str(exc)
        for j in self.peers:
            if j in blamed or self.me not in self._private_receivers(r, j):
                continue
            msg = st.main[(j, self.me)]
            try:
                self._take_private(r, j, msg.payload)
            except (Blame, InvalidInput, InvalidProof) as exc:
                blamed[j] = exc.reason if isinstance(exc, Blame) else str(exc)
                st.complaints.append((j, msg))
        st.validated = True
        echo = self._sign(r, KIND_ECHO, BROADCAST, self._echo_payload(r))
        if blamed:
            culprits = sorted(blamed)
            self._abort(culprits, "; ".join(f"party {j}: {blamed[j]}" for j in culprits))
        return [echo]

    def _echo_payload(self, r: int) -> bytes:
        st = self._st(r)
        entries = []
        for j in self._broadcasters(r):
            msg = st.main[(j, BROADCAST)]
            entries.append(Encoder().uint(j).bytes(msg.payload_hash).bytes(msg.signature).finish())
        complaints = [Encoder().uint(j).bytes(m.to_bytes()).finish() for j, m in st.complaints]
        return Encoder().list_of_bytes(entries).list_of_bytes(complaints).finish()

    def _process_echoes(self, r: int) -> None:
        """Equivocation first: if some party sent different broadcasts, parties validated
        different things, so complaints of this round cannot be judged fairly and only the
        equivocator (proven by its two signatures) is named."""
        st = self._st(r)
        culprits: dict[int, str] = {}
        complaints: list[tuple[int, int, bytes]] = []
        for k in self.peers:
            try:
                complaints.extend(self._read_echo(r, k, st.echo[k].payload, culprits))
            except InvalidInput as exc:
                culprits[k] = f"malformed echo: {exc}"
        if not culprits:
            for complainer, accused, evidence in complaints:
                self._judge_complaint(r, complainer, accused, evidence, culprits)
        if culprits:
            raise Blame(culprits.keys(), "; ".join(f"party {j}: {why}" for j, why in sorted(culprits.items())))

    def _read_echo(self, r: int, k: int, payload: bytes, culprits: dict[int, str]) -> list[tuple[int, int, bytes]]:
        st = self._st(r)
        dec = Decoder(payload, "echo")
        entries, complaints = dec.list_of_bytes(), dec.list_of_bytes()
        dec.finish()
        broadcasters = self._broadcasters(r)
        if broadcasters:
            expected = sorted(j for j in broadcasters if j != k)
            seen = []
            for raw in entries:
                e = Decoder(raw, "echo entry")
                j, phash, sig = e.uint(32), e.bytes(32), e.bytes()
                e.finish()
                seen.append(j)
                if j == k or j not in broadcasters:
                    continue
                mine = st.main[(j, BROADCAST)]
                if phash == mine.payload_hash:
                    continue
                other = message_digest(self.session_id, self.phase, r, KIND_MAIN, j, BROADCAST, phash)
                if verify_signature(self._roster[j], other, sig):
                    culprits[j] = f"equivocated: sent different round {r} broadcasts to different parties"
                else:
                    culprits[k] = f"echo misreports party {j}'s round {r} broadcast"
            if sorted(s for s in seen if s != k) != expected:
                culprits[k] = "echo does not cover every party's broadcast"
        elif entries:
            culprits[k] = "echo lists broadcasts in a round without broadcasts"
        out = []
        for raw in complaints:
            c = Decoder(raw, "complaint")
            accused, evidence = c.uint(32), c.bytes()
            c.finish()
            out.append((k, accused, evidence))
        return out

    def _judge_complaint(
        self, r: int, complainer: int, accused: int, evidence: bytes, culprits: dict[int, str]
    ) -> None:
        try:
            msg = ProtocolMessage.from_bytes(evidence)
        except InvalidInput:
            culprits[complainer] = "complaint evidence is malformed"
            return
        valid_slot = (
            msg.session_id == self.session_id
            and msg.phase == self.phase
            and msg.round == r
            and msg.kind == KIND_MAIN
            and msg.sender == accused
            and msg.receiver == complainer
            and accused in self._roster
            and complainer in self._private_receivers(r, accused)
        )
        if not valid_slot or not verify_signature(self._roster[accused], msg.digest(), msg.signature):
            culprits[complainer] = f"complaint against party {accused} carries no valid signed evidence"
            return
        if accused == self.me:
            # The evidence carries our own valid signature, so it is exactly what we sent.
            culprits[complainer] = "complained about a valid message from this party"
            return
        try:
            self._check_private(r, accused, complainer, msg.payload)
        except (Blame, InvalidInput, InvalidProof) as exc:
            culprits[accused] = f"sent party {complainer} an invalid private message: " + (
                exc.reason if isinstance(exc, Blame) else str(exc)
            )
            return
        culprits[complainer] = f"complained about a valid message from party {accused}"


def bind_session(session_id: bytes, phase: str, encoder: Encoder) -> bytes:
    """The sub-session id every hash and proof of a phase uses: the node's session id, the
    phase, and the phase's parameters (party set, threshold, keys) — so parties that disagree
    on any parameter can never agree on a proof or a commitment."""
    data = Encoder().bytes(b"fusion-prime/ssid/v1").bytes(session_id).bytes(phase.encode()).finish()
    return hashlib.sha256(data + encoder.finish()).digest()
