/* cli: `drover <verb>`, a thin client of the HTTP API (docs/api.md).
 *
 * Every verb turns its arguments into one API request (or a stream of
 * them, for `events`), and prints the answer as a table, a summary or the
 * raw JSON (`--json`). Nothing the CLI shows is computed from state a
 * script could not get with curl.
 *
 * The first part of this header is the entry point used by src/main.c. The
 * rest is shared by the files of src/cli/ (one per verb family) and is
 * exposed so the pure parts (argument parsing, tables, ages, SSE parsing,
 * rendering of answers) can be unit-tested without a server.
 *
 * Output contract (docs/cli.md): results on stdout, errors on stderr as
 * `drover: <message>`, warnings on stderr as `warning: <path>: <reason>`.
 * Exit codes: CLI_EXIT_OK, CLI_EXIT_ERROR (API answered 4xx/5xx or the
 * transport failed), CLI_EXIT_USAGE. */
#ifndef DROVER_CLI_CLI_H
#define DROVER_CLI_CLI_H

#include "core/buf.h"
#include "core/err.h"
#include "http/client.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- entry points (src/main.c) ------------------------------------------ */

/* argv[0] is "drover", argv[1] the verb (or a global flag such as --addr
 * before it). Returns the process exit code. */
int cli_main(int argc, char **argv);
/* The top-level help: every verb, `dev` and `server` included, one line
 * each, grouped. */
void cli_usage(FILE *out);

/* ---- shared by src/cli/ ------------------------------------------------- */

enum { CLI_EXIT_OK = 0, CLI_EXIT_ERROR = 1, CLI_EXIT_USAGE = 2 };

#define CLI_DEFAULT_ADDR "http://127.0.0.1:7400"
/* Bound on any JSON answer the CLI reads (lists of apps can be large). */
#define CLI_MAX_RESPONSE (64u * 1024 * 1024)
/* KV values are at most 512 KiB (docs/api.md). */
#define CLI_MAX_KV_VALUE (512u * 1024)
/* A request body is at most 2 MiB (docs/api.md). */
#define CLI_MAX_SPEC (2u * 1024 * 1024)
/* Plain requests give up after this long (blocking reads add their wait). */
#define CLI_TIMEOUT_MS 60000L

typedef struct cli_ctx {
    char *addr; /* base URL without trailing '/', malloc'd */
    FILE *out;  /* stdout */
    FILE *err;  /* stderr */
    bool tty;   /* out is a terminal */
} cli_ctx_t;

/* Replace ctx->addr with `addr` normalized: a missing scheme becomes
 * "http://", trailing slashes are dropped. -EINVAL for an empty address. */
int cli_ctx_set_addr(cli_ctx_t *ctx, const char *addr, err_t *err);

/* ---- arguments (args.c) ------------------------------------------------- */

typedef enum cli_opt_type {
    CLI_OPT_FLAG,  /* --json */
    CLI_OPT_VALUE, /* --cas R, --cas=R; the last one given wins */
    CLI_OPT_LIST,  /* --var k=v, repeatable; every value kept in order */
} cli_opt_type_t;

typedef struct cli_opt {
    const char *name; /* without dashes: "json" */
    cli_opt_type_t type;
    char short_name;     /* 'f' for -f (flags only); '\0' when none */
    const char *metavar; /* for help: "R"; NULL for flags */
    const char *help;
    /* Filled by cli_args_parse: */
    int count;         /* times given */
    const char *value; /* CLI_OPT_VALUE: last value (points into argv) */
    const char **list; /* CLI_OPT_LIST: `count` values, malloc'd array */
} cli_opt_t;

#define CLI_FLAG(n, h)                                                                             \
    {                                                                                              \
        .name = (n), .type = CLI_OPT_FLAG, .help = (h)                                             \
    }
/* A flag that also has a one-letter form (`-f` for `--follow`). */
#define CLI_FLAG_SHORT(n, s, h)                                                                    \
    {                                                                                              \
        .name = (n), .type = CLI_OPT_FLAG, .short_name = (s), .help = (h)                          \
    }
#define CLI_VALUE(n, m, h)                                                                         \
    {                                                                                              \
        .name = (n), .type = CLI_OPT_VALUE, .metavar = (m), .help = (h)                            \
    }
#define CLI_LIST(n, m, h)                                                                          \
    {                                                                                              \
        .name = (n), .type = CLI_OPT_LIST, .metavar = (m), .help = (h)                             \
    }

typedef struct cli_args {
    const char **pos; /* positional arguments (into argv), malloc'd array */
    size_t n_pos;
    bool help;        /* --help or -h was given */
    const char *addr; /* --addr URL, NULL when absent */
} cli_args_t;

/* Parse argv[0..argc) (the words after the verb). Flags are `--name`,
 * `--name value` or `--name=value`, anywhere among the positionals; `--`
 * ends flags; `-` alone is a positional (stdin); `-h` is --help; `-x` is
 * the flag whose short_name is 'x'; `--addr` is accepted everywhere. Any other word starting with
 * '-' is an unknown flag: -EINVAL with err naming it. On success the caller frees with
 * cli_args_free, also on failure (it is always safe). */
int cli_args_parse(int argc, char **argv, cli_opt_t *opts, size_t n_opts, cli_args_t *out,
                   err_t *err);
void cli_args_free(cli_args_t *args, cli_opt_t *opts, size_t n_opts);

/* What `drover <verb> --help` prints; flags come from the cli_opt_t table. */
typedef struct cli_cmd {
    const char *name;    /* "kv get" */
    const char *usage;   /* "kv get KEY [flags]" (without "drover ") */
    const char *summary; /* one sentence */
    const char *example; /* one or more lines, each a full command */
} cli_cmd_t;

void cli_cmd_help(const cli_cmd_t *cmd, const cli_opt_t *opts, size_t n_opts, FILE *out);

/* A verb with sub-verbs (`app show`, `kv get`): picks the sub-verb from
 * argv[0] and runs it with the rest. `drover kv --help` lists them. */
typedef struct cli_subcmd {
    const char *name;    /* "get" */
    const char *usage;   /* "kv get KEY" */
    const char *summary; /* one line */
    int (*run)(cli_ctx_t *ctx, int argc, char **argv);
} cli_subcmd_t;

int cli_dispatch(cli_ctx_t *ctx, const char *group, const cli_subcmd_t *subs, size_t n_subs,
                 int argc, char **argv);

#define CLI_CONTINUE (-1)
/* Parse the verb's arguments and handle what is common to every verb:
 * --help (help on ctx->out, returns CLI_EXIT_OK), a bad flag or a wrong
 * number of positionals (message and usage line on ctx->err, returns
 * CLI_EXIT_USAGE), --addr (applied to ctx). Returns CLI_CONTINUE when the
 * verb should run; args must then be freed with cli_args_free. */
int cli_parse(cli_ctx_t *ctx, const cli_cmd_t *cmd, int argc, char **argv, cli_opt_t *opts,
              size_t n_opts, size_t min_pos, size_t max_pos, cli_args_t *args);
/* Print `drover: <msg>` and the usage line of cmd on ctx->err; returns
 * CLI_EXIT_USAGE. */
int cli_usage_error(cli_ctx_t *ctx, const cli_cmd_t *cmd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Print `drover: <msg>` on ctx->err; returns CLI_EXIT_ERROR. */
int cli_fail(cli_ctx_t *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- API requests (cli.c) ----------------------------------------------- */

/* One request to ctx->addr + path ("/v1/apps?dry_run=1"; already escaped).
 * resp is initialized here and must be freed by the caller whatever the
 * result. Returns 0 for a 2xx answer; -EPROTO for 4xx/5xx with err holding
 * the server's "error" text (resp keeps the answer, e.g. the 422 list); a
 * negative errno with the transport problem otherwise. */
int cli_api(cli_ctx_t *ctx, const char *method, const char *path, const char *content_type,
            const void *body, size_t len, long timeout_ms, http_client_resp_t *resp, err_t *err);
/* cli_api with the body read from the file at `path` while it is sent
 * (uploads of up to hundreds of MiB). Same results as cli_api. */
int cli_api_upload(cli_ctx_t *ctx, const char *method, const char *path, const char *content_type,
                   const char *file, long timeout_ms, http_client_resp_t *resp, err_t *err);
/* cli_api for a JSON answer: *out is the parsed 2xx body (caller owns). */
int cli_api_json(cli_ctx_t *ctx, const char *method, const char *path, const void *body, size_t len,
                 http_client_resp_t *resp, json_t **out, err_t *err);
/* 0 when GET /v1/apps/<app> answers 2xx; else as cli_api (-EPROTO with
 * "app /x not found" for a missing app). For verbs that read another
 * resource by app and must tell "no such app" from "nothing there". */
int cli_app_exists(cli_ctx_t *ctx, const char *app, err_t *err);
/* The message of an error answer: its JSON "error", else the first line of
 * a text body, else "HTTP <status>". Writes at most n bytes with a NUL. */
void cli_error_message(int status, const char *body, size_t len, char *msg, size_t n);
/* Write a 2xx body verbatim (the `--json` output), adding a final newline
 * when it has none. */
void cli_print_raw(cli_ctx_t *ctx, const http_client_resp_t *resp);

/* ---- formatting helpers (fmt.c) ----------------------------------------- */

/* Append s percent-encoded (RFC 3986 unreserved kept; '/' kept when
 * keep_slash). */
int cli_url_escape(buf_t *b, const char *s, bool keep_slash);
/* "/v1/apps/<id>" path for an app id with or without its leading '/'. */
char *cli_app_path(const char *id, const char *suffix);
/* Parse "2026-11-21T12:00:00.000Z" (RFC 3339, Z or +hh:mm) to Unix ms. */
int cli_time_parse(const char *s, int64_t *ms);
/* "5s ago", "5m ago", "3h ago", "2d ago", "1y ago"; negative is "0s ago". */
void cli_age_format(int64_t seconds, char *out, size_t n);
/* Age of an RFC 3339 timestamp relative to now_ms; "-" when unparsable. */
void cli_age_since(const char *ts, int64_t now_ms, char *out, size_t n);
/* Seconds as "45s", "12m 5s", "3h 2m", "4d 1h". */
void cli_duration_format(int64_t seconds, char *out, size_t n);
int64_t cli_now_ms(void);
/* KV value for a table cell: text (UTF-8, \n \r \t shown escaped) cut to
 * max_chars characters with "..." ending a cut; anything else as
 * "<binary N bytes>". */
char *cli_value_display(const char *v, size_t len, size_t max_chars);
/* Byte length of a base64 text once decoded. */
size_t cli_base64_decoded_len(const char *b64);
/* Scalars as text (strings unquoted, numbers as written, null as "-"),
 * arrays and objects as compact JSON. malloc'd. */
char *cli_json_text(const json_t *v);
/* Any value as compact JSON (strings quoted). malloc'd. */
char *cli_json_compact(const json_t *v);
/* Read a whole file ("-" is stdin) up to max bytes; -EFBIG past it. */
int cli_read_input(const char *path, size_t max, buf_t *out, err_t *err);

/* ---- tables (table.c) --------------------------------------------------- */

typedef struct cli_table {
    size_t n_cols;
    size_t n_rows; /* header included */
    size_t cap;
    char **cells; /* n_rows * n_cols, row-major, malloc'd strings */
} cli_table_t;

/* Header names are printed as given upper-cased. */
void cli_table_init(cli_table_t *t, size_t n_cols, const char *const *headers);
/* Copy one row (n_cols cells; NULL prints as "-"). Control characters in a
 * cell are shown as '?' so a row always stays one line. */
void cli_table_add(cli_table_t *t, const char *const *cells);
/* Columns left-aligned to the widest cell (UTF-8 characters), separated by
 * three spaces, no trailing blanks. */
void cli_table_print(const cli_table_t *t, FILE *out);
void cli_table_free(cli_table_t *t);
/* Display width of a UTF-8 string (code points). */
size_t cli_text_width(const char *s);

/* ---- server-sent events (events.c) -------------------------------------- */

typedef struct cli_sse_event {
    const char *id;   /* last event id seen (persists across events); "" if none */
    const char *type; /* "message" when the event named none */
    const char *data; /* data lines joined with '\n' */
    size_t data_len;
} cli_sse_event_t;

/* Returns non-zero to stop parsing (cli_sse_feed then returns it). */
typedef int (*cli_sse_fn)(const cli_sse_event_t *ev, void *data);

/* An incremental parser of text/event-stream (WHATWG HTML, "Parsing an
 * event stream"): lines end with CRLF, LF or CR; "field: value"; data
 * lines accumulate; a blank line dispatches; lines starting with ':' are
 * comments. Chunk boundaries may fall anywhere, even inside a CRLF. */
typedef struct cli_sse {
    buf_t line;   /* current partial line (bounded) */
    buf_t data;   /* data of the event being built (bounded) */
    buf_t type;   /* event type being built */
    buf_t id;     /* last event id */
    bool last_cr; /* previous chunk ended in CR: skip a leading LF */
    bool has_data;
    cli_sse_fn on_event;
    void *cb_data;
} cli_sse_t;

#define CLI_SSE_MAX_LINE (1024u * 1024)
#define CLI_SSE_MAX_DATA (4u * 1024 * 1024)

void cli_sse_init(cli_sse_t *p, cli_sse_fn on_event, void *data);
/* 0, the callback's non-zero result, or -ENOBUFS (err says which bound)
 * when a line or an event is over its limit. */
int cli_sse_feed(cli_sse_t *p, const char *chunk, size_t n, err_t *err);
void cli_sse_free(cli_sse_t *p);

/* One human line for an event (without newline), `REV  TYPE  SUBJECT`;
 * malloc'd. */
char *cli_event_line(const cli_sse_event_t *ev);
/* One JSON line for an event (the data, compacted when it spans lines). */
char *cli_event_json_line(const cli_sse_event_t *ev);

/* ---- rendering of answers (pure; tested) -------------------------------- */

/* apps.c */
void cli_apps_table(const json_t *apps, int64_t now_ms, FILE *out);
void cli_app_show(const json_t *app, int64_t now_ms, FILE *out);
/* cli_app_show with the app's running deployment (GET /v1/deployments/<id>)
 * summarized on its line; dep may be NULL (then the id alone). */
void cli_app_show_with(const json_t *app, const json_t *dep, int64_t now_ms, FILE *out);
void cli_versions_table(const json_t *answer, int64_t now_ms, FILE *out);
/* deploy.c */
void cli_deploy_print_invalid(const json_t *answer, FILE *err);
void cli_deploy_print_result(const json_t *answer, FILE *out, FILE *err);
void cli_deploy_print_warnings(const json_t *answer, FILE *err);
void cli_deploy_print_diff(const json_t *answer, FILE *out);
/* Split "k=v" into a spec_var (name is malloc'd up to '=', value points
 * after it). -EINVAL when there is no '=' or the name is empty. */
int cli_var_parse(const char *arg, char **name, const char **value, err_t *err);
/* kv.c */
void cli_kv_table(const json_t *list, FILE *out);
/* status.c */
void cli_status_print(const json_t *status, const char *addr, FILE *out);
/* ps.c: the instances listing. Without `all`, instances that ended as
 * asked (finished, killed) are left out. Rows sorted by app, then id. */
void cli_ps_table(const json_t *instances, bool all, int64_t now_ms, FILE *out);
/* "host:port,port" ("host" without ports, "-" without host); malloc'd. */
char *cli_instance_address(const json_t *inst);
/* The state as shown: "failed (crash loop)" for a failed instance with 3
 * or more restarts, else the state ("-" when missing); malloc'd. */
char *cli_instance_state(const json_t *inst);
/* nodes.c */
void cli_nodes_table(const json_t *nodes, int64_t now_ms, FILE *out);
/* "512 MiB", "16 GiB", "15.5 GiB". */
void cli_mem_format(int64_t mb, char *out, size_t n);
/* logs.c */
/* True when s has the form of an instance id: "<app with '_' for '/'>.<12
 * lowercase hex digits>", no '/'. */
bool cli_instance_id_like(const char *s);
/* "/v1/instances/<id>/logs?..." for tail (< 0: the agent's default),
 * follow and stream ("stdout", "stderr" or NULL for both). malloc'd. */
char *cli_logs_path(const char *id, int64_t tail, bool follow, const char *stream);
/* Which of an app's instances (an /v1/instances "instances" array) `drover
 * logs` reads: `instance` when given (-ESRCH when not among them), the only
 * one, or every one sorted by id; with `follow` there must be exactly one
 * (-EINVAL, err naming the ids, when there are several). -ENOENT when there
 * are none. *ids is a malloc'd array of strings borrowed from instances. */
int cli_logs_pick(const json_t *instances, const char *app, const char *instance, bool follow,
                  const char ***ids, size_t *n_ids, err_t *err);
/* push.c: "pushed DIR as sha256:<hex> (N bytes)" and the spec hint. */
void cli_push_print(const char *dir, const json_t *answer, FILE *out);
/* deployments.c */
/* `--canary N` / `--canary N%`: *percent is N, 1..99; -EINVAL (err naming
 * the flag) otherwise. */
int cli_canary_parse(const char *arg, int *percent, err_t *err);
/* A version argument, "3" or "v3" (>= 1); -EINVAL with err otherwise. */
int cli_version_parse(const char *arg, int64_t *version, err_t *err);
/* The follower's progress text: "1/4 new healthy, 3 old left" (a canary
 * deployment: "1/1 canary healthy", ", M old left" only when M > 0), then ", N waiting for a
 * node" when some are unplaced; "waiting for the scheduler" before the
 * first progress. malloc'd. */
char *cli_deployment_progress(const json_t *dep);
/* "3<sep>4" (from_version, version); "4" when there is no from_version
 * (a new app). malloc'd. */
char *cli_deployment_versions(const json_t *dep, const char *sep);
/* The closing line of a finished deployment: "deployment ID succeeded in
 * 12.3 s", "deployment ID failed: <reason>", "deployment ID cancelled",
 * "deployment ID superseded by a newer change to APP"; a failure the
 * server rolls back (its "rolled_back_by") adds "(rolling back: deployment
 * ID2)". NULL while it runs. malloc'd. */
char *cli_deployment_result(const json_t *dep);
/* ID APP KIND VERSION STATUS PROGRESS AGE, in the server's order. */
void cli_deployments_table(const json_t *deps, int64_t now_ms, FILE *out);
void cli_deployment_show(const json_t *dep, int64_t now_ms, FILE *out);
/* "placement: N waiting for a node: <summary>" and one "  - node: reason"
 * line per node; nothing when placement is not an object. */
void cli_placement_print(const json_t *placement, FILE *out);
/* An app action's answer as one line: "scaled /production/web to 4
 * (version 5, deployment 5f2c9a1b3d4e)"; action is the API's name
 * ("scale", "rollback", "stop", ...). */
void cli_action_print(const char *action, const json_t *answer, FILE *out);

/* What the follower has shown so far (the pure part of --wait). Owns its
 * strings; cli_follow_free releases them. */
typedef struct cli_follow {
    bool tty;          /* redraw one status line in place (\r, ESC[K) */
    bool status_shown; /* tty: the status line is on screen, without newline */
    char *step_at;     /* the last step shown: its "at" and "message" */
    char *step_msg;
    char *line;      /* the last progress text shown */
    char *placement; /* the last placement summary shown */
} cli_follow_t;

void cli_follow_init(cli_follow_t *f, bool tty);
/* Print what changed in dep since the last call: without tty, one line
 * "  <progress> (<new step>; <new step>)" when the progress or the steps
 * changed, and "  waiting for a node: <summary>" when the placement summary
 * is new; with tty, new steps and placement as lines of their own and the
 * progress as a status line redrawn in place. */
void cli_follow_render(cli_follow_t *f, const json_t *dep, FILE *out);
/* End the status line and print cli_deployment_result; CLI_EXIT_OK when
 * the deployment succeeded, else CLI_EXIT_ERROR. */
int cli_follow_finish(cli_follow_t *f, const json_t *dep, FILE *out);
void cli_follow_free(cli_follow_t *f);

enum {
    CLI_FOLLOW_HEADER = 1,     /* first a line naming the deployment */
    CLI_FOLLOW_JSON = 2,       /* progress and result on ctx->err, not ctx->out */
    CLI_FOLLOW_PRINT_JSON = 4, /* then the finished deployment's JSON on ctx->out */
};
/* Follow deployment `id` with blocking reads (GET /v1/deployments/<id>
 * ?index=N&wait=30s) until it is no longer running. Returns the exit code:
 * CLI_EXIT_OK when it succeeded, CLI_EXIT_ERROR otherwise (failed,
 * cancelled, superseded, or a request failed, said on ctx->err). */
int cli_deployment_follow(cli_ctx_t *ctx, const char *id, unsigned flags);
/* POST /v1/apps/<app>/<action> with body (NULL: none), print the answer
 * (raw: as received), then with `wait` follow its deployment. Exit code. */
int cli_app_action(cli_ctx_t *ctx, const char *app, const char *action, const json_t *body,
                   bool wait, bool raw);
/* `app stop` / `app start` (apps.c registers them). */
int cli_app_stop_start(cli_ctx_t *ctx, bool stop, int argc, char **argv);

/* ---- verbs -------------------------------------------------------------- */

int cli_cmd_apps(cli_ctx_t *ctx, int argc, char **argv);
/* Routing groups (src/cli/groups.c). */
int cli_cmd_group(cli_ctx_t *ctx, int argc, char **argv);
/* Ask a node's locator (src/cli/resolve.c). */
int cli_cmd_resolve(cli_ctx_t *ctx, int argc, char **argv);
/* One invocation of a worker app (src/cli/invoke.c). */
int cli_cmd_invoke(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_app(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_versions(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_deploy(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_kv(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_events(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_status(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_ps(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_nodes(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_logs(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_push(cli_ctx_t *ctx, int argc, char **argv);
/* Deployments and app actions (src/cli/deployments.c). */
int cli_cmd_deployments(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_deployment(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_scale(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_rollback(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_promote(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_abort(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_restart(cli_ctx_t *ctx, int argc, char **argv);
/* workers.c: `app pool`, `crashlog` */
int cli_app_pool(cli_ctx_t *ctx, int argc, char **argv);
int cli_cmd_crashlog(cli_ctx_t *ctx, int argc, char **argv);
/* "N" (0..INT32_MAX) or "auto"/"automatic" (0) for `app pool`; -EINVAL. */
int cli_pool_arg(const char *s, int64_t *out);
/* Workers by state as "3 active, 1 spawning" ("none" when empty). */
void cli_pool_workers_text(const json_t *by_state, char *out, size_t n);

#endif
