"""The official Socket.IO Admin UI, in headless Chromium, watching a cluster of 3 workers.

The page is the static build that ships in the npm package @socket.io/admin-ui
(tests/js), served by the app itself (tests/apps/instrumented_app.py, from the
same origin). Nothing is fetched from outside at run time: the page links
its icon font from a CDN, which the browser is given from the npm package
@mdi/font instead, and every other request to anywhere but the cluster is
refused (the Roboto web font then falls back to the browser's own).

The app calls `sio.instrument()` as python-socketio's docs say; the test logs
in through the UI's connection form, then reads what a person sees: the
dashboard's server and client counts, the servers table, the sockets list,
and uses the UI's own buttons to join a room, clear a room and disconnect a
room's sockets on every worker. Screenshots go to artifacts/ (gitignored).
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import pytest
from conftest import ARTIFACTS, JS, ROOT, wait_for
from pyclients import Client

APPS = ROOT / "tests" / "apps"
UI_DIST = JS / "node_modules" / "@socket.io" / "admin-ui" / "ui" / "dist"
# The page's <link> to https://cdn.jsdelivr.net/npm/@mdi/font@latest/css/...
MDI_CDN = "/npm/@mdi/font@latest/"
MDI = JS / "node_modules" / "@mdi" / "font"
AUTH = {"username": "admin", "password": "test only"}
WORKERS = 3
TRANSPORTS = ("websocket", "polling", "default")


@pytest.fixture
def page(browser, cluster_factory, backend):
    if not (UI_DIST / "index.html").exists():
        pytest.fail(f"{UI_DIST} is missing: run scripts/setup (npm ci in tests/js)")
    c = cluster_factory(app="instrumented_app:app", workers=WORKERS, cwd=APPS,
                        env={"ADMIN_UI_DIST": str(UI_DIST)}, **backend)
    c.wait_ready()
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    here = urlsplit(c.url).netloc
    refused: list[str] = []

    def only_the_cluster(route):
        url = urlsplit(route.request.url)
        if url.netloc == here:
            route.continue_()
        elif url.path.startswith(MDI_CDN) and ".." not in url.path:
            route.fulfill(path=MDI / url.path[len(MDI_CDN):])  # css/..., fonts/...
        else:
            refused.append(route.request.url)
            route.abort()

    ctx.route("**/*", only_the_cluster)
    p = ctx.new_page()
    p.set_default_timeout(15_000)
    p.cluster = c
    p.backend = ("relay" if not backend["redis"]
                 else "redis-" + backend.get("redis_channels", "single"))
    try:
        yield p
    finally:
        ctx.close()


def _log_in(page) -> None:
    page.goto(page.cluster.url + "/admin-ui/")
    dialog = page.locator(".v-dialog--active")
    dialog.get_by_label("Server URL").fill(page.cluster.url)
    dialog.get_by_label("Username").fill(AUTH["username"])
    dialog.get_by_label("Password").fill(AUTH["password"])
    dialog.locator("button[type=submit]").click()
    dialog.wait_for(state="detached")


def _card_numbers(page, title: str) -> list[int]:
    """The big numbers (h2) of the dashboard card titled `title`."""
    card = page.locator(".v-card").filter(
        has=page.locator(".v-card__title", has_text=re.compile(rf"^\s*{title}\s*$")))
    return [int(t) for t in card.locator("h2").all_inner_texts()]


def _namespace_counts(page) -> dict[str, int]:
    card = page.locator(".v-card").filter(
        has=page.locator(".v-card__title", has_text="Namespaces"))
    rows = card.locator("tbody tr").all_inner_texts()
    return {r.split()[0]: int(r.split()[1]) for r in rows if len(r.split()) == 2}


def _table_rows(page) -> list[list[str]]:
    """The cells of each row of the page's data table (an empty table has one row saying so)."""
    return page.eval_on_selector_all(
        ".v-data-table tbody tr",
        "rows => rows.map((r) => [...r.cells].map((td) => td.innerText.trim()))")


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(700)  # for the picture only: the page's transitions and charts
    page.screenshot(path=str(ARTIFACTS / f"admin-ui-{name}-{page.backend}.png"), full_page=True)


def test_the_admin_ui_shows_and_acts_on_every_worker(page):
    c = page.cluster
    pids = {w["pid"] for w in c.ready_workers()}
    clients: list[Client] = []
    try:
        for transport in TRANSPORTS:
            for _ in range(WORKERS):
                cl = Client(c.url, transport)
                clients.append(cl)
                assert cl.join("watched") is True
        by_pid: dict[int, list[Client]] = {}
        for cl in clients:
            by_pid.setdefault(cl.whoami(), []).append(cl)
        assert set(by_pid) == pids, "clients on every worker"
        sids = {cl.sio.get_sid("/"): cl for cl in clients}

        _log_in(page)
        # The dashboard: 3 servers, all healthy; every client counted (ours and
        # the UI's own connection), on whichever worker it is.
        total = len(clients) + 1
        wait_for(lambda: _card_numbers(page, "Servers") == [WORKERS, 0], 20,
                 what=f"{WORKERS} healthy servers (got {_card_numbers(page, 'Servers')})")
        wait_for(lambda: sum(_card_numbers(page, "Clients")) == total, 20,
                 what=f"{total} clients (got {_card_numbers(page, 'Clients')})")
        wait_for(lambda: _namespace_counts(page) == {"/": len(clients), "/admin": 1}, 20,
                 what=f"sockets per namespace (got {_namespace_counts(page)})")
        _shot(page, "dashboard")

        # The servers table: one row per worker, by its pid.
        page.goto(c.url + "/admin-ui/#/servers/")
        wait_for(lambda: {int(r[2]) for r in _table_rows(page) if len(r) > 2} == pids, 20,
                 what=f"a row per worker pid (got {_table_rows(page)})")
        _shot(page, "servers")

        # Every socket of every worker in the sockets list (the worker the UI
        # is on sends its own; the others announce theirs).
        page.goto(c.url + "/admin-ui/#/sockets/")
        listed = lambda: {r[0] for r in _table_rows(page) if r and r[0] in sids}  # noqa: E731
        wait_for(lambda: listed() == set(sids), 20,
                 what=f"every client's socket listed (got {len(listed())} of {len(sids)})")
        _shot(page, "sockets")

        # Join: one socket per worker, each from its own page in the UI (opened
        # from the list: the UI reads the socket of its page when it opens it).
        picked = [cl_list[0] for cl_list in by_pid.values()]
        for cl in picked:
            page.goto(c.url + "/admin-ui/#/sockets/")
            page.locator(".v-data-table tbody tr", has_text=cl.sio.get_sid("/")).click()
            page.get_by_role("textbox", name="Join a room").fill("picked")
            page.locator("form:has(.select-room) button[type=submit]").click()
            # The UI lists the room once the socket's worker reports room_joined.
            page.locator("td", has_text=re.compile(r"^\s*picked\s*$")).wait_for()
        text = f"to-picked-{time.monotonic()}"
        picked[0].sio.emit("say", {"room": "picked", "text": text})
        heard = lambda cl, t: any(m.get("text") == t for m in cl.said)  # noqa: E731
        wait_for(lambda: all(heard(cl, text) for cl in picked), 15,
                 what="every picked socket, on every worker, in the room "
                      f"({[(cl.sio.connected, cl.said) for cl in picked]})")

        # Clear: every socket leaves 'watched', on every worker.
        page.goto(c.url + "/admin-ui/#/rooms/")
        # (The rooms list's rows say "Public"; the page left behind may linger a moment.)
        row = page.locator(".v-data-table tbody tr", has_text="watched").filter(
            has_text="Public")
        row.locator("button:has(.mdi-tag-off-outline)").click()
        # The click opens the room's page too; it says "deleted" once the UI has
        # heard room_left for each of its sockets, from every worker.
        page.get_by_text("Deleted", exact=True).wait_for()
        gone = f"to-watched-{time.monotonic()}"
        probe = f"probe-{time.monotonic()}"
        picked[0].sio.emit("say", {"room": "watched", "text": gone})
        picked[0].sio.emit("say", {"room": "picked", "text": probe})
        wait_for(lambda: all(heard(cl, probe) for cl in picked), 15, what="the probe")
        assert not [cl for cl in clients if heard(cl, gone)], "someone is still in 'watched'"

        # Disconnect: the sockets in 'picked' (one on each worker) are disconnected.
        page.goto(c.url + "/admin-ui/#/rooms/")
        row = page.locator(".v-data-table tbody tr", has_text="picked").filter(
            has_text="Public")
        row.locator("button:has(.mdi-logout)").click()
        wait_for(lambda: all(cl.disconnects for cl in picked), 15,
                 what="every picked socket disconnected")
        assert not [cl for cl in clients if cl not in picked and cl.disconnects]
        page.goto(c.url + "/admin-ui/#/")  # the hash only: the page stays, connected
        wait_for(lambda: _namespace_counts(page).get("/") == len(clients) - len(picked), 20,
                 what=f"the dashboard counts the rest (got {_namespace_counts(page)})")
    finally:
        for cl in clients:
            cl.close()
    log = c.log()
    assert "Traceback" not in log, log


def test_admins_connecting_together_each_get_the_socket_list(cluster_factory):
    """python-socketio 5.18 sends `all_sockets` to the last socket its config task
    listed, not to the admin that connected (its loop rebinds `sid`): of UIs that
    connect within 0.1 s of each other only the newest got a list. Each gets its
    own here, and every worker's sockets in it."""
    import threading

    import socketio

    c = cluster_factory(app="instrumented_app:app", workers=2, cwd=APPS)
    c.wait_ready()
    admins: list[socketio.Client] = []
    heard: dict[int, list] = {}
    users = []
    try:
        for _ in range(4):
            users.append(Client(c.url, "websocket"))
        user_sids = {u.sio.get_sid("/") for u in users}
        assert len({u.whoami() for u in users}) == 2

        def admin(i: int) -> None:
            a = socketio.Client(reconnection=False, request_timeout=10)
            heard[i] = []
            a.on("all_sockets", lambda s, i=i: heard[i].extend(x["id"] for x in s),
                 namespace="/admin")
            a.on("socket_connected", lambda s, _t, i=i: heard[i].append(s["id"]),
                 namespace="/admin")
            a.connect(c.url, namespaces=["/admin"], transports=["websocket"],
                      auth={"username": "admin", "password": "test only"}, wait_timeout=10)
            admins.append(a)

        threads = [threading.Thread(target=admin, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(admins) == 4
        for i in range(4):
            wait_for(lambda i=i: user_sids <= set(heard[i]), 10,
                     what=f"admin {i} listing every worker's sockets")
    finally:
        for a in admins:
            a.disconnect()
        for u in users:
            u.close()
