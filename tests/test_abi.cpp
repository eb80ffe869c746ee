// ABI evolution of the options structs, as NCCL's config structs: a struct_size smaller than
// this header's (a caller built against an older negsamp.h, at least sizeof(size_t)) is
// accepted and the fields past it take their defaults; a larger one (a newer header) is refused
// with NS_ERR_UNSUPPORTED naming the struct; below sizeof(size_t) is "not initialised".
#include <cstddef>

#include "ns_test_util.h"
#include "step_options.h"

using namespace nstest;

namespace {

bool has(const char *msg, const char *needle) { return std::string(msg).find(needle) != std::string::npos; }

TEST(Abi, ContextOptionsOfAnOlderHeaderTakeDefaults) {
    ns_context_options o = NS_CONTEXT_OPTIONS_INIT;
    o.backend = NS_BACKEND_CPU;
    o.device = -5;  // past struct_size: must be ignored (the default 0 is used)
    o.threads = -1;
    o.struct_size = offsetof(ns_context_options, device);
    ns_context *ctx = nullptr;
    ASSERT_EQ(ns_context_create(&ctx, &o), NS_OK) << ns_last_error(nullptr);
    EXPECT_EQ(ns_context_backend(ctx), NS_BACKEND_CPU);
    ns_context_destroy(ctx);
    o.struct_size = sizeof(ns_context_options) + 8;
    EXPECT_EQ(ns_context_create(&ctx, &o), NS_ERR_UNSUPPORTED);
    EXPECT_TRUE(has(ns_last_error(nullptr), "larger than sizeof(ns_context_options)")) << ns_last_error(nullptr);
    o.struct_size = sizeof(size_t) - 1;
    EXPECT_EQ(ns_context_create(&ctx, &o), NS_ERR_INVALID_ARGUMENT);
    EXPECT_TRUE(has(ns_last_error(nullptr), "not initialised")) << ns_last_error(nullptr);
}

TEST(Abi, LossOptionsOfAnOlderHeaderGiveTheDefaultLoss) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    const int64_t B = 6, d = 5;
    std::vector<float> q = random_floats(B * d, 3), p = random_floats(B * d, 4);
    ns_infonce_inputs in;
    std::memset(&in, 0, sizeof in);
    in.query = ns_matrix{q.data(), NS_F32, B, d, 0};
    in.passage = ns_matrix{p.data(), NS_F32, B, d, 0};
    in.hard = ns_matrix{nullptr, NS_F32, 0, d, 0};
    in.extra = ns_matrix{nullptr, NS_F32, 0, d, 0};
    std::vector<float> saved(B * NS_INFONCE_SAVED_PER_QUERY);
    ns_loss_options full = NS_LOSS_OPTIONS_INIT;
    full.temperature = 0.3f;
    float want = 0, got = 0;
    ASSERT_EQ(ns_infonce_forward(c, &in, &full, &want, nullptr, saved.data()), NS_OK);
    ns_loss_options old = full;
    old.symmetric = 1;  // past struct_size: ignored
    old.tau_plus = 0.5f;
    old.struct_size = offsetof(ns_loss_options, symmetric);
    ASSERT_EQ(ns_infonce_forward(c, &in, &old, &got, nullptr, saved.data()), NS_OK) << ns_last_error(c);
    EXPECT_EQ(got, want);
    old.struct_size = sizeof(ns_loss_options) + 4;
    EXPECT_EQ(ns_infonce_forward(c, &in, &old, &got, nullptr, saved.data()), NS_ERR_UNSUPPORTED);
    EXPECT_TRUE(has(ns_last_error(c), "sizeof(ns_loss_options)")) << ns_last_error(c);
}

TEST(Abi, MineFilterSamplerOptionsOfAnOlderHeader) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    std::vector<float> q = {1, 0, 0, 1}, corpus = {1, 0, 0, 1, 1, 1};
    std::vector<int64_t> idx(4);
    std::vector<float> sc(4);
    ns_mine_options mo = NS_MINE_OPTIONS_INIT;
    mo.flags = 7;  // past struct_size (invalid if read): ignored
    mo.struct_size = offsetof(ns_mine_options, flags);
    EXPECT_EQ(ns_mine_topk(c, ns_matrix{q.data(), NS_F32, 2, 2, 0}, ns_matrix{corpus.data(), NS_F32, 3, 2, 0},
                           2, &mo, idx.data(), sc.data()),
              NS_OK)
        << ns_last_error(c);
    mo.struct_size = sizeof(ns_mine_options) + 1;
    EXPECT_EQ(ns_mine_topk(c, ns_matrix{q.data(), NS_F32, 2, 2, 0}, ns_matrix{corpus.data(), NS_F32, 3, 2, 0},
                           2, &mo, idx.data(), sc.data()),
              NS_ERR_UNSUPPORTED);

    std::vector<int64_t> id = {1, 2, 3, 4};
    std::vector<float> s = {0.4f, 0.3f, 0.2f, 0.1f};
    ns_candidates cand;
    std::memset(&cand, 0, sizeof cand);
    cand.queries = 1, cand.per_query = 4, cand.id = id.data(), cand.score = s.data();
    std::vector<uint8_t> keep(4);
    ns_filter_options fo = NS_FILTER_OPTIONS_INIT;
    fo.rules = 0;
    fo.struct_size = offsetof(ns_filter_options, max_score);
    EXPECT_EQ(ns_filter(c, &cand, &fo, keep.data(), nullptr), NS_OK) << ns_last_error(c);
    fo.struct_size = sizeof(ns_filter_options) * 2;
    EXPECT_EQ(ns_filter(c, &cand, &fo, keep.data(), nullptr), NS_ERR_UNSUPPORTED);

    ns_sampler_options so = NS_SAMPLER_OPTIONS_INIT;
    so.strategy = NS_SAMPLE_TOP;
    so.temperature = -1;  // past struct_size: ignored
    so.struct_size = offsetof(ns_sampler_options, simans_a);
    std::vector<int64_t> out(2), count(1);
    EXPECT_EQ(ns_sample(c, &cand, nullptr, &so, 2, out.data(), nullptr, count.data()), NS_OK) << ns_last_error(c);
    EXPECT_EQ(out[0], 1);
    EXPECT_EQ(out[1], 2);
    so.struct_size = sizeof(ns_sampler_options) + 8;
    EXPECT_EQ(ns_sample(c, &cand, nullptr, &so, 2, out.data(), nullptr, count.data()), NS_ERR_UNSUPPORTED);
}

TEST(Abi, StepOptionsOfAnOlderHeaderAndNullSubOptions) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    const int64_t B = 4, d = 3;
    std::vector<float> q(B * d), p(B * d);
    for (size_t k = 0; k < q.size(); k++) q[k] = (float)std::sin(0.7 * (double)k), p[k] = (float)std::cos(0.3 * (double)k);
    ns_batch b;
    std::memset(&b, 0, sizeof b);
    b.query = ns_matrix{q.data(), NS_F32, B, d, 0};
    b.positive = ns_matrix{p.data(), NS_F32, B, d, 0};
    b.candidate = ns_matrix{nullptr, NS_F32, 0, d, 0};
    ns_step_result r;
    ns_step_options o = NS_STEP_OPTIONS_INIT;  // filter, sampler, loss NULL: the defaults
    ASSERT_EQ(ns_step_forward(c, &b, &o, &r), NS_OK) << ns_last_error(c);
    const float want = r.loss;
    o.enqueue = 1;  // past struct_size: ignored
    o.struct_size = offsetof(ns_step_options, queue);
    ASSERT_EQ(ns_step_forward(c, &b, &o, &r), NS_OK) << ns_last_error(c);
    EXPECT_EQ(r.loss, want);
    StepOptions so;
    so.loss.struct_size = sizeof(ns_loss_options) + 4;
    EXPECT_EQ(ns_step_forward(c, &b, so.get(), &r), NS_ERR_UNSUPPORTED);
    EXPECT_TRUE(has(ns_last_error(c), "options->loss->struct_size")) << ns_last_error(c);
}

}  // namespace
