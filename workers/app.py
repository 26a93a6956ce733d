"""Finding the user's Socket.IO server inside whatever MODULE:ATTR names."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

import engineio
import socketio

DEMO_APP = "imcluster.examples.chat:app"


class AppError(Exception):
    """The app cannot be served; the message says why, for the operator."""


@dataclass
class App:
    wsgi: Any  # what the WSGI server calls
    eio: engineio.Server  # makes the session ids
    sio: socketio.Server | None  # None for a bare Engine.IO app


def load(spec: str | None, cwd: str) -> App:
    """Import MODULE:ATTR (from `cwd`, as gunicorn does) and find its servers."""
    spec = spec or DEMO_APP
    module_name, sep, attr = spec.partition(":")
    if not module_name or (sep and not attr):
        raise AppError(f"{spec!r} is not MODULE:ATTR")
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if getattr(e, "name", None) and module_name.startswith(e.name):
            raise AppError(f"cannot import module {module_name!r} (from {cwd}): {e}") from e
        raise
    obj = module
    for part in (attr or "app").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppError(f"module {module_name!r} has no attribute {attr or 'app'!r}") from None
    return _wrap(obj, spec)


def _wrap(obj: Any, spec: str) -> App:
    if isinstance(obj, socketio.Server):
        return App(socketio.WSGIApp(obj), obj.eio, obj)
    if isinstance(obj, engineio.WSGIApp):  # socketio.WSGIApp is one too
        inner = obj.engineio_app
        if isinstance(inner, socketio.Server):
            return App(obj, inner.eio, inner)
        if isinstance(inner, engineio.Server):
            return App(obj, inner, None)
    if isinstance(obj, engineio.Server):
        return App(engineio.WSGIApp(obj), obj, None)
    if isinstance(obj, (socketio.AsyncServer, engineio.AsyncServer, socketio.ASGIApp)):
        raise AppError(f"{spec} is an asyncio app; imcluster serves socketio.Server "
                       "(async_mode='eventlet') apps")
    raise AppError(f"{spec} is a {type(obj).__name__}, not a socketio.Server or a "
                   "socketio.WSGIApp built on one")
