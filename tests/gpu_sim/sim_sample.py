# Simulation of ns_k_sample's two bitonic phases against the CPU semantics (first kept occurrence
# of an id; best key first, ties to the lower column; count = min(eligible, m)).
import random
INF = float('inf'); LLMAX = 2**63 - 1; INEL = 1 << 30
def bitonic(P, less_first, arrs):
    size = 2
    while size <= P:
        stride = size >> 1
        while stride > 0:
            for t in range(P >> 1):
                x = 2 * t - (t & (stride - 1)); y = x + stride
                up = (x & size) == 0
                yf = less_first(y, x)
                if (yf if up else not yf):
                    for a in arrs: a[x], a[y] = a[y], a[x]
            stride >>= 1
        size <<= 1
def kernel(ids, keep, keys, m):
    C = len(ids); P = 1
    while P < C: P <<= 1
    sid = [0] * P; scol = [0] * P; first = [0] * P
    for j in range(P):
        el = j < C and ids[j] != -1 and (keep is None or keep[j])
        sid[j] = ids[j] if el else LLMAX; scol[j] = j if el else j | INEL
    bitonic(P, lambda y, x: sid[y] < sid[x] or (sid[y] == sid[x] and scol[y] < scol[x]), [sid, scol])
    for p in range(P):
        c = scol[p]
        if not (c & INEL): first[c] = int(p == 0 or sid[p - 1] != sid[p])
        elif (c & ~INEL) < P: first[c & ~INEL] = 0
    skey = [0.0] * P; n = 0
    for j in range(P):
        ok = j < P and first[j]
        skey[j] = keys[j] if ok else -INF; scol[j] = j if ok else j | INEL; n += ok
    def yfirst(y, x):
        ex, ey = (scol[x] & INEL) != 0, (scol[y] & INEL) != 0
        if ex != ey: return ex
        return skey[y] > skey[x] or (skey[y] == skey[x] and scol[y] < scol[x])
    bitonic(P, yfirst, [skey, scol])
    found = min(n, m)
    return [ids[scol[r]] if r < found else -1 for r in range(m)], found
def ref(ids, keep, keys, m):
    seen = set(); el = []
    for j, i in enumerate(ids):
        if i == -1 or (keep is not None and not keep[j]): continue
        if i in seen: continue
        seen.add(i); el.append((-keys[j], j))
    el.sort(); el = el[:m]
    return [ids[j] for _, j in el] + [-1] * (m - len(el)), len(el)
random.seed(2)
for t in range(3000):
    C = random.randint(1, 40); m = random.randint(1, C)
    ids = [random.choice([-1, random.randint(0, C)]) if random.random() < 0.2 else random.randint(0, C) for _ in range(C)]
    keep = None if random.random() < 0.3 else [random.random() < 0.8 for _ in range(C)]
    keys = [random.choice([-INF, round(random.uniform(-2, 2), 1), random.uniform(-2, 2)]) for _ in range(C)]
    assert kernel(ids, keep, keys, m) == ref(ids, keep, keys, m), (t, ids, keep, keys, m)
print("ok: 3000 random rows (duplicates, empties, -inf keys, ties) match the CPU semantics")
