#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Gateway under churn (issue 5): the backend set changes RATE times a second
# while wrk runs through `drover gateway`, and not one request may fail.
#
# bench/gateway/feed.py plays the node locator the gateway follows
# (--metalocator): one name, /bench/web, routed for Host bench.local path /,
# whose endpoints step through the non-empty subsets of BACKENDS backends.
# Backends taken out of the set keep running, as a drained instance does, so
# a failure is the gateway's (routing to nothing, a request lost in the
# swap), not a backend's death. Two workloads: keep-alive clients and a new
# connection per request.
#   bench/gateway/churn.sh
# Environment: DURATION (per workload, default 10s), RATE (changes/s, 100),
#   BACKENDS (4), THREADS (gateway and wrk threads, default: cores), CONNS (64),
#   DROVER (the binary, default bin/drover, built when it is the default).
# Exit status: 0 no request failed; 1 a request failed, or the gateway did not
# follow the feed (a backend got no traffic, or it never acked a change);
# 77 skipped, `drover gateway` not in this build.
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
DURATION=${DURATION:-10s}
RATE=${RATE:-100}
BACKENDS=${BACKENDS:-4}
THREADS=${THREADS:-$(nproc)}
CONNS=${CONNS:-64}
cd "$ROOT"
DROVER=${DROVER:-bin/drover}

gw_install wrk msgpack
gw_build_backend
tmp=$(mktemp -d)
declare -A pid=()
cleanup() {
    local p
    for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export GW_WRK_LOG=$tmp/wrk.log

if [ "$DROVER" = bin/drover ]; then
    gw_build_drover "$tmp/make.log"
fi
if ! gw_has_gateway; then
    echo "churn: skipped: \`$DROVER gateway --help\` fails (the gateway is not in this build yet)"
    exit 77
fi

# BACKENDS backends, one loop each (the box is small; none is a bottleneck
# at a quarter of the traffic).
bports=()
for i in $(seq "$BACKENDS"); do
    p=$(bench_free_port)
    "$GW_BACKEND" "$p" >"$tmp/backend.$i.log" 2>&1 &
    pid[backend.$i]=$!
    bports+=("$p")
done
for p in "${bports[@]}"; do bench_wait_http "http://127.0.0.1:$p/"; done
list=$(printf '127.0.0.1:%s,' "${bports[@]}")

fport=$(bench_free_port)
/usr/bin/python3 bench/gateway/feed.py --port "$fport" --backends "${list%,}" --rate "$RATE" \
    --name /bench/web --host bench.local --path / >"$tmp/feed.out" 2>"$tmp/feed.log" &
pid[feed]=$!
gw_wait_tcp "$fport"

gport=$(bench_free_port)
aport=$(bench_free_port)
"$DROVER" gateway --http "127.0.0.1:$gport" --metalocator "127.0.0.1:$fport" \
    --threads "$THREADS" --admin "127.0.0.1:$aport" >"$tmp/gateway.log" 2>&1 &
pid[gateway]=$!
url="http://127.0.0.1:$gport/"
code=000
for _ in $(seq 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.local' "$url" || true)
    [ "$code" = 200 ] && break
    sleep 0.05
done
if [ "$code" != 200 ]; then
    echo "churn: the gateway does not route Host bench.local to the feed's backends (last status $code); its log:" >&2
    tail -20 "$tmp/gateway.log" >&2
    exit 1
fi

echo "gateway churn: $BACKENDS backends, set changed $RATE times/s, $THREADS threads, $CONNS connections, $DURATION per workload"
printf '%-11s %10s %10s %9s %9s %14s\n' workload requests "req/s" "p99 ms" "non-2xx" "socket errors"
failed=0
for w in keep-alive close; do
    args=(-t"$THREADS" -c"$CONNS" -d"$DURATION" -H 'Host: bench.local')
    if [ "$w" = close ]; then
        args+=(-H 'Connection: close')
    fi
    read -r rps _ p99 reqs bad sock <<<"$(gw_wrk "${args[@]}" "$url")"
    printf '%-11s %10d %10.0f %9s %9d %14d\n' "$w" "$reqs" "$rps" "$p99" "$bad" "$sock"
    if [ "$reqs" -eq 0 ] || [ "$((bad + sock))" -gt 0 ]; then
        failed=1
    fi
done

# The feed's statistics (it prints them when stopped), then each backend's
# request count: a backend with none means the gateway never routed to it
# although every backend is in 8 of the 15 sets.
kill "${pid[feed]}"
wait "${pid[feed]}" 2>/dev/null || true
unset 'pid[feed]'
/usr/bin/python3 - "$tmp/feed.out" <<'PY' || failed=1
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
subs = s["subscribers"] + s["gone"]
print("feed: %d changes in %.1f s (%.1f/s), revision %d" % (s["changes"], s["seconds"], s["rate"], s["revision"]))
for sub in subs:
    print("  subscriber %s (%s): from revision %d, sent %d, acked %d (%d acks)%s" % (
        sub["uuid"], sub["peer"], sub["since"], sub["sent"], sub["acked"], sub["acks"],
        "" if sub in s["subscribers"] else ", disconnected"))
if not subs:
    sys.exit("churn: the gateway never subscribed to the feed")
if len(subs) > 1:
    print("churn: the gateway subscribed %d times (its link to the feed broke)" % len(subs))
if max(x["acked"] for x in subs) <= min(x["since"] for x in subs):
    sys.exit("churn: the gateway never acked a change (it must confirm revisions, protocol.md section 7)")
PY
counts=()
for i in $(seq "$BACKENDS"); do
    kill "${pid[backend.$i]}"
    wait "${pid[backend.$i]}" 2>/dev/null || true
    unset "pid[backend.$i]"
    n=$(awk '/requests/ {print $NF}' "$tmp/backend.$i.log")
    counts+=("${bports[$((i - 1))]}:${n:-0}")
    if [ "${n:-0}" -eq 0 ]; then
        echo "churn: backend ${bports[$((i - 1))]} got no request: the gateway did not follow the changes"
        failed=1
    fi
done
echo "requests per backend: ${counts[*]}"
if [ "$failed" -ne 0 ]; then
    echo "churn: FAILED (wrk output: kept in $tmp.wrk.log)"
    cp "$GW_WRK_LOG" "$tmp.wrk.log" 2>/dev/null || true
    exit 1
fi
echo "churn: no failed request"
