"""A Flask-SocketIO app for connection state recovery (tests/test_recovery.py): the
room events of the contract, and a connect handler that counts connects both in
Flask's `session` (kept by Flask-SocketIO in the worker, not recovered) and in
python-socketio's session (`socketio.server.save_session`, recovered); `state`
returns both counts. Served as `flask_recovery_app:app`."""

from contract import flask_socketio_events
from flask import Flask, request, session
from flask_socketio import SocketIO

app = Flask(__name__)
app.secret_key = "k"
socketio = SocketIO(app)


@socketio.on("connect")
def connect(auth=None):
    session["connects"] = session.get("connects", 0) + 1
    with socketio.server.session(request.sid, namespace=request.namespace) as saved:
        saved["connects"] = saved.get("connects", 0) + 1


@socketio.on("state")
def state(data=None):
    saved = socketio.server.get_session(request.sid, namespace=request.namespace)
    return {"flask": session.get("connects"), "saved": saved.get("connects")}


flask_socketio_events(socketio)
