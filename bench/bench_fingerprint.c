/* Input fingerprint speed: the CLI's XXH64 (tools/cli_fingerprint.c, cli_file_fingerprint) vs the
 * byte-wise FNV-1a-64 it replaced (kept here verbatim), on one cached file, interleaved, median
 * of --repeat runs; and each hash alone on an in-memory buffer (no read), to tell the hash's
 * cost from the read's. Single-threaded, as the CLI hashes.
 *   bench_fingerprint FILE [--create MIB] [--repeat N]
 * --create writes MIB MiB of pseudo-random bytes to FILE first (when it does not exist). */
#define _GNU_SOURCE
#include "bench_util.h"
#include "cli.h"
#include "cli_hash.h"

#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>

const char *ns_gemm_name(void);

/* The fingerprint before XXH64 (tools/stage_provenance.c, until this change). */
static int old_fnv_fingerprint(const char *path, uint64_t *hash, int64_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    uint64_t h = 1469598103934665603ull;
    int64_t n = 0;
    static unsigned char buf[1 << 16];
    for (size_t got; (got = fread(buf, 1, sizeof buf, f)) > 0; n += (int64_t)got)
        for (size_t i = 0; i < got; i++) h = (h ^ buf[i]) * 1099511628211ull;
    int err = ferror(f);
    fclose(f);
    *hash = h;
    *size = n;
    return err ? -1 : 0;
}

static uint64_t fnv_mem(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static int create(const char *path, int64_t mib) {
    struct stat st;
    if (stat(path, &st) == 0) return 0;
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    static uint64_t buf[1 << 17];
    uint64_t s = 12345;
    for (int64_t m = 0; m < mib; m++) {
        for (size_t i = 0; i < sizeof buf / 8; i += 1) buf[i] = bench_next(&s);
        if (fwrite(buf, 1, 1 << 20, f) != 1 << 20) return fclose(f), -1;
    }
    return fclose(f);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

int main(int argc, char **argv) {
    const char *path = NULL;
    int64_t mib = 0;
    int repeat = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--create") && i + 1 < argc) mib = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
        else if (argv[i][0] != '-') path = argv[i];
        else return fprintf(stderr, "usage: bench_fingerprint FILE [--create MIB] [--repeat N]\n"), 2;
    }
    if (!path || repeat < 1 || repeat > 64) {
        fprintf(stderr, "usage: bench_fingerprint FILE [--create MIB] [--repeat N]\n");
        return 2;
    }
    if (mib > 0 && create(path, mib)) {
        fprintf(stderr, "bench_fingerprint: cannot write %s: %s\n", path, strerror(errno));
        return 1;
    }
    char model[256];
    bench_cpu_model(model, sizeof model);
    double load = -1;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf", &load) != 1) load = -1;
        fclose(la);
    }
    printf("machine: %s, threads 1 (hashing is single-threaded), GEMM: %s (not used), load "
           "average %.2f at start\n", model, ns_gemm_name(), load);
    uint64_t h0, h1;
    int64_t size;
    if (old_fnv_fingerprint(path, &h0, &size)) { /* also brings the file into the page cache */
        fprintf(stderr, "bench_fingerprint: cannot read %s\n", path);
        return 1;
    }
    double gib = (double)size / (1 << 30), told[64], tnew[64];
    printf("file %s: %.3f GiB (cached by a first read)\n", path, gib);
    for (int r = 0; r < repeat; r++) { /* interleaved: old, new, old, new, ... */
        double t = bench_now();
        old_fnv_fingerprint(path, &h0, &size);
        told[r] = bench_now() - t;
        cli_fingerprint_forget();
        t = bench_now();
        if (cli_file_fingerprint(path, &h1, &size)) return 1;
        tnew[r] = bench_now() - t;
        printf("  run %d: fnv1a64 %016llx %.3f s (%.2f GiB/s), xxh64 %016llx %.3f s (%.2f GiB/s)\n",
               r, (unsigned long long)h0, told[r], gib / told[r], (unsigned long long)h1, tnew[r],
               gib / tnew[r]);
    }
    double mo = median(told, repeat), mn = median(tnew, repeat);
    printf("file, median of %d: fnv1a64 (fread 64 KiB) %.2f GiB/s, xxh64 (read 1 MiB) %.2f GiB/s: "
           "%.1fx faster\n", repeat, gib / mo, gib / mn, mo / mn);
    /* The hashes alone on 256 MiB in memory (at most the file's size). */
    size_t n = (size_t)(size < (256 << 20) ? size : (256 << 20));
    unsigned char *buf = malloc(n ? n : 1);
    FILE *f = fopen(path, "rb");
    if (!buf || !f || fread(buf, 1, n, f) != n) return 1;
    fclose(f);
    double mf[64], mx[64];
    volatile uint64_t sink = 0;
    for (int r = 0; r < repeat; r++) {
        double t = bench_now();
        sink ^= fnv_mem(buf, n);
        mf[r] = bench_now() - t;
        t = bench_now();
        sink ^= cli_xxh64_bytes(buf, n);
        mx[r] = bench_now() - t;
    }
    double g = (double)n / (1 << 30);
    printf("memory (%.0f MiB), median of %d: fnv1a64 %.2f GiB/s, xxh64 %.2f GiB/s (%llx)\n",
           (double)n / (1 << 20), repeat, g / median(mf, repeat), g / median(mx, repeat),
           (unsigned long long)sink);
    free(buf);
    return 0;
}
