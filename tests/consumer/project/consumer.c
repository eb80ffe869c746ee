/* A program outside the negsamp tree, built against an installed negsamp (CMake package or
 * pkg-config): it creates a CPU context, mines the top 2 of a small corpus and checks the
 * result against a double-precision reference computed here, then checks that an argument
 * error carries the library's message. Exit 0 when everything holds. */
#include <negsamp.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { B = 3, N = 7, D = 5, K = 2 };

int main(void) {
    if (ns_version() != NS_VERSION_CODE) {
        fprintf(stderr, "consumer: header version %d but library %d\n", NS_VERSION_CODE,
                ns_version());
        return 1;
    }
    ns_context_options opt = NS_CONTEXT_OPTIONS_INIT;
    opt.backend = NS_BACKEND_CPU;
    ns_context *ctx = NULL;
    ns_status st = ns_context_create(&ctx, &opt);
    if (st != NS_OK) {
        fprintf(stderr, "consumer: ns_context_create: %s\n", ns_status_string(st));
        return 1;
    }
    float q[B * D], c[N * D];
    for (int i = 0; i < B * D; i++) q[i] = (float)sin(1.0 + 0.7 * i);
    for (int i = 0; i < N * D; i++) c[i] = (float)cos(0.3 + 1.3 * i);
    ns_matrix mq = {q, NS_F32, B, D, D}, mc = {c, NS_F32, N, D, D};
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.scale = 0.5f;
    int64_t index[B * K];
    float score[B * K];
    st = ns_mine_topk(ctx, mq, mc, K, &mo, index, score);
    if (st != NS_OK) {
        fprintf(stderr, "consumer: ns_mine_topk: %s\n", ns_last_error(ctx));
        return 1;
    }
    int bad = 0;
    for (int i = 0; i < B; i++) {
        double s[N];
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < D; k++) acc += (double)q[i * D + k] * c[j * D + k];
            s[j] = 0.5 * acc;
        }
        int taken[N] = {0};
        for (int r = 0; r < K; r++) { /* the r-th best, ties to the lower row */
            int best = -1;
            for (int j = 0; j < N; j++)
                if (!taken[j] && (best < 0 || s[j] > s[best])) best = j;
            taken[best] = 1;
            if (index[i * K + r] != best || fabs(score[i * K + r] - s[best]) > 1e-5) {
                fprintf(stderr, "consumer: query %d rank %d: got row %lld score %g, expected row "
                        "%d score %g\n", i, r, (long long)index[i * K + r],
                        (double)score[i * K + r], best, s[best]);
                bad = 1;
            }
        }
    }
    /* An argument error: a status and the library's message, no abort. */
    st = ns_mine_topk(ctx, mq, mc, N + 1, &mo, index, score);
    if (st != NS_ERR_INVALID_ARGUMENT || !strstr(ns_last_error(ctx), "k (8)")) {
        fprintf(stderr, "consumer: k = 8 of 7 rows gave %s: %s\n", ns_status_string(st),
                ns_last_error(ctx));
        bad = 1;
    }
    ns_context_destroy(ctx);
    if (!bad) printf("consumer: ok (negsamp %d, top-%d of %d rows for %d queries)\n",
                     ns_version(), K, N, B);
    return bad;
}
