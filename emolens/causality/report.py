"""``run_causality``: the causality and behaviour sections of ``emolens run``.

Runs, on one model and registry: directional patching with placebos on emotion-scenario pairs,
a batched layer x position patching map on a minimal pair, head/MLP attribution of two
directions, the logit effects of the key directions, and the three behavioural experiments.
Returns ``({"causality": {...}, "behaviour": {...}}, {figure name: matplotlib Figure})``; every
value in the dict is JSON-able. ``quick=True`` (default) sizes everything to a few minutes on
2 CPU cores; ``quick=False`` runs the full data sets (all 44 shortcut scenarios, all 992
ordered activity pairs, more strengths and opponents).
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from emolens import views
from emolens.causality._common import CausalityError, as_batch, forward
from emolens.causality.ab import QUANT_NOTE, BehaviourResult, load_shortcut_scenarios
from emolens.causality.attribution import direction_attribution, direction_logit_effects
from emolens.causality.dose import dose_response
from emolens.causality.maps import PatchingMap, patching_map
from emolens.causality.metrics import contrast_tokens, logit_diff
from emolens.causality.patching import DirectionPatchResult, patch_direction
from emolens.causality.preferences import preference_experiment
from emolens.causality.shortcut import shortcut_experiment, shortcut_prompt
from emolens.io import json_safe
from emolens.positions import reply_or_last
from emolens.stimuli.emotions import CORE_EMOTIONS

if TYPE_CHECKING:
    from emolens.compat import Model

POSITIVE = ("happy", "inspired", "loving", "proud", "calm")
NEGATIVE = ("desperate", "angry", "guilty", "sad", "afraid", "nervous")
MINIMAL_PAIRS = (
    ("I feel angry today, so I", "I feel happy today, so I"),
    ("I feel sad today, so I", "I feel happy today, so I"),
    ("She was afraid of the storm, so she", "She was excited by the storm, so she"),
    ("My friend is angry with me and I", "My friend is pleased with me and I"),
)


def _scenario_pairs(n_pairs: int) -> tuple[list[Any], list[Any], list[str]]:
    """(sources, targets, labels): negative -> positive and positive -> negative scenarios."""
    from emolens.stimuli import load_corpus

    scen = load_corpus().scenarios
    by: dict[str, list[Any]] = {}
    for r in scen:
        by.setdefault(str(r.emotion), []).append(r)
    neg = [r for e in NEGATIVE for r in by.get(e, [])]
    pos = [r for e in POSITIVE for r in by.get(e, [])]
    # interleave emotions so a short list still covers several of them
    neg = sorted(neg, key=lambda r: (r.id[-2:], r.id))
    pos = sorted(pos, key=lambda r: (r.id[-2:], r.id))
    if not neg or not pos:
        raise CausalityError("the corpus has no positive/negative scenarios to pair")
    src, tgt, lab = [], [], []
    for k in range(n_pairs):
        a, b = neg[k % len(neg)], pos[k % len(pos)]
        if k % 2:
            a, b = b, a
        src.append(a.messages)
        tgt.append(b.messages)
        lab.append(f"{a.emotion}->{b.emotion}")
    return src, tgt, lab


def _equal_length_pair(model: Model) -> tuple[str, str]:
    for clean, corrupted in MINIMAL_PAIRS:
        if model.to_tokens(clean).shape == model.to_tokens(corrupted).shape:
            return clean, corrupted
    raise CausalityError("no built-in minimal pair tokenises to equal lengths on this model")


# Sizes. QUICK: a smoke test of every part (about 30 s on 2 CPU cores with the default model);
# RUN: what ``emolens run`` uses (about 2-3 minutes); FULL: the complete data sets (an hour or
# more on 2 CPU cores; for a GPU or a patient researcher).
QUICK_SIZES: dict[str, Any] = {
    "patch_pairs": 4, "n_placebo": 2, "attribution_prompts": 4, "shortcut_scenarios": 6,
    "shortcut_strengths": (0.1,), "preference_pairs": 32, "preference_opponents": 1,
    "preference_activities": None, "preference_emotions": ("happy",),
    "templates": None, "patching_map_layer_step": 2,
}
RUN_SIZES: dict[str, Any] = {
    "patch_pairs": 8, "n_placebo": 3, "attribution_prompts": 8, "shortcut_scenarios": 12,
    "shortcut_strengths": (-0.1, 0.1), "preference_pairs": 96, "preference_opponents": 1,
    "preference_activities": None,
    "preference_emotions": ("happy", "calm", "desperate", "angry", "sad", "afraid"),
    "templates": None, "patching_map_layer_step": 1,
}
FULL_SIZES: dict[str, Any] = {
    "patch_pairs": 24, "n_placebo": 8, "attribution_prompts": 16, "shortcut_scenarios": None,
    "shortcut_strengths": (-0.5, -0.2, -0.1, -0.05, 0.05, 0.1, 0.2, 0.5),
    "preference_pairs": None, "preference_opponents": 4, "preference_activities": None,
    "preference_emotions": None, "templates": None, "patching_map_layer_step": 1,
}


def _jsonable_size(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, str)):
        return v
    items = list(v)
    if all(isinstance(x, (int, float, str)) for x in items):
        return items
    return f"{len(items)} custom items"


# ------------------------------------------------------------------------------ figures
# Each report figure is one ``emolens.views`` call on a result's arrays; these helpers are
# those calls (docs/causality.md and tutorials/04_causality.ipynb make the same ones).
def direction_patch_figure(res: DirectionPatchResult) -> Any:
    """``views.plot_pair_effects`` of a ``patch_direction`` result: per-pair effect, placebo
    and whole-activation patch, with the estimates and intervals."""
    names = {"effect": "directions", "placebo": "placebo (mean of draws)",
             "full": "whole activation"}
    cols = [c for c in ("effect", "placebo", "full") if c in res.per_pair]
    return views.plot_pair_effects(
        {names[c]: res.per_pair[c] for c in cols},
        {names[c]: (res.estimates[c].value, res.estimates[c].low, res.estimates[c].high)
         for c in cols if c in res.estimates},
        ylabel=f"change in {res.metric_name}",
        title=f"patching [{res.label}] at {', '.join(res.sites)}")


def patching_map_figure(m: PatchingMap) -> Any:
    """``views.plot_patching_map`` of the recovered fraction (the raw metric when the clean
    and corrupted metrics are equal)."""
    try:
        values, label = m.normalized(), f"recovered fraction of {m.metric_name}"
    except CausalityError:
        values, label = m.values, m.metric_name
    return views.plot_patching_map(values, m.layers, tokens=m.tokens, colorbar_label=label,
                                   title=f"patching {m.kind}")


def shortcut_figure(res: BehaviourResult) -> Any:
    """``views.plot_interval_lines`` of ``frames["curves"]`` with the unsteered mean."""
    c = res.frames["curves"]
    return views.plot_interval_lines(
        c.strength, c["mean"], c.low, c.high, c.condition,
        reference=res.summary["unsteered"]["value"], ylabel="P(shortcut)",
        title="shortcut under pressure: steering dose-response")


def preferences_figure(res: BehaviourResult) -> Any:
    """``views.plot_preferences`` from the frame and ``frames["emotions"]``."""
    e, s = res.frames["emotions"], res.summary
    across = s["steering_vs_correlation"]
    rand = s["steering"]["elo_shift"].get("random")
    return views.plot_preferences(
        res.frame.category, res.frame.elo, e.emotion, e.r, elo_shift=e.elo_shift,
        random_shift=None if rand is None else rand["value"],
        across_r=None if across is None else across["value"])


def dose_figure(res: BehaviourResult) -> Any:
    """``views.plot_dose_panels`` from the frame and the checks."""
    f, ck = res.frame, res.frames["checks"]
    return views.plot_dose_panels(f.template, f.value, f.emotion, f.readout,
                                  zip(ck.template, ck.emotion, ck.expected))


def run_causality(model: Model, registry: Any, *, quick: bool = True, layer: int | None = None,
                  seed: int = 0, progress: bool = False, raise_errors: bool = False,
                  sizes: dict[str, Any] | None = None, strict: bool = True,
                  behaviours: Sequence[str] = ("shortcut", "preferences", "dose_response")
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run every causal and behavioural analysis; return (sections, figures).

    ``sections``: ``{"causality": {...}, "behaviour": {...}}``, JSON-able. ``figures``:
    ``{name: matplotlib.figure.Figure}``. A part that fails records ``{"error": ...}`` and the
    rest still run (``raise_errors=True`` re-raises instead). ``sizes`` overrides entries of
    ``QUICK_SIZES`` / ``FULL_SIZES`` (e.g. ``{"preference_pairs": 400}``); ``emolens run``
    passes ``RUN_SIZES`` with ``quick=False``. ``strict``: the registry's model check
    (``EmotionRegistry.check_model``), run first and passed to every part. ``behaviours``: which
    behaviour experiments run (``emolens run`` reports the dose-response in its own section
    and leaves it out here, so it is computed once).
    """
    registry.check_model(model, strict=strict)
    size = dict(QUICK_SIZES if quick else FULL_SIZES)
    unknown = set(sizes or {}) - set(size)
    if unknown:
        raise CausalityError(f"unknown sizes {sorted(unknown)}; valid: {sorted(size)}")
    size.update(sizes or {})
    site = registry.site(layer)
    emos = registry.emotions
    figures: dict[str, Any] = {}
    caus: dict[str, Any] = {"site": site.name, "layer": site.layer, "quick": quick,
                            "seed": seed, "sizes": {k: _jsonable_size(v) for k, v in size.items()},
                            "seconds": {}}
    beh: dict[str, Any] = {"site": site.name, "layer": site.layer, "quick": quick,
                           "seconds": {}}
    prov = getattr(registry, "provenance", {}) or {}
    if "SmolLM2" in str(prov.get("model_id", "")):
        caus["model_note"] = beh["model_note"] = QUANT_NOTE

    def part(section: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            section[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failed part must not sink the report
            if raise_errors:
                raise
            section[name] = {"error": f"{type(e).__name__}: {e}",
                             "where": traceback.format_exc(limit=3).splitlines()[-3:]}
        section["seconds"][name] = round(time.perf_counter() - t0, 1)

    # ----------------------------------------------------------------- directional patching
    def direction_patching() -> dict[str, Any]:
        n_pairs = int(size["patch_pairs"])
        src, tgt, labels = _scenario_pairs(n_pairs)
        sb, tb = as_batch(model, src), as_batch(model, tgt)
        with torch.no_grad():
            sl = forward(model, sb)
            tl = forward(model, tb)
        rs, rt = reply_or_last(sb), reply_or_last(tb)
        a, b = contrast_tokens(model, sl[torch.arange(len(sb)), rs], tl[torch.arange(len(tb)), rt])
        del sl, tl
        metric = logit_diff(a, b)
        out: dict[str, Any] = {"pairs": labels, "metric": (
            "logit(token the source favours) - logit(token the target favours) at the "
            "reply-opening token, tokens chosen per pair from the unpatched runs")}
        present = [e for e in (*POSITIVE, *NEGATIVE) if e in emos]
        results = []
        if present:
            results.append(("emotion_span", patch_direction(
                model, sb, tb, registry, emotions=present, layer=site.layer, metric=metric,
                n_placebo=int(size["n_placebo"]), seed=seed, strict=strict, progress=progress)))
        pos_ = [e for e in POSITIVE if e in emos]
        neg_ = [e for e in NEGATIVE if e in emos]
        if pos_ and neg_:
            w = {**{e: 1.0 / len(pos_) for e in pos_}, **{e: -1.0 / len(neg_) for e in neg_}}
            results.append(("valence_axis", patch_direction(
                model, sb, tb, registry, emotions=[w], layer=site.layer, metric=metric,
                n_placebo=int(size["n_placebo"]), seed=seed, include_full=False,
                strict=strict, progress=progress)))
        for name, res in results:
            s = res.summary()
            s["directions"] = name if name == "valence_axis" else s["directions"]
            out[name] = s
            figures[f"causality_patch_{name}"] = direction_patch_figure(res)
        return out

    part(caus, "direction_patching", direction_patching)

    # ----------------------------------------------------------------- patching map
    def pmap() -> dict[str, Any]:
        clean, corrupted = _equal_length_pair(model)
        cb, xb = as_batch(model, clean), as_batch(model, corrupted)
        with torch.no_grad():
            cl = forward(model, cb)[:, -1]
            xl = forward(model, xb)[:, -1]
        a, b = contrast_tokens(model, cl, xl)
        ia, ib = int(a[0]), int(b[0])

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return (logits[:, -1, ia] - logits[:, -1, ib]).mean()
        metric.__name__ = "logit_diff"
        step = int(size["patching_map_layer_step"])  # quick: every second layer
        m = patching_map(model, cb, xb, metric, kind="resid_pre",
                         layers=list(range(0, int(model.cfg.n_layers), step)), progress=progress)
        figures["causality_patching_map"] = patching_map_figure(m)
        s = m.summary()
        s.update({"clean": clean, "corrupted": corrupted,
                  "tokens_compared": [model.tokenizer.decode([ia]), model.tokenizer.decode([ib])],
                  "method": "batched resid_pre patching (emolens.causality.patch_resid_pre), "
                            "equal to transformer_lens.patching.get_act_patch_resid_pre"})
        if abs(m.clean_value - m.corrupted_value) > 1e-8:
            norm = m.normalized()
            changed = (cb.tokens[0] != xb.tokens[0]).nonzero().flatten().tolist()
            s["changed_positions"] = changed
            for p in changed:
                s[f"recovery_at_pos{p}_by_layer"] = [round(float(v), 4) for v in norm[:, p]]
            s["recovery_at_last_position_by_layer"] = [round(float(v), 4) for v in norm[:, -1]]
        return s

    part(caus, "patching_map", pmap)

    # ----------------------------------------------------------------- attribution
    def attribution() -> dict[str, Any]:
        pick = [e for e in ("desperate", "calm") if e in emos] or emos[:2]
        scen = load_shortcut_scenarios()[: int(size["attribution_prompts"])]
        convs = [shortcut_prompt(s, True) for s in scen]
        att = direction_attribution(model, convs, registry, layer=site.layer, emotions=pick,
                                    positions="reply")
        for e in pick:
            grid, layers, columns = att.grid(e)
            figures[f"causality_attribution_{e}"] = views.plot_component_writes(
                grid, layers, columns, title=f"direct writes along '{e}' at {att.site}")
        s = att.summary(k=6)
        s["prompts"] = "shortcut scenarios (shortcut as option A), reply-opening token"
        return s

    part(caus, "attribution", attribution)

    def logit_effects() -> dict[str, Any]:
        pick = [e for e in CORE_EMOTIONS if e in emos] or emos[:12]
        return direction_logit_effects(model, registry, layer=site.layer, emotions=pick,
                                       top_k=8).summary()

    part(caus, "logit_effects", logit_effects)

    # ----------------------------------------------------------------- behaviour
    def shortcut() -> dict[str, Any]:
        pick = [e for e in ("desperate", "calm") if e in emos]
        if not pick:
            raise CausalityError("the registry has neither 'desperate' nor 'calm'")
        res = shortcut_experiment(
            model, registry, emotions=pick, layer=site.layer,
            strengths=tuple(size["shortcut_strengths"]), n_scenarios=size["shortcut_scenarios"],
            seed=seed, strict=strict, progress=progress)
        figures["behaviour_shortcut"] = shortcut_figure(res)
        return res.summary

    def preferences() -> dict[str, Any]:
        steer = size["preference_emotions"]
        if steer is not None:  # sizes name emotions; keep those this registry has
            steer = [e for e in steer if e in emos] or None
        res = preference_experiment(
            model, registry, layer=site.layer, n_pairs=size["preference_pairs"],
            n_opponents=int(size["preference_opponents"]),
            activities=size["preference_activities"], steer_emotions=steer,
            seed=seed, strict=strict, progress=progress)
        figures["behaviour_preferences"] = preferences_figure(res)
        s = res.summary
        # an activity in no prompt has a NaN Elo: None in the JSON
        s["activities"] = json_safe(
            res.frame[["id", "category", "elo", "steered"]].to_dict("records"))
        return s

    def dose() -> dict[str, Any]:
        res = dose_response(model, registry, layer=site.layer, templates=size["templates"],
                            seed=seed, strict=strict, progress=progress)
        figures["behaviour_dose_response"] = dose_figure(res)
        return res.summary

    for key, fn in (("shortcut", shortcut), ("preferences", preferences),
                    ("dose_response", dose)):
        if key in behaviours:
            part(beh, key, fn)
    return {"causality": caus, "behaviour": beh}, figures
