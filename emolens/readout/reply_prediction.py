"""Which position predicts the emotion of the reply: the token that opens the assistant's reply,
or the user's last token? (The study: r = 0.87 vs 0.59.)

``reply_emotion_prediction`` generates a reply (greedy, unsteered) to each prompt, reads the
reply's pooled emotion (mean over its content tokens at ``reply_layer``; by default the reply is
read on its own, as plain text, so the target shares no tokens with the prompt; with
``reply_reading="in_context"`` it is read where it was generated, after the prompt), and
correlates it with the readout of the prompt at two positions, at each layer asked:

- ``reply_open``: the last prompt token, which opens the assistant's turn (``reply_pos``);
- ``user_last``: the last token of the user's message (before the end-of-turn token).

The correlation is taken over all (prompt, emotion) cells after centring each emotion's values
over prompts (so a direction that is high everywhere does not count as prediction); the
interval resamples prompts (all emotions of a prompt together), the difference between the two
positions uses the same resamples, and the p-value permutes the prompts of the target. Per
emotion correlations at the reply layer are reported beside it.

What it establishes: how well each position's readout tracks the emotion the reply then shows
(as read by the same directions), on these prompts. What it does not: that the model plans the
reply's emotion at that token (a readout is a correlation), or agreement with a human judgement
of the reply.
"""
from __future__ import annotations

import html
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float

from emolens.errors import InputError
from emolens.stats import Estimate, pearson

if TYPE_CHECKING:
    from emolens.compat import Model

POSITIONS = ("reply_open", "user_last")


def user_last_positions(model: Model, conversations: Sequence[Sequence[Mapping[str, str]]]
                        ) -> torch.Tensor:
    """``[batch]`` index (in ``to_inputs``'s right-padded layout) of the last token of the last
    user message of each conversation, rendered with the generation prompt."""
    from emolens.tokens import _bos_for, _encode, render_chat

    out = []
    for i, conv in enumerate(conversations):
        users = [m for m in conv if m.get("role") == "user"]
        if not users:
            raise InputError(f"conversation {i} has no user message")
        rendered = render_chat(model, [dict(m) for m in conv], add_generation_prompt=True)
        content = str(users[-1]["content"]).rstrip()
        end = rendered.rfind(content)
        if end < 0:
            raise InputError(f"conversation {i}: the chat template changed the user's text, so "
                             "its last token cannot be located")
        bos = _bos_for(model, chat=True)
        prefix = _encode(model, rendered[:end + len(content)], prepend_bos=bos)
        full = _encode(model, rendered, prepend_bos=bos)
        n = len(prefix)
        if full[:n - 1] != prefix[:n - 1]:
            raise InputError(f"conversation {i}: tokenising up to the user's last word does not "
                             "give a prefix of the whole conversation's tokens")
        out.append(n - 1)
    return torch.tensor(out, dtype=torch.long)


def _centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(0, keepdims=True)


def _r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def compare_predictors(target: Float[torch.Tensor, "prompt emotion"] | np.ndarray,
                       predictors: Mapping[str, Any], *, n_resamples: int = 1000,
                       n_permutations: int = 1000, seed: int = 0, confidence: float = 0.95
                       ) -> dict[str, Any]:
    """Pooled correlation of each ``predictors[name]`` (``[prompt, emotion]``) with ``target``
    after centring every emotion over prompts; bootstrap over prompts (paired across
    predictors), permutation p (target rows shuffled), and the difference of the first two
    predictors' r. Returns ``{name: Estimate, "difference": Estimate | None}``."""
    y = np.asarray(target, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 3:
        raise InputError(f"target must be [prompt, emotion] with at least 3 prompts, got "
                         f"{y.shape}")
    xs = {}
    for k, v in predictors.items():
        a = np.asarray(v, dtype=np.float64)
        if a.shape != y.shape:
            raise InputError(f"predictor {k!r} has shape {a.shape}, target {y.shape}")
        xs[k] = _centre(a)
    yc = _centre(y)
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_resamples, n))
    perms = np.stack([rng.permutation(n) for _ in range(n_permutations)])
    alpha = (1 - confidence) / 2
    boots: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {}
    for k, x in xs.items():
        r = _r(x, yc)
        b = np.array([_r(_centre(x[i]), _centre(yc[i])) for i in idx])
        boots[k] = b
        null = np.array([_r(x, yc[p]) for p in perms])
        p = (float((np.abs(null) >= abs(r) - 1e-12).sum()) + 1) / (n_permutations + 1)
        ok = b[np.isfinite(b)]
        lo, hi = ((float(np.quantile(ok, alpha)), float(np.quantile(ok, 1 - alpha)))
                  if ok.size else (float("nan"), float("nan")))
        out[k] = Estimate(r, lo, hi, p, n, confidence,
                          "r = 0 (prompts of the target permuted)")
    names = list(xs)
    out["difference"] = None
    if len(names) >= 2:
        first, second = names[0], names[1]
        dd = boots[first] - boots[second]
        dd = dd[np.isfinite(dd)]
        diff = out[first].value - out[second].value
        pd_ = (float(min(1.0, 2 * (min((dd <= 0).sum(), (dd >= 0).sum()) + 1) / (dd.size + 1)))
               if dd.size else None)
        out["difference"] = Estimate(diff, float(np.quantile(dd, alpha)),
                                     float(np.quantile(dd, 1 - alpha)), pd_, n, confidence,
                                     f"r({first}) = r({second}) (bootstrap, two-sided)")
    return out


@dataclass
class ReplyPredictionResult:
    """Result of ``reply_emotion_prediction``: per predictor layer, the pooled r of each
    position with the reply's emotion (intervals, p), their difference, and per-emotion r at
    the reply layer."""

    emotions: list[str]
    layers: list[int]
    reply_layer: int
    by_layer: dict[int, dict[str, Estimate | None]]
    per_emotion: dict[str, dict[str, Estimate]]
    n_prompts: int
    replies: list[str]
    prompts: list[str]
    reply_reading: str
    settings: dict[str, Any] = field(default_factory=dict)

    def at(self, layer: int | None = None) -> dict[str, Estimate | None]:
        return self.by_layer[self.reply_layer if layer is None else int(layer)]

    @property
    def statement(self) -> str:
        e = self.at()
        ro, ul, d = e["reply_open"], e["user_last"], e["difference"]
        best = max(self.layers, key=lambda lay: _val(self.by_layer[lay]["reply_open"]))
        return (f"Over {self.n_prompts} prompts and {len(self.emotions)} emotions (each centred "
                f"over prompts), the readout at layer {self.reply_layer} of the token that opens "
                f"the reply correlates with the emotion of the generated reply (read "
                f"{self.reply_reading}, layer {self.reply_layer}) at r = {ro}; the user's last "
                f"token at r = {ul}; difference {d}. Across predictor layers the reply-opening "
                f"token peaks at layer {best} (r = {_val(self.by_layer[best]['reply_open']):.3f})"
                f". The study: 0.87 vs 0.59. Established: which position's readout tracks the "
                "reply's emotion better on these prompts. Not established: that the model "
                "decides the reply's emotion there, or that a person would read the same "
                "emotion in the reply.")

    def to_dict(self) -> dict[str, Any]:
        def est(x: Estimate | None) -> Any:
            return None if x is None else x.to_dict()
        return {"emotions": self.emotions, "layers": self.layers, "reply_layer": self.reply_layer,
                "n_prompts": self.n_prompts, "reply_reading": self.reply_reading,
                "by_layer": {str(k): {n: est(v) for n, v in d.items()}
                             for k, d in self.by_layer.items()},
                "per_emotion": {e: {n: v.to_dict() for n, v in d.items()}
                                for e, d in self.per_emotion.items()},
                "sample_replies": self.replies[:5], **self.settings,
                "statement": self.statement}

    def figure(self) -> Any:
        from emolens.views.study import plot_predictor_curves

        curves = {}
        for pos, label in (("reply_open", "reply-opening token"),
                           ("user_last", "user's last token")):
            ests = [self.by_layer[lay][pos] for lay in self.layers]
            curves[label] = (np.array([_val(x) for x in ests]),
                             np.array([x.low if x else np.nan for x in ests]),
                             np.array([x.high if x else np.nan for x in ests]))
        return plot_predictor_curves(self.layers, curves,
                                     title=f"Predicting the reply's emotion (reply read at "
                                           f"layer {self.reply_layer})")

    def _repr_html_(self) -> str:
        from emolens.views.figures import figure_to_data_uri

        rows = "".join(f"<tr><td>{lay}</td><td>{html.escape(str(d['reply_open']))}</td>"
                       f"<td>{html.escape(str(d['user_last']))}</td></tr>"
                       for lay, d in self.by_layer.items())
        return (f"<div><b>ReplyPredictionResult</b><table><tr><th>layer</th><th>reply-opening"
                f"</th><th>user's last</th></tr>{rows}</table>"
                f"<img src='{figure_to_data_uri(self.figure())}'/>"
                f"<p>{html.escape(self.statement)}</p></div>")

    def __repr__(self) -> str:
        e = self.at()
        return (f"ReplyPredictionResult(reply_open r={_val(e['reply_open']):.3f}, user_last "
                f"r={_val(e['user_last']):.3f}, {self.n_prompts} prompts)")


def _val(x: Estimate | None) -> float:
    return float("nan") if x is None else float(x.value)


def reply_emotion_prediction(model: Model, registry: Any, prompts: Sequence[Any] | None = None, *,
                             n_prompts: int | None = None, emotions: Sequence[str] | None = None,
                             layers: Sequence[int] | None = None, reply_layer: int | None = None,
                             reply_reading: str = "alone", max_new_tokens: int = 40,
                             batch_size: int | None = None, n_resamples: int = 1000, seed: int = 0,
                             progress: bool = False) -> ReplyPredictionResult:
    """Generate replies and correlate their pooled emotion with the prompt's readout at the
    reply-opening token and at the user's last token (see the module docstring).

    ``prompts``: conversations ending with a user message (default: the bundled implicit
    scenarios; ``n_prompts`` draws that many, seeded). ``emotions``: readout columns (default:
    every registry emotion). ``layers``: predictor layers (default: every registry layer);
    ``reply_layer``: where the reply is read (default: the registry's default layer).
    """
    from tqdm.auto import tqdm

    from emolens.generation import generate
    from emolens.readout.readout import read_emotions
    from emolens.runtime import resolve_batch_size

    if reply_reading not in ("alone", "in_context"):
        raise InputError(f"reply_reading must be 'alone' or 'in_context', got {reply_reading!r}")
    batch_size = resolve_batch_size(batch_size, model)
    if prompts is None:
        from emolens.stimuli.corpus import load_corpus

        prompts = [list(r.messages or []) for r in load_corpus().scenarios]
    convs = [list(p) for p in prompts]
    if n_prompts is not None and n_prompts < len(convs):
        keep = sorted(random.Random(seed).sample(range(len(convs)), n_prompts))
        convs = [convs[i] for i in keep]
    if len(convs) < 3:
        raise InputError(f"need at least 3 prompts for a correlation, got {len(convs)}")
    for i, c in enumerate(convs):
        if not c or not isinstance(c[-1], Mapping) or c[-1].get("role") != "user":
            raise InputError(f"prompt {i} must be a conversation ending with a user message")
    emos = list(registry.emotions if emotions is None else emotions)
    ei = [registry.emotion_index(e) for e in emos]
    lays = [int(x) for x in (registry.layers if layers is None else layers)]
    rl = registry.default_layer if reply_layer is None else int(reply_layer)
    registry.site(rl)
    if rl not in lays:
        raise InputError(f"reply_layer {rl} must be among the predictor layers {lays}")
    replies: list[str] = []
    targets: list[torch.Tensor] = []
    for s in tqdm(range(0, len(convs), batch_size), desc="replies", disable=not progress):
        g = generate(model, convs[s:s + batch_size], max_new_tokens=max_new_tokens,
                     monitor=registry if reply_reading == "in_context" else None)
        replies.extend(g.texts)
        if reply_reading == "in_context":
            sc = g.readout.at(rl)[..., ei]
            gen = g.attention_mask.bool().clone()
            gen[:, :g.prompt_len] = False
            m = gen.to(sc.dtype)
            targets.append((sc * m[..., None]).sum(1) / m.sum(1).clamp(min=1)[:, None])
    ok = [i for i, r in enumerate(replies) if r.strip()]
    if len(ok) < 3:
        raise InputError(f"only {len(ok)} replies are non-empty; need at least 3")
    if reply_reading == "alone":
        target = read_emotions(model, registry, [replies[i] for i in ok], layer=rl,
                               batch_size=batch_size).pooled()[:, ei]
    else:
        target = torch.cat(targets)[ok]
    convs_ok = [convs[i] for i in ok]
    ro = read_emotions(model, registry, convs_ok, layers=lays, batch_size=batch_size)
    rows = torch.arange(len(ok))
    open_pos = ro.reply_pos
    user_pos = user_last_positions(model, convs_ok)
    by_layer: dict[int, dict[str, Estimate | None]] = {}
    for lay in lays:
        s = ro.at(lay)[..., ei]
        res = compare_predictors(target, {"reply_open": s[rows, open_pos],
                                          "user_last": s[rows, user_pos]},
                                 n_resamples=n_resamples, seed=seed)
        by_layer[lay] = res
    per_emotion: dict[str, dict[str, Estimate]] = {}
    s = ro.at(rl)[..., ei]
    for j, e in enumerate(emos):
        y = target[:, j]
        per_emotion[e] = {}
        for name, pos in (("reply_open", open_pos), ("user_last", user_pos)):
            x = s[rows, pos, j]
            if float(x.std()) > 0 and float(y.std()) > 0:
                per_emotion[e][name] = pearson(x, y, n_resamples=500, n_permutations=500,
                                               seed=seed)
    return ReplyPredictionResult(emos, lays, rl, by_layer, per_emotion, len(ok),
                                 [replies[i] for i in ok],
                                 [str(c[-1]["content"]) for c in convs_ok], reply_reading,
                                 {"max_new_tokens": max_new_tokens, "decoding": "greedy",
                                  "n_dropped_empty": len(convs) - len(ok)})


__all__ = ["POSITIONS", "ReplyPredictionResult", "compare_predictors",
           "reply_emotion_prediction", "user_last_positions"]
