"""System tests: tradeguard under a real systemd in a podman container, and its OCI image.

They need root, podman, runc and debootstrap, take minutes, and are run by ``make test-system``
(which sets ``TRADEGUARD_SYSTEM_TESTS=1``) — never by ``make test``: without that variable
nothing here is even collected. Run them with ``-n 0``: the tests of a module follow one
installation through its life, in file order.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.helpers.proc import free_port
from tests.system import box as boxmod
from tests.system.box import Box, record, set_toml_key
from tests.system.images import ensure_images

ENABLED = os.environ.get("TRADEGUARD_SYSTEM_TESTS") == "1"
collect_ignore_glob = [] if ENABLED else ["test_*.py"]

REPORT = Path(os.environ.get("TRADEGUARD_SYSTEM_REPORT", "logs/system-report.json"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if ENABLED and boxmod.TIMES:
        boxmod.write_times(REPORT)


@pytest.fixture(scope="session")
def images() -> dict:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.fail(f"system tests need root and {', '.join(missing) or 'nothing else'} "
                    "(.ci/run installs podman runc debootstrap)")
    out = ensure_images()
    record("base_image_s", float(out["base_s"]))
    record("venv_image_s", float(out["venv_s"]))
    return out


@pytest.fixture(scope="module")
def booted(images: dict):
    """A fresh container from the venv image, systemd running as PID 1."""
    t0 = time.monotonic()
    box = Box.boot(str(images["venv"]), f"tg-sys-{os.getpid()}")
    record("boot_s", time.monotonic() - t0)
    try:
        yield box
    finally:
        if os.environ.get("TRADEGUARD_SYSTEM_KEEP") != "1":
            box.remove()


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"paper": free_port(), "health": free_port()}


@pytest.fixture(scope="module")
def installed(booted: Box, ports: dict[str, int]) -> Box:
    """tradeguard installed the way docs/DEPLOY.md says: clone, install.sh, edit the config,
    credentials into /etc/credstore. Not started yet."""
    box = booted
    box.copy_source("/root/tradeguard")
    t0 = time.monotonic()
    box.sh("cd /root/tradeguard && systemd/install.sh", timeout=900)
    record("install_sh_s", time.monotonic() - t0)
    # This host runs other tests: the ports a user would leave at 8765/8080 are chosen free.
    conf = box.sh("cat /etc/tradeguard/tradeguard.toml").stdout
    conf = set_toml_key(conf, "paper", "port", str(ports["paper"]))
    conf = set_toml_key(conf, "health", "port", str(ports["health"]))
    # A restarted bot takes up to ~25 s to be healthy on a loaded 2-core host (importing ccxt,
    # startup reconciliation): the default 30 s made the watchdog flatten for "did not come
    # back" before the restart budget was spent. docs/DEPLOY.md says to raise it on slow hosts.
    conf = set_toml_key(conf, "watchdog", "startup_timeout_s", "90.0")
    box.sh("cat > /etc/tradeguard/tradeguard.toml", input=conf.encode())
    box.tg("config check")
    return box
