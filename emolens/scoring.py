"""The one scoring rule: how a residual vector becomes an emotion score.

A score is the projection of a residual vector ``x`` onto an emotion's unit direction ``v``,
after subtracting the registry's stimulus centre (the mean over emotions of the class means at
that site): ``(x - center) . v``. Centring changes each emotion's score by a constant, so it
never changes a difference between two runs of the same emotion (a patching or steering effect),
but it makes scores of different emotions comparable (argmax over emotions, scenario matrices,
held-out accuracy). ``centered=False`` gives the raw projection ``x . v``; ``kind="cosine"``
divides by ``|x - center|``.

Extraction's validation, readouts, evaluation on labelled data, the causality metrics and the
behaviour experiments all score through ``score`` (tensors) or ``project`` (a registry layer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from emolens.errors import InputError

if TYPE_CHECKING:
    from emolens.registry import EmotionRegistry

KINDS = ("projection", "cosine")
RULE = "centred projection (x - center) . v"
CLASSIFY_RULE = (f"argmax over emotions of the {RULE} of each held-out text's mean activation x "
                 "over its content tokens")


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise InputError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return str(kind)


def score(x: Float[torch.Tensor, "... d_model"], directions: Float[torch.Tensor, "emotion d_model"],
          center: Float[torch.Tensor, " d_model"] | None = None, *, kind: str = "projection"
          ) -> Float[torch.Tensor, "... emotion"]:
    """``(x - center) @ directions.T`` (``center=None``: raw projection); ``kind="cosine"``
    divides by ``|x - center|``. Computed on ``x``'s device and dtype."""
    check_kind(kind)
    d = directions.to(x.device, x.dtype)
    if center is not None:
        x = x - center.to(x.device, x.dtype)
    s = x @ d.T
    if kind == "cosine":
        s = s / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return s


def project(resid: Float[torch.Tensor, "... d_model"], registry: EmotionRegistry,
            layer: int | None = None, *, kind: str = "projection", centered: bool = True,
            emotions: Any = None) -> Float[torch.Tensor, "... emotion"]:
    """Scores of residual vectors at one registry layer (default: its ``default_layer``) for
    every emotion (or ``emotions``, a list of names, in that order)."""
    mat = registry.matrix(layer)
    if emotions is not None:
        mat = mat[[registry.emotion_index(e) for e in emotions]]
    return score(resid, mat, registry.center(layer) if centered else None, kind=kind)
