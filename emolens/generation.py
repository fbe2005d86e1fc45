"""``generate``: text generation with optional steering and an emotion readout of every token.

A thin layer over ``model.generate`` (TransformerLens's hooked loop, KV cache included) that
adds what the experiments need: chat messages through the chat template, repeatable sampling
(``seed``), steering hooks installed and removed around the call, and a ``Readout`` of the
residual stream at every registry layer for the prompt and each generated token.

Batches are left-padded (``emolens.tokens.to_inputs(..., padding_side="left")``) and passed with
their attention mask, so each row generates as it would alone; steering positions count from
each row's first real token, and ``Steering(..., rows=[...])`` steers only some rows of the batch
(docs/steering.md).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int

from emolens.compat import cache_to_layer, silence_known_warnings
from emolens.errors import InputError, SteeringError
from emolens.runtime import model_device

if TYPE_CHECKING:
    from emolens.compat import Model


@dataclass
class Generation:
    """The result of ``generate``.

    texts: the generated continuation of each prompt (special tokens and everything from the
        first stop token on removed); ``text`` is the first (the only one for one prompt).
    tokens: ``[batch, pos]`` prompt (left-padded) followed by the generated tokens; rows that
        stopped early are filled with the end-of-sequence id.
    prompt_len: number of prompt columns (padding included): generated tokens start there.
    attention_mask: ``[batch, pos]`` 1 on real tokens: prompt tokens and generated tokens up to
        and including the stop token.
    prompts: the rendered prompts (chat input after the chat template).
    steering: ``Steering.describe()`` of every intervention that was active.
    settings: the generation settings (max_new_tokens, do_sample, seed, ...).
    readout: a ``Readout`` of every real token when ``monitor`` was a registry, else None.
    """

    texts: list[str]
    tokens: Int[torch.Tensor, "batch pos"]
    prompt_len: int
    attention_mask: Int[torch.Tensor, "batch pos"]
    prompts: list[str]
    steering: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    readout: Any = None

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def generated_tokens(self) -> Int[torch.Tensor, "batch new"]:
        return self.tokens[:, self.prompt_len:]

    def __len__(self) -> int:
        return len(self.texts)

    def __str__(self) -> str:
        return self.text if len(self.texts) == 1 else "\n---\n".join(self.texts)


def _as_steerings(steering: Any) -> list[Any]:
    from emolens.steering.interventions import Steering

    if steering is None:
        return []
    items = [steering] if isinstance(steering, Steering) else steering
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise SteeringError(f"steering must be a Steering or a list of them, got "
                            f"{type(steering).__name__}; build one with Steering(registry, "
                            "{'calm': 0.05})")
    out = list(items)
    for s in out:
        if not isinstance(s, Steering):
            raise SteeringError(f"steering must be a Steering or a list of them, got a "
                                f"{type(s).__name__} in the list")
    return out


def stop_token_ids(model: Model) -> list[int]:
    """The token ids that end a generation (the model config's, else the tokenizer's EOS)."""
    eos = getattr(model.cfg, "eos_token_id", None)
    if eos is None and model.tokenizer is not None:
        eos = model.tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def _check_settings(max_new_tokens: int, do_sample: bool, temperature: float | int,
                    top_p: float | int | None) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens!r} must be a positive int")
    if do_sample and not (math.isfinite(temperature) and temperature > 0):
        raise InputError(f"temperature={temperature!r} must be a positive finite number when "
                         "sampling (use do_sample=False for greedy decoding)")
    if top_p is not None and not (0 < top_p <= 1):
        raise InputError(f"top_p={top_p!r} must be in (0, 1]")


def generate(model: Model, prompt_or_messages: Any, *, max_new_tokens: int = 40,
             steering: Any = None, monitor: Any = None, do_sample: bool = False,
             temperature: float | int = 1.0, top_p: float | int | None = None,
             seed: int | None = None, use_past_kv_cache: bool = True, stop_at_eos: bool = True,
             monitor_centered: bool = True, strict: bool = True) -> Generation:
    """Generate a continuation of a prompt, a conversation, or a list of them.

    Args:
        prompt_or_messages: a string, a chat conversation (list of ``{"role", "content"}``
            dicts, rendered with the chat template and the assistant turn opened), a list
            of those (one batch, left-padded), or a left-padded ``TokenizedBatch`` from
            ``to_inputs(model, ..., padding_side="left")`` (used as given, e.g. rows picked
            from a larger batch so that they keep its padding).
        max_new_tokens: tokens to generate per prompt.
        steering: a ``Steering`` or a list of them, active during generation only (each may
            be limited to some rows of the batch with ``rows=``).
        monitor: an ``EmotionRegistry``: the result carries a ``Readout`` of the (steered)
            residual stream at every registry layer for every prompt and generated token
            (``readout.at(layer)``: ``[batch, pos, emotion]``; scores are projections on the
            unit vectors, minus the registry's centre unless ``monitor_centered=False``, as
            in ``read_emotions``; ``reply_pos`` is the last prompt column).
        do_sample / temperature / top_p: sampling; greedy when ``do_sample`` is False.
        seed: makes sampling repeatable (the global RNG is forked, so the caller's RNG state
            is left as it was).
        use_past_kv_cache: decode with the KV cache (same tokens as without it, faster).
        stop_at_eos: stop a row at the model's end-of-sequence token.
        strict: the monitor registry's model check (``EmotionRegistry.check_model``).

    Raises ``InputError`` before generating when the prompt plus ``max_new_tokens`` exceeds
    the model's context (``n_ctx``).
    """
    from emolens.steering.interventions import apply_steering
    from emolens.tokens import TokenizedBatch, to_inputs

    _check_settings(max_new_tokens, do_sample, temperature, top_p)
    if monitor is not None and not all(hasattr(monitor, a) for a in ("matrix", "layers", "site")):
        raise InputError(f"monitor must be an EmotionRegistry (to read its directions while "
                         f"generating), got a {type(monitor).__name__}")
    if monitor is not None:
        monitor.check_model(model, strict=strict)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InputError(f"seed={seed!r} must be an int or None")
    steerings = _as_steerings(steering)
    if isinstance(prompt_or_messages, TokenizedBatch):
        batch = prompt_or_messages
        if len(batch) == 0 or batch.tokens.shape[1] == 0 or not bool(
                batch.attention_mask[:, -1].all()):  # left padding: every row ends real
            raise InputError("generate needs a left-padded TokenizedBatch with at least one real "
                             "token per row: to_inputs(model, prompts, padding_side='left')")
    else:
        batch = to_inputs(model, prompt_or_messages, padding_side="left")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and batch.tokens.shape[1] + max_new_tokens > int(n_ctx):
        raise InputError(
            f"the prompt ({batch.tokens.shape[1]} tokens) plus max_new_tokens={max_new_tokens} "
            f"exceeds the model's context of {n_ctx} tokens; shorten the prompt or ask for at "
            f"most {max(0, int(n_ctx) - batch.tokens.shape[1])} new tokens")
    device = model_device(model)
    tokens = batch.tokens.to(device)
    prompt_mask = batch.attention_mask.to(device)
    handle = apply_steering(model, steerings) if steerings else None
    settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                "temperature": temperature, "top_p": top_p, "seed": seed,
                "use_past_kv_cache": use_past_kv_cache, "stop_at_eos": stop_at_eos}
    try:
        if handle is not None:
            handle.reset()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                silence_known_warnings():
            if seed is not None:
                torch.manual_seed(int(seed))
            out = model.generate(
                tokens, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
                do_sample=do_sample, temperature=temperature if do_sample else 1.0,
                top_p=top_p if do_sample else None, use_past_kv_cache=use_past_kv_cache,
                verbose=False, return_type="tokens",
                attention_mask=None if bool(prompt_mask.all()) else prompt_mask)
        out = out.detach()
        prompt_len = int(tokens.shape[1])
        mask, texts = _finish(model, out, prompt_mask, prompt_len, stop_at_eos)
        readout = None
        if monitor is not None:
            readout = _monitor(model, monitor, out, mask, prompt_len, handle,
                               [p + t for p, t in zip(batch.texts, texts)], monitor_centered)
    finally:
        if handle is not None:
            handle.remove()
    return Generation(texts=texts, tokens=out.cpu(), prompt_len=prompt_len,
                      attention_mask=mask.cpu(), prompts=list(batch.texts),
                      steering=[s.describe() for s in steerings], settings=settings,
                      readout=readout)


def _finish(model: Model, out: torch.Tensor, prompt_mask: torch.Tensor, prompt_len: int,
            stop_at_eos: bool) -> tuple[torch.Tensor, list[str]]:
    """Attention mask over prompt + generated tokens (real up to the stop token) and texts."""
    gen = out[:, prompt_len:]
    stops = stop_token_ids(model) if stop_at_eos else []
    keep = torch.ones_like(gen, dtype=torch.long)
    texts = []
    for i in range(gen.shape[0]):
        row = gen[i].tolist()
        end = len(row)
        for j, t in enumerate(row):
            if t in stops:
                end = j
                break
        keep[i, end + 1:] = 0
        texts.append(model.tokenizer.decode(row[:end], skip_special_tokens=True))
    mask = torch.cat([prompt_mask.long(), keep], dim=1)
    return mask, texts


def _monitor(model: Model, registry: Any, tokens: torch.Tensor, mask: torch.Tensor,
             prompt_len: int, handle: Any, texts: list[str], centered: bool = True) -> Any:
    """Readout of the residual stream at every registry layer for every token.

    Computed by one more forward over prompt + generated tokens with the same steering hooks,
    told that this forward continues the generated sequence, so position rules ("prompt",
    "generated", indices) select the same columns as during decoding; hooks on each registry
    site capture the residual (what the model computed at every step, including the final
    generated token, which decoding itself never feeds back).
    """
    layers = list(registry.layers)  # the model check ran at generate's entry
    names = [registry.site(layer).name for layer in layers]
    if handle is not None:
        handle.tracker.continue_from(tokens, prompt_len)
    kwargs: dict[str, Any] = {}
    if not bool(mask.all()):
        kwargs["attention_mask"] = mask
    with torch.no_grad():
        captured = cache_to_layer(model, tokens, names, max(layers) + 1, **kwargs)
    from emolens.scoring import project

    cols = [project(captured[name].float(), registry, layer, centered=centered)  # [b, pos, E]
            for name, layer in zip(names, layers)]
    scores = torch.stack(cols, dim=2).cpu()  # [b, pos, layer, E]
    scores = scores * mask.cpu()[:, :, None, None]
    return _build_readout(model, registry, tokens, mask, prompt_len, scores, layers, texts,
                          centered)


def _build_readout(model: Model, registry: Any, tokens: torch.Tensor, mask: torch.Tensor,
                   prompt_len: int, scores: torch.Tensor, layers: list[int], texts: list[str],
                   centered: bool) -> Any:
    from emolens.readout.readout import Readout

    real = mask.bool().cpu()
    content = real.clone()
    content[torch.arange(tokens.shape[0]), real.long().argmax(-1)] = False
    str_tokens = [[model.tokenizer.decode([int(t)]) for t in row[m]]
                  for row, m in zip(tokens.cpu(), real)]
    reply = torch.full((tokens.shape[0],), prompt_len - 1, dtype=torch.long)
    return Readout(scores_all=scores, emotions=list(registry.emotions), layers=layers,
                   str_tokens=str_tokens, mask=real, content_mask=content, reply_pos=reply,
                   default_layer=int(registry.default_layer), texts=texts, kind="projection",
                   centered=centered)
