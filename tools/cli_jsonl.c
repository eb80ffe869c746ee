/* JSON text for the JSONL outputs: strings that are always valid JSON (and valid UTF-8), floats
 * that read back as the same float32. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <math.h>
#include <string.h>

int64_t cli_json_bad_bytes;

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 (overlong forms, surrogates
 * and code points above U+10FFFF are not valid). */
size_t cli_utf8_char(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xbf;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf) return 0;
    return len;
}

void cli_json_string(FILE *f, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t len = cli_utf8_char(s + i, n - i);
        if (len == 0) { /* not UTF-8: the byte as the code point of the same value */
            fprintf(f, "\\u%04x", c);
            cli_json_bad_bytes++;
            i++;
            continue;
        }
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(f, "\\u%04x", c);
        } else {
            fwrite(s + i, 1, len, f);
        }
        i += len;
    }
    fputc('"', f);
}

void cli_json_float(FILE *f, float x) {
    /* 9 significant digits read back as the same float32; NaN/inf are not JSON. */
    if (isfinite(x)) fprintf(f, "%.9g", (double)x);
    else fputs("null", f);
}
