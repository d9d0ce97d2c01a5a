#!/usr/bin/env bash
# `make demo`: start `drover dev` on the embedded store and walk through the
# control plane: deploy an app from a Marathon template, change it, look at
# its versions, use KV and the event stream. Leaves drover running until
# Ctrl-C (DEMO_EXIT=1 stops it at the end instead; DEMO_ADDR picks the port).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DROVER_BIN:-$PWD/bin/drover}
ADDR=${DEMO_ADDR:-127.0.0.1:7400}
DATA=${DEMO_DATA:-$PWD/.drover/demo}
GATEWAY=${DEMO_GATEWAY:-127.0.0.1:8080}
export DROVER_ADDR="http://$ADDR"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

rm -rf "$DATA"
mkdir -p "$DATA"
say "starting drover dev (API $DROVER_ADDR, data in $DATA)"
"$BIN" dev --data-dir "$DATA" --api "$ADDR" --gateway "$GATEWAY" >"$DATA/drover.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; true; }
trap cleanup EXIT
for _ in $(seq 100); do
    curl -sf "$DROVER_ADDR/v1/status" >/dev/null 2>&1 && break
    if ! kill -0 "$pid" 2>/dev/null; then cat "$DATA/drover.log"; exit 1; fi
    sleep 0.1
done
run "$BIN" status

say "deploy the field report's Marathon template, filling its placeholders"
run "$BIN" deploy examples/specs/test-server.tmpl.json --var environment=staging \
    --var tag=master-ef5a154e --var instances=2
run "$BIN" apps

say "preview a change (nothing is stored), then make it"
run "$BIN" deploy examples/specs/test-server.tmpl.json --var environment=staging \
    --var tag=master-ef5a154e --var instances=4 --dry-run
run "$BIN" deploy examples/specs/test-server.tmpl.json --var environment=staging \
    --var tag=master-ef5a154e --var instances=4
run "$BIN" versions /app/staging/test-server
run "$BIN" app show /app/staging/test-server
# That spec runs a Docker image (the docker isolate comes later): remove it
# before its instances crash-loop on this node.
run "$BIN" app rm /app/staging/test-server

say "a typo is caught with its JSON path"
printf '{"id": "/app/staging/typo", "cmd": "sleep 1", "instanses": 2}\n' >"$DATA/typo.json"
run "$BIN" deploy "$DATA/typo.json" || true

say "config in KV, with revisions"
run "$BIN" kv put config/test-server/GREETING hello
run "$BIN" kv put config/test-server/WORKERS 4
run "$BIN" kv ls config/
printf '$ curl %s/v1/kv/config/test-server/GREETING\n' "$DROVER_ADDR"
curl -s "$DROVER_ADDR/v1/kv/config/test-server/GREETING"; echo

say "run a real app: push its files, deploy it, watch it come up healthy"
art=$("$BIN" push examples/test-server --json | sed -n 's/.*"id": *"\(sha256:[0-9a-f]*\)".*/\1/p')
run "$BIN" push examples/test-server
run "$BIN" deploy examples/test-server/test-server.json --var environment=demo \
    --var instances=2 --var artifact="$art"
for _ in $(seq 100); do
    n=$("$BIN" ps /app/demo/test-server --json | grep -o '"state": *"healthy"' | wc -l || true)
    [ "$n" -ge 2 ] && break
    sleep 0.2
done
run "$BIN" ps /app/demo/test-server
port=$("$BIN" ps /app/demo/test-server --json | sed -n 's/.*"ports": *\[\([0-9]*\).*/\1/p' | head -1)
printf '$ curl -s http://127.0.0.1:%s/healthcheck\n' "$port"
curl -s "http://127.0.0.1:$port/healthcheck"
printf '$ curl -s http://127.0.0.1:%s/ | grep -E "PORT0|MARATHON_APP_ID|DROVER_INSTANCE_ID"\n' "$port"
curl -s "http://127.0.0.1:$port/" | grep -E '"(PORT0|MARATHON_APP_ID|DROVER_INSTANCE_ID)"'
run "$BIN" logs /app/demo/test-server --tail 3

say "the gateway routes by Host to the healthy instances (the app's \"routes\")"
for _ in 1 2 3 4; do
    printf '$ curl -s -H "Host: test-server.demo.local" http://%s/whoami\n' "$GATEWAY"
    curl -s -H "Host: test-server.demo.local" "http://$GATEWAY/whoami"
done
printf '$ curl -s -H "Host: nobody.local" http://%s/\n' "$GATEWAY"
curl -s -H "Host: nobody.local" "http://$GATEWAY/"; echo

say "every change is an event (replayed here from revision 1)"
"$BIN" events --from 1 --type app,kv &
epid=$!
sleep 1
kill "$epid" 2>/dev/null || true
wait "$epid" 2>/dev/null || true

if [ "${DEMO_EXIT:-0}" = 1 ]; then
    say "done"
    exit 0
fi
say "drover dev is running at $DROVER_ADDR (log: $DATA/drover.log). Ctrl-C stops it."
wait "$pid"
