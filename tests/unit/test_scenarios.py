"""The implicit-scenario diagonal: planted structure found, a constant column offset removed by
the (post-hoc) column standardisation, and the readout the same as read_emotions'."""
from __future__ import annotations

import pytest
import torch

from emolens.errors import InputError
from emolens.readout.scenarios import _aggregate, diagonal_accuracy, scenario_matrix


def test_planted_diagonal_and_a_column_offset():
    emos = ["a", "a", "b", "b", "c", "c"]
    cols = ["a", "b", "c"]
    per = torch.tensor([[2.0, 0, 0], [1.5, 0.2, 0], [0, 2, 0.1], [0.1, 1.8, 0], [0, 0, 2],
                        [0.2, 0, 1.7]])
    sm = _aggregate(per, emos, cols, layer=3, standardised=False)
    assert sm.rows == cols and sm.diagonal_hits == 3 and sm.per_scenario_accuracy == 1.0
    assert torch.allclose(sm.matrix[0], per[:2].mean(0))
    # one direction sits on top of every row (a constant offset at the reply token)
    shifted = per.clone()
    shifted[:, 0] += 10.0
    raw = _aggregate(shifted, emos, cols, 3, False)
    assert raw.diagonal_hits == 1 and raw.per_scenario_accuracy == pytest.approx(2 / 6)
    z = raw.column_standardised()
    assert z.standardised and z.diagonal_hits == 3
    assert "post hoc" in z.statement and "3 of 3" in z.statement
    assert z.to_dict()["chance"] == pytest.approx(1 / 3)


def test_diagonal_accuracy_checks_shapes_and_names():
    assert diagonal_accuracy([[1, 0], [0, 1]], ["x", "y"], ["x", "y"]) == (1.0, 2, 2)
    assert diagonal_accuracy([[1, 0], [1, 0]], ["x", "z"], ["x", "y"]) == (1.0, 1, 1)
    with pytest.raises(InputError, match="does not match"):
        diagonal_accuracy([[1, 0]], ["x", "y"], ["x", "y"])
    with pytest.raises(InputError, match="shared names"):
        diagonal_accuracy([[1, 0]], ["q"], ["x", "y"])


def test_scenario_matrix_reads_the_reply_opening_token(tiny_llama):
    from emolens import extract_emotions, read_emotions

    texts = {"calm": ["the lake was still and quiet", "slow breath in the evening light"],
             "angry": ["he slammed the door and shouted", "fists clenched, she kicked the bin"]}
    reg = extract_emotions(tiny_llama, texts, layers=[1, 2], progress=False, neutral=[])
    scen = [("calm", [{"role": "user", "content": "The sea is flat and warm tonight."}]),
            ("angry", [{"role": "user", "content": "They cancelled my flight again!"}]),
            ("bored", [{"role": "user", "content": "Nothing happens here."}])]  # not in reg
    sm = scenario_matrix(tiny_llama, reg, scen, layer=2)
    ro = read_emotions(tiny_llama, reg, [m for _, m in scen[:2]], layer=2)
    assert torch.allclose(sm.per_scenario, ro.at_reply(), atol=1e-5)
    assert sm.scenario_emotions == ["calm", "angry"] and sm.layer == 2
    with pytest.raises(InputError, match="no scenario"):
        scenario_matrix(tiny_llama, reg, scen[2:])
