"""Model loading: seconds to a ready default model from the verified cache and from the GGUF.

Both are measured in this process after the imports (transformers and TransformerLens take a few
seconds to import on 2 cores; that cost is the same for both paths and is reported separately).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile

GOALS = {"load_cached_s": "< 3 s", "load_gguf_s": "(one-time conversion)"}

_SNIPPET = """
import time, sys
t0 = time.perf_counter()
import transformers, transformer_lens.model_bridge, emolens
t1 = time.perf_counter()
emolens.load_model(cache_dir=sys.argv[1] if len(sys.argv) > 1 else None)
t2 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f}")
"""


def _time_in_new_process(cache_dir: str | None) -> tuple[float, float]:
    args = [sys.executable, "-c", _SNIPPET] + ([cache_dir] if cache_dir else [])
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def run(ctx) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        _, gguf = _time_in_new_process(tmp)      # empty cache: converts the GGUF
        imp, cached = _time_in_new_process(tmp)  # second process: reads the verified cache
    return {"load_cached_s": round(cached, 3), "load_gguf_s": round(gguf, 3),
            "import_s": round(imp, 3), "load_gguf_over_cached": round(gguf / cached, 2)}
