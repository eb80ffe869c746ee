// CUDA entry points not yet written: each returns NS_ERR_UNSUPPORTED with the reason. The CUDA
// backend work removes a function from here as it implements it.
#include "ns_cuda.h"

ns_status ns_cuda_infonce_forward(ns_context *ctx, const ns_infonce_inputs *, const ns_loss_options *,
                                  float *, float *, float *) {
    return ns_fail(ctx, NS_ERR_UNSUPPORTED, "ns_infonce_forward: not yet implemented on CUDA");
}
ns_status ns_cuda_infonce_backward(ns_context *ctx, const ns_infonce_inputs *, const ns_loss_options *,
                                   const float *, float, const ns_infonce_grads *) {
    return ns_fail(ctx, NS_ERR_UNSUPPORTED, "ns_infonce_backward: not yet implemented on CUDA");
}
