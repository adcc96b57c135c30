#!/usr/bin/env bash
# Sets up a Debian or Ubuntu host for bpfwall: installs what is missing,
# starts dockerd if none answers, mounts bpffs, builds the test image and
# the release binary. Idempotent; run as root.
#
# What is there is used as it is: a tool is looked for by its command (or,
# for a library, its header), never by a Debian package name, and a
# package is installed only when its command is missing. Any docker that
# answers (`docker info`: Docker CE, docker.io, a systemd unit, a dockerd
# started by hand) is used as it is; a dockerd that is installed but not
# running is started; docker.io is installed only where there is no docker
# engine at all (a docker CLI without dockerd is no docker). Nothing is
# ever skipped (with CI=true as without): a dependency still missing after
# this is a failure.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
log() { printf 'setup: %s\n' "$*" >&2; }
fail() {
    log "$*"
    exit 1
}

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (sudo $0)" >&2
    exit 1
fi

# Each requirement: "package|how to tell it is there". The test is a
# command name, an absolute path (a header), or static:<command> (the
# command, statically linked: it is copied into the test image).
requirements=(
    "clang|clang"
    "llvm|llc"
    "libbpf-dev|/usr/include/bpf/bpf_helpers.h"
    "linux-libc-dev|/usr/include/linux/bpf.h"
    "libc6-dev|/usr/include/stdio.h"
    "gcc|cc"
    "protobuf-compiler|protoc"
    "busybox-static|static:busybox"
    "iproute2|ip"
    "bpftool|bpftool"
    "iptables|iptables"
    "nftables|nft"
    "docker-compose|docker-compose"
    # containerd's own containers and podman (their e2e tests run a
    # containerd of their own and podman rootful; podman brings what its
    # default network needs: Debian 12: CNI, 10.88.0.0/16).
    "containerd|containerd"
    "containerd|ctr"
    "podman|podman"
)

present() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        static:*)
            local c
            c=$(command -v "${1#static:}") || return 1
            # ldd fails on a static executable ("not a dynamic executable").
            ! ldd "$c" >/dev/null 2>&1
            ;;
        *) command -v "$1" >/dev/null ;;
    esac
}

missing_packages() {
    local r
    for r in "${requirements[@]}"; do
        present "${r#*|}" || printf '%s\n' "${r%%|*}"
    done
}

# Docker: whatever answers, or whatever engine is installed; docker.io only
# where there is no engine at all (a docker CLI alone is not a docker).
docker_installed() { command -v dockerd >/dev/null; }

mapfile -t missing < <(missing_packages)
if ! docker info >/dev/null 2>&1 && ! docker_installed; then
    missing+=(docker.io)
fi
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || fail "missing: ${missing[*]} (no apt-get here: install them by hand)"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    mapfile -t still < <(missing_packages)
    [ ${#still[@]} -eq 0 ] || fail "still missing after apt-get install: ${still[*]}"
fi

if ! command -v cargo >/dev/null; then
    fail "no Rust toolchain: install rustup (https://rustup.rs) and Rust >= 1.87, then run this again"
fi

if ! docker info >/dev/null 2>&1; then
    command -v docker >/dev/null || fail "dockerd is installed but the docker command is not: install your Docker distribution's CLI"
    command -v dockerd >/dev/null || fail "docker does not answer ($(docker info 2>&1 | tail -1)) and there is no dockerd here to start"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        log "starting docker with systemctl"
        systemctl start docker
    else
        log "starting dockerd (log in /var/log/bpfwall-dockerd.log)"
        nohup dockerd >/var/log/bpfwall-dockerd.log 2>&1 &
    fi
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || fail "dockerd did not come up; see /var/log/bpfwall-dockerd.log (or journalctl -u docker)"
fi

if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != bpf_fs ]; then
    log "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
fi
grep -q ' - cgroup2 ' /proc/self/mountinfo || fail "no cgroup2 file system is mounted: bpfwall needs cgroup v2"

"$top/scripts/build-test-image.sh"
log "building bpfwall (release)"
(cd "$top" && cargo build --release --quiet -p bpfwall --bins)
log "ready: $top/target/release/bpfwall"
