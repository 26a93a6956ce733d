"""Flask with plain python-socketio, mounted the way python-socketio's docs show:
`app.wsgi_app = socketio.WSGIApp(sio, app.wsgi_app)`. Served as `flask_wsgiapp:app`."""

import os

import socketio
from contract import python_socketio_events
from flask import Flask

sio = socketio.Server(async_mode="eventlet")
app = Flask(__name__)
app.wsgi_app = socketio.WSGIApp(sio, app.wsgi_app)


@app.route("/")
def index():
    return f"<!doctype html><h1>flask and python-socketio, pid {os.getpid()}</h1>"


python_socketio_events(sio)
