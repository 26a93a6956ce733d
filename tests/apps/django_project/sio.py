
import socketio
from contract import python_socketio_events

sio = socketio.Server(async_mode="eventlet")


python_socketio_events(sio)


@sio.on("request")
def request_seen(sid, data=None):
    """What a handler reads of the handshake request through Django's own WSGIRequest."""
    from django.core.handlers.wsgi import WSGIRequest

    r = WSGIRequest(sio.get_environ(sid))
    return {"remote_addr": r.META["REMOTE_ADDR"], "cookie": r.COOKIES.get("k"),
            "url": r.build_absolute_uri(), "body": r.body.decode(), "scheme": r.scheme}
