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

The instruction sets a process may use can be capped below what the CPU has: oneDNN, which runs
bf16 matmuls on CPU, reads ``ONEDNN_MAX_CPU_ISA`` (older name ``DNNL_MAX_CPU_ISA``), and ATen's
own kernels read ``ATEN_CPU_CAPABILITY``. A cap below ``AVX512_CORE_BF16`` (oneDNN) or below
``avx512`` (ATen) takes native bf16 away, so ``auto`` then keeps float32 and says so. Setting
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`` is how this
project measures an AVX2-only CPU on a machine that has more (docs/results.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emolens.errors import InputError

if TYPE_CHECKING:
    import torch

    from emolens.compat import Model

ENV_VAR = "EMOLENS_COMPUTE_DTYPE"
_NAMES = ("auto", "model", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class CpuFeatures:
    """What torch reports about this CPU's bf16 support (``None``: this torch cannot tell)."""

    model_name: str
    avx512_bf16: bool | None
    amx_tile: bool | None
    avx2: bool | None
    #: the instruction-set caps this process runs under, e.g. ``{"ONEDNN_MAX_CPU_ISA": "AVX2"}``
    isa_caps: tuple[tuple[str, str], ...] = ()

    @property
    def bf16_capped(self) -> bool:
        """True when an instruction-set cap takes native bf16 away from this process."""
        return any(_cap_blocks_bf16(name, value) for name, value in self.isa_caps)

    @property
    def native_bf16(self) -> bool:
        return (bool(self.avx512_bf16) or bool(self.amx_tile)) and not self.bf16_capped

    def flags(self) -> str:
        """One line naming the CPU and its bf16-relevant flags (for speed figures)."""
        def f(v: bool | None) -> str:
            return "?" if v is None else ("yes" if v else "no")
        caps = "".join(f", {n}={v}" for n, v in self.isa_caps)
        return (f"{self.model_name} (AVX2 {f(self.avx2)}, AVX512-BF16 {f(self.avx512_bf16)}, "
                f"AMX {f(self.amx_tile)}{caps})")

    def to_dict(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "avx512_bf16": self.avx512_bf16,
                "amx_tile": self.amx_tile, "avx2": self.avx2, "native_bf16": self.native_bf16,
                "isa_caps": dict(self.isa_caps)}


#: oneDNN's ISA names in ascending order (its ``dnnl_cpu_isa`` values); from
#: ``AVX512_CORE_BF16`` on, bf16 dot products run natively.
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16",
                "AVX10_1_512_AMX", "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16",
                "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")
#: ATen's ``ATEN_CPU_CAPABILITY`` values below which its bf16 kernels are not vectorised natively
_ATEN_NO_BF16 = ("default", "avx2", "zvector", "vsx", "sve256")
_CAP_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def _cap_blocks_bf16(name: str, value: str) -> bool:
    v = value.strip()
    if name == "ATEN_CPU_CAPABILITY":
        return v.lower() in _ATEN_NO_BF16
    v = v.upper()
    if v not in _ONEDNN_ISAS:  # oneDNN ignores a name it does not know; so do we
        return False
    return _ONEDNN_ISAS.index(v) < _ONEDNN_ISAS.index("AVX512_CORE_BF16")


def _isa_caps() -> tuple[tuple[str, str], ...]:
    return tuple((n, os.environ[n].strip()) for n in _CAP_VARS if os.environ.get(n, "").strip())


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
                       avx2=_probe("_is_avx2_supported"),
                       isa_caps=_isa_caps())


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


def _model_device_dtype(model: Model | None) -> tuple[Any, Any]:
    import torch

    if model is not None and hasattr(model, "parameters"):
        try:
            p = next(iter(model.parameters()))
            return p.device, p.dtype
        except StopIteration:
            pass
    return torch.device("cpu"), torch.float32


def resolve_compute_dtype(spec: Any = "auto", model: Model | None = None, *,
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
        if feats.bf16_capped:
            caps = ", ".join(f"{n}={v}" for n, v in feats.isa_caps)
            return ComputeDtype(None, own.name, f"auto: cpu without native bf16 (capped by {caps})",
                                "auto")
        return ComputeDtype(None, own.name, "auto: cpu without native bf16", "auto")
    return ComputeDtype(None, own.name, f"auto: {dev.type} device, the model's own dtype", "auto")
