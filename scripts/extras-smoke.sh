#!/usr/bin/env bash
# Each role's extra installs and runs alone.
#
# Builds tinyfed's wheel once, installs it (not editable: what a user gets)
# with one extra into its own fresh venv for each of device, gateway, bridge
# and hil (and gateway+privacy, the accountant for differential privacy), and in each checks that `tinyfed --help` lists exactly the
# commands that venv can run, that the role's own --help works, that a
# command of another role names the extra to install (exit 2), and then
# runs the role for real:
#   device   build a model from a CSV, train it on the device's interpreter
#   gateway  run against a Mosquitto on a free loopback port, status, SIGTERM -> 0; a DP setting
#            without the privacy extra exits 2 naming it
#   privacy  a gateway with [privacy] mode = "central-dp" runs, status shows its budget, SIGTERM -> 0
#   hil      an emulated board on a pty (with the CSV as its data), SIGTERM -> 0
#   bridge   that board joins the federation through the bridge; the gateway
#            sees it online and closes a round with its update; SIGTERM -> 0
# Any failed step stops the script with "extras-smoke: FAILED: <step>" and
# the step's output. Venvs live in .venv-smoke/ (git-ignored), scratch files
# in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
VENVS=$PWD/.venv-smoke
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tinyfed-smoke.XXXXXX")
STARTED=$SECONDS
PIDS=()

cleanup() {  # on any exit: stop what this script started (SIGTERM, SIGKILL after 10 s), then drop the scratch files
    local pid deadline=$((SECONDS + 10))
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

fail() {  # fail STEP [LOG...]
    echo "extras-smoke: FAILED: $1" >&2
    shift
    local log
    for log in "$@"; do
        [ -f "$log" ] && sed 's/^/    | /' "$log" | tail -40 >&2
    done
    exit 1
}

ok() { echo "  ok  $1"; }

# run STEP EXPECTED_CODE CMD...: runs CMD with output in $TMP/out, fails unless it exits EXPECTED_CODE.
run() {
    local step=$1 expected=$2 code=0
    shift 2
    "$@" >"$TMP/out" 2>&1 || code=$?
    [ "$code" = "$expected" ] || { echo "(exit $code, expected $expected)" >>"$TMP/out"; fail "$step" "$TMP/out"; }
}

contains() {  # contains STEP FILE TEXT
    grep -qF -- "$3" "$2" || fail "$1: no '$3' in the output" "$2"
}

# wait_for STEP FILE TEXT PID: until FILE has TEXT; fails if PID exits first or after 90 s.
wait_for() {
    local step=$1 file=$2 text=$3 pid=$4 deadline=$((SECONDS + 90))
    until grep -qF -- "$text" "$file" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || fail "$step: the process exited before printing '$text'" "$file"
        [ "$SECONDS" -lt "$deadline" ] || fail "$step: no '$text' within 90 s" "$file"
        sleep 0.2
    done
}

# stop STEP PID LOG: SIGTERM, then the process must exit 0 (a clean stop).
stop() {
    local code=0
    kill -TERM "$2"
    wait "$2" || code=$?
    [ "$code" = 0 ] || fail "$1: exit $code after SIGTERM (expected 0)" "$3"
}

# listed VENV EXPECTED...: the commands `tinyfed --help` lists must be exactly EXPECTED.
listed() {
    local venv=$1
    shift
    run "$venv: tinyfed --help" 0 "$VENVS/$venv/bin/tinyfed" --help
    local got want
    got=$(awk '/^    [a-z]/ {print $1}' "$TMP/out" | sort | tr '\n' ' ')
    want=$(printf '%s\n' "$@" | sort | tr '\n' ' ')
    [ "$got" = "$want" ] || fail "$venv: tinyfed --help lists [$got], expected [$want]" "$TMP/out"
    ok "$venv: tinyfed --help lists exactly: $*"
}

# hint VENV EXTRA CMD...: a command of a role not installed here names its extra and exits 2.
hint() {
    local venv=$1 extra=$2
    shift 2
    run "$venv: tinyfed $* (not installed)" 2 "$VENVS/$venv/bin/tinyfed" "$@"
    contains "$venv: install hint" "$TMP/out" "needs the '$extra' extra"
    contains "$venv: install hint" "$TMP/out" "pip install 'tinyfed[$extra]'"
    ok "$venv: tinyfed $1 says: $(head -1 "$TMP/out")"
}

absent() {  # absent VENV MODULE...: these must not be importable in that venv
    local venv=$1 module
    shift
    for module in "$@"; do
        if "$VENVS/$venv/bin/python" -c "import $module" 2>/dev/null; then
            fail "$venv: $module is installed, and the $venv extra should not bring it"
        fi
    done
    ok "$venv: not installed: $*"
}

echo "== extras smoke: build the wheel"
run "build the wheel" 0 "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$TMP/dist" .
WHEEL=$(ls "$TMP"/dist/tinyfed-*.whl)
ok "built $(basename "$WHEEL")"

echo "== extras smoke: one clean venv per extra (in parallel)"
EXTRAS=(device gateway bridge hil privacy)
declare -A SPEC=([privacy]="gateway,privacy,metrics")  # a venv's extras, when not the one it is named after
declare -A INSTALLING
for extra in "${EXTRAS[@]}"; do
    rm -rf "${VENVS:?}/$extra"
    (
        "$PYTHON" -m venv "$VENVS/$extra" &&
            "$VENVS/$extra/bin/python" -m pip install -q --disable-pip-version-check "$WHEEL[${SPEC[$extra]:-$extra}]"
    ) >"$TMP/install-$extra.log" 2>&1 &
    INSTALLING[$extra]=$!
done
for extra in "${EXTRAS[@]}"; do
    wait "${INSTALLING[$extra]}" || fail "pip install 'tinyfed[${SPEC[$extra]:-$extra}]'" "$TMP/install-$extra.log"
    ok "pip install 'tinyfed[${SPEC[$extra]:-$extra}]' into .venv-smoke/$extra"
done

# A small CSV: 8 features, 3 classes, the label last.
"$PYTHON" - "$TMP/data.csv" <<'EOF'
import random, sys
rng = random.Random(7)
with open(sys.argv[1], "w") as f:
    f.write(",".join(f"f{i}" for i in range(8)) + ",label\n")
    for n in range(600):
        label = n % 3
        f.write(",".join(f"{rng.gauss(label * (i % 3 - 1), 1.0):.4f}" for i in range(8)) + f",c{label}\n")
EOF

echo "== extras smoke: device"
listed device model device gateway provision  # gateway: only paho; provision: paho + cryptography, both a device has
run "device: tinyfed device --help" 0 "$VENVS/device/bin/tinyfed" device --help
run "device: tinyfed device train --help" 0 "$VENVS/device/bin/tinyfed" device train --help
contains "device: tinyfed device train --help" "$TMP/out" "--trainable-layers"
ok "device: tinyfed device --help, device train --help"
hint device hil hil emulate
absent device sklearn scipy serial tflite_micro
run "device: tinyfed model build" 0 "$VENVS/device/bin/tinyfed" model build --arch mlp --data "$TMP/data.csv" \
    --out "$TMP/model.tflite"
contains "device: tinyfed model build" "$TMP/out" "wrote $TMP/model.tflite"
ok "device: $(head -1 "$TMP/out")"
run "device: tinyfed device train" 0 "$VENVS/device/bin/tinyfed" device train --model "$TMP/model.tflite" \
    --data "$TMP/data.csv" --epochs 3 --out "$TMP/trained.tflite"
contains "device: tinyfed device train" "$TMP/out" "litert"
contains "device: tinyfed device train" "$TMP/out" "wrote $TMP/trained.tflite"
ok "device: tinyfed device train: $(grep '^litert' "$TMP/out" | tr -s ' ')"

echo "== extras smoke: gateway"
listed gateway model gateway
run "gateway: tinyfed gateway run --help" 0 "$VENVS/gateway/bin/tinyfed" gateway run --help
ok "gateway: tinyfed gateway run --help"
hint gateway device device train --model m.tflite --data x.csv
absent gateway ai_edge_litert tflite_runtime tflite_micro sklearn serial dp_accounting scipy
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" >"$TMP/mosquitto.conf"
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
MOSQUITTO_PID=$!
PIDS+=("$MOSQUITTO_PID")
deadline=$((SECONDS + 30))
until "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1).close()" 2>/dev/null; do
    kill -0 "$MOSQUITTO_PID" 2>/dev/null || fail "mosquitto exited" "$TMP/mosquitto.log"
    [ "$SECONDS" -lt "$deadline" ] || fail "mosquitto did not listen on $PORT within 30 s" "$TMP/mosquitto.log"
    sleep 0.1
done
ok "mosquitto on 127.0.0.1:$PORT"
cat >"$TMP/gateway.toml" <<EOF
[gateway]
federation = "smoke"
storage = "$TMP/gateway"
model = "$TMP/model.tflite"

[rounds]
min_devices = 1
min_updates = 1
deadline = 120.0
epochs = 1
density = 0.1

[broker]
url = "mqtt://127.0.0.1:$PORT"

[trust]
mode = "insecure"  # the gateway extra alone has no cryptography; signatures are 'tinyfed[gateway,sign]'

[dashboard]
enabled = true
port = 0  # a free one; the log says which
EOF
"$VENVS/gateway/bin/tinyfed" gateway run --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
GATEWAY_PID=$!
PIDS+=("$GATEWAY_PID")
wait_for "gateway: tinyfed gateway run" "$TMP/gateway.log" "gateway of federation smoke" "$GATEWAY_PID"
ok "gateway: $(grep -F 'gateway of federation smoke' "$TMP/gateway.log")"
fetch() {  # fetch STEP VENV URL TEXT: GET URL with that venv's Python; fail unless the body contains TEXT
    run "$1" 0 "$VENVS/$2/bin/python" -c \
        "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())" "$3"
    contains "$1" "$TMP/out" "$4"
}
# The dashboard is the standard library's: the gateway extra alone serves it, its page and script from the wheel.
wait_for "gateway: the dashboard" "$TMP/gateway.log" "dashboard at http" "$GATEWAY_PID"
DASHBOARD_URL=$(grep -o 'dashboard at http[^ ]*' "$TMP/gateway.log" | head -1 | cut -d' ' -f3)
fetch "gateway: the dashboard's state" gateway "${DASHBOARD_URL}api/state" '"federation": "smoke"'
fetch "gateway: the dashboard's script" gateway "${DASHBOARD_URL}app.js" 'function render'
ok "gateway: dashboard at $DASHBOARD_URL"
run "gateway: tinyfed gateway status" 0 "$VENVS/gateway/bin/tinyfed" gateway status --config "$TMP/gateway.toml"
contains "gateway: tinyfed gateway status" "$TMP/out" "federation smoke"
ok "gateway: tinyfed gateway status: $(head -1 "$TMP/out")"
cat >"$TMP/gateway-dp.toml" <<EOF
[gateway]
federation = "smoke-dp"
storage = "$TMP/gateway-dp"
model = "$TMP/model.tflite"

[rounds]
min_devices = 1

[privacy]
mode = "central-dp"
epsilon = 4.0
delta = 1e-4
sampling_rate = 0.1

[broker]
url = "mqtt://127.0.0.1:$PORT"

[trust]
mode = "insecure"  # signatures on by default since issue 15; this step is about the accountant

[metrics]
enabled = true
port = 0
EOF
run "gateway: DP without the privacy extra" 2 "$VENVS/gateway/bin/tinyfed" gateway run --config "$TMP/gateway-dp.toml"
contains "gateway: DP without the privacy extra" "$TMP/out" "pip install 'tinyfed[privacy]'"
ok "gateway: $(head -1 "$TMP/out")"
run "gateway: [metrics] without the metrics extra" 2 env TINYFED_METRICS_ENABLED=true TINYFED_DASHBOARD_ENABLED=false \
    "$VENVS/gateway/bin/tinyfed" gateway run --config "$TMP/gateway.toml"
contains "gateway: [metrics] without the metrics extra" "$TMP/out" "pip install 'tinyfed[metrics]'"
ok "gateway: $(head -1 "$TMP/out")"

echo "== extras smoke: privacy (gateway,privacy,metrics)"
listed privacy model gateway
"$VENVS/privacy/bin/tinyfed" gateway run --config "$TMP/gateway-dp.toml" >"$TMP/gateway-dp.log" 2>&1 &
DP_PID=$!
PIDS+=("$DP_PID")
wait_for "privacy: tinyfed gateway run" "$TMP/gateway-dp.log" "gateway of federation smoke-dp" "$DP_PID"
run "privacy: tinyfed gateway status" 0 "$VENVS/privacy/bin/tinyfed" gateway status --config "$TMP/gateway-dp.toml"
contains "privacy: tinyfed gateway status" "$TMP/out" "privacy: central-dp, (4, 0.0001)-DP per device: epsilon 0 spent"
ok "privacy: tinyfed gateway status: $(grep -F 'privacy: central-dp' "$TMP/out" | cut -c1-100)..."
wait_for "privacy: the metrics" "$TMP/gateway-dp.log" "metrics at http" "$DP_PID"
METRICS_URL=$(grep -o 'metrics at http[^ ]*' "$TMP/gateway-dp.log" | head -1 | cut -d' ' -f3)
fetch "privacy: scrape $METRICS_URL" privacy "$METRICS_URL" 'tinyfed_privacy_epsilon_budget 4.0'
ok "privacy: $(grep -c '^tinyfed_' "$TMP/out") samples at $METRICS_URL (prometheus-client from the metrics extra)"
stop "privacy: SIGTERM" "$DP_PID" "$TMP/gateway-dp.log"
ok "privacy: SIGTERM -> exit 0"
read -r GW_MB _ < <(du -sm "$VENVS/gateway/lib")
read -r DP_MB _ < <(du -sm "$VENVS/privacy/lib")
ok "installed size: tinyfed[gateway] $GW_MB MB, tinyfed[gateway,privacy,metrics] $DP_MB MB"

echo "== extras smoke: hil"
listed hil model hil
run "hil: tinyfed hil emulate --help" 0 "$VENVS/hil/bin/tinyfed" hil emulate --help
ok "hil: tinyfed hil emulate --help"
hint hil bridge bridge run --port /dev/null
absent hil paho ai_edge_litert
"$VENVS/hil/bin/tinyfed" hil emulate --data "$TMP/data.csv" --shard 0/2 --board-id smoke-board \
    --flash-file "$TMP/board.flash" >"$TMP/hil.log" 2>&1 &
HIL_PID=$!
PIDS+=("$HIL_PID")
wait_for "hil: tinyfed hil emulate" "$TMP/hil.log" "% of the budget)" "$HIL_PID"
PTY=$(sed -n 's/^pty: //p' "$TMP/hil.log")
[ -c "$PTY" ] || fail "hil: printed pty '$PTY' is not a character device" "$TMP/hil.log"
ok "hil: board on $PTY; $(grep -F 'RAM budget' "$TMP/hil.log")"

echo "== extras smoke: bridge"
listed bridge model gateway bridge  # the gateway needs only paho, which the bridge has
run "bridge: tinyfed bridge run --help" 0 "$VENVS/bridge/bin/tinyfed" bridge run --help
ok "bridge: tinyfed bridge run --help"
hint bridge hil hil emulate
absent bridge ai_edge_litert tflite_micro sklearn
"$VENVS/bridge/bin/tinyfed" bridge run --port "$PTY" --broker "mqtt://127.0.0.1:$PORT" --federation smoke \
    --storage "$TMP/bridge" --insecure >"$TMP/bridge.log" 2>&1 &
BRIDGE_PID=$!
PIDS+=("$BRIDGE_PID")
wait_for "bridge: tinyfed bridge run" "$TMP/bridge.log" "board smoke-board on $PTY joined federation smoke" "$BRIDGE_PID"
ok "bridge: $(grep -oF "board smoke-board on $PTY joined federation smoke" "$TMP/bridge.log")"
# End to end across three installs: the gateway tasks the board (through the bridge) and counts its update.
wait_for "gateway: a round with the board's update" "$TMP/gateway.log" "round    1 closed updates    1" "$GATEWAY_PID"
ok "gateway: $(grep -F 'round    1 closed' "$TMP/gateway.log" | tr -s ' ')"

stop "bridge: SIGTERM" "$BRIDGE_PID" "$TMP/bridge.log"
contains "bridge: SIGTERM" "$TMP/bridge.log" "bridge stopped"
ok "bridge: SIGTERM -> exit 0"
stop "hil: SIGTERM" "$HIL_PID" "$TMP/hil.log"
ok "hil: SIGTERM -> exit 0"
stop "gateway: SIGTERM" "$GATEWAY_PID" "$TMP/gateway.log"
ok "gateway: SIGTERM -> exit 0"
kill -TERM "$MOSQUITTO_PID"
wait "$MOSQUITTO_PID" || true

echo "== extras smoke: passed in $((SECONDS - STARTED)) s"
