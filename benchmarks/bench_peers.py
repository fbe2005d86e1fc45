"""Side by side with the peer libraries: the same work, the same weights, one run (issue 16).

    make bench-peers          # creates .venv-peers, then runs this file under `nice -n 5`
    .venv-peers/bin/python benchmarks/bench_peers.py [--per-emotion-k6 N] [--per-emotion-k48 N]

The task, for each library: a direction for each of K emotions (K = 6 and K = 48) at every layer
of the default model (SmolLM2-135M-Instruct, the Q4_1 GGUF de-quantised to float32, read from
emolens's safetensors cache), from the same training stories of the bundled corpus (the first N
of each emotion's training split). Each library is used the way its documentation shows:

- emolens: one ``extract_emotions`` call on the ``TransformerBridge`` (mean over content tokens,
  one-vs-rest difference of class means, no neutral denoising, batch 16, length-sorted
  batches, the forward stopped after the deepest site), float32; and again with its default
  ``compute_dtype="auto"`` (bf16 autocast on a CPU with AVX512-BF16).
- steering-vectors 0.12.2: one ``train_steering_vector`` per emotion (its docs: pairs of
  (positive, negative) prompts, ``layers=None`` = every decoder block, ``read_token_index=-1``
  = the last token, the default ``mean_aggregator``); batch 16 (its documented default is 1).
- repeng 0.4.0: one ``ControlVector.train`` per emotion (its README and emotion notebook:
  ``DatasetEntry(positive, negative)`` pairs, ``method="pca_diff"``: first principal component
  of the pair differences at the last token, sign set so positives project higher,
  ``tokenizer.pad_token_id = 0``, batch 32 = its documented default); ``hidden_layers`` all 30
  layers (its default leaves out layer 0). Its layer 29 is ``hidden_states[30]``, which
  transformers returns after the final norm.
- dialz 1.1.4: one ``SteeringVector.train`` per emotion on a ``SteeringModel`` (same recipe as
  repeng: last token, PCA of differences, batch 32). ``SteeringModel`` loads the model in
  float16; the benchmark casts it back to float32 so that every library runs the same weights.
- nnsight 0.8.1: no extraction recipe of its own; the study's recipe written against
  ``TransformersModel.trace`` (save every decoder layer's output, mean over content tokens on
  emolens's tokens, class means), batch 16, length-sorted: what a user of nnsight would write.

Pairs for the pair-based peers: each training story of emotion e is the positive of one pair
whose negative is a training story of another emotion (round robin over the K - 1 others), so a
pair-based library forwards 2 x K x N texts where emolens and nnsight forward K x N.

Figures (``benchmarks/results.json``, merged, keys ``peers_<library>_<figure>``; the K = 48
figures carry no K in their name, the K = 6 ones ``_k6``): wall time of the extraction (model load
excluded), tokens/s (real tokens forwarded), peak resident memory of the worker process during
the work, held-out accuracy on the corpus's validation split with one shared rule (mean over
content tokens on emolens's tokens, projection centred on emolens's stimulus centre, argmax over
K; best layer) and with each library's own reading rule (steering-vectors, repeng: projection of
the last token; dialz: ``get_activation_score``'s "mean" over every token without special
tokens), the mean cosine to emolens's direction at the same layer, and ``speedup`` = peer time /
emolens time. Also: greedy generation tokens/s with one vector at layer 20 (emolens ``Steering``
vs steering-vectors ``SteeringVector.apply`` vs repeng ``ControlModel``, each over its own plain
generation), a llama.cpp control vector exported by emolens read back by repeng's
``import_gguf`` (and the reverse), and a bare forward pass over the same batches to the deepest
site (the floor) with emolens's time as a ratio to it.

Shims (the smallest that make the peers import beside emolens's own torch / transformers 5 /
numpy 2; written down in docs/results.md): peers installed with ``--no-deps`` into
``.venv-peers``, which sees ``.venv``'s packages through a ``.pth`` file; ``np.float_ =
np.float64`` before importing repeng (removed in numpy 2; repeng only uses it in type hints);
steering-vectors and dialz declare ``transformers<5`` and run unchanged on 5.24 for this model;
dialz's ``gguf<0.14`` pin is ignored (it is not used here). A peer that does not import is
skipped with its error. Every worker runs in its own process (peak memory per library).
Nothing here asserts a time; goals are printed beside the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
K6_EMOTIONS = ["happy", "calm", "desperate", "angry", "sad", "afraid"]
PEERS = ["steering_vectors", "repeng", "dialz", "nnsight"]
VERSIONS = {"steering_vectors": "0.12.2", "repeng": "0.4.0", "dialz": "1.1.4", "nnsight": "0.8.1"}
EMOLENS_BATCH = 16
SV_BATCH = 16
REPENG_BATCH = 32  # repeng's and dialz's documented default
STEER_LAYER = 20
STEER_TOKENS = 32
STEER_REPEATS = 3
STEER_PROMPTS = ["Tell me about your morning.", "What is a good name for a cat?",
                 "Describe the sea in one sentence.", "How do I boil an egg?"]
GOALS = {
    "peers_repeng_speedup": ">= 1.5 (K = 48)",
    "peers_steering_vectors_speedup": ">= 10 (K = 48)",
    "peers_emolens_vs_floor": "<= 1.10",
}


# ----------------------------------------------------------------------------- shared helpers

class PeakRSS:
    """Peak resident set size (MiB) of this process while the block runs (sampled every 10 ms),
    and the CPU time (s, every thread) it used: on a shared machine CPU time moves less with the
    load than wall time does."""

    def __enter__(self) -> PeakRSS:
        self.peak = self.start = _rss_mib()
        self.cpu0 = time.process_time()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mib())
        self.cpu_s = time.process_time() - self.cpu0


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cache_folder() -> str:
    from emolens.models.loading import _default_cache_dir, provision_default_model

    provision_default_model()
    return str(_default_cache_dir(None))


def _hf_model(folder: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(folder)


def task_texts(emotions: list[str], per_emotion: int) -> dict[str, list[str]]:
    """The first ``per_emotion`` training stories of each emotion (what every library gets)."""
    import emolens

    corpus = emolens.load_corpus()
    return {e: [r.text for r in corpus.stories(e, split="train")][:per_emotion] for e in emotions}


def pairs_for(texts: dict[str, list[str]], emotion: str) -> list[tuple[str, str]]:
    """(positive, negative) pairs for ``emotion``: its stories against stories of the other
    emotions, round robin (the j-th pair's negative comes from the other emotion j mod K-1)."""
    names = list(texts)
    c = names.index(emotion)
    others = names[c + 1:] + names[:c]
    out = []
    for j, pos in enumerate(texts[emotion]):
        other = texts[others[j % len(others)]]
        out.append((pos, other[(j // len(others) + c) % len(other)]))
    return out


def _emolens_batches(model: Any, flat: list[str], batch: int) -> list[Any]:
    from emolens.tokens import to_inputs

    flat = sorted(flat, key=lambda t: -len(t))  # extraction's own length-sorted order
    return [to_inputs(model, flat[i:i + batch]) for i in range(0, len(flat), batch)]


def _hf_tokens(tok: Any, strings: list[str]) -> int:
    return sum(len(ids) for ids in tok(strings)["input_ids"])


def _save_dirs(out: Path, dirs: Any, extra: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {"directions": dirs.float().contiguous()}
    tensors.update({k: v.float().contiguous() for k, v in (extra or {}).items()})
    save_file(tensors, str(out))


# ----------------------------------------------------------------------------- workers

def work_emolens(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import emolens
    from emolens.compat import run_to_layer

    model = emolens.load_model()
    texts = task_texts(args.emotions, args.per_emotion)
    flat = [t for ts in texts.values() for t in ts]
    batches = _emolens_batches(model, flat, EMOLENS_BATCH)
    n_tokens = sum(int(b.attention_mask.sum()) for b in batches)
    n_layers = int(model.cfg.n_layers)

    def floor(todo: list[Any] = batches) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in todo:
                run_to_layer(model, b.tokens, [], n_layers, **b.forward_kwargs())
        return time.perf_counter() - t0

    def extract(dtype: str) -> tuple[float, Any, PeakRSS]:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            reg = emolens.extract_emotions(model, texts, neutral=[], validate=False,
                                           progress=False, batch_size=EMOLENS_BATCH,
                                           compute_dtype=dtype, shuffled_control=False)
            dt = time.perf_counter() - t0
        return dt, reg, mem

    floor(batches[:1])  # warm-up (first-call allocations), not counted
    c0 = time.process_time()
    f1 = floor()
    fc1 = time.process_time() - c0
    t32, reg, m32 = extract("float32")
    layers = reg.layers
    dirs = torch.stack([reg.matrix(layer) for layer in layers])  # [L, K, d]
    extra = {"center": torch.stack([reg.center(layer) for layer in layers]),
             "mean_norm": torch.tensor([reg.mean_norm(layer) for layer in layers])}
    res = {"time_s": t32, "cpu_s": m32.cpu_s, "tokens": n_tokens, "texts": len(flat),
           "peak_mib": m32.peak, "floor_s": [f1], "floor_cpu_s": [fc1], "batch": EMOLENS_BATCH}
    if args.auto:  # emolens's default compute dtype ("auto": bf16 autocast where native)
        tauto, reg_auto, mauto = extract("auto")
        extra["directions_auto"] = torch.stack([reg_auto.matrix(layer) for layer in layers])
        res.update(auto_time_s=tauto, auto_cpu_s=mauto.cpu_s, auto_peak_mib=mauto.peak,
                   auto_dtype=str(reg_auto.metadata.get("compute_dtype")))
    _save_dirs(Path(args.out_dir) / f"emolens-k{len(args.emotions)}.safetensors", dirs, extra)
    reg.save(Path(args.out_dir) / f"registry-k{len(args.emotions)}")
    return res


def work_steering_vectors(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from steering_vectors import train_steering_vector

    model, tok = _hf_model(args.folder)
    texts = task_texts(args.emotions, args.per_emotion)
    n_layers = model.config.num_hidden_layers
    all_pairs = {e: pairs_for(texts, e) for e in texts}
    n_tokens = sum(_hf_tokens(tok, [s for p in ps for s in p]) for ps in all_pairs.values())
    out = []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for e in texts:
            sv = train_steering_vector(model, tok, all_pairs[e], layers=None,
                                       read_token_index=-1, batch_size=SV_BATCH,
                                       show_progress=False)
            out.append(torch.stack([sv.layer_activations[i] for i in range(n_layers)]))
        dt = time.perf_counter() - t0
    _save_dirs(Path(args.out_dir) / f"steering_vectors-k{len(texts)}.safetensors",
               torch.stack(out, 1))
    return {"time_s": dt, "tokens": n_tokens, "texts": 2 * sum(map(len, texts.values())),
            "peak_mib": mem.peak, "cpu_s": mem.cpu_s, "batch": SV_BATCH}


def _shim_numpy() -> None:
    import numpy as np

    if not hasattr(np, "float_"):  # removed in numpy 2; repeng 0.4.0 names it in type hints
        np.float_ = np.float64  # type: ignore[attr-defined]


def work_repeng(args: argparse.Namespace) -> dict[str, Any]:
    _shim_numpy()
    import torch
    from repeng import ControlVector, DatasetEntry

    model, tok = _hf_model(args.folder)
    tok.pad_token_id = 0  # as in repeng's emotion notebook
    texts = task_texts(args.emotions, args.per_emotion)
    n_layers = model.config.num_hidden_layers
    data = {e: [DatasetEntry(positive=p, negative=n) for p, n in pairs_for(texts, e)]
            for e in texts}
    n_tokens = sum(_hf_tokens(tok, [s for d in ds for s in (d.positive, d.negative)])
                   for ds in data.values())
    out = []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for e in texts:
            cv = ControlVector.train(model, tok, data[e], hidden_layers=list(range(n_layers)),
                                     batch_size=REPENG_BATCH)
            out.append(torch.stack([torch.from_numpy(cv.directions[i]) for i in range(n_layers)]))
        dt = time.perf_counter() - t0
    _save_dirs(Path(args.out_dir) / f"repeng-k{len(texts)}.safetensors", torch.stack(out, 1))
    return {"time_s": dt, "tokens": n_tokens, "texts": 2 * sum(map(len, texts.values())),
            "peak_mib": mem.peak, "cpu_s": mem.cpu_s, "batch": REPENG_BATCH}


def work_dialz(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from dialz import Dataset, SteeringModel, SteeringVector

    texts = task_texts(args.emotions, args.per_emotion)
    model = SteeringModel(args.folder, layer_ids=list(range(30)))
    model.model = model.model.float()  # SteeringModel loads float16; run the same fp32 weights
    n_layers = model.config.num_hidden_layers
    data = {}
    for e in texts:
        ds = Dataset()
        for p, n in pairs_for(texts, e):
            ds.add_entry(p, n)
        data[e] = ds
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.folder)
    n_tokens = sum(_hf_tokens(tok, [s for d in ds.entries for s in (d.positive, d.negative)])
                   for ds in data.values())
    out = []
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for e in texts:
            sv = SteeringVector.train(model, data[e], method="pca",
                                      hidden_layers=list(range(n_layers)),
                                      batch_size=REPENG_BATCH)
            out.append(torch.stack([torch.from_numpy(sv.directions[i]) for i in range(n_layers)]))
        dt = time.perf_counter() - t0
    _save_dirs(Path(args.out_dir) / f"dialz-k{len(texts)}.safetensors", torch.stack(out, 1))
    return {"time_s": dt, "tokens": n_tokens, "texts": 2 * sum(map(len, texts.values())),
            "peak_mib": mem.peak, "cpu_s": mem.cpu_s, "batch": REPENG_BATCH}


def _bos_batches(tok: Any, flat: list[tuple[str, int]], batch: int
                 ) -> list[tuple[Any, Any, Any, Any]]:
    """emolens's tokens without emolens: BOS + text, right padding, length-sorted; content mask
    = real tokens but the first (the attention sink)."""
    import torch

    flat = sorted(flat, key=lambda t: -len(t[0]))
    out = []
    for i in range(0, len(flat), batch):
        chunk = flat[i:i + batch]
        ids = [[tok.bos_token_id, *tok(t)["input_ids"]] for t, _ in chunk]
        n = max(map(len, ids))
        toks = torch.full((len(ids), n), tok.pad_token_id)
        mask = torch.zeros(len(ids), n, dtype=torch.long)
        for r, row in enumerate(ids):
            toks[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        content = mask.clone()
        content[:, 0] = 0
        out.append((toks, mask, content, torch.tensor([lab for _, lab in chunk])))
    return out


def work_nnsight(args: argparse.Namespace) -> dict[str, Any]:
    import nnsight
    import torch
    from nnsight import TransformersModel

    hf, tok = _hf_model(args.folder)
    model = TransformersModel(hf, tokenizer=tok)
    texts = task_texts(args.emotions, args.per_emotion)
    flat = [(t, c) for c, e in enumerate(texts) for t in texts[e]]
    batches = _bos_batches(tok, flat, EMOLENS_BATCH)
    n_layers, d = hf.config.num_hidden_layers, hf.config.hidden_size
    n_tokens = sum(int(m.sum()) for _, m, _, _ in batches)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        sums = torch.zeros(n_layers, len(texts), d, dtype=torch.float64)
        counts = torch.zeros(len(texts), dtype=torch.float64)
        with torch.no_grad():
            for toks, mask, content, labels in batches:
                with model.trace(toks, attention_mask=mask):
                    outs = nnsight.save([])
                    for layer in range(n_layers):
                        outs.append(model.model.layers[layer].output)
                w = content[..., None].float()
                onehot = torch.nn.functional.one_hot(labels, len(texts)).double()
                for layer, h in enumerate(outs):
                    per_text = (h * w).sum(1) / w.sum(1)  # [batch, d]
                    sums[layer] += onehot.T @ per_text.double()
                counts += onehot.sum(0)
        means = sums / counts[None, :, None]
        dirs = means - means.mean(1, keepdim=True)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        dt = time.perf_counter() - t0
    _save_dirs(Path(args.out_dir) / f"nnsight-k{len(texts)}.safetensors", dirs)
    return {"time_s": dt, "tokens": n_tokens, "texts": len(flat), "peak_mib": mem.peak,
            "cpu_s": mem.cpu_s, "batch": EMOLENS_BATCH}


def work_features(args: argparse.Namespace) -> dict[str, Any]:
    """Validation features at every layer, not timed: mean over content tokens on emolens's
    tokens (the shared rule), and on the HF tokenizer's own tokens (no special tokens, what the
    peers see) the last real token and the mean over every real token."""
    import torch

    import emolens
    from emolens.extraction.extract import stream_sites
    from emolens.sites import resolve_sites

    model = emolens.load_model()
    tok = model.tokenizer
    corpus = emolens.load_corpus()
    recs = corpus.stories(split="validation")
    names = corpus.emotions
    texts = [r.text for r in recs]
    labels = torch.tensor([names.index(r.emotion) for r in recs])
    sites = resolve_sites(model, None)
    n, L, d = len(texts), len(sites), int(model.cfg.d_model)
    content = torch.zeros(n, L, d)
    last = torch.zeros(n, L, d)
    mean_all = torch.zeros(n, L, d)
    order = sorted(range(n), key=lambda i: -len(texts[i]))
    for s in range(0, n, EMOLENS_BATCH):
        idx = order[s:s + EMOLENS_BATCH]

        def on_batch(i: int, act: Any, batch: Any, idx: list[int] = idx) -> None:
            w = batch.content_mask[..., None].float()
            content[idx, i] = (act * w).sum(1) / w.sum(1)

        stream_sites(model, [texts[i] for i in idx], sites, on_batch)
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        m = enc["attention_mask"]
        lastpos = m.sum(1) - 1  # right padding

        def hook_for(i: int, m: Any = m, lastpos: Any = lastpos, idx: list[int] = idx) -> Any:
            def hook(act: Any, *, hook: Any) -> None:
                w = m[..., None].float()
                mean_all[idx, i] = (act * w).sum(1) / w.sum(1)
                last[idx, i] = act[torch.arange(len(idx)), lastpos]
            return hook

        with torch.inference_mode():
            model.run_with_hooks(enc["input_ids"], attention_mask=m, return_type=None,
                                 stop_at_layer=L,
                                 fwd_hooks=[(st.name, hook_for(i)) for i, st in enumerate(sites)])
    from safetensors.torch import save_file

    save_file({"content": content, "last": last, "mean_all": mean_all,
               "labels": labels.float()}, str(Path(args.out_dir) / "features.safetensors"))
    return {"validation_texts": n, "emotions": names}


def work_steer(args: argparse.Namespace) -> dict[str, Any]:
    """Greedy generation tokens/s, one vector added at one layer, each library over its plain."""
    _shim_numpy()
    import torch
    from repeng import ControlModel, ControlVector
    from steering_vectors import SteeringVector

    import emolens
    from emolens.steering import Steering, apply_steering, measure_mean_norm, random_direction

    bridge = emolens.load_model()
    hf, tok = _hf_model(args.folder)  # a second copy: booting the bridge rewires its HF model
    tok.padding_side = "left"
    chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                     add_generation_prompt=True) for p in STEER_PROMPTS]
    enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    norm = measure_mean_norm(bridge, STEER_PROMPTS, layers=[STEER_LAYER])[STEER_LAYER]
    unit = random_direction(int(bridge.cfg.d_model), seed=0)
    vec = 0.1 * norm * unit  # strength 0.1 in emolens units, the same raw vector for every one
    new_tokens = args.steer_tokens
    n_new = ids.shape[0] * new_tokens

    def gen_bridge() -> tuple[float, Any]:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = bridge.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                                  verbose=False, stop_at_eos=False, use_past_kv_cache=True,
                                  attention_mask=mask)
        return n_new / (time.perf_counter() - t0), out[:, ids.shape[1]:]

    def gen_hf(model: Any) -> tuple[float, Any]:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 pad_token_id=tok.pad_token_id)
        return n_new / (time.perf_counter() - t0), out[:, ids.shape[1]:]

    def emolens_steered() -> tuple[float, Any]:
        h = apply_steering(bridge, [Steering(unit, 0.1, layer=STEER_LAYER, scale=norm)])
        try:
            return gen_bridge()
        finally:
            h.remove()

    sv = SteeringVector({STEER_LAYER: vec.clone()}, "decoder_block")

    def sv_steered() -> tuple[float, Any]:
        with sv.apply(hf):
            return gen_hf(hf)

    cm_holder: dict[str, Any] = {}

    def repeng_steered() -> tuple[float, Any]:
        cm = cm_holder["cm"]
        cm.set_control(ControlVector("llama", {STEER_LAYER: vec.numpy()}), 1.0)
        try:
            return gen_hf(cm)
        finally:
            cm.reset()

    def hf_plain() -> tuple[float, Any]:
        return gen_hf(hf)

    configs = {"emolens_plain": gen_bridge, "emolens": emolens_steered, "hf_plain": hf_plain,
               "steering_vectors": sv_steered, "repeng": repeng_steered}
    # ControlModel wraps layer 20 of `hf` in place; with no control set it is a pass-through,
    # so the plain HF runs go through the same wrapper (its cost counts against repeng below).
    cm_holder["cm"] = ControlModel(hf, [STEER_LAYER])
    for fn in configs.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {k: [] for k in configs}
    toks_out: dict[str, Any] = {}
    names = list(configs)
    for rep in range(STEER_REPEATS):
        for k in names[rep % len(names):] + names[:rep % len(names)]:
            r, out = configs[k]()
            rates[k].append(r)
            toks_out[k] = out
    res: dict[str, Any] = {k: statistics.median(v) for k, v in rates.items()}
    res["rates"] = {k: [round(x, 2) for x in v] for k, v in rates.items()}  # every repeat
    res["ratios"] = {
        "emolens": statistics.median(a / b for a, b in zip(rates["emolens"], rates["emolens_plain"])),
        "steering_vectors": statistics.median(
            a / b for a, b in zip(rates["steering_vectors"], rates["hf_plain"])),
        "repeng": statistics.median(a / b for a, b in zip(rates["repeng"], rates["hf_plain"])),
    }
    res["same_tokens_emolens_sv"] = bool(torch.equal(toks_out["emolens"], toks_out["steering_vectors"]))
    res["same_tokens_sv_repeng"] = bool(torch.equal(toks_out["steering_vectors"], toks_out["repeng"]))
    res["steered_differs"] = bool(not torch.equal(toks_out["emolens"], toks_out["emolens_plain"]))
    res["plain_same_tokens"] = bool(torch.equal(toks_out["emolens_plain"], toks_out["hf_plain"]))
    return res


def work_gguf(args: argparse.Namespace) -> dict[str, Any]:
    """emolens -> llama.cpp control vector -> repeng, and repeng -> GGUF -> emolens."""
    _shim_numpy()
    import numpy as np
    import torch
    from repeng import ControlVector
    from safetensors.torch import load_file

    from emolens.errors import FormatError
    from emolens.registry import EmotionRegistry
    from emolens.steering.control_vectors import export_control_vector, import_control_vector

    out = Path(args.out_dir)
    k = next(int(p.name.removeprefix("registry-k")) for p in sorted(out.glob("registry-k*"))
             if (out / f"repeng-k{p.name.removeprefix('registry-k')}.safetensors").is_file())
    reg = EmotionRegistry.load(out / f"registry-k{k}")
    p1 = export_control_vector(reg, "calm", out / "emolens-calm.gguf")
    back = ControlVector.import_gguf(str(p1))
    mine = import_control_vector(p1)
    expect = {n: reg.mean_norm(n) * reg.vector("calm", n).float() for n in reg.layers if n >= 1}
    diff1 = max(float(np.abs(np.asarray(back.directions[n]) - expect[n].numpy()).max())
                for n in expect)
    same_layers1 = sorted(back.directions) == sorted(expect) == sorted(mine)
    dirs = load_file(str(out / f"repeng-k{k}.safetensors"))["directions"]  # [L, K, d]
    k = reg.emotions.index("calm")
    cv = ControlVector("llama", {n: dirs[n, k].numpy() for n in range(1, dirs.shape[0])})
    p2 = out / "repeng-calm.gguf"
    cv.export_gguf(str(p2))
    got = import_control_vector(p2)
    diff2 = max(float((got[n] - torch.from_numpy(cv.directions[n])).abs().max())
                for n in cv.directions)
    same_layers2 = sorted(got) == sorted(cv.directions)
    # repeng exports direction.0 when its vector has layer 0; llama.cpp and emolens refuse it
    cv0 = ControlVector("llama", {n: dirs[n, k].numpy() for n in range(dirs.shape[0])})
    p3 = out / "repeng-calm-with-0.gguf"
    cv0.export_gguf(str(p3))
    try:
        import_control_vector(p3)
        layer0 = "accepted"
    except FormatError as e:
        layer0 = f"FormatError: {str(e)[:90]}"
    return {"emolens_to_repeng_max_abs_diff": diff1, "emolens_to_repeng_layers_equal": same_layers1,
            "repeng_to_emolens_max_abs_diff": diff2, "repeng_to_emolens_layers_equal": same_layers2,
            "layers": len(expect), "repeng_direction0": layer0}


WORKERS = {"emolens": work_emolens, "steering_vectors": work_steering_vectors,
           "repeng": work_repeng, "dialz": work_dialz, "nnsight": work_nnsight,
           "features": work_features, "steer": work_steer, "gguf": work_gguf}


def _worker_main(args: argparse.Namespace) -> int:
    import torch

    torch.manual_seed(0)
    load0 = os.getloadavg()[0]
    res = WORKERS[args.worker](args)
    res["load_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    Path(args.result).write_text(json.dumps(res))
    return 0


# ----------------------------------------------------------------------------- driver

def _run_worker(name: str, out_dir: Path, folder: str, emotions: list[str] | None = None,
                per_emotion: int = 0, log: Any = None, auto: bool = False,
                steer_tokens: int = STEER_TOKENS) -> dict[str, Any] | str:
    tag = f"{name}-k{len(emotions)}" if emotions else name
    result = out_dir / f"{tag}.json"
    cmd = [sys.executable, __file__, "--worker", name, "--out-dir", str(out_dir), "--folder",
           folder, "--result", str(result), "--per-emotion", str(per_emotion),
           "--steer-tokens", str(steer_tokens)]
    if emotions:
        cmd += ["--emotions", ",".join(emotions)]
    if auto:
        cmd += ["--auto"]
    env = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if log is not None:
        log.write(f"==== {tag} rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["?"]
        print(f"[peers] {tag}: FAILED ({tail[0][:200]})", flush=True)
        return f"failed: {tail[0][:200]}"
    res = json.loads(result.read_text())
    print(f"[peers] {tag}: done in {time.perf_counter() - t0:.1f}s "
          f"(work {res.get('time_s', float('nan')):.1f}s, load {res['load_1min']})", flush=True)
    return res


def _importable(name: str) -> str | None:
    code = ("import numpy as np\nif not hasattr(np, 'float_'): np.float_ = np.float64\n"
            f"import {name}")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode == 0:
        return None
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {p.returncode}"


def _accuracy(dirs: Any, feats: Any, labels: Any, center: Any | None) -> list[float]:
    """Per-layer accuracy of argmax_k (x - c) . v_k; dirs [L, K, d] (normalised here)."""
    v = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x = feats if center is None else feats - center[None]
    scores = (x.transpose(0, 1) @ v.transpose(1, 2))  # [L, n, K]
    return (scores.argmax(-1) == labels[None]).float().mean(1).tolist()


def _score(out_dir: Path, k: int, emotions: list[str], libs: list[str], all_names: list[str]
           ) -> dict[str, dict[str, Any]]:
    import torch
    from safetensors.torch import load_file

    f = load_file(str(out_dir / "features.safetensors"))
    labels = f["labels"].long()
    cls = [all_names.index(e) for e in emotions]
    keep = torch.tensor([int(lab) in cls for lab in labels])
    remap = {c: i for i, c in enumerate(cls)}
    y = torch.tensor([remap[int(lab)] for lab in labels[keep]])
    em = load_file(str(out_dir / f"emolens-k{k}.safetensors"))
    center, ref = em["center"], em["directions"]
    native_feature = {"steering_vectors": "last", "repeng": "last", "dialz": "mean_all"}
    res: dict[str, dict[str, Any]] = {}
    for lib in ["emolens", "emolens_auto", *libs]:
        if lib == "emolens_auto":
            if "directions_auto" not in em:
                continue
            dirs = em["directions_auto"]
        else:
            p = out_dir / f"{lib}-k{k}.safetensors"
            if not p.is_file():
                continue
            dirs = load_file(str(p))["directions"]
        shared = _accuracy(dirs, f["content"][keep], y, center)
        best = max(range(len(shared)), key=lambda i: shared[i])
        r: dict[str, Any] = {"acc_by_layer": [round(a, 4) for a in shared],
                             "acc": shared[best], "acc_layer": best, "n_val": int(keep.sum())}
        if lib in native_feature:
            nat = _accuracy(dirs, f[native_feature[lib]][keep], y, None)
            nb = max(range(len(nat)), key=lambda i: nat[i])
            r.update(native_acc=nat[nb], native_layer=nb, native_rule=native_feature[lib])
        unit = dirs / dirs.norm(dim=-1, keepdim=True)
        cos = (unit * ref).sum(-1).mean(-1)  # [L], mean over emotions
        r["cos_by_layer"] = [round(float(c), 4) for c in cos]
        r["cos_mean"] = float(cos.mean())
        res[lib] = r
    ebest = res["emolens"]["acc_layer"]
    for r in res.values():
        r["cos_at_emolens_layer"] = r["cos_by_layer"][ebest]
    return res


def _machine() -> dict[str, str]:
    info = {"model_name": "?", "flags": "?"}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["model_name"] = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                info["flags"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return info


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--out-dir")
    ap.add_argument("--folder")
    ap.add_argument("--result")
    ap.add_argument("--emotions", type=lambda s: s.split(","))
    ap.add_argument("--per-emotion", type=int, default=0)
    ap.add_argument("--auto", action="store_true", help="(worker) also emolens's default dtype")
    ap.add_argument("--auto-tasks", nargs="*", type=int, default=[6, 48],
                    help="the K for which emolens also runs its default compute_dtype='auto'")
    ap.add_argument("--per-emotion-k6", type=int, default=16,
                    help="training stories per emotion for K = 6 (every library alike)")
    ap.add_argument("--per-emotion-k48", type=int, default=6,
                    help="training stories per emotion for K = 48 (every library alike)")
    ap.add_argument("--peers", nargs="*", default=PEERS)
    ap.add_argument("--tasks", nargs="*", type=int, default=[6, 48], help="which K to run")
    ap.add_argument("--no-steer", action="store_true", help="leave out the generation figures")
    ap.add_argument("--steer-tokens", type=int, default=STEER_TOKENS,
                    help="new tokens per greedy generation in the steering figures")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--keep", default=None, help="keep the workers' files in this folder")
    ap.add_argument("--no-feature-cache", action="store_true",
                    help="recompute the validation features (scoring inputs, not timed)")
    args = ap.parse_args()
    if args.worker:
        return _worker_main(args)

    import emolens

    t_start = time.perf_counter()
    up0 = _uptime()
    mach = _machine()
    print(f"[peers] machine: {mach['model_name']}, {os.cpu_count()} cpu, "
          f"python {platform.python_version()}")
    print(f"[peers] uptime before: {up0}")
    print("[peers] this machine is shared with other jobs: times are as loaded as the load says")
    folder = _cache_folder()
    available, skipped = [], {}
    for name in args.peers:
        err = _importable(name)
        if err is None:
            available.append(name)
        else:
            skipped[name] = err
            print(f"[peers] SKIPPED {name} {VERSIONS.get(name, '')}: does not import here "
                  f"({err}); install it into .venv-peers (make bench-peers)")
    corpus = emolens.load_corpus()
    all_names = corpus.emotions
    tasks = [t for t in [(6, K6_EMOTIONS, args.per_emotion_k6),
                         (48, all_names, args.per_emotion_k48)] if t[0] in args.tasks]
    out_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="emolens-peers-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "workers.log", "w")
    raw: dict[str, Any] = {"skipped": skipped}
    # the validation features are scoring inputs, not a measured figure: cached by corpus and
    # model so that a rerun spends its time on the measurements
    from emolens.models.loading import DEFAULT_GGUF_SHA256, cache_root

    cached = (cache_root() / "bench-peers" /
              f"features-{corpus.content_hash[:12]}-{DEFAULT_GGUF_SHA256[:12]}.safetensors")
    if cached.is_file() and not args.no_feature_cache:
        shutil.copyfile(cached, out_dir / "features.safetensors")
        raw["features"] = {"cached": str(cached)}
        print(f"[peers] validation features from the cache ({cached})", flush=True)
    else:
        print("[peers] features of the validation split (not timed) ...", flush=True)
        raw["features"] = _run_worker("features", out_dir, folder, log=log)
        if isinstance(raw["features"], dict):
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            shutil.copyfile(out_dir / "features.safetensors", tmp)
            os.replace(tmp, cached)
    # K = 48 first with the goals' libraries, then the cheap checks, then the rest: on a loaded
    # machine the figures that matter most come first, and results.json is written after each
    core = ["emolens"] + [p for p in ("repeng", "steering_vectors") if p in available]
    rest = [p for p in available if p not in core]
    big = sorted(tasks, key=lambda t: -t[0])
    plan: list[tuple[str, Any]] = []
    for i, (k, emotions, n) in enumerate(big):
        plan += [(lib, (k, emotions, n)) for lib in core]
        if i == 0:
            if "repeng" in available:
                plan.append(("gguf", None))
            if "steering_vectors" in available and "repeng" in available and not args.no_steer:
                plan.append(("steer", None))
        plan += [(lib, (k, emotions, n)) for lib in rest]
    ctx = dict(args=args, out_dir=out_dir, tasks=tasks, available=available, skipped=skipped,
               all_names=all_names, mach=mach, up0=up0, t_start=t_start)
    for name, task in plan:
        if task is None:
            raw[name] = _run_worker(name, out_dir, folder, log=log, steer_tokens=args.steer_tokens)
        else:
            k, emotions, n = task
            raw[f"{name}-k{k}"] = _run_worker(name, out_dir, folder, emotions, n, log=log,
                                              auto=(name == "emolens" and k in args.auto_tasks))
        log.flush()
        _report(raw, final=False, **ctx)
    log.close()
    _report(raw, final=True, **ctx)
    return 0


def _report(raw: dict[str, Any], *, final: bool, args: Any, out_dir: Path, tasks: list[Any],
            available: list[str], skipped: dict[str, str], all_names: list[str],
            mach: dict[str, str], up0: str, t_start: float) -> None:
    """Figures from what has run so far, merged into ``args.out``; the table when ``final``."""
    up1 = _uptime()

    results: dict[str, Any] = {}
    table = []
    for k, emotions, n in tasks:
        ok = [lib for lib in available if isinstance(raw.get(f"{lib}-k{k}"), dict)]
        em = raw.get(f"emolens-k{k}")
        if not isinstance(em, dict) or not isinstance(raw.get("features"), dict):
            if final:
                print(f"[peers] K={k}: emolens or the features failed or did not run; see "
                      f"{out_dir / 'workers.log'}")
            continue
        scores = _score(out_dir, k, emotions, ok, all_names)
        suffix = "" if k == 48 else f"_k{k}"
        floor = statistics.mean(em["floor_s"])
        floor_cpu = statistics.mean(em["floor_cpu_s"])
        rows = [("emolens", em["time_s"], em["cpu_s"], em["tokens"], em["peak_mib"], em["texts"],
                 em["batch"])]
        if "auto_time_s" in em:
            rows.append(("emolens_auto", em["auto_time_s"], em["auto_cpu_s"], em["tokens"],
                         em["auto_peak_mib"], em["texts"], em["batch"]))
        rows += [(lib, *(raw[f"{lib}-k{k}"][f] for f in ("time_s", "cpu_s", "tokens", "peak_mib",
                                                         "texts", "batch"))) for lib in ok]
        results[f"peers_emolens_floor_s{suffix}"] = round(floor, 2)
        results[f"peers_emolens_vs_floor{suffix}"] = round(em["time_s"] / floor, 3)
        results[f"peers_emolens_vs_floor_cpu{suffix}"] = round(em["cpu_s"] / floor_cpu, 3)
        for lib, t, cpu, tokens, peak, n_texts, batch in rows:
            s = scores[lib]
            key = f"peers_{lib}"
            results[f"{key}_time_s{suffix}"] = round(t, 2)
            results[f"{key}_cpu_s{suffix}"] = round(cpu, 2)
            results[f"{key}_tokens_per_s{suffix}"] = round(tokens / t, 1)
            results[f"{key}_peak_mib{suffix}"] = round(peak, 1)
            results[f"{key}_acc{suffix}"] = round(s["acc"], 4)
            results[f"{key}_acc_layer{suffix}"] = s["acc_layer"]
            if "native_acc" in s:
                results[f"{key}_native_acc{suffix}"] = round(s["native_acc"], 4)
                results[f"{key}_native_acc_layer{suffix}"] = s["native_layer"]
            if lib != "emolens":
                results[f"{key}_cos{suffix}"] = round(s["cos_at_emolens_layer"], 4)
                results[f"{key}_cos_mean{suffix}"] = round(s["cos_mean"], 4)
                results[f"{key}_speedup{suffix}"] = round(t / em["time_s"], 2)
                results[f"{key}_speedup_cpu{suffix}"] = round(cpu / em["cpu_s"], 2)
            table.append((k, n, lib, t, cpu, tokens / t, peak, s, n_texts, batch,
                          t / em["time_s"], cpu / em["cpu_s"]))
    st = raw.get("steer")
    if isinstance(st, dict):
        results["peers_steer_plain_bridge_tok_s"] = round(st["emolens_plain"], 1)
        results["peers_steer_plain_hf_tok_s"] = round(st["hf_plain"], 1)
        for lib in ("emolens", "steering_vectors", "repeng"):
            results[f"peers_{lib}_steer_tok_s"] = round(st[lib], 1)
            results[f"peers_{lib}_steer_vs_plain"] = round(st["ratios"][lib], 3)
        for key in ("same_tokens_emolens_sv", "same_tokens_sv_repeng", "steered_differs",
                    "plain_same_tokens"):
            results[f"peers_steer_{key}"] = st[key]
    gg = raw.get("gguf")
    if isinstance(gg, dict):
        results["peers_gguf_emolens_to_repeng_max_abs_diff"] = gg["emolens_to_repeng_max_abs_diff"]
        results["peers_gguf_repeng_to_emolens_max_abs_diff"] = gg["repeng_to_emolens_max_abs_diff"]
        results["peers_gguf_layers_equal"] = bool(gg["emolens_to_repeng_layers_equal"]
                                                  and gg["repeng_to_emolens_layers_equal"])
        results["peers_gguf_repeng_direction0"] = gg["repeng_direction0"]
    results["peers_skipped"] = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "none"
    results["peers_uptime_before"] = up0
    results["peers_uptime_after"] = up1
    results["peers_complete"] = final
    results["peers_machine"] = f"{mach['model_name']} x{os.cpu_count()}"
    results["peers_per_emotion"] = f"K=6: {args.per_emotion_k6}, K=48: {args.per_emotion_k48}"
    results["peers_run_s"] = round(time.perf_counter() - t_start, 1)

    from emolens.io import write_json

    merged: dict[str, Any] = {}
    if Path(args.out).is_file():
        merged = json.loads(Path(args.out).read_text())
    merged.update(results)
    write_json(args.out, merged)
    (out_dir / "raw.json").write_text(json.dumps(raw, indent=1, default=str))
    if not final:
        return
    print(f"[peers] uptime after: {up1}")

    print("\n| K | stories/emotion | library | batch | texts forwarded | wall s | CPU s | tokens/s "
          "| peak MiB | acc shared (layer) | acc own rule (layer) | cos to emolens | peer/emolens "
          "wall (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k, n, lib, t, cpu, tps, peak, s, n_texts, batch, sp, spc in table:
        own = (f"{s['native_acc']:.3f} ({s['native_layer']})" if "native_acc" in s else "-")
        cos = f"{s['cos_at_emolens_layer']:.3f}" if lib != "emolens" else "1"
        print(f"| {k} | {n} | {lib} | {batch} | {n_texts} | {t:.1f} | {cpu:.1f} | {tps:.0f} | "
              f"{peak:.0f} | {s['acc']:.3f} ({s['acc_layer']}) | {own} | {cos} | "
              f"{sp:.2f} ({spc:.2f}) |")
    print()
    width = max(len(k) for k in results)
    for key, v in results.items():
        val = f"{v:.4g}" if isinstance(v, float) else str(v)
        print(f"{key:<{width}}  {val:>12}  {GOALS.get(key, '')}")
    print(f"\nwritten: {args.out} (merged); worker files and log: {out_dir}")



def run(ctx: Any) -> dict[str, float]:
    """``benchmarks/run_all.py`` hook: the peers need their own environment, so ``make bench``
    only points at ``make bench-peers`` and leaves the ``peers_*`` figures as they are."""
    print("[bench] peers: run `make bench-peers` (own environment .venv-peers)", flush=True)
    return {}


if __name__ == "__main__":
    sys.exit(main())
