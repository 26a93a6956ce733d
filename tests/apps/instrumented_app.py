"""python-socketio with the Socket.IO Admin UI's instrumentation, as its docs set it up.

With ADMIN_UI_DIST set (the `ui/dist` folder of the npm package
@socket.io/admin-ui), `app` also serves the Admin UI's page at /admin-ui/, from
the same origin as the Socket.IO server, so the browser needs no CORS setting.
"""

import os

import socketio
from contract import python_socketio_events

sio = socketio.Server(async_mode="eventlet")
sio.instrument(auth={"username": "admin", "password": "test only"}, server_stats_interval=0.5)

UI = os.environ.get("ADMIN_UI_DIST")
STATIC = None
if UI:
    STATIC = {"/admin-ui/": UI.rstrip("/") + "/",
              # python-engineio's static files know no .svg type (the logo).
              "/admin-ui/img/": {"filename": UI.rstrip("/") + "/img/",
                                 "content_type": "image/svg+xml"}}
app = socketio.WSGIApp(sio, static_files=STATIC)


python_socketio_events(sio)
