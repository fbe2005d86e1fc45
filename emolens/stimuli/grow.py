"""Grow the stimulus corpus with model-written stories, each kept only if recognisable.

``grow_corpus(authors, judge, emotions, topics, n_per_topic, out_dir)``: for each author model
(catalogue names or loaded models, one at a time), ``generate_stories`` writes the study's kind
of story (topic x emotion prompts, the emotion never named, one paragraph, first and third
person alternating) to ``out_dir/generated-<author>.jsonl``, batched and resumable, filtered
for forbidden words, length and near-duplicates, and records the author on every story. Then
the judge (a model other than the author; ``emolens.stimuli.recognise``) ranks each story's
intended emotion among all candidates, and the stories ranked within the top ``k`` go to
``out_dir/kept-<author>.jsonl`` (rewritten atomically on every call, so it always reflects the
generated file) with the rank in ``meta``. ``Corpus.from_jsonl`` loads the kept files, so a
bank (``emolens.compare.bank``) can train on one author and test on another.
"""
from __future__ import annotations

import gc
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emolens.errors import InputError


def _load(spec: Any) -> tuple[Any, str]:
    if isinstance(spec, str):
        from emolens.models import load_model

        return load_model(spec), spec
    from emolens.stimuli.generate import _model_name

    return spec, _model_name(spec)


def grow_corpus(authors: Sequence[Any], judge: Any, emotions: Sequence[str],
                topics: Sequence[str], n_per_topic: int, out_dir: str | Path, *, k: int = 5,
                candidates: Sequence[str] | None = None, batch_size: int = 4,
                max_new_tokens: int = 140, seed: int = 0, progress: bool = True,
                **generate_kwargs: Any) -> dict[str, Any]:
    """Generate, filter and check stories (see the module docstring). ``candidates``: the
    emotion words the judge chooses among (default: every emotion of the bundled corpus).
    ``max_new_tokens`` (default 140, about 100 words): longer samples overrun the 120-word limit
    (measured: SmolLM2-135M at 200 tokens wrote two of two stories too long); an unfinished
    last sentence is cut. Other ``generate_stories`` options pass through.
    Returns a summary per author: generated, kept, the judge's top-1 and pass rates, seconds."""
    from emolens.io import atomic_open, safe_filename
    from emolens.stimuli import load_corpus
    from emolens.stimuli.generate import generate_stories
    from emolens.stimuli.recognise import recognisability

    if not authors:
        raise InputError("grow_corpus needs at least one author model")
    if isinstance(judge, str) and judge in [a for a in authors if isinstance(a, str)]:
        raise InputError(f"the judge {judge!r} is also an author; choose a judge that did not "
                         "write the stories")
    cands = list(candidates) if candidates is not None else list(load_corpus().emotions)
    missing = [e for e in emotions if e not in cands]
    if missing:
        raise InputError(f"emotions {missing} are not among the judge's candidates")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    files = []
    for spec in authors:
        t0 = time.perf_counter()
        model, name = _load(spec)
        path = out / f"generated-{safe_filename(name)}.jsonl"
        gen = generate_stories(model, emotions, topics, n_per_topic, out_path=path,
                               batch_size=batch_size, seed=seed, progress=progress,
                               max_new_tokens=max_new_tokens, **generate_kwargs)
        if isinstance(spec, str):
            del model
            gc.collect()
        files.append((name, path, gen, time.perf_counter() - t0))
    judge_model, judge_name = _load(judge)
    for name, path, gen, seconds in files:
        t0 = time.perf_counter()
        recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
        recs = [r for r in recs if r.get("kind") == "story" and r.get("emotion") in cands]
        check = recognisability(judge_model, [r["text"] for r in recs],
                                [r["emotion"] for r in recs], cands, k=k) if recs else None
        kept = 0
        with atomic_open(out / f"kept-{safe_filename(name)}.jsonl", "w") as f:
            for i, r in enumerate(recs):
                if check is None or not check.passed[i]:
                    continue
                r = dict(r)
                r["meta"] = {**(r.get("meta") or {}), "recognised_by": judge_name,
                             "recognised_rank": check.ranks[i], "recognised_k": k}
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                kept += 1
        summary[name] = {"generated": len(recs), "accepted_this_call": gen.accepted,
                         "rejected_this_call": dict(gen.rejected), "kept": kept,
                         "check": check.to_dict() if check else None,
                         "seconds_generate": round(seconds, 1),
                         "seconds_check": round(time.perf_counter() - t0, 1)}
    return summary
