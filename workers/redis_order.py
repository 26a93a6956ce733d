"""Session hand-over ordered with the broadcasts of one Redis channel (`--handover yes`
with `--redis` and `--redis-channels single`): a session that moves while room
messages fly gets each of them exactly once.

Why something is needed
-----------------------
Without it a message published during a move can reach the session twice or
not at all: the old worker W delivers what its listener has read by the time
the session leaves, the new worker V what its listener reads after the session
arrived, and the two listeners are at different places in the channel (either
may lag; V's may be ahead). A worker also delivers its own emits to its own
clients at once (python-socketio's PubSubManager.emit) and ignores them when
Redis sends them back, so an emit of W just before the move reached the
session from W and reaches it again from V when V reads it; one of V's just
before the session arrived reached neither (V delivered it without the
session, and W may not have read it yet).

What makes it possible: on one channel of one Redis server every subscriber
receives the publishes in the same order (PUBLISH writes the message to each
subscriber's output buffer as it runs, one command at a time), so a position in
the channel means the same thing to every worker. A worker's own publishes
reach the channel in the order it made them (one publishing connection,
workers/redis_manager.py).

The design
----------
- Every message a worker publishes carries an id, `"imc_id": [PUB, N, LOCAL]`:
  PUB the worker's publisher id (random, 8 hex digits), N its count of
  publishes (1, 2, ...), LOCAL 1 when the publisher delivered it to its own
  clients at once (an emit; with `--recovery-window` only an emit with an ack:
  the others come back from Redis with their offset and are delivered then).
  Other fields are untouched: python-socketio's RedisManager and external
  emitters ignore the key, and their own messages (without it) still count as
  positions.
- Each listener counts the messages it reads (`index`) and keeps the last
  RING_KEEP with their index and id.
- The old worker puts in the session's state, with no yield between this and
  the session's removal (so its listener is between two messages):
  `cursor` = [PUB, N, K], the last identified message its listener had
  applied and how many messages it applied after that one; and `had` =
  {PUB: [LO, HI]}: the session already got every LOCAL message of PUB numbered
  LO < N <= HI (its own: from 0, or from when the session arrived, to its last
  publish).
- The new worker, when the session arrives (on the same no-yield path as its
  registration in the rooms), finds the cursor in its own count:
  * passed already: it delivers to the session alone, if addressed to it (the
    room, namespace and skip_sid rules), each message of the ring after the
    cursor, except those `had` says it got;
  * not reached yet: it holds every channel message back from that session
    until its listener passes the cursor (the old worker delivered those);
  then, for the messages after the cursor: those `had` covers are skipped for
  the session, and its own LOCAL publishes from before the session arrived
  (delivered without it, and ignored when Redis sends them back) are
  delivered to it alone when they come back. The session's entry ends when
  all of that is behind the listener: then the plain rules hold again.
- A session that moves again while its entry is open carries the entry on
  (the older cursor if this worker had not reached it, the open `had`).

Bounds and fallbacks (each logged): an entry lives at most ORDER_WAIT seconds
(a cursor never reached, e.g. the new worker's subscription was down when the
cursor's message went by: the session then gets the channel from then on,
and what was held may be missed or duplicated); a cursor that has already
left the ring (the new worker was more than RING_KEEP messages ahead) gets no
catch-up; an old worker that had read no message with an id gives no cursor
(both cases: deliveries from then on, as without ordering). Only emits are
ordered, as with the master relay: a room change or disconnect published by
another worker for this very sid during the move is not.

With `--redis-channels interest` there is no single order: a worker hears a
room's messages on the room's channel, possibly on another Redis server,
each channel in its own order, and a session's rooms are not the same
channels on both workers at the moment of the move. So this is single-channel
only; with interest channels a message published while a session moves can
still reach it twice or not at all (README).
"""

from __future__ import annotations

import collections
import logging
import secrets
import time

log = logging.getLogger("imcluster.worker")

KEY = "imc_id"
# Messages each listener keeps (a session arriving from a worker whose listener
# lags this one's by more than this gets no catch-up, and says so).
RING_KEEP = 4096
# Seconds a moved session's entry may stay open.
ORDER_WAIT = 10.0
# Publishers whose last number is remembered (workers come and go).
MAX_PUBLISHERS = 1024


class _Entry:
    """A session moved in, whose deliveries follow the old worker's cursor."""

    __slots__ = ("eio_sid", "cursor", "target", "passed", "had", "own", "deadline")

    def __init__(self, eio_sid: str, cursor, had: dict, own: int):
        self.eio_sid = eio_sid
        self.cursor = cursor  # [PUB, N, K] from the old worker, or None
        self.target: int | None = None  # the cursor in this listener's count, once known
        self.passed = False
        self.had = had  # {PUB: (LO, HI)}
        self.own = own  # this worker's publishes before the session arrived
        self.deadline = time.monotonic() + ORDER_WAIT


class ChannelOrder:
    """One worker's side (see the module): ids on what it publishes, the count
    and ring of what its listener reads, and the sessions moved in."""

    def __init__(self, manager):
        self.manager = manager
        self.me = secrets.token_hex(4)
        self.published = 0
        self.index = 0  # messages the listener read
        self.ring: collections.deque = collections.deque()  # (index, pub, n, local, data)
        self.at: dict[tuple[str, int], int] = {}  # (pub, n) -> index, for those in the ring
        self.last: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.mark: tuple[str, int, int] | None = None  # last identified (pub, n, index)
        self.entries: dict[str, _Entry] = {}  # Engine.IO sid ->

    # ---- publishing ---------------------------------------------------------------------

    def stamp(self, data: dict) -> dict:
        """`data` with its id (a copy)."""
        self.published += 1
        local = data.get("method") == "emit" and not (
            self.manager.recovery is not None and data.get("callback") is None)
        return {**data, KEY: [self.me, self.published, 1 if local else 0]}

    # ---- the listener -------------------------------------------------------------------

    def heard(self, data: dict) -> dict:
        """Called by the listener for every message it reads, in order, before it
        acts on it; returns the message to act on (skip_sid extended for the
        sessions that must not get it from here)."""
        self.index += 1
        i = self.index
        pub, n, local = _id(data)
        if pub is not None:
            self.last[pub] = n
            self.last.move_to_end(pub)
            if len(self.last) > MAX_PUBLISHERS:
                self.last.popitem(last=False)
            self.mark = (pub, n, i)
            self.at[(pub, n)] = i
        self.ring.append((i, pub, n, local, data))
        if len(self.ring) > RING_KEEP:
            _, p, k, _, _ = self.ring.popleft()
            if p is not None:
                self.at.pop((p, k), None)
        if not self.entries:
            return data
        skip: list[str] = []
        now = time.monotonic()
        for e in list(self.entries.values()):
            if now > e.deadline:
                self._expire(e)
                continue
            if not e.passed:
                if e.target is None and pub is not None and pub == e.cursor[0] \
                        and n >= e.cursor[1]:
                    if n == e.cursor[1]:
                        e.target = i + e.cursor[2]
                    else:
                        log.warning("%s: moved in, but this worker's listener missed the "
                                    "old worker's position; delivering from here",
                                    e.eio_sid)
                        e.target = i - 1
                if e.target is None or i <= e.target:
                    skip.append(e.eio_sid)  # the old worker delivered it
                    continue
                e.passed = True
            if data.get("method") == "emit" and local:
                lo_hi = e.had.get(pub)
                if lo_hi is not None and lo_hi[0] < n <= lo_hi[1]:
                    skip.append(e.eio_sid)
                elif pub == self.me and n <= e.own:
                    self._deliver(e.eio_sid, data)  # its publisher's listener ignores it
            if self._done(e):
                del self.entries[e.eio_sid]
        if skip and data.get("method") == "emit":
            data = self._skipping(data, skip)
        return data

    def _skipping(self, data: dict, eio_sids: list[str]) -> dict:
        ns = data.get("namespace") or "/"
        mgr = self.manager
        sids = [sid for sid in (mgr.sid_from_eio_sid(e, ns) for e in eio_sids)
                if sid is not None]
        if not sids:
            return data
        skip = data.get("skip_sid")
        skip = list(skip) if isinstance(skip, list) else ([] if skip is None else [skip])
        return {**data, "skip_sid": skip + sids}

    def _done(self, e: _Entry) -> bool:
        return (e.passed and self.last.get(self.me, 0) >= e.own
                and all(self.last.get(p, 0) >= hi for p, (_, hi) in e.had.items()))

    def _expire(self, e: _Entry) -> None:
        del self.entries[e.eio_sid]
        if not e.passed:
            log.warning("%s: moved in, but this worker's listener did not reach the old "
                        "worker's position in %.0f s (Redis subscription down?): it gets "
                        "broadcasts from here on, a few may be missed or twice",
                        e.eio_sid, ORDER_WAIT)

    def _deliver(self, eio_sid: str, data: dict) -> None:
        try:
            self.manager.emit_to_session(eio_sid, data)
        except Exception:  # one odd message must not stop the listener
            log.exception("%s: delivering a broadcast to a session moved in", eio_sid)

    # ---- hand-over ----------------------------------------------------------------------

    def state_of(self, eio_sid: str) -> dict:
        """What the session's state carries (see the module); exact only when taken
        with no yield before the session leaves the manager (the listener is then
        between two messages)."""
        e = self.entries.get(eio_sid)
        if e is not None and not e.passed:
            cursor = e.cursor
        elif self.mark is not None:
            pub, n, i = self.mark
            cursor = [pub, n, self.index - i]
        else:
            cursor = None
        had = {}
        if e is not None:
            had = {p: [lo, hi] for p, (lo, hi) in e.had.items() if self.last.get(p, 0) < hi}
        had[self.me] = [e.own if e is not None else 0, self.published]
        return {"cursor": cursor, "had": had}

    def left(self, eio_sid: str) -> None:
        """The session has gone."""
        self.entries.pop(eio_sid, None)

    def arrived(self, eio_sid: str, state) -> None:
        """The session `eio_sid` is registered here (its rooms), with `state` from
        `state_of` on its old worker: catch up or hold (see the module). Call with
        no yield since the registration."""
        if not isinstance(state, dict):
            log.info("%s: moved in without a channel position (from a worker without "
                     "ordering); broadcasts from here on", eio_sid)
            return
        try:
            cursor = state.get("cursor")
            if cursor is not None:
                pub, n, k = cursor
                cursor = [str(pub), int(n), int(k)]
            had = {str(p): (int(lo), int(hi)) for p, (lo, hi) in
                   (state.get("had") or {}).items()}
        except (TypeError, ValueError):
            log.warning("%s: moved in with an unusable channel position; broadcasts "
                        "from here on", eio_sid)
            return
        e = _Entry(eio_sid, cursor, had, self.published)
        if cursor is None:
            log.info("%s: its old worker had read no broadcast with an id: broadcasts "
                     "from here on", eio_sid)
            e.passed = True
        elif self.last.get(cursor[0], -1) >= cursor[1]:
            i0 = self.at.get((cursor[0], cursor[1]))
            if i0 is None:
                log.warning("%s: moved in from a worker more than %d messages behind "
                            "this one (or this one missed its position): no catch-up",
                            eio_sid, RING_KEEP)
                e.passed = True
            elif i0 + cursor[2] <= self.index:
                self._catch_up(e, i0 + cursor[2])
                e.passed = True
            else:
                e.target = i0 + cursor[2]
        if not self._done(e):
            self.entries[eio_sid] = e

    def _catch_up(self, e: _Entry, after: int) -> None:
        """Deliver to the session what this listener read after `after`, which the
        old worker had not, except what `had` says it got."""
        for i, pub, n, local, data in list(self.ring):
            if i <= after or data.get("method") != "emit":
                continue
            lo_hi = e.had.get(pub) if local else None
            if lo_hi is not None and lo_hi[0] < n <= lo_hi[1]:
                continue
            self._deliver(e.eio_sid, data)


def _id(data: dict) -> tuple:
    tag = data.get(KEY)
    if (isinstance(tag, list) and len(tag) == 3 and isinstance(tag[0], str)
            and isinstance(tag[1], int) and isinstance(tag[2], int)):
        return tag[0], tag[1], bool(tag[2])
    return None, 0, False
