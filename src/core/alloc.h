/* alloc: checked allocation. An allocation failure in drover is not
 * recoverable in any useful way (every path would need a fallback that is
 * never tested), so, like Redis' zmalloc, these abort with a message instead
 * of returning NULL. Callers never check for NULL. */
#ifndef DROVER_CORE_ALLOC_H
#define DROVER_CORE_ALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* malloc'd printf; never NULL. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Copy n bytes into a new buffer with a trailing NUL (so it can be used as a
 * string when the bytes have no NUL). */
char *xmemdup(const void *p, size_t n);

#endif
