"""The fast path for text events (workers/fastpath.py) accepts only what python-socketio
reads as the same EVENT, and the common events do take it; a plain ack written
directly is the text python-socketio and python-engineio would send.

For any text, `parse_event` either declines or gives the namespace, id and data
python-socketio's own decode gives (its Packet, with python-engineio's JSON),
for a packet python-socketio would dispatch as an event. A real cluster then
answers events on the default and another namespace, with and without acks,
across both paths, over the python-socketio client and the JS client.
"""

from __future__ import annotations

import json
import types

import engineio
import pytest
import socketio
from engineio import json as eio_json
from hypothesis import example, given, settings
from hypothesis import strategies as st
from socketio import packet as sio_packet

from imcluster.workers import fastpath, protocol

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text(max_size=8) | st.integers(min_value=2**63 - 2, max_value=2**64 + 2))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.text(max_size=4), kids, max_size=3), max_leaves=8)


def _event(namespace, id, data) -> str:
    return ("2" + (namespace + "," if namespace else "") + ("" if id is None else str(id))
            + json.dumps(data, separators=(",", ":")))


def _upstream(text: str):
    """What python-socketio makes of `text`: (type, namespace, id, data) or the error class."""
    sio_packet.Packet.json = eio_json
    try:
        p = sio_packet.Packet(encoded_packet=text)
    except Exception as e:
        return type(e)
    return p.packet_type, p.namespace, p.id, p.data


@settings(max_examples=1000, deadline=None)
@given(st.one_of(
    st.builds(_event, st.sampled_from([None, "/", "/chat", "/a-b", "/q?x=1", "/é", "/0"]),
              st.none() | st.integers(0, 10**25),
              st.lists(values, max_size=4) | st.lists(values, min_size=1).map(
                  lambda v: ["ev"] + v) | values),
    st.text(max_size=30).map(lambda t: "2" + t),
    st.text(alphabet="0123456789[]{}\",-/:.eE+naNI ,?é²٣", max_size=30).map(
        lambda t: "2" + t)))
@example('2["echo","' + "x" * 64 + '"]')
@example('212["echo",{"a":[1,2.5,null,true]}]')
@example('2/chat,7["x"]')
@example('2/chat,["x"]')
@example('21-["x"]')
@example('2²["x"]')
@example('2٣["x"]')
@example('2007["x"]')
@example('2' + '9' * 19 + '["x"]')
@example('2["x",' + '9' * 101 + ']')
@example('2["x",NaN]')
@example('2[1,"x"]')
@example('2[]')
@example('2{"0":"x"}')
@example('2/a?b=1,["x"]')
@example('2["x"] ')
@example('2["x"]\n')
def test_what_the_fast_path_accepts_python_socketio_reads_the_same(text):
    got = fastpath.parse_event(text)
    up = _upstream(text)
    if got is None:
        return  # declined: python-socketio decodes it, as before
    namespace, id, data = got
    assert up == (sio_packet.EVENT, namespace, id, data), (text, got, up)
    assert isinstance(data, list) and data and isinstance(data[0], str)


@pytest.mark.parametrize("text, want", [
    ('2["echo","hi"]', (None, None, ["echo", "hi"])),
    ('23["echo",{"a":1}]', (None, 3, ["echo", {"a": 1}])),
    ('2/chat,42["say","x",1,null]', ("/chat", 42, ["say", "x", 1, None])),
    ('2/chat,["say"]', ("/chat", None, ["say"])),
])
def test_the_common_events_take_it(text, want):
    assert fastpath.parse_event(text) == want
    # As the read loop sees them: the Engine.IO type first.
    assert fastpath.parse_event("4" + text, 1) == want


@pytest.mark.parametrize("text", [
    '51-["bin",{"_placeholder":true,"num":0}]',  # binary event: its attachments follow
    '3["ack"]', '0{"token":1}', '1', '2/q?x=1,["x"]', '2{"e":1}', '2[1]', '2',
])
def test_the_rest_goes_to_python_socketio(text):
    assert fastpath.parse_event(text) is None


def test_installed_only_where_nothing_in_between_was_replaced():
    plain = socketio.Server(async_mode="eventlet")
    assert fastpath.install(plain) == {"packets": True, "dispatch": True, "events": True,
                                       "acks": True}

    class Own(socketio.Server):
        def _handle_eio_message(self, eio_sid, data):  # an app's own dispatch
            return super()._handle_eio_message(eio_sid, data)

    assert fastpath.install(Own(async_mode="eventlet"))["events"] is False

    class OwnSend(socketio.Server):
        def _send_packet(self, eio_sid, pkt):  # an app that sees every packet it sends
            return super()._send_packet(eio_sid, pkt)

    class OwnHandling(socketio.Server):
        def _handle_event_internal(self, server, sid, eio_sid, data, namespace, id):
            return super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)

    assert fastpath.install(OwnSend(async_mode="eventlet"))["acks"] is False
    assert fastpath.install(OwnHandling(async_mode="eventlet"))["acks"] is False
    wrapped = socketio.Server(async_mode="eventlet")
    wrapped.eio.send = lambda sid, data: None  # python-engineio's send replaced
    assert fastpath.install(wrapped)["acks"] is False

    class OwnPacket(sio_packet.Packet):
        pass

    other = socketio.Server(async_mode="eventlet", serializer=OwnPacket)
    assert fastpath.install(other) == {"packets": False, "dispatch": True, "events": False,
                                       "acks": False}
    threads = socketio.Server(async_mode="threading")
    assert fastpath.install(threads)["dispatch"] is False


def _upstream_ack(namespace, id, data) -> str:
    """The Engine.IO MESSAGE text python-socketio and python-engineio send for an ack."""
    sio_packet.Packet.json = eio_json
    text = sio_packet.Packet(sio_packet.ACK, namespace=namespace, id=id, data=data).encode()
    return engineio.packet.Packet(engineio.packet.MESSAGE, data=text).encode()


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([None, "/", "/chat", "/é"]), st.integers(0, 10**6),
       st.lists(values | st.binary(max_size=3) | st.tuples(st.integers()), max_size=3))
@example(None, 0, ["x" * 64])
@example("/chat", 12, [{"a": [1, 2.5, None, True]}])
@example(None, 1, [float("inf")])
@example(None, 1, ["\ud800"])
@example(None, 1, [b"x"])
def test_a_direct_ack_is_the_text_python_socketio_sends(namespace, id, data):
    got = fastpath.ack_text(namespace, id, data)
    if got is None:
        return  # not plain: the ack takes python-socketio's way
    up = _upstream_ack(namespace, id, data)
    # The same packet; the JSON the same value (orjson writes non-ASCII as UTF-8 and
    # floats in their shortest form, as FastPacket does: tests/test_fastpacket.py).
    head = up.index("[")  # "43", the namespace and ",", the id
    assert got[:head] == up[:head], (got, up)
    assert json.loads(got[head:]) == json.loads(up[head:]), (got, up)
    assert sio_packet.Packet(encoded_packet=got[1:]).data == data


ECHOED = ["x" * 64, 0, -1, 2**63 - 1, 2**64 + 5, 10**30, 1e-07, -0.0, 2.5, True, None,
          "é ☃ \U0001f600", {"a": [1, {"b": None}], "é": ""}, [[], {}], b"\x00\xff",
          {"bin": [b"ab", 1]}, "\u2028", {"n": 1.0}]


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_acks_come_back_as_python_socketio_sent_them(cluster_factory, transport):
    """A real worker's acks: over a WebSocket the plain ones are written directly,
    the rest (bytes, integers beyond 64 bits) and every polling ack take
    python-socketio's way; the client reads every one back as it was sent."""
    cluster = cluster_factory(workers=1)
    cluster.wait_ready()
    c = socketio.Client(reconnection=False)
    c.connect(cluster.url, transports=[transport], wait_timeout=10)
    try:
        for value in ECHOED:
            got = c.call("echo", value, timeout=10)
            assert got == value and type(got) is type(value), (value, got)
    finally:
        c.disconnect()


def test_the_fast_path_stays_on_under_the_protocol_rules_message_handler():
    """workers/protocol.py registers its own copy of python-socketio's 'message'
    handler (malformed packets close the session); the fast path's check on the
    handler accepts it, and declines what that copy refuses (a reserved name)."""
    sio = socketio.Server(async_mode="eventlet")
    protocol.adapt(sio.eio, sio)
    assert sio.eio.handlers["message"].__func__ is protocol.SocketRules._imcluster_eio_message
    assert fastpath.install(sio)["events"] is True
    session = types.SimpleNamespace(sid="not-connected")  # python-socketio warns, ignores
    assert sio.eio._imcluster_fast.receive(session, '42["echo",1]') is True
    assert sio.eio._imcluster_fast.receive(session, '42["disconnect"]') is False
