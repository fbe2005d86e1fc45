"""``emolens run --out DIR [--model NAME] [--emotions ...] [--quick]``."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", default=None, help="model name or folder (default: offline default)")
    p.add_argument("--emotions", nargs="+", default=None, help="emotions to use (default: all)")
    p.add_argument("--quick", action="store_true", help="6 emotions, every second layer")
    p.add_argument("--method", default="mean_diff", help="extraction method")
    p.add_argument("--sections", nargs="+", default=None, help="only these report sections")
    p.add_argument("--no-reuse", action="store_true", help="extract again even if cached")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def main(args: argparse.Namespace) -> int:
    from emolens.pipeline.run import RunConfig, run

    results = run(RunConfig(out=args.out, model=args.model, emotions=args.emotions,
                            quick=args.quick, method=args.method, sections=args.sections,
                            reuse_registry=not args.no_reuse, batch_size=args.batch_size,
                            progress=not args.quiet))
    print(f"report: {args.out / 'report.html'}")
    print(f"results: {args.out / 'results.json'}")
    return 0 if not results["run"]["errors"] else 1
