"""``emolens scan --data FILE --registry DIR --out DIR``: max-activating examples of a registry.

    emolens scan --data texts.jsonl --registry reg/ --out scan/ --k 20 --layer 14
    torchrun --nproc-per-node 4 -m emolens scan --data big.jsonl --registry reg/ --out scan/

The file is streamed (``.jsonl``, ``.csv``, ``.tsv``, ``.txt``; see ``emolens.readout.scan``).
Writes ``top_examples.json`` and a standalone ``top_examples.html`` (circuitsvis token views).
Under torchrun every rank scans every N-th text and rank 0 writes the merged result.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path,
                   help="texts: .jsonl (strings or objects), .csv/.tsv (header row), .txt")
    p.add_argument("--registry", required=True, type=Path, help="a saved registry folder")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--model", default=None,
                   help="model name or folder (default: the offline default model)")
    p.add_argument("--field", default="text", help="field/column holding the text")
    p.add_argument("--emotions", default=None, metavar="E,E,...", help="only these emotions")
    p.add_argument("--layer", type=int, default=None, help="registry layer (default: its own)")
    p.add_argument("--k", type=int, default=20, help="examples kept per emotion")
    p.add_argument("--window", type=int, nargs=2, default=[12, 4], metavar=("BEFORE", "AFTER"),
                   help="context tokens kept around each example")
    p.add_argument("--all-tokens", action="store_true",
                   help="allow several examples from one text (default: one per text)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=256, help="texts are cut after this many")
    p.add_argument("--html-n", type=int, default=10, help="examples per emotion in the page")
    p.add_argument("--device", default=None)
    p.add_argument("--no-strict", action="store_true",
                   help="accept a registry recorded for another model id (shapes must agree)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    import time

    from emolens.errors import InputError
    from emolens.extraction.cli import finish, parse_list, start

    if not args.data.is_file():
        raise InputError(f"--data {str(args.data)!r}: no such file")
    ctx, device = start(args.device)
    try:
        import emolens
        from emolens.readout.scan import top_examples

        reg = emolens.EmotionRegistry.load(args.registry)
        t0 = time.perf_counter()
        model = emolens.load_model(args.model, device=device)
        t1 = time.perf_counter()
        res = top_examples(model, reg, args.data, emotions=parse_list(args.emotions),
                           k=args.k, layer=args.layer, window=tuple(args.window),
                           one_per_text=not args.all_tokens, batch_size=args.batch_size,
                           max_tokens=args.max_tokens, field=args.field,
                           progress=not args.quiet, strict=not args.no_strict,
                           distributed=True if ctx.active else "auto")
        t2 = time.perf_counter()
        if ctx.is_main:
            res.save(args.out, html_n=args.html_n)
            print(res.statement())
            for e in res.emotions:
                top = res.examples[e][:3]
                print(f"  {e:>12}: " + " | ".join(f"{x.score:+.2f} {x.context('[{}]')!r}"
                                                  for x in top))
            print(f"wrote {args.out / 'top_examples.json'} and top_examples.html; ranks "
                  f"{ctx.world_size}; load {t1 - t0:.1f} s, scan {t2 - t1:.1f} s "
                  f"({res.n_texts / max(t2 - t1, 1e-9):.1f} texts/s)")
        ctx.barrier()
        return 0
    finally:
        finish(ctx)
