/* The one place where row-major products are mapped onto a GEMM library (CMakeLists.txt, "GEMM",
 * chooses it; docs/ARCHITECTURE.md gives the numbers behind the choice):
 *   f32   oneDNN's dnnl_sgemm when built with it (NS_HAVE_ONEDNN), else CBLAS (OpenBLAS, the
 *         OpenMP build where installed). oneDNN's Debian build threads with OpenMP, so the GEMM
 *         and the OpenMP team of the selection share one pool of threads.
 *   bf16  oneDNN's matmul, bf16 × bf16 with f32 accumulation and f32 output (ns_gemm_bf16_nt);
 *         without oneDNN there is none and callers convert to f32. */
#include "ns_cpu.h"

#include <cblas.h>
#include <stdint.h>
#ifdef NS_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------- the context's threads
 * oneDNN (OpenMP runtime) sizes every GEMM's team, and keys its primitive cache, by
 * omp_get_max_threads() at the call; OpenBLAS's OpenMP build does the same. That value is the
 * calling thread's nthreads ICV, so setting it for the duration of an operation reaches every
 * library on the one OpenMP pool without touching other threads of the caller. */
int ns_cpu_threads_enter(const ns_context *ctx) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads(), want = ns_threads(ctx);
    if (want != saved) omp_set_num_threads(want);
    return saved;
#else
    (void)ctx;
    return 0;
#endif
}

void ns_cpu_threads_leave(int saved) {
#ifdef _OPENMP
    if (saved > 0 && omp_get_max_threads() != saved) omp_set_num_threads(saved);
#else
    (void)saved;
#endif
}

static _Thread_local int g_last_threads;

int ns_gemm_last_threads(void) { return g_last_threads; }

void ns_gemm_note_threads(int threads) { g_last_threads = threads; }

/* Outside a parallel region a GEMM is threaded by the libraries with omp_get_max_threads();
 * inside one (mining's per-thread tiles) each team member runs its own GEMMs side by side. */
static void note_threads(void) {
#ifdef _OPENMP
    g_last_threads = omp_in_parallel() ? omp_get_num_threads() : omp_get_max_threads();
#else
    g_last_threads = 1;
#endif
}

#ifndef NS_GEMM_NAME
#define NS_GEMM_NAME "CBLAS"
#endif

const char *ns_gemm_name(void) { return NS_GEMM_NAME; }

#ifdef NS_HAVE_ONEDNN
/* dnnl_sgemm is row-major, like the callers. */
static void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                  int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    note_threads();
    if (dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == dnnl_success) return;
    /* Never expected (the arguments are valid); CBLAS computes the same product. */
    cblas_sgemm(CblasRowMajor, ta == 'T' ? CblasTrans : CblasNoTrans,
                tb == 'T' ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a, (int)lda,
                b, (int)ldb, beta, c, (int)ldc);
}
#else
static void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                  int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    note_threads();
    cblas_sgemm(CblasRowMajor, ta == 'T' ? CblasTrans : CblasNoTrans,
                tb == 'T' ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a, (int)lda,
                b, (int)ldb, beta, c, (int)ldc);
}
#endif

void ns_sgemm_nt(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    sgemm('N', 'T', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void ns_sgemm_nn(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    sgemm('N', 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void ns_sgemm_tn(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    sgemm('T', 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

#ifdef NS_HAVE_ONEDNN
static dnnl_engine_t g_engine;
static int g_ready;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static pthread_key_t g_stream_key; /* each thread's stream, destroyed with the thread */

static void stream_destroy(void *s) { dnnl_stream_destroy((dnnl_stream_t)s); }

static void dnnl_init(void) {
    if (dnnl_engine_create(&g_engine, dnnl_cpu, 0) != dnnl_success) return;
    if (pthread_key_create(&g_stream_key, stream_destroy)) return;
    g_ready = 1;
}

/* The calling thread's stream: a stream is not thread-safe, primitives are (oneDNN), so each
 * thread executes on its own and calls from several threads run side by side. */
static dnnl_stream_t thread_stream(void) {
    dnnl_stream_t s = (dnnl_stream_t)pthread_getspecific(g_stream_key);
    if (s) return s;
    if (dnnl_stream_create(&s, g_engine, dnnl_stream_default_flags) != dnnl_success) return NULL;
    if (pthread_setspecific(g_stream_key, s)) {
        dnnl_stream_destroy(s);
        return NULL;
    }
    return s;
}

int ns_gemm_has_bf16(void) {
    pthread_once(&g_once, dnnl_init);
    return g_ready;
}

int ns_gemm_bf16_nt(int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a, int64_t lda,
                    const uint16_t *b, int64_t ldb, float *c, int64_t ldc) {
    if (!ns_gemm_has_bf16()) return -1;
    note_threads();
    dnnl_memory_desc_t a_md, b_md, c_md;
    dnnl_dims_t ad = {m, k}, bd = {k, n}, cd = {m, n};
    dnnl_dims_t as = {lda, 1}, bs = {1, ldb}, cs = {ldc, 1}; /* B = corpusᵀ: a strided view */
    dnnl_matmul_desc_t md;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
    int rc = -1;
    if (dnnl_memory_desc_init_by_strides(&a_md, 2, ad, dnnl_bf16, as) ||
        dnnl_memory_desc_init_by_strides(&b_md, 2, bd, dnnl_bf16, bs) ||
        dnnl_memory_desc_init_by_strides(&c_md, 2, cd, dnnl_f32, cs) ||
        dnnl_matmul_desc_init(&md, &a_md, &b_md, NULL, &c_md) || dnnl_primitive_attr_create(&attr))
        goto done;
    if (alpha != 1.0f && dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha)) goto done;
    /* oneDNN's primitive cache makes the creation cheap for the repeated tile shapes. */
    if (dnnl_primitive_desc_create(&pd, &md, attr, g_engine, NULL) ||
        dnnl_primitive_create(&prim, pd) ||
        dnnl_memory_create(&ma, &a_md, g_engine, (void *)a) ||
        dnnl_memory_create(&mb, &b_md, g_engine, (void *)b) ||
        dnnl_memory_create(&mc, &c_md, g_engine, c))
        goto done;
    {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
        /* Outside a parallel region oneDNN threads the call with the OpenMP team; inside one
         * (nested teams are off) it runs on the calling thread alone. */
        dnnl_stream_t s = thread_stream();
        rc = (!s || dnnl_primitive_execute(prim, s, 3, args) || dnnl_stream_wait(s)) ? -1 : 0;
    }
done:
    if (ma) dnnl_memory_destroy(ma);
    if (mb) dnnl_memory_destroy(mb);
    if (mc) dnnl_memory_destroy(mc);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return rc;
}
#else
int ns_gemm_has_bf16(void) { return 0; }

int ns_gemm_bf16_nt(int64_t m, int64_t n, int64_t k, float alpha, const uint16_t *a, int64_t lda,
                    const uint16_t *b, int64_t ldb, float *c, int64_t ldc) {
    return -1;
}
#endif
