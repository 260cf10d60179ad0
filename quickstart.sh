#!/usr/bin/env bash
# One command from a fresh Debian machine (as root) to a running local
# cluster: installs what is missing (docker.io, busybox-static, …), starts
# Docker, builds shoal and the offline test image, brings up a 3-node
# cluster on 127.0.0.11-13 and creates a demo service.
#
# usage: ./quickstart.sh [NODES]        (default 3)
# Afterwards: export SHOAL_HOST=127.0.0.11:4243; target/release/shoal service ps demo
# Tear down:  deploy/cluster.sh down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
NODES=${1:-3}

bash deploy/install-deps.sh
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
bash deploy/build-image.sh
cargo build --release -p cli
# Already up (a second run): keep it.
if ! target/release/shoal -H 127.0.0.11:4243 node ls >/dev/null 2>&1; then
  bash deploy/cluster.sh up "$NODES"
fi

BIN=target/release/shoal
export SHOAL_HOST=127.0.0.11:4243
"$BIN" node ls
if ! "$BIN" service inspect demo >/dev/null 2>&1; then
  "$BIN" service create --name demo --replicas 6 shoal/busybox:latest ping 127.0.0.1
fi
# A published service: port 8080 answers on every node, round robin over its tasks.
if ! "$BIN" service inspect web >/dev/null 2>&1; then
  "$BIN" service create --name web --replicas 3 --publish 8080:80 shoal/busybox:latest \
    sh -c 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www'
fi
"$BIN" service ps demo
# The same cluster through the Docker Engine API, with the stock docker CLI.
DOCKER_HOST=tcp://127.0.0.11:4243 docker service ls
cat <<MSG

The cluster is up: node1 (manager) at 127.0.0.11, workers at 127.0.0.12-$((10 + NODES)).
Try:
  export SHOAL_HOST=127.0.0.11:4243
  $BIN service logs demo --tail 2
  for i in 1 2 3; do curl -s 127.0.0.13:8080; done     # the routing mesh: three task hostnames
  $BIN service scale demo=9
  open http://127.0.0.11:4243/ui in a browser           # the live web view of tasks on nodes
  $BIN events                   # the cluster's events as they happen (Ctrl-C to stop)
  export DOCKER_HOST=tcp://127.0.0.11:4243                # the docker CLI, unchanged:
  docker node ls; docker service ps web; docker service logs demo --tail 1
  $BIN service rm demo web
  deploy/cluster.sh down        # stop the nodes and remove their containers
MSG
