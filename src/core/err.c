#include "core/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int err_set(err_t *err, int code, const char *fmt, ...)
{
    if (!err)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    err->code = code;
    return code;
}

int err_wrap(err_t *err, int code, const char *fmt, ...)
{
    if (!err)
        return code;
    char prefix[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    char old[ERR_MSG_MAX];
    memcpy(old, err->msg, sizeof(old));
    if (!err->code)
        snprintf(old, sizeof(old), "%s", strerror(code < 0 ? -code : code));
    /* Keep at least half the buffer for the original message: it is
     * usually the more specific part. */
    size_t pl = strnlen(prefix, sizeof(err->msg) / 2);
    memcpy(err->msg, prefix, pl);
    memcpy(err->msg + pl, ": ", 2);
    size_t rest = sizeof(err->msg) - pl - 3;
    size_t ol = strnlen(old, rest);
    memcpy(err->msg + pl + 2, old, ol);
    err->msg[pl + 2 + ol] = '\0';
    if (!err->code)
        err->code = code;
    return err->code;
}

void err_clear(err_t *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = '\0';
    }
}

const char *err_str(const err_t *err, int code)
{
    if (err && err->code && err->msg[0])
        return err->msg;
    return strerror(code < 0 ? -code : code);
}
