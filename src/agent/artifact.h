/* artifact: app files as a gzip'd tar (a one-layer image), content-addressed
 * by the sha256 of the archive. Blocking file work: agents call these from
 * the libuv thread pool (uv_queue_work), the CLI calls them directly. */
#ifndef DROVER_AGENT_ARTIFACT_H
#define DROVER_AGENT_ARTIFACT_H

#include "core/err.h"

#include <stddef.h>
#include <stdint.h>

#define ARTIFACT_ID_LEN 71 /* "sha256:" + 64 hex */

/* Limits on what an archive may unpack to (a zip bomb stops here). */
typedef struct artifact_limits {
    uint64_t max_total_bytes; /* default 2 GiB */
    uint64_t max_entries;     /* default 100000 */
} artifact_limits_t;

/* Unpack `archive` (tar, tar.gz, tar.xz... whatever libarchive reads) into
 * `dest`, which must not exist yet: unpacked into dest.tmp-XXXX then renamed,
 * so a crash never leaves a half-unpacked dest. Refuses (and removes the tmp)
 * on: absolute paths, `..` components, symlinks or hard links that point
 * outside dest, device nodes and fifos, limits exceeded, not an archive.
 * err names the offending entry. Then makes the tree read-only (a-w) so
 * instances can share it. `lim` may be NULL. */
int artifact_unpack(const char *archive, const char *dest, const artifact_limits_t *lim,
                    err_t *err);

/* Pack directory `dir` into a gzip'd tar at `out` (entries relative to dir,
 * regular files, dirs and symlinks only, uid/gid 0, mtimes kept) and give its
 * id "sha256:<hex>" in id_out (ARTIFACT_ID_LEN + 1 bytes). */
int artifact_pack(const char *dir, const char *out, char *id_out, err_t *err);

/* sha256 of a file as "sha256:<hex>". */
int artifact_file_id(const char *path, char *id_out, err_t *err);

/* Remove a tree made by artifact_unpack (or its leftovers). Unpacked trees
 * are read-only, so each directory gets u+rwx back before its entries are
 * removed; symlinks are removed, never followed, and other mounts are not
 * entered. A missing dir is not an error. Blocking, like unpack. */
int artifact_remove(const char *dir, err_t *err);

/* True when s is "sha256:" followed by 64 lowercase hex digits. */
int artifact_id_valid(const char *s);

#endif
