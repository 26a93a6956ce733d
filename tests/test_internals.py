"""Every reach into eventlet, python-engineio and python-socketio internals, checked
against the installed libraries (workers/internals.py lists them).

One test per entry: the target exists, its signature has the parameters we
pass or receive, the attributes we read exist on a freshly made object, the
attributes we add are free, and the upstream source still holds the lines we
copy or depend on. A failure is one line naming the library, its version, the
reach and our file that uses it. Beside them: every library method our
classes override has an entry, every entry's file points at it, and
setup.cfg's upper bounds follow internals.CHECKED_WITH. Runs on the newest
releases (scripts/test) and on the lowest setup.cfg admits (scripts/test-min).
"""

from __future__ import annotations

import configparser
import importlib
import inspect
import re
from importlib import metadata

import engineio
import engineio.socket
import eventlet.greenio
import eventlet.websocket
import pytest
import redis
import socketio
from conftest import ROOT

from imcluster.workers import internals
from imcluster.workers.internals import REACHES, Reach

WORKERS = ROOT / "workers"


def _original(cls: type) -> type:
    """`cls`, or the library class under it if it is one of ours (a swapped-in class)."""
    while cls.__module__.startswith("imcluster"):
        cls = cls.__bases__[-1]
    return cls


def resolve(target: str):
    """The object "module:Qualified.name" names; AttributeError/ImportError if gone."""
    module_name, _, path = target.partition(":")
    obj = importlib.import_module(module_name)
    for i, part in enumerate(path.split(".") if path else ()):
        if i == 1 and isinstance(obj, type):
            obj = _original(obj)
        obj = inspect.getattr_static(obj, part) if i else getattr(obj, part)
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
    if isinstance(obj, type):
        obj = _original(obj)
    return obj


def _server() -> engineio.Server:
    return engineio.Server(async_mode="eventlet")


# Freshly made instances, for the attributes an entry reads or adds.
FACTORIES = {
    "engineio:Server": _server,
    "engineio.socket:Socket": lambda: internals.ENGINE_SOCKET(_server(), "sid"),
    "engineio.packet:Packet": lambda: engineio.packet.Packet(engineio.packet.NOOP),
    "socketio:Server": lambda: socketio.Server(async_mode="eventlet"),
    "socketio:PubSubManager": lambda: socketio.PubSubManager(),
    "eventlet.websocket:RFC6455WebSocket":
        lambda: eventlet.websocket.RFC6455WebSocket(None, {}, version=13),
    "eventlet.greenio.base:GreenSocket": lambda: eventlet.greenio.GreenSocket(),
}


def _params(fn) -> tuple[str, ...]:
    names = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("self", "cls"):
            continue
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        names.append(prefix + p.name)
    return tuple(names)


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text.replace("\\\n", ""))


def _has_attr(obj, dotted: str) -> bool:
    for part in dotted.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return False
    return True


def problems(r: Reach) -> list[str]:
    """What no longer holds of entry `r` in the installed library."""
    try:
        target = resolve(r.target)
    except (ImportError, AttributeError) as e:
        return [f"{r.target} is gone ({e})"]
    found = []
    if r.params is not None:
        have = _params(target)
        if r.how in ("override", "replace", "copy"):
            if have != r.params:
                found.append(f"its parameters are ({', '.join(have)}), not "
                             f"({', '.join(r.params)})")
        else:
            at = [have.index(p) for p in r.params if p in have]
            if len(at) != len(r.params) or at != sorted(at) or \
                    have[:r.positional] != r.params[:r.positional]:
                found.append(f"its parameters are ({', '.join(have)}); we pass "
                             f"{', '.join(r.params)}"
                             + (f", the first {r.positional} by position" if r.positional
                                else ""))
    if r.source:
        where = r.source_in or r.target
        try:
            text = _squash(inspect.getsource(resolve(where)))
        except (ImportError, AttributeError, OSError, TypeError) as e:
            found.append(f"the source of {where} cannot be read ({e})")
        else:
            for line in r.source:
                if _squash(line) not in text:
                    found.append(f"{where} no longer contains `{line}`")
    if r.attrs or r.adds:
        factory = FACTORIES.get(r.target)
        obj = factory() if factory else target
        for name in r.attrs:
            if not _has_attr(obj, name):
                found.append(f"{'a new ' if factory else ''}{r.target} has no attribute {name}")
        for name in r.adds:
            if hasattr(obj, name):
                found.append(f"{r.target} now has an attribute {name} of its own, which we set")
            else:
                try:
                    setattr(obj, name, object())
                except AttributeError:
                    found.append(f"{r.target} no longer takes an attribute {name}")
    return found


VERBS = {"override": "overrides", "replace": "replaces", "call": "calls", "read": "reads",
         "copy": "copies"}


def _version(dist: str) -> str:
    return metadata.version(dist)


def _skip_if_optional_and_absent(dist: str) -> None:
    """A library imcluster does not install (internals.OPTIONAL, e.g. flask-socketio,
    a test extra that scripts/test-min's lowest-versions run leaves out) is checked
    where it is installed, skipped where not."""
    if dist in internals.OPTIONAL:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{dist} (optional) is not installed here")


@pytest.mark.parametrize("key", sorted(REACHES))
def test_reach_still_holds(key):
    r = REACHES[key]
    _skip_if_optional_and_absent(r.library)
    found = problems(r)
    assert not found, (
        f"{r.library} {_version(r.library)} changed {r.target}: {r.where} {VERBS[r.how]} it "
        f"({r.why}); now {'; '.join(found)}. See workers/internals.py, entry {key!r}.")


def test_a_changed_library_fails_with_a_message_naming_it():
    """The check itself: an entry that no longer matches says what and where."""
    r = REACHES["engineio-socket-websocket-handler"]
    gone = Reach(r.library, "engineio.socket:Socket._websocket_handler_v2", r.how, r.where,
                 r.why)
    assert problems(gone)[0].startswith("engineio.socket:Socket._websocket_handler_v2 is gone")
    moved = Reach(r.library, r.target, r.how, r.where, r.why, params=("ws", "extra"),
                  source=("a line upstream never had",), attrs=(), adds=())
    assert problems(moved) == [
        "its parameters are (ws), not (ws, extra)",
        "engineio.socket:Socket._websocket_handler no longer contains "
        "`a line upstream never had`"]


# ---- the registry is complete and pointed at ------------------------------------------


def _our_classes():
    """(our class, the library class it extends or is mixed into, a fresh instance or None)."""
    import socketio.admin

    from imcluster.workers import (
        admin,
        dispatch,
        fastpacket,
        fastpath,
        http,
        protocol,
        pubsub,
        recovery,
        redis_cluster,
        redis_manager,
        relay,
        sessions,
    )

    return [
        (sessions.ClusterSocket, internals.ENGINE_SOCKET, None),
        (protocol.EngineRules, engineio.Server, None),
        (protocol.SocketRules, socketio.Server, None),
        (recovery.RecoveryRules, socketio.Server, None),
        (pubsub.ClusterPubSubManager, socketio.PubSubManager, None),
        (relay.MasterRelayManager, socketio.PubSubManager,
         lambda: relay.MasterRelayManager(None)),
        (redis_manager.ClusterRedisManager, socketio.PubSubManager,
         lambda: redis_manager.ClusterRedisManager("redis://127.0.0.1:1/0")),
        (redis_manager.InterestRedisManager, socketio.PubSubManager,
         lambda: redis_manager.InterestRedisManager("redis://127.0.0.1:1/0,redis://h:2/0",
                                                    1, 2)),
        # redis-py < 5.0 has no sharded pub/sub: the manager refuses to start there.
        (redis_cluster.ShardedRedisManager, socketio.PubSubManager,
         (lambda: redis_cluster.ShardedRedisManager("redis+cluster://127.0.0.1:1", 1, 2))
         if hasattr(redis.client.PubSub, "ssubscribe") else None),
        (http.make_protocol(1, 0, lambda sock: False, 1.0, set()), eventlet.wsgi.HttpProtocol,
         None),
        (admin.ClusterInstrumentedServer, admin._UPSTREAM, None),
        (fastpacket.FastPacket, socketio.packet.Packet, None),
        (dispatch.InlineEvents, socketio.Server, None),
        (fastpath.DirectAcks, socketio.Server, None),
    ]


_FRESH_BASE = {internals.ENGINE_SOCKET: FACTORIES["engineio.socket:Socket"],
               engineio.Server: _server, socketio.Server: FACTORIES["socketio:Server"],
               socketio.PubSubManager: FACTORIES["socketio:PubSubManager"]}


@pytest.mark.parametrize("ours, base, make", _our_classes(),
                         ids=lambda x: getattr(x, "__qualname__", "") or None)
def test_every_override_of_a_library_name_is_listed(ours, base, make):
    """A name our class defines that the library's class also has (a method, a
    class attribute, or an attribute its constructor sets) is an override, and
    needs an entry: the library calls or reads it."""
    listed = {r.target.rpartition(".")[2] for r in REACHES.values()
              if r.how in ("override", "copy", "replace")
              and resolve(r.target.rpartition(".")[0]) in (base, *base.__mro__)}
    fresh = _FRESH_BASE.get(base, lambda: None)()
    theirs = set(dir(base)) | set(vars(fresh) if fresh is not None else ())
    names = {n for n in vars(ours) if not (n.startswith("__") and n.endswith("__"))}
    if make is not None:  # what our constructor sets besides what the library's does
        names |= set(vars(make())) - set(vars(fresh))
    unlisted = sorted(n for n in names & theirs if n not in listed)
    assert not unlisted, (
        f"{ours.__module__}.{ours.__qualname__} overrides {base.__module__}."
        f"{base.__qualname__}.{', '.join(unlisted)}, which workers/internals.py does not "
        "list: add an entry (what we rely on), or rename ours")


@pytest.mark.parametrize("key", sorted(REACHES))
def test_every_entry_is_pointed_at_from_the_code(key):
    """Each file an entry names mentions the entry's key, beside the reach."""
    r = REACHES[key]
    files = {m for m in re.findall(r"workers/(\w+\.py)", r.where)}
    assert files, f"entry {key!r}: `where` names no file under workers/"
    missing = [f for f in sorted(files) if key not in (WORKERS / f).read_text()]
    assert not missing, f"{', '.join(missing)}: no `internals: {key}` at the reach"


def test_setup_cfg_bounds_follow_what_the_registry_was_checked_with():
    """The upper bound of each library is the next minor release after the one
    every entry was last read against: a newer one is untested by definition."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    ranges = {}
    # Optional libraries (reached only when the app uses them) are bounded in the
    # test extra, the ones imcluster needs in install_requires.
    for line in (cfg["options"]["install_requires"].splitlines()
                 + cfg["options.extras_require"]["test"].splitlines()):
        m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(\S+)", line)
        if m:
            ranges[m[1].lower()] = m[2]
    required = {line.split(">")[0].split("<")[0].strip().lower()
                for line in cfg["options"]["install_requires"].splitlines()
                if line.strip() and not line.strip().startswith("#")}
    assert not internals.OPTIONAL & required, "an optional library imcluster installs"
    assert set(internals.CHECKED_WITH) == {r.library for r in REACHES.values()}
    for dist, checked in internals.CHECKED_WITH.items():
        major, minor = (int(x) for x in checked.split(".")[:2])
        upper = [s for s in ranges[dist].split(",") if s.startswith("<")]
        assert upper == [f"<{major}.{minor + 1}"], (
            f"setup.cfg admits {dist}{ranges[dist]}, but workers/internals.py was checked "
            f"with {dist} {checked}: the upper bound must be <{major}.{minor + 1}")


# ---- behaviour the entries describe, where a shape check is not enough ----------------


def test_flask_socketio_session_is_a_dict_with_flasks_session_mixin():
    """flask-socketio-session: the hand-over carries a Flask-SocketIO session as its
    items and wraps them again; the wrapper must be the dict Flask takes as a session."""
    _skip_if_optional_and_absent("flask-socketio")
    from flask.sessions import SessionMixin

    s = internals.flask_socketio_session({"name": "ann", "_permanent": True})
    assert isinstance(s, dict) and isinstance(s, SessionMixin)
    assert dict(s) == {"name": "ann", "_permanent": True} and s.permanent is True


def test_every_frame_eventlet_writes_goes_through_send():
    """eventlet-ws-send: messages, pongs and the close frame all pass through _send."""
    from eventlet.green import socket as gsocket

    a, b = gsocket.socketpair()
    try:
        ws = eventlet.websocket.RFC6455WebSocket(a, {}, version=13)
        frames = []
        internals.route_ws_writes(ws, frames.append)
        ws.send("hello")
        ws.send(b"\x01\x02")
        ws.send(b"", control_code=0xA)  # a pong
        internals.send_closing_frame(ws)
        assert frames == [b"\x81\x05hello", b"\x82\x02\x01\x02", b"\x8a\x00", b"\x88\x00"]
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)  # nothing bypassed _send
    finally:
        a.close()
        b.close()


def test_a_swapped_socket_class_makes_the_sessions():
    """engineio-socket-class: the server looks the class up when a session starts."""
    made = []

    class Probe(internals.ENGINE_SOCKET):
        def __init__(self, server, sid):
            made.append(sid)
            super().__init__(server, sid)

    eio = _server()
    try:
        internals.install_socket_class(Probe)
        environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": "EIO=4&transport=polling",
                   "wsgi.url_scheme": "http", "HTTP_HOST": "localhost"}
        status = []
        eio.handle_request(environ, lambda s, h: status.append(s))
    finally:
        internals.install_socket_class(internals.ENGINE_SOCKET)
    assert status == ["200 OK"] and made == list(eio.sockets)
