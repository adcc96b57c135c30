#!/usr/bin/env bash
# A flood of denied TCP SYNs from one container against a policed server,
# and what it costs the daemon: its CPU (utime + stime over the flood, in
# cores), whether `bpfwall monitor` stays responsive (the time from an
# allowed connection made during the flood to its record on the monitor),
# how long `bpfwall status` takes meanwhile, the events sent and lost, and
# whether the exact drop counter saw every SYN. Two configurations,
# alternating: the default rate limit (one event per key and second) and
# none (--flow-event-interval-ms 0: every decision an event).
#
#   RATE=100000 SECS=10 RUNS=3 scripts/bench-flood.sh
# Prints a markdown report; raw runs go to $BENCH_OUT/flood.csv. Removes
# what it created (containers, network, pins) on exit, also on failure.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-100000}
SECS=${SECS:-10}
RUNS=${RUNS:-3}
out=${BENCH_OUT:-$top/target/bench}
mkdir -p "$out"
csv=$out/flood.csv
bin=$top/target/release/bpfwall
loadgen=$top/target/x86_64-unknown-linux-gnu/release/bpfwall-loadgen
image=bpfwall-test:latest
net=bpfwall-bench-flood
pfx=bpfwall-bench-flood
pins=/sys/fs/bpf/bpfwall_v1_benchflood
sock=/run/bpfwall-benchflood.sock
port=5201
log() { printf 'bench-flood: %s\n' "$*" >&2; }

work=
daemon=
monitor=
stop_bpfwall() {
    [ -z "$monitor" ] || { kill "$monitor" 2>/dev/null || true; wait "$monitor" 2>/dev/null || true; monitor=; }
    if [ -n "$daemon" ]; then
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
        daemon=
    fi
    "$bin" teardown --bpffs-root "$pins" >/dev/null 2>&1 || true
}
cleanup() {
    stop_bpfwall
    docker rm -f "$pfx-server" "$pfx-client" "$pfx-flooder" >/dev/null 2>&1 || true
    docker network rm "$net" >/dev/null 2>&1 || true
    [ -z "$work" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }
[ -x "$bin" ] && [ -x "$loadgen" ] || { log "build first: scripts/bench builds bpfwall and bpfwall-loadgen"; exit 1; }
cleanup
work=$(mktemp -d)
mkdir -p "$work/policy"

docker network create "$net" >/dev/null
run() { # name id-label command...
    local name=$1 id=$2
    shift 2
    docker run -d --name "$name" --network "$net" --label "$pfx=1" --label "id=$id" \
        -v "$loadgen:/loadgen:ro" "$image" "$@" >/dev/null
}
run "$pfx-server" server /loadgen server --port "$port"
run "$pfx-client" client sleep 1000000
run "$pfx-flooder" flooder sleep 1000000
sip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$pfx-server")
cat >"$work/policy/server.yaml" <<POLICY
endpointSelector: {matchLabels: {id: server}}
ingress:
- fromEndpoints: [{matchLabels: {id: client}}]
  toPorts: [{ports: [{port: "$port", protocol: TCP}]}]
POLICY

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
drops() { "$bin" status --json --socket "$sock" | sed -n 's/.*"policy-default-deny": *\([0-9]*\).*/\1/p' | head -1; }
now_ms() { date +%s%3N; }

echo "config,run,syns_sent,syns_per_second,daemon_cores,monitor_latency_ms,status_ms,events_sent,events_lost,drops_counted" >"$csv"
for r in $(seq "$RUNS"); do
    for config in limited every; do
        interval=1000
        [ "$config" = limited ] || interval=0
        log "run $r/$RUNS: $config"
        "$bin" daemon --bpffs-root "$pins" --socket "$sock" --policy-dir "$work/policy" \
            --state-dir "$work/state" --manage-label "$pfx=1" --flow-event-interval-ms "$interval" \
            --metrics-addr 127.0.0.1:9963 2>"$work/daemon.log" &
        daemon=$!
        for _ in $(seq 100); do
            "$bin" status --json --socket "$sock" 2>/dev/null | grep -q '"policy_entries": *[1-9]' && break
            sleep 0.1
        done
        docker exec "$pfx-client" /loadgen client --to "$sip:$port" --test probe --timeout-ms 2000 >/dev/null
        "$bin" monitor --json --socket "$sock" --container "$pfx-client" --verdict allowed >"$work/monitor.json" &
        monitor=$!
        sleep 0.5
        metric() { # a counter from the daemon's /metrics (bash's /dev/tcp: no curl needed)
            local v
            exec 3<>/dev/tcp/127.0.0.1/9963
            printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
            v=$(awk -v m="$1" '$1 == m { print $2 }' <&3)
            exec 3<&-
            echo "${v:-0}"
        }
        sent0=$(metric bpfwall_flow_events_sent_total)
        lost0=$(metric bpfwall_flow_events_lost_total)
        drops0=$(drops)
        t0=$(ticks "$daemon")
        start=$(date +%s.%N)
        docker exec "$pfx-flooder" /loadgen synflood --to "$sip:$port" --rate "$RATE" --seconds "$SECS" >"$work/flood.txt" &
        flood=$!
        sleep "$(awk -v s="$SECS" 'BEGIN { print s / 2 }')"
        # During the flood: an allowed connection, and how long until the
        # monitor shows it; and how long status takes.
        lines0=$(wc -l <"$work/monitor.json")
        c0=$(now_ms)
        docker exec "$pfx-client" /loadgen client --to "$sip:$port" --test probe --timeout-ms 2000 >/dev/null
        latency=-1
        for _ in $(seq 500); do
            if [ "$(wc -l <"$work/monitor.json")" -gt "$lines0" ]; then latency=$(($(now_ms) - c0)); break; fi
            sleep 0.01
        done
        s0=$(now_ms)
        "$bin" status --json --socket "$sock" >/dev/null
        status_ms=$(($(now_ms) - s0))
        wait "$flood"
        end=$(date +%s.%N)
        t1=$(ticks "$daemon")
        sleep 1.5 # the last events drained and lost ones counted
        sent1=$(metric bpfwall_flow_events_sent_total)
        lost1=$(metric bpfwall_flow_events_lost_total)
        drops1=$(drops)
        hz=$(getconf CLK_TCK)
        cores=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", (b - a) / hz / (e - s) }')
        syns=$(sed -n 's/.*sent=\([0-9]*\).*/\1/p' "$work/flood.txt")
        rate=$(sed -n 's/.*per_second=\([0-9]*\).*/\1/p' "$work/flood.txt")
        echo "$config,$r,$syns,$rate,$cores,$latency,$status_ms,$((sent1 - sent0)),$((lost1 - lost0)),$((drops1 - drops0))" >>"$csv"
        stop_bpfwall
    done
done

awk -F, '
NR == 1 { next }
{ k = $1; n[k]++; for (i = 3; i <= 10; i++) v[k, i] = v[k, i] " " $i }
function med(list,   a, m, i, j, t) {
    m = split(substr(list, 2), a, " ")
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return a[int((m + 1) / 2)]
}
END {
    printf "Median of %d runs per configuration (alternating).\n\n", n["limited"]
    printf "| events | SYNs sent | SYNs/s | daemon CPU (cores) | monitor: allowed flow shown after (ms) | status (ms) | events sent | events lost | drops counted |\n|---|---|---|---|---|---|---|---|---|\n"
    split("limited every", cs, " ")
    name["limited"] = "one per key and second (default)"; name["every"] = "every decision (--flow-event-interval-ms 0)"
    for (c = 1; c <= 2; c++) {
        k = cs[c]
        printf "| %s |", name[k]
        for (i = 3; i <= 10; i++) printf " %s |", med(v[k, i])
        printf "\n"
    }
}' "$csv"
echo
echo "raw runs: $csv"
