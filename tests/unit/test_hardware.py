"""The compute-dtype resolver: bf16 only where the hardware runs it natively."""
from __future__ import annotations

import pytest
import torch

from emolens.errors import InputError
from emolens.hardware import _CAP_VARS, ENV_VAR, cpu_features, resolve_compute_dtype


@pytest.fixture
def no_env(monkeypatch):
    """No machine-wide override and no instruction-set cap: the mocked probes alone decide."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    for cap in _CAP_VARS:
        monkeypatch.delenv(cap, raising=False)


def _cpu(monkeypatch, *, avx512_bf16, amx):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


def test_auto_is_float32_on_a_cpu_without_native_bf16(monkeypatch, no_env, tiny):
    _cpu(monkeypatch, avx512_bf16=False, amx=False)
    r = resolve_compute_dtype("auto", tiny)
    assert r.dtype is None and r.name == "float32"
    assert r.reason == "auto: cpu without native bf16"
    assert not cpu_features().native_bf16


@pytest.mark.parametrize(("avx512", "amx", "which"), [(True, False, "AVX512-BF16"),
                                                      (False, True, "AMX")])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch, no_env, tiny, avx512, amx, which):
    _cpu(monkeypatch, avx512_bf16=avx512, amx=amx)
    r = resolve_compute_dtype("auto", tiny)
    assert r.dtype is torch.bfloat16 and r.name == "bfloat16"
    assert which in r.reason


def test_a_torch_without_the_probes_counts_as_no_native_bf16(monkeypatch, no_env):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    feats = cpu_features()
    assert feats.avx512_bf16 is None and feats.amx_tile is None
    assert resolve_compute_dtype("auto", device="cpu").dtype is None


def test_auto_on_cuda_follows_bf16_support(monkeypatch, no_env):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    r = resolve_compute_dtype("auto", device="cuda")
    assert r.dtype is torch.bfloat16 and r.reason == "auto: cuda bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_compute_dtype("auto", device="cuda").dtype is None


def test_explicit_choices_win_over_the_hardware(monkeypatch, no_env, tiny):
    _cpu(monkeypatch, avx512_bf16=False, amx=False)
    assert resolve_compute_dtype("bfloat16", tiny).dtype is torch.bfloat16
    assert resolve_compute_dtype(torch.bfloat16, tiny).dtype is torch.bfloat16
    _cpu(monkeypatch, avx512_bf16=True, amx=True)
    f32 = resolve_compute_dtype("float32", tiny)
    assert f32.dtype is None and f32.name == "float32"  # the model is float32: no autocast
    assert resolve_compute_dtype(None, tiny).dtype is None


def test_environment_variable_replaces_auto_only(monkeypatch, tiny):
    _cpu(monkeypatch, avx512_bf16=True, amx=False)
    monkeypatch.setenv(ENV_VAR, "float32")
    r = resolve_compute_dtype("auto", tiny)
    assert r.dtype is None and ENV_VAR in r.reason
    assert resolve_compute_dtype("bfloat16", tiny).dtype is torch.bfloat16
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(InputError, match="fast"):
        resolve_compute_dtype("auto", tiny)


@pytest.mark.parametrize("bad", ["bf17", torch.int8, 3, object()])
def test_bad_specs_name_the_value(bad, no_env):
    with pytest.raises(InputError, match="compute_dtype"):
        resolve_compute_dtype(bad, device="cpu")


def test_extraction_records_what_auto_chose(monkeypatch, no_env, tiny):
    from emolens import extract_emotions

    texts = {"a": ["one two three four", "five six seven"], "b": ["red blue green", "up down"]}
    _cpu(monkeypatch, avx512_bf16=False, amx=False)
    reg = extract_emotions(tiny, texts, layers=[1], progress=False, neutral=[])
    assert reg.metadata["compute_dtype"] == "float32"
    assert reg.metadata["compute_dtype_reason"] == "auto: cpu without native bf16"
    _cpu(monkeypatch, avx512_bf16=True, amx=False)
    fast = extract_emotions(tiny, texts, layers=[1], progress=False, neutral=[])
    assert fast.metadata["compute_dtype"] == "bfloat16"
    assert not torch.equal(fast.matrix(1), reg.matrix(1))  # autocast really ran


@pytest.mark.parametrize(("var", "value", "capped"), [
    ("ONEDNN_MAX_CPU_ISA", "AVX2", True),
    ("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni", True),
    ("DNNL_MAX_CPU_ISA", "AVX512_CORE", True),
    ("ATEN_CPU_CAPABILITY", "avx2", True),
    ("ATEN_CPU_CAPABILITY", "default", True),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", False),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", False),
    ("ONEDNN_MAX_CPU_ISA", "ALL", False),
    ("ATEN_CPU_CAPABILITY", "avx512", False),
    ("ONEDNN_MAX_CPU_ISA", "NOT_AN_ISA", False),  # oneDNN ignores unknown names
])
def test_an_instruction_set_cap_below_bf16_makes_auto_float32(monkeypatch, no_env, tiny,
                                                             var, value, capped):
    _cpu(monkeypatch, avx512_bf16=True, amx=False)
    monkeypatch.setenv(var, value)
    feats = cpu_features()
    assert feats.bf16_capped is capped
    assert feats.native_bf16 is (not capped)
    assert f"{var}={value}" in feats.flags()
    assert feats.to_dict()["isa_caps"] == {var: value}
    r = resolve_compute_dtype("auto", tiny)
    if capped:
        assert r.dtype is None and r.name == "float32"
        assert r.reason == f"auto: cpu without native bf16 (capped by {var}={value})"
    else:
        assert r.dtype is torch.bfloat16
    # an explicit choice still wins over the cap
    assert resolve_compute_dtype("bfloat16", tiny).dtype is torch.bfloat16
