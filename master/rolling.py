"""Rolling reload: replace workers one slot at a time, with no downtime.

For each slot: spawn the replacement (it imports the app afresh, so new code
is served), wait until it says READY, swap it into the slot so it gets the new
sessions, then let the old worker drain (its clients reconnect through the
master and land on READY workers) and wait for it to exit. If a replacement
fails or misses the ready timeout, the reload stops there and the old workers
keep serving.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from imcluster.master.lifecycle import DEPENDENCY_ERROR, State, Worker


@dataclass
class Reload:
    reason: str
    queue: deque = field(default_factory=deque)  # slots still to replace
    slot: int | None = None
    new: Worker | None = None  # the replacement while it starts
    old: Worker | None = None  # the worker being drained
    deadline: float = 0.0
    replaced: int = 0

    @property
    def phase(self) -> str:
        if self.new is not None:
            return "starting"
        if self.old is not None:
            return "draining"
        return "next"

    def add(self, slots: list[int]) -> None:
        for s in slots:
            if s not in self.queue and s != self.slot:
                self.queue.append(s)

    def describe(self) -> dict:
        return {"reason": self.reason, "slot": self.slot, "phase": self.phase,
                "queued": list(self.queue), "replaced": self.replaced,
                "new_pid": self.new.pid if self.new else None,
                "old_pid": self.old.pid if self.old else None}


def replacement_failed(new: Worker, now: float, deadline: float) -> str | None:
    """Why a starting replacement has failed, or None while it may still succeed."""
    if new.pid == 0 or new.state not in (State.STARTING, State.READY):
        if new.last_error and new.exit_status == DEPENDENCY_ERROR:
            return f"the new worker refused to start: {new.last_error}"
        if new.last_error:
            return f"the new worker could not load the app: {new.last_error}"
        return f"the new worker exited (status {new.exit_status}) before it was READY"
    if new.state is State.STARTING and now >= deadline:
        return "the new worker did not become READY in time"
    return None
