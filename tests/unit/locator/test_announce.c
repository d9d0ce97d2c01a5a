/* Multicast announces over real sockets. The binary moves itself into a
 * private network namespace (unshare, needs root) whose loopback carries
 * the multicast route, so tests never touch the host's network and every
 * run starts from the same state. Senders, listeners and the raw sockets
 * the tests send crafted datagrams from all run on one uv loop in this
 * thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/buf.h"
#include "core/log.h"
#include "locator/announce.h"

#include <arpa/inet.h>
#include <errno.h>
#include <msgpack.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define GROUP "239.192.77.1"
#define IV    100 /* ms, the announce interval of most tests */

/* ---- fixture --------------------------------------------------------------- */

typedef struct ev {
    char uuid[ANNOUNCE_UUID_MAX + 1];
    bool up;
    size_t n;
    char addr[4][64];
    int port[4];
    uint64_t at_ms;
} ev_t;

typedef struct rec {
    ev_t *ev;
    size_t n, cap;
    size_t ups, downs;
    /* stop this listener from inside the callback on the first event */
    announce_listener_t *stop_me;
    int *stop_done;
} rec_t;

static uv_loop_t loop;
static uv_timer_t ticker;
/* What the running test started and has not stopped: a failing assertion
 * leaves the test early, and teardown stops these so the loop can end. */
static announce_listener_t *live_l[8];
static announce_sender_t *live_s[16];
static int port_seq = 21000;
static int port; /* this test's port */

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

static void forget_listener(announce_listener_t *l)
{
    for (size_t i = 0; i < 8; i++)
        if (live_l[i] == l)
            live_l[i] = NULL;
}

static void on_done(void *data)
{
    (*(int *)data)++;
}

static void record(const char *uuid, const announce_endpoint_t *eps, size_t n, bool up, void *data)
{
    rec_t *r = data;
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->ev = realloc(r->ev, r->cap * sizeof(ev_t));
        assert_non_null(r->ev);
    }
    ev_t *e = &r->ev[r->n++];
    memset(e, 0, sizeof(*e));
    snprintf(e->uuid, sizeof(e->uuid), "%s", uuid);
    e->up = up;
    e->n = n;
    for (size_t i = 0; i < n && i < 4; i++) {
        snprintf(e->addr[i], sizeof(e->addr[i]), "%s", eps[i].addr);
        e->port[i] = eps[i].port;
    }
    e->at_ms = now_ms();
    if (up)
        r->ups++;
    else
        r->downs++;
    if (r->stop_me) {
        forget_listener(r->stop_me);
        announce_listener_stop(r->stop_me, on_done, r->stop_done);
        r->stop_me = NULL;
    }
}

/* The last event about uuid, or NULL. */
static const ev_t *last_ev(const rec_t *r, const char *uuid)
{
    for (size_t i = r->n; i-- > 0;)
        if (strcmp(r->ev[i].uuid, uuid) == 0)
            return &r->ev[i];
    return NULL;
}

static size_t count_ev(const rec_t *r, const char *uuid, bool up)
{
    size_t c = 0;
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->ev[i].uuid, uuid) == 0 && r->ev[i].up == up)
            c++;
    return c;
}

static void on_tick(uv_timer_t *t)
{
}

/* Run the loop until cond(arg) holds or timeout_ms pass; the ticker makes
 * each pass return often enough to check. */
static bool pump_until(bool (*cond)(void *), void *arg, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    uv_timer_start(&ticker, on_tick, 2, 2);
    bool ok;
    while (!(ok = cond(arg)) && now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&ticker);
    return ok;
}

static bool never(void *arg)
{
    return false;
}

static void pump_for(int ms)
{
    pump_until(never, NULL, ms);
}

typedef struct want {
    rec_t *r;
    size_t events;
} want_t;

static bool has_events(void *arg)
{
    want_t *w = arg;
    return w->r->n >= w->events;
}

static bool wait_events(rec_t *r, size_t n, int timeout_ms)
{
    want_t w = {r, n};
    return pump_until(has_events, &w, timeout_ms);
}

typedef struct want_recv {
    announce_listener_t *l;
    uint64_t received;
} want_recv_t;

static bool has_received(void *arg)
{
    want_recv_t *w = arg;
    announce_listener_stats_t st;
    announce_listener_stats(w->l, &st);
    return st.received >= w->received;
}

static bool wait_received(announce_listener_t *l, uint64_t n, int timeout_ms)
{
    want_recv_t w = {l, n};
    return pump_until(has_received, &w, timeout_ms);
}

static announce_opts_t opts_iv(uint32_t interval_ms)
{
    return (announce_opts_t){
        .group = GROUP, .port = port, .interval_ms = interval_ms, .interface = "127.0.0.1"};
}

static announce_listener_t *listen_on(const announce_opts_t *o, rec_t *r)
{
    announce_listener_t *l = NULL;
    err_t err = {0};
    int rc = announce_listener_start(&loop, o, record, r, &l, &err);
    if (rc)
        fail_msg("listener: %s", err.msg);
    for (size_t i = 0; i < 8; i++)
        if (!live_l[i]) {
            live_l[i] = l;
            break;
        }
    return l;
}

static announce_sender_t *send_as(const announce_opts_t *o, const char *uuid,
                                  const announce_endpoint_t *eps, size_t n)
{
    announce_sender_t *s = NULL;
    err_t err = {0};
    int rc = announce_sender_start(&loop, o, uuid, eps, n, &s, &err);
    if (rc)
        fail_msg("sender %s: %s", uuid, err.msg);
    for (size_t i = 0; i < 16; i++)
        if (!live_s[i]) {
            live_s[i] = s;
            break;
        }
    return s;
}

static void stop_listener(announce_listener_t *l)
{
    forget_listener(l);
    int done = 0;
    announce_listener_stop(l, on_done, &done);
    while (!done)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(done, 1);
}

static void stop_sender(announce_sender_t *s)
{
    for (size_t i = 0; i < 16; i++)
        if (live_s[i] == s)
            live_s[i] = NULL;
    int done = 0;
    announce_sender_stop(s, on_done, &done);
    while (!done)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(done, 1);
}

/* A plain UDP socket bound to ip that sends to the group: the tests'
 * stand-in for other implementations and for attackers. */
static int raw_sock(const char *ip)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, ip, &a.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    struct in_addr ifa = a.sin_addr;
    assert_int_equal(setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &ifa, sizeof(ifa)), 0);
    int sz = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    return fd;
}

static void raw_send(int fd, const void *p, size_t n)
{
    struct sockaddr_in g = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, GROUP, &g.sin_addr);
    ssize_t w = sendto(fd, p, n, 0, (struct sockaddr *)&g, sizeof(g));
    if (w != (ssize_t)n)
        fail_msg("sendto %zu bytes: %s", n, strerror(errno));
}

static void raw_announce(int fd, const char *uuid, const char *addr, int p)
{
    buf_t b = BUF_INIT(0);
    announce_endpoint_t ep = {addr, p};
    assert_int_equal(announce_encode(&b, uuid, &ep, 1, NULL), 0);
    raw_send(fd, b.data, b.len);
    buf_free(&b);
}

static int setup(void **state)
{
    port = port_seq++;
    assert_int_equal(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &ticker);
    return 0;
}

static int teardown(void **state)
{
    for (size_t i = 0; i < 8; i++)
        if (live_l[i])
            stop_listener(live_l[i]);
    for (size_t i = 0; i < 16; i++)
        if (live_s[i])
            stop_sender(live_s[i]);
    uv_close((uv_handle_t *)&ticker, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* Every handle the module opened is closed: a leak fails here. */
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

static void rec_free(rec_t *r)
{
    free(r->ev);
    memset(r, 0, sizeof(*r));
}

/* ---- wire format ----------------------------------------------------------- */

/* A host name of exactly len bytes (labels of at most 60), starting with c. */
static void make_host(char *out, size_t len, char c)
{
    for (size_t i = 0; i < len; i++)
        out[i] = (i % 61 == 60) ? '.' : c;
    if (out[len - 1] == '.')
        out[len - 1] = c;
    out[len] = '\0';
}

static void test_codec(void **state)
{
    /* The example of docs/protocol.md, byte for byte. */
    static const unsigned char example[] = {0x92, 0xa2, 'n', '1', 0x91, 0x92, 0xa8, '1',  '0',
                                            '.',  '0',  '.', '0', '.',  '5',  0xcd, 0x27, 0x45};
    buf_t b = BUF_INIT(0);
    announce_endpoint_t ep = {"10.0.0.5", 10053};
    assert_int_equal(announce_encode(&b, "n1", &ep, 1, NULL), 0);
    assert_int_equal(b.len, sizeof(example));
    assert_memory_equal(b.data, example, sizeof(example));
    announce_msg_t *m = malloc(sizeof(*m));
    assert_int_equal(announce_decode(example, sizeof(example), m, NULL), 0);
    assert_string_equal(m->uuid, "n1");
    assert_int_equal(m->n, 1);
    assert_string_equal(m->eps[0].addr, "10.0.0.5");
    assert_int_equal(m->eps[0].port, 10053);

    /* Canonical addresses; sorted and unique on decode. */
    buf_reset(&b);
    announce_endpoint_t eps[] = {
        {"Node-B.Example", 2}, {"0:0::1", 9}, {"10.0.0.1", 5}, {"::1", 9}, {"10.0.0.1", 4}};
    assert_int_equal(announce_encode(&b, "node-7", eps, 5, NULL), 0);
    assert_int_equal(announce_decode(b.data, b.len, m, NULL), 0);
    assert_int_equal(m->n, 4);
    assert_string_equal(m->eps[0].addr, "10.0.0.1");
    assert_int_equal(m->eps[0].port, 4);
    assert_string_equal(m->eps[1].addr, "10.0.0.1");
    assert_int_equal(m->eps[1].port, 5);
    assert_string_equal(m->eps[2].addr, "::1");
    assert_int_equal(m->eps[2].port, 9);
    assert_string_equal(m->eps[3].addr, "node-b.example");

    /* Encoding refuses what a listener would refuse; out stays unchanged. */
    buf_reset(&b);
    buf_append_str(&b, "keep");
    err_t err = {0};
    announce_endpoint_t ok = {"10.0.0.1", 1};
    assert_int_equal(announce_encode(&b, "has space", &ok, 1, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "uuid"));
    assert_int_equal(announce_encode(&b, "", &ok, 1, NULL), -EINVAL);
    assert_int_equal(announce_encode(&b, NULL, &ok, 1, NULL), -EINVAL);
    char longid[ANNOUNCE_UUID_MAX + 2];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    assert_int_equal(announce_encode(&b, longid, &ok, 1, NULL), -EINVAL);
    assert_int_equal(announce_encode(&b, "n", &ok, 0, NULL), -EINVAL);
    const char *bad_addrs[] = {"1.2.3.400", "a..b", "bad host", "", "1.2.3", "::g", ".x", NULL};
    for (size_t i = 0; i < 8; i++) {
        announce_endpoint_t e = {bad_addrs[i], 1};
        err_clear(&err);
        assert_int_equal(announce_encode(&b, "n", &e, 1, &err), -EINVAL);
        assert_non_null(strstr(err.msg, "endpoint 0"));
    }
    announce_endpoint_t p0 = {"10.0.0.1", 0}, p1 = {"10.0.0.1", 65536};
    assert_int_equal(announce_encode(&b, "n", &p0, 1, NULL), -EINVAL);
    assert_int_equal(announce_encode(&b, "n", &p1, 1, NULL), -EINVAL);
    announce_endpoint_t many[ANNOUNCE_MAX_ENDPOINTS + 1];
    for (size_t i = 0; i < ANNOUNCE_MAX_ENDPOINTS + 1; i++)
        many[i] = (announce_endpoint_t){"10.0.0.1", (int)(1000 + i)};
    assert_int_equal(announce_encode(&b, "n", many, ANNOUNCE_MAX_ENDPOINTS + 1, NULL), -EINVAL);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "keep");

    /* Exactly ANNOUNCE_MAX_DATAGRAM bytes is fine, one more is not:
     * [ "u", [ 6 x [str8 host, uint16 port] ] ] = 4 + 6 * (6 + len). */
    char hosts[6][254];
    announce_endpoint_t big[6];
    for (int i = 0; i < 6; i++) {
        make_host(hosts[i], i == 5 ? 225 : 227, (char)('a' + i));
        big[i] = (announce_endpoint_t){hosts[i], 60000};
    }
    buf_reset(&b);
    err_clear(&err);
    assert_int_equal(announce_encode(&b, "u", big, 6, &err), 0);
    assert_int_equal(b.len, ANNOUNCE_MAX_DATAGRAM);
    assert_int_equal(announce_decode(b.data, b.len, m, NULL), 0);
    assert_int_equal(m->n, 6);
    assert_string_equal(m->eps[5].addr, hosts[5]);
    buf_reset(&b);
    assert_int_equal(announce_encode(&b, "uu", big, 6, &err), -EMSGSIZE);
    assert_int_equal(b.len, 0);
    /* Extra elements are room for later versions. */
    static const unsigned char extra[] = {0x93, 0xa1, 'n',  0x91, 0x93, 0xa3, 'a',
                                          '.',  'b',  0x01, 0xc0, 0x81, 0x01, 0x02};
    assert_int_equal(announce_decode(extra, sizeof(extra), m, NULL), 0);
    assert_string_equal(m->eps[0].addr, "a.b");
    buf_free(&b);
    free(m);
}

/* One datagram per entry, built with msgpack-c; what each is wrong with. */
typedef struct bad {
    const char *what;
    char bytes[ANNOUNCE_MAX_DATAGRAM + 1];
    size_t len;
    int code; /* announce_decode's result */
} bad_t;

static int bad_write(void *data, const char *p, size_t n)
{
    bad_t *b = data;
    if (b->len + n > sizeof(b->bytes))
        return -1;
    memcpy(b->bytes + b->len, p, n);
    b->len += n;
    return 0;
}

static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* [uuid, [[addr, port]]] with the port packed as a signed integer. */
static void pk_one(msgpack_packer *pk, const char *uuid, const char *addr, int64_t p)
{
    msgpack_pack_array(pk, 2);
    pk_str(pk, uuid);
    msgpack_pack_array(pk, 1);
    msgpack_pack_array(pk, 2);
    pk_str(pk, addr);
    msgpack_pack_int64(pk, p);
}

/* Start entry *n of bad (what it is, the error decode gives) with pk
 * packing into it. */
static bad_t *bad_next(bad_t *bad, size_t *n, msgpack_packer *pk, const char *what, int code)
{
    bad_t *b = &bad[(*n)++];
    *b = (bad_t){.what = what, .code = code};
    msgpack_packer_init(pk, b, bad_write);
    return b;
}

static void bad_raw(bad_t *bad, size_t *n, const char *what, const char *bytes, size_t len)
{
    msgpack_packer pk;
    bad_t *b = bad_next(bad, n, &pk, what, -EPROTO);
    memcpy(b->bytes, bytes, len);
    b->len = len;
}

static size_t make_bad(bad_t *bad)
{
    size_t n = 0;
    msgpack_packer pk;
#define RAW(w, s) bad_raw(bad, &n, w, s, sizeof(s) - 1)
#define BAD(w)    bad_next(bad, &n, &pk, w, -EINVAL)
    RAW("text", "hello, metalocator");
    RAW("reserved byte", "\xc1");
    RAW("huge array header", "\xdd\xff\xff\xff\xff\xa1n");
    RAW("huge map header", "\x92\xa1n\xdf\x7f\xff\xff\xff");
    RAW("huge string", "\x92\xdb\xff\xff\xff\xff");
    RAW("truncated", "\x92\xa2n1\x91\x92\xa8"
                     "10.0");
    RAW("trailing byte", "\x92\xa2n1\x91\x92\xa1x\x01\x00");
    RAW("empty", "");
    char deep[101];
    memset(deep, 0x91, 100);
    deep[100] = (char)0x90;
    bad_raw(bad, &n, "nested 100 deep", deep, sizeof(deep));
    BAD("map");
    msgpack_pack_map(&pk, 1);
    pk_str(&pk, "n1");
    pk_str(&pk, "10.0.0.1");
    BAD("uuid only");
    msgpack_pack_array(&pk, 1);
    pk_str(&pk, "n1");
    BAD("integer uuid");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_array(&pk, 0);
    BAD("uuid with a space");
    pk_one(&pk, "n 1", "10.0.0.1", 80);
    char longid[ANNOUNCE_UUID_MAX + 2];
    memset(longid, 'u', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    BAD("uuid too long");
    pk_one(&pk, longid, "10.0.0.1", 80);
    BAD("string endpoints");
    msgpack_pack_array(&pk, 2);
    pk_str(&pk, "n1");
    pk_str(&pk, "10.0.0.1:80");
    BAD("no endpoints");
    msgpack_pack_array(&pk, 2);
    pk_str(&pk, "n1");
    msgpack_pack_array(&pk, 0);
    BAD("port 0");
    pk_one(&pk, "n1", "10.0.0.1", 0);
    BAD("port 70000");
    pk_one(&pk, "n1", "10.0.0.1", 70000);
    BAD("port -1");
    pk_one(&pk, "n1", "10.0.0.1", -1);
    BAD("bad host");
    pk_one(&pk, "n1", "bad host!", 80);
    BAD("bad address");
    pk_one(&pk, "n1", "300.1.1.1", 80);
    BAD("integer address");
    msgpack_pack_array(&pk, 2);
    pk_str(&pk, "n1");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_int(&pk, 2);
    BAD("short endpoint");
    msgpack_pack_array(&pk, 2);
    pk_str(&pk, "n1");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 1);
    pk_str(&pk, "10.0.0.1");
    BAD("65 endpoints");
    msgpack_pack_array(&pk, 2);
    pk_str(&pk, "n1");
    msgpack_pack_array(&pk, 65);
    for (int i = 0; i < 65; i++) {
        msgpack_pack_array(&pk, 2);
        pk_str(&pk, "10.0.0.1");
        msgpack_pack_int(&pk, 1000 + i);
    }
#undef BAD
#undef RAW
    return n;
}

static void test_decode_rejects(void **state)
{
    bad_t *bad = calloc(64, sizeof(bad_t));
    size_t n = make_bad(bad);
    announce_msg_t *m = malloc(sizeof(*m));
    for (size_t i = 0; i < n; i++) {
        err_t err = {0};
        int rc = announce_decode(bad[i].bytes, bad[i].len, m, &err);
        if (rc != bad[i].code)
            fail_msg("%s: got %d (%s), want %d", bad[i].what, rc, err.msg, bad[i].code);
        assert_true(err.msg[0] != '\0');
    }
    char big[ANNOUNCE_MAX_DATAGRAM + 1] = {0};
    assert_int_equal(announce_decode(big, sizeof(big), m, NULL), -EMSGSIZE);
    free(m);
    free(bad);
}

/* ---- over the network ------------------------------------------------------ */

static void test_discover(void **state)
{
    rec_t r = {0};
    announce_opts_t o = opts_iv(IV);
    announce_listener_t *l = listen_on(&o, &r);
    announce_endpoint_t eps[] = {{"10.0.0.7", 10053}, {"10.0.0.5", 10053}};
    announce_sender_t *s = send_as(&o, "node-a", eps, 2);
    assert_true(wait_events(&r, 1, 2000));
    const ev_t *e = &r.ev[0];
    assert_string_equal(e->uuid, "node-a");
    assert_true(e->up);
    assert_int_equal(e->n, 2);
    assert_string_equal(e->addr[0], "10.0.0.5");
    assert_string_equal(e->addr[1], "10.0.0.7");
    assert_int_equal(e->port[0], 10053);
    /* Unchanged announces keep it alive without new reports. */
    pump_for(4 * IV);
    assert_int_equal(r.n, 1);
    announce_listener_stats_t st;
    announce_listener_stats(l, &st);
    assert_true(st.accepted >= 3);
    assert_int_equal(st.nodes, 1);
    assert_int_equal(st.ups, 1);
    assert_int_equal(st.malformed + st.oversize + st.rate_limited + st.dropped_full, 0);
    announce_sender_stats_t ss;
    announce_sender_stats(s, &ss);
    assert_true(ss.sent >= 3);
    assert_int_equal(ss.send_errors, 0);
    stop_sender(s);
    stop_listener(l);
    rec_free(&r);
}

/* Both sides on the defaults but the port: any interface, the route of
 * the namespace picks lo. */
static void test_default_interface(void **state)
{
    rec_t r = {0};
    announce_opts_t o = {.port = port, .interval_ms = IV};
    announce_listener_t *l = listen_on(&o, &r);
    announce_endpoint_t ep = {"192.0.2.1", 10053};
    announce_sender_t *s = send_as(&o, "node-d", &ep, 1);
    assert_true(wait_events(&r, 1, 2000));
    assert_string_equal(r.ev[0].uuid, "node-d");
    assert_string_equal(r.ev[0].addr[0], "192.0.2.1");
    stop_sender(s);
    stop_listener(l);
    rec_free(&r);
}

static void test_change(void **state)
{
    rec_t r = {0};
    announce_opts_t lo = opts_iv(IV);
    announce_listener_t *l = listen_on(&lo, &r);
    /* A sender that would not announce again for 10 s: the update must go
     * out at once. */
    announce_opts_t so = opts_iv(10000);
    announce_endpoint_t a = {"10.0.0.1", 1000}, b[] = {{"10.0.0.1", 1000}, {"10.0.0.2", 2000}};
    announce_sender_t *s = send_as(&so, "node-c", &a, 1);
    assert_true(wait_events(&r, 1, 2000));
    assert_int_equal(r.ev[0].n, 1);
    uint64_t t0 = now_ms();
    assert_int_equal(announce_sender_update(s, b, 2, NULL), 0);
    assert_true(wait_events(&r, 2, 2000));
    assert_true(now_ms() - t0 < 2000);
    assert_true(r.ev[1].up);
    assert_int_equal(r.ev[1].n, 2);
    assert_string_equal(r.ev[1].addr[1], "10.0.0.2");
    assert_int_equal(r.ev[1].port[1], 2000);
    /* A bad update is refused and the old list stays. */
    err_t err = {0};
    announce_endpoint_t bad = {"10.0.0.1", 0};
    assert_int_equal(announce_sender_update(s, &bad, 1, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "port"));
    stop_sender(s);
    /* The same uuid from a restarted sender with another list. */
    announce_endpoint_t c = {"fd00::9", 3000};
    s = send_as(&lo, "node-c", &c, 1);
    assert_true(wait_events(&r, 3, 2000));
    assert_true(r.ev[2].up);
    assert_int_equal(r.ev[2].n, 1);
    assert_string_equal(r.ev[2].addr[0], "fd00::9");
    assert_int_equal(count_ev(&r, "node-c", false), 0);
    stop_sender(s);
    stop_listener(l);
    rec_free(&r);
}

static void test_down_after_three_intervals(void **state)
{
    rec_t r = {0};
    /* 200 ms here, so 3 intervals (600) and 4 (800) are far enough apart
     * to tell even on a loaded machine. */
    enum { IV2 = 200 };
    announce_opts_t o = opts_iv(IV2);
    announce_listener_t *l = listen_on(&o, &r);

    /* Two missed intervals are forgiven, the third is not. */
    int fd = raw_sock("127.0.0.1");
    raw_announce(fd, "node-r", "10.0.0.1", 80);
    assert_true(wait_events(&r, 1, 2000));
    pump_for(5 * IV2 / 2);
    raw_announce(fd, "node-r", "10.0.0.1", 80);
    uint64_t last = now_ms();
    assert_true(wait_received(l, 2, 1000));
    assert_int_equal(r.downs, 0);
    assert_true(wait_events(&r, 2, 2000));
    const ev_t *e = &r.ev[1];
    assert_false(e->up);
    assert_string_equal(e->uuid, "node-r");
    assert_string_equal(e->addr[0], "10.0.0.1");
    uint64_t gap = e->at_ms - last;
    if (gap < 3 * IV2 || gap > 3 * IV2 + IV2 / 4 + 120)
        fail_msg("down reported %llu ms after the last announce, want ~%d", (unsigned long long)gap,
                 3 * IV2);
    close(fd);
    stop_listener(l);

    o = opts_iv(IV);
    l = listen_on(&o, &r);
    /* A real sender that stops. */
    announce_endpoint_t ep = {"10.0.0.2", 80};
    announce_sender_t *s = send_as(&o, "node-s", &ep, 1);
    assert_true(wait_events(&r, 3, 2000));
    pump_for(2 * IV);
    assert_int_equal(r.n, 3);
    uint64_t stopped = now_ms();
    stop_sender(s);
    assert_true(wait_events(&r, 4, 2000));
    e = &r.ev[3];
    assert_false(e->up);
    assert_string_equal(e->uuid, "node-s");
    gap = e->at_ms - stopped;
    if (gap < 2 * IV || gap > 4 * IV + 200)
        fail_msg("down reported %llu ms after the sender stopped", (unsigned long long)gap);
    announce_listener_stats_t st;
    announce_listener_stats(l, &st);
    assert_int_equal(st.nodes, 0);
    assert_int_equal(st.downs, 1);
    stop_listener(l);
    rec_free(&r);
}

static void test_several_senders(void **state)
{
    rec_t r1 = {0}, r2 = {0};
    announce_opts_t o = opts_iv(IV);
    /* Two listeners on one host and port both hear everything. */
    announce_listener_t *l1 = listen_on(&o, &r1);
    announce_listener_t *l2 = listen_on(&o, &r2);
    enum { N = 5 };
    announce_sender_t *s[N];
    char ids[N][24], addrs[N][24];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "node-%d", i);
        snprintf(addrs[i], sizeof(addrs[i]), "10.0.1.%d", i + 1);
        announce_endpoint_t ep = {addrs[i], 10000 + i};
        announce_opts_t so = o;
        if (i % 2)
            so.interface = NULL;
        s[i] = send_as(&so, ids[i], &ep, 1);
    }
    assert_true(wait_events(&r1, N, 2000));
    assert_true(wait_events(&r2, N, 2000));
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < 2; k++) {
            const ev_t *e = last_ev(k ? &r2 : &r1, ids[i]);
            assert_non_null(e);
            assert_true(e->up);
            assert_string_equal(e->addr[0], addrs[i]);
            assert_int_equal(e->port[0], 10000 + i);
        }
    }
    stop_sender(s[2]);
    assert_true(wait_events(&r1, N + 1, 2000));
    assert_true(wait_events(&r2, N + 1, 2000));
    pump_for(2 * IV);
    for (int k = 0; k < 2; k++) {
        rec_t *r = k ? &r2 : &r1;
        assert_int_equal(r->n, N + 1);
        assert_string_equal(r->ev[N].uuid, "node-2");
        assert_false(r->ev[N].up);
    }
    announce_listener_stats_t st;
    announce_listener_stats(l1, &st);
    assert_int_equal(st.nodes, N - 1);
    for (int i = 0; i < N; i++)
        if (i != 2)
            stop_sender(s[i]);
    stop_listener(l1);
    stop_listener(l2);
    rec_free(&r1);
    rec_free(&r2);
}

static void test_garbage_ignored(void **state)
{
    rec_t r = {0};
    announce_opts_t o = opts_iv(IV);
    o.rate_limit = ANNOUNCE_RATE_UNLIMITED;
    announce_listener_t *l = listen_on(&o, &r);
    int fd = raw_sock("127.0.0.1");
    bad_t *bad = calloc(64, sizeof(bad_t));
    size_t n = make_bad(bad);
    for (size_t i = 0; i < n; i++)
        raw_send(fd, bad[i].bytes, bad[i].len);
    /* Oversized: just over the limit, over the receive buffer, and huge. */
    static char big[9000];
    memset(big, 0xa0, sizeof(big));
    raw_send(fd, big, ANNOUNCE_MAX_DATAGRAM + 1);
    raw_send(fd, big, 3000);
    raw_send(fd, big, sizeof(big));
    assert_true(wait_received(l, n + 3, 2000));
    announce_listener_stats_t st;
    announce_listener_stats(l, &st);
    assert_int_equal(st.malformed, n);
    assert_int_equal(st.oversize, 3);
    assert_int_equal(st.accepted, 0);
    assert_int_equal(st.nodes, 0);
    assert_int_equal(r.n, 0);
    /* Still listening. */
    raw_announce(fd, "node-g", "10.0.0.1", 80);
    assert_true(wait_events(&r, 1, 2000));
    assert_string_equal(r.ev[0].uuid, "node-g");
    close(fd);
    free(bad);
    stop_listener(l);
    rec_free(&r);
}

static void test_flood_bounded(void **state)
{
    rec_t r = {0};
    /* Long enough that nothing expires during the flood. */
    announce_opts_t o = opts_iv(1000);
    o.rate_limit = ANNOUNCE_RATE_UNLIMITED;
    announce_listener_t *l = listen_on(&o, &r);
    int fd = raw_sock("127.0.0.1");
    enum { FLOOD = 10000 };
    char id[32];
    for (int i = 0; i < FLOOD; i++) {
        snprintf(id, sizeof(id), "flood-%05d", i);
        raw_announce(fd, id, "10.0.0.1", 80);
        /* Let the listener drain so the socket buffer never drops. */
        if (i % 64 == 63)
            assert_true(wait_received(l, (uint64_t)i + 1, 2000));
    }
    assert_true(wait_received(l, FLOOD, 2000));
    announce_listener_stats_t st;
    announce_listener_stats(l, &st);
    assert_int_equal(st.nodes, ANNOUNCE_MAX_NODES_DEFAULT);
    assert_int_equal(st.accepted, ANNOUNCE_MAX_NODES_DEFAULT);
    assert_int_equal(st.dropped_full, FLOOD - ANNOUNCE_MAX_NODES_DEFAULT);
    assert_int_equal(st.ups, ANNOUNCE_MAX_NODES_DEFAULT);
    assert_int_equal(st.downs, 0);
    assert_int_equal(r.ups, ANNOUNCE_MAX_NODES_DEFAULT);

    /* Known nodes still get through, new ones do not. */
    raw_announce(fd, "flood-00000", "10.0.0.2", 80);
    raw_announce(fd, "flood-99999", "10.0.0.2", 80);
    assert_true(wait_received(l, FLOOD + 2, 2000));
    announce_listener_stats(l, &st);
    assert_int_equal(st.nodes, ANNOUNCE_MAX_NODES_DEFAULT);
    assert_int_equal(st.dropped_full, FLOOD - ANNOUNCE_MAX_NODES_DEFAULT + 1);
    const ev_t *e = last_ev(&r, "flood-00000");
    assert_true(e->up);
    assert_string_equal(e->addr[0], "10.0.0.2");
    assert_null(last_ev(&r, "flood-99999"));

    /* Once they expire there is room again. */
    want_t w = {&r, r.n + ANNOUNCE_MAX_NODES_DEFAULT};
    assert_true(pump_until(has_events, &w, 5000));
    announce_listener_stats(l, &st);
    assert_int_equal(st.nodes, 0);
    assert_int_equal(st.downs, ANNOUNCE_MAX_NODES_DEFAULT);
    raw_announce(fd, "flood-99999", "10.0.0.2", 80);
    assert_true(wait_events(&r, w.events + 1, 2000));
    assert_string_equal(r.ev[r.n - 1].uuid, "flood-99999");
    close(fd);
    stop_listener(l);
    rec_free(&r);
}

static void test_rate_limit(void **state)
{
    rec_t r = {0};
    announce_opts_t o = opts_iv(IV);
    o.rate_limit = 10;
    o.rate_burst = 5;
    announce_listener_t *l = listen_on(&o, &r);
    int fa = raw_sock("127.0.0.1"), fb = raw_sock("127.0.0.2");
    char id[32];
    uint64_t t0 = now_ms();
    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof(id), "a-%02d", i);
        raw_announce(fa, id, "10.0.0.1", 80);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(id, sizeof(id), "b-%02d", i);
        raw_announce(fb, id, "10.0.0.2", 80);
    }
    assert_true(wait_received(l, 43, 2000));
    uint64_t took = now_ms() - t0;
    size_t ups_a = 0, ups_b = 0;
    for (size_t i = 0; i < r.n; i++)
        if (r.ev[i].uuid[0] == 'a')
            ups_a++;
        else
            ups_b++;
    /* The burst, plus what the bucket refilled while the test ran. */
    if (ups_a < 5 || ups_a > 5 + took / 100 + 1)
        fail_msg("%zu of source a's 40 announces got through in %llu ms", ups_a,
                 (unsigned long long)took);
    assert_int_equal(ups_b, 3);
    announce_listener_stats_t st;
    announce_listener_stats(l, &st);
    assert_int_equal(st.rate_limited, 40 - ups_a);
    assert_int_equal(st.accepted, ups_a + 3);
    close(fa);
    close(fb);
    stop_listener(l);
    rec_free(&r);
}

static void test_start_errors(void **state)
{
    announce_endpoint_t ep = {"10.0.0.1", 80};
    struct {
        announce_opts_t o;
        const char *want;
    } cases[] = {
        {{.group = "10.1.2.3"}, "multicast"},
        {{.group = "239.1.1"}, "multicast"},
        {{.group = "ff02::1"}, "multicast"},
        {{.port = 70000}, "port"},
        {{.ttl = 300}, "ttl"},
        {{.interface = "lo"}, "interface"},
        {{.max_nodes = (size_t)1 << 30}, "max nodes"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        err_t err = {0};
        announce_listener_t *l = (void *)1;
        announce_sender_t *s = (void *)1;
        rec_t r = {0};
        assert_int_equal(announce_listener_start(&loop, &cases[i].o, record, &r, &l, &err),
                         -EINVAL);
        assert_null(l);
        if (!strstr(err.msg, cases[i].want))
            fail_msg("case %zu: \"%s\" does not mention %s", i, err.msg, cases[i].want);
        if (i == 6)
            continue; /* senders ignore max_nodes */
        err_clear(&err);
        assert_int_equal(announce_sender_start(&loop, &cases[i].o, "n", &ep, 1, &s, &err), -EINVAL);
        assert_null(s);
        assert_non_null(strstr(err.msg, cases[i].want));
    }
    err_t err = {0};
    announce_opts_t o = opts_iv(IV);
    announce_listener_t *l;
    assert_int_equal(announce_listener_start(&loop, &o, NULL, NULL, &l, &err), -EINVAL);
    announce_sender_t *s;
    assert_int_equal(announce_sender_start(&loop, &o, "bad uuid", &ep, 1, &s, &err), -EINVAL);
    assert_int_equal(announce_sender_start(&loop, &o, NULL, &ep, 1, &s, &err), -EINVAL);
    assert_int_equal(announce_sender_start(&loop, &o, "n", NULL, 0, &s, &err), -EINVAL);
    /* Failures after the socket exists: an address this host does not have. */
    o.interface = "192.0.2.77";
    err_clear(&err);
    int rc = announce_sender_start(&loop, &o, "n", &ep, 1, &s, &err);
    assert_true(rc < 0);
    assert_null(s);
    assert_non_null(strstr(err.msg, "192.0.2.77"));
    err_clear(&err);
    rc = announce_listener_start(&loop, &o, record, NULL, &l, &err);
    assert_true(rc < 0);
    assert_null(l);
    assert_non_null(strstr(err.msg, "192.0.2.77"));
    /* teardown checks every handle was closed */
}

static void test_stop(void **state)
{
    /* Stop from inside on_node: no call after it, done exactly once. */
    rec_t r = {0};
    int done = 0;
    announce_opts_t o = opts_iv(IV);
    o.rate_limit = ANNOUNCE_RATE_UNLIMITED;
    announce_listener_t *l = listen_on(&o, &r);
    r.stop_me = l;
    r.stop_done = &done;
    int fd = raw_sock("127.0.0.1");
    raw_announce(fd, "n-1", "10.0.0.1", 80);
    raw_announce(fd, "n-2", "10.0.0.1", 80);
    raw_announce(fd, "n-3", "10.0.0.1", 80);
    assert_true(wait_events(&r, 1, 2000));
    pump_for(50);
    assert_int_equal(done, 1);
    assert_int_equal(r.n, 1);
    rec_free(&r);

    /* Stop a listener holding nodes (freed without down reports), and a
     * sender whose first send is pending or which never ran. */
    l = listen_on(&o, &r);
    for (int i = 0; i < 100; i++) {
        char id[16];
        snprintf(id, sizeof(id), "k-%d", i);
        raw_announce(fd, id, "10.0.0.1", 80);
    }
    assert_true(wait_events(&r, 100, 2000));
    announce_endpoint_t ep = {"10.0.0.1", 80};
    announce_sender_t *s1 = send_as(&o, "s-1", &ep, 1);
    stop_sender(s1); /* never ran */
    announce_sender_t *s2 = send_as(&o, "s-2", &ep, 1);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(announce_sender_update(s2, &ep, 1, NULL), 0);
    stop_sender(s2);
    stop_listener(l);
    assert_int_equal(r.downs, 0);
    close(fd);
    rec_free(&r);
}

/* ---- namespace ------------------------------------------------------------- */

/* A private network namespace with lo up and the multicast route on it. */
static int netns_setup(void **state)
{
    if (unshare(CLONE_NEWNET) != 0) {
        fprintf(stderr,
                "test_announce: unshare(CLONE_NEWNET) failed: %s. These tests need root "
                "(CAP_SYS_ADMIN) to run in a private network namespace.\n",
                strerror(errno));
        return -1;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
    if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) != 0 ||
        (ifr.ifr_flags |= IFF_UP, ioctl(fd, SIOCSIFFLAGS, &ifr) != 0)) {
        fprintf(stderr, "test_announce: cannot bring lo up: %s\n", strerror(errno));
        return -1;
    }
    close(fd);
    int rc = system("ip route add 224.0.0.0/4 dev lo");
    if (rc != 0) {
        fprintf(stderr, "test_announce: `ip route add 224.0.0.0/4 dev lo` failed (%d)\n", rc);
        return -1;
    }
    log_setup(LOG_ERROR, LOG_TEXT);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codec),
        cmocka_unit_test(test_decode_rejects),
        cmocka_unit_test_setup_teardown(test_discover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_default_interface, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change, setup, teardown),
        cmocka_unit_test_setup_teardown(test_down_after_three_intervals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_several_senders, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flood_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop, setup, teardown),
    };
    return cmocka_run_group_tests(tests, netns_setup, NULL);
}
