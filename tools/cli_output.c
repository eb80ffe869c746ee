/* Outputs written atomically (temporary file in the same directory, renamed when complete;
 * removed on error, SIGINT or SIGTERM) and the .npy header writer. */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* Temporary files a signal must remove. Plain arrays so the handler only reads memory and
 * calls unlink (async-signal-safe). */
#define CLI_MAX_OUTPUTS 16
static char cleanup_path[CLI_MAX_OUTPUTS][4096];
static volatile sig_atomic_t cleanup_live[CLI_MAX_OUTPUTS];

static void remove_temporaries(void) {
    for (int i = 0; i < CLI_MAX_OUTPUTS; i++)
        if (cleanup_live[i]) unlink(cleanup_path[i]);
}

static void on_signal(int sig) {
    remove_temporaries();
    /* End the way the signal would have (exit status 128 + sig for the shell, a core dump for
     * the crash signals): the handler was reset to the default on entry (SA_RESETHAND). */
    raise(sig);
}

static const int cleanup_signals[] = {SIGINT,  SIGTERM, SIGHUP,  SIGQUIT, SIGPIPE, SIGALRM,
                                      SIGUSR1, SIGUSR2, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF,
                                      SIGSEGV, SIGBUS,  SIGFPE,  SIGILL,  SIGABRT, SIGTRAP,
                                      SIGSYS};
#define N_CLEANUP_SIGNALS (int)(sizeof cleanup_signals / sizeof cleanup_signals[0])

void cli_install_signal_cleanup(void) {
    static int installed;
    if (installed) return;
    installed = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < N_CLEANUP_SIGNALS; i++) {
        struct sigaction old;
        /* Only default dispositions: a signal the caller ignores (nohup) stays ignored, and a
         * sanitizer's crash handler keeps its report. */
        if (sigaction(cleanup_signals[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL ||
            (old.sa_flags & SA_SIGINFO))
            continue;
        sigaction(cleanup_signals[i], &sa, NULL);
    }
    atexit(remove_temporaries);
}

/* Blocks the cleanup signals while the registry changes. */
static void block_signals(sigset_t *old, int block) {
    if (block) {
        sigset_t s;
        sigemptyset(&s);
        for (int i = 0; i < N_CLEANUP_SIGNALS; i++) sigaddset(&s, cleanup_signals[i]);
        sigprocmask(SIG_BLOCK, &s, old);
    } else {
        sigprocmask(SIG_SETMASK, old, NULL);
    }
}

/* An existing path may be replaced only when it is a regular file, and only with force. */
static int replaceable(const char *path, int force) {
    struct stat st;
    if (lstat(path, &st) != 0) return 0;
    if (!S_ISREG(st.st_mode)) {
        cli_error("%s: is %s; negsamp only ever replaces a regular file, even with --force",
                  path, cli_file_kind(st.st_mode));
        return -1;
    }
    if (!force) {
        cli_error("%s: output exists; pass --force to overwrite it", path);
        return -1;
    }
    return 0;
}

/* DIR/.NAME.negsamp-tmp-XXXXXX beside path (a shorter name when NAME is very long). */
static int temp_name(const char *path, char *tmp, size_t cap) {
    const char *slash = strrchr(path, '/');
    int dir = slash ? (int)(slash - path + 1) : 0;
    const char *base = path + dir;
    int n = strlen(base) > 200 ? snprintf(tmp, cap, "%.*s" CLI_TEMP_TAG "XXXXXX", dir, path)
                               : snprintf(tmp, cap, "%.*s.%s" CLI_TEMP_TAG "XXXXXX", dir, path, base);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* A FILE whose bytes go through gzip (outputs named *.gz). */
static ssize_t gz_write(void *g, const char *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        unsigned part = n - done > (1u << 30) ? (1u << 30) : (unsigned)(n - done);
        int w = gzwrite((gzFile)g, buf + done, part);
        if (w <= 0) return done ? (ssize_t)done : -1;
        done += (size_t)w;
    }
    return (ssize_t)n;
}

static int gz_close(void *g) { return gzclose((gzFile)g) == Z_OK ? 0 : -1; }

static FILE *gzip_stream(int fd) {
    gzFile g = gzdopen(fd, "wb6");
    if (!g) return NULL;
    cookie_io_functions_t io = {NULL, gz_write, NULL, gz_close};
    FILE *f = fopencookie(g, "w", io);
    if (!f) gzclose(g);
    return f;
}

static int ends_with_gz(const char *path) {
    size_t n = strlen(path);
    return n > 3 && !strcmp(path + n - 3, ".gz");
}

int cli_output_open(cli_output *o, const char *path, int force) {
    memset(o, 0, sizeof(*o));
    o->slot = -1;
    if (!*path) {
        cli_error("an output path is empty");
        return -1;
    }
    if (strlen(path) >= sizeof o->path || temp_name(path, o->tmp, sizeof o->tmp)) {
        cli_error("%s: path too long", path);
        return -1;
    }
    if (replaceable(path, force)) return -1;
    strcpy(o->path, path);
    sigset_t old;
    block_signals(&old, 1);
    int fd = mkstemp(o->tmp);
    if (fd < 0) {
        block_signals(&old, 0);
        cli_error("%s: cannot create a temporary file beside it: %s", path, strerror(errno));
        return -1;
    }
    for (int i = 0; i < CLI_MAX_OUTPUTS; i++)
        if (!cleanup_live[i]) {
            strcpy(cleanup_path[i], o->tmp);
            cleanup_live[i] = 1;
            o->slot = i;
            break;
        }
    block_signals(&old, 0);
    /* mkstemp makes 0600; give the output the usual 0666 & ~umask. */
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask);
    o->f = ends_with_gz(path) ? gzip_stream(fd) : fdopen(fd, "wb");
    if (!o->f) {
        close(fd);
        cli_output_abort(o);
        cli_error("%s: cannot open a stream: %s", path, strerror(errno));
        return -1;
    }
    setvbuf(o->f, NULL, _IOFBF, 1 << 20);
    return 0;
}

static void unregister(cli_output *o) {
    if (o->slot >= 0) {
        sigset_t old;
        block_signals(&old, 1);
        cleanup_live[o->slot] = 0;
        block_signals(&old, 0);
        o->slot = -1;
    }
}

void cli_output_abort(cli_output *o) {
    if (o->f) fclose(o->f);
    o->f = NULL;
    if (o->tmp[0]) unlink(o->tmp);
    unregister(o);
    o->tmp[0] = '\0';
}

int cli_output_commit(cli_output *o) {
    if (!o->f) return 0;
    int bad = ferror(o->f) != 0;
    if (fflush(o->f) != 0) bad = 1;
    int err = errno;
    if (fclose(o->f) != 0) bad = 1, err = errno;
    o->f = NULL;
    if (bad) {
        cli_error("%s: write failed: %s", o->path, strerror(err));
        cli_output_abort(o);
        return -1;
    }
    /* What is there now may have changed since the output was opened. */
    if (replaceable(o->path, 1) || cli_is_input(o->path)) {
        cli_output_abort(o);
        return -1;
    }
    if (rename(o->tmp, o->path) != 0) {
        cli_error("%s: cannot rename %s into place: %s", o->path, o->tmp, strerror(errno));
        cli_output_abort(o);
        return -1;
    }
    unregister(o);
    o->tmp[0] = '\0';
    return 0;
}

int cli_npy_write_header(FILE *f, const char *descr, int64_t rows, int64_t cols) {
    char dict[256];
    if (cols > 0)
        snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%lld, %lld), }",
                 descr, (long long)rows, (long long)cols);
    else
        snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%lld,), }",
                 descr, (long long)rows);
    /* Version 1.0: magic(6) version(2) length(2) dict, spaces, '\n' to a multiple of 64. */
    size_t n = strlen(dict), total = 10 + n + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hlen = n + pad + 1;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 255),
                             (unsigned char)(hlen >> 8)};
    fwrite(pre, 1, 10, f);
    fwrite(dict, 1, n, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    return ferror(f) ? -1 : 0;
}
