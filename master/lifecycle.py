"""One worker's lifecycle: a small state machine with its timers, after supervisor's.

A `WorkerProcess` persists for its slot across respawns (like supervisor's
Subprocess); each spawn gives it a new worker id and, once started, a new pid.
Every timed transition (respawn after backoff, the ready and heartbeat
timeouts, the drain deadline, KILL after TERM) is decided by `WorkerProcess.due`,
here beside the edges it takes. Pure: no clock, no processes; times are
time.monotonic() values passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    QUEUED = "QUEUED"  # waiting for a start turn (at most --max-starting import at once)
    STARTING = "STARTING"  # spawned, app still importing; gets no new sessions
    READY = "READY"  # said READY on its channel; gets new sessions
    DRAINING = "DRAINING"  # keeps its sessions, gets no new ones
    STOPPING = "STOPPING"  # asked to exit (STOP, then TERM, then KILL)
    EXITED = "EXITED"  # process reaped
    BACKOFF = "BACKOFF"  # exited unexpectedly; respawns when the delay ends
    FATAL = "FATAL"  # kept failing before READY; not respawned until asked


# Every allowed edge. Anything else is a bug in the master and raises.
TRANSITIONS: dict[State, frozenset[State]] = {
    # Died while importing the app (or could not be started), or stopped before it was ready.
    State.STARTING: frozenset({State.READY, State.STOPPING, State.EXITED}),
    State.READY: frozenset({State.DRAINING, State.STOPPING, State.EXITED}),
    State.DRAINING: frozenset({State.STOPPING, State.EXITED}),
    State.STOPPING: frozenset({State.EXITED}),
    # An unexpected exit either waits to respawn or, after too many failures, gives up.
    State.EXITED: frozenset({State.BACKOFF, State.FATAL, State.STARTING, State.QUEUED}),
    # The master stopping during a backoff leaves the slot EXITED.
    State.BACKOFF: frozenset({State.STARTING, State.QUEUED, State.EXITED}),
    # Only an operator's reload or restart brings a FATAL slot back.
    State.FATAL: frozenset({State.STARTING, State.QUEUED, State.EXITED}),
    # Its turn came, or it was scaled away (or the master stopped) while waiting.
    State.QUEUED: frozenset({State.STARTING, State.EXITED}),
}

# States in which the worker has (or is about to have) a process.
LIVE = frozenset({State.STARTING, State.READY, State.DRAINING, State.STOPPING})


class Role(enum.Enum):
    """Where a worker stands in the cluster; orthogonal to its State."""
    SLOT = "slot"  # holds its slot: gets new sessions when READY, respawned when it dies
    REPLACEMENT = "replacement"  # a reload's new worker, starting; takes the slot once READY
    RETIRED = "retired"  # out of service for good (scaled away, replaced, reload abandoned)


class Timer(enum.Enum):
    """A timed transition that is due (see `WorkerProcess.due`)."""
    RESPAWN = "respawn"  # BACKOFF delay over: start it again
    READY_TIMEOUT = "ready timeout"  # STARTING too long: replace it
    SILENT = "silent"  # no frame within the heartbeat timeout: replace it
    DRAIN_TIMEOUT = "drain timeout"  # DRAINING past the graceful timeout: stop it
    KILL = "kill"  # TERM sent KILL_GRACE ago and the process is still there


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
# TERM first; KILL this long after if the process is still there.
KILL_GRACE = 5.0


class TransitionError(RuntimeError):
    pass


def backoff_delay(failures: int) -> float:
    """Seconds to wait before respawn attempt number `failures` (1-based)."""
    if failures <= 0:
        return 0.1
    return min(0.5 * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)


@dataclass(eq=False)
class WorkerProcess:
    """The master's record of one worker process and its slot (the worker's own
    side is workers/main.py's WorkerServer)."""

    slot: int
    state: State = State.EXITED
    role: Role = Role.SLOT
    worker_id: int = -1
    pid: int = 0  # 0 until the shell reports it spawned, and after the exit
    channel_open: bool = False  # the master's end of its channel is open
    started_at: float = 0.0
    ready_at: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive starts that did not become healthy
    exit_status: int | None = None
    last_error: str = ""
    respawn_at: float = 0.0
    drain_deadline: float = 0.0  # DRAINING: when to stop waiting and terminate
    kill_at: float = 0.0  # sent TERM: when to send KILL
    last_heard: float = 0.0  # last frame from the worker (its heartbeat)
    unresponsive: bool = False  # silent past a timeout: being replaced
    handoffs_sent: int = 0  # connections passed to it, in the master's queue or the kernel's
    handoffs_acked: int = 0  # of those, how many it acknowledged receiving (ACK)
    sessions: int | None = None  # Engine.IO sessions it holds (its last LOAD)
    connections: int | None = None  # TCP connections it serves (its last LOAD)
    broadcast: str | None = None  # with Redis, how its broadcasts stand (its last LOAD)
    pubsub: dict | None = None  # with Redis, its pub/sub figures (its last LOAD)
    moves_sent: int = 0  # sessions handed over to it (HANDOVER frames relayed to it)
    moves_taken: int | None = None  # of those, how many it had taken in (its last LOAD)
    held: frozenset[int] = frozenset()  # worker ids its moved-in sessions name (its last LOAD)
    fresh_rss: int | None = None  # bytes resident when it said READY (with --max-memory)
    over_memory: bool = False  # being replaced for going over --max-memory

    def to(self, new: State) -> None:
        """Move to `new`, refusing any edge not in TRANSITIONS."""
        if new not in TRANSITIONS[self.state]:
            raise TransitionError(f"slot {self.slot}: {self.state.value} -> {new.value}")
        self.state = new

    @property
    def live(self) -> bool:
        """It has a process (starting, serving, draining or stopping)."""
        return self.state in LIVE

    @property
    def accepts_new(self) -> bool:
        return self.role is Role.SLOT and self.state is State.READY and self.channel_open \
            and not self.unresponsive

    @property
    def serves_own(self) -> bool:
        """Whether requests for this worker's own sessions should reach it.

        A hung worker's sessions go elsewhere and get "unknown session", so
        their clients re-handshake instead of waiting on a process that will
        never answer.
        """
        return self.channel_open and not self.unresponsive and self.state in (
            State.STARTING, State.READY, State.DRAINING)

    @property
    def load(self) -> int:
        """Sessions it reported, plus hand-offs it has not yet acknowledged."""
        return (self.sessions or 0) + max(self.handoffs_sent - self.handoffs_acked, 0)

    def started(self, worker_id: int, now: float) -> None:
        """STARTING under a new worker id (from EXITED, QUEUED, BACKOFF or FATAL)."""
        self.to(State.STARTING)
        self.worker_id, self.pid, self.channel_open = worker_id, 0, False
        self.started_at = self.last_heard = now
        self.exit_status, self.last_error = None, ""
        self.sessions = self.connections = self.broadcast = self.pubsub = None
        self.handoffs_sent = self.handoffs_acked = self.moves_sent = 0
        self.moves_taken, self.held = None, frozenset()
        self.unresponsive = False
        self.fresh_rss, self.over_memory = None, False
        self.kill_at = 0.0

    def ready(self, now: float) -> None:
        self.to(State.READY)
        self.ready_at = now

    def on_exit(self, status: int, now: float) -> None:
        """Record an exit (or a start that never got a process, status -1) and,
        for a slot's unexpected exit, decide BACKOFF or FATAL."""
        was = self.state
        self.exit_status = status
        self.pid = 0
        self.channel_open = False
        self.kill_at = 0.0
        self.unresponsive = False
        self.to(State.EXITED)
        if self.role is not Role.SLOT or was is State.STOPPING:
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

    def due(self, now: float, ready_timeout: float, heartbeat_timeout: float) -> list[Timer]:
        """The timed transitions due at `now`, in the order to take them.

        The ready and heartbeat timeouts fire once (the worker is then marked
        unresponsive and terminated); a STOPPING worker is past caring about
        either. KILL fires when a TERM went unanswered for KILL_GRACE.
        """
        due: list[Timer] = []
        if self.state is State.BACKOFF:
            if now >= self.respawn_at:
                due.append(Timer.RESPAWN)
            return due
        if not self.pid:
            return due
        if not self.unresponsive:
            if self.state is State.STARTING:
                if now - self.started_at > ready_timeout:
                    due.append(Timer.READY_TIMEOUT)
            elif self.state in (State.READY, State.DRAINING) and \
                    now - self.last_heard > heartbeat_timeout:
                due.append(Timer.SILENT)
        if self.state is State.DRAINING and now >= self.drain_deadline:
            due.append(Timer.DRAIN_TIMEOUT)
        if self.kill_at and now >= self.kill_at:
            due.append(Timer.KILL)
        return due
