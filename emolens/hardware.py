"""The compute dtype, chosen by the hardware: one resolver for every stage.

``compute_dtype="auto"`` (the default of ``extract_emotions``, the main job, the benchmarks and
the CLI) runs forward passes under bf16 autocast only where the hardware executes bf16
natively: a CUDA device that supports bf16, or a CPU for which torch reports AVX512-BF16 or AMX
tiles. Elsewhere it keeps the model's own dtype: on a CPU with only AVX2, bf16 autocast is
emulated and was measured 6.6x slower for one forward of the default model (17x for a whole
extraction) than float32. ``"float32"`` / ``"bfloat16"`` (or a ``torch.dtype``) always win, and
the environment variable ``EMOLENS_COMPUTE_DTYPE`` (``auto``, ``float32``, ``bfloat16``,
``model``) replaces ``"auto"`` machine-wide. Every resolution says why it chose what it chose;
registries, ``results.json`` and the report record both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emolens.errors import InputError

if TYPE_CHECKING:
    import torch

ENV_VAR = "EMOLENS_COMPUTE_DTYPE"
_NAMES = ("auto", "model", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class CpuFeatures:
    """What torch reports about this CPU's bf16 support (``None``: this torch cannot tell)."""

    model_name: str
    avx512_bf16: bool | None
    amx_tile: bool | None
    avx2: bool | None

    @property
    def native_bf16(self) -> bool:
        return bool(self.avx512_bf16) or bool(self.amx_tile)

    def flags(self) -> str:
        """One line naming the CPU and its bf16-relevant flags (for speed figures)."""
        def f(v: bool | None) -> str:
            return "?" if v is None else ("yes" if v else "no")
        return (f"{self.model_name} (AVX2 {f(self.avx2)}, AVX512-BF16 {f(self.avx512_bf16)}, "
                f"AMX {f(self.amx_tile)})")

    def to_dict(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "avx512_bf16": self.avx512_bf16,
                "amx_tile": self.amx_tile, "avx2": self.avx2, "native_bf16": self.native_bf16}


def _probe(name: str) -> bool | None:
    import torch

    fn = getattr(torch.cpu, name, None)
    if fn is None:
        return None
    try:
        return bool(fn())
    except Exception:  # a torch build whose probe itself fails cannot tell
        return None


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_features() -> CpuFeatures:
    """Probe this CPU through torch (``torch.cpu._is_avx512_bf16_supported`` etc.)."""
    return CpuFeatures(model_name=_cpu_model_name(),
                       avx512_bf16=_probe("_is_avx512_bf16_supported"),
                       amx_tile=_probe("_is_amx_tile_supported"),
                       avx2=_probe("_is_avx2_supported"))


@dataclass(frozen=True)
class ComputeDtype:
    """A resolved compute dtype: ``dtype`` is the autocast dtype, ``None`` for the model's own.

    ``name`` is what records say ("bfloat16", or the model's dtype such as "float32");
    ``reason`` says why, e.g. "cpu without native bf16" or "cuda bf16".
    """

    dtype: torch.dtype | None
    name: str
    reason: str
    requested: str

    @property
    def autocast(self) -> bool:
        return self.dtype is not None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason, "requested": self.requested}


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _model_device_dtype(model: Any) -> tuple[Any, Any]:
    import torch

    if model is not None and hasattr(model, "parameters"):
        try:
            p = next(iter(model.parameters()))
            return p.device, p.dtype
        except StopIteration:
            pass
    return torch.device("cpu"), torch.float32


def resolve_compute_dtype(spec: Any = "auto", model: Any = None, *,
                          device: Any = None) -> ComputeDtype:
    """Resolve ``spec`` ("auto", "model", "float32", "bfloat16", "float16", a ``torch.dtype``
    or ``None`` = the model's own dtype) for ``model`` (or an explicit ``device``).

    Raises ``InputError`` naming the value for anything else.
    """
    import torch

    dev, model_dtype = _model_device_dtype(model)
    dev = torch.device(device) if device is not None else dev
    own = ComputeDtype(None, _dtype_name(model_dtype), "", "")
    if spec is None:
        return ComputeDtype(None, own.name, "the model's own dtype (requested)", "model")
    if isinstance(spec, torch.dtype):
        if not spec.is_floating_point:
            raise InputError(f"compute_dtype must be a floating dtype such as torch.bfloat16, "
                             f"'auto' or None, got {spec!r}")
        requested = _dtype_name(spec)
    elif isinstance(spec, str):
        requested = spec.strip().lower().replace("torch.", "")
        requested = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16",
                     "half": "float16", "float": "float32"}.get(requested, requested)
        if requested not in _NAMES:
            raise InputError(f"compute_dtype must be one of {list(_NAMES)} or a torch.dtype, "
                             f"got {spec!r}")
    else:
        raise InputError(f"compute_dtype must be one of {list(_NAMES)}, a torch.dtype or None, "
                         f"got {spec!r} ({type(spec).__name__})")
    source = "requested"
    if requested == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env != "auto":
            if env not in _NAMES:
                raise InputError(f"{ENV_VAR}={env!r} is not one of {list(_NAMES)}; unset it or "
                                 "set it to auto, model, float32 or bfloat16")
            requested, source = env, f"{ENV_VAR}={env}"
    if requested == "model":
        return ComputeDtype(None, own.name, f"the model's own dtype ({source})", "model")
    if requested != "auto":
        dtype = getattr(torch, requested)
        if dtype == model_dtype:
            return ComputeDtype(None, own.name, f"the model's own dtype ({source})", requested)
        return ComputeDtype(dtype, requested, source, requested)
    # auto: bf16 only where it runs natively, and only over a float32 model
    if model_dtype != torch.float32:
        return ComputeDtype(None, own.name, f"auto: the model is already {own.name}", "auto")
    if dev.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return ComputeDtype(torch.bfloat16, "bfloat16", "auto: cuda bf16", "auto")
        return ComputeDtype(None, own.name, "auto: cuda without bf16", "auto")
    if dev.type == "cpu":
        feats = cpu_features()
        if feats.native_bf16:
            which = "AMX" if feats.amx_tile else "AVX512-BF16"
            return ComputeDtype(torch.bfloat16, "bfloat16", f"auto: cpu with native bf16 ({which})",
                                "auto")
        return ComputeDtype(None, own.name, "auto: cpu without native bf16", "auto")
    return ComputeDtype(None, own.name, f"auto: {dev.type} device, the model's own dtype", "auto")
