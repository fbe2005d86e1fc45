"""Run-time utilities that every stage shares: where the model lives, how work is cut into
batches, and progress bars.

- ``model_device(model)``: the ``torch.device`` inputs must go to (``model.cfg.device`` as
  TransformerLens keeps it, else the first parameter's device, else the CPU).
- ``batches(n, size)``: consecutive ``slice`` objects over ``n`` rows, at most ``size`` each.
- ``sorted_batches(texts, size)``: index lists over ``texts``, longest text first (less
  padding per batch when the work is a sum, so order does not matter).
- ``rows_per_chunk(seq_len, max_tokens)``: rows of ``seq_len`` tokens that fit a token budget.
- ``logits_at(model, tokens, rows, pos)``: logits at chosen (row, position) pairs only: the
  blocks on every position, the final norm and the unembedding at those pairs.
- ``resolve_batch_size(batch_size, model)``: ``None`` -> the batch this kind of device runs
  fastest for reading activations (``CPU_BATCH`` on a CPU, ``ACCELERATOR_BATCH`` elsewhere).
- ``progress_bar(iterable, total=, desc=, enabled=)``: a tqdm bar, silent when ``enabled`` is
  False (every long-running call exposes it as ``progress=``).

This module imports nothing from the pipeline stages, so any of them can use it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: the CLI parser imports this module cheaply
    import torch

    from emolens.compat import Model


def model_device(model: Model) -> torch.device:
    """The device of ``model``'s inputs: ``model.cfg.device`` (TransformerLens keeps it in
    step with ``model.to``), else the first parameter's device, else the CPU."""
    import torch

    dev = getattr(getattr(model, "cfg", None), "device", None)
    if dev is not None:
        return dev if isinstance(dev, torch.device) else torch.device(str(dev))
    try:
        return next(iter(model.parameters())).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


#: texts per forward when reading activations on a CPU. Measured on the default model (2 cores,
#: AMD EPYC, float32, the process capped to AVX2): the full main job's extraction (1,794 texts,
#: 30 layers) took 396 s at batch 8 and 402 s at 16 on a quiet machine, i.e. the same; while
#: other jobs (nice 19) shared the machine, 96 stories took 20.7 s at 8, 32.4 s at 16 and
#: 62.6 s at 32. Small batches lose nothing alone and hold up under contention
#: (docs/results.md, "Main job timings, round 3").
CPU_BATCH = 8
#: texts per forward on a GPU or other accelerator (wide matmuls keep it busy)
ACCELERATOR_BATCH = 32


def resolve_batch_size(batch_size: int | None, model: Model | None = None) -> int:
    """``batch_size`` if given (a positive int), else ``CPU_BATCH`` for a model on the CPU and
    ``ACCELERATOR_BATCH`` for one on any other device. Raises ``InputError`` naming a bad value."""
    from emolens.errors import InputError

    if batch_size is None:
        if model is None:
            return CPU_BATCH
        return CPU_BATCH if model_device(model).type == "cpu" else ACCELERATOR_BATCH
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int or None (the device's default), "
                         f"got {batch_size!r}")
    return batch_size


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices ``[0, size), [size, 2 size), ...`` covering ``n`` rows (``size`` is
    at least 1)."""
    size = max(1, int(size))
    for start in range(0, int(n), size):
        yield slice(start, min(int(n), start + size))


def sorted_batches(texts: Sequence[Any], size: int) -> Iterator[list[int]]:
    """Indices of ``texts`` in batches of at most ``size``, longest (``len(str(text))``) first;
    ties keep input order."""
    order = sorted(range(len(texts)), key=lambda i: -len(str(texts[i])))
    for sl in batches(len(order), size):
        yield order[sl]


def rows_per_chunk(seq_len: int, max_tokens: int, batch_rows: int = 1) -> int:
    """How many groups of ``batch_rows`` rows of ``seq_len`` tokens fit in ``max_tokens``
    (at least 1)."""
    return max(1, math.floor(max_tokens / max(1, seq_len * batch_rows)))


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 desc: str | None = None, enabled: bool = True, unit: str = "it") -> Any:
    """A tqdm progress bar (``tqdm.auto``; closes itself when the iterable ends), disabled when
    ``enabled`` is False; it does not stay on screen after it finishes."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, leave=False)


def logits_at(model: Model, tokens: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor,
              **kwargs: Any) -> torch.Tensor:
    """``model(tokens, **kwargs)[rows, pos]`` (``[k, d_vocab]``) without the
    ``[batch, pos, d_vocab]`` logits: the blocks run on every position, ``ln_final`` and
    ``unembed`` only on the ``k`` residuals asked for (on the default model the full
    unembedding is a fifth of a forward's FLOPs, and the scored positions are one per row).
    Models whose logits pass through more than ``ln_final`` and ``unembed`` (a logit soft cap)
    take the full forward. Hooks and steering contexts already active apply as in a forward;
    call it under ``torch.no_grad()``. Tested equal to the full forward
    (tests/unit/test_causality.py)."""
    from emolens.compat import cache_to_layer

    cap = getattr(getattr(model, "cfg", None), "output_logits_soft_cap", -1.0) or -1.0
    ln_final, unembed = getattr(model, "ln_final", None), getattr(model, "unembed", None)
    if float(cap) > 0 or ln_final is None or unembed is None:
        return model(tokens, **kwargs)[rows, pos]
    n = int(model.cfg.n_layers)
    last = f"blocks.{n - 1}.hook_resid_post"
    x = cache_to_layer(model, tokens, [last], n, **kwargs)[last][rows, pos]
    return unembed(ln_final(x[:, None, :]))[:, 0]


__all__ = ["batches", "logits_at", "model_device", "progress_bar", "resolve_batch_size",
           "rows_per_chunk", "sorted_batches"]
