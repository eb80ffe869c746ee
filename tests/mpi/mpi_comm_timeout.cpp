// A rank that leaves (the last one calls MPI_Finalize and exits before the next collective)
// makes every other rank fail with NS_ERR_COMM within the configured timeout instead of hanging:
// on the small exchange (which names the missing rank), the all-gather, the reduce-scatter and
// the creation of a communicator; a communicator that failed stays failed.
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mpi_test_util.h"
#include "step_options.h"
#include "ns_comm.h"

using namespace mpitest;

static const int kTimeoutMs = 2000;

static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The call failed as a timeout should: NS_ERR_COMM, no sooner than the timeout, and well
// before a hang (the bound is loose: ranks share two cores with sanitizers on).
#define CHECK_TIMED_OUT(ctx, st, secs, what)                                                  \
    do {                                                                                      \
        MT_CHECK((st) == NS_ERR_COMM, "%s: %s: %s", what, ns_status_string(st),              \
                 ns_last_error(ctx));                                                         \
        MT_CHECK(contains(ns_last_error(ctx), "timed out after 2000 ms"), "%s: %s", what,     \
                 ns_last_error(ctx));                                                         \
        MT_CHECK((secs) >= 0.9 * kTimeoutMs / 1000.0 && (secs) < kTimeoutMs / 1000.0 + 30.0,  \
                 "%s took %.2f s", what, secs);                                               \
    } while (0)

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    const int R = size(), me = rank(), leaver = R - 1;
    MPI_Comm world = MPI_COMM_WORLD, survivors;
    MPI_Comm_split(MPI_COMM_WORLD, me == leaver ? 1 : 0, me, &survivors);

    ns_context *ctx = cpu_context();
    ns_comm_options o = NS_COMM_OPTIONS_INIT;
    o.timeout_ms = kTimeoutMs;
    ns_comm *a = nullptr, *b = nullptr, *c = nullptr, *sc = nullptr;
    MT_CHECK_OK(ctx, ns_comm_create_mpi(ctx, &world, &o, &a));
    MT_CHECK_OK(ctx, ns_comm_create_mpi(ctx, &world, &o, &b));
    MT_CHECK_OK(ctx, ns_comm_create_mpi(ctx, &world, &o, &c));
    MT_CHECK_OK(ctx, ns_comm_create_mpi(ctx, &world, &o, &sc));
    if (!a || !b || !c || !sc) {
        MPI_Abort(MPI_COMM_WORLD, 1);  // nothing below can run
    }
    // Everyone works once.
    const char *names[] = {"rows"};
    int64_t v[1] = {8};
    MT_CHECK_OK(ctx, ns_comm_check_same(ctx, a, v, names, 1, "test"));
    std::vector<float> rows(8 * 4, 1.f), out((size_t)R * 8 * 4), grad((size_t)R * 8 * 4, 1.f);
    ns_matrix m = {rows.data(), NS_F32, 8, 4, 0};
    MT_CHECK_OK(ctx, ns_comm_allgather_rows(ctx, b, m, out.data(), "test"));

    if (me == leaver) {
        // Leave without a word: no destroy, no further collective. Open MPI lets a finalised
        // rank wait here for the others' MPI_Finalize without failing the job.
        MPI_Comm_free(&survivors);
        MPI_Finalize();
        return 0;
    }

    auto t0 = std::chrono::steady_clock::now();
    ns_status st = ns_comm_check_same(ctx, a, v, names, 1, "ns_step_forward");
    double s = seconds_since(t0);
    CHECK_TIMED_OUT(ctx, st, s, "exchange");
    char want[64];
    std::snprintf(want, sizeof want, "waiting for rank %d (1 rank stopped", leaver);
    MT_CHECK(contains(ns_last_error(ctx), want) && contains(ns_last_error(ctx), "ns_step_forward"),
             "%s", ns_last_error(ctx));

    // A failed communicator fails at once from then on.
    t0 = std::chrono::steady_clock::now();
    st = ns_comm_allgather_rows(ctx, a, m, out.data(), "ns_step_forward");
    MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), "unusable") &&
                 seconds_since(t0) < 1.0,
             "%s", ns_last_error(ctx));

    t0 = std::chrono::steady_clock::now();
    st = ns_comm_allgather_rows(ctx, b, m, out.data(), "ns_step_forward");
    s = seconds_since(t0);
    CHECK_TIMED_OUT(ctx, st, s, "all-gather");

    t0 = std::chrono::steady_clock::now();
    st = ns_comm_reduce_scatter_f32(ctx, c, grad.data(), out.data(), 8 * 4, "ns_step_backward");
    s = seconds_since(t0);
    CHECK_TIMED_OUT(ctx, st, s, "reduce-scatter");

    // The training step: the first exchange of its loss names the rank that left.
    {
        std::vector<float> q(4 * 8), p(4 * 8);
        for (size_t k = 0; k < q.size(); k++) q[k] = p[k] = (float)std::sin(0.3 * (double)k + me);
        ns_batch batch;
        std::memset(&batch, 0, sizeof batch);
        batch.query = ns_matrix{q.data(), NS_F32, 4, 8, 0};
        batch.positive = ns_matrix{p.data(), NS_F32, 4, 8, 0};
        batch.candidate = ns_matrix{nullptr, NS_F32, 0, 8, 0};
        batch.query_offset = 4 * me;
        StepOptions so;
        so.comm = sc;
        ns_step_result res;
        t0 = std::chrono::steady_clock::now();
        st = ns_step_forward(ctx, &batch, so.get(), &res);
        {
            double secs = seconds_since(t0);
            CHECK_TIMED_OUT(ctx, st, secs, "step");
        }
        MT_CHECK(contains(ns_last_error(ctx), want) && contains(ns_last_error(ctx), "ns_step_forward"),
                 "%s", ns_last_error(ctx));
    }

    // Creating a communicator over a set with a departed rank times out too.
    ns_comm *sentinel = (ns_comm *)0x1, *d = sentinel;
    t0 = std::chrono::steady_clock::now();
    st = ns_comm_create_mpi(ctx, &world, &o, &d);
    s = seconds_since(t0);
    CHECK_TIMED_OUT(ctx, st, s, "create");
    MT_CHECK(d == sentinel, "output untouched");

    ns_comm_destroy(a);
    ns_comm_destroy(b);
    ns_comm_destroy(c);
    ns_comm_destroy(sc);
    ns_context_destroy(ctx);
    int rc = finish("mpi_comm_timeout", survivors);
    MPI_Comm_free(&survivors);
    MPI_Finalize();
    return rc;
}
