"""``EmotionRegistry``: unit directions per emotion and site, with full provenance.

A registry holds, for each site (one hook point per layer) and each concept (emotion), a unit
vector in the model's residual basis, plus the mean residual-stream norm at each site (the unit
of steering strength) and metadata: the model's provenance, shapes, weight-processing mode,
extraction method and parameters, position policy, corpus name and content hash, validation
figures, emolens and format versions. Other concept families (personas, honesty, ...) use the
same class with another ``family``.

On disk a registry is a folder with ``registry.json`` (metadata) and
``directions-<hash>.safetensors`` (tensors); docs/registry.md gives the protocol. The JSON names
the tensor file and its sha256, and the tensor file's header holds the sha256 of the JSON's
every other field, so neither half can be edited or paired with another save's half. A save
holds the folder's lock file, writes the new tensor file, atomically replaces the JSON, then
removes stale ``directions-<16 hex>.safetensors`` files and temporary leftovers, so at every
instant the folder holds one complete registry. Loading verifies both hashes, every type and
shape, and never unpickles anything.
"""
from __future__ import annotations

import copy
import datetime as _dt
import html
import json
import os
import re
import struct
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from emolens.errors import (
    ModelMismatchError,
    RegistryError,
    unknown_name_message,
)
from emolens.io import atomic_open, file_lock, parse_json, sha256_bytes, write_json
from emolens.sites import Site

if TYPE_CHECKING:
    from emolens.compat import Model

FORMAT_VERSION = 2  # 2: the tensor file's header binds the JSON (meta_sha256)
META_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
TENSOR_RE = re.compile(r"^directions-[0-9a-f]{16}\.safetensors$")
_TENSOR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.safetensors$")
_SITE_RE = re.compile(r"^blocks\.(\d{1,6})\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)$")
_MAX_LAYER = 100_000
_LOAD_RETRIES = 50
EmotionSpec = str | Mapping[str, int | float]


def _emolens_version() -> str:
    from emolens import __version__

    return __version__


class EmotionRegistry:
    """Directions for a family of concepts (default: emotions) at one or more sites.

    Args:
        directions: ``[n_sites, n_emotions, d_model]``; rows are normalised to unit length.
        emotions: concept names, one per row.
        sites: one ``Site`` per layer (hook names are what is stored), same order as
            ``directions``.
        mean_norm: ``[n_sites]`` mean residual-stream norm at each site over content tokens:
            the unit of steering strength (strength ``s`` adds ``s * mean_norm * unit``).
        metadata: provenance and parameters (see the module docstring); kept as JSON.
        default_layer: the layer used when a call gives none (defaults to metadata's choice,
            else about two-thirds of the way through the registry's layers).
        family: concept family name (``"emotion"``, ``"persona"``, ...).
    """

    def __init__(self, directions: Float[torch.Tensor, "site emotion d_model"],
                 emotions: Sequence[str], sites: Sequence[Site],
                 mean_norm: Float[torch.Tensor, " site"], *,
                 metadata: Mapping[str, Any] | None = None, default_layer: int | None = None,
                 family: str = "emotion", name: str | None = None, version: str = "1",
                 center: Float[torch.Tensor, "site d_model"] | None = None):
        try:
            directions = torch.as_tensor(directions, dtype=torch.float32).detach().cpu()
            mean_norm = torch.as_tensor(mean_norm, dtype=torch.float32).detach().cpu()
            if center is not None:
                center = torch.as_tensor(center, dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError, RuntimeError) as err:
            raise RegistryError(f"directions, mean_norm and center must be real tensors: {err}") from None
        if directions.ndim != 3:
            raise RegistryError(f"directions must be [site, emotion, d_model], got {tuple(directions.shape)}")
        if isinstance(emotions, str):
            raise RegistryError(f"emotions must be a list of names, got the string {emotions!r}")
        emotions = list(emotions)
        for emo in emotions:
            _check_name(emo, "emotion name")
        sites = list(sites)
        for site in sites:
            _check_site(site)
        if directions.shape[0] != len(sites) or directions.shape[1] != len(emotions):
            raise RegistryError(
                f"directions shape {tuple(directions.shape)} does not match {len(sites)} sites x "
                f"{len(emotions)} emotions")
        if not sites or not emotions or directions.shape[2] == 0:
            raise RegistryError(f"a registry needs at least one site, one {family} and "
                                f"d_model >= 1; got directions {tuple(directions.shape)}")
        if len(set(emotions)) != len(emotions):
            dup = sorted({e for e in emotions if emotions.count(e) > 1})
            raise RegistryError(f"duplicate emotion names {dup}; names must be unique")
        layers = [s.layer for s in sites]
        if len(set(layers)) != len(layers):
            raise RegistryError(f"one site per layer: layers {layers} repeat")
        if not torch.isfinite(directions).all():
            raise RegistryError("directions contain NaN or infinite values")
        if tuple(mean_norm.shape) != (len(sites),) or not torch.isfinite(mean_norm).all() \
                or (mean_norm <= 0).any():
            raise RegistryError(
                f"mean_norm must be [site] = [{len(sites)}] finite positive norms (the steering "
                f"unit), got shape {tuple(mean_norm.shape)}: {mean_norm.flatten()[:8].tolist()}")
        norms = directions.norm(dim=-1, keepdim=True)
        if (norms == 0).any():
            bad = [(sites[i].name, emotions[j]) for i, j in (norms[..., 0] == 0).nonzero().tolist()]
            raise RegistryError(f"zero-length direction(s) at {bad[:5]}")
        order = sorted(range(len(sites)), key=lambda i: sites[i].layer)
        if (norms - 1).abs().max() > 1e-6:  # leave unit rows bit-exact (round trips)
            directions = directions / norms
        self._dirs = directions[order].contiguous()
        self._sites = [sites[i] for i in order]
        self._mean_norm = mean_norm[order].contiguous()
        if center is None:
            center = torch.zeros(len(sites), directions.shape[-1])
        if tuple(center.shape) != (len(sites), directions.shape[-1]) \
                or not torch.isfinite(center).all():
            raise RegistryError(f"center must be [site, d_model] = [{len(sites)}, "
                                f"{directions.shape[-1]}] finite values, got "
                                f"{tuple(center.shape)}")
        self._center = center[order].contiguous()
        self._emotions = [str(e) for e in emotions]
        _check_name(family, "family")
        self.family = family
        if metadata is not None and not isinstance(metadata, Mapping):
            raise RegistryError(f"metadata must be a mapping, got {type(metadata).__name__}")
        self.metadata: dict[str, Any] = copy.deepcopy(dict(metadata or {}))
        _check_metadata(self.metadata)
        self.name = name or self.metadata.get("name") or f"{family}-directions"
        _check_name(self.name, "registry name")
        self.version = str(version)
        n = self.n_layers
        if n is not None and self._sites[-1].layer >= n:
            raise RegistryError(f"site {self._sites[-1].name!r} is beyond the model's {n} layers "
                                "recorded in metadata['model']['n_layers']")
        if default_layer is None:
            default_layer = self.metadata.get("default_layer")
        if default_layer is None:
            default_layer = self._sites[min(len(self._sites) - 1, (2 * len(self._sites)) // 3)].layer
        self.default_layer = self._sites[self._check_layer(default_layer)].layer

    # ------------------------------------------------------------------ lookups
    @property
    def emotions(self) -> list[str]:
        return list(self._emotions)

    @property
    def layers(self) -> list[int]:
        return [s.layer for s in self._sites]

    @property
    def sites(self) -> list[Site]:
        return list(self._sites)

    @property
    def d_model(self) -> int:
        return int(self._dirs.shape[-1])

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.metadata.get("model", {}))

    @property
    def n_layers(self) -> int | None:
        """The layer count of the model the registry was built on (None when not recorded):
        negative layers count back from it, as ``emolens.sites`` does on a model."""
        n = self.provenance.get("n_layers")
        return n if isinstance(n, int) and not isinstance(n, bool) else None

    def _check_layer(self, layer: int | str | Site) -> int:
        if isinstance(layer, Site):
            layer = layer.name
        if isinstance(layer, str):
            for i, s in enumerate(self._sites):
                if s.name == layer:
                    return i
            raise RegistryError(unknown_name_message("site", layer, [s.name for s in self._sites],
                                                     "this registry has no direction there"))
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise RegistryError(f"layer must be an int or a hook name, got {layer!r} "
                                f"({type(layer).__name__})")
        layers = self.layers
        if layer < 0:
            n = self.n_layers
            if n is None:
                raise RegistryError(
                    f"negative layer {layer} counts back from the model's layer count, which "
                    f"this registry does not record (metadata['model']['n_layers']); pass one of "
                    f"its layers {layers}")
            if -layer > n:
                raise RegistryError(f"layer {layer} is out of range for a model with {n} layers "
                                    f"(-{n}..-1 count from the end)")
            layer += n
        if layer not in layers:
            raise RegistryError(
                f"layer {layer} is not in this registry; it has layers {layers}. Extract at that "
                f"layer (extract_emotions(..., layers=[{layer}])) or pick one of these")
        return layers.index(layer)

    def site_index(self, layer: int | str | Site | None = None) -> int:
        """Row index of ``layer`` (default: ``default_layer``)."""
        return self._check_layer(self.default_layer if layer is None else layer)

    def site(self, layer: int | str | Site | None = None) -> Site:
        return self._sites[self.site_index(layer)]

    def emotion_index(self, emotion: str) -> int:
        if emotion not in self._emotions:
            raise RegistryError(unknown_name_message(self.family, emotion, self._emotions))
        return self._emotions.index(emotion)

    def vector(self, emotion: EmotionSpec, layer: int | str | Site | None = None
               ) -> Float[torch.Tensor, " d_model"]:
        """Unit direction of ``emotion`` at ``layer`` (default ``default_layer``).

        ``emotion`` may be a name or a weighted combination such as
        ``{"calm": 1, "desperate": -1}`` (the weighted sum of unit vectors, renormalised).
        """
        i = self.site_index(layer)
        if isinstance(emotion, str):
            return self._dirs[i, self.emotion_index(emotion)].clone()
        if not isinstance(emotion, Mapping) or not emotion:
            raise RegistryError(
                f"emotion must be a name or a non-empty mapping name -> weight, got {emotion!r}")
        v = torch.zeros(self.d_model)
        for name, w in emotion.items():
            v = v + float(w) * self._dirs[i, self.emotion_index(name)]
        n = v.norm()
        if n < 1e-8:
            raise RegistryError(f"the combination {dict(emotion)} cancels out to a zero vector")
        return v / n

    def matrix(self, layer: int | str | Site | None = None
               ) -> Float[torch.Tensor, "emotion d_model"]:
        """All unit directions at ``layer``: ``[n_emotions, d_model]``, rows in ``emotions`` order."""
        return self._dirs[self.site_index(layer)].clone()

    def tensor(self) -> Float[torch.Tensor, "site emotion d_model"]:
        """Every direction: ``[n_sites, n_emotions, d_model]`` (sites in ``layers`` order)."""
        return self._dirs.clone()

    def mean_norm(self, layer: int | str | Site | None = None) -> float:
        """Mean residual-stream norm at the site: the unit of steering strength."""
        return float(self._mean_norm[self.site_index(layer)])

    def center(self, layer: int | str | Site | None = None) -> Float[torch.Tensor, " d_model"]:
        """The stimulus mean at the site (mean over emotions of the class means; zeros when
        unknown). Readouts subtract it so scores of different emotions are comparable: the
        centred projection ``(x - center) . v`` differs from the raw one by a constant per
        emotion."""
        return self._center[self.site_index(layer)].clone()

    @property
    def mean_norms(self) -> Float[torch.Tensor, " site"]:
        return self._mean_norm.clone()

    @property
    def validation(self) -> dict[str, Any]:
        return dict(self.metadata.get("validation", {}))

    # ------------------------------------------------------------------ derived registries
    def _replace(self, dirs: torch.Tensor, emotions: Sequence[str], sites: Sequence[Site] | None = None,
                 mean_norm: torch.Tensor | None = None, center: torch.Tensor | None = None,
                 **meta: Any) -> EmotionRegistry:
        md = copy.deepcopy(self.metadata)
        md.pop("default_layer", None)  # the default is a constructor argument, never stale metadata
        md.setdefault("derived", []).append(meta)
        sites = list(self._sites if sites is None else sites)
        default = self.default_layer if self.default_layer in [s.layer for s in sites] else None
        return EmotionRegistry(dirs, emotions, sites,
                               self._mean_norm if mean_norm is None else mean_norm,
                               metadata=md, default_layer=default, family=self.family,
                               name=self.name, version=self.version,
                               center=self._center if center is None else center)

    def subset(self, emotions: Iterable[str] | None = None,
               layers: Iterable[int | str | Site] | None = None) -> EmotionRegistry:
        """A registry with only some emotions and/or layers."""
        emos = list(self._emotions if emotions is None else emotions)
        ei = [self.emotion_index(e) for e in emos]
        si = list(range(len(self._sites))) if layers is None else [self._check_layer(x) for x in layers]
        return self._replace(self._dirs[si][:, ei], emos, [self._sites[i] for i in si],
                             self._mean_norm[si], self._center[si], op="subset", kept=emos,
                             layers=[self._sites[i].layer for i in si])

    def rename(self, mapping: Mapping[str, str]) -> EmotionRegistry:
        """A registry with some emotions renamed (``{"afraid": "fear"}``)."""
        for k in mapping:
            self.emotion_index(k)
        emos = [mapping.get(e, e) for e in self._emotions]
        return self._replace(self._dirs, emos, op="rename", mapping=dict(mapping))

    def with_combination(self, name: str, weights: Mapping[str, int | float]) -> EmotionRegistry:
        """A registry with one more direction: the weighted combination of existing ones at
        every site (e.g. ``with_combination("calm_minus_desperate", {"calm": 1, "desperate": -1})``)."""
        if name in self._emotions:
            raise RegistryError(f"{self.family} {name!r} already exists; choose another name")
        new = torch.stack([self.vector(weights, s.layer) for s in self._sites])[:, None]
        return self._replace(torch.cat([self._dirs, new], 1), [*self._emotions, name],
                             op="combine", name=name, weights=dict(weights))

    # ------------------------------------------------------------------ model checks
    def check_model(self, model: Model, *, strict: bool = True) -> None:
        """The one model check, run at the entry of every public call that takes a model and
        a registry: refuse a model whose id, d_model, layer count or weight processing differ
        from the registry's, or that lacks a site's hook (or has it at another layer).

        With ``strict=False`` only the structure must agree (d_model, layer count, every
        site's hook): directions do not carry over between different models, or between raw
        and weight-processed versions of one model; the caller takes responsibility.
        Raises ``ModelMismatchError``.
        """
        from emolens.models.provenance import model_provenance
        from emolens.sites import _layer_of

        cfg = getattr(model, "cfg", None)
        if cfg is None or not hasattr(cfg, "d_model") or not hasattr(cfg, "n_layers"):
            raise ModelMismatchError(
                f"expected a TransformerLens model (with .cfg.d_model and .cfg.n_layers), got "
                f"{type(model).__name__}; pass the model first, then the registry")
        prov = model_provenance(model)
        mine = self.provenance
        problems = []
        if int(cfg.d_model) != self.d_model:
            problems.append(f"d_model {cfg.d_model} != registry's {self.d_model}")
        n_layers = self.n_layers
        if n_layers is not None and int(cfg.n_layers) != n_layers:
            problems.append(f"n_layers {cfg.n_layers} != registry's {n_layers}")
        hooks = getattr(model, "hook_dict", None)
        for s in self._sites:
            if s.layer >= int(cfg.n_layers):
                problems.append(f"site {s.name!r} is beyond the model's {cfg.n_layers} layers")
            elif hooks is not None and s.name not in hooks:
                problems.append(f"the model has no hook {s.name!r}")
            elif _layer_of(s.name) != s.layer:
                problems.append(f"site {s.name!r} is recorded at layer {s.layer}")
        shape_problems = list(problems)
        if mine.get("model_id") and prov.model_id != mine["model_id"]:
            problems.append(f"model id {prov.model_id!r} != registry's {mine['model_id']!r}")
        if mine.get("weight_processing") and prov.weight_processing != mine["weight_processing"]:
            problems.append(f"weight processing {prov.weight_processing!r} != registry's "
                            f"{mine['weight_processing']!r}")
        if shape_problems or (strict and problems):
            raise ModelMismatchError(
                f"registry {self.name!r} does not fit this model: {'; '.join(problems)}. "
                "Extract directions on this model"
                + ("." if shape_problems else ", or pass strict=False if you are sure the "
                   "residual bases agree (shapes and hooks must still match)."))

    # ------------------------------------------------------------------ persistence
    def to_metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "emolens_version": _emolens_version(),
            "family": self.family,
            "name": self.name,
            "version": self.version,
            "emotions": self._emotions,
            "sites": [{"layer": s.layer, "hook": s.name} for s in self._sites],
            "default_layer": self.default_layer,
            "d_model": self.d_model,
            **{k: v for k, v in self.metadata.items()
               if k not in ("format_version", "emolens_version", "family", "name", "version",
                            "emotions", "sites", "default_layer", "d_model")},
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save into folder ``path`` (created if needed) crash-safely; returns the folder.

        Under the folder's lock file: write ``directions-<sha16>.safetensors`` (its header
        holds the sha256 of the JSON's fields), atomically replace ``registry.json``, then
        delete stale ``directions-<16 hex>.safetensors`` files and temporary leftovers of
        killed saves. No other file is ever deleted (docs/registry.md).
        """
        from safetensors.torch import save as st_save

        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise RegistryError(f"cannot save a registry into {str(folder)!r}: it is a file; a "
                                "registry is a folder (registry.json + tensor file)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"cannot create the registry folder {str(folder)!r}: "
                                f"{e.strerror or e}") from None
        meta = self.to_metadata()
        meta["saved_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        meta = _json_normalise(meta)
        tensors = {"directions": self._dirs, "mean_norm": self._mean_norm, "center": self._center}
        header = {"format": "emolens-registry", "format_version": str(FORMAT_VERSION),
                  "meta_sha256": _meta_digest(meta)}
        # the data section does not depend on the header: hash it, then write it with its hash
        header["data_sha256"] = sha256_bytes(_data_section(st_save(tensors, metadata=header)))
        data = st_save(tensors, metadata=header)
        digest = sha256_bytes(data)
        tensor_name = f"directions-{digest[:16]}.safetensors"
        meta["tensor_file"] = tensor_name
        meta["tensor_sha256"] = digest
        with file_lock(folder / LOCK_FILE):
            with atomic_open(folder / tensor_name, "wb") as f:
                f.write(data)
            write_json(folder / META_FILE, meta)
            for p in folder.iterdir():  # only names this class writes; never the JSON's word
                n = p.name
                stale = (TENSOR_RE.match(n) and n != tensor_name) \
                    or (n.startswith((".directions-", f".{META_FILE}.")) and n.endswith(".tmp")) \
                    or n == ".directions.tmp.safetensors"  # the fixed temporary name before v2
                if stale and p.is_file() and not p.is_symlink():
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        pass
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Model | None = None, *,
             strict: bool = True) -> EmotionRegistry:
        """Load a registry folder; verify both hashes, every type and shape; check ``model``
        if given (``check_model(model, strict=strict)``). Any problem is a ``RegistryError``.

        Never takes the lock: if a concurrent save replaces the folder's content between
        reading the JSON and reading its tensor file, the read starts again from the new JSON.
        """
        folder = Path(path)
        mpath = folder / META_FILE
        if not mpath.is_file():
            raise RegistryError(f"no {META_FILE} in {str(folder)!r}: not a registry folder "
                                "(save one with registry.save(path))")
        for _attempt in range(_LOAD_RETRIES):
            raw = _read_bytes(mpath) or b""
            meta = parse_json(raw, where=str(mpath), error=RegistryError)
            _check_meta(meta, mpath)
            tpath = folder / meta["tensor_file"]
            try:
                data = tpath.read_bytes()
            except FileNotFoundError:
                data = None
            except OSError as e:
                raise RegistryError(f"cannot read {str(tpath)!r}: {e.strerror or e}") from None
            if data is not None and sha256_bytes(data) == meta["tensor_sha256"]:
                break
            if _read_bytes(mpath, missing_ok=True) != raw:
                continue  # a save replaced the folder's content meanwhile: read the new one
            if data is None:
                raise RegistryError(f"tensor file {str(tpath)!r} named in {META_FILE} is missing")
            raise RegistryError(f"{str(tpath)!r} does not match the sha256 recorded in {META_FILE}: "
                                "it was edited or truncated; re-extract or restore it")
        else:
            raise RegistryError(f"{str(folder)!r} kept changing while it was read "
                                f"({_LOAD_RETRIES} tries); retry when its writers are done")
        header = _safetensors_header(data, tpath)
        bound = header.get("meta_sha256")
        if bound is None or "data_sha256" not in header:
            if meta["format_version"] != 1:
                raise RegistryError(f"{str(tpath)!r} lacks the hashes of its data and of "
                                    f"{META_FILE} that format {meta['format_version']} "
                                    "requires; it was replaced or edited")
        elif header["data_sha256"] != sha256_bytes(_data_section(data)):
            raise RegistryError(f"the tensors in {str(tpath)!r} do not match the hash in its "
                                "header: the file was edited; re-extract or restore it")
        elif bound != _meta_digest(meta):
            raise RegistryError(
                f"{META_FILE} in {str(folder)!r} was edited after the save (its fields no longer "
                "match the hash in the tensor file): load the registry in Python, change it "
                "there and save it again, or restore the file")
        from safetensors.torch import load as st_load

        try:
            tensors = st_load(data)
        except Exception as e:  # safetensors raises its own error types
            raise RegistryError(f"cannot read {str(tpath)!r}: {e}") from e
        unknown = sorted(set(tensors) - {"directions", "mean_norm", "center"})
        dirs, norms = tensors.get("directions"), tensors.get("mean_norm")
        if dirs is None or norms is None or unknown:
            raise RegistryError(f"{str(tpath)!r} must hold 'directions', 'mean_norm' and "
                                f"optionally 'center'; it holds {sorted(tensors)}")
        for k, t in tensors.items():
            if not t.is_floating_point():
                raise RegistryError(f"{str(tpath)!r}: tensor {k!r} has dtype {t.dtype}; "
                                    "expected floats")
        sites = [Site(s["layer"], s["hook"]) for s in meta["sites"]]
        d_model = meta.get("d_model")
        if dirs.ndim != 3 or tuple(dirs.shape[:2]) != (len(sites), len(meta["emotions"])) \
                or (d_model is not None and dirs.shape[2] != d_model):
            raise RegistryError(f"tensor shapes {tuple(dirs.shape)} disagree with {META_FILE} "
                                f"({len(sites)} sites x {len(meta['emotions'])} emotions x "
                                f"d_model {d_model})")
        center = tensors.get("center")
        if tuple(norms.shape) != (len(sites),) or (
                center is not None and tuple(center.shape) != (len(sites), dirs.shape[2])):
            raise RegistryError(
                f"{str(tpath)!r}: mean_norm must be [{len(sites)}] and center "
                f"[{len(sites)}, {dirs.shape[2]}]; got {tuple(norms.shape)} and "
                f"{None if center is None else tuple(center.shape)}")
        md = {k: v for k, v in meta.items()
              if k not in ("emotions", "sites", "tensor_file", "tensor_sha256", "default_layer")}
        reg = cls(dirs, meta["emotions"], sites, norms, metadata=md,
                  default_layer=meta.get("default_layer"),
                  family=meta.get("family", "emotion"), name=meta.get("name") or None,
                  version=str(meta.get("version", "1")), center=center)
        if reg.default_layer != meta.get("default_layer", reg.default_layer):
            raise RegistryError(f"{META_FILE}: default_layer {meta['default_layer']!r} must be "
                                f"one of the layers {reg.layers}")
        if model is not None:
            reg.check_model(model, strict=strict)
        return reg

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        model = self.provenance.get("model_id") or "?"
        return (f"EmotionRegistry(name={self.name!r}, family={self.family!r}, "
                f"{len(self._emotions)} {self.family}s, layers={self.layers[0]}..{self.layers[-1]} "
                f"({len(self._sites)} sites), default_layer={self.default_layer}, model={model!r})")

    def _repr_html_(self) -> str:
        e = html.escape
        val = self.validation.get("accuracy_by_layer", {})
        chance = self.validation.get("chance")
        rows = "".join(
            f"<tr><td>{s.layer}</td><td><code>{e(s.name)}</code></td>"
            f"<td>{float(self._mean_norm[i]):.2f}</td>"
            f"<td>{'' if val.get(str(s.layer)) is None else f'{val[str(s.layer)]:.3f}'}</td></tr>"
            for i, s in enumerate(self._sites))
        method = self.metadata.get("method", {})
        corpus = self.metadata.get("corpus", {})
        return (
            f"<div><b>EmotionRegistry</b> {e(self.name)} v{e(self.version)} "
            f"({e(self.family)}, {len(self._emotions)} directions, d_model={self.d_model})<br>"
            f"model: <code>{e(str(self.provenance.get('model_id', '?')))}</code> "
            f"({e(str(self.provenance.get('weight_processing', '?')))} weights); "
            f"method: {e(str(method.get('name', '?')))}; corpus: {e(str(corpus.get('name', '?')))}"
            f" <code>{e(str(corpus.get('content_hash', ''))[:12])}</code>; default layer "
            f"<b>{self.default_layer}</b>{'' if chance is None else f'; chance {chance:.3f}'}<br>"
            f"{e(', '.join(self._emotions))}"
            "<table><tr><th>layer</th><th>site</th><th>mean norm</th><th>val. acc.</th></tr>"
            f"{rows}</table></div>")


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or any(
            unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in name):
        raise RegistryError(f"{what} {name!r} must be a non-empty string of at most 200 "
                            "printable characters (no control characters or line breaks)")


def _check_site(site: Any) -> None:
    """A registry site is ``blocks.{layer}.hook_<resid_pre|resid_mid|resid_post|attn_out|
    mlp_out>`` (a d_model-wide point of a block) and its recorded layer is the name's."""
    if not isinstance(site, Site) or not isinstance(site.name, str) \
            or not isinstance(site.layer, int) or isinstance(site.layer, bool):
        raise RegistryError(f"sites must be Site(layer: int, name: str), got {site!r}")
    m = _SITE_RE.match(site.name)
    if m is None or not 0 <= site.layer < _MAX_LAYER:
        raise RegistryError(
            f"site {site.name!r} (layer {site.layer}) is not a block's d_model-wide hook: a "
            "registry stores blocks.<layer>.hook_resid_pre|resid_mid|resid_post|attn_out|mlp_out")
    if int(m.group(1)) != site.layer:
        raise RegistryError(f"site {site.name!r} is recorded at layer {site.layer}; the hook "
                            f"name says layer {int(m.group(1))}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) or x is None


def _check_metadata(md: dict[str, Any]) -> None:
    """Type-check the metadata fields that lookups, checks and displays read."""
    def bad(field: str, want: str) -> RegistryError:
        return RegistryError(f"metadata field {field!r} must be {want}, got "
                             f"{md_get(field)!r}; the registry was edited or built wrongly")

    def md_get(field: str) -> Any:
        cur: Any = md
        for part in field.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        return cur

    for key in ("model", "validation", "method", "corpus", "neutral"):
        if key in md and not isinstance(md[key], dict):
            raise bad(key, "a JSON object")
    for key in ("name", "family", "positions_name"):
        if key in md and not isinstance(md[key], str):
            raise bad(key, "a string")
    if "positions" in md and not isinstance(md["positions"], (str, dict)):
        raise bad("positions", "a string or an object")
    model = md.get("model", {})
    for key in ("model_id", "weight_processing", "revision", "source", "quantisation", "dtype"):
        if model.get(key) is not None and not isinstance(model[key], str):
            raise bad(f"model.{key}", "a string or null")
    for key in ("n_layers", "d_model", "d_vocab"):
        if model.get(key) is not None and not (_is_int(model[key]) and 0 < model[key] < 10**7):
            raise bad(f"model.{key}", "a positive integer or null")
    val = md.get("validation", {})
    if not _is_num(val.get("chance")):
        raise bad("validation.chance", "a number or null")
    for key in ("accuracy_by_layer", "shuffled_accuracy_by_layer"):
        if key in val and not (isinstance(val[key], dict) and all(
                isinstance(k, str) and _is_num(v) for k, v in val[key].items())):
            raise bad(f"validation.{key}", "an object of layer -> number")
    if md.get("method", {}).get("name") is not None and not isinstance(md["method"]["name"], str):
        raise bad("method.name", "a string or null")
    for key in ("name", "content_hash"):
        if md.get("corpus", {}).get(key) is not None and not isinstance(md["corpus"][key], str):
            raise bad(f"corpus.{key}", "a string or null")


def _json_normalise(obj: Any) -> Any:
    """``obj`` as JSON gives it back (tuples -> lists, int keys -> strings, tensors -> lists)."""
    from emolens.io import _json_default

    return json.loads(json.dumps(obj, default=_json_default))


def _meta_digest(meta: Mapping[str, Any]) -> str:
    """sha256 of the JSON's fields other than the two naming the tensor file, canonically."""
    body = {k: v for k, v in meta.items() if k not in ("tensor_file", "tensor_sha256")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sha256_bytes(text.encode())


def _read_bytes(path: Path, *, missing_ok: bool = False) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RegistryError(f"{str(path)!r} disappeared while it was read") from None
    except OSError as e:
        raise RegistryError(f"cannot read {str(path)!r}: {e.strerror or e}") from None


def _data_section(blob: bytes) -> bytes:
    """The tensor bytes of a safetensors blob (after the 8-byte length and the JSON header)."""
    (n,) = struct.unpack("<Q", blob[:8])
    return blob[8 + n:]


def _safetensors_header(data: bytes, where: Path) -> dict[str, str]:
    """The ``__metadata__`` map of a safetensors blob (strings only), bounds-checked."""
    if len(data) < 8:
        raise RegistryError(f"{str(where)!r} is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 1 << 24:
        raise RegistryError(f"{str(where)!r} has a damaged safetensors header")
    header = parse_json(data[8:8 + n], where=str(where), error=RegistryError)
    md = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(md, dict) or not all(isinstance(v, str) for v in md.values()):
        raise RegistryError(f"{str(where)!r} has a damaged safetensors header")
    return md


def _check_meta(meta: Any, mpath: Path) -> None:
    """Type-check the fields ``load`` relies on; any problem is a ``RegistryError``."""
    def bad(field: str, want: str) -> RegistryError:
        return RegistryError(f"{str(mpath)!r}: field {field!r} must be {want}; the file was "
                             "edited or is damaged (re-save the registry)")

    if not isinstance(meta, dict):
        raise RegistryError(f"{str(mpath)!r} must hold a JSON object; the file was edited")
    for key in ("format_version", "emotions", "sites", "tensor_file", "tensor_sha256"):
        if key not in meta:
            raise RegistryError(f"{str(mpath)!r} lacks the field {key!r}; the file was edited")
    if not _is_int(meta["format_version"]):
        raise bad("format_version", "an integer")
    if meta["format_version"] > FORMAT_VERSION:
        raise RegistryError(
            f"registry format {meta['format_version']} is newer than this emolens reads "
            f"({FORMAT_VERSION}); upgrade emolens")
    if meta["format_version"] < 1:
        raise bad("format_version", f"1..{FORMAT_VERSION}")
    if not isinstance(meta["emotions"], list) or not all(isinstance(e, str) for e in meta["emotions"]):
        raise bad("emotions", "a list of names")
    sites = meta["sites"]
    if not isinstance(sites, list) or not sites or not all(
            isinstance(s, dict) and set(s) == {"layer", "hook"} and _is_int(s["layer"])
            and 0 <= s["layer"] < _MAX_LAYER and isinstance(s["hook"], str) for s in sites):
        raise bad("sites", f"a non-empty list of {{layer: int 0..{_MAX_LAYER - 1}, hook: str}}")
    tf = meta["tensor_file"]
    if not isinstance(tf, str) or not _TENSOR_NAME_RE.match(tf):
        raise bad("tensor_file", "a plain *.safetensors file name inside the folder (letters, "
                                 "digits, '.', '_', '-'; at most 200 characters)")
    sha = meta["tensor_sha256"]
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise bad("tensor_sha256", "a 64-digit lower-case hex string")
    dl = meta.get("default_layer")
    if dl is not None and not (_is_int(dl) and dl >= 0):
        raise bad("default_layer", "one of the registry's layers (a non-negative integer) or null")
    dm = meta.get("d_model")
    if dm is not None and not (_is_int(dm) and dm > 0):
        raise bad("d_model", "a positive integer")
    for key in ("family", "name", "version"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(key, "a string")
