/* frame: the SDK's own msgpack-RPC framing (private to lib/worker/).
 *
 * The SDK is a public library and does not link drover's src/, so it reads
 * the message stream itself: dw_scan finds where a message ends and
 * enforces the size and depth limits from the msgpack headers alone, before
 * msgpack-c sees the bytes (msgpack-c allocates an array's storage as soon
 * as it reads the array's header, so 5 hostile bytes could otherwise ask
 * for gigabytes). dw_msg_parse then unpacks one complete message and checks
 * its shape [channel, type, args(, headers)].
 */
#ifndef DROVER_LIB_WORKER_FRAME_H
#define DROVER_LIB_WORKER_FRAME_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DW_MAX_DEPTH 32

/* Resumable scan over a buffer that holds the current message from its
 * first byte (the buffer may grow between calls, never shrink). */
typedef struct dw_scan {
    size_t pos;                      /* offset of the next header to read */
    uint64_t left[DW_MAX_DEPTH + 1]; /* objects left per open level */
    unsigned depth;                  /* open levels, 0 before the message */
} dw_scan_t;

void dw_scan_reset(dw_scan_t *s);

/* 1 with *msg_len set when buf holds a complete message; 0 when more
 * bytes are needed; -EMSGSIZE when the message is bigger than max;
 * -EPROTO for a byte that starts no msgpack object (0xc1) or nesting
 * deeper than DW_MAX_DEPTH. */
int dw_scan_next(dw_scan_t *s, const unsigned char *buf, size_t len, size_t max, size_t *msg_len);

/* One validated message; pointers into the zone of the unpacked result. */
typedef struct dw_msg {
    uint64_t channel;
    uint64_t type;
    const msgpack_object *args;
    size_t nargs;
    const msgpack_object *headers; /* validated [str, str|bin] pairs */
    size_t nheaders;
} dw_msg_t;

/* Unpacks buf[0..len) (one complete message, as found by dw_scan_next) into
 * res and checks the shape. -EPROTO with a reason in why. */
int dw_msg_parse(msgpack_unpacked *res, const unsigned char *buf, size_t len, dw_msg_t *m,
                 char *why, size_t whylen);

/* A str or bin object's bytes; false for any other type. */
bool dw_obj_bytes(const msgpack_object *o, const char **p, size_t *len);

/* A growable byte queue: bytes [off, len) are pending. */
typedef struct dw_buf {
    char *data;
    size_t off, len, cap;
} dw_buf_t;

void dw_buf_append(dw_buf_t *b, const void *p, size_t n);
void dw_buf_consume(dw_buf_t *b, size_t n);
void dw_buf_free(dw_buf_t *b);
static inline size_t dw_buf_pending(const dw_buf_t *b)
{
    return b->len - b->off;
}

/* msgpack_packer write callback appending to a dw_buf_t. */
int dw_buf_pack_write(void *data, const char *buf, size_t len);

/* Allocation that aborts on out of memory (the SDK never returns NULL). */
void *dw_malloc(size_t n);
void *dw_realloc(void *p, size_t n);
char *dw_strndup(const char *s, size_t n);

#endif
