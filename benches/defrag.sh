#!/usr/bin/env bash
# Defragmentation under load, Conclave next to etcd: how long writes wait while a member
# defragments, how long the defragmentation takes, and how much the file shrinks.
#
# For each system: one member on 127.0.0.1 (fsync on, temporary data dir, free ports); KEYS keys of
# VAL_SIZE bytes are written four times, then compacted (three quarters of the history goes); a
# probe writes at PROBE_RATE puts/s from one client while `etcdctl defrag` runs. The probe's slowest put is the
# longest wait a client saw; its p50 is the usual cost.
#
# Needs: etcd and etcdctl on PATH (Debian: etcd-server, etcd-client) unless --only conclave; a
# release `conclave` (--conclave) and `conclave-bench` (--bench).
#
# Usage:
#   benches/defrag.sh --bench target/release/conclave-bench --conclave target/release/conclave \
#       [--only etcd|conclave|both] [--keys 25000] [--val-size 4096]

set -euo pipefail

die() {
    echo "defrag.sh: error: $*" >&2
    exit 1
}

BENCH=""
CONCLAVE=""
ONLY="both"
KEYS=25000
VAL_SIZE=4096
PROBE_RATE=100
PROBE_TOTAL=1500
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bench) BENCH="${2:?}"; shift 2 ;;
        --conclave) CONCLAVE="${2:?}"; shift 2 ;;
        --only) ONLY="${2:?}"; shift 2 ;;
        --keys) KEYS="${2:?}"; shift 2 ;;
        --val-size) VAL_SIZE="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ -x "$BENCH" ]] || die "--bench PATH (release conclave-bench) is required"
want() { [[ "$ONLY" == both || "$ONLY" == "$1" ]]; }
if want conclave; then [[ -x "$CONCLAVE" ]] || die "--conclave PATH (release conclave) is required"; fi
if want etcd; then command -v etcd >/dev/null || die "etcd is not on PATH"; fi
command -v etcdctl >/dev/null || die "etcdctl is not on PATH (apt-get install -y etcd-client)"
export ETCDCTL_API=3

WORK="$(mktemp -d -t conclave-defrag.XXXXXX)"
PID=""
stop() {
    [[ -n "$PID" ]] || return 0
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}
trap 'stop; [[ -n "${KEEP:-}" ]] || rm -rf "$WORK"' EXIT

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}

json_num() { sed -n "s/.*\"$2\":\([-0-9.eE+]*\).*/\1/p" "$1"; }

# measure SYSTEM BINARY DBFILE: prints one table row.
measure() {
    local system="$1" bin="$2" cport pport ep dir="$WORK/$1"
    cport=$(free_port)
    pport=$(free_port)
    ep="127.0.0.1:$cport"
    "$bin" --name n1 --data-dir "$dir" \
        --listen-client-urls "http://$ep" --advertise-client-urls "http://$ep" \
        --listen-peer-urls "http://127.0.0.1:$pport" \
        --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "n1=http://127.0.0.1:$pport" >"$WORK/$system.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do etcdctl --endpoints "$ep" get x >/dev/null 2>&1 && break; sleep 0.2; done
    local load=(--endpoints "$ep" --conns 8 --clients 64 --total "$KEYS" --key-size 16
        --val-size "$VAL_SIZE" --key-space-size "$KEYS" --sequential-keys)
    for _ in 1 2 3 4; do "$BENCH" "${load[@]}" put >/dev/null 2>&1; done
    local rev
    rev=$(etcdctl --endpoints "$ep" get x -w json | sed -n 's/.*"revision":\([0-9]*\).*/\1/p')
    etcdctl --endpoints "$ep" compaction --physical "$rev" >/dev/null
    local db="$dir/conclave.redb"
    [[ "$system" == etcd ]] && db="$dir/member/snap/db"
    local before after started took
    before=$(stat -c %s "$db")
    "$BENCH" --endpoints "$ep" --total "$PROBE_TOTAL" --rate "$PROBE_RATE" --key-size 16 \
        --val-size 256 --json put >"$WORK/$system.probe" 2>/dev/null &
    local probe=$!
    sleep 3
    started=$(date +%s%N)
    etcdctl --endpoints "$ep" --command-timeout 300s defrag >/dev/null
    took=$((($(date +%s%N) - started) / 1000000))
    wait "$probe"
    after=$(stat -c %s "$db")
    local pause="-"
    if [[ "$system" == conclave ]]; then
        pause=$(sed -n 's/.*defragmented.*pause_ms=\([0-9.]*\).*/\1/p' "$WORK/$system.log" | head -1)
    fi
    [[ "$pause" == "-" ]] || pause=$(printf '%.1f ms' "$pause")
    printf '| %s | %d MB | %d MB | %d ms | %s | %.2f ms | %.0f ms |\n' "$system" \
        $((before / 1000000)) $((after / 1000000)) "$took" "$pause" \
        "$(json_num "$WORK/$system.probe" p50_ms)" "$(json_num "$WORK/$system.probe" slowest_ms)"
    stop
}

echo "| system | file before | after | defrag took | writes paused (logged) | probe put p50 | probe slowest put |"
echo "|---|---:|---:|---:|---:|---:|---:|"
if want conclave; then measure conclave "$CONCLAVE"; fi
if want etcd; then measure etcd "$(command -v etcd)"; fi
