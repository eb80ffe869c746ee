// The communicator primitives under MPI on CPU ranks: all-gather of rows (strided, every dtype),
// of raw ids, reduce-scatter, the rank-ordered all-reduce, the cross-rank consistency check, the
// personalised all-to-all (uneven and empty messages; counts that disagree, a NULL buffer),
// sub-communicators, and the argument checks of the public constructors.
#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "mpi_test_util.h"
#include "ns_comm.h"

using namespace mpitest;

// A value that says where it came from: rank, row, column.
static float tag(int r, int64_t row, int64_t col) {
    return (float)(r * 1000 + row) + 0.001f * (float)(col + 1);
}

static void test_public_arguments(ns_context *ctx) {
    MPI_Comm world = MPI_COMM_WORLD, null_comm = MPI_COMM_NULL;
    ns_comm *sentinel = (ns_comm *)0x1, *c = sentinel;
    MT_CHECK(ns_comm_rank(nullptr) == 0 && ns_comm_size(nullptr) == 1, "NULL comm is one rank");
    MT_CHECK(ns_comm_destroy(nullptr) == NS_OK, "destroy(NULL)");

    ns_status st = ns_comm_create_mpi(nullptr, &world, nullptr, &c);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(nullptr), "ctx"), "%s",
             ns_last_error(nullptr));
    st = ns_comm_create_mpi(ctx, &world, nullptr, nullptr);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "comm is NULL"), "%s",
             ns_last_error(ctx));
    st = ns_comm_create_mpi(ctx, nullptr, nullptr, &c);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "mpi_comm"), "%s",
             ns_last_error(ctx));
    st = ns_comm_create_mpi(ctx, &null_comm, nullptr, &c);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "MPI_COMM_NULL"), "%s",
             ns_last_error(ctx));
    ns_comm_options o = NS_COMM_OPTIONS_INIT;
    o.timeout_ms = 0;
    st = ns_comm_create_mpi(ctx, &world, &o, &c);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "timeout_ms (0)"),
             "%s", ns_last_error(ctx));
    o = NS_COMM_OPTIONS_INIT;
    o.struct_size = 4;
    st = ns_comm_create_mpi(ctx, &world, &o, &c);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "struct_size (4)"),
             "%s", ns_last_error(ctx));
    MT_CHECK(c == sentinel, "output untouched on failure");

    // NCCL on a CPU context (or in a build without NCCL): unsupported, with the reason.
    char id[NS_NCCL_UNIQUE_ID_BYTES] = {0};
    st = ns_comm_create_nccl_id(ctx, id, 1, 0, nullptr, &c);
    MT_CHECK(st == NS_ERR_UNSUPPORTED && (contains(ns_last_error(ctx), "CPU context") ||
                                          contains(ns_last_error(ctx), "without NCCL")),
             "%s", ns_last_error(ctx));
    st = ns_comm_create_nccl_id(ctx, id, 2, 2, nullptr, &c);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "rank (2)"), "%s",
             ns_last_error(ctx));
    st = ns_comm_create_nccl_id(ctx, id, 0, 0, nullptr, &c);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "nranks (0)"), "%s",
             ns_last_error(ctx));
    st = ns_comm_create_nccl(ctx, nullptr, nullptr, &c);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "nccl_comm"), "%s",
             ns_last_error(ctx));
    MT_CHECK(c == sentinel, "output untouched on failure");
}

static void test_allgather_rows(ns_context *ctx, ns_comm *comm) {
    const int R = ns_comm_size(comm), me = ns_comm_rank(comm);
    const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 33}, {64, 96, 100}};
    for (auto &s : shapes) {
        int64_t rows = s[0], cols = s[1], ld = s[2];
        std::vector<float> mine((size_t)(rows * ld), -7.f);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) mine[(size_t)(i * ld + j)] = tag(me, i, j);
        ns_matrix m = {mine.data(), NS_F32, rows, cols, ld};
        std::vector<float> out((size_t)(R * rows * cols), NAN);
        MT_CHECK_OK(ctx, ns_comm_allgather_rows(ctx, comm, m, out.data(), "test"));
        int bad = 0;
        for (int r = 0; r < R; r++)
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = 0; j < cols; j++) {
                    float got = out[(size_t)((r * rows + i) * cols + j)];
                    if (got != tag(r, i, j) && bad++ < 3)
                        MT_CHECK(false, "rows %lld cols %lld: rank %d row %lld col %lld: %g != %g",
                                 (long long)rows, (long long)cols, r, (long long)i, (long long)j,
                                 got, tag(r, i, j));
                }
    }
    // 16-bit rows travel as bytes: bf16 bits come back exactly.
    int64_t rows = 5, cols = 9, ld = 12;
    std::vector<uint16_t> h((size_t)(rows * ld));
    for (size_t k = 0; k < h.size(); k++) h[k] = (uint16_t)(me * 977 + k * 31);
    ns_matrix m = {h.data(), NS_BF16, rows, cols, ld};
    std::vector<uint16_t> out((size_t)(R * rows * cols), 0);
    MT_CHECK_OK(ctx, ns_comm_allgather_rows(ctx, comm, m, out.data(), "test"));
    for (int r = 0; r < R; r++)
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++)
                MT_CHECK(out[(size_t)((r * rows + i) * cols + j)] ==
                             (uint16_t)(r * 977 + (i * ld + j) * 31),
                         "bf16 rank %d row %lld col %lld", r, (long long)i, (long long)j);
    // Raw ids.
    std::vector<int64_t> ids = {me * 10 + 0, me * 10 + 1, -1};
    std::vector<int64_t> all((size_t)R * 3, 99);
    MT_CHECK_OK(ctx, ns_comm_allgather(ctx, comm, ids.data(), 3, sizeof(int64_t), all.data(), "test"));
    for (int r = 0; r < R; r++)
        MT_CHECK(all[(size_t)r * 3] == r * 10 && all[(size_t)r * 3 + 1] == r * 10 + 1 &&
                     all[(size_t)r * 3 + 2] == -1,
                 "ids of rank %d", r);
}

static void test_reduce_scatter(ns_context *ctx, ns_comm *comm) {
    const int R = ns_comm_size(comm), me = ns_comm_rank(comm);
    for (size_t n : {(size_t)1, (size_t)7, (size_t)1000}) {
        // Rank r contributes f(r, k) to every slot k of the R·n send buffer.
        auto f = [](int r, size_t k) { return (float)std::sin(0.37 * (double)k + 1.3 * r); };
        std::vector<float> send(n * (size_t)R);
        for (size_t k = 0; k < send.size(); k++) send[k] = f(me, k);
        std::vector<float> recv(n, NAN);
        MT_CHECK_OK(ctx, ns_comm_reduce_scatter_f32(ctx, comm, send.data(), recv.data(), n, "test"));
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            double want = 0;
            for (int r = 0; r < R; r++) want += f(r, (size_t)me * n + i);
            if (std::fabs(recv[i] - want) > 1e-5 + 1e-5 * std::fabs(want) && bad++ < 3)
                MT_CHECK(false, "n %zu slot %zu: %.8g != %.8g", n, i, recv[i], want);
        }
    }
}

static void test_allreduce(ns_context *ctx, ns_comm *comm, MPI_Comm same) {
    const int R = ns_comm_size(comm), me = ns_comm_rank(comm);
    double v[3] = {0.1 * (me + 1), 1e16 * (me % 2 ? 1 : -1), 1.0 / (me + 3)};
    MT_CHECK_OK(ctx, ns_comm_allreduce_sum_host(ctx, comm, v, 3, "test"));
    double want0 = 0, want2 = 0;
    for (int r = 0; r < R; r++) {
        want0 += 0.1 * (r + 1);
        want2 += 1.0 / (r + 3);
    }
    MT_CHECK(std::fabs(v[0] - want0) < 1e-12 && std::fabs(v[2] - want2) < 1e-12, "%g %g", v[0],
             v[2]);
    // Every rank holds the same bits.
    std::vector<double> all((size_t)R * 3);
    MPI_Allgather(v, 3, MPI_DOUBLE, all.data(), 3, MPI_DOUBLE, same);
    for (int r = 0; r < R; r++)
        MT_CHECK(std::memcmp(&all[(size_t)r * 3], v, sizeof v) == 0, "rank %d differs", r);
}

static void test_check_same(ns_context *ctx, ns_comm *comm) {
    const int me = ns_comm_rank(comm), R = ns_comm_size(comm);
    const char *names[] = {"batch.query.rows", "batch.query.cols", "options->hard_negatives"};
    int64_t v[3] = {32, 768, 4};
    MT_CHECK_OK(ctx, ns_comm_check_same(ctx, comm, v, names, 3, "ns_step_forward"));
    if (R < 2) return;
    if (me == R - 1) v[2] = 5;  // the last rank disagrees about h
    ns_status st = ns_comm_check_same(ctx, comm, v, names, 3, "ns_step_forward");
    char want[64];
    std::snprintf(want, sizeof want, "4 on rank 0 but 5 on rank %d", R - 1);
    MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), "options->hard_negatives") &&
                 contains(ns_last_error(ctx), want) && contains(ns_last_error(ctx), "ns_step_forward"),
             "%s: %s", ns_status_string(st), ns_last_error(ctx));
    // Disagreement is reported, but the communicator itself still works.
    v[2] = 4;
    MT_CHECK_OK(ctx, ns_comm_check_same(ctx, comm, v, names, 3, "ns_step_forward"));
}

// Rank r sends rank j (r + 2j) % 4 bytes (some empty), each byte saying (r, j, position); every
// rank checks what arrived at its displacements (in reverse rank order, with gaps). Then counts
// that do not pair up fail every rank naming both ranks, and a NULL send buffer on one rank
// fails it with its own message and the others with NS_ERR_COMM naming it.
static unsigned char a2a_byte(int r, int j, size_t t) { return (unsigned char)(r * 31 + j * 7 + t); }

static void test_alltoallv(ns_context *ctx, ns_comm *comm) {
    const int me = ns_comm_rank(comm), R = ns_comm_size(comm);
    const char *fn = "test_alltoallv";
    std::vector<size_t> sc(R), sd(R), rc(R), rd(R);
    size_t out = 0, in = 0;
    for (int j = 0; j < R; j++) sc[j] = (size_t)(me + 2 * j) % 4, sd[j] = out, out += sc[j];
    for (int r = R - 1; r >= 0; r--) rc[r] = (size_t)(r + 2 * me) % 4, rd[r] = in, in += rc[r] + 1;
    std::vector<unsigned char> send(out + 1), recv(in + 1, 0xee);
    for (int j = 0; j < R; j++)
        for (size_t t = 0; t < sc[j]; t++) send[sd[j] + t] = a2a_byte(me, j, t);
    MT_CHECK_OK(ctx, ns_comm_alltoallv_host(ctx, comm, send.data(), sc.data(), sd.data(),
                                            recv.data(), rc.data(), rd.data(), fn));
    for (int r = 0; r < R; r++) {
        for (size_t t = 0; t < rc[r]; t++)
            MT_CHECK(recv[rd[r] + t] == a2a_byte(r, me, t), "byte %zu from rank %d", t, r);
        MT_CHECK(recv[rd[r] + rc[r]] == 0xee, "the gap after rank %d's bytes was written", r);
    }
    if (R < 2) return;
    // The last rank expects one byte more from rank 0 than rank 0 sends it.
    if (me == R - 1) rc[0]++;
    ns_status st = ns_comm_alltoallv_host(ctx, comm, send.data(), sc.data(), sd.data(),
                                          recv.data(), rc.data(), rd.data(), fn);
    char want[96];
    std::snprintf(want, sizeof want, "rank 0 sends %zu bytes to rank %d", (size_t)(2 * (R - 1)) % 4,
                  R - 1);
    MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), want) &&
                 contains(ns_last_error(ctx), "rcount[0]"),
             "%s: %s", ns_status_string(st), ns_last_error(ctx));
    if (me == R - 1) rc[0]--;
    // Rank 1 passes a NULL send buffer with bytes to send (rank 1 sends (1 + 2j) % 4 > 0 bytes).
    st = ns_comm_alltoallv_host(ctx, comm, me == 1 ? nullptr : send.data(), sc.data(), sd.data(),
                                recv.data(), rc.data(), rd.data(), fn);
    if (me == 1)
        MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "send is NULL"),
                 "%s: %s", ns_status_string(st), ns_last_error(ctx));
    else
        MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), "rank 1 rejected"), "%s: %s",
                 ns_status_string(st), ns_last_error(ctx));
    // The communicator still works.
    MT_CHECK_OK(ctx, ns_comm_alltoallv_host(ctx, comm, send.data(), sc.data(), sd.data(),
                                            recv.data(), rc.data(), rd.data(), fn));
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ns_context *ctx = cpu_context();
    test_public_arguments(ctx);

    MPI_Comm world = MPI_COMM_WORLD;
    ns_comm_options o = NS_COMM_OPTIONS_INIT;
    o.timeout_ms = 60000;
    ns_comm *comm = nullptr;
    MT_CHECK_OK(ctx, ns_comm_create_mpi(ctx, &world, &o, &comm));
    if (comm) {
        MT_CHECK(ns_comm_rank(comm) == rank() && ns_comm_size(comm) == size(), "rank %d size %d",
                 ns_comm_rank(comm), ns_comm_size(comm));
        test_allgather_rows(ctx, comm);
        test_reduce_scatter(ctx, comm);
        test_allreduce(ctx, comm, MPI_COMM_WORLD);
        test_check_same(ctx, comm);
        test_alltoallv(ctx, comm);
    }
    ns_comm_destroy(comm);

    // A caller's sub-communicator (even and odd ranks), and a one-rank one.
    MPI_Comm half, solo;
    MPI_Comm_split(MPI_COMM_WORLD, rank() % 2, rank(), &half);
    MPI_Comm_split(MPI_COMM_WORLD, rank(), 0, &solo);
    ns_comm *ch = nullptr, *cs = nullptr;
    MT_CHECK_OK(ctx, ns_comm_create_mpi(ctx, &half, &o, &ch));
    MT_CHECK_OK(ctx, ns_comm_create_mpi(ctx, &solo, &o, &cs));
    if (ch && cs) {
        MT_CHECK(ns_comm_size(ch) == (size() + 1 - rank() % 2) / 2 && ns_comm_rank(ch) == rank() / 2,
                 "half: rank %d size %d", ns_comm_rank(ch), ns_comm_size(ch));
        MT_CHECK(ns_comm_size(cs) == 1 && ns_comm_rank(cs) == 0, "solo");
        test_allgather_rows(ctx, ch);
        test_reduce_scatter(ctx, ch);
        test_allgather_rows(ctx, cs);
        test_reduce_scatter(ctx, cs);
        test_allreduce(ctx, cs, solo);
        test_allreduce(ctx, ch, half);
        test_check_same(ctx, ch);
        test_alltoallv(ctx, ch);
        test_alltoallv(ctx, cs);
    }
    ns_comm_destroy(ch);
    ns_comm_destroy(cs);
    MPI_Comm_free(&half);
    MPI_Comm_free(&solo);

    ns_context_destroy(ctx);
    int rc = finish("mpi_comm");
    MPI_Finalize();
    return rc;
}
