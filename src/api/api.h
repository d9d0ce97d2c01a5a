/* api: the control-plane HTTP/JSON handlers under /v1/ (docs/api.md).
 *
 * The api owns no socket: api_handle is the http server's handler, and all
 * state lives in the store, so several servers can serve one store. Every
 * handler is asynchronous: it issues store operations and answers from
 * their callbacks, so the loop never waits on the disk. */
#ifndef DROVER_API_H
#define DROVER_API_H

#include "http/server.h"
#include "store/store.h"

#include <stdint.h>
#include <uv.h>

typedef struct api api_t;

typedef struct api_options {
    const char *store_backend; /* reported by /v1/status */
    int64_t sse_ping_ms;       /* event-stream keep-alive comment interval (default 15 s) */
    const char *data_dir;      /* artifacts live in <data_dir>/artifacts (borrowed; NULL: the
                                  artifact endpoints answer 503) */
} api_options_t;

/* `store` is borrowed and must outlive the api. */
api_t *api_new(uv_loop_t *loop, store_t *store, const api_options_t *opts);
void api_free(api_t *api);
/* http_handler_fn; `data` is the api_t. */
void api_handle(http_req_t *req, void *data);

/* Largest artifact upload (POST /v1/artifacts). */
#define API_ARTIFACT_MAX ((size_t)256 << 20)
/* For http_limits_t.body_limit (body_limit_data: the api_t): lets POST
 * /v1/artifacts carry API_ARTIFACT_MAX, every other request the server's
 * max_body_bytes. */
size_t api_body_limit(const char *method, const char *path, void *data);

#endif
