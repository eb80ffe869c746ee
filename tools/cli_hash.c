/* XXH64, seed 0 (cli_hash.h says why), following the xxHash specification
 * (github.com/Cyan4973/xxHash, doc/xxhash_spec.md): stripes of 32 bytes feed four lanes one
 * 8-byte little-endian word each; the tail is taken 8 bytes, then 4, then 1 at a time. */
#include "cli_hash.h"

#include <string.h>

#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full
#define P3 0x165667B19E3779F9ull
#define P4 0x85EBCA77C2B2AE63ull
#define P5 0x27D4EB2F165667C5ull

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/* Little-endian loads on any host (the compiler makes one load of them on x86 and ARM). */
static inline uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static inline uint64_t le32(const unsigned char *p) {
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
}

static inline uint64_t round64(uint64_t acc, uint64_t w) { return rotl(acc + w * P2, 31) * P1; }

static inline uint64_t merge(uint64_t h, uint64_t lane) {
    return (h ^ round64(0, lane)) * P1 + P4;
}

/* Whole stripes of p (n a multiple of 32); the four lanes are independent chains. */
static void stripes(uint64_t *v, const unsigned char *p, size_t n) {
    uint64_t a = v[0], b = v[1], c = v[2], d = v[3];
    for (const unsigned char *e = p + n; p < e; p += 32) {
        a = round64(a, le64(p));
        b = round64(b, le64(p + 8));
        c = round64(c, le64(p + 16));
        d = round64(d, le64(p + 24));
    }
    v[0] = a, v[1] = b, v[2] = c, v[3] = d;
}

void cli_xxh64_init(cli_xxh64 *s) {
    memset(s, 0, sizeof *s);
    s->lane[0] = P1 + P2;
    s->lane[1] = P2;
    s->lane[2] = 0;
    s->lane[3] = 0 - P1;
}

void cli_xxh64_update(cli_xxh64 *s, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    s->total += n;
    if (s->nbuf) { /* complete the partial stripe first */
        size_t take = 32 - s->nbuf < n ? 32 - s->nbuf : n;
        memcpy(s->buf + s->nbuf, p, take);
        s->nbuf += take, p += take, n -= take;
        if (s->nbuf < 32) return;
        stripes(s->lane, s->buf, 32);
        s->nbuf = 0;
    }
    size_t whole = n & ~(size_t)31;
    stripes(s->lane, p, whole);
    memcpy(s->buf, p + whole, n - whole);
    s->nbuf = n - whole;
}

uint64_t cli_xxh64_digest(const cli_xxh64 *s) {
    const uint64_t *v = s->lane;
    uint64_t h;
    if (s->total >= 32) {
        h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
        for (int i = 0; i < 4; i++) h = merge(h, v[i]);
    } else {
        h = P5; /* seed 0 + P5 */
    }
    h += s->total;
    const unsigned char *p = s->buf, *e = s->buf + s->nbuf;
    for (; p + 8 <= e; p += 8) h = rotl(h ^ round64(0, le64(p)), 27) * P1 + P4;
    if (p + 4 <= e) h = rotl(h ^ le32(p) * P1, 23) * P2 + P3, p += 4;
    for (; p < e; p++) h = rotl(h ^ *p * P5, 11) * P1;
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    return h ^ (h >> 32);
}

uint64_t cli_xxh64_bytes(const void *p, size_t n) {
    cli_xxh64 s;
    cli_xxh64_init(&s);
    cli_xxh64_update(&s, p, n);
    return cli_xxh64_digest(&s);
}
