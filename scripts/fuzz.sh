#!/usr/bin/env bash
# Fuzzes every parser that takes outside input (the targets of fuzz/src/lib.rs) with libFuzzer,
# each for SECONDS, and keeps what it finds: new inputs that add coverage are merged into
# fuzz/corpus/<target>/ (commit them: `cargo test` replays the corpus on stable Rust).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      default: 600 s, every target
#   FUZZ_JOBS=N scripts/fuzz.sh ...            N targets at once (default 1)
#
# Needs the nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz, which it installs,
# pinned, where missing. A crash fails the run naming the target; the input that crashed is in
# fuzz/libfuzzer/artifacts/<target>/. Prints one line per target: executions, corpus, crashes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-600}"
shift || true
jobs="${FUZZ_JOBS:-1}"
CARGO_FUZZ_VERSION=0.13.2
fuzz_dir=fuzz/libfuzzer

die() { echo "fuzz: error: $*" >&2; exit 1; }
rustup run nightly rustc --version >/dev/null 2>&1 \
  || die "the nightly toolchain is required (rustup toolchain install nightly)"
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked >&2
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' "$fuzz_dir/Cargo.toml" | grep -v '^skoala-')
fi
# The kept corpus starts with the seeds (valid inputs built from the product's own types;
# refresh them with `cargo run -p skoala-fuzz --bin skoala-fuzz-seeds` when a format changes).
cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" >&2
results="$(mktemp -d)"

# One target: fuzz into a scratch folder (the kept corpus is only read), then merge what adds
# coverage into the kept corpus. Writes its summary line, or its failure, into $results.
fuzz_one() {
  local t="$1" corpus="fuzz/corpus/$1" fresh log execs
  fresh="$(mktemp -d)"
  log="$results/$t.log"
  echo "== $t: ${seconds}s" >&2
  if ! cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$t" "$fresh" "$corpus" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -timeout=10 \
      -print_final_stats=1 >"$log" 2>&1; then
    echo "$t: CRASHED (input in $fuzz_dir/artifacts/$t/, log $log)" >"$results/$t.failed"
    return
  fi
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  if ! cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$t" -- -merge=1 "$corpus" "$fresh" \
      >>"$log" 2>&1; then
    echo "$t: merging the corpus failed (log $log)" >"$results/$t.failed"
    return
  fi
  rm -rf "$fresh"
  echo "$t: ${execs:-?} executions in ${seconds}s, corpus $(find "$corpus" -type f | wc -l) files, 0 crashes" \
    >"$results/$t.ok"
}

for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  fuzz_one "$t" &
done
wait
cat "$results"/*.ok 2>/dev/null || true
if ls "$results"/*.failed >/dev/null 2>&1; then
  cat "$results"/*.failed >&2
  for f in "$results"/*.failed; do tail -30 "$results/$(basename "$f" .failed).log" >&2; done
  die "a target failed"
fi
