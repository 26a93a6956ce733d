"""Headless Chromium for the browser tests (test_browser.py, test_admin_ui.py).

Chromium is Debian's /usr/bin/chromium (scripts/setup installs it when run as
root), driven by the pip package `playwright` over CDP; Playwright's own
browser download is never used. The `browser` fixture (conftest.py) launches
one per test module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def ensure_chromium() -> None:
    """Skip (with the reason) only when Debian's chromium is missing and can't be installed."""
    if os.access(CHROMIUM, os.X_OK):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (not root or no "
                    "apt-get): run scripts/setup as root, or apt-get install chromium")
    # Same step as scripts/setup, for a pytest run without it.
    try:
        out = subprocess.run("apt-get update -qq && apt-get install -y -qq chromium",
                             shell=True, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        why = f"exit {out.returncode}: {(out.stderr or out.stdout)[-500:]}"
    except subprocess.TimeoutExpired:
        why = "no answer in 300 s"
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing and `apt-get install chromium` failed ({why})")


@contextlib.contextmanager
def launched():
    """A headless Chromium (playwright's Browser), closed on exit."""
    ensure_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is not installed: run scripts/setup "
                    "(pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                              timeout=30_000)
        try:
            yield b
        finally:
            b.close()
