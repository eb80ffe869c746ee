// ns_kmeans: against a plain Lloyd written here in float64 (same init → same labels, centroids
// and inertia), every returned label the exact nearest centroid (brute force in double),
// recovery of separated clusters, the k-means++ pick law (chi-square), the balance bound,
// determinism across thread counts, a memory-mapped f16 .npy, CPU == CUDA bit for bit, bad input.
#include "ns_test_util.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

using namespace nstest;

extern "C" {  // the library's conversions (src/ns_internal.h), round to nearest even
uint16_t ns_f32_to_bf16(float f);
uint16_t ns_f32_to_f16(float f);
float ns_f16_to_f32(uint16_t h);
}

namespace {

struct KmRun {
    ns_status status = NS_OK;
    std::string error;
    std::vector<int64_t> labels;
    std::vector<float> centroids;
    std::vector<double> inertia;
    int64_t iterations = -7;
};

ns_kmeans_options opts(uint64_t seed = 5, int spherical = 0, int64_t iters = 25) {
    ns_kmeans_options o = NS_KMEANS_OPTIONS_INIT;
    o.seed = seed;
    o.spherical = spherical;
    o.max_iterations = iters;
    return o;
}

// x on the context's backend (host_x: host memory even on CUDA); init_centroids likewise.
KmRun kmeans(const Ctx &c, ns_matrix x, int64_t k, ns_kmeans_options o,
           const std::vector<float> *init = nullptr) {
    const int64_t n = std::max<int64_t>(x.rows, 1), d = std::max<int64_t>(x.cols, 1);
    Buf<int64_t> labels(c, (size_t)n, (int64_t)77);
    Buf<float> cent(c, (size_t)(std::max<int64_t>(k, 1) * d), 77.f);
    Buf<float> ic(c, init ? *init : std::vector<float>(1, 0.f));
    if (init) o.init_centroids = ic.ptr();
    KmRun r;
    r.inertia.assign((size_t)std::max<int64_t>(o.max_iterations + 1, 1), 77.0);
    r.status = ns_kmeans(c, x, k, &o, labels.ptr(), cent.ptr(), r.inertia.data(), &r.iterations);
    if (r.status != NS_OK) r.error = ns_last_error(c);
    r.labels = labels.fetch();
    r.centroids = cent.fetch();
    return r;
}

KmRun kmeans_f32(const Ctx &c, const std::vector<float> &x, int64_t n, int64_t d, int64_t k,
               ns_kmeans_options o, const std::vector<float> *init = nullptr) {
    Buf<float> xb(c, x);
    return kmeans(c, f32_matrix(xb.ptr(), n, d), k, o, init);
}

// Exact cost of row x under centroid c (the contract's definitions), in double.
double cost(const float *x, const float *c, int64_t d, bool spherical) {
    double dot = 0, xx = 0, cc = 0;
    for (int64_t t = 0; t < d; t++)
        dot += (double)x[t] * c[t], xx += (double)x[t] * x[t], cc += (double)c[t] * c[t];
    return spherical ? 1.0 - dot / std::sqrt(xx) : std::max(0.0, xx - 2 * dot + cc);
}

// Every label is the nearest centroid (brute force in double; ties: lower index).
void expect_nearest(const std::vector<float> &x, int64_t n, int64_t d, const KmRun &r, int64_t k,
                    bool spherical) {
    int64_t wrong = 0;
    double inertia = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x.data() + i * d;
        int64_t best = 0;
        double bs = -INFINITY;
        for (int64_t j = 0; j < k; j++) {
            const float *c = r.centroids.data() + j * d;
            double dot = 0, cc = 0;
            for (int64_t t = 0; t < d; t++) dot += (double)xi[t] * c[t], cc += (double)c[t] * c[t];
            const double g = spherical ? dot : dot - 0.5 * cc;
            if (g > bs) bs = g, best = j;
        }
        wrong += best != r.labels[i];
        inertia += cost(xi, r.centroids.data() + r.labels[i] * d, d, spherical);
    }
    EXPECT_EQ(wrong, 0);
    EXPECT_TRUE(close(r.inertia[r.iterations], inertia, 1e-9, 1e-9))
        << r.inertia[r.iterations] << " vs " << inertia;
}

// Plain Lloyd in float64: assign (ties to the lower index), mean (renormalised when spherical).
struct Ref {
    std::vector<int64_t> labels;
    std::vector<double> c, inertia;
};
Ref lloyd(const std::vector<float> &xf, int64_t n, int64_t d, int64_t k, std::vector<double> c,
          bool spherical, int64_t iters) {
    std::vector<double> x(xf.begin(), xf.end());
    auto unit = [&](double *v) {
        double s = 0;
        for (int64_t t = 0; t < d; t++) s += v[t] * v[t];
        for (int64_t t = 0; t < d; t++) v[t] /= std::sqrt(s);
    };
    if (spherical) {
        for (int64_t i = 0; i < n; i++) unit(&x[i * d]);
        for (int64_t j = 0; j < k; j++) unit(&c[j * d]);
    }
    Ref r;
    auto assign = [&]() {
        double total = 0;
        r.labels.assign(n, 0);
        for (int64_t i = 0; i < n; i++) {
            double best = INFINITY;
            for (int64_t j = 0; j < k; j++) {
                double v = 0;
                for (int64_t t = 0; t < d; t++) {
                    const double a = x[i * d + t], b = c[j * d + t];
                    v += spherical ? -a * b : (a - b) * (a - b);
                }
                if (spherical) v += 1;
                if (v < best) best = v, r.labels[i] = j;
            }
            total += best;
        }
        r.inertia.push_back(total);
    };
    assign();
    for (int64_t it = 0; it < iters; it++) {
        std::vector<double> s(k * d, 0.0);
        std::vector<int64_t> cnt(k, 0);
        for (int64_t i = 0; i < n; i++) {
            cnt[r.labels[i]]++;
            for (int64_t t = 0; t < d; t++) s[r.labels[i] * d + t] += x[i * d + t];
        }
        for (int64_t j = 0; j < k; j++) {
            EXPECT_GT(cnt[j], 0) << "the reference has no rule for empty clusters";
            for (int64_t t = 0; t < d; t++) c[j * d + t] = s[j * d + t] / cnt[j];
            if (spherical) unit(&c[j * d]);
        }
        const std::vector<int64_t> before = r.labels;
        assign();
        if (r.labels == before) break;
    }
    r.c = c;
    return r;
}

// Gaussian blobs around k centres far apart; truth[i] is the blob of row i.
std::vector<float> blobs(int64_t n, int64_t d, int64_t k, uint64_t seed, std::vector<int> *truth,
                         float spread = 0.05f, const std::vector<double> &share = {}) {
    std::mt19937_64 g(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> centre(k * d);
    for (auto &v : centre) v = nd(g);
    for (int64_t j = 0; j < k; j++) {  // unit centres, pushed apart
        double s = 0;
        for (int64_t t = 0; t < d; t++) s += centre[j * d + t] * centre[j * d + t];
        for (int64_t t = 0; t < d; t++) centre[j * d + t] /= (float)std::sqrt(s);
    }
    const std::vector<double> w = share.empty() ? std::vector<double>(k, 1.0) : share;
    std::discrete_distribution<int> pick(w.begin(), w.end());
    std::vector<float> x(n * d);
    truth->assign(n, 0);
    for (int64_t i = 0; i < n; i++) {
        const int b = pick(g);
        (*truth)[i] = b;
        for (int64_t t = 0; t < d; t++) x[i * d + t] = centre[b * d + t] + spread * nd(g);
    }
    return x;
}

class Kmeans : public ::testing::TestWithParam<ns_backend> {};

TEST_P(Kmeans, MatchesPlainLloydInDoubleFromTheSameInit) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t n = 400, d = 6, k = 5;
    for (int spherical = 0; spherical < 2; spherical++) {
        std::vector<int> truth;
        const std::vector<float> x = blobs(n, d, k, 11 + spherical, &truth, 0.6f);
        std::vector<float> init(x.begin(), x.begin() + k * d);  // rows 0..k-1
        ns_kmeans_options o = opts(1, spherical, 30);
        o.tolerance = 0;
        KmRun r = kmeans_f32(c, x, n, d, k, o, &init);
        ASSERT_EQ(r.status, NS_OK) << r.error;
        Ref ref = lloyd(x, n, d, k, std::vector<double>(init.begin(), init.end()), spherical, 30);
        EXPECT_EQ(r.labels, ref.labels) << "spherical " << spherical;
        for (int64_t e = 0; e < k * d; e++)
            EXPECT_NEAR(r.centroids[e], ref.c[e], 2e-6) << e;
        ASSERT_EQ(r.iterations + 1, (int64_t)ref.inertia.size());
        for (int64_t t = 0; t <= r.iterations; t++)
            EXPECT_TRUE(close(r.inertia[t], ref.inertia[t], 1e-9, 1e-5)) << t;
        for (size_t t = r.iterations + 1; t < r.inertia.size(); t++)
            EXPECT_TRUE(std::isnan(r.inertia[t]));
        for (size_t t = 1; t <= (size_t)r.iterations; t++)
            EXPECT_LE(r.inertia[t], r.inertia[t - 1] * (1 + 1e-12));
        expect_nearest(x, n, d, r, k, spherical);
    }
}

TEST_P(Kmeans, EveryLabelIsTheExactNearestCentroidOnRandomData) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t n = 700, d = 33, k = 24;
    const std::vector<float> x = random_floats(n * d, 3);
    for (int spherical = 0; spherical < 2; spherical++)
        for (ns_kmeans_init init : {NS_KMEANS_PLUSPLUS, NS_KMEANS_RANDOM}) {
            ns_kmeans_options o = opts(9, spherical, 6);
            o.init = init;
            KmRun r = kmeans_f32(c, x, n, d, k, o);
            ASSERT_EQ(r.status, NS_OK) << r.error;
            EXPECT_GE(r.iterations, 1);
            for (int64_t l : r.labels) ASSERT_TRUE(l >= 0 && l < k);
            expect_nearest(x, n, d, r, k, spherical);
        }
}

TEST_P(Kmeans, RecoversSeparatedClusters) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t n = 1200, d = 16, k = 6;
    for (int spherical = 0; spherical < 2; spherical++) {
        std::vector<int> truth;
        const std::vector<float> x = blobs(n, d, k, 21, &truth, 0.03f);
        KmRun r = kmeans_f32(c, x, n, d, k, opts(4, spherical));
        ASSERT_EQ(r.status, NS_OK) << r.error;
        std::map<int, std::set<int64_t>> seen;  // true blob → labels given to its rows
        std::set<int64_t> used;
        for (int64_t i = 0; i < n; i++) seen[truth[i]].insert(r.labels[i]);
        for (auto &s : seen) {
            EXPECT_EQ(s.second.size(), 1u) << "blob " << s.first << " split";
            used.insert(*s.second.begin());
        }
        EXPECT_EQ(used.size(), (size_t)k) << "two blobs merged";
    }
}

TEST_P(Kmeans, BalancedClustersStayWithinTheBound) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t n = 1000, d = 8, k = 5;
    std::vector<int> truth;
    const std::vector<float> x = blobs(n, d, k, 31, &truth, 0.2f, {0.6, 0.1, 0.1, 0.1, 0.1});
    for (double slack : {0.0, 0.1, 0.5}) {
        ns_kmeans_options o = opts(2, 0, 10);
        o.balance = slack;
        KmRun r = kmeans_f32(c, x, n, d, k, o);
        ASSERT_EQ(r.status, NS_OK) << r.error;
        const int64_t cap = (int64_t)std::ceil((double)n / k * (1 + slack));
        std::vector<int64_t> cnt(k, 0);
        double inertia = 0;
        for (int64_t i = 0; i < n; i++) {
            cnt[r.labels[i]]++;
            inertia += cost(&x[i * d], &r.centroids[r.labels[i] * d], d, false);
        }
        for (int64_t j = 0; j < k; j++) EXPECT_LE(cnt[j], cap) << "slack " << slack;
        EXPECT_TRUE(close(r.inertia[r.iterations], inertia, 1e-9, 1e-9));
    }
    KmRun unbal = kmeans_f32(c, x, n, d, k, opts(2, 0, 10));
    std::vector<int64_t> cnt(k, 0);
    for (int64_t l : unbal.labels) cnt[l]++;
    EXPECT_GT(*std::max_element(cnt.begin(), cnt.end()), (int64_t)std::ceil(n / (double)k * 1.5))
        << "the data should need the balancing";
}

TEST_P(Kmeans, SameBitsAtAnyThreadCountAndForEveryDtype) {
    Ctx c1(GetParam(), 1), c2(GetParam(), 2);
    NS_REQUIRE_BACKEND(c1);
    const int64_t n = 2500, d = 20, k = 40;
    std::vector<float> x = random_floats(n * d, 8);
    std::vector<uint16_t> xb(n * d);  // bf16 of x, and x rounded to it
    for (int64_t e = 0; e < n * d; e++) {
        xb[e] = ns_f32_to_bf16(x[e]);
        uint32_t u = (uint32_t)xb[e] << 16;
        std::memcpy(&x[e], &u, 4);
    }
    for (int spherical = 0; spherical < 2; spherical++) {
        ns_kmeans_options o = opts(17, spherical, 5);
        o.balance = spherical ? 0.05 : -1;
        KmRun a = kmeans_f32(c1, x, n, d, k, o), b = kmeans_f32(c2, x, n, d, k, o);
        ASSERT_EQ(a.status, NS_OK) << a.error;
        ASSERT_EQ(b.status, NS_OK) << b.error;
        EXPECT_EQ(a.labels, b.labels);
        EXPECT_EQ(0, std::memcmp(a.centroids.data(), b.centroids.data(), a.centroids.size() * 4));
        EXPECT_EQ(0, std::memcmp(a.inertia.data(), b.inertia.data(), a.inertia.size() * 8));
        EXPECT_EQ(a.iterations, b.iterations);
        Buf<uint16_t> xbb(c2, xb);
        ns_matrix m = f32_matrix(nullptr, n, d);
        m.data = xbb.ptr(), m.dtype = NS_BF16;
        KmRun h = kmeans(c2, m, k, o);
        ASSERT_EQ(h.status, NS_OK) << h.error;
        EXPECT_EQ(a.labels, h.labels);
        EXPECT_EQ(0, std::memcmp(a.centroids.data(), h.centroids.data(), a.centroids.size() * 4));
        KmRun s = kmeans_f32(c2, x, n, d, k, opts(18, spherical, 5));
        EXPECT_NE(a.centroids, s.centroids) << "another seed, another init";
    }
}

// A .npy image (v1 header) of an f16 matrix.
std::string npy_f16(const std::vector<uint16_t> &h, int64_t n, int64_t d) {
    std::string dict = "{'descr': '<f2', 'fortran_order': False, 'shape': (" + std::to_string(n) +
                       ", " + std::to_string(d) + "), }";
    dict += std::string((64 - (10 + dict.size() + 1) % 64) % 64, ' ') + "\n";
    std::string out = "\x93NUMPY";
    out += (char)1;
    out += (char)0;
    out += (char)(dict.size() & 0xff);
    out += (char)(dict.size() >> 8);
    return out + dict + std::string((const char *)h.data(), h.size() * 2);
}

TEST_P(Kmeans, StreamsAMemoryMappedF16Npy) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t n = 20000, d = 6, k = 7;  // more rows than one block: several blocks stream
    std::vector<int> truth;
    std::vector<float> x = blobs(n, d, k, 41, &truth, 0.3f);
    std::vector<uint16_t> h(n * d);
    for (int64_t e = 0; e < n * d; e++) {
        h[e] = ns_f32_to_f16(x[e]);
        x[e] = ns_f16_to_f32(h[e]);
    }
    char path[] = "/tmp/ns_kmeans_XXXXXX";
    const int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    const std::string bytes = npy_f16(h, n, d);
    ASSERT_EQ(write(fd, bytes.data(), bytes.size()), (ssize_t)bytes.size());
    close(fd);
    ns_npy_file *f = nullptr;
    ASSERT_EQ(ns_npy_open(path, &f), NS_OK) << ns_last_error(nullptr);
    const ns_kmeans_options o = opts(3, 0, 4);
    KmRun mapped = kmeans(c, ns_npy_matrix(f), k, o);  // host memory, also on CUDA
    KmRun plain = kmeans_f32(c, x, n, d, k, o);
    ns_npy_close(f);
    std::remove(path);
    ASSERT_EQ(mapped.status, NS_OK) << mapped.error;
    ASSERT_EQ(plain.status, NS_OK) << plain.error;
    EXPECT_EQ(mapped.labels, plain.labels);
    EXPECT_EQ(mapped.centroids, plain.centroids);
    EXPECT_EQ(mapped.inertia, plain.inertia);
}

TEST_P(Kmeans, ProgressCountsAndCancelLeavesOutputsUntouched) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t n = 300, d = 4, k = 3;
    const std::vector<float> x = random_floats(n * d, 5);
    struct P {
        int64_t calls = 0, last = 0, total = 0, stop_at = -1;
    } p;
    ns_kmeans_options o = opts(1, 0, 3);
    o.tolerance = 0;
    o.progress = [](int64_t done, int64_t total, void *u) {
        P *q = (P *)u;
        q->calls++, q->last = done, q->total = total;
        return q->stop_at == done ? 1 : 0;
    };
    o.progress_user = &p;
    KmRun r = kmeans_f32(c, x, n, d, k, o);
    ASSERT_EQ(r.status, NS_OK) << r.error;
    EXPECT_EQ(p.total, k + 3 + 1);
    EXPECT_EQ(p.last, k + 1 + r.iterations);
    p.stop_at = k + 2;
    KmRun cancelled = kmeans_f32(c, x, n, d, k, o);
    EXPECT_EQ(cancelled.status, NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(cancelled.error.find("cancelled"), std::string::npos) << cancelled.error;
    for (int64_t l : cancelled.labels) ASSERT_EQ(l, 77);
    for (float v : cancelled.centroids) ASSERT_EQ(v, 77.f);
    for (double v : cancelled.inertia) ASSERT_EQ(v, 77.0);
    EXPECT_EQ(cancelled.iterations, -7);
}

TEST_P(Kmeans, BadInputNamesTheArgumentAndLeavesOutputs) {
    Ctx c(GetParam());
    NS_REQUIRE_BACKEND(c);
    const int64_t n = 10, d = 3;
    std::vector<float> x = random_floats(n * d, 1);
    auto bad = [&](const std::vector<float> &xv, int64_t rows, int64_t cols, int64_t k,
                   ns_kmeans_options o, const char *needle, ns_status want,
                   const std::vector<float> *init = nullptr) {
        KmRun r = kmeans_f32(c, xv, rows, cols, k, o, init);
        EXPECT_EQ(r.status, want) << needle << ": " << r.error;
        EXPECT_NE(r.error.find(needle), std::string::npos) << r.error;
        for (int64_t l : r.labels) EXPECT_EQ(l, 77);
        for (float v : r.centroids) EXPECT_EQ(v, 77.f);
        for (double v : r.inertia) EXPECT_EQ(v, 77.0);
        EXPECT_EQ(r.iterations, -7);
    };
    const ns_status INV = NS_ERR_INVALID_ARGUMENT;
    bad(x, n, d, 0, opts(), "k (0) must be at least 1", INV);
    bad(x, n, d, 11, opts(), "k (11) is larger than the number of rows (x.rows = 10)", INV);
    bad(x, 0, d, 1, opts(), "x", INV);
    bad(x, n, 0, 1, opts(), "x", INV);
    std::vector<float> nan = x;
    nan[7 * d + 2] = NAN;
    bad(nan, n, d, 2, opts(), "x[7][2] (nan) is not finite", NS_ERR_NONFINITE);
    nan[7 * d + 2] = INFINITY;
    bad(nan, n, d, 2, opts(), "x[7][2] (inf)", NS_ERR_NONFINITE);
    std::vector<float> zero = x;
    for (int64_t t = 0; t < d; t++) zero[4 * d + t] = 0;
    bad(zero, n, d, 2, opts(1, 1), "x row 4 is zero", INV);
    ns_kmeans_options o = opts();
    o.spherical = 2;
    bad(x, n, d, 2, o, "options->spherical (2)", INV);
    o = opts(), o.init = (ns_kmeans_init)7;
    bad(x, n, d, 2, o, "options->init (7)", INV);
    o = opts(), o.max_iterations = -1;
    bad(x, n, d, 2, o, "options->max_iterations (-1)", INV);
    o = opts(), o.tolerance = NAN;
    bad(x, n, d, 2, o, "options->tolerance (nan)", INV);
    o = opts(), o.tolerance = -1;
    bad(x, n, d, 2, o, "options->tolerance (-1)", INV);
    o = opts(), o.balance = NAN;
    bad(x, n, d, 2, o, "options->balance (nan)", INV);
    o = opts(), o.struct_size = sizeof(o) + 8;
    bad(x, n, d, 2, o, "options", NS_ERR_UNSUPPORTED);
    std::vector<float> init(2 * d, 0.5f);
    init[d + 1] = NAN;
    bad(x, n, d, 2, opts(), "options->init_centroids[1][1] (nan)", NS_ERR_NONFINITE, &init);
    std::vector<float> zinit(2 * d, 0.f);
    bad(x, n, d, 2, opts(1, 1), "options->init_centroids row 0 is zero", INV, &zinit);
    // Null pointers, each named.
    Buf<float> xb(c, x);
    Buf<int64_t> lab(c, (size_t)n, (int64_t)0);
    Buf<float> cen(c, (size_t)(2 * d), 0.f);
    double in[26];
    int64_t it;
    const ns_matrix m = f32_matrix(xb.ptr(), n, d);
    EXPECT_EQ(ns_kmeans(nullptr, m, 2, nullptr, lab.ptr(), cen.ptr(), in, &it), INV);
    const struct {
        int which;
        const char *name;
    } nulls[] = {{0, "labels"}, {1, "centroids"}, {2, "inertia"}, {3, "iterations"}, {4, "x"}};
    for (auto &nl : nulls) {
        ns_matrix mm = m;
        if (nl.which == 4) mm.data = nullptr;
        EXPECT_EQ(ns_kmeans(c, mm, 2, nullptr, nl.which == 0 ? nullptr : lab.ptr(),
                            nl.which == 1 ? nullptr : cen.ptr(), nl.which == 2 ? nullptr : in,
                            nl.which == 3 ? nullptr : &it),
                  INV);
        EXPECT_NE(std::string(ns_last_error(c)).find(nl.name), std::string::npos)
            << ns_last_error(c);
    }
}

INSTANTIATE_TEST_SUITE_P(B, Kmeans, NS_BACKENDS, BackendName());

// The second k-means++ pick: row r with probability cost_f(r) / Σ cost_f given the first pick f
// (uniform). Chi-square over the (first, second) pairs of many seeds; the centroids returned
// with max_iterations = 0 are the picked rows themselves.
TEST(KmeansInit, PlusPlusPicksFollowTheCost) {
    Ctx c(NS_BACKEND_CPU);
    NS_REQUIRE_BACKEND(c);
    const int64_t n = 6, d = 2;
    const std::vector<float> x = {0, 0, 1, 0, 0, 2, 3, 3, -1, 0.5f, 2, -2};
    std::map<std::pair<int, int>, int64_t> seen;
    const int seeds = 6000;
    for (int s = 0; s < seeds; s++) {
        ns_kmeans_options o = opts((uint64_t)s * 7919 + 1, 0, 0);
        KmRun r = kmeans_f32(c, x, n, d, 2, o);
        ASSERT_EQ(r.status, NS_OK) << r.error;
        int pick[2] = {-1, -1};
        for (int j = 0; j < 2; j++)
            for (int64_t i = 0; i < n; i++)
                if (r.centroids[j * d] == x[i * d] && r.centroids[j * d + 1] == x[i * d + 1])
                    pick[j] = (int)i;
        ASSERT_GE(pick[0], 0);
        ASSERT_GE(pick[1], 0);
        seen[{pick[0], pick[1]}]++;
    }
    double chi2 = 0;
    int cells = 0;
    for (int f = 0; f < n; f++) {
        double total = 0;
        for (int r = 0; r < n; r++) total += cost(&x[r * d], &x[f * d], d, false);
        for (int r = 0; r < n; r++) {
            const double p = cost(&x[r * d], &x[f * d], d, false) / total / n;
            const double got = (double)seen[{f, r}];
            if (p == 0) {
                EXPECT_EQ(got, 0) << f << " then " << r;
                continue;
            }
            chi2 += (got - seeds * p) * (got - seeds * p) / (seeds * p);
            cells++;
        }
    }
    const int df = cells - 1;  // upper 1e-4 quantile (Wilson–Hilferty)
    const double z = 3.719, hh = 2.0 / (9.0 * df);
    EXPECT_LT(chi2, df * std::pow(1 - hh + z * std::sqrt(hh), 3)) << "df " << df;
}

// CPU and CUDA give the same bits (through the host execution layer in CI): labels, centroids,
// inertia, iterations, for each init, metric, balancing, and a host x on CUDA.
TEST(KmeansParity, CpuEqualsCuda) {
    Ctx cpu(NS_BACKEND_CPU), cuda(NS_BACKEND_CUDA);
    NS_REQUIRE_BACKEND(cpu);
    NS_REQUIRE_BACKEND(cuda);
    const int64_t n = 1500, d = 12, k = 16;
    std::vector<int> truth;
    const std::vector<float> x = blobs(n, d, 8, 51, &truth, 0.4f, {4, 1, 1, 1, 1, 1, 1, 1});
    for (int spherical = 0; spherical < 2; spherical++)
        for (ns_kmeans_init init : {NS_KMEANS_PLUSPLUS, NS_KMEANS_RANDOM})
            for (double balance : {-1.0, 0.1}) {
                ns_kmeans_options o = opts(71, spherical, 6);
                o.init = init, o.balance = balance;
                KmRun a = kmeans_f32(cpu, x, n, d, k, o), b = kmeans_f32(cuda, x, n, d, k, o);
                ASSERT_EQ(a.status, NS_OK) << a.error;
                ASSERT_EQ(b.status, NS_OK) << b.error;
                EXPECT_EQ(a.labels, b.labels) << spherical << init << balance;
                EXPECT_EQ(0, std::memcmp(a.centroids.data(), b.centroids.data(), a.centroids.size() * 4));
                EXPECT_EQ(0, std::memcmp(a.inertia.data(), b.inertia.data(), a.inertia.size() * 8));
                EXPECT_EQ(a.iterations, b.iterations);
                KmRun h = kmeans(cuda, f32_matrix(x.data(), n, d), k, o);  // host x on CUDA
                ASSERT_EQ(h.status, NS_OK) << h.error;
                EXPECT_EQ(a.labels, h.labels);
                EXPECT_EQ(a.centroids, h.centroids);
            }
}

}  // namespace
