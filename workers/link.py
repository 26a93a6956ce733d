"""The worker's end of its channel to the master, on eventlet.

`socket.recvmsg` on a green socket is not green, so every call waits for
readiness with eventlet's trampoline and then uses the real socket beneath.
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

log = logging.getLogger("imcluster.worker")


class Link:
    def __init__(self, fd: int):
        # A plain (not green) socket object: we do the waiting ourselves.
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self._send_lock = eventlet.semaphore.Semaphore()
        self.closed = False

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
                try:
                    trampoline(self.sock, read=True)
                except OSError:
                    break
                continue
            except (OSError, ValueError) as e:
                log.warning("channel receive failed: %s", e)
                frame = None
            if frame is None:
                break
            return frame
        self.closed = True
        return None
