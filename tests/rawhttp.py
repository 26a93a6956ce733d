"""A deliberately plain HTTP/1.1 client that speaks Engine.IO long-polling.

It keeps one connection open for many requests (keep-alive) and can pipeline
several requests in one write, which the ready-made clients never do.
"""

from __future__ import annotations

import json
import socket


class Conn:
    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1"):
        self.port = port
        self.sock = socket.create_connection((host, port), timeout)
        self.f = self.sock.makefile("rb")

    def close(self) -> None:
        self.f.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def build(method: str, target: str, body: bytes = b"", close: bool = False) -> bytes:
        head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1",
                f"Content-Length: {len(body)}", "Content-Type: text/plain;charset=UTF-8"]
        if close:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def taken_by_server(self) -> bool:
        """True once the server has read everything sent on this connection.

        The master only peeks (MSG_PEEK), so the bytes stay in the kernel's
        receive queue of the server's end until the worker reads them; that
        queue is the rx_queue column of /proc/net/tcp. A worker that has read
        a GET poll is waiting in it without yielding in between, so a test can
        order a second request after a pending poll without a fixed sleep.
        """
        here = self.sock.getsockname()[1]
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if int(local.split(":")[1], 16) == self.port and \
                        int(remote.split(":")[1], 16) == here:
                    return int(fields[4].split(":")[1], 16) == 0
        return False

    def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, dict, bytes]:
        self.send(self.build(method, target, body))
        return self.read_response()

    def read_response(self) -> tuple[int, dict, bytes]:
        line = self.f.readline()
        if not line:
            raise ConnectionError("connection closed before a response")
        parts = line.decode("latin-1").split(" ", 2)
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            h = self.f.readline().decode("latin-1").rstrip("\r\n")
            if not h:
                break
            k, _, v = h.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            body = self.f.read(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.f.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.f.readline()
                    break
                body += self.f.read(size)
                self.f.readline()
        else:
            body = self.f.read()
        return status, headers, body


EIO = "/socket.io/?EIO=4&transport=polling"
EIO_WS = "/socket.io/?EIO=4&transport=websocket"


def poll_target(sid: str) -> str:
    return f"{EIO}&sid={sid}"


def ws_url(port: int, sid: str | None = None) -> str:
    """The URL of a raw WebSocket (websocket-client) for a new session, or an upgrade of `sid`."""
    return f"ws://127.0.0.1:{port}{EIO_WS}" + (f"&sid={sid}" if sid else "")


def handshake(port: int, target: str = EIO) -> dict:
    """Open an Engine.IO session over polling; returns the OPEN packet's data (sid, …)."""
    with Conn(port) as c:
        status, _, body = c.request("GET", target)
        assert status == 200 and body[:1] == b"0", (status, body)
        return json.loads(body[1:])


def open_session(port: int, host: str = "127.0.0.1") -> str:
    """Handshake on a fresh connection and connect the default namespace; returns the sid."""
    with Conn(port, host=host) as c:
        status, _, body = c.request("GET", EIO)
        assert status == 200, body
        assert body[:1] == b"0", body
        sid = json.loads(body[1:])["sid"]
        status, _, body = c.request("POST", poll_target(sid), b"40")
        assert status == 200 and body == b"ok", (status, body)
        status, _, body = c.request("GET", poll_target(sid))
        assert status == 200 and body.startswith(b"40"), (status, body)
    return sid


def whoami_requests(sid: str, ack_id: int) -> tuple[bytes, bytes]:
    """The POST that asks `whoami` and the GET that collects its ack."""
    post = Conn.build("POST", poll_target(sid), f'42{ack_id}["whoami"]'.encode())
    get = Conn.build("GET", poll_target(sid))
    return post, get


def parse_ack(body: bytes, ack_id: int) -> object:
    """The value of the ack `ack_id` in a polling payload (packets split by 0x1e)."""
    for packet in body.split(b"\x1e"):
        prefix = f"43{ack_id}".encode()
        if packet.startswith(prefix):
            return json.loads(packet[len(prefix):])[0]
    raise AssertionError(f"no ack {ack_id} in {body!r}")
