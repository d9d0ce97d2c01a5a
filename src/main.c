/* drover: one binary. `dev`, `server`, `agent` and `gateway` run processes; every
 * other verb is the CLI (src/cli/). */
#include "cli/cli.h"
#include "core/alloc.h"
#include "core/config.h"
#include "core/err.h"
#include "core/log.h"
#include "core/str.h"
#include "gateway/cmd.h"
#include "server/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DROVER_VERSION "0.1.0"

/* Flags of the process verbs; each is also a config file key. */
enum {
    K_DATA_DIR,
    K_API,
    K_STORE,
    K_LOG_LEVEL,
    K_LOG_FORMAT,
    K_SERVER,
    K_LABELS,
    K_ADVERTISE,
    K_LISTEN,
    K_PORTS,
    K_HARDEN,
    K_LOCATOR,
    K_DRAIN,
    K_ANNOUNCE,
    K_ANNOUNCE_INTERVAL,
    K_ANNOUNCE_IF,
    K_DISCOVER,
    K_PEERS,
    K_DNS,
    K_GATEWAY,
    K_HOSTNAME,
    K_CPUS,
    K_MEM,
    K_REPLACE_LOST,
    K_CONFIG,
    K_COUNT
};
/* Same order as the enum above. */
static const char *const main_keys[] = {
    "data-dir",    "api",      "store",         "log-level", "log-format",
    "server",      "labels",   "advertise",     "listen",    "ports",
    "harden",      "locator",  "drain-timeout", "announce",  "announce-interval",
    "announce-if", "discover", "peers",         "dns",       "gateway",
    "hostname",    "cpus",     "mem",           "replace-lost-after",
    "config",      NULL};
_Static_assert(sizeof(main_keys) / sizeof(*main_keys) == K_COUNT + 1,
               "main_keys must list every K_ flag");

/* Which flags each verb takes. */
static bool main_key_allowed(const char *verb, int k)
{
    if (k == K_DATA_DIR || k == K_LOG_LEVEL || k == K_LOG_FORMAT || k == K_CONFIG)
        return true;
    if (!strcmp(verb, "server"))
        return k == K_API || k == K_STORE || k == K_LOCATOR || k == K_DNS || k == K_DISCOVER ||
               k == K_PEERS || k == K_ANNOUNCE_INTERVAL || k == K_ANNOUNCE_IF ||
               k == K_REPLACE_LOST;
    if (!strcmp(verb, "agent"))
        return (k >= K_SERVER && k <= K_ANNOUNCE_IF) || k == K_HOSTNAME || k == K_CPUS ||
               k == K_MEM;
    return k == K_API || k == K_LABELS || k == K_PORTS || k == K_HARDEN || k == K_LOCATOR ||
           k == K_DRAIN || k == K_DNS || k == K_GATEWAY || k == K_HOSTNAME || k == K_CPUS ||
           k == K_MEM || k == K_REPLACE_LOST; /* dev */
}

static void main_process_usage(FILE *out, const char *verb)
{
    if (!strcmp(verb, "dev")) {
        fprintf(
            out,
            "usage: drover dev [--data-dir DIR] [--api ADDR] [--ports LO-HI] [--labels K=V,...]\n"
            "                  [--locator ADDR] [--dns ADDR] [--gateway ADDR] [--drain-timeout D]\n"
            "                  [--log-level L] [--log-format F]\n"
            "\n"
            "Run all of drover in one process on this machine: the control plane (embedded\n"
            "SQLite store, HTTP API, placement), a node agent that runs the instances and a\n"
            "gateway that routes HTTP to them.\n"
            "Ctrl-C stops the instances too.\n"
            "\n"
            "  --data-dir DIR    where state is kept (default ./.drover)\n"
            "  --api ADDR        API listen address (default 127.0.0.1:7400)\n"
            "  --ports LO-HI     host ports for instances (default 20000-32000)\n"
            "  --labels K=V,...  node labels\n"
            "  --hostname NAME   the node's hostname for constraints (default: this host's)\n"
            "  --cpus N          cpus offered to placement (default: the online processors)\n"
            "  --mem MIB         memory offered to placement (default: the machine's)\n"
            "  --replace-lost-after D  replace a lost node's instances after D (default 0s)\n"
            "  --harden          run instances in their own namespaces with no_new_privs\n"
            "  --locator ADDR    the (meta)locator routers and `drover resolve` ask, msgpack RPC\n"
            "                    (default 127.0.0.1:10053)\n"
            "  --dns ADDR        DNS for services (default 127.0.0.1:8600; \"off\" disables)\n"
            "  --gateway ADDR    HTTP gateway routing to apps by their routes (default\n"
            "                    127.0.0.1:8080; \"off\" disables)\n"
            "  --drain-timeout D how long a stopping instance waits for routers to confirm its\n"
            "                    removal before SIGTERM (default 5s)\n"
            "  --log-level L     debug, info, warn, error (default info)\n"
            "  --log-format F    text or json (default text)\n"
            "\n"
            "example: drover dev --data-dir /tmp/drover --api 127.0.0.1:7400\n");
    } else if (!strcmp(verb, "agent")) {
        fprintf(
            out,
            "usage: drover agent --server URL [--data-dir DIR] [--labels K=V,...]\n"
            "                    [--advertise ADDR] [--listen ADDR] [--ports LO-HI] [--harden]\n"
            "                    [--config FILE] [--log-level L] [--log-format F]\n"
            "\n"
            "Run a node agent: registers this machine with the server, runs the instances\n"
            "assigned to it, health-checks them and reports their state. Stopping the agent\n"
            "leaves instances running; the next agent on this data dir re-adopts them.\n"
            "\n"
            "  --server URL       the API (default $DROVER_ADDR or http://127.0.0.1:7400)\n"
            "  --data-dir DIR     node id, instance sandboxes and logs (default "
            "/var/lib/drover-agent)\n"
            "  --labels K=V,...   node labels for placement constraints (disk=ssd,rack=r1)\n"
            "  --hostname NAME    the node's hostname for constraints (default: this host's)\n"
            "  --cpus N           cpus offered to placement (default: the online processors)\n"
            "  --mem MIB          memory offered to placement (default: the machine's)\n"
            "  --advertise ADDR   address instances are reached at (default: first non-loopback "
            "IPv4)\n"
            "  --listen ADDR      the agent's HTTP endpoint for logs (default 0.0.0.0:7401)\n"
            "  --ports LO-HI      host ports for instances (default 20000-32000)\n"
            "  --harden           own namespaces and no_new_privs for instances\n"
            "  --locator ADDR     the node locator, msgpack RPC (default 0.0.0.0:10053)\n"
            "  --drain-timeout D  wait for routers to confirm a removal before SIGTERM (5s)\n"
            "  --announce G:P     announce this node by UDP multicast (e.g. 239.192.77.1:10054;\n"
            "                     default off) so servers with --discover find it\n"
            "  --announce-interval D  how often (default 5s)\n"
            "  --announce-if ADDR IPv4 address of the interface to announce on\n"
            "\n"
            "example: drover agent --server http://10.0.0.1:7400 --labels disk=ssd\n");
    } else {
        fprintf(out,
                "usage: drover server --config FILE [--data-dir DIR] [--api ADDR] [--log-level L]\n"
                "                     [--log-format F]\n"
                "\n"
                "Run the control plane: HTTP/JSON API, store, placement, and the metalocator\n"
                "(every node's services, merged, on --locator; DNS on --dns). Flags override\n"
                "the config file.\n"
                "\n"
                "config file keys (one `key = value` per line, # comments):\n"
                "  data-dir     where state is kept (default /var/lib/drover)\n"
                "  api          API listen address (default 127.0.0.1:7400)\n"
                "  store        store backend: sqlite (default)\n"
                "  locator      metalocator listen address (default 0.0.0.0:10053)\n"
                "  dns          DNS listen address for services (default: off)\n"
                "  discover     find nodes by their multicast announces on GROUP:PORT\n"
                "               (e.g. 239.192.77.1:10054; default off: the node registry only)\n"
                "  announce-interval  the nodes' announce interval (default 5s; gone after 3)\n"
                "  announce-if  IPv4 address of the interface to listen on\n"
                "  peers        static node locators: id=host:port,id=host:port\n"
                "  replace-lost-after  wait this long before replacing the instances of a node\n"
                "               whose lease expired (default 0s: at once)\n"
                "  log-level    debug, info, warn, error\n"
                "  log-format   text or json\n"
                "\n"
                "example: drover server --config /etc/drover/server.conf\n");
    }
}

/* Parse flags into vals[K_*]. Returns 0, 1 for --help, or 2 on a usage
 * error (printed). */
static int main_process_args(int argc, char **argv, const char **vals)
{
    const char *verb = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return 1;
        int k = -1;
        for (int j = 0; main_keys[j]; j++) {
            size_t n = strlen(main_keys[j]);
            if (!strncmp(a, "--", 2) && !strncmp(a + 2, main_keys[j], n) &&
                (a[2 + n] == '\0' || a[2 + n] == '='))
                k = j;
        }
        if (k < 0 || !main_key_allowed(verb, k)) {
            fprintf(stderr, "drover %s: unknown flag %s (see drover %s --help)\n", verb, a, verb);
            return 2;
        }
        const char *eq = strchr(a, '=');
        if (k == K_HARDEN && !eq) {
            vals[k] = "true";
            continue;
        }
        if (eq) {
            vals[k] = eq + 1;
        } else if (i + 1 < argc) {
            vals[k] = argv[++i];
        } else {
            fprintf(stderr, "drover %s: flag %s needs a value\n", verb, a);
            return 2;
        }
    }
    return 0;
}

static int main_process(int argc, char **argv)
{
    const char *verb = argv[1];
    bool dev = !strcmp(verb, "dev"), agent = !strcmp(verb, "agent");
    const char *vals[K_COUNT] = {0};
    int rc = main_process_args(argc, argv, vals);
    if (rc == 1) {
        main_process_usage(stdout, verb);
        return 0;
    }
    if (rc)
        return rc;
    config_t *cfg = NULL;
    err_t err = {0};
    if (vals[K_CONFIG]) {
        const char *known[K_COUNT + 1];
        int n = 0;
        for (int j = 0; j < K_CONFIG; j++)
            if (main_key_allowed(verb, j))
                known[n++] = main_keys[j];
        known[n] = NULL;
        if (config_load(vals[K_CONFIG], &cfg, &err) || config_check_known(cfg, known, &err)) {
            fprintf(stderr, "drover %s: %s\n", verb, err.msg);
            config_free(cfg);
            return 2;
        }
        for (int j = 0; j < K_CONFIG; j++)
            if (!vals[j] && main_key_allowed(verb, j))
                vals[j] = config_get(cfg, main_keys[j]);
    } else if (!dev && !agent) {
        fprintf(stderr, "drover server: --config FILE is required (see drover server --help)\n");
        return 2;
    }
    log_level_t level = LOG_INFO;
    log_format_t format = LOG_TEXT;
    if (vals[K_LOG_LEVEL] && log_level_parse(vals[K_LOG_LEVEL], &level)) {
        fprintf(stderr, "drover %s: log-level %s: expected debug, info, warn or error\n", verb,
                vals[K_LOG_LEVEL]);
        rc = 2;
    }
    if (vals[K_LOG_FORMAT] && log_format_parse(vals[K_LOG_FORMAT], &format)) {
        fprintf(stderr, "drover %s: log-format %s: expected text or json\n", verb,
                vals[K_LOG_FORMAT]);
        rc = 2;
    }
    const char *store = vals[K_STORE] ? vals[K_STORE] : "sqlite";
    if (strcmp(store, "sqlite") != 0) {
        fprintf(stderr, "drover %s: store %s: only sqlite is available in this build\n", verb,
                store);
        rc = 2;
    }
    int64_t drain_ms = 5000;
    if (vals[K_DRAIN] && str_to_duration_ms(vals[K_DRAIN], &drain_ms)) {
        fprintf(stderr, "drover %s: drain-timeout %s: expected a duration like 5s or 500ms\n", verb,
                vals[K_DRAIN]);
        rc = 2;
    }
    bool harden = vals[K_HARDEN] && strcmp(vals[K_HARDEN], "false") && strcmp(vals[K_HARDEN], "0");
    if (rc) {
        config_free(cfg);
        return rc;
    }
    log_setup(level, format);
    /* API calls, artifact unpacking and log reads share libuv's pool; the
     * default of 4 threads would let one slow server stall the rest. */
    setenv("UV_THREADPOOL_SIZE", "16", 0);

    server_options_t so = {
        .mode = verb,
        .data_dir = vals[K_DATA_DIR] ? vals[K_DATA_DIR] : (dev ? "./.drover" : "/var/lib/drover"),
        .api_addr = vals[K_API] ? vals[K_API] : "127.0.0.1:7400",
        .store_backend = store,
        .shutdown_grace_ms = 5000,
        .run_control_plane = !agent,
        .run_agent = dev || agent,
        .stop_instances_on_exit = dev,
    };
    char *dev_agent_dir = NULL, *dev_server_url = NULL;
    so.agent.labels = vals[K_LABELS];
    so.agent.hostname = vals[K_HOSTNAME];
    if (vals[K_CPUS]) {
        char *end = NULL;
        so.agent.cpus = strtod(vals[K_CPUS], &end);
        if (!end || *end || !(so.agent.cpus > 0) || so.agent.cpus > 1e6) {
            fprintf(stderr, "drover %s: cpus %s: expected a number > 0\n", verb, vals[K_CPUS]);
            config_free(cfg);
            return 2;
        }
    }
    if (vals[K_MEM] && str_to_i64(vals[K_MEM], 1, INT64_MAX / 2, &so.agent.mem_mb)) {
        fprintf(stderr, "drover %s: mem %s: expected MiB, an integer > 0\n", verb, vals[K_MEM]);
        config_free(cfg);
        return 2;
    }
    int64_t lost_ms = 0;
    if (vals[K_REPLACE_LOST] && str_to_duration_ms(vals[K_REPLACE_LOST], &lost_ms)) {
        fprintf(stderr, "drover %s: replace-lost-after %s: expected a duration like 0s or 5m\n",
                verb, vals[K_REPLACE_LOST]);
        config_free(cfg);
        return 2;
    }
    so.lost_delay_ms = (uint64_t)(lost_ms > 0 ? lost_ms : 0);
    so.agent.ports = vals[K_PORTS];
    so.agent.harden = harden;
    so.agent.locator = vals[K_LOCATOR];
    so.agent.drain_timeout_ms = (uint64_t)(drain_ms > 0 ? drain_ms : 1);
    int64_t announce_ms = 5000;
    if (vals[K_ANNOUNCE_INTERVAL] && str_to_duration_ms(vals[K_ANNOUNCE_INTERVAL], &announce_ms)) {
        fprintf(stderr, "drover %s: announce-interval %s: expected a duration like 5s\n", verb,
                vals[K_ANNOUNCE_INTERVAL]);
        config_free(cfg);
        return 2;
    }
    so.agent.announce = vals[K_ANNOUNCE];
    so.agent.announce_interval_ms = (uint64_t)announce_ms;
    so.agent.announce_if = vals[K_ANNOUNCE_IF];
    so.discover = vals[K_DISCOVER];
    so.peers = vals[K_PEERS];
    so.announce_interval_ms = (uint64_t)announce_ms;
    so.announce_if = vals[K_ANNOUNCE_IF];
    if (dev) {
        dev_agent_dir = xasprintf("%s/agent", so.data_dir);
        dev_server_url = xasprintf("http://%s", so.api_addr);
        so.agent.data_dir = dev_agent_dir;
        so.agent.server_url = dev_server_url;
        so.agent.advertise = "127.0.0.1";
        so.agent.listen = "127.0.0.1:0";
        /* In dev the well-known port is the metalocator's (what `drover
         * resolve` and routers ask); the agent's own locator takes any. */
        so.meta_addr = so.agent.locator ? so.agent.locator : "127.0.0.1:10053";
        so.agent.locator = "127.0.0.1:0";
    } else if (agent) {
        const char *env = getenv("DROVER_ADDR");
        so.agent.server_url =
            vals[K_SERVER] ? vals[K_SERVER] : (env && *env ? env : "http://127.0.0.1:7400");
        so.agent.data_dir = vals[K_DATA_DIR] ? vals[K_DATA_DIR] : "/var/lib/drover-agent";
        so.agent.advertise = vals[K_ADVERTISE];
        so.agent.listen = vals[K_LISTEN];
    }
    if (!agent) {
        so.dns_addr = vals[K_DNS] ? vals[K_DNS] : (dev ? "127.0.0.1:8600" : NULL);
        if (so.dns_addr && !strcmp(so.dns_addr, "off"))
            so.dns_addr = NULL;
        if (!dev)
            so.meta_addr = vals[K_LOCATOR];
    }
    if (dev) {
        so.gateway_addr = vals[K_GATEWAY] ? vals[K_GATEWAY] : "127.0.0.1:8080";
        if (!strcmp(so.gateway_addr, "off"))
            so.gateway_addr = NULL;
    }
    rc = server_run(&so);
    free(dev_agent_dir);
    free(dev_server_url);
    config_free(cfg);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "-h")) {
        cli_usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("drover %s\n", DROVER_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "dev") || !strcmp(argv[1], "server") || !strcmp(argv[1], "agent"))
        return main_process(argc, argv);
    if (!strcmp(argv[1], "gateway"))
        return gateway_cmd_main(argc, argv);
    return cli_main(argc, argv);
}
