"""next_message (workers/sessions.py) reads what eventlet's ws.wait() reads.

A worker cuts whole text frames out of its receive buffer itself and leaves
every other frame, and every error, to eventlet's reader. For any stream of
client frames (text, binary, fragmented, pings, closes, empty, oversized,
unmasked, invalid UTF-8, truncated), sent in any chunking, both readers return the
same messages and write the same bytes back (pongs, close frames). In
process, over a real socket pair, with eventlet's RFC6455WebSocket.
"""

from __future__ import annotations

import os
import struct

import eventlet
import eventlet.websocket
from eventlet.green import socket as green_socket
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imcluster.workers import speedups
from imcluster.workers.sessions import BufferedReceive, next_message

speedups.install()  # the workers' unmasking, for both readers


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True,
          length_form: str = "min", rsv: int = 0) -> bytes:
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    form = length_form
    if form == "min":
        form = "7" if n < 126 else "16" if n < 65536 else "64"
    elif form == "16" and n >= 65536:
        form = "64"
    head = bytes((first,))
    mbit = 0x80 if masked else 0
    if form == "7":
        head += bytes((mbit | n,))
    elif form == "16":
        head += bytes((mbit | 126,)) + struct.pack("!H", n)
    else:
        head += bytes((mbit | 127,)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + speedups.apply_mask(payload, mask, n)


texts = st.text(max_size=300).map(str.encode)
frames = st.one_of(
    st.builds(frame, st.just(1), texts),  # the common case
    st.builds(frame, st.just(1), st.binary(max_size=200)),  # often invalid UTF-8
    st.builds(frame, st.just(2), st.binary(max_size=200)),
    st.builds(frame, st.just(9), st.binary(max_size=20)),  # ping
    st.builds(frame, st.just(10), st.binary(max_size=20)),  # pong
    st.builds(frame, st.just(1), texts, st.booleans(), st.booleans(),
              st.sampled_from(["min", "16", "64"]), st.sampled_from([0, 0, 4, 1])),
    st.builds(frame, st.just(0), texts, st.booleans()),  # continuation
    st.builds(frame, st.just(1), st.just(b"x" * 66000)),  # above the fast path's limit
    st.builds(frame, st.sampled_from([3, 7, 11]), st.binary(max_size=5)),  # unknown opcode
    # close, empty or with a status code and a reason: the reader answers it and ends,
    # whatever follows it in the same read
    st.builds(frame, st.just(8), st.one_of(st.just(b""), st.builds(
        lambda code, why: struct.pack("!H", code) + why,
        st.sampled_from([1000, 1001, 1002, 1011, 4000, 999]), texts))),
)


def _run(data: bytes, cuts: list[int], fast: bool):
    """Messages a reader returns for `data` (sent in pieces at `cuts`), and what it wrote."""
    a, b = green_socket.socketpair()
    ws = eventlet.websocket.RFC6455WebSocket(a, {}, version=13)
    ws.max_frame_length = 1000
    buf = ws.socket = BufferedReceive(a)

    def feed():
        last = 0
        try:
            for c in [*sorted(set(cuts)), len(data)]:
                if last < c <= len(data):
                    b.sendall(data[last:c])
                    eventlet.sleep(0)
                    last = c
            b.shutdown(green_socket.SHUT_WR)
        except OSError:
            pass  # the reader closed on an error: the rest is not read

    feeder = eventlet.spawn(feed)
    got = []
    for _ in range(200):
        try:
            m = next_message(ws, buf) if fast else ws.wait()
        except Exception as e:
            got.append(("error", type(e).__name__))
            break
        got.append(m)
        if m is None:
            break
    feeder.wait()
    a.close()
    back = b""
    b.settimeout(1)
    while True:
        try:
            chunk = b.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        back += chunk
    b.close()
    return got, back


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 4000), max_size=6),
       st.integers(0, 3))
@example([frame(1, b'42["echo","hi"]')], [], 0)
@example([frame(1, b"a" * 200), frame(9, b"p"), frame(1, b"b")], [3, 7], 0)
@example([frame(1, b"\xff\xfe")], [], 0)
@example([frame(1, b"x", masked=False)], [], 0)
@example([frame(1, b"ab", fin=False), frame(0, b"cd")], [5], 0)
@example([frame(1, "é".encode())], [3], 0)
@example([frame(1, b'42["echo",1]'), frame(8, struct.pack("!H", 1000)), frame(1, b"x")], [], 0)
def test_next_message_reads_what_eventlet_reads(frames_, cuts, truncate):
    data = b"".join(frames_)
    if truncate and data:
        data = data[:-truncate]  # the peer goes away mid-frame
    assert _run(data, cuts, fast=True) == _run(data, cuts, fast=False)
