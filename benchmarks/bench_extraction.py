"""Extraction throughput and memory, measured side by side on the same batches.

- extract_tokens_per_s: tokens per second of ``extract_emotions`` (all layers' hooks, no
  validation, no neutral pass) on a fixed set of stories;
- extract_vs_forward: that throughput over a bare forward pass to the same deepest layer on the
  same batches (goal >= 0.9: the hooks and accumulators cost little);
- extract_vs_cache_all: over collecting the same sites with ``run_with_cache`` and averaging
  afterwards (goal >= 2);
- extract_bf16_speedup: the same extraction under ``compute_dtype="bfloat16"`` over float32,
  with the CPU flags it ran on (``extract_bf16_cpu``: on a CPU without native bf16 it is far
  below 1, which is why ``compute_dtype="auto"`` picks float32 there), and
  extract_bf16_min_cosine: the smallest cosine between a float32 and a bfloat16 direction over
  every emotion and layer (goal >= 0.999: the faster path gives the same directions);
- matmul_fp32_gflops: this machine's float32 matmul rate (best of a few 2048^3 ``torch.mm``),
  forward_fp32_gflops: the achieved rate of the float32 forward passes above (2 x matrix
  parameters x padded positions + attention, counted to the deepest layer), and
  forward_fraction_of_matmul_peak / extract_fraction_of_matmul_peak: how close the bare forward
  and the extraction run to that limit;
- extract_mem_growth: peak resident memory of an extraction over 4x the stories over that of 1x,
  each in a fresh process (goal <= 1.05: memory does not grow with the corpus).
"""
from __future__ import annotations

import subprocess
import sys
import time

GOALS = {"extract_vs_forward": ">= 0.9", "extract_fraction_of_matmul_peak": "(report)", "extract_vs_cache_all": ">= 2",
         "extract_mem_growth": "<= 1.05", "extract_bf16_min_cosine": ">= 0.999"}
EMOTIONS = ["happy", "calm", "desperate", "angry", "sad", "afraid"]

_MEM = f"""
import resource, sys, torch, emolens
dev = sys.argv[3] or None
m = emolens.load_model(sys.argv[2] or None, device=dev)
c = emolens.load_corpus()
texts = {{e: [r.text for r in c.stories(e)][:12] * int(sys.argv[1]) for e in {EMOTIONS!r}}}
emolens.extract_emotions(m, texts, layers=[4, 10, 16], neutral=[], validate=False, progress=False)
if dev and dev.startswith("cuda") and torch.cuda.max_memory_allocated() > 0:
    print(torch.cuda.max_memory_allocated() // 1024)  # GPU peak, KiB
else:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kb(times: int, model: str | None, device: str | None) -> int:
    out = subprocess.run([sys.executable, "-c", _MEM, str(times), model or "", device or ""],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[-1])


def matmul_gflops(n: int = 2048, reps: int = 3) -> float:
    """Best float32 ``torch.mm`` rate of this machine (GFLOP/s), measured now."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def forward_flops(model, batches, n_layers: int) -> float:
    """FLOPs of forward passes to ``n_layers`` over ``batches`` (padded positions count: they
    are computed): 2 x the blocks' matrix parameters per position, plus QK^T and AV."""
    import re

    per_layer = [0] * int(model.cfg.n_layers)
    for name, p in model.named_parameters():
        m = re.search(r"(?:^|\.)(?:layers|blocks|h)\.(\d+)\.", name)
        if m and p.dim() >= 2 and int(m.group(1)) < len(per_layer):
            per_layer[int(m.group(1))] += p.numel()
    mat = sum(per_layer[:n_layers])
    d_attn = int(model.cfg.n_heads) * int(model.cfg.d_head)
    total = 0.0
    for b in batches:
        bsz, seq = b.tokens.shape
        total += 2 * mat * bsz * seq + n_layers * 4 * bsz * seq * seq * d_attn
    return total


def _sync(model) -> None:  # GPU work is asynchronous: wait for it before reading the clock
    import torch

    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


def run(ctx) -> dict[str, float]:
    import torch

    import emolens
    from emolens.compat import run_to_layer
    from emolens.sites import resolve_sites
    from emolens.tokens import to_inputs

    model = ctx.model
    corpus = emolens.load_corpus()
    texts = {e: [r.text for r in corpus.stories(e)][:16] for e in EMOTIONS}
    flat = [t for ts in texts.values() for t in ts]
    flat.sort(key=lambda t: -len(t))  # the same length-sorted batches extraction uses
    sites = resolve_sites(model, None)
    names = [s.name for s in sites]
    batches = [to_inputs(model, flat[i:i + ctx.batch]) for i in range(0, len(flat), ctx.batch)]
    dev = next(model.parameters()).device
    on_dev = [(b.tokens.to(dev), {k: v.to(dev) for k, v in b.forward_kwargs().items()}, b)
              for b in batches]
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)

    regs: dict[str, object] = {}

    def extract() -> None:
        regs["float32"] = emolens.extract_emotions(model, texts, neutral=[], validate=False,
                                                   progress=False, batch_size=ctx.batch,
                                                   compute_dtype="float32")

    def extract_bf16() -> None:
        regs["bfloat16"] = emolens.extract_emotions(model, texts, neutral=[], validate=False,
                                                    progress=False, batch_size=ctx.batch,
                                                    compute_dtype="bfloat16")

    def forward() -> None:
        with torch.inference_mode():
            for toks, kw, _ in on_dev:
                run_to_layer(model, toks, [], len(sites), **kw)
        _sync(model)

    def cache_all() -> None:
        with torch.inference_mode():
            for toks, kw, b in on_dev:
                _, cache = model.run_with_cache(toks, names_filter=names,
                                                stop_at_layer=len(sites), **kw)
                m = b.content_mask[..., None].float().to(dev)
                for n in names:
                    (cache[n] * m).sum(1) / m.sum(1)
        _sync(model)

    timings: dict[str, list[float]] = {"extract": [], "forward": [], "cache": [], "bf16": []}
    for _ in range(2):  # interleaved repeats, best of each
        for key, fn in (("extract", extract), ("forward", forward), ("cache", cache_all),
                        ("bf16", extract_bf16)):
            t0 = time.perf_counter()
            fn()
            timings[key].append(time.perf_counter() - t0)
    t_ex, t_fw, t_ca, t_bf = (min(timings[k]) for k in ("extract", "forward", "cache", "bf16"))
    a, b = regs["float32"], regs["bfloat16"]
    min_cos = min(float((a.matrix(s.layer) * b.matrix(s.layer)).sum(-1).min())  # type: ignore[attr-defined]
                  for s in sites)
    from emolens.hardware import cpu_features

    peak = matmul_gflops()
    flops = forward_flops(model, batches, len(sites))
    on_gpu = dev.type == "cuda"
    return {
        "extract_bf16_speedup": round(t_ex / t_bf, 3),
        "extract_bf16_cpu": cpu_features().flags() if not on_gpu else "cuda",
        "matmul_fp32_gflops": round(peak, 1) if not on_gpu else None,
        "forward_fp32_gflops": round(flops / t_fw / 1e9, 1),
        "forward_fraction_of_matmul_peak": round(flops / t_fw / 1e9 / peak, 3)
        if not on_gpu else None,
        "extract_fraction_of_matmul_peak": round(flops / t_ex / 1e9 / peak, 3)
        if not on_gpu else None,
        "extract_bf16_min_cosine": round(min_cos, 5),
        "extract_tokens_per_s": round(n_tokens / t_ex, 1),
        "extract_vs_forward": round(t_fw / t_ex, 3),
        "extract_vs_cache_all": round(t_ca / t_ex, 3),
        "extract_mem_growth": round(_peak_kb(4, ctx.model_name, ctx.device)
                                    / _peak_kb(1, ctx.model_name, ctx.device), 3),
    }
