/* Fuzz spec_template_fill. Input: "name=value" lines, a NUL byte, then the
 * template text (without a NUL the whole input is the template, with two
 * fixed variables). Checks that a template without '$' comes out unchanged
 * and that a filled template that parses does not upset the validator. */
#include "spec/spec.h"

#include "core/alloc.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VARS_MAX 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    const char *nul = memchr(p, '\0', size);
    spec_var_t vars[VARS_MAX];
    size_t n_vars = 0;
    char *spec = NULL;
    const char *text = p;
    size_t len = size;
    if (nul) {
        spec = xmemdup(p, (size_t)(nul - p));
        text = nul + 1;
        len = size - (size_t)(nul - p) - 1;
        for (char *line = spec; line && n_vars < VARS_MAX;) {
            char *next = strchr(line, '\n');
            if (next)
                *next++ = '\0';
            char *eq = strchr(line, '=');
            if (eq) {
                *eq = '\0';
                vars[n_vars].name = line;
                vars[n_vars].value = eq + 1;
                n_vars++;
            }
            line = next;
        }
    } else {
        vars[0] = (spec_var_t){"x", "1"};
        vars[1] = (spec_var_t){"name", "a\"b\\c\n"};
        n_vars = 2;
    }
    char *out = NULL;
    size_t out_len = 0;
    err_t err;
    int rc = spec_template_fill(text, len, vars, n_vars, &out, &out_len, &err);
    if (rc == 0) {
        if (!out || strlen(out) > out_len)
            abort();
        if (!memchr(text, '$', len) && (out_len != len || memcmp(out, text, len) != 0))
            abort();
        json_t *j = json_loadb(out, out_len, 0, NULL);
        if (j) {
            spec_result_t r;
            spec_validate(j, &r);
            spec_result_free(&r);
            json_decref(j);
        }
        free(out);
    } else if (out || (rc != -EINVAL && rc != -E2BIG)) {
        abort();
    }
    free(spec);
    return 0;
}
