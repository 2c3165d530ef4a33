#!/usr/bin/env bash
# etcdctl compatibility test: drives the real `etcdctl` (etcd 3.4, API v3)
# against a 3-node cluster on 127.0.0.1 and checks its JSON output with jq.
#
#   .ci/etcdctl-compat.sh --target etcd                      # reference run (etcd from PATH)
#   .ci/etcdctl-compat.sh --target conclave --binary PATH    # the server under test
#
# The script installs nothing: the caller must provide etcdctl, jq, python3
# (and etcd for --target etcd). The checks were validated against real
# etcd 3.4.23, so a failure with --target conclave is a Conclave bug.
#
# --skip a,b skips named steps (for capabilities the target does not have yet).
# Environment: KEEP_TMP=1 keeps the temp dir (data dirs + logs) on exit.
set -euo pipefail

usage() {
    echo "usage: $0 --target etcd|conclave [--binary PATH] [--skip step,step...]" >&2
    exit 2
}

TARGET=""
BINARY=""
SKIP_STEPS=","
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) TARGET="${2:-}"; shift 2 || usage ;;
        --binary) BINARY="${2:-}"; shift 2 || usage ;;
        --skip) SKIP_STEPS=",${2:-},"; shift 2 || usage ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

case "$TARGET" in
    etcd)
        if [[ -z "$BINARY" ]]; then
            BINARY="$(command -v etcd || true)"
            [[ -n "$BINARY" ]] || { echo "error: etcd not found in PATH (apt-get install -y etcd-server)" >&2; exit 2; }
        fi ;;
    conclave)
        [[ -n "$BINARY" ]] || { echo "error: --target conclave needs --binary PATH" >&2; exit 2; } ;;
    *) usage ;;
esac
[[ -x "$BINARY" ]] || { echo "error: server binary '$BINARY' is not an executable file" >&2; exit 2; }

for tool in etcdctl jq python3 base64 timeout; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "error: required tool '$tool' not found in PATH (the caller must run: apt-get install -y etcd-client etcd-server jq)" >&2
        exit 2
    }
done
export ETCDCTL_API=3
echo "target: $TARGET ($BINARY)"
echo "client: $(etcdctl version 2>/dev/null | tr '\n' ' ')"

# ---------------------------------------------------------------- cluster --

T="$(mktemp -d "${TMPDIR:-/tmp}/etcdctl-compat.XXXXXX")"
declare -a PID=("" "" "" "" "")
declare -a CPORT PPORT
PASSED=0
FAILED=0
SKIPPED=0
FAILED_NAMES=()
SUMMARY_DONE=0

print_log_tails() {
    local i
    for i in 1 2 3 4; do
        if [[ -f "$T/n$i.log" ]]; then
            echo "----- tail of n$i log -----"
            tail -n 40 "$T/n$i.log"
        fi
    done
}

cleanup() {
    local rc=$?
    set +e
    for i in 1 2 3 4; do
        if [[ -n "${PID[$i]}" ]]; then
            kill -9 "${PID[$i]}" 2>/dev/null
            wait "${PID[$i]}" 2>/dev/null
        fi
    done
    if [[ $SUMMARY_DONE == 0 && ( $rc -ne 0 || $FAILED -gt 0 ) ]]; then
        print_log_tails
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "kept $T"
    else
        rm -rf "$T"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Pick 8 distinct free ports (the OS may hand the same free port out twice);
# the fourth member joins later (member add).
declare -A SEEN=()
pick_port() {   # pick_port VAR
    local p
    while :; do
        p="$(free_port)"
        if [[ -z "${SEEN[$p]:-}" ]]; then SEEN[$p]=1; printf -v "$1" '%s' "$p"; return; fi
    done
}
for i in 1 2 3 4; do
    pick_port "CPORT[$i]"
    pick_port "PPORT[$i]"
done
EP4="127.0.0.1:${CPORT[4]}"
EP1="127.0.0.1:${CPORT[1]}"
EP2="127.0.0.1:${CPORT[2]}"
EP3="127.0.0.1:${CPORT[3]}"
declare -a EPN=("" "$EP1" "$EP2" "$EP3")
ALL="$EP1,$EP2,$EP3"
INITIAL_CLUSTER="n1=http://127.0.0.1:${PPORT[1]},n2=http://127.0.0.1:${PPORT[2]},n3=http://127.0.0.1:${PPORT[3]}"
TOKEN="compat-$$"

start_node() {
    local i=$1
    mkdir -p "$T/d$i"
    echo "=== start $(date +%T) ===" >>"$T/n$i.log"
    "$BINARY" --name "n$i" --data-dir "$T/d$i" \
        --listen-client-urls "http://127.0.0.1:${CPORT[$i]}" \
        --advertise-client-urls "http://127.0.0.1:${CPORT[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${PPORT[$i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${PPORT[$i]}" \
        --initial-cluster "$INITIAL_CLUSTER" \
        --initial-cluster-state new \
        --initial-cluster-token "$TOKEN" \
        --heartbeat-interval 100 --election-timeout 1000 \
        >>"$T/n$i.log" 2>&1 &
    PID[$i]=$!
}

# start_joiner I INITIAL_CLUSTER: member nI joins the running cluster.
start_joiner() {
    local i=$1 initial=$2
    mkdir -p "$T/d$i"
    echo "=== start (join) $(date +%T) ===" >>"$T/n$i.log"
    "$BINARY" --name "n$i" --data-dir "$T/d$i" \
        --listen-client-urls "http://127.0.0.1:${CPORT[$i]}" \
        --advertise-client-urls "http://127.0.0.1:${CPORT[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${PPORT[$i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${PPORT[$i]}" \
        --initial-cluster "$initial" \
        --initial-cluster-state existing \
        --initial-cluster-token "$TOKEN" \
        --heartbeat-interval 100 --election-timeout 1000 \
        >>"$T/n$i.log" 2>&1 &
    PID[$i]=$!
}

stop_node_hard() {
    local i=$1
    kill -9 "${PID[$i]}" 2>/dev/null || true
    wait "${PID[$i]}" 2>/dev/null || true
    PID[$i]=""
}

for i in 1 2 3; do start_node "$i"; done
echo "cluster: n1=$EP1 n2=$EP2 n3=$EP3 (peers ${PPORT[1]},${PPORT[2]},${PPORT[3]}), dir $T"

healthy=0
for _ in $(seq 1 60); do
    for i in 1 2 3; do
        if ! kill -0 "${PID[$i]}" 2>/dev/null; then
            echo "FAIL cluster-start: node n$i exited during startup"
            print_log_tails
            SUMMARY_DONE=1
            echo "0 passed, 1 failed"
            exit 1
        fi
    done
    if etcdctl --endpoints="$ALL" --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1; then
        healthy=1
        break
    fi
    sleep 0.5
done
if [[ $healthy != 1 ]]; then
    echo "FAIL cluster-start: cluster did not become healthy within 30 s"
    etcdctl --endpoints="$ALL" --dial-timeout=1s --command-timeout=2s endpoint health 2>&1 | grep -v '^{"level"' || true
    print_log_tails
    SUMMARY_DONE=1
    echo "0 passed, 1 failed"
    exit 1
fi
echo "cluster healthy"

# ---------------------------------------------------------------- helpers --

OUT="$T/out"
ERR="$T/err"
RC=0
WHY=""

# ctl ENDPOINTS ARGS... : run etcdctl; stdout -> $OUT, stderr -> $ERR, exit code -> $RC.
ctl() {
    local eps=$1; shift
    RC=0
    etcdctl --endpoints="$eps" --dial-timeout=2s --command-timeout=5s "$@" >"$OUT" 2>"$ERR" || RC=$?
}
# Same, with stdin from a file.
ctl_in() {
    local file=$1 eps=$2; shift 2
    RC=0
    etcdctl --endpoints="$eps" --dial-timeout=2s --command-timeout=5s "$@" <"$file" >"$OUT" 2>"$ERR" || RC=$?
}

# jq over $OUT. uint64 ids (member_id, cluster_id, leader, lease ids) exceed
# 2^53 and jq 1.6 would round them, so integers of 16+ digits are turned
# into strings first (compare ids as strings).
j() {
    sed -E 's/([:,]|\[)([0-9]{16,})([],}])/\1"\2"\3/g; s/([:,]|\[)([0-9]{16,})([],}])/\1"\2"\3/g' "$OUT" | jq -r "$@"
}

b64() { printf '%s' "$1" | base64 -w0; }

errline() { tr '\n' ' ' <"$ERR" | grep -o 'Error: .*' | head -c 300 || tail -c 300 "$ERR" | tr '\n' ' '; }

# Assertions: set WHY and return 1 on mismatch.
need_ok() {
    if [[ $RC -ne 0 ]]; then WHY="${1:-etcdctl} exited $RC: $(errline)"; return 1; fi
}
need_fail_with() {
    # need_fail_with "what" "substring" ["alternative substring"]
    local what=$1; shift
    if [[ $RC -eq 0 ]]; then WHY="$what: expected failure, got success: $(head -c 300 "$OUT")"; return 1; fi
    local s
    for s in "$@"; do
        if grep -qF -- "$s" "$ERR"; then return 0; fi
    done
    WHY="$what: exit $RC but error text lacks '$*': $(errline)"
    return 1
}
need_error() {
    # need_error WHAT GRPC_CODE EXACT_ERROR_LINE
    # etcdctl must fail, print exactly EXACT_ERROR_LINE on stderr, and the
    # client's retry-interceptor warning must show the gRPC status code.
    local what=$1 code=$2 line=$3
    if [[ $RC -eq 0 ]]; then WHY="$what: expected failure, got success: $(head -c 300 "$OUT")"; return 1; fi
    if ! grep -qxF -- "$line" "$ERR"; then WHY="$what: want stderr line '$line', got: $(errline)"; return 1; fi
    if ! grep -qF -- "code = $code desc" "$ERR"; then
        WHY="$what: want gRPC code $code, got: $(grep -o 'code = [A-Za-z]* desc' "$ERR" | head -1)"; return 1
    fi
}
eq() {
    # eq ACTUAL EXPECTED WHAT
    if [[ "$1" != "$2" ]]; then WHY="$3: got '$1', want '$2'"; return 1; fi
}
gt() {
    # gt A B WHAT  (integers, A > B)
    if ! [[ "$1" =~ ^[0-9]+$ && "$2" =~ ^[0-9]+$ ]] || (( $1 <= $2 )); then
        WHY="$3: want $1 > $2"; return 1
    fi
}

step() {
    local name=$1; shift
    WHY=""
    if [[ "$SKIP_STEPS" == *",$name,"* ]]; then
        skip "$name" "--skip (not implemented by this target yet)"
        return 0
    fi
    if "$@"; then
        PASSED=$((PASSED + 1))
        echo "ok $name"
    else
        FAILED=$((FAILED + 1))
        FAILED_NAMES+=("$name")
        echo "FAIL $name: ${WHY:-no details}"
    fi
}
skip() {
    SKIPPED=$((SKIPPED + 1))
    echo "skip $1: $2"
}

# Revision bookkeeping: every write must return a strictly larger header.revision.
LASTREV=0
track_rev() {
    local r
    r=$(j '.header.revision // empty')
    if ! [[ "$r" =~ ^[0-9]+$ ]]; then WHY="${1:-write}: no header.revision in $(head -c 200 "$OUT")"; return 1; fi
    gt "$r" "$LASTREV" "${1:-write}: header.revision must increase" || return 1
    LASTREV=$r
}

# ----------------------------------------------------------------- checks --

t_endpoint_health() {
    ctl "$ALL" endpoint health -w json; need_ok "endpoint health" || return 1
    eq "$(j 'length')" 3 "number of health entries" || return 1
    eq "$(j '[.[] | select(.health == true)] | length')" 3 "healthy endpoints" || return 1
    eq "$(j '[.[].endpoint] | sort | join(",")')" "$(printf '%s\n' "$EP1" "$EP2" "$EP3" | sort | paste -sd,)" "endpoints" || return 1
}

t_member_list() {
    local i
    for i in 1 2 3; do
        ctl "${EPN[$i]}" member list -w json; need_ok "member list via n$i" || return 1
        eq "$(j '.members | length')" 3 "member count via n$i" || return 1
        eq "$(j '[.members[].name] | sort | join(",")')" "n1,n2,n3" "member names via n$i" || return 1
        eq "$(j '[.members[].ID] | unique | length')" 3 "distinct member IDs" || return 1
        eq "$(j '[.members[] | select((.ID|tostring) == "0")] | length')" 0 "zero member ID" || return 1
        eq "$(j '.header.member_id != null and (.header.member_id|tostring) != "0"')" true "header.member_id" || return 1
        eq "$(j '.header.cluster_id != null and (.header.cluster_id|tostring) != "0"')" true "header.cluster_id" || return 1
        local n
        for n in 1 2 3; do
            eq "$(j --arg n "n$n" '.members[] | select(.name == $n) | .peerURLs | join(",")')" \
                "http://127.0.0.1:${PPORT[$n]}" "peerURLs of n$n" || return 1
            eq "$(j --arg n "n$n" '.members[] | select(.name == $n) | .clientURLs | join(",")')" \
                "http://127.0.0.1:${CPORT[$n]}" "clientURLs of n$n" || return 1
        done
    done
}

# Poll `endpoint status` on ENDPOINTS until every member reports the same
# nonzero leader (and, with "samerev", the same header.revision); max 10 s.
status_settled() {
    local eps=$1 mode=${2:-} start=$SECONDS
    while :; do
        ctl "$eps" endpoint status -w json
        if [[ $RC -eq 0 && "$(j '[.[].Status.leader | tostring] | unique | (length == 1 and .[0] != "0" and .[0] != "null")')" == true ]]; then
            if [[ "$mode" != samerev || "$(j '[.[].Status.header.revision] | unique | length')" == 1 ]]; then
                return 0
            fi
        fi
        (( SECONDS - start < 10 )) || return 0   # let the caller's checks report what is wrong
        sleep 0.5
    done
}

t_endpoint_status() {
    status_settled "$ALL"; need_ok "endpoint status" || return 1
    eq "$(j 'length')" 3 "status entries" || return 1
    eq "$(j '[.[].Endpoint] | sort | join(",")')" "$(printf '%s\n' "$EP1" "$EP2" "$EP3" | sort | paste -sd,)" "Endpoint fields" || return 1
    eq "$(j '[.[].Status.header.member_id | select(. != null and (tostring) != "0")] | unique | length')" 3 "distinct nonzero header.member_id" || return 1
    eq "$(j '[.[].Status.header.cluster_id] | unique | length')" 1 "same cluster_id on all members" || return 1
    eq "$(j '[.[].Status.header.cluster_id | select(. != null and (tostring) != "0")] | length')" 3 "nonzero cluster_id" || return 1
    eq "$(j '[.[].Status.leader] | unique | length')" 1 "same leader on all members" || return 1
    local leader
    leader=$(j '.[0].Status.leader // 0 | tostring')
    [[ "$leader" != 0 ]] || { WHY="leader is zero/absent"; return 1; }
    eq "$(j --arg l "$leader" '[.[] | select((.Status.header.member_id|tostring) == $l)] | length')" 1 "leader is one of the members" || return 1
    eq "$(j '[.[] | select((.Status.raftTerm // 0) > 0)] | length')" 3 "raftTerm > 0" || return 1
    eq "$(j '[.[] | select((.Status.header.raft_term // 0) > 0)] | length')" 3 "header.raft_term > 0" || return 1
    eq "$(j '[.[] | select((.Status.raftIndex // 0) > 0)] | length')" 3 "raftIndex > 0" || return 1
    eq "$(j '[.[] | select((.Status.dbSize // 0) > 0)] | length')" 3 "dbSize > 0" || return 1
    eq "$(j '[.[] | select((.Status.version // "") | test("^[0-9]+\\.[0-9]+"))] | length')" 3 "version like X.Y.Z" || return 1
    eq "$(j '[.[].Status.raftTerm] | unique | length')" 1 "same raftTerm on all members" || return 1
}

# put on n1, get on n2: value round trip and all kv fields.
PUT1_REV=0
t_put_get() {
    ctl "$EP1" put compat/k1 'hello world' -w json; need_ok put || return 1
    track_rev put || return 1
    eq "$(j 'has("prev_kv")')" false "put without --prev-kv must have no prev_kv" || return 1
    PUT1_REV=$LASTREV
    ctl "$EP2" get compat/k1 -w json; need_ok get || return 1
    eq "$(j '.header.revision')" "$PUT1_REV" "get header.revision" || return 1
    eq "$(j '.count')" 1 "count" || return 1
    eq "$(j '.kvs | length')" 1 "kvs length" || return 1
    eq "$(j '.kvs[0].key')" "$(b64 compat/k1)" "kvs[0].key (base64)" || return 1
    eq "$(j '.kvs[0].value')" "$(b64 'hello world')" "kvs[0].value (base64)" || return 1
    eq "$(j '.kvs[0].create_revision')" "$PUT1_REV" "create_revision" || return 1
    eq "$(j '.kvs[0].mod_revision')" "$PUT1_REV" "mod_revision" || return 1
    eq "$(j '.kvs[0].version')" 1 "version" || return 1
    eq "$(j '.kvs[0] | has("lease")')" false "no lease field without lease" || return 1
    eq "$(j 'has("more")')" false "no more field" || return 1
    # simple output
    ctl "$EP3" get compat/k1; need_ok "get (simple)" || return 1
    eq "$(cat "$OUT")" $'compat/k1\nhello world' "simple output" || return 1
    ctl "$EP3" get compat/k1 --print-value-only; need_ok "get --print-value-only" || return 1
    eq "$(cat "$OUT")" 'hello world' "--print-value-only output" || return 1
}

t_overwrite() {
    ctl "$EP3" put compat/k1 'second' -w json; need_ok put || return 1
    track_rev put || return 1
    local r2=$LASTREV
    ctl "$EP1" get compat/k1 -w json; need_ok get || return 1
    eq "$(j '.kvs[0].value')" "$(b64 second)" "value" || return 1
    eq "$(j '.kvs[0].version')" 2 "version after overwrite" || return 1
    eq "$(j '.kvs[0].create_revision')" "$PUT1_REV" "create_revision unchanged" || return 1
    eq "$(j '.kvs[0].mod_revision')" "$r2" "mod_revision = put revision" || return 1
    ctl "$EP2" put compat/k1 'third' -w json; need_ok put || return 1
    track_rev put || return 1
    ctl "$EP2" get compat/k1 -w json --consistency=s; need_ok "get --consistency=s" || return 1
    eq "$(j '.kvs[0].version')" 3 "version after 2nd overwrite" || return 1
}

t_put_prev_kv() {
    ctl "$EP2" put compat/k1 'fourth' --prev-kv -w json; need_ok "put --prev-kv" || return 1
    track_rev put || return 1
    eq "$(j '.prev_kv.key')" "$(b64 compat/k1)" "prev_kv.key" || return 1
    eq "$(j '.prev_kv.value')" "$(b64 third)" "prev_kv.value" || return 1
    eq "$(j '.prev_kv.version')" 3 "prev_kv.version" || return 1
    eq "$(j '.prev_kv.create_revision')" "$PUT1_REV" "prev_kv.create_revision" || return 1
    ctl "$EP2" put compat/newkey 'x' --prev-kv -w json; need_ok "put --prev-kv (new key)" || return 1
    track_rev put || return 1
    eq "$(j 'has("prev_kv")')" false "no prev_kv for a new key" || return 1
    ctl "$EP1" put compat/k1 'fifth' --prev-kv; need_ok "put --prev-kv (simple)" || return 1
    eq "$(cat "$OUT")" $'OK\ncompat/k1\nfourth' "simple output of put --prev-kv" || return 1
    ctl "$EP1" get compat/k1 -w json; LASTREV=$(j '.header.revision')
}

t_put_empty_key() {
    ctl "$EP1" put "" value
    need_error "put empty key" InvalidArgument 'Error: etcdserver: key is not provided' || return 1
}

t_put_simple() {
    ctl "$EP3" put compat/simple v; need_ok put || return 1
    eq "$(cat "$OUT")" OK "put simple output" || return 1
    ctl "$EP3" get compat/simple -w json; LASTREV=$(j '.header.revision')
}

t_get_missing() {
    ctl "$EP3" get compat/does-not-exist -w json; need_ok get || return 1
    eq "$(j '(.kvs // []) | length')" 0 "kvs of missing key" || return 1
    eq "$(j '.count // 0')" 0 "count of missing key" || return 1
    eq "$(j '.header.revision')" "$LASTREV" "header.revision" || return 1
    ctl "$EP3" get compat/does-not-exist; need_ok "get (simple)" || return 1
    eq "$(cat "$OUT")" "" "simple output for missing key" || return 1
}

PFX_REVS=()
t_prefix_setup() {
    local k
    PFX_REVS=()
    for k in a b c; do
        ctl "$EP1" put "compat/p/$k" "val-$k" -w json; need_ok "put compat/p/$k" || return 1
        track_rev put || return 1
        PFX_REVS+=("$LASTREV")
    done
    # a key that shares the byte prefix "compat/p" but not "compat/p/"
    ctl "$EP1" put "compat/pz" "other" -w json; need_ok "put compat/pz" || return 1
    track_rev put || return 1
}

t_get_prefix() {
    ctl "$EP2" get compat/p/ --prefix -w json; need_ok "get --prefix" || return 1
    eq "$(j '.count')" 3 "count" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/p/a,compat/p/b,compat/p/c" "keys in order" || return 1
    eq "$(j '[.kvs[].value | @base64d] | join(",")')" "val-a,val-b,val-c" "values" || return 1
    eq "$(j '.more // false')" false "more" || return 1
}

t_get_range() {
    ctl "$EP3" get compat/p/a compat/p/c -w json; need_ok "get KEY RANGE_END" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/p/a,compat/p/b" "range [a,c)" || return 1
    eq "$(j '.count')" 2 "count" || return 1
}

t_get_limit() {
    ctl "$EP3" get compat/p/ --prefix --limit 2 -w json; need_ok "get --limit" || return 1
    eq "$(j '.kvs | length')" 2 "kvs length" || return 1
    eq "$(j '.more')" true "more" || return 1
    eq "$(j '.count')" 3 "count (total, not limited)" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/p/a,compat/p/b" "first two keys" || return 1
    ctl "$EP3" get compat/p/ --prefix --limit 3 -w json; need_ok "get --limit 3" || return 1
    eq "$(j '.more // false')" false "more with limit == count" || return 1
}

t_get_rev() {
    ctl "$EP1" get compat/k1 --rev "$PUT1_REV" -w json; need_ok "get --rev" || return 1
    eq "$(j '.kvs[0].value')" "$(b64 'hello world')" "value at old revision" || return 1
    eq "$(j '.kvs[0].version')" 1 "version at old revision" || return 1
    eq "$(j '.kvs[0].mod_revision')" "$PUT1_REV" "mod_revision at old revision" || return 1
    eq "$(j '.header.revision')" "$LASTREV" "header.revision is the current revision" || return 1
    ctl "$EP2" get compat/p/ --prefix --rev "${PFX_REVS[1]}" -w json; need_ok "get --prefix --rev" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/p/a,compat/p/b" "prefix at old revision" || return 1
    ctl "$EP2" get compat/k1 --rev $((PUT1_REV - 1)) -w json; need_ok "get --rev before creation" || return 1
    eq "$(j '(.kvs // []) | length')" 0 "no kvs before creation" || return 1
}

t_get_sort() {
    # make b the most recently modified
    ctl "$EP1" put compat/p/b val-b -w json; need_ok put || return 1
    track_rev put || return 1
    ctl "$EP2" get compat/p/ --prefix --sort-by=MODIFY --order=DESCEND -w json; need_ok "get --sort-by=MODIFY --order=DESCEND" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/p/b,compat/p/c,compat/p/a" "MODIFY DESCEND order" || return 1
    ctl "$EP3" get compat/p/ --prefix --sort-by=CREATE --order=DESCEND -w json; need_ok "get --sort-by=CREATE" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/p/c,compat/p/b,compat/p/a" "CREATE DESCEND order" || return 1
    ctl "$EP3" get compat/p/ --prefix --sort-by=KEY --order=DESCEND -w json; need_ok "get --sort-by=KEY" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/p/c,compat/p/b,compat/p/a" "KEY DESCEND order" || return 1
    ctl "$EP3" get compat/p/ --prefix --sort-by=VERSION --order=DESCEND --limit 1 -w json; need_ok "get --sort-by=VERSION --limit 1" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/p/b" "VERSION DESCEND first" || return 1
    eq "$(j '.count')" 3 "count with sort+limit" || return 1
}

t_get_keys_only() {
    ctl "$EP1" get compat/p/ --prefix --keys-only -w json; need_ok "get --keys-only" || return 1
    eq "$(j '.kvs | length')" 3 "kvs length" || return 1
    eq "$(j '[.kvs[] | has("value")] | any')" false "no value field with --keys-only" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/p/a,compat/p/b,compat/p/c" "keys" || return 1
    eq "$(j '[.kvs[] | .create_revision > 0 and .mod_revision > 0 and .version > 0] | all')" true "revisions still present" || return 1
    ctl "$EP1" get compat/p/ --prefix --keys-only; need_ok "get --keys-only (simple)" || return 1
    eq "$(cat "$OUT")" $'compat/p/a\n\ncompat/p/b\n\ncompat/p/c' "simple --keys-only output" || return 1
}

t_get_count_only() {
    ctl "$EP2" get compat/p/ --prefix --count-only -w json; need_ok "get --count-only" || return 1
    eq "$(j '.count')" 3 "count" || return 1
    eq "$(j '(.kvs // []) | length')" 0 "no kvs with --count-only" || return 1
}

t_get_from_key() {
    # '~' (0x7e) sorts after every other key this script writes
    local k
    for k in a b c; do
        ctl "$EP3" put "~compat/$k" "$k" -w json; need_ok put || return 1
        track_rev put || return 1
    done
    ctl "$EP1" get '~compat/b' --from-key -w json; need_ok "get --from-key" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "~compat/b,~compat/c" "keys >= ~compat/b" || return 1
    eq "$(j '.count')" 2 "count" || return 1
    ctl "$EP1" get '~compat/' --from-key --keys-only --limit 1 -w json; need_ok "get --from-key --limit" || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "~compat/a" "first key >= ~compat/" || return 1
    eq "$(j '.more')" true "more" || return 1
    ctl "$EP2" get compat/ --from-key --keys-only -w json; need_ok "get --from-key (all)" || return 1
    eq "$(j '[.kvs[].key | @base64d] | (. == sort)')" true "from-key result sorted by key" || return 1
    eq "$(j '[.kvs[].key | @base64d | select(startswith("compat/"))] | length > 3')" true "includes compat/ keys" || return 1
}

t_del_single() {
    ctl "$EP1" put compat/del1 v -w json; need_ok put || return 1
    track_rev put || return 1
    ctl "$EP2" del compat/del1 -w json; need_ok del || return 1
    track_rev del || return 1
    eq "$(j '.deleted')" 1 "deleted" || return 1
    eq "$(j 'has("prev_kvs")')" false "no prev_kvs without --prev-kv" || return 1
    ctl "$EP3" get compat/del1 -w json; need_ok get || return 1
    eq "$(j '(.kvs // []) | length')" 0 "key gone" || return 1
    local before=$LASTREV
    ctl "$EP3" del compat/del1 -w json; need_ok "del missing key" || return 1
    eq "$(j '.deleted // 0')" 0 "deleted for missing key" || return 1
    eq "$(j '.header.revision')" "$before" "deleting nothing must not bump the revision" || return 1
    ctl "$EP3" del compat/del1; need_ok "del missing (simple)" || return 1
    eq "$(cat "$OUT")" 0 "simple del output for missing key" || return 1
}

t_del_prefix() {
    local k
    for k in a b c; do ctl "$EP1" put "compat/d/$k" "dv-$k" -w json; need_ok put || return 1; track_rev put || return 1; done
    ctl "$EP1" put compat/dz keep -w json; need_ok put || return 1; track_rev put || return 1
    local before=$LASTREV
    ctl "$EP2" del compat/d/ --prefix -w json; need_ok "del --prefix" || return 1
    eq "$(j '.deleted')" 3 "deleted count" || return 1
    eq "$(j '.header.revision')" $((before + 1)) "a multi-key delete is one revision" || return 1
    LASTREV=$((before + 1))
    ctl "$EP3" get compat/d --prefix -w json; need_ok get || return 1
    eq "$(j '[.kvs[].key | @base64d] | join(",")')" "compat/dz" "only compat/dz left" || return 1
}

t_del_prev_kv() {
    local k
    for k in a b; do ctl "$EP3" put "compat/d/$k" "pv-$k" -w json; need_ok put || return 1; track_rev put || return 1; done
    ctl "$EP1" del compat/d/ --prefix --prev-kv -w json; need_ok "del --prev-kv" || return 1
    track_rev del || return 1
    eq "$(j '.deleted')" 2 "deleted" || return 1
    eq "$(j '[.prev_kvs[].key | @base64d] | join(",")')" "compat/d/a,compat/d/b" "prev_kvs keys" || return 1
    eq "$(j '[.prev_kvs[].value | @base64d] | join(",")')" "pv-a,pv-b" "prev_kvs values" || return 1
    ctl "$EP1" put compat/d/s one -w json; need_ok put || return 1; track_rev put || return 1
    ctl "$EP2" del compat/d/s --prev-kv; need_ok "del --prev-kv (simple)" || return 1
    eq "$(cat "$OUT")" $'1\ncompat/d/s\none' "simple del --prev-kv output" || return 1
    LASTREV=$((LASTREV + 1))
}

TXN_CREATE=0
t_txn_success() {
    ctl "$EP1" put compat/tx v1 -w json; need_ok put || return 1
    track_rev put || return 1
    TXN_CREATE=$LASTREV
    cat >"$T/txn1" <<EOF
value("compat/tx") = "v1"
version("compat/tx") = "1"
mod("compat/tx") > "0"
create("compat/tx") = "$TXN_CREATE"
mod("compat/tx") < "$((TXN_CREATE + 1))"

put compat/tx v2
get compat/tx
del compat/tx-nothing

put compat/tx-failed yes

EOF
    ctl_in "$T/txn1" "$EP2" txn -w json; need_ok "txn" || return 1
    track_rev txn || return 1
    eq "$(j '.succeeded')" true "succeeded" || return 1
    eq "$(j '.responses | length')" 3 "responses length" || return 1
    eq "$(j '.responses[0].Response | keys | join(",")')" ResponsePut "responses[0] is a put" || return 1
    eq "$(j '.responses[1].Response.ResponseRange.kvs[0].value')" "$(b64 v2)" "txn get sees txn put" || return 1
    eq "$(j '.responses[1].Response.ResponseRange.kvs[0].version')" 2 "version in txn get" || return 1
    eq "$(j '.responses[1].Response.ResponseRange.kvs[0].mod_revision')" "$LASTREV" "mod_revision in txn get" || return 1
    eq "$(j '.responses[2].Response | keys | join(",")')" ResponseDeleteRange "responses[2] is a delete" || return 1
    ctl "$EP3" get compat/tx-failed -w json; need_ok get || return 1
    eq "$(j '(.kvs // []) | length')" 0 "failure branch not applied" || return 1
    # simple output
    printf 'version("compat/tx") = "2"\n\nget compat/tx\n\n\n' >"$T/txn1s"
    ctl_in "$T/txn1s" "$EP3" txn; need_ok "txn (simple)" || return 1
    eq "$(cat "$OUT")" $'SUCCESS\n\ncompat/tx\nv2' "simple txn output" || return 1
}

t_txn_failure() {
    cat >"$T/txn2" <<EOF
value("compat/tx") = "v1"
create("compat/tx") = "$TXN_CREATE"

put compat/tx never

put compat/tx-failed yes
get compat/tx

EOF
    ctl_in "$T/txn2" "$EP3" txn -w json; need_ok "txn" || return 1
    track_rev txn || return 1
    eq "$(j '.succeeded // false')" false "succeeded" || return 1
    eq "$(j '.responses | length')" 2 "responses length" || return 1
    eq "$(j '.responses[1].Response.ResponseRange.kvs[0].value')" "$(b64 v2)" "value unchanged" || return 1
    ctl "$EP1" get compat/tx-failed -w json; need_ok get || return 1
    eq "$(j '.kvs[0].value')" "$(b64 yes)" "failure branch applied" || return 1
    # version / mod / create compares that are false each select the failure branch
    local c
    for c in 'version("compat/tx") = "1"' 'mod("compat/tx") > "'$((LASTREV + 5))'"' \
             'create("compat/tx") = "'$((TXN_CREATE + 1))'"' 'value("compat/tx") > "v3"' \
             'version("compat/tx-missing") > "0"'; do
        printf '%s\n\nput compat/tx never\n\nget compat/tx\n\n' "$c" >"$T/txn3"
        ctl_in "$T/txn3" "$EP2" txn -w json; need_ok "txn [$c]" || return 1
        eq "$(j '.succeeded // false')" false "succeeded for [$c]" || return 1
        eq "$(j '.responses[0].Response.ResponseRange.kvs[0].value')" "$(b64 v2)" "value for [$c]" || return 1
    done
    # a compare on a missing key: version = 0 is true
    printf 'version("compat/tx-missing") = "0"\ncreate("compat/tx-missing") = "0"\n\nget compat/tx\n\n\n' >"$T/txn4"
    ctl_in "$T/txn4" "$EP1" txn -w json; need_ok "txn missing-key compare" || return 1
    eq "$(j '.succeeded')" true "version(missing) = 0 is true" || return 1
    printf 'version("compat/tx") = "1"\n\n\nget compat/tx\n\n' >"$T/txn5"
    ctl_in "$T/txn5" "$EP1" txn; need_ok "txn (simple failure)" || return 1
    eq "$(cat "$OUT")" $'FAILURE\n\ncompat/tx\nv2' "simple txn failure output" || return 1
}

t_txn_limits() {
    { echo; for i in $(seq 1 129); do echo "put compat/many/$i v"; done; echo; echo; } >"$T/txn129"
    ctl_in "$T/txn129" "$EP1" txn -w json
    need_error "txn with 129 ops" InvalidArgument 'Error: etcdserver: too many operations in txn request' || return 1
    ctl "$EP2" get compat/many/ --prefix -w json; need_ok get || return 1
    eq "$(j '(.kvs // []) | length')" 0 "nothing of the rejected txn applied" || return 1
    { echo; for i in $(seq 1 128); do echo "put compat/many/$i v"; done; echo; echo; } >"$T/txn128"
    ctl_in "$T/txn128" "$EP3" txn -w json; need_ok "txn with 128 ops" || return 1
    track_rev txn || return 1
    eq "$(j '.responses | length')" 128 "128 responses" || return 1
    ctl "$EP1" get compat/many/ --prefix -w json --keys-only; need_ok get || return 1
    eq "$(j '.count')" 128 "128 keys written" || return 1
    eq "$(j '[.kvs[].mod_revision] | unique | join(",")')" "$LASTREV" "all 128 keys share one revision" || return 1
}

t_txn_duplicate() {
    printf '\nput compat/dup a\nput compat/dup b\n\n\n' >"$T/dup1"
    ctl_in "$T/dup1" "$EP2" txn -w json
    need_error "txn put+put same key" InvalidArgument 'Error: etcdserver: duplicate key given in txn request' || return 1
    printf '\nput compat/dup a\ndel compat/dup\n\n\n' >"$T/dup2"
    ctl_in "$T/dup2" "$EP2" txn -w json
    need_error "txn put+del same key" InvalidArgument 'Error: etcdserver: duplicate key given in txn request' || return 1
    ctl "$EP3" get compat/dup -w json; need_ok get || return 1
    eq "$(j '(.kvs // []) | length')" 0 "nothing applied" || return 1
    # put + get of the same key is allowed
    printf '\nput compat/dup a\nget compat/dup\n\n\n' >"$T/dup3"
    ctl_in "$T/dup3" "$EP2" txn -w json; need_ok "txn put+get same key" || return 1
    track_rev txn || return 1
    eq "$(j '.responses[1].Response.ResponseRange.kvs[0].value')" "$(b64 a)" "get sees put" || return 1
}

t_compaction() {
    local r1 r2 r3
    ctl "$EP1" put compat/c 1 -w json; need_ok put || return 1; track_rev put || return 1; r1=$LASTREV
    ctl "$EP1" put compat/c 2 -w json; need_ok put || return 1; track_rev put || return 1; r2=$LASTREV
    ctl "$EP1" put compat/c 3 -w json; need_ok put || return 1; track_rev put || return 1; r3=$LASTREV
    ctl "$EP2" compaction "$r2"; need_ok "compaction $r2" || return 1
    eq "$(cat "$OUT")" "compacted revision $r2" "compaction output" || return 1
    ctl "$EP3" get compat/c --rev "$r1" -w json
    need_error "get --rev $r1 after compaction at $r2" OutOfRange 'Error: etcdserver: mvcc: required revision has been compacted' || return 1
    ctl "$EP1" get compat/c --rev "$r2" -w json; need_ok "get --rev = compact revision" || return 1
    eq "$(j '.kvs[0].value')" "$(b64 2)" "value at compact revision" || return 1
    ctl "$EP3" get compat/c --rev $((r3 + 1000)) -w json
    need_error "get --rev future" OutOfRange 'Error: etcdserver: mvcc: required revision is a future revision' || return 1
    ctl "$EP1" compaction "$r2"
    need_error "compaction again at the same revision" OutOfRange 'Error: etcdserver: mvcc: required revision has been compacted' || return 1
    ctl "$EP1" compaction $((r3 + 1000))
    need_error "compaction at a future revision" OutOfRange 'Error: etcdserver: mvcc: required revision is a future revision' || return 1
    ctl "$EP3" compaction "$r3" --physical; need_ok "compaction --physical" || return 1
    eq "$(cat "$OUT")" "compacted revision $r3" "compaction --physical output" || return 1
    ctl "$EP2" get compat/c --rev "$r2" -w json
    need_error "get --rev $r2 after compaction at $r3" OutOfRange 'Error: etcdserver: mvcc: required revision has been compacted' || return 1
    ctl "$EP2" get compat/c -w json; need_ok "get after compaction" || return 1
    eq "$(j '.kvs[0].value')" "$(b64 3)" "latest value survives compaction" || return 1
    eq "$(j '.kvs[0].version')" 3 "version survives compaction" || return 1
    eq "$(j '.kvs[0].create_revision')" "$r1" "create_revision survives compaction" || return 1
}

t_large_value_ok() {
    # ~1 MB value (below the 1.5 MiB request limit) must round-trip byte-exact
    head -c 750000 /dev/urandom | base64 -w0 >"$T/mid"
    ctl_in "$T/mid" "$EP1" put compat/mid -w json; need_ok "put 1 MB value" || return 1
    track_rev put || return 1
    RC=0
    etcdctl --endpoints="$EP2" --command-timeout=10s get compat/mid --print-value-only >"$T/mid.out" 2>"$ERR" || RC=$?
    need_ok "get 1 MB value" || return 1
    # etcdctl prints the value followed by a newline
    printf '\n' >>"$T/mid"
    cmp -s "$T/mid" "$T/mid.out" || { WHY="1 MB value differs after round trip ($(wc -c <"$T/mid.out") bytes back)"; return 1; }
}

t_too_large() {
    # 1.8 MB: above etcd's default --max-request-bytes (1.5 MiB) but below
    # etcdctl's 2 MiB send limit, so the request reaches the server.
    head -c 1350000 /dev/urandom | base64 -w0 >"$T/big"  # exactly 1,800,000 bytes, no early-closing pipe
    ctl_in "$T/big" "$EP1" put compat/big
    need_fail_with "put 1.8 MB value" "request is too large" "larger than max" || return 1
    ctl "$EP2" get compat/big -w json; need_ok get || return 1
    eq "$(j '(.kvs // []) | length')" 0 "rejected value must not be stored" || return 1
}

t_lease() {
    ctl "$EP1" lease grant 60 -w json; need_ok "lease grant" || return 1
    local id hex
    id=$(j '.ID | tostring')
    [[ "$id" =~ ^[1-9][0-9]*$ ]] || { WHY="lease grant: bad ID '$id'"; return 1; }
    eq "$(j '.TTL')" 60 "granted TTL" || return 1
    eq "$(j '.Error')" "" "Error field" || return 1
    hex=$(python3 -c "print(format($id, 'x'))")
    ctl "$EP2" put compat/leased lv --lease="$hex" -w json; need_ok "put --lease" || return 1
    track_rev put || return 1
    ctl "$EP3" get compat/leased -w json; need_ok get || return 1
    eq "$(j '.kvs[0].lease | tostring')" "$id" "kvs[0].lease" || return 1
    ctl "$EP3" lease timetolive "$hex" --keys -w json; need_ok "lease timetolive" || return 1
    eq "$(j '.id | tostring')" "$id" "timetolive id" || return 1
    eq "$(j '."granted-ttl"')" 60 "granted-ttl" || return 1
    eq "$(j '.ttl > 0 and .ttl <= 60')" true "ttl in (0,60]" || return 1
    eq "$(j '[.keys[] | @base64d] | join(",")')" compat/leased "attached keys" || return 1
    ctl "$EP1" lease list -w json; need_ok "lease list" || return 1
    eq "$(j --arg id "$id" '[.leases[].id | tostring] | index($id) != null')" true "lease in list" || return 1
    ctl "$EP1" lease keep-alive --once "$hex"; need_ok "lease keep-alive --once" || return 1
    grep -qiE "lease 0*$hex keepalived with TTL\(60\)" "$OUT" || { WHY="keep-alive output: $(head -c 200 "$OUT")"; return 1; }
    ctl "$EP2" lease revoke "$hex" -w json; need_ok "lease revoke" || return 1
    track_rev "lease revoke" || return 1
    ctl "$EP3" get compat/leased -w json; need_ok get || return 1
    eq "$(j '(.kvs // []) | length')" 0 "key deleted with its lease" || return 1
    ctl "$EP1" lease revoke "$hex"
    need_error "revoke revoked lease" NotFound 'Error: failed to revoke lease (etcdserver: requested lease not found)' || return 1
    ctl "$EP1" put compat/leased2 v --lease=1234abcd
    need_error "put with unknown lease" NotFound 'Error: etcdserver: requested lease not found' || return 1
}

t_watch() {
    local r
    ctl "$EP1" put compat/w a -w json; need_ok put || return 1; track_rev put || return 1; r=$LASTREV
    ctl "$EP2" put compat/w b -w json; need_ok put || return 1; track_rev put || return 1
    ctl "$EP3" del compat/w -w json; need_ok del || return 1; track_rev del || return 1
    # historical watch from revision r; etcdctl watch never exits by itself
    RC=0
    timeout 4 etcdctl --endpoints="$EP2" watch compat/w --rev "$r" --prev-kv -w json >"$OUT" 2>"$ERR" || RC=$?
    [[ $RC -eq 124 ]] || { WHY="watch exited $RC before the timeout: $(errline)"; return 1; }
    # events may arrive in one or several responses
    eq "$(j -s '[.[].Events[]] | length')" 3 "event count" || return 1
    eq "$(j -s '[.[].Events[] | (.type // 0)] | join(",")')" "0,0,1" "event types (PUT=0 omitted, DELETE=1)" || return 1
    eq "$(j -s '[.[].Events[] | .kv.mod_revision] | join(",")')" "$r,$((r + 1)),$((r + 2))" "event revisions" || return 1
    eq "$(j -s '[.[].Events[]][0:2] | map(.kv.value | @base64d) | join(",")')" "a,b" "event values" || return 1
    eq "$(j -s '[.[].Events[] | .prev_kv.value // "" | @base64d] | join(",")')" ",a,b" "prev_kv values" || return 1
    eq "$(j -s '[.[].Canceled] | any')" false "not canceled" || return 1
    # watching a compacted revision is canceled by the server
    RC=0
    timeout 4 etcdctl --endpoints="$EP3" watch compat/c --rev 1 -w json >"$OUT" 2>"$ERR" || RC=$?
    [[ $RC -ne 0 && $RC -ne 124 ]] || { WHY="watch on compacted revision: exit $RC, want an error exit"; return 1; }
    eq "$(j -s '[.[] | select(.Canceled == true)] | length')" 1 "canceled response" || return 1
    eq "$(j -s '[.[].CompactRevision] | max > 0')" true "CompactRevision set" || return 1
    grep -qF 'required revision has been compacted' "$OUT" "$ERR" || { WHY="no 'required revision has been compacted' in watch output"; return 1; }
    # live prefix watch on one member while another member takes the writes
    RC=0
    ( sleep 1.5
      etcdctl --endpoints="$EP1" put compat/wp/a 1 >/dev/null
      etcdctl --endpoints="$EP2" put compat/wpx 2 >/dev/null
      etcdctl --endpoints="$EP1" del compat/wp/a >/dev/null ) &
    local writer=$!
    timeout 5 etcdctl --endpoints="$EP3" watch compat/wp/ --prefix --prev-kv -w json >"$OUT" 2>"$ERR" || RC=$?
    wait "$writer"
    [[ $RC -eq 124 ]] || { WHY="prefix watch exited $RC before the timeout: $(errline)"; return 1; }
    eq "$(j -s '[.[].Events[] | .kv.key | @base64d] | join(",")')" "compat/wp/a,compat/wp/a" "prefix watch keys" || return 1
    eq "$(j -s '[.[].Events[] | (.type // 0)] | join(",")')" "0,1" "prefix watch types" || return 1
    eq "$(j -s '[.[].Events[]][1].prev_kv.value | @base64d')" "1" "prev_kv of the delete" || return 1
}

LEADER_IDX=0
t_failover() {
    status_settled "$ALL"; need_ok "endpoint status" || return 1
    local leader ep i
    leader=$(j '.[0].Status.leader | tostring')
    ep=$(j --arg l "$leader" '.[] | select((.Status.header.member_id|tostring) == $l) | .Endpoint')
    LEADER_IDX=0
    for i in 1 2 3; do [[ "${EPN[$i]}" == "$ep" ]] && LEADER_IDX=$i; done
    [[ $LEADER_IDX != 0 ]] || { WHY="cannot map leader $leader to a node (endpoint '$ep')"; return 1; }
    echo "  leader is n$LEADER_IDX ($ep); kill -9"
    stop_node_hard "$LEADER_IDX"
    local others=() o
    for i in 1 2 3; do [[ $i != "$LEADER_IDX" ]] && others+=("$i"); done
    local start=$SECONDS ok=0
    while (( SECONDS - start < 10 )); do
        for o in "${others[@]}"; do
            ctl "${EPN[$o]}" --command-timeout=2s put compat/after-failover survived -w json
            if [[ $RC -eq 0 ]]; then ok=1; break 2; fi
        done
        sleep 0.5
    done
    [[ $ok == 1 ]] || { WHY="no put succeeded on the surviving members within 10 s: $(errline)"; return 1; }
    echo "  put accepted $((SECONDS - start)) s after the kill"
    track_rev "put after failover" || return 1
    status_settled "${EPN[${others[0]}]},${EPN[${others[1]}]}"; need_ok "endpoint status (survivors)" || return 1
    eq "$(j '[.[].Status.leader] | unique | length')" 1 "survivors agree on the leader" || return 1
    local newleader
    newleader=$(j '.[0].Status.leader | tostring')
    [[ "$newleader" != "$leader" && "$newleader" != 0 ]] || { WHY="new leader '$newleader' (old '$leader')"; return 1; }
    ctl "${EPN[${others[1]}]}" get compat/after-failover -w json; need_ok get || return 1
    eq "$(j '.kvs[0].value')" "$(b64 survived)" "value on other survivor" || return 1
}

t_restart() {
    [[ $LEADER_IDX != 0 ]] || { WHY="failover step did not run"; return 1; }
    local i=$LEADER_IDX
    start_node "$i"
    local start=$SECONDS seen=0
    while (( SECONDS - start < 20 )); do
        if ! kill -0 "${PID[$i]}" 2>/dev/null; then WHY="restarted n$i exited"; return 1; fi
        ctl "${EPN[$i]}" --command-timeout=2s get compat/after-failover --consistency=s -w json
        if [[ $RC -eq 0 && "$(j '.kvs[0].value // ""')" == "$(b64 survived)" ]]; then seen=1; break; fi
        sleep 0.5
    done
    [[ $seen == 1 ]] || { WHY="restarted n$i did not serve the new key within 20 s (rc $RC: $(errline) $(head -c 200 "$OUT"))"; return 1; }
    echo "  restarted n$i caught up in $((SECONDS - start)) s"
    gt "$(j '.header.revision')" $((LASTREV - 1)) "restarted member's revision" || return 1
    # linearizable read and a write through the restarted member
    ctl "${EPN[$i]}" get compat/k1 -w json; need_ok "linearizable get on restarted member" || return 1
    eq "$(j '.kvs[0].value')" "$(b64 fifth)" "old data on restarted member" || return 1
    ctl "${EPN[$i]}" put compat/after-restart yes -w json; need_ok "put via restarted member" || return 1
    track_rev put || return 1
    start=$SECONDS
    local healthy=0
    while (( SECONDS - start < 10 )); do
        ctl "$ALL" endpoint health -w json
        if [[ $RC -eq 0 && "$(j '[.[] | select(.health == true)] | length')" == 3 ]]; then healthy=1; break; fi
        sleep 0.5
    done
    [[ $healthy == 1 ]] || { WHY="cluster not healthy after restart: $(errline)"; return 1; }
    status_settled "$ALL" samerev; need_ok "endpoint status" || return 1
    eq "$(j '[.[].Status.leader] | unique | length')" 1 "all members agree on the leader" || return 1
    eq "$(j '[.[].Status.header.revision] | unique | join(",")')" "$LASTREV" "same revision on all members" || return 1
}

# Every member reports the same HashKV at the same revision.
t_endpoint_hashkv() {
    local rev start=$SECONDS
    ctl "$EP1" get compat/k1 -w json; need_ok get || return 1
    rev=$(j '.header.revision')
    while :; do
        ctl "$ALL" endpoint hashkv --rev="$rev" -w json
        [[ $RC -ne 0 ]] && (( SECONDS - start < 10 )) || break
        sleep 0.5
    done
    need_ok "endpoint hashkv" || return 1
    eq "$(j 'length')" 3 "answers" || return 1
    eq "$(j '[.[].HashKV.hash] | unique | length')" 1 "same hash on every member" || return 1
}

# No alarm on a healthy cluster; disarming none is fine.
t_alarm() {
    ctl "$ALL" alarm list; need_ok "alarm list" || return 1
    [[ ! -s "$OUT" ]] || { WHY="alarms on a healthy cluster: $(head -c 200 "$OUT")"; return 1; }
    ctl "$ALL" alarm disarm; need_ok "alarm disarm" || return 1
}

# Every member defragments (etcdctl prints one line per endpoint), also through --cluster; the
# data is still there and the members still agree.
t_defrag() {
    ctl "$ALL" defrag; need_ok defrag || return 1
    eq "$(grep -c '^Finished defragmenting etcd member\[' "$OUT")" 3 "members defragmented" || return 1
    # --cluster dials the members' client URLs from the member list (etcdctl 3.4 sends them as
    # the HTTP/2 authority, scheme included).
    ctl "$EP1" defrag --cluster; need_ok "defrag --cluster" || return 1
    eq "$(grep -c '^Finished defragmenting etcd member\[' "$OUT")" 3 "members defragmented with --cluster" || return 1
    ctl "$EP1" endpoint status --cluster -w json; need_ok "endpoint status --cluster" || return 1
    eq "$(j 'length')" 3 "statuses with --cluster" || return 1
    ctl "$ALL" get compat/k1 -w json; need_ok "get after defrag" || return 1
    eq "$(j '.kvs | length')" 1 "compat/k1 still there" || return 1
    t_endpoint_hashkv
}

# etcdctl lock: runs a command under the lock with ETCD_LOCK_KEY set; a second locker waits
# until the first lets go (SIGINT: etcdctl unlocks and closes its session).
t_lock() {
    ctl "$EP1" lock compat/lock -- sh -c 'echo "key=$ETCD_LOCK_KEY"'; need_ok "lock with a command" || return 1
    grep -q '^key=compat/lock/[0-9a-f]*$' "$OUT" || { WHY="lock command output: $(head -c 200 "$OUT")"; return 1; }
    etcdctl --endpoints="$EP1" lock compat/lock2 >"$T/holder.out" 2>&1 &
    local holder=$! waiter start=$SECONDS
    while ! grep -q '^compat/lock2/' "$T/holder.out" && (( SECONDS - start < 10 )); do sleep 0.2; done
    grep -q '^compat/lock2/' "$T/holder.out" || { WHY="first locker never printed its key: $(head -c 200 "$T/holder.out")"; kill "$holder"; return 1; }
    etcdctl --endpoints="$EP2" lock compat/lock2 echo second >"$T/waiter.out" 2>&1 &
    waiter=$!
    sleep 1
    if [[ -s "$T/waiter.out" ]]; then WHY="second locker ran while the lock was held: $(head -c 200 "$T/waiter.out")"; kill "$holder" "$waiter"; return 1; fi
    kill -INT "$holder"; wait "$holder" || true
    start=$SECONDS
    while kill -0 "$waiter" 2>/dev/null && (( SECONDS - start < 10 )); do sleep 0.2; done
    if kill -0 "$waiter" 2>/dev/null; then WHY="second locker still waiting 10 s after the first let go"; kill "$waiter"; return 1; fi
    wait "$waiter" || { WHY="second locker failed: $(head -c 200 "$T/waiter.out")"; return 1; }
    grep -qx second "$T/waiter.out" || { WHY="second locker output: $(head -c 200 "$T/waiter.out")"; return 1; }
}

# etcdctl elect: a candidate leads until interrupted, the next one takes over, and an observer
# (elect -l) prints both leaders' values.
t_elect() {
    etcdctl --endpoints="$EP1" elect compat/elect p1 >"$T/lead1.out" 2>&1 &
    local first=$! second listener start=$SECONDS
    while ! grep -qx p1 "$T/lead1.out" && (( SECONDS - start < 10 )); do sleep 0.2; done
    grep -qx p1 "$T/lead1.out" || { WHY="first candidate never led: $(head -c 200 "$T/lead1.out")"; kill "$first"; return 1; }
    etcdctl --endpoints="$EP3" elect -l compat/elect >"$T/listen.out" 2>&1 &
    listener=$!
    etcdctl --endpoints="$EP2" elect compat/elect p2 >"$T/lead2.out" 2>&1 &
    second=$!
    sleep 1
    if [[ -s "$T/lead2.out" ]]; then WHY="second candidate led at once: $(head -c 200 "$T/lead2.out")"; kill "$first" "$second" "$listener"; return 1; fi
    kill -INT "$first"; wait "$first" || true
    start=$SECONDS
    while ! grep -qx p2 "$T/lead2.out" && (( SECONDS - start < 10 )); do sleep 0.2; done
    # The observer learns of the new leader on its own (a watch event, then a linearizable get):
    # wait for it rather than for a fixed time.
    while ! grep -qx p2 "$T/listen.out" && (( SECONDS - start < 10 )); do sleep 0.2; done
    kill -INT "$second" "$listener" 2>/dev/null; wait "$second" "$listener" 2>/dev/null || true
    grep -qx p2 "$T/lead2.out" || { WHY="second candidate never led: $(head -c 200 "$T/lead2.out")"; return 1; }
    grep -qx p1 "$T/listen.out" && grep -qx p2 "$T/listen.out" || { WHY="observer output: $(head -c 300 "$T/listen.out")"; return 1; }
}

# etcdctl takes a backup (it checks only the file's shape).
t_snapshot_save() {
    ctl "$EP1" snapshot save "$T/backup.db"; need_ok "snapshot save" || return 1
    [[ -s "$T/backup.db" ]] || { WHY="no backup file"; return 1; }
}

# A fourth member joins as a learner, catches up, is promoted, then removed.
t_member_add_promote_remove() {
    local peer="http://127.0.0.1:${PPORT[4]}"
    # etcd refuses changes ("unhealthy cluster") until every member has been connected for a
    # few seconds, as after the restart just before: retry that.
    local start=$SECONDS
    while :; do
        ctl "$ALL" member add n4 --peer-urls="$peer" --learner
        [[ $RC -ne 0 ]] && grep -qF "unhealthy cluster" "$ERR" && (( SECONDS - start < 15 )) || break
        sleep 1
    done
    need_ok "member add --learner" || return 1
    local id initial
    # etcdctl prints the id with %16x: an id below 2^60 is padded with spaces.
    id=$(sed -n 's/^Member  *\([0-9a-f]*\) added to cluster .*/\1/p' "$OUT")
    [[ -n "$id" ]] || { WHY="no 'Member ID added to cluster' line: $(head -c 300 "$OUT")"; return 1; }
    grep -qx 'ETCD_INITIAL_CLUSTER_STATE="existing"' "$OUT" || { WHY="no ETCD_INITIAL_CLUSTER_STATE line"; return 1; }
    initial=$(sed -n 's/^ETCD_INITIAL_CLUSTER="\(.*\)"$/\1/p' "$OUT")
    [[ "$initial" == *"n4=$peer"* ]] || { WHY="ETCD_INITIAL_CLUSTER lacks n4: '$initial'"; return 1; }
    ctl "$ALL" member list -w json; need_ok "member list" || return 1
    eq "$(j '.members | length')" 4 "members after add" || return 1
    eq "$(j --arg p "$peer" '.members[] | select(.peerURLs[0] == $p) | .isLearner')" true "new member is a learner" || return 1
    ctl "$ALL" member promote "$id"
    need_fail_with "promote before it started" "can only promote a learner member which is in sync with leader" || return 1

    start_joiner 4 "$initial"
    local caught=0
    start=$SECONDS
    while (( SECONDS - start < 30 )); do
        if ! kill -0 "${PID[4]}" 2>/dev/null; then WHY="joining n4 exited"; return 1; fi
        ctl "$EP4" --command-timeout=2s get compat/after-restart --consistency=s -w json
        if [[ $RC -eq 0 && "$(j '.kvs[0].value // ""')" == "$(b64 yes)" ]]; then caught=1; break; fi
        sleep 0.5
    done
    [[ $caught == 1 ]] || { WHY="n4 did not catch up within 30 s (rc $RC: $(errline))"; return 1; }
    echo "  learner n4 caught up in $((SECONDS - start)) s"
    ctl "$EP4" get compat/after-restart
    need_fail_with "linearizable get on a learner" "rpc not supported for learner" || return 1

    start=$SECONDS
    local promoted=0
    while (( SECONDS - start < 20 )); do
        ctl "$ALL" member promote "$id"
        if [[ $RC -eq 0 ]]; then promoted=1; break; fi
        sleep 0.5
    done
    [[ $promoted == 1 ]] || { WHY="promote never succeeded: $(errline)"; return 1; }
    grep -q "promoted in cluster" "$OUT" || { WHY="promote output: $(head -c 200 "$OUT")"; return 1; }
    ctl "$ALL,$EP4" member list -w json; need_ok "member list" || return 1
    eq "$(j '[.members[] | select(.isLearner == true)] | length')" 0 "no learner after promote" || return 1
    ctl "$EP4" put compat/via-n4 yes -w json; need_ok "put through the promoted member" || return 1
    track_rev put || return 1

    ctl "$ALL" member remove "$id"; need_ok "member remove" || return 1
    grep -q "removed from cluster" "$OUT" || { WHY="remove output: $(head -c 200 "$OUT")"; return 1; }
    start=$SECONDS
    while (( SECONDS - start < 15 )) && kill -0 "${PID[4]}" 2>/dev/null; do sleep 0.2; done
    if kill -0 "${PID[4]}" 2>/dev/null; then WHY="removed n4 still running after 15 s"; return 1; fi
    wait "${PID[4]}" 2>/dev/null || true
    PID[4]=""
    ctl "$ALL" member list -w json; need_ok "member list" || return 1
    eq "$(j '.members | length')" 3 "members after remove" || return 1
    ctl "$ALL" get compat/via-n4 -w json; need_ok get || return 1
    eq "$(j '.kvs[0].value')" "$(b64 yes)" "write through the removed member survives" || return 1
}

# ------------------------------------------------------------------ run ----

step endpoint-health        t_endpoint_health
step member-list            t_member_list
step endpoint-status        t_endpoint_status
step put-get                t_put_get
step put-overwrite-version  t_overwrite
step put-prev-kv            t_put_prev_kv
step put-simple-output      t_put_simple
step put-empty-key          t_put_empty_key
step get-missing-key        t_get_missing
step prefix-setup           t_prefix_setup
step get-prefix             t_get_prefix
step get-range-end          t_get_range
step get-limit              t_get_limit
step get-rev                t_get_rev
step get-sort               t_get_sort
step get-keys-only          t_get_keys_only
if etcdctl get --help 2>&1 | grep -q -- '--count-only'; then
    step get-count-only     t_get_count_only
else
    skip get-count-only "this etcdctl ($(etcdctl version 2>/dev/null | sed -n 1p)) has no --count-only (added in 3.5)"
fi
step get-from-key           t_get_from_key
step del-single             t_del_single
step del-prefix             t_del_prefix
step del-prev-kv            t_del_prev_kv
step txn-success            t_txn_success
step txn-failure            t_txn_failure
step txn-too-many-ops       t_txn_limits
step txn-duplicate-key      t_txn_duplicate
step compaction             t_compaction
step large-value-roundtrip  t_large_value_ok
step request-too-large      t_too_large
step lease                  t_lease
step watch                  t_watch
step leader-failover        t_failover
step member-restart         t_restart
step endpoint-hashkv        t_endpoint_hashkv
step defrag                 t_defrag
step snapshot-save          t_snapshot_save
step alarm                  t_alarm
step lock                   t_lock
step elect                  t_elect
step member-add-promote-remove t_member_add_promote_remove

if [[ $FAILED -gt 0 ]]; then
    print_log_tails
    echo "failed steps: ${FAILED_NAMES[*]}"
fi
SUMMARY_DONE=1
if [[ $SKIPPED -gt 0 ]]; then
    echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
else
    echo "$PASSED passed, $FAILED failed"
fi
[[ $FAILED -eq 0 ]]
