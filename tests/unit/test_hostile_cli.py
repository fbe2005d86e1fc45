"""Hostile probes of the command line (issue 17 bugs 14-15, rough edges): bad arguments and
outputs fail in a second, before the model loads; Ctrl-C prints one line."""
from __future__ import annotations

import pytest

from emolens import cli


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the checks must come first."""
    import emolens
    from emolens.models import loading

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(emolens, "load_model", refuse, raising=False)
    monkeypatch.setattr(loading, "load_model", refuse)
    import emolens.models as models

    monkeypatch.setattr(models, "load_model", refuse)


def _args(tmp_path, *extra):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a b", "emotion": "calm"}\n')
    return ["evaluate", "--data", str(data), "--registry", str(tmp_path / "reg"), *extra]


@pytest.mark.parametrize("flag,value", [("--bootstrap", "0"), ("--permutations", "0"),
                                        ("--batch-size", "0"), ("--bootstrap", "-5")])
def test_evaluate_refuses_bad_counts_first(tmp_path, capsys, no_model, flag, value):
    assert cli.main(_args(tmp_path, flag, value)) == 2
    assert flag in capsys.readouterr().err


def test_evaluate_refuses_bad_out_first(tmp_path, capsys, no_model):
    assert cli.main(_args(tmp_path, "--out", str(tmp_path))) == 2
    assert "is a folder" in capsys.readouterr().err
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert cli.main(_args(tmp_path, "--out", str(a_file / "r.json"))) == 2
    assert "is a file" in capsys.readouterr().err


def test_run_refuses_unknown_sections_and_a_file_as_out(tmp_path, capsys, no_model):
    assert cli.main(["run", "--out", str(tmp_path / "o"), "--sections", "geometry", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown section 'bogus'" in err and "valid" in err
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert cli.main(["run", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert a_file.read_text() == "x"


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._LOCAL, "emolens.cli:info", (cli._add_info, interrupted))
    assert cli.main(["info", "--no-model"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err
