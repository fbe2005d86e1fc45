"""evaluate(): the extraction validation rule on held-out labelled texts, its statistics, the
data-file loaders and the ``emolens evaluate`` command, on the tiny random model."""
from __future__ import annotations

import json
import types

import pytest
import torch

import emolens
from emolens import stats
from emolens.errors import EmolensError, FormatError, InputError
from emolens.readout import Evaluation, evaluate, load_labelled
from emolens.registry import EmotionRegistry
from emolens.sites import Site
from emolens.tokens import to_inputs

EMOTIONS = ["calm", "afraid", "sad", "happy"]  # registry order; the data use the first three
TEXTS = [
    "the lake was still and the evening slow",
    "we sat by the fire with nothing to do",
    "a long quiet walk through the pines",
    "soft rain on the roof all afternoon",
    [{"role": "user", "content": "I finally finished everything, I can rest now."}],
    "something scratched at the door in the dark",
    "the brakes failed on the hill",
    "a stranger followed me home",
    "the lights went out and the floor creaked",
    [{"role": "user", "content": "There is someone in my house, what do I do?"}],
    "my grandmother died this morning",
    "the letter said they would not take me",
    "our old dog did not wake up",
    "I sat alone at the empty table",
    [{"role": "user", "content": "Nobody came to my birthday."}],
]
LABELS = ["calm"] * 5 + ["afraid"] * 5 + ["sad"] * 5
DATA_NAMES = {"calm": "serenity", "afraid": "fear", "sad": "sadness"}  # a dataset's own names
PLANTED_LAYER = 2


def _site(layer):
    return f"blocks.{layer}.hook_resid_post"


def _text_means(model, layer, include_sink=False):
    """Reference: each text alone through run_with_cache, mean over its tokens after the first
    (the attention sink; no padding in a one-text batch)."""
    out = []
    for text in TEXTS:
        b = to_inputs(model, [text])
        _, cache = model.run_with_cache(b.tokens, names_filter=_site(layer))
        acts = cache[_site(layer)][0]
        out.append((acts if include_sink else acts[1:]).mean(0))
    return torch.stack(out)


@pytest.fixture(scope="module")
def means(tiny):
    return {layer: _text_means(tiny, layer) for layer in range(4)}


def _registry(tiny, dirs, center, default_layer=PLANTED_LAYER):
    sites = [Site(i, _site(i)) for i in range(4)]
    return EmotionRegistry(dirs, EMOTIONS, sites, torch.ones(4), center=center,
                           metadata={"model": emolens.model_provenance(tiny).to_dict()},
                           default_layer=default_layer)


@pytest.fixture(scope="module")
def random_reg(tiny, means):
    """Random directions, centred on the texts' own mean so predictions vary between texts."""
    g = torch.Generator().manual_seed(11)
    center = torch.stack([means[layer].mean(0) for layer in range(4)])
    return _registry(tiny, torch.randn(4, 4, 64, generator=g), center)


@pytest.fixture(scope="module")
def planted_reg(tiny, means):
    """At PLANTED_LAYER, directions solving (x_t - c) . w_e = [label_t == e] exactly (15 texts
    in 64 dimensions), so the centred rule classifies every text right; random elsewhere."""
    g = torch.Generator().manual_seed(5)
    dirs = torch.randn(4, 4, 64, generator=g)
    center = torch.randn(4, 64, generator=g)
    xc = (means[PLANTED_LAYER] - center[PLANTED_LAYER]).double()
    y = torch.zeros(len(TEXTS), 3, dtype=torch.float64)
    y[torch.arange(len(TEXTS)), torch.tensor([EMOTIONS.index(lab) for lab in LABELS])] = 1
    w = torch.linalg.pinv(xc) @ y  # [d_model, 3]
    assert torch.allclose(xc @ w, y, atol=1e-6)
    dirs[PLANTED_LAYER, :3] = w.T.float()
    return _registry(tiny, dirs, center)


def _hand_predictions(reg, means, layer, emotions):
    scores = (means[layer] - reg.center(layer)) @ reg.matrix(layer).T
    cols = [reg.emotions.index(e) for e in emotions]
    return scores, scores[:, cols].argmax(-1), scores.argmax(-1)


# ---------------------------------------------------------------------------------- the rule
def test_accuracy_equals_hand_computation_from_run_with_cache(tiny, random_reg, means):
    ev = evaluate(tiny, random_reg, TEXTS, LABELS, batch_size=4, progress=False)
    assert ev.layers == [0, 1, 2, 3] and ev.emotions == ["calm", "afraid", "sad"]
    truth = torch.tensor([ev.emotions.index(lab) for lab in LABELS])
    saw_fourth = False
    for li, layer in enumerate(ev.layers):
        scores, pred, pred_all = _hand_predictions(random_reg, means, layer, ev.emotions)
        assert torch.allclose(ev.scores[li], scores, atol=1e-4)
        assert torch.equal(ev.predictions[li], pred)
        assert torch.equal(ev.predictions_all[li], pred_all)
        assert ev.accuracy_by_layer[layer] == pytest.approx(float((pred == truth).double().mean()))
        truth_all = torch.tensor([EMOTIONS.index(lab) for lab in LABELS])
        assert ev.accuracy_all_by_layer[layer] == pytest.approx(
            float((pred_all == truth_all).double().mean()))
        saw_fourth |= bool((pred_all == EMOTIONS.index("happy")).any())
    # the data exercise the rule: predictions vary, and the unrestricted argmax picks the
    # emotion absent from the labels for some text
    assert len(set(ev.predictions.flatten().tolist())) > 1 and saw_fourth
    assert ev.n_texts == 15 and ev.indices.tolist() == list(range(15))
    assert ev.best_layer == max(ev.layers, key=lambda x: (ev.accuracy_by_layer[x], -x))


def test_restricted_chance_is_one_over_k(tiny, random_reg):
    ev = evaluate(tiny, random_reg, TEXTS, LABELS, layers=[1], progress=False)
    assert ev.chance == pytest.approx(1 / 3) and ev.chance_all == pytest.approx(1 / 4)
    two = [i for i, lab in enumerate(LABELS) if lab != "afraid"]
    ev2 = evaluate(tiny, random_reg, [TEXTS[i] for i in two], [LABELS[i] for i in two],
                   layers=[1], progress=False)
    assert ev2.emotions == ["calm", "sad"] and ev2.chance == pytest.approx(0.5)
    assert set(ev2.predictions.flatten().tolist()) <= {0, 1}  # argmax over calm/sad only
    assert ev2.to_dataframe()["chance"].tolist() == [0.5]


def test_one_forward_per_batch_reads_every_layer(tiny, random_reg, monkeypatch):
    import emolens.extraction.extract as ex

    calls = []
    real = ex.stream_sites

    def counting(model, texts, sites, on_batch, **kw):
        calls.append((len(texts), [s.layer for s in sites]))
        return real(model, texts, sites, on_batch, **kw)

    monkeypatch.setattr(ex, "stream_sites", counting)
    evaluate(tiny, random_reg, TEXTS, LABELS, layers=[0, 2, 3], batch_size=4, progress=False)
    assert [n for n, _ in calls] == [4, 4, 4, 3]
    assert all(layers == [0, 2, 3] for _, layers in calls)


def test_position_policy_all_includes_the_sink_and_short_texts_are_counted(tiny, random_reg):
    ev = evaluate(tiny, random_reg, TEXTS, LABELS, layers=[1], positions="all", progress=False)
    ref = (_text_means(tiny, 1, include_sink=True) - random_reg.center(1)) @ random_reg.matrix(1).T
    assert torch.allclose(ev.scores[0], ref, atol=1e-4)
    content = evaluate(tiny, random_reg, TEXTS, LABELS, layers=[1], progress=False)
    assert not torch.allclose(content.scores, ev.scores, atol=1e-3)
    short = ["hi", "ok", "a long enough sentence here", "another long enough sentence"]
    ev = evaluate(tiny, random_reg, short, ["calm", "sad", "calm", "sad"], layers=[1],
                  positions="from:5", progress=False)
    assert ev.n_no_positions == 2 and ev.indices.tolist() == [2, 3] and ev.n_texts == 2
    with pytest.raises(InputError, match="selects no token"):
        evaluate(tiny, random_reg, short[:2], ["calm", "sad"], positions="from:50",
                 progress=False)


# ---------------------------------------------------------------------------------- planted
def test_planted_directions_give_accuracy_one_and_shuffled_labels_do_not(tiny, planted_reg):
    ev = evaluate(tiny, planted_reg, TEXTS, LABELS, batch_size=4, progress=False)
    assert ev.accuracy_by_layer[PLANTED_LAYER] == 1.0
    assert ev.best_layer == PLANTED_LAYER and ev.default_layer == PLANTED_LAYER
    assert ev.bootstrap_ci(PLANTED_LAYER) == (1.0, 1.0)
    assert ev.p_value(PLANTED_LAYER, n=2000) < 0.005
    assert ev.per_emotion()["recall"].tolist() == [1.0, 1.0, 1.0]
    assert ev.errors().empty
    # every label moved to the next emotion: nothing is right, and the p-value is 1
    rotated = [{"calm": "afraid", "afraid": "sad", "sad": "calm"}[lab] for lab in LABELS]
    ev_rot = evaluate(tiny, planted_reg, TEXTS, rotated, layers=[PLANTED_LAYER], progress=False)
    assert ev_rot.accuracy_by_layer[PLANTED_LAYER] == 0.0
    assert ev_rot.p_value() == 1.0
    # a random shuffle is no longer perfect, and is far less significant
    perm = torch.randperm(len(LABELS), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [LABELS[i] for i in perm]
    assert shuffled != LABELS
    ev_sh = evaluate(tiny, planted_reg, TEXTS, shuffled, layers=[PLANTED_LAYER], progress=False)
    acc = ev_sh.accuracy_by_layer[PLANTED_LAYER]
    assert acc == pytest.approx(sum(a == b for a, b in zip(shuffled, LABELS)) / 15)
    assert acc < 1.0 and ev_sh.p_value(n=2000) > 10 * ev.p_value(PLANTED_LAYER, n=2000)


def test_uncentred_rule_would_not_be_perfect(planted_reg, means):
    """Guards the planted test: a rule without centring misclassifies some text."""
    truth = torch.tensor([EMOTIONS.index(lab) for lab in LABELS])
    raw = (means[PLANTED_LAYER] @ planted_reg.matrix(PLANTED_LAYER)[:3].T).argmax(-1)
    assert (raw != truth).any()


# ---------------------------------------------------------------------------------- labels
def test_label_map_gives_the_same_result_as_registry_names(tiny, random_reg):
    direct = evaluate(tiny, random_reg, TEXTS, LABELS, layers=[1, 3], progress=False)
    data_labels = [DATA_NAMES[lab] for lab in LABELS]
    mapped = evaluate(tiny, random_reg, TEXTS, data_labels, layers=[1, 3], progress=False,
                      label_map={v: k for k, v in DATA_NAMES.items()})
    assert torch.equal(mapped.predictions, direct.predictions)
    assert mapped.accuracy_by_layer == direct.accuracy_by_layer
    assert mapped.emotions == ["calm", "afraid", "sad"]
    assert mapped.to_dict()["label_map"] == {"serenity": "calm", "fear": "afraid",
                                             "sadness": "sad"}


def test_unknown_labels_raise_naming_them_and_the_fix(tiny, random_reg):
    labels = ["joy"] * 3 + LABELS[3:-2] + ["Sad", "neutral"]
    with pytest.raises(InputError) as err:
        evaluate(tiny, random_reg, TEXTS, labels, progress=False)
    msg = str(err.value)
    assert isinstance(err.value, EmolensError)
    for part in ("'joy' x3", "'neutral' x1", "'Sad' x1", "did you mean 'sad'", "'calm'",
                 "'happy'", "label_map", "drop_unknown=True"):
        assert part in msg, part
    with pytest.raises(InputError, match="'neutral' \\(mapped to None by label_map\\)"):
        evaluate(tiny, random_reg, TEXTS[:3], ["calm", "sad", "neutral"],
                 label_map={"neutral": None}, progress=False)
    with pytest.raises(InputError, match="'joy' \\(mapped to 'glad' by label_map\\)"):
        evaluate(tiny, random_reg, TEXTS[:3], ["calm", "sad", "joy"],
                 label_map={"joy": "glad"}, progress=False)


def test_drop_unknown_skips_and_counts(tiny, random_reg):
    labels = list(LABELS)
    labels[0], labels[7], labels[14] = "neutral", "neutral", "love"
    ev = evaluate(tiny, random_reg, TEXTS, labels, layers=[1, 2], drop_unknown=True,
                  label_map={"neutral": None}, progress=False)
    keep = [i for i in range(15) if i not in (0, 7, 14)]
    assert ev.dropped == {"neutral": 2, "love": 1} and ev.n_dropped == 3
    assert ev.indices.tolist() == keep and ev.n_texts == 12
    sub = evaluate(tiny, random_reg, [TEXTS[i] for i in keep], [labels[i] for i in keep],
                   layers=[1, 2], progress=False)
    assert torch.equal(ev.predictions, sub.predictions)
    assert torch.allclose(ev.scores, sub.scores, atol=1e-5)
    assert ev.to_dict()["n_dropped_unknown"] == 3
    with pytest.raises(InputError, match="every label was dropped"):
        evaluate(tiny, random_reg, TEXTS[:2], ["x", "y"], drop_unknown=True, progress=False)


def test_bad_inputs_raise_input_errors(tiny, random_reg):
    with pytest.raises(InputError, match="15 texts but 14 labels"):
        evaluate(tiny, random_reg, TEXTS, LABELS[:-1], progress=False)
    with pytest.raises(InputError, match="at least 2 emotions"):
        evaluate(tiny, random_reg, TEXTS[:5], LABELS[:5], progress=False)
    with pytest.raises(InputError, match="label 1 is 3"):
        evaluate(tiny, random_reg, TEXTS[:2], ["calm", 3], progress=False)
    with pytest.raises(InputError, match="batch_size"):
        evaluate(tiny, random_reg, TEXTS, LABELS, batch_size=0, progress=False)
    with pytest.raises(EmolensError, match="layer 7 is not in this registry"):
        evaluate(tiny, random_reg, TEXTS, LABELS, layers=[7], progress=False)
    with pytest.raises(InputError, match="unknown position policy"):
        evaluate(tiny, random_reg, TEXTS, LABELS, positions="middle", progress=False)


# ---------------------------------------------------------------------------------- results
def test_confusion_per_emotion_and_exports(tiny, random_reg, means):
    ev = evaluate(tiny, random_reg, TEXTS, LABELS, progress=False)
    layer = ev.best_layer
    _, pred, _ = _hand_predictions(random_reg, means, layer, ev.emotions)
    truth = [ev.emotions.index(lab) for lab in LABELS]
    conf = ev.confusion(layer)
    assert conf.index.name == "true" and conf.columns.name == "predicted"
    for t in range(3):
        for p in range(3):
            want = sum(1 for a, b in zip(truth, pred.tolist()) if a == t and b == p)
            assert conf.iloc[t, p] == want
    per = ev.per_emotion(layer)
    assert per["n"].tolist() == [5, 5, 5]
    assert per["recall"].tolist() == pytest.approx(
        [conf.iloc[i, i] / 5 for i in range(3)])
    assert per["correct"].sum() / 15 == pytest.approx(ev.accuracy_by_layer[layer])
    err = ev.errors(layer)
    assert len(err) == 15 - int(per["correct"].sum())
    assert set(err.columns) == {"index", "text", "true", "predicted"}
    assert ev.predicted_labels(layer) == [ev.emotions[i] for i in pred.tolist()]

    lo, hi = ev.bootstrap_ci(layer, n=500, seed=3)
    assert (lo, hi) == stats.bootstrap_ci(ev.correct(layer).double(), n_resamples=500, seed=3)
    assert lo <= ev.accuracy_by_layer[layer] <= hi and lo < hi

    df = ev.to_dataframe(n_bootstrap=200, n_permutations=500)
    assert list(df.columns[:5]) == ["layer", "accuracy", "ci_low", "ci_high", "chance"]
    assert df["layer"].tolist() == ev.layers
    assert df["accuracy"].tolist() == [ev.accuracy_by_layer[x] for x in ev.layers]
    assert df["p_value"].tolist() == [ev.p_value(x, n=500) for x in ev.layers]

    d = json.loads(json.dumps(ev.to_dict(n_bootstrap=200, n_permutations=500), allow_nan=False))
    assert d["accuracy_by_layer"] == {str(k): v for k, v in ev.accuracy_by_layer.items()}
    assert d["chance"] == pytest.approx(1 / 3) and d["n_texts"] == 15
    assert d["best_layer"] == ev.best_layer and d["default_layer"] == PLANTED_LAYER
    assert d["confusion_default_layer"] == ev.confusion().to_numpy().tolist()
    assert d["predictions_default_layer"]["true"] == LABELS
    assert d["ci95_by_layer"][str(layer)] == list(ev.bootstrap_ci(layer, n=200))
    html = ev._repr_html_()
    assert html.count("<tr>") == 1 + len(ev.layers) and "chance 0.333" in html
    assert "Evaluation(15 texts" in repr(ev)


def test_accuracy_permutation_pvalue_matches_exact_probability():
    # 3 items, 3 classes, all right: 1 of the 3! orderings of the labels matches
    p = stats.accuracy_permutation_pvalue([0, 1, 2], [0, 1, 2], n_permutations=6000, seed=1)
    assert abs(p - 1 / 6) < 0.02
    assert stats.accuracy_permutation_pvalue([0, 0, 1, 1], [1, 1, 0, 0], n_permutations=100) == 1.0
    many = torch.arange(40) % 2
    assert stats.accuracy_permutation_pvalue(many, many, n_permutations=999) == pytest.approx(1e-3)
    assert (stats.accuracy_permutation_pvalue(many, many, seed=4, n_permutations=50)
            == stats.accuracy_permutation_pvalue(many, many, seed=4, n_permutations=50))
    with pytest.raises(stats.StatsError, match="one value per item"):
        stats.accuracy_permutation_pvalue([0, 1], [0])


def test_public_exports(tiny):
    assert emolens.evaluate is evaluate and emolens.Evaluation is Evaluation
    assert callable(emolens.evaluate) and not isinstance(emolens.evaluate, types.ModuleType)
    assert "evaluate" in emolens.__all__ and "Evaluation" in emolens.__all__


# ---------------------------------------------------------------------------------- files
def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_load_jsonl_and_its_errors(tmp_path):
    good = _write(tmp_path, "d.jsonl", "\n".join([
        json.dumps({"text": "a calm lake", "emotion": "calm", "id": 1}),
        "",
        json.dumps({"text": [{"role": "user", "content": "help"}], "emotion": "afraid"}),
        json.dumps({"text": "class ids", "emotion": 3}),
    ]) + "\n")
    texts, labels = load_labelled(good)
    assert texts == ["a calm lake", [{"role": "user", "content": "help"}], "class ids"]
    assert labels == ["calm", "afraid", "3"]
    ok = json.dumps({"text": "fine", "emotion": "sad"})
    cases = {
        "line 3: not valid JSON": [ok, ok, "{broken"],
        "line 2: no field 'emotion'": [ok, json.dumps({"text": "x", "label": "sad"})],
        "line 2: field 'text' is empty": [ok, json.dumps({"text": "  ", "emotion": "sad"})],
        "line 1: field 'emotion' must be a non-empty": [json.dumps({"text": "x", "emotion": ""})],
        "line 1: expected a JSON object": ["[1, 2]"],
        "line 1: field 'text' must be a string or a list": [json.dumps({"text": 5,
                                                                         "emotion": "sad"})],
    }
    for i, (want, lines) in enumerate(cases.items()):
        bad = _write(tmp_path, f"bad{i}.jsonl", "\n".join(lines) + "\n")
        with pytest.raises(FormatError) as err:
            load_labelled(bad)
        assert f"{bad}, {want}" in str(err.value), (want, str(err.value))
    texts, labels = load_labelled(_write(tmp_path, "f.jsonl", json.dumps(
        {"sentence": "x y", "label": "joy"}) + "\n"), text_field="sentence", label_field="label")
    assert (texts, labels) == (["x y"], ["joy"])


def test_load_csv_and_its_errors(tmp_path):
    good = _write(tmp_path, "d.csv", 'text,emotion\n"a calm, quiet lake",calm\n'
                  '"two\nlines",sad\n\nlast one, afraid \n')
    assert load_labelled(good) == (["a calm, quiet lake", "two\nlines", "last one"],
                                   ["calm", "sad", "afraid"])
    tsv = _write(tmp_path, "d.tsv", "sentence\tlabel\nhello there\tjoy\n")
    assert load_labelled(tsv, text_field="sentence", label_field="label") == (
        ["hello there"], ["joy"])
    cases = {
        "d1.csv": ('text,emotion\nok,calm\n"multi\nline",sad\n,afraid\n',
                   "line 5: field 'text' is empty"),
        "d2.csv": ("sentence,emotion\nok,calm\n", "line 1: no column 'text'"),
        "d3.csv": ("text,emotion\nok,calm\nok,calm,extra\n", "line 3: 3 fields but the header"),
        "d4.csv": ("text,emotion\nok,\n", "line 2: field 'emotion' must be a non-empty"),
        "d5.csv": ("", "the file is empty"),
        "d6.csv": ("text,emotion\n", "holds no rows"),
    }
    for name, (content, want) in cases.items():
        bad = _write(tmp_path, name, content)
        with pytest.raises(FormatError) as err:
            load_labelled(bad)
        assert str(bad) in str(err.value) and want in str(err.value), (name, str(err.value))
    with pytest.raises(FormatError, match="unknown data file type '.txt'"):
        load_labelled(_write(tmp_path, "d.txt", "x"))
    with pytest.raises(FormatError, match="file not found"):
        load_labelled(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------- CLI
def _cli_args(argv):
    from emolens.cli import build_parser

    return build_parser().parse_args(["evaluate", *argv])


def test_cli_end_to_end_on_a_saved_tiny_registry(tiny, planted_reg, tmp_path, capsys):
    from emolens.readout.cli import run

    folder = planted_reg.save(tmp_path / "registry")
    rows = [{"sentence": t, "label": DATA_NAMES[lab]} for t, lab in zip(TEXTS, LABELS)]
    rows.append({"sentence": "just a note about the weather", "label": "neutral"})
    data = _write(tmp_path, "held_out.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "res" / "results.json"
    out.parent.mkdir()
    args = _cli_args(["--data", str(data), "--registry", str(folder), "--text-field", "sentence",
                      "--label-field", "label", "--label-map",
                      "serenity=calm,fear=afraid,sadness=sad,neutral=", "--drop-unknown",
                      "--layers", "1,2", "--permutations", "999", "--bootstrap", "200",
                      "--out", str(out), "--quiet"])
    assert run(args, model=tiny) == 0
    printed = capsys.readouterr().out
    assert "15 texts, 3 emotions (calm 5, afraid 5, sad 5); 1 dropped" in printed
    best = [line for line in printed.splitlines() if line.startswith("*")][0].split()
    assert best[:3] == ["*", "2", "1.000"] and "[1.000, 1.000]" in printed
    assert best[-2] == "0.001"  # p-value: no shuffle out of 999 reaches 1.0 -> 1/1000
    res = json.loads(out.read_text())
    assert res["accuracy_by_layer"]["2"] == 1.0 and res["layers"] == [1, 2]
    assert res["n_dropped_unknown"] == 1 and res["dropped_labels"] == {"neutral": 1}
    assert res["model"] == emolens.model_provenance(tiny).model_id
    assert res["label_map"]["neutral"] is None and res["p_value_by_layer"]["2"] == 0.001
    assert not list(out.parent.glob("*.tmp*"))  # written atomically: no temp file left


def test_cli_fails_before_loading_a_model(tiny, planted_reg, tmp_path, capsys):
    from emolens.cli import COMMANDS
    from emolens.cli import main as cli_main

    assert COMMANDS["evaluate"][1] == "emolens.readout.cli:"
    folder = planted_reg.save(tmp_path / "registry")
    bad = _write(tmp_path, "bad.csv", "text,emotion\nfine,calm\n,sad\n")
    assert cli_main(["evaluate", "--data", str(bad), "--registry", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 3: field 'text' is empty" in err
    unknown = _write(tmp_path, "u.csv", "text,emotion\nfine,calm\nbad day,joy\n")
    assert cli_main(["evaluate", "--data", str(unknown), "--registry", str(folder)]) == 2
    assert "'joy' x1" in capsys.readouterr().err
    assert cli_main(["evaluate", "--data", str(unknown), "--registry",
                     str(tmp_path / "nowhere")]) == 2
    assert "not a registry folder" in capsys.readouterr().err


def test_cli_argument_parsers():
    from emolens.readout.cli import parse_label_map, parse_layers

    assert parse_label_map("joy=happy, fear=afraid,neutral=") == {
        "joy": "happy", "fear": "afraid", "neutral": None}
    assert parse_label_map(None) is None
    with pytest.raises(InputError, match="'joyhappy' is not LABEL=EMOTION"):
        parse_label_map("joyhappy")
    assert parse_layers("10, 14,18") == [10, 14, 18] and parse_layers("all") is None
    with pytest.raises(InputError, match="comma-separated layer numbers"):
        parse_layers("ten")
