// InfoNCE forward and backward against a plainly written double-precision reference over the
// materialised logits, and gradients against central finite differences of that reference.
#include "ns_test_util.h"

#include <cstring>

#include <algorithm>
#include <functional>

using namespace nstest;

// src/infonce.c: the CPU loss tiles of one context (internal, for tests)
extern "C" void ns_infonce_set_tiles(ns_context *ctx, int64_t rows, int64_t cols);
extern "C" void ns_infonce_set_strip(ns_context *ctx, int64_t bytes, int64_t min_rows);
extern "C" void ns_infonce_set_keep(ns_context *ctx, int keep);

namespace {

// One loss problem: inputs as the library sees them (values after dtype rounding, in double),
// ids, masks and options.
struct Problem {
    int64_t B = 1, N = 1, d = 1, h = 0, E = 0;
    std::vector<double> q, p, hd, ex;
    std::vector<int64_t> positive, pid, hid, eid;
    std::vector<uint8_t> keep;
    bool use_positive = false, use_pid = false, use_hid = false, use_eid = false, use_keep = false;
    double tau = 0.5, tau_plus = 0.0, beta = 0.0;
    int sym = 0, same = 1, share = 0;
    // The same-group rule (options->groups): query, passage, hard, extra group ids; weight 0 =
    // mask, else logit + log(weight).
    bool use_groups = false;
    std::vector<int64_t> qg, pg, hg, eg;
    double gweight = 0.0;
    mutable ns_loss_groups gs = NS_LOSS_GROUPS_INIT;

    int64_t pos(int64_t i) const { return use_positive ? positive[i] : i; }
    int64_t pidof(int64_t j) const { return use_pid ? pid[j] : j; }
    int64_t posid(int64_t i) const { return pidof(pos(i)); }
    ns_loss_options options() const {
        ns_loss_options o = NS_LOSS_OPTIONS_INIT;
        o.temperature = (float)tau;
        o.tau_plus = (float)tau_plus;
        o.beta = (float)beta;
        o.symmetric = sym;
        o.mask_same_id = same;
        o.share_hard = share;
        if (use_groups) {
            gs = NS_LOSS_GROUPS_INIT;
            gs.query = qg.data();
            gs.passage = pg.empty() ? nullptr : pg.data();
            gs.hard = hg.empty() ? nullptr : hg.data();
            gs.extra = eg.empty() ? nullptr : eg.data();
            gs.weight = (float)gweight;
            o.groups = &gs;
        }
        return o;
    }
    // What the group rule adds to the logit of query i and a candidate of group cg: 0, -inf
    // (mask) or log(weight).
    double gadj(int64_t i, const std::vector<int64_t> &grp, int64_t j) const {
        if (!use_groups || grp.empty() || qg[i] < 0 || grp[j] != qg[i]) return 0.0;
        return gweight > 0 ? std::log(gweight) : -INFINITY;
    }
};

double dot(const double *a, const double *b, int64_t d) {
    double s = 0;
    for (int64_t e = 0; e < d; e++) s += a[e] * b[e];
    return s;
}

struct RefInfo {
    int clamped = 0, unclamped = 0;
};

// The reference loss (mean over queries); per_query optional.
double ref_loss(const Problem &P, const double *q, const double *p, const double *hd,
                const double *ex, double tau, std::vector<double> *per_query = nullptr,
                RefInfo *info = nullptr) {
    const int64_t B = P.B, d = P.d;
    const bool general = P.tau_plus > 0 || P.beta > 0;
    double total = 0;
    if (per_query) per_query->assign(B, 0.0);
    for (int64_t i = 0; i < B; i++) {
        const double *qi = q + i * d;
        const int64_t pi = P.pos(i), pidi = P.posid(i);
        double lpos = dot(qi, p + pi * d, d) / tau;
        std::vector<double> neg;  // logits of the unmasked negatives (+ log w: down-weighted)
        auto add = [&](double l, double a) {
            if (a != -INFINITY) neg.push_back(l + a);
        };
        for (int64_t j = 0; j < P.N; j++) {
            if (j == pi) continue;
            if (P.same && P.pidof(j) == pidi) continue;
            add(dot(qi, p + j * d, d) / tau, P.gadj(i, P.pg, j));
        }
        int64_t r0 = P.share ? 0 : i * P.h, r1 = P.share ? B * P.h : (i + 1) * P.h;
        for (int64_t r = r0; r < r1; r++) {
            if (P.use_keep && !P.keep[r]) continue;
            if (P.use_hid && (P.hid[r] == -1 || (P.same && P.hid[r] == pidi))) continue;
            add(dot(qi, hd + r * d, d) / tau, P.gadj(i, P.hg, r));
        }
        for (int64_t k = 0; k < P.E; k++) {
            if (P.use_eid && P.same && P.eid[k] == pidi) continue;
            add(dot(qi, ex + k * d, d) / tau, P.gadj(i, P.eg, k));
        }
        double L;
        if (!general) {
            double s = std::exp(lpos);
            for (double l : neg) s += std::exp(l);
            L = -lpos + std::log(s);
        } else if (neg.empty()) {
            L = 0;
        } else {
            double n = (double)neg.size(), A = 0, W = 0;
            for (double l : neg) {
                A += std::exp((1 + P.beta) * l);
                W += std::exp(P.beta * l);
            }
            double g1 = (n * A / W - P.tau_plus * n * std::exp(lpos)) / (1 - P.tau_plus);
            double g2 = n * std::exp(-1.0 / tau);
            if (info) (g1 >= g2 ? info->unclamped : info->clamped)++;
            L = -lpos + std::log(std::exp(lpos) + std::max(g1, g2));
        }
        if (P.sym) {
            const double *pp = p + pi * d;
            double s = 0;
            for (int64_t k = 0; k < B; k++) {
                if (k != i && P.same && P.posid(k) == pidi) continue;
                // the group rule on logit (k, pi), unless pi is k's own positive
                const double a = P.pos(k) == pi ? 0.0 : P.gadj(k, P.pg, pi);
                if (a == -INFINITY) continue;
                s += std::exp(dot(q + k * d, pp, d) / tau + a);
            }
            L = 0.5 * (L + (-lpos + std::log(s)));
        }
        if (per_query) (*per_query)[i] = L;
        total += L;
    }
    return total / (double)B;
}

struct RefGrads {
    std::vector<double> q, p, hd;
    double tau = 0;
};

// Central finite differences of the reference, element by element (every element when
// max_elems < 0, else a fixed-seed sample of max_elems per tensor; others left NaN).
RefGrads fd_grads(const Problem &P, double step = 1e-3, int max_elems = -1) {
    Problem W = P;
    RefGrads g;
    auto f = [&]() { return ref_loss(W, W.q.data(), W.p.data(), W.hd.data(), W.ex.data(), W.tau); };
    auto run = [&](std::vector<double> &x, std::vector<double> &out) {
        out.assign(x.size(), NAN);
        std::vector<size_t> idx(x.size());
        for (size_t i = 0; i < idx.size(); i++) idx[i] = i;
        if (max_elems >= 0 && (size_t)max_elems < idx.size()) {
            std::mt19937_64 r(77);
            std::shuffle(idx.begin(), idx.end(), r);
            idx.resize(max_elems);
        }
        for (size_t i : idx) {
            double v = x[i];
            x[i] = v + step;
            double a = f();
            x[i] = v - step;
            double b = f();
            x[i] = v;
            out[i] = (a - b) / (2 * step);
        }
    };
    run(W.q, g.q);
    run(W.p, g.p);
    run(W.hd, g.hd);
    double t = W.tau;
    W.tau = t + step;
    double a = f();
    W.tau = t - step;
    double b = f();
    W.tau = t;
    g.tau = (a - b) / (2 * step);
    return g;
}

// Storage of one input matrix as the library takes it: dtype, ld ≥ cols.
struct Mat {
    std::vector<uint16_t> half;
    std::vector<float> f;
    ns_matrix m{};
};

uint16_t to_f16(float v) {
    _Float16 h = (_Float16)v;
    uint16_t b;
    std::memcpy(&b, &h, 2);
    return b;
}
double from_f16(uint16_t b) {
    _Float16 h;
    std::memcpy(&h, &b, 2);
    return (double)(float)h;
}
uint16_t to_bf16(float v) {  // truncation: any bf16 value will do as an input
    uint32_t x;
    std::memcpy(&x, &v, 4);
    return (uint16_t)(x >> 16);
}
double from_bf16(uint16_t b) {
    uint32_t x = (uint32_t)b << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

// Fills a Problem tensor with random values representable in dtype, and the matching Mat.
void make_tensor(std::vector<double> &dst, Mat &mat, int64_t rows, int64_t cols, uint64_t seed,
                 ns_dtype dt, int64_t pad) {
    auto v = random_floats((size_t)(rows * cols), seed);
    int64_t ld = cols + pad;
    dst.assign((size_t)(rows * cols), 0.0);
    mat.m.dtype = dt;
    mat.m.rows = rows;
    mat.m.cols = cols;
    mat.m.ld = pad ? ld : 0;
    if (dt == NS_F32) {
        mat.f.assign((size_t)(std::max<int64_t>(rows, 1) * ld), 777.f);  // padding never read
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                mat.f[r * ld + c] = v[r * cols + c];
                dst[r * cols + c] = v[r * cols + c];
            }
        mat.m.data = mat.f.data();
    } else {
        mat.half.assign((size_t)(std::max<int64_t>(rows, 1) * ld), 0x7e00);  // NaN padding
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                uint16_t b = dt == NS_F16 ? to_f16(v[r * cols + c]) : to_bf16(v[r * cols + c]);
                mat.half[r * ld + c] = b;
                dst[r * cols + c] = dt == NS_F16 ? from_f16(b) : from_bf16(b);
            }
        mat.m.data = mat.half.data();
    }
    if (rows == 0) mat.m = ns_matrix{};
}

// A problem with its library-side storage.
struct Case {
    Problem P;
    Mat q, p, hd, ex;
    ns_infonce_inputs inputs() const {
        ns_infonce_inputs in{};
        in.query = q.m;
        in.passage = p.m;
        in.positive = P.use_positive ? P.positive.data() : nullptr;
        in.hard = hd.m;
        in.hard_per_query = P.h;
        in.hard_keep = P.use_keep ? P.keep.data() : nullptr;
        in.extra = ex.m;
        in.passage_id = P.use_pid ? P.pid.data() : nullptr;
        in.hard_id = P.use_hid ? P.hid.data() : nullptr;
        in.extra_id = P.use_eid ? P.eid.data() : nullptr;
        return in;
    }
    // Writes the double values back after a change to P (f32 only).
    void sync_f32() {
        auto put = [](Mat &m, const std::vector<double> &v) {
            int64_t ld = m.m.ld ? m.m.ld : m.m.cols;
            for (int64_t r = 0; r < m.m.rows; r++)
                for (int64_t c = 0; c < m.m.cols; c++) m.f[r * ld + c] = (float)v[r * m.m.cols + c];
        };
        put(q, P.q);
        put(p, P.p);
        if (P.h) put(hd, P.hd);
        if (P.E) put(ex, P.ex);
    }
};

struct Shape {
    int64_t B, N, d, h, E;
};

// A random case; ids and masks switched on by the flags.
Case make_case(Shape s, uint64_t seed, ns_dtype dt = NS_F32, int64_t pad = 0, bool ids = false,
               bool positives = false) {
    Case c;
    Problem &P = c.P;
    P.B = s.B;
    P.N = s.N;
    P.d = s.d;
    P.h = s.h;
    P.E = s.E;
    make_tensor(P.q, c.q, s.B, s.d, seed, dt, pad);
    make_tensor(P.p, c.p, s.N, s.d, seed + 1, dt, pad);
    make_tensor(P.hd, c.hd, s.B * s.h, s.d, seed + 2, dt, pad);
    make_tensor(P.ex, c.ex, s.E, s.d, seed + 3, dt, pad);
    std::mt19937_64 g(seed + 4);
    if (positives) {
        P.use_positive = true;
        P.positive.resize(s.B);
        for (auto &x : P.positive) x = (int64_t)(g() % s.N);
    }
    if (ids) {
        // Few distinct ids, so that duplicates are common.
        int64_t nid = std::max<int64_t>(2, s.N / 2);
        P.use_pid = P.use_hid = P.use_eid = P.use_keep = true;
        P.pid.resize(s.N);
        for (auto &x : P.pid) x = (int64_t)(g() % nid);
        P.hid.resize(s.B * s.h);
        for (auto &x : P.hid) x = g() % 7 == 0 ? -1 : (int64_t)(g() % nid);
        P.keep.resize(s.B * s.h);
        for (auto &x : P.keep) x = g() % 5 != 0;
        P.eid.resize(s.E);
        for (auto &x : P.eid) x = (int64_t)(g() % nid);
    }
    return c;
}

// Group ids for every query and candidate block (few groups, some -1: collisions common);
// weight 0 = mask.
void add_groups(Case &c, uint64_t seed, double weight, bool all_blocks = true) {
    Problem &P = c.P;
    std::mt19937_64 g(seed);
    auto fill = [&](std::vector<int64_t> &v, int64_t n) {
        v.resize(n);
        for (auto &x : v) x = (int64_t)(g() % 4) - 1;  // -1 .. 2
    };
    P.use_groups = true;
    P.gweight = weight;
    fill(P.qg, P.B);
    fill(P.pg, P.N);
    if (all_blocks) {
        if (P.h) fill(P.hg, P.B * P.h);
        if (P.E) fill(P.eg, P.E);
    }
}

struct LibResult {
    ns_status fwd = NS_OK, bwd = NS_OK;
    float loss = NAN, dtau = NAN;
    std::vector<float> per, saved, dq, dp, dh;
};

// The same outputs from one ns_infonce_forward_backward call.
LibResult run_lib_fused(ns_context *ctx, const Case &c, float grad_loss = 1.0f,
                        bool want_hard = true, bool want_query = true, bool want_passage = true) {
    LibResult r;
    const Problem &P = c.P;
    ns_infonce_inputs in = c.inputs();
    ns_loss_options o = P.options();
    r.per.assign(P.B, NAN);
    r.saved.assign(P.B * NS_INFONCE_SAVED_PER_QUERY, NAN);
    r.dq.assign(P.B * P.d, NAN);
    r.dp.assign(P.N * P.d, NAN);
    r.dh.assign(std::max<int64_t>(P.B * P.h * P.d, 1), NAN);
    ns_infonce_grads g{want_query ? r.dq.data() : nullptr, want_passage ? r.dp.data() : nullptr,
                       want_hard && P.h ? r.dh.data() : nullptr, &r.dtau};
    r.fwd = r.bwd = ns_infonce_forward_backward(ctx, &in, &o, grad_loss, &r.loss, r.per.data(),
                                                r.saved.data(), &g);
    return r;
}

LibResult run_lib(ns_context *ctx, const Case &c, float grad_loss = 1.0f, bool want_hard = true,
                  bool want_query = true, bool want_passage = true) {
    LibResult r;
    const Problem &P = c.P;
    ns_infonce_inputs in = c.inputs();
    ns_loss_options o = P.options();
    r.per.assign(P.B, NAN);
    r.saved.assign(P.B * NS_INFONCE_SAVED_PER_QUERY, NAN);
    r.fwd = ns_infonce_forward(ctx, &in, &o, &r.loss, r.per.data(), r.saved.data());
    if (r.fwd != NS_OK) return r;
    r.dq.assign(P.B * P.d, NAN);
    r.dp.assign(P.N * P.d, NAN);
    r.dh.assign(std::max<int64_t>(P.B * P.h * P.d, 1), NAN);
    ns_infonce_grads g{want_query ? r.dq.data() : nullptr, want_passage ? r.dp.data() : nullptr,
                       want_hard && P.h ? r.dh.data() : nullptr, &r.dtau};
    r.bwd = ns_infonce_backward(ctx, &in, &o, r.saved.data(), grad_loss, &g);
    return r;
}

// Compares got (float) with want (double, NaN = not checked); reports the first mismatches.
void expect_close(const char *what, const std::vector<float> &got, const std::vector<double> &want,
                  double atol, double rtol) {
    double scale = 0;
    for (double w : want)
        if (!std::isnan(w)) scale = std::max(scale, std::fabs(w));
    int bad = 0;
    std::string first;
    for (size_t i = 0; i < want.size(); i++) {
        if (std::isnan(want[i])) continue;
        if (!close(got[i], want[i], atol + rtol * scale, rtol)) {
            if (bad < 5)
                first += "\n  [" + std::to_string(i) + "] got " + std::to_string(got[i]) +
                         " want " + std::to_string(want[i]);
            bad++;
        }
    }
    EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << want.size()
                      << " mismatches (max |want| " << scale << ")" << first;
}

// Checks forward (loss, per-query) against the reference and the gradients against finite
// differences.
void check_case(ns_context *ctx, const Case &c, const std::string &label, int fd_elems = -1,
                double gtol = 2e-3, bool fused = false) {
    SCOPED_TRACE(label);
    const Problem &P = c.P;
    LibResult r = fused ? run_lib_fused(ctx, c) : run_lib(ctx, c);
    ASSERT_EQ(r.fwd, NS_OK) << ns_last_error(ctx);
    ASSERT_EQ(r.bwd, NS_OK) << ns_last_error(ctx);
    std::vector<double> per;
    double L = ref_loss(P, P.q.data(), P.p.data(), P.hd.data(), P.ex.data(), P.tau, &per);
    EXPECT_TRUE(close(r.loss, L, 1e-5, 1e-5)) << "loss got " << r.loss << " want " << L;
    expect_close("per_query", r.per, per, 2e-5, 2e-5);
    RefGrads g = fd_grads(P, 1e-3, fd_elems);
    expect_close("dQ", r.dq, g.q, 1e-6, gtol);
    expect_close("dP", r.dp, g.p, 1e-6, gtol);
    if (P.h) {
        std::vector<float> dh(r.dh.begin(), r.dh.begin() + P.B * P.h * P.d);
        expect_close("dH", dh, g.hd, 1e-6, gtol);
    }
    EXPECT_TRUE(close(r.dtau, g.tau, 1e-5, gtol)) << "dtau got " << r.dtau << " want " << g.tau;
}

struct OptionSet {
    const char *name;
    double tau_plus, beta;
    int sym, same, share;
};
const OptionSet kOptions[] = {
    {"plain", 0, 0, 0, 1, 0},          {"plain_nosame", 0, 0, 0, 0, 0},
    {"symmetric", 0, 0, 1, 1, 0},      {"symmetric_nosame", 0, 0, 1, 0, 0},
    {"debiased", 0.1, 0, 0, 1, 0},     {"reweighted", 0, 0.5, 0, 1, 0},
    {"debiased_beta", 0.1, 1.0, 0, 1, 0}, {"share_hard", 0, 0, 0, 1, 1},
    {"share_sym_debiased_beta", 0.05, 0.3, 1, 1, 1},
};

void apply(Problem &P, const OptionSet &o) {
    P.tau_plus = o.tau_plus;
    P.beta = o.beta;
    P.sym = o.sym;
    P.same = o.same;
    P.share = o.share;
}

}  // namespace

TEST(InfoNCE, PlainShapesMatchReferenceAndFiniteDifferences) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    const Shape shapes[] = {{1, 1, 1, 0, 0}, {1, 5, 3, 0, 0}, {4, 4, 1, 0, 0},
                            {3, 1, 4, 2, 0}, {5, 9, 7, 2, 4}, {37, 45, 13, 3, 0}};
    uint64_t seed = 100;
    for (const Shape &s : shapes) {
        for (int64_t pad : {0, 3}) {
            Case k = make_case(s, seed++, NS_F32, pad, false, s.N > s.B || s.B > s.N);
            if (!k.P.use_positive && k.P.B > k.P.N) continue;
            check_case(c, k,
                       "B=" + std::to_string(s.B) + " N=" + std::to_string(s.N) + " d=" +
                           std::to_string(s.d) + " h=" + std::to_string(s.h) + " E=" +
                           std::to_string(s.E) + " pad=" + std::to_string(pad));
        }
    }
}

TEST(InfoNCE, EveryOptionMatchesReference) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    for (bool ids : {false, true}) {
        for (const OptionSet &o : kOptions) {
            Case k = make_case({9, 11, 6, 2, 3}, 200, NS_F32, 2, ids, true);
            apply(k.P, o);
            check_case(c, k, std::string(o.name) + (ids ? " with ids and masks" : ""));
        }
    }
}

TEST(InfoNCE, RaggedWithIdsEveryOption) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    for (const OptionSet &o : kOptions) {
        Case k = make_case({37, 45, 13, 3, 5}, 300, NS_F32, 1, true, false);
        apply(k.P, o);
        check_case(c, k, o.name, 40);
    }
}

TEST(InfoNCE, TinyTilesCrossEveryBoundary) {
    Ctx c(NS_BACKEND_CPU, 3);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    const int64_t tiles[][2] = {{1, 1}, {4, 5}, {3, 7}, {8, 2}};
    for (auto &t : tiles) {
        ns_infonce_set_tiles(c, t[0], t[1]);
        for (const OptionSet &o : kOptions) {
            Case k = make_case({10, 13, 5, 2, 4}, 400, NS_F32, 0, true, true);
            apply(k.P, o);
            check_case(c, k,
                       std::string(o.name) + " tiles " + std::to_string(t[0]) + "x" +
                           std::to_string(t[1]));
        }
    }
    ns_infonce_set_tiles(c, 0, 0);
}

// Bit for bit the same floats (NaN-filled buffers compared as bytes).
template <class T>
bool same_bits(const std::vector<T> &a, const std::vector<T> &b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// Every output of two runs, bit for bit: the loss, dL/dτ, the per-query losses, the saved
// statistics and the three gradients.
void expect_same_bits(const LibResult &a, const LibResult &b, const std::string &what) {
    EXPECT_EQ(std::memcmp(&a.loss, &b.loss, 4), 0) << what << ": loss " << a.loss << " vs " << b.loss;
    EXPECT_EQ(std::memcmp(&a.dtau, &b.dtau, 4), 0) << what << ": dtau " << a.dtau << " vs " << b.dtau;
    EXPECT_TRUE(same_bits(a.per, b.per)) << what << ": per_query";
    EXPECT_TRUE(same_bits(a.saved, b.saved)) << what << ": saved";
    EXPECT_TRUE(same_bits(a.dq, b.dq)) << what << ": dQ";
    EXPECT_TRUE(same_bits(a.dp, b.dp)) << what << ": dP";
    EXPECT_TRUE(same_bits(a.dh, b.dh)) << what << ": dH";
}

// ns_infonce_forward_backward: the outputs of ns_infonce_forward then ns_infonce_backward, bit
// for bit, for every option set (the symmetric ones through the fused symmetric path: column
// pass, then forward + backward per row tile, the column pass's tiles kept for the row tiles
// or computed again), with and without ids, masks and groups (masked or down-weighted), f32 and
// f16 inputs, default and tiny tiles (every boundary), grad_loss ≠ 1 and gradients left out;
// and against the double reference and finite differences on its own.
TEST(InfoNCE, FusedForwardBackwardIsForwardThenBackwardBitForBit) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    const int64_t tiles[][2] = {{0, 0}, {1, 1}, {4, 5}, {3, 7}, {8, 2}, {16, 64}};
    int compared = 0;
    for (int keep : {1, 0})
    for (auto &t : tiles) {
        ns_infonce_set_keep(c, keep);
        ns_infonce_set_tiles(c, t[0], t[1]);
        for (ns_dtype dt : {NS_F32, NS_F16})
            for (bool ids : {false, true})
                for (const OptionSet &o : kOptions) {
                    Case k = make_case({11, 13, 6, 2, 4}, 500 + compared, dt, 1, ids, ids);
                    apply(k.P, o);
                    if (ids) add_groups(k, 900 + compared, compared % 2 ? 0.5 : 0.0);
                    const float gl = compared % 3 == 0 ? 0.37f : 1.0f;
                    const bool wq = compared % 5 != 1, wp = compared % 5 != 2,
                               wh = compared % 5 != 3;
                    LibResult a = run_lib(c, k, gl, wh, wq, wp);
                    LibResult b = run_lib_fused(c, k, gl, wh, wq, wp);
                    const std::string what = std::string(o.name) + (ids ? " ids" : "") +
                                             (dt == NS_F16 ? " f16" : " f32") + " tiles " +
                                             std::to_string(t[0]) + "x" + std::to_string(t[1]) +
                                             (keep ? "" : " no keep");
                    ASSERT_EQ(a.fwd, NS_OK) << what << ": " << ns_last_error(c);
                    ASSERT_EQ(a.bwd, NS_OK) << what << ": " << ns_last_error(c);
                    ASSERT_EQ(b.fwd, NS_OK) << what << ": " << ns_last_error(c);
                    expect_same_bits(a, b, what + " (two calls vs fused)");
                    compared++;
                }
    }
    ns_infonce_set_tiles(c, 0, 0);
    ns_infonce_set_keep(c, 1);
    EXPECT_EQ(compared, 2 * 6 * 2 * 2 * (int)(sizeof kOptions / sizeof kOptions[0]));
}

TEST(InfoNCE, FusedForwardBackwardMatchesReferenceAndFiniteDifferences) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    const int64_t tiles[][2] = {{0, 0}, {3, 7}};
    for (auto &t : tiles) {
        ns_infonce_set_tiles(c, t[0], t[1]);
        for (bool ids : {false, true})
            for (const OptionSet &o : kOptions) {
                Case k = make_case({10, 13, 5, 2, 4}, 600, NS_F32, 0, ids, true);
                apply(k.P, o);
                check_case(c, k,
                           std::string("fused ") + o.name + (ids ? " ids" : "") + " tiles " +
                               std::to_string(t[0]) + "x" + std::to_string(t[1]),
                           -1, 2e-3, true);
            }
    }
    ns_infonce_set_tiles(c, 0, 0);
}

TEST(InfoNCE, FusedForwardBackwardRejectsBadInput) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    Case k = make_case({3, 4, 2, 0, 0}, 700);
    ns_infonce_inputs in = k.inputs();
    ns_loss_options o = k.P.options();
    float loss = 5.f, per[3], saved[3 * NS_INFONCE_SAVED_PER_QUERY];
    std::vector<float> dq(6, 9.f);
    ns_infonce_grads g{dq.data(), nullptr, nullptr, nullptr};
    EXPECT_EQ(ns_infonce_forward_backward(c, &in, &o, NAN, &loss, per, saved, &g),
              NS_ERR_NONFINITE);
    EXPECT_NE(std::string(ns_last_error(c)).find("ns_infonce_forward_backward: grad_loss"),
              std::string::npos)
        << ns_last_error(c);
    EXPECT_EQ(ns_infonce_forward_backward(c, &in, &o, 1.f, &loss, per, saved, nullptr),
              NS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(ns_last_error(c)).find("grads"), std::string::npos);
    EXPECT_EQ(ns_infonce_forward_backward(c, &in, &o, 1.f, nullptr, per, saved, &g),
              NS_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(ns_infonce_forward_backward(c, &in, &o, 1.f, &loss, per, nullptr, &g),
              NS_ERR_INVALID_ARGUMENT);
    o.temperature = 0.f;
    EXPECT_EQ(ns_infonce_forward_backward(c, &in, &o, 1.f, &loss, per, saved, &g),
              NS_ERR_INVALID_ARGUMENT);
    o = k.P.options();
    k.q.f[0] = NAN;
    in = k.inputs();
    EXPECT_EQ(ns_infonce_forward_backward(c, &in, &o, 1.f, &loss, per, saved, &g),
              NS_ERR_NONFINITE);
    EXPECT_NE(std::string(ns_last_error(c)).find("ns_infonce_forward_backward: query[0][0]"),
              std::string::npos)
        << ns_last_error(c);
    EXPECT_EQ(loss, 5.f) << "loss written on failure";
    EXPECT_EQ(dq[0], 9.f) << "gradient written on failure";
}

TEST(InfoNCE, LargerThanDefaultTiles) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    // 300 > 256 query rows and 520 > 512 candidate columns: the default tiles are crossed.
    const OptionSet sets[] = {kOptions[0], {"sym_debiased_beta", 0.1, 0.5, 1, 1, 0}};
    for (const OptionSet &o : sets) {
        Case k = make_case({300, 520, 4, 1, 0}, 500, NS_F32, 0, false, false);
        apply(k.P, o);
        check_case(c, k, o.name, 6, 3e-3);
    }
}

TEST(InfoNCE, HalfPrecisionInputs) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    for (ns_dtype dt : {NS_F16, NS_BF16}) {
        for (const OptionSet &o : {kOptions[0], kOptions[2], kOptions[6], kOptions[8]}) {
            Case k = make_case({7, 10, 9, 2, 3}, 600, dt, 3, true, true);
            apply(k.P, o);
            check_case(c, k, std::string(o.name) + (dt == NS_F16 ? " f16" : " bf16"));
        }
    }
}

TEST(InfoNCE, SameIdDuplicatesAndSharedPositives) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    Case k = make_case({8, 6, 5, 1, 2}, 700, NS_F32, 0, false, true);
    Problem &P = k.P;
    P.use_pid = true;
    P.pid = {10, 11, 10, 12, 11, 13};         // rows 0/2 and 1/4 are the same document
    P.positive = {0, 0, 2, 1, 4, 3, 5, 1};    // queries share positives and positive ids
    P.use_eid = true;
    P.eid = {10, 99};
    for (const OptionSet &o : kOptions) {
        apply(P, o);
        check_case(c, k, std::string(o.name) + " duplicates");
    }
}

TEST(InfoNCE, DebiasedBothBranchesOfTheClamp) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    Case k = make_case({12, 12, 6, 1, 0}, 800, NS_F32, 0, false, false);
    Problem &P = k.P;
    // Half the queries get a strong positive: τ⁺·e^{l⁺} then outweighs the negatives.
    for (int64_t i = 0; i < P.B; i += 2)
        for (int64_t e = 0; e < P.d; e++) P.p[i * P.d + e] = 1.5 * P.q[i * P.d + e];
    k.sync_f32();
    for (double beta : {0.0, 0.7}) {
        P.tau_plus = 0.3;
        P.beta = beta;
        RefInfo info;
        ref_loss(P, P.q.data(), P.p.data(), P.hd.data(), P.ex.data(), P.tau, nullptr, &info);
        EXPECT_GT(info.clamped, 0);
        EXPECT_GT(info.unclamped, 0);
        check_case(c, k, "clamp beta=" + std::to_string(beta));
    }
}

TEST(InfoNCE, NoNegativesGivesZeroLoss) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    for (const OptionSet &o : kOptions) {
        Case k = make_case({1, 1, 3, 0, 0}, 900);
        apply(k.P, o);
        LibResult r = run_lib(c, k);
        ASSERT_EQ(r.fwd, NS_OK) << ns_last_error(c);
        ASSERT_EQ(r.bwd, NS_OK) << ns_last_error(c);
        EXPECT_NEAR(r.loss, 0.0, 1e-6) << o.name;
        for (float x : r.dq) EXPECT_NEAR(x, 0.0, 1e-6) << o.name;
        EXPECT_NEAR(r.dtau, 0.0, 1e-6) << o.name;
    }
}

TEST(InfoNCE, ThreadCountIndependentAndDeterministic) {
    std::vector<LibResult> rs;
    Case k = make_case({70, 90, 11, 2, 5}, 1000, NS_F32, 0, true, true);
    apply(k.P, kOptions[8]);
    for (int t : {1, 2, 3, 2}) {
        Ctx c(NS_BACKEND_CPU, t);
        ASSERT_EQ(c.status, NS_OK) << c.why;
        ns_infonce_set_tiles(c, 16, 24);
        rs.push_back(run_lib(c, k));
        ASSERT_EQ(rs.back().fwd, NS_OK);
        ASSERT_EQ(rs.back().bwd, NS_OK);
    }
    auto as_double = [](const std::vector<float> &v) { return std::vector<double>(v.begin(), v.end()); };
    for (size_t i = 1; i < 3; i++) {
        EXPECT_TRUE(close(rs[i].loss, rs[0].loss, 1e-6, 1e-5));
        expect_close("dQ threads", rs[i].dq, as_double(rs[0].dq), 1e-7, 1e-5);
        expect_close("dP threads", rs[i].dp, as_double(rs[0].dp), 1e-7, 1e-5);
        expect_close("dH threads", rs[i].dh, as_double(rs[0].dh), 1e-7, 1e-5);
        EXPECT_TRUE(close(rs[i].dtau, rs[0].dtau, 1e-6, 1e-5));
    }
    // Same thread count twice: bitwise the same.
    expect_same_bits(rs[1], rs[3], "the same thread count twice");
}

TEST(InfoNCE, GradLossScalesEveryGradient) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    Case k = make_case({9, 11, 6, 2, 3}, 1100, NS_F32, 0, true, true);
    apply(k.P, kOptions[8]);
    LibResult a = run_lib(c, k, 1.0f), b = run_lib(c, k, -2.5f);
    ASSERT_EQ(b.bwd, NS_OK);
    auto scaled = [](const std::vector<float> &v) {
        std::vector<double> o(v.size());
        for (size_t i = 0; i < v.size(); i++) o[i] = -2.5 * v[i];
        return o;
    };
    expect_close("dQ", b.dq, scaled(a.dq), 1e-7, 1e-5);
    expect_close("dP", b.dp, scaled(a.dp), 1e-7, 1e-5);
    expect_close("dH", b.dh, scaled(a.dh), 1e-7, 1e-5);
    EXPECT_TRUE(close(b.dtau, -2.5 * a.dtau, 1e-7, 1e-5));
    // Optional gradients: only the temperature.
    ns_infonce_inputs in = k.inputs();
    ns_loss_options o = k.P.options();
    float t = NAN;
    ns_infonce_grads g{nullptr, nullptr, nullptr, &t};
    ASSERT_EQ(ns_infonce_backward(c, &in, &o, a.saved.data(), 1.0f, &g), NS_OK);
    EXPECT_EQ(std::memcmp(&t, &a.dtau, 4), 0);
}

TEST(InfoNCE, DefaultOptionsAreTheDocumentedOnes) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    Case k = make_case({5, 7, 4, 0, 0}, 1200, NS_F32, 0, true, false);
    k.P.tau = 0.05;
    ns_infonce_inputs in = k.inputs();
    float loss = NAN, saved[5 * NS_INFONCE_SAVED_PER_QUERY];
    ASSERT_EQ(ns_infonce_forward(c, &in, nullptr, &loss, nullptr, saved), NS_OK);
    double L = ref_loss(k.P, k.P.q.data(), k.P.p.data(), k.P.hd.data(), k.P.ex.data(), 0.05);
    EXPECT_TRUE(close(loss, L, 1e-4, 1e-5)) << loss << " vs " << L;
    // The first saved float is the row log-sum-exp in the plain case.
    for (int64_t i = 0; i < 5; i++) {
        std::vector<double> per;
        ref_loss(k.P, k.P.q.data(), k.P.p.data(), k.P.hd.data(), k.P.ex.data(), 0.05, &per);
        double lpos = dot(&k.P.q[i * 4], &k.P.p[i * 4], 4) / 0.05;
        EXPECT_TRUE(close(saved[i * NS_INFONCE_SAVED_PER_QUERY], per[i] + lpos, 1e-3, 1e-5));
    }
}

// ---------------------------------------------------------------- bad input

namespace {
struct BadCall {
    ns_status status;
    std::string msg;
    bool untouched;
};

BadCall forward_bad(ns_context *ctx, const ns_infonce_inputs *in, const ns_loss_options *o,
                    bool null_loss = false, bool null_saved = false) {
    float loss = 123.f;
    std::vector<float> per(64, 7.f), saved(64 * NS_INFONCE_SAVED_PER_QUERY, 9.f);
    ns_status st = ns_infonce_forward(ctx, in, o, null_loss ? nullptr : &loss, per.data(),
                                      null_saved ? nullptr : saved.data());
    bool untouched = loss == 123.f && std::all_of(per.begin(), per.end(), [](float x) { return x == 7.f; }) &&
                     std::all_of(saved.begin(), saved.end(), [](float x) { return x == 9.f; });
    return {st, ns_last_error(ctx), untouched};
}
}  // namespace

// ---------------------------------------------------------------- same-group rule (groups)

// Masked and down-weighted same-group candidates, every option set (symmetric, debiased,
// reweighted, shared hard), with and without ids, default and tiny tiles, the two calls and the
// fused one: the loss against the float64 reference, gradients against finite differences.
TEST(InfoNCEGroups, MatchReferenceAndFiniteDifferences) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    const int64_t tiles[][2] = {{0, 0}, {3, 7}};
    int n = 0;
    for (auto &t : tiles) {
        ns_infonce_set_tiles(c, t[0], t[1]);
        for (double wgt : {0.0, 0.3})
            for (bool ids : {false, true})
                for (const OptionSet &o : kOptions) {
                    Case k = make_case({9, 11, 5, 2, 3}, 2000 + n, NS_F32, 1, ids, true);
                    apply(k.P, o);
                    add_groups(k, 3000 + n, wgt);
                    check_case(c, k,
                               std::string(o.name) + (wgt ? " weight 0.3" : " mask") +
                                   (ids ? " ids" : "") + " tiles " + std::to_string(t[0]) + "x" +
                                   std::to_string(t[1]),
                               -1, 2e-3, n % 2 == 1);
                    n++;
                }
    }
    ns_infonce_set_tiles(c, 0, 0);
}

// Masking by group is removing: extra rows of the queries' one group give the loss and
// gradients of the problem without those rows; hard rows of that group those of hard_keep = 0.
TEST(InfoNCEGroups, MaskingIsRemovingTheCandidates) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    for (const OptionSet &o : kOptions) {
        SCOPED_TRACE(o.name);
        Case k = make_case({6, 8, 5, 3, 4}, 2500, NS_F32, 0, false, true);
        apply(k.P, o);
        Case g = k;  // every query in group 7; extra rows 1, 3 and hard rows r % 3 == 1 too
        g.P.use_groups = true;
        g.P.qg.assign(6, 7);
        g.P.eg = {-1, 7, 2, 7};
        g.P.hg.assign(18, -1);
        for (int64_t r = 1; r < 18; r += 3) g.P.hg[r] = 7;
        Case r = k;  // the same without extra rows 1, 3; hard rows r % 3 == 1 kept out
        r.P.E = 2;
        r.P.ex.assign(k.P.ex.begin(), k.P.ex.begin() + 2 * 5);
        std::copy(k.P.ex.begin() + 2 * 5, k.P.ex.begin() + 3 * 5, r.P.ex.begin() + 5);
        r.ex.f.assign(r.P.ex.begin(), r.P.ex.end());
        r.ex.m.data = r.ex.f.data();
        r.ex.m.rows = 2;
        r.P.use_keep = true;
        r.P.keep.assign(18, 1);
        for (int64_t q = 1; q < 18; q += 3) r.P.keep[q] = 0;
        // the pointers of a copied Case point into the original: rebind
        g.q.m.data = g.q.f.data(), g.p.m.data = g.p.f.data(), g.hd.m.data = g.hd.f.data();
        g.ex.m.data = g.ex.f.data();
        r.q.m.data = r.q.f.data(), r.p.m.data = r.p.f.data(), r.hd.m.data = r.hd.f.data();
        LibResult a = run_lib(c, g), b = run_lib(c, r);
        ASSERT_EQ(a.bwd, NS_OK) << ns_last_error(c);
        ASSERT_EQ(b.bwd, NS_OK) << ns_last_error(c);
        auto d = [](const std::vector<float> &v) { return std::vector<double>(v.begin(), v.end()); };
        EXPECT_TRUE(close(a.loss, b.loss, 1e-6, 1e-6)) << a.loss << " vs " << b.loss;
        expect_close("per_query", a.per, d(b.per), 1e-6, 1e-5);
        expect_close("dQ", a.dq, d(b.dq), 1e-7, 1e-5);
        expect_close("dP", a.dp, d(b.dp), 1e-7, 1e-5);
        expect_close("dH", a.dh, d(b.dh), 1e-7, 1e-5);
        EXPECT_TRUE(close(a.dtau, b.dtau, 1e-6, 1e-5)) << a.dtau << " vs " << b.dtau;
    }
}

// Weight 1 (log w = 0) is the loss without groups, bit for bit; queries without a group (-1)
// see no change either.
TEST(InfoNCEGroups, WeightOneAndNoGroupAreTheUngroupedLoss) {
    Ctx c(NS_BACKEND_CPU, 2);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    for (const OptionSet &o : kOptions) {
        Case k = make_case({9, 11, 5, 2, 3}, 2600, NS_F32, 0, true, true);
        apply(k.P, o);
        LibResult want = run_lib(c, k);
        for (int variant = 0; variant < 2; variant++) {
            Case g = k;
            g.q.m.data = g.q.f.data(), g.p.m.data = g.p.f.data(), g.hd.m.data = g.hd.f.data();
            g.ex.m.data = g.ex.f.data();
            add_groups(g, 2700, variant == 0 ? 1.0 : 0.0);
            if (variant == 1) g.P.qg.assign(9, -1);
            LibResult got = run_lib(c, g);
            ASSERT_EQ(got.bwd, NS_OK) << ns_last_error(c);
            const std::string what = std::string(o.name) + (variant ? " no query group" : " w=1");
            expect_same_bits(got, want, what);
        }
    }
}

TEST(InfoNCEGroups, RejectsBadGroups) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    Case k = make_case({4, 6, 3, 2, 2}, 2800, NS_F32, 0, true, true);
    add_groups(k, 2900, 0.0);
    ns_infonce_inputs in = k.inputs();
    float loss = 5.f, per[4], saved[4 * NS_INFONCE_SAVED_PER_QUERY];
    auto bad = [&](std::function<void(ns_loss_groups &)> f, const char *text) {
        ns_loss_options o = k.P.options();
        ns_loss_groups g = *o.groups;
        f(g);
        o.groups = &g;
        EXPECT_EQ(ns_infonce_forward(c, &in, &o, &loss, per, saved), NS_ERR_INVALID_ARGUMENT + (std::string(text).find("newer") != std::string::npos));
        EXPECT_NE(std::string(ns_last_error(c)).find(text), std::string::npos) << ns_last_error(c);
        EXPECT_EQ(loss, 5.f);
    };
    bad([](ns_loss_groups &g) { g.query = nullptr; }, "ns_infonce_forward: options->groups->query is NULL");
    bad([](ns_loss_groups &g) { g.weight = 1.5f; }, "options->groups->weight (1.5)");
    bad([](ns_loss_groups &g) { g.weight = -0.1f; }, "options->groups->weight (-0.1)");
    bad([](ns_loss_groups &g) { g.weight = NAN; }, "options->groups->weight (nan)");
    bad([](ns_loss_groups &g) { g.struct_size = 3; }, "options->groups->struct_size (3)");
    bad([](ns_loss_groups &g) { g.struct_size = sizeof(ns_loss_groups) + 8; }, "newer negsamp.h");
    // An older caller's ns_loss_options (no groups field) is the loss without groups.
    ns_loss_options o = k.P.options();
    float l1 = 0, l2 = 0;
    o.groups = nullptr;
    ASSERT_EQ(ns_infonce_forward(c, &in, &o, &l1, per, saved), NS_OK);
    o = k.P.options();
    o.struct_size = offsetof(ns_loss_options, groups);
    ASSERT_EQ(ns_infonce_forward(c, &in, &o, &l2, per, saved), NS_OK) << ns_last_error(c);
    EXPECT_EQ(l1, l2);
}

#define EXPECT_BAD(call, code, text)                                                   \
    do {                                                                               \
        BadCall b_ = (call);                                                           \
        EXPECT_EQ(b_.status, code) << b_.msg;                                          \
        EXPECT_NE(b_.msg.find(text), std::string::npos) << "message: " << b_.msg;      \
        EXPECT_TRUE(b_.untouched) << b_.msg;                                           \
    } while (0)

TEST(InfoNCE, ForwardRejectsBadInput) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    Case k = make_case({4, 6, 3, 2, 2}, 1300, NS_F32, 0, true, true);
    const ns_infonce_inputs good = k.inputs();
    const ns_loss_options og = k.P.options();
    ASSERT_TRUE(forward_bad(c, &good, &og).status == NS_OK);

    EXPECT_EQ(ns_infonce_forward(nullptr, &good, &og, nullptr, nullptr, nullptr), NS_ERR_INVALID_ARGUMENT);
    EXPECT_BAD(forward_bad(c, nullptr, &og), NS_ERR_INVALID_ARGUMENT, "ns_infonce_forward: inputs is NULL");
    EXPECT_BAD(forward_bad(c, &good, &og, true), NS_ERR_INVALID_ARGUMENT, "loss is NULL");
    EXPECT_BAD(forward_bad(c, &good, &og, false, true), NS_ERR_INVALID_ARGUMENT, "saved is NULL");

    auto with_opt = [&](std::function<void(ns_loss_options &)> f) {
        ns_loss_options o = og;
        f(o);
        return forward_bad(c, &good, &o);
    };
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.struct_size = 4; }), NS_ERR_INVALID_ARGUMENT, "struct_size (4)");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.temperature = 0; }), NS_ERR_INVALID_ARGUMENT, "temperature (0)");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.temperature = -1; }), NS_ERR_INVALID_ARGUMENT, "temperature (-1)");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.temperature = INFINITY; }), NS_ERR_INVALID_ARGUMENT, "temperature (inf)");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.temperature = NAN; }), NS_ERR_INVALID_ARGUMENT, "temperature");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.tau_plus = 1; }), NS_ERR_INVALID_ARGUMENT, "tau_plus (1)");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.tau_plus = -0.5f; }), NS_ERR_INVALID_ARGUMENT, "tau_plus (-0.5)");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.beta = -1; }), NS_ERR_INVALID_ARGUMENT, "beta (-1)");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.beta = NAN; }), NS_ERR_INVALID_ARGUMENT, "beta");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.symmetric = 2; }), NS_ERR_INVALID_ARGUMENT, "symmetric (2)");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.mask_same_id = -1; }), NS_ERR_INVALID_ARGUMENT, "mask_same_id (-1)");
    EXPECT_BAD(with_opt([](ns_loss_options &o) { o.share_hard = 5; }), NS_ERR_INVALID_ARGUMENT, "share_hard (5)");

    auto with_in = [&](std::function<void(ns_infonce_inputs &)> f) {
        ns_infonce_inputs in = good;
        f(in);
        return forward_bad(c, &in, &og);
    };
    std::vector<float> wide(6 * 5, 0.5f), nanq(4 * 3, 0.5f), infh(8 * 3, 0.25f);
    nanq[7] = NAN;
    infh[13] = -INFINITY;
    std::vector<int64_t> badpos = {0, 1, 6, 2}, negpos = {0, -1, 1, 2};
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.passage = f32_matrix(wide.data(), 6, 5); }),
               NS_ERR_INVALID_ARGUMENT, "ns_infonce_forward: query has 3 columns but passage has 5");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.hard = f32_matrix(wide.data(), 6, 5); in.hard.rows = 8; }),
               NS_ERR_INVALID_ARGUMENT, "query has 3 columns but hard has 5");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.extra = f32_matrix(wide.data(), 2, 5); }),
               NS_ERR_INVALID_ARGUMENT, "query has 3 columns but extra has 5");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.hard.rows = 7; }), NS_ERR_INVALID_ARGUMENT,
               "hard has 7 rows but queries × hard_per_query is 4 × 2");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.hard_per_query = -1; }), NS_ERR_INVALID_ARGUMENT,
               "hard_per_query (-1)");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.hard_per_query = 0; }), NS_ERR_INVALID_ARGUMENT,
               "hard has 8 rows but hard_per_query is 0");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.positive = badpos.data(); }), NS_ERR_INVALID_ARGUMENT,
               "positive[2] (6) is not a passage row in [0, 6)");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.positive = negpos.data(); }), NS_ERR_INVALID_ARGUMENT,
               "positive[1] (-1)");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.positive = nullptr; in.passage.rows = 3; }),
               NS_ERR_INVALID_ARGUMENT, "4 queries and only 3 passages");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.passage.rows = 0; }), NS_ERR_INVALID_ARGUMENT,
               "passage.rows (0) must be at least 1");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.query.rows = 0; }), NS_ERR_INVALID_ARGUMENT,
               "query.rows (0) must be at least 1");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.query.data = nullptr; }), NS_ERR_INVALID_ARGUMENT,
               "query.data is NULL");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.query.ld = 2; }), NS_ERR_INVALID_ARGUMENT,
               "query.ld (2) is smaller than query.cols (3)");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.query.dtype = (ns_dtype)9; }), NS_ERR_UNSUPPORTED,
               "query.dtype (9)");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.extra.data = nullptr; }), NS_ERR_INVALID_ARGUMENT,
               "extra.data is NULL");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.query = f32_matrix(nanq.data(), 4, 3); }),
               NS_ERR_NONFINITE, "query[2][1] is not finite");
    EXPECT_BAD(with_in([&](ns_infonce_inputs &in) { in.hard = f32_matrix(infh.data(), 8, 3); }),
               NS_ERR_NONFINITE, "hard[4][1] is not finite");
}

TEST(InfoNCE, BackwardRejectsBadInput) {
    Ctx c(NS_BACKEND_CPU, 1);
    ASSERT_EQ(c.status, NS_OK) << c.why;
    Case k = make_case({4, 6, 3, 2, 2}, 1400, NS_F32, 0, true, true);
    const ns_infonce_inputs good = k.inputs();
    const ns_loss_options og = k.P.options();
    LibResult ok = run_lib(c, k);
    ASSERT_EQ(ok.bwd, NS_OK);
    auto call = [&](const ns_infonce_inputs *in, const ns_loss_options *o, const float *saved,
                    float gl, bool null_grads = false) {
        std::vector<float> dq(12, 5.f), dp(18, 5.f), dh(24, 5.f);
        float dt = 5.f;
        ns_infonce_grads g{dq.data(), dp.data(), dh.data(), &dt};
        ns_status st = ns_infonce_backward(c, in, o, saved, gl, null_grads ? nullptr : &g);
        auto same = [](const std::vector<float> &v) {
            return std::all_of(v.begin(), v.end(), [](float x) { return x == 5.f; });
        };
        return BadCall{st, ns_last_error(c), same(dq) && same(dp) && same(dh) && dt == 5.f};
    };
    EXPECT_BAD(call(&good, &og, nullptr, 1.f), NS_ERR_INVALID_ARGUMENT, "ns_infonce_backward: saved is NULL");
    EXPECT_BAD(call(&good, &og, ok.saved.data(), 1.f, true), NS_ERR_INVALID_ARGUMENT, "grads is NULL");
    EXPECT_BAD(call(&good, &og, ok.saved.data(), NAN), NS_ERR_NONFINITE, "grad_loss (nan)");
    EXPECT_BAD(call(nullptr, &og, ok.saved.data(), 1.f), NS_ERR_INVALID_ARGUMENT, "inputs is NULL");
    ns_loss_options o = og;
    o.temperature = -2;
    EXPECT_BAD(call(&good, &o, ok.saved.data(), 1.f), NS_ERR_INVALID_ARGUMENT, "temperature (-2)");
    std::vector<float> sv = ok.saved;
    sv[3] = INFINITY;
    EXPECT_BAD(call(&good, &og, sv.data(), 1.f), NS_ERR_NONFINITE, "saved[3] is not finite");
    ns_infonce_inputs in = good;
    std::vector<float> wide(6 * 5, 0.5f);
    in.passage = f32_matrix(wide.data(), 6, 5);
    EXPECT_BAD(call(&in, &og, ok.saved.data(), 1.f), NS_ERR_INVALID_ARGUMENT,
               "ns_infonce_backward: query has 3 columns but passage has 5");
    EXPECT_EQ(ns_infonce_backward(nullptr, &good, &og, ok.saved.data(), 1.f, nullptr), NS_ERR_INVALID_ARGUMENT);
}

// ---------------------------------------------------------------- CUDA against CPU

class InfoNCEBackend : public ::testing::TestWithParam<ns_backend> {};

#ifdef NS_HAVE_CUDA
// Forward then backward of c on a CUDA context (every input, id and group array copied to the
// device), or (fused) one ns_infonce_forward_backward call; grad_loss and the gradients wanted as
// run_lib's. fwd = NS_ERR_UNSUPPORTED when this build's CUDA loss is not available.
LibResult run_cuda(ns_context *ctx, const Case &k, bool fused = false, float grad_loss = 1.0f,
                   bool want_hard = true, bool want_query = true, bool want_passage = true) {
    LibResult r;
    const Problem &P = k.P;
    std::vector<void *> owned;
    auto put = [&](const void *h, size_t bytes) -> void * {
        if (!h || !bytes) return nullptr;
        void *p = nullptr;
        cudaMalloc(&p, bytes);
        cudaMemcpy(p, h, bytes, cudaMemcpyHostToDevice);
        owned.push_back(p);
        return p;
    };
    auto ids = [&](const std::vector<int64_t> &v) { return (const int64_t *)put(v.data(), v.size() * 8); };
    auto mat = [&](const Mat &m) {
        return m.m.dtype == NS_F32 ? put(m.f.data(), m.f.size() * 4) : put(m.half.data(), m.half.size() * 2);
    };
    ns_infonce_inputs in = k.inputs();
    ns_loss_options opt = P.options();
    ns_loss_groups g = P.gs;
    in.query.data = mat(k.q);
    in.passage.data = mat(k.p);
    in.hard.data = mat(k.hd);
    in.extra.data = mat(k.ex);
    if (in.positive) in.positive = ids(P.positive);
    if (in.hard_keep) in.hard_keep = (const uint8_t *)put(P.keep.data(), P.keep.size());
    if (in.passage_id) in.passage_id = ids(P.pid);
    if (in.hard_id) in.hard_id = ids(P.hid);
    if (in.extra_id) in.extra_id = ids(P.eid);
    if (opt.groups) {
        g.query = ids(P.qg), g.passage = ids(P.pg), g.hard = ids(P.hg), g.extra = ids(P.eg);
        opt.groups = &g;
    }
    // NaN where nothing is written: an output left out stays NaN on both paths
    const float nan = NAN;
    void *dper = put(std::vector<float>(P.B, nan).data(), P.B * 4);
    void *dsaved = put(std::vector<float>(P.B * NS_INFONCE_SAVED_PER_QUERY, nan).data(),
                       P.B * NS_INFONCE_SAVED_PER_QUERY * 4);
    std::vector<float> zq(P.B * P.d, nan), zp(P.N * P.d, nan), zh(std::max<int64_t>(P.B * P.h * P.d, 1), nan);
    void *dq = put(zq.data(), zq.size() * 4), *dp = put(zp.data(), zp.size() * 4),
         *dh = put(zh.data(), zh.size() * 4);
    ns_infonce_grads gr{want_query ? (float *)dq : nullptr, want_passage ? (float *)dp : nullptr,
                        want_hard && P.h ? (float *)dh : nullptr, &r.dtau};
    if (fused)
        r.fwd = r.bwd = ns_infonce_forward_backward(ctx, &in, &opt, grad_loss, &r.loss, (float *)dper,
                                                    (float *)dsaved, &gr);
    else
        r.fwd = ns_infonce_forward(ctx, &in, &opt, &r.loss, (float *)dper, (float *)dsaved);
    if (r.fwd == NS_OK) {
        if (!fused) r.bwd = ns_infonce_backward(ctx, &in, &opt, (const float *)dsaved, grad_loss, &gr);
        auto get = [](std::vector<float> &v, const void *d, size_t n) {
            v.resize(n);
            cudaMemcpy(v.data(), d, n * 4, cudaMemcpyDeviceToHost);
        };
        get(r.per, dper, P.B);
        get(r.saved, dsaved, P.B * NS_INFONCE_SAVED_PER_QUERY);
        get(r.dq, dq, zq.size());
        get(r.dp, dp, zp.size());
        get(r.dh, dh, zh.size());
    }
    for (void *p : owned) cudaFree(p);
    return r;
}
#endif

// The CUDA loss against the CPU one, every option set, with ids and masks, without and with
// groups (mask and down-weight), forward and backward.
TEST_P(InfoNCEBackend, MatchesCpuReference) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    Ctx cpu(NS_BACKEND_CPU, 2);
    int n = 0;
    for (double gmode : {-1.0, 0.0, 0.4})
        for (const OptionSet &o : kOptions) {
            Case k = make_case({33, 40, 16, 2, 8}, 1500 + n, NS_F32, 0, true, true);
            apply(k.P, o);
            if (gmode >= 0) add_groups(k, 1600 + n, gmode);
            n++;
            LibResult want = run_lib(cpu, k);
            ASSERT_EQ(want.bwd, NS_OK);
            if (!c.cuda()) continue;
#ifdef NS_HAVE_CUDA
            // down-weighted groups on tiny tiles: every row and column statistic merges tiles
            ns_infonce_set_tiles(c, gmode > 0 ? 7 : 0, gmode > 0 ? 9 : 0);
            LibResult got = run_cuda(c, k);
            ns_infonce_set_tiles(c, 0, 0);
            if (got.fwd == NS_ERR_UNSUPPORTED) GTEST_SKIP() << "CUDA InfoNCE not available: " << ns_last_error(c);
            ASSERT_EQ(got.fwd, NS_OK) << ns_last_error(c);
            ASSERT_EQ(got.bwd, NS_OK) << ns_last_error(c);
            SCOPED_TRACE(std::string(o.name) + (gmode < 0 ? "" : gmode == 0 ? " groups mask" : " groups weight"));
            EXPECT_TRUE(close(got.loss, want.loss, 1e-5, 1e-4)) << got.loss << " vs " << want.loss;
            auto d = [](const std::vector<float> &v) { return std::vector<double>(v.begin(), v.end()); };
            expect_close("per_query", got.per, d(want.per), 1e-5, 1e-4);
            expect_close("dQ", got.dq, d(want.dq), 1e-6, 1e-3);
            expect_close("dP", got.dp, d(want.dp), 1e-6, 1e-3);
            std::vector<float> gh(got.dh.begin(), got.dh.begin() + k.P.B * k.P.h * k.P.d);
            std::vector<float> wh(want.dh.begin(), want.dh.begin() + k.P.B * k.P.h * k.P.d);
            expect_close("dH", gh, d(wh), 1e-6, 1e-3);
            EXPECT_TRUE(close(got.dtau, want.dtau, 1e-6, 1e-3)) << got.dtau << " vs " << want.dtau;
#endif
        }
}

// Issue 11 item 7: the CUDA loss's outputs do not depend on the order blocks and threads run
// in (the host execution layer runs them forward, reverse and in seeded random orders): loss,
// dL/dτ and the column statistics are reduced in a fixed order, never by float atomics. Many
// blocks (B = 520: three finish blocks, shared positives, the symmetric and debiased terms).
// The fused forward + backward too, in every order the two calls' bits.
TEST_P(InfoNCEBackend, BitwiseTheSameInAnyBlockOrder) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    if (!c.cuda()) GTEST_SKIP() << "the CPU loss has its own determinism test";
#if defined(NS_HAVE_CUDA) && defined(NS_CUDA_HOST_LAYER)
    for (const OptionSet &o : {kOptions[8]}) {
        Case k = make_case({520, 150, 8, 1, 3}, 1700, NS_F32, 0, true, true);
        apply(k.P, o);
        add_groups(k, 1800, 0.5);
        // row tiles of 256 (the symmetric column statistics merge three of them); the fused
        // call in strips of two row tiles (its column pass) — the two calls' bits
        ns_infonce_set_tiles(c, 256, 160);
        cuda_host_set_order(0, 0);
        LibResult want = run_cuda(c, k);
        ASSERT_EQ(want.bwd, NS_OK) << ns_last_error(c);
        const std::pair<int, bool> runs[] = {{1, false}, {2, false}, {2, true}};
        for (auto [order, fused] : runs) {
                static unsigned long long seed = 0;
                cuda_host_set_order(order, ++seed);
                ns_infonce_set_strip(c, fused ? 2000000 : 0, 1);  // 2 row tiles of 6 column tiles
                LibResult got = run_cuda(c, k, fused);
                ns_infonce_set_strip(c, 0, 0);
                cuda_host_set_order(0, 0);
                ASSERT_EQ(got.bwd, NS_OK) << ns_last_error(c);
                const std::string what = std::string(o.name) + (fused ? " fused" : "") + " order " +
                                         std::to_string(order) + " seed " + std::to_string(seed);
                expect_same_bits(got, want, what);
            }
        ns_infonce_set_tiles(c, 0, 0);
    }
#else
    GTEST_SKIP() << "block orders are chosen by the host execution layer only";
#endif
}

// The CUDA fused forward + backward against the CUDA forward then backward, bit for bit: every
// option set, with and without ids, masks and groups (masked / down-weighted), f32, f16 and
// bf16, default and tiny tiles, one strip and many (a strip budget of one or two row tiles:
// the symmetric ones through the column pass), grad_loss ≠ 1 and gradients left out.
TEST_P(InfoNCEBackend, FusedIsForwardThenBackwardBitForBit) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    if (!c.cuda()) GTEST_SKIP() << "the CPU fused path has its own test (InfoNCE.FusedForwardBackward*)";
#ifdef NS_HAVE_CUDA
    // tiles, strip bytes: the default (one strip), several row tiles in one strip, strips of
    // one row tile (the symmetric column pass)
    const int64_t runs[][3] = {{0, 0, 0}, {7, 9, 0}, {3, 5, 3072}};
    int compared = 0;
    for (auto &t : runs) {
        const int64_t strip = t[2];
        ns_infonce_set_tiles(c, t[0], t[1]);
        ns_infonce_set_strip(c, strip, 1);
        for (ns_dtype dt : {NS_F32, NS_F16, NS_BF16})
            for (bool ids : {false, true})
                for (const OptionSet &o : kOptions) {
                    if (dt != NS_F32 && compared % 3 != 0) {  // halves: every third set
                        compared++;
                        continue;
                    }
                    Case k = make_case({11, 13, 6, 2, 4}, 2500 + compared, dt, 1, ids, ids);
                    apply(k.P, o);
                    if (ids) add_groups(k, 2900 + compared, compared % 2 ? 0.5 : 0.0);
                    const float gl = compared % 3 == 0 ? 0.37f : 1.0f;
                    const bool wq = compared % 5 != 1, wp = compared % 5 != 2, wh = compared % 5 != 3;
                    LibResult a = run_cuda(c, k, false, gl, wh, wq, wp);
                    LibResult b = run_cuda(c, k, true, gl, wh, wq, wp);
                    const std::string what = std::string(o.name) + (ids ? " ids" : "") + " dtype " +
                                             std::to_string((int)dt) + " tiles " + std::to_string(t[0]) +
                                             "x" + std::to_string(t[1]) + " strip " + std::to_string(strip);
                    ASSERT_EQ(a.bwd, NS_OK) << what << ": " << ns_last_error(c);
                    ASSERT_EQ(b.bwd, NS_OK) << what << ": " << ns_last_error(c);
                    expect_same_bits(a, b, what);
                    compared++;
                }
    }
    ns_infonce_set_tiles(c, 0, 0);
    ns_infonce_set_strip(c, 0, 0);
    EXPECT_EQ(compared, 3 * 3 * 2 * (int)(sizeof kOptions / sizeof kOptions[0]));
#endif
}

// Strips of fewer rows than the two calls' row tiles (a budget below one row tile): dC sums over
// other row chunks, so the gradients equal the two calls' only within f32 rounding — checked
// against the CPU fused path (1e-5 relative), the float64 loss and finite differences; and the
// fallback when even min_rows rows do not fit (the two calls' bits).
TEST_P(InfoNCEBackend, FusedThinStripsAndFallback) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
    if (!c.cuda()) GTEST_SKIP() << "CUDA's strips";
#ifdef NS_HAVE_CUDA
    Ctx cpu(NS_BACKEND_CPU, 2);
    int n = 0, thin_differs = 0;
    for (const OptionSet &o : {kOptions[0], kOptions[2], kOptions[5], kOptions[7], kOptions[8]}) {
        Case k = make_case({40, 45, 6, 2, 5}, 3100 + n, NS_F32, 0, true, true);
        apply(k.P, o);
        if (n % 2) add_groups(k, 3200 + n, n % 4 == 1 ? 0.0 : 0.5);
        n++;
        SCOPED_TRACE(o.name);
        // Row tiles of 16 rows and 8 columns: 7 column tiles (17 with the shared hard rows) of
        // 256-byte aligned slots; the budget holds 8 rows of them, not 16: strips of 8 rows.
        ns_infonce_set_tiles(c, 16, 8);
        const int64_t budget = o.share ? 17 * 64 * 4 : 7 * 64 * 4 + 64 * 4;
        ns_infonce_set_strip(c, budget, 1);
        LibResult thin = run_cuda(c, k, true, 0.8f);
        ns_infonce_set_strip(c, budget, 9);  // 8-row strips refused: the forward then the backward
        LibResult fb = run_cuda(c, k, true, 0.8f);
        ns_infonce_set_strip(c, 0, 0);
        LibResult two = run_cuda(c, k, false, 0.8f);
        ns_infonce_set_tiles(c, 0, 0);
        ASSERT_EQ(thin.bwd, NS_OK) << ns_last_error(c);
        ASSERT_EQ(fb.bwd, NS_OK) << ns_last_error(c);
        ASSERT_EQ(two.bwd, NS_OK) << ns_last_error(c);
        EXPECT_TRUE(same_bits(fb.dq, two.dq) && same_bits(fb.dp, two.dp) && same_bits(fb.dh, two.dh) &&
                    same_bits(fb.saved, two.saved) && std::memcmp(&fb.dtau, &two.dtau, 4) == 0)
            << "the fallback is the two calls";
        thin_differs += !same_bits(thin.dp, two.dp) || !same_bits(thin.dh, two.dh);
        LibResult want = run_lib_fused(cpu, k, 0.8f);
        ASSERT_EQ(want.bwd, NS_OK);
        auto d = [](const std::vector<float> &v) { return std::vector<double>(v.begin(), v.end()); };
        EXPECT_TRUE(close(thin.loss, want.loss, 1e-6, 1e-5)) << thin.loss << " vs " << want.loss;
        expect_close("per_query", thin.per, d(want.per), 1e-6, 1e-5);
        expect_close("dQ", thin.dq, d(want.dq), 1e-7, 1e-5);
        expect_close("dP", thin.dp, d(want.dp), 1e-7, 1e-5);
        std::vector<float> gh(thin.dh.begin(), thin.dh.begin() + k.P.B * k.P.h * k.P.d);
        std::vector<float> wh(want.dh.begin(), want.dh.begin() + k.P.B * k.P.h * k.P.d);
        expect_close("dH", gh, d(wh), 1e-7, 1e-5);
        EXPECT_TRUE(close(thin.dtau, want.dtau, 1e-6, 1e-5)) << thin.dtau << " vs " << want.dtau;
        if (n % 2 == 0) continue;  // the float64 reference and finite differences on half of them
        RefGrads g = fd_grads(k.P, 1e-3, -1);
        std::vector<double> per;
        const double L = ref_loss(k.P, k.P.q.data(), k.P.p.data(), k.P.hd.data(), k.P.ex.data(), k.P.tau, &per);
        EXPECT_TRUE(close(thin.loss, L, 1e-5, 1e-5)) << thin.loss << " vs " << L;
        auto scaled = [](std::vector<double> v) {
            for (double &x : v) x *= 0.8;
            return v;
        };
        expect_close("dQ vs finite differences", thin.dq, scaled(g.q), 1e-6, 2e-3);
        expect_close("dP vs finite differences", thin.dp, scaled(g.p), 1e-6, 2e-3);
        expect_close("dH vs finite differences", gh, scaled(g.hd), 1e-6, 2e-3);
        EXPECT_TRUE(close(thin.dtau, 0.8 * g.tau, 1e-5, 2e-3)) << thin.dtau << " vs " << 0.8 * g.tau;
    }
    // 8-row chunks of dC round differently from 16-row ones somewhere: the strips were thin
    EXPECT_GT(thin_differs, 0);
#endif
}

// Bad input to the CUDA fused call: the data checks name ns_infonce_forward_backward, nothing
// is written; a host loss while capturing is refused and the capture stays valid.
TEST_P(InfoNCEBackend, FusedRejectsBadInput) {
    Ctx c(GetParam(), 1);
    NS_REQUIRE_BACKEND(c);
    if (!c.cuda()) GTEST_SKIP() << "InfoNCE.FusedForwardBackwardRejectsBadInput";
#ifdef NS_HAVE_CUDA
    Case k = make_case({5, 6, 3, 1, 0}, 3300, NS_F32, 0, false, true);
    auto expect_refused = [&](Case &bad, ns_status code, const char *text) {
        LibResult r = run_cuda(c, bad, true);
        EXPECT_EQ(r.fwd, code) << ns_last_error(c);
        EXPECT_NE(std::string(ns_last_error(c)).find(text), std::string::npos) << ns_last_error(c);
        EXPECT_TRUE(std::isnan(r.loss)) << "loss written on failure";
        EXPECT_TRUE(std::isnan(r.dtau)) << "dtau written on failure";
    };
    Case q = k;
    q.q.f[2 * 3 + 1] = NAN;
    expect_refused(q, NS_ERR_NONFINITE, "ns_infonce_forward_backward: query[2][1] is not finite");
    Case h = k;
    h.hd.f[4 * 3 + 2] = INFINITY;
    expect_refused(h, NS_ERR_NONFINITE, "ns_infonce_forward_backward: hard[4][2] is not finite");
    Case p = k;
    p.P.positive[3] = 6;
    expect_refused(p, NS_ERR_INVALID_ARGUMENT, "ns_infonce_forward_backward: positive[3] (6) is not a passage row");
#ifdef NS_CUDA_HOST_LAYER
    cudaStream_t s;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    ASSERT_EQ(ns_context_set_stream(c, s), NS_OK);
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    ns_infonce_inputs in = k.inputs();  // host pointers: refused before anything reads them
    ns_loss_options o = k.P.options();
    float loss = 5.f;
    ns_infonce_grads g{nullptr, nullptr, nullptr, nullptr};
    EXPECT_EQ(ns_infonce_forward_backward(c, &in, &o, 1.f, &loss, nullptr, (float *)1, &g), NS_ERR_UNSUPPORTED);
    EXPECT_NE(std::string(ns_last_error(c)).find("captured into a CUDA graph"), std::string::npos) << ns_last_error(c);
    cudaGraph_t graph = nullptr;
    EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess) << "the capture was invalidated";
    if (graph) cudaGraphDestroy(graph);
    EXPECT_EQ(loss, 5.f);
    ASSERT_EQ(ns_context_set_stream(c, nullptr), NS_OK);
    cudaStreamDestroy(s);
#endif
#endif
}

// The fused call's host synchronisations: its validation and one read of the loss and dL/dτ
// (the two calls: four — each call's validation, the loss, dτ).
TEST_P(InfoNCEBackend, FusedSynchronisesTwice) {
    Ctx c(GetParam(), 2);
    NS_REQUIRE_BACKEND(c);
#if defined(NS_HAVE_CUDA) && defined(NS_CUDA_HOST_LAYER)
    if (!c.cuda()) GTEST_SKIP() << "counts CUDA synchronisations";
    Case k = make_case({30, 20, 8, 2, 3}, 3400, NS_F32, 0, true, true);
    apply(k.P, kOptions[8]);
    ASSERT_EQ(run_cuda(c, k, true).bwd, NS_OK) << ns_last_error(c);  // sizes the workspace
    auto syncs = [&](bool fused) {
        const unsigned long long s0 = cuda_host_sync_count();
        LibResult r = run_cuda(c, k, fused);  // its copies synchronise too: counted apart
        EXPECT_EQ(r.bwd, NS_OK) << ns_last_error(c);
        return cuda_host_sync_count() - s0;
    };
    const unsigned long long fused = syncs(true), two = syncs(false);
    EXPECT_EQ(two - fused, 2u) << "fused " << fused << ", two calls " << two;
#else
    GTEST_SKIP() << "synchronisations are counted by the host execution layer";
#endif
}

INSTANTIATE_TEST_SUITE_P(B, InfoNCEBackend, NS_BACKENDS, BackendName());

// Issue 11 item 7, as a rule on the source: a float or double atomicAdd makes the CUDA loss's
// bits depend on block scheduling (the host layer runs atomics exactly, so the test above can
// miss one whose rounding hides in a float output). Every atomicAdd in the loss kernels must be
// an integer one, marked so on its line with "ns-int-atomic".
TEST(InfoNCEDeterminism, LossKernelsHaveNoFloatAtomics) {
    int files = 0;
    for (const char *name : {"cuda_infonce.cu", "cuda_infonce.cuh", "cuda_infonce_forward.cu",
                             "cuda_infonce_backward.cu", "cuda_infonce_fused.cu"}) {
        std::string path = std::string(NS_SOURCE_DIR) + "/kernels/" + name;
        FILE *f = std::fopen(path.c_str(), "r");
        ASSERT_TRUE(f) << path;
        files++;
        char line[4096];
        for (int no = 1; std::fgets(line, sizeof line, f); no++) {
            std::string l(line);
            if (l.find("atomicAdd(") == std::string::npos) continue;
            EXPECT_NE(l.find("ns-int-atomic"), std::string::npos)
                << name << ":" << no << ": an atomicAdd not marked as an integer one: " << l;
        }
        std::fclose(f);
    }
    EXPECT_EQ(files, 5);
}
