"""Authoring aid: check story files against the writing guide (run by corpus authors).

The package's real validation lives in ``emolens.stimuli.corpus``; this script is a quick,
dependency-free check for authors while they write ``stories/<emotion>.jsonl``.
"""
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
TOPICS = {
    "cooking dinner", "morning commute", "work meeting", "grocery shopping", "gardening",
    "phone call", "moving house", "school exam", "job interview", "sports match", "wedding",
    "hospital visit", "family pet", "birthday", "road trip", "rainy day at home", "museum visit",
    "family dinner", "car repair", "letter in the mail", "concert", "beach day", "train station",
    "cafe shift",
}
WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")


def shingles(text, n=5):
    w = WORD.findall(text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def main(emotions):
    problems = 0
    for emo in emotions:
        slug = emo.replace(" ", "-")
        fpath = HERE / "forbidden" / f"{slug}.json"
        spath = HERE / "stories" / f"{slug}.jsonl"
        forb = json.loads(fpath.read_text())["forbidden"]
        pats = [re.compile(r"\b" + re.escape(f.lower()) + r"\b") for f in forb + ["emotion", "feeling"]]
        recs = [json.loads(l) for l in spath.read_text().splitlines()]
        seen = []
        topics = set()
        for i, r in enumerate(recs, 1):
            def bad(msg):
                nonlocal problems
                problems += 1
                print(f"{spath.name}:{i}: {msg}")
            if set(r) != {"id", "kind", "emotion", "topic", "person", "text"}:
                bad(f"fields {sorted(r)}")
            if r.get("id") != f"story-{slug}-{i:04d}":
                bad(f"id {r.get('id')!r} should be story-{slug}-{i:04d}")
            if r.get("emotion") != emo or r.get("kind") != "story":
                bad("emotion/kind")
            if r.get("topic") not in TOPICS:
                bad(f"topic {r.get('topic')!r}")
            topics.add(r.get("topic"))
            if r.get("person") not in ("first", "third"):
                bad("person")
            t = r.get("text", "")
            n = len(WORD.findall(t.lower()))
            if not 40 <= n <= 120 or "\n" in t:
                bad(f"{n} words (need 40-120, one paragraph)")
            for p in pats:
                if p.search(t.lower()):
                    bad(f"forbidden word {p.pattern}")
            sh = shingles(t)
            for j, other in seen:
                if sh and len(sh & other) / max(1, min(len(sh), len(other))) > 0.2:
                    bad(f"near-duplicate of line {j}")
            seen.append((i, sh))
        print(f"{emo}: {len(recs)} stories, {len(topics)} topics")
    print("OK" if problems == 0 else f"{problems} problems")


if __name__ == "__main__":
    main(sys.argv[1:])
