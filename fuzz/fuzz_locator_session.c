/* Fuzz a locator client session: the bytes go through a detached
 * connection (exactly the code a socket's bytes go through), fed in uneven
 * pieces. Input: byte 0 seeds the split points, the rest is what the
 * client sends. Every third piece the harness itself changes the table (as
 * the agent would), so subscriptions opened by the input stream changes
 * and acks race them.
 *
 * Properties: no crash or leak; the table holds exactly what the harness
 * put there (a client never changes it); what the server wrote is a valid
 * stream of messages on channels the client opened. */
#include "core/buf.h"
#include "core/log.h"
#include "core/rpc.h"
#include "locator/locator.h"
#include "locator/table.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_locator_session: %s\n", what);
        abort();
    }
}

static void fill(loc_table_t *t)
{
    loc_ep_t web[2] = {{.host = "10.0.0.1", .port = 31000, .node = "n1", .version = 3},
                       {.host = "10.0.0.2", .port = 31001, .node = "n2", .version = 3}};
    loc_table_set(t, "/prod/web", web, 2, 3, "service");
    loc_ep_t job = {.host = "10.0.0.3", .port = 31005, .version = 1};
    loc_table_set(t, "/jobs/resize", &job, 1, 1, "worker");
    loc_table_set(t, "drover/locator", &job, 1, 0, NULL);
}

/* The harness's own change: /tick alternates between one endpoint and
 * none, so each call is a real change (one revision). */
static void tick(loc_table_t *t, int i)
{
    loc_ep_t ep = {.host = "10.0.0.9", .port = 40000 + i};
    loc_table_set(t, "/tick", &ep, i % 2 ? 0 : 1, i, "service");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        log_setup(LOG_OFF, LOG_TEXT);
        once = 1;
    }
    loc_table_t *t = loc_table_new();
    fill(t);
    uint64_t rev0 = loc_table_revision(t);
    loc_server_opts_t opts = {.node_id = "fuzz", .max_message_bytes = 4096};
    loc_server_t *s = loc_server_new_detached(t, &opts);
    loc_conn_t *c = loc_conn_new_detached(s);

    size_t step = size ? (size_t)data[0] % 64 + 1 : 1;
    int ticks = 0, pieces = 0;
    for (size_t off = size ? 1 : 0; off < size;) {
        size_t n = size - off < step ? size - off : step;
        if (loc_conn_feed(c, data + off, n) < 0)
            break;
        off += n;
        step = (step * 7) % 97 + 1;
        if (++pieces % 3 == 0)
            tick(t, ticks++);
    }

    /* The table is what the harness made it. */
    check(loc_table_revision(t) == rev0 + (uint64_t)ticks, "table revision moved");
    check(loc_table_count(t) == 3 + (ticks % 2), "table names changed");
    const loc_entry_t *e = loc_table_get(t, "/prod/web");
    check(e && e->n == 2 && e->eps[0].port == 31000 && e->eps[1].port == 31001,
          "table entry changed");

    /* The highest channel the client opened, from what it sent. */
    rpc_decoder_t d;
    rpc_msg_t m;
    err_t err;
    int rc;
    uint64_t max_channel = 0;
    rpc_decoder_init(&d, opts.max_message_bytes);
    if (size > 1)
        rpc_decoder_feed(&d, data + 1, size - 1);
    while (rpc_decoder_next(&d, &m, &err) == 1)
        if (m.channel > max_channel)
            max_channel = m.channel;
    rpc_decoder_free(&d);

    /* The output decodes, message after message, on those channels. */
    const buf_t *out = loc_conn_output(c);
    rpc_decoder_init(&d, (size_t)8 << 20);
    rpc_decoder_feed(&d, out->data, out->len);
    while ((rc = rpc_decoder_next(&d, &m, &err)) == 1) {
        check(m.type <= RPC_CLOSE, "server sent an unknown message type");
        check(m.channel <= max_channel, "server wrote on a channel nobody opened");
    }
    check(rc == 0, "server output is not a valid message stream");
    check(rpc_decoder_buffered(&d) == 0, "server output ends inside a message");
    rpc_decoder_free(&d);

    loc_conn_free_detached(c);
    check(loc_server_subscribers(s) == 0, "subscriptions outlive their connection");
    loc_server_free_detached(s);
    loc_table_free(t);
    return 0;
}
