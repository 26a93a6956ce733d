import os

import socketio

sio = socketio.Server(async_mode="eventlet")


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
