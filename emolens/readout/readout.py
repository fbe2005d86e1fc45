"""Readouts: emotion scores per token, per layer, per emotion.

Scores follow the one rule of ``emolens.scoring``: the centred projection ``(x - center) . v``
of the residual stream at a registry site onto an emotion's unit vector (the study's "emotion
probe"; ``kind="cosine"`` for cosines, ``centered=False`` for the raw projection).
``read_emotions`` reads every requested layer in one forward pass that stops after the deepest.
"""
from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int

from emolens.errors import InputError
from emolens.registry import EmotionRegistry
from emolens.scoring import check_kind, score
from emolens.tokens import to_inputs

if TYPE_CHECKING:
    from emolens.compat import Model


@dataclass
class Readout:
    """Emotion scores for a batch of texts.

    ``scores_all``: ``[batch, pos, layer, emotion]``; ``mask``: real (non-padding) tokens;
    ``content_mask``: real tokens other than the attention-sink first token; ``reply_pos``:
    index of the reply-opening token per row (-1 for plain text); ``str_tokens``: token strings
    of the real tokens of each row; ``default_layer``: the layer ``scores`` shows when one layer
    was asked; ``kind``: projection or cosine.
    """

    scores_all: Float[torch.Tensor, "batch pos layer emotion"]
    emotions: list[str]
    layers: list[int]
    str_tokens: list[list[str]]
    mask: Bool[torch.Tensor, "batch pos"]
    content_mask: Bool[torch.Tensor, "batch pos"]
    reply_pos: Int[torch.Tensor, " batch"]
    default_layer: int
    texts: list[str] = field(default_factory=list)
    kind: str = "projection"
    centered: bool = True

    # ------------------------------------------------------------ tensors
    @property
    def scores(self) -> Float[torch.Tensor, "batch pos emotion"]:
        """``[batch, pos, emotion]`` at ``default_layer`` (the layer asked, or the registry's
        default when several were read); every layer read: ``scores_all`` ``[batch, pos,
        layer, emotion]`` or ``at(layer)``."""
        return self.at(self.default_layer)

    def _li(self, layer: int | None) -> int:
        layer = self.default_layer if layer is None else layer
        if layer not in self.layers:
            raise InputError(f"layer {layer} was not read; this readout has layers {self.layers}")
        return self.layers.index(layer)

    def at(self, layer: int | None = None) -> Float[torch.Tensor, "batch pos emotion"]:
        """Scores at one layer (default: ``default_layer``)."""
        return self.scores_all[:, :, self._li(layer)]

    def emotion(self, name: str, layer: int | None = None) -> Float[torch.Tensor, "batch pos"]:
        if name not in self.emotions:
            from emolens.errors import unknown_name_message

            raise InputError(unknown_name_message("emotion", name, self.emotions))
        return self.at(layer)[..., self.emotions.index(name)]

    def pooled(self, layer: int | None = None, *, include_sink: bool = False
               ) -> Float[torch.Tensor, "batch emotion"]:
        """Mean over content tokens (no padding, no attention-sink token) at ``layer``."""
        m = (self.mask if include_sink else self.content_mask).to(self.scores_all.dtype)
        s = self.at(layer)
        return (s * m[..., None]).sum(1) / m.sum(1).clamp(min=1)[:, None]

    def at_reply(self, layer: int | None = None) -> Float[torch.Tensor, "batch emotion"]:
        """Scores at the token that opens the assistant's reply (chat input only)."""
        if (self.reply_pos < 0).any():
            raise InputError("at_reply needs chat input for every row; row "
                             f"{int((self.reply_pos < 0).nonzero()[0, 0])} is plain text")
        rows = torch.arange(self.scores_all.shape[0])
        return self.at(layer)[rows, self.reply_pos]

    def top(self, k: int = 3, layer: int | None = None) -> list[list[tuple[str, float]]]:
        """The ``k`` highest pooled emotions of each text."""
        pooled = self.pooled(layer)
        vals, idx = pooled.topk(min(k, pooled.shape[-1]), dim=-1)
        return [[(self.emotions[int(i)], float(v)) for v, i in zip(vr, ir)]
                for vr, ir in zip(vals, idx)]

    # ------------------------------------------------------------ tidy data
    def to_dataframe(self, layers: Sequence[int] | None = None) -> Any:
        """Tidy ``pandas.DataFrame``: text, pos, token, layer, emotion, score, is_content."""
        import pandas as pd

        rows = []
        use = list(self.layers if layers is None else layers)
        for b, toks in enumerate(self.str_tokens):
            real = self.mask[b].nonzero().flatten().tolist()
            for j, p in enumerate(real):
                for layer in use:
                    li = self._li(layer)
                    for e, name in enumerate(self.emotions):
                        rows.append((b, j, toks[j], layer, name,
                                     float(self.scores_all[b, p, li, e]),
                                     bool(self.content_mask[b, p])))
        return pd.DataFrame(rows, columns=["text", "pos", "token", "layer", "emotion", "score",
                                           "is_content"])

    def __repr__(self) -> str:
        return (f"Readout({len(self.str_tokens)} texts, {self.scores_all.shape[1]} positions, "
                f"layers={self.layers}, {len(self.emotions)} emotions, kind={self.kind!r})")

    def _repr_html_(self) -> str:
        top = self.top(3)
        rows = "".join(
            f"<tr><td>{i}</td><td>{html.escape(''.join(t)[:80])}</td><td>"
            + ", ".join(f"{html.escape(n)} {v:+.2f}" for n, v in tp) + "</td></tr>"
            for i, (t, tp) in enumerate(zip(self.str_tokens, top)))
        return (f"<div><b>Readout</b> layer {self.default_layer} ({self.kind}); "
                f"{len(self.emotions)} emotions, layers {self.layers}<table>"
                f"<tr><th>#</th><th>text</th><th>top pooled emotions</th></tr>{rows}</table></div>")


def read_emotions(model: Model, registry: EmotionRegistry, texts: Any, *,
                  layer: int | str | None = None,
                  layers: Sequence[int | str] | str | None = None,
                  batch_size: int | None = None,
                  padding_side: str = "right", kind: str = "projection", centered: bool = True,
                  strict: bool = True, distributed: bool | str | None = "auto") -> Readout:
    """Read every emotion of ``registry`` on ``texts`` (strings and/or chat conversations).

    ``layer``: one layer (default the registry's ``default_layer``); ``layers``: several (or
    ``"all"``), all in ``scores_all`` ``[batch, pos, layer, emotion]``. ``scores`` is always
    ``[batch, pos, emotion]`` at the readout's ``default_layer`` (``layer``, or the registry's
    default when it was read, else the deepest read). One forward pass per batch reads every
    layer; it stops after the deepest.
    Raises ``InputError`` for an empty list, empty text or text longer than the context, and
    ``ModelMismatchError`` for a registry built on another model (``strict=False`` relaxes the
    id check; shapes must still match).
    ``batch_size``: rows per forward; ``None``: the device's default
    (``emolens.runtime.resolve_batch_size``).
    ``distributed`` (``emolens.distributed``): under an initialised process group each rank
    reads a token-balanced share of the rows and every rank returns the whole readout, rows in
    input order (the sum of the ranks' disjoint rows; exact).
    """
    registry.check_model(model, strict=strict)
    if layers is not None and layer is not None:
        raise InputError("pass either layer= (one) or layers= (several), not both")
    from emolens.runtime import resolve_batch_size

    batch_size = resolve_batch_size(batch_size, model)  # None: the device's default (8 on CPU)
    single = layers is None
    if layers is None:
        wanted = [layer]  # None: the registry's default layer
    elif layers == "all":
        wanted = list(registry.layers)
    elif isinstance(layers, str) or not isinstance(layers, Iterable):
        raise InputError(f"layers must be a list of layer numbers or 'all', got {layers!r}")
    else:
        wanted = list(layers)
        if not wanted:
            raise InputError(f"layers=[] selects nothing: pass layer numbers from "
                             f"{registry.layers}, 'all', or layer= for one")
    # the registry resolves numbers (negative from the model's count), hook names and Sites,
    # and refuses bools and floats
    sites = sorted({registry.site(x) for x in wanted}, key=lambda s: s.layer)
    use = [s.layer for s in sites]
    check_kind(kind)
    from emolens.tokens import normalise_inputs

    items = normalise_inputs(texts)
    batch = to_inputs(model, items, padding_side=padding_side)  # validates and sets the layout
    n, width = batch.tokens.shape
    scores = torch.zeros(n, width, len(sites), len(registry.emotions))
    mats = [registry.matrix(x) for x in use]
    centers = [registry.center(x) if centered else None for x in use]
    from emolens.distributed import context, shard_by_tokens

    ctx = context(distributed)
    mine = (shard_by_tokens(batch.lengths.tolist(), ctx.world_size)[ctx.rank] if ctx.active
            else list(range(n)))
    with ctx.guard("readout"):
        _read_rows(model, items, mine, sites, mats, centers, kind, scores, width, batch_size,
                   padding_side)
    ctx.all_reduce_([scores])  # each row is non-zero on one rank only
    scores = scores * batch.attention_mask[:, :, None, None]
    shown = use[0] if single else (registry.default_layer if registry.default_layer in use
                                   else use[-1])
    return Readout(scores, registry.emotions, use, batch.str_tokens(model),
                   batch.attention_mask.bool(), batch.content_mask, batch.reply_pos, shown,
                   batch.texts, kind, centered)


def _read_rows(model: Model, items: list[Any], mine: list[int], sites: list[Any],
               mats: list[torch.Tensor], centers: list[Any], kind: str, scores: torch.Tensor,
               width: int, batch_size: int, padding_side: str) -> None:
    """Fill ``scores[row]`` for the rows ``mine``, ``batch_size`` rows per forward."""
    from emolens.extraction.extract import stream_sites

    for start in range(0, len(mine), batch_size):
        rows = torch.tensor(mine[start:start + batch_size], dtype=torch.long)

        def on_site(i: int, act: torch.Tensor, sub: Any, rows: torch.Tensor = rows) -> None:
            # scored on the model's device; only [batch, pos, emotion] is copied
            s = score(act, mats[i], centers[i], kind=kind).cpu()
            w = act.shape[1]  # chunk width: the same rows padded to the chunk's longest
            if padding_side == "right":
                scores[rows, :w, i] = s
            else:
                scores[rows, width - w:, i] = s

        stream_sites(model, [items[j] for j in rows.tolist()], sites, on_site,
                     padding_side=padding_side)
