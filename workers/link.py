"""The worker's end of its channel to the master, on eventlet.

`socket.recvmsg` on a green socket is not green, so every call waits for
readiness and then uses the real socket beneath. Sends wait with eventlet's
trampoline (rare: only when the channel is full); the reader, which waits
after nearly every burst of hand-offs, waits in the worker's reactor
(workers/reactor.py), where the channel is registered once: a trampoline's
wait costs an epoll_ctl ADD and a DEL (measured: 0.68 epoll_ctl per polling
request, docs/benchmarks.md "Syscalls and wake-ups per polling request").
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable

import eventlet
import eventlet.semaphore
from eventlet.hubs import trampoline

from imcluster import channel as ch
from imcluster.workers import reactor as reactor_mod

log = logging.getLogger("imcluster.worker")


class _ReaderWait:
    """The channel reader as a member of the reactor (workers/reactor.py): its
    socket is registered once, edge-triggered; the reader reads until EAGAIN
    before every wait, so any frame that arrives later is a new edge."""

    __slots__ = ("reactor", "ready", "more", "waiter", "since", "wait_limit")

    def __init__(self, reactor: reactor_mod.Reactor):
        self.reactor = reactor
        self.ready = self.more = True
        self.waiter = None
        self.since = 0.0
        self.wait_limit = None  # no timeout: the channel lives as long as the worker


class Link:
    def __init__(self, fd: int):
        # A plain (not green) socket object: we do the waiting ourselves.
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self._send_lock = eventlet.semaphore.Semaphore()
        self.closed = False
        self._wait: _ReaderWait | None = None  # registered in the reactor at the first wait

    def send(self, kind: bytes, payload: bytes = b"", fd: int | None = None) -> bool:
        """Send one message (fragmented if large). False if the master is gone."""
        with self._send_lock:  # fragments of one message must not interleave
            for frame in ch.frames(kind, payload):
                if not self._send_frame(frame, fd):
                    return False
                fd = None
        return True

    def _send_frame(self, frame: bytes, fd: int | None) -> bool:
        while not self.closed:
            try:
                if fd is None:
                    self.sock.send(frame)
                else:
                    self.sock.sendmsg([frame], ch.fd_ancillary(fd))
                return True
            except (BlockingIOError, InterruptedError):
                trampoline(self.sock, write=True)
            except OSError as e:
                if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    log.warning("channel send failed: %s", e)
                self.closed = True
        return False

    def receive_first(self, kind: bytes) -> bytes | None:
        """Wait for the first message on the channel and return its payload.

        None if the channel closes first, or if the first message is not of
        `kind` (the master sends the spec before anything else).
        """
        joiner = ch.Joiner()
        while (frame := self._next_frame()) is not None:
            got, flags, payload, fds = frame
            for fd in fds:  # no frame before the spec carries one
                os.close(fd)
            if got != kind:
                log.error("channel: expected %r first, got %r", kind, got)
                return None
            whole = joiner.feed(got, flags, payload)
            if whole is not None:
                return whole
        return None

    def receive_forever(self, on_frame: Callable[[bytes, int, bytes, list[int]], None]) -> None:
        """Deliver frames to `on_frame` until the master closes the channel."""
        while (frame := self._next_frame()) is not None:
            on_frame(*frame)

    def _next_frame(self) -> tuple[bytes, int, bytes, list[int]] | None:
        """The next frame, waiting (green) for it; None once the channel is closed."""
        while not self.closed:
            try:
                frame = ch.recv_frame(self.sock)
            except (BlockingIOError, InterruptedError):
                self._wait_readable()
                continue
            except (OSError, ValueError) as e:
                log.warning("channel receive failed: %s", e)
                frame = None
            if frame is None:
                break
            return frame
        self.closed = True
        self._leave_reactor()
        return None

    def _wait_readable(self) -> None:
        w = self._wait
        if w is None:
            r = reactor_mod.reactor()
            w = self._wait = _ReaderWait(r)
            r.register(w, self.sock.fileno())
        reactor_mod.wait_readable(w)

    def _leave_reactor(self) -> None:
        w = self._wait
        if w is not None:
            self._wait = None
            w.reactor.unregister(w, self.sock.fileno())
