"""A Flask-SocketIO app as its documentation writes one: rooms, and an HTML page.

Served as `flask_sio_app:app` (the Flask app) or `flask_sio_app:socketio`.
"""

import os

from contract import flask_socketio_events
from flask import Flask, request
from flask_socketio import SocketIO

app = Flask(__name__)
app.config["SECRET_KEY"] = "test only"
socketio = SocketIO(app)

PAGE = """<!doctype html>
<title>flask-socketio chat</title>
<script src="https://cdn.socket.io/4.7.5/socket.io.min.js"></script>
<h1>chat served by pid {pid}</h1>
"""


@app.route("/")
def index():
    return PAGE.format(pid=os.getpid())


@socketio.on("whereami")
def whereami(data=None):
    # request.remote_addr reads the environ the app's middleware left.
    return {"remote_addr": request.remote_addr, "flask_app": "flask.app" in request.environ}


@socketio.on("echo")
def echo(data):
    return data


flask_socketio_events(socketio)
