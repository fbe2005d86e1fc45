"""Directional patching: move one run's component along emotion directions into another run.

For each prompt pair (source, target) and each chosen site and position,

    x_t  <-  x_t + P (x_s - x_t),     P = B B^T, B an orthonormal basis of the directions' span

so the target keeps everything outside the span and takes the source's coordinates inside it
(TransformerLens's ``SubspaceInterchange``). The change in a metric, per pair, is the *effect*.
Beside it, always, a *placebo*: the same displacement norm, per token, but inside a random
subspace of the same rank (``NormMatchedPlacebo``; several seeded draws). An effect the placebo
also produces comes from moving the activation that far, not from the direction. The *full*
patch (the whole residual at those sites and positions) gives the ceiling.

Statistics are over prompt pairs: bootstrap intervals, the paired sign-flip permutation test of
effect minus placebo, and the rank of the real effect among the placebo draws.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from transformer_lens.tools.analysis.interchange import (
    NormMatchedPlacebo,
    SubspaceInterchange,
    random_basis,
)

from emolens.causality._common import CausalityError, as_batch, paired_positions, slice_batch
from emolens.causality.metrics import Metric, MetricFn, as_metric
from emolens.positions import PositionSpec
from emolens.runtime import batches, model_device, progress_bar, rows_per_chunk
from emolens.sites import Site, resolve_site
from emolens.stats import Estimate, mean_estimate, paired_difference
from emolens.tokens import TokenizedBatch

if TYPE_CHECKING:
    from emolens.compat import Model

DirectionSpec = Any  # an EmotionRegistry or a [k, d_model] tensor


def orthonormal_basis(directions: Float[torch.Tensor, "k d_model"]
                      ) -> Float[torch.Tensor, "d_model rank"]:
    """An orthonormal ``[d_model, rank]`` basis of the span of the rows (rank-deficient rows
    dropped)."""
    from transformer_lens.tools.analysis.projection_kernel import orthonormal_subspace

    d = directions.float()
    if d.ndim == 1:
        d = d[None]
    if d.ndim != 2 or not torch.isfinite(d).all() or bool((d.norm(dim=-1) == 0).any()):
        raise CausalityError(f"directions must be finite non-zero rows [k, d_model], got shape "
                             f"{tuple(d.shape)}")
    return orthonormal_subspace(d.T.contiguous()).basis.float()


def _bases(model: Model, directions: DirectionSpec, emotions: Any, layer: Any,
           sites: Any) -> tuple[list[Site], list[torch.Tensor], str]:
    """Resolve (sites, one basis per site, label)."""
    from emolens.registry import EmotionRegistry

    if isinstance(directions, EmotionRegistry):
        reg = directions
        if sites is None:
            site_list = [reg.site(layer)]
        else:
            specs = sites if isinstance(sites, (list, tuple)) else [sites]
            site_list = [resolve_site(model, s) for s in specs]
        if emotions is None:
            emotions = reg.emotions
        if isinstance(emotions, (str, Mapping)):
            emotions = [emotions]
        reg_names = {x.name for x in reg.sites}
        bases = []
        for s in site_list:
            # the registry's direction at that site, else at the registry's site of that layer
            where: int | str = s.name if s.name in reg_names else s.layer
            rows = torch.stack([reg.vector(e, where) for e in emotions])
            bases.append(orthonormal_basis(rows))
        label = ", ".join(e if isinstance(e, str) else str(dict(e)) for e in emotions)
        return site_list, bases, label
    if isinstance(directions, torch.Tensor):
        if sites is None:
            raise CausalityError("with a direction tensor, say where to patch: sites=[layer or "
                                 "hook name, ...]")
        specs = sites if isinstance(sites, (list, tuple)) else [sites]
        site_list = [resolve_site(model, s) for s in specs]
        if directions.shape[-1] != int(model.cfg.d_model):
            raise CausalityError(f"directions end in {directions.shape[-1]}, the model's d_model "
                                 f"is {model.cfg.d_model}")
        basis = orthonormal_basis(directions)
        return site_list, [basis] * len(site_list), f"{basis.shape[1]}-dim custom span"
    raise CausalityError(f"directions must be an EmotionRegistry or a [k, d_model] tensor, got "
                         f"{type(directions).__name__}")


@dataclass
class DirectionPatchResult:
    """Outcome of ``patch_direction`` (all values in the metric's units, per prompt pair).

    effect: mean change of the metric when the directions' component is patched; ci: its
    bootstrap interval; placebo: mean change under norm-matched random subspaces (averaged over
    draws); p_value: paired sign-flip test that effect and placebo are equal; full: mean change
    when the whole activation is patched (the ceiling); total: mean metric(source) -
    metric(target).
    """

    effect: float
    ci: tuple[float, float]
    placebo: float
    placebo_ci: tuple[float, float]
    p_value: float
    estimates: dict[str, Estimate]
    per_pair: pd.DataFrame
    placebo_draws: Float[torch.Tensor, "placebo pair"]
    placebo_rank_p: float
    label: str
    sites: list[str]
    positions: str
    rank: int
    metric_name: str
    n_pairs: int
    full: float | None = None
    total: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def fraction_of_full(self) -> float | None:
        if self.full is None or abs(self.full) < 1e-8:
            return None
        return self.effect / self.full

    @property
    def statement(self) -> str:
        """What this result establishes and what it does not, in plain language."""
        e = self.estimates
        where = f"{', '.join(self.sites)} (positions: {self.positions})"
        lead = (f"Patching the {self.rank}-dimensional span of [{self.label}] at {where} from "
                f"source into target changed {self.metric_name} by {e['effect']} over "
                f"{self.n_pairs} prompt pairs; norm-matched random subspaces of the same rank "
                f"changed it by {e['placebo']}")
        if self.full is not None:
            frac = self.fraction_of_full
            lead += (f"; patching the whole activation there changed it by {self.full:+.4g}"
                     + ("" if frac is None else f" (the span carries {frac:.0%} of that)"))
        lead += "."
        d = e["difference"]
        beats = d.excludes(0.0) and (d.p_value or 1.0) < 0.05 and \
            abs(self.effect) > abs(self.placebo)
        if beats:
            verdict = (f" The effect exceeds the placebo (difference {d}). Established: at this "
                       "site and these positions, the component of the activation along these "
                       "directions carries information that moves this metric, beyond what a "
                       "displacement of equal size in a random direction does.")
        elif e["effect"].excludes(0.0):
            verdict = (f" The effect is not distinguishable from the placebo (difference {d}): "
                       "moving the activation this far changes the metric, but nothing here "
                       "shows that these directions matter more than random ones.")
        else:
            verdict = (" No effect is established: the interval of the effect covers zero, so "
                       "with these pairs the directions' component was not shown to matter for "
                       "this metric (absence of evidence, not evidence of absence).")
        caveat = (" Not established: that the model uses these directions at other sites, "
                  "positions or prompts; that they are the only carrier of this information "
                  "(other directions may carry it too); or that the emotion names describe what "
                  "the directions encode.")
        return lead + verdict + caveat

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "directions": self.label, "rank": self.rank, "sites": self.sites,
            "positions": self.positions, "metric": self.metric_name, "n_pairs": self.n_pairs,
            "effect": self.estimates["effect"].to_dict(),
            "placebo": self.estimates["placebo"].to_dict(),
            "effect_minus_placebo": self.estimates["difference"].to_dict(),
            "placebo_draw_means": [float(v) for v in self.placebo_draws.mean(1)],
            "placebo_rank_p": self.placebo_rank_p,
            "full_patch_effect": self.full, "source_minus_target": self.total,
            "fraction_of_full": self.fraction_of_full, "statement": self.statement,
            "notes": list(self.notes),
        }

    def _repr_html_(self) -> str:
        e = self.estimates
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in e.items())
        return (f"<div><b>DirectionPatchResult</b> [{html.escape(self.label)}] rank {self.rank} "
                f"at {html.escape(', '.join(self.sites))}, positions {html.escape(self.positions)}"
                f", metric {html.escape(self.metric_name)}, {self.n_pairs} pairs"
                f"<table>{rows}</table><p>{html.escape(self.statement)}</p></div>")

    def __repr__(self) -> str:
        return (f"DirectionPatchResult(effect={self.effect:+.4g} [{self.ci[0]:+.4g}, "
                f"{self.ci[1]:+.4g}], placebo={self.placebo:+.4g}, p={self.p_value:.3g}, "
                f"n_pairs={self.n_pairs})")


def make_interventions(bases: Sequence[Float[torch.Tensor, "d_model rank"]], *, n_placebo: int,
                       seed: int = 0,
                       include_full: bool = True) -> list[tuple[str, list[Any]]]:
    """The conditions of ``patch_direction``, one intervention per site each: ``"effect"``
    (``SubspaceInterchange`` on each basis), ``"placebo{j}"`` (``NormMatchedPlacebo``: a random
    subspace of the same rank from seed ``seed + j``, moved exactly as far per token as the
    real patch) and ``"full"`` (the whole activation)."""
    d_model, rank = int(bases[0].shape[0]), int(bases[0].shape[1])
    conditions: list[tuple[str, list[Any]]] = [
        ("effect", [SubspaceInterchange(b) for b in bases])]
    for j in range(n_placebo):
        rb = random_basis(d_model, rank, seed + j)
        conditions.append((f"placebo{j}", [NormMatchedPlacebo(SubspaceInterchange(b), rb)
                                           for b in bases]))
    if include_full:
        eye = torch.eye(d_model)
        conditions.append(("full", [SubspaceInterchange(eye)] * len(bases)))
    return conditions


def _capture_hooks(names: Sequence[str], store: dict[str, torch.Tensor]) -> list[tuple[str, Any]]:
    def make(name: str) -> Any:
        def hook(act: torch.Tensor, hook: Any) -> None:
            store[name] = act.detach()
        return hook
    return [(n, make(n)) for n in names]


def run_metric(model: Model, batch: TokenizedBatch, metric: Metric,
               hooks: Sequence[tuple[str, Any]] = (),
               rows: Int[torch.Tensor, " batch"] | None = None) -> Float[torch.Tensor, " batch"]:
    """The metric on one forward pass of ``batch`` with extra hooks (captures ``metric.reads``
    after the hooks have run); ``rows``: the batch rows' indices in the whole experiment."""
    dev = model_device(model)
    store: dict[str, torch.Tensor] = {}
    kwargs = {k: v.to(dev) for k, v in batch.forward_kwargs().items()}
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks) + _capture_hooks(metric.reads, store)):
        logits = model(batch.tokens.to(dev), **kwargs)
    return metric(logits, batch, store, rows)


def _interchange_hook(fn: Any, rows: torch.Tensor, tpos: torch.Tensor, src: torch.Tensor
                      ) -> Any:
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        d = act.device
        r, p = rows.to(d), tpos.to(d)
        base = act[r, p]
        act[r, p] = fn(base, src.to(d, base.dtype)).to(act.dtype)
        return act
    return hook


def patch_direction(
    model: Model,
    source: Any,
    target: Any,
    directions: DirectionSpec,
    *,
    metric: Metric | MetricFn,
    emotions: Sequence[str | Mapping[str, float]] | str | None = None,
    layer: int | str | None = None,
    sites: Any = None,
    positions: PositionSpec = "reply_or_last",
    n_placebo: int = 8,
    include_full: bool = True,
    seed: int = 0,
    max_tokens: int = 2048,
    confidence: float = 0.95,
    strict: bool = True,
    progress: bool = True,
) -> DirectionPatchResult:
    """Patch the source's component along ``directions`` into the target, beside a placebo.

    Args:
        source, target: prompt pairs (equal counts): texts, chat conversations, a
            ``TokenizedBatch`` or ``[batch, pos]`` tokens. Row ``i`` of each form pair ``i``.
        directions: an ``EmotionRegistry`` (with ``emotions``, default all of them, and
            ``layer``, default the registry's) or a ``[k, d_model]`` tensor (then ``sites`` is
            required). The span of the rows is patched (rank <= k).
        metric: a ``Metric`` (``logit_diff``, ``answer_prob``, ``readout_at``, ...) or
            ``f(logits, batch) -> [batch]``.
        sites: hook names / layers to patch at (default: the registry's site at ``layer``).
        positions: ``"reply_or_last"`` (default: reply-opening token of chats, last token of
            plain text), ``"reply"`` (chats only), ``"last"``,
            ``"all"`` (token-aligned pairs only), ints, or a mask; see ``position_mask``.
        n_placebo: random subspaces (same rank, seeds ``seed .. seed + n_placebo - 1``), each
            moved exactly as far as the real patch moves each token.
        include_full: also patch the whole activation (the ceiling of any direction).
        strict: a registry's model check (``EmotionRegistry.check_model``).

    Returns:
        ``DirectionPatchResult`` with ``.effect``, ``.ci``, ``.placebo``, ``.p_value``,
        ``.statement``, ``.summary()`` and per-pair values.
    """
    if n_placebo < 1:
        raise CausalityError(f"n_placebo must be >= 1 (the placebo is not optional), got {n_placebo}")
    if hasattr(directions, "check_model"):
        directions.check_model(model, strict=strict)
    metric_b = as_metric(metric).bind(model)
    src_b, tgt_b = as_batch(model, source), as_batch(model, target)
    if len(src_b) != len(tgt_b):
        raise CausalityError(f"{len(src_b)} source and {len(tgt_b)} target prompts: pass one "
                             "source per target (row i of each forms pair i)")
    site_list, bases, label = _bases(model, directions, emotions, layer, sites)
    rank = int(bases[0].shape[1])
    d_model = int(model.cfg.d_model)
    rows, tpos, spos = paired_positions(src_b, tgt_b, positions)
    n = len(tgt_b)
    dev = model_device(model)
    names = [s.name for s in site_list]
    width = max(src_b.tokens.shape[1], tgt_b.tokens.shape[1])
    per = rows_per_chunk(width, max_tokens)

    # source activations at the sites, at the selected source positions
    src_acts: dict[str, torch.Tensor] = {}
    source_metric: list[torch.Tensor] = []
    target_metric: list[torch.Tensor] = []
    for sl in batches(n, per):
        sb = slice_batch(src_b, sl)
        store: dict[str, torch.Tensor] = {}
        ridx = torch.arange(sl.start, sl.stop)
        source_metric.append(run_metric(model, sb, metric_b, _capture_hooks(names, store), ridx))
        sel = (rows >= sl.start) & (rows < sl.stop)
        for nm in names:
            got = store[nm][rows[sel] - sl.start, spos[sel].to(store[nm].device)].float().cpu()
            src_acts.setdefault(nm, torch.empty(len(rows), d_model))[sel] = got
        target_metric.append(run_metric(model, slice_batch(tgt_b, sl), metric_b, rows=ridx))
    src_m, base = torch.cat(source_metric), torch.cat(target_metric)

    conditions = make_interventions(bases, n_placebo=n_placebo, seed=seed,
                                    include_full=include_full)
    values: dict[str, torch.Tensor] = {}
    bar = progress_bar(total=len(conditions) * len(list(batches(n, per))),
                       desc="patch_direction", enabled=progress)
    for cname, fns in conditions:
        outs = []
        for sl in batches(n, per):
            sel = (rows >= sl.start) & (rows < sl.stop)
            r, p = rows[sel] - sl.start, tpos[sel]
            hooks = [(nm, _interchange_hook(fn, r, p, src_acts[nm][sel].to(dev)))
                     for nm, fn in zip(names, fns)]
            outs.append(run_metric(model, slice_batch(tgt_b, sl), metric_b, hooks,
                                   torch.arange(sl.start, sl.stop)))
            bar.update(1)
        values[cname] = torch.cat(outs) - base
    bar.close()
    effect = values["effect"]
    plac = torch.stack([values[f"placebo{j}"] for j in range(n_placebo)])
    plac_mean = plac.mean(0)
    est = {
        "effect": mean_estimate(effect, confidence=confidence, seed=seed),
        "placebo": mean_estimate(plac_mean, confidence=confidence, seed=seed),
        "difference": paired_difference(effect, plac_mean, confidence=confidence, seed=seed),
    }
    full = values.get("full")
    if full is not None:
        est["full"] = mean_estimate(full, confidence=confidence, seed=seed)
    draw_means = plac.mean(1)
    rank_p = float((1 + (draw_means.abs() >= effect.mean().abs()).sum()) / (1 + n_placebo))
    df = pd.DataFrame({
        "pair": range(n), "target_value": base.numpy(), "source_value": src_m.numpy(),
        "effect": effect.numpy(), "placebo": plac_mean.numpy(),
        **({"full": full.numpy()} if full is not None else {}),
    })
    notes = []
    if n < 8:
        notes.append(f"only {n} prompt pairs: intervals are wide and skewed")
    pos_label = positions if isinstance(positions, str) else "custom"
    return DirectionPatchResult(
        effect=float(effect.mean()), ci=(est["effect"].low, est["effect"].high),
        placebo=float(plac_mean.mean()), placebo_ci=(est["placebo"].low, est["placebo"].high),
        p_value=float(est["difference"].p_value or 1.0), estimates=est, per_pair=df,
        placebo_draws=plac, placebo_rank_p=rank_p, label=label, sites=names,
        positions=str(pos_label), rank=rank, metric_name=metric_b.name, n_pairs=n,
        full=None if full is None else float(full.mean()), total=float((src_m - base).mean()),
        notes=notes)
