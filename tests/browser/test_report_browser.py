"""The saved report in a real browser: headless Chromium, no network, no extra Python package.

Builds a small report (token views of all three kinds, a PNG and an SVG figure) and opens it
with Chromium's ``--dump-dom`` after 5 s of virtual time, then checks that every circuitsvis
component rendered, the figures decoded, a hostile token shows as text and never runs, and
nothing was refused by the page's Content-Security-Policy (which would mean something tried to
load). A screenshot and the page are kept under ``test-artifacts/`` (git-ignored).

Needs Chromium at ``/usr/bin/chromium`` (Debian: ``apt-get install -y chromium``) or at the
path in ``EMOLENS_CHROMIUM``; skipped otherwise.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _chromium import CHROMIUM, PROBE
from _chromium import chromium as _chromium

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("EMOLENS_TEST_ARTIFACTS", ROOT / "test-artifacts"))
HOSTILE = "<img/src=\"x\"/onerror=\"document.title='pwned'\">"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
                       reason=f"headless Chromium not found at {CHROMIUM}: install it "
                              "(apt-get install -y chromium) or set EMOLENS_CHROMIUM"),
]

def _readout():
    from emolens.readout.readout import Readout

    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 6, 3, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    content = mask.clone()
    content[:, 0] = False
    toks = [["<|im_start|>", "Hello", "<script>alert(1)</script>", " world", HOSTILE],
            ["<|im_start|>", "I", " feel", " so", " calm", "."]]
    return Readout(scores * mask[:, :, None, None], ["calm", "afraid", "happy", "sad"],
                   [4, 8, 12], toks, mask, content, torch.tensor([-1, -1]), 8)


def test_report_renders_offline_in_chromium(tmp_path: Path) -> None:
    from emolens.views import (
        Report,
        plot_emotion_pca,
        plot_layer_accuracy,
        render_layers,
        render_tokens,
    )

    ro = _readout()
    rep = Report("Browser check", meta={"model": "hand-built readout"})
    rep.add_section("tokens", "Token views", "Scores over tokens.", limits="Random numbers.")
    rep.add_html(PROBE)
    rep.add_html(render_tokens(ro, "calm", index=[0, 1]), "calm")
    rep.add_html(render_tokens(ro), "all emotions")
    rep.add_html(render_layers(ro, index=[0, 1]), "layers x emotions")
    rep.add_section("figures", "Figures", "Two figures.")
    rep.add_figure(plot_layer_accuracy([4, 8, 12], [0.3, 0.7, 0.6], chance=0.25), "png")
    rep.add_figure(plot_emotion_pca(np.random.default_rng(0).normal(size=(4, 2)),
                                    ro.emotions, valence=[0.5, -0.7, 0.9, -0.8]), "svg",
                   fmt="svg")
    page = rep.save(tmp_path / "report.html")
    n_components = 4  # 2 (one per row) + 1 + 1
    url = page.as_uri()

    run = _chromium(tmp_path / "profile-dom", "--dump-dom", url)
    assert run.returncode == 0, run.stderr[-3000:]
    dom = run.stdout
    probe_m = re.search(r'data-probe="([^"]*)"', dom)
    assert probe_m, "the probe never ran: scripts are blocked or the page did not load\n" + \
        run.stderr[-3000:]
    probe = json.loads(html.unescape(probe_m.group(1)))
    assert probe["errors"] == [], probe
    assert probe["views"] == probe["rendered"] == n_components, probe
    assert probe["images"] == probe["images_ok"] == 2, probe
    assert probe["title"] == "Browser check"  # the hostile token's onerror never ran

    body = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S | re.I)
    assert "view failed to render" not in body and "bundle not loaded" not in body
    # rendered token spans (ColoredTokens gives each token a coloured inline-block span)
    assert re.search(r'<span style="[^"]*background-color[^"]*">Hello</span>', body)
    assert re.search(r'<span style="[^"]*">&nbsp;calm</span>', body)
    # the hostile tokens are on the page as text, not as elements
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "&lt;img/src=\"x\"/onerror=" in body
    assert not re.search(r"<img[^>]*onerror", body)
    log = run.stderr
    assert "Refused to" not in log, "the CSP blocked a load: something tried the network"
    assert "Uncaught" not in log, log[-3000:]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-browser.png"
    shot.unlink(missing_ok=True)
    run = _chromium(tmp_path / "profile-shot", "--hide-scrollbars", "--window-size=1280,2600",
                    f"--screenshot={shot}", url)
    assert run.returncode == 0, run.stderr[-3000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    shutil.copyfile(page, ARTIFACTS / "report-browser.html")
