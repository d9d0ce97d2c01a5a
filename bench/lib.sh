# Shared helpers for bench/*/run.sh (sourced).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bench_free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_wait_http() { # URL
    for _ in $(seq 200); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.05
    done
    echo "bench: $1 did not come up" >&2
    return 1
}

# Run wrk and print "req/s p50 p99" (latencies in ms). Extra args go to wrk.
bench_wrk() {
    local out
    out=$(wrk --latency "$@" 2>&1)
    local rps p50 p99 errs
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    printf '%s %s %s %s\n' "${rps:-0}" "$(bench_ms "$p50")" "$(bench_ms "$p99")" "${errs:-}"
}

# wrk prints 120.00us / 1.20ms / 1.02s; normalise to ms.
bench_ms() {
    local v=$1
    case "$v" in
    *us) awk -v x="${v%us}" 'BEGIN {printf "%.3f", x / 1000}' ;;
    *ms) awk -v x="${v%ms}" 'BEGIN {printf "%.3f", x}' ;;
    *s) awk -v x="${v%s}" 'BEGIN {printf "%.3f", x * 1000}' ;;
    *) echo "?" ;;
    esac
}
