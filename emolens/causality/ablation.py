"""Directional ablation as in Arditi et al. (2024): project a direction out of the residual
stream and choose the layer whose direction, ablated, changes a behaviour most while the model
stays itself on neutral text.

For each candidate layer ``l`` the unit direction ``r = registry.vector(emotion, l)`` is
ablated, ``x <- x - r r^T x``:

- ``mode="all_layers"`` (Arditi et al.): at every layer of the model, all positions (the
  direction taken at ``l`` is removed everywhere);
- ``mode="at_layer"``: only at layer ``l`` (``blocks.{l}.hook_resid_post``).

Two numbers per candidate: the change of a behaviour metric (ablated minus unablated, per
prompt; mean with a bootstrap interval and a sign-flip p-value) and the mean KL(unablated ||
ablated) of the next-token distribution over content tokens of neutral dialogues (nats per
token). The chosen layer is the one whose change is largest in the expected direction among
layers whose KL stays below ``kl_limit`` (0.1, Arditi et al.'s bound). A random unit direction
per candidate layer, ablated the same way, is the placebo; the same selection rule is applied
to it, so its best change says how much the selection alone produces (picking the largest of
several changes favours large ones).

Default metric: on the bundled implicit scenarios of the emotion (user messages that imply it),
the log-probability share of the emotion's word among the registry's emotion words after
"How does the narrator feel? They feel" (``emolens.steering.judges.word_logprobs``).
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emolens.causality._common import CausalityError
from emolens.stats import Estimate, paired_difference

if TYPE_CHECKING:
    from emolens.compat import Model

MODES = ("all_layers", "at_layer")
EXPECT = ("decrease", "increase", "any")


def choose_layer(layers: Sequence[int], change: Sequence[float], kl: Sequence[float], *,
                 kl_limit: float = 0.1, expect: str = "decrease") -> int | None:
    """The layer with the largest change in the ``expect`` direction ("decrease": most negative,
    "increase": most positive, "any": largest magnitude) among layers with ``kl < kl_limit``;
    None when no layer qualifies."""
    if expect not in EXPECT:
        raise CausalityError(f"expect must be one of {EXPECT}, got {expect!r}")
    sign = {"decrease": -1.0, "increase": 1.0}.get(expect)
    best, best_val = None, -math.inf
    for layer, c, k in zip(layers, change, kl):
        if not (math.isfinite(c) and math.isfinite(k)) or k >= kl_limit:
            continue
        v = abs(c) if sign is None else sign * c
        if v > best_val:
            best, best_val = int(layer), v
    return best


@dataclass
class AblationResult:
    """Result of ``ablation_scan``: per candidate layer the metric change (with interval and
    p-value) and the KL on neutral text, for the direction and for a random placebo."""

    emotion: str
    mode: str
    layers: list[int]
    change: list[Estimate]
    kl: list[float]
    placebo_change: list[Estimate] | None
    placebo_kl: list[float] | None
    chosen_layer: int | None
    placebo_chosen_layer: int | None
    kl_limit: float
    expect: str
    metric_name: str
    baseline: float
    n_prompts: int
    n_neutral: int
    settings: dict[str, Any] = field(default_factory=dict)

    def _at(self, layer: int | None, which: list[Estimate] | None) -> Estimate | None:
        if layer is None or which is None:
            return None
        return which[self.layers.index(layer)]

    @property
    def chosen_change(self) -> Estimate | None:
        return self._at(self.chosen_layer, self.change)

    @property
    def statement(self) -> str:
        how = ("at every layer" if self.mode == "all_layers" else "at its own layer only")
        lead = (f"Ablating the {self.emotion!r} direction of each of {len(self.layers)} layers "
                f"({how}, all positions) changed {self.metric_name} (unablated mean "
                f"{self.baseline:+.3f}, {self.n_prompts} prompts); the KL on {self.n_neutral} "
                f"neutral dialogues ranged {min(self.kl):.3g}-{max(self.kl):.3g} nats/token.")
        ch = self.chosen_change
        if ch is None or self.chosen_layer is None:
            lead += f" No layer kept the KL below {self.kl_limit}."
        else:
            lead += (f" Among layers with KL < {self.kl_limit}, the direction of layer "
                     f"{self.chosen_layer} changes it most ({self.expect}): {ch}, KL "
                     f"{self.kl[self.layers.index(int(self.chosen_layer))]:.3g}.")
        pc = self._at(self.placebo_chosen_layer, self.placebo_change)
        if pc is not None:
            lead += (f" Random directions ablated the same way, chosen by the same rule: {pc} "
                     f"(layer {self.placebo_chosen_layer}).")
        return lead + (" Established: removing this direction changes the metric by that much "
                       "on these prompts, at that cost on neutral text. Not established: that "
                       "the direction is the only carrier (others may compensate), or that the "
                       "chosen layer would win on other prompts (it is the maximum over layers, "
                       "which favours large values; compare the placebo's maximum).")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "emotion": self.emotion, "mode": self.mode, "layers": self.layers,
            "metric": self.metric_name, "baseline": self.baseline, "n_prompts": self.n_prompts,
            "n_neutral": self.n_neutral, "kl_limit": self.kl_limit, "expect": self.expect,
            "change": [e.to_dict() for e in self.change], "kl": self.kl,
            "chosen_layer": self.chosen_layer,
            "chosen_change": None if self.chosen_change is None else self.chosen_change.to_dict(),
            **self.settings, "statement": self.statement}
        if self.placebo_change is not None:
            d["placebo_change"] = [e.to_dict() for e in self.placebo_change]
            d["placebo_kl"] = self.placebo_kl
            d["placebo_chosen_layer"] = self.placebo_chosen_layer
        return d

    def figure(self) -> Any:
        from emolens.views.study import plot_ablation_curves

        pc = None if self.placebo_change is None else [e.value for e in self.placebo_change]
        return plot_ablation_curves(
            self.layers, np.array([e.value for e in self.change]),
            np.array([e.low for e in self.change]), np.array([e.high for e in self.change]),
            np.array(self.kl), kl_limit=self.kl_limit, chosen=self.chosen_layer,
            placebo_change=None if pc is None else np.array(pc),
            placebo_kl=None if self.placebo_kl is None else np.array(self.placebo_kl),
            metric=self.metric_name,
            title=f"Directional ablation of {self.emotion!r} ({self.mode})")

    def _repr_html_(self) -> str:
        from emolens.views.figures import figure_to_data_uri

        rows = "".join(
            f"<tr><td>{layer}</td><td>{html.escape(str(e))}</td><td>{k:.3g}</td>"
            + (f"<td>{self.placebo_change[i].value:+.3g}</td>" if self.placebo_change else "")
            + "</tr>" for i, (layer, e, k) in enumerate(zip(self.layers, self.change, self.kl)))
        return (f"<div><b>AblationResult</b> {html.escape(self.emotion)} ({self.mode})<table>"
                f"<tr><th>layer</th><th>change</th><th>KL</th><th>placebo</th></tr>{rows}"
                f"</table><img src='{figure_to_data_uri(self.figure())}'/>"
                f"<p>{html.escape(self.statement)}</p></div>")

    def __repr__(self) -> str:
        return (f"AblationResult({self.emotion!r}, {self.mode}, chosen layer "
                f"{self.chosen_layer}, {len(self.layers)} layers)")


# ---------------------------------------------------------------------------- pieces
def _kl_many(model: Model, steerings: Sequence[Any], texts: Any, batch_size: int) -> list[float]:
    """Mean KL(unsteered || steered) over content tokens of ``texts`` for each steering; the
    unsteered distribution is computed once per batch."""
    from emolens.runtime import model_device
    from emolens.steering.interventions import apply_steering
    from emolens.tokens import to_inputs

    items = list(texts)
    if not items:
        raise CausalityError("no neutral texts for the KL; pass neutral= (strings or "
                             "conversations)")
    dev = model_device(model)

    def logprobs(b: Any, s: Any) -> torch.Tensor:
        handle = apply_steering(model, [s]) if s is not None else None
        try:
            with torch.no_grad():
                logits = model(b.tokens, return_type="logits", **b.forward_kwargs())
        finally:
            if handle is not None:
                handle.remove()
        return logits[:, :-1].float().log_softmax(-1)

    totals = [0.0] * len(steerings)
    count = 0
    for start in range(0, len(items), batch_size):
        b = to_inputs(model, items[start:start + batch_size]).to(dev)
        p = logprobs(b, None)
        mask = b.content_mask[:, :-1] | b.content_mask[:, 1:]
        mask = b.attention_mask[:, :-1].bool() & b.attention_mask[:, 1:].bool() & mask
        pe = p.exp()
        for i, s in enumerate(steerings):
            q = logprobs(b, s)
            totals[i] += float(((pe * (p - q)).sum(-1))[mask].sum())
            del q
        count += int(mask.sum())
    return [t / max(count, 1) for t in totals]


def scenario_prompts(emotion: str) -> list[str]:
    """The user messages of the bundled implicit scenarios of ``emotion``."""
    from emolens.stimuli.corpus import load_corpus

    out = []
    for r in load_corpus().scenarios:
        if r.emotion == emotion:
            users = [m["content"] for m in (r.messages or []) if m.get("role") == "user"]
            if users:
                out.append(users[-1])
    if not out:
        raise CausalityError(f"the bundled corpus has no scenarios of {emotion!r}; pass "
                             "prompts= (texts that should evoke it)")
    return out


def _ablation(vector: torch.Tensor, layer: int, mode: str) -> Any:
    from emolens.steering.interventions import Steering

    if mode == "all_layers":
        return Steering(vector, 1.0, layers="all", op="ablate")
    return Steering(vector, 1.0, layer=layer, op="ablate")


def ablation_scan(model: Model, registry: Any, emotion: str, *, prompts: Sequence[Any] | None = None,
                  metric: Callable[[Any], Any] | None = None, metric_name: str | None = None,
                  layers: Sequence[int] | None = None, mode: str = "all_layers",
                  neutral: Any = None, n_neutral: int = 8, kl_limit: float = 0.1,
                  expect: str = "decrease", placebo: bool = True, placebo_seed: int = 0,
                  seed: int = 0, batch_size: int | None = None, kl_batch_size: int = 4,
                  progress: bool = False) -> AblationResult:
    """Arditi et al.'s layer selection for one emotion direction (see the module docstring).

    ``layers``: candidate layers (default: every registry layer). ``prompts``: texts for the
    default metric (default: the emotion's bundled scenarios). ``metric``: instead of the
    default, a callable ``metric(model) -> [n_prompts]`` values, evaluated with whatever
    ablation hook is on the model (once unablated, once per candidate). ``neutral``: neutral
    texts or conversations for the KL (default: the first ``n_neutral`` neutral dialogues of the
    bundled corpus). ``expect``: which change counts as the effect.
    """
    from tqdm.auto import tqdm

    from emolens.steering.interventions import apply_steering, random_direction
    from emolens.steering.judges import question_context, word_logprobs

    if mode not in MODES:
        raise CausalityError(f"mode must be one of {MODES}, got {mode!r}")
    if expect not in EXPECT:
        raise CausalityError(f"expect must be one of {EXPECT}, got {expect!r}")
    if not (isinstance(kl_limit, (int, float)) and kl_limit > 0):
        raise CausalityError(f"kl_limit must be a positive number (nats/token), got {kl_limit!r}")
    registry.emotion_index(emotion)
    cand = list(registry.layers if layers is None else layers)
    for layer in cand:
        registry.site(layer)
    vecs = [registry.vector(emotion, layer) for layer in cand]
    d = registry.d_model
    conds = [_ablation(v, layer, mode) for v, layer in zip(vecs, cand)]
    pconds = ([_ablation(random_direction(d, seed=placebo_seed + layer), layer, mode)
               for layer in cand] if placebo else [])
    all_conds = conds + pconds
    if neutral is None:
        from emolens.stimuli.corpus import load_corpus

        neutral = [list(r.messages or []) for r in load_corpus().neutral[:n_neutral]]
    neutral = list(neutral)
    if metric is None:
        items = list(prompts) if prompts is not None else scenario_prompts(emotion)
        words = list(registry.emotions)
        t = words.index(emotion)
        contexts = [question_context(model, p) for p in items]
        n_p = len(contexts)
        lp = word_logprobs(model, contexts * (1 + len(all_conds)), words, batch_size=batch_size,
                           steerings=[c for c in [None, *all_conds] for _ in range(n_p)],
                           progress=progress)
        share = (lp[:, t] - torch.logsumexp(lp, -1)).reshape(1 + len(all_conds), n_p)
        values = share.double().numpy()
        name = metric_name or f"log P({emotion!r}) share among {len(words)} emotion words"
    else:
        rows = []
        for c in tqdm([None, *all_conds], desc="ablation metric", disable=not progress):
            handle = apply_steering(model, [c]) if c is not None else None
            try:
                with torch.no_grad():
                    rows.append(np.asarray(torch.as_tensor(metric(model)).double().cpu()))
            finally:
                if handle is not None:
                    handle.remove()
        values = np.stack(rows)
        if values.ndim != 2:
            raise CausalityError(f"metric(model) must return one value per prompt, got shape "
                                 f"{values.shape[1:]}")
        n_p = values.shape[1]
        name = str(metric_name or getattr(metric, "__name__", "metric"))
    kls = _kl_many(model, all_conds, neutral, kl_batch_size)
    base = values[0]
    changes = [paired_difference(values[1 + i], base, seed=seed) for i in range(len(all_conds))]
    ch, pch = changes[:len(cand)], changes[len(cand):] or None
    kl, pkl = kls[:len(cand)], kls[len(cand):] or None
    chosen = choose_layer(cand, [e.value for e in ch], kl, kl_limit=kl_limit, expect=expect)
    pchosen = (choose_layer(cand, [e.value for e in pch], pkl, kl_limit=kl_limit, expect=expect)
               if pch is not None and pkl is not None else None)
    return AblationResult(emotion, mode, [int(x) for x in cand], ch, kl, pch, pkl, chosen,
                          pchosen, float(kl_limit), expect, name, float(base.mean()), int(n_p),
                          len(neutral), {"placebo_seed": placebo_seed,
                                         "positions": "all", "kl_definition": "KL(unablated || ablated), "
                                         "content tokens of neutral dialogues"})


__all__ = ["AblationResult", "MODES", "ablation_scan", "choose_layer", "scenario_prompts"]
