"""``emolens extract --corpus NAME|PATH --out REG``: build and save a registry, on 1 or N processes.

    emolens extract --out reg/                      # bundled corpus, default model, all layers
    torchrun --nproc-per-node 4 -m emolens extract --corpus default --model FOLDER --out reg/

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised (gloo on CPUs, nccl on
GPUs, ``EMOLENS_DIST_TIMEOUT`` seconds per collective), each rank streams its token-balanced
shard, the sums are all-reduced, rank 0 saves the registry, every rank prints the same summary
and a failing rank ends all of them with its error (exit code 2).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from emolens.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="registry folder to write")
    p.add_argument("--corpus", default="default",
                   help="a bundled corpus name or a folder / .jsonl file (default: default)")
    p.add_argument("--model", default=None, help="model name or folder (default: offline default)")
    p.add_argument("--emotions", default=None, metavar="E,E,...",
                   help="comma-separated emotions (default: every emotion of the corpus)")
    p.add_argument("--layers", default=None, metavar="L,L,...",
                   help="comma-separated layers (default: every layer)")
    p.add_argument("--method", default="mean_diff", help="extraction method (default mean_diff)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-texts-per-emotion", type=int, default=None)
    p.add_argument("--compute-dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    p.add_argument("--no-validate", action="store_true", help="skip the held-out pass")
    p.add_argument("--max-neutral", type=int, default=None,
                   help="use only the first N neutral dialogues for denoising (default: all)")
    p.add_argument("--device", default=None, help="model device (default: cuda:LOCAL_RANK under "
                   "torchrun with nccl, else TransformerLens's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_list(text: str | None, kind: type = str, what: str = "value") -> list[Any] | None:
    """``"a,b"`` -> ``["a", "b"]`` (``None`` stays ``None``)."""
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise InputError(f"empty {what} list {text!r}; write e.g. a,b,c")
    try:
        return [kind(x) for x in items]
    except ValueError:
        raise InputError(f"bad {what} list {text!r}: every item must be a {kind.__name__}") from None


def load_corpus_arg(spec: str) -> Any:
    from emolens.stimuli import Corpus, available_corpora, load_corpus

    if spec in available_corpora():
        return load_corpus(spec)
    path = Path(spec)
    if path.exists():
        return Corpus.from_jsonl(path, name=path.stem)
    return load_corpus(spec)  # raises CorpusError naming the bundled corpora


def start(device: str | None) -> tuple[Any, str | None]:
    """Initialise the process group when launched by torchrun; the model device to use."""
    from emolens.distributed import SINGLE, init_distributed, launched_by_torchrun

    if not launched_by_torchrun():
        return SINGLE, device
    ctx = init_distributed()
    if device is None and ctx.backend == "nccl":
        device = str(ctx.device)
    return ctx, device


def finish(ctx: Any) -> None:
    if ctx.active:
        import gc

        import torch.distributed as dist

        # models sit in reference cycles; collected at interpreter exit in a gloo process they
        # aborted 5 of 20 two-rank runs ("terminate called without an active exception")
        gc.collect()
        dist.destroy_process_group()


def main(args: argparse.Namespace) -> int:
    import time

    ctx, device = start(args.device)
    try:
        import emolens

        t0 = time.perf_counter()
        corpus = load_corpus_arg(args.corpus)
        model = emolens.load_model(args.model, device=device)
        t_load = time.perf_counter() - t0
        neutral = None
        if args.max_neutral is not None:
            if args.max_neutral < 0:
                raise InputError(f"--max-neutral must be >= 0, got {args.max_neutral}")
            neutral = [list(r.messages) for r in corpus.neutral][:args.max_neutral]
        reg = emolens.extract_emotions(
            model, corpus, neutral=neutral, layers=parse_list(args.layers, int, "layer"),
            emotions=parse_list(args.emotions, str, "emotion"), method=args.method,
            batch_size=args.batch_size, max_texts_per_emotion=args.max_texts_per_emotion,
            compute_dtype=args.compute_dtype, validate=not args.no_validate,
            progress=not args.quiet, distributed="auto" if not ctx.active else True)
        t_extract = time.perf_counter() - t0 - t_load
        if ctx.is_main:
            reg.save(args.out)
        ctx.barrier()  # the folder is complete before any rank reports
        if ctx.is_main:
            acc = reg.validation.get("accuracy_by_layer", {})
            print(f"registry: {args.out}  ({len(reg.emotions)} emotions x {len(reg.layers)} "
                  f"layers, default layer {reg.default_layer}"
                  + (f", held-out accuracy {acc.get(str(reg.default_layer))}" if acc else "")
                  + ")")
            print(f"ranks: {ctx.world_size} ({ctx.backend or 'one process'}); load "
                  f"{t_load:.1f} s, extract {t_extract:.1f} s")
        return 0
    finally:
        finish(ctx)
