/* cli SSE parser (text/event-stream) and the event line formats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cli/cli.h"
#include "core/alloc.h"
#include "spec/spec.h"
#include "agent/artifact.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/link_stubs.h"

/* push.c packs with the agent module's artifact_pack; the cli unit tests
 * do not link src/agent. */

/* Events seen, as "id|type|data" lines. */
typedef struct seen {
    buf_t log;
    int n;
    int stop_after;
} seen_t;

static int record(const cli_sse_event_t *ev, void *data)
{
    seen_t *s = data;
    assert_int_equal(strlen(ev->data), ev->data_len);
    buf_printf(&s->log, "%s|%s|%s\n", ev->id, ev->type, ev->data);
    s->n++;
    return s->stop_after && s->n >= s->stop_after ? 7 : 0;
}

/* Feed the whole text at once, then byte by byte, then in chunks of 3: a
 * chunk boundary anywhere must give the same events. */
static void check_stream(const char *text, const char *want)
{
    size_t len = strlen(text);
    size_t steps[] = {len ? len : 1, 1, 3};
    for (size_t k = 0; k < 3; k++) {
        seen_t s = {BUF_INIT(0), 0, 0};
        cli_sse_t p;
        cli_sse_init(&p, record, &s);
        for (size_t i = 0; i < len; i += steps[k]) {
            size_t n = len - i < steps[k] ? len - i : steps[k];
            assert_int_equal(cli_sse_feed(&p, text + i, n, NULL), 0);
        }
        assert_string_equal(s.log.data ? s.log.data : "", want);
        cli_sse_free(&p);
        buf_free(&s.log);
    }
}

static void test_basic_event(void **state)
{
    (void)state;
    check_stream("id: 42\nevent: app.updated\ndata: {\"type\":\"app.updated\",\"revision\":42}\n\n",
                 "42|app.updated|{\"type\":\"app.updated\",\"revision\":42}\n");
}

static void test_multiline_data_and_defaults(void **state)
{
    (void)state;
    check_stream("data: a\ndata:b\ndata:  c\ndata\n\n", "|message|a\nb\n c\n\n");
    /* The type resets after each event; the id persists. */
    check_stream("id: 1\nevent: x\ndata: 1\n\ndata: 2\n\n", "1|x|1\n1|message|2\n");
}

static void test_line_endings(void **state)
{
    (void)state;
    check_stream("id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r\rdata: c\n\n",
                 "1|message|a\n2|message|b\n2|message|c\n");
    /* CR then LF across a chunk boundary is one line end, not two. */
    seen_t s = {BUF_INIT(0), 0, 0};
    cli_sse_t p;
    cli_sse_init(&p, record, &s);
    assert_int_equal(cli_sse_feed(&p, "data: a\r", 8, NULL), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(cli_sse_feed(&p, "\ndata: b\r", 9, NULL), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(cli_sse_feed(&p, "\n\r\n", 3, NULL), 0);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.log.data, "|message|a\nb\n");
    cli_sse_free(&p);
    buf_free(&s.log);
}

static void test_comments_and_empty_events(void **state)
{
    (void)state;
    check_stream(": ping\n\n:another\nevent: nothing\n\nretry: 100\nfoo: bar\ndata: x\n\n",
                 "|message|x\n");
    /* No blank line yet: nothing dispatched. */
    check_stream("data: pending\n", "");
    /* An id with a NUL is ignored. */
    seen_t s = {BUF_INIT(0), 0, 0};
    cli_sse_t p;
    cli_sse_init(&p, record, &s);
    static const char t[] = "id: 5\ndata: a\n\nid: 6\0x\ndata: b\n\n";
    assert_int_equal(cli_sse_feed(&p, t, sizeof(t) - 1, NULL), 0);
    assert_string_equal(s.log.data, "5|message|a\n5|message|b\n");
    cli_sse_free(&p);
    buf_free(&s.log);
}

static void test_callback_stops(void **state)
{
    (void)state;
    seen_t s = {BUF_INIT(0), 0, 1};
    cli_sse_t p;
    cli_sse_init(&p, record, &s);
    const char *t = "data: 1\n\ndata: 2\n\n";
    assert_int_equal(cli_sse_feed(&p, t, strlen(t), NULL), 7);
    assert_int_equal(s.n, 1);
    cli_sse_free(&p);
    buf_free(&s.log);
}

static void test_bounds(void **state)
{
    (void)state;
    seen_t s = {BUF_INIT(0), 0, 0};
    cli_sse_t p;
    cli_sse_init(&p, record, &s);
    size_t n = 64 * 1024;
    char *big = xmalloc(n);
    memset(big, 'a', n);
    err_t err = {0};
    int rc = 0;
    for (size_t i = 0; i < CLI_SSE_MAX_LINE / n + 2 && rc == 0; i++)
        rc = cli_sse_feed(&p, big, n, &err);
    assert_int_equal(rc, -ENOBUFS);
    assert_non_null(strstr(err.msg, "line over"));
    cli_sse_free(&p);

    /* Many data lines, each short, still bounded as one event. */
    cli_sse_init(&p, record, &s);
    memcpy(big, "data: ", 6);
    big[n - 1] = '\n';
    rc = 0;
    for (size_t i = 0; i < CLI_SSE_MAX_DATA / n + 2 && rc == 0; i++)
        rc = cli_sse_feed(&p, big, n, &err);
    assert_int_equal(rc, -ENOBUFS);
    assert_non_null(strstr(err.msg, "event data over"));
    assert_int_equal(s.n, 0);
    cli_sse_free(&p);
    free(big);
    buf_free(&s.log);
}

static char *line_of(const char *id, const char *type, const char *data)
{
    cli_sse_event_t ev = {id, type, data, strlen(data)};
    return cli_event_line(&ev);
}

static void check_line(const char *id, const char *type, const char *data, const char *want)
{
    char *s = line_of(id, type, data);
    assert_string_equal(s, want);
    free(s);
}

static void test_event_lines(void **state)
{
    (void)state;
    check_line(
        "42", "app.updated",
        "{\"type\":\"app.updated\",\"revision\":42,\"id\":\"/production/web\",\"version\":3}",
        "42      app.updated      /production/web version=3");
    check_line("43", "app.deleted", "{\"type\":\"app.deleted\",\"revision\":43,\"id\":\"/p/w\"}",
               "43      app.deleted      /p/w");
    check_line(
        "44", "kv.put",
        "{\"type\":\"kv.put\",\"revision\":44,\"key\":\"config/web/PORT\",\"mod_revision\":44}",
        "44      kv.put           config/web/PORT mod_revision=44");
    /* No revision in the data: the SSE id; neither: "-". */
    check_line("", "reset", "{\"oldest_revision\":10}",
               "-       reset            oldest_revision=10");
    check_line("9", "reset", "{\"oldest\":10}", "9       reset            oldest=10");
    /* Not JSON: printed as is, on one line. */
    check_line("1", "message", "hello\nworld", "1       message          hello world");
    check_line("1234567", "version.created",
               "{\"type\":\"version.created\",\"revision\":1234567,\"id\":\"/a\",\"version\":2}",
               "1234567  version.created  /a version=2");
}

static void test_event_json_lines(void **state)
{
    (void)state;
    const char *one = "{\"type\":\"kv.put\", \"revision\":5}";
    cli_sse_event_t ev = {"5", "kv.put", one, strlen(one)};
    char *s = cli_event_json_line(&ev);
    assert_string_equal(s, one);
    free(s);
    const char *multi = "{\"type\":\n\"kv.put\",\n\"revision\":5}";
    cli_sse_event_t ev2 = {"5", "kv.put", multi, strlen(multi)};
    s = cli_event_json_line(&ev2);
    assert_string_equal(s, "{\"type\":\"kv.put\",\"revision\":5}");
    free(s);
    cli_sse_event_t ev3 = {"5", "x", "a\nb", 3};
    s = cli_event_json_line(&ev3);
    assert_string_equal(s, "a b");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_event),    cmocka_unit_test(test_multiline_data_and_defaults),
        cmocka_unit_test(test_line_endings),   cmocka_unit_test(test_comments_and_empty_events),
        cmocka_unit_test(test_callback_stops), cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_event_lines),    cmocka_unit_test(test_event_json_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
