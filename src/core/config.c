#include "core/config.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/str.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct config_entry {
    char *key;
    char *value;
    int line;
} config_entry_t;

struct config {
    char *name;
    config_entry_t *v;
    size_t n, cap;
    /* Open-addressed index into v (slot holds index + 1, 0 is empty), so a
     * large file's duplicate check stays linear. */
    size_t *slots;
    size_t nslots;
};

static uint64_t config_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* Slot for key: the one holding it, or the empty one where it would go. */
static size_t *config_slot(const config_t *c, const char *key)
{
    size_t mask = c->nslots - 1;
    size_t i = (size_t)config_hash(key) & mask;
    while (c->slots[i] && strcmp(c->v[c->slots[i] - 1].key, key) != 0)
        i = (i + 1) & mask;
    return &c->slots[i];
}

static void config_rehash(config_t *c)
{
    free(c->slots);
    c->nslots = c->nslots ? c->nslots * 2 : 16;
    c->slots = xcalloc(c->nslots, sizeof(*c->slots));
    for (size_t i = 0; i < c->n; i++)
        *config_slot(c, c->v[i].key) = i + 1;
}

static const config_entry_t *config_find(const config_t *c, const char *key)
{
    if (!c || !c->nslots)
        return NULL;
    size_t s = *config_slot(c, key);
    return s ? &c->v[s - 1] : NULL;
}

/* Takes ownership of key and value. */
static void config_add(config_t *c, char *key, char *value, int line)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 16;
        c->v = xrealloc(c->v, c->cap * sizeof(*c->v));
    }
    c->v[c->n++] = (config_entry_t){key, value, line};
    if (c->n * 2 > c->nslots)
        config_rehash(c);
    else
        *config_slot(c, key) = c->n;
}

void config_free(config_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].key);
        free(c->v[i].value);
    }
    free(c->v);
    free(c->slots);
    free(c->name);
    free(c);
}

static bool config_is_key_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-';
}

static bool config_is_space(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* A character as it should appear in an error: itself when printable,
 * else its code, so a stray control byte is visible. */
static void config_char_desc(char ch, char *out, size_t cap)
{
    unsigned char u = (unsigned char)ch;
    if (u >= 0x21 && u < 0x7f && u != '\'')
        snprintf(out, cap, "'%c'", ch);
    else if (ch == ' ')
        snprintf(out, cap, "a space");
    else
        snprintf(out, cap, "byte 0x%02x", u);
}

typedef struct config_parser {
    const char *name;
    int line;
    err_t *err;
} config_parser_t;

static int config_perr(const config_parser_t *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Error with the "file:line: " prefix every config error carries. */
static int config_perr(const config_parser_t *p, const char *fmt, ...)
{
    char msg[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return err_set(p->err, -EINVAL, "%s:%d: %s", p->name, p->line, msg);
}

/* A double-quoted value from s (at the opening quote) to e. Escapes are
 * the three the format promises; anything else is refused rather than
 * guessed at, so "\t" does not silently become "t". */
static int config_quoted(const config_parser_t *p, const char *s, const char *e, char **out)
{
    buf_t b = BUF_INIT(0);
    const char *q = s + 1;
    for (;;) {
        if (q == e) {
            buf_free(&b);
            return config_perr(p, "unterminated quoted value (missing closing \")");
        }
        char ch = *q++;
        if (ch == '"')
            break;
        if (ch == '\\') {
            if (q == e) {
                buf_free(&b);
                return config_perr(p, "unterminated quoted value (line ends after \\)");
            }
            char x = *q++;
            if (x == 'n') {
                ch = '\n';
            } else if (x == '"' || x == '\\') {
                ch = x;
            } else {
                char d[16];
                config_char_desc(x, d, sizeof(d));
                buf_free(&b);
                return config_perr(p,
                                   "unknown escape \\ followed by %s in quoted value "
                                   "(use \\\", \\\\ or \\n)",
                                   d);
            }
        } else if ((unsigned char)ch < 0x20 && ch != '\t') {
            char d[16];
            config_char_desc(ch, d, sizeof(d));
            buf_free(&b);
            return config_perr(p, "control character (%s) in value", d);
        }
        buf_append(&b, &ch, 1);
    }
    const char *after = q;
    while (q < e && config_is_space(*q))
        q++;
    if (q < e && (*q != '#' || q == after)) {
        buf_free(&b);
        return config_perr(p, "unexpected text after the quoted value (a comment needs #)");
    }
    size_t len;
    *out = buf_steal(&b, &len);
    return 0;
}

/* One line [s, e), without its newline. Adds at most one entry to c. */
static int config_parse_line(const config_parser_t *p, config_t *c, const char *s, const char *e)
{
    if (e > s && e[-1] == '\r')
        e--;
    const char *q = s;
    while (q < e && config_is_space(*q))
        q++;
    if (q == e || *q == '#')
        return 0;
    const char *ks = q;
    while (q < e && config_is_key_char(*q))
        q++;
    if (q == ks && *q == '=')
        return config_perr(p, "missing key before =");
    if (q == ks || (q < e && !config_is_space(*q) && *q != '=')) {
        char d[16];
        config_char_desc(*q, d, sizeof(d));
        return config_perr(p, "invalid character %s in key (keys use a-z, 0-9 and -)", d);
    }
    char *key = xstrndup(ks, (size_t)(q - ks));
    const config_entry_t *prev = config_find(c, key);
    if (prev) {
        int rc = config_perr(p, "duplicate key \"%s\" (first set on line %d)", key, prev->line);
        free(key);
        return rc;
    }
    while (q < e && config_is_space(*q))
        q++;
    bool had_space = q > ks && config_is_space(q[-1]);
    if (q < e && *q == '=') {
        q++;
        had_space = false;
        while (q < e && config_is_space(*q)) {
            q++;
            had_space = true;
        }
    }
    if (q == e || (*q == '#' && had_space)) {
        int rc = config_perr(p, "key \"%s\" has no value (write \"\" for an empty one)", key);
        free(key);
        return rc;
    }
    char *value = NULL;
    if (*q == '"') {
        int rc = config_quoted(p, q, e, &value);
        if (rc) {
            free(key);
            return rc;
        }
    } else {
        const char *vs = q, *ve = q;
        for (; q < e; q++) {
            if (*q == '#' && config_is_space(q[-1]))
                break;
            if ((unsigned char)*q < 0x20 && *q != '\t') {
                char d[16];
                config_char_desc(*q, d, sizeof(d));
                free(key);
                return config_perr(p, "control character (%s) in value", d);
            }
            if (!config_is_space(*q))
                ve = q + 1;
        }
        value = xstrndup(vs, (size_t)(ve - vs));
    }
    config_add(c, key, value, p->line);
    return 0;
}

int config_parse_string(const char *text, size_t n, const char *name, config_t **out, err_t *err)
{
    *out = NULL;
    if (!name)
        name = "config";
    if (n > CONFIG_MAX_BYTES)
        return err_set(err, -EFBIG, "%s: larger than %zu bytes", name, CONFIG_MAX_BYTES);
    config_t *c = xcalloc(1, sizeof(*c));
    c->name = xstrdup(name);
    config_parser_t p = {c->name, 0, err};
    const char *s = text, *end = text + n;
    /* An editor's UTF-8 byte order mark is not part of the first key. */
    if (n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
        s += 3;
    while (s < end) {
        p.line++;
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *e = nl ? nl : end;
        /* Values become C strings: a NUL would silently cut one short. */
        if (memchr(s, '\0', (size_t)(e - s))) {
            config_perr(&p, "NUL byte in line");
            config_free(c);
            return -EINVAL;
        }
        int rc = config_parse_line(&p, c, s, e);
        if (rc) {
            config_free(c);
            return rc;
        }
        s = nl ? nl + 1 : end;
    }
    *out = c;
    return 0;
}

int config_load(const char *path, config_t **out, err_t *err)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return err_set(err, -e, "cannot read %s: %s", path, strerror(e));
    }
    /* Read one byte past the limit to tell "exactly 1 MiB" from "more". */
    size_t cap = CONFIG_MAX_BYTES + 1, len = 0;
    char *data = xmalloc(cap);
    for (;;) {
        ssize_t r = read(fd, data + len, cap - len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            free(data);
            return err_set(err, -e, "cannot read %s: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len == cap)
            break;
    }
    close(fd);
    int rc;
    if (len > CONFIG_MAX_BYTES)
        rc = err_set(err, -EFBIG, "%s: larger than %zu bytes (1 MiB)", path, CONFIG_MAX_BYTES);
    else
        rc = config_parse_string(data, len, path, out, err);
    free(data);
    return rc;
}

const char *config_get(const config_t *c, const char *key)
{
    const config_entry_t *e = config_find(c, key);
    return e ? e->value : NULL;
}

int config_line(const config_t *c, const char *key)
{
    const config_entry_t *e = config_find(c, key);
    return e ? e->line : 0;
}

const char *config_name(const config_t *c)
{
    return c->name;
}

size_t config_count(const config_t *c)
{
    return c ? c->n : 0;
}

const char *config_key(const config_t *c, size_t i)
{
    return i < c->n ? c->v[i].key : NULL;
}

const char *config_value(const config_t *c, size_t i)
{
    return i < c->n ? c->v[i].value : NULL;
}

/* Levenshtein distance, giving up (returning limit + 1) once it must exceed
 * limit: suggestions only matter for near misses. */
static size_t config_distance(const char *a, const char *b, size_t limit)
{
    size_t la = strlen(a), lb = strlen(b);
    if ((la > lb ? la - lb : lb - la) > limit)
        return limit + 1;
    size_t *row = xmalloc((lb + 1) * sizeof(*row));
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        size_t best = row[0];
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = diag + (a[i - 1] != b[j - 1]);
            size_t del = up + 1, ins = row[j - 1] + 1;
            size_t v = cost < del ? cost : del;
            row[j] = v < ins ? v : ins;
            diag = up;
            if (row[j] < best)
                best = row[j];
        }
        if (best > limit) {
            free(row);
            return limit + 1;
        }
    }
    size_t d = row[lb];
    free(row);
    return d;
}

int config_check_known(const config_t *c, const char *const *known, err_t *err)
{
    for (size_t i = 0; i < c->n; i++) {
        const char *key = c->v[i].key;
        bool ok = false;
        for (const char *const *k = known; *k && !ok; k++)
            ok = strcmp(*k, key) == 0;
        if (ok)
            continue;
        const char *best = NULL;
        size_t best_d = SIZE_MAX;
        for (const char *const *k = known; *k; k++) {
            size_t klen = strlen(*k);
            size_t limit = klen / 3 > 2 ? klen / 3 : 2;
            size_t d = config_distance(key, *k, limit);
            if (d <= limit && d < best_d) {
                best = *k;
                best_d = d;
            }
        }
        if (best)
            return err_set(err, -EINVAL, "%s:%d: unknown key \"%s\" (did you mean \"%s\"?)",
                           c->name, c->v[i].line, key, best);
        return err_set(err, -EINVAL, "%s:%d: unknown key \"%s\"", c->name, c->v[i].line, key);
    }
    return 0;
}

/* Common shape of a typed getter's failure. */
static int config_bad_value(const config_t *c, const config_entry_t *e, const char *want,
                            err_t *err)
{
    return err_set(err, -EINVAL, "%s:%d: %s: expected %s, got \"%s\"", c->name, e->line, e->key,
                   want, e->value);
}

int config_get_i64(const config_t *c, const char *key, int64_t min, int64_t max, int64_t *out,
                   err_t *err)
{
    const config_entry_t *e = config_find(c, key);
    if (!e)
        return 0;
    int64_t v;
    int rc = str_to_i64(e->value, min, max, &v);
    if (rc == -ERANGE)
        return err_set(err, -EINVAL, "%s:%d: %s: %s is out of range [%lld, %lld]", c->name, e->line,
                       key, e->value, (long long)min, (long long)max);
    if (rc)
        return config_bad_value(c, e, "an integer", err);
    *out = v;
    return 0;
}

int config_get_duration_ms(const config_t *c, const char *key, int64_t *out, err_t *err)
{
    const config_entry_t *e = config_find(c, key);
    if (!e)
        return 0;
    int64_t v;
    if (str_to_duration_ms(e->value, &v))
        return config_bad_value(c, e, "a duration like 250ms, 30s, 5m or 1h", err);
    *out = v;
    return 0;
}

int config_get_size(const config_t *c, const char *key, size_t *out, err_t *err)
{
    const config_entry_t *e = config_find(c, key);
    if (!e)
        return 0;
    size_t v;
    if (str_to_size(e->value, &v))
        return config_bad_value(c, e, "a size like 512, 64k, 1m or 2g", err);
    *out = v;
    return 0;
}

int config_get_bool(const config_t *c, const char *key, bool *out, err_t *err)
{
    const config_entry_t *e = config_find(c, key);
    if (!e)
        return 0;
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcmp(e->value, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(e->value, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return config_bad_value(c, e, "true or false", err);
}
