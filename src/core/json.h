/* json: helpers on jansson shared by the API, spec and CLI code. */
#ifndef DROVER_CORE_JSON_H
#define DROVER_CORE_JSON_H

#include "core/err.h"

#include <jansson.h>
#include <stddef.h>

/* Serialise with sorted keys, no whitespace and reals at 15 significant
 * digits (0.05, not 0.050000000000000003): two equal documents give
 * equal bytes, which is what version comparison and hashing rely on.
 * malloc'd; never NULL for a valid value. */
char *json_canonical(const json_t *v, size_t *len);
/* Parse n bytes; on failure fills err with "invalid JSON at line L column C: reason". */
json_t *json_parse(const char *s, size_t n, err_t *err);
/* obj[key] as string, or NULL when missing or not a string. */
const char *json_str(const json_t *obj, const char *key);
/* Append {"path": path, "reason": printf(...)} to the array `errors`. */
void json_error_push(json_t *errors, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
