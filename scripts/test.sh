#!/usr/bin/env bash
# Sets up the host and runs every test: unit and property tests, the
# BPF_PROG_TEST_RUN tests of the datapath, and the end-to-end tests with a
# real dockerd, real containers and real packets. Needs root.
# In CI (CI=true) nothing is skipped: a missing dependency fails the run.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/setup.sh
cleanup() {
    # Whatever a killed test left behind: only objects carrying the e2e label or prefix.
    pkill -f 'bpfwall_v1_e2e_' 2>/dev/null || true
    for d in /run/bpfwall-e2e/*-runc; do
        [ -d "$d" ] && for id in $(runc --root "$d" list -q 2>/dev/null); do runc --root "$d" delete --force "$id" || true; done
    done
    docker ps -aq --filter label=bpfwall-e2e.test | xargs -r docker rm -f >/dev/null 2>&1 || true
    # The containerd e2e tests' own containerds (never dockerd's) and their
    # shims, mounts and directories; podman's e2e containers.
    pkill -f 'containerd --config /run/ctrd-e2e/' 2>/dev/null || true
    pkill -9 -f 'containerd-shim.* -address /run/ctrd-e2e/' 2>/dev/null || true
    grep -o ' /run/ctrd-e2e/[^ ]*\| /var/lib/ctrd-e2e/[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf /run/ctrd-e2e /var/lib/ctrd-e2e
    if command -v podman >/dev/null; then
        podman ps -aq --filter label=bpfwall-e2e.test | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
    fi
    docker network ls -q --filter label=bpfwall-e2e.test | xargs -r docker network rm >/dev/null 2>&1 || true
    for ns in $(ip netns list 2>/dev/null | awk '/^bpfwall-e2e-/{print $1}'); do ip netns pids "$ns" | xargs -r kill -9; ip netns del "$ns" || true; done
    for l in $(ip -o link show 2>/dev/null | awk -F': ' '/ bpfwe-/{print $2}' | cut -d@ -f1); do ip link del "$l" 2>/dev/null || true; done
    # Runtimes a killed test left registered in daemon.json.
    if [ -f /etc/docker/.bpfwall-runtimes.json ]; then
        for rt in $(grep -o '"bpfwall-e2e-[^"]*"' /etc/docker/.bpfwall-runtimes.json | tr -d '"' | sort -u); do
            "$top/target/debug/bpfwall" uninstall-runtime --name "$rt" >/dev/null 2>&1 || true
        done
    fi
    # The network plugin tests' leftovers (all named plug-...): plugin
    # sockets, interfaces, firewall rules and nat tables.
    rm -f /run/docker/plugins/plug-*.sock
    for l in $(ip -d -o link show 2>/dev/null | awk '/alias bpfwall:plug-/{print $2}' | cut -d@ -f1 | tr -d :); do ip link del "$l" 2>/dev/null || true; done
    for l in $(ip -o link show 2>/dev/null | awk -F': ' '/ plug-/{print $2}' | cut -d@ -f1); do ip link del "$l" 2>/dev/null || true; done
    for ns in $(ip netns list 2>/dev/null | awk '/^plug-/{print $1}'); do ip netns pids "$ns" | xargs -r kill -9; ip netns del "$ns" || true; done
    for t in iptables ip6tables; do
        "$t" -w -S BPFWALL-PLUGIN 2>/dev/null | grep -- '--comment "bpfwall plug-' | sed 's/^-A //' |
            while read -r rule; do eval "$t -w -D $rule" || true; done || true
        # The chain and its jump once no rule is left in it (a daemon that
        # was killed did not take them out).
        if "$t" -w -S BPFWALL-PLUGIN >/dev/null 2>&1 && ! "$t" -w -S BPFWALL-PLUGIN | grep -q '^-A '; then
            while "$t" -w -D DOCKER-USER -j BPFWALL-PLUGIN 2>/dev/null; do :; done
            "$t" -w -X BPFWALL-PLUGIN 2>/dev/null || true
        fi
    done
    for fam in ip ip6; do
        for tb in $(nft list tables "$fam" 2>/dev/null | awk '{print $3}' | grep '^bpfwall_plug_'); do nft delete table "$fam" "$tb" || true; done
    done
    rm -rf /sys/fs/bpf/bpfwall_v1_e2e_* /run/bpfwall-e2e
    # The e2e daemons' pin-root locks (every e2e daemon is gone by now).
    rm -f /run/bpfwall/pins%2Fsys%2Ffs%2Fbpf%2Fbpfwall_v1_e2e_*.lock
}
trap cleanup EXIT
cargo build --quiet -p bpfwall
export BPFWALL_BIN="$top/target/debug/bpfwall"
log=$(mktemp)
status=0
cargo test --workspace --no-fail-fast -- --test-threads="${BPFWALL_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary).
passed=$( (grep -oE '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" || true) | awk '{s+=$4} END {print s+0}')
failed=$( (grep -oE '[0-9]+ failed;' "$log" || true) | awk '{s+=$1} END {print s+0}')
rm -f "$log"
echo "tests: $passed passed, $failed failed"
exit "$status"
