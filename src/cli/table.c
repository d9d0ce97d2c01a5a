/* The table printer behind every listing verb (apps, versions, kv ls).
 * Output is meant for people and for `awk`: one row per line, columns
 * aligned with spaces, header upper-cased, no colours, no trailing blanks. */
#include "cli/cli.h"

#include "core/alloc.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_GAP 3

size_t cli_text_width(const char *s)
{
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xC0) != 0x80)
            w++;
    return w;
}

/* Cells come from the server (ids, keys, values); a newline or an escape
 * sequence in one must not break the layout or drive the terminal. */
static char *table_cell(const char *s)
{
    char *c = xstrdup(s ? s : "-");
    for (unsigned char *p = (unsigned char *)c; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
    return c;
}

static void table_push(cli_table_t *t, const char *const *cells, bool upper)
{
    if (t->n_rows == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 8;
        t->cells = xrealloc(t->cells, sizeof(*t->cells) * t->cap * t->n_cols);
    }
    char **row = t->cells + t->n_rows * t->n_cols;
    for (size_t c = 0; c < t->n_cols; c++) {
        row[c] = table_cell(cells[c]);
        if (upper)
            for (char *p = row[c]; *p; p++)
                *p = (char)toupper((unsigned char)*p);
    }
    t->n_rows++;
}

void cli_table_init(cli_table_t *t, size_t n_cols, const char *const *headers)
{
    memset(t, 0, sizeof(*t));
    t->n_cols = n_cols;
    table_push(t, headers, true);
}

void cli_table_add(cli_table_t *t, const char *const *cells)
{
    table_push(t, cells, false);
}

void cli_table_print(const cli_table_t *t, FILE *out)
{
    size_t *width = xcalloc(t->n_cols, sizeof(*width));
    for (size_t r = 0; r < t->n_rows; r++)
        for (size_t c = 0; c < t->n_cols; c++) {
            size_t w = cli_text_width(t->cells[r * t->n_cols + c]);
            if (w > width[c])
                width[c] = w;
        }
    for (size_t r = 0; r < t->n_rows; r++) {
        char *const *row = t->cells + r * t->n_cols;
        /* Padding is written only before a following non-empty cell, so
         * a line never ends in blanks even when its last cells are empty. */
        size_t pending = 0;
        for (size_t c = 0; c < t->n_cols; c++) {
            if (c > 0)
                pending += TABLE_GAP;
            if (row[c][0]) {
                fprintf(out, "%*s%s", (int)pending, "", row[c]);
                pending = 0;
            }
            pending += width[c] - cli_text_width(row[c]);
        }
        fputc('\n', out);
    }
    free(width);
}

void cli_table_free(cli_table_t *t)
{
    for (size_t i = 0; i < t->n_rows * t->n_cols; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof(*t));
}
