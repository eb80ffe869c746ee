/* A progress bar with rate and ETA on stderr, drawn only when stderr is a terminal. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <time.h>
#include <unistd.h>

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_progress_init(cli_progress *p, const char *label, int64_t total, int quiet) {
    p->enabled = !quiet && isatty(STDERR_FILENO);
    p->label = label;
    p->total = total;
    p->base = 0;
    p->span = 0;
    p->t0 = cli_now();
    p->last = 0;
    p->bytes = 0;
}

static void draw(cli_progress *p, int64_t done, int final) {
    double t = cli_now(), el = t - p->t0;
    double frac = p->total > 0 ? (double)done / (double)p->total : 1.0;
    if (frac > 1) frac = 1;
    double rate = el > 0 ? (double)done / el : 0;
    char bar[31];
    int fill = (int)(frac * 30);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    if (p->bytes)
        fprintf(stderr, "\r%s [%s] %5.1f%% %.0f/%.0f MiB  %.0f MiB/s", p->label, bar, 100 * frac,
                (double)done / (1 << 20), (double)p->total / (1 << 20), rate / (1 << 20));
    else
        fprintf(stderr, "\r%s [%s] %5.1f%% %lld/%lld  %.0f q/s", p->label, bar, 100 * frac,
                (long long)done, (long long)p->total, rate);
    if (final) {
        fprintf(stderr, "  %.1fs    \n", el);
    } else {
        double eta = rate > 0 ? (double)(p->total - done) / rate : 0;
        fprintf(stderr, "  ETA %d:%02d    ", (int)eta / 60, (int)eta % 60);
    }
    fflush(stderr);
    p->last = t;
}

int cli_progress_update(int64_t done, int64_t total, void *user) {
    cli_progress *p = (cli_progress *)user;
    if (!p || !p->enabled || total <= 0) return 0;
    /* At most ten redraws a second: the callback may come per tile. */
    if (cli_now() - p->last >= 0.1)
        draw(p, p->base + (int64_t)((double)p->span * (double)done / (double)total), 0);
    return 0;
}

void cli_progress_finish(cli_progress *p) {
    if (p->enabled) draw(p, p->total, 1);
}
