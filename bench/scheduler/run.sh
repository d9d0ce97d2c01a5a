#!/usr/bin/env bash
# Scheduler benchmarks.
#  1. Placement alone (bench/scheduler/place_bench.c): 5,000 simulated nodes,
#     100,000 instances over apps with constraints, one thread; picks/s and
#     per-pick latency. Built here without the Makefile.
#  2. Deploying 1,000 instances on one real node: a real `drover server` and
#     `drover agent` (as bench/spawn does), POST /v1/apps with 1,000
#     instances, time until /v1/instances reports 1,000 running; then DELETE
#     and time until they are all gone.
#   bench/scheduler/run.sh [nodes (5000)] [instances (100000)] [deploy N (1000)]
# SKIP_DEPLOY=1 runs the placement part only; SERVER_LOG_LEVEL / AGENT_LOG_LEVEL
# (warn) and KEEP_LOG=DIR (copies server.log and agent.log there) help look into
# the deploy part.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
NODES=${1:-5000}
INST=${2:-100000}
N=${3:-1000}
cd "$ROOT"

# ---- 1. placement --------------------------------------------------------------------------
mkdir -p build/bench
# shellcheck disable=SC2046
gcc -std=c17 -D_GNU_SOURCE -O2 -Isrc -o build/bench/place_bench \
    src/sched/place.c src/core/*.c bench/scheduler/place_bench.c \
    $(pkg-config --cflags --libs jansson msgpack) -lm
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
build/bench/place_bench "$NODES" "$INST"
[ -n "${SKIP_DEPLOY:-}" ] && exit 0

# ---- 2. 1,000 instances on one real node ---------------------------------------------------
echo
make -s bin/drover bin/drover-shim >/dev/null
tmp=$(mktemp -d -p "${BENCH_DIR:-/tmp}")
pids=()
api=""
now_ms() { date +%s%3N; }

# Instances of the app as "running total pids...": running counts the
# state "running" (and "healthy", which only health checks would add).
instances() {
    curl -s "$api/v1/instances?app=/bench/many" | /usr/bin/python3 -c '
import json, sys
try:
    inst = json.load(sys.stdin).get("instances", [])
except ValueError:
    inst = []
up = sum(1 for i in inst if i.get("state") in ("running", "healthy") and (i.get("pid") or 0) > 0)
print(up, len(inst), *[i["pid"] for i in inst if (i.get("pid") or 0) > 0])'
}

cleanup() {
    # Instances still up when something failed: stop them by pid (a plain
    # agent's SIGTERM leaves its instances running, by design).
    if [ -n "$api" ]; then
        read -r _ _ left <<<"$(instances 2>/dev/null || true)"
        for p in ${left:-}; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true; done
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # per-instance monitors started under this run's directory only
    for p in $(pgrep -f "drover-shim --dir $tmp" || true); do kill "$p" 2>/dev/null || true; done
    [ -n "${KEEP_LOG:-}" ] && cp "$tmp/agent.log" "$tmp/server.log" "$KEEP_LOG" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

port=$(bench_free_port)
api="http://127.0.0.1:$port"
plo=$(( 40000 + RANDOM % 10000 ))
phi=$(( plo + N + 199 )) # one port per instance (the default portDefinitions) and spare
printf 'data-dir = %s/server\napi = 127.0.0.1:%s\nlocator = 127.0.0.1:0\nlog-level = %s\n' "$tmp" "$port" "${SERVER_LOG_LEVEL:-warn}" >"$tmp/server.conf"
bin/drover server --config "$tmp/server.conf" 2>"$tmp/server.log" &
pids+=($!)
bench_wait_http "$api/v1/status"
bin/drover agent --server "$api" --data-dir "$tmp/agent" --listen 127.0.0.1:0 \
    --advertise 127.0.0.1 --locator 127.0.0.1:0 --ports "$plo-$phi" \
    --log-level "${AGENT_LOG_LEVEL:-warn}" 2>"$tmp/agent.log" &
pids+=($!)
for _ in $(seq 100); do
    [ "$(curl -s "$api/v1/nodes" | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))')" = 1 ] && break
    sleep 0.1
done

t0=$(now_ms)
code=$(curl -s -o "$tmp/post.json" -w '%{http_code}' -XPOST "$api/v1/apps" -d "{\"id\": \"/bench/many\",
    \"cmd\": \"exec sleep 100000\", \"instances\": $N, \"cpus\": 0.001, \"mem\": 1}")
case "$code" in
2*) ;;
*) echo "bench: POST /v1/apps answered $code: $(head -c 500 "$tmp/post.json")"; exit 1 ;;
esac
last=-1
while :; do
    read -r running total _ <<<"$(instances)"
    [ "$running" -ge "$N" ] && break
    if [ $(($(now_ms) - t0)) -gt 300000 ]; then
        echo "bench: only $running of $N running ($total instances) after 300 s"
        curl -s "$api/v1/apps/bench/many" | head -c 1500
        echo
        exit 1
    fi
    [ "$running" != "$last" ] && [ -n "${VERBOSE:-}" ] && echo "  $(($(now_ms) - t0)) ms: $running running of $total"
    last=$running
    sleep 0.1
done
t1=$(now_ms)
code=$(curl -s -o /dev/null -w '%{http_code}' -XDELETE "$api/v1/apps/bench/many")
case "$code" in
2*) ;;
*) echo "bench: DELETE /v1/apps/bench/many answered $code"; exit 1 ;;
esac
while :; do
    read -r running total _ <<<"$(instances)"
    [ "$total" -eq 0 ] && break
    if [ $(($(now_ms) - t1)) -gt 300000 ]; then
        echo "bench: $total instances ($running running) still there 300 s after the delete"
        exit 1
    fi
    sleep 0.1
done
t2=$(now_ms)

echo "$N instances (exec sleep 100000, cpus 0.001, mem 1, one dynamic port each), one node, ports $plo-$phi"
printf '%-52s %10s\n' "deploy -> all $N running (GET /v1/instances)" "$((t1 - t0)) ms"
printf '%-52s %10s\n' "per instance" "$(awk -v t=$((t1 - t0)) -v n="$N" 'BEGIN {printf "%.2f ms", t / n}')"
printf '%-52s %10s\n' "delete -> no instance left" "$((t2 - t1)) ms"
