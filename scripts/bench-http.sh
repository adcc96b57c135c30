#!/usr/bin/env bash
# The cost of L7 (HTTP) policy: small GETs from one container to another on
# one bridge, under three configurations that alternate within each run:
#   none   no bpfwall;
#   l3l4   bpfwall, the server's policy allows the client on 80/tcp;
#   l7     bpfwall, the same with an http rule (GET /.*): every connection
#          goes through the daemon's proxy, every request is decided.
# Tests (bpfwall-loadgen, inside the containers): http (GETs on one
# kept-alive connection: requests/s, p50, p99), http-new (one GET per new
# connection: requests/s, p50, p99) and http-bulk (16 MiB answers on one
# kept-alive connection: MB/s, p50 and p99 of one answer). Each configuration is checked before it
# is measured: the client gets through, a stranger does not (but with none).
# Then the daemon's memory with CONTAINERS containers whose port is
# http-policed (each gets its proxy socket, its netns link, its accept loop),
# against the same containers under an L3/L4 policy.
#
#   RUNS=5 SECS=2 CONTAINERS=100 [BENCH_NAME=bpfwall-bench-l7] scripts/bench-http.sh
# Prints a markdown report; raw runs go to $BENCH_OUT/http.csv (per_second
# is MB/s for http-bulk). Removes what
# it created (containers, network, pins) on exit, also on failure.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-5}
SECS=${SECS:-2}
CONTAINERS=${CONTAINERS:-100}
# Client and server share one core, as in bench-datapath.sh; the daemon
# (and so the proxy) runs where the kernel puts it.
CPUS=${CPUS:-$(($(nproc) - 1))}
CONFIGS=(none l3l4 l7)
TESTS=(http http-new http-bulk)
out=${BENCH_OUT:-$top/target/bench}
mkdir -p "$out"
csv=$out/http.csv
bin=$top/target/release/bpfwall
loadgen=$top/target/x86_64-unknown-linux-gnu/release/bpfwall-loadgen
image=${BPFWALL_TEST_IMAGE:-bpfwall-test:latest}
# BENCH_NAME: the containers', network's, pins' and socket's name, for
# a run beside another one on the same host.
pfx=${BENCH_NAME:-bpfwall-bench-l7}
net=$pfx
pins=/sys/fs/bpf/bpfwall_v1_${pfx//-/_}
sock=/run/$pfx.sock
port=80
log() { printf 'bench-http: %s\n' "$*" >&2; }

work=
daemon=
stop_bpfwall() {
    if [ -n "$daemon" ]; then
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
        daemon=
    fi
    "$bin" teardown --bpffs-root "$pins" >/dev/null 2>&1 || true
}
cleanup() {
    stop_bpfwall
    docker rm -f $(docker ps -aq --filter "label=$pfx=1") >/dev/null 2>&1 || true
    docker network rm "$net" >/dev/null 2>&1 || true
    [ -z "$work" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }
[ -x "$bin" ] && [ -x "$loadgen" ] || { log "build first: scripts/bench builds bpfwall and bpfwall-loadgen"; exit 1; }
cleanup
work=$(mktemp -d)
mkdir -p "$work/policy" "$work/state"

docker network create "$net" >/dev/null
run() { # name id-label command...
    local name=$1 id=$2
    shift 2
    docker run -d --name "$name" --network "$net" --label "$pfx=1" --label "id=$id" \
        --cpuset-cpus "$CPUS" -v "$loadgen:/loadgen:ro" "$image" "$@" >/dev/null
}
run "$pfx-server" server /loadgen server --port "$port"
run "$pfx-client" client sleep 1000000
run "$pfx-stranger" stranger sleep 1000000
sip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$pfx-server")

policy() { # l3l4|l7 -> the server's policy file
    local rules=
    [ "$1" = l7 ] && rules='
        rules:
          http:
            - method: GET
              path: "/.*"'
    cat >"$work/policy/bench.yaml" <<EOF
endpointSelector: {matchLabels: {id: server}}
ingress:
  - fromEndpoints: [{matchLabels: {id: client}}]
    toPorts:
      - ports: [{port: "$port", protocol: TCP}]$rules
EOF
}
status() { "$bin" status --json --socket "$sock" 2>/dev/null; }
start_daemon() {
    "$bin" daemon --bpffs-root "$pins" --socket "$sock" --policy-dir "$work/policy" \
        --state-dir "$work/state" --manage-label "$pfx=1" 2>"$work/daemon.log" &
    daemon=$!
}
probe() { # container -> 0 when a GET gets through
    docker exec "$pfx-$1" /loadgen client --to "$sip:$port" --test http --seconds 0.05 >/dev/null 2>&1
}
start_config() {
    case $1 in
    none) stop_bpfwall ;;
    l3l4 | l7)
        policy "$1"
        [ -n "$daemon" ] || start_daemon
        local ok=
        for _ in $(seq 100); do
            if [ "$1" = l7 ]; then
                status | grep -q '"ready": true' && ok=1
            else
                status | grep -q '"policy_entries": 1,' && ! status | grep -q '"ready": true' && ok=1
            fi
            [ -z "$ok" ] || break
            sleep 0.1
        done
        [ -n "$ok" ] || { log "the $1 policy is not in force"; cat "$work/daemon.log" >&2; exit 1; }
        ;;
    esac
    local tries
    for tries in $(seq 30); do
        if probe client && { [ "$1" = none ] && probe stranger || { [ "$1" != none ] && ! probe stranger; }; }; then
            return 0
        fi
        sleep 0.2
    done
    log "configuration $1 is not in force: client or stranger probe gave the wrong answer"
    exit 1
}
measure() { # config run test
    local line ps p50 p99
    line=$(docker exec "$pfx-client" /loadgen client --to "$sip:$port" --test "$3" --seconds "$SECS")
    if [ "$3" = http-bulk ]; then
        ps=$(sed -n 's/.*mbyte_per_second=\([0-9.]*\).*/\1/p' <<<"$line")
    else
        ps=$(sed -n 's/.* per_second=\([0-9.]*\).*/\1/p' <<<"$line")
    fi
    p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<<"$line")
    echo "$1,$2,$3,$ps,$p50,$p99" >>"$csv"
}

echo "config,run,test,per_second,p50_us,p99_us" >"$csv"
for run in $(seq "$RUNS"); do
    for c in "${CONFIGS[@]}"; do
        log "run $run/$RUNS: $c"
        start_config "$c"
        for t in "${TESTS[@]}"; do measure "$c" "$run" "$t"; done
    done
done
stop_bpfwall

echo "### HTTP through the proxy ($RUNS runs of ${SECS} s, alternating; median (min-max))"
echo
awk -F, '
NR == 1 { next }
{ k = $1 SUBSEP $3; ps[k] = ps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6 }
function med(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    lo = a[1]; hi = a[n]
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
END {
    split("none l3l4 l7", cs, " "); split("http http-new http-bulk", ts, " ")
    split("requests/s requests/s MB/s", unit, " ")
    printf "| test | config | rate | p50 µs | p99 µs |\n|---|---|---|---|---|\n"
    for (ti = 1; ti <= 3; ti++) for (ci = 1; ci <= 3; ci++) {
        k = cs[ci] SUBSEP ts[ti]
        m = med(ps[k]); l = lo; h = hi; m50 = med(p50[k]); m99 = med(p99[k])
        rate[k] = m; lat[k] = m50
        printf "| %s | %s | %.0f (%.0f-%.0f) %s | %.1f | %.1f |\n", ts[ti], cs[ci], m, l, h, unit[ti], m50, m99
    }
    printf "\n| test | l7 / l3l4 rate | l7 / none rate | l3l4 / none rate | l7 − l3l4 p50 µs | l7 − none p50 µs |\n|---|---|---|---|---|---|\n"
    for (ti = 1; ti <= 3; ti++) {
        a = rate["l7" SUBSEP ts[ti]]; b = rate["l3l4" SUBSEP ts[ti]]; n = rate["none" SUBSEP ts[ti]]
        printf "| %s | %.2f | %.2f | %.2f | %+.1f | %+.1f |\n", ts[ti], (b ? a / b : 0), (n ? a / n : 0), (n ? b / n : 0), lat["l7" SUBSEP ts[ti]] - lat["l3l4" SUBSEP ts[ti]], lat["l7" SUBSEP ts[ti]] - lat["none" SUBSEP ts[ti]]
    }
}' "$csv"

# A SIGKILLed daemon: how long after its start do new connections to an
# http-policed port get through again (its load, Docker's list, the
# proxy's socket)? The client retries every 5 ms from inside its container.
policy l7
start_daemon
for _ in $(seq 100); do status | grep -q '"ready": true' && break; sleep 0.1; done
restart_ms=()
for run in $(seq "$RUNS"); do
    kill -9 "$daemon"
    wait "$daemon" 2>/dev/null || true
    daemon=
    probe client && { log "served while the daemon is down"; exit 1; }
    docker exec "$pfx-client" /loadgen client --to "$sip:$port" --test wait-http --seconds 20 >"$work/wait" &
    waiter=$!
    sleep 0.2
    t0=$(date +%s%N)
    start_daemon
    wait "$waiter"
    t1=$(sed -n 's/.*ok_unix_ns=\([0-9]*\).*/\1/p' "$work/wait")
    restart_ms+=($(((t1 - t0) / 1000000)))
done
stop_bpfwall
echo
echo "### A SIGKILLed daemon: new connections served again after its start"
echo
echo "$(printf '%s\n' "${restart_ms[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "median %d ms (%d-%d) over %d restarts", a[int((NR + 1) / 2)], a[1], a[NR], NR }') (the client retries every 5 ms with a 50 ms connect timeout; until the new proxy socket is registered, the sk_lookup program finds no proxy socket and the connection is refused)"

# Memory: CONTAINERS containers whose port 8080 is http-policed, then the
# same containers under an L3/L4 policy.
log "memory: starting $CONTAINERS containers"
for i in $(seq "$CONTAINERS"); do
    docker run -d --name "$pfx-m$i" --network "$net" --label "$pfx=1" --label "id=m" "$image" sleep 1000000 >/dev/null
done
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$daemon/status"; }
memory_policy() { # l3l4|l7
    local rules=
    [ "$1" = l7 ] && rules=', rules: {http: [{method: GET}]}'
    cat >"$work/policy/bench.yaml" <<EOF
endpointSelector: {matchLabels: {id: m}}
ingress:
  - fromEndpoints: [{matchLabels: {id: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]$rules}]
EOF
}
memory_policy l3l4
start_daemon
for _ in $(seq 300); do
    [ "$(status | grep -c '"attached": true')" -ge "$CONTAINERS" ] && break
    sleep 0.2
done
sleep 2
rss_l3l4=$(rss)
memory_policy l7
for _ in $(seq 300); do
    [ "$(status | grep -c '"ready": true')" -ge "$CONTAINERS" ] && break
    sleep 0.2
done
ready=$(status | grep -c '"ready": true')
sleep 2
rss_l7=$(rss)
echo
echo "### The daemon's memory (VmRSS)"
echo
echo "| containers | L3/L4 policy | the same port http-policed ($ready proxies serving) |"
echo "|---|---|---|"
echo "| $CONTAINERS (+3) | $((rss_l3l4 / 1024)) MiB | $((rss_l7 / 1024)) MiB |"
echo
echo "raw runs: $csv"
