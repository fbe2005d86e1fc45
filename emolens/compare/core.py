"""``compare``: the same measures on several models, and the similarity of their geometry.

Per model (extracted with one preset, on the corpus's splits):

- directions are fitted on ``train``; the default layer is the best ``dev`` accuracy; accuracy
  and the shuffled-label control are reported on ``test``, at every layer (against relative
  depth, ``(layer + 1) / n_layers``: the share of blocks the residual stream has passed) and at
  the default layer with a bootstrap interval over test texts;
- geometry at the default layer: PC1/PC2 explained variance (bootstrap over emotions) and the
  Pearson r of PC1 with valence and PC2 with arousal (published norms, bootstrap and
  permutation p: ``emolens.geometry.affect_correlation``), and r by depth;
- the emotion-word steering test at the default layer (``emolens.steering.emotion_word_test``,
  the main job's call): hits and the own-minus-best-other margin against random directions of
  equal norm, with the paired difference over emotions;
- the implicit-scenario diagonal at the reply-opening token (``emolens.readout.scenario_matrix``,
  columns standardised over the scenarios): the share of scenarios whose own emotion is the top
  column, with a bootstrap interval over scenarios, chance and a shuffled-label reference;
- between every pair of models: RSA of their emotion geometry (``emolens.compare.similarity``).

The figures put the models on one axis by parameter count. Every figure in ``results.json``
names the split it comes from.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from emolens.errors import InputError

if TYPE_CHECKING:
    from emolens.compat import Model

#: 12 emotions of the default corpus that the published norms rate, spread over valence and
#: arousal (the CPU preset's subset): the 9 with implicit scenarios and bored, content, excited.
#: (16 with 12 training stories each did not fit 60 minutes for the four-model ladder on 2
#: shared cores: docs/compare.md.)
CPU_EMOTIONS = ("afraid", "angry", "bored", "calm", "content", "excited", "guilty", "happy",
                "nervous", "proud", "sad", "surprised")

#: 6 of the study's core emotions in ``CPU_EMOTIONS`` (both signs of valence and arousal) that
#: the CPU preset steers in the word test.
CPU_WORD_EMOTIONS = ("happy", "proud", "calm", "sad", "angry", "afraid")


@dataclass(frozen=True)
class Preset:
    """Size of a comparison: which emotions, how many training stories each, how many neutral
    dialogues, which layers, how many resamples.

    ``emotions=None``: every emotion of the corpus; ``max_texts_per_emotion=None``: every
    training story; ``layer_stride=1``: every layer; ``n_neutral=None``: every neutral dialogue.
    Held-out (dev, test) stories are never capped.

    The word test steers ``word_emotions`` (``None``: the study's core emotions among the run's,
    else all of them) at ``word_strength`` (units of the mean residual norm at the default
    layer) on the first user message of the first ``word_prompts`` neutral dialogues, as the
    main job does; ``word_prompts=0`` skips it. ``scenarios=False`` skips the scenario diagonal.
    """

    name: str
    emotions: tuple[str, ...] | None
    max_texts_per_emotion: int | None
    n_neutral: int | None
    layer_stride: int
    n_boot: int
    n_perm: int
    batch_size: int = 16
    word_emotions: tuple[str, ...] | None = None
    word_prompts: int = 8
    word_strength: float = 0.1
    scenarios: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {
    "cpu": Preset("cpu", CPU_EMOTIONS, max_texts_per_emotion=6, n_neutral=16, layer_stride=1,
                  n_boot=1000, n_perm=1000, batch_size=8, word_emotions=CPU_WORD_EMOTIONS,
                  word_prompts=4, word_strength=0.1),
    "gpu": Preset("gpu", None, max_texts_per_emotion=None, n_neutral=None, layer_stride=1,
                  n_boot=2000, n_perm=2000, batch_size=32, word_emotions=None, word_prompts=8,
                  word_strength=0.1),
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
                           "test": "accuracy and the shuffled control are reported on it",
                           "scenarios": "the implicit-scenario diagonal is scored on them",
                           "neutral": "the word test steers their first user messages"}}

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
    """PC1/PC2 share of variance of the emotion vectors, with a bias-corrected bootstrap over
    emotions.

    The share of the top components is biased upward at small n, in the sample and more so in
    a resample (an emotion drawn twice leaves fewer distinct vectors, whose variance fewer
    components carry): the percentile interval of the resamples sits above the sample value
    and, on planted data with a known population share (tests/unit/test_compare.py), almost
    never covers it; dropping the repeated draws does not help (fewer vectors, larger share).
    ``ci`` is therefore the basic (reverse-percentile) bootstrap interval
    ``[2 v - q97.5, 2 v - q2.5]`` clipped to [0, 1], which corrects a shift of the resamples;
    ``bias`` is the mean of the resamples minus ``value`` and ``bias_corrected`` is
    ``value - bias``; ``ci_percentile`` is the raw percentile interval, kept for reference.
    """
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
    bias = draws.nanmean(0) - point
    out: dict[str, Any] = {}
    for k in range(2):
        v = float(point[k])
        out[f"PC{k + 1}"] = {
            "value": v, "ci": [max(0.0, 2 * v - float(hi[k])), min(1.0, 2 * v - float(lo[k]))],
            "bias": float(bias[k]), "bias_corrected": v - float(bias[k]),
            "ci_percentile": [float(lo[k]), float(hi[k])],
            "ci_method": "basic (reverse-percentile) bootstrap over emotions, clipped to [0, 1]"}
    return out


def measure_registry(reg: Any, norms: Any, *, n_boot: int = 1000, n_perm: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """Every per-model figure of the comparison from one registry (see the module docstring).

    ``norms``: a mapping ``emotion -> (valence, arousal)`` (an ``AffectRatings`` records its
    source). Needs a registry extracted with dev and test splits for the accuracy figures.
    """
    from emolens.geometry import affect_correlation, affect_orient, emotion_pca

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
    orient = affect_orient(list(reg.emotions), norms)
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


# ---------------------------------------------------------------------------- model measures
def _standardise(per: torch.Tensor) -> torch.Tensor:
    """Each column z-scored over the rows (``ScenarioMatrix.column_standardised``'s rule)."""
    return (per - per.mean(0, keepdim=True)) / per.std(0, keepdim=True).clamp(min=1e-8)


def scenario_diagonal(per_scenario: torch.Tensor, scenario_emotions: Sequence[str],
                      columns: Sequence[str], *, n_boot: int = 1000, n_perm: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """The scenario diagonal of raw readouts ``per_scenario`` ``[scenario, column]``.

    Rule: z-score each column over the scenarios, then a scenario is a hit when its own
    emotion is its top column. ``accuracy`` is the share of hits; ``mean_own_z`` the mean z of
    the own emotion's column. Intervals: percentile bootstrap over scenarios, each resample
    re-standardised. References: ``chance`` = 1 / columns, and ``shuffled``: the same
    statistics with the scenario labels permuted (the z-scores do not depend on the labels),
    with a one-sided permutation p (share at least the observed one).
    """
    from transformer_lens.utilities.statistics import derive_generator

    per = per_scenario.detach().double().cpu()
    cols, emos = list(columns), list(scenario_emotions)
    if per.ndim != 2 or per.shape != (len(emos), len(cols)):
        raise InputError(f"per_scenario of shape {tuple(per.shape)} does not match "
                         f"{len(emos)} scenarios x {len(cols)} columns")
    missing = sorted({e for e in emos if e not in cols})
    if missing:
        raise InputError(f"scenario emotions {missing} are not among the columns; pass only "
                         "scenarios of the registry's emotions (scenario_matrix drops them)")
    if len(emos) < 2:
        raise InputError(f"the scenario diagonal needs at least 2 scenarios, got {len(emos)}")
    own = torch.tensor([cols.index(e) for e in emos])

    def stats(z: torch.Tensor, own_idx: torch.Tensor) -> tuple[float, float]:
        hit = (z.argmax(1) == own_idx).double().mean()
        return float(hit), float(z.gather(1, own_idx[:, None]).mean())

    z = _standardise(per)
    acc, own_z = stats(z, own)
    n = len(emos)
    gen = derive_generator(seed, "emolens-compare", "scenarios")
    boots = torch.tensor([stats(_standardise(per[idx]), own[idx])
                          for idx in (torch.randint(0, n, (n,), generator=gen)
                                      for _ in range(n_boot))], dtype=torch.float64)
    perms = torch.tensor([stats(z, own[torch.randperm(n, generator=gen)])
                          for _ in range(n_perm)], dtype=torch.float64)

    def ci(k: int) -> list[float]:
        return [float(boots[:, k].quantile(0.025)), float(boots[:, k].quantile(0.975))]

    def shuffled(k: int, obs: float) -> dict[str, float]:
        return {"mean": float(perms[:, k].mean()), "q95": float(perms[:, k].quantile(0.95)),
                "p_value": (1 + int((perms[:, k] >= obs - 1e-12).sum())) / (1 + n_perm)}

    return {"rule": "columns z-scored over the scenarios; a scenario is a hit when its own "
                    "emotion is its top column",
            "accuracy": acc, "hits": round(acc * n), "n_scenarios": n, "ci": ci(0),
            "ci_method": "percentile bootstrap over scenarios (each resample re-standardised)",
            "chance": 1.0 / len(cols), "shuffled": {**shuffled(0, acc), "n_perm": n_perm},
            "mean_own_z": {"value": own_z, "ci": ci(1), "shuffled": shuffled(1, own_z)}}


def measure_scenarios(model: Model, reg: Any, scenarios: Sequence[Any], *, n_boot: int = 1000,
                      n_perm: int = 1000, seed: int = 0, batch_size: int = 16
                      ) -> dict[str, Any] | None:
    """``scenario_matrix`` at the registry's default layer, scored by ``scenario_diagonal``;
    the row diagonal of the raw and column-standardised matrices is kept beside it. ``None``
    when no scenario implies one of the registry's emotions."""
    from emolens.readout import scenario_matrix

    scen = [s for s in scenarios if s.emotion in reg.emotions]
    if len(scen) < 2:
        return None
    sm = scenario_matrix(model, reg, scen, batch_size=batch_size)
    zsm = sm.column_standardised()
    out = scenario_diagonal(sm.per_scenario, sm.scenario_emotions, sm.columns, n_boot=n_boot,
                            n_perm=n_perm, seed=seed)
    out.update({"split": "implicit scenarios (used for no fit and no choice)", "layer": sm.layer,
                "rows": sm.rows, "columns": sm.columns,
                "raw": {"per_scenario_accuracy": sm.per_scenario_accuracy,
                        "row_diagonal_hits": sm.diagonal_hits, "n_rows": sm.n_rows},
                "row_diagonal_hits": zsm.diagonal_hits, "n_rows": zsm.n_rows,
                "matrix": zsm.to_dict()["matrix"]})
    return out


def word_emotions_for(preset: Preset, emotions: Sequence[str]) -> list[str]:
    """The emotions the word test steers: the preset's among ``emotions``, else the study's
    core emotions among them, else all of them."""
    from emolens.stimuli.emotions import CORE_EMOTIONS

    have = list(emotions)
    if preset.word_emotions is not None:
        pick = [e for e in preset.word_emotions if e in have]
        if len(pick) >= 2:
            return pick
    return [e for e in CORE_EMOTIONS if e in have] or have


def measure_word_test(model: Model, reg: Any, prompts: Sequence[Any], emotions: Sequence[str],
                      *, strength: float = 0.1, seed: int = 0, batch_size: int = 16
                      ) -> dict[str, Any] | None:
    """``emotion_word_test`` (the main job's call: all positions, the default layer, random
    directions of equal norm as the control) and the paired difference of the margins over
    emotions (emotion ``i`` against control direction ``i``). ``None`` with fewer than two
    emotions or no prompt."""
    from emolens.stats import paired_difference
    from emolens.steering import emotion_word_test

    emos = list(emotions)
    if len(emos) < 2 or not prompts:
        return None
    wt = emotion_word_test(model, reg, emos, strength=strength, prompts=list(prompts),
                           batch_size=batch_size)
    d = wt.to_dict()
    own = [wt.margins[e] for e in emos]
    ctl = [wt.control_margins[e] for e in emos]
    diff = paired_difference(own, ctl, seed=seed)
    d.update({"split": "neutral dialogues (first user message); no story is used",
              "emotions": emos,
              "margin_minus_control": diff.to_dict(),
              "margin_unit": "nats of log P(' word') after the 'They feel' question"})
    return d


# ---------------------------------------------------------------------------- the run
def _resolve_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        from emolens.errors import unknown_name_message

        raise InputError(unknown_name_message("compare preset", preset, list(PRESETS)))
    return PRESETS[preset]


def _layers_for(model: Model, stride: int) -> list[int]:
    n = int(model.cfg.n_layers)
    layers = list(range(0, n, stride))
    if layers[-1] != n - 1:
        layers.append(n - 1)
    return layers


def _model_facts(model: Model, name: str) -> dict[str, Any]:
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
        preset: ``"cpu"`` (12 emotions, 6 training stories each, 16 neutral dialogues, every
            layer; word test: 6 emotions on 4 prompts), ``"gpu"`` (everything; word test: the
            12 core emotions on 8 prompts) or a ``Preset``.
        emotions: override the preset's emotions.
        norms: ``emotion -> (valence, arousal)``; default: the published norms
            (``emolens.load_affect_ratings``), whose source every output records.
        out: folder for ``results.json``, ``report.html`` and ``registries/<name>/``.
    """
    from emolens.extraction import extract_emotions
    from emolens.io import json_safe, safe_filename, write_json
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
    # the main job's word-test prompts: the first user message of the first neutral dialogues
    word_prompts = [list(r.messages)[:1] for r in corpus.neutral[:max(p.word_prompts, 0)]]
    scenarios = list(getattr(corpus, "scenarios", []) or [])
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
            reg.save(out_dir / "registries" / safe_filename(name))
        registries[name] = reg
        t1 = time.perf_counter()
        word = measure_word_test(model, reg, word_prompts, word_emotions_for(p, reg.emotions),
                                 strength=p.word_strength, seed=seed, batch_size=p.batch_size)
        t_word = time.perf_counter() - t1
        scen = (measure_scenarios(model, reg, scenarios, n_boot=p.n_boot, n_perm=p.n_perm,
                                  seed=seed, batch_size=p.batch_size) if p.scenarios else None)
        t_scen = time.perf_counter() - t1 - t_word
        rec = {**facts, **measure_registry(reg, norms, n_boot=p.n_boot, n_perm=p.n_perm,
                                           seed=seed),
               "word_test": word if word is not None else {
                   "skipped": "fewer than 2 emotions to steer or no neutral prompt"},
               "scenarios": scen if scen is not None else {
                   "skipped": "switched off by the preset" if not p.scenarios else
                   "fewer than 2 scenarios imply the run's emotions"},
               "seconds": {"load": round(t_load, 1), "extract": round(t_extract, 1),
                           "word_test": round(t_word, 1), "scenarios": round(t_scen, 1)},
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
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "results.json", json_safe(result.to_dict()))
        if report:
            from emolens.compare.report import comparison_report

            comparison_report(result).save(out_dir / "report.html")
    return result


