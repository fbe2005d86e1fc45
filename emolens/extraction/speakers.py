"""Speaker families: "present speaker" and "other speaker" directions from dialogues.

The study (Sofroniew, Lindsey et al. 2026, section 1 of SCIENCE.md) builds, with the story
recipe on dialogue data, "present speaker" vectors (close to the story vectors) and "other
speaker" vectors (nearly orthogonal to them): the first read the emotion of whoever is speaking
at that token, the second the emotion of the party who is not. emolens defines them on the
bundled speaker dialogues (``emolens.stimuli.speakers``), where one side shows an emotion and
the other stays neutral:

- ``which="present"``: residual activations at the tokens of the expressing side's turns
  (the user's message when the user shows the emotion, the assistant's reply when the
  assistant does), labelled with the dialogue's emotion;
- ``which="other"``: activations at the tokens of the neutral side's turns that come after the
  expressing side's first turn (that side is speaking; the emotion belongs to the other
  party), labelled with the same emotion.

Both use both directions of the dialogue (user expressing and assistant expressing, 10 + 10
per emotion in the bundled set), so neither family is a role direction. Directions are fitted
by ``extract_emotions`` (the same recipe as the stories: difference of means against the mean
over emotions, neutral-dialogue denoising) on the ``train`` split of the dialogues
(``emolens.stimuli.corpus.split_of``), and stored as an ``EmotionRegistry`` of family
``"present_speaker"`` / ``"other_speaker"``.

Positions. Only the content tokens of the chosen turns are read (not the chat template's role
header or end-of-turn tokens, not the other turns). The position-policy vocabulary
(``emolens.extraction.positions``) has no per-turn policy, so each reading point is given to
``extract_emotions`` as its own text, the rendered dialogue cut after that token, with the
policy ``"last"``: in a causal model the last token of the cut text has exactly the activation
that token has in the whole dialogue (the cut texts are checked to tokenise to the dialogue's
own token ids; a point whose cut does not is skipped and counted). Up to
``positions_per_turn`` points per turn, evenly spaced over its content tokens and always
including its last token, are read; a class mean is then the mean over those (dialogue, token)
readings.

``speaker_story_cosines`` compares these registries with the story registry per emotion: the
matching-emotion cosine (diagonal), the mismatched-pair baseline (off-diagonal), bootstrap
intervals over emotions, and random directions of equal norm as a placebo.
"""
from __future__ import annotations

import html
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emolens.errors import InputError, check_positive_int, unknown_name_message
from emolens.registry import EmotionRegistry
from emolens.stimuli.speakers import Dialogue, DialogueSet, load_dialogues

if TYPE_CHECKING:
    from emolens.compat import Model

WHICH = ("present", "other")
FAMILIES = {"present": "present_speaker", "other": "other_speaker"}
DEFINITIONS = {
    "present": "activations at the content tokens of the turns of the side that shows the "
               "emotion (user or assistant), labelled with that emotion",
    "other": "activations at the content tokens of the neutral side's turns after the "
             "expressing side's first turn, labelled with the other party's emotion",
}


def _check_which(which: str) -> str:
    if which not in WHICH:
        raise InputError(unknown_name_message("speaker family", which, WHICH,
                                              "'present' = the expressing side's turns, "
                                              "'other' = the neutral side's later turns"))
    return which


def _content_spans(text: str, messages: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
    """Character spans of each message's content in the rendered dialogue, in order."""
    spans, cursor = [], 0
    for _, content in messages:
        body = content if text.find(content, cursor) >= 0 else content.strip()
        start = text.find(body, cursor)
        if start < 0:
            raise InputError(f"the chat template changed the message {content[:40]!r} when "
                             "rendering it, so its tokens cannot be located; speaker readings "
                             "need a template that keeps message text verbatim")
        spans.append((start, start + len(body)))
        cursor = start + len(body)
    return spans


def _reading_points(n: int, k: int) -> list[int]:
    """Up to ``k`` indices evenly spaced over ``range(n)``, the last one included."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def turn_readings(model: Model, dialogue: Dialogue, which: str, positions_per_turn: int = 8
                  ) -> tuple[list[str], int]:
    """The cut texts whose last token is a reading point of ``dialogue`` for ``which``, and
    the number of points skipped because their cut did not tokenise to the dialogue's ids.

    Each text is the rendered dialogue (``emolens.tokens.render_chat``) up to and including one
    content token of a chosen turn, so ``position_mask(batch, "last")`` selects exactly that
    token and, the model being causal, its activation equals the whole dialogue's there.
    """
    from emolens.tokens import to_inputs

    _check_which(which)
    check_positive_int(positions_per_turn, "positions_per_turn")
    batch = to_inputs(model, [dialogue.chat()])
    ids = batch.tokens[0][batch.attention_mask[0].bool()].tolist()
    tok = model.tokenizer
    prefixes = [tok.decode(ids[:i + 1]) for i in range(len(ids))]
    full = prefixes[-1]
    spans = _content_spans(full, dialogue.messages)
    ends = [len(p) for p in prefixes]
    starts = [0, *ends[:-1]]
    lead = tok.decode(ids[:1])
    texts: list[str] = []
    skipped = 0
    for turn in dialogue.turns(which):
        lo, hi = spans[turn]
        inside = [i for i in range(1, len(ids))
                  if starts[i] >= lo and ends[i] <= hi and ends[i] > starts[i]]
        for j in _reading_points(len(inside), positions_per_turn):
            i = inside[j]
            text = prefixes[i]
            found = None
            # strings get the model's BOS; the chat rendering may already start with it
            for candidate in (text, *([text[len(lead):]] if text.startswith(lead) else [])):
                got = to_inputs(model, [candidate])
                if got.tokens[0][got.attention_mask[0].bool()].tolist() == ids[:i + 1]:
                    found = candidate
                    break
            if found is None:
                skipped += 1
            else:
                texts.append(found)
    return texts, skipped


def speaker_texts(model: Model, dialogues: Sequence[Dialogue], which: str,
                  positions_per_turn: int = 8
                  ) -> tuple[dict[str, list[str]], dict[str, list[int]], dict[str, Any]]:
    """Emotion -> cut texts (``turn_readings``) over ``dialogues``; emotion -> the index in
    ``dialogues`` of each text's dialogue (its permutation group); and counts."""
    out: dict[str, list[str]] = {}
    groups: dict[str, list[int]] = {}
    skipped = 0
    per_dialogue: list[int] = []
    for i, d in enumerate(dialogues):
        texts, s = turn_readings(model, d, which, positions_per_turn)
        out.setdefault(d.emotion, []).extend(texts)
        groups.setdefault(d.emotion, []).extend([i] * len(texts))
        skipped += s
        per_dialogue.append(len(texts))
    info = {"n_dialogues": len(dialogues), "n_readings": sum(per_dialogue),
            "skipped_points": skipped,
            "readings_per_dialogue": (round(float(np.mean(per_dialogue)), 2)
                                      if per_dialogue else 0.0)}
    return out, groups, info


def extract_speaker_emotions(model: Model, which: str = "present",
                             dialogues: DialogueSet | None = None, *, layers: Any = None,
                             emotions: Sequence[str] | None = None,
                             default_layer: int | None = None, positions_per_turn: int = 8,
                             split: str | None = "train", neutral: Sequence[Any] | None = None,
                             validate: bool = True, method: str = "mean_diff",
                             batch_size: int | None = None, compute_dtype: Any = "auto",
                             progress: bool = True, name: str | None = None,
                             max_dialogues_per_emotion: int | None = None,
                             n_shuffled: int = 5,
                             shuffled_out: list[EmotionRegistry] | None = None,
                             **method_params: Any) -> EmotionRegistry:
    """Build the "present speaker" or "other speaker" registry from speaker dialogues.

    Args:
        model: a TransformerLens model with a chat template (or a catalogue model's plain
            dialogue rendering).
        which: ``"present"`` (the expressing side's turns) or ``"other"`` (the neutral side's
            turns after the expressing side spoke); see the module docstring.
        dialogues: a ``DialogueSet`` (default: the bundled one, ``load_dialogues()``).
        layers: as in ``extract_emotions`` (default: every layer).
        emotions: restrict to these (default: every emotion of the dialogues).
        default_layer: the registry's default layer (default: ``extract_emotions``'s choice;
            pass the story registry's default layer to compare at the same layer).
        positions_per_turn: reading points per turn (evenly spaced over its content tokens).
        split: the dialogues the directions are fitted on (``"train"``; ``None``: all).
        neutral: denoising dialogues (default: the default corpus's neutral dialogues, as for
            the story registry).
        validate: classify the held-out dialogues' readings (``dev`` + ``test``) with
            ``emolens.evaluate`` and record the accuracy per layer in
            ``metadata["speaker"]["heldout"]``.
        max_dialogues_per_emotion: use at most this many dialogues per emotion of each split
            (``select_dialogues``: user- and assistant-expressing alternately, in file order).
        n_shuffled, shuffled_out: with a list as ``shuffled_out``, ``n_shuffled`` registries
            fitted on the same readings with permuted emotion labels (seeds 0..K-1, the
            permutation of ``extract_emotions(label_permutation_seed=k)``, over the training
            dialogues: every reading of a dialogue keeps one label, since readings of one
            dialogue are not exchangeable) are appended to it, from the same pass (no extra
            forward): the shuffled-label control of ``speaker_story_cosines``.
        method, batch_size, compute_dtype, progress, method_params: as in
            ``extract_emotions``.

    Returns an ``EmotionRegistry`` with ``family`` ``"present_speaker"`` or
    ``"other_speaker"``; ``metadata["speaker"]`` records the definition, the reading counts and
    the held-out accuracy, ``metadata["corpus"]`` the dialogue set.
    """
    from emolens.extraction.extract import extract_emotions

    which = _check_which(which)
    ds = dialogues if dialogues is not None else load_dialogues()
    if not isinstance(ds, DialogueSet):
        raise InputError(f"dialogues must be a DialogueSet (emolens.stimuli.speakers."
                         f"load_dialogues), got {type(ds).__name__}")
    names = list(emotions) if emotions is not None else ds.emotions
    check_positive_int(max_dialogues_per_emotion, "max_dialogues_per_emotion", allow_none=True)
    if shuffled_out is not None:
        check_positive_int(n_shuffled, "n_shuffled")
    train = select_dialogues(ds, names, split, max_dialogues_per_emotion)
    texts, groups, info = speaker_texts(model, train, which, positions_per_turn)
    missing = [e for e in names if not texts.get(e)]
    if missing:
        raise InputError(f"no {split or 'any'}-split dialogue readings for emotion "
                         f"{missing[0]!r}; add dialogues for it or pass split=None")
    if neutral is None:
        from emolens.stimuli import load_corpus

        neutral = [r.messages for r in load_corpus().neutral]
    family = FAMILIES[which]
    reg = extract_emotions(model, {e: texts[e] for e in names}, layers=layers, method=method,
                           positions="last", batch_size=batch_size, emotions=names,
                           neutral=list(neutral), validate=False, default_layer=default_layer,
                           family=family, name=name or f"{family}-{method}", progress=progress,
                           compute_dtype=compute_dtype,
                           shuffled_control=n_shuffled if shuffled_out is not None else False,
                           shuffled_out=shuffled_out,
                           permutation_groups={e: groups[e] for e in names}, **method_params)
    speaker: dict[str, Any] = {
        "which": which, "definition": DEFINITIONS[which],
        "positions": f"last token of the dialogue cut after each of up to {positions_per_turn} "
                     "evenly spaced content tokens per chosen turn",
        "positions_per_turn": positions_per_turn, "split": split,
        "max_dialogues_per_emotion": max_dialogues_per_emotion, **info}
    if validate:
        held = select_dialogues(ds, names, "validation", max_dialogues_per_emotion)
        held_texts, _, held_info = speaker_texts(model, held, which, positions_per_turn)
        flat = [(t, e) for e in names for t in held_texts.get(e, [])]
        if flat:
            from emolens.readout.evaluation import evaluate

            ev = evaluate(model, reg, [t for t, _ in flat], [e for _, e in flat],
                          positions="last", batch_size=batch_size, progress=progress)
            speaker["heldout"] = {
                "split": "validation (dev + test)", **held_info,
                "accuracy_by_layer": {str(k): round(float(v), 4)
                                      for k, v in ev.accuracy_by_layer.items()},
                "chance": round(float(ev.chance), 4)}
    corpus = {**ds.info(), "kind": "speaker dialogues",
              "texts": {e: len(texts[e]) for e in names}}
    for r in (reg, *(shuffled_out or ())):
        r.metadata["speaker"] = speaker if r is reg else {
            k: v for k, v in speaker.items() if k != "heldout"}
        r.metadata["corpus"] = corpus
    return reg


def select_dialogues(ds: DialogueSet, emotions: Sequence[str], split: str | None,
                     max_per_emotion: int | None = None) -> list[Dialogue]:
    """The dialogues of ``emotions`` in ``split``; with ``max_per_emotion``, at most that many
    per emotion, taken user-expressing and assistant-expressing alternately (file order), so a
    small selection still has both directions of the dialogue."""
    if max_per_emotion is None:
        return ds.select(emotions, split=split)
    out: list[Dialogue] = []
    for e in emotions:
        sides = [ds.select(e, split=split, speaker=who) for who in ("user", "assistant")]
        mixed = [d for pair in itertools.zip_longest(*sides) for d in pair if d is not None]
        out += mixed[:max_per_emotion]
    return out


# --------------------------------------------------------------------------- comparison

@dataclass
class SpeakerCosines:
    """Cosines of speaker-family directions with the story directions, per emotion.

    ``cosines[family]``: ``[emotion, emotion]`` matrix, row = speaker direction, column = story
    direction (unit vectors, so entries are cosines). ``summary[family]``: ``diagonal`` (mean
    matching-emotion cosine), ``off_diagonal`` (mean over mismatched pairs), ``gap``
    (diagonal - off-diagonal), each with a bootstrap 95% interval over emotions,
    ``placebo`` (random directions of the speaker directions' norm against the story
    directions: the mean matching cosine and its 95% band over draws), and, where shuffled-label
    registries were given, ``shuffled`` (directions fitted on the same readings with permuted
    emotion labels: the mean over seeds of their mean matching cosine, ``shuffled_range`` the
    lowest and highest seed, ``shuffled_by_seed`` each seed's). ``registries``: the speaker
    registries compared (``speaker_experiment`` fills it; not in ``to_dict``).
    """

    layer: int
    emotions: list[str]
    cosines: dict[str, np.ndarray]
    summary: dict[str, dict[str, Any]]
    between: dict[str, dict[str, float]] = field(default_factory=dict)
    n_resamples: int = 2000
    n_placebo: int = 1000
    story_name: str = "story"
    registries: dict[str, EmotionRegistry] = field(default_factory=dict, repr=False)

    def per_emotion(self) -> Any:
        """A DataFrame: one row per emotion, one column per family (matching cosine)."""
        import pandas as pd

        return pd.DataFrame({f: np.diag(c) for f, c in self.cosines.items()},
                            index=pd.Index(self.emotions, name="emotion"))

    @property
    def statement(self) -> str:
        parts = []
        for fam, s in self.summary.items():
            lo, hi = s["gap_ci"]
            plo, phi = s["placebo_band"]
            verdict = ("the matching emotion's story direction is closer than the mismatched "
                       "ones (interval of the gap above 0)" if lo > 0 else
                       "the matching and mismatched cosines are not distinguishable (interval "
                       "of the gap includes 0)" if hi >= 0 else
                       "the matching cosines are below the mismatched ones")
            shuffled = ""
            if "shuffled" in s:
                slo, shi = s["shuffled_range"]
                above = s["diagonal_ci"][0] > shi
                shuffled = (f"; directions fitted on the same readings with permuted emotion "
                            f"labels ({s['n_shuffled']} seeds) give {s['shuffled']:.3f} "
                            f"[{slo:.3f}, {shi:.3f}] (lowest and highest seed), so the matching "
                            f"cosine is {'' if above else 'not '}above what the shared "
                            "dialogue content gives without the emotion labels")
            parts.append(
                f"{fam} vs {self.story_name} directions at layer {self.layer}, "
                f"{len(self.emotions)} emotions: matching-emotion cosine "
                f"{s['diagonal']:.3f} [{s['diagonal_ci'][0]:.3f}, {s['diagonal_ci'][1]:.3f}], "
                f"mismatched pairs {s['off_diagonal']:.3f} [{s['off_diagonal_ci'][0]:.3f}, "
                f"{s['off_diagonal_ci'][1]:.3f}], gap {s['gap']:.3f} [{lo:.3f}, {hi:.3f}]; "
                f"random directions of equal norm give {s['placebo']:.3f} "
                f"[{plo:.3f}, {phi:.3f}]: {verdict}{shuffled}.")
        for pair, d in self.between.items():
            parts.append(f"{pair}: matching-emotion cosine {d['diagonal']:.3f} (mismatched "
                         f"{d['off_diagonal']:.3f}).")
        parts.append("The study reports present-speaker vectors close to the story vectors "
                     "and other-speaker vectors nearly orthogonal to them; intervals resample "
                     "emotions (a statement about these emotions' directions, not about "
                     "texts), and the directions of one registry sum to about zero over "
                     "emotions, so the mismatched baseline sits below 0 by construction.")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "emotions": list(self.emotions),
                "story": self.story_name,
                "registries": {f: {"name": r.name, "family": r.family,
                                   "speaker": r.metadata.get("speaker", {})}
                               for f, r in self.registries.items()},
                "cosines": {f: np.round(c, 6).tolist() for f, c in self.cosines.items()},
                "per_emotion": {f: dict(zip(self.emotions, np.round(np.diag(c), 6).tolist()))
                                for f, c in self.cosines.items()},
                "summary": {f: {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in s.items()} for f, s in self.summary.items()},
                "between": self.between, "n_resamples": self.n_resamples,
                "n_placebo": self.n_placebo, "statement": self.statement}

    def _repr_html_(self) -> str:
        e = html.escape
        rows = []
        for fam, s in self.summary.items():
            shuf = (f"{s['shuffled']:.3f} [{s['shuffled_range'][0]:.3f}, "
                    f"{s['shuffled_range'][1]:.3f}]" if "shuffled" in s else "-")
            rows.append(
                f"<tr><td>{e(fam)}</td><td>{s['diagonal']:.3f} [{s['diagonal_ci'][0]:.3f}, "
                f"{s['diagonal_ci'][1]:.3f}]</td><td>{s['off_diagonal']:.3f} "
                f"[{s['off_diagonal_ci'][0]:.3f}, {s['off_diagonal_ci'][1]:.3f}]</td>"
                f"<td>{s['gap']:.3f} [{s['gap_ci'][0]:.3f}, {s['gap_ci'][1]:.3f}]</td>"
                f"<td>{s['placebo']:.3f} [{s['placebo_band'][0]:.3f}, "
                f"{s['placebo_band'][1]:.3f}]</td><td>{shuf}</td></tr>")
        head = ("<tr><th>family</th><th>matching cosine</th><th>mismatched</th><th>gap</th>"
                "<th>random placebo</th><th>shuffled labels</th></tr>")
        table = self.per_emotion().to_html(float_format=lambda x: f"{x:.3f}", border=0)
        return (f"<div><p><b>Speaker families vs {e(self.story_name)} directions, layer "
                f"{self.layer}</b></p><table>{head}{''.join(rows)}</table>"
                f"<p>{e(self.statement)}</p>{table}</div>")

    def figure(self) -> Any:
        """Matching-emotion cosine per emotion and family, with the random placebo's and the
        shuffled-label control's family means as reference lines
        (``emolens.views.study.plot_speaker_cosines``)."""
        from emolens.views.study import plot_speaker_cosines

        return plot_speaker_cosines(
            self.emotions, {f: np.diag(c) for f, c in self.cosines.items()},
            placebo={f: s["placebo"] for f, s in self.summary.items()},
            shuffled={f: s["shuffled"] for f, s in self.summary.items() if "shuffled" in s},
            title=f"Speaker directions vs {self.story_name} directions, layer {self.layer}")


def _bootstrap(c: np.ndarray, n: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap over emotions: the mean diagonal and mean off-diagonal of ``c`` restricted to
    resampled emotions (pairs of different emotions only)."""
    k = c.shape[0]
    diag, off = np.empty(n), np.empty(n)
    for b in range(n):
        idx = np.asarray(rng.integers(0, k, size=(k,)), dtype=np.int64)
        diag[b] = c[idx, idx].mean()
        sub = c[np.ix_(idx, idx)]
        differ = idx[:, None] != idx[None, :]
        off[b] = sub[differ].mean() if differ.any() else np.nan
    return diag, off


def _summary(c: np.ndarray, story: np.ndarray, norms: np.ndarray, n_resamples: int,
             n_placebo: int, rng: np.random.Generator) -> dict[str, Any]:
    k = c.shape[0]
    off_mask = ~np.eye(k, dtype=bool)
    diag, off = float(np.diag(c).mean()), float(c[off_mask].mean())
    bd, bo = _bootstrap(c, n_resamples, rng)
    gap = bd - bo

    def ci(x: np.ndarray) -> tuple[float, float]:
        x = x[np.isfinite(x)]
        return (round(float(np.percentile(x, 2.5)), 6), round(float(np.percentile(x, 97.5)), 6))

    # placebo: per emotion, random Gaussian directions rescaled to the speaker direction's norm
    rand = rng.standard_normal((n_placebo, k, story.shape[1]))
    rand *= (norms / np.linalg.norm(rand, axis=-1))[..., None]
    cos = (rand * story[None]).sum(-1) / (norms[None] * np.linalg.norm(story, axis=-1)[None])
    placebo_means = cos.mean(1)  # [draw]: the matching-cosine mean a random registry gets
    return {"diagonal": round(diag, 6), "diagonal_ci": ci(bd),
            "off_diagonal": round(off, 6), "off_diagonal_ci": ci(bo),
            "gap": round(diag - off, 6), "gap_ci": ci(gap),
            "placebo": round(float(placebo_means.mean()), 6), "placebo_band": ci(placebo_means),
            "placebo_abs_cosine": round(float(np.abs(cos).mean()), 6)}


def _shuffled_summary(cosines: Sequence[np.ndarray]) -> dict[str, Any]:
    """The shuffled-label control: each seed's mean matching cosine, their mean and range."""
    by_seed = [float(np.diag(c).mean()) for c in cosines]
    return {"shuffled": round(float(np.mean(by_seed)), 6),
            "shuffled_range": (round(min(by_seed), 6), round(max(by_seed), 6)),
            "shuffled_by_seed": [round(v, 6) for v in by_seed],
            "shuffled_abs_cosine": round(float(np.mean([np.abs(np.diag(c)).mean()
                                                        for c in cosines])), 6),
            "n_shuffled": len(by_seed)}


def speaker_story_cosines(story: EmotionRegistry,
                          speakers: EmotionRegistry | Sequence[EmotionRegistry] |
                          Mapping[str, EmotionRegistry], *, layer: int | None = None,
                          emotions: Sequence[str] | None = None, n_resamples: int = 2000,
                          n_placebo: int = 1000, seed: int = 0,
                          shuffled: Mapping[str, Sequence[EmotionRegistry]] | None = None
                          ) -> SpeakerCosines:
    """Cosines of speaker-family directions with the story directions, per emotion.

    ``speakers``: one registry, several, or ``{label: registry}`` (labels default to the
    registries' ``family``). ``layer``: default the story registry's default layer (it must be
    a layer of every registry). ``emotions``: default those every registry has, in the story
    registry's order (at least 3). Per family: the matching-emotion cosine, the mean over
    mismatched pairs, their gap, bootstrap 95% intervals over emotions (``n_resamples``), and
    ``n_placebo`` random directions of equal norm per emotion; with two or more families, the
    matching cosines between them (``between``). ``shuffled``: ``{label: [registries]}``, the
    shuffled-label control of a family (``extract_speaker_emotions(shuffled_out=...)``: the
    same readings fitted with permuted emotion labels), reported beside the real and placebo
    cosines. No model is needed.
    """
    check_positive_int(n_resamples, "n_resamples")
    check_positive_int(n_placebo, "n_placebo")
    if isinstance(speakers, EmotionRegistry):
        regs = {speakers.family: speakers}
    elif isinstance(speakers, Mapping):
        regs = dict(speakers)
    else:
        regs = {}
        for r in speakers:
            label = r.family if r.family not in regs else f"{r.family}-{len(regs)}"
            regs[label] = r
    if not regs:
        raise InputError("give at least one speaker registry")
    shuffled = dict(shuffled or {})
    for label, group in shuffled.items():
        if label not in regs:
            raise InputError(unknown_name_message("speaker family", label, list(regs),
                                                  "shuffled controls are keyed like the "
                                                  "speaker registries"))
        if isinstance(group, EmotionRegistry) or not group:
            raise InputError(f"shuffled[{label!r}] must be a non-empty list of registries")
        for r in group:
            if not isinstance(r, EmotionRegistry) or r.d_model != story.d_model:
                raise InputError(f"shuffled[{label!r}] holds a {type(r).__name__} that is "
                                 "not a registry of the story registry's model")
    for label, r in regs.items():
        if not isinstance(r, EmotionRegistry):
            raise InputError(f"speaker registry {label!r} is a {type(r).__name__}, not an "
                             "EmotionRegistry")
        if r.d_model != story.d_model:
            raise InputError(f"registry {label!r} has d_model {r.d_model} but the story "
                             f"registry has {story.d_model}; build both on the same model")
    layer = story.default_layer if layer is None else int(layer)
    for label, r in [("story", story), *regs.items(),
                     *[(f"shuffled {f}", r) for f, g in shuffled.items() for r in g]]:
        if layer not in r.layers:
            raise InputError(f"layer {layer} is not a layer of the {label} registry (its "
                             f"layers: {r.layers}); extract both at the same layers")
    everyone = [*regs.values(), *[r for g in shuffled.values() for r in g]]
    common = [e for e in story.emotions if all(e in r.emotions for r in everyone)]
    names = list(emotions) if emotions is not None else common
    bad = [e for e in names if e not in common]
    if bad:
        raise InputError(unknown_name_message("emotion", bad[0], common,
                                              "every registry must have it"))
    if len(names) < 3:
        raise InputError(f"need at least 3 shared emotions to separate matching from "
                         f"mismatched pairs, got {names}")

    def mat(r: EmotionRegistry) -> np.ndarray:
        m = r.matrix(layer).detach().to(torch.float64).cpu().numpy()
        return np.stack([m[r.emotions.index(e)] for e in names])

    s = mat(story)
    s_unit = s / np.linalg.norm(s, axis=-1, keepdims=True)
    rng = np.random.default_rng(seed)
    cosines, summary, units = {}, {}, {}
    for label, r in regs.items():
        p = mat(r)
        norms = np.linalg.norm(p, axis=-1)
        units[label] = p / norms[:, None]
        cosines[label] = units[label] @ s_unit.T
        summary[label] = _summary(cosines[label], s, norms, n_resamples, n_placebo, rng)
        if label in shuffled:
            summary[label].update(_shuffled_summary([_unit(mat(r)) @ s_unit.T
                                                     for r in shuffled[label]]))
    between: dict[str, dict[str, float]] = {}
    labels = list(regs)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            c = units[a] @ units[b].T
            off = c[~np.eye(len(names), dtype=bool)]
            between[f"{a} vs {b}"] = {"diagonal": round(float(np.diag(c).mean()), 6),
                                      "off_diagonal": round(float(off.mean()), 6)}
    return SpeakerCosines(layer, names, cosines, summary, between, n_resamples, n_placebo,
                          story.name, regs)


def _unit(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=-1, keepdims=True)


def speaker_experiment(model: Model, story: EmotionRegistry, *,
                       which: Sequence[str] = WHICH, emotions: Sequence[str] | None = None,
                       dialogues: DialogueSet | None = None, layer: int | None = None,
                       max_dialogues_per_emotion: int | None = None,
                       positions_per_turn: int = 8, n_shuffled: int = 5, validate: bool = True,
                       neutral: Sequence[Any] | None = None, n_resamples: int = 2000,
                       n_placebo: int = 1000, seed: int = 0, batch_size: int | None = None,
                       compute_dtype: Any = "auto", progress: bool = True) -> SpeakerCosines:
    """The whole speaker experiment for a story registry: build the speaker families
    (``which``) at one layer, each with its shuffled-label control from the same pass, and
    compare them with the story directions (``speaker_story_cosines``).

    ``layer``: default the story registry's default layer; the speaker registries are
    extracted at that layer only (the forward stops there). ``emotions``: default the story
    registry's emotions that the dialogues have (at least 3). ``max_dialogues_per_emotion``,
    ``positions_per_turn``: the size (``select_dialogues``; default every training dialogue, 8
    points per turn). ``n_shuffled``: shuffled-label seeds per family (0: none). ``validate``:
    held-out accuracy of the readings (``extract_speaker_emotions``; costs a forward per
    held-out reading). ``neutral``: denoising dialogues (default: the default corpus's, as for
    a story registry built with the defaults). Returns the ``SpeakerCosines`` with
    ``registries`` set to the families' registries.
    """
    fams = [_check_which(w) for w in ([which] if isinstance(which, str) else which)]
    if not fams or len(set(fams)) != len(fams):
        raise InputError(f"which must name 'present' and/or 'other' once each, got {which!r}")
    if isinstance(n_shuffled, bool) or not isinstance(n_shuffled, int) or n_shuffled < 0:
        raise InputError(f"n_shuffled must be an integer >= 0 (0: no shuffled-label control), "
                         f"got {n_shuffled!r}")
    ds = dialogues if dialogues is not None else load_dialogues()
    if not isinstance(ds, DialogueSet):
        raise InputError(f"dialogues must be a DialogueSet (emolens.stimuli.speakers."
                         f"load_dialogues), got {type(ds).__name__}")
    layer = story.default_layer if layer is None else int(layer)
    if layer not in story.layers:
        raise InputError(f"layer {layer} is not a layer of the story registry (its layers: "
                         f"{story.layers})")
    names = (list(emotions) if emotions is not None
             else [e for e in story.emotions if e in ds.emotions])
    if len(names) < 3:
        raise InputError(f"need at least 3 emotions that both the story registry and the "
                         f"dialogues have, got {names}")
    regs: dict[str, EmotionRegistry] = {}
    shuffled: dict[str, list[EmotionRegistry]] = {}
    for w in fams:
        out: list[EmotionRegistry] = []
        regs[FAMILIES[w]] = extract_speaker_emotions(
            model, w, ds, layers=[layer], emotions=names, default_layer=layer,
            positions_per_turn=positions_per_turn, neutral=neutral, validate=validate,
            batch_size=batch_size, compute_dtype=compute_dtype, progress=progress,
            max_dialogues_per_emotion=max_dialogues_per_emotion, n_shuffled=max(n_shuffled, 1),
            shuffled_out=out if n_shuffled else None)
        if out:
            shuffled[FAMILIES[w]] = out
    return speaker_story_cosines(story, regs, layer=layer, emotions=names,
                                 n_resamples=n_resamples, n_placebo=n_placebo, seed=seed,
                                 shuffled=shuffled)
