/* Fuzz the metalocator's subscriber side: the input is what a hostile node
 * locator sends on its link, fed in uneven pieces to a detached
 * metalocator (exactly the decoding and merging code a socket's bytes go
 * through). Beside it a well-behaved node, "good", is a real detached
 * loc_server over its own table, wired to the metalocator through memory;
 * every few pieces the harness changes good's table, so the hostile bytes
 * race real changes and acks.
 *
 * Input: byte 0 seeds the split points; byte 1 holds flags (bit 0: the
 * hostile node is removed and added again halfway); the rest is the
 * stream.
 *
 * Properties: no crash or leak; good's link never fails and keeps up with
 * its table; every merged entry holds all of good's endpoints for its name
 * (hostile bytes never take away what another node contributed); once the
 * hostile node is removed the merged table is exactly good's table; what
 * the metalocator wrote to the hostile node is connect then increasing
 * acks. */
#include "core/buf.h"
#include "core/log.h"
#include "core/rpc.h"
#include "locator/locator.h"
#include "locator/meta.h"
#include "locator/table.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_locator_meta: %s\n", what);
        abort();
    }
}

typedef struct wire {
    meta_t *meta;
    loc_conn_t *conn;
    size_t to_server, to_meta; /* bytes already forwarded each way */
} wire_t;

/* Forward what each side wrote to the other until both are quiet. */
static void pump(wire_t *w)
{
    for (;;) {
        const buf_t *mo = meta_node_output(w->meta, "good");
        const buf_t *so = loc_conn_output(w->conn);
        int moved = 0;
        if (mo->len > w->to_server) {
            check(loc_conn_feed(w->conn, mo->data + w->to_server, mo->len - w->to_server) == 0,
                  "the locator refused what the metalocator sent");
            w->to_server = mo->len;
            moved = 1;
        }
        if (so->len > w->to_meta) {
            err_t err = {0};
            int rc =
                meta_node_feed(w->meta, "good", so->data + w->to_meta, so->len - w->to_meta, &err);
            if (rc < 0)
                fprintf(stderr, "good link failed: %s\n", err.msg);
            check(rc == 0, "the metalocator refused a real locator's stream");
            w->to_meta = so->len;
            moved = 1;
        }
        if (!moved)
            return;
    }
}

static void fill(loc_table_t *t)
{
    loc_ep_t web[2] = {{.host = "10.0.0.1", .port = 31000, .version = 3},
                       {.host = "10.0.0.2", .port = 31001, .version = 3}};
    loc_table_set(t, "/web", web, 2, 3, "service");
    loc_ep_t job = {.host = "10.0.0.3", .port = 31005, .version = 1};
    loc_table_set(t, "/jobs/resize", &job, 1, 1, "worker");
}

/* good's own change: /tick alternates between one endpoint and none, and
 * /web gains or loses its second endpoint. */
static void tick(loc_table_t *t, int i)
{
    loc_ep_t ep = {.host = "10.0.0.9", .port = 40000 + i};
    loc_table_set(t, "/tick", &ep, i % 2 ? 0 : 1, i, "service");
    if (i % 3 == 0) {
        loc_ep_t web[2] = {{.host = "10.0.0.1", .port = 31000, .version = 3},
                           {.host = "10.0.0.2", .port = 31001, .version = 3}};
        loc_table_set(t, "/web", web, (size_t)(i % 2 ? 1 : 2), 3, "service");
    }
}

typedef struct cover {
    loc_table_t *merged;
    int ok;
} cover_t;

/* good's endpoints for e->name are all in the merged entry. */
static int covered(const loc_entry_t *e, void *data)
{
    cover_t *c = data;
    const loc_entry_t *m = loc_table_get(c->merged, e->name);
    if (!m) {
        c->ok = 0;
        return 1;
    }
    for (size_t i = 0; i < e->n; i++) {
        int found = 0;
        for (size_t j = 0; j < m->n && !found; j++)
            found = strcmp(m->eps[j].host, e->eps[i].host) == 0 && m->eps[j].port == e->eps[i].port;
        if (!found) {
            c->ok = 0;
            return 1;
        }
    }
    return 0;
}

static int dump_one(const loc_entry_t *e, void *data)
{
    buf_t *b = data;
    buf_printf(b, "%s[%" PRId64 ",%s]", e->name, e->version, e->api);
    for (size_t i = 0; i < e->n; i++)
        buf_printf(b, " %s:%d", e->eps[i].host, e->eps[i].port);
    buf_printf(b, ";");
    return 0;
}

static char *dump(loc_table_t *t)
{
    buf_t b = BUF_INIT(0);
    buf_printf(&b, "%s", "");
    loc_table_foreach(t, dump_one, &b);
    return buf_steal(&b, NULL);
}

/* What the metalocator wrote to the hostile node: connect [uuid] opening
 * each link, then acks that increase within a link. */
static void check_output(const buf_t *out)
{
    rpc_decoder_t d;
    rpc_msg_t m;
    err_t err;
    int rc;
    uint64_t last_ack = 0;
    rpc_decoder_init(&d, 4096);
    rpc_decoder_feed(&d, out->data, out->len);
    int first = 1;
    while ((rc = rpc_decoder_next(&d, &m, &err)) == 1) {
        check(m.channel == 1, "metalocator wrote on a channel other than 1");
        if (m.type == RPC_LOCATOR_CONNECT) {
            const char *u;
            size_t len;
            check(rpc_arg_str(&m, 0, &u, &len, &err) == 0 && len == 4 && !memcmp(u, "fuzz", 4),
                  "connect without the uuid");
            last_ack = 0;
        } else {
            uint64_t rev;
            check(!first, "first message is not connect");
            check(m.type == LOC_ACK, "metalocator wrote an unknown message type");
            check(rpc_arg_uint(&m, 0, &rev, &err) == 0, "ack without a revision");
            check(rev > last_ack, "acks do not increase");
            last_ack = rev;
        }
        first = 0;
    }
    check(rc == 0 && rpc_decoder_buffered(&d) == 0, "metalocator output is not a message stream");
    rpc_decoder_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        log_setup(LOG_OFF, LOG_TEXT);
        once = 1;
    }
    loc_table_t *good = loc_table_new();
    fill(good);
    loc_server_opts_t so = {.node_id = "good"};
    loc_server_t *srv = loc_server_new_detached(good, &so);
    loc_table_t *merged = loc_table_new();
    meta_opts_t mo = {.uuid = "fuzz", .max_message_bytes = 4096};
    meta_t *meta = meta_new_detached(merged, &mo);
    wire_t w = {.meta = meta, .conn = loc_conn_new_detached(srv)};
    check(meta_node_add(meta, "good", "10.0.0.1:10053") == 0, "add good");
    check(meta_node_add(meta, "evil", "10.6.6.6:10053") == 0, "add evil");
    pump(&w);

    size_t step = size ? (size_t)data[0] % 64 + 1 : 1;
    int flags = size > 1 ? data[1] : 0;
    size_t start = size < 2 ? size : 2;
    size_t half = start + (size - start) / 2;
    int ticks = 0, pieces = 0, readded = 0;
    for (size_t off = start; off < size;) {
        size_t n = size - off < step ? size - off : step;
        if ((flags & 1) && !readded && off >= half) {
            meta_node_remove(meta, "evil");
            check(meta_node_add(meta, "evil", "10.6.6.7:10053") == 0, "re-add evil");
            readded = 1;
        }
        (void)meta_node_feed(meta, "evil", data + off, n, NULL);
        off += n;
        step = (step * 7) % 97 + 1;
        if (++pieces % 3 == 0) {
            tick(good, ticks++);
            pump(&w);
        }
    }
    pump(&w);

    meta_node_info_t gi;
    check(meta_node_info(meta, "good", &gi) == 0, "good is gone");
    check(gi.failures == 0 && gi.state == META_LINK_UP, "good's link failed");
    check(gi.revision == loc_table_revision(good), "good's link fell behind");
    check(gi.acked == gi.revision, "good's revisions are not all acked");
    cover_t c = {merged, 1};
    loc_table_foreach(good, covered, &c);
    check(c.ok, "a merged entry lost good's endpoints");
    check_output(meta_node_output(meta, "evil"));

    meta_node_remove(meta, "evil");
    char *want = dump(good), *got = dump(merged);
    if (strcmp(want, got) != 0)
        fprintf(stderr, "want %s\ngot  %s\n", want, got);
    check(strcmp(want, got) == 0, "without the hostile node, merged differs from good's table");
    free(want);
    free(got);

    meta_free_detached(meta);
    loc_conn_free_detached(w.conn);
    loc_server_free_detached(srv);
    loc_table_free(merged);
    loc_table_free(good);
    return 0;
}
