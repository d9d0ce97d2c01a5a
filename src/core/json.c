#include "core/json.h"

#include "core/alloc.h"
#include "core/err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *json_canonical(const json_t *v, size_t *len)
{
    char *s =
        json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15));
    if (!s)
        s = xstrdup("null");
    /* jansson allocates with malloc (its default allocator), so callers
     * release the result with free(). */
    if (len)
        *len = strlen(s);
    return s;
}

json_t *json_parse(const char *s, size_t n, err_t *err)
{
    json_error_t je;
    json_t *v = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
    if (!v)
        err_set(err, -EINVAL, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
    return v;
}

const char *json_str(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

void json_error_push(json_t *errors, const char *path, const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    json_t *e = json_pack("{s:s, s:s}", "path", path, "reason", reason);
    /* jansson refuses invalid UTF-8; an error about hostile input must
     * still be reported rather than silently dropped. */
    if (!e) {
        json_t *p = json_string(path);
        e = json_pack("{s:s, s:s}", "path", p ? path : "$", "reason",
                      "(the reason contains invalid UTF-8)");
        json_decref(p);
    }
    json_array_append_new(errors, e);
}
