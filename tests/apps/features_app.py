"""A test app that acts on sessions other than the caller's, which may live on
another worker: every call here must cross workers through the pub/sub path."""

import os

import socketio

sio = socketio.Server(async_mode="eventlet")


@sio.on("whoami")
def whoami(sid, data=None):
    return os.getpid()


@sio.on("join")
def join(sid, room):
    sio.enter_room(sid, room)
    return True


@sio.on("enter")
def enter(sid, data):
    sio.enter_room(data["sid"], data["room"])  # someone else's session
    return True


@sio.on("leave")
def leave(sid, data):
    sio.leave_room(data["sid"], data["room"])
    return True


@sio.on("shout")
def shout(sid, data):
    sio.emit("shouted", data["text"], to=data["room"], skip_sid=sid)
    return True


@sio.on("direct")
def direct(sid, data):
    sio.emit("direct", data["text"], to=data["sid"])
    return True


@sio.on("kick")
def kick(sid, data):
    sio.disconnect(data["sid"])
    return True


@sio.on("close")
def close(sid, room):
    sio.close_room(room)
    return True


@sio.on("join", namespace="/other")
def other_join(sid, room):
    sio.enter_room(sid, room, namespace="/other")
    return True


@sio.on("say", namespace="/other")
def other_say(sid, data):
    sio.emit("said", data, to=data["room"], namespace="/other")
    return True
