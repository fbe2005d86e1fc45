"""compat.run_to_layer: stops after the last block on a TransformerBridge (its own
stop_at_layer stops only before a block, so n_layers ran the unembedding too)."""
from __future__ import annotations

import pytest
import torch

from emolens.compat import _is_bridge, run_to_layer


def _unembed_calls(model, fn) -> int:
    calls = []
    handle = model.unembed.register_forward_hook(lambda *a: calls.append(1))
    try:
        fn()
    finally:
        handle.remove()
    return len(calls)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_run_to_layer_reads_the_last_block_without_the_unembedding(request, fixture):
    model = request.getfixturevalue(fixture)
    n = int(model.cfg.n_layers)
    tokens = torch.tensor([[1, 5, 7, 9, 11], [1, 4, 4, 2, 8]])
    name = f"blocks.{n - 1}.hook_resid_post"
    seen = {}

    def keep(act, hook):
        seen["x"] = act.detach().clone()

    with torch.no_grad():
        ref_logits = model(tokens)
        calls = _unembed_calls(model, lambda: run_to_layer(model, tokens, [(name, keep)], n))
        assert calls == 0  # nothing after the last block ran
        # the last block's output is the one the full forward computes
        full = {}
        model.run_with_hooks(tokens, fwd_hooks=[(name, lambda a, hook: full.update(x=a.clone()))])
    assert torch.allclose(seen["x"], full["x"], atol=1e-6)
    assert torch.allclose(model.unembed(model.ln_final(seen["x"])), ref_logits, atol=1e-5)
    if _is_bridge(model):
        # the quirk this works around: the bridge's stop_at_layer = n_layers runs everything
        with torch.no_grad():
            assert _unembed_calls(model, lambda: model.run_with_hooks(
                tokens, fwd_hooks=[(name, keep)], return_type=None, stop_at_layer=n)) == 1
    # an earlier stop is TransformerLens's own, unchanged
    with torch.no_grad():
        assert _unembed_calls(model, lambda: run_to_layer(model, tokens, [], n - 1)) == 0


def test_tiny_llama_is_a_bridge(tiny_llama):
    assert _is_bridge(tiny_llama)  # so the test above covers the bridge path


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_cache_to_layer_equals_run_with_cache_without_the_unembedding(request, fixture):
    from emolens.compat import cache_to_layer
    from emolens.errors import InputError

    model = request.getfixturevalue(fixture)
    n = int(model.cfg.n_layers)
    tokens = torch.tensor([[1, 5, 7, 9, 11], [1, 4, 4, 2, 8]])
    names = [f"blocks.{n - 1}.hook_resid_post", "blocks.0.hook_resid_pre",
             "blocks.0.hook_resid_post"]
    with torch.no_grad():
        _, ref = model.run_with_cache(tokens, names_filter=names)
        got = {}
        assert _unembed_calls(model, lambda: got.update(cache_to_layer(model, tokens, names, n))) \
            == 0
    assert sorted(got) == sorted(names)
    for name in names:
        assert torch.allclose(got[name], ref[name], atol=1e-6), name
    # a hook point past the stop is an error that names it, not a silent gap
    with pytest.raises(InputError, match=f"blocks.{n - 1}.hook_resid_post"):
        cache_to_layer(model, tokens, names, 1)
