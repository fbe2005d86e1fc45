"""Which token positions a steering hook touches, exactly, at every decode step.

A hook on ``blocks.{l}.hook_resid_post`` sees ``[batch, n, d_model]``. Without a KV cache every
generation step re-runs the whole sequence (``n`` = prompt + tokens so far); with the cache the
first step runs the prompt and every later step one new position (``n = 1``). To give "prompt",
"generated", explicit indices and masks one meaning in both cases, a ``PositionTracker`` watches
each forward call of the model's inner module (``model.original_model`` on a
``TransformerBridge``; the model itself otherwise) through a removable PyTorch forward pre-hook:
it reads the input ids, the cache length (``past_key_values``) and the attention mask, and turns
them into absolute *columns*.

The names are those of ``emolens.positions.GENERATION_NAMES`` (the one position vocabulary);
integer indices and boolean masks mean what they mean there (indices count from each row's first
real token, negative ones back from the end of the prompt).

Conventions (see docs/steering.md):

- column: index into the padded sequence the model sees (prompt columns, pads included, then one
  column per generated token). With the cache a step of ``n`` positions covers columns
  ``past .. past + n - 1``; without it, columns ``0 .. n - 1``.
- prompt length: the width of the first forward of a sequence. A full forward whose ids extend
  the previous forward's ids by exactly one token (what ``generate`` does without a cache) is the
  next decode step of the same sequence; any other full forward starts a new sequence.
- relative position: ``cumsum(attention_mask) - 1``, i.e. counted from each row's first real
  token, so left padding does not shift it. Without a mask, relative position = column.
- pads (attention mask 0) are never modified, whatever the policy.

Rows: ``parse_rows`` validates a ``Steering``'s ``rows=`` (batch-row indices or a boolean
``[batch]`` mask); ``row_index`` checks them against the batch the model runs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Int, Shaped

from emolens.errors import SteeringError
from emolens.positions import GENERATION_NAMES, NAMES

if TYPE_CHECKING:
    from emolens.compat import Model

POSITION_NAMES = tuple(GENERATION_NAMES)


@dataclass(frozen=True)
class PositionPolicy:
    """A validated position rule: ``kind`` in all | prompt | generated | indices | mask."""

    kind: str
    indices: tuple[int, ...] = ()
    mask: Bool[torch.Tensor, "*batch pos"] | None = None

    def describe(self) -> str | list[int] | dict[str, Any]:
        if self.kind == "indices":
            return list(self.indices)
        if self.kind == "mask":
            assert self.mask is not None
            return {"mask_shape": list(self.mask.shape), "n_true": int(self.mask.sum())}
        return self.kind


def parse_positions(positions: Any) -> PositionPolicy:
    """Validate a ``positions`` argument; raise ``SteeringError`` naming a bad value."""
    if isinstance(positions, PositionPolicy):
        return positions
    if isinstance(positions, str):
        if positions not in POSITION_NAMES:
            from emolens.errors import unknown_name_message

            if positions in NAMES or positions.startswith("from:"):
                raise SteeringError(
                    f"positions={positions!r} names positions of a finished batch (extraction, "
                    "readouts, causality); a steering hook runs while the model generates and "
                    f"takes {', '.join(map(repr, POSITION_NAMES))}, a list of token indices "
                    "(-1 = the last prompt token) or a boolean mask [batch, pos]")
            raise SteeringError(unknown_name_message(
                "positions", positions, POSITION_NAMES,
                "or pass a list of token indices or a boolean mask [batch, pos]"))
        return PositionPolicy(positions)
    if isinstance(positions, torch.Tensor):
        if positions.dtype != torch.bool:
            if positions.ndim == 1 and not positions.is_floating_point():
                return _indices(positions.tolist())
            raise SteeringError(
                f"a positions tensor must be a boolean mask [batch, pos] (or [pos]), got dtype "
                f"{positions.dtype} with shape {tuple(positions.shape)}; use mask.bool(), or a "
                "list of int indices")
        if positions.ndim not in (1, 2):
            raise SteeringError(f"a positions mask must be [batch, pos] or [pos], got shape "
                                f"{tuple(positions.shape)}")
        return PositionPolicy("mask", mask=positions.detach())
    if isinstance(positions, bool):
        raise SteeringError(f"positions={positions!r} is not valid: use 'all', 'prompt', "
                            "'generated', a list of int indices or a boolean mask")
    if isinstance(positions, int):
        return _indices([positions])
    if isinstance(positions, Sequence):
        return _indices(list(positions))
    raise SteeringError(
        f"cannot use positions={positions!r} ({type(positions).__name__}): pass 'all', "
        "'prompt', 'generated', a list of int token indices, or a boolean mask [batch, pos]")


def _indices(values: list[Any]) -> PositionPolicy:
    if not values:
        raise SteeringError("positions=[] selects no token; pass at least one index or 'all'")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise SteeringError(
                f"position index {v!r} ({type(v).__name__}) is not an int; indices count from "
                "each row's first real token (0, 1, ...) or back from the end of the prompt "
                "(-1 = last prompt token)")
    return PositionPolicy("indices", tuple(int(v) for v in values))


@dataclass
class ForwardInfo:
    """What one forward call covers: ``n`` positions starting at column ``offset``."""

    batch: int
    n: int
    offset: int
    prompt_len: int
    attention_mask: Shaped[torch.Tensor, "batch cols"] | None  # every column so far, or None
    _cache: dict[Any, Any] = field(default_factory=dict)

    def _padded(self) -> bool:
        key = "padded"
        if key not in self._cache:
            am = self.attention_mask
            self._cache[key] = am is not None and not bool(am.all())
        return bool(self._cache[key])

    def real(self, device: torch.device) -> Bool[torch.Tensor, "batch n"] | None:
        """``[batch, n]`` True at real tokens, or None when nothing is padding."""
        if not self._padded():
            return None
        key = ("real", device)
        if key not in self._cache:
            assert self.attention_mask is not None
            self._cache[key] = self.attention_mask[:, self.offset:].bool().to(device)
        return self._cache[key]  # type: ignore[no-any-return]

    def columns(self, device: torch.device) -> Int[torch.Tensor, " n"]:
        key = ("cols", device)
        if key not in self._cache:
            self._cache[key] = torch.arange(self.offset, self.offset + self.n, device=device)
        return self._cache[key]  # type: ignore[no-any-return]

    def relative(self, device: torch.device) -> Int[torch.Tensor, "batch n"]:
        """``[batch, n]`` position of each column counted from the row's first real token."""
        key = ("rel", device)
        if key not in self._cache:
            if self._padded():
                assert self.attention_mask is not None
                am = self.attention_mask.long()
                rel = (am.cumsum(-1) - 1)[:, self.offset:]
            else:
                rel = self.columns(device)[None].expand(self.batch, self.n)
            self._cache[key] = rel.to(device)
        return self._cache[key]  # type: ignore[no-any-return]

    def prompt_real(self, device: torch.device) -> Int[torch.Tensor, " batch"]:
        """``[batch]`` number of real tokens among the prompt columns of each row."""
        key = ("preal", device)
        if key not in self._cache:
            am = self.attention_mask
            if self._padded() and am is not None and am.shape[1] >= self.prompt_len:
                val = am[:, :self.prompt_len].long().sum(-1)
            else:
                val = torch.full((self.batch,), self.prompt_len, dtype=torch.long)
            self._cache[key] = val.to(device)
        return self._cache[key]  # type: ignore[no-any-return]

    def select(self, policy: PositionPolicy, device: torch.device
               ) -> Bool[torch.Tensor, "batch n"] | bool | None:
        """Selection for ``policy``: None = every position, False = none, else Bool [batch, n]."""
        key = ("sel", id(policy), device)
        if key in self._cache:
            return self._cache[key]  # type: ignore[no-any-return]
        sel = self._select(policy, device)
        self._cache[key] = sel
        return sel

    def _select(self, policy: PositionPolicy, device: torch.device) -> torch.Tensor | bool | None:
        real = self.real(device)
        kind = policy.kind
        if kind == "all":
            return real
        if kind in ("prompt", "generated"):
            lo, hi = self.offset, self.offset + self.n
            in_prompt_all = hi <= self.prompt_len
            in_prompt_none = lo >= self.prompt_len
            if (kind == "prompt" and in_prompt_none) or (kind == "generated" and in_prompt_all):
                return False
            if (kind == "prompt" and in_prompt_all) or (kind == "generated" and in_prompt_none):
                return real
            cols = self.columns(device)
            base = cols < self.prompt_len if kind == "prompt" else cols >= self.prompt_len
            sel = base[None].expand(self.batch, self.n)
            return sel if real is None else sel & real
        if kind == "indices":
            rel = self.relative(device)
            sel = torch.zeros(self.batch, self.n, dtype=torch.bool, device=device)
            preal = None
            for i in policy.indices:
                if i >= 0:
                    sel |= rel == i
                else:
                    if preal is None:
                        preal = self.prompt_real(device)
                    sel |= rel == (preal + i)[:, None]
            if real is not None:
                sel &= real
            return sel if bool(sel.any()) else False
        if kind == "mask":
            mask = policy.mask
            assert mask is not None
            if mask.ndim == 1:
                mask = mask[None].expand(self.batch, -1)
            if mask.shape[0] != self.batch:
                raise SteeringError(
                    f"the positions mask has batch size {mask.shape[0]} but the model runs a batch "
                    f"of {self.batch}; pass a mask [batch, pos] matching the input (or a 1-D [pos] "
                    "mask for every row)")
            lo, hi = self.offset, min(self.offset + self.n, mask.shape[1])
            sel = torch.zeros(self.batch, self.n, dtype=torch.bool, device=device)
            if hi > lo:
                sel[:, : hi - lo] = mask[:, lo:hi].to(device)
            if real is not None:
                sel &= real
            return sel if bool(sel.any()) else False
        raise SteeringError(f"unknown position policy {kind!r}")  # pragma: no cover


# ---------------------------------------------------------------------------- batch rows
def parse_rows(rows: Any) -> tuple[int, ...] | Bool[torch.Tensor, " batch"] | None:
    """Validate a ``rows`` argument: None (every row), batch-row indices (an int, a sequence of
    ints >= 0, a 1-D int tensor) or a boolean ``[batch]`` mask. Whether the indices fit the batch
    is checked when the model runs (``row_index``)."""
    if rows is None:
        return None
    if isinstance(rows, torch.Tensor):
        if rows.ndim != 1:
            raise SteeringError(f"a rows tensor must be 1-D (a boolean [batch] mask or row "
                                f"indices), got shape {tuple(rows.shape)}")
        if rows.dtype == torch.bool:
            return rows.detach().cpu()
        if rows.is_floating_point() or rows.is_complex():
            raise SteeringError(f"a rows tensor must be a boolean [batch] mask or int row indices, "
                                f"got dtype {rows.dtype}")
        rows = rows.tolist()
    elif isinstance(rows, bool):
        raise SteeringError(f"rows={rows!r} is not valid: pass None (every row), a list of batch-row "
                            "indices or a boolean [batch] mask")
    elif isinstance(rows, int):
        rows = [rows]
    elif not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise SteeringError(f"cannot use rows={rows!r} ({type(rows).__name__}): pass None (every "
                            "row), a list of batch-row indices or a boolean [batch] mask")
    values = list(rows)
    if not values:
        raise SteeringError("rows=[] selects no row; pass at least one batch-row index or None "
                            "(every row)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise SteeringError(f"row index {v!r} ({type(v).__name__}) is not an int; rows are "
                                "indices into the batch (0 = first row)")
        if v < 0:
            raise SteeringError(f"row index {v} is negative; rows are indices into the batch "
                                "counted from 0")
    return tuple(sorted({int(v) for v in values}))


def row_index(rows: tuple[int, ...] | Bool[torch.Tensor, " mask"], batch: int,
              device: torch.device) -> Int[torch.Tensor, " rows"]:
    """``rows`` as a sorted ``LongTensor`` of batch-row indices for a batch of ``batch`` rows;
    ``SteeringError`` when an index is out of range or a mask has another length."""
    if isinstance(rows, torch.Tensor):
        if rows.shape[0] != batch:
            raise SteeringError(
                f"the rows mask has {rows.shape[0]} entries but the model runs a batch of {batch} "
                "rows; pass a boolean mask [batch] matching the input (or row indices)")
        return rows.nonzero()[:, 0].to(device)
    bad = [i for i in rows if i >= batch]
    if bad:
        raise SteeringError(
            f"row index {bad[0]} is out of range: the model runs a batch of {batch} rows "
            f"(valid rows 0..{batch - 1})")
    return torch.tensor(rows, dtype=torch.long, device=device)


def _past_length(past: Any) -> int:
    """Number of cached positions in an HF cache object, a legacy tuple cache or a TL cache."""
    if past is None:
        return 0
    fn = getattr(past, "get_seq_length", None)
    if callable(fn):
        try:
            return int(fn())
        except Exception:  # noqa: BLE001 - empty caches raise on some versions
            return 0
    if isinstance(past, (tuple, list)) and past:
        first = past[0]
        if isinstance(first, (tuple, list)) and first and isinstance(first[0], torch.Tensor):
            return int(first[0].shape[-2])
    entries = getattr(past, "entries", None)  # HookedTransformerKeyValueCache
    if entries:
        keys = getattr(entries[0], "past_keys", None)
        if isinstance(keys, torch.Tensor):
            return int(keys.shape[1])
    return 0


class PositionTracker:
    """Follows the forward calls of one model so hooks know which columns they are seeing.

    Install with ``attach()``, remove with ``detach()``; ``reset()`` forgets the current
    sequence (``emolens.generate`` calls it before every generation).
    """

    def __init__(self, model: Model):
        self.model = model
        self.current: ForwardInfo | None = None
        self._prompt_len: int | None = None
        self._last_ids: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._fallback: dict[str, int] = {}
        self.module = self._watch_module(model)

    @staticmethod
    def _watch_module(model: Model) -> torch.nn.Module | None:
        inner = getattr(model, "original_model", None)
        if isinstance(inner, torch.nn.Module):
            return inner
        return model if isinstance(model, torch.nn.Module) else None

    def attach(self) -> None:
        if self.module is None or self._handles:
            return
        self._handles = [
            self.module.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.module.register_forward_hook(self._post, always_call=True),
        ]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.current = None

    def reset(self) -> None:
        self.current = None
        self._prompt_len = None
        self._last_ids = None
        self._fallback.clear()

    def continue_from(self, tokens: Int[torch.Tensor, "batch pos"], prompt_len: int) -> None:
        """Make the next full forward over ``tokens`` count as the next decode step of a
        sequence whose prompt has ``prompt_len`` columns (used to re-run a finished generation
        under the same position rules)."""
        self._prompt_len = int(prompt_len)
        self._last_ids = tokens[:, :-1].detach()

    # -- forward hooks on the inner module
    def _pre(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor):
            ids = args[0]
        x = ids if ids is not None else kwargs.get("inputs_embeds")
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            self.current = None
            return
        if ids is not None and ids.is_floating_point():  # embeddings given positionally
            ids = None
        batch, n = int(x.shape[0]), int(x.shape[1])
        past_obj = kwargs.get("past_key_values", kwargs.get("past_kv_cache"))
        past = _past_length(past_obj)
        if past > 0:
            if self._prompt_len is None:
                self._prompt_len = past
            offset = past
            self._last_ids = None
        else:
            prev = self._last_ids
            continues = (
                prev is not None and ids is not None and self._prompt_len is not None
                and ids.shape[0] == prev.shape[0] and n == prev.shape[1] + 1
                and torch.equal(ids[:, :-1], prev)
            )
            if not continues:
                self._prompt_len = n
            offset = 0
            self._last_ids = ids.detach() if ids is not None else None
        am = kwargs.get("attention_mask")
        if not (isinstance(am, torch.Tensor) and am.ndim == 2 and am.shape[0] == batch
                and am.shape[1] == offset + n):
            am = None
        assert self._prompt_len is not None
        self.current = ForwardInfo(batch, n, offset, self._prompt_len, am)

    def _post(self, module: Any, args: Any, output: Any) -> None:
        self.current = None

    # -- used by hooks
    def info_for(self, hook_name: str, batch: int, n: int) -> ForwardInfo:
        """The current forward's info, or one inferred from the shape alone.

        The shape-only fallback (used when the watched module's hooks did not fire, e.g. a model
        without ``original_model`` run through ``forward`` directly) keeps one counter per hook
        point: a one-position call right after an earlier call continues that sequence (a cached
        decode step); anything else is a new full sequence starting at column 0.
        """
        cur = self.current
        if cur is not None and cur.batch == batch and cur.n == n:
            return cur
        last = self._fallback.get(hook_name, 0)
        if n == 1 and last > 0:
            info = ForwardInfo(batch, 1, last, self._fallback.get(hook_name + "#prompt", last), None)
            self._fallback[hook_name] = last + 1
        else:
            info = ForwardInfo(batch, n, 0, n, None)
            self._fallback[hook_name] = n
            self._fallback[hook_name + "#prompt"] = n
        return info


def selection_for_tokens(policy: PositionPolicy, attention_mask: Int[torch.Tensor, "batch pos"],
                         prompt_len: int
                         ) -> Bool[torch.Tensor, "batch pos"]:
    """Which columns of a finished ``[batch, pos]`` sequence ``policy`` selects (for records)."""
    info = ForwardInfo(int(attention_mask.shape[0]), int(attention_mask.shape[1]), 0, prompt_len,
                       attention_mask)
    sel = info.select(policy, attention_mask.device)
    if sel is None:
        return torch.ones(info.batch, info.n, dtype=torch.bool, device=attention_mask.device)
    if sel is False:
        return torch.zeros(info.batch, info.n, dtype=torch.bool, device=attention_mask.device)
    assert isinstance(sel, torch.Tensor)
    return sel
