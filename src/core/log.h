/* log: leveled logging to stderr as text or JSON lines. Each line is
 * formatted into a bounded stack buffer and written with one write(2), so
 * lines from several threads never interleave and logging never allocates. */
#ifndef DROVER_CORE_LOG_H
#define DROVER_CORE_LOG_H

typedef enum log_level {
    LOG_DEBUG = 0,
    LOG_INFO = 1,
    LOG_WARN = 2,
    LOG_ERROR = 3,
    LOG_OFF = 4,
} log_level_t;

typedef enum log_format { LOG_TEXT = 0, LOG_JSON = 1 } log_format_t;

void log_setup(log_level_t level, log_format_t format);
/* Parse "debug|info|warn|error|off"; returns 0 or -EINVAL. */
int log_level_parse(const char *s, log_level_t *out);
/* Parse "text|json"; returns 0 or -EINVAL. */
int log_format_parse(const char *s, log_format_t *out);
int log_enabled(log_level_t level);

/* `module` is the short name of the emitting module ("store", "http"). */
void log_write(log_level_t level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(mod, ...)                                                                        \
    do {                                                                                           \
        if (log_enabled(LOG_DEBUG))                                                                \
            log_write(LOG_DEBUG, mod, __VA_ARGS__);                                                \
    } while (0)
#define log_info(mod, ...)  log_write(LOG_INFO, mod, __VA_ARGS__)
#define log_warn(mod, ...)  log_write(LOG_WARN, mod, __VA_ARGS__)
#define log_error(mod, ...) log_write(LOG_ERROR, mod, __VA_ARGS__)

#endif
