#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
# Installs what it needs (helm 4.1.4, helm 3.17.3, kubectl into .tools/bin), then checks
# formatting and lints, then runs every test. Fails loudly; never skips.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null || { echo "test: error: cargo is required" >&2; exit 1; }
./scripts/install-tools.sh
export SKOALA_TOOLS_BIN="$PWD/.tools/bin"

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test" >&2
cargo test --workspace --locked
