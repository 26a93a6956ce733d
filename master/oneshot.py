"""Small request/answer servers served from the master's own loop (no thread).

One request per connection: read until the request is whole, answer, close.
Everything is non-blocking and bounded (request size, time to send the
request, time to take the answer), so a stuck or hostile client can never
stall the loop. The control socket and the metrics endpoint are built on it.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time

log = logging.getLogger("imcluster.master")

MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 5.0


class _Client:
    __slots__ = ("sock", "buf", "out", "deadline")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.buf = bytearray()
        self.out = b""
        self.deadline = deadline


class OneShotServer:
    """Accepts on `sock` (listening, non-blocking) and answers each client once.

    Subclasses say when a request is whole (`complete`) and what to answer
    (`answer`); `too_long` is the answer to a request over MAX_REQUEST bytes.
    """

    def __init__(self, selector: selectors.BaseSelector, sock: socket.socket):
        self.selector = selector
        self.sock = sock
        self.clients: dict[int, _Client] = {}
        selector.register(sock, selectors.EVENT_READ, self._on_accept)

    # ---- for subclasses ------------------------------------------------------

    def complete(self, buf: bytearray) -> bool:
        raise NotImplementedError

    def answer(self, buf: bytearray) -> bytes:
        raise NotImplementedError

    def too_long(self) -> bytes:
        return b""

    # ---- the loop's side ---------------------------------------------------

    def _on_accept(self, key: selectors.SelectorKey, mask: int) -> None:
        self.expire()
        try:
            c, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EMFILE and the like: the loop goes on
            log.warning("cannot accept on %s: %s", self.sock.getsockname(), e)
            return
        c.setblocking(False)
        self.clients[c.fileno()] = _Client(c, time.monotonic() + CLIENT_TIMEOUT)
        self.selector.register(c, selectors.EVENT_READ, self._on_readable)

    def _on_readable(self, key: selectors.SelectorKey, mask: int) -> None:
        client = self.clients[key.fd]
        try:
            data = client.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)
            return
        client.buf += data
        if not self.complete(client.buf):
            if len(client.buf) > MAX_REQUEST:
                self._send(client, self.too_long())
            return
        try:
            answer = self.answer(client.buf)
        except Exception:  # a request must never take the master down with it
            log.exception("%s: answering a request failed; closing that connection",
                          type(self).__name__)
            self._close(client)
            return
        self._send(client, answer)

    def _send(self, client: _Client, data: bytes) -> None:
        client.out = data
        self.selector.modify(client.sock, selectors.EVENT_WRITE, self._on_writable)
        self._on_writable(None, 0, client)

    def _on_writable(self, key, mask: int, client: _Client | None = None) -> None:
        client = client or self.clients[key.fd]
        try:
            sent = client.sock.send(client.out) if client.out else 0
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._close(client)

    def _close(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def expire(self) -> None:
        """Close clients past their deadline (called on every accept and every tick)."""
        now = time.monotonic()
        for client in list(self.clients.values()):
            if client.deadline < now:
                self._close(client)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
