#!/usr/bin/env bash
# Turn a freshly flashed Raspberry Pi OS (or any Debian-based board) into a provisioned tinyfed device, in one step:
#
#   (a checkout of the version the hub runs, copied to the Pi; or --from a wheel)
#   sudo scripts/pi-install.sh --bundle ~/pi-kitchen.tar.gz --data ~/kitchen.csv
#
# What it does (docs/install.md, "A Raspberry Pi as a device"), each step idempotent:
#  1. checks the board: aarch64 (64-bit OS: every package from wheels, ai-edge-litert) or armv7l (32-bit
#     Bookworm: numpy and cffi from the OS, tflite-runtime 2.14); Python >= 3.11;
#  2. the `tinyfed` system user (deploy/systemd/tinyfed.sysusers.conf through systemd-sysusers);
#  3. a venv at /opt/tinyfed (where the unit looks) with `tinyfed[device]` from this checkout (--from: a wheel,
#     or `tinyfed==X` from an index); the device extra picks the interpreter for the CPU;
#  4. the device's bundle from `tinyfed provision device ID --archive` into /etc/tinyfed (keys 0600, the tinyfed
#     user's), and the device's data file (--data) with a [data] table naming it;
#  5. deploy/systemd/tinyfed-device.service into /etc/systemd/system, enabled; started at once when systemd
#     runs (a chroot or a container without systemd: enabled only, it starts at the next boot).
# Needs root. Options: --bundle FILE.tar.gz|DIR (required), --data FILE.csv|FILE.npz, --from SPEC,
# --extras LIST (default device), --prefix DIR (default /opt/tinyfed), --no-start, --no-apt.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
UNIT_SRC=$REPO/deploy/systemd
PREFIX=/opt/tinyfed
CONF=/etc/tinyfed
STATE=/var/lib/tinyfed
BUNDLE=""
DATA=""
FROM=$REPO
EXTRAS=device
START=1
APT=1

say() { echo "pi-install: $*"; }
die() { echo "pi-install: error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
        --bundle) BUNDLE=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --from) FROM=$2; shift 2 ;;
        --extras) EXTRAS=$2; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --no-start) START=0; shift ;;
        --no-apt) APT=0; shift ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "run it as root: sudo $0 ..."
[ -n "$BUNDLE" ] || die "--bundle is required: the device's bundle from 'tinyfed provision device ID --archive' (docs/security.md)"
[ -e "$BUNDLE" ] || die "--bundle $BUNDLE: no such file or directory"
[ -z "$DATA" ] || [ -f "$DATA" ] || die "--data $DATA: no such file"
case $DATA in "" | *.csv | *.npz) ;; *) die "--data $DATA: a .csv or .npz file (docs/data.md)" ;; esac
[ -f "$UNIT_SRC/tinyfed-device.service" ] || die "$UNIT_SRC/tinyfed-device.service is missing: run the script from a tinyfed checkout"

# 1. The board.
MACHINE=$(uname -m)
PYTHON=$(command -v python3 || true)
[ -n "$PYTHON" ] || die "python3 is missing (Raspberry Pi OS has it): apt-get install python3"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$("$PYTHON" -V) is too old: tinyfed needs Python >= 3.11 (Raspberry Pi OS Bookworm or later)"
PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
# What pip sees: a 32-bit OS on a 64-bit kernel (Pi OS 32-bit on a Pi 4 or 5) is armv7l to pip, not aarch64.
BITS=$("$PYTHON" -c 'import struct; print(struct.calcsize("P") * 8)')
APT_PACKAGES=(python3-venv)
VENV_OPTS=()
case $MACHINE-$BITS in
    aarch64-64) say "64-bit ARM, Python $PYVER: every package from wheels (ai-edge-litert)" ;;
    x86_64-64) say "x86-64, Python $PYVER: every package from wheels (ai-edge-litert)" ;;
    aarch64-32 | armv7l-32 | armv8l-32)
        [ "$PYVER" = 3.11 ] || die "32-bit ARM with Python $PYVER: no interpreter has an armv7l wheel for it (tflite-runtime 2.14 is cp311 only); use 32-bit Bookworm or a 64-bit OS, or join as a microcontroller through the bridge (docs/install.md)"
        say "32-bit ARM, Python 3.11: numpy and cffi from the OS (no armv7l wheel on PyPI), tflite-runtime 2.14"
        APT_PACKAGES+=(python3-numpy python3-cffi)
        VENV_OPTS+=(--system-site-packages) ;;
    armv6l-32) die "ARMv6 (Pi 1, Zero, Zero W): no interpreter wheel exists for it; join as a microcontroller through the serial bridge (docs/install.md)" ;;
    *) die "unsupported machine $MACHINE ($BITS-bit): see docs/install.md, 'Which boards install from wheels'" ;;
esac

missing=()
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#VENV_OPTS[@]} -gt 0 ]; then
    "$PYTHON" -c 'import numpy' 2>/dev/null || missing+=(python3-numpy)
    "$PYTHON" -c 'import cffi' 2>/dev/null || missing+=(python3-cffi)
fi
if [ ${#missing[@]} -gt 0 ]; then
    [ "$APT" = 1 ] || die "missing OS packages ${missing[*]} and --no-apt given: apt-get install ${missing[*]}"
    say "apt-get install ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The system user the unit runs as.
if ! id tinyfed >/dev/null 2>&1; then
    if command -v systemd-sysusers >/dev/null; then
        install -D -m 0644 "$UNIT_SRC/tinyfed.sysusers.conf" /etc/sysusers.d/tinyfed.conf
        systemd-sysusers /etc/sysusers.d/tinyfed.conf
    else
        useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin --user-group tinyfed
    fi
    say "created the system user tinyfed"
fi

# 3. The venv and tinyfed.
if [ ! -x "$PREFIX/bin/python" ]; then
    "$PYTHON" -m venv "${VENV_OPTS[@]}" "$PREFIX"
fi
spec=$FROM
case $FROM in
    *\[*) ;;                                    # extras given with the spec
    *) spec="$FROM[$EXTRAS]" ;;
esac
say "pip install '$spec' into $PREFIX (this takes a minute or two on a Pi)"
start=$SECONDS
"$PREFIX/bin/python" -m pip install -q --disable-pip-version-check "$spec"
say "installed in $((SECONDS - start)) s: $("$PREFIX/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(tinyfed|ai-edge-litert|tflite-runtime|numpy) ' | tr -s ' ' | paste -sd, -)"
"$PREFIX/bin/tinyfed" --help >/dev/null || die "$PREFIX/bin/tinyfed does not start"

# 4. The bundle, and the data.
install -d -m 0700 -o tinyfed -g tinyfed "$CONF" "$STATE"
if [ -d "$BUNDLE" ]; then
    # --bundle /etc/tinyfed (a re-run on an installed device) keeps the files where they are.
    [ "$(cd "$BUNDLE" && pwd -P)" = "$(cd "$CONF" && pwd -P)" ] || cp -a "$BUNDLE"/. "$CONF"/
else
    tar -xzf "$BUNDLE" -C "$CONF" --no-same-owner
fi
[ -f "$CONF/device.toml" ] || die "$BUNDLE holds no device.toml: is it a bundle from 'tinyfed provision device ID --archive'?"
if [ -n "$DATA" ]; then
    ext=${DATA##*.}
    install -m 0600 -o tinyfed -g tinyfed "$DATA" "$CONF/data.$ext"
    if grep -q '^\[data\]' "$CONF/device.toml"; then
        say "$CONF/device.toml already has a [data] table: left as it is (the data file is at $CONF/data.$ext)"
    else
        printf '\n[data]\nsource = "%s"  # written by pi-install.sh (docs/data.md)\n' "$CONF/data.$ext" >>"$CONF/device.toml"
    fi
fi
chown -R tinyfed:tinyfed "$CONF"
chmod 0600 "$CONF"/*.key
# The bundle's device.toml names its files where provisioning was told they would be (--install-dir): they must
# be here, or the device would refuse to start from the unit (exit 2) with the same message.
"$PREFIX/bin/python" - "$CONF/device.toml" <<'EOF'
import sys
from pathlib import Path

from edge_runtime.device_config import DeviceConfig
from edge_runtime.errors import TinyfedError

path = sys.argv[1]
try:
    config = DeviceConfig.load(path)
except TinyfedError as exc:
    sys.exit(f"pi-install: error: {exc}")
files = {"[broker] ca_file": config.broker.ca_file, "[broker] cert_file": config.broker.cert_file,
         "[broker] key_file": config.broker.key_file, "[trust] signing_key": config.trust.signing_key,
         "[trust] gateway_key": config.trust.gateway_key}
gone = [f"{key} = {value}" for key, value in files.items() if value and not Path(value).is_file()]
if gone:
    sys.exit(f"pi-install: error: {path} names files that are not here: {', '.join(gone)} "
             "(provision the device with --install-dir /etc/tinyfed, the default)")
print(f"pi-install: device {config.device.id} of federation {config.device.federation}, broker {config.broker.url}")
EOF

# 5. The unit.
install -m 0644 "$UNIT_SRC/tinyfed-device.service" /etc/systemd/system/tinyfed-device.service
if [ "$PREFIX" != /opt/tinyfed ]; then
    sed -i "s|/opt/tinyfed/bin/tinyfed|$PREFIX/bin/tinyfed|" /etc/systemd/system/tinyfed-device.service
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$START" = 1 ]; then
        systemctl enable --now tinyfed-device.service
        say "started: journalctl -u tinyfed-device -f"
    else
        systemctl enable tinyfed-device.service
        say "enabled (not started): systemctl start tinyfed-device"
    fi
else
    # No systemd as PID 1 (a chroot, a container, an image being prepared): enabling only makes the link.
    systemctl enable tinyfed-device.service 2>/dev/null \
        || { mkdir -p /etc/systemd/system/multi-user.target.wants
             ln -sf /etc/systemd/system/tinyfed-device.service /etc/systemd/system/multi-user.target.wants/; }
    say "enabled; systemd is not running here, so it starts at the next boot"
fi
say "done: $PREFIX/bin/tinyfed device run --config $CONF/device.toml runs as user tinyfed from tinyfed-device.service"
