"""Write a model folder with the default model's shape and random weights, for timing only.

Timings of a forward pass, extraction, readout, patching or generation depend on the model's
shape, not on its weight values, so a machine that cannot hold the default model's file (a GPU
machine with no copy of it, say) can still run ``benchmarks/run_all.py --model FOLDER``. Figures
that depend on the weights (patch_value_range, generated texts) mean nothing with such a folder.

    python benchmarks/random_weights_model.py CONFIG_DIR OUT_DIR

CONFIG_DIR holds ``config.json`` and the tokenizer files (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``), e.g. the default model's cache folder.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(src: str, out: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    src_p, out_p = Path(src), Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(src_p)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    model.save_pretrained(out_p, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json"):
        if (src_p / name).exists():
            shutil.copyfile(src_p / name, out_p / name)
    print(f"random-weight model with {sum(p.numel() for p in model.parameters()):,} parameters: "
          f"{out_p}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
