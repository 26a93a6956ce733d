"""The tested library ranges: declared once (setup.cfg), checked by every worker at start.

The real-process tests put a distribution's metadata (a `.dist-info` folder,
what pip leaves behind) ahead of site-packages on the cluster's PYTHONPATH,
so the worker sees an untested version exactly as it would after an upgrade;
the code path is the production one, with no test switch in it.
"""

from __future__ import annotations

import configparser
import os
import re

import pytest
from conftest import ROOT
from pyclients import Client

from imcluster.workers import versions

RANGES = {"python-socketio": ">=5.16.1,<5.19", "python-engineio": ">=4.11,<4.16"}


@pytest.mark.parametrize("version, spec, ok", [
    ("5.16.1", ">=5.16.1,<5.19", True),
    ("5.18.9", ">=5.16.1,<5.19", True),
    ("5.16.0", ">=5.16.1,<5.19", False),
    ("5.19.0", ">=5.16.1,<5.19", False),
    ("5.19", ">=5.16.1,<5.19", False),
    ("6.0.0", ">=5.16.1,<5.19", False),
    ("4.11", ">=4.11.0", True),  # 4.11 == 4.11.0
    ("5.16.1rc1", ">=5.16.1", False),  # a pre-release comes before its release
    ("5.19.0rc1", "<5.19", False),
    ("5.16.1.post1", ">=5.16.1,<5.16.2", True),
    ("1.0", "", True),
    ("1.0", "==1.0,!=1.1", True),
    ("1.1", "!=1.1", False),
])
def test_satisfies(version, spec, ok):
    assert versions.satisfies(version, spec) is ok


@pytest.mark.parametrize("bad", ["~=5.1", "==5.*", ">>5"])
def test_unreadable_specifiers_are_an_error_not_a_pass(bad):
    with pytest.raises(ValueError):
        versions.satisfies("5.1", bad)


def test_parse_requirement():
    assert versions.parse_requirement("python-socketio<5.19,>=5.16.1") == (
        "python-socketio", "<5.19,>=5.16.1")
    assert versions.parse_requirement("redis (>=5.0, <8.2)") == ("redis", ">=5.0,<8.2")
    assert versions.parse_requirement('pytest>=8; extra == "test"') is None


def test_versions_in_range_pass_silently():
    assert versions.check(RANGES, {"python-socketio": "5.18.1",
                                   "python-engineio": "4.11.0"}) == []


def test_a_newer_version_is_refused_unless_allowed():
    installed = {"python-socketio": "5.19.0", "python-engineio": "4.15.1"}
    with pytest.raises(versions.Outside) as e:
        versions.check(RANGES, installed)
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith("python-socketio 5.19.0 is outside the tested range >=5.16.1,<5.19")
    assert 'pip install "python-socketio>=5.16.1,<5.19"' in line
    assert "IMCLUSTER_ALLOW_UNTESTED_VERSIONS=yes" in line
    assert versions.check(RANGES, installed, allow_untested=True) == [
        "python-socketio 5.19.0 is outside the tested range >=5.16.1,<5.19"]


def test_an_older_or_missing_version_is_refused_even_when_untested_ones_are_allowed():
    for installed in ({"python-socketio": "5.11.4", "python-engineio": "4.15.1"},
                      {"python-socketio": "5.19.0", "python-engineio": "4.9.0"},
                      {"python-socketio": "5.18.0"}):
        with pytest.raises(versions.Outside) as e:
            versions.check(RANGES, installed, allow_untested=True)
        assert "ALLOW_UNTESTED" not in str(e.value)  # it would not help
    assert "python-engineio is not installed" in str(e.value)


def _setup_cfg_requirements() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    out = {}
    for line in cfg["options"]["install_requires"].strip().splitlines():
        name, spec = versions.parse_requirement(line)
        out[name] = spec
    return out


def _canonical(spec: str) -> set[str]:
    return {re.sub(r"(\.0)+$", "", s) for s in spec.split(",")}


def test_the_worker_checks_what_setup_cfg_declares():
    """The ranges are written once, in setup.cfg; a worker reads them back from
    the installed metadata (a stale install, one made before setup.cfg changed,
    fails here: run scripts/setup)."""
    declared = _setup_cfg_requirements()
    assert set(versions.tested_ranges()) == set(declared)
    for name, spec in versions.tested_ranges().items():
        assert _canonical(spec) == _canonical(declared[name]), name


def test_every_declared_library_has_a_tested_floor_and_ceiling():
    for name, spec in _setup_cfg_requirements().items():
        ops = {re.match(r"[<>=!~]+", s)[0] for s in spec.split(",")}
        assert ">=" in ops and "<" in ops, f"{name}{spec}: declare the tested range"


# ---- real processes ----------------------------------------------------------


def _metadata_dir(tmp_path, name: str, version: str):
    """A folder holding only `name`'s metadata at `version`, as pip would leave it."""
    d = tmp_path / f"meta-{name}-{version}"
    info = d / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return d


def _env(meta_dir, **extra) -> dict:
    path = os.pathsep.join(filter(None, (str(meta_dir), os.environ.get("PYTHONPATH"))))
    return {"PYTHONPATH": path, **extra}


def test_a_worker_refuses_a_newer_library_and_the_master_stops_with_one_line(
        cluster_factory, tmp_path):
    meta = _metadata_dir(tmp_path, "python-socketio", "99.0.0")
    cluster = cluster_factory(workers=2, env=_env(meta))
    assert cluster.proc.wait(30) == 3
    log = cluster.log()
    lines = [ln for ln in log.splitlines() if "CRITICAL" in ln]
    assert len(lines) == 1, log
    assert "workers refuse to start: python-socketio 99.0.0 is outside the tested range" \
        in lines[0], log
    assert "IMCLUSTER_ALLOW_UNTESTED_VERSIONS=yes" in lines[0]
    assert "Traceback" not in log
    assert "READY" not in log


def test_allowing_untested_versions_serves_with_one_warning_per_worker(cluster_factory,
                                                                       tmp_path):
    meta = _metadata_dir(tmp_path, "python-socketio", "99.0.0")
    cluster = cluster_factory(workers=2, env=_env(meta, IMCLUSTER_ALLOW_UNTESTED_VERSIONS="yes"))
    workers = cluster.wait_ready()
    c = Client(cluster.url, "websocket")
    assert c.whoami() in {w["pid"] for w in workers}
    c.close()
    warned = [ln for ln in cluster.log().splitlines()
              if "running untested: python-socketio 99.0.0" in ln]
    assert len(warned) == 2 and all("WARNING" in ln for ln in warned)


def test_an_older_library_is_refused_even_when_untested_versions_are_allowed(
        cluster_factory, tmp_path):
    meta = _metadata_dir(tmp_path, "python-engineio", "4.9.0")
    cluster = cluster_factory(workers=1, env=_env(meta, IMCLUSTER_ALLOW_UNTESTED_VERSIONS="yes"))
    assert cluster.proc.wait(30) == 3
    log = cluster.log()
    assert "workers refuse to start: python-engineio 4.9.0 is outside the tested range" in log
    assert "ALLOW_UNTESTED" not in log


def test_a_reload_onto_untested_libraries_is_abandoned_saying_why():
    # The master's decision core, fed as data (tests/test_master_core.py).
    from test_master_core import serving

    from imcluster.master import events as ev
    from imcluster.master.lifecycle import DEPENDENCY_ERROR, State

    m = serving()
    m.command(cmd="reload")
    new = m.core.reloading.new
    m.feed(ev.WorkerError(new.worker_id, "python-socketio 99.0.0 is outside the tested "
                                         "range >=5.16.1,<5.19"))
    m.exit(new, DEPENDENCY_ERROR)  # from a replacement: stops the reload, not the master
    m.tick()
    assert m.core.reloading is None and not m.core.stopping
    assert m.core.last_reload["error"] == (
        "slot 0: the new worker refused to start: python-socketio 99.0.0 is outside the "
        "tested range >=5.16.1,<5.19")
    assert [w.state for w in m.core.slots] == [State.READY, State.READY]
