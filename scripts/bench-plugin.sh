#!/usr/bin/env bash
# The network plugin's start window: a container on a bpfwall network has
# its interface closed from Join until bpfwall polices it, so (1) no
# forbidden first packet gets through, and (2) its first allowed packet
# waits for the gate to open. This measures that wait, from the container's
# first instruction (/proc/uptime, 10 ms steps):
#   udp: a fresh UDP flow every 20 ms until one is answered (when the gate
#        opened, to within a round of 20 ms);
#   tcp: one `nc` connect (a SYN the closed gate dropped is sent again by
#        TCP after 1 s, so a connection opened in the window waits that long).
#   first SYN: how many TCP clients connected at their first SYN (no SYN
#        sent again in their namespace: TcpExt TCPSynRetrans).
# A benchmark, not a test: prints a markdown report. Runs its own daemon
# (serving the plugin NAME, default plug-bench), network and containers,
# and removes them afterwards. Each start runs with events only (no
# wrapper) and with bpfwall-runc (registered as NAME for the run),
# alternating.
# N=starts per point; BPFWALL_BIN=the binary (default release);
# NAME=the plugin, network, runtime and pin names; DAEMON_ARGS=more daemon
# flags.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${BPFWALL_BIN:-$top/target/release/bpfwall}
N=${N:-30}
image=bpfwall-test:latest
[ -x "$bin" ] && docker image inspect "$image" >/dev/null 2>&1 || "$top/scripts/setup.sh" >&2
plugin=${NAME:-plug-bench}
net=$plugin-net
pins=/sys/fs/bpf/bpfwall_v1_${plugin//-/_}
sock=/run/bpfwall-$plugin.sock
work=$(mktemp -d)
label=bpfwall-bench-plugin=1
runtime=$plugin
daemon=
cleanup() {
    docker ps -aq --filter label=bpfwall-bench-plugin | xargs -r docker rm -f >/dev/null 2>&1 || true
    # Docker deletes the network through the plugin: before the daemon goes.
    docker network rm "$net" >/dev/null 2>&1 || true
    "$bin" uninstall-runtime --name "$runtime" >/dev/null 2>&1 || true
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    "$bin" teardown --bpffs-root "$pins" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/policies" "$work/state"
"$bin" daemon --bpffs-root "$pins" --socket "$sock" --policy-dir "$work/policies" \
    --state-dir "$work/state" --manage-label "$label" --network-plugin "$plugin" ${DAEMON_ARGS:-} 2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 50); do
    "$bin" status --socket "$sock" >/dev/null 2>&1 && [ -S "/run/docker/plugins/$plugin.sock" ] && break
    sleep 0.2
done
"$bin" install-runtime --name "$runtime" --socket "$sock" >/dev/null
docker network create -d "$plugin" --subnet 10.233.40.0/24 "$net" >/dev/null
docker run -d --network "$net" --label "$label" --label id=srv \
    --label 'bpfwall.ingress=allow from id=ok port 80/tcp,7/udp' \
    "$image" sh -c 'udp_echo serve 7 & exec httpd -f -p 80 -h /www' >/dev/null
ip=
for _ in $(seq 50); do
    ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" \
        "$(docker ps -q --filter label=bpfwall-bench-plugin --filter label=id=srv)")
    "$bin" status --socket "$sock" --json | grep -Eq '"open": ?true' && break
    sleep 0.2
done

closed_drops() {
    "$bin" status --socket "$sock" --json | sed -n '/"network_plugin"/,$p' | grep -Eo '"closed": ?[0-9]+' | head -1 | grep -Eo '[0-9]+$' || echo 0
}
udp_client='t0=$(cut -d" " -f1 /proc/uptime); n=0
until udp_echo ask '"$ip"' 7 20 >/dev/null 2>&1; do n=$((n+1)); [ $n -ge 500 ] && break; done
echo "$n $t0 $(cut -d" " -f1 /proc/uptime)"'
tcp_client='t0=$(cut -d" " -f1 /proc/uptime); nc -w 5 '"$ip"' 80 </dev/null >/dev/null 2>&1 && r=ok || r=failed
t1=$(cut -d" " -f1 /proc/uptime)
s=$(awk '"'"'/^TcpExt:/{if(!n){n=split($0,h);next} for(i=1;i<=NF;i++) if(h[i]=="TCPSynRetrans") print $i}'"'"' /proc/net/netstat)
echo "$r $t0 $t1 $s"'
# Forbidden (id=bad): 50 UDP flows and one TCP connect from the first
# instruction; prints how many got an answer.
bad_client='n=0; for i in $(seq 50); do udp_echo ask '"$ip"' 7 20 >/dev/null 2>&1 && n=$((n+1)); done
nc -w 2 '"$ip"' 80 </dev/null >/dev/null 2>&1 && n=$((n+1)); echo $n'
run_once() { # runtime option, id, script
    docker run --rm $1 --network "$net" --label "$label" --label "id=$2" "$image" sh -c "$3"
}
stats() { # column of numbers on stdin -> "median p90 min max"
    sort -n | awk '{v[NR]=$1} END {m=v[int((NR+1)/2)]; p=v[int(NR*0.9+0.999)]; printf "%s %s %s %s", m, p, v[1], v[NR]}'
}
configs=(events wrapper)
declare -A opt=([events]="" [wrapper]="--runtime $runtime")
declare -A udp tcp bad
drops_before=$(closed_drops)
# The configurations alternate within each run.
for _ in $(seq "$N"); do
    for c in "${configs[@]}"; do
        udp[$c]+=$(run_once "${opt[$c]}" ok "$udp_client" | awk '{printf "%d %.0f\n", $1, ($3-$2)*1000}')$'\n'
        tcp[$c]+=$(run_once "${opt[$c]}" ok "$tcp_client" | awk '{printf "%s %.0f %s\n", $1, ($3-$2)*1000, $4}')$'\n'
        bad[$c]+=$(run_once "${opt[$c]}" bad "$bad_client")$'\n'
    done
done
drops_after=$(closed_drops)
rows() { # config name, its label
    local u t b um up umin umax tm tp tmin tmax
    u=$(printf '%s' "${udp[$1]}" | sed '/^$/d')
    t=$(printf '%s' "${tcp[$1]}" | sed '/^$/d')
    b=$(printf '%s' "${bad[$1]}" | sed '/^$/d')
    read -r um up umin umax <<<"$(echo "$u" | awk '$1<500 {print $2}' | stats)"
    read -r tm tp tmin tmax <<<"$(echo "$t" | awk '$1=="ok" {print $2}' | stats)"
    echo "| $2 | allowed, UDP, a new flow every 20 ms | $(echo "$u" | awk '$1<500' | wc -l) of $N answered, $(echo "$u" | awk '$1==0' | wc -l) at the first try | ${um:-0} / ${up:-0} / ${umin:-0} / ${umax:-0} |"
    echo "| $2 | allowed, TCP connect | $(echo "$t" | awk '$1=="ok"' | wc -l) of $N connected, $(echo "$t" | awk '$1=="ok" && $3=="0"' | wc -l) at the first SYN, $(echo "$t" | awk '$1=="ok" && $3!="0"' | wc -l) after a resent SYN | ${tm:-0} / ${tp:-0} / ${tmin:-0} / ${tmax:-0} |"
    echo "| $2 | forbidden, 50 UDP flows and a TCP connect | $(echo "$b" | awk '$1>0' | wc -l) of $N starts got any answer | — |"
}

cat <<REPORT
## Network plugin: the start window ($(date -u +%Y-%m-%d), $(uname -r), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), N=$N starts per point)

A container on a bpfwall network (\`docker run --network $net\`), its
first instruction talking to a server that admits it (id=ok) or not
(id=bad); events only (no wrapper), or with bpfwall-runc (\`--runtime\`):

| start | first action | result | wait for the first allowed packet, median / p90 / min / max (ms) |
|---|---|---|---|
$(rows events "events only")
$(rows wrapper "bpfwall-runc")

Packets the closed gate dropped meanwhile: $((drops_after - drops_before)).
REPORT
