"""The corpus-growing job (issue 18): the recognisability check ranks each story's intended
emotion under a judge exactly as the judge's word log-probabilities order it, and grow_corpus
writes generated and kept files that record author and rank."""
from __future__ import annotations

import json

import pytest
import torch

from emolens.errors import InputError
from emolens.stimuli.recognise import recognisability, recognise_contexts

EMOTIONS = ["calm", "afraid", "happy", "angry", "sad"]
STORIES = ["She watched the tide roll in and let her shoulders drop.",
           "He heard the stairs creak and held his breath in the dark.",
           "They laughed all the way home, singing with the windows down."]


@pytest.fixture(scope="module")
def judge():
    from emolens.testing import tiny_model

    return tiny_model(seed=3, n_layers=2)


def test_ranks_follow_the_judges_word_logprobs(judge):
    from emolens.steering.judges import word_logprobs

    intended = ["calm", "afraid", "happy"]
    res = recognisability(judge, STORIES, intended, EMOTIONS, k=2)
    lp = word_logprobs(judge, recognise_contexts(judge, STORIES), EMOTIONS)
    order = torch.argsort(lp, dim=-1, descending=True)
    expected = [int((order[i] == EMOTIONS.index(e)).nonzero()[0, 0]) + 1
                for i, e in enumerate(intended)]
    assert res.ranks == expected
    assert res.passed == [r <= 2 for r in expected]
    assert res.top1 == sum(r == 1 for r in expected) / 3
    assert res.to_dict()["chance_pass"] == pytest.approx(2 / 5)
    everything = recognisability(judge, STORIES, intended, EMOTIONS, k=5)
    assert all(everything.passed)
    assert "<b>Recognisability</b>" in res._repr_html_()


def test_recognisability_checks_inputs(judge):
    with pytest.raises(InputError, match="one emotion per story"):
        recognisability(judge, STORIES, ["calm"], EMOTIONS)
    with pytest.raises(InputError, match="not among the candidates"):
        recognisability(judge, STORIES[:1], ["bored"], EMOTIONS)
    with pytest.raises(InputError, match="k must be"):
        recognisability(judge, STORIES[:1], ["calm"], EMOTIONS, k=9)


def test_grow_corpus_generates_checks_and_records_authors(judge, tmp_path):
    from test_corpus import STORY_A, STORY_B, ScriptedModel

    from emolens.stimuli import Corpus
    from emolens.stimuli.grow import grow_corpus

    author = ScriptedModel([STORY_A, STORY_B])
    summary = grow_corpus([author], judge, ["calm"], ["beach day"], 2, tmp_path, k=1,
                          candidates=EMOTIONS, batch_size=1, progress=False, min_words=5,
                          max_words=30, forbidden={"calm": ["calm"]})
    s = summary["scripted"]
    assert s["generated"] == 2 and s["accepted_this_call"] == 2
    gen = [json.loads(x) for x in (tmp_path / "generated-scripted.jsonl").read_text().splitlines()]
    assert [r["author"] for r in gen] == ["scripted", "scripted"]
    ranks = recognisability(judge, [r["text"] for r in gen], ["calm", "calm"], EMOTIONS).ranks
    kept_lines = (tmp_path / "kept-scripted.jsonl").read_text().splitlines()
    assert s["kept"] == len(kept_lines) == sum(r == 1 for r in ranks)
    for line in kept_lines:
        rec = json.loads(line)
        assert rec["meta"]["recognised_rank"] == 1 and rec["author"] == "scripted"
    c = Corpus.from_jsonl(tmp_path / "generated-scripted.jsonl", forbidden={"calm": ["calm"]})
    assert {r.author for r in c.stories()} == {"scripted"}
    # a second call resumes: nothing new is generated, the kept file is rebuilt the same
    again = grow_corpus([author], judge, ["calm"], ["beach day"], 2, tmp_path, k=1,
                        candidates=EMOTIONS, batch_size=1, progress=False, min_words=5,
                        max_words=30, forbidden={"calm": ["calm"]})
    assert again["scripted"]["accepted_this_call"] == 0
    assert (tmp_path / "kept-scripted.jsonl").read_text().splitlines() == kept_lines
    with pytest.raises(InputError, match="also an author"):
        grow_corpus(["smollm2-135m"], "smollm2-135m", ["calm"], ["x"], 1, tmp_path)
