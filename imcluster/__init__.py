"""imcluster: a multi-process, single-host Socket.IO server.

One master owns the port and hands every connection to the worker that owns
its Engine.IO session; see docs/ and the README.
"""

__version__ = "0.1.0"

from imcluster.once import run_once  # noqa: E402  (the one API an app imports)

__all__ = ["run_once"]
