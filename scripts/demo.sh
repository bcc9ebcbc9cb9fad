#!/usr/bin/env bash
# The local fleet demo: builds everything, then runs skoala-demo (emulated control-plane and
# working clusters, a chart repository, the coordinator and one agent per cluster) on this
# machine only. Installs what it needs (helm, kubectl into .tools/bin). Ctrl-C stops everything.
#
#   scripts/demo.sh                  # the whole story, then exit
#   scripts/demo.sh --keep-running   # leave the fleet up and print commands to explore it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "demo: error: cargo is required (https://rustup.rs)" >&2; exit 1; }
./scripts/install-tools.sh
export SKOALA_TOOLS_BIN="$PWD/.tools/bin"

echo "demo: building (the first build takes a few minutes)" >&2
cargo build --quiet --locked --workspace --bins
exec ./target/debug/skoala-demo "$@"
