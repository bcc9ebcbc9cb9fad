#!/usr/bin/env bash
# Fuzzes every parser that takes outside input (the targets of fuzz/src/lib.rs) with libFuzzer,
# each for SECONDS, and keeps what it finds: the new inputs are merged, minimised, into
# fuzz/corpus/<target>/ (commit them: `cargo test` replays the corpus on stable Rust).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      default: 600 s, every target
#
# Needs the nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz, which it installs,
# pinned, where missing. A crash stops the run: the input is in fuzz/libfuzzer/artifacts/<target>/
# and the script exits 1 naming it. Prints one line per target: executions, corpus size, crashes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-600}"
shift || true
CARGO_FUZZ_VERSION=0.13.2

die() { echo "fuzz: error: $*" >&2; exit 1; }
rustup run nightly rustc --version >/dev/null 2>&1 \
  || die "the nightly toolchain is required (rustup toolchain install nightly)"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked >&2
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/libfuzzer/Cargo.toml | grep -v '^skoala-')
fi

# The kept corpus starts with the seeds (valid inputs built from the product's own types;
# refresh them with `cargo run -p skoala-fuzz --bin skoala-fuzz-seeds` when a format changes).
fuzz_dir=fuzz/libfuzzer
cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" >&2
summary=()
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  fresh="$(mktemp -d)"
  log="$(mktemp)"
  echo "== $t: ${seconds}s" >&2
  # New inputs go to a scratch folder; the kept corpus is read-only to the run.
  if ! cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$t" "$fresh" "$corpus" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -40 "$log" >&2
    die "$t crashed: see $fuzz_dir/artifacts/$t/ (add the input to $corpus once fixed)"
  fi
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  # Keep only inputs that add coverage to the kept corpus.
  cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$t" -- -merge=1 "$corpus" "$fresh" \
    >>"$log" 2>&1 || die "$t: merging the corpus failed (log: $log)"
  summary+=("$t: ${execs:-?} executions in ${seconds}s, corpus $(find "$corpus" -type f | wc -l) files, 0 crashes")
  rm -rf "$fresh"
done
printf '%s\n' "${summary[@]}"
