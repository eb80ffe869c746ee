// The queue's device push (src/queue.c; declared in kernels/ns_cuda.h): rows [first, first + n)
// of a device matrix written into the ring's slots start, start + 1, ... (modulo capacity) in the
// ring's dtype, with their ids (or −1). One kernel on the context's stream: no host copy of the
// rows or ids. The non-finite check of the rows is the ops' usual device scan and its one
// synchronisation, skipped when the caller turned input checks off (the step: its positives
// were already checked by the loss) or while the stream is being captured.
#include "cuda_util.cuh"
#include "ns_cuda.h"

namespace {

// Element e of a ring of dtype t set from f32 v, rounded to nearest even (the CPU queue's
// ns_f32_to_bf16 / ns_f32_to_f16 for finite values).
__device__ __forceinline__ void ns_store_from_f32(void *base, ns_dtype t, size_t e, float v) {
    if (t == NS_F32) ((float *)base)[e] = v;
    else if (t == NS_F16) ((__half *)base)[e] = __float2half_rn(v);
    else ((__nv_bfloat16 *)base)[e] = __float2bfloat16_rn(v);
}

__global__ void ns_k_queue_push(ns_matrix rows, int64_t first, int64_t n, void *ring, ns_dtype rt,
                                int64_t dim, int64_t capacity, int64_t start, const int64_t *ids,
                                int64_t *ring_ids) {
    const int64_t total = n * dim, ld = ns_ld_d(rows);
    const bool same = rows.dtype == rt;
    const size_t es = rt == NS_F32 ? 4 : 2;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = t / dim, c = t - r * dim, slot = (start + r) % capacity;
        const size_t src = (size_t)((first + r) * ld + c), dst = (size_t)(slot * dim + c);
        if (same) {  // raw bits: the rows stored exactly as given
            if (es == 4) ((uint32_t *)ring)[dst] = ((const uint32_t *)rows.data)[src];
            else ((uint16_t *)ring)[dst] = ((const uint16_t *)rows.data)[src];
        } else {
            ns_store_from_f32(ring, rt, dst, ns_load_f32(rows.data, rows.dtype, src));
        }
        if (c == 0) ring_ids[slot] = ids ? ids[first + r] : -1;
    }
}

}  // namespace

ns_status ns_cuda_queue_push(ns_context *ctx, ns_matrix rows, const int64_t *ids, int64_t first,
                             int64_t n, void *ring, ns_dtype ring_dtype, int64_t capacity,
                             int64_t start, int64_t *ring_ids, int validate) {
    static const char *fn = "ns_queue_push";
    if (n <= 0) return NS_OK;
    cudaStream_t st = ns_stream(ctx);
    ns_status rc;
    if (validate && ns_cuda_validating(ctx)) {
        int *flags = nullptr;
        const int *hf = nullptr;
        if ((rc = ns_cuda_flags_reset(ctx, fn, &flags))) return rc;
        if ((rc = ns_cuda_scan_nonfinite(ctx, fn, rows, first, n, flags, 0, st))) return rc;
        if ((rc = ns_cuda_flags_read(ctx, fn, &hf))) return rc;
        int64_t r, c;
        if (ns_cuda_first_nonfinite(hf, 0, rows.cols, &r, &c))
            return ns_fail(ctx, NS_ERR_NONFINITE, "%s: rows[%lld][%lld] is not finite", fn,
                           (long long)r, (long long)c);
    }
    ns_k_queue_push<<<ns_blocks(n * rows.cols), NS_CUDA_THREADS, 0, st>>>(
        rows, first, n, ring, ring_dtype, rows.cols, capacity, start, ids, ring_ids);
    NS_CUDA_TRY(ctx, fn, cudaGetLastError());
    return NS_OK;
}
