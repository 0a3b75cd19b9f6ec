"""Ternary against full precision at three predictor sizes, against this machine's roofline.

    python eval/ternary_scale.py                  # 1 thread, all sizes (a few minutes)
    python eval/ternary_scale.py --threads 2 --sizes default mid --out results/scale.md

No trained checkpoint: random weights (speed and memory do not depend on their values).

Sizes (the predictor's transformer blocks over T tokens of width W; the input projections,
pooling and head are left out):
  default  the default predictor's blocks (width 192, depth 2, 4 heads, MLP 768): fp32 is
           ``nn.TransformerEncoder`` as in vljepa.predictors.transformer, ternary is
           ``vljepa.kernels.bitlinear.TernaryEncoder``, packed;
  mid      8 Llama-style blocks, hidden 1024, MLP 4096, 16 heads / 4 KV heads (~121 M weights);
  paper    the paper's predictor shape, Llama-3.2-1B's last 8 layers: hidden 2048, MLP 8192,
           32 heads / 8 KV heads (~486 M weights). Llama-style = RMSNorm, grouped-query
           attention, SwiGLU MLP, no biases (RoPE left out: no weights, negligible time).
Precisions: fp32; bf16 (nn.Linear in bfloat16; this CPU has no native bf16 arithmetic, so the
65-token regime at batch 32 is skipped as too slow); int8 (torch's own dynamic int8 Linear,
fbgemm: int8 weights, activations quantised per call); ternary (BitLinear packed at 2 bits,
run by the int8 x 2-bit kernel of vljepa.kernels.ternary_gemm, with BitNet's SubLN norms).

Each (size, precision) runs in a fresh process, which builds its model layer by layer (never a
whole fp32 copy for the low-bit ones) and reports:
  latency (ms, median) of one pass at batch 1 and 32 over 1 token (bound by weight bytes read)
  and over 65 tokens (49 visual + 16 query; bound by arithmetic), in torch.inference_mode;
  weight bytes resident (the layers' weights/packings and scales as held in memory);
  the process's peak RSS (MiB), and its RSS after importing torch (the runtime).
Roofline, measured in the same run in its own process: DRAM bandwidth (the better of a
STREAM-like copy, counting read + write bytes, and a read-only reduction, over 512 MiB) and
peak multiply-add rates, each the best over three matmul shapes (an fp32 matmul; a bf16 one;
the best int8 kernel here: the larger of fbgemm's int8 Linear and the ternary kernel).
Workers run with fixed glibc heap thresholds (MALLOC_TUNABLES below; ``--system-malloc``
keeps the defaults). Times are CPU seconds of the process with one thread (the default: other people's jobs share
this machine's cores, and CPU time leaves out the time they take), wall clock with more. A row's roofline
is max(weight bytes / bandwidth, multiply-adds / its precision's peak rate) -- int8 and ternary
rows use the int8 peak -- and "x roof" is latency / roofline (1.0 = at the limit).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

# vljepa (vljepa.profiling included) is imported inside the functions, never at the top: a worker
# reads the RSS of the bare runtime (torch) before importing it.

SIZES = {  # width, depth, heads, kv_heads, mlp
    "default": dict(width=192, depth=2, heads=4, kv_heads=4, mlp=768),
    "mid": dict(width=1024, depth=8, heads=16, kv_heads=4, mlp=4096),
    "paper": dict(width=2048, depth=8, heads=32, kv_heads=8, mlp=8192),
}
PRECISIONS = ("fp32", "bf16", "int8", "ternary")
TOKENS = (1, 65)  # 65 = 49 visual + 16 query tokens
BATCHES = (1, 32)


def rss_mib() -> float:
    """Resident memory now, MiB (Linux). Not vljepa's: it is read before vljepa is imported."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def clock():
    """CPU seconds of this process on one thread (time lost to other processes sharing the
    cores is not counted: on a loaded machine wall time measures the scheduler), wall seconds
    on more."""
    return time.process_time() if THREADS[0] == 1 else time.perf_counter()


THREADS = [1]


def timed_ms(fn, budget_s: float = 2.0, max_iters: int = 20) -> float:
    """Median ms on :func:`clock` of calls of ``fn`` after a warm-up (up to ``max_iters``, until
    ``budget_s`` seconds after 3); a call longer than 3 s is timed once (the warm-up call
    itself), so the paper shape's largest passes stay affordable."""
    from vljepa.profiling import Stopwatch, median_ms

    with Stopwatch(clock) as first:
        fn()
    if first.seconds > 3.0:
        return 1000 * first.seconds
    return median_ms(fn, max_iters, max_seconds=budget_s, clock=clock, warmup=False)


def release_free_heap() -> None:
    """Hand the heap's free pages back to the kernel (glibc ``malloc_trim``), so that RSS
    counts what is held, not what the raised trim threshold (MALLOC_TUNABLES) keeps cached."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing kept back to hand over
        pass


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: VmHWM := VmRSS)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_window_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- models (worker side) ----

def _linear_factory(precision: str):
    import torch
    from torch import nn

    from vljepa.kernels.bitlinear import BitLinear

    def make(i: int, o: int, norm: bool = False) -> nn.Module:
        if precision == "fp32":
            return nn.Linear(i, o, bias=False)
        if precision == "bf16":
            return nn.Linear(i, o, bias=False, dtype=torch.bfloat16)
        if precision == "int8":
            with warnings.catch_warnings():  # torch.ao's eager API is deprecated, still fbgemm
                warnings.simplefilter("ignore")
                return torch.ao.quantization.quantize_dynamic(
                    nn.Sequential(nn.Linear(i, o, bias=False)), {nn.Linear}, dtype=torch.qint8)[0]
        m = BitLinear(i, o, bias=False, norm=norm)
        m.to_packed()  # one layer's fp32 weight at a time, dropped here
        return m
    return make


def llama_stack(width, depth, heads, kv_heads, mlp, precision):
    """``depth`` Llama-style blocks (pre-RMSNorm, GQA, SwiGLU, no biases): (B, T, W) -> same."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    make = _linear_factory(precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    hd = width // heads

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1 = nn.RMSNorm(width, dtype=dtype)
            self.q, self.k = make(width, width), make(width, kv_heads * hd)
            self.v, self.o = make(width, kv_heads * hd), make(width, width, norm=True)
            self.n2 = nn.RMSNorm(width, dtype=dtype)
            self.gate, self.up = make(width, mlp), make(width, mlp)
            self.down = make(mlp, width, norm=True)

        def forward(self, x):
            B, T, _ = x.shape
            h = self.n1(x)
            q = self.q(h).view(B, T, heads, hd).transpose(1, 2)
            k = self.k(h).view(B, T, kv_heads, hd).transpose(1, 2)
            v = self.v(h).view(B, T, kv_heads, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            x = x + self.o(a.transpose(1, 2).reshape(B, T, width))
            h = self.n2(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(depth))  # built one at a time

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    return Stack().eval(), dtype


def default_stack(width, depth, heads, kv_heads, mlp, precision):
    """The default predictor's blocks, as vljepa.predictors.transformer builds them."""
    import torch
    from torch import nn

    from vljepa.kernels.bitlinear import TernaryEncoder, to_packed

    if precision == "ternary":
        enc = to_packed(TernaryEncoder(width, heads, mlp, 0.0, depth))
    else:
        layer = nn.TransformerEncoderLayer(width, heads, mlp, 0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        enc = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width),
                                    enable_nested_tensor=False)
        if precision == "bf16":
            enc = enc.to(torch.bfloat16)
        elif precision == "int8":
            # its quantised linear1/2 trip the fused encoder fast path's checks: run unfused
            torch.backends.mha.set_fastpath_enabled(False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                enc = torch.ao.quantization.quantize_dynamic(enc, {nn.Linear}, dtype=torch.qint8)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    class Run(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = enc

        def forward(self, x):
            pad = torch.zeros(x.shape[:2], dtype=torch.bool)
            return self.enc(x, src_key_padding_mask=pad)

    return Run().eval(), dtype


def weight_bytes(model) -> int:
    """Bytes of the linear layers' weights as held: parameters, buffers (packed codes, scales)
    and fbgemm's packed int8 weights; norms included, activations not."""
    import torch

    n = sum(t.nbytes for t in [*model.parameters(), *model.buffers()])
    for m in model.modules():
        if isinstance(m, torch.ao.nn.quantized.dynamic.Linear):
            w, b = m._packed_params._weight_bias()
            n += w.int_repr().nbytes + 8 + (b.nbytes if b is not None else 0)
    return n


def macs(size: dict, batch: int, tokens: int) -> float:
    """Multiply-adds of one pass: the linear layers, plus attention's QK^T and AV."""
    W, F, H, KV, L = size["width"], size["mlp"], size["heads"], size["kv_heads"], size["depth"]
    if size is SIZES["default"]:  # qkv, proj, fc1, fc2
        lin = 3 * W * W + W * W + 2 * W * F
    else:
        lin = 2 * W * W + 2 * W * (W // H) * KV + 3 * W * F
    return L * batch * (tokens * lin + 2 * tokens * tokens * W)


def worker(size_name: str, precision: str, threads: int) -> dict:
    import gc

    import torch

    torch.set_num_threads(threads)
    THREADS[0] = threads
    out = {"rss_runtime_mib": rss_mib()}
    from vljepa.profiling import Stopwatch, peak_rss_mib  # imports vljepa: after the runtime's RSS

    if precision == "ternary":
        from vljepa.kernels import ternary_gemm as ternary_kernel

        if ternary_kernel.kernel() is None:  # compile (or load the cached build) before timing
            out["note"] = f"kernel unavailable: {ternary_kernel.kernel_unavailable_reason()}"
    size = SIZES[size_name]
    build = default_stack if size_name == "default" else llama_stack
    torch.manual_seed(0)
    with Stopwatch() as watch:
        model, dtype = build(**size, precision=precision)
    out["build_s"] = watch.seconds
    out["weight_bytes"] = weight_bytes(model)
    gc.collect()
    release_free_heap()  # the low-bit builds free each layer's fp32 latent weight
    out["rss_built_mib"] = rss_mib()
    reset_peak_rss()
    with torch.inference_mode():
        for b in BATCHES:
            for T in TOKENS:
                if precision == "bf16" and b * T * size["width"] >= 32 * 65 * 1024:
                    continue  # minutes per pass without native bf16 (see the docstring)
                x = torch.randn(b, T, size["width"]).to(dtype)
                out[f"b{b}_t{T}_ms"] = timed_ms(lambda: model(x))
    out["peak_rss_mib"] = peak_rss_mib()
    out["peak_rss_serving_mib"] = peak_rss_window_mib()
    return out


def roofline(threads: int) -> dict:
    """Bandwidth (bytes/s) and peak multiply-add rates (MAC/s) on ``threads`` threads."""
    import torch

    from vljepa.kernels import ternary_gemm as ternary_kernel
    from vljepa.kernels.bitlinear import pack_ternary
    from vljepa.profiling import Stopwatch

    torch.set_num_threads(threads)
    THREADS[0] = threads

    def best(fn, n=5):
        fn()
        return min(timed_once(fn) for _ in range(n))

    def timed_once(fn):
        with Stopwatch(clock) as watch:
            fn()
        return watch.seconds

    src = torch.ones(2**27)  # 512 MiB
    dst = torch.empty_like(src)
    copy_bw = 2 * src.nbytes / best(lambda: dst.copy_(src))
    read_bw = src.nbytes / best(lambda: src.sum())
    del src, dst
    shapes = [(1024, 4096, 4096), (256, 2048, 8192), (65, 8192, 2048)]  # M, K, N
    fp32 = bf16 = int8_fbgemm = tern = 0.0
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager API is deprecated, still fbgemm
        for M, K, N in shapes:
            a, w = torch.randn(M, K), torch.randn(N, K)
            fp32 = max(fp32, M * K * N / best(lambda: a @ w.T))
            ab, wb = a[:65].bfloat16(), w.bfloat16()
            bf16 = max(bf16, 65 * K * N / best(lambda: ab @ wb.T, 1))
            q = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(torch.nn.Linear(K, N, bias=False)), {torch.nn.Linear},
                dtype=torch.qint8)
            int8_fbgemm = max(int8_fbgemm, M * K * N / best(lambda: q(a)))
            if ternary_kernel.kernel() is not None:
                packed = pack_ternary(torch.randint(-1, 2, (N, K), dtype=torch.int8))
                scale = torch.tensor(0.5)
                tern = max(tern, M * K * N / best(
                    lambda: ternary_kernel.ternary_linear(a, packed, (N, K), scale)))
    return {"copy_bw": copy_bw, "read_bw": read_bw, "bw": max(copy_bw, read_bw),
            "fp32": fp32, "bf16": bf16, "int8_fbgemm": int8_fbgemm, "int8_ternary": tern,
            "int8": max(int8_fbgemm, tern), "threads": threads}


# ---------------------------------------------------------------- driver ----

# glibc gives blocks of 128 KiB .. 32 MiB back to the kernel and faults them in again depending
# on the order of earlier frees, so a pass over (32, 65, 768) activations costs 0 to 10,000
# page faults (up to a third of the pass in system time) by luck of the heap layout. Every
# worker, fp32 and low-bit alike, runs with fixed thresholds (blocks under 32 MiB from the heap;
# up to 64 MiB of freed heap kept, which peak RSS then includes) so that both pay nothing; the
# default heap is kept with --system-malloc. (PyTorch's CPU tuning guide's advice is the same
# in spirit: jemalloc or tcmalloc for inference.)
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"
SYSTEM_MALLOC = [False]


def run_self(args: list[str]) -> dict:
    env = dict(os.environ)
    if not SYSTEM_MALLOC[0]:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), MALLOC_TUNABLES]))
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args],
                         capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"worker {args} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(roof: dict, rows: dict) -> str:
    peak = {"fp32": roof["fp32"], "bf16": roof["bf16"], "int8": roof["int8"],
            "ternary": roof["int8"]}
    lines = [
        f"roofline ({roof['threads']} thread(s)): DRAM {roof['bw'] / 1e9:.1f} GB/s "
        f"(copy {roof['copy_bw'] / 1e9:.1f}, read {roof['read_bw'] / 1e9:.1f}); peak multiply-adds "
        f"fp32 {roof['fp32'] / 1e9:.1f}, bf16 {roof['bf16'] / 1e9:.1f}, int8 "
        f"{roof['int8'] / 1e9:.1f} G/s (fbgemm int8 {roof['int8_fbgemm'] / 1e9:.1f}, ternary "
        f"kernel {roof['int8_ternary'] / 1e9:.1f})", "",
        f"heap: {'glibc defaults' if SYSTEM_MALLOC[0] else 'GLIBC_TUNABLES=' + MALLOC_TUNABLES}",
        f"latency ms ({'CPU time, 1 thread' if roof['threads'] == 1 else 'wall clock'}; x "
        "roofline) per pass, median; b = batch, t = tokens. Peak RSS: the whole process, and "
        "(serving) from after the build to the end of the passes", "",
        "| size | precision | weights MiB | peak RSS MiB (serving) | b1 t1 | b1 t65 | b32 t1 | "
        "b32 t65 |", "|---|---|---|---|---|---|---|---|"]
    for (size, prec), r in rows.items():
        cells = []
        for b in BATCHES:
            for T in TOKENS:
                ms = r.get(f"b{b}_t{T}_ms")
                if ms is None:
                    cells.append("skipped")
                    continue
                roof_s = max(r["weight_bytes"] / roof["bw"], macs(SIZES[size], b, T) / peak[prec])
                cells.append(f"{ms:.2f} ({ms / 1e3 / roof_s:.1f}x)")
        lines.append(f"| {size} | {prec} | {r['weight_bytes'] / 2**20:.1f} | "
                     f"{r['peak_rss_mib']:.0f} ({r['peak_rss_serving_mib']:.0f}) | " + " | ".join(cells) + " |")
    runtime = statistics.median(r["rss_runtime_mib"] for r in rows.values())
    lines += ["", f"RSS of a process after importing torch (the runtime): {runtime:.0f} MiB"]
    notes = {r["note"] for r in rows.values() if "note" in r}
    lines += [f"note: {n}" for n in notes]
    lines.append("")
    for size in SIZES:
        if (size, "fp32") in rows and (size, "ternary") in rows:
            f, t = rows[size, "fp32"], rows[size, "ternary"]
            lines.append(f"{size}: ternary / fp32 speed-up: b1 t1 {f['b1_t1_ms'] / t['b1_t1_ms']:.1f}x, "
                         f"b1 t65 {f['b1_t65_ms'] / t['b1_t65_ms']:.1f}x, b32 t1 "
                         f"{f['b32_t1_ms'] / t['b32_t1_ms']:.1f}x, b32 t65 "
                         f"{f['b32_t65_ms'] / t['b32_t65_ms']:.1f}x; weight bytes "
                         f"{f['weight_bytes'] / t['weight_bytes']:.1f}x fewer")
    if ("paper", "fp32") in rows and ("paper", "ternary") in rows:
        f, t = rows["paper", "fp32"], rows["paper", "ternary"]
        roof_s = max(t["weight_bytes"] / roof["bw"], macs(SIZES["paper"], 1, 65) / roof["int8"])
        lines.append(f"paper shape, batch 1, 65 tokens: ternary {f['b1_t65_ms'] / t['b1_t65_ms']:.1f}x "
                     f"faster than fp32, {f['weight_bytes'] / t['weight_bytes']:.1f}x fewer weight "
                     f"bytes, {t['b1_t65_ms'] / 1e3 / roof_s:.1f}x from the roofline")
    return "\n".join(lines)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--system-malloc", action="store_true",
                    help="run the workers with glibc's default heap thresholds (see MALLOC_TUNABLES)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--roofline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads)))
        return ""
    if args.roofline:
        print(json.dumps(roofline(args.threads)))
        return ""
    SYSTEM_MALLOC[0] = args.system_malloc
    t0 = time.time()  # progress stamps only: the driver imports neither torch nor vljepa
    roof = run_self(["--roofline", "--threads", str(args.threads)])
    rows = {}
    for size in args.sizes:
        for prec in args.precisions:
            rows[size, prec] = run_self(["--worker", size, prec, "--threads", str(args.threads)])
            print(f"[{time.time() - t0:.0f}s] {size} {prec}: {rows[size, prec]}", file=sys.stderr)
    text = table(roof, rows)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
