/* drover worker SDK for C: write a worker for a `kind: worker` app.
 *
 * A worker is a process the node's engine starts on demand as
 *
 *     <cmd/args of the spec> --app NAME --endpoint SOCKET --uuid UUID --locator HOST:PORT
 *
 * It connects to the unix socket SOCKET, says who it is, and then serves
 * invocations: each has an event name, a stream of request chunks and a
 * stream of response chunks (docs/protocol.md, section 5 is the wire
 * reference). This library speaks that protocol; you register handlers:
 *
 *     static void hello(drover_call_t *call, const char *body, size_t len, void *data)
 *     {
 *         drover_call_write(call, "hello ", 6);
 *         drover_call_write(call, body, len);
 *         drover_call_close(call);
 *     }
 *
 *     int main(int argc, char **argv)
 *     {
 *         drover_worker_t *w = drover_worker_new();
 *         drover_worker_on(w, "hello", hello, NULL);
 *         int rc = drover_worker_parse_args(w, argc, argv);
 *         if (rc == 0)
 *             rc = drover_worker_run(w);     // returns 0 once terminated
 *         if (rc < 0)
 *             fprintf(stderr, "hello: %s\n", drover_worker_error(w));
 *         drover_worker_free(w);
 *         return rc < 0 ? 1 : 0;
 *     }
 *
 * Link with build/lib/libdrover-worker.a and -lmsgpackc (libc otherwise).
 *
 * Concurrency. One thread, one poll() loop: many invocations are open at
 * once on the connection and their messages interleave; each callback runs
 * to completion, so a handler that blocks (sleep, a slow syscall) stalls
 * every other invocation and the heartbeats. Scale out with processes (the
 * engine's pool) rather than threads. No function here is thread-safe; call
 * them all from the thread running the loop. A response may be written
 * after the callback that received the request returned (from another
 * callback, or from your own loop built on drover_worker_step).
 *
 * Errors. Every function returning int returns 0 (or a documented positive
 * value) on success and a negative errno on failure. Failures of the
 * worker as a whole (arguments, connection, protocol) also leave a message
 * naming what went wrong in drover_worker_error(w).
 *
 * Limits. A message from the agent over the message limit (4 MiB) or that
 * is not valid msgpack ends the connection (drover_worker_run returns
 * -EMSGSIZE / -EPROTO). A request body over the body limit (16 MiB by
 * default) is answered error [1, 90] (EMSGSIZE) and the rest of it is
 * dropped. Response chunks are split to at most 1 MiB each. An event with
 * no handler is answered error [1, 38] "no handler for event NAME".
 *
 * Lifecycle. Heartbeats are sent every 5 s (and a received heartbeat is
 * answered, at most once a second); 60 s without a byte from the agent ends
 * the connection (-ETIMEDOUT). On terminate the worker takes no new
 * invocations (they get error [4, 108]), lets the open ones finish for up to
 * the grace period (5 s by default, under the engine's 10 s
 * terminate-timeout), ends the rest with error [4, 108], answers terminate
 * and drover_worker_run returns 0.
 */
#ifndef DROVER_WORKER_H
#define DROVER_WORKER_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error categories of error [[category, code], message] (docs/protocol.md,
 * section 4). Codes are errno values for categories 1-4; category 5 codes
 * are the application's own. */
enum drover_error_category {
    DROVER_ECAT_PROTOCOL = 1,
    DROVER_ECAT_LOCATOR = 2,
    DROVER_ECAT_ENGINE = 3,
    DROVER_ECAT_WORKER = 4,
    DROVER_ECAT_APP = 5,
};

/* Default limits (each can be changed per worker, see drover_worker_set). */
#define DROVER_MAX_MESSAGE     ((size_t)4 << 20)  /* one message from the agent */
#define DROVER_CHUNK_MAX       ((size_t)1 << 20)  /* one response chunk */
#define DROVER_BODY_LIMIT      ((size_t)16 << 20) /* one request body */
#define DROVER_OUT_LIMIT       ((size_t)8 << 20)  /* bytes queued to the agent */
#define DROVER_HEARTBEAT_MS    5000
#define DROVER_PEER_SILENCE_MS 60000
#define DROVER_GRACE_MS        5000

typedef struct drover_worker drover_worker_t;
/* One invocation: its request (event, chunks) and its response. */
typedef struct drover_call drover_call_t;

/* An error received from the agent on a request. msg is NUL-terminated and
 * valid during the callback only. */
typedef struct drover_error {
    unsigned category;
    unsigned code;
    const char *msg;
} drover_error_t;

/* ---- the worker ---- */

/* A new worker, not connected. Never NULL (aborts on out of memory). Owned
 * by the caller: drover_worker_free. */
drover_worker_t *drover_worker_new(void);

/* Closes the connection (without any goodbye) and frees the worker, its
 * handlers and every call still allocated: no pointer to a call is valid
 * afterwards. NULL is allowed. */
void drover_worker_free(drover_worker_t *w);

/* Reads --app NAME --endpoint SOCKET --uuid UUID --locator HOST:PORT (also
 * --name=value), in any order; other arguments are ignored. -EINVAL when
 * --endpoint or --uuid is missing or an option lacks its value. */
int drover_worker_parse_args(drover_worker_t *w, int argc, char *const *argv);

/* What parse_args found (NULL when absent). Owned by the worker. */
const char *drover_worker_app(const drover_worker_t *w);
const char *drover_worker_endpoint(const drover_worker_t *w);
const char *drover_worker_uuid(const drover_worker_t *w);
const char *drover_worker_locator(const drover_worker_t *w);

/* Tunables, set before connecting; value 0 restores the default.
 *   DROVER_OPT_BODY_LIMIT      bytes of one request body (both modes)
 *   DROVER_OPT_MAX_MESSAGE     bytes of one message from the agent (>= 64 KiB)
 *   DROVER_OPT_OUT_LIMIT       bytes queued to the agent before writes wait
 *   DROVER_OPT_HEARTBEAT_MS    interval of our heartbeats
 *   DROVER_OPT_PEER_SILENCE_MS silence from the agent that ends the connection
 *   DROVER_OPT_GRACE_MS        time open invocations get after terminate
 * -EINVAL for an unknown option or a value out of range. */
enum drover_opt {
    DROVER_OPT_BODY_LIMIT = 1,
    DROVER_OPT_MAX_MESSAGE,
    DROVER_OPT_OUT_LIMIT,
    DROVER_OPT_HEARTBEAT_MS,
    DROVER_OPT_PEER_SILENCE_MS,
    DROVER_OPT_GRACE_MS,
};
int drover_worker_set(drover_worker_t *w, enum drover_opt opt, uint64_t value);

/* Last failure of the worker as a whole, "" when none. Owned by the worker,
 * valid until the next call on it. */
const char *drover_worker_error(const drover_worker_t *w);

/* ---- handlers (register before running; -EEXIST for a second handler of
 * the same event, -EINVAL for an empty name) ---- */

/* Whole-body mode: fn runs once the request is complete (the agent closed
 * it), with the body concatenated (valid during the call; not
 * NUL-terminated). The call stays valid until you end its response with
 * drover_call_close or drover_call_error, now or later. If the agent ends
 * the request with an error instead, fn is not called and the SDK ends the
 * call. */
typedef void (*drover_body_fn)(drover_call_t *call, const char *body, size_t len, void *data);
int drover_worker_on(drover_worker_t *w, const char *event, drover_body_fn fn, void *data);

/* Streaming mode: every callback but on_open is optional.
 *   on_open   the invocation arrived (set a context with drover_call_set_ctx)
 *   on_chunk  one request chunk (valid during the call)
 *   on_close  the request ended normally
 *   on_error  the request ended with an error: sent by the agent, or the
 *             body limit was passed (the SDK then also ended the response
 *             with error [1, 90]), or the connection was lost
 *   on_done   last callback: both directions ended; free the context here.
 *             The call pointer is invalid once it returns.
 * The response may be written at any time from on_open on until you end
 * it; the call is released after both directions ended, never from inside
 * drover_call_close / drover_call_error. If the connection is lost or the
 * terminate grace period ends, the SDK ends what is open (on_error if the
 * request was open, then on_done). */
typedef struct drover_stream_ops {
    void (*on_open)(drover_call_t *call, void *data);
    void (*on_chunk)(drover_call_t *call, void *ctx, const char *chunk, size_t len);
    void (*on_close)(drover_call_t *call, void *ctx);
    void (*on_error)(drover_call_t *call, void *ctx, const drover_error_t *err);
    void (*on_done)(drover_call_t *call, void *ctx);
} drover_stream_ops_t;
int drover_worker_on_stream(drover_worker_t *w, const char *event, const drover_stream_ops_t *ops,
                            void *data);

/* ---- running ---- */

/* Connects to the endpoint from parse_args and sends the handshake.
 * -ENAMETOOLONG, or the connect(2) error. */
int drover_worker_connect(drover_worker_t *w);

/* Uses an already connected stream socket instead (tests, embedding); the
 * worker owns fd from now on, makes it non-blocking and sends the handshake
 * (with --uuid, or "" when unset). */
int drover_worker_attach(drover_worker_t *w, int fd);

/* One turn of the loop: waits up to timeout_ms (-1: until something
 * happens) for the socket, reads and dispatches what arrived, writes what is
 * queued, sends heartbeats, checks the deadlines. Returns 1 while running, 0
 * once terminated cleanly (terminate answered, connection closed), or a
 * negative errno when the connection failed (-ECONNRESET: closed by the
 * agent; -ETIMEDOUT: silent agent; -EPROTO/-EMSGSIZE: bad stream;
 * -ENOTCONN: never connected). -EBUSY when called from a callback. */
int drover_worker_step(drover_worker_t *w, int timeout_ms);

/* Connects if needed, then steps until the worker ends: 0 after a
 * terminate, negative as drover_worker_step. */
int drover_worker_run(drover_worker_t *w);

/* The socket, to wait on it in your own loop (POLLIN, plus POLLOUT when
 * drover_worker_pending() > 0); -1 when not connected. */
int drover_worker_fd(const drover_worker_t *w);
size_t drover_worker_pending(const drover_worker_t *w);

/* Starts a graceful stop from the worker's side, as if the agent had sent
 * terminate: no new invocations, open ones get the grace period, then
 * terminate [code, reason] is sent and step returns 0. */
int drover_worker_stop(drover_worker_t *w, unsigned code, const char *reason);

/* ---- one invocation ---- */

/* The event name (NUL-terminated) and the channel id. */
const char *drover_call_event(const drover_call_t *call);
uint64_t drover_call_id(const drover_call_t *call);
drover_worker_t *drover_call_worker(const drover_call_t *call);

/* A header of the invoke message, by exact name (docs/protocol.md section
 * 1); 0 with *value and *len set (not NUL-terminated, valid as long as the
 * call), -ENOENT when absent. */
int drover_call_header(const drover_call_t *call, const char *name, const char **value,
                       size_t *len);

/* Your per-invocation context (streaming mode passes it to the callbacks). */
void drover_call_set_ctx(drover_call_t *call, void *ctx);
void *drover_call_ctx(const drover_call_t *call);

/* Sends len bytes as one or more write chunks (at most 1 MiB each); len 0
 * sends nothing. Called inside a callback, the bytes leave when the
 * callback returns, with whatever else it wrote (one send per reply rather
 * than one per call); a handler that streams over a long time should
 * return between chunks (streaming mode) or call it from outside a
 * callback, where it sends at once. When more than the out limit is
 * queued it first waits
 * for the socket to drain (nothing else runs meanwhile) up to the peer
 * silence bound. -EPIPE after the response ended, -ENOTCONN when the
 * connection is gone, -ETIMEDOUT. */
int drover_call_write(drover_call_t *call, const void *data, size_t len);

/* Ends the response normally. -EPIPE when already ended (the response was
 * ended by the SDK, e.g. body limit or terminate). */
int drover_call_close(drover_call_t *call);

/* Ends the response with error [[category, code], message] (printf format;
 * the message is cut at 1024 bytes). -EPIPE when already ended. */
int drover_call_error(drover_call_t *call, unsigned category, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int drover_call_verror(drover_call_t *call, unsigned category, unsigned code, const char *fmt,
                       va_list ap);

/* ---- HTTP over invocation (docs/protocol.md section 6) ----
 * The request is one chunk, the msgpack of [method, uri, version,
 * [[name, value]...], body]; the response a chunk [code, [[name,
 * value]...]], then raw body chunks, then close. */

typedef struct drover_http_header {
    const char *name; /* NUL-terminated (may hold NULs within len) */
    size_t name_len;
    const char *value;
    size_t value_len;
} drover_http_header_t;

/* A decoded request: one allocation, every string NUL-terminated. */
typedef struct drover_http_request {
    const char *method;  /* "GET" */
    const char *uri;     /* "/a/b?x=1" as sent */
    const char *path;    /* "/a/b" */
    const char *query;   /* "x=1", "" when none */
    const char *version; /* "1.1" */
    const drover_http_header_t *headers;
    size_t nheaders;
    const char *body; /* NUL-terminated for convenience; may hold NULs */
    size_t body_len;
} drover_http_request_t;

/* Decodes a request chunk into *out (free with drover_http_request_free).
 * Strings may be msgpack str or bin. -EPROTO (not one msgpack value, or
 * trailing bytes) or -EINVAL (wrong shape) with a message in errbuf when
 * errbuf is not NULL. */
int drover_http_decode_request(const void *chunk, size_t len, drover_http_request_t **out,
                               char *errbuf, size_t errlen);
void drover_http_request_free(drover_http_request_t *req);

/* First header named name, compared case-insensitively; NULL when absent. */
const char *drover_http_request_header(const drover_http_request_t *req, const char *name);

/* Encodes the request (for clients and tests): *out is malloc'ed, the
 * caller frees it. path/query are ignored; uri is used. */
int drover_http_encode_request(const drover_http_request_t *req, char **out, size_t *len);

/* Encodes / decodes the response head chunk [code, [[name, value]...]].
 * decode: *headers is one malloc'ed block (strings inside), caller frees. */
int drover_http_encode_head(unsigned code, const drover_http_header_t *headers, size_t n,
                            char **out, size_t *len);
int drover_http_decode_head(const void *chunk, size_t len, unsigned *code,
                            drover_http_header_t **headers, size_t *n);

/* Writes the head chunk on a call; then send the body with
 * drover_call_write (split into 1 MiB chunks) and end with close. */
int drover_http_write_head(drover_call_t *call, unsigned code, const drover_http_header_t *headers,
                           size_t n);

/* Head, body and close in one go. */
int drover_http_respond(drover_call_t *call, unsigned code, const drover_http_header_t *headers,
                        size_t n, const void *body, size_t len);

/* Whole-request HTTP handler: the body is decoded for you (a request that
 * does not decode is answered error [1, 22]). req is freed when fn returns;
 * the call stays valid until you end its response. */
typedef void (*drover_http_fn)(drover_call_t *call, const drover_http_request_t *req, void *data);
int drover_worker_on_http(drover_worker_t *w, const char *event, drover_http_fn fn, void *data);

#ifdef __cplusplus
}
#endif
#endif
