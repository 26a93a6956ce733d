"""Event handlers started at once, in a greenlet of their own, without a trip through the hub.

python-socketio runs every event in a background task (`async_handlers`,
its default): on eventlet a GreenThread, scheduled with a timer on the hub
and started on the hub's next turn, with an exit event and links to resolve
at its end. Profiled on a worker under the echo benchmark
(docs/benchmarks.md, "Per-ack cost"), that was the largest cost of a
packet after the socket calls.

Here the greenlet that read the packet switches straight into a new plain
greenlet running the handler, and gets control back when it ends:

- A handler that runs to the end without waiting costs one greenlet, no
  timer and no hub turn, and its ack is written before the next packet of
  the connection is read.
- A handler that waits (I/O, a lock, `sio.sleep`, `sio.call` to a client,
  anything that switches to eventlet's hub) stops being inline right
  there: eventlet's hub calls the greenlet's `switch_out` before it
  switches away, which schedules the reader to resume, and the handler
  carries on as any other greenlet under the hub (the hub becomes its
  parent, as eventlet does for every greenlet that waits). So a blocking
  handler never stalls the connection's other events, or anyone else's:
  handlers stay concurrent, as python-socketio's are.
- What a handler sees is what it saw in a background task: a greenlet of
  its own (greenlet-local and thread-local state start empty), an empty
  `contextvars` context, and an exception that escapes it printed to
  stderr as eventlet prints one escaping a GreenThread.

One thing is ordered differently, and only in a race: a handler that does
not wait now runs before the reader takes the connection's next packet, as
Node's socket.io does, where before the reader went on with the packets
already received (a disconnect sent right after an event, say) first.

Only servers on eventlet with `async_handlers` get it; tests/test_dispatch.py
drives a real cluster with blocking handlers.
"""

from __future__ import annotations

import logging
import sys
import weakref

import eventlet.hubs
import greenlet
import socketio

from imcluster.workers import protocol

log = logging.getLogger("imcluster.worker")
_RESUMED = object()  # what the reader's switch returns when its handler started waiting


POOL_MAX = 64  # parked handler greenlets kept per worker (16 KiB of frame stack each)
_pool: list[HandlerGreenlet] = []


class HandlerGreenlet(greenlet.greenlet):
    """Event handlers, switched to directly by the greenlet that read their packet.

    One greenlet runs one handler, and then another, as long as nothing can tell
    them apart (see `_unmarked`); otherwise it ends after its handler, as a
    background task's greenlet would.
    """

    def __init__(self, reader: greenlet.greenlet):
        super().__init__(parent=reader)
        self.reader: greenlet.greenlet | None = reader
        self.links: list | None = None  # (func, args, kwargs) to call as a handler ends

    # internals: eventlet-current-thread-link
    def link(self, func, *args, **kwargs) -> None:
        """Call `func(self, *args, **kwargs)` when the running handler ends, as
        eventlet's GreenThread.link calls it when a greenthread ends.

        eventlet's `threading.current_thread()` links one to give a greenthread a
        thread object of its own (a `GreenThread-N` name, room for attributes)
        and to forget that object at its end; without `link` it answers the main
        thread for every handler, whose attributes every handler then shares
        (python-socketio's handlers, in GreenThreads, each get their own). So
        each handler here gets its own thread object, and it is forgotten when
        the handler ends, whether its greenlet then ends or is parked."""
        if self.links is None:
            self.links = []
        self.links.append((func, args, kwargs))

    def _run_links(self) -> None:
        links, self.links = self.links, None
        for func, args, kwargs in links:
            try:
                func(self, *args, **kwargs)
            except Exception:
                log.exception("a callback linked to an event handler raised")

    # internals: eventlet-hub-switch-out
    def switch_out(self) -> None:
        """Called by eventlet's hub as this greenlet starts to wait: let the reader go on."""
        reader = self.reader
        if reader is not None:
            self.reader = None
            eventlet.hubs.get_hub().schedule_call_global(0, reader.switch, _RESUMED)

    def run(self, fn, args) -> None:
        while True:
            refs = sys.getrefcount(self)
            try:
                fn(*args)
            except Exception as e:
                # Where eventlet's hub prints an exception escaping a GreenThread
                # (squelch_timer_exception), and as it is switched off there; but
                # through the worker's log, so its lines carry the time and the
                # worker, as the rest of the log does.
                # internals: eventlet-hub-debug-exceptions
                if getattr(eventlet.hubs.get_hub(), "debug_exceptions", True):
                    log.error("an event handler raised %s: %s", type(e).__name__, e,
                              exc_info=True)
            finally:
                if self.links is not None:
                    self._run_links()
            fn = args = None
            reader = self.reader
            if (reader is None or len(_pool) >= POOL_MAX
                    or sys.getrefcount(self) > refs or not self._unmarked()):
                return  # the greenlet ends, as a background task's does
            # Parked: no handler's context, and no reference to the reader (the
            # hub is the parent of every parked greenlet), then back to the
            # reader as if this greenlet had ended.
            self.gr_context = None
            self.reader = None
            self.parent = eventlet.hubs.get_hub().greenlet
            _pool.append(self)
            fn, args = reader.switch(None)

    def _unmarked(self) -> bool:
        """True if the handler that just ended left nothing tied to this greenlet.

        What a handler can tie to its greenlet, and how each shows:
        - thread-locals (eventlet's `corolocal.local`, which `threading.local` is
          under monkey-patching) key their values by a weak reference to the
          greenlet: any weak reference counts (`threading.current_thread()`, which
          logging calls, makes the handler a thread object of its own through
          `link`, and forgets it as the handler ends: nothing is left);
        - a timer, a listener or a container still holding the greenlet or its
          bound methods (an uncancelled `eventlet.Timeout`, say): the reference
          count is higher than when the handler began (checked by `run`);
        - attributes set on `greenlet.getcurrent()`: its `__dict__` holds more
          than `reader` and `links`.
        The `contextvars` context is reset for every handler (`gr_context`).
        """
        return weakref.getweakrefcount(self) == 0 and len(self.__dict__) == 2


def run_now(fn, *args) -> None:
    """Run fn(*args) in a greenlet of its own, now; return when it ends or starts waiting.

    The greenlet is a fresh one, or a parked one whose last handler ran to its
    end without waiting and left nothing behind (HandlerGreenlet._unmarked): a new
    greenlet costs CPython 3.11 a frame-stack chunk (mmap and munmap of 16 KiB,
    about 9 µs on this project's machines, docs/benchmarks.md), a parked one a
    switch.
    """
    here = greenlet.getcurrent()
    if here is eventlet.hubs.get_hub().greenlet:  # not from a greenlet that may switch
        eventlet.spawn_n(fn, *args)
        return
    if _pool:
        g = _pool.pop()
        g.parent = here
        g.reader = here
        g.switch(fn, args)
    else:
        HandlerGreenlet(here).switch(fn, args)


class InlineEvents:
    """socketio.Server's event dispatch, with `run_now` for the background task."""

    # internals: socketio-handle-event (a copy, changed)
    def _handle_event(self, eio_sid, namespace, id, data):
        if not self.async_handlers:
            return super()._handle_event(eio_sid, namespace, id, data)
        # python-socketio 5.18's Server._handle_event, but for its
        # start_background_task(self._handle_event_internal, ...).
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        self.logger.info('received event "%s" from %s [%s]', data[0], sid, namespace)
        if not self.manager.is_connected(sid, namespace):
            self.logger.warning("%s is not connected to namespace %s", sid, namespace)
            return None
        run_now(self._handle_event_internal, self, sid, eio_sid, data, namespace, id)
        return None


def install(sio: socketio.Server) -> bool:
    """Dispatch `sio`'s events with `run_now` if it runs on eventlet; True if so."""
    if sio.eio.async_mode != "eventlet" or not isinstance(sio, socketio.Server):
        return False
    sio.__class__ = protocol.with_rules(type(sio), InlineEvents)
    return True
