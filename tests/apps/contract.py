"""The room events every framework-style test app serves (tests/test_frameworks.py):
`whoami` (ack: the worker's pid), `join` {room} (ack: true), `say` {room, ...}
(`said` to the room). Written once for python-socketio's handler signature and
once for Flask-SocketIO's; each app keeps the setup of its own framework."""

import os


def python_socketio_events(sio) -> None:
    @sio.on("whoami")
    def whoami(sid, data=None):
        return os.getpid()

    @sio.on("join")
    def join(sid, data):
        sio.enter_room(sid, data["room"])
        return True

    @sio.on("say")
    def say(sid, data):
        sio.emit("said", data, to=data["room"])


def flask_socketio_events(socketio) -> None:
    from flask_socketio import emit, join_room

    @socketio.on("whoami")
    def whoami(data=None):
        return os.getpid()

    @socketio.on("join")
    def join(data):
        join_room(data["room"])
        return True

    @socketio.on("say")
    def say(data):
        emit("said", data, to=data["room"])
