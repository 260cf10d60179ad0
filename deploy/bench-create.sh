#!/usr/bin/env bash
# How long until 30 replicas run, side by side:
#   shoal  `shoal service create -d --replicas 30` on a fresh local 3-node
#          cluster, until `service ps` shows 30 tasks running;
#   engine `docker service create -d --replicas 30` with the stock docker CLI
#          against that same shoal cluster (its Docker Engine API), until 30
#          tasks run;
#   floor  the same 30 containers through Docker directly (`docker run -d`,
#          all 30 in parallel), until all run: no orchestrator can beat it;
#   swarm  `docker service create --replicas 30` on a single-node Docker Swarm
#          (made with `docker swarm init` unless the engine already is in one,
#          and left again afterwards), until 30 tasks run.
# Each is timed ROUNDS times; the medians, the ratios shoal/floor and
# shoal/swarm, and the resident memory of idle node processes are printed.
#
# usage: deploy/bench-create.sh [ROUNDS]      (default 3)
#   REPLICAS=30               replicas per run
#   BENCH_PARTS=shoal,engine,floor,swarm   which to run (engine needs shoal)
#   BENCH_NET=127.0.250       the cluster's addresses ($BENCH_NET.11-13)
#   BENCH_DEADLINE=300        seconds before a run counts as failed
#   SHOAL_BIN                 default <repo>/target/release/shoal
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${1:-3}
REPLICAS=${REPLICAS:-30}
PARTS=${BENCH_PARTS:-shoal,engine,floor,swarm}
DEADLINE=${BENCH_DEADLINE:-300}
IMAGE=shoal/busybox:latest
export SHOAL_BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}

die() { echo "bench: $*" >&2; exit 1; }
has_part() { [[ ",$PARTS," == *",$1,"* ]]; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[[ "$REPLICAS" =~ ^[1-9][0-9]*$ ]] || die "REPLICAS must be a positive number"
docker info >/dev/null 2>&1 || die "cannot reach Docker"
docker image inspect "$IMAGE" >/dev/null 2>&1 || bash "$ROOT/deploy/build-image.sh"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Poll `$@` (which prints a number) every 0.1 s until it prints $1; fail
# after DEADLINE seconds. Prints the elapsed ms since $2.
wait_count() {
  local want=$1 t0=$2 what=$3 got=""
  shift 3
  local until=$((SECONDS + DEADLINE))
  while :; do
    got=$("$@" 2>/dev/null || true)
    [ "$got" = "$want" ] && break
    [ "$SECONDS" -lt "$until" ] || die "$what: ${got:-?} of $want after ${DEADLINE}s"
    sleep 0.1
  done
  echo $(($(now_ms) - t0))
}

# Wait (untimed) until no container carries label $1.
wait_gone() {
  local until=$((SECONDS + DEADLINE))
  while [ -n "$(docker ps -aq --filter "label=$1")" ]; do
    [ "$SECONDS" -lt "$until" ] || die "containers with label $1 still there after ${DEADLINE}s"
    sleep 0.2
  done
}

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

# --- cleanup: only what this script made ------------------------------------

STATE=""
swarm_made=0
gwbridge_before=1
cleanup() {
  local ids
  ids=$(docker ps -aq --filter label=shoal-bench=floor 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  if has_part swarm; then
    ids=$(docker service ls -q --filter label=shoal-bench=swarm 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker service rm $ids >/dev/null 2>&1 || true
  fi
  if [ "$swarm_made" = 1 ]; then
    docker swarm leave --force >/dev/null 2>&1 || true
    # `swarm init` made this network; `swarm leave` does not remove it.
    [ "$gwbridge_before" = 1 ] || docker network rm docker_gwbridge >/dev/null 2>&1 || true
  fi
  if [ -n "$STATE" ]; then
    SHOAL_STATE=$STATE bash "$ROOT/deploy/cluster.sh" down --purge >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- setup ------------------------------------------------------------------

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
rss_line=""
if has_part engine && ! has_part shoal; then die "the engine part runs against the shoal cluster: add shoal to BENCH_PARTS"; fi
if has_part shoal; then
  [ -x "$SHOAL_BIN" ] || die "no shoal binary at $SHOAL_BIN (cargo build --release -p cli)"
  STATE=$(mktemp -d /tmp/shoal-bench.XXXXXX)
  export SHOAL_STATE=$STATE SHOAL_NET=${BENCH_NET:-127.0.250}
  echo "bench: starting a 3-node shoal cluster at $SHOAL_NET.11-13"
  bash "$ROOT/deploy/cluster.sh" up 3 >/dev/null
  API=$SHOAL_NET.11:4243
  sleep 3 # let it settle: measure an idle node
  m=$(rss_kib "$(cat "$STATE/node1/pid")")
  w=$(rss_kib "$(cat "$STATE/node2/pid")")
  rss_line=$(awk -v m="$m" -v w="$w" 'BEGIN { printf "idle VmRSS: node1 (manager) %.1f MiB, node2 (worker) %.1f MiB", m / 1024, w / 1024 }')
fi

swarm_note=""
if has_part swarm; then
  case $(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null) in
    inactive)
      gwbridge_before=0
      docker network inspect docker_gwbridge >/dev/null 2>&1 && gwbridge_before=1
      if out=$(docker swarm init --advertise-addr 127.0.0.1 2>&1); then
        swarm_made=1
      else
        swarm_note="docker swarm init failed: $(echo "$out" | head -n 1)"
      fi
      ;;
    active)
      [ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] ||
        swarm_note="this engine is a swarm worker, not a manager"
      ;;
    *) swarm_note="engine is in an unexpected swarm state" ;;
  esac
fi

# --- the three measurements -------------------------------------------------

shoal_running() {
  "$SHOAL_BIN" -H "$API" service ps "$1" --format json |
    grep -oE '"state"[[:space:]]*:[[:space:]]*"running"' | wc -l | tr -d ' '
}
floor_running() {
  docker ps -q --filter label=shoal-bench=floor --filter status=running | wc -l | tr -d ' '
}
swarm_running() {
  docker service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' |
    grep -c '^Running' || true
}

run_shoal() { # round
  local svc="bench-r$1" t0 ms
  t0=$(now_ms)
  "$SHOAL_BIN" -H "$API" service create -d --name "$svc" --replicas "$REPLICAS" "$IMAGE" sleep 100000 >/dev/null
  ms=$(wait_count "$REPLICAS" "$t0" "shoal $svc" shoal_running "$svc")
  "$SHOAL_BIN" -H "$API" service rm "$svc" >/dev/null
  wait_gone "shoal.service.name=$svc"
  echo "$ms"
}

run_engine() { # round
  local svc="bench-engine-r$1" t0 ms
  t0=$(now_ms)
  # The stock docker CLI, talking to the shoal manager's Engine API.
  docker -H "tcp://$API" service create -d -q --no-resolve-image --name "$svc" --replicas "$REPLICAS" "$IMAGE" sleep 100000 >/dev/null
  ms=$(wait_count "$REPLICAS" "$t0" "engine $svc" shoal_running "$svc")
  docker -H "tcp://$API" service rm "$svc" >/dev/null
  wait_gone "shoal.service.name=$svc"
  echo "$ms"
}

run_floor() { # round
  local t0 ms
  t0=$(now_ms)
  seq 1 "$REPLICAS" | xargs -P "$REPLICAS" -I{} \
    docker run -d --label shoal-bench=floor --name "shoal-bench-floor-r$1-{}" "$IMAGE" sleep 100000 >/dev/null
  ms=$(wait_count "$REPLICAS" "$t0" "docker run" floor_running)
  # shellcheck disable=SC2046
  docker rm -f $(docker ps -aq --filter label=shoal-bench=floor) >/dev/null
  echo "$ms"
}

run_swarm() { # round
  local svc="shoal-bench-swarm-r$1" t0 ms
  t0=$(now_ms)
  # --no-resolve-image: the image is local only, there is no registry to ask.
  docker service create -d -q --no-resolve-image --label shoal-bench=swarm --name "$svc" \
    --replicas "$REPLICAS" "$IMAGE" sleep 100000 >/dev/null
  ms=$(wait_count "$REPLICAS" "$t0" "swarm $svc" swarm_running "$svc")
  docker service rm "$svc" >/dev/null
  wait_gone "com.docker.swarm.service.name=$svc"
  echo "$ms"
}

results=$(mktemp)
for ((r = 1; r <= ROUNDS; r++)); do
  line="round $r:"
  for part in shoal engine floor swarm; do
    has_part "$part" || continue
    [ "$part" = swarm ] && [ -n "$swarm_note" ] && continue
    ms=$("run_$part" "$r")
    echo "$part $ms" >>"$results"
    line+=$(printf '  %s %6d ms' "$part" "$ms")
  done
  echo "$line"
done

# --- report -------------------------------------------------------------------

med() { awk -v p="$1" '$1 == p { print $2 }' "$results" | median; }
shoal_ms=$(med shoal)
engine_ms=$(med engine)
floor_ms=$(med floor)
swarm_ms=$(med swarm)
rm -f "$results"
secs() { awk -v ms="$1" 'BEGIN { printf "%7.2f s", ms / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

echo
echo "median of $ROUNDS round(s), $REPLICAS replicas of $IMAGE (sleep 100000):"
[ -n "$shoal_ms" ] && echo "  shoal  $(secs "$shoal_ms")   service create on 3 nodes → $REPLICAS running"
[ -n "$engine_ms" ] && echo "  engine $(secs "$engine_ms")   docker service create (Engine API) on the same cluster → $REPLICAS running"
[ -n "$floor_ms" ] && echo "  floor  $(secs "$floor_ms")   $REPLICAS × docker run -d in parallel"
if [ -n "$swarm_ms" ]; then
  echo "  swarm  $(secs "$swarm_ms")   docker service create on 1 node → $REPLICAS running"
elif has_part swarm; then
  echo "  swarm      n/a    ($swarm_note)"
fi
if [ -n "$shoal_ms" ]; then
  [ -n "$floor_ms" ] && echo "  shoal/floor  $(ratio "$shoal_ms" "$floor_ms")"
  [ -n "$swarm_ms" ] && echo "  shoal/swarm  $(ratio "$shoal_ms" "$swarm_ms")"
fi
if [ -n "$engine_ms" ]; then
  [ -n "$swarm_ms" ] && echo "  engine/swarm $(ratio "$engine_ms" "$swarm_ms")"
  echo "  engine/shoal $(ratio "$engine_ms" "$shoal_ms")"
fi
if [ -n "$rss_line" ]; then echo "  $rss_line"; fi
