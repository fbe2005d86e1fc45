"""Activation-patching maps, batched: many patches per forward pass.

Same inputs and outputs as ``transformer_lens.patching`` (``get_act_patch_resid_pre`` and
friends): the corrupted tokens, the clean run's ``ActivationCache``, a metric of the logits, and
a tensor with one value per patched cell (``[n_layers, pos]``, ``[n_layers, n_heads]``, ...).
The difference is speed: instead of one forward pass per cell, the corrupted batch is repeated
along the batch dimension and each copy patches a different cell (its layer's hook patches only
its own rows), in chunks of at most ``max_tokens`` tokens. The values equal TransformerLens's to
float tolerance (tests check 1e-4 on tiny models and on the default model).

Each sweep is also exported under TransformerLens's name (``get_act_patch_resid_pre``,
``get_act_patch_attn_head_out_all_pos``, ... ``get_act_patch_block_every``; ``TL_ALIASES``
lists them), so code written for ``transformer_lens.patching`` runs batched by changing the
import.

The metric keeps TransformerLens's signature: ``metric(logits) -> scalar`` (or ``[batch]`` with
``reduce="mean"``/``"none"``), called once per cell on that cell's ``[batch, pos, d_vocab]``
logits.
"""
from __future__ import annotations

import html
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float, Int

from emolens.causality._common import CausalityError
from emolens.runtime import batches, model_device, progress_bar

if TYPE_CHECKING:
    from emolens.compat import Model

_AXES = {
    ("layer", "pos"): "pos",
    ("layer", "pos", "head"): "pos_head",
    ("layer", "head"): "head",
}
_KINDS = {
    "resid_pre": ("resid_pre", ("layer", "pos")),
    "resid_mid": ("resid_mid", ("layer", "pos")),
    "resid_post": ("resid_post", ("layer", "pos")),
    "attn_out": ("attn_out", ("layer", "pos")),
    "mlp_out": ("mlp_out", ("layer", "pos")),
    "head_out": ("z", ("layer", "head")),
    "head_out_by_pos": ("z", ("layer", "pos", "head")),
    "head_q": ("q", ("layer", "head")),
    "head_k": ("k", ("layer", "head")),
    "head_v": ("v", ("layer", "head")),
    "head_q_by_pos": ("q", ("layer", "pos", "head")),
    "head_k_by_pos": ("k", ("layer", "pos", "head")),
    "head_v_by_pos": ("v", ("layer", "pos", "head")),
}


def _act_name(activation_name: str, layer: int) -> str:
    from transformer_lens.utilities import get_act_name

    return str(get_act_name(activation_name, layer))


def _grid(model: Model, activation_name: str, axes: Sequence[str], n_pos: int,
          layers: Sequence[int] | None) -> list[tuple[int, ...]]:
    n_heads = int(model.cfg.n_heads)
    kv_heads = getattr(model.cfg, "n_key_value_heads", None)
    if activation_name in ("k", "v") and kv_heads:
        n_heads = int(kv_heads)
    ranges = {"layer": list(layers) if layers is not None else list(range(int(model.cfg.n_layers))),
              "pos": list(range(n_pos)), "head": list(range(n_heads))}
    return [tuple(c) for c in itertools.product(*[ranges[a] for a in axes])]


def batched_activation_patch(
    model: Model,
    corrupted_tokens: Int[torch.Tensor, "batch pos"],
    clean_cache: Any,
    patching_metric: Callable[[Float[torch.Tensor, "batch pos d_vocab"]], Float[torch.Tensor, "*b"]],
    activation_name: str,
    index_axis_names: Sequence[str] = ("layer", "pos"),
    *,
    layers: Sequence[int] | None = None,
    index_df: pd.DataFrame | None = None,
    attention_mask: Int[torch.Tensor, "batch pos"] | None = None,
    max_tokens: int = 8192,
    reduce: str = "scalar",
    progress: bool = True,
) -> Float[torch.Tensor, "*cells"]:
    """Patch clean activations into the corrupted run, one cell per batch copy.

    Args:
        corrupted_tokens: ``[batch, pos]`` token ids of the corrupted run.
        clean_cache: the clean run's cache (``ActivationCache`` or a dict of hook name ->
            ``[batch, pos, ...]``); it must hold ``activation_name`` at every patched layer.
        patching_metric: ``metric(logits[batch, pos, d_vocab]) -> scalar`` (TransformerLens's
            convention), or ``-> [batch]`` with ``reduce="mean"`` or ``"none"``.
        activation_name: short name as in ``transformer_lens.utilities.get_act_name``
            (``"resid_pre"``, ``"attn_out"``, ``"mlp_out"``, ``"z"``, ...).
        index_axis_names: ``("layer", "pos")``, ``("layer", "pos", "head")`` or
            ``("layer", "head")`` (every position of one head).
        layers: restrict the sweep to these layers (rows of other layers are not returned).
        index_df: explicit cells (columns = axis names), as in TransformerLens; the result is
            then flat, one value per row.
        max_tokens: tokens per forward pass (bounds memory: logits are
            ``max_tokens * d_vocab`` floats).

    Returns:
        ``[n_layers (or len(layers)), *axis sizes]`` (plus ``[batch]`` with ``reduce="none"``),
        or ``[len(index_df)]`` for an explicit ``index_df``.
    """
    axes = tuple(index_axis_names)
    if axes not in _AXES:
        raise CausalityError(f"index_axis_names {axes} not supported; use one of {list(_AXES)}")
    if reduce not in ("scalar", "mean", "none"):
        raise CausalityError(f"reduce must be 'scalar', 'mean' or 'none', got {reduce!r}")
    if corrupted_tokens.ndim != 2:
        raise CausalityError(f"corrupted_tokens must be [batch, pos], got {tuple(corrupted_tokens.shape)}")
    B, P = corrupted_tokens.shape
    if index_df is not None:
        if list(index_df.columns) != list(axes):
            raise CausalityError(f"index_df columns {list(index_df.columns)} != axes {list(axes)}")
        cells = [tuple(int(v) for v in row) for row in index_df.itertuples(index=False)]
    else:
        cells = _grid(model, activation_name, axes, P, layers)
    if not cells:
        raise CausalityError("no cells to patch")
    dev = model_device(model)
    tokens = corrupted_tokens.to(dev)
    mask = None if attention_mask is None else attention_mask.to(dev)
    needed = sorted({c[0] for c in cells})
    clean: dict[int, torch.Tensor] = {}
    for layer in needed:
        name = _act_name(activation_name, layer)
        try:
            act = clean_cache[name]
        except KeyError as e:
            raise CausalityError(f"clean_cache has no {name!r}; cache it (run_with_cache with a "
                                 "names_filter that keeps it)") from e
        if act.shape[0] != B or act.shape[1] != P:
            raise CausalityError(f"clean activation {name!r} has shape {tuple(act.shape)}; "
                                 f"expected batch {B} and pos {P} like corrupted_tokens")
        clean[layer] = act.detach().to(dev)

    per_chunk = max(1, max_tokens // max(1, B * P))
    values: list[torch.Tensor] = []
    kind = _AXES[axes]
    with torch.no_grad():
        for sl in progress_bar(list(batches(len(cells), per_chunk)),
                               desc=f"patch {activation_name}", enabled=progress):
            chunk = cells[sl]
            n = len(chunk)
            by_layer: dict[int, list[int]] = {}
            for k, cell in enumerate(chunk):
                by_layer.setdefault(cell[0], []).append(k)
            hooks = []
            for layer, ks in by_layer.items():
                hooks.append((_act_name(activation_name, layer),
                              _make_hook(kind, [chunk[k] for k in ks], ks, clean[layer], B)))
            rep = tokens.repeat(n, 1)
            kwargs = {} if mask is None else {"attention_mask": mask.repeat(n, 1)}
            with model.hooks(fwd_hooks=hooks):
                logits = model(rep, **kwargs)
            for k in range(n):
                out = torch.as_tensor(patching_metric(logits[k * B:(k + 1) * B]))
                if reduce == "scalar":
                    if out.ndim != 0:
                        raise CausalityError(
                            f"patching_metric returned shape {tuple(out.shape)}; under "
                            "reduce='scalar' it must return a scalar (or pass reduce='mean')")
                elif out.ndim != 1 or out.shape[0] != B:
                    raise CausalityError(f"patching_metric must return [batch={B}] under "
                                         f"reduce={reduce!r}, got {tuple(out.shape)}")
                values.append(out.detach().float().cpu())
            del logits
    stacked = torch.stack(values)
    if reduce == "mean":
        stacked = stacked.mean(-1)
    if index_df is not None:
        return stacked
    sizes = [len(sorted({c[i] for c in cells})) for i in range(len(axes))]
    return stacked.reshape(*sizes, *stacked.shape[1:])


def _make_hook(kind: str, cells: list[tuple[int, ...]], slots: list[int], clean: torch.Tensor,
               B: int) -> Callable[..., torch.Tensor]:
    slot = torch.tensor(slots, dtype=torch.long)
    ar = torch.arange(B)
    rows = (slot[:, None] * B + ar[None]).flatten()
    brow = ar.repeat(len(slots))
    if kind in ("pos", "pos_head"):
        pos = torch.tensor([c[1] for c in cells], dtype=torch.long).repeat_interleave(B)
    if kind == "pos_head":
        head = torch.tensor([c[2] for c in cells], dtype=torch.long).repeat_interleave(B)
    if kind == "head":
        head = torch.tensor([c[1] for c in cells], dtype=torch.long).repeat_interleave(B)

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        d = act.device
        r, b = rows.to(d), brow.to(d)
        if kind == "pos":
            p = pos.to(d)
            act[r, p] = clean[b, p].to(act.dtype)
        elif kind == "pos_head":
            p, h = pos.to(d), head.to(d)
            act[r, p, h] = clean[b, p, h].to(act.dtype)
        else:
            h = head.to(d)
            act[r, :, h] = clean[b, :, h].to(act.dtype)
        return act
    return hook


def _names_filter(activation_name: str, layers: Sequence[int]) -> Callable[[str], bool]:
    names = {_act_name(activation_name, ly) for ly in layers}
    return lambda n: n in names


def _sweep(kind: str, name: str | None = None) -> Callable[..., torch.Tensor]:
    activation_name, axes = _KINDS[kind]

    def fn(model: Model, corrupted_tokens: Int[torch.Tensor, "batch pos"], clean_cache: Any,
           patching_metric: Callable[[torch.Tensor], torch.Tensor], *,
           layers: Sequence[int] | None = None, attention_mask: torch.Tensor | None = None,
           max_tokens: int = 8192, reduce: str = "scalar", progress: bool = True
           ) -> torch.Tensor:
        return batched_activation_patch(model, corrupted_tokens, clean_cache, patching_metric,
                                        activation_name, axes, layers=layers,
                                        attention_mask=attention_mask, max_tokens=max_tokens,
                                        reduce=reduce, progress=progress)
    shape = {("layer", "pos"): "[n_layers, pos]", ("layer", "head"): "[n_layers, n_heads]",
             ("layer", "pos", "head"): "[n_layers, pos, n_heads]"}[axes]
    fn.__name__ = name or f"patch_{kind}"
    fn.__qualname__ = fn.__name__
    fn.__doc__ = (f"Batched equivalent of ``transformer_lens.patching.get_act_patch_"
                  f"{_TL_NAMES[kind]}``: patch ``{activation_name}`` per cell; returns {shape}. "
                  "See ``batched_activation_patch`` for the arguments.")
    return fn


_TL_NAMES = {"resid_pre": "resid_pre", "resid_mid": "resid_mid", "resid_post": "resid_post",
             "attn_out": "attn_out", "mlp_out": "mlp_out", "head_out": "attn_head_out_all_pos",
             "head_out_by_pos": "attn_head_out_by_pos",
             **{f"head_{a}": f"attn_head_{a}_all_pos" for a in "qkv"},
             **{f"head_{a}_by_pos": f"attn_head_{a}_by_pos" for a in "qkv"}}

patch_resid_pre = _sweep("resid_pre")
patch_resid_mid = _sweep("resid_mid")
patch_attn_out = _sweep("attn_out")
patch_mlp_out = _sweep("mlp_out")
patch_head_out = _sweep("head_out")
patch_head_out_by_pos = _sweep("head_out_by_pos")

# ---------------------------------------------------------------- TransformerLens's names
# The same functions under the names of ``transformer_lens.patching``, with its first four
# positional arguments (model, corrupted_tokens, clean_cache, patching_metric); the rest are
# keywords (``layers``, ``attention_mask``, ``max_tokens``, ``reduce``, ``progress``).
# ``reduce="none"`` returns the per-example tensor (TransformerLens returns a PatchingResult).
get_act_patch_resid_pre = patch_resid_pre
get_act_patch_resid_mid = patch_resid_mid
get_act_patch_attn_out = patch_attn_out
get_act_patch_mlp_out = patch_mlp_out
get_act_patch_attn_head_out_all_pos = patch_head_out
get_act_patch_attn_head_out_by_pos = patch_head_out_by_pos
get_act_patch_attn_head_q_all_pos = _sweep("head_q", "get_act_patch_attn_head_q_all_pos")
get_act_patch_attn_head_k_all_pos = _sweep("head_k", "get_act_patch_attn_head_k_all_pos")
get_act_patch_attn_head_v_all_pos = _sweep("head_v", "get_act_patch_attn_head_v_all_pos")
get_act_patch_attn_head_q_by_pos = _sweep("head_q_by_pos", "get_act_patch_attn_head_q_by_pos")
get_act_patch_attn_head_k_by_pos = _sweep("head_k_by_pos", "get_act_patch_attn_head_k_by_pos")
get_act_patch_attn_head_v_by_pos = _sweep("head_v_by_pos", "get_act_patch_attn_head_v_by_pos")


def get_act_patch_block_every(model: Model, corrupted_tokens: Int[torch.Tensor, "batch pos"],
                              clean_cache: Any,
                              metric: Callable[[Float[torch.Tensor, "batch pos d_vocab"]],
                                               Float[torch.Tensor, "*b"]],
                              **kwargs: Any) -> Float[torch.Tensor, "3 layer pos"]:
    """Batched ``transformer_lens.patching.get_act_patch_block_every``: ``resid_pre``,
    ``attn_out`` and ``mlp_out`` maps stacked, ``[3, n_layers, pos]``; ``kwargs`` as for
    ``patch_resid_pre``."""
    return torch.stack([f(model, corrupted_tokens, clean_cache, metric, **kwargs)
                        for f in (patch_resid_pre, patch_attn_out, patch_mlp_out)])


TL_ALIASES = (
    "get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out",
    "get_act_patch_mlp_out", "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_q_by_pos", "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_by_pos", "get_act_patch_block_every",
)


# --------------------------------------------------------------------------- high-level map
@dataclass
class PatchingMap:
    """A patching map with its context: ``values`` (the metric per cell), the clean and
    corrupted metric (``clean_value``, ``corrupted_value``), axes and token labels.

    ``normalized()`` is ``(value - corrupted) / (clean - corrupted)``: 0 = the patch did
    nothing, 1 = it restored the clean metric. A map says where (layer, position, head) the
    information that distinguishes the clean from the corrupted prompt is carried for this
    metric; it does not say what that information is, nor that other prompts use the same place.
    """

    values: Float[torch.Tensor, "*cells"]
    kind: str
    axes: tuple[str, ...]
    layers: list[int]
    clean_value: float
    corrupted_value: float
    tokens: list[str] = field(default_factory=list)
    metric_name: str = "metric"

    def normalized(self) -> Float[torch.Tensor, "*cells"]:
        den = self.clean_value - self.corrupted_value
        if abs(den) < 1e-8:
            raise CausalityError("clean and corrupted metrics are equal; nothing to normalise by")
        return (self.values - self.corrupted_value) / den

    def to_frame(self) -> pd.DataFrame:
        rows = []
        grid = itertools.product(*[range(s) for s in self.values.shape])
        for idx in grid:
            row: dict[str, Any] = {}
            for a, i in zip(self.axes, idx):
                row[a] = self.layers[i] if a == "layer" else i
            if "pos" in row and self.tokens:
                row["token"] = self.tokens[row["pos"]]
            row["value"] = float(self.values[idx])
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        flat = self.values.flatten()
        best = int(flat.abs().argmax()) if flat.numel() else 0
        idx = list(torch.unravel_index(torch.tensor(best), self.values.shape))
        cell = {a: (self.layers[int(i)] if a == "layer" else int(i)) for a, i in zip(self.axes, idx)}
        try:
            norm = self.normalized()
            frac = float(norm.flatten()[best])
        except CausalityError:
            frac = None
        return {"kind": self.kind, "axes": list(self.axes), "metric": self.metric_name,
                "clean_value": self.clean_value, "corrupted_value": self.corrupted_value,
                "shape": list(self.values.shape), "strongest_cell": cell,
                "strongest_value": float(flat[best]), "strongest_recovery": frac}

    def _repr_html_(self) -> str:
        s = self.summary()
        return (f"<div><b>PatchingMap</b> {html.escape(self.kind)} {s['shape']} over "
                f"{html.escape(', '.join(self.axes))}; metric {html.escape(self.metric_name)}: "
                f"clean {self.clean_value:.3f}, corrupted {self.corrupted_value:.3f}; strongest "
                f"cell {html.escape(str(s['strongest_cell']))} = {s['strongest_value']:.3f}</div>")


def patching_map(model: Model, clean: Any, corrupted: Any,
                 metric: Callable[[Float[torch.Tensor, "batch pos d_vocab"]], Float[torch.Tensor, "*b"]],
                 *, kind: str = "resid_pre",
                 layers: Sequence[int] | None = None, max_tokens: int = 8192,
                 progress: bool = True) -> PatchingMap:
    """Tokenise a clean/corrupted prompt pair (same token length), cache the clean run and
    compute a batched patching map of ``kind`` (``resid_pre``, ``resid_mid``, ``attn_out``,
    ``mlp_out``, ``head_out``, ``head_out_by_pos``, ``head_q``/``head_k``/``head_v`` and their
    ``_by_pos`` forms). ``metric(logits) -> scalar``. Draw the result with
    ``emolens.views.plot_patching_map(m.normalized(), m.layers, tokens=m.tokens)``."""
    from emolens.causality._common import as_batch

    if kind not in _KINDS:
        raise CausalityError(f"kind {kind!r} is not one of {sorted(_KINDS)}")
    cb, xb = as_batch(model, clean), as_batch(model, corrupted)
    if cb.tokens.shape != xb.tokens.shape or not torch.equal(cb.attention_mask, xb.attention_mask):
        raise CausalityError(
            f"clean {tuple(cb.tokens.shape)} and corrupted {tuple(xb.tokens.shape)} prompts must "
            "have the same token length (and padding) to be patched position by position; "
            "reword one so both tokenise to the same length")
    activation_name, axes = _KINDS[kind]
    lay = list(layers) if layers is not None else list(range(int(model.cfg.n_layers)))
    dev = model_device(model)
    mask = None if bool(cb.attention_mask.all()) else cb.attention_mask
    kw = {} if mask is None else {"attention_mask": mask.to(dev)}
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(
            cb.tokens.to(dev), names_filter=_names_filter(activation_name, lay), **kw)
        corrupted_logits = model(xb.tokens.to(dev), **kw)
    values = batched_activation_patch(model, xb.tokens, cache, metric, activation_name, axes,
                                      layers=lay, attention_mask=mask, max_tokens=max_tokens,
                                      progress=progress)
    toks = xb.str_tokens(model)[0] if len(xb) == 1 else []
    return PatchingMap(values, kind, axes, lay, float(metric(clean_logits)),
                       float(metric(corrupted_logits)), toks,
                       getattr(metric, "__name__", "metric"))

