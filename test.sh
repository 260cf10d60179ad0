#!/usr/bin/env bash
# Builds shoal and runs every test: unit tests of each crate and the cluster
# tests in tests/, which spawn real `shoal daemon` processes against the
# machine's Docker engine. Extra arguments go to `cargo test`.
#
# With CI=true a missing Docker is a failure; otherwise the cluster tests
# announce that they skip.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo not found (deploy/install-deps.sh installs Rust)" >&2; exit 1; }

if command -v docker >/dev/null 2>&1 && timeout 30 docker info >/dev/null 2>&1; then
  if ! docker image inspect shoal/busybox:latest >/dev/null 2>&1; then
    bash deploy/build-image.sh
  fi
elif [ "${CI:-}" = true ]; then
  echo "test.sh: Docker is not reachable and CI=true: the cluster tests cannot run." >&2
  echo "test.sh: run deploy/install-deps.sh (as root) to install and start it." >&2
  exit 1
else
  echo "test.sh: WARNING: Docker is not reachable; the cluster tests will skip." >&2
fi

cargo build --release -p cli
SHOAL_BIN="$PWD/target/release/shoal"
export SHOAL_BIN
cargo test --workspace --release "$@"
