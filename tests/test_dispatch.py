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
