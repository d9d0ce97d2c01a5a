#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Worker apps (issue 6, "Measured"), in one `drover dev` on this machine:
#  1. Through the gateway, requests/s and p50/p99 of an HTTP worker app (the
#     C SDK example, examples/workers/http-c) beside a plain HTTP service
#     answering the same small GET (bench/gateway/backend.c, the service
#     every gateway arm uses), both routed by Host, keep-alive clients. The
#     worker path adds the bridge, the invocation service, the engine's
#     queue and the worker protocol; the difference is what they cost.
#  2. Cold start: with the pool at zero (idle-timeout passed), the time
#     from enqueue to the first reply byte, measured by a raw msgpack client
#     on the node's invocation service, and the same first request through
#     the gateway with curl; then a warm invocation the same way. Twice: with
#     the default parked spare (pool "spare": true) and without one
#     ("spare": false: a fresh monitor, cgroup attach and exec per cold start).
#   bench/workers/run.sh
# Environment: DURATION (10s), CONNS (32), THREADS (wrk threads, 2), COLD (7 cold starts),
# ROUNDS (3 alternating load runs per arm).
# Installs wrk from Debian when missing.
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
# shellcheck source=../gateway/common.sh
source "$(dirname "$0")/../gateway/common.sh"
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
COLD=${COLD:-7}
ROUNDS=${ROUNDS:-3}
cd "$ROOT"

command -v wrk >/dev/null || { sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_=sudo;
    $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq wrk >/dev/null; }
make -s bin/drover bin/drover-shim build/lib/libdrover-worker.a bin/examples/http-worker >/dev/null
gw_build_backend

tmp=$(mktemp -d -p "${BENCH_DIR:-/tmp}")
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    [ -n "${KEEP_LOG:-}" ] && cp "$tmp/dev.log" "$KEEP_LOG" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

api_port=$(bench_free_port)
gw_port=$(bench_free_port)
loc_port=$(bench_free_port)
dns_port=$(bench_free_port)
api="http://127.0.0.1:$api_port"
bin/drover dev --data-dir "$tmp/data" --api "127.0.0.1:$api_port" --gateway "127.0.0.1:$gw_port" \
    --locator "127.0.0.1:$loc_port" --dns "127.0.0.1:$dns_port" --log-level warn 2>"$tmp/dev.log" &
pid=$!
bench_wait_http "$api/v1/status"

post() { # JSON
    curl -sf -X POST -H 'Content-Type: application/json' -d "$1" "$api/v1/apps" >/dev/null
}
# The worker: a pool of 2 (one per core), each taking many invocations at
# once; the service: the gateway bench's backend with 1 thread per instance,
# 2 instances. Same routes, same gateway. Each worker and each service
# instance may use half a core (a cpus limit of 0.1 would throttle both arms
# to a few thousand requests/s and measure the CFS quota, not the path).
post "{\"id\": \"/bench/worker\", \"kind\": \"worker\", \"args\": [\"$ROOT/bin/examples/http-worker\"],
       \"instances\": 1, \"cpus\": 0.5, \"mem\": 64,
       \"pool\": {\"pool-limit\": 2, \"concurrency\": 64, \"queue-limit\": 1000, \"idle-timeout\": 600},
       \"routes\": [{\"host\": \"worker.bench\"}]}"
post "{\"id\": \"/bench/service\", \"cmd\": \"exec $ROOT/$GW_BACKEND -t 1 \$PORT0\",
       \"instances\": 2, \"cpus\": 0.5, \"mem\": 64, \"routes\": [{\"host\": \"service.bench\"}]}"
for spare in true false; do
    post "{\"id\": \"/bench/cold-$spare\", \"kind\": \"worker\", \"args\": [\"$ROOT/bin/examples/http-worker\"],
           \"instances\": 1, \"cpus\": 0.1, \"mem\": 64,
           \"pool\": {\"pool-limit\": 1, \"idle-timeout\": 1, \"spare\": $spare},
           \"routes\": [{\"host\": \"cold-$spare.bench\"}]}"
done

routed() { # HOST
    for _ in $(seq 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $1" "http://127.0.0.1:$gw_port/")" = 200 ] && return 0
        sleep 0.1
    done
    echo "bench: $1 not routed" >&2
    exit 1
}
routed worker.bench
routed service.bench
routed cold-true.bench
routed cold-false.bench
# the worker pool at its limit before measuring (wrk's first second would
# otherwise include the growth)
curl -sf -X POST -H 'Content-Type: application/json' -d '{"workers": 2}' "$api/v1/apps/bench/worker/pool" >/dev/null
sleep 1

echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "wrk -t$THREADS -c$CONNS -d$DURATION through drover's gateway (2 threads), keep-alive"
printf '%-10s %10s %9s %9s\n' arm req/s "p50 ms" "p99 ms"
declare -A rps p50 p99
for arm in service worker; do
    wrk -t"$THREADS" -c"$CONNS" -d2s -H "Host: $arm.bench" "http://127.0.0.1:$gw_port/" >/dev/null 2>&1
done
# Five processes share the 2 cores under load (wrk, the gateway's threads,
# the agent's loop, the workers or backends), so one run of each swings by
# 10-15%: ROUNDS alternating runs, the median of each arm's requests/s.
: >"$tmp/load"
for round in $(seq "$ROUNDS"); do
    for arm in service worker; do
        read -r r a b errs <<<"$(bench_wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" \
            -H "Host: $arm.bench" "http://127.0.0.1:$gw_port/")"
        printf '%-10s %10s %9s %9s %s (round %s)\n' "$arm" "$r" "$a" "$b" "${errs:-}" "$round"
        echo "$arm $r $a $b" >>"$tmp/load"
    done
done
for arm in service worker; do
    read -r r a b <<<"$(awk -v arm="$arm" '$1 == arm {print $2, $3, $4}' "$tmp/load" | sort -n |
        awk '{l[NR]=$0} END {print l[int((NR+1)/2)]}')"
    rps[$arm]=$r p50[$arm]=$a p99[$arm]=$b
done
awk -v w="${rps[worker]}" -v s="${rps[service]}" -v pw="${p50[worker]}" -v ps="${p50[service]}" 'BEGIN {
    printf "median round: worker %.0f%% of the service requests/s (target >= 70%%), p50 %+.0f us\n",
        100 * w / s, (pw - ps) * 1000 }'
# What the worker path adds to one request, without queueing in the way:
# one connection, one request at a time.
echo "wrk -t1 -c1 -d$DURATION (one request at a time)"
for arm in service worker; do
    read -r r a b errs <<<"$(bench_wrk -t1 -c1 -d"$DURATION" -H "Host: $arm.bench" \
        "http://127.0.0.1:$gw_port/")"
    rps[$arm]=$r p50[$arm]=$a p99[$arm]=$b
    printf '%-10s %10s %9s %9s %s\n' "$arm" "$r" "$a" "$b" "${errs:-}"
done
awk -v pw="${p50[worker]}" -v ps="${p50[service]}" 'BEGIN {
    printf "warm invocation adds %+.0f us p50 over the service path (target < +100 us)\n",
        (pw - ps) * 1000 }'

# ---- cold start -------------------------------------------------------------------------------
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
invoke_ms() { # HOST PORT VHOST: ms from enqueue to the first reply byte
    /usr/bin/python3 - "$1" "$2" "$3" <<'EOF'
import socket, sys, time
import msgpack
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
req = msgpack.packb(["GET", "/", "1.1", [["host", sys.argv[3]]], b""], use_bin_type=True)
msg = (msgpack.packb([1, 0, ["http"]]) + msgpack.packb([1, 0, [req]], use_bin_type=True)
       + msgpack.packb([1, 2, []]))
u = msgpack.Unpacker()
t0 = time.perf_counter()
s.sendall(msg)
first = None
while True:
    u.feed(s.recv(65536))
    if first is None:
        first = time.perf_counter()
    done = False
    for m in u:
        if m[1] in (1, 2):
            done = True
    if done:
        break
print(f"{(first - t0) * 1000:.2f}")
EOF
}
# At zero, and (with a spare) the spare parked for 200 ms: what a request
# after an idle period meets.
wait_zero() { # INSTANCE
    for _ in $(seq 200); do
        curl -sL "$api/v1/instances/$1/pool" | /usr/bin/python3 -c '
import json, sys
p = json.load(sys.stdin)
sys.exit(0 if p["workers"]["total"] == 0 and (p["spare"] or {}).get("pid", 1) > 0 else 1)' &&
            { sleep 0.2; return 0; }
        sleep 0.1
    done
    echo "bench: the cold pool did not reach zero" >&2
    exit 1
}
echo
echo "cold start (pool at zero, process isolate, C SDK worker), $COLD runs each:"
for spare in true false; do
    inst=$(curl -s "$api/v1/instances?app=/bench/cold-$spare" | /usr/bin/python3 -c '
import json, sys
i = json.load(sys.stdin)["instances"][0]
print(i["id"], i["host"], i["ports"][0])')
    read -r cold_id cold_host cold_port <<<"$inst"
    : >"$tmp/cold"
    : >"$tmp/warm"
    : >"$tmp/cold_gw"
    for _ in $(seq "$COLD"); do
        wait_zero "$cold_id"
        invoke_ms "$cold_host" "$cold_port" "cold-$spare.bench" >>"$tmp/cold"
        invoke_ms "$cold_host" "$cold_port" "cold-$spare.bench" >>"$tmp/warm"
        wait_zero "$cold_id"
        curl -s -o /dev/null -w '%{time_starttransfer}\n' -H "Host: cold-$spare.bench" \
            "http://127.0.0.1:$gw_port/" | awk '{printf "%.2f\n", $1 * 1000}' >>"$tmp/cold_gw"
    done
    echo "  pool \"spare\": $spare"
    printf '    invocation service, cold: median %s ms (runs: %s) (target < 10 ms)\n' \
        "$(median <"$tmp/cold")" "$(tr '\n' ' ' <"$tmp/cold")"
    printf '    invocation service, warm: median %s ms\n' "$(median <"$tmp/warm")"
    printf '    through the gateway (curl, first byte), cold: median %s ms\n' \
        "$(median <"$tmp/cold_gw")"
done
echo "peak RSS of drover dev: $(awk '/VmHWM/ {print $2, $3}' "/proc/$pid/status")"
# What a parked spare costs while it waits: its monitor and the child held
# before its exec (proportional set size, shared libc pages split).
inst=$(curl -s "$api/v1/instances?app=/bench/cold-true" | /usr/bin/python3 -c '
import json, sys
print(json.load(sys.stdin)["instances"][0]["id"])')
wait_zero "$inst"
spare_pid=$(curl -sL "$api/v1/instances/$inst/pool" | /usr/bin/python3 -c '
import json, sys
print(json.load(sys.stdin)["spare"]["pid"])')
shim_pid=$(awk '{print $4}' "/proc/$spare_pid/stat")
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
echo "parked spare: monitor $(pss "$shim_pid") kB + held child $(pss "$spare_pid") kB (Pss)"
