"""``emolens compare --models A B ... --out DIR``."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True,
                   help="catalogue names (emolens models list) or local model folders")
    p.add_argument("--out", required=True, help="output folder (results.json, report.html)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu"],
                   help="cpu: 12 emotions, 6 training stories each, 16 neutral dialogues, "
                        "word test on 6 emotions x 4 prompts; gpu: the whole corpus, word "
                        "test on the 12 core emotions x 8 prompts (see docs/compare.md)")
    p.add_argument("--emotions", nargs="+", default=None, help="override the preset's emotions")
    p.add_argument("--device", default=None)
    p.add_argument("--compute-dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    from emolens.compare import compare

    res = compare(args.models, preset=args.preset, emotions=args.emotions, out=args.out,
                  device=args.device, compute_dtype=args.compute_dtype, seed=args.seed,
                  progress=not args.no_progress)
    for m in res.models:
        t = m.get("test", {}).get("at_default_layer", {})
        a = m["geometry"].get("affect", {})
        print(f"{m['name']:<22} layer {m['default_layer']:>2}  test acc {t.get('accuracy', float('nan')):.3f} "
              f"(shuffled {t.get('shuffled') or float('nan'):.3f})  r(PC1,valence) "
              f"{a.get('valence_r', float('nan')):+.2f}")
    for m in res.models:
        w, sc = m.get("word_test", {}), m.get("scenarios", {})
        line = f"{m['name']:<22}"
        if "hits" in w:
            a, d = w["mean_own_minus_best_other"], w["margin_minus_control"]
            line += (f" word test {w['hits']}/{w['n_emotions']} hits (random "
                     f"{w['control_hits']}/{w['n_emotions']}), margin {a['value']:+.2f} nats, "
                     f"minus random {d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]")
        else:
            line += f" word test: {w.get('skipped', 'not run')}"
        if "accuracy" in sc:
            line += (f"; scenarios {sc['hits']}/{sc['n_scenarios']} = {sc['accuracy']:.3f} "
                     f"[{sc['ci'][0]:.3f}, {sc['ci'][1]:.3f}] (shuffled "
                     f"{sc['shuffled']['mean']:.3f}, p={sc['shuffled']['p_value']:.3g})")
        else:
            line += f"; scenarios: {sc.get('skipped', 'not run')}"
        print(line)
    for r in res.rsa:
        print(f"RSA {r['a']} ~ {r['b']}: rho {r['rho']:+.3f} [{r['ci_low']:+.3f}, "
              f"{r['ci_high']:+.3f}] p={r['p_value']:.3g}")
    print(f"wrote {args.out}/results.json and {args.out}/report.html ({res.run['seconds']} s)")
    return 0
