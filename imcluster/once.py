"""Run a function in exactly one worker of the cluster at a time.

    imcluster.run_once(socketio, "ticker", ticker)

Every worker calls this when it imports the app; one of them runs
`ticker()`, the others wait in a background task and one takes over when
the runner's process ends (killed, crashed, or replaced by a reload).

The role is an exclusive `flock` on a lock file beside the cluster's control
socket (`<control path>.<name>.lock`; the master passes the path in
IMCLUSTER_CONTROL), taken with LOCK_NB and held on an open descriptor for as
long as the winning process lives. The kernel releases it when that process
ends, however it ends, so two workers never hold it at once: a waiting
worker starts the function only after the holder's process is gone. The
waiters try again every `interval` seconds (1 s by default), so the function
is taken over within about that after the holder exits. In a rolling
reload the holder drains like any worker, keeping the role and the function
running until its process exits; a worker takes over after that, so the
function never runs in two workers at once and pauses for about `interval`.

A lock file names one cluster, not one master: a cluster restarted on the
same control path waits for the old one's holder to exit too.

One host only: workers on several hosts need a lock they all see (a Redis
lock with a lease, say), which this is not. Outside imcluster
(IMCLUSTER_CONTROL unset: `socketio.run(app)`, tests) the one process runs
the function at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger("imcluster.worker")

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_held: dict[str, int] = {}  # lock path -> descriptor, for the life of the process


def lock_path(name: str, control: str | None = None) -> str | None:
    """The lock file of task `name` in the cluster whose control socket is
    `control` (default: $IMCLUSTER_CONTROL); None outside imcluster."""
    control = control or os.environ.get("IMCLUSTER_CONTROL")
    if not control:
        return None
    return f"{control}.{name}.lock"


def remove_unheld_locks(control: str) -> list[str]:
    """Remove the run_once lock files of the cluster whose control socket is
    `control` that no process holds (the master calls this as it exits, so they
    do not pile up in /tmp across runs). A file still held (a worker that
    outlived its master) stays: removing it would let a new cluster lock a new
    file while the old holder runs. Returns the paths removed."""
    import glob
    removed = []
    for path in glob.glob(glob.escape(control) + ".*.lock"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)  # while holding it: nobody can take it meanwhile
            removed.append(path)
        except OSError:  # held (BlockingIOError), or gone already
            pass
        finally:
            os.close(fd)
    return removed


def run_once(server: Any, name: str, fn: Callable[..., Any], *args: Any,
             interval: float = 1.0, **kwargs: Any) -> None:
    """Run `fn(*args, **kwargs)` in one worker of the cluster at a time.

    `server` is what starts and paces the background task: a socketio.Server
    or a flask_socketio.SocketIO (its `start_background_task` and `sleep`).
    `name` (letters, digits, `_.-`, up to 64) names the task in the cluster.
    Returns at once; the function runs in a background task of whichever
    worker holds the role, which keeps it for its whole life: should `fn`
    return or raise (logged), it is not run again until that worker is gone
    and another takes the role. `interval` (seconds, > 0): how often a waiting
    worker tries to take it. Raises ValueError for a bad name or interval.
    """
    if not NAME.fullmatch(name):
        raise ValueError(f"run_once name {name!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    if not interval > 0:
        raise ValueError(f"run_once interval must be > 0 seconds, not {interval!r}")
    path = lock_path(name)
    if path is None:
        server.start_background_task(fn, *args, **kwargs)
        return
    server.start_background_task(_contend, server, path, name, interval, fn, args, kwargs)


def _contend(server, path: str, name: str, interval: float, fn, args, kwargs) -> None:
    while not _take(path):
        server.sleep(interval)
    log.info("run_once %r: this worker (pid %d) runs it", name, os.getpid())
    try:
        fn(*args, **kwargs)
    except Exception:
        log.exception("run_once %r: the function raised; this worker keeps the role", name)


def _take(path: str) -> bool:
    """True once this process holds the lock on `path` (kept open until it exits)."""
    if path in _held:
        return True
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    except BaseException:
        os.close(fd)
        raise
    _held[path] = fd
    return True
