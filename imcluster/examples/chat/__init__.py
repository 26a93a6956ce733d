"""Built-in chat demo: an ordinary python-socketio app.

Nothing in here knows about the cluster. Every fan-out goes through a room
broadcast (``sio.emit(..., to=room)``), so it keeps working when the members
of a room are served by different worker processes; the only per-process
state used is the connection's own session and its own room list, which
always live in the process that serves that connection.

Event contract (default namespace, path /socket.io/):

* ``echo`` payload -> ack: the same payload.
* ``whoami`` -> ack: ``os.getpid()`` of the serving worker.
* ``join`` {room, name} -> ack true; emits ``presence``
  {room, name, sid, event: 'join', pid} to the room, sender included.
* ``leave`` {room} -> ack true; emits ``presence`` event 'leave' to the room.
* ``say`` {room, text, ts} -> ack true; emits ``said`` (the same object plus
  name, pid, sid) to the room, sender included.
* ``here`` {room, name, to_sid?} -> ack true; emits ``presence``
  event 'here' to the room. Clients send it once in reply to someone else's
  'join', which is how a newcomer learns who was already there without any
  server-side member lookup.
* disconnect -> ``presence`` event 'leave' to every room the sid was in.

Invalid input gets ack ``false`` and emits nothing.
"""
import logging
import os

import socketio

MAX_ROOM = 64
MAX_NAME = 32
MAX_TEXT = 2000

_here = os.path.dirname(os.path.abspath(__file__))
_static = os.path.join(_here, 'static')

logger = logging.getLogger(__name__)

sio = socketio.Server(async_mode='eventlet')
app = socketio.WSGIApp(sio, static_files={
    '/': {'filename': os.path.join(_static, 'index.html'),
          'content_type': 'text/html'},
    '/static/': _static + os.sep,
})


def _str(value, limit):
    """Return value if it is a non-blank string of at most limit chars."""
    if not isinstance(value, str) or len(value) > limit or not value.strip():
        return None
    return value


def _name_of(sid):
    # The session can already be gone while a connection is torn down.
    try:
        name = sio.get_session(sid).get('name')
    except Exception:
        name = None
    return name if isinstance(name, str) and name else 'anonymous'


def _presence(room, sid, event, name=None, skip_sid=None):
    sio.emit('presence', {
        'room': room,
        'name': name if name is not None else _name_of(sid),
        'sid': sid,
        'event': event,
        'pid': os.getpid(),
    }, to=room, skip_sid=skip_sid)


@sio.event
def echo(sid, *args):
    # A tuple becomes a multi-argument ack, so any payload shape round-trips.
    return args[0] if len(args) == 1 else (args or None)


def _room_and_name(sid, data):
    """The valid room and name of a join/here payload (None for invalid ones)."""
    room = _str(data.get('room'), MAX_ROOM)
    # A connection's own sid room is not a chat room; treating it as one
    # would let 'leave' break direct delivery to that client.
    if room == sid:
        room = None
    name = data.get('name')
    # Without a name keep the one given earlier, so joining a second room
    # doesn't turn the user into 'anonymous'.
    name = _name_of(sid) if name in (None, '') else _str(name, MAX_NAME)
    return room, name


@sio.event
def whoami(sid, *args):
    return os.getpid()


@sio.event
def join(sid, data=None, *_):
    if not isinstance(data, dict):
        return False
    room, name = _room_and_name(sid, data)
    if room is None or name is None:
        return False
    sio.save_session(sid, {'name': name})
    sio.enter_room(sid, room)
    _presence(room, sid, 'join', name)
    return True


@sio.event
def leave(sid, data=None, *_):
    if not isinstance(data, dict):
        return False
    room = _str(data.get('room'), MAX_ROOM)
    if room is None or room == sid:
        return False
    # sio.rooms(sid) is safe here: a connection's rooms are always kept by
    # the process serving it. Announce only real departures.
    if room in sio.rooms(sid):
        sio.leave_room(sid, room)
        _presence(room, sid, 'leave')
    return True


@sio.event
def say(sid, data=None, *_):
    if not isinstance(data, dict):
        return False
    room = _str(data.get('room'), MAX_ROOM)
    text = _str(data.get('text'), MAX_TEXT)
    if room is None or text is None or room == sid:
        return False
    msg = dict(data, name=_name_of(sid), pid=os.getpid(), sid=sid)
    sio.emit('said', msg, to=room)
    return True


@sio.event
def here(sid, data=None, *_):
    # to_sid is accepted for clients that want to say whom they answer, but
    # the reply is still a room broadcast: adding a member twice is harmless
    # and this way no process needs to know where to_sid lives.
    if not isinstance(data, dict):
        return False
    room, name = _room_and_name(sid, data)
    if room is None or name is None:
        return False
    _presence(room, sid, 'here', name)
    return True


@sio.event
def disconnect(sid, reason=None):
    # Must never raise: python-socketio retries a disconnect handler that
    # raises TypeError with the legacy single-argument signature.
    try:
        name = _name_of(sid)
        for room in sio.rooms(sid):
            if room != sid:
                _presence(room, sid, 'leave', name, skip_sid=sid)
    except Exception:
        logger.exception('chat: presence on disconnect failed for %s', sid)
