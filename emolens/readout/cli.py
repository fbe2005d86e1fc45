"""``emolens evaluate``: accuracy of a saved registry's directions on your own labelled texts.

    emolens evaluate --data mine.jsonl --registry out/demo/registry
    emolens evaluate --data emotions.csv --registry REG --text-field sentence --label-field label \\
        --label-map joy=happy,fear=afraid,sadness=sad --drop-unknown --layers 10,14,18 --out r.json

The data file is JSONL (``.jsonl``: one object per line) or CSV (``.csv``, ``.tsv``: a header
row). The file, the label names and the registry are checked before the model loads, so a bad
row or an unknown label fails in a second, naming the file, line and field.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from emolens.errors import InputError

if TYPE_CHECKING:
    from emolens.compat import Model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path,
                   help="labelled texts: .jsonl (one object per line) or .csv/.tsv (header row)")
    p.add_argument("--registry", required=True, type=Path, help="a saved registry folder")
    p.add_argument("--model", default=None,
                   help="model name or folder (default: the offline default model)")
    p.add_argument("--text-field", default="text", help="field/column holding the text")
    p.add_argument("--label-field", default="emotion", help="field/column holding the label")
    p.add_argument("--label-map", default=None, metavar="A=B,...",
                   help="map your label names to registry emotions, e.g. joy=happy,fear=afraid "
                        "(an empty right side, neutral=, marks a label as not an emotion)")
    p.add_argument("--drop-unknown", action="store_true",
                   help="skip texts whose label is not a registry emotion (after --label-map)")
    p.add_argument("--layers", default=None, metavar="L,L,...",
                   help="layers to evaluate, e.g. 10,14,18 (default: every registry layer)")
    p.add_argument("--positions", default="content",
                   help="position policy of the per-text mean (default: content)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI")
    p.add_argument("--permutations", type=int, default=10000,
                   help="label shuffles for the p-value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-strict", action="store_true",
                   help="accept a registry recorded for another model id (shapes must agree)")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_label_map(text: str | None) -> dict[str, str | None] | None:
    """``"joy=happy,fear=afraid,neutral="`` -> ``{"joy": "happy", "fear": "afraid",
    "neutral": None}``."""
    if text is None:
        return None
    out: dict[str, str | None] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--label-map item {item!r} is not LABEL=EMOTION; write e.g. "
                             "--label-map joy=happy,fear=afraid")
        out[key.strip()] = value.strip() or None
    if not out:
        raise InputError(f"--label-map {text!r} maps nothing; write e.g. joy=happy,fear=afraid")
    return out


def parse_layers(text: str | None) -> list[int] | str | None:
    """``"10,14,18"`` -> ``[10, 14, 18]``; ``"all"`` or None -> every registry layer."""
    if text is None or text.strip() == "all":
        return None
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        layers = []
    if not layers:
        raise InputError(f"--layers must be comma-separated layer numbers such as 10,14,18 (or "
                         f"'all'), got {text!r}")
    return layers


def _fmt(x: float, spec: str = ".3f") -> str:
    return "nan" if math.isnan(x) else format(x, spec)


def run(args: argparse.Namespace, model: Model | None = None) -> int:
    """The command below its argument parsing: ``model`` is loaded from ``--model`` when not
    given (tests pass a model object)."""
    from emolens.errors import check_positive_int
    from emolens.io import check_output_file, write_json
    from emolens.readout.evaluation import _resolve_labels, evaluate, load_labelled
    from emolens.registry import EmotionRegistry

    # every argument is checked before the data, the registry and the model are read
    for name in ("batch_size", "bootstrap", "permutations"):
        check_positive_int(getattr(args, name), f"--{name.replace('_', '-')}")
    if args.out is not None:
        check_output_file(args.out, error=InputError, what="--out")
    texts, labels = load_labelled(args.data, text_field=args.text_field,
                                  label_field=args.label_field)
    label_map = parse_label_map(args.label_map)
    layers = parse_layers(args.layers)
    registry = EmotionRegistry.load(args.registry)
    _resolve_labels(labels, registry.emotions, label_map, args.drop_unknown)  # fail before load
    if model is None:
        from emolens.models import load_model

        model = load_model(args.model)
    ev = evaluate(model, registry, texts, labels, layers=layers, label_map=label_map,
                  drop_unknown=args.drop_unknown, batch_size=args.batch_size,
                  positions=args.positions, progress=not args.quiet, strict=not args.no_strict)
    df = ev.to_dataframe(n_bootstrap=args.bootstrap, n_permutations=args.permutations,
                         seed=args.seed)
    dropped = (f"; {ev.n_dropped} dropped (unknown labels: "
               + ", ".join(f"{k!r} x{v}" for k, v in ev.dropped.items()) + ")"
               if ev.n_dropped else "")
    skipped = (f"; {ev.n_no_positions} without a selected position" if ev.n_no_positions
               else "")
    print(f"{args.data}: {ev.n_texts} texts, {len(ev.emotions)} emotions "
          f"({', '.join(f'{e} {n}' for e, n in ev.label_counts().items())}){dropped}{skipped}")
    print(f"registry {registry.name!r} ({len(registry.emotions)} emotions); positions "
          f"{ev.positions!r}; rule: argmax over the {len(ev.emotions)} label emotions of "
          "(x - center) . v")
    n_all = len(ev.registry_emotions)
    print(f"{'layer':>7}  {'accuracy':>8}  {'95% CI':<15}  {'chance':>6}  {'p-value':>8}  "
          f"{f'acc/{n_all}':>8}")
    for r in df.itertuples():
        mark = "*" if r.layer == ev.best_layer else " "
        print(f"{mark}{int(r.layer):>6}  {r.accuracy:>8.3f}  "
              f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]  {r.chance:>6.3f}  {r.p_value:>8.2g}  "
              f"{r.accuracy_all:>8.3f}")
    print(f"* best layer {ev.best_layer} (chosen on this data: optimistic); registry default "
          f"layer {registry.default_layer}" + ("" if registry.default_layer in ev.layers
                                                else " (not evaluated)"))
    if args.out is not None:
        from emolens.models.provenance import model_provenance

        result = {"data": str(args.data), "registry": str(args.registry),
                  "registry_name": registry.name, "model": model_provenance(model).model_id,
                  "text_field": args.text_field, "label_field": args.label_field,
                  **ev.to_dict(n_bootstrap=args.bootstrap, n_permutations=args.permutations,
                               seed=args.seed)}
        write_json(args.out, result)
        print(f"results: {args.out}")
    return 0


def main(args: argparse.Namespace) -> int:
    return run(args)
