"""Steering on the default model (SmolLM2-135M-Instruct): cached and uncached greedy decoding
agree under steering, and a strong push along a random direction changes the text."""
from __future__ import annotations

import pytest
import torch

import emolens
from emolens.generation import generate
from emolens.registry import EmotionRegistry
from emolens.sites import Site
from emolens.steering import Steering, measure_mean_norm, random_direction

LAYER = 20
PROMPT = [{"role": "user", "content": "Tell me about your morning."}]


@pytest.fixture(scope="module")
def random_registry(default_model):
    """Two random unit directions at one layer, with the layer's measured mean norm."""
    norm = measure_mean_norm(default_model, ["The weather was mild and the streets were quiet.",
                                             "She wrote the report and sent it before lunch."],
                             layers=[LAYER])[LAYER]
    d = int(default_model.cfg.d_model)
    dirs = torch.stack([random_direction(d, seed=1), random_direction(d, seed=2)])[None]
    return EmotionRegistry(dirs, ["calm", "desperate"], [Site(LAYER, f"blocks.{LAYER}.hook_resid_post")],
                           torch.tensor([norm]),
                           metadata={"model": emolens.model_provenance(default_model).to_dict()})


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_steered_greedy_generation_is_the_same_with_and_without_kv_cache(
        default_model, random_registry, positions):
    s = Steering(random_registry, {"calm": 0.3, "desperate": -0.2}, positions=positions)
    outs = [generate(default_model, PROMPT, max_new_tokens=12, steering=s,
                     use_past_kv_cache=cache, stop_at_eos=False) for cache in (True, False)]
    assert outs[0].tokens.tolist() == outs[1].tokens.tolist()


def test_strong_random_steering_changes_the_output(default_model, random_registry):
    plain = generate(default_model, PROMPT, max_new_tokens=12, stop_at_eos=False)
    steered = generate(default_model, PROMPT, max_new_tokens=12, stop_at_eos=False,
                       steering=Steering(random_registry, {"calm": 1.0}))
    assert plain.text.strip() and plain.tokens.tolist() != steered.tokens.tolist()
    # hooks are gone afterwards: the model generates the plain text again
    again = generate(default_model, PROMPT, max_new_tokens=12, stop_at_eos=False)
    assert again.tokens.tolist() == plain.tokens.tolist()
