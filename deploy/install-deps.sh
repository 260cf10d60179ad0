#!/usr/bin/env bash
# Make a bare Debian machine (run as root) ready to build and test shoal:
# Docker engine running, busybox-static for the test image, networking tools,
# a C toolchain if there is none, Rust (via rustup) if cargo is missing, and
# rustfmt and clippy if they are.
#
# Idempotent and quiet on success: it installs only what is missing, runs
# `apt-get update` only when something is, and prints a log only on failure.
# After it, a fresh shell may need `. "$HOME/.cargo/env"` to find cargo.
set -euo pipefail

DOCKER_DEADLINE=${DOCKER_DEADLINE:-60}   # seconds to wait for `docker info`

die() { echo "install-deps: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"

log=$(mktemp /tmp/install-deps.XXXXXX)
trap 'rm -f "$log"' EXIT
# Run a command with its output in $log; on failure show the log and stop.
quiet() {
  if ! "$@" >>"$log" 2>&1; then
    echo "install-deps: failed: $*" >&2
    tail -n 50 "$log" >&2
    exit 1
  fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# docker.io: the engine; busybox-static: the offline test image; iproute2: `ip`
# (netns partition tests); nftables: the in-kernel routing mesh; curl and
# ca-certificates: rustup and the bench; jq: convenient for humans.
# chromium and fonts-dejavu-core: the web view's browser test (driven by
# playwright-core from npm, never a downloaded browser); node/npm for it.
# nginx: a backend that reads the PROXY protocol (the mesh proxy's test; it
# is run with a config of the test's own, never as a service); conntrack:
# the kernel mesh flushes a removed backend's UDP flows with it.
# docker-registry and apache2-utils (htpasswd): a registry on loopback that
# wants a login, for the --with-registry-auth test (run by the test itself,
# never as the package's service).
# wrk and haproxy: deploy/bench-mesh.sh's load generator and the proxy it
# compares shoal's with (run with a config of its own, never as a service).
want=(docker.io busybox-static iproute2 nftables curl ca-certificates jq chromium fonts-dejavu-core nginx conntrack tcpdump docker-registry apache2-utils wrk haproxy)
command -v node >/dev/null 2>&1 || want+=(nodejs)
command -v npm >/dev/null 2>&1 || want+=(npm)
# python3 and pip: the Docker SDK for Python (from PyPI, below) drives the
# Engine API tests.
command -v python3 >/dev/null 2>&1 || want+=(python3)
python3 -m pip --version >/dev/null 2>&1 || want+=(python3-pip)
# golang-go and golang-github-docker-docker-dev: the Docker Go SDK (its
# client package, Debian's 20.10 one, built offline in GOPATH mode) drives
# the Engine API tests.
want+=(golang-go golang-github-docker-docker-dev)
command -v cc >/dev/null 2>&1 || want+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || want+=(pkg-config)

missing=()
for p in "${want[@]}"; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  quiet apt-get update -q
  quiet apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
  echo "install-deps: installed ${missing[*]}"
fi

# Is a process with this exact name running? (procps may be absent.)
running() {
  local f
  for f in /proc/[0-9]*/comm; do
    [ "$(cat "$f" 2>/dev/null)" = "$1" ] && return 0
  done
  return 1
}

# Wait until `docker info` answers or $1 seconds pass.
docker_up() {
  local until=$((SECONDS + $1))
  while [ "$SECONDS" -lt "$until" ]; do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  docker info >/dev/null 2>&1
}

if ! docker info >/dev/null 2>&1; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl start docker >>"$log" 2>&1 || true
  elif [ -x /etc/init.d/docker ]; then
    service docker start >>"$log" 2>&1 || true
  fi
  if ! docker_up 10; then
    # No init system (containers, CI runners): run dockerd ourselves, detached.
    if ! running dockerd; then
      setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
    fi
    if ! docker_up "$DOCKER_DEADLINE"; then
      echo "install-deps: Docker did not answer within ${DOCKER_DEADLINE}s" >&2
      tail -n 30 /var/log/dockerd.log >&2 2>/dev/null || true
      exit 1
    fi
  fi
  echo "install-deps: dockerd is running"
fi

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  rustup_sh=$(mktemp /tmp/rustup.XXXXXX)
  quiet curl --proto '=https' --tlsv1.2 -sSf -o "$rustup_sh" https://sh.rustup.rs
  quiet sh "$rustup_sh" -y --profile minimal
  rm -f "$rustup_sh"
  echo "install-deps: installed Rust ($("$HOME/.cargo/bin/cargo" --version))"
fi

# The Docker SDK for Python, from PyPI (not Debian's older python3-docker):
# the Engine API tests drive a shoal manager with it. Debian's own python3
# refuses pip installs into it unless told (PEP 668).
DOCKER_SDK=docker==7.1.0
if ! python3 -c 'import docker' >/dev/null 2>&1; then
  if ! python3 -m pip install -q "$DOCKER_SDK" >>"$log" 2>&1; then
    quiet python3 -m pip install -q --break-system-packages "$DOCKER_SDK"
  fi
  echo "install-deps: installed the Docker SDK for Python ($DOCKER_SDK)"
fi

# rustfmt and clippy: CI checks formatting and lints before the tests (the
# minimal profile above leaves them out).
PATH="$PATH:$HOME/.cargo/bin"
for pair in fmt:rustfmt clippy:clippy; do
  sub=${pair%%:*} component=${pair##*:}
  cargo "$sub" --version >/dev/null 2>&1 && continue
  command -v rustup >/dev/null 2>&1 || die "cargo $sub is missing and there is no rustup to add $component with"
  quiet rustup component add "$component"
  echo "install-deps: installed $component"
done
