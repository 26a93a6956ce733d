"""The bench app, and what connection state recovery brings back: each connect
handler counts its connects in the session data and notes whether
imcluster.recovered() said so; `state` (with an ack) returns both."""

import imcluster
from imcluster.examples.bench import app, sio  # noqa: F401  (served: sio)


@sio.on("connect")
def connect(sid, environ, auth=None):
    with sio.session(sid) as session:
        session["connects"] = session.get("connects", 0) + 1
        session["recovered"] = imcluster.recovered(sid)


@sio.on("state")
def state(sid, data=None):
    return sio.get_session(sid)
