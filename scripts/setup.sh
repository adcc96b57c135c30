#!/usr/bin/env bash
# Sets up a Debian or Ubuntu host for bpfwall: installs what is missing,
# starts dockerd if none answers, mounts bpffs, builds the test image and
# the release binary. Idempotent; run as root.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (sudo $0)" >&2
    exit 1
fi

packages=(clang llvm libbpf-dev linux-libc-dev libc6-dev gcc protobuf-compiler docker.io busybox-static iproute2 bpftool iptables nftables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    log "no Rust toolchain: install rustup (https://rustup.rs) and Rust >= 1.87, then run this again"
    exit 1
fi

if ! docker info >/dev/null 2>&1; then
    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
        log "starting docker with systemctl"
        systemctl start docker
    else
        log "starting dockerd (log in /var/log/bpfwall-dockerd.log)"
        nohup dockerd >/var/log/bpfwall-dockerd.log 2>&1 &
    fi
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/bpfwall-dockerd.log"; exit 1; }
fi

if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != bpf_fs ]; then
    log "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
fi
grep -q ' - cgroup2 ' /proc/self/mountinfo || { log "no cgroup2 file system is mounted: bpfwall needs cgroup v2"; exit 1; }

"$top/scripts/build-test-image.sh"
log "building bpfwall (release)"
(cd "$top" && cargo build --release --quiet -p bpfwall --bins)
log "ready: $top/target/release/bpfwall"
