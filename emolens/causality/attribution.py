"""Which attention heads and MLPs write each emotion direction, and what a direction does to
the logits directly.

The residual stream at a site is a sum of what came before it: the token embedding, each
attention layer's output (itself the sum of per-head writes ``z_h @ W_O[h]`` plus the output
bias) and each MLP's output. Projecting every term on an emotion's unit vector splits the
readout at that site into per-component contributions that add up to it exactly
(``direction_attribution``; any numerical remainder is kept as its own "remainder" row and
reported). This is a *direct* decomposition: a head's contribution counts what it writes
along the direction, not how it changes what later components write (that is what patching
measures).

``direction_logit_effects`` reads a direction through the model's final norm and unembedding
(TransformerLens's ``logit_readout``): the tokens whose logits a residual pointing that way
raises or lowers at the last layer. It says what the direction would do if it reached the
output unchanged, not what it does from a middle layer.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Bool, Float

from emolens.causality._common import CausalityError, as_batch
from emolens.positions import PositionSpec, position_mask
from emolens.runtime import model_device
from emolens.tokens import TokenizedBatch

if TYPE_CHECKING:
    from emolens.compat import Model


@dataclass
class DirectionAttribution:
    """Per-component contributions to the projection of the residual at ``site`` on each
    emotion's unit vector.

    values: ``[batch, pos, component, emotion]``; components are named in ``components``
    (``"embed"``, ``"L3.H5"``, ``"L3.attn_bias"``, ``"L3.mlp"``, ``"remainder"``).
    total: ``[batch, pos, emotion]``, the projection of the residual itself;
    ``values.sum(2) == total`` up to float error (``max_abs_error``).
    """

    values: Float[torch.Tensor, "batch pos component emotion"]
    total: Float[torch.Tensor, "batch pos emotion"]
    components: list[str]
    emotions: list[str]
    site: str
    mask: Bool[torch.Tensor, "batch pos"]
    tokens: list[list[str]] = field(default_factory=list)

    @property
    def max_abs_error(self) -> float:
        idx = self.components.index("remainder") if "remainder" in self.components else None
        vals = self.values if idx is None else torch.cat(
            [self.values[:, :, :idx], self.values[:, :, idx + 1:]], 2)
        return float((vals.sum(2) - self.total).abs().max())

    def pooled(self) -> Float[torch.Tensor, "component emotion"]:
        """``[component, emotion]``: mean over the selected positions of every prompt."""
        m = self.mask.float()
        return (self.values * m[..., None, None]).sum((0, 1)) / m.sum().clamp_min(1)

    def to_frame(self, pooled: bool = True) -> pd.DataFrame:
        """Tidy table: component, layer, kind, head, emotion, contribution (mean over selected
        positions when ``pooled``)."""
        rows = []
        vals = self.pooled()
        for ci, comp in enumerate(self.components):
            layer, kind, head = _parse_component(comp)
            for ei, emo in enumerate(self.emotions):
                rows.append({"component": comp, "layer": layer, "kind": kind, "head": head,
                             "emotion": emo, "contribution": float(vals[ci, ei])})
        if not pooled:
            raise CausalityError("per-position frames are large; index .values directly")
        return pd.DataFrame(rows)

    def top(self, emotion: str, k: int = 10) -> pd.DataFrame:
        """The ``k`` components with the largest absolute mean contribution to ``emotion``."""
        df = self.to_frame()
        df = df[df.emotion == emotion].copy()
        if df.empty:
            raise CausalityError(f"emotion {emotion!r} not in {self.emotions}")
        df["abs"] = df.contribution.abs()
        return df.sort_values("abs", ascending=False).head(k).drop(columns="abs")

    def summary(self, k: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = {"site": self.site, "n_components": len(self.components),
                               "max_abs_error": self.max_abs_error, "top": {}}
        pooled = self.pooled()
        for ei, emo in enumerate(self.emotions):
            order = pooled[:, ei].abs().argsort(descending=True)[:k]
            out["top"][emo] = [{"component": self.components[int(i)],
                                "contribution": float(pooled[int(i), ei])} for i in order]
            out.setdefault("readout", {})[emo] = float(
                (self.total[..., ei] * self.mask).sum() / self.mask.sum().clamp_min(1))
        return out

    def grid(self, emotion: str) -> tuple[Float[torch.Tensor, "layer column"], list[int], list[str]]:
        """``emotion``'s pooled contributions as ``[layer, component]`` (heads ``H0..``, the
        attention output bias ``b_O``, the ``MLP``; NaN where a layer has no such component),
        with the layers and the column names: the input of
        ``emolens.views.plot_component_writes``."""
        if emotion not in self.emotions:
            raise CausalityError(f"emotion {emotion!r} not in {self.emotions}")
        pooled = self.pooled()[:, self.emotions.index(emotion)]
        parsed = [_parse_component(c) for c in self.components]
        layers = sorted({p[0] for p in parsed if p[0] >= 0})
        heads = sorted({p[2] for p in parsed if p[1] == "head"})
        grid = torch.full((len(layers), len(heads) + 2), float("nan"))
        for ci, (layer, kind, head) in enumerate(parsed):
            if layer < 0:
                continue
            li = layers.index(layer)
            if kind == "head":
                grid[li, heads.index(head)] = pooled[ci]
            elif kind == "mlp":
                grid[li, len(heads) + 1] = pooled[ci]
            elif kind == "attn_bias":
                grid[li, len(heads)] = pooled[ci]
        return grid, layers, [f"H{h}" for h in heads] + ["b_O", "MLP"]

    def _repr_html_(self) -> str:
        s = self.summary(3)
        items = "".join(
            f"<li>{html.escape(e)}: " + ", ".join(
                f"{html.escape(t['component'])} {t['contribution']:+.3f}" for t in tops) + "</li>"
            for e, tops in s["top"].items())
        return (f"<div><b>DirectionAttribution</b> at <code>{html.escape(self.site)}</code>, "
                f"{len(self.components)} components, max error {s['max_abs_error']:.2e}"
                f"<ul>{items}</ul></div>")


def _parse_component(name: str) -> tuple[int, str, int]:
    if name in ("embed", "pos_embed"):
        return -1, name, -1
    if name == "remainder":
        return -2, "remainder", -1
    layer_s, rest = name.split(".", 1)
    layer = int(layer_s[1:])
    if rest.startswith("H"):
        return layer, "head", int(rest[1:])
    return layer, rest, -1


def _site_parts(site_name: str, n_layers: int) -> tuple[int, bool]:
    """(number of complete blocks before the site, whether block L's attention is included)."""
    import re

    m = re.match(r"^blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post)$", site_name)
    if not m:
        raise CausalityError(f"direction_attribution decomposes a residual-stream site "
                             f"(blocks.L.hook_resid_pre/mid/post), got {site_name!r}")
    layer, kind = int(m.group(1)), m.group(2)
    if kind == "resid_pre":
        return layer, False
    if kind == "resid_mid":
        return layer, True
    return layer + 1, False


def direction_attribution(
    model: Model,
    inputs: Any,
    registry: Any,
    *,
    layer: int | str | None = None,
    emotions: Sequence[str | Mapping[str, float]] | None = None,
    positions: PositionSpec = "content",
) -> DirectionAttribution:
    """Split each emotion's readout at a residual site into per-head, per-MLP and embedding
    contributions (direct writes along the unit vector), per token.

    Args:
        inputs: texts, conversations, a ``TokenizedBatch`` or tokens.
        registry: an ``EmotionRegistry``; ``layer`` picks its site (default layer).
        emotions: names (or weighted combinations) to decompose; default all.
        positions: which positions ``pooled()``/``summary()`` average over (``"content"``:
            every real token except the attention sink; ``"reply"``, ints, a mask ...).
    """
    site = registry.site(layer)
    emos = list(registry.emotions if emotions is None else emotions)
    vecs = torch.stack([registry.vector(e, site.layer) for e in emos]).float()  # [E, d]
    names = [e if isinstance(e, str) else "+".join(f"{w:g}*{k}" for k, w in e.items())
             for e in emos]
    batch: TokenizedBatch = as_batch(model, inputs)
    n_blocks, with_mid_attn = _site_parts(site.name, int(model.cfg.n_layers))
    hooks = {"hook_embed"}
    if "hook_pos_embed" in model.hook_dict:
        hooks.add("hook_pos_embed")
    for ly in range(n_blocks + (1 if with_mid_attn else 0)):
        hooks.add(f"blocks.{ly}.attn.hook_z")
        hooks.add(f"blocks.{ly}.hook_attn_out")
        if ly < n_blocks:
            hooks.add(f"blocks.{ly}.hook_mlp_out")
    hooks.add(site.name)
    dev = model_device(model)
    kw = {k: v.to(dev) for k, v in batch.forward_kwargs().items()}
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens.to(dev), names_filter=lambda n: n in hooks,
                                        **kw)
        V = vecs.to(dev)
        parts: list[torch.Tensor] = []
        comps: list[str] = []

        def add(name: str, x: torch.Tensor) -> None:
            comps.append(name)
            parts.append((x.float() @ V.T.to(x.device)).cpu())  # on the site's device

        add("embed", cache["hook_embed"])
        if "hook_pos_embed" in hooks and "hook_pos_embed" in cache:
            add("pos_embed", cache["hook_pos_embed"])
        for ly in range(n_blocks + (1 if with_mid_attn else 0)):
            attn = model.blocks[ly].attn
            z = cache[f"blocks.{ly}.attn.hook_z"].float()               # [b, p, h, d_head]
            W_O = attn.W_O.float()                                         # [h, d_head, d_model]
            W_O = W_O.to(z.device)  # a device-mapped model keeps each block on its own device
            wv = torch.einsum("hdm,em->hde", W_O, V.to(z.device))          # [h, d_head, E]
            per_head = torch.einsum("bphd,hde->bphe", z, wv).cpu()         # [b, p, h, E]
            head_sum = torch.einsum("bphd,hdm->bpm", z, W_O)
            for h in range(per_head.shape[2]):
                comps.append(f"L{ly}.H{h}")
                parts.append(per_head[:, :, h])
            attn_out = cache[f"blocks.{ly}.hook_attn_out"].float()
            add(f"L{ly}.attn_bias", attn_out - head_sum.to(attn_out.device))                  # b_O (and any rest)
            if ly < n_blocks:
                add(f"L{ly}.mlp", cache[f"blocks.{ly}.hook_mlp_out"])
        total = (cache[site.name].float() @ V.T.to(cache[site.name].device)).cpu()
    values = torch.stack(parts, 2)
    remainder = total - values.sum(2)
    values = torch.cat([values, remainder[:, :, None]], 2)
    comps.append("remainder")
    mask = position_mask(batch, positions)
    return DirectionAttribution(values, total, comps, names, site.name, mask,
                                batch.str_tokens(model))


@dataclass
class LogitEffects:
    """Tokens each direction promotes and suppresses when read through the final norm and
    unembedding (``logit_readout``), with their logits relative to the mean logit."""

    emotions: list[str]
    promoted: dict[str, list[tuple[str, float]]]
    suppressed: dict[str, list[tuple[str, float]]]
    layer: int

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for e in self.emotions:
            for rank, (t, v) in enumerate(self.promoted[e]):
                rows.append({"emotion": e, "direction": "promoted", "rank": rank, "token": t,
                             "logit": v})
            for rank, (t, v) in enumerate(self.suppressed[e]):
                rows.append({"emotion": e, "direction": "suppressed", "rank": rank, "token": t,
                             "logit": v})
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        return {"layer": self.layer,
                "promoted": {e: [t for t, _ in v] for e, v in self.promoted.items()},
                "suppressed": {e: [t for t, _ in v] for e, v in self.suppressed.items()}}


def direction_logit_effects(model: Model, registry: Any, *, layer: int | str | None = None,
                            emotions: Sequence[str] | None = None, top_k: int = 10,
                            scale: float | None = None) -> LogitEffects:
    """Top promoted / suppressed tokens of each emotion direction through ``ln_final`` and
    ``W_U`` (TransformerLens ``logit_readout``).

    ``scale``: length of the vector read (default: the site's mean residual norm, so the final
    norm sees a typical magnitude). Logits are reported minus their mean over the vocabulary.
    """
    from transformer_lens.tools.analysis.logit_lens import logit_readout

    site = registry.site(layer)
    emos = list(registry.emotions if emotions is None else emotions)
    vecs = torch.stack([registry.vector(e, site.layer) for e in emos]).float()
    s = float(registry.mean_norm(site.layer) if scale is None else scale)
    dev = model_device(model)
    both = torch.cat([vecs, -vecs]) * s
    full = logit_readout(model, both.to(dev)).values.float().cpu()         # [2E, vocab]
    full = full - full.mean(-1, keepdim=True)
    tok = model.tokenizer
    promoted, suppressed = {}, {}
    n = len(emos)
    for i, e in enumerate(emos):
        # direct effect of +v minus that of -v: symmetric around the norm's nonlinearity
        eff = (full[i] - full[n + i]) / 2
        top = eff.topk(top_k)
        bot = (-eff).topk(top_k)
        promoted[e] = [(tok.decode([int(j)]), float(v)) for v, j in zip(top.values, top.indices)]
        suppressed[e] = [(tok.decode([int(j)]), -float(v)) for v, j in zip(bot.values, bot.indices)]
    return LogitEffects(emos, promoted, suppressed, site.layer)


