#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
# Installs what it needs (helm 4.1.4, helm 3.17.3, kubectl into .tools/bin; the real Kubernetes
# control-plane binaries built from source by install-kube.sh, cached by version, and Go itself
# where missing), then checks formatting and lints, then runs every test: the emulated tier
# (`--test e2e`) and the real-cluster tier (`--test real`). Fails loudly; never skips.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "test: error: cargo is required" >&2; exit 1; }
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
echo "== cargo test" >&2
cargo test --workspace --locked
