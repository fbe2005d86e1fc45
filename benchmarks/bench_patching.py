"""Activation patching: TransformerLens's ``get_act_patch_resid_pre`` (one forward per
(layer, position) cell) against emolens's batched equivalent (many cells per forward) on the
same layer x position grid of the default model, with the largest difference between them.
Both sides run under ``torch.no_grad()`` (emolens's path does internally; TransformerLens's is
wrapped here), so ``patch_vs_tl`` compares the patching strategies, not autograd overhead.
``patch_vs_tl_with_grad`` keeps the figure of TransformerLens called as its docs show (grad on)."""
from __future__ import annotations

import time

import torch

GOALS = {"patch_vs_tl": ">= 5", "patch_max_abs_diff": "<= 1e-4"}

CLEAN = "I feel angry today, so I"
CORRUPTED = "I feel happy today, so I"


def run(ctx) -> dict[str, float]:
    from transformer_lens.patching import get_act_patch_resid_pre

    from emolens.causality import patch_resid_pre
    from emolens.causality._common import token_id

    model = ctx.model
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    assert clean.shape == corrupted.shape, "bench prompts must tokenise to equal lengths"
    a, b = token_id(model, " want"), token_id(model, " can")

    def metric(logits):
        return logits[:, -1, a].mean() - logits[:, -1, b].mean()

    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    patch_resid_pre(model, corrupted, cache, metric, layers=[0], progress=False)  # warm-up
    t0 = time.perf_counter()
    mine = patch_resid_pre(model, corrupted, cache, metric, progress=False)
    t_mine = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = get_act_patch_resid_pre(model, corrupted, cache, metric).detach().cpu()
    t_tl = time.perf_counter() - t0
    t0 = time.perf_counter()
    get_act_patch_resid_pre(model, corrupted, cache, metric)
    t_tl_grad = time.perf_counter() - t0
    cells = int(mine.numel())
    return {
        "patch_cells": cells,
        "patch_tl_s": round(t_tl, 2),
        "patch_emolens_s": round(t_mine, 2),
        "patch_vs_tl": round(t_tl / t_mine, 2),
        "patch_vs_tl_with_grad": round(t_tl_grad / t_mine, 2),
        "patch_max_abs_diff": float((mine - ref).abs().max()),
        "patch_cells_per_s": round(cells / t_mine, 1),
        "patch_value_range": round(float(mine.max() - mine.min()), 4),
    }
