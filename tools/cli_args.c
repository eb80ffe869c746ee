/* Messages on stderr and the values of command-line options. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

const char *cli_command = "negsamp";

void cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cli_command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cli_command);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(run '%s --help' for the options)\n", cli_command);
    va_end(ap);
    return CLI_USAGE;
}

int cli_parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) {
        cli_usage_error("%s expects an integer, got '%s'", opt, s);
        return -1;
    }
    if (v < lo || v > hi) {
        cli_usage_error("%s (%lld) must be in [%lld, %lld]", opt, v, (long long)lo, (long long)hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_u64(const char *opt, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-') {
        cli_usage_error("%s expects a non-negative integer, got '%s'", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_f32(const char *opt, const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v != v || v > 3.4e38 || v < -3.4e38) {
        cli_usage_error("%s expects a finite number, got '%s'", opt, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

int cli_parse_backend(const char *opt, const char *s, ns_backend *out) {
    if (!strcmp(s, "auto")) *out = NS_BACKEND_AUTO;
    else if (!strcmp(s, "cpu")) *out = NS_BACKEND_CPU;
    else if (!strcmp(s, "cuda")) *out = NS_BACKEND_CUDA;
    else {
        cli_usage_error("%s '%s': expected auto, cpu or cuda", opt, s);
        return -1;
    }
    return 0;
}
