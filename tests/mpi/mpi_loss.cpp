// InfoNCE over the global pool (ns_comm_infonce_forward / _backward): on R ranks, the loss and
// every gradient equal those of one rank over the concatenated batch, computed by every rank
// itself with ns_infonce_forward / _backward on the whole batch generated from a shared seed.
// Options: plain, shared hard negatives, symmetric, both, debiased + reweighting, positives
// elsewhere than row i, NULL ids, bf16 rows, same ids across ranks. Then shapes that differ
// between ranks, one rank's bad argument, one rank's NaN: every rank fails, none hangs.
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "mpi_test_util.h"
#include "ns_comm.h"

using namespace mpitest;

namespace {

struct Config {
    const char *name;
    int64_t B, N, h, d;
    int share, sym, positive_given, ids, hard_ids, keep;
    float tau_plus, beta;
    ns_dtype dtype;
};

uint16_t to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

// The whole batch, the same on every rank.
struct Global {
    int64_t R, B, N, h, d;
    std::vector<float> q, p, hd;          // f32 rows
    std::vector<uint16_t> q16, p16, hd16; // bf16 rows
    std::vector<int64_t> positive;        // per rank: local rows
    std::vector<int64_t> pid, hid;
    std::vector<uint8_t> keep;
};

Global make_global(const Config &c, int R, uint64_t seed) {
    Global g;
    g.R = R, g.B = c.B, g.N = c.N, g.h = c.h, g.d = c.d;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto rows = [&](int64_t n, std::vector<float> &v) {
        v.resize((size_t)(n * c.d));
        for (int64_t r = 0; r < n; r++) {
            double norm = 0;
            for (int64_t j = 0; j < c.d; j++) norm += (v[(size_t)(r * c.d + j)] = nd(rng)) * (double)v[(size_t)(r * c.d + j)];
            for (int64_t j = 0; j < c.d; j++) v[(size_t)(r * c.d + j)] /= (float)std::sqrt(norm);
        }
    };
    rows(R * c.B, g.q);
    rows(R * c.N, g.p);
    rows(R * c.B * c.h, g.hd);
    // Nudge each query towards its positive so the loss is not flat.
    g.positive.resize((size_t)(R * c.B));
    for (int64_t k = 0; k < R * c.B; k++) {
        int64_t r = k / c.B, i = k % c.B;
        g.positive[(size_t)k] = c.positive_given ? (i * 7 + 3) % c.N : i;
        int64_t gp = r * c.N + g.positive[(size_t)k];
        for (int64_t j = 0; j < c.d; j++) g.q[(size_t)(k * c.d + j)] += 0.5f * g.p[(size_t)(gp * c.d + j)];
    }
    // Ids from a small range: the same id turns up on several ranks (cross-rank duplicates).
    std::uniform_int_distribution<int64_t> idd(0, (R * c.N) * 3 / 4);
    g.pid.resize((size_t)(R * c.N));
    for (auto &x : g.pid) x = idd(rng);
    g.hid.resize((size_t)(R * c.B * c.h));
    g.keep.resize(g.hid.size());
    std::uniform_int_distribution<int> coin(0, 5);
    for (size_t k = 0; k < g.hid.size(); k++) {
        int t = coin(rng);
        g.hid[k] = t == 0 ? -1 : idd(rng);
        g.keep[k] = t == 1 ? 0 : 1;
    }
    if (c.dtype == NS_BF16) {
        for (auto *pr : {&g.q, &g.p, &g.hd}) {
            std::vector<uint16_t> &dst = pr == &g.q ? g.q16 : pr == &g.p ? g.p16 : g.hd16;
            dst.resize(pr->size());
            for (size_t k = 0; k < pr->size(); k++) {
                dst[k] = to_bf16((*pr)[k]);
                uint32_t u = (uint32_t)dst[k] << 16;
                std::memcpy(&(*pr)[k], &u, 4);  // the f32 copy holds the same rounded values
            }
        }
    }
    return g;
}

ns_matrix mat(const Global &g, const Config &c, int which, int64_t r0, int64_t n) {
    const std::vector<float> &f = which == 0 ? g.q : which == 1 ? g.p : g.hd;
    const std::vector<uint16_t> &b = which == 0 ? g.q16 : which == 1 ? g.p16 : g.hd16;
    ns_matrix m;
    m.dtype = c.dtype;
    m.data = c.dtype == NS_BF16 ? (const void *)(b.data() + r0 * g.d) : (const void *)(f.data() + r0 * g.d);
    m.rows = n, m.cols = g.d, m.ld = 0;
    if (n == 0) m.data = nullptr;
    return m;
}

ns_loss_options options(const Config &c) {
    ns_loss_options o = NS_LOSS_OPTIONS_INIT;
    o.temperature = 0.1f;
    o.symmetric = c.sym;
    o.share_hard = c.share;
    o.tau_plus = c.tau_plus;
    o.beta = c.beta;
    return o;
}

int compare(const char *cfg, const char *what, const float *got, const float *want, size_t n) {
    double scale = 0;
    for (size_t k = 0; k < n; k++) scale = std::max(scale, (double)std::fabs(want[k]));
    int bad = 0;
    for (size_t k = 0; k < n; k++) {
        double diff = std::fabs((double)got[k] - (double)want[k]);
        if (!(diff <= 2e-4 * scale + 1e-6 + 1e-4 * std::fabs(want[k]))) {
            if (bad < 3)
                MT_CHECK(false, "%s: %s[%zu] = %.8g, one rank over the whole batch: %.8g", cfg, what,
                         k, got[k], want[k]);
            bad++;
        }
    }
    if (bad > 3) MT_CHECK(false, "%s: %s: %d more mismatches of %zu", cfg, what, bad - 3, n);
    return bad;
}

void run_config(ns_context *ctx, ns_comm *comm, const Config &c, uint64_t seed) {
    const int R = ns_comm_size(comm), me = ns_comm_rank(comm);
    Global g = make_global(c, R, seed);
    ns_loss_options o = options(c);
    const int64_t B = c.B, N = c.N, h = c.h, d = c.d;

    // One rank over the concatenated batch.
    std::vector<int64_t> gpos((size_t)(R * B));
    for (int64_t k = 0; k < R * B; k++) gpos[(size_t)k] = (k / B) * N + g.positive[(size_t)k];
    ns_infonce_inputs gin;
    std::memset(&gin, 0, sizeof gin);
    gin.query = mat(g, c, 0, 0, R * B);
    gin.passage = mat(g, c, 1, 0, R * N);
    gin.positive = c.positive_given ? gpos.data() : nullptr;
    gin.hard = mat(g, c, 2, 0, R * B * h);
    gin.hard_per_query = h;
    gin.hard_keep = c.keep && h ? g.keep.data() : nullptr;
    gin.extra = ns_matrix{nullptr, NS_F32, 0, d, 0};
    gin.passage_id = c.ids ? g.pid.data() : nullptr;
    gin.hard_id = c.hard_ids && h ? g.hid.data() : nullptr;
    float ref_loss = 0;
    std::vector<float> ref_pq((size_t)(R * B)), ref_saved((size_t)(R * B) * NS_INFONCE_SAVED_PER_QUERY);
    ns_status st = ns_infonce_forward(ctx, &gin, &o, &ref_loss, ref_pq.data(), ref_saved.data());
    MT_CHECK(st == NS_OK, "%s: reference forward: %s", c.name, ns_last_error(ctx));
    std::vector<float> rq((size_t)(R * B * d)), rp((size_t)(R * N * d)), rh((size_t)(R * B * h * d) + 1);
    float rtau = 0;
    ns_infonce_grads rg = {rq.data(), rp.data(), h ? rh.data() : nullptr, &rtau};
    const float grad_loss = 1.7f;
    st = ns_infonce_backward(ctx, &gin, &o, ref_saved.data(), grad_loss, &rg);
    MT_CHECK(st == NS_OK, "%s: reference backward: %s", c.name, ns_last_error(ctx));

    // This rank's slice, through the communicator.
    ns_infonce_inputs in;
    std::memset(&in, 0, sizeof in);
    in.query = mat(g, c, 0, me * B, B);
    in.passage = mat(g, c, 1, me * N, N);
    in.positive = c.positive_given ? g.positive.data() + me * B : nullptr;
    in.hard = mat(g, c, 2, me * B * h, B * h);
    in.hard_per_query = h;
    in.hard_keep = c.keep && h ? g.keep.data() + me * B * h : nullptr;
    in.extra = ns_matrix{nullptr, NS_F32, 0, d, 0};
    in.passage_id = c.ids ? g.pid.data() + me * N : nullptr;
    in.hard_id = c.hard_ids && h ? g.hid.data() + me * B * h : nullptr;
    float loss = NAN;
    std::vector<float> pq((size_t)B), saved((size_t)B * NS_INFONCE_SAVED_PER_QUERY);
    st = ns_comm_infonce_forward(ctx, comm, &in, &o, &loss, pq.data(), saved.data(), "test");
    MT_CHECK(st == NS_OK, "%s: forward: %s", c.name, ns_last_error(ctx));
    if (st) return;
    compare(c.name, "loss", &loss, &ref_loss, 1);
    compare(c.name, "per_query", pq.data(), ref_pq.data() + me * B, (size_t)B);
    // The same loss bits on every rank.
    std::vector<float> all((size_t)R);
    MPI_Allgather(&loss, 1, MPI_FLOAT, all.data(), 1, MPI_FLOAT, MPI_COMM_WORLD);
    for (int r = 0; r < R; r++) MT_CHECK(all[(size_t)r] == loss, "%s: rank %d loss %.9g vs %.9g", c.name, r, all[(size_t)r], loss);

    std::vector<float> dq((size_t)(B * d), NAN), dp((size_t)(N * d), NAN), dh((size_t)(B * h * d) + 1, NAN);
    float dtau = NAN;
    ns_infonce_grads lg = {dq.data(), dp.data(), h ? dh.data() : nullptr, &dtau};
    st = ns_comm_infonce_backward(ctx, comm, &in, &o, saved.data(), grad_loss, &lg, "test");
    MT_CHECK(st == NS_OK, "%s: backward: %s", c.name, ns_last_error(ctx));
    if (st) return;
    compare(c.name, "dQ", dq.data(), rq.data() + me * B * d, (size_t)(B * d));
    compare(c.name, "dP", dp.data(), rp.data() + me * N * d, (size_t)(N * d));
    if (h) compare(c.name, "dH", dh.data(), rh.data() + me * B * h * d, (size_t)(B * h * d));
    compare(c.name, "dtau", &dtau, &rtau, 1);

    // Only some gradients wanted: the others still get theirs (the collectives need every rank).
    std::vector<float> dq2((size_t)(B * d), NAN);
    ns_infonce_grads only_q = {dq2.data(), nullptr, nullptr, nullptr};
    st = ns_comm_infonce_backward(ctx, comm, &in, &o, saved.data(), grad_loss, &only_q, "test");
    MT_CHECK(st == NS_OK, "%s: backward (dQ only): %s", c.name, ns_last_error(ctx));
    if (!st) compare(c.name, "dQ (alone)", dq2.data(), rq.data() + me * B * d, (size_t)(B * d));
}

void test_failures(ns_context *ctx, ns_comm *comm) {
    const int R = ns_comm_size(comm), me = ns_comm_rank(comm);
    if (R < 2) return;
    Config c = {"fail", 4, 4, 2, 8, 1, 0, 0, 1, 1, 1, 0.f, 0.f, NS_F32};
    Global g = make_global(c, R, 99);
    ns_loss_options o = options(c);
    ns_infonce_inputs in;
    std::memset(&in, 0, sizeof in);
    in.query = mat(g, c, 0, me * c.B, c.B);
    in.passage = mat(g, c, 1, me * c.N, c.N);
    in.hard = mat(g, c, 2, me * c.B * c.h, c.B * c.h);
    in.hard_per_query = c.h;
    in.extra = ns_matrix{nullptr, NS_F32, 0, c.d, 0};
    float loss = -3.f;
    std::vector<float> pq((size_t)c.B), saved((size_t)c.B * NS_INFONCE_SAVED_PER_QUERY);
    const int odd = R - 1;

    // Shapes that differ: the last rank has one hard negative fewer per query.
    ns_infonce_inputs bad = in;
    if (me == odd) {
        bad.hard_per_query = 1;
        bad.hard.rows = c.B;
    }
    ns_status st = ns_comm_infonce_forward(ctx, comm, &bad, &o, &loss, pq.data(), saved.data(), "ns_step_forward");
    char want[96];
    std::snprintf(want, sizeof want, "hard_per_query is 2 on rank 0 but 1 on rank %d", odd);
    MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), want), "%s: %s", ns_status_string(st),
             ns_last_error(ctx));
    MT_CHECK(loss == -3.f, "loss untouched");

    // Options that differ.
    ns_loss_options o2 = o;
    if (me == odd) o2.temperature = 0.2f;
    st = ns_comm_infonce_forward(ctx, comm, &in, &o2, &loss, pq.data(), saved.data(), "ns_step_forward");
    MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), "options->temperature"), "%s",
             ns_last_error(ctx));

    // One rank's bad argument: it reports its own error, the others name it.
    st = ns_comm_infonce_forward(ctx, comm, &in, &o, me == odd ? nullptr : &loss, pq.data(),
                                 saved.data(), "ns_step_forward");
    if (me == odd)
        MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "loss is NULL"), "%s",
                 ns_last_error(ctx));
    else {
        std::snprintf(want, sizeof want, "rank %d rejected its arguments", odd);
        MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), want), "%s", ns_last_error(ctx));
    }

    // One rank's NaN.
    std::vector<float> qn(g.q.begin() + me * c.B * c.d, g.q.begin() + (me + 1) * c.B * c.d);
    if (me == odd) qn[5] = NAN;
    ns_infonce_inputs nan_in = in;
    nan_in.query.data = qn.data();
    st = ns_comm_infonce_forward(ctx, comm, &nan_in, &o, &loss, pq.data(), saved.data(), "ns_step_forward");
    MT_CHECK(st == NS_ERR_NONFINITE, "%s: %s", ns_status_string(st), ns_last_error(ctx));
    if (me != odd) {
        std::snprintf(want, sizeof want, "rank %d failed", odd);
        MT_CHECK(contains(ns_last_error(ctx), want), "%s", ns_last_error(ctx));
    }
    MT_CHECK(loss == -3.f, "loss untouched");
    // No forward succeeded: the backward says so, on every rank.
    std::vector<float> dq((size_t)(c.B * c.d), 5.f);
    ns_infonce_grads lg = {dq.data(), nullptr, nullptr, nullptr};
    st = ns_comm_infonce_backward(ctx, comm, &in, &o, saved.data(), 1.f, &lg, "ns_step_backward");
    MT_CHECK(st != NS_OK && dq[0] == 5.f, "%s", ns_last_error(ctx));
    // And the communicator still works.
    st = ns_comm_infonce_forward(ctx, comm, &in, &o, &loss, pq.data(), saved.data(), "ns_step_forward");
    MT_CHECK(st == NS_OK, "%s", ns_last_error(ctx));
}

}  // namespace

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ns_context *ctx = cpu_context();
    ns_comm *comm = world_comm(ctx);
    if (ctx && comm) {
        const Config configs[] = {
            // name            B   N  h   d share sym pos ids hid keep tau+  beta dtype
            {"plain",          5,  5, 0, 16, 0, 0, 0, 1, 0, 0, 0.f, 0.f, NS_F32},
            {"own hard",       6,  6, 3, 12, 0, 0, 0, 1, 1, 1, 0.f, 0.f, NS_F32},
            {"shared hard",    6,  6, 3, 12, 1, 0, 0, 1, 1, 1, 0.f, 0.f, NS_F32},
            {"symmetric",      7,  7, 2, 9,  0, 1, 0, 1, 1, 0, 0.f, 0.f, NS_F32},
            {"sym + shared",   4,  4, 2, 9,  1, 1, 0, 1, 1, 1, 0.f, 0.f, NS_F32},
            {"debiased, beta", 5,  5, 2, 10, 1, 0, 0, 1, 1, 1, 0.1f, 0.5f, NS_F32},
            {"positive given", 4,  9, 2, 8,  1, 0, 1, 1, 1, 1, 0.f, 0.f, NS_F32},
            {"NULL ids",       5,  5, 2, 8,  1, 0, 0, 0, 0, 0, 0.f, 0.f, NS_F32},
            {"NULL ids sym",   5,  5, 0, 8,  0, 1, 0, 0, 0, 0, 0.f, 0.f, NS_F32},
            {"bf16",           6,  6, 2, 16, 1, 0, 0, 1, 1, 1, 0.f, 0.f, NS_BF16},
            {"B=1",            1,  1, 1, 4,  1, 1, 0, 1, 1, 0, 0.f, 0.f, NS_F32},
            {"d=1",            3,  3, 1, 1,  0, 0, 0, 1, 1, 1, 0.f, 0.f, NS_F32},
        };
        uint64_t seed = 1234;
        for (const Config &c : configs) run_config(ctx, comm, c, seed++);
        test_failures(ctx, comm);
    }
    ns_comm_destroy(comm);
    ns_context_destroy(ctx);
    int rc = finish("mpi_loss");
    MPI_Finalize();
    return rc;
}
