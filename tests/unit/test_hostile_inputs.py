"""Hostile probes of the public functions (issue 17 bugs 3 and 10-13, issue 14's validation
items): every bad input ends in a specific ``EmolensError`` before any compute."""
from __future__ import annotations

import pytest

from emolens.errors import SiteError
from emolens.sites import resolve_sites


def test_resolve_sites_takes_a_tuple_of_layers(tiny):
    assert [s.layer for s in resolve_sites(tiny, (3, 1))] == [1, 3]
    assert resolve_sites(tiny, ("resid_pre", 2))[0].name == "blocks.2.hook_resid_pre"
    with pytest.raises(SiteError, match="out of range"):
        resolve_sites(tiny, (3, 9))


# ---------------------------------------------------------------- one model check, every entry
def _foreign_registry(model):
    """A registry of the right shapes whose recorded model id is another model's."""
    import torch

    import emolens
    from emolens.registry import EmotionRegistry
    from emolens.sites import Site

    n, d = int(model.cfg.n_layers), int(model.cfg.d_model)
    prov = {**emolens.model_provenance(model).to_dict(), "model_id": "someone-else"}
    return EmotionRegistry(torch.randn(n, 2, d), ["calm", "desperate"],
                           [Site(i, f"blocks.{i}.hook_resid_post") for i in range(n)],
                           torch.ones(n), metadata={"model": prov})


def _entries():
    import emolens
    from emolens.causality import (
        dose_response,
        patch_direction,
        preference_experiment,
        run_causality,
        shortcut_experiment,
    )
    from emolens.causality.metrics import logit_diff
    from emolens.causality.sycophancy import sycophancy_experiment
    from emolens.readout.evaluation import evaluate

    return {
        "read_emotions": lambda m, r: emolens.read_emotions(m, r, ["hello there"]),
        "generate_monitor": lambda m, r: emolens.generate(m, "hi", max_new_tokens=2, monitor=r),
        "steer": lambda m, r: emolens.steer(m, r, {"calm": 0.1}).__enter__(),
        "evaluate": lambda m, r: evaluate(m, r, ["a b", "c d"], ["calm", "desperate"]),
        "patch_direction": lambda m, r: patch_direction(m, ["a b"], ["c d"], r,
                                                        metric=logit_diff(1, 2), emotions=["calm"]),
        "run_causality": lambda m, r: run_causality(m, r, raise_errors=True),
        "shortcut_experiment": lambda m, r: shortcut_experiment(m, r),
        "preference_experiment": lambda m, r: preference_experiment(m, r),
        "dose_response": lambda m, r: dose_response(m, r),
        "sycophancy_experiment": lambda m, r: sycophancy_experiment(m, r),
    }


@pytest.mark.parametrize("entry", sorted(_entries()))
def test_every_entry_runs_the_strict_model_check(tiny, entry):
    from emolens.errors import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="someone-else"):
        _entries()[entry](tiny, _foreign_registry(tiny))


# ---------------------------------------------------------------- bug 3: cache keyed by content
def test_registry_cache_key_follows_the_weights_not_the_path(tmp_path):
    import json as _json
    import os
    import types

    from emolens.io import folder_content_key
    from emolens.models.provenance import ModelProvenance
    from emolens.pipeline.run import model_content_key

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(_json.dumps({"a": 1}))
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\x01" * 200_000)
    prov = ModelProvenance(model_id=str(folder), source="local", revision=None,
                           quantisation="none", weight_processing="raw", dtype="float32",
                           n_layers=4, d_model=64, d_vocab=259)
    before = model_content_key(prov)
    assert before == folder_content_key(folder) and len(before) == 64
    st = weights.stat()
    weights.write_bytes(b"\x02" + b"\x01" * 199_999)  # same size
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    assert model_content_key(prov) != before  # the sampled bytes differ
    assert model_content_key(types.SimpleNamespace(model_id="gpt2", source="hub")) is None


# ---------------------------------------------------------------- bug 10: model-cache manifest
def _fake_cache(tmp_path):
    from emolens.io import sha256_file, write_json
    from emolens.models.loading import _CACHE_FORMAT, _MANIFEST, DEFAULT_GGUF_SHA256

    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w" * 1000)
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.iterdir())}
    manifest = {"format": _CACHE_FORMAT, "gguf_sha256": DEFAULT_GGUF_SHA256, "files": files}
    write_json(folder / _MANIFEST, manifest)
    return folder, manifest


@pytest.mark.parametrize("edit", ["no_files", "files_list", "no_size", "empty_files_truncated",
                                  "size_str", "unlisted_file", "not_object"])
def test_edited_cache_manifest_is_a_cache_error(tmp_path, edit):
    import json as _json

    from emolens.errors import CacheError
    from emolens.models.loading import _MANIFEST, verify_default_cache

    folder, manifest = _fake_cache(tmp_path)
    verify_default_cache(folder)
    if edit == "no_files":
        del manifest["files"]
    elif edit == "files_list":
        manifest["files"] = list(manifest["files"])
    elif edit == "no_size":
        del manifest["files"]["model.safetensors"]["size"]
    elif edit == "empty_files_truncated":
        manifest["files"] = {}
        (folder / "model.safetensors").write_bytes(b"w" * 10)
    elif edit == "size_str":
        manifest["files"]["config.json"]["size"] = "2"
    elif edit == "unlisted_file":
        (folder / "extra.bin").write_bytes(b"x")
    text = "[1]" if edit == "not_object" else _json.dumps(manifest)
    (folder / _MANIFEST).write_text(text)
    with pytest.raises(CacheError):
        verify_default_cache(folder)


def test_cache_dir_is_checked_before_the_conversion_and_stale_builds_go(tmp_path, monkeypatch):
    from emolens.errors import CacheError
    from emolens.models import loading

    def no_conversion(*a, **k):
        raise AssertionError("the conversion ran before the cache folder was checked")

    monkeypatch.setattr(loading, "_load_hf_from_gguf", no_conversion)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(CacheError, match="is a file"):
        loading.provision_default_model(a_file)
    target = loading._default_cache_dir(tmp_path / "c")
    stale = target.parent / f".{target.name}.abc123"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    keep = target.parent / "other-model"
    keep.mkdir()
    loading._remove_stale_builds(target)
    assert not stale.exists() and keep.exists()


def test_load_model_refuses_a_missing_device_before_loading(monkeypatch):
    import torch

    import emolens
    from emolens.errors import ModelNotAvailableError

    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ModelNotAvailableError, match="cuda:7"):
        emolens.load_model("/nonexistent/never-read", device="cuda:7")
    with pytest.raises(ModelNotAvailableError, match="not a device"):
        emolens.load_model("/nonexistent/never-read", device="gpu-please")


# ---------------------------------------------------------------- bugs 11-13: inputs
@pytest.fixture(scope="module")
def reg4(tiny):
    import torch

    import emolens
    from emolens.registry import EmotionRegistry
    from emolens.sites import Site

    prov = emolens.model_provenance(tiny).to_dict()
    g = torch.Generator().manual_seed(0)
    return EmotionRegistry(torch.randn(3, 2, 64, generator=g), ["calm", "desperate"],
                           [Site(i, f"blocks.{i}.hook_resid_post") for i in (0, 1, 3)],
                           torch.ones(3), metadata={"model": prov})


@pytest.mark.parametrize("bs", [-1, 0, True])
def test_read_emotions_batch_size(tiny, reg4, bs):
    import emolens
    from emolens.errors import InputError

    with pytest.raises(InputError, match="batch_size"):
        emolens.read_emotions(tiny, reg4, ["hello there"], batch_size=bs)


def test_read_emotions_layers(tiny, reg4):
    import torch

    import emolens
    from emolens.errors import InputError, RegistryError

    with pytest.raises(InputError, match=r"layers=\[\]"):
        emolens.read_emotions(tiny, reg4, ["hello there"], layers=[])
    by_name = emolens.read_emotions(tiny, reg4, ["hello there"], layer="blocks.1.hook_resid_post")
    by_num = emolens.read_emotions(tiny, reg4, ["hello there"], layer=1)
    assert torch.equal(by_name.scores, by_num.scores)
    # -1 is the model's last layer (3), which this registry has; -2 (layer 2) it has not
    assert torch.equal(emolens.read_emotions(tiny, reg4, ["hi there"], layer=-1).scores,
                       emolens.read_emotions(tiny, reg4, ["hi there"], layer=3).scores)
    with pytest.raises(RegistryError, match="layer 2"):
        emolens.read_emotions(tiny, reg4, ["hi there"], layer=-2)
    with pytest.raises(RegistryError):
        emolens.read_emotions(tiny, reg4, ["hi there"], layer=True)


def test_extract_emotions_refuses_a_string_of_texts_and_non_block_hooks(tiny):
    import emolens
    from emolens.errors import InputError, SiteError

    with pytest.raises(InputError, match="list of texts"):
        emolens.extract_emotions(tiny, {"joy": "sunshine", "sad": ["rain", "grey"]}, progress=False)
    texts = {"joy": ["sun today", "a gift"], "sad": ["rain again", "a loss"]}
    with pytest.raises(SiteError, match="residual-width"):
        emolens.extract_emotions(tiny, texts, layers=["blocks.1.attn.hook_pattern"], progress=False)
    with pytest.raises(InputError, match="batch_size"):
        emolens.extract_emotions(tiny, texts, batch_size=0, progress=False)


@pytest.mark.parametrize("texts,match", [
    ([[{"role": "assistant", "content": "hi there"}]], "only assistant"),
    ([[{"content": "hi there", "x": 1}]], "role"),
    ([[{"role": "", "content": "hi there"}]], "role"),
    (["ab\ud800cd"], "surrogate"),
    ([[{"role": "user", "content": "a\udfffb"}]], "surrogate"),
])
def test_bad_texts_are_input_errors(tiny, reg4, texts, match):
    import emolens
    from emolens.errors import InputError

    with pytest.raises(InputError, match=match):
        emolens.read_emotions(tiny, reg4, texts)


def test_steer_strengths(tiny, reg4):
    import emolens
    from emolens.errors import SteeringError, SteeringWarning

    with pytest.raises(SteeringError, match="finite"):
        emolens.Steering(reg4, {"calm": 10 ** 400})
    with pytest.warns(SteeringWarning, match="mean residual norm"):
        emolens.Steering(reg4, {"calm": 1e30})


def test_generate_checks_context_and_seed_before_generating(tiny):
    import emolens
    from emolens.errors import InputError

    n_ctx = int(tiny.cfg.n_ctx)
    with pytest.raises(InputError, match="context"):
        emolens.generate(tiny, "hello", max_new_tokens=n_ctx)
    # a string seed: the test run's type checker refuses it at the call; the library itself
    # must refuse it too (the old code turned "1" into 1), so call below the checker
    from emolens.generation import generate

    with pytest.raises(InputError, match="seed"):
        getattr(generate, "__wrapped__", generate)(tiny, "hello", max_new_tokens=2, seed="1")


@pytest.mark.parametrize("spec", [{"calm": "x"}, {"calm": None}, {"calm": float("nan")}, {3: 1.0}])
def test_malformed_control_vector_spec(tmp_path, reg4, spec):
    from emolens.errors import SteeringError
    from emolens.steering.control_vectors import export_control_vector

    with pytest.raises(SteeringError):
        export_control_vector(reg4, spec, tmp_path / "cv.gguf")


# ---------------------------------------------------------------- bug 15: outputs checked first
def test_outputs_are_checked_before_the_work(tmp_path, reg4):
    from emolens.errors import InputError, SteeringError
    from emolens.steering.control_vectors import export_control_vector
    from emolens.views import Report

    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    with pytest.raises(InputError, match="is a folder"):
        Report("t").save(tmp_path)
    with pytest.raises(InputError, match="is a file"):
        Report("t").save(a_file / "r.html")
    with pytest.raises(SteeringError, match="is a folder"):
        export_control_vector(reg4, "calm", tmp_path)
    assert a_file.read_text() == "x"


# ---------------------------------------------------------------- the report's network check
@pytest.mark.parametrize("fragment", [
    '<img srcset="a.png 1x, https://e.com/b.png 2x">',
    '<object data="https://e.com/x"></object>',
    '<form action="https://e.com/"><button>x</button></form>',
    '<meta http-equiv="refresh" content="0;url=https://e.com">',
    '<img src="&#104;ttps://e.com/x.png">',
    '<img src="&#x2F;&#x2F;e.com/x.png">',
    "<div style=\"background: image-set('https://e.com/a.png' 1x)\"></div>",
    '<div style="background:url(\\68 ttps://e.com/a.png)"></div>',
    '<svg><image href="https://e.com/x.png"/></svg>',
    '<video poster="https://e.com/p.png"></video>',
])
def test_report_refuses_every_network_load(fragment):
    from emolens.errors import InputError
    from emolens.views import Report

    r = Report("t")
    r.add_section("s", "S", "text")
    with pytest.raises(InputError, match="network"):
        r.add_html(fragment)


def test_report_keeps_offline_html():
    from emolens.views import Report

    r = Report("t")
    r.add_section("s", "S", "text")
    r.add_html('<a href="https://e.com">a link</a> <img src="data:image/png;base64,AAAA">')
