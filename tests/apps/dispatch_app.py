"""Handlers that wait, ask back, fail and keep state: how events are dispatched
(workers/dispatch.py) must not change what any of them sees."""

import contextvars
import threading

import eventlet.event
import socketio

sio = socketio.Server(async_mode="eventlet")
gates: dict[str, eventlet.event.Event] = {}
seen = contextvars.ContextVar("seen", default=None)
local = threading.local()


@sio.on("echo")
def echo(sid, data=None):
    return data


@sio.on("wait")
def wait(sid, name):
    """Waits (in the hub) until `open` names the same gate, then acks its name."""
    gate = gates.setdefault(name, eventlet.event.Event())
    return ("opened", name, gate.wait())


@sio.on("open")
def open_gate(sid, name):
    gates.setdefault(name, eventlet.event.Event()).send(name)
    return True


@sio.on("sleep")
def sleep(sid, seconds):
    sio.sleep(seconds)
    return "slept"


@sio.on("ask")
def ask(sid, question):
    """Asks the same client and acks its answer: reads the client's ACK while waiting."""
    return ["answer", sio.call("question", question, to=sid, timeout=10)]


@sio.on("boom")
def boom(sid, data=None):
    raise RuntimeError("boom handler fails on purpose")


@sio.on("state")
def state(sid, tag):
    """What an earlier handler left in a contextvar or a thread-local: nothing, each
    handler starts afresh as in a background task."""
    before = (seen.get(), getattr(local, "tag", None))
    seen.set(tag)
    local.tag = tag
    return list(before)


@sio.on("emit_then_ack")
def emit_then_ack(sid, n):
    for i in range(n):
        sio.emit("item", i, to=sid)
    return "done"


@sio.on("thread_attr")
def thread_attr(sid, tag, wait=0.0):
    """What an earlier handler set on threading.current_thread(): nothing; each
    handler is a thread of its own, as a GreenThread is (logging's threadName)."""
    t = threading.current_thread()
    before = getattr(t, "tag", None)
    t.tag = tag
    if wait:
        sio.sleep(wait)
    return [before, threading.current_thread().tag, t.name]
