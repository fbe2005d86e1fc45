"""Data parallelism on this machine: ``torchrun --nproc-per-node 2 -m emolens extract`` (2 ranks x
1 thread, gloo) against ``python -m emolens extract`` (1 process x 2 threads), same extraction.

Both runs are the real CLI in fresh processes (model load included in the wall time; the
extraction time alone is parsed from the CLI's summary). The two registries are loaded back and
compared: directions (max |difference|, min cosine), validation counts (must be equal).

    python benchmarks/bench_distributed.py [--emotions E,E,...] [--max-texts 16] [--model M]

Figures merge into ``benchmarks/results.json`` under ``distributed_*`` (other keys are kept);
``run_all.py`` also runs this module. The ratio is reported whatever it is: on 2 shared cores
two single-threaded ranks compete with each other and with everything else on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
CORE6 = "happy,sad,afraid,angry,calm,desperate"
GOALS = {"distributed_extract_speedup": "report (2 ranks x 1 thread vs 1 process x 2 threads)"}


def _cli(cmd: list[str], threads: int) -> tuple[float, float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = re.search(r"extract ([0-9.]+) s", proc.stdout)
    return wall, float(m.group(1)) if m else float("nan"), proc.stdout


def measure(emotions: str = CORE6, max_texts: int = 16, model: str | None = None,
            layers: str | None = None, keep: str | None = None,
            max_neutral: int | None = None) -> dict[str, object]:
    import torch

    import emolens

    tmp = Path(keep or tempfile.mkdtemp(prefix="emolens-bench-dist-"))
    common = ["extract", "--emotions", emotions, "--max-texts-per-emotion", str(max_texts),
              "--quiet", "--compute-dtype", "float32"]
    if model:
        common += ["--model", model]
    if layers:
        common += ["--layers", layers]
    if max_neutral is not None:
        common += ["--max-neutral", str(max_neutral)]
    py = [sys.executable, "-m", "emolens"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "emolens"]
    single_wall, single_ex, out1 = _cli(py + common + ["--out", str(tmp / "single")], 2)
    dist_wall, dist_ex, out2 = _cli(torchrun + common + ["--out", str(tmp / "dist")], 1)
    print(out1.strip(), out2.strip(), sep="\n")
    a = emolens.EmotionRegistry.load(tmp / "single")
    b = emolens.EmotionRegistry.load(tmp / "dist")
    da, db = a.tensor(), b.tensor()
    cos = (da * db).sum(-1) / (da.norm(dim=-1) * db.norm(dim=-1))
    return {
        "distributed_setup": f"{len(emotions.split(','))} emotions ({emotions}), "
                             f"{max_texts} training stories each, all validation stories, "
                             f"{'all' if max_neutral is None else max_neutral} neutral "
                             f"dialogues, layers {a.layers}, model {model or 'default'}; "
                             "float32",
        "distributed_1x2_wall_s": round(single_wall, 2),
        "distributed_2x1_wall_s": round(dist_wall, 2),
        "distributed_1x2_extract_s": single_ex,
        "distributed_2x1_extract_s": dist_ex,
        "distributed_extract_speedup": round(single_ex / dist_ex, 3),
        "distributed_wall_speedup": round(single_wall / dist_wall, 3),
        "distributed_max_abs_diff": float((da - db).abs().max()),
        "distributed_min_cosine": round(float(cos.min()), 8),
        "distributed_validation_equal": a.validation.get("confusion_best_layer")
        == b.validation.get("confusion_best_layer")
        and a.validation.get("accuracy_by_layer") == b.validation.get("accuracy_by_layer"),
        "distributed_load_avg": round(os.getloadavg()[0], 2),
        "distributed_torch": torch.__version__,
    }


def run(ctx: object) -> dict[str, object]:
    return measure(model=getattr(ctx, "model_name", None))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--emotions", default=CORE6)
    ap.add_argument("--max-texts", type=int, default=16)
    ap.add_argument("--model", default=None)
    ap.add_argument("--layers", default=None)
    ap.add_argument("--max-neutral", type=int, default=None)
    ap.add_argument("--keep", default=None, help="keep both registries in this folder")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    res = measure(args.emotions, args.max_texts, args.model, args.layers, args.keep,
                  args.max_neutral)
    print(json.dumps(res, indent=2))
    from emolens.io import write_json

    path = Path(args.out)
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(res)  # other keys are kept
    write_json(path, merged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
