"""``Report``: one self-contained HTML page of sections, figures, tables and token views.

```python
rep = Report("emolens run", meta={"model": "SmolLM2-135M-Instruct (Q4_1)"})
rep.add_section("validation", "Validation accuracy by layer",
                "Held-out accuracy of the one-vs-rest readout at each layer.",
                limits="Stories written for this corpus; accuracy on other text may differ.")
rep.add_figure(fig, "Accuracy by layer; dotted: chance, dashed: shuffled labels")
rep.add_table(df, "Accuracy per layer")
rep.add_html(render_tokens(readout, "calm"), "calm over one story")
rep.save("out/report.html")
```

The page needs nothing else to open: CSS is inline, figures are inline PNG/SVG data, the
circuitsvis bundle is inlined once (only when a token view is present) and shared by every view,
and a Content-Security-Policy forbids loading anything from anywhere (``default-src 'none'``,
data-URI images only). Every text (titles, captions, table cells, section paragraphs) is
HTML-escaped; section text and ``add_text`` accept a small Markdown subset (paragraphs, ``-``
and ``1.`` lists, ``#`` headings, ``**bold**``, ``*italic*``, ``code``, ``[text](https://...)``
links). ``add_html`` inserts a fragment as given (trusted HTML), after refusing anything that
would load from the network. ``save`` writes atomically: an error leaves any earlier report at
that path untouched and no temporary file behind. results.json is separate (not written here).
"""
from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from emolens.errors import InputError
from emolens.io import atomic_open
from emolens.views._html import (
    CSP_META,
    bundle_script,
    find_remote_reference,
    parse_circuitsvis,
)
from emolens.views.figures import figure_to_data_uri
from emolens.views.tokens import TokenView

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DATA_URI = re.compile(r"^data:image/(png|svg\+xml|jpeg);base64,[A-Za-z0-9+/=]+$")

_CSS = """
:root{--fg:#1d1d1f;--muted:#5b5b60;--line:#d9d9de;--bg2:#f6f6f8;--accent:#2557a7}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
 max-width:1100px;margin:2em auto;padding:0 1.2em;line-height:1.5}
h1{font-size:1.7em;margin-bottom:.2em}h2{font-size:1.3em;margin-top:2.2em;
 border-bottom:1px solid var(--line);padding-bottom:.2em}h3{font-size:1.05em}
a{color:var(--accent)}code{background:var(--bg2);padding:0 .25em;border-radius:3px}
.meta{border-collapse:collapse;font-size:.9em;margin:.8em 0}
.meta th{text-align:left;padding:.1em 1em .1em 0;color:var(--muted);font-weight:600}
nav.toc{background:var(--bg2);border:1px solid var(--line);border-radius:6px;
 padding:.6em 1.2em;margin:1.2em 0}nav.toc h2{margin:.2em 0;border:0;font-size:1.05em}
nav.toc ol{margin:.3em 0;padding-left:1.4em}
.about{display:grid;grid-template-columns:1fr 1fr;gap:1em;margin:.8em 0}
.about>div{background:var(--bg2);border-left:3px solid var(--accent);padding:.3em .9em;
 border-radius:0 4px 4px 0}.about>div.limits{border-left-color:#b26b00}
.about .tag{font-weight:600;font-size:.85em;text-transform:uppercase;letter-spacing:.04em;
 color:var(--muted);margin:.3em 0}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid var(--line)}
figcaption{font-size:.9em;color:var(--muted);margin-top:.3em}
table.data{border-collapse:collapse;font-size:.85em;margin:.4em 0}
table.data th,table.data td{border:1px solid var(--line);padding:.2em .6em;text-align:left}
table.data th{background:var(--bg2)}table.data td.num{text-align:right;
 font-variant-numeric:tabular-nums}.tablewrap{overflow-x:auto}
.emolens-view{border:1px solid var(--line);border-radius:6px;padding:.5em .9em;margin:1em 0}
.emolens-view-note{color:var(--muted);font-size:.85em}
.emolens-view-label{margin-top:.6em;color:var(--muted);font-size:.85em}
footer{margin-top:3em;color:var(--muted);font-size:.8em;border-top:1px solid var(--line)}
@media (max-width:800px){.about{grid-template-columns:1fr}}
"""


# ---------------------------------------------------------------------- text (Markdown subset)
_BULLET = re.compile(r"^\s*[-*] ")
_NUMBERED = re.compile(r"^\s*\d+[.)] ")


def _inline(text: str) -> str:
    out = []
    for i, part in enumerate(re.split(r"`([^`]+)`", text)):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        s = html.escape(part)
        s = re.sub(r"\[([^\]]+)\]\(((?:https?://|#)[^\s)]+)\)",
                   r'<a href="\2">\1</a>', s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", s)
        out.append(s)
    return "".join(out)


def markdown_lite(text: str, *, heading_offset: int = 2) -> str:
    """Escape ``text`` and render a small Markdown subset to HTML (see the module docstring)."""
    blocks = re.split(r"\n\s*\n", text.strip()) if text.strip() else []
    out = []
    for block in blocks:
        lines = [ln.rstrip() for ln in block.strip("\n").splitlines()]
        if all(_BULLET.match(ln) for ln in lines):
            items = "".join(f"<li>{_inline(_BULLET.sub('', ln))}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        elif all(_NUMBERED.match(ln) for ln in lines):
            items = "".join(f"<li>{_inline(_NUMBERED.sub('', ln))}</li>" for ln in lines)
            out.append(f"<ol>{items}</ol>")
        elif len(lines) == 1 and (m := re.match(r"^(#{1,4})\s+(.*)$", lines[0])):
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        else:
            out.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(out)


# ---------------------------------------------------------------------------------- tables
def _cell(v: Any, float_format: str) -> tuple[str, bool]:
    """Escaped text of one cell and whether it is numeric."""
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        try:
            v = v.item()
        except (ValueError, TypeError):
            pass
    if v is None:
        return "–", False
    if isinstance(v, bool):
        return str(v), False
    if isinstance(v, int):
        return str(v), True
    if isinstance(v, float):
        if math.isnan(v):
            return "–", True
        return html.escape(float_format.format(v)), True
    return html.escape(str(v)), False


def _records(data: Any) -> tuple[list[str], list[list[Any]]]:
    if hasattr(data, "columns") and hasattr(data, "to_dict"):  # pandas DataFrame
        df = data
        if type(df.index).__name__ != "RangeIndex" or df.index.name is not None:
            df = df.reset_index()
        cols = [str(c) for c in df.columns]
        return cols, [list(r) for r in df.itertuples(index=False, name=None)]
    if isinstance(data, Mapping):
        cols = [str(c) for c in data]
        seqs = [list(v) for v in data.values()]
        if len({len(s) for s in seqs}) > 1:
            raise InputError("table columns have different lengths: "
                             + ", ".join(f"{c}={len(s)}" for c, s in zip(cols, seqs)))
        return cols, [list(r) for r in zip(*seqs)]
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        rows = list(data)
        if not all(isinstance(r, Mapping) for r in rows):
            raise InputError("a table must be a DataFrame, a list of dicts (records) or a dict "
                             "of columns")
        cols = []
        for r in rows:
            cols.extend(str(k) for k in r if str(k) not in cols)
        return cols, [[{str(k): v for k, v in r.items()}.get(c) for c in cols] for r in rows]
    raise InputError(f"cannot make a table from {type(data).__name__}; pass a DataFrame, a list "
                     "of dicts or a dict of columns")


def table_html(data: Any, *, max_rows: int = 200, float_format: str = "{:.4g}") -> str:
    """An escaped HTML table of ``data`` (DataFrame, list of dicts, or dict of columns)."""
    cols, rows = _records(data)
    shown = rows[:max_rows]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in shown:
        cells = []
        for v in r:
            text, num = _cell(v, float_format)
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = (f'<div class="emolens-view-note">first {len(shown)} of {len(rows)} rows shown</div>'
            if len(rows) > len(shown) else "")
    return (f'<div class="tablewrap"><table class="data"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>{note}")


# --------------------------------------------------------------------------------- report
@dataclass
class _Section:
    key: str
    title: str
    text: str
    limits: str
    items: list[tuple[str, Any, str]] = field(default_factory=list)  # (kind, payload, caption)


class Report:
    """Builder for one self-contained HTML report (see the module docstring).

    ``Report(title, intro=..., meta={...})``; then ``add_section`` and, under the latest
    section, ``add_figure`` / ``add_table`` / ``add_html`` / ``add_text``. Each ``add_*``
    returns the report, so calls chain. ``to_html()`` gives the page, ``save(path)`` writes it.
    """

    def __init__(self, title: str, *, intro: str = "",
                 meta: Mapping[str, Any] | None = None):
        self.title = str(title)
        self.intro = intro
        self.meta = dict(meta or {})
        self._sections: list[_Section] = []

    @property
    def sections(self) -> list[str]:
        """Section keys in order."""
        return [s.key for s in self._sections]

    def _current(self, what: str) -> _Section:
        if not self._sections:
            raise InputError(f"add_section(key, title, text) before {what}: every item belongs "
                             "to a section")
        return self._sections[-1]

    def add_section(self, key: str, title: str, text: str = "", *, limits: str = "") -> Report:
        """Start a section. ``text``: what it shows; ``limits``: what it does not establish."""
        if not _KEY.match(key):
            raise InputError(f"section key {key!r} must start with a letter or digit and hold "
                             "only letters, digits, '.', '-' and '_'")
        if key in self.sections:
            raise InputError(f"section key {key!r} is already used; keys must be unique")
        self._sections.append(_Section(key, str(title), text, limits))
        return self

    def add_figure(self, fig: Figure | str, caption: str = "", *, fmt: str = "png",
                   dpi: int = 110, alt: str | None = None) -> Report:
        """A matplotlib figure (rendered now, as inline PNG or SVG data) or a ``data:image/...``
        URI, with a caption."""
        sec = self._current("add_figure")
        if isinstance(fig, Figure):
            uri = figure_to_data_uri(fig, fmt, dpi=dpi)
        elif isinstance(fig, str) and _DATA_URI.match(fig):
            uri = fig
        else:
            raise InputError("add_figure takes a matplotlib Figure or a 'data:image/png;base64,"
                             "...' URI; got " + (repr(fig[:40]) if isinstance(fig, str)
                                                 else type(fig).__name__))
        sec.items.append(("figure", (uri, alt or caption), caption))
        return self

    def add_table(self, data: Any, caption: str = "", *, max_rows: int = 200,
                  float_format: str = "{:.4g}") -> Report:
        """A table from a DataFrame, a list of dicts or a dict of columns (rendered now)."""
        sec = self._current("add_table")
        sec.items.append(("table", table_html(data, max_rows=max_rows,
                                              float_format=float_format), caption))
        return self

    def add_html(self, fragment: Any, caption: str = "") -> Report:
        """A token view (``TokenView``), a circuitsvis ``RenderedHTML``, an object with
        ``_repr_html_``, or an HTML string (inserted as is: trusted). Raises ``InputError`` for
        HTML that would load anything from the network."""
        sec = self._current("add_html")
        if isinstance(fragment, TokenView):
            sec.items.append(("view", fragment, caption))
            return self
        if hasattr(fragment, "cdn_src") and hasattr(fragment, "local_src"):
            comp = parse_circuitsvis(fragment)
            if comp is not None:
                sec.items.append(("view", TokenView([comp]), caption))
                return self
            text = str(fragment.local_src)  # unknown format: its own inlined bundle, offline
        elif isinstance(fragment, str):
            text = fragment
        elif hasattr(fragment, "_repr_html_"):
            text = str(fragment._repr_html_())
        else:
            raise InputError(f"add_html takes a TokenView, a circuitsvis render, an object with "
                             f"_repr_html_ or an HTML string; got {type(fragment).__name__}")
        remote = find_remote_reference(text)
        if remote is not None:
            raise InputError(f"this HTML would load from the network ({remote!r}); the report "
                             "must open offline: inline the resource or use a TokenView")
        sec.items.append(("html", text, caption))
        return self

    def add_text(self, text: str) -> Report:
        """A paragraph (or a few) of plain text or the Markdown subset; escaped."""
        self._current("add_text").items.append(("text", markdown_lite(text, heading_offset=2),
                                                ""))
        return self

    # ------------------------------------------------------------------------ output
    def _needs_bundle(self) -> bool:
        return any(kind == "view" for s in self._sections for kind, _, _ in s.items)

    def _iter_html(self) -> Iterator[str]:
        from emolens import __version__

        title = html.escape(self.title)
        yield ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
               f"{CSP_META}\n"
               '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
               f'<meta name="generator" content="emolens {html.escape(__version__)}">\n'
               f"<title>{title}</title>\n<style>{_CSS}</style>\n")
        if self._needs_bundle():
            yield bundle_script() + "\n"
        yield f"</head><body>\n<header><h1>{title}</h1>\n"
        if self.meta:
            rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td>"
                           "</tr>" for k, v in self.meta.items())
            yield f'<table class="meta">{rows}</table>\n'
        if self.intro:
            yield markdown_lite(self.intro) + "\n"
        yield "</header>\n"
        if self._sections:
            links = "".join(f'<li><a href="#sec-{s.key}">{html.escape(s.title)}</a></li>'
                            for s in self._sections)
            yield f'<nav class="toc"><h2>Contents</h2><ol>{links}</ol></nav>\n'
        n_fig = n_tab = n_view = 0
        for si, sec in enumerate(self._sections, 1):
            yield (f'<section id="sec-{sec.key}"><h2>{si}. {html.escape(sec.title)}</h2>\n')
            if sec.text or sec.limits:
                yield '<div class="about">'
                if sec.text:
                    yield ('<div class="shows"><div class="tag">What this shows</div>'
                           f"{markdown_lite(sec.text)}</div>")
                if sec.limits:
                    yield ('<div class="limits"><div class="tag">Limits</div>'
                           f"{markdown_lite(sec.limits)}</div>")
                yield "</div>\n"
            for kind, payload, caption in sec.items:
                yield self._render_item(kind, payload, caption, si, (n_fig, n_tab, n_view))
                n_fig += kind == "figure"
                n_tab += kind == "table"
                n_view += kind == "view"
            yield "</section>\n"
        yield (f"<footer><p>Generated by emolens {html.escape(__version__)}. This page loads "
               "nothing from the network.</p></footer>\n</body></html>\n")

    @staticmethod
    def _render_item(kind: str, payload: Any, caption: str, si: int,
                     counts: tuple[int, int, int]) -> str:
        n_fig, n_tab, n_view = counts
        cap = html.escape(caption)
        if kind == "figure":
            uri, alt = payload
            return (f'<figure><img src="{uri}" alt="{html.escape(alt, quote=True)}">'
                    f"<figcaption><strong>Figure {n_fig + 1}.</strong> {cap}</figcaption>"
                    "</figure>\n")
        if kind == "table":
            return (f"<figure>{payload}<figcaption><strong>Table {n_tab + 1}.</strong> {cap}"
                    "</figcaption></figure>\n")
        if kind == "view":
            body = payload.fragment(f"s{si}-v{n_view}")
            return (f"<figure>{body}"
                    + (f"<figcaption>{cap}</figcaption>" if cap else "") + "</figure>\n")
        if kind == "html":
            return (f'<div class="html-fragment">{payload}</div>'
                    + (f"<figcaption>{cap}</figcaption>" if cap else "") + "\n")
        return f"{payload}\n"

    def to_html(self) -> str:
        """The whole page as a string."""
        return "".join(self._iter_html())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the page to ``path`` atomically (temporary file, then rename); returns it."""
        from emolens.errors import InputError
        from emolens.io import check_output_file

        path = check_output_file(path, error=InputError, what="report file")
        with atomic_open(path, "w") as f:
            for chunk in self._iter_html():
                f.write(chunk)
        return path

    def __repr__(self) -> str:
        n = sum(len(s.items) for s in self._sections)
        return f"Report({self.title!r}, {len(self._sections)} sections, {n} items)"


__all__ = ["Report", "markdown_lite", "table_html"]
