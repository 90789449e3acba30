#!/usr/bin/env bash
# Side-by-side comparison (issue 7): the same load generator (confab-loadgen) drives Confab, the
# seed's stack (Node Socket.io v4, also with a PostgreSQL INSERT per message) and the bare
# fastwebsockets broadcast server (confab-ceiling), each on a fresh process pinned to CPU 0 with the
# generator on CPU 1, and writes one Markdown table. The ceiling also runs a second time with a
# durable log (ceiling-durable): the least any server that delivers only durable messages pays.
#
#   benches/compare.sh                                   # everything, ~30 minutes after the build
#   SERVERS="confab ceiling" SCENARIOS=latency benches/compare.sh
#
# Output: $RESULTS_DIR/<date>-at-<commit>/comparison.md (copied to latest.md), and the raw JSON
# reports, one line per run, in $RESULTS_DIR/<date>-at-<commit>/raw/runs.jsonl (with each run's
# loadgen output next to it). Named by commit too, so a second run the same day at another
# commit keeps the first.
#
# Environment:
#   SERVERS        which servers, in order (default "confab socketio socketio-pg ceiling ceiling-durable"; also
#                  "socketio-pg-redis": PostgreSQL plus the Redis Pub/Sub adapter, the seed's full stack)
#   SCENARIOS      which scenarios, in order (default "fanout latency bigroom one-to-one idle")
#   DURATION       measured seconds per run (default 10)
#   WARMUP         warmup seconds per run (default 2)
#   FANOUT_LADDER  in-flight windows the fan-out scenario tries, largest first (default "128 64 32 16 8 4 2 1")
#   REPEAT         rounds of the latency and big-room scenarios (default 5): the servers take turns
#                  round by round, and the table shows each server's median run by p99
#   PG             0 to skip the PostgreSQL variants (default 1; skipped with a warning when the
#                  PostgreSQL binaries are missing)
#   PG_BIN         where initdb, pg_ctl and postgres are (default: the directory of `initdb` on PATH)
#   RUN_TIMEOUT    seconds one loadgen run may take in all (default WARMUP + DURATION + 150)
#   SERVER_CPU / LOADGEN_CPU   CPUs to pin to (default 0 / 1)
#   RESULTS_DIR    where the table and raw results go (default benches/results)
#   LOADGEN_ARGS   extra flags for every loadgen run (e.g. "--size 1000")
#   QUIET_WAIT     before each run, wait up to this many seconds for both CPUs to be >= 80 % idle
#                  (default 15; other work during each run is measured and reported either way)
#   BUILD          0 to skip `cargo build --release --features bench-tools` (use the binaries already in target/release)
set -euo pipefail

cd "$(dirname "$0")/.."

# The command as given, for the header (knobs that were set explicitly, then the script).
given=()
for v in SERVERS SCENARIOS DURATION WARMUP FANOUT_LADDER REPEAT PG PG_BIN RUN_TIMEOUT SERVER_CPU LOADGEN_CPU \
    RESULTS_DIR LOADGEN_ARGS QUIET_WAIT BUILD; do
    if [ -n "${!v+x}" ]; then
        case ${!v} in
            *[!A-Za-z0-9_./:=+-]* | '') given+=("$v='${!v}'") ;;
            *) given+=("$v=${!v}") ;;
        esac
    fi
done
COMMAND="${given[*]:+${given[*]} }benches/compare.sh"

SERVERS=${SERVERS:-"confab socketio socketio-pg ceiling ceiling-durable"}
SCENARIOS=${SCENARIOS:-"fanout latency bigroom one-to-one idle"}
REPEAT=${REPEAT:-5}
case $REPEAT in
    '' | *[!0-9]* | 0) echo "REPEAT must be a whole number of rounds, at least 1 (got '$REPEAT')" >&2; exit 2 ;;
esac
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
FANOUT_LADDER=${FANOUT_LADDER:-"128 64 32 16 8 4 2 1"}
PG=${PG:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-$(( ${WARMUP%.*} + ${DURATION%.*} + 150 ))}
RESULTS_DIR=${RESULTS_DIR:-benches/results}
LOADGEN_ARGS=${LOADGEN_ARGS:-}
BUILD=${BUILD:-1}
QUIET_WAIT=${QUIET_WAIT:-15}
DATE=$(date +%F)
SIO_DIR=benches/peers/socketio

for s in $SERVERS; do
    case $s in confab|socketio|socketio-pg|socketio-pg-redis|ceiling|ceiling-durable) ;;
        *) echo "unknown server $s (confab socketio socketio-pg socketio-pg-redis ceiling ceiling-durable)" >&2; exit 2 ;;
    esac
done
for s in $SCENARIOS; do
    case $s in fanout|latency|bigroom|one-to-one|idle) ;;
        *) echo "unknown scenario $s (fanout latency bigroom one-to-one idle)" >&2; exit 2 ;;
    esac
done
wants() { case " $SERVERS " in *" $1 "*) return 0 ;; esac; return 1; }
drop_server() { SERVERS=$(printf '%s\n' $SERVERS | { grep -vx "$1" || true; } | tr '\n' ' '); }
command -v python3 >/dev/null || { echo "compare.sh needs python3 (for the JSON → Markdown step)" >&2; exit 1; }
command -v timeout >/dev/null || { echo "compare.sh needs timeout (coreutils)" >&2; exit 1; }

# Open-file limit, pinning (pin_server / pin_loadgen), Confab's rate-limit overrides. Everything
# on the server side (the server, PostgreSQL, Redis) shares SERVER_CPU; the generator has
# LOADGEN_CPU.
# shellcheck source=benches/common/bench-env.sh
source benches/common/bench-env.sh
PINNING="none (taskset missing or too few CPUs)"
if [ "$PINNED" = 1 ]; then
    PINNING="server side (server, PostgreSQL, Redis) on CPU $SERVER_CPU (\`taskset -c $SERVER_CPU\`), load generator on CPU $LOADGEN_CPU (\`taskset -c $LOADGEN_CPU\`)"
fi

if [ "$BUILD" != 0 ]; then cargo build --release --features bench-tools; fi
# What was built (the tree may change while the comparison runs).
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || true)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)"
RUN_DIR=$RESULTS_DIR/$DATE-at-$REV
LOADGEN=target/release/confab-loadgen
HAVE_PEER=1
if ! "$LOADGEN" --help 2>&1 | grep -q -- '--peer'; then
    HAVE_PEER=0
    for s in socketio socketio-pg socketio-pg-redis ceiling ceiling-durable; do
        if wants $s; then
            echo "warning: confab-loadgen has no --peer flag yet: skipping $s" >&2
            drop_server $s
        fi
    done
fi
if [ ! -x target/release/confab-ceiling ]; then
    for s in ceiling ceiling-durable; do
        if wants $s; then
            echo "warning: target/release/confab-ceiling was not built: skipping $s" >&2
            drop_server $s
        fi
    done
fi

# PostgreSQL and Redis for the Socket.io variants that want them.
PG_NOTE=
if wants socketio-pg || wants socketio-pg-redis; then
    PG_BIN=${PG_BIN:-$(dirname "$(command -v initdb 2>/dev/null || echo /usr/local/bin/initdb)")}
    if [ "$PG" = 0 ]; then
        PG_NOTE="PostgreSQL variants skipped (PG=0)"
    elif [ ! -x "$PG_BIN/initdb" ] || [ ! -x "$PG_BIN/pg_ctl" ] || [ ! -x "$PG_BIN/postgres" ]; then
        PG_NOTE="PostgreSQL variants skipped: initdb, pg_ctl or postgres missing in $PG_BIN"
    fi
    if [ -n "$PG_NOTE" ]; then
        echo "warning: $PG_NOTE" >&2
        drop_server socketio-pg
        drop_server socketio-pg-redis
    fi
fi
REDIS_NOTE=
if wants socketio-pg-redis && ! command -v redis-server >/dev/null; then
    REDIS_NOTE="socketio-pg-redis skipped: redis-server is not installed"
    echo "warning: $REDIS_NOTE" >&2
    drop_server socketio-pg-redis
fi
if wants socketio || wants socketio-pg || wants socketio-pg-redis; then
    command -v node >/dev/null || { echo "the Socket.io peer needs Node.js (node) on PATH" >&2; exit 1; }
    if [ ! -d "$SIO_DIR/node_modules" ]; then
        command -v npm >/dev/null || { echo "the Socket.io peer needs npm to install its packages ($SIO_DIR)" >&2; exit 1; }
        (cd "$SIO_DIR" && npm ci --no-audit --no-fund)
    fi
fi
[ -n "${SERVERS// /}" ] || { echo "no servers left to run" >&2; exit 1; }

WORK=$(mktemp -d -t confab-compare.XXXXXX)
chmod 711 "$WORK" # the PostgreSQL user must reach its directory inside
RAW_DIR=$RUN_DIR/raw
rm -rf "$RAW_DIR"
mkdir -p "$RAW_DIR"
RUNS=$RAW_DIR/runs.jsonl
: >"$RUNS"

# The binaries this comparison runs, copied once: a `cargo build` elsewhere in the tree during the
# comparison must not swap them between runs.
BIN=$WORK/bin
mkdir -p "$BIN"
for b in confab confab-loadgen confab-ceiling; do
    if [ -x "target/release/$b" ]; then cp "target/release/$b" "$BIN/"; fi
done
LOADGEN=$BIN/confab-loadgen

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

SERVER_PID= DATA_DIR= SERVER_LOG= URL= LOADGEN_PID=
PG_DIR= PG_PORT= PG_URL= REDIS_PID= REDIS_URL=
as_pg_user=()
stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=
    if [ -n "$DATA_DIR" ]; then
        rm -rf "$DATA_DIR"
        DATA_DIR=
    fi
}
cleanup() {
    if [ -n "$LOADGEN_PID" ]; then
        kill -TERM "$LOADGEN_PID" 2>/dev/null || true # timeout passes it on to the generator
        wait "$LOADGEN_PID" 2>/dev/null || true
    fi
    stop_server
    if [ -n "$REDIS_PID" ]; then
        kill -TERM "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=
    fi
    if [ -n "$PG_DIR" ] && [ -f "$PG_DIR/data/postmaster.pid" ]; then
        "${as_pg_user[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    PG_DIR=
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if wants socketio-pg || wants socketio-pg-redis; then
    # PostgreSQL refuses to run as root: the cluster belongs to an unprivileged user.
    PG_DIR=$WORK/pg
    mkdir -p "$PG_DIR"
    if [ "$(id -u)" = 0 ]; then
        chown nobody: "$PG_DIR"
        as_pg_user=(runuser -u nobody --)
    fi
    chmod 700 "$PG_DIR"
    PG_PORT=$(free_port)
    echo "starting PostgreSQL on 127.0.0.1:$PG_PORT (cluster in $PG_DIR)"
    "${as_pg_user[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-sync \
        >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; echo "initdb failed" >&2; exit 1; }
    # Default durability settings (fsync, synchronous_commit on): every message is durable.
    "${pin_server[@]}" "${as_pg_user[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR" start >/dev/null \
        || { cat "$PG_DIR/postgres.log" >&2; echo "PostgreSQL did not start" >&2; exit 1; }
    PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
fi
if wants socketio-pg-redis; then
    REDIS_PORT=$(free_port)
    "${pin_server[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
fi

# An empty messages table for each Socket.io+PG run (the server creates it), and a checkpoint so
# that the previous run's WAL is not written out during this one.
reset_pg() {
    (cd "$SIO_DIR" && timeout 60 node -e '
        const { Client } = require("pg");
        const c = new Client({ connectionString: process.argv[1] });
        c.connect()
          .then(() => c.query("DROP TABLE IF EXISTS messages"))
          .then(() => c.query("CHECKPOINT"))
          .then(() => c.end(), (e) => { console.error(e.message); process.exit(1); });' "$PG_URL")
}

# Starts a fresh server; sets SERVER_PID, SERVER_LOG, URL (and DATA_DIR for Confab and the
# durable ceiling).
# Returns non-zero (with SERVER_LOG holding why) when it does not come up.
start_server() {
    local name=$1
    # A new log per run (the previous server's "listening on" line must not be read as this one's).
    SERVER_LOG=$(mktemp -p "$WORK" "$name.log.XXXXXX")
    URL=
    case $name in
        confab)
            DATA_DIR=$(mktemp -d -p "$WORK" confab-data.XXXXXX)
            "${pin_server[@]}" "$BIN/confab" serve --listen 127.0.0.1:0 --data-dir "$DATA_DIR" \
                >"$SERVER_LOG" 2>&1 &
            ;;
        socketio)
            "${pin_server[@]}" node "$SIO_DIR/server.js" --listen 127.0.0.1:0 >"$SERVER_LOG" 2>&1 &
            ;;
        socketio-pg | socketio-pg-redis)
            if ! reset_pg >"$SERVER_LOG" 2>&1; then
                echo "could not reset the PostgreSQL table" >>"$SERVER_LOG"
                return 1
            fi
            local extra=()
            [ "$name" = socketio-pg-redis ] && extra=(--redis "$REDIS_URL")
            "${pin_server[@]}" node "$SIO_DIR/server.js" --listen 127.0.0.1:0 --pg "$PG_URL" "${extra[@]}" \
                >"$SERVER_LOG" 2>&1 &
            ;;
        ceiling)
            "${pin_server[@]}" "$BIN/confab-ceiling" --listen 127.0.0.1:0 >"$SERVER_LOG" 2>&1 &
            ;;
        ceiling-durable)
            DATA_DIR=$(mktemp -d -p "$WORK" ceiling-data.XXXXXX)
            "${pin_server[@]}" "$BIN/confab-ceiling" --listen 127.0.0.1:0 --durable-log "$DATA_DIR/log" \
                >"$SERVER_LOG" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 300); do
        URL=$(grep -ao 'listening on http://[0-9.]*:[0-9]*' "$SERVER_LOG" 2>/dev/null \
            | head -n1 | sed 's/^listening on //') || true
        if [ -n "$URL" ] && { [ "$name" != confab ] || [ -s "$DATA_DIR/jwt-secret" ]; }; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "(server exited before it was listening)" >>"$SERVER_LOG"
            return 1
        fi
        sleep 0.1
    done
    echo "(server did not report 'listening on' within 30 s)" >>"$SERVER_LOG"
    return 1
}

# How idle the two CPUs were over one second with none of our processes running: other work on the
# machine shows up here (and makes that run's figures worse than the machine can do).
cpu_idle() {
    python3 - "$SERVER_CPU" "$LOADGEN_CPU" <<'PY'
import sys, time
def sample():
    t = {}
    for line in open("/proc/stat"):
        f = line.split()
        if f[0].startswith("cpu") and f[0] != "cpu":
            v = list(map(int, f[1:]))
            t[f[0][3:]] = (v[3] + v[4], sum(v[:8]))  # idle + iowait, total (without guest)
    return t
a = sample(); time.sleep(1); b = sample()
print(" ".join(
    "%.0f" % (100.0 * (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1])) if c in a else "-" for c in sys.argv[1:]))
PY
}

# CPU seconds so far: the machine's (user, nice, system and steal over all CPUs; interrupt time is
# left out, loopback networking lands there), then the server side's: the given PIDs (with their
# threads and waited-for children) and, with a postmaster.pid file as the first argument,
# PostgreSQL's processes. Together with bash's `times` for the load generator this tells how much
# CPU other work on the machine took during a run.
cpu_seconds() {
    python3 - "$@" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
with open("/proc/stat") as f:
    v = list(map(int, f.readline().split()[1:9]))
busy = v[0] + v[1] + v[2] + v[7]
pids = {int(p) for p in sys.argv[2:] if p}
postmaster = None
if sys.argv[1]:
    try:
        postmaster = int(open(sys.argv[1]).readline())
    except (OSError, ValueError):
        pass
ours = 0
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        s = open(f"/proc/{d}/stat").read()
    except OSError:
        continue
    f = s[s.rindex(")") + 2:].split()
    pid, ppid = int(d), int(f[1])
    if pid in pids or (postmaster is not None and postmaster in (pid, ppid)):
        ours += sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
print(busy / hz, ours / hz)
PY
}

# The shell's children's CPU seconds so far (the load generator, once waited for), from `times`
# written to $1 (a builtin's output redirected: no subshell, whose counts would start at zero).
children_seconds() {
    python3 -c '
import re, sys
last = open(sys.argv[1]).read().strip().splitlines()[-1]
print(sum(float(m) * 60 + float(s) for m, s in re.findall(r"([0-9]+)m([0-9.]+)s", last)))' "$1"
}

# Appends one record to runs.jsonl: the run's identity, how it ended, and its JSON report if any.
# Arguments: server scenario in_flight status server_alive started(0/1) out err idle_before other_cpu
record() {
    python3 - "$@" "$SERVER_LOG" "$RUN_TIMEOUT" "${ROUND:-}" >>"$RUNS" <<'PY'
import json, sys
server, scenario, in_flight, status, alive, started, out, err, idle, other, log, run_timeout, rnd = sys.argv[1:14]
def tail(path, n):
    try:
        with open(path, errors="replace") as f:
            return [l.rstrip("\n") for l in f.readlines()[-n:]]
    except OSError:
        return []
report = None
for line in reversed(tail(out, 1)):
    if line.startswith("{"):
        try:
            report = json.loads(line)
        except ValueError:
            pass
print(json.dumps({
    "server": server,
    "scenario": scenario,
    "in_flight": int(in_flight) if in_flight else None,
    "round": int(rnd) if rnd else None,
    "status": int(status),
    "timed_out": int(status) in (124, 137),
    "run_timeout_s": int(run_timeout),
    "server_started": started == "1",
    "server_alive_after": alive == "1",
    "report": report,
    "loadgen_stderr_tail": tail(err, 8) if report is None or int(status) not in (0, 2) else [],
    "server_log_tail": tail(log, 8) if report is None or alive != "1" else [],
    "cpu_idle_before_pct": [None if x == "-" else float(x) for x in idle.split()],
    "other_cpu_pct": float(other) if other else None,
}))
PY
}

# Runs one loadgen run on a fresh server: SERVER SCENARIO IN_FLIGHT(or "") then loadgen flags.
# Prints the loadgen's text report; the record goes to runs.jsonl.
run_one() {
    local server=$1 scenario=$2 in_flight=$3
    shift 3
    local tag=$server-$scenario${in_flight:+-if$in_flight}${ROUND:+-r$ROUND}
    local out=$RAW_DIR/$tag.txt err=$WORK/$tag.err status=0 alive=0 started=1 idle srv_rc other=
    local t0 t1 m0 m1 o0 o1 c0 c1 pidfile=
    [ -n "$PG_DIR" ] && pidfile=$PG_DIR/data/postmaster.pid
    : >"$out"
    : >"$err"
    echo
    echo "=== $server / $scenario${in_flight:+ (in-flight $in_flight)}${ROUND:+ (round $ROUND of $REPEAT)} ==="
    # The previous run's files (and their removal) are still being written back: flush them
    # now, or this run's fsyncs queue behind them (seen: Confab's latency p999 33.6 ms right
    # after a fan-out run, 5-8 ms otherwise).
    sync
    # On a shared machine, give other work a moment to finish (up to QUIET_WAIT seconds).
    local waited=0
    idle=$(cpu_idle)
    while [ "$waited" -lt "$QUIET_WAIT" ] && ! python3 -c "import sys; sys.exit(0 if all(x == '-' or float(x) >= 80 for x in '$idle'.split()) else 1)"; do
        [ "$waited" = 0 ] && echo "(waiting up to $QUIET_WAIT s for the CPUs to be idle: $idle % idle)"
        idle=$(cpu_idle)
        waited=$((waited + 1))
    done
    if start_server "$server"; then
        local peer=() tokens=()
        case $server in
            confab) [ "$HAVE_PEER" = 1 ] && peer=(--peer confab); tokens=(--tokens-from "$DATA_DIR") ;;
            socketio*) peer=(--peer socketio) ;;
            ceiling*) peer=(--peer ceiling) ;;
        esac
        read -r m0 o0 < <(cpu_seconds "$pidfile" "$SERVER_PID" "$REDIS_PID")
        times >"$WORK/times"
        c0=$(children_seconds "$WORK/times")
        t0=$(date +%s.%N)
        # In the background and waited for, so that an interrupt stops the run at once (bash defers
        # traps while a foreground child runs); cleanup stops it.
        # shellcheck disable=SC2086 # LOADGEN_ARGS is a list of flags
        timeout -k 10 "$RUN_TIMEOUT" "${pin_loadgen[@]}" "$LOADGEN" "${peer[@]}" --url "$URL" \
            "${tokens[@]}" --server-pid "$SERVER_PID" --json --setup-timeout 120 \
            --duration "$DURATION" --warmup "$WARMUP" ${in_flight:+--in-flight "$in_flight"} \
            "$@" $LOADGEN_ARGS >"$out" 2>"$err" &
        LOADGEN_PID=$!
        wait "$LOADGEN_PID" || status=$?
        LOADGEN_PID=
        t1=$(date +%s.%N)
        times >"$WORK/times"
        c1=$(children_seconds "$WORK/times")
        read -r m1 o1 < <(cpu_seconds "$pidfile" "$SERVER_PID" "$REDIS_PID")
        # CPU the rest of the machine used during the run, in % of one core.
        other=$(python3 -c "print('%.1f' % max(0.0, 100 * (($m1 - $m0) - ($o1 - $o0) - ($c1 - $c0)) / max(0.001, $t1 - $t0)))")
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            alive=1
        else
            srv_rc=0
            wait "$SERVER_PID" 2>/dev/null || srv_rc=$?
            echo "(server exit status $srv_rc)" >>"$SERVER_LOG"
        fi
        sed '$d' "$out" # the report without its JSON line
        if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
            echo "(loadgen timed out after $RUN_TIMEOUT s)"
        elif [ "$status" -ne 0 ]; then
            echo "(loadgen exited with $status)"
        fi
        if [ "$alive" = 0 ]; then echo "(the server died; log tail:)"; tail -n 5 "$SERVER_LOG"; fi
    else
        status=1 started=0
        echo "(server did not start:)"
        tail -n 5 "$SERVER_LOG"
    fi
    [ -z "$other" ] || echo "(other work on the machine during this run: $other % of a core)"
    record "$server" "$scenario" "$in_flight" "$status" "$alive" "$started" "$out" "$err" "$idle" "$other"
    cp "$err" "$RAW_DIR/$tag.stderr" 2>/dev/null || true
    stop_server
}

# Reads the last record: prints "QUALIFIES P99_MS OK" (QUALIFIES = 1 when the run is clean and its
# p99 is under 100 ms).
last_verdict() {
    tail -n1 "$RUNS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()).get("report") or {}
p99 = (r.get("latency") or {}).get("p99_ms") or 0.0
ok = bool(r.get("ok"))
print(1 if ok and 0 < p99 < 100 else 0, p99, 1 if ok else 0)'
}

# Fan-out: the largest in-flight window first; stop at the first clean run with p99 < 100 ms (a
# smaller window can only deliver less). When a step misses only on latency, skip ahead to the
# window its p99 suggests (latency at --rate 0 is queueing, roughly proportional to the window).
# When the window just above the one that qualified missed only on latency, the window halfway
# between them runs too, and the table takes whichever qualifying run delivered more: halving
# alone leaves a server whose p99 is 101 ms at 64 with what 32 delivers, and the ratios between
# servers then swing with which side of 100 ms each one's run fell.
fanout() {
    local server=$1 ladder=($FANOUT_LADDER) i=0 n missed=
    n=${#ladder[@]}
    while [ "$i" -lt "$n" ]; do
        local w=${ladder[$i]}
        run_one "$server" fanout "$w" --connections 1000 --rooms 10 --rate 0
        local q p99 ok
        read -r q p99 ok < <(last_verdict)
        if [ "$q" = 1 ]; then
            local mid=$(( (${missed:-0} + w) / 2 ))
            if [ -n "$missed" ] && [ "$mid" -gt "$w" ]; then
                run_one "$server" fanout "$mid" --connections 1000 --rooms 10 --rate 0
            fi
            return 0
        fi
        i=$((i + 1))
        missed=
        if [ "$ok" = 1 ] && python3 -c "import sys; sys.exit(0 if float('$p99') >= 100 else 1)"; then
            missed=$w
            # Clean but too slow: the window that would put p99 near 70 ms.
            local target
            target=$(python3 -c "print($w * 70.0 / float('$p99'))")
            while [ "$i" -lt $((n - 1)) ] && python3 -c "import sys; sys.exit(0 if ${ladder[$i]} > $target else 1)"; do
                i=$((i + 1))
                missed=
            done
        fi
    done
}

START=$(date +%s)
# Scenario by scenario, each on every server in turn, so that other work on the machine affects
# the servers of one scenario alike. Latency and the big room are what noise moves most (one
# run's p99 is a handful of slow moments): they run REPEAT rounds, the servers taking turns.
ROUND=
for scenario in $SCENARIOS; do
    rounds=1
    case $scenario in latency | bigroom) rounds=$REPEAT ;; esac
    for r in $(seq "$rounds"); do
        [ "$rounds" -gt 1 ] && ROUND=$r
        for server in $SERVERS; do
            case $scenario in
                fanout) fanout "$server" ;;
                latency) run_one "$server" latency "" --connections 1000 --rooms 10 --rate 200 ;;
                bigroom) run_one "$server" bigroom "" --connections 5000 --rooms 1 --rate 20 ;;
                one-to-one) run_one "$server" one-to-one 1 --connections 2000 --rooms 1000 --rate 0 ;;
                idle) run_one "$server" idle "" --connections 10000 --rooms 100 --idle ;;
            esac
        done
        ROUND=
    done
done
ELAPSED=$(( $(date +%s) - START ))

# The disk's own flush latency, where the data directories live: the floor under the latency of
# any server that makes a message durable before delivering it (5 random 4 KiB page writes and
# one fdatasync, 2,000 times at about 200/s, as in the latency scenario).
DISK_FSYNC=
case " $SCENARIOS " in *" latency "*)
    sync
    DISK_FSYNC=$(python3 - "$WORK" <<'PY' || true
import os, random, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
try:
    os.write(fd, b"\0" * (16 << 20))
    os.fsync(fd)
    page, lat = os.urandom(4096), []
    for _ in range(2000):
        t = time.perf_counter()
        for _ in range(5):
            os.pwrite(fd, page, random.randrange(4096) * 4096)
        os.fdatasync(fd)
        lat.append((time.perf_counter() - t) * 1000)
        time.sleep(0.004)
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()
print(" ".join(f"{lat[int(q * len(lat))]:.2f}" for q in (0.5, 0.99, 0.999)),
      f"{lat[-1]:.1f}", sum(1 for x in lat if x > 10))
PY
    ) ;;
esac

# The header's facts.
ver() { "$@" 2>/dev/null | head -n1 || true; }
SIO_VERSION=$(node -p 'require("./'"$SIO_DIR"'/node_modules/socket.io/package.json").version' 2>/dev/null || true)
PG_VERSION=
[ -n "$PG_URL" ] && PG_VERSION=$(ver "$PG_BIN/postgres" --version)
REDIS_VERSION=
[ -n "$REDIS_URL" ] && REDIS_VERSION=$(ver redis-server --version)
export C_DATE="$DATE" C_COMMAND="$COMMAND" C_PINNING="$PINNING" C_ELAPSED="$ELAPSED" \
    C_SERVERS="$SERVERS" C_SCENARIOS="$SCENARIOS" C_DURATION="$DURATION" C_WARMUP="$WARMUP" \
    C_REPEAT="$REPEAT" \
    C_LADDER="$FANOUT_LADDER" C_NOTES="$PG_NOTE${PG_NOTE:+; }$REDIS_NOTE" \
    C_CPU="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')" C_CORES="$(nproc)" \
    C_KERNEL="$(uname -r)" C_RAM="$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
    C_RUSTC="$(ver rustc --version)" C_NODE="$(ver node --version)" C_SIO="$SIO_VERSION" \
    C_PG="$PG_VERSION" C_REDIS="$REDIS_VERSION" \
    C_COMMIT="$COMMIT" C_DISK_FSYNC="$DISK_FSYNC" \
    C_FS="$(df -T "$WORK" 2>/dev/null | awk 'NR == 2 { print $2 }')" \
    C_RAW="$RAW_DIR"

TABLE=$RUN_DIR/comparison.md
python3 - "$RUNS" >"$TABLE" <<'PY'
import json, os, sys

E = os.environ
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
servers = E["C_SERVERS"].split()
names = {
    "confab": "Confab",
    "socketio": "Socket.io",
    "socketio-pg": "Socket.io+PG",
    "socketio-pg-redis": "Socket.io+PG+Redis",
    "ceiling": "ceiling",
    "ceiling-durable": "ceiling+log",
}
columns = [s for s in ["confab", "socketio", "socketio-pg", "socketio-pg-redis", "ceiling", "ceiling-durable"]
           if s in servers]

def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d

def failure(run):
    """Why a run has no usable report, or None."""
    if not run["server_started"]:
        return "server did not start"
    if run["report"] is None:
        if run["timed_out"]:
            why = f"loadgen timed out after {run['run_timeout_s']} s"
        else:
            why = f"loadgen exited with {run['status']}, no report"
        if not run["server_alive_after"]:
            why += "; the server died"
        return why
    if not run["server_alive_after"]:
        return f"the server died during the run (loadgen exit {run['status']})"
    return None

def qualifies(run):
    r = run["report"]
    p99 = get(r, "latency", "p99_ms")
    return bool(r and r.get("ok") and p99 is not None and 0 < p99 < 100)

# The run each (server, scenario) cell comes from.
pick, fanout_mark, spread = {}, {}, {}
for s in columns:
    for sc in ["fanout", "latency", "bigroom", "one-to-one", "idle"]:
        rs = [r for r in runs if r["server"] == s and r["scenario"] == sc]
        if not rs:
            continue
        if sc == "fanout":
            good = [r for r in rs if r["report"] is not None]
            q = [r for r in good if qualifies(r)]
            if q:
                pick[s, sc] = max(q, key=lambda r: r["report"].get("delivered_per_s") or 0)
            elif good:
                pick[s, sc] = max(good, key=lambda r: r["report"].get("delivered_per_s") or 0)
                fanout_mark[s] = True
            else:
                pick[s, sc] = rs[-1]
        elif sc in ("latency", "bigroom"):
            # The median run by p99 (the upper one of an even count); runs without a report
            # only when there is nothing else.
            good = sorted((r for r in rs if r["report"] is not None and failure(r) is None),
                          key=lambda r: get(r["report"], "latency", "p99_ms") or float("inf"))
            pick[s, sc] = good[len(good) // 2] if good else rs[-1]
            if len(rs) > 1:
                spread[s, sc] = [get(r["report"], "latency", "p99_ms") for r in good]
        else:
            pick[s, sc] = rs[-1]

notes = []  # footnotes for failed or non-qualifying cells
def note(text):
    if text not in notes:
        notes.append(text)
    return notes.index(text) + 1

def num(v, kind):
    if v is None:
        return "—"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"
    if kind == "dec":
        return f"{v:.1f}" if v < 100 else f"{v:,.0f}"
    if kind == "pct":
        return "0" if v == 0 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
    if kind == "kib":
        return f"{v:.1f}"
    if kind == "mib":
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    return str(v)

# Rows: label, scenario, value function, kind, ratio direction ("up": higher is better, "down":
# lower is better, None: no ratio).
def first(*vs):
    return next((v for v in vs if v is not None), None)
def kib(v):
    return None if v is None else v / 1024
def mib(v):
    return None if v is None else v / 1048576
def lat(field, q):
    return lambda r: get(r, field, q)
rows = [
    ("**fan-out** delivered/s (best in-flight with p99 < 100 ms, no loss)", "fanout",
     lambda r: r.get("delivered_per_s"), "int", "up"),
    ("fan-out: in-flight per sender (10 senders)", "fanout", lambda r: r.get("in_flight"), "raw", None),
    ("fan-out: p99 at that window (ms)", "fanout", lat("latency", "p99_ms"), "ms", "down"),
    ("fan-out: server peak RSS (MiB)", "fanout",
     lambda r: mib(get(r, "memory", "vmrss_peak_bytes")), "mib", "down"),
    ("fan-out: CPU server / loadgen (% of a core)", "fanout",
     lambda r: "%s / %s" % tuple(num(get(r, "cpu", k), "int") for k in ("server_pct", "loadgen_pct")),
     "raw", None),
    ("**latency** at 200 msg/s: p50 (ms)", "latency", lat("latency", "p50_ms"), "ms", "down"),
    ("latency: p99 (ms)", "latency", lat("latency", "p99_ms"), "ms", "down"),
    ("latency: p999 (ms)", "latency", lat("latency", "p999_ms"), "ms", "down"),
    ("**big room** (5,000 members, 20 msg/s): delivered/s", "bigroom",
     lambda r: r.get("delivered_per_s"), "int", "up"),
    ("big room: messages acked/s (20 offered)", "bigroom", lambda r: r.get("acked_per_s"), "dec", "up"),
    ("big room: deliveries lost (%)", "bigroom", lambda r: r.get("loss_pct"), "pct", "down"),
    ("big room: p50 (ms)", "bigroom", lat("latency", "p50_ms"), "ms", "down"),
    ("big room: p99 (ms)", "bigroom", lat("latency", "p99_ms"), "ms", "down"),
    ("**one-to-one** (1,000 rooms of 2, in-flight 1): acked msg/s", "one-to-one",
     lambda r: r.get("acked_per_s"), "int", "up"),
    ("one-to-one: deliveries/s", "one-to-one", lambda r: r.get("delivered_per_s"), "int", "up"),
    ("one-to-one: p99 (ms)", "one-to-one", lat("latency", "p99_ms"), "ms", "down"),
    ("one-to-one: deliveries lost", "one-to-one", lambda r: r.get("deliveries_lost"), "int", "down"),
    ("one-to-one: server peak RSS (MiB)", "one-to-one",
     lambda r: mib(get(r, "memory", "vmrss_peak_bytes")), "mib", "down"),
    ("**idle** (10,000 connections): server memory per connection (KiB)", "idle",
     lambda r: kib(first(get(r, "memory", "vmrss_per_connection_bytes"), get(r, "memory", "per_connection_bytes"))),
     "kib", "down"),
    ("idle: server RSS with 10,000 connections (MiB)", "idle",
     lambda r: mib(first(get(r, "memory", "vmrss_after_bytes"), get(r, "memory", "metrics_after_bytes"))),
     "mib", "down"),
]

def ratio(a, b, direction):
    if direction is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "—"
    if b == 0:
        return "—" if a == 0 else "∞"
    x = a / b
    return (f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×")

out = []
w = out.append
dagger = ddagger = False
BUSY = 20  # % of a core taken by other work during a run that marks its figures
w(f"# Confab compared with Socket.io and the bare WebSocket ceiling — {E['C_DATE']}")
w("")
w(f"- **Machine:** {E['C_CPU']}, {E['C_CORES']} cores, {E['C_RAM']} RAM, Linux {E['C_KERNEL']}; "
  f"data directories on {E['C_FS'] or '?'} (the same disk for Confab and PostgreSQL)")
vers = [f"{E['C_RUSTC']}", f"Node {E['C_NODE']}"]
if E["C_SIO"]:
    vers.append(f"socket.io {E['C_SIO']}")
if E["C_PG"]:
    vers.append(E["C_PG"])
if E["C_REDIS"]:
    vers.append(E["C_REDIS"].split(" sha=")[0])
w(f"- **Versions:** {', '.join(vers)}; Confab at {E['C_COMMIT']}")
w(f"- **Pinning:** {E['C_PINNING']}")
w(f"- **Command:** `{E['C_COMMAND']}` (each run: {E['C_WARMUP']} s warmup, {E['C_DURATION']} s measured; "
  f"fan-out in-flight ladder {E['C_LADDER']}, plus the window halfway between the first that "
  f"qualified and the one above it, when that one missed only on latency; "
  f"{int(E['C_ELAPSED']) // 60} min {int(E['C_ELAPSED']) % 60} s in all)")
desc = {
    "confab": "Confab: every message committed to its store before the ack (durable)",
    "socketio": "Socket.io: `benches/peers/socketio/server.js`, ids from a counter, nothing stored",
    "socketio-pg": "Socket.io+PG: the same with one `INSERT … RETURNING id` per message (PostgreSQL "
                   "defaults: fsync, synchronous_commit on), broadcast and ack after the commit, one "
                   "INSERT at a time per room to keep each room's id order",
    "socketio-pg-redis": "Socket.io+PG+Redis: Socket.io+PG with the Redis Pub/Sub adapter "
                         "(`@socket.io/redis-adapter`), the seed's full stack",
    "ceiling": "ceiling: `confab-ceiling`, a bare fastwebsockets broadcast server (no storage, no auth)",
    "ceiling-durable": "ceiling+log: the same with `--durable-log`: each message appended to a "
                       "preallocated file with one `O_DIRECT | O_DSYNC` write per group of messages "
                       "queued meanwhile, on one thread, before its ack and broadcast (what any server "
                       "that delivers only durable messages must pay on this disk, and nothing else)",
}
w("- **Servers:** " + ". ".join(desc[s] for s in columns) + ". Each run gets a fresh server process "
  "(and an empty data directory or table).")
if E["C_NOTES"].strip("; "):
    w(f"- **Skipped:** {E['C_NOTES'].strip('; ')}")
if E.get("C_DISK_FSYNC", "").strip():
    p50, p99, p999, worst, stalls = E["C_DISK_FSYNC"].split()
    w(f"- **Disk:** `fdatasync` after 5 random 4 KiB page writes, 2,000 times at about 200/s, in the "
      f"directory the servers store into: p50 {p50} ms, p99 {p99} ms, p999 {p999} ms, max {worst} ms; "
      f"{stalls} of the 2,000 took over 10 ms. A server that makes each message durable before "
      "delivering it cannot deliver faster than that, and at 200 msg/s one 100 ms stall holds 1 % "
      "of a 10 s run's messages; the ceiling stores nothing.")
w("")
heads = [names[s] for s in columns]
has_sio = "socketio" in columns
has_ceiling = "ceiling" in columns
has_durable = "ceiling-durable" in columns
ratio_heads = []
if has_sio:
    ratio_heads.append("Confab ÷ Socket.io")
if has_ceiling:
    ratio_heads.append("Confab ÷ ceiling")
if has_durable:
    ratio_heads.append("Confab ÷ ceiling+log")
w("| figure | " + " | ".join(heads + ratio_heads) + " |")
w("| --- | " + " | ".join(["---:"] * (len(heads) + len(ratio_heads))) + " |")
for label, sc, fn, kind, direction in rows:
    if not any((s, sc) in pick for s in columns):
        continue
    cells, values = [], {}
    for s in columns:
        run = pick.get((s, sc))
        if run is None:
            cells.append("not run")
            continue
        why = failure(run)
        if why:
            cells.append(f"failed [{note(f'{names[s]} / {sc}: {why}')}]")
            continue
        v = fn(run["report"])
        values[s] = v
        text = num(v, kind) if kind != "raw" else ("—" if v is None else str(v))
        if sc == "fanout" and fanout_mark.get(s) and kind == "int":
            r = run["report"]
            text += " [%d]" % note(
                f"{names[s]} / fan-out: no in-flight window qualified (clean with p99 < 100 ms); "
                f"shown: the best, in-flight {r.get('in_flight')}, p99 {num(get(r, 'latency', 'p99_ms'), 'ms')} ms, "
                f"{'clean' if r.get('ok') else 'not clean'}")
        if not run["report"].get("ok") and kind != "raw" and text != "—":
            text += " †"
            dagger = True
        if (run.get("other_cpu_pct") or 0) > BUSY and kind != "raw" and text != "—":
            text += " ‡"
            ddagger = True
        cells.append(text)
    if direction is not None:
        label += " ↑" if direction == "up" else " ↓"
    rs = []
    if has_sio:
        rs.append(ratio(values.get("confab"), values.get("socketio"), direction))
    if has_ceiling:
        rs.append(ratio(values.get("confab"), values.get("ceiling"), direction))
    if has_durable:
        rs.append(ratio(values.get("confab"), values.get("ceiling-durable"), direction))
    w(f"| {label} | " + " | ".join(cells + rs) + " |")
w("")
w("Ratios are Confab's figure divided by the peer's (e.g. Confab p99 ÷ ceiling p99). "
  "↑: higher is better, so a ratio above 1 favours Confab; ↓: lower is better, so a ratio below 1 "
  "favours Confab. Fan-out CPU is the server process only (for Socket.io+PG, PostgreSQL's own "
  "processes share the server core but are not in that figure; memory is the Node process only).")
if has_ceiling and has_durable:
    # What durability alone costs on this disk, at a steady 200 msg/s: the durable ceiling
    # against the bare one, run for run as picked above.
    a, b = pick.get(("ceiling-durable", "latency")), pick.get(("ceiling", "latency"))
    if a and b and not failure(a) and not failure(b):
        cost = [f"{q} {ratio(get(a['report'], 'latency', q + '_ms'), get(b['report'], 'latency', q + '_ms'), 'down')}"
                for q in ("p50", "p99", "p999")]
        w("")
        w("What durability alone costs in the latency scenario (ceiling+log ÷ ceiling): "
          + ", ".join(cost) + ".")
if dagger:
    w("")
    w("† from a run that had loss, errors or disconnects (listed below).")
if ddagger:
    w("")
    w(f"‡ other work on the machine took more than {BUSY} % of a core during that run (listed below): "
      "the figure is likely worse than this machine can do.")
if spread:
    w("")
    w("Latency and big room: each server ran %s rounds, taking turns; each cell is from the "
      "server's median run by p99. The p99 of every run, lowest first, in ms:" % E["C_REPEAT"])
    w("")
    for sc in ("latency", "bigroom"):
        parts = [f"{names[s]} " + " / ".join(num(v, "ms") for v in spread[s, sc])
                 for s in columns if (s, sc) in spread]
        if parts:
            w(f"- {'latency' if sc == 'latency' else 'big room'}: " + "; ".join(parts))
for i, n in enumerate(notes, 1):
    w(f"\n[{i}] {n}")

# One line per run that had loss, errors, disconnects or late sends (or did not complete).
w("")
w("## Runs with loss, errors, disconnects or late sends")
w("")
lines = []
for run in runs:
    tag = f"{names.get(run['server'], run['server'])} / {run['scenario']}" + (
        f" (in-flight {run['in_flight']})" if run["scenario"] == "fanout" else "")
    why = failure(run)
    if why:
        tail = (run.get("server_log_tail") or []) + (run.get("loadgen_stderr_tail") or [])
        last = next((l for l in reversed(tail) if l.strip()), "")
        lines.append(f"- {tag}: **{why}**" + (f" — last output: `{last.strip()[:200]}`" if last else ""))
        continue
    r = run["report"]
    bits = []
    if r.get("deliveries_lost"):
        bits.append(f"lost {r['deliveries_lost']:,} of {r.get('deliveries_expected', 0):,} deliveries "
                    f"({r.get('loss_pct', 0):.2f} %; {r.get('deliveries_lost_open', 0):,} on connections still open)")
    if r.get("error_replies") or r.get("errors"):
        bits.append(f"error replies {r.get('error_replies', 0):,} {json.dumps(r.get('errors') or {})}")
    if r.get("disconnects") or r.get("disconnects_before_load"):
        bits.append(f"disconnects {json.dumps(r.get('disconnects') or {})}"
                    + (f" ({r['disconnects_before_load']} before the load)" if r.get("disconnects_before_load") else ""))
    if r.get("duplicates"):
        bits.append(f"{r['duplicates']:,} duplicates")
    if r.get("reorders"):
        bits.append(f"{r['reorders']:,} reorders")
    if r.get("write_errors"):
        bits.append(f"{len(r['write_errors'])} sender write errors")
    if r.get("readers_lost"):
        bits.append(f"{r['readers_lost']} readers lost")
    if r.get("rate") and r.get("late_sends", 0) >= max(1, 0.01 * r.get("messages_sent", 0)):
        bits.append(f"{r['late_sends']:,} of {r.get('messages_sent', 0):,} sends late (> 10 ms behind the "
                    f"{r['rate']:g} msg/s schedule: the generator lagged, or the in-flight window of "
                    f"{r.get('in_flight')} was full of unacked messages; the offered rate was lower)")
    if r.get("drained") is False:
        bits.append(f"drain incomplete after {r.get('drain_s', 0):.1f} s")
    if not run["server_alive_after"]:
        bits.append("the server died")
    if bits or run["status"] not in (0,):
        lines.append(f"- {tag}: " + ("; ".join(bits) if bits else f"loadgen exited with {run['status']}"))
w("\n".join(lines) if lines else "None.")
w("")
busy = []
for run in runs:
    other = run.get("other_cpu_pct")
    if other is not None and other > BUSY:
        tag = f"{names.get(run['server'], run['server'])} / {run['scenario']}" + (
            f" (in-flight {run['in_flight']})" if run["scenario"] == "fanout" else "")
        busy.append(f"{tag} {other:.0f} %")
if busy:
    w(f"Other work on the machine during a run (CPU time of processes that are not part of the "
      f"benchmark, in % of one core; over {BUSY} % marks the run's figures ‡ above): " + "; ".join(busy) + ".")
    w("")
else:
    others = [r["other_cpu_pct"] for r in runs if r.get("other_cpu_pct") is not None]
    if others:
        w(f"Other work on the machine stayed under {BUSY} % of a core during every run "
          f"(at most {max(others):.1f} %).")
        w("")
w(f"Raw reports (one JSON line per run, each with its loadgen output beside it): `{E['C_RAW']}/`.")
print("\n".join(out))
PY
cp "$TABLE" "$RESULTS_DIR/latest.md"
echo
cat "$TABLE"
echo
echo "table: $TABLE (and $RESULTS_DIR/latest.md); raw: $RAW_DIR/"
