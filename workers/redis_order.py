"""Session hand-over ordered with the broadcasts of Redis channels (`--handover yes`
with `--redis`): a session that moves while room messages fly gets each of them
exactly once, on one channel (`--redis-channels single`) and, with the heir
readied first, on interest channels (below).

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
- Each listener counts the messages it reads, keeps the last RING_KEEP with
  their ids, and the last number it read of each publisher.
- What a listener has applied is a prefix of the channel: everything from its
  subscription (long before any session it holds) to where it is now. So the
  old worker puts in the session's state, with no yield between this and the
  session's removal (its listener is then between two messages), the last
  number it read of each publisher (`seen`, the STATE_PUBLISHERS latest) and
  its last identified message with the count of plain ones after it (`mark`:
  PUB, N, K, for messages without an id), and `had` = {PUB: [LO, HI]}: the
  session already got every LOCAL message of PUB numbered LO < N <= HI (its
  own publishes: from 0, or from when the session arrived, to its last).
  A message with id (PUB, N) was applied by the old worker if and only if
  N <= seen[PUB]; a publisher it never heard published after its position.
- The new worker, when the session arrives (on the same no-yield path as its
  registration in the rooms), looks for the last message of its ring that the
  old worker applied:
  * with messages after it, or none found while it has read later numbers of
    a publisher in `seen` (it subscribed after that position, a worker READY
    before its subscription was confirmed): it is ahead, and delivers to the
    session alone, if addressed to it (the room, namespace and skip_sid
    rules), each of those later messages, except those `had` says it got;
  * otherwise it is behind, and holds from that session every channel message
    the old worker applied, until the first it had not;
  after that position, the messages `had` covers are skipped for the session,
  and this worker's own LOCAL publishes from before the session arrived
  (delivered without it, and ignored when Redis sends them back) are
  delivered to it alone when they come back. The session's entry ends when
  all of that is behind the listener: then the plain rules hold again. The
  position is behind the listener once it read the mark and the K plain
  messages after it (at once, with no next message needed: a quiet channel);
  numbers in `seen` it never read came before the mark, before it listened
  there, and hold nothing.
- A session that moves again while its entry is open carries the entry on
  (the older position if this worker had not reached it, the open `had`).

A message Redis delivers twice (a publisher's batch run twice: redis-py retries
it once on a fresh connection when Redis answered nothing within REDIS_TIMEOUT,
and a Redis that stalled past that runs both) is acted on once: each listener
remembers the last RING_KEEP ids it read, by channel, and drops a second copy
(`_replayed`, logged).

Bounds and fallbacks (each logged): an entry lives at most ORDER_WAIT seconds
(a position never passed, e.g. the new worker's subscription was down: the
session then gets the channel from then on, and what was held may be missed
or twice); a new worker more than RING_KEEP messages ahead delivers what its
ring holds (older ones are missed); an old worker that had read no message
with an id gives no position (deliveries from then on). Only emits are
ordered, as with the master relay: a room change or disconnect published by
another worker for this very sid during the move is not.

Interest channels (`--redis-channels interest`, and Redis Cluster sharded pub/sub)
---------------------------------------------------------------------------------
There is no one order: a room's messages travel on the room's channel, possibly
on another Redis server, a sid's on its worker's channel. But each channel has
one: Redis writes a channel's publishes to every subscriber connection in
publish order, and a worker reads each connection in order. So the same
mechanism runs per channel, one lane per channel a listener reads: a count,
the last number of each publisher read there, the mark, and the sessions
moved in whose deliveries on that channel follow their old worker's position
there. Numbers stay per publisher (one count, stamped once per publish): on
one channel a publisher's numbers still only grow, which is all a position
needs. The state carries `{"lanes": {channel: position}}`, one position (seen,
mark, had) for each channel the session's rooms are on
(InterestRedisManager.channels_of_session: its namespace's, each room's, its
sid's worker channel); the heir applies each to its lane of that channel.

What one channel had for free, that every worker had read the channel since
long before the session, is not so here: the heir may hold none of the
session's channels when it leaves (it subscribes when the session arrives),
and what was published between the old worker's position and the heir's
subscription would reach neither. So before any session leaves, the old
worker readies the heir (InterestRedisManager.prepare_heir; the master names
the heir in STOP): one request, on the heir's worker channel, naming every
channel of every session that will move; the heir subscribes to those it
lacks, holds them for PREPARE_HOLD, and once Redis confirmed each, publishes
a marker on it (`handover_mark`, with an id like any message). The old worker
moves its sessions once its listener has read each marker. Then on each
channel the heir hears everything after its marker, and the old worker's
position is after the marker: the heir's lane holds, from the marker on,
everything the old worker had not applied, and the rules above deliver each
message to the session exactly once. A worker that reads a marker for
someone else's hand-over (another host with a member in the room) records it
in its lane like any message, and the marker's handler drops it (unknown
token): it reaches no client.

A room a session joins after that round (a handler still running when the
drain began, another worker's enter_room for it) is synced the same way just
before the session's position is taken; and when the master names another
heir during the drain (the first stopped taking sessions: retired too, hung or
dead), the sessions still here are synced with the new one before they leave
(workers/heir.py; the state names the heir it was synced with, `heir`).

Bounds and fallbacks (logged): a channel whose marker was not read within
PREPARE_WAIT (3 s: Redis slow or down, or the heir gone) moves without the
guarantee (from the heir's subscription on), counted and logged by the old
worker at the end of the drain. A session already on its way when the heir
changed goes to the heir it names (`heir`) all the same, which moves it on if
it drains; if that one can take none (dead, hung) the master closes the
session, and its client reconnects (workers/heir.py). A worker that takes in
a session synced with another still logs it (`unprepared_arrivals`: it
should not happen).
A listener keeps at most MAX_LANES lanes (least recently read first, never
one with a moved session open) and RING_KEEP messages over all lanes
together.

Several rooms at once
---------------------
An emit to several rooms (or to a room named like a sid) is published on each
of their channels, one copy per channel, every copy with the same id (PUB, N:
stamped once) and `imc_chs`, the list of those channels. Each worker acts on it
once, at the first copy its listener reads (the `mid`, InterestRedisManager);
python-socketio then gives it once to each member of any of the rooms. The
copies come in no set order: two channels, maybe two Redis servers. So the old
worker W may have acted on it from a channel the session is not on, or from
one of its channels while the copy on the other is still unread; the heir V
the same, independently. Per lane alone, a session in two of the rooms could
get it twice (once by W, once by V from the other lane) or not at all (V acted
on it, from another channel, before the session arrived).

So the decision is taken once per session over all its channels, by V, from
what W says: every copy still passes through its lane (`heard` with
`first=False` for the ones not acted on), so the lanes' positions are those of
one channel as before; and W puts in the state `multi`, the ids of such
messages it acted on whose copy on one of the session's channels it has not
read yet. The session got message (PUB, N) on W if and only if it is in
`multi`, or for one of the session's channels C among `imc_chs`, `seen[C]`
reaches N (W read that copy: a publisher's copies on one channel come in
number order), or `had[C]` covers it (W's own emit, delivered at once). (If W
acted on it, the session, being in one of its rooms there, got it; if W did
not, W read no copy of it: every `seen[C]` is below N and it is not in
`multi`.) Then V, for each session moved in (`_Moved`, ORDER_WAIT long):
- acting on it now (the first copy V reads): skips the session if it got it;
- having acted on it before the session arrived (or published it): gives it
  to the session alone, if it did not get it, at the first copy V reads (or
  has in its ring past W's position) on one of the session's channels. Such a
  copy comes: the session did not get it, so W had not read its copy on that
  channel, which lies after W's position, after V's marker;
- once per session (`decided`); a later copy does nothing.
A session that moves on from V names in its `multi` what it got there (V acted
on it while the session was there, or decided it for it) and what W's `multi`
named that V has not acted on yet. Bounds: a copy that comes more than
ORDER_WAIT after the session arrived is not decided for it (logged when one
was awaited), and at most MAX_STATE_MULTI ids move with a session (logged).
"""

from __future__ import annotations

import collections
import logging
import secrets
import time

log = logging.getLogger("imcluster.worker")

KEY = "imc_id"
# Messages each listener keeps (a session arriving from a worker whose listener
# lags this one's by more than this may miss some, and says so).
RING_KEEP = 4096
# Seconds a moved session's entry may stay open.
ORDER_WAIT = 10.0
# Publishers whose last number a listener remembers (workers come and go), and
# how many of the latest a session's state names.
MAX_PUBLISHERS = 1024
STATE_PUBLISHERS = 64
# The key that lists the channels of a message published on several (interest
# channels; set by InterestRedisManager._publish), and how many such messages a
# worker remembers (for ORDER_WAIT each) and a session's state may name.
CHANNELS = "imc_chs"
MAX_COPIES = 100_000
MAX_STATE_MULTI = 512
# Channels whose positions a listener keeps (interest channels; the least recently
# used one without a moved session goes first).
MAX_LANES = 10_000


class _Entry:
    """A session moved in, whose deliveries on one lane follow the old worker's
    position there."""

    __slots__ = ("eio_sid", "seen", "mark", "target", "passed", "had", "own", "deadline")

    def __init__(self, eio_sid: str, seen: dict, mark, had: dict, own: int):
        self.eio_sid = eio_sid
        self.seen = seen  # {PUB: N}: the last of each publisher the old worker applied
        self.mark = mark  # (PUB, N, K): its last identified message, K plain ones after
        self.target: int | None = None  # the mark plus K in this listener's count
        self.passed = False  # this listener is past the old worker's position
        self.had = had  # {PUB: (LO, HI)}
        self.own = own  # this worker's last publish on the lane before the session arrived
        self.deadline = time.monotonic() + ORDER_WAIT

    def applied(self, pub, n: int) -> bool | None:
        """Whether the old worker had applied the message with this id: True, False,
        or None for a message without an id (its place says)."""
        if pub is None:
            return None
        # A publisher it never heard: published after its position (its listener
        # had read everything from long before this session to that position).
        return n <= self.seen.get(pub, 0)


class _Lane:
    """What one listener read of one channel: its count, the last number of each
    publisher, its last identified message, and the sessions moved in whose
    deliveries on it follow their old worker's position."""

    __slots__ = ("channel", "index", "last", "mark", "entries")

    def __init__(self, channel: str | None):
        self.channel = channel
        self.index = 0  # messages read on it
        self.last: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.mark: tuple[str, int, int] | None = None  # last identified (pub, n, index)
        self.entries: dict[str, _Entry] = {}  # Engine.IO sid ->


class _Copies:
    """A message this worker acted on that was published on several channels (an
    emit to several rooms): its channels, those whose copy it has not read yet,
    and when it acted (its count of such acts)."""

    __slots__ = ("chs", "unread", "seq", "local", "until")

    def __init__(self, chs: list, seq: int, local: bool, until: float):
        self.chs = chs
        self.unread = set(chs)
        self.seq = seq
        self.local = local
        self.until = until


class _Moved:
    """A session moved in (interest channels): what it had got of the messages
    published on several channels, over all its channels (see the module,
    "Several rooms at once")."""

    __slots__ = ("eio_sid", "lanes", "applied", "since", "decided", "pending", "deadline")

    def __init__(self, eio_sid: str, lanes: dict, applied: set, since: int):
        self.eio_sid = eio_sid
        self.lanes = lanes  # {channel: (seen, had)} from the old worker's state
        self.applied = applied  # {(PUB, N)}: the old worker acted on them, copies unread
        self.since = since  # this worker's count of acts when the session arrived
        self.decided: set = set()  # ids it got, or was given, here
        self.pending: set = set()  # ids that may still need a decision
        self.deadline = time.monotonic() + ORDER_WAIT

    def got(self, pub: str, n: int, local: bool, chs) -> bool:
        """Whether the session had got message (PUB, N), published on `chs`, on its
        old worker: it acted on it (`applied`), or read its copy on one of the
        session's channels (`seen`), or it was its own emit, delivered at once
        (`had`)."""
        if (pub, n) in self.applied:
            return True
        for c in chs:
            lane = self.lanes.get(c)
            if lane is None:
                continue
            seen, had = lane
            if seen.get(pub, 0) >= n:
                return True
            lo_hi = had.get(pub) if local else None
            if lo_hi is not None and lo_hi[0] < n <= lo_hi[1]:
                return True
        return False


class ChannelOrder:
    """One worker's side (see the module): ids on what it publishes, the count
    and ring of what its listener reads per lane (one lane: the single channel;
    with interest channels, one per channel), and the sessions moved in."""

    def __init__(self, manager, lanes: bool = False):
        """`lanes`: False for one channel (every message is on the one lane), True
        for interest channels (`heard` and `stamp` name the channel)."""
        self.manager = manager
        self.by_channel = lanes
        self.me = secrets.token_hex(4)
        self.published = 0
        # (lane, index, pub, n, local, data), every lane's together, oldest first.
        self.ring: collections.deque = collections.deque()
        self.lanes: collections.OrderedDict[str | None, _Lane] = collections.OrderedDict()
        # The last number this worker published on each channel (None: the one).
        self.sent: collections.OrderedDict[str | None, int] = collections.OrderedDict()
        # This worker's last marker on each channel (handover_mark, as an heir).
        self.marked: collections.OrderedDict[str | None, int] = collections.OrderedDict()
        self.open: dict[str, set] = {}  # Engine.IO sid -> lanes holding an entry for it
        # Interest channels, on a draining worker: the channels synced with the heir
        # (InterestRedisManager.prepare_heir; None before), and the sessions that
        # left with a channel outside them (logged at the end of the drain).
        self.synced: set[str] | None = None
        self.synced_for: int | None = None  # the heir they were synced with
        self.unsynced_moves = 0
        # Sessions that arrived here synced with another heir (the master named
        # this worker after they had left: workers/heir.py).
        self.unprepared_arrivals = 0
        # Messages published on several channels that this worker acted on (or
        # published), while any of their copies may still come: (PUB, N) ->
        # _Copies, oldest first; and by channel, those whose copy there is unread.
        self.copies: collections.OrderedDict[tuple, _Copies] = collections.OrderedDict()
        self.unread_on: dict[str, set] = {}
        self.acts = 0  # such messages acted on so far (_Copies.seq, _Moved.since)
        # Sessions moved in, for those messages (interest channels): Engine.IO sid ->
        # _Moved, and by channel (each of the session's channels).
        self.moved: dict[str, _Moved] = {}
        self.moved_on: dict[str, dict[str, _Moved]] = {}
        self.next_sweep = 0.0
        # The ids this listener read last, by channel, to drop one Redis delivers
        # twice (_replayed); and how many were.
        self.recent: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self.replays = 0
        self.replays_logged = -60.0

    @property
    def entries(self) -> dict[str, set]:
        """The sessions moved in whose deliveries still follow their old worker's
        position (Engine.IO sid -> the lanes where they do)."""
        return self.open

    def lane(self, channel: str | None) -> _Lane:
        lane = self.lanes.get(channel)
        if lane is None:
            lane = self.lanes[channel] = _Lane(channel)
            if len(self.lanes) > MAX_LANES:
                for c, old in list(self.lanes.items())[:len(self.lanes) - MAX_LANES]:
                    if not old.entries:
                        del self.lanes[c]  # forgotten: a move then finds no position
        else:
            self.lanes.move_to_end(channel)
        return lane

    # ---- publishing ---------------------------------------------------------------------

    def stamp(self, data: dict, channels=(None,)) -> dict:
        """`data` with its id (a copy); `channels`: those it is published on."""
        self.published += 1
        for c in channels:
            self.sent[c] = self.published
            self.sent.move_to_end(c)
        while len(self.sent) > MAX_LANES:
            self.sent.popitem(last=False)
        if data.get("method") == "handover_mark":
            # Published once Redis confirmed this worker's subscription there: an old
            # worker that read it is at a position this listener will reach.
            for c in channels:
                self.marked[c] = self.published
                self.marked.move_to_end(c)
            while len(self.marked) > MAX_LANES:
                self.marked.popitem(last=False)
        local = data.get("method") == "emit" and not (
            self.manager.recovery is not None and data.get("callback") is None)
        if self.by_channel and local and len(channels) > 1:
            # Delivered here at once (before this call: PubSubManager.emit), to the
            # sessions here now; a session moving in later may need it.
            self._acted(self.me, self.published, list(channels), True)
        return {**data, KEY: [self.me, self.published, 1 if local else 0]}

    # ---- the listener -------------------------------------------------------------------

    def heard(self, data: dict, channel: str | None = None, first: bool = True) -> dict | None:
        """Called by the listener for every message it reads, in order, before it
        acts on it, with the channel it came on (interest channels); returns the
        message to act on (skip_sid extended for the sessions that must not get
        it from here), or None for a copy of a message published on several
        channels that this worker acted on already (`first` False: one read on
        another channel before)."""
        lane = self.lane(channel if self.by_channel else None)
        pub, n, local = _id(data)
        if pub is not None:
            key = (lane.channel, pub, n)
            if key in self.recent:
                return self._replayed(pub, n, lane)
            self.recent[key] = None
            if len(self.recent) > RING_KEEP:
                self.recent.popitem(last=False)
        lane.index += 1
        i = lane.index
        chs = data.get(CHANNELS) if self.by_channel and pub is not None else None
        if not (isinstance(chs, list) and data.get("method") == "emit"):
            chs = None
        self._record(lane, i, pub, n, local, data)
        if chs is not None:
            return self._heard_copy(lane, i, pub, n, local, chs, data, channel, first)
        if not lane.entries:
            return data if first else None
        skip: list[str] = []
        now = time.monotonic()
        for e in list(lane.entries.values()):
            if now > e.deadline:
                self._expire(e, lane)
                continue
            if not e.passed:
                applied = e.applied(pub, n)
                if applied is None:
                    applied = e.target is None or i <= e.target
                elif applied and e.mark is not None and (pub, n) == e.mark[:2]:
                    e.target = i + e.mark[2]
                if applied:
                    skip.append(e.eio_sid)  # the old worker delivered it
                    if e.target is not None and i >= e.target:
                        # Its position itself: what comes next is new to the session
                        # (a quiet channel may have no next message for long).
                        e.passed = True
                        if self._done(e, lane):
                            self._close(e, lane)
                    continue
                e.passed = True
            if data.get("method") == "emit" and local:
                lo_hi = e.had.get(pub)
                if lo_hi is not None and lo_hi[0] < n <= lo_hi[1]:
                    skip.append(e.eio_sid)
                elif pub == self.me and n <= e.own:
                    self._deliver(e.eio_sid, data)  # its publisher's listener ignores it
            if self._done(e, lane):
                self._close(e, lane)
        if not first:
            return None
        if skip and data.get("method") == "emit":
            data = self._skipping(data, skip)
        return data

    def _replayed(self, pub: str, n: int, lane: _Lane) -> None:
        """A message this listener read already on this channel, delivered again by
        Redis: its publisher's batch was sent twice (redis-py's one retry, on a
        fresh connection, after Redis answered nothing within REDIS_TIMEOUT; a
        Redis that stalls past it runs both). Acted on once; counted, logged."""
        self.replays += 1
        now = time.monotonic()
        if now >= self.replays_logged + 60:
            self.replays_logged = now
            log.warning("redis delivered a broadcast twice (%s #%d%s: its publisher sent "
                        "its batch again after a timeout); the copy is dropped (%d so far)",
                        pub, n, _on(lane), self.replays)
        return None

    def _record(self, lane: _Lane, i: int, pub, n: int, local: bool, data: dict) -> None:
        """The lane's count, last numbers, mark and the ring: every copy read."""
        if pub is not None:
            lane.last[pub] = n
            lane.last.move_to_end(pub)
            if len(lane.last) > MAX_PUBLISHERS:
                lane.last.popitem(last=False)
            lane.mark = (pub, n, i)
        self.ring.append((lane, i, pub, n, local, data))
        if len(self.ring) > RING_KEEP:
            self.ring.popleft()

    # ---- several rooms at once (interest channels) ------------------------------------

    def _heard_copy(self, lane: _Lane, i: int, pub: str, n: int, local: bool, chs: list,
                    data: dict, channel, first: bool) -> dict | None:
        """One copy of an emit published on the channels `chs` (see the module,
        "Several rooms at once"): the lane's positions move as for any message;
        whether a moved session gets it from here is decided once per session,
        over all its channels."""
        key = (pub, n)
        now = time.monotonic()
        if now > self.next_sweep:
            self._sweep(now)
        # The lane: only where each moved session's old position lies (passed).
        for e in list(lane.entries.values()):
            if now > e.deadline:
                self._expire(e, lane)
                continue
            if not e.passed:
                if not e.applied(pub, n):
                    e.passed = True
                elif e.mark is not None and (pub, n) == e.mark[:2]:
                    e.target = i + e.mark[2]
                if e.target is not None and i >= e.target:
                    e.passed = True  # its position itself (as in heard)
            if e.passed and self._done(e, lane):
                self._close(e, lane)
        # Acted on now: the first copy here, of another worker's message (this
        # worker's own emits were delivered when published; python-socketio
        # ignores them when Redis sends them back).
        acting = first and pub != self.me
        cp = self.copies.get(key)
        if acting and cp is None:
            cp = self._acted(pub, n, chs, local)
        if cp is not None:
            cp.unread.discard(channel)
            waiting = self.unread_on.get(channel)
            if waiting is not None:
                waiting.discard(key)
                if not waiting:
                    del self.unread_on[channel]
        skip: list[str] = []
        if acting:
            # Every moved session with one of the channels: it gets it now (if in
            # one of the rooms) unless its old worker gave it already.
            for m in self._moved_on(chs):
                if key in m.decided:
                    continue
                m.decided.add(key)
                m.pending.discard(key)
                if m.got(pub, n, local, chs):
                    skip.append(m.eio_sid)
        else:
            # Acted on before (or published here): a session that moved in since,
            # with this channel, and was not given it yet.
            seq = cp.seq if cp is not None else -1
            for m in list(self.moved_on.get(channel, {}).values()):
                if key not in m.decided and seq <= m.since:
                    self._late(m, key, local, chs, data)
        if not first:
            return None
        if skip:
            data = self._skipping(data, skip)
        return data

    def _acted(self, pub: str, n: int, chs: list, local: bool) -> _Copies:
        self.acts += 1
        cp = self.copies[(pub, n)] = _Copies(chs, self.acts, local,
                                             time.monotonic() + ORDER_WAIT)
        for c in chs:
            self.unread_on.setdefault(c, set()).add((pub, n))
        while len(self.copies) > MAX_COPIES or (
                self.copies and next(iter(self.copies.values())).until < time.monotonic()):
            old_key, old = self.copies.popitem(last=False)
            for c in old.unread:
                waiting = self.unread_on.get(c)
                if waiting is not None:
                    waiting.discard(old_key)
                    if not waiting:
                        del self.unread_on[c]
        return cp

    def _late(self, m: _Moved, key: tuple, local: bool, chs, data: dict) -> None:
        """Message `key`, acted on here before session `m` arrived: delivered to it
        alone unless its old worker gave it already; once."""
        m.decided.add(key)
        m.pending.discard(key)
        if not m.got(key[0], key[1], local, chs):
            self._deliver(m.eio_sid, data)

    def _coming(self, channel: str, key: tuple) -> bool:
        """Whether the copy on `channel` of message `key` (PUB, N), unread here, may
        still come: not once this listener read a later number of PUB there (a
        publisher's copies on one channel come in number order, so that one was
        published before this listener held the channel: this worker's own emit
        to a sid elsewhere, before it adopted that worker's channel)."""
        lane = self.lanes.get(channel)
        return lane is None or lane.last.get(key[0], 0) < key[1]

    def _moved_on(self, chs) -> list[_Moved]:
        found: dict[str, _Moved] = {}
        for c in chs:
            found.update(self.moved_on.get(c, {}))
        return list(found.values())

    def _forget(self, m: _Moved) -> None:
        if self.moved.get(m.eio_sid) is m:
            del self.moved[m.eio_sid]
        for c in m.lanes:
            on = self.moved_on.get(c)
            if on is not None and on.get(m.eio_sid) is m:
                del on[m.eio_sid]
                if not on:
                    del self.moved_on[c]

    def _sweep(self, now: float) -> None:
        self.next_sweep = now + 1.0
        for m in [m for m in self.moved.values() if now > m.deadline]:
            m.pending = {k for k in m.pending if k not in self.copies or any(
                c in m.lanes and self._coming(c, k) for c in self.copies[k].chs)}
            if m.pending:
                log.warning("%s: moved in, and %d message(s) sent to several rooms at once "
                            "were still undecided after %.0f s (a copy never read: Redis "
                            "subscription down?): those may be missed", m.eio_sid,
                            len(m.pending), ORDER_WAIT)
            self._forget(m)

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

    def _done(self, e: _Entry, lane: _Lane) -> bool:
        return (e.passed and lane.last.get(self.me, 0) >= e.own
                and all(lane.last.get(p, 0) >= hi for p, (_, hi) in e.had.items()))

    def _close(self, e: _Entry, lane: _Lane) -> None:
        lane.entries.pop(e.eio_sid, None)
        lanes = self.open.get(e.eio_sid)
        if lanes is not None:
            lanes.discard(lane)
            if not lanes:
                del self.open[e.eio_sid]

    def _expire(self, e: _Entry, lane: _Lane) -> None:
        self._close(e, lane)
        if not e.passed:
            log.warning("%s: moved in, but this worker's listener did not get past the "
                        "old worker's position%s in %.0f s (Redis subscription down?): it "
                        "gets broadcasts from here on, a few may be missed or twice",
                        e.eio_sid, _on(lane), ORDER_WAIT)

    def _deliver(self, eio_sid: str, data: dict) -> None:
        try:
            self.manager.emit_to_session(eio_sid, data)
        except Exception:  # one odd message must not stop the listener
            log.exception("%s: delivering a broadcast to a session moved in", eio_sid)

    # ---- hand-over ----------------------------------------------------------------------

    def state_of(self, eio_sid: str, channels=None) -> dict:
        """What the session's state carries (see the module); exact only when taken
        with no yield before the session leaves the manager (the listener is then
        between two messages). `channels`: with interest channels, those the
        session's rooms are on (the state then has one position per channel,
        `{"lanes": {channel: position}}`)."""
        if not self.by_channel:
            return self._position(self.lane(None), eio_sid)
        if self.synced is not None and not self.synced.issuperset(channels or ()):
            self.unsynced_moves += 1
        state = {"lanes": {c: self._position(self.lanes.get(c) or _Lane(c), eio_sid)
                           for c in channels or ()},
                 "multi": self._got_multi(eio_sid, channels or ())}
        if self.synced_for is not None:
            state["heir"] = self.synced_for  # (the heir that takes it checks)
        return state

    def _got_multi(self, eio_sid: str, channels) -> list:
        """The messages published on several channels that the session got (from
        here, or before) and that a copy on one of its `channels` has not yet
        reached this worker's listener: [[PUB, N], ...] (the state's `multi`).
        The ones whose copy was read there are in `seen`."""
        m = self.moved.get(eio_sid)
        found = set()
        now = time.monotonic()
        for c in channels:
            for key in self.unread_on.get(c, ()):
                cp = self.copies.get(key)
                if cp is None or cp.until < now or not self._coming(c, key):
                    continue  # (given up: dropped at the next act; or never comes)
                # Acted on here while the session was here, or decided for it, or
                # it had it before: it got it. Acted on here before it arrived and
                # not decided yet: it did not (its next worker decides).
                if (m is None or cp.seq > m.since or key in m.decided
                        or m.got(key[0], key[1], cp.local, cp.chs)):
                    found.add(key)
        if m is not None:
            # Got on its old worker, not yet acted on here.
            found.update(k for k in m.applied if k not in self.copies)
        if len(found) > MAX_STATE_MULTI:
            log.warning("%s: %d messages sent to several rooms at once still in flight; "
                        "the newest %d move with the session (others may reach it twice)",
                        eio_sid, len(found), MAX_STATE_MULTI)
            found = set(sorted(found, key=lambda k: k[1])[-MAX_STATE_MULTI:])
        return [list(k) for k in sorted(found)]

    def _position(self, lane: _Lane, eio_sid: str) -> dict:
        e = lane.entries.get(eio_sid)
        seen = dict(list(lane.last.items())[-STATE_PUBLISHERS:])
        if e is not None and not e.passed:
            # Not yet where its old worker was: that position still holds.
            for p, k in e.seen.items():
                seen[p] = max(k, seen.get(p, 0))
            mark = list(e.mark) if e.mark is not None else None
        elif lane.mark is not None:
            pub, n, i = lane.mark
            mark = [pub, n, lane.index - i]
        else:
            mark = None
        had = {}
        if e is not None:
            had = {p: [lo, hi] for p, (lo, hi) in e.had.items() if lane.last.get(p, 0) < hi}
        hi = self.sent.get(lane.channel, 0)
        if lane.last.get(self.me, 0) < hi:
            # Its own publishes not yet read back: the heir skips those (the ones
            # read back are in `seen`; with interest channels its last one there
            # may be from before the heir listened, and is then not waited for).
            had[self.me] = [e.own if e is not None else 0, hi]
        return {"seen": seen, "mark": mark, "had": had}

    def left(self, eio_sid: str) -> None:
        """The session has gone."""
        for lane in self.open.pop(eio_sid, ()):
            lane.entries.pop(eio_sid, None)
        m = self.moved.get(eio_sid)
        if m is not None:
            self._forget(m)

    def arrived(self, eio_sid: str, state, channels=None) -> None:
        """The session `eio_sid` is registered here (its rooms), with `state` from
        `state_of` on its old worker: catch up or hold (see the module), on each
        of `channels` (interest channels: those its rooms are on here). Call with
        no yield since the registration."""
        if not self.by_channel:
            self._arrived(self.lane(None), eio_sid, state)
            return
        lanes = state.get("lanes") if isinstance(state, dict) else None
        if not isinstance(lanes, dict):
            log.warning("%s: moved in without channel positions (from a worker without "
                        "ordering?); broadcasts from here on", eio_sid)
            return
        channels = list(channels or ())
        heir = state.get("heir")
        me = getattr(self.manager, "me", None)
        if isinstance(heir, int) and me is not None and heir != me[1]:
            # Synced with another worker, then sent here: what was published on its
            # channels between its old worker's position and this worker's
            # subscription is missed. The master sends such a session to the worker
            # it names or closes it (master/core.py `_move_to_synced`): a master
            # without that rule, or a bug.
            self.unprepared_arrivals += 1
            if self.unprepared_arrivals in (1, 10, 100, 1000):
                log.warning("%s: moved in, synced with worker %d, not with this one (%d so "
                            "far): room messages in flight may have been missed",
                            eio_sid, heir,
                            self.unprepared_arrivals)
        now = time.monotonic()
        if now > self.next_sweep:
            self._sweep(now)
        self._moved_in(eio_sid, lanes, state.get("multi"), channels)
        for c in channels:
            if c in lanes:
                self._arrived(self.lane(c), eio_sid, lanes[c])
            else:
                log.warning("%s: moved in without a position%s; broadcasts there from "
                            "here on", eio_sid, _on(self.lane(c)))

    def _moved_in(self, eio_sid: str, lanes: dict, multi, channels: list) -> _Moved:
        """The session's record for messages published on several channels."""
        parsed = {}
        for c, st in lanes.items():
            try:
                seen = {str(p): int(k) for p, k in st["seen"].items()}
                had = {str(p): (int(lo), int(hi)) for p, (lo, hi) in
                       (st.get("had") or {}).items()}
            except (TypeError, ValueError, KeyError, AttributeError):
                continue  # (_arrived says so for this channel)
            parsed[c] = (seen, had)
        applied = set()
        try:
            applied = {(str(p), int(k)) for p, k in multi or ()}
        except (TypeError, ValueError):
            log.warning("%s: moved in with an unreadable list of messages sent to several "
                        "rooms; some of those in flight may reach it twice", eio_sid)
        old = self.moved.get(eio_sid)
        if old is not None:
            self._forget(old)
        m = self.moved[eio_sid] = _Moved(eio_sid, parsed, applied, self.acts)
        for c in channels:
            self.moved_on.setdefault(c, {})[eio_sid] = m
        m.lanes.update({c: m.lanes.get(c, ({}, {})) for c in channels})
        # Acted on here before it arrived, a copy on one of its channels not yet read:
        # decided when that copy comes (or now, if its old worker gave it). Got
        # there and not yet acted on here: skipped when acted on.
        for c in channels:
            for key in self.unread_on.get(c, ()):
                cp = self.copies.get(key)
                if cp is not None and key not in m.decided and self._coming(c, key):
                    if m.got(key[0], key[1], cp.local, cp.chs):
                        m.decided.add(key)
                    else:
                        m.pending.add(key)
        m.pending.update(k for k in applied if k not in self.copies)
        return m

    def _arrived(self, lane: _Lane, eio_sid: str, state) -> None:
        try:
            seen = {str(p): int(k) for p, k in state["seen"].items()}
            mark = state.get("mark")
            if mark is not None:
                mark = (str(mark[0]), int(mark[1]), int(mark[2]))
            had = {str(p): (int(lo), int(hi)) for p, (lo, hi) in
                   (state.get("had") or {}).items()}
        except (TypeError, ValueError, KeyError, AttributeError, IndexError):
            log.warning("%s: moved in without a usable channel position%s (from a worker "
                        "without ordering?); broadcasts from here on", eio_sid, _on(lane))
            return
        e = _Entry(eio_sid, seen, mark, had, self.sent.get(lane.channel, 0))
        if not seen:
            # With interest channels the old worker synchronised each channel with
            # this one first (a marker of this worker's: `seen` is never empty),
            # or logged why it could not (workers/redis_manager.py, prepare).
            log.log(logging.DEBUG if self.by_channel else logging.INFO,
                    "%s: its old worker had read no broadcast with an id%s: broadcasts "
                    "from here on", eio_sid, _on(lane))
            e.passed = True
        else:
            self._place(lane, e)
        if not self._done(e, lane):
            lane.entries[eio_sid] = e
            self.open.setdefault(eio_sid, set()).add(lane)

    def _place(self, lane: _Lane, e: _Entry) -> None:
        """Find the old worker's position in the ring: deliver what came after it
        (this listener is ahead), or leave the entry to hold (it is behind)."""
        if (e.mark is not None and lane.last.get(e.mark[0], 0) < e.mark[1]
                and e.seen.get(self.me, 0) >= self.marked.get(lane.channel, float("inf"))):
            # Its mark is still to come here: the old worker read this worker's
            # marker, so this listener held the channel before its position. Behind,
            # whatever the ring holds from before the old worker held the channel
            # (its own emits there from then would read as applied, and what came
            # after them as new to the session).
            return
        ring = [r for r in self.ring if r[0] is lane]
        # The old worker applied a prefix of the channel: the last entry it applied
        # is where it was (plus K plain messages after its mark).
        cut = None
        later = False  # a message with an id after it (one the old worker had not)
        for _, i, pub, n, _, _ in reversed(ring):
            if e.applied(pub, n):
                cut = i
                if e.mark is not None and (pub, n) == e.mark[:2]:
                    e.target = cut = i + e.mark[2]
                elif not later:
                    return  # before its mark: behind (the plain ones since, it had)
                break
            later = later or pub is not None
        if cut is None:
            if e.mark is not None and lane.mark is not None and (
                    lane.mark[:2] == e.mark[:2] and lane.index - lane.mark[2] == e.mark[2]):
                # Its mark left the ring (RING_KEEP over all lanes) but is this
                # lane's last identified message, with as many plain ones after it:
                # exactly there.
                e.passed = True
                return
            # Nothing here that it applied: this listener is behind it, unless it
            # heard later messages of a publisher the old worker heard (then it
            # started listening after that position, or is far ahead).
            if not any(lane.last.get(p, 0) > k for p, k in e.seen.items()):
                return
            if lane.index > len(ring):
                log.warning("%s: moved in from a worker more than %d messages behind "
                            "this one%s: broadcasts before those may be missed",
                            e.eio_sid, RING_KEEP, _on(lane))
            cut = 0
        if cut >= lane.index:
            # (Only its mark gives such a cut.) Behind by the plain messages after
            # its mark that this listener has not read yet; or exactly there, and
            # what comes next is new to the session (a quiet channel may have no
            # next message for long: the entry would wait out ORDER_WAIT for
            # nothing). Numbers in `seen` this listener never read do not count:
            # they came before the mark, so before its subscription (the old
            # worker's own marker from when it was an heir, a message to a retired
            # worker's sids): nothing of them is still to come here.
            if cut == lane.index:
                e.passed = True
            return
        m = self.moved.get(e.eio_sid) if self.by_channel else None
        for _, i, pub, n, local, data in ring:
            if i <= cut or data.get("method") != "emit":
                continue
            chs = data.get(CHANNELS) if m is not None else None
            if isinstance(chs, list):
                # Published on several channels: once over all of the session's.
                if (pub, n) not in m.decided:
                    self._late(m, (pub, n), local, chs, data)
                continue
            lo_hi = e.had.get(pub) if local else None
            if lo_hi is not None and lo_hi[0] < n <= lo_hi[1]:
                continue
            self._deliver(e.eio_sid, data)
        e.passed = True


def _on(lane: _Lane) -> str:
    return "" if lane.channel is None else f" on {lane.channel}"


def _id(data: dict) -> tuple:
    tag = data.get(KEY)
    if (isinstance(tag, list) and len(tag) == 3 and isinstance(tag[0], str)
            and isinstance(tag[1], int) and isinstance(tag[2], int)):
        return tag[0], tag[1], bool(tag[2])
    return None, 0, False
