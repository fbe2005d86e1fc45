"""Steering overhead: tokens/s of steered greedy generation over unsteered, same prompts.

Configurations are interleaved within each repeat (plain and each steered variant, in an order
rotated every repeat) so load on a shared machine hits them alike; the figure is the median
over repeats of the per-repeat ratio. ``steer_step_overhead_pct`` puts the measured cost of one
steering hook call and of the position tracker's pre-hook beside one decode step: a view of the
overhead that load on a shared machine does not swamp. The direction is a random unit vector at
layer 20 with the layer's mean residual norm measured on a few sentences (the cost does not
depend on which direction it is).

``sweep_batched_vs_loop``: the time of a dose-response sweep's generations done the old way (one
``emolens.generate`` call per strength over the same prompts) over the batched way
(``sweep_generations``: every strength x prompt a row of one ``generate`` call, each strength a
``Steering(..., rows=...)``), 5 strengths x 4 chat prompts, greedy, median of per-repeat ratios
(the two interleaved in alternating order). Both give the same texts
(``sweep_batched_same_texts``); decoding is memory-bound on a CPU, so one batched call costs
about one call's time.
"""
from __future__ import annotations

import statistics
import time

GOALS = {"steer_generate_vs_plain": ">= 0.95"}

PROMPTS = [
    "Tell me about your morning.", "What is a good name for a cat?",
    "Describe the sea in one sentence.", "How do I boil an egg?",
    "Write a line about autumn.", "What should I pack for a trip?",
    "Explain what a library is.", "Give me a tip for studying.",
]
LAYER = 20
NEW_TOKENS = 24
REPEATS = 5
SWEEP_STRENGTHS = [-0.1, -0.05, 0.0, 0.05, 0.1]
SWEEP_PROMPTS = 4
SWEEP_REPEATS = 3


def run(ctx) -> dict[str, float]:
    import torch

    from emolens.steering import Steering, apply_steering, measure_mean_norm, random_direction
    from emolens.tokens import to_inputs

    model = ctx.model
    chats = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(ctx.batch)]
    batch = to_inputs(model, chats, padding_side="left")
    dev = next(model.parameters()).device
    toks, mask = batch.tokens.to(dev), batch.attention_mask.to(dev)
    norm = measure_mean_norm(model, PROMPTS, layers=[LAYER])[LAYER]
    vec = random_direction(int(model.cfg.d_model), seed=0)
    variants = {
        "steer_generate": [Steering(vec, 0.1, layer=LAYER, scale=norm)],
        "steer_generated_positions": [Steering(vec, 0.1, layer=LAYER, scale=norm,
                                               positions="generated")],
        "steer_ablate_every_layer": [Steering(vec, 0.0, layers="all", op="ablate")],
    }

    def gen() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(toks, max_new_tokens=NEW_TOKENS, do_sample=False, verbose=False,
                           stop_at_eos=False, use_past_kv_cache=True, attention_mask=mask)
        return toks.shape[0] * NEW_TOKENS / (time.perf_counter() - t0)

    def steered(items) -> float:
        handle = apply_steering(model, items)
        try:
            return gen()
        finally:
            handle.remove()

    gen()  # warm-up
    names = ["plain", *variants]
    rates: dict[str, list[float]] = {k: [] for k in names}
    ratios: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(REPEATS):
        # rotate the order every repeat so drifting load does not favour a position
        order = names[rep % len(names):] + names[:rep % len(names)]
        got = {k: gen() if k == "plain" else steered(variants[k]) for k in order}
        for k, v in got.items():
            rates[k].append(v)
        for k in variants:
            ratios[k].append(got[k] / got["plain"])
    plain_rates = rates["plain"]
    out = {"plain_generate_tok_s": round(statistics.median(plain_rates), 1)}
    for name in variants:
        out[f"{name}_vs_plain"] = round(statistics.median(ratios[name]), 3)
        out[f"{name}_tok_s"] = round(statistics.median(rates[name]), 1)
    out.update(_hook_cost(model, variants["steer_generate"][0], toks.shape[0]))
    step_s = toks.shape[0] / out["plain_generate_tok_s"]  # one decode step of the whole batch
    out["steer_step_overhead_pct"] = round(
        100 * (out["steer_hook_us_per_call"] + out["steer_tracker_us_per_call"]) * 1e-6 / step_s, 3)
    out.update(sweep_batched_vs_loop(model, LAYER, norm))
    return out


def sweep_batched_vs_loop(model, layer: int, norm: float, *, new_tokens: int = NEW_TOKENS,
                          repeats: int = SWEEP_REPEATS) -> dict[str, float]:
    """Per-strength ``generate`` calls (the old sweep) over one batched ``sweep_generations``
    on the same prompts and strengths; ``sweep_batched_same_texts``: the fraction of texts the two
give alike (1 expected under greedy decoding; float rounding of other batch shapes can flip a
near-tie)."""
    import torch

    import emolens
    from emolens.generation import generate
    from emolens.registry import EmotionRegistry
    from emolens.sites import resolve_sites
    from emolens.steering import Steering, random_direction
    from emolens.steering.sweeps import sweep_generations

    sites = resolve_sites(model, [layer])
    vec = random_direction(int(model.cfg.d_model), seed=0)
    reg = EmotionRegistry(vec[None, None].clone(), ["calm"], sites, torch.tensor([float(norm)]),
                          metadata={"model": emolens.model_provenance(model).to_dict()})
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:SWEEP_PROMPTS]]

    def loop() -> list[list[str]]:
        return [generate(model, chats, max_new_tokens=new_tokens,
                         steering=None if s == 0 else Steering(reg, {"calm": s}, layer=layer)
                         ).texts for s in SWEEP_STRENGTHS]

    def batched() -> list[list[str]]:
        return [g.texts for g in sweep_generations(model, reg, "calm", SWEEP_STRENGTHS, chats,
                                                   layer=layer, max_new_tokens=new_tokens)]

    a, b = loop(), batched()  # also the warm-up
    pairs = [(x, y) for xs, ys in zip(a, b) for x, y in zip(xs, ys)]
    same = sum(x == y for x, y in pairs) / len(pairs)
    times: dict[str, list[float]] = {"loop": [], "batched": []}
    for rep in range(repeats):
        order = [("loop", loop), ("batched", batched)]
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["loop"], times["batched"])]
    return {"sweep_batched_vs_loop": round(statistics.median(ratios), 3),
            "sweep_loop_s": round(statistics.median(times["loop"]), 2),
            "sweep_batched_s": round(statistics.median(times["batched"]), 2),
            "sweep_batched_same_texts": round(same, 3)}


def _hook_cost(model, steering, batch: int) -> dict[str, float]:
    """Microseconds one steering hook call adds to a cached decode step ([batch, 1, d_model]),
    beside the time of a whole decode step: a load-robust view of the overhead."""
    import torch

    from emolens.steering import apply_steering

    handle = apply_steering(model, [steering])
    try:
        hp, lens = handle._hooks[0]
        fn = lens.user_hook
        x = torch.randn(batch, 1, int(model.cfg.d_model))
        handle.tracker.current = None
        fn(x, hook=hp)  # warm the caches
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            fn(x, hook=hp)
        per_call = (time.perf_counter() - t0) / n
        # the tracker's forward pre-hook, as on a cached decode step
        from transformers import DynamicCache

        ids = torch.zeros(batch, 1, dtype=torch.long)
        kwargs = {"attention_mask": torch.ones(batch, 41, dtype=torch.long),
                  "past_key_values": DynamicCache()}
        t0 = time.perf_counter()
        for _ in range(n):
            handle.tracker._pre(None, (ids,), kwargs)
        per_pre = (time.perf_counter() - t0) / n
    finally:
        handle.remove()
    return {"steer_hook_us_per_call": round(per_call * 1e6, 1),
            "steer_tracker_us_per_call": round(per_pre * 1e6, 1)}
