"""``compare``: the same measures on several models, and the similarity of their geometry.

Per model (extracted with one preset, on the corpus's splits):

- directions are fitted on ``train``; the default layer is the best ``dev`` accuracy; accuracy
  and the shuffled-label control are reported on ``test``, at every layer (against relative
  depth, ``(layer + 1) / n_layers``: the share of blocks the residual stream has passed) and at
  the default layer with a bootstrap interval over test texts;
- geometry at the default layer: PC1/PC2 explained variance (bootstrap over emotions) and the
  Pearson r of PC1 with valence and PC2 with arousal (published norms, bootstrap and
  permutation p: ``emolens.geometry.affect_correlation``), and r by depth;
- between every pair of models: RSA of their emotion geometry (``emolens.compare.similarity``).

The figures put the models on one axis by parameter count. Every figure in ``results.json``
names the split it comes from.
"""
from __future__ import annotations

import gc
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from emolens.errors import InputError

#: 16 emotions of the default corpus that the published norms rate, spread over valence and
#: arousal (the CPU preset's subset).
CPU_EMOTIONS = ("afraid", "angry", "anxious", "bored", "calm", "content", "depressed",
                "excited", "grateful", "guilty", "happy", "lonely", "nervous", "proud", "sad",
                "surprised")


@dataclass(frozen=True)
class Preset:
    """Size of a comparison: which emotions, how many training stories each, how many neutral
    dialogues, which layers, how many resamples.

    ``emotions=None``: every emotion of the corpus; ``max_texts_per_emotion=None``: every
    training story; ``layer_stride=1``: every layer; ``n_neutral=None``: every neutral dialogue.
    Held-out (dev, test) stories are never capped.
    """

    name: str
    emotions: tuple[str, ...] | None
    max_texts_per_emotion: int | None
    n_neutral: int | None
    layer_stride: int
    n_boot: int
    n_perm: int
    batch_size: int = 16

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {
    "cpu": Preset("cpu", CPU_EMOTIONS, max_texts_per_emotion=12, n_neutral=48, layer_stride=1,
                  n_boot=1000, n_perm=1000, batch_size=8),
    "gpu": Preset("gpu", None, max_texts_per_emotion=None, n_neutral=None, layer_stride=1,
                  n_boot=2000, n_perm=2000, batch_size=32),
}


@dataclass
class ComparisonResult:
    """What ``compare`` measured: ``models`` (one dict per model, by parameter count),
    ``rsa`` (one dict per pair), the preset, the norms' provenance and the run's facts."""

    models: list[dict[str, Any]]
    rsa: list[dict[str, Any]]
    preset: dict[str, Any]
    norms: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)
    registries: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"models": self.models, "rsa": self.rsa, "preset": self.preset,
                "norms": self.norms, "run": self.run,
                "splits": {"train": "directions are fitted on it",
                           "dev": "the default layer is chosen on it",
                           "test": "accuracy and the shuffled control are reported on it"}}

    def rsa_matrix(self) -> tuple[list[str], torch.Tensor]:
        """Model names and the symmetric ``[n, n]`` RSA rho matrix (1 on the diagonal)."""
        names = [m["name"] for m in self.models]
        mat = torch.eye(len(names), dtype=torch.float64)
        for r in self.rsa:
            i, j = names.index(r["a"]), names.index(r["b"])
            mat[i, j] = mat[j, i] = r["rho"]
        return names, mat


# ---------------------------------------------------------------------------- per model
def _bootstrap_accuracy(correct: int, total: int, n_boot: int, seed: int
                        ) -> tuple[float, float]:
    from emolens.stats import bootstrap_ci

    if total < 2:
        return float("nan"), float("nan")
    x = torch.zeros(total, dtype=torch.float64)
    x[:correct] = 1.0
    return bootstrap_ci(x, n_resamples=n_boot, seed=seed)


def _explained_variance(mat: torch.Tensor, n_boot: int, seed: int) -> dict[str, Any]:
    """PC1/PC2 share of variance of the emotion vectors, with a bootstrap over emotions."""
    from transformer_lens.utilities.statistics import derive_generator

    def ratio(m: torch.Tensor) -> torch.Tensor:
        c = m - m.mean(0, keepdim=True)
        s = torch.linalg.svdvals(c) ** 2
        return s[:2] / s.sum().clamp(min=1e-300)

    m = mat.double()
    point = ratio(m)
    gen = derive_generator(seed, "emolens-compare", "evr")
    n = m.shape[0]
    draws = torch.stack([ratio(m[torch.randint(0, n, (n,), generator=gen)])
                         for _ in range(n_boot)])
    lo, hi = torch.nanquantile(draws, 0.025, dim=0), torch.nanquantile(draws, 0.975, dim=0)
    return {f"PC{k + 1}": {"value": float(point[k]), "ci": [float(lo[k]), float(hi[k])]}
            for k in range(2)}


def _orientation(emotions: list[str], norms: Any) -> dict[str, str]:
    """PC1 positive for the highest-valence rated emotion, PC2 for the highest-arousal one."""
    rated = [e for e in emotions if e in norms]
    if not rated:
        return {}
    return {"PC1": max(rated, key=lambda e: norms[e][0]),
            "PC2": max(rated, key=lambda e: norms[e][1])}


def measure_registry(reg: Any, norms: Any, *, n_boot: int = 1000, n_perm: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """Every per-model figure of the comparison from one registry (see the module docstring).

    ``norms``: a mapping ``emotion -> (valence, arousal)`` (an ``AffectRatings`` records its
    source). Needs a registry extracted with dev and test splits for the accuracy figures.
    """
    from emolens.geometry import affect_correlation, emotion_pca

    n_layers = int(reg.metadata.get("n_layers") or reg.metadata.get("model", {}).get("n_layers")
                   or max(reg.layers) + 1)
    val = reg.validation
    out: dict[str, Any] = {"layers": list(reg.layers), "n_layers": n_layers,
                           "relative_depth": [round((la + 1) / n_layers, 4) for la in reg.layers],
                           "default_layer": reg.default_layer,
                           "default_layer_chosen_by": reg.metadata.get("default_layer_chosen_by"),
                           "emotions": list(reg.emotions)}
    out["default_relative_depth"] = round((reg.default_layer + 1) / n_layers, 4)
    if val:
        out["dev"] = {"split": "dev", "accuracy_by_layer": val.get("accuracy_by_layer"),
                      "shuffled_accuracy_by_layer": val.get("shuffled_accuracy_by_layer"),
                      "n_texts": val.get("n_texts"), "chance": val.get("chance")}
    test = val.get("test") if val else None
    if test:
        key = str(reg.default_layer)
        acc = float(test["accuracy_by_layer"][key])
        n = int(test["n_texts"])
        lo, hi = _bootstrap_accuracy(round(acc * n), n, n_boot, seed)
        out["test"] = {
            "split": "test", "accuracy_by_layer": test["accuracy_by_layer"],
            "shuffled_accuracy_by_layer": test.get("shuffled_accuracy_by_layer"),
            "n_texts": n, "chance": test.get("chance"),
            "at_default_layer": {"layer": reg.default_layer, "accuracy": acc, "ci": [lo, hi],
                                 "shuffled": (test.get("shuffled_accuracy_by_layer") or {}
                                              ).get(key),
                                 "ci_method": "percentile bootstrap over test texts"}}
    mat = reg.matrix(None)
    geo: dict[str, Any] = {"layer": reg.default_layer, "split": "train (directions); layer "
                           "chosen on dev; norms external",
                           "explained_variance": _explained_variance(mat, n_boot, seed)}
    orient = _orientation(list(reg.emotions), norms)
    rated = [e for e in reg.emotions if e in norms]
    if len(rated) >= 5 and len(reg.emotions) >= 3:
        pca = emotion_pca(reg, None, orient=orient)
        ac = affect_correlation(pca, norms, n_boot=n_boot, n_perm=n_perm, seed=seed)
        geo["affect"] = ac.to_dict()
        geo["orientation"] = orient
        by_layer = {}
        for la in reg.layers:
            p = emotion_pca(reg, la, orient=orient)
            c = affect_correlation(p, norms, n_boot=1, n_perm=1, seed=seed)
            by_layer[str(la)] = {"valence_r": c.valence_r, "arousal_r": c.arousal_r}
        geo["affect_by_layer"] = by_layer
    out["geometry"] = geo
    return out


# ---------------------------------------------------------------------------- the run
def _resolve_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        from emolens.errors import unknown_name_message

        raise InputError(unknown_name_message("compare preset", preset, list(PRESETS)))
    return PRESETS[preset]


def _layers_for(model: Any, stride: int) -> list[int]:
    n = int(model.cfg.n_layers)
    layers = list(range(0, n, stride))
    if layers[-1] != n - 1:
        layers.append(n - 1)
    return layers


def _model_facts(model: Any, name: str) -> dict[str, Any]:
    from emolens.models.catalogue import facts_for_model
    from emolens.models.provenance import model_provenance

    prov = model_provenance(model)
    entry = facts_for_model(model)
    return {"name": name, "model_id": prov.model_id, "catalogue": entry.name if entry else None,
            "n_params": int(sum(p.numel() for p in model.parameters())),
            "n_layers": int(model.cfg.n_layers), "d_model": int(model.cfg.d_model),
            "quantisation": prov.quantisation, "dtype": prov.dtype,
            "licence": entry.licence if entry else None}


def compare(models: Sequence[Any], corpus: Any = None, *, preset: str | Preset = "cpu",
            emotions: Sequence[str] | None = None, norms: Any = None,
            out: str | Path | None = None, device: Any = None,
            compute_dtype: Any = "auto", seed: int = 0, progress: bool = True,
            report: bool = True) -> ComparisonResult:
    """Extract and measure every model with one preset; RSA between every pair.

    Args:
        models: catalogue names (loaded one at a time with ``emolens.load_model`` and freed
            before the next) and/or loaded TransformerLens models.
        corpus: a ``Corpus`` with train/dev/test splits (default: the bundled one).
        preset: ``"cpu"`` (16 emotions, 12 training stories each, 48 neutral dialogues, every
            layer), ``"gpu"`` (everything) or a ``Preset``.
        emotions: override the preset's emotions.
        norms: ``emotion -> (valence, arousal)``; default: the published norms
            (``emolens.load_affect_ratings``), whose source every output records.
        out: folder for ``results.json``, ``report.html`` and ``registries/<name>/``.
    """
    from emolens.extraction import extract_emotions
    from emolens.stimuli import load_affect_ratings, load_corpus
    from emolens.stimuli.norms import norms_info

    if not models:
        raise InputError("compare needs at least one model (names or loaded models)")
    p = _resolve_preset(preset)
    corpus = corpus if corpus is not None else load_corpus()
    emos = list(emotions if emotions is not None else (p.emotions or corpus.emotions))
    unknown = [e for e in emos if e not in corpus.emotions]
    if unknown:
        from emolens.errors import unknown_name_message

        raise InputError(unknown_name_message("emotion", unknown[0], corpus.emotions))
    if norms is None:
        norms = load_affect_ratings(emotions=emos)
    neutral = [list(r.messages) for r in corpus.neutral][:p.n_neutral]
    t_all = time.perf_counter()
    per_model: list[dict[str, Any]] = []
    registries: dict[str, Any] = {}
    out_dir = Path(out) if out is not None else None
    for spec in models:
        t0 = time.perf_counter()
        if isinstance(spec, str):
            from emolens.models import load_model

            model = load_model(spec, device=device)
            name = spec
        else:
            model = spec
            from emolens.models.provenance import model_provenance

            name = model_provenance(model).model_id
        if name in registries:
            raise InputError(f"model {name!r} is listed twice")
        t_load = time.perf_counter() - t0
        facts = _model_facts(model, name)
        reg = extract_emotions(model, corpus, layers=_layers_for(model, p.layer_stride),
                               emotions=emos, neutral=neutral, batch_size=p.batch_size,
                               max_texts_per_emotion=p.max_texts_per_emotion,
                               compute_dtype=compute_dtype, progress=progress)
        t_extract = time.perf_counter() - t0 - t_load
        if out_dir is not None:
            reg.save(out_dir / "registries" / _safe(name))
        registries[name] = reg
        rec = {**facts, **measure_registry(reg, norms, n_boot=p.n_boot, n_perm=p.n_perm,
                                           seed=seed),
               "seconds": {"load": round(t_load, 1), "extract": round(t_extract, 1)},
               "compute_dtype": reg.metadata.get("compute_dtype")}
        per_model.append(rec)
        if isinstance(spec, str):
            del model
            gc.collect()
    per_model.sort(key=lambda m: m["n_params"])
    pairs = []
    from emolens.compare.similarity import registry_rsa

    names = [m["name"] for m in per_model]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            ra, rb = registries[names[i]], registries[names[j]]
            r = registry_rsa(ra, rb, n_boot=p.n_boot, n_perm=p.n_perm, seed=seed)
            pairs.append({"a": names[i], "b": names[j], "layer_a": ra.default_layer,
                          "layer_b": rb.default_layer, **r.to_dict(),
                          "split": "train (directions) at dev-chosen layers"})
    import platform

    run = {"seconds": round(time.perf_counter() - t_all, 1), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(),
           "torch_threads": torch.get_num_threads(), "device": str(device or "default"),
           "corpus": {"name": corpus.name, "content_hash": corpus.content_hash},
           "seed": seed}
    result = ComparisonResult(per_model, pairs, {**p.to_dict(), "emotions": emos},
                              norms_info(norms), run, registries)
    if out_dir is not None:
        from emolens.io import write_json

        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "results.json", _json_safe(result.to_dict()))
        if report:
            from emolens.compare.report import comparison_report

            comparison_report(result).save(out_dir / "report.html")
    return result


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
