"""Tiny random models for tests and examples: no model file, no download, seconds to build.

``tiny_model()`` builds a TransformerLens-native model (``TransformerBridge.boot_native``);
``tiny_model(arch="llama")`` builds a randomly initialised Hugging Face Llama booted through
``boot_transformers`` (the same code path as the default model, KV cache included). Both use
``byte_tokenizer()``: a byte-level tokenizer with ChatML special tokens and a chat template.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from emolens.models.provenance import ModelProvenance, record_provenance

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=1)
def _byte_tokenizer_cached() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", name_or_path="emolens-byte-tokenizer", add_bos_token=True,
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tok.chat_template = CHATML_TEMPLATE
    return tok


def byte_tokenizer() -> Any:
    """A fresh copy of the byte-level ChatML tokenizer (vocabulary 259)."""
    import copy

    return copy.deepcopy(_byte_tokenizer_cached())


def tiny_model(*, arch: str = "native", n_layers: int = 4, d_model: int = 64, n_heads: int = 4,
               d_mlp: int | None = None, n_ctx: int = 512, seed: int = 0) -> Any:
    """A small random model with the TransformerLens bridge surface.

    arch: ``"native"`` (TransformerLens-native, rotary + RMSNorm + gated MLP) or ``"llama"``
    (a randomly initialised HF ``LlamaForCausalLM`` through ``boot_transformers``).
    """
    from emolens.compat import ensure_kv_cache_compat

    ensure_kv_cache_compat()
    tok = byte_tokenizer()
    d_mlp = d_mlp or 4 * d_model
    if arch == "native":
        from transformer_lens.model_bridge import TransformerBridge

        cfg = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads,
                   d_mlp=d_mlp, d_vocab=len(tok), n_ctx=n_ctx, act_fn="silu",
                   normalization_type="RMS", positional_embedding_type="rotary", seed=seed,
                   gated_mlp=True)
        boot_native = TransformerBridge.boot_native  # type: ignore[attr-defined]
        model = boot_native(cfg, tokenizer=tok, model_name=f"emolens-tiny-native-{seed}")
    elif arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        from emolens.models.loading import _boot

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            hf = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tok), hidden_size=d_model, intermediate_size=d_mlp,
                num_hidden_layers=n_layers, num_attention_heads=n_heads,
                num_key_value_heads=max(1, n_heads // 2), max_position_embeddings=n_ctx,
                tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
        hf.eval()
        model = _boot(f"emolens-tiny-llama-{seed}", hf, tok, None, torch.float32)
    else:
        raise ValueError(f"arch must be 'native' or 'llama', got {arch!r}")
    model.eval()
    record_provenance(model, ModelProvenance(
        model_id=f"emolens-tiny-{arch}-L{n_layers}-D{d_model}-seed{seed}", source="native",
        revision=None, quantisation="none", weight_processing="raw", dtype="float32",
        n_layers=n_layers, d_model=d_model, d_vocab=len(tok)))
    return model
