"""Steering: add, project out or clamp directions in the residual stream while the model runs.

Units. A strength ``s`` for emotion ``e`` at layer ``l`` adds
``s * registry.mean_norm(l) * registry.vector(e, l)``: strengths are fractions of the mean
residual-stream norm at that site (the study's unit; 0.025-0.1 changes behaviour, up to 0.5 for
text demos). Several emotions at once add up. ``clamp`` values are in the same unit (the
projection on the unit direction is set to ``value * mean_norm``).

Operations (``op``), with ``r`` the unit direction(s) at the site:

- ``"add"``:        ``x <- x + sum_e s_e * mean_norm * r_e``
- ``"ablate"``:     ``x <- x - Q Q^T x``, ``Q`` an orthonormal basis of the named directions
  (one direction: ``x - (x.r) r``); the strengths are ignored. ``layers="all"`` ablates at
  every layer of the registry (directional ablation, Arditi et al. 2024); pass
  ``direction_layer=`` to ablate one layer's direction everywhere.
- ``"clamp"``:      set ``r_e . x = c_e * mean_norm`` for every named direction at once
  (solved jointly when the directions are not orthogonal).
- ``"ablate_add"``: project the named directions out, then add ``sum_e s_e * mean_norm * r_e``
  (for one direction the same as ``clamp``).

Positions: see ``emolens.steering.positions`` and docs/steering.md. Rows: ``rows=[i, ...]`` (or a
boolean ``[batch]`` mask) limits an intervention to those rows of the batch, the others stay
bit-identical to an unsteered run; several steerings on disjoint rows run one batch with a
different intervention per row (how ``sweep`` runs every strength in one ``generate`` call).
Hooks are plain TransformerLens hook functions on the registry's sites
(``blocks.{l}.hook_resid_post``); they are added to the hook points directly and removed by
handle, so hooks the user installed before or after are never touched, and ``with steer(...)``
removes them even when the body raises.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from numbers import Real
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float

from emolens.errors import EmolensError, SteeringError, SteeringWarning, unknown_name_message
from emolens.runtime import model_device
from emolens.steering.positions import (
    PositionPolicy,
    PositionTracker,
    parse_positions,
    parse_rows,
    row_index,
)

if TYPE_CHECKING:
    from emolens.compat import Model

OPS = ("add", "ablate", "clamp", "ablate_add")
ABSURD_STRENGTH = 100.0  # |strength| above this many mean residual norms warns
VECTOR_NAME = "vector"


# ---------------------------------------------------------------------------- direction sources
class _VectorSource:
    """Raw user directions (name -> [d_model] tensor) with the registry lookup surface.

    ``scale=None``: vectors are used as given (``add`` adds ``strength * vector``; ``clamp``
    values are absolute). ``scale=x``: vectors are normalised and ``x`` plays the part of the
    registry's mean norm (``add`` adds ``strength * x * unit``).
    """

    def __init__(self, vectors: Mapping[str, torch.Tensor], scale: float | int | None):
        if not vectors:
            raise SteeringError("no direction given: pass a registry, a [d_model] tensor or a "
                                "mapping name -> [d_model] tensor")
        self._vecs: dict[str, torch.Tensor] = {}
        d = None
        for name, v in vectors.items():
            if not isinstance(v, torch.Tensor):
                raise SteeringError(f"direction {name!r} is a {type(v).__name__}, not a tensor")
            v = v.detach().to(torch.float32).cpu()
            if v.ndim != 1:
                raise SteeringError(f"direction {name!r} has shape {tuple(v.shape)}; pass a "
                                    "1-D [d_model] tensor")
            if d is not None and v.shape[0] != d:
                raise SteeringError(f"direction {name!r} has {v.shape[0]} dims, others {d}")
            d = int(v.shape[0])
            if not bool(torch.isfinite(v).all()) or float(v.norm()) == 0.0:
                raise SteeringError(f"direction {name!r} is zero or contains NaN/inf")
            self._vecs[str(name)] = v
        if scale is not None and (not math.isfinite(float(scale)) or float(scale) <= 0):
            raise SteeringError(f"scale={scale!r} must be a positive finite number (e.g. the mean "
                                "residual norm at the site, from measure_mean_norm)")
        self.scale = None if scale is None else float(scale)
        assert d is not None
        self.d_model = d
        self.emotions = list(self._vecs)

    def unit(self, name: str) -> torch.Tensor:
        v = self._vecs[name]
        return v / v.norm()

    def add_vector(self, name: str) -> torch.Tensor:
        """The vector one unit of strength adds (before the strength)."""
        if self.scale is None:
            return self._vecs[name].clone()
        return self.unit(name) * self.scale

    def unit_scale(self) -> float:
        return 1.0 if self.scale is None else self.scale


def _is_registry(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("vector", "mean_norm", "site", "emotions", "layers"))


# ---------------------------------------------------------------------------- per-site edit
@dataclass
class SiteEdit:
    """The change made at one hook point (tensors in float32 on the CPU; copies are cached per
    device and dtype). ``basis``: orthonormal rows spanning the directions to project out
    (ablate, ablate_add); ``dirs``/``targets``: unit rows and absolute projection targets
    (clamp); ``delta``: the vector added (add, ablate_add)."""

    hook_name: str
    layer: int
    op: str
    delta: Float[torch.Tensor, " d_model"] | None = None
    basis: Float[torch.Tensor, "rank d_model"] | None = None
    dirs: Float[torch.Tensor, "k d_model"] | None = None
    targets: Float[torch.Tensor, " k"] | None = None
    _gram_inv: torch.Tensor | None = None
    _on: dict[Any, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dirs is not None:
            self._gram_inv = torch.linalg.inv(self.dirs.double() @ self.dirs.double().T).float()

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        key = (device, dtype)
        got = self._on.get(key)
        if got is None:
            got = {k: v.to(device=device, dtype=dtype) for k, v in (
                ("delta", self.delta), ("basis", self.basis), ("dirs", self.dirs),
                ("targets", self.targets), ("gram_inv", self._gram_inv)) if v is not None}
            self._on[key] = got
        return got

    def edit(self, x: Float[torch.Tensor, "*batch d_model"]
             ) -> Float[torch.Tensor, "*batch d_model"]:
        """The edited activation at every position (selection is applied by the caller)."""
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        t = self._tensors(work.device, work.dtype)
        if self.op == "add":
            return (work + t["delta"]).to(x.dtype)
        if self.op in ("ablate", "ablate_add"):
            q = t["basis"]
            y = work - (work @ q.T) @ q
            y = y - (y @ q.T) @ q  # second pass: leaves |x.r| at float rounding of |x|
            if self.op == "ablate_add":
                y = y + t["delta"]
            return y.to(x.dtype)
        if self.op == "clamp":
            r, c, g = t["dirs"], t["targets"], t["gram_inv"]
            y = work + ((c - work @ r.T) @ g) @ r
            y = y + ((c - y @ r.T) @ g) @ r
            return y.to(x.dtype)
        raise SteeringError(f"unknown op {self.op!r}")  # pragma: no cover


# ---------------------------------------------------------------------------- Steering
@dataclass(frozen=True, eq=False)
class Steering:
    """One intervention: directions, strengths, sites, operation and positions.

    Args:
        source: an ``EmotionRegistry`` (or any object with its lookup surface), a raw
            ``[d_model]`` tensor, or a mapping ``name -> [d_model]`` tensor of user directions.
        spec: ``{emotion: strength}`` (several at once add up); for a raw tensor a number;
            for ``"ablate"`` also a name or a list of names. Strengths are in units of the
            site's mean residual norm (``scale`` for raw vectors, see below).
        layer: one layer (int, negative from the end, or a hook name); default: the
            registry's ``default_layer``. ``layers``: several layers, or ``"all"`` (every
            registry layer; every model layer for raw vectors). Give one or the other.
        positions: ``"all"`` | ``"prompt"`` | ``"generated"`` | list of int indices (from each
            row's first real token; negative: back from the end of the prompt) | boolean mask
            ``[batch, pos]`` over columns of the padded sequence.
        op: ``"add"`` | ``"ablate"`` | ``"clamp"`` | ``"ablate_add"``.
        scale: raw vectors only. ``None``: the vector is added as given (``strength`` is a plain
            multiplier); a number: the vector is normalised and ``strength * scale`` is added
            (pass the site's mean residual norm to get registry units).
        direction_layer: use this layer's direction at every steered site (registry only).
        strict: passed to ``registry.check_model`` (id and weight processing must match).
        rows: ``None`` (every row of the batch) or the batch rows to change: indices (ints
            ``>= 0``) or a boolean ``[batch]`` mask. Other rows are left bit-identical to an
            unsteered run (whatever ``op`` and ``positions``); an index outside the batch the
            model runs raises ``SteeringError`` at run time. Steerings on disjoint rows can be
            active together: one batch, a different intervention per row.
    """

    source: Any
    spec: Any
    layer: int | str | None = None
    layers: Any = None
    positions: Any = "all"
    op: str = "add"
    scale: float | int | None = None
    direction_layer: int | None = None
    strict: bool = True
    rows: Any = None
    _policy: PositionPolicy = field(init=False, repr=False)
    _rows: tuple[int, ...] | torch.Tensor | None = field(init=False, repr=False)
    _strengths: dict[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.op, str) or self.op not in OPS:
            raise SteeringError(unknown_name_message(
                "op", self.op, OPS, "add: push along the direction; ablate: project it out; "
                "clamp: set its projection; ablate_add: project out then add"))
        object.__setattr__(self, "_policy", parse_positions(self.positions))
        object.__setattr__(self, "_rows", parse_rows(self.rows))
        object.__setattr__(self, "_strengths", self._parse_spec())
        if self.layer is not None and self.layers is not None:
            raise SteeringError(f"give layer= or layers=, not both (got layer={self.layer!r}, "
                                f"layers={self.layers!r})")

    # -- validation
    def _source_names(self) -> list[str] | None:
        if _is_registry(self.source):
            return list(self.source.emotions)
        if isinstance(self.source, torch.Tensor):
            return [VECTOR_NAME]
        if isinstance(self.source, Mapping):
            return [str(k) for k in self.source]
        raise SteeringError(
            f"cannot steer with a {type(self.source).__name__}: pass an EmotionRegistry, a "
            "[d_model] tensor, or a mapping name -> [d_model] tensor")

    def _parse_spec(self) -> dict[str, float]:
        spec = self.spec
        names = self._source_names()
        assert names is not None
        family = getattr(self.source, "family", "direction") if _is_registry(self.source) else "direction"
        if isinstance(spec, Real) and not isinstance(spec, bool):
            if len(names) != 1:
                raise SteeringError(
                    f"a bare strength ({spec!r}) needs a single direction; this source has "
                    f"{len(names)}: give {{name: strength}}, e.g. {{{names[0]!r}: {spec!r}}}")
            spec = {names[0]: spec}
        elif isinstance(spec, str):
            if self.op != "ablate":
                raise SteeringError(
                    f"spec {spec!r} gives no strength; for op={self.op!r} pass "
                    f"{{{spec!r}: strength}} (strength in units of the mean residual norm)")
            spec = {spec: 1.0}
        elif isinstance(spec, Sequence) and not isinstance(spec, (bytes, Mapping)):
            if self.op != "ablate" or not all(isinstance(s, str) for s in spec):
                raise SteeringError(
                    f"a list spec ({list(spec)!r}) only works with op='ablate' and names; pass "
                    "{name: strength} for other operations")
            spec = {s: 1.0 for s in spec}
        if not isinstance(spec, Mapping) or not spec:
            raise SteeringError(
                f"spec must be a non-empty mapping {{{family}: strength}} such as "
                f"{{'calm': 0.05}}, got {spec!r}")
        out: dict[str, float] = {}
        reg_source = _is_registry(self.source)
        for name, value in spec.items():
            if not isinstance(name, str) or name not in names:
                raise SteeringError(unknown_name_message(
                    family, name, names, "steer only with directions the source holds"))
            if isinstance(value, bool) or not isinstance(value, Real):
                raise SteeringError(
                    f"strength for {name!r} is {value!r} ({type(value).__name__}); strengths are "
                    "numbers in units of the mean residual norm (e.g. 0.05)")
            try:
                fvalue = float(value)
            except OverflowError:
                fvalue = math.inf
            if not math.isfinite(fvalue):
                try:
                    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                except ValueError:  # an int beyond Python's str conversion limit
                    shown = "an integer of more than 4300 digits"
                raise SteeringError(
                    f"strength for {name!r} is {shown}; strengths must be finite numbers "
                    "(units of the mean residual norm; typical 0.025-0.5)")
            if abs(fvalue) > ABSURD_STRENGTH and (self.scale is not None or reg_source):
                warnings.warn(
                    f"strength {fvalue:g} for {name!r} is more than {ABSURD_STRENGTH:g} times "
                    "the mean residual norm (typical 0.025-0.5): the steered residual swamps "
                    "the model's own and the output degenerates (constant or NaN logits)",
                    SteeringWarning, stacklevel=4)
            out[name] = fvalue
        return out

    @property
    def strengths(self) -> dict[str, float]:
        return dict(self._strengths)

    @property
    def policy(self) -> PositionPolicy:
        return self._policy

    @property
    def row_selection(self) -> tuple[int, ...] | Bool[torch.Tensor, " batch"] | None:
        """The validated ``rows``: None (every row), sorted unique indices, or a bool mask."""
        return self._rows

    def with_rows(self, rows: Any) -> Steering:
        """The same intervention limited to ``rows`` of the batch (see ``rows``)."""
        return replace(self, rows=rows)

    # -- resolution against a model
    def _layer_list(self, model: Model) -> list[Any]:
        reg = _is_registry(self.source)
        if self.layers is None:
            if self.layer is not None:
                return [self.layer]
            if reg:
                return [self.source.default_layer]
            raise SteeringError(
                "a raw vector has no default layer: pass layer= (e.g. layer=20 for "
                "blocks.20.hook_resid_post) or layers=[...]")
        if isinstance(self.layers, str):
            if self.layers != "all":
                raise SteeringError(f"layers={self.layers!r}: pass 'all' or a list of layers")
            return list(self.source.layers) if reg else list(range(int(model.cfg.n_layers)))
        if isinstance(self.layers, (int, Sequence)) and not isinstance(self.layers, bool):
            items = [self.layers] if isinstance(self.layers, int) else list(self.layers)
            if not items:
                raise SteeringError("layers=[] names no layer; pass at least one or 'all'")
            return items
        raise SteeringError(f"layers={self.layers!r} is not a list of layers or 'all'")

    def site_edits(self, model: Model) -> list[SiteEdit]:
        """Resolve sites, directions and units for ``model`` (validating against it)."""
        d_model = int(model.cfg.d_model)
        edits: list[SiteEdit] = []
        reg = _is_registry(self.source)
        if reg:
            self.source.check_model(model, strict=self.strict)
            src = None
        else:
            vecs = ({VECTOR_NAME: self.source} if isinstance(self.source, torch.Tensor)
                    else dict(self.source))
            src = _VectorSource(vecs, self.scale)
            if src.d_model != d_model:
                raise SteeringError(f"the direction has {src.d_model} dims but the model's d_model "
                                    f"is {d_model}")
        seen: set[str] = set()
        for spec_layer in self._layer_list(model):
            if reg:
                try:
                    site = self.source.site(spec_layer)
                    norm = float(self.source.mean_norm(spec_layer))
                    dl = spec_layer if self.direction_layer is None else self.direction_layer
                    units = {e: self.source.vector(e, dl).float().cpu() for e in self._strengths}
                except EmolensError as err:
                    raise SteeringError(f"cannot steer at layer {spec_layer!r}: {err}") from err
                adds = {e: units[e] * norm for e in units}
            else:
                from emolens.sites import resolve_site

                try:
                    site = resolve_site(model, spec_layer)
                except EmolensError as err:
                    raise SteeringError(f"cannot steer at layer {spec_layer!r}: {err}") from err
                assert src is not None
                norm = src.unit_scale()
                units = {e: src.unit(e) for e in self._strengths}
                adds = {e: src.add_vector(e) for e in self._strengths}
            if site.name in seen:
                raise SteeringError(f"layer {spec_layer!r} is given twice ({site.name})")
            seen.add(site.name)
            names = list(self._strengths)
            delta = None
            if self.op in ("add", "ablate_add"):
                delta = torch.zeros(d_model)
                for e in names:
                    delta = delta + self._strengths[e] * adds[e]
            basis = dirs = targets = None
            if self.op in ("ablate", "ablate_add"):
                mat = torch.stack([units[e] for e in names]).double()
                q, r = torch.linalg.qr(mat.T)
                keep = r.diagonal().abs() > 1e-6
                basis = q[:, keep].T.float().contiguous()
            if self.op == "clamp":
                dirs = torch.stack([units[e] for e in names])
                if len(names) > 1 and torch.linalg.matrix_rank(dirs.double()) < len(names):
                    raise SteeringError(f"cannot clamp {names} together: their directions are "
                                        "linearly dependent at " + site.name)
                targets = torch.tensor([self._strengths[e] * norm for e in names])
            edits.append(SiteEdit(site.name, site.layer, self.op, delta=delta, basis=basis,
                                  dirs=dirs, targets=targets))
        return edits

    def apply(self, model: Model) -> SteeringHandle:
        """Install the hooks on ``model``; returns a handle (``.remove()``, or use it in ``with``)."""
        edits = self.site_edits(model)
        handle = SteeringHandle(model, [self])
        handle._install([(self, edits)])
        return handle

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of this intervention (for reports and result files)."""
        src: str
        if _is_registry(self.source):
            src = f"registry:{getattr(self.source, 'name', '?')}"
        elif isinstance(self.source, torch.Tensor):
            src = "vector"
        else:
            src = "vectors:" + ",".join(map(str, self.source))
        return {"source": src, "op": self.op, "spec": self.strengths,
                "layer": self.layer, "layers": self.layers,
                "positions": self._policy.describe(), "scale": self.scale,
                "direction_layer": self.direction_layer, "rows": self._describe_rows(),
                "units": "fraction of the mean residual-stream norm at the site"
                if (_is_registry(self.source) or self.scale is not None) else "raw vector units"}

    def _describe_rows(self) -> list[int] | None:
        rows = self._rows
        if rows is None:
            return None
        if isinstance(rows, torch.Tensor):
            return [int(i) for i in rows.nonzero()[:, 0].tolist()]
        return list(rows)


class SteeringHandle:
    """Installed steering hooks. ``remove()`` (idempotent) takes them off; ``reset()`` forgets
    the sequence being tracked (call it between unrelated calls when steering by position)."""

    def __init__(self, model: Model, steerings: list[Steering]):
        self.model = model
        self.steerings = list(steerings)
        self.tracker = PositionTracker(model)
        self._hooks: list[tuple[Any, Any]] = []
        self.edits: list[SiteEdit] = []
        self.calls = 0

    def _install(self, plans: list[tuple[Steering, list[SiteEdit]]]) -> None:
        hook_dict = getattr(self.model, "hook_dict", None)
        if hook_dict is None:
            raise SteeringError(f"{type(self.model).__name__} has no hook_dict: steering needs a "
                                "TransformerLens model (TransformerBridge or HookedTransformer)")
        try:
            self.tracker.attach()
            for steering, edits in plans:
                for ed in edits:
                    hp = hook_dict.get(ed.hook_name)
                    if hp is None:
                        raise SteeringError(f"the model has no hook point {ed.hook_name!r}")
                    fn = self._make_hook(ed, steering.policy, steering.row_selection)
                    self._hooks.append((hp, hp.add_hook(fn, dir="fwd")))
                    self.edits.append(ed)
        except BaseException:
            self.remove()
            raise

    def _make_hook(self, ed: SiteEdit, policy: PositionPolicy,
                   rows: tuple[int, ...] | torch.Tensor | None = None) -> Any:
        tracker = self.tracker
        name = ed.hook_name
        row_cache: dict[tuple[int, torch.device], torch.Tensor | None] = {}

        def rows_for(batch: int, device: torch.device) -> torch.Tensor | None:
            """Row indices to edit; None = every row (validated once per batch size)."""
            key = (batch, device)
            if key not in row_cache:
                assert rows is not None
                idx = row_index(rows, batch, device)
                row_cache[key] = None if idx.numel() == batch else idx
            return row_cache[key]

        def steering_hook(x: torch.Tensor, *, hook: Any) -> torch.Tensor:
            self.calls += 1
            if x.ndim != 3:
                raise SteeringError(f"steering expects [batch, pos, d_model] at {name}, got shape "
                                    f"{tuple(x.shape)}")
            batch = int(x.shape[0])
            idx = None if rows is None else rows_for(batch, x.device)
            info = tracker.info_for(name, batch, int(x.shape[1]))
            sel = info.select(policy, x.device)
            if sel is False:
                return x
            if idx is not None:
                # only the chosen rows are edited; the others are copied bit for bit
                if idx.numel() == 0:
                    return x
                xs = x.index_select(0, idx)
                ys = ed.edit(xs)
                if sel is not None:
                    assert isinstance(sel, torch.Tensor)
                    ys = torch.where(sel.index_select(0, idx)[..., None], ys, xs)
                return x.index_copy(0, idx, ys)
            y = ed.edit(x)
            if sel is None:
                return y
            assert isinstance(sel, torch.Tensor)
            return torch.where(sel[..., None], y, x)

        steering_hook.__name__ = f"emolens_steering_{ed.op}_{name}"
        return steering_hook

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def reset(self) -> None:
        self.tracker.reset()

    def remove(self) -> None:
        for hp, lens_handle in self._hooks:
            lens_handle.hook.remove()
            hp.fwd_hooks[:] = [h for h in hp.fwd_hooks if h is not lens_handle]
        self._hooks = []
        self.tracker.detach()

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        sites = ", ".join(sorted({e.hook_name for e in self.edits}))
        state = "active" if self.active else "removed"
        return f"SteeringHandle({state}, {len(self.steerings)} steering(s) at {sites})"


def apply_steering(model: Model, steerings: Steering | Sequence[Steering]) -> SteeringHandle:
    """Install one or several ``Steering``s together; returns one handle for all of them."""
    items = [steerings] if isinstance(steerings, Steering) else list(steerings)
    for s in items:
        if not isinstance(s, Steering):
            raise SteeringError(f"expected Steering objects, got a {type(s).__name__}")
    plans = [(s, s.site_edits(model)) for s in items]
    handle = SteeringHandle(model, items)
    handle._install(plans)
    return handle


@contextmanager
def steer(model: Model, registry_or_vector: Any, spec: Any = None, *, layer: int | str | None = None,
          layers: Any = None, positions: Any = "all", op: str = "add",
          scale: float | int | None = None, direction_layer: int | None = None,
          strict: bool = True, rows: Any = None) -> Iterator[SteeringHandle]:
    """Steer ``model`` inside a ``with`` block; the hooks are removed on exit, also on errors.

    ``with steer(model, reg, {"calm": 0.05, "desperate": -0.05}): model.generate(...)``
    adds ``0.05 * mean_norm * calm - 0.05 * mean_norm * desperate`` at the registry's default
    layer at every position; ``rows=[0, 2]`` steers only those rows of the batch. See
    ``Steering`` for every argument. ``registry_or_vector`` may also be a ``Steering`` or a
    list of them (then leave ``spec`` out).
    """
    if isinstance(registry_or_vector, Steering) or (
            isinstance(registry_or_vector, (list, tuple)) and registry_or_vector
            and all(isinstance(s, Steering) for s in registry_or_vector)):
        if spec is not None:
            raise SteeringError("pass either Steering objects or (source, spec), not both")
        handle = apply_steering(model, registry_or_vector)
    else:
        if spec is None:
            raise SteeringError("steer() needs a spec such as {'calm': 0.05}")
        handle = Steering(registry_or_vector, spec, layer=layer, layers=layers,
                          positions=positions, op=op, scale=scale,
                          direction_layer=direction_layer, strict=strict, rows=rows).apply(model)
    try:
        yield handle
    finally:
        handle.remove()


# ---------------------------------------------------------------------------- helpers
def measure_mean_norm(model: Model, texts: Any, layers: Sequence[int] | None = None, *,
                      batch_size: int = 8) -> dict[int, float]:
    """Mean residual-stream norm at ``blocks.{l}.hook_resid_post`` over content tokens (real
    tokens other than the first, attention-sink token) of ``texts``: the steering unit."""
    from emolens.compat import cache_to_layer
    from emolens.sites import resolve_sites
    from emolens.tokens import to_inputs

    sites = resolve_sites(model, layers)
    sums = {s.layer: 0.0 for s in sites}
    count = 0
    items = [texts] if isinstance(texts, str) else list(texts)
    for i in range(0, len(items), batch_size):
        batch = to_inputs(model, items[i:i + batch_size])
        b = batch.to(model_device(model))
        with torch.no_grad():
            cache = cache_to_layer(model, b.tokens, [s.name for s in sites],
                                   max(s.layer for s in sites) + 1, **b.forward_kwargs())
        mask = b.content_mask
        count += int(mask.sum())
        for s in sites:
            sums[s.layer] += float(cache[s.name].norm(dim=-1)[mask].sum())
    if count == 0:
        raise SteeringError("no content tokens to measure a norm on; give longer texts")
    return {k: v / count for k, v in sums.items()}


def random_direction(d_model: int, *, seed: int = 0) -> Float[torch.Tensor, " d_model"]:
    """A unit vector drawn uniformly on the sphere from ``seed`` (a norm-matched control)."""
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(int(d_model), generator=g)
    return v / v.norm()
