#!/usr/bin/env bash
# The routing mesh's cost, side by side in one run: one backend container
# (busybox httpd serving a small index file from shoal/busybox:latest) is
# measured with wrk
#   direct     straight to the container's published host port,
#   userspace  through the userspace proxy (worker/examples/mesh_bench),
#   kernel     through nftables DNAT (the same example, kernel data path),
# each with keep-alive and with `Connection: close`. The paths take turns,
# round after round (a 2-core machine drifts: TIME_WAIT sockets pile up,
# other work comes and goes), and each figure is the median over the
# rounds. Prints requests/s, p50 and p99 latency, and each path against
# direct: throughput ratio and added p50. Targets: kernel >= 95 % of direct,
# userspace >= 80 % with <= 100 us added p50.
#
# busybox httpd answers every request with `Connection: close`, so with it
# "keep-alive" is also one connection per request: both modes measure
# connection set-up through each path.
#
# The kernel path needs root and nft; without them its rows say so and the
# rest still runs.
#
# usage: deploy/bench-mesh.sh
#   BENCH_ROUNDS=5       rounds; each runs every path in both modes
#   BENCH_DURATION=3s    per wrk run (2 x 3 x ROUNDS runs, ~90 s in all)
#   BENCH_CONNS=8        wrk connections (busybox httpd listens with a backlog
#                        of 9: more drop SYNs and p99 becomes the 1 s retransmit)
#   BENCH_THREADS=2      wrk threads
#   BENCH_NET=127.0.240  addresses: .10 backend, .11 userspace, .12 kernel
#   BENCH_PORT=18180     the published port
#   CARGO_TARGET_DIR     where cargo builds the example (default <repo>/target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-3s}
CONNS=${BENCH_CONNS:-8}
THREADS=${BENCH_THREADS:-2}
NET=${BENCH_NET:-127.0.240}
PORT=${BENCH_PORT:-18180}
IMAGE=shoal/busybox:latest
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/examples/mesh_bench

die() { echo "bench-mesh: $*" >&2; exit 1; }

command -v wrk >/dev/null || die "wrk not found: apt-get install -y wrk"
docker info >/dev/null 2>&1 || die "cannot reach Docker"
docker image inspect "$IMAGE" >/dev/null 2>&1 || bash "$ROOT/deploy/build-image.sh"
echo "building the mesh bench (release)..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build -q --release -p worker --example mesh_bench) ||
  die "cannot build worker/examples/mesh_bench"

name=shoal-bench-mesh-$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  docker rm -f "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT

docker run -d --name "$name" -p "$NET.10::80" "$IMAGE" \
  sh -c 'mkdir -p /www && echo "hello from shoal" > /www/index.html && exec httpd -f -p 80 -h /www' >/dev/null
hostport=$(docker port "$name" 80/tcp | head -1 | sed 's/.*://')
[ -n "$hostport" ] || die "the container has no published port"
backend=$NET.10:$hostport

# Starts mesh_bench in the background; waits (bounded) for its "ready" line.
# Prints nothing on failure: that path is then skipped with its reason.
start_mesh() {
  local path=$1 ip=$2 log
  log=$(mktemp)
  "$BIN" "$path" "$ip" "$PORT" "$backend" >"$log" 2>&1 </dev/null &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q '^ready' "$log" && { rm -f "$log"; return 0; }
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.05
  done
  reason[$path]=$(tr '\n' ' ' <"$log")
  rm -f "$log"
  return 1
}

# Waits until the URL answers 200 (bounded).
wait_http() {
  for _ in $(seq 100); do
    wget -q -O /dev/null -T 1 "$1" 2>/dev/null && return 0
    curl -fsS -o /dev/null -m 1 "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

declare -A url reason rps p50 p99
url[direct]=http://$backend/
start_mesh userspace "$NET.11" && url[userspace]=http://$NET.11:$PORT/
start_mesh kernel "$NET.12" && url[kernel]=http://$NET.12:$PORT/

# wrk's latency distribution to microseconds: 1.23ms -> 1230.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000; else m = 0
    printf "%d", n * m }'
}

# One wrk run; appends req/s, p50 and p99 (us) to the key's lists.
run_wrk() {
  local key=$1 target=$2 out r
  shift 2
  out=$(timeout 120 wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "$target" 2>&1) || {
    reason[$key]="wrk failed: $(echo "$out" | tail -1)"
    return
  }
  if echo "$out" | grep -q 'Non-2xx\|Socket errors: connect [1-9]'; then
    echo "$out" | grep 'Non-2xx\|Socket errors' | sed "s/^/  $key: /" >&2
  fi
  r=$(echo "$out" | awk '/^Requests\/sec:/ {printf "%d", $2}')
  [ -n "$r" ] || { reason[$key]="no figures from wrk"; return; }
  rps[$key]+="$r "
  p50[$key]+="$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')") "
  p99[$key]+="$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')") "
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END { if (NR) print v[int((NR + 1) / 2)] }'; }

modes=(keepalive close)
paths=()
for path in direct userspace kernel; do
  [ -n "${url[$path]:-}" ] || continue
  if ! wait_http "${url[$path]}"; then
    reason[$path]="no answer at ${url[$path]}"
    continue
  fi
  # Warm-up, unmeasured.
  timeout 30 wrk -t1 -c4 -d1s "${url[$path]}" >/dev/null 2>&1 || true
  paths+=("$path")
done
load_before=$(cut -d' ' -f1 /proc/loadavg)
for round in $(seq "$ROUNDS"); do
  # Each round starts with another path, so none is always measured first.
  n=${#paths[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${paths[$(((round + i) % n))]}"); done
  echo "round $round of $ROUNDS: ${order[*]}, keep-alive and close, $DURATION each" >&2
  for mode in "${modes[@]}"; do
    for path in "${order[@]}"; do
      if [ "$mode" = close ]; then
        run_wrk "$path/$mode" "${url[$path]}" -H 'Connection: close'
      else
        run_wrk "$path/$mode" "${url[$path]}"
      fi
    done
  done
done
load_after=$(cut -d' ' -f1 /proc/loadavg)
declare -A spread
for key in "${!rps[@]}"; do
  spread[$key]=$(echo "${rps[$key]}" | tr ' ' '\n' | grep . | sort -n | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%d-%d", lo, hi}')
  rps[$key]=$(echo "${rps[$key]}" | median)
  p50[$key]=$(echo "${p50[$key]}" | median)
  p99[$key]=$(echo "${p99[$key]}" | median)
done

echo
echo "backend: busybox httpd in $IMAGE at $backend; wrk -t$THREADS -c$CONNS -d$DURATION, median of $ROUNDS rounds"
echo "load average $load_before before, $load_after after, on $(nproc) cpus (other work on the machine skews every figure)"
printf '%-10s %-10s %10s %13s %9s %9s %9s %11s\n' PATH MODE REQ/S RANGE P50_US P99_US VS_DIRECT ADDED_P50_US
for mode in "${modes[@]}"; do
  for path in direct userspace kernel; do
    key=$path/$mode
    if [ -z "${rps[$key]:-}" ]; then
      printf '%-10s %-10s %s\n' "$path" "$mode" "skipped: ${reason[$key]:-${reason[$path]:-not measured}}"
      continue
    fi
    d=${rps[direct/$mode]:-0}
    ratio=$(awk -v a="${rps[$key]}" -v b="$d" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }')
    added=$(awk -v a="${p50[$key]}" -v b="${p50[direct/$mode]:-0}" 'BEGIN { printf "%+d", a - b }')
    printf '%-10s %-10s %10s %13s %9s %9s %9s %11s\n' "$path" "$mode" "${rps[$key]}" "${spread[$key]}" "${p50[$key]}" "${p99[$key]}" "$ratio" "$added"
  done
done

# Against the targets (keep-alive rows).
verdict() {
  local path=$1 want=$2 key=$1/keepalive
  [ -n "${rps[$key]:-}" ] && [ -n "${rps[direct/keepalive]:-}" ] || { echo "$path: not measured"; return; }
  awk -v a="${rps[$key]}" -v b="${rps[direct/keepalive]}" -v w="$want" -v p="$path" \
    -v ap="${p50[$key]}" -v dp="${p50[direct/keepalive]}" -v lim="${3:-}" 'BEGIN {
      r = 100 * a / b; ok = (r >= w)
      msg = sprintf("%s: %.1f%% of direct (target >= %d%%)", p, r, w)
      if (lim != "") { add = ap - dp; ok = ok && (add <= lim); msg = msg sprintf(", p50 %+d us (target <= %d us)", add, lim) }
      print msg (ok ? ": met" : ": MISSED") }'
}
echo
verdict kernel 95
verdict userspace 80 100
