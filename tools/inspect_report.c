/* What `negsamp inspect` writes: a one-screen terminal summary, and with --report DIR a
 * Markdown report (report.md) with PNG plots (scores.png, ranks.png, rules.png, drawn by
 * cli_png.c) and the same numbers as JSON (summary.json). */
#define _GNU_SOURCE
#include "inspect.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "cli_png.h"

static const uint32_t SERIES_COLOR[INS_SERIES] = {0x1f77b4, 0x2ca02c, 0xff7f0e, 0xd62728};
static const char *const SERIES_COLOR_NAME[INS_SERIES] = {"blue", "green", "orange", "red"};
static const char *const RANK_NAMES[INS_RANKS] = {"1", "2-3", "4-10", "11-k", "> k"};

static double share(int64_t a, int64_t b) { return b ? (double)a / (double)b : 0.0; }

void inspect_print_summary(FILE *f, const inspect_trace *t, const inspect_stats *st) {
    fprintf(f, "negsamp inspect: %s: %lld queries (%lld with a positive), %lld candidates each\n",
            t->prefix, (long long)st->B, (long long)st->with_pos, (long long)st->k);
    fprintf(f, "  candidates %lld: kept %lld (%.1f%%), removed %lld, sampled %lld\n",
            (long long)st->examined, (long long)st->kept, 100 * share(st->kept, st->examined),
            (long long)st->removed, (long long)st->sampled);
    fputs("  removed by rule:", f);
    for (int r = 0; r < 8; r++)
        if (st->rule[r]) fprintf(f, " %s %lld", INSPECT_RULE_NAMES[r], (long long)st->rule[r]);
    fputs(st->removed ? "\n" : " none\n", f);
    fprintf(f, "  near-duplicates (s >= s+ - %g): %lld sampled (%.1f%%), %lld kept\n", st->eps,
            (long long)st->near_sampled, 100 * share(st->near_sampled, st->sampled),
            (long long)st->near_kept);
    if (st->has_labels)
        fprintf(f, "  labelled positives among the sampled negatives: %lld of %lld (%.2f%%); on "
                   "%lld queries with >= 2 positives: %lld of %lld (%.2f%%)\n",
                (long long)st->sampled_labelled, (long long)st->sampled,
                100 * share(st->sampled_labelled, st->sampled), (long long)st->multi_queries,
                (long long)st->multi_sampled_labelled, (long long)st->multi_sampled,
                100 * share(st->multi_sampled_labelled, st->multi_sampled));
    fputs("  rank of the positive:", f);
    for (int b = 0; b < INS_RANKS; b++)
        fprintf(f, " %s: %lld", RANK_NAMES[b], (long long)st->rank[b]);
    fprintf(f, "; MRR@k %.4f\n", st->mrr);
    fprintf(f, "  scores from %.6g to %.6g\n", st->lo, st->hi);
}

static void write_json(FILE *f, const inspect_stats *st) {
    fprintf(f, "{\"queries\": %lld, \"with_positive\": %lld, \"k\": %lld, \"candidates\": %lld, "
               "\"kept\": %lld, \"removed\": %lld, \"sampled\": %lld,\n \"removed_by_rule\": {",
            (long long)st->B, (long long)st->with_pos, (long long)st->k, (long long)st->examined,
            (long long)st->kept, (long long)st->removed, (long long)st->sampled);
    for (int r = 0; r < 8; r++)
        fprintf(f, "%s\"%s\": %lld", r ? ", " : "", INSPECT_RULE_NAMES[r], (long long)st->rule[r]);
    fprintf(f, "},\n \"epsilon\": %.9g, \"near_duplicates_sampled\": %lld, "
               "\"near_duplicates_kept\": %lld,\n",
            st->eps, (long long)st->near_sampled, (long long)st->near_kept);
    if (st->has_labels)
        fprintf(f, " \"labels\": {\"queries\": %lld, \"sampled_labelled\": %lld, \"kept_labelled\": "
                   "%lld, \"multi_positive_queries\": %lld, \"multi_sampled\": %lld, "
                   "\"multi_sampled_labelled\": %lld, \"false_negative_share\": %.9g},\n",
                (long long)st->labelled_queries, (long long)st->sampled_labelled,
                (long long)st->kept_labelled, (long long)st->multi_queries,
                (long long)st->multi_sampled, (long long)st->multi_sampled_labelled,
                share(st->sampled_labelled, st->sampled));
    fputs(" \"rank\": {", f);
    for (int b = 0; b < INS_RANKS; b++)
        fprintf(f, "%s\"%s\": %lld", b ? ", " : "", RANK_NAMES[b], (long long)st->rank[b]);
    fprintf(f, "}, \"mrr_at_k\": %.9g,\n \"histogram\": {\"lo\": %.9g, \"hi\": %.9g, \"bins\": %d",
            st->mrr, st->lo, st->hi, INSPECT_BINS);
    for (int s = 0; s < INS_SERIES; s++) {
        static const char *key[INS_SERIES] = {"positives", "kept", "sampled", "filtered"};
        fprintf(f, ", \"%s\": [", key[s]);
        for (int b = 0; b < INSPECT_BINS; b++)
            fprintf(f, "%s%lld", b ? ", " : "", (long long)st->hist[s][b]);
        fputc(']', f);
    }
    fputs("}}\n", f);
}

/* Labels of a plot: title on top, x label under the tick labels, y label up the left side,
 * the y ticks' values (0 .. vmax in tenths, every other one) beside the axis. */
static void plot_labels(png_canvas *c, int x0, int y0, int x1, int y1, const char *title,
                        const char *xlabel, const char *ylabel, double vmax, int percent) {
    png_text(c, (x0 + x1 - png_text_width(title, 1)) / 2, 4, title, 1, 0x000000);
    png_text(c, (x0 + x1 - png_text_width(xlabel, 1)) / 2, c->h - 12, xlabel, 1, 0x000000);
    png_text_up(c, 4, (y0 + y1 + png_text_width(ylabel, 1)) / 2, ylabel, 1, 0x000000);
    for (int i = 0; i <= 10; i += 2) {
        char v[32];
        double t = vmax * i / 10;
        if (percent) snprintf(v, sizeof v, "%.3g%%", 100 * t);
        else snprintf(v, sizeof v, "%.3g", t);
        int y = y1 - (y1 - y0) * i / 10;
        png_text(c, x0 - 7 - png_text_width(v, 1), y - 3, v, 1, 0x000000);
    }
}

/* Each series' histogram as a density (share of its own total), overlaid; a legend. */
static int plot_scores(FILE *f, const inspect_stats *st) {
    enum { X0 = 66, Y0 = 20, X1 = 620, Y1 = 330 };
    png_canvas c;
    if (png_canvas_init(&c, 640, 370)) return -1;
    double v[INS_SERIES][INSPECT_BINS], vmax = 0;
    for (int s = 0; s < INS_SERIES; s++) {
        int64_t n = 0;
        for (int b = 0; b < INSPECT_BINS; b++) n += st->hist[s][b];
        for (int b = 0; b < INSPECT_BINS; b++) {
            v[s][b] = n ? (double)st->hist[s][b] / (double)n : 0;
            if (v[s][b] > vmax) vmax = v[s][b];
        }
    }
    png_axes(&c, X0, Y0, X1, Y1);
    for (int s = INS_SERIES - 1; s >= 0; s--)
        png_bars(&c, v[s], INSPECT_BINS, vmax, X0, Y0, X1, Y1, SERIES_COLOR[s], 110);
    plot_labels(&c, X0, Y0, X1, Y1, "SCORE HISTOGRAMS (EACH SERIES AS A SHARE OF ITS TOTAL)",
                "score", "share of the series", vmax, 1);
    for (int i = 0; i <= 10; i += 2) { /* x ticks: the score at every fifth of the range */
        char t[32];
        snprintf(t, sizeof t, "%.3g", st->lo + (st->hi - st->lo) * i / 10);
        png_text(&c, X0 + (X1 - X0) * i / 10 - png_text_width(t, 1) / 2, Y1 + 8, t, 1,
                 0x000000);
    }
    for (int s = 0; s < INS_SERIES; s++) { /* legend, top right */
        int y = Y0 + 6 + 12 * s, x = X1 - 8 - png_text_width(INSPECT_SERIES_NAMES[s], 1);
        png_fill(&c, x - 14, y, x - 4, y + 8, SERIES_COLOR[s], 256);
        png_text(&c, x, y, INSPECT_SERIES_NAMES[s], 1, 0x000000);
    }
    int rc = png_write(f, &c);
    png_canvas_free(&c);
    return rc;
}

/* Bars of counts with a name under each (names turned upwards when they do not fit). */
static int plot_counts(FILE *f, const int64_t *n, const char *const *names, int count,
                       uint32_t color, const char *title, const char *xlabel) {
    int longest = 0;
    for (int i = 0; i < count; i++)
        if (png_text_width(names[i], 1) > longest) longest = png_text_width(names[i], 1);
    int x0 = 66, y0 = 20, x1 = 460, bar = (x1 - x0) / count, up = longest > bar - 4;
    int y1 = 300 - (up ? longest : 10);
    png_canvas c;
    if (png_canvas_init(&c, 480, 330)) return -1;
    double v[8], vmax = 0;
    for (int i = 0; i < count; i++) v[i] = (double)n[i], vmax = v[i] > vmax ? v[i] : vmax;
    png_axes(&c, x0, y0, x1, y1);
    png_bars(&c, v, count, vmax, x0, y0, x1, y1, color, 256);
    plot_labels(&c, x0, y0, x1, y1, title, xlabel, "count", vmax, 0);
    for (int i = 0; i < count; i++) {
        int mid = x0 + (x1 - x0) * (2 * i + 1) / (2 * count);
        if (up) png_text_up(&c, mid - 4, y1 + 8 + png_text_width(names[i], 1), names[i], 1,
                            0x000000);
        else png_text(&c, mid - png_text_width(names[i], 1) / 2, y1 + 8, names[i], 1, 0x000000);
    }
    int rc = png_write(f, &c);
    png_canvas_free(&c);
    return rc;
}

static void write_markdown(FILE *f, const inspect_trace *t, const inspect_stats *st) {
    fprintf(f, "# negsamp inspect: `%s`\n\n%lld queries (%lld with a positive), %lld candidates "
               "each: %lld candidates, %lld kept (%.1f%%), %lld removed, %lld sampled.\n\n",
            t->prefix, (long long)st->B, (long long)st->with_pos, (long long)st->k,
            (long long)st->examined, (long long)st->kept, 100 * share(st->kept, st->examined),
            (long long)st->removed, (long long)st->sampled);
    fputs("## Candidates each rule removed\n\n(a candidate several rules hit counts for each)\n\n"
          "| rule | removed |\n| --- | ---: |\n", f);
    for (int r = 0; r < 8; r++)
        fprintf(f, "| %s | %lld |\n", INSPECT_RULE_NAMES[r], (long long)st->rule[r]);
    fputs("\n![candidates removed per rule, in the table's order](rules.png)\n\n", f);
    fprintf(f, "## Positives among the negatives\n\n- near-duplicates by score (s >= s+ - %g): "
               "%lld of %lld sampled negatives (%.2f%%), %lld of %lld kept\n",
            st->eps, (long long)st->near_sampled, (long long)st->sampled,
            100 * share(st->near_sampled, st->sampled), (long long)st->near_kept,
            (long long)st->kept);
    if (st->has_labels)
        fprintf(f, "- labelled positives (--qrels) among the sampled negatives, the estimated "
                   "false-negative share: %lld of %lld (%.2f%%); kept: %lld\n- on the %lld "
                   "queries with two or more labelled positives: %lld of %lld (%.2f%%)\n",
                (long long)st->sampled_labelled, (long long)st->sampled,
                100 * share(st->sampled_labelled, st->sampled), (long long)st->kept_labelled,
                (long long)st->multi_queries, (long long)st->multi_sampled_labelled,
                (long long)st->multi_sampled,
                100 * share(st->multi_sampled_labelled, st->multi_sampled));
    else
        fputs("- labels: none given (pass --qrels for the false-negative share)\n", f);
    fputs("\n## Rank of each query's positive\n\n(1 + the candidates scoring above s+; "
          "> k: every candidate did)\n\n| rank | queries |\n| --- | ---: |\n", f);
    for (int b = 0; b < INS_RANKS; b++)
        fprintf(f, "| %s | %lld |\n", RANK_NAMES[b], (long long)st->rank[b]);
    fprintf(f, "\nMRR@k: %.4f\n\n![queries per rank bucket](ranks.png)\n\n", st->mrr);
    fprintf(f, "## Score histograms\n\n%d bins from %.6g to %.6g; each series as a share of its "
               "own total, overlaid:", INSPECT_BINS, st->lo, st->hi);
    for (int s = 0; s < INS_SERIES; s++)
        fprintf(f, "%s %s = %s", s ? "," : "", SERIES_COLOR_NAME[s], INSPECT_SERIES_NAMES[s]);
    fputs(".\n\n![score histograms](scores.png)\n\n| from | to |", f);
    for (int s = 0; s < INS_SERIES; s++) fprintf(f, " %s |", INSPECT_SERIES_NAMES[s]);
    fputs("\n| ---: | ---: | ---: | ---: | ---: | ---: |\n", f);
    for (int b = 0; b < INSPECT_BINS; b++) {
        double w = (st->hi - st->lo) / INSPECT_BINS;
        fprintf(f, "| %.4g | %.4g |", st->lo + b * w, st->lo + (b + 1) * w);
        for (int s = 0; s < INS_SERIES; s++) fprintf(f, " %lld |", (long long)st->hist[s][b]);
        fputc('\n', f);
    }
}

int inspect_report_paths(const char *dir, char path[INS_FILES][4096]) {
    static const char *names[INS_FILES] = {"report.md", "summary.json", "scores.png",
                                           "ranks.png", "rules.png"};
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        cli_error("--report %s: cannot create the folder: %s", dir, strerror(errno));
        return -1;
    }
    for (int i = 0; i < INS_FILES; i++) {
        int n = snprintf(path[i], 4096, "%s/%s", dir, names[i]);
        if (n < 0 || n >= 4096) {
            cli_error("--report %s: path too long", dir);
            return -1;
        }
    }
    return 0;
}

int inspect_write_report(char path[INS_FILES][4096], const inspect_trace *t,
                         const inspect_stats *st, int force) {
    cli_output o[INS_FILES];
    memset(o, 0, sizeof o);
    int rc = 0;
    for (int i = 0; i < INS_FILES && !rc; i++) rc = cli_output_open(&o[i], path[i], force);
    if (!rc) {
        write_markdown(o[0].f, t, st);
        write_json(o[1].f, st);
        rc = plot_scores(o[2].f, st) ||
             plot_counts(o[3].f, st->rank, RANK_NAMES, INS_RANKS, 0x1f77b4,
                         "QUERIES BY THE RANK OF THEIR BEST POSITIVE", "rank of the positive") ||
             plot_counts(o[4].f, st->rule, INSPECT_RULE_NAMES, 8, 0xd62728,
                         "CANDIDATES EACH RULE REMOVED", "rule");
    }
    for (int i = 0; i < INS_FILES && !rc; i++) rc = cli_output_commit(&o[i]);
    if (rc)
        for (int i = 0; i < INS_FILES; i++) cli_output_abort(&o[i]);
    return rc ? -1 : 0;
}
