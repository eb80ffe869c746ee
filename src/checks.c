/* Argument checks shared by every public function. */
#include "ns_internal.h"

#include <math.h>
#include <string.h>

ns_status ns_check_context(ns_context *ctx, const char *fn) {
    if (!ctx) return ns_fail(NULL, NS_ERR_INVALID_ARGUMENT, "%s: ctx is NULL", fn);
    ns_clear_error(ctx);
    return NS_OK;
}

ns_status ns_options_resolve(ns_context *ctx, const char *fn, const char *what, const char *type,
                             const char *init, const void *given, const void *defaults,
                             size_t size, void *out) {
    if (!given) {
        memcpy(out, defaults, size);
        return NS_OK;
    }
    size_t n;
    memcpy(&n, given, sizeof n);
    if (n < sizeof(size_t))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: %s->struct_size (%zu) is smaller than sizeof(size_t) (%zu): %s is not "
                       "initialised; initialise with %s",
                       fn, what, n, sizeof(size_t), type, init);
    if (n > size)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: %s->struct_size (%zu) is larger than sizeof(%s) (%zu) in this build of "
                       "negsamp %d.%d.%d: the caller was built against a newer negsamp.h",
                       fn, what, n, type, size, NS_VERSION_MAJOR, NS_VERSION_MINOR,
                       NS_VERSION_PATCH);
    if (given != out) {
        memcpy(out, defaults, size);
        memcpy(out, given, n);
    }
    memcpy(out, &size, sizeof size);
    return NS_OK;
}

ns_status ns_check_ptr(ns_context *ctx, const char *fn, const char *name, const void *p) {
    if (p) return NS_OK;
    return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, name);
}

size_t ns_dtype_size(ns_dtype t) { return t == NS_F32 ? 4 : 2; }

const char *ns_dtype_name(ns_dtype t) {
    switch (t) {
    case NS_F32: return "f32";
    case NS_F16: return "f16";
    case NS_BF16: return "bf16";
    }
    return "unknown";
}

ns_status ns_check_matrix(ns_context *ctx, const char *fn, const char *name, ns_matrix m,
                          int allow_empty) {
    if (m.dtype != NS_F32 && m.dtype != NS_F16 && m.dtype != NS_BF16)
        return ns_fail(ctx, NS_ERR_UNSUPPORTED,
                       "%s: %s.dtype (%d) is not a supported dtype (NS_F32, NS_F16, NS_BF16)", fn,
                       name, (int)m.dtype);
    if (m.rows < 0 || (m.rows == 0 && !allow_empty))
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s.rows (%lld) must be at least %d", fn,
                       name, (long long)m.rows, allow_empty ? 0 : 1);
    if (m.rows == 0) return NS_OK;
    if (m.cols < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s.cols (%lld) must be at least 1", fn,
                       name, (long long)m.cols);
    if (m.ld != 0 && m.ld < m.cols)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: %s.ld (%lld) is smaller than %s.cols (%lld)", fn, name,
                       (long long)m.ld, name, (long long)m.cols);
    if (!m.data) return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s.data is NULL", fn, name);
    return NS_OK;
}

int64_t ns_find_nonfinite_f32(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i + 1;
    return 0;
}

int64_t ns_matrix_find_nonfinite(ns_matrix m) {
    int64_t ld = ns_ld(m);
    for (int64_t r = 0; r < m.rows; r++) {
        const void *row = ns_row(m, r);
        for (int64_t c = 0; c < m.cols; c++) {
            float v;
            if (m.dtype == NS_F32) v = ((const float *)row)[c];
            else if (m.dtype == NS_F16) v = ns_f16_to_f32(((const uint16_t *)row)[c]);
            else v = ns_bf16_to_f32(((const uint16_t *)row)[c]);
            if (!isfinite(v)) return r * m.cols + c + 1;
        }
    }
    (void)ld;
    return 0;
}

ns_status ns_check_candidates(ns_context *ctx, const char *fn, const ns_candidates *c) {
    ns_status st = ns_check_ptr(ctx, fn, "cand", c);
    if (st) return st;
    if (c->queries < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: cand->queries (%lld) must be at least 1",
                       fn, (long long)c->queries);
    if (c->per_query < 1)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: cand->per_query (%lld) must be at least 1", fn,
                       (long long)c->per_query);
    if ((st = ns_check_ptr(ctx, fn, "cand->id", c->id))) return st;
    if ((st = ns_check_ptr(ctx, fn, "cand->score", c->score))) return st;
    if (c->query_offset < 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: cand->query_offset (%lld) is negative",
                       fn, (long long)c->query_offset);
    if (c->positive_id) {
        const ns_id_lists *p = c->positive_id;
        if (p->queries != c->queries)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: cand->positive_id->queries (%lld) differs from cand->queries (%lld)",
                           fn, (long long)p->queries, (long long)c->queries);
        if (!p->offsets)
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: cand->positive_id->offsets is NULL",
                           fn);
    }
    return NS_OK;
}

ns_status ns_check_id_lists_data(ns_context *ctx, const char *fn, const char *name,
                                 const ns_id_lists *x, int64_t queries, int64_t id_bound,
                                 const char *bound_name, int64_t *max_id) {
    if (max_id) *max_id = -1;
    if (x->offsets[0] != 0)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->offsets[0] (%lld) must be 0", fn,
                       name, (long long)x->offsets[0]);
    for (int64_t i = 0; i < queries; i++)
        if (x->offsets[i + 1] < x->offsets[i])
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: %s->offsets[%lld] (%lld) is smaller than offsets[%lld] (%lld); "
                           "offsets must not decrease",
                           fn, name, (long long)(i + 1), (long long)x->offsets[i + 1],
                           (long long)i, (long long)x->offsets[i]);
    const int64_t total = x->offsets[queries];
    if (total > 0 && !x->ids)
        return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                       "%s: %s->ids is NULL but offsets[%lld] is %lld", fn, name,
                       (long long)queries, (long long)total);
    int64_t top = -1;
    for (int64_t j = 0; j < total; j++) {
        const int64_t id = x->ids[j];
        if (id_bound != NS_IDS_ANY && (id < 0 || (id_bound >= 0 && id >= id_bound))) {
            if (id_bound == NS_IDS_NONNEG)
                return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT, "%s: %s->ids[%lld] (%lld) is negative",
                               fn, name, (long long)j, (long long)id);
            return ns_fail(ctx, NS_ERR_INVALID_ARGUMENT,
                           "%s: %s->ids[%lld] (%lld) is outside %s [0, %lld)", fn, name,
                           (long long)j, (long long)id, bound_name, (long long)id_bound);
        }
        if (id > top) top = id;
    }
    if (max_id) *max_id = top;
    return NS_OK;
}
