/* cli/invoke: `drover invoke APP EVENT [DATA|-]`, one invocation of a
 * worker app through its invocation service (docs/protocol.md section 5,
 * "Invocation service"). The verb itself is cli_cmd_invoke (cli.h); this
 * header exposes the parts that need no socket, for the unit tests. */
#ifndef DROVER_CLI_INVOKE_H
#define DROVER_CLI_INVOKE_H

#include "core/buf.h"
#include "core/err.h"
#include "core/rpc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes besides CLI_EXIT_OK (0), CLI_EXIT_ERROR (1: any other error
 * reply, a failed connection) and CLI_EXIT_USAGE (2). */
enum {
    CLI_INVOKE_EXIT_QUEUE_FULL = 3, /* [3, 11]: every node's queue was full; try later */
    CLI_INVOKE_EXIT_TIMEOUT = 4,    /* [3, 110]: the invocation timed out */
};

/* "protocol", "locator", "engine", "worker", "app", else "unknown". */
const char *cli_invoke_category_name(uint64_t category);
/* The exit code for an error reply [category, code]. */
int cli_invoke_exit_code(uint64_t category, uint64_t code);

/* enqueue [event] on channel ch, with the `timeout` header (decimal
 * milliseconds) when timeout_ms > 0 and one header per "NAME=VALUE" of
 * headers (passed on to the worker). 0, -ENOBUFS (out unchanged), or
 * -EINVAL for a header without a name or "=". */
int cli_invoke_encode_enqueue(buf_t *out, uint64_t ch, const char *event, long timeout_ms,
                              const char *const *headers, size_t nheaders);
/* write [chunk] messages for data, split at RPC_CHUNK_MAX. */
int cli_invoke_encode_data(buf_t *out, uint64_t ch, const void *data, size_t len);

/* The reply side of one invocation: bytes from the service in, response
 * chunks out (written to `out` as they complete), until the service ends
 * its direction. */
typedef struct cli_invoke_rx {
    rpc_decoder_t dec;
    uint64_t ch;
    bool done;               /* close or error came */
    int exit_code;           /* CLI_EXIT_OK after close; see cli_invoke_exit_code after error */
    char error[ERR_MSG_MAX]; /* "<category> error <code>: <message>" after an error */
} cli_invoke_rx_t;

void cli_invoke_rx_init(cli_invoke_rx_t *rx, uint64_t ch);
void cli_invoke_rx_free(cli_invoke_rx_t *rx);
/* Feed n bytes. Returns 1 once the reply ended (rx->done; exit_code and
 * error say how), 0 when more is needed, -EPROTO when the service broke
 * the protocol (err says how; a message on another channel, a write that
 * is not [bytes], bytes that are not messages), -EIO when writing to out
 * failed. */
int cli_invoke_rx_feed(cli_invoke_rx_t *rx, const void *bytes, size_t n, FILE *out, err_t *err);

#endif
