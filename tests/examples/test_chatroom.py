# The README's example test: run by tests/test_testing_plugin.py through pytester,
# with WORKERS=3 (the module-level-state bug shows) and WORKERS=1 (it hides).
import os

WORKERS = int(os.environ.get("WORKERS", "3"))


def test_room_message_reaches_members_on_every_worker(imcluster):
    cluster = imcluster("chatroom:sio", workers=WORKERS)
    clients = cluster.clients(6)  # spread over every worker
    assert {c.slot for c in clients} == set(range(WORKERS))
    for c in clients:
        assert c.call("join", "lobby") is True
    clients[0].emit("say", {"room": "lobby", "text": "hi"})
    for c in clients:
        assert c.wait_for("said") == [({"room": "lobby", "text": "hi"},)]


def test_everyone_is_counted_online(imcluster):
    cluster = imcluster("chatroom:sio", workers=WORKERS)
    clients = cluster.clients(6)
    assert [c.call("who") for c in clients] == [6] * 6
