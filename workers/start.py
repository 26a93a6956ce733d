"""A worker's first steps, before it imports python-socketio or the app.

The master spawns `python -m imcluster.workers --channel-fd N --slot S
--worker-id W`: the command line, which every user of the host can read
(`ps`), names the worker and nothing secret. The spec (the app, the Redis URL
with its password, the settings) is the first message on the channel. Then
the installed library versions are checked against the tested ranges, and
only then are the libraries and the app imported (`main.run`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from imcluster import channel as ch
from imcluster.master.lifecycle import DEPENDENCY_ERROR
from imcluster.redact import setup_logging
from imcluster.workers import versions
from imcluster.workers.link import Link

log = logging.getLogger("imcluster.worker")


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m imcluster.workers",
                                description="An imcluster worker; only its master starts it.")
    p.add_argument("--channel-fd", type=int, required=True,
                   help="inherited end of the master's SOCK_SEQPACKET channel")
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--worker-id", type=int, required=True)
    return p.parse_args(argv)


def _setup_logging(level: str, slot: int) -> None:
    setup_logging(level, f"%(asctime)s [worker {slot} pid %(process)d] %(levelname)s %(message)s")
    # python-socketio logs every emit at INFO when given a logger; keep ours quiet.
    logging.getLogger("socketio").setLevel(logging.WARNING)
    logging.getLogger("engineio").setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    """Run one worker until it stops; its process exit code."""
    args = _args(argv)
    # The master decides when we stop: Ctrl-C in a terminal reaches the whole
    # process group, and the master's graceful stop must not be pre-empted.
    # Likewise a terminal hangup, and TTIN/TTOU sent to the group (they are
    # the master's scale signals; their default would stop a worker).
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    link = Link(args.channel_fd)
    payload = link.receive_first(ch.SPEC)
    if payload is None:
        print(f"imcluster worker {args.worker_id}: no spec from the master; exiting",
              file=sys.stderr)
        return 1
    spec = json.loads(payload)
    _setup_logging(spec.get("log_level", "INFO"), spec["slot"])
    try:
        for warning in versions.check_installed(bool(spec.get("allow_untested_versions"))):
            log.warning("running untested: %s", warning)
    except versions.Outside as e:
        log.error("refusing to start: %s", e)
        link.send(ch.ERROR, str(e).encode())
        return DEPENDENCY_ERROR
    from imcluster.workers.main import run  # python-socketio and eventlet's servers

    return run(spec, link)
