/* Definitions the cli unit tests link in place of modules they do not
 * link: deploy.c and push.c call the spec and agent modules. Included by
 * each test file (one test binary each). A test that needs its own
 * artifact_pack defines CLI_STUBS_OWN_ARTIFACT_PACK first. */
#ifndef DROVER_TEST_CLI_LINK_STUBS_H
#define DROVER_TEST_CLI_LINK_STUBS_H

#include "agent/artifact.h"
#include "core/alloc.h"
#include "spec/spec.h"

#include <errno.h>

int spec_template_fill(const char *text, size_t len, const spec_var_t *vars, size_t n_vars,
                       char **out, size_t *out_len, err_t *err)
{
    (void)vars;
    (void)n_vars;
    (void)err;
    *out = xstrndup(text, len);
    if (out_len)
        *out_len = len;
    return 0;
}

#ifndef CLI_STUBS_OWN_ARTIFACT_PACK
int artifact_pack(const char *dir, const char *out, char *id_out, err_t *err)
{
    (void)out;
    (void)id_out;
    return err_set(err, -ENOSYS, "pack %s: not in this test", dir);
}
#endif

#endif
