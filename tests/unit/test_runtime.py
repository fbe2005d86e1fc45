"""emolens.runtime: the model's device, batching and progress bars every stage shares."""
from __future__ import annotations

import types

import pytest
import torch

from emolens.errors import InputError
from emolens.runtime import (
    ACCELERATOR_BATCH,
    CPU_BATCH,
    batches,
    model_device,
    progress_bar,
    resolve_batch_size,
    rows_per_chunk,
    sorted_batches,
)


class _Params:
    def __init__(self, device: str) -> None:
        self.w = torch.zeros(1, device=device)

    def parameters(self):
        return iter([self.w])


def test_model_device_order():
    # cfg.device wins (TransformerLens keeps it in step with model.to)
    m = _Params("cpu")
    m.cfg = types.SimpleNamespace(device="meta")
    assert model_device(m) == torch.device("meta")
    m.cfg = types.SimpleNamespace(device=torch.device("cpu"))
    assert model_device(m) == torch.device("cpu")
    # no cfg.device: the first parameter's device
    p = _Params("meta")
    p.cfg = types.SimpleNamespace(device=None)
    assert model_device(p) == torch.device("meta")
    # neither: the CPU
    assert model_device(types.SimpleNamespace()) == torch.device("cpu")


def test_model_device_of_a_tiny_model(tiny):
    assert model_device(tiny) == torch.device("cpu")
    assert isinstance(model_device(tiny), torch.device)


def test_batches_and_sorted_batches():
    assert list(batches(5, 2)) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert list(batches(3, 0)) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert list(batches(0, 4)) == []
    texts = ["a", "ccc", "bb", "dd", "eeee"]
    got = list(sorted_batches(texts, 2))
    assert got == [[4, 1], [2, 3], [0]]            # longest first, ties in input order
    assert sorted(i for b in got for i in b) == list(range(len(texts)))


def test_rows_per_chunk_and_progress_bar():
    assert rows_per_chunk(10, 35) == 3
    assert rows_per_chunk(10, 35, batch_rows=2) == 1
    assert rows_per_chunk(100, 10) == 1
    bar = progress_bar(range(3), desc="x", enabled=False)
    assert list(bar) == [0, 1, 2] and bar.disable
    bar = progress_bar(total=4, desc="t", unit="text")
    assert bar.total == 4 and not bar.disable and bar.unit == "text" and not bar.leave
    bar.update(4)
    assert bar.n == 4
    bar.close()


def test_resolve_batch_size_follows_the_device_and_checks_values(tiny):
    assert (CPU_BATCH, ACCELERATOR_BATCH) == (8, 32)
    assert resolve_batch_size(None, tiny) == CPU_BATCH
    assert resolve_batch_size(None) == CPU_BATCH
    gpu = _Params("cpu")
    gpu.cfg = types.SimpleNamespace(device=torch.device("cuda"))
    assert resolve_batch_size(None, gpu) == ACCELERATOR_BATCH
    assert resolve_batch_size(3, gpu) == 3  # an explicit size always wins
    for bad in (0, -1, True):
        with pytest.raises(InputError, match="batch_size"):
            resolve_batch_size(bad, tiny)


def test_extraction_records_the_resolved_batch_size(tiny):
    from emolens.extraction import extract_emotions

    texts = {"a": ["one two three four", "five six seven"], "b": ["eight nine ten", "x y z w"]}
    reg = extract_emotions(tiny, texts, layers=[1], neutral=[], validate=False, progress=False)
    assert reg.metadata["batch_size"] == CPU_BATCH
    two = extract_emotions(tiny, texts, layers=[1], neutral=[], validate=False, progress=False,
                           batch_size=1)
    assert two.metadata["batch_size"] == 1
    assert torch.allclose(reg.matrix(1), two.matrix(1), atol=1e-5)
