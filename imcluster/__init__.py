"""imcluster: a multi-process, single-host Socket.IO server.

One master owns the port and hands every connection to the worker that owns
its Engine.IO session; see docs/ and the README.
"""

__version__ = "0.1.0"

from imcluster.handover import on_handover  # noqa: E402  (--handover yes)
from imcluster.once import run_once  # noqa: E402  (the API an app imports)

__all__ = ["on_handover", "run_once"]
