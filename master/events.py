"""What the master's decision core hears (events) and what it asks for (actions).

The shell (`loop.py`) turns I/O into events and feeds them to `Core.handle`;
the core answers with actions, which the shell carries out in order. Both are
plain data: a test feeds events and asserts the actions, with no process,
socket or clock involved (the shell passes `now`, from time.monotonic()).

Workers are named by their worker id (unique among live workers for the
master's lifetime, the id their sids carry), never by pid: the pid is known
only after the shell has spawned the process (`Spawned`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ---- events: the shell tells the core -------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Time passed: run the timers (respawn, ready and heartbeat timeouts, drain
    deadline, KILL after TERM, the reload's next step, the stop deadline)."""


@dataclass(frozen=True)
class Signal:
    """A signal the handler recorded (TERM, INT, HUP, TTIN, TTOU); SIGCHLD is
    the shell's, which reaps and reports `Exited`."""
    signum: int


@dataclass(frozen=True)
class Spawned:
    """The shell started the process for `Spawn(worker_id)`."""
    worker_id: int
    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    """The shell could not start the process for `Spawn(worker_id)`."""
    worker_id: int
    reason: str


@dataclass(frozen=True)
class Exited:
    """A child process was reaped; `code` as os.waitstatus_to_exitcode gives it
    (negative: killed by that signal)."""
    pid: int
    code: int


@dataclass(frozen=True)
class ChannelClosed:
    """The worker's channel hit EOF or an error: it is dying, whatever its state."""
    worker_id: int


@dataclass(frozen=True)
class Heard:
    """Any frame arrived from the worker (HEARTBEAT or another): it is alive."""
    worker_id: int


@dataclass(frozen=True)
class Ready:
    """The worker said READY (app imported, serving); with --max-memory, its
    resident size then, in bytes (its fresh size; None when not measured)."""
    worker_id: int
    rss: int | None = None


@dataclass(frozen=True)
class Load:
    """The worker's load report (LOAD): Engine.IO sessions it holds, TCP
    connections it serves, and with Redis how its broadcasts stand ("ok",
    "subscription down", "publishing down", "down"; None with the relay), and
    with Redis its pub/sub figures ({"received", "channels", "published"}:
    messages Redis delivered to it, channels it holds, messages it published).
    With `--handover yes`, `moved_in` is how many sessions handed over to it
    (HANDOVER frames) it has taken in since it started, and `held` the worker
    ids that the sids of the handed-over sessions it still holds name (the
    master prunes its forwarding map with both: `Core._prune_forwarding`)."""
    worker_id: int
    sessions: int
    connections: int
    broadcast: str | None = None
    pubsub: dict | None = None
    held: frozenset[int] = frozenset()
    moved_in: int | None = None


@dataclass(frozen=True)
class Acked:
    """The worker acknowledged receiving `handoffs` hand-offs in all (ACK)."""
    worker_id: int
    handoffs: int


@dataclass(frozen=True)
class WorkerError:
    """Why the worker is about to exit (e.g. its app failed to import)."""
    worker_id: int
    text: str


@dataclass(frozen=True)
class Memory:
    """Resident memory in bytes of serving workers, by worker id (sent every few
    seconds when --max-memory is set)."""
    rss: dict[int, int]


@dataclass(frozen=True)
class Command:
    """A control-socket request (a JSON object); answered by one `Answer`."""
    request: dict


@dataclass(slots=True)  # not frozen: one per connection, and frozen's __init__ costs 4x
class Request:
    """A held client connection whose request line was parsed: `conn` is the
    shell's (opaque to the core), `worker_id` and `host_id` the ones its sid
    names, if any (both or neither)."""
    conn: Any
    worker_id: int | None
    host_id: int | None = None
    readiness: bool = False  # the router's health check (httpline.READY_PATH)


@dataclass(frozen=True)
class Moving:
    """A draining worker sent one of its sessions to be handed over (HANDOVER,
    workers/handover.py): `conn` is the shell's (the frame and its fd).
    `synced_with`: the worker the session's channels were synced with before its
    position was taken (the state's "heir", interest channels: workers/heir.py);
    None when no sync ran (one channel, the master relay, no heir named)."""
    conn: Any
    worker_id: int
    synced_with: int | None = None


@dataclass(frozen=True)
class Forwarding:
    """A worker sent a request for a session it handed over (FORWARD,
    workers/handover.py): `conn` is the shell's (the frame and its fd)."""
    conn: Any
    worker_id: int


@dataclass(frozen=True)
class Emptied:
    """A draining worker handed over every session that could move (EMPTIED):
    requests naming it go to its heir from now on; answer it (`Send` EMPTIED)."""
    worker_id: int


# ---- actions: the core asks the shell --------------------------------------------


@dataclass(frozen=True)
class Spawn:
    """Start a worker process for `slot` with this new worker id; report
    `Spawned` or `SpawnFailed`."""
    worker_id: int
    slot: int


@dataclass(frozen=True)
class Kill:
    """Send `signum` to the process (gone already: nothing to do)."""
    pid: int
    signum: int


@dataclass(frozen=True)
class Send:
    """Queue one channel message (kind from imcluster.channel) for the worker."""
    worker_id: int
    kind: bytes
    payload: bytes = b""


@dataclass(frozen=True)
class CloseChannel:
    """The worker is gone: close its channel and re-route the connections still
    queued for it (they were never delivered)."""
    worker_id: int


@dataclass(slots=True)  # not frozen: one per connection, like Request
class HandOff:
    """Pass the client connection to this worker."""
    conn: Any
    worker_id: int


@dataclass(frozen=True)
class Move:
    """Relay a handed-over session (`Moving.conn`) to this worker; None: no
    worker can take it now, close it (the client reconnects)."""
    conn: Any
    worker_id: int | None


@dataclass(frozen=True)
class Reply:
    """The master answers the connection itself, `status` with `reason` as the
    body, and closes it; no worker sees it. `cause` names the counter a refusal
    adds to (None: not counted)."""
    conn: Any
    status: int
    reason: str
    cause: str | None = None


@dataclass(frozen=True)
class Hold:
    """No worker can take the connection now: keep it until one is READY or the
    header timeout answers it 503."""
    conn: Any


@dataclass(frozen=True)
class RetryHeld:
    """A worker became READY (or took a slot): offer the held connections again."""


@dataclass(frozen=True)
class StopListening:
    """Close the listening socket and every connection not yet handed off."""


@dataclass(frozen=True)
class Answer:
    """The answer to a `Command`."""
    answer: dict = field(default_factory=dict)
