"""Controls for the emotion geometry: is it the model, the stimuli or the recipe?

``geometry_controls(banks, corpus, norms)`` runs, from ``StoryBank``s (one per model, built
once by ``emolens.compare.bank.build_story_bank``) and the lexical baseline built from the same
stories (``emolens.compare.lexical.tfidf_bank``):

- **per representation** (each model at every bank depth, each model's token embedding, the
  TF-IDF vectors): test-split accuracy of the directions fitted on every training story (the one
  scoring rule; interval: percentile bootstrap over test stories), and at the site chosen on the
  dev split, PC1/PC2 explained variance, PC1~valence and PC2~arousal Pearson r against the
  published norms (bootstrap over emotions, permutation p; ``emolens.geometry``) and the largest
  |r| of valence with any of PC1-3;
- **split-half reliability**: per representation, ``n_splits`` random halvings of each emotion's
  training stories; directions from each half; the RSA rho between the two halves' cosine
  matrices (the ceiling any similarity with another model can reach at that story count) and
  the mean cosine of each emotion's two half-directions. Spread: the 2.5-97.5 percentiles over
  the random halvings (their sampling distribution, not a CI of the mean);
- **cross-model similarity**, per pair of representations at matched relative depth, on the
  training stories every bank holds (a model capped at 12 stories per emotion caps the pool):
  with the same halvings for every pair, RSA of A's half-1 geometry with B's
  half-1 geometry (same stories) beside A's half-1 with B's half-2 (disjoint stories), the
  within-model reliabilities at that size and their geometric mean (the noise ceiling
  ``sqrt(rel_A rel_B)``); on all shared stories, the RSA and the partial RSA given the TF-IDF
  geometry (``emolens.compare.similarity.partial_rsa_rho``);
- **learning curves**: for ``sizes`` stories per emotion (an emotion with fewer keeps all it
  has; the number of emotions capped is recorded; sizes at or beyond the most any emotion has
  collapse into one point, "all"), ``n_draws`` random draws of the training
  stories; each draw's directions, its site chosen on dev, then test accuracy, PC1~valence,
  PC2~arousal and the RSA between every pair of models on the same drawn stories; mean and the
  2.5-97.5 percentiles over draws.

Choices (the site) are made on dev; accuracies are reported on test; the norms are external.
Every number in ``to_dict()`` names the split it came from.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from emolens.errors import InputError

DEFAULT_SIZES: tuple[int | None, ...] = (6, 12, 24, None)


# ---------------------------------------------------------------------------- helpers
def _summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean and the 2.5/97.5 percentiles of finite values (``None`` when there are none)."""
    v = torch.tensor([x for x in values if x is not None and math.isfinite(x)],
                     dtype=torch.float64)
    if v.numel() == 0:
        return {"mean": None, "range": [None, None], "n": 0}
    lo, hi = torch.quantile(v, 0.025), torch.quantile(v, 0.975)
    return {"mean": round(float(v.mean()), 4), "range": [round(float(lo), 4), round(float(hi), 4)],
            "n": int(v.numel())}


def _f(x: Any, digits: int = 2) -> str:
    """A number for a sentence; "n/a" for a missing or undefined one."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{float(x):.{digits}f}"


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else float("nan")


@dataclass
class _Rep:
    """One representation: a bank and the sites of it that count (their labels)."""

    name: str
    kind: str  # "model" | "embedding" | "tfidf"
    bank: Any
    cols: list[int]
    depths: list[float | None]
    id_row: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id_row = {r["id"]: i for i, r in enumerate(self.bank.records)
                       if bool(self.bank.keep[i])}


def _reps(banks: Mapping[str, Any], tfidf: Any | None) -> list[_Rep]:
    reps = []
    for name, bank in banks.items():
        reps.append(_Rep(name, "model", bank, list(range(1, len(bank.sites))),
                         list(bank.relative_depths)))
        reps.append(_Rep(f"{name} (embedding)", "embedding", bank, [0], [None]))
    if tfidf is not None:
        reps.append(_Rep("TF-IDF", "tfidf", tfidf, [0], [None]))
    return reps


class _Geometry:
    """The measures of one fitted set of directions (every site of one representation)."""

    def __init__(self, rep: _Rep, ids: Sequence[str], dev: Sequence[str], test: Sequence[str],
                 norms: Mapping[str, Any], orient: Mapping[str, str]):
        bank = rep.bank
        rows = [rep.id_row[i] for i in ids if i in rep.id_row]
        self.unit, self.center, _ = bank.directions(rows, rep.cols)
        self.emotions = list(bank.emotions)
        labels = bank.labels
        self.dev_rows = torch.tensor([rep.id_row[i] for i in dev if i in rep.id_row])
        self.test_rows = torch.tensor([rep.id_row[i] for i in test if i in rep.id_row])
        self.dev_correct = (bank.predictions(self.unit, self.center, self.dev_rows, rep.cols)
                            == labels[self.dev_rows]) if len(self.dev_rows) else None
        self.test_correct = (bank.predictions(self.unit, self.center, self.test_rows, rep.cols)
                             == labels[self.test_rows]) if len(self.test_rows) else None
        if self.dev_correct is not None:
            accs = self.dev_correct.double().mean(-1)
            self.chosen = int(max(range(len(rep.cols)), key=lambda k: (float(accs[k]), -k)))
        else:
            self.chosen = len(rep.cols) - 1
        self.norms, self.orient = norms, orient

    def cosine(self, k: int) -> torch.Tensor:
        from emolens.compare.similarity import cosine_matrix

        return cosine_matrix(self.unit[k])

    def test_accuracy(self, k: int) -> float:
        return float(self.test_correct[k].double().mean()) if self.test_correct is not None \
            else float("nan")

    def affect(self, k: int) -> dict[str, float]:
        """PC1~valence, PC2~arousal (oriented by the norms) and the largest |valence r| of
        PC1-3 at site ``k`` (no intervals: per draw)."""
        from emolens.geometry import vectors_pca

        rated = [e for e in self.emotions if e in self.norms]
        if len(rated) < 5:
            return {}
        pca = vectors_pca(self.unit[k], self.emotions, orient=self.orient)
        idx = torch.tensor([self.emotions.index(e) for e in rated])
        val = torch.tensor([float(self.norms[e][0]) for e in rated])
        aro = torch.tensor([float(self.norms[e][1]) for e in rated])
        c = pca.coords[idx].double()
        return {"PC1_valence_r": _pearson(c[:, 0], val), "PC2_arousal_r": _pearson(c[:, 1], aro),
                "best_valence_abs_r_PC1_3": max(abs(_pearson(c[:, j], val))
                                                for j in range(min(3, c.shape[1]))),
                "PC1_variance": float(pca.explained_variance_ratio[0]),
                "PC2_variance": float(pca.explained_variance_ratio[1])}


def _halves(pool: Mapping[str, list[str]], gen: torch.Generator
            ) -> tuple[list[str], list[str]]:
    """Each emotion's stories shuffled and cut into two disjoint halves of equal size."""
    a, b = [], []
    for ids in pool.values():
        perm = torch.randperm(len(ids), generator=gen).tolist()
        h = len(ids) // 2
        a += [ids[i] for i in perm[:h]]
        b += [ids[i] for i in perm[h:2 * h]]
    return a, b


def _draw(pool: Mapping[str, list[str]], size: int | None, gen: torch.Generator
          ) -> list[str]:
    out = []
    for ids in pool.values():
        if size is None or size >= len(ids):
            out += list(ids)
        else:
            out += [ids[i] for i in torch.randperm(len(ids), generator=gen)[:size].tolist()]
    return out


def _pool(reps: Sequence[_Rep], emotions: Sequence[str]) -> dict[str, list[str]]:
    """Training story ids every representation holds, per emotion (corpus order)."""
    bank = reps[0].bank
    shared = set.intersection(*(set(r.id_row) for r in reps))
    out: dict[str, list[str]] = {e: [] for e in emotions}
    for rec in bank.records:
        if rec["split"] == "train" and rec["id"] in shared:
            out[rec["emotion"]].append(rec["id"])
    short = [e for e, ids in out.items() if len(ids) < 2]
    if short:
        raise InputError(f"emotions {short} have fewer than 2 training stories in every bank; "
                         "the controls need at least 2 per emotion")
    return out


def _split_ids(bank: Any, split: str) -> list[str]:
    return [r["id"] for r in bank.records if r["split"] == split]


# ---------------------------------------------------------------------------- result
@dataclass
class GeometryControls:
    """What ``geometry_controls`` measured (see the module docstring); ``to_dict()`` for JSON,
    ``statement()`` for the plain reading, ``_repr_html_`` for notebooks."""

    representations: list[dict[str, Any]]
    split_half: list[dict[str, Any]]
    cross: list[dict[str, Any]]
    curves: list[dict[str, Any]]
    settings: dict[str, Any]
    norms: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"representations": self.representations, "split_half": self.split_half,
                "cross": self.cross, "curves": self.curves, "settings": self.settings,
                "norms": self.norms, "run": self.run, "statement": self.statement(),
                "splits": {"train": "directions are fitted on (subsets of) it",
                           "dev": "the site of each representation is chosen on it",
                           "test": "accuracies are reported on it"}}

    def _rep(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.representations if r["name"] == name), None)

    def statement(self) -> str:
        """What the numbers say, in words; computed from them, hedged where they are weak."""
        lines = []
        models = [r for r in self.representations if r["kind"] == "model"]
        for m in [*models, *(r for r in self.representations if r["kind"] == "tfidf")]:
            g = m["at_chosen_site"]
            where = "" if g["relative_depth"] is None else f" at depth {g['relative_depth']}"
            lines.append(
                f"{m['name']}: test accuracy {_f(g['test_accuracy'], 3)}{where} (chance "
                f"{_f(m['chance'], 3)}); PC1~valence r = {_f(g.get('PC1_valence_r'))}, "
                f"PC2~arousal r = {_f(g.get('PC2_arousal_r'))}.")
        for c in self.cross:
            if c["kind"] != "model-model":
                continue
            best = max(c["by_depth"], key=lambda d: d["same_stories"]["mean"] or -1)
            same, dis = best["same_stories"]["mean"], best["disjoint_stories"]["mean"]
            if same is None or dis is None:
                continue
            verdict = ("the shared stories account for part of the agreement"
                       if same - dis > 0.1 else
                       "the agreement does not depend on sharing the stories")
            lines.append(
                f"{c['a']} vs {c['b']} (depth {best['depth']}): RSA {_f(same)} on the same half "
                f"of the stories, {_f(dis)} on disjoint halves (noise ceiling "
                f"{_f(best['noise_ceiling'])}): {verdict}. On all shared stories RSA "
                f"{_f(best.get('all_shared'))}, partial RSA given TF-IDF "
                f"{_f(best.get('partial_given_tfidf'))}.")
        for c in self.cross:
            if c["kind"] == "model-tfidf":
                best = max(c["by_depth"], key=lambda d: d.get("all_shared") or -1)
                lines.append(f"{c['a']} vs TF-IDF: RSA up to {_f(best['all_shared'])} (depth "
                             f"{best['depth']}) on the same stories.")
        for cur in self.curves:
            if cur["name"] not in {m["name"] for m in models}:
                continue
            pts = cur["points"]
            if len(pts) >= 2:
                lines.append(
                    f"{cur['name']} learning curve, {pts[0]['label']} -> {pts[-1]['label']} "
                    f"stories per emotion: test accuracy "
                    f"{_f(pts[0]['test_accuracy']['mean'], 3)} -> "
                    f"{_f(pts[-1]['test_accuracy']['mean'], 3)}, PC1~valence r "
                    f"{_f(pts[0]['PC1_valence_r']['mean'])} -> "
                    f"{_f(pts[-1]['PC1_valence_r']['mean'])}.")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from emolens.views.report import table_html

        rows = [{"representation": r["name"], "site": r["at_chosen_site"]["site"],
                 "depth": r["at_chosen_site"]["relative_depth"],
                 "test acc": r["at_chosen_site"]["test_accuracy"],
                 "PC1~valence": r["at_chosen_site"].get("PC1_valence_r"),
                 "PC2~arousal": r["at_chosen_site"].get("PC2_arousal_r"),
                 "split-half RSA": next((s["rsa"]["mean"] for s in self.split_half
                                         if s["name"] == r["name"]
                                         and s["site"] == r["at_chosen_site"]["site"]), None)}
                for r in self.representations]
        return (f"<div><b>GeometryControls</b> ({len(self.representations)} representations)"
                f"{table_html(rows)}<pre>{self.statement()}</pre></div>")


# ---------------------------------------------------------------------------- the run
def geometry_controls(banks: Mapping[str, Any], corpus: Any = None, norms: Any = None, *,
                      tfidf: bool = True, n_splits: int = 20,
                      sizes: Sequence[int | None] = DEFAULT_SIZES, n_draws: int = 10,
                      n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
                      progress: bool = True) -> GeometryControls:
    """Every control of the module docstring for ``banks`` (``{name: StoryBank}``, built on
    the same corpus and emotions; banks of different sizes share the stories they both hold).

    Args:
        corpus: the corpus the banks were built from (texts for TF-IDF; default: bundled).
        norms: ``emotion -> (valence, arousal)`` (default: the published norms).
        tfidf: add the TF-IDF baseline (and the partial RSA given it).
        n_splits: random halvings for split-half reliability and disjoint-story similarity.
        sizes: stories per emotion on the learning curve (``None``: all shared).
        n_draws: random draws per size (one for ``None``: there is nothing to draw).
    """
    from emolens.compare.lexical import tfidf_bank
    from emolens.compare.similarity import partial_rsa_rho, rsa_rho
    from emolens.geometry import affect_orient
    from emolens.runtime import progress_bar
    from emolens.stimuli import load_affect_ratings, load_corpus
    from emolens.stimuli.norms import norms_info

    if not banks:
        raise InputError("geometry_controls needs at least one story bank")
    names = list(banks)
    first = banks[names[0]]
    for n in names[1:]:
        if banks[n].emotions != first.emotions:
            raise InputError(f"bank {n!r} has other emotions than {names[0]!r}; build every "
                             "bank with the same emotions= (in the same order)")
        if len(banks[n].sites) != len(first.sites):
            raise InputError(f"bank {n!r} has {len(banks[n].sites) - 1} depths, {names[0]!r} "
                             f"{len(first.sites) - 1}; build them with the same depths=")
    if n_splits < 1 or n_draws < 1:
        raise InputError(f"n_splits and n_draws must be >= 1, got {n_splits}, {n_draws}")
    t0 = time.perf_counter()
    corpus = corpus if corpus is not None else load_corpus()
    emotions = list(first.emotions)
    norms = norms if norms is not None else load_affect_ratings(emotions=emotions)
    orient = affect_orient(emotions, norms)
    biggest = max(banks.values(), key=lambda b: len(b.records))
    lex = tfidf_bank(corpus, biggest) if tfidf else None
    reps = _reps(banks, lex)
    dev, test = _split_ids(first, "dev"), _split_ids(first, "test")
    bar = progress_bar(total=len(reps) * (1 + 4 * n_splits + 1)
                       + sum(1 if s is None else n_draws for s in sizes),
                       desc="geometry controls", enabled=progress, unit="fit")

    # ---- every representation on all its own training stories
    rep_rows: list[dict[str, Any]] = []
    full: dict[str, _Geometry] = {}
    for rep in reps:
        ids = [rid for rid, r in zip((r["id"] for r in rep.bank.records), rep.bank.records)
               if r["split"] == "train" and rid in rep.id_row]
        g = _Geometry(rep, ids, dev, test, norms, orient)
        full[rep.name] = g
        rep_rows.append(_describe(rep, g, len(ids), n_boot, n_perm, seed))
        bar.update(1)

    # ---- split-half reliability and same/disjoint halves. One set of random halvings of the
    # training stories every representation holds serves every pair (each half is fitted once
    # per representation); a representation that holds more stories also gets its own.
    memo: dict[tuple[str, tuple[str, ...]], _Geometry] = {}

    def fit(rep: _Rep, ids: Sequence[str]) -> _Geometry:
        key = (rep.name, tuple(sorted(ids)))
        if key not in memo:
            memo[key] = _Geometry(rep, ids, dev, test, norms, orient)
            bar.update(1)
        return memo[key]

    common = _pool(reps, emotions)
    gen = torch.Generator().manual_seed(seed)
    common_halves = [_halves(common, gen) for _ in range(n_splits)]
    split_rows: list[dict[str, Any]] = []
    for rep in reps:
        own = _pool([rep], emotions)
        for pool, halves in ((common, common_halves),) + (
                () if own == common else ((own, [_halves(own, gen) for _ in range(n_splits)]),)):
            pairs = [(fit(rep, a), fit(rep, b)) for a, b in halves]
            for k, col in enumerate(rep.cols):
                rhos = [rsa_rho(ga.cosine(k), gb.cosine(k)) for ga, gb in pairs]
                diag = [float((ga.unit[k] * gb.unit[k]).sum(-1).mean()) for ga, gb in pairs]
                accs = [(ga.test_accuracy(k) + gb.test_accuracy(k)) / 2 for ga, gb in pairs]
                summ = _summary(rhos)
                m = summ["mean"]
                half = [len(v) // 2 for v in pool.values()]
                split_rows.append({
                    "name": rep.name, "kind": rep.kind, "site": rep.bank.sites[col].name,
                    "relative_depth": rep.depths[k],
                    "pool": "shared by every bank" if pool is common else "this bank's own",
                    "stories_per_emotion_per_half": {"min": min(half), "max": max(half),
                                                     "mean": round(sum(half) / len(half), 2)},
                    "rsa": summ, "spearman_brown": None if m is None else round(2 * m / (1 + m), 4),
                    "direction_cosine": _summary(diag), "test_accuracy_per_half": _summary(accs),
                    "split": "train halves; accuracy on test"})

    # ---- cross-representation similarity at matched depth, on the stories every bank holds
    cross_rows: list[dict[str, Any]] = []
    model_reps = [r for r in reps if r.kind == "model"]
    others = [r for r in reps if r.kind != "model"]
    lex_rep = next((r for r in reps if r.kind == "tfidf"), None)
    pairs_to_do = [(a, b, "model-model") for i, a in enumerate(model_reps)
                   for b in model_reps[i + 1:]]
    pairs_to_do += [(a, b, f"model-{b.kind}") for a in model_reps for b in others
                    if b.kind == "tfidf" or b.name == f"{a.name} (embedding)"]
    pairs_to_do += [(a, b, "embedding-embedding") for i, a in enumerate(others)
                    for b in others[i + 1:] if a.kind == b.kind == "embedding"]
    shared_ids = [i for ids in common.values() for i in ids]
    for ra, rb, kind in pairs_to_do:
        fits = [(fit(ra, h1), fit(ra, h2), fit(rb, h1), fit(rb, h2)) for h1, h2 in common_halves]
        ga_all, gb_all = fit(ra, shared_ids), fit(rb, shared_ids)
        g_lex = fit(lex_rep, shared_ids) if lex_rep is not None else None
        by_depth = []
        for k in range(max(len(ra.cols), len(rb.cols))):
            ka, kb = min(k, len(ra.cols) - 1), min(k, len(rb.cols) - 1)
            same = [(rsa_rho(a1.cosine(ka), b1.cosine(kb)) + rsa_rho(a2.cosine(ka), b2.cosine(kb)))
                    / 2 for a1, a2, b1, b2 in fits]
            disjoint = [(rsa_rho(a1.cosine(ka), b2.cosine(kb))
                         + rsa_rho(a2.cosine(ka), b1.cosine(kb))) / 2 for a1, a2, b1, b2 in fits]
            rel_a = _summary([rsa_rho(a1.cosine(ka), a2.cosine(ka)) for a1, a2, _, _ in fits])
            rel_b = _summary([rsa_rho(b1.cosine(kb), b2.cosine(kb)) for _, _, b1, b2 in fits])
            ceiling = math.sqrt(max(rel_a["mean"] or 0.0, 0.0) * max(rel_b["mean"] or 0.0, 0.0))
            row = {"depth": ra.depths[ka] if ra.depths[ka] is not None else rb.depths[kb],
                   "site_a": ra.bank.sites[ra.cols[ka]].name,
                   "site_b": rb.bank.sites[rb.cols[kb]].name,
                   "same_stories": _summary(same), "disjoint_stories": _summary(disjoint),
                   "reliability_a": rel_a, "reliability_b": rel_b,
                   "noise_ceiling": round(ceiling, 4),
                   "all_shared": round(rsa_rho(ga_all.cosine(ka), gb_all.cosine(kb)), 4)}
            if g_lex is not None and kind == "model-model":
                row["partial_given_tfidf"] = round(partial_rsa_rho(
                    ga_all.cosine(ka), gb_all.cosine(kb), g_lex.cosine(0)), 4)
            by_depth.append(row)
        cross_rows.append({"a": ra.name, "b": rb.name, "kind": kind,
                           "shared_stories_per_emotion": {e: len(v) for e, v in common.items()},
                           "by_depth": by_depth,
                           "split": "train halves (same or disjoint); all shared train stories"})
    memo.clear()

    # ---- learning curves: the same draws for every representation
    curve_rows = _curves(reps, common, sizes, n_draws, dev, test, norms, orient, seed, bar)
    bar.close()
    settings = {"emotions": emotions, "n_splits": n_splits, "sizes": list(sizes),
                "n_draws": n_draws, "n_boot": n_boot, "n_perm": n_perm, "seed": seed,
                "orientation": orient, "banks": {n: {"model": b.model.get("model_id"),
                                                     "sites": [s.name for s in b.sites],
                                                     "relative_depths": b.relative_depths,
                                                     "stories": len(b.records),
                                                     "info": b.info} for n, b in banks.items()},
                "tfidf": lex.info if lex is not None else None}
    run = {"seconds": round(time.perf_counter() - t0, 1),
           "torch_threads": torch.get_num_threads()}
    return GeometryControls(rep_rows, split_rows, cross_rows, curve_rows, settings,
                            norms_info(norms), run)


def _describe(rep: _Rep, g: _Geometry, n_train: int, n_boot: int, n_perm: int, seed: int
              ) -> dict[str, Any]:
    """A representation on all its training stories: accuracy at every site, geometry with
    intervals at the dev-chosen site."""
    from emolens.geometry import affect_correlation, vectors_pca
    from emolens.stats import bootstrap_ci

    by_site = []
    for k, col in enumerate(rep.cols):
        by_site.append({"site": rep.bank.sites[col].name, "relative_depth": rep.depths[k],
                        "dev_accuracy": float(g.dev_correct[k].double().mean())
                        if g.dev_correct is not None else None,
                        "test_accuracy": g.test_accuracy(k), **g.affect(k)})
    k = g.chosen
    chosen = dict(by_site[k])
    if g.test_correct is not None and len(g.test_rows) >= 2:
        chosen["test_accuracy_ci"] = list(bootstrap_ci(g.test_correct[k].double(),
                                                       n_resamples=n_boot, seed=seed))
    chosen["n_test"] = len(g.test_rows)
    rated = [e for e in g.emotions if e in g.norms]
    if len(rated) >= 5:
        pca = vectors_pca(g.unit[k], g.emotions, orient=g.orient,
                          hook=rep.bank.sites[rep.cols[k]].name)
        ac = affect_correlation(pca, g.norms, n_boot=n_boot, n_perm=n_perm, seed=seed)
        chosen["affect"] = {"valence_r": ac.valence_r, "valence_ci": list(ac.valence_ci),
                            "valence_p": float(ac.p_value[0, 0]), "arousal_r": ac.arousal_r,
                            "arousal_ci": list(ac.arousal_ci),
                            "arousal_p": float(ac.p_value[1, 1]), "n": ac.n}
    return {"name": rep.name, "kind": rep.kind, "n_train": n_train,
            "chance": 1.0 / len(g.emotions), "by_site": by_site, "at_chosen_site": chosen,
            "site_chosen_by": "best dev-split accuracy" if g.dev_correct is not None
            else "deepest (no dev split)"}


def _curves(reps: Sequence[_Rep], pool: Mapping[str, list[str]],
            sizes: Sequence[int | None], n_draws: int, dev: Sequence[str],
            test: Sequence[str], norms: Mapping[str, Any], orient: Mapping[str, str],
            seed: int, bar: Any) -> list[dict[str, Any]]:
    from emolens.compare.similarity import rsa_rho

    gen = torch.Generator().manual_seed(seed + 2)
    most = max(len(v) for v in pool.values())
    points: dict[str, list[dict[str, Any]]] = {r.name: [] for r in reps}
    pair_points: dict[tuple[str, str], list[dict[str, Any]]] = {}
    model_reps = [r for r in reps if r.kind == "model"]
    full_done = False
    for size in sizes:
        full = size is None or size >= most  # every shared story: one point, labelled "all"
        if full and full_done:
            continue  # a larger size than the pool holds would repeat the "all" point
        full_done = full_done or full
        draws = 1 if full else n_draws
        per: dict[str, list[dict[str, float]]] = {r.name: [] for r in reps}
        pair_vals: dict[tuple[str, str], list[float]] = {}
        for _ in range(draws):
            ids = _draw(pool, size, gen)
            fitted = {}
            for rep in reps:
                g = _Geometry(rep, ids, dev, test, norms, orient)
                fitted[rep.name] = g
                per[rep.name].append({"test_accuracy": g.test_accuracy(g.chosen),
                                      "depth": rep.depths[g.chosen] or 0.0,
                                      **g.affect(g.chosen)})
            for i, a in enumerate(model_reps):
                for b in model_reps[i + 1:]:
                    ga, gb = fitted[a.name], fitted[b.name]
                    pair_vals.setdefault((a.name, b.name), []).append(
                        rsa_rho(ga.cosine(ga.chosen), gb.cosine(gb.chosen)))
            bar.update(1)
        label = "all" if full else str(size)
        capped = sum(1 for v in pool.values() if size is not None and len(v) < size)
        for rep in reps:
            rows_ = per[rep.name]
            points[rep.name].append({
                "label": label, "stories_per_emotion": None if full else size, "draws": draws,
                "emotions_with_fewer": capped, "most_per_emotion": most,
                **{key: _summary([v.get(key, float("nan")) for v in rows_])
                   for key in ("test_accuracy", "PC1_valence_r", "PC2_arousal_r",
                               "best_valence_abs_r_PC1_3", "depth")}})
        for key, vals in pair_vals.items():
            pair_points.setdefault(key, []).append({"label": label,
                                                    "stories_per_emotion": None if full else size,
                                                    "most_per_emotion": most,
                                                    "draws": draws, "rsa": _summary(vals)})
    out = [{"name": n, "points": p, "split": "train draws; site on dev; accuracy on test"}
           for n, p in points.items()]
    out += [{"name": f"{a} vs {b}", "pair": [a, b], "points": p,
             "split": "the same drawn train stories for both; sites chosen on dev"}
            for (a, b), p in pair_points.items()]
    return out
