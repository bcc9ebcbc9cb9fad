#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
# Installs what it needs (helm 4.1.4, helm 3.17.3, kubectl into .tools/bin; the real Kubernetes
# control-plane binaries built from source by install-kube.sh, cached by version, and Go itself
# where missing), then checks formatting and lints, then runs every test: the emulated tier
# (`--test e2e`) and the real-cluster tier (`--test real`). Fails loudly; never skips.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "test: error: cargo is required" >&2; exit 1; }

# Incremental artefacts are most of a debug target (about 8 of 13 GB here) and only speed up an
# edit-compile loop, which this whole-suite run is not; set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
# Every temporary folder of the run goes under .tmp/, emptied first: what a killed process cannot
# remove (an agent SIGKILLed mid-upgrade leaves its helm session) dies with the run, not in /tmp.
export TMPDIR="$PWD/.tmp"
rm -rf "$TMPDIR" && mkdir -p "$TMPDIR"

# Free space, checked before building and again before the tests, so that a full disk is named
# here and not by etcd's "no space left on device" half-way through the real tier.
need_free() { # need_free GIB FOLDER WHAT
  local avail_kib
  avail_kib=$(df -Pk "$2" | awk 'NR == 2 { print $4 }')
  if (( avail_kib < $1 * 1024 * 1024 )); then
    echo "test: error: $3 needs about $1 GiB free on the disk of $2; it has $((avail_kib / 1024)) MiB" >&2
    exit 1
  fi
}
mkdir -p "$target_dir"
if [[ -d "$target_dir/debug/deps" ]]; then
  need_free 3 "$target_dir" "building over the existing target"
else
  need_free 8 "$target_dir" "a cold build of the workspace (fmt, clippy, tests)"
fi
./scripts/install-tools.sh
export SKOALA_TOOLS_BIN="$PWD/.tools/bin"
# The first run on a machine builds Kubernetes from source (tens of minutes on 2 cores); later
# runs, from any clone, only check the cached binaries.
SKOALA_KUBE_DIR="$(./scripts/install-kube.sh)"
export SKOALA_KUBE_DIR

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
need_free 2 "$TMPDIR" "running the tests (real clusters, helm sessions)"
echo "== cargo test" >&2
cargo test --workspace --locked
