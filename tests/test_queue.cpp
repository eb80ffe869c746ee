// The queue: a fixed-capacity FIFO ring of rows (the first push's dtype) and ids, checked against a reference ring
// and a reference FIFO (the newest `capacity` rows pushed).
#include "ns_test_util.h"

#include <algorithm>
#include <deque>
#include <map>

using namespace nstest;

namespace {

struct Row {
    std::vector<float> v;
    int64_t id;
};

// Reference: the ring as documented (the next row goes to the slot after the newest, wrapping).
struct RefRing {
    int64_t cap, dim, next = 0, size = 0;
    std::vector<Row> slot;
    std::deque<Row> fifo;  // the newest cap rows, oldest first
    RefRing(int64_t c, int64_t d) : cap(c), dim(d), slot((size_t)c) {}
    void push(const Row &r) {
        slot[(size_t)next] = r;
        next = (next + 1) % cap;
        size = std::min(size + 1, cap);
        fifo.push_back(r);
        if ((int64_t)fifo.size() > cap) fifo.pop_front();
    }
};

// Reads the queue's view back to host rows (device copies on CUDA).
std::vector<Row> view_rows(const Ctx &c, ns_queue *q, int64_t dim) {
    ns_matrix m{};
    const int64_t *ids = nullptr;
    EXPECT_EQ(ns_queue_view(c, q, &m, &ids), NS_OK) << ns_last_error(c);
    EXPECT_EQ(m.dtype, NS_F32);
    EXPECT_EQ(m.cols, dim);
    EXPECT_EQ(m.rows, ns_queue_size(q));
    int64_t ld = m.ld ? m.ld : m.cols;
    std::vector<float> data((size_t)(m.rows * ld));
    std::vector<int64_t> id((size_t)m.rows);
    if (m.rows) {
#ifdef NS_HAVE_CUDA
        if (c.cuda()) {
            cudaMemcpy(data.data(), m.data, data.size() * 4, cudaMemcpyDeviceToHost);
            cudaMemcpy(id.data(), ids, id.size() * 8, cudaMemcpyDeviceToHost);
        } else
#endif
        {
            std::memcpy(data.data(), m.data, data.size() * 4);
            std::memcpy(id.data(), ids, id.size() * 8);
        }
    }
    std::vector<Row> out;
    for (int64_t r = 0; r < m.rows; r++)
        out.push_back({std::vector<float>(data.begin() + r * ld, data.begin() + r * ld + dim), id[r]});
    return out;
}

// Pushes n random rows (ids from next_id, or none) through ns_queue_push, and into the reference.
void push_random(const Ctx &c, ns_queue *q, RefRing &ref, int64_t n, uint64_t seed,
                 int64_t &next_id, bool with_ids, int64_t pad = 0) {
    const int64_t dim = ref.dim, ld = dim + pad;
    auto v = random_floats((size_t)(std::max<int64_t>(n, 1) * ld), seed);
    std::vector<int64_t> ids((size_t)std::max<int64_t>(n, 1));
    for (int64_t r = 0; r < n; r++) ids[r] = next_id++;
    Buf<float> rows(c, v);
    Buf<int64_t> idb(c, ids);
    ns_matrix m = f32_matrix(rows.ptr(), n, dim, pad ? ld : 0);
    ASSERT_EQ(ns_queue_push(c, q, m, with_ids ? idb.ptr() : nullptr), NS_OK) << ns_last_error(c);
    for (int64_t r = 0; r < n; r++)
        ref.push({std::vector<float>(v.begin() + r * ld, v.begin() + r * ld + dim),
                  with_ids ? ids[r] : -1});
}

void expect_matches(const std::vector<Row> &got, const RefRing &ref) {
    ASSERT_EQ((int64_t)got.size(), ref.size);
    for (int64_t s = 0; s < ref.size; s++) {
        EXPECT_EQ(got[s].id, ref.slot[s].id) << "slot " << s;
        EXPECT_EQ(got[s].v, ref.slot[s].v) << "slot " << s;
    }
    // Whatever the storage order, the content is the newest capacity rows pushed.
    std::vector<std::pair<std::vector<float>, int64_t>> a, b;
    for (auto &r : got) a.push_back({r.v, r.id});
    for (auto &r : ref.fifo) b.push_back({r.v, r.id});
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    EXPECT_TRUE(a == b) << "view does not hold the newest rows";
}

}  // namespace

class Queue : public ::testing::TestWithParam<ns_backend> {};

TEST_P(Queue, FifoAgainstReferenceWithWraparound) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    for (int64_t cap : {1, 5, 16}) {
        for (int64_t dim : {1, 7}) {
            ns_queue *q = nullptr;
            ASSERT_EQ(ns_queue_create(c, cap, dim, &q), NS_OK) << ns_last_error(c);
            EXPECT_EQ(ns_queue_size(q), 0);
            EXPECT_EQ(view_rows(c, q, dim).size(), 0u);
            RefRing ref(cap, dim);
            int64_t next_id = 100;
            // Sizes under, at and over capacity, an empty push, and ld > cols.
            const int64_t pushes[] = {1, 3, 0, 2, 7, cap, 2 * cap + 3, 1, cap - 1, 4};
            uint64_t seed = 1;
            for (int64_t n : pushes) {
                seed++;
                push_random(c, q, ref, n, seed, next_id, seed % 3 != 0, seed % 2 ? 0 : 2);
                EXPECT_EQ(ns_queue_size(q), ref.size);
                expect_matches(view_rows(c, q, dim), ref);
            }
            ns_queue_destroy(q);
        }
    }
}

TEST_P(Queue, PushLargerThanCapacityKeepsTheNewest) {
    Ctx c(GetParam(), 1);
    NS_REQUIRE_BACKEND(c);
    ns_queue *q = nullptr;
    ASSERT_EQ(ns_queue_create(c, 4, 3, &q), NS_OK);
    RefRing ref(4, 3);
    int64_t id = 0;
    push_random(c, q, ref, 2, 11, id, true);
    push_random(c, q, ref, 10, 12, id, true);  // ids 2..11: only 8..11 survive
    auto rows = view_rows(c, q, 3);
    expect_matches(rows, ref);
    std::vector<int64_t> ids;
    for (auto &r : rows) ids.push_back(r.id);
    std::sort(ids.begin(), ids.end());
    EXPECT_EQ(ids, (std::vector<int64_t>{8, 9, 10, 11}));
    ns_queue_destroy(q);
}

// The ring keeps the first push's dtype; later pushes in another dtype are converted to it,
// round to nearest even, on both backends (issue 11 items 1–2: a bf16 step keeps a bf16 queue,
// so the loss sees one dtype; CUDA used to refuse any non-f32 push).
TEST_P(Queue, RowsKeepTheFirstPushsDtype) {
    Ctx c(GetParam(), 1);
    NS_REQUIRE_BACKEND(c);
    auto view16 = [&](ns_queue *q, ns_dtype want, std::vector<uint16_t> &bits, std::vector<int64_t> &ids) {
        ns_matrix v{};
        const int64_t *vid = nullptr;
        ASSERT_EQ(ns_queue_view(c, q, &v, &vid), NS_OK) << ns_last_error(c);
        ASSERT_EQ(v.dtype, want);
        bits.resize((size_t)(v.rows * v.cols));
        ids.resize((size_t)v.rows);
#ifdef NS_HAVE_CUDA
        if (c.cuda()) {
            ASSERT_EQ(cudaMemcpy(bits.data(), v.data, bits.size() * 2, cudaMemcpyDeviceToHost), cudaSuccess);
            ASSERT_EQ(cudaMemcpy(ids.data(), vid, ids.size() * 8, cudaMemcpyDeviceToHost), cudaSuccess);
            return;
        }
#endif
        std::memcpy(bits.data(), v.data, bits.size() * 2);
        std::memcpy(ids.data(), vid, ids.size() * 8);
    };
    // 1.5, -2, 0.25, 3 in f16 and bf16.
    Buf<uint16_t> f16(c, std::vector<uint16_t>{0x3e00, 0xc000, 0x3400, 0x4200});
    Buf<uint16_t> bf16(c, std::vector<uint16_t>{0x3fc0, 0xc000, 0x3e80, 0x4040});
    Buf<int64_t> ids(c, std::vector<int64_t>{7, 8});
    ns_queue *q = nullptr;
    ASSERT_EQ(ns_queue_create(c, 3, 2, &q), NS_OK);
    ns_matrix m{f16.ptr(), NS_F16, 2, 2, 0};
    ASSERT_EQ(ns_queue_push(c, q, m, nullptr), NS_OK) << ns_last_error(c);
    m = ns_matrix{bf16.ptr(), NS_BF16, 2, 2, 0};
    ASSERT_EQ(ns_queue_push(c, q, m, ids.ptr()), NS_OK) << ns_last_error(c);
    std::vector<uint16_t> bits;
    std::vector<int64_t> vid;
    view16(q, NS_F16, bits, vid);
    // Slot 0 was overwritten by the 4th row (bf16 row 1), slots 1, 2 hold f16 row 1, bf16 row 0,
    // all as f16 bits now.
    EXPECT_EQ(bits, (std::vector<uint16_t>{0x3400, 0x4200, 0x3400, 0x4200, 0x3e00, 0xc000}));
    EXPECT_EQ(vid, (std::vector<int64_t>{8, -1, 7}));
    ns_queue_destroy(q);

    // A bf16 queue fed f32 rows: round to nearest, ties to even.
    ASSERT_EQ(ns_queue_create(c, 4, 2, &q), NS_OK);
    ASSERT_EQ(ns_queue_push(c, q, m, ids.ptr()), NS_OK) << ns_last_error(c);
    Buf<float> f32(c, std::vector<float>{1.00390625f, 1.01171875f, -3.f, 0.1f});
    ASSERT_EQ(ns_queue_push(c, q, f32_matrix(f32.ptr(), 2, 2), nullptr), NS_OK) << ns_last_error(c);
    view16(q, NS_BF16, bits, vid);
    EXPECT_EQ(bits, (std::vector<uint16_t>{0x3fc0, 0xc000, 0x3e80, 0x4040, 0x3f80, 0x3f82, 0xc040, 0x3dcd}));
    EXPECT_EQ(vid, (std::vector<int64_t>{7, 8, -1, -1}));
    ns_queue_destroy(q);
}

TEST(QueueCpu, FeedsTheLossAsExtraRows) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK);
    const int64_t B = 4, d = 5, cap = 6;
    auto qv = random_floats(B * d, 1), pv = random_floats(B * d, 2), ev = random_floats(9 * d, 3);
    ns_queue *q = nullptr;
    ASSERT_EQ(ns_queue_create(c, cap, d, &q), NS_OK);
    ASSERT_EQ(ns_queue_push(c, q, f32_matrix(ev.data(), 9, d), nullptr), NS_OK);
    ns_infonce_inputs in{};
    in.query = f32_matrix(qv.data(), B, d);
    in.passage = f32_matrix(pv.data(), B, d);
    ASSERT_EQ(ns_queue_view(c, q, &in.extra, nullptr), NS_OK);
    float a = 0, b = 0, saved[B * NS_INFONCE_SAVED_PER_QUERY];
    ASSERT_EQ(ns_infonce_forward(c, &in, nullptr, &a, nullptr, saved), NS_OK) << ns_last_error(c);
    in.extra = f32_matrix(ev.data() + 3 * d, 6, d);  // the newest six rows, directly
    ASSERT_EQ(ns_infonce_forward(c, &in, nullptr, &b, nullptr, saved), NS_OK);
    EXPECT_NEAR(a, b, 1e-5 * std::fabs(b));
    ns_queue_destroy(q);
}

TEST(QueueCpu, RejectsBadInputAndLeavesTheQueueUnchanged) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK);
    ns_queue *q = reinterpret_cast<ns_queue *>(0x1);
    EXPECT_EQ(ns_queue_create(c, 0, 4, &q), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("ns_queue_create: capacity (0) must be at least 1"),
              std::string::npos) << ns_last_error(c);
    EXPECT_EQ(q, reinterpret_cast<ns_queue *>(0x1));
    EXPECT_EQ(ns_queue_create(c, 3, -2, &q), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("dim (-2)"), std::string::npos);
    EXPECT_EQ(ns_queue_create(c, 3, 4, nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("queue is NULL"), std::string::npos);
    EXPECT_EQ(ns_queue_create(nullptr, 3, 4, &q), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(ns_queue_destroy(nullptr), NS_OK);
    EXPECT_EQ(ns_queue_size(nullptr), 0);

    ASSERT_EQ(ns_queue_create(c, 3, 4, &q), NS_OK);
    RefRing ref(3, 4);
    int64_t id = 0;
    push_random(c, q, ref, 2, 5, id, true);
    auto rows = random_floats(8, 9), wide = random_floats(10, 10);
    rows[6] = NAN;
    EXPECT_EQ(ns_queue_push(c, q, f32_matrix(rows.data(), 2, 4), nullptr), NS_ERR_NONFINITE);
    EXPECT_NE(std::string(ns_last_error(c)).find("ns_queue_push: rows[1][2] is not finite"),
              std::string::npos) << ns_last_error(c);
    EXPECT_EQ(ns_queue_push(c, q, f32_matrix(wide.data(), 2, 5), nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("rows has 5 columns but the queue holds rows of dim 4"),
              std::string::npos) << ns_last_error(c);
    EXPECT_EQ(ns_queue_push(c, q, f32_matrix(nullptr, 2, 4), nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("rows.data is NULL"), std::string::npos);
    ns_matrix bad = f32_matrix(wide.data(), 2, 4, 3);
    EXPECT_EQ(ns_queue_push(c, q, bad, nullptr), NS_ERR_INVALID_ARGUMENT);
    bad = f32_matrix(wide.data(), 2, 4);
    bad.dtype = (ns_dtype)5;
    EXPECT_EQ(ns_queue_push(c, q, bad, nullptr), NS_ERR_UNSUPPORTED);
    EXPECT_EQ(ns_queue_push(c, nullptr, f32_matrix(wide.data(), 2, 4), nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("queue is NULL"), std::string::npos);
    EXPECT_EQ(ns_queue_push(nullptr, q, f32_matrix(wide.data(), 2, 4), nullptr), NS_ERR_INVALID_ARGUMENT);
    // Unchanged after every failure.
    EXPECT_EQ(ns_queue_size(q), 2);
    expect_matches(view_rows(c, q, 4), ref);

    ns_matrix v{};
    EXPECT_EQ(ns_queue_view(c, q, nullptr, nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("ns_queue_view: rows is NULL"), std::string::npos);
    EXPECT_EQ(ns_queue_view(c, nullptr, &v, nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(ns_queue_view(nullptr, q, &v, nullptr), NS_ERR_INVALID_ARGUMENT);
    ns_queue_destroy(q);
}

INSTANTIATE_TEST_SUITE_P(B, Queue, NS_BACKENDS, BackendName());
