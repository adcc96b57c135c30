#!/usr/bin/env bash
# The scenario of the article bpfwall starts from: only app2 may reach app1,
# on TCP 80; app3 may not. Uses the running daemon (scripts/run.sh); if none
# answers, runs one of its own for the demo and removes it afterwards.
# Prints what was allowed and what was blocked; exits non-zero if either
# result is wrong.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/target/release/bpfwall"
image=bpfwall-test:latest
net=bpfwall-demo
[ -x "$bin" ] && docker image inspect "$image" >/dev/null 2>&1 || "$top/scripts/setup.sh"

own_daemon=
socket=/run/bpfwall/bpfwall.sock
if ! "$bin" status --socket "$socket" >/dev/null 2>&1; then
    socket=/run/bpfwall-demo.sock
    pins=/sys/fs/bpf/bpfwall_v1_demo
    "$bin" daemon --socket "$socket" --bpffs-root "$pins" --no-network-plugin >/tmp/bpfwall-demo.log 2>&1 &
    own_daemon=$!
    for _ in $(seq 50); do "$bin" status --socket "$socket" >/dev/null 2>&1 && break; sleep 0.2; done
fi
cleanup() {
    docker rm -f bpfwall-demo-app1 >/dev/null 2>&1 || true
    docker network rm "$net" >/dev/null 2>&1 || true
    if [ -n "$own_daemon" ]; then
        kill "$own_daemon" 2>/dev/null || true
        wait "$own_daemon" 2>/dev/null || true
        "$bin" teardown --bpffs-root "$pins" >/dev/null
    fi
}
trap cleanup EXIT

docker network create "$net" >/dev/null
echo '$ docker run -d --name bpfwall-demo-app1 --label id=app1 --label "bpfwall.ingress=allow from id=app2 port 80/tcp" ... httpd'
docker run -d --name bpfwall-demo-app1 --network "$net" --label id=app1 \
    --label 'bpfwall.ingress=allow from id=app2 port 80/tcp' "$image" httpd -f -p 80 -h /www >/dev/null
sleep 0.5

client() { # id -> exit status of one HTTP GET to app1 from a fresh container
    docker run --rm --network "$net" --label "id=$1" "$image" \
        sh -c 'timeout 5 wget -q -O /dev/null http://bpfwall-demo-app1/; exit $?' 2>/dev/null
}
fail=0
if client app2; then echo "app2 -> app1:80  ALLOWED (expected)"; else echo "app2 -> app1:80  blocked (WRONG)"; fail=1; fi
if client app3; then echo "app3 -> app1:80  allowed (WRONG)"; fail=1; else echo "app3 -> app1:80  BLOCKED (expected)"; fi
echo
"$bin" status --socket "$socket" | sed -n '/bpfwall-demo-app1/,/^$/p'
exit $fail
