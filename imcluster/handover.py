"""What an app may say about session hand-over (`--handover yes`).

A worker that retires (rolling reload, scale-down, memory limit) moves each
session (WebSocket or long-polling) to another worker, socket and all,
without running the app's `connect` or `disconnect` handlers (the design:
workers/handover.py).
What python-socketio keeps for a session moves with it: the Socket.IO sid,
its rooms, and what the app stored with `sio.save_session(sid, {...})`.
What the app keeps by sid itself (a module-level dict) does not: either keep
it in `save_session`, or use these hooks. Imported by the app, in the
workers; nothing here imports eventlet.
"""

from __future__ import annotations

from collections.abc import Callable

Hook = Callable[[str, str], object]

_hooks: dict[str, Hook | None] = {"leaving": None, "arrived": None}


def on_handover(leaving: Hook | None = None, arrived: Hook | None = None) -> None:
    """Be told of session hand-over, and refuse it where the app must.

    `leaving(sid, namespace)` runs in the retiring worker before a session's
    state is taken (its handlers have finished); returning False refuses the
    move, and the session is then closed as with `--handover no` (the client
    reconnects and the app sees disconnect, then connect). `arrived(sid,
    namespace)` runs in the worker that took the session over, once it is
    registered and before its next packet is read. Both get the Socket.IO sid,
    which does not change; an exception in either is logged (in `leaving` it
    refuses the move). Calling it again replaces both hooks.
    """
    _hooks["leaving"] = leaving
    _hooks["arrived"] = arrived


def hook(name: str) -> Hook | None:
    """The hook registered under `name` ("leaving" or "arrived"), if any."""
    return _hooks[name]
