"""imcluster: a multi-process, single-host Socket.IO server.

One master owns the port and hands every connection to the worker that owns
its Engine.IO session; see docs/ and the README.
"""

__version__ = "0.1.0"

from imcluster.handover import on_handover  # noqa: E402  (--handover yes)
from imcluster.once import run_once  # noqa: E402  (the API an app imports)


def recovered(sid: str, namespace: str = "/") -> bool:
    """Whether the Socket.IO session `sid` (of `namespace`) was recovered by
    connection state recovery (`--recovery-window`): its client came back with
    its pid and offset, and got its sid, rooms, session data and the broadcasts
    it missed. True from before its connect handler runs until it disconnects;
    False for a new session, and outside imcluster's workers."""
    import sys

    rec = sys.modules.get("imcluster.workers.recovery")
    return rec is not None and rec.recovered(sid, namespace)


__all__ = ["on_handover", "recovered", "run_once"]
