"""emolens.runtime: the model's device, batching and progress bars every stage shares."""
from __future__ import annotations

import types

import torch

from emolens.runtime import batches, model_device, progress_bar, rows_per_chunk, sorted_batches


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
