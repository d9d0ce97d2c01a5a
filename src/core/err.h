/* err: the one error idiom of drover.
 *
 * Functions return 0 on success or a negative errno value on failure, and
 * fill an optional err_t with a human message naming what went wrong (a JSON
 * path, a header, a key). Callers that do not need the message pass NULL.
 * The message is built only on the failure path, so the success path costs
 * nothing. */
#ifndef DROVER_CORE_ERR_H
#define DROVER_CORE_ERR_H

#include <stddef.h>

#define ERR_MSG_MAX 512

typedef struct err {
    int code;              /* negative errno, 0 when no error */
    char msg[ERR_MSG_MAX]; /* NUL-terminated, never longer than ERR_MSG_MAX-1 */
} err_t;

/* Record an error and return `code` (a negative errno) so a failing path can
 * be written `return err_set(err, -EINVAL, "bad port %d", p);`. `err` may be
 * NULL. */
int err_set(err_t *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefix the existing message with more context ("reading config: ...").
 * Returns err->code (or `code` if err is NULL). */
int err_wrap(err_t *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

void err_clear(err_t *err);

/* Message of `err` if set, else strerror(-code). Never NULL. */
const char *err_str(const err_t *err, int code);

#endif
