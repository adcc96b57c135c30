#!/usr/bin/env bash
# Reconnect latency after a dockerd restart: the time from dockerd
# answering again (GET /_ping) to bpfwall being in sync with it
# (`status` docker_synced), over N restarts. A benchmark, not a test:
# prints a markdown report.
#
# It stops dockerd N times, and every container with it: run it alone (on
# a shared host, under `flock -x /tmp/bpfwall-dockerd.lock`). dockerd is
# started again exactly as it ran (systemd units, or the same command line,
# directory, environment and output files), also when this script fails.
#   N=10 DOWN=2 BPFWALL_BIN=target/release/bpfwall scripts/bench-reconnect.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${BPFWALL_BIN:-$top/target/release/bpfwall}
N=${N:-10}
DOWN=${DOWN:-2} # seconds dockerd stays down (a restart with containers takes longer)
docker_sock=/var/run/docker.sock
pins=/sys/fs/bpf/bpfwall_v1_bench_reconnect
sock=/run/bpfwall-bench-reconnect.sock
work=$(mktemp -d)
mkdir -p "$work/policies" "$work/state"
[ -x "$bin" ] || { echo "no bpfwall binary at $bin (cargo build --release -p bpfwall)" >&2; exit 1; }

answers() { curl -sf -m 1 --unix-socket "$docker_sock" http://docker/_ping >/dev/null 2>&1; }
answers || { echo "dockerd does not answer" >&2; exit 1; }

# How dockerd runs now.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker 2>/dev/null; then
    mode=systemd
    units=()
    for u in docker.socket docker.service; do systemctl is-active --quiet "$u" && units+=("$u"); done
else
    mode=process
    pid=$(cat /var/run/docker.pid)
    mapfile -d '' argv <"/proc/$pid/cmdline"
    mapfile -d '' envv <"/proc/$pid/environ"
    cwd=$(readlink "/proc/$pid/cwd")
    out=$(readlink "/proc/$pid/fd/1" || true)
    err=$(readlink "/proc/$pid/fd/2" || true)
    # A pipe or a terminal cannot be reopened: scripts/setup.sh's log stands in.
    [ -f "$out" ] || out=/var/log/bpfwall-dockerd.log
    [ -f "$err" ] || err=/var/log/bpfwall-dockerd.log
fi

stop_dockerd() {
    if [ "$mode" = systemd ]; then
        systemctl stop "${units[@]}"
        return
    fi
    pid=$(cat /var/run/docker.pid)
    kill -TERM "$pid"
    for _ in $(seq 1800); do
        state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1) || true
        [ -z "$state" ] || [ "$state" = Z ] && return
        sleep 0.05
    done
    echo "dockerd (pid $pid) did not stop" >&2
    exit 1
}

start_dockerd() {
    if [ "$mode" = systemd ]; then
        systemctl start "${units[@]}"
        return
    fi
    (
        # Nothing of ours (a lock a caller took with flock(1), above all)
        # goes to a dockerd that outlives this script.
        for fd in $(ls "/proc/$BASHPID/fd"); do
            [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null || true
        done
        cd "$cwd"
        exec setsid -f env -i "${envv[@]}" "${argv[@]}" </dev/null >>"$out" 2>>"$err"
    )
}

daemon=
cleanup() {
    if ! answers; then
        echo "bench-reconnect: starting dockerd again" >&2
        start_dockerd
        for _ in $(seq 900); do answers && break; sleep 0.1; done
    fi
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    "$bin" teardown --bpffs-root "$pins" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

synced() { "$bin" status --json --socket "$sock" 2>/dev/null | grep -q '"docker_synced": true'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

"$bin" daemon --bpffs-root "$pins" --socket "$sock" --policy-dir "$work/policies" \
    --state-dir "$work/state" --manage-label bpfwall-bench-reconnect=1 --no-network-plugin 2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 100); do synced && break; sleep 0.1; done
synced || { echo "the daemon did not sync with dockerd" >&2; cat "$work/daemon.log" >&2; exit 1; }

echo "### Reconnect after a dockerd restart ($N restarts, dockerd down ${DOWN} s each, $(basename "$bin"))"
echo
echo "| restart | dockerd answering → bpfwall in sync (ms) |"
echo "|---|---|"
results=()
for i in $(seq "$N"); do
    stop_dockerd
    for _ in $(seq 100); do synced || break; sleep 0.05; done
    synced && { echo "bpfwall still says it is in sync with a stopped dockerd" >&2; exit 1; }
    sleep "$DOWN"
    start_dockerd
    t_answer= t_synced=
    for _ in $(seq 3000); do
        if [ -z "$t_answer" ] && answers; then t_answer=$(now_ms); fi
        if [ -n "$t_answer" ] && synced; then t_synced=$(now_ms); break; fi
    done
    [ -n "$t_synced" ] || { echo "bpfwall did not sync within the time allowed" >&2; exit 1; }
    ms=$((t_synced - t_answer))
    results+=("$ms")
    echo "| $i | $ms |"
done
sorted=$(printf '%s\n' "${results[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
echo
echo "median $median ms (min $(echo "$sorted" | head -1), max $(echo "$sorted" | tail -1)); each poll of both takes about 10 ms"
