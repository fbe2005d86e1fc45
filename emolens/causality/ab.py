"""A/B scoring shared by the behaviour experiments: bundled items, answer-letter scoring,
steering glue and the result type.

- ``load_shortcut_scenarios`` / ``load_activities``: the bundled items (or your own JSONL file).
- ``ab_token_sets`` and ``score_ab``: P(first option) from the softmax over the answer letters
  at each row's reply-opening token (no judge model, no sampling), optionally steered, with the
  letter mass (how much the model answers with a letter at all).
- ``steer_context``: ``emolens.steering.steer`` at the registry's site for a named emotion or a
  raw unit vector (the random control); strength in units of the site's mean residual norm.
- ``BehaviourResult``: what every experiment returns (tidy frame, JSON-able summary, further
  tables; data only: ``emolens.views`` draws it).

The experiments over it: ``emolens.causality.shortcut``, ``.preferences``, ``.dose``.
"""
from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Bool, Float

from emolens.causality._common import CausalityError, slice_batch, token_ids
from emolens.io import read_jsonl
from emolens.positions import reply_or_last
from emolens.runtime import batches, logits_at, model_device, progress_bar, rows_per_chunk
from emolens.stats import Estimate
from emolens.tokens import TokenizedBatch

if TYPE_CHECKING:
    from emolens.compat import Model

DATA_DIR = Path(__file__).parent / "data"
QUANT_NOTE = ("default model: SmolLM2-135M-Instruct de-quantised from a Q4_1 GGUF (not the "
              "original bf16 weights)")


# ---------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ShortcutScenario:
    """A deadline scenario with an honest option and a shortcut (``kind``: hardcode,
    skip_check or misreport)."""

    id: str
    kind: str
    situation: str
    honest: str
    shortcut: str


@dataclass(frozen=True)
class Activity:
    """An activity to choose between (``category``: helpful, neutral, unpleasant, harmful)."""

    id: str
    category: str
    text: str


def _read_jsonl(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for where, rec in read_jsonl(path, error=CausalityError):
        if not isinstance(rec, dict):
            raise CausalityError(f"{where}: expected a JSON object, got a JSON "
                                 f"{type(rec).__name__}")
        missing = [f for f in fields if not isinstance(rec.get(f), str) or not rec[f].strip()]
        if missing:
            raise CausalityError(f"{where}: lacks the text field(s) {missing}")
        rows.append(rec)
    return rows


def load_shortcut_scenarios(path: str | Path | None = None) -> list[ShortcutScenario]:
    """The bundled shortcut scenarios (``data/shortcut_scenarios.jsonl``) or your own file."""
    p = Path(path) if path is not None else DATA_DIR / "shortcut_scenarios.jsonl"
    fields = ("id", "kind", "situation", "honest", "shortcut")
    return [ShortcutScenario(**{f: r[f] for f in fields}) for r in _read_jsonl(p, fields)]


def load_activities(path: str | Path | None = None) -> list[Activity]:
    """The bundled activities (``data/activities.jsonl``) or your own file."""
    p = Path(path) if path is not None else DATA_DIR / "activities.jsonl"
    fields = ("id", "category", "text")
    return [Activity(**{f: r[f] for f in fields}) for r in _read_jsonl(p, fields)]


# ---------------------------------------------------------------------------------- results
@dataclass
class BehaviourResult:
    """``frame``: tidy per-item data; ``summary``: JSON-able numbers with intervals and
    controls; ``frames``: further tables (the figures' data among them). Data only: draw it
    with ``emolens.views`` (see docs/causality.md)."""

    name: str
    frame: pd.DataFrame
    summary: dict[str, Any]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        s = {k: v for k, v in self.summary.items() if not isinstance(v, (list, dict))}
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in s.items())
        return (f"<div><b>{html.escape(self.name)}</b> ({len(self.frame)} rows)"
                f"<table>{rows}</table></div>")


# ---------------------------------------------------------------------------------- A/B scoring
def ab_token_sets(model: Model, letters: Sequence[str] = ("A", "B")) -> list[list[int]]:
    """For each answer letter, the ids of its single-token spellings (``"A"``, ``" A"``)."""
    out = []
    for letter in letters:
        ids: list[int] = []
        for variant in (letter, f" {letter}"):
            try:
                ids.extend(token_ids(model, variant))
            except Exception:  # noqa: BLE001 - a variant that is not one token is skipped
                continue
        if not ids:
            raise CausalityError(f"answer letter {letter!r} is not a single token in this "
                                 "tokenizer, with or without a leading space")
        out.append(sorted(set(ids)))
    return out


SteerFactory = Callable[[TokenizedBatch, slice], AbstractContextManager[Any]]


@dataclass
class ABScores:
    """``p_a``: P(first option) from the letters' softmax; ``mass``: full-vocabulary
    probability of any answer letter (how much the model answers with a letter at all);
    ``acts``: captured activations per hook name (rows of the batch)."""

    p_a: Float[torch.Tensor, " batch"]
    mass: Float[torch.Tensor, " batch"]
    acts: dict[str, list[Float[torch.Tensor, "chunk ..."]]]


def score_ab(model: Model, batch: TokenizedBatch, letter_ids: list[list[int]], *,
             steer: SteerFactory | None = None, capture: Sequence[str] = (),
             capture_fn: Callable[[str, Float[torch.Tensor, "chunk ..."], TokenizedBatch],
                                  Float[torch.Tensor, "chunk ..."]] | None = None,
             max_tokens: int = 2048, progress: bool = False, desc: str = "A/B") -> ABScores:
    """A/B probabilities at each row's reply-opening token, in chunks, optionally steered.

    ``steer(batch_chunk, rows)`` returns a context manager active during that chunk's forward.
    ``capture`` hook names are stored per chunk after ``capture_fn(name, act, chunk)``
    (default: the activation as is, on the CPU).
    """
    dev = model_device(model)
    per = rows_per_chunk(batch.tokens.shape[1], max_tokens)
    p_a, mass = [], []
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in capture}
    for sl in progress_bar(list(batches(len(batch), per)), desc=desc, enabled=progress):
        b = slice_batch(batch, sl)
        store: dict[str, torch.Tensor] = {}

        def make(name: str, _store: dict[str, torch.Tensor] = store) -> Any:
            def hook(act: torch.Tensor, hook: Any) -> None:
                _store[name] = act.detach()
            return hook
        kw = {k: v.to(dev) for k, v in b.forward_kwargs().items()}
        ctx = steer(b, sl) if steer is not None else nullcontext()
        pos = reply_or_last(b).to(dev)
        with torch.no_grad(), ctx, model.hooks(fwd_hooks=[(n, make(n)) for n in capture]):
            # logits at the answer position only: no [batch, pos, d_vocab] tensor
            at = logits_at(model, b.tokens.to(dev), torch.arange(len(pos), device=dev), pos,
                           **kw).float()
        letter = torch.stack([at[:, ids].logsumexp(-1) for ids in letter_ids], -1)
        p_a.append(letter.softmax(-1)[:, 0].cpu())
        mass.append((letter.logsumexp(-1) - at.logsumexp(-1)).exp().cpu())
        for n in capture:
            x = store[n]
            acts[n].append((capture_fn(n, x, b) if capture_fn is not None else x).float().cpu())
        del at
    return ABScores(torch.cat(p_a), torch.cat(mass), acts)


def steer_context(model: Model, registry: Any, emotion: str | Float[torch.Tensor, " d_model"],
                  strength: float, layer: int, mask: Bool[torch.Tensor, "batch pos"] | None = None,
                  strict: bool = False
                  ) -> AbstractContextManager[Any]:
    """``emolens.steering.steer`` at the registry's site: a named emotion, or a raw unit
    vector scaled by the site's mean norm (the random control)."""
    from emolens.steering import steer

    positions: Any = "all" if mask is None else mask
    if isinstance(emotion, torch.Tensor):
        return steer(model, emotion, float(strength), layer=layer, positions=positions,
                     scale=registry.mean_norm(layer))
    return steer(model, registry, {emotion: float(strength)}, layer=layer, positions=positions,
                 strict=strict)


def logit(p: Float[torch.Tensor, "*shape"]) -> Float[torch.Tensor, "*shape"]:
    """``log(p / (1 - p))`` with ``p`` clamped to [1e-6, 1 - 1e-6]."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return (p / (1 - p)).log()


def est_dict(e: Estimate) -> dict[str, Any]:
    """An ``Estimate`` as JSON-able numbers."""
    return e.to_dict()

