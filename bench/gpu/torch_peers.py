#!/usr/bin/env python3
"""PyTorch peers of bench_gpu_ops, one JSON object a line on stdout (flushed), the same shapes:

    torch_peers.py mine Q N d k [--chunk 65536]   mining: torch.mm + topk per corpus chunk, merged
    torch_peers.py loss B N d [--tau 0.05]         InfoNCE: matmul + F.cross_entropy, autograd
    torch_peers.py check                           import torch and report the device (no timing)

What a PyTorch user writes, in bf16 as the negsamp rows are. Mining computes each chunk's scores
as f32 where torch.mm takes out_dtype (bf16 operands, f32 accumulate and output, as cuBLAS does
for negsamp), else rounds them to bf16 and converts (the row says which). Times are CUDA-event
times after one untimed warm-up, the best of `--reps`. Without torch or a GPU the row says
"skipped" with the reason and the exit status is 0 (the kit records it and moves on).
"""
import argparse
import json
import sys
import time


def emit(row):
    print(json.dumps(row), flush=True)


def need_torch(bench):
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        emit({"bench": bench, "skipped": f"torch not importable ({type(e).__name__}: {e})"})
        return None
    if not torch.cuda.is_available():
        emit({"bench": bench, "skipped": f"torch {torch.__version__}: torch.cuda.is_available() is false"})
        return None
    return torch


def timed(torch, fn, reps):
    """Best of reps CUDA-event times (ms) after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b))
    return best


def scores_f32(torch):
    """A function (a, b) -> a @ b.T in f32, and how it gets there."""
    x = torch.ones(16, 16, device="cuda", dtype=torch.bfloat16)
    try:
        torch.mm(x, x.T, out_dtype=torch.float32)
        return (lambda a, b: torch.mm(a, b.T, out_dtype=torch.float32)), "f32 (torch.mm out_dtype)"
    except (TypeError, RuntimeError):
        return (lambda a, b: (a @ b.T).float()), "bf16 rounded, then f32"


def mine(a):
    torch = need_torch("torch_mine_topk")
    if torch is None:
        return
    dev = "cuda"
    Q, N, d, k, chunk, qblock = a.Q, a.N, a.d, a.k, a.chunk, a.qblock
    g = torch.Generator(device=dev).manual_seed(1)
    q = torch.randn(Q, d, device=dev, dtype=torch.bfloat16, generator=g)
    c = torch.randn(N, d, device=dev, dtype=torch.bfloat16, generator=g)
    mm, how = scores_f32(torch)
    best_s = torch.empty((Q, k), device=dev)
    best_i = torch.empty((Q, k), dtype=torch.long, device=dev)

    def run():
        best_s.fill_(float("-inf"))
        best_i.zero_()
        for qs in range(0, Q, qblock):
            qq = q[qs:qs + qblock]
            bs, bi = best_s[qs:qs + qblock], best_i[qs:qs + qblock]
            for c0 in range(0, N, chunk):
                s = mm(qq, c[c0:c0 + chunk])
                ts, ti = s.topk(min(k, s.shape[1]), dim=1)
                v, pos = torch.cat([bs, ts], 1).topk(k, dim=1)
                bi.copy_(torch.cat([bi, ti + c0], 1).gather(1, pos))
                bs.copy_(v)

    torch.cuda.synchronize()
    t = time.perf_counter()
    ms = timed(torch, run, a.reps)
    emit({"bench": "torch_mine_topk", "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
          "Q": Q, "N": N, "d": d, "k": k, "chunk": chunk, "scores": how, "corpus": "device", "ms": round(ms, 3),
          "effective_tflops": round(2.0 * Q * N * d / (ms * 1e-3) / 1e12, 2),
          "wall_s_with_warmup": round(time.perf_counter() - t, 2)})


def loss(a):
    torch = need_torch("torch_infonce_fwd_bwd")
    if torch is None:
        return
    import torch.nn.functional as F
    dev = "cuda"
    B, N, d = a.B, a.N, a.d
    g = torch.Generator(device=dev).manual_seed(2)
    q = (torch.randn(B, d, device=dev, generator=g) * 0.05).to(torch.bfloat16).requires_grad_()
    p = (torch.randn(N, d, device=dev, generator=g) * 0.05).to(torch.bfloat16).requires_grad_()
    labels = torch.arange(B, device=dev) % N

    def fwd():
        return F.cross_entropy((q @ p.T).float() / a.tau, labels)

    def fwd_bwd():
        q.grad = p.grad = None
        fwd().backward()

    fwd_bwd()  # warm-up, and the gradients' own memory is allocated once
    torch.cuda.synchronize()
    q.grad = p.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    grads = q.grad.numel() * q.grad.element_size() + p.grad.numel() * p.grad.element_size()
    extra = torch.cuda.max_memory_allocated() - base - grads  # beyond inputs and gradients
    f_ms = timed(torch, fwd, a.reps)  # with autograd recording, as in training
    fb_ms = timed(torch, fwd_bwd, a.reps)
    emit({"bench": "torch_infonce_fwd_bwd", "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
          "B": B, "N": N, "d": d, "dtype": "bf16", "forward_ms": round(f_ms, 3),
          "forward_backward_ms": round(fb_ms, 3), "extra_bytes": int(extra), "loss": float(fwd())})


def check(a):
    torch = need_torch("torch_check")
    if torch is None:
        return
    p = torch.cuda.get_device_properties(0)
    emit({"bench": "torch_check", "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": p.name,
          "multiprocessors": p.multi_processor_count, "memory_bytes": p.total_memory})


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mine")
    for n in ("Q", "N", "d", "k"):
        m.add_argument(n, type=int)
    m.add_argument("--chunk", type=int, default=65536)
    m.add_argument("--qblock", type=int, default=8192)
    m.add_argument("--reps", type=int, default=2)
    lo = sub.add_parser("loss")
    for n in ("B", "N", "d"):
        lo.add_argument(n, type=int)
    lo.add_argument("--tau", type=float, default=0.05)
    lo.add_argument("--reps", type=int, default=3)
    sub.add_parser("check")
    a = ap.parse_args()
    {"mine": mine, "loss": loss, "check": check}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
