"""Judging emotion directions on held-out labelled texts that are not part of the corpus.

Extraction validates on the bundled corpus's validation split, which shares the corpus's style
(one generator, one prompt format). Directions that carry the emotion should also classify text
written by people about other things; ``evaluate`` measures that on your own labelled data.

The rule is exactly extraction's validation rule (``emolens.extraction.extract._validate``):
each text's residual activation at a site is averaged over the positions of the position policy
(default ``"content"``: no padding, no attention-sink first token; the helpers are the ones
extraction uses), and the text is assigned the emotion whose centred projection
``(x - registry.center(layer)) . v`` is largest. The argmax runs over the emotions that occur
among the labels (chance ``1/k`` for ``k`` of them); ``accuracy_all_by_layer`` also reports the
argmax over every emotion of the registry. One forward pass per batch reads every layer.
"""
from __future__ import annotations

import csv
import html
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from emolens.errors import FormatError, InputError
from emolens.io import read_jsonl
from emolens.registry import EmotionRegistry
from emolens.scoring import CLASSIFY_RULE, score
from emolens.tokens import TextInput

if TYPE_CHECKING:
    from emolens.compat import Model

RULE = CLASSIFY_RULE
DATA_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}

__all__ = ["Evaluation", "evaluate", "load_labelled"]


# ---------------------------------------------------------------------------------- result
@dataclass
class Evaluation:
    """Classification of held-out labelled texts by a registry's directions, per layer.

    ``scores``: ``[layer, text, registry emotion]`` centred projections of each text's mean
    activation onto every registry direction; ``labels``: each text's true emotion as an index
    into ``emotions`` (the emotions that occur among the labels, in registry order);
    ``indices``: each evaluated text's position in the list passed to ``evaluate`` (texts
    with unknown labels dropped, or without a selected position, are absent); ``dropped``:
    skipped labels -> number of texts; ``n_no_positions``: texts skipped because the position
    policy selected none of their tokens. ``default_layer``: the layer methods use when given
    none (the registry's default layer, chosen on the corpus's own validation split and so not
    on this data, when it was evaluated; else ``best_layer``).
    """

    scores: Float[torch.Tensor, "layer text registry_emotion"]
    labels: Int[torch.Tensor, " text"]
    layers: list[int]
    emotions: list[str]
    registry_emotions: list[str]
    indices: Int[torch.Tensor, " text"]
    texts: list[TextInput] = field(default_factory=list, repr=False)
    positions: str = "content"
    dropped: dict[str, int] = field(default_factory=dict)
    n_no_positions: int = 0
    label_map: dict[str, str | None] | None = None
    default_layer: int | None = None
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict, init=False, repr=False,
                                               compare=False)

    def __post_init__(self) -> None:
        if self.default_layer not in self.layers:
            self.default_layer = self.best_layer

    # ------------------------------------------------------------ predictions
    @property
    def _columns(self) -> torch.Tensor:
        return torch.tensor([self.registry_emotions.index(e) for e in self.emotions])

    @property
    def predictions(self) -> Int[torch.Tensor, "layer text"]:
        """``[layer, text]`` predicted emotion (index into ``emotions``): the argmax restricted
        to the emotions among the labels."""
        return self.scores[:, :, self._columns].argmax(-1)

    @property
    def predictions_all(self) -> Int[torch.Tensor, "layer text"]:
        """``[layer, text]`` predicted emotion over every registry emotion (index into
        ``registry_emotions``)."""
        return self.scores.argmax(-1)

    def _li(self, layer: int | None) -> int:
        layer = self.default_layer if layer is None else layer
        if layer not in self.layers:
            raise InputError(f"layer {layer} was not evaluated; this evaluation has layers "
                             f"{self.layers} (pass layers= to evaluate to add it)")
        return self.layers.index(layer)

    def correct(self, layer: int | None = None) -> torch.Tensor:
        """``[text]`` booleans: was each text classified correctly at ``layer``."""
        return self.predictions[self._li(layer)] == self.labels

    def predicted_labels(self, layer: int | None = None) -> list[str]:
        """The predicted emotion name of each evaluated text at ``layer``."""
        return [self.emotions[int(i)] for i in self.predictions[self._li(layer)]]

    def errors(self, layer: int | None = None) -> Any:
        """``pandas.DataFrame`` of the misclassified texts at ``layer``: index (position in
        the input list), text, true, predicted."""
        import pandas as pd

        pred = self.predictions[self._li(layer)]
        rows = [(int(self.indices[t]), self.texts[t] if self.texts else None,
                 self.emotions[int(self.labels[t])], self.emotions[int(pred[t])])
                for t in range(self.n_texts) if int(pred[t]) != int(self.labels[t])]
        return pd.DataFrame(rows, columns=["index", "text", "true", "predicted"])

    # ------------------------------------------------------------ accuracy
    @property
    def n_texts(self) -> int:
        return int(self.labels.numel())

    @property
    def n_dropped(self) -> int:
        return int(sum(self.dropped.values()))

    @property
    def chance(self) -> float:
        """``1/k`` for the ``k`` emotions among the labels."""
        return 1.0 / len(self.emotions)

    @property
    def chance_all(self) -> float:
        return 1.0 / len(self.registry_emotions)

    @property
    def accuracy_by_layer(self) -> dict[int, float]:
        acc = (self.predictions == self.labels[None]).double().mean(1)
        return {layer: float(acc[i]) for i, layer in enumerate(self.layers)}

    @property
    def accuracy_all_by_layer(self) -> dict[int, float]:
        """Accuracy when the argmax runs over every registry emotion."""
        truth = self._columns[self.labels]
        acc = (self.predictions_all == truth[None]).double().mean(1)
        return {layer: float(acc[i]) for i, layer in enumerate(self.layers)}

    @property
    def best_layer(self) -> int:
        """The layer with the highest accuracy (the earliest on ties). Choosing it on the same
        data makes its accuracy optimistic; see ``default_layer``."""
        acc = self.accuracy_by_layer
        return max(self.layers, key=lambda layer: (acc[layer], -layer))

    def label_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(self.emotions))
        return {e: int(counts[i]) for i, e in enumerate(self.emotions)}

    def confusion(self, layer: int | None = None) -> Any:
        """``pandas.DataFrame`` of counts: rows the true emotion, columns the predicted one."""
        import pandas as pd

        k = len(self.emotions)
        pred = self.predictions[self._li(layer)]
        mat = torch.bincount(self.labels * k + pred, minlength=k * k).reshape(k, k)
        return pd.DataFrame(mat.numpy(), index=pd.Index(self.emotions, name="true"),
                            columns=pd.Index(self.emotions, name="predicted"))

    def per_emotion(self, layer: int | None = None) -> Any:
        """``pandas.DataFrame`` indexed by true emotion: n, correct, recall."""
        import pandas as pd

        conf = self.confusion(layer).to_numpy()
        n = conf.sum(1)
        correct = conf.diagonal()
        recall = [float(c) / float(m) if m else float("nan") for c, m in zip(correct, n)]
        return pd.DataFrame({"n": n, "correct": correct, "recall": recall},
                            index=pd.Index(self.emotions, name="emotion"))

    # ------------------------------------------------------------ uncertainty
    def bootstrap_ci(self, layer: int | None = None, n: int = 1000, seed: int = 0, *,
                     confidence: float = 0.95) -> tuple[float, float]:
        """Percentile bootstrap interval of the accuracy at ``layer``, resampling texts
        (``emolens.stats.bootstrap_ci`` over the 0/1 correctness of each text)."""
        key = ("ci", self._li(layer), n, seed, confidence)
        if key not in self._cache:
            from emolens.stats import bootstrap_ci

            self._cache[key] = bootstrap_ci(self.correct(layer).double(), confidence=confidence,
                                            n_resamples=n, seed=seed)
        lo, hi = self._cache[key]
        return float(lo), float(hi)

    def p_value(self, layer: int | None = None, n: int = 10000, seed: int = 0) -> float:
        """One-sided permutation p-value of the accuracy at ``layer`` against labels shuffled
        across texts (``emolens.stats.accuracy_permutation_pvalue``); at least ``1/(n+1)``."""
        key = ("p", self._li(layer), n, seed)
        if key not in self._cache:
            from emolens.stats import accuracy_permutation_pvalue

            self._cache[key] = accuracy_permutation_pvalue(
                self.predictions[self._li(layer)], self.labels, n_permutations=n, seed=seed)
        return float(self._cache[key])

    # ------------------------------------------------------------ export
    def to_dataframe(self, *, n_bootstrap: int = 1000, n_permutations: int = 10000,
                     seed: int = 0) -> Any:
        """Tidy ``pandas.DataFrame``, one row per layer: layer, accuracy, ci_low, ci_high
        (95% bootstrap), chance, p_value, accuracy_all, chance_all, n."""
        import pandas as pd

        acc, acc_all = self.accuracy_by_layer, self.accuracy_all_by_layer
        rows = []
        for layer in self.layers:
            lo, hi = self.bootstrap_ci(layer, n_bootstrap, seed)
            rows.append((layer, acc[layer], lo, hi, self.chance,
                         self.p_value(layer, n_permutations, seed), acc_all[layer],
                         self.chance_all, self.n_texts))
        return pd.DataFrame(rows, columns=["layer", "accuracy", "ci_low", "ci_high", "chance",
                                           "p_value", "accuracy_all", "chance_all", "n"])

    def to_dict(self, *, n_bootstrap: int = 1000, n_permutations: int = 10000,
                seed: int = 0) -> dict[str, Any]:
        """Every figure as JSON-safe built-in types (layer keys are strings; NaN is None)."""
        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        cis = {str(layer): [num(v) for v in self.bootstrap_ci(layer, n_bootstrap, seed)]
               for layer in self.layers}
        default = self.default_layer
        return {
            "rule": RULE,
            "positions": self.positions,
            "layers": list(self.layers),
            "emotions": list(self.emotions),
            "registry_emotions": list(self.registry_emotions),
            "n_texts": self.n_texts,
            "label_counts": self.label_counts(),
            "n_dropped_unknown": self.n_dropped,
            "dropped_labels": dict(self.dropped),
            "n_without_positions": int(self.n_no_positions),
            "label_map": None if self.label_map is None else dict(self.label_map),
            "chance": self.chance,
            "chance_all": self.chance_all,
            "accuracy_by_layer": {str(k): v for k, v in self.accuracy_by_layer.items()},
            "accuracy_all_by_layer": {str(k): v for k, v in self.accuracy_all_by_layer.items()},
            "ci95_by_layer": cis,
            "p_value_by_layer": {str(layer): self.p_value(layer, n_permutations, seed)
                                 for layer in self.layers},
            "bootstrap": {"resamples": n_bootstrap, "seed": seed},
            "permutation": {"permutations": n_permutations, "seed": seed,
                            "null": "labels shuffled across texts; statistic accuracy"},
            "best_layer": self.best_layer,
            "default_layer": default,
            "confusion_default_layer": self.confusion(default).to_numpy().tolist(),
            "recall_default_layer": {e: num(float(r)) for e, r in
                                     self.per_emotion(default)["recall"].items()},
            "predictions_default_layer": {
                "index": self.indices.tolist(),
                "true": [self.emotions[int(i)] for i in self.labels],
                "predicted": self.predicted_labels(default),
            },
        }

    def __repr__(self) -> str:
        acc = self.accuracy_by_layer
        return (f"Evaluation({self.n_texts} texts, {len(self.emotions)} emotions "
                f"(chance {self.chance:.3f}), layers={self.layers}, best layer {self.best_layer} "
                f"accuracy {acc[self.best_layer]:.3f})")

    def _repr_html_(self) -> str:
        e = html.escape
        df = self.to_dataframe()
        rows = "".join(
            f"<tr><td>{'<b>' if r.layer == self.best_layer else ''}{int(r.layer)}"
            f"{'</b>' if r.layer == self.best_layer else ''}</td><td>{r.accuracy:.3f}</td>"
            f"<td>[{r.ci_low:.3f}, {r.ci_high:.3f}]</td><td>{r.p_value:.2g}</td>"
            f"<td>{r.accuracy_all:.3f}</td></tr>"
            for r in df.itertuples())
        dropped = f"; {self.n_dropped} dropped (unknown labels)" if self.n_dropped else ""
        return (f"<div><b>Evaluation</b> {self.n_texts} texts, {len(self.emotions)} emotions "
                f"({e(', '.join(self.emotions))}); chance {self.chance:.3f}{dropped}<table>"
                f"<tr><th>layer</th><th>accuracy</th><th>95% CI</th><th>p</th>"
                f"<th>acc. over all {len(self.registry_emotions)}</th></tr>{rows}</table></div>")


# ---------------------------------------------------------------------------------- labels
def _check_label_map(label_map: Any) -> dict[str, str | None] | None:
    if label_map is None:
        return None
    if not isinstance(label_map, Mapping):
        raise InputError(f"label_map must be a dict from your label names to registry emotion "
                         f"names (e.g. {{'joy': 'happy'}}), got {type(label_map).__name__}")
    out: dict[str, str | None] = {}
    for k, v in label_map.items():
        if v is not None and not isinstance(v, str):
            raise InputError(f"label_map[{k!r}] is {v!r}; map each label to a registry emotion "
                             "name (a string) or to None")
        out[str(k)] = v
    return out


def _unknown_labels_message(unknown: Counter[str], emotions: Sequence[str],
                            label_map: Mapping[str, str | None] | None) -> str:
    parts = []
    for lab, count in unknown.most_common():
        mapped = (label_map or {}).get(lab, lab)
        how = (" (mapped to None by label_map)" if mapped is None else
               f" (mapped to {mapped!r} by label_map)" if mapped != lab else "")
        hint = get_close_matches(str(mapped if mapped is not None else lab), emotions, n=1,
                                 cutoff=0.6)
        parts.append(f"{lab!r}{how} x{count}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return (f"labels not among the registry's emotions: {', '.join(parts)}. The registry has "
            f"{', '.join(repr(e) for e in emotions)}. Pass label_map mapping your label names "
            "to these (e.g. label_map={'joy': 'happy', 'fear': 'afraid'}; CLI --label-map "
            "joy=happy,fear=afraid), or drop_unknown=True (CLI --drop-unknown) to skip those "
            "texts")


def _resolve_labels(labels: Sequence[Any], emotions: Sequence[str],
                    label_map: Mapping[str, str | None] | None, drop_unknown: bool
                    ) -> tuple[list[str | None], dict[str, int]]:
    """Map each label to a registry emotion (None: dropped) and count the dropped labels.
    Raises ``InputError`` for unknown labels unless ``drop_unknown``."""
    mapped: list[str | None] = []
    unknown: Counter[str] = Counter()
    known = set(emotions)
    for i, lab in enumerate(labels):
        if not isinstance(lab, str) or not lab.strip():
            raise InputError(f"label {i} is {lab!r}; each label must be a non-empty emotion "
                             "name (a string), one per text")
        name = label_map.get(lab, lab) if label_map else lab
        if name is None or name not in known:
            unknown[lab] += 1
            mapped.append(None)
        else:
            mapped.append(name)
    if unknown and not drop_unknown:
        raise InputError(_unknown_labels_message(unknown, emotions, label_map))
    return mapped, dict(unknown)


def _label_set(names: Sequence[str | None], emotions: Sequence[str]) -> list[str]:
    present = {n for n in names if n is not None}
    out = [e for e in emotions if e in present]
    if len(out) < 2:
        raise InputError(f"the labels name {len(out)} registry emotion(s) {out}; accuracy needs "
                         "texts of at least 2 emotions (with one, every prediction is right). "
                         "Add texts of other emotions or map more labels with label_map")
    return out


def _resolve_layers(registry: EmotionRegistry, layers: Any) -> list[int]:
    if layers is None or layers == "all":
        return registry.layers
    if isinstance(layers, str):
        raise InputError(f"layers must be layer numbers (e.g. [10, 14, 18]) or 'all', got "
                         f"{layers!r}")
    if isinstance(layers, int):
        layers = [layers]
    try:
        asked = [int(x) for x in layers]
    except (TypeError, ValueError):
        raise InputError(f"layers must be layer numbers (e.g. [10, 14, 18]) or 'all', got "
                         f"{layers!r}") from None
    if not asked:
        raise InputError("layers is empty: pass at least one layer, or None for every layer of "
                         "the registry")
    return sorted({registry.site(x).layer for x in asked})  # RegistryError names a bad layer


# ---------------------------------------------------------------------------------- evaluate
def evaluate(model: Model, registry: EmotionRegistry, texts: Any, labels: Sequence[Any], *,
             layers: Sequence[int] | str | int | None = None,
             label_map: Mapping[Any, Any] | None = None, drop_unknown: bool = False,
             batch_size: int | None = None, positions: str = "content", progress: bool = True,
             strict: bool = True) -> Evaluation:
    """Classify labelled held-out texts with ``registry``'s directions, layer by layer.

    Args:
        model: the model the registry was built on.
        registry: an ``EmotionRegistry``.
        texts: strings and/or chat conversations (what ``emolens.to_inputs`` accepts).
        labels: one emotion name per text.
        layers: layers to evaluate (default: every registry layer); one forward pass per batch
            reads them all.
        label_map: your label names -> registry emotion names (``{"joy": "happy"}``); labels
            not in it are used as they are. A label mapped to None, or not a registry emotion
            after mapping, raises ``InputError`` unless ``drop_unknown=True`` skips its texts
            (counted in ``Evaluation.dropped``).
        batch_size: texts per forward pass (batches are length-sorted; None: the device's
            default, ``runtime.resolve_batch_size``).
        positions: position policy of the per-text mean (default ``"content"``, as extraction).
        strict: refuse a registry whose recorded model id differs (``strict=False`` checks
            shapes only).

    The prediction for a text is the argmax, over the emotions among the labels, of
    ``(x - registry.center(layer)) . v`` where ``x`` is its mean activation over the policy's
    positions: extraction's validation rule. Returns an ``Evaluation``.
    """
    from emolens.extraction.accumulator import masked_means
    from emolens.extraction.extract import stream_sites
    from emolens.extraction.positions import position_mask, validate_policy
    from emolens.runtime import progress_bar, resolve_batch_size, sorted_batches
    from emolens.tokens import normalise_inputs, to_inputs

    if not isinstance(registry, EmotionRegistry):
        raise InputError(f"registry must be an EmotionRegistry (emolens.EmotionRegistry.load("
                         f"folder)), got {type(registry).__name__}")
    batch_size = resolve_batch_size(batch_size, model)
    policy = validate_policy(positions)
    registry.check_model(model, strict=strict)
    use = _resolve_layers(registry, layers)
    items = normalise_inputs(texts)
    label_list = [labels] if isinstance(labels, str) else list(labels)
    if len(label_list) != len(items):
        raise InputError(f"got {len(items)} texts but {len(label_list)} labels; pass one label "
                         "per text")
    lmap = _check_label_map(label_map)
    mapped, dropped = _resolve_labels(label_list, registry.emotions, lmap, drop_unknown)
    kept = [i for i, m in enumerate(mapped) if m is not None]
    if not kept:
        raise InputError(f"every label was dropped as unknown ({dropped}); the registry has "
                         f"{registry.emotions}: map your labels to these with label_map")
    _label_set([mapped[i] for i in kept], registry.emotions)
    to_inputs(model, items)  # every text tokenises and fits the context (errors name the index)

    chosen = [items[i] for i in kept]
    sites = [registry.site(x) for x in use]
    units = [registry.matrix(x) for x in use]
    centers = [registry.center(x) for x in use]
    scores = torch.zeros(len(use), len(chosen), len(registry.emotions))
    has_pos = torch.zeros(len(chosen), dtype=torch.bool)
    bar = progress_bar(total=len(chosen), desc="evaluate", enabled=progress, unit="text")
    for batch_rows in sorted_batches(chosen, batch_size):
        batch_texts, idx = [chosen[i] for i in batch_rows], torch.tensor(batch_rows)
        def on_site(i: int, act: torch.Tensor, batch: Any, idx: torch.Tensor = idx) -> None:
            means, keep = masked_means(act, position_mask(batch, policy))
            means, keep = means.cpu(), keep.cpu()
            scores[i, idx] = score(means, units[i], centers[i])
            if i == 0:
                has_pos[idx] = keep

        stream_sites(model, batch_texts, sites, on_site)
        bar.update(len(batch_texts))
    bar.close()

    rows = has_pos.nonzero().flatten()
    if rows.numel() == 0:
        raise InputError(f"positions={policy!r} selects no token of any text; use a looser "
                         "policy such as 'content', or longer texts")
    names = [mapped[kept[int(r)]] for r in rows]
    emotions = _label_set(names, registry.emotions)
    default = registry.default_layer if registry.default_layer in use else None
    return Evaluation(
        scores=scores[:, rows],
        labels=torch.tensor([emotions.index(str(n)) for n in names], dtype=torch.long),
        layers=use, emotions=emotions, registry_emotions=registry.emotions,
        indices=torch.tensor(kept, dtype=torch.long)[rows],
        texts=[chosen[int(r)] for r in rows], positions=policy, dropped=dropped,
        n_no_positions=len(chosen) - int(rows.numel()), label_map=lmap, default_layer=default)


# ---------------------------------------------------------------------------------- files
def _text_value(value: Any, where: str, text_field: str) -> TextInput:
    if isinstance(value, str):
        if not value.strip():
            raise FormatError(f"{where}: field {text_field!r} is empty; give the text or remove "
                              "the row")
        return value
    if (isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in value)):
        return [dict(m) for m in value]
    raise FormatError(f"{where}: field {text_field!r} must be a string or a list of "
                      f"{{'role', 'content'}} chat messages, got {json.dumps(value)[:80]}")


def _label_value(value: Any, where: str, label_field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # integer class ids: map them with label_map ("0" -> "sad")
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise FormatError(f"{where}: field {label_field!r} must be a non-empty emotion name (or an "
                      f"integer class id to map with label_map), got {value!r}")


def _read_jsonl(path: Path, text_field: str, label_field: str
                ) -> tuple[list[TextInput], list[str]]:
    texts: list[TextInput] = []
    labels: list[str] = []
    for where, rec in read_jsonl(path, error=FormatError):
        if not isinstance(rec, dict):
            raise FormatError(f"{where}: expected a JSON object with fields {text_field!r} and "
                              f"{label_field!r}, got a JSON {type(rec).__name__}")
        for name in (text_field, label_field):
            if name not in rec:
                raise FormatError(f"{where}: no field {name!r} (fields: {sorted(rec)}); name "
                                  "the right one with text_field/label_field (CLI --text-field/"
                                  "--label-field)")
        texts.append(_text_value(rec[text_field], where, text_field))
        labels.append(_label_value(rec[label_field], where, label_field))
    return texts, labels


def _read_csv(path: Path, text_field: str, label_field: str, delimiter: str
              ) -> tuple[list[TextInput], list[str]]:
    texts: list[TextInput] = []
    labels: list[str] = []
    start = 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise FormatError(f"{path}: the file is empty; it needs a header row naming the "
                                  f"columns {text_field!r} and {label_field!r}")
            for name in (text_field, label_field):
                if name not in header:
                    raise FormatError(f"{path}, line 1: no column {name!r} in the header "
                                      f"(columns: {header}); name the right one with "
                                      "text_field/label_field (CLI --text-field/--label-field)")
            ti, li = header.index(text_field), header.index(label_field)
            start = reader.line_num + 1
            for row in reader:
                where = f"{path}, line {start}"
                start = reader.line_num + 1
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise FormatError(f"{where}: {len(row)} fields but the header has "
                                      f"{len(header)}; quote fields that hold the delimiter "
                                      f"{delimiter!r}")
                texts.append(_text_value(row[ti], where, text_field))
                labels.append(_label_value(row[li], where, label_field))
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise FormatError(f"{path}, line {start}: not valid CSV ({e})") from None
    return texts, labels


def load_labelled(path: str | Path, *, text_field: str = "text", label_field: str = "emotion"
                  ) -> tuple[list[TextInput], list[str]]:
    """Read labelled texts from a JSONL (``.jsonl``/``.ndjson``: one object per line) or CSV
    (``.csv``; ``.tsv`` tab-separated, with a header row) file.

    The text field holds a string (JSONL may also hold a list of chat messages); the label
    field an emotion name (JSONL integers become strings, to map with ``label_map``). Blank
    lines are skipped. Returns ``(texts, labels)``; any bad row raises ``FormatError`` naming
    the file, the line and the field.
    """
    p = Path(path)
    kind = DATA_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise FormatError(f"{p}: unknown data file type {p.suffix!r}; use .jsonl (one JSON "
                          "object per line) or .csv/.tsv (with a header row)")
    if not p.is_file():
        raise FormatError(f"{p}: file not found" if not p.exists() else f"{p}: not a file")
    if kind == "jsonl":
        texts, labels = _read_jsonl(p, text_field, label_field)
    else:
        texts, labels = _read_csv(p, text_field, label_field, "\t" if kind == "tsv" else ",")
    if not texts:
        raise FormatError(f"{p}: holds no rows; give one labelled text per line")
    return texts, labels
