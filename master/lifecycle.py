"""One worker slot's lifecycle: a small state machine, after supervisor's.

A `Worker` persists for its slot across respawns (like supervisor's
Subprocess); each spawn gives it a new pid and a new worker id. A worker
retired by a reload or a scale-down is never respawned.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


class State(enum.Enum):
    STARTING = "STARTING"  # spawned, app still importing; gets no new sessions
    READY = "READY"  # said READY on its channel; gets new sessions
    DRAINING = "DRAINING"  # keeps its sessions, gets no new ones
    STOPPING = "STOPPING"  # asked to exit (STOP, then TERM, then KILL)
    EXITED = "EXITED"  # process reaped
    BACKOFF = "BACKOFF"  # exited unexpectedly; respawns when the delay ends
    FATAL = "FATAL"  # kept failing before READY; not respawned until asked


# Every allowed edge. Anything else is a bug in the master and raises.
TRANSITIONS: dict[State, frozenset[State]] = {
    # Died while importing the app, or stopped before it was ready.
    State.STARTING: frozenset({State.READY, State.STOPPING, State.EXITED}),
    State.READY: frozenset({State.DRAINING, State.STOPPING, State.EXITED}),
    State.DRAINING: frozenset({State.STOPPING, State.EXITED}),
    State.STOPPING: frozenset({State.EXITED}),
    # An unexpected exit either waits to respawn or, after too many failures, gives up.
    State.EXITED: frozenset({State.BACKOFF, State.FATAL, State.STARTING}),
    # The master stopping during a backoff leaves the slot EXITED.
    State.BACKOFF: frozenset({State.STARTING, State.EXITED}),
    # Only an operator's reload or restart brings a FATAL slot back.
    State.FATAL: frozenset({State.STARTING, State.EXITED}),
}

# Exit code a worker uses when the user's app cannot be imported or is not a
# Socket.IO app: respawning it will not help, so the master must not loop.
APP_LOAD_ERROR = 4
# Exit code a worker uses when an installed library is outside the tested
# range (workers/versions.py): likewise not fixed by a respawn.
DEPENDENCY_ERROR = 5
# A worker that was READY for less than this still counts as failing to start.
MIN_HEALTHY_SECONDS = 5.0
MAX_START_FAILURES = 5
MAX_BACKOFF_SECONDS = 30.0


class TransitionError(RuntimeError):
    pass


def backoff_delay(failures: int) -> float:
    """Seconds to wait before respawn attempt number `failures` (1-based)."""
    if failures <= 0:
        return 0.1
    return min(0.5 * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)


@dataclass(eq=False)
class Worker:
    slot: int
    state: State = State.EXITED
    worker_id: int = -1
    pid: int = 0
    channel: Any = None  # master end of the socketpair while it is open
    started_at: float = 0.0
    ready_at: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive starts that did not become healthy
    retired: bool = False
    exit_status: int | None = None
    last_error: str = ""
    respawn_at: float = 0.0
    drain_deadline: float = 0.0  # DRAINING: when to stop waiting and terminate
    kill_at: float = 0.0  # sent TERM: when to send KILL
    last_heard: float = 0.0  # last frame from the worker (its heartbeat)
    unresponsive: bool = False  # silent past the heartbeat timeout: being replaced
    outq: deque = field(default_factory=deque)  # (frame, client socket or None)
    out_bytes: int = 0
    handoffs_sent: int = 0  # queued for it, in the master or the kernel
    handoffs_delivered: int = 0  # written to its channel
    stats: dict = field(default_factory=dict)

    def to(self, new: State) -> None:
        """Move to `new`, refusing any edge not in TRANSITIONS."""
        if new not in TRANSITIONS[self.state]:
            raise TransitionError(f"slot {self.slot}: {self.state.value} -> {new.value}")
        self.state = new
        if new is State.READY:
            self.ready_at = time.monotonic()

    @property
    def accepts_new(self) -> bool:
        return self.state is State.READY and self.channel is not None and not self.unresponsive

    @property
    def serves_own(self) -> bool:
        """Whether requests for this worker's own sessions should reach it.

        A hung worker's sessions go elsewhere and get "unknown session", so
        their clients re-handshake instead of waiting on a process that will
        never answer.
        """
        return self.channel is not None and not self.unresponsive and self.state in (
            State.STARTING, State.READY, State.DRAINING)

    @property
    def unconfirmed(self) -> int:
        """Hand-offs in the kernel's queue that the worker has not confirmed."""
        return self.handoffs_delivered - int(self.stats.get("handoffs", 0))

    @property
    def load(self) -> int:
        """Sessions it reported, plus hand-offs it has not yet reported receiving."""
        unseen = self.handoffs_sent - int(self.stats.get("handoffs", 0))
        return int(self.stats.get("sessions", 0)) + max(unseen, 0)

    def on_exit(self, status: int, now: float) -> None:
        """Record an exit and decide BACKOFF or FATAL for an unexpected one."""
        was = self.state
        self.exit_status = status
        self.pid = 0
        self.kill_at = 0.0
        self.unresponsive = False
        self.to(State.EXITED)
        if self.retired or was is State.STOPPING:
            return
        healthy = was in (State.READY, State.DRAINING) and \
            now - self.ready_at >= MIN_HEALTHY_SECONDS
        self.restarts += 1
        self.failures = 0 if healthy else self.failures + 1
        if self.failures >= MAX_START_FAILURES:
            self.to(State.FATAL)
        else:
            self.respawn_at = now + backoff_delay(self.failures)
            self.to(State.BACKOFF)
