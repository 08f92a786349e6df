"""A podman container booted with systemd as PID 1, driven from the host.

Every command runs through ``podman exec``; nothing inside the container is mocked. Times of the
steps the tests measure are collected in :data:`TIMES` and written to the report at the end.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from tests.system.images import PODMAN, REPO, ULIMITS, podman

VENV_PY = "/opt/tradeguard/venv/bin/python"
TG = "/opt/tradeguard/venv/bin/tradeguard"
CLI_PATHS = "--config /etc/tradeguard/tradeguard.toml --data-dir /var/lib/tradeguard " \
            "--logs-dir /var/log/tradeguard"
# podman run options that boot systemd as PID 1 on this kind of host (runc, cgroupfs).
BOOT_OPTS = ("--systemd=always", *ULIMITS,
             "--network", "host")
# The checkout as a user clones it: no virtualenv, git metadata, runtime data or caches.
SOURCE_EXCLUDES = (".venv", ".git", "data", "logs", "__pycache__", "*.egg-info", "build",
                   ".pytest_cache", "chaos-report")

TIMES: dict[str, float] = {}


class BoxError(AssertionError):
    """A command inside the container failed; the message has its output."""


def record(name: str, seconds: float) -> None:
    TIMES[name] = round(seconds, 2)


class Box:
    """One running container, addressed by name."""

    def __init__(self, name: str):
        self.name = name

    # --- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def boot(cls, image: str, name: str, *extra: str, timeout: float = 120) -> "Box":
        podman("rm", "-f", name, check=False)
        podman("run", "-d", "--name", name, *BOOT_OPTS, *extra, image, "/sbin/init")
        box = cls(name)
        box.wait_for(lambda: box.sh("systemctl is-system-running", check=False).stdout.strip()
                     in ("running", "degraded"), timeout, "systemd to finish booting")
        return box

    def remove(self) -> None:
        podman("rm", "-f", "-t", "5", self.name, check=False, timeout=120)

    # --- commands ------------------------------------------------------------------------------
    def sh(self, cmd: str, *, check: bool = True, timeout: float = 120,
           input: bytes | None = None) -> subprocess.CompletedProcess:
        """``bash -c cmd`` as root inside the container (text output)."""
        args = [*PODMAN, "exec", *(["-i"] if input is not None else []), self.name,
                "bash", "-c", cmd]
        r = subprocess.run(args, capture_output=True, timeout=timeout, input=input)
        out = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                          r.stderr.decode(errors="replace"))
        if check and r.returncode != 0:
            raise BoxError(f"in {self.name}: {cmd!r} exited {r.returncode}\n"
                           f"stdout: {out.stdout[-3000:]}\nstderr: {out.stderr[-3000:]}")
        return out

    def tg(self, args: str, *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """``tradeguard ARGS`` as the service user, the way docs/DEPLOY.md has an operator run it."""
        return self.sh(f"cd / && sudo -u tradeguard {TG} {args} {CLI_PATHS}", check=check,
                       timeout=timeout)

    def py(self, code: str, timeout: float = 60) -> Any:
        """Run ``code`` with the installed venv's Python as root; it prints one JSON value."""
        r = self.sh(f"{VENV_PY} -", input=code.encode(), timeout=timeout)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def put(self, path: str, content: str, mode: str = "0600") -> None:
        self.sh(f"umask 077; cat > {shlex.quote(path)} && chmod {mode} {shlex.quote(path)}",
                input=content.encode())

    def copy_source(self, dest: str) -> None:
        """The working tree (as a fresh clone would have it) to ``dest`` in the container."""
        excludes = [f"--exclude={e}" for e in SOURCE_EXCLUDES]
        tar = subprocess.run(["tar", "-C", str(REPO), *excludes, "-c", "."], capture_output=True,
                             check=True, timeout=120)
        self.sh(f"mkdir -p {dest} && tar -C {dest} -x", input=tar.stdout)

    # --- systemd -------------------------------------------------------------------------------
    def show(self, unit: str, *props: str) -> dict[str, str]:
        r = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def journal(self, *units: str, since: str | None = None) -> str:
        args = " ".join(f"-u {u}" for u in units)
        when = f" --since=@{since}" if since else ""
        return self.sh(f"journalctl --no-pager -o short-unix {args}{when}").stdout

    def now(self) -> str:
        return self.sh("date +%s.%N").stdout.strip()

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str,
                 interval: float = 0.25) -> Any:
        """Poll ``predicate`` until truthy; fail naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = predicate()
            except BoxError as e:
                last = e
            else:
                if last:
                    return last
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} "
                                     f"(last: {str(last)[-1500:]})")
            time.sleep(interval)


def set_toml_key(text: str, section: str, key: str, value: str) -> str:
    """``text`` with ``key = value`` set in ``[section]`` (the line must exist)."""
    lines, current, done = text.splitlines(keepends=True), None, False
    for i, line in enumerate(lines):
        if line.startswith("["):
            current = line.strip()[1:-1]
        elif current == section and not done and re.match(rf"{re.escape(key)}\s*=", line):
            lines[i], done = f"{key} = {value}\n", True
    assert done, f"no {key} in [{section}]"
    return "".join(lines)


def write_times(path: Path) -> None:
    path.write_text(json.dumps(TIMES, indent=2) + "\n", encoding="utf-8")


def flatten_with_kill_switch(box: Box, positions: Callable[[], dict], kill: Callable[[], Any],
                             name: str, wait_open_s: float = 240) -> None:
    """Wait for an open position, pull the kill switch (``kill``) and wait until every position
    is closed; the time from the kill switch to flat is recorded as ``name``."""
    box.wait_for(lambda: any(abs(a) > 0 for a in positions().values()), wait_open_s,
                 "an open position to flatten")
    t0 = time.monotonic()
    kill()
    box.wait_for(lambda: all(abs(a) < 1e-6 for a in positions().values()), 90,
                 "the positions to be closed")
    record(name, time.monotonic() - t0)
