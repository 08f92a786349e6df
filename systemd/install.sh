#!/usr/bin/env bash
# Install tradeguard as systemd services (see docs/DEPLOY.md). Idempotent: run it again to
# upgrade the code and units; it never overwrites /etc/tradeguard/tradeguard.toml or credentials.
#
#   sudo systemd/install.sh [--dry-run] [--source DIR] [--python PYTHON]
#
# --dry-run   print every change it would make, change nothing (no root needed)
# --source    the tradeguard source tree to install (default: this script's repository)
# --python    the interpreter for the virtualenv, Python >= 3.11 (default: python3)
set -euo pipefail

PREFIX=/opt/tradeguard
VENV=$PREFIX/venv
ETC=/etc/tradeguard
CREDSTORE=/etc/credstore
UNIT_DIR=/etc/systemd/system
POLKIT_DIR=/etc/polkit-1/rules.d
SERVICE_USER=tradeguard
UNITS=(tradeguard-bot.service tradeguard-watchdog.service tradeguard-paper.service tradeguard.target)
PAPER_UNIT=tradeguard-paper.service

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=$(dirname "$HERE")
PYTHON=python3
DRY_RUN=0
FRESH_CONFIG=0

usage() {
    sed -n '5,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --source) [ $# -ge 2 ] || usage; SOURCE=$2; shift ;;
        --python) [ $# -ge 2 ] || usage; PYTHON=$2; shift ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown option: $1" >&2; usage ;;
    esac
    shift
done

# Print a command, then run it unless this is a dry run.
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    if [ "$DRY_RUN" -eq 0 ]; then "$@"; fi
}

note() { echo "# $*"; }

fail() { echo "install.sh: $*" >&2; exit 1; }

[ -f "$SOURCE/setup.cfg" ] && [ -f "$SOURCE/requirements.txt" ] \
    || fail "$SOURCE is not a tradeguard source tree (no setup.cfg/requirements.txt); use --source DIR"
for unit in "${UNITS[@]}"; do
    [ -f "$HERE/$unit" ] || fail "missing unit file $HERE/$unit"
done
if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    fail "must run as root (or try --dry-run)"
fi
command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found; pass --python /path/to/python3.11"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$PYTHON is older than Python 3.11"
if [ "$DRY_RUN" -eq 1 ]; then note "dry run: nothing is changed"; fi

# 1. A dedicated system user: the bot and the watchdog run as it (the watchdog must be able to
#    SIGKILL the bot, and both share /var/lib/tradeguard).
if getent passwd "$SERVICE_USER" >/dev/null; then
    note "user $SERVICE_USER exists"
else
    run useradd --system --user-group --home-dir /var/lib/tradeguard --no-create-home \
        --shell /usr/sbin/nologin --comment "tradeguard trading bot" "$SERVICE_USER"
fi

# 2. The code, in its own virtualenv with the pinned dependencies (owned by root: the service
#    user cannot change what it runs).
run install -d -m 0755 -o root -g root "$PREFIX"
if [ -x "$VENV/bin/python" ]; then
    note "virtualenv $VENV exists"
else
    run "$PYTHON" -m venv "$VENV"
fi
run "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
run "$VENV/bin/python" -m pip install --quiet -r "$SOURCE/requirements.txt"
run "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$SOURCE"

# 3. Configuration (readable by the service group, never overwritten) and the credential store
#    (root only: systemd copies each credential into the unit's private $CREDENTIALS_DIRECTORY).
run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC"
if [ -e "$ETC/tradeguard.toml" ]; then
    note "$ETC/tradeguard.toml exists: kept"
else
    run install -m 0640 -o root -g "$SERVICE_USER" "$SOURCE/tradeguard.example.toml" \
        "$ETC/tradeguard.toml"
    FRESH_CONFIG=1
fi
run install -d -m 0700 -o root -g root "$CREDSTORE"

# 4. The units, and a polkit rule that lets the watchdog stop/start the bot's unit.
for unit in "${UNITS[@]}"; do
    run install -m 0644 -o root -g root "$HERE/$unit" "$UNIT_DIR/$unit"
done
if [ -d "$POLKIT_DIR" ]; then
    run install -m 0644 -o root -g root "$HERE/polkit/50-tradeguard.rules" \
        "$POLKIT_DIR/50-tradeguard.rules"
else
    note "no $POLKIT_DIR (polkit < 0.106?): the watchdog stops the bot with signals instead"
fi
if [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
else
    note "systemd is not running here: run 'systemctl daemon-reload' on the target host"
fi
# 5. The example configuration trades on the local paper exchange ([exchange] id = "paper"):
#    without its unit the bot would wait for an exchange that never comes. Enabled (into
#    tradeguard.target) only with a freshly installed example configuration; disable it when
#    you switch to a real exchange.
if [ "$FRESH_CONFIG" -eq 1 ]; then
    note "$ETC/tradeguard.toml trades on the paper exchange: enabling $PAPER_UNIT with the target"
    run systemctl enable "$PAPER_UNIT"
fi

cat <<EOF

Next steps (docs/DEPLOY.md):
  1. edit $ETC/tradeguard.toml (exchange id, symbols, risk limits, [alerts])
  2. put the secrets into $CREDSTORE, one file each, owner root, mode 0600:
       field.key (32 random bytes, base64: head -c 32 /dev/urandom | base64),
       exchange.api_key, exchange.api_secret and, for e-mail alerts, smtp.password
  3. systemctl enable --now tradeguard.target
     (paper trading: tradeguard-paper.service, enabled with a fresh example configuration;
      with a real exchange: systemctl disable --now tradeguard-paper.service)
  4. systemctl status tradeguard-bot tradeguard-watchdog; journalctl -u tradeguard-bot -f
EOF
