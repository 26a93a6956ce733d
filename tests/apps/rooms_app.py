"""The bench contract plus `say_many` {rooms: [...], text}: `said` to every member of
any of the rooms, once (python-socketio's emit to a list of rooms), for the
hand-over tests of messages published on several interest channels."""

from imcluster.examples.bench import app, sio  # noqa: F401  (served as rooms_app:sio)


@sio.on("say_many")
def say_many(sid, data=None):
    rooms = data.get("rooms") if isinstance(data, dict) else None
    if not (isinstance(rooms, list) and rooms and all(isinstance(r, str) for r in rooms)):
        return False
    sio.emit("said", data, to=rooms)
    return True
