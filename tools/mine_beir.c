/* Where `negsamp mine` finds texts, embeddings and qrels: a BEIR folder (--beir DIR: corpus.jsonl,
 * queries.jsonl, qrels/SPLIT.tsv; embeddings DIR/queries.npy and DIR/corpus.npy unless
 * --queries-emb/--corpus-emb name them), or HF-style JSONL files (--queries Q.jsonl --corpus
 * C.jsonl with --queries-emb/--corpus-emb), or embeddings alone (--queries/--corpus .npy/.fvecs).
 * Texts and qrels may be gzip-compressed (NAME.jsonl.gz; in a BEIR folder NAME.gz is read when
 * NAME is absent). */
#define _GNU_SOURCE
#include "mine_beir.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int ends_with(const char *p, const char *suffix) {
    size_t n = p ? strlen(p) : 0, k = strlen(suffix);
    return n > k && !strcmp(p + n - k, suffix);
}

/* JSONL texts, plain or gzip-compressed (cli_read_text reads both). */
static int is_jsonl(const char *p) { return ends_with(p, ".jsonl") || ends_with(p, ".jsonl.gz"); }

/* A BEIR folder may hold DIR/NAME.gz instead of DIR/NAME (as some downloads ship it). */
static void prefer_existing(char *path, size_t cap) {
    size_t n = strlen(path);
    if (access(path, F_OK) == 0 || n + 4 > cap) return;
    strcpy(path + n, ".gz");
    if (access(path, F_OK) != 0) path[n] = '\0';
}

static int join(char *buf, size_t cap, const char *dir, const char *name) {
    size_t n = strlen(dir);
    int w = snprintf(buf, cap, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", name);
    return w > 0 && (size_t)w < cap ? 0 : cli_usage_error("--beir '%s': path too long", dir);
}

/* --beir DIR: the folder's files; --queries/--corpus are not used with it. */
static int resolve_beir(mine_texts *t, stage_opts *o, const char **qpath, const char **cpath) {
    if (*qpath || *cpath)
        return cli_usage_error("--beir reads DIR/queries.jsonl and DIR/corpus.jsonl; the "
                               "embeddings are --queries-emb/--corpus-emb (default "
                               "DIR/queries.npy, DIR/corpus.npy), not --queries/--corpus");
    char split[300];
    if (strchr(t->split, '/') || !*t->split)
        return cli_usage_error("--split '%s': expected a name such as test, dev or train",
                               t->split);
    snprintf(split, sizeof split, "qrels/%s.tsv", t->split);
    if (join(t->qtext, sizeof t->qtext, t->beir, "queries.jsonl") ||
        join(t->ctext, sizeof t->ctext, t->beir, "corpus.jsonl") ||
        join(t->qemb, sizeof t->qemb, t->beir, "queries.npy") ||
        join(t->cemb, sizeof t->cemb, t->beir, "corpus.npy") ||
        join(t->qrels, sizeof t->qrels, t->beir, split))
        return CLI_USAGE;
    prefer_existing(t->qtext, sizeof t->qtext);
    prefer_existing(t->ctext, sizeof t->ctext);
    prefer_existing(t->qrels, sizeof t->qrels);
    if (!o->qrels && !o->positives && !o->paired) o->qrels = t->qrels;
    *qpath = t->queries_emb ? t->queries_emb : t->qemb;
    *cpath = t->corpus_emb ? t->corpus_emb : t->cemb;
    return 0;
}

int mine_texts_resolve(mine_texts *t, stage_opts *o, const char **qpath, const char **cpath) {
    if (t->split && !t->beir) return cli_usage_error("--split needs --beir DIR");
    if (!t->split) t->split = "test";
    if (t->beir) {
        int u = resolve_beir(t, o, qpath, cpath);
        if (u) return u;
    } else if (is_jsonl(*qpath) || is_jsonl(*cpath)) {
        if (!is_jsonl(*qpath) || !is_jsonl(*cpath))
            return cli_usage_error("--queries and --corpus are both JSONL texts (with "
                                   "--queries-emb/--corpus-emb) or both embeddings");
        if (!t->queries_emb || !t->corpus_emb)
            return cli_usage_error("--queries/--corpus are JSONL texts: name their embeddings "
                                   "(.npy, row i = line i) with --queries-emb and --corpus-emb");
        snprintf(t->qtext, sizeof t->qtext, "%s", *qpath);
        snprintf(t->ctext, sizeof t->ctext, "%s", *cpath);
        *qpath = t->queries_emb;
        *cpath = t->corpus_emb;
    } else if (t->queries_emb || t->corpus_emb) {
        return cli_usage_error("--queries-emb/--corpus-emb go with --beir DIR or with JSONL "
                               "--queries/--corpus");
    }
    t->has_texts = t->qtext[0] != '\0';
    if (t->has_texts && (o->query_ids || o->corpus_ids))
        return cli_usage_error("the ids are the JSONL's \"_id\"s: --query-ids/--corpus-ids do "
                               "not go with --beir or JSONL --queries/--corpus");
    if (!t->has_texts && o->format == FMT_FLAG)
        return cli_usage_error("--format flag writes texts: pass --beir DIR or JSONL "
                               "--queries/--corpus");
    if (o->with_scores && (!t->has_texts || (o->format != FMT_ST && o->format != FMT_FLAG &&
                                             o->format != FMT_TEVATRON)))
        return cli_usage_error("--with-scores adds scores to the st, flag and tevatron rows with "
                               "texts");
    return 0;
}

int mine_texts_load(mine_texts *t, const cli_embeddings *Q, const cli_embeddings *C) {
    if (!t->has_texts) return 0;
    if (cli_texts_load(&t->q, t->qtext, "query") || cli_texts_load(&t->c, t->ctext, "corpus"))
        return -1;
    const cli_texts *tx[2] = {&t->q, &t->c};
    const cli_embeddings *e[2] = {Q, C};
    for (int i = 0; i < 2; i++)
        if (tx[i]->rows != e[i]->m.rows) {
            cli_error("%s has %lld %s rows but %s has %lld lines (objects); row i of the "
                      "embeddings must be the i-th line of the JSONL",
                      e[i]->path, (long long)e[i]->m.rows, tx[i]->what, tx[i]->path,
                      (long long)tx[i]->rows);
            return -1;
        }
    return 0;
}

void mine_texts_free(mine_texts *t) {
    cli_texts_free(&t->q);
    cli_texts_free(&t->c);
}
