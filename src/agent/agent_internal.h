/* Shared by the agent's files; not part of its interface. */
#ifndef DROVER_AGENT_INTERNAL_H
#define DROVER_AGENT_INTERNAL_H

#include "agent/agent.h"
#include "agent/health.h"
#include "agent/launch.h"
#include "agent/ports.h"
#include "engine/engine.h"
#include "http/server.h"
#include "isolate/isolate.h"
#include "locator/announce.h"
#include "locator/locator.h"
#include "locator/table.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>

typedef enum inst_state {
    INST_STAGING = 0,
    INST_STARTING,
    INST_RUNNING,
    INST_HEALTHY,
    INST_UNHEALTHY,
    INST_KILLING,
    INST_FINISHED,
    INST_FAILED,
    INST_KILLED,
    INST_LOST,
} inst_state_t;

#define INST_HISTORY_MAX 20

struct inst;

/* Membership of an instance in one of the agent's work queues (reports to
 * send, launches to make); intrusive so joining and leaving cost nothing
 * whatever the number of instances. */
typedef struct inst_link {
    struct inst *prev, *next;
    bool on;
} inst_link_t;

typedef struct inst_queue {
    struct inst *head, *tail;
    size_t link_off; /* offsetof(inst_t, <the link>) */
} inst_queue_t;

typedef struct inst {
    struct agent *agent;
    char *id;
    char *app;
    int64_t version;
    json_t *spec; /* normalized spec of `version` */
    char *dir;    /* data_dir/instances/<id> */
    inst_state_t state;
    char reason[256];
    int64_t since_ms; /* wall clock of the last transition */
    int64_t started_at_ms;
    launch_ports_t port_info;
    int *ports; /* host ports, port_info.n of them (0 until allocated) */
    bool ports_held;
    int64_t mem_held_mb; /* node memory reserved for this instance */
    isolate_proc_t *proc;
    engine_app_t *engine; /* a worker app's engine (instead of proc) while it runs */
    int pool_pin;         /* poolPin of the assignment: 0 automatic, N workers */
    pid_t pid;
    int pid_wait; /* looks at app.pid left while waiting for the app's pid; 0: not waiting */
    health_t *health;
    int healthy; /* -1 unknown, 0, 1 */
    int restarts;
    uint64_t next_delay_ms; /* backoff before the next restart */
    uv_timer_t timer;       /* restart backoff / kill grace / uptime reset */
    bool timer_inited;
    bool wanted;             /* in the node's assignments */
    bool stopping;           /* being stopped for good (not wanted) */
    bool restart_after_exit; /* killed by health check: start again */
    bool draining;           /* removed from the table, waiting for routers */
    json_t *history;
    json_t *exit;            /* last exit record or NULL */
    bool report_busy;        /* a PUT or the DELETE of this instance is in flight */
    bool report_dirty;       /* the API has not seen the latest state */
    inst_link_t report_link; /* in agent.reports: waiting for a free slot */
    inst_link_t launch_link; /* in agent.launches: assigned, not launched yet */
    inst_link_t drain_link;  /* in agent.drains: stopped, drain not started */
    bool freed_pending;
    bool fetching; /* waiting for its artifact */
    bool removing; /* unlinked from the agent; DELETE the record, then free */
    struct inst *next;
} inst_t;

/* fetch.c: artifacts. dir is the unpacked, shared, read-only tree. */
typedef void (*fetch_cb)(int status, const err_t *err, const char *dir, void *data);
struct fetch;

typedef struct agent {
    uv_loop_t *loop;
    agent_options_t opts;
    char *node_id;
    char *hostname;
    char *advertise;
    char *agent_url;
    json_t *labels;
    ports_t ports;
    int64_t mem_total_mb;     /* the node's memory */
    int64_t mem_committed_mb; /* reserved by instances (their spec's mem) */
    const isolate_ops_t *isolate;
    http_server_t *http;
    inst_t *insts;
    uv_timer_t heartbeat;
    uv_timer_t retry;
    int64_t assign_index;
    /* routing groups followed from /v1/groups and served by the locator */
    uv_timer_t groups_retry;
    int64_t groups_index;
    bool groups_busy;
    json_t *groups_known; /* name -> true, the groups set on the locator */
    bool registered;
    bool synced; /* got the first assignments answer since start */
    bool watch_busy;
    atomic_int cancel; /* set when stopping: in-flight API calls give up */
    int calls_in_flight;
    bool stopping;
    bool draining; /* stopping instances before stopping */
    void (*stop_done)(void *);
    void *stop_data;
    int closing_handles;
    struct fetch *fetches;        /* downloads in progress */
    loc_table_t *table;           /* what runs healthy here, for the locator and DNS */
    loc_server_t *locator;        /* serves `table` to routers and metalocators */
    char *locator_addr;           /* "host:port" as registered */
    announce_sender_t *announcer; /* multicast announces (opt-in) */
    struct remote *remote;        /* API calls in flight (remote.c) */
    /* Work done once per loop turn rather than once per instance event:
     * launches (bounded per turn, so a thousand new instances never hold
     * the loop for seconds), table publishes of the apps that changed,
     * and reports (a bounded number in flight; an instance waiting for a
     * slot is reported once, in its latest state). */
    uv_timer_t flush;
    bool flushing;         /* inside the flush: it re-arms itself */
    json_t *publish_dirty; /* app name -> true */
    inst_queue_t reports;  /* instances with a PUT or DELETE to send */
    int reports_in_flight;
    inst_queue_t launches; /* new instances not yet launched */
    inst_queue_t drains;   /* stopped this turn, waiting for the table publish */
    uv_timer_t publish_timer;
    uint64_t published_at; /* uv_now of the last publish */
} agent_t;

/* Recompute the table entries of `app` ("/a/b" and "/a/b@<version>") from
 * the instances: only healthy ones that are not stopping are published.
 * Done at the end of the loop turn (agent_flush_soon), once per app
 * however many of its instances changed. */
void agent_publish(agent_t *a, const char *app);
/* Publish what agent_publish deferred, now: for readers of the table's
 * revision (a drain waits for routers to confirm that revision). */
void agent_publish_flush(agent_t *a);
/* Run the per-turn work (launches, publishes, reports) soon. */
void agent_flush_soon(agent_t *a);

/* Intrusive queues of instances (inst_queue_t). */
void inst_queue_init(inst_queue_t *q, size_t link_off);
void inst_queue_push(inst_queue_t *q, struct inst *in);   /* no-op when queued */
struct inst *inst_queue_pop(inst_queue_t *q);             /* NULL when empty */
void inst_queue_remove(inst_queue_t *q, struct inst *in); /* no-op when not queued */

/* Make artifact `ref` (sha256:<hex> from `drover push`, or a URL) available
 * unpacked; cb runs on the loop when it is (or failed). */
int agent_fetch(agent_t *a, const char *ref, fetch_cb cb, void *data, err_t *err);
/* Drop pending fetch callbacks whose data is `data` (an instance going away). */
void agent_fetch_forget(agent_t *a, void *data);
/* Symlink each top-level entry of `tree` into `sandbox`. */
int agent_link_sandbox(const char *tree, const char *sandbox, err_t *err);

/* ---- remote.c: API calls, non-blocking on the agent's loop ---- */

/* status: 0 when an HTTP answer came (http_status set), or a negative errno
 * for transport failures (message in err). body: parsed JSON answer or NULL;
 * borrowed for the callback. index: X-Drover-Index or 0. */
typedef void (*remote_cb)(agent_t *a, int status, const err_t *err, int http_status, json_t *body,
                          int64_t index, void *data);
/* `body` (may be NULL) is serialised before this returns. cb always runs,
 * later, from the loop (never from inside remote_call). */
void remote_call(agent_t *a, const char *method, const char *path, const json_t *body,
                 long timeout_ms, remote_cb cb, void *data);
/* Set up a->remote (once, in agent_start). */
int remote_init(agent_t *a, err_t *err);
/* At agent stop: every open call completes with -ECANCELED on a later loop
 * turn, then remote's handles close (counted in a->closing_handles). */
void remote_shutdown(agent_t *a);

/* ---- instance.c ---- */
inst_t *inst_new(agent_t *a, const char *id, const char *app, int64_t version, const json_t *spec);
void inst_launch(inst_t *in);
void inst_stop(inst_t *in, const char *reason);
/* Wait (bounded) for routers to confirm the table without `in`, then
 * SIGTERM it; from the flush, after the table was published. */
void inst_drain(inst_t *in);
int inst_adopt(inst_t *in);
/* Mark the instance's state as not yet reported; a report goes out from
 * the per-turn flush when a slot is free. */
void inst_report(inst_t *in);
/* From the flush: send queued reports (and DELETEs of removed instances)
 * while fewer than the bound are in flight. */
void inst_reports_pump(agent_t *a);
void inst_detach(inst_t *in); /* agent shutdown: forget, leave running */
/* kind "worker": the instance runs an engine app, not a process. */
bool inst_is_worker(const inst_t *in);
/* Apply an assignment's poolPin (0 automatic); -EINVAL past pool-limit. */
int inst_pool_pin(inst_t *in, int n, err_t *err);
void inst_free(inst_t *in);
const char *inst_state_name(inst_state_t s);
void agent_inst_remove(agent_t *a, inst_t *in);
void agent_inst_delete(agent_t *a, inst_t *in);
void agent_maybe_done(agent_t *a);

/* ---- logs.c: the agent's HTTP endpoint ---- */
void agent_http_handle(http_req_t *req, void *data);

int64_t agent_wall_ms(void);

#endif
