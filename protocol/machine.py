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

Two additions make *outcomes* agree, not only broadcasts (neither is in the paper, which
assumes every party outputs once the last round is consistent; a custody network must also
survive a party that makes the last round end differently at different peers):

* **Confirmation** (``require_confirmation()``; the node asks for it for every phase whose
  output it stores). When the last round is done the machine does not finish: it exposes
  ``awaiting_store``; the node stores the output durably as *pending* and calls ``stored()``,
  which broadcasts a signed ``CONFIRM`` of the session transcript (every broadcast of every
  round, by hash). Only with a confirmation from every party is the machine ``DONE``, holding
  a :class:`Certificate` - signed evidence any party can show any other that everybody stored
  the same output. Then, and only then, may the node make the output usable and erase what it
  replaces. Whoever completes the certificate relays it once (``RELAY``), so a confirmation
  sent to one peer only still reaches everybody through that peer.
* **Abort notices**. A machine that aborts broadcasts a signed ``ABORT`` naming the culprits
  and carrying the signed messages that prove it (a malformed or lying echo, an equivocation,
  a message no round allows, a private message that fails third-party checks). A receiver
  re-judges that evidence from its own state and names the same culprits; a notice whose
  evidence proves nothing here names its sender once this party has seen the whole run succeed
  (the sender stopped a run that was fine). A deadline becomes a ``timeout`` notice listing who
  owed what: a party that says it never received a message another party provably sent can
  only be told apart from that sender by nobody, so both are named together as a *dispute*.
  A timeout notice forwards the (small) notices its sender holds from others, each still
  signed by its author, and the signed messages behind the faults it recorded after
  confirming, so that a notice or a fault shown to one party only still reaches the verdicts
  of the others. At the deadline a party counts what it held when its own timeout notice went
  out and what the others' timeout notices forward - not a stop or fault shown to it alone
  afterwards, which it could no longer pass on - so every honest party judges from the same
  statements.

Once a party has *confirmed*, nothing ends the session at that party unless it proves that no
certificate can exist: a notice by k proving a fault of someone other than k (k is then honest
and stopped before confirming). Anything else - "I stopped", a malformed notice or relay, a
confirmation of another transcript, a second σ, a message no round allows - proves at most a
fault of its own signer, who may have confirmed to the others (they then complete the
certificate with our confirmation and relay it): aborting on it would leave this party aborted
while they finish (issue 11 review, R1-R7). Such faults are recorded (``late_faults``) and
named at the deadline; the certificate or the deadline ends the session. A confirmation of our
own transcript counts even if its signer also signed another one. Phases with nothing to store
(signing) confirm in the step that ends their last round (``require_confirmation(store=False)``),
and whatever a step has signed is sent even if a blame ends that step (an outbox: a dropped
echo would get its honest sender named silent, R9).
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
KIND_CONFIRM = 2  # "I durably stored this session's output": the transcript digest, signed
KIND_RELAY = 3  # every confirmation this party holds, forwarded once it holds them all
KIND_ABORT = 4  # "I stopped": culprits, disputes, reason and the signed evidence
CONTROL_KINDS = (KIND_CONFIRM, KIND_RELAY, KIND_ABORT)
MAX_PAYLOAD = 4 << 20
MAX_NOTICE_EVIDENCE = 64
MAX_FORWARDED_NOTICE = 16 << 10  # a stop or timeout notice, forwarded inside a timeout notice
CONFIRM_TAG = b"fusion-prime/confirm/v1"


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
    """Raised inside a round handler: ``culprits`` sent something the protocol forbids.
    ``evidence``: the signed messages that prove it to a third party (sent in the abort notice).
    ``shown_by``: the party whose abort notice carried that evidence, when it is not a culprit.
    Such a party stopped on a fault it could prove of somebody else, so it is honest (one faulty
    party at most) and never confirms: no certificate can exist, and the blame ends the session
    even at a party that has confirmed (issue 11). Any other blame proves only that its culprits
    signed something wrong - which says nothing about what they sent the other parties."""

    def __init__(self, culprits: int | Iterable[int], reason: str,
                 evidence: Iterable[ProtocolMessage] = (), shown_by: int | None = None) -> None:
        self.culprits = (culprits,) if isinstance(culprits, int) else tuple(sorted(set(culprits)))
        super().__init__(f"party {', '.join(map(str, self.culprits))}: {reason}")
        self.reason = reason
        self.evidence = tuple(evidence)
        self.shown_by = shown_by


@dataclass(frozen=True)
class Abort:
    """How a session ended when it did not succeed: who is to blame and why. ``disputes`` are
    pairs that the evidence cannot tell apart (one says it never received what the other
    says it sent): neither is named culprit, and a retry avoids both."""

    culprits: tuple[int, ...]
    reason: str
    disputes: tuple[tuple[int, int], ...] = ()


def confirm_digest(session_id: bytes, phase: str, transcript: bytes) -> bytes:
    return hashlib.sha256(
        Encoder().bytes(CONFIRM_TAG).bytes(session_id).bytes(phase.encode()).bytes(transcript).finish()
    ).digest()


@dataclass(frozen=True)
class Certificate:
    """Every party's signed confirmation that it durably stored the output of one session
    (the same transcript): what a node needs before it makes the output usable or erases what
    the output replaces, and what it can show a peer that missed the end of the session."""

    session_id: bytes
    phase: str
    transcript: bytes  # 32-byte digest of every round's broadcasts
    confirmations: tuple[bytes, ...]  # the signed CONFIRM messages, one per party

    def verify(self, parties: Sequence[int], roster: Mapping[int, bytes]) -> bool:
        seen: set[int] = set()
        for raw in self.confirmations:
            try:
                msg = ProtocolMessage.from_bytes(raw)
            except InvalidInput:
                return False
            if (msg.session_id, msg.phase, msg.kind, msg.receiver) != (self.session_id, self.phase, KIND_CONFIRM,
                                                                       BROADCAST):
                return False
            if msg.sender not in parties or msg.sender in seen or msg.payload != self.transcript:
                return False
            if not verify_signature(roster[msg.sender], msg.digest(), msg.signature):
                return False
            seen.add(msg.sender)
        return seen == set(parties)

    def to_bytes(self) -> bytes:
        return (Encoder().bytes(self.session_id).bytes(self.phase.encode()).bytes(self.transcript)
                .list_of_bytes(self.confirmations).finish())

    @classmethod
    def from_bytes(cls, data: bytes) -> Certificate:
        dec = Decoder(data, "certificate")
        session_id, phase, transcript = dec.bytes(), dec.bytes().decode("ascii", "replace"), dec.bytes(32)
        confirmations = tuple(dec.list_of_bytes())
        dec.finish()
        return cls(session_id, phase, transcript, confirmations)

    def __repr__(self) -> str:
        return f"Certificate(phase={self.phase}, confirmations={len(self.confirmations)})"


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
        # confirmation and notices (see the module docstring)
        self._confirming = False  # require_confirmation() was called
        self._store_first = False  # ... by a node that stores the output before it confirms
        self.awaiting_store = False  # the last round is done; the node must store, then call stored()
        self._stored = False
        self._transcript: bytes | None = None
        self._confirms: dict[int, ProtocolMessage] = {}
        self._relayed = False
        self.certificate: Certificate | None = None
        # Set when this party ended on proof that no certificate can exist (an honest party
        # stopped before confirming): a node need not ask its peers for one (node.session).
        self.certificate_impossible = False
        self._notices: dict[int, ProtocolMessage] = {}  # unverified abort notices, judged later
        # notices of others that came forwarded inside a timeout notice, by signature
        self._forwarded: dict[bytes, ProtocolMessage] = {}
        # After this party confirmed, notices do not end the session (see _judge_notices): who
        # said it stopped (its missing confirmation is excused at the deadline), and who proved
        # only its own fault (named at the deadline).
        self._stopped_late: dict[int, str] = {}
        self._faulted_late: dict[int, str] = {}
        self._mined: set[bytes] = set()  # signatures of timeout notices whose forwarded notices were taken
        # What the deadline verdict counts must be what every honest party counts (issue 11
        # review, finding 5): what this party held when its timeout notice (its *statement*)
        # went out - which that notice forwards - and what other parties' timeout notices
        # forward. Learned directly after the statement, a stop or a fault may have been shown to
        # this party alone: it is kept for the reason only (``_unshared_late``).
        self._statement_sent = False
        self._held_at_statement: set[bytes] = set()  # signatures of the notices held then
        self._stop_notices: dict[int, ProtocolMessage] = {}  # the notice behind each _stopped_late
        self._late_evidence: dict[int, tuple[ProtocolMessage, ...]] = {}  # behind each _faulted_late
        self._unshared_late: dict[int, str] = {}
        self._notices_dirty = False
        # timeout notices: what each party says it waits for, as (party, round, kind, private)
        self.reported_missing: dict[int, list[tuple[int, int, int, bool]]] = {}

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

    @property
    def transcript(self) -> bytes:
        """The digest this party confirms (set when the output is ready to be stored)."""
        return self._transcript or b""

    def require_confirmation(self, *, store: bool = True) -> None:
        """Finish only once every party confirmed the same transcript (call before start).

        ``store=True`` (a phase whose output the node keeps): when the last round is done the
        machine waits in ``awaiting_store`` until the node has stored the output and called
        ``stored()``. ``store=False`` (a phase with nothing durable to write at its end, such
        as signing): the machine confirms in the same step that completes the last round. A
        later ``store=True`` wins over an earlier ``store=False``: nobody confirms an output
        its node still has to store."""
        if self._round != 0:
            raise ProtocolError("confirmation must be required before the machine starts")
        self._confirming = True
        self._store_first = self._store_first or store

    @property
    def confirmed(self) -> bool:
        """This party has sent its confirmation: from now on every other party may complete
        the certificate with it, so this party may no longer end the session on its own
        judgement alone (see ``_judge_notices``)."""
        return self._stored

    @property
    def late_faults(self) -> dict[int, str]:
        """Faults proven by a party's own signed messages after this party confirmed, which did
        not end the session here (see ``_late``): the session may still end done, and the node
        logs who misbehaved. Reasons only, never a payload."""
        return dict(self._faulted_late)

    def stored(self) -> list[bytes]:
        """The node stored the output durably: broadcast our confirmation of the transcript."""
        if not self.awaiting_store or self._stored:
            raise ProtocolError("nothing is waiting to be stored")
        return self._guarded(self._send_confirm)

    def store_failed(self, reason: str) -> list[bytes]:
        """The node could not store the output: abort (nobody is to blame) and say so."""
        return self.withdraw(f"could not store the output: {reason}")

    def withdraw(self, reason: str) -> list[bytes]:
        """This party stops for a reason of its own (a storage fault, an internal error): abort
        naming nobody, and tell the peers, so that they do not wait and name it silent."""
        if self.status is not Status.RUNNING:
            return []
        return self._stop([], reason)

    def waiting_for(self) -> list[tuple[int, int, int, bool]]:
        """What this machine waits for, as (party, round, kind, private) slots: main messages
        owed to us first (a party that sent nothing valid is named before parties that merely
        lack their echo), then echoes; in the confirmation stage, confirmations. Judged from
        what was *accepted* (signature-checked), never from what merely arrived."""
        if self.status is not Status.RUNNING or self._round == 0:
            return []
        if self.awaiting_store:
            # a confirmation of another transcript is not the one owed (see _check_confirms)
            return [(j, self.rounds + 1, KIND_CONFIRM, False) for j in self.peers
                    if j not in self._confirms or self._confirms[j].payload != self._transcript]
        r = self._round
        st = self._st(r)
        broadcasters = self._broadcasters(r)
        lacking = [(j, r, KIND_MAIN, False) for j in self.peers
                   if j in broadcasters and (j, BROADCAST) not in st.main]
        lacking += [(j, r, KIND_MAIN, True) for j in self.peers
                    if self.me in self._private_receivers(r, j) and (j, self.me) not in st.main]
        if not lacking:
            lacking = [(j, r, KIND_ECHO, False) for j in self.peers if j not in st.echo]
        return sorted(lacking)

    def timeout_notice(self, waiting: Sequence[tuple[int, int, int, bool]]) -> list[bytes]:
        """The node's round deadline passed: the signed ``timeout`` notice to broadcast, saying
        what this party waits for. The machine keeps running so that the peers' notices can
        still arrive; ``conclude_timeout`` ends it."""
        if self.status is not Status.RUNNING:
            return []
        if not self._statement_sent:
            self._statement_sent = True
            self._held_at_statement = {n.signature for n in self._notices.values()} | set(self._forwarded)
        return [self._notice((), "round deadline passed", self._forwardable_notices(), timeout=waiting)]

    def _forwardable_notices(self) -> list[ProtocolMessage]:
        """The peers' notices this party holds, and the signed messages behind the faults it
        recorded after confirming (``_late_evidence``), forwarded as evidence in its timeout
        notice: a notice or a fault that its sender showed some parties only then reaches every
        party that hears from us, so the verdicts at the deadline are drawn from the same
        statements. Only small messages travel (a stop or a timeout notice, a confirmation, a σ -
        not a notice carrying round messages), so that our notice stays far below the payload
        limit whatever the others sent."""
        notices = {n.signature: n for n in (*self._notices.values(), *self._stop_notices.values(),
                                            *self._forwarded.values())}
        out = [n for _, n in sorted(notices.items()) if len(n.payload) <= MAX_FORWARDED_NOTICE]
        seen = set(notices)
        for _, evidence in sorted(self._late_evidence.items()):
            for m in evidence:
                if m.signature not in seen and m.sender != self.me and len(m.payload) <= MAX_FORWARDED_NOTICE:
                    seen.add(m.signature)
                    out.append(m)
        return out[:MAX_NOTICE_EVIDENCE]

    def conclude_timeout(self, waiting: Sequence[tuple[int, int, int, bool]]) -> None:
        """End the machine with the culprits and disputes ``timeout_verdict`` computes."""
        if self.status is not Status.RUNNING:
            return
        culprits, disputes = self.timeout_verdict(waiting)
        reason = "round deadline passed; waiting for " + ", ".join(
            f"party {j} (round {r} {('main', 'echo', 'confirm')[min(k, 2)]}{' private' if p else ''})"
            for j, r, k, p in waiting)
        if disputes:
            reason += "; disputed: " + ", ".join(f"{a} and {b}" for a, b in disputes)
        for k, why in sorted({**self._stopped_late, **self._faulted_late}.items()):
            reason += f"; party {k} after this party confirmed: {why[:200]}"
        for k, why in sorted(self._unshared_late.items()):
            reason += f"; party {k} after this party's timeout notice (not counted): {why[:200]}"
        self.status = Status.ABORTED
        self.abort = Abort(culprits, reason, disputes)

    def timeout_verdict(
        self, waiting: Sequence[tuple[int, int, int, bool]]
    ) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
        """Who a deadline names, from what this party waits for and the timeout notices of the
        others (``reported_missing``). Every party that reported is an *observer*, this one too.

        * A party owed something that sent no notice is silent: a culprit.
        * A party that is itself blocked at an earlier step than what it owes is excused
          (a missing round-r echo from a party that never got a round-r message).
        * A broadcast, echo or confirmation that *every* other observer (two at least) lacks
          names its sender: an honest observer does not lie about what it lacks.
        * Otherwise - a private message, or a broadcast only some lack - nobody can tell
          whether the sender withheld it or the observer lies: each such pair is a *dispute*.
        * After this party confirmed (see ``_judge_notices`` and ``_late``): a party proven at
          fault by its own signed messages is a culprit; a party that said it stopped owes no
          confirmation and is no observer."""
        observers: dict[int, list[tuple[int, int, int, bool]]] = {self.me: list(waiting)}
        for k, entries in self.reported_missing.items():
            if k in self._stopped_late:
                # It said it stopped, so it waits for nothing: what a timeout notice of its says
                # it lacks is not counted. Else a party could say it stopped (its own missing
                # confirmation excused) and also claim to lack every honest confirmation,
                # putting each honest party in a dispute with it (issue 11 review, R8).
                continue
            observers.setdefault(k, list(entries))
        blocked = {k: min((r, kind) for _, r, kind, _ in entries) for k, entries in observers.items() if entries}

        def excused(j: int, r: int, kind: int) -> bool:
            b = blocked.get(j)
            if b is None:
                return False
            if kind == KIND_MAIN:
                return b[0] < r
            if kind == KIND_ECHO:
                return b < (r, KIND_ECHO)
            return b[0] <= self.rounds  # a confirmation is owed only by a party past every round

        lack: dict[tuple[int, int, int, bool], set[int]] = {}
        for o, entries in observers.items():
            for slot in entries:
                lack.setdefault(slot, set()).add(o)
        culprits: set[int] = set()
        disputes: set[tuple[int, int]] = set()
        # A claim its maker's own signed messages contradict is a lie: k says it never got a
        # round-r main, yet k signed its round-r echo (sent only once every main was in), a
        # later round's message, or a confirmation.
        for k, entries in self.reported_missing.items():
            for _, r, kind, _ in entries:
                later = [st for rr, st in self._state.items() if rr > r and (k, BROADCAST) in st.main]
                echoed = (self._state.get(r) is not None and k in self._state[r].echo and kind == KIND_MAIN)
                if later or echoed or (k in self._confirms and kind != KIND_CONFIRM):
                    culprits.add(k)
        for k in culprits:
            observers.pop(k, None)
        culprits.update(self._faulted_late)
        for (j, r, kind, private), who in sorted(lack.items()):
            who = who - culprits
            if kind == KIND_CONFIRM and j in self._stopped_late:
                continue  # it said it stopped (a storage fault, say): nobody is named for that
            if j not in observers:
                culprits.add(j)
            elif excused(j, r, kind):
                continue
            elif not who:
                continue
            elif not private and len(set(observers) - {j}) >= 2 and who >= set(observers) - {j}:
                culprits.add(j)
            else:
                disputes.update((min(o, j), max(o, j)) for o in who if o != j)
        disputes = {d for d in disputes if not set(d) & culprits}
        return tuple(sorted(culprits)), tuple(sorted(disputes))

    def result(self) -> Any:
        """The output, or raise SessionAborted naming the culprits."""
        if self.status is Status.ABORTED and self.abort is not None:
            raise SessionAborted(self.abort)
        if self.status is not Status.DONE:
            raise ProtocolError("session not finished")
        return self.output

    # engine -------------------------------------------------------------------------------
    def _guarded(self, step) -> list[bytes]:  # type: ignore[no-untyped-def]
        """Run one step and everything it unblocks. ``out`` is an outbox: what the step already
        signed (an echo, a confirmation) is sent even when a blame ends the step. Dropping it
        would leave the peers waiting for a message this party did produce, and at their
        deadline they would name this honest party as silent (issue 11 review, R9)."""
        out: list[bytes] = []
        try:
            step_out = step()
            if step_out:
                out.extend(step_out)
            self._advance(out)
        except Blame as blame:
            if self._late(blame):
                return out
            out.extend(self._stop(blame.culprits, blame.reason, blame.evidence))
        return out

    def _late(self, blame: Blame, shared: bool = False) -> bool:
        """After this party confirmed, a blame that proves only its culprits' own signed faults
        does not end the session here: record it (``timeout_verdict`` names the culprits at the
        deadline) and carry on. The culprit may have sent its true confirmation to the others,
        who complete the certificate with ours and relay it here; aborting now would leave this
        party aborted while they are done (issue 11 review, R1-R7). Only a blame ``shown_by``
        another party's notice proves that no certificate can exist. True if recorded.
        ``shared``: the blame comes from a notice every honest party holds too (see
        ``_record_fault``)."""
        if not self._stored or blame.shown_by is not None or self.status is not Status.RUNNING:
            return False
        for culprit in blame.culprits:
            self._record_fault(culprit, blame.reason, blame.evidence, shared)
        return True

    def _fault(self, blame: Blame, shared: bool = False) -> None:
        """Raise ``blame`` unless ``_late`` records it: for the places that must go on with the
        step (the rest of a relay, the other notices, the certificate) after a late fault."""
        if not self._late(blame, shared):
            raise blame

    def _record_fault(self, party: int, reason: str, evidence: Sequence[ProtocolMessage], shared: bool) -> None:
        """A fault that does not end the session, for the deadline verdict - unless it was
        learned directly after this party's timeout notice went out: that notice could not pass
        it on, so the other parties may never learn it, and counting it here alone would make
        the verdicts differ (finding 5). ``shared``: it came from a notice held when our
        timeout notice went out, or forwarded in another party's timeout notice."""
        if self._statement_sent and not shared:
            self._unshared_late.setdefault(party, reason)
            return
        self._faulted_late.setdefault(party, reason)
        self._late_evidence.setdefault(party, tuple(evidence))

    def _record_stop(self, party: int, reason: str, notice: ProtocolMessage, shared: bool) -> None:
        """``party`` said it stopped after we confirmed: its missing confirmation is excused at
        the deadline. The same rule as ``_record_fault`` decides whether it counts."""
        if self._statement_sent and not shared:
            self._unshared_late.setdefault(party, f"said it stopped: {reason}")
            return
        self._stopped_late.setdefault(party, reason)
        self._stop_notices.setdefault(party, notice)

    def _abort(self, culprits: Iterable[int], reason: str) -> None:
        if self.status is Status.RUNNING:
            self.status = Status.ABORTED
            self.abort = Abort(tuple(sorted(set(culprits))), reason)

    def _stop(self, culprits: Iterable[int], reason: str, evidence: Iterable[ProtocolMessage] = ()) -> list[bytes]:
        """Abort and return the notice that tells every peer why, with the evidence."""
        if self.status is not Status.RUNNING:
            return []
        culprits = tuple(sorted(set(culprits)))
        self._abort(culprits, reason)
        return [self._notice(culprits, reason, tuple(evidence))]

    def _notice(self, culprits: Sequence[int], reason: str, evidence: Sequence[ProtocolMessage],
                timeout: Sequence[tuple[int, int, int, bool]] = ()) -> bytes:
        disputes = self.abort.disputes if self.abort else ()
        flat_timeout = [x for j, r, k, p in timeout for x in (j, r, k, int(p))]
        payload = (
            Encoder().uints(culprits).uints(flat_timeout).uints([x for d in disputes for x in d])
            .bytes(reason.encode()[:2048]).list_of_bytes(m.to_bytes() for m in evidence[:MAX_NOTICE_EVIDENCE])
            .finish()
        )
        return self._sign(self.rounds + 1, KIND_ABORT, BROADCAST, payload)

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
        if msg.kind in CONTROL_KINDS and msg.round == self.rounds + 1 and msg.receiver == BROADCAST:
            return self._accept_control(msg)
        problem = self._shape_problem(msg)
        if problem is not None:
            self._fault(Blame(msg.sender, problem, evidence=(msg,)))
            return []
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
            self._fault(Blame(msg.sender, f"signed two different messages for round {msg.round}",
                              evidence=(previous, msg)))
            return []
        slot[key] = msg
        return []

    def _shape_problem(self, msg: ProtocolMessage) -> str | None:
        """What is wrong with a signed message's header alone (checkable by anyone)."""
        if not 1 <= msg.round <= self.rounds or msg.kind not in (KIND_MAIN, KIND_ECHO):
            return f"signed a message for round {msg.round} kind {msg.kind}, which does not exist"
        if msg.kind == KIND_ECHO and msg.receiver != BROADCAST:
            return "sent an echo privately"
        if msg.kind == KIND_MAIN:
            if msg.receiver == BROADCAST:
                expected = msg.sender in self._broadcasters(msg.round)
            else:
                expected = msg.receiver in self._private_receivers(msg.round, msg.sender)
            if not expected:
                return (f"sent an unexpected {'broadcast' if msg.receiver == 0 else 'private'} "
                        f"message in round {msg.round}")
        return None

    # confirmation ----------------------------------------------------------------------------
    def _transcript_digest(self) -> bytes:
        """Every broadcast of every round that ran, by sender and hash: what the echo steps made
        identical at every honest party, and from which the public output is computed."""
        enc = Encoder()
        for r in range(1, self._round + 1):
            st = self._st(r)
            for j in self._broadcasters(r):
                enc.uint(r).uint(j).bytes(st.main[(j, BROADCAST)].payload_hash)
        return hashlib.sha256(enc.finish()).digest()

    def _send_confirm(self) -> list[bytes]:
        self._stored = True
        assert self._transcript is not None
        mine = self._sign(self.rounds + 1, KIND_CONFIRM, BROADCAST, self._transcript)
        self._confirms[self.me] = ProtocolMessage.from_bytes(mine)
        return [mine]

    def _accept_control(self, msg: ProtocolMessage) -> list[bytes]:
        if msg.kind == KIND_CONFIRM:
            previous = self._confirms.get(msg.sender)
            if previous is None:
                if not self._confirming:
                    raise Blame(msg.sender, "sent a confirmation in a session that has none", evidence=(msg,))
                self._confirms[msg.sender] = msg
            elif previous.payload != msg.payload:
                # Keep the one of our own transcript: it is what the certificate needs, and a
                # peer may complete (and relay) the certificate with it. The other one is
                # evidence of the signer's fault.
                if self._transcript is not None and msg.payload == self._transcript:
                    self._confirms[msg.sender] = msg
                self._fault(Blame(msg.sender, "signed two different confirmations", evidence=(previous, msg)))
            return []
        if msg.kind == KIND_RELAY:
            try:
                relayed = Decoder(msg.payload, "relay").list_of_bytes(len(self.parties))
            except InvalidInput:
                self._fault(Blame(msg.sender, "sent a malformed relay", evidence=(msg,)))
                return []
            for raw in relayed:
                try:
                    inner = ProtocolMessage.from_bytes(raw)
                except InvalidInput:
                    continue
                if (inner.kind != KIND_CONFIRM or inner.sender == self.me or inner.sender not in self._roster
                        or inner.session_id != self.session_id or inner.phase != self.phase
                        or inner.round != self.rounds + 1 or inner.receiver != BROADCAST
                        or not verify_signature(self._roster[inner.sender], inner.digest(), inner.signature)):
                    continue  # not a confirmation its sender signed: proves nothing, blames nobody
                self._accept_control(inner)
            return []
        # The latest notice of each sender counts (a timeout notice may be followed by one
        # with evidence); each is judged when it arrives and again only when this party's own
        # state grows (a round validated, the confirmation stage reached) - never per message.
        self._notices[msg.sender] = msg
        self._notices_dirty = True
        return self._judge_notices()

    def _check_confirms(self) -> list[bytes]:
        """Called while waiting for confirmations: done once all are in and agree."""
        if not self._stored or self.status is not Status.RUNNING:
            return []
        for j, c in sorted(self._confirms.items()):
            if c.payload != self._transcript:
                # Echo made the broadcasts identical at every honest party, so an honest party's
                # transcript equals ours: a different one is its sender's own doing. We have
                # confirmed, so it is recorded, not an abort (``_late``): j may have confirmed
                # our transcript to the others, and a relay may still bring that here.
                self._fault(Blame(j, "confirmed a different transcript", evidence=(c,)))
        if any(self._confirms.get(p) is None or self._confirms[p].payload != self._transcript
               for p in self.parties):
            return []
        self.certificate = Certificate(self.session_id, self.phase, self._transcript or b"",
                                       tuple(self._confirms[p].to_bytes() for p in self.parties))
        self.status = Status.DONE
        if self._relayed:
            return []
        self._relayed = True
        return [self._sign(self.rounds + 1, KIND_RELAY, BROADCAST,
                           Encoder().list_of_bytes(self.certificate.confirmations).finish())]

    # abort notices ---------------------------------------------------------------------------
    def _judge_notices(self) -> list[bytes]:
        """Judge the abort notices received so far - sent to us, or forwarded inside another
        party's timeout notice - against this party's own view."""
        if self.status is not Status.RUNNING:
            return []
        self._notices_dirty = False
        found: list[ProtocolMessage] = []
        notices = [(k, n, False) for k, n in sorted(self._notices.items())]
        notices += [(n.sender, n, True) for _, n in sorted(self._forwarded.items())]
        for k, notice, forwarded in notices:
            # Whether what this notice shows counts at the deadline (see _record_fault)
            shared = forwarded or notice.signature in self._held_at_statement
            try:
                dec = Decoder(notice.payload, "abort notice")
                claimed, timeout, flat = dec.uints(max_bits=32), dec.uints(max_bits=32), dec.uints(max_bits=32)
                reason = dec.bytes().decode("utf-8", "replace")
                evidence = dec.list_of_bytes()
                dec.finish()
            except (InvalidInput, UnicodeDecodeError):
                self._fault(Blame(k, "sent a malformed abort notice", evidence=(notice,)), shared)
                continue  # recorded after we confirmed (``_late``); the other notices still count
            del claimed, flat  # what k claims is never taken on trust: only evidence counts
            if timeout:
                # A timeout notice is a statement of what k waits for, each time it is judged -
                # never a stop (issue 11 review, R3: judged a second time, it used to fall
                # through and excuse k's missing confirmation). What it forwards is taken once
                # per notice.
                if notice.signature not in self._mined:
                    self._mined.add(notice.signature)
                    found.extend(self._forwarded_notices(k, evidence))
                    self._take_forwarded_faults(k, evidence)
                slots = [(timeout[i], timeout[i + 1], timeout[i + 2], timeout[i + 3])
                         for i in range(0, len(timeout) - len(timeout) % 4, 4)]
                if (len(timeout) % 4 or len(slots) > 2 * len(self.parties)
                        or any(not 1 <= r <= self.rounds + 1 or kd not in (KIND_MAIN, KIND_ECHO, KIND_CONFIRM)
                               or p not in (0, 1) or (kd == KIND_CONFIRM) != (r == self.rounds + 1)
                               for _, r, kd, p in slots)):
                    self._fault(Blame(k, "sent a malformed timeout notice", evidence=(notice,)), shared)
                    continue
                slots = [(j, r, kd, bool(p)) for j, r, kd, p in slots]
                said = [s for s in slots if s[0] in self._roster and s[0] != k]
                if forwarded:
                    self.reported_missing.setdefault(k, said)  # what k told us itself comes first
                else:
                    self.reported_missing[k] = said
                continue
            verdict, proof = self._judge_evidence(evidence)
            why = "; ".join(f"party {j}: {w}" for j, w in sorted(verdict.items()))
            if self._stored and set(verdict) <= {k}:
                # This party has confirmed: with its confirmation - and k's, if k sent it to
                # them - the others may complete the certificate and relay it here. k's word
                # that it stopped, or k's proof of its own fault, cannot show that k confirmed
                # to nobody, so it does not end the session here (else a party could confirm to
                # one peer and stop another: one done, one aborted). The certificate or the
                # deadline ends it; timeout_verdict names k for a proven fault of its own and
                # excuses a stopped k's missing confirmation.
                if verdict:
                    self._record_fault(k, why, proof, shared)
                else:
                    self._record_stop(k, reason, notice, shared)
                continue
            if verdict:
                # Someone other than k is proven at fault, so k is honest (one faulty party at
                # most) and never confirms: no certificate can exist, abort now.
                self.certificate_impossible = True
                raise Blame(verdict.keys(), f"{why} (evidence from party {k})", evidence=proof,
                            shown_by=k if set(verdict) - {k} else None)
            if self.awaiting_store:
                # Every round here completed and was echo-consistent, and k's evidence proves
                # nothing this party can check: k stopped (a storage fault, an internal error,
                # or a lie). We have not confirmed, so no certificate can exist; nobody is named.
                return self._stop((), f"party {k} stopped the session: {reason[:200]}")
        held = {n.signature for n in self._notices.values()} | set(self._forwarded)
        fresh = {m.signature: m for m in found if m.signature not in held}
        if fresh and self.status is Status.RUNNING:
            self._forwarded.update(fresh)
            self._notices_dirty = True
            return self._judge_notices()
        return []

    def _forwarded_notices(self, forwarder: int, evidence: Sequence[bytes]) -> list[ProtocolMessage]:
        """The notices of other parties that ``forwarder``'s timeout notice carries (see
        ``_forwardable_notices``), each checked to be signed by its own sender for this session:
        a forwarder can pass on what another party said, never put words in its mouth."""
        out: list[ProtocolMessage] = []
        for raw in evidence[:MAX_NOTICE_EVIDENCE]:
            try:
                m = ProtocolMessage.from_bytes(raw)
            except InvalidInput:
                continue
            if (m.kind != KIND_ABORT or m.session_id != self.session_id or m.phase != self.phase
                    or m.round != self.rounds + 1 or m.receiver != BROADCAST or m.sender in (self.me, forwarder)
                    or m.sender not in self._roster or len(m.payload) > MAX_FORWARDED_NOTICE
                    or not verify_signature(self._roster[m.sender], m.digest(), m.signature)):
                continue
            out.append(m)
        return out

    def _take_forwarded_faults(self, forwarder: int, evidence: Sequence[bytes]) -> None:
        """The other signed messages in ``forwarder``'s timeout notice: what proved a fault to
        it after it confirmed (``_late_evidence``). Re-judged here; a fault proven of a party
        other than the forwarder is recorded for the deadline verdict (never an abort: it
        proves nothing about whether a certificate exists), so a fault shown to one honest
        party only is named by all (finding 5). What the forwarder signed itself is left out:
        it could show its own fault to some parties only."""
        msgs: list[bytes] = []
        for raw in evidence[:MAX_NOTICE_EVIDENCE]:
            try:
                m = ProtocolMessage.from_bytes(raw)
            except InvalidInput:
                continue
            if m.kind != KIND_ABORT and m.sender not in (self.me, forwarder):
                msgs.append(raw)
        if not msgs:
            return
        verdict, proof = self._judge_evidence(msgs)
        for j, why in sorted(verdict.items()):
            if j not in (self.me, forwarder):
                self._record_fault(j, why, [m for m in proof if m.sender == j], shared=True)

    def _judge_evidence(self, evidence: Sequence[bytes]) -> tuple[dict[int, str], list[ProtocolMessage]]:
        """Re-judge signed messages from a notice. Only faults that this party can verify from
        the messages and its own state count; anything else proves nothing."""
        verdict: dict[int, str] = {}
        proof: list[ProtocolMessage] = []
        msgs: list[ProtocolMessage] = []
        for raw in evidence[:MAX_NOTICE_EVIDENCE]:
            try:
                m = ProtocolMessage.from_bytes(raw)
            except InvalidInput:
                continue
            if (m.session_id != self.session_id or m.phase != self.phase or m.sender not in self._roster
                    or not verify_signature(self._roster[m.sender], m.digest(), m.signature)):
                continue
            msgs.append(m)
        for m in msgs:
            if m.kind in CONTROL_KINDS:
                bad = None
                if m.round != self.rounds + 1 or m.receiver != BROADCAST:
                    bad = f"signed a kind {m.kind} message for round {m.round} to {m.receiver}, which cannot exist"
                elif m.kind == KIND_CONFIRM and self._stored and m.payload != self._transcript:
                    bad = "confirmed a different transcript"
                elif m.kind == KIND_CONFIRM:
                    # Two confirmations by one signer prove its fault to anyone, also to a party
                    # that has no transcript yet to compare them with.
                    held = self._confirms.get(m.sender)
                    twin = next((o for o in (*msgs, *([held] if held else [])) if o.kind == KIND_CONFIRM
                                 and o.sender == m.sender and o.payload != m.payload), None)
                    if twin is not None:
                        bad = "signed two different confirmations"
                        proof.append(twin)
                elif m.kind == KIND_RELAY:
                    try:
                        Decoder(m.payload, "relay").list_of_bytes(len(self.parties))
                    except InvalidInput:
                        bad = "sent a malformed relay"
                elif m.kind == KIND_ABORT:
                    try:
                        d = Decoder(m.payload, "abort notice")
                        d.uints(max_bits=32), d.uints(max_bits=32), d.uints(max_bits=32), d.bytes(), d.list_of_bytes()
                        d.finish()
                    except InvalidInput:
                        bad = "sent a malformed abort notice"
                if bad is not None:
                    verdict[m.sender] = bad
                    proof.append(m)
                continue
            problem = self._shape_problem(m)
            if problem is not None:
                verdict[m.sender], _ = problem, proof.append(m)
                continue
            st = self._state.get(m.round)
            mine = None
            if st is not None:
                mine = st.echo.get(m.sender) if m.kind == KIND_ECHO else st.main.get((m.sender, m.receiver))
            if mine is not None and mine.payload != m.payload:
                verdict[m.sender] = f"signed two different messages for round {m.round}"
                proof.extend((mine, m))
                continue
            for other in msgs:
                if (other is not m and (other.round, other.kind, other.sender, other.receiver)
                        == (m.round, m.kind, m.sender, m.receiver) and other.payload != m.payload):
                    verdict[m.sender] = f"signed two different messages for round {m.round}"
                    proof.extend((m, other))
            if m.sender in verdict or st is None or not st.validated:
                continue  # a round this party has not validated yet cannot be judged here
            if m.kind == KIND_ECHO:
                found: dict[int, str] = {}
                try:
                    complaints = self._read_echo(m.round, m.sender, m.payload, found)
                except InvalidInput as exc:
                    found[m.sender] = f"malformed echo: {exc}"
                    complaints = []
                if not found:
                    for complainer, accused, ev in complaints:
                        self._judge_complaint(m.round, complainer, accused, ev, found)
                if found:
                    verdict.update(found)
                    proof.append(m)
                    proof.extend(st.main[(j, BROADCAST)] for j in found if (j, BROADCAST) in st.main)
            elif m.kind == KIND_MAIN and m.receiver != BROADCAST and m.receiver != self.me:
                try:
                    self._check_private(m.round, m.sender, m.receiver, m.payload)
                except (Blame, InvalidInput, InvalidProof) as exc:
                    verdict[m.sender] = f"sent party {m.receiver} an invalid private message: " + (
                        exc.reason if isinstance(exc, Blame) else str(exc))
                    proof.append(m)
        return verdict, proof

    def _advance(self, out: list[bytes]) -> None:
        """Move on as far as the messages received allow, appending what to send to ``out``
        (the caller's outbox, kept if a blame interrupts this)."""
        if self.status is Status.RUNNING and self._notices and self._notices_dirty:
            out.extend(self._judge_notices())
        if self.awaiting_store:
            out.extend(self._check_confirms())
            return
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
                if self._confirming:
                    self._transcript = self._transcript_digest()
                    self.awaiting_store = True
                    self._notices_dirty = True
                    out.extend(self._judge_notices())  # a notice that arrived early is judged now
                    if not self._store_first and self.status is Status.RUNNING:
                        # Nothing to store: confirm now; confirmations that came early may
                        # already complete the certificate.
                        out.extend(self._send_confirm())
                        out.extend(self._check_confirms())
                else:
                    self.status = Status.DONE
                break
            out.extend(self._begin_round(r + 1))

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
        self._notices_dirty = True  # evidence about this round can be judged now
        echo = self._sign(r, KIND_ECHO, BROADCAST, self._echo_payload(r))
        if blamed:
            # The echo carries the complaints (private faults) and every party validates the
            # same broadcasts, so the peers reach this verdict themselves; the notice tells
            # them we stopped, with the private messages as evidence.
            culprits = sorted(blamed)
            evidence = [m for _, m in st.complaints]
            return [echo, *self._stop(culprits, "; ".join(f"party {j}: {blamed[j]}" for j in culprits), evidence)]
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
            # Echoes are seen by their receivers only: the signed echoes (and the broadcasts
            # they misreport) are the evidence every other party can re-judge.
            proof = [st.echo[k] for k in self.peers]
            proof += [st.main[(j, BROADCAST)] for j in culprits if (j, BROADCAST) in st.main]
            raise Blame(culprits.keys(), "; ".join(f"party {j}: {why}" for j, why in sorted(culprits.items())),
                        evidence=proof)

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
