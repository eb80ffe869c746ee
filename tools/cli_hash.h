/* XXH64 (xxHash's 64-bit hash, seed 0), streaming: the CLI's one hash for "did these bytes
 * change" — input fingerprints (checkpoint header, provenance sidecar) and the checkpoint's
 * record checksums. Why XXH64: four independent 64-bit lanes over 8-byte little-endian words,
 * so one core hashes at memory speed (FNV-1a, one multiply per byte in one chain, ran at
 * ~1 GB/s); a published algorithm with a defined byte order and tail rule, so the value is the
 * same on every machine and `xxhsum -H1 FILE` checks it. It detects changed inputs, not
 * adversaries: it is not cryptographic. */
#ifndef NS_CLI_HASH_H
#define NS_CLI_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t lane[4];
    uint64_t total;     /* bytes seen */
    unsigned char buf[32]; /* a partial stripe */
    size_t nbuf;
} cli_xxh64;

void cli_xxh64_init(cli_xxh64 *s);
void cli_xxh64_update(cli_xxh64 *s, const void *p, size_t n);
uint64_t cli_xxh64_digest(const cli_xxh64 *s);
/* The hash of n bytes at once. */
uint64_t cli_xxh64_bytes(const void *p, size_t n);

#endif
