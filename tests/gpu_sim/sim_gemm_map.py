# Checks the row-major -> cuBLAS column-major mapping of ns_cuda_gemm / ns_cuda_gemm_batched at
# every call site's argument pattern, emulating cublasGemmEx on flat buffers (with its ld checks).
import numpy as np
rng = np.random.default_rng(0)

def cublas(opa, opb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, offa=0, offb=0, offc=0):
    # column-major: element (r, c) of X at X[off + r + c*ld]
    ra, ca = (M, K) if opa == 'N' else (K, M)
    rb, cb = (K, N) if opb == 'N' else (N, K)
    assert lda >= max(1, ra) and ldb >= max(1, rb) and ldc >= max(1, M), (lda, ra, ldb, rb, ldc, M)
    a = np.array([[A[offa + r + c * lda] for c in range(ca)] for r in range(ra)])
    b = np.array([[B[offb + r + c * ldb] for c in range(cb)] for r in range(rb)])
    if opa == 'T': a = a.T
    if opb == 'T': b = b.T
    res = alpha * a @ b
    for r in range(M):
        for c in range(N):
            C[offc + r + c * ldc] = res[r, c] + (beta * C[offc + r + c * ldc] if beta else 0)

def ns_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, offa=0, offb=0, offc=0):
    cublas('T' if tb else 'N', 'T' if ta else 'N', n, m, k, alpha, b, ldb, a, lda, beta, c, ldc, offb, offa, offc)

def ns_gemm_batched(ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, batch):
    for i in range(batch):
        ns_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, i * sa, i * sb, i * sc)

def rm(buf, rows, cols, ld, off=0):  # row-major view
    return np.array([[buf[off + r * ld + c] for c in range(cols)] for r in range(rows)])

d, nb, nc, h = 5, 3, 4, 2
ldq, ldp, ldh = 7, 6, 8
Q = rng.standard_normal(nb * ldq); P = rng.standard_normal(nc * ldp); H = rng.standard_normal(nb * h * ldh)
Qm, Pm = rm(Q, nb, d, ldq), rm(P, nc, d, ldp)
# logits: S (nb x nc, ld nc) = a * Q P^T
S = np.zeros(nb * nc); ns_gemm(0, 1, nb, nc, d, 0.5, Q, ldq, P, ldp, 0.0, S, nc)
assert np.allclose(rm(S, nb, nc, nc), 0.5 * Qm @ Pm.T)
# dQ += G C  (G nb x nc ld nc; C rows ld ldp; out ld d)
G = rng.standard_normal(nb * nc); Gm = rm(G, nb, nc, nc)
dQ = rng.standard_normal(nb * d); dQ0 = rm(dQ, nb, d, d)
ns_gemm(0, 0, nb, d, nc, 1.0, G, nc, P, ldp, 1.0, dQ, d)
assert np.allclose(rm(dQ, nb, d, d), dQ0 + Gm @ Pm)
# dC += G^T Q
dC = rng.standard_normal(nc * d); dC0 = rm(dC, nc, d, d)
ns_gemm(1, 0, nc, d, nb, 1.0, G, nc, Q, ldq, 1.0, dC, d)
assert np.allclose(rm(dC, nc, d, d), dC0 + Gm.T @ Qm)
# own hard logits: per query k, x_k (1 x h) = a q_k H_k^T ; htile ld h
X = np.zeros(nb * h)
ns_gemm_batched(0, 1, 1, h, d, 0.5, Q, ldq, ldq, H, ldh, h * ldh, 0.0, X, h, h, nb)
for kk in range(nb):
    Hk = rm(H, h, d, ldh, kk * h * ldh)
    assert np.allclose(rm(X, 1, h, h, kk * h), 0.5 * Qm[kk:kk + 1] @ Hk.T)
# dq_k += G_k H_k
Gh = rng.standard_normal(nb * h)
dq = rng.standard_normal(nb * d); dq0 = rm(dq, nb, d, d)
ns_gemm_batched(0, 0, 1, d, h, 1.0, Gh, h, h, H, ldh, h * ldh, 1.0, dq, d, d, nb)
for kk in range(nb):
    Hk = rm(H, h, d, ldh, kk * h * ldh)
    assert np.allclose(rm(dq, 1, d, d, kk * d), dq0[kk:kk + 1] + rm(Gh, 1, h, h, kk * h) @ Hk)
# dH_k = G_k^T q_k
dH = np.zeros(nb * h * d)
ns_gemm_batched(1, 0, h, d, 1, 1.0, Gh, h, h, Q, ldq, ldq, 0.0, dH, d, h * d, nb)
for kk in range(nb):
    assert np.allclose(rm(dH, h, d, d, kk * h * d), rm(Gh, 1, h, h, kk * h).T @ Qm[kk:kk + 1])
print("ok: every GEMM call pattern maps to the intended row-major product (ld checks pass)")
