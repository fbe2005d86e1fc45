"""Helpers shared by the causality modules: inputs, paired positions, token ids, a hooked forward.

Position names and masks come from ``emolens.positions`` (the one vocabulary); batching, progress
bars and the model's device from ``emolens.runtime``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from emolens.errors import CausalityError, InputError
from emolens.positions import PositionSpec, position_mask
from emolens.runtime import model_device
from emolens.tokens import TokenizedBatch, to_inputs

if TYPE_CHECKING:
    from emolens.compat import Model

TokenSpec = str | int | Sequence[str | int] | torch.Tensor


def as_batch(model: Model, inputs: Any, *, padding_side: str = "right") -> TokenizedBatch:
    """A ``TokenizedBatch`` from a batch, a ``[batch, pos]`` token tensor, or texts/chats."""
    if isinstance(inputs, TokenizedBatch):
        return inputs
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim == 1:
            inputs = inputs[None]
        if inputs.ndim != 2 or inputs.is_floating_point():
            raise InputError(f"token tensor must be integer [batch, pos], got {tuple(inputs.shape)} "
                             f"{inputs.dtype}")
        n, p = inputs.shape
        mask = torch.ones(n, p, dtype=torch.long)
        content = mask.bool().clone()
        content[:, 0] = False
        return TokenizedBatch(inputs.long().cpu(), mask, content,
                              torch.full((n,), p - 1, dtype=torch.long),
                              ["<tokens>"] * n, "right")
    return to_inputs(model, inputs, padding_side=padding_side)


def slice_batch(batch: TokenizedBatch, idx: slice | Int[torch.Tensor, " rows"]) -> TokenizedBatch:
    """Rows ``idx`` of a batch (no re-padding)."""
    texts = batch.texts[idx] if isinstance(idx, slice) else [batch.texts[int(i)] for i in idx]
    return TokenizedBatch(batch.tokens[idx], batch.attention_mask[idx], batch.content_mask[idx],
                          batch.reply_pos[idx], texts, batch.padding_side)


def paired_positions(source: TokenizedBatch, target: TokenizedBatch, spec: PositionSpec
                     ) -> tuple[Int[torch.Tensor, " pair"], Int[torch.Tensor, " pair"],
                                Int[torch.Tensor, " pair"]]:
    """Matched (row, target position, source position) triples for a position spec.

    Each row's selected positions are paired in order; both rows must select the same number.
    """
    tm = position_mask(target, spec)
    sm = position_mask(source, spec)
    rows, tpos, spos = [], [], []
    for r in range(len(target)):
        t_idx = tm[r].nonzero().flatten()
        s_idx = sm[r].nonzero().flatten()
        if t_idx.numel() != s_idx.numel():
            raise CausalityError(
                f"pair {r}: positions {spec!r} select {s_idx.numel()} source and {t_idx.numel()} "
                "target tokens; use 'reply_or_last'/'last'/ints for pairs of different lengths, or "
                "token-aligned prompts")
        if t_idx.numel() == 0:
            raise CausalityError(f"pair {r}: positions {spec!r} select no token")
        rows.append(torch.full_like(t_idx, r))
        tpos.append(t_idx)
        spos.append(s_idx)
    return torch.cat(rows), torch.cat(tpos), torch.cat(spos)


def token_id(model: Model, tok: str | int) -> int:
    """One token id from an id or a string that encodes to exactly one token."""
    if isinstance(tok, bool):
        raise InputError(f"token must be a string or an id, got {tok!r}")
    if isinstance(tok, int):
        if not 0 <= tok < int(model.cfg.d_vocab):
            raise InputError(f"token id {tok} is outside the vocabulary (0..{model.cfg.d_vocab - 1})")
        return tok
    ids = model.tokenizer.encode(tok, add_special_tokens=False)
    if len(ids) != 1:
        raise InputError(f"{tok!r} encodes to {len(ids)} tokens {ids}; give a string that is one "
                         "token (try with or without a leading space) or a token id")
    return int(ids[0])


def token_ids(model: Model, spec: TokenSpec) -> list[int]:
    """Token ids of a string/id or a list of them (a set of alternatives)."""
    if isinstance(spec, (str, int)):
        return [token_id(model, spec)]
    if isinstance(spec, torch.Tensor):
        return [token_id(model, int(v)) for v in spec.flatten().tolist()]
    out = [token_id(model, t) for t in spec]
    if not out:
        raise InputError("an empty list of tokens was given; pass at least one")
    return out


def forward(model: Model, batch: TokenizedBatch, fwd_hooks: list[tuple[str, Any]] | None = None
            ) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Logits of ``batch`` (on the CPU) with temporary forward hooks, under ``no_grad``."""
    dev = model_device(model)
    kwargs = {k: v.to(dev) for k, v in batch.forward_kwargs().items()}
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks or []):
        logits = model(batch.tokens.to(dev), **kwargs)
    return logits
