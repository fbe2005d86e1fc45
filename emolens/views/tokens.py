"""Token views of a ``Readout``: emotion scores coloured over the text (circuitsvis components).

- ``render_tokens(ro, "calm")``: one emotion over the tokens (circuitsvis ``ColoredTokens``,
  a symmetric colour scale of +-max |score| over the content tokens).
- ``render_tokens(ro)`` / ``render_tokens(ro, ["calm", "afraid"])``: tokens x emotions
  (``ColoredTokensMulti``: pick an emotion to colour by, hover a token for every score).
- ``render_layers(ro)``: tokens x layers x emotions (``TextNeuronActivations``, the "layer"
  drop-down runs over ``ro.layers``, the "emotion" drop-down over the emotions).

Only real tokens are shown (padding is dropped, for left or right padding alike). The
attention-sink first token is a real token but its score is dominated by its huge norm, so by
default (``sink="blank"``) it is shown with score 0 (uncoloured) and left out of every colour
scale; ``sink="drop"`` removes it, ``sink="show"`` shows its real score.

Token strings are HTML-escaped before they reach circuitsvis (which writes tokens into the page
as HTML), so a token such as ``<script>`` is displayed, never run; the hover tooltips of
circuitsvis show the escaped form (``&lt;script&gt;``). Non-finite scores are shown as 0 and
counted in the view's note.

Every function returns a ``TokenView``: it displays in notebooks (``_repr_html_``), and
``.save(path)`` / ``.to_html()`` give a standalone page with circuitsvis's bundle inlined, so the
file opens with no network. ``Report.add_html(view)`` shares one bundle between all views.
"""
from __future__ import annotations

import html
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emolens.errors import InputError, unknown_name_message
from emolens.io import atomic_open
from emolens.readout.readout import Readout
from emolens.views._html import CSP_META, Component, bundle_script, parse_circuitsvis

_SINK_MODES = ("blank", "drop", "show")
_SIG = 5  # significant digits kept for scores in the page


@dataclass
class TokenView:
    """One or more circuitsvis components with a title and notes, ready to embed or save.

    ``fragment()`` is the HTML to place in a page that already holds the circuitsvis bundle
    (``emolens.views.Report`` does that); ``to_html()`` is a standalone page with the bundle
    inlined; ``save(path)`` writes it atomically.
    """

    components: list[Component]
    title: str = ""
    notes: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def fragment(self, id_prefix: str | None = None) -> str:
        """HTML for the view without the bundle; element ids start with ``id_prefix``."""
        prefix = id_prefix or f"emolens-{uuid.uuid4().hex[:12]}"
        parts = ['<div class="emolens-view">']
        if self.title or self.notes:
            head = f"<strong>{html.escape(self.title)}</strong>" if self.title else ""
            note = html.escape("; ".join(self.notes))
            parts.append(f'<div class="emolens-view-head">{head}'
                         f'{" " if head and note else ""}<span class="emolens-view-note">'
                         f"{note}</span></div>")
        for i, comp in enumerate(self.components):
            if i < len(self.labels) and self.labels[i]:
                parts.append(f'<div class="emolens-view-label">{html.escape(self.labels[i])}</div>')
            parts.append(comp.fragment(f"{prefix}-{i}"))
        parts.append("<noscript>This view needs JavaScript (circuitsvis).</noscript></div>")
        return "\n".join(parts)

    def to_html(self, page_title: str | None = None) -> str:
        """A standalone HTML page: circuitsvis's bundle inlined once, no network needed."""
        title = html.escape(page_title or self.title or "emolens token view")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"{CSP_META}"
                f"<title>{title}</title>\n{bundle_script()}\n"
                "<style>body{font-family:system-ui,sans-serif;margin:1.5em;}"
                ".emolens-view-note{color:#555;font-size:.9em}"
                ".emolens-view-label{margin-top:.8em;color:#333;font-size:.9em}</style>"
                f"</head><body>\n{self.fragment('v')}\n</body></html>\n")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``to_html()`` to ``path`` atomically; returns the path."""
        path = Path(path)
        text = self.to_html()
        with atomic_open(path, "w") as f:
            f.write(text)
        return path

    def _repr_html_(self) -> str:
        # The bundle travels with every notebook output, as circuitsvis's own offline render
        # does; nothing is fetched from the network (circuitsvis would probe google.com).
        return bundle_script() + "\n" + self.fragment()

    def __html__(self) -> str:
        return self._repr_html_()

    def __repr__(self) -> str:
        names = ", ".join(c.name for c in self.components)
        return f"TokenView({self.title!r}, components=[{names}])"


def view_from_circuitsvis(rendered: Any, title: str = "") -> TokenView:
    """Wrap a circuitsvis ``RenderedHTML`` (any component) as a ``TokenView``.

    The result shares a report's single bundle and never loads from the network. circuitsvis
    does not escape token strings: escape untrusted text before passing it to circuitsvis.
    Raises ``InputError`` when the render is not in circuitsvis 1.43's format.
    """
    comp = parse_circuitsvis(rendered)
    if comp is None:
        raise InputError(f"cannot read a circuitsvis render from {type(rendered).__name__}; "
                         "pass the object circuitsvis returned (RenderedHTML), unmodified")
    return TokenView([comp], title=title)


# --------------------------------------------------------------------------- helpers
def _rows(readout: Readout, index: int | Sequence[int]) -> list[int]:
    n = len(readout.str_tokens)
    idx = [index] if isinstance(index, int) else list(index)
    if not idx:
        raise InputError("index is empty: pass a row number or a list of row numbers")
    out = []
    for i in idx:
        if not isinstance(i, int) or isinstance(i, bool) or not -n <= i < n:
            raise InputError(f"row index {i!r} out of range for a readout of {n} texts")
        out.append(i % n)
    return out


def _check_sink(sink: str) -> None:
    if sink not in _SINK_MODES:
        raise InputError(f"sink must be one of {_SINK_MODES}, got {sink!r}")


def _emotion_indices(readout: Readout, emotions: str | Sequence[str] | None) -> list[int]:
    if emotions is None:
        return list(range(len(readout.emotions)))
    names = [emotions] if isinstance(emotions, str) else list(emotions)
    if not names:
        raise InputError("emotions is empty: pass a name, a list of names, or None for all")
    for name in names:
        if name not in readout.emotions:
            raise InputError(unknown_name_message("emotion", name, readout.emotions))
    return [readout.emotions.index(name) for name in names]


def _layer_indices(readout: Readout, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        return list(range(len(readout.layers)))
    out = []
    for layer in layers:
        if layer not in readout.layers:
            raise InputError(f"layer {layer!r} was not read; this readout has layers "
                             f"{readout.layers}")
        out.append(readout.layers.index(layer))
    if not out:
        raise InputError("layers is empty: pass layer numbers of the readout, or None for all")
    return out


@dataclass
class _Row:
    tokens: list[str]            # HTML-escaped, shown tokens
    scores: torch.Tensor         # [shown token, layer, emotion]
    content: torch.Tensor        # bool [shown token]: not the sink
    n_bad: int                   # non-finite scores replaced by 0


def _row(readout: Readout, b: int, sink: str) -> _Row:
    positions = readout.mask[b].nonzero().flatten()
    toks = readout.str_tokens[b]
    if len(toks) != len(positions):
        raise InputError(f"readout row {b} has {len(toks)} token strings but {len(positions)} "
                         "real positions in its mask; the readout is inconsistent")
    scores = readout.scores_all[b, positions].detach().float().cpu()
    content = readout.content_mask[b, positions].cpu()
    n_bad = int((~torch.isfinite(scores)).sum())
    scores = torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
    if sink == "drop":
        keep = content
        toks = [t for t, k in zip(toks, keep.tolist()) if k]
        scores, content = scores[keep], content[keep]
    elif sink == "blank":
        scores = scores * content[:, None, None].to(scores.dtype)
    return _Row([html.escape(t, quote=False) for t in toks], scores, content, n_bad)


def _round(x: torch.Tensor) -> Any:
    """Nested lists of floats with ``_SIG`` significant digits (keeps pages small)."""
    return _round_list(x.tolist())


def _round_list(v: Any) -> Any:
    if isinstance(v, list):
        return [_round_list(u) for u in v]
    return float(f"{v:.{_SIG}g}")


def _notes(readout: Readout, sink: str, rows: list[_Row], extra: str = "") -> list[str]:
    sink_note = {"blank": "attention-sink token shown uncoloured (score 0, outside the scale)",
                 "drop": "attention-sink token not shown",
                 "show": "attention-sink token shown with its real score"}[sink]
    notes = [f"scores: {readout.kind}", sink_note]
    if extra:
        notes.insert(0, extra)
    bad = sum(r.n_bad for r in rows)
    if bad:
        notes.append(f"{bad} non-finite score(s) shown as 0")
    return notes


def _label(readout: Readout, b: int) -> str:
    return f"text {b}" + (" (chat; reply opens at position "
                          f"{int(readout.reply_pos[b])})" if int(readout.reply_pos[b]) >= 0 else "")


# ------------------------------------------------------------------------------ views
def render_tokens(readout: Readout, emotion: str | Sequence[str] | None = None, *,
                  layer: int | None = None, index: int | Sequence[int] = 0,
                  sink: str = "blank", title: str | None = None) -> TokenView:
    """Emotion scores over the tokens of text(s) ``index`` at ``layer`` (default: the
    readout's ``default_layer``).

    ``emotion``: one name -> that emotion alone (``ColoredTokens``, symmetric scale +-max |score|
    over content tokens); ``None`` (all) or a list -> tokens x emotions (``ColoredTokensMulti``,
    one scale per emotion). ``index``: a row or a list of rows (one component each).
    ``sink``: ``"blank"`` (default), ``"drop"`` or ``"show"`` (see the module docstring).
    """
    _check_sink(sink)
    shown_layer = readout.default_layer if layer is None else layer
    li = _layer_indices(readout, [shown_layer])[0]
    single = isinstance(emotion, str)
    eidx = _emotion_indices(readout, emotion)
    rows_i = _rows(readout, index)
    rows = [_row(readout, b, sink) for b in rows_i]
    comps = []
    for r in rows:
        vals = r.scores[:, li][:, eidx]  # [token, emotion]
        if single:
            v = vals[:, 0]
            scale_on = v[r.content] if sink != "show" else v
            m = float(scale_on.abs().max()) if scale_on.numel() else 0.0
            m = float(f"{max(m, 1e-6):.{_SIG}g}")
            comps.append(Component("ColoredTokens", {"tokens": r.tokens, "values": _round(v),
                                                     "minValue": -m, "maxValue": m}))
        else:
            comps.append(Component("ColoredTokensMulti", {
                "tokens": r.tokens, "values": _round(vals),
                "labels": [readout.emotions[e] for e in eidx]}))
    what = (f"{emotion}" if single else f"{len(eidx)} emotions")
    return TokenView(comps, title=title or f"{what} at layer {shown_layer}",
                     notes=_notes(readout, sink, rows), labels=[_label(readout, b)
                                                                for b in rows_i])


def render_layers(readout: Readout, index: int | Sequence[int] = 0, *,
                  emotions: Sequence[str] | None = None, layers: Sequence[int] | None = None,
                  sink: str = "blank", title: str | None = None) -> TokenView:
    """Tokens x layers x emotions for text(s) ``index`` (``TextNeuronActivations``).

    The layer drop-down runs over ``layers`` (default: every layer the readout holds), the
    emotion drop-down over ``emotions`` (default: all). Several rows become samples of one
    component. The page holds ``tokens x layers x emotions`` numbers: subset large readouts.
    """
    _check_sink(sink)
    eidx = _emotion_indices(readout, emotions)
    lidx = _layer_indices(readout, layers)
    rows_i = _rows(readout, index)
    rows = [_row(readout, b, sink) for b in rows_i]
    acts = [_round(r.scores[:, lidx][:, :, eidx]) for r in rows]
    tokens: Any = [r.tokens for r in rows]
    if len(rows) == 1:
        tokens, acts_prop = tokens[0], acts[0]
    else:
        acts_prop = acts
    comp = Component("TextNeuronActivations", {
        "tokens": tokens, "activations": acts_prop,
        "firstDimensionName": "Layer", "secondDimensionName": "Emotion",
        "firstDimensionLabels": [str(readout.layers[i]) for i in lidx],
        "secondDimensionLabels": [readout.emotions[e] for e in eidx]})
    label = ", ".join(_label(readout, b) for b in rows_i)
    return TokenView([comp], title=title or f"{len(eidx)} emotions across "
                     f"{len(lidx)} layers", notes=_notes(readout, sink, rows), labels=[label])


__all__ = ["TokenView", "render_layers", "render_tokens", "view_from_circuitsvis"]
