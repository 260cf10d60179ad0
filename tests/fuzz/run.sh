#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) with libFuzzer for SECONDS
# each (default 60), then prints each target's executions and the total.
# Exits non-zero when a target crashes (a panic, a timeout, an out-of-memory),
# leaving the input under tests/fuzz/artifacts/TARGET/.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# The committed seeds (corpus/TARGET) and crash inputs (regressions/TARGET)
# are read, never written: what libFuzzer finds goes to target/corpus/TARGET,
# kept between runs. Installs cargo-fuzz (from crates.io) when it is missing.
#
# Toolchain: libFuzzer's instrumentation needs nightly flags. By default the
# machine's stable toolchain is used with RUSTC_BOOTSTRAP=1 (a new machine
# has only stable and cannot fetch another); FUZZ_TOOLCHAIN=nightly uses
# nightly instead. FUZZ_SANITIZER (default none: the code is safe Rust and
# what is looked for is a panic) can be address.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

secs=${1:-60}
shift || true
# The fuzz crate is its own workspace with its own target directory.
unset CARGO_TARGET_DIR
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz --version 0.13.2
fi

toolchain=${FUZZ_TOOLCHAIN:-stable}
if [ "$toolchain" = stable ]; then
  export RUSTC_BOOTSTRAP=1
fi
sanitizer=${FUZZ_SANITIZER:-none}
fuzz() { cargo "+$toolchain" fuzz "$@"; }

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(fuzz list)
fi

echo "fuzz: building ${#targets[@]} targets ($(cargo "+$toolchain" --version), sanitizer $sanitizer)"
start=$SECONDS
fuzz build -s "$sanitizer"
echo "fuzz: built in $((SECONDS - start)) s"

total=0
failed=()
summary=()
for t in "${targets[@]}"; do
  work=target/corpus/$t
  mkdir -p "$work" "artifacts/$t"
  dirs=("$work" "corpus/$t")
  [ -d "regressions/$t" ] && dirs+=("regressions/$t")
  log=target/fuzz-$t.log
  status=0
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a decoder
  # asked to allocate what an input claims is a crash too.
  fuzz run -s "$sanitizer" "$t" "${dirs[@]}" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  runs=${runs:-0}
  total=$((total + runs))
  if [ "$status" != 0 ]; then
    failed+=("$t")
    summary+=("$(printf '%-12s %12s executions  CRASHED (exit %s, see %s)' "$t" "$runs" "$status" "tests/fuzz/$log")")
    grep -E -m 20 "panicked|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" >&2 || tail -n 30 "$log" >&2
  else
    summary+=("$(printf '%-12s %12s executions' "$t" "$runs")")
  fi
done

echo "fuzz: ${secs} s per target"
printf '%s\n' "${summary[@]}"
printf '%-12s %12s executions\n' total "$total"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]}" >&2
  exit 1
fi
