#!/usr/bin/env bash
# End-to-end benchmark on a real broker: pass-through (plain consume -> produce) against
# tailsift with the example rules, alternating in one run. Method and figures: BENCHMARKS.md.
#
#   scripts/bench-e2e.sh                         # 2 000 000 spans, 2 rounds of each
#   TAILSIFT_E2E_SPANS=200000 scripts/bench-e2e.sh   # a quick run
#   TAILSIFT_E2E_TRAFFIC=sdk scripts/bench-e2e.sh    # the SDK recording's batches, replayed
#
# Starts its own nisshi broker (memory storage) on a free port, builds in release mode, and
# writes every raw result to target/bench-e2e/ (results.jsonl, logs).
set -euo pipefail
cd "$(dirname "$0")/.."

SPANS=${TAILSIFT_E2E_SPANS:-2000000}
ROUNDS=${TAILSIFT_E2E_ROUNDS:-2}
PARTITIONS=${TAILSIFT_E2E_PARTITIONS:-6}
TRAFFIC=${TAILSIFT_E2E_TRAFFIC:-generated}
OUT=target/bench-e2e
mkdir -p "$OUT"
rm -f "$OUT/results.jsonl"

NISSHI_VERSION=0.7.0
NISSHI=""
for dir in "${TAILSIFT_TOOLS:-}" /opt/tailsift-ci "${XDG_CACHE_HOME:-$HOME/.cache}/tailsift"; do
  if [ -n "$dir" ] && [ -x "$dir/nisshi-$NISSHI_VERSION/bin/nisshi" ]; then
    NISSHI="$dir/nisshi-$NISSHI_VERSION/bin/nisshi"
    break
  fi
done
if [ -z "$NISSHI" ]; then
  echo "nisshi $NISSHI_VERSION not found: run scripts/test.sh once (it installs it)" >&2
  exit 1
fi

cargo build --release --bin tailsift --example bench_e2e
BIN=target/release
E2E="$BIN/examples/bench_e2e"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

PORT=$(free_port)
"$NISSHI" broker --listener-url "tcp://127.0.0.1:$PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://nisshi/ --group-initial-rebalance-delay 100ms >"$OUT/nisshi.log" 2>&1 &
PIDS+=($!)
# The watcher reports the broker's CPU time alongside tailsift's.
export TAILSIFT_E2E_BROKER_PID=$!
BROKERS="127.0.0.1:$PORT"
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  sleep 0.1
done
echo "nisshi on $BROKERS; loading $SPANS spans ($TRAFFIC traffic) into $PARTITIONS partitions"

RUN=$(date +%s)
INPUT="e2e-in-$RUN"
LOAD=$("$E2E" load --brokers "$BROKERS" --topic "$INPUT" --partitions "$PARTITIONS" --spans "$SPANS" --traffic "$TRAFFIC")
echo "{\"kind\":\"load\",\"result\":$LOAD}" >>"$OUT/results.jsonl"
echo "loaded: $LOAD"
MESSAGES=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['messages'])" "$LOAD")
LOADED_SPANS=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['spans'])" "$LOAD")
LOADED_TRACES=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['traces'])" "$LOAD")

for round in $(seq 1 "$ROUNDS"); do
  # Pass-through.
  "$E2E" topics --brokers "$BROKERS" --partitions "$PARTITIONS" "e2e-pt-$RUN-$round"
  PT=$("$E2E" passthrough --brokers "$BROKERS" --input "$INPUT" --output "e2e-pt-$RUN-$round" \
    --group "e2e-pt-$RUN-$round" --messages "$MESSAGES")
  echo "{\"kind\":\"passthrough\",\"round\":$round,\"result\":$PT}" >>"$OUT/results.jsonl"
  echo "round $round pass-through: $PT"

  # tailsift with the example rules and default completion settings, with the decision log
  # (the default) and without it; which goes first alternates, so that neither always runs
  # right after the pass-through.
  VARIANTS="log nolog"
  if [ $((round % 2)) -eq 0 ]; then VARIANTS="nolog log"; fi
  for variant in $VARIANTS; do
    HTTP=$(free_port)
    NAME="e2e-ts-$RUN-$round-$variant"
    DECISIONS=""
    if [ "$variant" = nolog ]; then DECISIONS='  decision_topic: ""'; fi
    "$E2E" topics --brokers "$BROKERS" --partitions "$PARTITIONS" "$NAME"
    cat >"$OUT/tailsift-$round-$variant.yaml" <<YAML
kafka:
  brokers: $BROKERS
  input_topics: [$INPUT]
  output_topic: $NAME
  group_id: $NAME
$DECISIONS
rules:
  dir: rules
buffer:
  max_bytes: 4GiB
http:
  listen: 127.0.0.1:$HTTP
YAML
    "$BIN/tailsift" run --config "$OUT/tailsift-$round-$variant.yaml" >"$OUT/tailsift-$round-$variant.log" 2>&1 &
    TS=$!
    PIDS+=($TS)
    W=$("$E2E" watch --metrics "127.0.0.1:$HTTP" --pid "$TS" --spans "$LOADED_SPANS" --traces "$LOADED_TRACES")
    # CPU seconds by thread name, before it stops (where the process's CPU went).
    THREADS=$(python3 - "$TS" <<'PY'
import json, os, sys
ticks, cpu = os.sysconf("SC_CLK_TCK"), {}
task = f"/proc/{sys.argv[1]}/task"
for t in os.listdir(task):
    try:
        stat = open(f"{task}/{t}/stat").read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    cpu[name] = cpu.get(name, 0) + (int(fields[11]) + int(fields[12])) / ticks
print(json.dumps(cpu))
PY
)
    echo "{\"kind\":\"threads\",\"variant\":\"$variant\",\"round\":$round,\"result\":$THREADS}" >>"$OUT/results.jsonl"
    kill -TERM "$TS"
    wait "$TS" || true
    echo "{\"kind\":\"tailsift\",\"variant\":\"$variant\",\"round\":$round,\"result\":$W}" >>"$OUT/results.jsonl"
    echo "round $round tailsift ($variant): $W"
  done
done

python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
load = next(r["result"] for r in rows if r["kind"] == "load")
spans = load["spans"]
pt = [spans / r["result"]["seconds"] for r in rows if r["kind"] == "passthrough"]
ts = [r["result"] for r in rows if r["kind"] == "tailsift" and r.get("variant", "log") == "log"]
nolog = [r["result"] for r in rows if r["kind"] == "tailsift" and r.get("variant") == "nolog"]
tsr = [spans / r["seconds"] for r in ts]
print()
print(f"input: {spans} spans, {load['traces']} traces, {load['messages']} messages, "
      f"{load['bytes'] / 2**20:.0f} MiB ({load['span_bytes'] / spans:.0f} encoded bytes/span)")
for i, (p, t) in enumerate(zip(pt, tsr), 1):
    print(f"round {i}: pass-through {p:,.0f} spans/s, tailsift {t:,.0f} spans/s, ratio {t / p:.2f}")
ptc = [r["result"].get("cpu_seconds") for r in rows if r["kind"] == "passthrough"]
for i, (p, t) in enumerate(zip(ptc, ts), 1):
    if p and "cpu_seconds" in t:
        print(f"round {i}: CPU per span: pass-through {p / spans * 1e6:.2f} us, tailsift {t['cpu_seconds'] / spans * 1e6:.2f} us, "
              f"ratio {t['cpu_seconds'] / p:.2f}")
print(f"median: pass-through {statistics.median(pt):,.0f} spans/s, tailsift {statistics.median(tsr):,.0f} "
      f"spans/s, ratio {statistics.median(tsr) / statistics.median(pt):.2f} (target >= 0.8)")
if nolog:
    nl = [spans / r["seconds"] for r in nolog]
    for i, (t, n) in enumerate(zip(tsr, nl), 1):
        print(f"round {i}: tailsift with the decision log {t:,.0f} spans/s, without {n:,.0f} spans/s: "
              f"the log costs {100 * (1 - t / n):.1f}% of throughput")
    print(f"median: with the log {statistics.median(tsr):,.0f} spans/s, without {statistics.median(nl):,.0f} "
          f"spans/s: cost {100 * (1 - statistics.median(tsr) / statistics.median(nl)):.1f}% (target <= 5%)")
    for i, (t, n) in enumerate(zip(ts, nolog), 1):
        if "cpu_seconds" in t:
            print(f"round {i}: tailsift CPU {t['cpu_seconds']:.2f} s with the log, {n['cpu_seconds']:.2f} s without "
                  f"({100 * (t['cpu_seconds'] / n['cpu_seconds'] - 1):+.1f}%); broker CPU {t['broker_cpu_seconds']:.2f} s "
                  f"and {n['broker_cpu_seconds']:.2f} s")
threads = {}
for r in rows:
    if r["kind"] == "threads":
        for name, secs in r["result"].items():
            threads.setdefault(r["variant"], {}).setdefault(name, []).append(secs)
for variant, names in threads.items():
    top = sorted(names.items(), key=lambda kv: -statistics.median(kv[1]))
    print(f"median CPU by thread ({variant}): " + ", ".join(
        f"{name} {statistics.median(secs):.2f} s" for name, secs in top if statistics.median(secs) >= 0.01))
for i, r in enumerate(ts, 1):
    per_span = load["span_bytes"] / spans
    traces = r["traces_at_peak"]
    grown = r["rss_peak"] - r["rss_baseline"]
    print(f"round {i}: decision latency past the trigger p50 {r['latency_p50_ms']:.1f} ms, "
          f"p99 {r['latency_p99_ms']:.1f} ms ({r['decided_traces']:.0f} traces decided; "
          f"at most {r['max_traces_buffered']:.0f} buffered)")
    if traces > 0:
        spans_buffered = traces * spans / load["traces"]
        print(f"round {i}: resident {grown / 2**20:.0f} MiB over the idle process at the peak, "
              f"{traces:.0f} traces buffered then: about {grown / spans_buffered:.0f} bytes per "
              f"buffered span ({grown / (spans_buffered * per_span + 100 * traces):.2f}x encoded "
              f"span bytes + 100 B/trace; approximate, see benches/latency.rs)")
PY
