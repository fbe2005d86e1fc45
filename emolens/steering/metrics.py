"""Steering in the field's terms: concept detection (AxBench), a per-strength steering score
from three independent judgements (AxBench), and the anti-steerable fraction (Tan et al. 2024).

- ``detection_auc``: per emotion, the ROC-AUC of the direction's pooled readout on held-out
  texts, one emotion against the rest (AxBench's concept detection; difference of means gave
  about 0.94-0.95 there). A random unit direction per emotion, read the same way, is the
  placebo (about 0.5 expected).
- ``steering_score``: generate from each prompt at each strength (``emolens.steering.sweeps``)
  and judge every generation three times, none of them reading the steered direction:

  * concept (does the text show the emotion): the ``emotion_words`` judge's reading under the
    *unsteered* model (after the text, "How does the narrator feel? They feel"): 2 when the
    target word is the most probable of the candidate emotion words, 1 when it is among the
    top ``concept_top`` (default 3), else 0;
  * relevance to the prompt: the pointwise mutual information of the reply with its prompt
    under the unsteered model, ``mean_t log P(reply_t | own prompt) - log P(reply_t | another
    prompt of the set)`` (nats per token): 2 when it reaches half the median of the unsteered
    (strength 0) generations, 1 when above 0, else 0;
  * fluency: the perplexity of the reply under the unsteered model: 2 when at most
    ``2x`` the median unsteered perplexity, 1 when at most ``4x``, else 0; a reply whose
    distinct-bigram fraction is below 0.5 (a loop) or that has fewer than 2 tokens scores 0.

  Combination, as AxBench does: per generation the harmonic mean of the three 0-2 scores
  (``3 / (1/c + 1/r + 1/f)``, 0 when any is 0), averaged over prompts per strength. The best
  strength is chosen on half the prompts (even indices) and its score reported on the other
  half (AxBench selects its factor on held-out instructions), beside the in-sample curve.
- Anti-steerable (Tan et al.): per prompt, the least-squares slope of the continuous concept
  reading (the target word's log-probability share) against strength; the fraction of prompts
  whose slope is negative, i.e. that move against the intended direction. A random direction of
  the same norm, stored under the emotion's name and judged identically, is the placebo (about
  half its prompts are "anti-steerable" by chance).

The relative thresholds (relevance, fluency) are set from the strength-0 generations of the
same call, so 0 must be among the strengths. They are stated in ``ScoreRules`` and in every
result. What these numbers establish: how often steering produces text that a word-probability
judge and a lexicon-free fluency/relevance check accept, at each strength, on these prompts.
What they do not: an LLM-judge rating comparable number for number with AxBench's, or that the
judged emotion is what a person would read in the text.
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float

from emolens.errors import InputError, SteeringError
from emolens.stats import Estimate, binomial_pvalue, bootstrap_ci, mean_estimate
from emolens.steering.judges import (
    JudgeInput,
    emotion_word_logprobs,
)

if TYPE_CHECKING:
    from emolens.compat import Model

# ---------------------------------------------------------------------------- ROC-AUC
def _avg_rank(x: torch.Tensor) -> torch.Tensor:
    from emolens.stats import _rank

    return _rank(x.double())


def roc_auc(scores: Float[torch.Tensor, " n"], positive: Bool[torch.Tensor, " n"]) -> float:
    """ROC-AUC of ``scores`` separating ``positive`` from the rest (Mann-Whitney U with
    average ranks for ties; 0.5 = chance, 1 = perfect)."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    pos = torch.as_tensor(positive, dtype=torch.bool).flatten()
    n_p, n_n = int(pos.sum()), int((~pos).sum())
    if s.numel() != pos.numel():
        raise InputError(f"scores has {s.numel()} values but positive has {pos.numel()}")
    if n_p == 0 or n_n == 0:
        raise InputError(f"ROC-AUC needs positives and negatives, got {n_p} and {n_n}")
    r = _avg_rank(s)
    return float((r[pos].sum() - n_p * (n_p - 1) / 2) / (n_p * n_n))


def auc_interval(scores: Float[torch.Tensor, " n"], positive: Bool[torch.Tensor, " n"], *,
                 confidence: float = 0.95,
                 n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Stratified percentile-bootstrap interval of the ROC-AUC (positives and negatives
    resampled separately), seeded."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    pos = torch.as_tensor(positive, dtype=torch.bool).flatten()
    sp, sn = s[pos], s[~pos]
    if sp.numel() < 2 or sn.numel() < 2:
        return float("nan"), float("nan")
    cmp = (sp[:, None] > sn[None, :]).double() + 0.5 * (sp[:, None] == sn[None, :]).double()
    g = torch.Generator().manual_seed(int(seed))

    def counts(n: int) -> torch.Tensor:  # [resamples, n] multiplicity of each item
        idx = torch.randint(0, n, (n_resamples, n), generator=g)
        return torch.zeros(n_resamples, n, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(n_resamples, n, dtype=torch.float64))

    wp, wn = counts(sp.numel()), counts(sn.numel())
    draws = ((wp @ cmp) * wn).sum(1) / (sp.numel() * sn.numel())
    a = (1 - confidence) / 2
    return float(torch.quantile(draws, a)), float(torch.quantile(draws, 1 - a))


@dataclass
class DetectionResult:
    """Result of ``detection_auc``: per emotion, ROC-AUC one-vs-rest with an interval, and the
    same for a random unit direction (the placebo)."""

    emotions: list[str]
    layer: int
    auc: dict[str, float]
    ci: dict[str, tuple[float, float]]
    placebo_auc: dict[str, float]
    placebo_ci: dict[str, tuple[float, float]]
    n_positive: dict[str, int]
    n_texts: int
    source: str = "texts given by the caller"

    @property
    def mean_auc(self) -> float:
        return float(np.mean([self.auc[e] for e in self.emotions]))

    @property
    def mean_placebo_auc(self) -> float:
        return float(np.mean([self.placebo_auc[e] for e in self.emotions]))

    @property
    def statement(self) -> str:
        above = [e for e in self.emotions if self.ci[e][0] > 0.5]
        return (f"Read at layer {self.layer} (mean over content tokens), each direction separates "
                f"its own emotion's held-out texts from the other emotions' with ROC-AUC "
                f"{self.mean_auc:.3f} on average over {len(self.emotions)} emotions "
                f"({self.n_texts} texts, {self.source}); {len(above)} of {len(self.emotions)} "
                f"intervals lie above 0.5. Random unit directions read the same way give "
                f"{self.mean_placebo_auc:.3f}. Established: the readout ranks texts of the "
                "emotion above texts of the others on these held-out texts. Not established: "
                "detection on text of another style or author, or that the direction is used "
                "by the model (a readout is a correlation).")

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "n_texts": self.n_texts, "source": self.source,
                "mean_auc": self.mean_auc, "mean_placebo_auc": self.mean_placebo_auc,
                "per_emotion": {e: {"auc": self.auc[e], "ci": list(self.ci[e]),
                                    "placebo_auc": self.placebo_auc[e],
                                    "placebo_ci": list(self.placebo_ci[e]),
                                    "n_positive": self.n_positive[e]} for e in self.emotions},
                "statement": self.statement}

    def figure(self) -> Any:
        from emolens.views.figures import plot_effects

        e = self.emotions
        return plot_effects(e, [self.auc[x] - 0.5 for x in e], [self.ci[x][0] - 0.5 for x in e],
                            [self.ci[x][1] - 0.5 for x in e],
                            placebo=[self.placebo_auc[x] - 0.5 for x in e],
                            placebo_ci_low=[self.placebo_ci[x][0] - 0.5 for x in e],
                            placebo_ci_high=[self.placebo_ci[x][1] - 0.5 for x in e],
                            ylabel="ROC-AUC - 0.5", placebo_label="random direction",
                            title=f"Concept detection, one-vs-rest, layer {self.layer}")

    def _repr_html_(self) -> str:
        from emolens.views.figures import figure_to_data_uri

        rows = "".join(
            f"<tr><td>{html.escape(e)}</td><td>{self.auc[e]:.3f} [{self.ci[e][0]:.3f}, "
            f"{self.ci[e][1]:.3f}]</td><td>{self.placebo_auc[e]:.3f}</td>"
            f"<td>{self.n_positive[e]}</td></tr>" for e in self.emotions)
        return (f"<div><b>DetectionResult</b> layer {self.layer}<table><tr><th>emotion</th>"
                f"<th>ROC-AUC [95% CI]</th><th>random direction</th><th>positives</th></tr>"
                f"{rows}</table><img src='{figure_to_data_uri(self.figure())}'/>"
                f"<p>{html.escape(self.statement)}</p></div>")

    def __repr__(self) -> str:
        return (f"DetectionResult(mean AUC {self.mean_auc:.3f} over {len(self.emotions)} "
                f"emotions at layer {self.layer}; random {self.mean_placebo_auc:.3f})")


def detection_auc(model: Model, registry: Any, texts: Any = None, labels: Sequence[str] | None = None,
                  *, emotions: Sequence[str] | None = None, layer: int | None = None,
                  placebo_seed: int = 0, n_resamples: int = 1000, seed: int = 0,
                  split: str = "test", batch_size: int | None = None) -> DetectionResult:
    """ROC-AUC per emotion of the pooled readout (centred projection, mean over content tokens)
    on held-out labelled texts, one-vs-rest, with a stratified bootstrap interval and a random
    unit direction per emotion (seed ``placebo_seed + i``) as the placebo.

    ``texts``/``labels``: default the bundled corpus's held-out stories of the registry's
    emotions, of ``split``: ``"test"`` (default: the registry's default layer was chosen on
    ``"dev"``, so the figure is read on stories no choice saw), ``"dev"``, or ``"validation"``
    (both; twice the stories, but the layer was chosen on half of them). Texts whose label is
    not in ``emotions`` are dropped.
    """
    from emolens.readout.readout import read_emotions
    from emolens.registry import EmotionRegistry
    from emolens.steering.interventions import random_direction

    emos = list(registry.emotions if emotions is None else emotions)
    for e in emos:
        registry.emotion_index(e)
    source = "texts given by the caller"
    if texts is None:
        from emolens.stimuli.corpus import load_corpus

        if split not in ("test", "dev", "validation"):
            raise InputError(f"split={split!r}: give 'test' (default), 'dev' or 'validation' "
                             "(dev and test together)")
        corpus = load_corpus()
        have = [e for e in emos if e in corpus.emotions]
        recs = corpus.stories(have, split=split)
        texts, labels = [r.text for r in recs], [str(r.emotion) for r in recs]
        source = f"{split} stories of corpus {corpus.name!r}"
    elif labels is None:
        raise InputError("texts were given without labels; pass labels= (one emotion per text)")
    items, labs = list(texts), [str(x) for x in labels]  # type: ignore[union-attr]
    if len(items) != len(labs):
        raise InputError(f"{len(items)} texts but {len(labs)} labels; give one label per text")
    keep = [i for i, lab in enumerate(labs) if lab in emos]
    items, labs = [items[i] for i in keep], [labs[i] for i in keep]
    present = sorted(set(labs), key=emos.index)
    if len(present) < 2:
        raise InputError(f"one-vs-rest needs texts of at least two emotions of {emos}; the "
                         f"labels give {present}")
    layer_used = registry.default_layer if layer is None else int(layer)
    site = registry.site(layer_used)
    real = registry.matrix(layer_used)[[registry.emotion_index(e) for e in present]]
    rand = torch.stack([random_direction(registry.d_model, seed=placebo_seed + i)
                        for i in range(len(present))])
    names = present + [f"random:{e}" for e in present]
    both = EmotionRegistry(torch.cat([real, rand])[None], names, [site],
                           torch.tensor([registry.mean_norm(layer_used)]),
                           metadata=registry.metadata, default_layer=site.layer,
                           center=registry.center(layer_used)[None])
    pooled = read_emotions(model, both, items, layer=site.layer, batch_size=batch_size).pooled()
    lab_t = np.asarray(labs)
    auc, ci, pauc, pci, npos = {}, {}, {}, {}, {}
    for i, e in enumerate(present):
        pos = torch.from_numpy(lab_t == e)
        auc[e] = roc_auc(pooled[:, i], pos)
        ci[e] = auc_interval(pooled[:, i], pos, n_resamples=n_resamples, seed=seed + i)
        pauc[e] = roc_auc(pooled[:, len(present) + i], pos)
        pci[e] = auc_interval(pooled[:, len(present) + i], pos, n_resamples=n_resamples,
                              seed=seed + i)
        npos[e] = int(pos.sum())
    return DetectionResult(present, site.layer, auc, ci, pauc, pci, npos, len(items), source)


# ---------------------------------------------------------------------------- judges
def _reply_parts(inp: JudgeInput) -> tuple[list[list[int]], list[list[int]]]:
    am = inp.attention_mask.bool()
    p, r = [], []
    for i in range(inp.tokens.shape[0]):
        p.append(inp.tokens[i, :inp.prompt_len][am[i, :inp.prompt_len]].tolist())
        r.append(inp.tokens[i, inp.prompt_len:][am[i, inp.prompt_len:]].tolist())
    return p, r


def continuation_logprob(model: Model, prefixes: Sequence[Sequence[int]],
                         continuations: Sequence[Sequence[int]], *, batch_size: int | None = None
                         ) -> list[float]:
    """Per pair, the mean ``log P(continuation_t | prefix, continuation_<t)`` (nats per token)
    under whatever hooks are on the model (none: unsteered); NaN for an empty continuation."""
    from emolens.runtime import model_device as _device
    from emolens.runtime import resolve_batch_size

    batch_size = resolve_batch_size(batch_size, model)
    if len(prefixes) != len(continuations):
        raise InputError(f"{len(prefixes)} prefixes but {len(continuations)} continuations")
    pad = int(getattr(model.tokenizer, "pad_token_id", None) or 0)
    dev = _device(model)
    out = [float("nan")] * len(prefixes)
    for start in range(0, len(prefixes), batch_size):
        idx = [i for i in range(start, min(len(prefixes), start + batch_size))
               if len(continuations[i]) and len(prefixes[i])]
        if not idx:
            continue
        seqs = [list(prefixes[i]) + list(continuations[i]) for i in idx]
        width = max(len(s) for s in seqs)
        toks = torch.full((len(seqs), width), pad, dtype=torch.long)
        am = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):
            toks[j, :len(s)] = torch.tensor(s)
            am[j, :len(s)] = 1
        kwargs = {} if bool(am.all()) else {"attention_mask": am.to(dev)}
        with torch.no_grad():
            logp = model(toks.to(dev), return_type="logits", **kwargs)[:, :-1].float()
            logp = logp.log_softmax(-1)
        for j, i in enumerate(idx):
            n_p, n_c = len(prefixes[i]), len(continuations[i])
            tgt = toks[j, n_p:n_p + n_c].to(logp.device)
            rows = logp[j, n_p - 1:n_p - 1 + n_c]
            out[i] = float(rows.gather(-1, tgt[:, None]).mean())
    return out


def concept_judge(inp: JudgeInput) -> dict[str, list[float]]:
    """The target word's log-probability share after the "how do they feel" question under the
    unsteered model (``concept_share``) and its rank among the candidate words
    (``concept_rank``, 1 = most probable)."""
    lp, t, share = emotion_word_logprobs(inp)
    rank = _target_rank(lp, torch.full((lp.shape[0],), t, dtype=torch.long))
    return {"concept_share": share.tolist(), "concept_rank": rank.float().tolist()}


def _target_rank(lp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the rank (1 = most probable) of column ``target[row]`` of ``lp``."""
    return (lp > lp.gather(1, target[:, None].to(lp.device))).sum(-1) + 1


def concept_judge_under(judge_model: Model) -> Any:
    """``concept_judge`` read under ``judge_model`` instead of the steered model's unsteered
    self: the same question, candidate words and columns, the texts re-tokenised by the judge
    (e.g. one larger catalogue model judging the generations of every model of a ladder)."""
    from dataclasses import replace

    def judge(inp: JudgeInput) -> dict[str, list[float]]:
        return concept_judge(replace(inp, model=judge_model))
    judge.__name__ = "concept_judge"
    return judge


def relevance_judge(inp: JudgeInput) -> dict[str, list[float]]:
    """Per reply, PMI with its own prompt against the next prompt of the batch (cyclic), under
    the unsteered model: ``mean_t log P(reply_t | own) - log P(reply_t | other)``, nats/token."""
    prompts, replies = _reply_parts(inp)
    n = len(prompts)
    if n < 2:
        raise SteeringError("the relevance judge compares each reply with another prompt: "
                            "give at least two prompts")
    own = continuation_logprob(inp.model, prompts, replies)
    other = continuation_logprob(inp.model, [prompts[(i + 1) % n] for i in range(n)], replies)
    return {"relevance_pmi": [a - b for a, b in zip(own, other)],
            "distinct_bigrams": [_distinct_bigrams(r) for r in replies]}


def _distinct_bigrams(ids: Sequence[int]) -> float:
    if len(ids) < 3:
        return float("nan")
    grams = list(zip(ids[:-1], ids[1:]))
    return len(set(grams)) / len(grams)


# ---------------------------------------------------------------------------- the score
@dataclass(frozen=True)
class ScoreRules:
    """How each judgement becomes a 0-2 score (see the module docstring)."""

    concept_top: int = 3
    relevance_high: float = 0.5    # x median unsteered PMI -> 2
    fluency_ok: float = 2.0        # x median unsteered perplexity -> 2
    fluency_poor: float = 4.0      # x median unsteered perplexity -> 1
    min_distinct_bigrams: float = 0.5

    def describe(self) -> str:
        return (f"concept 2 = target word most probable of the candidates, 1 = in the top "
                f"{self.concept_top}, else 0; relevance 2 = PMI >= {self.relevance_high} x the "
                f"median unsteered PMI (and > 0), 1 = PMI > 0, else 0; fluency 2 = perplexity <= "
                f"{self.fluency_ok} x the median unsteered, 1 = <= {self.fluency_poor} x, else 0, "
                f"and 0 when the distinct-bigram fraction < {self.min_distinct_bigrams} or the "
                "reply has < 2 tokens; score = harmonic mean of the three (0 if any is 0), "
                "per generation")


def harmonic_score(concept: Any, relevance: Any, fluency: Any) -> np.ndarray:
    """AxBench's combination: per generation ``3 / (1/c + 1/r + 1/f)``, 0 when any is 0."""
    c, r, f = (np.asarray(x, dtype=np.float64) for x in (concept, relevance, fluency))
    ok = (c > 0) & (r > 0) & (f > 0)
    out = np.zeros(c.shape)
    out[ok] = 3.0 / (1.0 / c[ok] + 1.0 / r[ok] + 1.0 / f[ok])
    return out


def score_generations(df: pd.DataFrame, rules: ScoreRules = ScoreRules()) -> pd.DataFrame:
    """Add ``concept_score``, ``relevance_score``, ``fluency_score`` (0-2) and ``score`` (their
    harmonic mean) to a frame with ``strength``, ``concept_rank``, ``relevance_pmi``,
    ``perplexity``, ``distinct_bigrams`` and ``n_tokens``; thresholds relative to the rows of
    strength 0."""
    need = ["strength", "concept_rank", "relevance_pmi", "perplexity", "distinct_bigrams",
            "n_tokens"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(f"the frame lacks columns {missing}; it needs {need}")
    base = df[df.strength == 0]
    if base.empty:
        raise SteeringError("the steering score sets its relevance and fluency thresholds from "
                            "the unsteered generations: include strength 0 in strengths")
    out = df.copy()
    rank = out.concept_rank.to_numpy(dtype=float)
    out["concept_score"] = np.where(rank <= 1, 2.0, np.where(rank <= rules.concept_top, 1.0, 0.0))
    pmi = out.relevance_pmi.to_numpy(dtype=float)
    med_pmi = float(np.nanmedian(base.relevance_pmi.to_numpy(dtype=float)))
    hi = max(rules.relevance_high * med_pmi, 0.0)
    out["relevance_score"] = np.where(np.isfinite(pmi) & (pmi > 0) & (pmi >= hi), 2.0,
                                      np.where(np.isfinite(pmi) & (pmi > 0), 1.0, 0.0))
    ppl = out.perplexity.to_numpy(dtype=float)
    med_ppl = float(np.nanmedian(base.perplexity.to_numpy(dtype=float)))
    flu = np.where(ppl <= rules.fluency_ok * med_ppl, 2.0,
                   np.where(ppl <= rules.fluency_poor * med_ppl, 1.0, 0.0))
    dist = out.distinct_bigrams.to_numpy(dtype=float)
    loop = np.isfinite(dist) & (dist < rules.min_distinct_bigrams)
    short = out.n_tokens.to_numpy() < 2
    flu = np.where(loop | short | ~np.isfinite(ppl), 0.0, flu)
    out["fluency_score"] = flu
    out["score"] = harmonic_score(out.concept_score, out.relevance_score, out.fluency_score)
    out.attrs.update(df.attrs)
    out.attrs["thresholds"] = {"median_unsteered_pmi": med_pmi, "relevance_high": hi,
                               "median_unsteered_perplexity": med_ppl}
    return out


def per_prompt_slopes(df: pd.DataFrame, value: str = "concept_share") -> pd.Series:
    """Per prompt, the least-squares slope of ``value`` against strength (units per unit of
    strength); NaN where a prompt has fewer than two finite values."""
    out = {}
    for i, g in df.groupby("prompt_index"):
        x, y = g.strength.to_numpy(dtype=float), g[value].to_numpy(dtype=float)
        ok = np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(x) < 2 or float(np.ptp(x)) == 0:
            out[i] = float("nan")
            continue
        xc = x - x.mean()
        out[i] = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    return pd.Series(out, name=f"slope_{value}")


@dataclass
class ScoreSummary:
    """The steering score of one direction: per-strength table, best strength (selected on
    half the prompts, reported on the other half), anti-steerable fraction and mean slope."""

    by_strength: pd.DataFrame
    best_strength: float
    best_in_sample: float
    held_out: Estimate
    anti_steerable: Estimate
    slope: Estimate
    slopes: pd.Series

    def to_dict(self) -> dict[str, Any]:
        return {"by_strength": self.by_strength.round(4).to_dict(orient="records"),
                "best_strength": self.best_strength, "best_strength_in_sample":
                self.best_in_sample, "held_out_score_at_best": self.held_out.to_dict(),
                "anti_steerable_fraction": self.anti_steerable.to_dict(),
                "concept_slope": self.slope.to_dict()}


def summarise_scores(scored: pd.DataFrame, *, seed: int = 0, n_resamples: int = 1000
                     ) -> ScoreSummary:
    """Per-strength means (with bootstrap intervals over prompts), the best strength chosen on
    the even-indexed prompts and scored on the odd ones, and the anti-steerable fraction."""
    rows = []
    for s, g in scored.groupby("strength"):
        sc = g.score.to_numpy(dtype=float)
        lo, hi = bootstrap_ci(sc, n_resamples=n_resamples, seed=seed)
        rows.append({"strength": float(s), "score": float(sc.mean()), "low": lo, "high": hi,
                     "concept": float(g.concept_score.mean()),
                     "relevance": float(g.relevance_score.mean()),
                     "fluency": float(g.fluency_score.mean()),
                     "concept_share": float(np.nanmean(g.concept_share.to_numpy(dtype=float))),
                     "n": int(len(g))})
    table = pd.DataFrame(rows).sort_values("strength").reset_index(drop=True)
    n_prompts = int(scored.prompt_index.nunique())
    if n_prompts < 2:
        raise SteeringError("the held-out best strength needs at least two prompts")
    sel = scored[scored.prompt_index % 2 == 0].groupby("strength").score.mean()
    best = float(sel.idxmax())
    test = scored[(scored.prompt_index % 2 == 1) & (scored.strength == best)]
    held = mean_estimate(test.score.to_numpy(dtype=float), seed=seed)
    in_sample = float(table.strength[int(table.score.to_numpy().argmax())])
    slopes = per_prompt_slopes(scored)
    finite = slopes[np.isfinite(slopes)]
    if finite.empty:
        raise SteeringError("no prompt has a finite concept reading at two strengths")
    anti_vals = (finite.to_numpy() < 0).astype(float)
    lo, hi = bootstrap_ci(anti_vals, n_resamples=n_resamples, seed=seed)
    k, n = int(anti_vals.sum()), len(anti_vals)
    p = binomial_pvalue(k, n, 0.5)
    anti = Estimate(float(anti_vals.mean()), lo, hi, p, n, 0.95,
                    "fraction = 0.5 (two-sided binomial sign test)")
    return ScoreSummary(table, best, in_sample, held, anti,
                        mean_estimate(finite.to_numpy(), seed=seed), slopes)


@dataclass
class SteeringScoreResult:
    """Result of ``steering_score`` for one emotion (and its random-direction placebo)."""

    emotion: str
    layer: int
    strengths: list[float]
    frame: pd.DataFrame
    summary: ScoreSummary
    placebo_frame: pd.DataFrame | None
    placebo: ScoreSummary | None
    rules: ScoreRules
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best_strength(self) -> float:
        return self.summary.best_strength

    @property
    def anti_steerable_fraction(self) -> float:
        return self.summary.anti_steerable.value

    @property
    def statement(self) -> str:
        s = self.summary
        t = s.by_strength
        base = float(t.score[t.strength == 0].iloc[0])
        lead = (f"Steering toward {self.emotion!r} at layer {self.layer} over strengths "
                f"{self.strengths} on {int(self.frame.prompt_index.nunique())} prompts: the "
                f"steering score (AxBench's harmonic mean of concept, relevance and fluency, each "
                f"0-2) is {base:.2f} unsteered and peaks at strength {s.best_in_sample:g} in "
                f"sample ({float(t.score.max()):.2f}); chosen on half the prompts the best "
                f"strength is {s.best_strength:g}, scoring {s.held_out} on the other half. "
                f"{s.anti_steerable.value:.0%} of prompts move against the intended direction "
                f"(anti-steerable; CI [{s.anti_steerable.low:.2f}, {s.anti_steerable.high:.2f}]), "
                f"mean concept slope {s.slope}.")
        if self.placebo is not None:
            pt = self.placebo.by_strength
            lead += (f" A random direction of the same norm: best score {float(pt.score.max()):.2f}"
                     f", anti-steerable {self.placebo.anti_steerable.value:.0%}, slope "
                     f"{self.placebo.slope}.")
        rec = self.settings.get("concept_judge_recall")
        if rec:
            own = rec["per_emotion"].get(self.emotion)
            lead += " " + rec["statement"] + (
                f" For {self.emotion!r} itself: top 3 in {own['top3']} of {own['n']} stories."
                if own else f" The corpus has no such stories of {self.emotion!r}.")
        cm = self.settings.get("concept_model")
        concept = ("the unsteered model's emotion-word reading (concept)"
                   if cm in (None, "the steered model, unsteered")
                   else f"{cm}'s emotion-word reading (concept)")
        return lead + (f" Judges: {concept}, the unsteered model's "
                       "PMI of reply and prompt (relevance) and its perplexity (fluency); none "
                       "reads the steered direction. Not established: agreement with human or "
                       "LLM ratings, or effects on other prompts. Rule: " + self.rules.describe())

    def to_dict(self) -> dict[str, Any]:
        d = {"emotion": self.emotion, "layer": self.layer, "strengths": self.strengths,
             **self.summary.to_dict(), "rules": self.rules.describe(),
             "thresholds": self.frame.attrs.get("thresholds", {}), **self.settings,
             "statement": self.statement}
        if self.placebo is not None:
            d["placebo"] = self.placebo.to_dict()
        return d

    def figure(self) -> Any:
        from emolens.views.study import plot_steering_score

        t = self.summary.by_strength
        plac = None
        if self.placebo is not None:
            plac = self.placebo.by_strength.set_index("strength").score.reindex(t.strength)
        def a(c: str) -> np.ndarray:
            return t[c].to_numpy(dtype=float)

        return plot_steering_score(a("strength"), a("score"), a("low"), a("high"),
                                   parts={"concept": a("concept"), "relevance": a("relevance"),
                                          "fluency": a("fluency")},
                                   placebo=None if plac is None else plac.to_numpy(),
                                   best=self.best_strength,
                                   title=f"Steering score: {self.emotion}, layer {self.layer}")

    def _repr_html_(self) -> str:
        from emolens.views.figures import figure_to_data_uri
        from emolens.views.report import table_html

        return (f"<div><b>SteeringScoreResult</b> {html.escape(self.emotion)}"
                f"{table_html(self.summary.by_strength.round(3))}"
                f"<img src='{figure_to_data_uri(self.figure())}'/>"
                f"<p>{html.escape(self.statement)}</p></div>")

    def __repr__(self) -> str:
        return (f"SteeringScoreResult({self.emotion!r}, best strength {self.best_strength:g}, "
                f"held-out score {self.summary.held_out.value:.2f}, anti-steerable "
                f"{self.anti_steerable_fraction:.0%})")


def _placebo_registry(registry: Any, emotion: str, layer: int, seed: int) -> Any:
    from emolens.registry import EmotionRegistry
    from emolens.steering.interventions import random_direction

    site = registry.site(layer)
    v = random_direction(registry.d_model, seed=seed)
    return EmotionRegistry(v[None, None], [emotion], [site],
                           torch.tensor([registry.mean_norm(layer)]), metadata=registry.metadata,
                           default_layer=site.layer, center=registry.center(layer)[None],
                           name="random-placebo")


@dataclass
class JudgeRecall:
    """How well the concept judge recognises each emotion where it is plainly there: held-out
    stories of the candidate emotions, each read as the reply to a neutral prompt and judged
    like a generation (``concept_judge_recall``)."""

    judge: str
    words: list[str]
    top1: Estimate
    top3: Estimate
    per_emotion: dict[str, dict[str, int]]
    source: str

    @property
    def statement(self) -> str:
        k = len(self.words)
        return (f"Positive control of the concept judge ({self.judge}): on {self.top1.n} "
                f"{self.source}, each read as the reply to a neutral prompt, the story's own "
                f"emotion is the judge's first of {k} words for {self.top1.value:.0%} "
                f"[{self.top1.low:.0%}, {self.top1.high:.0%}] (chance {1 / k:.0%}) and in its "
                f"top 3 for {self.top3.value:.0%} [{self.top3.low:.0%}, {self.top3.high:.0%}] "
                f"(chance {min(3, k) / k:.0%}).")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(e)}</td><td>{v['n']}</td><td>{v['top1']}</td>"
                       f"<td>{v['top3']}</td></tr>" for e, v in self.per_emotion.items())
        return (f"<div><b>JudgeRecall</b> {html.escape(self.judge)}<table><tr><th>emotion</th>"
                f"<th>stories</th><th>top 1</th><th>top 3</th></tr>{rows}</table>"
                f"<p>{html.escape(self.statement)}</p></div>")

    def __repr__(self) -> str:
        return (f"JudgeRecall({self.judge!r}, top1={self.top1.value:.2f}, "
                f"top3={self.top3.value:.2f}, n={self.top1.n})")

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "words": self.words, "top1": self.top1.to_dict(),
                "top3": self.top3.to_dict(), "per_emotion": self.per_emotion,
                "source": self.source, "statement": self.statement}


def concept_judge_recall(model: Model, words: Sequence[str], *, split: str = "validation",
                         prompt: Any = None, judge: str | None = None, seed: int = 0,
                         batch_size: int | None = None) -> JudgeRecall:
    """The concept judge's positive control: for every bundled story of ``split`` whose emotion
    is among ``words``, the rank of that emotion's word under ``model`` after the judge's
    question, the story standing as the assistant's reply to ``prompt`` (default: the first
    neutral prompt of ``default_prompts``), exactly as ``concept_judge`` reads a generation.
    Top-1 and top-3 rates with bootstrap intervals; chance is 1/k and 3/k. The stories were
    written to express their emotion, so a judge that does not find it there cannot be relied
    on to find it in steered text."""
    from emolens.steering.judges import question_context, word_logprobs
    from emolens.stimuli.corpus import SPLIT_NAMES, load_corpus

    cand = list(dict.fromkeys(words))
    if len(cand) < 2:
        raise InputError(f"give at least two candidate words, got {cand}")
    if split not in SPLIT_NAMES:
        raise InputError(f"split={split!r}: give one of {list(SPLIT_NAMES)}")
    corpus = load_corpus()
    recs = corpus.stories([w for w in cand if w in corpus.emotions], split=split)
    if not recs:
        raise InputError(f"the bundled corpus has no {split} stories of {cand}")
    conv = default_prompts(1)[0] if prompt is None else prompt
    lp = word_logprobs(model, [question_context(model, conv, str(r.text)) for r in recs], cand,
                       batch_size=batch_size)
    target = torch.tensor([cand.index(str(r.emotion)) for r in recs])
    rank = _target_rank(lp, target)
    per: dict[str, dict[str, int]] = {}
    for r, k in zip(recs, rank.tolist()):
        row = per.setdefault(str(r.emotion), {"n": 0, "top1": 0, "top3": 0})
        row["n"] += 1
        row["top1"] += int(k == 1)
        row["top3"] += int(k <= 3)
    name = judge or str(getattr(model.cfg, "model_name", type(model).__name__))
    k = len(cand)
    return JudgeRecall(name, cand, _rate_above_chance((rank == 1).double(), 1 / k, seed),
                       _rate_above_chance((rank <= 3).double(), min(3, k) / k, seed), per,
                       f"{split} stories of corpus {corpus.name!r}")


def _rate_above_chance(hits: torch.Tensor, chance: float, seed: int) -> Estimate:
    """The rate of ``hits`` (0/1 per item) with a bootstrap interval and the one-sided exact
    binomial p-value of at least that many hits at rate ``chance``."""
    x = hits.double().numpy()
    lo, hi = bootstrap_ci(x, seed=seed)
    n, k = len(x), int(x.sum())
    p = binomial_pvalue(k, n, chance, alternative="greater")
    return Estimate(float(x.mean()), lo, hi, p, n, 0.95,
                    f"rate = {chance:.3g} (chance; one-sided exact binomial)")


def steering_score(model: Model, registry: Any, emotion: str,
                   strengths: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.4), prompts: Any = None,
                   *, layer: int | None = None, max_new_tokens: int = 32,
                   words: Sequence[str] | None = None, placebo: bool = True,
                   placebo_seed: int = 0, rules: ScoreRules = ScoreRules(), seed: int = 0,
                   positions: Any = "all", batch_size: int = 32,
                   concept_model: Model | str | None = None, judge_control: bool = True,
                   progress: bool = False) -> SteeringScoreResult:
    """The AxBench-style steering score of ``emotion`` per strength, its best strength, and the
    anti-steerable fraction (Tan et al.), beside a random direction of equal norm.

    ``strengths`` (units of the site's mean residual norm) must include 0. ``prompts``: default
    the user turns of the first 12 neutral dialogues of the bundled corpus, as conversations.
    Generations are greedy (``sweep``), ``max_new_tokens`` each; ``words``: candidate emotion
    words of the concept judge (default the registry's emotions). ``concept_model``: the model
    the concept judge reads under (a loaded model, or a catalogue name loaded where installed;
    default None: the steered model itself, unsteered); relevance and fluency stay under the
    steered model. ``judge_control``: also run the concept judge's positive control
    (``concept_judge_recall`` on the bundled held-out stories of the candidate words), so that
    a score of 0 can be told from a judge that cannot see the emotion. See the module
    docstring for the judges and the rule.
    """
    from emolens.steering.sweeps import sweep

    if emotion not in registry.emotions:
        from emolens.errors import unknown_name_message

        raise SteeringError(unknown_name_message("emotion", emotion, registry.emotions))
    vals = [float(s) for s in strengths]
    if 0.0 not in vals:
        raise SteeringError(f"strengths {vals} lack 0: the relevance and fluency thresholds "
                            "come from the unsteered generations; add 0")
    if len(set(vals)) < 2:
        raise SteeringError(f"strengths {vals}: give at least one nonzero strength beside 0")
    if prompts is None:
        prompts = default_prompts()
    layer_used = registry.default_layer if layer is None else int(layer)
    cand = list(words) if words is not None else list(registry.emotions)
    judge_name, judge_model = None, None
    if isinstance(concept_model, str):
        from emolens.steering.judges import load_judge_model

        judge_name, judge_model = concept_model, load_judge_model(concept_model)
    elif concept_model is not None:
        judge_model = concept_model
        judge_name = str(getattr(judge_model.cfg, "model_name", type(judge_model).__name__))
    judges = [concept_judge if judge_model is None else concept_judge_under(judge_model),
              relevance_judge]
    kw = dict(judges=judges, max_new_tokens=max_new_tokens, layer=layer_used, seed=seed,
              progress=progress, positions=positions, words=cand, batch_size=batch_size)
    df = score_generations(sweep(model, registry, emotion, vals, prompts, **kw), rules)
    summ = summarise_scores(df, seed=seed)
    pdf = psum = None
    if placebo:
        preg = _placebo_registry(registry, emotion, layer_used, placebo_seed)
        pdf = score_generations(sweep(model, preg, emotion, vals, prompts, **kw), rules)
        psum = summarise_scores(pdf, seed=seed)
    recall = (concept_judge_recall(judge_model if judge_model is not None else model, cand,
                                   judge=judge_name, seed=seed).to_dict()
              if judge_control else None)
    return SteeringScoreResult(emotion, layer_used, vals, df, summ, pdf, psum, rules,
                               {"concept_judge_recall": recall,
                                "max_new_tokens": max_new_tokens, "positions": str(positions),
                                "n_candidate_words": len(cand), "placebo_seed": placebo_seed,
                                "decoding": "greedy",
                                "concept_model": judge_name or "the steered model, unsteered"})


def default_prompts(n: int = 12) -> list[list[dict[str, str]]]:
    """The first user turn of the first ``n`` neutral dialogues of the bundled corpus."""
    from emolens.stimuli.corpus import load_corpus

    out = []
    for r in load_corpus().neutral:
        users = [m for m in (r.messages or []) if m.get("role") == "user"]
        if users:
            out.append([{"role": "user", "content": users[0]["content"]}])
        if len(out) == n:
            break
    if not out:
        raise InputError("the bundled corpus has no neutral dialogues; pass prompts=")
    return out


__all__ = [
    "DetectionResult", "JudgeRecall", "ScoreRules", "ScoreSummary", "SteeringScoreResult",
    "auc_interval", "concept_judge", "concept_judge_recall", "concept_judge_under",
    "continuation_logprob", "default_prompts", "detection_auc", "harmonic_score", "per_prompt_slopes", "relevance_judge", "roc_auc",
    "score_generations", "steering_score", "summarise_scores",
]
