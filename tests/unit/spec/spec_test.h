/* Helpers shared by the spec unit tests (static, header-only). */
#ifndef DROVER_TEST_SPEC_H
#define DROVER_TEST_SPEC_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "spec/spec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parse JSON written with single quotes (test documents read better that
 * way; none of them needs a literal apostrophe). */
static inline json_t *jq(const char *s)
{
    char *t = xstrdup(s);
    for (char *p = t; *p; p++)
        if (*p == '\'')
            *p = '"';
    json_error_t je;
    json_t *v = json_loads(t, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!v)
        fail_msg("bad test JSON (%s) at %d:%d: %s", je.text, je.line, je.column, t);
    free(t);
    return v;
}

/* Read a repo file whether the test runs from the repo root or elsewhere
 * (the path of this source file locates the root). */
static inline char *read_repo_file(const char *rel, size_t *len)
{
    char path[1024];
    FILE *f = fopen(rel, "rb");
    if (!f) {
        const char *me = __FILE__; /* tests/unit/spec/spec_test.h */
        const char *cut = strstr(me, "tests/unit/spec/");
        snprintf(path, sizeof(path), "%.*s%s", cut ? (int)(cut - me) : 0, me, rel);
        f = fopen(path, "rb");
    }
    if (!f)
        fail_msg("cannot open %s", rel);
    char *buf = xmalloc(1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static inline void dump_issues(const char *what, const json_t *list)
{
    char *s = json_dumps(list, JSON_INDENT(1));
    fprintf(stderr, "%s: %s\n", what, s);
    free(s);
}

/* Index of the issue at exactly `path` whose reason contains `reason`
 * (NULL: any reason), or -1. */
static inline int find_issue(const json_t *list, const char *path, const char *reason)
{
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *e = json_array_get(list, i);
        const char *p = json_string_value(json_object_get(e, "path"));
        const char *r = json_string_value(json_object_get(e, "reason"));
        if (p && r && strcmp(p, path) == 0 && (!reason || strstr(r, reason)))
            return (int)i;
    }
    return -1;
}

/* Validate `doc`; it must fail with an error at `path` whose reason
 * contains `reason`. */
static inline void expect_error_at(const char *doc, const char *path, const char *reason,
                                   const char *file, int line)
{
    json_t *in = jq(doc);
    spec_result_t r;
    int rc = spec_validate(in, &r);
    if (rc != -EINVAL || find_issue(r.errors, path, reason) < 0) {
        dump_issues("errors", r.errors);
        fail_msg("%s:%d: expected error at %s containing \"%s\" (rc %d) for %s", file, line, path,
                 reason ? reason : "", rc, doc);
    }
    assert_null(r.app);
    spec_result_free(&r);
    json_decref(in);
}
#define expect_error(doc, path, reason) expect_error_at(doc, path, reason, __FILE__, __LINE__)

/* Validate `doc`; it must pass. Returns the result (caller frees). */
static inline spec_result_t expect_valid_at(const char *doc, const char *file, int line)
{
    json_t *in = jq(doc);
    spec_result_t r;
    int rc = spec_validate(in, &r);
    if (rc != 0) {
        dump_issues("errors", r.errors);
        fail_msg("%s:%d: expected valid: %s", file, line, doc);
    }
    assert_non_null(r.app);
    assert_int_equal(json_array_size(r.errors), 0);
    json_decref(in);
    return r;
}
#define expect_valid(doc) expect_valid_at(doc, __FILE__, __LINE__)

#endif
