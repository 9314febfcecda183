"""A rogue settlement coordinator: node1's real bridge daemon, with test-only hooks loaded from here.

Run as ``python fp_rogue_coordinator.py CONTROL_DIR <fusion_prime.bridge.daemon arguments…>``. The
process is the production daemon (``fusion_prime.bridge.daemon.main``) with node1's own
configuration, identity key and storage; before it starts, this module wraps a few methods of
``SettlementRuntime`` and ``SettlementStore`` *in this process only* - nothing in the production
code can switch a check off. Until the test asks for something the wrappers pass straight through.

The test drives it through two JSON files in ``CONTROL_DIR`` (each written whole, then renamed):
``plan.json`` (a list of commands, each with an ``id``; new ones are carried out once, in order)
and ``results.json`` (``id`` → what happened). Commands (``do``):

* ``freeze`` - cut no more batches (the honest ones would move the head under a forgery);
  ``thaw`` undoes it. The result is the head the coordinator stopped at.
* ``serve`` - sign, with node1's identity key, a batch at the head + 1 with the given entries
  (hex of ``encode_entry``) and time (``now``; ``ahead`` by ``ms``; ``before`` the head's time by
  ``ms``) and serve it to the listed followers in place of the real one. Never applied here.
* ``propose`` - a checkpoint containing a served forgery (``which``: ``next``, the cycle after the
  last finalised one; ``last``, the last finalised cycle recomputed), proposed for threshold
  signing to each listed follower in a session of {node1, follower}.
* ``equivocate`` - the next real batch that finalises a cycle is served to each listed follower
  with that follower's extra entries in front (a different batch under the same number).
* ``crash`` - when the batch carrying the instruction with idempotency key ``key`` is stored, stop
  right ``before_store`` or ``after_store`` (the test SIGKILLs the process). Followers are never
  served it meanwhile.

``equivocate`` and ``crash`` are answered once armed; what then happens (the batch) is reported
under ``<id>/event``.
* ``clear`` - stop serving forgeries (a freeze stays).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import trio

from fusion_prime.bridge import daemon
from fusion_prime.bridge.settlement import checkpoint as cp
from fusion_prime.bridge.settlement.batch import (
    Batch,
    Credit,
    Finalize,
    SignedBatch,
    decode_batch,
    decode_entry,
    sign_batch,
)
from fusion_prime.bridge.settlement.instructions import SignedInstruction
from fusion_prime.bridge.settlement.merkle import AccountLeaf, build_tree
from fusion_prime.bridge.settlement.runtime import SettlementRuntime, encode_checkpoint_request
from fusion_prime.bridge.settlement.store import SettlementStore
from fusion_prime.node.storage import COORDINATOR_RESERVATION

POLL_SECONDS = 0.1
PRESIGN_ATTEMPTS = 5  # for a proposal's presignature (see Rogue._propose)


class Rogue:
    """The hooks' shared state and the control loop (a thread of its own)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runtime: SettlementRuntime | None = None
        self.lock = threading.RLock()
        self.done: dict[str, Any] = {}
        self.frozen = False
        self.serving: dict[str, dict[int, bytes]] = {}  # follower -> seq -> forged signed batch
        self.forged: dict[str, SignedBatch] = {}  # serve command id -> its batch
        self.equivocation: dict[str, Any] | None = None
        self.crash: dict[str, Any] | None = None
        self.gate: int | None = None  # while set, no batch above it is served
        self.started = False

    # ------------------------------------------------------------------ control files
    def _write_results(self) -> None:
        tmp = self.folder / "results.json.tmp"
        tmp.write_text(json.dumps(self.done, sort_keys=True))
        os.replace(tmp, self.folder / "results.json")

    def report(self, command_id: str, result: dict[str, Any]) -> None:
        with self.lock:
            self.done[command_id] = result
            self._write_results()

    def start(self) -> None:
        if not self.started:
            self.started = True
            threading.Thread(target=self._loop, name="rogue-control", daemon=True).start()

    def _loop(self) -> None:
        while self.runtime is None or self.runtime.ledger is None or self.runtime._token is None:
            time.sleep(POLL_SECONDS)
        seen: set[str] = set()
        while True:
            time.sleep(POLL_SECONDS)
            try:
                commands = json.loads((self.folder / "plan.json").read_text())
            except (OSError, ValueError):
                continue
            for command in commands:
                if command["id"] in seen:
                    continue
                seen.add(command["id"])
                try:
                    result = getattr(self, "do_" + command["do"])(command)
                except Exception as exc:  # reported to the test, which fails on it
                    result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
                if result is not None:
                    self.report(command["id"], result)

    # ------------------------------------------------------------------ commands
    def _rt(self) -> SettlementRuntime:
        assert self.runtime is not None
        return self.runtime

    def do_freeze(self, command: dict[str, Any]) -> dict[str, Any]:
        self.frozen = True
        rt = self._rt()
        with rt._changed:  # a batch being cut finishes first
            led = rt.ledger
            assert led is not None
            return {"head": led.seq, "hash": led.head.hex(), "time_ms": led.time_ms}

    def do_thaw(self, command: dict[str, Any]) -> dict[str, Any]:
        self.frozen = False
        self._rt()._poke()
        return {"ok": True}

    def do_clear(self, command: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.serving, self.equivocation = {}, None
        return {"ok": True}

    def do_serve(self, command: dict[str, Any]) -> dict[str, Any]:
        rt = self._rt()
        entries = tuple(decode_entry(bytes.fromhex(e)) for e in command["entries"])
        now = int(time.time() * 1000)
        with rt._changed:
            led = rt.ledger
            assert led is not None
            when = {"now": max(now, led.time_ms), "ahead": now + int(command.get("ms", 0)),
                    "before": led.time_ms - int(command.get("ms", 0))}[command.get("time", "now")]
            signed = sign_batch(rt.identity, Batch(led.seq + 1, led.head, when, rt.node_id, entries))
        raw = signed.to_bytes()
        with self.lock:
            self.forged[command["id"]] = signed
            for node in command["to"]:
                self.serving.setdefault(node, {})[signed.batch.seq] = raw
        return {"seq": signed.batch.seq, "hash": signed.hash.hex(), "time_ms": signed.batch.time_ms}

    def do_equivocate(self, command: dict[str, Any]) -> dict[str, Any]:
        rt = self._rt()
        after = rt.read(lambda led: led.seq)
        with self.lock:
            self.equivocation = {"id": command["id"], "after": after,
                                 "variants": {n: [decode_entry(bytes.fromhex(e)) for e in entries]
                                              for n, entries in command["variants"].items()}}
        return {"armed": True, "after": after}  # what happened is reported as "<id>/event"

    def do_crash(self, command: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.crash = {"id": command["id"], "when": command["when"], "key": command["key"]}
        return {"armed": True}  # the stop is reported as "<id>/event"

    def do_propose(self, command: dict[str, Any]) -> dict[str, Any]:
        rt = self._rt()
        forged = self.forged[command["serve"]]
        checkpoint = self._forged_checkpoint(forged, command["which"])
        outcomes = {}
        for node in command["signers"]:
            outcomes[node] = trio.from_thread.run(self._propose, checkpoint, node, trio_token=rt._token)
        return {"cycle": checkpoint.cycle, "root": checkpoint.root.hex(), "checkpoint": checkpoint.to_bytes().hex(),
                "outcomes": outcomes}

    def _forged_checkpoint(self, forged: SignedBatch, which: str) -> cp.Checkpoint:
        """This replica's accounts with the forged credits added, as a checkpoint."""
        rt = self._rt()
        with rt._changed:
            led = rt.ledger
            assert led is not None
            rows = {(p, a): [b, h] for p, a, b, h in led.account_rows()}
            pending = {a: p for a, (_, p) in led.liabilities().items() if p}
        for entry in forged.batch.entries:
            if isinstance(entry, Credit):
                row = rows.setdefault((entry.party, entry.asset), [0, 0])
                row[0] += entry.amount
        tree = build_tree(AccountLeaf(p, a, b, h) for (p, a), (b, h) in rows.items())
        finalised = rt.store.checkpoints()
        if not finalised:  # the test must let a cycle finalise first: said plainly, not an IndexError
            raise RuntimeError("no finalised cycle at this coordinator to build a forged checkpoint on")
        last = cp.Checkpoint.from_bytes(finalised[-1]["checkpoint"])
        if which == "next":
            return cp.next_checkpoint(last, tree, batch_seq=forged.batch.seq, batch_hash=forged.hash, pending=pending,
                                      time_ms=forged.batch.time_ms)
        before = cp.Checkpoint.from_bytes(finalised[-2]["checkpoint"]) if len(finalised) > 1 else None
        return cp.next_checkpoint(before, tree, batch_seq=last.batch_seq, batch_hash=last.batch_hash, pending=pending,
                                  time_ms=last.time_ms)

    async def _propose(self, checkpoint: cp.Checkpoint, honest: str) -> dict[str, Any]:
        """One sign session with exactly {node1, ``honest``}: a presignature for that pair is made
        first, so the proposal goes to the follower under test."""
        rt = self._rt()
        node = rt.sign.__self__  # type: ignore[union-attr]  # the bound Node.sign
        signers = [rt.node_id, honest]
        # the presignature is the means, not what the test asks about: a presign that failed (a
        # round timing out on a loaded machine) or one the pool took first is made again
        failures: list[str] = []
        while True:
            pre = await node.presign(rt.key_id, signers)
            if pre.ok:
                presig = pre.output["presignature_id"]
                if await trio.to_thread.run_sync(node.storage.reserve_presignature_id, presig,
                                                 COORDINATOR_RESERVATION):
                    break
                failures.append("the presignature was taken")
            else:
                failures.append(f"presign: {pre.reason}")
            if len(failures) >= PRESIGN_ATTEMPTS:
                return {"ok": False, "status": "no-presignature", "reason": "; ".join(failures)}
            await trio.sleep(1.0)
        outcome, refusals = await node._sign_with(rt.key_id, presig, signers, checkpoint.digest(rt.chain_id,
                                                                                               rt.registry),
                                                  rt.signer_path, encode_checkpoint_request(checkpoint.to_bytes()))
        return {"ok": bool(outcome.ok), "status": outcome.status, "reason": outcome.reason,
                "refusals": {k: int(v) for k, v in refusals.items()}}

    # ------------------------------------------------------------------ what the hooks do
    def substitute(self, node_id: str, seq: int, raw: bytes) -> bytes:
        """The batch ``seq`` as this follower is to see it."""
        with self.lock:
            eq = self.equivocation
            if eq is not None and "seq" not in eq and seq > eq["after"]:
                signed = decode_batch(raw)
                if any(isinstance(e, Finalize) for e in signed.batch.entries):
                    self._equivocate_at(signed, eq)
            return self.serving.get(node_id, {}).get(seq, raw)

    def _equivocate_at(self, real: SignedBatch, eq: dict[str, Any]) -> None:
        rt = self._rt()
        b = real.batch
        eq["seq"] = b.seq
        hashes = {}
        for node, extra in eq["variants"].items():
            variant = sign_batch(rt.identity, Batch(b.seq, b.prev_hash, b.time_ms, b.coordinator,
                                                    tuple(extra) + b.entries))
            self.serving.setdefault(node, {})[b.seq] = variant.to_bytes()
            hashes[node] = variant.hash.hex()
        self.done[eq["id"] + "/event"] = {"seq": b.seq, "real": real.hash.hex(), "variants": hashes}
        self._write_results()

    def before_store(self, signed: SignedBatch) -> None:
        crash = self.crash
        if crash is None or not _carries(signed, crash["key"]):
            return
        self.gate = signed.batch.seq - 1
        if crash["when"] == "before_store":
            self._stop_here(crash, signed, stored=False)

    def after_store(self, signed: SignedBatch) -> None:
        crash = self.crash
        if crash is not None and crash["when"] == "after_store" and _carries(signed, crash["key"]):
            self._stop_here(crash, signed, stored=True)

    def _stop_here(self, crash: dict[str, Any], signed: SignedBatch, *, stored: bool) -> None:
        """Hold this thread (and the runtime's lock) until the test kills the process."""
        self.report(crash["id"] + "/event", {"seq": signed.batch.seq, "hash": signed.hash.hex(), "stored": stored})
        threading.Event().wait()


def _carries(signed: SignedBatch, key: str) -> bool:
    return any(isinstance(e, SignedInstruction) and e.body.key == key for e in signed.batch.entries)


def install(rogue: Rogue) -> None:
    """Wrap the runtime and the store of *this process*."""
    init, make_batch = SettlementRuntime.__init__, SettlementRuntime._make_batch
    batches_after, authorize = SettlementRuntime.batches_after, SettlementRuntime.authorize_checkpoint
    append = SettlementStore.append

    def rogue_init(self: SettlementRuntime, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        rogue.runtime = self
        rogue.start()

    def rogue_make_batch(self: SettlementRuntime) -> bool:
        return False if rogue.frozen else make_batch(self)

    def rogue_batches_after(self: SettlementRuntime, node_id: str, after: int, time_ms: int, signature: bytes,
                            limit: int, wait_ms: int) -> tuple[list[bytes], int]:
        forged = rogue.serving.get(node_id, {})
        raws, head = batches_after(self, node_id, after, time_ms, signature, limit,
                                   0 if after + 1 in forged else wait_ms)
        out: list[bytes] = []
        for seq, raw in enumerate(raws, start=after + 1):
            if rogue.gate is not None and seq > rogue.gate:
                break
            out.append(rogue.substitute(node_id, seq, raw))
        seq = after + len(out) + 1
        while rogue.gate is None and len(out) == len(raws) and seq in forged:  # forgeries above the real head
            out.append(forged[seq])
            seq += 1
        if rogue.gate is not None:
            head = min(head, rogue.gate)
        return out, max(head, after + len(out))

    def rogue_authorize(self: SettlementRuntime, digest: bytes, path: Any, raw: bytes, coordinator: str
                        ) -> tuple[bool, str]:
        if coordinator == self.node_id:
            return True, ""  # it co-signs whatever it proposes itself
        return authorize(self, digest, path, raw, coordinator)

    def rogue_append(self: SettlementStore, signed: SignedBatch, *args: Any, **kwargs: Any) -> None:
        rogue.before_store(signed)
        append(self, signed, *args, **kwargs)
        rogue.after_store(signed)

    SettlementRuntime.__init__ = rogue_init  # type: ignore[method-assign]
    SettlementRuntime._make_batch = rogue_make_batch  # type: ignore[method-assign]
    SettlementRuntime.batches_after = rogue_batches_after  # type: ignore[method-assign]
    SettlementRuntime.authorize_checkpoint = rogue_authorize  # type: ignore[method-assign]
    SettlementStore.append = rogue_append  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    install(Rogue(folder))
    return daemon.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
