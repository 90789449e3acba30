#!/usr/bin/env bash
# Runs Confab's three design-target load scenarios (idle memory, fan-out, latency) on this machine.
#
# Builds once (`cargo build --release --features bench-tools`), then for each scenario starts a fresh server on an empty
# data directory pinned to CPU 0, runs confab-loadgen pinned to CPU 1, and stops the server.
# Results: a table per scenario on stdout, and the JSON lines in $RESULTS_DIR/<scenario>.json.
#
# Environment:
#   SCENARIOS      which to run, in order (default "idle fanout latency")
#   CONNECTIONS    connections per scenario (default 1000)
#   ROOM_SIZE      members per room (default 100)
#   DURATION       measured seconds for fanout/latency (default 10)
#   WARMUP         warmup seconds (default 2)
#   RATE           messages/s of the latency scenario (default 200)
#   PORT           server port (default 0: let the server pick one)
#   SERVER_CPU / LOADGEN_CPU   CPUs to pin to (default 0 / 1)
#   RESULTS_DIR    where the JSON goes (default target/load-results)
#   LOADGEN_ARGS   extra flags for every loadgen run (e.g. "--register")
set -euo pipefail

cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"idle fanout latency"}
CONNECTIONS=${CONNECTIONS:-1000}
ROOM_SIZE=${ROOM_SIZE:-100}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RATE=${RATE:-200}
PORT=${PORT:-0}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
RESULTS_DIR=${RESULTS_DIR:-target/load-results}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
# Tokens are minted from the server's jwt-secret unless LOADGEN_ARGS asks for --register.
REGISTER=0
case " $LOADGEN_ARGS " in *" --register "*) REGISTER=1 ;; esac
ROOMS=$(( (CONNECTIONS + ROOM_SIZE - 1) / ROOM_SIZE ))

# Open-file limit, pinning (pin_server / pin_loadgen), rate-limit overrides.
# shellcheck source=benches/common/bench-env.sh
source benches/common/bench-env.sh

cargo build --release --features bench-tools
mkdir -p "$RESULTS_DIR"

SERVER_PID=
DATA_DIR=
stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=
    if [ -n "$DATA_DIR" ]; then
        rm -rf "$DATA_DIR"
        DATA_DIR=
    fi
}
trap stop_server EXIT INT TERM

# Starts a server on a fresh data directory; sets SERVER_PID, DATA_DIR and URL.
start_server() {
    DATA_DIR=$(mktemp -d)
    "${pin_server[@]}" target/release/confab serve --listen "127.0.0.1:$PORT" --data-dir "$DATA_DIR" \
        >"$DATA_DIR/server.log" 2>&1 &
    SERVER_PID=$!
    URL=
    for _ in $(seq 300); do
        URL=$(grep -ao 'listening on http://[0-9.]*:[0-9]*' "$DATA_DIR/server.log" 2>/dev/null \
            | head -n1 | sed 's/^listening on //') || true
        if [ -n "$URL" ] && { [ "$REGISTER" = 1 ] || [ -s "$DATA_DIR/jwt-secret" ]; }; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server exited early:" >&2
            cat "$DATA_DIR/server.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "server did not report 'listening on' (and write jwt-secret) within 30 s:" >&2
    cat "$DATA_DIR/server.log" >&2
    exit 1
}

# Runs one scenario: NAME then loadgen flags.
scenario() {
    local name=$1
    shift
    echo
    echo "=== $name ==="
    start_server
    local out status=0 tokens=(--tokens-from "$DATA_DIR")
    [ "$REGISTER" = 1 ] && tokens=()
    # shellcheck disable=SC2086 # LOADGEN_ARGS is a list of flags
    out=$("${pin_loadgen[@]}" target/release/confab-loadgen --url "$URL" \
        "${tokens[@]}" --server-pid "$SERVER_PID" --json \
        --connections "$CONNECTIONS" --rooms "$ROOMS" "$@" $LOADGEN_ARGS) || status=$?
    local last
    last=$(printf '%s\n' "$out" | tail -n1)
    case $last in
        '{'*)
            # The last line is the JSON report.
            printf '%s\n' "$out" | sed '$d'
            printf '%s\n' "$last" >"$RESULTS_DIR/$name.json"
            ;;
        *) printf '%s\n' "$out" ;;
    esac
    if [ "$status" -ne 0 ]; then
        echo "($name: loadgen exited with $status; server log tail:)" >&2
        tail -n 20 "$DATA_DIR/server.log" >&2
        overall=1
    fi
    stop_server
}

overall=0
for s in $SCENARIOS; do
    case $s in
        idle) scenario idle --idle ;;
        fanout) scenario fanout --rate 0 --duration "$DURATION" --warmup "$WARMUP" ;;
        latency) scenario latency --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" ;;
        *) echo "unknown scenario $s (idle, fanout, latency)" >&2; exit 2 ;;
    esac
done
echo
echo "JSON results in $RESULTS_DIR/"
exit "$overall"
