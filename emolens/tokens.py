"""Turning user input (strings or chat messages) into padded token batches with masks.

Every stage (extraction, readout, steering, patching) tokenises through ``to_inputs`` so they
agree on three things:

- the attention-sink token: the first real token of each sequence (BOS or ``<|im_start|>``) has a
  huge residual norm in middle layers; ``content_mask`` leaves it out (measured: 6-way
  held-out accuracy at layer 14 of SmolLM2-135M falls from about 0.80 to 0.26 with it);
- padding: ``attention_mask`` marks real tokens; pads sit left or right as asked;
- the reply-opening token: for chat input, ``reply_pos`` is the last token of the prompt, the
  position whose residual stream predicts the first token of the assistant's reply.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Int

from emolens.errors import InputError

if TYPE_CHECKING:
    from emolens.compat import Model

Message = dict[str, str]
Conversation = list[Message]
TextInput = str | Conversation


@dataclass
class TokenizedBatch:
    """A padded batch of token ids with its masks.

    tokens: ``[batch, pos]`` token ids; attention_mask: ``[batch, pos]`` 1 for real tokens;
    content_mask: ``[batch, pos]`` real tokens other than the first (attention-sink) token;
    reply_pos: ``[batch]`` index of the reply-opening token for chat input, -1 for plain text;
    texts: the rendered strings (chat input after the chat template).
    """

    tokens: Int[torch.Tensor, "batch pos"]
    attention_mask: Int[torch.Tensor, "batch pos"]
    content_mask: Bool[torch.Tensor, "batch pos"]
    reply_pos: Int[torch.Tensor, " batch"]
    texts: list[str]
    padding_side: str = "right"

    @property
    def lengths(self) -> Int[torch.Tensor, " batch"]:
        return self.attention_mask.sum(-1)

    @property
    def first_pos(self) -> Int[torch.Tensor, " batch"]:
        """Index of each row's first real token (the attention sink)."""
        return self.attention_mask.int().argmax(-1)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a model forward on this batch (mask only when padded)."""
        if bool(self.attention_mask.all()):
            return {}
        return {"attention_mask": self.attention_mask}

    def str_tokens(self, model: Model) -> list[list[str]]:
        """Token strings of each row, real tokens only."""
        out = []
        for row, mask in zip(self.tokens, self.attention_mask.bool()):
            ids = row[mask].tolist()
            out.append([model.tokenizer.decode([i]) for i in ids])
        return out

    def to(self, device: Any) -> TokenizedBatch:
        return TokenizedBatch(self.tokens.to(device), self.attention_mask.to(device),
                              self.content_mask.to(device), self.reply_pos.to(device),
                              self.texts, self.padding_side)


def is_conversation(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(m, dict) for m in x) and len(x) > 0


def _check_encodable(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{where} holds {text[e.start:e.end]!r} at character {e.start}, which "
                         "is not valid Unicode text (a lone surrogate); decode the source with "
                         "errors='replace' or remove it") from None


def normalise_inputs(inputs: Any) -> list[TextInput]:
    """One text, one conversation or a list of either, as a checked list (``InputError`` names
    the first bad item: empty text, a message without 'role'/'content', another type)."""
    if isinstance(inputs, str) or is_conversation(inputs):
        return [inputs]
    if not isinstance(inputs, Sequence) or isinstance(inputs, (bytes, dict)):
        raise InputError(
            f"inputs must be a string, a list of strings, or chat messages (a list of "
            f"{{'role', 'content'}} dicts), got {type(inputs).__name__}"
        )
    items = list(inputs)
    if not items:
        raise InputError("the list of texts is empty: pass at least one string or conversation")
    for i, x in enumerate(items):
        if isinstance(x, str):
            if not x.strip():
                raise InputError(f"text {i} is empty or whitespace: {x!r}; remove it or give text")
            _check_encodable(x, f"text {i}")
        elif is_conversation(x):
            for j, m in enumerate(x):
                role = m.get("role")
                if not isinstance(role, str) or not role.strip() \
                        or not isinstance(m.get("content"), str):
                    raise InputError(
                        f"message {j} of conversation {i} must have a non-empty string 'role' "
                        f"('system', 'user', 'assistant') and a string 'content', got "
                        f"{ {k: type(v).__name__ for k, v in m.items()} }")
                _check_encodable(m["content"], f"message {j} of conversation {i}")
            if all(m["role"] == "assistant" for m in x):
                raise InputError(
                    f"conversation {i} has only assistant messages; a reply needs a user (or "
                    "system) message before it, e.g. [{'role': 'user', 'content': ...}, "
                    "{'role': 'assistant', 'content': ...}]")
        else:
            raise InputError(
                f"input {i} is a {type(x).__name__}; each input must be a string or a list of "
                f"{{'role': ..., 'content': ...}} messages"
            )
    return items


def render_chat(model: Model, messages: Conversation, *, add_generation_prompt: bool | None = None
                ) -> str:
    """Render chat messages with the model's chat template.

    ``add_generation_prompt`` defaults to True when the last message is not the assistant's.
    """
    tok = model.tokenizer
    if add_generation_prompt is None:
        add_generation_prompt = messages[-1].get("role") != "assistant"
    facts = _catalogue_facts(model)
    if facts is not None and facts.chat_template is None:
        return render_plain_dialogue(messages, add_generation_prompt=add_generation_prompt)
    if getattr(tok, "chat_template", None) is None:
        raise InputError(
            f"model {getattr(model.cfg, 'model_name', '?')!r} has no chat template, so chat "
            "messages cannot be rendered; pass plain strings instead"
        )
    return str(tok.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=add_generation_prompt))


def _catalogue_facts(model: Model) -> Any:
    """The model's catalogue entry (``emolens.models.catalogue``), or None for other models."""
    from emolens.models.catalogue import facts_for_model

    return facts_for_model(model)


def render_plain_dialogue(messages: Conversation, *, add_generation_prompt: bool = True) -> str:
    """Render a dialogue for a base model without a chat template.

    One line per message, ``"User: ..."`` / ``"Assistant: ..."`` / ``"System: ..."``, joined by
    newlines; the generation prompt is a last line ``"Assistant:"`` (no trailing space), whose
    ``:`` is then the reply-opening token. ``to_inputs`` prepends the model's BOS.
    """
    from emolens.models.catalogue import PLAIN_DIALOGUE_ROLES

    lines = []
    for m in messages:
        role = str(m.get("role", ""))
        label = PLAIN_DIALOGUE_ROLES.get(role, role.capitalize())
        lines.append(f"{label}: {m['content']}")
    if add_generation_prompt:
        lines.append(f"{PLAIN_DIALOGUE_ROLES['assistant']}:")
    return "\n".join(lines)


def _bos_for(model: Model, chat: bool) -> bool:
    """Whether a BOS is prepended: the catalogue's fact for catalogue models (a chat template
    supplies its own first token; the plain dialogue rendering gets the model's BOS), else the
    model's ``default_prepend_bos`` for strings and none for chat-template output."""
    facts = _catalogue_facts(model)
    if facts is not None:
        if chat and facts.chat_template is not None:
            return False
        return facts.bos is not None
    return False if chat else bool(getattr(model.cfg, "default_prepend_bos", True))


def _encode(model: Model, text: str, prepend_bos: bool) -> list[int]:
    return model.to_tokens(text, prepend_bos=prepend_bos, truncate=False, move_to_device=False
                           )[0].tolist()


def to_inputs(model: Model, inputs: Any, *, padding_side: str = "right",
              max_len: int | None = None) -> TokenizedBatch:
    """Tokenise strings and/or conversations into one padded ``TokenizedBatch``.

    Strings get the model's BOS handling (``to_tokens`` defaults); conversations are rendered
    with the chat template (which supplies its own first token). Raises ``InputError`` for an
    empty list, empty text, or a sequence longer than the model's context (``n_ctx``).
    """
    if padding_side not in ("right", "left"):
        raise InputError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    items = normalise_inputs(inputs)
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    limit = min(n_ctx, max_len) if (n_ctx and max_len) else (max_len or n_ctx or None)
    rows: list[list[int]] = []
    reply: list[int] = []
    texts: list[str] = []
    for i, x in enumerate(items):
        if isinstance(x, str):
            ids = _encode(model, x, prepend_bos=_bos_for(model, chat=False))
            rpos = -1
            texts.append(x)
        else:
            rendered = render_chat(model, x)
            chat_bos = _bos_for(model, chat=True)
            ids = _encode(model, rendered, prepend_bos=chat_bos)
            if x[-1].get("role") == "assistant":
                prefix = render_chat(model, x[:-1], add_generation_prompt=True)
                rpos = len(_encode(model, prefix, prepend_bos=chat_bos)) - 1
            else:
                rpos = len(ids) - 1
            texts.append(rendered)
        if limit and len(ids) > limit:
            raise InputError(
                f"input {i} is {len(ids)} tokens long, more than the limit of {limit} "
                f"(model context n_ctx={n_ctx}); shorten or split it"
            )
        rows.append(ids)
        reply.append(rpos)
    width = max(len(r) for r in rows)
    pad_id = model.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = model.tokenizer.eos_token_id or 0
    tokens = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        off = 0 if padding_side == "right" else width - len(r)
        tokens[i, off:off + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, off:off + len(r)] = 1
        if reply[i] >= 0:
            reply[i] += off
    content = mask.bool().clone()
    first = mask.argmax(-1)
    content[torch.arange(len(rows)), first] = False
    return TokenizedBatch(tokens, mask, content, torch.tensor(reply, dtype=torch.long), texts,
                          padding_side)
