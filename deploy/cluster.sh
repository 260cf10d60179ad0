#!/usr/bin/env bash
# A local multi-node shoal cluster on one machine, all nodes sharing the
# machine's Docker engine.
#
# usage: deploy/cluster.sh up N [--build]   start (or resume) nodes 1..N
#        deploy/cluster.sh down [--purge]    stop them, remove their containers
#        deploy/cluster.sh status            processes and `shoal node ls`
#
# Node i advertises $SHOAL_NET.(10+i) (cluster port 4242) and serves its API
# at $SHOAL_NET.(10+i):4243; node1 bootstraps the cluster (--init), the others
# join it as workers. Everything a node has lives in $SHOAL_STATE/nodeI:
# data/ (its --data-dir), log, pid and id. `up` on an existing state resumes
# the nodes from their data dirs; `down --purge` forgets them.
#
#   SHOAL_BIN    shoal binary           (default <repo>/target/release/shoal)
#   SHOAL_STATE  state directory        (default <repo>/.shoal-local)
#   SHOAL_NET    first three octets     (default 127.0.0; kept in the state)
#   SHOAL_UP_DEADLINE    seconds to wait for the nodes to be Ready (default 60)
#   SHOAL_STOP_DEADLINE  seconds between SIGTERM and SIGKILL on down (default 20)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
STATE=${SHOAL_STATE:-$ROOT/.shoal-local}
UP_DEADLINE=${SHOAL_UP_DEADLINE:-60}
STOP_DEADLINE=${SHOAL_STOP_DEADLINE:-20}

die() { echo "cluster: $*" >&2; exit 1; }
usage() { sed -n '5,7s/^# //p' "$0" >&2; exit 2; }

# The network is fixed when the state is created, so that down/status find it.
if [ -f "$STATE/net" ]; then NET=$(cat "$STATE/net"); else NET=${SHOAL_NET:-127.0.0}; fi
addr() { echo "$NET.$((10 + $1))"; }
API="$(addr 1):4243"

shoal() { "$BIN" -H "$API" "$@"; }

# Node numbers that have a directory in the state, ascending.
known_nodes() {
  local d
  for d in "$STATE"/node*; do
    [ -d "$d" ] && echo "${d##*/node}"
  done | sort -n
}

# The PID in nodeI/pid if that process is alive and is a shoal daemon.
live_pid() {
  local f="$STATE/node$1/pid" pid try
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] || return 1
  # Guard against a recycled PID: it must still be `shoal daemon`. Right
  # after the start, setsid and nohup are still exec'ing: look twice.
  for try in 1 2 3; do
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q ' daemon '; then
      echo "$pid"
      return 0
    fi
    [ -e "/proc/$pid" ] || return 1
    sleep 0.2
  done
  return 1
}

# `node ls --format json` as lines "hostname id status". Node objects are flat
# apart from `labels`, so the keys come in order: id … hostname … status.
node_rows() {
  shoal node ls --format json 2>/dev/null |
    grep -oE '"(id|hostname|status)"[[:space:]]*:[[:space:]]*"[^"]*"' |
    awk -F'"' '$2 == "id" { id = $4 } $2 == "hostname" { h = $4 } $2 == "status" { print h, id, $4 }'
}

log_tail() {
  echo "--- last lines of $STATE/node$1/log ---" >&2
  tail -n 30 "$STATE/node$1/log" >&2 || true
}

start_node() { # i [extra daemon flags…]
  local i=$1 dir="$STATE/node$1"
  shift
  mkdir -p "$dir/data"
  echo "=== $(date -Is) cluster.sh: starting node$i${*:+ $*}" >>"$dir/log"
  setsid nohup "$BIN" daemon --data-dir "$dir/data" --advertise-addr "$(addr "$i")" \
    --api-addr "$(addr "$i"):4243" --hostname "node$i" "$@" \
    >>"$dir/log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
}

# A node that has joined has its identity in data/node.json: it resumes
# (shoal refuses --init/--join on such a data dir).
has_data() { [ -f "$STATE/node$1/data/node.json" ]; }

cmd_up() {
  local n=${1:-} build=0 i token until rows ready
  if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 200 ]; then usage; fi
  [ "${2:-}" = --build ] && build=1
  [ "$#" -le 2 ] || usage
  if [ "$build" = 1 ]; then
    (cd "$ROOT" && cargo build --release -p cli)
  fi
  [ -x "$BIN" ] || die "no shoal binary at $BIN (build it: cargo build --release -p cli, or pass --build)"
  for i in $(known_nodes); do
    if live_pid "$i" >/dev/null; then die "node$i is already running; run '$0 down' first"; fi
  done
  mkdir -p "$STATE"
  echo "$NET" >"$STATE/net"

  if has_data 1; then start_node 1; else start_node 1 --init; fi
  until=$((SECONDS + 30))
  until token=$(shoal join-token worker -q 2>/dev/null) && [ -n "$token" ]; do
    live_pid 1 >/dev/null || { log_tail 1; die "node1 exited"; }
    [ "$SECONDS" -lt "$until" ] || { log_tail 1; die "node1's API at $API did not answer in 30s"; }
    sleep 0.2
  done
  for ((i = 2; i <= n; i++)); do
    if has_data "$i"; then
      start_node "$i"
    else
      start_node "$i" --join "$(addr 1):4242" --token "$token"
    fi
  done

  until=$((SECONDS + UP_DEADLINE))
  while :; do
    rows=$(node_rows || true)
    ready=0
    for ((i = 1; i <= n; i++)); do
      grep -q "^node$i [^ ]* ready$" <<<"$rows" && ready=$((ready + 1))
    done
    [ "$ready" = "$n" ] && break
    for ((i = 1; i <= n; i++)); do
      live_pid "$i" >/dev/null || { log_tail "$i"; die "node$i exited"; }
    done
    if [ "$SECONDS" -ge "$until" ]; then
      echo "cluster: only $ready of $n nodes Ready after ${UP_DEADLINE}s; node ls says:" >&2
      echo "$rows" >&2
      die "giving up (logs in $STATE/node*/log)"
    fi
    sleep 0.3
  done
  # Remember the ids: `down` removes those nodes' containers even when the
  # API is gone by then.
  for ((i = 1; i <= n; i++)); do
    awk -v h="node$i" '$1 == h { print $2 }' <<<"$rows" >"$STATE/node$i/id"
  done
  shoal node ls
  echo
  echo "cluster: $n node(s) up; try: export SHOAL_HOST=$API"
}

cmd_down() {
  local purge=0 i pid ids=() pids=() until id
  case "${1:-}" in --purge) purge=1 ;; "") ;; *) usage ;; esac
  [ -d "$STATE" ] || { echo "cluster: nothing to stop ($STATE does not exist)"; return 0; }
  # Ids first, while node1 may still answer.
  local rows=""
  for i in $(known_nodes); do
    if [ ! -s "$STATE/node$i/id" ]; then
      [ -n "$rows" ] || rows=$(node_rows || true)
      awk -v h="node$i" '$1 == h { print $2 }' <<<"$rows" >"$STATE/node$i/id"
    fi
    id=$(cat "$STATE/node$i/id")
    [ -n "$id" ] && ids+=("$id")
  done
  for i in $(known_nodes); do
    if pid=$(live_pid "$i"); then kill -TERM "$pid" 2>/dev/null || true; pids+=("$i"); fi
  done
  until=$((SECONDS + STOP_DEADLINE + 1))
  for i in "${pids[@]}"; do
    while pid=$(live_pid "$i") && [ "$SECONDS" -lt "$until" ]; do sleep 0.1; done
    if pid=$(live_pid "$i"); then
      echo "cluster: node$i did not stop in ${STOP_DEADLINE}s, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for i in $(known_nodes); do rm -f "$STATE/node$i/pid"; done
  local cids removed=0
  if [ "${#ids[@]}" -gt 0 ] && command -v docker >/dev/null 2>&1; then
    for id in "${ids[@]}"; do
      cids=$(docker ps -aq --filter "label=shoal.node.id=$id" 2>/dev/null || true)
      if [ -n "$cids" ]; then
        # shellcheck disable=SC2086 # one id per word
        docker rm -f -v $cids >/dev/null
        removed=$((removed + $(wc -w <<<"$cids")))
      fi
    done
  fi
  echo "cluster: stopped ${#pids[@]} node(s), removed $removed container(s)"
  if [ "$purge" = 1 ]; then
    rm -rf "$STATE"
    echo "cluster: removed $STATE"
  fi
}

cmd_status() {
  local i pid any=0
  [ -d "$STATE" ] || { echo "cluster: no local cluster ($STATE does not exist)"; return 0; }
  for i in $(known_nodes); do
    any=1
    if pid=$(live_pid "$i"); then
      echo "node$i  $(addr "$i")  running (pid $pid)"
    else
      echo "node$i  $(addr "$i")  stopped"
    fi
  done
  [ "$any" = 1 ] || { echo "cluster: no nodes in $STATE"; return 0; }
  echo
  [ -x "$BIN" ] || die "no shoal binary at $BIN"
  if live_pid 1 >/dev/null; then
    shoal node ls
  else
    echo "node1 (the API at $API) is not running"
  fi
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; [ "$#" = 0 ] || usage; cmd_status ;;
  *) usage ;;
esac
