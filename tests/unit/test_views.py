"""Views: token views (circuitsvis), figures, the self-contained report. Fast, no model."""
from __future__ import annotations

import base64
import html
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from emolens.errors import InputError
from emolens.readout.readout import Readout
from emolens.readout.scenarios import diagonal_accuracy
from emolens.views import (
    Report,
    TokenView,
    figure_to_data_uri,
    figure_to_svg,
    markdown_lite,
    plot_component_writes,
    plot_cosine_matrix,
    plot_dose_panels,
    plot_dose_response,
    plot_effects,
    plot_emotion_pca,
    plot_heatmap,
    plot_interval_lines,
    plot_layer_accuracy,
    plot_layer_similarity,
    plot_pair_effects,
    plot_patching_map,
    plot_preferences,
    plot_scenario_matrix,
    render_layers,
    render_tokens,
    table_html,
    view_from_circuitsvis,
)
from emolens.views._html import bundle_js, parse_circuitsvis, script_json

EVIL = "<script>alert(1)</script>"
EVIL_IMG = "<img/src=\"x\"/onerror=\"document.title='pwned'\">"
EMOTIONS = ["calm", "afraid", "happy", "sad"]


@pytest.fixture(scope="module")
def readout() -> Readout:
    """Two texts: row 0 right-padded (5 real tokens), row 1 left-padded (4 real tokens).

    ``scores_all[b, p, l, e] = 100 * p + 10 * l + e + 1`` (then zeroed on padding), so every
    shown value says where it came from.
    """
    b, p, n_layers, n_emo = 2, 6, 3, 4
    pos = torch.arange(p).view(1, p, 1, 1)
    lay = torch.arange(n_layers).view(1, 1, n_layers, 1)
    emo = torch.arange(n_emo).view(1, 1, 1, n_emo)
    scores = (100 * pos + 10 * lay + emo + 1).float().expand(b, p, n_layers, n_emo).clone()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    content = mask.clone()
    content[0, 0] = False
    content[1, 2] = False
    scores = scores * mask[:, :, None, None]
    toks = [["<|im_start|>", "Hello", EVIL, " world", EVIL_IMG],
            ["<|im_start|>", "I", " am", " calm"]]
    return Readout(scores, EMOTIONS, [4, 8, 12], toks, mask, content, torch.tensor([-1, 3]), 8)


# ------------------------------------------------------------------------ token views
def test_render_tokens_one_emotion(readout: Readout) -> None:
    view = render_tokens(readout, "afraid", layer=12, index=1)
    (comp,) = view.components
    assert comp.name == "ColoredTokens"
    # left padding: real positions 2..5; sink (position 2) blank; layer index 2, emotion 1
    assert comp.props["values"] == [0.0, 322.0, 422.0, 522.0]
    assert comp.props["tokens"] == ["&lt;|im_start|&gt;", "I", " am", " calm"]
    assert comp.props["maxValue"] == 522.0 and comp.props["minValue"] == -522.0
    assert "layer 12" in view.title


def test_render_tokens_multi_and_sink_modes(readout: Readout) -> None:
    view = render_tokens(readout)  # all emotions, default layer 8 (index 1), row 0
    (comp,) = view.components
    assert comp.name == "ColoredTokensMulti"
    assert comp.props["labels"] == EMOTIONS
    assert len(comp.props["tokens"]) == 5  # padding dropped
    assert comp.props["values"][0] == [0.0] * 4  # sink blank
    assert comp.props["values"][1] == [111.0, 112.0, 113.0, 114.0]
    shown = render_tokens(readout, ["sad", "calm"], sink="show").components[0]
    assert shown.props["labels"] == ["sad", "calm"]
    assert shown.props["values"][0] == [14.0, 11.0]
    dropped = render_tokens(readout, sink="drop").components[0]
    assert dropped.props["tokens"][0] == "Hello" and len(dropped.props["tokens"]) == 4
    two = render_tokens(readout, "calm", index=[0, 1])
    assert len(two.components) == 2 and two.labels[1].startswith("text 1 (chat")


def test_render_layers(readout: Readout) -> None:
    view = render_layers(readout, index=0)
    (comp,) = view.components
    assert comp.name == "TextNeuronActivations"
    acts = np.array(comp.props["activations"])
    assert acts.shape == (5, 3, 4)  # tokens x layers x emotions
    assert acts[3, 2, 1] == 322.0 and (acts[0] == 0).all()
    assert comp.props["firstDimensionLabels"] == ["4", "8", "12"]
    assert comp.props["secondDimensionLabels"] == EMOTIONS
    sub = render_layers(readout, index=[0, 1], emotions=["sad"], layers=[12]).components[0]
    assert [np.array(a).shape for a in sub.props["activations"]] == [(5, 1, 1), (4, 1, 1)]
    assert isinstance(sub.props["tokens"][0], list)


def test_bad_arguments_name_the_value(readout: Readout) -> None:
    with pytest.raises(InputError, match="did you mean 'calm'"):
        render_tokens(readout, "clam")
    with pytest.raises(InputError, match="layer 5 was not read"):
        render_tokens(readout, layer=5)
    with pytest.raises(InputError, match="row index 2"):
        render_layers(readout, index=2)
    with pytest.raises(InputError, match="sink must be"):
        render_tokens(readout, sink="hide")


def test_props_match_circuitsvis(readout: Readout) -> None:
    """Our props are exactly what circuitsvis's own Python functions would send."""
    import circuitsvis as cv

    ours = render_tokens(readout, "calm", sink="show").components[0]
    theirs = parse_circuitsvis(cv.tokens.colored_tokens(
        ours.props["tokens"], ours.props["values"], ours.props["minValue"],
        ours.props["maxValue"]))
    assert theirs is not None and (theirs.name, theirs.props) == (ours.name, ours.props)
    multi = render_tokens(readout).components[0]
    theirs = parse_circuitsvis(cv.tokens.colored_tokens_multi(
        multi.props["tokens"], torch.tensor(multi.props["values"]), multi.props["labels"]))
    assert theirs is not None and theirs.name == multi.name
    assert theirs.props["labels"] == multi.props["labels"]
    np.testing.assert_allclose(theirs.props["values"], multi.props["values"])
    layers = render_layers(readout).components[0]
    theirs = parse_circuitsvis(cv.activations.text_neuron_activations(
        layers.props["tokens"], np.array(layers.props["activations"]), "Layer", "Emotion",
        layers.props["firstDimensionLabels"], layers.props["secondDimensionLabels"]))
    assert theirs is not None and theirs.props == layers.props


def test_token_text_is_escaped_and_bundle_inlined(readout: Readout, tmp_path) -> None:
    path = render_tokens(readout, index=0).save(tmp_path / "view.html")
    page = path.read_text(encoding="utf-8")
    assert EVIL not in page and EVIL_IMG not in page and "<img/src" not in page
    # escaped twice: HTML entities for circuitsvis's innerHTML, \u escapes inside the script
    assert "\\u0026lt;script\\u0026gt;alert(1)" in page
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)  # no script loaded from anywhere
    assert "unpkg.com" not in page and "Content-Security-Policy" in page
    assert page.count("var CircuitsVis=") == 1
    assert bundle_js()[:2000] in page and bundle_js()[-2000:] in page
    assert [p.name for p in tmp_path.iterdir()] == ["view.html"]


def test_script_json_cannot_close_the_script() -> None:
    value = {"t": "</script><!-- \u2028 & >"}
    text = script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value
    assert not re.search(r"</script", bundle_js(), re.I)
    assert "sourceMappingURL" not in bundle_js()


def test_view_from_circuitsvis_and_repr() -> None:
    import circuitsvis as cv

    view = view_from_circuitsvis(cv.tokens.colored_tokens(["a", "b"], [1.0, -1.0]), "ab")
    assert view.components[0].name == "ColoredTokens"
    assert "var CircuitsVis=" in view._repr_html_()
    with pytest.raises(InputError, match="circuitsvis render"):
        view_from_circuitsvis("<div></div>")


# ------------------------------------------------------------------------------ figures
def _png(uri: str) -> bytes:
    assert uri.startswith("data:image/png;base64,")
    data = base64.b64decode(uri.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_figures_are_valid_images() -> None:
    em = ["calm", "afraid", "sad"]
    figs = [
        plot_layer_accuracy([0, 1, 2], {"mean-diff": [0.3, 0.7, 0.5]}, chance=1 / 3,
                            shuffled=[0.33, 0.3, 0.35], chosen=1),
        plot_emotion_pca(np.random.default_rng(0).normal(size=(3, 2)), em,
                         valence={"calm": 0.5, "sad": -0.8}, explained=[0.3, 0.2]),
        plot_heatmap(np.eye(3), em, em, center=0.0, title="h"),
        plot_cosine_matrix(torch.eye(3), em),
        plot_layer_similarity(np.eye(2), [4, 8]),
        plot_scenario_matrix(np.eye(3), em, em, zscore_columns=True),
        plot_dose_response([1, 10, 100], {"afraid": [0, 1, 2], "calm": [2, 1, 0]},
                           expected={"afraid": "up", "calm": "down"}, log_x=True,
                           intervals={"afraid": ([-1, 0, 1], [1, 2, 3])}),
        plot_effects(em, [0.1, -0.2, 0.0], [0.0, -0.3, -0.1], [0.2, -0.1, 0.1],
                     placebo=[0.0, 0.01, 0.0], placebo_ci_low=[-0.1] * 3,
                     placebo_ci_high=[0.1] * 3),
    ]
    for fig in figs:
        assert isinstance(fig, Figure)
    _png(figure_to_data_uri(figs[0], dpi=40))
    svg_uri = figure_to_data_uri(figs[2], "svg")
    assert svg_uri.startswith("data:image/svg+xml;base64,")
    assert b"<svg" in base64.b64decode(svg_uri.split(",", 1)[1])
    assert "<svg" in figure_to_svg(figs[3])


def test_figure_inputs_checked() -> None:
    m = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    assert diagonal_accuracy(m, ["a", "b", "c"], ["a", "b", "c"]) == (1 / 3, 1, 3)
    fig = plot_scenario_matrix(m, ["a", "b", "c"], ["a", "b", "c"])
    assert "diagonal accuracy 0.33 (1/3" in fig.axes[0].get_title()
    fig = plot_dose_response([1, 2, 3], {"calm": [3, 2, 1]}, expected={"calm": "up"})
    legend = fig.axes[0].get_legend()
    assert legend is not None and "✗" in legend.get_texts()[0].get_text()
    with pytest.raises(InputError, match="log_x"):
        plot_dose_response([0, 1], {"calm": [1, 2]}, log_x=True)
    with pytest.raises(InputError, match="3 values but there are 2 layers"):
        plot_layer_accuracy([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="expected direction"):
        plot_dose_response([1, 2], {"calm": [1, 2]}, expected={"calm": "sideways"})


# ------------------------------------------------------------------------------- causality
def _image_rows(fig: Figure) -> np.ndarray:
    return np.asarray(fig.axes[0].get_images()[0].get_array())


def test_causality_figures_draw_the_given_arrays() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    # patching map: layer 0 at the bottom, 3-D maps reduced by |max| over heads
    vals = np.array([[0.0, 1.0, 0.5], [0.2, -1.0, 0.0]])
    fig = plot_patching_map(vals, [3, 7], tokens=["a", "b", "c"], colorbar_label="x")
    assert np.allclose(_image_rows(fig), vals[::-1])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["7", "3"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
    by_head = np.stack([vals, -2 * vals], -1)
    assert np.allclose(_image_rows(plot_patching_map(by_head, [3, 7])), 2 * np.abs(vals)[::-1])
    # pair effects: one column per group, estimates as error bars
    fig = plot_pair_effects({"directions": [1.0, 2.0], "placebo": [0.1, -0.1, 0.0]},
                            {"directions": (1.5, 1.0, 2.0)})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["directions", "placebo"]
    points = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
    assert [len(c.get_offsets()) for c in points] == [2, 3]
    # component writes: NaN cells kept, layer 0 at the bottom
    grid = np.array([[1.0, np.nan, -1.0], [0.5, 0.2, 0.0]])
    img = _image_rows(plot_component_writes(grid, [0, 1], ["H0", "b_O", "MLP"]))
    assert np.allclose(img[1, [0, 2]], [1.0, -1.0]) and np.isnan(img[1, 1])
    # interval lines: one line per group, sorted by x; controls dashed
    fig = plot_interval_lines([0.1, 0.0, 0.0, 0.1], [0.6, 0.5, 0.5, 0.4],
                              [0.5, 0.4, 0.4, 0.3], [0.7, 0.6, 0.6, 0.5],
                              ["calm", "calm", "random", "random"], reference=0.5)
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() in ("calm", "random")]
    assert [ln.get_label() for ln in lines] == ["calm", "random"]
    assert list(lines[0].get_xdata()) == [0.0, 0.1] and list(lines[0].get_ydata()) == [0.5, 0.6]
    assert lines[1].get_linestyle() == "--"
    # preferences: three panels; only steered emotions (finite shift) in the third
    fig = plot_preferences(["a", "b", "a"], [10.0, -5.0, -5.0], ["calm", "sad", "joy"],
                           [0.3, -0.2, 0.1], elo_shift=[4.0, float("nan"), -2.0],
                           random_shift=0.5, across_r=0.9)
    assert len(fig.axes) == 3 and "(r = 0.90)" in fig.axes[2].get_title()
    assert len(fig.axes[2].collections[0].get_offsets()) == 2
    assert [p.get_width() for p in fig.axes[1].patches] == [-0.2, 0.1, 0.3]
    # dose panels: a panel per template, a line per expected emotion that has scores
    fig = plot_dose_panels(["t1"] * 6 + ["t2"] * 3, [1, 2, 4, 1, 2, 4, 1, 2, 4],
                           ["calm"] * 3 + ["sad"] * 3 + ["calm"] * 3,
                           [1, 2, 3, 3, 2, 1, 0, 0, 1],
                           [("t1", "calm", "up"), ("t1", "sad", "down"), ("t1", "joy", "up"),
                            ("t2", "calm", "down")])
    assert [len(a.get_lines()) for a in fig.axes] == [2, 1]
    z = fig.axes[0].get_lines()[0].get_ydata()
    assert np.allclose(z, [-1.2247, 0.0, 1.2247], atol=1e-3)     # z-scored
    assert "✗" in fig.axes[1].get_legend().get_texts()[0].get_text()  # rises, expected down
    assert plt.get_fignums() == before                  # nothing went through pyplot


def test_causality_figure_inputs_checked() -> None:
    with pytest.raises(InputError, match="values rows"):
        plot_patching_map(np.zeros((2, 3)), [0, 1, 2])
    with pytest.raises(InputError, match="2 values but there are 3 x values"):
        plot_interval_lines([0, 1, 2], [0, 1], [0, 1, 2], [0, 1, 2], ["a"] * 3)
    with pytest.raises(InputError, match="same values"):
        plot_dose_panels(["t"] * 4, [1, 2, 1, 3], ["a", "a", "b", "b"], [1, 2, 3, 4],
                         {"t": {"a": "up", "b": "up"}})
    with pytest.raises(InputError, match="triples"):
        plot_dose_panels(["t"], [1], ["a"], [1], [("t", "a")])


# ------------------------------------------------------------------------------- report
def _report(readout: Readout, title: str = "Run <1>") -> Report:
    fig = plot_layer_accuracy([0, 1], [0.4, 0.6], chance=0.25)
    rep = Report(title, meta={"model": EVIL}, intro="Intro with **bold**.")
    rep.add_section("tokens", "Token views", "What the probes read.", limits="Not causal.")
    rep.add_html(render_tokens(readout, "calm"), caption=EVIL)
    rep.add_html(render_tokens(readout))
    rep.add_html(render_layers(readout, index=[0, 1]))
    rep.add_section("figs", f"Figures {EVIL}", "Accuracy.")
    rep.add_figure(fig, caption="accuracy " + EVIL)
    rep.add_table(pd.DataFrame({"layer": [0, 1], "acc": [0.4, float("nan")], "note": [EVIL, ""]}),
                  "table")
    rep.add_text("- a point\n- `code <x>`")
    return rep


def test_report_is_self_contained_and_escaped(readout: Readout, tmp_path) -> None:
    path = _report(readout).save(tmp_path / "out" / "report.html")
    page = path.read_text(encoding="utf-8")
    assert page.count("var CircuitsVis=") == 1  # one bundle shared by three views
    assert page.count('class="emolens-cv"') == 3
    assert EVIL not in page and EVIL_IMG not in page and "<img/src" not in page
    assert html.escape(EVIL) in page  # caption, meta, section title, table cell
    assert "<title>Run &lt;1&gt;</title>" in page
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert page.count('<img src="data:image/png;base64,') == 1
    assert '<a href="#sec-tokens">Token views</a>' in page and 'id="sec-figs"' in page
    assert "What this shows" in page and "Not causal." in page
    assert "<code>code &lt;x&gt;</code>" in page and "<strong>bold</strong>" in page
    assert '<td class="num">–</td>' in page
    # every view has its own element id
    ids = re.findall(r'<div id="([^"]+)" class="emolens-cv"', page)
    assert len(ids) == len(set(ids)) == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def test_report_save_is_atomic(readout: Readout, tmp_path, monkeypatch) -> None:
    path = tmp_path / "report.html"
    _report(readout, "first").save(path)
    before = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Report, "_render_item", staticmethod(boom))
    with pytest.raises(RuntimeError, match="disk on fire"):
        _report(readout, "second").save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["report.html"]  # no temporary file left


def test_report_rules() -> None:
    rep = Report("r")
    with pytest.raises(InputError, match="add_section"):
        rep.add_text("orphan")
    rep.add_section("a", "A")
    with pytest.raises(InputError, match="already used"):
        rep.add_section("a", "again")
    with pytest.raises(InputError, match="section key"):
        rep.add_section("bad key", "B")
    with pytest.raises(InputError, match="network"):
        rep.add_html('<script src="https://cdn.example/x.js"></script>')
    with pytest.raises(InputError, match="network"):
        rep.add_html('<img src="//example.org/a.png">')
    with pytest.raises(InputError, match="Figure"):
        rep.add_figure("https://example.org/a.png")
    rep.add_html('<p>local <a href="https://example.org">link</a></p>')
    rep.add_figure(figure_to_data_uri(plot_heatmap([[1.0]]), dpi=20), "pre-rendered")
    page = rep.to_html()
    assert "var CircuitsVis=" not in page  # no token view, no bundle
    assert rep.sections == ["a"]


def test_markdown_and_tables_escape() -> None:
    out = markdown_lite("<b>x</b> **y** *z*\n\n1. one\n2. two\n\n[ok](https://a.b/c?d=1&e=2) "
                        "[bad](javascript:alert(1))")
    assert "&lt;b&gt;x&lt;/b&gt; <strong>y</strong> <em>z</em>" in out
    assert "<ol><li>one</li><li>two</li></ol>" in out
    assert '<a href="https://a.b/c?d=1&amp;e=2">ok</a>' in out
    assert "javascript:" in out and 'href="javascript' not in out
    t = table_html([{"a": 1, "b": 0.123456}, {"a": 2, "c": EVIL}], max_rows=1)
    assert "<th>c</th>" in t and "0.1235" in t and "first 1 of 2 rows" in t
    assert EVIL not in table_html({"x": [EVIL]})
    with pytest.raises(InputError, match="different lengths"):
        table_html({"x": [1], "y": [1, 2]})
    assert isinstance(TokenView([]).to_html(), str)
