"""Dialogues for the speaker families: one side of a chat shows an emotion, the other does not.

A dialogue record (one JSON object per line in ``data/speakers/<emotion>.jsonl``)::

    {"id": "dialogue-<emotion>-<speaker>-NN", "kind": "dialogue", "emotion": "<emotion>",
     "speaker": "user" | "assistant", "topic": "<topic>", "messages": [{"role", "content"}, ...]}

``speaker`` is the side that shows the emotion (the *expressing* side); the other side stays
matter-of-fact. The messages alternate between ``user`` and ``assistant``, and the other side
speaks at least once after the expressing side's first turn (its activations there are the
"other speaker" readings, so they must be able to see the emotion). The bundled set uses
``[user (emotion), assistant (neutral)]`` and ``[user (neutral), assistant (emotion),
user (neutral)]``. Optional ``split`` (must equal the split derived from the id) and ``meta``.

Validation follows the stories' rules (``emolens.stimuli.corpus``, ``WRITING_GUIDE.md``): no
expressing turn contains its emotion's forbidden words (the default corpus's
``forbidden/<emotion>.json``, whole-word, case-insensitive, the emotion word always included);
no turn of the other side contains the forbidden words of any emotion of the set or of the
12 core emotions (it must stay neutral); no turn contains "emotion(s)" or "feeling(s)"; an expressing turn has 15-90 words and
every other turn 2-90; ids are unique; no two expressing turns are near-duplicates (the
corpus's 5-gram overlap rule, ``NearDuplicateIndex``). The split of a dialogue is the corpus's
``split_of(id)``: there is one split rule in emolens.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from emolens.errors import CorpusError, unknown_name_message
from emolens.stimuli.corpus import (
    DATA_DIR,
    HELD_OUT,
    SPLIT_NAMES,
    jsonl_files,
    read_jsonl,
    split_of,
)
from emolens.stimuli.text import ForbiddenMatcher, NearDuplicateIndex, word_count

SPEAKERS_DIR = DATA_DIR / "speakers"
SPEAKER_ROLES = ("user", "assistant")
FIELDS_REQUIRED = ("id", "kind", "emotion", "speaker", "messages")
FIELDS_OPTIONAL = ("topic", "split", "meta")
#: words no turn may contain (as in the stories' writing guide)
GENERIC_FORBIDDEN = ("emotion", "emotions", "feeling", "feelings")
EXPRESSING_WORDS = (15, 90)
OTHER_WORDS = (2, 90)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Dialogue:
    """One validated dialogue; ``speaker`` is the side that shows ``emotion``."""

    id: str
    emotion: str
    speaker: str
    messages: tuple[tuple[str, str], ...]
    topic: str | None = None
    split: str = "train"
    meta: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def other(self) -> str:
        """The side that does not show the emotion."""
        return "assistant" if self.speaker == "user" else "user"

    def chat(self) -> list[dict[str, str]]:
        """The messages as ``[{"role", "content"}]`` (what ``emolens.to_inputs`` takes)."""
        return [{"role": r, "content": c} for r, c in self.messages]

    def turns(self, which: str) -> list[int]:
        """Indices of the messages read for ``which``: ``"present"`` = every turn of the
        expressing side; ``"other"`` = every turn of the other side after the expressing side's
        first turn."""
        if which == "present":
            return [i for i, (r, _) in enumerate(self.messages) if r == self.speaker]
        if which == "other":
            first = next(i for i, (r, _) in enumerate(self.messages) if r == self.speaker)
            return [i for i, (r, _) in enumerate(self.messages) if r == self.other and i > first]
        raise CorpusError(unknown_name_message("speaker reading", which, ("present", "other")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": "dialogue", "emotion": self.emotion,
                               "speaker": self.speaker}
        if self.topic is not None:
            out["topic"] = self.topic
        out["messages"] = self.chat()
        if self.meta is not None:
            out["meta"] = json.loads(json.dumps(self.meta))
        return out


class DialogueSet:
    """Validated speaker dialogues (``load_dialogues``), with the corpus's id-hash splits."""

    def __init__(self, dialogues: Iterable[Dialogue], *, name: str = "speakers",
                 version: str | None = None) -> None:
        self._dialogues = tuple(dialogues)
        self.name = name
        self._version = version

    @property
    def dialogues(self) -> tuple[Dialogue, ...]:
        return self._dialogues

    def __len__(self) -> int:
        return len(self._dialogues)

    def __iter__(self) -> Any:
        return iter(self._dialogues)

    @property
    def emotions(self) -> list[str]:
        return sorted({d.emotion for d in self._dialogues})

    def select(self, emotion: str | Sequence[str] | None = None, split: str | None = None,
               speaker: str | None = None) -> list[Dialogue]:
        """Dialogues of ``emotion`` (one or several), ``split`` (``"train"``, ``"dev"``,
        ``"test"``, ``"validation"`` = dev and test) and expressing ``speaker``."""
        wanted = None if emotion is None else ({emotion} if isinstance(emotion, str)
                                               else set(emotion))
        for e in sorted(wanted or ()):
            if e not in self.emotions:
                raise CorpusError(unknown_name_message("emotion", e, self.emotions,
                                                       f"dialogue set {self.name!r} has these"))
        if split is not None and split not in SPLIT_NAMES:
            raise CorpusError(unknown_name_message("split", split, SPLIT_NAMES))
        if speaker is not None and speaker not in SPEAKER_ROLES:
            raise CorpusError(unknown_name_message("speaker", speaker, SPEAKER_ROLES))
        return [d for d in self._dialogues
                if (wanted is None or d.emotion in wanted)
                and (split is None or d.split == split
                     or (split == "validation" and d.split in HELD_OUT))
                and (speaker is None or d.speaker == speaker)]

    @functools.cached_property
    def content_hash(self) -> str:
        """sha256 of the sorted canonical records (independent of file order)."""
        h = hashlib.sha256()
        for line in sorted(json.dumps(d.to_dict(), sort_keys=True, ensure_ascii=False,
                                      separators=(",", ":")) for d in self._dialogues):
            h.update(line.encode("utf-8") + b"\n")
        return h.hexdigest()

    @property
    def version(self) -> str:
        return self._version or f"sha256:{self.content_hash[:12]}"

    def counts(self) -> dict[str, dict[str, int]]:
        """Emotion -> number of dialogues per expressing speaker and per split."""
        out: dict[str, dict[str, int]] = {}
        for d in self._dialogues:
            row = out.setdefault(d.emotion, {"user": 0, "assistant": 0, "train": 0, "dev": 0,
                                             "test": 0})
            row[d.speaker] += 1
            row[d.split] += 1
        return dict(sorted(out.items()))

    def info(self) -> dict[str, Any]:
        """Name, version, content hash and counts (for registry metadata)."""
        return {"name": self.name, "version": self.version, "content_hash": self.content_hash,
                "n_dialogues": len(self), "counts": self.counts()}

    def __repr__(self) -> str:
        return (f"DialogueSet({self.name!r}: {len(self)} dialogues, "
                f"{len(self.emotions)} emotions)")


def _err(where: str, fld: str | None, problem: str) -> CorpusError:
    return CorpusError(f"{where}, field {fld!r}: {problem}" if fld else f"{where}: {problem}")


def parse_dialogue(obj: Any, where: str = "dialogue") -> Dialogue:
    """Validate one raw dialogue record (fields, roles, turn order, split); word checks that
    need the forbidden lists or other records are made by ``validate_dialogues``."""
    if not isinstance(obj, Mapping):
        raise _err(where, None, f"expected a JSON object, got {type(obj).__name__}")
    for f in FIELDS_REQUIRED:
        if f not in obj:
            raise _err(where, f, f"is missing; a dialogue needs {list(FIELDS_REQUIRED)}")
    extra = [k for k in obj if k not in FIELDS_REQUIRED + FIELDS_OPTIONAL]
    if extra:
        raise _err(where, str(extra[0]), f"is not a dialogue field (fields: "
                                         f"{list(FIELDS_REQUIRED + FIELDS_OPTIONAL)}); remove it")
    if obj["kind"] != "dialogue":
        raise _err(where, "kind", f"must be 'dialogue', got {obj['kind']!r:.40}")
    names = {}
    for f in ("id", "emotion", "speaker", "topic"):
        if f not in obj:
            continue
        v = obj[f]
        if not isinstance(v, str) or not v.strip() or v != v.strip() or "\n" in v:
            raise _err(where, f, f"must be a non-empty one-line string without surrounding "
                                 f"whitespace, got {v!r:.60}")
        names[f] = v
    if names["speaker"] not in SPEAKER_ROLES:
        raise _err(where, "speaker", f"{names['speaker']!r} is not one of {list(SPEAKER_ROLES)}"
                                     " (the side that shows the emotion)")
    derived = split_of(names["id"])
    if "split" in obj and obj["split"] != derived and not (
            obj["split"] == "validation" and derived in HELD_OUT):
        raise _err(where, "split", f"is {obj['split']!r:.20} but the split derived from the id "
                                   f"{names['id']!r} is {derived!r}; remove the field or fix it")
    msgs = obj["messages"]
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise _err(where, "messages", "must be a list of at least two {'role', 'content'} "
                                      "messages")
    parsed: list[tuple[str, str]] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, Mapping) or set(m) != {"role", "content"}:
            raise _err(where, f"messages[{i}]", "must be an object with exactly 'role' and "
                                                "'content'")
        role, content = m["role"], m["content"]
        if role not in SPEAKER_ROLES:
            raise _err(where, f"messages[{i}].role", f"{role!r:.20} is not one of "
                                                     f"{list(SPEAKER_ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise _err(where, f"messages[{i}].content", "must be a non-empty string")
        if parsed and parsed[-1][0] == role:
            raise _err(where, f"messages[{i}].role", f"two {role} turns in a row; the turns "
                                                     "must alternate between user and assistant")
        parsed.append((role, content))
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise _err(where, "meta", f"must be an object, got {type(meta).__name__}")
    d = Dialogue(names["id"], names["emotion"], names["speaker"], tuple(parsed),
                 names.get("topic"), derived, dict(meta) if meta is not None else None)
    if not d.turns("present"):
        raise _err(where, "messages", f"the expressing side {d.speaker!r} never speaks")
    if not d.turns("other"):
        raise _err(where, "messages", f"the other side ({d.other!r}) must speak after the "
                                      f"{d.speaker}'s first turn (its reply is the 'other "
                                      "speaker' reading)")
    return d


def validate_dialogues(dialogues: Sequence[Dialogue], forbidden: Mapping[str, Sequence[str]],
                       where: Sequence[str] | None = None) -> None:
    """The cross-record and word rules of the module docstring; raises ``CorpusError`` naming
    the record and the turn of the first problem."""
    locs = list(where) if where is not None else [d.id for d in dialogues]
    emotions = sorted({d.emotion for d in dialogues})
    missing = [e for e in emotions if e not in forbidden]
    if missing:
        raise CorpusError(f"emotion {missing[0]!r} has no forbidden-word list; add "
                          f"forbidden/{missing[0].replace(' ', '-')}.json (see WRITING_GUIDE.md)")
    own = {e: ForbiddenMatcher((*forbidden[e], e, *GENERIC_FORBIDDEN)) for e in emotions}
    from emolens.stimuli.emotions import CORE_EMOTIONS

    checked = sorted(set(emotions) | {e for e in CORE_EMOTIONS if e in forbidden})
    neutral = ForbiddenMatcher([t for e in checked for t in (*forbidden[e], e)]
                               + list(GENERIC_FORBIDDEN))
    seen: dict[str, str] = {}
    near = NearDuplicateIndex()
    for d, loc in zip(dialogues, locs):
        if d.id in seen:
            raise _err(loc, "id", f"duplicate id {d.id!r} (first used at {seen[d.id]})")
        seen[d.id] = loc
        present = set(d.turns("present"))
        for i, (_, text) in enumerate(d.messages):
            n = word_count(text)
            if i in present:
                hit = own[d.emotion].find(text)
                lo, hi = EXPRESSING_WORDS
                if hit is not None:
                    raise _err(loc, f"messages[{i}].content",
                               f"the {d.speaker}'s turn of a {d.emotion!r} dialogue names the "
                               f"forbidden word {hit!r}; show the emotion without naming it")
            else:
                hit = neutral.find(text)
                lo, hi = OTHER_WORDS
                if hit is not None:
                    raise _err(loc, f"messages[{i}].content",
                               f"the {d.other}'s turn must stay neutral but contains {hit!r}, "
                               "a forbidden word of an emotion of this set or a core emotion; "
                               "rephrase it")
            if not lo <= n <= hi:
                raise _err(loc, f"messages[{i}].content", f"has {n} words; a "
                           f"{'expressing' if i in present else 'neutral'} turn needs {lo}-{hi}")
        text = " ".join(d.messages[i][1] for i in sorted(present))
        dup = near.find(text)
        if dup is not None:
            raise _err(loc, "messages", f"the expressing turns repeat dialogue {dup.key!r} "
                                        f"({dup.overlap:.0%} of 5-word runs shared); rewrite")
        near.add(d.id, text)


def default_forbidden() -> dict[str, tuple[str, ...]]:
    """The default corpus's forbidden-word lists (``data/default/forbidden/``)."""
    from emolens.stimuli.corpus import Corpus

    return Corpus.from_records([], forbidden=DATA_DIR / "default" / "forbidden").forbidden


def load_dialogues(path: PathLike | Sequence[PathLike] | None = None, *,
                   forbidden: Mapping[str, Sequence[str]] | None = None,
                   name: str | None = None) -> DialogueSet:
    """Load and validate speaker dialogues.

    ``path``: a ``.jsonl`` file, a folder (searched recursively) or a list of them; default the
    bundled set (``emolens/stimuli/data/speakers/``, see its README). ``forbidden``: emotion ->
    words; default the default corpus's lists. Raises ``CorpusError`` naming the file, line and
    field of the first problem.
    """
    files = jsonl_files(SPEAKERS_DIR if path is None else path)
    raw = [item for f in files for item in read_jsonl(f)]
    parsed = [parse_dialogue(obj, w) for w, obj in raw]
    validate_dialogues(parsed, default_forbidden() if forbidden is None else forbidden,
                       [w for w, _ in raw])
    version = None
    manifest = SPEAKERS_DIR / "dialogues.json"
    if path is None and manifest.exists():
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    return DialogueSet(parsed, name=name or ("speakers" if path is None else "custom"),
                       version=version)


def dialogues_from_records(records: Iterable[Any], *,
                           forbidden: Mapping[str, Sequence[str]] | None = None,
                           name: str = "custom") -> DialogueSet:
    """Validate raw dialogue dicts (the JSONL schema) into a ``DialogueSet``."""
    raw = list(records)
    wheres = [f"record {i}" for i in range(len(raw))]
    parsed = [parse_dialogue(obj, w) for obj, w in zip(raw, wheres)]
    validate_dialogues(parsed, default_forbidden() if forbidden is None else forbidden, wheres)
    return DialogueSet(parsed, name=name)
