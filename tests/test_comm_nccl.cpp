// The NCCL communicator: a one-rank communicator on one GPU (from an ncclUniqueId and from a
// caller's ncclComm_t), and, where two or more GPUs exist, one rank per GPU in threads of this
// process: all-gather, reduce-scatter, the consistency check, and a rank that stops answering
// (the others fail with NS_ERR_COMM within the timeout). Without a GPU or without NCCL the
// tests skip with the reason; argument checks run everywhere.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../src/ns_comm.h"
#include "ns_test_util.h"
#ifdef NS_CUDA_HOST_LAYER
#include "cuda_host_internal.h"
#endif
#include "step_options.h"
#ifdef NS_HAVE_NCCL
#include <nccl.h>
#endif

using namespace nstest;

namespace {

float tag(int r, int64_t row, int64_t col) { return (float)(r * 1000 + row) + 0.001f * (float)(col + 1); }

#define NS_REQUIRE_NCCL()                                                                     \
    do {                                                                                      \
        if (!kNcclBuilt) GTEST_SKIP() << "this build has no NCCL communicator (built without NCCL)"; \
    } while (0)

#ifdef NS_CUDA_HOST_LAYER
const bool kHostLayer = true;
#else
const bool kHostLayer = false;
#endif

#ifdef NS_HAVE_NCCL
const bool kNcclBuilt = true;
#else
const bool kNcclBuilt = false;
#endif

TEST(CommNccl, ArgumentsAnywhere) {
    Ctx c(NS_BACKEND_CPU);
    NS_REQUIRE_BACKEND(c);
    ns_comm *sentinel = (ns_comm *)0x1, *comm = sentinel;
    char id[NS_NCCL_UNIQUE_ID_BYTES] = {0};
    EXPECT_EQ(ns_comm_create_nccl_id(c, id, 1, 0, nullptr, &comm), NS_ERR_UNSUPPORTED);
    EXPECT_TRUE(strstr(ns_last_error(c), "CPU context") || strstr(ns_last_error(c), "without NCCL"))
        << ns_last_error(c);
    EXPECT_EQ(ns_comm_create_nccl_id(c, nullptr, 1, 0, nullptr, &comm), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(strstr(ns_last_error(c), "unique_id"), nullptr) << ns_last_error(c);
    EXPECT_EQ(ns_comm_create_nccl_id(c, id, 4, -1, nullptr, &comm), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(strstr(ns_last_error(c), "rank (-1)"), nullptr) << ns_last_error(c);
    EXPECT_EQ(ns_comm_create_nccl(c, nullptr, nullptr, &comm), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(strstr(ns_last_error(c), "nccl_comm"), nullptr) << ns_last_error(c);
    EXPECT_EQ(ns_comm_create_nccl(nullptr, id, nullptr, &comm), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(comm, sentinel);
    EXPECT_EQ(ns_nccl_unique_id(c, nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(ns_comm_rank(nullptr), 0);
    EXPECT_EQ(ns_comm_size(nullptr), 1);
    EXPECT_EQ(ns_comm_destroy(nullptr), NS_OK);
}

// One rank's checks of the primitives on a communicator of R ranks (device buffers).
void check_primitives(const Ctx &c, ns_comm *comm, std::vector<std::string> *errors) {
    const int R = ns_comm_size(comm), me = ns_comm_rank(comm);
    auto fail = [&](const std::string &s) { errors->push_back("rank " + std::to_string(me) + ": " + s); };
    // Strided rows in, packed rows of every rank out.
    const int64_t rows = 9, cols = 33, ld = 40;
    std::vector<float> h((size_t)(rows * ld), -5.f);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) h[(size_t)(i * ld + j)] = tag(me, i, j);
    Buf<float> src(c, h), out(c, (size_t)(R * rows * cols), NAN);
    ns_matrix m = f32_matrix(src.ptr(), rows, cols, ld);
    ns_status st = ns_comm_allgather_rows(c, comm, m, out.ptr(), "test");
    if (st) return fail(std::string("allgather_rows: ") + ns_last_error(c));
    auto &o = out.fetch();
    for (int r = 0; r < R; r++)
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++)
                if (o[(size_t)((r * rows + i) * cols + j)] != tag(r, i, j))
                    return fail("allgather_rows mismatch at rank " + std::to_string(r) + " row " +
                                std::to_string(i) + " col " + std::to_string(j));
    // Reduce-scatter: rank r sends f(r, k) in every slot k.
    const size_t n = 1000;
    auto f = [](int r, size_t k) { return (float)std::sin(0.37 * (double)k + 1.3 * r); };
    std::vector<float> s(n * (size_t)R);
    for (size_t k = 0; k < s.size(); k++) s[k] = f(me, k);
    Buf<float> send(c, s), recv(c, n, NAN);
    st = ns_comm_reduce_scatter_f32(c, comm, send.ptr(), recv.ptr(), n, "test");
    if (st) return fail(std::string("reduce_scatter: ") + ns_last_error(c));
    auto &rv = recv.fetch();
    for (size_t i = 0; i < n; i++) {
        double want = 0;
        for (int r = 0; r < R; r++) want += f(r, (size_t)me * n + i);
        if (!close(rv[i], want, 1e-5, 1e-5))
            return fail("reduce_scatter slot " + std::to_string(i) + ": " + std::to_string(rv[i]) +
                        " != " + std::to_string(want));
    }
    double v[2] = {0.5 * (me + 1), 1.0 / (me + 3)}, w0 = 0, w1 = 0;
    for (int r = 0; r < R; r++) {
        w0 += 0.5 * (r + 1);
        w1 += 1.0 / (r + 3);
    }
    st = ns_comm_allreduce_sum_host(c, comm, v, 2, "test");
    if (st) return fail(std::string("allreduce: ") + ns_last_error(c));
    if (std::fabs(v[0] - w0) > 1e-12 || std::fabs(v[1] - w1) > 1e-12) fail("allreduce value");
    // Personalised all-to-all of host bytes: rank r sends rank j (r + 2j) % 5 + 1 bytes, each
    // saying (r, j, position); received in reverse rank order with a gap after each.
    std::vector<size_t> sc((size_t)R), sd((size_t)R), rc((size_t)R), rd((size_t)R);
    size_t out_b = 0, in_b = 0;
    for (int j = 0; j < R; j++)
        sc[(size_t)j] = (size_t)(me + 2 * j) % 5 + 1, sd[(size_t)j] = out_b, out_b += sc[(size_t)j];
    for (int r = R - 1; r >= 0; r--)
        rc[(size_t)r] = (size_t)(r + 2 * me) % 5 + 1, rd[(size_t)r] = in_b, in_b += rc[(size_t)r] + 1;
    auto byte = [](int r, int j, size_t t) { return (unsigned char)(r * 31 + j * 7 + (int)t); };
    std::vector<unsigned char> a2a_send(out_b), a2a_recv(in_b, 0xee);
    for (int j = 0; j < R; j++)
        for (size_t t = 0; t < sc[(size_t)j]; t++) a2a_send[sd[(size_t)j] + t] = byte(me, j, t);
    st = ns_comm_alltoallv_host(c, comm, a2a_send.data(), sc.data(), sd.data(), a2a_recv.data(),
                                rc.data(), rd.data(), "test");
    if (st) return fail(std::string("alltoallv_host: ") + ns_last_error(c));
    for (int r = 0; r < R; r++) {
        for (size_t t = 0; t < rc[(size_t)r]; t++)
            if (a2a_recv[rd[(size_t)r] + t] != byte(r, me, t))
                return fail("alltoallv_host: byte " + std::to_string(t) + " from rank " +
                            std::to_string(r));
        if (a2a_recv[rd[(size_t)r] + rc[(size_t)r]] != 0xee)
            return fail("alltoallv_host wrote the gap after rank " + std::to_string(r));
    }
    const char *names[] = {"B", "h"};
    int64_t hv[2] = {32, me == R - 1 && R > 1 ? 5 : 4};
    st = ns_comm_check_same(c, comm, hv, names, 2, "ns_step_forward");
    if (R > 1 && (st != NS_ERR_COMM || !strstr(ns_last_error(c), "h is 4 on rank 0 but 5")))
        fail(std::string("check_same mismatch not reported: ") + ns_last_error(c));
    if (R == 1 && st != NS_OK) fail(std::string("check_same: ") + ns_last_error(c));
}

TEST(CommNccl, OneRankFromUniqueId) {
    NS_REQUIRE_NCCL();
    Ctx c(NS_BACKEND_CUDA);
    NS_REQUIRE_BACKEND(c);
    char id[NS_NCCL_UNIQUE_ID_BYTES];
    ASSERT_EQ(ns_nccl_unique_id(c, id), NS_OK) << ns_last_error(c);
    ns_comm_options o = NS_COMM_OPTIONS_INIT;
    o.timeout_ms = 30000;
    ns_comm *comm = nullptr;
    ASSERT_EQ(ns_comm_create_nccl_id(c, id, 1, 0, &o, &comm), NS_OK) << ns_last_error(c);
    EXPECT_EQ(ns_comm_rank(comm), 0);
    EXPECT_EQ(ns_comm_size(comm), 1);
    std::vector<std::string> errors;
    check_primitives(c, comm, &errors);
    for (auto &e : errors) ADD_FAILURE() << e;
    // An NCCL communicator serves CUDA contexts only.
    Ctx cpu(NS_BACKEND_CPU);
    float x = 1.f, y = 0.f;
    EXPECT_EQ(ns_comm_allgather_rows(cpu, comm, f32_matrix(&x, 1, 1), &y, "test"),
              NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(strstr(ns_last_error(cpu), "NCCL (CUDA) communicator but ctx is a CPU"), nullptr)
        << ns_last_error(cpu);
    EXPECT_EQ(ns_comm_destroy(comm), NS_OK);
}

// The step with a one-rank NCCL communicator gives what it gives without one (the loss over
// the global pool of one rank is the loss of that rank).
TEST(CommNccl, OneRankStepEqualsNoComm) {
    NS_REQUIRE_NCCL();
    Ctx c(NS_BACKEND_CUDA);
    NS_REQUIRE_BACKEND(c);
    char id[NS_NCCL_UNIQUE_ID_BYTES];
    ASSERT_EQ(ns_nccl_unique_id(c, id), NS_OK) << ns_last_error(c);
    ns_comm *comm = nullptr;
    ASSERT_EQ(ns_comm_create_nccl_id(c, id, 1, 0, nullptr, &comm), NS_OK) << ns_last_error(c);
    const int64_t B = 7, C = 5, h = 3, d = 24;
    Buf<float> q(c, random_floats((size_t)(B * d), 1)), p(c, random_floats((size_t)(B * d), 2)),
        cand(c, random_floats((size_t)(B * C * d), 3));
    std::vector<int64_t> cid((size_t)(B * C));
    for (size_t k = 0; k < cid.size(); k++) cid[k] = 100 + (int64_t)k;
    Buf<int64_t> cids(c, cid);
    ns_batch b;
    memset(&b, 0, sizeof b);
    b.query = f32_matrix(q.ptr(), B, d);
    b.positive = f32_matrix(p.ptr(), B, d);
    b.candidate = f32_matrix(cand.ptr(), B * C, d);
    b.candidates_per_query = C;
    b.candidate_id = cids.ptr();
    std::vector<float> loss(2), dq[2], dp[2], dc[2];
    unsigned long long syncs[2][2] = {{0, 0}, {0, 0}};
    auto count = [] {
#ifdef NS_CUDA_HOST_LAYER
        return cuda_host_sync_count();
#else
        return 0ull;
#endif
    };
    for (int with = 0; with < 2; with++) {
        StepOptions o;
        o.hard_negatives = h;
        o.loss.share_hard = 1;
        o.loss.symmetric = 1;
        o.comm = with ? comm : nullptr;
        ns_step_result r;
        Buf<float> gq(c, (size_t)(B * d), 0.f), gp(c, (size_t)(B * d), 0.f), gc(c, (size_t)(B * C * d), 0.f);
        ns_step_grads g = {gq.ptr(), gp.ptr(), gc.ptr(), nullptr};
        for (int rep = 0; rep < 2; rep++) {  // the second: workspaces sized, nothing allocated
            const unsigned long long s0 = count();
            ASSERT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_OK) << ns_last_error(c);
            const unsigned long long s1 = count();
            ASSERT_EQ(ns_step_backward(c, 1.f, &g), NS_OK) << ns_last_error(c);
            syncs[with][0] = s1 - s0, syncs[with][1] = count() - s1;
        }
        loss[(size_t)with] = r.loss;
        dq[with] = gq.fetch();
        dp[with] = gp.fetch();
        dc[with] = gc.fetch();
    }
#ifdef NS_CUDA_HOST_LAYER
    // Issue 11 item 8: the multi-rank loss adds no host synchronisation of its own: ids, the
    // per-query mean of the symmetric terms and the gradient sums are made on the device, and
    // its exchanges wait on their own event. So its backward makes none (was 8: pageable copies
    // of the sums), and its forward only those of the checked ops it runs, which validate
    // themselves and read their host values there (the one-rank step defers them into one
    // read): the filter, the sampler, two loss forwards, and the host loss copied into the
    // step's device float — 8 here (was 13).
    EXPECT_EQ(syncs[1][1], 0u) << "backward with comm";
    EXPECT_LE(syncs[1][0], 8u) << "forward with comm";
    EXPECT_LE(syncs[0][0], 1u) << "forward without comm (the checked step's one read)";
    EXPECT_EQ(syncs[0][1], 0u) << "backward without comm";
#endif
    EXPECT_TRUE(close(loss[1], loss[0], 1e-6, 1e-5)) << loss[1] << " vs " << loss[0];
    for (size_t k = 0; k < dq[0].size(); k++) ASSERT_TRUE(close(dq[1][k], dq[0][k], 1e-6, 1e-4)) << "dQ " << k;
    for (size_t k = 0; k < dp[0].size(); k++) ASSERT_TRUE(close(dp[1][k], dp[0][k], 1e-6, 1e-4)) << "dP " << k;
    for (size_t k = 0; k < dc[0].size(); k++) ASSERT_TRUE(close(dc[1][k], dc[0][k], 1e-6, 1e-4)) << "dC " << k;
    ns_comm_destroy(comm);
}

#ifdef NS_HAVE_NCCL
TEST(CommNccl, OneRankCallersComm) {
    Ctx c(NS_BACKEND_CUDA);
    NS_REQUIRE_BACKEND(c);
    ncclComm_t nc = nullptr;
    int dev = 0;
    ASSERT_EQ(ncclCommInitAll(&nc, 1, &dev), ncclSuccess);
    ns_comm *comm = nullptr;
    ASSERT_EQ(ns_comm_create_nccl(c, nc, nullptr, &comm), NS_OK) << ns_last_error(c);
    std::vector<std::string> errors;
    check_primitives(c, comm, &errors);
    for (auto &e : errors) ADD_FAILURE() << e;
    EXPECT_EQ(ns_comm_destroy(comm), NS_OK);
    // Not owned: still the caller's to use and destroy.
    int count = 0;
    EXPECT_EQ(ncclCommCount(nc, &count), ncclSuccess);
    EXPECT_EQ(count, 1);
    ncclCommDestroy(nc);
}
#endif

// Contexts on devices 0..R-1 (the Ctx helper takes device 0: build them by hand).
struct DeviceCtx : Ctx {
    explicit DeviceCtx(int device) : Ctx(NS_BACKEND_CPU) {
        ns_context_destroy(ctx);
        ctx = nullptr;
        ns_context_options o = NS_CONTEXT_OPTIONS_INIT;
        o.backend = NS_BACKEND_CUDA;
        o.device = device;
        status = ns_context_create(&ctx, &o);
        if (status != NS_OK) why = ns_last_error(nullptr);
    }
};

#define NS_REQUIRE_GPUS(n)                                                                    \
    do {                                                                                      \
        NS_REQUIRE_NCCL();                                                                    \
        if (kHostLayer) GTEST_SKIP() << "the host execution layer's NCCL has one rank";        \
        int have_ = ns_cuda_device_count();                                                   \
        if (have_ < (n))                                                                      \
            GTEST_SKIP() << "needs " << (n) << " GPUs for one rank per GPU; this machine has " \
                         << have_;                                                            \
    } while (0)

// Runs body(rank) on every rank in its own thread, with communicators created together.
template <class F> void on_ranks(int R, int timeout_ms, F body) {
    std::vector<std::unique_ptr<DeviceCtx>> ctxs;
    for (int r = 0; r < R; r++) ctxs.emplace_back(new DeviceCtx(r));
    for (int r = 0; r < R; r++) ASSERT_EQ(ctxs[(size_t)r]->status, NS_OK) << ctxs[(size_t)r]->why;
    char id[NS_NCCL_UNIQUE_ID_BYTES];
    ASSERT_EQ(ns_nccl_unique_id(nullptr, id), NS_OK) << ns_last_error(nullptr);
    std::vector<ns_comm *> comms((size_t)R, nullptr);
    std::vector<std::string> errors;
    std::mutex mu;
    std::vector<std::thread> th;
    for (int r = 0; r < R; r++)
        th.emplace_back([&, r] {
            DeviceCtx &c = *ctxs[(size_t)r];
            ns_comm_options o = NS_COMM_OPTIONS_INIT;
            o.timeout_ms = timeout_ms;
            std::vector<std::string> mine;
            if (ns_comm_create_nccl_id(c, id, R, r, &o, &comms[(size_t)r]) != NS_OK)
                mine.push_back("rank " + std::to_string(r) + ": create: " + ns_last_error(c));
            else
                body(c, comms[(size_t)r], r, &mine);
            ns_comm_destroy(comms[(size_t)r]);
            std::lock_guard<std::mutex> g(mu);
            errors.insert(errors.end(), mine.begin(), mine.end());
        });
    for (auto &t : th) t.join();
    for (auto &e : errors) ADD_FAILURE() << e;
}

TEST(CommNcclMultiGpu, Primitives) {
    NS_REQUIRE_GPUS(2);
    int R = ns_cuda_device_count();
    on_ranks(R, 60000, [](const Ctx &c, ns_comm *comm, int, std::vector<std::string> *errors) {
        check_primitives(c, comm, errors);
    });
}

// The multi-rank step, one rank per GPU: loss, negatives and every gradient equal those of one
// rank over the concatenated batch (computed on GPU 0 without a communicator).
TEST(CommNcclMultiGpu, StepEqualsOneRankOverConcatenatedBatch) {
    NS_REQUIRE_GPUS(2);
    const int R = ns_cuda_device_count();
    const int64_t B = 6, C = 5, h = 3, d = 32;
    std::vector<float> q = random_floats((size_t)(R * B * d), 11), p = random_floats((size_t)(R * B * d), 12),
                       cand = random_floats((size_t)(R * B * C * d), 13);
    for (size_t k = 0; k < q.size(); k++) q[k] += 0.5f * p[k];
    std::vector<int64_t> pid((size_t)(R * B)), cid((size_t)(R * B * C));
    for (size_t k = 0; k < pid.size(); k++) pid[k] = (int64_t)(k * 7 % (size_t)(R * B - 1));  // repeats
    for (size_t k = 0; k < cid.size(); k++) cid[k] = k % 9 == 0 ? pid[k / (size_t)C] : 1000 + (int64_t)k;
    auto options = [&](ns_comm *comm) {
        StepOptions o;
        o.hard_negatives = h;
        o.loss.share_hard = 1;
        o.loss.symmetric = 1;
        o.sampler.seed = 5;
        o.comm = comm;
        return o;
    };
    struct Out {
        float loss = 0;
        std::vector<int64_t> neg;
        std::vector<float> dq, dp, dc;
    };
    // Runs the step on rows [q0, q0 + n) with ctx (and comm), copying the results back.
    auto run = [&](const Ctx &c, ns_comm *comm, int64_t q0, int64_t n, Out *out) -> std::string {
        Buf<float> bq(c, std::vector<float>(q.begin() + q0 * d, q.begin() + (q0 + n) * d));
        Buf<float> bp(c, std::vector<float>(p.begin() + q0 * d, p.begin() + (q0 + n) * d));
        Buf<float> bc(c, std::vector<float>(cand.begin() + q0 * C * d, cand.begin() + (q0 + n) * C * d));
        Buf<int64_t> bpid(c, std::vector<int64_t>(pid.begin() + q0, pid.begin() + q0 + n));
        Buf<int64_t> bcid(c, std::vector<int64_t>(cid.begin() + q0 * C, cid.begin() + (q0 + n) * C));
        ns_batch b;
        memset(&b, 0, sizeof b);
        b.query = f32_matrix(bq.ptr(), n, d);
        b.positive = f32_matrix(bp.ptr(), n, d);
        b.positive_id = bpid.ptr();
        b.candidate = f32_matrix(bc.ptr(), n * C, d);
        b.candidates_per_query = C;
        b.candidate_id = bcid.ptr();
        b.query_offset = q0;
        StepOptions o = options(comm);
        ns_step_result r;
        if (ns_step_forward(c, &b, o.get(), &r) != NS_OK) return std::string("forward: ") + ns_last_error(c);
        out->loss = r.loss;
        out->neg.resize((size_t)(n * h));
#ifdef NS_HAVE_CUDA
        if (c.cuda()) cudaMemcpy(out->neg.data(), r.negative_id, out->neg.size() * 8, cudaMemcpyDeviceToHost);
        else
#endif
            std::copy(r.negative_id, r.negative_id + n * h, out->neg.begin());
        Buf<float> gq(c, (size_t)(n * d), 0.f), gp(c, (size_t)(n * d), 0.f), gc(c, (size_t)(n * C * d), 0.f);
        ns_step_grads g = {gq.ptr(), gp.ptr(), gc.ptr(), nullptr};
        if (ns_step_backward(c, 1.f, &g) != NS_OK) return std::string("backward: ") + ns_last_error(c);
        out->dq = gq.fetch();
        out->dp = gp.fetch();
        out->dc = gc.fetch();
        return "";
    };
    Out ref;
    {
        DeviceCtx c0(0);
        ASSERT_EQ(c0.status, NS_OK) << c0.why;
        std::string e = run(c0, nullptr, 0, R * B, &ref);
        ASSERT_EQ(e, "");
    }
    on_ranks(R, 60000, [&](const Ctx &c, ns_comm *comm, int r, std::vector<std::string> *errors) {
        Out o;
        std::string e = run(c, comm, r * B, B, &o);
        if (!e.empty()) return errors->push_back("rank " + std::to_string(r) + ": " + e);
        auto cmp = [&](const char *what, const std::vector<float> &got, const float *want) {
            for (size_t k = 0; k < got.size(); k++)
                if (!close(got[k], want[k], 1e-5, 1e-3)) {
                    errors->push_back("rank " + std::to_string(r) + ": " + what + "[" + std::to_string(k) +
                                      "] = " + std::to_string(got[k]) + ", one rank: " + std::to_string(want[k]));
                    return;
                }
        };
        if (!close(o.loss, ref.loss, 1e-5, 1e-4)) errors->push_back("rank " + std::to_string(r) + ": loss");
        for (int64_t k = 0; k < B * h; k++)
            if (o.neg[(size_t)k] != ref.neg[(size_t)(r * B * h + k)]) {
                errors->push_back("rank " + std::to_string(r) + ": negative " + std::to_string(k));
                break;
            }
        cmp("dQ", o.dq, ref.dq.data() + r * B * d);
        cmp("dP", o.dp, ref.dp.data() + r * B * d);
        cmp("dCandidate", o.dc, ref.dc.data() + r * B * C * d);
    });
}

TEST(CommNcclMultiGpu, RankThatStopsAnsweringTimesOut) {
    NS_REQUIRE_GPUS(2);
    int R = ns_cuda_device_count();
    const int timeout_ms = 2000;
    on_ranks(R, timeout_ms, [&](const Ctx &c, ns_comm *comm, int r, std::vector<std::string> *errors) {
        if (r == R - 1) return;  // never joins the collective
        std::vector<float> h(64, 1.f);
        Buf<float> src(c, h), out(c, h.size() * (size_t)R, 0.f);
        auto t0 = std::chrono::steady_clock::now();
        ns_status st = ns_comm_allgather_rows(c, comm, f32_matrix(src.ptr(), 8, 8), out.ptr(), "test");
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (st != NS_ERR_COMM || !strstr(ns_last_error(c), "timed out after 2000 ms"))
            errors->push_back("rank " + std::to_string(r) + ": expected a timeout, got " +
                              ns_status_string(st) + ": " + ns_last_error(c));
        if (s > 30.0) errors->push_back("timeout took " + std::to_string(s) + " s");
        // Broken from then on.
        st = ns_comm_allgather_rows(c, comm, f32_matrix(src.ptr(), 8, 8), out.ptr(), "test");
        if (st != NS_ERR_COMM || !strstr(ns_last_error(c), "unusable"))
            errors->push_back("rank " + std::to_string(r) + ": a failed communicator was reused");
    });
}

// Mining across GPUs, one rank per GPU: each rank mines its shard of the corpus (uneven, rank 0
// smaller than k), every rank gets the one-rank top-k of the concatenated corpus (computed on
// GPU 0 without a communicator), global rows, exclusions in global rows, entry for entry.
TEST(CommNcclMultiGpu, MineEqualsOneRankOverConcatenatedCorpus) {
    NS_REQUIRE_GPUS(2);
    const int R = ns_cuda_device_count();
    const int64_t Q = 9, d = 16, k = 7;
    std::vector<int64_t> start{0};
    for (int r = 0; r < R; r++) start.push_back(start.back() + (r == 0 ? 3 : 40 + 5 * r));
    const int64_t N = start.back();
    std::vector<float> q = random_floats((size_t)(Q * d), 21), corpus = random_floats((size_t)(N * d), 22);
    std::copy_n(corpus.begin(), 3 * d, corpus.end() - 3 * d);  // ties across shards
    std::vector<int64_t> off{0}, ids;
    for (int64_t i = 0; i < Q; i++) ids.push_back((5 * i) % N), off.push_back((int64_t)ids.size());
    ns_id_lists el{off.data(), ids.data(), Q};
    std::vector<int64_t> ref_i((size_t)(Q * k));
    std::vector<float> ref_s((size_t)(Q * k));
    {
        Ctx c(NS_BACKEND_CUDA);
        NS_REQUIRE_BACKEND(c);
        Buf<float> bq(c, q), bc(c, corpus);
        Buf<int64_t> oi(c, ref_i.size(), 0);
        Buf<float> os(c, ref_s.size(), 0.f);
        ns_mine_options o = NS_MINE_OPTIONS_INIT;
        o.exclude = &el;
        ASSERT_EQ(ns_mine_topk(c, f32_matrix(bq.ptr(), Q, d), f32_matrix(bc.ptr(), N, d), k, &o,
                               oi.ptr(), os.ptr()),
                  NS_OK)
            << ns_last_error(c);
        ref_i = oi.fetch(), ref_s = os.fetch();
    }
    on_ranks(R, 60000, [&](const Ctx &c, ns_comm *comm, int r, std::vector<std::string> *errors) {
#ifdef NS_HAVE_CUDA
        cudaSetDevice(r);
#endif
        const int64_t n = start[(size_t)r + 1] - start[(size_t)r];
        Buf<float> bq(c, q);
        Buf<float> bc(c, std::vector<float>(corpus.begin() + start[(size_t)r] * d,
                                            corpus.begin() + start[(size_t)r + 1] * d));
        Buf<int64_t> oi(c, ref_i.size(), 0);
        Buf<float> os(c, ref_s.size(), 0.f);
        ns_mine_options o = NS_MINE_OPTIONS_INIT;
        o.exclude = &el;
        o.comm = comm;
        ns_status st = ns_mine_topk(c, f32_matrix(bq.ptr(), Q, d), f32_matrix(bc.ptr(), n, d), k,
                                    &o, oi.ptr(), os.ptr());
        if (st != NS_OK) {
            errors->push_back("rank " + std::to_string(r) + ": " + ns_last_error(c));
            return;
        }
        if (oi.fetch() != ref_i || os.fetch() != ref_s)
            errors->push_back("rank " + std::to_string(r) + ": differs from one rank");
    });
}

}  // namespace

#if defined(NS_HAVE_NCCL) && defined(NS_CUDA_HOST_LAYER)
// Issue 11 item 8, through the host layer's one-rank NCCL (tests/cuda_host/nccl.h).

// The caller's current device survives every NCCL entry: a context and communicator on device
// 1 used while device 0 is current (before: comm_nccl.c set device 1 and left it current).
TEST(CommNccl, EntriesRestoreTheCallersDevice) {
    const int saved = cuda_host::config_mut().devices;
    cuda_host::config_mut().devices = 2;
    {
        ns_context_options o = NS_CONTEXT_OPTIONS_INIT;
        o.backend = NS_BACKEND_CUDA;
        o.device = 1;
        ns_context *g = nullptr;
        ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
        ASSERT_EQ(ns_context_create(&g, &o), NS_OK) << ns_last_error(nullptr);
        auto current = [] {
            int d = -1;
            EXPECT_EQ(cudaGetDevice(&d), cudaSuccess);
            return d;
        };
        char id[NS_NCCL_UNIQUE_ID_BYTES];
        ASSERT_EQ(ns_nccl_unique_id(g, id), NS_OK);
        ns_comm *comm = nullptr;
        ASSERT_EQ(ns_comm_create_nccl_id(g, id, 1, 0, nullptr, &comm), NS_OK) << ns_last_error(g);
        EXPECT_EQ(current(), 0) << "ns_comm_create_nccl_id left device 1 current";
        const int64_t rows = 5, cols = 7;
        std::vector<float> h((size_t)(rows * cols));
        for (size_t e = 0; e < h.size(); e++) h[e] = (float)e + 0.5f;
        float *src = nullptr, *out = nullptr, *rs = nullptr;
        ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
        ASSERT_EQ(cudaMalloc((void **)&src, h.size() * 4), cudaSuccess);
        ASSERT_EQ(cudaMalloc((void **)&out, h.size() * 4), cudaSuccess);
        ASSERT_EQ(cudaMalloc((void **)&rs, h.size() * 4), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(src, h.data(), h.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
        ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
        ASSERT_EQ(ns_comm_allgather_rows(g, comm, f32_matrix(src, rows, cols), out, "test"), NS_OK) << ns_last_error(g);
        EXPECT_EQ(current(), 0) << "allgather_rows left device 1 current";
        ASSERT_EQ(ns_comm_reduce_scatter_f32(g, comm, out, rs, h.size(), "test"), NS_OK) << ns_last_error(g);
        EXPECT_EQ(current(), 0) << "reduce_scatter left device 1 current";
        double v[2] = {1.5, -2.0};
        ASSERT_EQ(ns_comm_allreduce_sum_host(g, comm, v, 2, "test"), NS_OK) << ns_last_error(g);
        EXPECT_EQ(current(), 0) << "allreduce_sum_host left device 1 current";
        EXPECT_EQ(v[0], 1.5);
        EXPECT_EQ(v[1], -2.0);
        const size_t cnt = 3, at = 0, back_at = 1;
        const char a2a_in[3] = {'a', 'b', 'c'};
        char a2a_out[4] = {0, 0, 0, 0};
        ASSERT_EQ(ns_comm_alltoallv_host(g, comm, a2a_in, &cnt, &at, a2a_out, &cnt, &back_at, "test"),
                  NS_OK)
            << ns_last_error(g);
        EXPECT_EQ(current(), 0) << "alltoallv_host left device 1 current";
        EXPECT_EQ(std::string(a2a_out + 1, 3), "abc");
        std::vector<float> back(h.size());
        ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(back.data(), rs, back.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        EXPECT_EQ(back, h);
        cudaFree(src), cudaFree(out), cudaFree(rs);
        ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
        EXPECT_EQ(ns_comm_destroy(comm), NS_OK);
        EXPECT_EQ(current(), 0) << "ns_comm_destroy left device 1 current";
        ns_context_destroy(g);
    }
    cuda_host::config_mut().devices = saved;
}

// Device collectives are ordered on ctx's stream, not waited for: right after they return the
// stream still holds their work (before: each drained the stream by polling cudaStreamQuery),
// and no host synchronisation happens; the host-value exchange waits for its own copy only
// (before: a pageable H2D copy and a synchronous cudaMemcpy). Results as before.
TEST(CommNccl, DeviceCollectivesDoNotDrainTheStream) {
    Ctx c(NS_BACKEND_CUDA);
    NS_REQUIRE_BACKEND(c);
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    ASSERT_EQ(ns_context_set_stream(c, s), NS_OK);
    char id[NS_NCCL_UNIQUE_ID_BYTES];
    ASSERT_EQ(ns_nccl_unique_id(c, id), NS_OK);
    ns_comm *comm = nullptr;
    ASSERT_EQ(ns_comm_create_nccl_id(c, id, 1, 0, nullptr, &comm), NS_OK) << ns_last_error(c);
    double warm[1] = {0};
    ASSERT_EQ(ns_comm_allreduce_sum_host(c, comm, warm, 1, "test"), NS_OK);  // sizes the exchange
    const int64_t rows = 6, cols = 5;
    std::vector<float> h = random_floats((size_t)(rows * cols), 9);
    Buf<float> src(c, h), out(c, h.size(), NAN), rs(c, h.size(), NAN);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const unsigned long long s0 = cuda_host_sync_count();
    ASSERT_EQ(ns_comm_allgather_rows(c, comm, f32_matrix(src.ptr(), rows, cols), out.ptr(), "test"), NS_OK);
    ASSERT_EQ(ns_comm_reduce_scatter_f32(c, comm, out.ptr(), rs.ptr(), h.size(), "test"), NS_OK);
    EXPECT_EQ(cuda_host_sync_count() - s0, 0u) << "host synchronisations in device collectives";
    EXPECT_EQ(cudaStreamQuery(s), cudaErrorNotReady) << "the collectives drained the stream";
    const unsigned long long s1 = cuda_host_sync_count();
    double v[3] = {1.0, 2.0, 3.0};
    ASSERT_EQ(ns_comm_allreduce_sum_host(c, comm, v, 3, "test"), NS_OK);
    EXPECT_LE(cuda_host_sync_count() - s1, 1u) << "more than one host synchronisation in an exchange";
    EXPECT_EQ(v[2], 3.0);
    EXPECT_EQ(rs.fetch(), h);
    EXPECT_EQ(ns_comm_destroy(comm), NS_OK);
    ASSERT_EQ(ns_context_set_stream(c, nullptr), NS_OK);
    cudaStreamDestroy(s);
}
#endif
