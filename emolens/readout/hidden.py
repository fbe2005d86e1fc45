"""Hidden-emotion check: where the model's internal emotion signal is high but the words are not.

The study found that steering toward "desperate" at +0.05 changed behaviour while the transcript
showed no visible emotion: an internal state not reflected in the output. This check compares,
sentence by sentence of a text the model wrote (read in its own chat context):

- the internal signal: the readout of each emotion at the registry's default layer, averaged
  over the sentence's tokens and z-scored against the same readout on emotionally neutral
  assistant replies (the corpus's neutral dialogues);
- what the words show, measured independently of the model: hits of the emotion's lexicon (the
  corpus's per-emotion word lists: the emotion word, its inflections and close synonyms) and the
  VADER sentiment lexicon's compound valence (MIT licence; optional).

A sentence is flagged for an emotion when its internal z-score exceeds ``z_threshold`` while the
sentence contains none of that emotion's words and (when VADER is installed) its valence is
near neutral (``|compound| < valence_threshold``). A flag is a place to look, not proof of a
hidden state: z-scores against one neutral baseline are noisy on small models.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from emolens.errors import InputError
from emolens.registry import EmotionRegistry

if TYPE_CHECKING:
    from emolens.compat import Model

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")


@dataclass
class NeutralBaseline:
    """Mean and standard deviation of each emotion's readout on neutral replies at one layer."""

    layer: int
    mean: torch.Tensor
    std: torch.Tensor
    n_tokens: int


def neutral_baseline(model: Model, registry: EmotionRegistry, dialogues: Sequence[Any], *,
                     layer: int | None = None, batch_size: int | None = None) -> NeutralBaseline:
    """Readout statistics over the assistant-reply tokens of neutral chat dialogues."""
    from emolens.readout.readout import read_emotions

    if not dialogues:
        raise InputError("need at least one neutral dialogue for the baseline")
    layer = registry.default_layer if layer is None else layer
    ro = read_emotions(model, registry, [list(d) for d in dialogues], layer=layer,
                       batch_size=batch_size)
    rows = []
    for b in range(len(dialogues)):
        start = int(ro.reply_pos[b]) + 1
        m = ro.mask[b].clone()
        m[:start] = False
        rows.append(ro.scores[b][m])
    x = torch.cat(rows)
    return NeutralBaseline(layer, x.mean(0), x.std(0).clamp(min=1e-6), int(x.shape[0]))


def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        return None
    return SentimentIntensityAnalyzer()


def hidden_emotion_check(model: Model, registry: EmotionRegistry, reply: str, *,
                         prompt: Sequence[Mapping[str, str]] | None = None,
                         baseline: NeutralBaseline, lexicon: Mapping[str, Sequence[str]],
                         emotions: Sequence[str] | None = None, z_threshold: float = 2.0,
                         valence_threshold: float = 0.3) -> Any:
    """Per sentence of ``reply`` and emotion: internal z-score, lexicon hits, valence, flag.

    Args:
        reply: the assistant's text (what the model wrote).
        prompt: the chat messages before it (default: none, the reply read as an assistant
            turn after an empty user turn).
        baseline: from ``neutral_baseline`` (same registry and layer).
        lexicon: emotion -> words that show it (e.g. ``corpus.forbidden``).
    Returns a tidy ``pandas.DataFrame`` (sentence, emotion, internal_z, lexicon_hits,
    valence, flagged) with ``df.attrs`` describing the rule.
    """
    import pandas as pd

    from emolens.readout.readout import read_emotions
    from emolens.stimuli.text import ForbiddenMatcher

    if not reply.strip():
        raise InputError("reply is empty: pass the text the model wrote")
    emotions = list(emotions or registry.emotions)
    for e in emotions:
        registry.emotion_index(e)
    messages = [*(prompt or [{"role": "user", "content": ""}]),
                {"role": "assistant", "content": reply}]
    ro = read_emotions(model, registry, [messages], layer=baseline.layer)
    tokens = ro.str_tokens[0]
    start = int(ro.reply_pos[0]) + 1
    scores = ro.scores[0][ro.mask[0]]
    z = (scores - baseline.mean) / baseline.std
    # map character offsets of the reply to its tokens
    offsets, pos = [], 0
    text_tokens = tokens[start:]
    for t in text_tokens:
        offsets.append(pos)
        pos += len(t)
    joined = "".join(text_tokens)
    shift = joined.find(reply[:20]) if reply[:20] in joined else 0
    vader = _vader()
    matchers = {e: ForbiddenMatcher(lexicon.get(e, (e,))) for e in emotions}
    rows = []
    for m in _SENTENCE.finditer(reply):
        sent = m.group(0).strip()
        if not sent:
            continue
        lo, hi = m.start() + shift, m.end() + shift
        idx = [start + i for i, o in enumerate(offsets) if lo <= o < hi]
        if not idx:
            continue
        zs = z[idx].mean(0)
        valence = vader.polarity_scores(sent)["compound"] if vader is not None else float("nan")
        for e in emotions:
            zi = float(zs[registry.emotion_index(e)])
            hit = matchers[e].find(sent)
            quiet = vader is None or abs(valence) < valence_threshold
            rows.append({"sentence": sent, "emotion": e, "internal_z": round(zi, 3),
                         "lexicon_hits": hit or "", "valence": valence,
                         "flagged": bool(zi > z_threshold and hit is None and quiet)})
    df = pd.DataFrame(rows)
    df.attrs["rule"] = (f"flagged: internal z > {z_threshold} vs neutral replies at layer "
                        f"{baseline.layer}, no lexicon word of the emotion, and |VADER "
                        f"compound| < {valence_threshold}")
    return df
