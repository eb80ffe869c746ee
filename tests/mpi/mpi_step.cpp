// The multi-rank step (ns_step_options.comm over MPI): on R ranks, each holding B queries of a
// global batch, the loss, the per-query losses, the sampled negatives and every gradient equal
// those of one rank running ns_step_forward / _backward over the concatenated batch (computed
// by every rank itself, from a shared seed). Then ranks that disagree, and one rank's failure:
// every rank fails, at once, none hangs.
#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "mpi_test_util.h"
#include "step_options.h"

using namespace mpitest;

namespace {

struct Config {
    const char *name;
    int64_t B, C, h, d;
    int share, sym, cand_ids, pos_ids;
    ns_sampler sampler;
    ns_dtype dtype;
};

uint16_t to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

struct Global {
    int64_t R, B, C, d;
    std::vector<float> q, p, cand;
    std::vector<uint16_t> q16, p16, cand16;
    std::vector<int64_t> pid, cid;
};

Global make_global(const Config &c, int R, uint64_t seed) {
    Global g;
    g.R = R, g.B = c.B, g.C = c.C, g.d = c.d;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto rows = [&](int64_t n, std::vector<float> &v) {
        v.resize((size_t)(n * c.d));
        for (int64_t r = 0; r < n; r++) {
            double s = 0;
            for (int64_t j = 0; j < c.d; j++) {
                float x = nd(rng);
                v[(size_t)(r * c.d + j)] = x;
                s += (double)x * x;
            }
            for (int64_t j = 0; j < c.d; j++) v[(size_t)(r * c.d + j)] /= (float)std::sqrt(s);
        }
    };
    rows(R * c.B, g.q);
    rows(R * c.B, g.p);
    rows(R * c.B * c.C, g.cand);
    for (int64_t k = 0; k < R * c.B; k++)
        for (int64_t j = 0; j < c.d; j++) g.q[(size_t)(k * c.d + j)] += 0.6f * g.p[(size_t)(k * c.d + j)];
    // Ids from a small range: positives repeat across ranks, candidates hit other positives.
    std::uniform_int_distribution<int64_t> idd(0, R * c.B + R * c.B / 2);
    g.pid.resize((size_t)(R * c.B));
    for (auto &x : g.pid) x = idd(rng);
    g.cid.resize((size_t)(R * c.B * c.C));
    std::uniform_int_distribution<int> coin(0, 9);
    for (size_t k = 0; k < g.cid.size(); k++) {
        int t = coin(rng);
        g.cid[k] = t == 0 ? -1 : t == 1 ? g.pid[k / (size_t)c.C] : 1000 + (int64_t)k;
    }
    if (c.dtype == NS_BF16) {
        auto round = [](std::vector<float> &f, std::vector<uint16_t> &b) {
            b.resize(f.size());
            for (size_t k = 0; k < f.size(); k++) {
                b[k] = to_bf16(f[k]);
                uint32_t u = (uint32_t)b[k] << 16;
                std::memcpy(&f[k], &u, 4);
            }
        };
        round(g.q, g.q16);
        round(g.p, g.p16);
        round(g.cand, g.cand16);
    }
    return g;
}

ns_matrix rows_of(const Config &c, const std::vector<float> &f, const std::vector<uint16_t> &b,
                  int64_t r0, int64_t n, int64_t d) {
    ns_matrix m;
    m.dtype = c.dtype;
    m.data = n == 0 ? nullptr
             : c.dtype == NS_BF16 ? (const void *)(b.data() + r0 * d) : (const void *)(f.data() + r0 * d);
    m.rows = n, m.cols = d, m.ld = 0;
    return m;
}

// Rows [q0, q0 + nq) of the global batch as an ns_batch.
ns_batch batch_of(const Config &c, const Global &g, int64_t q0, int64_t nq) {
    ns_batch b;
    std::memset(&b, 0, sizeof b);
    b.query = rows_of(c, g.q, g.q16, q0, nq, c.d);
    b.positive = rows_of(c, g.p, g.p16, q0, nq, c.d);
    b.positive_id = c.pos_ids ? g.pid.data() + q0 : nullptr;
    b.candidate = rows_of(c, g.cand, g.cand16, q0 * c.C, nq * c.C, c.d);
    b.candidates_per_query = c.C;
    b.candidate_id = c.cand_ids ? g.cid.data() + q0 * c.C : nullptr;
    b.query_offset = q0;
    return b;
}

StepOptions options_of(const Config &c, ns_comm *comm) {
    StepOptions o;
    o.hard_negatives = c.h;
    o.filter.rules = NS_FILTER_SAME_ID | NS_FILTER_REL_MARGIN;
    o.filter.rel_margin = 0.05f;
    o.sampler.strategy = c.sampler;
    o.sampler.seed = 77;
    o.sampler.step = 3;
    o.loss.temperature = 0.07f;
    o.loss.share_hard = c.share;
    o.loss.symmetric = c.sym;
    o.comm = comm;
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

void run_config(ns_context *ref_ctx, ns_context *ctx, ns_comm *comm, const Config &c, uint64_t seed) {
    const int R = ns_comm_size(comm), me = ns_comm_rank(comm);
    const int64_t B = c.B, C = c.C, h = c.h, d = c.d;
    Global g = make_global(c, R, seed);

    // One rank over the concatenated batch.
    ns_batch gb = batch_of(c, g, 0, R * B);
    StepOptions go = options_of(c, nullptr);
    ns_step_result gr;
    ns_status st = ns_step_forward(ref_ctx, &gb, go.get(), &gr);
    MT_CHECK(st == NS_OK, "%s: reference forward: %s", c.name, ns_last_error(ref_ctx));
    if (st) return;
    std::vector<float> ref_pq(gr.per_query, gr.per_query + R * B);
    std::vector<int64_t> ref_neg, ref_cnt;
    if (h) {
        ref_neg.assign(gr.negative_id, gr.negative_id + R * B * h);
        ref_cnt.assign(gr.negative_count, gr.negative_count + R * B);
    }
    std::vector<float> rq((size_t)(R * B * d)), rp((size_t)(R * B * d)), rc((size_t)(R * B * C * d) + 1);
    float rtau = 0;
    const float grad_loss = 0.8f;
    ns_step_grads rg = {rq.data(), rp.data(), C ? rc.data() : nullptr, &rtau};
    st = ns_step_backward(ref_ctx, grad_loss, &rg);
    MT_CHECK(st == NS_OK, "%s: reference backward: %s", c.name, ns_last_error(ref_ctx));

    // This rank's share, through the communicator.
    ns_batch lb = batch_of(c, g, me * B, B);
    StepOptions lo = options_of(c, comm);
    ns_step_result lr;
    st = ns_step_forward(ctx, &lb, lo.get(), &lr);
    MT_CHECK(st == NS_OK, "%s: forward: %s", c.name, ns_last_error(ctx));
    if (st) return;
    compare(c.name, "loss", &lr.loss, &gr.loss, 1);
    compare(c.name, "per_query", lr.per_query, ref_pq.data() + me * B, (size_t)B);
    std::vector<float> all((size_t)R);
    MPI_Allgather(&lr.loss, 1, MPI_FLOAT, all.data(), 1, MPI_FLOAT, MPI_COMM_WORLD);
    for (int r = 0; r < R; r++)
        MT_CHECK(all[(size_t)r] == lr.loss, "%s: rank %d returned loss %.9g, this rank %.9g", c.name, r,
                 all[(size_t)r], lr.loss);
    if (h) {
        int bad = 0;
        for (int64_t k = 0; k < B * h; k++)
            if (lr.negative_id[k] != ref_neg[(size_t)(me * B * h + k)] && bad++ < 3)
                MT_CHECK(false, "%s: negative_id[%lld] = %lld, one rank: %lld", c.name, (long long)k,
                         (long long)lr.negative_id[k], (long long)ref_neg[(size_t)(me * B * h + k)]);
        for (int64_t i = 0; i < B; i++)
            MT_CHECK(lr.negative_count[i] == ref_cnt[(size_t)(me * B + i)], "%s: count[%lld]", c.name,
                     (long long)i);
    }

    std::vector<float> dq((size_t)(B * d), NAN), dp((size_t)(B * d), NAN), dc((size_t)(B * C * d) + 1, NAN);
    float dtau = NAN;
    ns_step_grads lg = {dq.data(), dp.data(), C ? dc.data() : nullptr, &dtau};
    st = ns_step_backward(ctx, grad_loss, &lg);
    MT_CHECK(st == NS_OK, "%s: backward: %s", c.name, ns_last_error(ctx));
    if (st) return;
    compare(c.name, "dQ", dq.data(), rq.data() + me * B * d, (size_t)(B * d));
    compare(c.name, "dP", dp.data(), rp.data() + me * B * d, (size_t)(B * d));
    if (C) compare(c.name, "dCandidate", dc.data(), rc.data() + me * B * C * d, (size_t)(B * C * d));
    compare(c.name, "dtau", &dtau, &rtau, 1);
}

void test_failures(ns_context *ctx, ns_comm *comm) {
    const int R = ns_comm_size(comm), me = ns_comm_rank(comm), odd = R - 1;
    if (R < 2) return;
    Config c = {"fail", 4, 5, 2, 8, 1, 0, 1, 1, NS_SAMPLE_SIMANS, NS_F32};
    Global g = make_global(c, R, 5);
    ns_batch b = batch_of(c, g, me * c.B, c.B);
    StepOptions o = options_of(c, comm);
    ns_step_result res;
    char want[96];

    // Shapes that differ: the last rank samples one negative fewer.
    StepOptions o2 = o;
    if (me == odd) o2.hard_negatives = 1;
    ns_status st = ns_step_forward(ctx, &b, o2.get(), &res);
    std::snprintf(want, sizeof want, "hard_per_query is 2 on rank 0 but 1 on rank %d", odd);
    MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), want), "%s: %s", ns_status_string(st),
             ns_last_error(ctx));

    // The last rank's own argument is wrong (before any collective): it reports why, the others
    // name it at once rather than waiting for the timeout.
    o2 = o;
    if (me == odd) o2.hard_negatives = c.C + 1;
    st = ns_step_forward(ctx, &b, o2.get(), &res);
    if (me == odd)
        MT_CHECK(st == NS_ERR_INVALID_ARGUMENT && contains(ns_last_error(ctx), "options->hard_negatives"),
                 "%s", ns_last_error(ctx));
    else {
        std::snprintf(want, sizeof want, "rank %d rejected its arguments", odd);
        MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), want), "%s", ns_last_error(ctx));
    }
    // A backward without a forward fails on every rank, locally.
    ns_step_grads gr = {nullptr, nullptr, nullptr, nullptr};
    st = ns_step_backward(ctx, 1.f, &gr);
    MT_CHECK(st == NS_ERR_INVALID_ARGUMENT, "%s", ns_last_error(ctx));

    // A good step, then one rank's NaN gradient scale in the backward.
    st = ns_step_forward(ctx, &b, o.get(), &res);
    MT_CHECK(st == NS_OK, "%s", ns_last_error(ctx));
    std::vector<float> dq((size_t)(c.B * c.d), 3.f);
    ns_step_grads g2 = {dq.data(), nullptr, nullptr, nullptr};
    st = ns_step_backward(ctx, me == odd ? NAN : 1.f, &g2);
    if (me == odd) MT_CHECK(st == NS_ERR_NONFINITE, "%s", ns_last_error(ctx));
    else {
        std::snprintf(want, sizeof want, "rank %d rejected its arguments", odd);
        MT_CHECK(st == NS_ERR_COMM && contains(ns_last_error(ctx), want), "%s", ns_last_error(ctx));
    }
    MT_CHECK(dq[0] == 3.f, "gradient untouched on failure");
    // The communicator is still good.
    st = ns_step_forward(ctx, &b, o.get(), &res);
    MT_CHECK(st == NS_OK, "%s", ns_last_error(ctx));
    st = ns_step_backward(ctx, 1.f, &g2);
    MT_CHECK(st == NS_OK, "%s", ns_last_error(ctx));
}

}  // namespace

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    ns_context *ctx = cpu_context(), *ref_ctx = cpu_context();
    ns_comm *comm = world_comm(ctx);
    if (ctx && ref_ctx && comm) {
        const Config configs[] = {
            // name              B  C  h  d  share sym cid pid sampler            dtype
            {"in-batch only",    5, 0, 0, 12, 0, 0, 1, 1, NS_SAMPLE_SIMANS, NS_F32},
            {"own hard, simans", 6, 6, 3, 12, 0, 0, 1, 1, NS_SAMPLE_SIMANS, NS_F32},
            {"shared hard",      6, 6, 3, 12, 1, 0, 1, 1, NS_SAMPLE_SIMANS, NS_F32},
            {"shared, symmetric",5, 4, 2, 10, 1, 1, 1, 1, NS_SAMPLE_SOFTMAX, NS_F32},
            {"top, h = C",       4, 3, 3, 8,  1, 0, 1, 1, NS_SAMPLE_TOP, NS_F32},
            {"uniform, no ids",  5, 5, 2, 8,  1, 0, 0, 0, NS_SAMPLE_UNIFORM, NS_F32},
            {"bf16",             6, 5, 2, 16, 1, 0, 1, 1, NS_SAMPLE_SIMANS, NS_BF16},
            {"B = 1",            1, 2, 1, 4,  1, 1, 1, 1, NS_SAMPLE_SIMANS, NS_F32},
        };
        uint64_t seed = 4321;
        for (const Config &c : configs) run_config(ref_ctx, ctx, comm, c, seed++);
        test_failures(ctx, comm);
    }
    ns_comm_destroy(comm);
    ns_context_destroy(ctx);
    ns_context_destroy(ref_ctx);
    int rc = finish("mpi_step");
    MPI_Finalize();
    return rc;
}
