#!/usr/bin/env bash
# An emulated Raspberry Pi userland: Debian bookworm (what Raspberry Pi OS 12 is built on) for arm64 (or armhf),
# built once with debootstrap and run under qemu-user-static through binfmt_misc. CI runs tinyfed inside it to
# show that the device installs and trains on a Pi's CPU architecture (tests/pi/, docs/install.md).
#
#   scripts/pi-userland.sh build                     # once: about 2-5 minutes, about 330 MB, cached (below)
#   scripts/pi-userland.sh run [--pi 4|5] [--bind DIR]... [--overlay DIR] [--] CMD [ARG]...
#   scripts/pi-userland.sh path | check | clean
#
# Cached in ${PI_USERLAND_ROOT:-${XDG_CACHE_HOME:-~/.cache}/tinyfed/pi-userland/bookworm-ARCH} (outside the
# checkout, so `git clean` keeps it); PI_ARCH=armhf builds the 32-bit one beside it. Needs root (debootstrap,
# chroot, mounts), debootstrap and qemu-user-static (.ci/run installs them). Network: deb.debian.org only, and
# whatever package index the host's pip uses.
#
# Why each piece of `run` is there (each one was a failure on this machine before it was added):
# - its own mount namespace (unshare): /proc, /sys, /dev and the binds vanish with the command, even when it is
#   killed, and two runs at once do not unmount each other's;
# - a Pi's /proc/cpuinfo bound over the emulated one: qemu user mode passes the host's x86 cpuinfo through, and
#   ai-edge-litert's CPU detection (cpuinfo, for XNNPACK) segfaults reading it;
# - QEMU_CPU pinned to the board's core (Pi 4: cortex-a72, Pi 5: cortex-a76): with qemu's default `max` model
#   XNNPACK takes code paths for CPU features no Pi has and gives wrong outputs silently;
# - the host's CA bundle, pip configuration, the local directories it names and PIP_* variables: pip inside
#   reaches the same package index the host's does (a TLS-intercepting proxy's CA included);
# - the repository (and every --bind DIR) at the same path inside, so paths in configs mean the same on both
#   sides; the network namespace is the host's, so a broker on the host's 127.0.0.1 is reachable from inside;
# - --overlay DIR: the cached userland as the lower layer of an overlayfs whose changes go to DIR, so a test
#   session starts from a "freshly flashed" board and the cache is never changed; runs with the same DIR see
#   each other's changes;
# - pip's cache bound from beside the userland (pip-cache-ARCH), meant to download wheels once per machine
#   (it stayed empty in the runs so far: not yet found why).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ARCH=${PI_ARCH:-arm64}
SUITE=bookworm
MIRROR=${PI_MIRROR:-http://deb.debian.org/debian}
# python3-venv: what a Pi owner's venv is made with; systemd and passwd: the install script's systemd-sysusers,
# `systemctl enable` (offline, in a chroot) and useradd; ca-certificates: pip's TLS.
INCLUDE=python3,python3-venv,ca-certificates,systemd,passwd,procps
case $ARCH in
    arm64) QEMU=qemu-aarch64; BINFMT=qemu-aarch64 ;;
    armhf) QEMU=qemu-arm; BINFMT=qemu-arm; INCLUDE=$INCLUDE,python3-numpy,python3-cffi ;;
    *) echo "pi-userland: PI_ARCH must be arm64 or armhf, not '$ARCH'" >&2; exit 2 ;;
esac
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tinyfed/pi-userland
ROOT=${PI_USERLAND_ROOT:-$CACHE/$SUITE-$ARCH}
# Bumped when INCLUDE or the build changes, so a stale cache is rebuilt rather than half-used.
STAMP_VALUE="v1 $SUITE $ARCH $INCLUDE"

die() { echo "pi-userland: $*" >&2; exit 2; }

need_root() { [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mounts); run it with sudo"; }

# binfmt_misc: mounted and with the qemu interpreter registered (F flag: opened once at registration, so the
# userland needs no copy of qemu inside it).
ensure_binfmt() {
    local fs=/proc/sys/fs/binfmt_misc
    [ -e "$fs/status" ] || mount -t binfmt_misc binfmt_misc "$fs" \
        || die "cannot mount binfmt_misc on $fs (a container without the privilege to? then register it on the host)"
    if [ ! -e "$fs/$BINFMT" ]; then
        command -v update-binfmts >/dev/null || die "$BINFMT is not registered and update-binfmts is missing: apt-get install binfmt-support qemu-user-static"
        update-binfmts --enable "$BINFMT" >/dev/null 2>&1 || update-binfmts --import "$BINFMT" >/dev/null 2>&1 || true
    fi
    [ -e "$fs/$BINFMT" ] || die "$BINFMT is not registered in $fs: apt-get install qemu-user-static binfmt-support"
    grep -q '^enabled' "$fs/$BINFMT" || echo 1 >"$fs/$BINFMT"
}

built() { [ -f "$ROOT/.tinyfed-userland" ] && [ "$(cat "$ROOT/.tinyfed-userland")" = "$STAMP_VALUE" ]; }

build() {
    need_root
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    ensure_binfmt
    if built; then echo "pi-userland: $ROOT is built ($STAMP_VALUE)"; return; fi
    local tmp="$ROOT.building.$$"
    # Leftovers of an interrupted build (never a mount point to cross: those died with their namespace).
    rm -rf --one-file-system "$ROOT".building.*
    mkdir -p "$(dirname "$ROOT")"
    echo "pi-userland: debootstrap $SUITE $ARCH into $ROOT (once)"
    local start=$SECONDS
    # Built aside and renamed into place: an interrupted build never looks like a finished one.
    # In a mount namespace of its own: the /proc debootstrap mounts in the target goes with it, even when killed.
    if ! unshare --mount --propagation private -- debootstrap --arch="$ARCH" --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp" "$MIRROR" \
        >"$tmp.log" 2>&1; then
        tail -n 30 "$tmp.log" >&2
        die "debootstrap failed (whole log: $tmp.log)"
    fi
    rm -f "$tmp.log"
    # The chroot's apt cache is of no use afterwards.
    rm -rf "$tmp"/var/cache/apt/archives/*.deb
    echo "$STAMP_VALUE" >"$tmp/.tinyfed-userland"
    rm -rf "$ROOT"
    mv "$tmp" "$ROOT"
    echo "pi-userland: built in $((SECONDS - start)) s, $(du -sm "$ROOT" | cut -f1) MB: $ROOT"
}

# Absolute paths of local directories the host's pip configuration names (find-links = /opt/wheels,
# extra-index-url = file:///opt/pypi/simple, constraint = /etc/xdg/pip/constraints.txt, ...): bound read-only
# at the same place inside, or pip inside would look for them and fail.
pip_local_paths() {
    local files=(/etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf")
    [ -n "${PIP_CONFIG_FILE:-}" ] && files+=("$PIP_CONFIG_FILE")
    {
        for f in "${files[@]}"; do [ -f "$f" ] && cat "$f"; done
        env | grep '^PIP_' | cut -d= -f2- || true
    } | grep -oE '(file://)?/[^ "'"'"',;]+' | sed -e 's|^file://||' | while read -r p; do
        [ -f "$p" ] && p=$(dirname "$p")
        # A simple index's directory: bind the index root (/opt/pypi for /opt/pypi/simple).
        case $p in */simple) p=$(dirname "$p") ;; esac
        [ -d "$p" ] && echo "$p"
    done | sort -u
}

# The cpuinfo a Raspberry Pi's 64-bit kernel shows (four cores), or its 32-bit one on armhf.
cpuinfo() {
    local file="$HERE/pi-cpuinfo/pi$PI_MODEL"
    [ "$ARCH" = armhf ] && file="$HERE/pi-cpuinfo/pi4-armhf"
    [ -f "$file" ] || die "no cpuinfo for a Pi $PI_MODEL on $ARCH ($file)"
    echo "$file"
}

run() {
    need_root
    PI_MODEL=${PI_MODEL:-4}
    OVERLAY=""
    local binds=("$REPO")
    while [ $# -gt 0 ]; do
        case $1 in
            --pi) PI_MODEL=$2; shift 2 ;;
            --bind) binds+=("$(cd "$2" && pwd)"); shift 2 ;;
            --overlay) mkdir -p "$2"; OVERLAY=$(cd "$2" && pwd); shift 2 ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    [ $# -gt 0 ] || die "run: no command given (scripts/pi-userland.sh run [--pi 4|5] [--bind DIR]... -- CMD ...)"
    built || die "$ROOT is not built (or was built by another version of this script): scripts/pi-userland.sh build"
    ensure_binfmt
    local cpu
    case $ARCH-$PI_MODEL in
        arm64-4) cpu=cortex-a72 ;;
        arm64-5) cpu=cortex-a76 ;;
        # qemu-arm (32-bit) has no Cortex-A72: the A15 is the ARMv7-A core with the same NEON/VFPv4/idiv a Pi 4
        # shows a 32-bit OS; a Pi 2 is a Cortex-A7.
        armhf-4) cpu=cortex-a15 ;;
        armhf-2) cpu=cortex-a7 ;;
        *) die "--pi must be 4 or 5 (arm64), 2 or 4 (armhf), not '$PI_MODEL'" ;;
    esac
    # QEMU_CPU set by the caller wins (the test showing what the default `max` model does sets it).
    cpu=${QEMU_CPU:-$cpu}
    local info
    info=$(cpuinfo)
    local pip_paths
    pip_paths=$(pip_local_paths | tr '\n' ' ')
    # Environment inside: clean, plus what pip and the emulation need.
    local envs=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
        TERM="${TERM:-dumb}" QEMU_CPU="$cpu" PI_MODEL="$PI_MODEL" PI_USERLAND="pi$PI_MODEL-$ARCH-$cpu")
    local name
    while IFS='=' read -r name _; do
        case $name in
            # Not TINYFED_*: a device refuses a TINYFED_ variable that is not one of its settings.
            PIP_* | SSL_CERT_FILE | SSL_CERT_DIR | REQUESTS_CA_BUNDLE | CURL_CA_BUNDLE \
                | PYTHONUNBUFFERED | PYTHONDONTWRITEBYTECODE) envs+=("$name=${!name}") ;;
        esac
    done < <(env)
    PIP_CACHE=$CACHE/pip-cache-$ARCH
    mkdir -p "$PIP_CACHE"
    # (The variables this script reads are not named TINYFED_*: tinyfed refuses unknown TINYFED_ variables.)
    # PI_USERLAND_CPUINFO=host leaves the host's x86 cpuinfo in place: only to show the trap (tests/pi/).
    [ "${PI_USERLAND_CPUINFO:-}" = host ] && info=""
    export ROOT REPO ARCH info pip_paths OVERLAY PIP_CACHE
    # Everything below happens in a private mount namespace: nothing leaks to the host's mount table.
    # exec: one process from here to the command, so a signal to this script reaches the command itself.
    exec unshare --mount --propagation private -- bash -euo pipefail -c '
        bind_ro() {  # bind $1 at the same path inside, read-only
            mkdir -p "$ROOT$1"
            mount --bind "$1" "$ROOT$1"
            mount -o remount,bind,ro "$ROOT$1"
        }
        if [ -n "$OVERLAY" ]; then
            mkdir -p "$OVERLAY/upper" "$OVERLAY/work" "$OVERLAY/root"
            mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$OVERLAY/upper,workdir=$OVERLAY/work" "$OVERLAY/root"
            ROOT=$OVERLAY/root
        fi
        mount -t proc proc "$ROOT/proc"
        [ -n "$info" ] && mount --bind "$info" "$ROOT/proc/cpuinfo"
        mount -t sysfs sysfs "$ROOT/sys"
        mount --rbind /dev "$ROOT/dev"
        mount -t tmpfs tmpfs "$ROOT/tmp"
        mount -t tmpfs tmpfs "$ROOT/run"
        # Name resolution (pip, apt) as on the host.
        [ -f /etc/resolv.conf ] && { touch "$ROOT/etc/resolv.conf"; mount --bind /etc/resolv.conf "$ROOT/etc/resolv.conf"; }
        # The host CA bundle, the one the host pip trusts (it may hold a proxy'"'"'s CA the Debian bundle lacks).
        if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
            touch "$ROOT/etc/ssl/certs/ca-certificates.crt"
            mount --bind /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
        fi
        # pip configuration: /etc/pip.conf, /etc/xdg/pip (site-wide), the user file as root'"'"'s inside.
        [ -f /etc/pip.conf ] && { touch "$ROOT/etc/pip.conf"; mount --bind /etc/pip.conf "$ROOT/etc/pip.conf"; }
        [ -d /etc/xdg/pip ] && bind_ro /etc/xdg/pip
        for user_conf in "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
            if [ -f "$user_conf" ]; then
                inside="$ROOT/root/${user_conf#"$HOME"/}"
                mkdir -p "$(dirname "$inside")"; touch "$inside"; mount --bind "$user_conf" "$inside"
            fi
        done
        for p in $pip_paths; do bind_ro "$p"; done
        mkdir -p "$ROOT/root/.cache/pip"; mount --bind "$PIP_CACHE" "$ROOT/root/.cache/pip"
        for b in "$@"; do [ "$b" = --- ] && break; mkdir -p "$ROOT$b"; mount --bind "$b" "$ROOT$b"; done
        while [ "$1" != --- ]; do shift; done; shift
        exec chroot "$ROOT" /usr/bin/env -i "$@"
    ' pi-userland "${binds[@]}" --- "${envs[@]}" "$@"
}

check() {
    # What a run needs, said before it is needed (CI prints it).
    need_root
    ensure_binfmt
    echo "binfmt: $(head -1 /proc/sys/fs/binfmt_misc/$BINFMT) ($(grep interpreter /proc/sys/fs/binfmt_misc/$BINFMT))"
    if built; then echo "userland: $ROOT ($STAMP_VALUE)"; else echo "userland: not built ($ROOT)"; fi
    echo "pip's local paths bound inside: $(pip_local_paths | tr '\n' ' ')"
}

case ${1:-} in
    build) build ;;
    run) shift; run "$@" ;;
    path) echo "$ROOT" ;;
    check) check ;;
    built) built ;;
    clean) need_root; rm -rf "$ROOT"; echo "pi-userland: removed $ROOT" ;;
    *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
