"""``extract_emotions``: stream a stimulus corpus through the model and build a registry.

Pass 1 streams the training texts (and the neutral dialogues) once, with hooks only at the
requested sites and the forward pass stopped after the deepest one; each hook reduces its batch
to per-text means and adds them into float64 sums (``ClassMeanAccumulator``). Pass 2 streams
the validation texts and scores each against the new directions (argmax over emotions of the
projection of the text's mean activation), so validation accuracy per layer is measured on
held-out text without keeping activations around.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float

from emolens.compat import run_to_layer
from emolens.errors import ExtractionError, InputError, check_positive_int
from emolens.extraction.accumulator import ClassMeanAccumulator, MomentAccumulator, masked_means
from emolens.extraction.methods import ExtractionData, ExtractionMethod, get_method
from emolens.extraction.positions import position_mask, validate_policy
from emolens.registry import EmotionRegistry
from emolens.runtime import model_device, progress_bar, resolve_batch_size, sorted_batches
from emolens.scoring import CLASSIFY_RULE, score
from emolens.sites import Site, require_block_sites, resolve_sites
from emolens.tokens import TextInput, TokenizedBatch, to_inputs

if TYPE_CHECKING:
    from emolens.compat import Model


@dataclass
class LabelledTexts:
    """Texts with integer class labels (what the streaming passes consume)."""

    texts: list[TextInput]
    labels: list[int]


def _batches(items: LabelledTexts, batch_size: int
             ) -> Iterator[tuple[list[TextInput], torch.Tensor, torch.Tensor]]:
    """Length-sorted batches (less padding); accumulation is a sum, so order does not matter.
    Yields texts, labels and the texts' indices."""
    for idx in sorted_batches(items.texts, batch_size):
        yield ([items.texts[i] for i in idx], torch.tensor([items.labels[i] for i in idx]),
               torch.tensor(idx))


def stream_sites(model: Model, texts: Sequence[TextInput], sites: Sequence[Site],
                 on_batch: Callable[[int, Float[torch.Tensor, "batch pos d_model"], TokenizedBatch], None],
                 *, padding_side: str = "right", compute_dtype: torch.dtype | None = None) -> None:
    """Run ``texts`` (one batch) with hooks at ``sites`` only, stopping after the deepest.

    ``on_batch(site_index, activation, batch)`` is called once per site (activation in float32
    on the model's device: callers reduce it there and copy only the reduction, which matters on
    a GPU); nothing is kept. ``compute_dtype`` runs the forward under ``torch.autocast``
    with that dtype (e.g. ``torch.bfloat16``). Raises ``ExtractionError`` naming the site when an
    activation is NaN or infinite.
    """
    batch = to_inputs(model, list(texts), padding_side=padding_side)
    device = model_device(model)
    tokens = batch.tokens.to(device)
    kwargs = {k: v.to(device) for k, v in batch.forward_kwargs().items()}

    def make_hook(i: int, site: Site) -> Callable[..., None]:
        def hook(act: torch.Tensor, *, hook: Any) -> None:
            # one reduction instead of an elementwise mask: any NaN or inf makes the sum
            # non-finite (finite activations cannot overflow a float32 sum at these sizes)
            if not torch.isfinite(act.float().sum()):
                raise ExtractionError(
                    f"non-finite activations (NaN or inf) at site {site.name!r} for texts "
                    f"{[str(t)[:40] for t in texts][:3]}...; check the model's dtype and inputs")
            on_batch(i, act.detach().float(), batch)
        return hook

    hooks = [(s.name, make_hook(i, s)) for i, s in enumerate(sites)]
    stop = max(s.layer for s in sites) + 1
    dev_type = device.type
    with torch.inference_mode(), torch.autocast(dev_type, dtype=compute_dtype or torch.float32,
                                                enabled=compute_dtype is not None):
        run_to_layer(model, tokens, hooks, stop, **kwargs)


def permuted_labels(labels: Sequence[int], seed: int,
                    groups: Sequence[int] | None = None) -> torch.Tensor:
    """``labels`` permuted with ``seed``: over texts (``groups`` None), or over groups, each
    text taking its group's permuted label (``groups[i]``: the group index of text i, 0..G-1;
    every text of a group carries one label)."""
    g = torch.Generator().manual_seed(int(seed))
    lab = torch.tensor(list(labels), dtype=torch.long)
    if groups is None:
        return lab[torch.randperm(len(lab), generator=g)]
    grp = torch.tensor(list(groups), dtype=torch.long)
    n_groups = int(grp.max()) + 1 if len(grp) else 0
    group_label = torch.full((n_groups,), -1, dtype=torch.long)
    group_label[grp] = lab  # one label per group (checked by _group_index)
    return group_label[torch.randperm(n_groups, generator=g)][grp]


def _group_index(corpus: Any, names: Sequence[str], train: LabelledTexts,
                 permutation_groups: Mapping[str, Sequence[Hashable]] | None,
                 max_train: int | None) -> list[int] | None:
    """The group index (0..G-1, first appearance order) of each training text, or None."""
    if permutation_groups is None:
        return None
    if not isinstance(corpus, Mapping):
        raise InputError("permutation_groups needs a mapping corpus (emotion -> texts); a "
                         "Corpus's stories are one text each, so leave it None")
    keys: list[Hashable] = []
    for c, e in enumerate(names):
        given = permutation_groups.get(e)
        got = None if given is None else list(given)
        n = train.labels.count(c)  # the texts _from_corpus took (max_train applied)
        if got is None or len(got[:max_train]) != n:
            raise InputError(f"permutation_groups[{e!r}] must give one key per text of {e!r} "
                             f"({n}), got {None if got is None else len(got)}")
        keys += got[:max_train]
    index: dict[Hashable, int] = {}
    out = [index.setdefault(k, len(index)) for k in keys]
    label_of: dict[int, int] = {}
    for gi, lab in zip(out, train.labels):
        if label_of.setdefault(gi, lab) != lab:
            raise InputError(f"permutation group {keys[out.index(gi)]!r} holds texts of two "
                             f"emotions ({names[label_of[gi]]!r} and {names[lab]!r}); a group's "
                             "texts must share one emotion")
    return out


def _from_corpus(corpus: Any, emotions: Sequence[str] | None, max_train: int | None = None
                 ) -> tuple[list[str], LabelledTexts, LabelledTexts, LabelledTexts,
                            list[TextInput], dict[str, Any]]:
    """Split a Corpus (or a mapping emotion -> texts) into train / dev / test / neutral."""
    if isinstance(corpus, Mapping):
        names: list[str] = list(emotions or corpus.keys())
        train = LabelledTexts([], [])
        for c, e in enumerate(names):
            if e not in corpus:
                raise InputError(f"emotion {e!r} is not in the given texts {sorted(corpus)}")
            given = corpus[e]
            if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
                raise InputError(
                    f"the texts of emotion {e!r} must be a list of texts, got "
                    f"{type(given).__name__} {str(given)[:40]!r}; write {{{e!r}: [{str(given)[:20]!r}]}}"
                    " (a string would be read as one text per character)")
            texts = list(given)[:max_train]
            train.texts += texts
            train.labels += [c] * len(texts)
        return (names, train, LabelledTexts([], []), LabelledTexts([], []), [],
                {"name": "user-texts", "content_hash": None})
    names = list(emotions or corpus.emotions)
    unknown = [e for e in names if e not in corpus.emotions]
    if unknown:
        from emolens.errors import unknown_name_message

        raise InputError(unknown_name_message("emotion", unknown[0], corpus.emotions))
    # choices (the default layer) are made on dev, figures reported on test (corpus.split_of)
    train, val, test = LabelledTexts([], []), LabelledTexts([], []), LabelledTexts([], [])
    counts = {}
    for c, e in enumerate(names):
        tr = [r.text for r in corpus.stories(e, split="train")][:max_train]
        va = [r.text for r in corpus.stories(e, split="dev")]
        te = [r.text for r in corpus.stories(e, split="test")]
        train.texts += tr
        train.labels += [c] * len(tr)
        val.texts += va
        val.labels += [c] * len(va)
        test.texts += te
        test.labels += [c] * len(te)
        counts[e] = {"train": len(tr), "dev": len(va), "test": len(te)}
    neutral: list[TextInput] = [list(r.messages) for r in corpus.neutral]
    info = {"name": corpus.name, "version": getattr(corpus, "version", None),
            "content_hash": corpus.content_hash, "texts": counts, "neutral_dialogues": len(neutral)}
    return names, train, val, test, neutral, info


def extract_emotions(model: Model, corpus: Any = None, *, layers: Any = None,
                     method: str | ExtractionMethod = "mean_diff", positions: str = "content",
                     batch_size: int | None = None, emotions: Sequence[str] | None = None,
                     neutral: Sequence[TextInput] | None = None, validate: bool = True,
                     default_layer: int | None = None,
                     label_permutation_seed: int | None = None,
                     shuffled_control: bool | int = True,
                     family: str = "emotion", name: str | None = None, progress: bool = True,
                     padding_side: str = "right", compute_dtype: torch.dtype | str | None = "auto",
                     max_texts_per_emotion: int | None = None,
                     distributed: bool | str | None = "auto",
                     shuffled_out: list[EmotionRegistry] | None = None,
                     permutation_groups: Mapping[str, Sequence[Hashable]] | None = None,
                     **method_params: Any) -> EmotionRegistry:
    """Build an ``EmotionRegistry`` from stimulus text, streaming.

    Args:
        model: a TransformerLens model (``TransformerBridge`` or anything with its surface).
        corpus: a ``Corpus`` (default: ``emolens.load_corpus()``) or a mapping
            ``emotion -> list of texts`` (then every text is training data and there is no
            validation unless the corpus has splits).
        layers: layer numbers / hook names (``None``: every layer's ``hook_resid_post``).
        method: ``"mean_diff"`` (default, the study's recipe), ``"pca_pairs"``, ``"probe"``, a
            registered plug-in name, or an ``ExtractionMethod`` instance.
        positions: position policy (see ``emolens.extraction.positions``); default
            ``"content"``: every real token but the first (attention sink).
        batch_size: texts per forward pass; ``None`` (default): the batch the model's device
            runs fastest (``emolens.runtime.resolve_batch_size``: 8 on a CPU, 32 elsewhere).
            The directions do not depend on it.
        emotions: restrict to these emotions (default: all in the corpus).
        neutral: neutral texts/dialogues for denoising (default: the corpus's neutral dialogues).
        validate: measure held-out accuracy per layer on the corpus's validation split.
        default_layer: fix the registry's default layer (default: best validation accuracy).
        label_permutation_seed: fit *this* registry on training labels permuted with this seed,
            so the whole registry is a null control (recorded as
            ``metadata["shuffled_labels_seed"]``; its held-out accuracy should sit at chance).
            Default None: the real labels.
        shuffled_control: keep the real fit and also fit directions on training labels
            permuted with seeds 0..K-1 in the same passes (no extra forward; ``True``: K = 5, an
            int: that K) and report their held-out accuracy per layer beside the real one: the
            mean over the K permutations (``validation["shuffled_accuracy_by_layer"]``, which
            must sit at chance) and each permutation's (``"shuffled_accuracy_by_seed"``).
            Seed k of this control scores as ``label_permutation_seed=k`` does.
        compute_dtype: the dtype of the forward passes (``emolens.hardware``): ``"auto"``
            (default) runs them under bf16 autocast only where the hardware has native bf16 (a
            CPU with AVX512-BF16 or AMX, a CUDA device with bf16) and in the model's own dtype
            elsewhere (emulated bf16 on an AVX2-only CPU is 6-17x slower); ``"float32"``,
            ``"bfloat16"`` or a ``torch.dtype`` force one; ``None``: the model's own dtype. The
            sums stay in float64. The resolved dtype and the reason are in the metadata
            (``compute_dtype``, ``compute_dtype_reason``).
        max_texts_per_emotion: use at most this many training texts per emotion (the first in
            the corpus's order); validation texts are never capped.
        distributed: data parallelism over ``torch.distributed`` (``emolens.distributed``):
            ``"auto"`` (default) uses an initialised process group, ``True`` also initialises
            one from the torchrun environment, ``False`` never. Each rank streams a shard of
            the training, neutral and validation texts (balanced by token count); every sum
            (class sums and counts, neutral moments, shuffled-label controls, mean norms,
            validation counts) is all-reduced in float64 before the method fits, and every rank
            returns the same registry (saving it is the caller's job: rank 0 only).
        shuffled_out: a list that receives the ``shuffled_control`` fits as registries
            (seed k's at index k, ``metadata["shuffled_labels_seed"] = k``, family and default
            layer of the real registry, name ``"<name>-shuffled-<k>"``): the same in-pass
            fits, also when there are no validation texts (a mapping corpus), so a null
            control costs no forward pass; seed k equals ``label_permutation_seed=k``.
        permutation_groups: for a mapping corpus, one key per text of each emotion (same
            order): texts with one key come from one source (e.g. readings of one dialogue)
            and are not exchangeable, so every label permutation (``label_permutation_seed``,
            ``shuffled_control``) permutes the labels of whole groups, each group's texts keeping
            one label. Default None: every text is its own group.
        method_params: passed to the method's factory (e.g. ``neutral_variance=0.5``).

    Returns an ``EmotionRegistry`` whose metadata records the model's provenance, sites,
    method and parameters, position policy, corpus name and content hash, validation figures,
    and the mean residual norm at each site (the steering unit).
    """
    t0 = time.perf_counter()
    if "shuffle_labels" in method_params:  # removed in round 3: one name per option
        raise ExtractionError(f"shuffle_labels={method_params['shuffle_labels']!r} was removed; "
                              "pass the same seed as label_permutation_seed= (shuffled_control= "
                              "is the separate in-pass control)")
    policy = validate_policy(positions)
    batch_size = resolve_batch_size(batch_size, model)
    check_positive_int(max_texts_per_emotion, "max_texts_per_emotion", allow_none=True)
    if corpus is None:
        from emolens.stimuli import load_corpus

        corpus = load_corpus()
    if max_texts_per_emotion is not None and max_texts_per_emotion < 1:
        raise InputError(f"max_texts_per_emotion must be >= 1 or None, got "
                         f"{max_texts_per_emotion!r}")
    from emolens.hardware import resolve_compute_dtype

    resolved_dtype = resolve_compute_dtype(compute_dtype, model)
    compute_dtype = resolved_dtype.dtype
    names, train, val, test, corpus_neutral, corpus_info = _from_corpus(corpus, emotions,
                                                                  max_texts_per_emotion)
    if len(names) < 2:
        raise InputError(f"need at least 2 emotions to contrast, got {names}")
    if not train.texts:
        raise InputError("no training texts were found for the requested emotions")
    groups = _group_index(corpus, names, train, permutation_groups, max_texts_per_emotion)
    if label_permutation_seed is not None:
        train = LabelledTexts(train.texts, permuted_labels(train.labels, int(label_permutation_seed),
                                                           groups).tolist())
    neutral_texts = list(corpus_neutral if neutral is None else neutral)
    algo = get_method(method, **method_params)
    sites = require_block_sites(resolve_sites(model, layers))
    d_model = int(model.cfg.d_model)
    acc = ClassMeanAccumulator(len(sites), len(names), d_model)
    n_controls = (5 if shuffled_control is True else int(shuffled_control)) \
        if shuffled_control and ((validate and val.texts) or shuffled_out is not None) else 0
    if n_controls < 0:
        raise InputError(f"shuffled_control must be a bool or a count >= 0, got {shuffled_control!r}")
    control_accs = [ClassMeanAccumulator(len(sites), len(names), d_model)
                    for _ in range(n_controls)]
    shuffled_labels: list[torch.Tensor] = [permuted_labels(train.labels, k, groups)
                                           for k in range(n_controls)]
    moments = MomentAccumulator(len(sites), d_model) if neutral_texts else None
    from emolens.distributed import context as _dist_context
    from emolens.distributed import shard as _dist_shard

    ctx = _dist_context(distributed)
    train_ids = torch.tensor(_dist_shard(ctx, model, train.texts), dtype=torch.long)
    local_train = LabelledTexts([train.texts[i] for i in train_ids.tolist()],
                                [train.labels[i] for i in train_ids.tolist()])
    local_neutral = [neutral_texts[i] for i in _dist_shard(ctx, model, neutral_texts)]
    progress = progress and ctx.is_main
    features: torch.Tensor | None = None
    feat_labels: list[int] = []
    feat_index: list[int] = []
    feat_rows: list[torch.Tensor] = []

    # held-out texts (dev, then test): when their per-text means fit HELDOUT_BUDGET_BYTES they
    # are read in pass 1 and scored after the fit without a second forward pass
    heldout = LabelledTexts(val.texts + test.texts, val.labels + test.labels) \
        if validate and val.texts else LabelledTexts([], [])
    keep_heldout = 0 < len(heldout.texts) * len(sites) * d_model * 4 <= HELDOUT_BUDGET_BYTES
    held_ids = _dist_shard(ctx, model, heldout.texts) if keep_heldout else []
    local_held = LabelledTexts([heldout.texts[i] for i in held_ids],
                               [heldout.labels[i] for i in held_ids])

    # ---- pass 1: training texts, neutral dialogues, held-out texts (this rank's shard of each)
    bar = progress_bar(total=len(local_train.texts) + len(local_neutral) + len(local_held.texts),
                       desc="extract", enabled=progress, unit="text")
    with ctx.guard("extraction pass 1"):
        _pass1(model, local_train, train_ids, local_neutral, sites, acc, control_accs,
               shuffled_labels, moments, policy, batch_size, padding_side, compute_dtype,
               algo.needs_features, feat_rows, feat_labels, feat_index, bar)
        held = stream_text_means(model, local_held.texts, sites, policy=policy,
                                 batch_size=batch_size, padding_side=padding_side,
                                 compute_dtype=compute_dtype, bar=bar)
    bar.close()
    ctx.all_reduce_([t for a in (acc, *control_accs) for t in
                     (a.sums, a.counts, a.norm_sum, a.norm_count)]
                    + ([moments.total, moments.outer, moments.count] if moments is not None
                       else []))
    if algo.needs_features:
        features = torch.cat(feat_rows, 0) if feat_rows else \
            torch.zeros(0, len(sites), d_model)
        if ctx.active:  # every rank gets every row, in the single-process (batch) order
            rows = torch.cat(ctx.all_gather_rows(features), 0)
            ids = torch.cat(ctx.all_gather_rows(torch.tensor(feat_index, dtype=torch.long)), 0)
            key = sorted(range(len(ids)), key=lambda j: (-len(str(train.texts[int(ids[j])])),
                                                         int(ids[j])))
            features = rows[key]
            feat_index[:] = ids[key].tolist()
            feat_labels[:] = [train.labels[i] for i in feat_index]
    with ctx.guard("fitting the directions"):
        unit, center, controls, data = _fit(algo, method, method_params, sites, names, acc,
                                            control_accs, shuffled_labels, moments, features,
                                            feat_labels, feat_index)
    ctx.broadcast_([unit, center, *[t for pair in controls for t in pair]])

    # ---- pass 2: held-out accuracy per layer, on dev (chooses) and on test (reports)
    validation: dict[str, Any] = {}
    if keep_heldout:  # the means were read in pass 1: score them, no forward pass
        is_dev = torch.tensor([i < len(val.texts) for i in held_ids], dtype=torch.bool)
        labels = torch.tensor(local_held.labels, dtype=torch.long)
        for split, rows in (("dev", is_dev), ("test", ~is_dev)):
            if split == "test" and not test.texts:
                continue
            confusion, control_correct = _new_counts(len(sites), len(names), len(controls))
            _score_heldout(held.means[rows], held.keep[rows], labels[rows], unit, center,
                           controls, confusion, control_correct)
            ctx.all_reduce_([confusion, control_correct])
            fig = {**_validation_figures(sites, len(names), confusion, control_correct,
                                         controls), "split": split}
            if split == "dev":
                validation = fig
            else:
                validation["test"] = fig
    elif validate and val.texts:
        validation = _validate(model, unit, center, sites, names, val, policy, batch_size,
                               progress, padding_side, controls, compute_dtype, ctx)
        validation["split"] = "dev"
        if test.texts:
            validation["test"] = {**_validate(model, unit, center, sites, names, test, policy,
                                              batch_size, progress, padding_side, controls,
                                              compute_dtype, ctx), "split": "test"}
    reg = _finish(model, t0, unit, center, acc, sites, names, validation, default_layer, algo,
                  policy, corpus_info, neutral_texts, moments, label_permutation_seed, batch_size,
                  resolved_dtype, max_texts_per_emotion, family, name, ctx)
    # the unit the label permutations moved: texts, or groups of texts from one source
    reg.metadata["permutation_groups"] = None if groups is None else len(set(groups))
    if shuffled_out is not None:
        for k, (cunit, ccenter) in enumerate(controls):
            meta = {**reg.metadata, "shuffled_labels_seed": k, "shuffled_control_of": reg.name,
                    "validation": {}}
            shuffled_out.append(EmotionRegistry(
                cunit, names, sites, acc.mean_norm().float(), metadata=meta,
                default_layer=reg.default_layer, family=family,
                name=f"{reg.name}-shuffled-{k}", center=ccenter))
    return reg


def _pass1(model: Model, train: LabelledTexts, train_ids: torch.Tensor,
           neutral_texts: Sequence[TextInput], sites: list[Site], acc: ClassMeanAccumulator,
           control_accs: list[ClassMeanAccumulator], shuffled_labels: list[torch.Tensor],
           moments: MomentAccumulator | None, policy: str, batch_size: int, padding_side: str,
           compute_dtype: torch.dtype | None, needs_features: bool,
           feat_rows: list[torch.Tensor], feat_labels: list[int], feat_index: list[int],
           bar: Any) -> None:
    """Stream this rank's training texts and neutral dialogues into the accumulators.
    ``train_ids`` maps the shard's rows to indices of the whole training set (labels of the
    shuffled controls and feature rows are looked up by those)."""
    for texts, labels, local_idx in _batches(train, batch_size):
        idx = train_ids[local_idx]
        per_site: list[torch.Tensor] = [torch.empty(0)] * len(sites)

        def on_train(i: int, act: torch.Tensor, batch: TokenizedBatch,
                     labels: torch.Tensor = labels, per_site: list[torch.Tensor] = per_site,
                     idx: torch.Tensor = idx) -> None:
            mask = position_mask(batch, policy)
            per_site[i] = acc.add(i, act, mask, labels, count_texts=(i == 0))
            for control, shuffled in zip(control_accs, shuffled_labels):
                control.add(i, act, mask, shuffled[idx], count_texts=(i == 0))

        stream_sites(model, texts, sites, on_train, padding_side=padding_side,
                     compute_dtype=compute_dtype)
        if needs_features:
            feat_rows.append(torch.stack(per_site, 1))
            feat_labels += labels.tolist()
            feat_index += idx.tolist()
        bar.update(len(texts))
    if neutral_texts and moments is not None:
        stream_neutral_moments(model, neutral_texts, sites, moments, batch_size=batch_size,
                               padding_side=padding_side, compute_dtype=compute_dtype, bar=bar)


def fit_directions(algo: ExtractionMethod, data: ExtractionData
                   ) -> tuple[Float[torch.Tensor, "site cls d_model"],
                              Float[torch.Tensor, "site d_model"]]:
    """Unit directions and the stimulus centre (the mean over classes of the class means) from
    ``data`` with ``algo``: the one fit behind ``extract_emotions`` and every re-fit on a subset
    of stories (``emolens.compare.bank.StoryBank``)."""
    dirs = algo.fit(data)
    if not torch.isfinite(dirs).all():
        raise ExtractionError(f"method {algo.name!r} produced non-finite directions")
    unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    center = data.class_means.mean(1).float()  # [site, d_model]: the mean over emotions
    return unit, center


def _fit(algo: ExtractionMethod, method: Any, method_params: dict[str, Any], sites: list[Site],
         names: list[str], acc: ClassMeanAccumulator, control_accs: list[ClassMeanAccumulator],
         shuffled_labels: list[torch.Tensor], moments: MomentAccumulator | None,
         features: torch.Tensor | None, feat_labels: list[int], feat_index: list[int]
         ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]],
                    ExtractionData]:
    """Fit the directions (and the shuffled-label controls) from the summed accumulators."""
    data = ExtractionData(sites, names, acc.class_means(), acc.counts,
                          moments.covariance() if moments is not None else None,
                          features, torch.tensor(feat_labels) if features is not None else None)
    unit, center = fit_directions(algo, data)
    controls: list[tuple[torch.Tensor, torch.Tensor]] = []
    for control, shuffled in zip(control_accs, shuffled_labels):
        cdata = ExtractionData(sites, names, control.class_means(), control.counts,
                               data.neutral_cov, features,
                               shuffled[torch.tensor(feat_index)] if features is not None else None)
        controls.append(fit_directions(get_method(method, **method_params)
                                       if isinstance(method, str) else algo, cdata))
    if controls and not isinstance(method, str):
        algo.fit(data)  # refit: the caller's instance keeps state (params) of its last fit
    return unit, center, controls, data


def _finish(model: Model, t0: float, unit: torch.Tensor, center: torch.Tensor,
            acc: ClassMeanAccumulator, sites: list[Site], names: list[str],
            validation: dict[str, Any], default_layer: int | None, algo: ExtractionMethod,
            policy: str, corpus_info: dict[str, Any], neutral_texts: Sequence[TextInput],
            moments: MomentAccumulator | None, shuffle_labels: int | None, batch_size: int,
            resolved_dtype: Any, max_texts_per_emotion: int | None, family: str,
            name: str | None, ctx: Any) -> EmotionRegistry:
    """Choose the default layer and assemble the registry with its metadata."""
    chosen_by = "caller"
    if default_layer is None:
        if validation:
            accs = validation["accuracy_by_layer"]
            default_layer = int(max(accs, key=lambda k: (accs[k], -int(k))))
            chosen_by = "best dev-split accuracy"
        else:
            chosen_by = "two-thirds depth (no validation data)"  # the registry's own default

    from emolens.models.provenance import model_provenance

    metadata: dict[str, Any] = {
        "model": model_provenance(model).to_dict(),
        "n_layers": int(model.cfg.n_layers),
        "method": {"name": algo.name, **algo.params()},
        "positions": policy,
        "corpus": corpus_info,
        "neutral": {"texts": len(neutral_texts),
                    "tokens": moments.count.tolist() if moments is not None else []},
        "validation": validation,
        "default_layer_chosen_by": chosen_by,
        "shuffled_labels_seed": shuffle_labels,
        "batch_size": batch_size,
        "compute_dtype": resolved_dtype.name,
        "compute_dtype_reason": resolved_dtype.reason,
        "max_texts_per_emotion": max_texts_per_emotion,
        "distributed": ctx.describe(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    metadata["model"]["n_layers"] = int(model.cfg.n_layers)
    return EmotionRegistry(unit, names, sites, acc.mean_norm().float(), metadata=metadata,
                           default_layer=default_layer, family=family,
                           name=name or f"{family}s-{algo.name}", center=center)


def _validate(model: Model, unit: torch.Tensor, center: torch.Tensor, sites: list[Site],
              names: list[str], val: LabelledTexts, policy: str, batch_size: int,
              progress: bool, padding_side: str,
              controls: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
              compute_dtype: torch.dtype | None = None, ctx: Any = None) -> dict[str, Any]:
    from emolens.distributed import SINGLE, shard

    ctx = ctx or SINGLE
    ids = shard(ctx, model, val.texts)
    val = LabelledTexts([val.texts[i] for i in ids], [val.labels[i] for i in ids])
    n_cls = len(names)
    confusion, control_correct = _new_counts(len(sites), n_cls, len(controls))
    bar = progress_bar(total=len(val.texts), desc="validate", enabled=progress, unit="text")
    with ctx.guard("validation"):
        _validation_pass(model, unit, center, sites, val, policy, batch_size, padding_side,
                         controls, compute_dtype, confusion, control_correct, bar)
    bar.close()
    ctx.all_reduce_([confusion, control_correct])
    return _validation_figures(sites, n_cls, confusion, control_correct, controls)


def _validation_pass(model: Model, unit: torch.Tensor, center: torch.Tensor, sites: list[Site],
                     val: LabelledTexts, policy: str, batch_size: int, padding_side: str,
                     controls: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     compute_dtype: torch.dtype | None, confusion: torch.Tensor,
                     control_correct: torch.Tensor, bar: Any) -> None:
    for texts, labels, _ in _batches(val, batch_size):
        def on_val(i: int, act: torch.Tensor, batch: TokenizedBatch,
                   labels: torch.Tensor = labels) -> None:
            means, keep = masked_means(act, position_mask(batch, policy))
            _score_site(i, means.cpu(), keep.cpu(), labels, unit, center, controls, confusion,
                        control_correct)

        stream_sites(model, texts, sites, on_val, padding_side=padding_side,
                     compute_dtype=compute_dtype)
        bar.update(len(texts))


HELDOUT_BUDGET_BYTES = 256 * 2 ** 20
"""Held-out per-text means (float32, every site) up to this size are kept from pass 1 and
scored after the fit (no second forward pass); larger held-out sets are streamed again."""


def _new_counts(n_sites: int, n_cls: int, n_controls: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.zeros(n_sites, n_cls, n_cls, dtype=torch.long),
            torch.zeros(n_controls, n_sites, dtype=torch.long))


def _score_site(i: int, means: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor,
                unit: torch.Tensor, center: torch.Tensor,
                controls: Sequence[tuple[torch.Tensor, torch.Tensor]], confusion: torch.Tensor,
                control_correct: torch.Tensor) -> None:
    """Classify texts' mean activations at site ``i`` by the one scoring rule; add the counts."""
    pred = score(means[keep], unit[i], center[i]).argmax(-1)
    confusion[i].index_put_((labels[keep], pred), torch.ones(len(pred), dtype=torch.long),
                            accumulate=True)
    for k, (cdir, ccenter) in enumerate(controls):
        cpred = score(means[keep], cdir[i], ccenter[i]).argmax(-1)
        control_correct[k, i] += int((cpred == labels[keep]).sum())


def _score_heldout(means: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor,
                   unit: torch.Tensor, center: torch.Tensor,
                   controls: Sequence[tuple[torch.Tensor, torch.Tensor]], confusion: torch.Tensor,
                   control_correct: torch.Tensor) -> None:
    for i in range(means.shape[1]):
        _score_site(i, means[:, i], keep, labels, unit, center, controls, confusion,
                    control_correct)


@dataclass
class TextMeans:
    """Per-text means of a streamed list of texts (rows in the list's order).

    ``means``: each text's mean activation over the positions of the policy, per site; ``keep``:
    texts with at least one such position (the others have zero means). With ``norms=True``
    also ``norm_sum`` (the sum over those positions of the activation's L2 norm, per site) and
    ``n_tokens`` (how many positions); otherwise both are None."""

    means: Float[torch.Tensor, "text site d_model"]
    keep: Bool[torch.Tensor, " text"]
    norm_sum: Float[torch.Tensor, "text site"] | None = None
    n_tokens: Float[torch.Tensor, " text"] | None = None


def stream_text_means(model: Model, texts: Sequence[TextInput], sites: Sequence[Site], *,
                      policy: str = "content", batch_size: int = 16,
                      padding_side: str = "right", compute_dtype: torch.dtype | None = None,
                      norms: bool = False, bar: Any = None) -> TextMeans:
    """Stream ``texts`` in length-sorted batches (``stream_sites``) and keep each text's mean
    activation under the position ``policy`` at every site (float32, on the CPU), the pooling
    that ``extract_emotions`` sums; ``bar`` (a progress bar, optional) advances by each
    batch's size. Used by extraction's held-out pass and by ``emolens.compare.StoryBank``."""
    texts = list(texts)
    n, d = len(texts), int(model.cfg.d_model)
    out = TextMeans(torch.zeros(n, len(sites), d), torch.zeros(n, dtype=torch.bool),
                    torch.zeros(n, len(sites), dtype=torch.float64) if norms else None,
                    torch.zeros(n, dtype=torch.float64) if norms else None)
    for idx in sorted_batches(texts, batch_size):
        rows = torch.tensor(idx)

        def on_batch(i: int, act: torch.Tensor, batch: TokenizedBatch,
                     rows: torch.Tensor = rows) -> None:
            mask = position_mask(batch, policy)
            means, has = masked_means(act, mask)
            out.means[rows, i] = means.float().cpu()
            out.keep[rows] = has.cpu()
            if out.norm_sum is not None and out.n_tokens is not None:
                w = mask.to(act.device, act.dtype)
                out.norm_sum[rows, i] = (act.norm(dim=-1) * w).sum(-1).double().cpu()
                out.n_tokens[rows] = w.sum(-1).double().cpu()

        stream_sites(model, [texts[i] for i in idx], sites, on_batch,
                     padding_side=padding_side, compute_dtype=compute_dtype)
        if bar is not None:
            bar.update(len(idx))
    return out


def stream_neutral_moments(model: Model, texts: Sequence[TextInput], sites: Sequence[Site],
                           moments: MomentAccumulator | None = None, *, batch_size: int = 16,
                           padding_side: str = "right", compute_dtype: torch.dtype | None = None,
                           bar: Any = None) -> MomentAccumulator:
    """Add the token activations of ``texts`` (neutral dialogues) at every content position to
    ``moments`` (a new ``MomentAccumulator`` when None) in batches of ``batch_size`` in the
    given order, and return it: the neutral moments behind the ``neutral_pca`` directions and
    the neutral centre, summed by ``extract_emotions`` and by ``emolens.compare.StoryBank``.
    ``bar`` (a progress bar, optional) advances by each batch's size."""
    texts = list(texts)
    acc = moments if moments is not None else MomentAccumulator(len(sites), int(model.cfg.d_model))
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]

        def on_batch(i: int, act: torch.Tensor, batch: TokenizedBatch) -> None:
            acc.add(i, act, position_mask(batch, "content"))

        stream_sites(model, chunk, sites, on_batch, padding_side=padding_side,
                     compute_dtype=compute_dtype)
        if bar is not None:
            bar.update(len(chunk))
    return acc


def _validation_figures(sites: list[Site], n_cls: int, confusion: torch.Tensor,
                        control_correct: torch.Tensor,
                        controls: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    correct = confusion.diagonal(dim1=1, dim2=2).sum(-1).double()
    total = confusion.sum((1, 2)).double().clamp(min=1)
    accs = {str(s.layer): round(float(correct[i] / total[i]), 4) for i, s in enumerate(sites)}
    best = max(range(len(sites)), key=lambda i: (float(correct[i] / total[i]), -i))
    extra: dict[str, Any] = {}
    if controls:
        share = control_correct.double() / total  # [control, site]
        extra["shuffled_accuracy_by_layer"] = {
            str(s.layer): round(float(share[:, i].mean()), 4) for i, s in enumerate(sites)}
        extra["shuffled_accuracy_by_seed"] = {
            str(k): {str(s.layer): round(float(share[k, i]), 4) for i, s in enumerate(sites)}
            for k in range(len(controls))}
        extra["shuffled_seeds"] = list(range(len(controls)))
    return {
        **extra,
        "accuracy_by_layer": accs,
        "chance": 1.0 / n_cls,
        "n_texts": int(total[0]),
        "rule": CLASSIFY_RULE,
        "confusion_best_layer": confusion[best].tolist(),
        "best_layer": sites[best].layer,
    }
