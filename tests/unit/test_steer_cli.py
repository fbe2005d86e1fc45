"""``emolens steer``: registered on the command line; ``export`` end to end on a tiny registry."""
from __future__ import annotations

import pytest
import torch

from emolens.cli import build_parser, main


@pytest.fixture(scope="module")
def saved_registry(tiny, tmp_path_factory):
    from emolens import extract_emotions

    texts = {"calm": ["the lake was still and quiet", "slow breath in the evening light"],
             "angry": ["he slammed the door and shouted", "fists clenched, she kicked the bin"]}
    reg = extract_emotions(tiny, texts, layers=[1, 2], progress=False, neutral=[])
    return reg, reg.save(tmp_path_factory.mktemp("reg") / "registry")


def test_steer_is_a_registered_command_with_its_actions():
    parser = build_parser()
    for argv in (["steer", "generate", "hi", "--registry", "R", "--spec", "calm=0.1"],
                 ["steer", "sweep", "--registry", "R", "--emotion", "calm", "--out", "o"],
                 ["steer", "word-test", "--registry", "R"],
                 ["steer", "export", "--registry", "R", "--spec", "calm=1", "--out", "x.gguf"]):
        args = parser.parse_args(argv)
        assert args.command == "steer" and args.steer_action == argv[1]


def test_steer_export_writes_the_registry_direction(saved_registry, tmp_path, capsys):
    from emolens.steering.control_vectors import import_control_vector

    reg, folder = saved_registry
    out = tmp_path / "calm.gguf"
    assert main(["steer", "export", "--registry", str(folder), "--spec", "calm=1",
                 "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    vectors = import_control_vector(out)
    layer = reg.layers[0]  # layer 1: direction.1 (block 0's output cannot be addressed)
    expected = reg.vector("calm", layer) * reg.mean_norm(layer)
    got = torch.as_tensor(vectors[layer])
    assert torch.allclose(got, expected, atol=1e-5), (got[:4], expected[:4])


def test_steer_bad_spec_is_one_error_line(saved_registry, capsys):
    _, folder = saved_registry
    rc = main(["steer", "export", "--registry", str(folder), "--spec", "calm", "--out", "x.gguf"])
    assert rc != 0
    assert "name=strength" in capsys.readouterr().err
