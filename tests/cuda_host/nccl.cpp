// negsamp host execution layer: the one-rank NCCL of nccl.h.
#include "nccl.h"

#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_host_internal.h"

struct ncclComm {
    int device;
    bool blocking;
    bool destroyed = false, aborted = false;
    int pending = 0;  // non-blocking: calls that still answer ncclInProgress once
    std::string last;
};

namespace {

std::vector<std::unique_ptr<ncclComm>> &comms() {
    static std::vector<std::unique_ptr<ncclComm>> v;
    return v;
}
std::string g_last;

bool live(ncclComm_t c) {
    for (auto &p : comms())
        if (p.get() == c) return !c->destroyed;
    return false;
}

ncclResult_t fail(ncclComm_t c, ncclResult_t r, const std::string &why) {
    g_last = why;
    if (c) c->last = why;
    return r;
}

size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    default: return 8;
    }
}

ncclResult_t make(ncclComm_t *out, int nranks, int rank, int device, bool blocking) {
    if (!out) return fail(nullptr, ncclInvalidArgument, "comm is NULL");
    if (nranks != 1 || rank != 0)
        return fail(nullptr, ncclInvalidUsage,
                    "the host execution layer's NCCL has one rank per communicator (nranks " +
                        std::to_string(nranks) + ", rank " + std::to_string(rank) + ")");
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || device < 0 || device >= n) {
        cudaGetLastError();
        return fail(nullptr, ncclUnhandledCudaError, "no such device");
    }
    comms().emplace_back(new ncclComm{device, blocking});
    *out = comms().back().get();
    if (!blocking) (*out)->pending = 1;
    return blocking ? ncclSuccess : ncclInProgress;
}

// The checks of real NCCL on a one-rank call: a live communicator, the stream and the buffers
// on its device. ncclSuccess or the failure.
ncclResult_t check_call(const char *what, std::initializer_list<const void *> bufs, size_t bytes,
                        ncclComm_t comm, cudaStream_t stream) {
    if (!live(comm)) return fail(nullptr, ncclInvalidArgument, std::string(what) + ": not a live communicator");
    if (comm->aborted) return fail(comm, ncclInvalidUsage, std::string(what) + ": aborted communicator");
    int sdev = -1;
    if (cuda_host::stream_device(stream, &sdev) != cudaSuccess || sdev != comm->device)
        return fail(comm, ncclInvalidUsage,
                    std::string(what) + ": the stream is not on the communicator's device " +
                        std::to_string(comm->device));
    for (const void *p : bufs) {
        const cuda_host::Alloc *a = cuda_host::find_alloc(p, false);
        if (bytes && (!a || a->pinned || a->device != comm->device))
            return fail(comm, ncclInvalidArgument,
                        std::string(what) + ": a buffer is not device memory of device " +
                            std::to_string(comm->device));
    }
    return ncclSuccess;
}

// Queues recv = send (bytes) on the stream; a non-blocking communicator answers InProgress.
ncclResult_t queue_copy(const void *send, void *recv, size_t bytes, ncclComm_t comm,
                        cudaStream_t stream) {
    if (send != recv && bytes) {
        cudaError_t e = cudaMemcpyAsync(recv, send, bytes, cudaMemcpyDeviceToDevice, stream);
        if (e != cudaSuccess) return fail(comm, ncclUnhandledCudaError, cudaGetErrorString(e));
    }
    if (!comm->blocking) {
        comm->pending = 1;
        return ncclInProgress;
    }
    return ncclSuccess;
}

// A collective of one rank: recv = send (count elements), queued on the stream, which must be
// on the communicator's device, as must the buffers.
ncclResult_t copy_collective(const char *what, const void *send, void *recv, size_t bytes,
                             ncclComm_t comm, cudaStream_t stream) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    ncclResult_t r = check_call(what, {send, (const void *)recv}, bytes, comm, stream);
    return r != ncclSuccess ? r : queue_copy(send, recv, bytes, comm, stream);
}

// Point-to-point calls wait in the open group (ncclGroupStart .. ncclGroupEnd) until its end
// pairs each communicator's sends with its receives in call order (one rank: peer 0 = self).
struct P2p {
    bool send;
    const void *buf;
    size_t bytes;
    ncclComm_t comm;
    cudaStream_t stream;
};
int g_group_depth = 0;
std::vector<P2p> g_group;

ncclResult_t p2p(const char *what, bool send, const void *buf, size_t count,
                 ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    size_t bytes = count * type_size(type);
    ncclResult_t r = check_call(what, {buf}, bytes, comm, stream);
    if (r != ncclSuccess) return r;
    if (peer != 0)
        return fail(comm, ncclInvalidArgument,
                    std::string(what) + ": peer " + std::to_string(peer) +
                        " outside the one-rank communicator");
    if (!g_group_depth)  // real NCCL would wait forever for the self pair
        return fail(comm, ncclInvalidUsage,
                    std::string(what) + " to self outside ncclGroupStart/ncclGroupEnd would hang");
    g_group.push_back(P2p{send, buf, bytes, comm, stream});
    return ncclSuccess;
}

}  // namespace

extern "C" {

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown result code";
}
const char *ncclGetLastError(ncclComm_t comm) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    return comm && live(comm) ? comm->last.c_str() : g_last.c_str();
}
ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    if (!id) return fail(nullptr, ncclInvalidArgument, "id is NULL");
    std::memset(id, 0, sizeof *id);
    std::memcpy(id->internal, "negsamp-host-layer", 18);
    return ncclSuccess;
}
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    (void)id;
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    return make(comm, nranks, rank, cuda_host::current_device(), true);
}
ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t *config) {
    (void)id;
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    return make(comm, nranks, rank, cuda_host::current_device(), !config || config->blocking);
}
ncclResult_t ncclCommInitAll(ncclComm_t *comms_out, int ndev, const int *devlist) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    if (ndev != 1) return fail(nullptr, ncclInvalidUsage, "the host layer's NCCL has one rank");
    return make(comms_out, 1, 0, devlist ? devlist[0] : 0, true);
}
ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    if (!live(comm) || !count) return ncclInvalidArgument;
    *count = 1;
    return ncclSuccess;
}
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    if (!live(comm) || !rank) return ncclInvalidArgument;
    *rank = 0;
    return ncclSuccess;
}
ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    if (!live(comm) || !device) return ncclInvalidArgument;
    *device = comm->device;
    return ncclSuccess;
}
// A non-blocking communicator's call is "in progress" until the first query after it.
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    if (!live(comm) || !async) return ncclInvalidArgument;
    *async = comm->aborted ? ncclInvalidUsage : comm->pending ? ncclInProgress : ncclSuccess;
    comm->pending = 0;
    return ncclSuccess;
}
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    if (!live(comm)) return ncclInvalidArgument;
    if (!comm->blocking) {
        comm->pending = 1;
        return ncclInProgress;
    }
    return ncclSuccess;
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    if (!live(comm)) return ncclInvalidArgument;
    comm->destroyed = true;
    return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    if (!live(comm)) return ncclInvalidArgument;
    comm->aborted = true;
    comm->destroyed = true;
    return ncclSuccess;
}
ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
    return copy_collective("ncclAllGather", send, recv, count * type_size(type), comm, stream);
}
ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    (void)op;  // one rank: the sum of one term
    return copy_collective("ncclReduceScatter", send, recv, count * type_size(type), comm, stream);
}

ncclResult_t ncclGroupStart(void) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    g_group_depth++;
    return ncclSuccess;
}
ncclResult_t ncclGroupEnd(void) {
    std::lock_guard<std::recursive_mutex> lk(cuda_host::mutex());
    if (!g_group_depth) return fail(nullptr, ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--g_group_depth) return ncclSuccess;
    std::vector<P2p> ops;
    ops.swap(g_group);
    ncclResult_t out = ncclSuccess;
    std::vector<bool> used(ops.size(), false);
    for (size_t i = 0; i < ops.size(); i++) {  // each send with the next unused receive
        if (!ops[i].send) continue;
        size_t j = 0;
        while (j < ops.size() && (used[j] || ops[j].send || ops[j].comm != ops[i].comm)) j++;
        if (j == ops.size() || ops[j].bytes != ops[i].bytes)
            return fail(ops[i].comm, ncclInvalidUsage,
                        "ncclSend of " + std::to_string(ops[i].bytes) +
                            " bytes to self has no ncclRecv of as many bytes in the group");
        used[i] = used[j] = true;
        ncclResult_t r = queue_copy(ops[i].buf, const_cast<void *>(ops[j].buf), ops[i].bytes,
                                    ops[i].comm, ops[j].stream);
        if (r != ncclSuccess && r != ncclInProgress) return r;
        if (r == ncclInProgress) out = r;
    }
    for (size_t j = 0; j < ops.size(); j++)
        if (!used[j])
            return fail(ops[j].comm, ncclInvalidUsage,
                        "ncclRecv from self has no ncclSend in the group");
    return out;
}
ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
    return p2p("ncclSend", true, sendbuff, count, datatype, peer, comm, stream);
}
ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
    return p2p("ncclRecv", false, recvbuff, count, datatype, peer, comm, stream);
}

}  // extern "C"
