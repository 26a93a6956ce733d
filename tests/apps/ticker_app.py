"""The ticker of every Flask-SocketIO example, started at import, but only in
one worker of the cluster: IMCLUSTER_SLOT is 0..N-1 (and unset outside imcluster,
where the one process ticks)."""

import os

from flask import Flask
from flask_socketio import SocketIO

app = Flask(__name__)
socketio = SocketIO(app)


def ticker():
    n = 0
    while True:
        socketio.sleep(0.2)
        n += 1
        socketio.emit("tick", {"n": n, "pid": os.getpid()})


if os.environ.get("IMCLUSTER_SLOT", "0") == "0":
    socketio.start_background_task(ticker)


@socketio.on("whoami")
def whoami(data=None):
    return os.getpid()


@socketio.on("where")
def where(data=None):
    return {"slot": os.environ.get("IMCLUSTER_SLOT"),
            "worker_id": os.environ.get("IMCLUSTER_WORKER_ID"), "pid": os.getpid()}
