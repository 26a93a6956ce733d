"""Flask-SocketIO behind werkzeug's ProxyFix, wrapped the way werkzeug's docs
say (`app.wsgi_app = ProxyFix(app.wsgi_app)`), after SocketIO(app)."""

import os

from flask import Flask, request
from flask_socketio import SocketIO, emit, join_room
from werkzeug.middleware.proxy_fix import ProxyFix

app = Flask(__name__)
socketio = SocketIO(app)
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)


@app.route("/")
def index():
    return f"<!doctype html><h1>behind a proxy, client {request.remote_addr}</h1>"


@socketio.on("whoami")
def whoami(data=None):
    return os.getpid()


@socketio.on("whereami")
def whereami(data=None):
    return {"remote_addr": request.remote_addr, "flask_app": "flask.app" in request.environ}


@socketio.on("join")
def join(data):
    join_room(data["room"])
    return True


@socketio.on("say")
def say(data):
    emit("said", data, to=data["room"])
