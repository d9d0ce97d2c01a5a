/* config: the `drover server --config FILE` file format.
 *
 *     # comment
 *     data-dir = /var/lib/drover
 *     listen 0.0.0.0:7400          # a comment after whitespace
 *     banner = "say \"hi\"\n"
 *
 * One setting per line: a key of [a-z0-9-], then `=` and/or whitespace,
 * then the value. A value runs to the end of the line or to a `#` that
 * follows whitespace, trailing whitespace dropped; a value in double quotes
 * may hold anything, with \" \\ and \n escapes. Blank lines and full-line
 * `#` comments are ignored; CRLF line ends are accepted. Files are at most
 * CONFIG_MAX_BYTES. A key may appear once.
 *
 * Every error names "file:line: what is wrong", so a user can go straight to
 * the line. A config_t is immutable after loading and may be read from any
 * thread. */
#ifndef DROVER_CORE_CONFIG_H
#define DROVER_CORE_CONFIG_H

#include "core/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_BYTES ((size_t)1 << 20)

typedef struct config config_t;

/* Read and parse `path`. On success *out is a new config the caller frees
 * with config_free; on failure *out is NULL and err says why: -ENOENT and
 * friends from open/read ("cannot read drover.conf: No such file or
 * directory"), -EFBIG over CONFIG_MAX_BYTES, -EINVAL for a syntax error
 * ("drover.conf:7: unterminated quoted value"). */
int config_load(const char *path, config_t **out, err_t *err);
/* Parse n bytes of text; `name` stands for the file in error messages. */
int config_parse_string(const char *text, size_t n, const char *name, config_t **out, err_t *err);
void config_free(config_t *c);

/* The value of key, or NULL when it is not set. Owned by c. */
const char *config_get(const config_t *c, const char *key);
/* Line on which key is set, or 0. For callers' own errors: "%s:%d: ...". */
int config_line(const config_t *c, const char *key);
/* The name given at load/parse (the path for config_load). */
const char *config_name(const config_t *c);

/* Keys in file order: for (size_t i = 0; i < config_count(c); i++)
 * config_key(c, i) ... Owned by c. */
size_t config_count(const config_t *c);
const char *config_key(const config_t *c, size_t i);
const char *config_value(const config_t *c, size_t i);

/* Check every key is one of `known` (a NULL-terminated list). The first
 * unknown key, in file order, is an error: -EINVAL with
 * "file:line: unknown key "dta-dir" (did you mean "data-dir"?)". */
int config_check_known(const config_t *c, const char *const *known, err_t *err);

/* Typed getters: leave *out alone and return 0 when key is not set (so the
 * caller's default stands); -EINVAL naming file, line, key and the expected
 * form when the value does not parse. */
int config_get_i64(const config_t *c, const char *key, int64_t min, int64_t max, int64_t *out,
                   err_t *err);
/* "250ms", "30s", "5m", "1h" or seconds, in milliseconds. */
int config_get_duration_ms(const config_t *c, const char *key, int64_t *out, err_t *err);
/* "512", "64k", "1m", "2g". */
int config_get_size(const config_t *c, const char *key, size_t *out, err_t *err);
/* true/false, yes/no, on/off, 1/0. */
int config_get_bool(const config_t *c, const char *key, bool *out, err_t *err);

#endif
