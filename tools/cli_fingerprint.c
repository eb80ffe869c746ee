/* Input fingerprints: each input file's size and XXH64 (cli_hash.h), read once per run and
 * kept, so the checkpoint header and the provenance sidecar (and any later user) share one read
 * of a file of tens of GB. Kept by device and inode, so one file named twice (--queries c.npy
 * --corpus c.npy) is read once too; a file whose size or modification time changed since is
 * read again, so a fingerprint always describes the file as it is. */
#define _GNU_SOURCE
#include "cli.h"
#include "cli_hash.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Inputs of one run: the commands name at most CLI_MAX_FILES + 5; beyond, nothing is kept. */
#define KEEP_MAX 64
/* Large enough that a hashing pass shows progress only when it is worth seeing. */
#define PROGRESS_MIN_BYTES (256ll << 20)
#define READ_BYTES (1u << 20)

typedef struct {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    uint64_t hash;
} kept_fingerprint;

static kept_fingerprint kept[KEEP_MAX];
static int nkept;

static int same_file(const kept_fingerprint *k, const struct stat *st) {
    return k->dev == st->st_dev && k->ino == st->st_ino && k->size == st->st_size &&
           k->mtime.tv_sec == st->st_mtim.tv_sec && k->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

static const kept_fingerprint *find_kept(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return NULL;
    for (int i = 0; i < nkept; i++)
        if (same_file(&kept[i], &st)) return &kept[i];
    return NULL;
}

static void keep(const struct stat *st, uint64_t hash) {
    kept_fingerprint *k = NULL;
    for (int i = 0; i < nkept && !k; i++)
        if (kept[i].dev == st->st_dev && kept[i].ino == st->st_ino) k = &kept[i]; /* changed */
    if (!k && nkept < KEEP_MAX) k = &kept[nkept++];
    if (!k) return;
    *k = (kept_fingerprint){st->st_dev, st->st_ino, st->st_size, st->st_mtim, hash};
}

/* Reads the whole file through the hash; every byte fstat counted, or the path is named. */
static int hash_file(const char *path, cli_progress *prog, uint64_t *hash, int64_t *size) {
    FILE *f = cli_open_input(path);
    if (!f) return -1;
    int fd = fileno(f);
    struct stat st;
    unsigned char *buf = malloc(READ_BYTES);
    int err = fstat(fd, &st) ? errno : buf ? 0 : ENOMEM;
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    cli_xxh64 h;
    cli_xxh64_init(&h);
    int64_t n = 0;
    while (!err) {
        ssize_t got = read(fd, buf, READ_BYTES);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            err = got < 0 ? errno : 0;
            break;
        }
        cli_xxh64_update(&h, buf, (size_t)got);
        n += got;
        prog->span = n;
        cli_progress_update(1, 1, prog);
    }
    free(buf);
    fclose(f);
    if (err) {
        cli_error("%s: read error: %s", path, strerror(err));
        return -1;
    }
    if (n != (int64_t)st.st_size) {
        cli_error("%s: read %lld bytes of %lld: the file changed while it was read", path,
                  (long long)n, (long long)st.st_size);
        return -1;
    }
    /* Tests count the reads (each input once per run): NS_CLI_TEST_LOG_FINGERPRINTS=1. */
    if (getenv("NS_CLI_TEST_LOG_FINGERPRINTS"))
        fprintf(stderr, "%s: fingerprint read %s (%lld bytes)\n", cli_command, path, (long long)n);
    *hash = cli_xxh64_digest(&h);
    keep(&st, *hash);
    *size = n;
    return 0;
}

int cli_file_fingerprint(const char *path, uint64_t *hash, int64_t *size) {
    const kept_fingerprint *k = find_kept(path);
    if (k) {
        *hash = k->hash;
        *size = (int64_t)k->size;
        return 0;
    }
    cli_progress quiet;
    cli_progress_init(&quiet, "", 0, 1);
    return hash_file(path, &quiet, hash, size);
}

int cli_fingerprint_inputs(const cli_named_path *in, int n, int quiet) {
    int64_t total = 0;
    struct stat st, seen[CLI_MAX_FILES + 8];
    int nseen = 0;
    for (int i = 0; i < n; i++) {
        if (!in[i].path || find_kept(in[i].path) || stat(in[i].path, &st) != 0) continue;
        int dup = 0;
        for (int j = 0; j < nseen && !dup; j++)
            dup = seen[j].st_dev == st.st_dev && seen[j].st_ino == st.st_ino;
        if (dup) continue;
        total += (int64_t)st.st_size;
        if (nseen < CLI_MAX_FILES + 8) seen[nseen++] = st;
    }
    cli_progress prog;
    cli_progress_init(&prog, "fingerprints (xxh64)", total, quiet || total < PROGRESS_MIN_BYTES);
    prog.bytes = 1;
    for (int i = 0; i < n; i++) {
        uint64_t h;
        int64_t size;
        if (!in[i].path || find_kept(in[i].path)) continue;
        if (hash_file(in[i].path, &prog, &h, &size)) {
            if (prog.enabled) fputc('\n', stderr); /* the message below the bar */
            return -1;
        }
        prog.base += size;
        prog.span = 0;
    }
    cli_progress_finish(&prog);
    return 0;
}

void cli_fingerprint_forget(void) { nkept = 0; }
