"""Everything that differs between TransformerLens / transformers versions lives here.

- ``Model``: the structural type emolens functions accept (``TransformerLensModel`` protocol of
  TransformerLens 4.x; a ``HookedTransformer`` of older releases matches it too).
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
from typing import Any

from emolens.runtime import model_device  # noqa: F401 - re-exported; it lives in emolens.runtime

try:  # TransformerLens >= 4
    from transformer_lens.model_protocol import TransformerLensModel as Model
except ImportError:  # pragma: no cover - older TransformerLens
    Model = Any  # type: ignore[misc,assignment]

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


def n_layers(model: Any) -> int:
    return int(model.cfg.n_layers)


def d_model(model: Any) -> int:
    return int(model.cfg.d_model)




def hook_names(model: Any) -> list[str]:
    """All hook point names the model exposes (canonical and legacy aliases)."""
    hd = getattr(model, "hook_dict", None)
    if hd is None:  # pragma: no cover
        return []
    return list(hd.keys())
