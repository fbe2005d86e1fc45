"""Everything that differs between TransformerLens / transformers versions lives here.

- ``Model``: the structural type emolens functions accept: the ``TransformerLensModel`` protocol
  of TransformerLens 4.x plus the members emolens also uses that the protocol leaves out (the
  tokenizer, the forward call, ``hooks()``, ``generate``, ``parameters``, ``W_U``, ``blocks``,
  ``hook_dict``). ``TransformerBridge`` and a ``HookedTransformer`` of older releases have them
  all. emolens modules import it under ``TYPE_CHECKING`` only, so annotating costs no import and
  checks nothing at run time.
- ``run_to_layer(model, tokens, fwd_hooks, stop_at_layer)``: ``run_with_hooks`` that runs only
  the first ``stop_at_layer`` blocks. A TransformerBridge (TransformerLens 4.x) stops *before*
  block ``stop_at_layer``, so ``stop_at_layer = n_layers`` (reading the last block) ran the final
  norm and the unembedding over every position anyway; here the run stops after the last block's
  output hook instead, as ``HookedTransformer`` does.
- ``cache_to_layer(model, tokens, names, stop_at_layer)``: the activations at ``names`` from that
  run, as ``run_with_cache(..., names_filter=names, stop_at_layer=...)`` would give them without
  the bridge's extra work.
- ``ensure_kv_cache_compat()``: transformers 5.24 renamed the per-layer cache keyword of its
  attention modules from ``past_key_values`` to ``cache``; TransformerLens 4.0-4.3 attention
  bridges only read the old names, so cached decoding silently attends to one position. The shim
  passes the cache on under the old name when only the new one is given (a no-op where the old
  name is already used).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from transformer_lens.model_protocol import TransformerLensModel

from emolens.runtime import model_device  # noqa: F401 - re-exported; it lives in emolens.runtime


@runtime_checkable
class Model(TransformerLensModel, Protocol):
    """TransformerLens's ``TransformerLensModel`` (``cfg``, ``run_with_cache``,
    ``run_with_hooks``, ``to_tokens``) plus what emolens reads beyond it. Loosely typed, as the
    protocol itself is: implementations differ in signature detail but agree in use."""

    @property
    def tokenizer(self) -> Any: ...

    @property
    def W_U(self) -> Any: ...

    @property
    def blocks(self) -> Any: ...

    @property
    def hook_dict(self) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, *args: Any, **kwargs: Any) -> Any: ...


_KV_SHIM_ATTR = "_emolens_kv_cache_shim"


def ensure_kv_cache_compat() -> bool:
    """Install the cache-keyword shim on TransformerLens's AttentionBridge once.

    Returns True when the shim is (now) installed, False when this TransformerLens has no
    ``AttentionBridge._update_kv_cache`` (nothing to fix).
    """
    try:
        from transformer_lens.model_bridge.generalized_components.attention import (
            AttentionBridge,
        )
    except ImportError:  # pragma: no cover - HookedTransformer-era TransformerLens
        return False
    original = getattr(AttentionBridge, "_update_kv_cache", None)
    if original is None:  # pragma: no cover
        return False
    if getattr(original, _KV_SHIM_ATTR, False):
        return True

    @functools.wraps(original)
    def _update_kv_cache(self: Any, k: Any, v: Any, **kwargs: Any) -> Any:
        if (
            kwargs.get("past_key_values") is None
            and kwargs.get("layer_past") is None
            and kwargs.get("cache") is not None
        ):
            kwargs["past_key_values"] = kwargs["cache"]
        return original(self, k, v, **kwargs)

    setattr(_update_kv_cache, _KV_SHIM_ATTR, True)
    AttentionBridge._update_kv_cache = _update_kv_cache  # type: ignore[method-assign]
    return True


@contextlib.contextmanager
def silence_known_warnings() -> Iterator[None]:
    """Hide warnings that TransformerLens 4.x's own generate loop triggers in transformers 5.x
    and that a user cannot act on (it passes ``past_key_values`` to ``LlamaForCausalLM``, which
    transformers 5.24 deprecates in favour of ``cache``). Scoped: other warnings still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated",
                                category=FutureWarning)
        yield


def n_layers(model: Model) -> int:
    return int(model.cfg.n_layers)


def d_model(model: Model) -> int:
    return int(model.cfg.d_model)




def hook_names(model: Model) -> list[str]:
    """All hook point names the model exposes (canonical and legacy aliases)."""
    hd = getattr(model, "hook_dict", None)
    if hd is None:  # pragma: no cover
        return []
    return list(hd.keys())


def run_to_layer(model: Any, tokens: Any, fwd_hooks: list[tuple[str, Any]], stop_at_layer: int,
                 **kwargs: Any) -> None:
    """``model.run_with_hooks(tokens, fwd_hooks=..., return_type=None, stop_at_layer=...)``
    that computes nothing after block ``stop_at_layer - 1``, also when that is the last block.

    On a TransformerBridge, ``stop_at_layer`` stops before the block of that index, and no block
    has index ``n_layers``: the whole model ran, the ``[batch, pos, d_vocab]`` logits included
    (about a fifth of a forward of the default model). For that case a last hook on
    ``blocks.{n-1}.hook_resid_post``, added after the caller's, raises the bridge's own
    ``StopAtLayerException``, which its forward catches (and cleans up after) as for any stop.
    """
    n = int(model.cfg.n_layers)
    hooks = list(fwd_hooks)
    if int(stop_at_layer) >= n and _is_bridge(model):
        from transformer_lens.model_bridge.exceptions import StopAtLayerException

        def stop(act: Any, hook: Any) -> None:
            raise StopAtLayerException(act)

        hooks.append((f"blocks.{n - 1}.hook_resid_post", stop))
        model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None, **kwargs)
        return
    model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None,
                         stop_at_layer=int(stop_at_layer), **kwargs)


def cache_to_layer(model: Any, tokens: Any, names: list[str], stop_at_layer: int,
                   **kwargs: Any) -> dict[str, Any]:
    """The activations at hook points ``names`` (detached) from ``run_to_layer``: what
    ``run_with_cache(tokens, names_filter=names, stop_at_layer=stop_at_layer)`` caches, with
    nothing after block ``stop_at_layer - 1`` computed."""
    cache: dict[str, Any] = {}

    def keep(name: str) -> Any:  # keyed by the name asked for (a bridge hook may be an alias)
        def hook_fn(act: Any, hook: Any) -> None:
            cache[name] = act.detach()
        return hook_fn

    run_to_layer(model, tokens, [(n, keep(n)) for n in names], stop_at_layer, **kwargs)
    missing = [n for n in names if n not in cache]
    if missing:
        from emolens.errors import InputError

        raise InputError(f"hook points {missing} did not run in the first {stop_at_layer} "
                         "blocks; give a stop_at_layer past their block")
    return cache


def _is_bridge(model: Any) -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # pragma: no cover - HookedTransformer-era TransformerLens
        return False
    return isinstance(model, TransformerBridge)
