/* internal: the worker's and the call's state, shared by worker.c and
 * http.c (private to lib/worker/). */
#ifndef DROVER_LIB_WORKER_INTERNAL_H
#define DROVER_LIB_WORKER_INTERNAL_H

#include "drover/worker.h"
#include "frame.h"

#include <stdbool.h>

enum dw_mode { DW_BODY, DW_STREAM, DW_HTTP };

typedef struct dw_handler {
    char *event;
    size_t event_len;
    enum dw_mode mode;
    drover_body_fn body_fn;
    drover_http_fn http_fn;
    drover_stream_ops_t ops;
    void *data;
    struct dw_handler *next;
} dw_handler_t;

typedef struct dw_hdr {
    char *name;
    size_t name_len;
    char *value;
    size_t value_len;
} dw_hdr_t;

struct drover_call {
    drover_worker_t *w;
    uint64_t id;
    char *event;
    const dw_handler_t *h; /* NULL: answered by the SDK, waiting for the agent's end */
    void *ctx;
    bool req_ended;    /* the agent's close/error arrived, or the connection is gone */
    bool req_dropping; /* the user was told the request ended; later chunks are dropped */
    bool res_ended;    /* our close/error was sent (by the user or the SDK) */
    bool user_holds;   /* whole-body mode: handed to the user, response not ended by them */
    size_t received;   /* request bytes so far */
    dw_buf_t body;     /* whole-body modes */
    dw_hdr_t *hdrs;    /* invoke headers, one block */
    size_t nhdrs;
    struct drover_call *next;
};

enum dw_state { DW_IDLE, DW_RUNNING, DW_DONE, DW_FAILED };

struct drover_worker {
    char *app, *endpoint, *uuid, *locator;
    dw_handler_t *handlers;
    int fd;
    enum dw_state state;
    int fail_rc;
    int broken; /* a write failed inside a callback: the step fails after it */
    unsigned in_cb;
    dw_buf_t in;
    dw_scan_t scan;
    dw_buf_t out;
    drover_call_t *calls;
    size_t ncalls;
    uint64_t last_channel;
    /* limits */
    size_t body_limit, max_message, out_limit;
    int64_t hb_ms, silence_ms, grace_ms;
    /* clocks (ms, monotonic) */
    int64_t last_rx, next_hb, last_hb_tx;
    bool stopping;
    int64_t stop_deadline;
    unsigned stop_code;
    char *stop_reason;
    char errmsg[512];
};

/* Whole-body HTTP mode: decode and run the handler (http.c). */
int dw_http_dispatch(drover_call_t *c, const char *body, size_t len);

#endif
