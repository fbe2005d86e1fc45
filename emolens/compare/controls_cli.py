"""``emolens controls --models A B:12 ... --out DIR``: story banks, then the geometry controls.

Each model's bank (``emolens.compare.bank``) is built once into ``--banks`` (default
``~/.cache/emolens/banks``) and reused by later calls with the same settings (resumable: an
interrupted build streams only the emotions it had not finished). ``NAME:N`` caps that model's
training stories at N per emotion (a large model on a CPU); held-out stories are never capped.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True,
                   help="catalogue names (emolens models list), each optionally NAME:N to use "
                        "at most N training stories per emotion")
    p.add_argument("--out", required=True, help="output folder (results.json, report.html)")
    p.add_argument("--banks", default=None,
                   help="folder of the story banks (default: ~/.cache/emolens/banks)")
    p.add_argument("--emotions", default="rated",
                   help="'rated' (emotions with published valence/arousal norms, default), "
                        "'all', or a comma-separated list")
    p.add_argument("--depths", default="0.4,0.55,0.65,0.75",
                   help="relative depths of the bank sites, comma-separated")
    p.add_argument("--sizes", default="6,12,24,all",
                   help="stories per emotion on the learning curves ('all': every shared one)")
    p.add_argument("--splits", type=int, default=20, help="random half-splits")
    p.add_argument("--draws", type=int, default=10, help="random draws per curve size")
    p.add_argument("--n-neutral", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--compute-dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _model_spec(spec: str) -> tuple[str, int | None]:
    from emolens.errors import InputError

    name, _, cap = spec.partition(":")
    if not cap:
        return name, None
    if not cap.isdigit() or int(cap) < 1:
        raise InputError(f"--models {spec!r}: the cap after ':' must be a whole number >= 1, "
                         f"e.g. {name}:12")
    return name, int(cap)


def _numbers(text: str, what: str) -> list[float]:
    from emolens.errors import InputError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None


def main(args: argparse.Namespace) -> int:
    import gc

    from emolens.compare.bank import build_story_bank
    from emolens.compare.controls import geometry_controls
    from emolens.compare.controls_report import controls_report
    from emolens.errors import InputError
    from emolens.io import json_safe, write_json
    from emolens.models import load_model
    from emolens.stimuli import load_affect_ratings, load_corpus

    specs = [_model_spec(s) for s in args.models]
    corpus = load_corpus()
    if args.emotions == "rated":
        rated = load_affect_ratings()
        emotions = [e for e in corpus.emotions if e in rated]
    elif args.emotions == "all":
        emotions = list(corpus.emotions)
    else:
        emotions = [e.strip() for e in args.emotions.split(",") if e.strip()]
    sizes: list[int | None] = []
    for s in args.sizes.split(","):
        s = s.strip()
        if s == "all":
            sizes.append(None)
        elif s.isdigit() and int(s) >= 1:
            sizes.append(int(s))
        else:
            raise InputError(f"--sizes takes whole numbers >= 1 and 'all', got {s!r}")
    depths = _numbers(args.depths, "--depths")
    root = Path(args.banks) if args.banks else Path.home() / ".cache" / "emolens" / "banks"
    banks = {}
    for name, cap in specs:
        model = load_model(name)
        banks[name] = build_story_bank(
            model, corpus, emotions=emotions, depths=depths, max_train_per_emotion=cap,
            n_neutral=args.n_neutral, batch_size=args.batch_size,
            compute_dtype=args.compute_dtype, path=root / f"{name}-cap{cap or 'all'}",
            progress=not args.no_progress)
        del model
        gc.collect()
    res = geometry_controls(banks, corpus, n_splits=args.splits, sizes=sizes,
                            n_draws=args.draws, seed=args.seed, progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    write_json(out / "results.json", json_safe(res.to_dict()))
    controls_report(res).save(out / "report.html")
    print(res.statement())
    print(f"wrote {out}/results.json and {out}/report.html ({res.run['seconds']} s analysis)")
    return 0
