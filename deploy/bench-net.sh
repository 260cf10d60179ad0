#!/usr/bin/env bash
# Service-to-service networking on real (namespaced) hosts, in one run:
#   vip     HTTP GETs (a new connection each, CONCURRENCY at once) from a
#           client on host1 to `back`'s virtual IP (back: one busybox httpd
#           task on host2): requests/s, p50, p99;
#   direct  the same, straight to that task's address;
#   dns     answer latency (p50, p99) of `back` from the client: asking the
#           node's resolver (its gateway) and through Docker's embedded
#           resolver in the container (127.0.0.11, which forwards to it);
#   follow  back scaled to 2: time from the new task's RUNNING (its status
#           timestamp) to its address in `tasks.back` and to its first answer
#           through the VIP.
# The client is python3 run in the network namespace of a task on host1
# (`nsenter --net=/proc/PID/ns/net`), so it sees the overlay as a task does.
#
# usage: deploy/bench-net.sh [SECONDS]     (default 5 per load run)
#   CONCURRENCY=8        connections in flight
#   SHOAL_BIN            default <repo>/target/release/shoal
#   SHOAL_HOSTS_ID       the harness to use (default 230, outside the tests' 1-200), see deploy/hosts.sh
# Needs root (namespaces, engines) like deploy/hosts.sh; leaves nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-5}
CONCURRENCY=${CONCURRENCY:-8}
export SHOAL_BIN=${SHOAL_BIN:-$ROOT/target/release/shoal}
export SHOAL_HOSTS_ID=${SHOAL_HOSTS_ID:-230}
IMAGE=shoal/busybox:latest
HOSTS="$ROOT/deploy/hosts.sh"

die() { echo "bench-net: $*" >&2; exit 1; }
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive number"
[ -x "$SHOAL_BIN" ] || die "no shoal binary at $SHOAL_BIN (cargo build --release -p cli)"
command -v python3 >/dev/null || die "needs python3"

trap 'bash "$HOSTS" down >/dev/null 2>&1 || true' EXIT
bash "$HOSTS" down >/dev/null 2>&1 || true
bash "$HOSTS" up 2 --managers 1 --mesh kernel >/dev/null
on() { local i=$1; shift; bash "$HOSTS" exec "$i" "$@"; }

on 1 "$SHOAL_BIN" network create app >/dev/null
on 1 "$SHOAL_BIN" service create -d --name back --network app --constraint node.hostname==host2 "$IMAGE" \
  sh -c 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www' >/dev/null
on 1 "$SHOAL_BIN" service create -d --name client --network app --constraint node.hostname==host1 "$IMAGE" \
  sleep 100000 >/dev/null

# `service ps NAME --format json` until N tasks run; prints the JSON.
running() {
  local svc=$1 n=$2 deadline=$((SECONDS + 60)) out
  while [ $SECONDS -lt $deadline ]; do
    out=$(on 1 "$SHOAL_BIN" service ps "$svc" --format json 2>/dev/null || true)
    if [ "$(python3 -c 'import json,sys
t=json.load(sys.stdin)
print(sum(1 for x in t if x["status"]["state"]=="running" and x["desired_state"]=="running"))' <<<"$out" 2>/dev/null)" = "$n" ]; then
      echo "$out"
      return
    fi
    sleep 0.2
  done
  die "$svc: $n tasks did not run within 60 s"
}
back=$(running back 1)
client_ps=$(running client 1)
task_addr=$(python3 -c 'import json,sys; print([x for x in json.load(sys.stdin) if x["status"]["state"]=="running"][0]["addresses"][0]["addr"])' <<<"$back")
gateway=$(python3 -c 'import json,sys,ipaddress
t=[x for x in json.load(sys.stdin) if x["status"]["state"]=="running"][0]
print(ipaddress.ip_network(t["addresses"][0]["block"])[1])' <<<"$client_ps")
cid=$(python3 -c 'import json,sys; print([x for x in json.load(sys.stdin) if x["status"]["state"]=="running"][0]["status"]["container_id"])' <<<"$client_ps")
vip=$(on 1 "$SHOAL_BIN" service inspect back | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["vips"][0]["addr"])')
pid=$(on 1 docker inspect -f '{{.State.Pid}}' "$cid")
echo "bench-net: back's task $task_addr on host2, its VIP $vip; client on host1 (resolver $gateway); ${SECS} s per run, $CONCURRENCY in flight"

# Runs the python client (below) in the client task's network namespace.
client() { on 1 nsenter --net="/proc/$pid/ns/net" python3 - "$@" <<'PY'
import socket, struct, sys, threading, time, random, json

def get(ip):
    s = socket.create_connection((ip, 80), timeout=3)
    try:
        s.sendall(b"GET / HTTP/1.0\r\nHost: back\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n\r\n", 1)[-1].strip().decode()
    finally:
        s.close()

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")

def load(ip, secs, conc):
    lat, errors, stop = [], [0], time.time() + secs
    lock = threading.Lock()
    def worker():
        mine, err = [], 0
        while time.time() < stop:
            t0 = time.perf_counter()
            try:
                get(ip)
                mine.append(time.perf_counter() - t0)
            except OSError:
                err += 1
        with lock:
            lat.extend(mine)
            errors[0] += err
    ts = [threading.Thread(target=worker) for _ in range(conc)]
    t0 = time.time()
    for t in ts: t.start()
    for t in ts: t.join()
    took = time.time() - t0
    return {"rps": len(lat) / took, "p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3, "errors": errors[0]}

def query(name, qid):
    q = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)

def addresses(resp):
    # the answers' A records: 4-byte rdata at the end of each record (names compressed)
    n = struct.unpack(">H", resp[6:8])[0]
    i = 12
    while resp[i] != 0: i += resp[i] + 1
    i += 5
    out = []
    for _ in range(n):
        while True:
            if resp[i] & 0xC0 == 0xC0: i += 2; break
            if resp[i] == 0: i += 1; break
            i += resp[i] + 1
        typ, _, _, rdlen = struct.unpack(">HHIH", resp[i:i + 10])
        i += 10
        if typ == 1: out.append(socket.inet_ntoa(resp[i:i + 4]))
        i += rdlen
    return out

def ask(server, name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        qid = random.randrange(65536)
        s.sendto(query(name, qid), (server, 53))
        return s.recv(4096)
    finally:
        s.close()

def dns(server, n):
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        ask(server, "back")
        lat.append(time.perf_counter() - t0)
    return {"p50": pct(lat, 50) * 1e3, "p99": pct(lat, 99) * 1e3}

def follow(gateway, vip, known, secs):
    # polls until tasks.back has a new address and the VIP a new hostname
    seen_dns = seen_vip = None
    stop = time.time() + secs
    while time.time() < stop and (seen_dns is None or seen_vip is None):
        if seen_dns is None:
            try:
                if len(addresses(ask(gateway, "tasks.back"))) > 1: seen_dns = time.time()
            except OSError: pass
        if seen_vip is None:
            try:
                if get(vip) not in known: seen_vip = time.time()
            except OSError: pass
        time.sleep(0.005)
    return {"dns_at": seen_dns, "vip_at": seen_vip}

cmd = sys.argv[1]
if cmd == "load": print(json.dumps(load(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))))
elif cmd == "dns": print(json.dumps(dns(sys.argv[2], int(sys.argv[3]))))
elif cmd == "hostname": print(get(sys.argv[2]))
elif cmd == "follow": print(json.dumps(follow(sys.argv[2], sys.argv[3], set(sys.argv[4].split(",")), float(sys.argv[5]))))
PY
}

field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print('%.${3:-1}f' % d['$2'])" "$1"; }
client load "$vip" 1 "$CONCURRENCY" >/dev/null # warm up
vip_run=$(client load "$vip" "$SECS" "$CONCURRENCY")
direct_run=$(client load "$task_addr" "$SECS" "$CONCURRENCY")
gw_dns=$(client dns "$gateway" 2000)
docker_dns=$(client dns 127.0.0.11 2000)
first=$(client hostname "$vip")

on 1 "$SHOAL_BIN" service scale -d back=2 >/dev/null
seen=$(client follow "$gateway" "$vip" "$first" 60)
back=$(running back 2)
running_at=$(python3 -c 'import json,sys
t=[x for x in json.load(sys.stdin) if x["status"]["state"]=="running"]
print(max(x["status"]["timestamp"] for x in t) / 1000)' <<<"$back")
follow_ms() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); v=d['$1']; print('%.0f' % ((v - float(sys.argv[2])) * 1000) if v else 'never')" "$seen" "$running_at"; }

ratio=$(python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print('%.0f' % (100 * a['rps'] / b['rps']))" "$vip_run" "$direct_run")
printf '%-34s %10s %9s %9s %7s\n' "path" "req/s" "p50 ms" "p99 ms" "errors"
printf '%-34s %10s %9s %9s %7s\n' "through the VIP ($vip)" "$(field "$vip_run" rps 0)" "$(field "$vip_run" p50 2)" "$(field "$vip_run" p99 2)" "$(field "$vip_run" errors 0)"
printf '%-34s %10s %9s %9s %7s\n' "direct ($task_addr)" "$(field "$direct_run" rps 0)" "$(field "$direct_run" p50 2)" "$(field "$direct_run" p99 2)" "$(field "$direct_run" errors 0)"
echo "VIP / direct: $ratio %"
echo "DNS 'back' from a task: node resolver p50 $(field "$gw_dns" p50 3) ms p99 $(field "$gw_dns" p99 3) ms; via 127.0.0.11 p50 $(field "$docker_dns" p50 3) ms p99 $(field "$docker_dns" p99 3) ms"
echo "new task RUNNING -> in tasks.back: $(follow_ms dns_at) ms; -> answering through the VIP: $(follow_ms vip_at) ms"
