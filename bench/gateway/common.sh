# Helpers shared by bench/gateway/run.sh and churn.sh (sourced after
# bench/lib.sh, with $ROOT set and the caller's cwd at $ROOT).
# shellcheck shell=bash

# haproxy and nginx live in /usr/sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"

# Install what is missing among the named tools (wrk, haproxy, nginx,
# msgpack for /usr/bin/python3) from Debian, as scripts/deps.sh does: quiet
# when everything is there, `apt-get update` once and only when something
# must be installed. Services the packages ship are not started (a
# policy-rc.d is put in place for the install when the machine has none), so
# no stray nginx is left on port 80.
gw_install() {
    local missing=() t
    for t in "$@"; do
        case "$t" in
        msgpack) /usr/bin/python3 -c 'import msgpack' 2>/dev/null || missing+=(python3-msgpack) ;;
        nginx) command -v nginx >/dev/null || missing+=(nginx-light) ;;
        *) command -v "$t" >/dev/null || missing+=("$t") ;;
        esac
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "bench: installing ${missing[*]}" >&2
    local sudo="" policy=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq || rc=$?
    if [ $rc -eq 0 ] && ! $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        # nginx-light is gone from newer Debian releases: plain nginx there.
        $sudo apt-get install -y -qq --no-install-recommends "${missing[@]/nginx-light/nginx}" >/dev/null || rc=$?
    fi
    [ -n "$policy" ] && $sudo rm -f "$policy"
    return $rc
}

# The backend every arm shares (bench/gateway/backend.c), release flags.
GW_BACKEND=build/bench/gw_backend
gw_build_backend() {
    mkdir -p build/bench
    ${CC:-cc} -std=c17 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -pthread \
        -o "$GW_BACKEND" bench/gateway/backend.c
}

# Build bin/drover when its sources changed. Others edit the tree while a
# bench runs, so a failed build is not fatal: the binary already there (if
# any) is used and the log says why.
gw_build_drover() { # LOGFILE
    if ! make -s -j2 bin/drover >"$1" 2>&1; then
        echo "bench: make bin/drover failed; using the existing bin/drover. make said:" >&2
        tail -5 "$1" | sed 's/^/  /' >&2
    fi
}

# True when $DROVER (default bin/drover) has the gateway command.
gw_has_gateway() {
    "${DROVER:-bin/drover}" gateway --help >/dev/null 2>&1
}

# Wait until something accepts TCP connections on 127.0.0.1:PORT.
gw_wait_tcp() { # PORT
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench: nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# Peak RSS in KiB of PID and its children (nginx's workers), from VmHWM.
gw_peak_rss() { # PID
    local total=0 p kb
    for p in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
        kb=$(awk '/^VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# Run wrk --latency with the given arguments and print one line:
#   req/s p50_ms p99_ms requests non2xx socket_errors
# (socket errors = connect + read + write + timeout). The whole output goes
# to $GW_WRK_LOG when set, for a look at what went wrong. GW_WRK_PREFIX
# (say `taskset -c 0`) runs wrk under that command.
gw_wrk() {
    local out
    out=$(${GW_WRK_PREFIX:-} wrk --latency "$@" 2>&1) || true
    [ -n "${GW_WRK_LOG:-}" ] && printf '== wrk %s\n%s\n' "$*" "$out" >>"$GW_WRK_LOG"
    awk -v p50="$(bench_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")" \
        -v p99="$(bench_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")" '
        /Requests\/sec/ { rps = $2 }
        / requests in / { reqs = $1 }
        /Non-2xx or 3xx responses/ { bad = $NF }
        /Socket errors/ { gsub(",", ""); sock = $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %d %d %d\n", (rps == "" ? 0 : rps), p50, p99, reqs, bad, sock }
    ' <<<"$out"
}
