"""Rolling reload: replace workers one slot at a time, with no downtime.

For each slot: spawn the replacement (it imports the app afresh, so new code
is served), wait until it says READY, swap it into the slot so it gets the new
sessions, then let the old worker drain (its clients reconnect through the
master and land on READY workers) and wait for it to exit. If a replacement
fails, cannot be started or misses the ready timeout, the reload stops there
and the old workers keep serving. A slot with no process (BACKOFF, FATAL) is
simply started afresh.

The plan is driven by the decision core (`core.Core`), whose verbs (spawn,
retire, terminate) it uses; it never touches a process itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from imcluster.master.lifecycle import DEPENDENCY_ERROR, Role, State, WorkerProcess

if TYPE_CHECKING:
    from imcluster.master.core import Core


@dataclass
class RollingReload:
    reason: str
    id: int = 0  # Core.reload_seq when it started (last_reload.id when it ended)
    queue: deque = field(default_factory=deque)  # slots still to replace
    slot: int | None = None
    new: WorkerProcess | None = None  # the replacement while it starts
    old: WorkerProcess | None = None  # the worker being drained
    deadline: float = 0.0  # when the replacement must be READY
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

    def busy_with(self, slot: int) -> bool:
        """Whether `slot` is being replaced or waits its turn."""
        return slot == self.slot or slot in self.queue

    def describe(self) -> dict:
        return {"id": self.id, "reason": self.reason, "slot": self.slot, "phase": self.phase,
                "queued": list(self.queue), "replaced": self.replaced,
                "new_pid": self.new.pid if self.new else None,
                "old_pid": self.old.pid if self.old else None}

    def advance(self, core: Core, now: float) -> None:
        """Take every step that can be taken now; ends the reload through
        `core.end_reload` when the queue is done or a replacement failed."""
        while True:
            if self.new is not None:
                why = replacement_failed(self.new, now, self.deadline)
                if why is not None:
                    core.abandon_reload(why, now)
                    return
                if self.new.state is not State.READY:
                    return
                old, new = self.old, self.new
                new.role = Role.SLOT
                core.slots[self.slot] = new
                self.new = None
                self.replaced += 1
                core.log.info("slot %d: worker pid %d replaced by pid %d; draining the old one",
                              self.slot, old.pid, new.pid)
                core.retire(old, now)
                core.retry_held()
            if self.old is not None:
                if self.old.live:
                    return  # still draining
                self.old = None
            if not self.queue:
                core.log.info("reload (%s) complete: %d worker(s) replaced",
                              self.reason, self.replaced)
                core.end_reload({"ok": True, "reason": self.reason, "replaced": self.replaced,
                                 "finished": core.wall(now)}, now)
                return
            slot = self.queue.popleft()
            if slot >= len(core.slots):
                continue  # scaled away meanwhile
            old = core.slots[slot]
            self.slot = slot
            if not old.live:  # BACKOFF or FATAL: nothing to drain, start it now
                old.failures = 0
                core.spawn(old, now)
                continue
            # A reload is not a restart; a replacement for --max-memory is (as pm2 counts).
            new = WorkerProcess(slot=slot, restarts=old.restarts + (1 if old.over_memory else 0),
                                role=Role.REPLACEMENT)
            self.new, self.old = new, old
            self.deadline = now + core.cfg.ready_timeout
            core.spawn(new, now)


def replacement_failed(new: WorkerProcess, now: float, deadline: float) -> str | None:
    """Why a starting replacement has failed, or None while it may still succeed."""
    if new.state not in (State.STARTING, State.READY):
        if new.last_error and new.exit_status == DEPENDENCY_ERROR:
            return f"the new worker refused to start: {new.last_error}"
        if new.last_error:
            return f"the new worker could not load the app: {new.last_error}"
        code = new.exit_status
        how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
        return f"the new worker exited ({how}) before it was READY"
    if new.state is State.STARTING and now >= deadline:
        return "the new worker did not become READY in time"
    return None
