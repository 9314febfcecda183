"""Play n parties in one process by passing their encoded messages between the machines.

Used by tests, benchmarks and the demo. It exercises the real wire encoding: every message
is bytes out of one machine and bytes into another. ``intercept`` lets a *test* change what a
party sends (tampering, equivocation, dropping); production code has no such hook — the node
moves bytes it did not produce only through its verified transport.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .machine import BROADCAST, ProtocolMessage, RoundMachine, Status

# (sender, receiver, raw message) -> replacement messages for that receiver (possibly none)
Intercept = Callable[[int, int, bytes], list[bytes]]


def run_in_process(machines: Mapping[int, RoundMachine], intercept: Intercept | None = None) -> dict[int, Any]:
    """Run until every machine is done or aborted; returns the outputs of those that finished."""
    queue: deque[tuple[int, int, bytes]] = deque()

    def post(sender: int, raw: bytes) -> None:
        msg = ProtocolMessage.from_bytes(raw)
        targets = [p for p in machines if p != sender] if msg.receiver == BROADCAST else [msg.receiver]
        for target in targets:
            deliveries = intercept(sender, target, raw) if intercept else [raw]
            for item in deliveries:
                queue.append((sender, target, item))

    for index, machine in machines.items():
        for raw in machine.start():
            post(index, raw)
    while queue:
        _, target, raw = queue.popleft()
        machine = machines.get(target)
        if machine is None:
            continue
        for reply in machine.receive(raw):
            post(target, reply)
    return {i: m.output for i, m in machines.items() if m.status is Status.DONE}
