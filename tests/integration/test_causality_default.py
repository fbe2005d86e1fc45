"""Causality on the default model: the batched patching map equals TransformerLens's."""
from __future__ import annotations

import torch
from transformer_lens.patching import get_act_patch_resid_pre

from emolens.causality import patch_resid_pre
from emolens.causality._common import token_id


def test_batched_resid_pre_map_equals_transformer_lens(default_model):
    model = default_model
    clean = model.to_tokens("I feel angry")
    corrupt = model.to_tokens("I feel happy")
    assert clean.shape == corrupt.shape
    a, b = token_id(model, " and"), token_id(model, " today")

    def metric(logits):
        return logits[:, -1, a].mean() - logits[:, -1, b].mean()

    with torch.no_grad():
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
        ref = get_act_patch_resid_pre(model, corrupt, cache, metric).detach().cpu()
    got = patch_resid_pre(model, corrupt, cache, metric, progress=False)
    assert got.shape == (model.cfg.n_layers, clean.shape[1])
    assert (got - ref).abs().max() <= 1e-4
    assert got.std() > 1e-3
    # the first token (identical in both prompts, and it attends only to itself) is the same
    # in both runs, so patching it changes nothing at any layer
    assert (got[:, 0] - got[0, 0]).abs().max() < 1e-4
