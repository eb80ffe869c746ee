/* InfoNCE forward + backward on the CPU: time, and peak memory beyond inputs and gradients.
 *
 *   bench_infonce [--B 16384] [--N 16384] [--d 384] [--h 0] [--extra 0] [--dtype f32|f16|bf16]
 *                 [--threads 0] [--reps 3] [--symmetric] [--tau-plus X] [--beta X]
 *                 [--tiles ROWSxCOLS] [--mode both|separate|fused] [--json PATH]
 *                 [--inputs Q.npy,P.npy]
 *
 * --inputs: the queries and passages from two f32 .npy files (B and N their rows, d their
 * columns), copied into the program's own buffers: bench/run.py --suite loss hands every
 * implementation the same data, so their losses can be compared.
 * Modes: separate = ns_infonce_forward then ns_infonce_backward (the backward recomputes every
 * logit tile: four GEMMs per tile); fused = ns_infonce_forward_backward (three); both = the two
 * interleaved rep by rep in one process (their times side by side; the peak RSS is then the
 * larger of the two: run one mode per process for each one's memory).
 *
 * Memory: VmHWM (peak resident set, /proc/self/status) after the calls, minus the bytes of the
 * inputs and gradients the program itself holds. That difference is what the loss costs on top
 * of its data (plus the process's fixed baseline: code, BLAS and OpenMP runtimes), and the
 * target is under 64 MiB at B = N = 16384, d = 384. The baseline (VmRSS before the inputs are
 * allocated) is printed too, so the loss's own share can be read off. */
#define _POSIX_C_SOURCE 200809L
#include "negsamp.h"
#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Internal to the library (src/infonce.c): a context's CPU loss tile sizes, for --tiles. */
void ns_infonce_set_tiles(ns_context *ctx, int64_t rows, int64_t cols);

/* OpenBLAS's build string when the library is linked in (weak: absent elsewhere). */
const char *ns_gemm_name(void); /* the CPU GEMM the library was built with (src/cpu) */


static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* CPU seconds of the whole process (all threads): on a shared machine the wall time says more
 * about the neighbours than about the loss. */
static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A "VmHWM:" / "VmRSS:" line of /proc/self/status, in bytes (0 when unavailable). */
static double status_bytes(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    double v = 0;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n)) {
            v = atof(line + n) * 1024.0;
            break;
        }
    fclose(f);
    return v;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float uniform(void) { /* xorshift64*, [-1, 1) */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((rng * 0x2545F4914F6CDD1Dull) >> 40) / 8388608.0f - 1.0f;
}

static uint16_t to_half(float f, ns_dtype dt) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if (dt == NS_BF16) return (uint16_t)(x >> 16);
    /* f16 for values in [-1, 1): exponent rebias, mantissa truncated, subnormals to zero. */
    uint32_t sign = (x >> 16) & 0x8000u;
    int e = (int)((x >> 23) & 0xff) - 127 + 15;
    if (e <= 0) return (uint16_t)sign;
    return (uint16_t)(sign | ((uint32_t)e << 10) | ((x & 0x7fffffu) >> 13));
}

/* rows × d of the given dtype, random and L2-normalised (cosine embeddings). */
static void *make_rows(int64_t rows, int64_t d, ns_dtype dt) {
    size_t es = dt == NS_F32 ? 4 : 2;
    void *p = malloc((size_t)(rows * d) * es);
    if (!p) return NULL;
    float *row = (float *)malloc((size_t)d * 4);
    for (int64_t r = 0; r < rows; r++) {
        double n = 0;
        for (int64_t c = 0; c < d; c++) {
            row[c] = uniform();
            n += (double)row[c] * row[c];
        }
        float s = (float)(1.0 / sqrt(n));
        for (int64_t c = 0; c < d; c++) {
            float v = row[c] * s;
            if (dt == NS_F32) ((float *)p)[r * d + c] = v;
            else ((uint16_t *)p)[r * d + c] = to_half(v, dt);
        }
    }
    free(row);
    return p;
}

/* rows × cols f32 of a .npy file, copied (NULL, with a message, when it cannot be read). */
static float *load_npy(const char *path, int64_t *rows, int64_t *cols) {
    ns_npy_file *f = NULL;
    if (ns_npy_open(path, &f) != NS_OK) {
        fprintf(stderr, "bench_infonce: %s\n", ns_last_error(NULL));
        return NULL;
    }
    ns_matrix m = ns_npy_matrix(f);
    float *x = m.dtype == NS_F32 ? (float *)malloc((size_t)(m.rows * m.cols) * 4) : NULL;
    if (x) memcpy(x, m.data, (size_t)(m.rows * m.cols) * 4);
    else fprintf(stderr, "bench_infonce: %s: expected a <f4 matrix (or out of memory)\n", path);
    *rows = m.rows;
    *cols = m.cols;
    ns_npy_close(f);
    return x;
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench_infonce [--B n] [--N n] [--d n] [--h n] [--extra n] [--dtype f32|f16|bf16]\n"
            "                     [--threads n] [--reps n] [--symmetric] [--tau-plus x] [--beta x]\n"
            "                     [--tiles ROWSxCOLS] [--mode both|separate|fused] [--json PATH]\n"
            "                     [--inputs Q.npy,P.npy]\n");
}

int main(int argc, char **argv) {
    int64_t B = 16384, N = 16384, d = 384, h = 0, E = 0;
    int threads = 0, reps = 3, sym = 0;
    float tau_plus = 0.f, beta = 0.f;
    long long tile_rows = 0, tile_cols = 0;
    ns_dtype dt = NS_F32;
    const char *json = NULL, *dtname = "f32", *mode = "both", *inputs = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--symmetric")) { sym = 1; continue; }
        if (!v) { usage(); return 2; }
        if (!strcmp(a, "--B")) B = atoll(v);
        else if (!strcmp(a, "--N")) N = atoll(v);
        else if (!strcmp(a, "--d")) d = atoll(v);
        else if (!strcmp(a, "--h")) h = atoll(v);
        else if (!strcmp(a, "--extra")) E = atoll(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "--tau-plus")) tau_plus = (float)atof(v);
        else if (!strcmp(a, "--beta")) beta = (float)atof(v);
        else if (!strcmp(a, "--json")) json = v;
        else if (!strcmp(a, "--inputs")) inputs = v;
        else if (!strcmp(a, "--mode")) {
            mode = v;
            if (strcmp(v, "both") && strcmp(v, "separate") && strcmp(v, "fused")) { usage(); return 2; }
        }
        else if (!strcmp(a, "--tiles")) { /* --tiles ROWSxCOLS */
            if (sscanf(v, "%lldx%lld", &tile_rows, &tile_cols) != 2) { usage(); return 2; }
        }
        else if (!strcmp(a, "--dtype")) {
            dtname = v;
            if (!strcmp(v, "f32")) dt = NS_F32;
            else if (!strcmp(v, "f16")) dt = NS_F16;
            else if (!strcmp(v, "bf16")) dt = NS_BF16;
            else { usage(); return 2; }
        } else { usage(); return 2; }
        i++;
    }
    float *qin = NULL, *pin = NULL;
    if (inputs) { /* Q.npy,P.npy: their shapes replace --B, --N, --d */
        char qpath[4096];
        const char *comma = strchr(inputs, ',');
        if (!comma || dt != NS_F32 || (size_t)(comma - inputs) >= sizeof qpath) { usage(); return 2; }
        memcpy(qpath, inputs, (size_t)(comma - inputs));
        qpath[comma - inputs] = 0;
        int64_t dq, dp;
        if (!(qin = load_npy(qpath, &B, &dq)) || !(pin = load_npy(comma + 1, &N, &dp))) return 1;
        if (dq != dp) {
            fprintf(stderr, "bench_infonce: %s has %lld columns, %s %lld\n", qpath, (long long)dq,
                    comma + 1, (long long)dp);
            return 1;
        }
        d = dq;
    }
    if (B < 1 || N < 1 || d < 1 || h < 0 || E < 0 || reps < 1) { usage(); return 2; }
    if (N < B && inputs) {
        fprintf(stderr, "bench_infonce: --inputs: %lld passages for %lld queries (the positive of "
                "query i is passage i)\n", (long long)N, (long long)B);
        return 1;
    }
    if (N < B) N = B; /* positives are passage rows 0..B-1 */

    ns_context_options co = NS_CONTEXT_OPTIONS_INIT;
    co.backend = NS_BACKEND_CPU;
    co.threads = threads;
    ns_context *ctx = NULL;
    if (ns_context_create(&ctx, &co) != NS_OK) {
        fprintf(stderr, "bench_infonce: %s\n", ns_last_error(NULL));
        return 1;
    }
    if (tile_rows || tile_cols) ns_infonce_set_tiles(ctx, tile_rows, tile_cols);
    /* the process before any data (inputs read from --inputs are already resident) */
    double rss_base = status_bytes("VmRSS:") - (inputs ? (double)((B + N) * d) * 4.0 : 0.0);

    size_t es = dt == NS_F32 ? 4 : 2;
    void *q = qin ? (void *)qin : make_rows(B, d, dt), *p = pin ? (void *)pin : make_rows(N, d, dt);
    void *hd = h ? make_rows(B * h, d, dt) : NULL;
    void *ex = E ? make_rows(E, d, dt) : NULL;
    float *dq = (float *)calloc((size_t)(B * d), 4), *dp = (float *)calloc((size_t)(N * d), 4);
    float *dh = h ? (float *)calloc((size_t)(B * h * d), 4) : NULL;
    float *per = (float *)calloc((size_t)B, 4);
    float *saved = (float *)calloc((size_t)B * NS_INFONCE_SAVED_PER_QUERY, 4);
    if (!q || !p || (h && (!hd || !dh)) || (E && !ex) || !dq || !dp || !per || !saved) {
        fprintf(stderr, "bench_infonce: out of memory for the inputs\n");
        return 1;
    }
    /* Every byte the program holds itself, inputs and outputs; touched (calloc'd pages count
     * only once written, and the backward writes them all). */
    double data_bytes = (double)((B + N + B * h + E) * d) * (double)es +
                        (double)((B + N + B * h) * d) * 4.0 +
                        (double)B * (1 + NS_INFONCE_SAVED_PER_QUERY) * 4.0;

    ns_infonce_inputs in;
    memset(&in, 0, sizeof in);
    in.query = (ns_matrix){q, dt, B, d, 0};
    in.passage = (ns_matrix){p, dt, N, d, 0};
    in.hard = (ns_matrix){hd, dt, B * h, d, 0};
    in.hard_per_query = h;
    in.extra = (ns_matrix){ex, dt, E, d, 0};
    ns_loss_options o = NS_LOSS_OPTIONS_INIT;
    o.symmetric = sym;
    o.tau_plus = tau_plus;
    o.beta = beta;
    float loss = 0, dtau = 0;
    ns_infonce_grads g = {dq, dp, dh, &dtau};

    const int run_sep = strcmp(mode, "fused") != 0, run_fused = strcmp(mode, "separate") != 0;
    double tf = 1e30, tb = 1e30, cf = 1e30, cb = 1e30, tfb = 1e30, cfb = 1e30;
    float loss_fused = 0;
    for (int r = 0; r < reps; r++) {
        /* separate and fused alternate, the first of each rep swapped, so that the load of the
         * shared machine falls on both alike */
        for (int k = 0; k < 2; k++) {
            const int fused = (k + r) % 2;
            if (fused && run_fused) {
                double c0 = cpu_now(), t0 = now();
                if (ns_infonce_forward_backward(ctx, &in, &o, 1.0f, &loss_fused, per, saved, &g) !=
                    NS_OK) {
                    fprintf(stderr, "bench_infonce: %s\n", ns_last_error(ctx));
                    return 1;
                }
                double t1 = now(), c1 = cpu_now();
                if (t1 - t0 < tfb) tfb = t1 - t0;
                if (c1 - c0 < cfb) cfb = c1 - c0;
            }
            if (!fused && run_sep) {
                double c0 = cpu_now(), t0 = now();
                if (ns_infonce_forward(ctx, &in, &o, &loss, per, saved) != NS_OK) {
                    fprintf(stderr, "bench_infonce: %s\n", ns_last_error(ctx));
                    return 1;
                }
                double t1 = now(), c1 = cpu_now();
                if (ns_infonce_backward(ctx, &in, &o, saved, 1.0f, &g) != NS_OK) {
                    fprintf(stderr, "bench_infonce: %s\n", ns_last_error(ctx));
                    return 1;
                }
                double t2 = now(), c2 = cpu_now();
                if (t1 - t0 < tf) tf = t1 - t0;
                if (t2 - t1 < tb) tb = t2 - t1;
                if (c1 - c0 < cf) cf = c1 - c0;
                if (c2 - c1 < cb) cb = c2 - c1;
            }
        }
    }
    if (!run_sep) loss = loss_fused;
    if (!run_sep) tf = tb = cf = cb = -1; /* not run */
    if (!run_fused) tfb = cfb = -1;
    double hwm = status_bytes("VmHWM:");
    const double MiB = 1024.0 * 1024.0;
    double extra = hwm - data_bytes;
    double gemm_flops = 2.0 * (double)B * (double)(N + E + (o.share_hard ? B * h : h)) * (double)d;

    char model[256];
    bench_cpu_model(model, sizeof model);
    printf("machine: %s, threads %d (0 = all), GEMM: %s\n", model, threads, ns_gemm_name());
    printf("InfoNCE CPU  B=%lld N=%lld d=%lld h=%lld extra=%lld dtype=%s threads=%d mode=%s%s%s%s\n",
           (long long)B, (long long)N, (long long)d, (long long)h, (long long)E, dtname,
           threads ? threads : -1, mode, sym ? " symmetric" : "", tau_plus > 0 ? " debiased" : "",
           beta > 0 ? " reweighted" : "");
    printf("| %-34s | %12s |\n", "quantity", "value");
    printf("|%s|%s|\n", "------------------------------------", "--------------");
    printf("| %-34s | %12.4f |\n", "loss", (double)loss);
    printf("| %-34s | %12.3f |\n", "forward time (s, best of reps)", tf);
    printf("| %-34s | %12.3f |\n", "backward time (s, best of reps)", tb);
    printf("| %-34s | %12.3f |\n", "forward CPU time (s, all threads)", cf);
    printf("| %-34s | %12.3f |\n", "backward CPU time (s, all threads)", cb);
    printf("| %-34s | %12.3f |\n", "fused fwd+bwd time (s, best)", tfb);
    printf("| %-34s | %12.3f |\n", "fused fwd+bwd CPU time (s)", cfb);
    printf("| %-34s | %12.2f |\n", "separate / fused time", (tf + tb) / tfb);
    printf("| %-34s | %12.1f |\n", "forward GEMM rate (GFLOP/s)", gemm_flops / tf * 1e-9);
    printf("| %-34s | %12.1f |\n", "backward GEMM rate (GFLOP/s, 3x)", 3 * gemm_flops / tb * 1e-9);
    printf("| %-34s | %12.1f |\n", "peak RSS VmHWM (MiB)", hwm / MiB);
    printf("| %-34s | %12.1f |\n", "inputs + gradients + outputs (MiB)", data_bytes / MiB);
    printf("| %-34s | %12.1f |\n", "peak beyond data (MiB)", extra / MiB);
    printf("| %-34s | %12.1f |\n", "  of which process baseline (MiB)", rss_base / MiB);
    printf("| %-34s | %12.1f |\n", "  of which the loss (MiB)", (extra - rss_base) / MiB);
    printf("target: peak beyond data < 64 MiB: %s\n", extra < 64 * MiB ? "yes" : "NO");
    /* A CUDA-enabled build loads the CUDA runtime and cuBLAS at start (~150 MiB resident before
     * any call): that baseline is the library's, not the loss's. */
    printf("target: loss beyond data and process baseline < 64 MiB: %s\n",
           extra - rss_base < 64 * MiB ? "yes" : "NO");

    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "bench_infonce: cannot write %s\n", json);
            return 1;
        }
        fprintf(f,
                "{\"bench\": \"infonce_cpu\", \"B\": %lld, \"N\": %lld, \"d\": %lld, \"h\": %lld, "
                "\"extra\": %lld, \"dtype\": \"%s\", \"threads\": %d, \"symmetric\": %d, "
                "\"tau_plus\": %g, \"beta\": %g, \"reps\": %d, \"loss\": %.6f, "
                "\"forward_s\": %.6f, \"backward_s\": %.6f, \"forward_cpu_s\": %.6f, "
                "\"backward_cpu_s\": %.6f, \"peak_rss_mib\": %.2f, "
                "\"data_mib\": %.2f, \"peak_beyond_data_mib\": %.2f, \"baseline_rss_mib\": %.2f, "
                "\"loss_mib\": %.2f, \"target_mib\": 64, \"meets_target\": %s, "
                "\"loss_meets_target\": %s, \"mode\": \"%s\", \"fused_s\": %.6f, "
                "\"fused_cpu_s\": %.6f, \"cpu\": \"%s\", \"gemm\": \"%s\"}\n",
                (long long)B, (long long)N, (long long)d, (long long)h, (long long)E, dtname,
                threads, sym, (double)tau_plus, (double)beta, reps, (double)loss, tf, tb, cf, cb,
                hwm / MiB, data_bytes / MiB, extra / MiB, rss_base / MiB, (extra - rss_base) / MiB,
                extra < 64 * MiB ? "true" : "false", extra - rss_base < 64 * MiB ? "true" : "false",
                mode, tfb, cfb, model, ns_gemm_name());
        fclose(f);
    }
    free(q); free(p); free(hd); free(ex); free(dq); free(dp); free(dh); free(per); free(saved);
    ns_context_destroy(ctx);
    return 0;
}
