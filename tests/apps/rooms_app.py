"""The bench contract plus `say_many` {rooms: [...], text}: `said` to every member of
any of the rooms, once (python-socketio's emit to a list of rooms), for the
hand-over tests of messages published on several interest channels."""

import os
import time

from imcluster.examples.bench import app, sio  # noqa: F401  (served as rooms_app:sio)


@sio.on("say_many")
def say_many(sid, data=None):
    rooms = data.get("rooms") if isinstance(data, dict) else None
    if not (isinstance(rooms, list) and rooms and all(isinstance(r, str) for r in rooms)):
        return False
    sio.emit("said", data, to=rooms)
    return True


@sio.on("join_after")
def join_after(sid, data=None):
    """Join data["room"] after data["seconds"]: a handler still running when its
    worker starts to drain joins in the instant of the drain."""
    sio.sleep(float(data["seconds"]))
    sio.enter_room(sid, data["room"])
    return True


@sio.on("hold")
def hold(sid, data=None):
    """A handler that runs until the file data["release"] exists, or at most
    data["seconds"]: its session's move waits for it."""
    deadline = time.monotonic() + float(data["seconds"])
    while time.monotonic() < deadline and not os.path.exists(data["release"]):
        sio.sleep(0.02)
    return True


@sio.on("tell")
def tell(sid, data=None):
    """`told` with `data` to the one sid data["to"] (published on that sid's
    worker's channel, and on the room channel of that name)."""
    sio.emit("told", data, to=data["to"])
    return True
