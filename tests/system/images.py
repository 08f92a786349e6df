"""Container images for the system tests, built locally and cached by their inputs.

No container registry is reachable here, so the base is made with debootstrap from the Debian
mirror apt already uses and imported into podman (``localhost/tradeguard-sysbase:<key>``). A
second image adds ``/opt/tradeguard/venv`` with the pinned requirements
(``localhost/tradeguard-sysvenv:<key>``), so that a test run's ``systemd/install.sh`` finds the
dependencies installed and only reinstalls the project — what re-running install.sh on an
upgrade does. Each tag is a hash of everything that goes into the image; an image whose tag
exists is reused. pip inside the containers uses the host's index configuration (pip.conf,
``PIP_*``, CA bundle), copied into the base image.

``python -m tests.system.images`` builds both and prints the times.
"""
from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "systemd", "systemd-sysv", "dbus", "sudo",
            "ca-certificates")
# Installed with apt in the imported image: polkitd's postinst fails inside debootstrap.
APT_PACKAGES = ("polkitd",)
BASE_NAME = "localhost/tradeguard-sysbase"
VENV_NAME = "localhost/tradeguard-sysvenv"
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager=cgroupfs")
# runc cannot raise these limits here ("error setting rlimits ... operation not permitted"):
# every container and build step gets them set explicitly.
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
STAGE_NAME = "localhost/tradeguard-sysbase-stage"
# Part of the cache key: change it when the steps that make the base image change.
RECIPE = "debootstrap minbase + pip config + apt " + " ".join(APT_PACKAGES) + " / v1"
PIP_FILES = (Path("/etc/pip.conf"), Path("/etc/xdg/pip"))
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Host pip settings that name host-only paths (a local wheel directory) are not carried over.
PIP_ENV_SKIP = ("PIP_FIND_LINKS",)


class ImageError(RuntimeError):
    """An image could not be built; the message says which step failed and its output."""


def podman(*args: str, timeout: float = 600, check: bool = True,
           input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run podman (runc, cgroupfs: crun fails on this kind of host) and return its result."""
    r = subprocess.run([*PODMAN, *args], capture_output=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise ImageError(f"podman {' '.join(args[:3])}... failed ({r.returncode}): "
                         f"{r.stderr.decode(errors='replace')[-2000:]}")
    return r


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt uses on this host (deb822 or one-line sources)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s+" + SUITE + r"\s", text, re.M)
        if m:
            return m[1]
    return "http://deb.debian.org/debian"


def pip_env() -> dict[str, str]:
    """The host's PIP_* settings that a container can use as they are."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith("PIP_") and k not in PIP_ENV_SKIP}


def _pip_config_files() -> list[Path]:
    out: list[Path] = []
    for p in PIP_FILES:
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
    return out


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


def base_key() -> str:
    """Hash of the base image's inputs: suite, packages, mirror, pip config, the recipe."""
    files = _pip_config_files() + ([CA_BUNDLE] if CA_BUNDLE.is_file() else [])
    return _digest(SUITE.encode(), " ".join(PACKAGES + APT_PACKAGES).encode(), debian_mirror().encode(),
                   repr(pip_env()).encode(), RECIPE.encode(),
                   *(str(f).encode() + f.read_bytes() for f in files))


def venv_key(base: str) -> str:
    return _digest(base.encode(), (REPO / "requirements.txt").read_bytes())


def _run(argv: list[str], what: str, timeout: float) -> None:
    r = subprocess.run(argv, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise ImageError(f"{what} failed ({r.returncode}): "
                         f"{(r.stdout + r.stderr).decode(errors='replace')[-3000:]}")


def _carry_pip_config(rootfs: Path) -> None:
    """The host's pip configuration into ``rootfs``: its files, its CA bundle (which may hold the
    CA of a proxy in front of the index), and its ``PIP_*`` settings as ``/etc/pip.conf`` keys
    (an environment that ``podman exec`` and systemd services would not inherit)."""
    for f in _pip_config_files():
        dest = rootfs / f.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    if CA_BUNDLE.is_file():
        dest = rootfs / CA_BUNDLE.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CA_BUNDLE, dest)
    conf = configparser.ConfigParser()
    target = rootfs / "etc/pip.conf"
    conf.read(target)
    if not conf.has_section("global"):
        conf.add_section("global")
    for key, value in pip_env().items():
        option = key[len("PIP_"):].lower().replace("_", "-")
        option = {"default-timeout": "timeout"}.get(option, option)
        if not conf.has_option("global", option):
            conf.set("global", option, value)
    with open(target, "w", encoding="utf-8") as fh:
        conf.write(fh)


def build_stage(stage: str, workdir: Path) -> None:
    """debootstrap a minimal bookworm with systemd and Python 3.11; import it as ``stage``."""
    rootfs = workdir / "rootfs"
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
          str(rootfs), debian_mirror()], "debootstrap", timeout=1500)
    _carry_pip_config(rootfs)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (rootfs / junk).glob("*"):
            if p.is_file():
                p.unlink()
    (rootfs / "etc/machine-id").write_text("", encoding="utf-8")  # systemd makes one at boot
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        r = subprocess.run([*PODMAN, "import", "--change", "CMD=/sbin/init", "-", stage],
                           stdin=tar.stdout, capture_output=True, timeout=600)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait(60)
    if r.returncode != 0:
        raise ImageError(f"podman import failed: {r.stderr.decode(errors='replace')[-2000:]}")


def build_base(stage: str, tag: str) -> None:
    """The debootstrap stage plus what apt installs, as ``tag``."""
    _commit_after(stage, tag, "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; "
                  f"apt-get install -y -qq --no-install-recommends {' '.join(APT_PACKAGES)}; "
                  "apt-get clean; rm -rf /var/lib/apt/lists/*", timeout=900)


def _commit_after(image: str, tag: str, script: str, timeout: float,
                  input: bytes | None = None) -> None:
    """Run ``script`` in a container of ``image`` (host network) and commit it as ``tag``."""
    name = f"tg-build-{os.getpid()}"
    podman("rm", "-f", name, check=False)
    try:
        podman("run", "-i", "--name", name, "--network", "host", *ULIMITS, image, "sh", "-c",
               f"set -e; {script}", input=input, timeout=timeout)
        podman("commit", "--change", "CMD=/sbin/init", name, tag, timeout=600)
    finally:
        podman("rm", "-f", name, check=False)


def _unmount_below(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, timeout=60)


def build_venv(base: str, tag: str) -> None:
    """``base`` plus /opt/tradeguard/venv with requirements.txt installed, committed as ``tag``."""
    _commit_after(base, tag,
                  "cat > /tmp/requirements.txt; python3 -m venv /opt/tradeguard/venv; "
                  "/opt/tradeguard/venv/bin/python -m pip install --quiet --upgrade pip "
                  "setuptools wheel; /opt/tradeguard/venv/bin/python -m pip install --quiet "
                  "-r /tmp/requirements.txt; rm -rf /root/.cache /tmp/requirements.txt",
                  input=(REPO / "requirements.txt").read_bytes(), timeout=1200)


def ensure_images(log=lambda msg: None) -> dict[str, object]:
    """Both images, built when their tag is missing; returns the tags and the build times."""
    out: dict[str, object] = {}
    base = f"{BASE_NAME}:{base_key()}"
    t0 = time.monotonic()
    if not image_exists(base):
        stage = f"{STAGE_NAME}:{base.rsplit(':', 1)[1]}"
        if not image_exists(stage):
            log(f"building {stage} (debootstrap {SUITE} from {debian_mirror()})")
            with tempfile.TemporaryDirectory(prefix="tg-sysbase-", dir="/var/tmp") as d:
                try:
                    build_stage(stage, Path(d))
                finally:
                    _unmount_below(Path(d))  # a failed debootstrap may leave /proc mounted
        log(f"building {base} ({', '.join(APT_PACKAGES)} with apt)")
        build_base(stage, base)
        out["base_built"] = True
    out["base"], out["base_s"] = base, round(time.monotonic() - t0, 1)
    venv = f"{VENV_NAME}:{venv_key(base)}"
    t0 = time.monotonic()
    if not image_exists(venv):
        log(f"building {venv} (requirements.txt into /opt/tradeguard/venv)")
        build_venv(base, venv)
        out["venv_built"] = True
    out["venv"], out["venv_s"] = venv, round(time.monotonic() - t0, 1)
    return out


if __name__ == "__main__":
    result = ensure_images(lambda msg: print(msg, file=sys.stderr, flush=True))
    print(result)
