"""Finding the user's Socket.IO server inside whatever MODULE:ATTR names.

What a user names is the outermost thing they would hand to gunicorn or to
`socketio.run()`: a Flask app, a `flask_socketio.SocketIO`, Django's
`application`, a WSGI middleware chain, a `socketio.Server`, or an app factory
called as gunicorn spells it (`module:create_app()`, with literal arguments).
The worker serves that outermost callable, so every middleware runs and every
`environ` key it sets stays (Flask-SocketIO needs `environ['flask.app']`), and
walks the chain under it to find the one Socket.IO server whose session ids
and manager the cluster takes over.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Any

import engineio
import socketio

DEMO_APP = "imcluster.examples.chat:app"

# Attributes that hold the next callable (or the server) in the WSGI chains
# people build: Flask's `wsgi_app` (which Flask-SocketIO and ProxyFix
# replace), werkzeug middleware's `app`, Django/WSGIApp wrappers'
# `application`/`wsgi_app`, python-engineio's `engineio_app`,
# Flask-SocketIO's `server` and `sockio_mw`, `functools.wraps`' `__wrapped__`.
CHAIN_ATTRS = ("engineio_app", "server", "sockio_mw", "wsgi_app", "app", "application",
               "flask_app", "__wrapped__")
# Dicts whose values may hold it: Flask's `extensions` (Flask-SocketIO keeps
# itself in extensions['socketio']) and werkzeug's DispatcherMiddleware `mounts`.
CHAIN_DICTS = ("extensions", "mounts")
MAX_DEPTH = 8

WHAT_TO_NAME = ("name a socketio.Server, a flask_socketio.SocketIO, or a WSGI app (Flask, "
                "Django, middleware) whose chain holds a socketio.WSGIApp")


class AppError(Exception):
    """The app cannot be served; the message says why, for the operator."""


@dataclass
class App:
    wsgi: Any  # what the WSGI server calls: the outermost callable
    eio: engineio.Server  # makes the session ids
    sio: socketio.Server | None  # None for a bare Engine.IO app
    # The Flask app whose Flask-SocketIO middleware passes requests to `sio`
    # (it sets environ['flask.app'] to it on every request), else None.
    flask_app: Any = None

    def request_entries(self) -> dict[str, Any]:
        """The environ entries the app's own middleware sets on every request and
        its handlers read, made in this process: a session handed over from
        another worker gets them here (workers/handover.py), as its requests
        would have. Flask-SocketIO: `flask.app` (its `_handle_event` reads
        environ['flask.app'] before every handler). Other middleware: none known."""
        return {"flask.app": self.flask_app} if self.flask_app is not None else {}


# What `imcluster run MODULE` (no ATTR) looks for, in this order: the names
# gunicorn and Flask's CLI use for the app (gunicorn's default is
# `application`, Flask's `app`), then one Socket.IO server at module level,
# then the app factories Flask's CLI calls (`create_app`, `make_app`).
DEFAULT_ATTRS = ("app", "application")
DEFAULT_FACTORIES = ("create_app", "make_app")


def load(spec: str | None, cwd: str) -> App:
    """Import MODULE:ATTR (from `cwd`, as gunicorn does) and find its servers.

    MODULE is a dotted module name, or a path to a `.py` file (`app.py`,
    `./src/app.py`, as Flask's `--app` takes it; a file inside a package is
    imported as part of it). ATTR may be a dotted path, or a call of one with
    literal arguments (`create_app()`, `create_app('prod', debug=True)`),
    which is made once. Without ATTR: `app`, then `application`, then the one
    socketio.Server / flask_socketio.SocketIO at module level, then a
    `create_app()` or `make_app()` factory (DEFAULT_ATTRS, DEFAULT_FACTORIES).
    Raises AppError, with one line for the operator, when the module or
    attribute is missing or no Socket.IO server can be found in what it names.
    """
    spec = spec or DEMO_APP
    module_name, sep, attr = _split_spec(spec)
    if not module_name or (sep and not attr):
        raise AppError(f"{spec!r} is not MODULE:ATTR")
    path, args, kwargs = parse_attr(attr, spec) if attr else ([], None, {})
    module_name, cwd = _module_of_path(module_name, cwd, spec)
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if getattr(e, "name", None) and module_name.startswith(e.name):
            raise AppError(f"cannot import module {module_name!r} (from {cwd}): {e}") from e
        raise
    if not attr:
        return _default(module, module_name, spec)
    obj = module
    for part in path:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppError(f"module {module_name!r} has no attribute "
                           f"{'.'.join(path)!r}{_factory_hint(module, module_name)}") from None
    if args is not None:
        if not callable(obj):
            raise AppError(f"{spec}: {'.'.join(path)} is a {type(obj).__name__}, "
                           "not a function to call")
        obj = obj(*args, **kwargs)
        if obj is None:
            raise AppError(f"{spec} returned None; the factory must return the app")
    return find(_owner(obj, module), spec, _factory_hint(module, module_name))


def _split_spec(spec: str) -> tuple[str, str, str]:
    """MODULE, ':', ATTR; a Windows-style drive colon is not looked for (POSIX only)."""
    return spec.partition(":")


def _module_of_path(module_name: str, cwd: str, spec: str) -> tuple[str, str]:
    """(dotted module name, directory to import it from) for MODULE.

    A dotted name is returned as it is, with `cwd`. A file path (it ends in
    `.py` or holds a `/`) is resolved against `cwd`; the directory to import
    from is the first one up from the file that is not a package (has no
    `__init__.py`), so `src/pkg/app.py` is `pkg.app` imported from `src/`,
    as Flask's CLI does. Raises AppError for a path that is not a file.
    """
    if not (module_name.endswith(".py") or "/" in module_name):
        return module_name, cwd
    file = os.path.normpath(os.path.join(cwd, module_name))
    if os.path.isdir(file) and os.path.isfile(os.path.join(file, "__init__.py")):
        file = os.path.join(file, "__init__.py")
    if not file.endswith(".py") or not os.path.isfile(file):
        raise AppError(f"{spec!r}: no Python file {file}")
    directory, name = os.path.split(file[:-3])
    parts = [] if name == "__init__" else [name]
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        directory, package = os.path.split(directory)
        parts.insert(0, package)
    if not parts or not all(p.isidentifier() for p in parts):
        raise AppError(f"{spec!r}: {file} cannot be imported as a module "
                       "(its name is not a Python identifier)")
    return ".".join(parts), directory


def _default(module: Any, module_name: str, spec: str) -> App:
    """The app of `imcluster run MODULE`, looked for as DEFAULT_ATTRS says."""
    for name in DEFAULT_ATTRS:
        if name in vars(module) and not inspect.ismodule(vars(module)[name]):
            return find(_owner(getattr(module, name), module), f"{module_name}:{name}",
                        _factory_hint(module, module_name))
    # A SocketIO() that the factory will init_app() holds no server yet.
    servers = [(name, value) for name, value in vars(module).items()
               if isinstance(value, socketio.Server)
               or (_is_flask_socketio(value) and value.__dict__.get("server") is not None)]
    if len(servers) == 1:
        name, value = servers[0]
        return find(_owner(value, module), f"{module_name}:{name}")
    for name in DEFAULT_FACTORIES:
        factory = vars(module).get(name)
        if callable(factory):
            obj = factory()
            if obj is None:
                raise AppError(f"{module_name}:{name}() returned None; the factory must "
                               "return the app")
            return find(_owner(obj, module), f"{module_name}:{name}()")
    if len(servers) > 1:
        names = ", ".join(n for n, _ in servers)
        raise AppError(f"module {module_name!r} has no 'app' or 'application' and "
                       f"{len(servers)} Socket.IO servers ({names}); name one: "
                       f"'{module_name}:{servers[0][0]}'")
    raise AppError(f"module {module_name!r} has none of 'app', 'application' (gunicorn's "
                   "default), a socketio.Server, or a create_app()/make_app() factory; "
                   f"name what to serve: '{module_name}:ATTR'")


def _factory_hint(module: Any, module_name: str) -> str:
    """' (it has create_app: ...)' when the module has a factory, for an error line."""
    for name in DEFAULT_FACTORIES:
        if callable(vars(module).get(name)):
            return f" (if the app is made by its factory, name it: '{module_name}:{name}()')"
    return ""


def _owner(obj: Any, module: Any) -> Any:
    """The flask_socketio.SocketIO in `module` whose server `obj` is, else `obj`.

    Flask-SocketIO's server only works with requests that enter through the
    Flask app (its handlers read `environ['flask.app']`), so naming
    `app:socketio.server` serves the Flask app around it.
    """
    if isinstance(obj, socketio.Server):
        for value in list(vars(module).values()):
            if _is_flask_socketio(value) and value.__dict__.get("server") is obj:
                return value
    return obj


def parse_attr(attr: str, spec: str = "") -> tuple[list[str], tuple | None, dict]:
    """`a.b` -> (['a', 'b'], None, {}); `f('x', debug=True)` -> (['f'], ('x',), {'debug': True}).

    Arguments must be Python literals (as gunicorn's `module:factory(...)`):
    nothing in the spec is evaluated as code. Raises AppError otherwise.
    """
    try:
        node = ast.parse(attr.strip(), mode="eval").body
    except SyntaxError:
        raise AppError(f"{spec or attr!r}: {attr!r} is not a name or a call") from None
    args: tuple | None = None
    kwargs: dict = {}
    if isinstance(node, ast.Call):
        try:
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise AppError(f"{spec or attr!r}: factory arguments must be literals "
                           "(strings, numbers, True/False/None, lists, dicts)") from None
        if None in kwargs:  # **mapping
            raise AppError(f"{spec or attr!r}: factory arguments must be literals")
        node = node.func
    path: list[str] = []
    while isinstance(node, ast.Attribute):
        path.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise AppError(f"{spec or attr!r}: {attr!r} is not a name or a call")
    path.append(node.id)
    return path[::-1], args, kwargs


def find(obj: Any, spec: str, hint: str = "") -> App:
    """The app to serve for `obj` and the one Socket.IO (or Engine.IO) server under it.

    `hint` ends the error line when nothing can be served (a factory to name).
    """
    if isinstance(obj, (socketio.AsyncServer, engineio.AsyncServer, socketio.ASGIApp)):
        raise AppError(f"{spec} is an asyncio app; imcluster serves socketio.Server "
                       "(async_mode='eventlet') apps")
    found, seen, owners = _walk(obj)
    sios = [s for s in found if isinstance(s, socketio.Server)]
    eios = [s for s in found if not isinstance(s, socketio.Server)]
    async_found = [s for s in found if isinstance(s, (socketio.AsyncServer,
                                                      engineio.AsyncServer))]
    if len(sios) > 1:
        raise AppError(f"{spec} holds {len(sios)} Socket.IO servers; name the one to serve")
    if sios:
        sio, eio = sios[0], sios[0].eio
    elif len(eios) == 1 and not async_found:
        sio, eio = None, eios[0]
    else:
        kind = "an asyncio server" if async_found else "no socketio.Server"
        if inspect.isfunction(obj) and "(" not in spec:
            hint = f" (if it is a factory, call it: '{spec}()')"
        elif _is_flask_socketio(obj):
            # The app-factory pattern: SocketIO() at import, init_app(app)
            # inside the factory, so at import it holds no server yet.
            raise AppError(f"{spec} is a flask_socketio.SocketIO that no init_app(app) has "
                           "attached to a Flask app yet" + (hint or "; name the factory that "
                           "calls init_app (MODULE:create_app()), or the Flask app"))
        raise AppError(f"{spec} is {_a(_describe(obj))} with {kind} in it (looked in: "
                       f"{', '.join(seen) or 'nothing'}){hint}; {WHAT_TO_NAME}")
    check_async_mode(eio, spec)
    # internals: flask-socketio-middleware (its flask_app is environ['flask.app'])
    owner = next((o for o in owners if o.__dict__.get("server") is sio), None)
    flask_app = getattr(owner.__dict__.get("sockio_mw"), "flask_app", None) if owner else None
    return App(_outermost(obj, sio, eio, spec), eio, sio, flask_app)


def check_async_mode(eio: engineio.Server, spec: str) -> None:
    """Refuse an app whose server is not built for eventlet, with the fix.

    Workers run eventlet (monkey-patched); a server built for 'threading'
    hands WebSockets to simple-websocket, whose close then races eventlet's
    own handling of the connection (a traceback per close), and 'gevent'
    cannot run at all. Re-pointing a built server at another async driver
    would mean rewriting python-engineio's private `_async` table, so the app
    is asked to say 'eventlet' instead (or nothing: in a worker the default
    is eventlet).
    """
    mode = getattr(eio, "async_mode", None)
    if mode == "eventlet":
        return
    raise AppError(
        f"{spec} uses async_mode={mode!r}; imcluster workers run eventlet: build it with "
        "async_mode='eventlet' or leave async_mode out (socketio.Server(async_mode="
        "'eventlet'); Flask-SocketIO: SocketIO(app, async_mode='eventlet'))")


def _walk(root: Any) -> tuple[list, list[str], list]:
    """Servers reachable from `root` through CHAIN_ATTRS/CHAIN_DICTS, outermost first.

    Reads instance dicts only (never properties, which may have effects),
    at most MAX_DEPTH links deep, each object once (chains can loop:
    Flask-SocketIO's middleware points back at its Flask app). Returns the
    servers found, for the error message the links followed, and the
    flask_socketio.SocketIO objects passed on the way.
    """
    found: list = []
    seen: list[str] = []
    owners: list = []
    visited: set[int] = set()
    stack: list[tuple[Any, str, int]] = [(root, "", 0)]
    while stack:
        obj, where, depth = stack.pop()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        if where:
            seen.append(f"{where} ({_describe(obj)})")
        if _is_flask_socketio(obj):
            owners.append(obj)
        if isinstance(obj, (socketio.Server, socketio.AsyncServer)):
            found.append(obj)
            continue
        if isinstance(obj, (engineio.Server, engineio.AsyncServer)):
            found.append(obj)
            continue
        if depth >= MAX_DEPTH:
            continue
        attrs = getattr(obj, "__dict__", None)
        if not isinstance(attrs, dict):
            continue
        nxt = []
        for name in CHAIN_ATTRS:
            child = attrs.get(name)
            if child is not None and not isinstance(child, (str, bytes, int, float)):
                nxt.append((child, f"{where}.{name}" if where else name))
        for name in CHAIN_DICTS:
            d = attrs.get(name)
            if isinstance(d, dict):
                for key, child in list(d.items())[:32]:
                    nxt.append((child, f"{where or ''}.{name}[{key!r}]".lstrip(".")))
        # Pushed in reverse, so the first attribute is walked first.
        for child, path in reversed(nxt):
            stack.append((child, path, depth + 1))
    return found, seen, owners


def _outermost(obj: Any, sio: socketio.Server | None, eio: engineio.Server, spec: str):
    """What to serve for what the user named: the named object itself when it is
    a WSGI callable, so every layer of its chain runs."""
    if obj is sio:
        return socketio.WSGIApp(sio)
    if obj is eio:
        return engineio.WSGIApp(eio)
    if _is_flask_socketio(obj):
        mw = obj.__dict__.get("sockio_mw")  # internals: flask-socketio-middleware
        flask_app = getattr(mw, "flask_app", None)
        if flask_app is None:
            raise AppError(f"{spec} is a flask_socketio.SocketIO not attached to a Flask app; "
                           "call socketio.init_app(app), or name the Flask app")
        return flask_app
    if callable(obj):
        return obj
    raise AppError(f"{spec} is {_a(_describe(obj))}, which is not a WSGI callable; "
                   f"{WHAT_TO_NAME}")


def _is_flask_socketio(obj: Any) -> bool:
    mod = sys.modules.get("flask_socketio")
    return mod is not None and isinstance(obj, mod.SocketIO)


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _describe(obj: Any) -> str:
    t = type(obj)
    if t.__module__ in ("builtins", "__main__"):
        return t.__qualname__
    return f"{t.__module__.split('.')[0]}.{t.__qualname__}"
