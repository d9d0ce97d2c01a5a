#!/usr/bin/env bash
# `make bench`: every benchmark in bench/, one after the other. Each prints
# its own table; docs/benchmarks.md records the figures.
set -euo pipefail
cd "$(dirname "$0")"
for b in store http api spawn scheduler discovery gateway workers; do
    echo "== bench/$b"
    "./$b/run.sh"
    echo
done
