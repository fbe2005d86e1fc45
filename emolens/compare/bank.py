"""``StoryBank``: every story's mean activation at a few depths, read once, re-fitted at will.

The controls of ``emolens.compare.controls`` (split-half reliability, learning curves,
cross-model similarity on disjoint stories) each need directions fitted on many different
subsets of the stories. Re-running the model for each subset would cost one extraction per
subset; instead ``build_story_bank`` streams the stories once and keeps, per story, its mean
activation over the content tokens (the study's pooling, the same ``position_mask`` as
``extract_emotions``) at a handful of sites, plus the neutral dialogues' first and second
moments. ``extract_emotions`` sums exactly these per-story means, so a subset's directions
follow from the bank with the same fit (``emolens.extraction.fit_directions``) and equal what
``extract_emotions`` returns on that subset (a test checks it).

Sites: the input of the first block (``blocks.0.hook_resid_pre``; in the rotary-position models
of the catalogue that is the token embedding itself, a lexical baseline that knows only the
words) and ``hook_resid_post`` at given relative depths (default 40, 55, 65 and 75 %; the depth of layer
``l`` of an ``n``-layer model is ``(l + 1) / n``), so banks of different models line up site by
site.

A bank built with ``path=`` is resumable: each emotion's stories go to their own safetensors
shard, written atomically and listed with its sha256 in ``bank.json``; a second call with the
same settings reads the shards it finds (hash verified) and streams only the missing emotions.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int

from emolens.errors import InputError, RegistryError
from emolens.sites import Site

if TYPE_CHECKING:
    from emolens.compat import Model

#: relative depths of the default bank sites (the issue-18 probe: 40-75 % of the blocks)
DEFAULT_DEPTHS = (0.40, 0.55, 0.65, 0.75)
EMBED_SITE = ("resid_pre", 0)
BANK_FORMAT = 1


def _as_rows(rows: Any) -> torch.Tensor:
    return torch.as_tensor(rows.tolist() if isinstance(rows, torch.Tensor) else list(rows),
                           dtype=torch.long)


def layers_at_depths(n_layers: int, depths: Sequence[float]) -> list[int]:
    """Block index whose relative depth ``(l + 1) / n_layers`` is nearest each depth (unique,
    sorted)."""
    out = []
    for d in depths:
        if not 0.0 < float(d) <= 1.0:
            raise InputError(f"relative depth must be in (0, 1], got {d!r}")
        out.append(min(range(n_layers), key=lambda la: (abs((la + 1) / n_layers - d), la)))
    return sorted(set(out))


@dataclass
class StoryBank:
    """Per-story mean activations of one model (see the module docstring).

    ``means``: ``[story, site, d_model]`` float32, site 0 the embedding (the first block's
    input), then the residual stream after blocks at the bank's depths;
    ``keep``: stories with at least one content token; ``norm_sum``/``n_tokens``: per story,
    the sum of residual norms over its content tokens at each site and their number (the
    steering unit of a fitted registry); ``neutral_total``/``neutral_outer``/``neutral_count``:
    moments of the neutral dialogues' content tokens per site (their covariance denoises the
    directions). ``records``: one dict per story (``id``, ``emotion``, ``split``, ``author``).
    """

    model: dict[str, Any]
    n_layers: int
    sites: list[Site]
    emotions: list[str]
    records: list[dict[str, Any]]
    means: Float[torch.Tensor, "story site d_model"]
    keep: Bool[torch.Tensor, " story"]
    norm_sum: Float[torch.Tensor, "story site"]
    n_tokens: Float[torch.Tensor, " story"]
    neutral_total: Float[torch.Tensor, "site d_model"] | None
    neutral_outer: Float[torch.Tensor, "site d_model d_model"] | None
    neutral_count: Float[torch.Tensor, " site"] | None
    info: dict[str, Any] = field(default_factory=dict)
    _axes: dict[tuple[str, float], tuple[torch.Tensor, int]] = field(
        default_factory=dict, repr=False)  # neutral eigen-axes, shared by every re-fit
    _covs: dict[tuple[int, ...], torch.Tensor | None] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ selection
    @property
    def labels(self) -> Int[torch.Tensor, " story"]:
        index = {e: i for i, e in enumerate(self.emotions)}
        return torch.tensor([index[r["emotion"]] for r in self.records], dtype=torch.long)

    @property
    def block_sites(self) -> list[Site]:
        """The residual-stream sites (every site but the embedding, site 0)."""
        return self.sites[1:]

    @property
    def relative_depths(self) -> list[float]:
        """``(layer + 1) / n_layers`` of each block site."""
        return [round((s.layer + 1) / self.n_layers, 4) for s in self.block_sites]

    def rows(self, split: str | None = None, emotions: Sequence[str] | None = None,
             author: str | None = None) -> Int[torch.Tensor, " rows"]:
        """Indices of the stories of ``split`` (``train``/``dev``/``test``, None: all), of
        ``emotions`` (None: all) and of ``author`` (None: any) with content tokens."""
        wanted = set(emotions) if emotions is not None else None
        if wanted is not None and not wanted <= set(self.emotions):
            from emolens.errors import unknown_name_message

            bad = sorted(wanted - set(self.emotions))[0]
            raise InputError(unknown_name_message("emotion", bad, self.emotions))
        idx = [i for i, r in enumerate(self.records)
               if (split is None or r["split"] == split)
               and (wanted is None or r["emotion"] in wanted)
               and (author is None or r.get("author") == author) and bool(self.keep[i])]
        return torch.tensor(idx, dtype=torch.long)

    def per_emotion(self, rows: Int[torch.Tensor, " rows"]) -> dict[str, list[int]]:
        """``rows`` grouped by emotion (in ``emotions`` order; stable within each)."""
        out: dict[str, list[int]] = {e: [] for e in self.emotions}
        for i in rows.tolist():
            out[self.records[i]["emotion"]].append(i)
        return out

    # ------------------------------------------------------------------ fitting
    def directions(self, rows: Int[torch.Tensor, " rows"] | Sequence[int],
                   cols: Sequence[int] | None = None, *, method: str = "mean_diff",
                   **method_params: Any) -> tuple[Float[torch.Tensor, "site emotion d"],
                                                  Float[torch.Tensor, "site d"], Any]:
        """Unit directions ``[site, emotion, d]`` and stimulus centres ``[site, d]`` fitted on
        the stories ``rows`` at the bank sites ``cols`` (default: all) with ``method`` (default
        the study's recipe, neutral denoising from the bank's neutral moments when it has
        them), by ``emolens.extraction.fit_directions``; and the fitted method (its
        ``params()``). Every emotion needs at least one story in ``rows``."""
        from emolens.extraction import ExtractionData, fit_directions, get_method

        rows = _as_rows(rows)
        cols = list(range(len(self.sites))) if cols is None else list(cols)
        labels = self.labels[rows]
        n_cls = len(self.emotions)
        counts = torch.bincount(labels, minlength=n_cls).double()
        if (counts == 0).any():
            missing = [self.emotions[i] for i in (counts == 0).nonzero().flatten().tolist()]
            raise InputError(f"no stories of {missing} among the {len(rows)} rows; every "
                             "emotion needs at least one story to fit")
        x = self.means[rows][:, cols].double()  # [rows, site, d]
        sums = torch.zeros(len(cols), n_cls, x.shape[-1], dtype=torch.float64)
        sums.index_add_(1, labels, x.transpose(0, 1))
        class_means = sums / counts[None, :, None]
        algo = get_method(method, **method_params)
        data = ExtractionData([self.sites[i] for i in cols], list(self.emotions), class_means,
                              counts, self.neutral_covariance(cols), axes_cache=self._axes)
        unit, center = fit_directions(algo, data)
        return unit, center, algo

    def neutral_covariance(self, cols: Sequence[int]
                           ) -> Float[torch.Tensor, "site d d"] | None:
        """Covariance of the neutral dialogues' content tokens at ``cols`` (None without)."""
        from emolens.extraction.accumulator import MomentAccumulator

        key = tuple(cols)
        if key in self._covs:
            return self._covs[key]
        if self.neutral_outer is None or self.neutral_total is None \
                or self.neutral_count is None or float(self.neutral_count[cols].min()) <= 0:
            return None
        moments = MomentAccumulator(len(cols), self.means.shape[-1])
        moments.total = self.neutral_total[cols].clone()
        moments.outer = self.neutral_outer[cols].clone()
        moments.count = self.neutral_count[cols].clone()
        self._covs[key] = moments.covariance()
        return self._covs[key]

    def fit(self, rows: Int[torch.Tensor, " rows"] | Sequence[int], *, method: str = "mean_diff",
            sites: str = "blocks", name: str | None = None, default_layer: int | None = None,
            **method_params: Any) -> Any:
        """An ``EmotionRegistry`` fitted on the stories ``rows`` (``directions``): what
        ``extract_emotions`` returns on these stories. ``sites="blocks"`` (the residual-stream
        sites) or ``"embed"`` (the first block's input: the lexical baseline)."""
        from emolens.registry import EmotionRegistry

        rows = _as_rows(rows)
        if sites not in ("blocks", "embed"):
            raise InputError(f"sites must be 'blocks' or 'embed', got {sites!r}")
        cols = list(range(1, len(self.sites))) if sites == "blocks" else [0]
        unit, center, algo = self.directions(rows, cols, method=method, **method_params)
        mean_norm = (self.norm_sum[rows][:, cols].sum(0)
                     / self.n_tokens[rows].sum().clamp(min=1)).float()
        counts = torch.bincount(self.labels[rows], minlength=len(self.emotions))
        metadata = {"model": dict(self.model), "n_layers": self.n_layers,
                    "method": {"name": algo.name, **algo.params()}, "positions": "content",
                    "story_bank": {"stories": len(rows), "per_emotion": counts.tolist(),
                                   "corpus": self.info.get("corpus")}}
        return EmotionRegistry(unit, list(self.emotions), [self.sites[i] for i in cols],
                               mean_norm, metadata=metadata,
                               default_layer=default_layer if sites == "blocks" else None,
                               family="emotion", name=name or f"bank-{algo.name}",
                               center=center)

    def predictions(self, unit: Float[torch.Tensor, "site emotion d"],
                    center: Float[torch.Tensor, "site d"], rows: Int[torch.Tensor, " rows"],
                    cols: Sequence[int] | None = None) -> Int[torch.Tensor, "site rows"]:
        """The emotion the one scoring rule (``emolens.scoring``: argmax of the centred
        projection) gives each story of ``rows`` at each site ``cols``."""
        from emolens.scoring import score

        cols = list(range(len(self.sites))) if cols is None else list(cols)
        rows = _as_rows(rows)
        return torch.stack([score(self.means[rows, c], unit[k], center[k]).argmax(-1)
                            for k, c in enumerate(cols)])

    def accuracy(self, registry: Any, rows: Int[torch.Tensor, " rows"]
                 ) -> dict[int, Bool[torch.Tensor, " rows"]]:
        """Per site of ``registry`` (by layer), which of the stories ``rows`` the one scoring
        rule (``emolens.scoring``: argmax of the centred projection) classifies correctly:
        ``predictions`` with the registry's directions and centres, against the labels."""
        names = {s.name: i for i, s in enumerate(self.sites)}
        for site in registry.sites:
            if site.name not in names:
                raise RegistryError(f"registry site {site.name!r} is not in this bank "
                                    f"({[s.name for s in self.sites]})")
        unit = torch.stack([registry.matrix(s.name) for s in registry.sites])
        center = torch.stack([registry.center(s.name) for s in registry.sites])
        rows = _as_rows(rows)
        pred = self.predictions(unit, center, rows, [names[s.name] for s in registry.sites])
        labels = self.labels[rows]
        return {site.layer: pred[k] == labels for k, site in enumerate(registry.sites)}


def _site_list(model: Model, depths: Sequence[float] | None, layers: Sequence[int] | None
               ) -> list[Site]:
    from emolens.sites import resolve_site

    n = int(model.cfg.n_layers)
    if layers is not None and depths is not None:
        raise InputError("give layers= or depths=, not both")
    chosen = list(layers) if layers is not None else layers_at_depths(n, depths or DEFAULT_DEPTHS)
    sites = [resolve_site(model, EMBED_SITE)] + [resolve_site(model, la) for la in chosen]
    if len({s.name for s in sites}) != len(sites):
        raise InputError(f"bank sites repeat: {[s.name for s in sites]}")
    return sites


def _settings(model: Model, corpus: Any, sites: list[Site], emotions: list[str],
              max_train: int | None, n_neutral: int) -> dict[str, Any]:
    from emolens.models.provenance import model_provenance

    prov = model_provenance(model).to_dict()
    return {"model_id": prov.get("model_id"), "weights_sha256": prov.get("weights_sha256"),
            "corpus": {"name": corpus.name, "content_hash": corpus.content_hash},
            "sites": [s.name for s in sites], "max_train_per_emotion": max_train,
            "n_neutral": n_neutral, "positions": "content"}


def build_story_bank(model: Model, corpus: Any = None, *, emotions: Sequence[str] | None = None,
                     depths: Sequence[float] | None = None, layers: Sequence[int] | None = None,
                     max_train_per_emotion: int | None = None, n_neutral: int = 64,
                     batch_size: int = 8, compute_dtype: Any = "auto",
                     path: str | Path | None = None, progress: bool = True) -> StoryBank:
    """Stream every story of ``emotions`` (train, dev and test; at most
    ``max_train_per_emotion`` training stories each, the first in corpus order as
    ``extract_emotions`` takes them) and ``n_neutral`` neutral dialogues once; see the module
    docstring. ``path``: a folder to keep the bank in and resume from."""
    from emolens.errors import check_positive_int
    from emolens.hardware import resolve_compute_dtype
    from emolens.models.provenance import model_provenance
    from emolens.stimuli import load_corpus

    check_positive_int(batch_size, "batch_size")
    check_positive_int(max_train_per_emotion, "max_train_per_emotion", allow_none=True)
    if n_neutral < 0:
        raise InputError(f"n_neutral must be >= 0, got {n_neutral!r}")
    corpus = corpus if corpus is not None else load_corpus()
    emos = list(emotions if emotions is not None else corpus.emotions)
    unknown = [e for e in emos if e not in corpus.emotions]
    if unknown:
        from emolens.errors import unknown_name_message

        raise InputError(unknown_name_message("emotion", unknown[0], corpus.emotions))
    if len(emos) < 2:
        raise InputError(f"a bank needs at least 2 emotions, got {emos}")
    sites = _site_list(model, depths, layers)
    dtype = resolve_compute_dtype(compute_dtype, model)
    settings = _settings(model, corpus, sites, emos, max_train_per_emotion, n_neutral)
    folder = Path(path) if path is not None else None
    manifest = _read_manifest(folder, settings) if folder is not None else {"shards": {}}
    manifest["bank"] = {"model": model_provenance(model).to_dict(),
                        "n_layers": int(model.cfg.n_layers),
                        "sites": [[s.layer, s.name] for s in sites], "emotions": emos,
                        "max_train_per_emotion": max_train_per_emotion}
    t0 = time.perf_counter()

    per_emotion: dict[str, dict[str, Any]] = {}
    todo = []
    for e in emos:
        recs = []
        for split in ("train", "dev", "test"):
            got = corpus.stories(e, split=split)
            if split == "train":
                got = got[:max_train_per_emotion]
            recs += got
        if folder is not None and e in manifest["shards"]:
            per_emotion[e] = _load_shard(folder, e, manifest, [r.id for r in recs])
        else:
            todo.append((e, recs))
    neutral = [list(r.messages) for r in corpus.neutral][:n_neutral]
    need_neutral = bool(neutral) and (folder is None or "neutral" not in manifest)
    total = sum(len(r) for _, r in todo) + (len(neutral) if need_neutral else 0)
    from emolens.runtime import progress_bar

    bar = progress_bar(total=total, desc="story bank", enabled=progress and total > 0,
                       unit="text")
    for e, recs in todo:
        shard: dict[str, Any] = dict(_stream_stories(model, [r.text for r in recs], sites,
                                                     batch_size, dtype.dtype, bar))
        shard["records"] = [{"id": r.id, "emotion": e, "split": r.split,
                             "author": _author(r)} for r in recs]
        per_emotion[e] = shard
        if folder is not None:
            _save_shard(folder, e, shard, manifest, settings)
    if need_neutral:
        moments = _stream_neutral(model, neutral, sites, batch_size, dtype.dtype, bar)
        if folder is not None:
            _save_neutral(folder, moments, manifest, settings)
    elif neutral and folder is not None:
        moments = _load_neutral(folder, manifest)
    else:
        d = int(model.cfg.d_model)
        moments = {"total": torch.zeros(len(sites), d, dtype=torch.float64),
                   "outer": torch.zeros(len(sites), d, d, dtype=torch.float64),
                   "count": torch.zeros(len(sites), dtype=torch.float64)}
    bar.close()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        manifest["settings"] = settings
        _write_manifest(folder, manifest)  # complete: load_story_bank can read it alone
    records = [r for e in emos for r in per_emotion[e]["records"]]
    cat = {k: torch.cat([per_emotion[e][k] for e in emos]) for k in
           ("means", "keep", "norm_sum", "n_tokens")}
    info = {"corpus": settings["corpus"], "compute_dtype": dtype.name,
            "compute_dtype_reason": dtype.reason, "max_train_per_emotion": max_train_per_emotion,
            "n_neutral": len(neutral), "batch_size": batch_size,
            "seconds_this_call": round(time.perf_counter() - t0, 1),
            "streamed_emotions": [e for e, _ in todo], "resumed_emotions":
                [e for e in emos if e not in {x for x, _ in todo}]}
    return StoryBank(model=model_provenance(model).to_dict(), n_layers=int(model.cfg.n_layers),
                     sites=sites, emotions=emos, records=records, means=cat["means"],
                     keep=cat["keep"], norm_sum=cat["norm_sum"], n_tokens=cat["n_tokens"],
                     neutral_total=moments["total"], neutral_outer=moments["outer"],
                     neutral_count=moments["count"], info=info)


def load_story_bank(path: str | Path) -> StoryBank:
    """Read a bank that ``build_story_bank(..., path=path)`` wrote, without the model (every
    shard's sha256 checked). Raises ``InputError`` when the bank is incomplete: build it
    again with the same settings to finish it."""
    from emolens.io import read_json

    folder = Path(path)
    f = folder / "bank.json"
    if not f.is_file():
        raise InputError(f"no story bank at {folder} (no bank.json); build one with "
                         "emolens.compare.build_story_bank(model, path=...)")
    man = read_json(f, error=InputError)
    meta = man.get("bank")
    if not isinstance(meta, dict):
        raise InputError(f"{f} has no bank description; rebuild the bank")
    emos = list(meta["emotions"])
    missing = [e for e in emos if e not in man.get("shards", {})]
    if missing:
        raise InputError(f"the story bank at {folder} is incomplete ({len(missing)} emotions "
                         f"missing, e.g. {missing[0]!r}); run build_story_bank again with the "
                         "same settings to finish it")
    parts = []
    records: list[dict[str, Any]] = []
    for e in emos:
        entry = man["shards"][e]
        parts.append(_verified(folder, entry))
        records += entry["records"]
    cat = {k: torch.cat([p[k] for p in parts]) for k in ("means", "keep", "norm_sum",
                                                         "n_tokens")}
    moments = _load_neutral(folder, man) if "neutral" in man else None
    return StoryBank(model=meta["model"], n_layers=int(meta["n_layers"]),
                     sites=[Site(int(la), str(n)) for la, n in meta["sites"]], emotions=emos,
                     records=records, means=cat["means"], keep=cat["keep"].bool(),
                     norm_sum=cat["norm_sum"], n_tokens=cat["n_tokens"],
                     neutral_total=moments["total"] if moments else None,
                     neutral_outer=moments["outer"] if moments else None,
                     neutral_count=moments["count"] if moments else None,
                     info={"corpus": man["settings"]["corpus"], "loaded_from": str(folder),
                           "max_train_per_emotion": meta.get("max_train_per_emotion"),
                           "n_neutral": man["settings"]["n_neutral"]})


def _author(rec: Any) -> str:
    author = getattr(rec, "author", None) or (rec.meta or {}).get("author")
    return str(author) if author else "hand-written"


def _stream_stories(model: Model, texts: list[str], sites: list[Site], batch_size: int,
                    compute_dtype: torch.dtype | None, bar: Any) -> dict[str, torch.Tensor]:
    from emolens.extraction import stream_text_means

    got = stream_text_means(model, texts, sites, policy="content", batch_size=batch_size,
                            compute_dtype=compute_dtype, norms=True, bar=bar)
    assert got.norm_sum is not None and got.n_tokens is not None  # norms=True fills both
    return {"means": got.means, "keep": got.keep, "norm_sum": got.norm_sum,
            "n_tokens": got.n_tokens}


def _stream_neutral(model: Model, neutral: list[Any], sites: list[Site], batch_size: int,
                    compute_dtype: torch.dtype | None, bar: Any) -> dict[str, torch.Tensor]:
    from emolens.extraction import stream_neutral_moments

    acc = stream_neutral_moments(model, neutral, sites, batch_size=batch_size,
                                 compute_dtype=compute_dtype, bar=bar)
    return {"total": acc.total, "outer": acc.outer, "count": acc.count}


# ---------------------------------------------------------------------- files (resumable)
def _read_manifest(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    from emolens.io import read_json

    f = folder / "bank.json"
    if not f.exists():
        return {"format": BANK_FORMAT, "settings": settings, "shards": {}}
    man = read_json(f, error=InputError)
    if man.get("settings") != settings:
        raise InputError(
            f"the story bank in {folder} was built with other settings ({man.get('settings')}); "
            f"these are {settings}. Use another path= or delete that folder to rebuild")
    return man


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    from emolens.io import write_json

    write_json(folder / "bank.json", manifest)


def _save_shard(folder: Path, emotion: str, shard: dict[str, Any], manifest: dict[str, Any],
                settings: dict[str, Any]) -> None:
    from emolens.io import save_tensors, sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    fname = f"stories-{len(manifest['shards']):03d}.safetensors"
    save_tensors(folder / fname, {k: shard[k] for k in ("means", "keep", "norm_sum",
                                                         "n_tokens")})
    manifest["settings"] = settings
    manifest["shards"][emotion] = {"file": fname, "sha256": sha256_file(folder / fname),
                                   "records": shard["records"]}
    _write_manifest(folder, manifest)


def _verified(folder: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    from emolens.io import load_tensors, sha256_file

    f = folder / entry["file"]
    if not f.is_file() or sha256_file(f) != entry["sha256"]:
        raise InputError(f"story bank shard {f} is missing or does not match its sha256 in "
                         f"{folder / 'bank.json'}; delete the folder to rebuild the bank")
    return load_tensors(f)


def _load_shard(folder: Path, emotion: str, manifest: dict[str, Any], ids: list[str]
                ) -> dict[str, Any]:
    entry = manifest["shards"][emotion]
    if [r["id"] for r in entry["records"]] != ids:
        raise InputError(f"story bank shard of {emotion!r} in {folder} holds other stories "
                         "than the corpus gives now; delete the folder to rebuild the bank")
    out: dict[str, Any] = dict(_verified(folder, entry))
    out["records"] = entry["records"]
    return out


def _save_neutral(folder: Path, moments: dict[str, torch.Tensor], manifest: dict[str, Any],
                  settings: dict[str, Any]) -> None:
    from emolens.io import save_tensors, sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "neutral.safetensors", moments)
    manifest["settings"] = settings
    manifest["neutral"] = {"file": "neutral.safetensors",
                                     "sha256": sha256_file(folder / "neutral.safetensors")}
    _write_manifest(folder, manifest)


def _load_neutral(folder: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    return _verified(folder, manifest["neutral"])
