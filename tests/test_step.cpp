// The training step: filter → sample → InfoNCE forward, backward and scatter, against a
// double-precision reference written here and central finite differences.
#include "ns_test_util.h"
#include "step_options.h"

#include <algorithm>
#include <set>

using namespace nstest;

namespace {

struct StepData {
    int64_t B, C, d;
    std::vector<float> q, p, cand;
    std::vector<int64_t> pos_id, cand_id;
};

StepData make_data(int64_t B, int64_t C, int64_t d, uint64_t seed, bool duplicate_ids) {
    StepData s{B, C, d, random_floats(B * d, seed), random_floats(B * d, seed + 1),
               random_floats(B * C * d, seed + 2), {}, {}};
    for (int64_t i = 0; i < B; i++) s.pos_id.push_back(1000 + i);
    for (int64_t r = 0; r < B * C; r++) s.cand_id.push_back(5000 + r);
    if (duplicate_ids) {
        // Candidate 0 of every query is its own positive document (a false negative), and
        // queries 0 and 1 share a positive document.
        for (int64_t i = 0; i < B; i++) s.cand_id[i * C] = s.pos_id[i];
        if (B > 1) s.pos_id[1] = s.pos_id[0];
    }
    return s;
}

ns_batch batch_of(const StepData &s, int64_t first = 0, int64_t count = -1) {
    if (count < 0) count = s.B;
    ns_batch b;
    std::memset(&b, 0, sizeof b);
    b.query = f32_matrix(s.q.data() + first * s.d, count, s.d);
    b.positive = f32_matrix(s.p.data() + first * s.d, count, s.d);
    b.positive_id = s.pos_id.data() + first;
    b.candidate = f32_matrix(s.cand.data() + first * s.C * s.d, count * s.C, s.d);
    b.candidates_per_query = s.C;
    b.candidate_id = s.cand_id.data() + first * s.C;
    b.query_offset = first;
    return b;
}

StepOptions uniform_options(int64_t h, float tau) {
    StepOptions o;
    o.hard_negatives = h;
    o.sampler.strategy = NS_SAMPLE_UNIFORM;  // keys independent of scores: FD-safe
    o.sampler.seed = 42;
    o.loss.temperature = tau;
    return o;
}

// Plain InfoNCE in double over: every positive of the batch (same-id masked) + query i's own
// sampled rows (row indices into cand, -1 = none) + extra rows.
double reference_loss(const StepData &s, const std::vector<int64_t> &rows, int64_t h, double tau,
                      const std::vector<float> &extra = {}, const std::vector<int64_t> &extra_id = {}) {
    const int64_t B = s.B, d = s.d, E = (int64_t)extra_id.size();
    auto dot = [&](const float *a, const float *b) {
        double t = 0;
        for (int64_t k = 0; k < d; k++) t += (double)a[k] * b[k];
        return t;
    };
    double total = 0;
    for (int64_t i = 0; i < B; i++) {
        std::vector<double> logits;
        const double lpos = dot(&s.q[i * d], &s.p[i * d]) / tau;
        logits.push_back(lpos);
        for (int64_t j = 0; j < B; j++)
            if (j != i && s.pos_id[j] != s.pos_id[i]) logits.push_back(dot(&s.q[i * d], &s.p[j * d]) / tau);
        for (int64_t r = 0; r < h; r++) {
            int64_t row = rows[i * h + r];
            if (row < 0 || s.cand_id[row] == s.pos_id[i]) continue;
            logits.push_back(dot(&s.q[i * d], &s.cand[row * d]) / tau);
        }
        for (int64_t e = 0; e < E; e++)
            if (extra_id[e] != s.pos_id[i]) logits.push_back(dot(&s.q[i * d], &extra[e * d]) / tau);
        double m = *std::max_element(logits.begin(), logits.end()), z = 0;
        for (double l : logits) z += std::exp(l - m);
        total += -lpos + m + std::log(z);
    }
    return total / B;
}

class Step : public ::testing::TestWithParam<ns_backend> {};

}  // namespace

TEST_P(Step, LossMatchesReferenceAndNegativesAreValid) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    if (c.cuda()) GTEST_SKIP() << "step parity on CUDA is covered by test_cuda_parity";
    for (auto shape : {std::vector<int64_t>{1, 1, 1, 1}, {5, 4, 7, 2}, {37, 9, 13, 5}, {64, 16, 32, 16}}) {
        StepData s = make_data(shape[0], shape[1], shape[2], 7 + shape[0], true);
        ns_batch b = batch_of(s);
        StepOptions o = uniform_options(shape[3], 0.5f);
        ns_step_result r;
        ASSERT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_OK) << ns_last_error(c);
        std::vector<int64_t> rows(r.negative_row, r.negative_row + s.B * shape[3]);
        for (int64_t i = 0; i < s.B; i++) {
            std::set<int64_t> seen;
            for (int64_t k = 0; k < shape[3]; k++) {
                int64_t row = rows[i * shape[3] + k], id = r.negative_id[i * shape[3] + k];
                if (k >= r.negative_count[i]) {
                    EXPECT_EQ(row, -1);
                    EXPECT_EQ(id, -1);
                    continue;
                }
                ASSERT_GE(row, i * s.C);
                ASSERT_LT(row, (i + 1) * s.C);
                EXPECT_EQ(s.cand_id[row], id);
                EXPECT_NE(id, s.pos_id[i]) << "same-id false negative was sampled";
                EXPECT_TRUE(seen.insert(row).second) << "row sampled twice";
            }
        }
        const double want = reference_loss(s, rows, shape[3], 0.5);
        EXPECT_TRUE(close(r.loss, want, 1e-5, 1e-4)) << "B=" << s.B << " got " << r.loss << " want " << want;
    }
}

TEST_P(Step, GradientsMatchFiniteDifferences) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    if (c.cuda()) GTEST_SKIP() << "finite differences run on the CPU backend";
    StepData s = make_data(6, 5, 4, 99, true);
    const int64_t h = 3;
    const float tau = 0.5f, gl = 1.7f;
    StepOptions o = uniform_options(h, tau);
    ns_batch b = batch_of(s);
    ns_step_result r;
    ASSERT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_OK) << ns_last_error(c);
    std::vector<int64_t> rows(r.negative_row, r.negative_row + s.B * h);
    std::vector<float> gq(s.q.size(), 9.f), gp(s.p.size(), 9.f), gc(s.cand.size(), 9.f);
    float gt = 0;
    ns_step_grads g{gq.data(), gp.data(), gc.data(), &gt};
    ASSERT_EQ(ns_step_backward(c, gl, &g), NS_OK) << ns_last_error(c);

    auto fd = [&](std::vector<float> &x, size_t k) {
        const float keep = x[k];
        const double eps = 1e-3;
        x[k] = keep + (float)eps;
        double up = reference_loss(s, rows, h, tau);
        x[k] = keep - (float)eps;
        double down = reference_loss(s, rows, h, tau);
        x[k] = keep;
        // the perturbation is representable only to f32: use the actual step
        return gl * (up - down) / ((double)(keep + (float)eps) - (double)(keep - (float)eps));
    };
    int bad = 0;
    for (size_t k = 0; k < s.q.size(); k++)
        if (!close(gq[k], fd(s.q, k), 2e-3, 2e-3) && bad++ < 5) ADD_FAILURE() << "dq[" << k << "] " << gq[k] << " vs " << fd(s.q, k);
    for (size_t k = 0; k < s.p.size(); k++)
        if (!close(gp[k], fd(s.p, k), 2e-3, 2e-3) && bad++ < 5) ADD_FAILURE() << "dp[" << k << "] " << gp[k] << " vs " << fd(s.p, k);
    for (size_t k = 0; k < s.cand.size(); k++)
        if (!close(gc[k], fd(s.cand, k), 2e-3, 2e-3) && bad++ < 5) ADD_FAILURE() << "dcand[" << k << "] " << gc[k] << " vs " << fd(s.cand, k);
    EXPECT_EQ(bad, 0);
    // Unsampled candidates get exactly zero.
    std::set<int64_t> sampled(rows.begin(), rows.end());
    for (int64_t row = 0; row < s.B * s.C; row++)
        if (!sampled.count(row))
            for (int64_t k = 0; k < s.d; k++) ASSERT_EQ(gc[row * s.d + k], 0.f);
    // dL/dτ by differences in τ.
    const double dt = 1e-3;
    double want_t = gl * (reference_loss(s, rows, h, tau + dt) - reference_loss(s, rows, h, tau - dt)) / (2 * dt);
    EXPECT_TRUE(close(gt, want_t, 2e-3, 2e-3)) << gt << " vs " << want_t;
}

// The step computes the gradients in its forward (ns_infonce_forward_backward at
// grad_loss 1) and scales them in the backward; forward_only = 1 runs the loss alone and the
// backward after it. Same loss; the same gradient bits at grad_loss 1, the same values at 1.7.
TEST_P(Step, FusedForwardEqualsForwardOnlyThenBackward) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    if (c.cuda()) GTEST_SKIP() << "host buffers; CUDA: CudaParity.StepFusedEqualsForwardOnlyThenBackward";
    StepData s = make_data(9, 5, 6, 123, true);
    ns_batch b = batch_of(s);
    for (int sym : {0, 1})
        for (float gl : {1.0f, 1.7f}) {
            std::vector<float> out[2][3];
            float loss[2], gt[2];
            for (int fo : {0, 1}) {
                StepOptions o = uniform_options(3, 0.5f);
                o.loss.symmetric = sym;
                o.forward_only = fo;
                ns_step_result r;
                ASSERT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_OK) << ns_last_error(c);
                loss[fo] = r.loss;
                out[fo][0].assign(s.q.size(), 9.f);
                out[fo][1].assign(s.p.size(), 9.f);
                out[fo][2].assign(s.cand.size(), 9.f);
                ns_step_grads g{out[fo][0].data(), out[fo][1].data(), out[fo][2].data(), &gt[fo]};
                ASSERT_EQ(ns_step_backward(c, gl, &g), NS_OK) << ns_last_error(c);
            }
            SCOPED_TRACE("symmetric " + std::to_string(sym) + " grad_loss " + std::to_string(gl));
            EXPECT_EQ(loss[0], loss[1]);
            for (int t = 0; t < 3; t++)
                for (size_t i = 0; i < out[0][t].size(); i++) {
                    if (gl == 1.0f)
                        ASSERT_EQ(out[0][t][i], out[1][t][i]) << "tensor " << t << " [" << i << "]";
                    else
                        ASSERT_TRUE(close(out[0][t][i], out[1][t][i], 1e-7, 1e-6))
                            << "tensor " << t << " [" << i << "]: " << out[0][t][i] << " vs "
                            << out[1][t][i];
                }
            EXPECT_TRUE(close(gt[0], gt[1], 1e-7, 1e-6)) << gt[0] << " vs " << gt[1];
        }
}

// options->groups: the sampled hard negatives take their candidate slots' groups; the step's
// loss and gradients are those of ns_infonce_* over the same rows with those groups.
TEST_P(Step, GroupsReachTheLossWithTheSampledSlotsGroups) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    if (c.cuda()) GTEST_SKIP() << "step parity on CUDA is covered by test_cuda_parity";
    StepData s = make_data(8, 6, 5, 321, false);
    const int64_t h = 3;
    std::vector<int64_t> qg(s.B), pg(s.B), cg(s.B * s.C);
    for (int64_t i = 0; i < s.B; i++) qg[i] = i % 3, pg[i] = (i + 1) % 3;
    for (int64_t r = 0; r < s.B * s.C; r++) cg[r] = r % 4 == 3 ? -1 : r % 3;
    ns_batch b = batch_of(s);
    for (float w : {0.0f, 0.5f}) {
        ns_loss_groups g = NS_LOSS_GROUPS_INIT;
        g.query = qg.data(), g.passage = pg.data(), g.hard = cg.data(), g.weight = w;
        StepOptions o = uniform_options(h, 0.5f);
        o.groups = &g;
        ns_step_result r;
        ASSERT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_OK) << ns_last_error(c);
        const float step_loss = r.loss;
        std::vector<int64_t> rows(r.negative_row, r.negative_row + s.B * h);
        std::vector<float> sq(s.q.size()), sp(s.p.size()), sc(s.cand.size());
        float st = 0;
        ns_step_grads sg{sq.data(), sp.data(), sc.data(), &st};
        ASSERT_EQ(ns_step_backward(c, 1.0f, &sg), NS_OK) << ns_last_error(c);
        // The same loss by hand: gathered rows, their ids, keep and groups.
        std::vector<float> hard(s.B * h * s.d, 0.f);
        std::vector<int64_t> hid(s.B * h, -1), hg(s.B * h, -1);
        std::vector<uint8_t> keep(s.B * h, 0);
        for (int64_t k = 0; k < s.B * h; k++)
            if (rows[k] >= 0) {
                std::copy(&s.cand[rows[k] * s.d], &s.cand[(rows[k] + 1) * s.d], &hard[k * s.d]);
                hid[k] = s.cand_id[rows[k]], hg[k] = cg[rows[k]], keep[k] = 1;
            }
        ns_infonce_inputs in{};
        in.query = f32_matrix(s.q.data(), s.B, s.d);
        in.passage = f32_matrix(s.p.data(), s.B, s.d);
        in.hard = f32_matrix(hard.data(), s.B * h, s.d);
        in.hard_per_query = h;
        in.hard_keep = keep.data();
        in.extra = ns_matrix{nullptr, NS_F32, 0, s.d, 0};
        in.passage_id = s.pos_id.data();
        in.hard_id = hid.data();
        ns_loss_groups lg = g;
        lg.hard = hg.data();
        ns_loss_options lo = o.loss;
        lo.groups = &lg;
        std::vector<float> saved(s.B * NS_INFONCE_SAVED_PER_QUERY), gq(s.q.size()), gp(s.p.size()),
            gh(s.B * h * s.d);
        float want = 0, wt = 0;
        ASSERT_EQ(ns_infonce_forward(c, &in, &lo, &want, nullptr, saved.data()), NS_OK) << ns_last_error(c);
        ns_infonce_grads ig{gq.data(), gp.data(), gh.data(), &wt};
        ASSERT_EQ(ns_infonce_backward(c, &in, &lo, saved.data(), 1.0f, &ig), NS_OK);
        EXPECT_EQ(step_loss, want) << "weight " << w;
        EXPECT_EQ(st, wt);
        EXPECT_EQ(sq, gq);
        EXPECT_EQ(sp, gp);
        for (int64_t k = 0; k < s.B * h; k++)
            for (int64_t e = 0; e < s.d && rows[k] >= 0; e++)
                ASSERT_EQ(sc[rows[k] * s.d + e], gh[k * s.d + e]) << k;
        // and the groups change the loss (some sampled row shares its query's group)
        StepOptions o2 = uniform_options(h, 0.5f);
        ASSERT_EQ(ns_step_forward(c, &b, o2.get(), &r), NS_OK);
        EXPECT_NE(r.loss, step_loss);
        ASSERT_EQ(ns_step_backward(c, 1.0f, &sg), NS_OK);
    }
    // Bad groups are named.
    ns_loss_groups g = NS_LOSS_GROUPS_INIT;
    StepOptions o = uniform_options(h, 0.5f);
    o.groups = &g;
    ns_step_result r;
    EXPECT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("options->groups->query is NULL"), std::string::npos)
        << ns_last_error(c);
    g.query = qg.data(), g.weight = 3.f;
    EXPECT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("options->groups->weight (3)"), std::string::npos)
        << ns_last_error(c);
    g.weight = 0.f;
    o.loss.groups = &g;
    EXPECT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("options->loss->groups"), std::string::npos)
        << ns_last_error(c);
}

TEST_P(Step, NegativesDoNotDependOnBatchSplitOrThreads) {
    Ctx c1(GetParam(), 1), c2(GetParam(), 2);
    NS_REQUIRE_BACKEND(c1);
    if (c1.cuda()) GTEST_SKIP() << "host buffers only";
    StepData s = make_data(24, 12, 8, 5, true);
    StepOptions o;
    o.hard_negatives = 4;
    o.sampler.strategy = NS_SAMPLE_SIMANS;
    o.sampler.seed = 1234;
    o.sampler.step = 3;
    ns_batch whole = batch_of(s);
    ns_step_result r;
    ASSERT_EQ(ns_step_forward(c1, &whole, o.get(), &r), NS_OK) << ns_last_error(c1);
    std::vector<int64_t> ids(r.negative_id, r.negative_id + 24 * 4);
    ASSERT_EQ(ns_step_forward(c2, &whole, o.get(), &r), NS_OK) << ns_last_error(c2);
    EXPECT_EQ(std::vector<int64_t>(r.negative_id, r.negative_id + 24 * 4), ids);
    for (int64_t first : {0, 10}) {
        ns_batch part = batch_of(s, first, first == 0 ? 10 : 14);
        ASSERT_EQ(ns_step_forward(c2, &part, o.get(), &r), NS_OK) << ns_last_error(c2);
        for (int64_t k = 0; k < part.query.rows * 4; k++)
            ASSERT_EQ(r.negative_id[k], ids[first * 4 + k]) << "query " << first + k / 4;
    }
    o.sampler.step = 4;
    ASSERT_EQ(ns_step_forward(c1, &whole, o.get(), &r), NS_OK);
    EXPECT_NE(std::vector<int64_t>(r.negative_id, r.negative_id + 24 * 4), ids) << "step must change the draw";
}

TEST_P(Step, QueueAddsPastPositivesAsNegatives) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    if (c.cuda()) GTEST_SKIP() << "host buffers only";
    StepData s1 = make_data(8, 3, 6, 11, false), s2 = make_data(8, 3, 6, 12, false);
    for (auto &id : s2.pos_id) id += 100;  // different documents in the second batch
    ns_queue *queue = nullptr;
    ASSERT_EQ(ns_queue_create(c, 16, 6, &queue), NS_OK) << ns_last_error(c);
    StepOptions o = uniform_options(2, 0.5f);
    o.queue = queue;
    o.enqueue = 1;
    ns_batch b1 = batch_of(s1), b2 = batch_of(s2);
    ns_step_result r;
    ns_step_grads g{nullptr, nullptr, nullptr, nullptr};
    ASSERT_EQ(ns_step_forward(c, &b1, o.get(), &r), NS_OK) << ns_last_error(c);
    ASSERT_EQ(ns_step_backward(c, 1.f, &g), NS_OK) << ns_last_error(c);
    EXPECT_EQ(ns_queue_size(queue), 8);
    ASSERT_EQ(ns_step_forward(c, &b2, o.get(), &r), NS_OK) << ns_last_error(c);
    std::vector<int64_t> rows(r.negative_row, r.negative_row + 8 * 2);
    EXPECT_TRUE(close(r.loss, reference_loss(s2, rows, 2, 0.5, s1.p, s1.pos_id), 1e-5, 1e-4));
    ns_queue_destroy(queue);
}

TEST_P(Step, BadInputIsRejectedAndNamed) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    if (c.cuda()) GTEST_SKIP() << "host buffers only";
    StepData s = make_data(4, 3, 5, 1, false);
    StepOptions o = uniform_options(2, 0.5f);
    ns_step_result r;
    std::memset(&r, 0x5a, sizeof r);
    ns_step_result untouched = r;
    ns_batch b = batch_of(s);
    auto expect = [&](ns_status want, const char *needle) {
        ns_status st = ns_step_forward(c, &b, o.get(), &r);
        EXPECT_EQ(st, want) << ns_last_error(c);
        EXPECT_NE(std::string(ns_last_error(c)).find(needle), std::string::npos) << ns_last_error(c);
        EXPECT_EQ(std::memcmp(&r, &untouched, sizeof r), 0) << "result written on failure";
        b = batch_of(s);
        o = uniform_options(2, 0.5f);
    };
    EXPECT_EQ(ns_step_forward(nullptr, &b, o.get(), &r), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(ns_step_forward(c, nullptr, o.get(), &r), NS_ERR_INVALID_ARGUMENT);
    b.positive.rows = 3;
    expect(NS_ERR_INVALID_ARGUMENT, "batch->positive has 3 rows");
    b.positive.cols = 4;
    expect(NS_ERR_INVALID_ARGUMENT, "batch->positive has 4");
    b.candidate.rows = 11;
    expect(NS_ERR_INVALID_ARGUMENT, "batch->candidate has 11 rows");
    o.hard_negatives = 4;
    expect(NS_ERR_INVALID_ARGUMENT, "options->hard_negatives (4)");
    o.loss.temperature = 0.f;  // named as set (was "ns_infonce_forward_backward: options->temperature")
    expect(NS_ERR_INVALID_ARGUMENT, "ns_step_forward: options->loss->temperature (0)");
    o.loss.tau_plus = 1.f;
    expect(NS_ERR_INVALID_ARGUMENT, "ns_step_forward: options->loss->tau_plus (1)");
    o.sampler.strategy = NS_SAMPLE_SIMANS;  // was "ns_filter_sample: options->simans_a"
    o.sampler.simans_a = -1.f;
    expect(NS_ERR_INVALID_ARGUMENT, "ns_step_forward: options->sampler->simans_a (-1)");
    o.sampler.strategy = NS_SAMPLE_SOFTMAX;
    o.sampler.temperature = NAN;
    expect(NS_ERR_INVALID_ARGUMENT, "ns_step_forward: options->sampler->temperature (nan)");
    o.struct_size = 4;  // below sizeof(size_t): not initialised
    expect(NS_ERR_INVALID_ARGUMENT, "struct_size");
    o.struct_size = sizeof(ns_step_options) + 8;  // a newer header than this library
    expect(NS_ERR_UNSUPPORTED, "larger than sizeof(ns_step_options)");
    o.loss.struct_size = sizeof(ns_loss_options) + 4;
    expect(NS_ERR_UNSUPPORTED, "options->loss->struct_size");
    std::vector<float> nanq = s.q;
    nanq[7] = NAN;
    b.query.data = nanq.data();
    expect(NS_ERR_NONFINITE, "query");
    ns_step_grads g{nullptr, nullptr, nullptr, nullptr};
    Ctx fresh(GetParam());
    EXPECT_EQ(ns_step_backward(fresh, 1.f, &g), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(fresh)).find("ns_step_forward first"), std::string::npos);
    ASSERT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_OK) << ns_last_error(c);
    EXPECT_EQ(ns_step_backward(c, NAN, &g), NS_ERR_NONFINITE);
    EXPECT_EQ(ns_step_backward(c, 1.f, nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(ns_step_backward(c, 1.f, &g), NS_OK) << ns_last_error(c);
    EXPECT_EQ(ns_step_backward(c, 1.f, &g), NS_ERR_INVALID_ARGUMENT) << "one backward per forward";
}

// Issue 11 item 2 (review gap G3): a queue the backward's push could not take (an empty one of
// another dim, one made on another backend's context) is refused by the forward before anything
// is written, so no backward can run and no gradient is written. Before, an empty queue skipped
// the check: forward and backward ran and wrote the gradients, then the push failed.
TEST_P(Step, AQueueThePushCannotTakeIsRefusedBeforeAnythingIsWritten) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t B = 4, C = 3, d = 5;
    StepData s = make_data(B, C, d, 21, false);
    Buf<float> q(c, s.q), p(c, s.p), cand(c, s.cand);
    Buf<int64_t> pid(c, s.pos_id), cid(c, s.cand_id);
    ns_batch b = batch_of(s);
    b.query.data = q.ptr(), b.positive.data = p.ptr(), b.candidate.data = cand.ptr();
    b.positive_id = pid.ptr(), b.candidate_id = cid.ptr();
    StepOptions o = uniform_options(2, 0.5f);
    o.enqueue = 1;
    const float mark = 7.25f;
    Buf<float> gq(c, (size_t)(B * d), mark), gp(c, (size_t)(B * d), mark), gc(c, (size_t)(B * C * d), mark);
    ns_step_grads g{gq.ptr(), gp.ptr(), gc.ptr(), nullptr};
    auto all_marked = [&](Buf<float> &x) {
        const std::vector<float> &v = x.fetch();
        return std::all_of(v.begin(), v.end(), [&](float e) { return e == mark; });
    };
    auto refused = [&](ns_queue *queue, const std::string &needle) {
        SCOPED_TRACE(needle);
        o.queue = queue;
        ns_step_result r;
        std::memset(&r, 0x5a, sizeof r);
        const ns_step_result untouched = r;
        EXPECT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_ERR_INVALID_ARGUMENT) << ns_last_error(c);
        EXPECT_NE(std::string(ns_last_error(c)).find(needle), std::string::npos) << ns_last_error(c);
        EXPECT_EQ(std::memcmp(&r, &untouched, sizeof r), 0) << "result written by a refused forward";
        EXPECT_EQ(ns_step_backward(c, 1.f, &g), NS_ERR_INVALID_ARGUMENT) << "a backward ran after a refused forward";
        EXPECT_TRUE(all_marked(gq) && all_marked(gp) && all_marked(gc)) << "a gradient was written";
        EXPECT_EQ(ns_queue_size(queue), 0);
    };
    ns_queue *wide = nullptr;
    ASSERT_EQ(ns_queue_create(c, 8, d + 1, &wide), NS_OK) << ns_last_error(c);
    refused(wide, "ns_step_forward: options->queue holds rows of 6 columns but batch->query has 5");
    ns_queue_destroy(wide);
    Ctx other(c.cuda() ? NS_BACKEND_CPU : NS_BACKEND_CUDA);
    if (other.status == NS_OK) {  // CUDA exists only in CUDA builds (the host layer's in CI)
        ns_queue *foreign = nullptr;
        ASSERT_EQ(ns_queue_create(other, 8, d, &foreign), NS_OK) << ns_last_error(other);
        refused(foreign, std::string("ns_step_forward: options->queue was created on a ") +
                             (c.cuda() ? "CPU context but ctx is CUDA" : "CUDA context but ctx is CPU"));
        ns_queue_destroy(foreign);
    }
    o.enqueue = 2;
    ns_step_result r;
    EXPECT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("options->enqueue (2) must be 0 or 1"), std::string::npos)
        << ns_last_error(c);
    // enqueue without a queue was ignored in silence: the caller's positives went nowhere.
    o.queue = nullptr, o.enqueue = 1;
    EXPECT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("options->enqueue is 1 but options->queue is NULL"),
              std::string::npos)
        << ns_last_error(c);
    // A usable queue: the step runs and pushes the batch's positives.
    ns_queue *fits = nullptr;
    ASSERT_EQ(ns_queue_create(c, 8, d, &fits), NS_OK) << ns_last_error(c);
    o.queue = fits, o.enqueue = 1;
    ASSERT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_OK) << ns_last_error(c);
    ASSERT_EQ(ns_step_backward(c, 1.f, &g), NS_OK) << ns_last_error(c);
    EXPECT_EQ(ns_queue_size(fits), B);
    EXPECT_FALSE(all_marked(gq)) << "the step wrote no query gradient";
    ns_queue_destroy(fits);
}

// Issue 13 item 8b: a duplicated candidate id whose first copy the filter removes and whose later
// copy it keeps. The sampler draws the kept copy; the gather must take that slot's vector, not
// the removed one's (the loss and the candidate gradient then belong to the kept slot).
TEST_P(Step, GatherTakesTheKeptCopyOfADuplicatedId) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t B = 2, C = 4, d = 4, h = 1;
    StepData s{B, C, d, {}, {}, {}, {}, {}};
    for (int64_t i = 0; i < B; i++) {
        const float qi[4] = {1.f, 0.f, 0.f, 0.f}, pi[4] = {0.f, 1.f, 0.f, 0.f};
        s.q.insert(s.q.end(), qi, qi + 4);
        s.p.insert(s.p.end(), pi, pi + 4);
        s.pos_id.push_back(1000 + i);
        // Slots 0, 1, 3 score 2, 3, 4 (> max_score 1: removed); slot 2 repeats slot 0's id and
        // scores 0.5 (kept): the only negative left, so the sampler must draw it.
        const float rows[4][4] = {{2.f, 0.f, 0.f, 0.f}, {3.f, 0.f, 0.f, 0.f},
                                  {0.5f, 0.25f, -0.5f, 0.75f}, {4.f, 0.f, 0.f, 0.f}};
        for (auto &r : rows) s.cand.insert(s.cand.end(), r, r + 4);
        const int64_t ids[4] = {7 + 10 * i, 8 + 10 * i, 7 + 10 * i, 9 + 10 * i};
        s.cand_id.insert(s.cand_id.end(), ids, ids + 4);
    }
    Buf<float> q(c, s.q), p(c, s.p), cand(c, s.cand);
    Buf<int64_t> pid(c, s.pos_id), cid(c, s.cand_id);
    ns_batch b;
    std::memset(&b, 0, sizeof b);
    b.query = f32_matrix(q.ptr(), B, d);
    b.positive = f32_matrix(p.ptr(), B, d);
    b.positive_id = pid.ptr();
    b.candidate = f32_matrix(cand.ptr(), B * C, d);
    b.candidates_per_query = C;
    b.candidate_id = cid.ptr();
    StepOptions o = uniform_options(h, 0.5f);
    o.filter.rules = NS_FILTER_MAX_SCORE;
    o.filter.max_score = 1.f;
    ns_step_result r;
    ASSERT_EQ(ns_step_forward(c, &b, o.get(), &r), NS_OK) << ns_last_error(c);
    auto read = [&](const int64_t *src, size_t n) {
        std::vector<int64_t> v(n);
#ifdef NS_HAVE_CUDA
        if (c.cuda()) {
            EXPECT_EQ(cudaMemcpy(v.data(), src, n * 8, cudaMemcpyDeviceToHost), cudaSuccess);
            return v;
        }
#endif
        std::memcpy(v.data(), src, n * 8);
        return v;
    };
    std::vector<int64_t> rows = read(r.negative_row, (size_t)(B * h)), ids = read(r.negative_id, (size_t)(B * h));
    for (int64_t i = 0; i < B; i++) {
        EXPECT_EQ(ids[i], 7 + 10 * i) << "query " << i;
        EXPECT_EQ(rows[i], i * C + 2) << "query " << i << ": the removed first copy was gathered";
    }
    EXPECT_TRUE(close(r.loss, reference_loss(s, rows, h, 0.5), 1e-5, 1e-4))
        << "loss " << r.loss << " want " << reference_loss(s, rows, h, 0.5);
    Buf<float> gc(c, (size_t)(B * C * d), 7.f);
    ns_step_grads g{nullptr, nullptr, gc.ptr(), nullptr};
    ASSERT_EQ(ns_step_backward(c, 1.f, &g), NS_OK) << ns_last_error(c);
    const std::vector<float> &grad = gc.fetch();
    for (int64_t i = 0; i < B; i++) {
        double kept = 0;
        for (int64_t k = 0; k < d; k++) {
            EXPECT_EQ(grad[(size_t)((i * C + 0) * d + k)], 0.f) << "removed slot got a gradient, query " << i;
            kept += std::fabs(grad[(size_t)((i * C + 2) * d + k)]);
        }
        EXPECT_GT(kept, 0.0) << "the kept slot got no gradient, query " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(Backends, Step, NS_BACKENDS, BackendName());
