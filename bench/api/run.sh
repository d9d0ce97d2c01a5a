#!/usr/bin/env bash
# API request throughput with keep-alive (wrk), drover beside etcd's v3
# HTTP/JSON gateway (the KV store a user would otherwise put beside
# Marathon), in the same run on the same machine.
#   bench/api/run.sh [DURATION (default 10s)] [CONNECTIONS (default 64)]
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
DUR=${1:-10s}
CONN=${2:-64}
THREADS=2
cd "$ROOT"
make -s bin/drover >/dev/null
command -v wrk >/dev/null || { echo "bench: wrk missing (make deps)"; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

dport=$(bench_free_port)
bin/drover dev --data-dir "$tmp/drover" --api "127.0.0.1:$dport" --log-level warn 2>"$tmp/drover.log" &
pids+=($!)
bench_wait_http "http://127.0.0.1:$dport/v1/status"
curl -s -XPUT "http://127.0.0.1:$dport/v1/kv/bench/key" -d 'value-of-the-benchmark-key' >/dev/null
curl -s -XPOST "http://127.0.0.1:$dport/v1/apps" -d @examples/specs/test-server.json >/dev/null

printf '%-44s %12s %9s %9s\n' "workload ($THREADS threads, $CONN conns, $DUR)" "req/s" "p50 ms" "p99 ms"
row() { printf '%-44s %12s %9s %9s %s\n' "$1" $2 $3 $4 "${5:-}"; }
row "drover GET /v1/kv/bench/key" $(bench_wrk -t$THREADS -c$CONN -d$DUR "http://127.0.0.1:$dport/v1/kv/bench/key")
row "drover GET /v1/apps/app/production/test-server" $(bench_wrk -t$THREADS -c$CONN -d$DUR "http://127.0.0.1:$dport/v1/apps/app/production/test-server")
row "drover GET /v1/status (no store access)" $(bench_wrk -t$THREADS -c$CONN -d$DUR "http://127.0.0.1:$dport/v1/status")
# Durable writes: each PUT is acknowledged only after its commit is on disk.
cat >"$tmp/put.lua" <<'LUA'
counter = 0
request = function()
    counter = counter + 1
    return wrk.format("PUT", "/v1/kv/bench/w/" .. (counter % 1000), nil, "value-" .. counter)
end
LUA
row "drover PUT /v1/kv/bench/w/N (durable)" $(bench_wrk -t$THREADS -c$CONN -d$DUR -s "$tmp/put.lua" "http://127.0.0.1:$dport")
row "drover PUT, 1 connection (latency)" $(bench_wrk -t1 -c1 -d$DUR -s "$tmp/put.lua" "http://127.0.0.1:$dport")
drss=$(awk '/VmHWM/ {print $2}' /proc/"${pids[0]}"/status)
echo "drover peak RSS: $((drss / 1024)) MiB"

if command -v etcd >/dev/null; then
    eport=$(bench_free_port)
    epeer=$(bench_free_port)
    etcd --data-dir "$tmp/etcd" --listen-client-urls "http://127.0.0.1:$eport" \
        --advertise-client-urls "http://127.0.0.1:$eport" \
        --listen-peer-urls "http://127.0.0.1:$epeer" --initial-advertise-peer-urls "http://127.0.0.1:$epeer" \
        --initial-cluster "default=http://127.0.0.1:$epeer" --log-level error >"$tmp/etcd.log" 2>&1 &
    pids+=($!)
    bench_wait_http "http://127.0.0.1:$eport/version"
    key=$(printf 'bench/key' | base64)
    val=$(printf 'value-of-the-benchmark-key' | base64)
    curl -s "http://127.0.0.1:$eport/v3/kv/put" -d "{\"key\":\"$key\",\"value\":\"$val\"}" >/dev/null
    cat >"$tmp/range.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"key":"$key"}'
wrk.headers["Content-Type"] = "application/json"
LUA
    row "etcd 3.4 POST /v3/kv/range (same key)" $(bench_wrk -t$THREADS -c$CONN -d$DUR -s "$tmp/range.lua" "http://127.0.0.1:$eport/v3/kv/range")
    # etcd fsyncs its WAL per commit too; keys vary the same way.
    cat >"$tmp/eput.lua" <<'LUA'
counter = 0
local b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function enc(data)
    return ((data:gsub('.', function(x)
        local r, b = '', x:byte()
        for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
        return r
    end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
        if (#x < 6) then return '' end
        local c = 0
        for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
        return b64:sub(c + 1, c + 1)
    end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
request = function()
    counter = counter + 1
    local body = '{"key":"' .. enc("bench/w/" .. (counter % 1000)) .. '","value":"' .. enc("value-" .. counter) .. '"}'
    return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"}, body)
end
LUA
    row "etcd 3.4 POST /v3/kv/put (durable)" $(bench_wrk -t$THREADS -c$CONN -d$DUR -s "$tmp/eput.lua" "http://127.0.0.1:$eport")
    row "etcd put, 1 connection (latency)" $(bench_wrk -t1 -c1 -d$DUR -s "$tmp/eput.lua" "http://127.0.0.1:$eport")
    erss=$(awk '/VmHWM/ {print $2}' /proc/"${pids[1]}"/status)
    echo "etcd peak RSS: $((erss / 1024)) MiB"
else
    echo "etcd not installed (apt-get install etcd-server) - skipping the side-by-side row"
fi
