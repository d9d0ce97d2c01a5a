/* registry: links the metalocator to every node in the server's registry
 * and serves the routing groups on it. */
#ifndef DROVER_SERVER_REGISTRY_H
#define DROVER_SERVER_REGISTRY_H

#include "core/err.h"
#include "locator/locator.h"
#include "locator/meta.h"
#include "store/store.h"

typedef struct registry registry_t;

/* Reads /nodes/ and /groups/ and follows them: nodes are linked in `meta`,
 * groups served by `loc`. All three must outlive it. */
int registry_start(store_t *store, meta_t *meta, loc_server_t *loc, registry_t **out, err_t *err);
/* No meta calls after this returns. */
void registry_stop(registry_t *r);

#endif
