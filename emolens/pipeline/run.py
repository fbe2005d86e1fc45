"""``emolens run``: the study's checks end to end on one model, into one folder.

Writes ``DIR/report.html`` (one self-contained page), ``DIR/registry/`` (the directions) and
``DIR/results.json`` (every figure in the report, machine-readable). Sections run in order and
each adds to ``results`` under its own key; a section's failure is recorded, not hidden.
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emolens.stimuli.emotions import CORE_EMOTIONS

QUICK_EMOTIONS = ["happy", "calm", "desperate", "angry", "sad", "afraid"]
QUICK_STORIES = 16  # training stories per emotion in --quick
QUICK_NEUTRAL = 16  # neutral dialogues for the denoising PCA in --quick


@dataclass
class RunConfig:
    """Options of the main job.

    ``quick``: 6 emotions, every second layer, 16 training stories per emotion, smoke-test sizes
    for steering and causality (a check that everything runs, in under 2 minutes on 2 CPU
    cores; its numbers are noisy). ``compute_dtype``: the dtype of the extraction's forward
    passes, resolved by ``emolens.hardware.resolve_compute_dtype`` ("auto", default: bf16
    autocast only where the hardware runs bf16 natively, about 1.8x faster there, directions
    agree with float32 ones to cosine > 0.999, see benchmarks/bench_extraction.py; the model's
    own float32 elsewhere), or "float32" / "bfloat16". Everything else runs in the model's dtype.

    The study's round-2 experiments (issue 15; ``STUDY_SECTIONS``) are sized by
    ``STUDY_SIZES``: ``"quick"`` with ``quick``, ``"full"`` with ``full`` (the complete data
    sets, for a GPU; it also gives the causality section its ``FULL_SIZES``), ``"run"``
    otherwise (2 CPU cores). ``study_sizes``: overrides of single sizes (e.g.
    ``{"score_prompts": 4}``). The sections in ``OPT_IN`` run only with ``study_round2=True``
    (``--study-round2``), ``full=True`` or when named in ``sections``.
    """

    out: Path
    model: str | None = None
    emotions: Sequence[str] | None = None
    quick: bool = False
    method: str = "mean_diff"
    positions: str = "content"
    batch_size: int | None = None
    compute_dtype: str = "auto"
    progress: bool = True
    reuse_registry: bool = True
    sections: Sequence[str] | None = None
    seed: int = 0
    study_round2: bool = False
    full: bool = False
    study_sizes: dict[str, Any] | None = None


@dataclass
class RunContext:
    config: RunConfig
    model: Any = None  # a Model once loaded; Any spares each section a None check
    corpus: Any = None
    registry: Any = None
    report: Any = None
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    is_main: bool = True  # False on the other ranks of a torchrun launch

    def log(self, msg: str) -> None:
        if self.config.progress:
            print(f"[emolens run] {msg}", flush=True)


def _batch(ctx: RunContext) -> int:
    """Texts per forward for this run: ``--batch-size``, else the device's default."""
    from emolens.runtime import resolve_batch_size

    return resolve_batch_size(ctx.config.batch_size, ctx.model)


# ----------------------------------------------------------------------------- sections
def _section_model(ctx: RunContext) -> None:
    import emolens

    ctx.model = emolens.load_model(ctx.config.model)
    prov = emolens.model_provenance(ctx.model)
    ctx.results["model"] = {**prov.to_dict(), "n_heads": int(ctx.model.cfg.n_heads),
                            "n_ctx": int(ctx.model.cfg.n_ctx),
                            "content_key": model_content_key(prov)}
    note = ("The weights are the Q4_1 GGUF of SmolLM2-135M-Instruct de-quantised to float32, "
            "not the original bf16 weights." if prov.source == "gguf" else "")
    ctx.report.add_section("model", "Model", f"`{prov.model_id}`: {prov.n_layers} layers, "
                           f"d_model {prov.d_model}, vocabulary {prov.d_vocab}; weights "
                           f"{prov.weight_processing} (not folded or centred). {note}")


def _section_corpus(ctx: RunContext) -> None:
    from emolens.stimuli import load_corpus

    corpus = load_corpus()
    cfg = ctx.config
    emotions = list(cfg.emotions) if cfg.emotions else (QUICK_EMOTIONS if cfg.quick
                                                        else corpus.emotions)
    ctx.corpus = corpus.subset(emotions) if emotions != corpus.emotions else corpus
    summary = corpus.summary()
    ctx.results["corpus"] = {"name": corpus.name, "version": corpus.version,
                             "content_hash": corpus.content_hash, "used_emotions": emotions,
                             **{k: v for k, v in summary.items()}}
    ctx.report.add_section(
        "corpus", "Stimulus corpus",
        f"Bundled corpus `{corpus.name}` v{corpus.version}: {summary.get('n_stories')} stories "
        f"over {summary.get('n_emotions')} emotions and {summary.get('n_topics')} topics, "
        f"{summary.get('neutral')} neutral dialogues, {summary.get('scenarios')} implicit "
        f"scenarios, {summary.get('templates')} dose-response templates. This run uses "
        f"{len(emotions)} emotions. Each story shows its emotion without naming it; by a hash "
        "of their id, 10% of the stories are the dev split (it chooses the default layer) and "
        "another 10% the test split (the figures reported); the rest train.",
        limits="The stories were written for this project, in English, by its authors; the "
               "study used about 1,200 model-written stories per emotion.")
    ctx.report.add_table(corpus.stats().reset_index() if hasattr(corpus.stats(), "reset_index")
                         else corpus.stats(), "Stories per emotion")


def _resolved_dtype(ctx: RunContext) -> Any:
    from emolens.hardware import resolve_compute_dtype

    return resolve_compute_dtype(ctx.config.compute_dtype, ctx.model)


def model_content_key(prov: Any) -> str | None:
    """For a model loaded from a local folder, ``emolens.io.folder_content_key`` of the folder
    (sizes, mtimes and sampled bytes of every file): the registry cache must not outlive a
    change of the weights behind one path. None for the GGUF default and hub models (their
    revision is in the provenance)."""
    from emolens.io import folder_content_key

    folder = Path(str(prov.model_id))
    return folder_content_key(folder) if prov.source == "local" and folder.is_dir() else None


def _registry_key(ctx: RunContext, layers: list[int]) -> str:
    import emolens

    prov = emolens.model_provenance(ctx.model)
    content = ctx.results.get("model", {}).get("content_key") or model_content_key(prov)
    key = json.dumps({"model": prov.model_id, "rev": prov.revision, "content": content,
                      "wp": prov.weight_processing,
                      "corpus": ctx.corpus.content_hash, "emotions": ctx.corpus.emotions,
                      "method": ctx.config.method, "positions": ctx.config.positions,
                      "layers": layers, "quick": ctx.config.quick,
                      "compute_dtype": _resolved_dtype(ctx).name,
                      "emolens_registry_format": 2}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _section_registry(ctx: RunContext) -> None:
    import emolens
    from emolens.errors import RegistryError
    from emolens.models.loading import cache_root
    from emolens.registry import EmotionRegistry

    n = int(ctx.model.cfg.n_layers)
    layers = list(range(0, n, 2)) + ([n - 1] if (n - 1) % 2 else []) if ctx.config.quick \
        else list(range(n))
    cached = cache_root() / "registries" / _registry_key(ctx, layers)
    reg = None
    if ctx.config.reuse_registry and cached.exists():
        try:
            reg = EmotionRegistry.load(cached, ctx.model)
            ctx.log(f"reusing registry {cached}")
        except RegistryError as e:
            ctx.log(f"cached registry unusable ({e}); extracting again")
    if reg is None:
        ctx.log(f"extracting {len(ctx.corpus.emotions)} emotions at {len(layers)} layers")
        # --quick: 16 training stories per emotion and 16 neutral dialogues for the denoising
        # PCA (the validation split is never capped)
        quick = ctx.config.quick
        neutral = [list(r.messages) for r in ctx.corpus.neutral[:QUICK_NEUTRAL]] if quick else None
        reg = emolens.extract_emotions(ctx.model, ctx.corpus, layers=layers,
                                       method=ctx.config.method, positions=ctx.config.positions,
                                       batch_size=_batch(ctx), neutral=neutral,
                                       compute_dtype=ctx.config.compute_dtype,
                                       max_texts_per_emotion=QUICK_STORIES if quick else None,
                                       progress=ctx.config.progress)
        content = ctx.results.get("model", {}).get("content_key")
        if content:  # the weights the directions came from, beside the folder's path
            reg.metadata.setdefault("model", {})["content_key"] = content
        if ctx.is_main:
            reg.save(cached)
    ctx.registry = reg
    if ctx.is_main:
        reg.save(ctx.config.out / "registry")
    val = reg.validation  # dev split: it chose the default layer
    test = val.get("test") or val  # test split: the figures reported
    layers_s = [str(x) for x in reg.layers]
    acc = [test["accuracy_by_layer"][x] for x in layers_s]
    shuf = [test.get("shuffled_accuracy_by_layer", {}).get(x, float("nan")) for x in layers_s]
    dev_acc = [val["accuracy_by_layer"][x] for x in layers_s]
    ctx.results["registry"] = {"path": str(ctx.config.out / "registry"), "layers": reg.layers,
                               "default_layer": reg.default_layer, "emotions": reg.emotions,
                               "method": reg.metadata.get("method"),
                               "positions": reg.metadata.get("positions"),
                               "mean_norm": dict(zip(layers_s, reg.mean_norms.tolist())),
                               "extraction_seconds": reg.metadata.get("seconds"),
                               "compute_dtype": reg.metadata.get("compute_dtype") or "float32",
                               "compute_dtype_reason": reg.metadata.get("compute_dtype_reason"),
                               "max_texts_per_emotion": reg.metadata.get("max_texts_per_emotion"),
                               "neutral_dialogues": reg.metadata.get("neutral", {}).get("texts")}
    dl = str(reg.default_layer)
    ctx.results["validation"] = {
        **val, "default_layer": reg.default_layer,
        "default_layer_chosen_on": val.get("split", "validation"),
        "dev_default_layer_accuracy": val["accuracy_by_layer"][dl],
        "test_split": test.get("split", val.get("split")),
        "test_default_layer_accuracy": test["accuracy_by_layer"][dl],
        "test_n_texts": test["n_texts"],
        "test_max_shuffled_accuracy": max(shuf) if shuf else None,
        # the headline figures are the test split's (the dev split chose the layer)
        "default_layer_accuracy": test["accuracy_by_layer"][dl],
        "max_shuffled_accuracy": max(shuf) if shuf else None}
    from emolens.views import plot_layer_accuracy

    ctx.report.add_section(
        "validation", "Do the directions carry the emotion? Held-out accuracy by layer",
        f"Directions by the study's recipe ({reg.metadata['method']['name']}, positions "
        f"'{reg.metadata['positions']}': every token but the attention-sink first token) from the "
        f"training stories; each held-out story is classified by the argmax over "
        f"{len(reg.emotions)} emotions of the centred projection of its mean activation. Chance "
        f"is {val['chance']:.3f}. The default layer is chosen on the dev split "
        f"({val['n_texts']} stories) and every figure here is the test split's "
        f"({test['n_texts']} other stories). The dashed line is the same recipe with training "
        f"labels shuffled (mean over {len(val.get('shuffled_seeds', [])) or 'no'} permutations, "
        f"fitted in the same pass): it must sit at chance. Default layer: **{reg.default_layer}** "
        f"(test accuracy {test['accuracy_by_layer'][dl]:.3f}; dev "
        f"{val['accuracy_by_layer'][dl]:.3f}, chosen by "
        f"{reg.metadata.get('default_layer_chosen_by')}). Forward passes in "
        f"{reg.metadata.get('compute_dtype') or 'float32'} "
        f"({reg.metadata.get('compute_dtype_reason') or 'the model dtype'}).",
        limits="Held-out stories come from the same authors and style as the training stories, "
               "so this measures generalisation across stories and topics, not across writers.")
    ctx.report.add_figure(plot_layer_accuracy(reg.layers, {"test": acc, "dev": dev_acc},
                                              chance=val["chance"], shuffled=shuf,
                                              chosen=reg.default_layer),
                          "Held-out accuracy by layer (test split; the dev split chose the layer), "
                          "chance, and the shuffled-label control (test split)")


def _section_geometry(ctx: RunContext) -> None:
    from emolens import geometry as G
    from emolens.stimuli import load_affect_ratings

    reg = ctx.registry
    out: dict[str, Any] = {}
    ratings = load_affect_ratings()
    out["norms"] = ratings.provenance()
    orient = {"PC1": "happy"} if "happy" in reg.emotions else {}
    pca = G.emotion_pca(reg, orient=orient) if orient else G.emotion_pca(reg)
    out["pca"] = {"layer": reg.default_layer,
                  "explained_variance_ratio": [round(float(x), 4) for x in pca.explained_variance_ratio[:5]]}
    ctx.report.add_section(
        "geometry", "Geometry: valence and arousal",
        f"PCA of the {len(reg.emotions)} emotion vectors at layer {reg.default_layer}: PC1 "
        f"explains {float(pca.explained_variance_ratio[0]):.1%} of their variance, PC2 "
        f"{float(pca.explained_variance_ratio[1]):.1%} (study: 26% and 15% over 171 emotions).",
        limits=f"Valence/arousal ratings: {ratings.source} ({ratings.licence}); "
               f"{sum(e in ratings for e in reg.emotions)} of the {len(reg.emotions)} emotions "
               "are rated. Geometry is correlational: it does not show the model uses these "
               "directions.")
    if len(reg.emotions) >= 5:
        try:
            corr = G.affect_correlation(pca, ratings, seed=ctx.config.seed)
            out["affect_correlation"] = corr.to_dict()
            ctx.report.add_html(corr._repr_html_(), "PC1/PC2 against valence/arousal ratings "
                                "(Pearson r, 95% bootstrap interval over emotions)")
        except Exception as e:  # noqa: BLE001 - too few rated emotions in a custom run
            out["affect_correlation"] = {"error": str(e)}
    from emolens.views import plot_emotion_pca, plot_layer_similarity

    ctx.report.add_figure(plot_emotion_pca(pca.coords, pca.emotions,
                                           valence={e: ratings[e][0] for e in pca.emotions
                                                    if e in ratings},
                                           explained=pca.explained_variance_ratio,
                                           title=f"Emotion directions at {pca.hook}"),
                          "Emotion vectors on PC1 and PC2, coloured by valence rating")
    k = min(10, max(2, len(reg.emotions) // 3))
    clusters = G.emotion_clusters(reg, k=k, seed=ctx.config.seed)
    out["clusters"] = clusters.to_dict()
    ctx.report.add_html(clusters._repr_html_(), f"k-means clusters (k = {k}, cosine)")
    sim = G.cross_layer_similarity(reg)
    out["cross_layer_similarity"] = sim.to_dict()
    ctx.report.add_figure(plot_layer_similarity(sim.matrix, sim.layers,
                                                colorbar_label="Pearson r of off-diagonal cosines"),
                          "Cross-layer stability of the emotion similarity structure (r between "
                          "layers' cosine matrices)")
    ll = G.logit_lens(ctx.model, reg, k=8, emotions=[e for e in CORE_EMOTIONS if e in reg.emotions]
                      or None)
    top = (ll[ll["rank"] < 8].groupby("emotion")["promoted"]
           .apply(lambda s: " ".join(repr(t) for t in s)).to_dict())
    out["logit_lens_top_promoted"] = top
    ctx.report.add_table([{"emotion": e, "top promoted tokens": t} for e, t in top.items()],
                         "Logit lens: tokens each direction promotes through the final norm "
                         "and unembedding")
    ctx.results["geometry"] = out


def _section_scenarios(ctx: RunContext) -> None:
    from emolens.readout import read_emotions, scenario_matrix
    from emolens.views import plot_scenario_matrix, render_tokens

    reg = ctx.registry
    scen = [s for s in ctx.corpus.scenarios if s.emotion in reg.emotions] \
        if hasattr(ctx.corpus, "scenarios") else []
    if not scen:
        ctx.results["scenarios"] = {"skipped": "no scenarios for these emotions"}
        return
    sm = scenario_matrix(ctx.model, reg, scen, batch_size=_batch(ctx))
    # Secondary, added after the first full run showed a few columns (e.g. 'playful') on top of
    # every row: each readout emotion standardised over the scenarios (post hoc).
    zsm = sm.column_standardised()
    ctx.results["scenarios"] = {**sm.to_dict(), "column_standardised": {
        "note": "post hoc: each readout emotion z-scored over the scenarios before scoring",
        **{k: zsm.to_dict()[k] for k in ("diagonal_accuracy", "diagonal_hits",
                                         "per_scenario_accuracy")}}}
    n_scen = len(sm.scenario_emotions)
    ctx.report.add_section(
        "scenarios", "Implicit scenarios: the reply-opening token",
        f"{n_scen} user messages that imply an emotion without naming it, read at the token "
        f"that opens the assistant's reply (layer {sm.layer}). Rows: the implied emotion (mean "
        f"over its scenarios); columns: the readout. The row's top column is its own emotion for "
        f"{sm.diagonal_hits}/{sm.n_rows} emotions (chance {sm.chance:.3f} per row); single "
        f"scenarios: {round(sm.per_scenario_accuracy * n_scen)}/{n_scen}. Post hoc, with each "
        f"readout emotion standardised over the scenarios (removing a direction's constant "
        f"offset at this token): {zsm.diagonal_hits}/{zsm.n_rows} rows, "
        f"{round(zsm.per_scenario_accuracy * n_scen)}/{n_scen} single scenarios. "
        "(`emolens.readout.scenario_matrix(model, registry, corpus.scenarios)`, "
        "`.column_standardised()`.)",
        limits="Few scenarios per emotion; the readout at one token is noisy on a 135M model.")
    ctx.report.add_figure(plot_scenario_matrix(sm.matrix.numpy(), sm.rows, sm.columns),
                          "Scenario emotion x readout emotion at the reply-opening token")
    ctx.report.add_figure(plot_scenario_matrix(zsm.matrix.numpy(), zsm.rows, zsm.columns,
                                               title="columns standardised over scenarios"),
                          "The same, each readout emotion standardised over the scenarios "
                          "(post hoc)")
    try:
        ro = read_emotions(ctx.model, reg, [list(scen[0].messages)])
        view = render_tokens(ro, list(sm.rows[:6]), index=0)
        ctx.report.add_html(view, f"Token view of a scenario ({scen[0].emotion})")
    except Exception as e:  # noqa: BLE001
        ctx.results["scenarios"]["token_view_error"] = str(e)


def _section_dose(ctx: RunContext) -> None:
    from emolens.causality import dose_response
    from emolens.causality.report import dose_figure

    reg = ctx.registry
    res = dose_response(ctx.model, reg, templates=list(ctx.corpus.templates),
                        seed=ctx.config.seed, progress=ctx.config.progress)
    s = res.summary
    ctx.results["dose_response"] = s
    rate = s["same_sign_rate"] or {}
    ctx.report.add_section(
        "dose_response", "Dose-response templates",
        f"Templates where only a number changes (e.g. a painkiller dose), read at the reply-"
        f"opening token (layer {s['layer']}). For each expected (template, emotion) pair, the "
        f"Spearman correlation of the readout with log(value): {s['n_same_sign']} of "
        f"{s['n_expectations']} have the expected sign (rate {rate.get('value', float('nan')):.2f}, "
        f"95% Clopper-Pearson {rate.get('low', float('nan')):.2f} to "
        f"{rate.get('high', float('nan')):.2f}; chance 0.5); {s['n_confirmed']} with a "
        "bootstrap interval excluding 0. (`emolens.causality.dose_response(model, registry, "
        "templates=corpus.templates)`.)",
        limits="A handful of values per template, so single-template intervals are wide.")
    ctx.report.add_figure(dose_figure(res), "Readout against the template's number, per "
                          "template; expected direction marked")


def _steer_prompts() -> list[Any]:
    from emolens.steering.prompts import OPEN_PROMPTS, as_chats

    return as_chats(OPEN_PROMPTS)


def _section_steering(ctx: RunContext) -> None:
    import emolens
    from emolens.stats import mean_estimate, spearman
    from emolens.steering import Steering, emotion_word_test, neutral_loss, plot_sweep, sweep
    from emolens.views import plot_heatmap

    reg = ctx.registry
    quick = ctx.config.quick
    emos = [e for e in CORE_EMOTIONS if e in reg.emotions] or reg.emotions
    out: dict[str, Any] = {"layer": reg.default_layer, "seconds": {}}
    t0 = time.perf_counter()
    neutral_prompts = [list(r.messages)[:1] for r in ctx.corpus.neutral[:2 if quick else 8]]
    wt = emotion_word_test(ctx.model, reg, emos, strength=0.1, prompts=neutral_prompts)
    out["emotion_word_test"] = wt.to_dict()
    out["seconds"]["word_test"] = round(time.perf_counter() - t0, 1)
    m_ci = out["emotion_word_test"]["mean_own_minus_best_other"]
    c_ci = out["emotion_word_test"]["control_mean_own_minus_best_other"]
    ctx.report.add_section(
        "steering", "Steering: does adding a direction raise its own emotion word?",
        f"The study's word test: steer toward each emotion (strength 0.1 x the mean residual norm "
        f"at layer {reg.default_layer}, all positions) and measure how log P(' word') changes "
        f"after a 'They feel' question, over {len(neutral_prompts)} neutral prompts. "
        f"{wt.hits}/{wt.n_emotions} emotions raise their own word more than any other emotion's "
        f"word; a random direction of equal norm does so for {wt.control_hits}/{wt.n_emotions} "
        f"(about 1 expected by chance). Own-word change minus the largest other-word change, "
        f"mean over emotions: {m_ci['value']:+.2f} nats (95% CI {m_ci['low']:+.2f} to "
        f"{m_ci['high']:+.2f}); random control {c_ci['value']:+.2f} ({c_ci['low']:+.2f} to "
        f"{c_ci['high']:+.2f}).",
        limits="Word log-probabilities of a 135M model (a word split into several tokens is "
               "scored by the sum of their log-probabilities, which favours short words); the "
               "interval is over emotions, not prompts. "
               "(`emolens.steering.emotion_word_test(model, registry, strength=0.1, "
               "prompts=...)`, `.margins`, `.margin_estimates()`.)")
    ctx.report.add_figure(plot_heatmap(wt.deltas.values, list(wt.deltas.index),
                                       list(wt.deltas.columns), title="change in log P(word)"),
                          "Rows: steered emotion; columns: emotion word")
    t0 = time.perf_counter()
    valence_emotion = "happy" if "happy" in reg.emotions else emos[0]
    # the study: 0.025-0.1 for behaviour, up to 0.5 for text demos
    strengths = [-0.2, -0.1, 0.0, 0.1, 0.2] if quick else \
        [-0.4, -0.2, -0.1, 0.0, 0.1, 0.2, 0.4]
    prompts = _steer_prompts()[: 4 if quick else None]
    df = sweep(ctx.model, reg, valence_emotion, strengths, prompts,
               judges=("lexicon",), max_new_tokens=16 if quick else 32,
               progress=ctx.config.progress)
    per: list[dict[str, Any]] = []
    for st in strengths:
        sub = df[df["strength"] == st]
        row: dict[str, Any] = {"strength": st, "n": len(sub),
                               "lexicon": mean_estimate(sub["lexicon"].tolist(),
                                                       seed=ctx.config.seed).to_dict()}
        if "perplexity" in sub:
            row["perplexity"] = mean_estimate(sub["perplexity"].tolist(),
                                             seed=ctx.config.seed).to_dict()
        per.append(row)
    means = [r["lexicon"]["value"] for r in per]
    rho = spearman(df["strength"].tolist(), df["lexicon"].tolist(), seed=ctx.config.seed)
    monotone = all(b >= a for a, b in zip(means, means[1:]))
    out["valence_sweep"] = {"emotion": valence_emotion, "strengths": strengths,
                            "n_prompts": len(prompts), "judge": "VADER compound (lexicon)",
                            "per_strength": per, "lexicon_mean": [round(m, 4) for m in means],
                            "monotone_non_decreasing": monotone,
                            "spearman_strength_vs_lexicon": rho.to_dict()}
    out["seconds"]["valence_sweep"] = round(time.perf_counter() - t0, 1)
    ctx.report.add_text(
        f"Valence sweep: steering toward '{valence_emotion}' at {len(strengths)} strengths from "
        f"{strengths[0]} to {strengths[-1]} on {len(prompts)} prompts; the VADER lexicon judges "
        f"the text (independent of the model and of the direction), perplexity under the "
        f"unsteered model measures fluency. Mean lexicon score by strength: "
        f"{', '.join(f'{m:+.2f}' for m in means)} (monotone: {'yes' if monotone else 'no'}; "
        f"Spearman r over generations {rho.value:+.2f}, 95% CI {rho.low:+.2f} to "
        f"{rho.high:+.2f}).")
    ctx.report.add_figure(plot_sweep(df, "lexicon"), "Dose-response of the lexicon valence judge")
    t0 = time.perf_counter()
    samples = []
    prompt = _steer_prompts()[0]
    for label, spec in (("unsteered", None), ("toward calm", {"calm": 0.1}),
                        ("toward desperate", {"desperate": 0.1})):
        if spec and not all(e in reg.emotions for e in spec):
            continue
        steering = Steering(reg, spec) if spec else None
        g = emolens.generate(ctx.model, prompt, max_new_tokens=24 if quick else 40,
                             steering=steering)
        samples.append({"condition": label, "text": g.text})
    out["samples"] = samples
    ctx.report.add_table(samples, "Sample generations (greedy, same prompt)")
    out["seconds"]["samples"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    texts = [list(r.messages) for r in ctx.corpus.neutral[-(4 if quick else 16):]]
    out["neutral_loss"] = {
        "texts": len(texts), "unit": "nats per token",
        "unsteered": round(neutral_loss(ctx.model, None, texts), 4),
        f"{valence_emotion}+0.1": round(neutral_loss(ctx.model,
                                                     Steering(reg, {valence_emotion: 0.1}),
                                                     texts), 4)}
    out["seconds"]["neutral_loss"] = round(time.perf_counter() - t0, 1)
    ctx.results["steering"] = out


def _section_scan(ctx: RunContext) -> None:
    import emolens

    reg = ctx.registry
    emos = [e for e in CORE_EMOTIONS if e in reg.emotions] or reg.emotions
    texts = emolens.load_mixed_texts()
    res = emolens.top_examples(ctx.model, reg, texts, emotions=emos, k=10,
                               progress=ctx.config.progress)
    if ctx.is_main:
        res.save(ctx.config.out / "scan")
    ctx.results["scan"] = res.to_dict()
    ctx.report.add_section(
        "scan", "Max-activating examples on text that is not emotion stories",
        f"The {len(texts)} texts of the bundled mixed collection (everyday prose, news, e-mail, "
        f"reviews, instructions, code, lists, forum posts, facts; composed from hand-written "
        f"templates) streamed through the readout at layer {reg.default_layer}; the top 10 "
        f"tokens per emotion with their context. {res.statement()} "
        "(`emolens.top_examples(model, registry, emolens.load_mixed_texts(), k=10)`.)",
        limits="A small, template-composed collection: the top examples show what the "
               "directions respond to in ordinary text, not a survey of a real corpus.")
    ctx.report.add_html(res.view(n=5), "Top examples of the core emotions")


def _section_causality(ctx: RunContext) -> None:
    from emolens.causality.report import FULL_SIZES, RUN_SIZES, run_causality

    # the dose-response has its own section (computed once, there)
    sections, figures = run_causality(ctx.model, ctx.registry, quick=ctx.config.quick,
                                      behaviours=("shortcut", "preferences"),
                                      sizes=None if ctx.config.quick else
                                      FULL_SIZES if ctx.config.full else RUN_SIZES,
                                      seed=ctx.config.seed, progress=ctx.config.progress)
    ctx.results.update(sections)
    caus, beh = sections.get("causality", {}), sections.get("behaviour", {})
    ctx.report.add_section(
        "causality", "Causality: patching along emotion directions, with placebos",
        "Directional patching moves the component along an emotion direction from a source run "
        "into a target run; a norm-matched random direction (placebo) is patched the same way. "
        "Effects are given with bootstrap intervals and permutation p-values over prompt pairs. "
        + str(caus.get("statement", "")),
        limits="A small, quantised model and few prompt pairs; effects indistinguishable from "
               "the placebo are reported as such.")
    for name, fig in figures.items():
        if not name.startswith("behaviour"):
            ctx.report.add_figure(fig, name.replace("_", " "))
    ctx.report.add_section(
        "behaviour", "Behaviour: shortcuts under pressure, preferences",
        str(beh.get("statement", "Answer-logit experiments; see results.json['behaviour'].")),
        limits="Scored from answer-letter logits of a 135M model; no judge model.")
    for name, fig in figures.items():
        if name.startswith("behaviour"):
            ctx.report.add_figure(fig, name.replace("_", " "))


# ----------------------------------------------------------------- study experiments, round 2
# Sizes of the round-2 sections (issue 15). "quick": a smoke test; "run": the default run on 2
# CPU cores; "full": the complete data sets (for a GPU). None = the library's default (all).
STUDY_SIZES: dict[str, dict[str, Any]] = {
    "quick": {"detection_emotions": "core", "detection_resamples": 500,
              "score_emotion": ("desperate", "afraid"), "score_concept_model": None,
              "score_judge_control": True,
              "score_strengths": (0.0, 0.4), "score_prompts": 4,
              "score_tokens": 12, "ablation_emotion": "happy", "ablation_words": "core",
              "ablation_layers": 2, "ablation_neutral": 2, "reply_prompts": 8,
              "reply_tokens": 8, "reply_layers": 2, "syc_items": 2, "syc_random": 1,
              "syc_positive": ("happy",), "syc_negative": ("desperate",),
              "speaker_emotions": "core", "speaker_dialogues": 2, "speaker_positions": 4,
              "speaker_neutral": 16, "speaker_shuffled": 5, "speaker_heldout": False},
    "run": {"detection_emotions": "core", "detection_resamples": 1000,
            "score_emotion": ("desperate", "afraid"), "score_concept_model": None,
            "score_judge_control": True, "score_strengths": (0.0, 0.1, 0.2, 0.4),
            "score_prompts": 8, "score_tokens": 16, "ablation_emotion": "happy",
            "ablation_words": "core", "ablation_layers": 3, "ablation_neutral": 4,
            "reply_prompts": 24, "reply_tokens": 24, "reply_layers": 5, "syc_items": 8,
            "syc_random": 2, "syc_positive": ("happy", "calm"),
            "syc_negative": ("desperate", "angry"), "speaker_emotions": "core",
            "speaker_dialogues": 4, "speaker_positions": 4, "speaker_neutral": 32,
            "speaker_shuffled": 5, "speaker_heldout": False},
    "full": {"detection_emotions": None, "detection_resamples": 2000,
             "score_emotion": ("desperate", "afraid"), "score_concept_model": None,
             "score_judge_control": True, "score_strengths": (0.0, 0.05, 0.1, 0.2, 0.4),
             "score_prompts": 32, "score_tokens": 32, "ablation_emotion": "happy",
             "ablation_words": None, "ablation_layers": None, "ablation_neutral": 8,
             "reply_prompts": None, "reply_tokens": 40, "reply_layers": None, "syc_items": None,
             "syc_random": 3, "syc_positive": ("happy", "loving", "calm"),
             "syc_negative": ("desperate", "angry", "afraid"), "speaker_emotions": None,
             "speaker_dialogues": None, "speaker_positions": 8, "speaker_neutral": None,
             "speaker_shuffled": 10, "speaker_heldout": True},
}


def study_sizes(config: RunConfig) -> dict[str, Any]:
    """The round-2 sizes this run uses (``STUDY_SIZES`` with ``config.study_sizes`` on top)."""
    from emolens.errors import InputError

    name = "full" if config.full else "quick" if config.quick else "run"
    out = {"preset": name, **STUDY_SIZES[name]}
    for k, v in (config.study_sizes or {}).items():
        if k not in STUDY_SIZES["run"]:
            raise InputError(f"unknown study size {k!r}; valid: {sorted(STUDY_SIZES['run'])}")
        out[k] = v
    return out


def _sizes_record(sz: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sz.items()}


def _spread_layers(layers: Sequence[int], default: int, k: int | None) -> list[int]:
    """``k`` registry layers evenly spread from the first to the last, with the default layer
    in place of the nearest of them (all of them for ``k=None``)."""
    ordered = sorted(int(x) for x in layers)
    if k is None or k >= len(ordered):
        return ordered
    pick = [ordered[round(i * (len(ordered) - 1) / (k - 1))] for i in range(k)] if k > 1 \
        else [int(default)]
    if int(default) not in pick:
        pick[min(range(len(pick)), key=lambda j: abs(pick[j] - int(default)))] = int(default)
    return sorted(set(pick))


def _pick_emotion(reg: Any, wanted: str | Sequence[str]) -> str:
    """The first of ``wanted`` (one name or names in order of preference) that the registry
    holds; else its first core emotion (else its first emotion)."""
    for name in ((wanted,) if isinstance(wanted, str) else tuple(wanted)):
        if name in reg.emotions:
            return name
    emos = [e for e in CORE_EMOTIONS if e in reg.emotions] or list(reg.emotions)
    return emos[0]


def _section_detection(ctx: RunContext) -> None:
    from emolens.steering import detection_auc

    reg, sz = ctx.registry, study_sizes(ctx.config)
    emos = ([e for e in CORE_EMOTIONS if e in reg.emotions] or None) \
        if sz["detection_emotions"] == "core" else sz["detection_emotions"]
    res = detection_auc(ctx.model, reg, emotions=emos, n_resamples=sz["detection_resamples"],
                        seed=ctx.config.seed, batch_size=_batch(ctx))
    ctx.results["detection"] = {**res.to_dict(), "sizes": _sizes_record(sz)}
    ctx.report.add_section(
        "detection", "Concept detection (AxBench): ROC-AUC of each direction, one-vs-rest",
        f"{res.statement} (`emolens.steering.detection_auc(model, registry, emotions="
        f"{len(res.emotions)} core emotions)`.)",
        limits="The bundled corpus's test stories (the registry's default layer was chosen on its "
               "dev stories): held out, but by the same authors and in the same style as the "
               "training stories; emotions with one or two test stories have wide intervals.")
    ctx.report.add_figure(res.figure(), "ROC-AUC - 0.5 per emotion with 95% stratified "
                          "bootstrap intervals; random unit directions as placebo")


def _section_steering_score(ctx: RunContext) -> None:
    from emolens.steering import steering_score
    from emolens.steering.metrics import default_prompts

    reg, sz = ctx.registry, study_sizes(ctx.config)
    emotion = _pick_emotion(reg, sz["score_emotion"])
    words = [e for e in CORE_EMOTIONS if e in reg.emotions] or None
    prompts = default_prompts(sz["score_prompts"]) if sz["score_prompts"] else default_prompts()
    res = steering_score(ctx.model, reg, emotion, list(sz["score_strengths"]), prompts,
                         max_new_tokens=sz["score_tokens"], words=words, seed=ctx.config.seed,
                         concept_model=sz["score_concept_model"],
                         judge_control=sz["score_judge_control"], progress=ctx.config.progress)
    ctx.results["steering_score"] = {**res.to_dict(), "n_prompts": len(prompts),
                                     "candidate_words": words or list(reg.emotions),
                                     "sizes": _sizes_record(sz)}
    ctx.report.add_section(
        "steering_score", "Steering in the field's terms: steering score and anti-steerable "
        "fraction",
        f"{res.statement} (`emolens.steering.steering_score(model, registry, {emotion!r}, "
        f"{list(sz['score_strengths'])}, prompts, max_new_tokens={sz['score_tokens']})`; the "
        f"concept judge ranks the word among {len(words or reg.emotions)} emotion words.)",
        limits=f"{len(prompts)} prompts and {sz['score_tokens']} new tokens per generation; "
               "the judges are word probabilities and perplexities under the unsteered model "
               f"(the concept under {res.settings['concept_model']}), not an LLM rating or "
               "people; read the score beside the concept judge's positive control.")
    ctx.report.add_figure(res.figure(), "Steering score per strength (harmonic mean of concept, "
                          "relevance, fluency; 95% bootstrap over prompts), random direction as "
                          "placebo")


def _section_ablation(ctx: RunContext) -> None:
    from emolens.causality import ablation_scan

    reg, sz = ctx.registry, study_sizes(ctx.config)
    emotion = _pick_emotion(reg, sz["ablation_emotion"])
    layers = _spread_layers(reg.layers, reg.default_layer, sz["ablation_layers"])
    # "core": the default metric's candidate words are the core emotions (as the steering
    # score's concept judge), not every registry emotion (48 words cost ~4x the forwards)
    core = [e for e in CORE_EMOTIONS if e in reg.emotions]
    areg = reg.subset(core) if sz["ablation_words"] == "core" and emotion in core else reg
    res = ablation_scan(ctx.model, areg, emotion, layers=layers,
                        n_neutral=sz["ablation_neutral"], seed=ctx.config.seed,
                        progress=ctx.config.progress)
    ctx.results["ablation"] = {**res.to_dict(), "sizes": _sizes_record(sz)}
    ctx.report.add_section(
        "ablation", "Directional ablation (Arditi et al.): which layer's direction matters",
        f"{res.statement} (`emolens.causality.ablation_scan(model, registry, {emotion!r}, "
        f"layers={layers}, n_neutral={sz['ablation_neutral']})`.)",
        limits=f"{len(layers)} candidate layers and {res.n_neutral} neutral dialogues for the KL.")
    ctx.report.add_figure(res.figure(), "Change of the metric (95% bootstrap) and KL on neutral "
                          "text per ablated layer; random directions as placebo")


def _section_reply_prediction(ctx: RunContext) -> None:
    from emolens.readout import reply_emotion_prediction

    reg, sz = ctx.registry, study_sizes(ctx.config)
    emos = [e for e in CORE_EMOTIONS if e in reg.emotions] or None
    layers = _spread_layers(reg.layers, reg.default_layer, sz["reply_layers"])
    res = reply_emotion_prediction(ctx.model, reg, n_prompts=sz["reply_prompts"], emotions=emos,
                                   layers=layers, max_new_tokens=sz["reply_tokens"],
                                   batch_size=_batch(ctx), seed=ctx.config.seed,
                                   progress=ctx.config.progress)
    ctx.results["reply_prediction"] = {**res.to_dict(), "sizes": _sizes_record(sz)}
    ctx.report.add_section(
        "reply_prediction", "Which token predicts the reply's emotion: reply-opening vs the "
        "user's last token",
        f"{res.statement} (`emolens.readout.reply_emotion_prediction(model, registry, "
        f"n_prompts={sz['reply_prompts']}, layers={layers}, "
        f"max_new_tokens={sz['reply_tokens']})`.)",
        limits=f"{res.n_prompts} scenario prompts, greedy replies of {sz['reply_tokens']} tokens "
               "read by the same directions (no external judge of the reply's emotion).")
    ctx.report.add_figure(res.figure(), "Pooled r (emotions centred over prompts) of each "
                          "position's readout with the reply's emotion, per predictor layer")


def _section_sycophancy(ctx: RunContext) -> None:
    from emolens.causality.sycophancy import load_sycophancy_items, sycophancy_experiment

    reg, sz = ctx.registry, study_sizes(ctx.config)
    pos = [e for e in sz["syc_positive"] if e in reg.emotions]
    neg = [e for e in sz["syc_negative"] if e in reg.emotions]
    if not pos and not neg:
        ctx.results["sycophancy"] = {"skipped": f"none of {sz['syc_positive']} / "
                                                f"{sz['syc_negative']} in the registry"}
        return
    items = load_sycophancy_items()
    if sz["syc_items"] is not None:  # both kinds alike: alternate wrong claims and weak work
        by_kind: dict[str, list[Any]] = {}
        for it in items:
            by_kind.setdefault(it.kind, []).append(it)
        mixed = [it for group in zip(*by_kind.values()) for it in group]
        items = mixed[: sz["syc_items"]]
    res = sycophancy_experiment(ctx.model, reg, positive=pos, negative=neg, items=items,
                                n_random=sz["syc_random"], seed=ctx.config.seed,
                                progress=ctx.config.progress)
    ctx.results["sycophancy"] = {**res.to_dict(), "items": [it.id for it in items],
                                 "sizes": _sizes_record(sz)}
    ctx.report.add_section(
        "sycophancy", "Sycophancy and harshness under steering (A/B, both answer orders)",
        f"{res.statement} (`emolens.causality.sycophancy.sycophancy_experiment(model, registry, "
        f"positive={pos}, negative={neg}, items={len(items)} items, "
        f"n_random={sz['syc_random']})`.)",
        limits=f"{len(items)} of the {len(load_sycophancy_items())} bundled items and "
               f"{sz['syc_random']} random directions: intervals are wide.")
    ctx.report.add_figure(res.figure(), "Change of the order-averaged log-odds from unsteered "
                          "(95% paired bootstrap), random directions of equal norm as placebo")


def _section_speakers(ctx: RunContext) -> None:
    from emolens.extraction.speakers import select_dialogues, speaker_experiment
    from emolens.stimuli import load_corpus
    from emolens.stimuli.speakers import load_dialogues

    reg, sz = ctx.registry, study_sizes(ctx.config)
    ds = load_dialogues()
    pool = CORE_EMOTIONS if sz["speaker_emotions"] == "core" else \
        (sz["speaker_emotions"] or reg.emotions)
    emos = [e for e in pool if e in reg.emotions and e in ds.emotions]
    if len(emos) < 3:
        ctx.results["speakers"] = {"skipped": f"fewer than 3 of the dialogues' emotions "
                                              f"{ds.emotions} in the registry"}
        return
    corpus = ctx.corpus if ctx.corpus is not None else load_corpus()
    neutral = [r.messages for r in corpus.neutral][: sz["speaker_neutral"]]
    n_dlg = sz["speaker_dialogues"]
    res = speaker_experiment(ctx.model, reg, emotions=emos, max_dialogues_per_emotion=n_dlg,
                             positions_per_turn=sz["speaker_positions"],
                             n_shuffled=sz["speaker_shuffled"], validate=sz["speaker_heldout"],
                             neutral=neutral, seed=ctx.config.seed,
                             batch_size=_batch(ctx),
                             compute_dtype=ctx.config.compute_dtype,
                             progress=ctx.config.progress)
    n_train = len(select_dialogues(ds, emos, "train", n_dlg))
    ctx.results["speakers"] = {**res.to_dict(), "n_train_dialogues": n_train,
                               "n_neutral": len(neutral), "sizes": _sizes_record(sz)}
    ctx.report.add_section(
        "speakers", "Speaker families: present-speaker and other-speaker directions vs the "
        "story directions",
        f"{res.statement} (`emolens.speaker_experiment(model, registry, emotions="
        f"{len(emos)} emotions, max_dialogues_per_emotion={n_dlg}, positions_per_turn="
        f"{sz['speaker_positions']}, n_shuffled={sz['speaker_shuffled']})`.)",
        limits=f"{n_train} training dialogues of the bundled speaker set ("
               f"{'all' if n_dlg is None else f'at most {n_dlg}'} per emotion), "
               f"{sz['speaker_positions']} reading points per turn, {len(neutral)} neutral "
               "dialogues for the denoising; the shuffled-label control permutes the labels "
               "of single readings, not of whole dialogues.")
    ctx.report.add_figure(res.figure(), "Matching-emotion cosine of each speaker family with "
                          "the story direction, per emotion; random directions (dotted) and "
                          "shuffled labels (dashed) as controls")


def _machine() -> dict[str, Any]:
    """The CPU (model and bf16 flags) and thread count every timing in results.json ran on."""
    import torch

    from emolens.hardware import cpu_features

    return {"cpu": cpu_features().to_dict(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


SECTIONS: dict[str, Callable[[RunContext], None]] = {
    "model": _section_model,
    "corpus": _section_corpus,
    "registry": _section_registry,
    "geometry": _section_geometry,
    "scenarios": _section_scenarios,
    "dose_response": _section_dose,
    "steering": _section_steering,
    "scan": _section_scan,
    "causality": _section_causality,
    "detection": _section_detection,
    "steering_score": _section_steering_score,
    "ablation": _section_ablation,
    "reply_prediction": _section_reply_prediction,
    "sycophancy": _section_sycophancy,
    "speakers": _section_speakers,
}
REQUIRED = ("model", "corpus", "registry")
#: the study's round-2 experiments (issue 15), sized by ``STUDY_SIZES``
STUDY_SECTIONS = ("detection", "steering_score", "ablation", "reply_prediction", "sycophancy",
                  "speakers")
#: sections that run only with ``--study-round2`` / ``--full`` or when named in ``--sections``:
#: at the default sizes each would add 1.5-4 minutes to the run on 2 CPU cores, the default
#: ones (detection, ablation) about 45 s together (docs/study_round2.md, "In the main job")
OPT_IN: tuple[str, ...] = ("steering_score", "reply_prediction", "sycophancy", "speakers")


def selected_sections(config: RunConfig) -> list[str]:
    """The sections a run executes, in order: ``config.sections`` (plus the required ones), or
    every section but the ``OPT_IN`` ones unless ``study_round2`` or ``full``."""
    if config.sections:
        wanted = set(config.sections)
        return [s for s in SECTIONS if s in wanted or s in REQUIRED]
    return [s for s in SECTIONS if s not in OPT_IN or config.study_round2 or config.full]


def register_section(name: str, fn: Callable[[RunContext], None]) -> None:
    """Add a section to the main job (runs after the built-in ones, in registration order)."""
    SECTIONS[name] = fn


def run(config: RunConfig) -> dict[str, Any]:
    """Run the main job; returns the results dict also written to ``DIR/results.json``."""
    from emolens.errors import InputError, unknown_name_message
    from emolens.io import check_output_folder, write_json
    from emolens.views import Report

    if config.sections is not None:
        if isinstance(config.sections, str) or not config.sections:
            raise InputError(f"sections must be a non-empty list of names, got "
                             f"{config.sections!r}; valid: {list(SECTIONS)}")
        for name in config.sections:
            if name not in SECTIONS:
                raise InputError(unknown_name_message("section", name, SECTIONS,
                                                      "see `emolens run --help`"))
    if config.quick and config.full:
        raise InputError("quick and full exclude each other: give --quick (smoke test) or "
                         "--full (the complete data sets, for a GPU), not both")
    study_sizes(config)  # unknown size names fail before any work
    config.out = check_output_folder(config.out, error=InputError, what="--out")
    ctx = RunContext(config)
    from emolens.distributed import init_distributed, launched_by_torchrun

    if launched_by_torchrun():  # torchrun: the extraction runs data-parallel on every rank;
        # rank 0 writes and runs the other sections
        ctx.is_main = init_distributed().is_main
        config.progress = config.progress and ctx.is_main
    ctx.report = Report("emolens: emotion directions in "
                        f"{config.model or 'SmolLM2-135M-Instruct (default)'}",
                        intro="Reproduces the checks of Sofroniew, Lindsey et al. (2026), "
                              "'Emotion Concepts and their Function in a Large Language Model', "
                              "on an open model. Each section says what its result shows and "
                              "what it does not.")
    t_all = time.perf_counter()
    wanted = selected_sections(config)
    errors = {}
    for name in SECTIONS:
        if (name not in wanted or not ctx.is_main) and name not in REQUIRED:
            continue
        t0 = time.perf_counter()
        ctx.log(f"{name} ...")
        try:
            SECTIONS[name](ctx)
        except Exception as e:
            if name in REQUIRED:
                raise
            errors[name] = f"{type(e).__name__}: {e}"
            ctx.results[name] = {"error": errors[name]}
            ctx.log(f"{name} FAILED: {errors[name]}\n{traceback.format_exc()}")
        ctx.timings[name] = round(time.perf_counter() - t0, 2)
    ctx.results["run"] = {"quick": config.quick, "full": config.full,
                          "study_round2": config.study_round2 or config.full,
                          "opt_in_sections": list(OPT_IN),
                          "seconds": round(time.perf_counter() - t_all, 1),
                          "section_seconds": ctx.timings, "errors": errors,
                          "emolens_version": __import__("emolens").__version__,
                          "machine": _machine()}
    if not ctx.is_main:
        return ctx.results
    write_json(config.out / "results.json", ctx.results)
    ctx.report.save(config.out / "report.html")
    ctx.log(f"done in {ctx.results['run']['seconds']} s: {config.out / 'report.html'}")
    return ctx.results
