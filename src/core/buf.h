/* buf: a growable byte buffer with a hard upper bound. Every buffer that
 * holds outside input has a limit, so a peer can never make drover grow
 * without bound; appending past the limit fails with -ENOBUFS and leaves the
 * buffer unchanged. The data is always NUL-terminated (not counted in len) so
 * text can be used as a C string. */
#ifndef DROVER_CORE_BUF_H
#define DROVER_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct buf {
    char *data; /* NULL until the first append */
    size_t len;
    size_t cap;
    size_t max; /* bound on len; 0 means SIZE_MAX/2 */
} buf_t;

#define BUF_INIT(max_)                                                                             \
    {                                                                                              \
        NULL, 0, 0, (max_)                                                                         \
    }

void buf_init(buf_t *b, size_t max);
void buf_free(buf_t *b);
/* Keep the allocation, drop the contents. */
void buf_reset(buf_t *b);
int buf_append(buf_t *b, const void *p, size_t n);
int buf_append_str(buf_t *b, const char *s);
int buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(buf_t *b, const char *fmt, va_list ap);
/* Remove the first n bytes (n <= len). */
void buf_consume(buf_t *b, size_t n);
/* Hand the bytes to the caller (malloc'd, NUL-terminated, never NULL) and
 * leave the buffer empty. */
char *buf_steal(buf_t *b, size_t *len);

#endif
