#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of what tailsift reads from outside: the
# rules parser, the config loader and both OTLP decoders (fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     default 40: what CI runs (about 3 minutes of
#                                            fuzzing for the four targets, plus the build)
#
# Each target starts from its committed seed corpus (fuzz/corpus/TARGET, never modified here)
# and writes what it finds to a scratch corpus under $FUZZ_WORK (default a temporary
# directory). A crash, a panic, a timeout (30 s for one input) or more than 2 GiB of memory is
# a finding: the input is kept under $FUZZ_WORK/artifacts/TARGET/ and the script fails. (With
# 5 s, a 5-minute run on this shared 2-core machine reported a timeout for an input that runs
# in 20 ms alone: the machine, not the input; 30 s still catches a hang.)
#
# cargo-fuzz is installed once under $TAILSIFT_TOOLS (as scripts/test.sh installs the broker).
# libFuzzer's instrumentation flags are nightly-only: RUSTC_BOOTSTRAP=1 lets this stable
# toolchain pass them. The build uses no sanitizer (`--sanitizer none`): tailsift has no
# `unsafe` code, so AddressSanitizer would only slow the runs; libFuzzer still catches panics,
# aborts, timeouts and memory growth.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-40}
TARGETS=(rules_parser config_loader otlp_proto otlp_json)
CARGO_FUZZ_VERSION=0.13.2
if [ -z "${TAILSIFT_TOOLS:-}" ]; then
  if mkdir -p /opt/tailsift-ci 2>/dev/null && [ -w /opt/tailsift-ci ]; then
    TAILSIFT_TOOLS=/opt/tailsift-ci
  else
    TAILSIFT_TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/tailsift"
  fi
fi
CARGO_FUZZ="$TAILSIFT_TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION/bin/cargo-fuzz"
if ! "$CARGO_FUZZ" --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION (once)"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked \
    --root "$TAILSIFT_TOOLS/cargo-fuzz-$CARGO_FUZZ_VERSION"
fi
export RUSTC_BOOTSTRAP=1
# The instrumented build is kept beside the tools: CI runs in a fresh clone each time, and a
# clean build of every dependency with coverage instrumentation takes minutes.
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$TAILSIFT_TOOLS/fuzz-target}
WORK=${FUZZ_WORK:-$(mktemp -d -t tailsift-fuzz.XXXXXX)}
mkdir -p "$WORK"

cd fuzz
started=$(date +%s)
# The whole build log on failure (the fuzz crate is outside the workspace: `cargo clippy` does
# not see it, and an API change shows up here first).
if ! "$CARGO_FUZZ" build --release --sanitizer none --target-dir "$FUZZ_TARGET_DIR" >"$WORK/build.log" 2>&1; then
  grep -v '^ *Compiling' "$WORK/build.log" | head -n 60
  echo "fuzz build FAILED"
  exit 1
fi
tail -n 1 "$WORK/build.log"
echo "fuzz build: $(( $(date +%s) - started )) s"

status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$WORK/$t" "$WORK/artifacts/$t"
  log="$WORK/$t.log"
  if "$CARGO_FUZZ" run --release --sanitizer none --target-dir "$FUZZ_TARGET_DIR" \
      "$t" "$WORK/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$WORK/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    tail -n 40 "$log"
  fi
  execs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | awk '{print $2}')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | awk '{print $2}')
  units=$(ls "$WORK/$t" | wc -l)
  echo "fuzz $t: $result, ${execs:-?} executions in ${SECONDS_PER_TARGET}s, coverage ${cov:-?} edges (${ft:-?} features), $units new corpus units, findings: $(ls "$WORK/artifacts/$t" | wc -l)"
done
exit "$status"
