"""Apps for the protocol tests (tests/test_protocol.py).

`sio` pings every 25.5 s with a 16.06 s timeout: values whose milliseconds
python-engineio 4.15 gets wrong in its handshake (25000 and 16059), and long
enough that a poll stays pending for the whole of a test. `quick`
pings every 300 ms (python-engineio advertises 0) with a 3 s timeout, so a
silent client times out within a test, while a test's next request still
comes well before the deadline. Both serve the default namespace only; their
connect handler emits `hello` with the auth data (as the protocol's own test
server does), `echo` acks its payload and `whoami` answers the worker's pid.
"""

import os

import socketio


def _server(ping_interval: float, ping_timeout: float) -> socketio.Server:
    sio = socketio.Server(async_mode="eventlet", ping_interval=ping_interval,
                          ping_timeout=ping_timeout)

    @sio.on("connect")
    def connect(sid, environ, auth=None):
        sio.emit("hello", auth or {}, to=sid)

    @sio.on("echo")
    def echo(sid, data=None):
        return data

    @sio.on("whoami")  # what tests/js/clients.mjs asks
    def whoami(sid, data=None):
        return os.getpid()

    return sio


sio = _server(25.5, 16.06)
quick = _server(0.3, 3.0)
# A long interval and a short timeout: a client gives up 9 s after its last PING
# (tests/test_handover.py, a session moved late in its interval).
late = _server(8.0, 1.0)
