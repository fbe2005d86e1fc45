"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/results.json`` (a flat JSON object).

Each bench module defines ``run(ctx) -> dict[str, float]``; figures are measured side by side in
one run, so ratios compare like with like on a shared, noisy machine. Nothing here asserts a
time: goals are printed beside the figures.

    python benchmarks/run_all.py [--only NAME ...] [--batch N]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


class Context:
    """Shared, lazily loaded state (the default model) and run options for bench modules."""

    def __init__(self, batch: int, device: str | None, model_name: str | None = None):
        self.batch = batch
        self.device = device
        self.model_name = model_name
        self._model = None

    @property
    def model(self):
        if self._model is None:
            import emolens

            self._model = emolens.load_model(self.model_name, device=self.device)
        return self._model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", help="bench module names (without bench_ and .py)")
    ap.add_argument("--batch", type=int, default=16, help="batch size for throughput figures")
    ap.add_argument("--device", default=None)
    ap.add_argument("--model", default=None,
                    help="model name or folder (default: the embedded default model); a folder "
                         "made by benchmarks/random_weights_model.py has the default's shape")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(HERE.parent))
    ctx = Context(args.batch, args.device, args.model)
    from emolens.hardware import cpu_features

    results: dict[str, object] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "cpu": cpu_features().flags(),
        "batch": args.batch,
        "model": args.model or "default",
        "device": args.device or "cpu",
    }
    goals: dict[str, str] = {}
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if args.only and name not in args.only:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        results.update(mod.run(ctx))
        goals.update(getattr(mod, "GOALS", {}))
        print(f"[bench] {name} done in {time.perf_counter() - t0:.1f}s", flush=True)
    from emolens.io import write_json

    old = Path(args.out)  # keep the peers_* figures, written by `make bench-peers` (bench_peers.py)
    if old.is_file():
        results.update({k: v for k, v in json.loads(old.read_text()).items()
                        if k.startswith("peers_") and k not in results})
    write_json(args.out, results)
    width = max(len(k) for k in results)
    print(f"\n{'figure':<{width}}  {'value':>12}  goal")
    for k, v in results.items():
        val = f"{v:.4g}" if isinstance(v, float) else str(v)
        print(f"{k:<{width}}  {val:>12}  {goals.get(k, '')}")
    print(f"\nwritten: {args.out}")
    json.dumps(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
