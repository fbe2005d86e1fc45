"""Have a chat model write one-paragraph emotion stories in the study's style, resumably.

``generate_stories`` asks the model, through its chat template, for a story about a topic in
which a character feels an emotion that is shown and never named. Each reply is cleaned (titles,
quotes and line breaks removed, an unfinished last sentence cut) and filtered: forbidden words,
too short or too long, near-duplicates of any story already accepted (word 5-gram overlap).
Accepted stories are appended to a JSON-lines file, flushed and fsynced one by one, as records
that ``Corpus.from_jsonl`` loads. A rerun reads the file first and skips the (emotion, topic,
index) slots already filled, so an interrupted run loses nothing.

Each slot's sampling seed is derived from ``seed`` and the slot, so with ``batch_size=1`` a run
is deterministic and a resumed run writes exactly what an uninterrupted one would have.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from emolens.errors import CorpusError, InputError
from emolens.stimuli.corpus import parse_record
from emolens.stimuli.text import (
    NEAR_DUPLICATE_OVERLAP,
    ForbiddenMatcher,
    NearDuplicateIndex,
    word_count,
)

if TYPE_CHECKING:
    from emolens.compat import Model

STORY_PROMPT = (
    "Write a short story, one paragraph of about 80 words, on the topic \"{topic}\". "
    "{Character} is {emotion}, but the story never says so: show it only through what "
    "happens, what {character} does, says and thinks, and how the body reacts. Do not use "
    "the word "
    "\"{emotion}\", any synonym of it, or the words \"feeling\" and \"emotion\". "
    "{person_instruction} Reply with the story only, no title."
)
PERSON_INSTRUCTIONS = {
    "first": "Write it in the first person (\"I ...\").",
    "third": "Write it in the third person.",
}
NAMES = (
    "Maria", "James", "Aiko", "Kwame", "Priya", "Lukas", "Fatima", "Diego", "Mei", "Tomasz",
    "Amara", "Oliver", "Sofia", "Ravi", "Ingrid", "Kofi", "Leila", "Hiroshi", "Elena", "Samuel",
    "Nadia", "Mateo", "Yuki", "Aaliyah", "Chen", "Olga", "Emeka", "Isabel", "Arjun", "Hana",
)
GENERIC_FORBIDDEN = ("emotion", "emotions", "feeling", "feelings")
REJECT_REASONS = ("empty", "too_short", "too_long", "forbidden", "near_duplicate")
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)]*")


@dataclass
class GenerationSummary:
    """What a ``generate_stories`` run did.

    slots: (emotion, topic, index) slots asked for; skipped: already in the file at start;
    accepted: stories written by this run; rejected: candidate counts by reason;
    unfilled: slots still empty after ``max_attempts`` (a rerun tries them again).
    """

    out_path: str
    slots: int
    skipped: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    unfilled: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {"out_path": self.out_path, "slots": self.slots, "skipped": self.skipped,
                "accepted": self.accepted, "rejected": dict(self.rejected),
                "unfilled": [list(s) for s in self.unfilled]}

    def __str__(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.rejected.items() if v) or "none"
        return (f"{self.accepted} stories written to {self.out_path} ({self.skipped} of "
                f"{self.slots} slots already done; rejected: {reasons}; "
                f"{len(self.unfilled)} slots unfilled)")


def slug(text: str) -> str:
    """Lower-case ``text`` with runs of other characters turned into single dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _derive_seed(*parts: object) -> int:
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()
    return int(h[:8], 16)


def story_prompt(emotion: str, topic: str, person: str, name: str = "Maria",
                 template: str = STORY_PROMPT) -> str:
    """The user message asking for one story (``person``: ``"first"`` or ``"third"``)."""
    character = "the narrator" if person == "first" else name
    try:
        return template.format(emotion=emotion, topic=topic, character=character,
                               Character=character[:1].upper() + character[1:],
                               person_instruction=PERSON_INSTRUCTIONS[person])
    except (KeyError, IndexError, ValueError) as e:
        raise InputError(f"the story prompt template cannot be filled ({e!r}); it may use "
                         "{emotion}, {topic}, {character}, {Character} and "
                         "{person_instruction}") from None


def clean_story(text: str, *, finished: bool = True) -> str:
    """One paragraph from a model's reply: drop a title line, markdown and wrapping quotes,
    join lines, and (when ``finished`` is False) cut an unfinished last sentence."""
    text = text.replace("\r", "")
    paras = [p.strip() for p in re.split(r"\n\s*\n|\n", text) if p.strip()]
    while len(paras) > 1:
        first = paras[0]
        looks_like_title = (first.startswith(("#", "**", "Title")) or
                            (word_count(first) <= 12 and not _SENTENCE_END.search(first[-3:])))
        if not looks_like_title:
            break
        paras.pop(0)
    out = " ".join(paras)
    out = re.sub(r"[*_#]{1,3}", "", out)
    out = re.sub(r"\s+", " ", out).strip()
    if len(out) >= 2 and out[0] in "\"\u201c" and out[-1] in "\"\u201d" \
            and out.count('"') + out.count("\u201c") + out.count("\u201d") == 2:
        out = out[1:-1].strip()
    if not finished:
        ends = list(_SENTENCE_END.finditer(out))
        if ends:
            out = out[:ends[-1].end()].strip()
    return out


def _model_name(model: Model) -> str:
    try:
        from emolens.models.provenance import model_provenance

        return str(model_provenance(model).model_id)
    except Exception:  # noqa: BLE001 - provenance is best-effort metadata
        return str(getattr(model.cfg, "model_name", "unknown"))


def _stop_ids(model: Model) -> set[int]:
    ids: set[int] = set()
    eos = getattr(model.cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(i) for i in eos)
    tok_eos = getattr(model.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    return ids


def _read_existing(path: Path) -> list[dict[str, Any]]:
    """Records already in ``path``; a torn last line (a crash mid-write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            json.loads(tail.decode("utf-8"))
            torn = False
        except (UnicodeDecodeError, json.JSONDecodeError):
            torn = True
        with open(path, "r+b") as f:
            if torn:
                f.truncate(cut)
                data = data[:cut]
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
                data += b"\n"
            f.flush()
            os.fsync(f.fileno())
    out: list[dict[str, Any]] = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorpusError(f"{where}: not valid JSON ({e}); fix or remove the line before "
                              "resuming") from None
        rec = parse_record(obj, where)
        out.append({"record": rec, "where": where})
    return out


def _check_args(emotions: Sequence[str], topics: Sequence[str], n_per_topic: int,
                max_new_tokens: int, temperature: float, max_attempts: int,
                batch_size: int) -> None:
    for label, items in (("emotions", emotions), ("topics", topics)):
        if not items:
            raise InputError(f"{label} must be a non-empty list of strings, got {items!r:.60}")
        for x in items:
            if not isinstance(x, str) or not x.strip() or x != x.strip() or "\n" in x:
                raise InputError(f"{label}: {x!r:.40} must be a non-empty one-line string")
        if len(set(items)) != len(items):
            raise InputError(f"{label} has repeats: {list(items)}")
        slugs = [slug(x) for x in items]
        if len(set(slugs)) != len(slugs):
            raise InputError(f"{label} {list(items)} give clashing record ids ({slugs}); "
                             "rename one")
    if n_per_topic < 1:
        raise InputError(f"n_per_topic must be >= 1, got {n_per_topic}")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if max_attempts < 1 or batch_size < 1:
        raise InputError(f"max_attempts and batch_size must be >= 1, got {max_attempts}, "
                         f"{batch_size}")


@dataclass(frozen=True)
class _Slot:
    emotion: str
    topic: str
    index: int

    @property
    def person(self) -> str:
        return "third" if self.index % 2 == 0 else "first"

    @property
    def id(self) -> str:
        return f"gen-{slug(self.emotion)}-{slug(self.topic)}-{self.index + 1:04d}"


def generate_stories(model: Model, emotions: Sequence[str], topics: Sequence[str],
                     n_per_topic: int, *, out_path: str | os.PathLike[str],
                     max_new_tokens: int = 200, temperature: float = 0.9, seed: int = 0,
                     forbidden: Mapping[str, Sequence[str]] | None = None,
                     progress: bool = True, min_words: int = 40, max_words: int = 120,
                     max_overlap: float = NEAR_DUPLICATE_OVERLAP, max_attempts: int = 3,
                     batch_size: int = 1, top_p: float | None = None,
                     prompt_template: str = STORY_PROMPT) -> GenerationSummary:
    """Write ``n_per_topic`` stories for every (emotion, topic) pair to ``out_path`` (JSONL).

    model: any model with the TransformerLens surface and a chat template.
    forbidden: emotion -> words a story may not contain (whole-word, case-insensitive); by
    default the bundled corpus's lists where it has the emotion, else the emotion word. The
    emotion word itself and "emotion"/"feeling" are always forbidden.
    min_words / max_words: accepted length range (words as ``word_count`` counts them).
    max_overlap: reject a story sharing more than this fraction of its word 5-grams with any
    story already in the file or accepted by this run.
    max_attempts: samples tried per slot before it is left unfilled (a rerun tries again).
    batch_size: slots sampled together (left-padded). With 1 (the default) each slot has its
    own seed, so a resumed run writes exactly what an uninterrupted one would have; with more,
    a run is deterministic for a given file state but a resumed batch may differ.
    Returns a ``GenerationSummary``: accepted, skipped, rejected by reason, unfilled slots.
    Odd slot indices ask for first-person stories, even ones for third-person.
    """
    from tqdm.auto import tqdm

    from emolens.tokens import to_inputs

    for label, items in (("emotions", emotions), ("topics", topics)):
        if isinstance(items, str):
            raise InputError(f"{label} must be a list of strings, got the string {items!r:.40}; "
                             f"write [{items!r:.40}]")
    emotions, topics = list(emotions), list(topics)
    _check_args(emotions, topics, n_per_topic, max_new_tokens, temperature, max_attempts,
                batch_size)
    if forbidden is None:
        from emolens.stimuli.corpus import load_corpus

        bundled = load_corpus().forbidden
        forbidden = {e: bundled[e] for e in emotions if e in bundled}
    matchers = {e: ForbiddenMatcher([*forbidden.get(e, ()), e, *GENERIC_FORBIDDEN])
                for e in emotions}

    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = _read_existing(path)
    index = NearDuplicateIndex(threshold=max_overlap)
    done: set[tuple[str, str, int]] = set()
    ids: set[str] = set()
    for item in existing:
        rec = item["record"]
        ids.add(rec.id)
        if rec.kind != "story" or rec.text is None:
            continue
        index.add(rec.id, rec.text)
        slot_no = (rec.meta or {}).get("slot")
        if isinstance(slot_no, int) and rec.emotion is not None and rec.topic is not None:
            done.add((rec.emotion, rec.topic, slot_no))

    slots = [_Slot(e, t, i) for e in emotions for t in topics for i in range(n_per_topic)]
    # a slot is done when a story in the file names it in meta.slot or carries its id
    pending = [s for s in slots if (s.emotion, s.topic, s.index) not in done and s.id not in ids]
    summary = GenerationSummary(out_path=str(path), slots=len(slots),
                                skipped=len(slots) - len(pending))
    model_name = _model_name(model)
    stop_ids = _stop_ids(model)
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    device = getattr(model.cfg, "device", None)
    cuda_devices = ([torch.device(device).index or 0]
                    if device is not None and torch.device(device).type == "cuda" else [])

    bar = tqdm(total=len(pending), disable=not progress, desc="stories", unit="slot")
    with open(path, "a", encoding="utf-8") as out:
        for start in range(0, len(pending), batch_size):
            group = pending[start:start + batch_size]
            open_slots = list(group)
            for attempt in range(1, max_attempts + 1):
                if not open_slots:
                    break
                if batch_size == 1:
                    s = open_slots[0]
                    run_seed = _derive_seed(seed, s.emotion, s.topic, s.index, attempt)
                else:
                    run_seed = _derive_seed(seed, *[(s.emotion, s.topic, s.index)
                                                    for s in open_slots], attempt)
                prompts = []
                for s in open_slots:
                    name = NAMES[_derive_seed(seed, s.emotion, s.topic, s.index) % len(NAMES)]
                    prompts.append([{"role": "user", "content": story_prompt(
                        s.emotion, s.topic, s.person, name, prompt_template)}])
                batch = to_inputs(model, prompts, padding_side="left")
                width = int(batch.tokens.shape[1])
                if n_ctx and width + max_new_tokens > n_ctx:
                    raise InputError(
                        f"the prompt ({width} tokens) plus max_new_tokens={max_new_tokens} "
                        f"exceeds the model's context of {n_ctx} tokens; lower max_new_tokens")
                kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens,
                                          "do_sample": temperature > 0, "verbose": False,
                                          "stop_at_eos": True}
                if temperature > 0:
                    kwargs["temperature"] = temperature
                    if top_p is not None:
                        kwargs["top_p"] = top_p
                if not bool(batch.attention_mask.all()):
                    kwargs["attention_mask"] = batch.attention_mask
                with torch.random.fork_rng(devices=cuda_devices):
                    torch.manual_seed(run_seed)
                    with torch.no_grad():
                        generated = model.generate(batch.tokens, **kwargs)
                still_open = []
                for row, s in enumerate(open_slots):
                    new = generated[row, width:].tolist()
                    finished = False
                    for k, tid in enumerate(new):
                        if tid in stop_ids:
                            new, finished = new[:k], True
                            break
                    raw = model.tokenizer.decode(new, skip_special_tokens=True)
                    text = clean_story(raw, finished=finished)
                    reason = _reject_reason(text, matchers[s.emotion], index, min_words,
                                            max_words)
                    if reason is not None:
                        summary.rejected[reason] += 1
                        still_open.append(s)
                        continue
                    rid = s.id
                    rec = {"id": rid, "kind": "story", "emotion": s.emotion, "topic": s.topic,
                           "person": s.person, "author": model_name, "text": text,
                           "meta": {"generator": "emolens.generate_stories",
                                    "model": model_name, "slot": s.index, "attempt": attempt,
                                    "seed": run_seed, "temperature": temperature}}
                    parse_record(rec, f"generated record {rid}")  # never write a bad line
                    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                    ids.add(rid)
                    index.add(rid, text)
                    summary.accepted += 1
                    bar.update(1)
                open_slots = still_open
            for s in open_slots:
                summary.unfilled.append((s.emotion, s.topic, s.index))
                bar.update(1)
            bar.set_postfix(accepted=summary.accepted, rejected=summary.n_rejected)
    bar.close()
    return summary


def _reject_reason(text: str, matcher: ForbiddenMatcher, index: NearDuplicateIndex,
                   min_words: int, max_words: int) -> str | None:
    n = word_count(text)
    if not text.strip() or n == 0:
        return "empty"
    if n < min_words:
        return "too_short"
    if n > max_words:
        return "too_long"
    if matcher.find(text) is not None:
        return "forbidden"
    if index.find(text) is not None:
        return "near_duplicate"
    return None
