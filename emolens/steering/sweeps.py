"""Dose-response of steering, the causal word test, and fluency costs.

- ``sweep``: generate from each prompt at each strength, score every text with judges that do
  not read the steered direction (``emolens.steering.judges``), plus the perplexity of the
  steered text under the unsteered model; returns a tidy DataFrame. Every strength x prompt is
  one row of a single ``generate`` batch (``Steering(..., rows=...)`` per strength), so a sweep
  costs about one generation, not one per strength. ``sweep_curves`` gives the dose-response
  (means with bootstrap intervals over prompts); ``plot_sweep`` draws it with
  ``emolens.views.plot_interval_lines``.
- ``emotion_word_test``: the study's check that steering toward an emotion raises the
  probability of its own word after "They feel" more than any other emotion word, with a
  norm-matched random direction per emotion as the control (every emotion, every control and
  the unsteered baseline are rows of the same forward batches).
- ``neutral_loss`` / ``neutral_kl`` (``neutral_kls``: several conditions at once): what
  steering costs on neutral reference text (loss while steered; KL from the unsteered
  next-token distribution).

What these establish: a change in judged emotion or word probability *caused by* the
intervention (everything else is held fixed, greedy decoding by default). What they do not:
that the model "feels" anything, or that the effect is specific to this direction unless the
random-direction control stays flat.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Int

from emolens.errors import InputError, SteeringError
from emolens.runtime import batches, model_device, progress_bar, resolve_batch_size
from emolens.steering.interventions import Steering, apply_steering, random_direction
from emolens.steering.judges import (
    JudgeInput,
    question_context,
    resolve_judges,
    word_logprobs,
)
from emolens.tokens import TokenizedBatch

if TYPE_CHECKING:
    from emolens.compat import Model


def _prompt_label(model: Model, prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else str(prompt[-1].get("content", ""))


def _check_strengths(strengths: Sequence[float | int]) -> list[float]:
    out = []
    for s in strengths:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(float(s)):
            raise SteeringError(f"strength {s!r} is not a finite number (units of the mean "
                                "residual norm, e.g. 0.05)")
        out.append(float(s))
    if not out:
        raise SteeringError("strengths is empty; pass e.g. [0, 0.05, 0.1] (include 0 for the "
                            "unsteered baseline)")
    return out


def _prompts_list(prompts: Any) -> list[Any]:
    from emolens.tokens import is_conversation

    if isinstance(prompts, str) or is_conversation(prompts):
        return [prompts]
    items = list(prompts)
    if not items:
        raise InputError("prompts is empty; pass at least one string or conversation")
    return items


def sequence_perplexity(model: Model, tokens: Int[torch.Tensor, "batch pos"],
                        attention_mask: Int[torch.Tensor, "batch pos"],
                        prompt_len: int) -> list[float]:
    """Per row, ``exp`` of the mean negative log-likelihood of the generated tokens (columns
    ``prompt_len..``, real tokens only) under whatever hooks are active (none: unsteered)."""
    device = model_device(model)
    toks = tokens.to(device)
    am = attention_mask.to(device)
    kwargs = {} if bool(am.all()) else {"attention_mask": am}
    with torch.no_grad():
        logits = model(toks, return_type="logits", **kwargs)
    logp = logits[:, :-1].float().log_softmax(-1)
    nll = -logp.gather(-1, toks[:, 1:, None])[..., 0]
    keep = am[:, 1:].bool().clone()
    keep[:, : max(prompt_len - 1, 0)] = False
    out = []
    for i in range(toks.shape[0]):
        n = int(keep[i].sum())
        out.append(float(torch.exp(nll[i][keep[i]].mean())) if n else float("nan"))
    return out


def sweep(model: Model, registry: Any, emotion: str, strengths: Sequence[float | int], prompts: Any, *,
          judges: Sequence[Any] = ("emotion_words", "lexicon"), max_new_tokens: int = 40,
          layer: int | None = None, seed: int = 0, progress: bool = True,
          positions: Any = "all", do_sample: bool = False, words: Sequence[str] | None = None,
          use_past_kv_cache: bool = True, batch_size: int | None = 32) -> pd.DataFrame:
    """Steer toward ``emotion`` at each strength and judge the text (one row per prompt x
    strength).

    Columns: ``prompt`` (the text, or the last user message of a conversation),
    ``prompt_index``, ``emotion``, ``layer``, ``strength``, ``text``, ``n_tokens``, one
    column per judge score (``emotion_words``, ``emotion_words_logp``, ``lexicon``, ...), and
    ``perplexity`` (of the steered text under the unsteered model). ``df.attrs`` records the
    settings. Strength 0 means no steering at all (the baseline; include it).

    Batched: the strengths x prompts are the rows (strength-major) of one ``generate`` call,
    ``batch_size`` rows at a time, each nonzero strength a ``Steering(..., rows=...)`` on its
    own rows, the strength-0 rows unsteered. Every row keeps the left padding the prompts get
    together, so under greedy decoding (the default) the texts and scores equal those of one
    ``generate`` call per strength. With ``do_sample`` the draw is repeatable for a given
    ``seed`` and ``batch_size`` but differs from per-strength calls.

    Judges run on the unsteered model after generation, one strength at a time (see
    ``emolens.steering.judges``); ``words`` are the candidate emotion words for the word judge
    (default: the registry's emotions). ``seed`` seeds sampling when ``do_sample`` (greedy
    otherwise).
    """
    values = _check_strengths(strengths)
    items = _prompts_list(prompts)
    batch_size = resolve_batch_size(batch_size, model)
    if emotion not in registry.emotions:
        Steering(registry, {emotion: 1.0})  # raises SteeringError naming the emotion
    layer_used = registry.default_layer if layer is None else layer
    judge_list = resolve_judges(judges)
    cand = list(words) if words is not None else list(registry.emotions)
    gens = sweep_generations(model, registry, emotion, values, items, layer=layer_used,
                             positions=positions, max_new_tokens=max_new_tokens,
                             do_sample=do_sample, seed=seed,
                             use_past_kv_cache=use_past_kv_cache, batch_size=batch_size,
                             progress=progress)
    rows: list[dict[str, Any]] = []
    for s, g in progress_bar(list(zip(values, gens)), desc="judging", enabled=progress):
        inp = JudgeInput(model=model, prompts=items, replies=g.texts, tokens=g.tokens,
                         attention_mask=g.attention_mask, prompt_len=g.prompt_len,
                         emotion=emotion, words=cand)
        scores: dict[str, list[float]] = {}
        for _, judge in judge_list:
            scores.update(judge(inp))
        ppl = sequence_perplexity(model, g.tokens, g.attention_mask, g.prompt_len)
        n_tok = (g.attention_mask[:, g.prompt_len:].sum(-1)).tolist()
        for i, p in enumerate(items):
            row = {"prompt": _prompt_label(model, p), "prompt_index": i, "emotion": emotion,
                   "layer": layer_used, "strength": s, "text": g.texts[i],
                   "n_tokens": int(n_tok[i])}
            row.update({k: float(v[i]) for k, v in scores.items()})
            row["perplexity"] = ppl[i]
            rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update({
        "emotion": emotion, "layer": layer_used, "positions": str(positions),
        "judges": [n for n, _ in judge_list], "words": cand, "max_new_tokens": max_new_tokens,
        "do_sample": do_sample, "seed": seed, "batch_size": batch_size,
        "units": "strength in fractions of the mean residual-stream norm at the layer",
        "model": getattr(registry, "provenance", {}).get("model_id"),
    })
    return df


def _padding_token(model: Model) -> int:
    """The id ``model.generate(stop_at_eos=True)`` writes into rows that have finished."""
    tok = getattr(model, "tokenizer", None)
    tok_eos = getattr(tok, "eos_token_id", None) if tok is not None else None
    eos = getattr(model.cfg, "eos_token_id", None)
    if eos is None:
        eos = tok_eos
    if isinstance(eos, int):
        return eos
    if eos:
        return int(tok_eos) if tok_eos is not None else int(list(eos)[0])
    return 0


def sweep_generations(model: Model, registry: Any, emotion: str, strengths: Sequence[float | int],
                      prompts: Any, *, layer: int | None = None, positions: Any = "all",
                      max_new_tokens: int = 40, do_sample: bool = False, seed: int | None = 0,
                      use_past_kv_cache: bool = True, batch_size: int | None = 32,
                      progress: bool = False) -> list[Any]:
    """The generations of ``sweep``: one ``Generation`` per strength (rows: the prompts), laid
    out as one ``generate(model, prompts, steering=Steering(registry, {emotion: s}, ...))`` call
    per strength would give them (same left padding, same number of generated columns, rows
    that stopped early filled with the end-of-sequence id), but computed in batches of
    ``batch_size`` rows (strength-major) with each strength steering only its own rows.
    Strength 0 rows run unsteered."""
    from emolens.generation import Generation, generate
    from emolens.tokens import to_inputs

    values = _check_strengths(strengths)
    items = _prompts_list(prompts)
    batch_size = resolve_batch_size(batch_size, model)
    layer_used = registry.default_layer if layer is None else layer
    full = to_inputs(model, items, padding_side="left")  # the layout of every strength's rows
    n_p, prompt_len = len(items), int(full.tokens.shape[1])
    base = {k: Steering(registry, {emotion: s}, layer=layer_used, positions=positions)
            for k, s in enumerate(values) if s != 0}
    plan = [(k, i) for k in range(len(values)) for i in range(n_p)]
    texts: list[str] = [""] * len(plan)
    generated: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(plan)
    real = [0] * len(plan)
    settings: dict[str, Any] = {}
    starts = range(0, len(plan), batch_size)
    for start in progress_bar(starts, desc=f"sweep {emotion}", enabled=progress):
        part = plan[start:start + batch_size]
        pick = torch.tensor([i for _, i in part])
        sub = TokenizedBatch(full.tokens[pick], full.attention_mask[pick],
                             full.content_mask[pick], full.reply_pos[pick],
                             [full.texts[i] for _, i in part], "left")
        steerings = [base[k].with_rows([j for j, (kk, _) in enumerate(part) if kk == k])
                     for k in dict.fromkeys(k for k, _ in part) if k in base]
        g = generate(model, sub, max_new_tokens=max_new_tokens, steering=steerings or None,
                     do_sample=do_sample, seed=seed, use_past_kv_cache=use_past_kv_cache)
        settings = dict(g.settings)
        for j in range(len(part)):
            texts[start + j] = g.texts[j]
            generated[start + j] = g.tokens[j, prompt_len:]
            real[start + j] = int(g.attention_mask[j, prompt_len:].sum())
    fill = _padding_token(model)
    out = []
    for k in range(len(values)):
        rs = range(k * n_p, (k + 1) * n_p)
        # one call per strength would stop once all its rows stopped (or at max_new_tokens)
        width = max(real[r] for r in rs)
        toks = torch.full((n_p, width), fill, dtype=torch.long)
        mask = torch.zeros((n_p, width), dtype=torch.long)
        for j, r in enumerate(rs):
            row = generated[r][:width]
            toks[j, :row.shape[0]] = row
            mask[j, :real[r]] = 1
        out.append(Generation(
            texts=[texts[r] for r in rs], tokens=torch.cat([full.tokens, toks], dim=1),
            prompt_len=prompt_len, attention_mask=torch.cat([full.attention_mask.long(), mask], 1),
            prompts=list(full.texts), steering=[base[k].describe()] if k in base else [],
            settings=settings))
    return out


def sweep_curves(df: pd.DataFrame, judge: str = "emotion_words", *, confidence: float = 0.95,
                 n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean ``judge`` score per emotion and strength with a percentile bootstrap interval over
    prompts (``transformer_lens.utilities.statistics.bootstrap_ci``, one seeded generator);
    non-finite scores are left out. Returns ``emotion, strength, mean, low, high``."""
    from transformer_lens.utilities.statistics import bootstrap_ci

    if judge not in df.columns:
        cols = [c for c in df.columns if c not in ("prompt", "text", "emotion")]
        raise InputError(f"no column {judge!r} in the sweep; available: {cols}")
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    for emo, sub in df.groupby("emotion", sort=False):
        for s, part in sub.groupby("strength"):
            vals = torch.tensor(part[judge].to_numpy(dtype=float), dtype=torch.float64)
            vals = vals[torch.isfinite(vals)]
            if len(vals) == 0:
                continue
            low, high = bootstrap_ci(vals, confidence=confidence, n_resamples=n_resamples,
                                     generator=gen)
            rows.append({"emotion": str(emo), "strength": float(s), "mean": float(vals.mean()),
                         "low": float(low), "high": float(high)})
    return pd.DataFrame(rows, columns=["emotion", "strength", "mean", "low", "high"])


def plot_sweep(df: pd.DataFrame, judge: str = "emotion_words", *, ax: Any = None,
               confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> Any:
    """Dose-response figure of a sweep: ``emolens.views.plot_interval_lines`` of
    ``sweep_curves(df, judge, ...)``, one line per emotion. Returns the matplotlib ``Figure``."""
    from emolens.views.causality import plot_interval_lines

    c = sweep_curves(df, judge, confidence=confidence, n_resamples=n_resamples, seed=seed)
    layer = df.attrs.get("layer", df["layer"].iloc[0] if "layer" in df and len(df) else "?")
    return plot_interval_lines(
        c.strength, c["mean"], c.low, c.high, c.emotion, dashed=(), vline=0.0,
        xlabel=f"steering strength (x mean residual norm, layer {layer})", ylabel=judge,
        title=f"dose-response: {judge} ({int(confidence * 100)}% bootstrap CI over prompts)",
        ax=ax)


# ---------------------------------------------------------------------------- word test
@dataclass
class EmotionWordTest:
    """Result of ``emotion_word_test``.

    deltas: ``[steered emotion x word]`` mean change in ``log P(" word")`` after the question,
        steered minus unsteered; hits: how many emotions raise their own word more than any
        other word. control_deltas / control_hits: the same for a random direction of equal
        norm per emotion (seeded). chance: expected hits if the ranking were random (1).
    """

    deltas: pd.DataFrame
    hits: int
    control_deltas: pd.DataFrame
    control_hits: int
    strength: float
    layer: int
    n_prompts: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n_emotions(self) -> int:
        return int(self.deltas.shape[0])

    @property
    def chance(self) -> float:
        return 1.0

    @property
    def hit_emotions(self) -> list[str]:
        return [e for e in self.deltas.index if self.deltas.loc[e].idxmax() == e]

    @staticmethod
    def _margins(df: pd.DataFrame) -> dict[str, float]:
        return {e: float(df.loc[e, e] - df.loc[e].drop(e).max()) for e in df.index}

    @property
    def margins(self) -> dict[str, float]:
        """Per steered emotion: its own word's change minus the largest change of another
        emotion's word (nats; > 0 for a hit)."""
        return self._margins(self.deltas)

    @property
    def control_margins(self) -> dict[str, float]:
        """The same for the random direction of equal norm steered in its place."""
        return self._margins(self.control_deltas)

    def margin_estimates(self, *, seed: int = 0) -> dict[str, Any]:
        """Mean margin over emotions with a bootstrap interval, for the directions and for the
        random control (the interval is over emotions, not prompts)."""
        from emolens.stats import mean_estimate

        return {"directions": mean_estimate(list(self.margins.values()), seed=seed),
                "control": mean_estimate(list(self.control_margins.values()), seed=seed)}

    def to_dict(self) -> dict[str, Any]:
        est = self.margin_estimates() if self.n_emotions >= 2 else {}
        return {"hits": self.hits, "control_hits": self.control_hits,
                "n_emotions": self.n_emotions, "chance_hits": self.chance,
                "strength": self.strength, "layer": self.layer, "n_prompts": self.n_prompts,
                "hit_emotions": self.hit_emotions,
                "deltas": {e: self.deltas.loc[e].round(4).to_dict() for e in self.deltas.index},
                "own_minus_best_other": {e: round(m, 4) for e, m in self.margins.items()},
                **{f"{'control_' if k == 'control' else ''}mean_own_minus_best_other": v.to_dict()
                   for k, v in est.items()},
                **self.settings}

    def __repr__(self) -> str:
        return (f"EmotionWordTest({self.hits}/{self.n_emotions} emotions raise their own word "
                f"most; random-direction control {self.control_hits}/{self.n_emotions}; "
                f"strength {self.strength} at layer {self.layer}, {self.n_prompts} prompts)")


def emotion_word_test(model: Model, registry: Any, emotions: Sequence[str] | None = None, *,
                      strength: float | int, prompts: Any, layer: int | None = None,
                      control_seed: int = 0, positions: Any = "all",
                      progress: bool = False, batch_size: int | None = None) -> EmotionWordTest:
    """Steer toward each emotion on (neutral) prompts and measure how each emotion word's
    log-probability after "They feel" changes under the *steered* model.

    For each emotion: ``delta[e, w] = mean over prompts of log P_steered(w) - log P(w)``.
    A hit is an emotion whose own word rises more than every other word. The control steers a
    random unit direction per emotion (seed ``control_seed + i``) with the same norm
    (``strength * mean_norm``) at the same layer and positions.

    Batched: the unsteered baseline, every emotion and every control are rows of the same
    forward batches (``batch_size`` sequences each), each intervention steering only its own
    rows (``Steering(..., rows=...)``); the result equals one forward pass per emotion up to
    float rounding.
    """
    emos = list(registry.emotions if emotions is None else emotions)
    if len(emos) < 2:
        raise SteeringError(f"the word test needs at least two emotions, got {emos}")
    if isinstance(strength, bool) or not math.isfinite(float(strength)) or float(strength) == 0:
        raise SteeringError(f"strength={strength!r} must be a finite non-zero number (units of "
                            "the mean residual norm; the study used about 0.1-0.5 for text)")
    for e in emos:
        Steering(registry, {e: 1.0})  # validates names
    batch_size = resolve_batch_size(batch_size, model)
    items = _prompts_list(prompts)
    layer_used = registry.default_layer if layer is None else layer
    mean_norm = float(registry.mean_norm(layer_used))
    contexts = [question_context(model, p) for p in items]
    d_model = int(model.cfg.d_model)
    site = registry.site(layer_used).name
    toward = [Steering(registry, {e: float(strength)}, layer=layer_used, positions=positions)
              for e in emos]
    control = [Steering(random_direction(d_model, seed=control_seed + i), float(strength),
                        layer=site, scale=mean_norm, positions=positions)
               for i in range(len(emos))]
    groups: list[Steering | None] = [None, *toward, *control]  # group-major x prompts
    n_p = len(contexts)
    lp = word_logprobs(model, contexts * len(groups), emos, batch_size=batch_size,
                       steerings=[g for g in groups for _ in range(n_p)], progress=progress)
    lp = lp.reshape(len(groups), n_p, len(emos))
    delta = (lp[1:] - lp[0]).mean(1)  # [2 * emotions, words]
    n_e = len(emos)
    deltas = pd.DataFrame(delta[:n_e].numpy(), index=emos, columns=emos)
    control_df = pd.DataFrame(delta[n_e:].numpy(), index=emos, columns=emos)

    def hits(df: pd.DataFrame) -> int:
        return int(sum(df.loc[e].idxmax() == e for e in df.index))

    return EmotionWordTest(deltas=deltas, hits=hits(deltas), control_deltas=control_df,
                           control_hits=hits(control_df), strength=float(strength),
                           layer=int(layer_used), n_prompts=len(items),
                           settings={"positions": str(positions), "control_seed": control_seed})


# ---------------------------------------------------------------------------- fluency costs
def _neutral_texts(texts: Any, n: int = 16) -> Any:
    if texts is not None:
        return texts
    from emolens.stimuli.corpus import load_corpus

    recs = load_corpus().neutral[:n]
    if not recs:
        raise InputError("the bundled corpus has no neutral dialogues; pass texts=")
    return [r.messages for r in recs]


def _token_batches(model: Model, texts: Any, batch_size: int) -> Any:
    from emolens.tokens import to_inputs

    items = _prompts_list(texts)
    for sl in batches(len(items), batch_size):
        yield to_inputs(model, items[sl]).to(model_device(model))


def _logprobs(model: Model, batch: Any, steering: list[Steering]) -> torch.Tensor:
    """``[b, pos-1, vocab]`` next-token log-probabilities with ``steering`` active."""
    handle = apply_steering(model, steering) if steering else None
    try:
        with torch.no_grad():
            logits = model(batch.tokens, return_type="logits", **batch.forward_kwargs())
    finally:
        if handle is not None:
            handle.remove()
    return logits[:, :-1].float().log_softmax(-1)


def neutral_loss(model: Model, steering: Any = None, texts: Any = None, *,
                 batch_size: int | None = None) -> float:
    """Mean next-token cross-entropy (nats per token) on neutral reference text while
    ``steering`` (a ``Steering`` or list; None: unsteered) is active.

    Scored targets are content tokens (real tokens after the attention-sink token).
    ``texts``: strings or conversations; default: the first 16 neutral assistant dialogues of
    the bundled corpus. Compare with ``neutral_loss(model, None, texts)``.
    """
    from emolens.generation import _as_steerings

    steerings = _as_steerings(steering)
    total, count = 0.0, 0
    for b in _token_batches(model, _neutral_texts(texts), resolve_batch_size(batch_size, model)):
        logp = _logprobs(model, b, steerings)
        mask = b.content_mask[:, 1:]
        nll = -logp.gather(-1, b.tokens[:, 1:, None])[..., 0]
        total += float(nll[mask].sum())
        count += int(mask.sum())
    return total / max(count, 1)


def neutral_kl(model: Model, steering: Any, texts: Any = None, *,
               batch_size: int | None = None) -> float:
    """Mean KL(unsteered || steered) of the next-token distribution over content tokens of
    neutral text (nats per token); Arditi et al. keep it below 0.1 when choosing an ablation
    layer. ``steering``: a ``Steering`` or a list of them active together."""
    return neutral_kls(model, [steering], texts, batch_size=batch_size)[0]


def neutral_kls(model: Model, conditions: Sequence[Any], texts: Any = None, *,
                batch_size: int | None = None) -> list[float]:
    """``neutral_kl`` of each of ``conditions`` (each a ``Steering``, a list of them, or None)
    on the same texts, the unsteered distribution computed once per batch."""
    from emolens.generation import _as_steerings

    conds = [_as_steerings(c) for c in conditions]
    items = _prompts_list(_neutral_texts(texts))
    totals, count = [0.0] * len(conds), 0
    for b in _token_batches(model, items,
                            resolve_batch_size(batch_size, model)):
        p = _logprobs(model, b, [])
        mask = b.content_mask[:, :-1] | b.content_mask[:, 1:]
        mask = b.attention_mask[:, :-1].bool() & b.attention_mask[:, 1:].bool() & mask
        pe = p.exp()
        for i, steerings in enumerate(conds):
            q = _logprobs(model, b, steerings)
            totals[i] += float(((pe * (p - q)).sum(-1))[mask].sum())
            del q
        count += int(mask.sum())
    return [t / max(count, 1) for t in totals]
