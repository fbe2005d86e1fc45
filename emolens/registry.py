"""``EmotionRegistry``: unit directions per emotion and site, with full provenance.

A registry holds, for each site (one hook point per layer) and each concept (emotion), a unit
vector in the model's residual basis, plus the mean residual-stream norm at each site (the unit
of steering strength) and metadata: the model's provenance, shapes, weight-processing mode,
extraction method and parameters, position policy, corpus name and content hash, validation
figures, emolens and format versions. Other concept families (personas, honesty, ...) use the
same class with another ``family``.

On disk a registry is a folder with ``registry.json`` (metadata) and
``directions-<hash>.safetensors`` (tensors). The JSON names the tensor file and its sha256; a
save writes the new tensor file, then atomically replaces the JSON, then removes the old tensor
file, so at every instant the folder holds a complete registry. Loading verifies the hash and
every shape, and never unpickles anything.
"""
from __future__ import annotations

import copy
import datetime as _dt
import html
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from emolens.errors import (
    ModelMismatchError,
    RegistryError,
    unknown_name_message,
)
from emolens.io import load_tensors, save_tensors, sha256_file, write_json
from emolens.sites import Site

FORMAT_VERSION = 1
META_FILE = "registry.json"
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
        directions = torch.as_tensor(directions, dtype=torch.float32).detach().cpu()
        if directions.ndim != 3:
            raise RegistryError(f"directions must be [site, emotion, d_model], got {tuple(directions.shape)}")
        emotions = [str(e) for e in emotions]
        sites = list(sites)
        if directions.shape[0] != len(sites) or directions.shape[1] != len(emotions):
            raise RegistryError(
                f"directions shape {tuple(directions.shape)} does not match {len(sites)} sites x "
                f"{len(emotions)} emotions")
        if len(set(emotions)) != len(emotions):
            dup = sorted({e for e in emotions if emotions.count(e) > 1})
            raise RegistryError(f"duplicate emotion names {dup}; names must be unique")
        layers = [s.layer for s in sites]
        if len(set(layers)) != len(layers):
            raise RegistryError(f"one site per layer: layers {layers} repeat")
        if not torch.isfinite(directions).all():
            raise RegistryError("directions contain NaN or infinite values")
        norms = directions.norm(dim=-1, keepdim=True)
        if (norms == 0).any():
            bad = [(sites[i].name, emotions[j]) for i, j in (norms[..., 0] == 0).nonzero().tolist()]
            raise RegistryError(f"zero-length direction(s) at {bad[:5]}")
        order = sorted(range(len(sites)), key=lambda i: sites[i].layer)
        if (norms - 1).abs().max() > 1e-6:  # leave unit rows bit-exact (round trips)
            directions = directions / norms
        self._dirs = directions[order].contiguous()
        self._sites = [sites[i] for i in order]
        self._mean_norm = torch.as_tensor(mean_norm, dtype=torch.float32).detach().cpu()[order]
        if center is None:
            center = torch.zeros(len(sites), directions.shape[-1])
        center = torch.as_tensor(center, dtype=torch.float32).detach().cpu()
        if tuple(center.shape) != (len(sites), directions.shape[-1]):
            raise RegistryError(f"center must be [site, d_model], got {tuple(center.shape)}")
        self._center = center[order].contiguous()
        self._emotions = emotions
        self.family = family
        self.metadata: dict[str, Any] = copy.deepcopy(dict(metadata or {}))
        self.name = name or self.metadata.get("name") or f"{family}-directions"
        self.version = str(version)
        if default_layer is None:
            default_layer = self.metadata.get("default_layer")
        if default_layer is None:
            default_layer = self._sites[min(len(self._sites) - 1, (2 * len(self._sites)) // 3)].layer
        self._check_layer(default_layer)
        self.default_layer = int(default_layer)

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
            raise RegistryError(f"layer must be an int or a hook name, got {layer!r}")
        layers = self.layers
        if layer < 0 and layers:
            layer = layers[-1] + 1 + layer if -layer <= layers[-1] + 1 else layer
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
        md.setdefault("derived", []).append(meta)
        sites = list(self._sites if sites is None else sites)
        default = self.default_layer if self.default_layer in [s.layer for s in sites] else None
        return EmotionRegistry(dirs, emotions, sites,
                               self._mean_norm if mean_norm is None else mean_norm,
                               metadata=md, default_layer=default, family=self.family,
                               name=self.name, version=self.version,
                               center=self._center if center is None else center)

    def subset(self, emotions: Iterable[str] | None = None,
               layers: Iterable[int] | None = None) -> EmotionRegistry:
        """A registry with only some emotions and/or layers."""
        emos = list(self._emotions if emotions is None else emotions)
        ei = [self.emotion_index(e) for e in emos]
        si = list(range(len(self._sites))) if layers is None else [self._check_layer(int(x)) for x in layers]
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
    def check_model(self, model: Any, *, strict: bool = True) -> None:
        """Refuse a model whose id, d_model or layer count differ from the registry's.

        With ``strict=False`` only the shapes must agree (directions do not carry over between
        different models, or between raw and weight-processed versions of one model; the
        caller takes responsibility).
        """
        from emolens.models.provenance import model_provenance

        prov = model_provenance(model)
        mine = self.provenance
        problems = []
        if int(model.cfg.d_model) != self.d_model:
            problems.append(f"d_model {model.cfg.d_model} != registry's {self.d_model}")
        n_layers = mine.get("n_layers")
        if n_layers is not None and int(model.cfg.n_layers) != int(n_layers):
            problems.append(f"n_layers {model.cfg.n_layers} != registry's {n_layers}")
        shape_problems = list(problems)
        if mine.get("model_id") and prov.model_id != mine["model_id"]:
            problems.append(f"model id {prov.model_id!r} != registry's {mine['model_id']!r}")
        if mine.get("weight_processing") and prov.weight_processing != mine["weight_processing"]:
            problems.append(f"weight processing {prov.weight_processing!r} != registry's "
                            f"{mine['weight_processing']!r}")
        if shape_problems or (strict and problems):
            raise ModelMismatchError(
                f"registry {self.name!r} was built on another model: {'; '.join(problems)}. "
                "Extract directions on this model, or pass strict=False if you are sure the "
                "residual bases agree (shapes must still match).")

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
        """Save into folder ``path`` (created if needed) crash-safely; returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        meta = self.to_metadata()
        meta["saved_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        tmp = folder / ".directions.tmp.safetensors"
        save_tensors(tmp, {"directions": self._dirs, "mean_norm": self._mean_norm,
                           "center": self._center},
                     metadata={"format": "emolens-registry", "format_version": str(FORMAT_VERSION)})
        digest = sha256_file(tmp)
        tensor_name = f"directions-{digest[:16]}.safetensors"
        os.replace(tmp, folder / tensor_name)
        old = None
        if (folder / META_FILE).is_file():
            try:
                old = json.loads((folder / META_FILE).read_text()).get("tensor_file")
            except ValueError:
                old = None
        meta["tensor_file"] = tensor_name
        meta["tensor_sha256"] = digest
        write_json(folder / META_FILE, meta)
        if old and old != tensor_name and (folder / old).is_file():
            (folder / old).unlink()
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any | None = None, *,
             strict: bool = True) -> EmotionRegistry:
        """Load a registry folder; verify its hash and shapes; check ``model`` if given."""
        folder = Path(path)
        mpath = folder / META_FILE
        if not mpath.is_file():
            raise RegistryError(f"no {META_FILE} in {str(folder)!r}: not a registry folder "
                                "(save one with registry.save(path))")
        try:
            meta = json.loads(mpath.read_text())
        except ValueError as e:
            raise RegistryError(f"{str(mpath)!r} is not valid JSON ({e}); the file was edited or "
                                "truncated") from e
        _check_meta(meta, mpath)
        tpath = folder / str(meta["tensor_file"])
        if not tpath.is_file():
            raise RegistryError(f"tensor file {str(tpath)!r} named in {META_FILE} is missing")
        if sha256_file(tpath) != meta["tensor_sha256"]:
            raise RegistryError(f"{str(tpath)!r} does not match the sha256 recorded in {META_FILE}: "
                                "it was edited or truncated; re-extract or restore it")
        try:
            tensors = load_tensors(tpath)
        except Exception as e:  # safetensors raises its own error types
            raise RegistryError(f"cannot read {str(tpath)!r}: {e}") from e
        dirs, norms = tensors.get("directions"), tensors.get("mean_norm")
        if dirs is None or norms is None:
            raise RegistryError(f"{str(tpath)!r} lacks 'directions' or 'mean_norm'")
        sites = [Site(int(s["layer"]), str(s["hook"])) for s in meta["sites"]]
        if tuple(dirs.shape[:2]) != (len(sites), len(meta["emotions"])) or norms.shape[0] != len(sites):
            raise RegistryError(f"tensor shapes {tuple(dirs.shape)} disagree with {META_FILE}")
        md = {k: v for k, v in meta.items()
              if k not in ("emotions", "sites", "tensor_file", "tensor_sha256")}
        try:
            reg = cls(dirs, meta["emotions"], sites, norms, metadata=md,
                      default_layer=meta.get("default_layer"),
                      family=str(meta.get("family", "emotion")), name=str(meta.get("name") or ""),
                      version=str(meta.get("version", "1")), center=tensors.get("center"))
        except RegistryError:
            raise
        except (TypeError, ValueError, KeyError) as e:
            raise RegistryError(f"registry in {str(folder)!r} is inconsistent: {e}") from e
        if model is not None:
            reg.check_model(model, strict=strict)
        return reg

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        model = self.provenance.get("model_id", "?")
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
            f"<td>{'' if str(s.layer) not in val else f'{val[str(s.layer)]:.3f}'}</td></tr>"
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
    if not isinstance(meta["format_version"], int) or isinstance(meta["format_version"], bool):
        raise bad("format_version", "an integer")
    if not isinstance(meta["emotions"], list) or not all(isinstance(e, str) for e in meta["emotions"]):
        raise bad("emotions", "a list of names")
    sites = meta["sites"]
    if not isinstance(sites, list) or not sites or not all(
            isinstance(s, dict) and isinstance(s.get("layer"), int) and isinstance(s.get("hook"), str)
            for s in sites):
        raise bad("sites", "a non-empty list of {layer: int, hook: str}")
    tf = meta["tensor_file"]
    if not isinstance(tf, str) or not tf.endswith(".safetensors") or "/" in tf or "\\" in tf \
            or tf.startswith("."):
        raise bad("tensor_file", "a plain *.safetensors file name inside the folder")
    if not isinstance(meta["tensor_sha256"], str):
        raise bad("tensor_sha256", "a hex string")
    dl = meta.get("default_layer")
    if dl is not None and (not isinstance(dl, int) or isinstance(dl, bool)):
        raise bad("default_layer", "an integer or null")
    if meta["format_version"] > FORMAT_VERSION:
        raise RegistryError(
            f"registry format {meta['format_version']} is newer than this emolens reads "
            f"({FORMAT_VERSION}); upgrade emolens")
