# Phase-by-phase simulation of ns_k_topk_tile / merge_collected (threads run sequentially inside a
# barrier-delimited phase, a valid interleaving) against a sorted reference.
import random, math
INF = float('inf'); PAD = 2**31 - 1
T, ITEMS = 4, 2; STEP = T * ITEMS; CAP = 16

def before(av, ai, bv, bi): return av > bv or (av == bv and ai < bi)
def rank_in(v, ix, n, x, xi):
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if before(v[mid], ix[mid], x, xi): lo = mid + 1
        else: hi = mid
    return lo

def merge(cv, ci, c, tv, ti, k):
    p = 1
    while p < c: p <<= 1
    for t in range(c, p): cv[t] = -INF; ci[t] = PAD
    size = 2
    while size <= p:
        stride = size >> 1
        while stride > 0:
            for t in range(p >> 1):
                i = 2 * t - (t & (stride - 1)); j = i + stride
                up = (i & size) == 0
                a, b, ai, bi = cv[i], cv[j], ci[i], ci[j]
                sw = before(b, bi, a, ai) if up else before(a, ai, b, bi)
                if sw: cv[i], cv[j], ci[i], ci[j] = b, a, bi, ai
            stride >>= 1
        size <<= 1
    p0 = rank_in(tv, ti, k, cv[0], ci[0])
    sv = [None] * k; si = [None] * k
    for i in range(p0, k):
        pos = i + rank_in(cv, ci, c, tv[i], ti[i])
        if pos < k: sv[pos - p0] = tv[i]; si[pos - p0] = ti[i]
    for j in range(c):
        pos = j + rank_in(tv, ti, k, cv[j], ci[j])
        if pos < k: sv[pos - p0] = cv[j]; si[pos - p0] = ci[j]
    for i in range(p0, k):
        assert sv[i - p0] is not None, "hole in merged suffix"
        tv[i] = sv[i - p0]; ti[i] = si[i - p0]

def tile(row, c0, tv, ti, k, excl):
    cv = [0.0] * CAP; ci = [0] * CAP
    count = 0; thr = (tv[k - 1], ti[k - 1]); c = 0
    base = 0
    while base < len(row):
        if c > CAP - STEP:
            merge(cv, ci, c, tv, ti, k); count = 0; thr = (tv[k - 1], ti[k - 1])
        for tid in range(T):
            for it in range(ITEMS):
                j = base + it * T + tid
                if j >= len(row): break
                s = row[j]; g = c0 + j
                if not before(s, g, *thr): continue
                if g in excl: continue
                cv[count] = s; ci[count] = g; count += 1
        c = count
        base += STEP
    if c > 0: merge(cv, ci, c, tv, ti, k)

random.seed(1)
for trial in range(3000):
    N = random.randint(1, 120); k = random.randint(1, N); nt = random.randint(1, 40)
    vals = [random.choice([round(random.uniform(-1, 1), 1), random.uniform(-1, 1)]) for _ in range(N)]
    excl = set(random.sample(range(N), random.randint(0, min(5, N))))
    tv = [-INF] * k; ti = [PAD] * k
    for c0 in range(0, N, nt):
        tile(vals[c0:c0 + nt], c0, tv, ti, k, excl)
    ref = sorted([(-v, j) for j, v in enumerate(vals) if j not in excl])[:k]
    got = [(-v, j) for v, j in zip(tv, ti) if j != PAD]
    assert got == ref, (trial, N, k, nt, got, ref)
    assert all(j == PAD for j in ti[len(ref):])
print("ok: 3000 random cases (ties, exclusions, k = N, tiny tiles) match the sorted reference")
