"""The client side of the master's control socket (used by the CLI and tests)."""

from __future__ import annotations

import json
import socket


class ControlError(Exception):
    """The control socket cannot be reached or answered badly; the text says why."""


def request(path: str, cmd: str, timeout: float = 5.0, **args) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}: is imcluster running "
                               "(and is this its --control path)?") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as the user that "
                               "runs imcluster") from None
        except ConnectionRefusedError:
            raise ControlError(f"nothing answers on {path}: the master is not running "
                               "(stale socket file)") from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise ControlError(f"the master did not answer on {path} within {timeout}s") from None
    finally:
        s.close()
    try:
        answer = json.loads(buf)
    except ValueError:
        raise ControlError(f"unreadable answer from {path}") from None
    if isinstance(answer, dict) and "error" in answer:
        raise ControlError(answer["error"])
    return answer
