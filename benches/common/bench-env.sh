# Shared setup for the load scripts (run-load.sh, compare.sh); sourced, not run.
# Needs SERVER_CPU and LOADGEN_CPU; sets pin_server / pin_loadgen (empty when not pinning) and
# PINNED (1 or 0), raises the open-file limit, and lifts Confab's per-human rate limits.
# Defines stop_pid (TERM, a 10 s grace, then KILL).

# Open files: one per connection on each side, plus slack. Go as far as the hard limit allows.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ]; then
    ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true
else
    ulimit -n "$hard" 2>/dev/null || true
fi
echo "open-file limit: $(ulimit -n)"

# Pinning: only when taskset exists and the CPUs do.
pin_server=() pin_loadgen=()
PINNED=0
if command -v taskset >/dev/null && [ "$(nproc)" -gt "$(( SERVER_CPU > LOADGEN_CPU ? SERVER_CPU : LOADGEN_CPU ))" ]; then
    pin_server=(taskset -c "$SERVER_CPU")
    pin_loadgen=(taskset -c "$LOADGEN_CPU")
    PINNED=1
else
    echo "warning: not pinning (taskset missing or too few CPUs); figures will be noisier" >&2
fi

# The load generator is one client IP opening thousands of connections and a handful of
# senders at machine speed: lift the per-human rate limits for the benchmark (they are
# measured, not bypassed: the buckets are still checked on every message).
export CONFAB_RATE_LIMITS__MESSAGES_PER_SEC=1000000 CONFAB_RATE_LIMITS__MESSAGES_BURST=1000000 \
    CONFAB_RATE_LIMITS__USER_MESSAGES_PER_SEC=1000000 CONFAB_RATE_LIMITS__USER_MESSAGES_BURST=1000000 \
    CONFAB_RATE_LIMITS__JOINS_PER_SEC=1000000 CONFAB_RATE_LIMITS__JOINS_BURST=1000000 \
    CONFAB_RATE_LIMITS__CONNECTS_PER_SEC_PER_IP=1000000 CONFAB_RATE_LIMITS__CONNECTS_BURST_PER_IP=1000000 \
    CONFAB_RATE_LIMITS__REGISTRATIONS_PER_MIN_PER_IP=1000000 CONFAB_RATE_LIMITS__REGISTRATIONS_BURST_PER_IP=1000000 \
    CONFAB_RATE_LIMITS__LOGIN_ADDRESS_FREE_FAILURES=1000000

# Stops a process: SIGTERM, up to 10 s to exit, then SIGKILL; reaps it when it is our child.
stop_pid() {
    local pid=$1
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
