"""A test app that sends values to other sessions, which may live on another
worker: emit, emit with an ack, and call, to a sid, a room, a namespace or
everyone, with skip_sid. tests/test_values.py compares what arrives across
workers with what arrives on one worker.

Requests (`send`, from the session that sends):
  {"mode": "emit" | "ack" | "call", "target": "sid" | "room" | "namespace" | "all",
   "to": sid or room, "skip": sid or None, "event": name, "args": [value, ...]}
- emit: `event` goes out with `args` as its arguments (one argument when there
  is one). The ack says True.
- ack: `event` goes out with {"reply": args} and a callback; the receiver's
  client acks with `args`; this session's ack carries what the callback got,
  as a list.
- call: `sio.call(event, {"reply": args}, to=to)`; this session's ack is
  {"result": what call() returned}.
`move` {"op": "enter" | "leave" | "disconnect", "sid", "room", "then_emit": event or
absent} acts on another session, then emits `event` to the room at once.
"""

import os

import socketio

NAMESPACE = "/values"
WAIT = 20  # seconds a callback or call may take; a test fails well before

sio = socketio.Server(async_mode="eventlet", max_http_buffer_size=8_000_000)


@sio.on("whoami")
def whoami(sid, data=None):
    return os.getpid()


@sio.on("join")
def join(sid, room):
    sio.enter_room(sid, room)
    return True


@sio.on("rejoin")
def rejoin(sid, room):
    """Leave `room` and enter it again at once, in one handler."""
    sio.leave_room(sid, room)
    sio.enter_room(sid, room)
    return True


def _data(args: list):
    return args[0] if len(args) == 1 else tuple(args)


@sio.on("send")
def send(sid, req):
    mode, target = req["mode"], req["target"]
    event, args, skip = req["event"], req["args"], req.get("skip")
    to = req.get("to") if target in ("sid", "room") else None
    namespace = NAMESPACE if target == "namespace" else "/"
    if mode == "emit":
        sio.emit(event, _data(args), to=to, skip_sid=skip, namespace=namespace)
        return True
    if mode == "call":
        result = sio.call(event, {"reply": args}, to=to, namespace=namespace, timeout=WAIT)
        # call() gives several values as a tuple; python-socketio 5.18's
        # Packet.data_is_binary looks into lists and dicts only, so a tuple
        # holding bytes would not be sent as binary.
        return {"result": list(result) if isinstance(result, tuple) else result}
    got = sio.eio.create_event()
    acked: list = []

    def callback(*values):
        acked.extend(values)
        got.set()

    sio.emit(event, {"reply": args}, to=to, skip_sid=skip, namespace=namespace,
             callback=callback)
    if not got.wait(WAIT):
        return "no ack"
    return acked


@sio.on("move")
def move(sid, req):
    """{"op": "enter" | "leave" | "disconnect", "sid": SID, "room": ROOM}: act on
    another session, which may live on another worker or host (the manager
    publishes it there)."""
    op, other = req["op"], req["sid"]
    if op == "enter":
        sio.enter_room(other, req["room"])
    elif op == "leave":
        sio.leave_room(other, req["room"])
    else:
        sio.disconnect(other)
    if req.get("then_emit"):  # at once, in the same handler
        sio.emit(req["then_emit"], req["then_emit"], to=req["room"])
    return True


@sio.on("connect", namespace=NAMESPACE)
def connect_values(sid, environ):
    return True
