"""Apps as people write them: Flask-SocketIO, a Flask app factory, a ProxyFix-wrapped
app, Django with python-socketio, served by name as a user would give it.

Real clusters of 3 workers, through the relay and Redis, driven by python-socketio
clients on polling, WebSocket and the default (polling then upgrade). The apps are
in tests/apps; Flask, Flask-SocketIO and Django are test dependencies only.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import requests
from conftest import ROOT, wait_for
from pyclients import Client

from imcluster.workers import app as appmod

APPS = ROOT / "tests" / "apps"
TRANSPORTS = ("polling", "websocket", "default")


# ---- the walker, in process ------------------------------------------------------

@pytest.fixture
def apps_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(APPS))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] in (
            "flask_sio_app", "flask_factory", "proxyfix_app", "threading_app",
            "django_project", "flask_wsgiapp")]:
        del sys.modules[name]


@pytest.mark.parametrize("attr, expected", [
    ("app", (["app"], None, {})),
    ("socketio.server", (["socketio", "server"], None, {})),
    ("create_app()", (["create_app"], (), {})),
    ("factories.make('x', 2, debug=True, opts={'a': [1]})",
     (["factories", "make"], ("x", 2), {"debug": True, "opts": {"a": [1]}})),
])
def test_attr_names_and_factory_calls_parse(attr, expected):
    assert appmod.parse_attr(attr) == expected


@pytest.mark.parametrize("attr", [
    "create_app(__import__('os').system('true'))",  # arguments are never evaluated as code
    "create_app(x)", "create_app(**opts)", "app[0]", "1 + 2", "app(", "",
])
def test_anything_but_names_and_literal_calls_is_refused(attr):
    with pytest.raises(appmod.AppError):
        appmod.parse_attr(attr)


@pytest.mark.parametrize("spec, served", [
    ("flask_sio_app:app", "Flask"),
    ("flask_sio_app:socketio", "Flask"),          # the SocketIO object: its Flask app
    ("flask_sio_app:socketio.server", "Flask"),   # Flask-SocketIO's server: its Flask app
    ("flask_factory:create_app('hi', debug=True)", "Flask"),
    ("proxyfix_app:app", "Flask"),
    ("flask_wsgiapp:app", "Flask"),               # socketio.WSGIApp in its wsgi_app chain
    ("django_project.wsgi:application", "WSGIApp"),
    # MODULE alone, as gunicorn and Flask's CLI take it: app, then application, then
    # the one server at module level, then a create_app()/make_app() factory
    ("flask_sio_app", "Flask"),
    ("django_project.wsgi", "WSGIApp"),
    ("flask_factory", "Flask"),
    # a file path, as Flask's --app takes it (a file in a package is imported in it)
    ("flask_sio_app.py", "Flask"),
    ("./flask_sio_app.py:socketio", "Flask"),
    ("django_project/wsgi.py", "WSGIApp"),
])
def test_walker_finds_the_server_and_serves_the_outermost_callable(apps_on_path, spec, served):
    app = appmod.load(spec, str(APPS))
    assert type(app.wsgi).__name__ == served
    assert app.sio is not None and app.eio is app.sio.eio


@pytest.mark.parametrize("spec, says", [
    ("flask_factory:socketio", "flask_factory:socketio is a flask_socketio.SocketIO that no "
     "init_app(app) has attached to a Flask app yet (if the app is made by its factory, "
     "name it: 'flask_factory:create_app()')"),
    ("flask_factory:app", "module 'flask_factory' has no attribute 'app' (if the app is "
     "made by its factory, name it: 'flask_factory:create_app()')"),
    ("nope.py", "no Python file"),
    ("contract", "module 'contract' has none of 'app', 'application' (gunicorn's default)"),
])
def test_a_name_that_cannot_be_served_says_what_to_name(apps_on_path, spec, says):
    with pytest.raises(appmod.AppError) as e:
        appmod.load(spec, str(APPS))
    assert says in str(e.value)


def test_a_file_path_is_imported_from_its_directory_as_part_of_its_package():
    assert appmod._module_of_path("django_project/wsgi.py", str(APPS), "") == (
        "django_project.wsgi", str(APPS))
    assert appmod._module_of_path("./flask_sio_app.py", str(APPS), "") == (
        "flask_sio_app", str(APPS))
    assert appmod._module_of_path(str(APPS / "flask_sio_app.py"), "/", "") == (
        "flask_sio_app", str(APPS))
    assert appmod._module_of_path("flask_sio_app", "/x", "") == ("flask_sio_app", "/x")


def test_walker_is_cycle_safe_and_bounded():
    import socketio

    class Middleware:
        def __init__(self, app):
            self.app = app

        def __call__(self, environ, start_response):
            return self.app(environ, start_response)

    sio = socketio.Server(async_mode="eventlet")
    loop = Middleware(None)
    loop.app = loop  # a chain that points back at itself
    outer = Middleware(Middleware(loop))
    with pytest.raises(appmod.AppError, match="no socketio.Server"):
        appmod.find(outer, "m:outer")
    chain = socketio.WSGIApp(sio)
    for _ in range(appmod.MAX_DEPTH - 1):
        chain = Middleware(chain)
    assert appmod.find(chain, "m:chain").wsgi is chain  # deep, still found, outermost served
    with pytest.raises(appmod.AppError, match="no socketio.Server"):
        appmod.find(Middleware(Middleware(chain)), "m:deeper")  # past MAX_DEPTH


# ---- real clusters ---------------------------------------------------------------

def _converse(url: str, room: str = "members", per_transport: int = 3,
              headers: dict | None = None) -> dict:
    """Members of `room` on every transport plus outsiders in another room; one `say`.

    Returns how many members heard it (and how many twice), whether any
    outsider heard it, and which worker pids served the clients.
    """
    members: list[Client] = []
    outsiders: list[Client] = []
    try:
        for transport in TRANSPORTS:
            for _ in range(per_transport):
                c = Client(url, transport)
                members.append(c)
                assert c.join(room) is True
            o = Client(url, transport)
            outsiders.append(o)
            assert o.join(room + "-not") is True
        pids = {c.whoami() for c in members + outsiders}
        text = f"hello-{time.monotonic()}"
        members[0].sio.emit("say", {"room": room, "text": text, "ts": time.time()})
        heard = lambda c: sum(m.get("text") == text for m in c.said)  # noqa: E731
        wait_for(lambda: all(heard(c) for c in members), 15, what="every member heard it")
        # Whatever else was coming has had time to arrive: a later probe message
        # from the same sender reaches everyone after the first (message order).
        probe = text + "-after"
        members[0].sio.emit("say", {"room": room, "text": probe, "ts": time.time()})
        wait_for(lambda: all(any(m.get("text") == probe for m in c.said) for c in members),
                 15, what="the probe")
        return {"members": len(members), "heard": sum(heard(c) == 1 for c in members),
                "twice": sum(heard(c) > 1 for c in members),
                "outsiders_heard": sum(heard(o) for o in outsiders), "pids": pids}
    finally:
        for c in members + outsiders:
            c.close()


# Each style once; the backends alternate so both are covered without running
# every style twice (the relay and Redis paths are the same for every app).
STYLES = [
    pytest.param("flask_sio_app:app", None, "chat served by pid", id="flask-socketio-app"),
    pytest.param("flask_sio_app:socketio", "redis", "chat served by pid",
                 id="flask-socketio-object-redis"),
    pytest.param("flask_factory:create_app('hi', debug=True)", "redis", "hi from pid",
                 id="flask-factory-redis"),
    pytest.param("proxyfix_app:app", None, "behind a proxy", id="proxyfix"),
    pytest.param("flask_wsgiapp:app", None, "flask and python-socketio", id="flask-wsgiapp"),
    pytest.param("django_project.wsgi:application", "redis", "django page",
                 id="django-redis"),
]


@pytest.mark.parametrize("spec, backend, page", STYLES)
def test_each_style_serves_its_page_and_rooms_across_workers(cluster_factory, request,
                                                             spec, backend, page):
    redis = request.getfixturevalue("redis_server") if backend else None
    c = cluster_factory(app=spec, workers=3, redis=redis, cwd=APPS)
    ready = c.wait_ready()
    r = requests.get(c.url + "/", timeout=10)
    assert r.status_code == 200 and page in r.text, r.text[:200]
    got = _converse(c.url)
    assert got["pids"] == {w["pid"] for w in ready}, got  # clients on all 3 workers
    assert got["heard"] == got["members"] and got["twice"] == 0, got
    assert got["outsiders_heard"] == 0, got
    assert "Traceback" not in c.log(), c.log()


def test_requests_enter_through_the_outermost_middleware(cluster_factory, relay_or_redis):
    """ProxyFix wraps Flask-SocketIO's middleware: every Socket.IO request goes
    through both, so handlers see the forwarded address and Flask's app."""
    c = cluster_factory(app="proxyfix_app:app", workers=3, redis=relay_or_redis, cwd=APPS)
    c.wait_ready()
    clients = []
    try:
        for i, transport in enumerate(TRANSPORTS):
            cl = Client(c.url, transport, headers={"X-Forwarded-For": f"203.0.113.{i}"})
            clients.append(cl)
            assert cl.call("whereami") == {"remote_addr": f"203.0.113.{i}", "flask_app": True}
    finally:
        for cl in clients:
            cl.close()


@pytest.mark.parametrize("spec, says", [
    ("threading_app:app", "uses async_mode='threading'; imcluster workers run eventlet"),
    ("flask_sio_app:index", "is a function with no socketio.Server in it"),
    ("flask_factory:create_app", "(if it is a factory, call it: 'flask_factory:create_app()')"),
    ("django_project.wsgi:django_app", "is a django.WSGIHandler with no socketio.Server"),
])
def test_an_app_that_cannot_be_served_stops_the_master_with_one_line(cluster_factory, spec,
                                                                     says):
    c = cluster_factory(app=spec, workers=1, cwd=APPS)
    assert c.proc.wait(30) == 3, c.log()
    log = c.log()
    assert says in log, log
    assert "Traceback" not in log, log


# ---- once per cluster: IMCLUSTER_SLOT and IMCLUSTER_WORKER_ID ------------------------

def _worker_env(pid: int) -> dict:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv]
    return {k.decode(): v.decode() for k, v in pairs if k.startswith(b"IMCLUSTER_")}


def test_every_worker_knows_its_slot_and_id_and_a_replacement_keeps_the_slot(cluster_factory):
    c = cluster_factory(app="ticker_app:app", workers=3, cwd=APPS)
    ready = c.wait_ready()
    envs = {w["slot"]: _worker_env(w["pid"]) for w in ready}
    assert {s: e["IMCLUSTER_SLOT"] for s, e in envs.items()} == {0: "0", 1: "1", 2: "2"}
    ids = {e["IMCLUSTER_WORKER_ID"] for e in envs.values()}
    assert len(ids) == 3 and all(i.isdigit() for i in ids), envs
    # A client asks its worker: the app reads the same values.
    cl = Client(c.url, "websocket")
    try:
        here = cl.call("where")
    finally:
        cl.close()
    slot = next(w["slot"] for w in ready if w["pid"] == here["pid"])
    assert here["slot"] == str(slot) and here["worker_id"] == envs[slot]["IMCLUSTER_WORKER_ID"]
    # Slot 1's worker dies: its replacement has slot 1 and a new worker id.
    old = next(w for w in ready if w["slot"] == 1)
    os.kill(old["pid"], signal.SIGKILL)
    new = wait_for(lambda: next((w for w in c.ready_workers()
                                 if w["slot"] == 1 and w["pid"] != old["pid"]), None),
                   30, what="slot 1 replaced")
    env = _worker_env(new["pid"])
    assert env["IMCLUSTER_SLOT"] == "1", env
    assert env["IMCLUSTER_WORKER_ID"] not in ids, env


def test_a_task_started_in_slot_0_only_ticks_once_for_every_client(cluster_factory,
                                                                  relay_or_redis):
    c = cluster_factory(app="ticker_app:app", workers=3, redis=relay_or_redis, cwd=APPS)
    ready = c.wait_ready()
    clients: list[Client] = []
    try:
        for transport in TRANSPORTS:
            for _ in range(2):
                cl = Client(c.url, transport)
                cl.ticks = []
                cl.sio.on("tick", cl.ticks.append)
                clients.append(cl)
        assert {cl.whoami() for cl in clients} == {w["pid"] for w in ready}
        # Count from a tick every client heard, so a slow connect is no gap.
        wait_for(lambda: all(len(cl.ticks) >= 3 for cl in clients), 20, what="ticks")
        start = max(cl.ticks[0]["n"] for cl in clients)
        wait_for(lambda: all(cl.ticks[-1]["n"] >= start + 5 for cl in clients), 20,
                 what="5 more ticks")
        tickers = {t["pid"] for cl in clients for t in cl.ticks}
        slot0 = next(w["pid"] for w in ready if w["slot"] == 0)
        assert tickers == {slot0}
        for cl in clients:
            ns = [t["n"] for t in cl.ticks if start <= t["n"] <= start + 5]
            assert ns == list(range(start, start + 6)), (cl.sio.transport(), ns)
    finally:
        for cl in clients:
            cl.close()


# ---- logging -----------------------------------------------------------------------

def test_a_handler_that_raises_is_logged_with_the_worker_prefix(cluster_factory):
    c = cluster_factory(app="logger_app:app", workers=1, cwd=APPS)
    c.wait_ready()
    token = f"tok{time.monotonic_ns()}"
    for transport in ("websocket", "polling"):
        cl = Client(c.url, transport)
        try:
            cl.sio.emit("boom", f"{token}-{transport}")
            assert cl.call("echo", 1) == 1  # the session carries on
        finally:
            cl.close()
        line = wait_for(lambda t=transport: [ln for ln in c.log().splitlines()
                                             if f"kaboom {token}-{t}" in ln], 10)[0]
        assert "[worker 0 pid" in line and " ERROR an event handler raised ValueError" in line
    assert c.log().count("Traceback (most recent call last)") == 2


def test_logger_true_prints_each_line_once_with_the_worker_prefix(cluster_factory):
    c = cluster_factory(app="logger_app:app", workers=3, cwd=APPS)
    c.wait_ready()
    token = f"tok{time.monotonic_ns()}"
    cl = Client(c.url, "websocket")
    try:
        assert cl.call("echo", token) == token
    finally:
        cl.close()
    lines = lambda: [ln for ln in c.log().splitlines() if token in ln]  # noqa: E731
    # engineio's logger: the event received, and the ack sent.
    wait_for(lambda: len(lines()) >= 2, 10, what="engineio's log lines")
    got = lines()
    assert len(got) == 2, got
    assert all("[worker " in ln for ln in got), got
    # socketio's logger: the event, once (no token in it: one client, one call).
    said = [ln for ln in c.log().splitlines() if 'received event "echo"' in ln]
    assert len(said) == 1 and "[worker " in said[0], said
    # What the servers log as the app imports, once per worker, prefixed too.
    built = [ln for ln in c.log().splitlines() if "Server initialized for eventlet" in ln]
    assert len(built) == 3 and all("[worker " in ln for ln in built), built


# ---- sio.instrument(): the Admin UI's server side ----------------------------------

ADMIN_AUTH = {"username": "admin", "password": "test only"}


class Admin:
    """What the Admin UI does on the wire: connect to /admin with auth and listen."""

    def __init__(self, url: str, auth: dict):
        import socketio

        self.heard: list[tuple[str, tuple]] = []
        self.sio = socketio.Client(reconnection=False, request_timeout=10)
        for ev in ("config", "all_sockets", "server_stats", "socket_connected",
                   "room_joined", "socket_disconnected"):
            self.sio.on(ev, lambda *a, ev=ev: self.heard.append((ev, a)), namespace="/admin")
        self.sio.connect(url, namespaces=["/admin"], transports=["websocket"], auth=auth,
                         wait_timeout=10)

    def of(self, kind: str) -> list[tuple]:
        return [a for k, a in self.heard if k == kind]


def test_an_instrumented_app_serves_and_reports_every_worker(cluster_factory, relay_or_redis):
    import socketio

    c = cluster_factory(app="instrumented_app:sio", workers=3, redis=relay_or_redis, cwd=APPS)
    ready = c.wait_ready()
    pids = {w["pid"] for w in ready}
    with pytest.raises(socketio.exceptions.ConnectionError):
        Admin(c.url, {"username": "admin", "password": "wrong"})
    admin = Admin(c.url, ADMIN_AUTH)
    clients: list[Client] = []
    try:
        for transport in TRANSPORTS:
            for _ in range(2):
                cl = Client(c.url, transport)
                clients.append(cl)
                assert cl.join("watched") is True
        assert {cl.whoami() for cl in clients} == pids  # on every worker
        # Each worker reports as its own server: its pid and a server id of its own.
        stats = lambda: {(s[0]["pid"], s[0]["serverId"])  # noqa: E731
                         for s in admin.of("server_stats")}
        wait_for(lambda: {p for p, _ in stats()} == pids, 15, what="stats of every worker")
        assert len({sid for _, sid in stats()}) == 3, stats()
        # The admin hears every worker's connections and room joins.
        sids = {cl.sio.get_sid("/") for cl in clients}
        wait_for(lambda: sids <= {a[0]["id"] for a in admin.of("socket_connected")}, 15,
                 what="socket_connected for every client")
        wait_for(lambda: sids <= {a[2] for a in admin.of("room_joined") if a[1] == "watched"},
                 15, what="room_joined for every client")
        assert ("config" in {k for k, _ in admin.heard})
    finally:
        for cl in clients:
            cl.close()
        admin.sio.disconnect()
    log = c.log()
    assert "Traceback" not in log and "_timestamps" not in log, log


def test_an_app_with_its_own_manager_is_told_its_broadcasts_bypass_the_cluster(
        cluster_factory, redis_server, tmp_path):
    (tmp_path / "own_mq.py").write_text(
        "import os\nimport socketio\n"
        "sio = socketio.Server(client_manager=socketio.RedisManager(os.environ['MQ'], "
        "channel='mq-app'))\n"
        "@sio.event\ndef echo(sid, data):\n    return data\n")
    c = cluster_factory(app="own_mq:sio", workers=1, cwd=tmp_path, env={"MQ": redis_server})
    c.wait_ready()
    cl = Client(c.url, "websocket")
    try:
        assert cl.call("echo", 5) == 5
    finally:
        cl.close()
    assert ("the app sets its own client_manager (RedisManager): its broadcasts go through "
            "it, not through the master relay") in c.log(), c.log()
