"""The small helpers that several stages share, each in one place (issue 14)."""
from __future__ import annotations

import json
import math

from emolens.geometry import affect_orient
from emolens.io import json_safe, safe_filename, write_json


def test_json_safe_replaces_non_finite_floats_and_stringifies_keys(tmp_path):
    obj = {"a": math.nan, 2: [1.5, math.inf, (-math.inf, "x")], "b": {"c": 0.25, 3: None}}
    got = json_safe(obj)
    assert got == {"a": None, "2": [1.5, None, [None, "x"]], "b": {"c": 0.25, "3": None}}
    write_json(tmp_path / "r.json", got)  # strict readers accept it
    assert json.loads((tmp_path / "r.json").read_text(),
                      parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))) == got


def test_safe_filename_keeps_only_portable_characters():
    assert safe_filename("HuggingFaceTB/SmolLM2-135M:q4_1 v2.gguf") == \
        "HuggingFaceTB_SmolLM2-135M_q4_1_v2.gguf"
    assert safe_filename("a..b-_c") == "a..b-_c"


def test_affect_orient_picks_highest_valence_and_arousal_among_rated():
    norms = {"happy": (0.9, 0.6), "calm": (0.7, 0.1), "afraid": (0.1, 0.95), "sad": (0.1, 0.2)}
    assert affect_orient(["sad", "calm", "afraid", "unrated"], norms) == \
        {"PC1": "calm", "PC2": "afraid"}
    assert affect_orient(["happy", "afraid"], norms) == {"PC1": "happy", "PC2": "afraid"}
    assert affect_orient(["unrated"], norms) == {}


def test_jsonl_files_walks_folders_in_order_and_names_the_bad_path(tmp_path):
    import pytest

    from emolens.errors import CorpusError
    from emolens.stimuli.corpus import jsonl_files
    from emolens.stimuli.speakers import load_dialogues

    (tmp_path / "d" / "sub").mkdir(parents=True)
    for rel in ("d/b.jsonl", "d/sub/a.jsonl", "d/a.jsonl", "d/notes.txt", "one.jsonl"):
        (tmp_path / rel).write_text("")
    got = jsonl_files([tmp_path / "one.jsonl", tmp_path / "d"])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == \
        ["one.jsonl", "d/a.jsonl", "d/b.jsonl", "d/sub/a.jsonl"]
    assert jsonl_files(str(tmp_path / "one.jsonl")) == [tmp_path / "one.jsonl"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="empty: folder holds no .jsonl files"):
        jsonl_files(tmp_path / "empty")
    with pytest.raises(CorpusError, match="missing.jsonl: file not found"):
        jsonl_files([tmp_path / "one.jsonl", tmp_path / "missing.jsonl"])
    with pytest.raises(CorpusError, match="folder holds no .jsonl files"):  # the same walk
        load_dialogues(tmp_path / "empty")
