"""``emolens run --out DIR [--model NAME] [--emotions ...] [--quick | --full] [--study-round2]``."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", default=None, help="model name or folder (default: offline default)")
    p.add_argument("--emotions", nargs="+", default=None, help="emotions to use (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 6 emotions, every second layer, 16 stories per emotion, "
                        "small steering and causality sizes (under 2 minutes on 2 CPU cores)")
    p.add_argument("--full", action="store_true",
                   help="the complete data sets for the causality and round-2 study sections "
                        "(hours on 2 CPU cores; for a GPU); runs the opt-in sections too")
    p.add_argument("--study-round2", dest="study_round2", action="store_true",
                   help="also run the opt-in round-2 study sections (steering_score, "
                        "reply_prediction, sycophancy, speakers: several minutes more on 2 CPU "
                        "cores) at "
                        "this run's sizes")
    p.add_argument("--method", default="mean_diff", help="extraction method")
    p.add_argument("--sections", nargs="+", default=None, help="only these report sections")
    p.add_argument("--no-reuse", action="store_true", help="extract again even if cached")
    p.add_argument("--batch-size", type=int, default=None,
                   help="texts per forward (default: 8 on a CPU, 32 on a GPU)")
    p.add_argument("--compute-dtype", "--extraction-dtype", dest="compute_dtype",
                   choices=["auto", "bfloat16", "float32"], default="auto",
                   help="dtype of the extraction's forward passes (default auto: bf16 autocast "
                        "only on hardware with native bf16, e.g. AVX512-BF16/AMX CPUs or CUDA; "
                        "float32 elsewhere, where emulated bf16 is 6-17x slower)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    from emolens.pipeline.run import RunConfig, run

    results = run(RunConfig(out=args.out, model=args.model, emotions=args.emotions,
                            quick=args.quick, full=args.full,
                            study_round2=args.study_round2, method=args.method, sections=args.sections,
                            reuse_registry=not args.no_reuse, batch_size=args.batch_size,
                            compute_dtype=args.compute_dtype,
                            progress=not args.quiet))
    print(f"report: {args.out / 'report.html'}")
    print(f"results: {args.out / 'results.json'}")
    return 0 if not results["run"]["errors"] else 1
