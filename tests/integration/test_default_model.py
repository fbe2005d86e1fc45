"""The embedded default model: offline load, a coherent chat reply, exact KV-cache decoding,
and a cache that is rebuilt (never loaded half) when damaged."""
from __future__ import annotations

import shutil

import pytest

import emolens
from emolens.errors import CacheError
from emolens.models.loading import provision_default_model, verify_default_cache
from emolens.tokens import to_inputs


def _greedy(model, tokens, use_cache, n=24):
    return model.generate(tokens, max_new_tokens=n, do_sample=False, use_past_kv_cache=use_cache,
                          verbose=False, stop_at_eos=False)


def test_default_model_shape_and_provenance(default_model):
    cfg = default_model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab) == (30, 576, 49152)
    prov = emolens.model_provenance(default_model)
    assert prov.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert prov.source == "gguf" and "Q4_1" in prov.quantisation
    assert prov.revision.startswith("sha256:b179c952")
    assert prov.weight_processing == "raw"


def test_chat_reply_is_coherent_and_kv_cache_exact(default_model):
    batch = to_inputs(default_model, [[{"role": "user", "content": "What is the capital of France?"}]])
    with_cache = _greedy(default_model, batch.tokens, True)
    without = _greedy(default_model, batch.tokens, False)
    assert with_cache.tolist() == without.tolist()
    reply = default_model.tokenizer.decode(with_cache[0, batch.tokens.shape[1]:],
                                           skip_special_tokens=True)
    assert "Paris" in reply


def test_damaged_cache_is_rebuilt_not_loaded(tmp_path):
    folder = provision_default_model(tmp_path)
    verify_default_cache(folder)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CacheError, match="truncated"):
        verify_default_cache(folder)
    # flip one byte: same size, different hash
    folder2 = provision_default_model(tmp_path)
    assert folder2 == folder and weights.stat().st_size == size
    with open(weights, "r+b") as f:
        f.seek(size // 3)
        b = f.read(1)
        f.seek(size // 3)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(CacheError, match="sha256"):
        verify_default_cache(folder)
    model = emolens.load_model(cache_dir=tmp_path)
    verify_default_cache(folder)
    assert model.cfg.n_layers == 30
    shutil.rmtree(tmp_path / "models")
