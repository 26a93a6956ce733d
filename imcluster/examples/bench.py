"""The bench app: the contract every benchmark and conformance check drives.

Default namespace, path /socket.io/:
- `echo` with an ack: the ack returns the same payload.
- `join` {room}: joins the room; the ack returns true.
- `say` {room, text, ts}: emits `said` with the same object to everyone in the
  room, sender included, across all workers.
- `whoami` with an ack: returns the serving process's pid.
"""

import os

import socketio

sio = socketio.Server(async_mode="eventlet")
app = socketio.WSGIApp(sio)


@sio.on("echo")
def echo(sid, data=None):
    return data


@sio.on("join")
def join(sid, data=None):
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str) or not room:
        return False
    sio.enter_room(sid, room)
    return True


@sio.on("say")
def say(sid, data=None):
    room = data.get("room") if isinstance(data, dict) else None
    if not isinstance(room, str) or not room:
        return False
    sio.emit("said", data, to=room)
    return True


@sio.on("whoami")
def whoami(sid, data=None):
    return os.getpid()
