#!/usr/bin/env bash
# containerd's own containers (ctr run): (1) the start window that remains
# without bpfwall-runc (the containerd source's events only), and (2) the
# latency bpfwall-runc and its OCI hook add to `ctr run`. A benchmark, not a
# test: prints a markdown report. Runs its own containerd (own socket, root
# and state under /run/ctrd-bench and /var/lib/ctrd-bench), its own daemon,
# bridge and namespaces, and removes them afterwards. N=starts per point.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin=${BPFWALL_BIN:-$top/target/release/bpfwall}
N=${N:-30}
image=bpfwall-test:latest
ref=docker.io/library/$image
[ -x "$bin" ] && docker image inspect "$image" >/dev/null 2>&1 || "$top/scripts/setup.sh" >&2
dir=/run/ctrd-bench
root=/var/lib/ctrd-bench
pins=/sys/fs/bpf/bpfwall_v1_ctrd_bench
sock=/run/ctrd-bench/bpfwall.sock
policies=$dir/policies
ctrd=
daemon=
ctr() { command ctr -a "$dir/containerd.sock" -n default "$@"; }
cleanup() {
    for id in $(ctr containers ls -q 2>/dev/null); do
        ctr task kill -s KILL "$id" >/dev/null 2>&1 || true
        sleep 0.1
        ctr task delete "$id" >/dev/null 2>&1 || true
        ctr containers delete "$id" >/dev/null 2>&1 || true
    done
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    [ -n "$ctrd" ] && kill "$ctrd" 2>/dev/null && wait "$ctrd" 2>/dev/null || true
    "$bin" teardown --bpffs-root "$pins" >/dev/null 2>&1 || true
    for ns in ctrdb-server ctrdb-client; do ip netns del "$ns" 2>/dev/null || true; done
    ip link del ctrdb-1 2>/dev/null || true
    ip link del ctrdb-2 2>/dev/null || true
    docker network rm ctrd-bench >/dev/null 2>&1 || true
    grep -o " $dir[^ ]*\| $root[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$dir" "$root"
}
trap cleanup EXIT
cleanup
mkdir -p "$dir" "$root" "$policies"
cat >"$dir/config.toml" <<EOF
version = 2
root = "$root/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
EOF
BPFWALL_SOCKET=$sock containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
ctrd=$!
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
docker save "$image" | ctr images import - >/dev/null
ln -sf "$bin" "$dir/bpfwall-runc"

# A Docker network of the bench's own (10.213.90.0/24; Docker's addresses
# below .128, its firewall admits traffic within the bridge) and two
# namespaces plugged into its bridge.
docker network create --subnet 10.213.90.0/24 --ip-range 10.213.90.0/25 --gateway 10.213.90.1 ctrd-bench >/dev/null
bridge=br-$(docker network inspect -f '{{.Id}}' ctrd-bench | cut -c1-12)
n=0
for ns in ctrdb-server ctrdb-client; do
    n=$((n + 1))
    ip netns add "$ns"
    ip link add "ctrdb-$n" type veth peer name eth0 netns "$ns"
    ip link set "ctrdb-$n" master "$bridge" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip addr add "10.213.90.$((n + 200))/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
done
ip=10.213.90.201

"$bin" daemon --bpffs-root "$pins" --socket "$sock" --policy-dir "$policies" --state-dir "$dir/state-bpfwall" \
    --containerd-socket "$dir/containerd.sock" --manage-label bpfwall-bench=1 2>"${DAEMON_LOG:-/dev/null}" &
daemon=$!
for _ in $(seq 50); do "$bin" status --socket "$sock" 2>/dev/null | grep -q 'containerd: synced' && break; sleep 0.2; done

ctr run -d --runc-root "$dir/runc" --with-ns network:/var/run/netns/ctrdb-server --label bpfwall-bench=1 --label id=open \
    "$ref" ctrdb-server httpd -f -p 80 -h /www >/dev/null
sleep 1
ip netns exec ctrdb-client busybox timeout 3 busybox wget -q -O /dev/null "http://$ip/" || {
    echo "bench-ctr-start: the server at $ip does not answer the client's namespace" >&2
    exit 1
}

# As scripts/bench-start.sh: a client whose egress forbids the server
# connects in a loop from its first instruction and prints how many
# connections got through and the time between its first try and the start
# of its last successful one (/proc/uptime, 10 ms steps).
client='a=$(cut -d" " -f1 /proc/uptime); b=$a; n=0
while [ $n -lt 500 ]; do t=$(cut -d" " -f1 /proc/uptime); nc -w 1 '"$ip"' 80 </dev/null >/dev/null 2>&1 || break; n=$((n+1)); b=$t; done
echo "$n $a $b"'
window() { # extra ctr options -> lines "leaked window_ms"
    for i in $(seq "$N"); do
        # shellcheck disable=SC2086
        ctr run --rm --runc-root "$dir/runc" $1 --with-ns network:/var/run/netns/ctrdb-client \
            --label bpfwall-bench=1 --label 'bpfwall.egress=allow to id=nobody' "$ref" "ctrdb-w$i" sh -c "$client" |
            awk '{printf "%d %.0f\n", $1, ($3-$2)*1000}'
    done
}
stats() { # column of numbers on stdin -> "median p90 min max"
    sort -n | awk '{v[NR]=$1} END {m=v[int((NR+1)/2)]; p=v[int(NR*0.9+0.999)]; printf "%s %s %s %s", m, p, v[1], v[NR]}'
}
load=$(cut -d' ' -f1 /proc/loadavg)
without=$(window "")
with=$(window "--runc-binary $dir/bpfwall-runc")
# RAW=1: every start's "connections window_ms" on stderr.
[ -n "${RAW:-}" ] && { echo "$without" | tr "\n" " " >&2; echo >&2; }
leaks_without=$(echo "$without" | awk '$1>0' | wc -l)
leaks_with=$(echo "$with" | awk '$1>0' | wc -l)
read -r wm wp wmin wmax <<<"$(echo "$without" | awk '$1>0 {print $2}' | stats)"
conn_total=$(echo "$without" | awk '{s+=$1} END {print s+0}')

# Latency of ctr run --rm ... true, alternating runc and bpfwall-runc.
lat_runc=()
lat_bpf=()
for i in $(seq "$N"); do
    for rt in runc wrapped; do
        opt=""
        [ "$rt" = wrapped ] && opt="--runc-binary $dir/bpfwall-runc"
        t0=$(date +%s%N)
        # shellcheck disable=SC2086
        ctr run --rm --runc-root "$dir/runc" $opt --label bpfwall-bench=1 "$ref" "ctrdb-l$i" true
        t1=$(date +%s%N)
        ms=$(((t1 - t0) / 1000000))
        if [ "$rt" = runc ]; then lat_runc+=("$ms"); else lat_bpf+=("$ms"); fi
    done
done
read -r rm rp rmin rmax <<<"$(printf '%s\n' "${lat_runc[@]}" | stats)"
read -r bm bp bmin bmax <<<"$(printf '%s\n' "${lat_bpf[@]}" | stats)"

cat <<REPORT
## containerd container start ($(date -u +%Y-%m-%d), $(uname -r), $(nproc) cores, load average $load, containerd $(containerd --version | awk '{print $3}'), N=$N starts per point)

Start window of \`ctr run\`, the containerd source's events only (no
wrapper): a client whose egress policy forbids the server connects in a
loop from its first instruction.

| | starts with a forbidden connection through | connections through (all starts) | window, median / p90 / min / max (ms) |
|---|---|---|---|
| events only | $leaks_without of $N | $conn_total | ${wm:-0} / ${wp:-0} / ${wmin:-0} / ${wmax:-0} |
| \`--runc-binary bpfwall-runc\` | $leaks_with of $N | $(echo "$with" | awk '{s+=$1} END {print s+0}') | — |

\`ctr run --rm IMAGE true\`, wall time (ms), alternating runtimes:

| runtime | median | p90 | min | max |
|---|---|---|---|---|
| runc | $rm | $rp | $rmin | $rmax |
| bpfwall-runc + hook | $bm | $bp | $bmin | $bmax |
| added by bpfwall (median) | $((bm - rm)) | | | |
REPORT
