"""The library versions imcluster is tested with, and a worker's check of them at start.

The ranges are imcluster's own `install_requires` (setup.cfg), read back from
the installed package's metadata, so they are written once. A worker checks
the installed versions before it imports python-socketio or the app:

- older than the range: refused. Such versions fail per connection, not at
  import (python-engineio < 4.11 raises on every WebSocket close; python-socketio
  < 5.16.1 lacks the managers' `json` and drops broadcasts), and `pip check`
  accepts them when the range is loose; a refusal at start says so in one line.
- newer than the range: refused too, unless the operator allows untested
  versions (`allow_untested_versions`), when it is one warning line. We
  subclass and patch private parts of eventlet, python-engineio and
  python-socketio, which a minor release may change.

Versions are compared by release number (`5.16.1`); a pre-release sorts
before its release (but `<5.19` admits no 5.19 pre-release), a post-release
with it. That is all of PEP 440 that
these ranges need.
"""

from __future__ import annotations

import re
from importlib import metadata

DIST = "imcluster"

# NAME[extras] SPECIFIERS, or the older NAME (SPECIFIERS)
_REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*\(?([^;)]*)\)?\s*$")
_VERSION = re.compile(r"^\s*v?(\d+(?:\.\d+)*)(.*)$")
_OPERATOR = re.compile(r"^\s*(===|==|!=|<=|>=|<|>|~=)\s*(\S+)\s*$")


class Outside(ValueError):
    """An installed version outside its tested range; the message is one line."""


def parse_version(text: str) -> tuple[tuple[int, ...], int]:
    """(release numbers, 0 for a pre- or dev release else 1), for comparisons.

    Raises ValueError for text that does not start with a release number.
    """
    m = _VERSION.match(text)
    if m is None:
        raise ValueError(f"not a version: {text!r}")
    release = tuple(int(x) for x in m[1].split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]  # 5.16 == 5.16.0
    suffix = m[2].lower().lstrip(".-_")
    pre = bool(suffix) and not suffix.startswith(("post", "+"))
    return release, 0 if pre else 1


def satisfies(version: str, specifiers: str) -> bool:
    """Whether `version` meets every comma-separated specifier (`>=5.16.1,<5.19`).

    Understands ==, !=, <, <=, >, >= (and === as ==); an empty string admits
    anything. Raises ValueError on a specifier it cannot read.
    """
    v = parse_version(version)
    for spec in filter(None, (s.strip() for s in specifiers.split(","))):
        m = _OPERATOR.match(spec)
        if m is None or m[1] == "~=" or m[2].endswith(".*"):
            raise ValueError(f"unsupported version specifier {spec!r}")
        op, bound = m[1], parse_version(m[2])
        # <5.19 admits no 5.19 pre-release either (PEP 440, exclusive ordered comparison).
        below = v < bound and (v[0] != bound[0] or bound[1] == 0)
        ok = {"==": v == bound, "===": v == bound, "!=": v != bound, "<": below,
              "<=": v <= bound, ">": v > bound, ">=": v >= bound}[op]
        if not ok:
            return False
    return True


def _too_old(version: str, specifiers: str) -> bool:
    """Whether `version` fails a lower bound (>=, >, ==) of `specifiers`."""
    lower = ",".join(s for s in specifiers.split(",") if s.strip()[:1] in (">", "="))
    return not satisfies(version, lower)


def parse_requirement(text: str) -> tuple[str, str] | None:
    """(distribution name, specifiers) of a Requires-Dist line; None for one with a
    marker (an extra's requirement, or one for another platform)."""
    if ";" in text:
        return None
    m = _REQUIREMENT.match(text)
    if m is None:
        raise ValueError(f"cannot read requirement {text!r}")
    return m[1], m[2].replace(" ", "")


def tested_ranges() -> dict[str, str]:
    """{distribution: specifiers} from the installed imcluster's metadata."""
    ranges = {}
    for line in metadata.requires(DIST) or ():
        req = parse_requirement(line)
        if req is not None:  # lower bound first, as people write it
            ranges[req[0]] = ",".join(sorted(req[1].split(","), key=lambda s: s[:1] != ">"))
    return ranges


def check(ranges: dict[str, str], installed: dict[str, str | None],
          allow_untested: bool = False) -> list[str]:
    """Compare installed versions with their tested ranges.

    Returns a warning for each version newer than its range when
    `allow_untested`; raises `Outside` (one line naming every offender and
    what to do) when any version is older, missing, or newer without it.
    """
    refused: list[tuple[str, str, bool]] = []  # (what, pip requirement, newer than tested)
    warnings = []
    for name, specifiers in ranges.items():
        version = installed.get(name)
        if version is None:
            what, newer = f"{name} is not installed", False
        elif satisfies(version, specifiers):
            continue
        else:
            what = f"{name} {version} is outside the tested range {specifiers}"
            newer = not _too_old(version, specifiers)
            if allow_untested and newer:
                warnings.append(what)
                continue
        refused.append((what, f'"{name}{specifiers}"', newer))
    if refused:
        hint = "install tested versions: pip install " + " ".join(r for _, r, _ in refused)
        if all(newer for _, _, newer in refused):
            hint += (", or set allow_untested_versions (IMCLUSTER_ALLOW_UNTESTED_VERSIONS=yes)"
                     " to run them anyway")
        raise Outside("; ".join(what for what, _, _ in refused) + "; " + hint)
    return warnings


def installed_versions(names) -> dict[str, str | None]:
    """{distribution: installed version, or None}."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def check_installed(allow_untested: bool = False) -> list[str]:
    """`check` on this process's installed libraries; see there."""
    ranges = tested_ranges()
    return check(ranges, installed_versions(ranges), allow_untested)
