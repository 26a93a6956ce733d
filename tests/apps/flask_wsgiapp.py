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


@sio.on("request")
def request_seen(sid, data=None):
    """What a handler reads of the handshake request through Flask's own Request."""
    from flask import Request

    r = Request(sio.get_environ(sid))
    return {"remote_addr": r.remote_addr, "cookie": r.cookies.get("k"), "url": r.url,
            "body": r.get_data(as_text=True), "scheme": r.scheme}
