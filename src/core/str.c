#include "core/str.h"

#include "core/alloc.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int str_to_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !*s || isspace((unsigned char)*s) || *s == '+')
        return -EINVAL;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0')
        return -EINVAL;
    if (errno == ERANGE || v < min || v > max)
        return -ERANGE;
    *out = (int64_t)v;
    return 0;
}

/* Split "123unit" / "1.5unit" into the number and its suffix. Plain
 * decimals only: strtod alone would also take "nan", "inf", hex and
 * exponents, none of which is a sane duration or size. */
static int str_number_suffix(const char *s, double *num, const char **suffix)
{
    if (!s || !isdigit((unsigned char)*s))
        return -EINVAL;
    size_t n = 0, dots = 0;
    while (isdigit((unsigned char)s[n]) || s[n] == '.') {
        dots += s[n] == '.';
        n++;
    }
    if (dots > 1 || s[n - 1] == '.' || n > 40)
        return -EINVAL;
    char digits[48];
    memcpy(digits, s, n);
    digits[n] = '\0';
    errno = 0;
    double v = strtod(digits, NULL);
    if (errno == ERANGE)
        return -ERANGE;
    *num = v;
    *suffix = s + n;
    return 0;
}

int str_to_duration_ms(const char *s, int64_t *out)
{
    double v;
    const char *u;
    if (str_number_suffix(s, &v, &u))
        return -EINVAL;
    double mult;
    if (!*u || strcmp(u, "s") == 0)
        mult = 1000;
    else if (strcmp(u, "ms") == 0)
        mult = 1;
    else if (strcmp(u, "m") == 0)
        mult = 60000;
    else if (strcmp(u, "h") == 0)
        mult = 3600000;
    else
        return -EINVAL;
    double ms = v * mult;
    if (ms > 9.0e15)
        return -ERANGE;
    *out = (int64_t)ms;
    return 0;
}

int str_to_size(const char *s, size_t *out)
{
    double v;
    const char *u;
    if (str_number_suffix(s, &v, &u))
        return -EINVAL;
    double mult;
    switch (tolower((unsigned char)*u)) {
    case '\0': mult = 1; break;
    case 'k': mult = 1024.0; break;
    case 'm': mult = 1024.0 * 1024; break;
    case 'g': mult = 1024.0 * 1024 * 1024; break;
    default: return -EINVAL;
    }
    if (*u && u[1] && !(tolower((unsigned char)u[1]) == 'b' && !u[2]) &&
        !(tolower((unsigned char)u[1]) == 'i' && tolower((unsigned char)u[2]) == 'b' && !u[3]))
        return -EINVAL;
    double n = v * mult;
    if (n > 1.0e18)
        return -ERANGE;
    *out = (size_t)n;
    return 0;
}

bool str_has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool str_has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

static int str_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

char *str_url_decode(const char *s, size_t n, size_t *out_len)
{
    char *out = xmalloc(n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (n - i < 3) {
                free(out);
                return NULL;
            }
            int hi = str_hexval(s[i + 1]), lo = str_hexval(s[i + 2]);
            if (hi < 0 || lo < 0) {
                free(out);
                return NULL;
            }
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0') {
            free(out);
            return NULL;
        }
        out[j++] = c;
    }
    out[j] = '\0';
    if (out_len)
        *out_len = j;
    return out;
}

int str_split_hostport(const char *s, char **host, int *port)
{
    const char *colon;
    const char *hs = s;
    size_t hl;
    if (*s == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return -EINVAL;
        hs = s + 1;
        hl = (size_t)(close - hs);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        /* An IPv6 address must be bracketed, or "::1:80" would be ambiguous. */
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return -EINVAL;
        hl = (size_t)(colon - s);
    }
    int64_t p;
    if (!isdigit((unsigned char)colon[1]) || str_to_i64(colon + 1, 0, 65535, &p))
        return -EINVAL;
    *host = xstrndup(hs, hl);
    *port = (int)p;
    return 0;
}
