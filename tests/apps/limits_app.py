"""An app with a small payload limit and a plain WSGI route that fails."""

import socketio

MAX_PAYLOAD = 100_000

sio = socketio.Server(async_mode="eventlet", max_http_buffer_size=MAX_PAYLOAD)


@sio.on("echo")
def echo(sid, data=None):
    return data


@sio.on("fail")
def fail(sid, data=None):
    raise RuntimeError("secret internal detail /etc/app/config.py")


def other(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("secret internal detail /etc/app/config.py")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain wsgi"]


app = socketio.WSGIApp(sio, other)
