/* rpc: msgpack RPC framing shared by the locator, the worker protocol and
 * the invocation service (docs/protocol.md is the wire reference).
 *
 * A message is the msgpack array
 *
 *     [channel, type, [args...]]            or
 *     [channel, type, [args...], [[name, value]...]]
 *
 * channel is a positive integer naming a session, type an unsigned integer
 * whose meaning depends on the session's protocol, args an array, and the
 * optional headers a list of [str, str|bin] pairs. Messages follow each
 * other on a stream socket with no other framing.
 *
 * Decoding. An rpc_decoder_t takes bytes as they arrive (any split) and
 * hands out whole, validated messages:
 *
 *     rpc_decoder_t d;
 *     rpc_decoder_init(&d, RPC_MAX_MESSAGE_DEFAULT);
 *     ... on read:
 *     rpc_decoder_feed(&d, data, n);
 *     rpc_msg_t m;
 *     err_t err;
 *     int rc;
 *     while ((rc = rpc_decoder_next(&d, &m, &err)) == 1)
 *         handle(&m);          // m valid until the next _next or _free
 *     if (rc < 0)
 *         drop the connection, log err.msg
 *     ... on close: rpc_decoder_free(&d);
 *
 * Every buffer is bounded: a message larger than max_message_bytes is
 * refused (-EMSGSIZE) as soon as its headers say so, before its bytes are
 * buffered. The decoder holds one partial message plus whatever complete
 * messages were fed and not yet taken, so callers drain with
 * rpc_decoder_next after each feed.
 *
 * Encoding appends one message to a buf_t (whose own limit applies; on any
 * failure the buffer is left as it was):
 *
 *     rpc_encode(out, ch, RPC_WRITE, "S", chunk, chunk_len);
 *     rpc_encode(out, 1, RPC_TERMINATE, "us", 1u, "normal");
 *
 * or, when args need msgpack_pack_* calls or headers are wanted:
 *
 *     rpc_enc_t e;
 *     rpc_enc_begin(&e, out, ch, RPC_INVOKE, 1, 1);   // 1 arg, 1 header
 *     msgpack_pack_str_with_body(&e.pk, "ping", 4);    // the arg
 *     rpc_enc_header(&e, "trace-id", id, id_len);      // then headers
 *     rc = rpc_enc_end(&e);
 */
#ifndef DROVER_CORE_RPC_H
#define DROVER_CORE_RPC_H

#include "core/buf.h"
#include "core/err.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Default bound on one encoded message. Writers keep chunks of streamed data
 * (HTTP bodies, logs) at or below RPC_CHUNK_MAX so a message always fits. */
#define RPC_MAX_MESSAGE_DEFAULT ((size_t)4 << 20)
#define RPC_CHUNK_MAX           ((size_t)1 << 20)
/* Smallest limit a decoder accepts (a message is at least 4 bytes). */
#define RPC_MAX_MESSAGE_MIN ((size_t)16)
/* Containers nest at most this deep in one message (msgpack-c's own limit). */
#define RPC_MAX_DEPTH 32

/* Worker protocol (docs/protocol.md). Channel 1 is control. */
#define RPC_CONTROL_CHANNEL 1
enum rpc_control_type {
    RPC_HANDSHAKE = 0, /* worker -> agent, first message: [uuid] */
    RPC_HEARTBEAT = 0, /* both ways after the handshake: [] */
    RPC_TERMINATE = 1, /* either way: [code, reason] */
};
/* Invocation channels (worker protocol, invocation service) and the
 * streaming replies of the locator. */
enum rpc_stream_type {
    RPC_INVOKE = 0, /* agent -> worker, opens the channel: [event] */
    RPC_WRITE = 0,  /* [chunk] */
    RPC_ERROR = 1,  /* [[category, code], message]; ends the sender's direction */
    RPC_CLOSE = 2,  /* []; ends the sender's direction */
};
/* Reply of a one-shot method (locator resolve, cluster): value or error,
 * either of which ends the direction. */
enum rpc_value_type {
    RPC_VALUE = 0,
    RPC_VALUE_ERROR = 1,
};
/* Locator methods (docs/protocol.md; implemented in src/locator/). */
enum rpc_locator_method {
    RPC_LOCATOR_RESOLVE = 0,
    RPC_LOCATOR_CONNECT = 1,
    RPC_LOCATOR_REFRESH = 2, /* reserved */
    RPC_LOCATOR_CLUSTER = 3,
    RPC_LOCATOR_PUBLISH = 4, /* reserved */
    RPC_LOCATOR_ROUTING = 5,
};
/* Categories of the [category, code] pair of an error message. */
enum rpc_error_category {
    RPC_ECAT_PROTOCOL = 1, /* malformed message or session misuse */
    RPC_ECAT_LOCATOR = 2,  /* name not found, no endpoints */
    RPC_ECAT_ENGINE = 3,   /* queue full, spawn failure, timeouts */
    RPC_ECAT_WORKER = 4,   /* worker died or was terminated */
    RPC_ECAT_APP = 5,      /* the application reported an error */
};

/* One decoded message. All pointers reference decoder-owned memory valid
 * until the next rpc_decoder_next or rpc_decoder_free on its decoder. */
typedef struct rpc_msg {
    uint64_t index;   /* 1-based position of the message on the stream */
    size_t size;      /* encoded size in bytes */
    uint64_t channel; /* >= 1 */
    uint64_t type;
    const msgpack_object *args; /* nargs elements (NULL when nargs is 0) */
    size_t nargs;
    /* Header pairs, already validated as [str, str|bin]; read them with
     * rpc_msg_header / rpc_msg_header_at. */
    const msgpack_object *headers;
    size_t nheaders;
} rpc_msg_t;

typedef struct rpc_header {
    const char *name; /* not NUL-terminated */
    size_t name_len;
    const char *value; /* not NUL-terminated; may hold any bytes */
    size_t value_len;
} rpc_header_t;

/* Resumable scanner over the msgpack stream. It finds message boundaries
 * and enforces the size and depth limits before msgpack-c sees the bytes,
 * because msgpack-c allocates an array's storage as soon as it reads the
 * array's header: 5 bytes claiming 2^32 elements would otherwise cost
 * gigabytes. Internal to rpc.c; public only so the decoder can be embedded. */
typedef struct rpc_scan {
    uint64_t msg_bytes;               /* bytes of the current message seen so far */
    uint64_t pending;                 /* objects announced but not started */
    uint64_t skip;                    /* payload bytes to pass over */
    uint64_t left[RPC_MAX_DEPTH + 1]; /* objects left per open level */
    unsigned depth;                   /* open levels; 0 between messages */
    unsigned char hdr[9];
    unsigned hdr_len;  /* header bytes collected */
    unsigned hdr_need; /* header bytes needed; 0 when not in a header */
    uint64_t messages; /* messages started */
} rpc_scan_t;

typedef struct rpc_decoder {
    /* all private */
    msgpack_unpacker unpacker;
    msgpack_unpacked result;
    rpc_scan_t scan;
    size_t max;
    uint64_t taken;    /* messages handed out */
    uint64_t complete; /* messages fully fed */
    size_t buffered;   /* bytes fed and not yet handed out */
    int rc;            /* sticky error: 0, or negative errno */
    bool rc_pending;   /* rc found by the scanner, reported after earlier messages */
    err_t err;         /* message of rc */
} rpc_decoder_t;

/* max_message_bytes is clamped to at least RPC_MAX_MESSAGE_MIN. Never fails
 * (aborts on OOM like xmalloc). */
void rpc_decoder_init(rpc_decoder_t *d, size_t max_message_bytes);
void rpc_decoder_free(rpc_decoder_t *d);
/* Copy n bytes into the decoder. Returns 0, or the decoder's error once it
 * has failed: -EMSGSIZE for a message over the limit, -EPROTO for bytes
 * that are not msgpack or nest too deep. Messages completed before the bad
 * one can still be taken with rpc_decoder_next, which then returns the same
 * error, so a caller may ignore this result and rely on _next alone. */
int rpc_decoder_feed(rpc_decoder_t *d, const void *bytes, size_t n);
/* 1: *msg filled; 0: need more bytes; negative errno: the stream is broken
 * (-EPROTO, -EMSGSIZE) and err says how ("message 3: channel is a string,
 * expected a positive integer"). Once failed, always returns the error. */
int rpc_decoder_next(rpc_decoder_t *d, rpc_msg_t *msg, err_t *err);
/* Bytes fed and not yet returned as messages (for read backpressure). */
size_t rpc_decoder_buffered(const rpc_decoder_t *d);

/* Encoder state for one message being appended to `out`. The packer `pk`
 * may be used directly with msgpack_pack_* between begin and end. */
typedef struct rpc_enc {
    msgpack_packer pk;
    buf_t *out;
    size_t start;      /* out->len at begin */
    int rc;            /* first failure (-ENOBUFS, -EINVAL), sticky */
    uint32_t nheaders; /* announced at begin */
    bool hdr_started;  /* the header array's own header is packed */
} rpc_enc_t;

/* Start [channel, type, [nargs args...] (, [nheaders headers...])]. Pack
 * exactly nargs objects next, then exactly nheaders rpc_enc_header calls
 * (when nheaders is 0 the message has no header element). */
void rpc_enc_begin(rpc_enc_t *e, buf_t *out, uint64_t channel, uint64_t type, uint32_t nargs,
                   uint32_t nheaders);
/* Pack args described by fmt (see rpc_encode) into a begun message. */
int rpc_enc_pack(rpc_enc_t *e, const char *fmt, ...);
/* One header pair; the value is packed as str (rpc_enc_header) or bin. */
void rpc_enc_header(rpc_enc_t *e, const char *name, const void *value, size_t len);
void rpc_enc_header_bin(rpc_enc_t *e, const char *name, const void *value, size_t len);
/* Finish: 0, -ENOBUFS when out's limit was hit, -EINVAL when the packed
 * objects do not match the counts given to begin (a programming error). On
 * failure out is restored to its length before begin. */
int rpc_enc_end(rpc_enc_t *e);

/* Append one message whose args are given by a format, one letter each:
 *   u unsigned    U uint64_t    d int    D int64_t
 *   s const char * (NUL-terminated str; NULL packs nil)
 *   S const char *, size_t (str)        b const void *, size_t (bin)
 *   t int as bool      n nil      o const msgpack_object *
 *   [ ... ] a nested array of the items inside
 * Spaces and commas are ignored. Returns 0, -ENOBUFS (out is unchanged) or
 * -EINVAL for a malformed format. */
int rpc_encode(buf_t *out, uint64_t channel, uint64_t type, const char *fmt, ...);
/* Append one message whose args are the elements of `args` (an array
 * object; NULL means no args). -EINVAL if args is not an array. */
int rpc_encode_object(buf_t *out, uint64_t channel, uint64_t type, const msgpack_object *args);

/* Reading args. Each returns 0, or -EINVAL with err naming the index and
 * the expected type ("argument 1 is a string, expected an unsigned
 * integer", "argument 2 is missing (message has 2 arguments)"). Pointers
 * share the message's lifetime; strings are not NUL-terminated. */
int rpc_args_count(const rpc_msg_t *m, size_t min, size_t max, err_t *err);
int rpc_arg(const rpc_msg_t *m, size_t i, const msgpack_object **out, err_t *err);
int rpc_arg_str(const rpc_msg_t *m, size_t i, const char **p, size_t *len, err_t *err);
/* str or bin (chunks may come as either from other implementations) */
int rpc_arg_bytes(const rpc_msg_t *m, size_t i, const char **p, size_t *len, err_t *err);
int rpc_arg_uint(const rpc_msg_t *m, size_t i, uint64_t *out, err_t *err);
int rpc_arg_int(const rpc_msg_t *m, size_t i, int64_t *out, err_t *err);
int rpc_arg_bool(const rpc_msg_t *m, size_t i, bool *out, err_t *err);
int rpc_arg_array(const rpc_msg_t *m, size_t i, const msgpack_object_array **out, err_t *err);
int rpc_arg_map(const rpc_msg_t *m, size_t i, const msgpack_object_map **out, err_t *err);

/* Headers: the first header called `name` (exact, case-sensitive match),
 * or -ENOENT. */
int rpc_msg_header(const rpc_msg_t *m, const char *name, const char **value, size_t *len);
/* Header i (i < nheaders), or -ENOENT. */
int rpc_msg_header_at(const rpc_msg_t *m, size_t i, rpc_header_t *h);

/* "a string", "an unsigned integer", ... for error messages. */
const char *rpc_object_type_name(const msgpack_object *o);

/* Pack a JSON value as msgpack: objects as maps, strings as str, integers,
 * reals, booleans and null as themselves (the agent publishes spec parts,
 * such as routes, on the locator stream this way). */
struct json_t;
void rpc_pack_json(msgpack_packer *pk, const struct json_t *v);

/* Channel ids are chosen by the side that opens sessions and strictly
 * increase, so a stale or replayed id is detectable. The opener uses
 * rpc_channels_next; the receiver calls rpc_channels_open for each channel
 * it has not seen. `last` at init is the highest id already in use (1 in
 * the worker protocol, where channel 1 is control; 0 otherwise). */
typedef struct rpc_channels {
    uint64_t last;
} rpc_channels_t;

void rpc_channels_init(rpc_channels_t *c, uint64_t last);
uint64_t rpc_channels_next(rpc_channels_t *c);
/* 0, or -EPROTO "channel 5 goes backwards (last 7)" / "channel 7 reused
 * (last 7)" when id <= the last opened one. */
int rpc_channels_open(rpc_channels_t *c, uint64_t id, err_t *err);

#endif
