#!/usr/bin/env bash
# Run drover's tests and end with one line "N passed, N failed" that sums
# the C unit tests (cmocka, ASan+UBSan build), the fuzz-corpus regressions
# and the pytest integration tests. Skipped tests are reported, never counted
# as passed. Exit status is non-zero when anything failed.
#   tests/run.sh [unit|fuzz|integration|all] [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
shift || true
passed=0 failed=0 skipped=0
failures=()
mkdir -p build/test-logs

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_unit() {
    local bin
    for bin in $(find build/asan/tests/unit -type f -perm -u+x 2>/dev/null | sort); do
        local name=${bin#build/asan/tests/unit/}
        local log=build/test-logs/unit-${name//\//-}.log
        CMOCKA_MESSAGE_OUTPUT=TAP timeout 300 "$bin" >"$log" 2>&1
        local rc=$?
        local ok nok
        ok=$(grep -cE '^ok [0-9]+' "$log")
        nok=$(grep -cE '^not ok [0-9]+' "$log")
        if [ "$rc" -ne 0 ] && [ "$nok" -eq 0 ]; then
            nok=1 # crashed or sanitizer abort: count the binary as a failure
        fi
        passed=$((passed + ok))
        failed=$((failed + nok))
        if [ "$nok" -gt 0 ]; then
            failures+=("unit $name (see $log)")
            echo "FAIL unit $name: $ok passed, $nok failed"
            grep -E '^not ok|ERROR|Sanitizer|runtime error' "$log" | head -20
        else
            echo "ok   unit $name: $ok passed"
        fi
    done
}

# Every fuzz target replays its corpus (no new fuzzing): a crash that was
# once found and added to the corpus stays fixed.
run_fuzz() {
    local bin
    for bin in $(find build/fuzz -maxdepth 1 -type f -perm -u+x 2>/dev/null | sort); do
        local name
        name=$(basename "$bin")
        local log=build/test-logs/fuzz-$name.log
        if [ -d "fuzz/corpus/$name" ] && timeout 300 "$bin" -runs=0 "fuzz/corpus/$name" >"$log" 2>&1; then
            passed=$((passed + 1))
            echo "ok   fuzz corpus $name"
        else
            failed=$((failed + 1))
            failures+=("fuzz $name (see $log)")
            echo "FAIL fuzz corpus $name"
            tail -20 "$log"
        fi
    done
}

run_integration() {
    local xml=build/test-logs/pytest.xml
    rm -f "$xml"
    DROVER_BIN=${DROVER_BIN:-$PWD/build/asan/drover} timeout 1800 /usr/bin/python3 -m pytest \
        -p no:cacheprovider -q -rfEs --junitxml="$xml" tests/integration "$@"
    local rc=$?
    if [ ! -f "$xml" ]; then
        failed=$((failed + 1))
        failures+=("pytest did not run (exit $rc)")
        return
    fi
    local counts
    counts=$(/usr/bin/python3 - "$xml" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = e = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0))
    e += int(su.get("errors", 0)); s += int(su.get("skipped", 0))
print(t - f - e - s, f + e, s)
PY
)
    read -r p fl sk <<<"$counts"
    passed=$((passed + p))
    failed=$((failed + fl))
    skipped=$((skipped + sk))
    [ "$fl" -gt 0 ] && failures+=("pytest: $fl failed")
    if [ "$p" -eq 0 ] && [ "$fl" -eq 0 ]; then
        failed=$((failed + 1))
        failures+=("pytest ran no test")
    fi
}

case "$what" in
unit) run_unit ;;
fuzz) run_fuzz ;;
integration) run_integration "$@" ;;
all) run_unit; run_fuzz; run_integration "$@" ;;
*) echo "usage: tests/run.sh [unit|fuzz|integration|all]" >&2; exit 2 ;;
esac

echo
for f in "${failures[@]+"${failures[@]}"}"; do echo "failed: $f"; done
if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
