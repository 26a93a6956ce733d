"""HAProxy as the routing tier in front of several imcluster hosts.

`config()` writes a complete haproxy.cfg, commented line by line, and `host_map()`
the map file it reads: a sid's first two characters name its host
(`imcluster.sid.host_prefix`), and the map turns them into that host's server.
`runtime_commands()` gives the runtime-API commands (HAProxy's management
guide, section 9.3, "Unix Socket commands") that add, drain and remove a host
without a reload; `send()` sends one over HAProxy's stats socket. Written for
HAProxy 2.6 (Debian 12's), the first long-term branch with dynamic servers
that take health checks.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from imcluster.httpline import READY_PATH
from imcluster.sid import MAX_HOST_ID, host_prefix

BACKEND = "imcluster_hosts"
# Health checks: every 2 s; down after 2 failures, up after 2 successes. A dead
# host's sids fall through to the others within about 4 s (sooner when its
# port refuses connections: `option redispatch`).
CHECK = "check inter 2s fall 2 rise 2"


@dataclass(frozen=True)
class Host:
    id: int
    address: str  # HOST:PORT of the host's master, as HAProxy reaches it

    @property
    def server(self) -> str:
        return f"host{self.id}"

    @property
    def prefix(self) -> str:
        return host_prefix(self.id)


def parse_host(spec: str) -> Host:
    """`ID=HOST:PORT` (ID 1..4095, the host's --host-id) -> Host; ValueError says why."""
    ident, sep, address = spec.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not ident.isdigit() or not colon or not host or not port.isdigit():
        raise ValueError(f"{spec!r}: expected ID=HOST:PORT, e.g. 1=10.0.0.1:8000")
    n = int(ident)
    if not 1 <= n <= MAX_HOST_ID:
        raise ValueError(f"{spec!r}: a host id is 1..{MAX_HOST_ID} (its imcluster --host-id)")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{spec!r}: port out of range")
    return Host(n, address)


def parse_host_id(spec: str) -> Host:
    """`ID` (or `ID=HOST:PORT`, the address ignored) -> Host without an address, for
    the runtime actions that need only the id; ValueError says why."""
    ident = spec.partition("=")[0]
    if not ident.isdigit() or not 1 <= int(ident) <= MAX_HOST_ID:
        raise ValueError(f"{spec!r}: expected a host id 1..{MAX_HOST_ID}")
    return Host(int(ident), "")


def check_hosts(hosts: list[Host]) -> None:
    """ValueError when two hosts share an id or an address."""
    for attr in ("id", "address"):
        seen = [getattr(h, attr) for h in hosts]
        dup = {x for x in seen if seen.count(x) > 1}
        if dup:
            raise ValueError(f"two hosts with the same {attr}: {', '.join(map(str, dup))}")


def check_cert(path: str) -> str | None:
    """A `--cert` file as HAProxy's `ssl crt` reads it: one PEM holding the
    certificate (chain) and its private key. ValueError when the file is here
    but lacks either; a warning (str) when it is not here (the config may be
    made on another machine than HAProxy's); None when it looks right."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except FileNotFoundError:
        return f"{path} is not on this machine; HAProxy must find it there when it starts"
    except OSError as e:
        raise ValueError(f"cannot read the certificate {path}: {e.strerror or e}") from None
    missing = [what for what, marker in (("certificate", b"-----BEGIN CERTIFICATE-----"),
                                         ("private key", b"PRIVATE KEY-----"))
               if marker not in pem]
    if missing:
        raise ValueError(f"{path} has no {' and no '.join(missing)}: HAProxy wants the "
                         "certificate (and its chain) and the private key in one PEM file "
                         "(cat cert.pem key.pem > site.pem)")
    return None


def host_map(hosts: list[Host]) -> str:
    """The map file: one `PREFIX SERVER` line per host."""
    head = ("# imcluster: a sid's first two characters (its host id) -> the HAProxy server\n"
            "# of that host. Changed at run time by `imcluster haproxy-host`.\n")
    return head + "".join(f"{h.prefix} {h.server}\n" for h in sorted(hosts, key=lambda h: h.id))


def config(bind: str, hosts: list[Host], map_path: str, socket_path: str,
           cert: str | None = None, maxconn: int = 100_000, argv: str = "") -> str:
    """A complete haproxy.cfg for `hosts` behind `bind` (HOST:PORT), commented."""
    # TLS ends here; the hosts behind speak plain HTTP (keep them on a private
    # network). HTTP/1.1 only (ALPN): HTTP/2 and WebSocket over it (RFC 8441)
    # are not tested with imcluster.
    ssl = f" ssl crt {cert} alpn http/1.1" if cert else ""
    servers = "".join(f"    server {h.server} {h.address} {CHECK}\n"
                      for h in sorted(hosts, key=lambda h: h.id))
    return f"""\
# haproxy.cfg: {len(hosts)} imcluster host(s) behind one address.
# Generated by: imcluster haproxy-config {argv}
# Every Engine.IO sid names the host that made it (its first two characters);
# HAProxy sends each request of a session to that host, and a new session to
# the live host with the fewest connections. No cookie, no stick table: the
# sid is the persistence. Hosts are added, drained and removed at run time
# with `imcluster haproxy-host` (runtime API, no reload); regenerate this file
# with the same list so that a reload keeps them.

global
    # The runtime API, owner-only: `imcluster haproxy-host` speaks to it.
    stats socket {socket_path} mode 600 level admin
    # Connections this instance holds at once; each client costs two
    # descriptors (client side and host side): `ulimit -n` above twice this.
    maxconn {maxconn}

defaults
    mode http
    # Engine.IO pings every 25 s and closes a session whose pong is 20 s late
    # (python-engineio's pingInterval and pingTimeout): no live session is idle
    # 45 s in either direction. Every timeout below on an open session is
    # longer than that cycle; raise them if your app sets longer intervals.
    timeout client 60s          # a long-poll GET is held up to pingInterval
    timeout server 60s
    timeout tunnel 60s          # a WebSocket, after its upgrade
    timeout client-fin 5s       # half-closed connections do not linger
    timeout http-keep-alive 60s # an idle kept-alive client connection
    timeout http-request 10s    # the whole request head (the masters give 10 s too)
    timeout connect 5s
    timeout queue 5s
    # A host that refuses the connection (dead, restarting): try another one,
    # which answers a sid it does not own 400; the client re-handshakes there.
    option redispatch
    retries 2
    # The app sees the client's address in X-Forwarded-For.
    option forwardfor

frontend socketio
    bind {bind}{ssl}
    # The host a sid names: its first two characters (12 bits, the host id),
    # looked up in the map. No sid (a new session, a page) or a host the map
    # does not know: no variable, and the backend balances.
    http-request set-var(txn.sid_host) url_param(sid),bytes(0,2),map_str({map_path})
    # The scheme the client used, for the app: python-engineio accepts a browser's
    # Origin only when it matches the scheme and Host it was reached by (its
    # default, same-origin cors_allowed_origins), and behind TLS that is https.
    # Set, never passed on: a client's own X-Forwarded-Proto is replaced.
    http-request set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]
    # No Strict-Transport-Security header: HSTS binds browsers to https for
    # the whole name for a long time; add it yourself once https is for good:
    # http-response set-header Strict-Transport-Security "max-age=31536000"
    # The readiness path is for HAProxy's checks, not for clients.
    http-request deny deny_status 404 if {{ path {READY_PATH} }}
    default_backend {BACKEND}

backend {BACKEND}
    # New sessions: the live, undrained host with the fewest connections.
    balance leastconn
    # A session's requests: the host its sid names, while that host is up
    # (drained included). A host that is down is skipped: the request is
    # balanced to a live host, whose master answers the foreign sid 400.
    use-server %[var(txn.sid_host)] if {{ var(txn.sid_host) -m found }}
    # Readiness, answered by each host's master on its own port: 200 ready;
    # 404 drained (`imcluster drain`: no new sessions, its sids still routed);
    # 503 or no answer: down.
    option httpchk
    http-check send meth GET uri {READY_PATH} ver HTTP/1.1 hdr Host imcluster
    http-check disable-on-404
    http-check expect status 200
    # Host-side connections are kept alive and shared between clients
    # (http-reuse safe, HAProxy's default): a master routes every request on
    # a connection by its own sid.
{servers}"""


def runtime_commands(action: str, host: Host, map_path: str) -> list[str]:
    """The runtime-API commands for `action` on `host`, in the order to send them.

    add: a dynamic server with the same checks as the generated ones, then its
    map entry. drain / ready: HAProxy's own drain (no new sessions; sids still
    routed), or its end. remove: the map entry first (its sids then balance to
    other hosts, which answer 400), then the server is put in maintenance, its
    connections shut and the server deleted.
    """
    srv = f"{BACKEND}/{host.server}"
    if action == "add":
        return [f"add server {srv} {host.address} {CHECK}", f"enable health {srv}",
                f"enable server {srv}", f"add map {map_path} {host.prefix} {host.server}"]
    if action == "drain":
        return [f"set server {srv} state drain"]
    if action == "ready":
        return [f"set server {srv} state ready"]
    if action == "remove":
        return [f"del map {map_path} {host.prefix}", f"set server {srv} state maint",
                f"shutdown sessions server {srv}", f"del server {srv}"]
    raise ValueError(f"unknown action {action!r} (add, drain, ready, remove)")


def send(socket_path: str, command: str, timeout: float = 5.0) -> str:
    """Send one runtime-API command over HAProxy's stats socket; return its answer.
    OSError when the socket cannot be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(command.encode() + b"\n")
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
    return out.decode(errors="replace").strip()


# What HAProxy 2.6 answers when a command of runtime_commands() succeeds; any
# other answer is its reason for refusing.
_DONE = ("", "New server registered.", "Server deleted.")


def apply(socket_path: str, command: str) -> str:
    """`send` a command of runtime_commands(); RuntimeError with HAProxy's answer
    when it refuses it."""
    answer = send(socket_path, command)
    if answer not in _DONE:
        raise RuntimeError(f"HAProxy refused {command!r}: {answer}")
    return answer
