"""Flask-SocketIO built for async_mode='threading' (as for `flask run`)."""

from flask import Flask
from flask_socketio import SocketIO

app = Flask(__name__)
socketio = SocketIO(app, async_mode="threading")


@socketio.on("echo")
def echo(data):
    return data
