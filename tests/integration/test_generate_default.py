"""The story generator on the default model: a few real stories, well-formed and clean."""
from __future__ import annotations

import json

from emolens.stimuli import Corpus, ForbiddenMatcher, load_corpus, word_count
from emolens.stimuli.generate import GENERIC_FORBIDDEN, generate_stories


def test_generate_a_few_stories_with_the_default_model(default_model, tmp_path):
    out = tmp_path / "generated.jsonl"
    forbidden = load_corpus().forbidden
    # the 135M default model writes weak stories: a lower word minimum and two tries per slot;
    # the three slots are sampled as one left-padded batch
    summary = generate_stories(default_model, ["calm", "afraid", "proud"], ["beach day"], 1,
                               out_path=out, max_new_tokens=110, min_words=25, max_attempts=2,
                               batch_size=3, seed=0, progress=False)
    assert summary.slots == 3 and summary.skipped == 0
    assert summary.accepted + len(summary.unfilled) == 3
    assert summary.accepted >= 1, f"no story passed the filters: {summary}"
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == summary.accepted
    corpus = Corpus.from_jsonl(out, forbidden=forbidden)  # validates every record
    for rec in corpus.stories():
        assert rec.topic == "beach day" and rec.person in ("first", "third")
        assert 25 <= word_count(rec.text) <= 120 and "\n" not in rec.text
        matcher = ForbiddenMatcher([*forbidden[rec.emotion], *GENERIC_FORBIDDEN])
        assert matcher.find(rec.text) is None, rec.text
        assert rec.meta["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert rec.author == rec.meta["model"]  # generated stories name their author
    for line in lines:
        assert set(json.loads(line)) == {"id", "kind", "emotion", "topic", "person", "author",
                                         "text", "meta"}
    # a rerun finds the filled slots done and generates nothing
    filled = sorted({r.emotion for r in corpus.stories()})
    again = generate_stories(default_model, filled, ["beach day"], 1, out_path=out,
                             progress=False)
    assert again.skipped == len(filled) and again.accepted == 0
    assert out.read_text(encoding="utf-8").splitlines() == lines
