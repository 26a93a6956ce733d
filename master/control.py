"""The control socket, served from the master's own loop (no thread).

One request per connection: the client sends one JSON object and a newline,
the master answers one JSON object and a newline, then closes. Everything is
non-blocking and bounded, so a stuck or hostile client cannot stall the loop.
The socket is created owner-only (0600).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable

log = logging.getLogger("imcluster.master")

MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT = 5.0


class ControlServer:
    def __init__(self, selector: selectors.BaseSelector, path: str,
                 handler: Callable[[dict], dict]):
        self.selector = selector
        self.path = path
        self.handler = handler
        self.clients: dict[int, tuple[socket.socket, bytearray, float]] = {}
        self.sock = self._listen(path)
        selector.register(self.sock, selectors.EVENT_READ, self._on_accept)

    @staticmethod
    def _listen(path: str) -> socket.socket:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise SystemExit(f"imcluster: {path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: left by a master that died
            else:
                raise SystemExit(f"imcluster: another master answers on {path}")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(path)
        except OSError as e:
            s.close()
            raise SystemExit(f"imcluster: cannot create the control socket {path}: "
                             f"{e.strerror or e}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(16)
        s.setblocking(False)
        return s

    def _on_accept(self, key: selectors.SelectorKey, mask: int) -> None:
        self.expire()
        try:
            c, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        c.setblocking(False)
        self.clients[c.fileno()] = (c, bytearray(), time.monotonic() + CLIENT_TIMEOUT)
        self.selector.register(c, selectors.EVENT_READ, self._on_client)

    def _on_client(self, key: selectors.SelectorKey, mask: int) -> None:
        c, buf, _ = self.clients[key.fd]
        try:
            data = c.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(c)
            return
        buf += data
        if b"\n" not in buf:
            if len(buf) > MAX_REQUEST:
                self._reply(c, {"error": "request too long"})
            return
        try:
            request = json.loads(buf[: buf.index(b"\n")])
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._reply(c, {"error": f"bad request: {e}"})
            return
        try:
            answer = self.handler(request)
        except Exception as e:  # the master keeps running whatever a command does
            log.exception("control command %r failed", request)
            answer = {"error": f"{type(e).__name__}: {e}"}
        self._reply(c, answer)

    def _reply(self, c: socket.socket, answer: dict) -> None:
        data = json.dumps(answer).encode() + b"\n"
        try:
            # Answers are a few KB; the socket buffer takes them whole. A client
            # that does not read gets a truncated answer, never a stalled master.
            c.send(data)
        except OSError:
            pass
        self._close(c)

    def _close(self, c: socket.socket) -> None:
        self.clients.pop(c.fileno(), None)
        try:
            self.selector.unregister(c)
        except (KeyError, ValueError):
            pass
        c.close()

    def expire(self) -> None:
        now = time.monotonic()
        for c, _, deadline in list(self.clients.values()):
            if deadline < now:
                self._close(c)

    def close(self) -> None:
        for c, _, _ in list(self.clients.values()):
            self._close(c)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
