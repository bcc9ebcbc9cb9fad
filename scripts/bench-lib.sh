# Process helpers shared by scripts/bench.sh and scripts/bench-plan.sh (sourced, not run).
# Every process a benchmark starts goes through `spawn`, which gives it a watchdog, so nothing
# outlives $PROCESS_BOUND seconds even if the script itself is killed; `cleanup` (on exit)
# kills them all. The caller sets PROCESS_BOUND, and FIGURE_WIDTH for `figure` (default 44).

PIDS=()
WATCHDOGS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  # TERM, not KILL: a watchdog's trap must take its sleep down with it.
  for w in "${WATCHDOGS[@]:-}"; do
    [ -n "$w" ] && kill "$w" 2>/dev/null || true
  done
  PIDS=()
  WATCHDOGS=()
}
trap cleanup EXIT INT TERM

say() { printf '%s\n' "$*"; }
# Prints a figure and the command that produced it.
figure() { printf "  %-${FIGURE_WIDTH:-44}s %s\n      \$ %s\n" "$1" "$2" "$3"; }

# Starts a process in the background, logs to $1.out/.err, records its pid (and a watchdog's)
# and sets LAST_PID.
spawn() {
  local log=$1
  shift
  "$@" >"$log.out" 2>"$log.err" &
  local pid=$!
  PIDS+=("$pid")
  (
    sleep "$PROCESS_BOUND" &
    s=$!
    trap 'kill $s 2>/dev/null; exit 0' TERM
    wait $s
    kill -9 "$pid" 2>/dev/null
  ) >/dev/null 2>&1 &
  WATCHDOGS+=("$!")
  LAST_PID=$pid
}

# Waits (bounded by $3 s, default 120) until file $1 has a line starting with $2; prints the
# rest of the line.
wait_line() {
  local file=$1 prefix=$2 deadline=$((SECONDS + ${3:-120}))
  while [ $SECONDS -lt $deadline ]; do
    if line=$(grep -m1 "^$prefix" "$file" 2>/dev/null); then
      printf '%s\n' "${line#"$prefix"}"
      return 0
    fi
    sleep 0.1
  done
  say "timed out waiting for '$prefix' in $file" >&2
  return 1
}

# A counter from the load generator's latest status line ($1: its log prefix, $2: the key).
load_stat() {
  { tail -n 5 "$1.out" | grep '^load ' | tail -n 1 | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; } || true
}

# Waits (bounded by $2 s) until the command in $3.. prints $1, polling every POLL_SECS (0.2 s);
# 1 if the deadline passed.
wait_value() {
  local want=$1 deadline=$((SECONDS + $2))
  shift 2
  while [ $SECONDS -lt $deadline ]; do
    [ "$("$@" 2>/dev/null || true)" = "$want" ] && return 0
    sleep "${POLL_SECS:-0.2}"
  done
  return 1
}
