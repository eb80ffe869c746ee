# Replays the CUDA InfoNCE (kernels/cuda_infonce*.cu, formulas of src/hostdevice/ns_loss_math.h) in numpy — the same tiles, kernels, masks,
# statistics and GEMMs — and compares it with the CPU backend of the built library (ctypes).
# usage: python3 tests/gpu_sim/sim_infonce.py path/to/libnegsamp.so
import ctypes as C, sys, math
import numpy as np
lib = C.CDLL(sys.argv[1])
f32 = np.float32

class Mat(C.Structure):
    _fields_ = [("data", C.c_void_p), ("dtype", C.c_int), ("rows", C.c_int64), ("cols", C.c_int64), ("ld", C.c_int64)]
class Inputs(C.Structure):
    _fields_ = [("query", Mat), ("passage", Mat), ("positive", C.c_void_p), ("hard", Mat), ("hard_per_query", C.c_int64),
                ("hard_keep", C.c_void_p), ("extra", Mat), ("passage_id", C.c_void_p), ("hard_id", C.c_void_p),
                ("extra_id", C.c_void_p)]
class Opts(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("temperature", C.c_float), ("symmetric", C.c_int), ("mask_same_id", C.c_int),
                ("tau_plus", C.c_float), ("beta", C.c_float), ("share_hard", C.c_int)]
class Grads(C.Structure):
    _fields_ = [("query", C.c_void_p), ("passage", C.c_void_p), ("hard", C.c_void_p), ("temperature", C.c_void_p)]
class CtxOpts(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("backend", C.c_int), ("device", C.c_int), ("stream", C.c_void_p), ("threads", C.c_int)]
lib.ns_last_error.restype = C.c_char_p

def mat(a):
    return Mat(a.ctypes.data if a.size else None, 0, a.shape[0], a.shape[1], 0)
def ptr(a):
    return a.ctypes.data if a is not None else None

def cpu(q, p, pos, hd, h, hkeep, ex, pid, hid, eid, o):
    ctx = C.c_void_p()
    co = CtxOpts(C.sizeof(CtxOpts), 1, 0, None, 1)
    assert lib.ns_context_create(C.byref(ctx), C.byref(co)) == 0
    inp = Inputs(mat(q), mat(p), ptr(pos), mat(hd), h, ptr(hkeep), mat(ex), ptr(pid), ptr(hid), ptr(eid))
    B, N, d = q.shape[0], p.shape[0], q.shape[1]
    loss = C.c_float(); pq = np.zeros(B, f32); sv = np.zeros(B * 8, f32)
    st = lib.ns_infonce_forward(ctx, C.byref(inp), C.byref(o), C.byref(loss), C.c_void_p(ptr(pq)), C.c_void_p(ptr(sv)))
    assert st == 0, lib.ns_last_error(ctx)
    gq = np.zeros((B, d), f32); gp = np.zeros((N, d), f32); gh = np.zeros((max(1, B * h), d), f32); dt = C.c_float()
    g = Grads(ptr(gq), ptr(gp), ptr(gh) if h else None, C.cast(C.byref(dt), C.c_void_p))
    st = lib.ns_infonce_backward(ctx, C.byref(inp), C.byref(o), C.c_void_p(ptr(sv)), C.c_float(1.7), C.byref(g))
    assert st == 0, lib.ns_last_error(ctx)
    lib.ns_context_destroy(ctx)
    return loss.value, pq, sv.reshape(B, 8), gq, gp, gh, dt.value

# ------------------------------------------------------------------ the CUDA algorithm
K_PASSAGE, K_HARD, K_EXTRA, K_OWN = range(4)
def emulate(q, p, pos, hd, h, hkeep, ex, pid, hid, eid, o, tb, tn):
    B, N, d = q.shape[0], p.shape[0], q.shape[1]; E = ex.shape[0]
    tau = f32(o.temperature); inv_tau = f32(f32(1.0) / tau); beta = f32(o.beta)
    general = o.tau_plus > 0 or o.beta > 0; sym = o.symmetric; same = o.mask_same_id
    own = h > 0 and not o.share_hard; share = h > 0 and o.share_hard
    pos_of = lambda i: pos[i] if pos is not None else i
    pid_of = lambda j: pid[j] if pid is not None else j
    posid = [pid_of(pos_of(i)) for i in range(B)]
    def hard_masked(r, pi):
        if hkeep is not None and not hkeep[r]: return True
        if hid is not None and (hid[r] == -1 or (same and hid[r] == pi)): return True
        return False
    def col_class(kind, i, j):
        ps, pi = pos_of(i), posid[i]
        if kind == K_PASSAGE:
            if j == ps: return 2
            return 1 if same and pid_of(j) == pi else 0
        if kind == K_HARD: return 1 if hard_masked(j, pi) else 0
        if kind == K_EXTRA: return 1 if eid is not None and same and eid[j] == pi else 0
        return 1 if hard_masked(i * h + j, pi) else 0
    blocks = [(K_PASSAGE, p)] + ([(K_HARD, hd)] if share else []) + ([(K_EXTRA, ex)] if E > 0 else [])
    m = np.full(B, -np.inf, f32); a = np.zeros(B); w = np.zeros(B); n = np.zeros(B, np.int64)
    sv = np.zeros((B, 8), f32)
    ispos = np.zeros(N, bool); ispos[[pos_of(i) for i in range(B)]] = True
    cmax = np.full(N, -np.inf); csum = np.zeros(N)
    def rows(x, r0, j0, kind):
        for kk in range(x.shape[0]):
            i = r0 + kk; cl = [col_class(kind, i, j0 + c) for c in range(x.shape[1])]
            vals = [x[kk, c] for c in range(x.shape[1]) if cl[c] == 0]
            for c in range(x.shape[1]):
                if cl[c] == 2: sv[i, 7] = x[kk, c]
            if not vals: continue
            tmax = max(vals); m0 = m[i]; mn = tmax if tmax > m0 else m0
            if n[i]:
                a[i] *= math.exp(float(f32(1) + beta) * (float(m0) - float(mn)))
                if beta > 0: w[i] *= math.exp(float(beta) * (float(m0) - float(mn)))
            sa = sw = 0.0
            for v in vals:
                e = f32(v - mn)
                if beta > 0:
                    vv = f32(np.exp(f32(beta * e))); sa += float(f32(vv * f32(np.exp(e)))); sw += float(vv)
                else:
                    sa += float(f32(np.exp(e)))
            a[i] += sa; w[i] += sw if beta > 0 else len(vals); m[i] = mn; n[i] += len(vals)
    def cols(x, r0, j0):
        for c in range(x.shape[1]):
            j = j0 + c
            if not ispos[j]: continue
            ks = [kk for kk in range(x.shape[0]) if not (same and posid[r0 + kk] == pid_of(j))]
            if not ks: continue
            tmax = max(float(x[kk, c]) for kk in ks); mn = max(tmax, cmax[j])
            cs = csum[j] * math.exp(cmax[j] - mn)
            t = sum(float(f32(np.exp(f32(float(x[kk, c]) - mn)))) for kk in ks)
            cmax[j] = mn; csum[j] = cs + t
    for r0 in range(0, B, tb):
        qq = q[r0:r0 + tb]
        for kind, M in blocks:
            for j0 in range(0, M.shape[0], tn):
                x = (inv_tau * (qq.astype(np.float64) @ M[j0:j0 + tn].T.astype(np.float64))).astype(f32)
                if sym and kind == K_PASSAGE: cols(x, r0, j0)
                rows(x, r0, j0, kind)
        if own:
            x = np.stack([(inv_tau * (hd[(r0 + kk) * h:(r0 + kk + 1) * h].astype(np.float64) @ qq[kk].astype(np.float64))).astype(f32) for kk in range(qq.shape[0])])
            rows(x, r0, 0, K_OWN)
    total = 0.0; L_all = np.zeros(B)
    for i in range(B):
        lp = float(sv[i, 7]); mi = float(m[i]); ni = n[i]
        if not general:
            M_ = mi if ni and m[i] > lp else lp
            z = math.exp(lp - M_) + (math.exp(mi - M_) * a[i] if ni else 0.0); lse = M_ + math.log(z)
            L = lse - lp; sv[i, 0] = lse; sv[i, 1] = 1; sv[i, 2] = 0; sv[i, 3] = math.exp(lp - lse) - 1; sv[i, 6] = 0
        elif ni == 0:
            L = 0.0; sv[i, [0, 1, 2, 3, 6]] = 0
        else:
            tp, bt, tu, nn = float(f32(o.tau_plus)), float(beta), float(tau), float(ni)
            fl = -1.0 / tu; M_ = max(lp, mi, fl); ratio = a[i] / w[i]; ep = math.exp(lp - M_)
            g1 = (nn * math.exp(mi - M_) * ratio - tp * nn * ep) / (1 - tp); g2 = nn * math.exp(fl - M_)
            cl = not (g1 >= g2); z = ep + (g2 if cl else g1); L = -lp + M_ + math.log(z); sv[i, 0] = m[i]
            if not cl:
                Kf = nn * math.exp(mi - M_) / ((1 - tp) * w[i] * z)
                sv[i, 1] = Kf * (1 + bt); sv[i, 2] = Kf * bt * ratio; sv[i, 3] = -1 + (ep - tp * nn * ep / (1 - tp)) / z; sv[i, 6] = 0
            else:
                sv[i, 1] = sv[i, 2] = 0; sv[i, 3] = -1 + ep / z; sv[i, 6] = g2 / (z * tu * tu)
        sv[i, 5] = L; sv[i, 4] = 0
        if sym:
            j = pos_of(i); lpf = float(sv[i, 7])
            if csum[j] > 0:
                clse = cmax[j] + math.log(csum[j])
                if same:
                    M_ = max(clse, lpf); clse = M_ + math.log(math.exp(clse - M_) + math.exp(lpf - M_))
            else:
                clse = lpf
            sv[i, 4] = clse; L = 0.5 * (L + (clse - lpf))
        L_all[i] = L; total += L
    loss = total / B
    # backward
    gl = 1.7; wgt = gl / B * (0.5 if sym else 1.0); wt = f32(wgt / float(tau))
    gq = np.zeros((B, d)); gp = np.zeros((N, d)); gh = np.zeros((max(1, B * h), d)); rtau = np.zeros(B)
    colc = np.full(N, np.inf, f32)
    if sym:
        cm = {}; cs = {}
        for i in range(B):
            j = pos_of(i); v = -float(sv[i, 4]); cm[j] = max(cm.get(j, -np.inf), f32(v))
        for i in range(B):
            j = pos_of(i); cs[j] = cs.get(j, 0.0) + math.exp(-float(sv[i, 4]) - float(cm[j]))
        for j in cm: colc[j] = f32(-(float(cm[j]) + math.log(cs[j])))
    def grad(x, r0, j0, kind):
        G = np.zeros_like(x)
        for kk in range(x.shape[0]):
            i = r0 + kk; s = sv[i]; shift, cu, cv, gpos, clse = s[0], s[1], s[2], s[3], s[4]
            for c in range(x.shape[1]):
                j = j0 + c; xv = x[kk, c]; cl = col_class(kind, i, j); g = f32(0)
                if cl == 2: g = gpos
                elif cl == 1: g = f32(0)
                elif cu != 0:
                    e = f32(xv - shift)
                    if cv != 0:
                        v = f32(np.exp(f32(beta * e))); g = f32(f32(cu * f32(v * f32(np.exp(e)))) - f32(cv * v))
                    else:
                        g = f32(cu * f32(np.exp(f32((f32(1) + beta) * e))))
                if kind == K_PASSAGE and sym and colc[j] != np.inf:
                    if same and pid_of(j) == posid[i]:
                        if j == pos_of(i): g = f32(g + f32(f32(np.exp(f32(xv - clse))) - f32(1)))
                    else:
                        g = f32(g + f32(f32(np.exp(f32(xv - colc[j]))) - (f32(1) if j == pos_of(i) else f32(0))))
                rtau[i] += float(g) * float(xv); G[kk, c] = f32(g * wt)
        return G
    for r0 in range(0, B, tb):
        qq = q[r0:r0 + tb].astype(np.float64)
        for kind, M in blocks:
            for j0 in range(0, M.shape[0], tn):
                Mt = M[j0:j0 + tn].astype(np.float64)
                x = (inv_tau * (qq @ Mt.T)).astype(f32)
                G = grad(x, r0, j0, kind).astype(np.float64)
                gq[r0:r0 + tb] += G @ Mt
                if kind == K_PASSAGE: gp[j0:j0 + tn] += G.T @ qq
                if kind == K_HARD: gh[j0:j0 + tn] += G.T @ qq
        if own:
            for kk in range(qq.shape[0]):
                Hk = hd[(r0 + kk) * h:(r0 + kk + 1) * h].astype(np.float64)
                x = (inv_tau * (Hk @ qq[kk])).astype(f32)[None, :]
                # the kernel's row r0+kk of the tile, K_OWN columns 0..h
                G = grad(x, r0 + kk, 0, K_OWN).astype(np.float64)
                gq[r0 + kk] += (G @ Hk)[0]
                gh[(r0 + kk) * h:(r0 + kk + 1) * h] = G.T @ qq[kk:kk + 1]
    dtau = wgt * (-rtau.sum() / float(tau) + float(sv[:, 6].astype(np.float64).sum()))
    return loss, L_all, sv, gq, gp, gh, dtau

rng = np.random.default_rng(3)
cases = 0
for trial in range(60):
    B = int(rng.integers(1, 9)); N = int(rng.integers(max(1, B // 2), 10)); d = int(rng.integers(1, 5))
    h = int(rng.integers(0, 3)); E = int(rng.integers(0, 4))
    q = rng.uniform(-1, 1, (B, d)).astype(f32); p = rng.uniform(-1, 1, (N, d)).astype(f32)
    hd = rng.uniform(-1, 1, (B * h, d)).astype(f32); ex = rng.uniform(-1, 1, (E, d)).astype(f32)
    pos = rng.integers(0, N, B).astype(np.int64) if rng.random() < 0.7 or B > N else None
    pid = rng.integers(0, N // 2 + 1, N).astype(np.int64) if rng.random() < 0.6 else None
    hid = np.where(rng.random(B * h) < 0.2, -1, rng.integers(0, N + 3, B * h)).astype(np.int64) if h and rng.random() < 0.7 else None
    hkeep = (rng.random(B * h) < 0.8).astype(np.uint8) if h and rng.random() < 0.5 else None
    eid = rng.integers(0, N + 3, E).astype(np.int64) if E and rng.random() < 0.7 else None
    o = Opts(C.sizeof(Opts), float(rng.choice([0.05, 0.3, 1.0])), int(rng.integers(0, 2)), int(rng.integers(0, 2)),
             float(rng.choice([0.0, 0.0, 0.1])), float(rng.choice([0.0, 0.0, 0.5])), int(rng.integers(0, 2)))
    args = (q, p, pos, hd, h, hkeep, ex, pid, hid, eid, o)
    ref = cpu(*args)
    got = emulate(*args, tb=int(rng.integers(1, 4)), tn=int(rng.integers(1, 5)))
    def chk(name, a, b, rtol=2e-4):
        a = np.asarray(a, np.float64); b = np.asarray(b, np.float64)
        scale = max(1e-6, float(np.max(np.abs(b))) if b.size else 1)
        assert np.max(np.abs(a - b), initial=0) <= rtol * scale + 1e-6, (trial, name, a, b, o.symmetric, o.mask_same_id, o.tau_plus, o.beta, o.share_hard)
    chk("loss", got[0], ref[0]); chk("per_query", got[1], ref[1]); chk("saved loss", got[2][:, 5], ref[2][:, 5])
    chk("gq", got[3], ref[3]); chk("gp", got[4], ref[4])
    if h: chk("gh", got[5][:B * h], ref[5][:B * h])
    chk("dtau", got[6], ref[6], 1e-3)
    cases += 1
print(f"ok: {cases} random InfoNCE cases (all options, tiny tiles) — the CUDA algorithm replayed in numpy matches the CPU backend")
