/* A small, strict JSON reader for one object per line (BEIR / HF JSONL): the string or number
 * values of the wanted top-level keys, decoded in place; every other value checked and skipped.
 * Strict: RFC 8259 grammar, valid UTF-8, no control characters in strings, surrogate pairs
 * only as pairs, nothing after the object, nesting at most CLI_JSON_MAX_DEPTH. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <stdarg.h>
#include <string.h>

#define CLI_JSON_MAX_DEPTH 64

typedef struct {
    char *start, *p;
    char *err;
    size_t cap;
    int depth;
} jparser;

static int jfail(jparser *j, const char *fmt, ...) {
    if (j->err && j->err[0]) return -1; /* the first error stands */
    int n = snprintf(j->err, j->cap, "column %lld: ", (long long)(j->p - j->start) + 1);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < j->cap) vsnprintf(j->err + n, j->cap - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static void skip_ws(jparser *j) {
    while (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n') j->p++;
}

static int hex4(const char *s, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10) : 16u;
        if (d == 16) return -1;
        *v = *v * 16 + d;
    }
    return 0;
}

static char *put_utf8(char *w, unsigned cp) {
    if (cp < 0x80) *w++ = (char)cp;
    else if (cp < 0x800) *w++ = (char)(0xc0 | cp >> 6), *w++ = (char)(0x80 | (cp & 63));
    else if (cp < 0x10000)
        *w++ = (char)(0xe0 | cp >> 12), *w++ = (char)(0x80 | (cp >> 6 & 63)),
        *w++ = (char)(0x80 | (cp & 63));
    else
        *w++ = (char)(0xf0 | cp >> 18), *w++ = (char)(0x80 | (cp >> 12 & 63)),
        *w++ = (char)(0x80 | (cp >> 6 & 63)), *w++ = (char)(0x80 | (cp & 63));
    return w;
}

/* \uXXXX (and its low surrogate) at j->p (past the backslash and 'u'); the code point's
 * UTF-8 written at *w. */
static int unicode_escape(jparser *j, char **w) {
    unsigned cp, lo;
    if (hex4(j->p, &cp)) return jfail(j, "\\u needs 4 hex digits");
    j->p += 4;
    if (cp >= 0xdc00 && cp <= 0xdfff) return jfail(j, "\\u%04X is a lone low surrogate", cp);
    if (cp >= 0xd800 && cp <= 0xdbff) {
        if (j->p[0] != '\\' || j->p[1] != 'u' || hex4(j->p + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
            return jfail(j, "\\u%04X (a high surrogate) is not followed by a low one", cp);
        j->p += 6;
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    }
    if (cp == 0) return jfail(j, "\\u0000 (a NUL character) in a string is not supported");
    *w = put_utf8(*w, cp);
    return 0;
}

/* A string at j->p (at its opening quote), decoded in place; *out and *len: the decoded bytes,
 * NUL-terminated. */
static int parse_string(jparser *j, char **out, size_t *len) {
    j->p++;
    char *w = j->p, *s = j->p;
    for (;;) {
        unsigned char c = (unsigned char)*j->p;
        if (c == '"') break;
        if (c == '\0') return jfail(j, "a string is not closed");
        if (c < 0x20) return jfail(j, "control character 0x%02x in a string (escape it)", c);
        if (c == '\\') {
            char e = j->p[1];
            j->p += 2;
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            const char *hit = e ? strchr(from, e) : NULL;
            if (hit) *w++ = to[hit - from];
            else if (e == 'u') {
                if (unicode_escape(j, &w)) return -1;
            } else {
                j->p -= 2;
                return jfail(j, "unknown escape in a string");
            }
            continue;
        }
        size_t n = cli_utf8_char((const unsigned char *)j->p, strnlen(j->p, 4));
        if (n == 0) return jfail(j, "byte 0x%02x is not valid UTF-8", c);
        memmove(w, j->p, n);
        w += n;
        j->p += n;
    }
    j->p++;
    *w = '\0';
    if (out) *out = s;
    if (len) *len = (size_t)(w - s);
    return 0;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int parse_number(jparser *j) {
    char *s = j->p;
    if (*j->p == '-') j->p++;
    if (*j->p == '0') j->p++;
    else if (is_digit(*j->p)) while (is_digit(*j->p)) j->p++;
    else return jfail(j, "a number needs digits");
    if (*j->p == '.') {
        j->p++;
        if (!is_digit(*j->p)) return jfail(j, "a number needs digits after '.'");
        while (is_digit(*j->p)) j->p++;
    }
    if (*j->p == 'e' || *j->p == 'E') {
        j->p++;
        if (*j->p == '+' || *j->p == '-') j->p++;
        if (!is_digit(*j->p)) return jfail(j, "a number needs digits in its exponent");
        while (is_digit(*j->p)) j->p++;
    }
    return j->p > s ? 0 : -1;
}

static int parse_value(jparser *j);

/* An array or an object (at its bracket), every member checked and skipped. */
static int parse_container(jparser *j) {
    char close = *j->p == '[' ? ']' : '}';
    if (++j->depth > CLI_JSON_MAX_DEPTH)
        return jfail(j, "nested deeper than %d levels", CLI_JSON_MAX_DEPTH);
    j->p++;
    skip_ws(j);
    if (*j->p == close) {
        j->p++;
        j->depth--;
        return 0;
    }
    for (;;) {
        skip_ws(j);
        if (close == '}') {
            if (*j->p != '"') return jfail(j, "expected a key (a string)");
            if (parse_string(j, NULL, NULL)) return -1;
            skip_ws(j);
            if (*j->p != ':') return jfail(j, "expected ':' after a key");
            j->p++;
        }
        if (parse_value(j)) return -1;
        skip_ws(j);
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p == close) break;
        return jfail(j, "expected ',' or '%c'", close);
    }
    j->p++;
    j->depth--;
    return 0;
}

static int parse_value(jparser *j) {
    skip_ws(j);
    char c = *j->p;
    if (c == '"') return parse_string(j, NULL, NULL);
    if (c == '{' || c == '[') return parse_container(j);
    if (c == '-' || is_digit(c)) return parse_number(j);
    static const char *words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++)
        if (!strncmp(j->p, words[i], strlen(words[i]))) {
            j->p += strlen(words[i]);
            return 0;
        }
    return c ? jfail(j, "expected a value") : jfail(j, "the line ends where a value should be");
}

/* One member of the top-level object: a wanted key's string or number is kept. */
static int parse_member(jparser *j, cli_json_field *f, int nf) {
    char *key;
    size_t klen;
    if (*j->p != '"') return jfail(j, "expected a key (a string)");
    if (parse_string(j, &key, &klen)) return -1;
    skip_ws(j);
    if (*j->p != ':') return jfail(j, "expected ':' after the key \"%s\"", key);
    j->p++;
    skip_ws(j);
    cli_json_field *hit = NULL;
    for (int i = 0; i < nf; i++)
        if (strlen(f[i].key) == klen && !memcmp(f[i].key, key, klen)) hit = &f[i];
    if (hit && hit->value) return jfail(j, "the key \"%s\" appears twice", hit->key);
    if (!hit || (*j->p != '"' && *j->p != '-' && !is_digit(*j->p))) {
        if (hit) hit->other = 1;
        return parse_value(j);
    }
    if (*j->p == '"') {
        hit->is_string = 1;
        return parse_string(j, &hit->value, &hit->len);
    }
    char *s = j->p;
    if (parse_number(j)) return -1;
    hit->len = (size_t)(j->p - s);
    /* The literal stays where it is; its NUL goes in once the whole line is parsed. */
    hit->value = s;
    hit->is_string = 0;
    return 0;
}

int cli_json_object_fields(char *line, cli_json_field *f, int nf, char *err, size_t errcap) {
    jparser j = {line, line, err, errcap, 0};
    if (err && errcap) err[0] = '\0';
    for (int i = 0; i < nf; i++) f[i].value = NULL, f[i].len = 0, f[i].is_string = 0, f[i].other = 0;
    skip_ws(&j);
    if (*j.p != '{') return jfail(&j, "expected a JSON object ('{')");
    j.p++;
    skip_ws(&j);
    int empty = *j.p == '}';
    while (!empty) {
        skip_ws(&j);
        if (parse_member(&j, f, nf)) return -1;
        skip_ws(&j);
        char next = *j.p;
        if (next == ',') {
            j.p++;
            skip_ws(&j);
            continue;
        }
        if (next == '}') break;
        return jfail(&j, "expected ',' or '}'");
    }
    j.p++;
    skip_ws(&j);
    if (*j.p) return jfail(&j, "text after the end of the object");
    for (int i = 0; i < nf; i++)
        if (f[i].value && !f[i].is_string) f[i].value[f[i].len] = '\0';
    return 0;
}
