#!/usr/bin/env bash
# Sets up the host (scripts/setup.sh) and runs the bpfwall daemon in the
# foreground. Extra arguments go to `bpfwall daemon`.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh"
exec "$top/target/release/bpfwall" daemon "$@"
