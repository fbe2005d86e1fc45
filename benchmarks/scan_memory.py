"""``emolens scan`` at 1x and 4x: wall time and peak memory (the scan must stream: flat memory).

The bundled mixed collection (572 texts) is replicated into JSONL files of ``copies`` x 572 and
``4 * copies`` x 572 texts; each is scanned by the real CLI in a fresh process under
``/usr/bin/time -v`` (peak resident set size of the process, model included).

    python benchmarks/scan_memory.py --registry REG [--copies 10] [--layer 4] [--batch-size 64]

Figures merge into ``benchmarks/results.json`` under ``scan_*`` (other keys are kept). Not run
by ``run_all.py`` (it needs a registry and takes minutes).
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


def _scan(data: Path, registry: str, out: Path, layer: int | None, batch: int,
          threads: int, max_tokens: int) -> dict[str, float]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "emolens", "scan", "--data", str(data),
           "--registry", registry, "--out", str(out), "--batch-size", str(batch), "--quiet",
           "--max-tokens", str(max_tokens)]
    if layer is not None:
        cmd += ["--layer", str(layer)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"scan failed:\n{proc.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    scan_s = float(re.search(r"scan ([0-9.]+) s", proc.stdout).group(1))
    n = json.loads((out / "top_examples.json").read_text())
    print(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 1), "scan_s": scan_s, "peak_rss_mb": round(rss / 1024, 1),
            "texts": n["n_texts"], "tokens": n["n_tokens"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--copies", type=int, default=10, help="1x = copies x 572 texts")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from emolens.io import write_json
    from emolens.stimuli import load_mixed_texts

    texts = load_mixed_texts()
    tmp = Path(tempfile.mkdtemp(prefix="emolens-scan-mem-"))
    res: dict[str, object] = {}
    for mult in (1, 4):
        data = tmp / f"mixed-{mult}x.jsonl"
        with open(data, "w") as f:
            for _ in range(args.copies * mult):
                for t in texts:
                    f.write(json.dumps({"text": t}) + "\n")
        r = _scan(data, args.registry, tmp / f"out-{mult}x", args.layer, args.batch_size,
                  args.threads, args.max_tokens)
        print(f"{mult}x: {r}")
        for k, v in r.items():
            res[f"scan_{mult}x_{k}"] = v
    res["scan_time_ratio_4x_over_1x"] = round(float(res["scan_4x_scan_s"])  # type: ignore[arg-type]
                                              / float(res["scan_1x_scan_s"]), 3)  # type: ignore[arg-type]
    res["scan_rss_ratio_4x_over_1x"] = round(float(res["scan_4x_peak_rss_mb"])  # type: ignore[arg-type]
                                             / float(res["scan_1x_peak_rss_mb"]), 3)  # type: ignore[arg-type]
    res["scan_setup"] = (f"emolens scan, default model, layer {args.layer}, batch "
                         f"{args.batch_size}, max tokens {args.max_tokens}, "
                         f"{args.threads} threads, mixed collection x "
                         f"{args.copies} and x {4 * args.copies}; load avg "
                         f"{os.getloadavg()[0]:.1f}")
    print(json.dumps(res, indent=2))
    path = Path(args.out)
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(res)
    write_json(path, merged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
