"""Dose-response of emotion readouts: readouts at the reply-opening token across the corpus
templates' values (only a number changes), with the expected direction checked per emotion.
Draw it with ``emolens.views.plot_dose_panels`` (the frame's columns and the checks).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from emolens.causality._common import slice_batch
from emolens.causality.ab import BehaviourResult, est_dict
from emolens.compat import cache_to_layer
from emolens.positions import reply_or_last
from emolens.runtime import batches, model_device, progress_bar, rows_per_chunk
from emolens.scoring import project
from emolens.stats import pearson, spearman
from emolens.tokens import to_inputs

if TYPE_CHECKING:
    from emolens.compat import Model


def _load_templates() -> list[Any]:
    try:
        from emolens.stimuli import load_corpus

        return list(load_corpus().templates)
    except ImportError:  # pragma: no cover - corpus module absent
        path = Path(__file__).parents[1] / "stimuli" / "data" / "default" / "templates.jsonl"
        from types import SimpleNamespace

        return [SimpleNamespace(**json.loads(line)) for line in path.read_text().splitlines()
                if line.strip()]


def dose_response(
    model: Model,
    registry: Any,
    *,
    templates: Sequence[Any] | None = None,
    layer: int | None = None,
    emotions: Sequence[str] | None = None,
    seed: int = 0,
    max_tokens: int = 2048,
    strict: bool = True,
    progress: bool = True,
) -> BehaviourResult:
    """Readouts at the reply-opening token as a template's number grows.

    For each template and each emotion it names in ``expected`` (``"up"``/``"down"``): Spearman
    and Pearson correlations of the readout with log(value) (intervals over the template's
    values), and whether the sign agrees with the expectation. ``emotions``: extra emotions to
    record in the frame (default: every registry emotion).
    """
    from transformer_lens.utilities.statistics import success_rate_ci

    registry.check_model(model, strict=strict)
    site = registry.site(layer)
    temps = list(templates if templates is not None else _load_templates())
    emos = list(registry.emotions if emotions is None else emotions)
    convs, meta = [], []
    for t in temps:
        for v in t.values:
            convs.append([{"role": "user", "content": t.text.replace("{X}", str(v))}])
            meta.append((t.id, float(v)))
    batch = to_inputs(model, convs)
    dev = model_device(model)
    per = rows_per_chunk(batch.tokens.shape[1], max_tokens)
    vals = []
    for sl in progress_bar(list(batches(len(batch), per)), desc="dose-response",
                           enabled=progress):
        b = slice_batch(batch, sl)
        kw = {k: v.to(dev) for k, v in b.forward_kwargs().items()}
        with torch.no_grad():
            x = cache_to_layer(model, b.tokens.to(dev), [site.name], site.layer + 1,
                               **kw)[site.name]
        pos = reply_or_last(b).to(x.device)
        vals.append(project(x[torch.arange(len(b), device=x.device), pos].float(), registry,
                            site.layer, emotions=emos).cpu())
    R = torch.cat(vals)
    rows = []
    for k, (tid, v) in enumerate(meta):
        for ei, e in enumerate(emos):
            rows.append({"template": tid, "value": v, "log_value": math.log(v) if v > 0 else
                         float("nan"), "emotion": e, "readout": float(R[k, ei])})
    df = pd.DataFrame(rows)
    checks = []
    for t in temps:
        for e, direction in (t.expected or {}).items():
            if e not in emos:
                checks.append({"template": t.id, "emotion": e, "expected": direction,
                               "status": "emotion not in registry"})
                continue
            sub = df[(df.template == t.id) & (df.emotion == e)]
            x = sub.log_value.to_numpy()
            y = sub.readout.to_numpy()
            rho = spearman(x, y, seed=seed, n_resamples=500, n_permutations=2000)
            r = pearson(x, y, seed=seed, n_resamples=500, n_permutations=2000)
            sign = 1 if direction == "up" else -1
            same = (not math.isnan(rho.value)) and rho.value * sign > 0
            status = ("confirmed" if same and rho.excludes(0.0) else
                      "same sign, interval covers 0" if same else "opposite or flat")
            checks.append({"template": t.id, "emotion": e, "expected": direction,
                           "spearman": est_dict(rho), "pearson_log": est_dict(r),
                           "same_sign": bool(same), "status": status})
    scored = [c for c in checks if "same_sign" in c]
    rate = success_rate_ci([c["same_sign"] for c in scored]) if scored else None
    summary: dict[str, Any] = {
        "site": site.name, "layer": site.layer, "position": "reply-opening token",
        "n_templates": len(temps), "n_prompts": len(convs), "n_expectations": len(scored),
        "n_same_sign": sum(c["same_sign"] for c in scored),
        "n_confirmed": sum(c["status"] == "confirmed" for c in scored),
        "same_sign_rate": None if rate is None else {
            "value": rate.point_estimate, "low": rate.ci_low, "high": rate.ci_high,
            "method": "Clopper-Pearson"},
        "chance_same_sign": 0.5,
        "checks": checks,
    }
    return BehaviourResult("dose-response", df, summary, {"checks": pd.DataFrame(
        [{k: v for k, v in c.items() if not isinstance(v, dict)} for c in checks])})
