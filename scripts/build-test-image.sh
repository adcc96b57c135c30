#!/usr/bin/env bash
# Builds the local test image (there is no registry): a rootfs with
# busybox-static and the tools of tests/image/ (udp_echo, rawpkt,
# http_upgrade), imported with `docker import`.
# Rebuilt only when its inputs change (their hash is an image label).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
image=${BPFWALL_TEST_IMAGE:-bpfwall-test:latest}
busybox=$(command -v busybox)
tools=(udp_echo rawpkt http_upgrade)
hash=$(for tool in "${tools[@]}"; do cat "$top/tests/image/$tool.c"; done |
    cat "$busybox" - "$0" | sha256sum | cut -c1-16)
if [ "$(docker image inspect -f '{{index .Config.Labels "org.bpfwall.test-image-hash"}}' "$image" 2>/dev/null)" = "$hash" ]; then
    exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/www"
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
for tool in "${tools[@]}"; do
    cc -static -O2 -Wall -o "$root/bin/$tool" "$top/tests/image/$tool.c"
done
echo 'bpfwall test page' > "$root/www/index.html"
echo 'root:x:0:0:root:/:/bin/sh' > "$root/etc/passwd"
tar -C "$root" -c . | docker import \
    -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' \
    -c "LABEL org.bpfwall.test-image-hash=$hash" - "$image" >/dev/null
echo "built $image ($hash)"
