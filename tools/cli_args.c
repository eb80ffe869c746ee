/* Messages on stderr and the values of command-line options. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

const char *cli_command = "negsamp";
int cli_silent;

void cli_error(const char *fmt, ...) {
    if (cli_silent) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cli_command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_usage_error(const char *fmt, ...) {
    if (cli_silent) return CLI_USAGE;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cli_command);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(run '%s --help' for the options)\n", cli_command);
    va_end(ap);
    return CLI_USAGE;
}

/* The one integer syntax of every flag: an optional '-', then decimal digits, nothing else
 * (no spaces, no '+', no 0x / octal prefixes: "010" is ten). *neg, *mag; -1 when malformed,
 * 1 when the magnitude does not fit in 64 bits. */
static int scan_decimal(const char *s, int *neg, uint64_t *mag) {
    *neg = *s == '-';
    if (*neg) s++;
    if (!isdigit((unsigned char)*s)) return -1;
    uint64_t v = 0;
    int over = 0;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s)) return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) over = 1;
        else v = v * 10 + d;
    }
    *mag = v;
    return over;
}

int cli_parse_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out) {
    int neg;
    uint64_t mag;
    int r = scan_decimal(s, &neg, &mag);
    if (r < 0) {
        cli_usage_error("%s expects a decimal integer in [%lld, %lld], got '%s'", opt,
                        (long long)lo, (long long)hi, s);
        return -1;
    }
    /* Out of int64: out of [lo, hi] too. */
    int out_of_range = r > 0 || (neg ? mag > (uint64_t)INT64_MAX + 1 : mag > (uint64_t)INT64_MAX);
    int64_t v = 0;
    if (!out_of_range) {
        v = neg ? (int64_t)(0 - mag) : (int64_t)mag;
        out_of_range = v < lo || v > hi;
    }
    if (out_of_range) {
        cli_usage_error("%s (%s) must be in [%lld, %lld]", opt, s, (long long)lo, (long long)hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_u64(const char *opt, const char *s, uint64_t *out) {
    int neg;
    uint64_t mag;
    int r = scan_decimal(s, &neg, &mag);
    if (r < 0 || neg) {
        cli_usage_error("%s expects a non-negative decimal integer, got '%s'", opt, s);
        return -1;
    }
    if (r > 0) {
        cli_usage_error("%s (%s) must be at most %llu", opt, s, (unsigned long long)UINT64_MAX);
        return -1;
    }
    *out = mag;
    return 0;
}

/* Decimal only: digits, one '.', an exponent; no hex floats, inf or nan. */
static int is_decimal_number(const char *s) {
    if (*s == '-') s++;
    int digits = 0;
    while (isdigit((unsigned char)*s)) s++, digits++;
    if (*s == '.') {
        s++;
        while (isdigit((unsigned char)*s)) s++, digits++;
    }
    if (!digits) return 0;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '-' || *s == '+') s++;
        if (!isdigit((unsigned char)*s)) return 0;
        while (isdigit((unsigned char)*s)) s++;
    }
    return *s == '\0';
}

int cli_parse_f32(const char *opt, const char *s, float *out) {
    if (!is_decimal_number(s)) {
        cli_usage_error("%s expects a decimal number, got '%s'", opt, s);
        return -1;
    }
    double v = strtod(s, NULL);
    if (!(v >= -3.4028234663852886e38 && v <= 3.4028234663852886e38)) {
        cli_usage_error("%s (%s) is outside the float32 range (|x| <= 3.4e38)", opt, s);
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
