/* The DNS server over real UDP and TCP sockets on 127.0.0.1. The server
 * runs on a uv loop in this thread; the test's sockets are plain fds, and
 * while waiting for an answer the test runs the loop (pump_until), so the
 * table can be changed between queries without locking. Queries are built
 * and answers read with ldns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/err.h"
#include "core/log.h"
#include "locator/dns.h"
#include "locator/table.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ldns/ldns.h>
#include <netinet/in.h>
#include <poll.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static uv_loop_t loop;
static loc_table_t *table;
static dns_server_t *srv;
static int port;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Run the loop until `fd` has `events` or timeout_ms passes. */
static bool pump_until(int fd, short events, int timeout_ms)
{
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uv_run(&loop, UV_RUN_NOWAIT);
        struct pollfd p[2] = {{fd, events, 0}, {uv_backend_fd(&loop), POLLIN, 0}};
        if (poll(p, 1, 0) > 0 && (p[0].revents & (events | POLLHUP | POLLERR)))
            return true;
        uint64_t t = now_ms();
        if (t >= deadline)
            return false;
        int wait = (int)(deadline - t);
        int bt = uv_backend_timeout(&loop);
        if (bt >= 0 && bt < wait)
            wait = bt;
        poll(p, 2, wait);
    }
}

static void set_eps(const char *name, const char *const *hosts, const int *ports, size_t n)
{
    loc_ep_t eps[256];
    assert_true(n <= 256);
    for (size_t i = 0; i < n; i++)
        eps[i] = (loc_ep_t){.host = hosts[i], .port = ports[i], .instance = NULL, .version = 1};
    loc_table_set(table, name, eps, n, 1, "service");
}

static void set_many(const char *name, size_t n, int port0)
{
    static char hosts[256][32];
    const char *hp[256];
    int ports[256];
    for (size_t i = 0; i < n; i++) {
        snprintf(hosts[i], sizeof(hosts[i]), "10.1.%zu.%zu", i / 200, i % 200 + 1);
        hp[i] = hosts[i];
        ports[i] = port0 + (int)i;
    }
    set_eps(name, hp, ports, n);
}

static void start(const dns_opts_t *o)
{
    err_t err = {0};
    int rc = dns_server_start(&loop, "127.0.0.1:0", table, o, &srv, &err);
    if (rc)
        fail_msg("dns_server_start: %s", err.msg);
    port = dns_server_port(srv);
    assert_true(port > 0);
}

static int setup(void **state)
{
    assert_int_equal(uv_loop_init(&loop), 0);
    table = loc_table_new();
    const char *h[] = {"10.0.0.1", "10.0.0.1", "10.0.0.2"};
    int p[] = {8080, 8082, 8081};
    set_eps("/production/web", h, p, 3);
    const char *h2[] = {"10.0.0.7"};
    int p2[] = {9000};
    set_eps("/app/production/test-server", h2, p2, 1);
    start(NULL);
    return 0;
}

static void on_stopped(void *data)
{
    *(bool *)data = true;
}

static void stop_server(void)
{
    bool done = false;
    dns_server_stop(srv, on_stopped, &done);
    assert_false(done); /* never from within the call */
    uint64_t deadline = now_ms() + 5000;
    while (!done && now_ms() < deadline)
        uv_run(&loop, UV_RUN_ONCE);
    assert_true(done);
    srv = NULL;
}

static int teardown(void **state)
{
    if (srv)
        stop_server();
    loc_table_free(table);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

/* ---- clients ------------------------------------------------------------ */

static uint8_t *make_query(const char *name, ldns_rr_type type, uint16_t edns, uint16_t id,
                           size_t *len)
{
    ldns_pkt *q = NULL;
    assert_int_equal(ldns_pkt_query_new_frm_str(&q, name, type, LDNS_RR_CLASS_IN, LDNS_RD),
                     LDNS_STATUS_OK);
    ldns_pkt_set_id(q, id);
    if (edns)
        ldns_pkt_set_edns_udp_size(q, edns);
    uint8_t *w = NULL;
    assert_int_equal(ldns_pkt2wire(&w, q, len), LDNS_STATUS_OK);
    ldns_pkt_free(q);
    return w;
}

static int udp_socket(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

/* Send raw bytes over UDP; the answer's length, or -1 when none came. */
static ssize_t udp_raw(int fd, const void *msg, size_t len, uint8_t *out, size_t cap, int wait_ms)
{
    assert_int_equal(send(fd, msg, len, 0), (ssize_t)len);
    if (!pump_until(fd, POLLIN, wait_ms))
        return -1;
    return recv(fd, out, cap, 0);
}

static ldns_pkt *parse(const uint8_t *w, size_t n)
{
    ldns_pkt *p = NULL;
    assert_int_equal(ldns_wire2pkt(&p, w, n), LDNS_STATUS_OK);
    return p;
}

static size_t last_size; /* wire size of the last answer of ask() */

static ldns_pkt *ask_edns(const char *name, ldns_rr_type type, uint16_t edns)
{
    static uint16_t id = 100;
    size_t len;
    uint8_t *q = make_query(name, type, edns, ++id, &len);
    int fd = udp_socket();
    uint8_t buf[65536];
    ssize_t n = udp_raw(fd, q, len, buf, sizeof(buf), 2000);
    close(fd);
    free(q);
    assert_true(n > 0);
    last_size = (size_t)n;
    ldns_pkt *p = parse(buf, (size_t)n);
    assert_int_equal(ldns_pkt_id(p), id);
    assert_true(ldns_pkt_qr(p));
    return p;
}

static ldns_pkt *ask(const char *name, ldns_rr_type type)
{
    return ask_edns(name, type, 0);
}

static int tcp_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void tcp_send_frame(int fd, const uint8_t *m, size_t n)
{
    uint8_t hdr[2] = {(uint8_t)(n >> 8), (uint8_t)n};
    assert_int_equal(send(fd, hdr, 2, 0), 2);
    assert_int_equal(send(fd, m, n, 0), (ssize_t)n);
}

/* Read exactly n bytes, running the loop meanwhile; false on EOF/timeout. */
static bool tcp_read_n(int fd, uint8_t *out, size_t n, int wait_ms)
{
    size_t got = 0;
    uint64_t deadline = now_ms() + (uint64_t)wait_ms;
    while (got < n) {
        ssize_t r = recv(fd, out + got, n - got, 0);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            return false;
        uint64_t t = now_ms();
        if (t >= deadline || !pump_until(fd, POLLIN, (int)(deadline - t)))
            return false;
    }
    return true;
}

static ldns_pkt *tcp_read_answer(int fd, size_t *size)
{
    uint8_t hdr[2];
    assert_true(tcp_read_n(fd, hdr, 2, 2000));
    size_t n = ((size_t)hdr[0] << 8) | hdr[1];
    uint8_t *buf = malloc(n ? n : 1);
    assert_true(tcp_read_n(fd, buf, n, 2000));
    if (size)
        *size = n;
    ldns_pkt *p = parse(buf, n);
    free(buf);
    return p;
}

/* True when the server closed the connection within wait_ms. */
static bool tcp_closed_by_server(int fd, int wait_ms)
{
    uint64_t deadline = now_ms() + (uint64_t)wait_ms;
    for (;;) {
        char c;
        ssize_t r = recv(fd, &c, 1, 0);
        if (r == 0 || (r < 0 && errno == ECONNRESET))
            return true;
        uint64_t t = now_ms();
        if (t >= deadline || !pump_until(fd, POLLIN, (int)(deadline - t)))
            return false;
    }
}

/* ---- answer checks ------------------------------------------------------ */

static char *rdf_str(const ldns_rdf *r)
{
    char *s = ldns_rdf2str(r);
    assert_non_null(s);
    return s;
}

/* The rdata of the records of `type` in `section`, each rdf as text joined
 * by spaces, sorted, joined by '|'. */
static char *section_str(const ldns_pkt *p, ldns_pkt_section sec, ldns_rr_type type)
{
    ldns_rr_list *l = sec == LDNS_SECTION_ANSWER       ? ldns_pkt_answer(p)
                      : sec == LDNS_SECTION_ADDITIONAL ? ldns_pkt_additional(p)
                                                       : ldns_pkt_authority(p);
    size_t n = ldns_rr_list_rr_count(l);
    char **items = calloc(n + 1, sizeof(char *));
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        ldns_rr *rr = ldns_rr_list_rr(l, i);
        if (ldns_rr_get_type(rr) != type)
            continue;
        char line[512] = "";
        for (size_t j = 0; j < ldns_rr_rd_count(rr); j++) {
            char *s = rdf_str(ldns_rr_rdf(rr, j));
            if (j)
                strcat(line, " ");
            strncat(line, s, sizeof(line) - strlen(line) - 2);
            free(s);
        }
        items[m++] = strdup(line);
    }
    for (size_t i = 0; i < m; i++)
        for (size_t j = i + 1; j < m; j++)
            if (strcmp(items[j], items[i]) < 0) {
                char *t = items[i];
                items[i] = items[j];
                items[j] = t;
            }
    char *out = calloc(1, 8192);
    for (size_t i = 0; i < m; i++) {
        if (i)
            strcat(out, "|");
        strncat(out, items[i], 8192 - strlen(out) - 2);
        free(items[i]);
    }
    free(items);
    return out;
}

static void assert_section(const ldns_pkt *p, ldns_pkt_section sec, ldns_rr_type type,
                           const char *want)
{
    char *got = section_str(p, sec, type);
    assert_string_equal(got, want);
    free(got);
}

static void assert_soa_authority(const ldns_pkt *p)
{
    ldns_rr_list *auth = ldns_pkt_authority(p);
    assert_int_equal(ldns_rr_list_rr_count(auth), 1);
    ldns_rr *soa = ldns_rr_list_rr(auth, 0);
    assert_int_equal(ldns_rr_get_type(soa), LDNS_RR_TYPE_SOA);
    char *owner = rdf_str(ldns_rr_owner(soa));
    assert_string_equal(owner, "drover.");
    free(owner);
    assert_int_equal(ldns_rr_ttl(soa), 5);
}

/* ---- tests -------------------------------------------------------------- */

static void test_a_hit(void **state)
{
    ldns_pkt *p = ask("web.production.drover.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_true(ldns_pkt_aa(p));
    assert_false(ldns_pkt_tc(p));
    assert_true(ldns_pkt_rd(p)); /* copied from the query */
    /* two endpoints on 10.0.0.1 give one record */
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_A, "10.0.0.1|10.0.0.2");
    assert_int_equal(ldns_rr_ttl(ldns_rr_list_rr(ldns_pkt_answer(p), 0)), 5);
    assert_int_equal(ldns_pkt_nscount(p), 0);
    ldns_pkt_free(p);

    /* case-insensitive; the question comes back as asked */
    p = ask("WEB.Production.DROVER.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_A, "10.0.0.1|10.0.0.2");
    char *qn = rdf_str(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(p), 0)));
    assert_string_equal(qn, "WEB.Production.DROVER.");
    free(qn);
    qn = rdf_str(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_answer(p), 0)));
    assert_string_equal(qn, "WEB.Production.DROVER.");
    free(qn);
    ldns_pkt_free(p);

    /* a deeper app id: segments reversed */
    p = ask("test-server.production.app.drover.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_A, "10.0.0.7");
    ldns_pkt_free(p);
}

static void test_srv_hit(void **state)
{
    const char *want_srv = "1 1 8080 10-0-0-1.addr.drover.|1 1 8081 10-0-0-2.addr.drover.|"
                           "1 1 8082 10-0-0-1.addr.drover.";
    ldns_pkt *p = ask("web.production.drover.", LDNS_RR_TYPE_SRV);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_true(ldns_pkt_aa(p));
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_SRV, want_srv);
    /* one A per distinct target, owned by the target name */
    assert_section(p, LDNS_SECTION_ADDITIONAL, LDNS_RR_TYPE_A, "10.0.0.1|10.0.0.2");
    ldns_rr_list *ad = ldns_pkt_additional(p);
    for (size_t i = 0; i < ldns_rr_list_rr_count(ad); i++) {
        ldns_rr *rr = ldns_rr_list_rr(ad, i);
        char *o = rdf_str(ldns_rr_owner(rr));
        char *a = rdf_str(ldns_rr_rdf(rr, 0));
        char want[64];
        snprintf(want, sizeof(want), "%s", a);
        for (char *c = want; *c; c++)
            if (*c == '.')
                *c = '-';
        strcat(want, ".addr.drover.");
        assert_string_equal(o, want);
        assert_int_equal(ldns_rr_ttl(rr), 5);
        free(o);
        free(a);
    }
    ldns_pkt_free(p);

    /* the RFC 2782 form names the same records */
    p = ask("_web._tcp.production.drover.", LDNS_RR_TYPE_SRV);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_SRV, want_srv);
    ldns_pkt_free(p);
    /* ... and has no A records (NODATA) */
    p = ask("_web._tcp.production.drover.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_int_equal(ldns_pkt_ancount(p), 0);
    assert_soa_authority(p);
    ldns_pkt_free(p);

    /* the target resolves on its own */
    p = ask("10-0-0-2.addr.drover.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_A, "10.0.0.2");
    ldns_pkt_free(p);
    p = ask("010-0-0-2.addr.drover.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NXDOMAIN);
    ldns_pkt_free(p);
}

static void test_nxdomain_nodata(void **state)
{
    const char *nx[] = {"nope.production.drover.",
                        "web.staging.drover.",
                        "x.web.production.drover.",
                        "_web._udp.production.drover.",
                        "_nope._tcp.production.drover.",
                        "web_1.production.drover.",
                        "1-2-3.addr.drover.",
                        "a.b.addr.drover."};
    for (size_t i = 0; i < sizeof(nx) / sizeof(nx[0]); i++) {
        ldns_pkt *p = ask(nx[i], LDNS_RR_TYPE_A);
        if (ldns_pkt_get_rcode(p) != LDNS_RCODE_NXDOMAIN)
            fail_msg("%s: rcode %d, want NXDOMAIN", nx[i], ldns_pkt_get_rcode(p));
        assert_true(ldns_pkt_aa(p));
        assert_int_equal(ldns_pkt_ancount(p), 0);
        assert_soa_authority(p);
        ldns_pkt_free(p);
    }
    /* existing names asked for other types, empty non-terminals, the apex:
     * NOERROR, no answer, SOA */
    struct {
        const char *name;
        ldns_rr_type type;
    } nd[] = {{"web.production.drover.", LDNS_RR_TYPE_AAAA},
              {"web.production.drover.", LDNS_RR_TYPE_TXT},
              {"web.production.drover.", LDNS_RR_TYPE_ANY},
              {"web.production.drover.", LDNS_RR_TYPE_MX},
              {"production.drover.", LDNS_RR_TYPE_A},
              {"app.drover.", LDNS_RR_TYPE_A},
              {"production.app.drover.", LDNS_RR_TYPE_SRV},
              {"_tcp.production.drover.", LDNS_RR_TYPE_SRV},
              {"addr.drover.", LDNS_RR_TYPE_A},
              {"10-0-0-1.addr.drover.", LDNS_RR_TYPE_AAAA},
              {"drover.", LDNS_RR_TYPE_A},
              {"drover.", LDNS_RR_TYPE_NS}};
    for (size_t i = 0; i < sizeof(nd) / sizeof(nd[0]); i++) {
        ldns_pkt *p = ask(nd[i].name, nd[i].type);
        if (ldns_pkt_get_rcode(p) != LDNS_RCODE_NOERROR || ldns_pkt_ancount(p) != 0)
            fail_msg("%s type %d: rcode %d, %d answers, want NODATA", nd[i].name, nd[i].type,
                     ldns_pkt_get_rcode(p), ldns_pkt_ancount(p));
        assert_true(ldns_pkt_aa(p));
        assert_soa_authority(p);
        ldns_pkt_free(p);
    }
    /* SOA at the apex is an answer */
    ldns_pkt *p = ask("Drover.", LDNS_RR_TYPE_SOA);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_int_equal(ldns_pkt_ancount(p), 1);
    assert_int_equal(ldns_rr_get_type(ldns_rr_list_rr(ldns_pkt_answer(p), 0)), LDNS_RR_TYPE_SOA);
    assert_int_equal(ldns_pkt_nscount(p), 0);
    ldns_pkt_free(p);
}

static void test_refused(void **state)
{
    const char *names[] = {"example.com.", "drover.com.", "web.production.notdrover.", "."};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        ldns_pkt *p = ask(names[i], LDNS_RR_TYPE_A);
        assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_REFUSED);
        assert_false(ldns_pkt_aa(p));
        assert_int_equal(ldns_pkt_ancount(p), 0);
        ldns_pkt_free(p);
    }
    /* zone transfers and other classes are refused too */
    ldns_pkt *p = ask("drover.", LDNS_RR_TYPE_AXFR);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_REFUSED);
    ldns_pkt_free(p);

    ldns_pkt *q = NULL;
    ldns_pkt_query_new_frm_str(&q, "web.production.drover.", LDNS_RR_TYPE_A, LDNS_RR_CLASS_CH, 0);
    ldns_pkt_set_id(q, 7);
    uint8_t *w;
    size_t n;
    ldns_pkt2wire(&w, q, &n);
    ldns_pkt_free(q);
    int fd = udp_socket();
    uint8_t buf[4096];
    ssize_t r = udp_raw(fd, w, n, buf, sizeof(buf), 2000);
    assert_true(r > 0);
    p = parse(buf, (size_t)r);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_REFUSED);
    ldns_pkt_free(p);
    free(w);
    close(fd);
}

static void test_formerr_and_drops(void **state)
{
    int fd = udp_socket();
    uint8_t buf[4096];
    /* a readable header (id 0xbeef, RD, one question) over junk */
    uint8_t junk[] = {0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
                      0x00, 0x00, 0x00, 0x3f, 'a',  'b',  0xff, 0xc0, 0x00};
    ssize_t n = udp_raw(fd, junk, sizeof(junk), buf, sizeof(buf), 2000);
    assert_int_equal(n, 12);
    assert_int_equal(buf[0], 0xbe);
    assert_int_equal(buf[1], 0xef);
    assert_true(buf[2] & 0x80);           /* QR */
    assert_true(buf[2] & 0x01);           /* RD copied */
    assert_int_equal(buf[3] & 0x0f, 1);   /* FORMERR */
    assert_int_equal(buf[5] | buf[7], 0); /* no records */

    /* a valid message with two questions is FORMERR too */
    size_t len;
    uint8_t *q = make_query("web.production.drover.", LDNS_RR_TYPE_A, 0, 0x4242, &len);
    ldns_pkt *two = parse(q, len);
    ldns_rr *extra = NULL;
    ldns_rr_new_question_frm_str(&extra, "x.drover. IN A", NULL, NULL);
    ldns_pkt_push_rr(two, LDNS_SECTION_QUESTION, extra);
    uint8_t *w2;
    size_t l2;
    ldns_pkt2wire(&w2, two, &l2);
    ldns_pkt_free(two);
    n = udp_raw(fd, w2, l2, buf, sizeof(buf), 2000);
    free(w2);
    assert_true(n >= 12);
    assert_int_equal(buf[3] & 0x0f, LDNS_RCODE_FORMERR);

    /* opcode STATUS: NOTIMP */
    uint8_t st[12] = {0x12, 0x34, 2 << 3, 0};
    n = udp_raw(fd, st, sizeof(st), buf, sizeof(buf), 2000);
    assert_int_equal(n, 12);
    assert_int_equal(buf[3] & 0x0f, LDNS_RCODE_NOTIMPL);
    assert_int_equal((buf[2] >> 3) & 0x0f, 2);

    /* shorter than a header: no answer at all */
    n = udp_raw(fd, junk, 7, buf, sizeof(buf), 150);
    assert_int_equal(n, -1);
    /* a response (QR set) is never answered */
    uint8_t resp[sizeof(junk)];
    memcpy(resp, q, 12);
    resp[2] |= 0x80;
    n = udp_raw(fd, resp, 12, buf, sizeof(buf), 150);
    assert_int_equal(n, -1);
    /* EDNS version 1: BADVERS */
    ldns_pkt *bv = parse(q, len);
    ldns_pkt_set_edns_udp_size(bv, 1232);
    ldns_pkt_set_edns_version(bv, 1);
    ldns_pkt2wire(&w2, bv, &l2);
    ldns_pkt_free(bv);
    n = udp_raw(fd, w2, l2, buf, sizeof(buf), 2000);
    free(w2);
    assert_true(n > 12);
    ldns_pkt *p = parse(buf, (size_t)n);
    assert_int_equal(ldns_pkt_edns_extended_rcode(p), 1);
    assert_int_equal(ldns_pkt_ancount(p), 0);
    ldns_pkt_free(p);

    /* and the server still answers normally */
    n = udp_raw(fd, q, len, buf, sizeof(buf), 2000);
    assert_true(n > 12);
    p = parse(buf, (size_t)n);
    assert_int_equal(ldns_pkt_id(p), 0x4242);
    assert_int_equal(ldns_pkt_ancount(p), 2);
    ldns_pkt_free(p);
    free(q);
    close(fd);
}

static void test_tcp_query(void **state)
{
    int fd = tcp_connect();
    size_t l1, l2;
    uint8_t *q1 = make_query("web.production.drover.", LDNS_RR_TYPE_A, 0, 1, &l1);
    uint8_t *q2 = make_query("web.production.drover.", LDNS_RR_TYPE_SRV, 0, 2, &l2);
    tcp_send_frame(fd, q1, l1);
    ldns_pkt *p = tcp_read_answer(fd, NULL);
    assert_int_equal(ldns_pkt_id(p), 1);
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_A, "10.0.0.1|10.0.0.2");
    ldns_pkt_free(p);

    /* two pipelined queries in one write, the second split in the middle
     * of its length prefix: answered in order */
    uint8_t both[1024];
    size_t n = 0;
    both[n++] = (uint8_t)(l2 >> 8);
    both[n++] = (uint8_t)l2;
    memcpy(both + n, q2, l2);
    n += l2;
    both[n++] = (uint8_t)(l1 >> 8);
    assert_int_equal(send(fd, both, n, 0), (ssize_t)n);
    pump_until(fd, POLLIN, 50);
    uint8_t rest[512];
    rest[0] = (uint8_t)l1;
    memcpy(rest + 1, q1, l1);
    assert_int_equal(send(fd, rest, l1 + 1, 0), (ssize_t)(l1 + 1));
    p = tcp_read_answer(fd, NULL);
    assert_int_equal(ldns_pkt_id(p), 2);
    assert_int_equal(ldns_pkt_ancount(p), 3);
    assert_int_equal(ldns_pkt_arcount(p), 2);
    ldns_pkt_free(p);
    p = tcp_read_answer(fd, NULL);
    assert_int_equal(ldns_pkt_id(p), 1);
    ldns_pkt_free(p);

    /* a half-closed connection still gets its answer, then is closed */
    tcp_send_frame(fd, q1, l1);
    shutdown(fd, SHUT_WR);
    p = tcp_read_answer(fd, NULL);
    assert_int_equal(ldns_pkt_id(p), 1);
    ldns_pkt_free(p);
    assert_true(tcp_closed_by_server(fd, 2000));
    close(fd);
    free(q1);
    free(q2);
}

static void test_tcp_limits(void **state)
{
    stop_server();
    dns_opts_t o;
    dns_opts_default(&o);
    o.max_tcp_connections = 2;
    o.tcp_idle_timeout_ms = 200;
    start(&o);

    size_t len;
    uint8_t *q = make_query("web.production.drover.", LDNS_RR_TYPE_A, 0, 9, &len);
    int a = tcp_connect(), b = tcp_connect();
    pump_until(a, POLLIN, 50); /* let the server accept both */
    int c = tcp_connect();
    /* the third is over the limit: closed at once */
    assert_true(tcp_closed_by_server(c, 1000));
    close(c);
    /* the first two work */
    tcp_send_frame(a, q, len);
    ldns_pkt *p = tcp_read_answer(a, NULL);
    assert_int_equal(ldns_pkt_ancount(p), 2);
    ldns_pkt_free(p);
    tcp_send_frame(b, q, len);
    p = tcp_read_answer(b, NULL);
    ldns_pkt_free(p);

    /* idle connections are closed after the timeout, not long before */
    uint64_t t0 = now_ms();
    assert_true(tcp_closed_by_server(a, 2000));
    assert_true(tcp_closed_by_server(b, 2000));
    uint64_t dt = now_ms() - t0;
    assert_true(dt >= 150 && dt < 1500);
    close(a);
    close(b);

    /* a slow sender that never completes a query is cut off too */
    int d = tcp_connect();
    uint8_t part[3] = {0, 40, 0x12};
    assert_int_equal(send(d, part, sizeof(part), 0), 3);
    assert_true(tcp_closed_by_server(d, 2000));
    close(d);

    /* slots are free again */
    int e = tcp_connect();
    tcp_send_frame(e, q, len);
    p = tcp_read_answer(e, NULL);
    assert_int_equal(ldns_pkt_ancount(p), 2);
    ldns_pkt_free(p);
    /* connections still open at stop are closed by it */
    stop_server();
    assert_true(tcp_closed_by_server(e, 1000));
    close(e);
    free(q);
}

static void test_big_answers(void **state)
{
    set_many("/production/big", 60, 20000);
    /* without EDNS0: at most 512 bytes, TC set, a prefix of the answers */
    ldns_pkt *p = ask("big.production.drover.", LDNS_RR_TYPE_A);
    assert_true(last_size <= 512);
    assert_true(ldns_pkt_tc(p));
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_true(ldns_pkt_ancount(p) > 10 && ldns_pkt_ancount(p) < 60);
    ldns_pkt_free(p);

    /* with EDNS0 4096: everything, over 512 bytes, capped at 1232 */
    p = ask_edns("big.production.drover.", LDNS_RR_TYPE_A, 4096);
    assert_false(ldns_pkt_tc(p));
    assert_int_equal(ldns_pkt_ancount(p), 60);
    assert_true(last_size > 512 && last_size <= 1232);
    assert_true(ldns_pkt_edns(p)); /* OPT echoed */
    ldns_pkt_free(p);

    /* EDNS0 advertising only 512 (or less) is plain 512 */
    p = ask_edns("big.production.drover.", LDNS_RR_TYPE_A, 300);
    assert_true(ldns_pkt_tc(p));
    assert_true(last_size <= 512);
    ldns_pkt_free(p);

    /* 200 endpoints do not fit 1232 either: TC */
    set_many("/production/huge", 200, 20000);
    p = ask_edns("huge.production.drover.", LDNS_RR_TYPE_A, 4096);
    assert_true(ldns_pkt_tc(p));
    assert_true(last_size <= 1232);
    ldns_pkt_free(p);

    /* over TCP all 200 come */
    int fd = tcp_connect();
    size_t len, size;
    uint8_t *q = make_query("huge.production.drover.", LDNS_RR_TYPE_SRV, 0, 5, &len);
    tcp_send_frame(fd, q, len);
    p = tcp_read_answer(fd, &size);
    assert_false(ldns_pkt_tc(p));
    assert_int_equal(ldns_pkt_ancount(p), 200);
    assert_int_equal(ldns_pkt_arcount(p), 200);
    assert_true(size > 1232);
    ldns_pkt_free(p);
    free(q);
    close(fd);

    /* SRV that fits without its additional records: those are dropped
     * first, without TC (RFC 2181 9) */
    set_many("/production/mid", 10, 30000);
    p = ask("mid.production.drover.", LDNS_RR_TYPE_SRV);
    assert_false(ldns_pkt_tc(p));
    assert_int_equal(ldns_pkt_ancount(p), 10);
    assert_int_equal(ldns_pkt_arcount(p), 0);
    ldns_pkt_free(p);
    p = ask_edns("mid.production.drover.", LDNS_RR_TYPE_SRV, 1232);
    assert_int_equal(ldns_pkt_ancount(p), 10);
    assert_int_equal(ldns_pkt_arcount(p), 10);
    ldns_pkt_free(p);
}

static void test_table_changes(void **state)
{
    ldns_pkt *p = ask("test-server.production.app.drover.", LDNS_RR_TYPE_A);
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_A, "10.0.0.7");
    ldns_pkt_free(p);
    p = ask("x.drover.", LDNS_RR_TYPE_A);
    uint32_t serial1 =
        ldns_rdf2native_int32(ldns_rr_rdf(ldns_rr_list_rr(ldns_pkt_authority(p), 0), 2));
    ldns_pkt_free(p);

    const char *h[] = {"10.0.0.8", "10.0.0.9"};
    int ports[] = {1, 2};
    set_eps("/app/production/test-server", h, ports, 2);
    p = ask("test-server.production.app.drover.", LDNS_RR_TYPE_A);
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_A, "10.0.0.8|10.0.0.9");
    ldns_pkt_free(p);

    /* a new app appears, an old one goes */
    const char *h2[] = {"192.168.1.1"};
    int p2[] = {53};
    set_eps("/staging/new", h2, p2, 1);
    p = ask("new.staging.drover.", LDNS_RR_TYPE_SRV);
    assert_section(p, LDNS_SECTION_ANSWER, LDNS_RR_TYPE_SRV, "1 1 53 192-168-1-1.addr.drover.");
    ldns_pkt_free(p);
    loc_table_set(table, "/app/production/test-server", NULL, 0, 0, NULL);
    p = ask("test-server.production.app.drover.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NXDOMAIN);
    /* the serial follows the table */
    uint32_t serial2 =
        ldns_rdf2native_int32(ldns_rr_rdf(ldns_rr_list_rr(ldns_pkt_authority(p), 0), 2));
    assert_true(serial2 > serial1);
    ldns_pkt_free(p);
    /* "app" has nothing under it any more */
    p = ask("app.drover.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NXDOMAIN);
    ldns_pkt_free(p);

    /* hosts that are not IPv4 give no records: the name exists, NODATA */
    const char *h3[] = {"fe80::1", "not-an-ip"};
    int p3[] = {80, 81};
    set_eps("/production/v6", h3, p3, 2);
    p = ask("v6.production.drover.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NOERROR);
    assert_int_equal(ldns_pkt_ancount(p), 0);
    ldns_pkt_free(p);
    /* versioned names and names with dots are not reachable */
    set_eps("/production/web.v2", h2, p2, 1);
    p = ask("web.v2.production.drover.", LDNS_RR_TYPE_A);
    assert_int_equal(ldns_pkt_get_rcode(p), LDNS_RCODE_NXDOMAIN);
    ldns_pkt_free(p);
}

static void test_rotation(void **state)
{
    /* successive answers start at different addresses */
    char firsts[4][32];
    for (int i = 0; i < 4; i++) {
        ldns_pkt *p = ask("web.production.drover.", LDNS_RR_TYPE_A);
        char *s = rdf_str(ldns_rr_rdf(ldns_rr_list_rr(ldns_pkt_answer(p), 0), 0));
        snprintf(firsts[i], sizeof(firsts[i]), "%s", s);
        free(s);
        ldns_pkt_free(p);
    }
    assert_true(strcmp(firsts[0], firsts[1]) != 0 || strcmp(firsts[1], firsts[2]) != 0);
}

static void test_rate(void **state)
{
    int fd = udp_socket();
    size_t len;
    uint8_t *q = make_query("web.production.drover.", LDNS_RR_TYPE_A, 0, 1, &len);
    uint8_t buf[2048];
    const int n = 3000;
    int ok = 0;
    uint64_t t0 = now_ms();
    for (int i = 0; i < n; i++) {
        q[0] = (uint8_t)(i >> 8);
        q[1] = (uint8_t)i;
        ssize_t r = udp_raw(fd, q, len, buf, sizeof(buf), 1000);
        if (r > 12 && buf[0] == q[0] && buf[1] == q[1] && (buf[3] & 0x0f) == 0 && buf[7] == 2)
            ok++;
    }
    uint64_t dt = now_ms() - t0;
    double rate = n * 1000.0 / (double)(dt ? dt : 1);
    printf("# dns: %d udp queries in %llu ms: %.0f queries/s\n", n, (unsigned long long)dt, rate);
    assert_int_equal(ok, n);
    assert_true(rate >= 1000);
    free(q);
    close(fd);
}

/* Run a command, running the loop while it does; its stdout. */
static char *run_cmd(char *const argv[])
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_addclose(&fa, pfd[0]);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (rc != 0)
        fail_msg("cannot run %s: %s (make deps installs bind9-dnsutils)", argv[0], strerror(rc));
    fcntl(pfd[0], F_SETFL, fcntl(pfd[0], F_GETFL) | O_NONBLOCK);
    char *out = calloc(1, 65536);
    size_t n = 0;
    uint64_t deadline = now_ms() + 10000;
    for (;;) {
        ssize_t r = read(pfd[0], out + n, 65535 - n);
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        if (r == 0 || (errno != EAGAIN && errno != EINTR) || now_ms() > deadline)
            break;
        pump_until(pfd[0], POLLIN, 100);
    }
    close(pfd[0]);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    return out;
}

static void sort_lines(char *s)
{
    char *lines[64];
    size_t n = 0;
    for (char *tok = strtok(s, "\n"); tok && n < 64; tok = strtok(NULL, "\n"))
        lines[n++] = strdup(tok);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (strcmp(lines[j], lines[i]) < 0) {
                char *t = lines[i];
                lines[i] = lines[j];
                lines[j] = t;
            }
    s[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        strcat(s, lines[i]);
        strcat(s, "\n");
        free(lines[i]);
    }
}

static void test_dig(void **state)
{
    char at_port[16];
    snprintf(at_port, sizeof(at_port), "%d", port);
    char *a_argv[] = {"dig", "@127.0.0.1", "-p",       at_port,   "web.production.drover.",
                      "A",   "+short",     "+tries=1", "+time=3", NULL};
    char *out = run_cmd(a_argv);
    sort_lines(out);
    assert_string_equal(out, "10.0.0.1\n10.0.0.2\n");
    free(out);

    char *srv_argv[] = {"dig", "@127.0.0.1", "-p",       at_port,   "web.production.drover.",
                        "SRV", "+short",     "+tries=1", "+time=3", NULL};
    out = run_cmd(srv_argv);
    sort_lines(out);
    assert_string_equal(out, "1 1 8080 10-0-0-1.addr.drover.\n"
                             "1 1 8081 10-0-0-2.addr.drover.\n"
                             "1 1 8082 10-0-0-1.addr.drover.\n");
    free(out);

    /* dig retries a truncated UDP answer over TCP by itself */
    set_many("/production/big", 100, 20000);
    char *big_argv[] = {"dig", "@127.0.0.1", "-p",      at_port,    "big.production.drover.",
                        "A",   "+short",     "+noedns", "+tries=1", "+time=3",
                        NULL};
    out = run_cmd(big_argv);
    size_t lines = 0;
    for (char *c = out; *c; c++)
        lines += *c == '\n';
    assert_int_equal(lines, 100);
    free(out);
}

static void test_zone_direct(void **state)
{
    dns_zone_t *z;
    err_t err = {0};
    assert_int_equal(dns_zone_new(table, &(dns_opts_t){.domain = "bad_domain."}, &z, &err),
                     -EINVAL);
    assert_null(z);
    assert_non_null(strstr(err.msg, "bad_domain"));
    assert_int_equal(dns_zone_new(table, &(dns_opts_t){.domain = "a..b"}, &z, NULL), -EINVAL);
    assert_int_equal(dns_zone_new(table, &(dns_opts_t){.domain = "."}, &z, NULL), -EINVAL);

    /* another domain, TTL 0 */
    assert_int_equal(
        dns_zone_new(table, &(dns_opts_t){.domain = "Service.Consul", .ttl_s = -1}, &z, &err), 0);
    size_t len, rlen;
    uint8_t *q = make_query("web.production.service.consul.", LDNS_RR_TYPE_SRV, 0, 3, &len);
    uint8_t *reply;
    assert_int_equal(dns_zone_answer(z, q, len, DNS_UDP, &reply, &rlen), 0);
    ldns_pkt *p = parse(reply, rlen);
    assert_int_equal(ldns_pkt_ancount(p), 3);
    assert_int_equal(ldns_rr_ttl(ldns_rr_list_rr(ldns_pkt_answer(p), 0)), 0);
    assert_section(p, LDNS_SECTION_ADDITIONAL, LDNS_RR_TYPE_A, "10.0.0.1|10.0.0.2");
    char *t = rdf_str(ldns_rr_rdf(ldns_rr_list_rr(ldns_pkt_answer(p), 0), 3));
    assert_non_null(strstr(t, ".addr.service.consul."));
    free(t);
    ldns_pkt_free(p);
    free(reply);
    free(q);
    /* drover. is outside this zone */
    q = make_query("web.production.drover.", LDNS_RR_TYPE_A, 0, 3, &len);
    assert_int_equal(dns_zone_answer(z, q, len, DNS_TCP, &reply, &rlen), 0);
    assert_int_equal(reply[3] & 0x0f, LDNS_RCODE_REFUSED);
    free(reply);
    /* too short: dropped, nothing allocated */
    assert_int_equal(dns_zone_answer(z, q, 11, DNS_UDP, &reply, &rlen), -EBADMSG);
    assert_null(reply);
    free(q);
    dns_zone_free(z);
}

static void test_bad_address(void **state)
{
    dns_server_t *s = NULL;
    err_t err = {0};
    assert_int_equal(dns_server_start(&loop, "localhost:53", table, NULL, &s, &err), -EINVAL);
    assert_null(s);
    assert_int_equal(dns_server_start(&loop, "127.0.0.1", table, NULL, &s, &err), -EINVAL);
    /* the port is taken (by the running server) */
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    assert_true(dns_server_start(&loop, addr, table, NULL, &s, &err) < 0);
    assert_null(s);
    assert_non_null(strstr(err.msg, "bind"));
}

int main(void)
{
    log_setup(LOG_ERROR, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_a_hit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_srv_hit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nxdomain_nodata, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_formerr_and_drops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_query, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dig, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zone_direct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_address, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
