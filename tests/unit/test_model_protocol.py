"""``emolens.compat.Model``: the TransformerLens protocol plus the members emolens uses beyond it,
and the models emolens builds satisfy it (a misnamed member would fail here)."""
from __future__ import annotations

import types

import pytest

from emolens.compat import Model


def test_tiny_models_satisfy_the_model_protocol(tiny):
    from transformer_lens.model_protocol import TransformerLensModel

    assert isinstance(tiny, TransformerLensModel)
    assert isinstance(tiny, Model)


@pytest.mark.parametrize("missing", ["tokenizer", "hooks", "generate", "W_U", "hook_dict"])
def test_the_protocol_names_what_emolens_uses_beyond_transformerlens(missing):
    members = {n: (lambda *a, **k: None) for n in
               ("run_with_cache", "run_with_hooks", "to_tokens", "hooks", "generate",
                "parameters", "__call__")}
    members.update(cfg=object(), tokenizer=object(), W_U=object(), blocks=[], hook_dict={})
    assert isinstance(types.SimpleNamespace(**members), Model)
    del members[missing]
    assert not isinstance(types.SimpleNamespace(**members), Model)
