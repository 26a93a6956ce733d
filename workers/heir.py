"""A draining worker's heir, readied before sessions leave (`--handover yes` with
`--redis-channels interest` or a Redis Cluster; workers/redis_order.py, "Interest
channels").

The heir may hold none of the channels of the sessions that move to it, so
before a session's position is taken the heir must have subscribed to each of
its channels and published a marker there that this worker has read
(InterestRedisManager.prepare_heir). Three moments call for it:

- the drain starts (`ready`): every channel of every session here, in one round;
- a session is about to leave (`session`), with a channel not synced yet: a room
  it joined after that round (a handler that ran in the instant of the drain, or
  another worker's `enter_room` for it): that channel is synced now, before its
  position is taken (no yield from the end of this call to the position);
- the master names another heir (a second STOP: the one named first stopped
  taking sessions, it is draining too or it died; master/core.py,
  `_replan_heirs`), `changed`: what was synced counts for nothing, and every
  channel of the sessions still here is synced with the new heir before any of
  them leaves.

A session already on its way then (its position taken, synced with the first
heir, its HANDOVER sent before the second STOP was read) names the first in its
state (`heir`), and the master sends it there whatever its plan says now
(master/core.py `_move_to_synced`): only that worker subscribed before the
position was taken. If it drains, it takes the session in and moves it on like
its own (workers/main.py `_move_in_late`, until the master answers its EMPTIED:
the master sends none after); if it can take none (dead, hung, done moving),
the master closes the session and the client reconnects: nothing missed
without a word.

One preparation runs at a time (a lock): the sessions that leave meanwhile wait
for it, then find their channels synced. A channel that could not be synced
within PREPARE_WAIT (Redis slow or down, the heir gone) is not asked again for
that heir; the sessions on it move without the guarantee, and are counted
(ChannelOrder.unsynced_moves) and logged at the end of the drain.
"""

from __future__ import annotations

import logging
import time

import eventlet
import eventlet.semaphore

log = logging.getLogger("imcluster.worker")

# How long a draining worker waits for its heir to sync the sessions' channels
# (the heir waits up to 2 s for each Redis confirmation, and is asked again
# every 0.5 s meanwhile: redis_manager.PREPARE_*).
PREPARE_WAIT = 3.0
# Rounds one session may take to sync the rooms it keeps joining while it waits.
SESSION_ROUNDS = 3


class HeirSync:
    """The channels synced with this draining worker's heir (see the module)."""

    def __init__(self, mgr):
        """`mgr`: an InterestRedisManager (or ShardedRedisManager) with its
        `order` (a ChannelOrder with lanes)."""
        self.mgr = mgr
        self.heir: int | None = None
        self.lock = eventlet.semaphore.Semaphore()
        self.failed: set[str] = set()  # not synced with this heir in time: not asked again
        self.late = 0  # channels synced for a session after the first round

    def ready(self, heir: int | None, eio_sids: list[str]) -> None:
        """Before any session leaves: sync every channel of `eio_sids` with `heir`
        (None: no heir, nothing to do; the master closes the sessions)."""
        with self.lock:
            self._begin(heir)
            if heir is not None:
                self._sync(self._channels(eio_sids), first=True)

    def changed(self, heir: int | None, here) -> None:
        """The master named another heir: from now on (no yield before this takes
        effect) a session leaves only once its channels are synced with it; the
        channels of the sessions still here (`here()`: their Engine.IO sids) are
        synced in one round, in another greenlet."""
        if heir == self.heir:
            return
        log.warning("hand-over: the master named worker %s to take the sessions instead "
                    "of worker %s; syncing the channels of those still here with it",
                    heir, self.heir)
        self._begin(heir)

        def sync_all() -> None:
            with self.lock:
                if self.heir == heir and heir is not None:
                    self._sync(self._channels(here()), first=True)

        eventlet.spawn(sync_all)

    def session(self, eio_sid: str) -> None:
        """Just before session `eio_sid`'s position is taken: sync those of its
        channels that are not synced yet (rooms joined since `ready`)."""
        order = self.mgr.order
        if order.synced is None:
            return  # no preparation ran (no heir): nothing to keep in step
        for _ in range(SESSION_ROUNDS):
            missing = self._missing(eio_sid)
            if not missing:
                return
            with self.lock:
                missing = self._missing(eio_sid)  # (another may have synced them)
                if not missing or self.heir is None:
                    return
                got = self._sync(missing, first=False)
                self.late += len(got)
                if len(got) < len(missing):
                    return

    # ----

    def _begin(self, heir: int | None) -> None:
        self.heir = heir
        self.failed = set()
        order = self.mgr.order
        order.synced = set() if heir is not None else None
        order.synced_for = heir

    def _channels(self, eio_sids: list[str]) -> list[str]:
        return list(dict.fromkeys(c for sid in eio_sids
                                  for c in self.mgr.channels_of_session(sid)))

    def _missing(self, eio_sid: str) -> list[str]:
        synced = self.mgr.order.synced or set()
        return [c for c in self.mgr.channels_of_session(eio_sid)
                if c not in synced and c not in self.failed]

    def _sync(self, channels: list[str], first: bool) -> set[str]:
        """Sync `channels` with the heir (holding the lock); returns those synced."""
        if not channels:
            return set()
        started, heir = time.monotonic(), self.heir
        got = self.mgr.prepare_heir(heir, channels, PREPARE_WAIT)
        if self.heir != heir:
            return set()  # the master named another meanwhile: these count for nothing
        self.mgr.order.synced |= got
        self.failed |= set(channels) - got
        if len(got) < len(channels):
            log.warning("hand-over: %d of %d channel(s) not synced with worker %d within "
                        "%.0f s (Redis slow or down?): room messages in flight on them "
                        "during the moves may reach a session twice or not at all",
                        len(channels) - len(got), len(channels), self.heir, PREPARE_WAIT)
        elif first:
            log.info("hand-over: %d channel(s) synced with worker %d in %.3f s",
                     len(channels), self.heir, time.monotonic() - started)
        else:
            log.info("hand-over: %d channel(s) joined during the drain synced with worker "
                     "%d in %.3f s", len(channels), self.heir, time.monotonic() - started)
        return got
