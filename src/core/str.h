/* str: string parsing that reports errors instead of guessing (no atoi),
 * and small helpers used across modules. */
#ifndef DROVER_CORE_STR_H
#define DROVER_CORE_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Whole-string decimal parse; -EINVAL on junk or empty, -ERANGE outside
 * [min, max]. */
int str_to_i64(const char *s, int64_t min, int64_t max, int64_t *out);
/* Parse a duration: "250ms", "30s", "5m", "1h" or a bare number of seconds.
 * Result in milliseconds. */
int str_to_duration_ms(const char *s, int64_t *out);
/* Parse a size: "512", "64k", "1m", "2g" (binary units). */
int str_to_size(const char *s, size_t *out);
bool str_has_prefix(const char *s, const char *prefix);
bool str_has_suffix(const char *s, const char *suffix);
/* Percent-decode n bytes of `s` ('+' stays '+'); malloc'd, NUL-terminated.
 * Returns NULL for a malformed escape or an embedded NUL. */
char *str_url_decode(const char *s, size_t n, size_t *out_len);
/* Split "host:port" (IPv6 as "[::1]:7400"). host is malloc'd. */
int str_split_hostport(const char *s, char **host, int *port);

#endif
