"""Hostile probes of the registry's on-disk protocol (issue 17, bugs 1-2 and 4-9): every edit of
a saved registry loads as the identical registry or raises an ``EmolensError``; a save never
deletes a file it did not write; concurrent saves never pair one save's JSON with another's
tensors."""
from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import emolens
from emolens.errors import EmolensError, ModelMismatchError, RegistryError
from emolens.io import sha256_file
from emolens.registry import META_FILE, EmotionRegistry
from emolens.sites import Site


def make_registry(model=None, layers=(0, 1, 2, 3), d=64, emotions=("calm", "desperate", "happy"),
                  seed=0, n_layers=4):
    """A registry with provenance (of ``model``, else a made-up model of ``n_layers``)."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(len(layers), len(emotions), d, generator=g)
    sites = [Site(i, f"blocks.{i}.hook_resid_post") for i in layers]
    prov = (emolens.model_provenance(model).to_dict() if model is not None
            else {"model_id": "m", "n_layers": n_layers, "d_model": d, "weight_processing": "raw"})
    if n_layers is None:
        prov.pop("n_layers")
    return EmotionRegistry(dirs, list(emotions), sites, torch.arange(1, len(layers) + 1.0),
                           metadata={"model": prov, "validation": {"accuracy_by_layer": {"0": 0.5},
                                                                   "chance": 1 / 3}},
                           center=torch.randn(len(layers), d, generator=g))


_BOOKKEEPING = {"saved_at", "format_version", "emolens_version", "family", "name", "version",
                "default_layer", "d_model"}


def same(a: EmotionRegistry, b: EmotionRegistry, *, exact: bool = False) -> bool:
    """Same content; ``exact`` also compares the bookkeeping fields a save adds."""
    def md(r):
        return r.metadata if exact else {k: v for k, v in r.metadata.items()
                                         if k not in _BOOKKEEPING}
    return (a.emotions == b.emotions and a.sites == b.sites and a.default_layer == b.default_layer
            and a.family == b.family and a.name == b.name and a.version == b.version
            and torch.equal(a.tensor(), b.tensor()) and torch.equal(a.mean_norms, b.mean_norms)
            and all(torch.equal(a.center(s.layer), b.center(s.layer)) for s in a.sites)
            and md(a) == md(b))


def _meta(folder):
    return json.loads((folder / META_FILE).read_text())


def _write_meta(folder, meta):
    (folder / META_FILE).write_text(json.dumps(meta))


# ---------------------------------------------------------------- bug 1: save deletes foreign files
@pytest.mark.parametrize("victim", ["../VICTIM.txt", "ABS", META_FILE, "notes.safetensors"])
def test_save_never_deletes_a_file_it_did_not_write(tmp_path, victim):
    folder = make_registry().save(tmp_path / "r")
    outside = tmp_path / "VICTIM.txt"
    outside.write_text("precious")
    (folder / "notes.safetensors").write_text("the user's own file")
    meta = _meta(folder)
    meta["tensor_file"] = str(outside) if victim == "ABS" else victim
    _write_meta(folder, meta)
    make_registry(seed=1).save(folder)
    assert outside.read_text() == "precious"
    assert (folder / "notes.safetensors").read_text() == "the user's own file"
    assert same(EmotionRegistry.load(folder), make_registry(seed=1))


# ---------------------------------------------------------------- bug 2: damaged previous JSON
@pytest.mark.parametrize("damage", ["[1, 2]", "7", '{"tensor_file": 3}', '{"tensor_file": [1]}',
                                    "not json", '{"tensor_file": null}'])
def test_save_heals_a_damaged_folder_without_orphans(tmp_path, damage):
    folder = make_registry().save(tmp_path / "r")
    (folder / META_FILE).write_text(damage)
    for seed in (1, 2):
        make_registry(seed=seed).save(folder)
    assert same(EmotionRegistry.load(folder), make_registry(seed=2))
    tensors = sorted(p.name for p in folder.iterdir() if p.suffix == ".safetensors")
    assert tensors == [_meta(folder)["tensor_file"]]  # the orphans of earlier saves are gone


# ---------------------------------------------------------------- bug 4: edited identity fields
def _rehash(folder):
    meta = _meta(folder)
    meta["tensor_sha256"] = sha256_file(folder / meta["tensor_file"])
    _write_meta(folder, meta)


@pytest.mark.parametrize("edit", ["swap_hooks", "attn_out", "missing_hook", "emotions_swapped",
                                  "layer_mismatch", "model_id"])
def test_edited_json_with_valid_tensor_sha_is_refused(tmp_path, edit):
    folder = make_registry().save(tmp_path / "r")
    meta = _meta(folder)
    sites = meta["sites"]
    if edit == "swap_hooks":
        sites[0]["hook"], sites[1]["hook"] = sites[1]["hook"], sites[0]["hook"]
    elif edit == "attn_out":
        sites[2]["hook"] = "blocks.2.hook_attn_out"
    elif edit == "missing_hook":
        sites[2]["hook"] = "blocks.2.hook_nothing"
    elif edit == "emotions_swapped":
        meta["emotions"] = meta["emotions"][::-1]
    elif edit == "layer_mismatch":
        sites[3]["layer"] = 2
    elif edit == "model_id":
        meta["model"]["model_id"] = "someone-else"
    _write_meta(folder, meta)  # tensor file and its sha untouched
    with pytest.raises(RegistryError):
        EmotionRegistry.load(folder)


def test_check_model_checks_every_sites_hook(tiny):
    reg = make_registry(tiny)
    reg.check_model(tiny)
    for bad in ("blocks.1.hook_nothing", "blocks.2.hook_resid_post", "hook_embed"):
        sites = [s if s.layer != 1 else Site(1, bad) for s in reg.sites]
        with pytest.raises(RegistryError):
            EmotionRegistry(reg.tensor(), reg.emotions, sites, reg.mean_norms,
                            metadata=reg.metadata).check_model(tiny, strict=False)
    class NoResidMid:  # a model surface without one of the registry's hooks
        cfg = tiny.cfg
        hook_dict = {k: v for k, v in tiny.hook_dict.items() if k != "blocks.1.hook_resid_post"}
    with pytest.raises(ModelMismatchError, match="no hook 'blocks.1.hook_resid_post'"):
        reg.check_model(NoResidMid(), strict=False)
    beyond = make_registry(tiny, layers=(0, 1, 7), n_layers=None)
    with pytest.raises(ModelMismatchError, match="blocks.7.hook_resid_post"):
        beyond.check_model(tiny, strict=False)


# ---------------------------------------------------------------- bug 5: concurrency
def test_two_writers_one_reader_never_mix_halves(tmp_path):
    folder = tmp_path / "r"
    regs = [make_registry(seed=1, emotions=("a", "b", "c")),
            make_registry(seed=2, emotions=("x", "y", "z"))]
    regs[0].save(folder)
    by_names = {tuple(r.emotions): r for r in regs}
    stop = time.monotonic() + 2.0
    failures: list[BaseException] = []
    loads = mixed = 0

    def writer(reg):
        try:
            while time.monotonic() < stop:
                reg.save(folder)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=writer, args=(r,)) for r in regs]
    for t in threads:
        t.start()
    while time.monotonic() < stop:
        got = EmotionRegistry.load(folder)
        loads += 1
        mixed += not same(got, by_names[tuple(got.emotions)])
    for t in threads:
        t.join()
    assert not failures, failures
    assert loads > 20 and mixed == 0
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
        sorted([META_FILE, _meta(folder)["tensor_file"]])


# ---------------------------------------------------------------- bug 6: tensors validated
def _edit_tensors(folder, **changes):
    meta = _meta(folder)
    tpath = folder / meta["tensor_file"]
    from safetensors import safe_open

    with safe_open(str(tpath), "pt") as f:
        header = f.metadata()
    tensors = load_file(str(tpath))
    tensors.update(changes)
    save_file(tensors, str(tpath), metadata=header)
    _rehash(folder)


@pytest.mark.parametrize("field,value", [
    ("mean_norm", torch.tensor([1.0, float("nan"), 3.0, 4.0])),
    ("mean_norm", torch.tensor([1.0, float("inf"), 3.0, 4.0])),
    ("mean_norm", torch.tensor([1.0, -2.0, 3.0, 4.0])),
    ("mean_norm", torch.tensor(2.0)),
    ("mean_norm", torch.ones(4, 2)),
    ("center", torch.full((4, 64), float("nan"))),
    ("center", torch.ones(4, 63)),
    ("center", torch.ones(64)),
    ("directions", torch.ones(4, 3, 63)),
])
def test_bad_tensors_with_matching_sha_are_refused(tmp_path, field, value):
    folder = make_registry().save(tmp_path / "r")
    _edit_tensors(folder, **{field: value})
    with pytest.raises(RegistryError):
        EmotionRegistry.load(folder)


def test_constructor_refuses_bad_mean_norm():
    sites = [Site(0, "blocks.0.hook_resid_post")]
    for bad in (torch.tensor([float("nan")]), torch.tensor([-1.0]), torch.tensor([0.0])):
        with pytest.raises(RegistryError, match="mean_norm"):
            EmotionRegistry(torch.randn(1, 2, 4), ["a", "b"], sites, bad)


# ---------------------------------------------------------------- bug 7: typed metadata
@pytest.mark.parametrize("field,value", [("model", "oops"), ("validation", "x"), ("method", "x"),
                                         ("corpus", 3), ("name", 5), ("family", []),
                                         ("validation", {"accuracy_by_layer": {"0": "high"}}),
                                         ("model", {"model_id": 3})])
def test_wrongly_typed_metadata_is_refused(field, value):
    sites = [Site(0, "blocks.0.hook_resid_post")]
    with pytest.raises(RegistryError, match=field):
        EmotionRegistry(torch.randn(1, 2, 4), ["a", "b"], sites, torch.ones(1),
                        metadata={field: value})


def test_repr_works_on_every_loadable_registry(tmp_path):
    reg = make_registry()
    assert "calm" in reg._repr_html_() and "m" in repr(reg)


# ---------------------------------------------------------------- bug 8: pathological JSON
def test_deep_json_and_long_names_are_registry_errors(tmp_path):
    folder = make_registry().save(tmp_path / "r")
    (folder / META_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RegistryError):
        EmotionRegistry.load(folder)
    meta = make_registry().to_metadata()
    meta.update(tensor_file="a" * 5000 + ".safetensors", tensor_sha256="0" * 64)
    _write_meta(folder, meta)
    with pytest.raises(RegistryError, match="tensor_file"):
        EmotionRegistry.load(folder)


# ---------------------------------------------------------------- bug 9: subset on a loaded registry
def test_subset_without_the_default_layer_on_a_loaded_registry(tmp_path):
    reg = make_registry()
    assert reg.default_layer == 2
    loaded = EmotionRegistry.load(reg.save(tmp_path / "r"))
    sub = loaded.subset(layers=[0, 1])
    assert sub.layers == [0, 1] and sub.default_layer == 1


# ---------------------------------------------------------------- rough edges of registry.json
@pytest.mark.parametrize("edit", [
    lambda m: m.update(emotions=["", "b", "c"]),
    lambda m: m.update(emotions=["a\x00", "b", "c"]),
    lambda m: m["sites"][0].update(layer=10 ** 400),
    lambda m: m.update(default_layer=-1),
    lambda m: m.update(default_layer=9),
])
def test_loose_registry_json_is_refused(tmp_path, edit):
    folder = make_registry().save(tmp_path / "r")
    meta = _meta(folder)
    edit(meta)
    _write_meta(folder, meta)
    with pytest.raises(RegistryError):
        EmotionRegistry.load(folder)


def test_duplicate_keys_are_refused(tmp_path):
    folder = make_registry().save(tmp_path / "r")
    text = (folder / META_FILE).read_text()
    (folder / META_FILE).write_text(text.replace('"family":', '"family": "persona", "family":', 1))
    with pytest.raises(RegistryError, match="duplicate"):
        EmotionRegistry.load(folder)


@pytest.mark.parametrize("bad", ["", "a\nb", "\x07"])
def test_constructor_refuses_bad_names(bad):
    sites = [Site(0, "blocks.0.hook_resid_post")]
    with pytest.raises(RegistryError, match="name"):
        EmotionRegistry(torch.randn(1, 2, 4), [bad, "b"], sites, torch.ones(1))


def test_sites_must_name_their_layer():
    for site in (Site(1, "blocks.0.hook_resid_post"), Site(-1, "hook_embed"),
                 Site(0, "blocks.0.hook_resid_post.x")):
        with pytest.raises(RegistryError):
            EmotionRegistry(torch.randn(1, 2, 4), ["a", "b"], [site], torch.ones(1))


# ---------------------------------------------------------------- negative layers (issue 14)
def test_negative_layers_count_from_the_models_layers():
    reg = make_registry(layers=(3, 5, 10), n_layers=12)
    assert reg.site(-2).layer == 10 and reg.site(-7).layer == 5
    with pytest.raises(RegistryError, match="layer 11"):
        reg.site(-1)
    unknown = EmotionRegistry(reg.tensor(), reg.emotions, reg.sites, reg.mean_norms)
    with pytest.raises(RegistryError, match="layer count"):
        unknown.site(-1)


def test_layer_must_be_a_real_int():
    reg = make_registry()
    for bad in (True, "1"):
        with pytest.raises(RegistryError):
            reg.site(bad)
    for bad in (True, "1"):
        with pytest.raises(RegistryError):
            reg.subset(layers=[bad])


# ---------------------------------------------------------------- the property test
_EDIT_KEYS = ["format_version", "emotions", "sites", "tensor_file", "tensor_sha256",
              "default_layer", "family", "name", "model", "validation", "d_model", "saved_at"]
_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.floats(allow_nan=True),
              st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["layer", "hook", "model_id",
                                                             "n_layers", "accuracy_by_layer",
                                                             "0", "chance"]), inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(json_edits=st.dictionaries(st.sampled_from(_EDIT_KEYS), st.one_of(_values, st.just("DEL")),
                                  max_size=3),
       tensor_edit=st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.integers(0, 255))),
       truncate=st.one_of(st.none(), st.integers(0, 10_000)),
       rehash=st.booleans())
def test_any_edit_gives_the_identical_registry_or_an_emolens_error(
        tmp_path_factory, json_edits, tensor_edit, truncate, rehash):
    folder = make_registry().save(tmp_path_factory.mktemp("prop"))
    reg = EmotionRegistry.load(folder)
    meta = _meta(folder)
    tpath = folder / meta["tensor_file"]
    data = bytearray(tpath.read_bytes())
    if tensor_edit is not None:
        pos, byte = tensor_edit
        data[pos % len(data)] = byte
    if truncate is not None:
        data = data[: truncate % (len(data) + 1)]
    tpath.write_bytes(bytes(data))
    for k, v in json_edits.items():
        if v == "DEL":
            meta.pop(k, None)
        else:
            meta[k] = v
    if rehash:
        meta["tensor_sha256"] = sha256_file(tpath)
    _write_meta(folder, meta)
    try:
        got = EmotionRegistry.load(folder)
    except EmolensError:
        return
    assert same(got, reg, exact=True)
    repr(got)
    got._repr_html_()
