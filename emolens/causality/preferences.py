"""Activity preferences, scored from answer logits (no judge model, no sampling).

Every ordered pair of activities, "Would you prefer to (A) ... or (B) ...?"; a soft Elo per
activity from the A/B probabilities (Bradley-Terry with a position bias); the correlation of
each emotion's readout on the activity's tokens with Elo; and the Elo shift when half of the
activities are steered with an emotion on their own tokens. Draw it with
``emolens.views.plot_preferences`` (the frame's categories and Elo, ``frames["emotions"]``).
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Bool

from emolens.causality._common import CausalityError, slice_batch
from emolens.causality.ab import (
    Activity,
    BehaviourResult,
    ab_token_sets,
    est_dict,
    load_activities,
    logit,
    score_ab,
    steer_context,
)
from emolens.runtime import batches, progress_bar, rows_per_chunk
from emolens.scoring import project
from emolens.stats import ELO_SCALE, Estimate, mean_estimate, pearson, soft_elo
from emolens.steering.interventions import random_direction
from emolens.stimuli.emotions import CORE_EMOTIONS
from emolens.tokens import TokenizedBatch, to_inputs

if TYPE_CHECKING:
    from emolens.compat import Model


def preference_prompt(a: str, b: str) -> list[dict[str, str]]:
    """The chat asking to choose between activity ``a`` (option A) and ``b`` (option B)."""
    return [{"role": "user", "content": f"Would you prefer to (A) {a} or (B) {b}? "
                                        "Answer with A or B."}]


def span_masks(model: Model, batch: TokenizedBatch, spans: list[list[tuple[int, int]]]
                ) -> list[Bool[torch.Tensor, "batch pos"]]:
    """For each character span (per row), a [batch, pos] mask of the tokens overlapping it."""
    tok = model.tokenizer
    n, width = batch.tokens.shape
    out = [torch.zeros(n, width, dtype=torch.bool) for _ in range(len(spans[0]))]
    for r in range(n):
        text = batch.texts[r]
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        real = batch.tokens[r][batch.attention_mask[r].bool()].tolist()
        first = int(batch.attention_mask[r].int().argmax())
        if ids != real:
            raise CausalityError("the tokenizer's offsets do not match the model's tokens for "
                                 f"row {r}; cannot locate the activity tokens")
        for k, (cs, ce) in enumerate(spans[r]):
            for t, (s, e) in enumerate(enc["offset_mapping"]):
                if s < ce and e > cs:
                    out[k][r, first + t] = True
            if not out[k][r].any():
                raise CausalityError(f"row {r}: no token covers characters {cs}..{ce}")
    return out


def _readout_elo_correlation(readout: torch.Tensor, elo: torch.Tensor, seed: int) -> Estimate:
    """Pearson r of one emotion's readout with Elo over the activities shown; undefined (NaN,
    with the reason as its null) for fewer than 3 of them."""
    if readout.numel() < 3:
        nan = float("nan")
        return Estimate(nan, nan, nan, None, int(readout.numel()), 0.95,
                        f"Pearson r undefined: {readout.numel()} activities shown, fewer than 3")
    return pearson(readout.numpy(), elo.numpy(), seed=seed, n_resamples=1000,
                   n_permutations=2000)


def preference_experiment(
    model: Model,
    registry: Any,
    *,
    activities: Sequence[Activity] | None = None,
    layer: int | None = None,
    n_pairs: int | None = None,
    steer_emotions: Sequence[str] | None = None,
    steer_strength: float = 0.5,
    n_opponents: int = 4,
    random_control: bool = True,
    seed: int = 0,
    max_tokens: int = 2048,
    strict: bool = True,
    progress: bool = True,
) -> BehaviourResult:
    """Soft Elo of activities from A/B preferences, its correlation with emotion readouts on
    the activity tokens, and the Elo shift from steering activities with each emotion.

    Args:
        n_pairs: ordered pairs to ask (both orders of ``n_pairs // 2`` unordered pairs drawn
            with ``seed``); ``None`` asks all ``n * (n - 1)``.
        steer_emotions: emotions to steer with (default: the study's 12 key emotions present in
            the registry, else all). Half of the activities (seeded, half of each category) are
            steered on their own tokens at ``steer_strength`` against ``n_opponents`` unsteered
            activities each, in both orders.
        The Elo shift of a steered activity is ``ELO_SCALE * mean(logit P(chosen | steered) -
        logit P(chosen | unsteered))`` over its prompts: under Bradley-Terry with the
        opponents' ratings fixed this is its rating change.
    """
    registry.check_model(model, strict=strict)
    site = registry.site(layer)
    acts = list(activities if activities is not None else load_activities())
    n = len(acts)
    if n < 4:
        raise CausalityError(f"need at least 4 activities, got {n}")
    rng = random.Random(seed)
    unordered = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if n_pairs is not None and n_pairs < 2 * len(unordered):
        unordered = sorted(rng.sample(unordered, max(1, n_pairs // 2)))
    # steered half: half of each category
    by_cat: dict[str, list[int]] = {}
    for i, act in enumerate(acts):
        by_cat.setdefault(act.category, []).append(i)
    steered: list[int] = []
    for cat in sorted(by_cat):
        idx = by_cat[cat][:]
        rng.shuffle(idx)
        steered += idx[: len(idx) // 2]
    steered = sorted(steered)
    unsteered = [i for i in range(n) if i not in steered]
    steer_pairs: list[tuple[int, int]] = []
    for s_i in steered:
        for o in rng.sample(unsteered, min(n_opponents, len(unsteered))):
            steer_pairs.append((s_i, o))
    all_unordered = sorted(set(unordered) | {(min(p), max(p)) for p in steer_pairs})
    ordered = [(i, j) for i, j in all_unordered] + [(j, i) for i, j in all_unordered]
    index = {p: k for k, p in enumerate(ordered)}
    convs = [preference_prompt(acts[i].text, acts[j].text) for i, j in ordered]
    batch = to_inputs(model, convs)
    spans = []
    for r, (i, j) in enumerate(ordered):
        t = batch.texts[r]
        sa = t.index(f"(A) {acts[i].text}") + 4
        sb = t.index(f"(B) {acts[j].text}") + 4
        spans.append([(sa, sa + len(acts[i].text)), (sb, sb + len(acts[j].text))])
    mask_a, mask_b = span_masks(model, batch, spans)
    letters = ab_token_sets(model)
    emos = registry.emotions
    both = torch.stack([mask_a, mask_b], 1)                           # [N, 2, pos]

    t0 = time.perf_counter()
    readouts: list[torch.Tensor] = []
    per = rows_per_chunk(batch.tokens.shape[1], max_tokens)
    p_a_list, mass_list = [], []
    for sl in progress_bar(list(batches(len(batch), per)), desc="preferences",
                           enabled=progress):
        sc = score_ab(model, slice_batch(batch, sl), letters, capture=[site.name],
                      max_tokens=10**9)
        x = sc.acts[site.name][0]                                      # [b, pos, d]
        proj = project(x.float(), registry, site.layer)                # [b, pos, E]
        m = both[sl].float()                                           # [b, 2, pos]
        readouts.append(torch.einsum("bkp,bpe->bke", m, proj) / m.sum(-1, keepdim=True))
        p_a_list.append(sc.p_a)
        mass_list.append(sc.mass)
    p_a = torch.cat(p_a_list)
    mass = torch.cat(mass_list)
    ro = torch.cat(readouts)                                           # [N, 2, E]
    base_seconds = time.perf_counter() - t0
    first = torch.tensor([i for i, _ in ordered])
    second = torch.tensor([j for _, j in ordered])
    # an activity in no prompt (a random subset of pairs need not cover them all) has neither
    # an Elo (the fit leaves it at its prior) nor a readout: NaN, left out of the correlations
    counts = torch.zeros(n)
    counts.index_add_(0, first, torch.ones(len(first)))
    counts.index_add_(0, second, torch.ones(len(second)))
    shown = counts > 0
    shown_idx = shown.nonzero().flatten().tolist()
    fit = soft_elo(n, first, second, p_a, anchor=shown_idx)
    elo = torch.where(shown, fit.elo, torch.full_like(fit.elo, float("nan")))
    # readout per activity: mean over its appearances (as A and as B)
    sums = torch.zeros(n, len(emos))
    sums.index_add_(0, first, ro[:, 0])
    sums.index_add_(0, second, ro[:, 1])
    act_readout = torch.full((n, len(emos)), float("nan"))
    act_readout[shown] = sums[shown] / counts[shown, None]
    corr = {e: _readout_elo_correlation(act_readout[shown_idx, k], elo[shown_idx], seed)
            for k, e in enumerate(emos)}
    frame = pd.DataFrame({
        "activity": [a.text for a in acts], "id": [a.id for a in acts],
        "category": [a.category for a in acts], "elo": elo.numpy(),
        "steered": [i in steered for i in range(n)],
        **{f"readout_{e}": act_readout[:, k].numpy() for k, e in enumerate(emos)},
    })
    pairs_df = pd.DataFrame({"a": [acts[i].id for i in first.tolist()],
                             "b": [acts[j].id for j in second.tolist()],
                             "p_a": p_a.numpy(), "letter_mass": mass.numpy()})
    # steering
    if steer_emotions is None:
        steer_emotions = [e for e in CORE_EMOTIONS if e in emos] or list(emos)
    missing = [e for e in steer_emotions if e not in emos]
    if missing:
        raise CausalityError(f"steer_emotions {missing} are not in the registry")
    s_ordered = [(a, o) for a, o in steer_pairs] + [(o, a) for a, o in steer_pairs]
    s_rows = torch.tensor([index[p] for p in s_ordered])
    s_batch = slice_batch(batch, s_rows)
    # mask of the steered activity's tokens in each steering prompt
    s_mask = torch.stack([mask_a[index[p]] if p[0] in steered else mask_b[index[p]]
                          for p in s_ordered])
    steered_slot_is_a = torch.tensor([p[0] in steered for p in s_ordered])
    base_p = p_a[s_rows]
    base_choice = torch.where(steered_slot_is_a, base_p, 1 - base_p)
    which = torch.tensor([p[0] if p[0] in steered else p[1] for p in s_ordered])
    conds: list[tuple[str, Any]] = [(e, e) for e in steer_emotions]
    if random_control:
        conds.append(("random", random_direction(int(model.cfg.d_model), seed=seed + 7)))
    shift_rows = []
    effects: dict[str, Estimate] = {}
    t1 = time.perf_counter()

    for name, direction in progress_bar(conds, desc="preference steering", enabled=progress):
        def steer_f(b: TokenizedBatch, sl: slice, _d: Any = direction) -> Any:
            return steer_context(model, registry, _d, steer_strength, site.layer,
                              mask=s_mask[sl], strict=strict)
        sc = score_ab(model, s_batch, letters, steer=steer_f, max_tokens=max_tokens)
        choice = torch.where(steered_slot_is_a, sc.p_a, 1 - sc.p_a)
        d = (logit(choice) - logit(base_choice)) * ELO_SCALE
        per_act = []
        for a in steered:
            sel = which == a
            shift = float(d[sel].mean())
            per_act.append(shift)
            shift_rows.append({"emotion": name, "activity": acts[a].id,
                               "category": acts[a].category, "elo_shift": shift,
                               "p_chosen_unsteered": float(base_choice[sel].mean()),
                               "p_chosen_steered": float(choice[sel].mean()),
                               "letter_mass": float(sc.mass[sel].mean())})
        effects[name] = mean_estimate(per_act, seed=seed)
    steer_seconds = time.perf_counter() - t1
    shifts = pd.DataFrame(shift_rows)
    emo_effect = [effects[e].value for e in steer_emotions]
    emo_corr = [corr[e].value for e in steer_emotions]
    valid = [k for k in range(len(steer_emotions))
             if not (math.isnan(emo_effect[k]) or math.isnan(emo_corr[k]))]
    across = None
    if len(valid) >= 3:
        across = pearson([emo_corr[k] for k in valid], [emo_effect[k] for k in valid], seed=seed,
                         n_resamples=1000, n_permutations=2000)
    cat_elo = frame[shown.numpy()].groupby("category").elo.mean().to_dict()
    summary: dict[str, Any] = {
        "site": site.name, "layer": site.layer, "n_activities": n,
        "n_prompts": len(ordered), "n_possible_ordered_pairs": n * (n - 1),
        "n_activities_shown": len(shown_idx),
        "activities_not_shown": [acts[i].id for i in range(n) if not shown[i]],
        "pairs": "all" if n_pairs is None else f"random subset (seed {seed}) plus steering pairs",
        "position_bias_elo": fit.position_bias, "elo_fit_loss": fit.loss,
        "letter_mass": float(mass.mean()),
        "elo_by_category": {k: float(v) for k, v in cat_elo.items()},
        "readout_elo_correlation": {e: est_dict(c) for e, c in corr.items()},
        "steering": {"strength": steer_strength, "n_steered": len(steered),
                     "n_opponents": n_opponents, "n_prompts_per_emotion": len(s_ordered),
                     "elo_shift": {k: est_dict(v) for k, v in effects.items()}},
        "steering_vs_correlation": None if across is None else est_dict(across),
        "study_reference": "Sofroniew, Lindsey et al. 2026: r = 0.85 across 35 emotions",
        "seconds": {"elo": round(base_seconds, 1), "steering": round(steer_seconds, 1)},
    }
    nan = float("nan")
    per_emotion = pd.DataFrame([{
        "emotion": e, "r": corr[e].value, "r_low": corr[e].low, "r_high": corr[e].high,
        "elo_shift": effects[e].value if e in effects else nan,
        "shift_low": effects[e].low if e in effects else nan,
        "shift_high": effects[e].high if e in effects else nan} for e in emos])
    return BehaviourResult("activity preferences", frame, summary,
                           {"pairs": pairs_df, "steering": shifts, "emotions": per_emotion})
