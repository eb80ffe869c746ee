/* The texts of `negsamp mine`: a BEIR folder or HF-style JSONL beside the embeddings. */
#ifndef NS_CLI_MINE_BEIR_H
#define NS_CLI_MINE_BEIR_H

#include "stage.h"

typedef struct {
    const char *beir, *split, *queries_emb, *corpus_emb; /* the flags */
    char qtext[4096], ctext[4096], qemb[4096], cemb[4096], qrels[4096];
    int has_texts;
    cli_texts q, c;
} mine_texts;

/* Fills the texts' paths and the embeddings' (qpath, cpath), and BEIR's qrels into o unless a
 * positives flag is given. 0 or CLI_USAGE (message printed). */
int mine_texts_resolve(mine_texts *t, stage_opts *o, const char **qpath, const char **cpath);
/* Reads the JSONL texts and checks their rows against the embeddings'. 0 or -1. */
int mine_texts_load(mine_texts *t, const cli_embeddings *Q, const cli_embeddings *C);
void mine_texts_free(mine_texts *t);
/* Keeps only the query rows with a positive (s->pos loaded): Q, GQ (when loaded), the ids, qt and
 * the positive lists shrink to them, s->B and s->skipped_queries say how many. 0 or -1. */
int mine_keep_positive_queries(stage *s, cli_embeddings *Q, cli_embeddings *GQ, cli_texts *qt);

#endif
