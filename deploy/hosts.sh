#!/usr/bin/env bash
# Real hosts on one machine: every shoal node in its own network namespace,
# with its own Docker engine, on a bridge this script owns.
#
# usage: deploy/hosts.sh up N [--managers M] [--mesh kernel|userspace]
#        deploy/hosts.sh exec I CMD…        run CMD inside host I (DOCKER_HOST, SHOAL_HOST set)
#        deploy/hosts.sh partition I J | heal I J   cut / restore the link between two hosts
#        deploy/hosts.sh isolate I | rejoin I       cut / restore host I from every other
#        deploy/hosts.sh kill I | stop I | start I  SIGKILL / SIGTERM / start host I's shoal
#        deploy/hosts.sh docker-restart I           stop host I's dockerd and start it again
#        deploy/hosts.sh status | down
#
# Host I is the namespace shoal<ID>-host<I> with the address $NET.(10+I) on
# its eth0, a veth into the bridge shoalbr<ID> ($NET.1/24, nothing routed off
# the machine, no NAT). Inside it: a dockerd of its own (data, exec root,
# pidfile and socket unix://$STATE/host<I>/docker.sock, started with
# `nsenter --net`, since `ip netns exec` remounts /sys and dockerd then fails
# with "Devices cgroup isn't mounted"), the test image loaded from the
# machine's engine (read only: `docker save`), and one `shoal daemon`
# (hostname host<I>, API 127.0.0.1:4243 in the namespace, cluster port
# $NET.(10+I):4242). Host1 inits, hosts 2..M join as managers, the rest as
# workers. As on a stock server, each host starts with ip_forward 0 (Docker
# turns it on and sets the FORWARD policy to DROP) and strict rp_filter (1).
#
# Partitions are nft drop rules in a bridge table of this script's
# (`bridge shoal_hosts_<ID>`); the root namespace gets one iptables accept
# (`FORWARD -i shoalbr<ID> -o shoalbr<ID>`) because br_netfilter sends
# bridged frames through the FORWARD chain, whose policy Docker sets to DROP.
# `down` removes all of it (shoal processes, containers, engines,
# namespaces, bridge, rules, state) and is safe to run twice. The machine's
# own Docker engine and its containers are never touched.
#
#   SHOAL_HOSTS_ID     0..254: picks $NET=10.231.<ID> and every name (default 0),
#                      so that several harnesses can run at once
#   SHOAL_HOSTS_STATE  state dir (default /run/shoal-hosts, /run/shoal-hosts-<ID> for ID>0)
#   SHOAL_BIN          shoal binary (default <repo>/target/release/shoal)
#   SHOAL_HOSTS_DEADLINE  seconds to wait for engines and nodes (default 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
ID=${SHOAL_HOSTS_ID:-0}
case "$ID" in '' | *[!0-9]*) echo "hosts: SHOAL_HOSTS_ID must be 0..254" >&2; exit 2 ;; esac
[ "$ID" -le 254 ] || { echo "hosts: SHOAL_HOSTS_ID must be 0..254" >&2; exit 2; }
if [ "$ID" = 0 ]; then DEFAULT_STATE=/run/shoal-hosts; else DEFAULT_STATE=/run/shoal-hosts-$ID; fi
STATE=${SHOAL_HOSTS_STATE:-$DEFAULT_STATE}
DEADLINE=${SHOAL_HOSTS_DEADLINE:-60}
NET=10.231.$ID
BR=shoalbr$ID
TABLE=shoal_hosts_$ID
IMAGE=shoal/busybox:latest
API=127.0.0.1:4243

die() { echo "hosts: $*" >&2; exit 1; }
usage() { sed -n '5,11s/^# //p' "$0" >&2; exit 2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

ns() { echo "shoal$ID-host$1"; }
addr() { echo "$NET.$((10 + $1))"; }
hdir() { echo "$STATE/host$1"; }
sock() { echo "unix://$(hdir "$1")/docker.sock"; }
# Runs a command in host I's network namespace, with its engine and node.
in_host() {
  local i=$1
  shift
  nsenter --net="/var/run/netns/$(ns "$i")" env DOCKER_HOST="$(sock "$i")" SHOAL_HOST=$API "$@"
}
hdocker() { local i=$1; shift; docker -H "$(sock "$i")" "$@"; }

# Host numbers with a namespace or a state dir, ascending.
known_hosts() {
  {
    ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^shoal$ID-host\([0-9]\+\)\$/\1/p"
    for d in "$STATE"/host*; do [ -d "$d" ] && echo "${d##*/host}"; done
  } | sort -un
}

# A PID from a pidfile if that process is alive and runs `what`.
live_pid() {
  local f=$1 what=$2 pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$what" || return 1
  echo "$pid"
}

# SIGTERM (or $3) to a pidfile's process, SIGKILL after $4 seconds, wait.
stop_pidfile() {
  local f=$1 what=$2 sig=${3:-TERM} grace=${4:-20} pid t=0
  pid=$(live_pid "$f" "$what") || { rm -f "$f"; return 0; }
  kill -"$sig" "$pid" 2>/dev/null || true
  while [ -e "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
    if [ "$t" -ge $((grace * 10)) ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    sleep 0.1
    t=$((t + 1))
  done
  rm -f "$f"
}

wait_until() { # wait_until SECONDS WHAT CMD…
  local limit=$1 what=$2 end
  shift 2
  end=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timed out after ${limit}s waiting for $what"
    sleep 0.1
  done
}

need_root() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, a bridge, a dockerd per host)"
  local c
  for c in ip nsenter nft iptables dockerd docker; do
    command -v "$c" >/dev/null || die "$c not found (deploy/install-deps.sh installs what is missing)"
  done
}

start_engine() {
  local i=$1 d
  d=$(hdir "$i")
  mkdir -p "$d/data" "$d/exec"
  [ -f "$d/daemon.json" ] || echo '{}' >"$d/daemon.json"
  # setsid: the engine outlives this script and ignores its terminal.
  setsid nsenter --net="/var/run/netns/$(ns "$i")" dockerd \
    --config-file "$d/daemon.json" --data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/dockerd.pid" \
    -H "$(sock "$i")" --cgroup-parent "/shoal-hosts-$ID-host$i" --log-level warn \
    </dev/null >>"$d/dockerd.log" 2>&1 &
}

wait_engine() {
  wait_until "$DEADLINE" "host$1's dockerd (log: $(hdir "$1")/dockerd.log)" hdocker "$1" version
}

start_shoal() { # start_shoal I [EXTRA FLAGS…]
  local i=$1 d mesh
  shift
  d=$(hdir "$i")
  mesh=$(cat "$STATE/mesh" 2>/dev/null || echo kernel)
  mkdir -p "$d/shoal"
  live_pid "$d/shoal.pid" ' daemon ' >/dev/null && die "host$i's shoal is already running"
  echo "=== hosts.sh: starting host$i's shoal $(date -Is)" >>"$d/shoal.log"
  setsid nsenter --net="/var/run/netns/$(ns "$i")" env DOCKER_HOST="$(sock "$i")" RUST_BACKTRACE=1 \
    "$BIN" daemon --data-dir "$d/shoal" --advertise-addr "$(addr "$i")" --api-addr $API \
    --hostname "host$i" --mesh "$mesh" "$@" </dev/null >>"$d/shoal.log" 2>&1 &
  echo $! >"$d/shoal.pid"
}

# Every host listed by node ls (as host1 sees it) is Ready.
all_ready() {
  local n=$1 out
  out=$(in_host 1 "$BIN" node ls 2>/dev/null) || return 1
  [ "$(grep -c ' Ready ' <<<"$out")" -eq "$n" ]
}

# Resident memory (MiB) of every process in host I's namespace whose name
# matches $2.
rss_mib() {
  local i=$1 pat=$2 pid kb=0 k
  for pid in $(ip netns pids "$(ns "$i")" 2>/dev/null); do
    grep -qE "$pat" "/proc/$pid/comm" 2>/dev/null || continue
    k=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    kb=$((kb + ${k:-0}))
  done
  awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }'
}

cmd_up() {
  local n=${1:-} managers=1 mesh=kernel i t0 t1 t2 t3 token mtoken p pids
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || usage
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --managers) managers=${2:-}; shift 2 ;;
      --mesh) mesh=${2:-}; shift 2 ;;
      *) usage ;;
    esac
  done
  [[ "$managers" =~ ^[0-9]+$ ]] && [ "$managers" -ge 1 ] && [ "$managers" -le "$n" ] || die "--managers must be 1..$n"
  case "$mesh" in kernel | userspace) ;; *) die "--mesh must be kernel or userspace" ;; esac
  need_root
  [ -x "$BIN" ] || die "shoal binary not found at $BIN (cargo build --release -p cli, or set SHOAL_BIN)"
  [ -z "$(known_hosts)" ] && ! ip link show "$BR" >/dev/null 2>&1 ||
    die "hosts of SHOAL_HOSTS_ID=$ID are already up (deploy/hosts.sh down first)"
  t0=$(now)
  mkdir -p "$STATE"
  echo "$mesh" >"$STATE/mesh"
  echo "$n" >"$STATE/hosts"

  # The bridge, the root namespace's one accept, the partition table.
  ip link add "$BR" type bridge
  ip addr add "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  iptables -I FORWARD -i "$BR" -o "$BR" -m comment --comment "shoal-hosts $ID" -j ACCEPT
  nft -f - <<EOF
table bridge $TABLE {
	set cut { type ipv4_addr . ipv4_addr; }
	set isolated { type ipv4_addr; }
	chain forward {
		type filter hook forward priority -200; policy accept;
		ip saddr . ip daddr @cut drop
		ip saddr @isolated drop
		ip daddr @isolated drop
	}
}
EOF
  for i in $(seq 1 "$n"); do
    mkdir -p "$(hdir "$i")"
    ip netns add "$(ns "$i")"
    ip link add "sh${ID}h$i" type veth peer name eth0 netns "$(ns "$i")"
    ip link set "sh${ID}h$i" master "$BR" up
    in_host "$i" ip link set lo up
    in_host "$i" ip addr add "$(addr "$i")/24" dev eth0
    in_host "$i" ip link set eth0 up
    # As on a stock server: no forwarding until Docker turns it on (and
    # then sets the FORWARD policy to DROP), strict reverse-path filtering.
    in_host "$i" sysctl -q -w net.ipv4.ip_forward=0 net.ipv4.conf.all.rp_filter=1 \
      net.ipv4.conf.default.rp_filter=1 net.ipv4.conf.eth0.rp_filter=1
    start_engine "$i"
  done
  # The image, saved once from the machine's engine (built there if missing).
  if [ ! -f "$STATE/image.tar" ]; then
    docker image inspect $IMAGE >/dev/null 2>&1 || "$ROOT/deploy/build-image.sh"
    docker save -o "$STATE/image.tar" $IMAGE
  fi
  for i in $(seq 1 "$n"); do wait_engine "$i"; done
  t1=$(now)
  # (`wait` with PIDs only: the engines are children of this shell too.)
  pids=()
  for i in $(seq 1 "$n"); do
    hdocker "$i" load -q -i "$STATE/image.tar" >/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || die "loading $IMAGE into an engine failed"; done
  t2=$(now)

  start_shoal 1 --init
  wait_until "$DEADLINE" "host1's API ($(hdir 1)/shoal.log)" in_host 1 "$BIN" join-token worker -q
  token=$(in_host 1 "$BIN" join-token worker -q)
  mtoken=$(in_host 1 "$BIN" join-token manager -q)
  for i in $(seq 2 "$n"); do
    if [ "$i" -le "$managers" ]; then
      start_shoal "$i" --join "$(addr 1):4242" --token "$mtoken"
    else
      start_shoal "$i" --join "$(addr 1):4242" --token "$token"
    fi
  done
  wait_until "$DEADLINE" "$n Ready hosts in host1's node ls" all_ready "$n"
  t3=$(now)
  echo "hosts: $n up ($managers manager(s), $mesh mesh) on $NET.0/24, cluster formed in $(since "$t0") s" \
    "(engines $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s," \
    "image $(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.1f", b-a}') s," \
    "shoal $(awk -v a="$t2" -v b="$t3" 'BEGIN{printf "%.1f", b-a}') s)"
  cmd_memory
  echo "hosts: deploy/hosts.sh exec I shoal node ls | exec I docker ps | down"
}

cmd_memory() {
  local i engine node te=0 tn=0
  for i in $(known_hosts); do
    engine=$(rss_mib "$i" '^(dockerd|containerd)$')
    node=$(rss_mib "$i" '^shoal$')
    te=$(awk -v a="$te" -v b="$engine" 'BEGIN{print a+b}')
    tn=$(awk -v a="$tn" -v b="$node" 'BEGIN{print a+b}')
    echo "hosts: host$i ($(addr "$i")) memory: dockerd+containerd $engine MiB, shoal $node MiB"
  done
  echo "hosts: memory in all: engines $te MiB, shoal $tn MiB"
}

host_arg() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] || usage
  [ -e "/var/run/netns/$(ns "$1")" ] || die "no host$1 (deploy/hosts.sh up N first)"
}

# `add` then `delete` of a set element is idempotent in nft 1.0.6 (no `destroy`).
cut() { nft add element bridge $TABLE "$1" "{ $2 }"; }
uncut() { nft add element bridge $TABLE "$1" "{ $2 }" && nft delete element bridge $TABLE "$1" "{ $2 }"; }

# Lazily unmounts everything mounted below $1, deepest first.
umount_under() {
  local m
  for m in $(awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

cmd_down() {
  local i d
  need_root
  for i in $(known_hosts); do
    stop_pidfile "$(hdir "$i")/shoal.pid" ' daemon ' TERM 20 &
  done
  wait
  for i in $(known_hosts); do
    (
      d=$(hdir "$i")
      if live_pid "$d/dockerd.pid" dockerd >/dev/null; then
        ids=$(hdocker "$i" ps -aq 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$ids" ] || hdocker "$i" rm -f $ids >/dev/null 2>&1 || true
      fi
      stop_pidfile "$d/dockerd.pid" dockerd TERM 30
      # Whatever is left in the namespace was started by this script
      # (containerd, shims): end it by PID.
      for pid in $(ip netns pids "$(ns "$i")" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
      # Mounts the engine left under its dirs (overlays, netns bind mounts).
      umount_under "$d"
      ip netns del "$(ns "$i")" 2>/dev/null || true
      ip link del "sh${ID}h$i" 2>/dev/null || true
    ) &
  done
  wait
  ip link del "$BR" 2>/dev/null || true
  while iptables -D FORWARD -i "$BR" -o "$BR" -m comment --comment "shoal-hosts $ID" -j ACCEPT 2>/dev/null; do :; done
  nft delete table bridge $TABLE 2>/dev/null || true
  if [ -d "$STATE" ]; then
    umount_under "$STATE"
    rm -rf --one-file-system "$STATE"
  fi
  echo "hosts: down (SHOAL_HOSTS_ID=$ID)"
}

cmd_status() {
  local i
  for i in $(known_hosts); do
    printf 'host%s %s  shoal:%s  dockerd:%s\n' "$i" "$(addr "$i")" \
      "$(live_pid "$(hdir "$i")/shoal.pid" ' daemon ' || echo down)" \
      "$(live_pid "$(hdir "$i")/dockerd.pid" dockerd || echo down)"
  done
  nft list table bridge $TABLE 2>/dev/null | grep -A2 'set \(cut\|isolated\)' | grep elements || true
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  memory) cmd_memory ;;
  exec)
    host_arg "${2:-}"
    i=$2
    shift 2
    [ $# -gt 0 ] || usage
    exec nsenter --net="/var/run/netns/$(ns "$i")" env DOCKER_HOST="$(sock "$i")" SHOAL_HOST=$API "$@"
    ;;
  partition | heal)
    host_arg "${2:-}"
    host_arg "${3:-}"
    [ "$2" != "$3" ] || die "a host is not partitioned from itself"
    a=$(addr "$2")
    b=$(addr "$3")
    if [ "$1" = partition ]; then cut cut "$a . $b, $b . $a"; else uncut cut "$a . $b, $b . $a"; fi
    ;;
  isolate) host_arg "${2:-}"; cut isolated "$(addr "$2")" ;;
  rejoin) host_arg "${2:-}"; uncut isolated "$(addr "$2")" ;;
  kill) host_arg "${2:-}"; stop_pidfile "$(hdir "$2")/shoal.pid" ' daemon ' KILL 0 ;;
  stop) host_arg "${2:-}"; stop_pidfile "$(hdir "$2")/shoal.pid" ' daemon ' TERM 20 ;;
  start) host_arg "${2:-}"; start_shoal "$2" ;;
  docker-restart)
    host_arg "${2:-}"
    stop_pidfile "$(hdir "$2")/dockerd.pid" dockerd TERM 30
    start_engine "$2"
    wait_engine "$2"
    ;;
  *) usage ;;
esac
