/* spec_int: helpers shared by the files of src/spec (not a public API). */
#ifndef DROVER_SPEC_INT_H
#define DROVER_SPEC_INT_H

#include "core/buf.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Longest part of an object key shown in a JSON path; longer keys are cut
 * (at a UTF-8 boundary) and end in "...". */
#define SPEC_PATH_KEY_MAX 128
/* Bound on a whole JSON path. */
#define SPEC_PATH_MAX 4096

/* Append ".key" (identifier-like keys, '-' allowed) or ["key"] (anything
 * else, JSON-escaped) to the path in `p`. Truncation by the buffer bound is
 * silent: a path is a diagnostic, never parsed back. */
void spec_path_key(buf_t *p, const char *key);
/* Append "[i]". */
void spec_path_index(buf_t *p, size_t i);
/* Cut `p` back to `len` bytes (a length it had before). */
void spec_path_trim(buf_t *p, size_t len);

/* True when s[0..n) is exactly one JSON number (RFC 8259 grammar). */
bool spec_is_json_number(const char *s, size_t n);
/* True when s[0..n) is valid UTF-8 (no overlongs, no surrogates). */
bool spec_utf8_valid(const char *s, size_t n);
/* Equality for diffs: as json_equal, except that an integer and a real of
 * the same value are equal. */
bool spec_json_same(const json_t *a, const json_t *b);

#endif
