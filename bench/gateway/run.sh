#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Gateway: requests/s and p50/p99 of the same small GET through drover
# gateway, HAProxy and nginx, beside the backend directly, in one run on one
# machine (issue 5, "Measured"). Two workloads per arm: keep-alive clients,
# and a new client connection per request (Connection: close). Every proxy
# keeps its backend connections alive, runs THREADS threads (nginx: worker
# processes), logs nothing, caches nothing, and adds the headers drover's
# gateway adds (X-Forwarded-For, X-Forwarded-Proto, X-Request-Id), so all do
# the same job.
#   bench/gateway/run.sh
# Environment:
#   DURATION  one measurement (default 10s)     THREADS  proxy, backend and wrk threads (default: cores)
#   CONNS     wrk connections (default 64)      WARMUP   warm-up per arm and workload (default 2s)
#   REPEAT    rounds; each row is the median round by req/s (default 1). Rounds go
#             through the arms in turn, so load from elsewhere on the box hits all alike.
#   ARMS      which arms, in order (default "direct drover haproxy nginx")
#   WORKLOADS which workloads, in order (default "keep-alive close")
#   DROVER    the drover binary (default bin/drover, built with make when it is the default)
#   DROVER_FLAGS  more flags for `drover gateway` (default none)
#   PIN=1     the proxy gets cores of its own: wrk (1 thread) and the backend (1 thread)
#             run on CPU 0, every proxy on the other cores (THREADS defaults to their
#             number), direct included. Without it everything shares every core, and a
#             proxy's CPU is taken from wrk and the backend that the direct row has alone.
# Installs wrk, haproxy and nginx from Debian when missing. The drover arm is
# skipped, with a message, while `drover gateway` does not exist.
set -euo pipefail
# shellcheck source=../lib.sh
source "$(dirname "$0")/../lib.sh"
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
DURATION=${DURATION:-10s}
PIN=${PIN:-0}
on_load=()
on_proxy=()
if [ "$PIN" = 1 ]; then
    [ "$(nproc)" -ge 2 ] || { echo "bench: PIN=1 needs at least 2 cores" >&2; exit 1; }
    on_load=(taskset -c 0)
    on_proxy=(taskset -c "1-$(($(nproc) - 1))")
    THREADS=${THREADS:-$(($(nproc) - 1))}
    LOAD_THREADS=1
    export GW_WRK_PREFIX="taskset -c 0"
else
    THREADS=${THREADS:-$(nproc)}
    LOAD_THREADS=$THREADS
fi
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-2s}
REPEAT=${REPEAT:-1}
read -r -a ARMS <<<"${ARMS:-direct drover haproxy nginx}"
cd "$ROOT"
DROVER=${DROVER:-bin/drover}

gw_install wrk haproxy nginx
gw_build_backend

tmp=$(mktemp -d)
declare -A pid=() port=()
cleanup() {
    local p
    for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export GW_WRK_LOG=$tmp/wrk.log
# Connections a proxy may hold: two descriptors each (client and backend)
# within the open-file limit, which HAProxy refuses to start beyond.
maxconn=$(($(ulimit -n) / 2 - 64))

# One backend for every arm, THREADS loops.
port[backend]=$(bench_free_port)
"${on_load[@]}" "$GW_BACKEND" -t "$LOAD_THREADS" "${port[backend]}" >"$tmp/backend.log" 2>&1 &
pid[backend]=$!
bench_wait_http "http://127.0.0.1:${port[backend]}/"
port[direct]=${port[backend]}
versions=("backend: bench/gateway/backend.c, $LOAD_THREADS threads")
if [ "$PIN" = 1 ]; then
    versions+=("pinned: wrk and the backend on CPU 0, proxies on CPUs 1-$(($(nproc) - 1))")
fi

start_drover() {
    if [ "$DROVER" = bin/drover ]; then
        gw_build_drover "$tmp/make.log"
    fi
    if ! gw_has_gateway; then
        echo "drover: skipped: \`$DROVER gateway --help\` fails (the gateway is not in this build yet)"
        return 1
    fi
    port[drover]=$(bench_free_port)
    local admin extra=() flags=()
    admin=$(bench_free_port)
    # Quiet logs when the command offers the flag; DROVER_FLAGS adds any
    # other (the access log must be off, as the other arms' are).
    "$DROVER" gateway --help >"$tmp/gw.help" 2>&1 || true
    if grep -q -- '--log-level' "$tmp/gw.help"; then
        extra+=(--log-level warn)
    fi
    read -r -a flags <<<"${DROVER_FLAGS:-}"
    extra+=("${flags[@]}")
    "${on_proxy[@]}" "$DROVER" gateway --http "127.0.0.1:${port[drover]}" --route "=127.0.0.1:${port[backend]}" \
        --threads "$THREADS" --admin "127.0.0.1:$admin" "${extra[@]}" >"$tmp/drover.log" 2>&1 &
    pid[drover]=$!
    versions+=("drover: $DROVER, tree at $(git log -1 --format='%h %cs' 2>/dev/null || echo '?') plus uncommitted changes")
    return 0
}

start_haproxy() {
    port[haproxy]=$(bench_free_port)
    # No `log` line: HAProxy logs nothing without one. `http-reuse always`
    # shares idle backend connections between clients, as drover's pool and
    # nginx's keepalive do; server-side keep-alive is HAProxy's default.
    cat >"$tmp/haproxy.cfg" <<EOF
global
    nbthread $THREADS
    maxconn $maxconn
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:${port[haproxy]} defer-accept
    http-request set-header X-Forwarded-Proto http
    unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    unique-id-header X-Request-Id
    default_backend be
backend be
    server s1 127.0.0.1:${port[backend]}
EOF
    if ! haproxy -c -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1; then
        echo "haproxy: left out: its configuration does not check:"
        cat "$tmp/haproxy.log"
        return 1
    fi
    "${on_proxy[@]}" haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
    pid[haproxy]=$!
    # sed, not head: head's early exit would fail the pipe (pipefail).
    versions+=("haproxy: $(haproxy -v | sed -n 1p)")
    return 0
}

start_nginx() {
    port[nginx]=$(bench_free_port)
    mkdir -p "$tmp/nginx"
    # keepalive_requests: nginx closes a connection after 1000 requests by
    # default (client and backend side); HAProxy and drover do not, so it is
    # lifted. reuseport: one listener per worker, as drover's threads have.
    # deferred (and HAProxy's defer-accept): TCP_DEFER_ACCEPT, which drover
    # sets on its HTTP listeners, so all three accept the same way.
    # Host: the client's, as the other proxies pass it (nginx's default is
    # the upstream's name).
    cat >"$tmp/nginx.conf" <<EOF
worker_processes $THREADS;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events {
    worker_connections $maxconn;
}
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    upstream be {
        server 127.0.0.1:${port[backend]};
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:${port[nginx]} reuseport backlog=4096 deferred;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF
    if ! nginx -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx.conf" -t -q >"$tmp/nginx.log" 2>&1; then
        echo "nginx: left out: its configuration does not check:"
        cat "$tmp/nginx.log" "$tmp/nginx/error.log" 2>/dev/null
        return 1
    fi
    "${on_proxy[@]}" nginx -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx.conf" >"$tmp/nginx.log" 2>&1 &
    pid[nginx]=$!
    versions+=("nginx: $(nginx -v 2>&1)")
    return 0
}

# Start every proxy arm; an arm that cannot start or does not answer 200 is
# left out with the reason.
arms=()
for a in "${ARMS[@]}"; do
    if [ "$a" != direct ] && ! "start_$a"; then
        continue
    fi
    if ! bench_wait_http "http://127.0.0.1:${port[$a]}/" ||
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$a]}/")" != 200 ]; then
        echo "$a: left out: it does not answer 200 on 127.0.0.1:${port[$a]}; its log:"
        tail -20 "$tmp/$a.log" 2>/dev/null || true
        continue
    fi
    arms+=("$a")
done
[ ${#arms[@]} -gt 0 ] || { echo "bench: no arm could start" >&2; exit 1; }

read -r -a workloads <<<"${WORKLOADS:-keep-alive close}"
# wrk's arguments for one arm and workload (in the array `run`).
wrk_for() { # ARM WORKLOAD DURATION
    run=(-t"$LOAD_THREADS" -c"$CONNS" -d"$3")
    if [ "$2" = close ]; then
        run+=(-H 'Connection: close')
    fi
    run+=("http://127.0.0.1:${port[$1]}/")
}

mkdir -p "$tmp/res"
for a in "${arms[@]}"; do
    for w in "${workloads[@]}"; do
        wrk_for "$a" "$w" "$WARMUP"
        gw_wrk "${run[@]}" >/dev/null
    done
done
for round in $(seq "$REPEAT"); do
    for a in "${arms[@]}"; do
        for w in "${workloads[@]}"; do
            wrk_for "$a" "$w" "$DURATION"
            gw_wrk "${run[@]}" >>"$tmp/res/$a.$w"
        done
    done
    if [ "$REPEAT" -gt 1 ]; then
        echo "round $round of $REPEAT done" >&2
    fi
done

# The median round of an arm and workload: "rps p50 p99 requests non2xx sockerr".
result() { # ARM WORKLOAD
    sort -n -k1,1 "$tmp/res/$1.$2" | awk '{ l[NR] = $0 } END { print l[int((NR + 1) / 2)] }'
}
declare -A rps=() p99=()
for a in "${arms[@]}"; do
    for w in "${workloads[@]}"; do
        read -r rps["$a.$w"] _ p99["$a.$w"] _ <<<"$(result "$a" "$w")"
    done
done

echo "gateway bench: proxies $THREADS threads, backend and wrk $LOAD_THREADS, $CONNS connections, $DURATION per row, median of $REPEAT, $(nproc) cores"
printf '  %s\n' "${versions[@]}"
printf '%-9s %-11s %11s %9s %9s %11s %s\n' arm workload "req/s" "p50 ms" "p99 ms" "vs haproxy" "failed"
for w in "${workloads[@]}"; do
    for a in "${arms[@]}"; do
        read -r r p50 p99v reqs bad sock <<<"$(result "$a" "$w")"
        ratio="-"
        if [ -n "${rps[haproxy.$w]:-}" ]; then
            ratio=$(awk -v a="$r" -v h="${rps[haproxy.$w]}" 'BEGIN { printf "%.2fx", (h > 0 ? a / h : 0) }')
        fi
        failed=""
        if [ "$((bad + sock))" -gt 0 ]; then
            failed="$bad non-2xx, $sock socket errors of $reqs"
        fi
        printf '%-9s %-11s %11.0f %9s %9s %11s %s\n' "$a" "$w" "$r" "$p50" "$p99v" "$ratio" "$failed"
    done
done

# Issue 5's targets, when drover ran: >= 1.1x HAProxy's req/s with a p99 no
# worse, and >= 60% of the direct figure, on both workloads.
if [ -n "${rps[drover.${workloads[0]}]:-}" ]; then
    for w in "${workloads[@]}"; do
        line="drover $w:"
        if [ -n "${rps[direct.$w]:-}" ]; then
            line+=$(awk -v d="${rps[drover.$w]}" -v x="${rps[direct.$w]}" \
                'BEGIN { printf " %.0f%% of direct (target >= 60%%: %s);", 100 * d / x, (d >= 0.6 * x ? "met" : "MISSED") }')
        fi
        if [ -n "${rps[haproxy.$w]:-}" ]; then
            line+=$(awk -v d="${rps[drover.$w]}" -v h="${rps[haproxy.$w]}" -v dp="${p99[drover.$w]}" -v hp="${p99[haproxy.$w]}" \
                'BEGIN { printf " %.2fx haproxy, p99 %s vs %s ms (target >= 1.1x, p99 no worse: %s)", d / h, dp, hp, (d >= 1.1 * h && dp <= hp) ? "met" : "MISSED" }')
        fi
        echo "$line"
    done
else
    echo "drover vs direct and haproxy: no figures (the drover arm did not run)"
fi

echo "peak RSS (VmHWM; nginx: master + workers):"
for a in "${arms[@]}"; do
    [ "$a" = direct ] && continue
    printf '  %-8s %6d KiB\n' "$a" "$(gw_peak_rss "${pid[$a]}")"
done
