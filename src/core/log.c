#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_min_level = LOG_INFO;
static _Atomic int log_fmt = LOG_TEXT;

static const char *const log_names[] = {"debug", "info", "warn", "error", "off"};

void log_setup(log_level_t level, log_format_t format)
{
    atomic_store(&log_min_level, (int)level);
    atomic_store(&log_fmt, (int)format);
}

int log_level_parse(const char *s, log_level_t *out)
{
    for (int i = 0; i <= LOG_OFF; i++) {
        if (strcmp(s, log_names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

int log_format_parse(const char *s, log_format_t *out)
{
    if (strcmp(s, "text") == 0)
        *out = LOG_TEXT;
    else if (strcmp(s, "json") == 0)
        *out = LOG_JSON;
    else
        return -EINVAL;
    return 0;
}

int log_enabled(log_level_t level)
{
    return level < LOG_OFF && (int)level >= atomic_load(&log_min_level);
}

/* Append s to out as the inside of a JSON string, bounded by cap. */
static size_t log_json_escape(char *out, size_t pos, size_t cap, const char *s)
{
    for (; *s && pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[pos++] = '\\';
            out[pos++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            /* Bytes >= 0x80 are escaped one by one (as Latin-1) so a line
             * is valid JSON even when a peer's string is not UTF-8 or was
             * cut mid-sequence. */
            pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", c);
        } else {
            out[pos++] = (char)c;
        }
    }
    return pos;
}

void log_write(log_level_t level, const char *module, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    int saved = errno;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (atomic_load(&log_fmt) == LOG_TEXT) {
        /* A logged peer string must not forge extra log lines. */
        for (char *p = msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
    }

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t wl = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + wl, sizeof(when) - wl, ".%03ldZ", ts.tv_nsec / 1000000);

    char line[4096];
    size_t pos;
    if (atomic_load(&log_fmt) == LOG_JSON) {
        int n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"module\":\"", when,
                         log_names[level]);
        pos = (size_t)n;
        pos = log_json_escape(line, pos, sizeof(line), module);
        pos += (size_t)snprintf(line + pos, sizeof(line) - pos, "\",\"msg\":\"");
        pos = log_json_escape(line, pos, sizeof(line) - 4, msg);
        pos += (size_t)snprintf(line + pos, sizeof(line) - pos, "\"}\n");
    } else {
        int n =
            snprintf(line, sizeof(line), "%s %-5s %s: %s\n", when, log_names[level], module, msg);
        pos = n < 0 ? 0 : (size_t)n;
        if (pos >= sizeof(line)) {
            pos = sizeof(line) - 1;
            line[pos - 1] = '\n';
        }
    }
    (void)!write(2, line, pos);
    errno = saved;
}
