// negsamp host execution layer: the runtime (see README.md beside this file).
//
//  - Kernels: blocks run one after another; each thread of a block is a fiber (a hand-written
//    x86-64 context switch, ucontext elsewhere) that runs until it reaches a barrier or a warp
//    collective; a barrier that not every thread reaches is reported as a launch failure.
//  - Memory: every device and pinned allocation is registered (base, size, device, kind),
//    poisoned when allocated, and surrounded by guard zones checked after every operation
//    (poisoned for AddressSanitizer under ASan); shared memory is poisoned for every block.
//  - Streams: work is queued per stream and runs when the host synchronises, with the legacy
//    default stream's implicit ordering, events, and capture into graphs.
#include <cuda_runtime.h>

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda_host_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define NS_CH_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NS_CH_ASAN 1
#endif
#endif
#ifdef NS_CH_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__) || defined(NS_CUDA_HOST_UCONTEXT)
#include <ucontext.h>
#endif

namespace cuda_host {

ThreadRegs *t_regs = nullptr;
uint3 t_block_idx;
dim3 t_block_dim, t_grid_dim;

// ------------------------------------------------------------------ configuration

Config &config_mut() {
    static Config c = [] {
        Config k;
        const char *o = getenv("NS_CUDA_HOST_ORDER");
        k.reverse = o && strcmp(o, "reverse") == 0;
        k.shuffle = o && strncmp(o, "shuffle", 7) == 0;
        if (k.shuffle && o[7] == ':') k.seed = strtoull(o + 8, nullptr, 10);
        const char *d = getenv("NS_CUDA_HOST_DEVICES");
        k.devices = d ? atoi(d) : 1;
        if (k.devices < 0) k.devices = 0;
        if (k.devices > 16) k.devices = 16;
        const char *a = getenv("NS_CUDA_HOST_ABORT");
        k.abort_on_fault = a && atoi(a) != 0;
        const char *q = getenv("NS_CUDA_HOST_QUIET");
        k.quiet = q && atoi(q) != 0;
        const char *sc = getenv("NS_CUDA_HOST_STRUCT_SCAN");
        k.struct_scan = !sc || atoi(sc) != 0;
        const char *mem = getenv("NS_CUDA_HOST_MEMORY_GIB");
        k.memory = (size_t)((mem ? atof(mem) : 16.0) * (double)((size_t)1 << 30));
        const char *fa = getenv("NS_CUDA_HOST_FAIL_AT");
        k.fail_at = fa ? atol(fa) : 0;
        return k;
    }();
    return c;
}
const Config &config() { return config_mut(); }

// ------------------------------------------------------------------ errors

static std::recursive_mutex g_mu;
static thread_local cudaError_t t_last = cudaSuccess;
static cudaError_t g_sticky = cudaSuccess;

std::recursive_mutex &mutex() { return g_mu; }

void vreport(const char *fmt, va_list ap) {
    if (config().quiet) return;
    fprintf(stderr, "[cuda_host] ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    fflush(stderr);
}
void report(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
}

cudaError_t api_error(cudaError_t e, const char *fmt, ...) {
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vreport(fmt, ap);
        va_end(ap);
    }
    if (e != cudaSuccess) t_last = e;
    return e;
}

cudaError_t fault(cudaError_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[cuda_host] FAULT (%s): ", cudaGetErrorName(e));
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    va_end(ap);
    if (g_sticky == cudaSuccess) g_sticky = e;
    t_last = e;
    if (config().abort_on_fault) abort();
    return e;
}

cudaError_t sticky() { return g_sticky; }

// ------------------------------------------------------------------ devices

static thread_local int t_device = 0;
int current_device() { return t_device; }
static size_t g_used[16];
static size_t g_peak[16];  // the most g_used held since cuda_host_peak_bytes last reset it

// ------------------------------------------------------------------ the allocation registry

static const unsigned char kGuardByte = 0xfd;
static const size_t kFront = 256, kTail = 256;

static std::map<uintptr_t, Alloc> &allocs() {
    static std::map<uintptr_t, Alloc> m;
    return m;
}

void poison_fill(void *p, size_t n, uintptr_t phase) {
    // The 32-bit pattern 0x7ff7dead, aligned to the address: f32 and f64 read it as NaN, int32
    // and int64 as a large positive number, every byte as non-zero.
    static const unsigned char pat[4] = {0xad, 0xde, 0xf7, 0x7f};
    unsigned char *c = (unsigned char *)p;
    for (size_t i = 0; i < n; i++) c[i] = pat[(phase + i) & 3];
}
static void poison(void *p, size_t n) { poison_fill(p, n, (uintptr_t)p); }

static void asan_poison(void *p, size_t n) {
#ifdef NS_CH_ASAN
    ASAN_POISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}
static void asan_unpoison(void *p, size_t n) {
#ifdef NS_CH_ASAN
    ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
    (void)p, (void)n;
#endif
}

static cudaError_t alloc_register(void **out, size_t bytes, bool pinned, int device) {
    size_t body = (bytes + 255) & ~(size_t)255;
    size_t total = kFront + body + kTail;
    char *raw = (char *)aligned_alloc(256, total);
    if (!raw) return cudaErrorMemoryAllocation;
    char *user = raw + kFront;
    memset(raw, kGuardByte, kFront);
    memset(user + bytes, kGuardByte, total - kFront - bytes);
    poison(user, bytes);
    asan_poison(raw, kFront);
    asan_poison(user + bytes, total - kFront - bytes);
    Alloc a;
    a.base = user;
    a.size = bytes;
    a.raw = raw;
    a.raw_size = total;
    a.pinned = pinned;
    a.device = device;
    allocs()[(uintptr_t)user] = a;
    *out = user;
    return cudaSuccess;
}

const Alloc *find_alloc(const void *p, bool one_past_end) {
    auto &m = allocs();
    uintptr_t x = (uintptr_t)p;
    auto it = m.upper_bound(x);
    if (it == m.begin()) return nullptr;
    --it;
    const Alloc &a = it->second;
    uintptr_t b = (uintptr_t)a.base;
    if (x < b) return nullptr;
    if (x < b + a.size || (one_past_end && x == b + a.size) || (a.size == 0 && x == b)) return &a;
    return nullptr;
}

// Checks every guard zone (after each operation and at every free). Under ASan the zones are
// poisoned and ASan reports the access itself.
bool check_guards(const char *after) {
#ifdef NS_CH_ASAN
    (void)after;
    return true;
#else
    bool ok = true;
    for (auto &kv : allocs()) {
        const Alloc &a = kv.second;
        unsigned char *r = (unsigned char *)a.raw;
        const size_t tail0 = kFront + a.size;
        long long first = LLONG_MIN, last = 0;
        int changed = 0;
        for (size_t i = 0; i < a.raw_size; i++) {
            if (i == kFront) i = tail0;
            if (i >= a.raw_size) break;
            if (r[i] != kGuardByte) {
                long long off = (long long)i - (long long)kFront;
                if (first == LLONG_MIN) first = off;
                last = off;
                changed++;
                r[i] = kGuardByte;  // reported once
            }
        }
        if (changed) {
            fault(cudaErrorIllegalAddress,
                  "%s wrote outside a %s allocation of %zu bytes at %p: %d guard byte(s) changed, byte offsets %lld..%lld (%s)",
                  after, a.pinned ? "pinned host" : "device", a.size, (void *)a.base, changed, first, last,
                  first < 0 ? "before its start" : "past its end");
            ok = false;
        }
    }
    return ok;
#endif
}

static cudaError_t alloc_release(void *p, bool pinned) {
    auto &m = allocs();
    auto it = m.find((uintptr_t)p);
    if (it == m.end() || it->second.pinned != pinned)
        return api_error(cudaErrorInvalidValue, "%s(%p): not the start of a live %s allocation",
                         pinned ? "cudaFreeHost" : "cudaFree", p, pinned ? "pinned host" : "device");
    check_guards(pinned ? "an operation before cudaFreeHost" : "an operation before cudaFree");
    Alloc a = it->second;
    m.erase(it);
    if (!pinned && a.device >= 0 && a.device < 16) g_used[a.device] -= a.size;
    asan_unpoison(a.raw, a.raw_size);
    free(a.raw);
    return cudaSuccess;
}

// ------------------------------------------------------------------ streams and events

struct Graph;
struct Stream {
    int device = 0;
    bool blocking = true;
    bool legacy = false;
    std::deque<Op> q;
    uint64_t enq = 0, done = 0;
    bool draining = false;
    bool destroyed = false;
    Graph *capture = nullptr;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
    bool capture_invalid = false;
    size_t capture_last = 0;  // ops of this stream in the graph so far
    int id = 0;
};
struct Event {
    int device = 0;
    bool timing = true;
    Stream *stream = nullptr;
    uint64_t seq = 0;
    bool recorded = false;
    bool complete = false;
    double t_ms = 0;
    Graph *captured = nullptr;
    Stream *cap_stream = nullptr;
    size_t cap_pos = 0;
    bool destroyed = false;
};
struct Graph {
    std::vector<Op> ops;
    Stream *origin = nullptr;
    std::vector<Stream *> joined;
    std::vector<Stream *> rejoined;
    bool invalid = false;
};
struct GraphExec {
    std::vector<Op> ops;
};

static std::vector<std::unique_ptr<Stream>> &streams() {
    static std::vector<std::unique_ptr<Stream>> v;
    return v;
}
static std::vector<std::unique_ptr<Event>> &events() {
    static std::vector<std::unique_ptr<Event>> v;
    return v;
}
static std::vector<std::unique_ptr<Graph>> &graphs() {
    static std::vector<std::unique_ptr<Graph>> v;
    return v;
}
static std::vector<std::unique_ptr<GraphExec>> &execs() {
    static std::vector<std::unique_ptr<GraphExec>> v;
    return v;
}

static Stream *legacy_stream(int device) {
    static Stream *leg[16];
    if (!leg[device]) {
        streams().emplace_back(new Stream);
        leg[device] = streams().back().get();
        leg[device]->device = device;
        leg[device]->legacy = true;
        leg[device]->id = 0;
    }
    return leg[device];
}
static Stream *per_thread_stream(int device) {
    static thread_local Stream *pt[16];
    if (!pt[device]) {
        std::lock_guard<std::recursive_mutex> lk(g_mu);
        streams().emplace_back(new Stream);
        pt[device] = streams().back().get();
        pt[device]->device = device;
        pt[device]->id = -1;
    }
    return pt[device];
}

static bool known_stream(const Stream *s) {
    for (auto &p : streams())
        if (p.get() == s) return !s->destroyed;
    return false;
}
static bool known_event(const Event *e) {
    for (auto &p : events())
        if (p.get() == e) return !e->destroyed;
    return false;
}

// The stream a handle names (0 and cudaStreamLegacy: the current device's legacy stream).
static Stream *resolve(cudaStream_t s, cudaError_t *err) {
    *err = cudaSuccess;
    if (s == nullptr || s == cudaStreamLegacy) return legacy_stream(t_device);
    if (s == cudaStreamPerThread) return per_thread_stream(t_device);
    Stream *st = (Stream *)s;
    if (!known_stream(st)) {
        *err = cudaErrorInvalidResourceHandle;
        return nullptr;
    }
    return st;
}

static double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

static bool any_global_capture() {
    for (auto &p : streams())
        if (p->capture && p->mode != cudaStreamCaptureModeRelaxed && !p->destroyed) return true;
    return false;
}
static void invalidate_captures() {
    for (auto &p : streams())
        if (p->capture) {
            p->capture->invalid = true;
            p->capture_invalid = true;
        }
}
// Potentially unsafe calls (cudaMalloc, synchronous copies, device synchronisation) while a
// stream is captured in global or thread-local mode fail and invalidate the capture, as on CUDA.
cudaError_t capture_guard(const char *what) {
    if (!any_global_capture()) return cudaSuccess;
    invalidate_captures();
    return api_error(cudaErrorStreamCaptureUnsupported,
                     "%s while a stream is being captured into a graph: not permitted (the capture "
                     "is invalidated)",
                     what);
}

static void drain(Stream *s, uint64_t upto);

static void run_op(Op &op) {
    if (op.wait_stream) {
        drain(op.wait_stream, op.wait_seq);
        return;
    }
    if (op.event) {
        op.event->complete = true;
        op.event->t_ms = now_ms();
        return;
    }
    if (g_sticky != cudaSuccess) return;  // a faulted context runs nothing more
    if (op.run) op.run();
    check_guards(op.what.c_str());
}

static void drain(Stream *s, uint64_t upto) {
    if (s->done >= upto || s->q.empty()) return;
    if (s->draining) {
        fault(cudaErrorLaunchFailure, "stream dependency cycle while synchronising: stream %d (device %d) is needed up to operation %llu but is itself waiting at operation %llu (%s)",
              s->id, s->device, (unsigned long long)upto, (unsigned long long)s->done + 1, s->q.empty() ? "-" : s->q.front().what.c_str());
        return;
    }
    s->draining = true;
    while (s->done < upto && !s->q.empty()) {
        Op op = std::move(s->q.front());
        s->q.pop_front();
        run_op(op);
        s->done = op.seq;
    }
    s->draining = false;
}
static void drain_all(Stream *s) { drain(s, s->enq); }

static void drain_device(int device) {
    for (size_t i = 0; i < streams().size(); i++) {
        Stream *s = streams()[i].get();
        if (s->device == device) drain_all(s);
    }
}

// The legacy stream waits for every blocking stream of its device and they wait for it.
static void push_raw(Stream *s, Op op) {
    op.seq = ++s->enq;
    s->q.push_back(std::move(op));
}
static void implicit_deps(Stream *s) {
    if (!s->blocking) return;
    if (s->legacy) {
        for (auto &p : streams()) {
            Stream *t = p.get();
            if (t == s || t->device != s->device || !t->blocking || t->destroyed) continue;
            if (t->enq > t->done) {
                Op w;
                w.wait_stream = t;
                w.wait_seq = t->enq;
                push_raw(s, std::move(w));
            }
        }
    } else {
        Stream *l = legacy_stream(s->device);
        if (l->enq > l->done) {
            Op w;
            w.wait_stream = l;
            w.wait_seq = l->enq;
            push_raw(s, std::move(w));
        }
    }
}

// Queues op on s (or appends it to the graph s is captured into). Returns its sequence number.
cudaError_t enqueue(cudaStream_t hs, Op op, unsigned long long *seq_out) {
    cudaError_t e;
    Stream *s = resolve(hs, &e);
    if (!s) return api_error(e, "%s: invalid stream handle %p", op.what.c_str(), (void *)hs);
    if (s->capture) {
        if (s->capture->invalid) return api_error(cudaErrorStreamCaptureInvalidated, nullptr);
        s->capture->ops.push_back(std::move(op));
        s->capture_last = s->capture->ops.size();
        if (seq_out) *seq_out = 0;
        return cudaSuccess;
    }
    if (s->legacy && any_global_capture()) {
        invalidate_captures();
        return api_error(cudaErrorStreamCaptureImplicit,
                         "%s on the legacy default stream while another stream is captured",
                         op.what.c_str());
    }
    implicit_deps(s);
    push_raw(s, std::move(op));
    if (seq_out) *seq_out = s->enq;
    return cudaSuccess;
}

bool stream_capturing(cudaStream_t hs) {
    cudaError_t e;
    Stream *s = resolve(hs, &e);
    return s && s->capture;
}

cudaError_t stream_device(cudaStream_t hs, int *dev) {
    cudaError_t e;
    Stream *s = resolve(hs, &e);
    if (!s) return e;
    *dev = s->device;
    return cudaSuccess;
}

cudaError_t sync_stream(cudaStream_t hs) {
    cudaError_t e;
    Stream *s = resolve(hs, &e);
    if (!s) return e;
    drain_all(s);
    return cudaSuccess;
}

// ------------------------------------------------------------------ fibers

#if defined(__x86_64__) && !defined(NS_CUDA_HOST_UCONTEXT)
extern "C" void ns_cuda_host_switch(void **save_sp, void *to_sp);
asm(R"(
    .text
    .globl ns_cuda_host_switch
    .hidden ns_cuda_host_switch
    .type ns_cuda_host_switch,@function
ns_cuda_host_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ns_cuda_host_switch,.-ns_cuda_host_switch
)");
#endif

enum { F_READY = 0, F_BWAIT, F_WWAIT, F_DONE };

struct Fiber {
    ThreadRegs regs;
    int state = F_DONE;
#if defined(__x86_64__) && !defined(NS_CUDA_HOST_UCONTEXT)
    void *sp = nullptr;
#else
    ucontext_t uc;
#endif
    char *stack = nullptr;
    size_t stack_size = 0;
    void *asan_fake = nullptr;
    // block barrier
    int bkind = 0, bpred = 0, bresult = 0;
    const char *bfile = nullptr;
    int bline = 0;
    // warp collective
    int wop = 0, wparam = 0, wwidth = 32;
    unsigned wmask = 0;
    unsigned long long win = 0, wout = 0;
    const char *wfile = nullptr;
    int wline = 0;
};

struct Sched {
    std::vector<Fiber> fibers;
    char *stacks = nullptr;
    size_t stack_size = 0, stride = 0, nstacks = 0;
#if defined(__x86_64__) && !defined(NS_CUDA_HOST_UCONTEXT)
    void *sp = nullptr;
#else
    ucontext_t uc;
#endif
    int arrived[32] = {};  // lanes waiting at a full-warp collective, per warp
    const void *sched_bottom = nullptr;
    size_t sched_size = 0;
    void *sched_fake = nullptr;
    int n = 0;
    bool error = false;
    std::string why;
    const std::function<void()> *body = nullptr;
    Fiber *cur = nullptr;
};
static Sched g_sched;

static void ensure_stacks(int n) {
    Sched &S = g_sched;
    if ((size_t)n <= S.nstacks) return;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
#ifdef NS_CH_ASAN
    S.stack_size = 512 * 1024;
#else
    S.stack_size = 256 * 1024;
#endif
    S.stride = S.stack_size + page;
    if (S.stacks) munmap(S.stacks, S.stride * S.nstacks);
    S.stacks = (char *)mmap(nullptr, S.stride * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (S.stacks == MAP_FAILED) {
        fprintf(stderr, "[cuda_host] cannot map fiber stacks\n");
        abort();
    }
    for (size_t i = 0; i < 1024; i++) mprotect(S.stacks + i * S.stride, page, PROT_NONE);  // guard page
    S.nstacks = 1024;
    S.fibers.resize(1024);
    for (size_t i = 0; i < 1024; i++) {
        S.fibers[i].stack = S.stacks + i * S.stride + page;
        S.fibers[i].stack_size = S.stack_size;
    }
}

static void to_scheduler(Fiber *f, bool exiting) {
    Sched &S = g_sched;
#ifdef NS_CH_ASAN
    __sanitizer_start_switch_fiber(exiting ? nullptr : &f->asan_fake, S.sched_bottom, S.sched_size);
#else
    (void)exiting;
#endif
#if defined(__x86_64__) && !defined(NS_CUDA_HOST_UCONTEXT)
    ns_cuda_host_switch(&f->sp, S.sp);
#else
    swapcontext(&f->uc, &S.uc);
#endif
#ifdef NS_CH_ASAN
    __sanitizer_finish_switch_fiber(f->asan_fake, nullptr, nullptr);
#endif
}

static void fiber_main() {
    Sched &S = g_sched;
#ifdef NS_CH_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &S.sched_bottom, &S.sched_size);
#endif
    Fiber *f = S.cur;
    (*S.body)();
    f->state = F_DONE;
    to_scheduler(f, true);
    __builtin_unreachable();
}

static void fiber_init(Fiber *f) {
#if defined(__x86_64__) && !defined(NS_CUDA_HOST_UCONTEXT)
    char *top = (char *)(((uintptr_t)(f->stack + f->stack_size)) & ~(uintptr_t)15);
    void **ret = (void **)(top - 16);
    ret[0] = (void *)&fiber_main;
    ret[1] = nullptr;
    char *p = top - 16 - 6 * 8 - 8;  // [8 bytes of padding][r15 r14 r13 r12 rbx rbp][entry]
    memset(p, 0, 8 + 6 * 8);
    f->sp = p;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = f->stack_size;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, (void (*)())fiber_main, 0);
#endif
}

static void run_fiber(Fiber *f) {
    Sched &S = g_sched;
    S.cur = f;
    t_regs = &f->regs;
#ifdef NS_CH_ASAN
    __sanitizer_start_switch_fiber(&S.sched_fake, f->stack, f->stack_size);
#endif
#if defined(__x86_64__) && !defined(NS_CUDA_HOST_UCONTEXT)
    ns_cuda_host_switch(&S.sp, f->sp);
#else
    swapcontext(&S.uc, &f->uc);
#endif
#ifdef NS_CH_ASAN
    __sanitizer_finish_switch_fiber(S.sched_fake, nullptr, nullptr);
#endif
    t_regs = nullptr;
}

static const char *base_name(const char *f) {
    const char *s = strrchr(f ? f : "?", '/');
    return s ? s + 1 : (f ? f : "?");
}

static void block_error(const char *fmt, ...) {
    Sched &S = g_sched;
    if (S.error) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    S.error = true;
    S.why = buf;
}

static Fiber *in_kernel(const char *what) {
    Sched &S = g_sched;
    if (!t_regs || !S.cur) {
        fprintf(stderr, "[cuda_host] %s called outside a kernel\n", what);
        abort();
    }
    return S.cur;
}

int block_barrier(int kind, int pred, const char *file, int line) {
    Fiber *f = in_kernel("__syncthreads");
    f->bkind = kind;
    f->bpred = pred;
    f->bfile = file;
    f->bline = line;
    f->state = F_BWAIT;
    to_scheduler(f, false);
    return f->bresult;
}

static const char *wop_name(int op) {
    switch (op) {
    case W_SYNC: return "__syncwarp";
    case W_IDX: return "__shfl_sync";
    case W_UP: return "__shfl_up_sync";
    case W_DOWN: return "__shfl_down_sync";
    case W_XOR: return "__shfl_xor_sync";
    case W_BALLOT: return "__ballot_sync";
    case W_ANY: return "__any_sync";
    case W_ALL: return "__all_sync";
    default: return "__activemask";
    }
}

// The poison value a shuffle returns when its source lane does not take part.
static const unsigned long long kPoisonBits = 0x7ff7dead7ff7deadull;

static void warp_release(Fiber *base, int nlanes, unsigned mask) {
    (void)nlanes;
    Fiber *any = nullptr;
    for (int l = 0; l < 32; l++)
        if (mask >> l & 1u) any = &base[l];
    const int op = any->wop;
    unsigned ballot = 0;
    for (int l = 0; l < 32; l++)
        if ((mask >> l & 1u) && base[l].win) ballot |= 1u << l;
    for (int l = 0; l < 32; l++) {
        if (!(mask >> l & 1u)) continue;
        Fiber *g = &base[l];
        const int w = g->wwidth, seg = l - l % w;
        int src = -1;
        switch (op) {
        case W_IDX: src = seg + ((g->wparam % w) + w) % w; break;
        case W_UP: src = l - g->wparam >= seg ? l - g->wparam : l; break;
        case W_DOWN: src = l + g->wparam < seg + w ? l + g->wparam : l; break;
        case W_XOR: src = (l ^ g->wparam) < seg + w ? (l ^ g->wparam) : l; break;
        default: break;
        }
        if (op == W_IDX || op == W_UP || op == W_DOWN || op == W_XOR)
            g->wout = (src >= 0 && src < 32 && (mask >> src & 1u)) ? base[src].win : kPoisonBits;
        else if (op == W_BALLOT) g->wout = ballot;
        else if (op == W_ANY) g->wout = ballot != 0;
        else if (op == W_ALL) g->wout = (ballot & mask) == mask;
        else g->wout = 0;
        g->state = F_READY;
    }
}

unsigned long long warp_collective(int op, unsigned mask, unsigned long long bits, int param, int width,
                                   const char *file, int line) {
    Sched &S = g_sched;
    Fiber *f = in_kernel(wop_name(op));
    const unsigned lane = f->regs.lane;
    Fiber *base = f - lane;
    const int warp_first = (int)(f->regs.linear - lane);
    const int nlanes = std::min(32, S.n - warp_first);
    if (op == W_ACTIVE) {
        // Not a synchronisation on CUDA; here: the lanes of the warp that have not exited.
        unsigned m = 0;
        for (int l = 0; l < nlanes; l++)
            if (base[l].state != F_DONE) m |= 1u << l;
        f->state = F_READY;
        to_scheduler(f, false);
        return m;
    }
    if (width <= 0 || width > 32 || (width & (width - 1))) {
        block_error("%s at %s:%d: width %d is not a power of two in [1, 32]", wop_name(op), base_name(file), line, width);
        to_scheduler(f, false);
    }
    if (!(mask >> lane & 1u)) {
        block_error("%s at %s:%d: thread %u (lane %u) calls it with mask 0x%08x, which does not name its own lane",
                    wop_name(op), base_name(file), line, f->regs.linear, lane, mask);
        to_scheduler(f, false);
    }
    if (nlanes < 32 && (mask >> nlanes)) {
        block_error("%s at %s:%d: mask 0x%08x names lanes that do not exist (the warp has %d threads)",
                    wop_name(op), base_name(file), line, mask, nlanes);
        to_scheduler(f, false);
    }
    f->wop = op;
    f->wmask = mask;
    f->win = bits;
    f->wparam = param;
    f->wwidth = width;
    f->wfile = file;
    f->wline = line;
    f->state = F_WWAIT;
    const unsigned full = nlanes == 32 ? 0xffffffffu : ((1u << nlanes) - 1u);
    if (mask == full) {
        // Fast path: count arrivals; check every lane once the last one arrives. A lane that
        // never arrives (exited, at a barrier) is reported when the block can make no progress.
        int &arr = S.arrived[f->regs.warp];
        if (++arr < nlanes) {
            to_scheduler(f, false);
            return f->wout;
        }
        arr = 0;
    }
    bool complete = true;
    for (int l = 0; l < 32 && complete; l++) {
        if (!(mask >> l & 1u)) continue;
        Fiber *g = &base[l];
        if (g->state == F_DONE) {
            block_error("%s at %s:%d (mask 0x%08x): lane %d (thread %u) has already exited and never reaches it",
                        wop_name(op), base_name(file), line, mask, l, g->regs.linear);
            to_scheduler(f, false);
        }
        if (g->state == F_BWAIT) {
            block_error("%s at %s:%d (mask 0x%08x): lane %d (thread %u) waits at __syncthreads at %s:%d instead",
                        wop_name(op), base_name(file), line, mask, l, g->regs.linear, base_name(g->bfile), g->bline);
            to_scheduler(f, false);
        }
        if (g->state == F_READY) complete = false;
        else if (g->state == F_WWAIT && (g->wmask != mask || g->wop != op || g->wline != line || g->wfile != file)) {
            block_error("%s at %s:%d (mask 0x%08x): lane %d (thread %u) waits at %s at %s:%d (mask 0x%08x) instead",
                        wop_name(op), base_name(file), line, mask, l, g->regs.linear, wop_name(g->wop),
                        base_name(g->wfile), g->wline, g->wmask);
            to_scheduler(f, false);
        }
    }
    if (complete) warp_release(base, nlanes, mask);
    to_scheduler(f, false);
    return f->wout;
}

[[noreturn]] void device_trap(const char *file, int line) {
    Fiber *f = in_kernel("__trap");
    block_error("__trap() at %s:%d in thread %u", base_name(file), line, f->regs.linear);
    to_scheduler(f, false);
    abort();
}

// ------------------------------------------------------------------ shared memory

static void *t_dyn_smem = nullptr;
static uint64_t g_block_epoch = 0;
static std::unordered_map<void *, uint64_t> &shared_epochs() {
    static std::unordered_map<void *, uint64_t> m;
    return m;
}
static size_t g_static_bytes = 0;
static std::vector<void *> g_static_seen;

void *dynamic_shared() { return t_dyn_smem; }

void shared_static(void *p, size_t n, const char *name) {
    uint64_t &e = shared_epochs()[p];
    if (e == g_block_epoch) return;
    if (std::find(g_static_seen.begin(), g_static_seen.end(), p) == g_static_seen.end()) {
        g_static_seen.push_back(p);
        g_static_bytes += n;
    }
    e = g_block_epoch;
    poison(p, n);
    (void)name;
}

// ------------------------------------------------------------------ kernel execution

struct KernelRun {
    LaunchSpec spec;
    std::string name;
    std::function<void()> body;
};

static std::unordered_map<const void *, int> &func_smem_attr() {
    static std::unordered_map<const void *, int> m;
    return m;
}

static const size_t kStaticSmemMax = 48 * 1024;
static const size_t kSmemOptinMax = 227 * 1024;

// Shuffled order (Config::shuffle): one generator, reseeded from the seed and a launch counter.
static std::mt19937_64 g_order_rng;
static unsigned long long g_launches = 0;

static void run_block(KernelRun &K, int nthreads) {
    Sched &S = g_sched;
    S.n = nthreads;
    S.error = false;
    S.why.clear();
    S.body = &K.body;
    memset(S.arrived, 0, sizeof S.arrived);
    const dim3 bd = K.spec.block;
    for (int t = 0; t < nthreads; t++) {
        Fiber *f = &S.fibers[t];
        f->regs.linear = (unsigned)t;
        f->regs.lane = (unsigned)(t & 31);
        f->regs.warp = (unsigned)(t >> 5);
        f->regs.tid = uint3{(unsigned)t % bd.x, ((unsigned)t / bd.x) % bd.y, (unsigned)t / (bd.x * bd.y)};
        f->state = F_READY;
        f->asan_fake = nullptr;
#ifdef NS_CH_ASAN
        asan_unpoison(f->stack, f->stack_size);
#endif
        fiber_init(f);
    }
    const bool rev = config().reverse;
    static std::vector<int> order;
    order.resize(nthreads);
    for (int i = 0; i < nthreads; i++) order[i] = rev ? nthreads - 1 - i : i;
    if (config().shuffle) std::shuffle(order.begin(), order.end(), g_order_rng);
    for (;;) {
        bool ran = false;
        for (int i = 0; i < nthreads && !S.error; i++) {
            Fiber *f = &S.fibers[order[i]];
            if (f->state != F_READY) continue;
            run_fiber(f);
            ran = true;
        }
        if (S.error) return;
        if (ran) continue;
        int done = 0, bw = 0, ww = 0;
        Fiber *first_b = nullptr, *first_w = nullptr, *first_d = nullptr;
        for (int t = 0; t < nthreads; t++) {
            Fiber *f = &S.fibers[t];
            if (f->state == F_DONE) done++, first_d = first_d ? first_d : f;
            else if (f->state == F_BWAIT) bw++, first_b = first_b ? first_b : f;
            else if (f->state == F_WWAIT) ww++, first_w = first_w ? first_w : f;
        }
        if (ww) {
            // A warp collective some named lane never reaches.
            Fiber *base = first_w - first_w->regs.lane;
            int missing = -1;
            for (int l = 0; l < 32; l++)
                if ((first_w->wmask >> l & 1u) && base[l].state != F_WWAIT) missing = l;
            const char *why = missing < 0 ? "waits elsewhere"
                              : base[missing].state == F_DONE ? "has exited"
                                                              : "waits at a __syncthreads";
            block_error("%s at %s:%d (mask 0x%08x) in thread %u is never reached by lane %d, which %s",
                        wop_name(first_w->wop), base_name(first_w->wfile), first_w->wline, first_w->wmask,
                        first_w->regs.linear, missing, why);
            return;
        }
        if (bw == 0) return;  // every thread finished
        if (done) {
            block_error("__syncthreads at %s:%d is reached by %d of %d threads: thread %u has exited", base_name(first_b->bfile),
                        first_b->bline, bw, nthreads, first_d->regs.linear);
            return;
        }
        int cnt = 0, all = 1, any = 0;
        for (int t = 0; t < nthreads; t++) {
            Fiber *f = &S.fibers[t];
            if (f->bline != first_b->bline || f->bfile != first_b->bfile || f->bkind != first_b->bkind) {
                block_error("threads wait at different barriers: thread %u at %s:%d, thread %u at %s:%d",
                            first_b->regs.linear, base_name(first_b->bfile), first_b->bline, f->regs.linear,
                            base_name(f->bfile), f->bline);
                return;
            }
            cnt += f->bpred;
            all &= f->bpred;
            any |= f->bpred;
        }
        const int res = first_b->bkind == B_COUNT ? cnt : first_b->bkind == B_AND ? all : first_b->bkind == B_OR ? any : 0;
        for (int t = 0; t < nthreads; t++) {
            S.fibers[t].bresult = res;
            S.fibers[t].state = F_READY;
        }
    }
}

static void run_kernel(KernelRun &K) {
    const LaunchSpec &s = K.spec;
    const int nthreads = (int)(s.block.x * s.block.y * s.block.z);
    ensure_stacks(nthreads);
    // Dynamic shared memory: exactly shm bytes, poisoned per block, with a guard tail.
    const size_t tail = 64;
    unsigned char *dyn = (unsigned char *)aligned_alloc(16, ((s.shm + tail) + 15) & ~(size_t)15);
    g_static_bytes = 0;
    g_static_seen.clear();
    bool failed = false;
    // Blocks in index order, or (shuffle) in a random permutation: results must not depend on it.
    const uint64_t nblocks = (uint64_t)s.grid.x * s.grid.y * s.grid.z;
    std::vector<uint64_t> border;
    if (config().shuffle) {
        g_order_rng.seed(config().seed * 0x9e3779b97f4a7c15ull + ++g_launches);
        border.resize(nblocks);
        for (uint64_t b = 0; b < nblocks; b++) border[b] = b;
        std::shuffle(border.begin(), border.end(), g_order_rng);
    }
    for (uint64_t b = 0; b < nblocks && !failed; b++) {
        const uint64_t lb = border.empty() ? b : border[b];
        const unsigned x = (unsigned)(lb % s.grid.x), y = (unsigned)(lb / s.grid.x % s.grid.y),
                       z = (unsigned)(lb / ((uint64_t)s.grid.x * s.grid.y));
        {
                t_block_idx = uint3{x, y, z};
                t_block_dim = s.block;
                t_grid_dim = s.grid;
                g_block_epoch++;
                asan_unpoison(dyn, s.shm + tail);
                poison(dyn, s.shm);
                memset(dyn + s.shm, kGuardByte, tail);
                asan_poison(dyn + s.shm, tail);
                t_dyn_smem = s.shm ? dyn : nullptr;
                run_block(K, nthreads);
                t_dyn_smem = nullptr;
                Sched &S = g_sched;
                if (S.error) {
                    fault(cudaErrorLaunchFailure, "kernel %s<<<(%u,%u,%u), (%u,%u,%u), %zu>>> (launched at %s:%d), block (%u,%u,%u): %s",
                          K.name.c_str(), s.grid.x, s.grid.y, s.grid.z, s.block.x, s.block.y, s.block.z, s.shm,
                          base_name(s.file), s.line, x, y, z, S.why.c_str());
                    failed = true;
                    break;
                }
#ifndef NS_CH_ASAN
                for (size_t i = 0; i < tail; i++)
                    if (dyn[s.shm + i] != kGuardByte) {
                        fault(cudaErrorIllegalAddress, "kernel %s (launched at %s:%d), block (%u,%u,%u): wrote past the end of its %zu bytes of dynamic shared memory",
                              K.name.c_str(), base_name(s.file), s.line, x, y, z, s.shm);
                        failed = true;
                        break;
                    }
#endif
                if (!failed && g_static_bytes > kStaticSmemMax) {
                    fault(cudaErrorInvalidValue, "kernel %s: %zu bytes of static shared memory (at most %zu)", K.name.c_str(), g_static_bytes, kStaticSmemMax);
                    failed = true;
                }
                if (!failed && g_static_bytes + s.shm > kSmemOptinMax) {
                    fault(cudaErrorInvalidValue, "kernel %s: %zu bytes of static + %zu of dynamic shared memory (at most %zu)",
                          K.name.c_str(), g_static_bytes, s.shm, kSmemOptinMax);
                    failed = true;
                }
            }
    }
    asan_unpoison(dyn, s.shm + tail);
    free(dyn);
}

static bool valid_dims(dim3 d, unsigned mx, unsigned my, unsigned mz) {
    return d.x >= 1 && d.y >= 1 && d.z >= 1 && d.x <= mx && d.y <= my && d.z <= mz;
}

cudaError_t launch_begin(const LaunchSpec &s) {
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    if (g_sticky) return api_error(g_sticky, nullptr);
    if (config().devices == 0) return api_error(cudaErrorNoDevice, "launch of %s: no device", s.name);
    const unsigned long long threads = (unsigned long long)s.block.x * s.block.y * s.block.z;
    if (!valid_dims(s.block, 1024, 1024, 64) || threads > 1024)
        return api_error(cudaErrorInvalidConfiguration, "launch of %s at %s:%d: block (%u,%u,%u) (at most 1024 threads, 1024×1024×64)",
                         s.name, base_name(s.file), s.line, s.block.x, s.block.y, s.block.z);
    if (!valid_dims(s.grid, 2147483647u, 65535, 65535))
        return api_error(cudaErrorInvalidConfiguration, "launch of %s at %s:%d: grid (%u,%u,%u) (x in [1, 2^31-1], y and z in [1, 65535])",
                         s.name, base_name(s.file), s.line, s.grid.x, s.grid.y, s.grid.z);
    if (s.max_threads > 0 && threads > (unsigned long long)s.max_threads)
        return api_error(cudaErrorLaunchOutOfResources, "launch of %s at %s:%d: %llu threads per block but __launch_bounds__(%d)",
                         s.name, base_name(s.file), s.line, threads, s.max_threads);
    size_t limit = 48 * 1024;
    auto it = func_smem_attr().find(s.fn);
    if (it != func_smem_attr().end()) limit = (size_t)it->second;
    if (s.shm > limit)
        return api_error(cudaErrorInvalidValue,
                         "launch of %s at %s:%d: %zu bytes of dynamic shared memory but the kernel allows %zu (above 48 KiB "
                         "needs cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n) first)",
                         s.name, base_name(s.file), s.line, s.shm, limit);
    cudaError_t e;
    Stream *st = resolve(s.stream, &e);
    if (!st) return api_error(e, "launch of %s at %s:%d: invalid stream %p", s.name, base_name(s.file), s.line, (void *)s.stream);
    if (st->device != t_device)
        return api_error(cudaErrorInvalidResourceHandle, "launch of %s at %s:%d onto a stream of device %d while device %d is current",
                         s.name, base_name(s.file), s.line, st->device, t_device);
    return cudaSuccess;
}

cudaError_t check_pointer_arg(const LaunchSpec &s, int idx, const void *p) {
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    if (!p) return cudaSuccess;
    const Alloc *a = find_alloc(p, true);
    if (!a)
        return api_error(cudaErrorInvalidValue, "launch of %s at %s:%d: argument %d (or a member of it) = %p is not device memory (a host pointer, or freed)",
                         s.name, base_name(s.file), s.line, idx, p);
    if (!a->pinned && a->device != t_device)
        return api_error(cudaErrorInvalidValue, "launch of %s at %s:%d: argument %d (%p) is memory of device %d, launched on device %d",
                         s.name, base_name(s.file), s.line, idx, p, a->device, t_device);
    return cudaSuccess;
}

static bool mapped_host(uintptr_t w) {
    if (w < 0x10000 || w >= 0x800000000000ull) return false;
#ifdef NS_CH_ASAN
    // AddressSanitizer's shadow memory (x86-64: [0x7fff8000, 0x10007fff8000)) is mapped but
    // never application memory: integers that land there are not pointers.
    if (w >= 0x7fff8000ull && w < 0x10007fff8000ull) return false;
#endif
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    unsigned char v;
    return mincore((void *)(w & ~(page - 1)), 1, &v) == 0;
}

// Struct arguments: every aligned 8-byte word that is a mapped host address outside the registry
// counts as a host pointer. Bytes are not typed here, so two guards keep integers and padding from
// being taken for pointers: a word whose low 32 bits are below 0x10000 is skipped (an int member
// followed by 4 bytes of uninitialised padding reads as garbage:int, which can land in the heap;
// a real pointer has such low bits once in 65536), and so is ASan's shadow range. A host pointer
// can still slip through (1 in 65536) and an unlucky integer could still be flagged;
// NS_CUDA_HOST_STRUCT_SCAN=0 turns the scan off.
cudaError_t check_struct_arg(const LaunchSpec &s, int idx, const void *p, size_t n) {
    if (!config().struct_scan) return cudaSuccess;
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    for (size_t o = 0; o + 8 <= n; o += 8) {
        uintptr_t w;
        memcpy(&w, (const char *)p + o, 8);
        if ((w & 0xffffffffull) < 0x10000) continue;
        const Alloc *a = find_alloc((const void *)w, true);
        if (a) continue;
        if (mapped_host(w))
            return api_error(cudaErrorInvalidValue,
                             "launch of %s at %s:%d: struct argument %d holds a host pointer (%p) at byte offset %zu",
                             s.name, base_name(s.file), s.line, idx, (void *)w, o);
    }
    return cudaSuccess;
}

cudaError_t launch_enqueue(const LaunchSpec &s, std::function<void()> body) {
    std::lock_guard<std::recursive_mutex> lk(g_mu);
    auto K = std::make_shared<KernelRun>();
    K->spec = s;
    K->name = s.name;
    K->spec.name = K->name.c_str();
    K->body = std::move(body);
    Op op;
    op.what = "kernel " + K->name;
    op.run = [K]() { run_kernel(*K); };
    return api_error(enqueue(s.stream, std::move(op), nullptr), nullptr);
}

}  // namespace cuda_host

using namespace cuda_host;

#define NS_CH_LOCK std::lock_guard<std::recursive_mutex> ns_ch_lock_(g_mu)

// Host synchronisations (test hook, cuda_host_sync_count): every call that makes the host wait
// for the device or that a real GPU runs synchronously with the host — device, stream and event
// synchronisation, cudaMemcpy, cudaFree, and copies from or to pageable host memory.
static unsigned long long g_host_syncs = 0;
extern "C" void cuda_host_set_order(int order, unsigned long long seed) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    config_mut().reverse = order == 1;
    config_mut().shuffle = order == 2;
    config_mut().seed = seed;
}
extern "C" unsigned long long cuda_host_sync_count(void) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    return g_host_syncs;
}
#define NS_CH_STICKY \
    if (g_sticky) return api_error(g_sticky, nullptr)

// ------------------------------------------------------------------ errors

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
#define C(x) \
    case x: return #x;
        C(cudaSuccess) C(cudaErrorInvalidValue) C(cudaErrorMemoryAllocation) C(cudaErrorInitializationError)
        C(cudaErrorInvalidConfiguration) C(cudaErrorInvalidPitchValue) C(cudaErrorInvalidSymbol)
        C(cudaErrorInvalidDevicePointer) C(cudaErrorInvalidMemcpyDirection) C(cudaErrorInvalidDeviceFunction)
        C(cudaErrorNoDevice) C(cudaErrorInvalidDevice) C(cudaErrorInvalidResourceHandle) C(cudaErrorIllegalState)
        C(cudaErrorNotReady) C(cudaErrorIllegalAddress) C(cudaErrorLaunchOutOfResources) C(cudaErrorLaunchFailure)
        C(cudaErrorStreamCaptureUnsupported) C(cudaErrorStreamCaptureInvalidated) C(cudaErrorStreamCaptureMerge)
        C(cudaErrorStreamCaptureUnmatched) C(cudaErrorStreamCaptureUnjoined) C(cudaErrorStreamCaptureIsolation)
        C(cudaErrorStreamCaptureImplicit) C(cudaErrorCapturedEvent) C(cudaErrorStreamCaptureWrongThread)
        C(cudaErrorUnknown)
#undef C
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidPitchValue: return "invalid pitch argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalState: return "the operation cannot be performed in the present state";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched: return "capture was not initiated in this stream";
    case cudaErrorStreamCaptureUnjoined: return "capturing stream has unjoined work";
    case cudaErrorStreamCaptureIsolation: return "dependency created on uncaptured work in another stream";
    case cudaErrorStreamCaptureImplicit: return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorCapturedEvent: return "operation not permitted on an event last recorded in a capturing stream";
    default: return cudaGetErrorName(e);
    }
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = t_last;
    t_last = g_sticky;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return t_last; }

// ------------------------------------------------------------------ devices

cudaError_t cudaGetDeviceCount(int *n) {
    *n = config().devices;
    if (*n == 0) return api_error(cudaErrorNoDevice, nullptr);
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
    if (d < 0 || d >= config().devices) return api_error(cudaErrorInvalidDevice, nullptr);
    t_device = d;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *d) {
    *d = t_device;
    return cudaSuccess;
}
cudaError_t cudaDeviceReset(void) {
    NS_CH_LOCK;
    drain_device(t_device);
    g_sticky = cudaSuccess;
    t_last = cudaSuccess;
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    if (cudaError_t e = capture_guard("cudaDeviceSynchronize")) return e;
    g_host_syncs++;
    drain_device(t_device);
    check_guards("an operation before cudaDeviceSynchronize");
    return g_sticky ? api_error(g_sticky, nullptr) : cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    if (d < 0 || d >= config().devices) return api_error(cudaErrorInvalidDevice, nullptr);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "negsamp host execution layer (H200 limits), device %d", d);
    p->totalGlobalMem = config().memory;
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
    p->major = 9, p->minor = 0;
    p->multiProcessorCount = 132;
    p->l2CacheSize = 50 * 1024 * 1024;
    p->pciBusID = d;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d) {
    cudaDeviceProp p;
    if (cudaError_t e = cudaGetDeviceProperties(&p, d)) return e;
    switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrMaxBlockDimX: *v = 1024; break;
    case cudaDevAttrMaxGridDimX: *v = 2147483647; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = 48 * 1024; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMultiProcessorCount: *v = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = 227 * 1024; break;
    default: return api_error(cudaErrorInvalidValue, nullptr);
    }
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *f, size_t *t) {
    NS_CH_LOCK;
    *t = config().memory;
    *f = config().memory - g_used[t_device];
    return cudaSuccess;
}

// ------------------------------------------------------------------ fault injection

static long g_creations = 0;  // resource creations counted since the last cuda_host_fail_at

bool cuda_host::inject_failure(const char *what) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    ++g_creations;
    if (config().fail_at <= 0 || g_creations != config().fail_at) return false;
    if (!config().quiet) report("fault injection: %s, resource creation %ld, fails", what, g_creations);
    return true;
}

// The n-th resource creation from now fails (n ≤ 0: none); returns the creations counted since
// the previous call (a test learns how many a call makes by running it with n = 0 first).
extern "C" long cuda_host_fail_at(long n) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    const long seen = g_creations;
    g_creations = 0;
    config_mut().fail_at = n;
    return seen;
}

long cuda_host_live_blas_handles();  // cublas.cpp

// Live device and pinned allocations, streams, events and cuBLAS handles: what a failed or
// destroyed context must give back.
extern "C" long cuda_host_live_resources(void) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    long n = (long)allocs().size() + cuda_host_live_blas_handles();
    for (auto &s : streams()) n += !s->destroyed && !s->legacy;  // the legacy streams are not created by anyone
    for (auto &e : events()) n += !e->destroyed;
    return n;
}

// The most device memory the current device held (bytes of live cudaMalloc blocks, as asked for)
// since the last reset; reset = 1 then restarts the count from what is live now. Tests compare a
// call's peak with the memory formula of kernels/README.md ("Sizes and limits").
extern "C" unsigned long long cuda_host_peak_bytes(int reset) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    const size_t peak = g_peak[t_device] > g_used[t_device] ? g_peak[t_device] : g_used[t_device];
    if (reset) g_peak[t_device] = g_used[t_device];
    return peak;
}

// ------------------------------------------------------------------ memory

cudaError_t cudaMalloc(void **p, size_t bytes) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    if (!p) return api_error(cudaErrorInvalidValue, nullptr);
    if (cudaError_t e = capture_guard("cudaMalloc")) return e;
    if (config().devices == 0) return api_error(cudaErrorNoDevice, nullptr);
    if (bytes == 0) {
        *p = nullptr;
        return cudaSuccess;
    }
    if (bytes > config().memory - g_used[t_device] || inject_failure("cudaMalloc"))
        return api_error(cudaErrorMemoryAllocation, nullptr);
    cudaError_t e = alloc_register(p, bytes, false, t_device);
    if (e) return api_error(e, nullptr);
    g_used[t_device] += bytes;
    if (g_used[t_device] > g_peak[t_device]) g_peak[t_device] = g_used[t_device];
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    NS_CH_LOCK;
    if (!p) return cudaSuccess;
    if (cudaError_t e = capture_guard("cudaFree")) return e;
    g_host_syncs++;
    // cudaFree synchronises the device before it releases the memory.
    const Alloc *a = find_alloc(p, false);
    drain_device(a ? a->device : t_device);
    cudaError_t e = alloc_release(p, false);
    if (e) return e;
    return g_sticky ? api_error(g_sticky, nullptr) : cudaSuccess;
}
cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t s) {
    (void)s;
    return cudaMalloc(p, bytes);
}
cudaError_t cudaFreeAsync(void *p, cudaStream_t s) {
    NS_CH_LOCK;
    sync_stream(s);
    return cudaFree(p);
}
cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned int flags) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    (void)flags;
    if (!p) return api_error(cudaErrorInvalidValue, nullptr);
    if (cudaError_t e = capture_guard("cudaHostAlloc")) return e;
    if (inject_failure("cudaHostAlloc")) return api_error(cudaErrorMemoryAllocation, nullptr);
    cudaError_t e = alloc_register(p, bytes ? bytes : 1, true, -1);
    return e ? api_error(e, nullptr) : cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }
cudaError_t cudaFreeHost(void *p) {
    NS_CH_LOCK;
    if (!p) return cudaSuccess;
    if (cudaError_t e = capture_guard("cudaFreeHost")) return e;
    for (int d = 0; d < config().devices; d++) drain_device(d);
    return alloc_release(p, true);
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p) {
    NS_CH_LOCK;
    if (!a) return api_error(cudaErrorInvalidValue, nullptr);
    memset(a, 0, sizeof *a);
    a->device = -2;
    const Alloc *x = find_alloc(p, false);
    if (!x) {
        a->type = cudaMemoryTypeUnregistered;
        a->hostPointer = (void *)p;
        return cudaSuccess;
    }
    if (x->pinned) {
        a->type = cudaMemoryTypeHost;
        a->device = 0;
        a->hostPointer = a->devicePointer = (void *)p;
    } else {
        a->type = cudaMemoryTypeDevice;
        a->device = x->device;
        a->devicePointer = (void *)p;
    }
    return cudaSuccess;
}

// ------------------------------------------------------------------ copies

namespace {

enum Place { HOST_PAGEABLE, HOST_PINNED, DEVICE };
const char *place_name(Place p) { return p == DEVICE ? "device" : p == HOST_PINNED ? "pinned host" : "pageable host"; }
Place place_of(const void *p) {
    const Alloc *a = find_alloc(p, false);
    if (!a) return HOST_PAGEABLE;
    return a->pinned ? HOST_PINNED : DEVICE;
}
const char *kind_name(cudaMemcpyKind k) {
    switch (k) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    default: return "cudaMemcpyDefault";
    }
}

// A device range [p, p + span) must lie inside one allocation.
cudaError_t check_range(const char *fn, const char *which, const void *p, size_t span) {
    if (span == 0) return cudaSuccess;
    const Alloc *a = find_alloc(p, false);
    if (!a) return api_error(cudaErrorInvalidValue, "%s: %s %p is not device memory", fn, which, p);
    size_t off = (size_t)((const char *)p - a->base);
    if (off + span > a->size)
        return api_error(cudaErrorInvalidValue,
                         "%s: %s range of %zu bytes at offset %zu runs past the end of its allocation of %zu bytes",
                         fn, which, span, off, a->size);
    return cudaSuccess;
}

// Direction and ranges of a (2D) copy: rows of width bytes, pitches dp/sp.
cudaError_t check_copy(const char *fn, void *dst, size_t dp, const void *src, size_t sp, size_t width, size_t height,
                       cudaMemcpyKind kind, Place *pd, Place *ps) {
    if ((int)kind < 0 || (int)kind > 4) return api_error(cudaErrorInvalidMemcpyDirection, "%s: kind %d", fn, (int)kind);
    *pd = place_of(dst);
    *ps = place_of(src);
    if (width == 0 || height == 0) return cudaSuccess;
    if (!dst || !src) return api_error(cudaErrorInvalidValue, "%s: NULL %s", fn, dst ? "source" : "destination");
    const bool dd = *pd == DEVICE, sd = *ps == DEVICE;
    bool ok = true;
    switch (kind) {
    case cudaMemcpyHostToDevice: ok = dd && !sd; break;
    case cudaMemcpyDeviceToHost: ok = !dd && sd; break;
    case cudaMemcpyDeviceToDevice: ok = dd && sd; break;
    case cudaMemcpyHostToHost: ok = !dd && !sd; break;
    default: break;
    }
    if (!ok)
        return api_error(cudaErrorInvalidValue, "%s with %s: the destination %p is %s memory and the source %p is %s memory",
                         fn, kind_name(kind), dst, place_name(*pd), src, place_name(*ps));
    const size_t dspan = (height - 1) * dp + width, sspan = (height - 1) * sp + width;
    if (dd)
        if (cudaError_t e = check_range(fn, "destination", dst, dspan)) return e;
    if (sd)
        if (cudaError_t e = check_range(fn, "source", src, sspan)) return e;
    if (*pd == HOST_PINNED)
        if (cudaError_t e = check_range(fn, "pinned destination", dst, dspan)) return e;
    if (*ps == HOST_PINNED)
        if (cudaError_t e = check_range(fn, "pinned source", src, sspan)) return e;
    return cudaSuccess;
}

void copy2d(void *dst, size_t dp, const void *src, size_t sp, size_t width, size_t height) {
    for (size_t r = 0; r < height; r++) memmove((char *)dst + r * dp, (const char *)src + r * sp, width);
}

static bool pd_is_pageable_last = false;  // the last copy_async touched pageable memory

cudaError_t copy_async(const char *fn, void *dst, size_t dp, const void *src, size_t sp, size_t width, size_t height,
                       cudaMemcpyKind kind, cudaStream_t s) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    pd_is_pageable_last = false;
    if (height > 1 && (dp < width || sp < width))
        return api_error(cudaErrorInvalidPitchValue, "%s: pitches %zu/%zu smaller than the width %zu", fn, dp, sp, width);
    Place pd, ps;
    if (cudaError_t e = check_copy(fn, dst, dp, src, sp, width, height, kind, &pd, &ps)) return e;
    if (width == 0 || height == 0) return cudaSuccess;
    const bool capturing = stream_capturing(s);
    if ((pd == HOST_PAGEABLE || ps == HOST_PAGEABLE) && capturing) {
        invalidate_captures();
        return api_error(cudaErrorStreamCaptureUnsupported, "%s with pageable host memory while the stream is captured", fn);
    }
    if (pd == HOST_PAGEABLE || ps == HOST_PAGEABLE) g_host_syncs++;
    pd_is_pageable_last = pd == HOST_PAGEABLE || ps == HOST_PAGEABLE;
    Op op;
    op.what = fn;
    if (ps == HOST_PAGEABLE && pd == DEVICE) {
        // The source is taken at the call (staged), the copy itself is ordered on the stream.
        auto staged = std::make_shared<std::vector<char>>(width * height);
        copy2d(staged->data(), width, src, sp, width, height);
        op.run = [=]() { copy2d(dst, dp, staged->data(), width, width, height); };
    } else {
        op.run = [=]() { copy2d(dst, dp, src, sp, width, height); };
    }
    unsigned long long seq = 0;
    if (cudaError_t e = enqueue(s, std::move(op), &seq)) return api_error(e, nullptr);
    if (pd == HOST_PAGEABLE) {
        // Device (or host) to pageable host memory: complete before returning.
        cudaError_t e;
        Stream *st = resolve(s, &e);
        drain(st, seq);
        if (g_sticky) return api_error(g_sticky, nullptr);
    }
    return cudaSuccess;
}

cudaError_t copy_sync(const char *fn, void *dst, size_t dp, const void *src, size_t sp, size_t width, size_t height,
                      cudaMemcpyKind kind) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    if (cudaError_t e = capture_guard(fn)) return e;
    if (cudaError_t e = copy_async(fn, dst, dp, src, sp, width, height, kind, nullptr)) return e;
    g_host_syncs += pd_is_pageable_last ? 0 : 1;  // a pageable copy was counted by copy_async
    drain_all(legacy_stream(t_device));
    return g_sticky ? api_error(g_sticky, nullptr) : cudaSuccess;
}

}  // namespace

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    return copy_sync("cudaMemcpy", dst, bytes, src, bytes, bytes, 1, kind);
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    return copy_async("cudaMemcpyAsync", dst, bytes, src, bytes, bytes, 1, kind, s);
}
cudaError_t cudaMemcpy2D(void *dst, size_t dp, const void *src, size_t sp, size_t w, size_t h, cudaMemcpyKind kind) {
    return copy_sync("cudaMemcpy2D", dst, dp, src, sp, w, h, kind);
}
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dp, const void *src, size_t sp, size_t w, size_t h,
                              cudaMemcpyKind kind, cudaStream_t s) {
    return copy_async("cudaMemcpy2DAsync", dst, dp, src, sp, w, h, kind, s);
}
cudaError_t cudaMemcpyPeer(void *dst, int, const void *src, int, size_t bytes) {
    return copy_sync("cudaMemcpyPeer", dst, bytes, src, bytes, bytes, 1, cudaMemcpyDeviceToDevice);
}
cudaError_t cudaMemcpyPeerAsync(void *dst, int, const void *src, int, size_t bytes, cudaStream_t s) {
    return copy_async("cudaMemcpyPeerAsync", dst, bytes, src, bytes, bytes, 1, cudaMemcpyDeviceToDevice, s);
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    if (bytes == 0) return cudaSuccess;
    if (cudaError_t e = check_range("cudaMemsetAsync", "destination", p, bytes)) return e;
    Op op;
    op.what = "cudaMemsetAsync";
    op.run = [=]() { memset(p, v, bytes); };
    return api_error(enqueue(s, std::move(op), nullptr), nullptr);
}
cudaError_t cudaMemset(void *p, int v, size_t bytes) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    if (cudaError_t e = capture_guard("cudaMemset")) return e;
    if (cudaError_t e = cudaMemsetAsync(p, v, bytes, nullptr)) return e;
    drain_all(legacy_stream(t_device));
    return g_sticky ? api_error(g_sticky, nullptr) : cudaSuccess;
}

// ------------------------------------------------------------------ streams

cudaError_t cudaStreamCreateWithPriority(cudaStream_t *s, unsigned int flags, int priority) {
    NS_CH_LOCK;
    (void)priority;
    if (!s) return api_error(cudaErrorInvalidValue, nullptr);
    if (config().devices == 0) return api_error(cudaErrorNoDevice, nullptr);
    if (inject_failure("cudaStreamCreate")) return api_error(cudaErrorMemoryAllocation, nullptr);
    streams().emplace_back(new Stream);
    Stream *st = streams().back().get();
    st->device = t_device;
    st->blocking = !(flags & cudaStreamNonBlocking);
    st->id = (int)streams().size();
    *s = (cudaStream_t)st;
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    return cudaStreamCreateWithPriority(s, flags, 0);
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithPriority(s, 0, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t hs) {
    NS_CH_LOCK;
    if (hs == nullptr || hs == cudaStreamLegacy || hs == cudaStreamPerThread)
        return api_error(cudaErrorInvalidResourceHandle, "cudaStreamDestroy of a default stream");
    cudaError_t e;
    Stream *s = resolve(hs, &e);
    if (!s) return api_error(e, "cudaStreamDestroy(%p): not a live stream", (void *)hs);
    if (s->capture) {
        s->capture->invalid = true;
        s->capture = nullptr;
    }
    drain_all(s);  // CUDA releases the stream once its work is done
    s->destroyed = true;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t hs) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    cudaError_t e;
    Stream *s = resolve(hs, &e);
    if (!s) return api_error(e, "cudaStreamSynchronize(%p): not a live stream", (void *)hs);
    if (s->capture) {
        s->capture->invalid = true;
        s->capture_invalid = true;
        return api_error(cudaErrorStreamCaptureUnsupported,
                         "cudaStreamSynchronize on a stream being captured into a graph (the capture is invalidated)");
    }
    if (s->legacy)
        if (cudaError_t c = capture_guard("cudaStreamSynchronize(legacy stream)")) return c;
    g_host_syncs++;
    drain_all(s);
    check_guards("an operation before cudaStreamSynchronize");
    return g_sticky ? api_error(g_sticky, nullptr) : cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t hs) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    cudaError_t e;
    Stream *s = resolve(hs, &e);
    if (!s) return api_error(e, nullptr);
    if (s->capture) {
        invalidate_captures();
        return api_error(cudaErrorStreamCaptureUnsupported, "cudaStreamQuery on a capturing stream");
    }
    if (s->enq > s->done) {
        drain_all(s);  // the "device" makes progress; the caller sees it on its next query
        return cudaErrorNotReady;
    }
    return g_sticky ? api_error(g_sticky, nullptr) : cudaSuccess;
}
cudaError_t cudaStreamGetFlags(cudaStream_t hs, unsigned int *flags) {
    NS_CH_LOCK;
    cudaError_t e;
    Stream *s = resolve(hs, &e);
    if (!s) return api_error(e, nullptr);
    *flags = s->blocking ? 0 : cudaStreamNonBlocking;
    return cudaSuccess;
}
cudaError_t cudaStreamGetDevice(cudaStream_t hs, int *device) {
    NS_CH_LOCK;
    return api_error(stream_device(hs, device), nullptr);
}

// ------------------------------------------------------------------ events

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
    NS_CH_LOCK;
    if (!e) return api_error(cudaErrorInvalidValue, nullptr);
    if (inject_failure("cudaEventCreate")) return api_error(cudaErrorMemoryAllocation, nullptr);
    events().emplace_back(new Event);
    Event *ev = events().back().get();
    ev->device = t_device;
    ev->timing = !(flags & cudaEventDisableTiming);
    *e = (cudaEvent_t)ev;
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }
cudaError_t cudaEventDestroy(cudaEvent_t he) {
    NS_CH_LOCK;
    Event *e = (Event *)he;
    if (!known_event(e)) return api_error(cudaErrorInvalidResourceHandle, "cudaEventDestroy(%p): not a live event", (void *)he);
    e->destroyed = true;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t he, cudaStream_t hs) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    Event *e = (Event *)he;
    if (!known_event(e)) return api_error(cudaErrorInvalidResourceHandle, "cudaEventRecord(%p): not a live event", (void *)he);
    cudaError_t err;
    Stream *s = resolve(hs, &err);
    if (!s) return api_error(err, "cudaEventRecord: invalid stream %p", (void *)hs);
    if (s->device != e->device)
        return api_error(cudaErrorInvalidResourceHandle, "cudaEventRecord: event of device %d on a stream of device %d", e->device,
                         s->device);
    if (s->capture) {
        if (s->capture->invalid) return api_error(cudaErrorStreamCaptureInvalidated, nullptr);
        e->captured = s->capture;
        e->cap_stream = s;
        e->cap_pos = s->capture->ops.size();
        return cudaSuccess;
    }
    if (s->legacy && any_global_capture()) {
        invalidate_captures();
        return api_error(cudaErrorStreamCaptureImplicit, nullptr);
    }
    e->captured = nullptr;
    Op op;
    op.what = "cudaEventRecord";
    op.event = e;
    implicit_deps(s);
    push_raw(s, std::move(op));
    e->stream = s;
    e->seq = s->enq;
    e->recorded = true;
    e->complete = false;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t he) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    Event *e = (Event *)he;
    if (!known_event(e)) return api_error(cudaErrorInvalidResourceHandle, nullptr);
    if (e->captured) return api_error(cudaErrorCapturedEvent, "cudaEventSynchronize on an event recorded in a capture");
    if (cudaError_t c = capture_guard("cudaEventSynchronize")) return c;
    g_host_syncs++;
    if (e->recorded) drain(e->stream, e->seq);
    check_guards("an operation before cudaEventSynchronize");
    return g_sticky ? api_error(g_sticky, nullptr) : cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t he) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    Event *e = (Event *)he;
    if (!known_event(e)) return api_error(cudaErrorInvalidResourceHandle, nullptr);
    if (e->captured) return api_error(cudaErrorCapturedEvent, nullptr);
    if (!e->recorded || e->complete) return cudaSuccess;
    drain(e->stream, e->seq);  // progress: the next query sees it complete
    return cudaErrorNotReady;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t ha, cudaEvent_t hb) {
    NS_CH_LOCK;
    Event *a = (Event *)ha, *b = (Event *)hb;
    if (!known_event(a) || !known_event(b) || !ms) return api_error(cudaErrorInvalidResourceHandle, nullptr);
    if (!a->timing || !b->timing)
        return api_error(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime on an event created with cudaEventDisableTiming");
    if (!a->recorded || !b->recorded) return api_error(cudaErrorInvalidResourceHandle, nullptr);
    if (!a->complete || !b->complete) return cudaErrorNotReady;
    *ms = (float)(b->t_ms - a->t_ms);
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t hs, cudaEvent_t he, unsigned int flags) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    (void)flags;
    Event *e = (Event *)he;
    if (!known_event(e)) return api_error(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: %p is not a live event", (void *)he);
    cudaError_t err;
    Stream *s = resolve(hs, &err);
    if (!s) return api_error(err, "cudaStreamWaitEvent: invalid stream %p", (void *)hs);
    if (e->captured) {
        Graph *g = e->captured;
        if (g->invalid) return api_error(cudaErrorStreamCaptureInvalidated, nullptr);
        if (!s->capture) {  // fork: s joins the capture
            s->capture = g;
            s->mode = e->cap_stream->mode;
            s->capture_last = 0;
            g->joined.push_back(s);
        } else if (s->capture != g) {
            return api_error(cudaErrorStreamCaptureMerge, nullptr);
        }
        if (s == g->origin && e->cap_stream != s && e->cap_pos >= e->cap_stream->capture_last)
            g->rejoined.push_back(e->cap_stream);
        return cudaSuccess;
    }
    if (s->capture) {
        if (e->recorded && e->stream->enq > 0 && !(e->complete))
            return api_error(cudaErrorStreamCaptureIsolation,
                             "cudaStreamWaitEvent: a capturing stream waits on uncaptured work");
        return cudaSuccess;
    }
    if (!e->recorded) return cudaSuccess;
    Op w;
    w.what = "cudaStreamWaitEvent";
    w.wait_stream = e->stream;
    w.wait_seq = e->seq;
    implicit_deps(s);
    push_raw(s, std::move(w));
    return cudaSuccess;
}

// ------------------------------------------------------------------ graphs

cudaError_t cudaStreamBeginCapture(cudaStream_t hs, cudaStreamCaptureMode mode) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    cudaError_t err;
    Stream *s = resolve(hs, &err);
    if (!s) return api_error(err, nullptr);
    if (s->legacy) return api_error(cudaErrorStreamCaptureUnsupported, "cudaStreamBeginCapture on the legacy default stream");
    if (s->capture) return api_error(cudaErrorIllegalState, "cudaStreamBeginCapture: the stream is already capturing");
    graphs().emplace_back(new Graph);
    Graph *g = graphs().back().get();
    g->origin = s;
    s->capture = g;
    s->mode = mode;
    s->capture_invalid = false;
    s->capture_last = 0;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t hs, cudaGraph_t *out) {
    NS_CH_LOCK;
    cudaError_t err;
    Stream *s = resolve(hs, &err);
    if (!s) return api_error(err, nullptr);
    if (!s->capture) return api_error(cudaErrorIllegalState, "cudaStreamEndCapture: the stream is not capturing");
    Graph *g = s->capture;
    if (g->origin != s) return api_error(cudaErrorStreamCaptureUnmatched, nullptr);
    bool unjoined = false;
    for (Stream *j : g->joined) {
        if (j->capture_last > 0 && std::find(g->rejoined.begin(), g->rejoined.end(), j) == g->rejoined.end())
            unjoined = true;
        j->capture = nullptr;
    }
    s->capture = nullptr;
    if (out) *out = nullptr;
    if (g->invalid) return api_error(cudaErrorStreamCaptureInvalidated, "cudaStreamEndCapture: the capture was invalidated");
    if (unjoined) return api_error(cudaErrorStreamCaptureUnjoined, "cudaStreamEndCapture: a forked stream was never joined back");
    if (out) *out = (cudaGraph_t)g;
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t hs, cudaStreamCaptureStatus *st) {
    NS_CH_LOCK;
    cudaError_t err;
    Stream *s = resolve(hs, &err);
    if (!s) return api_error(err, nullptr);
    if (s->legacy && any_global_capture()) {
        invalidate_captures();
        return api_error(cudaErrorStreamCaptureImplicit, nullptr);
    }
    *st = !s->capture ? cudaStreamCaptureStatusNone
                      : s->capture->invalid ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *x, cudaGraph_t hg, unsigned long long) {
    NS_CH_LOCK;
    Graph *g = (Graph *)hg;
    if (!x || !g) return api_error(cudaErrorInvalidValue, nullptr);
    execs().emplace_back(new GraphExec);
    execs().back()->ops = g->ops;
    *x = (cudaGraphExec_t)execs().back().get();
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t hx, cudaStream_t hs) {
    NS_CH_LOCK;
    NS_CH_STICKY;
    GraphExec *x = (GraphExec *)hx;
    if (!x) return api_error(cudaErrorInvalidValue, nullptr);
    for (const Op &op : x->ops) {
        Op c = op;
        if (cudaError_t e = enqueue(hs, std::move(c), nullptr)) return api_error(e, nullptr);
    }
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t hx) {
    NS_CH_LOCK;
    GraphExec *x = (GraphExec *)hx;
    if (x) x->ops.clear();
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t hg) {
    NS_CH_LOCK;
    Graph *g = (Graph *)hg;
    if (g) g->ops.clear();
    return cudaSuccess;
}
cudaError_t cudaGraphGetNodes(cudaGraph_t hg, void **nodes, size_t *n) {
    NS_CH_LOCK;
    Graph *g = (Graph *)hg;
    if (!g || !n) return api_error(cudaErrorInvalidValue, nullptr);
    (void)nodes;
    *n = g->ops.size();
    return cudaSuccess;
}

// ------------------------------------------------------------------ functions

cudaError_t cudaFuncSetAttribute_impl(const void *fn, cudaFuncAttribute attr, int value) {
    NS_CH_LOCK;
    if (!fn) return api_error(cudaErrorInvalidDeviceFunction, nullptr);
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > kSmemOptinMax)
            return api_error(cudaErrorInvalidValue,
                             "cudaFuncSetAttribute: %d bytes of dynamic shared memory (at most %zu on H100/H200)", value,
                             kSmemOptinMax);
        func_smem_attr()[fn] = value;
        return cudaSuccess;
    }
    if (attr == cudaFuncAttributePreferredSharedMemoryCarveout) return cudaSuccess;
    return api_error(cudaErrorInvalidValue, nullptr);
}
