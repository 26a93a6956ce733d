"""A small chat app with a deliberate multi-process bug, for the plugin's own tests
(tests/test_testing_plugin.py) and the README's "Testing your app on N workers".

`online` is module-level state: each worker process has its own copy, so with
several workers `who` counts only the sessions of the worker that answers.
"""

import socketio

sio = socketio.Server(async_mode="eventlet")
app = socketio.WSGIApp(sio)
online: set[str] = set()  # the bug: per process, not per cluster


@sio.event
def connect(sid, environ):
    online.add(sid)


@sio.event
def disconnect(sid, reason=None):
    online.discard(sid)


@sio.on("who")
def who(sid):
    return len(online)


@sio.on("join")
def join(sid, room):
    sio.enter_room(sid, room)
    return True


@sio.on("say")
def say(sid, data):
    sio.emit("said", data, to=data["room"])
