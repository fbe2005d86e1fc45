"""EmotionRegistry: lookups, combinations, persistence (atomic, hashed, no pickle), model checks."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emolens
from emolens.errors import EmolensError, ModelMismatchError, RegistryError
from emolens.registry import META_FILE, EmotionRegistry
from emolens.sites import Site


def make_registry(model=None, n_layers=4, d=64, emotions=("calm", "desperate", "happy"), seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_layers, len(emotions), d, generator=g)
    sites = [Site(i, f"blocks.{i}.hook_resid_post") for i in range(n_layers)]
    meta = ({"model": emolens.model_provenance(model).to_dict()} if model is not None
            else {"model": {"n_layers": n_layers}})  # negative layers count from the model's
    return EmotionRegistry(dirs, list(emotions), sites, torch.arange(1, n_layers + 1.0),
                           metadata=meta, center=torch.randn(n_layers, d, generator=g))


def test_vectors_are_unit_and_lookups_work():
    reg = make_registry()
    assert reg.emotions == ["calm", "desperate", "happy"] and reg.layers == [0, 1, 2, 3]
    assert reg.default_layer == 2  # two-thirds of the way through
    v = reg.vector("calm")
    assert v.shape == (64,) and v.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(reg.matrix(1)[1], reg.vector("desperate", layer=1))
    assert reg.vector("calm", layer="blocks.3.hook_resid_post").equal(reg.vector("calm", 3))
    assert reg.mean_norm(0) == 1.0 and reg.mean_norm(-1) == 4.0
    combo = reg.vector({"calm": 1, "desperate": -1}, layer=0)
    expected = reg.vector("calm", 0) - reg.vector("desperate", 0)
    assert torch.allclose(combo, expected / expected.norm())


def test_lookup_errors_are_specific():
    reg = make_registry()
    with pytest.raises(RegistryError, match="did you mean 'calm'"):
        reg.vector("clam")
    with pytest.raises(RegistryError, match=r"layer 7 is not in this registry.*\[0, 1, 2, 3\]"):
        reg.vector("calm", layer=7)
    with pytest.raises(RegistryError, match="cancels out"):
        reg.vector({"calm": 0.0})


def test_subset_rename_combination():
    reg = make_registry()
    sub = reg.subset(["happy", "calm"], layers=[1, 3])
    assert sub.emotions == ["happy", "calm"] and sub.layers == [1, 3]
    assert torch.equal(sub.vector("calm", 3), reg.vector("calm", 3))
    assert torch.equal(sub.center(1), reg.center(1))
    ren = reg.rename({"happy": "joyful"})
    assert ren.emotions == ["calm", "desperate", "joyful"]
    assert torch.equal(ren.vector("joyful"), reg.vector("happy"))
    comb = reg.with_combination("calm_minus_desperate", {"calm": 1, "desperate": -1})
    assert torch.allclose(comb.vector("calm_minus_desperate", 0),
                          reg.vector({"calm": 1, "desperate": -1}, 0))
    assert comb.metadata["derived"][-1]["op"] == "combine"
    with pytest.raises(RegistryError, match="already exists"):
        reg.with_combination("calm", {"happy": 1})


def test_save_load_round_trip_and_overwrite(tmp_path):
    reg = make_registry()
    reg.metadata["validation"] = {"accuracy_by_layer": {"0": 0.5}}
    reg.save(tmp_path / "r")
    again = EmotionRegistry.load(tmp_path / "r")
    assert again.emotions == reg.emotions and again.layers == reg.layers
    assert torch.equal(again.tensor(), reg.tensor())
    assert torch.equal(again.mean_norms, reg.mean_norms)
    assert torch.equal(again.center(2), reg.center(2))
    assert again.default_layer == reg.default_layer
    assert again.validation == {"accuracy_by_layer": {"0": 0.5}}
    # overwrite with different content: exactly one tensor file remains and it loads
    make_registry(seed=1).save(tmp_path / "r")
    files = sorted(p.name for p in (tmp_path / "r").iterdir() if p.name != ".registry.lock")
    assert len(files) == 2 and META_FILE in files
    assert not torch.equal(EmotionRegistry.load(tmp_path / "r").tensor(), reg.tensor())


def test_edited_or_truncated_files_are_refused(tmp_path):
    folder = make_registry().save(tmp_path / "r")
    meta = json.loads((folder / META_FILE).read_text())
    tensor = folder / meta["tensor_file"]
    data = tensor.read_bytes()
    tensor.write_bytes(data[: len(data) // 2])
    with pytest.raises(RegistryError, match="sha256"):
        EmotionRegistry.load(folder)
    tensor.write_bytes(data)
    EmotionRegistry.load(folder)
    (folder / META_FILE).write_text(json.dumps(meta)[:-20])
    with pytest.raises(RegistryError, match="not valid JSON"):
        EmotionRegistry.load(folder)
    del meta["sites"]
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="lacks the field 'sites'"):
        EmotionRegistry.load(folder)
    with pytest.raises(RegistryError, match="not a registry folder"):
        EmotionRegistry.load(tmp_path / "nothing")


def test_model_mismatch(tiny):
    reg = make_registry(tiny)
    reg.check_model(tiny)
    other = make_registry()
    other.metadata["model"] = {**emolens.model_provenance(tiny).to_dict(), "model_id": "other"}
    with pytest.raises(ModelMismatchError, match="model id"):
        other.check_model(tiny)
    other.check_model(tiny, strict=False)
    wide = make_registry(d=32)
    with pytest.raises(ModelMismatchError, match="d_model"):
        wide.check_model(tiny, strict=False)


def test_constructor_validates():
    sites = [Site(0, "blocks.0.hook_resid_post")]
    with pytest.raises(RegistryError, match="duplicate"):
        EmotionRegistry(torch.randn(1, 2, 4), ["a", "a"], sites, torch.ones(1))
    with pytest.raises(RegistryError, match="NaN"):
        EmotionRegistry(torch.full((1, 2, 4), float("nan")), ["a", "b"], sites, torch.ones(1))
    with pytest.raises(RegistryError, match="zero-length"):
        EmotionRegistry(torch.zeros(1, 2, 4), ["a", "b"], sites, torch.ones(1))


def test_html_repr_escapes():
    reg = make_registry(emotions=("<b>x</b>", "calm"))
    out = reg._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in out and "<b>x</b>" not in out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.dictionaries(st.sampled_from(["format_version", "emotions", "sites", "tensor_file",
                                     "tensor_sha256", "default_layer"]),
                    st.one_of(st.integers(-3, 3), st.text(max_size=5), st.lists(st.integers(), max_size=3),
                              st.none()), max_size=6).map(lambda d: json.dumps(d).encode()),
))
def test_loader_fuzz_only_raises_emolens_errors(tmp_path_factory, edit):
    folder = make_registry().save(tmp_path_factory.mktemp("fuzz"))
    (folder / META_FILE).write_bytes(edit)
    try:
        EmotionRegistry.load(folder)
    except EmolensError:
        pass
