#!/usr/bin/env bash
# Scale benchmarks of issue 7: N simulated agents against one coordinator, beside a bare tonic
# bidi-stream server with the same TLS settings. Release builds; loopback only.
#
#   scripts/bench.sh                 # N = 1000 5000 10000
#   scripts/bench.sh 1000            # one size
#   BENCH_IDLE_SECS=10 scripts/bench.sh 200   # shorter idle-CPU window (quick check)
#   BENCH_STORM_OUTAGE=30 scripts/bench.sh 10000  # coordinator stays down 30 s before restart
#   BENCH_BIN=/tmp/old scripts/bench.sh 10000      # binaries from that dir, no build (a before/after)
#   BENCH_SERVE_ARGS="--max-concurrent-handshakes 100000" scripts/bench.sh 10000
#                                    # extra `serve` flags (e.g. the edge's caps, for a with/without)
#
# For each N it prints every figure together with the command that produced it, and appends
# one Markdown table row per N to $BENCH_RESULTS (default target/bench/results.md):
#   connect   time from starting `skoala-loadgen` until the coordinator's
#             skoala_agents_connected gauge reads N (registration with one N-use token included)
#   memory    coordinator VmRSS after connect minus before, total and per agent
#   idle CPU  coordinator utime+stime over BENCH_IDLE_SECS at the idle heartbeat rate (10 s)
#   storm     SIGKILL the coordinator with N connected, restart it (at once, or after
#             BENCH_STORM_OUTAGE seconds): time from the restart until the gauge reads N again,
#             failed attempts counted by the load generator, agents that gave up (must be 0)
#   bare      the same memory figure for `skoala-loadgen bare-server`, and the ratio
# Every process started here is bounded (watchdog) and killed on exit.
# Fan-out and the 1,000-cluster rollout need plans and a control plane: scripts/bench-plan.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ $# -gt 0 ]; then SIZES=("$@"); else SIZES=(1000 5000 10000); fi
IDLE_SECS=${BENCH_IDLE_SECS:-30}
CONNECT_DEADLINE=${BENCH_CONNECT_DEADLINE:-600}
STORM_DEADLINE=${BENCH_STORM_DEADLINE:-300}
STORM_OUTAGE=${BENCH_STORM_OUTAGE:-0}
SOURCE_ADDRS=${BENCH_SOURCE_ADDRS:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
PROCESS_BOUND=${BENCH_PROCESS_BOUND:-1800}
OUT=${BENCH_OUT:-$ROOT/target/bench}
RESULTS=${BENCH_RESULTS:-$OUT/results.md}
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
mkdir -p "$OUT"

# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

gauge() { { curl -s --max-time 5 "http://$METRICS/metrics" | awk '$1 == "skoala_agents_connected" { print $2 }'; } || true; }

serve() {
  spawn "$WORK/coordinator.$1" "$BIN/skoala-coordinator" serve --data-dir "$WORK/data" \
    --listen "$LISTEN" --metrics-listen "$METRICS" ${BENCH_SERVE_ARGS:-}
  COORD=$LAST_PID
  wait_line "$WORK/coordinator.$1.out" "skoala-coordinator metrics on " >/dev/null
}

if [ -n "${BENCH_BIN:-}" ]; then
  say "binaries from $BIN (BENCH_BIN; not built)"
else
  say "building release binaries"
  cargo build --release --quiet -p skoala-coordinator -p skoala-sim -p skoala-loadgen -p skoalactl
fi

say "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr), open files (hard) $(ulimit -Hn)"
say "cpu: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
if [ ! -f "$RESULTS" ]; then
  {
    echo "| N | connect s | coord RSS MiB | coord KiB/agent | idle CPU % | storm s | storm failed attempts | gave up | bare KiB/conn | ratio |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
  } >"$RESULTS"
fi

for N in "${SIZES[@]}"; do
  WORK=$(mktemp -d "$OUT/run-$N-XXXX")
  PORT=$((20000 + RANDOM % 20000))
  LISTEN=127.0.0.1:$PORT
  METRICS=127.0.0.1:$((PORT + 1))
  say ""
  say "== N = $N (work dir $WORK)"
  "$BIN/skoala-coordinator" init --data-dir "$WORK/data" >/dev/null
  CTL=("$BIN/skoalactl" --config "$WORK/data/admin.yaml" --endpoint "https://$LISTEN")

  # --- connect ---
  serve 1
  sleep 1
  RSS0=$(rss_kib "$COORD")
  TOKEN=$("${CTL[@]}" token create --uses "$N" --ttl 2h)
  LOADCMD="skoala-loadgen --coordinator https://$LISTEN --ca-file DATA/ca.pem --token \$TOKEN --agents $N --source-addrs $SOURCE_ADDRS"
  T0=$(now)
  export SKOALA_TOKEN=$TOKEN
  spawn "$WORK/load" "$BIN/skoala-loadgen" --coordinator "https://$LISTEN" \
    --ca-file "$WORK/data/ca.pem" --agents "$N" --source-addrs "$SOURCE_ADDRS" \
    --duration "${PROCESS_BOUND}s"
  LOAD=$LAST_PID
  if ! wait_value "$N" "$CONNECT_DEADLINE" gauge; then
    say "  connect: only $(gauge) of $N connected after ${CONNECT_DEADLINE}s; see $WORK"
    cleanup
    exit 1
  fi
  CONNECT_S=$(elapsed "$T0" "$(now)")
  figure "connect: all $N connected in" "${CONNECT_S} s" "$LOADCMD; poll skoala_agents_connected on http://$METRICS/metrics"
  figure "load generator: failed attempts while joining" "$(load_stat "$WORK/load" failed_attempts)" "last 'load ...' line of skoala-loadgen"
  sleep 5 # let registration garbage settle before reading memory
  RSS1=$(rss_kib "$COORD")
  COORD_MIB=$(awk -v a="$RSS1" 'BEGIN { printf "%.1f", a / 1024 }')
  PER=$(awk -v a="$RSS0" -v b="$RSS1" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')
  figure "coordinator RSS before / after connect" "$((RSS0 / 1024)) MiB / ${COORD_MIB} MiB" "grep VmRSS /proc/$COORD/status"
  figure "coordinator memory per agent" "${PER} KiB" "(RSS after - RSS before) / $N"
  C0=$(cpu_ticks "$COORD")
  sleep "$IDLE_SECS"
  C1=$(cpu_ticks "$COORD")
  HZ=$(getconf CLK_TCK)
  CPU=$(awk -v a="$C0" -v b="$C1" -v hz="$HZ" -v s="$IDLE_SECS" 'BEGIN { printf "%.1f", (b - a) / hz / s * 100 }')
  figure "coordinator CPU, idle (heartbeat 10 s, ping 15 s)" "${CPU} % of one core" "utime+stime from /proc/$COORD/stat over ${IDLE_SECS} s"

  # --- reconnect storm ---
  F0=$(load_stat "$WORK/load" failed_attempts)
  kill -9 "$COORD"
  wait "$COORD" 2>/dev/null || true
  sleep "$STORM_OUTAGE"
  T0=$(now)
  serve 2
  if ! wait_value "$N" "$STORM_DEADLINE" gauge; then
    say "  storm: only $(gauge) of $N back after ${STORM_DEADLINE}s; see $WORK"
    STORM_S=">${STORM_DEADLINE}"
  else
    STORM_S=$(elapsed "$T0" "$(now)")
  fi
  sleep 2
  F1=$(load_stat "$WORK/load" failed_attempts)
  GAVE_UP=$(load_stat "$WORK/load" gave_up)
  figure "storm: all $N back after SIGKILL+restart in" "${STORM_S} s" "kill -9 <coordinator>; sleep $STORM_OUTAGE; skoala-coordinator serve (same data dir, port); poll the gauge"
  figure "storm: failed attempts / agents gave up" "$((F1 - F0)) / $GAVE_UP" "failed_attempts, gave_up of skoala-loadgen"
  kill "$LOAD" 2>/dev/null || true
  wait "$LOAD" 2>/dev/null || true
  kill "$COORD" 2>/dev/null || true
  wait "$COORD" 2>/dev/null || true

  # --- bare transport ---
  spawn "$WORK/bare" "$BIN/skoala-loadgen" bare-server --data-dir "$WORK/data" --listen "$LISTEN"
  BARE=$LAST_PID
  wait_line "$WORK/bare.out" "bare-server listening on " >/dev/null
  sleep 1
  B0=$(rss_kib "$BARE")
  T0=$(now)
  export SKOALA_TOKEN=unused
  spawn "$WORK/load-bare" "$BIN/skoala-loadgen" --coordinator "https://$LISTEN" \
    --ca-file "$WORK/data/ca.pem" --agents "$N" --source-addrs "$SOURCE_ADDRS" \
    --duration "${PROCESS_BOUND}s"
  LOADB=$LAST_PID
  if ! wait_value "$N" "$CONNECT_DEADLINE" load_stat "$WORK/load-bare" connected; then
    say "  bare: only $(load_stat "$WORK/load-bare" connected) of $N connected; see $WORK"
  fi
  BARE_CONNECT_S=$(elapsed "$T0" "$(now)")
  sleep 5
  B1=$(rss_kib "$BARE")
  BPER=$(awk -v a="$B0" -v b="$B1" -v n="$N" 'BEGIN { printf "%.1f", (b - a) / n }')
  RATIO=$(awk -v a="$PER" -v b="$BPER" 'BEGIN { printf "%.2f", a / b }')
  figure "bare server: all $N connected in" "${BARE_CONNECT_S} s" "skoala-loadgen bare-server --data-dir DATA; skoala-loadgen ... (connected= of its status line)"
  figure "bare server RSS before / after" "$((B0 / 1024)) MiB / $((B1 / 1024)) MiB" "grep VmRSS /proc/$BARE/status"
  figure "bare memory per connection" "${BPER} KiB" "(RSS after - RSS before) / $N"
  figure "coordinator / bare memory per agent" "${RATIO}x (target <= 1.5x)" "${PER} / ${BPER}"
  kill "$LOADB" "$BARE" 2>/dev/null || true
  wait "$LOADB" "$BARE" 2>/dev/null || true

  echo "| $N | $CONNECT_S | $COORD_MIB | $PER | $CPU | $STORM_S | $((F1 - F0)) | $GAVE_UP | $BPER | $RATIO |" >>"$RESULTS"
  say "  row appended to $RESULTS"
done
