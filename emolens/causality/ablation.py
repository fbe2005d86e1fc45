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

Massive activations (Sun et al. 2024): where the stream has coordinates of thousands (Gemma-3),
``x . r`` is dominated by them for any ``r``, so projecting out even a random direction throws
every other coordinate about. By default (``exclude_coordinates="massive"``) those coordinates,
found by ``massive_coordinates`` on the neutral texts, are set to 0 in every direction and
placebo before ablating; on models without them nothing changes.

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
        excl = self.settings.get("excluded_coordinates") or []
        if excl:
            cos = self.settings.get("direction_kept_cosine") or [1.0]
            lead += (f" Coordinates {excl} were left out of every direction and placebo (set to 0, "
                     f"renormalised); what was ablated keeps cosine {min(cos):.3f}-{max(cos):.3f} "
                     f"with the registry's directions.")
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


def massive_coordinates(model: Model, texts: Any = None, *, layers: Sequence[int] | None = None,
                        threshold: float = 100.0, ratio: float = 1000.0, n_texts: int = 8,
                        batch_size: int | None = None) -> list[int]:
    """The residual-stream coordinates that carry massive activations (Sun et al. 2024): those
    ``i`` for which, at some ``blocks.{l}.hook_resid_post`` of ``layers`` (default: all) and
    some real token of ``texts``, ``|x_i| > threshold`` and ``|x_i| > ratio x`` the median
    ``|x_j|`` of that token's vector (Sun et al.'s "larger than 100 and about 1,000 times the
    median"). Default texts: the first ``n_texts`` bundled neutral dialogues. An empty list for
    a model without them (SmolLM2-135M and Qwen2.5-Coder on 4 neutral dialogues; Gemma-3-270M
    has three)."""
    from emolens.compat import cache_to_layer
    from emolens.runtime import model_device, resolve_batch_size
    from emolens.tokens import to_inputs

    if not (threshold > 0 and ratio > 0):
        raise CausalityError(f"threshold and ratio must be positive, got {threshold!r}, "
                             f"{ratio!r}")
    n_layers = int(model.cfg.n_layers)
    lays = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in lays if not 0 <= x < n_layers]
    if bad or not lays:
        raise CausalityError(f"layers must be in 0..{n_layers - 1}, got {layers!r}")
    if texts is None:
        from emolens.stimuli.corpus import load_corpus

        texts = [list(r.messages or []) for r in load_corpus().neutral[:n_texts]]
    items = list(texts)
    if not items:
        raise CausalityError("no texts to look for massive activations in; pass texts=")
    names = [f"blocks.{x}.hook_resid_post" for x in lays]
    bs, dev = resolve_batch_size(batch_size, model), model_device(model)
    found: set[int] = set()
    for start in range(0, len(items), bs):
        b = to_inputs(model, items[start:start + bs]).to(dev)
        with torch.no_grad():
            cache = cache_to_layer(model, b.tokens, names, max(lays) + 1, **b.forward_kwargs())
        real = b.attention_mask.bool()
        for name in names:
            a = cache[name].float().abs()[real]  # [n_tokens, d_model]
            med = a.median(-1, keepdim=True).values
            hit = (a > threshold) & (a > ratio * med)
            found.update(int(i) for i in hit.any(0).nonzero().flatten())
    return sorted(found)


def _without(vector: torch.Tensor, coordinates: Sequence[int]) -> torch.Tensor:
    """``vector`` with ``coordinates`` set to 0, renormalised to unit length."""
    v = vector.detach().float().clone()
    v = v / v.norm()
    if coordinates:
        v[list(coordinates)] = 0.0
    n = v.norm()
    if not n > 0:
        raise CausalityError(f"the direction lies entirely in the excluded coordinates "
                             f"{list(coordinates)}; exclude fewer")
    return v / n


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
                  exclude_coordinates: Sequence[int] | str | None = "massive",
                  progress: bool = False) -> AblationResult:
    """Arditi et al.'s layer selection for one emotion direction (see the module docstring).

    ``layers``: candidate layers (default: every registry layer). ``prompts``: texts for the
    default metric (default: the emotion's bundled scenarios). ``metric``: instead of the
    default, a callable ``metric(model) -> [n_prompts]`` values, evaluated with whatever
    ablation hook is on the model (once unablated, once per candidate). ``neutral``: neutral
    texts or conversations for the KL (default: the first ``n_neutral`` neutral dialogues of the
    bundled corpus). ``expect``: which change counts as the effect. ``exclude_coordinates``:
    residual-stream coordinates that neither the directions nor the placebos may touch (each
    vector has them set to 0 and is renormalised); ``"massive"`` (the default) for
    ``massive_coordinates(model, neutral)``, none on a model without massive activations; None
    for Arditi et al.'s ablation as it stands. On a model whose stream has a massive coordinate
    (Gemma-3), projecting out any direction moves every other coordinate by that one's weight,
    so even a random direction wrecks the model. The result records the coordinates and each
    direction's cosine with what is ablated.
    """
    from tqdm.auto import tqdm

    from emolens.steering.interventions import apply_steering, random_direction
    from emolens.steering.judges import question_context, word_logprobs
    from emolens.steering.sweeps import neutral_kls

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
    if neutral is None:
        from emolens.stimuli.corpus import load_corpus

        neutral = [list(r.messages or []) for r in load_corpus().neutral[:n_neutral]]
    neutral = list(neutral)
    excluded = _excluded(model, exclude_coordinates, neutral, d, batch_size)
    kept = [_without(v, excluded) for v in vecs]
    kept_cos = [float(torch.dot(k, v.float() / v.float().norm())) for k, v in zip(kept, vecs)]
    conds = [_ablation(v, layer, mode) for v, layer in zip(kept, cand)]
    pconds = ([_ablation(_without(random_direction(d, seed=placebo_seed + layer), excluded),
                         layer, mode) for layer in cand] if placebo else [])
    all_conds = conds + pconds
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
    kls = neutral_kls(model, all_conds, neutral, batch_size=kl_batch_size)
    base = values[0]
    changes = [paired_difference(values[1 + i], base, seed=seed) for i in range(len(all_conds))]
    ch, pch = changes[:len(cand)], changes[len(cand):] or None
    kl, pkl = kls[:len(cand)], kls[len(cand):] or None
    chosen = choose_layer(cand, [e.value for e in ch], kl, kl_limit=kl_limit, expect=expect)
    pchosen = (choose_layer(cand, [e.value for e in pch], pkl, kl_limit=kl_limit, expect=expect)
               if pch is not None and pkl is not None else None)
    return AblationResult(emotion, mode, [int(x) for x in cand], ch, kl, pch, pkl, chosen,
                          pchosen, float(kl_limit), expect, name, float(base.mean()), int(n_p),
                          len(neutral), {
                              "placebo_seed": placebo_seed, "positions": "all",
                              "kl_definition": "KL(unablated || ablated), content tokens of "
                                               "neutral dialogues",
                              "excluded_coordinates": excluded,
                              "direction_kept_cosine": kept_cos})


def _excluded(model: Model, spec: Sequence[int] | str | None, neutral: list[Any], d: int,
              batch_size: int | None) -> list[int]:
    """The coordinates ``exclude_coordinates`` names: none, ``"massive"``, or indices."""
    if spec is None:
        return []
    if isinstance(spec, str):
        if spec != "massive":
            raise CausalityError(f"exclude_coordinates must be None, 'massive' or coordinate "
                                 f"indices, got {spec!r}")
        return massive_coordinates(model, neutral, batch_size=batch_size)
    out = sorted({int(i) for i in spec})
    bad = [i for i in out if not 0 <= i < d]
    if bad:
        raise CausalityError(f"exclude_coordinates {bad} are outside 0..{d - 1} (d_model {d})")
    return out


__all__ = ["AblationResult", "MODES", "ablation_scan", "choose_layer", "massive_coordinates",
           "scenario_prompts"]
