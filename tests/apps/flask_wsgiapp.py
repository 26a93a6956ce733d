"""Flask with plain python-socketio, mounted the way python-socketio's docs show:
`app.wsgi_app = socketio.WSGIApp(sio, app.wsgi_app)`. Served as `flask_wsgiapp:app`."""

import os

import socketio
from flask import Flask

sio = socketio.Server(async_mode="eventlet")
app = Flask(__name__)
app.wsgi_app = socketio.WSGIApp(sio, app.wsgi_app)


@app.route("/")
def index():
    return f"<!doctype html><h1>flask and python-socketio, pid {os.getpid()}</h1>"


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
