"""Fixtures of the edge-review tests: a real PostgreSQL cluster of their own, a headless chromium, a reviewer."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.broker import free_port

REVIEWER = ("alice", "correct horse battery")


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root (tests run as root here and in CI): run it as the postgres system user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL cluster in a temp dir, on a unix socket there; its SQLAlchemy URL."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries not installed (apt install postgresql; make sysdeps does)")
    bindir = Path(found[-1]).parent
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
    root = Path(tempfile.mkdtemp(prefix="edge-review-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
        timeout=60,
    )
    options = f"-k {root} -p {port} -c listen_addresses='' -c fsync=off"
    ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "30"]
    subprocess.run(_as_postgres([*ctl, "-o", options, "start"]), check=True, capture_output=True, timeout=60)
    try:
        yield f"postgresql://postgres@/postgres?host={root}&port={port}"
    finally:
        subprocess.run(_as_postgres([*ctl, "-m", "immediate", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def reviewers_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edge_runtime.review.auth import add_reviewer

    path = tmp_path_factory.mktemp("reviewers") / "reviewers"
    add_reviewer(path, *REVIEWER)
    return path


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium through its chromedriver, headless; never downloads a browser."""
    pytest.importorskip("selenium", reason="selenium is in the [dev] extra")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    if not (os.access(driver_path, os.X_OK) and os.access(browser, os.X_OK)):
        pytest.skip("chromium and chromium-driver not installed (make sysdeps installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
