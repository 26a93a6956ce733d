"""The control socket, served from the master's own loop (no thread).

One request per connection: the client sends one JSON object and a newline,
the master answers one JSON object and a newline, then closes (see
`imcluster.control` for the commands and the answers' keys). Non-blocking and
bounded like every server on the loop (`oneshot`). The socket is created
owner-only (0600).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import socket
import stat
from collections.abc import Callable

from imcluster.master.oneshot import OneShotServer

log = logging.getLogger("imcluster.master")


class ControlServer(OneShotServer):
    def __init__(self, selector: selectors.BaseSelector, path: str,
                 handler: Callable[[dict], dict]):
        self.path = path
        self.handler = handler
        super().__init__(selector, self._listen(path))

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

    def complete(self, buf: bytearray) -> bool:
        return b"\n" in buf

    def too_long(self) -> bytes:
        return _encode({"error": "request too long"})

    def answer(self, buf: bytearray) -> bytes:
        try:
            request = json.loads(buf[: buf.index(b"\n")])
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return _encode({"error": f"bad request: {e}"})
        except RecursionError:  # nested deeper than the parser's stack allows
            return _encode({"error": "bad request: nested too deeply"})
        try:
            return _encode(self.handler(request))
        except Exception as e:  # the master keeps running whatever a command does
            log.exception("control command %r failed", request.get("cmd"))
            return _encode({"error": f"{type(e).__name__}: {e}"})

    def close(self) -> None:
        super().close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _encode(answer: dict) -> bytes:
    return json.dumps(answer).encode() + b"\n"
