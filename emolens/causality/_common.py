"""Helpers shared by the causality modules: inputs, positions, token ids, a hooked forward.

Batching, progress bars and the model's device come from ``emolens.runtime``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Int

from emolens.errors import CausalityError, InputError
from emolens.runtime import model_device
from emolens.tokens import TokenizedBatch, to_inputs

PositionSpec = str | int | Sequence[int] | torch.Tensor
TokenSpec = str | int | Sequence[str | int] | torch.Tensor


def as_batch(model: Any, inputs: Any, *, padding_side: str = "right") -> TokenizedBatch:
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


def slice_batch(batch: TokenizedBatch, idx: slice | torch.Tensor) -> TokenizedBatch:
    """Rows ``idx`` of a batch (no re-padding)."""
    texts = batch.texts[idx] if isinstance(idx, slice) else [batch.texts[int(i)] for i in idx]
    return TokenizedBatch(batch.tokens[idx], batch.attention_mask[idx], batch.content_mask[idx],
                          batch.reply_pos[idx], texts, batch.padding_side)


def last_pos(batch: TokenizedBatch) -> Int[torch.Tensor, " batch"]:
    """Index of each row's last real token."""
    width = batch.tokens.shape[1]
    flipped = batch.attention_mask.flip(-1).int().argmax(-1)
    return (width - 1 - flipped).long()


def reply_or_last(batch: TokenizedBatch) -> Int[torch.Tensor, " batch"]:
    """The reply-opening token for chat rows, else the last real token."""
    last = last_pos(batch)
    return torch.where(batch.reply_pos >= 0, batch.reply_pos, last)


def position_mask(batch: TokenizedBatch, spec: PositionSpec) -> Bool[torch.Tensor, "batch pos"]:
    """A ``[batch, pos]`` boolean mask of the positions ``spec`` names, real tokens only.

    ``spec``: ``"reply"`` (reply-opening token, or last token for plain text), ``"last"``,
    ``"all"`` (every real token), ``"content"`` (real tokens except the attention sink), an int
    or list of ints (k-th real token of each row; negative counts from the row's end), a
    ``[batch]`` integer tensor (one absolute index per row) or a ``[batch, pos]`` boolean mask.
    """
    n, width = batch.tokens.shape
    mask = torch.zeros(n, width, dtype=torch.bool)
    rows = torch.arange(n)
    real = batch.attention_mask.bool()
    if isinstance(spec, str):
        if spec == "reply":
            mask[rows, reply_or_last(batch)] = True
        elif spec == "last":
            mask[rows, last_pos(batch)] = True
        elif spec == "all":
            mask = real.clone()
        elif spec == "content":
            mask = batch.content_mask.clone()
        else:
            raise CausalityError(f"positions {spec!r} is not one of 'reply', 'last', 'all', "
                                 "'content'; or pass ints, a [batch] index tensor or a mask")
        return mask
    if isinstance(spec, torch.Tensor):
        if spec.dtype == torch.bool:
            if tuple(spec.shape) != (n, width):
                raise CausalityError(f"position mask has shape {tuple(spec.shape)}, the batch is "
                                     f"{(n, width)}")
            return spec.cpu() & real
        if spec.ndim == 1 and spec.numel() == n:
            idx = spec.long().cpu()
            if (idx < 0).any() or (idx >= width).any():
                raise CausalityError(f"position indices {idx.tolist()} fall outside 0..{width - 1}")
            mask[rows, idx] = True
            return mask & real
        spec = [int(v) for v in spec.flatten().tolist()]
    if isinstance(spec, int):
        spec = [spec]
    lengths = batch.lengths
    first = batch.first_pos
    for k in spec:
        for r in range(n):
            ln = int(lengths[r])
            j = k if k >= 0 else ln + k
            if not 0 <= j < ln:
                raise CausalityError(f"position {k} does not exist in row {r} ({ln} tokens); "
                                     "use an index within every row")
            mask[r, int(first[r]) + j] = True
    return mask


def paired_positions(source: TokenizedBatch, target: TokenizedBatch, spec: PositionSpec
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
                "target tokens; use 'reply'/'last'/ints for pairs of different lengths, or "
                "token-aligned prompts")
        if t_idx.numel() == 0:
            raise CausalityError(f"pair {r}: positions {spec!r} select no token")
        rows.append(torch.full_like(t_idx, r))
        tpos.append(t_idx)
        spos.append(s_idx)
    return torch.cat(rows), torch.cat(tpos), torch.cat(spos)


def token_id(model: Any, tok: str | int) -> int:
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


def token_ids(model: Any, spec: TokenSpec) -> list[int]:
    """Token ids of a string/id or a list of them (a set of alternatives)."""
    if isinstance(spec, (str, int)):
        return [token_id(model, spec)]
    if isinstance(spec, torch.Tensor):
        return [token_id(model, int(v)) for v in spec.flatten().tolist()]
    out = [token_id(model, t) for t in spec]
    if not out:
        raise InputError("an empty list of tokens was given; pass at least one")
    return out


def forward(model: Any, batch: TokenizedBatch, fwd_hooks: list[tuple[str, Any]] | None = None
            ) -> torch.Tensor:
    """Logits of ``batch`` (on the CPU) with temporary forward hooks, under ``no_grad``."""
    dev = model_device(model)
    kwargs = {k: v.to(dev) for k, v in batch.forward_kwargs().items()}
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks or []):
        logits = model(batch.tokens.to(dev), **kwargs)
    return logits
