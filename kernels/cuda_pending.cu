// CUDA entry points not yet written: each returns NS_ERR_UNSUPPORTED with the reason. The CUDA
// backend work removes a function from here as it implements it.
#include "ns_cuda.h"

