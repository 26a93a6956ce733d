"""Real browsers: the chat demo across workers in headless Chromium.

Browsers do what the Python and node clients don't: the tabs of one browser
context share a pool of keep-alive connections (up to six per host), so one
TCP connection carries requests of sessions that live on different workers,
and a polling session's requests come over whichever pooled connection is
free. Each test starts `imcluster run` with the chat demo on 3 workers and
opens two browser contexts (two users, alice and bob) with three tabs each,
all in one room, and checks what the pages show through `window.chat`
(static/chat.js) and `document.body.dataset.status`.

Chromium is Debian's, launched by the `browser` fixture (tests/chromium.py).
Screenshots of the kill test go to artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from conftest import ARTIFACTS, wait_for

USERS = ("alice", "bob")
TABS = 3  # per user: 6 tabs over 3 workers
WORKERS = 3

# Everything a test asserts on, read in one round trip per tab.
STATE_JS = """() => {
  const c = window.chat;
  if (!c) return null;
  return {
    status: c.status, body: document.body.dataset.status, pid: c.pid,
    transport: c.transport, online: c.online, name: c.name,
    texts: c.messages.map((m) => m.text),
    senders: c.messages.map((m) => [m.name, m.pid]),
    statuses: window.__statuses ? [...window.__statuses, document.body.dataset.status] : null,
  };
}"""

# Record every value data-status takes from now on (the old value of each
# mutation, plus the current one when read), so a short 'reconnecting' can't
# slip between two polls.
WATCH_STATUS_JS = """() => {
  window.__statuses = [];
  new MutationObserver((records) => {
    for (const r of records) window.__statuses.push(r.oldValue);
  }).observe(document.body, {attributes: true, attributeOldValue: true,
                             attributeFilter: ['data-status']});
}"""

# page.evaluate has no time limit of its own: bound every wait for an ack.
SEND_JS = """(text) => Promise.race([
  window.chat.send(text),
  new Promise((resolve) => setTimeout(() => resolve('no ack'), 10000)),
])"""

# The worker serving this tab's session right now (not the cached chat.pid).
WHOAMI_JS = """() => new Promise((resolve) => {
  window.chat.socket.timeout(5000).emit('whoami', (err, pid) => resolve(err ? null : pid));
})"""


class Tab:
    def __init__(self, user: str, index: int, page):
        self.user, self.index, self.page = user, index, page

    def __repr__(self) -> str:
        return f"{self.user}#{self.index}"

    def state(self) -> dict:
        return self.page.evaluate(STATE_JS) or {}

    def send(self, text: str):
        """chat.send(text): its ack (true), or 'no ack' after 10 s."""
        return self.page.evaluate(SEND_JS, text)

    def whoami(self):
        return self.page.evaluate(WHOAMI_JS)

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / name))


class Users:
    """Two browser contexts (one per user), TABS tabs each, all in one room."""

    def __init__(self, browser, url: str, transport: str | None):
        self.room = f"b-{uuid.uuid4().hex[:8]}"
        self.contexts = []
        self.tabs: list[Tab] = []
        query = f"room={self.room}" + (f"&transport={transport}" if transport else "")
        try:
            for user in USERS:
                # A context is one browser profile: its tabs share one connection pool.
                ctx = browser.new_context(viewport={"width": 900, "height": 560})
                ctx.set_default_timeout(15_000)
                self.contexts.append(ctx)
                for i in range(TABS):
                    page = ctx.new_page()
                    page.goto(f"{url}/?{query}&name={user}")
                    self.tabs.append(Tab(user, i, page))
        except BaseException:
            self.close()
            raise

    def states(self, tabs: list[Tab] | None = None) -> dict[Tab, dict]:
        return {t: t.state() for t in (self.tabs if tabs is None else tabs)}

    def wait_all(self, pred, timeout: float, what: str, tabs: list[Tab] | None = None):
        """Poll until pred(state) holds for every tab (or `tabs`); return the states."""
        def check():
            sts = self.states(tabs)
            return sts if all(pred(s) for s in sts.values()) else None
        return wait_for(check, timeout, what=what)

    def wait_in_room(self, timeout: float = 20) -> dict[Tab, dict]:
        """Every tab connected, knows its worker, and hears the room.

        A tab's Online list is rebuilt from scratch on every connect, from
        room broadcasts only, so the other user's name in it proves that the
        tab's current session is in the room.
        """
        return self.wait_all(
            lambda s: (s.get("status") == "connected" and s.get("body") == "connected"
                       and isinstance(s.get("pid"), int) and set(USERS) <= set(s["online"])),
            timeout, "every tab connected and in the room")

    def wait_websocket(self, tabs: list[Tab] | None = None) -> dict[Tab, dict]:
        return self.wait_all(lambda s: s.get("transport") == "websocket", 15,
                             "every tab upgraded to websocket", tabs)

    def exchange(self, texts: list[str], senders: list[Tab], sent: list[tuple]) -> None:
        """A conversation: each sender in turn replies once its own tab shows the
        previous message, and its message is acked before the next reply.

        That is the order the cluster promises every tab (tests/test_ordering.py);
        two users typing at once on different workers have none, as in any
        Socket.IO cluster.
        """
        for text, tab in zip(texts, senders, strict=True):
            if sent:
                last = sent[-1][0]
                wait_for(lambda tab=tab, last=last: last in tab.state().get("texts", ()), 15,
                         interval=0.02, what=f"{tab} to show {last!r} before replying")
            pid = tab.state()["pid"]
            ack = tab.send(text)
            assert ack is True, f"{tab}: say got {ack!r}"
            sent.append((text, tab.user, pid))

    def wait_delivered(self, sent: list[tuple], timeout: float = 15) -> dict[Tab, dict]:
        """Every tab shows every message, once, in the order sent, from the right sender."""
        n = len(sent)
        sts = self.wait_all(lambda s: len(s.get("texts", ())) >= n, timeout,
                            f"{n} messages in every tab")
        want_texts = [t for t, _, _ in sent]
        want_senders = [[u, p] for _, u, p in sent]
        for tab, s in sts.items():
            assert s["texts"] == want_texts, f"{tab} shows messages out of order or twice"
            assert s["senders"] == want_senders, f"{tab}: wrong name/worker on a message"
        return sts

    def close(self) -> None:
        for ctx in self.contexts:
            try:
                ctx.close()
            except Exception:  # the browser may already be gone; nothing left to free
                pass


def _start(cluster_factory):
    cluster = cluster_factory(app=None, workers=WORKERS)
    cluster.wait_ready()
    return cluster


def _interleaved(tabs: list[Tab]) -> list[Tab]:
    """alice#0, bob#0, alice#1, bob#1, ...: consecutive messages from different users."""
    by_user = [[t for t in tabs if t.user == u] for u in USERS]
    return [t for group in zip(*by_user, strict=True) for t in group]


def _check_spread(cluster, sts: dict[Tab, dict]) -> set[int]:
    pids = {s["pid"] for s in sts.values()}
    workers = {w["pid"] for w in cluster.status()["workers"]}
    assert pids <= workers, f"tabs report pids {pids}, the cluster's workers are {workers}"
    assert len(pids) > 1, f"all {len(sts)} tabs sit on one worker: {pids}"
    return pids


def _settled(users: Users, cluster, transport: str | None) -> dict:
    """Every tab in the room (and upgraded, for the default transport), spread out."""
    sts = users.wait_in_room()
    if transport is None:
        # Polling first, then every tab upgrades its session to a WebSocket.
        sts = users.wait_websocket()
    _check_spread(cluster, sts)
    return sts


def _chat_across_workers(browser, cluster, transport: str | None) -> None:
    users = Users(browser, cluster.url, transport)
    try:
        sts = _settled(users, cluster, transport)
        # The upgraded (or long-polling) session is still served where it began.
        for tab in users.tabs:
            assert tab.whoami() == sts[tab]["pid"], f"{tab} moved to another worker"

        order = _interleaved(users.tabs)
        sent: list[tuple] = []
        users.exchange([f"{t.user} says {i} ({transport or 'default'})"
                        for i, t in enumerate(order * 2)], order * 2, sent)
        after = users.wait_delivered(sent)
        want = transport or "websocket"
        for tab, s in after.items():
            assert s["transport"] == want, f"{tab} is on {s['transport']}, not {want}"
            assert s["status"] == "connected" and s["pid"] == sts[tab]["pid"], tab
        assert cluster.proc.poll() is None
    finally:
        users.close()


def test_polling_only_tabs_chat_across_workers(browser, cluster_factory):
    _chat_across_workers(browser, _start(cluster_factory), "polling")


def test_websocket_upgrade_tabs_chat_across_workers(browser, cluster_factory):
    _chat_across_workers(browser, _start(cluster_factory), None)


@pytest.mark.parametrize("transport", ["polling", None], ids=["polling", "default"])
def test_killed_worker_pages_reconnect_and_chat_again(browser, cluster_factory, transport):
    cluster = _start(cluster_factory)
    label = transport or "default"
    users = Users(browser, cluster.url, transport)
    try:
        sts = _settled(users, cluster, transport)
        sent: list[tuple] = []
        order = _interleaved(users.tabs)
        users.exchange([f"before the kill: {t} ({label})" for t in order], order, sent)
        users.wait_delivered(sent)

        # The victim: the worker serving alice's first tab, as the page says.
        watched = next(t for t in users.tabs if t.user == USERS[0])
        victim = sts[watched]["pid"]
        workers = {w["pid"] for w in cluster.status()["workers"]}
        assert victim in workers, f"page pid {victim} is not a worker of {workers}"
        orphans = [t for t in users.tabs if sts[t]["pid"] == victim]
        bystanders = [t for t in users.tabs if sts[t]["pid"] != victim]
        assert orphans and bystanders
        for tab in users.tabs:
            tab.page.evaluate(WATCH_STATUS_JS)
        watched.screenshot(f"chat-{label}-1-before-kill.png")

        os.kill(victim, signal.SIGKILL)

        # The page shows that it lost its worker...
        wait_for(lambda: watched.state().get("body") != "connected", 10, interval=0.05,
                 what=f"{watched} to show it lost its worker")
        watched.screenshot(f"chat-{label}-2-reconnecting.png")
        # ...and comes back by itself, on a live worker, without a reload.
        users.wait_all(lambda s: s.get("body") == "connected" and s.get("pid") != victim
                       and isinstance(s.get("pid"), int), 20,
                       "the orphaned tabs to reconnect to a live worker", orphans)
        sts2 = users.wait_in_room()

        def refilled():
            pids = cluster.worker_pids()
            return pids if len(pids) == WORKERS and victim not in pids else None
        live = wait_for(refilled, 20, what="the dead worker's slot to be refilled")
        for tab in orphans:
            s = sts2[tab]
            assert s["pid"] in live, f"{tab} reports pid {s['pid']}, live workers are {live}"
            assert tab.whoami() == s["pid"]
            seen = s["statuses"]
            gone = [i for i, v in enumerate(seen) if v != "connected"]
            assert gone and "connected" in seen[gone[0]:], f"{tab} status went {seen}"
        # The tabs on the other workers were not disturbed.
        for tab in bystanders:
            s = sts2[tab]
            assert set(s["statuses"]) == {"connected"}, f"{tab} status went {s['statuses']}"
            assert s["pid"] == sts[tab]["pid"], f"{tab} moved from {sts[tab]['pid']}"

        if transport is None:
            users.wait_websocket(orphans)
        # The chat works again: messages from a reconnected tab and from a
        # bystander reach every tab, after all the earlier ones, in order.
        users.exchange([f"after the kill: {orphans[0]} ({label})",
                        f"after the kill: {bystanders[0]} ({label})"],
                       [orphans[0], bystanders[0]], sent)
        final = users.wait_delivered(sent)
        watched.screenshot(f"chat-{label}-3-after-kill.png")
        for tab, s in final.items():
            assert s["status"] == "connected" and s["transport"] == (transport or "websocket"), \
                f"{tab}: {s['status']} on {s['transport']}"
        assert cluster.proc.poll() is None
    finally:
        users.close()
