"""FastPacket (workers/fastpacket.py) encodes and decodes what python-socketio's Packet does.

Every packet a worker sends or reads goes through FastPacket, so each
property compares it with upstream's Packet on the same input:

- encoding: the same packet type, namespace, id and attachments, and a JSON
  payload that parses (with python-engineio's own parser) to the same value,
  or the same error class for data JSON cannot hold;
- decoding any text (valid packets, and arbitrary strings): the same type,
  namespace, id, data and attachment count, or the same error class;
- binary detection: the same answer for any nesting of lists, dicts, bytes.

The real-process tests (test_values.py, test_cluster_core.py and the JS and
browser tests) then run the whole cluster with it.
"""

from __future__ import annotations

import json
import math

import pytest
import socketio
from engineio import json as eio_json
from hypothesis import example, given, settings
from hypothesis import strategies as st
from socketio import packet as sio_packet

from imcluster.workers import fastpacket
from imcluster.workers.fastpacket import FastPacket

Packet = sio_packet.Packet

# JSON values, and the Python values an app may emit (bytes, tuples, NaN, big ints,
# non-str keys, lone surrogates): what python-socketio does with each is the reference.
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text()
                | st.integers(min_value=2**63 - 3, max_value=2**64 + 3)
                | st.sampled_from(["\ud800", "é", "\u2028", "日本", "\x00"]))
app_scalars = json_scalars | st.binary(max_size=8)
app_values = st.recursive(
    app_scalars,
    lambda kids: (st.lists(kids, max_size=4) | st.tuples(kids, kids)
                  | st.dictionaries(st.text(max_size=5), kids, max_size=4)
                  | st.dictionaries(st.integers(), kids, max_size=2)),
    max_leaves=12)
namespaces = st.sampled_from([None, "/", "/chat", "/a,b", "/ns?x=1", "/é"])
ids = st.none() | st.integers(min_value=0, max_value=10**12)
types = st.sampled_from([sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT,
                         sio_packet.ACK, sio_packet.CONNECT_ERROR])


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:  # the class is what must match
        return ("error", type(e))


def _same_json(a: str, b: str) -> bool:
    """Both texts parse (python-engineio's loads) to equal values (NaN equal to NaN)."""
    va, vb = eio_json.loads(a), eio_json.loads(b)
    return _eq(va, vb)


def _eq(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_eq(a[k], b[k]) for k in a)
    return a == b


def _split(encoded: str, head_len: int) -> tuple[str, str]:
    return encoded[:head_len], encoded[head_len:]


def _head(pkt: Packet) -> str:
    """Type, attachment count, namespace and id: the packet before its JSON."""
    out = str(pkt.packet_type)
    if pkt.packet_type in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
        return out  # compared whole below
    if pkt.namespace is not None and pkt.namespace != "/":
        out += pkt.namespace + ","
    if pkt.id is not None:
        out += str(pkt.id)
    return out


@settings(max_examples=1500, deadline=None)
@given(types | st.sampled_from([sio_packet.EVENT, sio_packet.ACK]), app_values, namespaces,
       ids)
@example(sio_packet.EVENT, ["echo", "x" * 64], None, 7)
@example(sio_packet.ACK, [float("nan")], "/chat", 1)
@example(sio_packet.EVENT, ["e", 2**64], None, None)
@example(sio_packet.EVENT, ["e", {1: "int key"}], None, None)
@example(sio_packet.ACK, ["\ud800"], None, 3)
@example(sio_packet.EVENT, ["bin", b"\x00\x01", {"k": bytearray(b"z")}], "/chat", 9)
@example(sio_packet.ACK, [1e-07, 1e16, -0.0], None, 2)
def test_encode_matches_python_socketio(ptype, data, namespace, id):
    made_up = _outcome(lambda: Packet(ptype, data=data, namespace=namespace, id=id))
    made_fast = _outcome(lambda: FastPacket(ptype, data=data, namespace=namespace, id=id))
    assert made_up[0] == made_fast[0]
    if made_up[0] == "error":
        assert made_up[1] is made_fast[1]
        return
    up, fast = made_up[1], made_fast[1]
    assert (up.packet_type, up.namespace, up.id) == (fast.packet_type, fast.namespace, fast.id)
    enc_up, enc_fast = _outcome(up.encode), _outcome(fast.encode)
    assert enc_up[0] == enc_fast[0], (enc_up, enc_fast)
    if enc_up[0] == "error":
        assert issubclass(enc_fast[1], enc_up[1]) or issubclass(enc_up[1], enc_fast[1])
        return
    a, b = enc_up[1], enc_fast[1]
    if isinstance(a, list):  # binary: the same placeholders and attachments, as upstream
        assert a == b
        return
    head = _head(up)
    assert a[:len(head)] == b[:len(head)] == head
    if len(a) > len(head) or len(b) > len(head):
        assert _same_json(a[len(head):], b[len(head):]), (a, b)


# Packets as clients send them: valid ones built from JSON values, plus any text.
def _encoded(ptype, data, namespace, id, attachments) -> str:
    out = str(ptype)
    if attachments is not None:
        out += f"{attachments}-"
    if namespace:
        out += namespace + ","
    if id is not None:
        out += str(id)
    if data is not None:
        out += json.dumps(data, separators=(",", ":"))
    return out


json_values = st.recursive(
    json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.text(max_size=5), kids, max_size=4), max_leaves=12)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(
    st.builds(_encoded, st.integers(0, 6), st.none() | json_values,
              st.sampled_from([None, "/chat", "/a?x=1", "/"]), ids,
              st.none() | st.integers(0, 3)),
    st.text(max_size=30),
    st.text(alphabet="0123456789[]{}\",-/:.eE+naNIfity ", max_size=40)))
@example('2["echo","' + "x" * 64 + '"]')
@example("21[\"e\",NaN,Infinity]")
@example("2[\"e\"," + "9" * 101 + "]")
@example("2[\"e\"," + "9" * 30 + "]")
@example("2[\"e\",\"\\ud800\"]")
@example("2[1e400]")
@example("2[-9999999999999999999,18446744073709551616,1.00000000000000011102230246251565]")
@example("2[0.1e-400,123456789012345678.5,5e-324]")
@example("2{\"a\":1,\"a\":2}")
@example("2\ufeff[1]")
@example("2" + "9" * 101 + "[1]")
@example("2²[1]")
@example("2/chat,12[\"x\"]")
@example("51-[\"b\",{\"_placeholder\":true,\"num\":0}]")
def test_decode_matches_python_socketio(text):
    up = _outcome(lambda: Packet(encoded_packet=text))
    fast = _outcome(lambda: FastPacket(encoded_packet=text))
    assert up[0] == fast[0], (text, up, fast)
    if up[0] == "error":
        assert up[1] is fast[1], (text, up, fast)
        return
    a, b = up[1], fast[1]
    assert (a.packet_type, a.namespace, a.id, a.attachment_count) == (
        b.packet_type, b.namespace, b.id, b.attachment_count)
    assert _eq(a.data, b.data), (text, a.data, b.data)


@settings(max_examples=1000, deadline=None)
@given(app_values | st.lists(app_values, max_size=3))
def test_binary_detection_matches_python_socketio(data):
    assert FastPacket.data_is_binary(data) is Packet.data_is_binary(data)


def test_installed_only_over_the_default_packet_and_json():
    """An app's own packet class (msgpack's among them) or own JSON module is kept."""
    assert fastpacket.install(socketio.Server(async_mode="eventlet"))
    class Own(Packet):
        pass

    assert not fastpacket.install(socketio.Server(async_mode="eventlet", serializer=Own))
    try:
        socketio.Server(async_mode="eventlet", json=json)  # sets Packet.json for all
        assert not fastpacket.install(socketio.Server(async_mode="eventlet"))
    finally:
        Packet.json = eio_json


@pytest.mark.skipif(fastpacket.orjson is None, reason="orjson not installed")
def test_orjson_is_what_writes_plain_data():
    """The point of the module: a plain ack does not go through json's encoder."""
    assert fastpacket.dumps(["é", 1.5]) == '["é",1.5]'  # orjson: UTF-8, not \\u00e9
    assert fastpacket.dumps([float("nan")]) == "[NaN]"  # json's, as upstream
