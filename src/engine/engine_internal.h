/* Shared by the engine's files; not part of its interface. */
#ifndef DROVER_ENGINE_INTERNAL_H
#define DROVER_ENGINE_INTERNAL_H

#include "core/buf.h"
#include "core/rpc.h"
#include "engine/engine.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* A connection's output above ENG_OUT_HIGH pauses the connections feeding
 * it (they stop reading) until it drains below ENG_OUT_LOW; since a paused
 * source stops handing out even the messages it has already read, the
 * output never passes the high mark by more than one message, and
 * ENG_OUT_MAX (the hard bound of the buffer) is never reached by a peer
 * that reads. */
#define ENG_OUT_HIGH ((size_t)1 << 20)
#define ENG_OUT_LOW  ((size_t)256 << 10)
#define ENG_OUT_MAX  ((size_t)16 << 20)
/* Request bytes buffered for one queued invocation before its client
 * connection is paused. */
#define ENG_PEND_HIGH ((size_t)1 << 20)
/* A client whose output stays above the high mark this long does not read
 * its replies: it is disconnected, which resumes the workers it held. */
#define ENG_STALL_MS      10000
#define ENG_CLIENTS_MAX   4096
#define ENG_INVOKE_HDRS_MAX 64                  /* headers an enqueue may pass on */
#define ENG_INVOKE_MAX      ((size_t)16 << 10) /* bytes of an invoke with its headers */
#define ENG_CHANNELS_MAX  4096 /* open channels on one client connection */
#define ENG_CRASHLOGS_MAX 20   /* crashlogs kept per app (oldest dropped) */
#define ENG_TICK_MS       20
#define ENG_STABLE_MS     10000 /* a worker active this long resets the crash backoff */
#define ENG_BACKOFF_MIN   1000
#define ENG_BACKOFF_MAX   32000
#define ENG_LOG_MAX       ((size_t)1 << 20) /* worker log files rotate past this */

typedef struct engine_app engine_app_t;
typedef struct econn econn_t;
typedef struct worker worker_t;
typedef struct inv inv_t;
typedef struct client client_t;

enum econn_kind { ECONN_CLIENT, ECONN_WORKER };

/* One msgpack-RPC stream (a client's TCP connection or a worker's unix
 * socket). Freed from its close callback; `owner` is told first through
 * on_lost (once), so nothing points at it after it closes. */
struct econn {
    engine_app_t *app;
    union {
        uv_handle_t h;
        uv_stream_t s;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } u;
    int kind;
    void *owner; /* client_t or worker_t; NULL for a worker not yet handshaken */
    rpc_decoder_t dec;
    buf_t out;  /* encoded, not handed to the kernel yet (bounded by ENG_OUT_MAX) */
    buf_t wbuf; /* handed to uv_write, in flight */
    uv_write_t wreq;
    bool writing;
    bool reading;
    bool closing;
    econn_t *blocked_by; /* paused while this peer's output is above the high mark */
    inv_t *waiting_inv;  /* paused while this queued invocation's buffer is full */
    uint64_t accepted_at;
    uint64_t high_since; /* uv_now when the output passed the high mark; 0 below */
    void (*on_msg)(econn_t *c, const rpc_msg_t *m);
    void (*on_lost)(econn_t *c, const char *why);
    econn_t *prev, *next; /* app->conns */
    econn_t *flush_next;  /* app->flushq, while queued */
    bool flush_queued;
};

typedef enum wstate {
    W_SPAWNING = 0,
    W_HANDSHAKING,
    W_ACTIVE,
    W_SEALING,
    W_TERMINATING,
} wstate_t;

struct worker {
    engine_app_t *app;
    char uuid[40];
    char iso_id[160];
    char *dir;
    wstate_t state;
    isolate_proc_t *proc;
    pid_t pid;
    econn_t *conn;
    rpc_channels_t chans;
    inv_t *invs; /* open invocations (w_prev/w_next) */
    int load;
    uint64_t served;
    uint64_t since;      /* uv_now of the last state change */
    uint64_t active_at;  /* uv_now of the handshake; 0 before */
    uint64_t idle_since; /* uv_now when load last dropped to 0 */
    uint64_t last_recv;  /* uv_now of the last message from it */
    uint64_t last_sent;  /* uv_now of the last heartbeat to it */
    uint64_t kill_at;    /* terminating: SIGKILL at this uv_now */
    bool killed;
    bool failed; /* ends badly (timeout, protocol error): a crash */
    bool spare;  /* parked before its exec, not in app->workers (pool.c "spares") */
    char why[256];
    worker_t *prev, *next;
};

struct client {
    econn_t *conn;
    rpc_channels_t chans;
    inv_t *invs; /* c_prev/c_next */
    size_t ninvs;
};

/* One invocation: a client channel bound (once dispatched) to a worker
 * channel. Each of the four directions ends once; the invocation leaves the
 * client when both client directions ended, the worker when both worker
 * directions ended, and is freed when it is in neither and not queued. */
struct inv {
    engine_app_t *app;
    client_t *client;
    uint64_t cch;
    worker_t *worker;
    uint64_t wch;
    char *event;
    bool queued;
    bool c_in_done, c_out_done, w_in_done, w_out_done;
    buf_t invoke;      /* the invoke with the enqueue's headers (channel patched at dispatch);
                        * empty when it had none */
    buf_t pend;        /* worker messages prepared while queued (channel patched at dispatch) */
    size_t *pend_offs; /* offset of each message's 8 channel bytes in pend */
    size_t npend, cappend;
    uint64_t enqueued_at, started_at, deadline, timeout_ms;
    inv_t *q_prev, *q_next;
    inv_t *w_prev, *w_next;
    inv_t *c_prev, *c_next;
};

typedef struct crashlog {
    char id[64];
    int64_t at_ms;
    char *reason;
    char *text;
    size_t len;
    int lines;
} crashlog_t;

struct engine_app {
    uv_loop_t *loop;
    char *name;
    char *id;
    int64_t version;
    char **argv; /* slave argv, NULL-terminated */
    char **envp;
    char *cwd;
    char *run_dir;
    char *locator;
    char *sock_path;
    char *sock_tmpdir; /* a short directory for the socket when run_dir is too long */
    const isolate_ops_t *iso;
    bool harden;
    double cpus;
    int64_t mem_bytes;
    engine_profile_t prof;
    uv_pipe_t wlisten;
    uv_tcp_t clisten;
    int port;
    uv_timer_t tick;
    worker_t *workers;
    int nworkers;
    worker_t *spare; /* the parked one, if any */
    int nspares;     /* spare processes not yet exited (the parked one and discarded ones) */
    econn_t *conns;
    int nclients;
    /* Inside a read callback, output is only queued; the messages one read
     * brought leave together, one write per connection, when it returns. */
    int reading;
    econn_t *flushq;
    inv_t *q_head, *q_tail;
    int qlen;
    int running;
    int pin;
    uint64_t backoff_ms;  /* current crash backoff; 0 when none */
    uint64_t spawn_after; /* uv_now before which no worker is spawned */
    uint64_t served, refused, timed_out, failed, crashes, spawned;
    crashlog_t crashlogs[ENG_CRASHLOGS_MAX];
    int ncrash, crash_first;
    uint64_t crash_seq;
    int works;   /* uv_work requests in flight */
    int handles; /* open handles */
    bool stopping;
    bool finishing;
    bool kill_now;
    void (*done)(void *data);
    void *done_data;
};

/* ---- conn.c ---- */
/* Allocate a conn; the caller inits c->u (tcp or pipe), accepts into it,
 * then calls econn_start. */
econn_t *econn_new(engine_app_t *app, int kind);
int econn_start(econn_t *c);
/* Hand what was appended to c->out to the kernel (no-op while a write is
 * in flight: its completion sends the rest). */
void econn_flush(econn_t *c);
size_t econn_pending(const econn_t *c);
/* Append one message (as rpc_encode); a conn past ENG_OUT_MAX is closed as
 * flooded. Returns 0 or a negative errno (the message was dropped). */
int econn_send(econn_t *c, uint64_t ch, uint64_t type, const char *fmt, ...);
/* After appending encoded messages to c->out directly: send them (now,
 * or at the end of the read being handled). */
void econn_commit(econn_t *c);
/* Forward a message's args as they came. */
int econn_forward(econn_t *c, uint64_t ch, const rpc_msg_t *m);
int econn_send_error(econn_t *c, uint64_t ch, unsigned cat, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* After writing to dst on behalf of src: pause src while dst is above the
 * high mark. */
void econn_pace(econn_t *src, econn_t *dst);
/* Pause / resume reading (resume drains what the decoder holds first). */
void econn_pause_for_inv(econn_t *c, inv_t *inv);
void econn_resume(econn_t *c);
/* Close (idempotent): on_lost(why) runs once, now; memory goes later. */
void econn_close(econn_t *c, const char *why);

/* ---- pool.c ---- */
void app_tick_ensure(engine_app_t *app);
void app_dispatch(engine_app_t *app);
void app_adjust(engine_app_t *app);
void app_maybe_finish(engine_app_t *app);
/* Kill the parked spare (the app stops, or its spec changed). */
void app_spare_drop(engine_app_t *app);
void worker_accept(engine_app_t *app, econn_t *c);
void inv_enqueue(inv_t *inv);
/* The engine ends the invocation: error to the client (when its direction
 * is open), error to the worker (when open), out of the queue; with
 * drop_worker the worker's slot is freed at once (it is not waited for). */
void inv_abort(inv_t *inv, unsigned cat, unsigned code, bool drop_worker, const char *msg);
void inv_maybe_free(inv_t *inv);
void inv_unqueue(inv_t *inv);
int64_t eng_wall_ms(void);

/* ---- service.c ---- */
int service_listen(engine_app_t *app, const char *addr, err_t *err);
void client_lost(econn_t *c, const char *why);

#endif
