/* Small formatting helpers shared by the verbs: URLs, times, values. */
#include "cli/cli.h"

#include "core/alloc.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Dots of a "." or ".." segment are escaped too: HTTP clients resolve them
 * ("/v1/kv/a/../b" would reach /v1/kv/b), and the server should see, and
 * refuse, the key as typed. */
int cli_url_escape(buf_t *b, const char *s, bool keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    bool dot_segment = false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if (p == (const unsigned char *)s || p[-1] == '/') {
            size_t n = strcspn((const char *)p, keep_slash ? "/" : "");
            dot_segment = (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.');
        }
        int rc;
        if (isalnum(c) || (c == '.' && !dot_segment) || c == '-' || c == '_' || c == '~' ||
            (keep_slash && c == '/')) {
            rc = buf_append(b, p, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            rc = buf_append(b, e, 3);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* App ids are paths ("/production/web") and the API addresses them as the
 * rest of the URL path, so the id's leading '/' is the path's separator. */
char *cli_app_path(const char *id, const char *suffix)
{
    buf_t b = BUF_INIT(0);
    buf_append_str(&b, "/v1/apps/");
    while (*id == '/')
        id++;
    cli_url_escape(&b, id, true);
    if (suffix)
        buf_append_str(&b, suffix);
    return buf_steal(&b, NULL);
}

/* Read exactly n digits; the fixed-width fields of RFC 3339 make this
 * simpler and stricter than strtol. */
static int time_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i]))
            return -EINVAL;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static int time_expect(const char **p, const char *chars)
{
    if (!**p || !strchr(chars, **p))
        return -EINVAL;
    (*p)++;
    return 0;
}

int cli_time_parse(const char *s, int64_t *ms)
{
    if (!s)
        return -EINVAL;
    const char *p = s;
    int y, mo, d, h, mi, sec;
    if (time_digits(&p, 4, &y) || time_expect(&p, "-") || time_digits(&p, 2, &mo) ||
        time_expect(&p, "-") || time_digits(&p, 2, &d) || time_expect(&p, "Tt ") ||
        time_digits(&p, 2, &h) || time_expect(&p, ":") || time_digits(&p, 2, &mi) ||
        time_expect(&p, ":") || time_digits(&p, 2, &sec))
        return -EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -EINVAL;
    int64_t frac_ms = 0;
    if (*p == '.') {
        p++;
        int digits = 0;
        int64_t scale = 100;
        while (isdigit((unsigned char)*p)) {
            if (digits < 3)
                frac_ms += (*p - '0') * scale;
            scale /= 10;
            digits++;
            p++;
        }
        if (digits == 0)
            return -EINVAL;
    }
    int64_t offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        p++;
        int oh, om;
        if (time_digits(&p, 2, &oh) || time_expect(&p, ":") || time_digits(&p, 2, &om))
            return -EINVAL;
        offset_s = sign * (oh * 3600 + om * 60);
    } else {
        return -EINVAL;
    }
    if (*p)
        return -EINVAL;
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - offset_s) * 1000 + frac_ms;
    return 0;
}

void cli_age_format(int64_t seconds, char *out, size_t n)
{
    if (seconds < 0)
        seconds = 0;
    if (seconds < 60)
        snprintf(out, n, "%llds ago", (long long)seconds);
    else if (seconds < 3600)
        snprintf(out, n, "%lldm ago", (long long)(seconds / 60));
    else if (seconds < 86400)
        snprintf(out, n, "%lldh ago", (long long)(seconds / 3600));
    else if (seconds < 365 * 86400)
        snprintf(out, n, "%lldd ago", (long long)(seconds / 86400));
    else
        snprintf(out, n, "%lldy ago", (long long)(seconds / (365 * 86400)));
}

void cli_age_since(const char *ts, int64_t now_ms, char *out, size_t n)
{
    int64_t t;
    if (cli_time_parse(ts, &t) < 0) {
        snprintf(out, n, "-");
        return;
    }
    cli_age_format((now_ms - t) / 1000, out, n);
}

void cli_duration_format(int64_t s, char *out, size_t n)
{
    if (s < 0)
        s = 0;
    long long v = (long long)s;
    if (v < 60)
        snprintf(out, n, "%llds", v);
    else if (v < 3600)
        snprintf(out, n, "%lldm %llds", v / 60, v % 60);
    else if (v < 86400)
        snprintf(out, n, "%lldh %lldm", v / 3600, v % 3600 / 60);
    else
        snprintf(out, n, "%lldd %lldh", v / 86400, v % 86400 / 3600);
}

int64_t cli_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Length of the UTF-8 sequence starting at p (at most left bytes), or 0
 * when it is not well formed (overlong forms, surrogates and code points
 * past U+10FFFF included). */
static size_t utf8_seq(const unsigned char *p, size_t left)
{
    unsigned char c = p[0];
    size_t n;
    unsigned int cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return n;
}

/* A value is shown as text when a person could read it: well-formed UTF-8
 * whose only control characters are line breaks and tabs (shown escaped so
 * the row stays one line). Anything else is summarized by its size. */
char *cli_value_display(const char *v, size_t len, size_t max_chars)
{
    const unsigned char *p = (const unsigned char *)v;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);
        bool ctl =
            n == 1 && (p[i] < 0x20 || p[i] == 0x7f) && p[i] != '\n' && p[i] != '\r' && p[i] != '\t';
        /* C1 controls (U+0080..U+009F) move terminals around too. */
        if (n == 2 && p[i] == 0xC2 && p[i + 1] < 0xA0)
            ctl = true;
        if (n == 0 || ctl)
            return xasprintf("<binary %zu bytes>", len);
        i += n;
    }
    /* Escape everything, remembering the last unit boundary at which "..."
     * still fits, so a cut never splits a character or an escape. */
    buf_t b = BUF_INIT(0);
    size_t chars = 0, cut_at = 0;
    size_t room = max_chars >= 3 ? max_chars - 3 : 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(p + i, len - i);
        const char *esc = p[i] == '\n' ? "\\n" : p[i] == '\r' ? "\\r" : p[i] == '\t' ? "\\t" : NULL;
        size_t w = esc ? 2 : 1;
        if (chars + w <= room)
            cut_at = b.len + (esc ? 2 : n);
        if (esc)
            buf_append(&b, esc, 2);
        else
            buf_append(&b, p + i, n);
        chars += w;
        i += n;
    }
    if (chars > max_chars) {
        b.len = cut_at;
        buf_append_str(&b, max_chars >= 3 ? "..." : "");
    }
    return buf_steal(&b, NULL);
}

size_t cli_base64_decoded_len(const char *b64)
{
    /* Every 4 characters carry 3 bytes; '=' padding carries none. */
    size_t n = 0;
    for (const char *p = b64; *p; p++)
        if (*p != '=' && !isspace((unsigned char)*p))
            n++;
    return n * 3 / 4;
}

char *cli_json_compact(const json_t *v)
{
    /* 15 digits: 1.15 prints as 1.15, not 1.1499999999999999. */
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
    char *r = xstrdup(s ? s : "null");
    free(s);
    return r;
}

char *cli_json_text(const json_t *v)
{
    if (!v || json_is_null(v))
        return xstrdup("-");
    if (json_is_string(v))
        return xstrdup(json_string_value(v));
    if (json_is_true(v))
        return xstrdup("true");
    if (json_is_false(v))
        return xstrdup("false");
    if (json_is_integer(v))
        return xasprintf("%lld", (long long)json_integer_value(v));
    if (json_is_real(v))
        return xasprintf("%.15g", json_real_value(v));
    return cli_json_compact(v);
}

int cli_read_input(const char *path, size_t max, buf_t *out, err_t *err)
{
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f)
        return err_set(err, -errno, "cannot open %s: %s", path, strerror(errno));
    const char *name = is_stdin ? "stdin" : path;
    int rc = 0;
    char chunk[16384];
    for (;;) {
        size_t n = fread(chunk, 1, sizeof(chunk), f);
        if (n > 0 && out->len + n > max) {
            rc = err_set(err, -EFBIG, "%s is larger than %zu bytes", name, max);
            break;
        }
        if (n > 0 && buf_append(out, chunk, n) < 0) {
            rc = err_set(err, -EFBIG, "%s is larger than %zu bytes", name, max);
            break;
        }
        if (n < sizeof(chunk)) {
            if (ferror(f))
                rc = err_set(err, -EIO, "cannot read %s", name);
            break;
        }
    }
    if (!is_stdin)
        fclose(f);
    return rc;
}
