"""A Flask-SocketIO app whose handlers keep state in Flask's `session` (Flask-SocketIO
keeps one per connection, in the environ), as a new user's trial wrote it, for the
hand-over tests (tests/test_handover.py). Served as `flask_session_app:app`."""

from contract import flask_socketio_events
from flask import Flask, request, session
from flask_socketio import SocketIO

app = Flask(__name__)
app.secret_key = "k"
socketio = SocketIO(app)


@socketio.on("remember")
def remember(name):
    session["name"] = name
    return "ok"


@socketio.on("hello")
def hello():
    return "hello " + session.get("name", "?")


@socketio.on("remember_bytes")
def remember_bytes(data=None):
    # Not JSON: a session holding it cannot be handed over with its data.
    session["raw"] = b"\x00\x01"
    return "ok"


@socketio.on("whereami")
def whereami(data=None):
    return {"remote_addr": request.remote_addr, "flask_app": "flask.app" in request.environ,
            "cookie": request.cookies.get("k"), "url": request.url,
            "handover": request.environ.get("imcluster.handover", False)}


flask_socketio_events(socketio)
