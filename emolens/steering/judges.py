"""Judges that score steered text independently of the steered direction.

A judge must not read the direction it is judging (a probe of the steered vector would report
success by construction). The bundled judges:

- ``"emotion_words"`` (the study's test): after the text, append a question
  (``"\\nHow does the narrator feel? They feel"``; for chat input a user turn asking the same and
  the assistant's answer opened with ``"They feel"``) and score ``log P(" word")`` of every
  candidate emotion word under the *unsteered* model (full word: the log-probabilities of all
  its tokens, summed). The score is the target word's log-probability share among the
  candidates, ``log P(target) - logsumexp_w log P(w)``; the raw log-probability is kept as
  ``emotion_words_logp``.
- ``"lexicon"``: VADER's compound valence (-1..1) of the generated text (vaderSentiment, MIT
  licence): a word list, no model at all.
- ``DirectionJudge(vector, layer)``: the mean projection of the unsteered model's residual on a
  direction the caller supplies (e.g. from another extraction method), over the generated
  tokens.
- ``LLMJudge(model="qwen2.5-coder-0.5b")`` (``"llm_concept"``): a separate, larger model from
  the offline catalogue (loaded only where installed) asked ``LLM_JUDGE_PROMPT`` about each
  generated text; the score is the expected rating over its next-token probabilities of the
  answers "0", "1", "2" (one forward per text, no sampling). ``judge_agreement`` reports its
  Spearman correlation with another judge (e.g. the lexicon) over a set of generations.

Judges are small callables selected by name (``JUDGES``); ``register_judge`` adds one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from emolens.errors import InputError, SteeringError, unknown_name_message
from emolens.runtime import logits_at, model_device, progress_bar
from emolens.scoring import score

if TYPE_CHECKING:
    from emolens.compat import Model

NARRATOR_QUESTION = "\nHow does the narrator feel? They feel"
CHAT_QUESTION = "In one word, how does the narrator of your last reply feel?"
ANSWER_PREFIX = "They feel"


@dataclass
class JudgeInput:
    """Everything a judge may read about a batch of steered generations.

    ``prompts``: the caller's prompts (strings or conversations); ``replies``: the generated
    texts; ``tokens``/``attention_mask``: ``[batch, pos]`` prompt + generated tokens;
    ``prompt_len``: prompt columns; ``emotion``: the steered emotion (the word to look for);
    ``words``: candidate emotion words.
    """

    model: Model
    prompts: list[Any]
    replies: list[str]
    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    prompt_len: int
    emotion: str
    words: list[str]


Judge = Callable[[JudgeInput], dict[str, list[float]]]


# ---------------------------------------------------------------------------- word probabilities
def question_context(model: Model, prompt: Any, reply: str = "") -> tuple[str, bool]:
    """The text after which the emotion word is scored, and whether it is chat-rendered.

    Plain prompts: ``prompt + reply + NARRATOR_QUESTION``. Conversations: the conversation,
    the reply as the assistant's turn (when given), a user turn asking ``CHAT_QUESTION``, and
    the assistant's answer opened with ``"They feel"``.
    """
    from emolens.tokens import is_conversation, render_chat

    if is_conversation(prompt):
        msgs = list(prompt)
        if reply:
            msgs = msgs + [{"role": "assistant", "content": reply}]
        elif msgs[-1].get("role") == "user":
            msgs = msgs + [{"role": "assistant", "content": ""}]
        msgs = msgs + [{"role": "user", "content": CHAT_QUESTION}]
        return render_chat(model, msgs, add_generation_prompt=True) + ANSWER_PREFIX, True
    if not isinstance(prompt, str):
        raise InputError(f"a prompt must be a string or chat messages, got {type(prompt).__name__}")
    return prompt + reply + NARRATOR_QUESTION, False


def _ids(model: Model, text: str, *, bos: bool) -> list[int]:
    return [int(t) for t in model.to_tokens(text, prepend_bos=bos, truncate=False,
                                            move_to_device=False)[0].tolist()]


def word_token_ids(model: Model, word: str) -> list[int]:
    """Token ids of ``" " + word`` (the word as it follows ``"They feel"``)."""
    ids = _ids(model, " " + word, bos=False)
    if not ids:
        raise InputError(f"the word {word!r} tokenises to nothing")
    return ids


def word_logprobs(model: Model, contexts: Sequence[tuple[str, bool]], words: Sequence[str], *,
                  batch_size: int | None = None, steerings: Sequence[Any] | None = None,
                  progress: bool = False) -> Float[torch.Tensor, "context word"]:
    """``[n_contexts, n_words]`` log P(" word" | context): all the word's tokens, summed.

    ``contexts`` are ``(text, chat_rendered)`` pairs (a chat-rendered text brings its own first
    token, so no BOS is added). Runs whatever hooks are on the model: call it inside ``steer``
    to score under steering, outside it for the unsteered model. ``steerings``: one
    ``Steering`` (or None: unsteered) per context, applied to that context's rows of each
    forward batch only (``Steering.with_rows``), so contexts under different interventions
    share batches. ``batch_size``: sequences per forward (None: the device's default,
    ``runtime.resolve_batch_size``).
    """
    from emolens.runtime import resolve_batch_size

    batch_size = resolve_batch_size(batch_size, model)
    bos_default = bool(getattr(model.cfg, "default_prepend_bos", True))
    ctx_ids = [_ids(model, text, bos=bos_default and not chat) for text, chat in contexts]
    wids = [word_token_ids(model, w) for w in words]
    if steerings is not None:
        from emolens.steering.interventions import Steering

        if len(steerings) != len(ctx_ids):
            raise SteeringError(f"steerings has {len(steerings)} entries for {len(ctx_ids)} "
                                "contexts; give one Steering (or None) per context")
        for s in steerings:
            if s is not None and not isinstance(s, Steering):
                raise SteeringError(f"steerings holds a {type(s).__name__}; give one Steering "
                                    "(or None) per context")
    # One sequence per context gives every word's first token; a word of several tokens adds
    # one sequence (context + its leading tokens) for the rest.
    seqs: list[list[int]] = []
    seq_ctx: list[int] = []  # the context of each sequence
    rows_needed: list[list[int]] = []
    plan: list[tuple[int, int, int, int, int]] = []  # (ctx, word, seq, row, token)
    for ci, ids in enumerate(ctx_ids):
        base = len(seqs)
        seqs.append(ids)
        seq_ctx.append(ci)
        rows_needed.append([len(ids) - 1])
        for wi, w in enumerate(wids):
            plan.append((ci, wi, base, 0, w[0]))
            if len(w) > 1:
                seqs.append(ids + w[:-1])
                seq_ctx.append(ci)
                rows = list(range(len(ids), len(ids) + len(w) - 1))
                rows_needed.append(rows)
                for j in range(len(rows)):
                    plan.append((ci, wi, len(seqs) - 1, j, w[j + 1]))
    picked: dict[int, torch.Tensor] = {}  # sequence -> [rows, vocab] log-probabilities
    pad = model.tokenizer.pad_token_id or 0
    device = model_device(model)
    for start in progress_bar(range(0, len(seqs), batch_size), desc="word log-probs",
                              enabled=progress):
        chunk = seqs[start:start + batch_size]
        width = max(len(s) for s in chunk)
        toks = torch.full((len(chunk), width), int(pad), dtype=torch.long)
        for i, s in enumerate(chunk):
            toks[i, :len(s)] = torch.tensor(s)
        need = [(i, r) for i in range(len(chunk)) for r in rows_needed[start + i]]
        row_t = torch.tensor([i for i, _ in need], device=device)
        pos_t = torch.tensor([r for _, r in need], device=device)
        with torch.no_grad(), _rows_steered(model, steerings, seq_ctx[start:start + batch_size]):
            at = logits_at(model, toks.to(device), row_t, pos_t).float().log_softmax(-1).cpu()
        k = 0
        for i in range(len(chunk)):
            n_rows = len(rows_needed[start + i])
            picked[start + i] = at[k:k + n_rows]
            k += n_rows
    out = torch.zeros(len(ctx_ids), len(wids))
    for ci, wi, si, row, tok in plan:
        out[ci, wi] += picked[si][row, tok]
    return out


@contextmanager
def _rows_steered(model: Model, steerings: Sequence[Any] | None, row_ctx: list[int]
                  ) -> Iterator[None]:
    """Apply each context's steering to the rows of this forward batch holding that context."""
    if steerings is None:
        yield
        return
    groups: dict[int, tuple[Any, list[int]]] = {}
    for row, ci in enumerate(row_ctx):
        s = steerings[ci]
        if s is not None:
            groups.setdefault(id(s), (s, []))[1].append(row)
    if not groups:
        yield
        return
    from emolens.steering.interventions import apply_steering

    handle = apply_steering(model, [s.with_rows(rows) for s, rows in groups.values()])
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------------------- judges
def emotion_word_logprobs(inp: JudgeInput) -> tuple[Float[torch.Tensor, "generation word"], int,
                                                   Float[torch.Tensor, " generation"]]:
    """Under the unsteered model, after a "how do they feel" question on each generation:
    ``(lp, t, share)``: ``[generation, word]`` log-probabilities of the candidate words (the
    target emotion appended if missing), the target's column, and its log-probability share."""
    words = list(inp.words)
    if inp.emotion not in words:
        words.append(inp.emotion)
    contexts = [question_context(inp.model, p, r) for p, r in zip(inp.prompts, inp.replies)]
    lp = word_logprobs(inp.model, contexts, words)
    t = words.index(inp.emotion)
    return lp, t, lp[:, t] - torch.logsumexp(lp, dim=-1)


def emotion_words_judge(inp: JudgeInput) -> dict[str, list[float]]:
    """Log-probability share of the target emotion word after a "how do they feel" question,
    under the unsteered model (see the module docstring)."""
    lp, t, share = emotion_word_logprobs(inp)
    return {"emotion_words": share.tolist(), "emotion_words_logp": lp[:, t].tolist()}


_VADER: Any = None


def lexicon_judge(inp: JudgeInput) -> dict[str, list[float]]:
    """VADER compound valence of each generated text (-1 negative .. +1 positive)."""
    global _VADER
    if _VADER is None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:  # pragma: no cover - it is a dev/lexicon extra
            raise InputError("the 'lexicon' judge needs vaderSentiment: pip install "
                             "'emolens[lexicon]' (or drop 'lexicon' from judges)") from e
        _VADER = SentimentIntensityAnalyzer()
    return {"lexicon": [float(_VADER.polarity_scores(t)["compound"]) for t in inp.replies]}


class DirectionJudge:
    """Mean projection of the unsteered residual at ``layer`` on a caller's direction, over the
    generated tokens. Use a direction from a *different* method than the one steered."""

    def __init__(self, vector: Float[torch.Tensor, " d_model"], layer: int, *,
                 name: str = "direction"):
        v = torch.as_tensor(vector, dtype=torch.float32).detach().cpu()
        if v.ndim != 1 or float(v.norm()) == 0 or not bool(torch.isfinite(v).all()):
            raise SteeringError(f"DirectionJudge needs a finite non-zero [d_model] vector, got "
                                f"shape {tuple(v.shape)}")
        self.vector = v / v.norm()
        self.layer = int(layer)
        self.name = name

    def __call__(self, inp: JudgeInput) -> dict[str, list[float]]:
        from emolens.compat import cache_to_layer
        from emolens.sites import resolve_site

        site = resolve_site(inp.model, self.layer)
        device = model_device(inp.model)
        toks = inp.tokens.to(device)
        am = inp.attention_mask.to(device)
        kwargs = {} if bool(am.all()) else {"attention_mask": am}
        with torch.no_grad():
            cache = cache_to_layer(inp.model, toks, [site.name], site.layer + 1, **kwargs)
        proj = score(cache[site.name].float(), self.vector[None])[..., 0]  # raw: no centre
        gen = am.bool().clone()
        gen[:, : inp.prompt_len] = False
        counts = gen.sum(-1).clamp(min=1)
        vals = (proj * gen).sum(-1) / counts
        return {self.name: vals.cpu().tolist()}


# ---------------------------------------------------------------------------- LLM judge
#: The catalogue model the LLM judge loads by default (``emolens models list``).
LLM_JUDGE_MODEL = "qwen2.5-coder-0.5b"
#: The judge's question, sent as one user turn through the judge model's chat template;
#: ``{emotion}`` and ``{text}`` are filled in. Its answer is read at the token that opens the
#: assistant's reply, over the tokens of ``LLM_JUDGE_ANSWERS``.
LLM_JUDGE_PROMPT = (
    "Rate how clearly the text below expresses the emotion \"{emotion}\".\n"
    "0 = the emotion is not expressed at all.\n"
    "1 = the emotion is weakly or indirectly expressed.\n"
    "2 = the emotion is clearly expressed.\n"
    "Answer with a single digit: 0, 1 or 2.\n\n"
    "Text:\n\"\"\"\n{text}\n\"\"\"")
LLM_JUDGE_ANSWERS = ("0", "1", "2")


def llm_judge_installed(name: str = LLM_JUDGE_MODEL) -> bool:
    """Whether catalogue model ``name`` is installed (its packages and its verified cache
    folder are present; the hashes are checked when it is loaded). False for a name that is
    not in the catalogue."""
    from emolens.models.catalogue import find_model
    from emolens.models.install import missing_packages, model_cache_dir

    entry = find_model(name)
    if entry is None:
        return False
    folder = model_cache_dir(entry)
    return folder.is_dir() and any(folder.iterdir()) and not missing_packages(entry)


def load_judge_model(name: str = LLM_JUDGE_MODEL) -> Any:
    """Load catalogue model ``name`` as a judge; ``ModelNotAvailableError`` with the install
    command when it is not installed (a judge model is never installed implicitly)."""
    from emolens.errors import ModelNotAvailableError
    from emolens.models.catalogue import get_model

    entry = get_model(name)
    if not llm_judge_installed(entry.name):
        raise ModelNotAvailableError(
            f"the judge model {entry.name!r} is not installed; install it with "
            f"`{entry.install_command}` or pass another model (LLMJudge(model=...))")
    import emolens

    return emolens.load_model(entry.name)


def answer_token_ids(model: Model, answers: Sequence[str] = LLM_JUDGE_ANSWERS) -> list[int]:
    """The first token of each answer as the judge model would write it after the reply
    opening; ``SteeringError`` when two answers share it (the rating could not be read)."""
    ids = [_ids(model, a, bos=False) for a in answers]
    if any(not i for i in ids):
        raise SteeringError(f"an answer of {list(answers)} tokenises to nothing")
    first = [i[0] for i in ids]
    if len(set(first)) != len(first):
        raise SteeringError(f"the answers {list(answers)} share first tokens {first} on this "
                            "tokenizer; give answers that start with different tokens")
    return first


class LLMJudge:
    """A larger model asked whether each text shows the emotion (``LLM_JUDGE_PROMPT``).

    ``model``: a catalogue name (loaded with ``load_judge_model``: only where installed) or a
    loaded model with a chat template (tests use a tiny one). For each text the judge model
    reads the prompt with ``{emotion}`` and ``{text}`` filled in, as a user turn, and its
    next-token log-probabilities at the reply opening are taken over the first tokens of
    ``answers`` ("0", "1", "2"), renormalised among them: the score (column ``name``) is the
    expected rating ``sum_k k p_k`` (0-2); ``<name>_rating`` the most probable answer;
    ``<name>_mass`` the probability the full softmax gives the three answers together (how
    much the judge answers in the format at all). One forward per text, no generation; the
    judge never sees the steered model or its direction.
    """

    def __init__(self, model: Model | str = LLM_JUDGE_MODEL, *, name: str = "llm_concept",
                 prompt: str = LLM_JUDGE_PROMPT, answers: Sequence[str] = LLM_JUDGE_ANSWERS,
                 batch_size: int = 8):
        if "{text}" not in prompt or "{emotion}" not in prompt:
            raise SteeringError("the judge prompt must contain '{emotion}' and '{text}'")
        if len(answers) < 2:
            raise SteeringError(f"give at least two answers, got {list(answers)}")
        self.model_name = model if isinstance(model, str) else None
        self.model = load_judge_model(model) if isinstance(model, str) else model
        self.name = name
        self.prompt = prompt
        self.answers = list(answers)
        self.answer_ids = answer_token_ids(self.model, self.answers)
        self.batch_size = int(batch_size)

    def conversation(self, text: str, emotion: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt.format(emotion=emotion, text=text)}]

    def rate(self, texts: Sequence[str], emotions: str | Sequence[str]
             ) -> dict[str, list[float]]:
        """Score each text for ``emotions`` (one emotion for all, or one per text)."""
        from emolens.tokens import to_inputs

        ems = [emotions] * len(texts) if isinstance(emotions, str) else list(emotions)
        if len(ems) != len(texts):
            raise InputError(f"{len(texts)} texts but {len(ems)} emotions; give one emotion or "
                             "one per text")
        values = torch.arange(len(self.answers), dtype=torch.float64)
        score: list[float] = []
        rating: list[float] = []
        mass: list[float] = []
        device = model_device(self.model)
        ids = torch.tensor(self.answer_ids)
        for start in range(0, len(texts), self.batch_size):
            convs = [self.conversation(str(t), e) for t, e in
                     zip(texts[start:start + self.batch_size], ems[start:start + self.batch_size])]
            batch = to_inputs(self.model, convs)
            with torch.no_grad():
                logits = self.model(batch.tokens.to(device), return_type="logits",
                                    **batch.forward_kwargs())
            rows = torch.arange(len(convs), device=logits.device)
            lp = logits[rows, batch.reply_pos.to(logits.device)].double().log_softmax(-1).cpu()
            sel = lp[:, ids]
            p = sel.softmax(-1)
            score.extend((p * values).sum(-1).tolist())
            rating.extend(values[p.argmax(-1)].tolist())
            mass.extend(sel.exp().sum(-1).tolist())
        return {self.name: score, f"{self.name}_rating": rating, f"{self.name}_mass": mass}

    def __call__(self, inp: JudgeInput) -> dict[str, list[float]]:
        return self.rate(inp.replies, inp.emotion)

    def __repr__(self) -> str:
        who = self.model_name or getattr(getattr(self.model, "cfg", None), "model_name", "?")
        return f"LLMJudge({who!r}, name={self.name!r})"


_LLM_JUDGE: LLMJudge | None = None


def llm_concept_judge(inp: JudgeInput) -> dict[str, list[float]]:
    """``LLMJudge(LLM_JUDGE_MODEL)``, loaded once on first use (ModelNotAvailableError when the
    catalogue model is not installed)."""
    global _LLM_JUDGE
    if _LLM_JUDGE is None:
        _LLM_JUDGE = LLMJudge(LLM_JUDGE_MODEL)
    return _LLM_JUDGE(inp)


@dataclass
class JudgeAgreement:
    """Spearman correlation of two judges over the same generations (``judge_agreement``)."""

    a: str
    b: str
    spearman: Any  # emolens.stats.Estimate
    n: int
    n_dropped: int
    expected_sign: int

    @property
    def statement(self) -> str:
        import math

        r = self.spearman
        if math.isnan(r.value):
            return (f"Over {self.n} generations ({self.n_dropped} without both scores dropped) "
                    f"the Spearman r between {self.a} and {self.b} is undefined: one of them "
                    "gives every generation the same score. Nothing is established about their "
                    "agreement.")
        sign = {1: "positive", -1: "negative", 0: "either sign"}[self.expected_sign]
        agree = (r.low > 0 if self.expected_sign > 0 else r.high < 0 if self.expected_sign < 0
                 else r.low > 0 or r.high < 0)
        return (f"Over {self.n} generations ({self.n_dropped} without both scores dropped), "
                f"Spearman r between {self.a} and {self.b} = {r.value:+.3f} (95% bootstrap "
                f"[{r.low:+.3f}, {r.high:+.3f}], permutation p = {r.p_value:.3g}); expected "
                f"{sign}: the judges {'agree' if agree else 'do not agree beyond chance'} on "
                "these texts. Established: whether the two judges rank the generations alike. "
                "Not established: that either judge is right (neither is a person).")

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "spearman": self.spearman.to_dict(), "n": self.n,
                "n_dropped": self.n_dropped, "expected_sign": self.expected_sign,
                "statement": self.statement}

    def __repr__(self) -> str:
        return f"JudgeAgreement({self.a} vs {self.b}: r = {self.spearman})"


def judge_agreement(frame: Any, a: str = "llm_concept", b: str = "lexicon", *,
                    expected_sign: int = 1, n_resamples: int = 1000, n_permutations: int = 5000,
                    seed: int = 0) -> JudgeAgreement:
    """Spearman r (bootstrap interval over generations, permutation p; ``emolens.stats``) of
    columns ``a`` and ``b`` of a frame of judged generations (e.g. ``sweep(...,
    judges=["lexicon", LLMJudge()])``), rows lacking either dropped. ``expected_sign``: +1
    when both judges should rise together (the lexicon's valence and a positive emotion), -1
    for a negative emotion against the lexicon's valence, 0 for no expectation."""
    import numpy as np

    from emolens.stats import spearman

    if expected_sign not in (-1, 0, 1):
        raise InputError(f"expected_sign must be -1, 0 or 1, got {expected_sign!r}")
    for c in (a, b):
        if c not in frame.columns:
            raise InputError(f"the frame has no column {c!r}; columns: {list(frame.columns)}")
    x = frame[a].to_numpy(dtype=float)
    y = frame[b].to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    est = spearman(x[ok], y[ok], n_resamples=n_resamples, n_permutations=n_permutations,
                   seed=seed)
    return JudgeAgreement(a, b, est, int(ok.sum()), int((~ok).sum()), expected_sign)


JUDGES: dict[str, Judge] = {"emotion_words": emotion_words_judge, "lexicon": lexicon_judge,
                            "llm_concept": llm_concept_judge}


def register_judge(name: str, judge: Judge) -> None:
    """Make ``judge`` (``JudgeInput -> {column: [score per row]}``) selectable by name."""
    JUDGES[name] = judge


def resolve_judges(judges: Sequence[Any]) -> list[tuple[str, Judge]]:
    out: list[tuple[str, Judge]] = []
    for j in judges:
        if isinstance(j, str):
            if j not in JUDGES:
                raise InputError(unknown_name_message("judge", j, sorted(JUDGES),
                                                      "or pass a callable judge"))
            out.append((j, JUDGES[j]))
        elif callable(j):
            out.append((str(getattr(j, "name", getattr(j, "__name__", "judge"))), j))
        else:
            raise InputError(f"judge {j!r} is neither a name ({sorted(JUDGES)}) nor a callable")
    return out
