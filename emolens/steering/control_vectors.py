"""Emotion directions as llama.cpp control vectors (GGUF), and back.

File layout (what llama.cpp's ``common_control_vector_load`` reads): ``general.architecture =
"controlvector"``, ``controlvector.model_hint`` (a string, informational), ``controlvector.
layer_count`` (int32), and one float32 ``[n_embd]`` tensor ``direction.{N}`` per steered layer.
emolens adds ``emolens.*`` keys (ignored by llama.cpp) recording the spec, units and model.

Layer mapping. llama.cpp stores ``direction.N`` at buffer offset ``(N - 1) * n_embd``, and
``llama_adapter_cvec::apply`` fills layer ``il`` from offset ``(il - 1) * n_embd``, so
``direction.N`` goes to layer ``il = N``; the graph adds it to that layer's output
(``cur = cvec.apply_to(ctx, cur, il)`` right before ``"l_out"``, after the FFN residual add).
In TransformerLens terms: ``direction.N`` is added at ``blocks.N.hook_resid_post`` (block ``N``
counted from 0). ``direction.0`` is rejected by llama.cpp, so the output of block 0 cannot be
exported. A registry site ``blocks.l.hook_resid_pre`` is the same point as
``blocks.{l-1}.hook_resid_post`` and is exported as ``direction.{l-1}``.

Units. Tensors hold ``strength * mean_norm(l) * unit`` (emolens units times the site's mean
residual norm), so exporting ``{"calm": 1.0}`` and loading it with
``--control-vector-scaled calm.gguf 0.05`` steers like ``steer(model, reg, {"calm": 0.05})``
at every exported layer. The residual basis is the raw model's (no folded norms): a registry
extracted on a weight-processed model is refused.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from emolens.errors import FormatError, SteeringError
from emolens.io import atomic_path

ARCH = "controlvector"
_TENSOR_RE = re.compile(r"^direction\.(-?\d+)$")


def llama_cpp_layer(hook_name: str) -> int:
    """The ``direction.N`` index for a TransformerLens residual hook name."""
    m = re.match(r"^blocks\.(\d+)\.hook_resid_(pre|post)$", hook_name)
    if not m:
        raise SteeringError(
            f"llama.cpp control vectors act on block outputs only; {hook_name!r} is not a "
            "residual-stream site (blocks.N.hook_resid_post or blocks.N.hook_resid_pre)")
    block, kind = int(m.group(1)), m.group(2)
    return block if kind == "post" else block - 1


def _model_hint(registry: Any) -> str:
    model_id = str(registry.provenance.get("model_id", "") or "")
    low = model_id.lower()
    for key, hint in (("smollm", "llama"), ("llama", "llama"), ("mistral", "mistral"),
                      ("qwen", "qwen2"), ("gemma", "gemma3"), ("gpt2", "gpt2")):
        if key in low:
            return hint
    return model_id or "unknown"


def _spec(emotion_or_spec: Any, strength: float | int, registry: Any) -> dict[str, float]:
    import math

    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or \
            not math.isfinite(float(strength)):
        raise SteeringError(f"strength={strength!r} must be a finite number")
    if isinstance(emotion_or_spec, str):
        spec = {emotion_or_spec: float(strength)}
    elif isinstance(emotion_or_spec, Mapping) and emotion_or_spec:
        for k, v in emotion_or_spec.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not math.isfinite(float(v)):
                raise SteeringError(f"control-vector spec {dict(emotion_or_spec)!r}: each entry "
                                    f"must be emotion name -> finite number, got {k!r}: {v!r}")
        spec = {str(k): float(v) * float(strength) for k, v in emotion_or_spec.items()}
    else:
        raise SteeringError(f"pass an emotion name or {{emotion: strength}}, got "
                            f"{emotion_or_spec!r}")
    from emolens.steering.interventions import Steering

    Steering(registry, spec)  # validates names and numbers with the usual messages
    return spec


def export_control_vector(registry: Any, emotion_or_spec: Any, path: str | os.PathLike[str], *,
                          strength: float | int = 1.0, layers: Sequence[int] | None = None,
                          model_hint: str | None = None) -> Path:
    """Write a llama.cpp control vector for ``emotion_or_spec`` (a name, or
    ``{emotion: strength}`` combined as in ``steer``; ``strength`` multiplies it).

    ``layers``: registry layers to export (default: every registry layer llama.cpp can address,
    i.e. all but the output of block 0). The write is atomic. Returns the path.
    """
    from emolens.io import check_output_file

    spec = _spec(emotion_or_spec, strength, registry)
    check_output_file(path, error=SteeringError, what="control-vector file")
    wp = registry.provenance.get("weight_processing")
    if wp not in (None, "raw"):
        raise SteeringError(
            f"registry {registry.name!r} was extracted with weight processing {wp!r}; llama.cpp "
            "runs the raw weights, whose residual basis differs. Extract on the raw model "
            "(emolens.load_model() default) to export a control vector")
    explicit = layers is not None
    wanted = list(registry.layers) if layers is None else list(layers)  # registry.site checks
    vectors: dict[int, np.ndarray] = {}
    sources: dict[int, str] = {}
    for layer in wanted:
        try:
            site = registry.site(layer)
        except Exception as err:  # noqa: BLE001 - RegistryError with the valid layers
            raise SteeringError(f"cannot export layer {layer!r}: {err}") from err
        n = llama_cpp_layer(site.name)
        if n < 1:
            if explicit:
                raise SteeringError(
                    f"layer {layer} ({site.name}) is the output of block 0, which llama.cpp "
                    "control vectors cannot address (direction.0 is invalid); export layers >= 1")
            continue
        if n in vectors:
            raise SteeringError(f"layers {sources[n]} and {site.name} map to the same llama.cpp "
                                f"layer direction.{n}")
        norm = float(registry.mean_norm(layer))
        v = torch.zeros(registry.d_model)
        for e, s in spec.items():
            v = v + s * norm * registry.vector(e, layer).float()
        vectors[n] = v.numpy().astype(np.float32)
        sources[n] = site.name
    if not vectors:
        raise SteeringError(f"no exportable layer among {wanted}; llama.cpp needs layers >= 1")
    meta = {
        "emolens.spec": json.dumps(spec),
        "emolens.units": "strength x mean residual-stream norm of the site",
        "emolens.layer_mapping": "direction.N is added to the output of block N "
                                 "(TransformerLens blocks.N.hook_resid_post)",
        "emolens.sites": json.dumps({str(k): v for k, v in sorted(sources.items())}),
        "emolens.model_id": str(registry.provenance.get("model_id", "")),
        "emolens.registry": str(registry.name),
    }
    return _write(Path(path), vectors, model_hint or _model_hint(registry), meta)


def _write(path: Path, vectors: dict[int, np.ndarray], hint: str, meta: dict[str, str]) -> Path:
    import gguf

    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_int32(f"{ARCH}.layer_count", len(vectors))
        for k, v in meta.items():
            writer.add_string(k, v)
        for n in sorted(vectors):
            writer.add_tensor(f"direction.{n}", vectors[n])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _reader(path: str | os.PathLike[str]) -> Any:
    import gguf

    p = Path(path)
    if not p.is_file():
        raise FormatError(f"no control-vector file at {str(p)!r}")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError / struct errors
        raise FormatError(f"{str(p)!r} is not a readable GGUF file ({e})") from e
    arch = reader.fields.get("general.architecture")
    value = arch.contents() if arch is not None else None
    if value != ARCH:
        raise FormatError(f"{str(p)!r} has general.architecture={value!r}, not {ARCH!r}: it is "
                          "not a llama.cpp control vector")
    return reader


def import_control_vector(path: str | os.PathLike[str]
                          ) -> dict[int, Float[torch.Tensor, " d_model"]]:
    """Read a llama.cpp control vector: ``{N: float32 [n_embd]}`` where the vector is added at
    ``blocks.N.hook_resid_post`` (the output of block ``N``; see the module docstring)."""
    reader = _reader(path)
    out: dict[int, torch.Tensor] = {}
    dim = None
    for t in reader.tensors:
        m = _TENSOR_RE.match(t.name)
        if not m:
            continue
        n = int(m.group(1))
        if n < 1:
            raise FormatError(f"{str(path)!r}: tensor {t.name!r} has layer index {n}; llama.cpp "
                              "numbers control-vector layers from 1")
        if t.tensor_type.name != "F32":
            raise FormatError(f"{str(path)!r}: tensor {t.name!r} is {t.tensor_type.name}, "
                              "control vectors must be F32")
        if len(t.shape) != 1:
            raise FormatError(f"{str(path)!r}: tensor {t.name!r} has shape "
                              f"{[int(d) for d in t.shape]}; control vectors are 1-D")
        data = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if dim is not None and data.shape[0] != dim:
            raise FormatError(f"{str(path)!r}: tensor {t.name!r} has {data.shape[0]} values, "
                              f"others {dim}")
        dim = int(data.shape[0])
        out[n] = torch.from_numpy(data.copy())
    if not out:
        raise FormatError(f"{str(path)!r} holds no direction.N tensors")
    return dict(sorted(out.items()))


def control_vector_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The key/value metadata of a control-vector file (``emolens.*`` keys JSON-decoded)."""
    reader = _reader(path)
    out: dict[str, Any] = {}
    for name, fld in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            val = fld.contents()
        except Exception:  # noqa: BLE001 - exotic field types
            continue
        if name in ("emolens.spec", "emolens.sites") and isinstance(val, str):
            val = json.loads(val)
        out[name] = val
    return out


def steerings_from_control_vector(path: str | os.PathLike[str], *, strength: float | int = 1.0,
                                  positions: Any = "all") -> list[Any]:
    """One raw-vector ``Steering`` per layer of a control-vector file (``strength`` scales the
    stored vectors, as llama.cpp's ``--control-vector-scaled`` does)."""
    from emolens.steering.interventions import Steering

    return [Steering(v, float(strength), layer=n, positions=positions)
            for n, v in import_control_vector(path).items()]
