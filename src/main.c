/* drover: one binary. `dev` and `server` run the control plane; every other
 * verb is the CLI (src/cli/). */
#include "cli/cli.h"
#include "core/config.h"
#include "core/err.h"
#include "core/log.h"
#include "core/str.h"
#include "server/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DROVER_VERSION "0.1.0"

static void main_process_usage(FILE *out, const char *verb)
{
    if (strcmp(verb, "dev") == 0) {
        fprintf(out,
                "usage: drover dev [--data-dir DIR] [--api ADDR] [--log-level L] [--log-format F]\n"
                "\n"
                "Run all of drover in one process on this machine: the control plane with its\n"
                "embedded SQLite store and HTTP API. The default a new user runs.\n"
                "\n"
                "  --data-dir DIR    where state is kept (default ./.drover)\n"
                "  --api ADDR        API listen address (default 127.0.0.1:7400)\n"
                "  --log-level L     debug, info, warn, error (default info)\n"
                "  --log-format F    text or json (default text)\n"
                "\n"
                "example: drover dev --data-dir /tmp/drover --api 127.0.0.1:7400\n");
    } else {
        fprintf(out,
                "usage: drover server --config FILE [--data-dir DIR] [--api ADDR] [--log-level L]\n"
                "                     [--log-format F]\n"
                "\n"
                "Run the control plane: HTTP/JSON API and store. Flags override the config file.\n"
                "\n"
                "config file keys (one `key = value` per line, # comments):\n"
                "  data-dir     where state is kept (default /var/lib/drover)\n"
                "  api          API listen address (default 127.0.0.1:7400)\n"
                "  store        store backend: sqlite (default)\n"
                "  log-level    debug, info, warn, error\n"
                "  log-format   text or json\n"
                "\n"
                "example: drover server --config /etc/drover/server.conf\n");
    }
}

static const char *const main_config_keys[] = {"data-dir",  "api",        "store",
                                               "log-level", "log-format", NULL};

/* Parse `drover dev|server` flags. Returns 0, 1 for --help, or 2 on a
 * usage error (printed). */
static int main_process_args(int argc, char **argv, const char **vals)
{
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return 1;
        int k = -1;
        const char *val = NULL;
        for (int j = 0; main_config_keys[j]; j++) {
            size_t n = strlen(main_config_keys[j]);
            if (strncmp(a, "--", 2) == 0 && strncmp(a + 2, main_config_keys[j], n) == 0 &&
                (a[2 + n] == '\0' || a[2 + n] == '=')) {
                k = j;
                val = a[2 + n] == '=' ? a + 3 + n : NULL;
            }
        }
        bool is_config = strncmp(a, "--config", 8) == 0 && (a[8] == '\0' || a[8] == '=');
        if (k < 0 && !is_config) {
            fprintf(stderr, "drover %s: unknown flag %s (see drover %s --help)\n", argv[1], a,
                    argv[1]);
            return 2;
        }
        if (!val) {
            const char *eq = strchr(a, '=');
            if (eq) {
                val = eq + 1;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                fprintf(stderr, "drover %s: flag %s needs a value\n", argv[1], a);
                return 2;
            }
        }
        vals[is_config ? 5 : k] = val;
    }
    return 0;
}

static int main_process(int argc, char **argv)
{
    const char *verb = argv[1];
    bool dev = strcmp(verb, "dev") == 0;
    const char *vals[6] = {0}; /* config keys in main_config_keys order, then --config */
    int rc = main_process_args(argc, argv, vals);
    if (rc == 1) {
        main_process_usage(stdout, verb);
        return 0;
    }
    if (rc)
        return rc;
    config_t *cfg = NULL;
    err_t err = {0};
    if (vals[5]) {
        if (config_load(vals[5], &cfg, &err) || config_check_known(cfg, main_config_keys, &err)) {
            fprintf(stderr, "drover %s: %s\n", verb, err.msg);
            config_free(cfg);
            return 2;
        }
        for (int j = 0; main_config_keys[j]; j++)
            if (!vals[j])
                vals[j] = config_get(cfg, main_config_keys[j]);
    } else if (!dev) {
        fprintf(stderr, "drover server: --config FILE is required (see drover server --help)\n");
        return 2;
    }
    log_level_t level = LOG_INFO;
    log_format_t format = LOG_TEXT;
    if (vals[3] && log_level_parse(vals[3], &level)) {
        fprintf(stderr, "drover %s: log-level %s: expected debug, info, warn or error\n", verb,
                vals[3]);
        rc = 2;
    }
    if (vals[4] && log_format_parse(vals[4], &format)) {
        fprintf(stderr, "drover %s: log-format %s: expected text or json\n", verb, vals[4]);
        rc = 2;
    }
    const char *store = vals[2] ? vals[2] : "sqlite";
    if (strcmp(store, "sqlite") != 0) {
        fprintf(stderr, "drover %s: store %s: only sqlite is available in this build\n", verb,
                store);
        rc = 2;
    }
    if (rc) {
        config_free(cfg);
        return rc;
    }
    log_setup(level, format);
    server_options_t so = {
        .data_dir = vals[0] ? vals[0] : (dev ? "./.drover" : "/var/lib/drover"),
        .api_addr = vals[1] ? vals[1] : "127.0.0.1:7400",
        .store_backend = store,
        .mode = verb,
        .shutdown_grace_ms = 5000,
    };
    rc = server_run(&so);
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
    if (!strcmp(argv[1], "dev") || !strcmp(argv[1], "server"))
        return main_process(argc, argv);
    return cli_main(argc, argv);
}
