// CUDA entry points not yet written: each returns NS_ERR_UNSUPPORTED with the reason. The CUDA
// backend work removes a function from here as it implements it.
#include "ns_cuda.h"

ns_status ns_cuda_filter(ns_context *ctx, const ns_candidates *, const ns_filter_options *,
                         uint8_t *, ns_filter_counts *) {
    return ns_fail(ctx, NS_ERR_UNSUPPORTED, "ns_filter: not yet implemented on CUDA");
}
ns_status ns_cuda_sample(ns_context *ctx, const ns_candidates *, const uint8_t *,
                         const ns_sampler_options *, int64_t, int64_t *, float *, int64_t *) {
    return ns_fail(ctx, NS_ERR_UNSUPPORTED, "ns_sample: not yet implemented on CUDA");
}
ns_status ns_cuda_infonce_forward(ns_context *ctx, const ns_infonce_inputs *, const ns_loss_options *,
                                  float *, float *, float *) {
    return ns_fail(ctx, NS_ERR_UNSUPPORTED, "ns_infonce_forward: not yet implemented on CUDA");
}
ns_status ns_cuda_infonce_backward(ns_context *ctx, const ns_infonce_inputs *, const ns_loss_options *,
                                   const float *, float, const ns_infonce_grads *) {
    return ns_fail(ctx, NS_ERR_UNSUPPORTED, "ns_infonce_backward: not yet implemented on CUDA");
}
