#!/usr/bin/env bash
# Build and run the store benchmark (release flags, outside the Makefile so
# it can run while others build). Usage: bench/store/run.sh [DIR]
# DIR: where the database goes (default: a fresh directory under $TMPDIR).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out=build/bench/store_bench
mkdir -p "$(dirname "$out")"
pkgs="libuv jansson sqlite3 libcurl msgpack openssl libarchive"
srcs=$(ls src/core/*.c src/store/*.c)
${CC:-gcc} -std=c17 -D_GNU_SOURCE -O2 -g -Isrc -Iinclude -Wall -Wextra -Werror -Wshadow \
    -Wstrict-prototypes -Wno-unused-parameter $(pkg-config --cflags $pkgs) \
    -o "$out" bench/store/store_bench.c $srcs \
    $(pkg-config --libs $pkgs) -lhttp_parser -lpthread -lm
exec "$out" "$@"
