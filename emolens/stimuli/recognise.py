"""Is a story's emotion recognisable? A check independent of the directions being built.

``recognisability(judge, stories, emotions)`` asks a *judge* model (any chat or base model; for
generated stories, one that did not write them) how the main character of each story feels, and
scores every candidate emotion word by its log-probability as the answer
(``emolens.steering.judges.word_logprobs``, unsteered; the prompt is ``RECOGNISE_PROMPT``, the
answer opened with ``ANSWER_PREFIX``). A story passes when its intended emotion ranks within the
top ``k`` of the candidates. Nothing here reads the residual-stream directions that the corpus
will be used to build, so keeping only recognisable stories cannot make those directions look
better than the text warrants; what it can do is favour stories whose emotion the judge can
name from the words, which is why the judge's agreement on the hand-written stories is
reported beside it.

Cost: ``word_logprobs`` runs one forward per story plus one per candidate word of more than one
token (the story again with that word's leading tokens), so with the 48 emotion words about 30
forwards per story on the catalogue's tokenizers; a GPU, or fewer candidates, for large sets.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from emolens.errors import InputError

RECOGNISE_PROMPT = ("Read this short story.\n\n{story}\n\nIn one word, how does the main "
                    "character feel?")
ANSWER_PREFIX = "The main character feels"


@dataclass(frozen=True)
class Recognisability:
    """Per story: the rank (1 = the judge's first choice) of its intended emotion among
    ``emotions``, and whether it passes (rank <= k)."""

    ranks: list[int]
    passed: list[bool]
    k: int
    emotions: list[str]
    judge: str

    @property
    def top1(self) -> float:
        return sum(r == 1 for r in self.ranks) / max(len(self.ranks), 1)

    @property
    def pass_rate(self) -> float:
        return sum(self.passed) / max(len(self.passed), 1)

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "k": self.k, "n": len(self.ranks), "top1": self.top1,
                "pass_rate": self.pass_rate, "chance_top1": 1 / len(self.emotions),
                "chance_pass": min(self.k / len(self.emotions), 1.0),
                "prompt": RECOGNISE_PROMPT, "answer_prefix": ANSWER_PREFIX}

    def _repr_html_(self) -> str:
        d = self.to_dict()
        return (f"<div><b>Recognisability</b> by <code>{d['judge']}</code>: {d['n']} stories, "
                f"top-1 {d['top1']:.3f} (chance {d['chance_top1']:.3f}), within top {self.k}: "
                f"{d['pass_rate']:.3f} (chance {d['chance_pass']:.3f})</div>")


def recognise_contexts(judge: Any, stories: Sequence[str]) -> list[tuple[str, bool]]:
    """The judge's context for each story (chat-rendered, or the plain ``User:/Assistant:``
    dialogue for a model without a chat template) ending in ``ANSWER_PREFIX``."""
    from emolens.tokens import render_chat

    return [(render_chat(judge, [{"role": "user", "content": RECOGNISE_PROMPT.format(story=s)}],
                         add_generation_prompt=True) + " " + ANSWER_PREFIX, True)
            for s in stories]


def recognisability(judge: Any, stories: Sequence[str], intended: Sequence[str],
                    emotions: Sequence[str], *, k: int = 5, batch_size: int = 8) -> Recognisability:
    """Rank of each story's ``intended`` emotion among ``emotions`` under ``judge`` (see the
    module docstring)."""
    from emolens.steering.judges import word_logprobs
    from emolens.stimuli.generate import _model_name

    emos = list(emotions)
    if len(stories) != len(intended):
        raise InputError(f"{len(stories)} stories but {len(intended)} intended emotions; give "
                         "one emotion per story")
    unknown = sorted({e for e in intended if e not in emos})
    if unknown:
        raise InputError(f"intended emotions {unknown} are not among the candidates; add them "
                         "to emotions=")
    if not 1 <= k <= len(emos):
        raise InputError(f"k must be in 1..{len(emos)} (the number of candidates), got {k!r}")
    lp = word_logprobs(judge, recognise_contexts(judge, stories), emos, batch_size=batch_size)
    target = torch.tensor([emos.index(e) for e in intended])
    own = lp[torch.arange(len(stories)), target]
    ranks = (lp > own[:, None]).sum(-1) + 1
    return Recognisability(ranks=ranks.tolist(), passed=(ranks <= k).tolist(), k=k,
                           emotions=emos, judge=_model_name(judge))
