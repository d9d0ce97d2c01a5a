/* `drover gateway`: flags, signals and the loop around gateway_start. */
#include "gateway/cmd.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"
#include "gateway/gateway.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define GW_ROUTES_MAX 256
#define GW_CERTS_MAX  256

static void gw_usage(FILE *out)
{
    fputs("usage: drover gateway [--metalocator HOST:PORT] [--http ADDR] [--route SPEC]...\n"
          "                      [--internal] [--threads N] [--admin ADDR] [flags]\n"
          "\n"
          "Route HTTP (and, with --internal, TCP) traffic to the services drover runs.\n"
          "Routes and backends follow the metalocator's stream and apply in memory, with\n"
          "no reload and no connection dropped. SIGTERM drains: in-flight requests finish.\n"
          "\n"
          "  --metalocator HOST:PORT  where to follow the cluster's table (a server's\n"
          "                           --locator, 10053); without it only --route serves\n"
          "  --http ADDR              HTTP listen address (default 0.0.0.0:80; \"off\": none)\n"
          "  --https ADDR             HTTPS listen address (needs --cert), e.g. 0.0.0.0:443\n"
          "  --cert [HOST=]CERT,KEY   PEM certificate chain and key, repeatable: HOST is a\n"
          "                           name or *.wildcard picked by the client's SNI; without\n"
          "                           HOST, the default certificate. Files are re-read on\n"
          "                           SIGHUP and every 60s when they changed\n"
          "  --hsts SECONDS           add Strict-Transport-Security: max-age=SECONDS to\n"
          "                           HTTPS responses that have none\n"
          "  --route SPEC             a static route, repeatable: [HOST][/PATH]=IP:PORT[,IP:PORT]\n"
          "                           e.g. --route 'web.example.com/=10.0.0.5:8080,10.0.0.6:8080'\n"
          "  --internal               also listen on every app's internal port (routes with\n"
          "                           \"internal\"; staging apps on 1<port>), TCP routes included\n"
          "  --internal-host ADDR     address internal ports bind to (default 0.0.0.0)\n"
          "  --threads N              event-loop threads (default: one per CPU)\n"
          "  --admin ADDR             /metrics, /status, /healthz (default 127.0.0.1:9080;\n"
          "                           \"off\" disables)\n"
          "  --access-log PATH        JSON access log, one line per request (\"-\": stdout)\n"
          "  --proxy-protocol         send a PROXY protocol v1 header to backends\n"
          "  --max-body SIZE          request body limit (default 100MiB; 413 past it)\n"
          "  --connect-timeout D      backend connect timeout (default 3s)\n"
          "  --backend-timeout D      wait for a backend's response (default 60s; 504)\n"
          "  --idle-timeout D         client keep-alive idle timeout (default 60s)\n"
          "  --drain-timeout D        how long SIGTERM waits for in-flight requests (default 30s)\n"
          "  --uuid ID                subscriber id at the metalocator (default gateway-<host>)\n"
          "  --log-level L            debug, info, warn, error (default info)\n"
          "  --log-format F           text or json (default text)\n"
          "\n"
          "example: drover gateway --metalocator 10.0.0.1:10053 --http 0.0.0.0:80 --internal\n",
          out);
}

typedef struct gw_run {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    gateway_t *g;
    uint64_t drain_ms;
    bool stopping;
} gw_run_t;

/* "[HOST=]CERT,KEY" into c, pointing into s (modified). A HOST never
 * holds '/', so "a=b/c.pem,k.pem" is a host, "./x=y.pem,k.pem" a path. */
static int gw_cert_parse(char *s, gw_tls_cert_in_t *c)
{
    char *eq = strchr(s, '=');
    char *comma = strrchr(s, ',');
    c->host = NULL;
    if (eq && (!comma || eq < comma) && memchr(s, '/', (size_t)(eq - s)) == NULL) {
        *eq = '\0';
        c->host = s;
        s = eq + 1;
    }
    comma = strrchr(s, ',');
    if (!comma || comma == s || !comma[1])
        return -EINVAL;
    *comma = '\0';
    c->cert_file = s;
    c->key_file = comma + 1;
    return 0;
}

static void gw_on_stopped(void *data)
{
    gw_run_t *r = data;
    uv_close((uv_handle_t *)&r->sigterm, NULL);
    uv_close((uv_handle_t *)&r->sigint, NULL);
}

static void gw_on_signal(uv_signal_t *h, int signum)
{
    gw_run_t *r = h->data;
    if (r->stopping) {
        log_warn("gateway", "second %s: exiting without draining", strsignal(signum));
        exit(1);
    }
    r->stopping = true;
    log_info("gateway", "%s: draining (up to %llu ms)", strsignal(signum),
             (unsigned long long)r->drain_ms);
    gateway_stop(r->g, r->drain_ms, gw_on_stopped, r);
}

/* A duration flag into *out (ms); 2 with a message when it is not one. */
static int gw_duration(const char *flag, const char *v, uint64_t *out)
{
    int64_t ms;
    if (str_to_duration_ms(v, &ms) < 0 || ms <= 0) {
        fprintf(stderr, "drover gateway: %s %s: expected a duration like 5s or 500ms\n", flag, v);
        return 2;
    }
    *out = (uint64_t)ms;
    return 0;
}

static int gw_cmd_run(gateway_opts_t *op, const char **routes, size_t n_routes, const char *level,
                      const char *format, const char *access_log, gw_run_t *rp);

int gateway_cmd_main(int argc, char **argv)
{
    gateway_opts_t o = {.admin_addr = "127.0.0.1:9080"};
    o.proxy.http_addr = "0.0.0.0:80";
    const char *routes[GW_ROUTES_MAX];
    size_t n_routes = 0;
    gw_tls_cert_in_t certs[GW_CERTS_MAX];
    char *cert_bufs[GW_CERTS_MAX];
    size_t n_certs = 0;
    const char *level = NULL, *format = NULL, *access_log = NULL;
    gw_run_t r = {.drain_ms = 30000};
    int rc = 0;
    for (int i = 2; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            gw_usage(stdout);
            goto help;
        }
        if (!strcmp(a, "--internal")) {
            o.proxy.internal = true;
            continue;
        }
        if (!strcmp(a, "--proxy-protocol")) {
            o.proxy.proxy_protocol = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || i + 1 >= argc) {
            fprintf(stderr, "drover gateway: %s %s (see drover gateway --help)\n",
                    strncmp(a, "--", 2) ? "unexpected argument" : "flag needs a value:", a);
            goto usage;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--metalocator"))
            o.metalocator = v;
        else if (!strcmp(a, "--http"))
            o.proxy.http_addr = strcmp(v, "off") ? v : NULL;
        else if (!strcmp(a, "--https"))
            o.proxy.https_addr = v;
        else if (!strcmp(a, "--cert")) {
            if (n_certs == GW_CERTS_MAX) {
                fprintf(stderr, "drover gateway: more than %d --cert flags\n", GW_CERTS_MAX);
                rc = 2;
                break;
            }
            cert_bufs[n_certs] = xstrdup(v);
            if (gw_cert_parse(cert_bufs[n_certs], &certs[n_certs]) < 0) {
                fprintf(stderr, "drover gateway: --cert %s: expected [HOST=]CERT.pem,KEY.pem\n", v);
                free(cert_bufs[n_certs]);
                rc = 2;
                break;
            }
            n_certs++;
        } else if (!strcmp(a, "--hsts")) {
            int64_t sec;
            if (str_to_i64(v, 1, INT64_MAX, &sec) < 0) {
                fprintf(stderr, "drover gateway: --hsts %s: expected seconds, e.g. 31536000\n", v);
                rc = 2;
                break;
            }
            o.proxy.hsts_seconds = (uint64_t)sec;
        } else if (!strcmp(a, "--route")) {
            if (n_routes == GW_ROUTES_MAX) {
                fprintf(stderr, "drover gateway: more than %d --route flags\n", GW_ROUTES_MAX);
                goto usage;
            }
            routes[n_routes++] = v;
        } else if (!strcmp(a, "--internal-host"))
            o.proxy.internal_host = v;
        else if (!strcmp(a, "--threads")) {
            int64_t t;
            if (str_to_i64(v, 1, 256, &t) < 0) {
                fprintf(stderr, "drover gateway: --threads %s: expected 1..256\n", v);
                goto usage;
            }
            o.proxy.threads = (int)t;
        } else if (!strcmp(a, "--admin"))
            o.admin_addr = strcmp(v, "off") ? v : NULL;
        else if (!strcmp(a, "--access-log"))
            access_log = v;
        else if (!strcmp(a, "--max-body")) {
            if (str_to_size(v, &o.proxy.max_body_bytes) < 0 || !o.proxy.max_body_bytes) {
                fprintf(stderr, "drover gateway: --max-body %s: expected a size like 10MiB\n", v);
                goto usage;
            }
        } else if (!strcmp(a, "--connect-timeout"))
            rc = gw_duration(a, v, &o.proxy.connect_timeout_ms);
        else if (!strcmp(a, "--backend-timeout"))
            rc = gw_duration(a, v, &o.proxy.backend_timeout_ms);
        else if (!strcmp(a, "--idle-timeout"))
            rc = gw_duration(a, v, &o.proxy.idle_timeout_ms);
        else if (!strcmp(a, "--drain-timeout"))
            rc = gw_duration(a, v, &r.drain_ms);
        else if (!strcmp(a, "--uuid"))
            o.uuid = v;
        else if (!strcmp(a, "--log-level"))
            level = v;
        else if (!strcmp(a, "--log-format"))
            format = v;
        else {
            fprintf(stderr, "drover gateway: unknown flag %s (see drover gateway --help)\n", a);
            goto usage;
        }
    }
    if (rc == 0 && o.proxy.https_addr && n_certs == 0) {
        fprintf(stderr, "drover gateway: --https needs at least one --cert [HOST=]CERT,KEY\n");
        rc = 2;
    } else if (rc == 0 && !o.proxy.https_addr && (n_certs || o.proxy.hsts_seconds)) {
        fprintf(stderr, "drover gateway: --cert and --hsts need --https ADDR\n");
        rc = 2;
    } else if (rc == 0 && !o.proxy.http_addr && !o.proxy.https_addr) {
        fprintf(stderr, "drover gateway: --http off needs --https ADDR\n");
        rc = 2;
    }
    o.certs = certs;
    o.n_certs = n_certs;
    rc = rc ? rc : gw_cmd_run(&o, routes, n_routes, level, format, access_log, &r);
    goto out;
help:
    rc = 0;
    goto out;
usage:
    rc = 2;
out:
    for (size_t i = 0; i < n_certs; i++)
        free(cert_bufs[i]);
    return rc;
}

/* Everything after flag parsing (so the flag storage is freed on every
 * path by the caller). */
static int gw_cmd_run(gateway_opts_t *op, const char **routes, size_t n_routes, const char *level,
                      const char *format, const char *access_log, gw_run_t *rp)
{
    gateway_opts_t o = *op;
    gw_run_t r = *rp;
    int rc;
    log_level_t lv = LOG_INFO;
    log_format_t lf = LOG_TEXT;
    if (level && log_level_parse(level, &lv)) {
        fprintf(stderr, "drover gateway: log-level %s: expected debug, info, warn or error\n",
                level);
        return 2;
    }
    if (format && log_format_parse(format, &lf)) {
        fprintf(stderr, "drover gateway: log-format %s: expected text or json\n", format);
        return 2;
    }
    if (!o.metalocator && n_routes == 0) {
        fprintf(stderr, "drover gateway: nothing to route: give --metalocator HOST:PORT or "
                        "--route SPEC (see drover gateway --help)\n");
        return 2;
    }
    log_setup(lv, lf);
    FILE *alog = NULL;
    if (access_log) {
        alog = strcmp(access_log, "-") ? fopen(access_log, "a") : stdout;
        if (!alog) {
            fprintf(stderr, "drover gateway: access-log %s: %s\n", access_log, strerror(errno));
            return 1;
        }
        o.proxy.access_log = alog;
    }
    o.static_routes = routes;
    o.n_static = n_routes;
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&r.loop);
    err_t err = {0};
    rc = gateway_start(&r.loop, &o, &r.g, &err);
    if (rc < 0) {
        fprintf(stderr, "drover gateway: %s\n", err.msg);
        uv_run(&r.loop, UV_RUN_DEFAULT); /* let a partial start close its handles */
        uv_loop_close(&r.loop);
        if (alog && alog != stdout)
            fclose(alog);
        return 1;
    }
    uv_signal_init(&r.loop, &r.sigterm);
    uv_signal_init(&r.loop, &r.sigint);
    r.sigterm.data = r.sigint.data = &r;
    uv_signal_start(&r.sigterm, gw_on_signal, SIGTERM);
    uv_signal_start(&r.sigint, gw_on_signal, SIGINT);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    uv_loop_close(&r.loop);
    if (alog && alog != stdout)
        fclose(alog);
    log_info("gateway", "stopped");
    return 0;
}
