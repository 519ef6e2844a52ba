#!/usr/bin/env bash
# Runs the whole test suite against a real Kafka broker.
#
# The broker is nisshi (a Kafka-protocol broker from crates.io). It is installed once, outside
# the repository, under $TAILSIFT_TOOLS (default /opt/tailsift-ci, or ~/.cache/tailsift when
# /opt is not writable), started on a free local port for this run, and stopped afterwards.
# Set TAILSIFT_TEST_BROKERS=host:port to use a broker of your own instead.
set -euo pipefail
cd "$(dirname "$0")/.."

NISSHI_VERSION=0.7.0
if [ -z "${TAILSIFT_TOOLS:-}" ]; then
  if mkdir -p /opt/tailsift-ci 2>/dev/null && [ -w /opt/tailsift-ci ]; then
    TAILSIFT_TOOLS=/opt/tailsift-ci
  else
    TAILSIFT_TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/tailsift"
  fi
fi
NISSHI="$TAILSIFT_TOOLS/nisshi-$NISSHI_VERSION/bin/nisshi"
# The broker-outage test starts (and freezes) a broker of its own from this binary.
export TAILSIFT_NISSHI="${TAILSIFT_NISSHI:-$NISSHI}"
# The SASL test (tests/integration/sasl.rs) needs nisshi's PostgreSQL storage engine, where it keeps SCRAM
# users, and a PostgreSQL server (Debian's `postgresql`; .ci/run installs it): another build
# of the same version with that engine, sharing the build directory (~8 more minutes, once).
NISSHI_PG="$TAILSIFT_TOOLS/nisshi-$NISSHI_VERSION-postgres/bin/nisshi"
export TAILSIFT_NISSHI_PG="${TAILSIFT_NISSHI_PG:-$NISSHI_PG}"
if ! "$TAILSIFT_NISSHI_PG" --version >/dev/null 2>&1; then
  echo "installing nisshi $NISSHI_VERSION with its PostgreSQL engine (for the SASL test; once)"
  mkdir -p "$TAILSIFT_TOOLS"
  cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --no-default-features --features postgres \
    --root "$TAILSIFT_TOOLS/nisshi-$NISSHI_VERSION-postgres" \
    --target-dir "$TAILSIFT_TOOLS/nisshi-build"
fi

if [ -z "${TAILSIFT_TEST_BROKERS:-}" ]; then
  if ! "$NISSHI" --version >/dev/null 2>&1; then
    echo "installing nisshi $NISSHI_VERSION (a Kafka broker for the tests; ~10 minutes, once)"
    mkdir -p "$TAILSIFT_TOOLS"
    cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
      --no-default-features --features dynostore \
      --root "$TAILSIFT_TOOLS/nisshi-$NISSHI_VERSION" \
      --target-dir "$TAILSIFT_TOOLS/nisshi-build"
  fi
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  LOG=$(mktemp -t nisshi.XXXXXX.log)
  "$NISSHI" broker --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://nisshi/ --group-initial-rebalance-delay 100ms >"$LOG" 2>&1 &
  BROKER_PID=$!
  trap 'kill $BROKER_PID 2>/dev/null || true; wait $BROKER_PID 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "nisshi failed to start:"; cat "$LOG"; exit 1
    fi
    sleep 0.1
  done
  export TAILSIFT_TEST_BROKERS="127.0.0.1:$PORT"
  echo "nisshi $NISSHI_VERSION broker on $TAILSIFT_TEST_BROKERS"
fi

OUT=$(mktemp -t tailsift-test.XXXXXX.log)
STARTED=$SECONDS
set +e
cargo test "$@" 2>&1 | tee "$OUT"
STATUS=${PIPESTATUS[0]}
# Then, with no arguments, the tests marked #[ignore] because what they measure is distorted
# by the load of tests running beside them (duplicates after a SIGKILL): alone, one at a time.
if [ "$STATUS" -eq 0 ] && [ $# -eq 0 ]; then
  echo "tests that run alone:"
  cargo test --test integration -- --ignored --test-threads=1 2>&1 | tee -a "$OUT"
  STATUS=${PIPESTATUS[0]}
fi
set -e
# One closing line for the whole run: cargo prints one per test binary.
awk -v secs=$((SECONDS - STARTED)) '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed in %d s (build included)\n", p, f, secs }' "$OUT"
exit "$STATUS"
