"""Event handlers started directly (workers/dispatch.py) behave as python-socketio's
background tasks: concurrent when they wait, fresh state, errors reported, order kept.

Real cluster, one worker (every session on it), python-socketio's client over
WebSocket and polling. The gates are server-side events opened by another
event, so nothing here depends on timing.
"""

from __future__ import annotations

import threading

import pytest
import socketio
from conftest import ROOT


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from conftest import Cluster

    c = Cluster(tmp_path_factory.mktemp("dispatch"), app="dispatch_app:sio", workers=1,
                cwd=ROOT / "tests" / "apps")
    try:
        c.wait_ready()
        yield c.url
    finally:
        c.stop()


def _client(url: str, transport: str) -> socketio.Client:
    c = socketio.Client(reconnection=False, request_timeout=20)
    c.connect(url, transports=[transport], wait_timeout=10)
    return c


class Acks:
    """Acks as they arrive, in order."""

    def __init__(self):
        self.got: list = []
        self.cond = threading.Condition()

    def cb(self, tag):
        def record(*args):
            with self.cond:
                self.got.append((tag, args))
                self.cond.notify_all()
        return record

    def wait_for(self, tag, timeout: float = 20):
        with self.cond:
            assert self.cond.wait_for(lambda: any(t == tag for t, _ in self.got), timeout), (
                f"no ack for {tag!r}; got {self.got}")
            return next(a for t, a in self.got if t == tag)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_a_waiting_handler_stalls_neither_its_connection_nor_others(url, transport):
    a, b = _client(url, transport), _client(url, transport)
    try:
        acks = Acks()
        gate = f"g-{transport}"
        a.emit("wait", gate, callback=acks.cb("wait"))
        # The same connection's next events, and another client's, are answered
        # while the first handler waits.
        for i in range(20):
            assert a.call("echo", i, timeout=10) == i
        assert b.call("echo", "other", timeout=10) == "other"
        assert not any(t == "wait" for t, _ in acks.got)
        assert b.call("open", gate, timeout=10) is True
        assert acks.wait_for("wait") == ("opened", gate, gate)
    finally:
        a.disconnect()
        b.disconnect()


def test_many_waiting_handlers_run_together(url):
    c = _client(url, "websocket")
    try:
        acks = Acks()
        for i in range(50):
            c.emit("wait", f"many-{i}", callback=acks.cb(i))
        assert c.call("echo", "still answering", timeout=10) == "still answering"
        for i in reversed(range(50)):  # opened in reverse: acks follow the gates
            assert c.call("open", f"many-{i}", timeout=10) is True
            assert acks.wait_for(i) == ("opened", f"many-{i}", f"many-{i}")
        assert [t for t, _ in acks.got] == list(reversed(range(50)))
    finally:
        c.disconnect()


def test_sleeping_handlers_overlap(url):
    c = _client(url, "websocket")
    try:
        acks = Acks()
        for i in range(10):
            c.emit("sleep", 0.5, callback=acks.cb(i))
        c.emit("echo", "after the sleepers", callback=acks.cb("echo"))
        acks.wait_for("echo")
        assert [t for t, _ in acks.got][0] == "echo"  # not queued behind ten sleeps
        for i in range(10):
            assert acks.wait_for(i) == ("slept",)
    finally:
        c.disconnect()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_a_handler_can_ask_its_own_client_and_wait_for_the_answer(url, transport):
    c = _client(url, transport)
    try:
        c.on("question", lambda q: f"re: {q}")
        assert c.call("ask", "why", timeout=15) == ["answer", "re: why"]
    finally:
        c.disconnect()


def test_a_failing_handler_leaves_the_session_serving(url):
    c = _client(url, "websocket")
    try:
        c.emit("boom")
        assert c.call("echo", "after", timeout=10) == "after"
    finally:
        c.disconnect()


def test_each_handler_has_a_thread_object_of_its_own(url):
    """threading.current_thread() in a handler: its own, as in python-socketio's
    GreenThreads; attributes set on it by one handler (even one that waits while
    another runs) are not seen by another."""
    a, b = _client(url, "websocket"), _client(url, "websocket")
    try:
        acks = Acks()
        a.emit("thread_attr", ("alice", 0.3), callback=acks.cb("alice"))
        b.emit("thread_attr", ("bob", 0.3), callback=acks.cb("bob"))
        got_a, got_b = acks.wait_for("alice")[0], acks.wait_for("bob")[0]
        assert got_a[:2] == [None, "alice"] and got_b[:2] == [None, "bob"]
        assert got_a[2] != got_b[2]
        for i in range(3):  # handlers that do not wait (their greenlet is reused)
            assert a.call("thread_attr", f"t{i}", timeout=10)[:2] == [None, f"t{i}"]
    finally:
        a.disconnect()
        b.disconnect()


def test_each_handler_starts_with_fresh_context_and_locals(url):
    c = _client(url, "websocket")
    try:
        for i in range(5):
            assert c.call("state", f"t{i}", timeout=10) == [None, None]
    finally:
        c.disconnect()


def test_what_a_handler_emits_arrives_with_its_ack(url):
    c = _client(url, "websocket")
    items: list[int] = []
    c.on("item", items.append)
    try:
        for _ in range(5):
            del items[:]
            assert c.call("emit_then_ack", 30, timeout=10) == "done"
            # python-socketio's client runs handlers in threads: wait for the last.
            deadline = threading.Event()
            for _ in range(100):
                if len(items) == 30:
                    break
                deadline.wait(0.05)
            assert sorted(items) == list(range(30))
    finally:
        c.disconnect()


# ---- In process: a parked handler greenlet is reused only when nothing can tell ----
# (workers/dispatch.py HandlerGreenlet._unmarked). The reader is an eventlet
# greenthread, as a worker's connection reader is; the pool's length shows whether
# the handler's greenlet was parked (reusable) or ended.

import contextvars  # noqa: E402
import sys  # noqa: E402

import eventlet  # noqa: E402
import eventlet.corolocal  # noqa: E402
import greenlet  # noqa: E402
from eventlet.green import threading as green_threading  # noqa: E402

from imcluster.workers import dispatch  # noqa: E402

_var = contextvars.ContextVar("var", default="unset")


def _from_a_reader(*handlers):
    """Run each handler with run_now from one reader greenthread: for each, its
    greenlet's id, what it returned, the pool's length while it ran and after."""
    seen = []

    def wrapped(h):
        seen.append([id(greenlet.getcurrent()), None, len(dispatch._pool)])
        seen[-1][1] = h()

    def reader():
        for h in handlers:
            dispatch.run_now(wrapped, h)
            seen[-1].append(len(dispatch._pool))

    del dispatch._pool[:]
    eventlet.spawn(reader).wait()
    return [tuple(s) for s in seen]


def test_a_handler_that_leaves_nothing_behind_parks_its_greenlet_for_the_next():
    seen = _from_a_reader(*[lambda: _var.get()] * 4)
    assert [s[3] for s in seen] == [1, 1, 1, 1]  # parked after every handler
    assert len({s[0] for s in seen}) == 1  # one greenlet ran all four


def test_a_reused_greenlet_starts_every_handler_with_an_empty_context():
    def sets():
        before = _var.get()
        _var.set("set")
        return before

    seen = _from_a_reader(sets, sets, sets)
    assert [s[1] for s in seen] == ["unset"] * 3
    assert len({s[0] for s in seen}) == 1


@pytest.mark.parametrize("mark", ["thread-local", "attribute", "timeout", "held"])
def test_a_greenlet_something_is_tied_to_is_not_reused(mark):
    local = eventlet.corolocal.local()
    held = []
    timeouts = []

    def marks():
        if mark == "thread-local":
            before = getattr(local, "tag", None)
            local.tag = "mine"
            return before
        if mark == "attribute":
            greenlet.getcurrent().tag = "mine"
        if mark == "timeout":  # not cancelled: its timer holds the greenlet's throw
            timeouts.append(eventlet.Timeout(60))
        if mark == "held":
            held.append(greenlet.getcurrent())
        return None

    try:
        seen = _from_a_reader(marks, marks)
    finally:
        for t in timeouts:
            t.cancel()
    assert [s[3] for s in seen] == [0, 0]  # ended, not parked
    assert [s[1] for s in seen] == [None, None]  # the second saw no thread-local


def test_current_thread_is_each_handlers_own_and_forgotten_as_it_ends():
    """eventlet's threading.current_thread() (logging asks it for threadName) gives a
    greenthread a thread object of its own through link(): each handler gets its
    own, nothing set on it reaches the next, and the greenlet is still reused."""
    def attr():
        t = green_threading.current_thread()
        before = getattr(t, "tag", None)
        t.tag = "mine"
        return before, t.name

    seen = _from_a_reader(attr, attr, attr)
    assert [s[1][0] for s in seen] == [None, None, None]
    names = [s[1][1] for s in seen]
    assert all(n.startswith("GreenThread-") for n in names) and len(set(names)) == 3
    assert [s[3] for s in seen] == [1, 1, 1]  # parked every time
    assert len({s[0] for s in seen}) == 1


def test_a_handler_that_waits_ends_its_greenlet_and_the_reader_goes_on():
    order = []

    def waits():
        order.append("handler waits")
        eventlet.sleep(0.01)
        order.append("handler done")

    def reader():
        dispatch.run_now(waits)
        order.append("reader goes on")

    del dispatch._pool[:]
    eventlet.spawn(reader).wait()
    eventlet.sleep(0.05)
    assert order == ["handler waits", "reader goes on", "handler done"]
    assert dispatch._pool == []


def test_a_failing_handler_is_logged_and_its_greenlet_reused(caplog):
    def fails():
        raise RuntimeError("on purpose")

    with caplog.at_level("ERROR", logger="imcluster.worker"):
        seen = _from_a_reader(fails, lambda: "ok")
    assert "on purpose" in caplog.text
    assert seen[-1][1:] == ("ok", 0, 1)


def test_the_pool_is_bounded():
    def waits():
        eventlet.sleep(0)

    parked = []

    def reader():
        # POOL_MAX + 5 handlers, all suspended at once, then all ending inline
        # would need as many readers; instead fill the pool directly.
        for _ in range(dispatch.POOL_MAX + 5):
            g = dispatch.HandlerGreenlet(greenlet.getcurrent())
            g.switch(lambda: None, ())
            parked.append(len(dispatch._pool))

    del dispatch._pool[:]
    eventlet.spawn(reader).wait()
    assert parked[-1] == dispatch.POOL_MAX
    assert sys.getrefcount(dispatch._pool) > 0
    del dispatch._pool[:]
