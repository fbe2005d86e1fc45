"""The LLM judge of steered text (issue 15) with a tiny model standing in for the catalogue model:
the rating is read at the reply opening over the answer tokens, a planted preference for one
answer is found, padding does not change a score, and its agreement with another judge is a
Spearman r with an interval (a planted agreement is found, a null stays null)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emolens.errors import InputError, ModelNotAvailableError, SteeringError
from emolens.steering import judges as J

TEXTS = ["I am so glad today, everything went well.", "The meeting is at noon.",
         "Nothing matters any more and I cannot stop crying about it."]


def test_prompt_is_documented_and_fills_in():
    assert "{emotion}" in J.LLM_JUDGE_PROMPT and "{text}" in J.LLM_JUDGE_PROMPT
    filled = J.LLM_JUDGE_PROMPT.format(emotion="happy", text="hello")
    assert '"happy"' in filled and "hello" in filled and "0, 1 or 2" in filled


def test_rate_matches_a_manual_forward_and_is_padding_invariant(tiny):
    from emolens.tokens import to_inputs

    judge = J.LLMJudge(tiny, batch_size=3)
    out = judge.rate(TEXTS, "happy")
    assert set(out) == {"llm_concept", "llm_concept_rating", "llm_concept_mass"}
    ids = J.answer_token_ids(tiny)
    for i, t in enumerate(TEXTS):  # one text at a time, no padding
        b = to_inputs(tiny, [judge.conversation(t, "happy")])
        with torch.no_grad():
            logits = tiny(b.tokens, return_type="logits")
        lp = logits[0, int(b.reply_pos[0])].double().log_softmax(-1)[ids]
        p = lp.softmax(-1)
        assert out["llm_concept"][i] == pytest.approx(float((p * torch.arange(3.0)).sum()),
                                                      abs=1e-5)
        assert out["llm_concept_rating"][i] == float(p.argmax())
        assert out["llm_concept_mass"][i] == pytest.approx(float(lp.exp().sum()), rel=1e-4)
    one = J.LLMJudge(tiny, batch_size=1).rate(TEXTS, "happy")
    assert np.allclose(one["llm_concept"], out["llm_concept"], atol=1e-5)
    assert all(0.0 <= s <= 2.0 for s in out["llm_concept"])
    assert all(0.0 < m <= 1.0 for m in out["llm_concept_mass"])


@pytest.mark.parametrize("answer", [0, 2])
def test_a_planted_answer_preference_is_read(tiny, answer):
    """A hook that raises one answer token's logit makes every rating that answer."""
    judge = J.LLMJudge(tiny)
    tok = judge.answer_ids[answer]

    def push(logits, hook):
        logits[..., tok] += 30.0
        return logits

    with tiny.hooks(fwd_hooks=[("unembed.hook_out", push)]):
        out = judge.rate(TEXTS, ["happy", "calm", "sad"])
    assert all(r == answer for r in out["llm_concept_rating"])
    assert np.allclose(out["llm_concept"], answer, atol=1e-3)
    # without the hook the random model does not answer so uniformly
    plain = judge.rate(TEXTS, ["happy", "calm", "sad"])
    assert not np.allclose(plain["llm_concept"], answer, atol=1e-3)


def test_the_emotion_reaches_the_prompt(tiny):
    judge = J.LLMJudge(tiny)
    a = judge.rate(TEXTS[:1], "happy")["llm_concept"][0]
    b = judge.rate(TEXTS[:1], "afraid")["llm_concept"][0]
    assert a != b  # the question differs, so the random model's answer does
    with pytest.raises(InputError, match="one emotion or one per text"):
        judge.rate(TEXTS, ["happy"])


def test_bad_prompt_and_colliding_answers_raise(tiny):
    with pytest.raises(SteeringError, match="'{emotion}' and '{text}'"):
        J.LLMJudge(tiny, prompt="Rate {text}")
    with pytest.raises(SteeringError, match="share first tokens"):
        J.LLMJudge(tiny, answers=("ab", "ac"))


def test_judge_runs_inside_a_sweep(tiny):
    from emolens.registry import EmotionRegistry
    from emolens.sites import Site
    from emolens.steering.sweeps import sweep

    L, d = int(tiny.cfg.n_layers), int(tiny.cfg.d_model)
    reg = EmotionRegistry(torch.randn(L, 2, d, generator=torch.Generator().manual_seed(0)),
                          ["calm", "happy"], [Site(x, f"blocks.{x}.hook_resid_post")
                                              for x in range(L)], torch.full((L,), 4.0),
                          default_layer=L - 2)
    prompts = [[{"role": "user", "content": t}] for t in ("Say hi", "Count to 3", "Name a fruit")]
    df = sweep(tiny, reg, "happy", [0.0, 0.5], prompts, judges=["lexicon", J.LLMJudge(tiny)],
               max_new_tokens=4, progress=False)
    assert {"llm_concept", "llm_concept_rating", "llm_concept_mass", "lexicon"} <= set(df)
    assert len(df) == 6 and df.llm_concept.between(0, 2).all()
    agr = J.judge_agreement(df, "llm_concept", "lexicon")
    assert agr.n + agr.n_dropped == 6 and "Spearman" in agr.statement
    # a judge that scores every text alike: the correlation is undefined, and says so
    flat = J.judge_agreement(df.assign(lexicon=0.0), "llm_concept", "lexicon")
    assert np.isnan(flat.spearman.value) and "undefined" in flat.statement


def test_judge_agreement_finds_planted_agreement_and_a_null_stays_null():
    rng = np.random.default_rng(0)
    x = rng.normal(size=80)
    df = pd.DataFrame({"llm_concept": x, "lexicon": x + 0.5 * rng.normal(size=80),
                       "unrelated": rng.normal(size=80)})
    df.loc[3, "lexicon"] = np.nan
    agr = J.judge_agreement(df, "llm_concept", "lexicon", seed=1)
    assert agr.spearman.low > 0.6 and agr.n == 79 and agr.n_dropped == 1
    assert "agree on" in agr.statement and agr.to_dict()["spearman"]["value"] > 0.6
    null = J.judge_agreement(df, "llm_concept", "unrelated", seed=1)
    assert null.spearman.low < 0 < null.spearman.high
    assert "do not agree beyond chance" in null.statement
    neg = J.judge_agreement(df.assign(lexicon=-df.lexicon), expected_sign=-1)
    assert neg.spearman.high < 0 and "agree on" in neg.statement
    with pytest.raises(InputError, match="no column 'bogus'"):
        J.judge_agreement(df, "bogus")
    with pytest.raises(InputError, match="expected_sign"):
        J.judge_agreement(df, expected_sign=2)


def test_uninstalled_judge_model_is_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path))  # an empty cache: nothing installed
    assert not J.llm_judge_installed("qwen2.5-coder-0.5b")
    assert not J.llm_judge_installed("no-such-model")
    with pytest.raises(ModelNotAvailableError, match="emolens models install qwen2.5-coder-0.5b"):
        J.load_judge_model("qwen2.5-coder-0.5b")
    with pytest.raises(ModelNotAvailableError, match="emolens models list"):
        J.load_judge_model("no-such-model")
    assert "llm_concept" in J.JUDGES
