/* Fuzz spec_validate: bytes -> JSON -> validate. Besides not crashing or
 * leaking, checks the contract: errors XOR app, and normalizing is
 * idempotent (a normalized spec validates to itself). */
#include "spec/spec.h"

#include "core/alloc.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *in =
        json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
    if (!in) {
        /* the id rules see raw bytes too */
        if (size < 512) {
            char *s = xmemdup(data, size);
            char *out = NULL;
            err_t err;
            if (spec_id_normalize(s, &out, &err) == 0 && (!out || out[0] != '/'))
                abort();
            free(out);
            free(s);
        }
        return 0;
    }
    char *before = json_dumps(in, JSON_SORT_KEYS | JSON_ENCODE_ANY);
    spec_result_t r;
    int rc = spec_validate(in, &r);
    if (!r.errors || !r.warnings)
        abort();
    if (rc == 0) {
        if (!r.app || json_array_size(r.errors))
            abort();
        spec_result_t r2;
        if (spec_validate(r.app, &r2) != 0 || !json_equal(r2.app, r.app))
            abort();
        spec_result_free(&r2);
        json_t *d = spec_diff(in, r.app);
        json_decref(d);
    } else {
        if (rc != -EINVAL || r.app || json_array_size(r.errors) == 0)
            abort();
    }
    char *after = json_dumps(in, JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (strcmp(before, after) != 0)
        abort();
    free(before);
    free(after);
    spec_result_free(&r);
    json_decref(in);
    return 0;
}
