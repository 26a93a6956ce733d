"""WebSocket readers woken from one epoll of our own, with each socket registered once.

A green socket's recv() that finds nothing to read waits through eventlet's
hub: `trampoline` adds a listener (an `epoll_ctl` ADD), arms a timer for the
socket's timeout, switches to the hub, and on wake-up removes both again (an
`epoll_ctl` DEL, a timer cancelled). Under the echo benchmark that was a
fifth of a worker's time per message (docs/benchmarks.md, "Per-ack cost").

Here a WebSocket's reader (sessions.BufferedReceive) registers its socket
once, edge-triggered, in an epoll of the worker's `Reactor`. That epoll's
own descriptor is registered once in eventlet's hub, which reports it
readable whenever a socket in it has news; the reactor then takes every
ready socket in one `epoll_wait` and switches to each one's waiting reader,
as the hub switches to a trampoline's. A wait costs no syscall of its own
and no timer:

- Edge-triggered: any byte that arrives after a read reports a new edge.
  So a reader waits once a read comes back short of what it asked for (the
  kernel's TCP receive gives all it holds, up to the size asked), without
  the read that would say EAGAIN (a syscall per message under the echo
  benchmark). Two things stop a TCP read short with more to read and no
  new edge to come: an end of file after the data, and an urgent mark;
  events that may carry either (RDHUP, HUP, ERR, PRI) set the reader's
  `more`, and it then reads until EAGAIN or the end, as eventlet's
  reader does. A spurious wake-up (a stale event) is harmless: the read
  comes back with EAGAIN and the reader waits again.
- The socket's timeout (`settimeout`, as eventlet's would) is kept by one
  sweep a second over the waiting readers, which throws `socket.timeout`
  (TimeoutError) into a reader waiting longer, from the hub, as eventlet's timer does; so
  it fires up to a second late.
- An epoll registration belongs to the open socket, not to its descriptor
  number: a socket whose descriptor is passed to another process
  (workers/handover.py) would keep being reported here. A reader leaves the
  reactor (`BufferedReceive.detach`) before its socket is handed over or
  closed.
"""

from __future__ import annotations

import sys
import time

import eventlet.greenio.base
import eventlet.hubs
import eventlet.patcher
import greenlet

# The real module: a monkey-patched worker's `select` is eventlet's, without epoll.
select = eventlet.patcher.original("select")

SWEEP_EVERY = 1.0  # seconds between two checks of the waiting readers' timeouts
_FLAGS = select.EPOLLIN | select.EPOLLPRI | select.EPOLLRDHUP | select.EPOLLET
# An event with any of these may come with a read that stops short of the
# queue's end (before an end of file, or an urgent mark) and no later edge.
_MORE = select.EPOLLPRI | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class Reactor:
    """The epoll of one hub's WebSocket readers (see the module's docstring)."""

    def __init__(self, hub):
        self.hub = hub
        self.ep = select.epoll()
        self.members: dict[int, object] = {}  # fd -> the BufferedReceive registered on it
        self.sweeping = False
        # One listener for the life of the worker. internals: eventlet-hub-listener
        hub.add(hub.READ, self.ep.fileno(), self._on_ready, self._on_throw, None)

    def register(self, member, fd: int) -> None:
        try:
            self.ep.register(fd, _FLAGS)
        except FileExistsError:
            # The same open socket under the same number, left registered
            # by a reader that did not detach: keep it (the member changes).
            pass
        self.members[fd] = member
        if not self.sweeping:
            self.sweeping = True
            self.hub.schedule_call_global(SWEEP_EVERY, self._sweep)

    def unregister(self, member, fd: int) -> None:
        if self.members.get(fd) is member:
            del self.members[fd]
        try:
            self.ep.unregister(fd)
        except OSError:  # closed already (the kernel forgot it) or never registered
            pass

    def _on_ready(self, _fileno) -> None:
        # Run by the hub, in its greenlet, like a trampoline's callback.
        try:
            events = self.ep.poll(0)
        except InterruptedError:
            return
        members = self.members
        for fd, mask in events:
            m = members.get(fd)
            if m is None:
                continue  # a socket that left since the event was queued
            m.ready = True
            if mask & _MORE:
                m.more = True
            w = m.waiter
            if w is not None:
                m.waiter = None
                self._resume(w.switch)

    # internals: eventlet-hub-squelch
    def _resume(self, call, *args) -> None:
        # As eventlet's hub calls a listener: a system exit goes on up, anything
        # else escaping the woken greenlet is printed and the loop goes on.
        try:
            call(*args)
        except self.hub.SYSTEM_EXCEPTIONS:
            raise
        except BaseException:
            self.hub.squelch_generic_exception(sys.exc_info())

    def _on_throw(self, *args) -> None:  # our epoll is never closed under the hub
        pass

    def _sweep(self) -> None:
        now = time.monotonic()
        for m in list(self.members.values()):
            w, limit = m.waiter, m.wait_limit
            if w is not None and limit is not None and now - m.since > limit:
                m.waiter = None
                # What eventlet's trampoline raises for a green socket's timeout.
                self._resume(w.throw, TimeoutError("timed out"))
        if self.members:
            self.hub.schedule_call_global(SWEEP_EVERY, self._sweep)
        else:
            self.sweeping = False


_reactor: Reactor | None = None


def reactor() -> Reactor:
    """This process's reactor, on the current eventlet hub (made on first use)."""
    global _reactor
    hub = eventlet.hubs.get_hub()
    r = _reactor
    if r is None or r.hub is not hub:
        r = _reactor = Reactor(hub)
    return r


# The errnos eventlet's green recv() returns as end of file rather than
# raising (ECONNRESET, ESHUTDOWN, EPIPE on Linux). internals: eventlet-socket-closed,
# eventlet-socket-errnos
CLOSED_ERRNOS = frozenset(eventlet.greenio.base.SOCKET_CLOSED)


def wait_readable(member) -> None:
    """Park the current greenlet until the reactor reports `member`'s socket,
    or its timeout passes (TimeoutError, which is socket.timeout). `member`
    is registered already."""
    member.waiter = greenlet.getcurrent()
    member.since = time.monotonic()
    try:
        member.reactor.hub.switch()
    finally:
        member.waiter = None
