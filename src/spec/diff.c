/* diff.c: what changes between two versions of a spec, by JSON path.
 *
 * Used by `drover diff` and by deployments to show (and record) what a new
 * version changes. Arrays are compared by index, not by content matching:
 * the arrays of a spec (health checks, port mappings, routes) are short and
 * ordered, and portIndex-style references make the index the identity. */
#include "spec/spec.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "spec/spec_int.h"

#include <stdlib.h>
#include <string.h>

static void push(json_t *out, const buf_t *path, const char *op, const json_t *old,
                 const json_t *new_)
{
    json_t *e = json_pack("{s:s, s:s}", "path", path->data, "op", op);
    if (!e)
        return;
    if (old)
        json_object_set(e, "old", (json_t *)old);
    if (new_)
        json_object_set(e, "new", (json_t *)new_);
    json_array_append_new(out, e);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Keys of an object, sorted, so diffs come out in a stable order whatever
 * order the documents were written in. */
static const char **sorted_keys(const json_t *o, size_t *n)
{
    *n = json_object_size(o);
    const char **keys = xcalloc(*n ? *n : 1, sizeof(*keys));
    size_t i = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v) keys[i++] = k;
    qsort(keys, *n, sizeof(*keys), cmp_str);
    return keys;
}

static void diff_rec(json_t *out, buf_t *path, const json_t *a, const json_t *b)
{
    size_t mark = path->len;
    if (json_is_object(a) && json_is_object(b)) {
        size_t na, nb, i = 0, j = 0;
        const char **ka = sorted_keys(a, &na), **kb = sorted_keys(b, &nb);
        while (i < na || j < nb) {
            int c = i == na ? 1 : j == nb ? -1 : strcmp(ka[i], kb[j]);
            const char *key = c <= 0 ? ka[i] : kb[j];
            spec_path_key(path, key);
            if (c < 0)
                push(out, path, "remove", json_object_get(a, key), NULL);
            else if (c > 0)
                push(out, path, "add", NULL, json_object_get(b, key));
            else
                diff_rec(out, path, json_object_get(a, key), json_object_get(b, key));
            spec_path_trim(path, mark);
            i += c <= 0;
            j += c >= 0;
        }
        free(ka);
        free(kb);
        return;
    }
    if (json_is_array(a) && json_is_array(b)) {
        size_t na = json_array_size(a), nb = json_array_size(b);
        for (size_t i = 0; i < na || i < nb; i++) {
            spec_path_index(path, i);
            if (i >= nb)
                push(out, path, "remove", json_array_get(a, i), NULL);
            else if (i >= na)
                push(out, path, "add", NULL, json_array_get(b, i));
            else
                diff_rec(out, path, json_array_get(a, i), json_array_get(b, i));
            spec_path_trim(path, mark);
        }
        return;
    }
    if (!spec_json_same(a, b))
        push(out, path, "change", a, b);
}

/* Everything in `v` added (or removed): one entry per member of an object,
 * which reads better than one entry holding the whole document. */
static void diff_all(json_t *out, buf_t *path, const json_t *v, bool add)
{
    if (!json_is_object(v)) {
        push(out, path, add ? "add" : "remove", add ? NULL : v, add ? v : NULL);
        return;
    }
    size_t n, mark = path->len;
    const char **keys = sorted_keys(v, &n);
    for (size_t i = 0; i < n; i++) {
        spec_path_key(path, keys[i]);
        const json_t *m = json_object_get(v, keys[i]);
        push(out, path, add ? "add" : "remove", add ? NULL : m, add ? m : NULL);
        spec_path_trim(path, mark);
    }
    free(keys);
}

json_t *spec_diff(const json_t *old, const json_t *new_)
{
    json_t *out = json_array();
    buf_t path = BUF_INIT(SPEC_PATH_MAX);
    buf_append_str(&path, "$");
    if (!old && new_)
        diff_all(out, &path, new_, true);
    else if (old && !new_)
        diff_all(out, &path, old, false);
    else if (old && new_)
        diff_rec(out, &path, old, new_);
    buf_free(&path);
    return out;
}
