"""Data parallelism: 2 gloo ranks on the CPU (torch.multiprocessing.spawn) give the
single-process registry, readout, pooled scores and scan; a failure on one rank ends both."""
from __future__ import annotations

import datetime
import gc
import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from emolens.distributed import SINGLE, DistContext, context, init_distributed, shard_by_tokens
from emolens.errors import DistributedError

EMOTIONS = {
    "sunny": ["the sun is warm and bright today", "we laughed in the sunny park all afternoon",
              "bright light on a summer day", "a warm breeze and a clear blue sky",
              "golden fields under a cloudless noon", "children splashed in the warm lake",
              "light poured through the open window", "a long lazy day on the beach"],
    "stormy": ["thunder cracked over the dark sea", "the storm tore the roof away",
               "cold rain hammered the windows all night long", "lightning split the old oak",
               "the gale bent the trees to the ground", "black clouds rolled in from the west",
               "hail drummed on the car roof", "waves smashed against the harbour wall"],
    "quiet": ["the library was silent", "a still pond at dawn", "snow fell without a sound",
              "the house slept under the moon", "nothing moved in the empty street",
              "a single candle burned in the hall", "the orchard rested in the evening",
              "dust settled on the untouched piano"],
}
NEUTRAL = [[{"role": "user", "content": "What time is it?"},
            {"role": "assistant", "content": "I cannot see a clock, sorry."}],
           [{"role": "user", "content": "List three colours."},
            {"role": "assistant", "content": "Red, green and blue."}],
           [{"role": "user", "content": "How many legs does a spider have?"},
            {"role": "assistant", "content": "Eight legs."}],
           [{"role": "user", "content": "Spell cat."}, {"role": "assistant", "content": "C-A-T."}],
           [{"role": "user", "content": "Name a planet."},
            {"role": "assistant", "content": "Mars is a planet in our solar system."}]]
SCAN_TEXTS = [f"note {i}: the {['rain', 'sun', 'snow'][i % 3]} " + "and more words " * (i % 5)
              for i in range(23)]


class _Rec:
    def __init__(self, text):
        self.text = text


class SmallCorpus:
    name, content_hash, version = "small-dist", "0" * 64, "1"
    emotions = list(EMOTIONS)
    neutral = [type("N", (), {"messages": m})() for m in NEUTRAL]

    def stories(self, emotion, split=None):
        texts = EMOTIONS[emotion]
        return [_Rec(t) for t in (texts[:6] if split == "train" else texts[6:])]


def _run_all(distributed):
    from emolens.extraction import extract_emotions
    from emolens.readout import read_emotions
    from emolens.readout.scan import pooled_scores, top_examples
    from emolens.testing import tiny_model

    model = tiny_model()
    reg = extract_emotions(model, SmallCorpus(), layers=[0, 1, 2, 3], progress=False,
                           distributed=distributed)
    pairs = extract_emotions(model, SmallCorpus(), layers=[1, 3], method="pca_pairs",
                             progress=False, shuffled_control=False, distributed=distributed)
    ro = read_emotions(model, reg, SCAN_TEXTS[:9], layers="all", distributed=distributed)
    pooled = pooled_scores(model, reg, SCAN_TEXTS, progress=False, distributed=distributed)
    scan = top_examples(model, reg, SCAN_TEXTS, k=4, window=3, progress=False,
                        distributed=distributed)
    scan_all = top_examples(model, reg, iter(SCAN_TEXTS), k=5, one_per_text=False,
                            progress=False, distributed=distributed)
    return {"dirs": reg.tensor(), "mean_norm": reg.mean_norms, "center": torch.stack([reg.center(x) for x in reg.layers]),
            "pairs": pairs.tensor(), "readout": ro.scores_all, "pooled": pooled}, {
        "validation": reg.validation, "default_layer": reg.default_layer,
        "distributed": reg.metadata["distributed"], "neutral": reg.metadata["neutral"],
        "scan": scan.to_dict(), "scan_all": scan_all.to_dict()}


def _save(out, name, tensors, meta):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, f"{name}.safetensors"))
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(meta, f)


def _worker(rank, world, port, out):
    """One spawn for every check (process start-up dominates on 2 cores): the distributed run,
    the single-process reference (rank 0, distributed=False), then a failure on rank 1."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      EMOLENS_COMPUTE_DTYPE="model")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=60))
    import emolens.distributed

    emolens.distributed._CHUNK = 1000  # the neutral moments (4 x 64 x 64) go in 17 chunks
    try:
        _save(out, f"rank{rank}", *_run_all("auto"))
        if rank == 0:
            _save(out, "single", *_run_all(False))
        torch.distributed.barrier()
        # rank 1 fails inside the first pass: both ranks must end with its error
        from emolens.extraction import extract_emotions
        from emolens.testing import tiny_model

        model = tiny_model()
        if rank == 1:
            model.add_hook("blocks.1.hook_resid_post", lambda act, hook: act * float("nan"))
        t0 = time.perf_counter()
        try:
            extract_emotions(model, SmallCorpus(), layers=[0, 1], progress=False)
            msg = "no error"
        except DistributedError as e:
            msg = str(e)
        with open(os.path.join(out, f"fail{rank}.json"), "w") as f:
            json.dump({"error": msg, "seconds": time.perf_counter() - t0}, f)
    finally:
        # Collect the dead models (TransformerBridge objects live in reference cycles) before
        # the group goes: left to the collector at interpreter exit, 5 of 20 two-rank runs of
        # the failure step ended with "terminate called without an active exception" (SIGABRT)
        # after every file and atexit handler was written; with this line, 0 of 20.
        gc.collect()
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    t0 = time.perf_counter()
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    print(f"2 gloo ranks (spawn included): {time.perf_counter() - t0:.1f} s")
    return out


def test_two_gloo_ranks_equal_one_process(spawned):
    from safetensors.torch import load_file

    ref_t = load_file(str(spawned / "single.safetensors"))
    ref_m = json.loads((spawned / "single.json").read_text())
    ranks = [load_file(str(spawned / f"rank{r}.safetensors")) for r in (0, 1)]
    metas = [json.loads((spawned / f"rank{r}.json").read_text()) for r in (0, 1)]
    for key, ref in ref_t.items():
        diff = max(float((t[key] - ref).abs().max()) for t in ranks)
        same = bool(torch.equal(ranks[0][key], ranks[1][key]))
        print(f"{key:10s} shape {tuple(ref.shape)}: max |2 ranks - 1 process| = {diff:.2e}; "
              f"rank 0 == rank 1 bit for bit: {same}")
        assert diff < 1e-6, key
        assert same, key
    print("validation accuracy by layer, 1 process:", ref_m["validation"]["accuracy_by_layer"],
          " 2 ranks:", metas[0]["validation"]["accuracy_by_layer"])
    print("confusion at best layer, 1 process:", ref_m["validation"]["confusion_best_layer"],
          " 2 ranks:", metas[0]["validation"]["confusion_best_layer"])
    print("shuffled-control accuracy, 1 process:",
          ref_m["validation"]["shuffled_accuracy_by_layer"], " 2 ranks:",
          metas[0]["validation"]["shuffled_accuracy_by_layer"])
    for m in metas:
        assert m["validation"] == ref_m["validation"]  # counts and accuracies exactly
        assert m["default_layer"] == ref_m["default_layer"]
        assert m["neutral"] == ref_m["neutral"]
        assert m["distributed"]["world_size"] == 2 and m["distributed"]["backend"] == "gloo"
    assert ref_m["distributed"]["world_size"] == 1
    for key in ("scan", "scan_all"):
        ref = ref_m[key]
        for m in metas:
            got = m[key]
            assert got["n_texts"] == ref["n_texts"] == len(SCAN_TEXTS)
            assert got["n_tokens"] == ref["n_tokens"]
            for e in ref["emotions"]:
                a = [(x["text_index"], x["position"], x["tokens"]) for x in got["examples"][e]]
                b = [(x["text_index"], x["position"], x["tokens"]) for x in ref["examples"][e]]
                assert a == b, (key, e)
                sa = torch.tensor([x["score"] for x in got["examples"][e]])
                sb = torch.tensor([x["score"] for x in ref["examples"][e]])
                assert torch.allclose(sa, sb, atol=1e-5)
        print(f"{key}: top-k (text, position) per emotion identical on both ranks and in one "
              f"process, e.g. {ref['emotions'][0]}: "
              f"{[(x['text_index'], x['position']) for x in ref['examples'][ref['emotions'][0]]]}")


def test_failure_on_one_rank_ends_both_with_its_error(spawned):
    got = [json.loads((spawned / f"fail{r}.json").read_text()) for r in (0, 1)]
    print("rank errors:", [(round(g["seconds"], 1), g["error"][:110]) for g in got])
    for g in got:
        assert g["error"].startswith("rank 1 failed during extraction pass 1: ExtractionError")
        assert "blocks.1.hook_resid_post" in g["error"]
        assert g["seconds"] < 30  # reported at the step's end, not at the 60 s timeout


def test_shard_by_tokens_is_balanced_deterministic_and_complete():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    shards = shard_by_tokens(lengths, 3)
    assert sorted(i for s in shards for i in s) == list(range(200))
    assert shards == shard_by_tokens(lengths, 3)
    totals = [sum(lengths[i] for i in s) for s in shards]
    assert max(totals) - min(totals) <= max(lengths)
    # by text count the split would be far off: one long text against many short ones
    skew = [1000] + [10] * 100
    a, b = shard_by_tokens(skew, 2)
    assert a == [0] and len(b) == 100
    assert shard_by_tokens([5, 5], 4) == [[0], [1], [], []]


def test_single_process_context_is_transparent():
    assert context(False) is SINGLE and context("auto") is SINGLE and not SINGLE.active
    t = torch.ones(3)
    SINGLE.all_reduce_([t])
    assert torch.equal(t, torch.ones(3))
    with pytest.raises(ValueError):
        with SINGLE.guard("step"):
            raise ValueError("plain errors pass through on one process")
    assert SINGLE.all_gather_json({"a": 1}) == [{"a": 1}]
    assert DistContext(1, 4).describe()["world_size"] == 4


def test_distributed_true_without_environment_names_the_fix(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(DistributedError, match="torchrun"):
        init_distributed()
    with pytest.raises(ValueError, match="distributed must be"):
        context("yes")
