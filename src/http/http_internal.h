/* http/http_internal.h: what server.c and http_conn.c share, plus a
 * socket-less ("detached") mode so the fuzzer and unit tests can push bytes
 * through exactly the parsing and response code the server runs. Private to
 * src/http, its tests and its fuzz target. */
#ifndef DROVER_HTTP_INTERNAL_H
#define DROVER_HTTP_INTERNAL_H

#include "core/buf.h"
#include "http/server.h"

#include <http_parser.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>
#include <uv.h>

/* Bytes asked of the kernel per read; the one shared read buffer is this big. */
#define HTTP_READ_SIZE 65536

typedef struct http_conn http_conn_t;

/* Offsets into a connection's arena (pointers would move when it grows). */
typedef struct http_span {
    size_t name;
    size_t value;
} http_span_t;

struct http_server {
    uv_loop_t *loop; /* NULL for a detached server */
    uv_tcp_t listener;
    uv_timer_t grace_timer; /* force-closes connections after the shutdown grace */
    uv_timer_t defer_timer; /* runs abort callbacks registered too late (next loop turn) */
    http_limits_t lim;
    http_handler_fn handler;
    void *data;
    int port;
    size_t n_conns;        /* accepted connections counted against max_connections */
    http_conn_t *conns;    /* every connection not yet freed (doubly linked) */
    http_conn_t *deferred; /* connections waiting for their deferred abort callback */
    char *rbuf;            /* HTTP_READ_SIZE bytes shared by all reads of this loop */
    bool shutting_down;
    bool finishing;
    int open_handles; /* server-owned handles not yet closed */
    void (*done)(void *data);
    void *done_data;
    time_t date_sec; /* second the cached Date header was formatted for */
    char date[48];   /* "Date: Tue, 15 Nov 1994 08:12:31 GMT\r\n" */
    size_t date_len;
};

struct http_conn {
    http_req_t req; /* first, so a handler's http_req_t * leads back to its connection */
    http_server_t *srv;
    http_conn_t *prev, *next;
    http_conn_t *defer_next;
    uv_tcp_t tcp;
    uv_timer_t timer; /* idle, header (408) or linger timeout, by state */
    uv_write_t wreq;
    uv_shutdown_t sreq;
    http_parser parser;

    /* Received bytes not yet parsed (pipelined behind a pending request). */
    char *in;
    size_t in_off, in_len, in_cap;

    /* The request being parsed: target, header names and values and the
     * decoded path/query/params, NUL-separated; reused across requests. */
    buf_t arena;
    buf_t dec; /* decoded path, raw query, decoded params, NUL-separated */
    size_t url_len;
    size_t hdr_bytes;  /* request line + header bytes seen, for the 431 limit */
    int last_cb;       /* which header callback ran last (field/value/none) */
    bool headers_done; /* later header callbacks are chunked trailers */
    http_span_t *hspans;
    size_t n_hspans, cap_hspans;
    http_span_t *pspans;
    size_t n_pspans, cap_pspans;
    http_header_t *hdrs;
    size_t cap_hdrs;
    http_param_t *params;
    size_t cap_params;
    buf_t body;

    /* Output: `out` collects responses while `wout` is being written. */
    buf_t out;
    buf_t wout;
    buf_t sink; /* detached mode: everything "written" */

    int status;     /* of the response to the current request, for the log */
    int err_status; /* set by a parser callback that rejects the request */
    char err_msg[192];

    void (*abort_cb)(http_req_t *r, void *data);
    void *abort_data;

    int refs;         /* callers on the stack that still use the connection */
    int open_handles; /* uv handles (tcp, timer) not yet through their close callback */

    bool counted;     /* counts against max_connections */
    bool msg_started; /* first byte of a request seen, request not complete */
    bool pending;     /* dispatched to the handler and not ended */
    bool streaming;   /* http_stream_begin() called */
    bool chunked_out; /* streaming with chunked encoding (else close-delimited) */
    bool head_req;    /* current request is HEAD: no body in the response */
    bool keep_alive;  /* the connection takes another request after this one */
    bool aborted;     /* the client went away while the request was pending */
    bool abort_due;   /* the handler must learn of an abort (disconnect or shutdown) */
    bool abort_notified;
    bool deferred;  /* on srv->deferred */
    bool closing;   /* no more requests; close once output is written */
    bool lingering; /* output written, write side shut, draining input */
    bool closed;    /* uv_close() called (or detached and gone) */
    bool reading;
    bool writing;
    bool in_parse; /* the parse loop is on the stack; it flushes at its end */

    char remote[INET6_ADDRSTRLEN + 16]; /* "[v6]:port" */
};

/* server.c */
/* "Date: ...\r\n" for now, formatted at most once a second. */
const char *http_server_date(http_server_t *s, size_t *len);
/* A connection was freed; finishes a shutdown once the last one is gone. */
void http_server_conn_gone(http_server_t *s);
/* Run http_conn_run_deferred() on the next loop turn. */
void http_server_kick_deferred(http_server_t *s);

/* http_conn.c */
/* Accept one pending connection on the listener (503 when over the limit). */
void http_conn_accept(http_server_t *s);
/* Shutdown started: close an idle connection, warn a pending request. */
void http_conn_shutdown(http_conn_t *c);
/* Close the socket now (shutdown grace over); pending requests are aborted. */
void http_conn_close(http_conn_t *c);
/* Keep `c` allocated across a call that may end its request or close it. */
void http_conn_hold(http_conn_t *c);
/* Drop a hold; frees the connection when nothing needs it any more. */
void http_conn_release(http_conn_t *c);
/* Run the abort callbacks queued on srv->deferred. */
void http_conn_run_deferred(http_server_t *s);

/* Detached mode (fuzzing and tests). A detached server has no loop and no
 * socket; its handler must end requests synchronously. */
http_server_t *http_server_new_detached(const http_limits_t *lim, http_handler_fn handler,
                                        void *data);
/* Frees the server; every detached connection must have been freed. */
void http_server_free_detached(http_server_t *s);
/* A connection whose output is appended to an in-memory sink (bounded at
 * 1 MiB; more is dropped). Owned by the caller: free with
 * http_conn_free_detached(). */
http_conn_t *http_conn_new_detached(http_server_t *s);
/* Feed received bytes. Returns 0 while the connection takes more, -EPIPE
 * once the server closed it (after an error or Connection: close). */
int http_conn_feed(http_conn_t *c, const char *p, size_t n);
/* Everything the server wrote so far. */
const buf_t *http_conn_output(const http_conn_t *c);
/* The peer goes away; the connection is freed (its request is ended). */
void http_conn_free_detached(http_conn_t *c);

#endif
