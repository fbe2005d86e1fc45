"""Readout cost: reading every emotion at every layer over a bare forward pass on the same batch
(goal <= 1.15)."""
from __future__ import annotations

import time

GOALS = {"readout_vs_forward": "<= 1.15"}


def run(ctx) -> dict[str, float]:
    import torch

    import emolens
    from emolens.compat import run_to_layer
    from emolens.registry import EmotionRegistry
    from emolens.sites import resolve_sites
    from emolens.tokens import to_inputs

    model = ctx.model
    sites = resolve_sites(model, None)
    g = torch.Generator().manual_seed(0)
    reg = EmotionRegistry(torch.randn(len(sites), 48, int(model.cfg.d_model), generator=g),
                          [f"e{i}" for i in range(48)], sites, torch.ones(len(sites)),
                          metadata={"model": emolens.model_provenance(model).to_dict()})
    corpus = emolens.load_corpus()
    texts = [r.text for r in corpus.stories()][: ctx.batch]
    batch = to_inputs(model, texts)
    dev = next(model.parameters()).device
    toks = batch.tokens.to(dev)
    kw = {k: v.to(dev) for k, v in batch.forward_kwargs().items()}

    def readout() -> None:
        emolens.read_emotions(model, reg, texts, layers="all", batch_size=ctx.batch)

    def forward() -> None:
        with torch.inference_mode():
            run_to_layer(model, toks, [], len(sites), **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {"readout": [], "forward": []}
    for _ in range(3):
        for key, fn in (("readout", readout), ("forward", forward)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {"readout_vs_forward": round(min(times["readout"]) / min(times["forward"]), 3),
            "readout_tokens": int(batch.attention_mask.sum())}
