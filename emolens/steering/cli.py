"""``emolens steer``: steered generation, dose-response sweeps, the word test, llama.cpp export.

    emolens steer generate --registry REG --spec calm=0.1 "Tell me about your morning."
    emolens steer generate --registry REG --spec desperate=0.1 --positions generated --chat "Hi"
    emolens steer sweep --registry REG --emotion calm --strengths 0 0.05 0.1 --out out/sweep
    emolens steer word-test --registry REG --strength 0.3 --out out/word_test.json
    emolens steer export --registry REG --spec calm=1 --out calm.gguf

``--spec`` takes ``name=strength`` pairs (strength in units of the site's mean residual norm).
``--model`` defaults to the offline default model; the registry must have been built on it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from emolens.errors import SteeringError


def parse_spec(pairs: list[str]) -> dict[str, float]:
    """``["calm=0.05", "desperate=-0.05"]`` -> ``{"calm": 0.05, "desperate": -0.05}``."""
    out: dict[str, float] = {}
    for item in pairs:
        for part in item.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise SteeringError(f"--spec item {part!r} must look like name=strength "
                                    "(e.g. calm=0.05)")
            try:
                out[name.strip()] = float(value)
            except ValueError as err:
                raise SteeringError(f"--spec strength {value!r} for {name.strip()!r} is not a "
                                    "number") from err
    if not out:
        raise SteeringError("--spec is empty; pass e.g. --spec calm=0.05")
    return out


def _common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    p.add_argument("--registry", required=True, help="registry folder (EmotionRegistry.save)")
    if model:
        p.add_argument("--model", default=None, help="model name (default: the offline default)")
        p.add_argument("--not-strict", action="store_true",
                       help="accept a registry built on another model id (shapes must match)")
    p.add_argument("--layer", type=int, default=None, help="layer (default: the registry's)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``steer`` actions on ``parser``."""
    parser.set_defaults(_steer_parser=parser)
    sub = parser.add_subparsers(dest="steer_action", metavar="ACTION")
    g = sub.add_parser("generate", help="generate with and without steering, side by side")
    _common(g)
    g.add_argument("prompt", nargs="+", help="prompt text(s)")
    g.add_argument("--spec", nargs="+", required=True, help="name=strength pairs")
    g.add_argument("--op", default="add", help="add | ablate | clamp | ablate_add")
    g.add_argument("--positions", default="all", help="all | prompt | generated")
    g.add_argument("--chat", action="store_true", help="send each prompt as a user message")
    g.add_argument("--max-new-tokens", type=int, default=40)
    g.add_argument("--no-cache", action="store_true", help="decode without the KV cache")

    s = sub.add_parser("sweep", help="dose-response of one emotion: CSV and figure")
    _common(s)
    s.add_argument("--emotion", required=True)
    s.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    s.add_argument("--prompts", nargs="+", default=None, help="user messages (chat)")
    s.add_argument("--max-new-tokens", type=int, default=40)
    s.add_argument("--out", required=True, help="folder for sweep.csv and sweep.png")

    w = sub.add_parser("word-test", help="does steering toward an emotion raise its own word?")
    _common(w)
    w.add_argument("--strength", type=float, default=0.3)
    w.add_argument("--emotions", nargs="+", default=None)
    w.add_argument("--prompts", nargs="+", default=None, help="neutral prompts")
    w.add_argument("--out", default=None, help="write the result as JSON here")

    e = sub.add_parser("export", help="write a llama.cpp control vector (GGUF)")
    _common(e, model=False)
    e.add_argument("--spec", nargs="+", required=True, help="name=strength pairs")
    e.add_argument("--layers", type=int, nargs="+", default=None)
    e.add_argument("--out", required=True, help="output .gguf path")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    import emolens
    from emolens.registry import EmotionRegistry

    model = emolens.load_model(args.model)
    reg = EmotionRegistry.load(args.registry, model, strict=not args.not_strict)
    return model, reg


def main(args: argparse.Namespace) -> int:
    """Run the chosen ``steer`` action; returns the exit status."""
    action = getattr(args, "steer_action", None)
    if action is None:
        parser = getattr(args, "_steer_parser", None)
        if parser is not None:
            parser.print_help()
        return 0
    if action == "export":
        from emolens.registry import EmotionRegistry
        from emolens.steering.control_vectors import export_control_vector

        reg = EmotionRegistry.load(args.registry)
        path = export_control_vector(reg, parse_spec(args.spec), args.out, layers=args.layers)
        print(f"wrote {path} (direction.N = output of block N; load in llama.cpp with "
              f"--control-vector-scaled {path} 1.0)")
        return 0
    model, reg = _load(args)
    if action == "generate":
        from emolens.generation import generate
        from emolens.steering.interventions import Steering

        spec: Any = parse_spec(args.spec)
        if args.op == "ablate":
            spec = list(spec)
        steering = Steering(reg, spec, layer=args.layer, positions=args.positions, op=args.op,
                            strict=not args.not_strict)
        prompts: list[Any] = [[{"role": "user", "content": p}] if args.chat else p
                              for p in args.prompt]
        kw = {"max_new_tokens": args.max_new_tokens, "use_past_kv_cache": not args.no_cache}
        plain = generate(model, prompts, **kw)
        steered = generate(model, prompts, steering=steering, **kw)
        for p, a, b in zip(args.prompt, plain.texts, steered.texts):
            print(f"prompt:   {p}\nplain:    {a.strip()}\nsteered:  {b.strip()}\n")
        print(json.dumps(steering.describe()))
        return 0
    if action == "sweep":
        from emolens.steering.prompts import OPEN_PROMPTS, as_chats
        from emolens.steering.sweeps import plot_sweep, sweep

        prompts = as_chats(args.prompts or list(OPEN_PROMPTS[:3]))
        df = sweep(model, reg, args.emotion, args.strengths, prompts, layer=args.layer,
                   max_new_tokens=args.max_new_tokens)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "sweep.csv", index=False)
        plot_sweep(df, "emotion_words").savefig(out / "sweep.png", dpi=120)
        cols = [c for c in ("emotion_words", "lexicon", "perplexity") if c in df]
        print(df.groupby("strength")[cols].mean().round(3).to_string())
        print(f"wrote {out / 'sweep.csv'} and {out / 'sweep.png'}")
        return 0
    if action == "word-test":
        from emolens.io import write_json
        from emolens.steering.prompts import NEUTRAL_STATEMENTS
        from emolens.steering.sweeps import emotion_word_test

        res = emotion_word_test(model, reg, args.emotions, strength=args.strength,
                                prompts=args.prompts or list(NEUTRAL_STATEMENTS), layer=args.layer,
                                progress=True)
        print(repr(res))
        print(res.deltas.round(3).to_string())
        if args.out:
            write_json(args.out, res.to_dict())
        return 0
    raise SteeringError(f"unknown steer action {action!r}")  # pragma: no cover
