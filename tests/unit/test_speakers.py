"""Speaker families: the bundled dialogues and their validator, the turn readings, and the
present/other-speaker registries against story directions (planted effect and null)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emolens.errors import CorpusError, InputError
from emolens.extraction.speakers import (
    FAMILIES,
    extract_speaker_emotions,
    speaker_story_cosines,
    turn_readings,
)
from emolens.stimuli.corpus import split_of
from emolens.stimuli.emotions import CORE_EMOTIONS
from emolens.stimuli.speakers import (
    SPEAKERS_DIR,
    dialogues_from_records,
    load_dialogues,
)


# ------------------------------------------------------------------------------ bundled data
def test_bundled_dialogues_cover_the_core_emotions_both_ways_with_corpus_splits():
    ds = load_dialogues()
    assert set(CORE_EMOTIONS) <= set(ds.emotions)
    for emo, row in ds.counts().items():
        assert row["user"] >= 10 and row["assistant"] >= 10, emo
    assert all(d.split == split_of(d.id) for d in ds)
    assert len({d.id for d in ds}) == len(ds)
    # the held-out union is what the corpus calls validation
    assert {d.id for d in ds.select(split="validation")} == \
        {d.id for d in ds if d.split in ("dev", "test")}
    assert ds.select("sad", speaker="assistant")[0].turns("other") == [2]
    assert ds.select("sad", speaker="user")[0].turns("present") == [0]


def _bundled_record(emotion="sad", speaker="user"):
    for line in (SPEAKERS_DIR / f"{emotion}.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["speaker"] == speaker:
            return rec
    raise AssertionError("no record")


def test_validator_rejects_a_dialogue_that_names_its_emotion():
    rec = _bundled_record("sad", "user")
    dialogues_from_records([rec])  # the record as bundled is valid
    bad = json.loads(json.dumps(rec))
    bad["messages"][0]["content"] += " I have never been this unhappy."
    with pytest.raises(CorpusError, match="forbidden word 'unhappy'"):
        dialogues_from_records([bad])
    # the assistant side of an assistant-expressing dialogue is checked the same way
    rec = _bundled_record("afraid", "assistant")
    bad = json.loads(json.dumps(rec))
    bad["messages"][1]["content"] += " I was terrified."
    with pytest.raises(CorpusError, match="messages\\[1\\].*terrified"):
        dialogues_from_records([bad])


def test_validator_keeps_the_other_side_neutral_and_the_turn_order_readable():
    rec = _bundled_record("sad", "user")
    bad = json.loads(json.dumps(rec))
    bad["messages"][1]["content"] = "Try not to worry; the form is on the council website."
    with pytest.raises(CorpusError, match="must stay neutral.*worry"):
        dialogues_from_records([bad])
    bad = json.loads(json.dumps(rec))
    bad["speaker"] = "assistant"  # then the user never speaks after the assistant
    with pytest.raises(CorpusError, match="must speak after"):
        dialogues_from_records([bad])
    bad = json.loads(json.dumps(rec))
    bad["messages"][1]["role"] = "user"
    with pytest.raises(CorpusError, match="alternate"):
        dialogues_from_records([bad])
    with pytest.raises(CorpusError, match="duplicate id"):
        dialogues_from_records([rec, rec])
    twin = json.loads(json.dumps(rec))
    twin["id"] = rec["id"] + "-copy"
    with pytest.raises(CorpusError, match="repeat dialogue"):
        dialogues_from_records([rec, twin])
    bad = json.loads(json.dumps(rec))
    bad["split"] = "test" if split_of(rec["id"]) == "train" else "train"
    with pytest.raises(CorpusError, match="derived from the id"):
        dialogues_from_records([bad])


# ------------------------------------------------------------------------------ readings
def test_turn_readings_are_the_dialogues_own_activations_at_that_turn(tiny):
    from emolens.tokens import to_inputs

    d = load_dialogues().select("calm", speaker="assistant")[0]
    site = "blocks.2.hook_resid_post"
    full = to_inputs(tiny, [d.chat()])
    with torch.no_grad():
        _, cache = tiny.run_with_cache(full.tokens, names_filter=[site])
    whole = cache[site][0]
    rendered = full.texts[0]
    for which, turn in (("present", 1), ("other", 2)):
        texts, skipped = turn_readings(tiny, d, which, positions_per_turn=5)
        assert skipped == 0 and len(texts) == 5
        content = d.messages[turn][1]
        start = rendered.index(content)
        for t in texts:
            b = to_inputs(tiny, [t])  # the cut text is the dialogue's own tokens up to a point
            n = b.tokens.shape[1]
            assert b.tokens[0].tolist() == full.tokens[0, :n].tolist()
            read = tiny.tokenizer.decode(full.tokens[0, :n].tolist())
            assert start < len(read) <= start + len(content)  # inside this turn's content
            with torch.no_grad():
                _, c = tiny.run_with_cache(b.tokens, names_filter=[site])
            torch.testing.assert_close(c[site][0, -1], whole[n - 1], atol=1e-4, rtol=1e-4)
        assert texts[-1].endswith(content)  # the turn's last token is always read
    with pytest.raises(InputError, match="speaker family"):
        turn_readings(tiny, d, "both")


# ------------------------------------------------------------------------------ planted effect
EMOS = ("e0", "e1", "e2", "e3")
MARKS = ("!", "?", "#", "%")
WORDS = ["the", "tea", "moon", "runs", "blue", "cat", "today", "under", "slowly", "a", "map",
         "door", "rain", "bus", "red"]


def _filler(rng, n=16):
    return " ".join(rng.choice(WORDS, n))


def _dialogues(marker_of, n_per=8, seed=0):
    """Dialogues whose expressing turn carries a run of a marker character; the neutral reply
    is the same sentence everywhere. ``marker_of(emotion_index, k)`` picks the marker."""
    rng = np.random.default_rng(seed)
    recs = []
    for c, e in enumerate(EMOS):
        for k in range(n_per):
            mark = marker_of(c, k) * 12
            user_side = k % 2 == 0
            expr = f"{_filler(rng)} {mark} {_filler(rng, 4)} {mark}"
            msgs = ([("user", expr), ("assistant", "noted, the answer is on the map")]
                    if user_side else
                    [("user", "what about the map"), ("assistant", expr),
                     ("user", "noted, the answer is on the map")])
            recs.append({"id": f"dialogue-{e}-{k}", "kind": "dialogue", "emotion": e,
                         "speaker": "user" if user_side else "assistant",
                         "messages": [{"role": r, "content": t} for r, t in msgs]})
    return dialogues_from_records(recs, forbidden={e: [e] for e in EMOS})


@pytest.fixture(scope="module")
def story_registry(tiny):
    from emolens.extraction.extract import extract_emotions

    rng = np.random.default_rng(7)
    texts = {e: [f"{_filler(rng)} {m * 12} {_filler(rng, 6)}" for _ in range(8)]
             for e, m in zip(EMOS, MARKS)}
    return extract_emotions(tiny, texts, progress=False, validate=False, neutral=[],
                            default_layer=2)


def _speaker(tiny, ds, which):
    return extract_speaker_emotions(tiny, which, ds, split=None, neutral=[], validate=False,
                                    positions_per_turn=4, default_layer=2, progress=False)


def test_a_planted_speaker_direction_is_found(tiny, story_registry):
    ds = _dialogues(lambda c, k: MARKS[c])
    present = _speaker(tiny, ds, "present")
    assert present.family == FAMILIES["present"] == "present_speaker"
    assert present.metadata["speaker"]["which"] == "present"
    assert present.metadata["corpus"]["n_dialogues"] == len(ds)
    res = speaker_story_cosines(story_registry, present, n_resamples=500, n_placebo=300)
    s = res.summary["present_speaker"]
    assert s["diagonal"] > 0.6 and s["gap_ci"][0] > 0.3
    # random directions of equal norm sit near 0, far below the planted cosine
    assert abs(s["placebo"]) < 0.05 and s["placebo_band"][1] < 0.3
    assert (np.diag(res.cosines["present_speaker"]) > 0.4).all()
    assert "closer than the mismatched" in res.statement
    json.dumps(res.to_dict())
    assert "present_speaker" in res._repr_html_()


def test_a_null_stays_null(tiny, story_registry):
    # every emotion's dialogues carry the same markers (two of each): the label says nothing
    ds = _dialogues(lambda c, k: MARKS[k % 4])
    present = _speaker(tiny, ds, "present")
    res = speaker_story_cosines(story_registry, present, n_resamples=500, n_placebo=300)
    s = res.summary["present_speaker"]
    assert s["gap_ci"][0] <= 0.0 <= s["gap_ci"][1] or abs(s["gap"]) < 0.2
    planted = speaker_story_cosines(story_registry, _speaker(
        tiny, _dialogues(lambda c, k: MARKS[c]), "present"), n_resamples=200, n_placebo=50)
    assert abs(s["diagonal"]) < 0.5 * planted.summary["present_speaker"]["diagonal"]


def test_other_speaker_reads_only_the_neutral_turns(tiny, story_registry):
    # the neutral side's text is identical in every dialogue; the emotion reaches its tokens
    # only through attention to the earlier turn, so the family is much weaker than present
    ds = _dialogues(lambda c, k: MARKS[c])
    other = _speaker(tiny, ds, "other")
    present = _speaker(tiny, ds, "present")
    assert other.family == "other_speaker"
    res = speaker_story_cosines(story_registry, {"present": present, "other": other},
                                n_resamples=300, n_placebo=100)
    assert res.summary["other"]["diagonal"] < res.summary["present"]["diagonal"]
    assert "present vs other" in res.between


def test_comparison_checks_its_inputs(tiny, story_registry):
    ds = _dialogues(lambda c, k: MARKS[c], n_per=4)
    present = _speaker(tiny, ds, "present")
    # label permutations move whole dialogues: one permutation group per training dialogue
    assert present.metadata["permutation_groups"] == present.metadata["speaker"]["n_dialogues"]
    assert present.metadata["speaker"]["n_readings"] > present.metadata["permutation_groups"]
    with pytest.raises(InputError, match="layer 9"):
        speaker_story_cosines(story_registry, present, layer=9)
    with pytest.raises(InputError, match="at least 3"):
        speaker_story_cosines(story_registry, present, emotions=["e0", "e1"])
    with pytest.raises(InputError, match="speaker family"):
        extract_speaker_emotions(tiny, "third", ds)


# ------------------------------------------------------------------------------ shuffled labels
def test_shuffled_out_is_the_label_permutation_fit_from_the_same_pass(tiny):
    from emolens.extraction.extract import extract_emotions

    rng = np.random.default_rng(3)
    texts = {e: [f"{_filler(rng, 8)} {m * 6}" for _ in range(5)] for e, m in zip(EMOS, MARKS)}
    kw = dict(layers=[1, 2], validate=False, neutral=[], progress=False, default_layer=2)
    out: list = []
    real = extract_emotions(tiny, texts, shuffled_control=2, shuffled_out=out, **kw)
    assert [r.metadata["shuffled_labels_seed"] for r in out] == [0, 1]
    assert all(r.family == real.family and r.default_layer == 2 for r in out)
    # seed k of the in-pass control is exactly the registry fitted with that permutation
    alone = extract_emotions(tiny, texts, label_permutation_seed=1, **kw)
    torch.testing.assert_close(out[1].matrix(2), alone.matrix(2), atol=1e-5, rtol=1e-5)
    # ... and the real fit is untouched by the controls
    plain = extract_emotions(tiny, texts, **kw)
    torch.testing.assert_close(real.matrix(2), plain.matrix(2))
    assert not torch.allclose(out[0].matrix(2), real.matrix(2), atol=1e-3)


def _experiment(tiny, story_registry, marker_of, **kw):
    from emolens.extraction.speakers import speaker_experiment

    return speaker_experiment(tiny, story_registry, dialogues=_dialogues(marker_of),
                              which="present", positions_per_turn=4, n_shuffled=4,
                              validate=False, neutral=[], n_resamples=300, n_placebo=100,
                              progress=False, **kw)


def test_shuffled_control_sits_near_zero_under_a_planted_effect(tiny, story_registry):
    res = _experiment(tiny, story_registry, lambda c, k: MARKS[c])
    s = res.summary["present_speaker"]
    assert s["n_shuffled"] == 4 and len(s["shuffled_by_seed"]) == 4
    assert s["diagonal"] > 0.6
    assert abs(s["shuffled"]) < 0.2 and s["shuffled_range"][1] < s["diagonal_ci"][0]
    assert s["shuffled_range"][0] <= s["shuffled"] <= s["shuffled_range"][1]
    assert "permuted emotion labels (4 seeds)" in res.statement
    assert "cosine is above what the shared dialogue content" in res.statement
    assert "shuffled labels" in res._repr_html_()
    d = json.loads(json.dumps(res.to_dict()))
    assert d["summary"]["present_speaker"]["shuffled_by_seed"] == s["shuffled_by_seed"]
    assert d["registries"]["present_speaker"]["family"] == "present_speaker"
    assert res.registries["present_speaker"].layers == [2]  # extracted at the story's layer
    fig = res.figure()
    assert len(fig.axes[0].patches) == len(EMOS)  # one bar per emotion


def test_shuffled_control_under_a_null_stays_null(tiny, story_registry):
    res = _experiment(tiny, story_registry, lambda c, k: MARKS[k % 4])
    s = res.summary["present_speaker"]
    assert abs(s["shuffled"]) < 0.2 and abs(s["diagonal"]) < 0.35
    assert "cosine is not above what the shared dialogue content" in res.statement


def test_speaker_experiment_checks_its_inputs(tiny, story_registry):
    from emolens.extraction.speakers import speaker_experiment

    ds = _dialogues(lambda c, k: MARKS[c], n_per=2)
    with pytest.raises(InputError, match="speaker family"):
        speaker_experiment(tiny, story_registry, which=("present", "both"), dialogues=ds)
    with pytest.raises(InputError, match="n_shuffled"):
        speaker_experiment(tiny, story_registry, dialogues=ds, n_shuffled=-1)
    with pytest.raises(InputError, match="layer 7"):
        speaker_experiment(tiny, story_registry, dialogues=ds, layer=7)
    with pytest.raises(InputError, match="at least 3"):
        speaker_experiment(tiny, story_registry, dialogues=ds, emotions=["e0", "e1"])
    present = _speaker(tiny, ds, "present")
    with pytest.raises(InputError, match="keyed like"):
        speaker_story_cosines(story_registry, present, shuffled={"other": [present]})


def test_select_dialogues_alternates_both_sides():
    from emolens.extraction.speakers import select_dialogues

    ds = load_dialogues()
    got = select_dialogues(ds, ["sad", "calm"], "train", 3)
    assert [d.emotion for d in got] == ["sad"] * 3 + ["calm"] * 3
    assert [d.speaker for d in got[:3]] == ["user", "assistant", "user"]
    assert all(d.split == "train" for d in got)
    assert len(select_dialogues(ds, ["sad"], "train", None)) == len(ds.select("sad", "train"))
