// The step's random + hard mixing (ns_step_options.random_negatives / random_pool): the hard
// columns are the plain step's draw, the random ones are never a positive or a chosen hard id,
// distinct, from the pool; the loss over all of them equals a double-precision reference; the
// random part is uniform over the eligible slots (chi-square over unordered pairs against the
// exact law of drawing 2 of 6 without replacement); CPU and CUDA draw the same; sync_free;
// bad input.
#include "ns_test_util.h"
#include "step_options.h"

#include <algorithm>
#include <map>
#include <set>

using namespace nstest;

namespace {

struct Data {
    int64_t B, C, d;
    std::vector<float> q, p, cand;
    std::vector<int64_t> pos_id, cand_id;
};

Data make(int64_t B, int64_t C, int64_t d, uint64_t seed) {
    Data s{B, C, d, random_floats(B * d, seed), random_floats(B * d, seed + 1),
           random_floats(B * C * d, seed + 2), {}, {}};
    for (int64_t i = 0; i < B; i++) s.pos_id.push_back(1000 + i);
    for (int64_t r = 0; r < B * C; r++) s.cand_id.push_back(5000 + r);
    return s;
}

// The batch on the context's backend (device copies on CUDA).
struct Side {
    Buf<float> q, p, cand;
    Buf<int64_t> pid, cid;
    ns_batch b;
    Side(const Ctx &c, const Data &s)
        : q(c, s.q), p(c, s.p), cand(c, s.cand), pid(c, s.pos_id), cid(c, s.cand_id) {
        std::memset(&b, 0, sizeof b);
        b.query = f32_matrix(q.ptr(), s.B, s.d);
        b.positive = f32_matrix(p.ptr(), s.B, s.d);
        b.positive_id = pid.ptr();
        b.candidate = f32_matrix(cand.ptr(), s.B * s.C, s.d);
        b.candidates_per_query = s.C;
        b.candidate_id = cid.ptr();
    }
};

template <class T> std::vector<T> host_copy(const Ctx &c, const T *p, size_t n) {
    std::vector<T> v(n);
#ifdef NS_HAVE_CUDA
    if (c.cuda()) {
        cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
        return v;
    }
#endif
    (void)c;
    std::copy(p, p + n, v.begin());
    return v;
}

struct Out {
    ns_status st;
    float loss;
    std::vector<int64_t> id, row, count;
};

Out forward(const Ctx &c, const Data &s, StepOptions o) {
    Side side(c, s);
    ns_step_result r;
    Out out{ns_step_forward(c, &side.b, o.get(), &r), NAN, {}, {}, {}};
    if (out.st != NS_OK) return out;
    const bool mixing = o.struct_size > offsetof(ns_step_options, random_negatives);
    const int64_t H = o.hard_negatives + (mixing ? o.random_negatives : 0);
    out.loss = r.loss;
    out.id = host_copy(c, r.negative_id, (size_t)(s.B * H));
    out.row = host_copy(c, r.negative_row, (size_t)(s.B * H));
    out.count = host_copy(c, r.negative_count, (size_t)s.B);
    ns_step_grads g{};
    EXPECT_EQ(ns_step_backward(c, 1.f, &g), NS_OK) << ns_last_error(c);
    return out;
}

StepOptions mix_options(int64_t h, int64_t hr, int64_t pool, ns_sampler strategy) {
    StepOptions o;
    o.hard_negatives = h;
    o.random_negatives = hr;
    o.random_pool = pool;
    o.sampler.strategy = strategy;
    o.sampler.seed = 42;
    o.loss.temperature = 0.5f;
    return o;
}

// InfoNCE in double: every positive (same-id masked) + query i's H rows of cand (-1 = none).
double reference_loss(const Data &s, const std::vector<int64_t> &rows, int64_t H, double tau) {
    const int64_t d = s.d;
    auto dot = [&](const float *a, const float *b) {
        double t = 0;
        for (int64_t k = 0; k < d; k++) t += (double)a[k] * b[k];
        return t;
    };
    double total = 0;
    for (int64_t i = 0; i < s.B; i++) {
        std::vector<double> l{dot(&s.q[i * d], &s.p[i * d]) / tau};
        for (int64_t j = 0; j < s.B; j++)
            if (j != i && s.pos_id[j] != s.pos_id[i]) l.push_back(dot(&s.q[i * d], &s.p[j * d]) / tau);
        for (int64_t r = 0; r < H; r++)
            if (rows[i * H + r] >= 0) l.push_back(dot(&s.q[i * d], &s.cand[rows[i * H + r] * d]) / tau);
        const double m = *std::max_element(l.begin(), l.end());
        double z = 0;
        for (double x : l) z += std::exp(x - m);
        total += -l[0] + m + std::log(z);
    }
    return total / s.B;
}

double chi2_critical(int df) {  // upper 1e-4 quantile (Wilson–Hilferty)
    const double z = 3.719, h = 2.0 / (9.0 * df);
    return df * std::pow(1 - h + z * std::sqrt(h), 3);
}

class StepMix : public ::testing::TestWithParam<ns_backend> {};

}  // namespace

// A pool of R corpus-wide slots at the end of each query's candidates: hard ones from the
// region, random ones from the pool, never a positive (same-id) or a chosen hard id.
TEST_P(StepMix, PoolNegativesAreValidAndTheLossCountsThem) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t B = 12, C = 10, R = 4, h = 3, hr = 2, H = h + hr;
    Data s = make(B, C, 8, 3);
    for (int64_t i = 0; i < B; i++) {
        s.cand_id[i * C + C - R] = s.pos_id[i];             // a positive in the pool
        s.cand_id[i * C + C - R + 1] = s.cand_id[i * C + 0]; // a hard-region id in the pool
    }
    StepOptions o = mix_options(h, hr, R, NS_SAMPLE_TOP);
    const Out m = forward(c, s, o);
    ASSERT_EQ(m.st, NS_OK) << ns_last_error(c);
    StepOptions plain = mix_options(h, 0, 0, NS_SAMPLE_TOP);
    plain.filter.rules |= NS_FILTER_RANK;  // the plain step over the hard region only
    plain.filter.rank_max = C - R;
    const Out p = forward(c, s, plain);
    ASSERT_EQ(p.st, NS_OK) << ns_last_error(c);
    for (int64_t i = 0; i < B; i++) {
        std::set<int64_t> hard;
        for (int64_t k = 0; k < h; k++) {
            EXPECT_EQ(m.id[i * H + k], p.id[i * h + k]) << "query " << i;
            hard.insert(m.id[i * H + k]);
        }
        std::set<int64_t> rnd;
        for (int64_t k = h; k < H; k++) {
            const int64_t id = m.id[i * H + k], row = m.row[i * H + k];
            ASSERT_GE(row, i * C);
            ASSERT_LT(row, (i + 1) * C);
            EXPECT_EQ(s.cand_id[row], id);
            // from the pool; the planted copy of candidate 0's id takes candidate 0's row
            EXPECT_TRUE(row >= i * C + C - R || id == s.cand_id[i * C + C - R + 1])
                << "a random negative outside the pool";
            EXPECT_NE(id, s.pos_id[i]) << "a positive drawn as a random negative";
            EXPECT_FALSE(hard.count(id)) << "a hard negative drawn again as a random one";
            EXPECT_TRUE(rnd.insert(id).second);
        }
        // pool: 4 slots, minus the positive; minus the hard copy when candidate 0 was chosen
        EXPECT_EQ(m.count[i], h + hr);
    }
    EXPECT_TRUE(close(m.loss, reference_loss(s, m.row, H, 0.5), 1e-5, 1e-4));
}

// pool 0: random among the kept candidates the hard draw left; the law is uniform without
// replacement, so each unordered pair of the 6 eligible slots has probability 1/15.
TEST_P(StepMix, RandomPartIsUniformOverTheEligibleSlots) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t B = c.cuda() ? 600 : 3000, C = 8, h = 2, hr = 2, H = h + hr;
    Data s = make(B, C, 4, 9);
    const Out m = forward(c, s, mix_options(h, hr, 0, NS_SAMPLE_TOP));
    ASSERT_EQ(m.st, NS_OK) << ns_last_error(c);
    const Out p = forward(c, s, mix_options(h, 0, 0, NS_SAMPLE_TOP));
    std::map<std::pair<int, int>, int> pairs;
    for (int64_t i = 0; i < B; i++) {
        std::vector<int64_t> eligible;  // slots not chosen as hard, in slot order
        for (int64_t j = 0; j < C; j++)
            if (s.cand_id[i * C + j] != p.id[i * h] && s.cand_id[i * C + j] != p.id[i * h + 1])
                eligible.push_back(j);
        ASSERT_EQ(eligible.size(), 6u);
        int a = -1, b = -1;
        for (int k = 0; k < 6; k++) {
            if (s.cand_id[i * C + eligible[k]] == m.id[i * H + 2]) a = k;
            if (s.cand_id[i * C + eligible[k]] == m.id[i * H + 3]) b = k;
        }
        ASSERT_GE(a, 0);
        ASSERT_GE(b, 0);
        ASSERT_NE(a, b);
        pairs[{std::min(a, b), std::max(a, b)}]++;
    }
    ASSERT_LE(pairs.size(), 15u);
    double chi2 = 0, e = B / 15.0;
    for (int a = 0; a < 6; a++)
        for (int b = a + 1; b < 6; b++) {
            const double o = pairs.count({a, b}) ? pairs[{a, b}] : 0;
            chi2 += (o - e) * (o - e) / e;
        }
    EXPECT_LT(chi2, chi2_critical(14));
}

// The same draws and loss on CPU and CUDA (the host execution layer here), with and without
// sync_free, SimANS for the hard part.
TEST_P(StepMix, CudaDrawsWhatTheCpuDraws) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    if (!c.cuda()) GTEST_SKIP() << "compares CUDA against the CPU";
    Ctx cpu(NS_BACKEND_CPU);
    Data s = make(9, 12, 16, 21);
    for (int64_t i = 0; i < 9; i++) s.cand_id[i * 12 + 11] = s.pos_id[i];
    for (int64_t pool : {0, 5}) {
        StepOptions o = mix_options(3, 4, pool, NS_SAMPLE_SIMANS);
        const Out a = forward(cpu, s, o);
        ASSERT_EQ(a.st, NS_OK) << ns_last_error(cpu);
        for (int sync_free : {0, 1}) {
            o.sync_free = sync_free;
            const Out b = forward(c, s, o);
            ASSERT_EQ(b.st, NS_OK) << ns_last_error(c);
            EXPECT_EQ(a.id, b.id) << "pool " << pool;
            EXPECT_EQ(a.row, b.row);
            EXPECT_EQ(a.count, b.count);
            if (!sync_free) EXPECT_TRUE(close(b.loss, a.loss, 1e-5, 1e-5));
        }
    }
}

// sync_free holds with mixing: after a first step of these shapes (the arena), forward and
// backward make no host synchronisation (counted by the host execution layer; not observable
// on a real GPU, where the check holds trivially).
TEST_P(StepMix, SyncFreeMixingMakesNoHostSync) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    if (!c.cuda()) GTEST_SKIP() << "host synchronisation is a CUDA matter";
#ifdef NS_CUDA_HOST_LAYER
    Data s = make(8, 10, 16, 31);
    Side side(c, s);
    StepOptions o = mix_options(3, 3, 4, NS_SAMPLE_SIMANS);
    o.sync_free = 1;
    ns_step_result r;
    ns_step_grads g{};
    for (int k = 0; k < 2; k++) {
        const unsigned long long before = cuda_host_sync_count();
        ASSERT_EQ(ns_step_forward(c, &side.b, o.get(), &r), NS_OK) << ns_last_error(c);
        ASSERT_EQ(ns_step_backward(c, 1.f, &g), NS_OK) << ns_last_error(c);
        if (k == 1) EXPECT_EQ(cuda_host_sync_count(), before);
    }
#else
    GTEST_SKIP() << "counted only by the host execution layer";
#endif
}

TEST_P(StepMix, BadInputIsNamed) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    Data s = make(3, 6, 4, 1);
    auto fails = [&](StepOptions o, const char *needle) {
        const Out r = forward(c, s, o);
        EXPECT_EQ(r.st, NS_ERR_INVALID_ARGUMENT) << needle;
        EXPECT_NE(std::string(ns_last_error(c)).find(needle), std::string::npos)
            << ns_last_error(c);
    };
    fails(mix_options(4, 3, 0, NS_SAMPLE_TOP), "options->random_negatives (3)");
    fails(mix_options(1, -1, 0, NS_SAMPLE_TOP), "options->random_negatives (-1)");
    fails(mix_options(1, 1, 7, NS_SAMPLE_TOP), "options->random_pool (7)");
    fails(mix_options(4, 1, 3, NS_SAMPLE_TOP), "options->random_pool (3) leaves 3 slots");
    fails(mix_options(1, 0, 2, NS_SAMPLE_TOP), "without options->random_negatives");
    StepOptions old = mix_options(2, 0, 0, NS_SAMPLE_TOP);  // an older caller: no mixing fields
    old.struct_size = offsetof(ns_step_options, random_negatives);
    old.random_negatives = 99;  // beyond its struct_size: never read
    const Out r = forward(c, s, old);
    EXPECT_EQ(r.st, NS_OK) << ns_last_error(c);
    EXPECT_EQ(r.id.size(), 3u * 2u);  // h columns only
}

INSTANTIATE_TEST_SUITE_P(Backends, StepMix, NS_BACKENDS, BackendName());
