"""The one position vocabulary: which token positions of a batch an operation uses.

Every stage names positions with the words below and builds masks with ``position_mask``:
extraction and ``evaluate`` (the per-text mean runs over the selected positions; the name is
recorded in the registry), the causality tools (patching, metrics, attribution) and the
readouts. Steering uses the same indices and masks and adds the generation-time names of
``GENERATION_NAMES`` (its hooks run inside ``generate``, where "prompt" and "generated" exist;
``emolens.steering.positions`` applies them at each decode step, with and without a KV cache).

Names (``NAMES``, for a tokenized batch; "real" = not padding):

- ``"content"``: every real token except the first (the attention sink, whose huge norm in
  middle layers wipes out the emotion signal: 6-way accuracy at layer 14 of SmolLM2-135M falls
  from about 0.80 to 0.26 when it is included). The default of extraction and ``evaluate``.
- ``"all"``: every real token, sink included.
- ``"last"``: the last real token of each row.
- ``"reply"``: the token that opens the assistant's reply (chat input: the last prompt token,
  ``TokenizedBatch.reply_pos``). Plain text has no reply, so ``"reply"`` on a plain-text row is an
  ``InputError``; it never silently means another token.
- ``"reply_or_last"``: the explicit fallback rule: the reply-opening token for chat rows, the last
  real token for plain-text rows (the default of the causality metrics and patching, which take
  chats and plain prompts alike).
- ``"from:k"`` (``k >= 1``): real tokens at index ``k`` or later, counted from the first real
  token (``"from:50"`` averages from the 50th token on); a shorter row selects nothing.

Besides names, ``position_mask`` takes an int or a list of ints (the k-th real token of each row,
counted from the row's first real token so left padding does not shift it; negative counts back
from the row's last real token), a ``[batch]`` integer tensor (one absolute column per row) or a
``[batch, pos]`` boolean mask (restricted to real tokens).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Int

from emolens.errors import InputError, unknown_name_message
from emolens.tokens import TokenizedBatch

PositionSpec = str | int | Sequence[int] | torch.Tensor

NAMES: dict[str, str] = {
    "content": "every real token except the first (attention sink) and padding",
    "all": "every real token, sink included",
    "last": "the last real token of each row",
    "reply": "the token that opens the assistant's reply (chat input only; plain text raises)",
    "reply_or_last": "the reply-opening token for chat rows, the last real token for plain text",
    "from:k": "real tokens at index k >= 1 or later, counted from the first real token",
}

# Names that exist only while generating (steering hooks); indices and masks as above.
GENERATION_NAMES: dict[str, str] = {
    "all": "every real token of every forward: the prompt and each generated token",
    "prompt": "the prompt's tokens only",
    "generated": "the generated tokens only",
}

# extraction's recorded policies (strings only: they go into the registry)
POLICIES = tuple(NAMES)


def validate_name(name: object) -> str:
    """``name`` if it is one of ``NAMES`` (``"from:k"`` with an integer ``k >= 1``), else an
    ``InputError`` naming it and the valid names."""
    if isinstance(name, str):
        if name in NAMES and name != "from:k":
            return name
        if name.startswith("from:"):
            try:
                k = int(name.split(":", 1)[1])
            except ValueError:
                k = 0
            if k >= 1:
                return name
            raise InputError(f"unknown position policy {name!r}: 'from:K' needs an integer K >= 1 "
                             "(e.g. 'from:50'); 'from:0' is 'all'")
    raise InputError(unknown_name_message(
        "position policy", name, [*NAMES, "from:50"],
        "names are defined in emolens.positions.NAMES"))


def last_index(batch: TokenizedBatch) -> Int[torch.Tensor, " batch"]:
    """Column of each row's last real token."""
    width = batch.tokens.shape[1]
    flipped = batch.attention_mask.flip(-1).int().argmax(-1)
    return (width - 1 - flipped).long()


def reply_index(batch: TokenizedBatch) -> Int[torch.Tensor, " batch"]:
    """Column of each row's reply-opening token; ``InputError`` when a row is plain text."""
    if (batch.reply_pos < 0).any():
        bad = int((batch.reply_pos < 0).nonzero()[0, 0])
        raise InputError(f"positions 'reply' needs chat input, but input {bad} is plain text; "
                         "pass chat messages, or use 'reply_or_last' (the last token of plain "
                         "text), 'last' or 'content'")
    return batch.reply_pos.long()


def reply_or_last(batch: TokenizedBatch) -> Int[torch.Tensor, " batch"]:
    """The reply-opening token for chat rows, else the last real token (``"reply_or_last"``)."""
    return torch.where(batch.reply_pos >= 0, batch.reply_pos, last_index(batch)).long()


def position_mask(batch: TokenizedBatch, spec: PositionSpec = "content"
                  ) -> Bool[torch.Tensor, "batch pos"]:
    """``[batch, pos]`` boolean mask of the positions ``spec`` selects (real tokens only).

    ``spec``: a name of ``NAMES`` (see the module docstring), an int or list of ints, a
    ``[batch]`` integer tensor or a ``[batch, pos]`` boolean mask. Raises ``InputError`` naming a
    bad value.
    """
    n, width = batch.tokens.shape
    rows = torch.arange(n)
    real = batch.attention_mask.bool()
    if isinstance(spec, str):
        name = validate_name(spec)
        if name == "content":
            return batch.content_mask.clone()
        if name == "all":
            return real.clone()
        mask = torch.zeros(n, width, dtype=torch.bool)
        if name in ("last", "reply", "reply_or_last"):
            index = {"last": last_index, "reply": reply_index, "reply_or_last": reply_or_last}[name]
            mask[rows, index(batch)] = True
            return mask
        k = int(name.split(":", 1)[1])
        return real & (real.long().cumsum(-1) - 1 >= k)
    if isinstance(spec, bool):
        raise InputError(f"positions={spec!r} is not valid: pass a name ({', '.join(NAMES)}), "
                         "ints, a [batch] index tensor or a [batch, pos] mask")
    mask = torch.zeros(n, width, dtype=torch.bool)
    if isinstance(spec, torch.Tensor):
        if spec.dtype == torch.bool:
            if tuple(spec.shape) != (n, width):
                raise InputError(f"position mask has shape {tuple(spec.shape)}, the batch is "
                                 f"{(n, width)}; pass a [batch, pos] mask matching the batch")
            return spec.cpu() & real
        if spec.is_floating_point():
            raise InputError(f"a positions tensor must be integer or boolean, got {spec.dtype}")
        if spec.ndim == 1 and spec.numel() == n:
            idx = spec.long().cpu()
            if (idx < 0).any() or (idx >= width).any():
                raise InputError(f"position indices {idx.tolist()} fall outside 0..{width - 1}; "
                                 "a [batch] tensor holds one absolute column per row")
            mask[rows, idx] = True
            return mask & real
        spec = [int(v) for v in spec.flatten().tolist()]
    values = [spec] if isinstance(spec, int) else list(spec)
    if not values:
        raise InputError("positions=[] selects no token; pass at least one index or a name")
    lengths = batch.lengths
    first = batch.first_pos
    for k in values:
        if isinstance(k, bool) or not isinstance(k, int):
            raise InputError(f"position {k!r} ({type(k).__name__}) is not an int")
        for r in range(n):
            ln = int(lengths[r])
            j = k if k >= 0 else ln + k
            if not 0 <= j < ln:
                raise InputError(f"position {k} does not exist in row {r} ({ln} tokens); "
                                 "use an index within every row")
            mask[r, int(first[r]) + j] = True
    return mask


__all__ = ["GENERATION_NAMES", "NAMES", "POLICIES", "PositionSpec", "last_index", "position_mask",
           "reply_index", "reply_or_last", "validate_name"]
