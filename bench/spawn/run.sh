#!/usr/bin/env bash
# Deploy N instances of a trivial long-running program on one node (a real
# `drover server` + `drover agent`, real processes, real cgroups) and measure:
# time from the deploy request until every instance is running (as the API
# reports it), time to stop them all, the agent's memory before and after,
# and the memory of the per-instance monitors (drover-shim).
#   bench/spawn/run.sh [N (default 500)]
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
N=${1:-500}
cd "$ROOT"
make -s all >/dev/null

tmp=$(mktemp -d -p "${BENCH_DIR:-/tmp}")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pkill -f "drover-shim --dir $tmp" 2>/dev/null || true
    [ -n "${KEEP_LOG:-}" ] && cp "$tmp/agent.log" "$KEEP_LOG"
    rm -rf "$tmp"
}
trap cleanup EXIT

port=$(bench_free_port)
api="http://127.0.0.1:$port"
printf 'data-dir = %s/server\napi = 127.0.0.1:%s\nlocator = 127.0.0.1:0\nlog-level = warn\n' "$tmp" "$port" >"$tmp/server.conf"
bin/drover server --config "$tmp/server.conf" 2>"$tmp/server.log" &
pids+=($!)
bench_wait_http "$api/v1/status"
${AGENT_WRAP:-bin/drover} agent --server "$api" --data-dir "$tmp/agent" --listen 127.0.0.1:0 \
    --advertise 127.0.0.1 --locator 127.0.0.1:0 --ports 20000-32000 --log-level ${AGENT_LOG_LEVEL:-warn} 2>"$tmp/agent.log" &
agent=$!
pids+=($agent)
for _ in $(seq 100); do
    [ "$(curl -s "$api/v1/nodes" | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))')" = 1 ] && break
    sleep 0.1
done

mem() { # pid -> "rss_kb private_kb"
    local rss priv
    rss=$(awk '/VmRSS/ {print $2}' /proc/"$1"/status)
    priv=$(awk '/Private_(Clean|Dirty)/ {s += $2} END {print s}' /proc/"$1"/smaps_rollup)
    echo "$rss $priv"
}
count_running() {
    curl -s "$api/v1/instances?app=/bench/spin" | /usr/bin/python3 -c '
import json, sys
inst = json.load(sys.stdin)["instances"]
print(sum(1 for i in inst if i["state"] in ("running", "healthy") and i["pid"] > 0), len(inst))'
}
now_ms() { date +%s%3N; }
cpu_ms() { # pid -> user+system CPU time in ms
    awk -v hz="$(getconf CLK_TCK)" '{printf "%d", ($14 + $15) * 1000 / hz}' /proc/"$1"/stat
}

read -r rss0 priv0 <<<"$(mem "$agent")"
c0=$(cpu_ms "$agent")
t0=$(now_ms)
curl -s -XPOST "$api/v1/apps" -d "{\"id\": \"/bench/spin\", \"cmd\": \"exec sleep 3600\",
    \"instances\": $N, \"cpus\": 0.01, \"mem\": 16, \"portDefinitions\": []}" >/dev/null
while :; do
    read -r running total <<<"$(count_running)"
    [ "$running" -ge "$N" ] && break
    if [ $(($(now_ms) - t0)) -gt 120000 ]; then echo "bench: only $running of $N running after 120 s"; exit 1; fi
    sleep 0.05
done
t1=$(now_ms)
c1=$(cpu_ms "$agent")
sleep 1
read -r rss1 priv1 <<<"$(mem "$agent")"
shim_priv=0
nshim=0
for p in $(pgrep -f "drover-shim --dir $tmp"); do
    v=$(awk '/Private_(Clean|Dirty)/ {s += $2} END {print s}' /proc/"$p"/smaps_rollup 2>/dev/null || echo 0)
    shim_priv=$((shim_priv + v))
    nshim=$((nshim + 1))
done
t2=$(now_ms)
curl -s -XDELETE "$api/v1/apps/bench/spin" >/dev/null
while :; do
    read -r running total <<<"$(count_running)"
    [ "$total" -eq 0 ] && [ -z "$(pgrep -f "drover-shim --dir $tmp" || true)" ] && break
    if [ $(($(now_ms) - t2)) -gt 120000 ]; then echo "bench: stop did not finish in 120 s"; exit 1; fi
    sleep 0.05
done
t3=$(now_ms)

echo "instances: $N (exec sleep 3600, cgroup limits mem 16 MiB, cpus 0.01), one node, $(nproc) cores"
printf '%-52s %10s\n' "deploy -> all $N running (API view)" "$((t1 - t0)) ms"
printf '%-52s %10s\n' "per instance" "$(awk -v t=$((t1 - t0)) -v n="$N" 'BEGIN {printf "%.2f ms", t / n}')"
printf '%-52s %10s\n' "agent CPU time for the deploy (user+sys)" "$((c1 - c0)) ms"
printf '%-52s %10s\n' "agent CPU per instance" "$(awk -v t=$((c1 - c0)) -v n="$N" 'BEGIN {printf "%.2f ms", t / n}')"
printf '%-52s %10s\n' "delete -> all stopped, monitors gone" "$((t3 - t2)) ms"
printf '%-52s %10s\n' "agent RSS before (private)" "$((rss0 / 1024)) MiB ($((priv0)) KiB)"
printf '%-52s %10s\n' "agent RSS with $N instances (private)" "$((rss1 / 1024)) MiB ($((priv1)) KiB)"
printf '%-52s %10s\n' "agent growth per instance (RSS / private)" "$(( (rss1 - rss0) / N )) KiB / $(( (priv1 - priv0) / N )) KiB"
printf '%-52s %10s\n' "monitor (drover-shim) private memory, average" "$(( nshim ? shim_priv / nshim : 0 )) KiB x $nshim"

# The same job for supervisord, the process supervisor a user would otherwise
# run: N programs, started at once, no start delay (startsecs=0).
if command -v supervisord >/dev/null; then
    sdir="$tmp/supervisor"
    mkdir -p "$sdir/logs"
    {
        printf '[supervisord]\nnodaemon=true\nlogfile=%s/supervisord.log\npidfile=%s/pid\nchildlogdir=%s/logs\n' "$sdir" "$sdir" "$sdir"
        printf '[unix_http_server]\nfile=%s/sock\n' "$sdir"
        printf '[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n'
        printf '[supervisorctl]\nserverurl=unix://%s/sock\n' "$sdir"
        for i in $(seq "$N"); do
            printf '[program:p%d]\ncommand=sleep 3600\nstartsecs=0\nautorestart=true\n' "$i"
        done
    } >"$sdir/supervisord.conf"
    s0=$(now_ms)
    supervisord -c "$sdir/supervisord.conf" >/dev/null 2>&1 &
    sup=$!
    pids+=($sup)
    while :; do
        n=$(supervisorctl -c "$sdir/supervisord.conf" status 2>/dev/null | grep -c RUNNING || true)
        [ "$n" -ge "$N" ] && break
        if [ $(($(now_ms) - s0)) -gt 120000 ]; then echo "bench: supervisord: $n of $N after 120 s"; break; fi
        sleep 0.05
    done
    s1=$(now_ms)
    read -r srss spriv <<<"$(mem "$sup")"
    echo
    echo "supervisord $(supervisord --version) with the same $N programs (no cgroup limits, no health checks):"
    printf '%-52s %10s\n' "start -> all $N RUNNING" "$((s1 - s0)) ms"
    printf '%-52s %10s\n' "supervisord RSS with $N programs (private)" "$((srss / 1024)) MiB ($spriv KiB)"
    kill "$sup" 2>/dev/null || true
    wait "$sup" 2>/dev/null || true
else
    echo "supervisord not installed (apt-get install supervisor): no side-by-side row"
fi

