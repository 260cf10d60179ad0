#!/usr/bin/env bash
# The routing mesh's cost, side by side in one run, against a backend that is
# not the bottleneck: nginx from Debian, as a host process on a loopback
# address (keep-alive, a small answer at /, a 1 MiB file at /1m). wrk
# measures
#   direct     straight to nginx,
#   userspace  through shoal's userspace proxy (worker/examples/mesh_bench),
#              as a node runs it (its default: splice(2) for a direction once a read filled
#              the 64 KiB buffer, plain reads and writes before),
#   copy       the same proxy never splicing (MESH_SPLICE=never),
#   splice     the same proxy splicing from the first byte (MESH_SPLICE=always),
#   kernel     through shoal's nftables DNAT (the same example),
#   haproxy    through Debian's HAProxy in TCP mode with as many threads as
#              shoal's proxy has (one): the proxy a user would put in front,
#   userspace2, haproxy2  both with 2 threads (BENCH_THREADS2=0: not run),
#   baseline   BENCH_BASELINE=PATH: another mesh_bench binary (e.g. an older
#              build) beside this one,
# in four cases: keep-alive with 1 and with 64 connections, `Connection:
# close` with 16 (a connection per request: set-up cost), and the 1 MiB file
# over 4 keep-alive connections (bytes: MB/s). Beside each figure, the
# proxy's CPU time per request (per MiB for the file), from the kernel's
# schedstat of its threads. The paths take turns round
# after round (a 2-core machine drifts) and each figure is the median over
# the rounds, with its range. Targets: kernel >= 95 % of direct requests/s;
# userspace >= 1.25 x HAProxy's requests/s, <= 100 us added p50 on
# keep-alive, >= 90 % of direct MB/s on the 1 MiB transfer.
#
# On 2 cores wrk, nginx and the proxy share the CPUs: every userspace proxy
# is CPU-bound here, so the figures are ratios, not capacities.
#
# The kernel path needs root and nft, HAProxy needs haproxy: without them
# their rows say so and the rest still runs.
#
# usage: deploy/bench-mesh.sh
#   BENCH_ROUNDS=3       rounds; each runs every path in every case
#   BENCH_DURATION=3s    per wrk run (every path x 4 cases x ROUNDS runs)
#   BENCH_NET=127.0.240  addresses: .10 nginx, .11 userspace, .12 kernel, .13 haproxy, .14 splice,
#                        .15 copy, .16 userspace2, .17 haproxy2, .18 baseline
#   BENCH_ONLY="direct userspace haproxy"  measure only these paths
#   BENCH_PORT=18180     the published port (nginx listens on PORT+1)
#   CARGO_TARGET_DIR     where cargo builds the example (default <repo>/target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-3s}
NET=${BENCH_NET:-127.0.240}
PORT=${BENCH_PORT:-18180}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/examples/mesh_bench
THREADS2=${BENCH_THREADS2:-1}
BASELINE=${BENCH_BASELINE:-}
ONLY=${BENCH_ONLY:-}

die() { echo "bench-mesh: $*" >&2; exit 1; }

command -v wrk >/dev/null || die "wrk not found: apt-get install -y wrk"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx not found: apt-get install -y nginx (it is run with a config of its own, not as a service)"
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
echo "building the mesh bench (release)..." >&2
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build -q --release -p worker --example mesh_bench) ||
  die "cannot build worker/examples/mesh_bench"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

backend=$NET.10:$((PORT + 1))
mkdir -p "$tmp/www"
head -c 1048576 /dev/zero >"$tmp/www/1m"
cat >"$tmp/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $tmp/nginx.pid; error_log $tmp/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  server {
    listen $backend backlog=4096;
    location = / { return 200 "hello from shoal\n"; }
    location = /1m { root $tmp/www; }
  }
}
EOF
"$NGINX" -p "$tmp" -c "$tmp/nginx.conf" </dev/null >/dev/null 2>&1 &
pids+=($!)

declare -A url reason rps p50 p99 mbs cpu proc
# CPU time (ns) of every thread of process $1 so far.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; }
# Starts mesh_bench in the background; waits (bounded) for its "ready" line.
start_mesh() {
  local key=$1 path=$2 ip=$3 splice=${4:-} threads=${5:-} bin=${6:-$BIN} log
  log=$(mktemp)
  MESH_SPLICE=$splice MESH_THREADS=$threads "$bin" "$path" "$ip" "$PORT" "$backend" >"$log" 2>&1 </dev/null &
  pids+=($!)
  [ "$path" = userspace ] && proc[$key]=$!
  for _ in $(seq 100); do
    grep -q '^ready' "$log" && { rm -f "$log"; return 0; }
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.05
  done
  reason[$key]=$(tr '\n' ' ' <"$log")
  rm -f "$log"
  return 1
}

start_haproxy() {
  local key=$1 ip=$2 threads=$3
  [ -x "$HAPROXY" ] || { reason[$key]="haproxy not found: apt-get install -y haproxy"; return 1; }
  # HAProxy refuses to start if maxconn needs more descriptors than the limit.
  local maxconn=$(( ($(ulimit -n) - 100) / 2 ))
  [ "$maxconn" -gt 8000 ] && maxconn=8000
  cat >"$tmp/$key.cfg" <<EOF
global
  nbthread $threads
  maxconn $maxconn
defaults
  mode tcp
  timeout connect 2s
  timeout client 900s
  timeout server 900s
frontend mesh
  bind $ip:$PORT
  default_backend tasks
backend tasks
  server nginx $backend
EOF
  "$HAPROXY" -db -f "$tmp/$key.cfg" </dev/null >"$tmp/$key.log" 2>&1 &
  pids+=($!)
  proc[$key]=$!
}

# Waits until the URL answers 200 (bounded).
wait_http() {
  for _ in $(seq 100); do
    curl -fsS -o /dev/null -m 1 "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

url[direct]=http://$backend
start_mesh userspace userspace "$NET.11" && url[userspace]=http://$NET.11:$PORT
start_mesh copy userspace "$NET.15" never && url[copy]=http://$NET.15:$PORT
start_mesh splice userspace "$NET.14" always && url[splice]=http://$NET.14:$PORT
start_mesh kernel kernel "$NET.12" && url[kernel]=http://$NET.12:$PORT
start_haproxy haproxy "$NET.13" 1 && url[haproxy]=http://$NET.13:$PORT
if [ "$THREADS2" = 1 ]; then
  start_mesh userspace2 userspace "$NET.16" "" 2 && url[userspace2]=http://$NET.16:$PORT
  start_haproxy haproxy2 "$NET.17" 2 && url[haproxy2]=http://$NET.17:$PORT
fi
if [ -n "$BASELINE" ]; then
  start_mesh baseline userspace "$NET.18" "" "" "$BASELINE" && url[baseline]=http://$NET.18:$PORT
fi

# wrk's latency to microseconds: 1.23ms -> 1230.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000; else m = 0
    printf "%d", n * m }'
}
# wrk's Transfer/sec to MB/s: 1.10GB -> 1126.4.
to_mb() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "GB") m = 1024; else if (u == "MB") m = 1; else if (u == "KB") m = 1 / 1024; else m = 1 / 1048576
    printf "%.1f", n * m }'
}

# One wrk run of case $2 on path $1: appends req/s, p50, p99, MB/s.
run_case() {
  local path=$1 case=$2 key=$1/$2 out r args
  case $case in
    ka1) args=(-c1 "${url[$path]}/") ;;
    ka64) args=(-c64 "${url[$path]}/") ;;
    close16) args=(-c16 -H 'Connection: close' "${url[$path]}/") ;;
    1mib) args=(-c4 "${url[$path]}/1m") ;;
  esac
  local c0=0 c1=0 n
  [ -n "${proc[$path]:-}" ] && c0=$(cpu_ns "${proc[$path]}")
  out=$(timeout 120 wrk -t1 -d"$DURATION" --latency "${args[@]}" 2>&1) || {
    reason[$key]="wrk failed: $(echo "$out" | tail -1)"
    return
  }
  if echo "$out" | grep -q 'Non-2xx\|Socket errors'; then
    echo "$out" | grep 'Non-2xx\|Socket errors' | sed "s|^|  $key: |" >&2
  fi
  r=$(echo "$out" | awk '/^Requests\/sec:/ {printf "%d", $2}')
  [ -n "$r" ] || { reason[$key]="no figures from wrk"; return; }
  rps[$key]+="$r "
  p50[$key]+="$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')") "
  p99[$key]+="$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')") "
  mbs[$key]+="$(to_mb "$(echo "$out" | awk '/^Transfer\/sec:/ {print $2}')") "
  # The proxy's CPU per request (per MiB for the 1 MiB file), in us: the
  # figure a busy machine disturbs least.
  if [ -n "${proc[$path]:-}" ]; then
    c1=$(cpu_ns "${proc[$path]}")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    [ -n "$n" ] && [ "$n" -gt 0 ] && cpu[$key]+="$(awk -v d=$((c1 - c0)) -v n="$n" 'BEGIN {printf "%.1f", d / 1000 / n}') "
  fi
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END { if (NR) print v[int((NR + 1) / 2)] }'; }
range() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s-%s", lo, hi}'; }

all=(direct userspace copy splice kernel haproxy)
[ "$THREADS2" = 1 ] && all+=(userspace2 haproxy2)
[ -n "$BASELINE" ] && all+=(baseline)
cases=(ka1 ka64 close16 1mib)
paths=()
for path in "${all[@]}"; do
  [ -n "${url[$path]:-}" ] || continue
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $path "* ]]; then
    reason[$path]="not in BENCH_ONLY"
    continue
  fi
  if ! wait_http "${url[$path]}/"; then
    reason[$path]="no answer at ${url[$path]}/"
    continue
  fi
  timeout 30 wrk -t1 -c4 -d1s "${url[$path]}/" >/dev/null 2>&1 || true
  paths+=("$path")
done
load_before=$(cut -d' ' -f1 /proc/loadavg)
for round in $(seq "$ROUNDS"); do
  n=${#paths[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${paths[$(((round + i) % n))]}"); done
  echo "round $round of $ROUNDS: ${order[*]}; ${cases[*]}; $DURATION each" >&2
  for c in "${cases[@]}"; do
    for path in "${order[@]}"; do run_case "$path" "$c"; done
  done
done
load_after=$(cut -d' ' -f1 /proc/loadavg)
declare -A spread
for key in "${!rps[@]}"; do
  spread[$key]=$(echo "${rps[$key]}" | range)
  rps[$key]=$(echo "${rps[$key]}" | median)
  p50[$key]=$(echo "${p50[$key]}" | median)
  p99[$key]=$(echo "${p99[$key]}" | median)
  mbs[$key]=$(echo "${mbs[$key]}" | median)
  cpu[$key]=$(echo "${cpu[$key]:-}" | median || true)
done

echo
echo "backend: nginx $("$NGINX" -v 2>&1 | sed 's|.*/||') at $backend, 1 worker; wrk -t1 -d$DURATION; median of $ROUNDS rounds (range of req/s)"
echo "load average $load_before before, $load_after after, on $(nproc) cpus"
printf '%-10s %-8s %9s %15s %8s %8s %9s %9s %10s %8s\n' PATH CASE REQ/S RANGE P50_US P99_US MB/S VS_DIRECT ADDED_P50 CPU_US
for c in "${cases[@]}"; do
  for path in "${all[@]}"; do
    key=$path/$c
    if [ -z "${rps[$key]:-}" ]; then
      printf '%-10s %-8s %s\n' "$path" "$c" "skipped: ${reason[$key]:-${reason[$path]:-not measured}}"
      continue
    fi
    d=${rps[direct/$c]:-0}
    [ "$c" = 1mib ] && d=${mbs[direct/$c]:-0}
    v=${rps[$key]}
    [ "$c" = 1mib ] && v=${mbs[$key]}
    ratio=$(awk -v a="$v" -v b="$d" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }')
    added=$(awk -v a="${p50[$key]}" -v b="${p50[direct/$c]:-0}" 'BEGIN { printf "%+d", a - b }')
    printf '%-10s %-8s %9s %15s %8s %8s %9s %9s %10s %8s\n' "$path" "$c" "${rps[$key]}" "${spread[$key]}" "${p50[$key]}" "${p99[$key]}" "${mbs[$key]}" "$ratio" "$added" "${cpu[$key]:--}"
  done
done

# Against the targets.
echo
check() { # description, value, op, target
  awk -v d="$1" -v v="$2" -v op="$3" -v t="$4" 'BEGIN {
    if (v == "") { print d ": not measured"; exit }
    ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0)
    printf "%s: %s (target %s %s): %s\n", d, v, op, t, ok ? "met" : "MISSED" }'
}
ratio() { awk -v a="$1" -v b="$2" -v s="${3:-100}" 'BEGIN { if (a != "" && b > 0) printf "%.2f", s * a / b }'; }
check "kernel, keep-alive x64, % of direct req/s" "$(ratio "${rps[kernel/ka64]:-}" "${rps[direct/ka64]:-0}")" ">=" 95
check "userspace / haproxy req/s, keep-alive x64" "$(ratio "${rps[userspace/ka64]:-}" "${rps[haproxy/ka64]:-0}" 1)" ">=" 1.25
check "userspace / haproxy req/s, close x16" "$(ratio "${rps[userspace/close16]:-}" "${rps[haproxy/close16]:-0}" 1)" ">=" 1.25
added=""
[ -n "${p50[userspace/ka1]:-}" ] && added=$((p50[userspace/ka1] - p50[direct/ka1]))
check "userspace added p50, keep-alive x1, us" "$added" "<=" 100
check "userspace 1 MiB transfer, % of direct MB/s" "$(ratio "${mbs[userspace/1mib]:-}" "${mbs[direct/1mib]:-0}")" ">=" 90
[ -n "${rps[userspace2/ka64]:-}" ] && {
  check "2 threads each: userspace / haproxy req/s, keep-alive x64" "$(ratio "${rps[userspace2/ka64]:-}" "${rps[haproxy2/ka64]:-0}" 1)" ">=" 1.25
  check "2 threads each: userspace / haproxy req/s, close x16" "$(ratio "${rps[userspace2/close16]:-}" "${rps[haproxy2/close16]:-0}" 1)" ">=" 1.25
  check "2 threads: userspace 1 MiB transfer, % of direct MB/s" "$(ratio "${mbs[userspace2/1mib]:-}" "${mbs[direct/1mib]:-0}")" ">=" 90
}
# CPU per request (per MiB) of HAProxy over shoal's proxy's: how many times
# cheaper shoal's proxy is; a loaded machine bends this least.
for c in ka64 close16 1mib; do
  echo "CPU per request, haproxy / userspace, $c: $(ratio "${cpu[haproxy/$c]:-}" "${cpu[userspace/$c]:-0}" 1) (copy only: $(ratio "${cpu[haproxy/$c]:-}" "${cpu[copy/$c]:-0}" 1), splice always: $(ratio "${cpu[haproxy/$c]:-}" "${cpu[splice/$c]:-0}" 1))"
done
