"""The routing choice: which worker gets a connection whose request line was read.

Routing is stateless (design.md, invariants 2-4): the Engine.IO sid names the
worker process that made it, so a request goes to that worker while it still
serves its own sessions (STARTING, READY or DRAINING, channel open, not hung).
Anything else (no sid, a forged or stale sid, a sid of a dead, hung or
replaced worker) goes to the least loaded READY worker that holds a slot; a
stale sid then gets Engine.IO's "unknown session" answer there and the client
re-handshakes. New sessions never go to a worker that has not said READY, nor
to one draining or being replaced. With session hand-over, a worker's sessions
may have moved: the master's record of where (`Core.moved`) is followed once
the worker itself no longer serves.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from imcluster.master.lifecycle import WorkerProcess


def choose(slots: Iterable[WorkerProcess], by_id: Mapping[int, WorkerProcess],
           worker_id: int | None,
           moved: Mapping[int, int] | None = None,
           emptied: Container[int] = ()) -> WorkerProcess | None:
    """The worker for a request naming `worker_id` (None: no sid), or None if no
    worker can take it now (the connection is held until one is READY).

    `moved` maps a worker id to the worker its sessions were handed over to
    (workers/handover.py): once the named worker no longer serves its own, or
    said it handed over all it could (`emptied`), a request naming it goes there
    while that worker serves."""
    owner = by_id.get(worker_id) if worker_id is not None else None
    if owner is not None and owner.serves_own and worker_id not in emptied:
        return owner
    if moved and worker_id in moved:
        heir = by_id.get(moved[worker_id])
        if heir is not None and heir.serves_own:
            return heir
    ready = [w for w in slots if w.accepts_new]
    if not ready:
        return None
    # Ties (equal load) go to the worker handed fewer connections since it started.
    return min(ready, key=lambda w: (w.load, w.handoffs_sent))
