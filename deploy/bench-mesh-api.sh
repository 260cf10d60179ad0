#!/usr/bin/env bash
# The issue-18 figure deploy/bench-mesh.sh cannot give: does a saturated
# routing mesh slow the node's control work? A real single-node shoal
# (`shoal daemon --init --mesh userspace`, the proxy on its own thread as a
# node runs it) publishes a service whose task is Debian's nginx (the
# host's binary, run in a busybox container through `chroot` into a
# read-only bind mount of /, so the backend keeps up); wrk saturates the
# published port (keep-alive, 64 connections); meanwhile API writes
# (`POST /configs/create` on the node's Engine API: one raft write each,
# timed by curl) are timed, idle first, then under the load, taking turns
# BENCH_ROUNDS times. Prints p50/p99 of both and the ratio. Target: the p99
# under load stays within 2x of idle.
#
# On 2 cores the load itself (wrk, nginx, the proxy) takes the CPUs: what
# is measured is the node's latency on a saturated machine, not only the
# queueing behind mesh work.
#
# usage: deploy/bench-mesh-api.sh            (as root: docker)
#   SHOAL_BIN=target/release/shoal
#   BENCH_NET=127.0.243    the node at .11 (cluster port 4242, API 4243)
#   BENCH_PORT=18380       the published port
#   BENCH_WRITES=200       API writes per sample
#   BENCH_ROUNDS=2         idle/loaded pairs
#   BENCH_MESH=userspace   the data path (kernel also works)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
NET=${BENCH_NET:-127.0.243}
PORT=${BENCH_PORT:-18380}
WRITES=${BENCH_WRITES:-200}
ROUNDS=${BENCH_ROUNDS:-2}
MESH=${BENCH_MESH:-userspace}
NODE=$NET.11
API=$NODE:4243
IMAGE=${BENCH_IMAGE:-shoal/busybox:latest}

die() { echo "bench-mesh-api: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "no $BIN: cargo build --release -p cli"
command -v wrk >/dev/null || die "wrk not found: apt-get install -y wrk"
command -v curl >/dev/null || die "curl not found"
[ -x /usr/sbin/nginx ] || die "nginx not found: apt-get install -y nginx"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE: deploy/build-image.sh"

tmp=$(mktemp -d /tmp/bench-mesh-api.XXXXXX)
chmod 755 "$tmp"
daemon=""
wrk_pid=""
shoal() { "$BIN" -H "$API" "$@"; }
cleanup() {
  [ -n "$wrk_pid" ] && kill "$wrk_pid" 2>/dev/null || true
  if [ -n "$daemon" ]; then
    local id
    id=$(cat "$tmp/node-id" 2>/dev/null || true)
    shoal service rm meshbench >/dev/null 2>&1 || true
    kill "$daemon" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
    if [ -n "$id" ]; then
      cids=$(docker ps -aq --filter "label=shoal.node.id=$id" 2>/dev/null || true)
      # shellcheck disable=SC2086
      [ -n "$cids" ] && docker rm -f -v $cids >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Waits (bounded) until "$@" succeeds.
wait_ok() {
  local what=$1 n=$2
  shift 2
  for _ in $(seq "$n"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench-mesh-api: timed out waiting for $what; the node's log:" >&2
  tail -30 "$tmp/daemon.log" >&2
  exit 1
}

"$BIN" daemon --init --data-dir "$tmp/data" --advertise-addr "$NODE" --api-addr "$API" \
  --hostname meshbench --mesh "$MESH" </dev/null >"$tmp/daemon.log" 2>&1 &
daemon=$!
wait_ok "the node's API" 300 shoal node ls
shoal node ls -q 2>/dev/null | head -1 >"$tmp/node-id" || true

# The task: nginx, listening on the container's port 80.
mkdir -p "$tmp/www"
cat >"$tmp/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $tmp/www/nginx.pid; error_log $tmp/www/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $tmp/www; proxy_temp_path $tmp/www; fastcgi_temp_path $tmp/www; uwsgi_temp_path $tmp/www; scgi_temp_path $tmp/www;
  server { listen 80 backlog=4096; location = / { return 200 "hello from shoal\n"; } }
}
EOF
shoal service create --name meshbench --publish "$PORT:80" \
  --mount "type=bind,source=/,target=/host,readonly" \
  --mount "type=bind,source=$tmp/www,target=/host$tmp/www" \
  "$IMAGE" chroot /host /usr/sbin/nginx -p "$tmp/www" -c "$tmp/nginx.conf" >/dev/null
wait_ok "nginx to answer through the mesh at $NODE:$PORT" 600 curl -fsS -m 1 -o /dev/null "http://$NODE:$PORT/"

# One sample: $WRITES API writes, one after the other; their seconds, one a line.
n=0
writes() {
  local i
  for i in $(seq "$WRITES"); do
    n=$((n + 1))
    curl -sS -o /dev/null -w '%{time_total}\n' -H 'Content-Type: application/json' \
      -d "{\"Name\":\"meshbench-$n\",\"Data\":\"aGVsbG8=\"}" "http://$API/v1.41/configs/create"
  done
}
pct() { # percentile p of the numbers in file $1, in microseconds
  sort -g "$1" | awk -v p="$2" '{v[NR] = $1} END { i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; printf "%d", v[i] * 1000000 }'
}

: >"$tmp/idle"
: >"$tmp/load"
rps=()
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS: $WRITES writes idle, then $WRITES under wrk -c64 at $NODE:$PORT" >&2
  writes >>"$tmp/idle"
  wrk -t1 -c64 -d600s "http://$NODE:$PORT/" >"$tmp/wrk.out" 2>&1 &
  wrk_pid=$!
  sleep 1
  writes >>"$tmp/load"
  kill -INT "$wrk_pid" 2>/dev/null || true
  wait "$wrk_pid" 2>/dev/null || true
  wrk_pid=""
  rps+=("$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$tmp/wrk.out")")
done

i50=$(pct "$tmp/idle" 50)
i99=$(pct "$tmp/idle" 99)
l50=$(pct "$tmp/load" 50)
l99=$(pct "$tmp/load" 99)
echo
echo "shoal --mesh $MESH on $NODE; nginx task behind :$PORT; $((WRITES * ROUNDS)) API writes (POST /configs/create) each way"
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cpus; the mesh under load: ${rps[*]:-?} req/s (wrk -t1 -c64)"
printf '%-8s %10s %10s\n' "" P50_US P99_US
printf '%-8s %10s %10s\n' idle "$i50" "$i99"
printf '%-8s %10s %10s\n' loaded "$l50" "$l99"
awk -v a="$l99" -v b="$i99" -v c="$l50" -v d="$i50" 'BEGIN {
  r = (b > 0) ? a / b : 0
  printf "API write p99 loaded / idle: %.2f (target <= 2): %s; p50 %.2f\n", r, (r <= 2) ? "met" : "MISSED", (d > 0) ? c / d : 0 }'
