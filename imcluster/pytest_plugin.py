"""pytest plugin: the `imcluster` fixture runs your app on N real worker processes.

Registered through the `pytest11` entry point, so installing imcluster is
enough (`-p no:imcluster` turns it off):

    def test_room_reaches_every_worker(imcluster):
        cluster = imcluster("myapp:sio", workers=3)      # started, every worker READY
        alice, *others = cluster.clients(6)              # spread over all 3 workers
        ...

`imcluster(app, workers=3, **settings)` returns a started
`imcluster.testing.Cluster`; every cluster a test started is stopped when the
test ends, however it ends, and a worker found alive after its master exited
fails the test. When a test fails, each cluster's log is shown with the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imcluster.testing import Cluster

LOG_LINES = 200  # of each cluster's log, shown under a failed test


@pytest.fixture
def imcluster(request, tmp_path):
    """A factory: `imcluster("myapp:sio", workers=3, redis=None, **settings)` starts a
    cluster and returns it once every worker is READY. The app's module is looked
    up in the current folder (or `cwd=`), then in the test file's folder (as the
    test file's own `import myapp` would find it, whichever folder pytest was
    started from), then on the usual `sys.path`."""
    started: list[Cluster] = []
    shown = request.node.__dict__.setdefault("_imcluster_clusters", [])
    test_dir = str(Path(str(request.node.fspath)).parent)

    def start(app: str | None = None, workers: int = 3, **settings) -> Cluster:
        settings.setdefault("log_dir", tmp_path)
        env = dict(settings.pop("env", None) or {})
        path = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = os.pathsep.join([test_dir] + ([path] if path else []))
        settings["env"] = env
        cluster = Cluster(app, workers, **settings)
        started.append(cluster)
        shown.append(cluster)
        return cluster.start()

    yield start
    outlived = []
    for cluster in started:
        cluster.stop()
        outlived += cluster.outlived
    if outlived:
        pytest.fail(f"imcluster: worker process(es) {outlived} outlived their master "
                    "(killed now)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for cluster in getattr(item, "_imcluster_clusters", ()):
        lines = cluster.log().splitlines()
        shown = "\n".join(lines[-LOG_LINES:])
        more = f" (last {LOG_LINES} of {len(lines)} lines)" if len(lines) > LOG_LINES else ""
        report.sections.append((f"imcluster log, {cluster.url}{more}", shown))
