"""The bench contract plus ways to hurt a worker, for the operations tests."""

import os
import time

import eventlet.patcher

from imcluster.examples.bench import app, sio  # noqa: F401  (served as ops_app:sio)

_hoard = []
_real_sleep = eventlet.patcher.original("time").sleep


@sio.on("bloat")
def bloat(sid, mib=64):
    _hoard.append(bytearray(os.urandom(1)) * (int(mib) << 20))
    return os.getpid()


@sio.on("block")
def block(sid, seconds=60):
    # A blocking call that eventlet cannot switch away from: the whole worker
    # (its heartbeat included) stops, as with a CPU-bound or unpatched handler.
    _real_sleep(float(seconds))
    return os.getpid()


@sio.on("work")
def work(sid, seconds, path):
    # A handler that waits (as one calling a database would), then leaves a mark:
    # a graceful drain must let it finish and send its ack. It waits `seconds`,
    # or less if the test creates PATH.release first.
    open(path + ".started", "w").close()
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline and not os.path.exists(path + ".release"):
        sio.sleep(0.05)
    with open(path, "w") as f:
        f.write("done")
    return "done"
