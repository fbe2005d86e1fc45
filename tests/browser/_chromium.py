"""Shared helpers of the browser tests: where Chromium is, a probe script, and a runner."""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("EMOLENS_CHROMIUM", "/usr/bin/chromium")

# Placed before the views: records script errors, then after 2 s (virtual time) writes what it
# sees into <body data-probe=...>, which --dump-dom returns.
PROBE = """<script>
window.__errs = [];
window.addEventListener('error', function (e) { window.__errs.push(String(e.message)); });
setTimeout(function () {
  var views = document.querySelectorAll('.emolens-cv'), rendered = 0, ok = 0;
  views.forEach(function (v) { if (v.children.length > 0) rendered++; });
  var imgs = document.querySelectorAll('figure img');
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0) ok++; });
  document.body.setAttribute('data-probe', JSON.stringify({views: views.length,
    rendered: rendered, images: imgs.length, images_ok: ok, errors: window.__errs,
    title: document.title}));
}, 2000);
</script>"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile.mkdir(parents=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def probe(page: Path, profile: Path) -> tuple[dict[str, Any], str, str]:
    """Open ``page`` (which must contain ``PROBE``) with --dump-dom; return the probe's report,
    the DOM without scripts, and Chromium's log."""
    run = chromium(profile, "--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-3000:]
    m = re.search(r'data-probe="([^"]*)"', run.stdout)
    assert m, "the probe never ran: scripts are blocked or the page did not load\n" + \
        run.stderr[-3000:]
    body = re.sub(r"<script\b.*?</script>", "", run.stdout, flags=re.S | re.I)
    return json.loads(html.unescape(m.group(1))), body, run.stderr
