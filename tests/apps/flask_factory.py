"""A Flask app factory with Flask-SocketIO's init_app, named as
`flask_factory:create_app('hi', debug=True)` (gunicorn's factory spelling)."""

import os

from contract import flask_socketio_events
from flask import Flask
from flask_socketio import SocketIO

socketio = SocketIO()


def create_app(greeting="hello", debug=False):
    app = Flask(__name__)
    app.debug = debug

    @app.route("/")
    def index():
        return f"<!doctype html><h1>{greeting} from pid {os.getpid()}</h1>"

    socketio.init_app(app)
    return app


flask_socketio_events(socketio)
