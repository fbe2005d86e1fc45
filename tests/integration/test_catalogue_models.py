"""Catalogue models beyond the default: load, shape, a coherent chat reply, the sink token.

Marked ``large_model`` (deselected by default; ``pytest -m large_model``). Each test skips with
the install command when its model is not installed.
"""
from __future__ import annotations

import pytest
import torch

from emolens.models.catalogue import catalogue

LARGE = [m.name for m in catalogue() if not m.default]


@pytest.mark.large_model
@pytest.mark.parametrize("name", LARGE)
def test_catalogue_model_loads_answers_and_has_its_sink(name):
    import emolens
    from emolens.models.catalogue import get_model
    from emolens.models.install import cache_state
    from emolens.tokens import to_inputs

    entry = get_model(name)
    if cache_state(entry) != "ready":
        pytest.skip(f"{name} is not installed: {entry.install_command}")
    model = emolens.load_model(name)
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (
        entry.n_layers, entry.d_model, entry.d_vocab)
    assert sum(p.numel() for p in model.parameters()) == entry.n_params
    assert emolens.model_provenance(model).notes["catalogue"] == name
    batch = to_inputs(model, [[{"role": "user", "content": "What is the capital of France?"}]])
    if entry.chat_template is None:
        assert batch.texts[0] == "User: What is the capital of France?\nAssistant:"
    out = model.generate(batch.tokens, max_new_tokens=10, do_sample=False, verbose=False)
    reply = model.tokenizer.decode(out[0, batch.tokens.shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply, reply
    b = to_inputs(model, ["The rain had stopped by the time she reached the station."])
    first = model.tokenizer.convert_ids_to_tokens(b.tokens[0, :1].tolist())[0]
    assert (first == entry.bos) if entry.bos else (first != model.tokenizer.bos_token)
    mid = entry.n_layers // 2
    name_ = f"blocks.{mid}.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(b.tokens, names_filter=lambda n: n == name_)
    norms = cache[name_][0].norm(dim=-1)
    assert float(norms[entry.sink_position]) > 10 * float(norms[1:].median())
    assert not bool(b.content_mask[0, entry.sink_position])
