"""A model split by a device map (accelerate dispatch through load_model): hooks, readout,
steering, extraction and scans give the same numbers as the unsplit model.

A CPU-only machine cannot split over GPUs; the split here keeps two blocks on the CPU and two
offloaded to disk (their parameters are meta placeholders, materialised per call by
accelerate's hooks), which TransformerLens counts as 2 devices. Multi-GPU maps go through the
same code path (``from_pretrained(device_map=...)`` then ``boot_transformers(hf_model=...)``).
"""
from __future__ import annotations

import json

import pytest
import torch

import emolens
from emolens.errors import InputError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from emolens.testing import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(3)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    path = tmp_path_factory.mktemp("tinyllama")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(folder, tmp_path_factory):
    plain = emolens.load_model(str(folder))
    dmap = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
            "model.layers.1": "cpu", "model.layers.2": "disk", "model.layers.3": "disk",
            "model.norm": "cpu", "lm_head": "cpu"}
    split = emolens.load_model(str(folder), device_map=dmap,
                               offload_folder=tmp_path_factory.mktemp("offload"))
    return plain, split


TEXTS = ["the storm broke the old fence", "a calm morning by the lake",
         "she laughed at the silly dog", "rain again, and the bus is late"]


def test_split_model_is_mapped_and_computes_the_same(pair):
    plain, split = pair
    assert int(split.cfg.n_devices) == 2 and int(getattr(plain.cfg, "n_devices", 1)) == 1
    assert split.original_model.hf_device_map["model.layers.3"] == "disk"
    t = plain.to_tokens(TEXTS[:1])
    with torch.no_grad():
        assert torch.allclose(plain(t), split(t), atol=1e-5)
    seen = []
    split.run_with_hooks(t, fwd_hooks=[("blocks.3.hook_resid_post",
                                        lambda a, hook: seen.append(a.shape))],
                         return_type=None)
    assert seen == [(1, t.shape[1], 64)]


def test_readout_steering_extraction_and_scan_agree_across_the_map(pair):
    plain, split = pair
    corpus = {"stormy": TEXTS[:1] + ["thunder over the sea"], "calm": TEXTS[1:3]}

    class C:
        name, content_hash, version = "c", "0" * 64, "1"
        emotions = list(corpus)
        neutral: list = []

        def stories(self, e, split=None):
            return [type("R", (), {"text": t})() for t in corpus[e]]

    regs = [emolens.extract_emotions(m, C(), layers=[1, 3], progress=False, validate=False,
                                     compute_dtype=None) for m in (plain, split)]
    assert torch.allclose(regs[0].tensor(), regs[1].tensor(), atol=1e-5)
    reg = regs[0]
    ros = [emolens.read_emotions(m, reg, TEXTS, layers="all", strict=False) for m in pair]
    assert torch.allclose(ros[0].scores_all, ros[1].scores_all, atol=1e-5)
    outs = []
    for m in pair:
        t = m.to_tokens(TEXTS[:2], padding_side="right")
        with emolens.steer(m, reg, {"calm": 0.5}, layer=3), torch.no_grad():
            outs.append(m(t))
    assert torch.allclose(outs[0], outs[1], atol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(outs[0], plain(plain.to_tokens(TEXTS[:2])), atol=1e-3)
    scans = [emolens.top_examples(m, reg, TEXTS, k=2, layer=3, progress=False, strict=False)
             for m in pair]
    for e in reg.emotions:
        assert [(x.text_index, x.position) for x in scans[0].examples[e]] == \
            [(x.text_index, x.position) for x in scans[1].examples[e]]


def test_placement_errors_name_the_fix(folder):
    with pytest.raises(InputError, match="max_memory"):
        emolens.load_model(str(folder), max_memory={"cpu": "1GiB"})
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="requires CUDA"):
            emolens.load_model(str(folder), n_devices=2)
    with pytest.raises(InputError, match="mutually exclusive"):
        emolens.load_model(str(folder), device="cpu", device_map="auto")


def test_extract_and_scan_commands_on_one_process(folder, tmp_path, capsys):
    from emolens.cli import main

    reg_dir = tmp_path / "reg"
    assert main(["extract", "--model", str(folder), "--out", str(reg_dir), "--emotions",
                 "happy,afraid", "--max-texts-per-emotion", "3", "--max-neutral", "2",
                 "--layers", "1,3", "--compute-dtype", "float32", "--quiet"]) == 0
    reg = emolens.EmotionRegistry.load(reg_dir)
    assert reg.emotions == ["happy", "afraid"] and reg.layers == [1, 3]
    assert reg.metadata["neutral"]["texts"] == 2
    assert reg.metadata["distributed"]["world_size"] == 1
    data = tmp_path / "t.txt"
    data.write_text("\n".join(TEXTS * 3))
    assert main(["scan", "--data", str(data), "--registry", str(reg_dir), "--model",
                 str(folder), "--out", str(tmp_path / "scan"), "--k", "2", "--quiet"]) == 0
    got = json.loads((tmp_path / "scan" / "top_examples.json").read_text())
    assert got["n_texts"] == 12 and len(got["examples"]["happy"]) == 2
    assert "circuitsvis" in (tmp_path / "scan" / "top_examples.html").read_text().lower()
    out = capsys.readouterr().out
    assert "registry:" in out and "Top 2 tokens" in out
    assert main(["extract", "--model", str(folder), "--out", str(reg_dir), "--layers",
                 "one"]) == 2
