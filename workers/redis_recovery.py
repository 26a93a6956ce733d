"""Connection state recovery kept in Redis (`--recovery-window` with `--redis`).

The same state as the master's store in relay mode (master/recovery.py; the
design is in workers/recovery.py), kept where every worker, on every host,
reaches it and where it outlives the worker that wrote it.

Keys (KEY = "imcluster:recovery:{CHANNEL}", CHANNEL the pub/sub channel, so
the cluster slot of every key is the same):

    KEY:seq      string   the last offset given (INCR); never expires: offsets
                          only grow, whatever else expired
    KEY:log      stream   one entry per broadcast, id "OFFSET-0", field "m" =
                          the published JSON with its offset; trimmed to about
                          MAX_PACKETS entries (XADD MAXLEN ~), and the whole key
                          expires `window` after the last broadcast
    KEY:s:PID    hash     one recoverable session: sid, namespace, holder (the
                          Engine.IO sid of the connection holding it), rooms and
                          data (JSON); its TTL is window + REFRESH while held,
                          renewed every REFRESH seconds by its worker, and
                          `window` once it is down

Offsets: a broadcast is logged and published by one Lua script (PUBLISH_LUA)
that takes the next offset, appends to the log and publishes, atomically. So
Redis's order of execution is the order of offsets, and, pub/sub delivering
in publish order, every worker hears every broadcast in offset order; the
publisher hears its own back and delivers it then, as in relay mode.

Bounds: sessions by time (a session whose worker died without a word lives
`window` to `window + REFRESH` seconds after its last renewal; one that went
down lives `window`); the log by count (MAX_PACKETS) and time (`window` after
the last broadcast); session data as in relay mode (MAX_DATA_BYTES).

A restore (RESTORE_LUA) takes the session (it leaves Redis: the worker that
restores it reports it "up" again) and every logged broadcast after the
client's offset, in one step, and refuses when any of those was trimmed
(the first entry after the offset must be offset + 1): the client then gets
a new session, as after an expired one, never a silent gap. It also returns
the last offset given ("upto"): the worker replays everything up to it that
reached the session's rooms and skips, for that session, what its listener
hears later with an offset up to it; what comes after is published after the
restore and so reaches the session live.

Session changes and log appends go through the manager's one publishing
connection, in order, in its batches (workers/redis_manager.py); a restore is
a call of its own. While Redis is unreachable nothing is logged or changed,
and sessions cannot be recovered; a worker's broadcasts (normally delivered
when they come back from Redis) reach its own clients at once, without an
offset, as without recovery (redis_manager.py `_deliver_unlogged`). After the
subscription is remade, the listener's skips are dropped: a Redis that
restarted empty gives offsets from 1 again.
"""

from __future__ import annotations

import json
import logging

import eventlet

from imcluster.master.recovery import MAX_DATA_BYTES, MAX_PACKETS, Session

log = logging.getLogger("imcluster.worker")

# Seconds between two renewals of the TTL of the sessions a worker holds (at
# most: a short window renews faster).
REFRESH = 5.0

# KEYS: seq, log. ARGV: channel, message (a JSON object), max entries, window (ms).
PUBLISH_LUA = """
local n = redis.call('INCR', KEYS[1])
local tagged = string.sub(ARGV[2], 1, -2) .. ',"offset":"' .. n .. '"}'
local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], n .. '-0', 'm', tagged)
if type(ok) == 'table' and ok.err then
  -- The log holds a later id than the counter (the counter was reset): start it over.
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], n .. '-0', 'm', tagged)
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], tagged)
return n
"""

# KEYS: session. ARGV: op, holder, ttl (ms), sid, namespace (for "up"; else ""),
# then pairs of a field ("rooms", "data") and its JSON ("" to keep it).
SESSION_LUA = """
local op, holder = ARGV[1], ARGV[2]
if op == 'up' then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'holder', holder, 'sid', ARGV[4], 'namespace', ARGV[5],
             'rooms', '[]', 'data', 'null')
elseif redis.call('HGET', KEYS[1], 'holder') ~= holder then
  return 0
end
if op == 'up' or op == 'change' then
  for i = 6, #ARGV, 2 do
    if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  end
  if op == 'up' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
elseif op == 'down' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
elseif op == 'gone' then
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS: session, seq, log. ARGV: offset. Returns nil, or
# [session fields (flat), [logged messages after offset], last offset].
RESTORE_LUA = """
local s = redis.call('HGETALL', KEYS[1])
if #s == 0 then return nil end
local n = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if n == nil or n < 0 or n ~= math.floor(n) or n > last then return nil end
local missed = {}
if n < last then
  local e = redis.call('XRANGE', KEYS[3], string.format('%d-0', n + 1), '+')
  if #e == 0 or e[1][1] ~= string.format('%d-0', n + 1) then return nil end
  for i = 1, #e do missed[i] = e[i][2][2] end
end
redis.call('DEL', KEYS[1])
return {s, missed, string.format('%d', last)}
"""


class RedisRecoveryStore:
    """One worker's access to the recovery state in Redis; `manager` is its
    ClusterRedisManager (its publishing connection and batches)."""

    def __init__(self, manager, window: float):
        self.manager = manager
        self.window = window
        self.refresh = min(REFRESH, window / 2)
        base = f"imcluster:recovery:{{{manager.channel}}}"
        self.seq_key, self.log_key, self.session_prefix = (
            base + ":seq", base + ":log", base + ":s:")
        r = manager.redis
        self.publish_script = r.register_script(PUBLISH_LUA)
        self.session_script = r.register_script(SESSION_LUA)
        self.restore_script = r.register_script(RESTORE_LUA)
        self.held_keys: dict[str, None] = {}  # session keys this worker holds, renewed
        self.refresher = None

    # ---- through the publisher's batches ---------------------------------------------

    def publish(self, pipe, message: str) -> None:
        """Add to `pipe` the logging and publishing of one broadcast (JSON text)."""
        self.publish_script(keys=[self.seq_key, self.log_key],
                            args=[self.manager.channel, message, MAX_PACKETS,
                                  int(self.window * 1000)], client=pipe)

    def session_op(self, op: dict) -> None:
        """Queue one change a worker reports (workers/recovery.py lists them)."""
        key = self.session_prefix + op["pid"]
        kind, holder = op["op"], op["eio_sid"]
        held_ttl = int((self.window + self.refresh) * 1000)
        args: list = [kind, holder, int(self.window * 1000) if kind == "down" else held_ttl,
                      op.get("sid", ""), op.get("namespace", "")]
        if kind in ("up", "change"):
            args += ["rooms", json.dumps(op["rooms"]) if "rooms" in op else "",
                     "data", _data(op)]
        if kind == "up":
            self.held_keys[key] = None
            self._start_refresher()
        elif kind in ("down", "gone"):
            self.held_keys.pop(key, None)
        self.manager.enqueue(lambda pipe: self.session_script(keys=[key], args=args,
                                                              client=pipe))

    def _start_refresher(self) -> None:
        if self.refresher is None:
            self.refresher = eventlet.spawn(self._refresh_forever)

    def _refresh_forever(self) -> None:
        # A held session's TTL runs out `window + refresh` after its last renewal:
        # after its worker dies it stays recoverable at least `window` seconds.
        ttl = int((self.window + self.refresh) * 1000)
        while True:
            eventlet.sleep(self.refresh)
            keys = list(self.held_keys)
            if keys:
                def renew(pipe, keys=keys):
                    for k in keys:
                        pipe.pexpire(k, ttl)
                self.manager.enqueue(renew)

    # ---- a call of its own --------------------------------------------------------------

    def restore(self, pid: object, offset: object) -> dict | None:
        """The session `pid` with the logged broadcasts after `offset` that reached it
        (as master/recovery.py's RecoveryStore.restore, decoded), plus "upto": the
        last offset given; None when it cannot be recovered (unknown or expired
        pid, an offset not given or whose successors were trimmed, Redis down)."""
        if not isinstance(pid, str) or not isinstance(offset, str):
            return None
        try:
            got = self.restore_script(keys=[self.session_prefix + pid, self.seq_key,
                                            self.log_key], args=[offset])
        except Exception as e:  # redis-py's errors, and anything else: a new session then
            log.warning("recovery: redis could not restore a session (%s)", e)
            return None
        if not got:
            return None
        flat, missed, last = got
        fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
        try:
            rooms = [r for r in json.loads(fields["rooms"]) if isinstance(r, str)]
            s = Session(fields["sid"], fields["namespace"], fields["holder"], 0, rooms)
            data = json.loads(fields["data"])
            messages = [json.loads(m) for m in missed]
        except (KeyError, ValueError, TypeError) as e:
            log.warning("recovery: a session in redis is unusable (%s)", e)
            return None
        return {"sid": s.sid, "namespace": s.namespace, "rooms": s.rooms, "data": data,
                "missed": [m for m in messages if isinstance(m, dict) and s.hears(
                    m.get("namespace") or "/", m.get("room"), m.get("skip_sid"))],
                "upto": int(last)}


def _data(op: dict) -> str:
    if "data" not in op:
        return ""
    data = json.dumps(op["data"], separators=(",", ":"))
    if len(data) > MAX_DATA_BYTES:
        log.warning("session data over %d bytes is not kept for recovery", MAX_DATA_BYTES)
        return ""
    return data


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
