"""Socket.IO packets encoded and decoded for less CPU, with python-socketio's results.

Profiled on a worker under the echo benchmark (docs/benchmarks.md, "Per-ack
cost"), python-socketio's packet code was a fifth of the busy time: every
`json.loads` went through python-engineio's wrapper, which passes
`parse_int` and so makes `json` build a new decoder (and its scanner) per
call; every `json.dumps(data, separators=...)` built a new encoder; and
`Packet.data_is_binary` walked the data through `functools.reduce` and a
list per level, for every packet made.

`FastPacket` is python-socketio's `Packet` (a subclass, installed as the
server's `packet_class`, which python-socketio documents as its
`serializer` argument) with the same results, computed faster:

- decode: orjson parses the JSON when it can; anything orjson refuses
  (NaN, lone surrogates, ...), and text with 19 digits in a row (orjson
  reads integers beyond 64 bits as floats), is parsed by
  the module python-socketio would use, so the result, or the error, is
  python-socketio's. An integer longer than 100 digits is still refused.
- encode: data made only of str, int, finite float, bool, None, lists and
  dicts with str keys (the exact types, no subclasses) is written by
  orjson; anything else by python-socketio's module through one cached
  encoder with the same settings. orjson writes non-ASCII characters as
  UTF-8 where `json` escapes them, and floats in their shortest form
  (1e-07 becomes 1e-7): the same values for every JSON parser.
- data_is_binary: the same answer without the temporary lists.

Only a server whose packets are python-socketio's default (`Packet`, with
python-engineio's JSON module) gets it: an app that chose msgpack, its own
packet class or its own `json` keeps what it chose. tests/test_fastpacket.py
compares every packet both produce and accept (hypothesis).
"""

from __future__ import annotations

import json as std_json
import re

import socketio
from engineio import json as eio_json
from socketio import packet as sio_packet

try:
    import orjson
except ImportError:  # optional: without it the stdlib paths below still save most
    orjson = None

BINARY_EVENT, BINARY_ACK = sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK

# python-engineio's json.loads refuses integers longer than this (engineio/json.py).
_MAX_INT_DIGITS = 100
if orjson is not None:
    _OR_LOADS = orjson.loads
    _OR_DUMPS = orjson.dumps
    _OR_ERROR = orjson.JSONDecodeError
else:
    _OR_LOADS = _OR_DUMPS = None
    _OR_ERROR = ValueError


# orjson reads an integer beyond 64 bits as a float (json: an int, or an error past
# 100 digits): text with 19 digits in a row goes to the stdlib.
_long_digits = re.compile(r"[0-9]{19}").search


def _safe_int(s: str) -> int:
    # python-engineio's parse_int (engineio/json.py), with its message.
    # internals: engineio-json-loads
    if len(s) > _MAX_INT_DIGITS:
        raise ValueError("Integer is too large")
    return int(s)


# One decoder and one encoder for the life of the process, with the settings
# python-engineio's loads and python-socketio's dumps ask for on every call.
_DECODER = std_json.JSONDecoder(parse_int=_safe_int)
_ENCODER = std_json.JSONEncoder(separators=(",", ":"))


def loads(text: str):
    """python-engineio's `json.loads(text)`: the same value, or the same error type."""
    if _OR_LOADS is not None and not _long_digits(text):
        try:
            return _OR_LOADS(text)
        except _OR_ERROR:
            pass
    return _DECODER.decode(text)


def _plain(x) -> bool:
    """True if `x` is JSON made of exact built-in types orjson writes as json does."""
    t = type(x)
    if t is str or t is int or t is bool or x is None:
        return True
    if t is float:
        return x - x == 0.0  # finite: json writes NaN/Infinity, orjson null
    if t is list:
        for item in x:
            if not _plain(item):
                return False
        return True
    if t is dict:
        for k, v in x.items():
            if type(k) is not str or not _plain(v):
                return False
        return True
    return False


# For workers/fastpath.py's direct acks.
plain = _plain


def orjson_dumps(data) -> str | None:
    """orjson's JSON text of `data`, which must be `plain` (then the same value as
    python-socketio's dumps gives); None without orjson. TypeError as orjson raises it."""
    if _OR_DUMPS is None:
        return None
    return _OR_DUMPS(data).decode()


def dumps(data) -> str:
    """python-socketio's `json.dumps(data, separators=(',', ':'))`, as JSON text
    that parses to the same value (or the same error for what JSON cannot hold)."""
    if _OR_DUMPS is not None and _plain(data):
        try:
            return _OR_DUMPS(data).decode()
        except TypeError:  # lone surrogates in a str, deep nesting: json decides
            pass
    return _ENCODER.encode(data)


def _is_binary(data) -> bool:
    t = type(data)
    if t is str or t is int or data is None:
        return False
    if isinstance(data, (bytes, bytearray)):
        return True
    if isinstance(data, list):
        for item in data:
            if _is_binary(item):
                return True
        return False
    if isinstance(data, dict):
        for v in data.values():
            if _is_binary(v):
                return True
        return False
    return False


class FastPacket(sio_packet.Packet):
    """python-socketio's Packet with faster JSON and binary checks (module doc)."""

    # internals: socketio-packet-binary
    @classmethod
    def data_is_binary(cls, data) -> bool:
        return _is_binary(data)

    # internals: socketio-packet-encode (a copy of its text branch)
    def encode(self):
        if (self.packet_type == BINARY_EVENT or self.packet_type == BINARY_ACK
                or self.json is not eio_json):
            return super().encode()
        out = str(self.packet_type)
        ns = self.namespace
        if ns is not None and ns != "/":
            out += ns + ","
        if self.id is not None:
            out += str(self.id)
        if self.data is not None:
            out += dumps(self.data)
        return out

    # internals: socketio-packet-decode
    def decode(self, encoded_packet):
        if self.json is not eio_json:  # an app set its own module since: use it
            return super().decode(encoded_packet)
        # python-socketio's decode, with its JSON module swapped for ours for
        # the duration (it reads self.json): the parsing rules stay upstream's.
        self.json = _FAST_JSON
        try:
            return super().decode(encoded_packet)
        finally:
            del self.json


class _FastJSON:
    """The `loads` python-socketio's Packet.decode calls (dumps is FastPacket.encode's)."""

    loads = staticmethod(loads)

    @staticmethod
    def dumps(data, **kwargs):
        if kwargs == {"separators": (",", ":")}:
            return dumps(data)
        return std_json.dumps(data, **kwargs)


_FAST_JSON = _FastJSON()


def install(sio: socketio.Server) -> bool:
    """Give `sio` FastPacket if its packets are python-socketio's defaults; True if so.

    internals: socketio-packet-class
    """
    if sio.packet_class is not sio_packet.Packet or sio_packet.Packet.json is not eio_json:
        return False
    sio.packet_class = FastPacket
    return True
