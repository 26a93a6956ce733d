"""Several hosts behind HAProxy (issue 15), on one machine: three clusters bound to
127.0.0.2, .3 and .4 (all loopback) with host ids 1, 2 and 3, a private Redis
for their broadcasts, and Debian's HAProxy, started here with the config that
`imcluster haproxy-config` prints. Driven by the official JS client,
python-socketio and raw HTTP."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import socketio
from conftest import JS, node_clients, node_script, wait_for
from rawhttp import EIO, Conn, parse_ack, poll_target, whoami_requests

from imcluster import haproxy
from imcluster.httpline import READY_PATH
from imcluster.sid import host_of, host_prefix
from imcluster.testing import free_port

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (scripts/setup installs Debian's "
                            "package when run as root)")


def imcluster_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "imcluster", *args], capture_output=True,
                         text=True, timeout=30)
    if check:
        assert out.returncode == 0, out.stderr
    return out


class HAProxy:
    """Debian's haproxy in the foreground (-db), on a free loopback port, with the
    config `imcluster haproxy-config` printed; stopped by its pid."""

    def __init__(self, d: Path, hosts: dict[int, str], extra: tuple[str, ...] = ()):
        self.dir = d
        self.port = free_port()
        self.map = str(d / "hosts.map")
        self.socket = str(d / "admin.sock")
        out = imcluster_cli("haproxy-config", "--bind", f"127.0.0.1:{self.port}",
                            "--map", self.map, "--socket", self.socket,
                            # within this machine's descriptor limit (2 per connection)
                            "--maxconn", "4000", *extra,
                            *(f"{i}={a}" for i, a in hosts.items()))
        self.scheme = "https" if "--cert" in extra else "http"
        self.cfg = d / "haproxy.cfg"
        self.cfg.write_text(out.stdout)
        self.log = open(d / "haproxy.log", "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._up, 15, what="haproxy")
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"haproxy exited {self.proc.returncode}: "
                                 f"{(self.dir / 'haproxy.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            haproxy.send(self.socket, "show info")
            return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def run(self, command: str) -> str:
        return haproxy.send(self.socket, command)

    def server_states(self) -> dict[str, tuple[int, int]]:
        """Server name -> (operational state, admin state), from the runtime API:
        op 0 stopped (down), 2 running, 3 stopping (drained by a 404 check)."""
        out = {}
        for line in self.run(f"show servers state {haproxy.BACKEND}").splitlines():
            f = line.split()
            if len(f) > 6 and f[0].isdigit() and f[1] == haproxy.BACKEND:
                out[f[3]] = (int(f[5]), int(f[6]))
        return out

    def wait_states(self, want: dict[str, int], timeout: float = 20.0) -> None:
        def reached():
            st = self.server_states()
            return all(st.get(k, (None,))[0] == v for k, v in want.items()) and st

        wait_for(reached, timeout, 0.2, what=f"HAProxy server states {want}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


UP, DRAINED, DOWN = 2, 3, 0


@pytest.fixture
def fleet(cluster_factory, redis_server, tmp_path):
    """Hosts 1-3 (two workers each, on 127.0.0.2-4) and HAProxy in front of them."""

    class Fleet:
        hosts: dict[int, object] = {}

        def start_host(self, i: int, workers: int = 2):
            ip = f"127.0.0.{i + 1}"
            c = cluster_factory(workers=workers, host_id=i, redis=redis_server,
                                bind=f"{ip}:{free_port(ip)}")
            self.hosts[i] = c
            return c

        def address(self, i: int) -> str:
            return self.hosts[i].url.removeprefix("http://")

        def host_of_pid(self, pid: int) -> int | None:
            for i, c in self.hosts.items():
                if pid in {w["pid"] for w in c.status()["workers"]}:
                    return i
            return None

        def pids(self) -> dict[int, int]:
            return {w["pid"]: i for i, c in self.hosts.items() if c.proc.poll() is None
                    for w in c.status()["workers"]}

    f = Fleet()
    f.hosts = {}
    for i in (1, 2, 3):
        f.start_host(i)
    for c in f.hosts.values():
        c.wait_ready()
    f.haproxy = HAProxy(tmp_path, {i: f.address(i) for i in f.hosts})
    try:
        f.haproxy.wait_states({f"host{i}": UP for i in f.hosts})
        yield f
    finally:
        f.haproxy.stop()


def test_the_generated_config_is_valid_and_names_every_host(tmp_path):
    out = imcluster_cli("haproxy-config", "--bind", "127.0.0.1:8443", "--map",
                        str(tmp_path / "m.map"), "--socket", str(tmp_path / "a.sock"),
                        "1=10.0.0.1:8000", "4095=10.0.0.9:8000")
    cfg = tmp_path / "h.cfg"
    cfg.write_text(out.stdout)
    check = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "server host1 10.0.0.1:8000" in out.stdout
    assert "server host4095 10.0.0.9:8000" in out.stdout
    for directive in ("cookie ", "stick-table", "stick on", "appsession"):
        assert not any(line.strip().startswith(directive)
                       for line in out.stdout.splitlines()), directive
    lines = [ln.split() for ln in (tmp_path / "m.map").read_text().splitlines()
             if not ln.startswith("#")]
    assert lines == [["AB", "host1"], ["__", "host4095"]]
    bad = imcluster_cli("haproxy-config", "--bind", "127.0.0.1:1", "--map",
                        str(tmp_path / "m2.map"), "1=a:1", "1=b:2", check=False)
    assert bad.returncode == 2 and "same id" in bad.stderr
    cert_only = tmp_path / "cert-only.pem"
    cert_only.write_text("-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n")
    bad = imcluster_cli("haproxy-config", "--bind", "127.0.0.1:1", "--map",
                        str(tmp_path / "m3.map"), "--cert", str(cert_only), "1=a:1", check=False)
    assert bad.returncode == 2 and "no private key" in bad.stderr and bad.stdout == ""


def test_600_clients_each_served_by_the_host_its_sid_names_and_no_cookie(fleet):
    """300 polling-only and 300 default (polling, then WebSocket) official clients,
    all connected at once through HAProxy: none fails, every answer comes from a
    worker of the host the Engine.IO sid names (the namespace sid names the same
    host), sessions land on every host, and no response sets a cookie."""
    pids = fleet.pids()
    seen_hosts = set()
    for transport in ("polling", "default"):
        r = node_script(JS / "hosts.mjs", fleet.haproxy.url, timeout=300, clients=300,
                        transport=transport, wave=25, timeout_ms=60000)
        assert r["errors"] == [], r["errors"][:5]
        assert len(r["results"]) == 300
        for c in r["results"]:
            host = host_of(c["eio"])
            assert host in (1, 2, 3) and host_of(c["nsp"]) == host, c
            assert pids[c["before"]] == host and pids[c["after"]] == host, c
            assert c["cookies"] == [], c
            seen_hosts.add(host)
        if transport == "default":
            assert {c["transport"] for c in r["results"]} == {"websocket"}
    assert seen_hosts == {1, 2, 3}
    # The WebSocket upgrade's own response, read raw: no Set-Cookie there either.
    with Conn(fleet.haproxy.port) as c:
        status, headers, body = c.request("GET", EIO)
        assert status == 200 and "set-cookie" not in headers
        sid = json.loads(body[1:])["sid"]
        c.send((f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\n"
                "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101") and b"set-cookie" not in head.lower(), head


def test_one_keepalive_connection_through_haproxy_carries_sessions_of_every_host(fleet):
    """A browser keeps one connection to the front for all its tabs: requests of
    sessions on hosts 1, 2 and 3, interleaved on it, each reach their own host."""
    sessions: dict[int, str] = {}
    for _ in range(30):
        with Conn(fleet.haproxy.port) as c:
            status, _, body = c.request("GET", EIO)
            sid = json.loads(body[1:])["sid"]
            assert c.request("POST", poll_target(sid), b"40")[2] == b"ok"
            assert c.request("GET", poll_target(sid))[2].startswith(b"40")
        sessions.setdefault(host_of(sid), sid)
        if len(sessions) == 3:
            break
    assert sorted(sessions) == [1, 2, 3]
    pids = fleet.pids()
    with Conn(fleet.haproxy.port) as c:
        for n in range(1, 13):
            host = n % 3 + 1
            post, get = whoami_requests(sessions[host], n)
            c.send(post)
            assert c.read_response()[::2] == (200, b"ok")
            c.send(get)
            status, _, body = c.read_response()
            assert status == 200, body
            assert pids[parse_ack(body, n)] == host, f"request {n} left host {host}"


def test_a_room_with_members_on_one_two_and_three_hosts_hears_each_message_once(fleet):
    """Broadcasts between hosts go through Redis (today's manager): each member of
    a room gets each message exactly once, wherever the members are."""
    by_host: dict[int, list] = {1: [], 2: [], 3: []}
    clients = []
    heard: dict[int, list] = {}
    lock = threading.Condition()
    try:
        for _ in range(60):
            if all(len(v) >= 3 for v in by_host.values()):
                break
            sio = socketio.Client()
            k = len(clients)
            heard[k] = []

            def on_said(m, k=k):
                with lock:
                    heard[k].append(m["text"])
                    lock.notify_all()

            sio.on("said", on_said)
            sio.connect(fleet.haproxy.url, transports=["websocket"], wait_timeout=10)
            clients.append(sio)
            by_host[host_of(sio.eio.sid)].append(k)
        assert all(len(v) >= 3 for v in by_host.values()), {h: len(v) for h, v in
                                                            by_host.items()}
        rooms = {"one": [by_host[1][0], by_host[1][1]],
                 "two": [by_host[1][2], by_host[2][0], by_host[2][1]],
                 "three": [by_host[3][0], by_host[2][2], by_host[3][1], by_host[1][0]]}
        for room, members in rooms.items():
            for k in members:
                assert clients[k].call("join", {"room": room}, timeout=10) is True
        for room, members in rooms.items():
            sender = clients[members[-1]]
            for text in (f"{room}-1", f"{room}-2", f"{room}-fence"):
                sender.emit("say", {"room": room, "text": text, "ts": 0})

        def fenced():
            return all(f"{room}-fence" in heard[k] for room, ms in rooms.items() for k in ms)

        with lock:
            assert lock.wait_for(fenced, 20), heard
        for k in range(len(clients)):
            want = sorted(f"{room}-{n}" for room, ms in rooms.items() if k in ms
                          for n in ("1", "2", "fence"))
            assert sorted(heard[k]) == want, (k, heard[k])
    finally:
        for sio in clients:
            sio.disconnect()


def test_readiness_drain_keeps_sessions_and_stops_new_ones(fleet):
    """Each master answers HAProxy's check on its own port: 200, then 404 once
    drained; HAProxy then sends that host no new session while the requests of
    its sessions still reach it; undrained, it takes new sessions again."""
    h1 = fleet.hosts[1]
    ip, port = fleet.address(1).split(":")
    with Conn(int(port), host=ip) as c:
        status, _, body = c.request("GET", READY_PATH)
    assert status == 200 and body.startswith(b"ready: 2 of 2"), body
    # Clients may not reach the check through the front.
    with Conn(fleet.haproxy.port) as c:
        assert c.request("GET", READY_PATH)[0] == 404
    old = None
    for _ in range(30):
        sid = handshake_and_connect(fleet.haproxy.port)
        if host_of(sid) == 1:
            old = sid
            break
    assert old is not None
    out = imcluster_cli("drain", "--control", h1.control)
    assert "404" in out.stdout
    with Conn(int(port), host=ip) as c:
        status, _, body = c.request("GET", READY_PATH)
    assert status == 404 and body.startswith(b"drained"), body
    assert h1.status()["master"]["drained"] is True
    fleet.haproxy.wait_states({"host1": DRAINED, "host2": UP, "host3": UP})
    new_hosts = {host_of(handshake_and_connect(fleet.haproxy.port)) for _ in range(12)}
    assert new_hosts == {2, 3}
    assert whoami_via(fleet.haproxy.port, old, 7) in {w["pid"] for w in
                                                     h1.status()["workers"]}
    imcluster_cli("undrain", "--control", h1.control)
    fleet.haproxy.wait_states({"host1": UP})
    assert 1 in {host_of(handshake_and_connect(fleet.haproxy.port)) for _ in range(12)}


def test_a_host_killed_its_clients_are_back_on_the_others_within_10s(fleet):
    """kill -9 of one host (master and workers): its clients reconnect to the same
    address and land on live hosts within 10 s; nobody else is disconnected."""
    clients = []
    try:
        for _ in range(40):
            sio = socketio.Client(reconnection_delay=0.5, reconnection_delay_max=1)
            sio.lost = 0
            sio.on("disconnect", lambda *a, s=sio: setattr(s, "lost", s.lost + 1))
            sio.connect(fleet.haproxy.url, transports=["polling", "websocket"],
                        wait_timeout=10)
            clients.append(sio)
            hosts = [host_of(c.eio.sid) for c in clients]
            if all(hosts.count(h) >= 3 for h in (1, 2, 3)):
                break
        victims = [c for c in clients if host_of(c.eio.sid) == 2]
        others = [c for c in clients if host_of(c.eio.sid) != 2]
        assert len(victims) >= 3 and len(others) >= 6
        dead = fleet.hosts[2]
        pids = [w["pid"] for w in dead.status()["workers"]] + [dead.pid]
        for pid in pids:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        killed_at = time.monotonic()

        def back():
            return all(c.connected and c.eio.sid and host_of(c.eio.sid) in (1, 3)
                       for c in victims)

        wait_for(back, 10, 0.1, what="the dead host's clients on live hosts")
        assert time.monotonic() - killed_at <= 10
        for c in victims:
            assert c.call("echo", "back", timeout=10) == "back"
        assert [c.lost for c in others] == [0] * len(others)
        assert all(c.connected and host_of(c.eio.sid) in (1, 3) for c in others)
    finally:
        for sio in clients:
            sio.disconnect()
        dead.proc.wait(5)


def test_a_host_added_and_removed_at_run_time_without_a_reload(fleet):
    """`imcluster haproxy-host add` puts a fourth host in service through the
    runtime API (same HAProxy process); `remove` takes it out: its sessions'
    requests then get 400 from another host, and new sessions avoid it."""
    h4 = fleet.start_host(4)
    h4.wait_ready()
    hp = fleet.haproxy
    paths = ("--map", hp.map, "--socket", hp.socket)
    imcluster_cli("haproxy-host", "add", f"4={fleet.address(4)}", *paths)
    hp.wait_states({"host4": UP})
    assert "AE host4" in Path(hp.map).read_text()
    sid = None
    for _ in range(40):
        s = handshake_and_connect(hp.port)
        if host_of(s) == 4:
            sid = s
            break
    assert sid is not None, "no new session reached the added host"
    h4_pids = {w["pid"] for w in h4.status()["workers"]}
    assert whoami_via(hp.port, sid, 3) in h4_pids
    imcluster_cli("haproxy-host", "remove", "4", *paths)
    assert "host4" not in hp.server_states()
    assert "AE" not in Path(hp.map).read_text()
    with Conn(hp.port) as c:
        status, _, body = c.request("GET", poll_target(sid))
    assert status == 400 and b"Invalid session" in body, body
    assert {host_of(handshake_and_connect(hp.port)) for _ in range(9)} <= {1, 2, 3}
    assert hp.proc.poll() is None  # the same HAProxy process throughout: no reload


def handshake_and_connect(port: int) -> str:
    with Conn(port) as c:
        status, _, body = c.request("GET", EIO)
        assert status == 200, body
        sid = json.loads(body[1:])["sid"]
        assert c.request("POST", poll_target(sid), b"40")[2] == b"ok"
        assert c.request("GET", poll_target(sid))[2].startswith(b"40")
    return sid


def whoami_via(port: int, sid: str, n: int) -> int:
    post, get = whoami_requests(sid, n)
    with Conn(port) as c:
        c.send(post)
        assert c.read_response()[::2] == (200, b"ok")
        c.send(get)
        status, _, body = c.read_response()
        assert status == 200, body
        return parse_ack(body, n)


def test_haproxy_instances_side_by_side_share_no_state(fleet, tmp_path):
    """Two HAProxy instances with the same generated config stand side by side
    (behind DNS or an L4 balancer): a polling session made through one carries
    on through the other, each request reaching the host its sid names, and it
    outlives the death of the instance it started on (kill -9): the front keeps
    no per-session state, so any number of instances can share the hosts."""
    d = tmp_path / "second"
    d.mkdir()
    second = HAProxy(d, {i: fleet.address(i) for i in fleet.hosts})
    first = fleet.haproxy
    try:
        second.wait_states({f"host{i}": UP for i in fleet.hosts})
        pids = fleet.pids()
        sessions: dict[int, str] = {}
        for n in range(60):
            sid = handshake_and_connect((first, second)[n % 2].port)
            sessions.setdefault(host_of(sid), sid)
            if len(sessions) == 3:
                break
        assert sorted(sessions) == [1, 2, 3]
        n = 0
        for host, sid in sessions.items():
            for front in (first, second, first, second):
                n += 1
                assert pids[whoami_via(front.port, sid, n)] == host, (front.port, sid)
        first.proc.kill()
        first.proc.wait(10)
        for host, sid in sessions.items():
            n += 1
            assert pids[whoami_via(second.port, sid, n)] == host, sid
    finally:
        second.stop()


# --- TLS ends at HAProxy -------------------------------------------------------------

def self_signed(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with the openssl command: (the
    certificate alone, for clients to trust; certificate and key in one PEM, for
    HAProxy's `ssl crt`)."""
    key, cert, both = d / "key.pem", d / "cert.pem", d / "site.pem"
    out = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    both.write_text(cert.read_text() + key.read_text())
    return cert, both


@pytest.fixture
def tls_fleet(cluster_factory, redis_server, tmp_path):
    """Hosts 1 and 2 (the chat demo, two workers each, on 127.0.0.2 and .3, Redis
    between them) behind HAProxy with `--cert`: clients speak https:// and wss://
    to HAProxy, HAProxy plain HTTP to the hosts."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, pem = self_signed(tmp_path)
    hosts = {}
    for i in (1, 2):
        ip = f"127.0.0.{i + 1}"
        hosts[i] = cluster_factory(app=None, workers=2, host_id=i, redis=redis_server,
                                   bind=f"{ip}:{free_port(ip)}")
    for c in hosts.values():
        c.wait_ready()
    hp = HAProxy(tmp_path, {i: c.url.removeprefix("http://") for i, c in hosts.items()},
                 extra=("--cert", str(pem)))
    try:
        hp.wait_states({"host1": UP, "host2": UP})
        yield hp, hosts, cert
    finally:
        hp.stop()


def test_js_clients_over_https_and_wss_reach_the_host_their_sid_names(tls_fleet):
    """The official JS client, trusting the test's self-signed certificate (TLS
    verification on), over https:// long-polling and over polling upgraded to
    wss://: every handshake succeeds, the default transport ends on WebSocket,
    and every answer comes from the host the sid names; both hosts serve. A room
    with members on both hosts hears one message through Redis. Without the
    certificate trusted, or over plain http://, nobody connects: it is TLS."""
    hp, hosts, cert = tls_fleet
    pids = {w["pid"]: i for i, c in hosts.items() for w in c.status()["workers"]}
    seen = set()
    for transport in ("polling", "default"):
        r = node_script(JS / "hosts.mjs", hp.url, timeout=120, clients=40,
                        transport=transport, wave=10, ca_file=str(cert))
        assert r["errors"] == [], r["errors"][:5]
        assert len(r["results"]) == 40
        for c in r["results"]:
            host = host_of(c["eio"])
            assert c["secure"] is True and host_of(c["nsp"]) == host, c
            assert pids[c["before"]] == host and pids[c["after"]] == host, c
            seen.add(host)
        want = "websocket" if transport == "default" else "polling"
        assert {c["transport"] for c in r["results"]} == {want}
    assert seen == {1, 2}
    room = node_clients(hp.url, clients=20, transport="default", wave=10,
                        room="tls", ca_file=str(cert))
    assert room["errors"] == [] and room["connected"] == 20, room
    assert {pids[int(p)] for p in room["pids"]} == {1, 2}, room["pids"]
    assert room["transports"] == {"websocket": 20}
    assert room["received"] == 20 and room["duplicates"] == 0, room
    untrusted = node_script(JS / "hosts.mjs", hp.url, clients=2, transport="default",
                            timeout_ms=5000)
    assert untrusted["results"] == [] and len(untrusted["errors"]) == 2, untrusted
    plain = node_script(JS / "hosts.mjs", hp.url.replace("https:", "http:"), clients=2,
                        transport="default", timeout_ms=5000)
    assert plain["results"] == [] and len(plain["errors"]) == 2, plain


def test_browser_chats_over_https_and_wss_across_hosts(tls_fleet, browser):
    """Headless Chromium loads the chat demo through HAProxy over https:// (the
    self-signed certificate accepted for this context only) and chats on wss://
    with tabs on both hosts. A browser sends its Origin (https://…) and the
    hosts are reached over plain HTTP: they accept it only because HAProxy tells
    them the client's scheme (X-Forwarded-Proto)."""
    hp, hosts, _ = tls_fleet
    pids = {w["pid"]: i for i, c in hosts.items() for w in c.status()["workers"]}
    ctx = browser.new_context(ignore_https_errors=True)
    ctx.set_default_timeout(15_000)
    try:
        pages = []
        state = "() => window.chat && [window.chat.status, window.chat.transport, window.chat.pid]"

        def connected(page):
            s = page.evaluate(state)
            return s if s and s[0] == "connected" and s[1] == "websocket" else None

        for n in range(8):
            page = ctx.new_page()
            page.goto(f"{hp.url}/?room=tls&name=user{n}")
            pages.append(page)
            wait_for(lambda p=page: connected(p), 20, what=f"tab {n} connected on websocket")
            if {pids[connected(p)[2]] for p in pages} == {1, 2} and len(pages) >= 2:
                break
        assert {pids[connected(p)[2]] for p in pages} == {1, 2}
        assert pages[0].evaluate("location.protocol") == "https:"
        ack = pages[0].evaluate("(t) => window.chat.send(t)", "over wss")
        assert ack is True
        for page in pages:
            wait_for(lambda p=page: "over wss" in p.evaluate(
                "() => window.chat.messages.map((m) => m.text)"), 15,
                what="every tab to show the message")
    finally:
        ctx.close()


# --- 7x24 updates under load -----------------------------------------------------------

class Churn:
    """tests/js/churn.mjs running: official clients connecting one after another in
    a few loops, each joining a room, saying a message and hearing it back, then
    closing; `latest` is its last progress line (running totals)."""

    def __init__(self, url: str, **opts):
        self.proc = subprocess.Popen(["node", str(JS / "churn.mjs"),
                                      json.dumps({"url": url, **opts})],
                                     cwd=JS, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.latest: dict = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.latest = json.loads(line)

    def wait(self, pred, timeout: float, what: str) -> dict:
        def reached():
            if self.proc.poll() is not None and not self.reader.is_alive():
                raise AssertionError(f"churn.mjs ended early: {self.latest}")
            return self.latest if self.latest and pred(self.latest) else None
        return wait_for(reached, timeout, 0.1, what=what)

    def more_chats(self, n: int, timeout: float = 60) -> dict:
        start = self.latest.get("chats", 0)
        return self.wait(lambda t: t["chats"] >= start + n, timeout, f"{n} more chats")

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(10)
        return self.latest


def test_a_host_drained_reloaded_and_brought_back_under_chat_load_fails_no_handshake(fleet):
    """Issue 15's 7x24 update, under load: clients keep making new sessions through
    HAProxy and chatting in one room (members on every host, Redis between them)
    while host 1 is drained (`imcluster drain`: its check answers 404), reloaded
    with new worker processes (`imcluster reload`) and undrained. Not one
    handshake fails, every chat message comes back, nobody is cut off, messages
    keep crossing hosts in every phase; while drained host 1 gets no new session,
    and once undrained it gets them again."""
    h1 = fleet.hosts[1]
    p1 = host_prefix(1)
    churn = Churn(fleet.haproxy.url, concurrency=6, max_connections=5000, timeout_ms=15000)
    try:
        churn.wait(lambda t: t["chats"] >= 40 and len(t["by_host"]) == 3, 90,
                   "chats with sessions on all three hosts")
        crossed = churn.latest["cross_host"]
        imcluster_cli("drain", "--control", h1.control)
        fleet.haproxy.wait_states({"host1": DRAINED, "host2": UP, "host3": UP})
        # Sessions begun before HAProxy saw the drain end on their own (they are
        # short); from then on host 1 gets none.
        churn.wait(lambda t: t["live"].get(p1, 0) == 0, 60, "host 1's sessions over")
        churn.more_chats(12)
        on_h1 = churn.latest["by_host"].get(p1, 0)
        old_pids = {w["pid"] for w in h1.status()["workers"]}
        out = imcluster_cli("reload", "--control", h1.control)
        new_pids = {w["pid"] for w in h1.wait_ready()}
        assert not new_pids & old_pids, (out.stdout, old_pids, new_pids)
        during = churn.more_chats(30)
        assert during["by_host"].get(p1, 0) == on_h1, "a new session reached drained host 1"
        assert during["cross_host"] > crossed
        imcluster_cli("undrain", "--control", h1.control)
        fleet.haproxy.wait_states({"host1": UP})
        churn.wait(lambda t: t["by_host"].get(p1, 0) > on_h1, 60,
                   "new sessions on host 1 again")
        churn.more_chats(30)
    finally:
        final = churn.stop()
    assert final.get("done") is True, final
    assert final["failed_handshakes"] == 0, final["errors"]
    assert final["failed_chats"] == 0 and final["cut"] == 0, final["errors"]
    assert final["chats"] >= 150 and final["handshakes"] == final["chats"], final
    assert final["cross_host"] > during["cross_host"]
