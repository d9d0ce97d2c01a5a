#!/usr/bin/env bash
# HTTP server throughput: small keep-alive GETs through a trivial handler on
# one loop thread, measured with wrk. Prints "label req/s p50_ms p99_ms".
# Built outside the Makefile (release flags) so it can run while others build.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cd "$ROOT"
out=build/bench/http_hello
mkdir -p "$(dirname "$out")"
pkgs="libuv jansson sqlite3 libcurl msgpack openssl libarchive"
${CC:-gcc} -std=c17 -D_GNU_SOURCE -O2 -g -Isrc -Iinclude -Wall -Wextra -Werror -Wshadow \
    -Wstrict-prototypes -Wno-unused-parameter $(pkg-config --cflags $pkgs) \
    -o "$out" bench/http/hello.c src/core/*.c src/http/*.c \
    $(pkg-config --libs $pkgs) -lhttp_parser -lpthread -lm
port=$(bench_free_port)
"$out" "127.0.0.1:$port" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
bench_wait_http "http://127.0.0.1:$port/"
for c in 1 50 256; do
    printf 'http hello c=%s %s\n' "$c" "$(bench_wrk -t1 -c"$c" -d"${BENCH_SECONDS:-5}"s "http://127.0.0.1:$port/")"
done
