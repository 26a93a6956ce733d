"""The `imcluster` command: run the cluster, and talk to a running one."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from imcluster import __version__, settings
from imcluster.control import Control, ControlError, ReloadTimeout
from imcluster.redact import redact, setup_logging

# LSB status codes, as supervisorctl uses them.
STATUS_RUNNING = 0
STATUS_NOT_RUNNING = 3
STATUS_UNKNOWN = 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imcluster", description=(
        "A multi-process Socket.IO server: one master owns the port and hands every "
        "connection to the worker that owns its session."))
    p.add_argument("--version", action="version", version=f"imcluster {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the master and its workers (foreground)",
                         description="Start the master and its workers in the foreground.")
    run.add_argument("app", nargs="?", metavar="MODULE:ATTR",
                     help="a socketio.Server, or a socketio.WSGIApp built on one; MODULE is "
                          "imported from the current folder (default: the chat demo)")
    settings.add_arguments(run)

    for name, text in (("status", "show the master and every worker"),
                       ("reload", "replace every worker, one at a time, with no downtime"),
                       ("scale", "change the number of workers: N, +N or -N"),
                       ("stop", "stop gracefully")):
        c = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        c.add_argument("--control", metavar="PATH", help="control socket path (as given to run)")
        c.add_argument("--bind", metavar="HOST:PORT", help="find the default control socket "
                       "from the port given to run")
        c.add_argument("--config", metavar="FILE", help="the config file given to run")
        if name == "status":
            c.add_argument("--json", action="store_true", help="print JSON")
        if name == "reload":
            c.add_argument("--no-wait", action="store_true",
                           help="return once the reload has started")
            c.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                           help="give up waiting after this long (default 600)")
        if name == "scale":
            c.add_argument("to", metavar="N|+N|-N")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = settings.resolve(args)
    except settings.SettingError as e:
        print(f"imcluster: {redact(str(e))}", file=sys.stderr)
        return 2
    if args.command == "run":
        return _run(args, cfg)
    ctl = Control(cfg.control)
    try:
        if args.command == "status":
            return _status(ctl, args.json)
        if args.command == "reload":
            return _reload(ctl, args.no_wait, args.timeout)
        if args.command == "scale":
            print(f"scaling to {ctl.scale(args.to)} workers")
            return 0
        ctl.stop()
        print("stopping")
        return 0
    except ControlError as e:
        print(f"imcluster: {e}", file=sys.stderr)
        return STATUS_UNKNOWN


def _run(args: argparse.Namespace, cfg: settings.Config) -> int:
    setup_logging(cfg.log_level, "%(asctime)s [master pid %(process)d] %(levelname)s %(message)s")
    if cfg.redis and redact(cfg.redis) != cfg.redis and cfg.sources["redis"] == "--redis":
        logging.getLogger("imcluster.master").warning(
            "the Redis password is on the command line, where every user of this host can "
            "read it (ps); give it in IMCLUSTER_REDIS or the config file instead")
    from imcluster.master.loop import Master  # not needed by the other verbs

    return Master(cfg, args.app).run()


def _reload(ctl: Control, no_wait: bool, timeout: float) -> int:
    try:
        result = ctl.reload(wait=not no_wait, timeout=timeout)
    except ReloadTimeout as e:
        print(f"imcluster: {e}", file=sys.stderr)
        return 1
    if result is None:
        print("reload started")
        return 0
    if result.ok:
        print(f"reload complete: {result.replaced} worker(s) replaced")
        return 0
    print(f"imcluster: reload failed: {result.error} (the old workers keep serving)",
          file=sys.stderr)
    return 1


def _status(ctl: Control, as_json: bool) -> int:
    status = ctl.status()
    st = status.raw
    code = STATUS_RUNNING if status.ready else STATUS_NOT_RUNNING
    if as_json:
        print(json.dumps(st, indent=2))
        return code
    m = st["master"]
    broadcasts = m["broadcast"] + (f" {m['redis']}" if m.get("redis") else "")
    print(f"master  pid {m['pid']}  up {_dur(m['uptime'])}  fds {m['fds']}  "
          f"bind {m['bind']}  broadcasts {broadcasts}  pending {m['pending']}"
          + ("  STOPPING" if m["stopping"] else ""))
    cols = ("slot", "pid", "state", "uptime", "restarts", "cpu", "rss", "conns", "sessions")
    rows = [cols]
    for w in st["workers"]:
        rows.append((
            str(w["slot"]) + ("*" if w["retired"] else "+" if w["replacement"] else ""),
            str(w["pid"] or "-"), w["state"],
            _dur(w["uptime"]), str(w["restarts"]),
            "-" if w["cpu"] is None else f"{w['cpu']:.0f}%",
            "-" if w["rss"] is None else f"{w['rss'] / 2**20:.1f}M",
            _dash(w["connections"]), _dash(w["sessions"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    for r in rows:
        print("  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip())
    for w in st["workers"]:
        if w["last_error"]:
            print(f"slot {w['slot']}: {w['last_error']}")
    if any(w["retired"] or w["replacement"] for w in st["workers"]):
        print("* retired, draining   + replacement, starting")
    if st.get("reload"):
        r = st["reload"]
        print(f"reload in progress ({r['reason']}): slot {r['slot']} {r['phase']}, "
              f"{len(r['queued'])} more queued")
    elif st.get("last_reload") and not st["last_reload"]["ok"]:
        print(f"last reload FAILED: {st['last_reload']['error']}")
    return code


def _dash(v: object) -> str:
    return "-" if v is None else str(v)


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


if __name__ == "__main__":
    sys.exit(main())
