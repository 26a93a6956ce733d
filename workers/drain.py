"""The event handlers a worker is running, so that a graceful drain lets them finish.

A draining worker (a graceful stop, a rolling reload, a memory-limit
replacement, a scale down) stops taking new sessions (the master routes none
to it) and, without --handover, new events: an event that arrives while it
drains is ignored (its handler never runs, so an ack it asked for never
comes; the client gets it from the worker it reconnects to if it emits
again). The handlers already running are let finish and write their acks
and emits, up to a deadline within --graceful-timeout; those still running
then are abandoned and logged, by event name, and the worker closes its
sessions and exits. With --handover yes each session moves once its own
handlers have finished (workers/handover.py), and events keep being handled
until it moves; this count is then not installed.

Every handler runs through python-socketio's `_handle_event_internal`,
whether started directly (workers/dispatch.py) or as a background task
(python-socketio's own path): wrapped here, per server instance, with a
count by event name (for the drain's log) and, by Engine.IO sid, the names
of the session's running handlers (a session handed over leaves once its own
handlers are done, and a WARNING names those it abandons: workers/handover.py);
two dict updates and a list append on entry, and as much on exit, are all it
costs an event (benchmarks/callgrind_ack.py).

Background tasks an app starts itself (`sio.start_background_task`) are not
handlers: they are not waited for, and end with the process.
"""

from __future__ import annotations

import logging
import time

import eventlet

log = logging.getLogger("imcluster.worker")


class RunningHandlers:
    """The event handlers running now, counted by event name, and the drain's
    refusal of new events."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}  # event name: handlers of it running
        # Engine.IO sid: the event names of its handlers running (one per handler)
        self.by_session: dict[str, list[str]] = {}
        self.refusing = False  # draining without hand-over: new events are ignored
        self.ignored = 0  # events ignored while refusing

    @property
    def total(self) -> int:
        return sum(self.running.values())

    def install(self, sio) -> None:
        """Count `sio`'s handlers from now on (and ignore its events once `refusing`).

        python-socketio 5.x runs each event through
        `_handle_event_internal(server, sid, eio_sid, data, namespace, id)`,
        wrapped here on the instance. internals: socketio-handle-event-internal
        """
        original = sio._handle_event_internal
        running, by_session = self.running, self.by_session

        def counted(server, sid, eio_sid, data, namespace, id):
            if self.refusing:
                self._ignore(data[0])
                return None
            name = data[0]
            running[name] = running.get(name, 0) + 1
            names = by_session.get(eio_sid)
            if names is None:
                names = by_session[eio_sid] = []
            names.append(name)
            try:
                return original(server, sid, eio_sid, data, namespace, id)
            finally:
                one_fewer(running, name)
                names.remove(name)
                if not names and by_session.get(eio_sid) is names:
                    del by_session[eio_sid]

        sio._handle_event_internal = counted

    def _ignore(self, name) -> None:
        self.ignored += 1
        if self.ignored == 1:
            log.info("draining: ignoring the events that arrive from now on (the first: "
                     "%.40r); their handlers do not run", name)

    def wait(self, seconds: float, poll: float = 0.05) -> dict[str, int]:
        """Wait up to `seconds` for the running handlers to end; the ones still
        running then, by event name ({} when every one ended)."""
        deadline = time.monotonic() + max(seconds, 0.0)
        if self.running:
            log.info("draining: waiting up to %.1fs for %d running handler(s)",
                     seconds, self.total)
        while self.running and time.monotonic() < deadline:
            eventlet.sleep(poll)
        return dict(self.running)


def one_fewer(counts: dict, key) -> None:
    """One fewer `key` in `counts` (which must hold it); the key leaves at zero,
    so that `counts` holds only what is still counted."""
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]


def describe(counts: dict[str, int]) -> str:
    """`{"work": 2, "save": 1}` as 'work x2, save x1' (most first)."""
    return ", ".join(f"{name} x{n}" for name, n in
                     sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
