"""Flask-SocketIO with both of its loggers on, as its docs suggest for debugging."""

from flask import Flask
from flask_socketio import SocketIO

app = Flask(__name__)
socketio = SocketIO(app, logger=True, engineio_logger=True)


@socketio.on("echo")
def echo(data):
    return data


@socketio.on("boom")
def boom(token):
    raise ValueError(f"kaboom {token}")
