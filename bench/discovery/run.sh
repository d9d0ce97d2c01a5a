#!/usr/bin/env bash
# Discovery: change propagation two hops away and resolve rate through the
# real locator/metalocator code (bench/discovery/disc_bench.c), beside etcd's
# watch measured the same way (one change at a time, put -> watcher).
#   bench/discovery/run.sh [N changes (default 1000)]
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
N=${1:-1000}
cd "$ROOT"
out=build/bench/disc_bench
mkdir -p build/bench
pkgs="libuv jansson msgpack openssl"
${CC:-gcc} -std=c17 -D_GNU_SOURCE -O2 -g -Isrc -Wall -Wextra -Wno-unused-parameter \
    $(pkg-config --cflags $pkgs) -o "$out" bench/discovery/disc_bench.c src/core/*.c \
    src/locator/table.c src/locator/locator.c src/locator/meta.c \
    $(pkg-config --libs $pkgs) -lpthread -lm
echo "== drover"
"$out" "$N" 2>/dev/null

if command -v etcd >/dev/null; then
    tmp=$(mktemp -d)
    eport=$(bench_free_port)
    epeer=$(bench_free_port)
    etcd --data-dir "$tmp/etcd" --listen-client-urls "http://127.0.0.1:$eport" \
        --advertise-client-urls "http://127.0.0.1:$eport" \
        --listen-peer-urls "http://127.0.0.1:$epeer" --initial-advertise-peer-urls "http://127.0.0.1:$epeer" \
        --initial-cluster "default=http://127.0.0.1:$epeer" --log-level error >"$tmp/etcd.log" 2>&1 &
    epid=$!
    trap 'kill $epid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
    bench_wait_http "http://127.0.0.1:$eport/version"
    read -r p50 p99 <<<"$(/usr/bin/python3 bench/discovery/etcd_watch.py "127.0.0.1:$eport" "$N")"
    echo "== etcd 3.4 (watch through its HTTP gateway; put includes its fsync)"
    echo "propagation put -> watcher ($N changes): p50 $p50 ms  p99 $p99 ms"
else
    echo "etcd not installed (apt-get install etcd-server): no side-by-side row"
fi
