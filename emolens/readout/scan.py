"""Max-activating examples: stream any collection of texts, keep the top-k tokens per emotion.

``top_examples(model, registry, texts)`` reads one registry layer over a stream of texts (a
list, a ``.jsonl`` / ``.csv`` / ``.tsv`` / ``.txt`` file read line by line, a
``datasets.Dataset``, any iterable) and keeps, for each emotion, the ``k`` tokens whose centred
projection ``(x - center) . v`` is highest, each with a window of context tokens and the
emotion's score on every window token. Memory is constant in the number of texts: a buffer of
a few batches plus ``emotions x k`` windows. Results of disjoint shards ``merge`` into exactly
the result of the whole stream (entries are ranked by score, ties by text index then position),
which is how ranks of a ``torch.distributed`` run combine theirs.

``pooled_scores`` streams the same way and returns the mean score over each text's content
tokens, ``[text, emotion]`` in input order (also across ranks).

What a scan shows: the contexts in which each direction reads highest on text that was not used
to build it (the study's first check of what a vector means). What it does not show: that the
direction causes anything, that the top texts express the emotion (read them), or how often the
direction is high (a top-k list has no base rate).
"""
from __future__ import annotations

import csv
import html
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from emolens.compat import run_to_layer
from emolens.errors import InputError, unknown_name_message
from emolens.registry import EmotionRegistry
from emolens.scoring import score

if TYPE_CHECKING:
    from emolens.compat import Model

SCAN_FORMAT = 1
_FILE_KINDS = (".jsonl", ".json", ".csv", ".tsv", ".txt")


# --------------------------------------------------------------------------- input streams
def iter_texts(source: Any, *, field: str = "text") -> Iterator[str]:
    """Yield the texts of ``source`` one at a time, never holding the whole collection.

    ``source``: a path (``.jsonl``/``.json`` lines holding a string or an object with
    ``field``; ``.csv``/``.tsv`` with a ``field`` column; ``.txt``: one text per line), a
    ``datasets.Dataset`` (rows are dicts: ``field`` is read), or any iterable of strings or
    dicts. Empty texts are skipped. Raises ``InputError`` naming the file and line of a bad row.
    """
    if isinstance(source, (str, os.PathLike)):
        yield from _iter_file(Path(source), field)
        return
    if isinstance(source, dict):
        raise InputError("texts must be an iterable of strings, a file path or a "
                         "datasets.Dataset, got a dict")
    try:
        it = iter(source)
    except TypeError:
        raise InputError(f"texts must be an iterable of strings, a file path or a "
                         f"datasets.Dataset, got {type(source).__name__}") from None
    for i, row in enumerate(it):
        text = _row_text(row, field, f"item {i}")
        if text is not None:
            yield text


def _row_text(row: Any, field: str, where: str) -> str | None:
    if isinstance(row, dict):
        if field not in row:
            raise InputError(f"{where}: no field {field!r} (fields: {sorted(row)[:10]}); pass "
                             "field= / --field to name the text field")
        row = row[field]
    if not isinstance(row, str):
        raise InputError(f"{where}: expected a string, got {type(row).__name__}")
    return row if row.strip() else None


def _iter_file(path: Path, field: str) -> Iterator[str]:
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass a .jsonl, .csv, .tsv or .txt file")
    kind = path.suffix.lower()
    if kind not in _FILE_KINDS:
        raise InputError(f"{path}: unknown file type {kind!r}; use one of {_FILE_KINDS}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        if kind in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if kind == ".tsv" else ",")
            if reader.fieldnames is None or field not in reader.fieldnames:
                raise InputError(f"{path}: no column {field!r} in the header "
                                 f"{reader.fieldnames}; pass field= / --field")
            for n, rec in enumerate(reader, 2):
                text = _row_text(rec[field] or "", field, f"{path}, line {n}")
                if text is not None:
                    yield text
            return
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if kind == ".txt":
                yield line.rstrip("\n")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}, line {n}: not valid JSON ({e.msg}); each line must "
                                 "hold one string or object") from None
            text = _row_text(obj, field, f"{path}, line {n}")
            if text is not None:
                yield text


def _indexed(source: Any, field: str, ctx: Any, model: Model) -> Iterator[tuple[int, str]]:
    """(global index, text) pairs of this rank's share. Lists are split by token count; streams
    round-robin (their lengths are not known in advance)."""
    if ctx.active and isinstance(source, Sequence) and not isinstance(source, str):
        items = [_row_text(r, field, f"item {i}") for i, r in enumerate(source)]
        keep = [i for i, t in enumerate(items) if t is not None]
        from emolens.distributed import shard_by_tokens, token_lengths

        mine = shard_by_tokens(token_lengths(model, [items[i] for i in keep]),
                               ctx.world_size)[ctx.rank]
        for j in mine:
            yield keep[j], items[keep[j]]  # type: ignore[misc]
        return
    for i, text in enumerate(iter_texts(source, field=field)):
        if i % ctx.world_size == ctx.rank:
            yield i, text


# --------------------------------------------------------------------------- forward
@dataclass
class _Batch:
    index: list[int]                 # global text index of each row
    ids: list[list[int]]             # token ids (truncated)
    scores: torch.Tensor             # [b, pos, emotion] (0 on padding)
    content: torch.Tensor            # bool [b, pos]: real tokens other than the first


def _encode(model: Model, text: str, max_tokens: int) -> tuple[list[int], bool]:
    ids = model.to_tokens(text, prepend_bos=bool(getattr(model.cfg, "default_prepend_bos", True)),
                          truncate=False, move_to_device=False)[0].tolist()
    return ids[:max_tokens], len(ids) > max_tokens


def _score_batch(model: Model, rows: list[list[int]], site: Any, mat: torch.Tensor,
                 center: torch.Tensor, compute_dtype: torch.dtype | None) -> torch.Tensor:
    """Centred projections ``[b, pos, emotion]`` at ``site`` (right padding), one forward that
    stops after the site's block; scored on the device of the site's activation."""
    from emolens.compat import model_device

    width = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id
    pad = int(pad if pad is not None else (model.tokenizer.eos_token_id or 0))
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    dev = model_device(model)
    kwargs = {} if bool(mask.all()) else {"attention_mask": mask.to(dev)}
    out: list[torch.Tensor] = []

    def hook(act: torch.Tensor, *, hook: Any) -> None:
        out.append(score(act.detach().float(), mat, center).cpu())  # on the site's device

    with torch.inference_mode(), torch.autocast(dev.type, dtype=compute_dtype or torch.float32,
                                                enabled=compute_dtype is not None):
        run_to_layer(model, tokens.to(dev), [(site.name, hook)], site.layer + 1, **kwargs)
    return out[0] * mask[..., None]


def _stream_batches(model: Model, registry: EmotionRegistry, pairs: Iterable[tuple[int, str]],
                    layer: int | None, batch_size: int, max_tokens: int,
                    compute_dtype: torch.dtype | None, stats: dict[str, int],
                    bar: Any) -> Iterator[_Batch]:
    """Score ``pairs`` in length-sorted batches taken from a buffer of ``8 x batch_size``."""
    site = registry.site(layer)
    mat, center = registry.matrix(layer), registry.center(layer)
    buf: list[tuple[int, list[int]]] = []

    def flush(items: list[tuple[int, list[int]]]) -> Iterator[_Batch]:
        items.sort(key=lambda p: -len(p[1]))
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            rows = [c[1] for c in chunk]
            scores = _score_batch(model, rows, site, mat, center, compute_dtype)
            content = torch.zeros(scores.shape[:2], dtype=torch.bool)
            for i, r in enumerate(rows):
                content[i, 1:len(r)] = True
            stats["texts"] += len(rows)
            stats["tokens"] += sum(len(r) for r in rows)
            bar.update(len(rows))
            yield _Batch([c[0] for c in chunk], rows, scores, content)

    for i, text in pairs:
        ids, cut = _encode(model, text, max_tokens)
        stats["truncated"] += int(cut)
        if len(ids) < 2:
            stats["skipped"] += 1  # no content token besides the attention sink
            continue
        buf.append((i, ids))
        if len(buf) >= 8 * batch_size:
            yield from flush(buf)
            buf = []
    if buf:
        yield from flush(buf)


# --------------------------------------------------------------------------- results
@dataclass
class Example:
    """One max-activating token: ``score`` of ``emotion`` at token ``position`` of text
    ``text_index`` (0-based in the stream); ``tokens``/``scores``: the context window (the
    emotion's score on each window token, 0 for the attention-sink token); ``target``: the
    index of the max-activating token inside the window."""

    emotion: str
    score: float
    text_index: int
    position: int
    tokens: list[str]
    scores: list[float]
    target: int
    token_ids: list[int] = field(default_factory=list, repr=False)

    def key(self) -> tuple[float, int, int]:
        return (-self.score, self.text_index, self.position)

    def context(self, mark: str = "[[{}]]") -> str:
        """The window as text with the target token marked."""
        return "".join(mark.format(t) if j == self.target else t
                       for j, t in enumerate(self.tokens))


@dataclass
class TopExamples:
    """The top-k tokens per emotion over a stream of texts (see the module docstring).

    ``examples[emotion]``: up to ``k`` ``Example`` s, best first. ``n_texts`` / ``n_tokens``:
    what was scanned; ``truncated``: texts cut at ``max_tokens``; ``skipped``: texts with no
    content token.
    """

    emotions: list[str]
    layer: int
    site: str
    k: int
    window: tuple[int, int]
    one_per_text: bool
    examples: dict[str, list[Example]]
    n_texts: int = 0
    n_tokens: int = 0
    truncated: int = 0
    skipped: int = 0
    max_tokens: int = 256
    registry: str = ""
    model_id: str | None = None

    # ------------------------------------------------------------ merging
    def merge(self, other: TopExamples) -> TopExamples:
        """The result of scanning both streams (they must hold different texts: give each
        shard its own text indices)."""
        same = ("emotions", "layer", "site", "k", "window", "one_per_text", "max_tokens")
        for name in same:
            if getattr(self, name) != getattr(other, name):
                raise InputError(f"cannot merge scans with different {name}: "
                                 f"{getattr(self, name)!r} vs {getattr(other, name)!r}")
        merged = {e: sorted(self.examples[e] + other.examples[e], key=Example.key)[:self.k]
                  for e in self.emotions}
        return TopExamples(self.emotions, self.layer, self.site, self.k, self.window,
                           self.one_per_text, merged, self.n_texts + other.n_texts,
                           self.n_tokens + other.n_tokens, self.truncated + other.truncated,
                           self.skipped + other.skipped, self.max_tokens, self.registry,
                           self.model_id)

    # ------------------------------------------------------------ export
    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "examples"}
        d["window"] = list(self.window)
        d["format"] = SCAN_FORMAT
        d["examples"] = {e: [{k: v for k, v in asdict(x).items() if k != "token_ids"}
                             for x in xs] for e, xs in self.examples.items()}
        d["statement"] = self.statement()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TopExamples:
        try:
            ex = {e: [Example(**x) for x in xs] for e, xs in d["examples"].items()}
            return cls(list(d["emotions"]), int(d["layer"]), str(d["site"]), int(d["k"]),
                       (int(d["window"][0]), int(d["window"][1])), bool(d["one_per_text"]), ex,
                       int(d["n_texts"]), int(d["n_tokens"]), int(d["truncated"]),
                       int(d["skipped"]), int(d["max_tokens"]), str(d.get("registry", "")),
                       d.get("model_id"))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise InputError(f"not a saved scan (TopExamples.to_dict) : {e!r}") from None

    def to_dataframe(self) -> Any:
        """Tidy ``pandas.DataFrame``: emotion, rank, score, text_index, position, token,
        context."""
        import pandas as pd

        rows = [(e, r, x.score, x.text_index, x.position, x.tokens[x.target], x.context())
                for e in self.emotions for r, x in enumerate(self.examples[e])]
        return pd.DataFrame(rows, columns=["emotion", "rank", "score", "text_index", "position",
                                           "token", "context"])

    def statement(self) -> str:
        """What this scan shows and what it does not, in plain words."""
        per = "one token per text" if self.one_per_text else "any tokens"
        trunc = f", {self.truncated} cut at {self.max_tokens} tokens" if self.truncated else ""
        return (f"Top {self.k} tokens ({per}) for each of {len(self.emotions)} emotions at layer "
                f"{self.layer} ({self.site}) over {self.n_texts} texts ({self.n_tokens} tokens"
                f"{trunc}), ranked by the centred projection on each emotion's unit direction. "
                "It shows the contexts in which each direction reads highest on this text; it "
                "does not show that the direction causes anything, that these texts express the "
                "emotion (read them), or how common high readings are (no base rate).")

    def view(self, emotions: Sequence[str] | None = None, n: int = 5) -> Any:
        """circuitsvis token views (``ColoredTokens``) of the top ``n`` windows per emotion,
        each coloured by its emotion's scores (symmetric scale per window)."""
        from emolens.views._html import Component
        from emolens.views.tokens import TokenView

        names = self.emotions if emotions is None else list(emotions)
        for e in names:
            if e not in self.emotions:
                raise InputError(unknown_name_message("emotion", e, self.emotions))
        comps, labels = [], []
        for e in names:
            for r, x in enumerate(self.examples[e][:n]):
                m = max((abs(v) for v in x.scores), default=0.0) or 1e-6
                comps.append(Component("ColoredTokens", {
                    "tokens": [html.escape(t, quote=False) for t in x.tokens],
                    "values": [float(f"{v:.5g}") for v in x.scores],
                    "minValue": -float(f"{m:.5g}"), "maxValue": float(f"{m:.5g}")}))
                labels.append(f"{e} #{r + 1}: {x.score:+.3f} at token "
                              f"{x.tokens[x.target]!r} (text {x.text_index}, position "
                              f"{x.position})")
        return TokenView(comps, title=f"max-activating examples at layer {self.layer}",
                         notes=[self.statement()], labels=labels)

    def _repr_html_(self) -> str:
        return str(self.view()._repr_html_())

    def __repr__(self) -> str:
        return (f"TopExamples({len(self.emotions)} emotions, k={self.k}, layer={self.layer}, "
                f"{self.n_texts} texts)")

    def save(self, folder: str | os.PathLike[str], *, html_n: int = 10) -> Path:
        """Write ``top_examples.json`` and ``top_examples.html`` (standalone) into ``folder``."""
        from emolens.io import atomic_open, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "top_examples.json", self.to_dict())
        with atomic_open(folder / "top_examples.html", "w") as f:
            f.write(self.view(n=html_n).to_html())
        return folder


class _TopK:
    """Running top-k per emotion; candidates enter by score, windows are cut on entry."""

    def __init__(self, emotions: list[str], k: int, window: tuple[int, int], one_per_text: bool):
        self.emotions, self.k, self.window, self.one = emotions, k, window, one_per_text
        self.best: list[list[Example]] = [[] for _ in emotions]

    def add(self, b: _Batch) -> None:
        s = b.scores.masked_fill(~b.content[..., None], float("-inf"))  # [b, pos, E]
        n_rows, width, n_emo = s.shape
        for e in range(n_emo):
            se = s[..., e]
            if self.one:
                vals, pos = se.max(dim=1)
                rows = torch.arange(n_rows)
            else:  # every token tied with the k-th best enters, so ties break by index
                flat_s = se.flatten()
                kth = flat_s.topk(min(self.k, flat_s.numel())).values[-1]
                flat = (flat_s >= kth).nonzero().flatten()
                vals, rows, pos = flat_s[flat], flat // width, flat % width
            cur = self.best[e]
            floor = cur[-1].score if len(cur) >= self.k else float("-inf")
            new = []
            for v, r, p in zip(vals.tolist(), rows.tolist(), pos.tolist()):
                if v == float("-inf") or v < floor:
                    continue
                new.append((v, b.index[r], p, r))
            if not new:
                continue
            new.sort(key=lambda t: (-t[0], t[1], t[2]))
            cands = [self._example(e, v, gi, p, b, r) for v, gi, p, r in new[:self.k]]
            self.best[e] = sorted(cur + cands, key=Example.key)[:self.k]

    def _example(self, e: int, v: float, gi: int, p: int, b: _Batch, r: int) -> Example:
        before, after = self.window
        ids = b.ids[r]
        lo, hi = max(0, p - before), min(len(ids), p + after + 1)
        sc = (b.scores[r, lo:hi, e] * b.content[r, lo:hi]).tolist()
        return Example(self.emotions[e], float(v), int(gi), int(p), [], [float(x) for x in sc],
                       p - lo, ids[lo:hi])


def _check_window(window: Any) -> tuple[int, int]:
    if isinstance(window, int) and not isinstance(window, bool):
        window = (window, window)
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in window)):
        raise InputError(f"window must be an int >= 0 or (before, after) ints >= 0, got "
                         f"{window!r}")
    return int(window[0]), int(window[1])


def top_examples(model: Model, registry: EmotionRegistry, texts: Any, *,
                 emotions: Sequence[str] | None = None, k: int = 20, layer: int | None = None,
                 window: int | tuple[int, int] = (12, 4), one_per_text: bool = True,
                 batch_size: int | None = None, max_tokens: int = 256, field: str = "text",
                 compute_dtype: torch.dtype | None = None, progress: bool = True,
                 distributed: bool | str | None = "auto", strict: bool = True) -> TopExamples:
    """The ``k`` highest-scoring tokens of each emotion over a stream of texts.

    Args:
        texts: a list of strings, a file path (``.jsonl``, ``.csv``, ``.tsv``, ``.txt``), a
            ``datasets.Dataset`` or any iterable (see ``iter_texts``); streamed, never held.
        emotions: restrict to these (default: every registry emotion).
        layer: registry layer (default: its ``default_layer``).
        window: context tokens kept around each top token: ``(before, after)`` or one int for
            both.
        one_per_text: keep at most one token per text and emotion (the text's maximum), so a
            single strongly-reading text cannot fill the list.
        max_tokens: texts are cut after this many tokens (counted in ``truncated``).
        distributed: ``"auto"``/``True``/``False`` as in ``emolens.distributed``; each rank scans
            its share (lists balanced by token count, streams every N-th text) and every rank
            returns the merged result.

    Score: the centred projection ``(x - center) . v`` at the site, as ``read_emotions``.
    Token 0 (the attention sink) is never a candidate. Returns ``TopExamples``.
    """
    registry.check_model(model, strict=strict)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be an int >= 1, got {k!r}")
    from emolens.runtime import resolve_batch_size

    batch_size = resolve_batch_size(batch_size, model)  # None: the device's default
    if max_tokens < 2:
        raise InputError(f"batch_size must be >= 1 and max_tokens >= 2, got {batch_size!r}, "
                         f"{max_tokens!r}")
    win = _check_window(window)
    reg = registry if emotions is None else registry.subset(list(emotions))
    layer = reg.default_layer if layer is None else int(layer)
    site = reg.site(layer)
    from tqdm.auto import tqdm

    from emolens.distributed import context

    ctx = context(distributed)
    state = _TopK(reg.emotions, k, win, one_per_text)
    stats = {"texts": 0, "tokens": 0, "truncated": 0, "skipped": 0}
    bar = tqdm(desc="scan", unit="text", disable=not (progress and ctx.is_main), leave=False)
    with ctx.guard("scan"):
        for b in _stream_batches(model, reg, _indexed(texts, field, ctx, model), layer,
                                 batch_size, min(max_tokens, int(model.cfg.n_ctx)),
                                 compute_dtype, stats, bar):
            state.add(b)
    bar.close()
    tok = model.tokenizer
    for xs in state.best:
        for x in xs:
            x.tokens = [tok.decode([i]) for i in x.token_ids]
    result = TopExamples(reg.emotions, layer, site.name, k, win, one_per_text,
                         {e: state.best[i] for i, e in enumerate(reg.emotions)},
                         stats["texts"], stats["tokens"], stats["truncated"], stats["skipped"],
                         max_tokens, reg.name, reg.provenance.get("model_id"))
    if ctx.active:
        parts = [TopExamples.from_dict(d) for d in ctx.all_gather_json(result.to_dict())]
        result = parts[0]
        for p in parts[1:]:
            result = result.merge(p)
    return result


def pooled_scores(model: Model, registry: EmotionRegistry, texts: Any, *, layer: int | None = None,
                  batch_size: int | None = None, max_tokens: int = 256, field: str = "text",
                  compute_dtype: torch.dtype | None = None, progress: bool = True,
                  distributed: bool | str | None = "auto", strict: bool = True
                  ) -> Float[torch.Tensor, "text emotion"]:
    """Mean centred projection over each text's content tokens (no attention sink), streamed.

    Returns ``[n_texts, emotion]`` in input order (empty texts are skipped, as ``iter_texts``
    does); under ``torch.distributed`` each rank scores its share and every rank returns the
    whole matrix. Memory: one float per text and emotion.
    """
    from emolens.runtime import resolve_batch_size

    registry.check_model(model, strict=strict)
    batch_size = resolve_batch_size(batch_size, model)
    layer = registry.default_layer if layer is None else int(layer)
    from tqdm.auto import tqdm

    from emolens.distributed import context

    ctx = context(distributed)
    idx: list[int] = []
    rows: list[torch.Tensor] = []
    stats = {"texts": 0, "tokens": 0, "truncated": 0, "skipped": 0}
    bar = tqdm(desc="pooled", unit="text", disable=not (progress and ctx.is_main), leave=False)
    with ctx.guard("pooled scores"):
        for b in _stream_batches(model, registry, _indexed(texts, field, ctx, model), layer,
                                 batch_size, min(max_tokens, int(model.cfg.n_ctx)),
                                 compute_dtype, stats, bar):
            w = b.content.to(b.scores.dtype)
            rows.append((b.scores * w[..., None]).sum(1) / w.sum(1).clamp(min=1)[:, None])
            idx += b.index
    bar.close()
    n_emo = len(registry.emotions)
    local = torch.cat(rows) if rows else torch.zeros(0, n_emo)
    ids = torch.tensor(idx, dtype=torch.long)
    if ctx.active:
        local = torch.cat(ctx.all_gather_rows(local))
        ids = torch.cat(ctx.all_gather_rows(ids))
    order = ids.argsort()
    return local[order]


__all__ = ["Example", "TopExamples", "iter_texts", "pooled_scores", "top_examples"]
