#!/usr/bin/env bash
# The datapath between two containers on one bridge, under five
# configurations: no filter, bpfwall, iptables rules in a chain jumped to
# from DOCKER-USER, nftables with linear rules, nftables with a set; and,
# when asked (CONFIGS="none bpf-empty bpfwall"), bpf-empty: a cgroup/skb
# program that only returns 1 on both containers, the floor of the hook;
# and bpfwall-noevents: bpfwall with --no-flow-events (the cost of the
# flow events is bpfwall against it).
# Tests (bpfwall-loadgen, inside the containers): TCP_RR (1-byte
# request/response on one connection: transactions/s, p50, p99), TCP_CRR (a
# new connection per request: connections/s) and TCP_STREAM (Gbit/s).
#
# For each N, N-1 rules do not match the measured flow and one (the last,
# for the linear filters) allows it:
#   bpfwall     the server's policy allows N peers: the client by label and
#               N-1 /32 CIDRs (N identities, N policy entries);
#   iptables    N ACCEPT rules (-s, -d, -p tcp --dport) after an
#               ESTABLISHED,RELATED shortcut, then DROP to the server;
#   nft-linear  the same rules in an inet table at the forward hook;
#   nft-set     one rule looking up saddr . daddr . dport in a set of N.
# Every configuration is checked before it is measured: the client gets
# through, a third container (not allowed) does not, except with no filter.
# Configurations alternate within each run (A B C D E A B C D E ...).
#
#   RULES=1,100,1000,10000 RUNS=5 SECS=1 scripts/bench-datapath.sh
# Prints a markdown report; raw runs go to $BENCH_OUT/container-datapath.csv.
# Removes everything it created (containers, network, chain, table, pins)
# on exit, also on failure.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
RULES=${RULES:-1,100,1000,10000}
RUNS=${RUNS:-5}
SECS=${SECS:-1}
# Client and server share one core: on this 2-core VM, a cross-core wakeup
# costs ~50 us and lands at random, which buries the filters' cost.
CPUS=${CPUS:-$(($(nproc) - 1))}
read -ra CONFIGS <<<"${CONFIGS:-none bpfwall bpfwall-noevents iptables nft-linear nft-set}"
TESTS=(rr crr stream)
out=${BENCH_OUT:-$top/target/bench}
mkdir -p "$out"
csv=$out/container-datapath.csv
bin=$top/target/release/bpfwall
loadgen=$top/target/x86_64-unknown-linux-gnu/release/bpfwall-loadgen
image=bpfwall-test:latest
net=bpfwall-bench-dp
pfx=bpfwall-bench-dp
pins=/sys/fs/bpf/bpfwall_v1_benchdp
sock=/run/bpfwall-benchdp.sock
chain=BPFWALL-BENCH
table=bpfwall_bench
port=5201
log() { printf 'bench-datapath: %s\n' "$*" >&2; }

work= # made after the leftovers of an earlier run are gone
daemon=
stop_bpfwall() {
    if [ -n "$daemon" ]; then
        kill "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
        daemon=
    fi
    "$bin" teardown --bpffs-root "$pins" >/dev/null 2>&1 || true
}
stop_iptables() {
    while iptables -D DOCKER-USER -j "$chain" 2>/dev/null; do :; done
    iptables -F "$chain" 2>/dev/null || true
    iptables -X "$chain" 2>/dev/null || true
}
stop_nft() { nft delete table inet "$table" 2>/dev/null || true; }
empty_pins=/sys/fs/bpf/bpfwall_bench_empty
cgroup_of() { # container -> its cgroup v2 directory (0:: line + the cgroup2 mount)
    local pid rel mnt
    pid=$(docker inspect -f '{{.State.Pid}}' "$1")
    rel=$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
    mnt=$(awk '{ for (i = 1; i <= NF; i++) if ($i == "-") { if ($(i+1) == "cgroup2") print $5; break } }' /proc/self/mountinfo | head -1)
    echo "$mnt$rel"
}
stop_empty() {
    local c cg
    for c in server client; do
        cg=$(cgroup_of "$pfx-$c" 2>/dev/null) || continue
        bpftool cgroup detach "$cg" ingress pinned "$empty_pins/bench_empty" 2>/dev/null || true
        bpftool cgroup detach "$cg" egress pinned "$empty_pins/bench_empty_egress" 2>/dev/null || true
    done
    rm -rf "$empty_pins"
}
cleanup() {
    stop_empty
    stop_bpfwall
    stop_iptables
    stop_nft
    docker rm -f "$pfx-server" "$pfx-client" "$pfx-stranger" >/dev/null 2>&1 || true
    docker network rm "$net" >/dev/null 2>&1 || true
    [ -z "$work" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || { log "run as root"; exit 1; }
command -v nft >/dev/null || { log "nft is missing (scripts/bench installs nftables)"; exit 1; }
[ -x "$bin" ] && [ -x "$loadgen" ] || { log "build first: scripts/bench builds bpfwall and bpfwall-loadgen"; exit 1; }
cleanup # leftovers of an interrupted run of ours
work=$(mktemp -d)

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
addr() { docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$1"; }
sip=$(addr "$pfx-server")
cip=$(addr "$pfx-client")
log "server $sip, client $cip"

other() { # k -> the k-th address that is not the client (10.200.0.0/14)
    echo "10.$((200 + $1 / 65536)).$(($1 / 256 % 256)).$(($1 % 256))"
}
generate() { # n -> rule files in $work/$n/
    local n=$1 d=$work/$1 k
    mkdir -p "$d/policy"
    {
        echo "endpointSelector: {matchLabels: {id: server}}"
        echo "ingress:"
        if [ "$n" -gt 1 ]; then
            echo "- fromCIDR:"
            for ((k = 1; k < n; k++)); do echo "  - $(other "$k")/32"; done
            echo "  toPorts: [{ports: [{port: \"$port\", protocol: TCP}]}]"
        fi
        echo "- fromEndpoints: [{matchLabels: {id: client}}]"
        echo "  toPorts: [{ports: [{port: \"$port\", protocol: TCP}]}]"
    } >"$d/policy/bench.yaml"
    {
        echo "*filter"
        echo ":$chain - [0:0]"
        echo "-A $chain -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
        for ((k = 1; k < n; k++)); do echo "-A $chain -s $(other "$k")/32 -d $sip/32 -p tcp -m tcp --dport $port -j RETURN"; done
        echo "-A $chain -s $cip/32 -d $sip/32 -p tcp -m tcp --dport $port -j RETURN"
        echo "-A $chain -d $sip/32 -j DROP"
        echo "-I DOCKER-USER 1 -j $chain"
        echo "COMMIT"
    } >"$d/iptables.rules"
    {
        echo "table inet $table {"
        echo "  chain forward {"
        echo "    type filter hook forward priority -10; policy accept;"
        echo "    ct state established,related accept"
        for ((k = 1; k < n; k++)); do echo "    ip saddr $(other "$k") ip daddr $sip tcp dport $port accept"; done
        echo "    ip saddr $cip ip daddr $sip tcp dport $port accept"
        echo "    ip daddr $sip drop"
        echo "  }"
        echo "}"
    } >"$d/nft-linear.nft"
    {
        echo "table inet $table {"
        echo "  set allowed {"
        echo "    type ipv4_addr . ipv4_addr . inet_service"
        echo "    elements = {"
        for ((k = 1; k < n; k++)); do echo "      $(other "$k") . $sip . $port,"; done
        echo "      $cip . $sip . $port"
        echo "    }"
        echo "  }"
        echo "  chain forward {"
        echo "    type filter hook forward priority -10; policy accept;"
        echo "    ct state established,related accept"
        echo "    ip saddr . ip daddr . tcp dport @allowed accept"
        echo "    ip daddr $sip drop"
        echo "  }"
        echo "}"
    } >"$d/nft-set.nft"
}

probe() { docker exec "$pfx-$1" /loadgen client --to "$sip:$port" --test probe --timeout-ms 150 >/dev/null 2>&1; }
start_config() { # config n
    local d=$work/$2
    case $1 in
    none) ;;
    bpf-empty)
        [ -f "$work/empty.o" ] || clang -g -O2 -target bpf -I/usr/include/x86_64-linux-gnu \
            -c "$top/bpf-src/bench_empty.c" -o "$work/empty.o"
        bpftool prog loadall "$work/empty.o" "$empty_pins" type cgroup/skb
        local c
        for c in server client; do
            bpftool cgroup attach "$(cgroup_of "$pfx-$c")" ingress pinned "$empty_pins/bench_empty"
            bpftool cgroup attach "$(cgroup_of "$pfx-$c")" egress pinned "$empty_pins/bench_empty_egress"
        done
        ;;
    bpfwall | bpfwall-noevents)
        local events=()
        [ "$1" = bpfwall ] || events=(--no-flow-events)
        "$bin" daemon --bpffs-root "$pins" --socket "$sock" --policy-dir "$d/policy" \
            --state-dir "$work/state" --manage-label "$pfx=1" "${events[@]}" 2>"$work/daemon.log" &
        daemon=$!
        local ok=
        for _ in $(seq 100); do
            if "$bin" status --json --socket "$sock" 2>/dev/null | grep -Eq "\"policy_entries\": ?$2,"; then ok=1; break; fi
            sleep 0.1
        done
        [ -n "$ok" ] || { log "bpfwall did not apply $2 policy entries"; cat "$work/daemon.log" >&2; exit 1; }
        ;;
    iptables) iptables-restore --noflush <"$d/iptables.rules" ;;
    nft-linear) nft -f "$d/nft-linear.nft" ;;
    nft-set) nft -f "$d/nft-set.nft" ;;
    esac
    # The configuration must be what we measure: the client passes, the
    # stranger is stopped by every filter.
    local tries
    for tries in $(seq 30); do
        local open=
        case $1 in none | bpf-empty) open=1 ;; esac
        if probe client && { [ -n "$open" ] && probe stranger || { [ -z "$open" ] && ! probe stranger; }; }; then
            return 0
        fi
        sleep 0.1
    done
    log "configuration $1 (N=$2) is not in force: client or stranger probe gave the wrong answer"
    exit 1
}
stop_config() {
    case $1 in
    bpf-empty) stop_empty ;;
    bpfwall | bpfwall-noevents) stop_bpfwall ;;
    iptables) stop_iptables ;;
    nft-linear | nft-set) stop_nft ;;
    esac
}
measure() { # config n run test
    local line
    line=$(docker exec "$pfx-client" /loadgen client --to "$sip:$port" --test "$4" --seconds "$SECS")
    local ps p50 p99 gbit
    ps=$(sed -n 's/.*per_second=\([0-9.]*\).*/\1/p' <<<"$line")
    p50=$(sed -n 's/.*p50_us=\([0-9.]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.*p99_us=\([0-9.]*\).*/\1/p' <<<"$line")
    gbit=$(sed -n 's/.*gbit_per_second=\([0-9.]*\).*/\1/p' <<<"$line")
    echo "$2,$1,$3,$4,$ps,$p50,$p99,$gbit" >>"$csv"
}

echo "rules,config,run,test,per_second,p50_us,p99_us,gbit_per_second" >"$csv"
IFS=, read -ra ns <<<"$RULES"
for n in "${ns[@]}"; do
    generate "$n"
    for run in $(seq "$RUNS"); do
        for c in "${CONFIGS[@]}"; do
            log "N=$n run $run/$RUNS: $c"
            start_config "$c" "$n"
            for t in "${TESTS[@]}"; do measure "$c" "$n" "$run" "$t"; done
            stop_config "$c"
        done
    done
done

# The report: median (min-max) per point, then ratios of medians.
awk -F, -v configs="${CONFIGS[*]}" -v secs="$SECS" -v runs="$RUNS" '
NR == 1 { next }
{
    n[$1] = 1; k = $1 SUBSEP $2 SUBSEP $4
    if ($4 == "stream") v = $8; else v = $5
    vals[k] = vals[k] " " v
    if ($4 == "rr") { p50[$1 SUBSEP $2] = p50[$1 SUBSEP $2] " " $6; p99[$1 SUBSEP $2] = p99[$1 SUBSEP $2] " " $7 }
}
function med(list,   a, m, i, j, t) {
    m = split(substr(list, 2), a, " ")
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    lo = a[1]; hi = a[m]
    return a[int((m + 1) / 2)]
}
function ratio(a, b) { return (b + 0 > 0) ? sprintf("%.2f", a / b) : "-" }
function ratio4(a, b) { return (b + 0 > 0) ? sprintf("%.4f", a / b) : "-" }
function cell(list, fmt,   x) { x = med(list); return sprintf(fmt " (" fmt "-" fmt ")", x, lo, hi) }
END {
    nc = split(configs, cs, " ")
    printf "Median (min-max) of %d runs of %s s per point; configurations alternate within each run.\n\n", runs, secs
    title["rr"] = "TCP_RR, transactions/s"; title["crr"] = "TCP_CRR, connections/s"; title["stream"] = "TCP_STREAM, Gbit/s"
    split("rr crr stream", ts, " ")
    nn = 0; for (x in n) ns[++nn] = x + 0
    for (i = 1; i <= nn; i++) for (j = i + 1; j <= nn; j++) if (ns[j] < ns[i]) { t = ns[i]; ns[i] = ns[j]; ns[j] = t }
    for (ti = 1; ti <= 3; ti++) {
        tt = ts[ti]; fmt = (tt == "stream") ? "%.2f" : "%.0f"
        printf "%s\n\n| N |", title[tt]; for (c = 1; c <= nc; c++) printf " %s |", cs[c]
        printf " bpfwall / no filter | bpfwall / iptables | bpfwall / nft set | events on / off |\n|---|"
        for (c = 1; c <= nc + 4; c++) printf "---|"; printf "\n"
        for (i = 1; i <= nn; i++) {
            printf "| %d |", ns[i]
            delete m
            for (c = 1; c <= nc; c++) { k = ns[i] SUBSEP cs[c] SUBSEP tt; m[cs[c]] = med(vals[k]); printf " %s |", cell(vals[k], fmt) }
            printf " %s | %s | %s | %s |\n", ratio(m["bpfwall"], m["none"]), ratio(m["bpfwall"], m["iptables"]), ratio(m["bpfwall"], m["nft-set"]), ratio4(m["bpfwall"], m["bpfwall-noevents"])
        }
        printf "\n"
    }
    printf "TCP_RR latency, p50 / p99 (us)\n\n| N |"; for (c = 1; c <= nc; c++) printf " %s |", cs[c]
    printf " bpfwall / no filter (p50) | bpfwall / iptables (p50) | bpfwall / nft set (p50) |\n|---|"
    for (c = 1; c <= nc + 3; c++) printf "---|"; printf "\n"
    for (i = 1; i <= nn; i++) {
        printf "| %d |", ns[i]
        delete m
        for (c = 1; c <= nc; c++) { k = ns[i] SUBSEP cs[c]; a = med(p50[k]); b = med(p99[k]); m[cs[c]] = a; printf " %.1f / %.1f |", a, b }
        printf " %s | %s | %s |\n", ratio(m["bpfwall"], m["none"]), ratio(m["bpfwall"], m["iptables"]), ratio(m["bpfwall"], m["nft-set"])
    }
}' "$csv"
echo
echo "raw runs: $csv"
