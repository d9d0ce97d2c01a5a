/* template.c: `$name` placeholders in spec templates.
 *
 * The template is JSON text, not a JSON document (`"instances": $instances`
 * does not parse before filling), so this is a small scanner over bytes
 * that only tracks whether it is inside a JSON string: that decides whether
 * a value is escaped into the string or written as a JSON token. */
#include "spec/spec.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "spec/spec_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Distinct missing names tracked for de-duplication; more are counted. */
#define MISSING_MAX 64
/* Room kept in err->msg for the problem list. */
#define PROBLEMS_MAX (ERR_MSG_MAX - 64)

typedef struct fill {
    buf_t out;
    buf_t problems; /* "line N: ..." lines, '\n'-separated */
    size_t n_problems, n_dropped;
    struct {
        const char *name;
        size_t len;
    } missing[MISSING_MAX];
    size_t n_missing;
    bool overflow;
} fill_t;

static bool name_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

static bool name_char(char ch)
{
    return name_start(ch) || (ch >= '0' && ch <= '9');
}

static bool braced_char(char ch)
{
    return name_char(ch) || ch == '.' || ch == '-';
}

static void out_append(fill_t *f, const char *p, size_t n)
{
    if (!f->overflow && buf_append(&f->out, p, n) < 0)
        f->overflow = true;
}

/* Keep every problem for the one error message, but only as many as fit:
 * the rest are counted and summarized. */
static void problem(fill_t *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(fill_t *f, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    f->n_problems++;
    if (f->problems.len + strlen(line) + 1 > PROBLEMS_MAX) {
        f->n_dropped++;
        return;
    }
    if (f->problems.len)
        buf_append_str(&f->problems, "\n");
    buf_append_str(&f->problems, line);
}

/* Append `v` JSON-escaped (no quotes). */
static void append_escaped(fill_t *f, const char *v, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        const char *esc = NULL;
        char u[8];
        switch (ch) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (ch < 0x20) {
                snprintf(u, sizeof(u), "\\u%04x", ch);
                esc = u;
            }
        }
        if (!esc)
            continue;
        out_append(f, v + run, i - run);
        out_append(f, esc, strlen(esc));
        run = i + 1;
    }
    out_append(f, v + run, n - run);
}

static const spec_var_t *find_var(const spec_var_t *vars, size_t n_vars, const char *name,
                                  size_t len)
{
    for (size_t i = n_vars; i-- > 0;)
        if (vars[i].name && strlen(vars[i].name) == len && memcmp(vars[i].name, name, len) == 0)
            return &vars[i];
    return NULL;
}

/* An unset upper-case name inside a string ("cmd": "serve --port $PORT0")
 * is an environment variable for the instance's shell, not a template
 * variable: Marathon files use them and must deploy unchanged. Template
 * variables are lower-case by convention ($environment, $instances). */
static bool env_style(const char *name, size_t len)
{
    for (size_t k = 0; k < len; k++) {
        char c = name[k];
        if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return len > 0;
}

static void report_missing(fill_t *f, const char *name, size_t len, size_t line)
{
    for (size_t i = 0; i < f->n_missing; i++)
        if (f->missing[i].len == len && memcmp(f->missing[i].name, name, len) == 0)
            return;
    if (f->n_missing == MISSING_MAX) {
        f->n_problems++;
        f->n_dropped++;
        return;
    }
    f->missing[f->n_missing].name = name;
    f->missing[f->n_missing].len = len;
    f->n_missing++;
    int n = len > 64 ? 64 : (int)len;
    problem(f, "line %zu: variable $%.*s is not set (use --var %.*s=VALUE)", line, n, name, n,
            name);
}

static void substitute(fill_t *f, const spec_var_t *var, bool in_string, size_t line)
{
    const char *v = var->value ? var->value : "";
    size_t n = strlen(v);
    if (!spec_utf8_valid(v, n)) {
        int k = (int)(strlen(var->name) > 64 ? 64 : strlen(var->name));
        problem(f, "line %zu: the value of variable $%.*s is not valid UTF-8", line, k, var->name);
        return;
    }
    if (in_string) {
        append_escaped(f, v, n);
    } else if (spec_is_json_number(v, n) || strcmp(v, "true") == 0 || strcmp(v, "false") == 0 ||
               strcmp(v, "null") == 0) {
        /* Numbers and JSON literals go in bare so `"forcePullImage": $pull`
         * can be templated; anything else becomes a string. */
        out_append(f, v, n);
    } else {
        out_append(f, "\"", 1);
        append_escaped(f, v, n);
        out_append(f, "\"", 1);
    }
}

int spec_template_fill(const char *text, size_t len, const spec_var_t *vars, size_t n_vars,
                       char **out, size_t *out_len, err_t *err)
{
    *out = NULL;
    if (out_len)
        *out_len = 0;
    fill_t f = {.out = BUF_INIT(SPEC_TEMPLATE_OUT_MAX), .problems = BUF_INIT(ERR_MSG_MAX)};
    bool in_string = false;
    size_t line = 1, i = 0;
    while (i < len) {
        char ch = text[i];
        if (ch != '$') {
            /* Copy a run of ordinary bytes, tracking strings and lines. */
            size_t start = i;
            while (i < len && text[i] != '$') {
                char b = text[i];
                if (b == '\n')
                    line++;
                if (in_string && b == '\\' && i + 1 < len && text[i + 1] != '$') {
                    if (text[i + 1] == '\n')
                        line++;
                    i += 2;
                    continue;
                }
                if (b == '"')
                    in_string = !in_string;
                i++;
            }
            out_append(&f, text + start, i - start);
            continue;
        }
        if (i + 1 < len && text[i + 1] == '$') {
            out_append(&f, "$", 1);
            i += 2;
            continue;
        }
        size_t name_at, name_len, next;
        if (i + 1 < len && text[i + 1] == '{') {
            size_t j = i + 2;
            while (j < len && braced_char(text[j]))
                j++;
            if (j >= len || text[j] != '}' || j == i + 2) {
                problem(&f,
                        "line %zu: \"${\" must be followed by a name and \"}\" (write $$ for "
                        "a literal $)",
                        line);
                i = j;
                continue;
            }
            name_at = i + 2;
            name_len = j - name_at;
            next = j + 1;
        } else if (i + 1 < len && name_start(text[i + 1])) {
            size_t j = i + 1;
            while (j < len && name_char(text[j]))
                j++;
            name_at = i + 1;
            name_len = j - name_at;
            next = j;
        } else {
            out_append(&f, "$", 1);
            i++;
            continue;
        }
        const spec_var_t *var = find_var(vars, n_vars, text + name_at, name_len);
        if (var)
            substitute(&f, var, in_string, line);
        else if (in_string && env_style(text + name_at, name_len))
            out_append(&f, text + i, next - i); /* $PORT0 in a cmd: the shell's */
        else
            report_missing(&f, text + name_at, name_len, line);
        i = next;
    }

    int rc = 0;
    if (f.n_problems) {
        if (f.n_dropped)
            err_set(err, -EINVAL, "%s\n... and %zu more problem(s)",
                    f.problems.data ? f.problems.data : "", f.n_dropped);
        else
            err_set(err, -EINVAL, "%s", f.problems.data);
        rc = -EINVAL;
    } else if (f.overflow) {
        rc = err_set(err, -E2BIG, "the filled template is larger than %u bytes",
                     SPEC_TEMPLATE_OUT_MAX);
    }
    buf_free(&f.problems);
    if (rc) {
        buf_free(&f.out);
        return rc;
    }
    *out = buf_steal(&f.out, out_len);
    return 0;
}
