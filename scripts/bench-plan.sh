#!/usr/bin/env bash
# Plan benchmarks of issue 7 (the sibling of scripts/bench.sh, which measures connect, memory,
# idle CPU and the reconnect storm): fan-out and the 1,000-cluster rollout. Release builds;
# loopback only; every process is bounded (watchdog) and killed on exit.
#
#   scripts/bench-plan.sh                    # fan-out at N = 1000 5000 10000, then the rollout
#   scripts/bench-plan.sh 1000               # fan-out at one size, then the rollout
#   BENCH_ROLLOUT=0 scripts/bench-plan.sh 10000      # fan-out only
#   BENCH_FANOUT=0 scripts/bench-plan.sh             # rollout only
#   BENCH_ROLLOUT_N=200 BENCH_ROLLOUT_CONCURRENCY=10 scripts/bench-plan.sh   # a smaller rollout
#   BENCH_FANOUT=0 BENCH_ROLLOUT_FLEETS="1000 5000 10000" scripts/bench-plan.sh
#   BENCH_PERF=1 BENCH_ROLLOUT=0 scripts/bench-plan.sh 10000   # also `perf record` the coordinator
#                                            # during each fan-out (WORK/perf-fanout.data)
#                                            # the 1,000-cluster plan inside fleets of 1k/5k/10k
#   BENCH_BIN=/tmp/old scripts/bench-plan.sh 10000   # binaries from that dir, no build (an
#                                                     # earlier build, for a before/after)
#
# Both need a real control plane: an emulated cluster (`skoala-sim cluster`) with `skoala`
# installed by the real helm from `skoala-sim chart-repo` serving tests/charts, and a
# coordinator started with --kubeconfig of that cluster. The working clusters are
# `skoala-loadgen` agents whose synthetic skoala-init starts at 0.19.0.
#
#   fan-out   one task to all N at once. The control plane is already on the plan's version
#             (0.19.1), the plan selects every agent with canary 0, maxConcurrency 100% and
#             requireApproval: beforeWorkers, so it waits with nothing running; then
#             `skoalactl plan approve`. Latency of each agent = the time its Task arrived
#             (`skoala-loadgen --receipts`) minus the moment the script invoked `plan approve`;
#             p50/p99/max over the N. The coordinator's log splits it: approve → its
#             "tasks sent" line (the orchestrator's step, its SQLite write of N transitions
#             and the send loop; the line is written once per send loop, after it). The bare baseline: the same agents
#             against `skoala-loadgen bare-server`, `kill -USR1` sends one Task down every
#             stream; latency from the moment of the signal.
#   rollout   BENCH_ROLLOUT_N agents (1000), everything on 0.19.0, a plan to 0.19.1 with
#             canary 0, maxConcurrency BENCH_ROLLOUT_CONCURRENCY (50), requireApproval none,
#             each simulated upgrade taking BENCH_UPGRADE_TIME (2 s). Timed from the plan's
#             events (one clock): the control plane's own helm upgrade (reported separately),
#             then the workers from the first worker task sent to the plan's `succeeded`,
#             against the ideal ceil(N / concurrency) × upgrade time. With a fleet size F
#             (BENCH_ROLLOUT_FLEETS, default N) above N, F - N more agents from a second
#             generator are connected, already on 0.19.1 and not selected (the plan selects
#             bench=rollout; it is applied with --force, since the fleet is skewed before it):
#             the same plan, with the orchestrator looking at a fleet of F.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ $# -gt 0 ]; then SIZES=("$@"); else SIZES=(1000 5000 10000); fi
FANOUT=${BENCH_FANOUT:-1}
ROLLOUT=${BENCH_ROLLOUT:-1}
ROLLOUT_N=${BENCH_ROLLOUT_N:-1000}
ROLLOUT_CONCURRENCY=${BENCH_ROLLOUT_CONCURRENCY:-50}
read -r -a ROLLOUT_FLEETS <<<"${BENCH_ROLLOUT_FLEETS:-$ROLLOUT_N}"
UPGRADE_TIME=${BENCH_UPGRADE_TIME:-2}
CONNECT_DEADLINE=${BENCH_CONNECT_DEADLINE:-600}
PLAN_DEADLINE=${BENCH_PLAN_DEADLINE:-900}
SOURCE_ADDRS=${BENCH_SOURCE_ADDRS:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
PROCESS_BOUND=${BENCH_PROCESS_BOUND:-1800}
OUT=${BENCH_OUT:-$ROOT/target/bench}
RESULTS=${BENCH_RESULTS:-$OUT/results-plan.md}
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
HELM=${SKOALA_TOOLS_BIN:-$ROOT/.tools/bin}/helm
FROM=0.19.0
TO=0.19.1
mkdir -p "$OUT"
[ -x "$HELM" ] || { echo "bench-plan: $HELM missing; run scripts/install-tools.sh" >&2; exit 1; }

FIGURE_WIDTH=52
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
now_us() { echo $(($(date +%s%N) / 1000)); }

lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }

# Latency percentiles of a receipts file against T0 (µs): "p50 p99 max first n" in ms.
percentiles() {
  python3 - "$1" "$2" <<'EOF'
import sys
t0 = int(sys.argv[2])
lat = sorted((int(l.split()[0]) - t0) / 1000 for l in open(sys.argv[1]) if l.strip())
n = len(lat)
if n == 0:
    print("nan nan nan nan 0"); sys.exit()
pick = lambda q: lat[min(n - 1, max(0, -(-q * n // 100) - 1))]
print(f"{pick(50):.0f} {pick(99):.0f} {lat[-1]:.0f} {lat[0]:.0f} {n}")
EOF
}

# The control plane: emulated cluster + chart repository + `skoala` at $1 installed by helm.
control_plane() {
  local version=$1
  spawn "$WORK/repo" "$BIN/skoala-sim" chart-repo --dir "$ROOT/tests/charts"
  REPO_URL=$(wait_line "$WORK/repo.out" "listening on ")
  spawn "$WORK/cp" "$BIN/skoala-sim" cluster --name control-plane --kubeconfig-out "$WORK/cp.kubeconfig"
  wait_line "$WORK/cp.out" "listening on " >/dev/null
  mkdir -p "$WORK/helm"
  HELM_CONFIG_HOME=$WORK/helm/config HELM_CACHE_HOME=$WORK/helm/cache HELM_DATA_HOME=$WORK/helm/data \
    "$HELM" upgrade --install --create-namespace -n skoala-system skoala skoala --repo "$REPO_URL" \
    --version "$version" --wait --timeout 120s --kubeconfig "$WORK/cp.kubeconfig" >"$WORK/helm-install.log" 2>&1
}

# A coordinator on a fresh data dir with that control plane, and N agents at $FROM.
# A coordinator on a fresh data dir with that control plane, and N agents at $FROM; extra
# arguments go to the load generator; TOKEN_USES (default N) leaves room for more agents.
fleet() {
  local n=$1 upgrade_time=$2
  shift 2
  PORT=$((20000 + RANDOM % 20000))
  LISTEN=127.0.0.1:$PORT
  METRICS=127.0.0.1:$((PORT + 1))
  "$BIN/skoala-coordinator" init --data-dir "$WORK/data" >/dev/null
  spawn "$WORK/coordinator" "$BIN/skoala-coordinator" serve --data-dir "$WORK/data" \
    --listen "$LISTEN" --metrics-listen "$METRICS" --kubeconfig "$WORK/cp.kubeconfig" --helm "$HELM"
  COORD=$LAST_PID
  wait_line "$WORK/coordinator.out" "skoala-coordinator metrics on " >/dev/null
  CTL=("$BIN/skoalactl" --config "$WORK/data/admin.yaml" --endpoint "https://$LISTEN")
  SKOALA_TOKEN=$("${CTL[@]}" token create --uses "${TOKEN_USES:-$n}" --ttl 2h 2>/dev/null)
  export SKOALA_TOKEN
  spawn "$WORK/load" "$BIN/skoala-loadgen" --coordinator "https://$LISTEN" \
    --ca-file "$WORK/data/ca.pem" --agents "$n" --source-addrs "$SOURCE_ADDRS" \
    --initial-version "$FROM" --upgrade-time "${upgrade_time}s" --receipts "$WORK/receipts" \
    --duration "${PROCESS_BOUND}s" "$@"
  LOAD=$LAST_PID
  if ! wait_value "$n" "$CONNECT_DEADLINE" load_stat "$WORK/load" connected; then
    say "  only $(load_stat "$WORK/load" connected) of $n connected after ${CONNECT_DEADLINE}s; see $WORK"
    exit 1
  fi
}

# `{skoala: <sha256>, skoala-init: <sha256>}` of $1's charts: the test repository is plain
# http, so a plan must pin them (spec.repository.digests).
digests() {
  local version=$1 dir="$WORK/digests-$1" out=""
  mkdir -p "$dir"
  for chart in skoala skoala-init; do
    [ -f "$dir/$chart-$version.tgz" ] ||
      "$HELM" pull "$chart" --repo "$REPO_URL" --version "$version" -d "$dir" >/dev/null
    out="$out${out:+, }$chart: $(sha256sum "$dir/$chart-$version.tgz" | cut -d' ' -f1)"
  done
  echo "{$out}"
}

plan_doc() {
  local name=$1 version=$2 extra=$3
  cat <<EOF
apiVersion: fleet.skoala.io/v1alpha1
kind: UpgradePlan
metadata: {name: $name}
spec:
  version: $version
  chartSource: repo
  repository: {name: skoala, url: $REPO_URL, digests: $(digests "$version")}
$extra
EOF
}

# Applies $1 (a file; more arguments go to `plan apply`), retrying while the coordinator has
# not seen every inventory yet.
apply() {
  local deadline=$((SECONDS + 120))
  until "${CTL[@]}" plan apply -f "$@" >"$WORK/apply.log" 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      say "  plan apply failed: $(cat "$WORK/apply.log")"
      exit 1
    fi
    sleep 1
  done
}

phase() { "${CTL[@]}" plan get "$1" -o json 2>/dev/null | jq -r .phase; }

if [ -n "${BENCH_BIN:-}" ]; then
  say "binaries from $BIN (BENCH_BIN; not built)"
else
  say "building release binaries"
  cargo build --release --quiet -p skoala-coordinator -p skoala-sim -p skoala-loadgen -p skoalactl
fi
say "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$FANOUT" = 1 ]; then
  [ -f "$RESULTS" ] || {
    echo "| N | coordinator p50 / p99 / max (ms), from the CLI's start | the same from the approval's record | first received (ms) | all handed to sessions (ms) | bare p50 / p99 / max (ms) | p99 ratio (CLI) | p99 ratio (approval) |"
    echo "|---|---|---|---|---|---|---|---|"
  } >"$RESULTS"
  for N in "${SIZES[@]}"; do
    WORK=$(mktemp -d "$OUT/fanout-$N-XXXX")
    say ""
    say "== fan-out, N = $N (work dir $WORK)"
    control_plane "$TO"
    # Long upgrades: the agents' progress messages must not finish before the last delivery.
    fleet "$N" 120
    plan_doc fanout "$TO" "  requireApproval: beforeWorkers
  strategy: {canary: 0, maxConcurrency: 100%, maxFailures: 0}" >"$WORK/fanout.yaml"
    apply "$WORK/fanout.yaml"
    wait_value awaitingApproval 120 phase fanout || { say "  plan never awaited approval: $(phase fanout)"; exit 1; }
    if [ "${BENCH_PERF:-0}" = 1 ]; then
      # Started before T0 and given a moment to attach, so the profile covers the whole
      # fan-out; the figures then carry perf's overhead.
      perf record -F 999 -g -p "$COORD" -o "$WORK/perf-fanout.data" -- sleep 4 >"$WORK/perf.log" 2>&1 &
      sleep 1
    fi
    T0=$(now_us)
    "${CTL[@]}" plan approve fanout >/dev/null
    T1=$(now_us)
    if ! wait_value "$N" 300 lines "$WORK/receipts"; then
      say "  only $(lines "$WORK/receipts") of $N tasks arrived; see $WORK"
    fi
    read -r P50 P99 MAX FIRST GOT < <(percentiles "$WORK/receipts" "$T0")
    # The coordinator's own T0: when it recorded the approval (the `plan.approved` event), i.e.
    # after the CLI's start, its mTLS handshake and the RPC. That is the trigger comparable
    # with the bare server's SIGUSR1; the figure above includes the operator's tool.
    "${CTL[@]}" events --plan fanout -o json >"$WORK/events.json"
    T0C=$(python3 - "$WORK/events.json" <<'EOF'
import sys, json
from datetime import datetime
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ap = [e["at"] for e in ev if e["kind"] == "plan.approved"]
print(int(datetime.fromisoformat(ap[0].replace("Z", "+00:00")).timestamp() * 1e6) if ap else 0)
EOF
    )
    read -r C50 C99 CMAX CFIRST _ < <(percentiles "$WORK/receipts" "$T0C")
    # The coordinator's own log: its 'tasks sent' line (one per send loop, `tasks=K`) is
    # written right after the loop, so the first marks the end of handing tasks to sessions.
    read -r SENT_DONE SENT_LOGGED SENT_N < <(python3 - "$WORK/coordinator.err" "$T0" <<'EOF'
import sys, re
from datetime import datetime
t0 = int(sys.argv[2])
ts, n = [], 0
for line in open(sys.argv[1], errors="replace"):
    # "tasks sent ... tasks=K" (one per loop); "task sent" (one per task) from older builds.
    k = re.search(r"\btasks sent\b.*\btasks=(\d+)", line)
    one = "task sent" in line and "target=control-plane" not in line
    m = re.match(r"(\S+Z)", line)
    if m and (k and "first_target=control-plane" not in line or one):
        ts.append(int(datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp() * 1e6))
        n += int(k.group(1)) if k else 1
print(f"{(min(ts) - t0) / 1000:.0f} {(max(ts) - min(ts)) / 1000:.0f} {n}" if ts else "nan nan 0")
EOF
    )
    figure "coordinator fan-out to $GOT of $N: p50 / p99 / max" "$P50 / $P99 / $MAX ms" "T0 = just before \`skoalactl plan approve fanout\` (it returned after $(((T1 - T0) / 1000)) ms); receipt times from skoala-loadgen --receipts"
    figure "  first task received (orchestrator work before it)" "$FIRST ms" "min of the receipts - T0"
    figure "coordinator fan-out from the approval's record: p50 / p99 / max" "$C50 / $C99 / $CMAX ms (first $CFIRST ms)" "T0 = 'at' of the plan.approved event (skoalactl events --plan fanout -o json), $(((T0C - T0) / 1000)) ms after the CLI started"
    figure "  all $SENT_N tasks handed to the sessions" "$SENT_DONE ms" "first 'tasks sent' line of the coordinator's log (written after the send loop) - T0"
    kill "$LOAD" "$COORD" 2>/dev/null || true
    wait "$LOAD" "$COORD" 2>/dev/null || true

    # --- the bare baseline: same agents, same TLS, one Task per stream on SIGUSR1 ---
    spawn "$WORK/bare" "$BIN/skoala-loadgen" bare-server --data-dir "$WORK/data" --listen "$LISTEN"
    BARE=$LAST_PID
    wait_line "$WORK/bare.out" "bare-server listening on " >/dev/null
    SKOALA_TOKEN=unused
    spawn "$WORK/load-bare" "$BIN/skoala-loadgen" --coordinator "https://$LISTEN" \
      --ca-file "$WORK/data/ca.pem" --agents "$N" --source-addrs "$SOURCE_ADDRS" \
      --initial-version "$FROM" --upgrade-time 120s --receipts "$WORK/receipts-bare" \
      --duration "${PROCESS_BOUND}s"
    LOADB=$LAST_PID
    wait_value "$N" "$CONNECT_DEADLINE" load_stat "$WORK/load-bare" connected ||
      say "  bare: only $(load_stat "$WORK/load-bare" connected) of $N connected"
    sleep 2 # the last sessions' registration in the bare server's list
    T0=$(now_us)
    kill -USR1 "$BARE"
    wait_value "$N" 300 lines "$WORK/receipts-bare" || say "  bare: only $(lines "$WORK/receipts-bare") of $N tasks arrived"
    read -r B50 B99 BMAX BFIRST BGOT < <(percentiles "$WORK/receipts-bare" "$T0")
    BSEND=$(wait_line "$WORK/bare.out" "bare-server fanout 1 ")
    figure "bare fan-out to $BGOT of $N: p50 / p99 / max" "$B50 / $B99 / $BMAX ms" "T0 = just before kill -USR1 <skoala-loadgen bare-server>; same receipts"
    figure "  bare server's own stamps" "$BSEND" "its 'bare-server fanout' line"
    RATIO=$(awk -v a="$P99" -v b="$B99" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    RATIOC=$(awk -v a="$C99" -v b="$B99" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    figure "coordinator / bare p99, from the CLI's start" "${RATIO}x (p99 < 1000 ms)" "$P99 / $B99"
    figure "coordinator / bare p99, from the approval" "${RATIOC}x (target <= 1.5x)" "$C99 / $B99"
    kill "$LOADB" "$BARE" 2>/dev/null || true
    wait "$LOADB" "$BARE" 2>/dev/null || true
    echo "| $N | $P50 / $P99 / $MAX | $C50 / $C99 / $CMAX | $FIRST | $SENT_DONE | $B50 / $B99 / $BMAX | $RATIO | $RATIOC |" >>"$RESULTS"
    cleanup
  done
fi

if [ "$ROLLOUT" = 1 ]; then
  [ -f "$RESULTS" ] && grep -q '^| rollout N |' "$RESULTS" || {
    echo ""
    echo "| rollout N | connected fleet | maxConcurrency | upgrade s | control plane (ms) | workers (ms) | ideal (ms) | over ideal | skew |"
    echo "|---|---|---|---|---|---|---|---|---|"
  } >>"$RESULTS"
for F in "${ROLLOUT_FLEETS[@]}"; do
  N=$ROLLOUT_N
  WORK=$(mktemp -d "$OUT/rollout-$N-of-$F-XXXX")
  say ""
  say "== rollout: $N clusters of a fleet of $F, maxConcurrency $ROLLOUT_CONCURRENCY, ${UPGRADE_TIME} s per upgrade (work dir $WORK)"
  control_plane "$FROM"
  TOKEN_USES=$F fleet "$N" "$UPGRADE_TIME" --label bench=rollout
  FORCE=()
  if [ "$F" -gt "$N" ]; then
    spawn "$WORK/load-idle" "$BIN/skoala-loadgen" --coordinator "https://$LISTEN" \
      --ca-file "$WORK/data/ca.pem" --agents $((F - N)) --source-addrs "$SOURCE_ADDRS" \
      --initial-version "$TO" --label bench=idle --name-prefix idle --duration "${PROCESS_BOUND}s"
    if ! wait_value $((F - N)) "$CONNECT_DEADLINE" load_stat "$WORK/load-idle" connected; then
      say "  only $(load_stat "$WORK/load-idle" connected) of $((F - N)) idle agents connected; see $WORK"
      exit 1
    fi
    FORCE=(--force)
  fi
  plan_doc rollout "$TO" "  clusters: {matchLabels: {bench: rollout}}
  strategy: {canary: 0, maxConcurrency: $ROLLOUT_CONCURRENCY, maxFailures: 0}" >"$WORK/rollout.yaml"
  T0=$(now_us)
  apply "$WORK/rollout.yaml" "${FORCE[@]}"
  # Every `plan get` builds a status over the whole fleet: poll once a second, not five times,
  # so the benchmark's own polling does not compete with the orchestrator at 10,000. The
  # figures come from the plan's events, not from when the poll saw `succeeded`.
  if ! POLL_SECS=1 wait_value succeeded "$PLAN_DEADLINE" phase rollout; then
    say "  the plan did not succeed: $(phase rollout)"
    "${CTL[@]}" plan get rollout | head -20
    exit 1
  fi
  T1=$(now_us)
  "${CTL[@]}" events --plan rollout -o json >"$WORK/events.json"
  read -r CP_MS WORKERS_MS RESULTS_N < <(python3 - "$WORK/events.json" <<'EOF'
import sys, json
from datetime import datetime
at = lambda e: datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp()
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cp = [e for e in ev if e["kind"] == "task.result" and e["target"] == "control-plane"]
sent = [at(e) for e in ev if e["kind"] == "task.sent" and e["target"] != "control-plane"]
done = [at(e) for e in ev if e["kind"] == "plan.phase" and e["state"] == "succeeded"]
results = [e for e in ev if e["kind"] == "task.result" and e["target"] != "control-plane"]
workers = (done[-1] - min(sent)) * 1000 if sent and done else float("nan")
print(f"{cp[0]['durationMs'] if cp else 'nan'} {workers:.0f} {len(results)}")
EOF
  )
  IDEAL=$(awk -v n="$N" -v c="$ROLLOUT_CONCURRENCY" -v t="$UPGRADE_TIME" 'BEGIN { printf "%d", (int((n + c - 1) / c)) * t * 1000 }')
  OVER=$(awk -v w="$WORKERS_MS" -v i="$IDEAL" 'BEGIN { printf "%+.1f", (w - i) / i * 100 }')
  figure "rollout: apply → succeeded (all)" "$(((T1 - T0) / 1000)) ms" "skoalactl plan apply -f rollout.yaml; poll skoalactl plan get rollout until succeeded"
  figure "  control-plane upgrade (real helm, subtracted)" "$CP_MS ms" "durationMs of the control plane's task.result (skoalactl events --plan rollout -o json)"
  figure "  workers: first task sent → succeeded" "$WORKERS_MS ms ($RESULTS_N results)" "'at' of the first worker task.sent and of plan.phase succeeded (same events)"
  figure "  ideal ceil($N/$ROLLOUT_CONCURRENCY) x ${UPGRADE_TIME} s / over ideal" "$IDEAL ms / ${OVER} % (target <= +5 %)" "workers / ideal - 1"
  SKEW=$("${CTL[@]}" skew >/dev/null 2>&1 && echo "none" || echo "SKEWED")
  figure "  skew after the plan" "$SKEW" "skoalactl skew (exit 0 = none)"
  echo "| $N | $F | $ROLLOUT_CONCURRENCY | $UPGRADE_TIME | $CP_MS | $WORKERS_MS | $IDEAL | $OVER % | $SKEW |" >>"$RESULTS"
  cleanup
done
fi
say ""
say "rows appended to $RESULTS"
