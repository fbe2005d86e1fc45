"""The one position vocabulary (emolens.positions): each name on chat and plain text, with right
and left padding, and the same function behind extraction, causality and steering."""
from __future__ import annotations

import pytest
import torch

import emolens.causality as C
import emolens.extraction as X
from emolens import positions as P
from emolens.errors import InputError, SteeringError
from emolens.steering.positions import POSITION_NAMES, parse_positions, selection_for_tokens
from emolens.tokens import to_inputs

CHAT = [{"role": "user", "content": "hello there"}]
PLAIN = "a plain text line"


@pytest.fixture(params=["right", "left"])
def mixed(tiny, request):
    """Row 0 plain text, row 1 a chat, padded on ``request.param``."""
    return to_inputs(tiny, [PLAIN, CHAT], padding_side=request.param)


def _cols(mask):
    return [row.nonzero().flatten().tolist() for row in mask]


def test_each_name_on_chat_and_plain_text(tiny, mixed):
    real = mixed.attention_mask.bool()
    last = P.last_index(mixed)
    first = mixed.first_pos
    reply = int(mixed.reply_pos[1])
    assert int(mixed.reply_pos[0]) == -1 and reply >= 0
    # chat input: the reply-opening token is the last prompt token
    assert reply == int(last[1])

    assert torch.equal(P.position_mask(mixed, "all"), real)
    content = P.position_mask(mixed, "content")
    for r in range(2):
        cols = list(range(int(first[r]), int(last[r]) + 1))
        assert _cols(content)[r] == cols[1:]  # every real token but the sink
    assert _cols(P.position_mask(mixed, "last")) == [[int(last[0])], [int(last[1])]]
    assert _cols(P.position_mask(mixed, "reply_or_last")) == [[int(last[0])], [reply]]
    # "reply" means the reply token or nothing: plain text is refused, not read at its end
    with pytest.raises(InputError, match="'reply' needs chat input.*input 0.*reply_or_last"):
        P.position_mask(mixed, "reply")
    chat_only = to_inputs(tiny, [CHAT, [{"role": "user", "content": "hi"}]])
    assert _cols(P.position_mask(chat_only, "reply")) == [[int(v)] for v in chat_only.reply_pos]
    # from:k counts from the first real token, so padding does not shift it
    k = 3
    fk = P.position_mask(mixed, f"from:{k}")
    for r in range(2):
        assert _cols(fk)[r] == list(range(int(first[r]) + k, int(last[r]) + 1))


def test_ints_tensors_and_masks(mixed):
    first, last = mixed.first_pos, P.last_index(mixed)
    assert _cols(P.position_mask(mixed, [0, -1])) == [
        [int(first[r]), int(last[r])] for r in range(2)]
    assert _cols(P.position_mask(mixed, 1)) == [[int(first[r]) + 1] for r in range(2)]
    idx = last.clone()
    assert torch.equal(P.position_mask(mixed, idx), P.position_mask(mixed, "last"))
    everything = torch.ones_like(mixed.attention_mask, dtype=torch.bool)
    assert torch.equal(P.position_mask(mixed, everything), mixed.attention_mask.bool())
    with pytest.raises(InputError, match="does not exist in row"):
        P.position_mask(mixed, 99)
    with pytest.raises(InputError, match="shape"):
        P.position_mask(mixed, torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(InputError, match="selects no token"):
        P.position_mask(mixed, [])


@pytest.mark.parametrize("bad", ["middle", "from:0", "from:x", "from:k", "Reply"])
def test_unknown_names_are_refused_with_the_valid_ones(mixed, bad):
    with pytest.raises(InputError, match="position policy") as err:
        P.position_mask(mixed, bad)
    assert bad in str(err.value)
    with pytest.raises(InputError):
        P.validate_name(bad)


def test_every_stage_uses_the_one_function():
    assert X.position_mask is P.position_mask
    assert C.position_mask is P.position_mask
    from emolens.extraction.positions import position_mask, validate_policy

    assert position_mask is P.position_mask and validate_policy is P.validate_name
    assert set(X.POLICIES) == set(P.NAMES)
    assert POSITION_NAMES == tuple(P.GENERATION_NAMES)


def test_causality_metric_default_reads_plain_text_at_its_last_token(tiny):
    """The causality default is the explicit fallback "reply_or_last"; "reply" is strict."""
    batch = to_inputs(tiny, [PLAIN, CHAT])
    logits = torch.randn(2, batch.tokens.shape[1], int(tiny.cfg.d_vocab))
    a, b = 5, 7
    got = C.logit_diff(a, b).bind(tiny)(logits, batch)
    cols = P.reply_or_last(batch)
    want = logits[torch.arange(2), cols, a] - logits[torch.arange(2), cols, b]
    assert torch.allclose(got, want)
    with pytest.raises(InputError, match="needs chat input"):
        C.logit_diff(a, b, pos="reply").bind(tiny)(logits, batch)


def test_steering_indices_select_what_position_mask_selects(mixed):
    """A steering plan's indices on a prompt pick the columns position_mask picks."""
    width = mixed.tokens.shape[1]
    for spec in ([0], [-1], [1, -1]):
        sel = selection_for_tokens(parse_positions(spec), mixed.attention_mask, width)
        assert torch.equal(sel, P.position_mask(mixed, spec)), spec
    sel = selection_for_tokens(parse_positions("all"), mixed.attention_mask, width)
    assert torch.equal(sel, P.position_mask(mixed, "all"))


@pytest.mark.parametrize("name", ["content", "reply", "last", "from:5"])
def test_steering_refuses_batch_names_and_says_what_it_takes(name):
    with pytest.raises(SteeringError, match="finished batch.*'prompt'.*-1 = the last prompt"):
        parse_positions(name)
