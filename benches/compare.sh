#!/usr/bin/env bash
# Side-by-side benchmark of a 3-node Conclave and a 3-node etcd on 127.0.0.1.
#
# Installs nothing and builds nothing. Needs:
#   - `etcd` on PATH (Debian: apt-get install -y etcd-server) unless --only conclave;
#   - a release `conclave` binary (--conclave PATH) unless --only etcd;
#   - a release `conclave-bench` binary (--bench PATH).
#
# Each system runs alone (the other is stopped), with the same flags, fsync on, in temporary data
# directories on free loopback ports. Every scenario runs --runs times; the table shows medians.
# All processes and directories are removed on exit, whatever the exit path.
#
# Usage:
#   benches/compare.sh --bench target/release/conclave-bench --conclave target/release/conclave \
#       [--only etcd|conclave|both] [--runs 3] [--out bench-results.md] \
#       [--latency-total 2000] [--load-total 100000] [--val-size 256]

set -euo pipefail

usage() {
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

die() {
    echo "compare.sh: error: $*" >&2
    exit 1
}

BENCH=""
CONCLAVE=""
ONLY="both"
RUNS=3
OUT="bench-results.md"
LATENCY_TOTAL=2000
LOAD_TOTAL=100000
VAL_SIZE=256
KEY_SPACE=100000
LOAD_CLIENTS=256
LOAD_CONNS=16
WATCHERS=1000
WATCH_WRITES=1000
WATCH_RATE=200
KEEPALIVE_CLIENTS=64
KEEPALIVE_TOTAL=50000

while [[ $# -gt 0 ]]; do
    case "$1" in
        --bench) BENCH="${2:?--bench needs a path}"; shift 2 ;;
        --conclave) CONCLAVE="${2:?--conclave needs a path}"; shift 2 ;;
        --only) ONLY="${2:?--only needs etcd|conclave|both}"; shift 2 ;;
        --runs) RUNS="${2:?--runs needs a number}"; shift 2 ;;
        --out) OUT="${2:?--out needs a path}"; shift 2 ;;
        --latency-total) LATENCY_TOTAL="${2:?}"; shift 2 ;;
        --load-total) LOAD_TOTAL="${2:?}"; shift 2 ;;
        --val-size) VAL_SIZE="${2:?}"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "compare.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done

case "$ONLY" in etcd|conclave|both) ;; *) die "--only must be etcd, conclave or both (got '$ONLY')" ;; esac
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
for n in "$LATENCY_TOTAL" "$LOAD_TOTAL" "$VAL_SIZE"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "totals and sizes must be positive integers (got '$n')"
done
[[ -n "$BENCH" ]] || die "--bench PATH (the release conclave-bench binary) is required"
[[ -x "$BENCH" ]] || die "--bench $BENCH is not an executable file"
want() { [[ "$ONLY" == both || "$ONLY" == "$1" ]]; }
ETCD=""
if want etcd; then
    ETCD="$(command -v etcd || true)"
    [[ -n "$ETCD" ]] || die "etcd is not on PATH: install it first (apt-get install -y etcd-server) or pass --only conclave"
fi
if want conclave; then
    [[ -n "$CONCLAVE" ]] || die "--conclave PATH (the release conclave binary) is required unless --only etcd"
    [[ -x "$CONCLAVE" ]] || die "--conclave $CONCLAVE is not an executable file"
fi

WORK="$(mktemp -d -t conclave-compare.XXXXXX)"
PIDS=()
LOGS=()
USED_PORTS=" "

stop_cluster() {
    local pid i
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

cleanup() {
    local rc=$?
    stop_cluster
    if [[ $rc -ne 0 && ${#LOGS[@]} -gt 0 ]]; then
        local log
        for log in "${LOGS[@]}"; do
            [[ -f "$log" ]] || continue
            echo "---- last lines of $log ----" >&2
            tail -n 15 "$log" >&2 || true
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Sets PORT to a port on 127.0.0.1 that nothing listens on and that this script has not handed out
# yet. (Not called in $(...): the record of handed-out ports must survive.)
free_port() {
    local p tries
    for ((tries = 0; tries < 1000; tries++)); do
        p=$((20000 + RANDOM % 40000))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
        USED_PORTS+="$p "
        PORT=$p
        return 0
    done
    die "no free port found"
}

# Starts a 3-node cluster of BINARY; sets ENDPOINTS (comma list) and LEADER_FLAG.
start_cluster() {
    local system="$1" bin="$2" i cluster="" token
    local -a cport pport
    token="compare-$system-$$"
    for i in 1 2 3; do
        free_port
        cport[i]=$PORT
        free_port
        pport[i]=$PORT
        cluster+="${cluster:+,}n$i=http://127.0.0.1:${pport[i]}"
    done
    mkdir -m 700 -p "$WORK/$system"
    ENDPOINTS=""
    for i in 1 2 3; do
        local log="$WORK/$system/n$i.log"
        LOGS+=("$log")
        "$bin" --name "n$i" --data-dir "$WORK/$system/n$i.data" \
            --listen-client-urls "http://127.0.0.1:${cport[i]}" \
            --advertise-client-urls "http://127.0.0.1:${cport[i]}" \
            --listen-peer-urls "http://127.0.0.1:${pport[i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${pport[i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "$token" \
            --heartbeat-interval 100 --election-timeout 1000 \
            >"$log" 2>&1 &
        PIDS+=($!)
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:${cport[i]}"
    done
    echo "[$system] started 3 nodes: $ENDPOINTS (logs in $WORK/$system)" >&2

    # Healthy = a linearizable range answers on every member (needs a leader and a quorum).
    local deadline=$((SECONDS + 60)) ep ok pid
    while :; do
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || die "[$system] a node exited during startup"
        done
        ok=0
        for ep in ${ENDPOINTS//,/ }; do
            if "$BENCH" --endpoints "$ep" --total 1 --timeout 2s --dial-timeout 1s \
                range compare-health >/dev/null 2>&1; then
                ok=$((ok + 1))
            fi
        done
        [[ $ok -eq 3 ]] && break
        [[ $SECONDS -lt $deadline ]] || die "[$system] cluster not healthy after 60 s"
        sleep 0.5
    done
    echo "[$system] healthy" >&2

    # Single-client latency goes to the leader, so it does not depend on which member won the election.
    if "$BENCH" --endpoints "$ENDPOINTS" --target-leader --total 1 range compare-health >/dev/null 2>&1; then
        LEADER_FLAG="--target-leader"
    else
        LEADER_FLAG=""
        echo "[$system] warning: leader lookup (Maintenance.Status) failed; scenario a uses the first endpoint" >&2
    fi
}

# json_num FILE KEY: a numeric field of the bench tool's JSON line.
json_num() {
    sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" "$1"
}

median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

declare -A RPS P50 P99 ERRS MEM

# run_scenario SYSTEM NAME BENCH-ARGS...: RUNS runs, medians into RPS/P50/P99[SYSTEM.NAME].
run_scenario() {
    local system="$1" name="$2" r rc f errs=0 codes=""
    shift 2
    local rps_list="" p50_list="" p99_list="" mem_list=""
    for ((r = 1; r <= RUNS; r++)); do
        f="$WORK/$system/$name.$r.json"
        rc=0
        "$BENCH" --json "$@" >"$f" 2>>"$WORK/$system/bench.log" || rc=$?
        [[ $rc -le 1 && -s "$f" ]] || die "[$system] $name run $r: conclave-bench failed (exit $rc); see above"
        local rps p50 p99 e
        rps=$(json_num "$f" rps)
        p50=$(json_num "$f" p50_ms)
        p99=$(json_num "$f" p99_ms)
        e=$(json_num "$f" errors)
        errs=$((errs + e))
        local mem
        mem=$(json_num "$f" bytes_per_watcher)
        # Only the first run's: later runs' watchers fit in the memory the first run's freed.
        [[ -n "$mem" && $r -eq 1 ]] && mem_list+="$mem"$'\n'
        if [[ "$e" != 0 ]]; then
            codes+=" $(sed -n 's/.*"error_codes":{\([^}]*\)}.*/\1/p' "$f")"
        fi
        printf '[%s] %-8s run %d/%d: %10.1f req/s  p50 %8.3f ms  p99 %8.3f ms  errors %s\n' \
            "$system" "$name" "$r" "$RUNS" "$rps" "$p50" "$p99" "$e" >&2
        rps_list+="$rps"$'\n'
        p50_list+="$p50"$'\n'
        p99_list+="$p99"$'\n'
    done
    RPS[$system.$name]=$(printf '%s' "$rps_list" | median)
    P50[$system.$name]=$(printf '%s' "$p50_list" | median)
    P99[$system.$name]=$(printf '%s' "$p99_list" | median)
    ERRS[$system.$name]="$errs${codes:+ (${codes# })}"
    if [[ -n "$mem_list" ]]; then
        MEM[$system.$name]=$(printf '%s' "$mem_list" | median)
    fi
}

SCENARIOS=(put-1 put-256 range-l range-s watch keepalive)
declare -A DESC=(
    [put-1]="a. put, 1 client, 1 conn, leader, ${LATENCY_TOTAL} req"
    [put-256]="b. put, ${LOAD_CLIENTS} clients, ${LOAD_CONNS} conns, ${LOAD_TOTAL} req"
    [range-l]="c. range linearizable, ${LOAD_CLIENTS} clients, ${LOAD_CONNS} conns, ${LOAD_TOTAL} req"
    [range-s]="d. range serializable, ${LOAD_CLIENTS} clients, ${LOAD_CONNS} conns, ${LOAD_TOTAL} req"
    [watch]="e. watch fan-out: ${WATCHERS} watchers on 10 streams over 3 members, ${WATCH_WRITES} puts at ${WATCH_RATE}/s; events/s and put-to-event latency"
    [keepalive]="f. lease keep-alive, ${KEEPALIVE_CLIENTS} leases/streams, ${KEEPALIVE_TOTAL} renewals"
)

bench_system() {
    local system="$1" bin="$2"
    start_cluster "$system" "$bin"
    local common=(--endpoints "$ENDPOINTS" --key-size 8 --val-size "$VAL_SIZE")
    # shellcheck disable=SC2086 # LEADER_FLAG is empty or one word
    run_scenario "$system" put-1 "${common[@]}" $LEADER_FLAG --conns 1 --clients 1 \
        --total "$LATENCY_TOTAL" --key-space-size "$KEY_SPACE" put
    run_scenario "$system" put-256 "${common[@]}" --conns "$LOAD_CONNS" --clients "$LOAD_CLIENTS" \
        --total "$LOAD_TOTAL" --key-space-size "$KEY_SPACE" put
    "$BENCH" --endpoints "$ENDPOINTS" --total 1 --val-size "$VAL_SIZE" put --key compare-range-key \
        >/dev/null 2>>"$WORK/$system/bench.log" || die "[$system] could not write the range key"
    run_scenario "$system" range-l "${common[@]}" --conns "$LOAD_CONNS" --clients "$LOAD_CLIENTS" \
        --total "$LOAD_TOTAL" --consistency l range compare-range-key
    run_scenario "$system" range-s "${common[@]}" --conns "$LOAD_CONNS" --clients "$LOAD_CLIENTS" \
        --total "$LOAD_TOTAL" --consistency s range compare-range-key
    # Watchers (and leases) on fresh members: after the load scenarios a member's allocator held
    # enough freed memory that 1,000 watchers did not grow its resident set (~0 bytes per watcher).
    stop_cluster
    rm -rf "${WORK:?}/$system"/n*.data
    start_cluster "$system" "$bin"
    common=(--endpoints "$ENDPOINTS" --key-size 8 --val-size "$VAL_SIZE")
    local pids
    pids=$(IFS=,; echo "${PIDS[*]}")
    run_scenario "$system" watch "${common[@]}" --conns 3 --total "$WATCH_WRITES" --rate "$WATCH_RATE" \
        watch-latency --watchers "$WATCHERS" --streams 10 --rss-pids "$pids"
    run_scenario "$system" keepalive "${common[@]}" --conns "$LOAD_CONNS" --clients "$KEEPALIVE_CLIENTS" \
        --total "$KEEPALIVE_TOTAL" lease-keepalive
    stop_cluster
    rm -rf "${WORK:?}/$system"/n*.data
}

want etcd && bench_system etcd "$ETCD"
want conclave && bench_system conclave "$CONCLAVE"

cell_rps() { [[ -n "${RPS[$1.$2]:-}" ]] && printf '%.0f' "${RPS[$1.$2]}" || echo pending; }
cell_lat() { [[ -n "${P50[$1.$2]:-}" ]] && printf '%.2f / %.2f' "${P50[$1.$2]}" "${P99[$1.$2]}" || echo pending; }
cell_ratio() {
    if [[ -n "${RPS[etcd.$1]:-}" && -n "${RPS[conclave.$1]:-}" ]]; then
        awk -v c="${RPS[conclave.$1]}" -v e="${RPS[etcd.$1]}" 'BEGIN { if (e > 0) printf "%.2fx", c / e; else print "n/a" }'
    else
        echo "—"
    fi
}

{
    echo "## Conclave vs etcd, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), loopback."
    [[ -n "$ETCD" ]] && echo "etcd: $("$ETCD" --version 2>/dev/null | head -n 1)."
    echo "Median of $RUNS run(s) per scenario; key 8 B, value $VAL_SIZE B, key space $KEY_SPACE for puts; latencies in ms."
    echo
    echo "| scenario | etcd req/s | conclave req/s | ratio | etcd p50/p99 | conclave p50/p99 |"
    echo "|---|---:|---:|---:|---:|---:|"
    for s in "${SCENARIOS[@]}"; do
        echo "| ${DESC[$s]} | $(cell_rps etcd "$s") | $(cell_rps conclave "$s") | $(cell_ratio "$s") | $(cell_lat etcd "$s") | $(cell_lat conclave "$s") |"
    done
    echo
    echo "Server memory per watcher (scenario e's first run, on fresh members: resident set of the 3 members before vs. after the watches were created): etcd $(printf '%s' "${MEM[etcd.watch]:-pending}") B, conclave $(printf '%s' "${MEM[conclave.watch]:-pending}") B."
    any=""
    for k in "${!ERRS[@]}"; do
        if [[ "${ERRS[$k]}" != 0 ]]; then
            [[ -z "$any" ]] && { echo; echo "Errors (all runs):"; any=1; }
            echo "- ${k/./ }: ${ERRS[$k]}"
        fi
    done
} | tee "$OUT"
echo "compare.sh: wrote $OUT" >&2
