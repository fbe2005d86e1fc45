"""HTML plumbing shared by the views: the circuitsvis bundle, safe script data, components.

circuitsvis (1.43) renders React components from one JavaScript bundle
(``circuitsvis/dist/cdn/iife.js``, ~1.3 MB, defines the global ``CircuitsVis``). Its own
``RenderedHTML`` pastes that bundle into every render and, when it finds a network, prefers an
``import`` from unpkg.com; it also puts token strings into the page with
``dangerouslySetInnerHTML`` and writes the props into a ``<script>`` without escaping ``</``.
Here instead:

- the bundle is read from the installed package and inlined as one classic ``<script>``
  (``</script`` inside it is written ``<\\/script``, the source-map comment is dropped), so a
  page opens with no network and several components share one copy;
- props are JSON with ``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\uXXXX`` escapes, so no
  value can close the script element;
- token strings are HTML-escaped before they reach circuitsvis (see ``emolens.views.tokens``).
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emolens.errors import EmolensError, FormatError, InputError

BUNDLE_MARKER = "emolens-circuitsvis-bundle"
#: Content-Security-Policy of every page emolens writes: inline scripts and styles, data-URI
#: images and fonts, nothing loaded from anywhere else. ``form-action`` and ``base-uri`` do not
#: fall back to ``default-src``: without them Chromium submitted a ``<form action=https://...>``
#: under this policy (checked headless, Chromium, December 2026). No CSP directive stops a
#: ``<meta http-equiv=refresh>`` navigation: ``find_remote_reference`` refuses those.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data:; font-src data:; form-action 'none'; base-uri 'none'")
CSP_META = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
_ID_OK = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def bundle_path() -> Path:
    """Path of circuitsvis's browser bundle inside the installed package."""
    import circuitsvis

    return Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"


@functools.lru_cache(maxsize=1)
def bundle_js() -> str:
    """circuitsvis's JavaScript bundle, made safe to inline inside ``<script>...</script>``."""
    path = bundle_path()
    try:
        src = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EmolensError(
            f"circuitsvis's browser bundle is missing at {path}: reinstall circuitsvis>=1.43 "
            "(pip install --force-reinstall 'circuitsvis>=1.43')") from exc
    if "CircuitsVis" not in src:
        raise FormatError(f"{path} does not look like circuitsvis's bundle (no 'CircuitsVis')")
    src = re.sub(r"^//# sourceMappingURL=.*$", "", src, flags=re.M)
    src = re.sub(r"</(script)", r"<\\/\1", src, flags=re.I)
    return src.replace("<!--", "<\\!--")


def bundle_script() -> str:
    """One ``<script>`` element that defines the global ``CircuitsVis`` (no network)."""
    return f'<script id="{BUNDLE_MARKER}">\n{bundle_js()}\n</script>'


def script_json(obj: Any) -> str:
    """JSON that can sit inside a ``<script>`` element: nothing in it can end the element."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


@dataclass
class Component:
    """One circuitsvis React component: its name in the bundle and its props (JSON-able)."""

    name: str
    props: dict[str, Any] = field(default_factory=dict)

    def fragment(self, element_id: str) -> str:
        """A ``<div>`` plus the script that renders into it; needs the bundle earlier on the page."""
        if not _ID_OK.match(element_id):
            raise InputError(f"element id {element_id!r} must start with a letter and hold only "
                             "letters, digits, '-' and '_'")
        if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", self.name):
            raise InputError(f"component name {self.name!r} is not an identifier")
        return (
            f'<div id="{element_id}" class="emolens-cv" data-component="{self.name}"></div>\n'
            "<script>(function(){"
            f'var id={script_json(element_id)};var el=document.getElementById(id);'
            'if(!window.CircuitsVis){el.textContent="circuitsvis bundle not loaded on this page";'
            "return;}"
            f"try{{CircuitsVis.render(id,CircuitsVis[{script_json(self.name)}],"
            f"{script_json(self.props)});}}"
            'catch(e){el.textContent="view failed to render: "+e;}'
            "})();</script>")


_CDN_RENDER = re.compile(
    r'import \{ render, (?P<name>[A-Za-z0-9_]+) \} from "[^"]*";\s*'
    r'render\(\s*"[^"]*",\s*(?P=name),\s*(?P<props>\{.*\})\s*\)\s*</script>\s*$', re.S)


def parse_circuitsvis(rendered: Any) -> Component | None:
    """The component of a circuitsvis ``RenderedHTML`` (from its CDN source), or ``None``.

    Lets any circuitsvis render (attention patterns, top-k tokens, ...) share the page's one
    inlined bundle. ``None`` when the source is not in the format circuitsvis 1.43 writes.
    """
    src = getattr(rendered, "cdn_src", None)
    if not isinstance(src, str):
        return None
    m = _CDN_RENDER.search(src)
    if m is None:
        return None
    try:
        props = json.loads(m.group("props"))
    except json.JSONDecodeError:
        return None
    if not isinstance(props, Mapping):
        return None
    return Component(m.group("name"), dict(props))


_URL = r"""\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//"""  # http://, https://, ftp://, //host ...
_REMOTE = re.compile(
    r"""\b(?:src|poster|background|data|action|formaction|ping|codebase|archive|manifest|"""
    r"""xlink:href|lowsrc|dynsrc|longdesc)\s*=""" + _URL
    + r"""|<(?:link|image|use|feimage|base|object|embed|iframe|form|a\b[^>]*\bping)\b[^>]*"""
      r"""\bhref\s*=""" + _URL
    + r"""|\bsrcset\s*=\s*["']?[^"'>]*//"""  # any candidate of a srcset
    + r"""|\bimport\b[^;\n]*?["'](?:[a-z][a-z0-9+.-]*:)?//"""
    + r"""|\burl\(""" + _URL
    + r"""|\bimage-set\([^)]*?//"""
    + r"""|@import\b"""
    + r"""|<meta\b[^>]*\bhttp-equiv\s*=\s*["']?\s*refresh""", re.I)


def _decoded(fragment: str) -> str:
    """``fragment`` with HTML character references and CSS escapes decoded, so that
    ``&#104;ttps://`` or ``\\68 ttps://`` cannot hide a URL from the check."""
    import html as _h

    text = _h.unescape(_h.unescape(fragment))  # twice: &amp;#47; -> &#47; -> /
    return re.sub(r"\\([0-9a-fA-F]{1,6})\s?", lambda m: chr(int(m.group(1), 16))
                  if int(m.group(1), 16) < 0x110000 else "", text)


def find_remote_reference(fragment: str) -> str | None:
    """The first thing in ``fragment`` that would (or could) load from the network, or ``None``.

    Catches URL-bearing attributes (``src``, ``srcset``, ``poster``, ``<object data>``,
    ``<form action>``, ``formaction``, ``ping``, ``background``, ``<link|image|use|base|
    iframe href>``, ...) pointing at ``scheme://`` or ``//``, ES ``import``, CSS ``url()`` /
    ``image-set()`` / ``@import``, and ``<meta http-equiv=refresh>``, after decoding HTML
    character references and CSS escapes. Plain ``<a href>`` links are allowed (they load
    nothing until clicked). The report's CSP blocks these loads as well; refusing them here
    keeps a page that depends on them from being written at all.
    """
    fragment = _decoded(fragment)
    m = _REMOTE.search(fragment)
    return None if m is None else fragment[max(0, m.start() - 20):m.end() + 40]
