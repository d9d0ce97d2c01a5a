#!/usr/bin/env bash
# `make lint`: every C file must be formatted as .clang-format says.
set -uo pipefail
cd "$(dirname "$0")/.."
files=$(find src tests/unit fuzz include bench -name '*.[ch]' 2>/dev/null | sort)
bad=0
for f in $files; do
    if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
        echo "lint: $f is not clang-formatted (run: make format)"
        bad=$((bad + 1))
    fi
done
[ "$bad" -eq 0 ] && echo "lint: $(echo "$files" | wc -w) files ok"
[ "$bad" -eq 0 ]
