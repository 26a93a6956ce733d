"""Flask-SocketIO behind werkzeug's ProxyFix, wrapped the way werkzeug's docs
say (`app.wsgi_app = ProxyFix(app.wsgi_app)`), after SocketIO(app)."""


from contract import flask_socketio_events
from flask import Flask, request
from flask_socketio import SocketIO
from werkzeug.middleware.proxy_fix import ProxyFix

app = Flask(__name__)
socketio = SocketIO(app)
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)


@app.route("/")
def index():
    return f"<!doctype html><h1>behind a proxy, client {request.remote_addr}</h1>"


@socketio.on("whereami")
def whereami(data=None):
    return {"remote_addr": request.remote_addr, "flask_app": "flask.app" in request.environ}


flask_socketio_events(socketio)
