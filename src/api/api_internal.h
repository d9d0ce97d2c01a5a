/* Shared by the api's handler files; not part of the api's interface. */
#ifndef DROVER_API_INTERNAL_H
#define DROVER_API_INTERNAL_H

#include "api/api.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct api {
    uv_loop_t *loop;
    store_t *store;
    api_options_t opts;
    uint64_t started_ms;
};

/* Store key layout. App ids and KV keys live under separate prefixes; a
 * version key uses '@', which no app id may contain, so one app's versions
 * never mix with another app whose id extends it. */
#define API_APPS_PREFIX     "/apps"
#define API_VERSIONS_PREFIX "/versions"
#define API_KV_PREFIX       "/kv/"
#define API_KV_VALUE_MAX    (512 * 1024)
#define API_KV_KEY_MAX      512
/* Node agents (src/sched/assign.c uses the same layout):
 *   /nodes/<node-id>             node record, attached to the node's lease
 *   /assign/<node-id>/<inst-id>  an instance the node should run (placement)
 *   /instances/<inst-id>         the instance's actual state (agent reports)
 *   /lastfailure<app-id>         the app's last failed instance */
#define API_NODES_PREFIX       "/nodes/"
#define API_ASSIGN_PREFIX      "/assign/"
#define API_INSTANCES_PREFIX   "/instances/"
#define API_LASTFAILURE_PREFIX "/lastfailure"
#define API_NODE_LEASE_TTL_S   15
#define API_NODE_HEARTBEAT_S   5
#define API_NODE_ID_MAX        63
/* An instance id is the app id's segments joined by '_', a '.', and
 * API_INSTANCE_RAND_LEN lowercase hex digits. */
#define API_INSTANCE_RAND_LEN 12
#define API_INSTANCE_ID_MAX   (255 + 1 + API_INSTANCE_RAND_LEN)
#define API_INSTANCE_BODY_MAX (64 * 1024)
/* Routing groups: /groups/<name>, name [a-z0-9][a-z0-9.-]{0,62}. */
#define API_GROUPS_PREFIX "/groups/"

/* Answer with `body` (stolen) as JSON, X-Drover-Index set to `index` (or the
 * store's current revision when 0). */
void api_reply_json(api_t *api, http_req_t *req, int status, json_t *body, int64_t index);
/* Answer with JSON text that is already serialised (a stored record). */
void api_reply_raw_json(api_t *api, http_req_t *req, int status, const char *text, size_t len,
                        int64_t index);
/* {"error": msg} with `errors` (stolen, may be NULL) as the errors array. */
void api_reply_error(api_t *api, http_req_t *req, int status, json_t *errors, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Map a store failure to 503/409/400 and answer. */
void api_reply_store_error(api_t *api, http_req_t *req, int status, const err_t *err);
void api_reply_method_not_allowed(api_t *api, http_req_t *req, const char *allow);

/* "2026-11-21T12:00:00.123Z" into out (>= 32 bytes). */
void api_time_now(char *out, size_t n);
uint64_t api_now_ms(void);

/* Parse `?wait=` (default 5m, max 10m) and `?index=`; 0 or -EINVAL with a
 * message in err. */
int api_parse_blocking(const http_req_t *req, int64_t *index, int64_t *wait_ms, err_t *err);

/* Answer a read that may block (?index=N&wait=D): calls read(data) once,
 * at once without an index or once something under `key` (a prefix when
 * `prefix`) changed after N or D passed; read then answers with the
 * current state. When the answer is an error instead (a bad parameter, the
 * store failing, the client gone), the request is already ended and
 * gone(data) is called for the caller to free its state. */
typedef void (*api_wait_fn)(void *data);
void api_blocking_read(api_t *api, http_req_t *req, const char *key, bool prefix, api_wait_fn read,
                       api_wait_fn gone, void *data);

/* Node ids: [a-z0-9][a-z0-9.-]{0,62}. */
bool api_node_id_valid(const char *id);
/* Check an instance id; on success *app_out (optional) is the app id it
 * belongs to ("/a/b", malloc'd). -EINVAL with err naming the problem. */
int api_instance_id_check(const char *id, char **app_out, err_t *err);
/* Parse a stored JSON object record; NULL (logged) for junk. */
json_t *api_record_parse(const store_kv_t *kv);

void api_apps_handle(api_t *api, http_req_t *req, const char *rest);
void api_nodes_handle(api_t *api, http_req_t *req, const char *rest);
void api_instances_handle(api_t *api, http_req_t *req, const char *rest);
void api_artifacts_handle(api_t *api, http_req_t *req, const char *rest);
void api_kv_handle(api_t *api, http_req_t *req, const char *key);
void api_groups_handle(api_t *api, http_req_t *req, const char *rest);
void api_events_handle(api_t *api, http_req_t *req);
void api_deployments_handle(api_t *api, http_req_t *req, const char *rest);

#endif
