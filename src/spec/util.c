#include "spec/spec_int.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Length of the longest prefix of s[0..n) that is at most `max` bytes and
 * does not end inside a UTF-8 sequence, so a cut key stays valid UTF-8 (the
 * paths end up in JSON documents, which jansson refuses otherwise). */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    size_t k = max;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    return k;
}

static bool path_ident(const char *key, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)key[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (i > 0 && ((c >= '0' && c <= '9') || c == '-'));
        if (!ok)
            return false;
    }
    return true;
}

void spec_path_key(buf_t *p, const char *key)
{
    size_t n = strlen(key);
    size_t cut = utf8_cut(key, n, SPEC_PATH_KEY_MAX);
    const char *more = cut < n ? "..." : "";
    if (path_ident(key, cut)) {
        buf_printf(p, ".%.*s%s", (int)cut, key, more);
        return;
    }
    buf_append_str(p, "[\"");
    for (size_t i = 0; i < cut; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c == '"' || c == '\\')
            buf_printf(p, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            buf_printf(p, "\\u%04x", c);
        else
            buf_append(p, &key[i], 1);
    }
    buf_printf(p, "%s\"]", more);
}

void spec_path_index(buf_t *p, size_t i)
{
    buf_printf(p, "[%zu]", i);
}

void spec_path_trim(buf_t *p, size_t len)
{
    if (p->data && len <= p->len) {
        p->len = len;
        p->data[len] = '\0';
    }
}

bool spec_is_json_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n)
        return false;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    } else {
        return false;
    }
    if (i < n && s[i] == '.') {
        i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return false;
    }
    return i == n;
}

bool spec_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((u[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (u[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

bool spec_json_same(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        if (json_is_integer(a) && json_is_integer(b))
            return json_integer_value(a) == json_integer_value(b);
        return json_number_value(a) == json_number_value(b);
    }
    if (json_typeof(a) != json_typeof(b))
        return false;
    if (json_is_array(a)) {
        size_t n = json_array_size(a);
        if (n != json_array_size(b))
            return false;
        for (size_t i = 0; i < n; i++)
            if (!spec_json_same(json_array_get(a, i), json_array_get(b, i)))
                return false;
        return true;
    }
    if (json_is_object(a)) {
        if (json_object_size(a) != json_object_size(b))
            return false;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)a, k, v)
        {
            json_t *w = json_object_get(b, k);
            if (!w || !spec_json_same(v, w))
                return false;
        }
        return true;
    }
    return json_equal(a, b);
}
