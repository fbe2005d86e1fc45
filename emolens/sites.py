"""Sites: the hook points where emotion directions live, stored by exact hook name.

A site is one TransformerLens hook point (``blocks.20.hook_resid_post``) plus its layer. Users may
write a layer number (meaning the residual stream *after* block ``l``, i.e. ``hook_resid_post``),
a negative layer (counted from the end), a short name with a layer (``("resid_pre", 3)``), or any
hook name the model exposes; ``resolve_site`` turns each into one canonical ``Site``.

Note that ``blocks.{l}.hook_resid_post`` and ``blocks.{l+1}.hook_resid_pre`` are the same point,
and that HF ``hidden_states[l]`` is the output of block ``l - 1``: store hook names, not integers.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emolens.errors import SiteError, unknown_name_message

if TYPE_CHECKING:
    from emolens.compat import Model

DEFAULT_HOOK = "resid_post"
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
_SHORT = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True, order=True)
class Site:
    """One hook point: ``layer`` (block index, or -1 for hooks outside the blocks) and ``name``."""

    layer: int
    name: str

    @property
    def hook_type(self) -> str:
        return self.name.rsplit(".", 1)[-1].removeprefix("hook_")

    def __str__(self) -> str:
        return self.name


def _layer_of(name: str) -> int:
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else -1


def _valid_hooks(model: Model) -> list[str]:
    hd = getattr(model, "hook_dict", None)
    return list(hd.keys()) if hd is not None else []


def _check_layer(layer: int, n_layers: int, spec: Any) -> int:
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise SiteError(f"layer must be an int, got {layer!r} ({type(layer).__name__})")
    if layer < 0:
        layer += n_layers
    if not 0 <= layer < n_layers:
        raise SiteError(
            f"layer {spec!r} is out of range for a model with {n_layers} layers; "
            f"valid layers are 0..{n_layers - 1} (or -{n_layers}..-1 from the end)"
        )
    return layer


def resolve_site(model: Model, spec: int | str | tuple[str, int] | Site, *,
                 hook: str = DEFAULT_HOOK) -> Site:
    """Resolve a layer number, ``(short_name, layer)``, hook name or ``Site`` to a ``Site``.

    ``hook`` is the hook type used when ``spec`` is a bare layer number (default: the residual
    stream after the block, ``hook_resid_post``).
    """
    n_layers = int(model.cfg.n_layers)
    if isinstance(spec, Site):
        spec = spec.name
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], str):
            raise SiteError(f"site tuple must be (hook_type, layer) such as ('resid_pre', 3), "
                            f"got {spec!r}; pass several layers as a list, e.g. [3, 5]")
        short, layer = spec
        layer = _check_layer(layer, n_layers, spec)
        name = _short_to_name(short, layer)
    elif isinstance(spec, int) and not isinstance(spec, bool):
        layer = _check_layer(spec, n_layers, spec)
        name = _short_to_name(hook, layer)
    elif isinstance(spec, str):
        name = spec
    else:
        raise SiteError(
            f"cannot use {spec!r} as a site: pass a layer number, a hook name such as "
            f"'blocks.3.hook_resid_post', or a tuple such as ('resid_pre', 3)"
        )
    valid = _valid_hooks(model)
    if valid and name not in valid:
        layer = _layer_of(name)
        if layer >= n_layers:
            raise SiteError(
                f"hook {name!r} names layer {layer}, out of range for a model with "
                f"{n_layers} layers (valid layers 0..{n_layers - 1})"
            )
        raise SiteError(unknown_name_message(
            "hook", name, sorted(set(valid), key=lambda v: (_layer_of(v), v)),
            "use a name from model.hook_dict"))
    return Site(_layer_of(name), name)


def _short_to_name(short: str, layer: int) -> str:
    short = short.removeprefix("hook_")
    if short not in _SHORT:
        raise SiteError(unknown_name_message("hook type", short, _SHORT))
    return f"blocks.{layer}.hook_{short}"


def resolve_sites(model: Model, specs: int | str | Site | Iterable[Any] | None, *,
                  hook: str = DEFAULT_HOOK) -> list[Site]:
    """Resolve many site specs (``None`` means every layer) into sorted, unique ``Site``s."""
    if specs is None:
        specs = range(int(model.cfg.n_layers))
    if isinstance(specs, tuple) and len(specs) == 2 and isinstance(specs[0], str):
        specs = [specs]  # one (hook_type, layer) pair; any other tuple is a sequence of specs
    elif isinstance(specs, (int, str, Site)):
        specs = [specs]
    elif not isinstance(specs, Iterable):
        raise SiteError(f"cannot use {specs!r} as sites: pass a layer, a hook name, a list of "
                        "them, or None for every layer")
    sites = sorted({resolve_site(model, s, hook=hook) for s in specs})
    if not sites:
        raise SiteError("no sites given: pass at least one layer or hook name, or None for all")
    return sites


def require_block_sites(sites: Sequence[Site]) -> list[Site]:
    """Refuse sites that are not a block's d_model-wide hook (``blocks.{l}.hook_resid_pre``,
    ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``): directions live in the residual
    basis, so embeddings, attention patterns or per-head hooks cannot hold one."""
    for s in sites:
        if s.layer < 0 or s.hook_type not in _SHORT or s.name != f"blocks.{s.layer}.hook_{s.hook_type}":
            raise SiteError(
                f"site {s.name!r} is not a block's residual-width hook; use a layer number or "
                f"one of blocks.<layer>.hook_{{{', '.join(_SHORT)}}}")
    return list(sites)


def deepest_layer(sites: Sequence[Site]) -> int:
    """The deepest block a forward pass must run to reach all ``sites``."""
    return max(s.layer for s in sites)
