#!/usr/bin/env bash
# HTTP/2 settings benchmarks of issue 7 (the sibling of scripts/bench.sh and
# scripts/bench-plan.sh): the figures behind each setting of skoala_coordinator::http2 (the
# coordinator's server, shared by the bare baseline) and of skoala_agent::transport (the
# agent's client). Release builds; loopback only; every process is bounded (watchdog) and
# killed on exit.
#
#   scripts/bench-h2.sh                          # every part (about 17 minutes at N = 10000)
#   BENCH_H2_PARTS="window streams" scripts/bench-h2.sh   # some parts
#   BENCH_H2_N=10000 scripts/bench-h2.sh         # the idle-CPU part at 10,000 agents
#
# Parts (BENCH_H2_PARTS, default "idle detect window streams"):
#   idle     coordinator utime+stime over BENCH_IDLE_SECS (30) with BENCH_H2_N (5000) idle
#            agents (heartbeat 10 s, ping 15 s), for each SERVER/AGENTS pair of
#            BENCH_IDLE_CONFIGS: the server's keepalive interval (`serve
#            --http2-keepalive-interval`: a duration or off) and the agents' keepalive (`load
#            --h2-keepalive on|off`). The default list repeats pairs, interleaved, for a spread.
#   detect   how long until a peer that went silent without closing (SIGSTOP, so its kernel
#            still acknowledges TCP) is noticed, with each liveness layer on or off:
#            agents stopped → the coordinator's skoala_agents_connected gauge reaches 0
#            (server keepalive 20 s / 60 s + 20 s, or off: then only the 60 s agent timeout);
#            coordinator stopped → the load generator's connected= reaches 0 (agents'
#            keepalive 20 s + 10 s, or off: then nothing but BENCH_DETECT_DEADLINE).
#   window   relay time of a 300 kB and a 4 MiB chart, coordinator → one agent over its real
#            session (`skoala-loadgen relay-fetch`), at RTT 0 / 50 / 200 ms (`skoala-loadgen
#            delay-proxy`) for agent stream windows of 64 KiB, 1, 2 (the default) and 4 MiB;
#            median of BENCH_WINDOW_ROUNDS (3).
#   streams  coordinator RSS growth with K idle streams (Register calls whose body never
#            comes, no client certificate) on one connection, with no stream limit and with
#            the default limit (a fresh data dir, so nothing else moves the RSS).
# Each figure is printed with the command that produced it and the load average.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
read -r -a PARTS <<<"${BENCH_H2_PARTS:-idle detect window streams}"
N=${BENCH_H2_N:-5000}
DETECT_N=${BENCH_DETECT_N:-200}
read -r -a IDLE_CONFIGS <<<"${BENCH_IDLE_CONFIGS:-20s/on 60s/on off/on 20s/off 20s/on 60s/on off/on 5s/on}"
IDLE_SECS=${BENCH_IDLE_SECS:-30}
CONNECT_DEADLINE=${BENCH_CONNECT_DEADLINE:-600}
DETECT_DEADLINE=${BENCH_DETECT_DEADLINE:-120}
WINDOW_ROUNDS=${BENCH_WINDOW_ROUNDS:-3}
SOURCE_ADDRS=${BENCH_SOURCE_ADDRS:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
PROCESS_BOUND=${BENCH_PROCESS_BOUND:-1800}
OUT=${BENCH_OUT:-$ROOT/target/bench}
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
mkdir -p "$OUT"

FIGURE_WIDTH=60
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
gauge() { { curl -s --max-time 5 "http://$METRICS/metrics" | awk '$1 == "skoala_agents_connected" { print $2 }'; } || true; }
has_part() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

WORK=$(mktemp -d "$OUT/h2-XXXX")
PORT=$((20000 + RANDOM % 20000))
LISTEN=127.0.0.1:$PORT
METRICS=127.0.0.1:$((PORT + 1))
PROXY=127.0.0.1:$((PORT + 2))

# serve TAG [serve flags...]: a coordinator on $LISTEN with metrics; sets COORD.
serve() {
  local tag=$1
  shift
  spawn "$WORK/coordinator.$tag" "$BIN/skoala-coordinator" serve --data-dir "$DATA" \
    --listen "$LISTEN" --metrics-listen "$METRICS" "$@"
  COORD=$LAST_PID
  wait_line "$WORK/coordinator.$tag.out" "skoala-coordinator metrics on " >/dev/null
}
stop() {
  for p in "$@"; do
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
token() { "$BIN/skoalactl" --config "$DATA/admin.yaml" --endpoint "https://$LISTEN" token create --uses "$1" --ttl 2h 2>/dev/null; }
# load TAG COUNT [load flags...]: simulated agents against $LISTEN; sets LOAD.
load() {
  local tag=$1 count=$2
  shift 2
  SKOALA_TOKEN=$(token "$count") spawn "$WORK/load.$tag" "$BIN/skoala-loadgen" \
    --coordinator "https://$LISTEN" --ca-file "$DATA/ca.pem" --agents "$count" \
    --source-addrs "$SOURCE_ADDRS" --duration "${PROCESS_BOUND}s" "$@"
  LOAD=$LAST_PID
}

say "building release binaries"
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --quiet -p skoala-coordinator -p skoala-sim -p skoala-loadgen -p skoalactl
fi
say "machine: $(nproc) cores, $(uname -sr), open files (hard) $(ulimit -Hn); work dir $WORK"
DATA=$WORK/data
"$BIN/skoala-coordinator" init --data-dir "$DATA" >/dev/null

# --- idle: what keepalive costs while heartbeats flow ---
if has_part idle; then
  say ""
  say "== idle CPU with $N agents (heartbeat 10 s, ping 15 s), keepalive server × agents"
  for i in "${!IDLE_CONFIGS[@]}"; do
    server_ka=${IDLE_CONFIGS[$i]%/*}
    agents_ka=${IDLE_CONFIGS[$i]#*/}
    # A fresh store each time: earlier runs' clusters must not weigh on this one.
    DATA=$WORK/data-idle-$i
    "$BIN/skoala-coordinator" init --data-dir "$DATA" >/dev/null
    serve "idle-$i" --http2-keepalive-interval "$server_ka"
    load "idle-$i" "$N" --h2-keepalive "$agents_ka"
    if ! wait_value "$N" "$CONNECT_DEADLINE" gauge; then
      say "  only $(gauge) of $N connected; see $WORK"
      exit 1
    fi
    sleep 5 # the registrations' aftermath settles before the window opens
    C0=$(cpu_ticks "$COORD")
    sleep "$IDLE_SECS"
    C1=$(cpu_ticks "$COORD")
    CPU=$(awk -v a="$C0" -v b="$C1" -v hz="$(getconf CLK_TCK)" -v s="$IDLE_SECS" 'BEGIN { printf "%.2f", (b - a) / hz / s * 100 }')
    figure "server keepalive $server_ka, agents' keepalive $agents_ka:" "${CPU} % of one core (load $(loadavg))" \
      "serve --http2-keepalive-interval $server_ka; load --agents $N --h2-keepalive $agents_ka; utime+stime of /proc/$COORD/stat over ${IDLE_SECS} s"
    stop "$LOAD" "$COORD"
  done
fi

# --- detect: what each liveness layer buys ---
# until_zero READ: polls the count that the function READ prints, every 0.5 s, until it is 0
# or DETECT_DEADLINE passes; sets DETECTED to when the first and the last peer were noticed.
until_zero() {
  local read=$1 t0 n first="" all=">$DETECT_DEADLINE" deadline=$((SECONDS + DETECT_DEADLINE))
  t0=$(now)
  while [ $SECONDS -lt $deadline ]; do
    n=$($read)
    if [ -z "$first" ] && [ -n "$n" ] && [ "$n" -lt "$DETECT_N" ]; then first=$(elapsed "$t0" "$(now)"); fi
    if [ "$n" = "0" ]; then all=$(elapsed "$t0" "$(now)"); break; fi
    sleep 0.5
  done
  DETECTED="first after ${first:-never} s, all after $all s"
}
# detect_agents TAG [serve flags...]: SIGSTOP the load generator; seconds until the gauge is 0.
detect_agents() {
  local tag=$1
  shift
  serve "detect-$tag" "$@"
  load "detect-$tag" "$DETECT_N"
  wait_value "$DETECT_N" "$CONNECT_DEADLINE" gauge || { say "  not all connected; see $WORK"; exit 1; }
  sleep 2
  kill -STOP "$LOAD"
  until_zero gauge
  stop "$LOAD" "$COORD"
}
# detect_coordinator TAG [load flags...]: SIGSTOP the coordinator; seconds until connected=0.
detect_coordinator() {
  DETECT_TAG=$1
  shift
  serve "detect-$DETECT_TAG"
  load "detect-$DETECT_TAG" "$DETECT_N" "$@"
  wait_value "$DETECT_N" "$CONNECT_DEADLINE" gauge || { say "  not all connected; see $WORK"; exit 1; }
  sleep 2
  kill -STOP "$COORD"
  until_zero agents_connected
  stop "$LOAD" "$COORD"
}
agents_connected() { load_stat "$WORK/load.detect-$DETECT_TAG" connected; }
if has_part detect; then
  DATA=$WORK/data
  say ""
  say "== a silent peer (SIGSTOP: its kernel still acknowledges TCP), $DETECT_N agents"
  detect_agents ka20 --http2-keepalive-interval 20s
  figure "agents stopped, server keepalive 20 s + 20 s, agent timeout 60 s:" "$DETECTED (load $(loadavg))" \
    "serve --http2-keepalive-interval 20s; kill -STOP <skoala-loadgen>; poll skoala_agents_connected until 0"
  detect_agents ka60 --http2-keepalive-interval 60s
  figure "agents stopped, server keepalive 60 s + 20 s, agent timeout 60 s:" "$DETECTED (load $(loadavg))" \
    "serve --http2-keepalive-interval 60s; kill -STOP <skoala-loadgen>; poll the gauge until 0"
  detect_agents kaoff --http2-keepalive-interval off
  figure "agents stopped, server keepalive off, agent timeout 60 s:" "$DETECTED (load $(loadavg))" \
    "serve --http2-keepalive-interval off; kill -STOP <skoala-loadgen>; poll the gauge until 0"
  detect_coordinator on --h2-keepalive on
  figure "coordinator stopped, agents' keepalive 20 s + 10 s:" "$DETECTED (load $(loadavg))" \
    "kill -STOP <coordinator>; poll connected= of skoala-loadgen until 0"
  detect_coordinator off --h2-keepalive off
  figure "coordinator stopped, agents' keepalive off:" "$DETECTED (load $(loadavg))" \
    "load --h2-keepalive off; kill -STOP <coordinator>; poll connected= until 0"
fi

# --- window: relay time against the agent's receive window and the round trip ---
if has_part window; then
  DATA=$WORK/data
  say ""
  say "== relay time coordinator → agent (median of $WINDOW_ROUNDS), by RTT and agent stream window"
  serve window
  for rtt in 0 50 200; do
    url=https://$LISTEN
    PROXY_PID=""
    if [ "$rtt" != 0 ]; then
      spawn "$WORK/proxy-$rtt" "$BIN/skoala-loadgen" delay-proxy --listen "$PROXY" --to "$LISTEN" \
        --delay "$((rtt / 2))ms"
      PROXY_PID=$LAST_PID
      wait_line "$WORK/proxy-$rtt.out" "delay-proxy listening on " >/dev/null
      url=https://$PROXY
    fi
    for window in 65535 1048576 2097152 4194304; do
      log="$WORK/fetch-$rtt-$window.out"
      SKOALA_TOKEN=$(token 1) timeout "$PROCESS_BOUND" "$BIN/skoala-loadgen" relay-fetch \
        --coordinator "$url" --ca-file "$DATA/ca.pem" --data-dir "$DATA" \
        --sizes 300000,4194304 --rounds "$WINDOW_ROUNDS" --h2-stream-window "$window" >"$log" 2>"$WORK/fetch-$rtt-$window.err"
      for size in 300000 4194304; do
        med=$(awk -v s="bytes=$size" '$2 == s { sub("ms=", "", $4); print $4 }' "$log" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
        mibs=$(awk -v b="$size" -v ms="$med" 'BEGIN { printf "%.1f", b / 1048576 / (ms / 1000) }')
        figure "RTT $rtt ms, agent window $((window / 1024)) KiB, $size bytes:" "$med ms ($mibs MiB/s; load $(loadavg))" \
          "skoala-loadgen relay-fetch --coordinator $url --sizes $size --h2-stream-window $window"
      done
    done
    [ -n "$PROXY_PID" ] && stop "$PROXY_PID"
  done
  stop "$COORD"
fi

# --- streams: what an open stream costs, and the bound ---
if has_part streams; then
  say ""
  say "== idle streams on one connection (Register calls whose body never comes)"
  DATA=$WORK/data-streams
  "$BIN/skoala-coordinator" init --data-dir "$DATA" >/dev/null
  for limit in off default; do
    for k in 100 1000 5000; do
      if [ "$limit" = off ]; then serve "streams-$limit-$k" --http2-max-concurrent-streams off; else serve "streams-$limit-$k"; fi
      sleep 2 # the server's start settles
      R0=$(rss_kib "$COORD")
      spawn "$WORK/streams-$limit-$k" "$BIN/skoala-loadgen" open-streams --coordinator "https://$LISTEN" \
        --ca-file "$DATA/ca.pem" --streams "$k" --hold 60s
      S=$LAST_PID
      wait_line "$WORK/streams-$limit-$k.out" "open-streams requested=" >/dev/null
      sleep 3 # the server takes the streams' HEADERS and starts their handlers
      R1=$(rss_kib "$COORD")
      ENDED=$(grep '^open-streams ended=' "$WORK/streams-$limit-$k.out" | tail -n1 | cut -d= -f2)
      figure "limit $limit, $k streams: coordinator RSS growth" "$(((R1 - R0))) KiB, $(awk -v a="$R0" -v b="$R1" -v k="$k" 'BEGIN { printf "%.1f", (b - a) / k }') KiB/stream; ended by the server: ${ENDED:-0} (load $(loadavg))" \
        "skoala-loadgen open-streams --streams $k; VmRSS of /proc/$COORD/status before and 3 s after"
      stop "$S" "$COORD"
    done
  done
fi
say ""
say "done; logs in $WORK"
