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
#   BENCH_STORE=both scripts/bench-plan.sh   # the rollout in a fleet of 10,000 on SQLite, then
#                                            # the kube store section below (no fan-out)
#   BENCH_STORE=kube BENCH_KUBE_FLEET=1000 BENCH_REST_SECS=30 scripts/bench-plan.sh  # kube only
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
#
#   kube      (BENCH_STORE=kube or both; needs SKOALA_KUBE_DIR) the coordinator on the kube
#             store against a real API server: `skoala-realkube up` with an audit policy that
#             logs the write requests of the coordinator's ServiceAccount; the coordinator
#             chart installed with store.type=kube (ServiceAccount, RBAC, CRDs, two Pods kwok
#             keeps Running) and `skoala` at 0.19.0 in the same cluster; two `serve --store
#             kube` replicas as those Pods, with a token of that ServiceAccount, on one
#             address (the standby binds it only once it leads). BENCH_KUBE_FLEET agents
#             (10,000; BENCH_ROLLOUT_N of them selected). Figures: registration; API writes
#             at rest (BENCH_REST_SECS, 180, after BENCH_REST_SETTLE, 30) and during the
#             rollout (mean and peak per second, by verb and resource); the rollout's
#             overhead over ideal as above; the largest object of each kind; then a second
#             rollout (to 0.19.2) whose leader is SIGKILLed once a quarter of its clusters
#             have their task: kill → standby serving, → every agent back (the new leader's
#             skoala_agents_connected), → the next task received, operations received twice.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ $# -gt 0 ]; then SIZES=("$@"); else SIZES=(1000 5000 10000); fi
STORE=${BENCH_STORE:-sqlite}
case "$STORE" in
  sqlite) ;;
  both) BENCH_FANOUT=${BENCH_FANOUT:-0} BENCH_ROLLOUT_FLEETS=${BENCH_ROLLOUT_FLEETS:-${BENCH_KUBE_FLEET:-10000}} ;;
  kube) BENCH_FANOUT=0 BENCH_ROLLOUT=0 ;;
  *) echo "bench-plan: BENCH_STORE is sqlite, kube or both, not $STORE" >&2; exit 1 ;;
esac
FANOUT=${BENCH_FANOUT:-1}
ROLLOUT=${BENCH_ROLLOUT:-1}
KUBE_FLEET=${BENCH_KUBE_FLEET:-10000}
REST_SECS=${BENCH_REST_SECS:-180}
REST_SETTLE=${BENCH_REST_SETTLE:-30}
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
  # The metrics port opens before the store is loaded; the agents' port only after it.
  wait_line "$WORK/coordinator.out" "skoala-coordinator listening on " >/dev/null
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

# The rollout plan (BENCH_ROLLOUT_N clusters labelled bench=rollout), applied with FORCE and
# waited for; sets T0 (apply) and T1 (seen succeeded). Every `plan get` builds a status over the
# whole fleet: poll once a second, not five times, so the benchmark's own polling does not
# compete with the orchestrator at 10,000. The figures come from the plan's events, not from
# when the poll saw `succeeded`.
run_rollout() {
  plan_doc rollout "$TO" "  clusters: {matchLabels: {bench: rollout}}
  strategy: {canary: 0, maxConcurrency: $ROLLOUT_CONCURRENCY, maxFailures: 0}" >"$WORK/rollout.yaml"
  T0=$(now_us)
  apply "$WORK/rollout.yaml" "${FORCE[@]}"
  if ! POLL_SECS=1 wait_value succeeded "$PLAN_DEADLINE" phase rollout; then
    say "  the plan did not succeed: $(phase rollout)"
    "${CTL[@]}" plan get rollout | head -20
    exit 1
  fi
  T1=$(now_us)
}

# The figures of a finished rollout plan $1 of $2 clusters, applied at $3 and seen succeeded at
# $4 (µs), from the plan's events (one clock): sets CP_MS, WORKERS_MS, RESULTS_N, IDEAL, OVER
# and prints them.
rollout_figures() {
  local plan=$1 n=$2 t0=$3 t1=$4
  "${CTL[@]}" events --plan "$plan" -o json >"$WORK/events-$plan.json"
  read -r CP_MS WORKERS_MS RESULTS_N < <(python3 - "$WORK/events-$plan.json" <<'EOF'
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
  IDEAL=$(awk -v n="$n" -v c="$ROLLOUT_CONCURRENCY" -v t="$UPGRADE_TIME" 'BEGIN { printf "%d", (int((n + c - 1) / c)) * t * 1000 }')
  OVER=$(awk -v w="$WORKERS_MS" -v i="$IDEAL" 'BEGIN { printf "%+.1f", (w - i) / i * 100 }')
  figure "$plan: apply → succeeded (all)" "$(((t1 - t0) / 1000)) ms" "skoalactl plan apply -f $plan.yaml; poll skoalactl plan get $plan until succeeded"
  figure "  control-plane upgrade (real helm, subtracted)" "$CP_MS ms" "durationMs of the control plane's task.result (skoalactl events --plan $plan -o json)"
  figure "  workers: first task sent → succeeded" "$WORKERS_MS ms ($RESULTS_N results)" "'at' of the first worker task.sent and of plan.phase succeeded (same events)"
  figure "  ideal ceil($n/$ROLLOUT_CONCURRENCY) x ${UPGRADE_TIME} s / over ideal" "$IDEAL ms / ${OVER} % (target <= +5 %)" "workers / ideal - 1"
}

if [ -n "${BENCH_BIN:-}" ]; then
  say "binaries from $BIN (BENCH_BIN; not built)"
else
  say "building release binaries"
  cargo build --release --quiet -p skoala-coordinator -p skoala-sim -p skoala-loadgen -p skoalactl -p skoala-realkube
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
  run_rollout
  rollout_figures rollout "$N" "$T0" "$T1"
  SKEW=$("${CTL[@]}" skew >/dev/null 2>&1 && echo "none" || echo "SKEWED")
  figure "  skew after the plan" "$SKEW" "skoalactl skew (exit 0 = none)"
  echo "| $N | $F | $ROLLOUT_CONCURRENCY | $UPGRADE_TIME | $CP_MS | $WORKERS_MS | $IDEAL | $OVER % | $SKEW |" >>"$RESULTS"
  cleanup
done
fi

# --- the kube store (issue 15): a real API server, two coordinator replicas -------------------

# The audit policy: write requests of the coordinator's ServiceAccount, at Metadata (no
# bodies), once per request (at ResponseComplete). Nothing else is logged.
audit_policy() {
  cat <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["system:serviceaccount:$KUBE_NS:$KUBE_SA"]
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF
}

# Writes in the audit log $1 between $2 and $3 (µs): "total seconds mean/s peak/s" on the
# first line, then one "count verb resource[/subresource] {code: count}" line per kind, most
# first. Every request counts, refused ones too (a 409 is a round trip to etcd all the same).
audit_writes() {
  python3 - "$1" "$2" "$3" <<'EOF'
import sys, json, collections
from datetime import datetime
t0, t1 = int(sys.argv[2]) / 1e6, int(sys.argv[3]) / 1e6
per_s, kinds, codes = collections.Counter(), collections.Counter(), collections.defaultdict(collections.Counter)
for line in open(sys.argv[1], errors="replace"):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    t = datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
    if not t0 <= t < t1:
        continue
    o = e.get("objectRef", {})
    kind = f'{e["verb"]} {o.get("resource", "?")}' + (f'/{o["subresource"]}' if o.get("subresource") else "")
    # Access reviews (helm's, ours) are answered, not stored: listed, not counted.
    if not o.get("resource", "").endswith("reviews"):
        per_s[int(t - t0)] += 1
    kinds[kind] += 1
    codes[kind][e.get("responseStatus", {}).get("code", 0)] += 1
secs = max(t1 - t0, 1e-9)
total = sum(per_s.values())
print(f"{total} {secs:.0f} {total / secs:.2f} {max(per_s.values(), default=0)}")
for k, n in kinds.most_common():
    print(f"{n} {k} {dict(codes[k])}")
EOF
}

# The largest object of each kind the coordinator keeps in its namespace, in bytes of its JSON.
largest_objects() {
  for kind in upgradeplans fleetclusters fleetlogs configmaps secrets; do
    "$KUBECTL" --kubeconfig "$WORK/admin.kubeconfig" -n "$KUBE_NS" get "$kind" -o json |
      python3 -c '
import sys, json
# Not ours: the CA bundle of every namespace, and helm release records of the chart install.
items = [i for i in json.load(sys.stdin)["items"]
         if i["metadata"]["name"] != "kube-root-ca.crt" and not i["metadata"]["name"].startswith("sh.helm.release.")]
big = max(items, key=lambda i: len(json.dumps(i, separators=(",", ":"))), default=None)
size = len(json.dumps(big, separators=(",", ":"))) if big else 0
name = big["metadata"]["name"] if big else "-"
print(f"{sys.argv[1]}: {len(items)} objects, largest {size} bytes ({name})")' "$kind"
  done
}

# `skoala_agents_connected` of the coordinator whose metrics listen on $1.
agents_connected() {
  curl -s --max-time 5 "http://$1/metrics" | awk '$1 == "skoala_agents_connected" { print $2 }'
}

# Receipts written at or after $2 (µs) in file $1: "count first_µs".
receipts_after() {
  awk -v t="$2" '$1 >= t { n++; if (!f || $1 < f) f = $1 } END { printf "%d %.0f\n", n, f }' "$1"
}

# One coordinator replica on the kube store as Pod $2 (a real Pod object the chart made), with
# its own data dir (a cache) and metrics port $3, on the shared agents' address $LISTEN.
replica() {
  local name=$1 pod=$2 metrics=$3
  POD_NAME=$pod POD_NAMESPACE=$KUBE_NS spawn "$WORK/$name" "$BIN/skoala-coordinator" serve \
    --store kube --data-dir "$WORK/data-$name" --kubeconfig "$WORK/sa.kubeconfig" \
    --listen "$LISTEN" --metrics-listen "$metrics" --helm "$HELM"
}

if [ "$STORE" = kube ] || [ "$STORE" = both ]; then
  : "${SKOALA_KUBE_DIR:?the kube store benchmark needs SKOALA_KUBE_DIR (scripts/install-kube.sh)}"
  KUBECTL=${SKOALA_TOOLS_BIN:-$ROOT/.tools/bin}/kubectl
  KUBE_NS=skoala-fleet
  KUBE_SA=skoala-fleet-coordinator
  F=$KUBE_FLEET
  N=$ROLLOUT_N
  WORK=$(mktemp -d "$OUT/kube-$N-of-$F-XXXX")
  say ""
  say "== kube store: $F agents, rollouts of $N at maxConcurrency $ROLLOUT_CONCURRENCY, ${UPGRADE_TIME} s per upgrade (work dir $WORK)"
  audit_policy >"$WORK/audit-policy.yaml"
  spawn "$WORK/realkube" "$BIN/skoala-realkube" up --name control-plane \
    --kubeconfig-out "$WORK/admin.kubeconfig" --dir "$WORK/kube" --audit-policy "$WORK/audit-policy.yaml"
  wait_line "$WORK/realkube.out" "cluster control-plane ready" 300 >/dev/null
  AUDIT=$WORK/kube/audit.log
  K=("$KUBECTL" --kubeconfig "$WORK/admin.kubeconfig")
  spawn "$WORK/repo" "$BIN/skoala-sim" chart-repo --dir "$ROOT/tests/charts"
  REPO_URL=$(wait_line "$WORK/repo.out" "listening on ")
  mkdir -p "$WORK/helm"
  export HELM_CONFIG_HOME=$WORK/helm/config HELM_CACHE_HOME=$WORK/helm/cache HELM_DATA_HOME=$WORK/helm/data
  "$HELM" upgrade --install --create-namespace -n skoala-system skoala skoala --repo "$REPO_URL" \
    --version "$FROM" --wait --timeout 180s --kubeconfig "$WORK/admin.kubeconfig" >"$WORK/helm-install.log" 2>&1
  # The coordinator chart: its ServiceAccount, RBAC and CRDs, and two Pods (kwok runs them as
  # objects only) whose names the two replicas carry.
  "$HELM" install skoala-fleet "$ROOT/charts/skoala-fleet-coordinator" -n "$KUBE_NS" --create-namespace \
    --set store.type=kube --kubeconfig "$WORK/admin.kubeconfig" >"$WORK/helm-coordinator.log" 2>&1
  wait_value 2 120 sh -c "\"$KUBECTL\" --kubeconfig \"$WORK/admin.kubeconfig\" -n $KUBE_NS get pods -o name | wc -l" ||
    { say "  the chart's two Pods did not appear"; exit 1; }
  read -r POD_A POD_B < <("${K[@]}" -n "$KUBE_NS" get pods -o jsonpath='{.items[*].metadata.name}{"\n"}')
  "${K[@]}" config view --raw --minify >"$WORK/sa.kubeconfig"
  SA_TOKEN=$("${K[@]}" -n "$KUBE_NS" create token "$KUBE_SA" --duration 4h)
  "$KUBECTL" --kubeconfig "$WORK/sa.kubeconfig" config set-credentials coordinator --token "$SA_TOKEN" >/dev/null
  "$KUBECTL" --kubeconfig "$WORK/sa.kubeconfig" config set-context --current --user coordinator >/dev/null
  KC=(--store kube --namespace "$KUBE_NS" --kubeconfig "$WORK/sa.kubeconfig")
  "$BIN/skoala-coordinator" init "${KC[@]}" >/dev/null
  "$BIN/skoala-coordinator" show admin-config "${KC[@]}" >"$WORK/admin.yaml"
  "$BIN/skoala-coordinator" show ca "${KC[@]}" >"$WORK/ca.pem"

  PORT=$((20000 + RANDOM % 20000))
  LISTEN=127.0.0.1:$PORT
  METRICS_A=127.0.0.1:$((PORT + 1))
  METRICS_B=127.0.0.1:$((PORT + 2))
  replica a "$POD_A" "$METRICS_A"
  LEADER=$LAST_PID
  wait_line "$WORK/a.out" "skoala-coordinator listening on " 180 >/dev/null
  replica b "$POD_B" "$METRICS_B"
  wait_line "$WORK/b.out" "skoala-coordinator metrics on " 180 >/dev/null
  CTL=("$BIN/skoalactl" --config "$WORK/admin.yaml" --endpoint "https://$LISTEN")
  SKOALA_TOKEN=$("${CTL[@]}" token create --uses "$F" --ttl 4h 2>/dev/null)
  export SKOALA_TOKEN
  T_REG=$(now_us)
  spawn "$WORK/load" "$BIN/skoala-loadgen" --coordinator "https://$LISTEN" \
    --ca-file "$WORK/ca.pem" --agents "$N" --source-addrs "$SOURCE_ADDRS" \
    --initial-version "$FROM" --upgrade-time "${UPGRADE_TIME}s" --receipts "$WORK/receipts" \
    --label bench=rollout --duration "${PROCESS_BOUND}s"
  LOAD=$LAST_PID
  if [ "$F" -gt "$N" ]; then
    spawn "$WORK/load-idle" "$BIN/skoala-loadgen" --coordinator "https://$LISTEN" \
      --ca-file "$WORK/ca.pem" --agents $((F - N)) --source-addrs "$SOURCE_ADDRS" \
      --initial-version "$TO" --label bench=idle --name-prefix idle --duration "${PROCESS_BOUND}s"
  fi
  if ! wait_value "$F" "$CONNECT_DEADLINE" agents_connected "$METRICS_A"; then
    say "  only $(agents_connected "$METRICS_A") of $F agents connected after ${CONNECT_DEADLINE}s; see $WORK"
    exit 1
  fi
  T_CONN=$(now_us)
  audit_writes "$AUDIT" "$T_REG" "$T_CONN" >"$WORK/writes-registration.txt"
  read -r W_TOTAL _ _ W_PEAK < <(head -1 "$WORK/writes-registration.txt")
  figure "registration of $F new agents (one $F-use token)" "$(((T_CONN - T_REG) / 1000)) ms, $W_TOTAL API writes (peak $W_PEAK/s)" "loadgen start → the leader's skoala_agents_connected = $F; writes from the audit log"
  say "  load average $(cut -d' ' -f1-3 /proc/loadavg)"

  # At rest: everyone connected and idle; the registration's stragglers settle first.
  sleep "$REST_SETTLE"
  T_R0=$(now_us)
  sleep "$REST_SECS"
  T_R1=$(now_us)
  audit_writes "$AUDIT" "$T_R0" "$T_R1" >"$WORK/writes-rest.txt"
  read -r W_TOTAL W_SECS W_MEAN W_PEAK < <(head -1 "$WORK/writes-rest.txt")
  figure "API writes at rest, $F agents idle" "$W_MEAN/s ($W_TOTAL in $W_SECS s, peak $W_PEAK/s)" "audit log of $KUBE_SA, ${REST_SECS} s after ${REST_SETTLE} s settling (estimate ≈ 1/s)"
  sed 's/^/      /' "$WORK/writes-rest.txt" | tail -n +2
  say "  load average $(cut -d' ' -f1-3 /proc/loadavg)"

  # The rollout, as on SQLite, with its API writes.
  FORCE=()
  [ "$F" -gt "$N" ] && FORCE=(--force)
  run_rollout
  say "  (kube store)"
  rollout_figures rollout "$N" "$T0" "$T1"
  KUBE_OVER=$OVER
  audit_writes "$AUDIT" "$T0" "$T1" >"$WORK/writes-rollout.txt"
  read -r W_TOTAL W_SECS W_MEAN W_PEAK < <(head -1 "$WORK/writes-rollout.txt")
  figure "API writes during the rollout: mean / peak" "$W_MEAN/s / $W_PEAK/s ($W_TOTAL in $W_SECS s)" "audit log, apply → succeeded (estimate ~100/s)"
  sed 's/^/      /' "$WORK/writes-rollout.txt" | tail -n +2
  say "  load average $(cut -d' ' -f1-3 /proc/loadavg)"
  largest_objects | sed 's/^/  /'
  # A file of their own: the SQLite rows of a later run must not land under this table.
  RESULTS=${RESULTS%.md}-kube.md
  grep -q '^| kube rollout N |' "$RESULTS" 2>/dev/null || {
    echo ""
    echo "| kube rollout N | connected fleet | maxConcurrency | upgrade s | control plane (ms) | workers (ms) | ideal (ms) | over ideal | API writes/s mean / peak |"
    echo "|---|---|---|---|---|---|---|---|---|"
  } >>"$RESULTS"
  echo "| $N | $F | $ROLLOUT_CONCURRENCY | $UPGRADE_TIME | $CP_MS | $WORKERS_MS | $IDEAL | $OVER % | $W_MEAN / $W_PEAK |" >>"$RESULTS"

  # Failover during a second rollout (to 0.19.2): SIGKILL the leader once a quarter of the
  # clusters have their task; the standby must take the Lease, serve on the same address, get
  # every agent back, and move the plan on, each operation run once.
  NEXT=0.19.2
  plan_doc failover "$NEXT" "  clusters: {matchLabels: {bench: rollout}}
  strategy: {canary: 0, maxConcurrency: $ROLLOUT_CONCURRENCY, maxFailures: 0}" >"$WORK/failover.yaml"
  T0=$(now_us)
  apply "$WORK/failover.yaml" --force
  wait_value 1 "$PLAN_DEADLINE" sh -c "awk -v t=$T0 -v k=$((N / 4)) '\$1 >= t { n++ } END { print (n >= k) ? 1 : 0 }' \"$WORK/receipts\"" ||
    { say "  the failover plan never reached a quarter of its clusters"; exit 1; }
  T_KILL=$(now_us)
  kill -9 "$LEADER"
  wait_line "$WORK/b.out" "skoala-coordinator listening on " 120 >/dev/null || { say "  the standby never served"; exit 1; }
  T_SERVE=$(now_us)
  wait_value "$F" 300 agents_connected "$METRICS_B" || say "  only $(agents_connected "$METRICS_B") of $F back after 300 s"
  T_BACK=$(now_us)
  wait_value 1 300 sh -c "awk -v t=$T_KILL '\$1 >= t { n++ } END { print (n > 0) ? 1 : 0 }' \"$WORK/receipts\"" ||
    say "  no task arrived within 300 s of the kill"
  read -r _ T_MOVE < <(receipts_after "$WORK/receipts" "$T_KILL")
  if ! POLL_SECS=1 wait_value succeeded "$PLAN_DEADLINE" phase failover; then
    say "  the failover plan did not succeed: $(phase failover)"
    exit 1
  fi
  T1=$(now_us)
  read -r GOT _ < <(receipts_after "$WORK/receipts" "$T0")
  DUPS=$(awk '{ print $2 }' "$WORK/receipts" | sort | uniq -d | wc -l)
  audit_writes "$AUDIT" "$T_KILL" "$T_BACK" >"$WORK/writes-failover.txt"
  read -r W_TOTAL W_SECS W_MEAN W_PEAK < <(head -1 "$WORK/writes-failover.txt")
  figure "failover, $F agents: kill → standby serving" "$(((T_SERVE - T_KILL) / 1000)) ms" "kill -9 of the leader; the standby's 'listening on' line"
  figure "  kill → skoala_agents_connected = $F on the new leader" "$(((T_BACK - T_KILL) / 1000)) ms (target <= 60 s)" "polling its /metrics"
  figure "  kill → the plan moves (next task received)" "$(((T_MOVE - T_KILL) / 1000)) ms" "first --receipts line after the kill"
  figure "  operations received twice / run / agents gave up" "$DUPS / $GOT of $N / $(load_stat "$WORK/load" gave_up)" "duplicate operation ids in --receipts; receipts since the apply; loadgen status"
  figure "  tasks answered from the agents' record (re-deliveries)" "$(load_stat "$WORK/load" tasks_repeated)" "loadgen tasks_repeated"
  figure "  API writes, kill → every agent back" "$W_TOTAL ($W_MEAN/s, peak $W_PEAK/s)" "audit log (the reconnect storm's estimate: ≈ 0, plus the plan's own)"
  sed 's/^/      /' "$WORK/writes-failover.txt" | tail -n +2
  rollout_figures failover "$N" "$T0" "$T1"
  say "  load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "| $N (failover) | $F | $ROLLOUT_CONCURRENCY | $UPGRADE_TIME | $CP_MS | $WORKERS_MS | $IDEAL | $OVER % (kill → serving $(((T_SERVE - T_KILL) / 1000)) ms, all back $(((T_BACK - T_KILL) / 1000)) ms, moving $(((T_MOVE - T_KILL) / 1000)) ms, $DUPS twice) | |" >>"$RESULTS"
  cleanup
fi
say ""
say "rows appended to ${BENCH_RESULTS:-$OUT/results-plan.md}$([ "$STORE" = sqlite ] || echo " (the kube store's: its -kube.md sibling)")"
