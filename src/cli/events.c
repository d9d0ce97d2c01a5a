/* `drover events`: follow /v1/events (server-sent events), resuming by
 * revision when the stream drops. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/str.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- SSE parser --------------------------------------------------------- */

void cli_sse_init(cli_sse_t *p, cli_sse_fn on_event, void *data)
{
    memset(p, 0, sizeof(*p));
    buf_init(&p->line, CLI_SSE_MAX_LINE);
    buf_init(&p->data, CLI_SSE_MAX_DATA);
    buf_init(&p->type, 256);
    buf_init(&p->id, 256);
    p->on_event = on_event;
    p->cb_data = data;
}

void cli_sse_free(cli_sse_t *p)
{
    buf_free(&p->line);
    buf_free(&p->data);
    buf_free(&p->type);
    buf_free(&p->id);
}

/* A blank line ends an event. An event without any data line is dropped,
 * as the spec says; the type is reset either way, the id is not (it is the
 * stream's "last event id", kept for reconnecting). */
static int sse_dispatch(cli_sse_t *p)
{
    int rc = 0;
    if (p->has_data) {
        size_t n = p->data.len;
        if (n > 0 && p->data.data[n - 1] == '\n')
            n--;
        cli_sse_event_t ev = {
            .id = p->id.data ? p->id.data : "",
            .type = p->type.len ? p->type.data : "message",
            .data = p->data.data ? p->data.data : "",
            .data_len = n,
        };
        char saved = p->data.data ? p->data.data[n] : '\0';
        if (p->data.data)
            p->data.data[n] = '\0';
        rc = p->on_event(&ev, p->cb_data);
        if (p->data.data)
            p->data.data[n] = saved;
    }
    buf_reset(&p->data);
    buf_reset(&p->type);
    p->has_data = false;
    return rc;
}

static int sse_line(cli_sse_t *p, const char *line, size_t n, err_t *err)
{
    if (n == 0)
        return sse_dispatch(p);
    if (line[0] == ':')
        return 0;
    const char *colon = memchr(line, ':', n);
    size_t nlen = colon ? (size_t)(colon - line) : n;
    const char *value = colon ? colon + 1 : line + n;
    size_t vlen = (size_t)(line + n - value);
    if (vlen > 0 && value[0] == ' ') {
        value++;
        vlen--;
    }
    if (nlen == 4 && memcmp(line, "data", 4) == 0) {
        if (buf_append(&p->data, value, vlen) < 0 || buf_append(&p->data, "\n", 1) < 0)
            return err_set(err, -ENOBUFS, "event data over %u bytes", CLI_SSE_MAX_DATA);
        p->has_data = true;
    } else if (nlen == 5 && memcmp(line, "event", 5) == 0) {
        buf_reset(&p->type);
        if (buf_append(&p->type, value, vlen) < 0)
            return err_set(err, -ENOBUFS, "event type over 256 bytes");
    } else if (nlen == 2 && memcmp(line, "id", 2) == 0) {
        /* An id with a NUL is ignored (WHATWG); so is one too long to keep. */
        if (!memchr(value, '\0', vlen) && vlen < p->id.max) {
            buf_reset(&p->id);
            buf_append(&p->id, value, vlen);
        }
    }
    /* "retry" and unknown fields are ignored. */
    return 0;
}

int cli_sse_feed(cli_sse_t *p, const char *chunk, size_t n, err_t *err)
{
    size_t i = 0;
    if (p->last_cr && n > 0) {
        p->last_cr = false;
        if (chunk[0] == '\n')
            i = 1;
    }
    while (i < n) {
        /* Find the end of the line within this chunk. */
        size_t j = i;
        while (j < n && chunk[j] != '\n' && chunk[j] != '\r')
            j++;
        if (j == n) {
            if (buf_append(&p->line, chunk + i, n - i) < 0)
                return err_set(err, -ENOBUFS, "event stream line over %u bytes", CLI_SSE_MAX_LINE);
            return 0;
        }
        const char *line = chunk + i;
        size_t len = j - i;
        /* The same bound whether or not the line spans chunks, so the
         * result never depends on how the stream was cut. */
        if (len > CLI_SSE_MAX_LINE)
            return err_set(err, -ENOBUFS, "event stream line over %u bytes", CLI_SSE_MAX_LINE);
        if (p->line.len) {
            if (buf_append(&p->line, chunk + i, j - i) < 0)
                return err_set(err, -ENOBUFS, "event stream line over %u bytes", CLI_SSE_MAX_LINE);
            line = p->line.data;
            len = p->line.len;
        }
        int rc = sse_line(p, line, len, err);
        buf_reset(&p->line);
        if (chunk[j] == '\r') {
            if (j + 1 < n && chunk[j + 1] == '\n')
                j++;
            else if (j + 1 == n)
                p->last_cr = true;
        }
        i = j + 1;
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- rendering ---------------------------------------------------------- */

/* REV  TYPE  SUBJECT, where SUBJECT is the app id or key followed by the
 * other fields as k=v, so new event types print sensibly without a CLI
 * change. */
char *cli_event_line(const cli_sse_event_t *ev)
{
    json_t *d = json_loadb(ev->data, ev->data_len, 0, NULL);
    buf_t b = BUF_INIT(0);
    char *rev = NULL;
    json_t *r = json_object_get(d, "revision");
    if (json_is_integer(r))
        rev = xasprintf("%lld", (long long)json_integer_value(r));
    else
        rev = xstrdup(ev->id && *ev->id ? ev->id : "-");
    buf_printf(&b, "%-6s  %-15s ", rev, ev->type);
    free(rev);
    if (!json_is_object(d)) {
        buf_append_str(&b, " ");
        buf_append(&b, ev->data, ev->data_len);
    } else {
        const char *subject = json_str(d, "id");
        if (!subject)
            subject = json_str(d, "key");
        if (!subject)
            subject = json_str(d, "name"); /* group events */
        if (subject)
            buf_printf(&b, " %s", subject);
        for (void *it = json_object_iter(d); it; it = json_object_iter_next(d, it)) {
            const char *k = json_object_iter_key(it);
            json_t *v = json_object_iter_value(it);
            if (strcmp(k, "type") == 0 || strcmp(k, "revision") == 0 ||
                (json_is_string(v) && json_string_value(v) == subject))
                continue;
            char *s = cli_json_text(v);
            buf_printf(&b, " %s=%s", k, s);
            free(s);
        }
    }
    json_decref(d);
    /* One event, one line, whatever the data held. */
    for (size_t i = 0; i < b.len; i++)
        if ((unsigned char)b.data[i] < 0x20 || b.data[i] == 0x7f)
            b.data[i] = ' ';
    while (b.len > 0 && b.data[b.len - 1] == ' ')
        b.data[--b.len] = '\0';
    return buf_steal(&b, NULL);
}

char *cli_event_json_line(const cli_sse_event_t *ev)
{
    if (!memchr(ev->data, '\n', ev->data_len) && !memchr(ev->data, '\r', ev->data_len))
        return xstrndup(ev->data, ev->data_len);
    json_t *d = json_loadb(ev->data, ev->data_len, 0, NULL);
    char *s;
    if (d) {
        s = cli_json_compact(d);
        json_decref(d);
    } else {
        s = xstrndup(ev->data, ev->data_len);
        for (char *p = s; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    return s;
}

/* ---- verb --------------------------------------------------------------- */

typedef struct events_state {
    cli_ctx_t *ctx;
    bool json;
    cli_sse_t sse;
    buf_t head; /* first bytes of the answer, for an error message */
    http_client_resp_t *resp;
    size_t n_bytes;
    err_t err;
    bool failed;
    bool checked; /* Content-Type looked at */
    bool is_sse;
} events_state_t;

static int events_print(const cli_sse_event_t *ev, void *data)
{
    events_state_t *st = data;
    char *line = st->json ? cli_event_json_line(ev) : cli_event_line(ev);
    fprintf(st->ctx->out, "%s\n", line);
    free(line);
    /* Followers pipe this into other tools: each event as it happens. */
    fflush(st->ctx->out);
    return 0;
}

static int events_on_data(const char *p, size_t n, void *data)
{
    events_state_t *st = data;
    st->n_bytes += n;
    buf_append(&st->head, p, n < st->head.max - st->head.len ? n : st->head.max - st->head.len);
    /* An error answer is not an event stream; its body is kept in head.
     * The status is known only once the transfer ends, but the headers
     * have arrived before the first byte of the body. */
    if (!st->checked) {
        char *ct = http_client_resp_header(st->resp, "Content-Type");
        st->is_sse = ct && str_has_prefix(ct, "text/event-stream");
        st->checked = true;
        free(ct);
    }
    if (!st->is_sse)
        return 0;
    if (cli_sse_feed(&st->sse, p, n, &st->err) < 0) {
        st->failed = true;
        return 1;
    }
    return 0;
}

static void events_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* The stream should never end; when it does (server restart, proxy
 * timeout) the follower reconnects with Last-Event-ID so no event is lost
 * or repeated. Only a first connection that fails, an error answer or a
 * broken stream end the command. */
int cli_cmd_events(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "events", "events [--type T]... [--from REV] [--json]",
        "Follow the event stream, one line per event: REV  TYPE  SUBJECT [k=v...]. Runs until "
        "interrupted; reconnects (resuming after the last event seen) when the stream drops.",
        "drover events\n"
        "drover events --type app --type kv.put\n"
        "drover events --from 1 --json | jq -c 'select(.type == \"app.updated\")'"};
    enum { O_TYPE, O_FROM, O_JSON, O_N };
    cli_opt_t opts[O_N] = {
        [O_TYPE] = CLI_LIST("type", "T", "only type T or family T (app, kv.put; a,b for several)"),
        [O_FROM] = CLI_VALUE("from", "REV", "first replay every event from revision REV on"),
        [O_JSON] = CLI_FLAG("json", "print each event's data JSON, one per line"),
    };
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, O_N, 0, 0, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    int64_t from;
    if (opts[O_FROM].value && str_to_i64(opts[O_FROM].value, 0, INT64_MAX, &from) < 0) {
        rc = cli_usage_error(ctx, &cmd, "--from %s: expected a revision (integer >= 0)",
                             opts[O_FROM].value);
        cli_args_free(&args, opts, O_N);
        return rc;
    }
    buf_t query = BUF_INIT(0);
    buf_append_str(&query, "/v1/events");
    if (opts[O_TYPE].count) {
        buf_append_str(&query, "?type=");
        for (int i = 0; i < opts[O_TYPE].count; i++) {
            if (i)
                buf_append_str(&query, ",");
            /* Commas separate types; keep them readable in the URL. */
            const char *t = opts[O_TYPE].list[i];
            while (*t) {
                size_t n = strcspn(t, ",");
                char *one = xstrndup(t, n);
                cli_url_escape(&query, one, false);
                free(one);
                t += n;
                if (*t == ',') {
                    buf_append_str(&query, ",");
                    t++;
                }
            }
        }
    }
    char *base_url = xasprintf("%s%s", ctx->addr, query.data);
    char *last_id = NULL;
    bool connected_once = false;
    long backoff = 500;
    rc = CLI_EXIT_OK;
    for (;;) {
        events_state_t st = {.ctx = ctx, .json = opts[O_JSON].count > 0};
        http_client_resp_t resp;
        http_client_resp_init(&resp, 4096);
        st.resp = &resp;
        buf_init(&st.head, 4096);
        cli_sse_init(&st.sse, events_print, &st);
        /* The parser keeps the last id; seed it so a connection that
         * delivers no event still resumes from the right place. */
        if (last_id)
            buf_append_str(&st.sse.id, last_id);
        char *url;
        if (!last_id && opts[O_FROM].value)
            url = xasprintf("%s%sfrom=%s", base_url, strchr(base_url, '?') ? "&" : "?",
                            opts[O_FROM].value);
        else
            url = xstrdup(base_url);
        http_header_t hdr[2] = {{"Accept", "text/event-stream"}, {"Last-Event-ID", last_id}};
        err_t err = {0};
        int trc = http_client_stream("GET", url, hdr, last_id && *last_id ? 2 : 1, NULL, 0,
                                     events_on_data, &st, &resp, &err);
        free(url);
        if (st.sse.id.len) {
            free(last_id);
            last_id = xstrdup(st.sse.id.data);
        }
        /* Whether an event stream was opened at all (its headers came),
         * which tells a stream that later broke from a server that never
         * answered. */
        char *ct = http_client_resp_header(&resp, "Content-Type");
        bool streamed = ct && str_has_prefix(ct, "text/event-stream");
        free(ct);
        bool ok_status = resp.status >= 200 && resp.status <= 299;
        int status = resp.status;
        char msg[ERR_MSG_MAX];
        msg[0] = '\0';
        bool fatal = false;
        if (st.failed) {
            snprintf(msg, sizeof(msg), "%s", st.err.msg);
            fatal = true;
        } else if (trc == 0 && !ok_status) {
            cli_error_message(status, st.head.data, st.head.len, msg, sizeof(msg));
            fatal = status < 500 || !connected_once;
        } else if (trc == 0 && !streamed) {
            snprintf(msg, sizeof(msg), "%s is not an event stream (wrong address?)", base_url);
            fatal = true;
        } else if (trc < 0 && !streamed && !connected_once) {
            snprintf(msg, sizeof(msg), "%s (is drover running at %s? set DROVER_ADDR or --addr)",
                     err_str(&err, trc), ctx->addr);
            fatal = true;
        } else if (trc < 0) {
            snprintf(msg, sizeof(msg), "%s", err_str(&err, trc));
        }
        if (streamed) {
            connected_once = true;
            if (st.n_bytes > 0)
                backoff = 500;
        }
        http_client_resp_free(&resp);
        buf_free(&st.head);
        cli_sse_free(&st.sse);
        if (fatal) {
            rc = cli_fail(ctx, "%s", msg);
            break;
        }
        fprintf(ctx->err, "drover: event stream %s%s; reconnecting%s%s\n",
                msg[0] ? "broken: " : "ended", msg, last_id ? " after event " : "",
                last_id ? last_id : "");
        events_sleep_ms(backoff);
        backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
    }
    free(last_id);
    free(base_url);
    buf_free(&query);
    cli_args_free(&args, opts, O_N);
    return rc;
}
