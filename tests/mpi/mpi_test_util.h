// Helpers for the multi-rank test programs: checks that count failures instead of aborting
// (every rank must reach MPI_Finalize), and a closing line from rank 0.
#pragma once

#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "negsamp.h"

namespace mpitest {

inline int &failures() {
    static int n = 0;
    return n;
}
inline int rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}
inline int size() {
    int s = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
}

#define MT_CHECK(cond, ...)                                                                   \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            ++mpitest::failures();                                                            \
            std::fprintf(stderr, "[rank %d] FAILED %s:%d: %s: ", mpitest::rank(), __FILE__,   \
                         __LINE__, #cond);                                                    \
            std::fprintf(stderr, __VA_ARGS__);                                                \
            std::fprintf(stderr, "\n");                                                       \
        }                                                                                     \
    } while (0)

#define MT_CHECK_OK(ctx, call)                                                                \
    do {                                                                                      \
        ns_status st_ = (call);                                                               \
        MT_CHECK(st_ == NS_OK, "%s -> %s: %s", #call, ns_status_string(st_),                \
                 ns_last_error(ctx));                                                         \
    } while (0)

// A CPU context of one thread (the ranks share the machine's cores); nullptr after a counted
// failure.
inline ns_context *cpu_context() {
    ns_context_options o = NS_CONTEXT_OPTIONS_INIT;
    o.backend = NS_BACKEND_CPU;
    o.threads = 1;
    ns_context *ctx = nullptr;
    MT_CHECK(ns_context_create(&ctx, &o) == NS_OK, "ns_context_create: %s",
             ns_last_error(nullptr));
    return ctx;
}

// The library's communicator over MPI_COMM_WORLD, with timeout_ms (0: the library's default);
// nullptr after a counted failure (or without ctx).
inline ns_comm *world_comm(ns_context *ctx, int timeout_ms = 0) {
    if (!ctx) return nullptr;
    MPI_Comm world = MPI_COMM_WORLD;
    ns_comm_options o = NS_COMM_OPTIONS_INIT;
    if (timeout_ms) o.timeout_ms = timeout_ms;
    ns_comm *comm = nullptr;
    MT_CHECK_OK(ctx, ns_comm_create_mpi(ctx, &world, &o, &comm));
    return comm;
}

inline bool contains(const char *hay, const char *needle) {
    return hay && std::strstr(hay, needle) != nullptr;
}

// Sums every rank's failure count; rank 0 prints the closing line. Returns the exit code.
// over: the ranks still taking part (all of them unless a test made one leave).
inline int finish(const char *name, MPI_Comm over = MPI_COMM_WORLD) {
    int mine = failures(), all = 0, me = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_SUM, over);
    MPI_Comm_rank(over, &me);
    if (me == 0) {
        if (all == 0) std::printf("%s: all checks passed on %d ranks\n", name, size());
        else std::printf("%s: %d check(s) FAILED on %d ranks\n", name, all, size());
        std::fflush(stdout);
    }
    return all == 0 ? 0 : 1;
}

}  // namespace mpitest
