#!/usr/bin/env bash
# Container start: (1) the window that remains without bpfwall-runc (events
# only), and (2) the latency bpfwall-runc and its OCI hook add to docker run.
# A benchmark, not a test: prints a markdown report. Runs its own daemon,
# runtime and containers, and removes them afterwards. N=starts per point.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/target/release/bpfwall"
N=${N:-30}
image=bpfwall-test:latest
[ -x "$bin" ] && docker image inspect "$image" >/dev/null 2>&1 || "$top/scripts/setup.sh" >&2
pins=/sys/fs/bpf/bpfwall_v1_bench
sock=/run/bpfwall-bench.sock
policies=$(mktemp -d)
runtime=bpfwall-bench
daemon=
cleanup() {
    docker ps -aq --filter label=bpfwall-bench | xargs -r docker rm -f >/dev/null 2>&1 || true
    "$bin" uninstall-runtime --name "$runtime" >/dev/null 2>&1 || true
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    "$bin" teardown --bpffs-root "$pins" >/dev/null 2>&1 || true
    rm -rf "$policies"
}
trap cleanup EXIT
"$bin" daemon --bpffs-root "$pins" --socket "$sock" --policy-dir "$policies" --manage-label bpfwall-bench=1 --no-network-plugin 2>/dev/null &
daemon=$!
for _ in $(seq 50); do "$bin" status --socket "$sock" >/dev/null 2>&1 && break; sleep 0.2; done
"$bin" install-runtime --name "$runtime" --socket "$sock" >/dev/null

docker run -d --label bpfwall-bench=1 --label id=open "$image" httpd -f -p 80 -h /www >/dev/null
sleep 1
ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' "$(docker ps -q --filter label=id=open --filter label=bpfwall-bench)")

# A client whose egress forbids the server connects in a loop from its first
# instruction; it prints how many connections got through and the time
# (from /proc/uptime, 10 ms steps) between its first try and the start of its
# last successful try (a connection opened inside the window may finish much
# later: its closing packets are dropped once the policy is on).
client='a=$(cut -d" " -f1 /proc/uptime); b=$a; n=0
while [ $n -lt 500 ]; do t=$(cut -d" " -f1 /proc/uptime); nc -w 1 '"$ip"' 80 </dev/null >/dev/null 2>&1 || break; n=$((n+1)); b=$t; done
echo "$n $a $b"'
window() { # runtime option -> lines "leaked window_ms"
    for _ in $(seq "$N"); do
        docker run --rm $1 --label bpfwall-bench=1 --label 'bpfwall.egress=allow to id=nobody' "$image" sh -c "$client" |
            awk '{printf "%d %.0f\n", $1, ($3-$2)*1000}'
    done
}
stats() { # column of numbers on stdin -> "median p90 min max"
    sort -n | awk '{v[NR]=$1} END {m=v[int((NR+1)/2)]; p=v[int(NR*0.9+0.999)]; printf "%s %s %s %s", m, p, v[1], v[NR]}'
}
without=$(window "")
with=$(window "--runtime $runtime")
leaks_without=$(echo "$without" | awk '$1>0' | wc -l)
leaks_with=$(echo "$with" | awk '$1>0' | wc -l)
read -r wm wp wmin wmax <<<"$(echo "$without" | awk '$1>0 {print $2}' | stats)"
conn_total=$(echo "$without" | awk '{s+=$1} END {print s+0}')

# Latency of docker run ... true, alternating runc and bpfwall-runc.
lat_runc=()
lat_bpf=()
for _ in $(seq "$N"); do
    for rt in runc "$runtime"; do
        t0=$(date +%s%N)
        docker run --rm --runtime "$rt" --label bpfwall-bench=1 "$image" true
        t1=$(date +%s%N)
        ms=$(( (t1 - t0) / 1000000 ))
        if [ "$rt" = runc ]; then lat_runc+=("$ms"); else lat_bpf+=("$ms"); fi
    done
done
read -r rm rp rmin rmax <<<"$(printf '%s\n' "${lat_runc[@]}" | stats)"
read -r bm bp bmin bmax <<<"$(printf '%s\n' "${lat_bpf[@]}" | stats)"

cat <<REPORT
## Container start ($(date -u +%Y-%m-%d), $(uname -r), $(nproc) cores, N=$N starts per point)

Start window, events only (no wrapper): a client whose egress policy forbids
the server connects in a loop from its first instruction.

| | starts with a forbidden connection through | connections through (all starts) | window, median / p90 / min / max (ms) |
|---|---|---|---|
| events only | $leaks_without of $N | $conn_total | ${wm:-0} / ${wp:-0} / ${wmin:-0} / ${wmax:-0} |
| bpfwall-runc | $leaks_with of $N | $(echo "$with" | awk '{s+=$1} END {print s+0}') | — |

\`docker run --rm IMAGE true\`, wall time (ms), alternating runtimes:

| runtime | median | p90 | min | max |
|---|---|---|---|---|
| runc | $rm | $rp | $rmin | $rmax |
| bpfwall-runc + hook | $bm | $bp | $bmin | $bmax |
| added by bpfwall (median) | $((bm - rm)) | | | |
REPORT
