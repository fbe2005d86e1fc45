"""Streaming top-k scan: exact against a brute-force readout, mergeable, every input kind."""
from __future__ import annotations

import json

import pytest
import torch

from emolens.errors import CorpusError, InputError
from emolens.readout import read_emotions
from emolens.readout.scan import TopExamples, iter_texts, pooled_scores, top_examples
from emolens.registry import EmotionRegistry
from emolens.stimuli import load_mixed_records, load_mixed_texts

TEXTS = [f"line {i}: " + ["rain on the roof", "sun over hills", "a quiet room"][i % 3]
         + " again" * (i % 4) for i in range(17)]


@pytest.fixture(scope="module")
def reg(tiny):
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(2, 3, tiny.cfg.d_model, generator=g)
    from emolens.sites import resolve_sites

    return EmotionRegistry(dirs, ["a", "b", "c"], resolve_sites(tiny, [1, 2]), torch.ones(2),
                           center=torch.randn(2, tiny.cfg.d_model, generator=g),
                           metadata={"model": {"model_id": "emolens-tiny-native-L4-D64-seed0"}})


def _brute(tiny, reg, texts, layer, k):
    """Reference: full readout, the best content token of every text, sorted."""
    ro = read_emotions(tiny, reg, texts, layer=layer, strict=False)
    s = ro.at(layer).masked_fill(~ro.content_mask[..., None], float("-inf"))
    out = {}
    for e, name in enumerate(reg.emotions):
        vals, pos = s[..., e].max(1)
        order = sorted(range(len(texts)), key=lambda i: (-float(vals[i]), i))[:k]
        out[name] = [(i, int(pos[i]), float(vals[i])) for i in order]
    return out


def test_top_examples_match_a_brute_force_readout(tiny, reg):
    res = top_examples(tiny, reg, TEXTS, k=4, layer=2, batch_size=3, progress=False,
                       strict=False)
    ref = _brute(tiny, reg, TEXTS, 2, 4)
    for e in reg.emotions:
        got = [(x.text_index, x.position) for x in res.examples[e]]
        assert got == [(i, p) for i, p, _ in ref[e]]
        assert [x.score for x in res.examples[e]] == pytest.approx([v for *_, v in ref[e]],
                                                                   abs=1e-5)
    assert res.n_texts == len(TEXTS) and res.layer == 2
    x = res.examples["a"][0]
    assert x.scores[x.target] == pytest.approx(x.score, abs=1e-6)
    assert len(x.tokens) == len(x.scores) <= 12 + 4 + 1
    assert "[[" in x.context()


def test_merge_of_shards_equals_the_whole_and_round_trips(tiny, reg):
    kw = dict(k=3, layer=1, window=2, one_per_text=False, progress=False, strict=False)
    whole = top_examples(tiny, reg, TEXTS, **kw)
    a = top_examples(tiny, reg, TEXTS[:8], **kw)
    b = top_examples(tiny, reg, TEXTS[8:], **kw)
    for xs in b.examples.values():
        for x in xs:
            x.text_index += 8
    merged = a.merge(b)
    for e in reg.emotions:
        assert [(x.text_index, x.position) for x in merged.examples[e]] == \
            [(x.text_index, x.position) for x in whole.examples[e]]
    assert merged.n_tokens == whole.n_tokens
    back = TopExamples.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert back.to_dict() == whole.to_dict()
    assert "does not show" in whole.statement()
    html = whole._repr_html_()
    assert "ColoredTokens" in html and html.count("emolens-cv") == 9
    with pytest.raises(InputError, match="different k"):
        whole.merge(top_examples(tiny, reg, TEXTS[:2], **{**kw, "k": 2}))


def test_files_and_iterables_stream_the_same_texts(tiny, reg, tmp_path):
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS) + "\n\n")
    csv = tmp_path / "t.csv"
    csv.write_text("id,text\n" + "".join(f"{i},\"{t}\"\n" for i, t in enumerate(TEXTS)))
    txt = tmp_path / "t.txt"
    txt.write_text("\n".join(TEXTS))
    for src in (jl, str(csv), txt, iter(TEXTS), ({"text": t} for t in TEXTS)):
        assert list(iter_texts(src)) == TEXTS
    a = top_examples(tiny, reg, jl, k=2, progress=False, strict=False)
    b = top_examples(tiny, reg, TEXTS, k=2, progress=False, strict=False)
    assert a.to_dict() == b.to_dict()
    p = pooled_scores(tiny, reg, txt, progress=False, strict=False)
    ref = read_emotions(tiny, reg, TEXTS, strict=False).pooled()
    assert torch.allclose(p, ref, atol=1e-5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(InputError, match="line 2: no field 'text'"):
        list(iter_texts(bad))
    with pytest.raises(InputError, match="unknown file type"):
        (tmp_path / "t.pdf").write_text("x")
        list(iter_texts(tmp_path / "t.pdf"))
    with pytest.raises(InputError, match="window"):
        top_examples(tiny, reg, TEXTS, window=(-1, 2), strict=False)
    with pytest.raises(InputError, match="k must be"):
        top_examples(tiny, reg, TEXTS, k=0, strict=False)


def test_long_texts_are_truncated_and_counted(tiny, reg):
    res = top_examples(tiny, reg, ["word " * 200, "short text"], k=1, max_tokens=50,
                       progress=False, strict=False)
    assert res.truncated == 1 and res.n_tokens == 50 + len("short text") + 1
    assert all(x.position < 50 for xs in res.examples.values() for x in xs)


def test_mixed_collection_loads():
    recs = load_mixed_records()
    assert len(recs) >= 500 and len({r["id"] for r in recs}) == len(recs)
    assert {r["genre"] for r in recs} >= {"prose", "instructions", "code", "news"}
    code = load_mixed_texts(["code"])
    assert code and all(r["genre"] == "code" for r in load_mixed_records(["code"]))
    with pytest.raises(CorpusError, match="unknown genre"):
        load_mixed_texts(["poetry"])


def test_a_datasets_dataset_streams_like_a_list(tiny, reg):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"body": TEXTS})
    assert list(iter_texts(ds, field="body")) == TEXTS
    a = top_examples(tiny, reg, ds, field="body", k=2, progress=False, strict=False)
    b = top_examples(tiny, reg, TEXTS, k=2, progress=False, strict=False)
    assert a.to_dict() == b.to_dict()
